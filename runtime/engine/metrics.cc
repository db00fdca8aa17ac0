#include "runtime/engine/metrics.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tessera {

Metrics::Metrics() {
  // Buckets as vLLM uses them (seconds).
  ttft_.bounds = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                  0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0};
  tpot_.bounds = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5};
  e2e_.bounds = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0};
  step_.bounds = {0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0};
  for (Histogram* h : {&ttft_, &tpot_, &e2e_, &step_}) h->counts.assign(h->bounds.size() + 1, 0);
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
                              std::string* out) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cumulative += h.counts[i];
    absl::StrAppend(out, name, "_bucket{le=\"", absl::StrFormat("%g", h.bounds[i]), "\"} ",
                    cumulative, "\n");
  }
  cumulative += h.counts.back();
  absl::StrAppend(out, name, "_bucket{le=\"+Inf\"} ", cumulative, "\n", name, "_sum ",
                  absl::StrFormat("%.9g", h.sum), "\n", name, "_count ", h.count, "\n");
}

std::string Metrics::Render() const {
  std::string out;
  auto gauge = [&out](const char* name, const char* help, const std::string& value) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " gauge\n", name, " ",
                    value, "\n");
  };
  auto counter = [&out](const char* name, const char* help, int64_t value) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " counter\n", name, " ",
                    value, "\n");
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
  counter("tessera:prompt_tokens_total", "Prefill tokens processed.", prompt_tokens_.load());
  counter("tessera:generation_tokens_total", "Generated tokens.", generation_tokens_.load());
  counter("tessera:prefix_cache_hit_tokens_total", "Prompt tokens served from the prefix cache.",
          prefix_hit_tokens_.load());
  counter("tessera:num_preemptions_total", "Sequences preempted (recomputed later).",
          preemptions_.load());
  std::lock_guard<std::mutex> lock(mu_);
  RenderHistogram("tessera:time_to_first_token_seconds", "Time to first token.", ttft_, &out);
  RenderHistogram("tessera:time_per_output_token_seconds", "Time per output token after the first.",
                  tpot_, &out);
  RenderHistogram("tessera:e2e_request_latency_seconds", "End-to-end request latency.", e2e_, &out);
  RenderHistogram("tessera:engine_step_seconds",
                  "Engine step time, from its plan to its sampled ids (no time between steps).",
                  step_, &out);
  absl::StrAppend(&out, "# HELP tessera:request_success_total Finished requests by reason.\n",
                  "# TYPE tessera:request_success_total counter\n");
  for (const auto& [reason, n] : finished_) {
    absl::StrAppend(&out, "tessera:request_success_total{finished_reason=\"", reason, "\"} ", n,
                    "\n");
  }
  absl::StrAppend(
      &out, "# HELP tessera:request_errors_total Requests that ended in an error, by gRPC code.\n",
      "# TYPE tessera:request_errors_total counter\n");
  for (const auto& [code, n] : errors_) {
    absl::StrAppend(&out, "tessera:request_errors_total{code=\"", code, "\"} ", n, "\n");
  }
  if (!expert_tokens_.empty()) {
    absl::StrAppend(&out,
                    "# HELP tessera:moe_expert_tokens_total (Token, expert) pairs routed to each "
                    "expert of the first stage's MoE layers, summed over layers.\n",
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
