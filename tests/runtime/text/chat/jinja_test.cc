// The Jinja interpreter: the snippets make_cases.py rendered with jinja2 in transformers'
// environment (text and error messages), then hand-written checks of expressions, filters,
// whitespace control, loops, macros, namespaces, errors and the Python formatting helpers.
#include "runtime/text/chat/jinja.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>

#include "nlohmann/json.hpp"
#include "runtime/text/chat/py_json.h"
#include "runtime/text/chat/py_text.h"

namespace tessera::jinja {
namespace {

using Json = nlohmann::ordered_json;
using Vars = std::vector<std::pair<std::string, Value>>;

absl::StatusOr<std::string> Render(const std::string& source, const Vars& vars = {}) {
  absl::StatusOr<Template> t = Template::Parse(source);
  if (!t.ok()) return t.status();
  return t->Render(vars);
}

std::string R(const std::string& source, const Vars& vars = {}) {
  absl::StatusOr<std::string> text = Render(source, vars);
  EXPECT_TRUE(text.ok()) << source << " -> " << text.status();
  return text.ok() ? *text : "<error>";
}

std::string Err(const std::string& source, const Vars& vars = {}) {
  absl::StatusOr<std::string> text = Render(source, vars);
  EXPECT_FALSE(text.ok()) << source << " rendered " << *text;
  return text.ok() ? "" : std::string(text.status().message());
}

Value J(const char* json) { return FromJson(Json::parse(json)); }

TEST(JinjaCases, MatchJinja2) {
  std::ifstream in(std::string(TESSERA_SOURCE_DIR) + "/tests/data/qwen3/jinja_cases.json");
  std::stringstream ss;
  ss << in.rdbuf();
  const Json cases = Json::parse(ss.str());
  int checked = 0;
  for (const Json& c : cases["cases"]) {
    SCOPED_TRACE(c["source"].get<std::string>());
    Vars vars;
    for (const auto& [k, v] : c["vars"].items()) vars.emplace_back(k, FromJson(v));
    absl::StatusOr<std::string> text = Render(c["source"].get<std::string>(), vars);
    if (c.contains("text")) {
      EXPECT_TRUE(text.ok()) << text.status();
      if (text.ok()) {
        EXPECT_EQ(*text, c["text"].get<std::string>());
      }
    } else if (text.ok()) {
      ADD_FAILURE() << "jinja2 failed with: " << c["error"] << "; we rendered " << *text;
    } else {
      EXPECT_NE(std::string(text.status().message()).find(c["error"].get<std::string>()),
                std::string::npos)
          << "ours: " << text.status() << "\njinja2: " << c["error"];
    }
    ++checked;
  }
  EXPECT_GT(checked, 100);
}

TEST(Jinja, Expressions) {
  EXPECT_EQ(R("{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 2 ** 3 ** 2 }}|{{ 7 // -2 }}|{{ 7 % -2 }}"),
            "7|9|64|-4|-1");
  EXPECT_EQ(R("{{ 1 < 2 < 3 }}{{ 1 < 3 < 2 }}{{ 'b' > 'a' }}{{ 'x' in 'xyz' }}{{ 1 not in [1] }}"),
            "TrueFalseTrueTrueFalse");
  EXPECT_EQ(
      R("{{ a or b }}|{{ a and b }}|{{ not a }}", {{"a", Value::String("")}, {"b", Value::Int(3)}}),
      "3||True");
  EXPECT_EQ(R("{{ 'y' if c else 'n' }}{{ 'z' if not c }}", {{"c", Value::Bool(false)}}), "nz");
  EXPECT_EQ(
      R("{{ [1, 2][-1] }}{{ {'a': {'b': 5}}.a.b }}{{ {'a': 1}['a'] }}{{ x.0 }}", {{"x", J("[7]")}}),
      "2517");
  EXPECT_EQ(R("{{ 'abcdef'[1:5:2] }}{{ [1, 2, 3][::-1] }}{{ 'héllo'[-4:] }}"), "bd[3, 2, 1]éllo");
  EXPECT_EQ(R("{{ 9223372036854775807 }}"), "9223372036854775807");
  EXPECT_NE(Err("{{ 9223372036854775807 + 1 }}").find("overflow"), std::string::npos);
}

TEST(Jinja, PrintsLikePython) {
  EXPECT_EQ(R("{{ x }}", {{"x", J(R"({"a": [1, 2.0, null, true, "q'", "q\""], "b": {}})")}}),
            R"({'a': [1, 2.0, None, True, "q'", 'q"'], 'b': {}})");
  EXPECT_EQ(R("{{ (1,) }}{{ (1, 'a') }}{{ none }}{{ undefined_name }}"), "(1,)(1, 'a')None");
}

TEST(Jinja, UndefinedSemantics) {
  // Printing, truthiness, iteration, length, default: fine. Arithmetic, attributes, calls: errors.
  EXPECT_EQ(R("[{{ u }}]{{ u is defined }}{{ u|length }}{% for x in u %}x{% endfor %}{{ u or 1 }}"),
            "[]False01");
  EXPECT_EQ(R("{{ d.missing is defined }}{{ d.missing|default('dflt') }}", {{"d", J("{}")}}),
            "Falsedflt");
  EXPECT_EQ(Err("{{ u.attr }}"), "line 1, column 4: 'u' is undefined");
  EXPECT_EQ(Err("{{ d.a.b }}", {{"d", J("{}")}}),
            "line 1, column 4: 'dict object' has no attribute 'a'");
  EXPECT_EQ(Err("{{ u + 1 }}"), "line 1, column 4: 'u' is undefined");
  EXPECT_EQ(Err("{{ u() }}"), "line 1, column 4: 'u' is undefined");
  EXPECT_EQ(Err("{{ [1][5].x }}"), "line 1, column 4: list object has no element 5");
}

TEST(Jinja, Filters) {
  EXPECT_EQ(R("{{ '  a  '|trim }}|{{ 'ab'|upper }}|{{ 'AB'|lower }}|{{ 'ab cd'|title }}|"
              "{{ 'aB'|capitalize }}|{{ [1, 2]|length }}|{{ [1, 2]|join('-') }}|"
              "{{ 'aXa'|replace('a', 'b') }}|{{ 3|string ~ 'x' }}|{{ '7'|int + 1 }}"),
            "a|AB|ab|Ab Cd|Ab|2|1-2|bXb|3x|8");
  EXPECT_EQ(R("{{ x|first }}{{ x|last }}{{ x|list }}{{ x|reverse|list }}{{ x|sort|first }}",
              {{"x", J("[3, 1, 2]")}}),
            "32[3, 1, 2][2, 1, 3]1");
  EXPECT_EQ(R("{{ d|items|list }}{{ d|dictsort }}", {{"d", J(R"({"b": 1, "a": 2})")}}),
            "[('b', 1), ('a', 2)][('a', 2), ('b', 1)]");
  const Value msgs =
      J(R"([{"role": "system", "n": 1}, {"role": "user", "n": 2}, {"role": "user"}])");
  EXPECT_EQ(R("{{ m|selectattr('role', 'equalto', 'user')|list|length }}"
              "{{ m|rejectattr('role', 'equalto', 'user')|map(attribute='role')|first }}"
              "{{ m|map(attribute='n', default=0)|list }}{{ m|selectattr('n')|list|length }}",
              {{"m", msgs}}),
            "2system[1, 2, 0]2");
  EXPECT_EQ(R("{{ 'a\nb'|indent(2) }}|{{ 'a\nb'|indent(2, first=true) }}"), "a\n  b|  a\n  b");
  EXPECT_EQ(R("{{ u|default('x') }}{{ ''|default('y', true) }}{{ 0|default('z') }}"), "xy0");
  EXPECT_EQ(R("{{ [1, 2]|tojson }}{{ 'é'|tojson }}{{ {'a': 1.5}|tojson(indent=1) }}"),
            "[1, 2]\"é\"{\n \"a\": 1.5\n}");
  EXPECT_EQ(R("{{ x|safe }}{{ 'a<b'|e }}", {{"x", Value::Int(1)}}), "1a&lt;b");
}

TEST(Jinja, GeneratorsAreOneShotAndTruthy) {
  // jinja2's map/select return generators: truthy when empty, no len(), consumed once.
  EXPECT_EQ(R("{% if []|select %}truthy{% endif %}"), "truthy");
  EXPECT_NE(Err("{{ [1]|map('string')|length }}").find("has no len()"), std::string::npos);
  EXPECT_EQ(R("{% set g = [1, 2]|map('string') %}{{ g|list }}{{ g|list }}"), "['1', '2'][]");
}

TEST(Jinja, Tests) {
  EXPECT_EQ(R("{{ x is string }}{{ x is mapping }}{{ x is iterable }}{{ x is sequence }}"
              "{{ x is number }}{{ x is none }}{{ x is defined }}",
              {{"x", Value::String("s")}}),
            "TrueFalseTrueTrueFalseFalseTrue");
  EXPECT_EQ(R("{{ f is false }}{{ f is true }}{{ 0 is false }}{{ f is boolean }}{{ 1 is integer }}"
              "{{ 1.0 is float }}{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}",
              {{"f", Value::Bool(false)}}),
            "TrueFalseFalseTrueTrueTrueTrueTrueTrue");
  EXPECT_EQ(R("{{ x is not none }}{{ not x is none }}", {{"x", Value::None()}}), "FalseFalse");
}

TEST(Jinja, WhitespaceControl) {
  // trim_blocks: newline after a block tag goes; lstrip_blocks: indentation before it goes.
  EXPECT_EQ(R("<ul>\n  {% for i in [1, 2] %}\n  <li>{{ i }}</li>\n  {% endfor %}\n</ul>"),
            "<ul>\n  <li>1</li>\n  <li>2</li>\n</ul>");
  // Expression tags keep their whitespace.
  EXPECT_EQ(R("  {{ 'x' }}\n  {{ 'y' }}\n"), "  x\n  y");
  EXPECT_EQ(R("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(R("a\n  {%+ if true %}b{% endif %}"), "a\n  b");
  EXPECT_EQ(R("{% if true +%}\nb{% endif %}"), "\nb");
  EXPECT_EQ(R("a {# note #} b\n  {# own line #}\nc"), "a  b\nc");
  EXPECT_EQ(R("x\r\ny\rz\n"), "x\ny\nz");  // newlines normalised, one trailing newline dropped
  EXPECT_EQ(R("{% raw %}{{ not parsed }}{% endraw %}"), "{{ not parsed }}");
}

TEST(Jinja, LoopVariables) {
  EXPECT_EQ(R("{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
              "{{ loop.revindex0 }}{{ loop.first|int }}{{ loop.last|int }}{{ loop.length }},"
              "{% endfor %}"),
            "1032103,2121003,3210013,");
  EXPECT_EQ(R("{% for x in [1, 2, 3] if x > 1 %}{{ loop.index }}/{{ loop.length }} {% endfor %}"),
            "1/2 2/2 ");
  EXPECT_EQ(
      R("{% for x in [1, 2] %}{{ loop.previtem|default('-') }}{{ loop.nextitem|default('-') }}"
        "{% endfor %}"),
      "-21-");
  EXPECT_EQ(R("{% for x in [] %}a{% else %}b{% endfor %}"), "b");
  EXPECT_EQ(R("{% for i in range(10) %}{% if i > 2 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
            "012");
  EXPECT_EQ(R("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}"), "37");
  EXPECT_EQ(R("{% for x in [1] %}{% for y in [2] %}{{ loop.depth }}{% endfor %}{% endfor %}"), "1");
}

TEST(Jinja, ScopingMatchesJinja2) {
  // A set inside a loop body does not survive the iteration; a namespace carries state out.
  EXPECT_EQ(R("{% set x = 0 %}{% for i in [1, 2] %}{% set x = x + i %}{% endfor %}{{ x }}"), "0");
  EXPECT_EQ(R("{% set ns = namespace(x=0) %}{% for i in [1, 2] %}{% set ns.x = ns.x + i %}"
              "{% endfor %}{{ ns.x }}"),
            "3");
  EXPECT_EQ(R("{% if true %}{% set y = 1 %}{% endif %}{{ y }}"), "1");
  EXPECT_EQ(Err("{% set n = 1 %}{% set n.a = 2 %}"),
            "line 1, column 19: cannot assign attribute on non-namespace object");
}

TEST(Jinja, Macros) {
  EXPECT_EQ(R("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
              "{{ greet('a') }} {{ greet('b', '?') }} {{ greet(punct='.', name='c') }}"),
            "Hi a! Hi b? Hi c.");
  EXPECT_EQ(R("{% macro m(a) %}{{ a }}{{ varargs|list }}{{ kwargs }}{% endmacro %}"
              "{{ m(1, 2, k=3) }}"),
            "1[2]{'k': 3}");
  EXPECT_EQ(R("{% macro box() %}[{{ caller() }}]{% endmacro %}{% call box() %}in{% endcall %}"),
            "[in]");
  EXPECT_NE(Err("{% macro r() %}{{ r() }}{% endmacro %}{{ r() }}").find("recursion"),
            std::string::npos);
  EXPECT_NE(Err("{% macro m(a) %}{% endmacro %}{{ m(1, a=2) }}").find("multiple values"),
            std::string::npos);
}

TEST(Jinja, SetBlocksFiltersAndWith) {
  EXPECT_EQ(R("{% set x %}a{{ 1 }}{% endset %}{{ x }}{% set y | upper %}b{% endset %}{{ y }}"),
            "a1B");
  EXPECT_EQ(R("{% filter trim %}  z  {% endfilter %}|{% with a = 2 %}{{ a }}{% endwith %}{{ a }}"),
            "z|2");
  EXPECT_EQ(R("{% generation %}kept{% endgeneration %}"), "kept");
}

TEST(Jinja, ErrorsNameLineAndColumn) {
  EXPECT_EQ(Err("line one\n{{ 'a' + 1 }}"),
            "line 2, column 4: can only concatenate str (not \"int\") to str");
  EXPECT_EQ(Err("{% for x in [1] %}\n  {{ raise_exception('bad ' ~ x) }}\n{% endfor %}"),
            "line 2, column 6: template raised an exception: bad 1");
  EXPECT_EQ(Err("{{ x|nope }}"), "line 1, column 6: No filter named 'nope'.");
  EXPECT_EQ(Err("{% if x %}\n{% endfor %}"),
            "line 2, column 4: Encountered unknown tag 'endfor'. Jinja was looking for the "
            "following tags: 'elif' or 'else' or 'endif'. The innermost block that needs to be "
            "closed is 'if'.");
  EXPECT_EQ(Err("{% for x in y %}"),
            "line 1, column 17: Unexpected end of template. Jinja was looking for the following "
            "tags: 'endfor' or 'else'. The innermost block that needs to be closed is 'for'.");
  EXPECT_EQ(Err("{{ 1 + }}"), "line 1, column 8: unexpected 'end of print statement'");
  EXPECT_EQ(Err("héllo {{ ' }}"), "line 1, column 10: unexpected char \"'\" at 9");
  EXPECT_EQ(Err("{% break %}"), "line 1, column 4: 'break' outside loop");
  EXPECT_NE(Err("{% include 'x' %}").find("not supported"), std::string::npos);
  EXPECT_NE(Err(std::string("{{ 'a\xff' }}")).find("not valid UTF-8"), std::string::npos);
  std::string deep(300, '(');
  EXPECT_NE(Err("{{ " + deep + "1" + std::string(300, ')') + " }}").find("nested too deeply"),
            std::string::npos);
}

TEST(Jinja, SandboxRefusesMutation) {
  EXPECT_EQ(Err("{{ [1].append(2) }}"),
            "line 1, column 4: access to attribute 'append' of 'list' object is unsafe.");
  EXPECT_NE(Err("{{ namespace(_x=1) }}").find("underscore-prefixed"), std::string::npos);
}

TEST(Jinja, ParseOnceRenderMany) {
  absl::StatusOr<Template> t = Template::Parse("{{ x * 2 }}");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t->Render({{"x", Value::Int(2)}}), "4");
  EXPECT_EQ(*t->Render({{"x", Value::String("ab")}}), "abab");
  const Template copy = *t;
  EXPECT_EQ(*copy.Render({{"x", Value::Float(0.5)}}), "1.0");
}

// --- Python formatting helpers

TEST(PyText, FloatRepr) {
  const std::pair<double, const char*> cases[] = {
      {0.0, "0.0"},
      {-0.0, "-0.0"},
      {1.0, "1.0"},
      {0.1, "0.1"},
      {1e16, "1e+16"},
      {1e15, "1000000000000000.0"},
      {1e-4, "0.0001"},
      {1e-5, "1e-05"},
      {1.5e-7, "1.5e-07"},
      {123.456, "123.456"},
      {1e100, "1e+100"},
      {5e-324, "5e-324"},
      {0.1 + 0.2, "0.30000000000000004"},
      {2.5e16, "2.5e+16"},
      {-1234.5, "-1234.5"},
      {INFINITY, "inf"},
      {-INFINITY, "-inf"},
      {NAN, "nan"},
  };
  for (const auto& [v, want] : cases) EXPECT_EQ(PyReprFloat(v), want) << v;
}

TEST(PyText, StringRepr) {
  EXPECT_EQ(PyReprString("a'b"), "\"a'b\"");
  EXPECT_EQ(PyReprString("a'b\""), "'a\\'b\"'");
  EXPECT_EQ(PyReprString("\n\t\\\x01\x7f"), "'\\n\\t\\\\\\x01\\x7f'");
  EXPECT_EQ(PyReprString("é😀\xc2\xa0\u2028"), "'é😀\\xa0\\u2028'");
}

TEST(PyText, StripSplitCase) {
  EXPECT_EQ(PyStrip("\u3000 x \n", std::nullopt, true, true), "x");
  EXPECT_EQ(PyStrip("xxaxx", "x", true, false), "axx");
  EXPECT_EQ(PySplit("  a  b ", std::nullopt, -1), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(PySplit("a,b,c", ",", 1), (std::vector<std::string>{"a", "b,c"}));
  EXPECT_EQ(PyRSplit("a,b,c", ",", 1), (std::vector<std::string>{"a,b", "c"}));
  EXPECT_EQ(PyRSplit(" a b c ", std::nullopt, 1), (std::vector<std::string>{" a b", "c"}));
  EXPECT_EQ(PySplitLines("a\r\nb\u2028c\n", false), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(PyReplace("abc", "", "-", -1), "-a-b-c-");
  EXPECT_EQ(PyUpper("straße"), "STRASSE");
  EXPECT_EQ(PyTitle("hello wORLD's"), "Hello World'S");
  EXPECT_EQ(PyCapitalize("éCOLE"), "École");
}

TEST(PyJson, DumpsLikePython) {
  const Value v = J(R"({"b": [1, 2.0, "é\u0001", null], "a": {}, "c": []})");
  EXPECT_EQ(*PyJsonDumps(v, {}), R"({"b": [1, 2.0, "é\u0001", null], "a": {}, "c": []})");
  JsonDumpsOptions indented;
  indented.indent = "  ";
  EXPECT_EQ(*PyJsonDumps(v, indented),
            "{\n  \"b\": [\n    1,\n    2.0,\n    \"é\\u0001\",\n    null\n  ],\n  \"a\": {},\n"
            "  \"c\": []\n}");
  JsonDumpsOptions ascii;
  ascii.ensure_ascii = true;
  ascii.sort_keys = true;
  ascii.item_separator = ",";
  ascii.key_separator = ":";
  EXPECT_EQ(*PyJsonDumps(J(R"({"z": "é😀", "a": 1e-05})"), ascii),
            R"({"a":1e-05,"z":"\u00e9\ud83d\ude00"})");
  EXPECT_FALSE(PyJsonDumps(Value(), {}).ok());
}

}  // namespace
}  // namespace tessera::jinja
