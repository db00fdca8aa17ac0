#include "runtime/text/chat/jinja_interpreter.h"

#include <cmath>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/cord.h"
#include "runtime/text/chat/concat.h"
#include "runtime/text/chat/jinja_builtins.h"
#include "runtime/text/chat/py_text.h"

namespace tessera::jinja {
namespace {

// Macro calls nested deeper than this are an error (CPython would hit its recursion limit).
constexpr int kMaxCallDepth = 200;
constexpr std::string_view kPositionPayload = "tessera.jinja/position";

absl::Status Error(const std::string& message) { return absl::InvalidArgumentError(message); }

absl::Status UndefinedError(const Value& v) { return Error(v.undefined_message()); }

std::string AttrMissing(const Value& obj, std::string_view name) {
  return Concat(PyReprString(ObjectTypeRepr(obj)), " has no attribute ", PyReprString(name));
}

std::string ElementMissing(const Value& obj, const Value& key) {
  return Concat(ObjectTypeRepr(obj), " has no element ", Repr(key));
}

// --- objects the interpreter creates

class MacroObject : public Object {
 public:
  MacroObject(const Stmt& def, std::string name, ScopePtr closure)
      : def_(def), name_(std::move(name)), closure_(std::move(closure)) {}
  std::string TypeName() const override { return "Macro"; }
  bool IsCallable() const override { return true; }
  absl::StatusOr<Value> Call(Renderer& r, CallArgs args) const override {
    return r.CallMacro(def_, name_, closure_, std::move(args));
  }
  std::optional<Value> GetAttr(std::string_view name) const override {
    if (name == "name") return Value::String(name_);
    if (name == "arguments") {
      std::vector<Value> params;
      for (const std::string& p : def_.params) params.push_back(Value::String(p));
      return Value::Tuple(std::move(params));
    }
    return std::nullopt;
  }
  std::string Repr() const override { return Concat("<Macro '", name_, "'>"); }
  void BreakCycles() override { closure_.reset(); }

 private:
  const Stmt& def_;
  std::string name_;
  ScopePtr closure_;
};

struct LoopState {
  std::vector<Value> items;
  int depth0 = 0;
  const Stmt* loop = nullptr;
  ScopePtr scope;  // where the for statement runs; recursive calls render there
  std::optional<Value> last_changed;
};

class LoopMethod : public Object {
 public:
  LoopMethod(std::shared_ptr<LoopState> state, size_t index, std::string name)
      : state_(std::move(state)), index_(index), name_(std::move(name)) {}
  std::string TypeName() const override { return "method"; }
  bool IsCallable() const override { return true; }
  absl::StatusOr<Value> Call(Renderer&, CallArgs args) const override {
    if (name_ == "cycle") {
      if (args.positional.empty()) return Error("no items for cycling given");
      return args.positional[index_ % args.positional.size()];
    }
    Value now = Value::Tuple(std::move(args.positional));
    if (state_->last_changed && Equals(*state_->last_changed, now)) return Value::Bool(false);
    state_->last_changed = std::move(now);
    return Value::Bool(true);
  }

 private:
  std::shared_ptr<LoopState> state_;
  size_t index_;
  std::string name_;
};

class LoopObject : public Object {
 public:
  LoopObject(std::shared_ptr<LoopState> state, size_t index)
      : state_(std::move(state)), index_(index) {}
  std::string TypeName() const override { return "LoopContext"; }
  bool IsCallable() const override { return true; }

  std::optional<Value> GetAttr(std::string_view name) const override {
    const auto length = static_cast<int64_t>(state_->items.size());
    const auto i = static_cast<int64_t>(index_);
    if (name == "index0") return Value::Int(i);
    if (name == "index") return Value::Int(i + 1);
    if (name == "revindex") return Value::Int(length - i);
    if (name == "revindex0") return Value::Int(length - i - 1);
    if (name == "first") return Value::Bool(i == 0);
    if (name == "last") return Value::Bool(i == length - 1);
    if (name == "length") return Value::Int(length);
    if (name == "depth") return Value::Int(state_->depth0 + 1);
    if (name == "depth0") return Value::Int(state_->depth0);
    if (name == "previtem") {
      return i > 0 ? state_->items[index_ - 1] : Value::Undefined("there is no previous item");
    }
    if (name == "nextitem") {
      return i + 1 < length ? state_->items[index_ + 1] : Value::Undefined("there is no next item");
    }
    if (name == "cycle" || name == "changed") {
      return Value::FromObject(std::make_shared<LoopMethod>(state_, index_, std::string(name)));
    }
    return std::nullopt;
  }

  absl::StatusOr<Value> Call(Renderer& r, CallArgs args) const override {
    if (!state_->loop->recursive) {
      return Error("The loop must have the 'recursive' marker to be called recursively.");
    }
    if (args.positional.size() != 1 || !args.keyword.empty()) {
      return Error("a recursive loop call takes exactly one iterable");
    }
    absl::StatusOr<std::vector<Value>> items =
        r.LoopItems(*state_->loop, args.positional[0], state_->scope);
    if (!items.ok()) return items.status();
    std::string out;
    absl::StatusOr<Flow> flow =
        r.RunLoop(*state_->loop, std::move(*items), state_->scope, state_->depth0 + 1, &out);
    if (!flow.ok()) return flow.status();
    return Value::String(std::move(out));
  }

