// Jinja lexer and parser: template source -> syntax tree.
//
// The lexer follows jinja2 configured as transformers configures it for chat templates:
// trim_blocks=True (the first newline after a block or comment tag is dropped), lstrip_blocks=True
// (spaces and tabs before a block or comment tag at the start of a line are dropped), `{%-`/`-%}`
// strip all whitespace on that side, `{%+`/`+%}` switch lstrip/trim off for one tag, `\r\n` and
// `\r` become `\n`, and one trailing newline at the end of the template is dropped
// (keep_trailing_newline=False). Statements are those of jinja2 with the loopcontrols extension
// (break, continue) and transformers' `{% generation %}` tag.
#pragma once

#include <string_view>

#include "absl/status/statusor.h"
#include "runtime/text/chat/jinja_ast.h"

namespace tessera::jinja {

// Errors are InvalidArgument with "line L, column C: <what>".
absl::StatusOr<Body> ParseTemplate(std::string_view source);

}  // namespace tessera::jinja
