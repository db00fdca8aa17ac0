// tessera serve: the gRPC coordinator and the OpenAI-compatible HTTP API on rank 0, the other
// ranks executing its step plans.
//
//   [mpirun -np N] tessera serve [--model DIR [--load-format dummy]] [--host H] [--port P]
//   [--http-port H]
//       [--metrics-port M] [--served-model-name NAME...] [--log-requests [--log-request-prompts]]
//       [--tp T] [--pp P] [--ep E] [--dp D] [--device cpu|cuda] [--max-num-seqs N]
//       [--max-num-batched-tokens N] [--long-prefill-token-threshold N]
//       [--kv-cache-memory BYTES | --num-kv-blocks N | --gpu-memory-utilization F]
//       [--block-size B] [--max-queue N] [--no-prefix-caching] [--api-key K]
//       [--tls-cert F --tls-key F] [--drain-timeout S] [--collective-timeout S] [--port-file F]
//       [--engine-stall-timeout S] [--client-keepalive S] [--client-keepalive-timeout S]
//                                                       (tessera serve --help: every flag)
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
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/base/status_macros.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/log.h"
#include "launch/mpi_session.h"
#include "launch/rank.h"
#include "rpc/openai_server.h"
#include "rpc/server.h"
#include "runtime/engine/engine.h"

