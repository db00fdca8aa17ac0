#include "rpc/server.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <deque>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "tessera/v1/generation.grpc.pb.h"

namespace tessera {
namespace {

constexpr char kServiceName[] = "tessera.v1.Generation";

std::string ReadFile(const std::string& path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  *ok = static_cast<bool>(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

// Generate on the callback API: the server's callback threads call its reactions, the engine's
// thread calls Pump through the stream's listener. At most one write is in flight; outputs that
// arrive meanwhile wait in the RequestStream (bounded: Engine ends a request whose reader falls
// too far behind).
class CoordinatorServer::GenerateReactor final
    : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateReactor(Service& service, grpc::CallbackServerContext* context,
                  const v1::GenerateRequest& request);
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // Writes the next output if no write is in flight, or finishes the call after the last one.
  void Pump();
  // Ends the call once (guarded by mu_'s caller).
  void FinishLocked(grpc::Status status, std::unique_lock<std::mutex>& lock);

  friend class Service;

  // What the stream's listener holds: it may outlive the reactor (the engine keeps the stream
  // until the request ends), so OnDone clears `reactor` under `mu` before the reactor goes away.
  struct Relay {
    std::mutex mu;
    GenerateReactor* reactor = nullptr;
  };

  Service& service_;
  std::string id_;
  std::shared_ptr<RequestStream> stream_;
  std::shared_ptr<Relay> relay_ = std::make_shared<Relay>();
  std::mutex mu_;
  bool writing_ = false;
  bool finishing_ = false;
  bool cancelled_ = false;                   // by the client, a failed write or the transport
  std::optional<grpc::Status> after_write_;  // the status to finish with once the write is done
  v1::GenerateResponse response_;            // the write in flight
};

class CoordinatorServer::Service final
    : public v1::Generation::WithCallbackMethod_Generate<v1::Generation::Service> {
 public:
  Service(Engine& engine, const Frontend& frontend, Metrics& metrics, const Executor& executor,
          const ModelDescription& model, std::string api_key)
      : engine_(engine),
        frontend_(frontend),
        metrics_(metrics),
        executor_(executor),
        model_(model),
        api_key_(std::move(api_key)) {}

  ~Service() {
    {
      std::lock_guard<std::mutex> lock(finish_mu_);
      finish_stop_ = true;
      finish_cv_.notify_all();
    }
    finisher_.join();
  }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override {
    return new GenerateReactor(*this, context, *request);
  }

  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override {
    if (grpc::Status auth = Authenticate(*context); !auth.ok()) return Fail(auth);
    absl::StatusOr<v1::TokenizeResponse> tokenized = ToTokenizeResponse(*request, frontend_);
    if (!tokenized.ok()) return Fail(ToGrpcStatus(tokenized.status()));
    *response = *std::move(tokenized);
    return grpc::Status::OK;
  }

  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest*,
                            v1::ModelInfo* info) override {
    if (grpc::Status auth = Authenticate(*context); !auth.ok()) return Fail(auth);
    const ModelConfig& c = executor_.config();
    const ParallelConfig& p = executor_.parallel();
    info->set_model_path(model_.model_path);
    info->set_model_type(c.model_type);
    info->set_vocab_size(static_cast<uint32_t>(c.vocab_size));
    info->set_max_model_len(static_cast<uint32_t>(
        model_.max_model_len > 0 ? model_.max_model_len : c.max_position_embeddings));
    info->set_num_layers(static_cast<uint32_t>(c.num_hidden_layers));
    info->set_hidden_size(static_cast<uint32_t>(c.hidden_size));
    info->set_num_experts(static_cast<uint32_t>(c.num_experts));
    info->set_world_size(p.world_size);
    info->set_tp(p.tp);
    info->set_pp(p.pp);
    info->set_ep(p.ep);
    info->set_dp(p.dp);
    info->set_kv_block_size(executor_.block_size());
    info->set_kv_blocks_per_replica(executor_.num_kv_blocks());
    info->set_backend(model_.backend);
    for (const std::string& name : model_.served_model_names) info->add_served_model_names(name);
    return grpc::Status::OK;
  }

 private:
  friend class GenerateReactor;

  grpc::Status Authenticate(const grpc::ServerContextBase& context) const {
    if (api_key_.empty()) return grpc::Status::OK;
    const auto& md = context.client_metadata();
    auto it = md.find("authorization");
    if (it != md.end() &&
        std::string(it->second.data(), it->second.size()) == "Bearer " + api_key_) {
      return grpc::Status::OK;
    }
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing or wrong API key: send metadata 'authorization: Bearer <key>'");
  }

  grpc::Status Fail(grpc::Status status) {
    metrics_.AddError(absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())));
    return status;
  }

