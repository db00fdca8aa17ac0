// rpc/openai_convert: request fields and their errors (the field named as OpenAI's `param`), and
// the response pieces for outputs a live tiny model cannot produce on demand: tool calls
// (streamed as OpenAI does: id, type and name first, then the arguments), reasoning, finish
// reasons and usage.
#include "rpc/openai_convert.h"

#include <gtest/gtest.h>

#include <limits>
#include <set>

namespace tessera {
namespace {

ApiContext Context(const Frontend& frontend) {
  ApiContext c;
  c.frontend = &frontend;
  c.model_names = {"m", "alias"};
  c.max_model_len = 100;
  return c;
}

Json ErrorOf(const std::string& body, ApiKind kind = ApiKind::kCompletion) {
  Frontend frontend;  // no tokenizer: token-id prompts only
  absl::StatusOr<ApiRequest> r = ParseApiRequest(kind, body, Context(frontend), "cmpl-1");
  EXPECT_FALSE(r.ok()) << body;
  return ErrorJson(r.status());
}

TEST(OpenAIConvertTest, CompletionFields) {
  Frontend frontend;
  absl::StatusOr<ApiRequest> r = ParseApiRequest(
      ApiKind::kCompletion,
      R"({"model": "m", "prompt": [1, 2, 3], "max_tokens": 7, "temperature": 0.5, "top_k": -1,
          "seed": 9, "stop": "x", "n": 3, "logprobs": 2, "stream": true,
          "stream_options": {"include_usage": true}, "ignore_eos": true, "user": "u"})",
      Context(frontend), "cmpl-1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_TRUE(r->logprobs);
  ASSERT_EQ(r->choices.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const EngineRequest& e = r->choices[i];
    EXPECT_EQ(e.request_id, "cmpl-1-" + std::to_string(i));
    EXPECT_EQ(e.prompt, (std::vector<int32_t>{1, 2, 3}));
    EXPECT_EQ(e.max_tokens, 7);
    EXPECT_EQ(e.sampling.temperature, 0.5f);
    EXPECT_EQ(e.sampling.top_k, 0);
    EXPECT_EQ(*e.sampling.seed, 9u + i);  // distinct samples per choice
    EXPECT_EQ(e.stop, std::vector<std::string>{"x"});
    EXPECT_EQ(e.top_logprobs, 2);
    EXPECT_TRUE(e.ignore_eos);
  }
  absl::StatusOr<ApiRequest> one =
      ParseApiRequest(ApiKind::kCompletion, R"({"prompt": [[5, 6]], "request_id": "mine"})",
                      Context(frontend), "cmpl-2");
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->choices.size(), 1u);
  EXPECT_EQ(one->choices[0].request_id, "mine");
  EXPECT_EQ(one->choices[0].max_tokens, 16);  // the legacy default
  EXPECT_EQ(one->model, "m");
}

TEST(OpenAIConvertTest, ErrorsNameTheField) {
  EXPECT_EQ(ErrorOf(R"({"prompt": [1], "temperature": "hot"})")["error"]["param"], "temperature");
  EXPECT_EQ(ErrorOf(R"({"prompt": [1], "max_tokens": 0})")["error"]["param"], "max_tokens");
  EXPECT_EQ(ErrorOf(R"({"prompt": [1], "n": 0})")["error"]["param"], "n");
  EXPECT_EQ(ErrorOf(R"({"prompt": [1], "stop": 3})")["error"]["param"], "stop");
  EXPECT_EQ(ErrorOf(R"({"prompt": [[1], [2]]})")["error"]["param"], "prompt");
  EXPECT_EQ(ErrorOf(R"({"max_tokens": 1})")["error"]["param"], "prompt");
  EXPECT_EQ(ErrorOf("not json")["error"]["param"], "body");
  EXPECT_EQ(ErrorOf(R"({"messages": []})", ApiKind::kChat)["error"]["param"], "messages");
  EXPECT_EQ(ErrorOf(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
                    ApiKind::kChat)["error"]["param"],
            "messages[0].content[0].type");
  EXPECT_EQ(ErrorOf(R"({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "bogus",
                        "tools": [{"type": "function", "function": {"name": "f"}}]})",
                    ApiKind::kChat)["error"]["param"],
            "tool_choice");
}

