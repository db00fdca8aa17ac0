// OpenAI's HTTP API <-> engine requests and outputs: the JSON half of rpc/openai_server.
//
// Requests (/v1/chat/completions, /v1/completions) are read into a tessera.v1.GenerateRequest and
// go through the same ToEngineRequest as gRPC, so both front ends validate, render the chat
// template and tokenize alike (the same greedy request gives the same ids and text). `n` > 1 is
// n engine requests with ids "<id>-<i>", the same prompt and one prompt group (the engine
// computes the prompt once). tool_choice required or a named function is enforced by forcing the
// start of the call (ForcedToolChoice). Outputs become OpenAI's response objects or
// SSE chunks: reasoning in `reasoning_content`, tool calls with `call_...` ids and JSON-string
// arguments, `finish_reason` stop/length/tool_calls, usage with cached prompt tokens.
//
// Errors are absl::Status; InvalidArgument ones carry the offending field (OpenAI's "param") as a
// payload. HttpStatusOf and ErrorJson give OpenAI's error shape and the HTTP status.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "rpc/convert.h"
#include "runtime/engine/engine.h"

namespace tessera {

using Json = nlohmann::ordered_json;

// InvalidArgument for `param` (the request field, e.g. "messages[0].content").
absl::Status InvalidField(const std::string& param, const std::string& message);
// The HTTP status for an error: 400 invalid, 401, 404, 429 queue full, 503 unavailable, ...
int HttpStatusOf(const absl::Status& status);
// {"error": {"message", "type", "param", "code"}}.
Json ErrorJson(const absl::Status& status);
// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string Dump(const Json& j);

enum class ApiKind { kChat, kCompletion };

// tool_choice `required` or a named function, enforced without guided decoding by forcing the
// start of the assistant turn: the prompt ends (after an empty think block when the model would
// reason) with Qwen3's call opening `<tool_call>\n{"name": "` (required: the model writes the
// name) or `<tool_call>\n{"name": "NAME", "arguments": ` (named), and "</tool_call>" is a stop
// string (one call per choice).
struct ForcedToolChoice {
  std::string name;                // named: the function; empty: required
  std::vector<std::string> tools;  // required: the names the model may write
};

// Reads the model's continuation of a forced call: the function's name (required), the
// `, "arguments": ` that follows it, then the arguments, a JSON value kept verbatim (whitespace
// before it dropped) up to the character that ends it. A value cut short (max_tokens, or the
// model ended its turn) stays as far as it got: the arguments may then be invalid JSON.
class ForcedCallScanner {
 public:
  explicit ForcedCallScanner(const ForcedToolChoice& choice);
  // Feeds generated text; returns the arguments' text it adds.
  std::string Push(std::string_view text);
  bool name_known() const { return state_ != State::kName && state_ != State::kFailed; }
  const std::string& name() const { return name_; }
  bool complete() const { return state_ == State::kDone; }
  // Required only: INTERNAL (HTTP 500) when the model names a function that is not among the
  // tools or writes something else than `, "arguments": ` after the name.
  const absl::Status& status() const { return status_; }

 private:
  enum class State { kName, kSeparator, kArgsStart, kArgs, kDone, kFailed };
  void Fail(const std::string& why);

  std::vector<std::string> tools_;
  State state_;
  std::string name_, raw_name_;
  size_t separator_ = 0;  // characters of `,"arguments":` matched
  char kind_ = 0;         // the value's first character: '{', '[', '"' or a scalar's
  int depth_ = 0;         // containers open
  bool in_string_ = false, escape_ = false;
  absl::Status status_;
};

struct ApiContext {
  const Frontend* frontend = nullptr;
  std::vector<std::string> model_names;  // the served names (others are 404); [0] is reported
  int64_t max_model_len = 0;             // context window (for chat's default max_tokens)
};

struct ApiRequest {
  ApiKind kind = ApiKind::kChat;
  std::string id;     // chatcmpl-... / cmpl-... (or the request's request_id)
  std::string model;  // the name responses report: the first served name
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // return logprobs
  int top_logprobs = 0;
  std::vector<EngineRequest> choices;           // one per `n`, ids "<id>" (n = 1) or "<id>-<i>"
  std::optional<ForcedToolChoice> forced_call;  // tool_choice required or a named function
};

// Parses and validates a request body. `id` is the server-made id unless the body has request_id.
absl::StatusOr<ApiRequest> ParseApiRequest(ApiKind kind, const std::string& body,
                                           const ApiContext& context, const std::string& id);

// Turns one choice's outputs into response pieces; one per choice of a request.
class ChoiceBuilder {
 public:
  ChoiceBuilder(const ApiRequest& request, int index, const Tokenizer* tokenizer);

  // Streaming: the delta chunks (choice objects, without the envelope) for one output. The first
  // call also gives the role chunk (chat); the last output gives the finish_reason chunk.
  std::vector<Json> Deltas(const EngineOutput& output);
  // Non-streaming: accumulate; Choice() gives the whole choice object afterwards.
  void Add(const EngineOutput& output);
  Json Choice() const;

  bool finished() const { return finished_; }
  // Not OK when a forced tool call (tool_choice required) failed: the request answers an error.
  const absl::Status& error() const { return error_; }
  const EngineOutput& last() const { return last_; }  // the finished output (usage)

 private:
  Json LogprobsJson(const std::vector<TokenLogprobs>& logprobs, int64_t* text_offset) const;
  const char* FinishReasonText() const;
  // Forced tool call: feeds the output's text to the scanner; the arguments' new text.
  std::string ScanForced(const EngineOutput& output);

  ApiKind kind_;
  bool logprobs_;
  int index_;
  const Tokenizer* tokenizer_;
  bool role_sent_ = false;
  bool finished_ = false;
  int tool_calls_ = 0;
  std::string text_, reasoning_;
  Json tool_calls_json_ = Json::array();
  Json logprobs_json_;  // accumulated (non-streaming)
  int64_t text_offset_ = 0;
  EngineOutput last_;
  std::shared_ptr<ForcedCallScanner> forced_;  // tool_choice required or named
  bool forced_named_ = false;
  std::string forced_arguments_;  // accumulated (non-streaming)
  absl::Status error_;
};

// The usage object for a request's finished choices: the prompt counted once.
Json UsageJson(const std::vector<ChoiceBuilder>& choices);
// The response envelope: id, object, created, model (+ choices, usage by the caller).
Json Envelope(const ApiRequest& request, bool chunk, int64_t created);
// "call_" and 24 random alphanumerics.
std::string NewToolCallId();

}  // namespace tessera