  // Finishes a cancelled call off gRPC's callback thread (see OnCancel).
  void FinishLater(GenerateReactor* reactor) {
    std::lock_guard<std::mutex> lock(finish_mu_);
    to_finish_.push_back(reactor);
    finish_cv_.notify_one();
  }

  // Runs until the Service is destroyed, which is after the grpc::Server has shut down: every
  // call the server's shutdown cancelled has been finished by then.
  void FinishCancelled() {
    // NOTE: background work: at the lowest priority (Linux: a thread's own nice value), so that
    // a burst of cancels reaches the engine, and the engine steps, before their calls end.
    setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19);
    std::unique_lock<std::mutex> lock(finish_mu_);
    for (;;) {
      finish_cv_.wait(lock, [this] { return finish_stop_ || !to_finish_.empty(); });
      if (to_finish_.empty()) return;
      std::deque<GenerateReactor*> batch;
      batch.swap(to_finish_);
      lock.unlock();
      for (GenerateReactor* r : batch)
        r->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
      lock.lock();
    }
  }

  Engine& engine_;
  const Frontend& frontend_;
  Metrics& metrics_;
  const Executor& executor_;
  ModelDescription model_;
  std::string api_key_;
  std::atomic<uint64_t> next_id_{1};
  std::mutex finish_mu_;
  std::condition_variable finish_cv_;
  std::deque<GenerateReactor*> to_finish_;  // cancelled, idle calls: Finish() not yet called
  bool finish_stop_ = false;
  std::thread finisher_{[this] { FinishCancelled(); }};
};

CoordinatorServer::GenerateReactor::GenerateReactor(Service& service,
                                                    grpc::CallbackServerContext* context,
                                                    const v1::GenerateRequest& request)
    : service_(service) {
  std::unique_lock<std::mutex> lock(mu_);
  if (grpc::Status auth = service_.Authenticate(*context); !auth.ok()) {
    FinishLocked(service_.Fail(auth), lock);
    return;
  }
  id_ = request.request_id().empty() ? absl::StrCat("req-", service_.next_id_.fetch_add(1))
                                     : request.request_id();
  absl::StatusOr<EngineRequest> converted = ToEngineRequest(request, service_.frontend_, id_);
  if (!converted.ok()) {
    FinishLocked(service_.Fail(ToGrpcStatus(converted.status())), lock);
    return;
  }
  if (context->deadline() != std::chrono::system_clock::time_point::max()) {
    converted->deadline =
        std::chrono::steady_clock::now() + (context->deadline() - std::chrono::system_clock::now());
  }
  absl::StatusOr<std::shared_ptr<RequestStream>> stream =
      service_.engine_.Submit(*std::move(converted));
  if (!stream.ok()) {
    FinishLocked(service_.Fail(ToGrpcStatus(stream.status())), lock);
    return;
  }
  stream_ = *std::move(stream);
  lock.unlock();
  relay_->reactor = this;
  stream_->SetListener([relay = relay_] {
    std::lock_guard<std::mutex> guard(relay->mu);
    if (relay->reactor != nullptr) relay->reactor->Pump();
  });
}

void CoordinatorServer::GenerateReactor::Pump() {
  std::unique_lock<std::mutex> lock(mu_);
  if (writing_ || finishing_) return;
  EngineOutput out;
  if (!stream_->TryNext(&out)) return;
  // A client that cancelled or went away gets no more writes; its request ends cancelled.
  if (cancelled_) {
    if (out.finished) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"), lock);
    return;
  }
  std::optional<grpc::Status> final_status;
  if (out.finished) {
    // Errors the engine ended the request with are counted by the engine (request_errors_total).
    if (out.finish_reason == FinishReason::kError) {
      FinishLocked(ToGrpcStatus(out.status), lock);
      return;
    }
    final_status = out.finish_reason == FinishReason::kCancelled
                       ? grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client")
                       : grpc::Status::OK;
  }
  response_ = ToResponse(out, id_);
  writing_ = true;
  after_write_ = final_status;
  lock.unlock();
  StartWrite(&response_);
}

void CoordinatorServer::GenerateReactor::OnWriteDone(bool ok) {
  std::unique_lock<std::mutex> lock(mu_);
  writing_ = false;
  if (!ok && !cancelled_) {
    cancelled_ = true;  // the client went away
    lock.unlock();
    service_.engine_.Cancel(id_);
    lock.lock();
  }
  if (after_write_ || cancelled_) {
    FinishLocked(
        cancelled_ ? grpc::Status(grpc::StatusCode::CANCELLED, "cancelled") : *after_write_, lock);
    return;
  }
  lock.unlock();
  Pump();  // outputs that arrived during the write
}

