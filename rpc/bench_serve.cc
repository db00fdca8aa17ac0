#include "rpc/bench_serve.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "rpc/bench_lengths.h"

namespace tessera {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int32_t kFirstSpecialToken = 151643;  // <|endoftext|>: prompts stay below it
constexpr size_t kMaxErrorsKept = 8;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// One request's timeline, as the client saw it.
struct Record {
  bool ok = false;
  std::string error;
  int input_tokens = 0;
  int output_tokens = 0;
  double ttft_ms = 0;
  double e2e_ms = 0;
  std::vector<double> itl_ms;  // one per token after the first (a chunk of k tokens: k gaps)
};

// Streams one request on gRPC's callback API and fills its Record when the call ends.
class StreamCall final : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  StreamCall(Record* record, std::function<void()> on_done)
      : record_(record), on_done_(std::move(on_done)) {}

  void Start(Client& client, v1::GenerateRequest request) {
    request_ = std::move(request);
    start_ = last_ = Clock::now();
    client.GenerateAsync(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended; OnDone follows
    const Clock::time_point now = Clock::now();
    const int n = response_.token_ids_size();
    if (n > 0) {
      if (record_->output_tokens == 0) {
        record_->ttft_ms = Ms(now - start_);
        for (int i = 1; i < n; ++i) record_->itl_ms.push_back(0);
      } else {
        const double gap = Ms(now - last_) / n;
        for (int i = 0; i < n; ++i) record_->itl_ms.push_back(gap);
      }
      record_->output_tokens += n;
      last_ = now;
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    record_->e2e_ms = Ms(Clock::now() - start_);
    record_->ok = status.ok();
    if (!status.ok()) {
      record_->error = absl::StrCat("code ", static_cast<int>(status.error_code()), ": ",
                                    status.error_message());
    }
    std::function<void()> done = std::move(on_done_);
    delete this;
    done();
  }

 private:
  Record* record_;
  std::function<void()> on_done_;
  grpc::ClientContext context_;
  v1::GenerateRequest request_;
  v1::GenerateResponse response_;
  Clock::time_point start_, last_;
};

// The engine's summed step time and step count, from the server's Prometheus text.
struct StepTime {
  bool ok = false;  // false: the endpoint could not be read or does not export them
  double seconds = 0;
  int64_t steps = 0;
  double host_seconds = 0;   // tessera:engine_step_host_seconds_sum (0 from older servers)
  bool have_device = false;  // tessera:engine_step_device_seconds_sum (absent from older servers)
  double device_seconds = 0;
};

StepTime ScrapeStepTime(const std::string& address) {
  std::vector<std::string> parts = absl::StrSplit(address, absl::MaxSplits(':', 1));
  int port = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &port)) return {};
  httplib::Client http(parts[0], port);
  http.set_connection_timeout(5);
  http.set_read_timeout(10);
  httplib::Result res = http.Get("/metrics");
  if (!res || res->status != 200) return {};
  bool have_sum = false, have_count = false;
  StepTime t;
  std::istringstream lines(res->body);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#') continue;
    // `name{label="v",...} value [timestamp]`: label values may hold spaces (a model name), so
    // the value is the first field after the labels' closing brace.
    const size_t brace = line.find('{');
    const size_t name_end = std::min(brace, line.find(' '));
    if (name_end == std::string::npos) continue;
    const std::string name = line.substr(0, name_end);
    const size_t labels_end = name_end == brace ? line.rfind('}') : name_end;
    if (labels_end == std::string::npos) continue;
    std::vector<std::string> fields =
        absl::StrSplit(line.substr(labels_end + 1), ' ', absl::SkipEmpty());
    double value = 0;
    if (fields.empty() || !absl::SimpleAtod(fields[0], &value)) continue;
    if (name == "tessera:engine_step_seconds_sum") {
      t.seconds += value;
      have_sum = true;
    }
    if (name == "tessera:engine_step_host_seconds_sum") t.host_seconds += value;
    if (name == "tessera:engine_step_device_seconds_sum") {
      t.device_seconds += value;
      t.have_device = true;
    }
    if (name == "tessera:engine_step_seconds_count") {
      t.steps += static_cast<int64_t>(value);
      have_count = true;
    }
  }
  t.ok = have_sum && have_count;
  return t;
}

