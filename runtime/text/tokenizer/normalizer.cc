// NFC through ICU's UTF-8 entry points, limited to Unicode 9.0 as in HF (see normalizer.h).
#include "runtime/text/tokenizer/normalizer.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uniset.h>
#include <unicode/unistr.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/check.h"
#include "runtime/text/utf8.h"

namespace tessera::tokenizer_internal {

absl::StatusOr<NfcNormalizer> NfcNormalizer::Create() {
  // Built once: ICU's NFC restricted to the characters of HF's Unicode version (see the header).
  struct Filtered {
    UErrorCode error = U_ZERO_ERROR;
    icu::UnicodeSet set;
    std::unique_ptr<icu::FilteredNormalizer2> nfc;
    Filtered() {
      const icu::Normalizer2* nfc_all = icu::Normalizer2::getNFCInstance(error);
      set.applyPattern(icu::UnicodeString::fromUTF8(
                           absl::StrCat("[:age=", kHfNormalizationUnicodeVersion, ":]")),
                       error);
      if (U_FAILURE(error)) return;
      set.freeze();
      nfc = std::make_unique<icu::FilteredNormalizer2>(*nfc_all, set);
    }
  };
  static const Filtered* filtered = new Filtered();
  if (U_FAILURE(filtered->error) || filtered->nfc == nullptr) {
    return absl::InternalError(
        absl::StrCat("ICU: cannot set up NFC normalisation: ", u_errorName(filtered->error)));
  }
  return NfcNormalizer(filtered->nfc.get());
}

std::string_view NfcNormalizer::Normalize(std::string_view text, std::string* storage) const {
  // NOTE: ASCII is always NFC (no ASCII character composes with a following ASCII one).
  if (IsAscii(text)) return text;
  const icu::StringPiece piece(text.data(), static_cast<int32_t>(text.size()));
  UErrorCode error = U_ZERO_ERROR;
  if (nfc_->isNormalizedUTF8(piece, error) && U_SUCCESS(error)) return text;
  storage->clear();
  icu::StringByteSink<std::string> sink(storage, static_cast<int32_t>(text.size()));
  error = U_ZERO_ERROR;
  nfc_->normalizeUTF8(0, piece, sink, nullptr, error);
  // The input is valid UTF-8 (checked before), so ICU cannot fail short of running out of memory.
  TESSERA_CHECK(U_SUCCESS(error)) << "ICU normalizeUTF8: " << u_errorName(error);
  return *storage;
}

}  // namespace tessera::tokenizer_internal
