// A minimal HTTP/1.1 endpoint for operations: GET /metrics (Prometheus text) and GET /health
// (200 while serving, 503 otherwise). One thread, one connection at a time, bounded reads:
// scrapers and probes, not user traffic.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace tessera {

class HttpEndpoint {
 public:
  // `metrics` renders the /metrics body; `healthy` answers /health.
  static absl::StatusOr<std::unique_ptr<HttpEndpoint>> Start(const std::string& host, int port,
                                                             std::function<std::string()> metrics,
                                                             std::function<bool()> healthy);
  ~HttpEndpoint();
  int port() const { return port_; }

 private:
  HttpEndpoint() = default;
  void Serve();
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::function<std::string()> metrics_;
  std::function<bool()> healthy_;
  std::thread thread_;
};

}  // namespace tessera
