// tessera chat-template: a model's chat template applied to a request, from the command line.
//
//   tessera chat-template --tokenizer DIR --request-file F.json [--json]
//
// DIR is a model or tokenizer directory; the template is DIR/chat_template.jinja, or
// tokenizer_config.json's "chat_template" (see runtime/text/chat/chat_template.h for the rules).
// The request is {"messages": [...], "tools": [...] | null, "enable_thinking": bool,
// "add_generation_prompt": bool} (plus optional "documents" and "chat_template_kwargs"); F may be
// "-" for stdin. Prints the rendered text exactly (no newline added), or with --json one line
// {"text": "...", "ids": [...]} where ids are the text encoded with DIR's tokenizer, as
// transformers' apply_chat_template(..., tokenize=True) gives them.
// Exit codes: 0 ok, 1 error (bad files, bad request, template error), 2 usage.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "launch/cli.h"
#include "launch/commands.h"
#include "runtime/text/chat/chat_template.h"
#include "runtime/text/tokenizer/tokenizer.h"

namespace tessera {
namespace {

constexpr char kName[] = "chat-template";
int Error(const std::string& message) {
  std::fprintf(stderr, "tessera %s: %s\n", kName, message.c_str());
  return 1;
}

bool ReadRequest(const std::string& path, std::string* out) {
  if (path == "-") {
    *out = std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    return !std::cin.bad();
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  *out = std::move(buffer).str();
  return !in.bad();
}

}  // namespace

int ChatTemplateCommand(int argc, char** argv) {
  std::string dir, request_path;
  bool as_json = false;
  std::unique_ptr<CLI::App> app =
      NewCommandLine(kName, "Render a chat request with a model's chat template.");
  app->add_option("--tokenizer", dir, "model or tokenizer directory (its chat template)")
      ->type_name("DIR")
      ->required();
  app->add_option("--request-file", request_path,
                  "the request: {\"messages\": [...], \"tools\": [...], ...}; - for stdin")
      ->type_name("FILE")
      ->required();
  app->add_flag("--json", as_json,
                "print {\"text\": ..., \"ids\": [...]}, the ids from DIR's tokenizer");
  if (std::optional<int> code = ParseCommandLine(*app, argc, argv)) return *code;

  std::string request_text;
  if (!ReadRequest(request_path, &request_text)) return Error(request_path + ": cannot read");
  const nlohmann::ordered_json request_json =
      nlohmann::ordered_json::parse(request_text, nullptr, /*allow_exceptions=*/false);
  if (request_json.is_discarded()) return Error(request_path + ": not valid JSON");
  absl::StatusOr<ChatRequest> request = ParseChatRequest(request_json);
  if (!request.ok()) return Error(request_path + ": " + std::string(request.status().message()));

  absl::StatusOr<ChatTemplate> chat = ChatTemplate::Load(dir);
  if (!chat.ok()) return Error(std::string(chat.status().message()));
  absl::StatusOr<std::string> text = chat->Render(*request);
  if (!text.ok()) return Error(std::string(text.status().message()));

  if (!as_json) {
    std::fwrite(text->data(), 1, text->size(), stdout);
    return std::fflush(stdout) == 0 ? 0 : 1;
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(dir);
  if (!tokenizer.ok()) return Error(std::string(tokenizer.status().message()));
  absl::StatusOr<std::vector<int32_t>> ids = (*tokenizer)->Encode(*text);
  if (!ids.ok()) return Error(std::string(ids.status().message()));
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  out["text"] = *text;
  out["ids"] = *ids;
  const std::string line =
      out.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::ordered_json::error_handler_t::replace) +
      "\n";
  std::fwrite(line.data(), 1, line.size(), stdout);
  return std::fflush(stdout) == 0 ? 0 : 1;
}

}  // namespace tessera
