#include "launch/mpi_session.h"

#include <mpi.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/base/check.h"
#include "launch/log.h"
#include "parallel/mpi_communicator.h"

namespace tessera {
namespace {

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

}  // namespace

// True when an MPI launcher (Open MPI, MPICH/Hydra, PMIx, Slurm's srun) started this process.
bool LaunchedByMpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

MpiSession::MpiSession(int* argc, char*** argv) {
  if (LaunchedByMpi()) {
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    initialized_ = true;
  }
  ProcessRank() = size_ > 1 ? rank_ : -1;
  // Open MPI, MPICH and Slurm each name the node-local rank differently.
  local_rank_ =
      EnvInt("OMPI_COMM_WORLD_LOCAL_RANK", EnvInt("MPI_LOCALRANKID", EnvInt("SLURM_LOCALID", 0)));
  local_size_ = EnvInt("OMPI_COMM_WORLD_LOCAL_SIZE", EnvInt("MPI_LOCALNRANKS", size_));
  if (std::getenv("OMP_NUM_THREADS") == nullptr) {
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    omp_set_num_threads(std::max(1, cores / std::max(1, local_size_)));
  }
  if (initialized_) world_ = MakeMpiCommunicator(MPI_COMM_WORLD, "world");
}

MpiSession::~MpiSession() {
  world_.reset();
  if (initialized_) MPI_Finalize();
}

bool MpiSession::AnyFailed(bool ok) {
  if (!world_) return !ok;
  int32_t failed = ok ? 0 : 1;
  world_->AllReduceSum(&failed, 1, DType::kI32);
  return failed > 0;
}

namespace {
double PeakHostMemoryMiB() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  double kib = -1;
  while (std::fgets(line, sizeof(line), f)) {
    if (std::sscanf(line, "VmHWM: %lf kB", &kib) == 1) break;
  }
  std::fclose(f);
  return kib / 1024.0;
}
}  // namespace

void ReportLoad(MpiSession& mpi, double seconds, const WeightLoadStats* read) {
  constexpr int kFields = 7;
  const bool have_read = read != nullptr && read->bytes > 0;
  float mine[kFields] = {static_cast<float>(seconds),
                         static_cast<float>(PeakHostMemoryMiB()),
                         have_read ? static_cast<float>(read->bytes / 1e9) : 0.0f,
                         have_read ? static_cast<float>(read->seconds) : 0.0f,
                         have_read ? static_cast<float>(read->threads) : 0.0f,
                         have_read ? static_cast<float>(read->staging / 1048576.0) : 0.0f,
                         have_read ? static_cast<float>(read->direct_bytes / 1e9) : 0.0f};
  std::vector<float> all(kFields * static_cast<size_t>(mpi.size()));
  if (mpi.world()) {
    mpi.world()->AllGather(mine, all.data(), kFields, DType::kF32);
  } else {
    all.assign(mine, mine + kFields);
  }
  if (mpi.rank() != 0) return;
  for (int r = 0; r < mpi.size(); ++r) {
    const float* f = &all[kFields * r];
    std::string detail;
    if (f[2] > 0) {
      detail = absl::StrFormat(
          " (%s read in %.2f s, %.2f GB/s, %d threads, %.1f MiB staging%s)",
          f[2] >= 1 ? absl::StrFormat("%.2f GB", f[2]) : absl::StrFormat("%.1f MB", f[2] * 1e3),
          f[3], f[3] > 0 ? f[2] / f[3] : 0.0f, static_cast<int>(f[4]), f[5],
          f[6] <= 0   ? ""
          : f[6] >= 1 ? absl::StrFormat(", %.2f GB of it O_DIRECT", f[6])
                      : absl::StrFormat(", %.1f MB of it O_DIRECT", f[6] * 1e3));
    }
    spdlog::info("rank {} loaded its shard in {:.2f} s{}, peak host memory {:.1f} MiB", r, f[0],
                 detail, f[1]);
  }
}

bool FaultInjected(const char* kind, int rank) {
  const char* spec = std::getenv("TESSERA_FAULT");
  if (spec == nullptr) return false;
  const std::string s(spec);
  const size_t at = s.find('@');
  if (at == std::string::npos) return false;
  return s.substr(0, at) == kind && std::atoi(s.c_str() + at + 1) == rank;
}

int64_t FaultAfterSteps() {
  const char* steps = std::getenv("TESSERA_FAULT_AFTER_STEPS");
  return steps ? std::max<int64_t>(0, std::atoll(steps)) : 0;
}

}  // namespace tessera
