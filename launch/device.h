// --device: which backend a rank computes on, and which GPU it binds to.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "launch/mpi_session.h"

namespace tessera {

// "cpu": the float32 CPU backend. "cuda": the CUDA backend on GPU local_rank % device count, so
// the ranks mpirun starts on one node spread over its GPUs. Errors name the flag: an unknown
// device, a build without CUDA, a node without a GPU, or several ranks on CUDA (their activations
// would need the NCCL communicator, which is not there yet).
absl::StatusOr<std::unique_ptr<Backend>> MakeBackendForRank(const std::string& device,
                                                            const MpiSession& mpi);

}  // namespace tessera
