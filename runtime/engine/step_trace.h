// The engine's own step timeline: where rank 0's host time goes, step by step, written as Chrome
// trace-event JSON (open it in Perfetto or chrome://tracing). The GPU machine has no profiler, so
// the engine times its own phases: intake, schedule, plan, broadcast, the forward's launch, the
// wait for a launched step's sampled ids (collect: with async scheduling the previous step's, so
// a record then launches step N and collects N - 1), the wait for the output thread, sample, and
// the output work
// (detokenise, stop strings, streams), which runs on the output thread when outputs are processed
// asynchronously. Each step carries its composition (sequences, prefill and decode tokens, running
// and waiting sequences, whether it was pure decode, i.e. eligible for a decode graph).
//
// Bounded: a ring of the last `capacity` steps, written once by Write() (at the end of serving).
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tessera {

enum class StepPhase : uint8_t {
  kIntake,      // new requests, cancellations, deadlines
  kSchedule,    // which sequences run, KV blocks reserved
  kPlan,        // the StepPlan built (token ids, slots, block tables, sampling rows)
  kBroadcast,   // the plan serialised and broadcast to the other ranks
  kForward,     // rank 0's forward launched (on the CPU backend: run)
  kCollect,     // the wait for a launched step's ids and logits, every replica's (async
                // scheduling: the previous step's, while this one runs)
  kOutputWait,  // waiting for the output thread's previous batch (it did not keep up)
  kSample,      // host bookkeeping after the step: computed tokens, prefix-cache registration,
                // host sampling, id-based stops
  kOutput,      // detokenise, stop strings, output parser, stream pushes
  kCount,
};
const char* StepPhaseName(StepPhase phase);

// One forward step on rank 0. Times are steady_clock nanoseconds since its epoch; a phase that did
// not run has begin == end == 0.
struct StepRecord {
  int64_t step = 0;
  int64_t collected = -1;  // the step whose results kCollect and kSample took (async: step - 1)
  int64_t collected_device_ns = 0;  // that step's device time (StepOutput::device_seconds)
  int64_t begin_ns[static_cast<int>(StepPhase::kCount)] = {};
  int64_t end_ns[static_cast<int>(StepPhase::kCount)] = {};
  int seqs = 0;               // sequences in the step
  int prefill_tokens = 0;     // tokens of prompt chunks (and recomputation after preemption)
  int decode_tokens = 0;      // one per decoding sequence
  int one_token_seqs = 0;     // sequences with one token in the step (decodes, 1-token chunks)
  int single_token_seqs = 0;  // of those, the ones leading their micro-batch (StepBatch's count)
  int running = 0;            // sequences running after scheduling, all replicas
  int waiting = 0;            // sequences waiting after scheduling, all replicas
  bool pure_decode = false;   // every micro-batch one token per sequence: decode-graph eligible
  bool output_async = false;  // kOutput ran on the output thread, overlapping the next step

  void Begin(StepPhase p) { begin_ns[static_cast<int>(p)] = Now(); }
  void End(StepPhase p) { end_ns[static_cast<int>(p)] = Now(); }
  static int64_t Now() { return std::chrono::steady_clock::now().time_since_epoch().count(); }
};

class StepTrace {
 public:
  // Keeps the last `capacity` steps (>= 1).
  StepTrace(std::string path, int64_t capacity);

  // Thread-safe (the output thread finishes a step's kOutput phase after the step was added).
  void Add(const StepRecord& record);
  // The output phase of step `step`, if it is still in the ring.
  void SetOutput(int64_t step, int64_t begin_ns, int64_t end_ns);
  // Writes the JSON file: one process (rank 0), thread 1 the step loop, thread 2 the output
  // thread; each step an enclosing "step N" slice with its composition in args, its phases as
  // nested slices, and counters of running and waiting sequences.
  absl::Status Write() const;
  // The JSON text Write() writes.
  std::string Json() const;

  const std::string& path() const { return path_; }

 private:
  const std::string path_;
  const size_t capacity_;
  mutable std::mutex mu_;
  std::vector<StepRecord> ring_;  // [capacity], ring order; `added_` records so far
  int64_t added_ = 0;
};

}  // namespace tessera
