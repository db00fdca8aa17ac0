// Python `str` semantics over UTF-8 std::string, for the Jinja interpreter.
//
// Chat templates are Python code at heart: `'x'.strip()`, `s[::-1]`, `len(s)` and `repr(1e16)` must
// give what CPython gives, or the rendered prompt differs from transformers' by a byte. Strings
// stay UTF-8 everywhere; operations that Python defines per code point (indexing, length, strip
// sets, case mapping) decode on demand (runtime/text/utf8.h: validation, code points). Case
// mapping and character classes come from ICU.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/text/utf8.h"

namespace tessera::jinja {

// str.isspace() for one code point.
bool PyIsSpace(char32_t c);
// str.isprintable() for one code point (what repr() leaves unescaped).
bool PyIsPrintable(char32_t c);

// str.strip / lstrip / rstrip; `chars` == nullopt strips whitespace.
std::string PyStrip(std::string_view s, std::optional<std::string_view> chars, bool left,
                    bool right);
// str.split / str.rsplit. `sep` == nullopt splits on runs of whitespace. maxsplit < 0: no limit.
// An empty `sep` is the caller's error to report (Python raises ValueError).
std::vector<std::string> PySplit(std::string_view s, std::optional<std::string_view> sep,
                                 int64_t maxsplit);
std::vector<std::string> PyRSplit(std::string_view s, std::optional<std::string_view> sep,
                                  int64_t maxsplit);
// str.splitlines(keepends).
std::vector<std::string> PySplitLines(std::string_view s, bool keepends);
// str.replace(old, new, count); count < 0 replaces all.
std::string PyReplace(std::string_view s, std::string_view old_sub, std::string_view new_sub,
                      int64_t count);
// str.count(sub): non-overlapping occurrences.
int64_t PyCount(std::string_view s, std::string_view sub);

// Case mapping with full Unicode mappings (ß.upper() == "SS"), as CPython does.
std::string PyUpper(std::string_view s);
std::string PyLower(std::string_view s);
std::string PyTitle(std::string_view s);       // str.title()
std::string PyCapitalize(std::string_view s);  // str.capitalize()
std::string PySwapCase(std::string_view s);
// Character class predicates over the whole string, as str.isX() (false for "").
bool PyIsAlpha(std::string_view s);
bool PyIsDigit(std::string_view s);
bool PyIsAlnum(std::string_view s);
bool PyIsSpaceStr(std::string_view s);
bool PyIsLower(std::string_view s);
bool PyIsUpper(std::string_view s);
// \w for one code point (Python's re with str patterns).
bool PyIsWordChar(char32_t c);

// repr(str): quotes and escapes as CPython.
std::string PyReprString(std::string_view s);
// repr(float): the shortest string that round-trips, switching to exponent form as CPython does
// ("1e+16", "1e-05", "0.0001", "3.0", "inf", "nan").
std::string PyReprFloat(double v);

}  // namespace tessera::jinja
