// One rank's bring-up, shared by the commands that run the model (run, serve, bench, and any
// later one such as bench-serve): the model directory, the parallel layout, the device and its
// communicators, this rank's shard of the weights and the KV cache.
//
// A command registers the flags it shares (AddModelFlags, AddParallelFlags, AddKvCacheFlags),
// parses, then calls OpenRank (no collective: resolves the model and the layout, so requests can
// be validated before any weight is read) and LoadRank (collective: device, shard, KV cache; every
// rank learns whether any failed). Ranks other than 0 then call ServeStepsAsWorker.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/profiling_backend.h"
#include "launch/device.h"
#include "launch/model_dir.h"
#include "launch/mpi_session.h"
#include "parallel/parallel_config.h"
#include "runtime/engine/executor.h"

namespace tessera {

struct RankOptions {
  std::string command;  // "tessera serve"

  // AddModelFlags.
  std::string model;   // --model; empty: the embedded default model
  std::string device;  // --device; empty: cuda when a GPU is visible, else cpu (SetUpRankCompute)
  // AddParallelFlags.
  int tp = 1, pp = 1, ep = 1, dp = 0;  // dp 0: the ranks left over
  double collective_timeout = 0;       // --collective-timeout seconds; 0: keep the default

  // Weights: "safetensors" from the model directory, or "dummy" (random at the real shapes, only
  // config.json needed) with `dummy_seed`. `op_profile` times every op (ProfilingBackend).
  std::string load_format = "safetensors";
  // --quantization: empty = from the checkpoint (FP8 where its config.json and files say so);
  // "fp8" = also block-quantize a bf16/fp16/fp32 checkpoint's (or dummy) linears at load.
  std::string quantization;
  uint64_t dummy_seed = 0;
  bool op_profile = false;

  // The KV cache, the same block count on every rank (from the tightest one): num_kv_blocks when
  // > 0; else kv_cache_memory bytes per rank when > 0; else, on a backend that reports its memory
  // (GPUs), what gpu_memory_utilization of it leaves once the weights and the step workspace are
  // in; else default_kv_cache_memory.
  int block_size = 16;
  int64_t num_kv_blocks = 0;
  int64_t kv_cache_memory = 0;
  double gpu_memory_utilization = 0.9;
  int64_t default_kv_cache_memory = int64_t{256} << 20;
};

// --model, --device, --quantization.
void AddModelFlags(CLI::App& app, RankOptions* options);
// --tp, --pp, --ep, --dp, and --collective-timeout (its default is options->collective_timeout
// when > 0, else the watchdog's).
void AddParallelFlags(CLI::App& app, RankOptions* options);
// --block-size and the block count under `num_blocks_flag` ("--num-kv-blocks"), `default_blocks`
// saying what 0 means; with `memory_flags`, --kv-cache-memory and --gpu-memory-utilization.
CLI::Option* AddKvCacheFlags(CLI::App& app, RankOptions* options,
                             const std::string& num_blocks_flag, const std::string& default_blocks,
                             bool memory_flags);

// --quantization (also for commands that take --model themselves).
void AddQuantizationFlag(CLI::App& app, RankOptions* options);

struct Rank {
  ModelDirectory model;
  ParallelConfig parallel;
  RankCompute compute;
  std::unique_ptr<ProfilingBackend> profiler;  // with op_profile
  Backend* backend = nullptr;                  // the profiler when profiling, else compute's
  std::unique_ptr<Executor> executor;
  std::string device;  // cpu or cuda
  int64_t num_kv_blocks = 0;
  int block_size = 0;
  int64_t kv_block_bytes = 0;  // one block's K and V, all of this rank's layers
  double load_seconds = 0;
};

// The largest step the command will plan for an executor of `num_kv_blocks` blocks (INT32_MAX
// when the cache is sized from the memory the weights leave, not known before the load).
using StepLimitsFor = std::function<StepLimits(const ModelConfig& config, int num_kv_blocks)>;

// Resolves the model directory and the parallel layout and sets the collective timeout. The same
// on every rank; errors name the flag or the file.
absl::StatusOr<std::unique_ptr<Rank>> OpenRank(MpiSession& mpi, const RankOptions& options);

// Collective: the device and its communicators, this rank's shard (or dummy weights) and the KV
// cache sized as RankOptions says, logging the weights' progress; then logs (rank 0) each rank's
// load time and the cache.
// A rank that fails to load returns its own error (tagged PerRank), the others an ABORTED one.
absl::Status LoadRank(MpiSession& mpi, const RankOptions& options, const StepLimitsFor& limits,
                      Rank& rank);

// On ranks other than 0: executes rank 0's step plans until it shuts them down, then returns
// true. On rank 0 returns false at once.
bool ServeStepsAsWorker(MpiSession& mpi, Rank& rank);

// A status that differs per rank (a load failure): ExitCode prints it on the rank it happened
// on, tagged with the rank, instead of on rank 0 only.
absl::Status PerRank(absl::Status status);

// Logs `status` (an error) and returns the exit code: 0 for OK, 2 for a usage error
// (INVALID_ARGUMENT), else 1. Errors every rank meets alike are logged by rank 0 only.
int ExitCode(MpiSession& mpi, const absl::Status& status);

}  // namespace tessera
