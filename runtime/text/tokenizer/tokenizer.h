// Qwen3's byte-level BPE tokenizer, exactly compatible with Hugging Face `tokenizers`.
//
// Reads DIR/tokenizer.json (vocab, merges, added_tokens, NFC normalizer, Split-regex + ByteLevel
// pre-tokenizer), or the older trio DIR/vocab.json + DIR/merges.txt + DIR/tokenizer_config.json
// (added_tokens_decoder). Errors name the file and the field.
//
// Encoding: added tokens are cut out of the raw text first; the rest is NFC-normalised (ICU), cut
// by the file's Split regex (PCRE2 with Unicode properties), and each piece is BPE-merged on its
// bytes. Unicode behaviour matches Hugging Face tokenizers 0.23 with one known exception:
//   - NFC: HF's tables are Unicode 9.0; ours are ICU's limited to [:age=9.0:], which is the same.
//   - \p{L} \p{N} \s: identical for every code point assigned in Unicode 14 (PCRE2 10.42's
//     tables; Oniguruma's \s is rewritten as White_Space since PCRE2's adds U+180E). The 9,392
//     letters and numbers assigned in Unicode 15.0-16.0, which HF's Oniguruma knows, are "other"
//     here (see PatternTest.KnownDifferenceUnicode15Letters).
// All methods are const and thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace tessera {

class Tokenizer {
 public:
  // DIR/tokenizer.json when it exists, else the trio. DIR may also name a tokenizer.json file.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& dir);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerJson(const std::string& path);
  // DIR/vocab.json + DIR/merges.txt, and DIR/tokenizer_config.json when it exists, with the split
  // regex of Hugging Face's Qwen2Tokenizer.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadVocabMerges(const std::string& dir);
  virtual ~Tokenizer() = default;

  struct EncodeOptions {
    // true (the default, as transformers does): special/added tokens written in the text are
    // recognised as single ids. false: they are encoded as plain text (llama.cpp's test vectors;
    // transformers' apply_chat_template(sanitize_control_tokens=True) for marked user text).
    bool parse_special = true;
    // Only with parse_special = false: keep recognising the added tokens that are not marked
    // special (<think>, <tool_call>, <|fim_prefix|>, ...), so that only the special ones become
    // text. This is HF tokenizers' encode_special_tokens = true, i.e. transformers'
    // split_special_tokens = true.
    bool keep_non_special = false;
  };
  // Invalid UTF-8 is an InvalidArgument error naming the byte offset.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                                      const EncodeOptions& options) const = 0;
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const {
    return Encode(text, EncodeOptions{});
  }
  // Ids outside [0, vocab_size()) are an InvalidArgument error. The result may hold invalid UTF-8
  // only where the ids themselves spell partial characters; it is replaced by U+FFFD as HF does.
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                             bool skip_special_tokens) const = 0;

  // Number of ids with a token (regular + added), i.e. max id + 1.
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;
  // The raw bytes that one token stands for (byte-level decoded); for added tokens, their content
  // (decoded the way Hugging Face does, which leaves ASCII content such as <|im_end|> unchanged).
  virtual absl::StatusOr<std::string> TokenBytes(int32_t id) const = 0;
};

// Turns a stream of token ids into text, emitting only whole UTF-8 characters: a character split
// across tokens is held back until it is complete, and the output is always valid UTF-8.
class StreamingDetokenizer {
 public:
  StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens);
  // Returns the newly completed text (possibly empty).
  absl::StatusOr<std::string> Push(int32_t id);
  // End of stream: bytes still pending that never completed a character come out as U+FFFD.
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;
};

}  // namespace tessera
