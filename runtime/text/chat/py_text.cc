#include "runtime/text/chat/py_text.h"

#include <unicode/locid.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace tessera::jinja {
namespace {

std::string FromIcu(const icu::UnicodeString& u) {
  std::string out;
  u.toUTF8String(out);
  return out;
}

icu::UnicodeString ToIcu(std::string_view s) {
  return icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
}

bool IsCased(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_CASED); }
bool IsLowerChar(char32_t c) { return u_isULowercase(static_cast<UChar32>(c)); }
bool IsUpperChar(char32_t c) { return u_isUUppercase(static_cast<UChar32>(c)); }
bool IsTitleChar(char32_t c) { return u_istitle(static_cast<UChar32>(c)); }
bool IsNumericChar(char32_t c) {
  return u_getIntPropertyValue(static_cast<UChar32>(c), UCHAR_NUMERIC_TYPE) != U_NT_NONE;
}
bool IsDigitChar(char32_t c) {
  const int nt = u_getIntPropertyValue(static_cast<UChar32>(c), UCHAR_NUMERIC_TYPE);
  return nt == U_NT_DECIMAL || nt == U_NT_DIGIT;
}
bool IsAlphaChar(char32_t c) { return u_isalpha(static_cast<UChar32>(c)); }

std::string TitleOne(char32_t c) {
  icu::UnicodeString u(static_cast<UChar32>(c));
  u.toTitle(nullptr, icu::Locale::getRoot(),
            U_TITLECASE_NO_LOWERCASE | U_TITLECASE_NO_BREAK_ADJUSTMENT);
  return FromIcu(u);
}

std::string LowerOne(char32_t c) {
  icu::UnicodeString u(static_cast<UChar32>(c));
  u.toLower(icu::Locale::getRoot());
  return FromIcu(u);
}

bool IsLineBreak(char32_t c) {
  switch (c) {
    case '\n':
    case '\r':
    case 0x0B:
    case 0x0C:
    case 0x1C:
    case 0x1D:
    case 0x1E:
    case 0x85:
    case 0x2028:
    case 0x2029:
      return true;
    default:
      return false;
  }
}

template <typename Pred>
bool AllChars(std::string_view s, Pred pred) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size();) {
    if (!pred(NextCodePoint(s, &i))) return false;
  }
  return true;
}

}  // namespace

bool PyIsSpace(char32_t c) {
  if (c <= 0x20) return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
  switch (c) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

bool PyIsPrintable(char32_t c) {
  if (c == ' ') return true;
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
    case U_UNASSIGNED:
    case U_LINE_SEPARATOR:
    case U_PARAGRAPH_SEPARATOR:
    case U_SPACE_SEPARATOR:
      return false;
    default:
      return true;
  }
}

std::string PyStrip(std::string_view s, std::optional<std::string_view> chars, bool left,
                    bool right) {
  std::u32string set;
  if (chars) set = DecodeUtf8(*chars);
  const auto strip_me = [&](char32_t c) {
    return chars ? set.find(c) != std::u32string::npos : PyIsSpace(c);
  };
  size_t begin = 0;
  size_t end = s.size();
  if (left) {
    while (begin < end) {
      size_t next = begin;
      if (!strip_me(NextCodePoint(s, &next))) break;
      begin = next;
    }
  }
  if (right) {
    while (end > begin) {
      size_t start = end - 1;
      while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
      size_t probe = start;
      if (!strip_me(NextCodePoint(s, &probe))) break;
      end = start;
    }
  }
  return std::string(s.substr(begin, end - begin));
}

