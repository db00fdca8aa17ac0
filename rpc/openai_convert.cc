#include "rpc/openai_convert.h"

#include <algorithm>
#include <mutex>
#include <optional>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/base/status_macros.h"

namespace tessera {
namespace {

constexpr char kParamPayload[] = "tessera.dev/openai-param";
constexpr int kMaxN = 128;
constexpr int kDefaultCompletionTokens = 16;  // OpenAI's legacy completions default

std::string Path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : absl::StrCat(parent, ".", key);
}

// Optional scalar fields: absent and null are the same; a wrong type names the field.
absl::StatusOr<std::optional<double>> GetNumber(const Json& obj, const char* key,
                                                const std::string& parent = "") {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) return InvalidField(Path(parent, key), "must be a number");
  return it->get<double>();
}

absl::StatusOr<std::optional<int64_t>> GetInt(const Json& obj, const char* key,
                                              const std::string& parent = "") {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_number_float()) {
    const double v = it->get<double>();
    if (v == static_cast<double>(static_cast<int64_t>(v))) return static_cast<int64_t>(v);
  }
  return InvalidField(Path(parent, key), "must be an integer");
}

absl::StatusOr<std::optional<bool>> GetBool(const Json& obj, const char* key,
                                            const std::string& parent = "") {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) return InvalidField(Path(parent, key), "must be a boolean");
  return it->get<bool>();
}

absl::StatusOr<std::optional<std::string>> GetString(const Json& obj, const char* key,
                                                     const std::string& parent = "") {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) return InvalidField(Path(parent, key), "must be a string");
  return it->get<std::string>();
}

// Message content: a string, null, or an array of {"type": "text", "text": ...} parts (joined
// with newlines, as vLLM does for text-only templates).
absl::StatusOr<std::string> ContentText(const Json& content, const std::string& at) {
  if (content.is_null()) return std::string();
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) return InvalidField(at, "must be a string or an array of parts");
  std::vector<std::string> parts;
  for (size_t j = 0; j < content.size(); ++j) {
    const Json& part = content[j];
    const std::string where = absl::StrCat(at, "[", j, "]");
    if (!part.is_object()) return InvalidField(where, "must be an object");
    ASSIGN_OR_RETURN(std::optional<std::string> type, GetString(part, "type", where));
    if (type.value_or("text") != "text") {
      return InvalidField(where + ".type", absl::StrCat("content part type '", *type,
                                                        "' is not supported (text only)"));
    }
    ASSIGN_OR_RETURN(std::optional<std::string> text, GetString(part, "text", where));
    if (!text) return InvalidField(where + ".text", "is required");
    parts.push_back(*std::move(text));
  }
  return absl::StrJoin(parts, "\n");
}

absl::Status ReadMessages(const Json& body, v1::GenerateRequest* r) {
  auto it = body.find("messages");
  if (it == body.end() || !it->is_array() || it->empty()) {
    return InvalidField("messages", "must be a non-empty array of messages");
  }
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& m = (*it)[i];
    const std::string at = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return InvalidField(at, "must be an object");
    v1::ChatMessage* msg = r->add_messages();
    ASSIGN_OR_RETURN(std::optional<std::string> role, GetString(m, "role", at));
    if (!role || role->empty()) return InvalidField(at + ".role", "is required");
    msg->set_role(*role);
    if (m.contains("content")) {
      ASSIGN_OR_RETURN(std::string content, ContentText(m["content"], at + ".content"));
      msg->set_content(content);
    }
    for (const char* key : {"reasoning_content", "reasoning"}) {
      ASSIGN_OR_RETURN(std::optional<std::string> reasoning, GetString(m, key, at));
      if (reasoning) msg->set_reasoning_content(*reasoning);
    }
    ASSIGN_OR_RETURN(std::optional<std::string> tool_call_id, GetString(m, "tool_call_id", at));
    if (tool_call_id) msg->set_tool_call_id(*tool_call_id);
    ASSIGN_OR_RETURN(std::optional<std::string> name, GetString(m, "name", at));
    if (name) msg->set_name(*name);
    auto calls = m.find("tool_calls");
    if (calls == m.end() || calls->is_null()) continue;
    if (!calls->is_array()) return InvalidField(at + ".tool_calls", "must be an array");
    for (size_t j = 0; j < calls->size(); ++j) {
      const Json& c = (*calls)[j];
      const std::string call_at = absl::StrCat(at, ".tool_calls[", j, "]");
      if (!c.is_object() || !c.contains("function") || !c["function"].is_object()) {
        return InvalidField(call_at + ".function", "is required");
      }
      const Json& f = c["function"];
      v1::ToolCall* call = msg->add_tool_calls();
      ASSIGN_OR_RETURN(std::optional<std::string> id, GetString(c, "id", call_at));
      if (id) call->set_id(*id);
      ASSIGN_OR_RETURN(std::optional<std::string> fname,
                       GetString(f, "name", call_at + ".function"));
      if (!fname) return InvalidField(call_at + ".function.name", "is required");
      call->set_name(*fname);
      auto args = f.find("arguments");
      if (args != f.end() && args->is_string()) {
        call->set_arguments(args->get<std::string>());
      } else if (args != f.end() && args->is_object()) {
        call->set_arguments(Dump(*args));
      } else if (args != f.end() && !args->is_null()) {
        return InvalidField(call_at + ".function.arguments", "must be a JSON string");
      }
    }
  }
  return absl::OkStatus();
}

