// Reading tokenizer files into a TokenizerSpec: tokenizer.json, or vocab.json + merges.txt +
// tokenizer_config.json. Every error names the file and the field (or line).
//
// Only what Qwen's files use is accepted; anything that would change how text is tokenized and
// that we do not implement (other normalizers, other pre-tokenizers, post-processors that add
// tokens, BPE dropout, ...) is refused with an Unimplemented error instead of being ignored.
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kernels/base/status_macros.h"
#include "runtime/text/tokenizer/bpe_tokenizer.h"
#include "runtime/text/tokenizer/loader.h"
#include "runtime/text/tokenizer/tokenizer.h"

namespace tessera {
namespace {

using json = nlohmann::json;
using tokenizer_internal::AddedToken;
using tokenizer_internal::BpeTokenizer;
using tokenizer_internal::TokenizerSpec;

// The split regex of Hugging Face's Qwen2Tokenizer (transformers, tokenization_qwen2.py), which
// the vocab.json + merges.txt form does not store.
constexpr char kQwen2SplitPattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

bool IsFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string JoinPath(const std::string& dir, const char* name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  std::string text;
  char buffer[1 << 16];
  for (size_t n; (n = std::fread(buffer, 1, sizeof(buffer), f)) > 0;) text.append(buffer, n);
  const bool failed = std::ferror(f);
  std::fclose(f);
  if (failed) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return text;
}

absl::StatusOr<json> ReadJson(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not valid JSON (byte ", e.byte, "): ", e.what()));
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON: ", e.what()));
  }
}

// "path: field" for error messages.
std::string Where(const std::string& path, const std::string& field) {
  return absl::StrCat(path, ": ", field);
}

absl::Status FieldError(const std::string& path, const std::string& field,
                        const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(Where(path, field), ": ", what));
}

absl::Status Unsupported(const std::string& path, const std::string& field,
                         const std::string& what) {
  return absl::UnimplementedError(absl::StrCat(Where(path, field), ": ", what));
}

std::string Quoted(const std::string& s) { return absl::StrCat("\"", s, "\""); }

// A JSON value's text for error messages, kept short.
std::string Show(const json& value) {
  std::string s = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// Reads an optional boolean `key` of `object` into `*out`; null counts as absent.
absl::Status OptionalBool(const json& object, const char* key, const std::string& path,
                          const std::string& field, bool* out) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) {
    return FieldError(path, absl::StrCat(field, ".", key),
                      "must be true or false, not " + Show(*it));
  }
  *out = it->get<bool>();
  return absl::OkStatus();
}

// A vocabulary object {"token": id, ...}.
absl::Status ReadVocab(const json& vocab, const std::string& path, const std::string& field,
                       TokenizerSpec* spec) {
  if (!vocab.is_object()) {
    return FieldError(path, field, "must be an object mapping tokens to ids");
  }
  spec->vocab_where = Where(path, field);
  spec->vocab.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const json& id = it.value();
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      return FieldError(path, absl::StrCat(field, "[", Quoted(it.key()), "]"),
                        "the id must be a non-negative integer, not " + Show(id));
    }
    spec->vocab.emplace_back(it.key(), static_cast<int32_t>(id.get<int64_t>()));
  }
  return absl::OkStatus();
}

// One merge written "left right": exactly one space, as Hugging Face requires.
bool SplitMergeLine(const std::string& line, std::pair<std::string, std::string>* out) {
  const size_t space = line.find(' ');
  if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) return false;
  *out = {line.substr(0, space), line.substr(space + 1)};
  return true;
}

