#include "launch/device.h"

#include "absl/strings/str_cat.h"

namespace tessera {

absl::StatusOr<std::unique_ptr<Backend>> MakeBackendForRank(const std::string& device,
                                                            const MpiSession& mpi) {
  if (device == "cpu") return MakeCpuBackend();
  if (device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("--device ", device, ": expected cpu or cuda"));
  }
#if defined(TESSERA_HAVE_CUDA)
  if (mpi.size() > 1) {
    // NOTE: the model hands device buffers to its TP/PP communicators; over MPI (host memory)
    // they need NCCL first.
    return absl::InvalidArgumentError(
        absl::StrCat("--device cuda: ", mpi.size(),
                     " ranks need the NCCL communicator, which this build does not have yet; "
                     "run one rank"));
  }
  const int count = CudaDeviceCount();
  if (count == 0) return absl::InvalidArgumentError("--device cuda: no CUDA device is visible");
  return MakeCudaBackend(mpi.local_rank() % count);
#else
  return absl::InvalidArgumentError(
      "--device cuda: this build has no CUDA backend (built without the CUDA toolkit)");
#endif
}

}  // namespace tessera
