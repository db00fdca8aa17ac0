// Loading from text already in memory, for tests and fuzzing (the public entry points are
// Tokenizer::Load* in tokenizer.h).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/text/tokenizer/tokenizer.h"

namespace tessera::tokenizer_internal {

// Parses the contents of a tokenizer.json; `path` names it in error messages.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerJsonText(const std::string& text,
                                                                 const std::string& path);

}  // namespace tessera::tokenizer_internal
