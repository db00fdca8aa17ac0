#include "runtime/text/chat/jinja_builtins.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "runtime/text/chat/concat.h"
#include "runtime/text/chat/py_json.h"
#include "runtime/text/chat/py_text.h"

namespace tessera::jinja {
namespace {

absl::Status Error(const std::string& message) { return absl::InvalidArgumentError(message); }

// --- argument binding

// Binds positional and keyword arguments to parameter names, Python style.
class Args {
 public:
  static absl::StatusOr<Args> Bind(std::string_view what, const CallArgs& call,
                                   std::initializer_list<std::string_view> names) {
    Args a;
    a.values_.resize(names.size());
    const std::vector<std::string_view> params(names);
    if (call.positional.size() > params.size()) {
      return Error(Concat(what, "() takes at most ", params.size(), " argument(s) (",
                          call.positional.size(), " given)"));
    }
    for (size_t i = 0; i < call.positional.size(); ++i) a.values_[i] = call.positional[i];
    for (const auto& [key, value] : call.keyword) {
      size_t p = 0;
      while (p < params.size() && params[p] != key) ++p;
      if (p == params.size()) {
        return Error(Concat(what, "() got an unexpected keyword argument '", key, "'"));
      }
      if (a.values_[p]) {
        return Error(Concat(what, "() got multiple values for argument '", key, "'"));
      }
      a.values_[p] = value;
    }
    return a;
  }

  const Value* Get(size_t i) const { return values_[i] ? &*values_[i] : nullptr; }
  // The argument, or `dflt` when absent.
  Value Or(size_t i, Value dflt) const { return values_[i] ? *values_[i] : std::move(dflt); }

 private:
  std::vector<std::optional<Value>> values_;
};

absl::StatusOr<int64_t> ToIndex(const Value& v, std::string_view what) {
  if (v.is_integral()) return v.integral_value();
  return Error(Concat(what, ": '", TypeName(v), "' object cannot be interpreted as an integer"));
}

absl::StatusOr<std::string> ToStringArg(const Value& v, std::string_view what) {
  if (v.is_string()) return v.string_value();
  return Error(Concat(what, " must be str, not ", TypeName(v)));
}

Value Str(std::string s) { return Value::String(std::move(s)); }

// --- attribute paths for map / sort / selectattr (dots, integer parts as indices)

std::vector<Value> AttributeParts(const Value& attribute) {
  std::vector<Value> parts;
  if (attribute.is_none()) return parts;
  if (!attribute.is_string()) {
    parts.push_back(attribute);
    return parts;
  }
  for (std::string& part : PySplit(attribute.string_value(), ".", -1)) {
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(),
                                                     [](char c) { return c >= '0' && c <= '9'; });
    parts.push_back(digits ? Value::Int(std::atoll(part.c_str())) : Str(std::move(part)));
  }
  return parts;
}

absl::StatusOr<Value> LookupPath(Renderer& r, Value item, const std::vector<Value>& parts,
                                 const Value* dflt) {
  for (const Value& part : parts) {
    absl::StatusOr<Value> next = r.GetItem(item, part);
    if (!next.ok()) return next;
    item = std::move(*next);
    if (dflt && !dflt->is_none() && item.is_undefined()) item = *dflt;
  }
  return item;
}

Value IgnoreCase(const Value& v) { return v.is_string() ? Str(PyLower(v.string_value())) : v; }

// Stable sort with Python's `<` (errors surface after the sort).
absl::Status SortValues(std::vector<Value>* keys, std::vector<size_t>* order, bool reverse) {
  absl::Status error = absl::OkStatus();
  std::stable_sort(order->begin(), order->end(), [&](size_t x, size_t y) {
    if (!error.ok()) return false;
    absl::StatusOr<bool> lt = reverse ? Less((*keys)[y], (*keys)[x]) : Less((*keys)[x], (*keys)[y]);
    if (!lt.ok()) {
      error = lt.status();
      return false;
    }
    return *lt;
  });
  return error;
}

// --- number formatting shared by %-format and str.format

std::string GroupThousands(std::string digits, char sep) {
  std::string out;
  const size_t n = digits.size();
  for (size_t i = 0; i < n; ++i) {
    out.push_back(digits[i]);
    const size_t left = n - i - 1;
    if (left > 0 && left % 3 == 0) out.push_back(sep);
  }
  return out;
}

std::string IntToBase(int64_t v, int base, bool upper) {
  if (v == 0) return "0";
  uint64_t u = v < 0 ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
  std::string out;
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  while (u) {
    out.push_back(digits[u % static_cast<uint64_t>(base)]);
    u /= static_cast<uint64_t>(base);
  }
  std::reverse(out.begin(), out.end());
  return out;
}

std::string FormatFloatC(double v, char type, int precision, bool alternate) {
  char fmt[16];
  std::snprintf(fmt, sizeof(fmt), "%%%s.%d%c", alternate ? "#" : "", precision, type);
  char buf[512];
  std::snprintf(buf, sizeof(buf), fmt, v);
  std::string s(buf);
  if (std::isinf(v) || std::isnan(v)) {
    // C prints "inf"/"nan"; Python prints the same for lowercase types and "INF"/"NAN" upper.
    for (char& c : s) c = (type >= 'A' && type <= 'Z') ? static_cast<char>(std::toupper(c)) : c;
  }
  return s;
}

struct Spec {
  char fill = ' ';
  char align = 0;  // '<', '>', '^', '='
  char sign = '-';
  bool alternate = false;
  bool zero = false;
  int64_t width = -1;
  char grouping = 0;
  int64_t precision = -1;
  char type = 0;
};

std::string Pad(std::string body, const Spec& spec, char default_align, size_t sign_len) {
  const auto len = static_cast<int64_t>(CodePointCount(body));
  if (spec.width <= len) return body;
  const size_t pad = static_cast<size_t>(spec.width - len);
  char align = spec.align ? spec.align : default_align;
  char fill = spec.fill;
  if (spec.zero && !spec.align) {
    align = '=';
    fill = '0';
  }
  switch (align) {
    case '<':
      return body + std::string(pad, fill);
    case '^': {
      const size_t left = pad / 2;
      return std::string(left, fill) + body + std::string(pad - left, fill);
    }
    case '=':
      return body.substr(0, sign_len) + std::string(pad, fill) + body.substr(sign_len);
    default:
      return std::string(pad, fill) + body;
  }
}

absl::StatusOr<std::string> FormatNumber(const Value& v, const Spec& spec) {
  char type = spec.type;
  std::string sign;
  std::string body;
  if (v.is_integral() && (type == 0 || type == 'd' || type == 'n' || type == 'x' || type == 'X' ||
                          type == 'o' || type == 'b' || type == 'c')) {
    const int64_t i = v.integral_value();
    if (type == 'c') {
      AppendUtf8(static_cast<char32_t>(i), &body);
      return Pad(body, spec, '<', 0);
    }
    const int base = type == 'x' || type == 'X' ? 16 : type == 'o' ? 8 : type == 'b' ? 2 : 10;
    body = IntToBase(i, base, type == 'X');
    if (spec.grouping) body = GroupThousands(body, spec.grouping);
    if (spec.alternate && base != 10) {
      body = (base == 16 ? (type == 'X' ? "0X" : "0x") : base == 8 ? "0o" : "0b") + body;
    }
    if (i < 0) {
      sign = "-";
    } else if (spec.sign == '+' || spec.sign == ' ') {
      sign = std::string(1, spec.sign);
    }
  } else {
    if (!v.is_number()) return Error("format requires a number");
    const double d = v.number_as_double();
    if (type == 0 && spec.precision < 0) {
      body = v.is_integral() ? Concat(v.integral_value()) : PyReprFloat(d);
    } else {
      bool percent = type == '%';
      char ctype = percent ? 'f' : (type == 0 ? 'g' : type);
      if (ctype == 'n') ctype = 'g';
      const int precision = spec.precision < 0 ? 6 : static_cast<int>(spec.precision);
      body = FormatFloatC(std::fabs(percent ? d * 100 : d), ctype, precision, spec.alternate);
      if (percent) body += "%";
      if (spec.grouping) {
        const size_t dot = body.find_first_not_of("0123456789");
        body = GroupThousands(body.substr(0, dot), spec.grouping) +
               (dot == std::string::npos ? "" : body.substr(dot));
      }
    }
    if (!body.empty() && body[0] == '-') body.erase(0, 1);
    if (std::signbit(d) && !std::isnan(d)) {
      sign = "-";
    } else if (spec.sign == '+' || spec.sign == ' ') {
      sign = std::string(1, spec.sign);
    }
  }
  return Pad(sign + body, spec, '>', sign.size());
}

// Parses a str.format spec: [[fill]align][sign][#][0][width][,|_][.precision][type].
absl::StatusOr<Spec> ParseSpec(std::string_view s) {
  Spec spec;
  size_t i = 0;
  const auto is_align = [](char c) { return c == '<' || c == '>' || c == '^' || c == '='; };
  if (s.size() >= 2 && is_align(s[1])) {
    spec.fill = s[0];
    spec.align = s[1];
    i = 2;
  } else if (!s.empty() && is_align(s[0])) {
    spec.align = s[0];
    i = 1;
  }
  if (i < s.size() && (s[i] == '+' || s[i] == '-' || s[i] == ' ')) spec.sign = s[i++];
  if (i < s.size() && s[i] == '#') {
    spec.alternate = true;
    ++i;
  }
  if (i < s.size() && s[i] == '0') {
    spec.zero = true;
    ++i;
  }
  if (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    spec.width = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9')
      spec.width = spec.width * 10 + (s[i++] - '0');
  }
  if (i < s.size() && (s[i] == ',' || s[i] == '_')) spec.grouping = s[i++];
  if (i < s.size() && s[i] == '.') {
    ++i;
    spec.precision = 0;
    if (i >= s.size() || s[i] < '0' || s[i] > '9')
      return Error("Format specifier missing precision");
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      spec.precision = spec.precision * 10 + (s[i++] - '0');
    }
  }
  if (i < s.size()) spec.type = s[i++];
  if (i != s.size()) return Error(Concat("Invalid format specifier '", s, "'"));
  return spec;
}

