// Unicode NFC normalisation of UTF-8 text, through ICU, as Hugging Face `tokenizers` does it.
//
// HF's NFC (the unicode-normalization-alignments crate) carries Unicode 9.0 data: characters
// assigned later have, for it, no decomposition, no composition and combining class 0, so they
// are never reordered or composed. ICU 72 knows Unicode 15 and would, for example, reorder a
// Unicode 13 combining mark after a lower-class one. To give the same text as HF we run ICU's
// NFC filtered to the characters of Unicode 9.0 ([:age=9.0:]): everything newer passes through
// untouched and bounds the stretches that are normalised, which is exactly what HF's tables do
// (the normalisation stability policy guarantees older characters behave the same in 9.0 and
// 15). Checked offline against HF for every code point, its NFD form and 200,000 random mark
// sequences; hf_cases.json pins the known cases and the live test keeps drawing random ones.
//
// Text is usually already in NFC, so the common case must cost nothing: pure ASCII is returned
// as is, and ICU's UTF-8 check decides the rest before anything is copied.
#pragma once

#include <unicode/normalizer2.h>

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tessera::tokenizer_internal {

// The Unicode version of Hugging Face tokenizers' normalisation data.
inline constexpr char kHfNormalizationUnicodeVersion[] = "9.0";

class NfcNormalizer {
 public:
  static absl::StatusOr<NfcNormalizer> Create();

  // `text` must be valid UTF-8. Returns `text` itself when it is already normalised; otherwise
  // writes the normalised form into `*storage` and returns a view of it.
  std::string_view Normalize(std::string_view text, std::string* storage) const;

 private:
  explicit NfcNormalizer(const icu::Normalizer2* nfc) : nfc_(nfc) {}
  const icu::Normalizer2* nfc_;  // lives for the process
};

}  // namespace tessera::tokenizer_internal
