// The serving process's HTTP front end (cpp-httplib): OpenAI's API next to gRPC on rank 0, over
// the same Engine, plus the operations endpoints.
//
//   POST /v1/chat/completions, POST /v1/completions   (SSE when "stream": true)
//   GET  /v1/models
//   GET  /health    200 while serving, 503 when draining or a rank failed (no API key needed)
//   GET  /metrics   Prometheus text (no API key needed)
//
// The same class with `openai` off is the separate --metrics-port listener (/health, /metrics).
// Connections get a thread each from a pool that grows on demand up to `max_threads`, with bounded
// read/write/keep-alive timeouts, so slow or idle clients never hold up probes and scrapes.
// A client that disconnects has its requests cancelled (their KV blocks are freed within a step).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rpc/convert.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/metrics.h"

namespace tessera {

struct HttpOptions {
  std::string host = "0.0.0.0";
  int port = 8000;       // 0: a free port
  bool openai = true;    // false: /health and /metrics only
  std::string api_key;   // non-empty: /v1/* needs "Authorization: Bearer <key>"
  std::string tls_cert;  // PEM files; both or neither (HTTPS)
  std::string tls_key;
  // The names requests may give as `model` (else 404); /v1/models lists them, responses report
  // the first.
  std::vector<std::string> model_names = {"tessera-tiny"};
  int64_t max_model_len = 0;  // chat's default max_tokens fills the context
  int max_threads = 1024;     // connection threads (each live stream holds one)
  int read_timeout_s = 5;     // per read, also for the request's headers and body
  int write_timeout_s = 5;
  int keep_alive_timeout_s = 5;
  int keep_alive_max_count = 100;
  size_t max_body_bytes = 64 << 20;
};

class HttpServer {
 public:
  // Binds and starts serving. `engine` and `frontend` may be null when `openai` is off.
  // `healthy` answers /health. Errors: bad TLS files, port in use.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpOptions& options,
                                                           Engine* engine, const Frontend* frontend,
                                                           Metrics& metrics,
                                                           std::function<bool()> healthy);
  ~HttpServer();  // Stop()

  int port() const { return port_; }
  // Stops accepting; open streams end (their requests are cancelled).
  void Stop();

 private:
  class Impl;
  HttpServer() = default;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace tessera
