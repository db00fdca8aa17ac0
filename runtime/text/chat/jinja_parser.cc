#include "runtime/text/chat/jinja_parser.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "runtime/text/chat/concat.h"
#include "runtime/text/chat/py_text.h"

namespace tessera::jinja {
namespace {

// Deeper nesting than this is refused rather than risking the stack (CPython's parser refuses
// expressions nested a few hundred deep as well).
constexpr int kMaxNesting = 200;

// --- Source positions

class SourceMap {
 public:
  explicit SourceMap(const std::string& source) : source_(source) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  SourcePos At(size_t offset) const {
    size_t lo = 0;
    size_t hi = line_starts_.size();
    while (hi - lo > 1) {
      const size_t mid = (lo + hi) / 2;
      (line_starts_[mid] <= offset ? lo : hi) = mid;
    }
    const size_t line_start = line_starts_[lo];
    const size_t end = std::min(offset, source_.size());
    SourcePos pos;
    pos.line = static_cast<int>(lo + 1);
    pos.column = static_cast<int>(
        CodePointCount(std::string_view(source_).substr(line_start, end - line_start)) + 1);
    return pos;
  }

 private:
  const std::string& source_;
  std::vector<size_t> line_starts_;
};

absl::Status SyntaxError(SourcePos pos, std::string_view message) {
  return absl::InvalidArgumentError(
      Concat("line ", pos.line, ", column ", pos.column, ": ", message));
}

// --- Lexer

struct Token {
  enum class Type {
    kText,
    kVariableBegin,
    kVariableEnd,
    kBlockBegin,
    kBlockEnd,
    kName,
    kString,
    kInteger,
    kFloat,
    kOperator,
    kEof,
  };
  Type type;
  std::string value;  // text, name, decoded string, operator
  int64_t int_value = 0;
  double float_value = 0;
  size_t offset = 0;
};

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c); }

// Python whitespace at s[i]; *len gets the UTF-8 length of the character.
bool SpaceAt(std::string_view s, size_t i, size_t* len) {
  const unsigned char b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) {
    *len = 1;
    return PyIsSpace(b);
  }
  size_t n = (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : 4;
  n = std::min(n, s.size() - i);
  const std::u32string cp = DecodeUtf8(s.substr(i, n));
  *len = n;
  return !cp.empty() && PyIsSpace(cp[0]);
}

size_t SkipSpace(std::string_view s, size_t i) {
  size_t len;
  while (i < s.size() && SpaceAt(s, i, &len)) i += len;
  return i;
}

bool AllSpace(std::string_view s) { return SkipSpace(s, 0) == s.size(); }

std::string_view RStripSpace(std::string_view s) {
  // Walk back over whole characters.
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t len;
    if (!SpaceAt(s, start, &len)) break;
    end = start;
  }
  return s.substr(0, end);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Python's "unicode-escape" decoding of a string literal body, as jinja2 applies it.
absl::StatusOr<std::string> DecodeStringLiteral(std::string_view body) {
  std::string out;
  size_t i = 0;
  while (i < body.size()) {
    const char c = body[i];
    if (c != '\\') {
      out.push_back(c);
      ++i;
      continue;
    }
    if (i + 1 >= body.size()) return absl::InvalidArgumentError("\\ at end of string");
    const char e = body[i + 1];
    i += 2;
    switch (e) {
      case '\n':
        break;
      case '\\':
        out.push_back('\\');
        break;
      case '\'':
        out.push_back('\'');
        break;
      case '"':
        out.push_back('"');
        break;
      case 'a':
        out.push_back('\a');
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'n':
        out.push_back('\n');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'v':
        out.push_back('\v');
        break;
      case 'x':
      case 'u':
      case 'U': {
        const size_t digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        uint32_t cp = 0;
        for (size_t k = 0; k < digits; ++k) {
          const int h = i + k < body.size() ? HexValue(body[i + k]) : -1;
          if (h < 0) {
            return absl::InvalidArgumentError(
                Concat("truncated \\", std::string(1, e), std::string(digits, 'X'), " escape"));
          }
          cp = cp * 16 + static_cast<uint32_t>(h);
        }
        i += digits;
        if (cp > 0x10FFFF) return absl::InvalidArgumentError("illegal Unicode character");
        if (cp >= 0xD800 && cp <= 0xDFFF) {
          return absl::InvalidArgumentError("surrogate code points are not supported");
        }
        AppendUtf8(cp, &out);
        break;
      }
      case 'N':
        return absl::InvalidArgumentError("\\N{...} escapes are not supported");
      default:
        if (e >= '0' && e <= '7') {
          uint32_t cp = static_cast<uint32_t>(e - '0');
          for (int k = 0; k < 2 && i < body.size() && body[i] >= '0' && body[i] <= '7'; ++k) {
            cp = cp * 8 + static_cast<uint32_t>(body[i++] - '0');
          }
          AppendUtf8(cp, &out);
        } else if (static_cast<unsigned char>(e) >= 0x80) {
          // jinja2 first turns non-ASCII characters into \x/\u/\U escapes, so a backslash
          // before one escapes the backslash of that escape: the result is the escape's text.
          size_t len = (static_cast<unsigned char>(e) & 0xE0) == 0xC0   ? 2
                       : (static_cast<unsigned char>(e) & 0xF0) == 0xE0 ? 3
                                                                        : 4;
          len = std::min(len, body.size() - (i - 1));
          const std::u32string cp = DecodeUtf8(body.substr(i - 1, len));
          i += len - 1;
          char buf[16];
          const uint32_t v = cp.empty() ? 0xFFFD : static_cast<uint32_t>(cp[0]);
          if (v <= 0xFF) {
            std::snprintf(buf, sizeof(buf), "\\x%02x", v);
          } else if (v <= 0xFFFF) {
            std::snprintf(buf, sizeof(buf), "\\u%04x", v);
          } else {
            std::snprintf(buf, sizeof(buf), "\\U%08x", v);
          }
          out += buf;
        } else {
          out.push_back('\\');
          out.push_back(e);
        }
    }
  }
  return out;
}

class Lexer {
 public:
  Lexer(const std::string& src, const SourceMap& map) : src_(src), map_(map) {}

  absl::StatusOr<std::vector<Token>> Run() {
    size_t pos = 0;
    bool line_starting = true;
    const size_t n = src_.size();
    while (pos < n) {
      const size_t start = FindTagStart(pos);
      if (start == std::string::npos) {
        Emit(Token::Type::kText, src_.substr(pos), pos);
        break;
      }
      const char kind = src_[start + 1];
      size_t p = start + 2;
      char sign = 0;
      if (p < n && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];

      size_t raw_end = 0;
      const bool raw = kind == '%' && MatchRawBegin(p, &raw_end);
      EmitStrippedText(std::string_view(src_).substr(pos, start - pos), pos, sign,
                       /*lstrip=*/kind != '{', line_starting);
      line_starting = false;

      if (raw) {
        line_starting = src_[raw_end - 1] == '\n';
        absl::StatusOr<size_t> next = LexRawBody(raw_end, line_starting, start);
        if (!next.ok()) return next.status();
        pos = *next;
        line_starting = src_[pos - 1] == '\n';
        continue;
      }
      if (kind == '#') {
        absl::StatusOr<size_t> next = SkipComment(p, start);
        if (!next.ok()) return next.status();
        pos = *next;
        line_starting = src_[pos - 1] == '\n';
        continue;
      }
      Emit(kind == '%' ? Token::Type::kBlockBegin : Token::Type::kVariableBegin, "", start);
      absl::StatusOr<size_t> next = LexTag(p, kind == '%', start);
      if (!next.ok()) return next.status();
      pos = *next;
      line_starting = src_[pos - 1] == '\n';
    }
    Token eof;
    eof.type = Token::Type::kEof;
    eof.offset = n;
    tokens_.push_back(eof);
    return std::move(tokens_);
  }