// An added token's flags and content from a tokenizer.json added_tokens entry or a
// tokenizer_config.json added_tokens_decoder entry.
absl::Status ReadAddedTokenFields(const json& entry, const std::string& path,
                                  const std::string& field, AddedToken* token) {
  if (!entry.is_object()) return FieldError(path, field, "must be an object");
  auto content = entry.find("content");
  if (content == entry.end() || !content->is_string()) {
    return FieldError(path, field + ".content", "missing or not a string");
  }
  token->content = content->get<std::string>();
  RETURN_IF_ERROR(OptionalBool(entry, "special", path, field, &token->special));
  // Hugging Face's default: special tokens are not normalized, others are.
  token->normalized = !token->special;
  RETURN_IF_ERROR(OptionalBool(entry, "normalized", path, field, &token->normalized));
  RETURN_IF_ERROR(OptionalBool(entry, "single_word", path, field, &token->single_word));
  RETURN_IF_ERROR(OptionalBool(entry, "lstrip", path, field, &token->lstrip));
  RETURN_IF_ERROR(OptionalBool(entry, "rstrip", path, field, &token->rstrip));
  return absl::OkStatus();
}

absl::Status ReadNormalizer(const json& root, const std::string& path, TokenizerSpec* spec) {
  auto it = root.find("normalizer");
  spec->nfc = false;
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  const json& n = *it;
  const std::string type = n.is_object() && n.contains("type") && n["type"].is_string()
                               ? n["type"].get<std::string>()
                               : "";
  if (type == "NFC") {
    spec->nfc = true;
    return absl::OkStatus();
  }
  if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
    for (size_t i = 0; i < n["normalizers"].size(); ++i) {
      const json& inner = n["normalizers"][i];
      if (!inner.is_object() || inner.value("type", json()) != "NFC") {
        return Unsupported(path, absl::StrCat("normalizer.normalizers[", i, "]"),
                           "only NFC is supported, not " + Show(inner));
      }
      spec->nfc = true;
    }
    return absl::OkStatus();
  }
  return Unsupported(path, "normalizer", "only NFC is supported, not " + Show(n));
}

// The pre-tokenizer must be Qwen's: Sequence[Split(Regex, Isolated), ByteLevel(no prefix space,
// no GPT-2 regex)].
absl::Status ReadPreTokenizer(const json& root, const std::string& path, TokenizerSpec* spec) {
  auto it = root.find("pre_tokenizer");
  const char* expected =
      "expected Sequence[Split(Regex, behavior Isolated), ByteLevel(add_prefix_space "
      "false, use_regex false)]";
  if (it == root.end() || !it->is_object()) return Unsupported(path, "pre_tokenizer", expected);
  const json& pre = *it;
  if (pre.value("type", json()) != "Sequence" || !pre.contains("pretokenizers") ||
      !pre["pretokenizers"].is_array() || pre["pretokenizers"].size() != 2) {
    return Unsupported(path, "pre_tokenizer", absl::StrCat(expected, ", not ", Show(pre)));
  }
  const json& split = pre["pretokenizers"][0];
  const json& byte_level = pre["pretokenizers"][1];
  const std::string split_field = "pre_tokenizer.pretokenizers[0]";
  if (!split.is_object() || split.value("type", json()) != "Split") {
    return Unsupported(path, split_field, absl::StrCat(expected, ", not ", Show(split)));
  }
  if (split.value("behavior", json()) != "Isolated") {
    return Unsupported(path, split_field + ".behavior", "only Isolated is supported");
  }
  if (split.value("invert", json(false)) != false) {
    return Unsupported(path, split_field + ".invert", "only false is supported");
  }
  auto pattern = split.find("pattern");
  if (pattern == split.end() || !pattern->is_object() || !pattern->contains("Regex") ||
      !(*pattern)["Regex"].is_string()) {
    return Unsupported(path, split_field + ".pattern", "expected {\"Regex\": \"...\"}");
  }
  spec->split_pattern = (*pattern)["Regex"].get<std::string>();
  spec->split_where = Where(path, split_field + ".pattern.Regex");

  const std::string bl_field = "pre_tokenizer.pretokenizers[1]";
  if (!byte_level.is_object() || byte_level.value("type", json()) != "ByteLevel") {
    return Unsupported(path, bl_field, absl::StrCat(expected, ", not ", Show(byte_level)));
  }
  if (byte_level.value("add_prefix_space", json(false)) != false) {
    return Unsupported(path, bl_field + ".add_prefix_space", "only false is supported");
  }
  if (byte_level.value("use_regex", json(true)) != false) {
    return Unsupported(path, bl_field + ".use_regex", "only false is supported");
  }
  return absl::OkStatus();
}

