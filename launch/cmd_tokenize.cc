// tessera tokenize / tessera detokenize: the tokenizer from the command line.
//
//   tessera tokenize --tokenizer DIR (--text T | --text-file F) [--json] [--no-special]
//                    [--split-special-tokens] [--jsonl]
//   tessera detokenize --tokenizer DIR (--ids 1,2,3 | --ids-file F) [--json]
//                      [--skip-special-tokens] [--stream] [--jsonl]
//   (--help: every flag)
//
// DIR is a model or tokenizer directory (tokenizer.json, or vocab.json + merges.txt +
// tokenizer_config.json). --jsonl batches many inputs in one process: each line of the file is a
// JSON string (tokenize) or a JSON array of ids (detokenize), and each gives one JSON line out,
// {"ids": [...]} / {"text": "..."}, or {"error": "..."} for that line alone.
// Exit codes: 0 ok, 1 error (bad tokenizer files, invalid UTF-8, unknown ids), 2 usage.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "runtime/text/tokenizer/tokenizer.h"

namespace tessera {
namespace {

using json = nlohmann::json;

int Error(const char* command, const std::string& message) {
  std::fprintf(stderr, "tessera %s: %s\n", command, message.c_str());
  return 1;
}

// NOTE: ASCII-only JSON (\uXXXX escapes, as Python's json.dumps writes): a line of --jsonl
// output then never holds U+2028, U+0085 and the like, which some line splitters cut at.
std::string Dump(const json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace);
}

bool ReadWholeFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  *out = std::move(buffer).str();
  return !in.bad();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

}  // namespace

