// The Split pre-tokenizer on PCRE2 (see pre_tokenizer.h).
#include "runtime/text/tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tessera::tokenizer_internal {
namespace {

// Oniguruma's \s in Unicode mode: U+0009..U+000D, U+0085 and the separators (Zs, Zl, Zp), which
// is exactly the White_Space property.
constexpr char kWhiteSpaceItems[] = "\\t-\\r\\x{85}\\p{Z}";

std::string Pcre2ErrorMessage(int code) {
  PCRE2_UCHAR buffer[256];
  if (pcre2_get_error_message(code, buffer, sizeof(buffer)) < 0) {
    return absl::StrCat("PCRE2 error ", code);
  }
  return reinterpret_cast<const char*>(buffer);
}

}  // namespace

absl::StatusOr<std::string> TranslateOnigurumaPattern(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\') {
      if (i + 1 >= pattern.size()) {
        return absl::InvalidArgumentError("the pattern ends with a lone backslash");
      }
      const char e = pattern[++i];
      switch (e) {
        case 's':
          if (in_class) {
            out.append(kWhiteSpaceItems);
          } else {
            absl::StrAppend(&out, "[", kWhiteSpaceItems, "]");
          }
          break;
        case 'S':
          if (in_class) {
            return absl::UnimplementedError(
                "\\S inside a character class cannot be translated to PCRE2");
          }
          absl::StrAppend(&out, "[^", kWhiteSpaceItems, "]");
          break;
        case 'w':
        case 'W':
        case 'h':
        case 'H':
        case 'R':
        case 'X':
          return absl::UnimplementedError(absl::StrCat(
              "\\", std::string(1, e),
              " means different things in Oniguruma and PCRE2; this pattern is not supported"));
        default:
          out.push_back('\\');
          out.push_back(e);
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out.push_back(pattern[++i]);
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      // A POSIX class such as [:alpha:] inside a bracket: copy it whole.
      const size_t end = pattern.find(":]", i + 2);
      if (end == std::string_view::npos) {
        return absl::InvalidArgumentError("unterminated POSIX class in the pattern");
      }
      out.append(pattern.substr(i, end + 2 - i));
      i = end + 1;
      continue;
    }
    if (in_class && c == '[') {
      return absl::UnimplementedError(
          "nested character classes (Oniguruma set operations) are not supported");
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
  }
  if (in_class) return absl::InvalidArgumentError("unterminated character class in the pattern");
  return out;
}

struct SplitPattern::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Impl() { pcre2_code_free(code); }
};

SplitPattern::SplitPattern(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SplitPattern::~SplitPattern() = default;

absl::StatusOr<std::unique_ptr<SplitPattern>> SplitPattern::Compile(std::string_view pattern) {
  absl::StatusOr<std::string> translated = TranslateOnigurumaPattern(pattern);
  if (!translated.ok()) return translated.status();
  auto impl = std::make_unique<Impl>();
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  impl->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated->data()), translated->size(),
                             PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (impl->code == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("the pattern does not compile (PCRE2): ", Pcre2ErrorMessage(error),
                     " at offset ", error_offset, " of '", *translated, "'"));
  }
  // NOTE: the JIT makes matching several times faster; without it (a platform PCRE2 lacks) the
  // interpreter gives the same matches.
  impl->jit = pcre2_jit_compile(impl->code, PCRE2_JIT_COMPLETE) == 0;
  return std::unique_ptr<SplitPattern>(new SplitPattern(std::move(impl)));
}

absl::Status SplitPattern::Split(std::string_view text,
                                 absl::FunctionRef<void(std::string_view)> piece) const {
  if (text.empty()) return absl::OkStatus();
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(impl_->code, nullptr);
  if (match == nullptr) return absl::ResourceExhaustedError("PCRE2: out of memory");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;   // where the next match is searched from
  size_t prev = 0;  // end of the last piece handed out
  absl::Status status;
  while (pos < text.size()) {
    // The text was validated as UTF-8 before it got here.
    const int rc = impl_->jit ? pcre2_jit_match(impl_->code, subject, text.size(), pos,
                                                PCRE2_NO_UTF_CHECK, match, nullptr)
                              : pcre2_match(impl_->code, subject, text.size(), pos,
                                            PCRE2_NO_UTF_CHECK, match, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      status = absl::ResourceExhaustedError(
          absl::StrCat("pre-tokenizer regex failed: ", Pcre2ErrorMessage(rc)));
      break;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
    const size_t start = ovector[0], end = ovector[1];
    if (start > prev) piece(text.substr(prev, start - prev));
    if (end > start) {
      piece(text.substr(start, end - start));
      pos = prev = end;
    } else {
      // An empty match splits nothing; step over one character, as Oniguruma's iterator does.
      prev = start;
      pos = start + 1;
      while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
  if (status.ok() && prev < text.size()) piece(text.substr(prev));
  pcre2_match_data_free(match);
  return status;
}

}  // namespace tessera::tokenizer_internal
