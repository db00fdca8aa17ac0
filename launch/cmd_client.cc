// tessera client: talks to a running `tessera serve`.
//
//   tessera client [--address HOST:PORT] [--api-key K] [--tls-ca F] [--timeout S] COMMAND ...
//   generate (--prompt TEXT | --prompt-ids 1,2,3) [--max-tokens N] [sampling flags] [--json]
//   chat (--user TEXT [--system TEXT] | --request-file F.json) [--no-thinking] [--max-tokens N]
//        [sampling flags] [--json]
//   tokenize --text TEXT
//   health [--service NAME]        exit 0 when SERVING
//   info
//
// generate and chat stream text to stdout as it arrives (chat shows reasoning and tool calls on
// stderr); --json prints one object at the end instead: {"text", "reasoning", "token_ids",
// "tool_calls", "finish_reason", "usage"}. Sampling flags: --temperature --top-p --top-k --min-p
// --seed --stop (one string) --logprobs N.
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "nlohmann/json.hpp"
#include "rpc/client.h"

namespace tessera {
namespace {

using json = nlohmann::json;

const char* FinishName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_CANCELLED:
      return "cancelled";
    case v1::FINISH_REASON_ERROR:
      return "error";
    default:
      return "";
  }
}

struct ClientFlags {
  std::string command;
  ClientOptions connection;
  std::optional<double> timeout;  // seconds
  // generate / chat
  std::string prompt, system, request_file, request_id, stop;
  std::optional<std::string> user;
  std::vector<int64_t> prompt_ids;
  int64_t max_tokens = 64;
  std::optional<double> temperature, top_p, min_p;
  std::optional<int64_t> top_k;
  std::optional<uint64_t> seed;
  std::optional<uint64_t> logprobs;
  bool json = false, no_thinking = false, ignore_eos = false;
  // tokenize, health
  std::optional<std::string> text;
  std::string service;
};

void AddClientFlags(CLI::App& app, ClientFlags* f) {
  app.add_option("command", f->command, "generate, chat, tokenize, health or info")
      ->required()
      ->check(CLI::IsMember({"generate", "chat", "tokenize", "health", "info"}));
  app.add_option("--address", f->connection.address, "the server, HOST:PORT");
  app.add_option("--api-key", f->connection.api_key, "bearer token the server asks for")
      ->type_name("KEY");
  app.add_option("--tls-ca", f->connection.tls_ca, "CA certificate (PEM): talk TLS")
      ->type_name("FILE");
  app.add_option("--timeout", f->timeout, "deadline of each call in seconds (default: none)");
  app.add_option("--prompt", f->prompt, "generate: prompt text");
  AddIntListFlag(app, "--prompt-ids", &f->prompt_ids, "generate: prompt token ids, e.g. 1,2,3");
  app.add_option("--user", f->user, "chat: the user message");
  app.add_option("--system", f->system, "chat: a system message");
  app.add_option("--request-file", f->request_file,
                 "chat: {\"messages\": [...], \"tools\": [...], \"enable_thinking\": ...}")
      ->type_name("FILE");
  app.add_flag("--no-thinking", f->no_thinking, "chat: enable_thinking false");
  app.add_option("--max-tokens", f->max_tokens, "tokens to generate");
  app.add_option("--temperature", f->temperature, "sampling temperature (default: the server's)");
  app.add_option("--top-p", f->top_p, "nucleus sampling (default: the server's)");
  app.add_option("--top-k", f->top_k, "top-k sampling (default: the server's)");
  app.add_option("--min-p", f->min_p, "min-p sampling (default: the server's)");
  app.add_option("--seed", f->seed, "sampling seed");
  app.add_option("--stop", f->stop, "a stop string");
  app.add_option("--logprobs", f->logprobs, "top log-probabilities per token");
  app.add_option("--request-id", f->request_id, "the request's id");
  app.add_flag("--ignore-eos", f->ignore_eos, "generate past end-of-sequence tokens");
  app.add_flag("--json", f->json, "print one JSON object at the end instead of streaming text");
  app.add_option("--text", f->text, "tokenize: the text");
  app.add_option("--service", f->service, "health: the service to ask about (\"\": the server)");
}

