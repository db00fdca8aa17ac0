// UTF-8 validation, decoding and lossy conversion (see utf8.h).
#include "runtime/text/utf8.h"

#include <cstring>

namespace tessera {
namespace {

inline bool IsContinuation(unsigned char b) { return (b & 0xC0) == 0x80; }

// The number of leading bytes that are plain ASCII, checked 8 bytes at a time.
size_t AsciiPrefix(std::string_view s) {
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, s.data() + i, 8);
    if (word & 0x8080808080808080ull) break;
  }
  while (i < s.size() && static_cast<unsigned char>(s[i]) < 0x80) ++i;
  return i;
}

}  // namespace

Utf8Step NextUtf8Step(std::string_view bytes, size_t pos) {
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data()) + pos;
  const size_t avail = bytes.size() - pos;
  const unsigned char b0 = u[0];
  if (b0 < 0x80) return {Utf8Step::kValid, 1};
  // The range the second byte must fall in, and the sequence length, per lead byte (Unicode
  // Table 3-7). Lead bytes 80..C1 and F5..FF never start a character.
  unsigned char lo = 0x80, hi = 0xBF;
  int length;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    length = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    length = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    length = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return {Utf8Step::kInvalid, 1};
  }
  for (int i = 1; i < length; ++i) {
    if (static_cast<size_t>(i) >= avail) {
      return {Utf8Step::kIncomplete, static_cast<uint8_t>(i)};
    }
    const unsigned char b = u[i];
    const bool ok = i == 1 ? (b >= lo && b <= hi) : IsContinuation(b);
    if (!ok) return {Utf8Step::kInvalid, static_cast<uint8_t>(i)};
  }
  return {Utf8Step::kValid, static_cast<uint8_t>(length)};
}

size_t FindInvalidUtf8(std::string_view text) {
  size_t pos = AsciiPrefix(text);
  while (pos < text.size()) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      pos += AsciiPrefix(text.substr(pos));
      continue;
    }
    const Utf8Step step = NextUtf8Step(text, pos);
    if (step.kind != Utf8Step::kValid) return pos;
    pos += step.length;
  }
  return std::string_view::npos;
}

size_t AppendUtf8LossyStable(std::string_view bytes, std::string* out) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    const size_t ascii = AsciiPrefix(bytes.substr(pos));
    if (ascii > 0) {
      out->append(bytes.data() + pos, ascii);
      pos += ascii;
      continue;
    }
    const Utf8Step step = NextUtf8Step(bytes, pos);
    if (step.kind == Utf8Step::kIncomplete) return pos;
    if (step.kind == Utf8Step::kValid) {
      out->append(bytes.data() + pos, step.length);
    } else {
      out->append(kReplacementChar);
    }
    pos += step.length;
  }
  return pos;
}

void AppendUtf8Lossy(std::string_view bytes, std::string* out) {
  const size_t done = AppendUtf8LossyStable(bytes, out);
  // What is left is one incomplete (but so far well-formed) character: one maximal subpart.
  if (done < bytes.size()) out->append(kReplacementChar);
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

bool IsAscii(std::string_view text) { return AsciiPrefix(text) == text.size(); }

char32_t NextCodePoint(std::string_view text, size_t* pos) {
  const Utf8Step step = NextUtf8Step(text, *pos);
  if (step.kind != Utf8Step::kValid) {
    ++*pos;
    return 0xFFFD;
  }
  const char32_t c = DecodeUtf8(text.data() + *pos, step.length);
  *pos += step.length;
  return c;
}

std::u32string DecodeUtf8(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) out.push_back(NextCodePoint(text, &i));
  return out;
}

std::string EncodeUtf8(std::u32string_view code_points) {
  std::string out;
  out.reserve(code_points.size());
  for (char32_t c : code_points) AppendUtf8(c, &out);
  return out;
}

size_t CodePointCount(std::string_view text) {
  size_t n = 0;
  for (char c : text) n += IsContinuation(static_cast<unsigned char>(c)) ? 0 : 1;
  return n;
}

}  // namespace tessera
