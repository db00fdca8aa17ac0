// --device: which backend a rank computes on, which GPU it binds to, and the communicator its
// executor talks through.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "launch/mpi_session.h"
#include "parallel/communicator.h"

namespace tessera {

struct RankCompute {
  std::string device;  // cpu or cuda: what --device asked for, or what "" chose
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> device_world;  // NCCL over MPI's world: CUDA with several ranks
  Communicator* world = nullptr;               // for the Executor; null in a world of one
};

// "cpu": the float32 CPU backend, ranks talking over MPI. "cuda": the CUDA backend on GPU
// local_rank % device count (the ranks mpirun starts on a node spread over its GPUs), ranks
// talking over NCCL (device buffers) and MPI (host buffers). "" chooses: cuda when this build can
// run the world on GPUs (CUDA, and NCCL for several ranks) and every rank sees one, else cpu;
// rank 0 says which in one line on stderr. Collective over the world when several ranks run CUDA
// or the device is chosen. Errors name the flag: an unknown device, a build without CUDA (or
// without NCCL for several ranks), a node without a GPU.
absl::StatusOr<RankCompute> SetUpRankCompute(const std::string& device, MpiSession& mpi);

}  // namespace tessera