absl::Status CheckDecoderAndPostProcessor(const json& root, const std::string& path) {
  auto decoder = root.find("decoder");
  if (decoder == root.end() || !decoder->is_object() ||
      decoder->value("type", json()) != "ByteLevel") {
    return Unsupported(path, "decoder", "only ByteLevel is supported");
  }
  auto post = root.find("post_processor");
  if (post == root.end() || post->is_null()) return absl::OkStatus();
  const json type = post->is_object() ? post->value("type", json()) : json();
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only
  if (type == "TemplateProcessing" && post->contains("single") && (*post)["single"].is_array()) {
    // Accepted when it adds nothing to a single sequence (Qwen: single = [$A]).
    for (const json& item : (*post)["single"]) {
      if (!item.is_object() || !item.contains("Sequence")) {
        return Unsupported(path, "post_processor.single",
                           "templates that add special tokens are not supported");
      }
    }
    return absl::OkStatus();
  }
  return Unsupported(path, "post_processor", "not supported: " + Show(*post));
}

// Reads tokenizer.json in one pass. The two big tables go straight into the spec: each entry of
// an object model.vocab becomes a (token, id) pair and each entry of an array model.merges a
// merge; everything else is built as a DOM that the Read* functions below check.
// NOTE: 11 MB through nlohmann's DOM takes ~280 ms (a std::map node per vocabulary entry);
// this way the parse takes ~90 ms.
class TokenizerJsonReader : public nlohmann::json_sax<json> {
 public:
  // With `vocab_file`, the whole document is the vocabulary (vocab.json) instead.
  TokenizerJsonReader(const std::string& path, TokenizerSpec* spec, bool vocab_file = false)
      : path_(path), spec_(spec), vocab_file_(vocab_file) {}

  // Parses `text`; on success root() holds the document without the two tables.
  absl::Status Parse(const std::string& text) {
    bool ok = false;
    try {
      ok = json::sax_parse(text, this);
    } catch (const json::exception& e) {
      if (status_.ok()) status_ = FieldError(path_, "(document)", e.what());
    }
    if (!status_.ok()) return status_;
    if (!ok) return absl::InvalidArgumentError(absl::StrCat(path_, ": not valid JSON"));
    return absl::OkStatus();
  }
  const json& root() const { return root_; }
  bool saw_vocab() const { return saw_vocab_; }
  bool saw_merges() const { return saw_merges_; }

