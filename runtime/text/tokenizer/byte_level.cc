// The GPT-2 byte-level alphabet (see byte_level.h).
#include "runtime/text/tokenizer/byte_level.h"

#include "runtime/text/utf8.h"

namespace tessera::tokenizer_internal {
namespace {

bool StandsForItself(int byte) {
  return (byte >= 0x21 && byte <= 0x7E) || (byte >= 0xA1 && byte <= 0xAC) ||
         (byte >= 0xAE && byte <= 0xFF);
}

}  // namespace

const ByteLevelAlphabet& ByteLevelAlphabet::Get() {
  static const ByteLevelAlphabet* alphabet = new ByteLevelAlphabet();
  return *alphabet;
}

ByteLevelAlphabet::ByteLevelAlphabet() {
  decoded_.fill(-1);
  char32_t next_shifted = 0x100;
  for (int byte = 0; byte < 256; ++byte) {
    const char32_t c = StandsForItself(byte) ? static_cast<char32_t>(byte) : next_shifted++;
    AppendUtf8(c, &encoded_[byte]);
    decoded_[c] = static_cast<int16_t>(byte);
  }
}

bool ByteLevelAlphabet::DecodeToken(std::string_view token, std::string* out) const {
  size_t pos = 0;
  while (pos < token.size()) {
    const Utf8Step step = NextUtf8Step(token, pos);
    if (step.kind != Utf8Step::kValid) return false;
    const std::optional<uint8_t> byte = Decode(DecodeUtf8(token.data() + pos, step.length));
    if (!byte) return false;
    out->push_back(static_cast<char>(*byte));
    pos += step.length;
  }
  return true;
}

std::string ByteLevelAlphabet::EncodeBytes(std::string_view bytes) const {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char b : bytes) out.append(encoded_[static_cast<uint8_t>(b)]);
  return out;
}

}  // namespace tessera::tokenizer_internal