namespace tessera {
namespace {

struct ServeFlags {
  RankOptions rank;
  EngineOptions engine;
  ServerOptions server;
  int metrics_port = 9400;
  int http_port = 8000;
  std::string port_file;
  double drain_timeout = 30;
  bool no_prefix_caching = false;
  double log_stats_interval = 10;
  std::vector<std::string> served_model_names;
  bool log_requests = false;
  bool log_request_prompts = false;
};

void AddServeFlags(CLI::App& app, ServeFlags* f) {
  AddModelFlags(app, &f->rank);
  app.add_option("--load-format", f->rank.load_format,
                 "safetensors: the checkpoint; dummy: random weights at the real shapes (only "
                 "config.json and the tokenizer are read; for benchmarks)")
      ->check(CLI::IsMember({"dummy", "safetensors"}));
  // The server.
  app.add_option("--host", f->server.host, "address the gRPC, HTTP and metrics servers listen on");
  app.add_option("--port", f->server.port, "gRPC port (0: a free one, see --port-file)");
  app.add_option("--http-port", f->http_port,
                 "OpenAI-compatible HTTP API, /health and /metrics port (0: a free one; -1: off)");
  app.add_option("--metrics-port", f->metrics_port,
                 "Prometheus /metrics and /health port (0: a free one; -1: off)");
  app.add_option("--served-model-name", f->served_model_names,
                 "the names clients may give as `model` (others get 404); the first is reported "
                 "(default: the model directory's basename)")
      ->type_name("NAME")
      ->default_str("")
      ->expected(1, CLI::detail::expected_max_vector_size)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--port-file", f->port_file,
                 "once up, write \"GRPC_PORT METRICS_PORT RANK0_PID HTTP_PORT\" to this file")
      ->type_name("FILE");
  app.add_option("--api-key", f->server.api_key,
                 "require \"authorization: Bearer KEY\" on every Generation call and /v1/* "
                 "request")
      ->type_name("KEY");
  app.add_option("--tls-cert", f->server.tls_cert, "TLS certificate (PEM; with --tls-key)")
      ->type_name("FILE");
  app.add_option("--tls-key", f->server.tls_key, "TLS private key (PEM; with --tls-cert)")
      ->type_name("FILE");
  app.add_option("--drain-timeout", f->drain_timeout,
                 "on SIGTERM/SIGINT, seconds requests in flight may take to finish")
      ->type_name("SECONDS");
  app.add_option("--engine-stall-timeout", f->server.engine_stall_timeout_s,
                 "health turns NOT_SERVING while the engine makes no progress this long")
      ->type_name("SECONDS");
  app.add_option("--client-keepalive", f->server.keepalive_time_s,
                 "send an HTTP/2 ping to each gRPC client this often")
      ->type_name("SECONDS");
  app.add_option("--client-keepalive-timeout", f->server.keepalive_timeout_s,
                 "drop a gRPC client (cancelling its requests) that answers no ping this long")
      ->type_name("SECONDS");
  // The engine.
  app.add_option("--max-num-seqs", f->engine.max_num_seqs,
                 "sequences in the running batch, per replica");
  app.add_option("--max-num-batched-tokens", f->engine.max_num_batched_tokens,
                 "tokens per step, per replica (longer prompts are prefilled in chunks)");
  app.add_option("--long-prefill-token-threshold", f->engine.long_prefill_token_threshold,
                 "most tokens one prompt's prefill takes per step (0: the whole budget); smaller "
                 "chunks keep decodes flowing beside long prompts");
  app.add_option("--max-queue", f->engine.max_queue,
                 "requests admitted and not finished; more get RESOURCE_EXHAUSTED");
  app.add_option("--max-buffered-outputs", f->engine.max_buffered_outputs,
                 "outputs a request's stream may hold for a client that reads too slowly; "
                 "then the request ends RESOURCE_EXHAUSTED")
      ->check(CLI::PositiveNumber);
  app.add_flag("--no-prefix-caching", f->no_prefix_caching,
               "do not reuse the KV blocks of earlier prompts' common prefixes");
  app.add_option("--seed", f->engine.seed, "sampling seed of requests that give none");
  app.add_option("--max-model-len", f->engine.max_model_len,
                 "longest prompt + output a request may have, at most the model's "
                 "max_position_embeddings (0: that); also bounds the step workspace");
  app.add_flag("--async-output,!--no-async-output", f->engine.async_output,
               "detokenise, match stop strings and stream on the output thread while the next "
               "step runs (default on; a stop string is then seen one step late, its extra token "
               "discarded)");
  app.add_flag("--async-scheduling,!--no-async-scheduling", f->engine.async_scheduling,
               "with one pipeline stage, schedule and launch the next step before reading this "
               "one's sampled ids (default on; the next step's decode inputs are taken on the "
               "device; an EOS or stop id is then seen one step late, its extra token "
               "discarded); pipeline stages always run synchronously");
  app.add_option("--step-trace", f->engine.step_trace_path,
                 "write the engine's step timeline (Chrome trace JSON, for Perfetto) to this file "
                 "when serving ends (default: $TESSERA_STEP_TRACE)")
      ->type_name("FILE");
  app.add_option("--step-trace-steps", f->engine.step_trace_steps,
                 "the step timeline keeps this many last steps")
      ->type_name("N");
  // Logs.
  app.add_option("--log-stats-interval", f->log_stats_interval,
                 "while busy, log a stats line every this many seconds (0: never)")
      ->type_name("SECONDS");
  app.add_flag("--log-requests", f->log_requests,
               "log each request's arrival (front end, prompt tokens, sampling) and end (finish "
               "reason, tokens, TTFT, e2e); not the prompt text");
  app.add_flag("--log-request-prompts", f->log_request_prompts,
               "with --log-requests, also log each prompt's text (first 2000 bytes)");
  AddParallelFlags(app, &f->rank);
  AddKvCacheFlags(app, &f->rank, "--num-kv-blocks", "by the memory flags below",
                  /*memory_flags=*/true);
}

absl::Status Validate(const ServeFlags& f, bool api_key_given) {
  if (f.engine.max_num_seqs < 1 || f.engine.max_num_batched_tokens < 1 || f.engine.max_queue < 1 ||
      f.rank.block_size < 1) {
    return absl::InvalidArgumentError(
        "--block-size, --max-num-seqs, --max-num-batched-tokens and --max-queue must be >= 1");
  }
  if (f.engine.long_prefill_token_threshold < 0)
    return absl::InvalidArgumentError("--long-prefill-token-threshold must be >= 0");
  if (f.engine.step_trace_steps < 1)
    return absl::InvalidArgumentError("--step-trace-steps must be >= 1");
  if (f.server.keepalive_time_s <= 0 || f.server.keepalive_timeout_s <= 0) {
    return absl::InvalidArgumentError(
        "--client-keepalive and --client-keepalive-timeout must be > 0");
  }
  for (const std::string& name : f.served_model_names) {
    if (name.empty()) return absl::InvalidArgumentError("--served-model-name: a name is empty");
  }
  if (f.log_request_prompts && !f.log_requests) {
    return absl::InvalidArgumentError("--log-request-prompts needs --log-requests");
  }
  if (api_key_given && f.server.api_key.empty()) {
    return absl::InvalidArgumentError(
        "--api-key is empty: that would serve without authentication; omit the flag for that");
  }
  return absl::OkStatus();
}

// Every `interval` seconds until `finished`, while requests are in flight or were since the last
// line, one line of engine stats (as vLLM logs them): requests running and waiting, prompt and
// generation throughput, KV-cache use, prefix-cache hit rate (of the prompt tokens since start).
void LogStats(const Engine& engine, const Metrics& metrics, double interval,
              const std::atomic<bool>& finished) {
  using Clock = std::chrono::steady_clock;
  Clock::time_point last = Clock::now();
  int64_t last_prompt = metrics.prompt_tokens(), last_generation = metrics.generation_tokens();
  while (!finished) {
    const Clock::time_point next =
        last + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(interval));
    while (!finished && Clock::now() < next) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (finished) return;
    const Clock::time_point now = Clock::now();
    const double seconds = std::chrono::duration<double>(now - last).count();
    const EngineStats s = engine.stats();
    const int64_t prompt = metrics.prompt_tokens(), generation = metrics.generation_tokens();
    const int64_t hits = metrics.prefix_cache_hit_tokens();
    if (s.running + s.waiting > 0 || prompt != last_prompt || generation != last_generation) {
      const double kv_used =
          s.total_blocks > 0 ? 100.0 * (s.total_blocks - s.free_blocks) / s.total_blocks : 0.0;
      const double hit_rate = prompt + hits > 0 ? 100.0 * hits / (prompt + hits) : 0.0;
      spdlog::info(
          "engine: {} running, {} waiting; prompt {:.1f} tok/s, generation {:.1f} tok/s; KV cache "
          "{:.1f}% used; prefix cache hit rate {:.1f}%",
          s.running, s.waiting, (prompt - last_prompt) / seconds,
          (generation - last_generation) / seconds, kv_used, hit_rate);
    }
    last = now;
    last_prompt = prompt;
    last_generation = generation;
  }
}

