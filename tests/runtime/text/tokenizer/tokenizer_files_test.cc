// Malformed and unsupported tokenizer files: every error names the file and the field (or line),
// and nothing crashes. Each test writes a small tokenizer into a fresh temporary directory.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "runtime/text/tokenizer/tokenizer.h"

namespace tessera {
namespace {

using json = nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;

// A tiny valid tokenizer.json: bytes a, b, c, space (as Ġ), one merge, one special token.
json MinimalTokenizerJson() {
  return json::parse(R"({
    "version": "1.0",
    "truncation": null,
    "padding": null,
    "added_tokens": [
      {"id": 6, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
       "normalized": false, "special": true}
    ],
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": " ?\\p{L}+|\\s+"}, "behavior": "Isolated",
       "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
    ]},
    "post_processor": null,
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null,
              "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
              "byte_fallback": false, "ignore_merges": false,
              "vocab": {"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "Ġab": 5},
              "merges": [["a", "b"], "Ġ ab"]}
  })");
}

class TokenizerFilesTest : public testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/tessera-tokfiles-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  std::string WriteJson(const json& j) { return Write("tokenizer.json", j.dump()); }

  // Loads DIR and returns the error message (empty when loading succeeds).
  std::string LoadError(absl::StatusCode expected_code = absl::StatusCode::kInvalidArgument) {
    auto t = Tokenizer::Load(dir_);
    if (t.ok()) return "";
    EXPECT_EQ(t.status().code(), expected_code) << t.status();
    return std::string(t.status().message());
  }

  // The trio: vocab.json + merges.txt + tokenizer_config.json for the same tiny tokenizer.
  void WriteTrio() {
    Write("vocab.json", R"({"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "Ġab": 5})");
    Write("merges.txt", "#version: 0.2\na b\nĠ ab\n");
    Write("tokenizer_config.json", R"({"tokenizer_class": "Qwen2Tokenizer",
      "added_tokens_decoder": {"6": {"content": "<s>", "lstrip": false, "normalized": false,
        "rstrip": false, "single_word": false, "special": true}}, "eos_token": "<s>"})");
  }

  std::string dir_;
};

TEST_F(TokenizerFilesTest, MinimalTokenizerWorks) {
  WriteJson(MinimalTokenizerJson());
  auto t = Tokenizer::Load(dir_);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(*(*t)->Encode("ab<s> ab"), testing::ElementsAre(4, 6, 5));
  EXPECT_EQ(*(*t)->Decode({4, 6, 5}, true), "ab ab");
  // Load also takes the file itself.
  EXPECT_TRUE(Tokenizer::Load(dir_ + "/tokenizer.json").ok());
}

TEST_F(TokenizerFilesTest, TrioWorksWithCrlfAndVersionLine) {
  WriteTrio();
  Write("merges.txt", "#version: 0.2\r\na b\r\nĠ ab");
  auto t = Tokenizer::Load(dir_);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(*(*t)->Encode("ab<s> ab"), testing::ElementsAre(4, 6, 5));
  EXPECT_TRUE((*t)->IsSpecial(6));
}

TEST_F(TokenizerFilesTest, NoTokenizerFiles) {
  EXPECT_THAT(LoadError(absl::StatusCode::kNotFound),
              AllOf(HasSubstr(dir_), HasSubstr("no tokenizer.json")));
  EXPECT_FALSE(Tokenizer::Load(dir_ + "/missing").ok());
}

TEST_F(TokenizerFilesTest, BadJson) {
  Write("tokenizer.json", "{\"model\": {\"vocab\": {\"a\": 0,}}");
  EXPECT_THAT(LoadError(), AllOf(HasSubstr(dir_ + "/tokenizer.json"), HasSubstr("not valid JSON")));
  Write("tokenizer.json", "");
  EXPECT_THAT(LoadError(), HasSubstr("not valid JSON"));
  Write("tokenizer.json", "[1, 2]");
  EXPECT_THAT(LoadError(), HasSubstr("must be a JSON object"));
}

