// The coordinator's gRPC server on rank 0: tessera.v1.Generation, grpc.health.v1.Health and
// server reflection, with optional bearer-token auth and TLS.
//
// Generate is served with gRPC's callback API: a queued or running stream costs a reactor and its
// RequestStream, no thread; the engine's listener wakes the reactor when an output arrives.
// Tokenize and GetModelInfo stay synchronous (a small thread pool). Health is a check, not a
// flag: a monitor turns it NOT_SERVING while the engine makes no progress (Engine::SinceProgress)
// for longer than `engine_stall_timeout`, and back when it resumes, unless SetNotServing() made
// it final. HTTP/2 keepalive pings find frozen clients: their calls are cancelled, which frees
// their KV blocks.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "rpc/convert.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/metrics.h"

namespace tessera {

struct ServerOptions {
  std::string host = "0.0.0.0";
  int port = 50051;
  std::string api_key;   // non-empty: every Generation call needs "authorization: Bearer <key>"
  std::string tls_cert;  // PEM files; both or neither
  std::string tls_key;
  int max_message_bytes = 64 << 20;
  int max_threads = 64;  // handler threads for the synchronous methods (not Generate)
  // Health turns NOT_SERVING after this long without engine progress; <= 0: never.
  double engine_stall_timeout_s = 30;
  // A client that answers no HTTP/2 ping within `keepalive_timeout_s` of one sent after
  // `keepalive_time_s` of a connection's life is dropped and its calls cancelled.
  double keepalive_time_s = 30;
  double keepalive_timeout_s = 20;
};

struct ModelDescription {
  std::string model_path;
  std::string backend = "cpu";
  int64_t max_model_len = 0;  // the context the engine allows (--max-model-len); 0: the config's
  std::vector<std::string> served_model_names;  // --served-model-name; the first is reported
};

class CoordinatorServer {
 public:
  // Binds and starts serving (health SERVING). Errors: bad TLS files, port in use.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      const ServerOptions& options, Engine& engine, const Frontend& frontend, Metrics& metrics,
      const Executor& executor, const ModelDescription& model);
  ~CoordinatorServer();

  int port() const { return port_; }
  // Health turns NOT_SERVING for good (the drain's first step, and when a rank fails).
  void SetNotServing();
  // What health answers now (for the HTTP /health endpoint).
  bool serving() const { return serving_; }
  // Stops accepting calls; waits up to `grace` for handlers to finish, then cancels them.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  class Service;
  class GenerateReactor;
  CoordinatorServer() = default;
  void MonitorHealth(const Engine& engine, double stall_timeout_s);
  void SetHealth(bool serving);

  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::atomic<bool> serving_{true};
  std::mutex monitor_mu_;
  std::condition_variable monitor_cv_;
  bool not_serving_ = false;  // final (SetNotServing)
  bool stopping_ = false;
  std::thread monitor_;
};

}  // namespace tessera