 private:
  size_t FindTagStart(size_t pos) const {
    for (size_t i = src_.find('{', pos); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size()) {
        const char c = src_[i + 1];
        if (c == '{' || c == '%' || c == '#') return i;
      }
    }
    return std::string::npos;
  }

  bool StartsWith(size_t p, std::string_view s) const { return src_.compare(p, s.size(), s) == 0; }

  // `{%[-+]?` already consumed up to p: matches `\s*raw\s*(-%}\s*|%})`.
  bool MatchRawBegin(size_t p, size_t* end) const {
    p = SkipSpace(src_, p);
    if (!StartsWith(p, "raw")) return false;
    p = SkipSpace(src_, p + 3);
    if (StartsWith(p, "-%}")) {
      *end = SkipSpace(src_, p + 3);
      return true;
    }
    if (StartsWith(p, "%}")) {
      *end = p + 2;
      return true;
    }
    return false;
  }

  void Emit(Token::Type type, std::string_view value, size_t offset) {
    Token t;
    t.type = type;
    t.value = std::string(value);
    t.offset = offset;
    tokens_.push_back(std::move(t));
  }

  // Template data before a tag, with the tag's whitespace control applied.
  void EmitStrippedText(std::string_view text, size_t offset, char sign, bool lstrip,
                        bool line_starting) {
    if (sign == '-') {
      text = RStripSpace(text);
    } else if (sign != '+' && lstrip) {
      const size_t nl = text.rfind('\n');
      const size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting) && l_pos < text.size() && AllSpace(text.substr(l_pos))) {
        text = text.substr(0, l_pos);
      }
    }
    if (!text.empty()) Emit(Token::Type::kText, text, offset);
  }

  absl::StatusOr<size_t> LexRawBody(size_t p, bool line_starting, size_t tag_start) {
    for (size_t i = src_.find("{%", p); i != std::string::npos; i = src_.find("{%", i + 1)) {
      size_t q = i + 2;
      char sign = 0;
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) sign = src_[q++];
      q = SkipSpace(src_, q);
      if (!StartsWith(q, "endraw")) continue;
      q = SkipSpace(src_, q + 6);
      size_t end;
      if (StartsWith(q, "+%}")) {
        end = q + 3;
      } else if (StartsWith(q, "-%}")) {
        end = SkipSpace(src_, q + 3);
      } else if (StartsWith(q, "%}")) {
        end = q + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;
      } else {
        continue;
      }
      EmitStrippedText(std::string_view(src_).substr(p, i - p), p, sign, true, line_starting);
      return end;
    }
    return SyntaxError(map_.At(tag_start), "Missing end of raw directive");
  }

  absl::StatusOr<size_t> SkipComment(size_t p, size_t tag_start) const {
    for (size_t i = src_.find("#}", p); i != std::string::npos; i = src_.find("#}", i + 1)) {
      if (i > p && src_[i - 1] == '+') return i + 2;
      if (i > p && src_[i - 1] == '-') return SkipSpace(src_, i + 2);
      size_t end = i + 2;
      if (end < src_.size() && src_[end] == '\n') ++end;
      return end;
    }
    return SyntaxError(map_.At(tag_start), "Missing end of comment tag");
  }

  // (\d+_)*\d+ at p: returns the end, or p when there is no digit.
  size_t ScanDigits(size_t p) const {
    if (p >= src_.size() || !IsDigit(src_[p])) return p;
    ++p;
    while (p < src_.size()) {
      if (IsDigit(src_[p])) {
        ++p;
      } else if (src_[p] == '_' && p + 1 < src_.size() && IsDigit(src_[p + 1])) {
        p += 2;
      } else {
        break;
      }
    }
    return p;
  }

  // jinja2's float_re: digits with a fraction, an exponent, or both.
  size_t ScanFloat(size_t p) const {
    if (p > 0 && src_[p - 1] == '.') return p;
    const size_t int_end = ScanDigits(p);
    if (int_end == p) return p;
    size_t frac_end = int_end;
    if (int_end < src_.size() && src_[int_end] == '.') {
      const size_t f = ScanDigits(int_end + 1);
      if (f > int_end + 1) frac_end = f;
    }
    if (frac_end < src_.size() && (src_[frac_end] == 'e' || src_[frac_end] == 'E')) {
      size_t q = frac_end + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      const size_t exp_end = ScanDigits(q);
      if (exp_end > q) return exp_end;
    }
    return frac_end > int_end ? frac_end : p;
  }

  // jinja2's integer_re. Returns the end (p when none) and the base.
  size_t ScanInteger(size_t p, int* base) const {
    const auto digit_ok = [](char c, int b) {
      const int v = HexValue(c);
      return v >= 0 && v < b && (b == 16 || IsDigit(c));
    };
    if (src_[p] == '0' && p + 1 < src_.size()) {
      const char x = static_cast<char>(src_[p + 1] | 0x20);
      const int b = x == 'b' ? 2 : x == 'o' ? 8 : x == 'x' ? 16 : 0;
      if (b) {
        size_t q = p + 2;
        size_t end = p;
        while (q < src_.size()) {
          if (src_[q] == '_' && q + 1 < src_.size() && digit_ok(src_[q + 1], b)) {
            q += 2;
          } else if (digit_ok(src_[q], b)) {
            ++q;
          } else {
            break;
          }
          end = q;
        }
        if (end > p) {
          *base = b;
          return end;
        }
      }
    }
    *base = 10;
    if (src_[p] >= '1' && src_[p] <= '9') return ScanDigits(p);
    if (src_[p] == '0') {
      size_t q = p + 1;
      while (q < src_.size()) {
        if (src_[q] == '0') {
          ++q;
        } else if (src_[q] == '_' && q + 1 < src_.size() && src_[q + 1] == '0') {
          q += 2;
        } else {
          break;
        }
      }
      return q;
    }
    return p;
  }

  // jinja2's message: the character's repr and its offset in code points.
  absl::Status UnexpectedChar(size_t p) const {
    size_t len;
    SpaceAt(src_, p, &len);
    return SyntaxError(map_.At(p),
                       Concat("unexpected char ", PyReprString(src_.substr(p, len)), " at ",
                              CodePointCount(std::string_view(src_).substr(0, p))));
  }

  absl::StatusOr<size_t> LexTag(size_t p, bool block, size_t tag_start) {
    std::vector<char> balance;
    const size_t n = src_.size();
    while (true) {
      if (p >= n) {
        return SyntaxError(map_.At(tag_start),
                           block ? "unexpected end of template, expected end of statement block"
                                 : "unexpected end of template, expected end of print statement");
      }
      if (balance.empty()) {
        const Token::Type end_type = block ? Token::Type::kBlockEnd : Token::Type::kVariableEnd;
        const std::string_view close = block ? "%}" : "}}";
        if (block && StartsWith(p, "+%}")) {
          Emit(end_type, "", p);
          return p + 3;
        }
        if (src_[p] == '-' && StartsWith(p + 1, close)) {
          Emit(end_type, "", p);
          return SkipSpace(src_, p + 3);
        }
        if (StartsWith(p, close)) {
          Emit(end_type, "", p);
          size_t end = p + 2;
          if (block && end < n && src_[end] == '\n') ++end;
          return end;
        }
      }
      size_t space_len;
      if (SpaceAt(src_, p, &space_len)) {
        p += space_len;
        continue;
      }
      if (size_t end = ScanFloat(p); end > p) {
        std::string digits;
        for (size_t i = p; i < end; ++i) {
          if (src_[i] != '_') digits.push_back(src_[i]);
        }
        Token t;
        t.type = Token::Type::kFloat;
        t.float_value = std::strtod(digits.c_str(), nullptr);
        t.offset = p;
        tokens_.push_back(std::move(t));
        p = end;
        continue;
      }
      int base;
      if (size_t end = ScanInteger(p, &base); end > p) {
        std::string digits;
        for (size_t i = base == 10 ? p : p + 2; i < end; ++i) {
          if (src_[i] != '_') digits.push_back(src_[i]);
        }
        errno = 0;
        const long long v = std::strtoll(digits.c_str(), nullptr, base);
        if (errno == ERANGE) return SyntaxError(map_.At(p), "integer literal too large");
        Token t;
        t.type = Token::Type::kInteger;
        t.int_value = v;
        t.offset = p;
        tokens_.push_back(std::move(t));
        p = end;
        continue;
      }
      if (IsNameStart(src_[p])) {
        size_t end = p + 1;
        while (end < n && IsNameChar(src_[end])) ++end;
        Emit(Token::Type::kName, std::string_view(src_).substr(p, end - p), p);
        p = end;
        continue;
      }
      if (src_[p] == '\'' || src_[p] == '"') {
        const char quote = src_[p];
        size_t i = p + 1;
        while (i < n && src_[i] != quote) i += src_[i] == '\\' ? 2 : 1;
        if (i >= n) return UnexpectedChar(p);
        absl::StatusOr<std::string> decoded =
            DecodeStringLiteral(std::string_view(src_).substr(p + 1, i - p - 1));
        if (!decoded.ok()) return SyntaxError(map_.At(p), StdView(decoded.status().message()));
        Emit(Token::Type::kString, *decoded, p);
        p = i + 1;
        continue;
      }
      static constexpr std::string_view kTwoCharOps[] = {"**", "//", "==", "!=", ">=", "<="};
      bool matched = false;
      for (std::string_view op : kTwoCharOps) {
        if (StartsWith(p, op)) {
          Emit(Token::Type::kOperator, op, p);
          p += 2;
          matched = true;
          break;
        }
      }
      if (matched) continue;
      const char c = src_[p];
      if (std::string_view("+-/*%~[](){}><=.:|,;").find(c) == std::string_view::npos) {
        return UnexpectedChar(p);
      }
      if (c == '(' || c == '[' || c == '{') {
        balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
      } else if (c == ')' || c == ']' || c == '}') {
        if (balance.empty()) {
          return SyntaxError(map_.At(p), Concat("unexpected '", std::string(1, c), "'"));
        }
        if (balance.back() != c) {
          return SyntaxError(map_.At(p), Concat("unexpected '", std::string(1, c), "', expected '",
                                                std::string(1, balance.back()), "'"));
        }
        balance.pop_back();
      }
      Emit(Token::Type::kOperator, std::string_view(&src_[p], 1), p);
      ++p;
    }
  }

  const std::string& src_;
  const SourceMap& map_;
  std::vector<Token> tokens_;
};

