// tessera bench: offline speed measurements, side by side with the roofline and the peer.
//
//   [mpirun -np N] tessera bench --model DIR [--load-format dummy|safetensors] [--device cpu|cuda]
//       [--tp T] [--pp P] [--ep E] [--dp D] [--ttft 1024,4096] [--decode-batch 1,16,64]
//       [--decode-context 1024] [--decode-steps 32] [--repeats 5] [--throughput-requests 1000]
//       [--input-mean 256] [--output-mean 128] [--max-num-seqs 256]
//       [--max-num-batched-tokens 8192] [--kv-cache-memory BYTES | --num-kv-blocks N]
//       [--seed S] [--op-profile] [--json]
//
// --load-format dummy (the default) needs only DIR/config.json: random weights at the real
// shapes, generated on the device (scripts/bench/models/ holds Qwen3-14B, 32B, 30B-A3B and
// 235B-A22B). It reports:
//   - TTFT: one request of each --ttft length, prefill plus the first sample (median of repeats);
//   - decode: ms per step and tokens/s for each --decode-batch, every sequence at
//     --decode-context tokens of context (median over --decode-steps steps);
//   - throughput: --throughput-requests requests with ShareGPT-like lengths (log-normal around
//     --input-mean / --output-mean, seeded), all submitted at once through the serving engine:
//     output tokens/s and TTFT / TPOT percentiles.
// A table goes to stderr; --json prints one JSON object on stdout. --op-profile times every op
// (CUDA events on the device; decode then runs op by op, without graphs) and adds, per TTFT
// length and decode batch, a table of ms per step by op ("op_profile" in the JSON).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"
#include "kernels/profiling_backend.h"
#include "launch/build_commit.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/log.h"
#include "launch/mpi_session.h"
#include "launch/rank.h"
#include "nlohmann/json.hpp"
#include "rpc/bench_lengths.h"
#include "runtime/engine/block_manager.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/executor.h"
#include "runtime/engine/step_builder.h"

