// Values of the Jinja interpreter, with the Python semantics that chat templates rely on.
//
// A Value is one of: undefined (jinja2's default Undefined: prints empty, is falsy, iterates as
// empty, but fails on arithmetic, attribute access and calls), none, bool, int, float, str, list,
// tuple, dict (insertion ordered, any hashable key), generator (what jinja2's map/select filters
// return: always truthy, no len(), iterates once), and object (namespaces, loop contexts, macros,
// built-in functions and bound methods).
//
// Values are cheap to copy: strings, lists and dicts are shared and immutable once built (the
// template sandbox transformers uses forbids mutating them). Only a Namespace is mutable, through
// `{% set ns.attr = ... %}`, and it is shared by reference as in Python.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::jinja {

class Value;
class Dict;
class Object;
class Renderer;

struct GeneratorState {
  std::vector<Value> items;
  bool consumed = false;
};

class Value {
 public:
  enum class Kind : uint8_t {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kTuple,
    kDict,
    kGenerator,
    kObject,
  };

  Value() = default;  // undefined, no hint
  static Value Undefined(std::string hint);
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double f);
  static Value String(std::string s);
  static Value List(std::vector<Value> items);
  static Value Tuple(std::vector<Value> items);
  static Value FromDict(Dict dict);
  static Value Generator(std::vector<Value> items);
  static Value FromObject(std::shared_ptr<Object> object);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kTuple; }
  bool is_sequence_like() const { return kind_ == Kind::kList || kind_ == Kind::kTuple; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_generator() const { return kind_ == Kind::kGenerator; }
  bool is_object() const { return kind_ == Kind::kObject; }
  // Python's numbers.Number: bool, int and float.
  bool is_number() const {
    return kind_ == Kind::kBool || kind_ == Kind::kInt || kind_ == Kind::kFloat;
  }
  // Python's int, which includes bool.
  bool is_integral() const { return kind_ == Kind::kBool || kind_ == Kind::kInt; }

  bool bool_value() const { return std::get<bool>(data_); }
  int64_t int_value() const { return std::get<int64_t>(data_); }
  double float_value() const { return std::get<double>(data_); }
  // For is_integral(): bool as 0/1.
  int64_t integral_value() const { return is_bool() ? (bool_value() ? 1 : 0) : int_value(); }
  // For is_number().
  double number_as_double() const {
    return is_float() ? float_value() : static_cast<double>(integral_value());
  }
  const std::string& string_value() const { return *std::get<StringPtr>(data_); }
  // For lists and tuples.
  const std::vector<Value>& items() const { return *std::get<ListPtr>(data_); }
  const Dict& dict() const { return *std::get<DictPtr>(data_); }
  const std::shared_ptr<GeneratorState>& generator() const {
    return std::get<std::shared_ptr<GeneratorState>>(data_);
  }
  Object* object() const { return std::get<std::shared_ptr<Object>>(data_).get(); }
  const std::shared_ptr<Object>& object_ptr() const {
    return std::get<std::shared_ptr<Object>>(data_);
  }
  // What an undefined value says when it is used wrongly ("'x' is undefined").
  std::string undefined_message() const;

  // Identity for `is sameas` and object equality.
  const void* identity() const;

 private:
  using StringPtr = std::shared_ptr<const std::string>;
  using ListPtr = std::shared_ptr<const std::vector<Value>>;
  using DictPtr = std::shared_ptr<const Dict>;
  Kind kind_ = Kind::kUndefined;
  std::variant<std::monostate, bool, int64_t, double, StringPtr, ListPtr, DictPtr,
               std::shared_ptr<GeneratorState>, std::shared_ptr<Object>>
      data_;
};

// An insertion-ordered dict with Python key equality (1 == 1.0 == True).
class Dict {
 public:
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  const std::vector<std::pair<Value, Value>>& items() const { return items_; }
  // nullptr when absent; an unhashable key is an error.
  absl::StatusOr<const Value*> Find(const Value& key) const;
  const Value* FindString(std::string_view key) const;
  // Inserts or overwrites (keeping the first position, as Python does).
  absl::Status Set(Value key, Value value);
  void SetString(std::string_view key, Value value);

 private:
  static constexpr size_t kLinearLimit = 8;
  // Position of the key in items_, or -1.
  int64_t IndexOf(const std::string& hash_key) const;
  std::vector<std::pair<Value, Value>> items_;
  std::vector<std::string> hash_keys_;              // parallel to items_
  absl::flat_hash_map<std::string, size_t> index_;  // built once size > kLinearLimit
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// Namespaces, loop contexts, macros, built-in functions, bound methods.
class Object {
 public:
  virtual ~Object() = default;
  // Python type name, for messages ("Namespace", "LoopContext", "builtin_function_or_method").
  virtual std::string TypeName() const = 0;
  // nullopt when there is no such attribute (the caller makes it undefined).
  virtual std::optional<Value> GetAttr(std::string_view name) const;
  virtual bool IsCallable() const { return false; }
  virtual absl::StatusOr<Value> Call(Renderer& renderer, CallArgs args) const;
  virtual std::string Repr() const;
  // Drops the references this object holds to scopes and values. A render calls it on every
  // object it created once it is done: macros hold the scope that holds them, and namespaces can
  // hold themselves, so reference counting alone would leak them.
  virtual void BreakCycles() {}
};

// jinja2's Namespace: attributes set with `{% set ns.name = value %}`.
class Namespace : public Object {
 public:
  std::string TypeName() const override { return "Namespace"; }
  std::optional<Value> GetAttr(std::string_view name) const override;
  std::string Repr() const override;
  void BreakCycles() override { attrs_ = Dict(); }
  Dict& attrs() { return attrs_; }
  const Dict& attrs() const { return attrs_; }

 private:
  Dict attrs_;
};

// Python semantics helpers.
bool Truthy(const Value& v);
std::string TypeName(const Value& v);
// jinja2 `object_type_repr`: "dict object", "None", "str object", ...
std::string ObjectTypeRepr(const Value& v);
// str(v): what `{{ v }}` prints.
std::string ToStr(const Value& v);
// repr(v).
std::string Repr(const Value& v);
// ==, with Python semantics across types (1 == 1.0 == True; [1] != (1,)).
bool Equals(const Value& a, const Value& b);
// <, with Python's TypeError for unordered types.
absl::StatusOr<bool> Less(const Value& a, const Value& b);
// A string key that is equal for equal hashable values; error for unhashable ones.
absl::StatusOr<std::string> HashKey(const Value& v);
// Iterates like Python's iter(): lists/tuples, dict keys, str code points, undefined (empty),
// generators (consuming them). Error for non-iterables.
absl::StatusOr<std::vector<Value>> Iterate(const Value& v);
// len(); error for values without a length.
absl::StatusOr<int64_t> Length(const Value& v);

}  // namespace tessera::jinja
