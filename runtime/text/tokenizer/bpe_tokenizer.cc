// Encoding and decoding with byte-level BPE (see bpe_tokenizer.h).
#include "runtime/text/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/string_view.h"
#include "runtime/text/tokenizer/byte_level.h"
#include "runtime/text/utf8.h"

namespace tessera::tokenizer_internal {
namespace {

// Ids above this are refused: the per-id tables (5 bytes per id) would be absurdly large. The
// largest vocabularies in use have about 256K tokens.
constexpr int64_t kMaxId = (int64_t{1} << 22) - 1;
// ICU and PCRE2 take 32-bit lengths.
constexpr size_t kMaxTextBytes = size_t{1} << 30;

}  // namespace

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(const TokenizerSpec& spec) {
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();

  // Regular tokens.
  int64_t max_id = -1;
  for (const auto& [token, id] : spec.vocab) {
    if (id < 0 || id > kMaxId) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec.vocab_where, "[\"", token, "\"]: id ", id, " is out of range"));
    }
    max_id = std::max<int64_t>(max_id, id);
  }
  for (size_t i = 0; i < spec.added.size(); ++i) {
    const int32_t id = spec.added[i].id;
    if (id < 0 || id > kMaxId) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec.added_where[i], ": id ", id, " is out of range"));
    }
    max_id = std::max<int64_t>(max_id, id);
  }
  t->kind_.assign(max_id + 1, Kind::kNone);
  // (id, bytes) of every token; packed into bytes_/offsets_ at the end.
  std::vector<std::pair<int32_t, std::string>> token_bytes;
  token_bytes.reserve(spec.vocab.size() + spec.added.size());
  std::array<int32_t, 256> byte_ids;  // the token of each single byte, -1 when missing
  byte_ids.fill(-1);
  absl::flat_hash_map<std::string, int32_t> whole;  // bytes -> id, for ignore_merges only
  t->vocab_.reserve(spec.vocab.size());
  for (const auto& [token, id] : spec.vocab) {
    if (t->kind_[id] != Kind::kNone) {
      return absl::InvalidArgumentError(absl::StrCat(spec.vocab_where, "[\"", token, "\"]: id ", id,
                                                     " is also given to another token"));
    }
    t->kind_[id] = Kind::kRegular;
    t->vocab_.emplace(token, id);
    std::string bytes;
    if (alphabet.DecodeToken(token, &bytes)) {
      if (bytes.size() == 1) byte_ids[static_cast<uint8_t>(bytes[0])] = id;
      if (spec.ignore_merges) whole.emplace(bytes, id);
      token_bytes.emplace_back(id, std::move(bytes));
    } else {
      // As Hugging Face's ByteLevel decoder: a token outside the alphabet decodes to its own text.
      token_bytes.emplace_back(id, token);
    }
  }

  // Merges, resolved to ids by their text as Hugging Face does.
  std::vector<BpeMerge> merges(spec.merges.size());
  std::vector<int32_t> merged(spec.merges.size());
  std::string joined;
  for (size_t i = 0; i < spec.merges.size(); ++i) {
    const auto& [left, right] = spec.merges[i];
    auto l = t->vocab_.find(left);
    auto r = t->vocab_.find(right);
    joined.assign(left).append(right);
    auto j = t->vocab_.find(joined);
    const std::string* missing = l == t->vocab_.end()   ? &left
                                 : r == t->vocab_.end() ? &right
                                 : j == t->vocab_.end() ? &joined
                                                        : nullptr;
    if (missing != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec.merge_where_prefix, spec.merge_position[i], spec.merge_where_suffix,
                       ": token \"", *missing, "\" is not in ", spec.vocab_where));
    }
    merges[i] = BpeMerge{l->second, r->second};
    merged[i] = j->second;
  }

  BpeModel::Options options;
  options.fuse_unk = spec.fuse_unk;
  options.ignore_merges = spec.ignore_merges;
  if (spec.unk_token) {
    auto it = t->vocab_.find(*spec.unk_token);
    if (it == t->vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec.unk_where, ": \"", *spec.unk_token, "\" is not in ", spec.vocab_where));
    }
    options.unk_id = it->second;
  }
  t->bpe_ = std::make_unique<BpeModel>(byte_ids, std::move(whole), merges, merged, options);

  // Added tokens. Hugging Face ignores the ids in the file and gives each token, in order, its
  // vocabulary id if it has one, else the next free id after the vocabulary; a file whose ids
  // disagree with that would encode differently here and there, so it is refused.
  int64_t next_id = static_cast<int64_t>(spec.vocab.size());
  for (size_t i = 0; i < spec.added.size(); ++i) {
    const AddedToken& token = spec.added[i];
    if (token.content.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(spec.added_where[i], ": content is empty"));
    }
    if (FindInvalidUtf8(token.content) != std::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec.added_where[i], ": content is not valid UTF-8"));
    }
    if (t->added_ids_.count(token.content)) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec.added_where[i], ": \"", token.content, "\" is listed twice"));
    }
    auto in_vocab = t->vocab_.find(token.content);
    const int64_t expected = in_vocab != t->vocab_.end() ? in_vocab->second : next_id++;
    if (token.id != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          spec.added_where[i], ": id ", token.id, " for \"", token.content,
          "\", but Hugging Face would give it id ", expected,
          " (the vocabulary id of the same text, else the next id after the vocabulary)"));
    }
    if (t->kind_[token.id] == Kind::kAdded || t->kind_[token.id] == Kind::kSpecial) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec.added_where[i], ": id ", token.id, " is given twice"));
    }
    t->kind_[token.id] = token.special ? Kind::kSpecial : Kind::kAdded;
    t->added_ids_.emplace(token.content, token.id);
    t->added_.push_back(token);
  }

  if (spec.nfc) {
    ASSIGN_OR_RETURN(NfcNormalizer nfc, NfcNormalizer::Create());
    t->nfc_.emplace(nfc);
  }
  for (const AddedToken& token : t->added_) {
    // Hugging Face decodes an added token like any other: its text (NFC'd when the token is
    // normalized) goes through the byte-level decoder, and only when some character is outside
    // the alphabet is the text used as is. ASCII content comes out unchanged either way; other
    // content can come out as bytes that are not UTF-8 (then U+FFFD), as it does in HF.
    std::string storage;
    const std::string_view text =
        token.normalized && t->nfc_ ? t->nfc_->Normalize(token.content, &storage) : token.content;
    std::string bytes;
    token_bytes.emplace_back(token.id,
                             alphabet.DecodeToken(text, &bytes) ? bytes : std::string(text));
  }
  for (size_t i = 0; i < t->added_.size(); ++i) {
    const AddedToken& token = t->added_[i];
    if (!token.normalized) {
      t->raw_matcher_.Add(token.content, i);
    } else if (t->nfc_) {
      std::string storage;
      const std::string_view normalized = t->nfc_->Normalize(token.content, &storage);
      if (!normalized.empty()) t->normalized_matcher_.Add(normalized, i);
    } else {
      t->normalized_matcher_.Add(token.content, i);
    }
  }

  absl::StatusOr<std::unique_ptr<SplitPattern>> split = SplitPattern::Compile(spec.split_pattern);
  if (!split.ok()) {
    return absl::Status(split.status().code(),
                        absl::StrCat(spec.split_where, ": ", split.status().message()));
  }
  t->split_ = *std::move(split);

  // An added token with a vocabulary id replaces the regular token's bytes: stable_sort keeps
  // the added entry (pushed later) after it, and the later entry wins below.
  std::stable_sort(token_bytes.begin(), token_bytes.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  size_t total = 0;
  for (const auto& entry : token_bytes) total += entry.second.size();
  t->bytes_.reserve(total);
  t->offsets_.assign(t->kind_.size() + 1, 0);
  int32_t next = 0;  // the first id whose offset is not set yet
  for (size_t i = 0; i < token_bytes.size(); ++i) {
    const auto& [id, bytes] = token_bytes[i];
    if (i + 1 < token_bytes.size() && token_bytes[i + 1].first == id) continue;
    for (; next <= id; ++next) t->offsets_[next] = static_cast<uint32_t>(t->bytes_.size());
    t->bytes_.append(bytes);
  }
  for (; next <= static_cast<int32_t>(t->kind_.size()); ++next) {
    t->offsets_[next] = static_cast<uint32_t>(t->bytes_.size());
  }
  return t;
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(std::string_view text,
                                                          const EncodeOptions& options) const {
  if (text.size() > kMaxTextBytes) {
    return absl::InvalidArgumentError(absl::StrCat("text is too long to tokenize: ", text.size(),
                                                   " bytes (the limit is ", kMaxTextBytes, ")"));
  }
  if (const size_t bad = FindInvalidUtf8(text); bad != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrFormat("text is not valid UTF-8: bad byte 0x%02X at byte offset %d",
                        static_cast<unsigned char>(text[bad]), bad));
  }
  const AddedTokenMode mode = options.parse_special      ? AddedTokenMode::kAll
                              : options.keep_non_special ? AddedTokenMode::kNonSpecial
                                                         : AddedTokenMode::kNone;
  std::vector<int32_t> ids;
  // NOTE: English text averages about 4 bytes per token; reserving avoids most regrowth.
  ids.reserve(text.size() / 4 + 8);
  std::string scratch;
  absl::Status status;
  raw_matcher_.Split(
      text, added_, mode,
      [&](std::string_view segment) {
        if (status.ok()) status = EncodeSegment(segment, mode, &scratch, &ids);
      },
      [&](size_t index) { ids.push_back(added_[index].id); });
  if (!status.ok()) return status;
  return ids;
}

