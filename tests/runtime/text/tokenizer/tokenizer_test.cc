// The Qwen3 tokenizer against Hugging Face and llama.cpp, on both file forms (tokenizer.json and
// vocab.json + merges.txt + tokenizer_config.json), plus round-trip and decode properties.
//
// hf_cases.json and flags_tokenizer.json come from make_cases.py (Hugging Face tokenizers and
// transformers on the same files); the llama.cpp vectors are llama.cpp's own Qwen2 test files.
#include <atomic>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kernels/base/check.h"
#include "runtime/text/tokenizer/tokenizer.h"
#include "runtime/text/utf8.h"

namespace tessera {
namespace {

using json = nlohmann::json;
using ::testing::ElementsAreArray;

const std::string kDataDir = std::string(TESSERA_SOURCE_DIR) + "/tests/data/qwen3";
const std::string kTokenizerDir = kDataDir + "/tokenizer-qwen3-0.6b";
const std::string kCasesDir = std::string(TESSERA_SOURCE_DIR) + "/tests/runtime/text/tokenizer";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

enum class Form { kTokenizerJson, kVocabMerges };

std::string FormName(const testing::TestParamInfo<Form>& info) {
  return info.param == Form::kTokenizerJson ? "TokenizerJson" : "VocabMerges";
}

// Loaded once per process, and only the form a test asks for.
const Tokenizer& Qwen3(Form form) {
  if (form == Form::kTokenizerJson) {
    static const Tokenizer* from_json = [] {
      auto t = Tokenizer::LoadTokenizerJson(kTokenizerDir + "/tokenizer.json");
      TESSERA_CHECK(t.ok()) << t.status();
      return t->release();
    }();
    return *from_json;
  }
  static const Tokenizer* from_trio = [] {
    auto t = Tokenizer::LoadVocabMerges(kTokenizerDir);
    TESSERA_CHECK(t.ok()) << t.status();
    return t->release();
  }();
  return *from_trio;
}

const json& HfCases() {
  static const json* cases = new json(json::parse(ReadFile(kCasesDir + "/hf_cases.json")));
  return *cases;
}

Tokenizer::EncodeOptions NoSpecial() {
  Tokenizer::EncodeOptions o;
  o.parse_special = false;
  return o;
}

Tokenizer::EncodeOptions SplitSpecial() {
  Tokenizer::EncodeOptions o;
  o.parse_special = false;
  o.keep_non_special = true;
  return o;
}

std::vector<int32_t> Ids(const json& array) { return array.get<std::vector<int32_t>>(); }

class Qwen3Test : public testing::TestWithParam<Form> {
 protected:
  const Tokenizer& tok() const { return Qwen3(GetParam()); }
};
INSTANTIATE_TEST_SUITE_P(Forms, Qwen3Test,
                         testing::Values(Form::kTokenizerJson, Form::kVocabMerges), FormName);

TEST_P(Qwen3Test, Basics) {
  EXPECT_EQ(tok().vocab_size(), 151669);
  EXPECT_EQ(tok().TokenToId("<|im_end|>"), 151645);
  EXPECT_EQ(tok().TokenToId("Ġworld"), 1879);
  EXPECT_EQ(tok().TokenToId("no such token"), std::nullopt);
  EXPECT_TRUE(tok().IsSpecial(151643));   // <|endoftext|>
  EXPECT_TRUE(tok().IsSpecial(151656));   // <|video_pad|>
  EXPECT_FALSE(tok().IsSpecial(151667));  // <think> is added, not special
  EXPECT_FALSE(tok().IsSpecial(1879));
  EXPECT_FALSE(tok().IsSpecial(-1));
  EXPECT_FALSE(tok().IsSpecial(151669));
  EXPECT_EQ(*tok().TokenBytes(1879), " world");
  EXPECT_EQ(*tok().TokenBytes(151667), "<think>");
  EXPECT_EQ(*tok().TokenBytes(198), "\n");
  EXPECT_FALSE(tok().TokenBytes(151669).ok());
  EXPECT_FALSE(tok().TokenBytes(-5).ok());
}

// llama.cpp's models/ggml-vocab-qwen2.gguf.inp/.out: 46 texts, special tokens as text.
TEST_P(Qwen3Test, LlamaCppVectors) {
  const std::string dir = kDataDir + "/llama.cpp-vocab-test-qwen2/";
  const std::string inp = ReadFile(dir + "ggml-vocab-qwen2.gguf.inp");
  const std::string out = ReadFile(dir + "ggml-vocab-qwen2.gguf.out");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t end = inp.find(sep, pos);
    ASSERT_NE(end, std::string::npos);
    texts.push_back(inp.substr(pos, end - pos));
    pos = end + sep.size();
  }
  std::vector<std::vector<int32_t>> expected;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ids(line);
    expected.emplace_back();
    for (int32_t id; ids >> id;) expected.back().push_back(id);
  }
  ASSERT_EQ(texts.size(), 46u);
  ASSERT_EQ(expected.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    auto ids = tok().Encode(texts[i], NoSpecial());
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_THAT(*ids, ElementsAreArray(expected[i])) << "case " << i << ": '" << texts[i] << "'";
  }
}