  std::string Repr() const override {
    return Concat("<LoopContext ", index_ + 1, "/", state_->items.size(), ">");
  }
  void BreakCycles() override {
    state_->scope.reset();
    state_->items.clear();
    state_->last_changed.reset();
  }

 private:
  std::shared_ptr<LoopState> state_;
  size_t index_;
};

// --- arithmetic with Python semantics

absl::StatusOr<Value> CheckedInt(bool overflow, int64_t v) {
  if (overflow) return Error("integer overflow (Python ints are unbounded; tessera uses int64)");
  return Value::Int(v);
}

std::string OperandTypes(std::string_view op, const Value& a, const Value& b) {
  return Concat("unsupported operand type(s) for ", op, ": '", TypeName(a), "' and '", TypeName(b),
                "'");
}

absl::StatusOr<Value> Repeat(const Value& seq, int64_t n) {
  if (seq.is_string()) {
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.string_value();
    return Value::String(std::move(out));
  }
  std::vector<Value> out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.items().begin(), seq.items().end());
  return seq.is_tuple() ? Value::Tuple(std::move(out)) : Value::List(std::move(out));
}

// CPython's float divmod: returns {floordiv, mod}.
std::pair<double, double> FloatDivMod(double vx, double wx) {
  double mod = std::fmod(vx, wx);
  double div = (vx - mod) / wx;
  if (mod != 0.0) {
    if ((wx < 0) != (mod < 0)) {
      mod += wx;
      div -= 1.0;
    }
  } else {
    mod = std::copysign(0.0, wx);
  }
  double floordiv;
  if (div != 0.0) {
    floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = std::copysign(0.0, vx / wx);
  }
  return {floordiv, mod};
}

absl::StatusOr<Value> BinaryOp(std::string_view op, const Value& a, const Value& b) {
  if (a.is_undefined()) return UndefinedError(a);
  if (b.is_undefined()) return UndefinedError(b);
  const bool ints = a.is_integral() && b.is_integral();
  const bool nums = a.is_number() && b.is_number();
  if (op == "+") {
    if (ints) {
      int64_t r;
      const bool of = __builtin_add_overflow(a.integral_value(), b.integral_value(), &r);
      return CheckedInt(of, r);
    }
    if (nums) return Value::Float(a.number_as_double() + b.number_as_double());
    if (a.is_string() && b.is_string()) return Value::String(a.string_value() + b.string_value());
    if ((a.is_list() && b.is_list()) || (a.is_tuple() && b.is_tuple())) {
      std::vector<Value> out = a.items();
      out.insert(out.end(), b.items().begin(), b.items().end());
      return a.is_tuple() ? Value::Tuple(std::move(out)) : Value::List(std::move(out));
    }
    if (a.is_string() || a.is_list() || a.is_tuple()) {
      return Error(Concat("can only concatenate ", TypeName(a), " (not \"", TypeName(b), "\") to ",
                          TypeName(a)));
    }
    return Error(OperandTypes("+", a, b));
  }
  if (op == "-") {
    if (ints) {
      int64_t r;
      const bool of = __builtin_sub_overflow(a.integral_value(), b.integral_value(), &r);
      return CheckedInt(of, r);
    }
    if (nums) return Value::Float(a.number_as_double() - b.number_as_double());
    return Error(OperandTypes("-", a, b));
  }
  if (op == "*") {
    if (ints) {
      int64_t r;
      const bool of = __builtin_mul_overflow(a.integral_value(), b.integral_value(), &r);
      return CheckedInt(of, r);
    }
    if (nums) return Value::Float(a.number_as_double() * b.number_as_double());
    const bool a_seq = a.is_string() || a.is_list() || a.is_tuple();
    const bool b_seq = b.is_string() || b.is_list() || b.is_tuple();
    if (a_seq && b.is_integral()) return Repeat(a, b.integral_value());
    if (b_seq && a.is_integral()) return Repeat(b, a.integral_value());
    if (a_seq || b_seq) {
      return Error(
          Concat("can't multiply sequence by non-int of type '", TypeName(a_seq ? b : a), "'"));
    }
    return Error(OperandTypes("*", a, b));
  }
  if (op == "/") {
    if (!nums) return Error(OperandTypes("/", a, b));
    if (b.number_as_double() == 0.0) return Error("division by zero");
    if (ints) {
      return Value::Float(static_cast<double>(a.integral_value()) /
                          static_cast<double>(b.integral_value()));
    }
    return Value::Float(a.number_as_double() / b.number_as_double());
  }
  if (op == "//" || op == "%") {
    if (op == "%" && a.is_string()) {
      absl::StatusOr<std::string> s = PercentFormat(a.string_value(), b);
      if (!s.ok()) return s.status();
      return Value::String(std::move(*s));
    }
    if (!nums) return Error(OperandTypes(op, a, b));
    if (ints) {
      const int64_t x = a.integral_value();
      const int64_t y = b.integral_value();
      if (y == 0) return Error("integer division or modulo by zero");
      if (x == std::numeric_limits<int64_t>::min() && y == -1) return CheckedInt(true, 0);
      int64_t q = x / y;
      int64_t m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        q -= 1;
        m += y;
      }
      return Value::Int(op == "//" ? q : m);
    }
    const double y = b.number_as_double();
    if (y == 0.0) {
      return Error(op == "//" ? "float floor division by zero" : "float modulo");
    }
    const auto [div, mod] = FloatDivMod(a.number_as_double(), y);
    return Value::Float(op == "//" ? div : mod);
  }
  if (op == "**") {
    if (!nums) return Error(OperandTypes("** or pow()", a, b));
    if (ints && b.integral_value() >= 0) {
      int64_t base = a.integral_value();
      int64_t exp = b.integral_value();
      int64_t result = 1;
      bool of = false;
      while (exp > 0 && !of) {
        if (exp & 1) of |= __builtin_mul_overflow(result, base, &result);
        exp >>= 1;
        if (exp > 0) of |= __builtin_mul_overflow(base, base, &base);
      }
      return CheckedInt(of, result);
    }
    const double x = a.number_as_double();
    const double y = b.number_as_double();
    if (x == 0.0 && y < 0) return Error("0.0 cannot be raised to a negative power");
    if (x < 0 && std::floor(y) != y) return Error("complex results are not supported");
    return Value::Float(std::pow(x, y));
  }
  return Error(Concat("unknown operator ", op));
}

