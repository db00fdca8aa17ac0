#include "runtime/model/json_text.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/base/string_view.h"

namespace tessera {
namespace {

using json = nlohmann::json;

// A SAX handler that builds nothing and records the parser's message on the first error, so a
// failed parse can be explained without exceptions.
class SyntaxErrorRecorder {
 public:
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const std::string&) { return true; }
  bool string(std::string&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool start_object(std::size_t) { return true; }
  bool key(std::string&) { return true; }
  bool end_object() { return true; }
  bool start_array(std::size_t) { return true; }
  bool end_array() { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& error) {
    message_ = error.what();
    return false;
  }
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

}  // namespace

int JsonNestingDepth(std::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) break;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

absl::StatusOr<json> ParseJsonText(std::string_view text, std::string_view source,
                                   absl::StatusCode code) {
  // NOTE: nlohmann's lexer takes a NUL byte for the end of input and would accept "{}\0junk".
  // JSON text never contains a raw NUL (strings must escape control characters), so reject it.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    return absl::Status(code,
                        absl::StrCat(AbslView(source), ": invalid JSON: NUL byte at offset ", nul));
  }
  // NOTE: the DOM of a hostile, deeply nested document costs far more memory than its text; the
  // files read here nest 3 or 4 levels. serde_json (behind the reference safetensors) stops at 128.
  constexpr int kMaxDepth = 128;
  if (JsonNestingDepth(text, kMaxDepth) > kMaxDepth) {
    return absl::Status(code, absl::StrCat(AbslView(source), ": invalid JSON: nested deeper than ",
                                           kMaxDepth, " levels"));
  }
  json value = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (!value.is_discarded()) return value;
  SyntaxErrorRecorder recorder;
  json::sax_parse(text.begin(), text.end(), &recorder);
  std::string detail = recorder.message();
  // nlohmann prefixes "[json.exception.parse_error.101] "; the rest says where and why.
  if (const size_t bracket = detail.find("] ");
      detail.rfind("[json.exception", 0) == 0 && bracket != std::string::npos) {
    detail.erase(0, bracket + 2);
  }
  if (detail.empty()) detail = "malformed";
  return absl::Status(code, absl::StrCat(AbslView(source), ": invalid JSON: ", detail));
}

std::string DescribeJson(const json& value) {
  switch (value.type()) {
    case json::value_t::object:
      return "an object";
    case json::value_t::array: {
      // Short lists of scalars are shown; anything nested is not (dump() recurses).
      constexpr size_t kMaxShown = 4;
      if (value.empty() || value.size() > kMaxShown) return "an array";
      std::string shown = "[";
      for (const json& element : value) {
        if (element.is_structured()) return "an array";
        if (shown.size() > 1) shown += ", ";
        shown += DescribeJson(element);
      }
      return shown + "]";
    }
    case json::value_t::binary:
      return "binary data";
    case json::value_t::discarded:
      return "nothing";
    case json::value_t::string: {
      const std::string& s = value.get_ref<const std::string&>();
      constexpr size_t kMaxChars = 64;
      if (s.size() <= kMaxChars) break;
      // Cut on a UTF-8 boundary so the dump below stays valid.
      size_t cut = kMaxChars;
      while (cut > 0 && (static_cast<uint8_t>(s[cut]) & 0xc0) == 0x80) --cut;
      return json(s.substr(0, cut)).dump() + "...";
    }
    default:
      break;
  }
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace tessera