absl::StatusOr<std::string> FormatWithSpec(const Value& v, std::string_view spec_text) {
  if (spec_text.empty()) return ToStr(v);
  absl::StatusOr<Spec> spec = ParseSpec(spec_text);
  if (!spec.ok()) return spec.status();
  if (v.is_string() || (!v.is_number())) {
    if (spec->type != 0 && spec->type != 's') {
      return Error(Concat("Unknown format code '", std::string(1, spec->type),
                          "' for object of type '", TypeName(v), "'"));
    }
    std::string s = ToStr(v);
    if (spec->precision >= 0) {
      const std::u32string u = DecodeUtf8(s);
      s = EncodeUtf8(u.substr(0, static_cast<size_t>(spec->precision)));
    }
    return Pad(std::move(s), *spec, '<', 0);
  }
  return FormatNumber(v, *spec);
}

bool IsIndex(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// str.format(*args, **kwargs) with field names, attribute/index access, !r/!s and specs.
absl::StatusOr<std::string> StrFormat(Renderer& r, std::string_view fmt, const CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  enum class Numbering { kNone, kAuto, kManual } numbering = Numbering::kNone;
  for (size_t i = 0; i < fmt.size(); ++i) {
    const char c = fmt[i];
    if (c == '}') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '}') {
        out.push_back('}');
        ++i;
        continue;
      }
      return Error("Single '}' encountered in format string");
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out.push_back('{');
      ++i;
      continue;
    }
    const size_t close = fmt.find('}', i);
    if (close == std::string_view::npos) return Error("Single '{' encountered in format string");
    std::string_view field = fmt.substr(i + 1, close - i - 1);
    i = close;
    std::string_view spec;
    char conversion = 0;
    if (const size_t colon = field.find(':'); colon != std::string_view::npos) {
      spec = field.substr(colon + 1);
      field = field.substr(0, colon);
    }
    if (const size_t bang = field.find('!'); bang != std::string_view::npos) {
      if (bang + 2 != field.size()) return Error("expected ':' after conversion specifier");
      conversion = field[bang + 1];
      field = field.substr(0, bang);
    }
    size_t name_end = field.find_first_of(".[");
    std::string_view head = field.substr(0, name_end);
    Value v;
    if (head.empty() ? numbering == Numbering::kManual
                     : numbering == Numbering::kAuto && IsIndex(head)) {
      return Error(head.empty() ? "cannot switch from manual field specification to automatic "
                                  "field numbering"
                                : "cannot switch from automatic field numbering to manual field "
                                  "specification");
    }
    if (head.empty()) {
      numbering = Numbering::kAuto;
      if (auto_index >= args.positional.size()) {
        return Error("tuple index out of range");
      }
      v = args.positional[auto_index++];
    } else if (IsIndex(head)) {
      numbering = Numbering::kManual;
      const size_t idx = static_cast<size_t>(std::atoll(std::string(head).c_str()));
      if (idx >= args.positional.size()) {
        return Error("tuple index out of range");
      }
      v = args.positional[idx];
    } else {
      bool found = false;
      for (const auto& [k, kv] : args.keyword) {
        if (k == head) {
          v = kv;
          found = true;
        }
      }
      if (!found) return Error(Concat("KeyError: ", PyReprString(head)));
    }
    while (name_end != std::string_view::npos && name_end < field.size()) {
      if (field[name_end] == '.') {
        const size_t next = field.find_first_of(".[", name_end + 1);
        absl::StatusOr<Value> a = r.GetAttr(v, field.substr(name_end + 1, next - name_end - 1));
        if (!a.ok()) return a.status();
        v = *a;
        name_end = next;
      } else {
        const size_t rb = field.find(']', name_end);
        if (rb == std::string_view::npos) return Error("Missing ']' in format string");
        std::string key(field.substr(name_end + 1, rb - name_end - 1));
        const bool digits = !key.empty() && std::all_of(key.begin(), key.end(), [](char ch) {
          return ch >= '0' && ch <= '9';
        });
        absl::StatusOr<Value> item =
            r.GetItem(v, digits ? Value::Int(std::atoll(key.c_str())) : Str(key));
        if (!item.ok()) return item.status();
        v = *item;
        name_end = rb + 1;
      }
    }
    if (conversion == 'r' || conversion == 'a') {
      v = Str(Repr(v));
    } else if (conversion == 's') {
      v = Str(ToStr(v));
    } else if (conversion != 0) {
      return Error(Concat("Unknown conversion specifier ", std::string(1, conversion)));
    }
    absl::StatusOr<std::string> piece = FormatWithSpec(v, spec);
    if (!piece.ok()) return piece.status();
    out += *piece;
  }
  return out;
}

// --- bound methods of str / list / dict

class BoundMethod : public Object {
 public:
  BoundMethod(Value self, std::string name) : self_(std::move(self)), name_(std::move(name)) {}
  std::string TypeName() const override { return "builtin_function_or_method"; }
  bool IsCallable() const override { return true; }
  absl::StatusOr<Value> Call(Renderer& r, CallArgs args) const override;
  std::string Repr() const override {
    return Concat("<built-in method ", name_, " of ", jinja::TypeName(self_), " object>");
  }

 private:
  absl::StatusOr<Value> CallStr(Renderer& r, const std::string& s, const CallArgs& args) const;
  const Value self_;
  const std::string name_;
};

const absl::flat_hash_set<std::string_view>& StrMethods() {
  static const auto* m = new absl::flat_hash_set<std::string_view>{
      "capitalize", "casefold",  "center",     "count",      "endswith",     "find",
      "format",     "index",     "isalnum",    "isalpha",    "isdecimal",    "isdigit",
      "islower",    "isnumeric", "isspace",    "istitle",    "isupper",      "join",
      "ljust",      "lower",     "lstrip",     "partition",  "removeprefix", "removesuffix",
      "replace",    "rfind",     "rindex",     "rjust",      "rpartition",   "rsplit",
      "rstrip",     "split",     "splitlines", "startswith", "strip",        "swapcase",
      "title",      "upper",     "zfill"};
  return *m;
}

absl::StatusOr<std::optional<std::string_view>> OptionalChars(const Value* v,
                                                              std::string_view what) {
  if (!v || v->is_none()) return std::optional<std::string_view>();
  if (!v->is_string()) return Error(Concat(what, " arg must be None or str"));
  return std::optional<std::string_view>(v->string_value());
}

// Python's find with optional start/end, in code points.
int64_t FindCodePoints(const std::string& s, const std::string& sub, bool reverse) {
  const size_t pos = reverse ? s.rfind(sub) : s.find(sub);
  if (pos == std::string::npos) return -1;
  return static_cast<int64_t>(CodePointCount(std::string_view(s).substr(0, pos)));
}

absl::StatusOr<bool> AffixMatch(const std::string& s, const Value& affix, bool prefix) {
  const auto one = [&](const std::string& a) {
    if (a.size() > s.size()) return false;
    return prefix ? s.compare(0, a.size(), a) == 0
                  : s.compare(s.size() - a.size(), a.size(), a) == 0;
  };
  if (affix.is_string()) return one(affix.string_value());
  if (affix.is_tuple()) {
    for (const Value& a : affix.items()) {
      if (!a.is_string()) return Error("tuple for startswith/endswith must only contain str");
      if (one(a.string_value())) return true;
    }
    return false;
  }
  return Error(Concat(prefix ? "startswith" : "endswith",
                      " first arg must be str or a tuple of str, not ", TypeName(affix)));
}