// --log-requests: a line when the engine takes a request in and one when it ends. The prompt's
// text only with --log-request-prompts (it may hold what users would not want in logs).
void LogRequestArrival(const EngineRequest& r, const Tokenizer* tokenizer, bool with_prompt) {
  const SamplingParams& s = r.sampling;
  std::string prompt;
  if (with_prompt) {
    absl::StatusOr<std::string> text =
        tokenizer ? tokenizer->Decode(r.prompt, /*skip_special_tokens=*/false)
                  : absl::StatusOr<std::string>(absl::StrJoin(r.prompt, " "));
    constexpr size_t kMaxPromptLog = 2000;
    if (text.ok()) {
      prompt = absl::StrCat(", prompt \"", absl::CHexEscape(text->substr(0, kMaxPromptLog)), "\"",
                            text->size() > kMaxPromptLog ? " (cut)" : "");
    }
  }
  spdlog::info(
      "request {} arrived ({}): {} prompt tokens, max_tokens {}, temperature {}, top_p {}, top_k "
      "{}, min_p {}, repetition_penalty {}, presence_penalty {}, frequency_penalty {}, seed {}, "
      "stop strings {}, stop ids {}, ignore_eos {}, logprobs {}, priority {}{}",
      r.request_id, r.origin.empty() ? "-" : r.origin, r.prompt.size(), r.max_tokens, s.temperature,
      s.top_p, s.top_k, s.min_p, s.repetition_penalty, s.presence_penalty, s.frequency_penalty,
      s.seed ? absl::StrCat(*s.seed) : "none", r.stop.size(), r.stop_token_ids.size(), r.ignore_eos,
      r.top_logprobs, r.priority, prompt);
}

void LogRequestFinish(const EngineRequest& r, const EngineOutput& last, double ttft_s,
                      double e2e_s) {
  spdlog::info(
      "request {} finished: {}{}, {} prompt tokens ({} cached), {} generated, TTFT {}, e2e "
      "{:.3f} s",
      r.request_id, FinishReasonName(last.finish_reason),
      last.status.ok() ? "" : absl::StrCat(" (", last.status.ToString(), ")"), last.prompt_tokens,
      last.cached_tokens, last.completion_tokens,
      ttft_s < 0 ? std::string("none") : absl::StrFormat("%.3f s", ttft_s), e2e_s);
}

