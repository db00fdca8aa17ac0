// The tessera.v1 client library: a channel to the coordinator with the API key attached.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "grpcpp/grpcpp.h"
#include "tessera/v1/generation.grpc.pb.h"

namespace tessera {

struct ClientOptions {
  std::string address = "localhost:50051";
  std::string api_key;
  std::string tls_ca;                                // PEM file: use TLS and trust this CA
  std::optional<std::chrono::milliseconds> timeout;  // per call
};

class Client {
 public:
  explicit Client(const ClientOptions& options);

  // Streams one request; `on_chunk` sees every response. Returns the call's final status.
  grpc::Status Generate(const v1::GenerateRequest& request,
                        const std::function<void(const v1::GenerateResponse&)>& on_chunk);
  // Starts one streamed call on gRPC's callback API: `reactor` gets the chunks and the final
  // status; the caller then calls reactor->StartRead / StartCall, and keeps `context`, `request`
  // and `reactor` alive until the reactor's OnDone.
  void GenerateAsync(grpc::ClientContext* context, const v1::GenerateRequest* request,
                     grpc::ClientReadReactor<v1::GenerateResponse>* reactor);
  grpc::Status Tokenize(const v1::TokenizeRequest& request, v1::TokenizeResponse* response);
  grpc::Status GetModelInfo(v1::ModelInfo* info);
  // grpc.health.v1 Check for `service` ("" = the whole server): SERVING, NOT_SERVING, ...
  grpc::Status Health(const std::string& service, std::string* status);

 private:
  void Prepare(grpc::ClientContext* context) const;
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

}  // namespace tessera