absl::StatusOr<Value> BoundMethod::CallStr(Renderer& r, const std::string& s,
                                           const CallArgs& args) const {
  const std::string what = Concat("str.", name_);
  if (name_ == "format") {
    absl::StatusOr<std::string> out = StrFormat(r, s, args);
    if (!out.ok()) return out.status();
    return Str(std::move(*out));
  }
  if (name_ == "strip" || name_ == "lstrip" || name_ == "rstrip") {
    absl::StatusOr<Args> a = Args::Bind(what, args, {"chars"});
    if (!a.ok()) return a.status();
    absl::StatusOr<std::optional<std::string_view>> chars = OptionalChars(a->Get(0), name_);
    if (!chars.ok()) return chars.status();
    return Str(PyStrip(s, *chars, name_ != "rstrip", name_ != "lstrip"));
  }
  if (name_ == "split" || name_ == "rsplit") {
    absl::StatusOr<Args> a = Args::Bind(what, args, {"sep", "maxsplit"});
    if (!a.ok()) return a.status();
    absl::StatusOr<std::optional<std::string_view>> sep = OptionalChars(a->Get(0), name_);
    if (!sep.ok()) return sep.status();
    if (*sep && (*sep)->empty()) return Error("empty separator");
    absl::StatusOr<int64_t> maxsplit = ToIndex(a->Or(1, Value::Int(-1)), what);
    if (!maxsplit.ok()) return maxsplit.status();
    std::vector<Value> parts;
    for (std::string& p :
         name_ == "split" ? PySplit(s, *sep, *maxsplit) : PyRSplit(s, *sep, *maxsplit)) {
      parts.push_back(Str(std::move(p)));
    }
    return Value::List(std::move(parts));
  }
  if (name_ == "splitlines") {
    absl::StatusOr<Args> a = Args::Bind(what, args, {"keepends"});
    if (!a.ok()) return a.status();
    std::vector<Value> parts;
    for (std::string& p : PySplitLines(s, Truthy(a->Or(0, Value::Bool(false))))) {
      parts.push_back(Str(std::move(p)));
    }
    return Value::List(std::move(parts));
  }
  if (name_ == "startswith" || name_ == "endswith") {
    absl::StatusOr<Args> a = Args::Bind(what, args, {"affix"});
    if (!a.ok()) return a.status();
    if (!a->Get(0)) return Error(Concat(what, "() takes at least 1 argument (0 given)"));
    absl::StatusOr<bool> m = AffixMatch(s, *a->Get(0), name_ == "startswith");
    if (!m.ok()) return m.status();
    return Value::Bool(*m);
  }
  if (name_ == "replace") {
    absl::StatusOr<Args> a = Args::Bind(what, args, {"old", "new", "count"});
    if (!a.ok()) return a.status();
    if (!a->Get(0) || !a->Get(1)) return Error("replace expected at least 2 arguments");
    absl::StatusOr<std::string> old_sub = ToStringArg(*a->Get(0), "replace() argument 1");
    if (!old_sub.ok()) return old_sub.status();
    absl::StatusOr<std::string> new_sub = ToStringArg(*a->Get(1), "replace() argument 2");
    if (!new_sub.ok()) return new_sub.status();
    absl::StatusOr<int64_t> count = ToIndex(a->Or(2, Value::Int(-1)), what);
    if (!count.ok()) return count.status();
    return Str(PyReplace(s, *old_sub, *new_sub, *count));
  }
  if (name_ == "upper") return Str(PyUpper(s));
  if (name_ == "lower" || name_ == "casefold") return Str(PyLower(s));
  if (name_ == "title") return Str(PyTitle(s));
  if (name_ == "capitalize") return Str(PyCapitalize(s));
  if (name_ == "swapcase") return Str(PySwapCase(s));
  if (name_ == "isalpha") return Value::Bool(PyIsAlpha(s));
  if (name_ == "isdigit" || name_ == "isdecimal" || name_ == "isnumeric") {
    return Value::Bool(PyIsDigit(s));
  }
  if (name_ == "isalnum") return Value::Bool(PyIsAlnum(s));
  if (name_ == "isspace") return Value::Bool(PyIsSpaceStr(s));
  if (name_ == "islower") return Value::Bool(PyIsLower(s));
  if (name_ == "isupper") return Value::Bool(PyIsUpper(s));
  if (name_ == "istitle") return Value::Bool(PyTitle(s) == s && PyLower(s) != PyUpper(s));
  if (name_ == "find" || name_ == "rfind" || name_ == "index" || name_ == "rindex" ||
      name_ == "count") {
    absl::StatusOr<Args> a = Args::Bind(what, args, {"sub"});
    if (!a.ok()) return a.status();
    if (!a->Get(0)) return Error(Concat(what, "() takes at least 1 argument (0 given)"));
    absl::StatusOr<std::string> sub = ToStringArg(*a->Get(0), what);
    if (!sub.ok()) return sub.status();
    if (name_ == "count") return Value::Int(PyCount(s, *sub));
    const int64_t pos = FindCodePoints(s, *sub, name_[0] == 'r');
    if (pos < 0 && (name_ == "index" || name_ == "rindex")) return Error("substring not found");
    return Value::Int(pos);
  }
  if (name_ == "join") {
    absl::StatusOr<Args> a = Args::Bind(what, args, {"iterable"});
    if (!a.ok() || !a->Get(0)) return Error("str.join() takes exactly one argument");
    absl::StatusOr<std::vector<Value>> items = Iterate(*a->Get(0));
    if (!items.ok()) return items.status();
    std::string out;
    for (size_t i = 0; i < items->size(); ++i) {
      if (!(*items)[i].is_string()) {
        return Error(Concat("sequence item ", i, ": expected str instance, ",
                            jinja::TypeName((*items)[i]), " found"));
      }
      if (i) out += s;
      out += (*items)[i].string_value();
    }
    return Str(std::move(out));
  }
  if (name_ == "center" || name_ == "ljust" || name_ == "rjust" || name_ == "zfill") {
    absl::StatusOr<Args> a = Args::Bind(what, args, {"width", "fillchar"});
    if (!a.ok()) return a.status();
    if (!a->Get(0)) return Error(Concat(what, "() takes at least 1 argument (0 given)"));
    absl::StatusOr<int64_t> width = ToIndex(*a->Get(0), what);
    if (!width.ok()) return width.status();
    std::string fill = " ";
    if (const Value* f = a->Get(1)) {
      if (!f->is_string() || CodePointCount(f->string_value()) != 1) {
        return Error("The fill character must be exactly one character long");
      }
      fill = f->string_value();
    }
    const auto len = static_cast<int64_t>(CodePointCount(s));
    if (*width <= len) return Str(s);
    const int64_t pad = *width - len;
    const auto repeat = [&](int64_t n, const std::string& f) {
      std::string out;
      for (int64_t i = 0; i < n; ++i) out += f;
      return out;
    };
    if (name_ == "ljust") return Str(s + repeat(pad, fill));
    if (name_ == "rjust") return Str(repeat(pad, fill) + s);
    if (name_ == "zfill") {
      if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
        return Str(s.substr(0, 1) + repeat(pad, "0") + s.substr(1));
      }
      return Str(repeat(pad, "0") + s);
    }
    // CPython's centering puts the odd pad character on the left when the width is odd.
    const int64_t left = pad / 2 + (pad & *width & 1);
    return Str(repeat(left, fill) + s + repeat(pad - left, fill));
  }
  if (name_ == "partition" || name_ == "rpartition") {
    absl::StatusOr<Args> a = Args::Bind(what, args, {"sep"});
    if (!a.ok() || !a->Get(0)) return Error(Concat(what, "() takes exactly one argument"));
    absl::StatusOr<std::string> sep = ToStringArg(*a->Get(0), what);
    if (!sep.ok()) return sep.status();
    if (sep->empty()) return Error("empty separator");
    const size_t pos = name_ == "partition" ? s.find(*sep) : s.rfind(*sep);
    if (pos == std::string::npos) {
      return name_ == "partition" ? Value::Tuple({Str(s), Str(""), Str("")})
                                  : Value::Tuple({Str(""), Str(""), Str(s)});
    }
    return Value::Tuple({Str(s.substr(0, pos)), Str(*sep), Str(s.substr(pos + sep->size()))});
  }
  if (name_ == "removeprefix" || name_ == "removesuffix") {
    absl::StatusOr<Args> a = Args::Bind(what, args, {"affix"});
    if (!a.ok() || !a->Get(0)) return Error(Concat(what, "() takes exactly one argument"));
    absl::StatusOr<std::string> affix = ToStringArg(*a->Get(0), what);
    if (!affix.ok()) return affix.status();
    if (name_ == "removeprefix") {
      return Str(s.compare(0, affix->size(), *affix) == 0 ? s.substr(affix->size()) : s);
    }
    if (affix->size() <= s.size() &&
        s.compare(s.size() - affix->size(), affix->size(), *affix) == 0) {
      return Str(s.substr(0, s.size() - affix->size()));
    }
    return Str(s);
  }
  return Error(Concat("str.", name_, " is not supported"));
}

absl::StatusOr<Value> BoundMethod::Call(Renderer& r, CallArgs args) const {
  if (self_.is_string()) return CallStr(r, self_.string_value(), args);
  if (self_.is_dict()) {
    const Dict& d = self_.dict();
    if (name_ == "get") {
      absl::StatusOr<Args> a = Args::Bind("dict.get", args, {"key", "default"});
      if (!a.ok()) return a.status();
      if (!a->Get(0)) return Error("get expected at least 1 argument, got 0");
      absl::StatusOr<const Value*> found = d.Find(*a->Get(0));
      if (!found.ok()) return found.status();
      if (*found) return **found;
      return a->Or(1, Value::None());
    }
    if (!args.positional.empty() || !args.keyword.empty()) {
      return Error(Concat("dict.", name_, "() takes no arguments"));
    }
    std::vector<Value> out;
    for (const auto& [k, v] : d.items()) {
      if (name_ == "keys") {
        out.push_back(k);
      } else if (name_ == "values") {
        out.push_back(v);
      } else if (name_ == "items") {
        out.push_back(Value::Tuple({k, v}));
      }
    }
    if (name_ == "copy") return self_;
    return Value::List(std::move(out));
  }
  // list / tuple
  const auto& items = self_.items();
  if (name_ == "count" || name_ == "index") {
    if (args.positional.size() != 1) {
      return Error(Concat(name_, "() takes exactly one argument"));
    }
    int64_t count = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      if (Equals(items[i], args.positional[0])) {
        if (name_ == "index") return Value::Int(static_cast<int64_t>(i));
        ++count;
      }
    }
    if (name_ == "index") return Error(Concat(jinja::Repr(args.positional[0]), " is not in list"));
    return Value::Int(count);
  }
  if (name_ == "copy") return Value::List(items);
  return Error(Concat(jinja::TypeName(self_), ".", name_, " is not supported"));
}

// --- filters

absl::StatusOr<Value> FilterAbs(Renderer&, const Value& v, const CallArgs& args) {
  if (!args.positional.empty() || !args.keyword.empty()) return Error("abs() takes no arguments");
  if (v.is_integral()) {
    const int64_t i = v.integral_value();
    if (i == std::numeric_limits<int64_t>::min()) return Error("integer overflow");
    return Value::Int(i < 0 ? -i : i);
  }
  if (v.is_float()) return Value::Float(std::fabs(v.float_value()));
  if (v.is_undefined()) return Error(v.undefined_message());
  return Error(Concat("bad operand type for abs(): '", TypeName(v), "'"));
}

absl::StatusOr<Value> FilterAttr(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("attr", args, {"name"});
  if (!a.ok()) return a.status();
  if (!a->Get(0) || !a->Get(0)->is_string()) return Error("attr() needs an attribute name");
  const std::string& name = a->Get(0)->string_value();
  // Unlike `obj.name`, no fallback to obj[name]: dict keys are not attributes.
  if (v.is_undefined()) return Error(v.undefined_message());
  if (v.is_object()) {
    if (std::optional<Value> attr = v.object()->GetAttr(name)) return *attr;
  } else if (std::optional<Value> method = LookupMethod(v, name)) {
    return *method;
  }
  return Value::Undefined(
      Concat(PyReprString(ObjectTypeRepr(v)), " has no attribute ", PyReprString(name)));
}