// --- Parser

void NoteSpecialNames(Stmt* def);

std::string Describe(const Token& t) {
  switch (t.type) {
    case Token::Type::kText:
      return "template data / text";
    case Token::Type::kVariableBegin:
      return "begin of print statement";
    case Token::Type::kVariableEnd:
      return "end of print statement";
    case Token::Type::kBlockBegin:
      return "begin of statement block";
    case Token::Type::kBlockEnd:
      return "end of statement block";
    case Token::Type::kName:
    case Token::Type::kOperator:
      return t.value;
    case Token::Type::kString:
      return "string";
    case Token::Type::kInteger:
      return "integer";
    case Token::Type::kFloat:
      return "float";
    case Token::Type::kEof:
      return "end of template";
  }
  return "token";
}

class Parser {
 public:
  Parser(std::vector<Token> tokens, const SourceMap& map) : tokens_(std::move(tokens)), map_(map) {}

  absl::StatusOr<Body> ParseAll() {
    absl::StatusOr<Body> body = Subparse({});
    if (!body.ok()) return body.status();
    return body;
  }

 private:
  // --- token cursor
  const Token& Cur() const { return tokens_[pos_]; }
  const Token& Peek() const { return tokens_[std::min(pos_ + 1, tokens_.size() - 1)]; }
  void Advance() {
    if (pos_ + 1 < tokens_.size()) ++pos_;
  }
  SourcePos Pos() const { return map_.At(Cur().offset); }
  SourcePos PosOf(const Token& t) const { return map_.At(t.offset); }

  bool IsName(const Token& t, std::string_view v) const {
    return t.type == Token::Type::kName && t.value == v;
  }
  bool IsOp(const Token& t, std::string_view v) const {
    return t.type == Token::Type::kOperator && t.value == v;
  }
  bool CurIsName(std::string_view v) const { return IsName(Cur(), v); }
  bool CurIsOp(std::string_view v) const { return IsOp(Cur(), v); }
  bool SkipName(std::string_view v) {
    if (!CurIsName(v)) return false;
    Advance();
    return true;
  }
  bool SkipOp(std::string_view v) {
    if (!CurIsOp(v)) return false;
    Advance();
    return true;
  }

  absl::Status Fail(std::string_view message) const { return SyntaxError(Pos(), message); }