// Rank 0 once the model is loaded: the engine, the gRPC server, the OpenAI HTTP API and the
// metrics endpoint, until a drain or a failed rank ends the job. Returns the exit code.
int Coordinate(MpiSession& mpi, ServeFlags& f, Rank& rank) {
  const ModelDirectory& model = rank.model;
  Executor& executor = *rank.executor;
  Frontend frontend;
  frontend.tokenizer = model.tokenizer.get();
  frontend.chat_template = model.chat_template ? &*model.chat_template : nullptr;
  frontend.default_sampling = model.default_sampling;
  EngineOptions& engine_options = f.engine;
  engine_options.enable_prefix_caching = !f.no_prefix_caching;
  if (engine_options.step_trace_path.empty()) {
    if (const char* env = std::getenv("TESSERA_STEP_TRACE")) engine_options.step_trace_path = env;
  }
  engine_options.sampleable_vocab = model.sampleable_vocab;
  engine_options.eos_token_ids = model.eos_token_ids;
  // The name clients send as `model`: --served-model-name's, else the directory's, or the
  // embedded model's.
  std::string model_name = "tessera-tiny";
  if (!f.rank.model.empty()) {
    std::string dir = model.dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    model_name = dir.substr(dir.find_last_of('/') + 1);
  }
  std::vector<std::string> served_names = f.served_model_names;
  if (served_names.empty()) served_names.push_back(model_name);
  model_name = served_names[0];
  if (f.log_requests) {
    const Tokenizer* tokenizer = model.tokenizer.get();
    const bool with_prompt = f.log_request_prompts;
    engine_options.on_request_arrival = [tokenizer, with_prompt](const EngineRequest& r) {
      LogRequestArrival(r, tokenizer, with_prompt);
    };
    engine_options.on_request_finish = LogRequestFinish;
  }
  Backend* backend = rank.backend;
  if (FaultInjected("stall-step", 0)) engine_options.fault_after_steps = FaultAfterSteps();
  if (FaultInjected("cuda-error", 0) && backend->kind() == DeviceKind::kCuda) {
    // A CUDA call that fails (a copy from an address no allocation owns), through the backend's
    // own error check, as a device fault mid-serving would.
    engine_options.fault_after_steps = FaultAfterSteps();
    engine_options.fault = [backend] {
      spdlog::error("injecting a CUDA error (TESSERA_FAULT)");
      uint32_t sink = 0;
      backend->CopyToHost(&sink, reinterpret_cast<const void*>(uintptr_t{16}), sizeof(sink));
    };
  }
  Metrics metrics;
  metrics.SetModelName(model_name);
  metrics.SetCacheConfig(rank.block_size, rank.num_kv_blocks, engine_options.enable_prefix_caching);
  Engine engine(executor, model.tokenizer.get(), &metrics, engine_options);

  ServerOptions& server_options = f.server;
  ModelDescription description{model.dir, rank.device, engine_options.max_model_len, served_names};
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server =
      CoordinatorServer::Start(server_options, engine, frontend, metrics, executor, description);
  if (!server.ok()) {
    executor.Shutdown();
    return ExitCode(mpi, server.status());
  }
  std::atomic<bool> serving{true};
  HttpOptions http_options;
  http_options.host = server_options.host;
  http_options.api_key = server_options.api_key;
  http_options.tls_cert = server_options.tls_cert;
  http_options.tls_key = server_options.tls_key;
  http_options.model_names = served_names;
  http_options.max_model_len =
      std::min<int64_t>(engine_options.max_model_len, rank.num_kv_blocks * rank.block_size);
  // A thread per connection: the streams the queue admits, plus room for idle and slow clients.
  http_options.max_threads =
      static_cast<int>(std::min<int64_t>(int64_t{engine_options.max_queue} + 512, 100000));
  std::unique_ptr<HttpServer> http, api;
  for (auto [which, port_flag] : {std::pair{&http, f.metrics_port}, std::pair{&api, f.http_port}}) {
    if (port_flag < 0) continue;
    HttpOptions o = http_options;
    o.port = port_flag;
    o.openai = which == &api;
    if (!o.openai) o.tls_cert = o.tls_key = "";  // metrics stay plain HTTP, as before
    absl::StatusOr<std::unique_ptr<HttpServer>> started =
        HttpServer::Start(o, &engine, &frontend, metrics,
                          [&serving, &server] { return serving.load() && (*server)->serving(); });
    if (!started.ok()) {
      (*server)->Shutdown(std::chrono::milliseconds(0));
      executor.Shutdown();
      return ExitCode(mpi, started.status());
    }
    *which = std::move(*started);
  }
  spdlog::info(
      "listening on {}:{} (gRPC), HTTP {}, metrics {}; model {} ({}), {}, {} KV blocks of {} per "
      "replica",
      server_options.host, (*server)->port(),
      api ? absl::StrCat(server_options.host, ":", api->port()) : "off",
      http ? absl::StrCat("http://", server_options.host, ":", http->port(), "/metrics") : "off",
      model_name, model.dir, rank.parallel.ToString(), rank.num_kv_blocks, rank.block_size);
  if (!f.port_file.empty()) {
    std::ofstream out(f.port_file + ".tmp");
    out << (*server)->port() << " " << (http ? http->port() : -1) << " " << getpid() << " "
        << (api ? api->port() : -1) << "\n";
    out.close();
    std::rename((f.port_file + ".tmp").c_str(), f.port_file.c_str());
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
  const double drain_timeout = f.drain_timeout;
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
    spdlog::warn("signal {}: draining (up to {:.0f} s)", sig, drain_timeout);
    serving = false;
    server_ptr->SetNotServing();
    engine.BeginDrain();
    const auto limit =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(drain_timeout);
    while (engine.in_flight() > 0 && std::chrono::steady_clock::now() < limit) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (engine.in_flight() > 0) {
      spdlog::warn("drain timeout: {} requests cut off", engine.in_flight());
      exit_code = 1;
    }
    // Cut off what is left; the ranks are fine, so the workers are told to shut down.
    engine.Stop(absl::UnavailableError("the server shut down before the request finished"));
    // If the step loop is stuck (a dead peer), it never returns: leave anyway.
    for (int i = 0; i < 250 && !finished; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!finished) {
      spdlog::error("the engine did not stop; exiting");
      std::fflush(stderr);
      std::_Exit(1);
    }
  });

  std::thread stats;
  if (f.log_stats_interval > 0) {
    stats = std::thread([&] { LogStats(engine, metrics, f.log_stats_interval, finished); });
  }

  engine.Run();  // on the MPI thread until Stop()
  finished = true;
  signals.join();
  if (stats.joinable()) stats.join();
  (*server)->Shutdown(std::chrono::milliseconds(1000));
  api.reset();
  http.reset();
  spdlog::info("stopped");
  return exit_code;
}

