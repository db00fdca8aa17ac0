// Process metrics in Prometheus' text format (exposition format 0.0.4).
//
// Names, meanings and histogram buckets follow vLLM's (vllm:num_requests_running ->
// tessera:num_requests_running, ...) so dashboards carry over by swapping the prefix; every sample
// carries a model_name label. Thread-safe: the engine thread records, the HTTP endpoint renders.
//
// Each request ends in exactly one of request_success_total{finished_reason} (stop, length,
// cancelled) and request_errors_total{code}: the engine counts the requests it accepted, the front
// ends count only those they refuse before Engine::Submit accepts them.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tessera {

class Metrics {
 public:
  Metrics();

  // Set once at start (before serving).
  void SetModelName(const std::string& name);
  // cache_config_info{block_size, num_gpu_blocks, enable_prefix_caching} 1, for routers.
  void SetCacheConfig(int64_t block_size, int64_t num_blocks, bool prefix_caching);

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
  // The gap before each generated token after the first (one observation per token).
  void ObserveInterTokenLatency(double seconds) { Observe(&itl_, seconds); }
  // A request's mean gap between tokens (one observation per request).
  void ObserveTimePerOutputToken(double seconds) { Observe(&tpot_, seconds); }
  void ObserveEndToEnd(double seconds) { Observe(&e2e_, seconds); }
  // Per engine step, on rank 0's host: from its launch (or the previous step's results, if
  // later) to its sampled ids. Synchronous steps: the step's own time; with async scheduling its
  // period, which includes any idle device time between steps.
  void ObserveEngineStep(double seconds) { Observe(&step_, seconds); }
  // Per engine step: rank 0's device time of its forward (StepOutput::device_seconds: the span of
  // the step's ops on the device, timed with events; the forward's wall time on the CPU backend).
  // Unlike ObserveEngineStep it excludes the device's idle time between steps, also with async
  // scheduling (where a step's engine_step_seconds is its period): bench-serve's bound divides
  // output tokens by this sum, and its efficiency is this sum over the wall time.
  void ObserveEngineStepDevice(double seconds) { Observe(&step_device_, seconds); }
  // Rank 0's host time of one forward step outside its forward: intake, scheduling, the plan,
  // its broadcast, sampling bookkeeping and the output work done on the step loop. On a GPU the
  // device idles for about this long per step (less what the output thread overlaps).
  void ObserveEngineHost(double seconds) { Observe(&host_, seconds); }
  // Prompt tokens of each request, once, cached ones included (hits / prompt = hit ratio).
  void AddPromptTokens(int64_t n) { prompt_tokens_ += n; }
  void AddGenerationTokens(int64_t n) { generation_tokens_ += n; }
  void AddPrefixCacheHitTokens(int64_t n) { prefix_hit_tokens_ += n; }
  void AddPreemption() { ++preemptions_; }
  // A request that ended without error; `reason`: stop, length, cancelled.
  void AddFinished(const std::string& reason);
  // A request that ended in an error; `code`: the status code name, e.g. INVALID_ARGUMENT.
  void AddError(const std::string& code);
  // Expert parallelism's load on rank 0's stage, totals since start (Qwen3Model::expert_load):
  // (token, expert) pairs per expert and rows received per EP rank.
  void SetExpertLoad(const std::vector<int64_t>& tokens_per_expert,
                     const std::vector<int64_t>& rows_per_rank);

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
  void RenderHistogram(const std::string& name, const std::string& help, const Histogram& h,
                       std::string* out) const;
  // `{model_name="...",<extra>}`.
  std::string Labels(const std::string& extra = "") const;

  mutable std::mutex mu_;
  std::atomic<int64_t> running_{0}, waiting_{0}, kv_free_{0}, kv_total_{0};
  std::atomic<uint64_t> kv_usage_bits_{0};
  std::atomic<int64_t> prompt_tokens_{0}, generation_tokens_{0}, prefix_hit_tokens_{0},
      preemptions_{0};
  std::string model_name_ = "tessera";  // set before serving
  std::string cache_config_;            // the cache_config_info labels; set before serving
  Histogram ttft_, itl_, tpot_, e2e_, step_, step_device_, host_;  // guarded by mu_
  std::map<std::string, int64_t> finished_;                        // guarded by mu_
  std::map<std::string, int64_t> errors_;                          // guarded by mu_
  std::vector<int64_t> expert_tokens_;                             // guarded by mu_
  std::vector<int64_t> rank_rows_;                                 // guarded by mu_
};

}  // namespace tessera