absl::Status FillSampling(const ClientFlags& f, v1::GenerateRequest* request) {
  if (f.max_tokens < 0) return absl::InvalidArgumentError("--max-tokens must be >= 0");
  request->set_max_tokens(static_cast<uint64_t>(f.max_tokens));
  v1::SamplingParams* s = request->mutable_sampling();
  if (f.temperature) s->set_temperature(static_cast<float>(*f.temperature));
  if (f.top_p) s->set_top_p(static_cast<float>(*f.top_p));
  if (f.min_p) s->set_min_p(static_cast<float>(*f.min_p));
  if (f.top_k) s->set_top_k(*f.top_k);
  if (f.seed) s->set_seed(*f.seed);
  if (!f.stop.empty()) request->add_stop(f.stop);
  if (f.logprobs) request->set_logprobs(*f.logprobs);
  if (!f.request_id.empty()) request->set_request_id(f.request_id);
  if (f.ignore_eos) request->set_ignore_eos(true);
  return absl::OkStatus();
}

int Stream(Client& client, const v1::GenerateRequest& request, bool as_json) {
  json result = {
      {"text", ""}, {"reasoning", ""}, {"token_ids", json::array()}, {"tool_calls", json::array()}};
  bool in_reasoning = false;
  grpc::Status status = client.Generate(request, [&](const v1::GenerateResponse& r) {
    for (int32_t id : r.token_ids()) result["token_ids"].push_back(id);
    result["text"] = result["text"].get<std::string>() + r.text();
    result["reasoning"] = result["reasoning"].get<std::string>() + r.reasoning_text();
    for (const auto& call : r.tool_calls()) {
      result["tool_calls"].push_back({{"name", call.name()}, {"arguments", call.arguments()}});
      if (!as_json)
        std::fprintf(stderr, "\n[tool call] %s %s\n", call.name().c_str(),
                     call.arguments().c_str());
    }
    if (!as_json) {
      if (!r.reasoning_text().empty()) {
        if (!in_reasoning) std::fprintf(stderr, "[thinking] ");
        in_reasoning = true;
        std::fprintf(stderr, "%s", r.reasoning_text().c_str());
      }
      if (!r.text().empty()) {
        if (in_reasoning) std::fprintf(stderr, "\n[/thinking]\n");
        in_reasoning = false;
        std::fwrite(r.text().data(), 1, r.text().size(), stdout);
        std::fflush(stdout);
      }
    }
    if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      result["finish_reason"] = FinishName(r.finish_reason());
      result["usage"] = {{"prompt_tokens", r.usage().prompt_tokens()},
                         {"completion_tokens", r.usage().completion_tokens()},
                         {"cached_tokens", r.usage().cached_tokens()}};
    }
  });
  if (as_json) {
    if (status.ok())
      std::printf("%s\n", result.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  } else {
    std::printf("\n");
    if (result.contains("finish_reason")) {
      std::fprintf(stderr, "[finish: %s, %s prompt + %s completion tokens]\n",
                   result["finish_reason"].get<std::string>().c_str(),
                   result["usage"]["prompt_tokens"].dump().c_str(),
                   result["usage"]["completion_tokens"].dump().c_str());
    }
  }
  if (!status.ok()) {
    std::fprintf(
        stderr, "tessera client: %s: %s\n",
        absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())).c_str(),
        status.error_message().c_str());
    return 1;
  }
  return 0;
}

