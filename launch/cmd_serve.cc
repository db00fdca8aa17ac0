// tessera serve: the gRPC coordinator and the OpenAI-compatible HTTP API on rank 0, the other
// ranks executing its step plans.
//
//   [mpirun -np N] tessera serve [--model DIR] [--host H] [--port P] [--http-port H]
//       [--metrics-port M]
//       [--tp T] [--pp P] [--ep E] [--dp D] [--device cpu|cuda] [--max-num-seqs N]
//       [--max-num-batched-tokens N]
//       [--kv-cache-memory BYTES | --num-kv-blocks N | --gpu-memory-utilization F]
//       [--block-size B] [--max-queue N] [--no-prefix-caching] [--api-key K]
//       [--tls-cert F --tls-key F] [--drain-timeout S] [--collective-timeout S] [--port-file F]
//       [--engine-stall-timeout S] [--client-keepalive S] [--client-keepalive-timeout S]
//
// --http-port (default 8000) serves OpenAI's API, /health and /metrics (rpc/openai_server.h), with
// the same --api-key and TLS files as gRPC; --metrics-port (default 9400) serves /health and
// /metrics alone. -1 turns either off. Port 0 picks a free port; --port-file F then receives
// "GRPC_PORT METRICS_PORT RANK0_PID HTTP_PORT" once the server is up (for scripts and tests).
//
// The KV cache: --num-kv-blocks, or --kv-cache-memory per rank, or by default on GPUs the part of
// each GPU that --gpu-memory-utilization (0.9) leaves after the weights and the planned step
// workspace (on the CPU backend the default is 256MiB).
//
// Without --model it serves the embedded tiny model (with Qwen3's real tokenizer and template).
// SIGTERM/SIGINT drain: health turns NOT_SERVING at once, new requests get UNAVAILABLE, requests
// in flight finish within --drain-timeout, then the job exits 0 (1 if some had to be cut off).
// A rank that dies or hangs past the collective watchdog fails the requests in flight with
// UNAVAILABLE, turns health NOT_SERVING and ends the job non-zero. Health also turns NOT_SERVING
// while the engine makes no progress for --engine-stall-timeout (default 30 s; idle, a heartbeat
// every rank answers runs each second). Clients that answer no HTTP/2 ping within
// --client-keepalive-timeout (20 s) of one sent every --client-keepalive (30 s) are dropped and
// their requests cancelled. docs/reliability.md lists every such bound and its test.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "launch/commands.h"
#include "launch/device.h"
#include "launch/flags.h"
#include "launch/model_dir.h"
#include "launch/mpi_session.h"
#include "rpc/openai_server.h"
#include "rpc/server.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/executor.h"
#include "runtime/model/tiny_model.h"

