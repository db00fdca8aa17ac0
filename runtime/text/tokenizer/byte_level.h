// The byte-level alphabet of GPT-2 style BPE: every byte 0..255 is written as one printable
// Unicode character, so that vocabularies and merges can be stored as text.
//
// Printable Latin-1 bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand for themselves; the
// other 68 bytes (controls, space, U+007F..U+00A0, U+00AD) take U+0100, U+0101, ... in byte order.
// So ' ' is 'Ġ' (U+0120) and '\n' is 'Ċ' (U+010A).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tessera::tokenizer_internal {

class ByteLevelAlphabet {
 public:
  static const ByteLevelAlphabet& Get();

  // The character (as UTF-8) that stands for `byte`.
  std::string_view Encode(uint8_t byte) const { return encoded_[byte]; }
  // The byte a code point stands for, or nullopt when it is not in the alphabet.
  std::optional<uint8_t> Decode(char32_t c) const {
    if (c >= decoded_.size() || decoded_[c] < 0) return std::nullopt;
    return static_cast<uint8_t>(decoded_[c]);
  }
  // Maps a token written in the alphabet back to its bytes. Returns false (and leaves `out` in an
  // unspecified state) when the text holds a character outside the alphabet or is not UTF-8.
  bool DecodeToken(std::string_view token, std::string* out) const;
  // Writes raw bytes in the alphabet.
  std::string EncodeBytes(std::string_view bytes) const;

 private:
  ByteLevelAlphabet();
  std::array<std::string, 256> encoded_;
  std::array<int16_t, 0x144> decoded_;  // code point -> byte, -1 when not in the alphabet
};

}  // namespace tessera::tokenizer_internal
