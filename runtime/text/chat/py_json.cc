#include "runtime/text/chat/py_json.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <utility>
#include <vector>

#include "runtime/text/chat/concat.h"
#include "runtime/text/chat/py_text.h"

namespace tessera::jinja {
namespace {

void AppendJsonString(std::string_view s, bool ensure_ascii, std::string* out) {
  char buf[16];
  out->push_back('"');
  if (!ensure_ascii) {
    for (char c : s) {
      switch (c) {
        case '"':
          *out += "\\\"";
          break;
        case '\\':
          *out += "\\\\";
          break;
        case '\n':
          *out += "\\n";
          break;
        case '\r':
          *out += "\\r";
          break;
        case '\t':
          *out += "\\t";
          break;
        case '\b':
          *out += "\\b";
          break;
        case '\f':
          *out += "\\f";
          break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
            *out += buf;
          } else {
            out->push_back(c);
          }
      }
    }
  } else {
    for (char32_t c : DecodeUtf8(s)) {
      switch (c) {
        case '"':
          *out += "\\\"";
          continue;
        case '\\':
          *out += "\\\\";
          continue;
        case '\n':
          *out += "\\n";
          continue;
        case '\r':
          *out += "\\r";
          continue;
        case '\t':
          *out += "\\t";
          continue;
        case '\b':
          *out += "\\b";
          continue;
        case '\f':
          *out += "\\f";
          continue;
        default:
          break;
      }
      if (c >= 0x20 && c <= 0x7E) {
        out->push_back(static_cast<char>(c));
      } else if (c > 0xFFFF) {
        const char32_t v = c - 0x10000;
        std::snprintf(buf, sizeof(buf), "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 | (v >> 10)),
                      static_cast<unsigned>(0xDC00 | (v & 0x3FF)));
        *out += buf;
      } else {
        std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
        *out += buf;
      }
    }
  }
  out->push_back('"');
}

std::string JsonFloat(double f) {
  if (std::isnan(f)) return "NaN";
  if (std::isinf(f)) return f > 0 ? "Infinity" : "-Infinity";
  return PyReprFloat(f);
}

absl::Status NotSerializable(const Value& v) {
  return absl::InvalidArgumentError(
      Concat("Object of type ", TypeName(v), " is not JSON serializable"));
}

class Encoder {
 public:
  explicit Encoder(const JsonDumpsOptions& options) : options_(options) {
    const bool indented = options.indent.has_value();
    item_separator_ = options.item_separator.value_or(indented ? "," : ", ");
    key_separator_ = options.key_separator.value_or(": ");
  }

  absl::Status Encode(const Value& v, int level, std::string* out) {
    switch (v.kind()) {
      case Value::Kind::kNone:
        *out += "null";
        return absl::OkStatus();
      case Value::Kind::kBool:
        *out += v.bool_value() ? "true" : "false";
        return absl::OkStatus();
      case Value::Kind::kInt:
        AppendTo(out, v.int_value());
        return absl::OkStatus();
      case Value::Kind::kFloat:
        *out += JsonFloat(v.float_value());
        return absl::OkStatus();
      case Value::Kind::kString:
        AppendJsonString(v.string_value(), options_.ensure_ascii, out);
        return absl::OkStatus();
      case Value::Kind::kList:
      case Value::Kind::kTuple:
        return EncodeList(v.items(), level, out);
      case Value::Kind::kDict:
        return EncodeDict(v.dict(), level, out);
      default:
        return NotSerializable(v);
    }
  }

 private:
  // Python's separator between items: the item separator, then the newline and indent.
  std::string NewlineIndent(int level) const {
    std::string s = "\n";
    for (int i = 0; i < level; ++i) s += *options_.indent;
    return s;
  }

