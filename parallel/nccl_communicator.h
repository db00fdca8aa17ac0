// The NCCL backend of Communicator, for the CUDA backend's ranks (one GPU each).
//
// Device buffers travel over NCCL, enqueued on the backend's stream so they are ordered after the
// kernels that produced them; host buffers (the control plane, the expert-parallel staging that
// runtime/qwen3.cc does through the host, logits) travel over the MPI communicator underneath.
// Each call looks at where its buffer lives (cudaPointerGetAttributes).
//
// Correct first: each NCCL collective is followed by a stream synchronisation inside the
// collective watchdog (watchdog.h), so a dead or hung peer ends the job instead of hanging it; the
// price is no overlap of communication with later kernels.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace tessera {

// Builds the NCCL communicator over the ranks of `host` (collective over `host`, which must
// outlive the result): rank 0 makes the NCCL unique id and broadcasts it over `host`. `stream` is
// the CUDA backend's stream (Backend::stream()); the current device must be the rank's GPU.
std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator& host, void* stream,
                                                   const std::string& name);

}  // namespace tessera
