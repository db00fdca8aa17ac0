// tessera bench-comm: the communication a step pays for, measured through the Communicator.
//
//   mpirun -np N tessera bench-comm [--device cuda|cpu] [--sizes-kb 8,16,32,64,80,128,256]
//       [--bw-sizes-mb 1,4,16,64,256] [--a2a-sizes-mb 1,4,16,64,256] [--rs-ag-sizes-mb 16,256]
//       [--skew-mb 16] [--graph-ops 32] [--repeats 20] [--warmup 5] [--json]
//       [--moe-tokens 1,16,128,512,1024,4096] [--moe-hidden 4096] [--moe-experts 128]
//       [--moe-top-k 8] [--moe-layout-ranks 8]
//
// Reports, on rank 0 (a table on stderr; --json adds one JSON object on stdout):
//   - all-reduce latency at decode sizes (in place, activation dtype): eager (enqueue + host wait
//     per op) and, on CUDA, captured in a CUDA graph of --graph-ops back-to-back all-reduces
//     (graph time / ops), in microseconds; where the communicator's one-shot peer-memory path
//     takes the size (parallel/peer_allreduce.h; TESSERA_CUSTOM_ALLREDUCE_MAX_KB sets how far),
//     the same through NCCL alone beside it (a second communicator with the peer path off);
//   - all-reduce bandwidth at prefill sizes: algbw = bytes / time, busbw = algbw * 2(n-1)/n;
//   - all-to-all(v) through AllToAllV at MoE dispatch sizes (total bytes each rank sends, equal
//     blocks per peer) and one skewed pattern (each rank sends 4x more to its next neighbour):
//     busbw = algbw * (n-1)/n;
//   - reduce-scatter and all-gather (bytes = the full, gathered buffer): busbw = algbw * (n-1)/n;
//   - MoE dispatch at Qwen3-235B-A22B's shapes by default (hidden 4096, top-8 of 128 experts,
//     uniform random routing), per --moe-tokens tokens per rank: the layout kernels alone for
//     --moe-layout-ranks ranks (no communication): layout, pack and combine in the normal
//     mode's packed layout, layout + pack in the low-latency mode's fixed blocks (blocks of m
//     rows), and the FP8 payload's quantize + dequantize of the packed rows (where the backend
//     has FP8 ops); then the whole exchange over the world (Dispatch + Combine of
//     parallel/expert_exchange.h, experts not run; with one rank every block is a local copy
//     through the same calls): normal and low-latency modes, activation-dtype and FP8 payloads,
//     low-latency recorded in a CUDA graph and replayed (CUDA), beside the all-gather /
//     reduce-scatter exchange of TESSERA_EP_EXCHANGE=allgather.
// Every figure is the median over --repeats timed runs after --warmup untimed ones, the slowest
// rank's median (max over ranks). On CUDA, times come from cudaEvents on the backend's stream;
// with --device cpu (the default without a GPU) the MPI communicator is timed on host buffers with
// a steady clock, with no graph mode. With 2 or 4 ranks on CUDA the reference figures
// (H200) are printed beside ours.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"
#include "launch/build_commit.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/device.h"
#include "launch/mpi_session.h"
#include "nlohmann/json.hpp"
#include "parallel/expert_exchange.h"

#if defined(TESSERA_HAVE_CUDA)
#include "kernels/cuda/cuda_check.h"
#endif
#if defined(TESSERA_HAVE_NCCL)
#include "parallel/nccl_communicator.h"
#endif

