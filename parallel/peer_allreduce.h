// The one-shot peer-memory all-reduce's setup (the kernel: kernels/cuda/peer_allreduce.h), used
// by NcclCommunicator for small device messages: TP decode's all-reduces cost one kernel each
// instead of NCCL's protocol.
//
// Made collectively over a host communicator at communicator creation: each rank allocates its
// slot, the ranks exchange CUDA IPC handles (and host names and PCI bus ids) over the host
// communicator, and each opens the others' slots. It is used only when every rank of the
// communicator is on one node, every pair of distinct devices has peer access, and every step
// worked on every rank (the ranks agree, so they all take the same path); otherwise Make logs the
// reason once and returns null, and NCCL carries everything.
//
// Knobs (environment, read at creation): TESSERA_CUSTOM_ALLREDUCE=0 turns it off;
// TESSERA_CUSTOM_ALLREDUCE_MAX_KB sets the largest message it takes (default 1024 KB; larger ones
// go to NCCL). The ranks use the smallest threshold any of them asks for.
//
// Faults: a kernel waiting for a peer gives up after CollectiveTimeoutSeconds() (read at each
// enqueue; 0: no bound, as for NCCL) and sets a process-wide flag; the NCCL communicator's
// bounded stream wait checks it (PeerAllReduceFailed) and ends the job.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "kernels/base/dtype.h"
#include "kernels/cuda/peer_allreduce.h"
#include "parallel/communicator.h"

namespace tessera {

// The largest message (bytes) the environment asks for; 0 when TESSERA_CUSTOM_ALLREDUCE=0.
size_t PeerAllReduceMaxBytesFromEnv();

class PeerAllReduce {
 public:
  // Collective over `host` (host buffers: MPI). The current device must be this rank's GPU.
  // Null when the peer path cannot serve these ranks (see above) or max_bytes is 0.
  static std::unique_ptr<PeerAllReduce> Make(Communicator& host, const std::string& name,
                                             size_t max_bytes);
  // Waits for `stream` (no call may be in flight on the slots), then for every rank (a barrier
  // over `host`, so no peer still reads our slot), and releases the slots.
  ~PeerAllReduce();
  PeerAllReduce(const PeerAllReduce&) = delete;
  PeerAllReduce& operator=(const PeerAllReduce&) = delete;

  size_t max_bytes() const { return max_bytes_; }
  // Whether AllReduceSum of this message goes through here (bf16 or f32, up to max_bytes).
  bool Covers(size_t count, DType dtype) const {
    return (dtype == DType::kBF16 || dtype == DType::kF32) &&
           count * DTypeSize(dtype) <= max_bytes_;
  }
  // buf [count] = sum over ranks, in place, enqueued on `stream` (capturable: no host waits).
  void AllReduceSum(void* buf, size_t count, DType dtype, cudaStream_t stream);

 private:
  PeerAllReduce(Communicator& host, const std::string& name, size_t max_bytes)
      : host_(host), name_(name), max_bytes_(max_bytes) {}

  Communicator& host_;
  std::string name_;
  size_t max_bytes_;
  cuda::PeerAllReduceArgs args_{};
  char* own_ = nullptr;        // our slot (cudaMalloc)
  std::vector<char*> opened_;  // peers' slots (cudaIpcOpenMemHandle)
  cudaStream_t last_stream_ = nullptr;
};

// Whether a peer all-reduce kernel in this process gave up waiting for a peer.
bool PeerAllReduceFailed();

}  // namespace tessera