absl::StatusOr<Value> FilterBatch(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("batch", args, {"linecount", "fill_with"});
  if (!a.ok()) return a.status();
  if (!a->Get(0)) return Error("batch() missing required argument 'linecount'");
  absl::StatusOr<int64_t> n = ToIndex(*a->Get(0), "batch");
  if (!n.ok()) return n.status();
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return items.status();
  std::vector<Value> batches;
  std::vector<Value> current;
  for (Value& item : *items) {
    if (static_cast<int64_t>(current.size()) == *n) {
      batches.push_back(Value::List(std::move(current)));
      current.clear();
    }
    current.push_back(std::move(item));
  }
  if (!current.empty()) {
    const Value* fill = a->Get(1);
    if (fill && !fill->is_none()) {
      while (static_cast<int64_t>(current.size()) < *n) current.push_back(*fill);
    }
    batches.push_back(Value::List(std::move(current)));
  }
  return Value::Generator(std::move(batches));
}

absl::StatusOr<Value> FilterCapitalize(Renderer&, const Value& v, const CallArgs&) {
  return Str(PyCapitalize(ToStr(v)));
}

absl::StatusOr<Value> FilterCenter(Renderer& r, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("center", args, {"width"});
  if (!a.ok()) return a.status();
  CallArgs call;
  call.positional.push_back(a->Or(0, Value::Int(80)));
  return BoundMethod(Str(ToStr(v)), "center").Call(r, call);
}

absl::StatusOr<Value> FilterLength(Renderer&, const Value& v, const CallArgs&) {
  absl::StatusOr<int64_t> n = Length(v);
  if (!n.ok()) return n.status();
  return Value::Int(*n);
}

absl::StatusOr<Value> FilterDefault(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("default", args, {"default_value", "boolean"});
  if (!a.ok()) return a.status();
  const bool boolean = Truthy(a->Or(1, Value::Bool(false)));
  if (v.is_undefined() || (boolean && !Truthy(v))) return a->Or(0, Str(""));
  return v;
}

absl::StatusOr<Value> FilterDictsort(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("dictsort", args, {"case_sensitive", "by", "reverse"});
  if (!a.ok()) return a.status();
  if (!v.is_dict()) return Error(Concat("'", TypeName(v), "' object has no attribute 'items'"));
  const bool case_sensitive = Truthy(a->Or(0, Value::Bool(false)));
  const Value by = a->Or(1, Str("key"));
  if (!by.is_string() || (by.string_value() != "key" && by.string_value() != "value")) {
    return Error("You can only sort by either \"key\" or \"value\"");
  }
  const bool by_value = by.string_value() == "value";
  std::vector<Value> keys;
  std::vector<size_t> order;
  for (const auto& [k, val] : v.dict().items()) {
    const Value& key = by_value ? val : k;
    keys.push_back(case_sensitive ? key : IgnoreCase(key));
    order.push_back(order.size());
  }
  if (absl::Status s = SortValues(&keys, &order, Truthy(a->Or(2, Value::Bool(false)))); !s.ok()) {
    return s;
  }
  std::vector<Value> out;
  for (size_t i : order) {
    const auto& [k, val] = v.dict().items()[i];
    out.push_back(Value::Tuple({k, val}));
  }
  return Value::List(std::move(out));
}

absl::StatusOr<Value> FilterEscape(Renderer&, const Value& v, const CallArgs&) {
  std::string out;
  for (char c : ToStr(v)) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return Str(std::move(out));
}

absl::StatusOr<Value> FilterFirst(Renderer&, const Value& v, const CallArgs&) {
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return items.status();
  if (items->empty()) return Value::Undefined("No first item, sequence was empty.");
  return (*items)[0];
}

absl::StatusOr<Value> FilterLast(Renderer&, const Value& v, const CallArgs&) {
  if (v.is_generator()) return Error("'generator' object is not reversible");
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return items.status();
  if (items->empty()) return Value::Undefined("No last item, sequence was empty.");
  return items->back();
}

// Python float(str): whitespace around, underscores between digits, inf/nan spellings.
std::optional<double> ParsePyFloat(const std::string& text) {
  std::string s = PyStrip(text, std::nullopt, true, true);
  std::string clean;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_') {
      if (i == 0 || i + 1 >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i - 1])) ||
          !std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
        return std::nullopt;
      }
      continue;
    }
    clean.push_back(s[i]);
  }
  if (clean.empty()) return std::nullopt;
  std::string lower = PyLower(clean);
  std::string_view body = lower;
  double sign = 1;
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) {
    sign = body[0] == '-' ? -1 : 1;
    body.remove_prefix(1);
  }
  if (body == "inf" || body == "infinity") return sign * HUGE_VAL;
  if (body == "nan") return std::nan("");
  for (char c : body) {
    if (!std::isdigit(static_cast<unsigned char>(c)) && c != '.' && c != 'e' && c != '+' &&
        c != '-') {
      return std::nullopt;
    }
  }
  char* end = nullptr;
  errno = 0;
  const double d = std::strtod(clean.c_str(), &end);
  if (end != clean.c_str() + clean.size()) return std::nullopt;
  return d;
}

absl::StatusOr<Value> FilterFloat(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("float", args, {"default"});
  if (!a.ok()) return a.status();
  if (v.is_undefined()) return Error(v.undefined_message());
  if (v.is_number()) return Value::Float(v.number_as_double());
  if (v.is_string()) {
    if (std::optional<double> d = ParsePyFloat(v.string_value())) return Value::Float(*d);
  }
  return a->Or(0, Value::Float(0.0));
}

absl::StatusOr<Value> FilterInt(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("int", args, {"default", "base"});
  if (!a.ok()) return a.status();
  if (v.is_undefined()) return Error(v.undefined_message());
  const Value dflt = a->Or(0, Value::Int(0));
  if (v.is_integral()) return Value::Int(v.integral_value());
  if (v.is_float()) {
    const double f = v.float_value();
    if (std::isnan(f) || std::isinf(f)) return dflt;
    if (std::fabs(f) >= 9.2e18) {
      return Error("int: value too large (Python ints are unbounded; tessera uses int64)");
    }
    return Value::Int(static_cast<int64_t>(f));
  }
  if (v.is_string()) {
    absl::StatusOr<int64_t> base = ToIndex(a->Or(1, Value::Int(10)), "int");
    if (!base.ok()) return base.status();
    std::string s = PyStrip(v.string_value(), std::nullopt, true, true);
    std::string clean;
    for (char c : s) {
      if (c != '_') clean.push_back(c);
    }
    int b = static_cast<int>(*base);
    std::string_view digits = clean;
    bool negative = false;
    if (!digits.empty() && (digits[0] == '+' || digits[0] == '-')) {
      negative = digits[0] == '-';
      digits.remove_prefix(1);
    }
    if (digits.size() > 2 && digits[0] == '0') {
      const char p = static_cast<char>(digits[1] | 0x20);
      const int prefixed = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
      if (prefixed && (b == prefixed || b == 0)) {
        b = prefixed;
        digits.remove_prefix(2);
      }
    }
    if (b == 0) b = 10;
    if (!digits.empty() && b >= 2 && b <= 36) {
      char* end = nullptr;
      const std::string d(digits);
      errno = 0;
      const long long value = std::strtoll(d.c_str(), &end, b);
      if (end == d.c_str() + d.size() && errno == 0 && d[0] != '+' && d[0] != '-' && d[0] != ' ') {
        return Value::Int(negative ? -value : value);
      }
    }
    // jinja2: "42.23"|int gives 42 through float().
    if (std::optional<double> f = ParsePyFloat(v.string_value())) {
      if (!std::isnan(*f) && !std::isinf(*f) && std::fabs(*f) < 9.2e18) {
        return Value::Int(static_cast<int64_t>(*f));
      }
    }
    return dflt;
  }
  return dflt;
}

absl::StatusOr<Value> FilterFormat(Renderer&, const Value& v, const CallArgs& args) {
  if (!args.positional.empty() && !args.keyword.empty()) {
    return Error("can't handle positional and keyword arguments at the same time");
  }
  Value fmt_args;
  if (!args.keyword.empty()) {
    Dict d;
    for (const auto& [k, val] : args.keyword) d.SetString(k, val);
    fmt_args = Value::FromDict(std::move(d));
  } else {
    fmt_args = Value::Tuple(args.positional);
  }
  absl::StatusOr<std::string> s = PercentFormat(ToStr(v), fmt_args);
  if (!s.ok()) return s.status();
  return Str(std::move(*s));
}

absl::StatusOr<Value> FilterIndent(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("indent", args, {"width", "first", "blank"});
  if (!a.ok()) return a.status();
  const Value width = a->Or(0, Value::Int(4));
  std::string indention;
  if (width.is_string()) {
    indention = width.string_value();
  } else if (width.is_integral()) {
    indention = std::string(static_cast<size_t>(std::max<int64_t>(0, width.integral_value())), ' ');
  } else {
    return Error(Concat("can't multiply sequence by non-int of type '", TypeName(width), "'"));
  }
  const bool first = Truthy(a->Or(1, Value::Bool(false)));
  const bool blank = Truthy(a->Or(2, Value::Bool(false)));
  const std::string s = ToStr(v) + "\n";
  const std::vector<std::string> lines = PySplitLines(s, false);
  std::string rv;
  if (blank) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i) rv += "\n" + indention;
      rv += lines[i];
    }
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) {
      rv += "\n";
      if (!lines[i].empty()) rv += indention;
      rv += lines[i];
    }
  }
  if (first) rv = indention + rv;
  return Str(std::move(rv));
}

absl::StatusOr<Value> FilterJoin(Renderer& r, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("join", args, {"d", "attribute"});
  if (!a.ok()) return a.status();
  const std::string sep = ToStr(a->Or(0, Str("")));
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return items.status();
  const Value* attribute = a->Get(1);
  const std::vector<Value> parts = attribute ? AttributeParts(*attribute) : std::vector<Value>{};
  std::string out;
  for (size_t i = 0; i < items->size(); ++i) {
    Value item = (*items)[i];
    if (attribute && !attribute->is_none()) {
      absl::StatusOr<Value> looked = LookupPath(r, item, parts, nullptr);
      if (!looked.ok()) return looked.status();
      item = std::move(*looked);
    }
    if (i) out += sep;
    out += ToStr(item);
  }
  return Str(std::move(out));
}