TEST_P(Qwen3Test, HfEncodeCases) {
  int checked = 0;
  for (const json& c : HfCases()["encode"]) {
    const std::string text = c["text"];
    const std::string label = c["category"].get<std::string>() + ": " + c.dump().substr(0, 200);
    auto ids = tok().Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status() << " " << label;
    EXPECT_THAT(*ids, ElementsAreArray(Ids(c["ids"]))) << label;
    auto no_special = tok().Encode(text, NoSpecial());
    ASSERT_TRUE(no_special.ok());
    EXPECT_THAT(*no_special, ElementsAreArray(Ids(c["ids_no_special"]))) << label;
    auto split = tok().Encode(text, SplitSpecial());
    ASSERT_TRUE(split.ok());
    EXPECT_THAT(*split, ElementsAreArray(Ids(c["ids_split"]))) << label;
    EXPECT_EQ(*tok().Decode(*ids, false), c["decoded"].get<std::string>()) << label;
    EXPECT_EQ(*tok().Decode(*ids, true), c["decoded_skip"].get<std::string>()) << label;
    ++checked;
  }
  EXPECT_GE(checked, 100);
}

TEST_P(Qwen3Test, HfDecodeCases) {
  for (const json& c : HfCases()["decode"]) {
    const std::vector<int32_t> ids = Ids(c["ids"]);
    EXPECT_EQ(*tok().Decode(ids, false), c["text"].get<std::string>()) << c.dump();
    EXPECT_EQ(*tok().Decode(ids, true), c["text_skip"].get<std::string>()) << c.dump();
  }
}

// Random valid UTF-8 from many scripts: decode(encode(s)) == NFC(s). NFC is checked through the
// tokenizer's own behaviour on text already in NFC (where it must be the identity) and through
// a few known compositions.
std::string RandomText(std::mt19937& rng) {
  static const std::vector<std::pair<char32_t, char32_t>> kRanges = {
      {0x20, 0x7E},     {0x09, 0x0D},       {0xA0, 0x24F},      {0x300, 0x36F},
      {0x370, 0x3FF},   {0x400, 0x4FF},     {0x590, 0x5FF},     {0x600, 0x6FF},
      {0x900, 0x97F},   {0xE00, 0xE7F},     {0x1100, 0x11FF},   {0x180E, 0x180E},
      {0x2000, 0x206F}, {0x3000, 0x30FF},   {0x4E00, 0x9FFF},   {0xAC00, 0xD7A3},
      {0xFF00, 0xFFEF}, {0x1F300, 0x1FAFF}, {0x20000, 0x2A6DF}, {0x10000, 0x10FFFF},
  };
  std::uniform_int_distribution<int> length(0, 40);
  std::uniform_int_distribution<size_t> pick(0, kRanges.size() - 1);
  std::string s;
  const int n = length(rng);
  for (int i = 0; i < n; ++i) {
    const auto [lo, hi] = kRanges[pick(rng)];
    char32_t c = std::uniform_int_distribution<char32_t>(lo, hi)(rng);
    if (c >= 0xD800 && c <= 0xDFFF) c = 'x';
    AppendUtf8(c, &s);
  }
  return s;
}