TEST_F(TokenizerFilesTest, MissingOrBadVocab) {
  json j = MinimalTokenizerJson();
  j["model"].erase("vocab");
  WriteJson(j);
  EXPECT_THAT(LoadError(), AllOf(HasSubstr("tokenizer.json: model.vocab"), HasSubstr("missing")));

  j = MinimalTokenizerJson();
  j["model"]["vocab"] = json::array({"a", "b"});
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("tokenizer.json: model.vocab: must be an object"));

  j = MinimalTokenizerJson();
  j["model"]["vocab"]["zz"] = "seven";
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("model.vocab[\"zz\"]: the id must be a non-negative integer"));

  j = MinimalTokenizerJson();
  j["model"]["vocab"]["zz"] = -3;
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("model.vocab[\"zz\"]"));

  j = MinimalTokenizerJson();
  j["model"]["vocab"]["zz"] = 2;  // the id of "c"
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("also given to another token"));

  j = MinimalTokenizerJson();
  j.erase("model");
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("tokenizer.json: model: missing"));
}

TEST_F(TokenizerFilesTest, BadMerges) {
  json j = MinimalTokenizerJson();
  j["model"]["merges"].push_back("a zz");
  WriteJson(j);
  EXPECT_THAT(LoadError(), AllOf(HasSubstr("tokenizer.json: model.merges[2]"),
                                 HasSubstr("token \"zz\" is not in"), HasSubstr("model.vocab")));

  j = MinimalTokenizerJson();
  j["model"]["merges"].push_back(json::array({"b", "c"}));  // "bc" is not a token
  WriteJson(j);
  EXPECT_THAT(LoadError(), AllOf(HasSubstr("model.merges[2]"), HasSubstr("\"bc\"")));

  j = MinimalTokenizerJson();
  j["model"]["merges"].push_back("a b c");
  WriteJson(j);
  EXPECT_THAT(LoadError(), AllOf(HasSubstr("model.merges[2]"), HasSubstr("two tokens")));

  j = MinimalTokenizerJson();
  j["model"]["merges"].push_back(json::array({"a"}));
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("model.merges[2]"));

  j = MinimalTokenizerJson();
  j["model"]["merges"] = "a b";
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("model.merges: must be an array"));

  j = MinimalTokenizerJson();
  j["model"].erase("merges");
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("model.merges: missing"));
}

TEST_F(TokenizerFilesTest, BadAddedTokens) {
  json j = MinimalTokenizerJson();
  j["added_tokens"][0].erase("content");
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("tokenizer.json: added_tokens[0].content: missing"));

  j = MinimalTokenizerJson();
  j["added_tokens"][0]["id"] = "six";
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("added_tokens[0].id"));

  j = MinimalTokenizerJson();
  j["added_tokens"][0]["special"] = "yes";
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("added_tokens[0].special: must be true or false"));

  j = MinimalTokenizerJson();
  j["added_tokens"][0]["content"] = "";
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("added_tokens[0]: content is empty"));

  // Hugging Face would give <s> id 6 whatever the file says; a file that disagrees is refused.
  j = MinimalTokenizerJson();
  j["added_tokens"][0]["id"] = 9;
  WriteJson(j);
  EXPECT_THAT(LoadError(), AllOf(HasSubstr("added_tokens[0]: id 9"), HasSubstr("id 6")));

  j = MinimalTokenizerJson();
  j["added_tokens"].push_back(j["added_tokens"][0]);
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("added_tokens[1]: \"<s>\" is listed twice"));

  j = MinimalTokenizerJson();
  j["added_tokens"] = json::object();
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("added_tokens: must be an array"));

  // An added token whose text is a vocabulary token takes that token's id.
  j = MinimalTokenizerJson();
  j["added_tokens"].push_back({{"id", 4}, {"content", "ab"}, {"special", false}});
  WriteJson(j);
  EXPECT_EQ(LoadError(), "");
}

TEST_F(TokenizerFilesTest, UnsupportedPipelines) {
  const auto unimplemented = absl::StatusCode::kUnimplemented;
  json j = MinimalTokenizerJson();
  j["normalizer"] = {{"type", "Lowercase"}};
  WriteJson(j);
  EXPECT_THAT(LoadError(unimplemented), HasSubstr("tokenizer.json: normalizer: only NFC"));

  j = MinimalTokenizerJson();
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  WriteJson(j);
  EXPECT_THAT(LoadError(unimplemented), HasSubstr("tokenizer.json: pre_tokenizer"));

  j = MinimalTokenizerJson();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+";
  WriteJson(j);
  EXPECT_THAT(LoadError(unimplemented),
              AllOf(HasSubstr("pre_tokenizer.pretokenizers[0].pattern.Regex"), HasSubstr("\\w")));

  j = MinimalTokenizerJson();
  j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true;
  WriteJson(j);
  EXPECT_THAT(LoadError(unimplemented), HasSubstr("pretokenizers[1].add_prefix_space"));

  j = MinimalTokenizerJson();
  j["decoder"] = nullptr;
  WriteJson(j);
  EXPECT_THAT(LoadError(unimplemented), HasSubstr("tokenizer.json: decoder"));

  j = MinimalTokenizerJson();
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {}}}}}};
  WriteJson(j);
  EXPECT_THAT(LoadError(unimplemented), HasSubstr("post_processor.single"));

  j = MinimalTokenizerJson();
  j["model"]["dropout"] = 0.1;
  WriteJson(j);
  EXPECT_THAT(LoadError(unimplemented), HasSubstr("model.dropout"));

  j = MinimalTokenizerJson();
  j["model"]["type"] = "WordPiece";
  WriteJson(j);
  EXPECT_THAT(LoadError(unimplemented), HasSubstr("model.type"));
}