absl::StatusOr<Value> FilterList(Renderer&, const Value& v, const CallArgs&) {
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return items.status();
  return Value::List(std::move(*items));
}

absl::StatusOr<Value> FilterLower(Renderer&, const Value& v, const CallArgs&) {
  return Str(PyLower(ToStr(v)));
}

absl::StatusOr<Value> FilterUpper(Renderer&, const Value& v, const CallArgs&) {
  return Str(PyUpper(ToStr(v)));
}

absl::StatusOr<Value> FilterItems(Renderer&, const Value& v, const CallArgs&) {
  if (v.is_undefined()) return Value::Generator({});
  if (!v.is_dict()) return Error("Can only get item pairs from a mapping.");
  std::vector<Value> out;
  for (const auto& [k, val] : v.dict().items()) out.push_back(Value::Tuple({k, val}));
  return Value::Generator(std::move(out));
}

absl::StatusOr<Value> FilterMap(Renderer& r, const Value& v, const CallArgs& args) {
  if (!Truthy(v)) return Value::Generator({});
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return items.status();
  std::vector<Value> out;
  if (args.positional.empty() && !args.keyword.empty() && args.keyword[0].first == "attribute") {
    Value attribute;
    std::optional<Value> dflt;
    for (const auto& [k, val] : args.keyword) {
      if (k == "attribute") {
        attribute = val;
      } else if (k == "default") {
        dflt = val;
      } else {
        return Error(Concat("Unexpected keyword argument '", k, "'"));
      }
    }
    const std::vector<Value> parts = AttributeParts(attribute);
    for (const Value& item : *items) {
      absl::StatusOr<Value> looked = LookupPath(r, item, parts, dflt ? &*dflt : nullptr);
      if (!looked.ok()) return looked.status();
      out.push_back(std::move(*looked));
    }
    return Value::Generator(std::move(out));
  }
  bool has_attribute_kw = false;
  for (const auto& [k, unused] : args.keyword) has_attribute_kw |= k == "attribute";
  if (args.positional.empty()) {
    return Error(has_attribute_kw ? "Unexpected keyword argument"
                                  : "map requires a filter argument");
  }
  if (!args.positional[0].is_string()) return Error("map requires a filter name");
  CallArgs rest;
  rest.positional.assign(args.positional.begin() + 1, args.positional.end());
  rest.keyword = args.keyword;
  for (const Value& item : *items) {
    absl::StatusOr<Value> mapped = r.ApplyFilter(args.positional[0].string_value(), item, rest);
    if (!mapped.ok()) return mapped.status();
    out.push_back(std::move(*mapped));
  }
  return Value::Generator(std::move(out));
}

absl::StatusOr<Value> MinMax(Renderer& r, const Value& v, const CallArgs& args, bool max) {
  absl::StatusOr<Args> a = Args::Bind(max ? "max" : "min", args, {"case_sensitive", "attribute"});
  if (!a.ok()) return a.status();
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return items.status();
  if (items->empty()) return Value::Undefined("No aggregated item, sequence was empty.");
  const bool case_sensitive = Truthy(a->Or(0, Value::Bool(false)));
  const Value attribute = a->Or(1, Value::None());
  const std::vector<Value> parts = AttributeParts(attribute);
  std::vector<Value> keys;
  for (const Value& item : *items) {
    absl::StatusOr<Value> key = LookupPath(r, item, parts, nullptr);
    if (!key.ok()) return key.status();
    keys.push_back(case_sensitive ? *key : IgnoreCase(*key));
  }
  size_t best = 0;
  for (size_t i = 1; i < items->size(); ++i) {
    absl::StatusOr<bool> better = max ? Less(keys[best], keys[i]) : Less(keys[i], keys[best]);
    if (!better.ok()) return better.status();
    if (*better) best = i;
  }
  return (*items)[best];
}

absl::StatusOr<Value> FilterMin(Renderer& r, const Value& v, const CallArgs& args) {
  return MinMax(r, v, args, false);
}
absl::StatusOr<Value> FilterMax(Renderer& r, const Value& v, const CallArgs& args) {
  return MinMax(r, v, args, true);
}

absl::StatusOr<Value> SelectOrReject(Renderer& r, const Value& v, const CallArgs& args,
                                     bool lookup_attr, bool select) {
  if (!Truthy(v)) return Value::Generator({});
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return items.status();
  size_t off = 0;
  std::vector<Value> parts;
  if (lookup_attr) {
    if (args.positional.empty()) return Error("Missing parameter for attribute name");
    parts = AttributeParts(args.positional[0]);
    off = 1;
  }
  std::optional<std::string> test;
  CallArgs test_args;
  if (args.positional.size() > off) {
    if (!args.positional[off].is_string()) return Error("test name must be a string");
    test = args.positional[off].string_value();
    test_args.positional.assign(args.positional.begin() + static_cast<long>(off) + 1,
                                args.positional.end());
    test_args.keyword = args.keyword;
  }
  std::vector<Value> out;
  for (const Value& item : *items) {
    absl::StatusOr<Value> probe = LookupPath(r, item, parts, nullptr);
    if (!probe.ok()) return probe.status();
    bool ok;
    if (test) {
      absl::StatusOr<bool> t = r.ApplyTest(*test, *probe, test_args);
      if (!t.ok()) return t.status();
      ok = *t;
    } else {
      ok = Truthy(*probe);
    }
    if (ok == select) out.push_back(item);
  }
  return Value::Generator(std::move(out));
}

absl::StatusOr<Value> FilterSelect(Renderer& r, const Value& v, const CallArgs& args) {
  return SelectOrReject(r, v, args, false, true);
}
absl::StatusOr<Value> FilterReject(Renderer& r, const Value& v, const CallArgs& args) {
  return SelectOrReject(r, v, args, false, false);
}
absl::StatusOr<Value> FilterSelectAttr(Renderer& r, const Value& v, const CallArgs& args) {
  return SelectOrReject(r, v, args, true, true);
}
absl::StatusOr<Value> FilterRejectAttr(Renderer& r, const Value& v, const CallArgs& args) {
  return SelectOrReject(r, v, args, true, false);
}

absl::StatusOr<Value> FilterReplace(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("replace", args, {"old", "new", "count"});
  if (!a.ok()) return a.status();
  if (!a->Get(0) || !a->Get(1)) return Error("replace() missing required arguments");
  const Value count = a->Or(2, Value::None());
  int64_t n = -1;
  if (!count.is_none()) {
    absl::StatusOr<int64_t> c = ToIndex(count, "replace");
    if (!c.ok()) return c.status();
    n = *c;
  }
  return Str(PyReplace(ToStr(v), ToStr(*a->Get(0)), ToStr(*a->Get(1)), n));
}

absl::StatusOr<Value> FilterReverse(Renderer&, const Value& v, const CallArgs&) {
  if (v.is_string()) {
    std::u32string u = DecodeUtf8(v.string_value());
    std::reverse(u.begin(), u.end());
    return Str(EncodeUtf8(u));
  }
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return Error("argument must be iterable");
  std::reverse(items->begin(), items->end());
  // reversed() of a list is an iterator; a generator is first turned into a list.
  if (v.is_generator()) return Value::List(std::move(*items));
  return Value::Generator(std::move(*items));
}

absl::StatusOr<Value> FilterRound(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("round", args, {"precision", "method"});
  if (!a.ok()) return a.status();
  absl::StatusOr<int64_t> precision = ToIndex(a->Or(0, Value::Int(0)), "round");
  if (!precision.ok()) return precision.status();
  const Value method = a->Or(1, Str("common"));
  if (!method.is_string() ||
      (method.string_value() != "common" && method.string_value() != "ceil" &&
       method.string_value() != "floor")) {
    return Error("method must be common, ceil or floor");
  }
  if (v.is_undefined()) return Error(v.undefined_message());
  if (!v.is_number()) {
    return Error(Concat("type ", TypeName(v), " doesn't define __round__ method"));
  }
  if (method.string_value() == "common") {
    if (v.is_integral()) {
      if (*precision >= 0) return Value::Int(v.integral_value());
      const double scale = std::pow(10.0, static_cast<double>(-*precision));
      return Value::Int(static_cast<int64_t>(std::nearbyint(v.integral_value() / scale) * scale));
    }
    const double d = v.float_value();
    if (std::isnan(d) || std::isinf(d)) return Value::Float(d);
    if (*precision >= 0 && *precision < 300) {
      // printf rounds the exact binary value half-to-even, as CPython's round() does.
      char buf[512];
      std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(*precision), d);
      return Value::Float(std::strtod(buf, nullptr));
    }
    const double scale = std::pow(10.0, static_cast<double>(-*precision));
    return Value::Float(std::nearbyint(d / scale) * scale);
  }
  const double scale = std::pow(10.0, static_cast<double>(*precision));
  const double x = v.number_as_double() * scale;
  const double rounded = method.string_value() == "ceil" ? std::ceil(x) : std::floor(x);
  return Value::Float(rounded / scale);
}

absl::StatusOr<Value> FilterSafe(Renderer&, const Value& v, const CallArgs&) {
  return Str(ToStr(v));
}

absl::StatusOr<Value> FilterSort(Renderer& r, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("sort", args, {"reverse", "case_sensitive", "attribute"});
  if (!a.ok()) return a.status();
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return items.status();
  const bool case_sensitive = Truthy(a->Or(1, Value::Bool(false)));
  const Value attribute = a->Or(2, Value::None());
  std::vector<std::vector<Value>> attr_parts;
  if (attribute.is_string()) {
    for (const std::string& one : PySplit(attribute.string_value(), ",", -1)) {
      attr_parts.push_back(AttributeParts(Str(one)));
    }
  } else {
    attr_parts.push_back(AttributeParts(attribute));
  }
  std::vector<Value> keys;
  std::vector<size_t> order;
  for (const Value& item : *items) {
    std::vector<Value> key_parts;
    for (const auto& parts : attr_parts) {
      absl::StatusOr<Value> key = LookupPath(r, item, parts, nullptr);
      if (!key.ok()) return key.status();
      key_parts.push_back(case_sensitive ? *key : IgnoreCase(*key));
    }
    keys.push_back(Value::List(std::move(key_parts)));
    order.push_back(order.size());
  }
  if (absl::Status s = SortValues(&keys, &order, Truthy(a->Or(0, Value::Bool(false)))); !s.ok()) {
    return s;
  }
  std::vector<Value> out;
  for (size_t i : order) out.push_back((*items)[i]);
  return Value::List(std::move(out));
}