  bool null() override { return Value(json()); }
  bool boolean(bool v) override { return Value(json(v)); }
  bool number_integer(number_integer_t v) override { return Value(json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return Value(json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return Value(json(v)); }
  bool string(string_t& v) override {
    if (table_ == Table::kMerges && !in_pair_) {
      if (absl::StartsWith(v, "#version")) return Next();
      std::pair<std::string, std::string> pair;
      if (!SplitMergeLine(v, &pair)) {
        return Fail(MergeField(), "expected \"left right\" (two tokens, one space), not " +
                                      Quoted(v.substr(0, 60)));
      }
      AddMerge(std::move(pair));
      return Next();
    }
    if (in_pair_) {
      pair_.push_back(std::move(v));
      return true;
    }
    return Value(json(std::move(v)));
  }
  bool binary(binary_t&) override { return Fail("(document)", "binary values are not JSON"); }
  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool start_object(std::size_t) override {
    if (AtModelKey("vocab") || (vocab_file_ && stack_.empty() && !saw_vocab_)) {
      table_ = Table::kVocab;
      saw_vocab_ = true;
      spec_->vocab_where = vocab_file_ ? path_ : Where(path_, "model.vocab");
      return true;
    }
    if (table_ != Table::kNone) return BadTableEntry();
    return Open(json::object());
  }
  bool end_object() override {
    if (table_ == Table::kVocab) {
      table_ = Table::kNone;
      return true;
    }
    return Close();
  }
  bool start_array(std::size_t) override {
    if (AtModelKey("merges")) {
      table_ = Table::kMerges;
      saw_merges_ = true;
      return true;
    }
    if (table_ == Table::kMerges && !in_pair_) {
      in_pair_ = true;
      pair_.clear();
      return true;
    }
    if (table_ != Table::kNone) return BadTableEntry();
    return Open(json::array());
  }
  bool end_array() override {
    if (in_pair_) {
      in_pair_ = false;
      if (pair_.size() != 2) {
        return Fail(MergeField(), "expected [\"left\", \"right\"] or \"left right\"");
      }
      AddMerge({std::move(pair_[0]), std::move(pair_[1])});
      return Next();
    }
    if (table_ == Table::kMerges) {
      table_ = Table::kNone;
      return true;
    }
    return Close();
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& e) override {
    if (status_.ok()) {
      status_ = absl::InvalidArgumentError(
          absl::StrCat(path_, ": not valid JSON (byte ", position, "): ", e.what()));
    }
    return false;
  }

 private:
  enum class Table { kNone, kVocab, kMerges };

  // Whether the container about to open is the value of `name` in the top-level "model" object.
  bool AtModelKey(const char* name) const {
    return table_ == Table::kNone && stack_.size() == 2 && in_model_ && key_ == name &&
           stack_.back()->is_object();
  }
  bool Fail(const std::string& field, const std::string& what) {
    if (status_.ok()) status_ = FieldError(path_, field, what);
    return false;
  }
  std::string MergeField() const { return absl::StrCat("model.merges[", index_, "]"); }
  std::string VocabField() const {
    return vocab_file_ ? Quoted(key_) : absl::StrCat("model.vocab[", Quoted(key_), "]");
  }
  bool Next() {
    ++index_;
    return true;
  }
  void AddMerge(std::pair<std::string, std::string> pair) {
    spec_->merges.push_back(std::move(pair));
    spec_->merge_position.push_back(static_cast<uint32_t>(index_));
  }
  bool BadTableEntry() {
    if (table_ == Table::kVocab) {
      return Fail(VocabField(), "the id must be a non-negative integer");
    }
    return Fail(MergeField(), "expected [\"left\", \"right\"] or \"left right\"");
  }

  // A scalar: a vocabulary id, or a DOM value.
  bool Value(json v) {
    if (table_ == Table::kVocab) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
        return Fail(VocabField(), "the id must be a non-negative integer, not " + Show(v));
      }
      spec_->vocab.emplace_back(std::move(key_), static_cast<int32_t>(v.get<int64_t>()));
      return true;
    }
    if (table_ == Table::kMerges) return BadTableEntry();
    Insert(std::move(v));
    return true;
  }
  // Adds `v` to the container being built (or makes it the root) and returns where it lives.
  json* Insert(json v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    json& parent = *stack_.back();
    if (parent.is_object()) return &(parent[key_] = std::move(v));
    parent.push_back(std::move(v));
    return &parent.back();
  }
  bool Open(json container) {
    if (stack_.size() == 1) in_model_ = stack_.back()->is_object() && key_ == "model";
    stack_.push_back(Insert(std::move(container)));
    return true;
  }
  bool Close() {
    stack_.pop_back();
    return true;
  }

  const std::string path_;
  TokenizerSpec* spec_;
  const bool vocab_file_;
  json root_;
  // The containers being built, innermost last. The pointers stay valid: objects are std::maps,
  // and an array only grows after its last element (the open one) is closed.
  std::vector<json*> stack_;
  std::string key_;        // the last object key seen
  bool in_model_ = false;  // the depth-1 container being built is the top-level "model"
  Table table_ = Table::kNone;
  bool in_pair_ = false;  // inside a ["left", "right"] merge
  size_t index_ = 0;      // index of the next model.merges entry
  std::vector<std::string> pair_;
  bool saw_vocab_ = false;
  bool saw_merges_ = false;
  absl::Status status_;
};