absl::Status BpeTokenizer::EncodeSegment(std::string_view segment, AddedTokenMode mode,
                                         std::string* scratch, std::vector<int32_t>* ids) const {
  const std::string_view normalized = nfc_ ? nfc_->Normalize(segment, scratch) : segment;
  if (normalized_matcher_.empty()) return EncodeNormalized(normalized, ids);
  absl::Status status;
  normalized_matcher_.Split(
      normalized, added_, mode,
      [&](std::string_view text) {
        if (status.ok()) status = EncodeNormalized(text, ids);
      },
      [&](size_t index) { ids->push_back(added_[index].id); });
  return status;
}

absl::Status BpeTokenizer::EncodeNormalized(std::string_view text,
                                            std::vector<int32_t>* ids) const {
  return split_->Split(text, [&](std::string_view piece) { bpe_->Encode(piece, ids); });
}

absl::StatusOr<std::string> BpeTokenizer::Decode(absl::Span<const int32_t> ids,
                                                 bool skip_special_tokens) const {
  std::string bytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size() || kind_[id] == Kind::kNone) {
      return absl::InvalidArgumentError(absl::StrCat(
          "id ", id, " at position ", i, " is not a token (vocabulary size ", vocab_size(), ")"));
    }
    if (skip_special_tokens && kind_[id] == Kind::kSpecial) continue;
    bytes.append(Bytes(id));
  }
  if (FindInvalidUtf8(bytes) == std::string_view::npos) return bytes;
  std::string text;
  text.reserve(bytes.size() + 8);
  AppendUtf8Lossy(bytes, &text);
  return text;
}

std::optional<int32_t> BpeTokenizer::TokenToId(std::string_view token) const {
  if (auto it = added_ids_.find(AbslView(token)); it != added_ids_.end()) return it->second;
  if (auto it = vocab_.find(AbslView(token)); it != vocab_.end()) return it->second;
  return std::nullopt;
}

absl::StatusOr<std::string> BpeTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size() || kind_[id] == Kind::kNone) {
    return absl::InvalidArgumentError(
        absl::StrCat("id ", id, " is not a token (vocabulary size ", vocab_size(), ")"));
  }
  return std::string(Bytes(id));
}

}  // namespace tessera::tokenizer_internal