namespace tessera {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = p / 100.0 * (v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

// Builds one micro-batch for replica 0 (the others idle) of `seqs` sequences: sequence j computes
// tokens [begin[j], end[j]) of `tokens[j]`, with logits for its last token when `logits`.
StepPlan Plan(int dp, int bs, const std::vector<std::vector<int32_t>>& tokens,
              const std::vector<std::vector<int32_t>>& blocks, const std::vector<int>& begin,
              const std::vector<int>& end, bool logits) {
  StepPlan plan;
  plan.replicas.assign(dp, std::vector<StepBatch>(1));
  StepBatchBuilder b(bs);
  for (size_t j = 0; j < tokens.size(); ++j) {
    b.AddSequence(tokens[j], blocks[j], begin[j], end[j]);
    if (logits) {
      // Greedy on the device, as a served request without penalties or logprobs.
      LogitRowSampling row;
      row.on_device = true;
      b.AddLogitRow(b.num_tokens() - 1, row);
    }
  }
  plan.replicas[0][0] = std::move(b).Build();
  return plan;
}

struct BenchFlags {
  RankOptions rank;
  std::vector<int64_t> ttft, decode_batch;
  int64_t decode_context = 1024, decode_steps = 32, repeats = 5, throughput_requests = 0;
  double input_mean = 256, output_mean = 128;
  int64_t max_num_seqs = 256, max_num_batched_tokens = 8192;
  bool json = false;
};

void AddBenchFlags(CLI::App& app, BenchFlags* f) {
  app.add_option("--model", f->rank.model,
                 "model directory; with --load-format dummy only its config.json is read")
      ->type_name("DIR")
      ->required();
  app.add_option("--load-format", f->rank.load_format,
                 "dummy: random weights at the real shapes; safetensors: the checkpoint")
      ->check(CLI::IsMember({"dummy", "safetensors"}));
  AddQuantizationFlag(app, &f->rank);
  app.add_option("--device", f->rank.device,
                 "cpu or cuda; default: cuda when a GPU is visible, else cpu")
      ->type_name("DEVICE")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  AddIntListFlag(app, "--ttft", &f->ttft, "prompt lengths to time prefill + first token for");
  AddIntListFlag(app, "--decode-batch", &f->decode_batch, "decode batch sizes to time");
  app.add_option("--decode-context", f->decode_context, "context of every decoding sequence");
  app.add_option("--decode-steps", f->decode_steps, "decode steps timed per batch");
  app.add_option("--repeats", f->repeats, "TTFT repeats (the median is reported)");
  app.add_option("--throughput-requests", f->throughput_requests,
                 "requests for the serving-engine throughput run (0: none)");
  app.add_option("--input-mean", f->input_mean, "throughput run: mean prompt length");
  app.add_option("--output-mean", f->output_mean, "throughput run: mean output length");
  app.add_option("--max-num-seqs", f->max_num_seqs, "throughput run: sequences per batch");
  app.add_option("--max-num-batched-tokens", f->max_num_batched_tokens,
                 "tokens per step (throughput run; decode contexts prefill in such pieces)");
  app.add_option("--seed", f->rank.dummy_seed, "seed of the dummy weights and the inputs");
  app.add_flag("--op-profile", f->rank.op_profile,
               "time every op (no decode graphs then): a table per measurement");
  app.add_flag("--json", f->json, "print one JSON object of every figure on stdout");
  AddParallelFlags(app, &f->rank);
  AddKvCacheFlags(app, &f->rank, "--num-kv-blocks",
                  "the largest measurement's whole blocks, plus 64", /*memory_flags=*/false);
}

absl::StatusOr<int> Bench(MpiSession& mpi, BenchFlags& f) {
  const std::vector<int64_t>& ttft_lens = f.ttft;
  const std::vector<int64_t>& batches = f.decode_batch;
  const int64_t context = f.decode_context, steps = f.decode_steps, repeats = f.repeats,
                requests = f.throughput_requests;
  const double input_mean = f.input_mean, output_mean = f.output_mean;
  const int64_t max_seqs = f.max_num_seqs, max_tokens = f.max_num_batched_tokens;
  const int64_t block_size = f.rank.block_size;
  const uint64_t seed = f.rank.dummy_seed;
  if (context < 1 || steps < 1 || repeats < 1 || block_size < 1) {
    return absl::InvalidArgumentError(
        "--decode-context, --decode-steps, --repeats, --block-size must be >= 1");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Rank> rank, OpenRank(mpi, f.rank));
  const ModelConfig& config = rank->model.config;
  const ParallelConfig& parallel = rank->parallel;

  // KV: enough for the largest measurement, unless given.
  // (Blocks are whole per sequence: a decode batch needs batch x ceil((context + steps + 1) / B).)
  auto blocks_for = [&](int64_t tokens) { return (tokens + block_size - 1) / block_size; };
  int64_t need_blocks = blocks_for(context + steps + 1);
  for (int64_t b : batches)
    need_blocks = std::max(need_blocks, b * blocks_for(context + steps + 1));
  for (int64_t l : ttft_lens) need_blocks = std::max(need_blocks, blocks_for(l + 1));
  if (f.rank.num_kv_blocks == 0) f.rank.num_kv_blocks = need_blocks + 64;
  const int64_t num_blocks = f.rank.num_kv_blocks;

  // The largest step of any measurement: a whole TTFT prompt, a decode batch, a chunk of a decode
  // context, or the throughput engine's budget.
  auto limits_for = [&](const ModelConfig&, int) {
    StepLimits limits;
    int64_t max_batch = 1, max_prompt = 1, max_len = context + steps;
    for (int64_t b : batches) max_batch = std::max(max_batch, b);
    for (int64_t l : ttft_lens) {
      max_prompt = std::max(max_prompt, l);
      max_len = std::max(max_len, l + 1);
    }
    limits.max_tokens = static_cast<int>(std::max({max_tokens, max_batch, max_prompt}));
    limits.max_seqs = static_cast<int>(std::max(max_batch, requests > 0 ? max_seqs : 1));
    limits.max_logit_rows = limits.max_seqs;
    limits.max_seq_len = static_cast<int>(requests > 0 ? num_blocks * block_size : max_len);
    limits.max_blocks_per_seq = static_cast<int>(
        requests > 0 ? num_blocks
                     : std::min<int64_t>(num_blocks, (max_len + block_size - 1) / block_size));
    return limits;
  };
  RETURN_IF_ERROR(LoadRank(mpi, f.rank, limits_for, *rank));
  if (ServeStepsAsWorker(mpi, *rank)) return 0;
  Executor& executor = *rank->executor;
  ProfilingBackend* profiler = rank->profiler.get();
  const double load_s = rank->load_seconds;
  const std::string& dir = rank->model.dir;
  const std::string& format = f.rank.load_format;
  const std::string& device = rank->device;

  const int bs = static_cast<int>(block_size);
  const int replicas = parallel.dp;
  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  std::uniform_int_distribution<int32_t> any_id(0, static_cast<int32_t>(config.vocab_size - 1));
  BlockManager blocks(static_cast<int>(num_blocks), bs, /*prefix_caching=*/false);
  json op_profile = json::object();
  // Op times since the last call, per step of the measurement `what` (`steps` steps).
  auto profile = [&](const std::string& what, int64_t steps_timed) {
    if (!profiler) return;
    json rows = json::array();
    double total = 0;
    const std::vector<OpTime> times = profiler->Take();
    for (const OpTime& t : times) total += t.ms;
    std::fprintf(stderr, "  op profile, %s: %.3f ms of ops per step\n", what.c_str(),
                 total / steps_timed);
    for (const OpTime& t : times) {
      const double per_step = t.ms / steps_timed;
      rows.push_back({{"op", t.op},
                      {"calls_per_step", static_cast<double>(t.calls) / steps_timed},
                      {"ms_per_step", per_step}});
      if (per_step >= 0.001 * total / steps_timed) {
        std::fprintf(stderr, "    %-28s %8.3f ms %5.1f%%  (%lld calls/step)\n", t.op.c_str(),
                     per_step, 100.0 * t.ms / total, static_cast<long long>(t.calls / steps_timed));
      }
    }
    op_profile[what] = rows;
  };
  if (profiler) profiler->Take();  // drop the load's copies
  json result = {{"model", dir},
                 {"load_format", format},
                 {"quantization", rank->model.config.quantization.fp8() ? "fp8" : "none"},
                 {"device", device},
                 {"layout", parallel.ToString()},
                 {"commit", BuildCommit()},
                 {"load_seconds", load_s}};

  // TTFT: prefill of one request, plus sampling its first token (greedy, on the device).
  json ttft = json::array();
  for (int64_t len : ttft_lens) {
    std::vector<double> times;
    for (int64_t r = 0; r < repeats + 1; ++r) {  // the first run warms up
      std::vector<std::vector<int32_t>> tokens(1, std::vector<int32_t>(len));
      for (auto& t : tokens[0]) t = any_id(rng);
      std::vector<std::vector<int32_t>> table(1);
      if (!blocks.Reserve(&table[0], static_cast<int>(len))) {
        return absl::ResourceExhaustedError("--num-kv-blocks too small for --ttft");
      }
      const auto start = Clock::now();
      const StepOutput out =
          executor.Execute(Plan(replicas, bs, tokens, table, {0}, {static_cast<int>(len)}, true));
      TESSERA_CHECK_EQ(out.tokens.size(), 1u);
      if (r > 0) times.push_back(Ms(Clock::now() - start));
      blocks.Free(&table[0]);
    }
    profile("ttft " + std::to_string(len), repeats + 1);
    ttft.push_back({{"prompt_tokens", len},
                    {"ms_p50", Percentile(times, 50)},
                    {"ms_min", Percentile(times, 0)}});
    std::fprintf(stderr, "TTFT %6lld tokens: %9.2f ms (p50 of %lld)\n", static_cast<long long>(len),
                 Percentile(times, 50), static_cast<long long>(repeats));
  }
  result["ttft"] = ttft;

  // Decode: B sequences at `context` tokens of context, one token each per step.
  json decode = json::array();
  for (int64_t batch : batches) {
    std::vector<std::vector<int32_t>> tokens(batch), table(batch);
    for (int64_t j = 0; j < batch; ++j) {
      tokens[j].resize(context + steps + 1);
      for (auto& t : tokens[j]) t = any_id(rng);
      if (!blocks.Reserve(&table[j], static_cast<int>(context + steps + 1))) {
        return absl::ResourceExhaustedError(
            "--num-kv-blocks too small for --decode-batch x --decode-context");
      }
    }
    // Prefill the contexts (not timed), in pieces within the token budget.
    for (int64_t j = 0; j < batch; ++j) {
      for (int64_t begin = 0; begin < context; begin += max_tokens) {
        const int end = static_cast<int>(std::min<int64_t>(context, begin + max_tokens));
        executor.Execute(
            Plan(replicas, bs, {tokens[j]}, {table[j]}, {static_cast<int>(begin)}, {end}, false));
      }
    }
    if (profiler) profiler->Take();  // not the prefills
    std::vector<double> times;
    for (int64_t s = 0; s < steps; ++s) {
      std::vector<int> begin(batch, static_cast<int>(context + s)),
          end(batch, static_cast<int>(context + s + 1));
      const auto start = Clock::now();
      // Greedy sampling on the device, as a served step: only the ids come back.
      const StepOutput out = executor.Execute(Plan(replicas, bs, tokens, table, begin, end, true));
      TESSERA_CHECK_EQ(out.tokens.size(), static_cast<size_t>(batch));
      if (s > 0) times.push_back(Ms(Clock::now() - start));
    }
    profile("decode batch " + std::to_string(batch), steps);
    for (auto& t : table) blocks.Free(&t);
    const double p50 = Percentile(times, 50);
    decode.push_back({{"batch", batch},
                      {"context", context},
                      {"ms_per_step_p50", p50},
                      {"ms_per_step_p90", Percentile(times, 90)},
                      {"tokens_per_s", batch * 1000.0 / p50}});
    std::fprintf(stderr, "decode batch %4lld, context %6lld: %9.2f ms/step, %10.1f tok/s\n",
                 static_cast<long long>(batch), static_cast<long long>(context), p50,
                 batch * 1000.0 / p50);
  }
  result["decode"] = decode;
  if (profiler) result["op_profile"] = op_profile;

  // Throughput through the serving engine: every request submitted at once.
  if (requests > 0) {
    EngineOptions options;
    options.max_num_seqs = static_cast<int>(max_seqs);
    options.max_num_batched_tokens = static_cast<int>(max_tokens);
    options.max_queue = static_cast<int>(requests) + 1;
    options.max_model_len =
        std::min<int64_t>(config.max_position_embeddings, num_blocks * block_size);
    Engine engine(executor, nullptr, nullptr, options);
    std::lognormal_distribution<double> in_len = LogNormalLengths(input_mean),
                                        out_len = LogNormalLengths(output_mean);
    std::vector<double> ttfts, tpots;
    std::atomic<int64_t> output_tokens{0}, failures{0};
    std::mutex mu;
    const auto start = Clock::now();
    std::thread driver([&] {
      std::vector<std::shared_ptr<RequestStream>> streams;
      std::vector<Clock::time_point> submitted;
      for (int64_t i = 0; i < requests; ++i) {
        EngineRequest r;
        r.request_id = absl::StrCat("bench-", i);
        const int in = static_cast<int>(std::clamp(in_len(rng), 4.0, 4096.0));
        r.max_tokens = static_cast<int>(std::clamp(out_len(rng), 4.0, 2048.0));
        r.prompt.resize(in);
        for (auto& t : r.prompt) t = any_id(rng);
        r.ignore_eos = true;
        r.sampling.temperature = 0;
        absl::StatusOr<std::shared_ptr<RequestStream>> s = engine.Submit(std::move(r));
        if (!s.ok()) {
          ++failures;
          continue;
        }
        streams.push_back(*s);
        submitted.push_back(Clock::now());
      }
      // Poll every stream, so each token's arrival time is when the engine produced it.
      const size_t n = streams.size();
      std::vector<Clock::time_point> first(n), last(n);
      std::vector<int64_t> count(n, 0);
      std::vector<bool> done(n, false);
      size_t remaining = n;
      while (remaining > 0) {
        bool any = false;
        for (size_t i = 0; i < n; ++i) {
          EngineOutput out;
          while (!done[i] && streams[i]->Next(&out, std::chrono::milliseconds(0))) {
            any = true;
            if (!out.token_ids.empty()) {
              last[i] = Clock::now();
              if (count[i] == 0) first[i] = last[i];
              count[i] += static_cast<int64_t>(out.token_ids.size());
            }
            if (out.finished) {
              done[i] = true;
              --remaining;
              if (!out.status.ok()) ++failures;
            }
          }
        }
        if (!any) std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      std::lock_guard<std::mutex> lock(mu);
      for (size_t i = 0; i < n; ++i) {
        output_tokens += count[i];
        if (count[i] > 0) ttfts.push_back(Ms(first[i] - submitted[i]));
        if (count[i] > 1) tpots.push_back(Ms(last[i] - first[i]) / (count[i] - 1));
      }
      engine.Stop();
    });
    engine.Run();  // on this (the MPI) thread; shuts the workers down when it returns
    driver.join();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    // NOTE: TTFT here is measured from submission, with every request queued at once, so it
    // includes queueing; it is a throughput-run figure, not the single-request TTFT above.
    result["throughput"] = {{"requests", requests},
                            {"failures", failures.load()},
                            {"seconds", seconds},
                            {"output_tokens_per_s", output_tokens / seconds},
                            {"requests_per_s", requests / seconds},
                            {"ttft_ms_p50", Percentile(ttfts, 50)},
                            {"ttft_ms_p99", Percentile(ttfts, 99)},
                            {"tpot_ms_p50", Percentile(tpots, 50)},
                            {"tpot_ms_p99", Percentile(tpots, 99)}};
    std::fprintf(stderr,
                 "throughput: %lld requests in %.2f s: %.1f output tok/s, TTFT p50 %.1f ms, TPOT "
                 "p50 %.2f ms\n",
                 static_cast<long long>(requests), seconds, output_tokens / seconds,
                 Percentile(ttfts, 50), Percentile(tpots, 50));
  } else {
    executor.Shutdown();
  }
  // Expert load over everything above (this stage's MoE layers, all EP ranks): how far the
  // busiest expert and the busiest rank are above the mean, in either exchange mode (low-latency
  // steps up to the last sync: Qwen3Model::ExpertLoad), and the (token, expert) pairs by mode.
  const Qwen3Model::ExpertLoad load = executor.model().expert_load();
  if (!load.tokens_per_expert.empty()) {
    auto max_over_mean = [](const std::vector<int64_t>& v) {
      int64_t sum = 0, max = 0;
      for (int64_t x : v) {
        sum += x;
        max = std::max(max, x);
      }
      return sum > 0 ? static_cast<double>(max) * static_cast<double>(v.size()) / sum : 0.0;
    };
    const double experts = max_over_mean(load.tokens_per_expert);
    const double ranks = max_over_mean(load.rows_per_rank);
    result["expert_load"] = {{"max_over_mean_expert", experts},
                             {"max_over_mean_rank", ranks},
                             {"tokens_per_expert", load.tokens_per_expert},
                             {"rows_per_rank", load.rows_per_rank},
                             {"pairs_normal", load.normal_pairs},
                             {"pairs_low_latency", load.low_latency_pairs}};
    std::fprintf(stderr,
                 "expert load (max/mean): experts %.3f, EP ranks %.3f (pairs: %lld normal mode, "
                 "%lld low-latency)\n",
                 experts, ranks, static_cast<long long>(load.normal_pairs),
                 static_cast<long long>(load.low_latency_pairs));
  }
  if (f.json) std::printf("%s\n", result.dump(1).c_str());
  const bool failed =
      result.contains("throughput") && result["throughput"]["failures"].get<int64_t>() > 0;
  return failed ? 1 : 0;
}

}  // namespace

int BenchCommand(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  BenchFlags flags;
  flags.rank.command = "tessera bench";
  flags.rank.load_format = "dummy";
  std::unique_ptr<CLI::App> app = NewCommandLine(
      "bench", "Measure TTFT, decode and throughput (by default dummy weights at real shapes).");
  AddBenchFlags(*app, &flags);
  if (std::optional<int> code = ParseCommandLine(*app, argc, argv, mpi.rank() == 0)) return *code;
  InitLogging(flags.rank.command, /*quiet=*/mpi.rank() != 0);
  absl::StatusOr<int> code = Bench(mpi, flags);
  if (!code.ok()) return ExitCode(mpi, code.status());
  return *code;
}

}  // namespace tessera
