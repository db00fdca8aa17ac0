#include "launch/device.h"

#include "absl/strings/str_cat.h"
#include "launch/log.h"
#include "parallel/watchdog.h"

#if defined(TESSERA_HAVE_NCCL)
#include "parallel/nccl_communicator.h"
#endif

namespace tessera {
namespace {

// Whether this build can run `mpi`'s world on GPUs, and every rank sees one (collective).
bool EveryRankHasGpu(MpiSession& mpi) {
#if defined(TESSERA_HAVE_CUDA)
#if !defined(TESSERA_HAVE_NCCL)
  if (mpi.size() > 1) return false;
#endif
  return !mpi.AnyFailed(CudaDeviceCount() > 0);
#else
  (void)mpi;
  return false;
#endif
}

}  // namespace

absl::StatusOr<RankCompute> SetUpRankCompute(const std::string& requested, MpiSession& mpi) {
  RankCompute compute;
  compute.world = mpi.world();
  compute.device = requested;
  if (requested.empty()) {
    compute.device = EveryRankHasGpu(mpi) ? "cuda" : "cpu";
    spdlog::info("device: {} ({}; --device chooses)", compute.device,
                 compute.device == "cuda" ? "a GPU is visible" : "no usable GPU");
  }
  const std::string& device = compute.device;
  if (device == "cpu") {
    compute.backend = MakeCpuBackend();
    return compute;
  }
  if (device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("--device ", device, ": expected cpu or cuda"));
  }
#if defined(TESSERA_HAVE_CUDA)
#if !defined(TESSERA_HAVE_NCCL)
  if (mpi.size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--device cuda: ", mpi.size(),
                     " ranks need NCCL, which this build was made without; run one rank"));
  }
#endif
  const int count = CudaDeviceCount();
  if (count == 0) return absl::InvalidArgumentError("--device cuda: no CUDA device is visible");
  compute.backend = MakeCudaBackend(mpi.local_rank() % count);
#if defined(TESSERA_HAVE_NCCL)
  if (mpi.world() != nullptr && mpi.size() > 1) {
    compute.device_world = MakeNcclCommunicator(*mpi.world(), *compute.backend, "world");
    compute.world = compute.device_world.get();
  }
#endif
  // A lone GPU's host waits under the watchdog too (the NCCL communicator watches its own): a
  // device that never finishes ends the job after --collective-timeout.
  if (compute.device_world == nullptr) WatchStreamWaits(*compute.backend);
  return compute;
#else
  return absl::InvalidArgumentError(
      "--device cuda: this build has no CUDA backend (built without the CUDA toolkit)");
#endif
}

}  // namespace tessera