// tools + tool_choice: the tools the template sees, and whether tool calls are parsed out.
absl::Status ReadTools(const Json& body, v1::GenerateRequest* r, bool* parse_tool_calls,
                       std::optional<ForcedToolChoice>* forced) {
  *parse_tool_calls = false;
  auto it = body.find("tools");
  if (it == body.end() || it->is_null()) {
    auto choice = body.find("tool_choice");
    if (choice != body.end() && !choice->is_null() &&
        !(choice->is_string() && (*choice == "none" || *choice == "auto"))) {
      return InvalidField("tool_choice", "needs tools");
    }
    return absl::OkStatus();
  }
  if (!it->is_array()) return InvalidField("tools", "must be an array of tools");
  Json tools = Json::array();
  std::vector<std::string> names;
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& t = (*it)[i];
    const std::string at = absl::StrCat("tools[", i, "]");
    if (!t.is_object()) return InvalidField(at, "must be an object");
    ASSIGN_OR_RETURN(std::optional<std::string> type, GetString(t, "type", at));
    if (type.value_or("function") != "function") {
      return InvalidField(at + ".type", "only 'function' tools are supported");
    }
    if (!t.contains("function") || !t["function"].is_object()) {
      return InvalidField(at + ".function", "is required");
    }
    ASSIGN_OR_RETURN(std::optional<std::string> name,
                     GetString(t["function"], "name", at + ".function"));
    if (!name || name->empty()) return InvalidField(at + ".function.name", "is required");
    names.push_back(*name);
  }
  std::string choice = "auto";
  std::optional<std::string> named;
  auto c = body.find("tool_choice");
  if (c != body.end() && !c->is_null()) {
    if (c->is_string()) {
      choice = c->get<std::string>();
      if (choice != "auto" && choice != "none" && choice != "required") {
        return InvalidField("tool_choice", "must be auto, none, required or a named function");
      }
    } else if (c->is_object() && c->contains("function") && (*c)["function"].is_object() &&
               (*c)["function"].contains("name") && (*c)["function"]["name"].is_string()) {
      named = (*c)["function"]["name"].get<std::string>();
      if (std::find(names.begin(), names.end(), *named) == names.end()) {
        return InvalidField("tool_choice", absl::StrCat("names function '", *named,
                                                        "', which is not among the tools"));
      }
    } else {
      return InvalidField("tool_choice", "must be auto, none, required or a named function");
    }
  }
  if (choice == "none") return absl::OkStatus();
  // A named function is the only tool the model is shown.
  for (size_t i = 0; i < it->size(); ++i) {
    if (!named || names[i] == *named) tools.push_back((*it)[i]);
  }
  r->set_tools_json(Dump(tools));
  *parse_tool_calls = true;
  // `required` with one tool is that function named.
  if (named || (choice == "required" && names.size() == 1)) {
    *forced = ForcedToolChoice{named.value_or(names[0]), {}};
  } else if (choice == "required") {
    *forced = ForcedToolChoice{"", names};
  }
  return absl::OkStatus();
}

