// runtime/text/utf8: validation (Unicode Table 3-7), the lossy conversion of Hugging Face's
// ByteLevel decoder, and the code-point helpers the chat templates use.
#include "runtime/text/utf8.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>

namespace tessera {
namespace {

std::string Lossy(std::string_view bytes) {
  std::string out;
  AppendUtf8Lossy(bytes, &out);
  return out;
}

constexpr char kFffd[] = "\xEF\xBF\xBD";

TEST(Utf8Test, FindInvalid) {
  EXPECT_EQ(FindInvalidUtf8(""), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("plain ascii that is longer than eight bytes"), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80\xF4\x8F\xBF\xBF"),
            std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("0123456789\x80"), 10u);
  EXPECT_EQ(FindInvalidUtf8("ab\xC0\x80"), 2u);        // overlong
  EXPECT_EQ(FindInvalidUtf8("ab\xE0\x9F\xBF"), 2u);    // overlong 3-byte
  EXPECT_EQ(FindInvalidUtf8("\xED\xBF\xBF"), 0u);      // surrogate
  EXPECT_EQ(FindInvalidUtf8("\xF4\x90\x80\x80"), 0u);  // above U+10FFFF
  EXPECT_EQ(FindInvalidUtf8("\xF5\x80\x80\x80"), 0u);
  EXPECT_EQ(FindInvalidUtf8("x\xE4\xB8"), 1u);  // truncated
  EXPECT_EQ(FindInvalidUtf8("ok \xC3\xA9"), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("\xED\xA0\x80"), 0u);  // surrogate (high)
}

// Rust's String::from_utf8_lossy (which Hugging Face's decoder uses): one U+FFFD per maximal
// subpart of an ill-formed sequence (Unicode §3.9, Table 3-8's example included).
TEST(Utf8Test, LossyReplacesMaximalSubparts) {
  EXPECT_EQ(Lossy("a\xC3\xA9z"), "a\xC3\xA9z");
  EXPECT_EQ(Lossy("\xC0\xAF"), std::string(kFffd) + kFffd);
  EXPECT_EQ(Lossy("\xE0\x80"), std::string(kFffd) + kFffd);
  EXPECT_EQ(Lossy("\xF0\x9F\x98"), kFffd);
  EXPECT_EQ(Lossy("\xF0\x9F\x98"
                  "a"),
            std::string(kFffd) + "a");
  EXPECT_EQ(Lossy("\xED\xA0\x80"), std::string(kFffd) + kFffd + kFffd);
  EXPECT_EQ(Lossy("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            std::string("a") + kFffd + kFffd + kFffd + "b" + kFffd + "c" + kFffd + kFffd + "d");
}

TEST(Utf8Test, StablePrefixHoldsIncompleteTail) {
  std::string out;
  EXPECT_EQ(AppendUtf8LossyStable("ab\xF0\x9F", &out), 2u);
  EXPECT_EQ(out, "ab");
  out.clear();
  EXPECT_EQ(AppendUtf8LossyStable("\xF0\x9F\x98\x80", &out), 4u);
  EXPECT_EQ(out, "\xF0\x9F\x98\x80");
  out.clear();
  // An ill-formed prefix is final at once; only a well-formed incomplete one waits.
  EXPECT_EQ(AppendUtf8LossyStable("\xF0\x41", &out), 2u);
  EXPECT_EQ(out, std::string(kFffd) + "A");
}

TEST(Utf8Test, CodePoints) {
  const std::string text = "a\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80";  // a é 中 😀
  EXPECT_EQ(DecodeUtf8(text), (std::u32string{U'a', 0xE9, 0x4E2D, 0x1F600}));
  EXPECT_EQ(EncodeUtf8(DecodeUtf8(text)), text);
  EXPECT_EQ(CodePointCount(text), 4u);
  EXPECT_EQ(CodePointCount(""), 0u);
  size_t pos = 1;
  EXPECT_EQ(NextCodePoint(text, &pos), char32_t{0xE9});
  EXPECT_EQ(pos, 3u);
  // Bytes that start no well-formed character decode as U+FFFD, one byte at a time.
  EXPECT_EQ(DecodeUtf8("\x80z\xE4\xB8"), (std::u32string{0xFFFD, U'z', 0xFFFD, 0xFFFD}));
  EXPECT_EQ(DecodeUtf8("\xC0\x80"), (std::u32string{0xFFFD, 0xFFFD}));  // overlong
}

TEST(Utf8Test, IsAscii) {
  EXPECT_TRUE(IsAscii(""));
  EXPECT_TRUE(IsAscii("plain ascii that is longer than eight bytes"));
  EXPECT_FALSE(IsAscii("0123456789abcde\x80"));
  EXPECT_FALSE(IsAscii("\xC3\xA9"));
}

}  // namespace
}  // namespace tessera
