#include "parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernels/base/check.h"
#include "kernels/cuda/cuda_check.h"
#include "parallel/peer_allreduce.h"
#include "parallel/watchdog.h"

#define NCCL_CHECK(call)                                                     \
  do {                                                                       \
    const ncclResult_t nccl_result_ = (call);                                \
    TESSERA_CHECK(nccl_result_ == ncclSuccess)                               \
        << #call << " returned " << ncclGetErrorString(nccl_result_) << " (" \
        << ncclGetLastError(nullptr) << ")";                                 \
  } while (0)

namespace tessera {
namespace {

// What a collective is called in watchdog messages: while enqueuing, and in the host's later wait
// for the stream (literals, so naming the last collective costs no allocation).
struct OpName {
  const char* op;
  const char* wait;
};
constexpr OpName kAllReduce{"all_reduce", "stream wait after all_reduce"};
constexpr OpName kAllGather{"all_gather", "stream wait after all_gather"};
constexpr OpName kAllGatherV{"all_gather_v", "stream wait after all_gather_v"};
constexpr OpName kReduceScatter{"reduce_scatter", "stream wait after reduce_scatter"};
constexpr OpName kAllToAllV{"all_to_all_v", "stream wait after all_to_all_v"};
constexpr OpName kSend{"send", "stream wait after send"};
constexpr OpName kRecv{"recv", "stream wait after recv"};
constexpr OpName kBroadcast{"broadcast", "stream wait after broadcast"};

// This process's live NCCL communicators (checked for asynchronous errors and aborted on a
// failure by the stream wait), and the last collective enqueued (named in its messages).
// Collectives run on one thread; the mutex only orders that thread with a Split or a destructor.
struct NcclProcessState {
  std::mutex mu;
  std::vector<ncclComm_t> comms;
  std::string last_comm = "nccl";
  const char* last_wait = "stream wait";
  size_t last_count = 0;
};
NcclProcessState& State() {
  static NcclProcessState* state = new NcclProcessState();  // never destroyed: see EndJob
  return *state;
}

void Register(ncclComm_t comm) {
  std::lock_guard<std::mutex> lock(State().mu);
  State().comms.push_back(comm);
}
void Unregister(ncclComm_t comm) {
  NcclProcessState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  for (size_t i = 0; i < s.comms.size(); ++i) {
    if (s.comms[i] == comm) {
      s.comms.erase(s.comms.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
  }
}

// Called only on the way out: stuck NCCL kernels end instead of spinning until the process dies.
void AbortAll() {
  std::vector<ncclComm_t> comms;
  {
    std::lock_guard<std::mutex> lock(State().mu);
    comms.swap(State().comms);
  }
  for (ncclComm_t comm : comms) ncclCommAbort(comm);
}

// The first asynchronous error of a live communicator, as text; empty when there is none.
std::string AsyncError() {
  std::lock_guard<std::mutex> lock(State().mu);
  for (ncclComm_t comm : State().comms) {
    ncclResult_t async = ncclSuccess;
    const ncclResult_t result = ncclCommGetAsyncError(comm, &async);
    if (result != ncclSuccess) async = result;
    if (async != ncclSuccess && async != ncclInProgress) {
      const char* last = ncclGetLastError(comm);
      return std::string(ncclGetErrorString(async)) +
             (last && *last ? std::string(" (") + last + ")" : "");
    }
  }
  return {};
}

// Backend::SetStreamWait's function: waits for `stream` like cudaStreamSynchronize, but never
// forever. NOTE: polls (yielding for the first 50 ms, like the driver's own spin-wait, then
// sleeping 100 us between queries) rather than block in the driver, because a blocked wait can
// neither look at NCCL's errors nor give up; a decode step's wait ends within the yield phase, so
// it costs no more latency than cudaStreamSynchronize's spin.
void WaitForStream(cudaStream_t stream) {
  cudaError_t status = cudaStreamQuery(stream);
  if (status == cudaSuccess && !PeerAllReduceFailed()) return;
  if (status == cudaErrorNotReady) cudaGetLastError();  // see the loop
  NcclProcessState& s = State();
  std::string comm;
  const char* wait;
  size_t count;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    comm = s.last_comm;
    wait = s.last_wait;
    count = s.last_count;
  }
  CollectiveGuard guard(comm, wait, count);  // the watchdog thread: a backstop if we hang below
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto last_check = start;
  const double limit = CollectiveTimeoutSeconds();
  auto fail = [&](const std::string& why) {
    EndJob("in " + std::string(wait) + " on communicator '" + comm + "' (" + std::to_string(count) +
               " elements): " + why + "; aborting NCCL",
           AbortAll);
  };
  for (;;) {
    if (PeerAllReduceFailed()) {
      fail("a custom all-reduce kernel waited " + std::to_string(limit) +
           " s for a peer that never came (a peer is dead or hung)");
    }
    if (status == cudaSuccess) return;
    if (status != cudaErrorNotReady) {
      const std::string nccl = AsyncError();
      fail(std::string("the stream failed with ") + cudaGetErrorName(status) + " (" +
           cudaGetErrorString(status) + ")" + (nccl.empty() ? "" : "; NCCL: " + nccl));
    }
    // NOTE: the runtime may record "not ready" as the last error; clear it, or the next kernel
    // launch's cudaGetLastError check would report it (nothing else can be pending: every
    // launch is checked when it is made).
    cudaGetLastError();
    const auto now = Clock::now();
    if (now - last_check >= std::chrono::milliseconds(1)) {
      last_check = now;
      const std::string nccl = AsyncError();
      if (!nccl.empty()) fail("NCCL reported " + nccl + " (a peer failed or lost its connection)");
    }
    const double waited = std::chrono::duration<double>(now - start).count();
    if (limit > 0 && waited > limit) {
      fail("stuck for " + std::to_string(waited) + " s (limit " + std::to_string(limit) +
           " s; a peer is dead or hung)");
    }
    if (now - start < std::chrono::milliseconds(50)) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    status = cudaStreamQuery(stream);
  }
}

ncclDataType_t NcclType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kF8E4M3:
      return ncclUint8;  // moved, never reduced
  }
  return ncclUint8;
}

bool OnDevice(const void* p) {
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

// Whether a call with these buffers goes over NCCL (both on the device) or MPI (both on the host).
bool DeviceCall(const void* a, const void* b) {
  const bool da = OnDevice(a), db = OnDevice(b);
  TESSERA_CHECK(da == db) << "a collective mixes host and device buffers";
  return da;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator* host, std::unique_ptr<Communicator> owned_host, ncclComm_t comm,
                   cudaStream_t stream, std::string name, size_t peer_max_bytes)
      : host_(host),
        owned_host_(std::move(owned_host)),
        comm_(comm),
        stream_(stream),
        name_(std::move(name)),
        peer_max_bytes_(peer_max_bytes),
        peer_(PeerAllReduce::Make(*host_, name_, peer_max_bytes)) {
    Register(comm_);
  }
  ~NcclCommunicator() override {
    Unregister(comm_);
    ncclCommDestroy(comm_);
  }

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  const std::string& name() const override { return name_; }

  void AllReduceSum(void* buf, size_t count, DType dtype) override {
    if (count == 0) return;
    if (!OnDeviceOrCapturing(buf, buf)) return host_->AllReduceSum(buf, count, dtype);
    Enqueued enqueued(this, kAllReduce, count);
    if (peer_ && peer_->Covers(count, dtype))
      return peer_->AllReduceSum(buf, count, dtype, stream_);
    NCCL_CHECK(ncclAllReduce(buf, buf, count, NcclType(dtype), ncclSum, comm_, stream_));
  }
  void AllGather(const void* send, void* recv, size_t count, DType dtype) override {
    if (count == 0) return;
    if (!OnDeviceOrCapturing(send, recv)) return host_->AllGather(send, recv, count, dtype);
    Enqueued enqueued(this, kAllGather, count);
    NCCL_CHECK(ncclAllGather(send, recv, count, NcclType(dtype), comm_, stream_));
  }
  void AllGatherV(const void* send, size_t count, void* recv, const std::vector<size_t>& counts,
                  const std::vector<size_t>& displs, DType dtype) override {
    if (!OnDeviceOrCapturing(send, recv)) {
      return host_->AllGatherV(send, count, recv, counts, displs, dtype);
    }
    Enqueued enqueued(this, kAllGatherV, count);
    // One broadcast per rank of its block, fused into one NCCL group.
    const size_t es = DTypeSize(dtype);
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < size(); ++r) {
      if (counts[r] == 0) continue;
      NCCL_CHECK(ncclBroadcast(send, static_cast<char*>(recv) + displs[r] * es, counts[r],
                               NcclType(dtype), r, comm_, stream_));
    }
    NCCL_CHECK(ncclGroupEnd());
  }
  void ReduceScatterSum(const void* send, void* recv, size_t count, DType dtype) override {
    if (count == 0) return;
    if (!OnDeviceOrCapturing(send, recv)) {
      return host_->ReduceScatterSum(send, recv, count, dtype);
    }
    Enqueued enqueued(this, kReduceScatter, count);
    NCCL_CHECK(ncclReduceScatter(send, recv, count, NcclType(dtype), ncclSum, comm_, stream_));
  }
  void AllToAllV(const void* send, const std::vector<size_t>& send_counts,
                 const std::vector<size_t>& send_displs, void* recv,
                 const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_displs,
                 DType dtype) override {
    if (!OnDeviceOrCapturing(send, recv)) {
      return host_->AllToAllV(send, send_counts, send_displs, recv, recv_counts, recv_displs,
                              dtype);
    }
    size_t total = 0;
    for (size_t c : send_counts) total += c;
    Enqueued enqueued(this, kAllToAllV, total);
    // NOTE: a zero count on one side is a zero count on the other, so both skip the pair.
    const size_t es = DTypeSize(dtype);
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < size(); ++r) {
      if (send_counts[r] > 0) {
        NCCL_CHECK(ncclSend(static_cast<const char*>(send) + send_displs[r] * es, send_counts[r],
                            NcclType(dtype), r, comm_, stream_));
      }
      if (recv_counts[r] > 0) {
        NCCL_CHECK(ncclRecv(static_cast<char*>(recv) + recv_displs[r] * es, recv_counts[r],
                            NcclType(dtype), r, comm_, stream_));
      }
    }
    NCCL_CHECK(ncclGroupEnd());
  }
  void AllToAll(const std::vector<AllToAllPart>& parts) override {
    if (parts.empty()) return;
    if (!OnDeviceOrCapturing(parts[0].send, parts[0].recv)) return host_->AllToAll(parts);
    size_t total = 0;
    for (const AllToAllPart& p : parts) total += p.count * static_cast<size_t>(size());
    Enqueued enqueued(this, kAllToAllV, total);
    // One group: every part's block for every peer, so NCCL runs one fused exchange.
    NCCL_CHECK(ncclGroupStart());
    for (const AllToAllPart& p : parts) {
      if (p.count == 0) continue;
      const size_t bytes = p.count * DTypeSize(p.dtype);
      for (int r = 0; r < size(); ++r) {
        NCCL_CHECK(ncclSend(static_cast<const char*>(p.send) + r * bytes, p.count,
                            NcclType(p.dtype), r, comm_, stream_));
        NCCL_CHECK(ncclRecv(static_cast<char*>(p.recv) + r * bytes, p.count, NcclType(p.dtype), r,
                            comm_, stream_));
      }
    }
    NCCL_CHECK(ncclGroupEnd());
  }
  void AllToAllCounts(const std::vector<int64_t>& send, std::vector<int64_t>* recv) override {
    host_->AllToAllCounts(send, recv);
  }
  void Send(const void* buf, size_t count, DType dtype, int peer) override {
    if (count == 0) return;
    if (!OnDeviceOrCapturing(buf, buf)) return host_->Send(buf, count, dtype, peer);
    Enqueued enqueued(this, kSend, count);
    NCCL_CHECK(ncclSend(buf, count, NcclType(dtype), peer, comm_, stream_));
  }
  void Recv(void* buf, size_t count, DType dtype, int peer) override {
    if (count == 0) return;
    if (!OnDeviceOrCapturing(buf, buf)) return host_->Recv(buf, count, dtype, peer);
    Enqueued enqueued(this, kRecv, count);
    NCCL_CHECK(ncclRecv(buf, count, NcclType(dtype), peer, comm_, stream_));
  }
  void Broadcast(void* buf, size_t count, DType dtype, int root) override {
    if (count == 0) return;
    if (!OnDeviceOrCapturing(buf, buf)) return host_->Broadcast(buf, count, dtype, root);
    Enqueued enqueued(this, kBroadcast, count);
    NCCL_CHECK(ncclBroadcast(buf, buf, count, NcclType(dtype), root, comm_, stream_));
  }
  void BroadcastBytes(std::vector<uint8_t>* bytes, int root) override {
    host_->BroadcastBytes(bytes, root);
  }
  void Barrier() override { host_->Barrier(); }
  std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) override {
    std::unique_ptr<Communicator> host_sub = host_->Split(color, key, name);
    ncclComm_t sub;
    {
      CollectiveGuard guard(name_, "split", 0);
      NCCL_CHECK(ncclCommSplit(comm_, color, key, &sub, nullptr));
    }
    Communicator* host = host_sub.get();
    return std::make_unique<NcclCommunicator>(host, std::move(host_sub), sub, stream_, name,
                                              peer_max_bytes_);
  }

  size_t peer_max_bytes() const { return peer_ ? peer_->max_bytes() : 0; }

 private:
  // For the lifetime of one enqueue: the watchdog covers it (NCCL may block in an enqueue while it
  // connects to a peer the first time), and afterwards the host's next stream wait is named after
  // it. Nothing here touches CUDA, so it is safe inside a stream capture.
  class Enqueued {
   public:
    Enqueued(const NcclCommunicator* comm, const OpName& op, size_t count)
        : guard_(comm->name_, op.op, count) {
      NcclProcessState& s = State();
      std::lock_guard<std::mutex> lock(s.mu);
      if (s.last_comm != comm->name_) s.last_comm = comm->name_;
      s.last_wait = op.wait;
      s.last_count = count;
    }

   private:
    CollectiveGuard guard_;
  };

  // Whether a call goes over NCCL (device buffers) or MPI (host buffers). During a stream capture
  // only device buffers can be meant (a host exchange cannot be captured), and nothing but
  // enqueues may happen, so the pointer query is skipped.
  bool OnDeviceOrCapturing(const void* a, const void* b) const {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
    if (capture != cudaStreamCaptureStatusNone) return true;
    return DeviceCall(a, b);
  }

  Communicator* host_;
  std::unique_ptr<Communicator> owned_host_;  // set for communicators made by Split
  ncclComm_t comm_;
  cudaStream_t stream_;
  std::string name_;
  size_t peer_max_bytes_;                // what Split passes on
  std::unique_ptr<PeerAllReduce> peer_;  // null: NCCL carries every all-reduce
};

}  // namespace