// Appends the forced opening of the call to the rendered chat prompt (ForcedToolChoice).
absl::Status ForceToolCall(const ForcedToolChoice& forced, const Frontend& frontend,
                           EngineRequest* e) {
  if (frontend.tokenizer == nullptr || !e->parse_chat) {
    return InvalidField("tool_choice", "needs the model's tokenizer and chat template");
  }
  // NOTE: Qwen3 writes its calls after its reasoning; with nothing to constrain the decoding
  // mid-turn, the turn starts with the empty think block of enable_thinking=false instead.
  std::string text = e->parse_chat->reasoning ? "<think>\n\n</think>\n\n" : "";
  absl::StrAppend(&text, "<tool_call>\n{\"name\": ");
  if (forced.name.empty()) {
    text += "\"";
  } else {
    absl::StrAppend(&text, Dump(Json(forced.name)), ", \"arguments\": ");
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, frontend.tokenizer->Encode(text));
  e->prompt.insert(e->prompt.end(), ids.begin(), ids.end());
  e->parse_chat->reasoning = false;  // the output continues the call: ForcedCallScanner reads it
  e->parse_chat->tool_calls = false;
  e->stop.push_back("</tool_call>");  // one call per choice
  return absl::OkStatus();
}

absl::Status ReadPrompt(const Json& body, v1::GenerateRequest* r) {
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) return InvalidField("prompt", "is required");
  Json prompt = *it;
  // A batch of one is that prompt; larger batches are not served by one request.
  if (prompt.is_array() && !prompt.empty() && (prompt[0].is_string() || prompt[0].is_array())) {
    if (prompt.size() != 1) {
      return InvalidField("prompt", "one prompt per request: send a batch as separate requests");
    }
    prompt = Json(prompt[0]);
  }
  if (prompt.is_string()) {
    if (prompt.get<std::string>().empty()) return InvalidField("prompt", "is empty");
    r->set_prompt(prompt.get<std::string>());
    return absl::OkStatus();
  }
  if (prompt.is_array() && !prompt.empty()) {
    for (const Json& id : prompt) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
        return InvalidField("prompt", "token ids must be non-negative integers");
      }
      r->add_prompt_token_ids(id.get<int32_t>());
    }
    return absl::OkStatus();
  }
  return InvalidField("prompt", "must be a string or an array of token ids");
}

// ToEngineRequest's messages name the proto field first; map it to the API's field.
std::string ParamOf(absl::string_view message) {
  if (absl::StrContains(message, "max_tokens")) return "max_tokens";
  const size_t end = message.find_first_of(" (:");
  std::string first(message.substr(0, end));
  if (first.empty()) return "";
  for (char ch : first) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(ch)) && ch != '_' && ch != '[' &&
        ch != ']' && ch != '.')
      return "";
  }
  if (first == "tools_json") return "tools";
  if (first == "prompt_token_ids" || first == "the") return first == "the" ? "" : "prompt";
  if (first == "logprobs") return "top_logprobs";
  return first;
}

char Alnum(uint64_t v) {
  static constexpr char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  return kChars[v % (sizeof(kChars) - 1)];
}

}  // namespace

absl::Status InvalidField(const std::string& param, const std::string& message) {
  absl::Status status = absl::InvalidArgumentError(absl::StrCat(param, " ", message));
  status.SetPayload(kParamPayload, absl::Cord(param));
  return status;
}

int HttpStatusOf(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnimplemented:
      return 501;
    default:
      return 500;
  }
}

Json ErrorJson(const absl::Status& status) {
  const int http = HttpStatusOf(status);
  const char* type = http == 400   ? "invalid_request_error"
                     : http == 401 ? "authentication_error"
                     : http == 404 ? "not_found_error"
                     : http == 429 ? "rate_limit_error"
                     : http == 503 ? "service_unavailable_error"
                                   : "server_error";
  Json param = nullptr;
  if (auto p = status.GetPayload(kParamPayload)) {
    param = std::string(*p);
  } else if (status.code() == absl::StatusCode::kInvalidArgument) {
    const std::string guess = ParamOf(status.message());
    if (!guess.empty()) param = guess;
  }
  Json code = nullptr;
  if (status.code() == absl::StatusCode::kNotFound) code = "model_not_found";
  return {{"error",
           {{"message", std::string(status.message())},
            {"type", type},
            {"param", param},
            {"code", code}}}};
}

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string NewToolCallId() {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard<std::mutex> lock(mu);
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id += Alnum(rng());
  return id;
}

