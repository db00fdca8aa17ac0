// The StepPlan: what every rank executes in one engine step. Rank 0 (the coordinator) builds it
// and broadcasts it over the control plane (MPI); every rank runs the same plan, so no rank
// decides anything alone (docs/design.md, "A request's path").
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine/step.h"

namespace tessera {

struct StepPlan {
  // kHeartbeat: nothing to run; sent while idle so that a worker waiting for the next plan is
  // never mistaken for a hung rank by its watchdog.
  // kCollect: nothing to run; the ranks finish the overlapped forward in flight (send its ids).
  enum class Kind : uint8_t { kForward = 0, kShutdown = 1, kHeartbeat = 2, kCollect = 3 };
  Kind kind = Kind::kForward;
  // kForward, async scheduling: rank 0 broadcasts the next plan (a forward, or kCollect) before
  // it collects this step's results, so every rank launches that one before it reports this one.
  // False: every rank reports this step's results as soon as it has them.
  bool overlapped = false;
  // replicas[d] = the micro-batches of attention data-parallel replica d. Every replica has the
  // same number of micro-batches (padded with empty ones), because the ranks of a stage meet in
  // the expert exchange once per micro-batch and layer (sized from every replica's token count).
  std::vector<std::vector<StepBatch>> replicas;
};

// What a forward plan gives back to rank 0, in plan order (replica by replica, micro-batch by
// micro-batch, row by row).
struct StepOutput {
  std::vector<int32_t> tokens;  // [logit rows]: the id sampled on the device, or -1
  std::vector<float> logits;    // [rows with -1 above, vocab] float32
  // Rank 0's device time of the step (Executor::Collect): its forward's span on rank 0's stream,
  // from the first op enqueued to the last (sampling and the ids' copy included), by a
  // DeviceTimer; with pipeline stages all of rank 0's micro-batches. Wall time on the CPU backend.
  double device_seconds = 0;
};

std::vector<uint8_t> SerializeStepPlan(const StepPlan& plan);
// Errors only for bytes that were not produced by SerializeStepPlan.
absl::StatusOr<StepPlan> DeserializeStepPlan(const std::vector<uint8_t>& bytes);

}  // namespace tessera
