// Internal helpers shared by the model-input parsers (config.json, safetensors headers, shard
// indexes): JSON parsing that never throws, and short descriptions of JSON values for errors.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera {

// Parses `text` with exceptions disabled. Invalid JSON becomes a status of `code` whose message is
// "<source>: invalid JSON: <parser message with line and column>". A NUL byte anywhere is
// invalid (nlohmann alone would stop reading at it), and so is nesting deeper than 128 levels.
absl::StatusOr<nlohmann::json> ParseJsonText(std::string_view text, std::string_view source,
                                             absl::StatusCode code);

// The deepest nesting of arrays and objects in JSON `text`, counting brackets outside strings,
// without parsing (so hostile nesting is refused before it costs stack or memory). Stops counting
// once past `limit`.
int JsonNestingDepth(std::string_view text, int limit);

// A short, printable rendering of a value for error messages: scalars as JSON (long strings cut
// to 64 characters), lists of up to 4 scalars as JSON, other containers as "an object" /
// "an array". Never recurses into nested values, so hostile input cannot exhaust the stack.
std::string DescribeJson(const nlohmann::json& value);

}  // namespace tessera