absl::StatusOr<ApiRequest> ParseApiRequest(ApiKind kind, const std::string& text,
                                           const ApiContext& context, const std::string& id) {
  const Json body = Json::parse(text, nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    return InvalidField("body", "is not a JSON object");
  }
  ApiRequest api;
  api.kind = kind;
  api.id = id;
  ASSIGN_OR_RETURN(std::optional<std::string> model, GetString(body, "model"));
  const std::vector<std::string>& names = context.model_names;
  if (model && std::find(names.begin(), names.end(), *model) == names.end()) {
    return absl::NotFoundError(absl::StrCat("The model '", *model,
                                            "' does not exist (this server serves '",
                                            absl::StrJoin(names, "', '"), "')"));
  }
  // As vLLM: whichever served name the request gives, responses report the first.
  api.model = names.empty() ? model.value_or("") : names[0];
  ASSIGN_OR_RETURN(std::optional<std::string> request_id, GetString(body, "request_id"));
  if (request_id && !request_id->empty()) api.id = *request_id;
  ASSIGN_OR_RETURN(std::optional<std::string> user, GetString(body, "user"));
  (void)user;  // accepted (OpenAI's abuse-tracking field); not used
  ASSIGN_OR_RETURN(std::optional<bool> stream, GetBool(body, "stream"));
  api.stream = stream.value_or(false);
  if (auto so = body.find("stream_options"); so != body.end() && !so->is_null()) {
    if (!so->is_object()) return InvalidField("stream_options", "must be an object");
    ASSIGN_OR_RETURN(std::optional<bool> usage, GetBool(*so, "include_usage", "stream_options"));
    api.include_usage = usage.value_or(false);
  }

  v1::GenerateRequest r;
  bool parse_tool_calls = false;
  if (kind == ApiKind::kChat) {
    RETURN_IF_ERROR(ReadMessages(body, &r));
    RETURN_IF_ERROR(ReadTools(body, &r, &parse_tool_calls, &api.forced_call));
    if (auto kw = body.find("chat_template_kwargs"); kw != body.end() && !kw->is_null()) {
      if (!kw->is_object()) return InvalidField("chat_template_kwargs", "must be an object");
      ASSIGN_OR_RETURN(std::optional<bool> thinking,
                       GetBool(*kw, "enable_thinking", "chat_template_kwargs"));
      if (thinking) r.set_enable_thinking(*thinking);
    }
    ASSIGN_OR_RETURN(std::optional<bool> logprobs, GetBool(body, "logprobs"));
    ASSIGN_OR_RETURN(std::optional<int64_t> top, GetInt(body, "top_logprobs"));
    api.logprobs = logprobs.value_or(false);
    if (top && (*top < 0 || *top > 20)) return InvalidField("top_logprobs", "must be in [0, 20]");
    if (top && !api.logprobs) return InvalidField("top_logprobs", "needs logprobs: true");
    api.top_logprobs = static_cast<int>(top.value_or(0));
  } else {
    RETURN_IF_ERROR(ReadPrompt(body, &r));
    ASSIGN_OR_RETURN(std::optional<bool> echo, GetBool(body, "echo"));
    if (echo.value_or(false)) return InvalidField("echo", "is not supported");
    ASSIGN_OR_RETURN(std::optional<std::string> suffix, GetString(body, "suffix"));
    if (suffix && !suffix->empty()) return InvalidField("suffix", "is not supported");
    ASSIGN_OR_RETURN(std::optional<int64_t> logprobs, GetInt(body, "logprobs"));
    if (logprobs && (*logprobs < 0 || *logprobs > 20)) {
      return InvalidField("logprobs", "must be in [0, 20]");
    }
    api.logprobs = logprobs.has_value();
    api.top_logprobs = static_cast<int>(logprobs.value_or(0));
  }
  if (api.logprobs) r.set_logprobs(static_cast<uint32_t>(api.top_logprobs));

  // max_completion_tokens (the current name) wins over max_tokens (deprecated for chat).
  ASSIGN_OR_RETURN(std::optional<int64_t> max_tokens, GetInt(body, "max_tokens"));
  ASSIGN_OR_RETURN(std::optional<int64_t> max_completion, GetInt(body, "max_completion_tokens"));
  const char* max_field = max_completion ? "max_completion_tokens" : "max_tokens";
  if (max_completion) max_tokens = max_completion;
  if (max_tokens && (*max_tokens < 1 || *max_tokens > INT32_MAX)) {
    return InvalidField(max_field, "must be >= 1");
  }
  r.set_max_tokens(static_cast<uint32_t>(
      max_tokens.value_or(kind == ApiKind::kCompletion ? kDefaultCompletionTokens : 1)));

  v1::SamplingParams* s = r.mutable_sampling();
  ASSIGN_OR_RETURN(std::optional<double> temperature, GetNumber(body, "temperature"));
  if (temperature) s->set_temperature(static_cast<float>(*temperature));
  ASSIGN_OR_RETURN(std::optional<double> top_p, GetNumber(body, "top_p"));
  if (top_p) s->set_top_p(static_cast<float>(*top_p));
  ASSIGN_OR_RETURN(std::optional<int64_t> top_k, GetInt(body, "top_k"));
  if (top_k)
    s->set_top_k(*top_k < 0 ? 0 : static_cast<int32_t>(std::min<int64_t>(*top_k, 1 << 30)));
  ASSIGN_OR_RETURN(std::optional<double> min_p, GetNumber(body, "min_p"));
  if (min_p) s->set_min_p(static_cast<float>(*min_p));
  ASSIGN_OR_RETURN(std::optional<double> presence, GetNumber(body, "presence_penalty"));
  if (presence) s->set_presence_penalty(static_cast<float>(*presence));
  ASSIGN_OR_RETURN(std::optional<double> frequency, GetNumber(body, "frequency_penalty"));
  if (frequency) s->set_frequency_penalty(static_cast<float>(*frequency));
  ASSIGN_OR_RETURN(std::optional<double> repetition, GetNumber(body, "repetition_penalty"));
  if (repetition) s->set_repetition_penalty(static_cast<float>(*repetition));
  ASSIGN_OR_RETURN(std::optional<int64_t> seed, GetInt(body, "seed"));
  if (seed) s->set_seed(static_cast<uint64_t>(*seed));

  if (auto stop = body.find("stop"); stop != body.end() && !stop->is_null()) {
    if (stop->is_string()) {
      r.add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const Json& one : *stop) {
        if (!one.is_string()) return InvalidField("stop", "must be a string or strings");
        r.add_stop(one.get<std::string>());
      }
    } else {
      return InvalidField("stop", "must be a string or an array of strings");
    }
  }
  if (auto ids = body.find("stop_token_ids"); ids != body.end() && !ids->is_null()) {
    if (!ids->is_array()) return InvalidField("stop_token_ids", "must be an array of ids");
    for (const Json& one : *ids) {
      if (!one.is_number_integer()) return InvalidField("stop_token_ids", "must be integers");
      r.add_stop_token_ids(one.get<int32_t>());
    }
  }
  ASSIGN_OR_RETURN(std::optional<bool> ignore_eos, GetBool(body, "ignore_eos"));
  if (ignore_eos) r.set_ignore_eos(*ignore_eos);
  ASSIGN_OR_RETURN(std::optional<bool> skip_special, GetBool(body, "skip_special_tokens"));
  if (skip_special) r.set_skip_special_tokens(*skip_special);
  ASSIGN_OR_RETURN(std::optional<int64_t> n, GetInt(body, "n"));
  if (n && (*n < 1 || *n > kMaxN))
    return InvalidField("n", absl::StrCat("must be in [1, ", kMaxN, "]"));

  ASSIGN_OR_RETURN(EngineRequest base, ToEngineRequest(r, *context.frontend, api.id));
  base.origin = "http";
  if (base.parse_chat) base.parse_chat->tool_calls = parse_tool_calls;
  if (api.forced_call) RETURN_IF_ERROR(ForceToolCall(*api.forced_call, *context.frontend, &base));
  if (kind == ApiKind::kChat && !max_tokens) {
    base.max_tokens = static_cast<int>(
        std::max<int64_t>(1, context.max_model_len - static_cast<int64_t>(base.prompt.size())));
  }
  const int choices = static_cast<int>(n.value_or(1));
  for (int i = 0; i < choices; ++i) {
    EngineRequest e = base;
    if (choices > 1) {
      e.request_id = absl::StrCat(api.id, "-", i);
      e.prompt_group = api.id;  // the engine computes the shared prompt once
      if (e.sampling.seed) e.sampling.seed = *e.sampling.seed + static_cast<uint64_t>(i);
    }
    api.choices.push_back(std::move(e));
  }
  return api;
}

