// OpenAI's HTTP API <-> engine requests and outputs: the JSON half of rpc/openai_server.
//
// Requests (/v1/chat/completions, /v1/completions) are read into a tessera.v1.GenerateRequest and
// go through the same ToEngineRequest as gRPC, so both front ends validate, render the chat
// template and tokenize alike (the same greedy request gives the same ids and text). `n` > 1 is
// n engine requests with ids "<id>-<i>" and the same prompt (the prefix cache shares the prompt's
// full KV blocks once the first has computed them). Outputs become OpenAI's response objects or
// SSE chunks: reasoning in `reasoning_content`, tool calls with `call_...` ids and JSON-string
// arguments, `finish_reason` stop/length/tool_calls, usage with cached prompt tokens.
//
// Errors are absl::Status; InvalidArgument ones carry the offending field (OpenAI's "param") as a
// payload. HttpStatusOf and ErrorJson give OpenAI's error shape and the HTTP status.
#pragma once

#include <cstdint>
#include <string>
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

struct ApiContext {
  const Frontend* frontend = nullptr;
  std::string model_name;     // the only model served; others are 404
  int64_t max_model_len = 0;  // context window (for chat's default max_tokens)
};

struct ApiRequest {
  ApiKind kind = ApiKind::kChat;
  std::string id;  // chatcmpl-... / cmpl-... (or the request's request_id)
  std::string model;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // return logprobs
  int top_logprobs = 0;
  std::vector<EngineRequest> choices;  // one per `n`, ids "<id>" (n = 1) or "<id>-<i>"
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
  const EngineOutput& last() const { return last_; }  // the finished output (usage)

 private:
  Json LogprobsJson(const std::vector<TokenLogprobs>& logprobs, int64_t* text_offset) const;
  const char* FinishReasonText() const;

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
};

// The usage object for a request's finished choices: the prompt counted once.
Json UsageJson(const std::vector<ChoiceBuilder>& choices);
// The response envelope: id, object, created, model (+ choices, usage by the caller).
Json Envelope(const ApiRequest& request, bool chunk, int64_t created);
// "call_" and 24 random alphanumerics.
std::string NewToolCallId();

}  // namespace tessera
