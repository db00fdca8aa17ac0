// Process metrics in Prometheus' text format (exposition format 0.0.4).
//
// Names follow vLLM's (vllm:num_requests_running -> tessera:num_requests_running, ...) so
// dashboards carry over by swapping the prefix. Thread-safe: the engine thread records, the HTTP
// endpoint renders.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tessera {

class Metrics {
 public:
  Metrics();

  // Gauges (set by the engine every step).
  void SetRunning(int64_t n) { running_ = n; }
  void SetWaiting(int64_t n) { waiting_ = n; }
  void SetKvUsage(double fraction) { kv_usage_bits_ = Bits(fraction); }
  void SetKvBlocks(int64_t free, int64_t total) {
    kv_free_ = free;
    kv_total_ = total;
  }

  // Per request.
  void ObserveTimeToFirstToken(double seconds) { Observe(&ttft_, seconds); }
  void ObserveTimePerOutputToken(double seconds) { Observe(&tpot_, seconds); }
  void ObserveEndToEnd(double seconds) { Observe(&e2e_, seconds); }
  // Per engine step: the time from its plan to its sampled ids (Executor::Execute), the
  // engine's own cost of the step; gaps between steps are scheduling overhead (bench-serve's
  // bound divides output tokens by this sum).
  void ObserveEngineStep(double seconds) { Observe(&step_, seconds); }
  void AddPromptTokens(int64_t n) { prompt_tokens_ += n; }
  void AddGenerationTokens(int64_t n) { generation_tokens_ += n; }
  void AddPrefixCacheHitTokens(int64_t n) { prefix_hit_tokens_ += n; }
  void AddPreemption() { ++preemptions_; }
  // `reason`: stop, length, cancelled, error.
  void AddFinished(const std::string& reason);
  // `code`: the gRPC status code name, e.g. INVALID_ARGUMENT.
  void AddError(const std::string& code);

  std::string Render() const;

  // Totals so far (the periodic stats line of `tessera serve`). Prompt tokens count those
  // computed; prefix-cache hits those a request found cached instead.
  int64_t prompt_tokens() const { return prompt_tokens_; }
  int64_t generation_tokens() const { return generation_tokens_; }
  int64_t prefix_cache_hit_tokens() const { return prefix_hit_tokens_; }

 private:
  struct Histogram {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;  // per bucket (not cumulative); last is +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  static uint64_t Bits(double v);
  void Observe(Histogram* h, double v);
  static void RenderHistogram(const std::string& name, const std::string& help, const Histogram& h,
                              std::string* out);

  mutable std::mutex mu_;
  std::atomic<int64_t> running_{0}, waiting_{0}, kv_free_{0}, kv_total_{0};
  std::atomic<uint64_t> kv_usage_bits_{0};
  std::atomic<int64_t> prompt_tokens_{0}, generation_tokens_{0}, prefix_hit_tokens_{0},
      preemptions_{0};
  Histogram ttft_, tpot_, e2e_, step_;       // guarded by mu_
  std::map<std::string, int64_t> finished_;  // guarded by mu_
  std::map<std::string, int64_t> errors_;    // guarded by mu_
};

}  // namespace tessera
