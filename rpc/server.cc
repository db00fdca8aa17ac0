#include "rpc/server.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "tessera/v1/generation.grpc.pb.h"

namespace tessera {
namespace {

constexpr auto kPoll = std::chrono::milliseconds(20);
constexpr char kServiceName[] = "tessera.v1.Generation";

std::string ReadFile(const std::string& path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  *ok = static_cast<bool>(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

class CoordinatorServer::Service final : public v1::Generation::Service {
 public:
  Service(Engine& engine, const Frontend& frontend, Metrics& metrics, const Executor& executor,
          const ModelDescription& model, std::string api_key)
      : engine_(engine),
        frontend_(frontend),
        metrics_(metrics),
        executor_(executor),
        model_(model),
        api_key_(std::move(api_key)) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    if (grpc::Status auth = Authenticate(*context); !auth.ok()) return Fail(auth);
    const std::string id = request->request_id().empty()
                               ? absl::StrCat("req-", next_id_.fetch_add(1))
                               : request->request_id();
    absl::StatusOr<EngineRequest> converted = ToEngineRequest(*request, frontend_, id);
    if (!converted.ok()) return Fail(ToGrpcStatus(converted.status()));
    if (context->deadline() != std::chrono::system_clock::time_point::max()) {
      converted->deadline = std::chrono::steady_clock::now() +
                            (context->deadline() - std::chrono::system_clock::now());
    }
    absl::StatusOr<std::shared_ptr<RequestStream>> stream = engine_.Submit(*std::move(converted));
    if (!stream.ok()) return Fail(ToGrpcStatus(stream.status()));

    // Relay outputs until the last one. A client that cancels or disconnects (or whose deadline
    // passes) has its request cancelled: the engine frees its KV blocks within one step.
    bool cancelled = false;
    for (;;) {
      EngineOutput out;
      if (!(*stream)->Next(&out, kPoll)) {
        if (!cancelled && context->IsCancelled()) {
          engine_.Cancel(id);
          cancelled = true;
        }
        continue;
      }
      if (!out.finished || out.status.ok() || out.finish_reason == FinishReason::kCancelled) {
        if (!cancelled && !writer->Write(ToResponse(out, id))) {
          engine_.Cancel(id);  // the client went away
          cancelled = true;
        }
      }
      if (!out.finished) continue;
      if (out.finish_reason == FinishReason::kError) return Fail(ToGrpcStatus(out.status));
      if (out.finish_reason == FinishReason::kCancelled || cancelled) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
      }
      return grpc::Status::OK;
    }
  }

  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override {
    if (grpc::Status auth = Authenticate(*context); !auth.ok()) return Fail(auth);
    if (frontend_.tokenizer == nullptr) {
      return Fail(
          grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this model has no tokenizer"));
    }
    std::string text = request->text();
    if (absl::Status s = CheckUtf8("text", text); !s.ok()) return Fail(ToGrpcStatus(s));
    if (request->messages_size() > 0) {
      if (frontend_.chat_template == nullptr) {
        return Fail(
            grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this model has no chat template"));
      }
      std::optional<bool> thinking;
      if (request->has_enable_thinking()) thinking = request->enable_thinking();
      absl::StatusOr<ChatRequest> chat = ToChatRequest(
          request->messages(), request->tools_json(), thinking,
          request->has_add_generation_prompt() ? request->add_generation_prompt() : true);
      if (!chat.ok()) return Fail(ToGrpcStatus(chat.status()));
      absl::StatusOr<std::string> rendered = frontend_.chat_template->Render(*chat);
      if (!rendered.ok()) return Fail(ToGrpcStatus(rendered.status()));
      text = *rendered;
      response->set_rendered(text);
    }
    absl::StatusOr<std::vector<int32_t>> ids = frontend_.tokenizer->Encode(text);
    if (!ids.ok()) return Fail(ToGrpcStatus(ids.status()));
    for (int32_t id : *ids) response->add_token_ids(id);
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
    return grpc::Status::OK;
  }

 private:
  grpc::Status Authenticate(const grpc::ServerContext& context) const {
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

  Engine& engine_;
  const Frontend& frontend_;
  Metrics& metrics_;
  const Executor& executor_;
  ModelDescription model_;
  std::string api_key_;
  std::atomic<uint64_t> next_id_{1};
};

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
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, " (in use?)"));
  }
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceName, true);
  return server;
}

CoordinatorServer::~CoordinatorServer() {
  if (server_) Shutdown(std::chrono::milliseconds(0));
}

void CoordinatorServer::SetNotServing() {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  health->SetServingStatus("", false);
  health->SetServingStatus(kServiceName, false);
}

void CoordinatorServer::Shutdown(std::chrono::milliseconds grace) {
  if (!server_) return;
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
  server_.reset();
}

}  // namespace tessera
