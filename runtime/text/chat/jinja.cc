#include "runtime/text/chat/jinja.h"

#include "runtime/text/chat/jinja_builtins.h"
#include "runtime/text/chat/jinja_interpreter.h"
#include "runtime/text/chat/jinja_parser.h"

namespace tessera::jinja {

absl::StatusOr<Template> Template::Parse(std::string_view source) {
  absl::StatusOr<Body> body = ParseTemplate(source);
  if (!body.ok()) return body.status();
  Template t;
  t.body_ = std::make_shared<const Body>(std::move(*body));
  return t;
}

absl::StatusOr<std::string> Template::Render(
    const std::vector<std::pair<std::string, Value>>& variables) const {
  auto globals = std::make_shared<Scope>(nullptr);
  AddGlobals(*globals);
  auto context = std::make_shared<Scope>(globals);
  for (const auto& [name, value] : variables) context->Set(name, value);
  Renderer renderer;
  return renderer.Render(*body_, context);
}

}  // namespace tessera::jinja