namespace tessera {
namespace {

// "1073741824", "512MiB", "2GiB", "1.5GB".
absl::StatusOr<int64_t> ParseBytes(const std::string& text) {
  static const struct {
    const char* suffix;
    double scale;
  } kUnits[] = {{"GiB", 1024.0 * 1024 * 1024},
                {"MiB", 1024.0 * 1024},
                {"KiB", 1024.0},
                {"GB", 1e9},
                {"MB", 1e6},
                {"KB", 1e3},
                {"B", 1.0},
                {"", 1.0}};
  for (const auto& unit : kUnits) {
    const std::string suffix = unit.suffix;
    if (text.size() < suffix.size() ||
        text.compare(text.size() - suffix.size(), suffix.size(), suffix))
      continue;
    double value;
    if (absl::SimpleAtod(text.substr(0, text.size() - suffix.size()), &value) && value > 0) {
      return static_cast<int64_t>(value * unit.scale);
    }
    break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--kv-cache-memory: cannot read '", text, "' as a size"));
}

int ServeMain(MpiSession& mpi, int argc, char** argv) {
  Flags flags({"model",
               "host",
               "port",
               "metrics-port",
               "http-port",
               "tp",
               "pp",
               "ep",
               "dp",
               "device",
               "max-num-seqs",
               "max-num-batched-tokens",
               "kv-cache-memory",
               "gpu-memory-utilization",
               "num-kv-blocks",
               "block-size",
               "max-queue",
               "api-key",
               "tls-cert",
               "tls-key",
               "drain-timeout",
               "collective-timeout",
               "port-file",
               "seed",
               "engine-stall-timeout",
               "client-keepalive",
               "client-keepalive-timeout"},
              {"no-prefix-caching"});
  // Errors every rank sees alike are reported by rank 0 only.
  auto fail = [&](const absl::Status& status) {
    if (mpi.rank() == 0)
      std::fprintf(stderr, "tessera serve: %s\n", std::string(status.message()).c_str());
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  };
  if (absl::Status s = flags.Parse(argc, argv, 2); !s.ok()) return fail(s);
  if (!flags.positional().empty()) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("unexpected argument '", flags.positional()[0], "'")));
  }
  const std::string device = flags.GetString("device").value_or("cpu");
  absl::StatusOr<ModelDirectory> model = ResolveModelDirectory(flags.GetString("model"));
  if (!model.ok()) return fail(model.status());
  auto int_flag = [&](const char* name, int64_t fallback) { return flags.GetInt(name, fallback); };
  absl::StatusOr<int64_t> tp = int_flag("tp", 1), pp = int_flag("pp", 1), ep = int_flag("ep", 1),
                          dp = int_flag("dp", 0), port = int_flag("port", 50051),
                          metrics_port = int_flag("metrics-port", 9400),
                          http_port = int_flag("http-port", 8000),
                          max_seqs = int_flag("max-num-seqs", 256),
                          max_tokens = int_flag("max-num-batched-tokens", 2048),
                          block_size = int_flag("block-size", 16),
                          max_queue = int_flag("max-queue", 4096), seed = int_flag("seed", 0);
  for (const auto* v : {&tp, &pp, &ep, &dp, &port, &metrics_port, &http_port, &max_seqs,
                        &max_tokens, &block_size, &max_queue, &seed}) {
    if (!v->ok()) return fail(v->status());
  }
  absl::StatusOr<double> drain_timeout = flags.GetDouble("drain-timeout", 30.0);
  absl::StatusOr<double> timeout = flags.GetDouble("collective-timeout", 60.0);
  if (!drain_timeout.ok()) return fail(drain_timeout.status());
  if (!timeout.ok()) return fail(timeout.status());
  CollectiveTimeoutSeconds() = *timeout;
  absl::StatusOr<double> stall_timeout = flags.GetDouble("engine-stall-timeout", 30.0);
  absl::StatusOr<double> keepalive = flags.GetDouble("client-keepalive", 30.0);
  absl::StatusOr<double> keepalive_timeout = flags.GetDouble("client-keepalive-timeout", 20.0);
  for (const auto* v : {&stall_timeout, &keepalive, &keepalive_timeout}) {
    if (!v->ok()) return fail(v->status());
  }
  if (*keepalive <= 0 || *keepalive_timeout <= 0) {
    return fail(absl::InvalidArgumentError(
        "--client-keepalive and --client-keepalive-timeout must be > 0"));
  }
  if (auto key = flags.GetString("api-key"); key && key->empty()) {
    return fail(absl::InvalidArgumentError(
        "--api-key is empty: that would serve without authentication; omit the flag for that"));
  }
  if (*block_size < 1 || *max_seqs < 1 || *max_tokens < 1 || *max_queue < 1) {
    return fail(absl::InvalidArgumentError(
        "--block-size, --max-num-seqs, --max-num-batched-tokens and --max-queue must be >= 1"));
  }

  absl::StatusOr<ParallelConfig> parallel = ParallelConfig::Create(
      mpi.size(), mpi.rank(), static_cast<int>(*tp), static_cast<int>(*pp), static_cast<int>(*ep),
      static_cast<int>(*dp), ModelDimsOf(model->config));
  if (!parallel.ok()) return fail(parallel.status());

