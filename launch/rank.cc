#include "launch/rank.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "launch/cli.h"
#include "launch/log.h"
#include "parallel/communicator.h"
#include "runtime/model/load_progress.h"
#include "runtime/model/safetensors.h"

namespace tessera {
namespace {

constexpr char kPerRankPayload[] = "tessera.launch/per-rank";

bool IsPerRank(const absl::Status& status) {
  return status.GetPayload(kPerRankPayload).has_value();
}

// The fewest of every rank's `mine` (a collective over the world).
int64_t Fewest(MpiSession& mpi, int64_t mine) {
  std::vector<int64_t> all(mpi.size(), mine);
  if (mpi.world()) mpi.world()->AllGather(&mine, all.data(), 1, DType::kI64);
  return *std::min_element(all.begin(), all.end());
}

// Logs weight loading as it goes (every 2 s: bytes read and GB/s), then each file's bytes and
// rate; installed for the lifetime of the object.
class LoadProgressLog {
 public:
  LoadProgressLog() : start_(Clock::now()), last_log_(start_) {
    SetLoadProgress([this](const std::string& file, int64_t bytes) { Add(file, bytes); });
  }
  ~LoadProgressLog() {
    SetLoadProgress(nullptr);
    if (total_ == 0) return;
    for (const auto& [file, f] : files_) {
      const double s = std::chrono::duration<double>(f.last - f.first).count();
      spdlog::info("weights: {} {:.2f} GB at {:.2f} GB/s", file, f.bytes * 1e-9,
                   s > 0 ? f.bytes * 1e-9 / s : 0.0);
    }
    const double s = std::chrono::duration<double>(Clock::now() - start_).count();
    spdlog::info("weights: {:.2f} GB read in {:.1f} s ({:.2f} GB/s)", total_ * 1e-9, s,
                 s > 0 ? total_ * 1e-9 / s : 0.0);
  }

