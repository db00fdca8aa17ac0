// Finding added tokens in text (see added_vocab.h).
#include "runtime/text/tokenizer/added_vocab.h"

#include <unicode/uchar.h>

#include <algorithm>

#include "runtime/text/utf8.h"

namespace tessera::tokenizer_internal {
namespace {

// Rust regex's Unicode \w, which Hugging Face uses for single_word:
// Alphabetic, Mark, Decimal_Number, Connector_Punctuation, Join_Control.
bool IsWordChar(char32_t c) {
  const UChar32 u = static_cast<UChar32>(c);
  return u_hasBinaryProperty(u, UCHAR_ALPHABETIC) ||
         (U_GET_GC_MASK(u) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0 ||
         u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL);
}

bool IsWhiteSpace(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)); }

// The character that ends at `end` (valid UTF-8 before it), with its length.
std::pair<char32_t, int> CharBefore(std::string_view text, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  const int length = static_cast<int>(end - start);
  return {DecodeUtf8(text.data() + start, length), length};
}

std::pair<char32_t, int> CharAt(std::string_view text, size_t pos) {
  const Utf8Step step = NextUtf8Step(text, pos);
  return {DecodeUtf8(text.data() + pos, step.length), step.length};
}

}  // namespace

void TokenMatcher::Add(std::string_view pattern, size_t index) {
  int32_t node = 0;
  for (char ch : pattern) {
    const auto byte = static_cast<uint8_t>(ch);
    auto it = nodes_[node].next.find(byte);
    if (it == nodes_[node].next.end()) {
      nodes_.emplace_back();
      const auto child = static_cast<int32_t>(nodes_.size() - 1);
      nodes_[node].next.emplace(byte, child);
      node = child;
    } else {
      node = it->second;
    }
  }
  nodes_[node].token = static_cast<int32_t>(index);
  first_byte_[static_cast<uint8_t>(pattern[0])] = true;
}

std::pair<size_t, int32_t> TokenMatcher::LongestAt(std::string_view text, size_t pos) const {
  std::pair<size_t, int32_t> best{0, -1};
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& next = nodes_[node].next;
    auto it = next.find(static_cast<uint8_t>(text[i]));
    if (it == next.end()) break;
    node = it->second;
    if (nodes_[node].token >= 0) best = {i + 1 - pos, nodes_[node].token};
  }
  return best;
}

void TokenMatcher::Split(std::string_view text, const std::vector<AddedToken>& tokens,
                         AddedTokenMode mode, absl::FunctionRef<void(std::string_view)> on_text,
                         absl::FunctionRef<void(size_t)> on_token) const {
  if (empty() || mode == AddedTokenMode::kNone) {
    if (!text.empty()) on_text(text);
    return;
  }
  size_t emitted = 0;  // end of what has been handed out (HF: start_offset)
  size_t search = 0;   // where the next match may start
  while (search < text.size()) {
    if (!first_byte_[static_cast<uint8_t>(text[search])]) {
      ++search;
      continue;
    }
    const auto [length, index] = LongestAt(text, search);
    if (length == 0) {
      ++search;
      continue;
    }
    size_t start = search;
    size_t stop = search + length;
    search = stop;  // matches never overlap, even when a match is dropped below
    const AddedToken& token = tokens[index];
    if (mode == AddedTokenMode::kNonSpecial && token.special) continue;
    if (token.single_word) {
      const bool word_before = start > 0 && IsWordChar(CharBefore(text, start).first);
      const bool word_after = stop < text.size() && IsWordChar(CharAt(text, stop).first);
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        const auto [c, len] = CharBefore(text, new_start);
        if (!IsWhiteSpace(c)) break;
        new_start -= len;
      }
      // Whitespace an earlier token already took stays with it.
      start = std::max(new_start, emitted);
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        const auto [c, len] = CharAt(text, stop);
        if (!IsWhiteSpace(c)) break;
        stop += len;
      }
    }
    if (emitted < start) on_text(text.substr(emitted, start - emitted));
    on_token(static_cast<size_t>(index));
    emitted = stop;
  }
  if (emitted < text.size()) on_text(text.substr(emitted));
}

}  // namespace tessera::tokenizer_internal
