// The tokenizer's building blocks: the byte-level alphabet, the Oniguruma -> PCRE2 pattern
// translation, NFC, and the added-token matcher (UTF-8 itself: tests/runtime/text/utf8_test.cc).
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "runtime/text/tokenizer/added_vocab.h"
#include "runtime/text/tokenizer/byte_level.h"
#include "runtime/text/tokenizer/normalizer.h"
#include "runtime/text/tokenizer/pre_tokenizer.h"

namespace tessera::tokenizer_internal {
namespace {

using ::testing::ElementsAre;

TEST(ByteLevelTest, Alphabet) {
  const ByteLevelAlphabet& a = ByteLevelAlphabet::Get();
  EXPECT_EQ(a.Encode(' '), "\xC4\xA0");   // Ġ
  EXPECT_EQ(a.Encode('\n'), "\xC4\x8A");  // Ċ
  EXPECT_EQ(a.Encode('A'), "A");
  EXPECT_EQ(a.Encode(0xAD), "\xC5\x83");  // soft hyphen -> U+0143
  EXPECT_EQ(a.Encode(0xE9), "\xC3\xA9");  // é stands for byte E9
  for (int b = 0; b < 256; ++b) {
    std::string back;
    ASSERT_TRUE(a.DecodeToken(a.Encode(static_cast<uint8_t>(b)), &back));
    EXPECT_EQ(back, std::string(1, static_cast<char>(b)));
  }
  std::string out;
  EXPECT_FALSE(a.DecodeToken("\xE4\xB8\xAD", &out));  // 中 is not in the alphabet
}

TEST(PatternTest, TranslatesWhitespaceEscapes) {
  EXPECT_EQ(*TranslateOnigurumaPattern(R"(\s+(?!\S))"),
            R"([\t-\r\x{85}\p{Z}]+(?![^\t-\r\x{85}\p{Z}]))");
  EXPECT_EQ(*TranslateOnigurumaPattern(R"([^\s\p{L}])"), R"([^\t-\r\x{85}\p{Z}\p{L}])");
  EXPECT_EQ(*TranslateOnigurumaPattern(R"([]\s])"), R"([]\t-\r\x{85}\p{Z}])");
  EXPECT_EQ(*TranslateOnigurumaPattern(R"([[:alpha:]\s]\\s)"), R"([[:alpha:]\t-\r\x{85}\p{Z}]\\s)");
  EXPECT_EQ(*TranslateOnigurumaPattern(R"(\p{N}\d)"), R"(\p{N}\d)");
  EXPECT_FALSE(TranslateOnigurumaPattern(R"([\S])").ok());
  EXPECT_FALSE(TranslateOnigurumaPattern(R"(\w+)").ok());
  EXPECT_FALSE(TranslateOnigurumaPattern(R"(\h)").ok());
  EXPECT_FALSE(TranslateOnigurumaPattern("abc\\").ok());
  EXPECT_FALSE(TranslateOnigurumaPattern("[abc").ok());
}

std::vector<std::string> Pieces(const SplitPattern& p, std::string_view text) {
  std::vector<std::string> out;
  EXPECT_TRUE(p.Split(text, [&](std::string_view s) { out.emplace_back(s); }).ok());
  return out;
}

TEST(PatternTest, SplitIsolatedKeepsGaps) {
  auto p = SplitPattern::Compile(R"(\d+)");
  ASSERT_TRUE(p.ok());
  EXPECT_THAT(Pieces(**p, "ab12c345"), ElementsAre("ab", "12", "c", "345"));
  EXPECT_THAT(Pieces(**p, ""), ElementsAre());
  EXPECT_THAT(Pieces(**p, "xyz"), ElementsAre("xyz"));
}

TEST(PatternTest, MongolianVowelSeparatorIsNotWhitespace) {
  // U+180E is Cf: Oniguruma's \s excludes it, PCRE2's \s (via \h) would include it.
  auto p = SplitPattern::Compile(R"(\s+|\S+)");
  ASSERT_TRUE(p.ok());
  EXPECT_THAT(Pieces(**p, "a \xE1\xA0\x8E b"), ElementsAre("a", " ", "\xE1\xA0\x8E", " ", "b"));
  EXPECT_THAT(Pieces(**p,
                     "a\xC2\x85\xE3\x80\x80"
                     "b"),
              ElementsAre("a", "\xC2\x85\xE3\x80\x80", "b"));
}

// A known difference, pinned so that it is noticed when it goes away: PCRE2 10.42 has Unicode 14
// tables, Oniguruma in HF tokenizers 0.23 Unicode 16, so the 9,392 letters and numbers assigned
// in Unicode 15.0-16.0 are "other" here. CJK Extension H (Unicode 15) U+31350 cuts
// "a\U00031350b" into "a" and "\U00031350b", where HF keeps one piece. (In ids this rarely shows:
// the rare character's bytes do not merge with their neighbours anyway.) A PCRE2 with Unicode 16
// tables (10.45) removes the difference; then this test fails and the note in tokenizer.h goes.
TEST(PatternTest, KnownDifferenceUnicode15Letters) {
  auto p = SplitPattern::Compile(
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)");
  ASSERT_TRUE(p.ok());
  EXPECT_THAT(Pieces(**p,
                     "a\xF0\xB1\x8D\x90"
                     "b"),
              ElementsAre("a",
                          "\xF0\xB1\x8D\x90"
                          "b"));
  // A Unicode 14 letter (U+1E290, Toto) is a letter in both.
  EXPECT_THAT(Pieces(**p,
                     "a\xF0\x9E\x8A\x90"
                     "b"),
              ElementsAre("a\xF0\x9E\x8A\x90"
                          "b"));
}

TEST(NfcTest, NormalizesOnlyWhenNeeded) {
  auto nfc = NfcNormalizer::Create();
  ASSERT_TRUE(nfc.ok());
  std::string storage;
  const std::string ascii = "plain";
  EXPECT_EQ(nfc->Normalize(ascii, &storage).data(), ascii.data());  // no copy
  const std::string composed = "caf\xC3\xA9";
  EXPECT_EQ(nfc->Normalize(composed, &storage).data(), composed.data());
  EXPECT_EQ(nfc->Normalize("cafe\xCC\x81", &storage), "caf\xC3\xA9");
  EXPECT_EQ(nfc->Normalize("\xE2\x84\xA6", &storage), "\xCE\xA9");  // OHM SIGN -> Omega
}

// HF's NFC data is Unicode 9.0, and so is ours (see normalizer.h): a Unicode 13 mark is neither
// reordered nor composed, where full Unicode 15 NFC would do both.
TEST(NfcTest, StopsAtUnicode9LikeHuggingFace) {
  auto nfc = NfcNormalizer::Create();
  ASSERT_TRUE(nfc.ok());
  std::string storage;
  // a + U+10EAC (Yezidi, class 230, Unicode 13) + U+032A (class 220): left as is.
  const std::string yezidi = "a\xF0\x90\xBA\xAC\xCC\xAA";
  EXPECT_EQ(nfc->Normalize(yezidi, &storage), yezidi);
  // Dives Akuru U+11935 U+11930 (Unicode 13) would compose to U+11938: left as is.
  const std::string dives = "\xF0\x91\xA4\xB5\xF0\x91\xA4\xB0";
  EXPECT_EQ(nfc->Normalize(dives, &storage), dives);
  // Older characters around them are still normalised.
  EXPECT_EQ(nfc->Normalize("e\xCC\x81\xF0\x90\xBA\xAC"
                           "e\xCC\x81",
                           &storage),
            "\xC3\xA9\xF0\x90\xBA\xAC\xC3\xA9");
}

TEST(TokenMatcherTest, LeftmostLongest) {
  std::vector<AddedToken> tokens(3);
  tokens[0].content = "<a>";
  tokens[1].content = "<a>>";
  tokens[2].content = "a>";
  tokens[2].special = true;
  TokenMatcher m;
  for (size_t i = 0; i < tokens.size(); ++i) m.Add(tokens[i].content, i);
  std::vector<std::string> out;
  auto run = [&](std::string_view text, AddedTokenMode mode) {
    out.clear();
    m.Split(
        text, tokens, mode, [&](std::string_view s) { out.push_back("'" + std::string(s) + "'"); },
        [&](size_t i) { out.push_back("#" + std::to_string(i)); });
    return out;
  };
  EXPECT_THAT(run("x<a>>y<a>a>", AddedTokenMode::kAll),
              ElementsAre("'x'", "#1", "'y'", "#0", "#2"));
  // A match that is dropped (here: special, while special tokens are text) still consumes its
  // text: "a>" inside it is not looked for again.
  EXPECT_THAT(run("<a>a>", AddedTokenMode::kNonSpecial), ElementsAre("#0", "'a>'"));
  EXPECT_THAT(run("<a>", AddedTokenMode::kNone), ElementsAre("'<a>'"));
}

}  // namespace
}  // namespace tessera::tokenizer_internal
