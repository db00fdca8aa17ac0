// Python's json.dumps over interpreter values, and JSON documents in and out of them.
//
// transformers replaces Jinja's `tojson` with `json.dumps(x, ensure_ascii=False, indent=...,
// separators=..., sort_keys=...)`, so tool schemas and tool-call arguments reach the prompt in
// Python's exact formatting: ", " and ": " separators, repr() floats ("1e-05", "1.0"), non-ASCII
// kept as is, and the dict order of the request. Requests are parsed with nlohmann::ordered_json
// so that order survives.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "runtime/text/chat/jinja_value.h"

namespace tessera::jinja {

struct JsonDumpsOptions {
  bool ensure_ascii = false;
  // nullopt: one line. A string: the indent unit (json.dumps(indent=2) is "  ").
  std::optional<std::string> indent;
  // nullopt: Python's defaults, (", ", ": ") without indent and (",", ": ") with it.
  std::optional<std::string> item_separator;
  std::optional<std::string> key_separator;
  bool sort_keys = false;
};

// json.dumps(value, ...). Values JSON cannot hold (undefined, namespaces, generators) and dict keys
// of the wrong type are errors with Python's messages.
absl::StatusOr<std::string> PyJsonDumps(const Value& value, const JsonDumpsOptions& options);

// Values nest at most this deep (converting and destroying them recurses).
inline constexpr int kMaxJsonDepth = 256;
// Whether `json` nests deeper than `limit` levels; iterative, so any document is safe to check.
bool JsonDeeperThan(const nlohmann::ordered_json& json, int limit);

// JSON document -> value: objects become dicts in document order, integers beyond int64 become
// floats.
Value FromJson(const nlohmann::ordered_json& json);

}  // namespace tessera::jinja