TEST_P(Qwen3Test, RoundTripRandomText) {
  std::mt19937 rng(20250521);
  for (int i = 0; i < 3000; ++i) {
    const std::string s = RandomText(rng);
    auto ids = tok().Encode(s, NoSpecial());
    ASSERT_TRUE(ids.ok()) << ids.status();
    auto back = tok().Decode(*ids, false);
    ASSERT_TRUE(back.ok());
    // Encoding NFC(s) gives the same ids, and decoding gives NFC(s) back, which is stable.
    auto again = tok().Encode(*back, NoSpecial());
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *ids) << testing::PrintToString(s);
    EXPECT_EQ(*tok().Decode(*again, false), *back);
  }
}

TEST_P(Qwen3Test, RoundTripNfc) {
  // decode(encode(s)) == NFC(s).
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"cafe\xCC\x81", "caf\xC3\xA9"},                           // e + U+0301 -> é
      {"\xE2\x84\xAB", "\xC3\x85"},                              // U+212B ANGSTROM SIGN -> Å
      {"\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", "\xEA\xB0\x81"},  // Hangul jamo -> 각
      {"a\xCC\x81\xCC\xA7", "\xC3\xA1\xCC\xA7"},                 // reordering, then á + U+0327
      {"plain ascii", "plain ascii"},
  };
  for (const auto& [in, nfc] : cases) {
    auto ids = tok().Encode(in);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*tok().Decode(*ids, false), nfc) << in;
  }
  // Special tokens round-trip too, and parse_special decides whether they are one id.
  const std::string chat = "<|im_start|>user\nhi<|im_end|>\n<think>\n</think>";
  auto ids = tok().Encode(chat);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*tok().Decode(*ids, false), chat);
  EXPECT_EQ((*ids)[0], 151644);
  auto text_ids = tok().Encode(chat, NoSpecial());
  ASSERT_TRUE(text_ids.ok());
  EXPECT_EQ(*tok().Decode(*text_ids, false), chat);
  for (int32_t id : *text_ids) EXPECT_LT(id, 151643);
  EXPECT_EQ(*tok().Decode(*ids, true), "user\nhi\n<think>\n</think>");
}

TEST_P(Qwen3Test, InvalidUtf8IsAnErrorWithOffset) {
  struct Case {
    std::string text;
    size_t offset;
  };
  const std::vector<Case> cases = {
      {std::string("abc\xFF", 4), 3},  {std::string("\x80", 1), 0},
      {std::string("ok \xC3", 4), 3},  {std::string("\xED\xA0\x80", 3), 0},  // surrogate
      {std::string("\xC0\xAF", 2), 0}, {std::string("xx\xF4\x90\x80\x80", 6), 2},
      {std::string("\xE2\x82", 2), 0}, {std::string("<|im_end|>\xFE", 11), 10},
  };
  for (const Case& c : cases) {
    auto ids = tok().Encode(c.text);
    ASSERT_FALSE(ids.ok()) << testing::PrintToString(c.text);
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(ids.status().message()),
                testing::HasSubstr("byte offset " + std::to_string(c.offset)))
        << ids.status();
  }
  // NUL is valid UTF-8.
  EXPECT_TRUE(tok().Encode(std::string("a\0b", 3)).ok());
}

TEST_P(Qwen3Test, DecodeRejectsUnknownIds) {
  for (int32_t bad : {-1, 151669, 151935, 1 << 30}) {
    auto text = tok().Decode({9707, bad}, false);
    ASSERT_FALSE(text.ok());
    EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(text.status().message()), testing::HasSubstr("position 1"));
  }
}

TEST_P(Qwen3Test, EmptyText) {
  EXPECT_TRUE(tok().Encode("")->empty());
  EXPECT_EQ(*tok().Decode({}, false), "");
}

// Long inputs exercise PCRE2's limits and the BPE queue on big pieces.
TEST_P(Qwen3Test, LongPieces) {
  for (const std::string& s :
       {std::string(100000, 'a'), std::string(100000, ' '), std::string(50000, '\n'),
        std::string(30000, '7'), std::string(20000, '!') + "x"}) {
    auto ids = tok().Encode(s);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*tok().Decode(*ids, false), s);
  }
}