LatencySummary Summarize(const std::vector<double>& values) {
  LatencySummary s;
  if (values.empty()) return s;
  double total = 0;
  for (double v : values) total += v;
  s.mean = total / static_cast<double>(values.size());
  s.p50 = Percentile(values, 50);
  s.p90 = Percentile(values, 90);
  s.p99 = Percentile(values, 99);
  return s;
}

// Seeded lengths: fixed when given, else log-normal with the given mean (sigma 1), as ShareGPT's.
std::vector<std::pair<int, int>> DrawLengths(const BenchServeOptions& o, int count,
                                             int max_model_len) {
  std::mt19937_64 rng(o.seed);
  std::lognormal_distribution<double> in_len = LogNormalLengths(o.input_mean),
                                      out_len = LogNormalLengths(o.output_mean);
  std::vector<std::pair<int, int>> lengths;
  for (int i = 0; i < count; ++i) {
    int in = o.input_len > 0 ? o.input_len
                             : static_cast<int>(std::clamp(in_len(rng), 1.0, 4 * o.input_mean));
    int out = o.output_len > 0 ? o.output_len
                               : static_cast<int>(std::clamp(out_len(rng), 1.0, 4 * o.output_mean));
    if (max_model_len > 0 && in + out > max_model_len) {
      in = std::max(1, std::min(in, max_model_len / 2));
      out = std::max(1, max_model_len - in);
    }
    lengths.emplace_back(in, out);
  }
  return lengths;
}

}  // namespace

double Percentile(std::vector<double> values, double percentile) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double rank = percentile / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (values[hi] - values[lo]) * (rank - static_cast<double>(lo));
}