TEST(OpenAIConvertTest, UnknownModelIs404) {
  Frontend frontend;
  absl::StatusOr<ApiRequest> r = ParseApiRequest(
      ApiKind::kCompletion, R"({"model": "gpt-4o", "prompt": [1]})", Context(frontend), "c");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(HttpStatusOf(r.status()), 404);
  EXPECT_EQ(ErrorJson(r.status())["error"]["code"], "model_not_found");
}

TEST(OpenAIConvertTest, ServedModelNames) {
  Frontend frontend;
  for (const char* body : {R"({"model": "alias", "prompt": [1]})", R"({"prompt": [1]})"}) {
    absl::StatusOr<ApiRequest> r =
        ParseApiRequest(ApiKind::kCompletion, body, Context(frontend), "c");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->model, "m");  // responses report the first served name
  }
  absl::StatusOr<ApiRequest> r = ParseApiRequest(
      ApiKind::kCompletion, R"({"model": "other", "prompt": [1]})", Context(frontend), "c");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(HttpStatusOf(r.status()), 404);
  EXPECT_NE(r.status().message().find("'m', 'alias'"), std::string::npos) << r.status();
}

TEST(OpenAIConvertTest, HttpStatuses) {
  EXPECT_EQ(HttpStatusOf(absl::InvalidArgumentError("x")), 400);
  EXPECT_EQ(HttpStatusOf(absl::UnauthenticatedError("x")), 401);
  EXPECT_EQ(HttpStatusOf(absl::NotFoundError("x")), 404);
  EXPECT_EQ(HttpStatusOf(absl::ResourceExhaustedError("x")), 429);
  EXPECT_EQ(HttpStatusOf(absl::UnavailableError("x")), 503);
  EXPECT_EQ(ErrorJson(absl::ResourceExhaustedError("full"))["error"]["type"], "rate_limit_error");
}

ApiRequest Chat(bool logprobs = false) {
  ApiRequest r;
  r.kind = ApiKind::kChat;
  r.id = "chatcmpl-1";
  r.model = "m";
  r.logprobs = logprobs;
  return r;
}

