// Test driver for the live checks against transformers (tests/runtime/text/chat/live_check.py).
//
// Reads one JSON object per stdin line and writes one JSON object per line:
//   {"dir": DIR, "request": {...}}                     -> ChatTemplate::Load(DIR).Render(request)
//   {"template": TEXT, "special_tokens": {...}, "request": {...}}  -> ChatTemplate::FromString
//   {"jinja": TEXT, "vars": {...}}                     -> jinja::Template with `vars` as context
// answering {"text": "..."} or {"error": "..."}.
#include <iostream>
#include <map>
#include <string>

#include "nlohmann/json.hpp"
#include "runtime/text/chat/chat_template.h"
#include "runtime/text/chat/jinja.h"
#include "runtime/text/chat/py_json.h"

namespace {

using Json = nlohmann::ordered_json;

Json Answer(const absl::StatusOr<std::string>& text) {
  Json out = Json::object();
  if (text.ok()) {
    out["text"] = *text;
  } else {
    out["error"] = std::string(text.status().message());
  }
  return out;
}

Json Handle(const Json& in, std::map<std::string, tessera::ChatTemplate>* cache) {
  if (in.contains("jinja")) {
    absl::StatusOr<tessera::jinja::Template> t =
        tessera::jinja::Template::Parse(in["jinja"].get<std::string>());
    if (!t.ok()) return Answer(t.status());
    std::vector<std::pair<std::string, tessera::jinja::Value>> vars;
    if (in.contains("vars")) {
      for (const auto& [k, v] : in["vars"].items())
        vars.emplace_back(k, tessera::jinja::FromJson(v));
    }
    return Answer(t->Render(vars));
  }
  absl::StatusOr<tessera::ChatRequest> request = tessera::ParseChatRequest(in["request"]);
  if (!request.ok()) return Answer(request.status());
  if (in.contains("dir")) {
    const std::string dir = in["dir"].get<std::string>();
    auto it = cache->find(dir);
    if (it == cache->end()) {
      absl::StatusOr<tessera::ChatTemplate> t = tessera::ChatTemplate::Load(dir);
      if (!t.ok()) return Answer(t.status());
      it = cache->emplace(dir, std::move(*t)).first;
    }
    return Answer(it->second.Render(*request));
  }
  std::vector<std::pair<std::string, std::string>> special;
  if (in.contains("special_tokens")) {
    for (const auto& [k, v] : in["special_tokens"].items())
      special.emplace_back(k, v.get<std::string>());
  }
  absl::StatusOr<tessera::ChatTemplate> t =
      tessera::ChatTemplate::FromString(in["template"].get<std::string>(), special);
  if (!t.ok()) return Answer(t.status());
  return Answer(t->Render(*request));
}

}  // namespace

int main() {
  std::map<std::string, tessera::ChatTemplate> cache;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    const Json in = Json::parse(line, nullptr, false);
    const Json out = in.is_discarded() ? Json{{"error", "bad input line"}} : Handle(in, &cache);
    std::cout << out.dump(-1, ' ', false, Json::error_handler_t::replace) << "\n" << std::flush;
  }
  return 0;
}