std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator& host, Backend& backend,
                                                   const std::string& name) {
  return MakeNcclCommunicator(host, backend, name, PeerAllReduceMaxBytesFromEnv());
}

size_t CustomAllReduceMaxBytes(const Communicator& comm) {
  const auto* nccl = dynamic_cast<const NcclCommunicator*>(&comm);
  return nccl != nullptr ? nccl->peer_max_bytes() : 0;
}

std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator& host, Backend& backend,
                                                   const std::string& name,
                                                   size_t custom_allreduce_max_bytes) {
  void* stream = backend.stream();
  TESSERA_CHECK(stream != nullptr) << "the NCCL communicator needs the CUDA backend's stream";
  std::vector<uint8_t> id_bytes;
  if (host.rank() == 0) {
    ncclUniqueId id;
    NCCL_CHECK(ncclGetUniqueId(&id));
    id_bytes.assign(reinterpret_cast<const uint8_t*>(&id),
                    reinterpret_cast<const uint8_t*>(&id) + sizeof(id));
  }
  host.BroadcastBytes(&id_bytes, 0);
  TESSERA_CHECK_EQ(id_bytes.size(), sizeof(ncclUniqueId));
  ncclUniqueId id;
  std::memcpy(&id, id_bytes.data(), sizeof(id));
  ncclComm_t comm;
  {
    CollectiveGuard guard(name, "nccl_init", 0);
    NCCL_CHECK(ncclCommInitRank(&comm, host.size(), id, host.rank()));
  }
  cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  // NOTE: installed once per backend and shared by every communicator Split from this one: the
  // wait checks all live communicators, whichever enqueued last.
  backend.SetStreamWait([cuda_stream] { WaitForStream(cuda_stream); });
  return std::make_unique<NcclCommunicator>(&host, nullptr, comm, cuda_stream, name,
                                            custom_allreduce_max_bytes);
}

}  // namespace tessera