TEST_F(TokenizerFilesTest, BadRegex) {
  json j = MinimalTokenizerJson();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  WriteJson(j);
  EXPECT_THAT(LoadError(),
              AllOf(HasSubstr("pretokenizers[0].pattern.Regex"), HasSubstr("does not compile")));
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "[abc";
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("pretokenizers[0].pattern.Regex"));
}

TEST_F(TokenizerFilesTest, UnknownUnkToken) {
  json j = MinimalTokenizerJson();
  j["model"]["unk_token"] = "<unk>";
  WriteJson(j);
  EXPECT_THAT(LoadError(), HasSubstr("model.unk_token: \"<unk>\" is not in"));
}

TEST_F(TokenizerFilesTest, BadTrioFiles) {
  WriteTrio();
  Write("vocab.json", "{\"a\": 0,");
  EXPECT_THAT(LoadError(), AllOf(HasSubstr(dir_ + "/vocab.json"), HasSubstr("not valid JSON")));

  WriteTrio();
  Write("vocab.json", R"({"a": 0, "b": "x"})");
  EXPECT_THAT(LoadError(), HasSubstr("vocab.json: \"b\": the id must be a non-negative integer"));

  WriteTrio();
  Write("merges.txt", "#version: 0.2\na b\nab\n");
  EXPECT_THAT(LoadError(), AllOf(HasSubstr("merges.txt: line 3"), HasSubstr("two tokens")));

  WriteTrio();
  Write("merges.txt", "a b\n\n");
  EXPECT_THAT(LoadError(), HasSubstr("merges.txt: line 2"));

  WriteTrio();
  Write("merges.txt", "a b\nc zz\n");
  EXPECT_THAT(LoadError(), AllOf(HasSubstr("merges.txt: line 2"), HasSubstr("\"zz\" is not in"),
                                 HasSubstr("vocab.json")));

  WriteTrio();
  Write("tokenizer_config.json", R"({"added_tokens_decoder": {"six": {"content": "<s>"}}})");
  EXPECT_THAT(LoadError(), HasSubstr("tokenizer_config.json: added_tokens_decoder[\"six\"]"));

  WriteTrio();
  Write("tokenizer_config.json", R"({"added_tokens_decoder": {"6": {"special": true}}})");
  EXPECT_THAT(LoadError(), HasSubstr("added_tokens_decoder[\"6\"].content: missing"));

  WriteTrio();
  Write("tokenizer_config.json", R"({"added_tokens_decoder": {"6": {"content": "<s>",
      "lstrip": 1}}})");
  EXPECT_THAT(LoadError(), HasSubstr("added_tokens_decoder[\"6\"].lstrip"));

  WriteTrio();
  Write("tokenizer_config.json", R"({"tokenizer_class": "LlamaTokenizer"})");
  EXPECT_THAT(LoadError(absl::StatusCode::kUnimplemented),
              HasSubstr("tokenizer_config.json: tokenizer_class"));

  WriteTrio();
  Write("tokenizer_config.json", R"({"eos_token": "</s>"})");
  EXPECT_THAT(LoadError(absl::StatusCode::kUnimplemented), HasSubstr("eos_token"));

  WriteTrio();
  std::filesystem::remove(dir_ + "/merges.txt");
  EXPECT_THAT(LoadError(absl::StatusCode::kNotFound), HasSubstr("no tokenizer.json"));
  EXPECT_THAT(std::string(Tokenizer::LoadVocabMerges(dir_).status().message()),
              AllOf(HasSubstr(dir_ + "/merges.txt"), HasSubstr("cannot open")));
}

}  // namespace
}  // namespace tessera
