// The syntax tree of a parsed Jinja template: expressions, assignment targets and statements.
//
// The grammar (operator precedence, what a test may take as its argument, tuples without
// parentheses) follows jinja2's parser, so templates parse the way transformers parses them.
// Every node carries the 1-based line and column of its first token for error messages.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/text/chat/jinja_value.h"

namespace tessera::jinja {

struct SourcePos {
  int line = 1;
  int column = 1;
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kConst,     // value
    kName,      // name
    kList,      // children: items
    kTuple,     // children: items
    kDict,      // children: key, value, key, value, ...
    kGetAttr,   // children[0] . name
    kGetItem,   // children[0] [ children[1] ]
    kSlice,     // children: start, stop, step (each may be null); only inside kGetItem
    kCall,      // children[0] ( children[1..], keywords, *dyn_args, **dyn_kwargs )
    kFilter,    // children[0] (null: the body of a filter block) | name ( children[1..] ... )
    kTest,      // children[0] is name ( children[1..] ... )
    kNot,       // not children[0]
    kNeg,       // - children[0]
    kPos,       // + children[0]
    kBinary,    // children[0] op children[1]; op is one of + - * / // % **
    kAnd,       // children[0] and children[1]
    kOr,        // children[0] or children[1]
    kConcat,    // children joined with ~
    kCompare,   // children[0] ops[0] children[1] ops[1] children[2] ...
    kCondExpr,  // children[1] if children[0] else children[2] (children[2] may be null)
  };

  Kind kind;
  SourcePos pos;
  Value value;
  std::string name;               // kName, kGetAttr, kFilter, kTest; kBinary: the operator
  std::vector<std::string> ops;   // kCompare: "==", "!=", "<", "<=", ">", ">=", "in", "notin"
  std::vector<ExprPtr> children;  // see above; may hold nulls where noted
  std::vector<std::pair<std::string, ExprPtr>> keywords;  // kCall, kFilter, kTest
  ExprPtr dyn_args;                                       // *args
  ExprPtr dyn_kwargs;                                     // **kwargs

  Expr(Kind k, SourcePos p) : kind(k), pos(p) {}
};

// Left-hand side of set / for: a name, a tuple of targets, or `ns.attr`.
struct Target {
  enum class Kind { kName, kTuple, kNamespaceAttr };
  Kind kind = Kind::kName;
  SourcePos pos;
  std::string name;           // kName; kNamespaceAttr: the namespace variable
  std::string attr;           // kNamespaceAttr
  std::vector<Target> items;  // kTuple
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind {
    kText,         // text
    kOutput,       // {{ expr }}
    kIf,           // branches: (condition, body)...; a null condition is the else branch
    kFor,          // for target in expr [if filter] [recursive]: body [else: else_body]
    kSet,          // set target = expr
    kSetBlock,     // set target [| filters] : body endset   (expr: filter chain or null)
    kMacro,        // macro name(params = defaults): body
    kCallBlock,    // call(params) expr: body   (expr is the call; caller() renders body)
    kFilterBlock,  // filter expr: body          (expr: filter chain over the body)
    kWith,         // with targets = values: body
    kScope,        // a block / generation tag: body rendered in place
    kBreak,
    kContinue,
  };

  Kind kind;
  SourcePos pos;
  std::string text;
  ExprPtr expr;
  Target target;
  ExprPtr filter;
  bool recursive = false;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // for the last defaults.size() params
  // kMacro / kCallBlock: whether the body reads these names; a macro that does not refuses extra
  // positional arguments, unknown keywords and a caller, as jinja2 does.
  bool uses_varargs = false;
  bool uses_kwargs = false;
  bool uses_caller = false;
  std::vector<Target> with_targets;
  std::vector<ExprPtr> with_values;

  Stmt(Kind k, SourcePos p) : kind(k), pos(p) {}
};

}  // namespace tessera::jinja