absl::Status ReadBpeModel(const TokenizerJsonReader& reader, const std::string& path,
                          TokenizerSpec* spec) {
  const json& root = reader.root();
  auto model_it = root.find("model");
  if (model_it == root.end() || !model_it->is_object()) {
    return FieldError(path, "model", "missing or not an object");
  }
  const json& model = *model_it;
  if (model.contains("type") && model["type"] != "BPE") {
    return Unsupported(path, "model.type", "only BPE is supported, not " + Show(model["type"]));
  }
  if (!reader.saw_vocab()) {
    auto vocab = model.find("vocab");
    if (vocab == model.end()) return FieldError(path, "model.vocab", "missing");
    RETURN_IF_ERROR(ReadVocab(*vocab, path, "model.vocab", spec));
  }
  if (!reader.saw_merges()) {
    if (!model.contains("merges")) return FieldError(path, "model.merges", "missing");
    return FieldError(path, "model.merges", "must be an array");
  }

  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"] != 0) {
    return Unsupported(path, "model.dropout", "BPE dropout is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && model[key] != "") {
      return Unsupported(path, absl::StrCat("model.", key), "only null or \"\" is supported");
    }
  }
  bool byte_fallback = false;
  RETURN_IF_ERROR(OptionalBool(model, "byte_fallback", path, "model", &byte_fallback));
  if (byte_fallback) return Unsupported(path, "model.byte_fallback", "only false is supported");
  RETURN_IF_ERROR(OptionalBool(model, "fuse_unk", path, "model", &spec->fuse_unk));
  RETURN_IF_ERROR(OptionalBool(model, "ignore_merges", path, "model", &spec->ignore_merges));
  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    if (!model["unk_token"].is_string()) {
      return FieldError(path, "model.unk_token", "must be a string or null");
    }
    spec->unk_token = model["unk_token"].get<std::string>();
    spec->unk_where = Where(path, "model.unk_token");
  }
  return absl::OkStatus();
}

absl::StatusOr<TokenizerSpec> ReadTokenizerJsonText(const std::string& text,
                                                    const std::string& path) {
  TokenizerSpec spec;
  TokenizerJsonReader reader(path, &spec);
  spec.merge_where_prefix = Where(path, "model.merges[");
  spec.merge_where_suffix = "]";
  RETURN_IF_ERROR(reader.Parse(text));
  const json& root = reader.root();
  if (!root.is_object()) return FieldError(path, "(top level)", "must be a JSON object");
  RETURN_IF_ERROR(ReadBpeModel(reader, path, &spec));
  RETURN_IF_ERROR(ReadNormalizer(root, path, &spec));
  RETURN_IF_ERROR(ReadPreTokenizer(root, path, &spec));
  RETURN_IF_ERROR(CheckDecoderAndPostProcessor(root, path));
  auto added = root.find("added_tokens");
  if (added != root.end() && !added->is_null()) {
    if (!added->is_array()) return FieldError(path, "added_tokens", "must be an array");
    for (size_t i = 0; i < added->size(); ++i) {
      const json& entry = (*added)[i];
      const std::string field = absl::StrCat("added_tokens[", i, "]");
      AddedToken token;
      RETURN_IF_ERROR(ReadAddedTokenFields(entry, path, field, &token));
      auto id = entry.find("id");
      if (id == entry.end() || !id->is_number_integer() || id->get<int64_t>() < 0 ||
          id->get<int64_t>() > INT32_MAX) {
        return FieldError(path, field + ".id", "missing or not a non-negative integer");
      }
      token.id = static_cast<int32_t>(id->get<int64_t>());
      spec.added.push_back(std::move(token));
      spec.added_where.push_back(Where(path, field));
    }
  }
  return spec;
}

