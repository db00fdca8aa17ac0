#include "runtime/engine/metrics.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tessera {

namespace {

// Prometheus label values: backslash, double quote and newline escaped.
std::string EscapeLabel(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

Metrics::Metrics() {
  // Buckets as vLLM v1 uses them (seconds): TTFT up to ~43 minutes, inter-token gaps up to
  // 80 s, whole requests up to ~2 hours.
  ttft_.bounds = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
                  1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
  itl_.bounds = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                 0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
  tpot_.bounds = itl_.bounds;
  e2e_.bounds = {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
                 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
  step_.bounds = {0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0};
  step_device_.bounds = step_.bounds;
  host_.bounds = {0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5};
  for (Histogram* h : {&ttft_, &itl_, &tpot_, &e2e_, &step_, &step_device_, &host_}) {
    h->counts.assign(h->bounds.size() + 1, 0);
  }
}

void Metrics::SetModelName(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  model_name_ = name;
}

void Metrics::SetCacheConfig(int64_t block_size, int64_t num_blocks, bool prefix_caching) {
  std::lock_guard<std::mutex> lock(mu_);
  cache_config_ =
      absl::StrCat("block_size=\"", block_size, "\",num_gpu_blocks=\"", num_blocks,
                   "\",enable_prefix_caching=\"", prefix_caching ? "True" : "False", "\"");
}

std::string Metrics::Labels(const std::string& extra) const {
  return absl::StrCat("{model_name=\"", EscapeLabel(model_name_), "\"", extra.empty() ? "" : ",",
                      extra, "}");
}

uint64_t Metrics::Bits(double v) {
  uint64_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

void Metrics::Observe(Histogram* h, double v) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t i = 0;
  while (i < h->bounds.size() && v > h->bounds[i]) ++i;
  ++h->counts[i];
  h->sum += v;
  ++h->count;
}

void Metrics::AddFinished(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  ++finished_[reason];
}

void Metrics::AddError(const std::string& code) {
  std::lock_guard<std::mutex> lock(mu_);
  ++errors_[code];
}

void Metrics::RenderHistogram(const std::string& name, const std::string& help, const Histogram& h,
                              std::string* out) const {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cumulative += h.counts[i];
    absl::StrAppend(out, name, "_bucket",
                    Labels(absl::StrCat("le=\"", absl::StrFormat("%g", h.bounds[i]), "\"")), " ",
                    cumulative, "\n");
  }
  cumulative += h.counts.back();
  absl::StrAppend(out, name, "_bucket", Labels("le=\"+Inf\""), " ", cumulative, "\n", name, "_sum",
                  Labels(), " ", absl::StrFormat("%.9g", h.sum), "\n", name, "_count", Labels(),
                  " ", h.count, "\n");
}

std::string Metrics::Render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  const std::string labels = Labels();
  auto gauge = [&](const char* name, const char* help, const std::string& value) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " gauge\n", name, labels,
                    " ", value, "\n");
  };
  auto counter = [&](const char* name, const char* help, int64_t value) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " counter\n", name, labels,
                    " ", value, "\n");
  };
  double usage;
  const uint64_t bits = kv_usage_bits_.load();
  std::memcpy(&usage, &bits, sizeof(usage));
  gauge("tessera:num_requests_running", "Requests in the running batch.",
        absl::StrCat(running_.load()));
  gauge("tessera:num_requests_waiting", "Requests waiting to be scheduled.",
        absl::StrCat(waiting_.load()));
  gauge("tessera:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).",
        absl::StrFormat("%.6f", usage));
  gauge("tessera:kv_cache_free_blocks", "KV-cache blocks free or evictable.",
        absl::StrCat(kv_free_.load()));
  gauge("tessera:kv_cache_total_blocks", "KV-cache blocks in all.", absl::StrCat(kv_total_.load()));
  if (!cache_config_.empty()) {
    absl::StrAppend(&out,
                    "# HELP tessera:cache_config_info Information of the KV cache configuration.\n"
                    "# TYPE tessera:cache_config_info gauge\n"
                    "tessera:cache_config_info",
                    Labels(cache_config_), " 1\n");
  }
  counter("tessera:prompt_tokens_total",
          "Prompt tokens of the requests admitted (prefix-cache hits included).",
          prompt_tokens_.load());
  counter("tessera:generation_tokens_total", "Generated tokens.", generation_tokens_.load());
  counter("tessera:prefix_cache_hit_tokens_total", "Prompt tokens served from the prefix cache.",
          prefix_hit_tokens_.load());
  counter("tessera:num_preemptions_total", "Sequences preempted (recomputed later).",
          preemptions_.load());
  RenderHistogram("tessera:time_to_first_token_seconds", "Time to first token.", ttft_, &out);
  RenderHistogram("tessera:inter_token_latency_seconds",
                  "Gap before each output token after the first (one sample per token).", itl_,
                  &out);
  // The same samples under the older name, as vLLM keeps it.
  RenderHistogram("tessera:time_per_output_token_seconds",
                  "Time per output token after the first (one sample per token).", itl_, &out);
  RenderHistogram("tessera:request_time_per_output_token_seconds",
                  "A request's mean time per output token after the first (one per request).",
                  tpot_, &out);
  RenderHistogram("tessera:e2e_request_latency_seconds", "End-to-end request latency.", e2e_, &out);
  RenderHistogram("tessera:engine_step_seconds",
                  "Engine step time on rank 0's host, from its launch (or the previous step's "
                  "results, if later) to its sampled ids (with async scheduling: its period).",
                  step_, &out);
  RenderHistogram("tessera:engine_step_device_seconds",
                  "Rank 0's device time per engine step: the span of its forward's ops on the "
                  "device (CUDA events; the forward's wall time on the CPU backend).",
                  step_device_, &out);
  RenderHistogram("tessera:engine_step_host_seconds",
                  "Rank 0's host time per forward step outside the forward (intake, scheduling, "
                  "plan, broadcast, sampling, outputs on the step loop).",
                  host_, &out);
  absl::StrAppend(&out, "# HELP tessera:request_success_total Finished requests by reason.\n",
                  "# TYPE tessera:request_success_total counter\n");
  for (const auto& [reason, n] : finished_) {
    absl::StrAppend(&out, "tessera:request_success_total",
                    Labels(absl::StrCat("finished_reason=\"", reason, "\"")), " ", n, "\n");
  }
  absl::StrAppend(
      &out,
      "# HELP tessera:request_errors_total Requests that ended in an error, by status code.\n",
      "# TYPE tessera:request_errors_total counter\n");
  for (const auto& [code, n] : errors_) {
    absl::StrAppend(&out, "tessera:request_errors_total",
                    Labels(absl::StrCat("code=\"", code, "\"")), " ", n, "\n");
  }
  if (!expert_tokens_.empty()) {
    absl::StrAppend(
        &out,
        "# HELP tessera:moe_expert_tokens_total (Token, expert) pairs routed to each "
        "expert of the first stage's MoE layers, summed over layers (low-latency steps as "
        "of the last sync, every TESSERA_EP_LOAD_SYNC_STEPS).\n",
        "# TYPE tessera:moe_expert_tokens_total counter\n");
    for (size_t e = 0; e < expert_tokens_.size(); ++e) {
      absl::StrAppend(&out, "tessera:moe_expert_tokens_total{expert=\"", e, "\"} ",
                      expert_tokens_[e], "\n");
    }
    absl::StrAppend(&out,
                    "# HELP tessera:moe_rank_tokens_total Tokens each expert-parallel rank of the "
                    "first stage received (once per rank however many of its experts), summed "
                    "over layers.\n",
                    "# TYPE tessera:moe_rank_tokens_total counter\n");
    for (size_t r = 0; r < rank_rows_.size(); ++r) {
      absl::StrAppend(&out, "tessera:moe_rank_tokens_total{ep_rank=\"", r, "\"} ", rank_rows_[r],
                      "\n");
    }
  }
  return out;
}

void Metrics::SetExpertLoad(const std::vector<int64_t>& tokens_per_expert,
                            const std::vector<int64_t>& rows_per_rank) {
  std::lock_guard<std::mutex> lock(mu_);
  expert_tokens_ = tokens_per_expert;
  rank_rows_ = rows_per_rank;
}

}  // namespace tessera
