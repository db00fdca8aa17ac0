// Communication between ranks: the only way tessera code talks to other ranks (docs/design.md,
// "Layers").
//
// Backends: MpiCommunicator (CPU backend; buffers in host memory; calls return when done) and
// NcclCommunicator (GPUs; buffers in device memory, stream-ordered: calls only enqueue on the
// backend's stream and return, and results are visible to later ops on that stream and to the host
// after its next wait, e.g. Backend::Synchronize or CopyToHost). Every rank of a communicator must
// make the same calls in the same order. Counts are in elements of `dtype`.
//
// Every collective runs under a watchdog: a rank stuck in one past the timeout (for NCCL: in the
// host's wait for the stream its collectives were enqueued on, or on an NCCL error seen there)
// prints the rank and the operation and ends the process with a non-zero exit, so mpirun tears the
// job down instead of hanging (docs/design.md, "Errors").
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/base/dtype.h"

namespace tessera {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // A short name for messages, e.g. "tp" or "world".
  virtual const std::string& name() const = 0;

  // In place: buf = sum over ranks of buf.
  virtual void AllReduceSum(void* buf, size_t count, DType dtype) = 0;
  // recv[r * count ...] = rank r's send[0 .. count).
  virtual void AllGather(const void* send, void* recv, size_t count, DType dtype) = 0;
  // Like AllGather with per-rank counts; rank r's block lands at recv + displs[r] elements.
  virtual void AllGatherV(const void* send, size_t count, void* recv,
                          const std::vector<size_t>& counts, const std::vector<size_t>& displs,
                          DType dtype) = 0;
  // recv[0 .. count) = sum over ranks of send[rank() * count ...].
  virtual void ReduceScatterSum(const void* send, void* recv, size_t count, DType dtype) = 0;
  // Block r of send (send_counts[r] elements at send_displs[r]) goes to rank r, and rank r's block
  // for us lands at recv_displs[r].
  virtual void AllToAllV(const void* send, const std::vector<size_t>& send_counts,
                         const std::vector<size_t>& send_displs, void* recv,
                         const std::vector<size_t>& recv_counts,
                         const std::vector<size_t>& recv_displs, DType dtype) = 0;
  // Fixed-size blocks, several arrays in one exchange (the low-latency expert exchange's rows,
  // ids and weights): for each part, send's block r (count elements at r * count) goes to rank r,
  // and rank r's block for us lands at recv + r * count. Sizes depend on nothing the device
  // computes, so the NCCL backend's one group of sends and receives can be recorded in a CUDA
  // graph. The default runs AllToAllV once per part.
  struct AllToAllPart {
    const void* send = nullptr;
    void* recv = nullptr;
    size_t count = 0;  // elements per peer
    DType dtype = DType::kF32;
  };
  virtual void AllToAll(const std::vector<AllToAllPart>& parts) {
    const int n = size();
    std::vector<size_t> counts(n), displs(n);
    for (const AllToAllPart& p : parts) {
      for (int r = 0; r < n; ++r) {
        counts[r] = p.count;
        displs[r] = static_cast<size_t>(r) * p.count;
      }
      AllToAllV(p.send, counts, displs, p.recv, counts, displs, p.dtype);
    }
  }
  // Exchanges one int64 per peer: recv[r] = what rank r put in its send[rank()].
  virtual void AllToAllCounts(const std::vector<int64_t>& send, std::vector<int64_t>* recv) = 0;
  virtual void Send(const void* buf, size_t count, DType dtype, int peer) = 0;
  virtual void Recv(void* buf, size_t count, DType dtype, int peer) = 0;
  virtual void Broadcast(void* buf, size_t count, DType dtype, int root) = 0;
  // Raw bytes, for the control plane (step plans).
  virtual void BroadcastBytes(std::vector<uint8_t>* bytes, int root) = 0;
  virtual void Barrier() = 0;

  // A sub-communicator of the ranks passing the same `color`, ordered by `key`. Collective.
  virtual std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) = 0;
};

// Called by the watchdog (on its own thread) just before it ends the process, e.g. to fail the
// requests in flight with UNAVAILABLE and turn health NOT_SERVING. Must return promptly.
void SetWatchdogFatalHook(std::function<void()> hook);

// Seconds a rank may spend in one collective before the watchdog ends the job; 0 disables it.
// Default 300 (TESSERA_COLLECTIVE_TIMEOUT overrides; --collective-timeout sets it per job).
double& CollectiveTimeoutSeconds();

}  // namespace tessera
