// libFuzzer target: arbitrary bytes through the Qwen3 tokenizer (tests/fuzz/tokenizer.cmake).
//
// Whatever the bytes, nothing crashes or trips a sanitizer, and:
//   - invalid UTF-8 is refused (InvalidArgument) at the first offset ICU's own decoder rejects;
//   - valid UTF-8 encodes to ids in range, in each added-token mode, and round-trips: the decoded
//     text is valid UTF-8 and encodes to the same ids (decode gives the NFC form, whose NFC is
//     itself);
//   - decoding the bytes read as ids (wild ones included) either fails on an unknown id or gives
//     valid UTF-8, and the streaming detokenizer gives the same text, in whole characters.
#include <unicode/utf8.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/base/check.h"
#include "runtime/text/tokenizer/tokenizer.h"
#include "runtime/text/utf8.h"

namespace {

using tessera::FindInvalidUtf8;
using tessera::StreamingDetokenizer;
using tessera::Tokenizer;

const Tokenizer& Qwen3() {
  static const Tokenizer* tok = [] {
    const char* dir = std::getenv("TESSERA_FUZZ_TOKENIZER_DIR");
    auto t = Tokenizer::Load(dir != nullptr ? dir : TESSERA_FUZZ_TOKENIZER_DIR);
    TESSERA_CHECK(t.ok()) << t.status();
    return t->release();
  }();
  return *tok;
}

// The offset of the first ill-formed sequence according to ICU's U8_NEXT, an independent
// decoder, or npos.
size_t IcuInvalidOffset(std::string_view s) {
  int32_t i = 0;
  const int32_t n = static_cast<int32_t>(s.size());
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  while (i < n) {
    const int32_t start = i;
    UChar32 c;
    U8_NEXT(p, i, n, c);
    if (c < 0) return static_cast<size_t>(start);
  }
  return std::string_view::npos;
}

void CheckDecode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  auto text = tok.Decode(ids, skip);
  StreamingDetokenizer detok(tok, skip);
  std::string streamed;
  bool stream_ok = true;
  for (int32_t id : ids) {
    auto piece = detok.Push(id);
    if (!piece.ok()) {
      stream_ok = false;
      break;
    }
    TESSERA_CHECK(FindInvalidUtf8(*piece) == std::string_view::npos);
    streamed += *piece;
  }
  TESSERA_CHECK_EQ(text.ok(), stream_ok);
  if (!text.ok()) return;
  streamed += detok.Flush();
  TESSERA_CHECK(FindInvalidUtf8(*text) == std::string_view::npos);
  TESSERA_CHECK(streamed == *text) << "streaming and Decode differ";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Tokenizer& tok = Qwen3();
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  const size_t invalid = IcuInvalidOffset(text);
  Tokenizer::EncodeOptions modes[3];
  modes[1].parse_special = false;
  modes[2].parse_special = false;
  modes[2].keep_non_special = true;
  for (const Tokenizer::EncodeOptions& options : modes) {
    auto ids = tok.Encode(text, options);
    if (invalid != std::string_view::npos) {
      TESSERA_CHECK(!ids.ok()) << "invalid UTF-8 at " << invalid << " was accepted";
      TESSERA_CHECK(ids.status().code() == absl::StatusCode::kInvalidArgument);
      TESSERA_CHECK(
          std::string(ids.status().message()).find("byte offset " + std::to_string(invalid)) !=
          std::string::npos)
          << ids.status();
      continue;
    }
    TESSERA_CHECK(ids.ok()) << ids.status();
    for (int32_t id : *ids) TESSERA_CHECK(id >= 0 && id < tok.vocab_size());
    auto back = tok.Decode(*ids, false);
    TESSERA_CHECK(back.ok()) << back.status();
    TESSERA_CHECK(FindInvalidUtf8(*back) == std::string_view::npos);
    auto again = tok.Encode(*back, options);
    TESSERA_CHECK(again.ok()) << again.status();
    TESSERA_CHECK(*again == *ids) << "decode(encode(s)) does not encode back to the same ids";
    CheckDecode(tok, *ids, options.parse_special);
  }

  // The same bytes as a stream of ids: mostly small (single bytes, often parts of characters),
  // some anywhere in the vocabulary, and now and then out of range.
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 2 <= size && ids.size() < 256; i += 2) {
    const uint16_t v = static_cast<uint16_t>(data[i] | (data[i + 1] << 8));
    if (v < 0xC000) {
      ids.push_back(v & 0xFF);
    } else if (v < 0xFFF0) {
      ids.push_back(static_cast<int32_t>((v - 0xC000) * 12 % 151700));
    } else {
      ids.push_back(v == 0xFFFF ? -1 : tok.vocab_size() + (v & 0xF));
    }
  }
  CheckDecode(tok, ids, false);
  CheckDecode(tok, ids, true);
  return 0;
}
