#include "parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstring>
#include <vector>

#include "kernels/base/check.h"
#include "parallel/watchdog.h"

#define NCCL_CHECK(call)                                                     \
  do {                                                                       \
    const ncclResult_t nccl_result_ = (call);                                \
    TESSERA_CHECK(nccl_result_ == ncclSuccess)                               \
        << #call << " returned " << ncclGetErrorString(nccl_result_) << " (" \
        << ncclGetLastError(nullptr) << ")";                                 \
  } while (0)

#define NCCL_CUDA_CHECK(call)                                         \
  do {                                                                \
    const cudaError_t cuda_result_ = (call);                          \
    TESSERA_CHECK(cuda_result_ == cudaSuccess)                        \
        << #call << " returned " << cudaGetErrorString(cuda_result_); \
  } while (0)

namespace tessera {
namespace {

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
                   cudaStream_t stream, std::string name)
      : host_(host),
        owned_host_(std::move(owned_host)),
        comm_(comm),
        stream_(stream),
        name_(std::move(name)) {}
  ~NcclCommunicator() override { ncclCommDestroy(comm_); }

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  const std::string& name() const override { return name_; }

  void AllReduceSum(void* buf, size_t count, DType dtype) override {
    if (count == 0) return;
    if (!OnDevice(buf)) return host_->AllReduceSum(buf, count, dtype);
    CollectiveGuard guard(name_, "all_reduce", count);
    NCCL_CHECK(ncclAllReduce(buf, buf, count, NcclType(dtype), ncclSum, comm_, stream_));
    Wait();
  }
  void AllGather(const void* send, void* recv, size_t count, DType dtype) override {
    if (count == 0) return;
    if (!DeviceCall(send, recv)) return host_->AllGather(send, recv, count, dtype);
    CollectiveGuard guard(name_, "all_gather", count);
    NCCL_CHECK(ncclAllGather(send, recv, count, NcclType(dtype), comm_, stream_));
    Wait();
  }
  void AllGatherV(const void* send, size_t count, void* recv, const std::vector<size_t>& counts,
                  const std::vector<size_t>& displs, DType dtype) override {
    if (!DeviceCall(send, recv)) {
      return host_->AllGatherV(send, count, recv, counts, displs, dtype);
    }
    CollectiveGuard guard(name_, "all_gather_v", count);
    // One broadcast per rank of its block, fused into one NCCL group.
    const size_t es = DTypeSize(dtype);
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < size(); ++r) {
      if (counts[r] == 0) continue;
      NCCL_CHECK(ncclBroadcast(send, static_cast<char*>(recv) + displs[r] * es, counts[r],
                               NcclType(dtype), r, comm_, stream_));
    }
    NCCL_CHECK(ncclGroupEnd());
    Wait();
  }
  void ReduceScatterSum(const void* send, void* recv, size_t count, DType dtype) override {
    if (count == 0) return;
    if (!DeviceCall(send, recv)) return host_->ReduceScatterSum(send, recv, count, dtype);
    CollectiveGuard guard(name_, "reduce_scatter", count);
    NCCL_CHECK(ncclReduceScatter(send, recv, count, NcclType(dtype), ncclSum, comm_, stream_));
    Wait();
  }
  void AllToAllV(const void* send, const std::vector<size_t>& send_counts,
                 const std::vector<size_t>& send_displs, void* recv,
                 const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_displs,
                 DType dtype) override {
    if (!DeviceCall(send, recv)) {
      return host_->AllToAllV(send, send_counts, send_displs, recv, recv_counts, recv_displs,
                              dtype);
    }
    size_t total = 0;
    for (size_t c : send_counts) total += c;
    CollectiveGuard guard(name_, "all_to_all_v", total);
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
    Wait();
  }
  void AllToAllCounts(const std::vector<int64_t>& send, std::vector<int64_t>* recv) override {
    host_->AllToAllCounts(send, recv);
  }
  void Send(const void* buf, size_t count, DType dtype, int peer) override {
    if (count == 0) return;
    if (!OnDevice(buf)) return host_->Send(buf, count, dtype, peer);
    CollectiveGuard guard(name_, "send", count);
    NCCL_CHECK(ncclSend(buf, count, NcclType(dtype), peer, comm_, stream_));
    Wait();
  }
  void Recv(void* buf, size_t count, DType dtype, int peer) override {
    if (count == 0) return;
    if (!OnDevice(buf)) return host_->Recv(buf, count, dtype, peer);
    CollectiveGuard guard(name_, "recv", count);
    NCCL_CHECK(ncclRecv(buf, count, NcclType(dtype), peer, comm_, stream_));
    Wait();
  }
  void Broadcast(void* buf, size_t count, DType dtype, int root) override {
    if (count == 0) return;
    if (!OnDevice(buf)) return host_->Broadcast(buf, count, dtype, root);
    CollectiveGuard guard(name_, "broadcast", count);
    NCCL_CHECK(ncclBroadcast(buf, buf, count, NcclType(dtype), root, comm_, stream_));
    Wait();
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
    return std::make_unique<NcclCommunicator>(host, std::move(host_sub), sub, stream_, name);
  }

 private:
  // Inside the caller's CollectiveGuard: the watchdog ends the job if a peer never arrives.
  void Wait() { NCCL_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  Communicator* host_;
  std::unique_ptr<Communicator> owned_host_;  // set for communicators made by Split
  ncclComm_t comm_;
  cudaStream_t stream_;
  std::string name_;
};

}  // namespace

std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator& host, void* stream,
                                                   const std::string& name) {
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
  return std::make_unique<NcclCommunicator>(&host, nullptr, comm, static_cast<cudaStream_t>(stream),
                                            name);
}

}  // namespace tessera