  absl::Status ExpectFail(std::string_view what) const {
    if (Cur().type == Token::Type::kEof) {
      return Fail(Concat("unexpected end of template, expected '", what, "'."));
    }
    return Fail(Concat("expected token '", what, "', got '", Describe(Cur()), "'"));
  }
  absl::Status ExpectOp(std::string_view op) {
    if (!SkipOp(op)) return ExpectFail(op);
    return absl::OkStatus();
  }
  absl::Status ExpectName(std::string_view name) {
    if (!SkipName(name)) return ExpectFail(name);
    return absl::OkStatus();
  }
  absl::Status ExpectType(Token::Type type, std::string_view what) {
    if (Cur().type != type) return ExpectFail(what);
    Advance();
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectAnyName() {
    if (Cur().type != Token::Type::kName) return ExpectFail("name");
    std::string v = Cur().value;
    Advance();
    return v;
  }

  // --- statements

  // Parses until a block tag whose name is in `end_names` (left as the current token) or the end.
  // jinja2's message for an unknown tag (`name`) or a premature end of the template (null).
  absl::Status FailUnknownTagOrEof(const std::string* name) const {
    std::vector<std::string> expected;
    for (const auto& names : end_stack_)
      expected.insert(expected.end(), names.begin(), names.end());
    std::string looking;
    if (!end_stack_.empty()) {
      for (const std::string& e : end_stack_.back()) {
        looking += Concat(looking.empty() ? "" : " or ", "'", e, "'");
      }
    }
    std::string message =
        name ? Concat("Encountered unknown tag '", *name, "'.") : "Unexpected end of template.";
    if (!looking.empty()) {
      if (name && std::find(expected.begin(), expected.end(), *name) != expected.end()) {
        AppendTo(&message,
                 " You probably made a nesting mistake. Jinja is expecting this tag, "
                 "but currently looking for ",
                 looking, ".");
      } else {
        AppendTo(&message, " Jinja was looking for the following tags: ", looking, ".");
      }
    }
    // For an unknown tag, the tag itself is on the stack: the block to close is the one before.
    const size_t depth = tag_stack_.size() - (name ? 1 : 0);
    if (depth > 0 && depth <= tag_stack_.size()) {
      AppendTo(&message, " The innermost block that needs to be closed is '", tag_stack_[depth - 1],
               "'.");
    }
    return Fail(message);
  }

  absl::StatusOr<Body> Subparse(const std::vector<std::string>& end_names) {
    if (++nesting_ > kMaxNesting) return Fail("statements nested too deeply");
    if (!end_names.empty()) end_stack_.push_back(end_names);
    Body body;
    while (Cur().type != Token::Type::kEof) {
      const Token& tok = Cur();
      if (tok.type == Token::Type::kText) {
        auto stmt = std::make_unique<Stmt>(Stmt::Kind::kText, PosOf(tok));
        stmt->text = tok.value;
        body.push_back(std::move(stmt));
        Advance();
      } else if (tok.type == Token::Type::kVariableBegin) {
        Advance();
        auto stmt = std::make_unique<Stmt>(Stmt::Kind::kOutput, Pos());
        absl::StatusOr<ExprPtr> e = ParseTuple(true, {}, false);
        if (!e.ok()) return e.status();
        stmt->expr = std::move(*e);
        if (absl::Status s = ExpectType(Token::Type::kVariableEnd, "end of print statement");
            !s.ok()) {
          return s;
        }
        body.push_back(std::move(stmt));
      } else if (tok.type == Token::Type::kBlockBegin) {
        Advance();
        if (Cur().type == Token::Type::kName) {
          for (const std::string& end : end_names) {
            if (Cur().value == end) {
              --nesting_;
              end_stack_.pop_back();
              return body;
            }
          }
        }
        absl::StatusOr<StmtPtr> stmt = ParseStatement();
        if (!stmt.ok()) return stmt.status();
        if (*stmt) body.push_back(std::move(*stmt));
        if (absl::Status s = ExpectType(Token::Type::kBlockEnd, "end of statement block");
            !s.ok()) {
          return s;
        }
      } else {
        return Fail(Concat("unexpected '", Describe(tok), "'"));
      }
    }
    if (!end_names.empty()) return FailUnknownTagOrEof(nullptr);
    --nesting_;
    return body;
  }

  // After the statement's header: `%}` then the body up to one of `end_names`. With
  // `drop_needle`, the end tag's name is consumed too.
  absl::StatusOr<Body> ParseStatements(const std::vector<std::string>& end_names,
                                       bool drop_needle) {
    SkipOp(":");
    if (absl::Status s = ExpectType(Token::Type::kBlockEnd, "end of statement block"); !s.ok()) {
      return s;
    }
    absl::StatusOr<Body> body = Subparse(end_names);
    if (!body.ok()) return body.status();
    if (drop_needle) Advance();
    return body;
  }

  absl::StatusOr<StmtPtr> ParseStatement() {
    if (Cur().type != Token::Type::kName) return Fail("tag name expected");
    const std::string tag = Cur().value;
    tag_stack_.push_back(tag);
    absl::StatusOr<StmtPtr> result = ParseStatementInner(tag);
    tag_stack_.pop_back();
    return result;
  }

  absl::StatusOr<StmtPtr> ParseStatementInner(const std::string& tag) {
    const SourcePos pos = Pos();
    if (tag == "for") return ParseFor();
    if (tag == "if") return ParseIf();
    if (tag == "set") return ParseSet();
    if (tag == "macro") return ParseMacro();
    if (tag == "call") return ParseCallBlock();
    if (tag == "filter") return ParseFilterBlock();
    if (tag == "with") return ParseWith();
    if (tag == "block") return ParseBlock();
    if (tag == "generation") {
      Advance();
      auto stmt = std::make_unique<Stmt>(Stmt::Kind::kScope, pos);
      absl::StatusOr<Body> body = ParseStatements({"endgeneration"}, true);
      if (!body.ok()) return body.status();
      stmt->body = std::move(*body);
      return stmt;
    }
    if (tag == "print") {
      Advance();
      // `{% print a, b %}` prints each expression.
      auto stmt = std::make_unique<Stmt>(Stmt::Kind::kScope, pos);
      stmt->name = "print";
      while (Cur().type != Token::Type::kBlockEnd) {
        if (!stmt->body.empty()) {
          if (absl::Status s = ExpectOp(","); !s.ok()) return s;
        }
        auto out = std::make_unique<Stmt>(Stmt::Kind::kOutput, Pos());
        absl::StatusOr<ExprPtr> e = ParseExpression(true);
        if (!e.ok()) return e.status();
        out->expr = std::move(*e);
        stmt->body.push_back(std::move(out));
      }
      return stmt;
    }
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) return Fail(Concat("'", tag, "' outside loop"));
      Advance();
      return std::make_unique<Stmt>(tag == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue,
                                    pos);
    }
    if (tag == "include" || tag == "extends" || tag == "import" || tag == "from" ||
        tag == "autoescape") {
      return Fail(Concat("the '", tag, "' tag is not supported in chat templates"));
    }
    return FailUnknownTagOrEof(&tag);
  }

  absl::StatusOr<StmtPtr> ParseFor() {
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::kFor, Pos());
    Advance();
    absl::StatusOr<Target> target = ParseAssignTarget(false, {"in"});
    if (!target.ok()) return target.status();
    stmt->target = std::move(*target);
    if (absl::Status s = ExpectName("in"); !s.ok()) return s;
    absl::StatusOr<ExprPtr> iter = ParseTuple(false, {"recursive"}, false);
    if (!iter.ok()) return iter.status();
    stmt->expr = std::move(*iter);
    if (SkipName("if")) {
      absl::StatusOr<ExprPtr> filter = ParseExpression(true);
      if (!filter.ok()) return filter.status();
      stmt->filter = std::move(*filter);
    }
    stmt->recursive = SkipName("recursive");
    ++loop_depth_;
    absl::StatusOr<Body> body = ParseStatements({"endfor", "else"}, false);
    --loop_depth_;
    if (!body.ok()) return body.status();
    stmt->body = std::move(*body);
    const bool has_else = CurIsName("else");
    Advance();
    if (has_else) {
      absl::StatusOr<Body> else_body = ParseStatements({"endfor"}, true);
      if (!else_body.ok()) return else_body.status();
      stmt->else_body = std::move(*else_body);
    }
    return stmt;
  }

  absl::StatusOr<StmtPtr> ParseIf() {
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::kIf, Pos());
    Advance();
    while (true) {
      absl::StatusOr<ExprPtr> cond = ParseTuple(false, {}, false);
      if (!cond.ok()) return cond.status();
      absl::StatusOr<Body> body = ParseStatements({"elif", "else", "endif"}, false);
      if (!body.ok()) return body.status();
      stmt->branches.emplace_back(std::move(*cond), std::move(*body));
      const std::string which = Cur().value;
      Advance();
      if (which == "elif") continue;
      if (which == "else") {
        absl::StatusOr<Body> else_body = ParseStatements({"endif"}, true);
        if (!else_body.ok()) return else_body.status();
        stmt->branches.emplace_back(nullptr, std::move(*else_body));
      }
      break;
    }
    return stmt;
  }

  absl::StatusOr<StmtPtr> ParseSet() {
    const SourcePos pos = Pos();
    Advance();
    absl::StatusOr<Target> target = ParseAssignTarget(true, {});
    if (!target.ok()) return target.status();
    if (SkipOp("=")) {
      auto stmt = std::make_unique<Stmt>(Stmt::Kind::kSet, pos);
      stmt->target = std::move(*target);
      absl::StatusOr<ExprPtr> value = ParseTuple(true, {}, false);
      if (!value.ok()) return value.status();
      stmt->expr = std::move(*value);
      return stmt;
    }
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::kSetBlock, pos);
    stmt->target = std::move(*target);
    absl::StatusOr<ExprPtr> filter = ParseFilter(nullptr, false);
    if (!filter.ok()) return filter.status();
    stmt->expr = std::move(*filter);
    absl::StatusOr<Body> body = ParseStatements({"endset"}, true);
    if (!body.ok()) return body.status();
    stmt->body = std::move(*body);
    return stmt;
  }

  absl::Status ParseSignature(Stmt* stmt) {
    if (absl::Status s = ExpectOp("("); !s.ok()) return s;
    while (!CurIsOp(")")) {
      if (!stmt->params.empty()) {
        if (absl::Status s = ExpectOp(","); !s.ok()) return s;
      }
      absl::StatusOr<std::string> name = ExpectAnyName();
      if (!name.ok()) return name.status();
      if (SkipOp("=")) {
        absl::StatusOr<ExprPtr> def = ParseExpression(true);
        if (!def.ok()) return def.status();
        stmt->defaults.push_back(std::move(*def));
      } else if (!stmt->defaults.empty()) {
        return Fail("non-default argument follows default argument");
      }
      stmt->params.push_back(std::move(*name));
    }
    return ExpectOp(")");
  }

  // Macro and call-block bodies are functions: a loop outside them does not enclose them.
  absl::StatusOr<Body> ParseFunctionBody(const std::string& end_name) {
    const int saved = loop_depth_;
    loop_depth_ = 0;
    absl::StatusOr<Body> body = ParseStatements({end_name}, true);
    loop_depth_ = saved;
    return body;
  }

  absl::StatusOr<StmtPtr> ParseMacro() {
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::kMacro, Pos());
    Advance();
    absl::StatusOr<std::string> name = ExpectAnyName();
    if (!name.ok()) return name.status();
    stmt->name = std::move(*name);
    if (absl::Status s = ParseSignature(stmt.get()); !s.ok()) return s;
    absl::StatusOr<Body> body = ParseFunctionBody("endmacro");
    if (!body.ok()) return body.status();
    stmt->body = std::move(*body);
    NoteSpecialNames(stmt.get());
    return stmt;
  }

  absl::StatusOr<StmtPtr> ParseCallBlock() {
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::kCallBlock, Pos());
    Advance();
    if (CurIsOp("(")) {
      if (absl::Status s = ParseSignature(stmt.get()); !s.ok()) return s;
    }
    const SourcePos call_pos = Pos();
    absl::StatusOr<ExprPtr> call = ParseExpression(true);
    if (!call.ok()) return call.status();
    if ((*call)->kind != Expr::Kind::kCall) return SyntaxError(call_pos, "expected call");
    stmt->expr = std::move(*call);
    absl::StatusOr<Body> body = ParseFunctionBody("endcall");
    if (!body.ok()) return body.status();
    stmt->body = std::move(*body);
    NoteSpecialNames(stmt.get());
    return stmt;
  }

  absl::StatusOr<StmtPtr> ParseFilterBlock() {
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::kFilterBlock, Pos());
    Advance();
    absl::StatusOr<ExprPtr> filter = ParseFilter(nullptr, true);
    if (!filter.ok()) return filter.status();
    stmt->expr = std::move(*filter);
    absl::StatusOr<Body> body = ParseStatements({"endfilter"}, true);
    if (!body.ok()) return body.status();
    stmt->body = std::move(*body);
    return stmt;
  }

  absl::StatusOr<StmtPtr> ParseWith() {
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::kWith, Pos());
    Advance();
    while (Cur().type != Token::Type::kBlockEnd) {
      if (!stmt->with_targets.empty()) {
        if (absl::Status s = ExpectOp(","); !s.ok()) return s;
      }
      absl::StatusOr<Target> target = ParseAssignTarget(false, {});
      if (!target.ok()) return target.status();
      if (absl::Status s = ExpectOp("="); !s.ok()) return s;
      absl::StatusOr<ExprPtr> value = ParseExpression(true);
      if (!value.ok()) return value.status();
      stmt->with_targets.push_back(std::move(*target));
      stmt->with_values.push_back(std::move(*value));
    }
    absl::StatusOr<Body> body = ParseStatements({"endwith"}, true);
    if (!body.ok()) return body.status();
    stmt->body = std::move(*body);
    return stmt;
  }

  absl::StatusOr<StmtPtr> ParseBlock() {
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::kScope, Pos());
    Advance();
    absl::StatusOr<std::string> name = ExpectAnyName();
    if (!name.ok()) return name.status();
    SkipName("scoped");
    SkipName("required");
    absl::StatusOr<Body> body = ParseStatements({"endblock"}, true);
    if (!body.ok()) return body.status();
    SkipName(*name);
    stmt->body = std::move(*body);
    return stmt;
  }

  // Targets of set / for / with: names, `ns.attr` (set only) and tuples of those.
  absl::StatusOr<Target> ParseTargetPrimary(bool with_namespace) {
    Target t;
    t.pos = Pos();
    if (CurIsOp("(")) {
      Advance();
      absl::StatusOr<Target> inner = ParseAssignTarget(with_namespace, {}, /*in_parens=*/true);
      if (!inner.ok()) return inner.status();
      if (absl::Status s = ExpectOp(")"); !s.ok()) return s;
      return inner;
    }
    if (Cur().type != Token::Type::kName) {
      return Fail(Concat("can't assign to '", Describe(Cur()), "'"));
    }
    const std::string& v = Cur().value;
    if (v == "true" || v == "false" || v == "True" || v == "False" || v == "none" || v == "None") {
      return Fail("can't assign to 'const'");
    }
    t.name = v;
    Advance();
    if (with_namespace && CurIsOp(".")) {
      Advance();
      absl::StatusOr<std::string> attr = ExpectAnyName();
      if (!attr.ok()) return attr.status();
      t.kind = Target::Kind::kNamespaceAttr;
      t.attr = std::move(*attr);
    }
    return t;
  }

  bool AtTupleEnd(const std::vector<std::string>& extra_end_names) const {
    const Token& t = Cur();
    if (t.type == Token::Type::kVariableEnd || t.type == Token::Type::kBlockEnd || IsOp(t, ")")) {
      return true;
    }
    for (const std::string& name : extra_end_names) {
      if (IsName(t, name)) return true;
    }
    return false;
  }

  absl::StatusOr<Target> ParseAssignTarget(bool with_namespace,
                                           const std::vector<std::string>& extra_end_names,
                                           bool in_parens = false) {
    Target tuple;
    tuple.kind = Target::Kind::kTuple;
    tuple.pos = Pos();
    bool is_tuple = false;
    while (true) {
      if (!tuple.items.empty()) {
        if (absl::Status s = ExpectOp(","); !s.ok()) return s;
      }
      if (AtTupleEnd(extra_end_names)) break;
      absl::StatusOr<Target> item = ParseTargetPrimary(with_namespace);
      if (!item.ok()) return item.status();
      tuple.items.push_back(std::move(*item));
      if (CurIsOp(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!tuple.items.empty()) return std::move(tuple.items[0]);
      if (!in_parens) {
        return Fail(Concat("Expected an expression, got '", Describe(Cur()), "'"));
      }
    }
    return tuple;
  }

  // --- expressions

  struct NestingGuard {
    explicit NestingGuard(int* depth) : depth_(depth) { ++*depth_; }
    ~NestingGuard() { --*depth_; }
    int* depth_;
  };

  ExprPtr Make(Expr::Kind kind, SourcePos pos) { return std::make_unique<Expr>(kind, pos); }

  absl::StatusOr<ExprPtr> ParseExpression(bool with_condexpr) {
    NestingGuard guard(&expr_depth_);
    if (expr_depth_ > kMaxNesting) return Fail("expression nested too deeply");
    return with_condexpr ? ParseCondExpr() : ParseOr();
  }

  absl::StatusOr<ExprPtr> ParseCondExpr() {
    const SourcePos pos = Pos();
    absl::StatusOr<ExprPtr> expr1 = ParseOr();
    if (!expr1.ok()) return expr1;
    ExprPtr result = std::move(*expr1);
    while (SkipName("if")) {
      absl::StatusOr<ExprPtr> cond = ParseOr();
      if (!cond.ok()) return cond;
      ExprPtr otherwise;
      if (SkipName("else")) {
        absl::StatusOr<ExprPtr> e = ParseCondExpr();
        if (!e.ok()) return e;
        otherwise = std::move(*e);
      }
      ExprPtr node = Make(Expr::Kind::kCondExpr, pos);
      node->children.push_back(std::move(*cond));
      node->children.push_back(std::move(result));
      node->children.push_back(std::move(otherwise));
      result = std::move(node);
    }
    return result;
  }

  absl::StatusOr<ExprPtr> ParseOr() {
    const SourcePos pos = Pos();
    absl::StatusOr<ExprPtr> left = ParseAnd();
    if (!left.ok()) return left;
    ExprPtr result = std::move(*left);
    while (SkipName("or")) {
      absl::StatusOr<ExprPtr> right = ParseAnd();
      if (!right.ok()) return right;
      ExprPtr node = Make(Expr::Kind::kOr, pos);
      node->children.push_back(std::move(result));
      node->children.push_back(std::move(*right));
      result = std::move(node);
    }
    return result;
  }

  absl::StatusOr<ExprPtr> ParseAnd() {
    const SourcePos pos = Pos();
    absl::StatusOr<ExprPtr> left = ParseNot();
    if (!left.ok()) return left;
    ExprPtr result = std::move(*left);
    while (SkipName("and")) {
      absl::StatusOr<ExprPtr> right = ParseNot();
      if (!right.ok()) return right;
      ExprPtr node = Make(Expr::Kind::kAnd, pos);
      node->children.push_back(std::move(result));
      node->children.push_back(std::move(*right));
      result = std::move(node);
    }
    return result;
  }

  absl::StatusOr<ExprPtr> ParseNot() {
    if (CurIsName("not")) {
      const SourcePos pos = Pos();
      Advance();
      NestingGuard guard(&expr_depth_);
      if (expr_depth_ > kMaxNesting) return Fail("expression nested too deeply");
      absl::StatusOr<ExprPtr> operand = ParseNot();
      if (!operand.ok()) return operand;
      ExprPtr node = Make(Expr::Kind::kNot, pos);
      node->children.push_back(std::move(*operand));
      return node;
    }
    return ParseCompare();
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    const SourcePos pos = Pos();
    absl::StatusOr<ExprPtr> first = ParseMath1();
    if (!first.ok()) return first;
    ExprPtr node;
    while (true) {
      std::string op;
      const Token& t = Cur();
      if (t.type == Token::Type::kOperator &&
          (t.value == "==" || t.value == "!=" || t.value == "<" || t.value == "<=" ||
           t.value == ">" || t.value == ">=")) {
        op = t.value;
        Advance();
      } else if (CurIsName("in")) {
        op = "in";
        Advance();
      } else if (CurIsName("not") && IsName(Peek(), "in")) {
        op = "notin";
        Advance();
        Advance();
      } else {
        break;
      }
      absl::StatusOr<ExprPtr> operand = ParseMath1();
      if (!operand.ok()) return operand;
      if (!node) {
        node = Make(Expr::Kind::kCompare, pos);
        node->children.push_back(std::move(*first));
      }
      node->ops.push_back(op);
      node->children.push_back(std::move(*operand));
    }
    if (!node) return first;
    return node;
  }

  ExprPtr MakeBinary(std::string op, ExprPtr left, ExprPtr right, SourcePos pos) {
    ExprPtr node = Make(Expr::Kind::kBinary, pos);
    node->name = std::move(op);
    node->children.push_back(std::move(left));
    node->children.push_back(std::move(right));
    return node;
  }

  absl::StatusOr<ExprPtr> ParseMath1() {
    const SourcePos pos = Pos();
    absl::StatusOr<ExprPtr> left = ParseConcat();
    if (!left.ok()) return left;
    ExprPtr result = std::move(*left);
    while (CurIsOp("+") || CurIsOp("-")) {
      const std::string op = Cur().value;
      Advance();
      absl::StatusOr<ExprPtr> right = ParseConcat();
      if (!right.ok()) return right;
      result = MakeBinary(op, std::move(result), std::move(*right), pos);
    }
    return result;
  }

  absl::StatusOr<ExprPtr> ParseConcat() {
    const SourcePos pos = Pos();
    absl::StatusOr<ExprPtr> first = ParseMath2();
    if (!first.ok()) return first;
    if (!CurIsOp("~")) return first;
    ExprPtr node = Make(Expr::Kind::kConcat, pos);
    node->children.push_back(std::move(*first));
    while (SkipOp("~")) {
      absl::StatusOr<ExprPtr> next = ParseMath2();
      if (!next.ok()) return next;
      node->children.push_back(std::move(*next));
    }
    return node;
  }

  absl::StatusOr<ExprPtr> ParseMath2() {
    const SourcePos pos = Pos();
    absl::StatusOr<ExprPtr> left = ParsePow();
    if (!left.ok()) return left;
    ExprPtr result = std::move(*left);
    while (CurIsOp("*") || CurIsOp("/") || CurIsOp("//") || CurIsOp("%")) {
      const std::string op = Cur().value;
      Advance();
      absl::StatusOr<ExprPtr> right = ParsePow();
      if (!right.ok()) return right;
      result = MakeBinary(op, std::move(result), std::move(*right), pos);
    }
    return result;
  }

  absl::StatusOr<ExprPtr> ParsePow() {
    const SourcePos pos = Pos();
    absl::StatusOr<ExprPtr> left = ParseUnary(true);
    if (!left.ok()) return left;
    ExprPtr result = std::move(*left);
    while (SkipOp("**")) {
      absl::StatusOr<ExprPtr> right = ParseUnary(true);
      if (!right.ok()) return right;
      result = MakeBinary("**", std::move(result), std::move(*right), pos);
    }
    return result;
  }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter) {
    NestingGuard guard(&expr_depth_);
    if (expr_depth_ > kMaxNesting) return Fail("expression nested too deeply");
    const SourcePos pos = Pos();
    ExprPtr node;
    if (CurIsOp("-") || CurIsOp("+")) {
      const bool neg = CurIsOp("-");
      Advance();
      absl::StatusOr<ExprPtr> operand = ParseUnary(false);
      if (!operand.ok()) return operand;
      node = Make(neg ? Expr::Kind::kNeg : Expr::Kind::kPos, pos);
      node->children.push_back(std::move(*operand));
    } else {
      absl::StatusOr<ExprPtr> primary = ParsePrimary();
      if (!primary.ok()) return primary;
      node = std::move(*primary);
    }
    absl::StatusOr<ExprPtr> post = ParsePostfix(std::move(node));
    if (!post.ok() || !with_filter) return post;
    return ParseFilterExpr(std::move(*post));
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token& t = Cur();
    const SourcePos pos = Pos();
    switch (t.type) {
      case Token::Type::kName: {
        ExprPtr node;
        if (t.value == "true" || t.value == "True" || t.value == "false" || t.value == "False") {
          node = Make(Expr::Kind::kConst, pos);
          node->value = Value::Bool(t.value == "true" || t.value == "True");
        } else if (t.value == "none" || t.value == "None") {
          node = Make(Expr::Kind::kConst, pos);
          node->value = Value::None();
        } else {
          node = Make(Expr::Kind::kName, pos);
          node->name = t.value;
        }
        Advance();
        return node;
      }
      case Token::Type::kString: {
        std::string s;
        while (Cur().type == Token::Type::kString) {
          s += Cur().value;
          Advance();
        }
        ExprPtr node = Make(Expr::Kind::kConst, pos);
        node->value = Value::String(std::move(s));
        return node;
      }
      case Token::Type::kInteger:
      case Token::Type::kFloat: {
        ExprPtr node = Make(Expr::Kind::kConst, pos);
        node->value =
            t.type == Token::Type::kInteger ? Value::Int(t.int_value) : Value::Float(t.float_value);
        Advance();
        return node;
      }
      case Token::Type::kOperator:
        if (t.value == "(") {
          Advance();
          absl::StatusOr<ExprPtr> inner = ParseTuple(true, {}, true);
          if (!inner.ok()) return inner;
          if (absl::Status s = ExpectOp(")"); !s.ok()) return s;
          return inner;
        }
        if (t.value == "[") return ParseList();
        if (t.value == "{") return ParseDict();
        break;
      default:
        break;
    }
    return Fail(Concat("unexpected '", Describe(t), "'"));
  }

  // Expressions separated by commas make a tuple (jinja2's parse_tuple; assignment targets have
  // their own parser).
  absl::StatusOr<ExprPtr> ParseTuple(bool with_condexpr,
                                     const std::vector<std::string>& extra_end_names,
                                     bool explicit_parentheses) {
    const SourcePos pos = Pos();
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) {
        if (absl::Status s = ExpectOp(","); !s.ok()) return s;
      }
      if (AtTupleEnd(extra_end_names)) break;
      absl::StatusOr<ExprPtr> item = ParseExpression(with_condexpr);
      if (!item.ok()) return item;
      items.push_back(std::move(*item));
      if (CurIsOp(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parentheses) {
        return Fail(Concat("Expected an expression, got '", Describe(Cur()), "'"));
      }
    }
    ExprPtr node = Make(Expr::Kind::kTuple, pos);
    node->children = std::move(items);
    return node;
  }

  absl::StatusOr<ExprPtr> ParseList() {
    ExprPtr node = Make(Expr::Kind::kList, Pos());
    Advance();
    while (!CurIsOp("]")) {
      if (!node->children.empty()) {
        if (absl::Status s = ExpectOp(","); !s.ok()) return s;
      }
      if (CurIsOp("]")) break;
      absl::StatusOr<ExprPtr> item = ParseExpression(true);
      if (!item.ok()) return item;
      node->children.push_back(std::move(*item));
    }
    if (absl::Status s = ExpectOp("]"); !s.ok()) return s;
    return node;
  }

  absl::StatusOr<ExprPtr> ParseDict() {
    ExprPtr node = Make(Expr::Kind::kDict, Pos());
    Advance();
    while (!CurIsOp("}")) {
      if (!node->children.empty()) {
        if (absl::Status s = ExpectOp(","); !s.ok()) return s;
      }
      if (CurIsOp("}")) break;
      absl::StatusOr<ExprPtr> key = ParseExpression(true);
      if (!key.ok()) return key;
      if (absl::Status s = ExpectOp(":"); !s.ok()) return s;
      absl::StatusOr<ExprPtr> value = ParseExpression(true);
      if (!value.ok()) return value;
      node->children.push_back(std::move(*key));
      node->children.push_back(std::move(*value));
    }
    if (absl::Status s = ExpectOp("}"); !s.ok()) return s;
    return node;
  }

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node) {
    while (true) {
      if (CurIsOp(".") || CurIsOp("[")) {
        absl::StatusOr<ExprPtr> sub = ParseSubscript(std::move(node));
        if (!sub.ok()) return sub;
        node = std::move(*sub);
      } else if (CurIsOp("(")) {
        absl::StatusOr<ExprPtr> call = ParseCall(std::move(node));
        if (!call.ok()) return call;
        node = std::move(*call);
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseFilterExpr(ExprPtr node) {
    while (true) {
      absl::StatusOr<ExprPtr> next;
      if (CurIsOp("|")) {
        next = ParseFilter(std::move(node), false);
      } else if (CurIsName("is")) {
        next = ParseTest(std::move(node));
      } else if (CurIsOp("(")) {
        next = ParseCall(std::move(node));
      } else {
        return node;
      }
      if (!next.ok()) return next;
      node = std::move(*next);
    }
  }

  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr node) {
    const SourcePos pos = node->pos;
    if (SkipOp(".")) {
      const Token& attr = Cur();
      if (attr.type == Token::Type::kName) {
        ExprPtr get = Make(Expr::Kind::kGetAttr, pos);
        get->name = attr.value;
        get->children.push_back(std::move(node));
        Advance();
        return get;
      }
      if (attr.type != Token::Type::kInteger) return Fail("expected name or number");
      ExprPtr get = Make(Expr::Kind::kGetItem, pos);
      ExprPtr index = Make(Expr::Kind::kConst, Pos());
      index->value = Value::Int(attr.int_value);
      Advance();
      get->children.push_back(std::move(node));
      get->children.push_back(std::move(index));
      return get;
    }
    Advance();  // [
    std::vector<ExprPtr> args;
    while (!CurIsOp("]")) {
      if (!args.empty()) {
        if (absl::Status s = ExpectOp(","); !s.ok()) return s;
      }
      absl::StatusOr<ExprPtr> arg = ParseSubscribed();
      if (!arg.ok()) return arg;
      args.push_back(std::move(*arg));
    }
    if (absl::Status s = ExpectOp("]"); !s.ok()) return s;
    ExprPtr get = Make(Expr::Kind::kGetItem, pos);
    get->children.push_back(std::move(node));
    if (args.size() == 1) {
      get->children.push_back(std::move(args[0]));
    } else {
      ExprPtr tuple = Make(Expr::Kind::kTuple, pos);
      tuple->children = std::move(args);
      get->children.push_back(std::move(tuple));
    }
    return get;
  }

  absl::StatusOr<ExprPtr> ParseSubscribed() {
    const SourcePos pos = Pos();
    std::vector<ExprPtr> parts;
    if (CurIsOp(":")) {
      Advance();
      parts.push_back(nullptr);
    } else {
      absl::StatusOr<ExprPtr> e = ParseExpression(true);
      if (!e.ok()) return e;
      if (!CurIsOp(":")) return e;
      Advance();
      parts.push_back(std::move(*e));
    }
    if (CurIsOp(":")) {
      parts.push_back(nullptr);
    } else if (!CurIsOp("]") && !CurIsOp(",")) {
      absl::StatusOr<ExprPtr> e = ParseExpression(true);
      if (!e.ok()) return e;
      parts.push_back(std::move(*e));
    } else {
      parts.push_back(nullptr);
    }
    if (CurIsOp(":")) {
      Advance();
      if (!CurIsOp("]") && !CurIsOp(",")) {
        absl::StatusOr<ExprPtr> e = ParseExpression(true);
        if (!e.ok()) return e;
        parts.push_back(std::move(*e));
      } else {
        parts.push_back(nullptr);
      }
    } else {
      parts.push_back(nullptr);
    }
    ExprPtr slice = Make(Expr::Kind::kSlice, pos);
    slice->children = std::move(parts);
    return slice;
  }

  // `(args, name=value, *dyn, **dyn)` into `node` (children[1..], keywords, dyn_*).
  absl::Status ParseCallArgs(Expr* node) {
    const SourcePos pos = Pos();
    if (absl::Status s = ExpectOp("("); !s.ok()) return s;
    bool require_comma = false;
    const auto ensure = [&](bool ok) {
      return ok ? absl::OkStatus()
                : SyntaxError(pos, "invalid syntax for function call expression");
    };
    while (!CurIsOp(")")) {
      if (require_comma) {
        if (absl::Status s = ExpectOp(","); !s.ok()) return s;
        if (CurIsOp(")")) break;
      }
      if (CurIsOp("*")) {
        if (absl::Status s = ensure(!node->dyn_args && !node->dyn_kwargs); !s.ok()) return s;
        Advance();
        absl::StatusOr<ExprPtr> e = ParseExpression(true);
        if (!e.ok()) return e.status();
        node->dyn_args = std::move(*e);
      } else if (CurIsOp("**")) {
        if (absl::Status s = ensure(!node->dyn_kwargs); !s.ok()) return s;
        Advance();
        absl::StatusOr<ExprPtr> e = ParseExpression(true);
        if (!e.ok()) return e.status();
        node->dyn_kwargs = std::move(*e);
      } else if (Cur().type == Token::Type::kName && IsOp(Peek(), "=")) {
        if (absl::Status s = ensure(!node->dyn_kwargs); !s.ok()) return s;
        std::string key = Cur().value;
        Advance();
        Advance();
        absl::StatusOr<ExprPtr> e = ParseExpression(true);
        if (!e.ok()) return e.status();
        node->keywords.emplace_back(std::move(key), std::move(*e));
      } else {
        if (absl::Status s = ensure(!node->dyn_args && !node->dyn_kwargs && node->keywords.empty());
            !s.ok()) {
          return s;
        }
        absl::StatusOr<ExprPtr> e = ParseExpression(true);
        if (!e.ok()) return e.status();
        node->children.push_back(std::move(*e));
      }
      require_comma = true;
    }
    return ExpectOp(")");
  }

  // Calls, attributes and subscripts are positioned at the start of what they apply to.
  absl::StatusOr<ExprPtr> ParseCall(ExprPtr callee) {
    ExprPtr node = Make(Expr::Kind::kCall, callee->pos);
    node->children.push_back(std::move(callee));
    if (absl::Status s = ParseCallArgs(node.get()); !s.ok()) return s;
    return node;
  }

  absl::StatusOr<std::string> ParseDottedName() {
    absl::StatusOr<std::string> name = ExpectAnyName();
    if (!name.ok()) return name;
    while (CurIsOp(".")) {
      Advance();
      absl::StatusOr<std::string> part = ExpectAnyName();
      if (!part.ok()) return part;
      AppendTo(&*name, ".", *part);
    }
    return name;
  }

  // `| name(args)` repeated. With `start_inline` the first filter has no pipe (filter blocks).
  // A null `node` stands for the body of a filter or set block.
  absl::StatusOr<ExprPtr> ParseFilter(ExprPtr node, bool start_inline) {
    while (CurIsOp("|") || start_inline) {
      if (!start_inline) Advance();
      start_inline = false;
      const SourcePos pos = Pos();
      absl::StatusOr<std::string> name = ParseDottedName();
      if (!name.ok()) return name.status();
      ExprPtr filter = Make(Expr::Kind::kFilter, pos);
      filter->name = std::move(*name);
      filter->children.push_back(std::move(node));
      if (CurIsOp("(")) {
        if (absl::Status s = ParseCallArgs(filter.get()); !s.ok()) return s;
      }
      node = std::move(filter);
    }
    return node;
  }

  absl::StatusOr<ExprPtr> ParseTest(ExprPtr node) {
    const SourcePos pos = Pos();
    Advance();  // is
    const bool negated = SkipName("not");
    absl::StatusOr<std::string> name = ParseDottedName();
    if (!name.ok()) return name.status();
    ExprPtr test = Make(Expr::Kind::kTest, pos);
    test->name = std::move(*name);
    test->children.push_back(std::move(node));
    const Token& t = Cur();
    if (IsOp(t, "(")) {
      if (absl::Status s = ParseCallArgs(test.get()); !s.ok()) return s;
    } else if ((t.type == Token::Type::kName || t.type == Token::Type::kString ||
                t.type == Token::Type::kInteger || t.type == Token::Type::kFloat || IsOp(t, "[") ||
                IsOp(t, "{")) &&
               !IsName(t, "else") && !IsName(t, "or") && !IsName(t, "and")) {
      if (IsName(t, "is")) return Fail("You cannot chain multiple tests with is");
      absl::StatusOr<ExprPtr> arg = ParsePrimary();
      if (!arg.ok()) return arg;
      absl::StatusOr<ExprPtr> post = ParsePostfix(std::move(*arg));
      if (!post.ok()) return post;
      test->children.push_back(std::move(*post));
    }
    if (!negated) return test;
    ExprPtr neg = Make(Expr::Kind::kNot, pos);
    neg->children.push_back(std::move(test));
    return neg;
  }

  std::vector<Token> tokens_;
  const SourceMap& map_;
  size_t pos_ = 0;
  int nesting_ = 0;
  int expr_depth_ = 0;
  int loop_depth_ = 0;
  std::vector<std::string> tag_stack_;
  std::vector<std::vector<std::string>> end_stack_;
};

// Names an expression tree reads (not descending into nested macros, which have their own).
void CollectNames(const Expr* e, std::vector<std::string>* names);

void CollectNames(const Body& body, std::vector<std::string>* names) {
  for (const StmtPtr& stmt : body) {
    if (stmt->kind == Stmt::Kind::kMacro) continue;
    CollectNames(stmt->expr.get(), names);
    CollectNames(stmt->filter.get(), names);
    for (const auto& [cond, branch] : stmt->branches) {
      CollectNames(cond.get(), names);
      CollectNames(branch, names);
    }
    for (const ExprPtr& d : stmt->defaults) CollectNames(d.get(), names);
    for (const ExprPtr& v : stmt->with_values) CollectNames(v.get(), names);
    CollectNames(stmt->body, names);
    CollectNames(stmt->else_body, names);
  }
}

void CollectNames(const Expr* e, std::vector<std::string>* names) {
  if (e == nullptr) return;
  if (e->kind == Expr::Kind::kName) names->push_back(e->name);
  for (const ExprPtr& child : e->children) CollectNames(child.get(), names);
  for (const auto& [unused, kw] : e->keywords) CollectNames(kw.get(), names);
  CollectNames(e->dyn_args.get(), names);
  CollectNames(e->dyn_kwargs.get(), names);
}

void NoteSpecialNames(Stmt* def) {
  std::vector<std::string> names;
  CollectNames(def->body, &names);
  for (const ExprPtr& d : def->defaults) CollectNames(d.get(), &names);
  for (const std::string& n : names) {
    def->uses_varargs |= n == "varargs";
    def->uses_kwargs |= n == "kwargs";
    def->uses_caller |= n == "caller";
  }
}

// jinja2 splits on \r\n, \r and \n, joins with \n and drops one trailing empty line.
std::string NormalizeNewlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

absl::StatusOr<Body> ParseTemplate(std::string_view source) {
  if (const size_t bad = FindInvalidUtf8(source); bad != std::string_view::npos) {
    return absl::InvalidArgumentError(
        Concat("template is not valid UTF-8 (byte offset ", bad, ")"));
  }
  const std::string normalized = NormalizeNewlines(source);
  const SourceMap map(normalized);
  Lexer lexer(normalized, map);
  absl::StatusOr<std::vector<Token>> tokens = lexer.Run();
  if (!tokens.ok()) return tokens.status();
  Parser parser(std::move(*tokens), map);
  return parser.ParseAll();
}

}  // namespace tessera::jinja
