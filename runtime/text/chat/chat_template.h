// Chat templates: a model's Jinja chat template applied to a conversation, as transformers'
// `tokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=..., **kwargs)` does.
//
// Where the template comes from (transformers 5.x rules, checked against its loader):
//   1. DIR/chat_template.jinja ("default") and DIR/additional_chat_templates/NAME.jinja; if any of
//      these files exist, tokenizer_config.json's `chat_template` is ignored;
//   2. otherwise tokenizer_config.json's `chat_template`: a string, or a list of
//      {"name": ..., "template": ...}.
// With several named templates, "tool_use" is used when the request has tools (not null) and the
// template set has one, else "default"; no "default" is an error.
//
// What the template sees, as transformers passes it: `messages` (top-level message keys whose
// value is null removed; `reasoning_content` filled from `reasoning` / `thinking` and `thinking`
// from it), `tools` (or none), `documents` (or none), `add_generation_prompt`, the tokenizer's
// named special tokens (`eos_token`, `pad_token`, ... from tokenizer_config.json), and extra
// keyword arguments (`enable_thinking` when the request has it, `chat_template_kwargs`).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "runtime/text/chat/jinja.h"

namespace tessera {

struct ChatRequest {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  nlohmann::ordered_json tools;      // null, or an array of tool JSON schemas
  nlohmann::ordered_json documents;  // null, or an array of documents
  // Absent: the template sees `enable_thinking` undefined (Qwen3 then thinks).
  std::optional<nlohmann::ordered_json> enable_thinking;
  bool add_generation_prompt = false;
  // More template variables, like vLLM's chat_template_kwargs.
  nlohmann::ordered_json template_kwargs = nlohmann::ordered_json::object();
};

// {"messages": [...], "tools": [...] | null, "enable_thinking": bool, "add_generation_prompt":
// bool, "documents": [...], "chat_template_kwargs": {...}}. Only "messages" is required. Errors
// name the field.
absl::StatusOr<ChatRequest> ParseChatRequest(const nlohmann::ordered_json& json);

class ChatTemplate {
 public:
  // DIR is a model or tokenizer directory. Errors name the file.
  static absl::StatusOr<ChatTemplate> Load(const std::string& dir);
  // One template from text; `special_tokens` become template variables (e.g. {"eos_token", ...}).
  static absl::StatusOr<ChatTemplate> FromString(
      std::string_view source,
      std::vector<std::pair<std::string, std::string>> special_tokens = {});

  // The prompt text. Errors (bad request, template errors with line and column, the template's
  // own raise_exception) are InvalidArgument.
  absl::StatusOr<std::string> Render(const ChatRequest& request) const;

  // Where the template came from, for messages ("DIR/tokenizer_config.json").
  const std::string& origin() const { return origin_; }
  // Whether the template knows think blocks (mentions "</think>"): the model reasons, and its
  // output goes through the reasoning parser (see ChatOutputParser::OptionsForPrompt).
  bool knows_think_tags() const { return knows_think_tags_; }
  // The named special tokens the template sees, in tokenizer_config.json order.
  const std::vector<std::pair<std::string, std::string>>& special_tokens() const {
    return special_tokens_;
  }

 private:
  struct Named {
    std::string name;
    jinja::Template compiled;
  };
  std::vector<Named> templates_;
  bool named_set_ = false;
  bool knows_think_tags_ = false;  // several templates chosen by name (or one non-"default" name)
  std::vector<std::pair<std::string, std::string>> special_tokens_;
  std::string origin_;
};

}  // namespace tessera