ForcedCallScanner::ForcedCallScanner(const ForcedToolChoice& choice)
    : tools_(choice.tools),
      state_(choice.name.empty() ? State::kName : State::kArgsStart),
      name_(choice.name) {}

void ForcedCallScanner::Fail(const std::string& why) {
  state_ = State::kFailed;
  status_ = absl::InternalError(absl::StrCat(
      "tool_choice required: ", why,
      " (tessera forces the start of the call, not its content: there is no guided decoding)"));
}

std::string ForcedCallScanner::Push(std::string_view text) {
  static constexpr std::string_view kSeparator = ",\"arguments\":";
  std::string arguments;
  for (const char c : text) {
    const bool space = c == ' ' || c == '\t' || c == '\n' || c == '\r';
    switch (state_) {
      case State::kName:
        if (c == '"' && !escape_) {
          const Json name = Json::parse("\"" + raw_name_ + "\"", nullptr, false);
          if (name.is_discarded()) {
            Fail("the model wrote a malformed function name");
            return arguments;
          }
          name_ = name.get<std::string>();
          if (std::find(tools_.begin(), tools_.end(), name_) == tools_.end()) {
            Fail(absl::StrCat("the model called '", name_, "', which is not among the tools"));
            return arguments;
          }
          state_ = State::kSeparator;
        } else {
          escape_ = !escape_ && c == '\\';
          raw_name_ += c;
        }
        break;
      case State::kSeparator:
        // Whitespace between the JSON tokens: before ',', after it, before ':'.
        if (space && (separator_ <= 1 || separator_ == kSeparator.size() - 1)) break;
        if (c != kSeparator[separator_]) {
          Fail(absl::StrCat("the model wrote no arguments after the name '", name_, "'"));
          return arguments;
        }
        if (++separator_ == kSeparator.size()) state_ = State::kArgsStart;
        break;
      case State::kArgsStart:
        if (space) break;
        kind_ = c;
        arguments += c;
        state_ = State::kArgs;
        if (c == '{' || c == '[') depth_ = 1;
        in_string_ = c == '"';
        break;
      case State::kArgs:
        if (kind_ != '{' && kind_ != '[' && kind_ != '"') {  // a number, true, false, null
          if (space || c == ',' || c == '}' || c == ']') {
            state_ = State::kDone;
            break;
          }
          arguments += c;
          break;
        }
        arguments += c;
        if (in_string_) {
          if (escape_) {
            escape_ = false;
          } else if (c == '\\') {
            escape_ = true;
          } else if (c == '"') {
            in_string_ = false;
            if (kind_ == '"') state_ = State::kDone;
          }
        } else if (c == '"') {
          in_string_ = true;
        } else if (c == '{' || c == '[') {
          ++depth_;
        } else if ((c == '}' || c == ']') && --depth_ == 0) {
          state_ = State::kDone;
        }
        break;
      case State::kDone:
      case State::kFailed:
        return arguments;
    }
  }
  return arguments;
}