 private:
  using Clock = std::chrono::steady_clock;
  struct File {
    int64_t bytes = 0;
    Clock::time_point first, last;
  };
  void Add(const std::string& path, int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    const Clock::time_point now = Clock::now();
    const std::string file = path.substr(path.rfind('/') + 1);
    File& f = files_[file];
    if (f.bytes == 0) f.first = now;
    f.bytes += bytes;
    f.last = now;
    total_ += bytes;
    if (now - last_log_ >= std::chrono::seconds(2)) {
      last_log_ = now;
      const double s = std::chrono::duration<double>(now - start_).count();
      spdlog::info("loading weights: {:.2f} GB read ({:.2f} GB/s), now {}", total_ * 1e-9,
                   total_ * 1e-9 / s, file);
    }
  }
  std::mutex mu_;
  Clock::time_point start_, last_log_;
  int64_t total_ = 0;
  std::map<std::string, File> files_;
};

}  // namespace

void AddModelFlags(CLI::App& app, RankOptions* options) {
  app.add_option("--model", options->model,
                 "model directory (HF layout: config.json, *.safetensors, tokenizer); default: "
                 "the embedded tiny random-weight Qwen3")
      ->type_name("DIR");
  app.add_option("--device", options->device,
                 "cpu or cuda; default: cuda when a GPU is visible, else cpu")
      ->type_name("DEVICE")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  AddQuantizationFlag(app, options);
}

void AddQuantizationFlag(CLI::App& app, RankOptions* options) {
  app.add_option("--quantization", options->quantization,
                 "fp8: block-quantize the linear layers to FP8 at load (128x128 blocks, as Qwen's "
                 "FP8 checkpoints); default: as the checkpoint is (its quantization_config)")
      ->type_name("METHOD")
      ->check(CLI::IsMember({"fp8"}));
}

void AddParallelFlags(CLI::App& app, RankOptions* options) {
  app.add_option("--tp", options->tp, "tensor-parallel ranks");
  app.add_option("--pp", options->pp, "pipeline stages");
  app.add_option("--ep", options->ep, "expert-parallel ranks (MoE)");
  app.add_option("--dp", options->dp, "data-parallel replicas (0: the ranks left over)");
  if (options->collective_timeout <= 0) options->collective_timeout = CollectiveTimeoutSeconds();
  app.add_option("--collective-timeout", options->collective_timeout,
                 "seconds a rank may wait in a collective before the watchdog ends the job")
      ->type_name("SECONDS");
}

CLI::Option* AddKvCacheFlags(CLI::App& app, RankOptions* options,
                             const std::string& num_blocks_flag, const std::string& default_blocks,
                             bool memory_flags) {
  app.add_option("--block-size", options->block_size, "tokens per KV-cache block");
  CLI::Option* blocks = app.add_option(num_blocks_flag, options->num_kv_blocks,
                                       "KV-cache blocks per replica (0: " + default_blocks + ")");
  if (memory_flags) {
    AddBytesFlag(app, "--kv-cache-memory", &options->kv_cache_memory,
                 "KV-cache bytes per rank, e.g. 2GiB, 512MiB (default: by "
                 "--gpu-memory-utilization on GPUs, 256MiB on the CPU)");
    app.add_option("--gpu-memory-utilization", options->gpu_memory_utilization,
                   "fraction of each GPU the weights, workspace and KV cache may use, in (0, 1]");
  }
  return blocks;
}

absl::Status PerRank(absl::Status status) {
  status.SetPayload(kPerRankPayload, absl::Cord("1"));
  return status;
}

int ExitCode(MpiSession& mpi, const absl::Status& status) {
  if (status.ok()) return 0;
  if (IsPerRank(status)) {
    if (status.code() != absl::StatusCode::kAborted || mpi.rank() == 0) {
      spdlog::error("[rank {}] {}", mpi.rank(), std::string(status.message()));
    }
  } else if (mpi.rank() == 0) {
    spdlog::error("{}", std::string(status.message()));
  }
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

absl::StatusOr<std::unique_ptr<Rank>> OpenRank(MpiSession& mpi, const RankOptions& options) {
  auto rank = std::make_unique<Rank>();
  if (options.collective_timeout > 0) CollectiveTimeoutSeconds() = options.collective_timeout;
  if (options.load_format != "dummy" && options.load_format != "safetensors") {
    return absl::InvalidArgumentError("--load-format must be dummy or safetensors");
  }
  if (options.block_size < 1) return absl::InvalidArgumentError("--block-size must be >= 1");
  if (options.num_kv_blocks < 0) return absl::InvalidArgumentError("KV blocks must be >= 0");
  if (!(options.gpu_memory_utilization > 0 && options.gpu_memory_utilization <= 1)) {
    return absl::InvalidArgumentError("--gpu-memory-utilization must be in (0, 1]");
  }
  std::optional<std::string> dir;
  if (!options.model.empty()) dir = options.model;
  ASSIGN_OR_RETURN(rank->model, ResolveModelDirectory(dir));
  if (!options.quantization.empty()) {
    if (options.quantization != "fp8") {
      return absl::InvalidArgumentError("--quantization must be fp8");
    }
    RequestFp8Quantization(&rank->model.config);
  }
  ASSIGN_OR_RETURN(rank->parallel,
                   ParallelConfig::Create(mpi.size(), mpi.rank(), options.tp, options.pp,
                                          options.ep, options.dp, ModelDimsOf(rank->model.config)));
  return rank;
}

absl::Status LoadRank(MpiSession& mpi, const RankOptions& options, const StepLimitsFor& limits_for,
                      Rank& rank) {
  const ModelConfig& c = rank.model.config;
  // Communicators first (collective, on every rank), then this rank's shard.
  ASSIGN_OR_RETURN(rank.compute, SetUpRankCompute(options.device, mpi));
  rank.device = rank.compute.device;
  if (options.op_profile) rank.profiler = MakeProfilingBackend(*rank.compute.backend);
  rank.backend = rank.profiler ? rank.profiler.get() : rank.compute.backend.get();
  Backend& backend = *rank.backend;
  rank.executor = std::make_unique<Executor>(c, rank.parallel, rank.compute.world);
  Executor& executor = *rank.executor;

  // KV blocks: the same count on every rank (block tables are shared), from the tightest rank.
  rank.block_size = options.block_size;
  const int64_t layers = rank.parallel.last_layer(c.num_hidden_layers) -
                         rank.parallel.first_layer(c.num_hidden_layers);
  const int64_t kv_heads = std::max<int64_t>(1, c.num_key_value_heads / rank.parallel.tp);
  rank.kv_block_bytes = 2 * layers * options.block_size * kv_heads * c.head_dim *
                        static_cast<int64_t>(DTypeSize(backend.activation_dtype()));
  size_t free_bytes = 0, total_bytes = 0;
  const bool by_memory = options.num_kv_blocks <= 0 && options.kv_cache_memory <= 0 &&
                         backend.MemoryInfo(&free_bytes, &total_bytes);
  if (options.num_kv_blocks > 0) {
    rank.num_kv_blocks = options.num_kv_blocks;
  } else if (!by_memory) {
    const int64_t bytes =
        options.kv_cache_memory > 0 ? options.kv_cache_memory : options.default_kv_cache_memory;
    rank.num_kv_blocks = Fewest(mpi, bytes / rank.kv_block_bytes);
    if (rank.num_kv_blocks < 1) {
      return absl::InvalidArgumentError(absl::StrCat("--kv-cache-memory ", bytes,
                                                     " bytes holds no KV block of ",
                                                     rank.kv_block_bytes, " bytes"));
    }
  }
  // Every rank plans its workspace for the command's largest step (the same flags everywhere);
  // sized by memory, the block count is not known yet and the longest sequence bounds the tables.
  const StepLimits limits =
      limits_for(c, by_memory ? INT32_MAX : static_cast<int>(rank.num_kv_blocks));

  const auto start = std::chrono::steady_clock::now();
  absl::Status loaded = [&]() -> absl::Status {
    LoadProgressLog progress;
    if (FaultInjected("crash-load", mpi.rank())) std::abort();
    if (FaultInjected("fail-load", mpi.rank())) {
      return absl::InternalError("injected load failure (TESSERA_FAULT)");
    }
    if (options.load_format == "dummy") {
      return executor.LoadDummy(backend, static_cast<int>(rank.num_kv_blocks), options.block_size,
                                limits, options.dummy_seed);
    }
    ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(rank.model.dir));
    if (by_memory) return executor.LoadModel(*checkpoint, backend, limits);
    return executor.Load(*checkpoint, backend, static_cast<int>(rank.num_kv_blocks),
                         options.block_size, limits);
  }();
  if (mpi.AnyFailed(loaded.ok())) {
    return PerRank(loaded.ok() ? absl::AbortedError("another rank failed to load its shard")
                               : loaded);
  }
  if (by_memory) {
    backend.MemoryInfo(&free_bytes, &total_bytes);
    const int64_t spare = static_cast<int64_t>(free_bytes) -
                          static_cast<int64_t>((1.0 - options.gpu_memory_utilization) *
                                               static_cast<double>(total_bytes));
    rank.num_kv_blocks = Fewest(mpi, std::max<int64_t>(0, spare) / rank.kv_block_bytes);
    if (rank.num_kv_blocks < 1) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "--gpu-memory-utilization ", options.gpu_memory_utilization, " leaves no KV block of ",
          rank.kv_block_bytes, " bytes once the weights and the step workspace (",
          executor.model().workspace_bytes(), " bytes) are loaded (", free_bytes, " of ",
          total_bytes,
          " bytes free on the tightest GPU); raise it, lower --max-num-batched-tokens, or use "
          "more GPUs"));
    }
    executor.AllocateKv(backend, static_cast<int>(rank.num_kv_blocks), options.block_size);
  }
  rank.load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ReportLoad(mpi, rank.load_seconds, &executor.model().load_stats());
  spdlog::info("KV cache: {} blocks of {} tokens per replica, {:.2f} GiB per rank",
               rank.num_kv_blocks, options.block_size,
               static_cast<double>(rank.num_kv_blocks * rank.kv_block_bytes) / (1 << 30));
  const std::string exchange = executor.model().expert_exchange_summary();
  if (!exchange.empty()) spdlog::info("expert exchange: {}", exchange);
  return absl::OkStatus();
}

bool ServeStepsAsWorker(MpiSession& mpi, Rank& rank) {
  if (mpi.rank() == 0) return false;
  if (FaultInjected("hang-step", mpi.rank())) {
    for (;;) pause();
  }
  rank.executor->RunWorker();
  return true;
}

}  // namespace tessera
