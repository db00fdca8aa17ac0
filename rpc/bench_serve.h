// A serving benchmark through the real gRPC server, as `vllm bench serve` measures one: requests
// arrive by a Poisson process (or all at once) or under a concurrency cap, each streams its reply,
// and every time is taken at the client when a chunk arrives. Tokens are counted from what the
// client received.
//
// Prompts are random token ids (ids below the first special token) with seeded lengths: fixed, or
// log-normal around a mean as ShareGPT's are (the same draw as `tessera bench`'s throughput run).
// Every request sets ignore_eos, so it generates exactly its drawn output length.
//
// The bound: when the server's metrics endpoint is given, the benchmark reads the engine's device
// time (tessera:engine_step_device_seconds: each step's span on rank 0's device, summed) before
// and after the measured window. device busy = its growth over the window; bound = output tokens
// / device busy, what the run would reach if the device never waited between steps (for the
// host's scheduling, detokenising, streaming, or for requests: a run that does not keep the
// server full is bounded by its arrivals, not the engine); efficiency = achieved / bound =
// device busy / the window's wall time (device utilization). Servers without that metric give
// the older bound from tessera:engine_step_seconds (a step's host-side time: with async
// scheduling its period, so efficiency reads ~1 whatever happens).
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rpc/client.h"

namespace tessera {

struct BenchServeOptions {
  ClientOptions client;
  // Requests per second (Poisson arrivals); infinity sends them all at once.
  double request_rate = std::numeric_limits<double>::infinity();
  int max_concurrency = 0;  // requests in flight at most; 0 = no cap
  int num_prompts = 100;
  int warmup_prompts = 0;  // sent first, one at a time, not counted
  // Fixed lengths when > 0; otherwise log-normal around the means (sigma 1), clamped to [1, 4x].
  int input_len = 0;
  int output_len = 0;
  double input_mean = 256;
  double output_mean = 128;
  uint64_t seed = 0;
  double slo_ttft_ms = 0;  // goodput: requests meeting every SLO given (0 = no SLO)
  double slo_tpot_ms = 0;
  std::string metrics_address;  // host:port of the server's /metrics, for the bound; "" = none
};

struct LatencySummary {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;  // milliseconds
};

struct BenchServeResult {
  int completed = 0;
  int failed = 0;
  std::vector<std::string> errors;  // first few failure messages
  double duration_s = 0;
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  double request_throughput = 0;  // completed requests / s
  double output_throughput = 0;   // output tokens / s
  double total_token_throughput = 0;
  int max_concurrency_reached = 0;
  LatencySummary ttft, tpot, itl, e2e;
  double goodput = 0;  // requests / s meeting the SLOs (0 when none given)
  // From the server's metrics (when metrics_address is set and the server exports them).
  bool have_bound = false;
  double engine_step_seconds = 0;  // tessera:engine_step_seconds over the window
  int64_t engine_steps = 0;
  // tessera:engine_step_device_seconds over the window (false: the server does not export it).
  bool have_device = false;
  double device_busy_seconds = 0;
  double device_utilization = 0;       // device_busy_seconds / duration_s
  double bound_output_throughput = 0;  // output tokens / device busy (else / engine step seconds)
  double efficiency = 0;               // output_throughput / bound_output_throughput
  // Rank 0's host time outside the forwards over the run (tessera:engine_step_host_seconds):
  // what the device waits for each step unless the engine overlaps it.
  double engine_host_seconds = 0;
  double host_us_per_step = 0;
};

// Runs the benchmark against a live server. Errors only when the server cannot be reached at all;
// failed requests are counted in the result.
absl::StatusOr<BenchServeResult> RunBenchServe(const BenchServeOptions& options);

// The percentile (0..100) of `values` by linear interpolation (numpy's default); 0 when empty.
double Percentile(std::vector<double> values, double percentile);

std::string BenchServeReport(const BenchServeOptions& options, const BenchServeResult& result);
std::string BenchServeJson(const BenchServeOptions& options, const BenchServeResult& result);

}  // namespace tessera