  absl::Status EncodeList(const std::vector<Value>& items, int level, std::string* out) {
    if (items.empty()) {
      *out += "[]";
      return absl::OkStatus();
    }
    out->push_back('[');
    const bool indented = options_.indent.has_value();
    const std::string inner = indented ? NewlineIndent(level + 1) : "";
    for (size_t i = 0; i < items.size(); ++i) {
      *out += i ? item_separator_ + inner : inner;
      if (absl::Status s = Encode(items[i], level + 1, out); !s.ok()) return s;
    }
    if (indented) *out += NewlineIndent(level);
    out->push_back(']');
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> KeyString(const Value& key) const {
    switch (key.kind()) {
      case Value::Kind::kString:
        return key.string_value();
      case Value::Kind::kFloat:
        return JsonFloat(key.float_value());
      case Value::Kind::kBool:
        return std::string(key.bool_value() ? "true" : "false");
      case Value::Kind::kNone:
        return std::string("null");
      case Value::Kind::kInt:
        return Concat(key.int_value());
      default:
        return absl::InvalidArgumentError(
            Concat("keys must be str, int, float, bool or None, not ", TypeName(key)));
    }
  }

  absl::Status EncodeDict(const Dict& dict, int level, std::string* out) {
    if (dict.empty()) {
      *out += "{}";
      return absl::OkStatus();
    }
    std::vector<const std::pair<Value, Value>*> items;
    for (const auto& item : dict.items()) items.push_back(&item);
    if (options_.sort_keys) {
      absl::Status error = absl::OkStatus();
      std::stable_sort(items.begin(), items.end(), [&](const auto* a, const auto* b) {
        absl::StatusOr<bool> less = Less(a->first, b->first);
        if (!less.ok()) {
          error = less.status();
          return false;
        }
        return *less;
      });
      if (!error.ok()) return error;
    }
    out->push_back('{');
    const bool indented = options_.indent.has_value();
    const std::string inner = indented ? NewlineIndent(level + 1) : "";
    bool first = true;
    for (const auto* item : items) {
      absl::StatusOr<std::string> key = KeyString(item->first);
      if (!key.ok()) return key.status();
      *out += first ? inner : item_separator_ + inner;
      first = false;
      AppendJsonString(*key, options_.ensure_ascii, out);
      *out += key_separator_;
      if (absl::Status s = Encode(item->second, level + 1, out); !s.ok()) return s;
    }
    if (indented) *out += NewlineIndent(level);
    out->push_back('}');
    return absl::OkStatus();
  }

  const JsonDumpsOptions& options_;
  std::string item_separator_;
  std::string key_separator_;
};

}  // namespace

absl::StatusOr<std::string> PyJsonDumps(const Value& value, const JsonDumpsOptions& options) {
  Encoder encoder(options);
  std::string out;
  if (absl::Status s = encoder.Encode(value, 0, &out); !s.ok()) return s;
  return out;
}

bool JsonDeeperThan(const nlohmann::ordered_json& json, int limit) {
  std::vector<std::pair<const nlohmann::ordered_json*, int>> stack = {{&json, 1}};
  while (!stack.empty()) {
    const auto [node, depth] = stack.back();
    stack.pop_back();
    if (!node->is_structured()) continue;
    if (depth > limit) return true;
    for (const auto& child : *node) stack.emplace_back(&child, depth + 1);
  }
  return false;
}

Value FromJson(const nlohmann::ordered_json& json) {
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value::None();
    case nlohmann::ordered_json::value_t::boolean:
      return Value::Bool(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Value::Int(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t u = json.get<uint64_t>();
      if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Value::Int(static_cast<int64_t>(u));
      }
      return Value::Float(static_cast<double>(u));
    }
    case nlohmann::ordered_json::value_t::number_float:
      return Value::Float(json.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value::String(json.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      std::vector<Value> items;
      items.reserve(json.size());
      for (const auto& item : json) items.push_back(FromJson(item));
      return Value::List(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict dict;
      for (const auto& [key, item] : json.items()) dict.SetString(key, FromJson(item));
      return Value::FromDict(std::move(dict));
    }
    default:
      return Value::None();
  }
}

}  // namespace tessera::jinja