TEST(OpenAIConvertTest, StreamedToolCallsAndReasoning) {
  const ApiRequest api = Chat();
  ChoiceBuilder b(api, 0, nullptr);
  EngineOutput thinking;
  thinking.reasoning = "let me see";
  std::vector<Json> chunks = b.Deltas(thinking);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0]["delta"]["role"], "assistant");
  EXPECT_EQ(chunks[1]["delta"]["reasoning_content"], "let me see");
  EXPECT_FALSE(chunks[1]["delta"].contains("content"));

  EngineOutput calls;
  calls.tool_calls = {{"get_weather", R"({"city": "Paris"})"}, {"get_time", "{}"}};
  calls.finished = true;
  calls.finish_reason = FinishReason::kStop;
  chunks = b.Deltas(calls);
  ASSERT_EQ(chunks.size(), 5u);  // head + arguments per call, then the finish
  std::set<std::string> ids;
  for (int k = 0; k < 2; ++k) {
    const Json& head = chunks[2 * k]["delta"]["tool_calls"][0];
    EXPECT_EQ(head["index"], k);
    EXPECT_EQ(head["type"], "function");
    EXPECT_EQ(head["function"]["arguments"], "");
    const std::string id = head["id"];
    EXPECT_EQ(id.rfind("call_", 0), 0u);
    EXPECT_EQ(id.size(), 29u);
    ids.insert(id);
    const Json& args = chunks[2 * k + 1]["delta"]["tool_calls"][0];
    EXPECT_EQ(args["index"], k);
    EXPECT_FALSE(args.contains("id"));
    EXPECT_TRUE(args["function"]["arguments"].is_string());
  }
  EXPECT_EQ(ids.size(), 2u);
  EXPECT_EQ(chunks[0]["delta"]["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(chunks[1]["delta"]["tool_calls"][0]["function"]["arguments"], R"({"city": "Paris"})");
  EXPECT_EQ(chunks[4]["finish_reason"], "tool_calls");
  EXPECT_TRUE(b.finished());
}

TEST(OpenAIConvertTest, WholeChoiceWithToolCallsAndUsage) {
  const ApiRequest api = Chat();
  std::vector<ChoiceBuilder> builders;
  builders.emplace_back(api, 0, nullptr);
  builders.emplace_back(api, 1, nullptr);
  EngineOutput a;
  a.reasoning = "hmm";
  a.tool_calls = {{"f", R"({"x": 1})"}};
  a.finished = true;
  a.finish_reason = FinishReason::kStop;
  a.prompt_tokens = 10;
  a.completion_tokens = 4;
  a.cached_tokens = 8;
  builders[0].Add(a);
  EngineOutput b;
  b.text = "hello";
  b.finished = true;
  b.finish_reason = FinishReason::kLength;
  b.prompt_tokens = 10;
  b.completion_tokens = 3;
  builders[1].Add(b);
  const Json c0 = builders[0].Choice();
  EXPECT_TRUE(c0["message"]["content"].is_null());
  EXPECT_EQ(c0["message"]["reasoning_content"], "hmm");
  EXPECT_EQ(c0["message"]["tool_calls"][0]["function"]["arguments"], R"({"x": 1})");
  EXPECT_EQ(c0["finish_reason"], "tool_calls");
  const Json c1 = builders[1].Choice();
  EXPECT_EQ(c1["message"]["content"], "hello");
  EXPECT_TRUE(c1["message"]["reasoning_content"].is_null());
  EXPECT_EQ(c1["finish_reason"], "length");
  const Json usage = UsageJson(builders);
  EXPECT_EQ(usage["prompt_tokens"], 10);  // the shared prompt, once
  EXPECT_EQ(usage["completion_tokens"], 7);
  EXPECT_EQ(usage["total_tokens"], 17);
  EXPECT_EQ(usage["prompt_tokens_details"]["cached_tokens"], 8);
}

// Feeds `text` whole and one character at a time: the same arguments either way.
std::string ScanAll(const ForcedToolChoice& choice, const std::string& text,
                    ForcedCallScanner* whole) {
  std::string args = whole->Push(text);
  ForcedCallScanner bytes(choice);
  std::string by_byte;
  for (char c : text) by_byte += bytes.Push(std::string(1, c));
  EXPECT_EQ(by_byte, args) << text;
  EXPECT_EQ(bytes.complete(), whole->complete()) << text;
  return args;
}

TEST(OpenAIConvertTest, ForcedCallScannerNamed) {
  const ForcedToolChoice named{"get_weather", {}};
  ForcedCallScanner s(named);
  EXPECT_TRUE(s.name_known());
  EXPECT_EQ(ScanAll(named, " {\"city\": \"P}a\\\"ris\", \"n\": [1, {}]}}\n</tool_call>x", &s),
            R"({"city": "P}a\"ris", "n": [1, {}]})");
  EXPECT_TRUE(s.complete());
  EXPECT_TRUE(s.status().ok());
  EXPECT_EQ(s.Push("{more}"), "");  // after the value: ignored
  // A scalar ends at its delimiter; a value cut short stays as far as it got.
  ForcedCallScanner scalar(named);
  EXPECT_EQ(ScanAll(named, "42}\n", &scalar), "42");
  ForcedCallScanner cut(named);
  EXPECT_EQ(ScanAll(named, "{\"city\": \"Par", &cut), "{\"city\": \"Par");
  EXPECT_FALSE(cut.complete());
  EXPECT_TRUE(cut.status().ok());
}

TEST(OpenAIConvertTest, ForcedCallScannerRequired) {
  const ForcedToolChoice required{"", {"get_weather", "get_time"}};
  ForcedCallScanner s(required);
  EXPECT_FALSE(s.name_known());
  EXPECT_EQ(ScanAll(required, "get_time\" ,\n \"arguments\" : {\"city\": \"Oslo\"}}", &s),
            R"({"city": "Oslo"})");
  EXPECT_TRUE(s.name_known());
  EXPECT_EQ(s.name(), "get_time");
  EXPECT_TRUE(s.complete());
  ForcedCallScanner unknown(required);
  unknown.Push("rm_rf\", \"arguments\": {}}");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(unknown.status().message().find("'rm_rf'"), std::string::npos);
  EXPECT_FALSE(unknown.name_known());
  ForcedCallScanner malformed(required);
  malformed.Push("get_time\", \"args\": {}}");
  EXPECT_EQ(malformed.status().code(), absl::StatusCode::kInternal);
}

