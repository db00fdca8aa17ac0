#include "rpc/convert.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "runtime/model/json_text.h"
#include "runtime/text/utf8.h"

namespace tessera {

// Tool definitions and arguments nest a few levels; deeper input is refused before parsing.
constexpr int kMaxRequestJsonDepth = 64;

absl::Status CheckUtf8(const std::string& field, const std::string& text) {
  const size_t at = FindInvalidUtf8(text);
  if (at == std::string::npos) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, " is not valid UTF-8 (at byte ", at, ")"));
}

namespace {

absl::Status CheckMessagesUtf8(
    const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages) {
  for (int i = 0; i < messages.size(); ++i) {
    const v1::ChatMessage& m = messages[i];
    const std::string at = absl::StrCat("messages[", i, "].");
    RETURN_IF_ERROR(CheckUtf8(at + "role", m.role()));
    RETURN_IF_ERROR(CheckUtf8(at + "content", m.content()));
    RETURN_IF_ERROR(CheckUtf8(at + "reasoning_content", m.reasoning_content()));
    RETURN_IF_ERROR(CheckUtf8(at + "tool_call_id", m.tool_call_id()));
    RETURN_IF_ERROR(CheckUtf8(at + "name", m.name()));
    for (int j = 0; j < m.tool_calls_size(); ++j) {
      const std::string call = absl::StrCat(at, "tool_calls[", j, "].");
      RETURN_IF_ERROR(CheckUtf8(call + "id", m.tool_calls(j).id()));
      RETURN_IF_ERROR(CheckUtf8(call + "name", m.tool_calls(j).name()));
      RETURN_IF_ERROR(CheckUtf8(call + "arguments", m.tool_calls(j).arguments()));
    }
  }
  return absl::OkStatus();
}

// A request's chat messages, tools and thinking switch through the model's chat template: the one
// rendering of GenerateRequest and TokenizeRequest alike (both carry these fields).
template <typename Request>
absl::StatusOr<std::string> RenderChat(const ChatTemplate& chat_template, const Request& r,
                                       bool add_generation_prompt) {
  std::optional<bool> thinking;
  if (r.has_enable_thinking()) thinking = r.enable_thinking();
  ASSIGN_OR_RETURN(ChatRequest chat,
                   ToChatRequest(r.messages(), r.tools_json(), thinking, add_generation_prompt));
  return chat_template.Render(chat);
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbers.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::StatusOr<ChatRequest> ToChatRequest(
    const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages,
    const std::string& tools_json, const std::optional<bool>& enable_thinking,
    bool add_generation_prompt) {
  using json = nlohmann::ordered_json;
  RETURN_IF_ERROR(CheckMessagesUtf8(messages));
  RETURN_IF_ERROR(CheckUtf8("tools_json", tools_json));
  ChatRequest chat;
  for (int i = 0; i < messages.size(); ++i) {
    const v1::ChatMessage& m = messages[i];
    if (m.role().empty())
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].role is empty"));
    json msg = {{"role", m.role()}, {"content", m.content()}};
    if (!m.reasoning_content().empty()) msg["reasoning_content"] = m.reasoning_content();
    if (m.tool_calls_size() > 0) {
      json calls = json::array();
      for (int j = 0; j < m.tool_calls_size(); ++j) {
        const v1::ToolCall& call = m.tool_calls(j);
        if (call.name().empty()) {
          return absl::InvalidArgumentError(
              absl::StrCat("messages[", i, "].tool_calls[", j, "].name is empty"));
        }
        // Arguments travel as JSON text (as in OpenAI's API); the template wants the object.
        if (JsonNestingDepth(call.arguments(), kMaxRequestJsonDepth) > kMaxRequestJsonDepth) {
          return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].tool_calls[", j,
                                                         "].arguments nests deeper than ",
                                                         kMaxRequestJsonDepth, " levels"));
        }
        json arguments =
            json::parse(call.arguments().empty() ? "{}" : call.arguments(), nullptr, false);
        if (arguments.is_discarded()) {
          return absl::InvalidArgumentError(
              absl::StrCat("messages[", i, "].tool_calls[", j, "].arguments is not valid JSON"));
        }
        json entry = {{"type", "function"},
                      {"function", {{"name", call.name()}, {"arguments", arguments}}}};
        if (!call.id().empty()) entry["id"] = call.id();
        calls.push_back(std::move(entry));
      }
      msg["tool_calls"] = std::move(calls);
    }
    if (!m.tool_call_id().empty()) msg["tool_call_id"] = m.tool_call_id();
    if (!m.name().empty()) msg["name"] = m.name();
    chat.messages.push_back(std::move(msg));
  }
  if (!tools_json.empty()) {
    if (JsonNestingDepth(tools_json, kMaxRequestJsonDepth) > kMaxRequestJsonDepth) {
      return absl::InvalidArgumentError(
          absl::StrCat("tools_json nests deeper than ", kMaxRequestJsonDepth, " levels"));
    }
    chat.tools = json::parse(tools_json, nullptr, false);
    if (chat.tools.is_discarded() || !chat.tools.is_array()) {
      return absl::InvalidArgumentError("tools_json must be a JSON array of tool definitions");
    }
  }
  if (enable_thinking) chat.enable_thinking = json(*enable_thinking);
  chat.add_generation_prompt = add_generation_prompt;
  return chat;
}