// NOTE: gRPC calls OnCancel for one call after another, and a Finish() costs ~0.1 ms of that
// thread on a cancelled call: 5,000 cancels finished here would reach the engine over ~0.7 s.
// OnCancel therefore only tells the engine (a set insert) and leaves Finish() to the service's
// finisher thread, so the engine frees every cancelled request at its next step.
void CoordinatorServer::GenerateReactor::OnCancel() {
  std::unique_lock<std::mutex> lock(mu_);
  if (cancelled_ || !stream_) return;
  cancelled_ = true;
  const bool idle = !writing_ && !finishing_;
  if (idle) finishing_ = true;  // a write in flight finishes the call in OnWriteDone instead
  lock.unlock();
  // The engine ends the request and frees its KV blocks within one step.
  service_.engine_.Cancel(id_);
  if (idle) service_.FinishLater(this);
}

void CoordinatorServer::GenerateReactor::FinishLocked(grpc::Status status,
                                                      std::unique_lock<std::mutex>& lock) {
  if (finishing_ || writing_) return;
  finishing_ = true;
  lock.unlock();
  Finish(std::move(status));
}

void CoordinatorServer::GenerateReactor::OnDone() {
  {
    std::lock_guard<std::mutex> guard(relay_->mu);  // waits out a Pump from the engine's thread
    relay_->reactor = nullptr;
  }
  delete this;
}

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    const ServerOptions& options, Engine& engine, const Frontend& frontend, Metrics& metrics,
    const Executor& executor, const ModelDescription& model) {
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_cert.empty() || !options.tls_key.empty()) {
    if (options.tls_cert.empty() || options.tls_key.empty()) {
      return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
    }
    bool ok_cert, ok_key;
    grpc::SslServerCredentialsOptions ssl;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    pair.cert_chain = ReadFile(options.tls_cert, &ok_cert);
    pair.private_key = ReadFile(options.tls_key, &ok_key);
    if (!ok_cert)
      return absl::NotFoundError(absl::StrCat("cannot read --tls-cert ", options.tls_cert));
    if (!ok_key)
      return absl::NotFoundError(absl::StrCat("cannot read --tls-key ", options.tls_key));
    ssl.pem_key_cert_pairs.push_back(std::move(pair));
    credentials = grpc::SslServerCredentials(ssl);
  }
  std::unique_ptr<CoordinatorServer> server(new CoordinatorServer());
  server->service_ =
      std::make_unique<Service>(engine, frontend, metrics, executor, model, options.api_key);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(address, credentials, &server->port_);
  builder.RegisterService(server->service_.get());
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  grpc::ResourceQuota quota("tessera");
  quota.SetMaxThreads(options.max_threads);
  builder.SetResourceQuota(quota);
  // Keepalive: a frozen client (one that answers no ping) loses its connection and calls.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             static_cast<int>(options.keepalive_time_s * 1000));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             static_cast<int>(options.keepalive_timeout_s * 1000));
  // Pings go on while a stream sends no data (a client whose flow-control window is full).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, " (in use?)"));
  }
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceName, true);
  if (options.engine_stall_timeout_s > 0) {
    CoordinatorServer* self = server.get();
    const double stall = options.engine_stall_timeout_s;
    server->monitor_ = std::thread([self, &engine, stall] { self->MonitorHealth(engine, stall); });
  }
  return server;
}

void CoordinatorServer::MonitorHealth(const Engine& engine, double stall_timeout_s) {
  bool stalled = false;
  std::unique_lock<std::mutex> lock(monitor_mu_);
  while (!stopping_) {
    monitor_cv_.wait_for(lock, std::chrono::milliseconds(100));
    if (stopping_ || not_serving_) continue;
    const double since = std::chrono::duration<double>(engine.SinceProgress()).count();
    if ((since > stall_timeout_s) == stalled) continue;
    stalled = !stalled;
    std::fprintf(stderr,
                 stalled ? "tessera serve: the engine made no progress for %.1f s: NOT_SERVING\n"
                         : "tessera serve: the engine made progress again (%.1f s): SERVING\n",
                 since);
    SetHealth(!stalled);
  }
}

void CoordinatorServer::SetHealth(bool serving) {
  serving_ = serving;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  health->SetServingStatus("", serving);
  health->SetServingStatus(kServiceName, serving);
}

CoordinatorServer::~CoordinatorServer() {
  if (server_) Shutdown(std::chrono::milliseconds(0));
}

void CoordinatorServer::SetNotServing() {
  std::lock_guard<std::mutex> lock(monitor_mu_);
  not_serving_ = true;
  SetHealth(false);
}

void CoordinatorServer::Shutdown(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lock(monitor_mu_);
    stopping_ = true;
    monitor_cv_.notify_all();
  }
  if (monitor_.joinable()) monitor_.join();
  if (!server_) return;
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
  server_.reset();
}

}  // namespace tessera
