// UTF-8, the one module for runtime/text (tokenizer, detokenizer, chat templates, output parser)
// and the request checks of rpc/: validation with the offending offset, decoding and encoding of
// code points, and the lossy conversion that Hugging Face's ByteLevel decoder applies (Rust's
// String::from_utf8_lossy).
//
// Well-formed means Unicode Table 3-7: no overlong forms, no surrogates, nothing above U+10FFFF.
// The lossy rule replaces each "maximal subpart" of an ill-formed sequence with one U+FFFD (Unicode
// §3.9, "U+FFFD substitution of maximal subparts"). The rule is prefix-stable: converting a byte
// string piece by piece, holding back a trailing incomplete character until more bytes arrive,
// gives the same text as converting it whole. The streaming detokenizer relies on that.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tessera {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// The result of looking at the bytes that start at one position.
struct Utf8Step {
  enum Kind : uint8_t {
    kValid,       // a well-formed character of `length` bytes
    kInvalid,     // an ill-formed maximal subpart of `length` bytes: one U+FFFD
    kIncomplete,  // the input ends inside a character whose `length` bytes so far are well-formed
  };
  Kind kind;
  uint8_t length;
};
Utf8Step NextUtf8Step(std::string_view bytes, size_t pos);

// The offset of the first byte that is not part of a well-formed character, or npos when
// `text` is valid UTF-8.
size_t FindInvalidUtf8(std::string_view text);

// Appends `bytes` to `out` with every ill-formed subpart replaced by U+FFFD.
void AppendUtf8Lossy(std::string_view bytes, std::string* out);

// Appends the longest prefix of `bytes` that cannot change when more bytes follow (replacing
// ill-formed subparts by U+FFFD) to `out`, and returns the number of bytes consumed; the rest
// (at most 3 bytes: a character still incomplete) must be kept until more bytes arrive.
size_t AppendUtf8LossyStable(std::string_view bytes, std::string* out);

// Decodes the well-formed character of `length` bytes at `p`.
inline char32_t DecodeUtf8(const char* p, int length) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  switch (length) {
    case 1:
      return u[0];
    case 2:
      return (char32_t{u[0] & 0x1Fu} << 6) | (u[1] & 0x3Fu);
    case 3:
      return (char32_t{u[0] & 0x0Fu} << 12) | (char32_t{u[1] & 0x3Fu} << 6) | (u[2] & 0x3Fu);
    default:
      return (char32_t{u[0] & 0x07u} << 18) | (char32_t{u[1] & 0x3Fu} << 12) |
             (char32_t{u[2] & 0x3Fu} << 6) | (u[3] & 0x3Fu);
  }
}

// Appends the UTF-8 encoding of a Unicode scalar value.
void AppendUtf8(char32_t c, std::string* out);

// True when every byte is ASCII.
bool IsAscii(std::string_view text);

// Decodes the character at text[*pos] and advances *pos past it. A byte that does not start a
// well-formed character decodes as U+FFFD and advances by one (callers validate their input
// first; this only keeps them safe from bytes they did not).
char32_t NextCodePoint(std::string_view text, size_t* pos);

// The code points of `text` (NextCodePoint's), and back.
std::u32string DecodeUtf8(std::string_view text);
std::string EncodeUtf8(std::u32string_view code_points);

// The number of characters of valid UTF-8 `text` (bytes that are not continuation bytes).
size_t CodePointCount(std::string_view text);

}  // namespace tessera