ChoiceBuilder::ChoiceBuilder(const ApiRequest& request, int index, const Tokenizer* tokenizer)
    : kind_(request.kind), logprobs_(request.logprobs), index_(index), tokenizer_(tokenizer) {
  if (request.forced_call) {
    forced_ = std::make_shared<ForcedCallScanner>(*request.forced_call);
    forced_named_ = !request.forced_call->name.empty();
  }
  if (kind_ == ApiKind::kChat) {
    logprobs_json_ = {{"content", Json::array()}};
  } else {
    logprobs_json_ = {{"tokens", Json::array()},
                      {"token_logprobs", Json::array()},
                      {"top_logprobs", Json::array()},
                      {"text_offset", Json::array()}};
  }
}

const char* ChoiceBuilder::FinishReasonText() const {
  if (last_.finish_reason == FinishReason::kLength) return "length";
  // As vLLM and OpenAI: a call of a named function (tool_choice) finishes with "stop".
  if (forced_named_) return "stop";
  return tool_calls_ > 0 ? "tool_calls" : "stop";
}

std::string ChoiceBuilder::ScanForced(const EngineOutput& out) {
  std::string arguments = forced_->Push(out.text);
  if (error_.ok() && !forced_->status().ok()) error_ = forced_->status();
  if (error_.ok() && out.finished && !forced_->name_known()) {
    error_ = absl::InternalError(
        "tool_choice required: the output ended before the model named a function");
  }
  return arguments;
}