// Encode and Decode are const and thread-safe (the piece cache is per thread).
TEST_P(Qwen3Test, ConcurrentEncodeMatchesSerial) {
  std::mt19937 rng(99);
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> expected;
  for (int i = 0; i < 300; ++i) {
    texts.push_back(RandomText(rng) + " the same words again and again " + std::to_string(i));
    expected.push_back(*tok().Encode(texts.back()));
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        for (size_t k = 0; k < texts.size(); ++k) {
          const size_t i = (k * (t + 1) + round) % texts.size();
          auto ids = tok().Encode(texts[i]);
          if (!ids.ok() || *ids != expected[i] ||
              *tok().Decode(*ids, false) != *tok().Decode(expected[i], false)) {
            ++mismatches;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// --- streaming detokenizer

std::vector<int32_t> ByteIds(const Tokenizer& tok, std::string_view bytes) {
  std::vector<int32_t> ids;
  for (unsigned char b : bytes) {
    // The single-byte token of each byte, found through the alphabet via Encode of one byte
    // would fail for non-UTF-8 bytes, so look it up from TokenBytes instead.
    for (int32_t id = 0; id < 256 * 4; ++id) {
      auto t = tok.TokenBytes(id);
      if (t.ok() && t->size() == 1 && static_cast<unsigned char>((*t)[0]) == b) {
        ids.push_back(id);
        break;
      }
    }
  }
  EXPECT_EQ(ids.size(), bytes.size());
  return ids;
}

std::vector<std::string> Stream(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                bool skip_special) {
  StreamingDetokenizer detok(tok, skip_special);
  std::vector<std::string> out;
  for (int32_t id : ids) {
    auto piece = detok.Push(id);
    EXPECT_TRUE(piece.ok()) << piece.status();
    out.push_back(piece.ok() ? *piece : "");
  }
  out.push_back(detok.Flush());
  return out;
}

TEST_P(Qwen3Test, StreamingHoldsSplitCharacters) {
  // "é" (C3 A9) and "😀" (F0 9F 98 80) one byte per token: nothing comes out until complete.
  const auto ids = ByteIds(tok(), "a\xC3\xA9\xF0\x9F\x98\x80z");
  EXPECT_THAT(Stream(tok(), ids, false),
              ElementsAreArray({"a", "", "\xC3\xA9", "", "", "", "\xF0\x9F\x98\x80", "z", ""}));
}

TEST_P(Qwen3Test, StreamingEmojiAcrossTokens) {
  // A ZWJ family: how BPE cuts it does not matter, every output is whole characters.
  const std::string family =
      "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7";
  auto ids = tok().Encode("x " + family + " y");
  ASSERT_TRUE(ids.ok());
  std::string joined;
  for (const std::string& piece : Stream(tok(), *ids, false)) {
    EXPECT_EQ(FindInvalidUtf8(piece), std::string_view::npos);
    joined += piece;
  }
  EXPECT_EQ(joined, "x " + family + " y");
}

TEST_P(Qwen3Test, StreamingSkipsSpecialTokens) {
  auto ids = tok().Encode("<|im_start|>assistant\nok<|im_end|><think>");
  ASSERT_TRUE(ids.ok());
  std::string with, without;
  for (const auto& p : Stream(tok(), *ids, false)) with += p;
  for (const auto& p : Stream(tok(), *ids, true)) without += p;
  EXPECT_EQ(with, "<|im_start|>assistant\nok<|im_end|><think>");
  EXPECT_EQ(without, "assistant\nok<think>");  // <think> is not special
  // A skipped special token between the bytes of one character does not break it.
  std::vector<int32_t> split = ByteIds(tok(), "\xF0\x9F");
  split.push_back(151645);
  for (int32_t id : ByteIds(tok(), "\x98\x80")) split.push_back(id);
  std::string skipped;
  for (const auto& p : Stream(tok(), split, true)) skipped += p;
  EXPECT_EQ(skipped, "\xF0\x9F\x98\x80");
  std::string kept;
  for (const auto& p : Stream(tok(), split, false)) kept += p;
  EXPECT_EQ(kept, *tok().Decode(split, false));
  EXPECT_EQ(kept, "\xEF\xBF\xBD<|im_end|>\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST_P(Qwen3Test, StreamingFlushesIncompleteAsReplacement) {
  const auto ids = ByteIds(tok(), "\xE4\xB8");  // first two bytes of 中
  EXPECT_THAT(Stream(tok(), ids, false), ElementsAreArray({"", "", "\xEF\xBF\xBD"}));
  StreamingDetokenizer detok(tok(), false);
  EXPECT_FALSE(detok.Push(151669).ok());
  EXPECT_FALSE(detok.Push(-1).ok());
  EXPECT_EQ(detok.Flush(), "");
}

// Streaming equals Decode on random id sequences, including broken UTF-8 and special tokens.
TEST_P(Qwen3Test, StreamingMatchesDecode) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> any_id(0, tok().vocab_size() - 1);
  std::uniform_int_distribution<int32_t> byte_id(0, 255);
  std::uniform_int_distribution<int> length(0, 30);
  for (int i = 0; i < 2000; ++i) {
    std::vector<int32_t> ids;
    const int n = length(rng);
    for (int k = 0; k < n; ++k) {
      // Ids below 256 are single bytes in this vocabulary, often parts of characters.
      ids.push_back(rng() % 3 == 0 ? any_id(rng) : byte_id(rng));
    }
    for (bool skip : {false, true}) {
      std::string joined;
      for (const std::string& piece : Stream(tok(), ids, skip)) {
        ASSERT_EQ(FindInvalidUtf8(piece), std::string_view::npos);
        joined += piece;
      }
      EXPECT_EQ(joined, *tok().Decode(ids, skip));
    }
  }
}

// --- the small tokenizer whose added tokens use every flag (lstrip, rstrip, single_word,
// normalized, special), against the ids Hugging Face gives.
// More tokenizers than a thread keeps piece caches for (4): alternating between them recycles
// caches and must never mix their entries up.
TEST(TokenizerCacheTest, ManyTokenizersOnOneThread) {
  std::vector<std::unique_ptr<Tokenizer>> toks;
  for (int i = 0; i < 6; ++i) {
    auto t = Tokenizer::LoadTokenizerJson(kCasesDir + "/flags_tokenizer.json");
    ASSERT_TRUE(t.ok());
    toks.push_back(*std::move(t));
  }
  const Tokenizer& qwen = Qwen3(Form::kTokenizerJson);
  const std::string text = "the hello world, he said: cafe\xCC\x81 <W> <|sp|>";
  const std::vector<int32_t> small = *toks[0]->Encode(text);
  const std::vector<int32_t> big = *qwen.Encode(text);
  ASSERT_NE(small, big);
  for (int round = 0; round < 20; ++round) {
    for (const auto& t : toks) EXPECT_EQ(*t->Encode(text), small);
    EXPECT_EQ(*qwen.Encode(text), big);
  }
  toks.clear();  // caches of destroyed tokenizers are never found again (owners are not reused)
  auto fresh = Tokenizer::LoadTokenizerJson(kCasesDir + "/flags_tokenizer.json");
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(*(*fresh)->Encode(text), small);
}

TEST(TokenizerFlagsTest, MatchesHuggingFace) {
  auto tok = Tokenizer::LoadTokenizerJson(kCasesDir + "/flags_tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  int checked = 0;
  for (const json& c : HfCases()["flags"]) {
    const std::string text = c["text"];
    auto ids = (*tok)->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_THAT(*ids, ElementsAreArray(Ids(c["ids"]))) << c.dump();
    auto split = (*tok)->Encode(text, SplitSpecial());
    ASSERT_TRUE(split.ok());
    EXPECT_THAT(*split, ElementsAreArray(Ids(c["ids_split"]))) << c.dump();
    EXPECT_EQ(*(*tok)->Decode(*ids, false), c["decoded"].get<std::string>()) << c.dump();
    EXPECT_EQ(*(*tok)->Decode(*ids, true), c["decoded_skip"].get<std::string>()) << c.dump();
    ++checked;
  }
  EXPECT_GE(checked, 15);
}

}  // namespace
}  // namespace tessera
