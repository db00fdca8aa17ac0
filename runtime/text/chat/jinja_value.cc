#include "runtime/text/chat/jinja_value.h"

#include <cmath>
#include <cstdio>
#include <limits>

#include "runtime/text/chat/concat.h"
#include "runtime/text/chat/py_text.h"

namespace tessera::jinja {

Value Value::Undefined(std::string hint) {
  Value v;
  v.kind_ = Kind::kUndefined;
  v.data_ = std::make_shared<const std::string>(std::move(hint));
  return v;
}

Value Value::None() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}

Value Value::Bool(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.data_ = b;
  return v;
}

Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.data_ = i;
  return v;
}

Value Value::Float(double f) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.data_ = f;
  return v;
}

Value Value::String(std::string s) {
  Value v;
  v.kind_ = Kind::kString;
  v.data_ = std::make_shared<const std::string>(std::move(s));
  return v;
}

Value Value::List(std::vector<Value> items) {
  Value v;
  v.kind_ = Kind::kList;
  v.data_ = std::make_shared<const std::vector<Value>>(std::move(items));
  return v;
}

Value Value::Tuple(std::vector<Value> items) {
  Value v;
  v.kind_ = Kind::kTuple;
  v.data_ = std::make_shared<const std::vector<Value>>(std::move(items));
  return v;
}

Value Value::FromDict(Dict dict) {
  Value v;
  v.kind_ = Kind::kDict;
  v.data_ = std::make_shared<const Dict>(std::move(dict));
  return v;
}

Value Value::Generator(std::vector<Value> items) {
  Value v;
  v.kind_ = Kind::kGenerator;
  auto state = std::make_shared<GeneratorState>();
  state->items = std::move(items);
  v.data_ = std::move(state);
  return v;
}

Value Value::FromObject(std::shared_ptr<Object> object) {
  Value v;
  v.kind_ = Kind::kObject;
  v.data_ = std::move(object);
  return v;
}

std::string Value::undefined_message() const {
  if (const auto* hint = std::get_if<StringPtr>(&data_); hint && !(*hint)->empty()) {
    return **hint;
  }
  return "value is undefined";
}

const void* Value::identity() const {
  switch (kind_) {
    case Kind::kString:
      return std::get<StringPtr>(data_).get();
    case Kind::kList:
    case Kind::kTuple:
      return std::get<ListPtr>(data_).get();
    case Kind::kDict:
      return std::get<DictPtr>(data_).get();
    case Kind::kGenerator:
      return generator().get();
    case Kind::kObject:
      return object();
    default:
      return nullptr;
  }
}

// --- Dict

int64_t Dict::IndexOf(const std::string& hash_key) const {
  if (items_.size() > kLinearLimit) {
    const auto it = index_.find(AbslView(hash_key));
    return it == index_.end() ? -1 : static_cast<int64_t>(it->second);
  }
  for (size_t i = 0; i < hash_keys_.size(); ++i) {
    if (hash_keys_[i] == hash_key) return static_cast<int64_t>(i);
  }
  return -1;
}

absl::StatusOr<const Value*> Dict::Find(const Value& key) const {
  absl::StatusOr<std::string> hash_key = HashKey(key);
  if (!hash_key.ok()) return hash_key.status();
  const int64_t i = IndexOf(*hash_key);
  return i < 0 ? nullptr : &items_[static_cast<size_t>(i)].second;
}

const Value* Dict::FindString(std::string_view key) const {
  const int64_t i = IndexOf(Concat("s", key));
  return i < 0 ? nullptr : &items_[static_cast<size_t>(i)].second;
}

absl::Status Dict::Set(Value key, Value value) {
  absl::StatusOr<std::string> hash_key = HashKey(key);
  if (!hash_key.ok()) return hash_key.status();
  if (const int64_t i = IndexOf(*hash_key); i >= 0) {
    items_[static_cast<size_t>(i)].second = std::move(value);
    return absl::OkStatus();
  }
  items_.emplace_back(std::move(key), std::move(value));
  hash_keys_.push_back(*hash_key);
  if (items_.size() == kLinearLimit + 1) {
    for (size_t i = 0; i < hash_keys_.size(); ++i) index_.emplace(hash_keys_[i], i);
  } else if (items_.size() > kLinearLimit + 1) {
    index_.emplace(hash_keys_.back(), items_.size() - 1);
  }
  return absl::OkStatus();
}