Json ChoiceBuilder::LogprobsJson(const std::vector<TokenLogprobs>& logprobs,
                                 int64_t* text_offset) const {
  auto token = [this](int32_t id) {
    if (tokenizer_ == nullptr) return absl::StrCat("token_id:", id);
    absl::StatusOr<std::string> bytes = tokenizer_->TokenBytes(id);
    return bytes.ok() ? *bytes : absl::StrCat("token_id:", id);
  };
  auto bytes_of = [](const std::string& t) {
    Json b = Json::array();
    for (unsigned char ch : t) b.push_back(static_cast<int>(ch));
    return b;
  };
  // -inf has no JSON spelling; OpenAI writes -9999.0 for "never".
  auto value = [](float lp) { return std::max(static_cast<double>(lp), -9999.0); };
  if (kind_ == ApiKind::kChat) {
    Json content = Json::array();
    for (const TokenLogprobs& lp : logprobs) {
      const std::string t = token(lp.chosen.id);
      Json top = Json::array();
      for (const TokenLogprob& alt : lp.top) {
        const std::string at = token(alt.id);
        top.push_back({{"token", at}, {"logprob", value(alt.logprob)}, {"bytes", bytes_of(at)}});
      }
      content.push_back({{"token", t},
                         {"logprob", value(lp.chosen.logprob)},
                         {"bytes", bytes_of(t)},
                         {"top_logprobs", std::move(top)}});
    }
    return content;
  }
  Json out = {{"tokens", Json::array()},
              {"token_logprobs", Json::array()},
              {"top_logprobs", Json::array()},
              {"text_offset", Json::array()}};
  for (const TokenLogprobs& lp : logprobs) {
    const std::string t = token(lp.chosen.id);
    out["tokens"].push_back(t);
    out["token_logprobs"].push_back(value(lp.chosen.logprob));
    Json top = Json::object();
    for (const TokenLogprob& alt : lp.top) top[token(alt.id)] = value(alt.logprob);
    out["top_logprobs"].push_back(std::move(top));
    out["text_offset"].push_back(*text_offset);
    *text_offset += static_cast<int64_t>(t.size());
  }
  return out;
}

std::vector<Json> ChoiceBuilder::Deltas(const EngineOutput& out) {
  std::vector<Json> chunks;
  auto choice = [this](Json delta_or_text, Json logprobs, Json finish) {
    Json c = {{"index", index_}};
    if (kind_ == ApiKind::kChat) {
      c["delta"] = std::move(delta_or_text);
    } else {
      c["text"] = std::move(delta_or_text);
    }
    c["logprobs"] = std::move(logprobs);
    c["finish_reason"] = std::move(finish);
    return c;
  };
  if (kind_ == ApiKind::kChat && !role_sent_) {
    chunks.push_back(choice({{"role", "assistant"}, {"content", ""}}, nullptr, nullptr));
    role_sent_ = true;
  }
  Json lp = nullptr;
  if (logprobs_ && !out.logprobs.empty()) {
    lp = LogprobsJson(out.logprobs, &text_offset_);
    if (kind_ == ApiKind::kChat) lp = {{"content", std::move(lp)}};
  }
  if (forced_) {
    // The call's head once its name is known (at once for a named function), then the arguments
    // as they come.
    const std::string arguments = ScanForced(out);
    if (error_.ok() && tool_calls_ == 0 && forced_->name_known()) {
      tool_calls_ = 1;
      Json head = {{"index", 0},
                   {"id", NewToolCallId()},
                   {"type", "function"},
                   {"function", {{"name", forced_->name()}, {"arguments", ""}}}};
      chunks.push_back(choice({{"tool_calls", Json::array({head})}}, nullptr, nullptr));
    }
    if (error_.ok() && !arguments.empty()) {
      Json args = {{"index", 0}, {"function", {{"arguments", arguments}}}};
      chunks.push_back(choice({{"tool_calls", Json::array({args})}}, lp, nullptr));
    } else if (!lp.is_null()) {
      chunks.push_back(choice(Json::object(), lp, nullptr));
    }
  } else if (kind_ == ApiKind::kChat) {
    Json delta = Json::object();
    if (!out.reasoning.empty()) delta["reasoning_content"] = out.reasoning;
    if (!out.text.empty()) delta["content"] = out.text;
    if (!delta.empty() || !lp.is_null()) chunks.push_back(choice(std::move(delta), lp, nullptr));
    // As OpenAI streams a call: its id, type and name first, then the arguments.
    for (const ToolCall& call : out.tool_calls) {
      const int k = tool_calls_++;
      Json head = {{"index", k},
                   {"id", NewToolCallId()},
                   {"type", "function"},
                   {"function", {{"name", call.name}, {"arguments", ""}}}};
      chunks.push_back(choice({{"tool_calls", Json::array({head})}}, nullptr, nullptr));
      Json args = {{"index", k}, {"function", {{"arguments", call.arguments}}}};
      chunks.push_back(choice({{"tool_calls", Json::array({args})}}, nullptr, nullptr));
    }
  } else if (!out.text.empty() || !lp.is_null()) {
    chunks.push_back(choice(out.text, lp, nullptr));
  }
  if (out.finished) {
    finished_ = true;
    last_ = out;
    chunks.push_back(
        choice(kind_ == ApiKind::kChat ? Json::object() : Json(""), nullptr, FinishReasonText()));
  }
  return chunks;
}

