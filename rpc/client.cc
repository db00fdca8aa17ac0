#include "rpc/client.h"

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>

#include "grpcpp/generic/generic_stub.h"

namespace tessera {

Client::Client(const ClientOptions& options) : options_(options) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options.tls_ca.empty()) {
    std::ifstream in(options.tls_ca);
    std::stringstream ca;
    ca << in.rdbuf();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ca.str();
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  channel_ = grpc::CreateCustomChannel(options.address, credentials, args);
  stub_ = v1::Generation::NewStub(channel_);
}

void Client::Prepare(grpc::ClientContext* context) const {
  if (!options_.api_key.empty())
    context->AddMetadata("authorization", "Bearer " + options_.api_key);
  if (options_.timeout) context->set_deadline(std::chrono::system_clock::now() + *options_.timeout);
}

grpc::Status Client::Generate(const v1::GenerateRequest& request,
                              const std::function<void(const v1::GenerateResponse&)>& on_chunk) {
  grpc::ClientContext context;
  Prepare(&context);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub_->Generate(&context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) on_chunk(response);
  return reader->Finish();
}

void Client::GenerateAsync(grpc::ClientContext* context, const v1::GenerateRequest* request,
                           grpc::ClientReadReactor<v1::GenerateResponse>* reactor) {
  Prepare(context);
  stub_->async()->Generate(context, request, reactor);
}

grpc::Status Client::Tokenize(const v1::TokenizeRequest& request, v1::TokenizeResponse* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return stub_->Tokenize(&context, request, response);
}

grpc::Status Client::GetModelInfo(v1::ModelInfo* info) {
  grpc::ClientContext context;
  Prepare(&context);
  return stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), info);
}

grpc::Status Client::Health(const std::string& service, std::string* status) {
  // grpc.health.v1.HealthCheckRequest {string service = 1;} / HealthCheckResponse {enum status =
  // 1;}: small enough to encode by hand, so the client needs no health proto of its own.
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::GenericStub generic(channel_);
  grpc::ClientContext context;
  Prepare(&context);
  grpc::Slice slice(request);
  grpc::ByteBuffer send(&slice, 1), receive;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status result;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &send, &receive,
                    [&](grpc::Status s) {
                      std::lock_guard<std::mutex> lock(mu);
                      result = std::move(s);
                      done = true;
                      cv.notify_all();
                    });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!result.ok()) return result;
  std::vector<grpc::Slice> slices;
  receive.Dump(&slices);
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  int value = 0;  // UNKNOWN when the field is absent
  if (bytes.size() >= 2 && bytes[0] == 0x08) value = static_cast<unsigned char>(bytes[1]);
  static const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  *status = value >= 0 && value <= 3 ? kNames[value] : "UNKNOWN";
  return grpc::Status::OK;
}

}  // namespace tessera