std::vector<std::string> PySplit(std::string_view s, std::optional<std::string_view> sep,
                                 int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep) {
    size_t pos = 0;
    while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
      const size_t hit = s.find(*sep, pos);
      if (hit == std::string_view::npos) break;
      out.emplace_back(s.substr(pos, hit - pos));
      pos = hit + sep->size();
    }
    out.emplace_back(s.substr(pos));
    return out;
  }
  size_t i = 0;
  while (true) {
    // Skip whitespace.
    while (i < s.size()) {
      size_t next = i;
      if (!PyIsSpace(NextCodePoint(s, &next))) break;
      i = next;
    }
    if (i >= s.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      out.emplace_back(s.substr(i));
      break;
    }
    size_t j = i;
    while (j < s.size()) {
      size_t next = j;
      if (PyIsSpace(NextCodePoint(s, &next))) break;
      j = next;
    }
    out.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::vector<std::string> PyRSplit(std::string_view s, std::optional<std::string_view> sep,
                                  int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep) {
    size_t end = s.size();
    while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
      if (end < sep->size()) break;
      const size_t hit = s.rfind(*sep, end - sep->size());
      if (hit == std::string_view::npos) break;
      out.emplace_back(s.substr(hit + sep->size(), end - hit - sep->size()));
      end = hit;
    }
    out.emplace_back(s.substr(0, end));
    return {out.rbegin(), out.rend()};
  }
  const std::u32string u = DecodeUtf8(s);
  int64_t end = static_cast<int64_t>(u.size());
  while (true) {
    while (end > 0 && PyIsSpace(u[end - 1])) --end;
    if (end <= 0) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      out.push_back(EncodeUtf8(u.substr(0, end)));
      break;
    }
    int64_t start = end;
    while (start > 0 && !PyIsSpace(u[start - 1])) --start;
    out.push_back(EncodeUtf8(u.substr(start, end - start)));
    end = start;
  }
  return {out.rbegin(), out.rend()};
}

std::vector<std::string> PySplitLines(std::string_view s, bool keepends) {
  std::vector<std::string> out;
  size_t line_start = 0;
  size_t i = 0;
  while (i < s.size()) {
    const size_t char_start = i;
    const char32_t c = NextCodePoint(s, &i);
    if (!IsLineBreak(c)) continue;
    size_t eol_end = i;
    if (c == '\r' && i < s.size() && s[i] == '\n') eol_end = ++i;
    out.emplace_back(s.substr(line_start, (keepends ? eol_end : char_start) - line_start));
    line_start = eol_end;
  }
  if (line_start < s.size()) out.emplace_back(s.substr(line_start));
  return out;
}

