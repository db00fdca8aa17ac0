// Protocol <-> runtime: tessera.v1 messages to engine requests and back, absl::Status to
// grpc::Status. Every check here answers INVALID_ARGUMENT with the reason.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "runtime/engine/engine.h"
#include "runtime/text/chat/chat_template.h"
#include "runtime/text/tokenizer/tokenizer.h"
#include "tessera/v1/generation.pb.h"

namespace tessera {

grpc::Status ToGrpcStatus(const absl::Status& status);

// What the model directory provides to turn text and chat into ids.
struct Frontend {
  const Tokenizer* tokenizer = nullptr;         // null: only prompt_token_ids requests work
  const ChatTemplate* chat_template = nullptr;  // null: chat requests are refused
  SamplingParams default_sampling;              // generation_config.json's, or the plain defaults
};

// UTF-8 validity of a request text field: InvalidArgument naming `field` and the byte offset.
absl::Status CheckUtf8(const std::string& field, const std::string& text);

// Builds the chat template's input from the protocol's messages, tools and switches.
absl::StatusOr<ChatRequest> ToChatRequest(
    const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages,
    const std::string& tools_json, const std::optional<bool>& enable_thinking,
    bool add_generation_prompt);

// Validates a GenerateRequest and turns it into an engine request (tokenizing the text or
// rendering the chat). `request_id` is the id to use (the request's, or one made by the server).
// Chat messages are rendered exactly as ToTokenizeResponse renders them.
absl::StatusOr<EngineRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                              const Frontend& frontend,
                                              const std::string& request_id);

v1::GenerateResponse ToResponse(const EngineOutput& output, const std::string& request_id);

// The Tokenize RPC: the request's text, or its chat messages rendered by the chat template first
// (the rendering Generate gives the same messages; `rendered` then holds the text), as token ids.
// FAILED_PRECONDITION when the model lacks the tokenizer or the chat template it needs.
absl::StatusOr<v1::TokenizeResponse> ToTokenizeResponse(const v1::TokenizeRequest& request,
                                                        const Frontend& frontend);

}  // namespace tessera
