// libFuzzer target: arbitrary bytes as a tokenizer.json (tests/fuzz/tokenizer.cmake).
//
// Loading either fails with an error that names the file, or gives a tokenizer that encodes and
// decodes without crashing. Seed it with tests/runtime/text/tokenizer/flags_tokenizer.json (and the
// small files tokenizer_files_test.cc writes) so that mutations stay close to valid files.
#include <cstdint>
#include <string>

#include "kernels/base/check.h"
#include "runtime/text/tokenizer/loader.h"
#include "runtime/text/tokenizer/tokenizer.h"
#include "runtime/text/utf8.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto tok = tessera::tokenizer_internal::LoadTokenizerJsonText(text, "fuzz/tokenizer.json");
  if (!tok.ok()) {
    TESSERA_CHECK(std::string(tok.status().message()).find("fuzz/tokenizer.json") !=
                  std::string::npos)
        << "error does not name the file: " << tok.status();
    return 0;
  }
  for (const char* sample : {"Hello world, it's 2024!", "caf\xC3\xA9 \xF0\x9F\x98\x80 <|sp|>",
                             "  \n\t<L> <R> <W>x", ""}) {
    for (bool parse_special : {true, false}) {
      tessera::Tokenizer::EncodeOptions options;
      options.parse_special = parse_special;
      auto ids = (*tok)->Encode(sample, options);
      if (!ids.ok()) continue;  // e.g. a regex that hits PCRE2's limits
      for (int32_t id : *ids) TESSERA_CHECK(id >= 0 && id < (*tok)->vocab_size());
      auto back = (*tok)->Decode(*ids, !parse_special);
      TESSERA_CHECK(back.ok()) << back.status();
      TESSERA_CHECK(tessera::FindInvalidUtf8(*back) == std::string::npos);
    }
  }
  return 0;
}
