// Jinja built-ins: filters, tests, the methods of str/list/dict that templates call, and the
// globals transformers provides (namespace, range, dict, raise_exception, strftime_now, joiner).
//
// Each follows jinja2 3.1 / CPython semantics, including their quirks where templates can see them:
// `map`, `select`, `selectattr` and friends return one-shot generators (truthy even when empty, no
// length), `title` is Jinja's word-splitting version rather than str.title, `tojson` is
// transformers' json.dumps with ensure_ascii=False.
#pragma once

#include <string_view>

#include "absl/status/statusor.h"
#include "runtime/text/chat/jinja_interpreter.h"
#include "runtime/text/chat/jinja_value.h"

namespace tessera::jinja {

using FilterFn = absl::StatusOr<Value> (*)(Renderer& r, const Value& input, const CallArgs& args);
using TestFn = absl::StatusOr<bool> (*)(Renderer& r, const Value& input, const CallArgs& args);

// nullptr when there is no such filter / test.
FilterFn FindFilter(std::string_view name);
TestFn FindTest(std::string_view name);

// `obj.name` for str, list, tuple and dict: a bound method, an "unsafe" undefined for methods
// the immutable sandbox forbids (list.append, dict.update, ...), or nullopt when the type has no
// such method.
std::optional<Value> LookupMethod(const Value& self, std::string_view name);

// The global functions, put into `scope`.
void AddGlobals(Scope& scope);

// Python's `format % args` (printf-style) with str/tuple/dict arguments.
absl::StatusOr<std::string> PercentFormat(std::string_view format, const Value& args);

}  // namespace tessera::jinja
