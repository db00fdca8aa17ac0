#include "parallel/peer_allreduce.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "kernels/base/check.h"
#include "kernels/cuda/cuda_check.h"
#include "parallel/watchdog.h"

namespace tessera {
namespace {

constexpr size_t kDefaultMaxBytes = size_t{1} << 20;

// What each rank tells the others at setup (exchanged as int64 words over the host communicator).
struct RankInfo {
  char host[64];
  char bus_id[32];  // cudaDeviceGetPCIBusId of the rank's GPU
  cudaIpcMemHandle_t slot;
  int32_t ok;  // allocated and exported its slot
  int32_t unused;
};
static_assert(sizeof(RankInfo) % sizeof(int64_t) == 0, "exchanged as whole int64 words");

// The kernels' error flag: host memory the device writes (mapped), read by PeerAllReduceFailed.
std::atomic<int*> g_error_host{nullptr};
int* g_error_device = nullptr;

int* ErrorFlagForDevice() {
  static std::once_flag once;
  std::call_once(once, [] {
    void* host = nullptr;
    void* device = nullptr;
    CUDA_CHECK(cudaHostAlloc(&host, sizeof(int), cudaHostAllocMapped | cudaHostAllocPortable));
    *static_cast<int*>(host) = 0;
    CUDA_CHECK(cudaHostGetDevicePointer(&device, host, 0));
    g_error_device = static_cast<int*>(device);
    g_error_host.store(static_cast<int*>(host));
  });
  return g_error_device;
}

// The setup's refusal, printed once per process (by the lowest rank that found a reason).
void LogOnce(const std::string& name, int rank, const std::string& why) {
  static std::atomic<bool> logged{false};
  if (logged.exchange(true)) return;
  std::fprintf(stderr,
               "tessera: rank %d: custom all-reduce off on communicator '%s': %s; NCCL carries "
               "every all-reduce\n",
               rank, name.c_str(), why.c_str());
}

std::string CudaError(const char* what, cudaError_t e) {
  cudaGetLastError();
  return std::string(what) + " failed: " + cudaGetErrorName(e);
}

}  // namespace

size_t PeerAllReduceMaxBytesFromEnv() {
  const char* on = std::getenv("TESSERA_CUSTOM_ALLREDUCE");
  if (on != nullptr && std::strcmp(on, "0") == 0) return 0;
  const char* kb = std::getenv("TESSERA_CUSTOM_ALLREDUCE_MAX_KB");
  if (kb == nullptr || *kb == '\0') return kDefaultMaxBytes;
  char* end = nullptr;
  const long long v = std::strtoll(kb, &end, 10);
  TESSERA_CHECK(*end == '\0' && v >= 0 && v <= (1 << 20))
      << "TESSERA_CUSTOM_ALLREDUCE_MAX_KB=" << kb << ": expected KB in [0, 1048576]";
  return static_cast<size_t>(v) << 10;
}

bool PeerAllReduceFailed() {
  const int* flag = g_error_host.load();
  return flag != nullptr && *reinterpret_cast<const volatile int*>(flag) != 0;
}

std::unique_ptr<PeerAllReduce> PeerAllReduce::Make(Communicator& host, const std::string& name,
                                                   size_t max_bytes) {
  const int n = host.size(), me = host.rank();
  if (n < 2) return nullptr;
  // Every rank must take the same path: the smallest threshold any rank asks for (0: off).
  const int64_t asked = static_cast<int64_t>(max_bytes);
  std::vector<int64_t> asks(n);
  host.AllGather(&asked, asks.data(), 1, DType::kI64);
  const int64_t agreed = *std::min_element(asks.begin(), asks.end());
  if (agreed != *std::max_element(asks.begin(), asks.end()) && me == 0) {
    LogOnce(name, me,
            "the ranks ask for different thresholds (TESSERA_CUSTOM_ALLREDUCE*); using " +
                std::to_string(agreed >> 10) + " KB");
  }
  max_bytes = static_cast<size_t>(agreed);
  if (max_bytes == 0) return nullptr;
  if (n > cuda::kPeerMaxRanks) {
    if (me == 0) LogOnce(name, me, std::to_string(n) + " ranks (at most 8)");
    return nullptr;
  }
  std::unique_ptr<PeerAllReduce> p(new PeerAllReduce(host, name, max_bytes));
  std::string why;  // this rank's reason to refuse; empty while all is well

  RankInfo info;
  std::memset(&info, 0, sizeof(info));
  gethostname(info.host, sizeof(info.host) - 1);
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetPCIBusId(info.bus_id, sizeof(info.bus_id) - 1, device));
  const size_t bytes = cuda::PeerSlotBytes(max_bytes);
  void* own = nullptr;
  cudaError_t e = cudaMalloc(&own, bytes);
  if (e != cudaSuccess) {
    why = CudaError("cudaMalloc of the slot", e);
  } else {
    p->own_ = static_cast<char*>(own);
    // Zero flags and epochs before any peer can see the slot (the exchange below orders it).
    CUDA_CHECK(cudaMemset(p->own_, 0, cuda::kPeerDataOffset));
    CUDA_CHECK(cudaDeviceSynchronize());
    e = cudaIpcGetMemHandle(&info.slot, p->own_);
    if (e != cudaSuccess) why = CudaError("cudaIpcGetMemHandle", e);
  }
  info.ok = why.empty() ? 1 : 0;
  std::vector<RankInfo> all(n);
  host.AllGather(&info, all.data(), sizeof(RankInfo) / sizeof(int64_t), DType::kI64);

