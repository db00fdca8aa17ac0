// MPI start-up and shutdown for the multi-rank subcommands (run, serve).
//
// Works with and without mpirun: a process no MPI launcher started is a world of one and does not
// initialise MPI at all (no singleton start-up cost, no MPI runtime needed). Sets the rank used in
// fatal messages, splits the CPU cores between the ranks of one node for OpenMP (unless
// OMP_NUM_THREADS is set), and records the local rank, which picks the GPU on GPU nodes.
#pragma once

#include <cstdint>
#include <memory>

#include "parallel/communicator.h"
#include "runtime/model/weight_loader.h"

namespace tessera {

class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();  // MPI_Finalize
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  // The world communicator; null in a world of one started without mpirun.
  Communicator* world() { return world_.get(); }

  // True on every rank when `ok` is false on any rank (a collective over the world).
  bool AnyFailed(bool ok);

 private:
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  bool initialized_ = false;
  std::unique_ptr<Communicator> world_;
};

// Logs (rank 0) each rank's shard load time and peak host memory (VmHWM), gathered over the
// world, and with `read` (the checkpoint loader's totals; null or empty for dummy weights) what
// it read: "rank 1 loaded its shard in 0.21 s (0.03 GB read in 0.02 s, 1.50 GB/s, 8 threads,
// 256 MiB staging), peak host memory 412.3 MiB".
void ReportLoad(MpiSession& mpi, double seconds, const WeightLoadStats* read = nullptr);

// Test-only fault injection, from TESSERA_FAULT="KIND@RANK" (e.g. "crash-load@1"):
//   fail-load   the rank's model load returns an error
//   crash-load  the rank aborts while loading (an unexpected crash or exception)
//   hang-step   the rank stops responding in its first step (exercises the watchdog)
//   stall-step  (serve, rank 0) the engine's step loop stalls after TESSERA_FAULT_AFTER_STEPS
//               forward steps: no more steps or heartbeats (exercises --engine-stall-timeout)
//   cuda-error  (serve, rank 0, CUDA backend) a CUDA error after TESSERA_FAULT_AFTER_STEPS steps
bool FaultInjected(const char* kind, int rank);
// TESSERA_FAULT_AFTER_STEPS (default 0): when a step fault strikes.
int64_t FaultAfterSteps();

}  // namespace tessera
