// The tree-walking Jinja interpreter: scopes, statement execution, expression evaluation with
// jinja2's sandboxed attribute and item lookup, macros and loops.
//
// Scoping follows jinja2: a for-loop iteration, a macro call, a with block and a set/filter block
// each get a fresh scope whose lookups fall through to the enclosing one; `if` does not. So a
// `{% set %}` inside a loop body is gone at the next iteration and after the loop, and a
// namespace is the way to carry state out, exactly as in transformers.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "runtime/text/chat/jinja_ast.h"
#include "runtime/text/chat/jinja_value.h"

namespace tessera::jinja {

class Scope {
 public:
  explicit Scope(std::shared_ptr<const Scope> parent) : parent_(std::move(parent)) {}
  const Value* Find(std::string_view name) const;
  void Set(std::string_view name, Value value) { vars_[std::string(name)] = std::move(value); }

 private:
  absl::flat_hash_map<std::string, Value> vars_;
  std::shared_ptr<const Scope> parent_;
};
using ScopePtr = std::shared_ptr<Scope>;

enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  // Renders `body` with `scope` as the template's top-level scope. Once done (successfully or
  // not), the objects the render created are stripped of their references (BreakCycles).
  absl::StatusOr<std::string> Render(const Body& body, const ScopePtr& scope);

  // Objects that can be part of a reference cycle (macros, namespaces, loop contexts) are tracked
  // by the render that created them.
  void Track(std::shared_ptr<Object> object) { created_.push_back(std::move(object)); }

  absl::StatusOr<Flow> Exec(const Body& body, const ScopePtr& scope, std::string* out);
  absl::StatusOr<Value> Eval(const Expr& expr, const ScopePtr& scope);

  // jinja2's lookups: `obj.name` (attribute, then item) and `obj[key]` (item, then attribute).
  // Missing ones are undefined values; looking into an undefined value is an error.
  absl::StatusOr<Value> GetAttr(const Value& obj, std::string_view name);
  absl::StatusOr<Value> GetItem(const Value& obj, const Value& key);
  absl::StatusOr<Value> CallValue(const Value& callee, CallArgs args);
  absl::StatusOr<Value> ApplyFilter(std::string_view name, const Value& input,
                                    const CallArgs& args);
  absl::StatusOr<bool> ApplyTest(std::string_view name, const Value& input, const CallArgs& args);

  // Macro and caller() invocation; `def` is a kMacro or kCallBlock statement.
  absl::StatusOr<Value> CallMacro(const Stmt& def, const std::string& name, const ScopePtr& closure,
                                  CallArgs args);
  // One run of a for loop over `items` (already filtered); recursive loops call it again.
  absl::StatusOr<Flow> RunLoop(const Stmt& loop, std::vector<Value> items, const ScopePtr& scope,
                               int depth0, std::string* out);
  // Applies the loop's `if` filter to the iterable's items.
  absl::StatusOr<std::vector<Value>> LoopItems(const Stmt& loop, const Value& iterable,
                                               const ScopePtr& scope);

 private:
  absl::StatusOr<Value> EvalImpl(const Expr& expr, const ScopePtr& scope);
  absl::StatusOr<Flow> ExecOne(const Stmt& stmt, const ScopePtr& scope, std::string* out);
  absl::StatusOr<CallArgs> EvalArgs(const Expr& expr, size_t first_arg, const ScopePtr& scope);
  absl::Status Assign(const Target& target, const Value& value, const ScopePtr& scope);
  // Applies a filter chain whose innermost operand is null (filter and set blocks) to `input`.
  absl::StatusOr<Value> ApplyFilterChain(const Expr& chain, const Value& input,
                                         const ScopePtr& scope);

  int call_depth_ = 0;
  std::vector<std::shared_ptr<Object>> created_;
};

// Adds "line L, column C: " to an error that has no position yet.
absl::Status WithPosition(absl::Status status, SourcePos pos);

}  // namespace tessera::jinja