  p->args_.ranks = n;
  p->args_.rank = me;
  p->args_.half_bytes = (bytes - cuda::kPeerDataOffset) / 2;
  p->args_.error = ErrorFlagForDevice();
  p->args_.slots[me] = p->own_;
  for (int r = 0; r < n && why.empty(); ++r) {
    if (r == me) continue;
    const RankInfo& peer = all[r];
    if (!peer.ok) {
      why = "rank " + std::to_string(r) + " could not export its slot";
    } else if (std::strncmp(peer.host, info.host, sizeof(info.host)) != 0) {
      why = "the ranks are on more than one node";
    } else if (std::strncmp(peer.bus_id, info.bus_id, sizeof(info.bus_id)) != 0) {
      // NOTE: two ranks on one GPU (tests) need no peer access; distinct GPUs do.
      int peer_device = -1, can = 0;
      e = cudaDeviceGetByPCIBusId(&peer_device, peer.bus_id);
      if (e != cudaSuccess) {
        why = "rank " + std::to_string(r) + "'s GPU " + peer.bus_id + " is not visible here";
        cudaGetLastError();
      } else if (cudaDeviceCanAccessPeer(&can, device, peer_device) != cudaSuccess || !can) {
        why = std::string("no peer access from GPU ") + info.bus_id + " to " + peer.bus_id;
        cudaGetLastError();
      }
    }
    if (!why.empty()) break;
    void* mapped = nullptr;
    e = cudaIpcOpenMemHandle(&mapped, peer.slot, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
      why = CudaError(("cudaIpcOpenMemHandle of rank " + std::to_string(r) + "'s slot").c_str(), e);
      break;
    }
    p->opened_.push_back(static_cast<char*>(mapped));
    p->args_.slots[r] = static_cast<char*>(mapped);
  }

  // Every rank takes the same path: all of them on the peer path, or none.
  const int32_t failed = why.empty() ? 0 : 1;
  std::vector<int32_t> failures(n);
  host.AllGather(&failed, failures.data(), 1, DType::kI32);
  int first_failed = -1;
  for (int r = 0; r < n && first_failed < 0; ++r) {
    if (failures[r]) first_failed = r;
  }
  if (first_failed >= 0) {
    if (first_failed == me) LogOnce(name, me, why);
    for (char* peer : p->opened_) cudaIpcCloseMemHandle(peer);
    p->opened_.clear();
    if (p->own_ != nullptr) cudaFree(p->own_);
    p->own_ = nullptr;
    cudaGetLastError();
    return nullptr;
  }
  return p;
}

PeerAllReduce::~PeerAllReduce() {
  if (last_stream_ != nullptr) cudaStreamSynchronize(last_stream_);
  {
    CollectiveGuard guard(name_, "custom all-reduce teardown", 0);
    host_.Barrier();  // after it no peer reads our slot, nor we theirs
  }
  for (char* peer : opened_) cudaIpcCloseMemHandle(peer);
  if (own_ != nullptr) cudaFree(own_);
  cudaGetLastError();
}

void PeerAllReduce::AllReduceSum(void* buf, size_t count, DType dtype, cudaStream_t stream) {
  const double limit = CollectiveTimeoutSeconds();
  args_.timeout_ns = limit > 0 ? static_cast<uint64_t>(limit * 1e9) : 0;
  last_stream_ = stream;
  cuda::LaunchPeerAllReduceSum(args_, buf, count, dtype, stream);
}

}  // namespace tessera
