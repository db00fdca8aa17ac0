// Added tokens (special tokens such as <|im_end|>, and added ones such as <think>): finding them in
// text before the text is normalised and cut by the pre-tokenizer, as Hugging Face's
// AddedVocabulary does.
//
// Matching is leftmost-longest over all tokens. Tokens with `normalized: false` are found in the
// raw text; tokens with `normalized: true` are found afterwards in the NFC form of what is left.
// The flags behave as in Hugging Face:
//   single_word  the match is dropped when a word character (\w) touches it on either side;
//   lstrip       the token also takes the whitespace on its left;
//   rstrip       the token also takes the whitespace on its right;
//   special      skipped by decode(skip_special_tokens); plain text when special tokens are off.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"

namespace tessera::tokenizer_internal {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// Which added tokens are recognised in the text.
enum class AddedTokenMode {
  kAll,         // every added token
  kNonSpecial,  // only those not marked special (HF: encode_special_tokens / split_special_tokens)
  kNone,        // none: everything is plain text
};

// A set of tokens to find in text: a byte trie walked from each position for the longest match.
class TokenMatcher {
 public:
  // Adds `pattern` (non-empty) as a string that stands for token `index`.
  void Add(std::string_view pattern, size_t index);
  bool empty() const { return nodes_.size() <= 1; }

  // Splits `text`: calls `on_text` for the stretches between tokens and `on_token` for each
  // recognised token (its index in the vector given to Build). Follows Hugging Face's
  // AddedVocabulary::find_matches, flags included.
  void Split(std::string_view text, const std::vector<AddedToken>& tokens, AddedTokenMode mode,
             absl::FunctionRef<void(std::string_view)> on_text,
             absl::FunctionRef<void(size_t)> on_token) const;

 private:
  struct Node {
    absl::flat_hash_map<uint8_t, int32_t> next;
    int32_t token = -1;  // index of the token that ends here, or -1
  };
  // The longest match starting at `pos`: its length and token index, or length 0.
  std::pair<size_t, int32_t> LongestAt(std::string_view text, size_t pos) const;

  std::vector<Node> nodes_ = std::vector<Node>(1);
  bool first_byte_[256] = {};
};

}  // namespace tessera::tokenizer_internal
