// Tokenizer speed: encode and decode throughput (MB/s of UTF-8 text) and the latency of encoding
// one 32K-token prompt, on three corpora, single-threaded. docs/perf/tokenizer.md records runs.
//
//   tokenizer_bench [--tokenizer DIR] [--quick]
//
// Corpora: "prose" (the licence texts under /usr/share/common-licenses, which every Debian system
// has; skipped when absent), "code" (this repository's C++ sources) and "multilingual" (the
// multilingual and emoji texts of hf_cases.json, repeated). "cold" numbers use a freshly loaded
// tokenizer, whose piece cache is empty; "warm" ones the same tokenizer again, as a server sees.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/text/tokenizer/tokenizer.h"

namespace tessera {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string ProseCorpus() {
  std::string text;
  const std::filesystem::path dir = "/usr/share/common-licenses";
  if (!std::filesystem::is_directory(dir)) return text;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.is_regular_file()) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) text += ReadFile(f);
  return text;
}

std::string CodeCorpus(const std::string& root) {
  std::vector<std::filesystem::path> files;
  for (const char* sub : {"kernels", "parallel", "runtime", "launch", "tests"}) {
    const std::filesystem::path dir = std::filesystem::path(root) / sub;
    if (!std::filesystem::is_directory(dir)) continue;
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
      const auto ext = e.path().extension();
      if (e.is_regular_file() && (ext == ".cc" || ext == ".h" || ext == ".cu")) {
        files.push_back(e.path());
      }
    }
  }
  std::sort(files.begin(), files.end());
  std::string text;
  for (const auto& f : files) text += ReadFile(f);
  return text;
}

std::string MultilingualCorpus(const std::string& root) {
  const auto cases =
      nlohmann::json::parse(ReadFile(root + "/tests/runtime/text/tokenizer/hf_cases.json"));
  std::string block;
  for (const auto& c : cases["encode"]) {
    const std::string category = c["category"];
    if (category == "multilingual" || category == "emoji")
      block += c["text"].get<std::string>() + "\n";
  }
  std::string text;
  while (text.size() < 200000) text += block;
  return text;
}

std::unique_ptr<Tokenizer> Load(const std::string& dir) {
  auto t = Tokenizer::Load(dir);
  if (!t.ok()) {
    std::fprintf(stderr, "%s\n", std::string(t.status().message()).c_str());
    std::exit(1);
  }
  return *std::move(t);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Bench(const char* name, const std::string& text, const std::string& dir, bool quick) {
  if (text.empty()) {
    std::printf("%-13s (corpus not available, skipped)\n", name);
    return;
  }
  const int reps = quick ? 1 : 5;
  const double mb = text.size() / 1e6;

  // Encode, cold then warm.
  auto tok = Load(dir);
  auto t0 = Clock::now();
  auto ids = tok->Encode(text);
  auto t1 = Clock::now();
  if (!ids.ok()) std::exit(1);
  const double cold = Seconds(t0, t1);
  std::vector<double> warm;
  for (int r = 0; r < reps; ++r) {
    t0 = Clock::now();
    auto again = tok->Encode(text);
    warm.push_back(Seconds(t0, Clock::now()));
  }
  // Decode.
  std::vector<double> dec;
  for (int r = 0; r < reps; ++r) {
    t0 = Clock::now();
    auto back = tok->Decode(*ids, false);
    dec.push_back(Seconds(t0, Clock::now()));
  }
  // Streaming detokenizer, one Push per token.
  t0 = Clock::now();
  {
    StreamingDetokenizer detok(*tok, false);
    size_t bytes = 0;
    for (int32_t id : *ids) bytes += detok.Push(id)->size();
    bytes += detok.Flush().size();
    if (bytes == 0) std::exit(1);
  }
  const double stream = Seconds(t0, Clock::now());

  std::printf(
      "%-13s %7.0f KB %7zu tokens (%.2f B/token)  encode cold %6.1f MB/s  warm %6.1f MB/s"
      "  decode %7.1f MB/s  stream %5.1f M tokens/s\n",
      name, text.size() / 1e3, ids->size(), double(text.size()) / ids->size(), mb / cold,
      mb / Median(warm), mb / Median(dec), ids->size() / stream / 1e6);

  // A 32K-token prompt: the prefix of the corpus that encodes to 32768 tokens (or all of it).
  if (ids->size() < 32768) {
    std::printf("%-13s corpus has fewer than 32768 tokens; no prompt latency\n", name);
    return;
  }
  auto prefix_ids = std::vector<int32_t>(ids->begin(), ids->begin() + 32768);
  std::string prompt = *tok->Decode(prefix_ids, false);
  std::vector<double> cold_ms, warm_ms;
  size_t prompt_tokens = 0;
  for (int r = 0; r < (quick ? 1 : 3); ++r) {
    auto fresh = Load(dir);
    t0 = Clock::now();
    prompt_tokens = fresh->Encode(prompt)->size();
    cold_ms.push_back(Seconds(t0, Clock::now()) * 1e3);
  }
  for (int r = 0; r < reps * 2; ++r) {
    t0 = Clock::now();
    auto p = tok->Encode(prompt);
    warm_ms.push_back(Seconds(t0, Clock::now()) * 1e3);
  }
  std::printf(
      "%-13s 32K-token prompt (%zu tokens, %.0f KB): encode cold %.1f ms, warm %.1f ms "
      "(median)\n",
      name, prompt_tokens, prompt.size() / 1e3, Median(cold_ms), Median(warm_ms));
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  const std::string root = TESSERA_SOURCE_DIR;
  std::string dir = root + "/tests/data/qwen3/tokenizer-qwen3-0.6b";
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!std::strcmp(argv[i], "--tokenizer") && i + 1 < argc) {
      dir = argv[++i];
    } else {
      std::fprintf(stderr, "usage: tokenizer_bench [--tokenizer DIR] [--quick]\n");
      return 2;
    }
  }
  auto t0 = tessera::Clock::now();
  auto tok = tessera::Load(dir);
  std::printf("load %s: %.0f ms\n", dir.c_str(), tessera::Seconds(t0, tessera::Clock::now()) * 1e3);
  tessera::Bench("prose", tessera::ProseCorpus(), dir, quick);
  tessera::Bench("code", tessera::CodeCorpus(root), dir, quick);
  tessera::Bench("multilingual", tessera::MultilingualCorpus(root), dir, quick);
  return 0;
}
