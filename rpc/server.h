// The coordinator's gRPC server on rank 0: tessera.v1.Generation, grpc.health.v1.Health and
// server reflection, with optional bearer-token auth and TLS.
#pragma once

#include <atomic>
#include <memory>
#include <string>

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
  int max_threads = 512;  // handler threads (each streaming call holds one)
};

struct ModelDescription {
  std::string model_path;
  std::string backend = "cpu";
  int64_t max_model_len = 0;  // the context the engine allows (--max-model-len); 0: the config's
};

class CoordinatorServer {
 public:
  // Binds and starts serving (health SERVING). Errors: bad TLS files, port in use.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      const ServerOptions& options, Engine& engine, const Frontend& frontend, Metrics& metrics,
      const Executor& executor, const ModelDescription& model);
  ~CoordinatorServer();

  int port() const { return port_; }
  // Health turns NOT_SERVING (the drain's first step, and when a rank fails).
  void SetNotServing();
  // Stops accepting calls; waits up to `grace` for handlers to finish, then cancels them.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  class Service;
  CoordinatorServer() = default;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace tessera