absl::StatusOr<TokenizerSpec> ReadTokenizerJson(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ReadTokenizerJsonText(text, path);
}

// A token named in tokenizer_config.json: a string, {"content": ...}, or null.
absl::StatusOr<std::optional<std::string>> ConfigTokenName(const json& value,
                                                           const std::string& path,
                                                           const std::string& field) {
  if (value.is_null()) return std::optional<std::string>();
  if (value.is_string()) return std::optional<std::string>(value.get<std::string>());
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return std::optional<std::string>(value["content"].get<std::string>());
  }
  return FieldError(path, field, "expected a token string, {\"content\": ...} or null");
}

absl::Status ReadTokenizerConfig(const std::string& path, TokenizerSpec* spec) {
  ASSIGN_OR_RETURN(json config, ReadJson(path));
  if (!config.is_object()) return FieldError(path, "(top level)", "must be a JSON object");
  if (auto cls = config.find("tokenizer_class"); cls != config.end() && !cls->is_null()) {
    if (*cls != "Qwen2Tokenizer" && *cls != "Qwen2TokenizerFast") {
      return Unsupported(
          path, "tokenizer_class",
          "only Qwen2Tokenizer is supported without tokenizer.json, not " + Show(*cls));
    }
  }
  bool add_prefix_space = false;
  RETURN_IF_ERROR(OptionalBool(config, "add_prefix_space", path, "(top level)", &add_prefix_space));
  if (add_prefix_space) return Unsupported(path, "add_prefix_space", "only false is supported");

  // added_tokens_decoder: {"151643": {"content": ..., "special": ...}, ...}, added in id order.
  std::vector<std::pair<int64_t, AddedToken>> added;
  std::vector<std::string> where;
  if (auto dec = config.find("added_tokens_decoder"); dec != config.end() && !dec->is_null()) {
    if (!dec->is_object()) return FieldError(path, "added_tokens_decoder", "must be an object");
    for (auto it = dec->begin(); it != dec->end(); ++it) {
      const std::string field = absl::StrCat("added_tokens_decoder[", Quoted(it.key()), "]");
      int64_t id;
      if (!absl::SimpleAtoi(it.key(), &id) || id < 0 || id > INT32_MAX) {
        return FieldError(path, field, "the key must be a non-negative integer id");
      }
      AddedToken token;
      token.id = static_cast<int32_t>(id);
      RETURN_IF_ERROR(ReadAddedTokenFields(it.value(), path, field, &token));
      added.emplace_back(id, std::move(token));
    }
  }
  std::sort(added.begin(), added.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [id, token] : added) {
    spec->added_where.push_back(Where(path, absl::StrCat("added_tokens_decoder[\"", id, "\"]")));
    spec->added.push_back(std::move(token));
  }

  // Tokens the config names as special (eos_token, ..., additional_special_tokens) are special
  // even where added_tokens_decoder says otherwise, as transformers makes them.
  std::vector<std::pair<std::string, std::string>> named;  // (content, field)
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                          "cls_token", "mask_token"}) {
    if (auto it = config.find(key); it != config.end()) {
      ASSIGN_OR_RETURN(std::optional<std::string> name, ConfigTokenName(*it, path, key));
      if (name) named.emplace_back(*name, key);
    }
  }
  for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
    auto it = config.find(key);
    if (it == config.end() || it->is_null()) continue;
    if (!it->is_array()) return FieldError(path, key, "must be an array");
    for (size_t i = 0; i < it->size(); ++i) {
      const std::string field = absl::StrCat(key, "[", i, "]");
      ASSIGN_OR_RETURN(std::optional<std::string> name, ConfigTokenName((*it)[i], path, field));
      if (name) named.emplace_back(*name, field);
    }
  }
  for (const auto& name : named) {
    auto token = std::find_if(spec->added.begin(), spec->added.end(),
                              [&](const AddedToken& t) { return t.content == name.first; });
    if (token == spec->added.end()) {
      return Unsupported(path, name.second,
                         absl::StrCat(Quoted(name.first),
                                      " is not in added_tokens_decoder; special "
                                      "tokens must be listed there"));
    }
    token->special = true;
  }
  return absl::OkStatus();
}

