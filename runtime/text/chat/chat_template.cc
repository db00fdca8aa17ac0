#include "runtime/text/chat/chat_template.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "runtime/text/chat/concat.h"
#include "runtime/text/chat/py_json.h"
#include "runtime/text/chat/py_text.h"

namespace tessera {
namespace {

using jinja::Concat;
using jinja::Value;
using Json = nlohmann::ordered_json;

// The tokenizer attributes transformers passes to templates (SPECIAL_TOKENS_ATTRIBUTES).
constexpr const char* kSpecialTokenNames[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                              "pad_token", "cls_token", "mask_token"};

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(Concat("cannot open ", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<Json> ReadJson(const std::filesystem::path& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  Json json = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return absl::InvalidArgumentError(Concat(path.string(), ": not valid JSON"));
  }
  return json;
}

// A special token in tokenizer_config.json: "<|im_end|>" or {"content": "<|im_end|>", ...}.
std::optional<std::string> TokenContent(const Json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return std::nullopt;
}

// transformers drops message keys whose value is None and aliases the reasoning fields:
// reasoning_content <- first non-null of (reasoning_content, thinking, reasoning), with
// `thinking` first in key order (gpt-oss templates read that name).
Value PrepareMessage(const Json& message) {
  Json cleaned = Json::object();
  for (const auto& [key, value] : message.items()) {
    if (!value.is_null()) cleaned[key] = value;
  }
  const Json* reasoning = nullptr;
  for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
    if (cleaned.contains(key)) {
      reasoning = &cleaned[key];
      break;
    }
  }
  if (reasoning == nullptr) return jinja::FromJson(cleaned);
  Json aliased = Json::object();
  aliased["thinking"] = *reasoning;
  for (const auto& [key, value] : cleaned.items()) aliased[key] = value;
  aliased["reasoning_content"] = *reasoning;
  return jinja::FromJson(aliased);
}

}  // namespace

absl::StatusOr<ChatRequest> ParseChatRequest(const Json& json) {
  if (!json.is_object()) return absl::InvalidArgumentError("chat request: not a JSON object");
  // Checked before anything is copied: copying and converting JSON recurse.
  if (jinja::JsonDeeperThan(json, jinja::kMaxJsonDepth)) {
    return absl::InvalidArgumentError(
        Concat("chat request: nests deeper than ", jinja::kMaxJsonDepth, " levels"));
  }
  ChatRequest request;
  if (!json.contains("messages") || !json["messages"].is_array()) {
    return absl::InvalidArgumentError("chat request: \"messages\" must be an array");
  }
  request.messages = json["messages"];
  for (size_t i = 0; i < request.messages.size(); ++i) {
    if (!request.messages[i].is_object()) {
      return absl::InvalidArgumentError(Concat("chat request: messages[", i, "] is not an object"));
    }
  }
  if (json.contains("tools")) {
    const Json& tools = json["tools"];
    if (!tools.is_null() && !tools.is_array()) {
      return absl::InvalidArgumentError("chat request: \"tools\" must be an array or null");
    }
    for (size_t i = 0; tools.is_array() && i < tools.size(); ++i) {
      if (!tools[i].is_object()) {
        return absl::InvalidArgumentError(
            Concat("chat request: tools[", i, "] is not a JSON schema object"));
      }
    }
    request.tools = tools;
  }
  if (json.contains("documents")) {
    const Json& documents = json["documents"];
    if (!documents.is_null() && !documents.is_array()) {
      return absl::InvalidArgumentError("chat request: \"documents\" must be an array or null");
    }
    for (size_t i = 0; documents.is_array() && i < documents.size(); ++i) {
      if (!documents[i].is_object()) {
        return absl::InvalidArgumentError(
            Concat("chat request: documents[", i, "] is not an object"));
      }
    }
    request.documents = documents;
  }
  if (json.contains("enable_thinking")) request.enable_thinking = json["enable_thinking"];
  if (json.contains("add_generation_prompt")) {
    const Json& agp = json["add_generation_prompt"];
    if (!agp.is_boolean()) {
      return absl::InvalidArgumentError("chat request: \"add_generation_prompt\" must be a bool");
    }
    request.add_generation_prompt = agp.get<bool>();
  }
  if (json.contains("chat_template_kwargs") && !json["chat_template_kwargs"].is_null()) {
    if (!json["chat_template_kwargs"].is_object()) {
      return absl::InvalidArgumentError("chat request: \"chat_template_kwargs\" must be an object");
    }
    request.template_kwargs = json["chat_template_kwargs"];
  }
  return request;
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromString(
    std::string_view source, std::vector<std::pair<std::string, std::string>> special_tokens) {
  absl::StatusOr<jinja::Template> compiled = jinja::Template::Parse(source);
  if (!compiled.ok()) {
    return absl::InvalidArgumentError(
        Concat("chat template: ", StdView(compiled.status().message())));
  }
  ChatTemplate t;
  t.templates_.push_back({"default", std::move(*compiled)});
  t.knows_think_tags_ = source.find("</think>") != std::string_view::npos;
  t.special_tokens_ = std::move(special_tokens);
  t.origin_ = "chat template";
  return t;
}

absl::StatusOr<ChatTemplate> ChatTemplate::Load(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path root(dir);
  const fs::path config_path = root / "tokenizer_config.json";
  Json config = Json::object();
  // The std::error_code overloads: the throwing ones would let an exception out of the module.
  std::error_code ec;
  const bool have_config = fs::exists(config_path, ec);
  if (have_config) {
    absl::StatusOr<Json> parsed = ReadJson(config_path);
    if (!parsed.ok()) return parsed.status();
    if (!parsed->is_object()) {
      return absl::InvalidArgumentError(Concat(config_path.string(), ": not a JSON object"));
    }
    config = std::move(*parsed);
  }

  ChatTemplate t;
  std::vector<std::pair<std::string, std::string>> sources;  // name -> text
  std::vector<std::string> origins;
  const fs::path jinja_path = root / "chat_template.jinja";
  if (fs::exists(jinja_path, ec)) {
    absl::StatusOr<std::string> text = ReadFile(jinja_path);
    if (!text.ok()) return text.status();
    sources.emplace_back("default", std::move(*text));
    origins.push_back(jinja_path.string());
  }
  const fs::path extra_dir = root / "additional_chat_templates";
  if (fs::is_directory(extra_dir, ec)) {
    std::vector<fs::path> files;
    for (fs::directory_iterator it(extra_dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() == ".jinja") files.push_back(it->path());
    }
    if (ec) return absl::NotFoundError(Concat(extra_dir.string(), ": ", ec.message()));
    std::sort(files.begin(), files.end());
    for (const fs::path& file : files) {
      absl::StatusOr<std::string> text = ReadFile(file);
      if (!text.ok()) return text.status();
      sources.emplace_back(file.stem().string(), std::move(*text));
      origins.push_back(file.string());
    }
  }
  if (sources.empty()) {
    if (!have_config) {
      return absl::NotFoundError(
          Concat(dir, ": no chat_template.jinja and no tokenizer_config.json"));
    }
    const auto it = config.find("chat_template");
    if (it == config.end() || it->is_null()) {
      return absl::NotFoundError(Concat(config_path.string(), ": no \"chat_template\""));
    }
    if (it->is_string()) {
      sources.emplace_back("default", it->get<std::string>());
    } else if (it->is_array()) {
      for (size_t i = 0; i < it->size(); ++i) {
        const Json& entry = (*it)[i];
        if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() ||
            !entry.contains("template") || !entry["template"].is_string()) {
          return absl::InvalidArgumentError(
              Concat(config_path.string(), ": chat_template[", i,
                     "] must be {\"name\": string, \"template\": string}"));
        }
        sources.emplace_back(entry["name"].get<std::string>(),
                             entry["template"].get<std::string>());
      }
      t.named_set_ = true;
    } else {
      return absl::InvalidArgumentError(
          Concat(config_path.string(), ": \"chat_template\" must be a string or a list"));
    }
    origins.assign(sources.size(), config_path.string());
  } else if (sources.size() > 1 || sources[0].first != "default") {
    t.named_set_ = true;
  }
  for (size_t i = 0; i < sources.size(); ++i) {
    absl::StatusOr<jinja::Template> compiled = jinja::Template::Parse(sources[i].second);
    if (!compiled.ok()) {
      return absl::InvalidArgumentError(Concat(origins[i], ": chat template '", sources[i].first,
                                               "': ", StdView(compiled.status().message())));
    }
    t.templates_.push_back({sources[i].first, std::move(*compiled)});
    t.knows_think_tags_ |= sources[i].second.find("</think>") != std::string::npos;
  }
  t.origin_ = origins.size() == 1 ? origins[0] : Concat(dir, " (chat templates)");

  // Named special tokens: tokenizer_config.json, or the legacy special_tokens_map.json when the
  // config has no added_tokens_decoder (as transformers reads them).
  Json tokens = Json::object();
  for (const char* name : kSpecialTokenNames) {
    if (config.contains(name)) tokens[name] = config[name];
  }
  const fs::path map_path = root / "special_tokens_map.json";
  if (!config.contains("added_tokens_decoder") && fs::exists(map_path, ec)) {
    absl::StatusOr<Json> map = ReadJson(map_path);
    if (!map.ok()) return map.status();
    for (const char* name : kSpecialTokenNames) {
      if (map->is_object() && map->contains(name)) tokens[name] = (*map)[name];
    }
  }
  for (const char* name : kSpecialTokenNames) {
    if (!tokens.contains(name)) continue;
    if (std::optional<std::string> content = TokenContent(tokens[name])) {
      t.special_tokens_.emplace_back(name, std::move(*content));
    }
  }
  return t;
}

absl::StatusOr<std::string> ChatTemplate::Render(const ChatRequest& request) const {
  if (!request.messages.is_array() || request.messages.empty()) {
    return absl::InvalidArgumentError(
        "Cannot apply chat template to an empty conversation. Provide at least one message.");
  }
  for (const Json* part :
       {&request.messages, &request.tools, &request.documents, &request.template_kwargs}) {
    if (jinja::JsonDeeperThan(*part, jinja::kMaxJsonDepth)) {
      return absl::InvalidArgumentError(
          Concat("chat request: nests deeper than ", jinja::kMaxJsonDepth, " levels"));
    }
  }
  const Named* chosen = &templates_[0];
  if (named_set_) {
    const auto find = [&](std::string_view name) -> const Named* {
      for (const Named& n : templates_) {
        if (n.name == name) return &n;
      }
      return nullptr;
    };
    const Named* tool_use = request.tools.is_null() ? nullptr : find("tool_use");
    chosen = tool_use ? tool_use : find("default");
    if (chosen == nullptr) {
      std::vector<std::string> names;
      for (const Named& n : templates_) names.push_back(n.name);
      std::sort(names.begin(), names.end());
      std::string list;
      for (const std::string& n : names) list += Concat(list.empty() ? "" : ", ", "'", n, "'");
      return absl::InvalidArgumentError(Concat(
          origin_, ": several chat templates and none named 'default' (available: ", list, ")"));
    }
  }

  std::vector<std::pair<std::string, Value>> variables;
  for (const auto& [name, content] : special_tokens_) {
    variables.emplace_back(name, Value::String(content));
  }
  if (request.enable_thinking) {
    variables.emplace_back("enable_thinking", jinja::FromJson(*request.enable_thinking));
  }
  for (const auto& [key, value] : request.template_kwargs.items()) {
    variables.emplace_back(key, jinja::FromJson(value));
  }
  std::vector<Value> messages;
  for (size_t i = 0; i < request.messages.size(); ++i) {
    if (!request.messages[i].is_object()) {
      return absl::InvalidArgumentError(Concat("messages[", i, "] is not an object"));
    }
    messages.push_back(PrepareMessage(request.messages[i]));
  }
  variables.emplace_back("messages", Value::List(std::move(messages)));
  variables.emplace_back("tools", jinja::FromJson(request.tools));
  variables.emplace_back("documents", jinja::FromJson(request.documents));
  variables.emplace_back("add_generation_prompt", Value::Bool(request.add_generation_prompt));

  absl::StatusOr<std::string> text = chosen->compiled.Render(variables);
  if (!text.ok()) {
    const std::string which = named_set_ ? Concat(": chat template '", chosen->name, "'") : "";
    return absl::InvalidArgumentError(
        Concat(origin_, which, ": ", StdView(text.status().message())));
  }
  return text;
}

}  // namespace tessera
