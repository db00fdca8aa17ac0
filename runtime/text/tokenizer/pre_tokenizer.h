// The Split pre-tokenizer: cuts text into pieces with the regex read from the tokenizer file, the
// way Hugging Face's `Split(pattern, behavior="isolated", invert=false)` does. Every match is a
// piece, and so is every stretch of text between two matches.
//
// Hugging Face runs the pattern with Oniguruma; we run it with PCRE2 (UTF + UCP, JIT-compiled).
// The two agree on the syntax these patterns use, except for the meaning of a few escapes, which
// TranslateOnigurumaPattern rewrites (see there).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::tokenizer_internal {

// Rewrites an Oniguruma pattern into a PCRE2 pattern with the same meaning in Unicode mode:
//   \s, \S  Oniguruma: the White_Space property. PCRE2 (UCP): \p{Z} plus \h and \v, which also
//           holds U+180E MONGOLIAN VOWEL SEPARATOR. Both become the explicit White_Space class.
//   \w \W \h \H \R \X  Oniguruma and PCRE2 give them different meanings; tokenizer patterns do
//           not use them, so they are rejected rather than guessed at.
// Everything else passes through unchanged.
absl::StatusOr<std::string> TranslateOnigurumaPattern(std::string_view pattern);

class SplitPattern {
 public:
  // `pattern` is the Oniguruma pattern from the tokenizer file.
  static absl::StatusOr<std::unique_ptr<SplitPattern>> Compile(std::string_view pattern);
  ~SplitPattern();
  SplitPattern(const SplitPattern&) = delete;
  SplitPattern& operator=(const SplitPattern&) = delete;

  // Calls `piece` for each piece of `text` (valid UTF-8), in order; the pieces cover `text`.
  // Thread-safe. Fails only when PCRE2 itself gives up (resource limits).
  absl::Status Split(std::string_view text, absl::FunctionRef<void(std::string_view)> piece) const;

 private:
  struct Impl;
  explicit SplitPattern(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::tokenizer_internal
