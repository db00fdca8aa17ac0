// A Jinja template interpreter for Hugging Face chat templates.
//
// Parses once, renders many times (thread-safe: rendering does not touch the parsed tree).
// Supports the subset of Jinja that chat templates use, with the environment transformers builds
// for them (trim_blocks, lstrip_blocks, loopcontrols, the sandbox's immutable containers, its
// tojson / raise_exception / strftime_now / namespace / dict globals). See docs/chat-template.md
// for the full list and what is not supported.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/text/chat/jinja_value.h"

namespace tessera::jinja {

struct Stmt;

class Template {
 public:
  // Syntax errors are InvalidArgument with "line L, column C: <what>".
  static absl::StatusOr<Template> Parse(std::string_view source);

  // Renders with `variables` as the template context (they shadow the globals). Runtime errors
  // (undefined attribute of an undefined value, type errors, raise_exception) are InvalidArgument
  // with the line and column of the failing expression.
  absl::StatusOr<std::string> Render(
      const std::vector<std::pair<std::string, Value>>& variables) const;

 private:
  std::shared_ptr<const std::vector<std::unique_ptr<Stmt>>> body_;
};

}  // namespace tessera::jinja