  // Communicators on every rank, then this rank's shard; all ranks agree on the outcome.
  absl::StatusOr<RankCompute> compute = SetUpRankCompute(device, mpi);
  if (!compute.ok()) return fail(compute.status());
  std::unique_ptr<Backend>& backend = compute->backend;
  Executor executor(model->config, *parallel, compute->world);
  const ModelConfig& c = model->config;
  // KV blocks: the same count on every rank (block tables are shared), from the tightest rank:
  // --num-kv-blocks, else --kv-cache-memory per rank, else (on GPUs) what
  // --gpu-memory-utilization of each GPU leaves once the weights and the workspace are in.
  absl::StatusOr<double> utilization = flags.GetDouble("gpu-memory-utilization", 0.9);
  if (!utilization.ok()) return fail(utilization.status());
  if (!(*utilization > 0 && *utilization <= 1)) {
    return fail(absl::InvalidArgumentError("--gpu-memory-utilization must be in (0, 1]"));
  }
  const int64_t layers =
      parallel->last_layer(c.num_hidden_layers) - parallel->first_layer(c.num_hidden_layers);
  const int64_t kv_heads = std::max<int64_t>(1, c.num_key_value_heads / parallel->tp);
  const int64_t per_block = 2 * layers * *block_size * kv_heads * c.head_dim *
                            static_cast<int64_t>(DTypeSize(backend->activation_dtype()));
  // The tightest rank's count, on every rank.
  auto fewest = [&](int64_t mine) {
    std::vector<int64_t> all(mpi.size(), mine);
    if (mpi.world()) mpi.world()->AllGather(&mine, all.data(), 1, DType::kI64);
    return *std::min_element(all.begin(), all.end());
  };
  size_t free_bytes = 0, total_bytes = 0;
  const bool by_memory = !flags.GetString("num-kv-blocks") && !flags.GetString("kv-cache-memory") &&
                         backend->MemoryInfo(&free_bytes, &total_bytes);
  int64_t num_blocks = 0;
  if (auto n = flags.GetString("num-kv-blocks")) {
    if (!absl::SimpleAtoi(*n, &num_blocks) || num_blocks < 1) {
      return fail(absl::InvalidArgumentError("--num-kv-blocks must be a positive integer"));
    }
  } else if (!by_memory) {
    absl::StatusOr<int64_t> bytes =
        ParseBytes(flags.GetString("kv-cache-memory").value_or("256MiB"));
    if (!bytes.ok()) return fail(bytes.status());
    num_blocks = fewest(*bytes / per_block);
    if (num_blocks < 1) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "--kv-cache-memory ", *bytes, " bytes holds no KV block of ", per_block, " bytes")));
    }
  }
  // Every rank plans its workspace for the engine's largest step (the same flags everywhere);
  // sized by memory, the block count is not known yet and the longest sequence bounds the tables.
  EngineOptions engine_options;
  engine_options.max_num_seqs = static_cast<int>(*max_seqs);
  engine_options.max_num_batched_tokens = static_cast<int>(*max_tokens);
  const StepLimits limits =
      EngineStepLimits(engine_options, c, by_memory ? INT32_MAX : static_cast<int>(num_blocks),
                       static_cast<int>(*block_size));
  const auto load_start = std::chrono::steady_clock::now();
  absl::Status loaded = [&]() -> absl::Status {
    if (FaultInjected("crash-load", mpi.rank())) std::abort();
    if (FaultInjected("fail-load", mpi.rank()))
      return absl::InternalError("injected load failure (TESSERA_FAULT)");
    ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(model->dir));
    if (by_memory) return executor.LoadModel(*checkpoint, *backend, limits);
    return executor.Load(*checkpoint, *backend, static_cast<int>(num_blocks),
                         static_cast<int>(*block_size), limits);
  }();
  if (mpi.AnyFailed(loaded.ok())) {
    if (!loaded.ok()) {
      std::fprintf(stderr, "tessera serve: [rank %d] %s\n", mpi.rank(),
                   std::string(loaded.message()).c_str());
    }
    return 1;
  }
  if (by_memory) {
    backend->MemoryInfo(&free_bytes, &total_bytes);
    const int64_t spare =
        static_cast<int64_t>(free_bytes) -
        static_cast<int64_t>((1.0 - *utilization) * static_cast<double>(total_bytes));
    num_blocks = fewest(std::max<int64_t>(0, spare) / per_block);
    if (num_blocks < 1) {
      return fail(absl::ResourceExhaustedError(absl::StrCat(
          "--gpu-memory-utilization ", *utilization, " leaves no KV block of ", per_block,
          " bytes once the weights and the step workspace (", executor.model().workspace_bytes(),
          " bytes) are loaded (", free_bytes, " of ", total_bytes,
          " bytes free on the tightest GPU); raise it, lower "
          "--max-num-batched-tokens, or use more GPUs")));
    }
    executor.AllocateKv(*backend, static_cast<int>(num_blocks), static_cast<int>(*block_size));
  }
  if (mpi.rank() == 0) {
    std::fprintf(stderr, "tessera serve: KV cache %lld blocks of %lld tokens (%.2f GiB per rank)\n",
                 static_cast<long long>(num_blocks), static_cast<long long>(*block_size),
                 static_cast<double>(num_blocks * per_block) / (1 << 30));
  }
  ReportLoad(mpi, "tessera serve",
             std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count(),
             &executor.model().load_stats());
  if (mpi.rank() != 0) {
    if (FaultInjected("hang-step", mpi.rank())) {
      for (;;) pause();
    }
    executor.RunWorker();
    return 0;
  }

  // Rank 0: the coordinator.
  Frontend frontend;
  frontend.tokenizer = model->tokenizer.get();
  frontend.chat_template = model->chat_template ? &*model->chat_template : nullptr;
  frontend.default_sampling = model->default_sampling;
  engine_options.max_queue = static_cast<int>(*max_queue);
  engine_options.enable_prefix_caching = !flags.GetBool("no-prefix-caching");
  engine_options.sampleable_vocab = model->sampleable_vocab;
  engine_options.eos_token_ids = model->eos_token_ids;
  engine_options.seed = static_cast<uint64_t>(*seed);
  // The name clients send as `model`: the directory's, or the embedded model's.
  std::string model_name = "tessera-tiny";
  if (flags.GetString("model")) {
    std::string dir = model->dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    model_name = dir.substr(dir.find_last_of('/') + 1);
  }
  if (FaultInjected("stall-step", 0)) engine_options.fault_after_steps = FaultAfterSteps();
  if (FaultInjected("cuda-error", 0) && backend->kind() == DeviceKind::kCuda) {
    // A CUDA call that fails (a copy from an address no allocation owns), through the backend's
    // own error check, as a device fault mid-serving would.
    engine_options.fault_after_steps = FaultAfterSteps();
    engine_options.fault = [&backend] {
      std::fprintf(stderr, "tessera serve: injecting a CUDA error (TESSERA_FAULT)\n");
      uint32_t sink = 0;
      backend->CopyToHost(&sink, reinterpret_cast<const void*>(uintptr_t{16}), sizeof(sink));
    };
  }
  Metrics metrics;
  metrics.SetModelName(model_name);
  metrics.SetCacheConfig(*block_size, num_blocks, engine_options.enable_prefix_caching);
  Engine engine(executor, model->tokenizer.get(), &metrics, engine_options);

  ServerOptions server_options;
  server_options.host = flags.GetString("host").value_or("0.0.0.0");
  server_options.port = static_cast<int>(*port);
  server_options.api_key = flags.GetString("api-key").value_or("");
  server_options.tls_cert = flags.GetString("tls-cert").value_or("");
  server_options.tls_key = flags.GetString("tls-key").value_or("");
  server_options.engine_stall_timeout_s = *stall_timeout;
  server_options.keepalive_time_s = *keepalive;
  server_options.keepalive_timeout_s = *keepalive_timeout;
  ModelDescription description{model->dir, device};
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server =
      CoordinatorServer::Start(server_options, engine, frontend, metrics, executor, description);
  if (!server.ok()) {
    executor.Shutdown();
    return fail(server.status());
  }
  std::atomic<bool> serving{true};
  HttpOptions http_options;
  http_options.host = server_options.host;
  http_options.api_key = server_options.api_key;
  http_options.tls_cert = server_options.tls_cert;
  http_options.tls_key = server_options.tls_key;
  http_options.model_name = model_name;
  http_options.max_model_len =
      std::min<int64_t>(c.max_position_embeddings, num_blocks * *block_size);
  // A thread per connection: the streams the queue admits, plus room for idle and slow clients.
  http_options.max_threads = static_cast<int>(std::min<int64_t>(*max_queue + 512, 100000));
  std::unique_ptr<HttpServer> http, api;
  for (auto [which, port_flag] : {std::pair{&http, *metrics_port}, std::pair{&api, *http_port}}) {
    if (port_flag < 0) continue;
    HttpOptions o = http_options;
    o.port = static_cast<int>(port_flag);
    o.openai = which == &api;
    if (!o.openai) o.tls_cert = o.tls_key = "";  // metrics stay plain HTTP, as before
    absl::StatusOr<std::unique_ptr<HttpServer>> started =
        HttpServer::Start(o, &engine, &frontend, metrics,
                          [&serving, &server] { return serving.load() && (*server)->serving(); });
    if (!started.ok()) {
      (*server)->Shutdown(std::chrono::milliseconds(0));
      executor.Shutdown();
      return fail(started.status());
    }
    *which = std::move(*started);
  }
  std::fprintf(
      stderr,
      "tessera serve: %s on %s:%d (HTTP %s, metrics %s), model %s (%s), %s, %lld KV blocks of "
      "%lld per replica\n",
      "listening", server_options.host.c_str(), (*server)->port(),
      api ? absl::StrCat(server_options.host, ":", api->port()).c_str() : "off",
      http ? absl::StrCat("http://", server_options.host, ":", http->port(), "/metrics").c_str()
           : "off",
      model_name.c_str(), model->dir.c_str(), parallel->ToString().c_str(),
      static_cast<long long>(num_blocks), static_cast<long long>(*block_size));
  if (auto file = flags.GetString("port-file")) {
    std::ofstream out(*file + ".tmp");
    out << (*server)->port() << " " << (http ? http->port() : -1) << " " << getpid() << " "
        << (api ? api->port() : -1) << "\n";
    out.close();
    std::rename((*file + ".tmp").c_str(), file->c_str());
  }

  // A rank stuck in a collective (dead or hung peer): fail everything in flight, then exit.
  CoordinatorServer* server_ptr = server->get();
  SetWatchdogFatalHook([&engine, &serving, server_ptr] {
    serving = false;
    server_ptr->SetNotServing();
    engine.FailAll(
        absl::UnavailableError("a rank failed (collective watchdog); the job is ending"));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let handlers send the status
  });

  // Drain on SIGTERM / SIGINT (blocked in every thread; this one waits for them).
  std::atomic<bool> finished{false};
  std::atomic<int> exit_code{0};
  std::thread signals([&] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    timespec tick{0, 200 * 1000 * 1000};
    int sig = -1;
    while (!finished && (sig = sigtimedwait(&set, nullptr, &tick)) < 0) {
    }
    if (finished) return;
    std::fprintf(stderr, "tessera serve: signal %d: draining (up to %.0f s)\n", sig,
                 *drain_timeout);
    serving = false;
    server_ptr->SetNotServing();
    engine.BeginDrain();
    const auto limit =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(*drain_timeout);
    while (engine.in_flight() > 0 && std::chrono::steady_clock::now() < limit) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (engine.in_flight() > 0) {
      std::fprintf(stderr, "tessera serve: drain timeout: %lld requests cut off\n",
                   static_cast<long long>(engine.in_flight()));
      exit_code = 1;
    }
    // Cut off what is left; the ranks are fine, so the workers are told to shut down.
    engine.Stop(absl::UnavailableError("the server shut down before the request finished"));
    // If the step loop is stuck (a dead peer), it never returns: leave anyway.
    for (int i = 0; i < 250 && !finished; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!finished) {
      std::fprintf(stderr, "tessera serve: the engine did not stop; exiting\n");
      std::fflush(stderr);
      std::_Exit(1);
    }
  });

  engine.Run();  // on the MPI thread until Stop()
  finished = true;
  signals.join();
  (*server)->Shutdown(std::chrono::milliseconds(1000));
  api.reset();
  http.reset();
  std::fprintf(stderr, "tessera serve: stopped\n");
  return exit_code;
}

}  // namespace

int ServeCommand(int argc, char** argv) {
  // Block the drain signals before any thread starts, so only the signal thread receives them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  MpiSession mpi(&argc, &argv);
  return ServeMain(mpi, argc, argv);
}

}  // namespace tessera
