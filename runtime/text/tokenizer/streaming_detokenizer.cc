// Streaming detokenization: emit only whole characters (see tokenizer.h).
//
// Each token's bytes join the bytes still pending; everything that can no longer change as more
// bytes arrive is emitted (ill-formed subparts as U+FFFD), and a character still incomplete at
// the end (at most 3 bytes) waits. Because the U+FFFD rule is prefix-stable, the concatenation of
// all outputs equals Tokenizer::Decode of all ids.
#include "absl/status/status.h"
#include "runtime/text/tokenizer/tokenizer.h"
#include "runtime/text/utf8.h"

namespace tessera {

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

absl::StatusOr<std::string> StreamingDetokenizer::Push(int32_t id) {
  absl::StatusOr<std::string> bytes = tokenizer_.TokenBytes(id);
  if (!bytes.ok()) return bytes.status();
  if (skip_special_tokens_ && tokenizer_.IsSpecial(id)) return std::string();
  pending_.append(*bytes);
  std::string out;
  const size_t done = AppendUtf8LossyStable(pending_, &out);
  pending_.erase(0, done);
  return out;
}

std::string StreamingDetokenizer::Flush() {
  std::string out;
  // What waits is one incomplete character: one U+FFFD, as a whole decode would give.
  if (!pending_.empty()) out.append(kReplacementChar);
  pending_.clear();
  return out;
}

}  // namespace tessera