absl::StatusOr<bool> Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kUndefined:
      return false;
    case Value::Kind::kString:
      if (!item.is_string()) {
        return Error(Concat("'in <string>' requires string as left operand, not ", TypeName(item)));
      }
      return container.string_value().find(item.string_value()) != std::string::npos;
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      for (const Value& v : container.items()) {
        if (Equals(v, item)) return true;
      }
      return false;
    case Value::Kind::kDict: {
      absl::StatusOr<const Value*> found = container.dict().Find(item);
      if (!found.ok()) return found.status();
      return *found != nullptr;
    }
    case Value::Kind::kGenerator: {
      absl::StatusOr<std::vector<Value>> items = Iterate(container);
      if (!items.ok()) return items.status();
      for (const Value& v : *items) {
        if (Equals(v, item)) return true;
      }
      return false;
    }
    default:
      return Error(Concat("argument of type '", TypeName(container), "' is not iterable"));
  }
}

absl::StatusOr<bool> Compare(std::string_view op, const Value& a, const Value& b) {
  if (op == "==") return Equals(a, b);
  if (op == "!=") return !Equals(a, b);
  if (op == "in" || op == "notin") {
    absl::StatusOr<bool> in = Contains(b, a);
    if (!in.ok()) return in;
    return op == "in" ? *in : !*in;
  }
  // Ordering: Python raises TypeError for unorderable types (naming the operator used).
  const bool swap = op == ">" || op == ">=";
  absl::StatusOr<bool> less = swap ? Less(b, a) : Less(a, b);
  if (!less.ok()) {
    if (a.is_undefined() || b.is_undefined()) return less.status();
    return Error(Concat("'", op, "' not supported between instances of '", TypeName(a), "' and '",
                        TypeName(b), "'"));
  }
  if (op == "<" || op == ">") return *less;
  return *less || Equals(a, b);
}

// Python slice index normalisation (PySlice_AdjustIndices); returns the selected indices.
std::vector<int64_t> SliceIndices(int64_t length, std::optional<int64_t> start,
                                  std::optional<int64_t> stop, int64_t step) {
  const auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v;
    if (x < 0) {
      x += length;
      if (x < 0) x = step < 0 ? -1 : 0;
    } else if (x >= length) {
      x = step < 0 ? length - 1 : length;
    }
    return x;
  };
  const int64_t b = clamp(start, step < 0 ? length - 1 : 0);
  const int64_t e = clamp(stop, step < 0 ? -1 : length);
  std::vector<int64_t> out;
  if (step > 0) {
    for (int64_t i = b; i < e; i += step) out.push_back(i);
  } else {
    for (int64_t i = b; i > e; i += step) out.push_back(i);
  }
  return out;
}

}  // namespace

absl::Status WithPosition(absl::Status status, SourcePos pos) {
  if (status.ok() || status.GetPayload(AbslView(kPositionPayload)).has_value()) return status;
  absl::Status located(status.code(),
                       Concat("line ", pos.line, ", column ", pos.column, ": ", status.message()));
  located.SetPayload(AbslView(kPositionPayload), absl::Cord("1"));
  return located;
}

const Value* Scope::Find(std::string_view name) const {
  for (const Scope* s = this; s != nullptr; s = s->parent_.get()) {
    const auto it = s->vars_.find(AbslView(name));
    if (it != s->vars_.end()) return &it->second;
  }
  return nullptr;
}