absl::StatusOr<TokenizerSpec> ReadVocabMerges(const std::string& dir) {
  TokenizerSpec spec;
  const std::string vocab_path = JoinPath(dir, "vocab.json");
  const std::string merges_path = JoinPath(dir, "merges.txt");
  const std::string config_path = JoinPath(dir, "tokenizer_config.json");
  {
    ASSIGN_OR_RETURN(std::string text, ReadFile(vocab_path));
    TokenizerJsonReader reader(vocab_path, &spec, /*vocab_file=*/true);
    RETURN_IF_ERROR(reader.Parse(text));
    if (!reader.saw_vocab()) {
      return FieldError(vocab_path, "(top level)", "must be an object mapping tokens to ids");
    }
  }
  ASSIGN_OR_RETURN(std::string merges, ReadFile(merges_path));
  // Lines as Rust's BufRead::lines gives them to Hugging Face: split at '\n', a "\r" before the
  // '\n' dropped, and no empty last line after a final newline.
  spec.merge_where_prefix = Where(merges_path, "line ");
  std::vector<absl::string_view> lines = absl::StrSplit(merges, '\n');
  const bool final_newline = !lines.empty() && lines.back().empty();
  if (final_newline) lines.pop_back();
  for (size_t i = 0; i < lines.size(); ++i) {
    absl::string_view line = lines[i];
    const bool terminated = i + 1 < lines.size() || final_newline;
    if (terminated && absl::EndsWith(line, "\r")) line.remove_suffix(1);
    if (absl::StartsWith(line, "#version")) continue;
    std::pair<std::string, std::string> pair;
    if (!SplitMergeLine(std::string(line), &pair)) {
      return FieldError(merges_path, absl::StrCat("line ", i + 1),
                        "expected \"left right\" (two tokens, one space), not " +
                            Quoted(std::string(line.substr(0, 60))));
    }
    spec.merges.push_back(std::move(pair));
    spec.merge_position.push_back(static_cast<uint32_t>(i + 1));
  }
  if (IsFile(config_path)) RETURN_IF_ERROR(ReadTokenizerConfig(config_path, &spec));
  spec.nfc = true;
  spec.split_pattern = kQwen2SplitPattern;
  spec.split_where = "Qwen2Tokenizer's split regex";
  return spec;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Build(absl::StatusOr<TokenizerSpec> spec) {
  if (!spec.ok()) return spec.status();
  ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> tokenizer, BpeTokenizer::Create(*spec));
  return std::unique_ptr<Tokenizer>(std::move(tokenizer));
}

}  // namespace

namespace tokenizer_internal {

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerJsonText(const std::string& text,
                                                                 const std::string& path) {
  return Build(ReadTokenizerJsonText(text, path));
}

}  // namespace tokenizer_internal

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadTokenizerJson(const std::string& path) {
  return Build(ReadTokenizerJson(path));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadVocabMerges(const std::string& dir) {
  return Build(ReadVocabMerges(dir));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& dir) {
  if (IsFile(dir)) return LoadTokenizerJson(dir);
  if (!IsDirectory(dir)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no such tokenizer directory"));
  }
  const std::string json_path = JoinPath(dir, "tokenizer.json");
  if (IsFile(json_path)) return LoadTokenizerJson(json_path);
  if (IsFile(JoinPath(dir, "vocab.json")) && IsFile(JoinPath(dir, "merges.txt"))) {
    return LoadVocabMerges(dir);
  }
  return absl::NotFoundError(
      absl::StrCat(dir, ": no tokenizer.json, and no vocab.json + merges.txt"));
}

}  // namespace tessera