namespace tessera {
namespace {

using json = nlohmann::json;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// The measurements on H200 (NVLink), for 2 and 4 GPUs.
struct Reference {
  double allreduce_80kb_graph_us, allreduce_256mb_busbw, alltoall_256mb_busbw;
};
std::optional<Reference> ReferenceFor(int ranks) {
  if (ranks == 2) return Reference{16.6, 302, 282};
  if (ranks == 4) return Reference{20.2, 340, 291};
  return std::nullopt;
}

// Times runs of communication on one rank: cudaEvents on the stream (CUDA) or a steady clock
// (CPU). Every run starts after a barrier over the world, so no rank's time includes waiting for
// a late peer's host.
class Timer {
 public:
  Timer(Backend& backend, Communicator& world) : backend_(backend), world_(world) {
#if defined(TESSERA_HAVE_CUDA)
    if (backend_.kind() == DeviceKind::kCuda) {
      CUDA_CHECK(cudaEventCreate(&start_));
      CUDA_CHECK(cudaEventCreate(&stop_));
    }
#endif
  }
  ~Timer() {
#if defined(TESSERA_HAVE_CUDA)
    if (start_) cudaEventDestroy(start_);
    if (stop_) cudaEventDestroy(stop_);
#endif
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  // Seconds for one call of `run` (which ends with its work enqueued or done), median over
  // `repeats` after `warmup`, max over ranks.
  double Seconds(int warmup, int repeats, const std::function<void()>& run) {
    for (int i = 0; i < warmup; ++i) run();
    backend_.Synchronize();
    std::vector<double> times;
    for (int i = 0; i < repeats; ++i) {
      world_.Barrier();
      times.push_back(Once(run));
    }
    float mine = static_cast<float>(Median(times));
    std::vector<float> all(world_.size());
    world_.AllGather(&mine, all.data(), 1, DType::kF32);  // host buffers: over MPI
    return *std::max_element(all.begin(), all.end());
  }

 private:
  double Once(const std::function<void()>& run) {
#if defined(TESSERA_HAVE_CUDA)
    if (backend_.kind() == DeviceKind::kCuda) {
      cudaStream_t stream = static_cast<cudaStream_t>(backend_.stream());
      CUDA_CHECK(cudaEventRecord(start_, stream));
      run();
      CUDA_CHECK(cudaEventRecord(stop_, stream));
      backend_.Synchronize();  // the host wait an eager op pays (bounded: see nccl_communicator.h)
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
      return ms * 1e-3;
    }
#endif
    const auto start = std::chrono::steady_clock::now();
    run();
    backend_.Synchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  Backend& backend_;
  Communicator& world_;
#if defined(TESSERA_HAVE_CUDA)
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
#endif
};

// `ops` back-to-back all-reduces of `count` elements recorded in one graph (Backend::BeginCapture):
// seconds per all-reduce when the graph is replayed (median over repeats of graph time / ops).
double GraphAllReduceSeconds(Backend& backend, Communicator& comm, Timer& timer, void* buf,
                             size_t count, DType dtype, int ops, int warmup, int repeats) {
  backend.Synchronize();
  backend.BeginCapture();
  for (int i = 0; i < ops; ++i) comm.AllReduceSum(buf, count, dtype);
  const std::unique_ptr<DeviceGraph> graph = backend.EndCapture();
  TESSERA_CHECK(graph != nullptr) << "recording " << ops << " all-reduces in a graph failed";
  return timer.Seconds(warmup, repeats, [&] { graph->Replay(); }) / ops;
}

// Distinct experts per token, uniform over [0, experts): ids int32 [tokens, top_k].
std::vector<int32_t> RandomRouting(int tokens, int experts, int top_k, std::mt19937& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(tokens) * top_k), all(experts);
  for (int e = 0; e < experts; ++e) all[e] = e;
  for (int t = 0; t < tokens; ++t) {
    // A partial Fisher-Yates shuffle: the first top_k of `all` are the token's experts.
    for (int k = 0; k < top_k; ++k) {
      std::uniform_int_distribution<int> pick(k, experts - 1);
      std::swap(all[k], all[pick(rng)]);
      ids[static_cast<size_t>(t) * top_k + k] = all[k];
    }
  }
  return ids;
}

struct MoeShape {
  std::vector<int64_t> tokens;  // per rank
  int64_t hidden;
  int experts, top_k, layout_ranks;
};

// The MoE dispatch measurements (see the file comment): JSON {"layout": [...], "exchange": [...]}.
json BenchMoeDispatch(Backend& backend, Communicator& comm, Timer& timer, const MoeShape& shape,
                      int warm, int rep, const std::function<void(const std::string&)>& say) {
  const int n = comm.size(), k = shape.top_k, E = shape.experts;
  const int64_t H = shape.hidden;
  const DType dtype = backend.activation_dtype();
  const size_t es = DTypeSize(dtype);
  const int max_m = static_cast<int>(*std::max_element(shape.tokens.begin(), shape.tokens.end()));
  std::mt19937 rng(1234 + comm.rank());
  // Inputs for the largest count: rows A [max_m, H], ids, weights; send/receive rows for the
  // layout kernels' S ranks and for the exchanges.
  // Send rows: packed (at most min(k, S) per token) or in S fixed blocks of m rows.
  const int64_t rows_cap = static_cast<int64_t>(max_m) * std::max(shape.layout_ranks, n);
  const bool fp8 = backend.fp8_mode() != Fp8Mode::kNone;
  const int64_t G = Fp8Blocks(H);
  DeviceBuffer x = backend.Allocate(static_cast<size_t>(max_m) * H * es);
  DeviceBuffer ids = backend.Allocate(static_cast<size_t>(max_m) * k * sizeof(int32_t));
  DeviceBuffer weights = backend.Allocate(static_cast<size_t>(max_m) * k * sizeof(float));
  DeviceBuffer counts = backend.Allocate((shape.layout_ranks + E) * sizeof(int32_t));
  // The low-latency layout's expert-load counters, int64 [S + E], as the exchange keeps them.
  const std::vector<int64_t> zero_load(shape.layout_ranks + E, 0);
  DeviceBuffer load = backend.Allocate(zero_load.size() * sizeof(int64_t));
  backend.CopyToDevice(load.data(), zero_load.data(), zero_load.size() * sizeof(int64_t));
  DeviceBuffer send_tokens = backend.Allocate(rows_cap * sizeof(int32_t));
  DeviceBuffer token_slots = backend.Allocate(static_cast<size_t>(max_m) * k * sizeof(int32_t));
  DeviceBuffer rows_a = backend.Allocate(static_cast<size_t>(rows_cap) * H * es);
  DeviceBuffer rows_b = backend.Allocate(static_cast<size_t>(rows_cap) * H * es);
  DeviceBuffer rows_ids = backend.Allocate(rows_cap * k * sizeof(int32_t));
  DeviceBuffer rows_w = backend.Allocate(rows_cap * k * sizeof(float));
  DeviceBuffer rows_q = backend.Allocate(fp8 ? static_cast<size_t>(rows_cap) * H : 1);
  DeviceBuffer rows_scale = backend.Allocate(fp8 ? rows_cap * G * sizeof(float) : 4);
  backend.FillRandom(x.data(), dtype, static_cast<size_t>(max_m) * H, 3, 0.0f, 1.0f);
  backend.FillRandom(rows_b.data(), dtype, static_cast<size_t>(rows_cap) * H, 4, 0.0f, 0.0f);
  backend.FillRandom(weights.data(), DType::kF32, static_cast<size_t>(max_m) * k, 5, 0.5f, 0.1f);
  json out = json::object();

  // Layout kernels for layout_ranks simulated ranks (this rank's routing to all of them).
  say(absl::StrFormat(
      "\nMoE dispatch kernels: hidden %lld, top-%d of %d experts over %d ranks (no communication)",
      static_cast<long long>(H), k, E, shape.layout_ranks));
  say(absl::StrFormat("  %8s %8s %10s %10s %10s %12s %12s %11s %11s", "tokens", "rows", "layout us",
                      "pack us", "combine us", "pack GB/s", "combine GB/s", "blocks us",
                      "fp8 q+dq us"));
  json layout = json::array();
  const int S = shape.layout_ranks;
  for (int64_t m64 : shape.tokens) {
    const int m = static_cast<int>(m64);
    const std::vector<int32_t> host_ids = RandomRouting(m, E, k, rng);
    backend.CopyToDevice(ids.data(), host_ids.data(), host_ids.size() * sizeof(int32_t));
    auto* c = counts.as<int32_t>();
    auto run_layout = [&] {
      backend.MoeDispatchLayout(ids.as<int32_t>(), m, k, S, E / S, c, c + S,
                                send_tokens.as<int32_t>(), token_slots.as<int32_t>(), 0,
                                /*valid_rows=*/nullptr, /*load=*/nullptr);
    };
    const double t_layout = timer.Seconds(warm, rep, run_layout);
    std::vector<int32_t> rank_rows(S);
    backend.CopyToHost(rank_rows.data(), c, S * sizeof(int32_t));
    int rows = 0;
    for (int v : rank_rows) rows += v;
    const double t_pack = timer.Seconds(warm, rep, [&] {
      backend.MoeDispatchPack(x.data(), ids.as<int32_t>(), weights.as<float>(),
                              send_tokens.as<int32_t>(), rows, H, k, rows_a.data(),
                              rows_ids.as<int32_t>(), rows_w.as<float>());
    });
    const double t_combine = timer.Seconds(warm, rep, [&] {
      backend.MoeCombineRanks(rows_b.data(), token_slots.as<int32_t>(), m, k, H, x.data());
    });
    // Low-latency blocks of m rows: the layout (counting the load, as the exchange does) and the
    // pack of all S * m rows (unused ones zeroed).
    const double t_blocks = timer.Seconds(warm, rep, [&] {
      backend.MoeDispatchLayout(ids.as<int32_t>(), m, k, S, E / S, c, nullptr,
                                send_tokens.as<int32_t>(), token_slots.as<int32_t>(), m,
                                /*valid_rows=*/nullptr, load.as<int64_t>());
      backend.MoeDispatchPack(x.data(), ids.as<int32_t>(), weights.as<float>(),
                              send_tokens.as<int32_t>(), S * m, H, k, rows_a.data(),
                              rows_ids.as<int32_t>(), rows_w.as<float>());
    });
    // FP8 payload: the packed rows quantized, then dequantized (as one block each way).
    double t_fp8 = 0;
    if (fp8 && rows > 0) {
      Fp8Activations q;
      q.data = rows_q.data();
      q.scale = rows_scale.as<float>();
      q.scale_stride = rows;
      t_fp8 = timer.Seconds(warm, rep, [&] {
        backend.QuantizeFp8(rows_a.data(), rows, H, q);
        backend.DequantizeFp8(q, rows, H, rows_b.data());
      });
    }
    // Bytes: pack reads and writes each row; combine reads each row and writes each token.
    const double pack_bytes = 2.0 * rows * H * es, combine_bytes = (rows + m) * H * es * 1.0;
    layout.push_back({{"tokens", m},
                      {"rows", rows},
                      {"layout_us", t_layout * 1e6},
                      {"pack_us", t_pack * 1e6},
                      {"combine_us", t_combine * 1e6},
                      {"pack_gbs", pack_bytes / t_pack * 1e-9},
                      {"combine_gbs", combine_bytes / t_combine * 1e-9},
                      {"blocks_layout_pack_us", t_blocks * 1e6},
                      {"fp8_quantize_dequantize_us", t_fp8 * 1e6}});
    say(absl::StrFormat("  %8d %8d %10.1f %10.1f %10.1f %12.1f %12.1f %11.1f %11.1f", m, rows,
                        t_layout * 1e6, t_pack * 1e6, t_combine * 1e6, pack_bytes / t_pack * 1e-9,
                        combine_bytes / t_combine * 1e-9, t_blocks * 1e6, t_fp8 * 1e6));
  }
  out["layout"] = layout;
  if (E % n != 0) return out;

  // The exchange over the world, in each mode and payload, against all-gather / reduce-scatter.
  // NOTE: rows_b's rows stand in for the experts' outputs (recv_y is left as it is).
  ExpertExchangeShape xs{H, k, E, max_m};
  xs.block_capacity = max_m;
  ExpertExchange plain(comm, backend, xs);
  std::optional<ExpertExchange> quant;
  if (fp8) {
    xs.fp8_payload = true;
    quant.emplace(comm, backend, xs);
  }
  const bool graphs = backend.CanCaptureGraphs();
  say(absl::StrFormat(
      "\nMoE exchange over %d rank(s) (dispatch + combine, experts not run; ll = low-latency "
      "blocks of m rows; all-gather = TESSERA_EP_EXCHANGE=allgather)",
      n));
  say(absl::StrFormat("  %8s %10s %10s %10s %10s %10s %10s %13s", "tokens", "rows/rank",
                      "normal us", "fp8 us", "ll us", "ll fp8 us", "ll graph us", "all-gather us"));
  json exchange_rows = json::array();
  for (int64_t m64 : shape.tokens) {
    const int m = static_cast<int>(m64);
    const std::vector<int32_t> host_ids = RandomRouting(m, E, k, rng);
    backend.CopyToDevice(ids.data(), host_ids.data(), host_ids.size() * sizeof(int32_t));
    int received = 0;
    auto normal = [&](ExpertExchange& ex) {
      received = ex.Dispatch(x.data(), ids.as<int32_t>(), weights.as<float>(), m);
      ex.Combine(x.data());
    };
    auto low_latency = [&](ExpertExchange& ex) {
      ex.DispatchLowLatency(x.data(), ids.as<int32_t>(), weights.as<float>(), m, m);
      ex.Combine(x.data());
    };
    const double t_normal = timer.Seconds(warm, rep, [&] { normal(plain); });
    const int rows = received;
    const double t_ll = timer.Seconds(warm, rep, [&] { low_latency(plain); });
    double t_fp8 = 0, t_ll_fp8 = 0, t_graph = 0;
    if (quant) {
      t_fp8 = timer.Seconds(warm, rep, [&] { normal(*quant); });
      t_ll_fp8 = timer.Seconds(warm, rep, [&] { low_latency(*quant); });
    }
    if (graphs) {  // the low-latency exchange as a decode step's graph records it
      backend.Synchronize();
      backend.BeginCapture();
      low_latency(plain);
      std::unique_ptr<DeviceGraph> graph = backend.EndCapture();
      if (graph != nullptr) t_graph = timer.Seconds(warm, rep, [&] { graph->Replay(); });
    }
    // The all-gather exchange moves every rank's m rows (its padding to the largest slice aside).
    const double t_ag = timer.Seconds(warm, rep, [&] {
      comm.AllGather(x.data(), rows_a.data(), static_cast<size_t>(m) * H, dtype);
      comm.AllGather(ids.data(), rows_ids.data(), static_cast<size_t>(m) * k, DType::kI32);
      comm.AllGather(weights.data(), rows_w.data(), static_cast<size_t>(m) * k, DType::kF32);
      comm.ReduceScatterSum(rows_b.data(), x.data(), static_cast<size_t>(m) * H, dtype);
    });
    exchange_rows.push_back({{"tokens", m},
                             {"received_rows", rows},
                             {"alltoall_us", t_normal * 1e6},
                             {"alltoall_fp8_us", t_fp8 * 1e6},
                             {"low_latency_us", t_ll * 1e6},
                             {"low_latency_fp8_us", t_ll_fp8 * 1e6},
                             {"low_latency_graph_us", t_graph * 1e6},
                             {"allgather_us", t_ag * 1e6}});
    say(absl::StrFormat("  %8d %10d %10.1f %10.1f %10.1f %10.1f %10.1f %13.1f", m, rows,
                        t_normal * 1e6, t_fp8 * 1e6, t_ll * 1e6, t_ll_fp8 * 1e6, t_graph * 1e6,
                        t_ag * 1e6));
  }
  out["exchange"] = exchange_rows;
  return out;
}

struct BenchCommFlags {
  std::string device;  // "": cuda when a GPU is visible, else cpu
  std::vector<int64_t> latency_kb = {8, 16, 32, 64, 80, 128, 256};
  std::vector<int64_t> bw_mb = {1, 4, 16, 64, 256};
  std::vector<int64_t> a2a_mb = {1, 4, 16, 64, 256};
  std::vector<int64_t> rs_ag_mb = {16, 256};
  int64_t skew_mb = 16, graph_ops = 32, repeats = 20, warmup = 5;
  std::vector<int64_t> moe_tokens = {1, 16, 128, 512, 1024, 4096};  // per rank
  int64_t moe_hidden = 4096, moe_experts = 128, moe_top_k = 8, moe_layout_ranks = 8;
  bool json = false;
};

void AddBenchCommFlags(CLI::App& app, BenchCommFlags* f) {
  app.add_option("--device", f->device, "cpu or cuda; default: cuda when a GPU is visible")
      ->type_name("DEVICE")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  AddIntListFlag(app, "--sizes-kb", &f->latency_kb, "all-reduce latency sizes, KB");
  AddIntListFlag(app, "--bw-sizes-mb", &f->bw_mb, "all-reduce bandwidth sizes, MB");
  AddIntListFlag(app, "--a2a-sizes-mb", &f->a2a_mb, "all-to-all sizes, MB");
  AddIntListFlag(app, "--rs-ag-sizes-mb", &f->rs_ag_mb, "reduce-scatter / all-gather sizes, MB");
  app.add_option("--skew-mb", f->skew_mb, "size of the skewed all-to-all, MB (0: none)");
  app.add_option("--graph-ops", f->graph_ops, "all-reduces recorded in one graph");
  app.add_option("--repeats", f->repeats, "timed repeats (the median is reported)");
  app.add_option("--warmup", f->warmup, "untimed repeats first");
  AddIntListFlag(app, "--moe-tokens", &f->moe_tokens, "MoE dispatch tokens per rank");
  app.add_option("--moe-hidden", f->moe_hidden, "MoE dispatch hidden size");
  app.add_option("--moe-experts", f->moe_experts, "MoE dispatch experts");
  app.add_option("--moe-top-k", f->moe_top_k, "MoE dispatch experts per token");
  app.add_option("--moe-layout-ranks", f->moe_layout_ranks,
                 "ranks the MoE layout kernels are measured for (must divide --moe-experts)");
  app.add_flag("--json", f->json, "print one JSON object of every figure on stdout");
}

absl::StatusOr<int> BenchComm(MpiSession& mpi, const BenchCommFlags& f) {
  for (const auto& [name, list] :
       {std::pair{"sizes-kb", &f.latency_kb}, std::pair{"bw-sizes-mb", &f.bw_mb},
        std::pair{"a2a-sizes-mb", &f.a2a_mb}, std::pair{"rs-ag-sizes-mb", &f.rs_ag_mb},
        std::pair{"moe-tokens", &f.moe_tokens}}) {
    for (int64_t x : *list) {
      if (x < 1)
        return absl::InvalidArgumentError(absl::StrFormat("--%s: sizes must be >= 1", name));
    }
  }
  std::vector<int64_t> latency_kb = f.latency_kb, bw_mb = f.bw_mb, a2a_mb = f.a2a_mb,
                       rs_ag_mb = f.rs_ag_mb;
  int64_t skew_mb = f.skew_mb;
  const int64_t graph_ops = f.graph_ops, repeats = f.repeats, warmup = f.warmup;
  const std::string device =
      !f.device.empty() ? f.device : (CudaDeviceCount() > 0 ? "cuda" : "cpu");
  if (graph_ops < 1 || repeats < 1 || warmup < 0 || skew_mb < 0) {
    return absl::InvalidArgumentError(
        "--graph-ops and --repeats must be >= 1, --warmup and --skew-mb >= 0");
  }
  MoeShape moe;
  moe.tokens = f.moe_tokens;
  moe.hidden = f.moe_hidden;
  const int64_t moe_experts = f.moe_experts, moe_top_k = f.moe_top_k,
                layout_ranks = f.moe_layout_ranks;
  moe.experts = static_cast<int>(moe_experts);
  moe.top_k = static_cast<int>(moe_top_k);
  moe.layout_ranks = static_cast<int>(layout_ranks);
  if (moe.hidden < 1 || moe_top_k < 1 || moe_top_k > moe_experts || layout_ranks < 1 ||
      moe_experts % layout_ranks != 0) {
    return absl::InvalidArgumentError(
        "--moe-hidden, --moe-top-k >= 1, --moe-top-k <= --moe-experts, and --moe-layout-ranks "
        "must divide --moe-experts");
  }
  if (mpi.world() == nullptr) {
    return absl::InvalidArgumentError("bench-comm runs under mpirun");
  }
  if (mpi.size() < 2) {  // nothing to communicate: the MoE layout kernels alone
    latency_kb.clear();
    bw_mb.clear();
    a2a_mb.clear();
    rs_ag_mb.clear();
    skew_mb = 0;
  }
  ASSIGN_OR_RETURN(RankCompute compute, SetUpRankCompute(device, mpi));
  Backend& backend = *compute.backend;
  const bool cuda = backend.kind() == DeviceKind::kCuda;
  // One rank on a GPU: SetUpRankCompute keeps the MPI world there (a model on one GPU exchanges
  // nothing), but the MoE exchange measured below passes device buffers, which MPI cannot take
  // (a one-GPU run crashed in MPI_Allgather): an NCCL communicator of one rank carries them.
  std::unique_ptr<Communicator> lone_gpu;
#if defined(TESSERA_HAVE_NCCL)
  if (cuda && compute.device_world == nullptr) {
    lone_gpu = MakeNcclCommunicator(*mpi.world(), backend, "world-nccl");
  }
#endif
  Communicator& comm = lone_gpu ? *lone_gpu : *compute.world;  // NCCL on CUDA, MPI on the CPU
  const int n = comm.size();
  const DType dtype = backend.activation_dtype();
  const size_t es = DTypeSize(dtype);
  const int rep = static_cast<int>(repeats), warm = static_cast<int>(warmup);
  const bool rank0 = mpi.rank() == 0;
  auto say = [&](const std::string& line) {
    if (rank0) std::fprintf(stderr, "%s\n", line.c_str());
  };

  // Two buffers of the largest size any measurement needs, zeroed (FillRandom with scale 0), so
  // in-place sums stay finite.
  size_t max_bytes = 0;
  for (int64_t kb : latency_kb) max_bytes = std::max<size_t>(max_bytes, kb << 10);
  for (const auto* mbs : {&bw_mb, &a2a_mb, &rs_ag_mb}) {
    for (int64_t mb : *mbs) max_bytes = std::max<size_t>(max_bytes, mb << 20);
  }
  max_bytes = std::max<size_t>(max_bytes, static_cast<size_t>(skew_mb) << 20);
  const size_t max_count = (max_bytes + es - 1) / es + n;
  DeviceBuffer a = backend.Allocate(max_count * es), b = backend.Allocate(max_count * es);
  backend.FillRandom(a.data(), dtype, max_count, 1, 0.0f, 0.0f);
  backend.FillRandom(b.data(), dtype, max_count, 2, 0.0f, 0.0f);
  backend.Synchronize();
  Timer timer(backend, comm);
  const std::optional<Reference> ref = cuda ? ReferenceFor(n) : std::nullopt;

  json result = {
      {"device", device},        {"ranks", n},         {"dtype", std::string(DTypeName(dtype))},
      {"commit", BuildCommit()}, {"repeats", repeats}, {"graph_mode", cuda}};
  if (!cuda) result["note"] = "--device cpu: the MPI communicator on host buffers; no CUDA graphs";
  say(absl::StrFormat("tessera bench-comm: %d ranks, --device %s, %s, median of %d%s", n, device,
                      DTypeName(dtype), rep,
                      cuda ? "" : " (MPI on host buffers; no graph mode on the CPU)"));

  // The peer-memory all-reduce's reach, and NCCL alone to compare it with.
  size_t peer_max_bytes = 0;
  std::unique_ptr<Communicator> nccl_only;
#if defined(TESSERA_HAVE_NCCL)
  if (cuda) {
    peer_max_bytes = CustomAllReduceMaxBytes(comm);
    if (peer_max_bytes > 0) {
      nccl_only = MakeNcclCommunicator(*mpi.world(), backend, "world-nccl", 0);
    }
  }
#endif
  result["custom_allreduce_max_bytes"] = peer_max_bytes;
  if (cuda) {
    say(peer_max_bytes > 0
            ? absl::StrFormat(
                  "custom all-reduce: one-shot over peer memory up to %d KB; NCCL above",
                  peer_max_bytes >> 10)
            : std::string("custom all-reduce: off or unavailable; NCCL carries every all-reduce"));
  }

  // All-reduce latency at decode sizes.
  json latency = json::array();
  say(absl::StrFormat("\nall-reduce latency (in place)%s", cuda ? "" : ": eager only"));
  say(absl::StrFormat("  %8s %12s %12s%s%s", "size", "eager us", cuda ? "graph us" : "",
                      nccl_only ? "   path  nccl eager  nccl graph" : "",
                      ref ? "   reference (graph)" : ""));
  for (int64_t kb : latency_kb) {
    const size_t count = static_cast<size_t>(kb << 10) / es;
    const double eager =
        timer.Seconds(warm, rep, [&] { comm.AllReduceSum(a.data(), count, dtype); });
    json row = {{"kb", kb}, {"bytes", count * es}, {"eager_us", eager * 1e6}};
    std::string graph_text;
    if (backend.CanCaptureGraphs()) {
      const double graph = GraphAllReduceSeconds(backend, comm, timer, a.data(), count, dtype,
                                                 static_cast<int>(graph_ops), warm, rep);
      row["graph_us"] = graph * 1e6;
      row["graph_ops"] = graph_ops;
      graph_text = absl::StrFormat("%12.1f", graph * 1e6);
    }
    if (nccl_only) {
      const bool peer = count * es <= peer_max_bytes;
      row["path"] = peer ? "custom" : "nccl";
      graph_text += absl::StrFormat("   %-6s", peer ? "custom" : "nccl");
      if (peer) {
        const double nccl_eager =
            timer.Seconds(warm, rep, [&] { nccl_only->AllReduceSum(a.data(), count, dtype); });
        const double nccl_graph =
            GraphAllReduceSeconds(backend, *nccl_only, timer, a.data(), count, dtype,
                                  static_cast<int>(graph_ops), warm, rep);
        row["nccl_eager_us"] = nccl_eager * 1e6;
        row["nccl_graph_us"] = nccl_graph * 1e6;
        graph_text += absl::StrFormat("%11.1f %11.1f", nccl_eager * 1e6, nccl_graph * 1e6);
      } else {
        graph_text += absl::StrFormat("%11s %11s", "=", "=");
      }
    }
    std::string ref_text;
    if (ref && kb == 80) {
      row["reference_graph_us"] = ref->allreduce_80kb_graph_us;
      ref_text = absl::StrFormat("   %.1f us", ref->allreduce_80kb_graph_us);
    }
    latency.push_back(row);
    say(absl::StrFormat("  %5lld KB %12.1f %12s%s", static_cast<long long>(kb), eager * 1e6,
                        graph_text, ref_text));
  }
  result["allreduce_latency"] = latency;

  // Bandwidth: one table row per size.
  auto bandwidth_row = [&](json* rows, const char* what, int64_t mb, size_t bytes, double seconds,
                           double bus_factor, std::optional<double> reference) {
    const double algbw = bytes / seconds * 1e-9, busbw = algbw * bus_factor;
    json row = {{"mb", mb},
                {"bytes", bytes},
                {"us", seconds * 1e6},
                {"algbw_gbs", algbw},
                {"busbw_gbs", busbw}};
    std::string ref_text;
    if (reference) {
      row["reference_busbw_gbs"] = *reference;
      ref_text = absl::StrFormat("   %.0f GB/s", *reference);
    }
    rows->push_back(row);
    say(absl::StrFormat("  %-8s %5lld MB %12.1f %10.1f %10.1f%s", what, static_cast<long long>(mb),
                        seconds * 1e6, algbw, busbw, ref_text));
    return row;
  };
  auto header = [&](const char* title) {
    say(absl::StrFormat("\n%s", title));
    say(absl::StrFormat("  %-8s %8s %12s %10s %10s%s", "", "size", "us", "algbw GB/s", "busbw GB/s",
                        ref ? "   reference busbw" : ""));
  };

  header("all-reduce bandwidth (in place; busbw = algbw * 2(n-1)/n)");
  json allreduce_bw = json::array();
  for (int64_t mb : bw_mb) {
    const size_t count = static_cast<size_t>(mb << 20) / es;
    const double s = timer.Seconds(warm, rep, [&] { comm.AllReduceSum(a.data(), count, dtype); });
    bandwidth_row(
        &allreduce_bw, "", mb, count * es, s, 2.0 * (n - 1) / n,
        ref && mb == 256 ? std::optional<double>(ref->allreduce_256mb_busbw) : std::nullopt);
  }
  result["allreduce_bandwidth"] = allreduce_bw;

  // All-to-all(v): `weight(k)` is the share of a rank's bytes for the rank k places after it.
  auto all_to_all = [&](int64_t mb, const std::function<size_t(int)>& weight) {
    const size_t total = static_cast<size_t>(mb << 20) / es;
    size_t weights = 0;
    for (int k = 0; k < n; ++k) weights += weight(k);
    const int me = comm.rank();
    std::vector<size_t> sc(n), sd(n), rc(n), rd(n);
    for (int r = 0; r < n; ++r) {
      sc[r] = total * weight((r - me + n) % n) / weights;  // to r
      rc[r] = total * weight((me - r + n) % n) / weights;  // from r: what r sends to me
    }
    for (int r = 1; r < n; ++r) {
      sd[r] = sd[r - 1] + sc[r - 1];
      rd[r] = rd[r - 1] + rc[r - 1];
    }
    size_t sent = 0;
    for (size_t c : sc) sent += c;
    const double s = timer.Seconds(
        warm, rep, [&] { comm.AllToAllV(a.data(), sc, sd, b.data(), rc, rd, dtype); });
    return std::make_pair(sent * es, s);
  };
  header("all-to-all(v) (bytes each rank sends; busbw = algbw * (n-1)/n)");
  json a2a = json::array();
  for (int64_t mb : a2a_mb) {
    auto [bytes, s] = all_to_all(mb, [](int) { return size_t{1}; });
    bandwidth_row(
        &a2a, "equal", mb, bytes, s, (n - 1.0) / n,
        ref && mb == 256 ? std::optional<double>(ref->alltoall_256mb_busbw) : std::nullopt);
    a2a.back()["pattern"] = "equal";
  }
  if (skew_mb > 0) {
    // Each rank sends 4 parts to its next neighbour and 1 to every other rank (itself included):
    // every rank still sends and receives the same total.
    auto [bytes, s] = all_to_all(skew_mb, [](int k) { return size_t{k == 1 ? 4u : 1u}; });
    bandwidth_row(&a2a, "skewed", skew_mb, bytes, s, (n - 1.0) / n, std::nullopt);
    a2a.back()["pattern"] = "skewed";
  }
  result["alltoall"] = a2a;

  header("reduce-scatter and all-gather (bytes of the full buffer; busbw = algbw * (n-1)/n)");
  json rs = json::array(), ag = json::array();
  for (int64_t mb : rs_ag_mb) {
    const size_t shard = static_cast<size_t>(mb << 20) / es / n;
    if (shard == 0) continue;
    const double srs =
        timer.Seconds(warm, rep, [&] { comm.ReduceScatterSum(a.data(), b.data(), shard, dtype); });
    bandwidth_row(&rs, "rs", mb, shard * n * es, srs, (n - 1.0) / n, std::nullopt);
    const double sag =
        timer.Seconds(warm, rep, [&] { comm.AllGather(b.data(), a.data(), shard, dtype); });
    bandwidth_row(&ag, "ag", mb, shard * n * es, sag, (n - 1.0) / n, std::nullopt);
  }
  result["reduce_scatter"] = rs;
  result["all_gather"] = ag;
  if (ref) say("\nreference: the issue's H200 measurements for the same number of GPUs");
  result["moe_dispatch"] = BenchMoeDispatch(backend, comm, timer, moe, warm, rep, say);

  if (rank0 && f.json) std::printf("%s\n", result.dump(1).c_str());
  return 0;
}

}  // namespace

int BenchCommCommand(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  BenchCommFlags flags;
  std::unique_ptr<CLI::App> app = NewCommandLine(
      "bench-comm",
      "Measure all-reduce, all-to-all, reduce-scatter and all-gather (run under mpirun).");
  AddBenchCommFlags(*app, &flags);
  if (std::optional<int> code = ParseCommandLine(*app, argc, argv, mpi.rank() == 0)) return *code;
  absl::StatusOr<int> code = BenchComm(mpi, flags);
  if (!code.ok()) {
    if (mpi.rank() == 0) {
      std::fprintf(stderr, "tessera bench-comm: %s\n",
                   std::string(code.status().message()).c_str());
    }
    return code.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return *code;
}

}  // namespace tessera