absl::StatusOr<EngineRequest> ToEngineRequest(const v1::GenerateRequest& r,
                                              const Frontend& frontend,
                                              const std::string& request_id) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  EngineRequest e;
  e.request_id = request_id;
  e.origin = "grpc";
  RETURN_IF_ERROR(CheckUtf8("request_id", r.request_id()));
  RETURN_IF_ERROR(CheckUtf8("prompt", r.prompt()));
  for (int i = 0; i < r.stop_size(); ++i)
    RETURN_IF_ERROR(CheckUtf8(absl::StrCat("stop[", i, "]"), r.stop(i)));
  const int inputs =
      (r.prompt_token_ids_size() > 0) + !r.prompt().empty() + (r.messages_size() > 0);
  if (inputs == 0) return bad("the prompt is empty: give prompt_token_ids, prompt or messages");
  if (inputs > 1) return bad("give exactly one of prompt_token_ids, prompt and messages");
  // 64-bit on the wire (generation.proto): what does not fit the engine's 32 bits is refused here.
  const auto out_of_range = [](int64_t v) { return v < INT32_MIN || v > INT32_MAX; };
  if (r.prompt_token_ids_size() > 0) {
    for (int i = 0; i < r.prompt_token_ids_size(); ++i) {
      if (out_of_range(r.prompt_token_ids(i))) {
        return bad("prompt token ", i, " has id ", r.prompt_token_ids(i),
                   ", outside the vocabulary");
      }
    }
    e.prompt.assign(r.prompt_token_ids().begin(), r.prompt_token_ids().end());
  } else if (!r.prompt().empty()) {
    if (frontend.tokenizer == nullptr)
      return bad("this model has no tokenizer: send prompt_token_ids");
    ASSIGN_OR_RETURN(e.prompt, frontend.tokenizer->Encode(r.prompt()));
  } else {
    if (frontend.tokenizer == nullptr || frontend.chat_template == nullptr) {
      return bad("this model has no chat template: send prompt or prompt_token_ids");
    }
    ASSIGN_OR_RETURN(std::string text, RenderChat(*frontend.chat_template, r, true));
    ASSIGN_OR_RETURN(e.prompt, frontend.tokenizer->Encode(text));
    e.parse_chat =
        ChatOutputParser::OptionsForPrompt(text, frontend.chat_template->knows_think_tags());
    e.parse_chat->tool_calls = !r.tools_json().empty();
  }
  if (r.max_tokens() == 0) return bad("max_tokens must be >= 1");
  if (r.max_tokens() > static_cast<uint64_t>(INT32_MAX))
    return bad("max_tokens is too large: ", r.max_tokens());
  e.max_tokens = static_cast<int>(r.max_tokens());

  e.sampling = frontend.default_sampling;
  const v1::SamplingParams& s = r.sampling();
  if (s.has_temperature()) e.sampling.temperature = s.temperature();
  if (s.has_top_p()) e.sampling.top_p = s.top_p();
  if (s.has_top_k()) {
    if (out_of_range(s.top_k())) return bad("top_k is out of range: ", s.top_k());
    e.sampling.top_k = static_cast<int>(s.top_k());
  }
  if (s.has_min_p()) e.sampling.min_p = s.min_p();
  if (s.has_repetition_penalty()) e.sampling.repetition_penalty = s.repetition_penalty();
  if (s.has_presence_penalty()) e.sampling.presence_penalty = s.presence_penalty();
  if (s.has_frequency_penalty()) e.sampling.frequency_penalty = s.frequency_penalty();
  if (s.has_seed()) e.sampling.seed = s.seed();

  e.stop.assign(r.stop().begin(), r.stop().end());
  for (int64_t id : r.stop_token_ids()) {
    if (out_of_range(id)) return bad("stop token id ", id, " is outside the vocabulary");
  }
  e.stop_token_ids.assign(r.stop_token_ids().begin(), r.stop_token_ids().end());
  e.ignore_eos = r.ignore_eos();
  if (r.has_logprobs()) {
    // The engine checks the limit; a value past int32 is refused here with the value sent.
    if (r.logprobs() > static_cast<uint64_t>(INT32_MAX))
      return bad("logprobs must be <= ", kMaxTopLogprobs, ", got ", r.logprobs());
    e.top_logprobs = static_cast<int>(r.logprobs());
  }
  e.skip_special_tokens = r.has_skip_special_tokens() ? r.skip_special_tokens() : true;
  if (out_of_range(r.priority())) return bad("priority is out of range: ", r.priority());
  e.priority = static_cast<int>(r.priority());
  return e;
}

