#include "parallel/mpi_communicator.h"

#include <unistd.h>

#include "kernels/base/check.h"
#include "parallel/watchdog.h"

#define MPI_CHECK(call)                                                                \
  do {                                                                                 \
    const int mpi_result_ = (call);                                                    \
    TESSERA_CHECK(mpi_result_ == MPI_SUCCESS) << #call << " returned " << mpi_result_; \
  } while (0)

namespace tessera {

namespace {

MPI_Datatype MpiType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI64:
      return MPI_INT64_T;
    case DType::kBF16:
    case DType::kF16:
      return MPI_UINT16_T;  // moved, never reduced, over MPI
    case DType::kF8E4M3:
      return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

std::vector<int> ToInts(const std::vector<size_t>& v) {
  std::vector<int> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    TESSERA_CHECK(v[i] <= static_cast<size_t>(INT32_MAX)) << "MPI count overflow: " << v[i];
    out[i] = static_cast<int>(v[i]);
  }
  return out;
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::string name, bool owned)
      : comm_(comm), name_(std::move(name)), owned_(owned) {
    MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }

  void AllReduceSum(void* buf, size_t count, DType dtype) override {
    TESSERA_CHECK(dtype == DType::kF32 || dtype == DType::kI32 || dtype == DType::kI64)
        << "MPI sums float32 and integers only";
    CollectiveGuard guard(name_, "all_reduce", count);
    MPI_CHECK(
        MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(count), MpiType(dtype), MPI_SUM, comm_));
  }
  void AllGather(const void* send, void* recv, size_t count, DType dtype) override {
    CollectiveGuard guard(name_, "all_gather", count);
    MPI_CHECK(MPI_Allgather(send, static_cast<int>(count), MpiType(dtype), recv,
                            static_cast<int>(count), MpiType(dtype), comm_));
  }
  void AllGatherV(const void* send, size_t count, void* recv, const std::vector<size_t>& counts,
                  const std::vector<size_t>& displs, DType dtype) override {
    CollectiveGuard guard(name_, "all_gather_v", count);
    const auto c = ToInts(counts), d = ToInts(displs);
    MPI_CHECK(MPI_Allgatherv(send, static_cast<int>(count), MpiType(dtype), recv, c.data(),
                             d.data(), MpiType(dtype), comm_));
  }
  void ReduceScatterSum(const void* send, void* recv, size_t count, DType dtype) override {
    TESSERA_CHECK(dtype == DType::kF32) << "MPI reduce-scatter sums float32 only";
    CollectiveGuard guard(name_, "reduce_scatter", count);
    MPI_CHECK(MPI_Reduce_scatter_block(send, recv, static_cast<int>(count), MpiType(dtype), MPI_SUM,
                                       comm_));
  }
  void AllToAllV(const void* send, const std::vector<size_t>& send_counts,
                 const std::vector<size_t>& send_displs, void* recv,
                 const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_displs,
                 DType dtype) override {
    size_t total = 0;
    for (size_t c : send_counts) total += c;
    CollectiveGuard guard(name_, "all_to_all_v", total);
    const auto sc = ToInts(send_counts), sd = ToInts(send_displs);
    const auto rc = ToInts(recv_counts), rd = ToInts(recv_displs);
    MPI_CHECK(MPI_Alltoallv(send, sc.data(), sd.data(), MpiType(dtype), recv, rc.data(), rd.data(),
                            MpiType(dtype), comm_));
  }
  void AllToAllCounts(const std::vector<int64_t>& send, std::vector<int64_t>* recv) override {
    TESSERA_CHECK_EQ(send.size(), static_cast<size_t>(size_));
    recv->resize(size_);
    CollectiveGuard guard(name_, "all_to_all_counts", send.size());
    MPI_CHECK(MPI_Alltoall(send.data(), 1, MPI_INT64_T, recv->data(), 1, MPI_INT64_T, comm_));
  }
  void Send(const void* buf, size_t count, DType dtype, int peer) override {
    CollectiveGuard guard(name_, "send", count);
    MPI_CHECK(MPI_Send(buf, static_cast<int>(count), MpiType(dtype), peer, 0, comm_));
  }
  void Recv(void* buf, size_t count, DType dtype, int peer) override {
    CollectiveGuard guard(name_, "recv", count);
    MPI_CHECK(
        MPI_Recv(buf, static_cast<int>(count), MpiType(dtype), peer, 0, comm_, MPI_STATUS_IGNORE));
  }
  void Broadcast(void* buf, size_t count, DType dtype, int root) override {
    CollectiveGuard guard(name_, "broadcast", count);
    MPI_CHECK(MPI_Bcast(buf, static_cast<int>(count), MpiType(dtype), root, comm_));
  }
  void BroadcastBytes(std::vector<uint8_t>* bytes, int root) override {
    uint64_t size = bytes->size();
    {
      CollectiveGuard guard(name_, "broadcast", 1);
      MPI_CHECK(MPI_Bcast(&size, 1, MPI_UINT64_T, root, comm_));
    }
    bytes->resize(size);
    CollectiveGuard guard(name_, "broadcast", size);
    MPI_CHECK(MPI_Bcast(bytes->data(), static_cast<int>(size), MPI_BYTE, root, comm_));
  }
  void Barrier() override {
    CollectiveGuard guard(name_, "barrier", 0);
    MPI_CHECK(MPI_Barrier(comm_));
  }
  std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) override {
    MPI_Comm sub;
    {
      CollectiveGuard guard(name_, "split", 0);
      MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
    }
    return std::make_unique<MpiCommunicator>(sub, name, true);
  }

 private:
  MPI_Comm comm_;
  std::string name_;
  bool owned_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> MakeMpiCommunicator(MPI_Comm comm, const std::string& name) {
  return std::make_unique<MpiCommunicator>(comm, name, comm != MPI_COMM_WORLD);
}

}  // namespace tessera