absl::StatusOr<Value> FilterString(Renderer&, const Value& v, const CallArgs&) {
  return v.is_string() ? v : Str(ToStr(v));
}

absl::StatusOr<Value> FilterSum(Renderer& r, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("sum", args, {"attribute", "start"});
  if (!a.ok()) return a.status();
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return items.status();
  const std::vector<Value> parts = AttributeParts(a->Or(0, Value::None()));
  Value total = a->Or(1, Value::Int(0));
  for (const Value& item : *items) {
    absl::StatusOr<Value> x = LookupPath(r, item, parts, nullptr);
    if (!x.ok()) return x.status();
    if (total.is_string()) return Error("sum() can't sum strings [use ''.join(seq) instead]");
    if (total.is_integral() && x->is_integral()) {
      int64_t s;
      if (__builtin_add_overflow(total.integral_value(), x->integral_value(), &s)) {
        return Error("integer overflow");
      }
      total = Value::Int(s);
    } else if (total.is_number() && x->is_number()) {
      total = Value::Float(total.number_as_double() + x->number_as_double());
    } else if (total.is_list() && x->is_list()) {
      std::vector<Value> joined = total.items();
      joined.insert(joined.end(), x->items().begin(), x->items().end());
      total = Value::List(std::move(joined));
    } else {
      if (x->is_undefined()) return Error(x->undefined_message());
      return Error(Concat("unsupported operand type(s) for +: '", TypeName(total), "' and '",
                          TypeName(*x), "'"));
    }
  }
  return total;
}

// Jinja's title: split at runs of whitespace, '-', '(', '{', '[' and '<'; uppercase the first
// character of each piece and lowercase the rest.
absl::StatusOr<Value> FilterTitle(Renderer&, const Value& v, const CallArgs&) {
  const std::u32string u = DecodeUtf8(ToStr(v));
  const auto is_sep = [](char32_t c) {
    return PyIsSpace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
  };
  std::string out;
  size_t i = 0;
  while (i < u.size()) {
    size_t j = i;
    const bool sep = is_sep(u[i]);
    while (j < u.size() && is_sep(u[j]) == sep) ++j;
    const std::string piece = EncodeUtf8(u.substr(i, j - i));
    if (sep) {
      out += piece;
    } else {
      std::string first;
      AppendUtf8(u[i], &first);
      out += PyUpper(first) + PyLower(EncodeUtf8(u.substr(i + 1, j - i - 1)));
    }
    i = j;
  }
  return Str(std::move(out));
}

absl::StatusOr<Value> FilterTrim(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("trim", args, {"chars"});
  if (!a.ok()) return a.status();
  absl::StatusOr<std::optional<std::string_view>> chars = OptionalChars(a->Get(0), "strip");
  if (!chars.ok()) return chars.status();
  return Str(PyStrip(ToStr(v), *chars, true, true));
}

absl::StatusOr<Value> FilterTruncate(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("truncate", args, {"length", "killwords", "end", "leeway"});
  if (!a.ok()) return a.status();
  absl::StatusOr<int64_t> length = ToIndex(a->Or(0, Value::Int(255)), "truncate");
  if (!length.ok()) return length.status();
  const bool killwords = Truthy(a->Or(1, Value::Bool(false)));
  const std::string end = ToStr(a->Or(2, Str("...")));
  absl::StatusOr<int64_t> leeway = ToIndex(a->Or(3, Value::Int(5)), "truncate");
  if (!leeway.ok()) return leeway.status();
  const std::u32string s = DecodeUtf8(ToStr(v));
  const auto end_len = static_cast<int64_t>(CodePointCount(end));
  if (*length < end_len) return Error(Concat("expected length >= ", end_len, ", got ", *length));
  if (static_cast<int64_t>(s.size()) <= *length + *leeway) return Str(EncodeUtf8(s));
  const std::string head = EncodeUtf8(s.substr(0, static_cast<size_t>(*length - end_len)));
  if (killwords) return Str(head + end);
  const std::vector<std::string> parts = PyRSplit(head, " ", 1);
  return Str(parts[0] + end);
}

absl::StatusOr<Value> FilterUnique(Renderer& r, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("unique", args, {"case_sensitive", "attribute"});
  if (!a.ok()) return a.status();
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return items.status();
  const bool case_sensitive = Truthy(a->Or(0, Value::Bool(false)));
  const std::vector<Value> parts = AttributeParts(a->Or(1, Value::None()));
  absl::flat_hash_set<std::string> seen;
  std::vector<Value> out;
  for (const Value& item : *items) {
    absl::StatusOr<Value> key = LookupPath(r, item, parts, nullptr);
    if (!key.ok()) return key.status();
    absl::StatusOr<std::string> hash = HashKey(case_sensitive ? *key : IgnoreCase(*key));
    if (!hash.ok()) return hash.status();
    if (seen.insert(*hash).second) out.push_back(item);
  }
  return Value::Generator(std::move(out));
}

absl::StatusOr<Value> FilterWordcount(Renderer&, const Value& v, const CallArgs&) {
  int64_t n = 0;
  bool in_word = false;
  for (char32_t c : DecodeUtf8(ToStr(v))) {
    const bool w = PyIsWordChar(c);
    if (w && !in_word) ++n;
    in_word = w;
  }
  return Value::Int(n);
}

absl::StatusOr<Value> FilterToJson(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a =
      Args::Bind("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"});
  if (!a.ok()) return a.status();
  JsonDumpsOptions options;
  options.ensure_ascii = Truthy(a->Or(0, Value::Bool(false)));
  const Value indent = a->Or(1, Value::None());
  if (indent.is_string()) {
    options.indent = indent.string_value();
  } else if (indent.is_integral()) {
    options.indent =
        std::string(static_cast<size_t>(std::max<int64_t>(0, indent.integral_value())), ' ');
  } else if (!indent.is_none()) {
    return Error(Concat("indent must be an int or a str, not ", TypeName(indent)));
  }
  const Value separators = a->Or(2, Value::None());
  if (!separators.is_none()) {
    absl::StatusOr<std::vector<Value>> seps = Iterate(separators);
    if (!seps.ok() || seps->size() != 2 || !(*seps)[0].is_string() || !(*seps)[1].is_string()) {
      return Error("separators must be a pair of strings");
    }
    options.item_separator = (*seps)[0].string_value();
    options.key_separator = (*seps)[1].string_value();
  }
  options.sort_keys = Truthy(a->Or(3, Value::Bool(false)));
  absl::StatusOr<std::string> s = PyJsonDumps(v, options);
  if (!s.ok()) return s.status();
  return Str(std::move(*s));
}

absl::StatusOr<Value> FilterPprint(Renderer&, const Value& v, const CallArgs&) {
  return Str(Repr(v));
}

absl::StatusOr<Value> FilterSlice(Renderer&, const Value& v, const CallArgs& args) {
  absl::StatusOr<Args> a = Args::Bind("slice", args, {"slices", "fill_with"});
  if (!a.ok()) return a.status();
  if (!a->Get(0)) return Error("slice() missing required argument 'slices'");
  absl::StatusOr<int64_t> slices = ToIndex(*a->Get(0), "slice");
  if (!slices.ok()) return slices.status();
  if (*slices <= 0) return Error("slices must be positive");
  absl::StatusOr<std::vector<Value>> items = Iterate(v);
  if (!items.ok()) return items.status();
  const auto n = static_cast<int64_t>(items->size());
  const int64_t per = n / *slices;
  const int64_t with_extra = n % *slices;
  const Value* fill = a->Get(1);
  std::vector<Value> out;
  int64_t offset = 0;
  for (int64_t i = 0; i < *slices; ++i) {
    const int64_t start = offset + i * per;
    if (i < with_extra) ++offset;
    const int64_t end = offset + (i + 1) * per;
    std::vector<Value> part(items->begin() + start, items->begin() + end);
    if (fill && !fill->is_none() && i >= with_extra) part.push_back(*fill);
    out.push_back(Value::List(std::move(part)));
  }
  return Value::Generator(std::move(out));
}

const absl::flat_hash_map<std::string_view, FilterFn>& Filters() {
  static const auto* filters = new absl::flat_hash_map<std::string_view, FilterFn>{
      {"abs", FilterAbs},
      {"attr", FilterAttr},
      {"batch", FilterBatch},
      {"capitalize", FilterCapitalize},
      {"center", FilterCenter},
      {"count", FilterLength},
      {"d", FilterDefault},
      {"default", FilterDefault},
      {"dictsort", FilterDictsort},
      {"e", FilterEscape},
      {"escape", FilterEscape},
      {"first", FilterFirst},
      {"float", FilterFloat},
      {"format", FilterFormat},
      {"indent", FilterIndent},
      {"int", FilterInt},
      {"items", FilterItems},
      {"join", FilterJoin},
      {"last", FilterLast},
      {"length", FilterLength},
      {"list", FilterList},
      {"lower", FilterLower},
      {"map", FilterMap},
      {"max", FilterMax},
      {"min", FilterMin},
      {"pprint", FilterPprint},
      {"reject", FilterReject},
      {"rejectattr", FilterRejectAttr},
      {"replace", FilterReplace},
      {"reverse", FilterReverse},
      {"round", FilterRound},
      {"safe", FilterSafe},
      {"select", FilterSelect},
      {"selectattr", FilterSelectAttr},
      {"slice", FilterSlice},
      {"sort", FilterSort},
      {"string", FilterString},
      {"sum", FilterSum},
      {"title", FilterTitle},
      {"tojson", FilterToJson},
      {"trim", FilterTrim},
      {"truncate", FilterTruncate},
      {"unique", FilterUnique},
      {"upper", FilterUpper},
      {"wordcount", FilterWordcount},
  };
  return *filters;
}