absl::StatusOr<std::string> Renderer::Render(const Body& body, const ScopePtr& scope) {
  std::string out;
  absl::StatusOr<Flow> flow = Exec(body, scope, &out);
  for (const std::shared_ptr<Object>& object : created_) object->BreakCycles();
  created_.clear();
  if (!flow.ok()) return flow.status();
  return out;
}

absl::StatusOr<Flow> Renderer::Exec(const Body& body, const ScopePtr& scope, std::string* out) {
  for (const StmtPtr& stmt : body) {
    absl::StatusOr<Flow> flow = ExecOne(*stmt, scope, out);
    if (!flow.ok()) return WithPosition(flow.status(), stmt->pos);
    if (*flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

absl::StatusOr<Flow> Renderer::ExecOne(const Stmt& stmt, const ScopePtr& scope, std::string* out) {
  switch (stmt.kind) {
    case Stmt::Kind::kText:
      out->append(stmt.text);
      return Flow::kNormal;
    case Stmt::Kind::kOutput: {
      absl::StatusOr<Value> v = Eval(*stmt.expr, scope);
      if (!v.ok()) return v.status();
      out->append(v->is_string() ? v->string_value() : ToStr(*v));
      return Flow::kNormal;
    }
    case Stmt::Kind::kIf:
      for (const auto& [cond, body] : stmt.branches) {
        if (cond) {
          absl::StatusOr<Value> c = Eval(*cond, scope);
          if (!c.ok()) return c.status();
          if (!Truthy(*c)) continue;
        }
        return Exec(body, scope, out);
      }
      return Flow::kNormal;
    case Stmt::Kind::kFor: {
      absl::StatusOr<Value> iterable = Eval(*stmt.expr, scope);
      if (!iterable.ok()) return iterable.status();
      absl::StatusOr<std::vector<Value>> items = LoopItems(stmt, *iterable, scope);
      if (!items.ok()) return items.status();
      absl::StatusOr<Flow> flow = RunLoop(stmt, std::move(*items), scope, 0, out);
      if (!flow.ok()) return flow.status();
      return Flow::kNormal;
    }
    case Stmt::Kind::kSet: {
      absl::StatusOr<Value> v = Eval(*stmt.expr, scope);
      if (!v.ok()) return v.status();
      if (absl::Status s = Assign(stmt.target, *v, scope); !s.ok()) return s;
      return Flow::kNormal;
    }
    case Stmt::Kind::kSetBlock:
    case Stmt::Kind::kFilterBlock: {
      std::string text;
      absl::StatusOr<Flow> flow = Exec(stmt.body, std::make_shared<Scope>(scope), &text);
      if (!flow.ok()) return flow.status();
      Value v = Value::String(std::move(text));
      if (stmt.expr) {
        absl::StatusOr<Value> filtered = ApplyFilterChain(*stmt.expr, v, scope);
        if (!filtered.ok()) return filtered.status();
        v = std::move(*filtered);
      }
      if (stmt.kind == Stmt::Kind::kFilterBlock) {
        out->append(ToStr(v));
        return Flow::kNormal;
      }
      if (absl::Status s = Assign(stmt.target, v, scope); !s.ok()) return s;
      return Flow::kNormal;
    }
    case Stmt::Kind::kMacro: {
      auto macro = std::make_shared<MacroObject>(stmt, stmt.name, scope);
      Track(macro);
      scope->Set(stmt.name, Value::FromObject(std::move(macro)));
      return Flow::kNormal;
    }
    case Stmt::Kind::kCallBlock: {
      const Expr& call = *stmt.expr;
      absl::StatusOr<Value> callee = Eval(*call.children[0], scope);
      if (!callee.ok()) return callee.status();
      absl::StatusOr<CallArgs> args = EvalArgs(call, 1, scope);
      if (!args.ok()) return args.status();
      auto caller = std::make_shared<MacroObject>(stmt, "caller", scope);
      Track(caller);
      args->keyword.emplace_back("caller", Value::FromObject(std::move(caller)));
      absl::StatusOr<Value> result = CallValue(*callee, std::move(*args));
      if (!result.ok()) return WithPosition(result.status(), call.pos);
      out->append(ToStr(*result));
      return Flow::kNormal;
    }
    case Stmt::Kind::kWith: {
      auto inner = std::make_shared<Scope>(scope);
      for (size_t i = 0; i < stmt.with_targets.size(); ++i) {
        absl::StatusOr<Value> v = Eval(*stmt.with_values[i], scope);
        if (!v.ok()) return v.status();
        if (absl::Status s = Assign(stmt.with_targets[i], *v, inner); !s.ok()) return s;
      }
      return Exec(stmt.body, inner, out);
    }
    case Stmt::Kind::kScope:
      return Exec(stmt.body, std::make_shared<Scope>(scope), out);
    case Stmt::Kind::kBreak:
      return Flow::kBreak;
    case Stmt::Kind::kContinue:
      return Flow::kContinue;
  }
  return Flow::kNormal;
}

absl::StatusOr<std::vector<Value>> Renderer::LoopItems(const Stmt& loop, const Value& iterable,
                                                       const ScopePtr& scope) {
  absl::StatusOr<std::vector<Value>> items = Iterate(iterable);
  if (!items.ok()) return WithPosition(items.status(), loop.expr->pos);
  if (!loop.filter) return items;
  std::vector<Value> kept;
  for (Value& item : *items) {
    auto probe = std::make_shared<Scope>(scope);
    if (absl::Status s = Assign(loop.target, item, probe); !s.ok()) return s;
    absl::StatusOr<Value> keep = Eval(*loop.filter, probe);
    if (!keep.ok()) return keep.status();
    if (Truthy(*keep)) kept.push_back(std::move(item));
  }
  return kept;
}

absl::StatusOr<Flow> Renderer::RunLoop(const Stmt& loop, std::vector<Value> items,
                                       const ScopePtr& scope, int depth0, std::string* out) {
  if (items.empty()) {
    absl::StatusOr<Flow> flow = Exec(loop.else_body, std::make_shared<Scope>(scope), out);
    if (!flow.ok()) return flow;
    return Flow::kNormal;
  }
  auto state = std::make_shared<LoopState>();
  state->items = std::move(items);
  state->depth0 = depth0;
  state->loop = &loop;
  state->scope = scope;
  for (size_t i = 0; i < state->items.size(); ++i) {
    auto iteration = std::make_shared<Scope>(scope);
    if (absl::Status s = Assign(loop.target, state->items[i], iteration); !s.ok()) {
      return WithPosition(s, loop.target.pos);
    }
    auto loop_object = std::make_shared<LoopObject>(state, i);
    if (i == 0) Track(loop_object);  // they share `state`, which holds the references
    iteration->Set("loop", Value::FromObject(std::move(loop_object)));
    absl::StatusOr<Flow> flow = Exec(loop.body, iteration, out);
    if (!flow.ok()) return flow;
    if (*flow == Flow::kBreak) break;
  }
  return Flow::kNormal;
}

absl::Status Renderer::Assign(const Target& target, const Value& value, const ScopePtr& scope) {
  switch (target.kind) {
    case Target::Kind::kName:
      scope->Set(target.name, value);
      return absl::OkStatus();
    case Target::Kind::kTuple: {
      absl::StatusOr<std::vector<Value>> items = Iterate(value);
      if (!items.ok()) {
        return Error(Concat("cannot unpack non-iterable ", TypeName(value), " object"));
      }
      if (items->size() > target.items.size()) {
        return Error(Concat("too many values to unpack (expected ", target.items.size(), ")"));
      }
      if (items->size() < target.items.size()) {
        return Error(Concat("not enough values to unpack (expected ", target.items.size(), ", got ",
                            items->size(), ")"));
      }
      for (size_t i = 0; i < items->size(); ++i) {
        if (absl::Status s = Assign(target.items[i], (*items)[i], scope); !s.ok()) return s;
      }
      return absl::OkStatus();
    }
    case Target::Kind::kNamespaceAttr: {
      const Value* ns = scope->Find(target.name);
      auto* namespace_object =
          ns && ns->is_object() ? dynamic_cast<Namespace*>(ns->object()) : nullptr;
      if (namespace_object == nullptr) {
        return Error("cannot assign attribute on non-namespace object");
      }
      if (!target.attr.empty() && target.attr[0] == '_') {
        return Error(Concat(
            "Chat templates cannot store underscore-prefixed attributes on a namespace, but got ",
            PyReprString(target.attr), ". Please rename the attribute."));
      }
      namespace_object->attrs().SetString(target.attr, value);
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Value> Renderer::Eval(const Expr& expr, const ScopePtr& scope) {
  absl::StatusOr<Value> v = EvalImpl(expr, scope);
  if (!v.ok()) return WithPosition(v.status(), expr.pos);
  return v;
}

absl::StatusOr<CallArgs> Renderer::EvalArgs(const Expr& expr, size_t first_arg,
                                            const ScopePtr& scope) {
  CallArgs args;
  for (size_t i = first_arg; i < expr.children.size(); ++i) {
    absl::StatusOr<Value> v = Eval(*expr.children[i], scope);
    if (!v.ok()) return v.status();
    args.positional.push_back(std::move(*v));
  }
  for (const auto& [name, e] : expr.keywords) {
    absl::StatusOr<Value> v = Eval(*e, scope);
    if (!v.ok()) return v.status();
    args.keyword.emplace_back(name, std::move(*v));
  }
  if (expr.dyn_args) {
    absl::StatusOr<Value> v = Eval(*expr.dyn_args, scope);
    if (!v.ok()) return v.status();
    absl::StatusOr<std::vector<Value>> items = Iterate(*v);
    if (!items.ok()) return items.status();
    for (Value& item : *items) args.positional.push_back(std::move(item));
  }
  if (expr.dyn_kwargs) {
    absl::StatusOr<Value> v = Eval(*expr.dyn_kwargs, scope);
    if (!v.ok()) return v.status();
    if (!v->is_dict()) {
      return Error(Concat("argument after ** must be a mapping, not ", TypeName(*v)));
    }
    for (const auto& [k, item] : v->dict().items()) {
      if (!k.is_string()) return Error("keywords must be strings");
      args.keyword.emplace_back(k.string_value(), item);
    }
  }
  return args;
}

absl::StatusOr<Value> Renderer::ApplyFilterChain(const Expr& chain, const Value& input,
                                                 const ScopePtr& scope) {
  Value operand = input;
  if (chain.children[0]) {
    absl::StatusOr<Value> inner = ApplyFilterChain(*chain.children[0], input, scope);
    if (!inner.ok()) return inner;
    operand = std::move(*inner);
  }
  absl::StatusOr<CallArgs> args = EvalArgs(chain, 1, scope);
  if (!args.ok()) return args.status();
  absl::StatusOr<Value> v = ApplyFilter(chain.name, operand, *args);
  if (!v.ok()) return WithPosition(v.status(), chain.pos);
  return v;
}

absl::StatusOr<Value> Renderer::EvalImpl(const Expr& expr, const ScopePtr& scope) {
  switch (expr.kind) {
    case Expr::Kind::kConst:
      return expr.value;
    case Expr::Kind::kName: {
      if (const Value* v = scope->Find(expr.name)) return *v;
      return Value::Undefined(Concat(PyReprString(expr.name), " is undefined"));
    }
    case Expr::Kind::kList:
    case Expr::Kind::kTuple: {
      std::vector<Value> items;
      items.reserve(expr.children.size());
      for (const ExprPtr& child : expr.children) {
        absl::StatusOr<Value> v = Eval(*child, scope);
        if (!v.ok()) return v;
        items.push_back(std::move(*v));
      }
      return expr.kind == Expr::Kind::kList ? Value::List(std::move(items))
                                            : Value::Tuple(std::move(items));
    }
    case Expr::Kind::kDict: {
      Dict dict;
      for (size_t i = 0; i + 1 < expr.children.size(); i += 2) {
        absl::StatusOr<Value> k = Eval(*expr.children[i], scope);
        if (!k.ok()) return k;
        absl::StatusOr<Value> v = Eval(*expr.children[i + 1], scope);
        if (!v.ok()) return v;
        if (absl::Status s = dict.Set(std::move(*k), std::move(*v)); !s.ok()) return s;
      }
      return Value::FromDict(std::move(dict));
    }
    case Expr::Kind::kGetAttr: {
      absl::StatusOr<Value> obj = Eval(*expr.children[0], scope);
      if (!obj.ok()) return obj;
      return GetAttr(*obj, expr.name);
    }
    case Expr::Kind::kGetItem: {
      absl::StatusOr<Value> obj = Eval(*expr.children[0], scope);
      if (!obj.ok()) return obj;
      const Expr& index = *expr.children[1];
      if (index.kind != Expr::Kind::kSlice) {
        absl::StatusOr<Value> key = Eval(index, scope);
        if (!key.ok()) return key;
        return GetItem(*obj, *key);
      }
      std::optional<int64_t> parts[3];
      bool bad_index = false;
      for (int i = 0; i < 3; ++i) {
        if (!index.children[i]) continue;
        absl::StatusOr<Value> v = Eval(*index.children[i], scope);
        if (!v.ok()) return v;
        if (v->is_integral()) {
          parts[i] = v->integral_value();
        } else if (!v->is_none()) {
          bad_index = true;
        }
      }
      if (obj->is_undefined()) return UndefinedError(*obj);
      const bool sliceable = obj->is_string() || obj->is_list() || obj->is_tuple();
      if (!sliceable || bad_index) {
        return Value::Undefined(Concat(ObjectTypeRepr(*obj), " has no element slice"));
      }
      const int64_t step = parts[2].value_or(1);
      if (step == 0) return Error("slice step cannot be zero");
      if (obj->is_string()) {
        const std::u32string u = DecodeUtf8(obj->string_value());
        std::u32string picked;
        for (int64_t i : SliceIndices(static_cast<int64_t>(u.size()), parts[0], parts[1], step)) {
          picked.push_back(u[static_cast<size_t>(i)]);
        }
        return Value::String(EncodeUtf8(picked));
      }
      std::vector<Value> picked;
      const auto& items = obj->items();
      for (int64_t i : SliceIndices(static_cast<int64_t>(items.size()), parts[0], parts[1], step)) {
        picked.push_back(items[static_cast<size_t>(i)]);
      }
      return obj->is_tuple() ? Value::Tuple(std::move(picked)) : Value::List(std::move(picked));
    }
    case Expr::Kind::kSlice:
      return Error("slice outside of a subscript");
    case Expr::Kind::kCall: {
      absl::StatusOr<Value> callee = Eval(*expr.children[0], scope);
      if (!callee.ok()) return callee;
      absl::StatusOr<CallArgs> args = EvalArgs(expr, 1, scope);
      if (!args.ok()) return args.status();
      return CallValue(*callee, std::move(*args));
    }
    case Expr::Kind::kFilter: {
      if (!expr.children[0]) return Error("filter without an operand");
      absl::StatusOr<Value> input = Eval(*expr.children[0], scope);
      if (!input.ok()) return input;
      absl::StatusOr<CallArgs> args = EvalArgs(expr, 1, scope);
      if (!args.ok()) return args.status();
      return ApplyFilter(expr.name, *input, *args);
    }
    case Expr::Kind::kTest: {
      absl::StatusOr<Value> input = Eval(*expr.children[0], scope);
      if (!input.ok()) return input;
      absl::StatusOr<CallArgs> args = EvalArgs(expr, 1, scope);
      if (!args.ok()) return args.status();
      absl::StatusOr<bool> r = ApplyTest(expr.name, *input, *args);
      if (!r.ok()) return r.status();
      return Value::Bool(*r);
    }
    case Expr::Kind::kNot: {
      absl::StatusOr<Value> v = Eval(*expr.children[0], scope);
      if (!v.ok()) return v;
      return Value::Bool(!Truthy(*v));
    }
    case Expr::Kind::kNeg:
    case Expr::Kind::kPos: {
      absl::StatusOr<Value> v = Eval(*expr.children[0], scope);
      if (!v.ok()) return v;
      if (v->is_undefined()) return UndefinedError(*v);
      const bool neg = expr.kind == Expr::Kind::kNeg;
      if (v->is_integral()) {
        const int64_t i = v->integral_value();
        if (!neg) return Value::Int(i);
        return CheckedInt(i == std::numeric_limits<int64_t>::min(), -i);
      }
      if (v->is_float()) return Value::Float(neg ? -v->float_value() : v->float_value());
      return Error(
          Concat("bad operand type for unary ", neg ? "-" : "+", ": '", TypeName(*v), "'"));
    }
    case Expr::Kind::kBinary: {
      absl::StatusOr<Value> a = Eval(*expr.children[0], scope);
      if (!a.ok()) return a;
      absl::StatusOr<Value> b = Eval(*expr.children[1], scope);
      if (!b.ok()) return b;
      return BinaryOp(expr.name, *a, *b);
    }
    case Expr::Kind::kAnd:
    case Expr::Kind::kOr: {
      absl::StatusOr<Value> a = Eval(*expr.children[0], scope);
      if (!a.ok()) return a;
      const bool short_circuit = expr.kind == Expr::Kind::kAnd ? !Truthy(*a) : Truthy(*a);
      if (short_circuit) return a;
      return Eval(*expr.children[1], scope);
    }
    case Expr::Kind::kConcat: {
      std::string out;
      for (const ExprPtr& child : expr.children) {
        absl::StatusOr<Value> v = Eval(*child, scope);
        if (!v.ok()) return v;
        out += ToStr(*v);
      }
      return Value::String(std::move(out));
    }
    case Expr::Kind::kCompare: {
      absl::StatusOr<Value> left = Eval(*expr.children[0], scope);
      if (!left.ok()) return left;
      Value current = std::move(*left);
      for (size_t i = 0; i < expr.ops.size(); ++i) {
        absl::StatusOr<Value> right = Eval(*expr.children[i + 1], scope);
        if (!right.ok()) return right;
        absl::StatusOr<bool> r = Compare(expr.ops[i], current, *right);
        if (!r.ok()) return r.status();
        if (!*r) return Value::Bool(false);
        current = std::move(*right);
      }
      return Value::Bool(true);
    }
    case Expr::Kind::kCondExpr: {
      absl::StatusOr<Value> cond = Eval(*expr.children[0], scope);
      if (!cond.ok()) return cond;
      if (Truthy(*cond)) return Eval(*expr.children[1], scope);
      if (expr.children[2]) return Eval(*expr.children[2], scope);
      return Value::Undefined(Concat("the inline if-expression on line ", expr.pos.line,
                                     " evaluated to false and no else section was "
                                     "defined."));
    }
  }
  return Error("unknown expression");
}

absl::StatusOr<Value> Renderer::GetAttr(const Value& obj, std::string_view name) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      return UndefinedError(obj);
    case Value::Kind::kDict:
      if (std::optional<Value> method = LookupMethod(obj, name)) return *method;
      if (const Value* v = obj.dict().FindString(name)) return *v;
      break;
    case Value::Kind::kString:
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      if (std::optional<Value> method = LookupMethod(obj, name)) return *method;
      break;
    case Value::Kind::kObject:
      if (std::optional<Value> v = obj.object()->GetAttr(name)) return *v;
      break;
    default:
      break;
  }
  return Value::Undefined(AttrMissing(obj, name));
}

absl::StatusOr<Value> Renderer::GetItem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) return UndefinedError(obj);
  switch (obj.kind()) {
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      if (key.is_integral()) {
        const auto& items = obj.items();
        int64_t i = key.integral_value();
        if (i < 0) i += static_cast<int64_t>(items.size());
        if (i >= 0 && i < static_cast<int64_t>(items.size())) {
          return items[static_cast<size_t>(i)];
        }
        return Value::Undefined(ElementMissing(obj, key));
      }
      break;
    case Value::Kind::kString:
      if (key.is_integral()) {
        const std::string& s = obj.string_value();
        int64_t i = key.integral_value();
        if (IsAscii(s)) {
          if (i < 0) i += static_cast<int64_t>(s.size());
          if (i >= 0 && i < static_cast<int64_t>(s.size())) {
            return Value::String(std::string(1, s[static_cast<size_t>(i)]));
          }
        } else {
          const std::u32string u = DecodeUtf8(s);
          if (i < 0) i += static_cast<int64_t>(u.size());
          if (i >= 0 && i < static_cast<int64_t>(u.size())) {
            std::string c;
            AppendUtf8(u[static_cast<size_t>(i)], &c);
            return Value::String(std::move(c));
          }
        }
        return Value::Undefined(ElementMissing(obj, key));
      }
      break;
    case Value::Kind::kDict: {
      absl::StatusOr<const Value*> found = obj.dict().Find(key);
      if (found.ok() && *found != nullptr) return **found;
      break;
    }
    default:
      break;
  }
  if (key.is_string()) {
    // jinja2 falls back to getattr(obj, key) for string keys.
    if (obj.is_object()) {
      if (std::optional<Value> v = obj.object()->GetAttr(key.string_value())) return *v;
    } else if (std::optional<Value> method = LookupMethod(obj, key.string_value())) {
      return *method;
    }
    return Value::Undefined(AttrMissing(obj, key.string_value()));
  }
  return Value::Undefined(ElementMissing(obj, key));
}

absl::StatusOr<Value> Renderer::CallValue(const Value& callee, CallArgs args) {
  if (callee.is_undefined()) return UndefinedError(callee);
  if (!callee.is_object() || !callee.object()->IsCallable()) {
    return Error(Concat("'", TypeName(callee), "' object is not callable"));
  }
  return callee.object()->Call(*this, std::move(args));
}

absl::StatusOr<Value> Renderer::ApplyFilter(std::string_view name, const Value& input,
                                            const CallArgs& args) {
  FilterFn fn = FindFilter(name);
  if (fn == nullptr) return Error(Concat("No filter named '", name, "'."));
  return fn(*this, input, args);
}

absl::StatusOr<bool> Renderer::ApplyTest(std::string_view name, const Value& input,
                                         const CallArgs& args) {
  TestFn fn = FindTest(name);
  if (fn == nullptr) return Error(Concat("No test named '", name, "'."));
  return fn(*this, input, args);
}

absl::StatusOr<Value> Renderer::CallMacro(const Stmt& def, const std::string& name,
                                          const ScopePtr& closure, CallArgs args) {
  if (call_depth_ >= kMaxCallDepth) {
    return Error("maximum recursion depth exceeded in macro calls");
  }
  struct DepthGuard {
    explicit DepthGuard(int* d) : d_(d) { ++*d_; }
    ~DepthGuard() { --*d_; }
    int* d_;
  } guard(&call_depth_);

  auto scope = std::make_shared<Scope>(closure);
  const size_t n = def.params.size();
  std::vector<bool> bound(n, false);
  std::vector<Value> varargs;
  if (args.positional.size() > n && !def.uses_varargs) {
    return Error(Concat("macro '", name, "' takes not more than ", n, " argument(s)"));
  }
  for (size_t i = 0; i < args.positional.size(); ++i) {
    if (i < n) {
      scope->Set(def.params[i], std::move(args.positional[i]));
      bound[i] = true;
    } else {
      varargs.push_back(std::move(args.positional[i]));
    }
  }
  Dict kwargs;
  for (auto& [key, value] : args.keyword) {
    size_t p = 0;
    while (p < n && def.params[p] != key) ++p;
    if (p < n) {
      if (bound[p]) {
        return Error(Concat("macro '", name, "' got multiple values for argument '", key, "'"));
      }
      scope->Set(key, std::move(value));
      bound[p] = true;
    } else if (key == "caller" && def.uses_caller) {
      scope->Set("caller", std::move(value));
    } else if (key != "caller" && def.uses_kwargs) {
      kwargs.SetString(key, std::move(value));
    } else if (key == "caller") {
      return Error(Concat("macro '", name,
                          "' was invoked with two values for the special caller argument. This is "
                          "most likely a bug."));
    } else {
      return Error(Concat("macro '", name, "' takes no keyword argument '", key, "'"));
    }
  }
  const size_t first_default = n - def.defaults.size();
  for (size_t i = 0; i < n; ++i) {
    if (bound[i]) continue;
    if (i >= first_default) {
      absl::StatusOr<Value> v = Eval(*def.defaults[i - first_default], scope);
      if (!v.ok()) return v;
      scope->Set(def.params[i], std::move(*v));
    } else {
      scope->Set(def.params[i], Value::Undefined(Concat("parameter ", PyReprString(def.params[i]),
                                                        " was not provided")));
    }
  }
  scope->Set("varargs", Value::Tuple(std::move(varargs)));
  scope->Set("kwargs", Value::FromDict(std::move(kwargs)));
  std::string out;
  absl::StatusOr<Flow> flow = Exec(def.body, scope, &out);
  if (!flow.ok()) return flow.status();
  return Value::String(std::move(out));
}

}  // namespace tessera::jinja