void Dict::SetString(std::string_view key, Value value) {
  // A string key is always hashable.
  (void)Set(Value::String(std::string(key)), std::move(value));
}

// --- Object

std::optional<Value> Object::GetAttr(std::string_view) const { return std::nullopt; }

absl::StatusOr<Value> Object::Call(Renderer&, CallArgs) const {
  return absl::InvalidArgumentError(Concat("'", TypeName(), "' object is not callable"));
}

std::string Object::Repr() const { return Concat("<", TypeName(), " object>"); }

std::optional<Value> Namespace::GetAttr(std::string_view name) const {
  if (const Value* v = attrs_.FindString(name)) return *v;
  return std::nullopt;
}

std::string Namespace::Repr() const {
  std::string out = "<Namespace {";
  bool first = true;
  for (const auto& [k, v] : attrs_.items()) {
    if (!first) out += ", ";
    first = false;
    AppendTo(&out, jinja::Repr(k), ": ", jinja::Repr(v));
  }
  return out + "}>";
}

// --- Python semantics

bool Truthy(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return false;
    case Value::Kind::kBool:
      return v.bool_value();
    case Value::Kind::kInt:
      return v.int_value() != 0;
    case Value::Kind::kFloat:
      return v.float_value() != 0.0;
    case Value::Kind::kString:
      return !v.string_value().empty();
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      return !v.items().empty();
    case Value::Kind::kDict:
      return !v.dict().empty();
    case Value::Kind::kGenerator:
    case Value::Kind::kObject:
      return true;
  }
  return false;
}

std::string TypeName(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNone:
      return "NoneType";
    case Value::Kind::kBool:
      return "bool";
    case Value::Kind::kInt:
      return "int";
    case Value::Kind::kFloat:
      return "float";
    case Value::Kind::kString:
      return "str";
    case Value::Kind::kList:
      return "list";
    case Value::Kind::kTuple:
      return "tuple";
    case Value::Kind::kDict:
      return "dict";
    case Value::Kind::kGenerator:
      return "generator";
    case Value::Kind::kObject:
      return v.object()->TypeName();
  }
  return "object";
}

std::string ObjectTypeRepr(const Value& v) {
  if (v.is_none()) return "None";
  return Concat(TypeName(v), " object");
}

namespace {

std::string ReprOrStr(const Value& v, bool repr) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return repr ? "Undefined" : "";
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kBool:
      return v.bool_value() ? "True" : "False";
    case Value::Kind::kInt:
      return Concat(v.int_value());
    case Value::Kind::kFloat:
      return PyReprFloat(v.float_value());
    case Value::Kind::kString:
      return repr ? PyReprString(v.string_value()) : v.string_value();
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      const bool tuple = v.is_tuple();
      std::string out = tuple ? "(" : "[";
      for (size_t i = 0; i < v.items().size(); ++i) {
        if (i) out += ", ";
        out += ReprOrStr(v.items()[i], true);
      }
      if (tuple && v.items().size() == 1) out += ",";
      out += tuple ? ")" : "]";
      return out;
    }
    case Value::Kind::kDict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, val] : v.dict().items()) {
        if (!first) out += ", ";
        first = false;
        AppendTo(&out, ReprOrStr(k, true), ": ", ReprOrStr(val, true));
      }
      return out + "}";
    }
    case Value::Kind::kGenerator:
      return "<generator object>";
    case Value::Kind::kObject:
      return v.object()->Repr();
  }
  return "";
}

}  // namespace

std::string ToStr(const Value& v) { return ReprOrStr(v, false); }
std::string Repr(const Value& v) { return ReprOrStr(v, true); }

