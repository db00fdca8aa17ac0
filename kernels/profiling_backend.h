// A Backend that forwards every op to another one and times it: where a step's time goes, op by
// op (`tessera bench --op-profile`). On a backend with a stream (CUDA) each op is bracketed by
// events on that stream, so timing does not serialise the host with the device; on the CPU
// backend, whose ops run to completion, by the host clock. Graph recording is not offered
// (CanCaptureGraphs() is false), so a profiled step runs op by op.
//
// NOTE: cuBLAS kernels on Hopper may overlap their neighbours (programmatic dependent launch), so
// the events around one op can include time that overlaps another: per-op figures can sum to more
// than the step's wall time, and the excess lands on the op after the overlap (seen on the first
// GEMM of each layer). Compare the sum with the wall time before reading single rows.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/ops.h"

namespace tessera {

struct OpTime {
  std::string op;  // e.g. "Linear 5120x17408", "Attention prefill", "AddRmsNorm"
  int64_t calls = 0;
  double ms = 0;  // total
};

class ProfilingBackend : public Backend {
 public:
  virtual ~ProfilingBackend() = default;
  // Waits for the ops timed since the last Take() and returns their totals by op, largest first.
  virtual std::vector<OpTime> Take() = 0;
};

// `inner` must outlive the result.
std::unique_ptr<ProfilingBackend> MakeProfilingBackend(Backend& inner);

}  // namespace tessera