absl::StatusOr<BenchServeResult> RunBenchServe(const BenchServeOptions& options) {
  if (options.num_prompts < 1) return absl::InvalidArgumentError("--num-prompts must be >= 1");
  if (!(options.request_rate > 0)) return absl::InvalidArgumentError("--request-rate must be > 0");
  Client client(options.client);
  v1::ModelInfo info;
  if (grpc::Status s = client.GetModelInfo(&info); !s.ok()) {
    return absl::UnavailableError(absl::StrCat("cannot reach the server at ",
                                               options.client.address, ": ", s.error_message()));
  }
  const int32_t id_limit =
      static_cast<int32_t>(std::min<int64_t>(info.vocab_size(), kFirstSpecialToken));
  const int total = options.warmup_prompts + options.num_prompts;
  const std::vector<std::pair<int, int>> lengths =
      DrawLengths(options, total, static_cast<int>(info.max_model_len()));
  std::mt19937_64 rng(options.seed ^ 0x9e3779b97f4a7c15ull);
  std::uniform_int_distribution<int32_t> token(0, id_limit - 1);
  auto make_request = [&](int i) {
    v1::GenerateRequest request;
    request.set_request_id(absl::StrCat("bench-", options.seed, "-", i));
    for (int t = 0; t < lengths[i].first; ++t) request.add_prompt_token_ids(token(rng));
    request.set_max_tokens(static_cast<uint32_t>(lengths[i].second));
    request.set_ignore_eos(true);
    request.mutable_sampling()->set_temperature(0);
    return request;
  };

  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0, finished = 0, max_in_flight = 0;
  std::vector<Record> records(total);
  auto launch = [&](int i) {
    {
      std::lock_guard<std::mutex> lock(mu);
      ++in_flight;
      max_in_flight = std::max(max_in_flight, in_flight);
    }
    records[i].input_tokens = lengths[i].first;
    auto* call = new StreamCall(&records[i], [&] {
      std::lock_guard<std::mutex> lock(mu);
      --in_flight;
      ++finished;
      cv.notify_all();
    });
    call->Start(client, make_request(i));
  };
  auto wait_until = [&](auto pred) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, pred);
  };

  // Warm-up: one at a time, not counted.
  for (int i = 0; i < options.warmup_prompts; ++i) {
    launch(i);
    wait_until([&] { return finished == i + 1; });
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    max_in_flight = 0;
  }

  const StepTime before =
      options.metrics_address.empty() ? StepTime() : ScrapeStepTime(options.metrics_address);
  std::exponential_distribution<double> gap(
      std::isinf(options.request_rate) ? 1.0 : options.request_rate);
  const Clock::time_point start = Clock::now();
  Clock::time_point next = start;
  for (int i = options.warmup_prompts; i < total; ++i) {
    if (!std::isinf(options.request_rate)) {
      std::this_thread::sleep_until(next);
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
    }
    if (options.max_concurrency > 0) {
      wait_until([&] { return in_flight < options.max_concurrency; });
    }
    launch(i);
  }
  wait_until([&] { return finished == total; });
  const double duration = std::chrono::duration<double>(Clock::now() - start).count();
  const StepTime after = before.ok ? ScrapeStepTime(options.metrics_address) : StepTime();

  BenchServeResult r;
  r.duration_s = duration;
  r.max_concurrency_reached = max_in_flight;
  std::vector<double> ttft, tpot, itl, e2e;
  int good = 0;
  for (int i = options.warmup_prompts; i < total; ++i) {
    const Record& rec = records[i];
    if (!rec.ok) {
      ++r.failed;
      if (r.errors.size() < kMaxErrorsKept) r.errors.push_back(rec.error);
      continue;
    }
    ++r.completed;
    r.input_tokens += rec.input_tokens;
    r.output_tokens += rec.output_tokens;
    ttft.push_back(rec.ttft_ms);
    e2e.push_back(rec.e2e_ms);
    itl.insert(itl.end(), rec.itl_ms.begin(), rec.itl_ms.end());
    double rec_tpot = 0;
    if (rec.output_tokens > 1) {
      rec_tpot = (rec.e2e_ms - rec.ttft_ms) / (rec.output_tokens - 1);
      tpot.push_back(rec_tpot);
    }
    const bool meets = (options.slo_ttft_ms <= 0 || rec.ttft_ms <= options.slo_ttft_ms) &&
                       (options.slo_tpot_ms <= 0 || rec_tpot <= options.slo_tpot_ms);
    good += meets ? 1 : 0;
  }
  r.request_throughput = r.completed / duration;
  r.output_throughput = static_cast<double>(r.output_tokens) / duration;
  r.total_token_throughput = static_cast<double>(r.input_tokens + r.output_tokens) / duration;
  r.ttft = Summarize(ttft);
  r.tpot = Summarize(tpot);
  r.itl = Summarize(itl);
  r.e2e = Summarize(e2e);
  if (options.slo_ttft_ms > 0 || options.slo_tpot_ms > 0) r.goodput = good / duration;
  if (before.ok && after.ok && after.seconds > before.seconds) {
    r.have_bound = true;
    r.engine_step_seconds = after.seconds - before.seconds;
    r.engine_steps = after.steps - before.steps;
    r.have_device =
        before.have_device && after.have_device && after.device_seconds > before.device_seconds;
    double busy = r.engine_step_seconds;  // older servers: the steps' host-side time
    if (r.have_device) {
      r.device_busy_seconds = after.device_seconds - before.device_seconds;
      r.device_utilization = r.device_busy_seconds / duration;
      busy = r.device_busy_seconds;
    }
    r.bound_output_throughput = static_cast<double>(r.output_tokens) / busy;
    r.efficiency = r.output_throughput / r.bound_output_throughput;
    r.engine_host_seconds = after.host_seconds - before.host_seconds;
    if (r.engine_steps > 0) r.host_us_per_step = 1e6 * r.engine_host_seconds / r.engine_steps;
  }
  return r;
}

