// Unicode NFC normalisation of UTF-8 text, through ICU.
//
// Text is usually already in NFC, so the common case must cost nothing: pure ASCII is returned as
// is, and ICU's UTF-8 quick check decides the rest before anything is copied.
#pragma once

#include <unicode/normalizer2.h>

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tessera::tokenizer_internal {

class NfcNormalizer {
 public:
  static absl::StatusOr<NfcNormalizer> Create();

  // `text` must be valid UTF-8. Returns `text` itself when it is already in NFC; otherwise writes
  // the NFC form into `*storage` and returns a view of it.
  std::string_view Normalize(std::string_view text, std::string* storage) const;

 private:
  explicit NfcNormalizer(const icu::Normalizer2* nfc) : nfc_(nfc) {}
  const icu::Normalizer2* nfc_;  // owned by ICU, lives for the process
};

}  // namespace tessera::tokenizer_internal