v1::GenerateResponse ToResponse(const EngineOutput& o, const std::string& request_id) {
  v1::GenerateResponse r;
  r.set_request_id(request_id);
  for (int32_t id : o.token_ids) r.add_token_ids(id);
  r.set_text(o.text);
  r.set_reasoning_text(o.reasoning);
  for (const ToolCall& call : o.tool_calls) {
    v1::ToolCall* c = r.add_tool_calls();
    c->set_name(call.name);
    c->set_arguments(call.arguments);
  }
  for (const TokenLogprobs& lp : o.logprobs) {
    v1::TokenLogprobs* l = r.add_logprobs();
    l->set_token_id(lp.chosen.id);
    l->set_logprob(lp.chosen.logprob);
    for (const TokenLogprob& t : lp.top) {
      v1::TopLogprob* top = l->add_top();
      top->set_token_id(t.id);
      top->set_logprob(t.logprob);
    }
  }
  if (o.finished) {
    switch (o.finish_reason) {
      case FinishReason::kStop:
        r.set_finish_reason(v1::FINISH_REASON_STOP);
        break;
      case FinishReason::kLength:
        r.set_finish_reason(v1::FINISH_REASON_LENGTH);
        break;
      case FinishReason::kCancelled:
        r.set_finish_reason(v1::FINISH_REASON_CANCELLED);
        break;
      case FinishReason::kError:
        r.set_finish_reason(v1::FINISH_REASON_ERROR);
        break;
      case FinishReason::kNone:
        break;
    }
    r.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(o.prompt_tokens));
    r.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(o.completion_tokens));
    r.mutable_usage()->set_cached_tokens(static_cast<uint32_t>(o.cached_tokens));
  }
  return r;
}

absl::StatusOr<v1::TokenizeResponse> ToTokenizeResponse(const v1::TokenizeRequest& r,
                                                        const Frontend& frontend) {
  if (frontend.tokenizer == nullptr) {
    return absl::FailedPreconditionError("this model has no tokenizer");
  }
  RETURN_IF_ERROR(CheckUtf8("text", r.text()));
  v1::TokenizeResponse response;
  std::string text = r.text();
  if (r.messages_size() > 0) {
    if (frontend.chat_template == nullptr) {
      return absl::FailedPreconditionError("this model has no chat template");
    }
    const bool add_generation_prompt =
        r.has_add_generation_prompt() ? r.add_generation_prompt() : true;
    ASSIGN_OR_RETURN(text, RenderChat(*frontend.chat_template, r, add_generation_prompt));
    response.set_rendered(text);
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, frontend.tokenizer->Encode(text));
  for (int32_t id : ids) response.add_token_ids(id);
  return response;
}

}  // namespace tessera
