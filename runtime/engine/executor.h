// The Executor: this rank's share of the model and KV cache, and the loop that runs step plans.
//
// Every rank owns one. Rank 0 (the coordinator) calls Execute(plan) for each step (or, with async
// scheduling, Launch(plan) and later Collect()); it broadcasts the plan, runs its own part, and
// collects the logits. Every other rank calls RunWorker(), which
// receives plans and executes them until a shutdown plan arrives. Within a step, each pipeline
// stage runs its replica's micro-batches in order: stage s works on micro-batch m at tick s + m,
// so the stages overlap; the last stage's TP rank 0 of each replica sends its sampled ids (and the
// logits of rows that need them) to rank 0.
#pragma once

#include <deque>
#include <memory>
#include <utility>
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
  // given, gets the times of the broadcast, the forward and the wait for its results.
  // `plan.overlapped` must be false. Execute = Launch, then Collect.
  StepOutput Execute(const StepPlan& plan, StepRecord* record = nullptr);
  // Rank 0 only: async scheduling's halves. Launch broadcasts `plan` and launches rank 0's part
  // (Qwen3Model::Launch; with pipeline stages or several micro-batches it runs them to the end).
  // Collect returns the results of the oldest launched step. An overlapped plan
  // (`plan.overlapped`: one stage, one micro-batch per replica) lets one more step be launched
  // before it is collected; when none is, Collect first tells the workers (a kCollect plan).
  // A plan that is not overlapped is collected before the next launch. Rank 0's share of each
  // step is timed on its stream (Backend::CreateTimer, two timers in turn: at most two steps are
  // in flight); Collect reads the time once the step's results are in (StepOutput::device_seconds).
  void Launch(const StepPlan& plan, StepRecord* record = nullptr);
  StepOutput Collect(StepRecord* record = nullptr);
  // Launched steps not yet collected (rank 0).
  int in_flight() const { return static_cast<int>(in_flight_.size()); }
  // Rank 0 only: tells the workers to return from RunWorker().
  void Shutdown();
  // Rank 0 only: an empty plan that keeps idle workers' watchdogs quiet, then a barrier: it
  // returns only once every rank has answered (a hung rank keeps it, and rank 0's watchdog,
  // waiting).
  void Heartbeat();
  // Ranks other than 0: executes broadcast plans until shutdown.
  void RunWorker();

 private:
  // A launched step on this rank: what rank 0 will receive, and this rank's results.
  struct Pending {
    bool overlapped = false;
    bool launched = false;  // Qwen3Model::Launch, not yet collected (else results are here)
    std::vector<std::vector<std::pair<size_t, size_t>>> sizes;  // [dp][micro]: rows, logit floats
    std::vector<std::vector<float>> logits;                     // [micro]
    std::vector<std::vector<int32_t>> tokens;                   // [micro]
    DeviceTimer* timer = nullptr;  // rank 0: one of timers_, around LaunchLocal
  };
  Pending LaunchLocal(const StepPlan& plan);
  // Waits for this rank's results of `pending`, then reports them: the last stage's TP rank 0
  // of each replica sends them to rank 0, which gathers every replica's into `output`.
  void CollectLocal(Pending& pending, StepOutput* output);
  void Broadcast(const StepPlan& plan, StepRecord* record);
  bool multi_rank() const;
  ShardSpec MakeShard();
  // The backend and, on rank 0, the step timers (after loading).
  void SetBackend(Backend& backend);

  ModelConfig config_;
  ParallelConfig parallel_;
  Communicator* world_;
  int num_kv_blocks_ = 0;
  int block_size_ = 0;
  std::unique_ptr<Communicator> tp_comm_;     // same stage and replica
  std::unique_ptr<Communicator> stage_comm_;  // same stage (the expert-parallel group)
  std::unique_ptr<Qwen3Model> model_;
  std::unique_ptr<KvCache> kv_;
  std::deque<Pending> in_flight_;  // rank 0: launched, not collected, oldest first
  Backend* backend_ = nullptr;
  // Rank 0: each launch takes the next (with at most two steps in flight, the other one is the
  // step still in flight, if any).
  std::unique_ptr<DeviceTimer> timers_[2];
  int next_timer_ = 0;
};

}  // namespace tessera