void ChoiceBuilder::Add(const EngineOutput& out) {
  if (forced_) {
    forced_arguments_ += ScanForced(out);
    if (error_.ok() && tool_calls_ == 0 && forced_->name_known()) {
      tool_calls_ = 1;
      tool_calls_json_.push_back({{"id", NewToolCallId()},
                                  {"type", "function"},
                                  {"function", {{"name", forced_->name()}, {"arguments", ""}}}});
    }
    if (tool_calls_ > 0) tool_calls_json_[0]["function"]["arguments"] = forced_arguments_;
  } else {
    text_ += out.text;
  }
  reasoning_ += out.reasoning;
  for (const ToolCall& call : out.tool_calls) {
    ++tool_calls_;
    tool_calls_json_.push_back(
        {{"id", NewToolCallId()},
         {"type", "function"},
         {"function", {{"name", call.name}, {"arguments", call.arguments}}}});
  }
  if (logprobs_ && !out.logprobs.empty()) {
    Json lp = LogprobsJson(out.logprobs, &text_offset_);
    if (kind_ == ApiKind::kChat) {
      for (Json& one : lp) logprobs_json_["content"].push_back(std::move(one));
    } else {
      for (const char* key : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
        for (Json& one : lp[key]) logprobs_json_[key].push_back(std::move(one));
      }
    }
  }
  if (out.finished) {
    finished_ = true;
    last_ = out;
  }
}

Json ChoiceBuilder::Choice() const {
  Json c = {{"index", index_}};
  if (kind_ == ApiKind::kChat) {
    Json message = {{"role", "assistant"}};
    message["content"] = text_.empty() && tool_calls_ > 0 ? Json(nullptr) : Json(text_);
    message["reasoning_content"] = reasoning_.empty() ? Json(nullptr) : Json(reasoning_);
    if (tool_calls_ > 0) message["tool_calls"] = tool_calls_json_;
    c["message"] = std::move(message);
  } else {
    c["text"] = text_;
  }
  c["logprobs"] = logprobs_ ? logprobs_json_ : Json(nullptr);
  c["finish_reason"] = FinishReasonText();
  return c;
}

Json UsageJson(const std::vector<ChoiceBuilder>& choices) {
  int64_t prompt = 0, completion = 0, cached = 0;
  if (!choices.empty()) {
    prompt = choices[0].last().prompt_tokens;
    cached = choices[0].last().cached_tokens;
  }
  for (const ChoiceBuilder& c : choices) completion += c.last().completion_tokens;
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

Json Envelope(const ApiRequest& request, bool chunk, int64_t created) {
  const char* object = request.kind == ApiKind::kCompletion ? "text_completion"
                       : chunk                              ? "chat.completion.chunk"
                                                            : "chat.completion";
  return {{"id", request.id}, {"object", object}, {"created", created}, {"model", request.model}};
}

}  // namespace tessera