std::string BenchServeReport(const BenchServeOptions& o, const BenchServeResult& r) {
  std::string out;
  auto line = [&](const std::string& name, const std::string& value) {
    absl::StrAppendFormat(&out, "%-36s %s\n", name, value);
  };
  auto ms = [&](const std::string& name, const LatencySummary& s) {
    line(name + " mean/p50/p90/p99 (ms)",
         absl::StrFormat("%.2f / %.2f / %.2f / %.2f", s.mean, s.p50, s.p90, s.p99));
  };
  out += "============ Serving Benchmark Result ============\n";
  line("Address", o.client.address);
  line("Request rate",
       std::isinf(o.request_rate) ? "inf (burst)" : absl::StrFormat("%.2f req/s", o.request_rate));
  line("Max concurrency", o.max_concurrency > 0 ? absl::StrCat(o.max_concurrency) : "none");
  line("Successful requests", absl::StrCat(r.completed));
  line("Failed requests", absl::StrCat(r.failed));
  line("Peak concurrent requests", absl::StrCat(r.max_concurrency_reached));
  line("Benchmark duration (s)", absl::StrFormat("%.2f", r.duration_s));
  line("Total input tokens", absl::StrCat(r.input_tokens));
  line("Total generated tokens", absl::StrCat(r.output_tokens));
  line("Request throughput (req/s)", absl::StrFormat("%.2f", r.request_throughput));
  line("Output token throughput (tok/s)", absl::StrFormat("%.2f", r.output_throughput));
  line("Total token throughput (tok/s)", absl::StrFormat("%.2f", r.total_token_throughput));
  if (o.slo_ttft_ms > 0 || o.slo_tpot_ms > 0) {
    line("Goodput (req/s)", absl::StrFormat("%.2f", r.goodput));
  }
  ms("TTFT", r.ttft);
  ms("TPOT", r.tpot);
  ms("ITL", r.itl);
  ms("E2E latency", r.e2e);
  if (r.have_bound) {
    line("Engine step time (s), steps",
         absl::StrFormat("%.2f, %d", r.engine_step_seconds, r.engine_steps));
    if (r.have_device) {
      line("Device busy (s), utilization",
           absl::StrFormat("%.2f, %.1f%%", r.device_busy_seconds, 100 * r.device_utilization));
      line("Bound: output tok/s, device never idle",
           absl::StrFormat("%.2f", r.bound_output_throughput));
    } else {
      line("Bound: output tok/s (from step times)",
           absl::StrFormat("%.2f", r.bound_output_throughput));
    }
    line("Engine efficiency", absl::StrFormat("%.1f%%", 100 * r.efficiency));
    line("Engine host time (s), us per step",
         absl::StrFormat("%.2f, %.0f", r.engine_host_seconds, r.host_us_per_step));
  } else if (!o.metrics_address.empty()) {
    line("Bound", "not available (metrics endpoint unreadable or without engine step time)");
  }
  for (const std::string& e : r.errors) line("Error", e);
  out += "==================================================\n";
  return out;
}

std::string BenchServeJson(const BenchServeOptions& o, const BenchServeResult& r) {
  auto summary = [](const LatencySummary& s) {
    return nlohmann::json{{"mean", s.mean}, {"p50", s.p50}, {"p90", s.p90}, {"p99", s.p99}};
  };
  nlohmann::json j = {
      {"address", o.client.address},
      {"request_rate",
       std::isinf(o.request_rate) ? nlohmann::json("inf") : nlohmann::json(o.request_rate)},
      {"max_concurrency", o.max_concurrency},
      {"num_prompts", o.num_prompts},
      {"completed", r.completed},
      {"failed", r.failed},
      {"errors", r.errors},
      {"max_concurrency_reached", r.max_concurrency_reached},
      {"duration_s", r.duration_s},
      {"total_input_tokens", r.input_tokens},
      {"total_output_tokens", r.output_tokens},
      {"request_throughput", r.request_throughput},
      {"output_throughput", r.output_throughput},
      {"total_token_throughput", r.total_token_throughput},
      {"goodput", r.goodput},
      {"ttft_ms", summary(r.ttft)},
      {"tpot_ms", summary(r.tpot)},
      {"itl_ms", summary(r.itl)},
      {"e2e_ms", summary(r.e2e)},
  };
  if (r.have_bound) {
    j["engine_step_seconds"] = r.engine_step_seconds;
    j["engine_steps"] = r.engine_steps;
    j["bound_output_throughput"] = r.bound_output_throughput;
    j["efficiency"] = r.efficiency;
    if (r.have_device) {
      j["device_busy_seconds"] = r.device_busy_seconds;
      j["device_utilization"] = r.device_utilization;
    }
    j["engine_host_seconds"] = r.engine_host_seconds;
    j["host_us_per_step"] = r.host_us_per_step;
  }
  return j.dump(2);
}

}  // namespace tessera
