// The Executor: this rank's share of the model and KV cache, and the loop that runs step plans.
//
// Every rank owns one. Rank 0 (the coordinator) calls Execute(plan) for each step; it broadcasts
// the plan, runs its own part, and collects the logits. Every other rank calls RunWorker(), which
// receives plans and executes them until a shutdown plan arrives. Within a step, each pipeline
// stage runs its replica's micro-batches in order: stage s works on micro-batch m at tick s + m,
// so the stages overlap; the last stage's TP rank 0 of each replica sends its sampled ids (and the
// logits of rows that need them) to rank 0.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "parallel/communicator.h"
#include "parallel/parallel_config.h"
#include "runtime/engine/step_plan.h"
#include "runtime/engine/step_trace.h"
#include "runtime/model/kv_cache.h"
#include "runtime/model/qwen3.h"

namespace tessera {

// The model numbers ParallelConfig must divide.
ModelDims ModelDimsOf(const ModelConfig& config);

class Executor {
 public:
  // `world` may be null for a single rank. Creates the TP and stage communicators: collective over
  // `world` and unable to fail, so every rank gets here before any per-rank step that can.
  Executor(const ModelConfig& config, const ParallelConfig& parallel, Communicator* world);

  // Per rank: loads this rank's shard, plans the step workspace for steps within `limits`
  // (Qwen3Model::PlanWorkspace) and allocates `num_kv_blocks` KV blocks of `block_size`. Callers
  // agree on the outcome across ranks before the first step (MpiSession::AnyFailed).
  absl::Status Load(const Checkpoint& checkpoint, Backend& backend, int num_kv_blocks,
                    int block_size, const StepLimits& limits);

  // Load's two halves, for callers that size the KV cache from the memory the model leaves:
  // the shard and its planned workspace, then the KV cache.
  absl::Status LoadModel(const Checkpoint& checkpoint, Backend& backend, const StepLimits& limits);
  void AllocateKv(Backend& backend, int num_kv_blocks, int block_size);

  // Per rank: random weights at the real shapes, generated on the device (benchmarks).
  absl::Status LoadDummy(Backend& backend, int num_kv_blocks, int block_size,
                         const StepLimits& limits, uint64_t seed);

  // Both steps, for a single rank (tests).
  static absl::StatusOr<std::unique_ptr<Executor>> Create(const ModelConfig& config,
                                                          const Checkpoint& checkpoint,
                                                          Backend& backend,
                                                          const ParallelConfig& parallel,
                                                          Communicator* world, int num_kv_blocks,
                                                          int block_size, const StepLimits& limits);

  // The largest step each micro-batch may be (what the workspace was planned for).
  const StepLimits& step_limits() const { return model_->step_limits(); }

  const ParallelConfig& parallel() const { return parallel_; }
  const ModelConfig& config() const { return config_; }
  int block_size() const { return block_size_; }
  int num_kv_blocks() const { return num_kv_blocks_; }
  const Qwen3Model& model() const { return *model_; }

  // Rank 0 only. Broadcasts and runs `plan`; returns every replica's logit rows in plan order:
  // the ids of rows sampled on the device, the logits of the others (StepOutput). `record`, if
  // given, gets the times of the broadcast and of the forward (with the wait for its results).
  StepOutput Execute(const StepPlan& plan, StepRecord* record = nullptr);
  // Rank 0 only: tells the workers to return from RunWorker().
  void Shutdown();
  // Rank 0 only: an empty plan that keeps idle workers' watchdogs quiet, then a barrier: it
  // returns only once every rank has answered (a hung rank keeps it, and rank 0's watchdog,
  // waiting).
  void Heartbeat();
  // Ranks other than 0: executes broadcast plans until shutdown.
  void RunWorker();

 private:
  void Run(const StepPlan& plan, StepOutput* output);
  ShardSpec MakeShard();

  ModelConfig config_;
  ParallelConfig parallel_;
  Communicator* world_;
  int num_kv_blocks_ = 0;
  int block_size_ = 0;
  std::unique_ptr<Communicator> tp_comm_;     // same stage and replica
  std::unique_ptr<Communicator> stage_comm_;  // same stage (the expert-parallel group)
  std::unique_ptr<Qwen3Model> model_;
  std::unique_ptr<KvCache> kv_;
};

}  // namespace tessera