bool Equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.integral_value() == b.integral_value();
    return a.number_as_double() == b.number_as_double();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kString:
      return a.string_value() == b.string_value();
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      if (a.items().size() != b.items().size()) return false;
      for (size_t i = 0; i < a.items().size(); ++i) {
        if (!Equals(a.items()[i], b.items()[i])) return false;
      }
      return true;
    }
    case Value::Kind::kDict: {
      if (a.dict().size() != b.dict().size()) return false;
      for (const auto& [k, v] : a.dict().items()) {
        absl::StatusOr<const Value*> other = b.dict().Find(k);
        if (!other.ok() || *other == nullptr || !Equals(v, **other)) return false;
      }
      return true;
    }
    default:
      return a.identity() == b.identity();
  }
}

absl::StatusOr<bool> Less(const Value& a, const Value& b) {
  if (a.is_undefined()) return absl::InvalidArgumentError(a.undefined_message());
  if (b.is_undefined()) return absl::InvalidArgumentError(b.undefined_message());
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.integral_value() < b.integral_value();
    return a.number_as_double() < b.number_as_double();
  }
  if (a.is_string() && b.is_string()) return a.string_value() < b.string_value();
  if ((a.is_list() && b.is_list()) || (a.is_tuple() && b.is_tuple())) {
    const auto& x = a.items();
    const auto& y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (Equals(x[i], y[i])) continue;
      return Less(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  return absl::InvalidArgumentError(
      Concat("'<' not supported between instances of '", TypeName(a), "' and '", TypeName(b), "'"));
}

absl::StatusOr<std::string> HashKey(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return std::string("u");
    case Value::Kind::kNone:
      return std::string("n");
    case Value::Kind::kBool:
    case Value::Kind::kInt:
      return Concat("i", v.integral_value());
    case Value::Kind::kFloat: {
      const double f = v.float_value();
      if (std::floor(f) == f && std::fabs(f) < 9.2e18) {
        return Concat("i", static_cast<int64_t>(f));
      }
      return Concat("f", PyReprFloat(f));
    }
    case Value::Kind::kString:
      return Concat("s", v.string_value());
    case Value::Kind::kTuple: {
      std::string out = "t";
      for (const Value& item : v.items()) {
        absl::StatusOr<std::string> key = HashKey(item);
        if (!key.ok()) return key.status();
        AppendTo(&out, key->size(), ":", *key);
      }
      return out;
    }
    case Value::Kind::kObject: {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "o%p", v.identity());
      return std::string(buf);
    }
    default:
      return absl::InvalidArgumentError(Concat("unhashable type: '", TypeName(v), "'"));
  }
}

absl::StatusOr<std::vector<Value>> Iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return std::vector<Value>{};
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      return v.items();
    case Value::Kind::kDict: {
      std::vector<Value> keys;
      keys.reserve(v.dict().size());
      for (const auto& [k, unused] : v.dict().items()) keys.push_back(k);
      return keys;
    }
    case Value::Kind::kString: {
      std::vector<Value> chars;
      const std::u32string u = DecodeUtf8(v.string_value());
      chars.reserve(u.size());
      for (char32_t c : u) {
        std::string s;
        AppendUtf8(c, &s);
        chars.push_back(Value::String(std::move(s)));
      }
      return chars;
    }
    case Value::Kind::kGenerator: {
      const auto& state = v.generator();
      if (state->consumed) return std::vector<Value>{};
      state->consumed = true;
      return std::move(state->items);
    }
    default:
      return absl::InvalidArgumentError(Concat("'", TypeName(v), "' object is not iterable"));
  }
}

absl::StatusOr<int64_t> Length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return 0;
    case Value::Kind::kString:
      return static_cast<int64_t>(CodePointCount(v.string_value()));
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      return static_cast<int64_t>(v.items().size());
    case Value::Kind::kDict:
      return static_cast<int64_t>(v.dict().size());
    default:
      return absl::InvalidArgumentError(Concat("object of type '", TypeName(v), "' has no len()"));
  }
}

}  // namespace tessera::jinja
