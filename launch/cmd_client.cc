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
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "launch/commands.h"
#include "launch/flags.h"
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

absl::Status FillSampling(const Flags& flags, v1::GenerateRequest* request) {
  ASSIGN_OR_RETURN(int64_t max_tokens, flags.GetInt("max-tokens", 64));
  if (max_tokens < 0) return absl::InvalidArgumentError("--max-tokens must be >= 0");
  request->set_max_tokens(static_cast<uint64_t>(max_tokens));
  v1::SamplingParams* s = request->mutable_sampling();
  if (flags.Has("temperature")) {
    ASSIGN_OR_RETURN(double v, flags.GetDouble("temperature", 0));
    s->set_temperature(static_cast<float>(v));
  }
  if (flags.Has("top-p")) {
    ASSIGN_OR_RETURN(double v, flags.GetDouble("top-p", 1));
    s->set_top_p(static_cast<float>(v));
  }
  if (flags.Has("min-p")) {
    ASSIGN_OR_RETURN(double v, flags.GetDouble("min-p", 0));
    s->set_min_p(static_cast<float>(v));
  }
  if (flags.Has("top-k")) {
    ASSIGN_OR_RETURN(int64_t v, flags.GetInt("top-k", 0));
    s->set_top_k(v);
  }
  if (flags.Has("seed")) {
    ASSIGN_OR_RETURN(int64_t v, flags.GetInt("seed", 0));
    s->set_seed(static_cast<uint64_t>(v));
  }
  if (auto stop = flags.GetString("stop")) request->add_stop(*stop);
  if (flags.Has("logprobs")) {
    ASSIGN_OR_RETURN(int64_t v, flags.GetInt("logprobs", 0));
    request->set_logprobs(static_cast<uint64_t>(v));
  }
  if (auto id = flags.GetString("request-id")) request->set_request_id(*id);
  if (flags.GetBool("ignore-eos")) request->set_ignore_eos(true);
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

absl::StatusOr<int> ClientMain(int argc, char** argv) {
  Flags flags(
      {"address",     "api-key", "tls-ca",       "timeout", "prompt",  "prompt-ids", "max-tokens",
       "temperature", "top-p",   "top-k",        "min-p",   "seed",    "stop",       "logprobs",
       "user",        "system",  "request-file", "text",    "service", "request-id"},
      {"json", "no-thinking", "ignore-eos"});
  RETURN_IF_ERROR(flags.Parse(argc, argv, 2));
  if (flags.positional().size() != 1) {
    return absl::InvalidArgumentError("give one command: generate, chat, tokenize, health or info");
  }
  const std::string command = flags.positional()[0];
  ClientOptions options;
  options.address = flags.GetString("address").value_or("localhost:50051");
  options.api_key = flags.GetString("api-key").value_or("");
  options.tls_ca = flags.GetString("tls-ca").value_or("");
  if (flags.Has("timeout")) {
    ASSIGN_OR_RETURN(double seconds, flags.GetDouble("timeout", 0));
    options.timeout = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  }
  Client client(options);
  const bool as_json = flags.GetBool("json");

  if (command == "generate") {
    v1::GenerateRequest request;
    if (auto prompt = flags.GetString("prompt")) request.set_prompt(*prompt);
    ASSIGN_OR_RETURN(std::vector<int64_t> ids, flags.GetIntList("prompt-ids"));
    for (int64_t id : ids) request.add_prompt_token_ids(id);
    RETURN_IF_ERROR(FillSampling(flags, &request));
    return Stream(client, request, as_json);
  }
  if (command == "chat") {
    v1::GenerateRequest request;
    if (auto file = flags.GetString("request-file")) {
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
      if (auto system = flags.GetString("system")) {
        v1::ChatMessage* m = request.add_messages();
        m->set_role("system");
        m->set_content(*system);
      }
      ASSIGN_OR_RETURN(std::string user, flags.RequireString("user"));
      v1::ChatMessage* m = request.add_messages();
      m->set_role("user");
      m->set_content(user);
    }
    if (flags.GetBool("no-thinking")) request.set_enable_thinking(false);
    RETURN_IF_ERROR(FillSampling(flags, &request));
    return Stream(client, request, as_json);
  }
  if (command == "tokenize") {
    v1::TokenizeRequest request;
    ASSIGN_OR_RETURN(std::string text, flags.RequireString("text"));
    request.set_text(text);
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
    grpc::Status status = client.Health(flags.GetString("service").value_or(""), &state);
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
  absl::StatusOr<int> result = ClientMain(argc, argv);
  if (!result.ok()) {
    std::fprintf(stderr, "tessera client: %s\n", std::string(result.status().message()).c_str());
    return result.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return *result;
}

}  // namespace tessera