absl::StatusOr<int> ClientMain(const ClientFlags& f) {
  const std::string& command = f.command;
  ClientOptions options = f.connection;
  if (f.timeout) {
    options.timeout = std::chrono::milliseconds(static_cast<int64_t>(*f.timeout * 1000));
  }
  Client client(options);
  const bool as_json = f.json;

  if (command == "generate") {
    v1::GenerateRequest request;
    if (!f.prompt.empty()) request.set_prompt(f.prompt);
    for (int64_t id : f.prompt_ids) request.add_prompt_token_ids(id);
    RETURN_IF_ERROR(FillSampling(f, &request));
    return Stream(client, request, as_json);
  }
  if (command == "chat") {
    v1::GenerateRequest request;
    if (!f.request_file.empty()) {
      const std::string* file = &f.request_file;
      std::ifstream in(*file);
      if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", *file));
      json j = json::parse(in, nullptr, false);
      if (!j.is_object() || !j.contains("messages") || !j["messages"].is_array()) {
        return absl::InvalidArgumentError(
            absl::StrCat(*file, ": expected {\"messages\": [...], ...}"));
      }
      for (const auto& m : j["messages"]) {
        v1::ChatMessage* msg = request.add_messages();
        msg->set_role(m.value("role", ""));
        if (m.contains("content") && m["content"].is_string())
          msg->set_content(m["content"].get<std::string>());
        if (m.contains("reasoning_content") && m["reasoning_content"].is_string()) {
          msg->set_reasoning_content(m["reasoning_content"].get<std::string>());
        }
        if (m.contains("tool_call_id") && m["tool_call_id"].is_string())
          msg->set_tool_call_id(m["tool_call_id"].get<std::string>());
        if (m.contains("tool_calls") && m["tool_calls"].is_array()) {
          for (const auto& c : m["tool_calls"]) {
            const json& f = c.contains("function") ? c["function"] : c;
            v1::ToolCall* call = msg->add_tool_calls();
            call->set_name(f.value("name", ""));
            const json& args = f.contains("arguments") ? f["arguments"] : json::object();
            call->set_arguments(args.is_string() ? args.get<std::string>() : args.dump());
          }
        }
      }
      if (j.contains("tools") && j["tools"].is_array()) request.set_tools_json(j["tools"].dump());
      if (j.contains("enable_thinking") && j["enable_thinking"].is_boolean()) {
        request.set_enable_thinking(j["enable_thinking"].get<bool>());
      }
    } else {
      if (!f.system.empty()) {
        v1::ChatMessage* m = request.add_messages();
        m->set_role("system");
        m->set_content(f.system);
      }
      if (!f.user) return absl::InvalidArgumentError("--user is required");
      v1::ChatMessage* m = request.add_messages();
      m->set_role("user");
      m->set_content(*f.user);
    }
    if (f.no_thinking) request.set_enable_thinking(false);
    RETURN_IF_ERROR(FillSampling(f, &request));
    return Stream(client, request, as_json);
  }
  if (command == "tokenize") {
    v1::TokenizeRequest request;
    if (!f.text) return absl::InvalidArgumentError("--text is required");
    request.set_text(*f.text);
    v1::TokenizeResponse response;
    grpc::Status status = client.Tokenize(request, &response);
    if (!status.ok())
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          status.error_message());
    json ids = json::array();
    for (int32_t id : response.token_ids()) ids.push_back(id);
    std::printf("%s\n", json{{"ids", ids}}.dump().c_str());
    return 0;
  }
  if (command == "health") {
    std::string state;
    grpc::Status status = client.Health(f.service, &state);
    if (!status.ok())
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          status.error_message());
    std::printf("%s\n", state.c_str());
    return state == "SERVING" ? 0 : 1;
  }
  if (command == "info") {
    v1::ModelInfo info;
    grpc::Status status = client.GetModelInfo(&info);
    if (!status.ok())
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          status.error_message());
    std::printf("%s\n", info.DebugString().c_str());
    return 0;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown client command '", command, "'"));
}

}  // namespace

int ClientCommand(int argc, char** argv) {
  ClientFlags flags;
  std::unique_ptr<CLI::App> app =
      NewCommandLine("client",
                     "Talk to a running `tessera serve`: COMMAND is generate, chat, "
                     "tokenize, health or info.");
  AddClientFlags(*app, &flags);
  if (std::optional<int> code = ParseCommandLine(*app, argc, argv)) return *code;
  absl::StatusOr<int> result = ClientMain(flags);
  if (!result.ok()) {
    std::fprintf(stderr, "tessera client: %s\n", std::string(result.status().message()).c_str());
    return result.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return *result;
}

}  // namespace tessera