// --- tests

absl::StatusOr<Value> TestArg(const CallArgs& args, std::string_view name) {
  if (args.positional.size() != 1 || !args.keyword.empty()) {
    return Error(Concat("test '", name, "' takes exactly one argument"));
  }
  return args.positional[0];
}

absl::StatusOr<bool> IntTest(const Value& v, std::string_view name) {
  if (v.is_undefined()) return Error(v.undefined_message());
  if (!v.is_number()) {
    return Error(Concat("unsupported operand type(s) for %: '", TypeName(v), "' and 'int'"));
  }
  if (v.is_float()) return std::fmod(v.float_value(), 2.0) == (name == "odd" ? 1.0 : 0.0);
  const int64_t m = ((v.integral_value() % 2) + 2) % 2;
  return name == "odd" ? m == 1 : m == 0;
}

absl::StatusOr<bool> OpCompare(std::string_view op, const Value& a, const CallArgs& args) {
  absl::StatusOr<Value> b = TestArg(args, op);
  if (!b.ok()) return b.status();
  if (op == "==") return Equals(a, *b);
  if (op == "!=") return !Equals(a, *b);
  const bool swap = op == ">" || op == ">=";
  absl::StatusOr<bool> less = swap ? Less(*b, a) : Less(a, *b);
  if (!less.ok()) return less.status();
  if (op == "<" || op == ">") return *less;
  return *less || Equals(a, *b);
}

const absl::flat_hash_map<std::string_view, TestFn>& Tests() {
  static const auto* tests = new absl::flat_hash_map<std::string_view, TestFn>{
      {"odd", [](Renderer&, const Value& v, const CallArgs&) { return IntTest(v, "odd"); }},
      {"even", [](Renderer&, const Value& v, const CallArgs&) { return IntTest(v, "even"); }},
      {"divisibleby",
       [](Renderer&, const Value& v, const CallArgs& args) -> absl::StatusOr<bool> {
         absl::StatusOr<Value> n = TestArg(args, "divisibleby");
         if (!n.ok()) return n.status();
         absl::StatusOr<Value> m = [&]() -> absl::StatusOr<Value> {
           if (!v.is_number() || !n->is_number()) return Error("divisibleby needs numbers");
           if (n->number_as_double() == 0) return Error("integer division or modulo by zero");
           if (v.is_integral() && n->is_integral()) {
             return Value::Int(v.integral_value() % n->integral_value());
           }
           return Value::Float(std::fmod(v.number_as_double(), n->number_as_double()));
         }();
         if (!m.ok()) return m.status();
         return m->number_as_double() == 0;
       }},
      {"defined",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return !v.is_undefined();
       }},
      {"undefined",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_undefined();
       }},
      {"filter",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_string() && FindFilter(v.string_value()) != nullptr;
       }},
      {"test",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_string() && FindTest(v.string_value()) != nullptr;
       }},
      {"none",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_none();
       }},
      {"boolean",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_bool();
       }},
      {"false",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_bool() && !v.bool_value();
       }},
      {"true",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_bool() && v.bool_value();
       }},
      {"integer",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_int();
       }},
      {"float",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_float();
       }},
      {"lower",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return PyIsLower(ToStr(v));
       }},
      {"upper",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return PyIsUpper(ToStr(v));
       }},
      {"string",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_string();
       }},
      {"mapping",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_dict();
       }},
      {"number",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_number();
       }},
      // Python: len() and __getitem__ both exist. Undefined has both; generators neither.
      {"sequence",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_undefined() || v.is_string() || v.is_list() || v.is_tuple() || v.is_dict();
       }},
      {"iterable",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_undefined() || v.is_string() || v.is_list() || v.is_tuple() || v.is_dict() ||
                v.is_generator();
       }},
      {"callable",
       [](Renderer&, const Value& v, const CallArgs&) -> absl::StatusOr<bool> {
         return v.is_object() && v.object()->IsCallable();
       }},
      {"sameas",
       [](Renderer&, const Value& v,
          const CallArgs& args) -> absl::
                                    StatusOr<bool> {
                                      absl::StatusOr<Value> other = TestArg(args, "sameas");
                                      if (!other.ok()) return other.status();
                                      if (v.kind() != other->kind()) return false;
                                      switch (v.kind()) {
                                        case Value::Kind::kNone:
                                        case Value::Kind::kUndefined:
                                          return v.is_none() || v.identity() == other->identity();
                                        case Value::Kind::kBool:
                                          return v.bool_value() == other->bool_value();
                                        case Value::Kind::kInt:  // CPython caches small ints
                                          return v.int_value() == other->int_value() &&
                                                 v.int_value() >= -5 && v.int_value() <= 256;
                                        default:
                                          return v.identity() != nullptr &&
                                                 v.identity() == other->identity();
                                      }
                                    }},
      {"escaped",
       [](Renderer&, const Value&, const CallArgs&) -> absl::StatusOr<bool> { return false; }},
      {"in",
       [](Renderer&, const Value& v,
          const CallArgs& args) -> absl::
                                    StatusOr<bool> {
                                      absl::StatusOr<Value> seq = TestArg(args, "in");
                                      if (!seq.ok()) return seq.status();
                                      if (seq->is_string()) {
                                        if (!v.is_string())
                                          return Error(
                                              "'in <string>' requires string as left operand");
                                        return seq->string_value().find(v.string_value()) !=
                                               std::string::npos;
                                      }
                                      if (seq->is_dict()) {
                                        absl::StatusOr<const Value*> found = seq->dict().Find(v);
                                        if (!found.ok()) return found.status();
                                        return *found != nullptr;
                                      }
                                      absl::StatusOr<std::vector<Value>> items = Iterate(*seq);
                                      if (!items.ok()) return items.status();
                                      for (const Value& item : *items) {
                                        if (Equals(item, v)) return true;
                                      }
                                      return false;
                                    }},
      {"==", [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare("==", v, a); }},
      {"eq", [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare("==", v, a); }},
      {"equalto",
       [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare("==", v, a); }},
      {"!=", [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare("!=", v, a); }},
      {"ne", [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare("!=", v, a); }},
      {">", [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare(">", v, a); }},
      {"gt", [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare(">", v, a); }},
      {"greaterthan",
       [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare(">", v, a); }},
      {">=", [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare(">=", v, a); }},
      {"ge", [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare(">=", v, a); }},
      {"<", [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare("<", v, a); }},
      {"lt", [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare("<", v, a); }},
      {"lessthan",
       [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare("<", v, a); }},
      {"<=", [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare("<=", v, a); }},
      {"le", [](Renderer&, const Value& v, const CallArgs& a) { return OpCompare("<=", v, a); }},
  };
  return *tests;
}

// --- globals

class BuiltinFunction : public Object {
 public:
  using Fn = std::function<absl::StatusOr<Value>(Renderer&, CallArgs)>;
  BuiltinFunction(std::string name, Fn fn) : name_(std::move(name)), fn_(std::move(fn)) {}
  std::string TypeName() const override { return "function"; }
  bool IsCallable() const override { return true; }
  absl::StatusOr<Value> Call(Renderer& r, CallArgs args) const override {
    return fn_(r, std::move(args));
  }
  std::string Repr() const override { return Concat("<function ", name_, ">"); }

 private:
  std::string name_;
  Fn fn_;
};

class Joiner : public Object {
 public:
  explicit Joiner(std::string sep) : sep_(std::move(sep)) {}
  std::string TypeName() const override { return "Joiner"; }
  bool IsCallable() const override { return true; }
  absl::StatusOr<Value> Call(Renderer&, CallArgs) const override {
    if (!used_) {
      used_ = true;
      return Str("");
    }
    return Str(sep_);
  }

 private:
  std::string sep_;
  mutable bool used_ = false;
};

class Cycler : public Object {
 public:
  explicit Cycler(std::vector<Value> items) : state_(std::make_shared<State>()) {
    state_->items = std::move(items);
  }
  std::string TypeName() const override { return "Cycler"; }
  std::optional<Value> GetAttr(std::string_view name) const override {
    if (name == "current") return state_->items[state_->pos];
    if (name != "next" && name != "reset") return std::nullopt;
    const bool reset = name == "reset";
    return Value::FromObject(std::make_shared<BuiltinFunction>(
        std::string(name), [state = state_, reset](Renderer&, CallArgs) -> absl::StatusOr<Value> {
          if (reset) {
            state->pos = 0;
            return Value::None();
          }
          Value v = state->items[state->pos];
          state->pos = (state->pos + 1) % state->items.size();
          return v;
        }));
  }

 private:
  struct State {
    std::vector<Value> items;
    size_t pos = 0;
  };
  std::shared_ptr<State> state_;
};

// dict(mapping or pairs, **kwargs) into `out`.
absl::Status FillDict(const CallArgs& args, std::string_view what, Dict* out) {
  if (args.positional.size() > 1) {
    return Error(Concat(what, " expected at most 1 argument, got ", args.positional.size()));
  }
  if (!args.positional.empty()) {
    const Value& src = args.positional[0];
    if (src.is_dict()) {
      for (const auto& [k, v] : src.dict().items()) {
        if (absl::Status s = out->Set(k, v); !s.ok()) return s;
      }
    } else {
      absl::StatusOr<std::vector<Value>> pairs = Iterate(src);
      if (!pairs.ok()) return pairs.status();
      for (const Value& pair : *pairs) {
        absl::StatusOr<std::vector<Value>> kv = Iterate(pair);
        if (!kv.ok() || kv->size() != 2) {
          return Error("dictionary update sequence element has the wrong length; 2 is required");
        }
        if (absl::Status s = out->Set((*kv)[0], (*kv)[1]); !s.ok()) return s;
      }
    }
  }
  for (const auto& [k, v] : args.keyword) out->SetString(k, v);
  return absl::OkStatus();
}

}  // namespace

FilterFn FindFilter(std::string_view name) {
  const auto& filters = Filters();
  const auto it = filters.find(name);
  return it == filters.end() ? nullptr : it->second;
}

