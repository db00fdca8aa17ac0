// The Tokenizer implementation: added tokens -> NFC -> Split regex -> byte-level BPE, and back.
//
// The loaders (loader.cc) read tokenizer.json or the vocab.json + merges.txt +
// tokenizer_config.json trio into a TokenizerSpec; BpeTokenizer::Create checks the spec against
// itself (merges name known tokens, added-token ids are the ones Hugging Face would give) and
// builds the tables that encoding and decoding use.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "runtime/text/tokenizer/added_vocab.h"
#include "runtime/text/tokenizer/bpe.h"
#include "runtime/text/tokenizer/normalizer.h"
#include "runtime/text/tokenizer/pre_tokenizer.h"
#include "runtime/text/tokenizer/tokenizer.h"

namespace tessera::tokenizer_internal {

// What a tokenizer file says, before any cross-checking. `*_where` strings name the file and field
// for error messages.
struct TokenizerSpec {
  // Tokens as written in the file (byte-level alphabet), with their ids.
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::string vocab_where;  // e.g. "/m/tokenizer.json: model.vocab"
  // Merges in rank order, as pairs of tokens written in the alphabet.
  std::vector<std::pair<std::string, std::string>> merges;
  // Where merges[i] is: merge_where_prefix + merge_position[i] + merge_where_suffix, e.g.
  // "/m/tokenizer.json: model.merges[" 7 "]" or "/m/merges.txt: line " 8 "".
  std::vector<uint32_t> merge_position;
  std::string merge_where_prefix;
  std::string merge_where_suffix;
  // In the order Hugging Face adds them (the file's order).
  std::vector<AddedToken> added;
  std::vector<std::string> added_where;
  bool nfc = true;
  std::string split_pattern;  // Oniguruma syntax, as in the file
  std::string split_where;
  std::optional<std::string> unk_token;
  std::string unk_where;
  bool fuse_unk = false;
  bool ignore_merges = false;
};

class BpeTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(const TokenizerSpec& spec);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              const EncodeOptions& options) const override;
  using Tokenizer::Encode;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(kind_.size()); }
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  bool IsSpecial(int32_t id) const override {
    return id >= 0 && id < vocab_size() && kind_[id] == Kind::kSpecial;
  }
  absl::StatusOr<std::string> TokenBytes(int32_t id) const override;

 private:
  enum class Kind : uint8_t { kNone, kRegular, kAdded, kSpecial };

  BpeTokenizer() = default;
  // Encodes text that holds no added token: NFC, then normalized added tokens, then the regex.
  absl::Status EncodeSegment(std::string_view segment, AddedTokenMode mode, std::string* scratch,
                             std::vector<int32_t>* ids) const;
  absl::Status EncodeNormalized(std::string_view text, std::vector<int32_t>* ids) const;
  std::string_view Bytes(int32_t id) const {
    return std::string_view(bytes_).substr(offsets_[id], offsets_[id + 1] - offsets_[id]);
  }

  std::vector<AddedToken> added_;
  TokenMatcher raw_matcher_;         // added tokens with normalized = false
  TokenMatcher normalized_matcher_;  // added tokens with normalized = true (NFC form)
  std::optional<NfcNormalizer> nfc_;
  std::unique_ptr<SplitPattern> split_;
  std::unique_ptr<BpeModel> bpe_;

  // Per id: what it is, and the bytes it decodes to (bytes_[offsets_[id], offsets_[id + 1])).
  std::vector<Kind> kind_;
  std::string bytes_;
  std::vector<uint32_t> offsets_;
  absl::flat_hash_map<std::string, int32_t> vocab_;  // token as written -> id
  absl::flat_hash_map<std::string, int32_t> added_ids_;
};

}  // namespace tessera::tokenizer_internal