int TokenizeCommand(int argc, char** argv) {
  constexpr const char* kName = "tokenize";
  std::string dir, text, text_file;
  bool as_json = false, jsonl = false, no_special = false, split_special = false;
  std::unique_ptr<CLI::App> app = NewCommandLine("tokenize", "Text to token ids.");
  app->add_option("--tokenizer", dir,
                  "model or tokenizer directory (tokenizer.json, or vocab.json + merges.txt)")
      ->type_name("DIR")
      ->required();
  CLI::Option* text_flag = app->add_option("--text", text, "the text");
  app->add_option("--text-file", text_file, "read the text from this file")
      ->type_name("FILE")
      ->excludes(text_flag);
  app->add_flag("--json", as_json, "print {\"ids\": [...]} instead of ids separated by spaces");
  app->add_flag("--jsonl", jsonl,
                "--text-file holds one JSON string per line; print one JSON line each");
  app->add_flag("--no-special", no_special, "special tokens in the text are plain text");
  app->add_flag("--split-special-tokens", split_special,
                "special tokens in the text are split as plain text (HF split_special_tokens)");
  if (std::optional<int> code = ParseCommandLine(*app, argc, argv)) return *code;
  auto usage = [&](const std::string& message) {
    std::fprintf(stderr, "tessera %s: %s\nRun with --help for the flags.\n", kName,
                 message.c_str());
    return 2;
  };
  if (text_flag->count() == 0 && text_file.empty()) {
    return usage("give exactly one of --text and --text-file");
  }
  if (jsonl && text_file.empty()) return usage("--jsonl needs --text-file");
  if (no_special && split_special) {
    return usage("--no-special and --split-special-tokens exclude each other");
  }
  Tokenizer::EncodeOptions options;
  options.parse_special = !no_special && !split_special;
  options.keep_non_special = split_special;

  std::string input;
  if (text_file.empty()) {
    input = text;
  } else if (!ReadWholeFile(text_file, &input)) {
    return Error(kName, text_file + ": cannot read");
  }
  auto tokenizer = Tokenizer::Load(dir);
  if (!tokenizer.ok()) return Error(kName, std::string(tokenizer.status().message()));

  if (jsonl) {
    int rc = 0;
    std::string out;
    const std::vector<std::string> lines = Lines(input);
    for (size_t i = 0; i < lines.size(); ++i) {
      json result;
      json line = json::parse(lines[i], nullptr, /*allow_exceptions=*/false);
      if (!line.is_string()) {
        result["error"] = absl::StrCat("line ", i + 1, ": expected a JSON string");
      } else if (auto ids = (*tokenizer)->Encode(line.get<std::string>(), options); ids.ok()) {
        result["ids"] = *ids;
      } else {
        result["error"] = absl::StrCat("line ", i + 1, ": ", ids.status().message());
      }
      if (result.contains("error")) rc = 1;
      absl::StrAppend(&out, Dump(result), "\n");
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    return rc;
  }
  auto ids = (*tokenizer)->Encode(input, options);
  if (!ids.ok()) return Error(kName, std::string(ids.status().message()));
  if (as_json) {
    std::printf("%s\n", Dump(json{{"ids", *ids}}).c_str());
  } else {
    std::printf("%s\n", absl::StrJoin(*ids, " ").c_str());
  }
  return 0;
}

int DetokenizeCommand(int argc, char** argv) {
  constexpr const char* kName = "detokenize";
  std::string dir, ids_text, ids_file;
  bool as_json = false, jsonl = false, skip_special = false, stream = false;
  std::unique_ptr<CLI::App> app = NewCommandLine("detokenize", "Token ids to text.");
  app->add_option("--tokenizer", dir,
                  "model or tokenizer directory (tokenizer.json, or vocab.json + merges.txt)")
      ->type_name("DIR")
      ->required();
  CLI::Option* ids_flag =
      app->add_option("--ids", ids_text, "token ids, e.g. 1,2,3")->type_name("LIST");
  app->add_option("--ids-file", ids_file,
                  "read the ids from this file (separated by commas or whitespace)")
      ->type_name("FILE")
      ->excludes(ids_flag);
  app->add_flag("--json", as_json, "print {\"text\": ...} instead of the bare text");
  app->add_flag("--jsonl", jsonl,
                "--ids-file holds one JSON array of ids per line; print one JSON line each");
  app->add_flag("--skip-special-tokens", skip_special, "leave special tokens out of the text");
  app->add_flag("--stream", stream,
                "decode id by id as a stream would (with --json: the chunks too)");
  if (std::optional<int> code = ParseCommandLine(*app, argc, argv)) return *code;
  auto usage = [&](const std::string& message) {
    std::fprintf(stderr, "tessera %s: %s\nRun with --help for the flags.\n", kName,
                 message.c_str());
    return 2;
  };
  if (ids_flag->count() == 0 && ids_file.empty()) {
    return usage("give exactly one of --ids and --ids-file");
  }
  if (jsonl && ids_file.empty()) return usage("--jsonl needs --ids-file");

  // The id lists to decode: one from --ids or a plain --ids-file, or one per --jsonl line.
  std::vector<std::vector<int64_t>> batches;
  std::vector<std::string> batch_errors;
  if (ids_file.empty()) {
    auto ids = ParseIntList(ids_text);
    if (!ids.ok()) return usage("--ids: " + std::string(ids.status().message()));
    batches.push_back(*ids);
  } else {
    std::string text;
    if (!ReadWholeFile(ids_file, &text)) return Error(kName, ids_file + ": cannot read");
    if (jsonl) {
      const std::vector<std::string> lines = Lines(text);
      for (size_t i = 0; i < lines.size(); ++i) {
        json line = json::parse(lines[i], nullptr, /*allow_exceptions=*/false);
        std::vector<int64_t> ids;
        bool ok = line.is_array();
        for (const json& v : line) {
          if (!ok) break;
          ok = v.is_number_integer();
          if (ok) ids.push_back(v.get<int64_t>());
        }
        batches.push_back(std::move(ids));
        batch_errors.push_back(
            ok ? "" : absl::StrCat("line ", i + 1, ": expected a JSON array of integer ids"));
      }
    } else {
      std::vector<int64_t> ids;
      for (absl::string_view piece :
           absl::StrSplit(text, absl::ByAnyChar(", \t\r\n"), absl::SkipEmpty())) {
        int64_t v;
        if (!absl::SimpleAtoi(piece, &v)) {
          return Error(kName, absl::StrCat(ids_file, ": '", piece, "' is not an integer"));
        }
        ids.push_back(v);
      }
      batches.push_back(std::move(ids));
    }
  }
  batch_errors.resize(batches.size());

  auto tokenizer = Tokenizer::Load(dir);
  if (!tokenizer.ok()) return Error(kName, std::string(tokenizer.status().message()));

  // Decodes one id list; `chunks` gets the streaming detokenizer's outputs when --stream.
  auto decode = [&](const std::vector<int64_t>& ids64,
                    json* chunks) -> absl::StatusOr<std::string> {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < ids64.size(); ++i) {
      if (ids64[i] < INT32_MIN || ids64[i] > INT32_MAX) {
        return absl::InvalidArgumentError(
            absl::StrCat("id ", ids64[i], " at position ", i, " is not a token"));
      }
      ids.push_back(static_cast<int32_t>(ids64[i]));
    }
    if (!stream) return (*tokenizer)->Decode(ids, skip_special);
    StreamingDetokenizer detok(**tokenizer, skip_special);
    std::string text;
    *chunks = json::array();
    for (int32_t id : ids) {
      auto piece = detok.Push(id);
      if (!piece.ok()) return piece.status();
      chunks->push_back(*piece);
      text += *piece;
    }
    const std::string tail = detok.Flush();
    chunks->push_back(tail);
    return text + tail;
  };

  if (jsonl) {
    int rc = 0;
    std::string out;
    for (size_t i = 0; i < batches.size(); ++i) {
      json result;
      json chunks;
      if (!batch_errors[i].empty()) {
        result["error"] = batch_errors[i];
      } else if (auto text = decode(batches[i], &chunks); text.ok()) {
        result["text"] = *text;
        if (stream) result["chunks"] = chunks;
      } else {
        result["error"] = absl::StrCat("line ", i + 1, ": ", text.status().message());
      }
      if (result.contains("error")) rc = 1;
      absl::StrAppend(&out, Dump(result), "\n");
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    return rc;
  }
  json chunks;
  auto text = decode(batches[0], &chunks);
  if (!text.ok()) return Error(kName, std::string(text.status().message()));
  if (as_json) {
    json result{{"text", *text}};
    if (stream) result["chunks"] = chunks;
    std::printf("%s\n", Dump(result).c_str());
  } else {
    std::fwrite(text->data(), 1, text->size(), stdout);
  }
  return 0;
}

}  // namespace tessera