TestFn FindTest(std::string_view name) {
  const auto& tests = Tests();
  const auto it = tests.find(name);
  return it == tests.end() ? nullptr : it->second;
}

std::optional<Value> LookupMethod(const Value& self, std::string_view name) {
  const auto bound = [&]() {
    return Value::FromObject(std::make_shared<BoundMethod>(self, std::string(name)));
  };
  const auto unsafe = [&]() {
    return Value::Undefined(Concat("access to attribute ", PyReprString(name), " of ",
                                   PyReprString(TypeName(self)), " object is unsafe."));
  };
  switch (self.kind()) {
    case Value::Kind::kString:
      if (StrMethods().contains(name)) return bound();
      return std::nullopt;
    case Value::Kind::kDict:
      if (name == "get" || name == "items" || name == "keys" || name == "values" ||
          name == "copy") {
        return bound();
      }
      if (name == "pop" || name == "popitem" || name == "setdefault" || name == "update" ||
          name == "clear") {
        return unsafe();
      }
      return std::nullopt;
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      if (name == "index" || name == "count" || (self.is_list() && name == "copy")) {
        return bound();
      }
      if (self.is_list() &&
          (name == "append" || name == "extend" || name == "insert" || name == "pop" ||
           name == "remove" || name == "reverse" || name == "sort" || name == "clear")) {
        return unsafe();
      }
      return std::nullopt;
    default:
      return std::nullopt;
  }
}

void AddGlobals(Scope& scope) {
  const auto add = [&](std::string name, BuiltinFunction::Fn fn) {
    scope.Set(name, Value::FromObject(std::make_shared<BuiltinFunction>(name, std::move(fn))));
  };
  add("raise_exception", [](Renderer&, CallArgs args) -> absl::StatusOr<Value> {
    const std::string message = args.positional.empty() ? "" : ToStr(args.positional[0]);
    return Error(Concat("template raised an exception: ", message));
  });
  add("strftime_now", [](Renderer&, CallArgs args) -> absl::StatusOr<Value> {
    if (args.positional.size() != 1 || !args.positional[0].is_string()) {
      return Error("strftime_now() takes one format string");
    }
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    const std::string& format = args.positional[0].string_value();
    std::vector<char> buf(256 + format.size() * 8);
    const size_t n = std::strftime(buf.data(), buf.size(), format.c_str(), &local);
    return Str(std::string(buf.data(), n));
  });
  add("range", [](Renderer&, CallArgs args) -> absl::StatusOr<Value> {
    if (!args.keyword.empty()) return Error("range() takes no keyword arguments");
    std::vector<int64_t> v;
    for (const Value& a : args.positional) {
      absl::StatusOr<int64_t> i = ToIndex(a, "range");
      if (!i.ok()) return i.status();
      v.push_back(*i);
    }
    int64_t start = 0;
    int64_t stop;
    int64_t step = 1;
    if (v.size() == 1) {
      stop = v[0];
    } else if (v.size() == 2 || v.size() == 3) {
      start = v[0];
      stop = v[1];
      if (v.size() == 3) step = v[2];
    } else {
      return Error(Concat("range expected 1 to 3 arguments, got ", v.size()));
    }
    if (step == 0) return Error("range() arg 3 must not be zero");
    const int64_t count = step > 0 ? (stop > start ? (stop - start + step - 1) / step : 0)
                                   : (start > stop ? (start - stop - step - 1) / -step : 0);
    constexpr int64_t kMaxRange = 100000;  // jinja2's sandbox limit
    if (count > kMaxRange) {
      return Error("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    }
    std::vector<Value> out;
    for (int64_t i = 0; i < count; ++i) out.push_back(Value::Int(start + i * step));
    return Value::List(std::move(out));
  });
  add("dict", [](Renderer&, CallArgs args) -> absl::StatusOr<Value> {
    Dict d;
    if (absl::Status s = FillDict(args, "dict", &d); !s.ok()) return s;
    return Value::FromDict(std::move(d));
  });
  add("namespace", [](Renderer& r, CallArgs args) -> absl::StatusOr<Value> {
    auto ns = std::make_shared<Namespace>();
    r.Track(ns);
    if (absl::Status s = FillDict(args, "namespace", &ns->attrs()); !s.ok()) return s;
    for (const auto& [k, unused] : ns->attrs().items()) {
      if (k.is_string() && !k.string_value().empty() && k.string_value()[0] == '_') {
        return Error(
            Concat("Chat templates cannot store underscore-prefixed attributes on "
                   "a namespace, but got ",
                   PyReprString(k.string_value()), ". Please rename the attribute."));
      }
    }
    return Value::FromObject(std::move(ns));
  });
  add("joiner", [](Renderer&, CallArgs args) -> absl::StatusOr<Value> {
    absl::StatusOr<Args> a = Args::Bind("joiner", args, {"sep"});
    if (!a.ok()) return a.status();
    return Value::FromObject(std::make_shared<Joiner>(ToStr(a->Or(0, Str(", ")))));
  });
  add("cycler", [](Renderer&, CallArgs args) -> absl::StatusOr<Value> {
    if (args.positional.empty()) return Error("at least one item has to be provided");
    return Value::FromObject(std::make_shared<Cycler>(std::move(args.positional)));
  });
}

absl::StatusOr<std::string> PercentFormat(std::string_view format, const Value& args) {
  std::vector<Value> positional;
  const Dict* mapping = nullptr;
  if (args.is_tuple()) {
    positional = args.items();
  } else {
    if (args.is_dict()) mapping = &args.dict();
    positional.push_back(args);
  }
  size_t next = 0;
  bool used_mapping = false;
  std::string out;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%') {
      out.push_back(format[i]);
      continue;
    }
    if (++i >= format.size()) return Error("incomplete format");
    Value value;
    bool have_value = false;
    if (format[i] == '(') {
      const size_t close = format.find(')', i);
      if (close == std::string_view::npos) return Error("incomplete format key");
      if (!mapping) return Error("format requires a mapping");
      const Value* v = mapping->FindString(format.substr(i + 1, close - i - 1));
      if (!v) return Error(Concat("KeyError: ", PyReprString(format.substr(i + 1, close - i - 1))));
      value = *v;
      have_value = true;
      used_mapping = true;
      i = close + 1;
    }
    Spec spec;
    spec.align = '>';
    for (; i < format.size(); ++i) {
      const char f = format[i];
      if (f == '-') {
        spec.align = '<';
      } else if (f == '+' || f == ' ') {
        spec.sign = f;
      } else if (f == '#') {
        spec.alternate = true;
      } else if (f == '0') {
        spec.zero = true;
      } else {
        break;
      }
    }
    if (spec.align == '<') spec.zero = false;
    const auto take_arg = [&]() -> absl::StatusOr<Value> {
      if (next >= positional.size()) return Error("not enough arguments for format string");
      return positional[next++];
    };
    if (i < format.size() && format[i] == '*') {
      absl::StatusOr<Value> w = take_arg();
      if (!w.ok()) return w.status();
      absl::StatusOr<int64_t> wi = ToIndex(*w, "* wants int");
      if (!wi.ok()) return wi.status();
      spec.width = *wi;
      ++i;
    } else {
      while (i < format.size() && format[i] >= '0' && format[i] <= '9') {
        spec.width = std::max<int64_t>(spec.width, 0) * 10 + (format[i++] - '0');
      }
    }
    if (i < format.size() && format[i] == '.') {
      ++i;
      spec.precision = 0;
      while (i < format.size() && format[i] >= '0' && format[i] <= '9') {
        spec.precision = spec.precision * 10 + (format[i++] - '0');
      }
    }
    if (i >= format.size()) return Error("incomplete format");
    const char type = format[i];
    if (type == '%') {
      out.push_back('%');
      continue;
    }
    if (!have_value) {
      absl::StatusOr<Value> v = take_arg();
      if (!v.ok()) return v.status();
      value = std::move(*v);
    }
    if (spec.zero) {
      spec.fill = '0';
      spec.align = '=';
      spec.zero = false;
    }
    switch (type) {
      case 's':
      case 'r':
      case 'a': {
        std::string s = type == 's' ? ToStr(value) : Repr(value);
        if (spec.precision >= 0) {
          s = EncodeUtf8(DecodeUtf8(s).substr(0, static_cast<size_t>(spec.precision)));
        }
        Spec str_spec = spec;
        str_spec.fill = ' ';
        if (str_spec.align == '=') str_spec.align = '>';
        out += Pad(std::move(s), str_spec, '>', 0);
        break;
      }
      case 'd':
      case 'i':
      case 'u':
      case 'x':
      case 'X':
      case 'o':
      case 'c': {
        if (!value.is_number()) {
          return Error(Concat("%", std::string(1, type), " format: a real number is required, not ",
                              TypeName(value)));
        }
        if (value.is_float() && type != 'd' && type != 'i' && type != 'u') {
          return Error(
              Concat("%", std::string(1, type), " format: an integer is required, not float"));
        }
        const Value as_int =
            value.is_float() ? Value::Int(static_cast<int64_t>(value.float_value())) : value;
        Spec int_spec = spec;
        int_spec.precision = -1;
        int_spec.type = (type == 'i' || type == 'u') ? 'd' : type;
        absl::StatusOr<std::string> s = FormatNumber(as_int, int_spec);
        if (!s.ok()) return s.status();
        out += *s;
        break;
      }
      case 'f':
      case 'F':
      case 'e':
      case 'E':
      case 'g':
      case 'G': {
        if (!value.is_number()) {
          return Error(Concat("must be real number, not ", TypeName(value)));
        }
        Spec float_spec = spec;
        float_spec.type = type;
        if (float_spec.precision < 0) float_spec.precision = 6;
        absl::StatusOr<std::string> s =
            FormatNumber(Value::Float(value.number_as_double()), float_spec);
        if (!s.ok()) return s.status();
        out += *s;
        break;
      }
      default:
        return Error(Concat("unsupported format character '", std::string(1, type), "'"));
    }
  }
  if (!used_mapping && !mapping && next < positional.size()) {
    return Error("not all arguments converted during string formatting");
  }
  return out;
}

}  // namespace tessera::jinja