TEST(OpenAIConvertTest, ForcedNamedCallStreamsAndFinishesWithStop) {
  ApiRequest api = Chat();
  api.forced_call = ForcedToolChoice{"get_weather", {}};
  ChoiceBuilder b(api, 0, nullptr);
  EngineOutput first;
  first.text = "{\"city\": ";
  std::vector<Json> chunks = b.Deltas(first);
  ASSERT_EQ(chunks.size(), 3u);  // role, the call's head, its first arguments
  const Json& head = chunks[1]["delta"]["tool_calls"][0];
  EXPECT_EQ(head["function"]["name"], "get_weather");
  EXPECT_EQ(head["function"]["arguments"], "");
  EXPECT_EQ(chunks[2]["delta"]["tool_calls"][0]["function"]["arguments"], "{\"city\": ");
  EXPECT_FALSE(chunks[2]["delta"]["tool_calls"][0].contains("id"));
  EngineOutput last;
  last.text = "\"Paris\"}}\n";
  last.finished = true;
  last.finish_reason = FinishReason::kStop;
  chunks = b.Deltas(last);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0]["delta"]["tool_calls"][0]["function"]["arguments"], "\"Paris\"}");
  EXPECT_EQ(chunks[1]["finish_reason"], "stop");  // as vLLM and OpenAI for a named function
  EXPECT_TRUE(b.error().ok());

  ChoiceBuilder whole(api, 0, nullptr);
  whole.Add(first);
  whole.Add(last);
  const Json c = whole.Choice();
  EXPECT_TRUE(c["message"]["content"].is_null());
  EXPECT_EQ(c["message"]["tool_calls"].size(), 1u);
  EXPECT_EQ(c["message"]["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(c["message"]["tool_calls"][0]["function"]["arguments"], R"({"city": "Paris"})");
  EXPECT_EQ(c["finish_reason"], "stop");
}

TEST(OpenAIConvertTest, ForcedRequiredCall) {
  ApiRequest api = Chat();
  api.forced_call = ForcedToolChoice{"", {"get_weather", "get_time"}};
  EngineOutput out;
  out.text = "get_time\", \"arguments\": {}}";
  out.finished = true;
  out.finish_reason = FinishReason::kStop;
  ChoiceBuilder b(api, 0, nullptr);
  b.Add(out);
  EXPECT_TRUE(b.error().ok());
  EXPECT_EQ(b.Choice()["message"]["tool_calls"][0]["function"]["name"], "get_time");
  EXPECT_EQ(b.Choice()["finish_reason"], "tool_calls");
  // The model may call a function that is not offered: the request fails (HTTP 500).
  out.text = "nope\", \"arguments\": {}}";
  ChoiceBuilder bad(api, 0, nullptr);
  bad.Add(out);
  EXPECT_EQ(HttpStatusOf(bad.error()), 500);
  // An output that ends before the name is done fails too.
  out.text = "get_ti";
  ChoiceBuilder cut(api, 0, nullptr);
  EXPECT_EQ(cut.Deltas(out).size(), 2u);  // role and finish; the server sends the error instead
  EXPECT_FALSE(cut.error().ok());
}

TEST(OpenAIConvertTest, LogprobsWithoutATokenizerUseIds) {
  const ApiRequest api = Chat(/*logprobs=*/true);
  ChoiceBuilder b(api, 0, nullptr);
  EngineOutput out;
  out.text = "a";
  out.logprobs = {{{5, -0.5f}, {{5, -0.5f}, {7, -1.5f}}}};
  out.logprobs[0].chosen.logprob = -std::numeric_limits<float>::infinity();
  std::vector<Json> chunks = b.Deltas(out);
  ASSERT_EQ(chunks.size(), 2u);
  const Json& lp = chunks[1]["logprobs"]["content"][0];
  EXPECT_EQ(lp["token"], "token_id:5");
  EXPECT_EQ(lp["logprob"], -9999.0);  // -inf has no JSON spelling
  EXPECT_EQ(lp["top_logprobs"].size(), 2u);
}

}  // namespace
}  // namespace tessera
