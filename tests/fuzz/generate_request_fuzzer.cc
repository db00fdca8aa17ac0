// libFuzzer target: the request path of the gRPC front end. Arbitrary bytes are parsed as a
// tessera.v1.GenerateRequest (as gRPC would) and converted by ToEngineRequest (rpc/convert.cc) with
// Qwen3's tokenizer and chat template, then the result is turned into a response.
//
// Whatever the bytes, nothing crashes or trips a sanitizer, and a request that converts keeps
// what was sent: exactly one input; prompt ids equal to the ids on the wire (never truncated);
// max_tokens in [1, 2^31); logprobs, top_k and priority equal to the values sent; stop ids equal to
// those sent. A refusal is INVALID_ARGUMENT with a message.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "kernels/base/check.h"
#include "rpc/convert.h"

namespace {

using tessera::Frontend;

const Frontend& Qwen3Frontend() {
  static const Frontend* frontend = [] {
    const char* dir = std::getenv("TESSERA_FUZZ_TOKENIZER_DIR");
    const std::string path = dir != nullptr ? dir : TESSERA_FUZZ_TOKENIZER_DIR;
    auto tokenizer = tessera::Tokenizer::Load(path);
    TESSERA_CHECK(tokenizer.ok()) << tokenizer.status();
    auto chat = tessera::ChatTemplate::Load(path);
    TESSERA_CHECK(chat.ok()) << chat.status();
    auto* f = new Frontend();
    f->tokenizer = tokenizer->release();
    f->chat_template = new tessera::ChatTemplate(*std::move(chat));
    return f;
  }();
  return *frontend;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tessera::v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;  // gRPC refuses these
  absl::StatusOr<tessera::EngineRequest> converted =
      tessera::ToEngineRequest(request, Qwen3Frontend(), "fuzz");
  if (!converted.ok()) {
    TESSERA_CHECK(converted.status().code() == absl::StatusCode::kInvalidArgument)
        << converted.status();
    TESSERA_CHECK(!converted.status().message().empty());
    return 0;
  }
  const tessera::EngineRequest& e = *converted;
  const int inputs = (request.prompt_token_ids_size() > 0) + !request.prompt().empty() +
                     (request.messages_size() > 0);
  TESSERA_CHECK_EQ(inputs, 1);
  if (request.prompt_token_ids_size() > 0) {
    TESSERA_CHECK_EQ(e.prompt.size(), static_cast<size_t>(request.prompt_token_ids_size()));
    for (size_t i = 0; i < e.prompt.size(); ++i)
      TESSERA_CHECK_EQ(static_cast<int64_t>(e.prompt[i]), request.prompt_token_ids(i));
  }
  TESSERA_CHECK(e.max_tokens >= 1);
  TESSERA_CHECK_EQ(static_cast<uint64_t>(e.max_tokens), request.max_tokens());
  if (request.has_logprobs()) {
    TESSERA_CHECK_EQ(static_cast<uint64_t>(e.top_logprobs), request.logprobs());
  }
  if (request.sampling().has_top_k()) {
    TESSERA_CHECK_EQ(static_cast<int64_t>(e.sampling.top_k), request.sampling().top_k());
  }
  TESSERA_CHECK_EQ(static_cast<int64_t>(e.priority), request.priority());
  TESSERA_CHECK_EQ(e.stop_token_ids.size(), static_cast<size_t>(request.stop_token_ids_size()));
  for (size_t i = 0; i < e.stop_token_ids.size(); ++i)
    TESSERA_CHECK_EQ(static_cast<int64_t>(e.stop_token_ids[i]), request.stop_token_ids(i));

  // Back out: a response of the request's own ids serialises.
  tessera::EngineOutput out;
  out.token_ids.assign(e.prompt.begin(), e.prompt.begin() + std::min<size_t>(e.prompt.size(), 8));
  out.finished = true;
  out.finish_reason = tessera::FinishReason::kLength;
  std::string bytes;
  TESSERA_CHECK(tessera::ToResponse(out, "fuzz").SerializeToString(&bytes));
  return 0;
}