std::string PyReplace(std::string_view s, std::string_view old_sub, std::string_view new_sub,
                      int64_t count) {
  std::string out;
  int64_t done = 0;
  if (old_sub.empty()) {
    // Python inserts `new` before every code point and at the end.
    size_t i = 0;
    while (i < s.size()) {
      if (count >= 0 && done >= count) break;
      out.append(new_sub);
      ++done;
      const size_t start = i;
      NextCodePoint(s, &i);
      out.append(s.substr(start, i - start));
    }
    if (i < s.size()) {
      out.append(s.substr(i));
    } else if (count < 0 || done < count) {
      out.append(new_sub);
    }
    return out;
  }
  size_t pos = 0;
  while (count < 0 || done < count) {
    const size_t hit = s.find(old_sub, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(new_sub);
    pos = hit + old_sub.size();
    ++done;
  }
  out.append(s.substr(pos));
  return out;
}

int64_t PyCount(std::string_view s, std::string_view sub) {
  if (sub.empty()) return static_cast<int64_t>(CodePointCount(s)) + 1;
  int64_t n = 0;
  for (size_t pos = s.find(sub); pos != std::string_view::npos;
       pos = s.find(sub, pos + sub.size())) {
    ++n;
  }
  return n;
}

std::string PyUpper(std::string_view s) {
  if (IsAscii(s)) {
    std::string out(s);
    for (char& c : out) {
      if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    }
    return out;
  }
  icu::UnicodeString u = ToIcu(s);
  u.toUpper(icu::Locale::getRoot());
  return FromIcu(u);
}

std::string PyLower(std::string_view s) {
  if (IsAscii(s)) {
    std::string out(s);
    for (char& c : out) {
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    return out;
  }
  icu::UnicodeString u = ToIcu(s);
  u.toLower(icu::Locale::getRoot());
  return FromIcu(u);
}

std::string PyTitle(std::string_view s) {
  std::string out;
  bool previous_is_cased = false;
  for (size_t i = 0; i < s.size();) {
    const char32_t c = NextCodePoint(s, &i);
    if (c < 0x80) {
      char ch = static_cast<char>(c);
      if (previous_is_cased) {
        if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
      } else if (ch >= 'a' && ch <= 'z') {
        ch = static_cast<char>(ch - 'a' + 'A');
      }
      out.push_back(ch);
    } else {
      out += previous_is_cased ? LowerOne(c) : TitleOne(c);
    }
    previous_is_cased = IsCased(c);
  }
  return out;
}

std::string PyCapitalize(std::string_view s) {
  if (s.empty()) return "";
  size_t i = 0;
  const char32_t first = NextCodePoint(s, &i);
  return TitleOne(first) + PyLower(s.substr(i));
}

std::string PySwapCase(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const size_t start = i;
    const char32_t c = NextCodePoint(s, &i);
    if (IsUpperChar(c)) {
      out += LowerOne(c);
    } else if (IsLowerChar(c)) {
      out += PyUpper(s.substr(start, i - start));
    } else {
      out.append(s.substr(start, i - start));
    }
  }
  return out;
}

bool PyIsAlpha(std::string_view s) { return AllChars(s, IsAlphaChar); }
bool PyIsDigit(std::string_view s) { return AllChars(s, IsDigitChar); }
bool PyIsAlnum(std::string_view s) {
  return AllChars(s, [](char32_t c) { return IsAlphaChar(c) || IsNumericChar(c); });
}
bool PyIsSpaceStr(std::string_view s) { return AllChars(s, PyIsSpace); }

bool PyIsLower(std::string_view s) {
  bool cased = false;
  for (size_t i = 0; i < s.size();) {
    const char32_t c = NextCodePoint(s, &i);
    if (IsUpperChar(c) || IsTitleChar(c)) return false;
    if (IsLowerChar(c)) cased = true;
  }
  return cased;
}

bool PyIsUpper(std::string_view s) {
  bool cased = false;
  for (size_t i = 0; i < s.size();) {
    const char32_t c = NextCodePoint(s, &i);
    if (IsLowerChar(c) || IsTitleChar(c)) return false;
    if (IsUpperChar(c)) cased = true;
  }
  return cased;
}

bool PyIsWordChar(char32_t c) { return c == '_' || IsAlphaChar(c) || IsNumericChar(c); }

std::string PyReprString(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  char buf[16];
  for (size_t i = 0; i < s.size();) {
    const size_t start = i;
    const char32_t c = NextCodePoint(s, &i);
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7F) {
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(c));
      out += buf;
    } else if (c < 0x7F || PyIsPrintable(c)) {
      out.append(s.substr(start, i - start));
    } else if (c <= 0xFF) {
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(c));
      out += buf;
    } else if (c <= 0xFFFF) {
      std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      std::snprintf(buf, sizeof(buf), "\\U%08x", static_cast<unsigned>(c));
      out += buf;
    }
  }
  out.push_back(quote);
  return out;
}

std::string PyReprFloat(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  // Shortest round-trip digits in scientific form: "-d.ddde+XX".
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string_view sci(buf, static_cast<size_t>(result.ptr - buf));
  std::string out;
  if (!sci.empty() && sci[0] == '-') {
    out.push_back('-');
    sci.remove_prefix(1);
  }
  const size_t e_pos = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, e_pos)) {
    if (c != '.') digits.push_back(c);
  }
  const int exponent = std::atoi(std::string(sci.substr(e_pos + 1)).c_str());
  // CPython's repr: exponent notation when the decimal exponent is < -4 or >= 16.
  if (exponent < -4 || exponent >= 16) {
    out.push_back(digits[0]);
    if (digits.size() > 1) {
      out.push_back('.');
      out.append(digits, 1);
    }
    std::snprintf(buf, sizeof(buf), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += buf;
    return out;
  }
  const int point = exponent + 1;  // digits before the decimal point
  if (point <= 0) {
    out += "0.";
    out.append(static_cast<size_t>(-point), '0');
    out += digits;
  } else if (static_cast<size_t>(point) >= digits.size()) {
    out += digits;
    out.append(static_cast<size_t>(point) - digits.size(), '0');
    out += ".0";
  } else {
    out.append(digits, 0, static_cast<size_t>(point));
    out.push_back('.');
    out.append(digits, static_cast<size_t>(point));
  }
  return out;
}

}  // namespace tessera::jinja