int ServeMain(MpiSession& mpi, ServeFlags& f, bool api_key_given) {
  if (absl::Status valid = Validate(f, api_key_given); !valid.ok()) return ExitCode(mpi, valid);
  absl::StatusOr<std::unique_ptr<Rank>> rank = OpenRank(mpi, f.rank);
  if (!rank.ok()) return ExitCode(mpi, rank.status());
  const int64_t context = (*rank)->model.config.max_position_embeddings;
  if (f.engine.max_model_len < 0 || f.engine.max_model_len > context) {
    return ExitCode(mpi, absl::InvalidArgumentError(absl::StrCat(
                             "--max-model-len ", f.engine.max_model_len,
                             " must be in [0, max_position_embeddings = ", context, "]")));
  }
  if (f.engine.max_model_len == 0) f.engine.max_model_len = context;
  // Every rank plans its workspace for the engine's largest step.
  auto limits_for = [&f](const ModelConfig& config, int num_kv_blocks) {
    return EngineStepLimits(f.engine, config, num_kv_blocks, f.rank.block_size);
  };
  if (absl::Status loaded = LoadRank(mpi, f.rank, limits_for, **rank); !loaded.ok()) {
    return ExitCode(mpi, loaded);
  }
  if (ServeStepsAsWorker(mpi, **rank)) return 0;
  return Coordinate(mpi, f, **rank);
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
  ServeFlags flags;
  flags.rank.command = "tessera serve";
  flags.rank.collective_timeout = 60;
  std::unique_ptr<CLI::App> app = NewCommandLine(
      "serve",
      "Serve the model over gRPC and HTTP: rank 0 coordinates, the other ranks execute its steps.");
  AddServeFlags(*app, &flags);
  if (std::optional<int> code = ParseCommandLine(*app, argc, argv, mpi.rank() == 0)) return *code;
  InitLogging(flags.rank.command, /*quiet=*/mpi.rank() != 0);
  return ServeMain(mpi, flags, app->count("--api-key") > 0);
}

}  // namespace tessera
