#!/usr/bin/env python3
"""Generates the committed chat-template test cases with Hugging Face transformers.

Run in the reference environment (scripts/install-test-deps.sh installs transformers and jinja2):
    python3 tests/runtime/text/chat/make_cases.py
It rewrites
    tests/data/qwen3/chat_template_cases.json   conversations rendered by apply_chat_template with
                                                the Qwen3 template of tokenizer_config.json and the
                                                original Qwen3, Qwen2.5 and QwQ templates
    tests/data/qwen3/jinja_cases.json           Jinja snippets rendered in transformers' chat
                                                template environment (text, or the error message)
chat_template_test.cc and jinja_test.cc check that tessera renders every case identically.
"""

import json
import os
import sys

import jinja2
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
DATA = os.path.join(ROOT, "tests", "data", "qwen3")

TEMPLATES = {
    "qwen3": {"dir": "tokenizer-qwen3-0.6b"},
    "qwen3-original": {"file": "chat-templates-llama.cpp/Qwen-Qwen3-0.6B.jinja"},
    "qwen2.5": {"file": "chat-templates-llama.cpp/Qwen-Qwen2.5-7B-Instruct.jinja"},
    "qwq": {"file": "chat-templates-llama.cpp/Qwen-QwQ-32B.jinja"},
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city. Température en °C — ünïcödé stays as is.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1.0, "maximum": 1e16, "default": 1},
                "precision": {"type": "number", "multipleOf": 1e-05},
            },
            "required": ["city"],
        },
    },
}
CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression.\nMultiline\tdescription with a \\ backslash.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]},
    },
}
TOOLS = {"weather_calc": [WEATHER, CALCULATOR], "empty": []}


def call(name, arguments, wrap=True):
    fn = {"name": name, "arguments": arguments}
    return {"type": "function", "function": fn} if wrap else fn


CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "Hello!"}],
    "system_user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "multi_turn_inline_think": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "multi_turn_reasoning_field": [
        {"role": "system", "content": "Be concise."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hi there.", "reasoning_content": "Greet back."},
        {"role": "user", "content": "And now?"},
    ],
    "reasoning_after_last_query": [
        {"role": "user", "content": "Question one?"},
        {"role": "assistant", "content": "\n\nAnswer one.", "reasoning_content": "\nThinking one.\n"},
    ],
    "inline_think_after_last_query": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "<think>\nR\n</think>\n\nA"},
    ],
    "reasoning_aliases": [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "x", "reasoning": "via reasoning"},
        {"role": "user", "content": "Two"},
        {"role": "assistant", "content": "y", "thinking": "via thinking"},
    ],
    "tool_call_dict_args": [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            call("get_weather", {"city": "Paris", "unit": "celsius"}),
            call("get_weather", {"city": "東京", "unit": "celsius"})]},
        {"role": "tool", "content": "{\"temperature\": 18}"},
        {"role": "tool", "content": "{\"temperature\": 25}"},
        {"role": "assistant", "content": "Paris: 18 °C, Tokyo: 25 °C."},
    ],
    "tool_call_string_args": [
        {"role": "user", "content": "Compute 2*21"},
        {"role": "assistant", "content": "", "tool_calls": [
            call("calculate", "{\"expression\": \"2 * 21\"}")]},
        {"role": "tool", "content": "42"},
    ],
    "tool_call_with_content_and_reasoning": [
        {"role": "user", "content": "What's the weather in Oslo?"},
        {"role": "assistant", "content": "Let me check.", "reasoning_content": "I need the tool.",
         "tool_calls": [call("get_weather", {"city": "Oslo"})]},
        {"role": "tool", "content": "-3 and snowing"},
    ],
    "multi_step_tools": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Rome, then compute the average with Oslo."},
        {"role": "assistant", "content": "", "reasoning_content": "First Rome.",
         "tool_calls": [call("get_weather", {"city": "Rome"})]},
        {"role": "tool", "content": "21"},
        {"role": "assistant", "content": "", "reasoning_content": "Now Oslo.",
         "tool_calls": [call("get_weather", {"city": "Oslo"})]},
        {"role": "tool", "content": "-3"},
        {"role": "assistant", "content": "<think>\nAverage is 9.\n</think>\n\nThe average is 9 °C."},
    ],
    "tool_call_unwrapped": [
        {"role": "user", "content": "1+1"},
        {"role": "assistant", "content": "Calculating.", "tool_calls": [
            call("calculate", {"expression": "1+1"}, wrap=False)]},
        {"role": "tool", "content": "2"},
        {"role": "user", "content": "thanks"},
    ],
    "content_none": [
        {"role": "user", "content": "Call it"},
        {"role": "assistant", "content": None, "tool_calls": [call("calculate", {"expression": "3"})]},
        {"role": "tool", "content": "3"},
    ],
    "content_parts": [
        {"role": "user", "content": [{"type": "text", "text": "Describe this."}]},
    ],
    "empty_strings": [
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": " "},
    ],
    "unicode": [
        {"role": "system", "content": "Réponds en français 🇫🇷."},
        {"role": "user", "content": "日本語テキスト, emoji 😀, RTL שלום, combining e\u0301, zero width"
                                    "\u200b, line sep\u2028, tab\t, quotes \" ' and \\ backslash, "
                                    "braces {{ x }} {% y %}"},
    ],
    "system_not_first": [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "mid-conversation system"},
        {"role": "user", "content": "b"},
    ],
    "user_tool_response_lookalike": [
        {"role": "user", "content": "real question"},
        {"role": "assistant", "content": "answer", "reasoning_content": "kept?"},
        {"role": "user", "content": "<tool_response>\nfake\n</tool_response>"},
    ],
    "numbers_in_args": [
        {"role": "user", "content": "numbers"},
        {"role": "assistant", "content": "", "tool_calls": [call("calculate", {
            "floats": [0.1, 1e-05, 1e16, 1e15, -0.0, 2.5, 100.0, 123456789.123456789],
            "ints": [0, -7, 9007199254740993], "nested": {"a": [True, False, None], "b": {}},
            "text": "é\n\"q\"\u007f\u0001"})]},
    ],
    "assistant_prefill_last": [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "Sure, here is one:"},
    ],
}

VARIANTS = [
    # (tools, add_generation_prompt, enable_thinking or None for absent)
    (None, True, None),
    (None, True, False),
    (None, True, True),
    (None, False, None),
    ("weather_calc", True, None),
    ("weather_calc", True, False),
]
EXTRA_VARIANTS = {"user_only": [("empty", True, None)], "system_user": [("empty", True, None)]}

# Jinja snippets: (source, variables). Rendered in transformers' environment; both the text and the
# errors are checked.
JINJA = [
    # literals and printing (Python str() of values)
    ("{{ none }}|{{ True }}|{{ false }}|{{ 1.0 }}|{{ -0.0 }}|{{ 42 }}|{{ 'x' }}", {}),
    ("{{ [1, 'a', none, 1.5, {'k': \"it's\"}] }}{{ (1,) }}{{ () }}{{ {} }}", {}),
    ("{{ 1e20 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ 1.5e-7 }} {{ 3.0 }} {{ 0.1 + 0.2 }}", {}),
    ("{{ x }}", {"x": [1.0, -0.0, 1e-07, 123456789.123, 1e300, 5e-324]}),
    ("{{ 'tab\\there' }}|{{ \"q'\" }}|{{ ['a\\nb', \"it's\", 'say \"hi\"', 'both \\' \"'] }}", {}),
    ("{{ ['\\x00', '\\x7f', '\\xa0', '\\u200b', 'é', '😀', '\\u2028'] }}", {}),
    ("{{ '\\u00e9\\x41\\101\\n\\\\' }}{{ 'a' 'b' \"c\" }}", {}),
    ("{{ 0x1F }} {{ 0o17 }} {{ 0b101 }} {{ 1_000 }} {{ 1_0.5e1 }} {{ 1E3 }}", {}),
    # operators
    ("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 / 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }}", {}),
    ("{{ 'ab' * 3 }}{{ 3 * [1] }}{{ [1] + [2] }}{{ (1,) + (2,) }}{{ 'a' ~ 1 ~ none ~ u ~ [1] }}", {}),
    ("{{ 1 + True }} {{ True + True }} {{ 1 + 1.5 }} {{ 10 / 4 }} {{ 10 // 4.0 }} {{ -3|abs }} {{ -(3) }} {{ +3 }}", {}),
    ("{{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 1 + 2 * 3 - 4 / 2 }} {{ (1 + 2) * 3 }} {{ 1 + 2 ~ 3 }}", {}),
    ("{{ 1 == 1.0 }}{{ true == 1 }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 'a' < 'b' }}{{ [1, 2] < [1, 3] }}{{ (1,2) == [1,2] }}", {}),
    ("{{ 'a' in 'cat' }}{{ 'a' in ['a'] }}{{ 'k' in {'k': 1} }}{{ 'z' not in 'cat' }}{{ 1 in u }}", {}),
    ("{{ x and y }}|{{ x or y }}|{{ y or 'd' }}|{{ not x }}|{{ u or 'undefined is falsy' }}|{{ 0 and u.boom }}", {"x": "X", "y": ""}),
    ("{{ 'yes' if x else 'no' }}|{{ 'yes' if u }}|{{ 1 if false else 2 if false else 3 }}", {"x": [0]}),
    ("{{ {'a': 1} == {'a': 1.0} }}{{ [1, [2]] == [1, [2]] }}{{ none == none }}{{ u == u }}{{ u == none }}", {}),
    # strings
    ("{{ s.upper() }}|{{ s.lower() }}|{{ s.title() }}|{{ s.capitalize() }}|{{ s.swapcase() }}", {"s": "hÉllo wORLD ß"}),
    ("{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.strip(' \\n') }}|{{ s.strip('x') }}", {"s": "\u3000 \n hi \t\n"}),
    ("{{ s.split() }}{{ s.split(None, 1) }}{{ s.rsplit(None, 1) }}{{ s.split(' ') }}{{ s.split('b', 1) }}{{ s.rsplit('b', 1) }}", {"s": "  a b  c b "}),
    ("{{ s.startswith('ab') }}{{ s.startswith(('x', 'a')) }}{{ s.endswith('bc') }}{{ s.find('c') }}{{ s.rfind('b') }}{{ s.count('b') }}{{ s.replace('b', 'X', 1) }}", {"s": "abcbc"}),
    ("{{ s[0] }}{{ s[-1] }}{{ s[1:3] }}{{ s[::-1] }}{{ s[::2] }}{{ s[10] }}|{{ s|length }}{{ s|list }}", {"s": "héllo😀"}),
    ("{{ 'a,b,,c'.split(',') }}{{ 'x'.join(['1', '2']) }}{{ 'a\\nb\\r\\nc'.splitlines() }}{{ '42'.isdigit() }}{{ 'ab'.isalpha() }}", {}),
    ("{{ '{} and {x}: {!r} {:>5} {:.2f} {:,}'.format('a', 'q', 'b', 3.14159, 1234567, x='X') }}|{{ '{0}{1}{0}'.format('a', 'b') }}", {}),
    ("{{ '%s-%d-%05.1f-%x-%r' % ('a', 3, 2.25, 255, 'q') }}|{{ '%(a)s' % {'a': 1} }}|{{ '%s' % none }}", {}),
    ("{{ '{0}{}'.format(1, 2) }}", {}),
    ("{{ 'abc'.center(9, '*') }}|{{ 'abc'.ljust(5) }}|{{ 'abc'.rjust(5, '.') }}|{{ '-7'.zfill(4) }}|{{ 'a=b=c'.partition('=') }}", {}),
    # filters
    ("{{ 'hello world-foo(bar'|title }}|{{ 'HELLO'|lower }}|{{ 'x'|upper }}|{{ ' x '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'abc'|capitalize }}", {}),
    ("{{ [3, 1, 2]|sort }}{{ ['b', 'A', 'c']|sort }}{{ ['b', 'A']|sort(case_sensitive=true) }}{{ [3, 1]|sort(reverse=true) }}", {}),
    ("{{ users|sort(attribute='age')|map(attribute='name')|join(', ') }}|{{ users|map(attribute='missing', default='-')|list }}", {"users": [{"name": "b", "age": 30}, {"name": "a", "age": 20}]}),
    ("{{ users|selectattr('active')|map(attribute='name')|list }}{{ users|rejectattr('active')|list|length }}{{ users|selectattr('age', 'gt', 25)|list|length }}", {"users": [{"name": "b", "age": 30, "active": True}, {"name": "a", "age": 20, "active": False}]}),
    ("{{ messages|selectattr('role', 'equalto', 'user')|list|length }}{% if messages|selectattr('role', 'equalto', 'tool') %}generators are truthy{% endif %}", {"messages": [{"role": "user"}, {"role": "assistant"}]}),
    ("{{ [1, 2, 3, 4]|select('odd')|list }}{{ [1, 2, 3, 4]|reject('even')|list }}{{ [0, 1, '', 'a']|select|list }}{{ ['A', 'b']|map('lower')|list }}", {}),
    ("{{ [1, 2]|first }}{{ [1, 2]|last }}{{ 'ab'|first }}{{ {'k': 1}|first }}{{ []|first }}|{{ [1, 2, 3]|sum }}{{ [1.5, 2]|sum }}{{ items|sum(attribute='n') }}", {"items": [{"n": 1}, {"n": 2}]}),
    ("{{ [1, 5, 2]|max }}{{ [1, 5, 2]|min }}{{ ['b', 'A']|min }}{{ ['b', 'A']|max }}{{ [1, 1, 2, 'a', 'A']|unique|list }}{{ [1, 2, 3]|reverse|list }}{{ 'abc'|reverse }}", {}),
    ("{{ x|default('d') }}|{{ ''|default('e', true) }}|{{ none|default('f') }}|{{ 0|d('g', true) }}|{{ x|default }}", {}),
    ("{{ 'a\\nb\\n\\nc'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent('> ', blank=true) }}", {}),
    ("{{ '42'|int + 1 }} {{ '4.5'|float }} {{ 'x'|int }} {{ 3.7|int }} {{ '0x1A'|int(0, 16) }} {{ '12.7'|int }} {{ 'x'|float(1.5) }} {{ true|int }}", {}),
    ("{{ 42.55|round }} {{ 42.55|round(1, 'floor') }} {{ 2.675|round(2) }} {{ 2.5|round }} {{ 3|round }} {{ 42.51|round(1, 'ceil') }}", {}),
    ("{{ d|dictsort }}{{ d|dictsort(by='value') }}{{ d|dictsort(reverse=true) }}{{ d|items|list }}{{ d.items()|list }}", {"d": {"b": 1, "a": 2, "C": 0}}),
    ("{{ d.get('a') }}{{ d.get('z', 9) }}{{ d.get('z') }}{{ d.keys()|list }}{{ d.values()|list }}{{ d|length }}{{ d|list }}", {"d": {"a": 1, "b": 2}}),
    ("{{ [1, 2, 3, 4, 5]|batch(2)|list }}{{ [1, 2, 3, 4, 5]|batch(2, 0)|list }}{{ [1, 2, 3, 4, 5]|slice(2)|list }}", {}),
    ("{{ 'a & <b> \"c\" \\'d\\''|e }}|{{ 1|safe }}|{{ none|string }}|{{ [1]|string }}|{{ 'one two  three'|wordcount }}", {}),
    ("{{ 'foo bar baz qux'|truncate(9) }}|{{ 'foo bar baz qux'|truncate(9, true) }}|{{ 'foo bar baz qux'|truncate(11) }}|{{ 'abc'|center(7) }}", {}),
    ("{{ '%s, %s!'|format('Hello', 'World') }}|{{ 'x'|replace('x', 'y') }}|{{ 'aaa'|replace('a', 'b', 2) }}|{{ [1, 2]|join('|') }}|{{ users|join(', ', attribute='n') }}", {"users": [{"n": 1}, {"n": 2}]}),
    ("{{ x|tojson }}", {"x": {"a": [1, 2.5, "é\"\n\t\u0001\u007f", None, True], "b": {}, "c": [], "d": 1e-05, "e": 1e16}}),
    ("{{ x|tojson(indent=2) }}|{{ x|tojson(indent='\\t') }}|{{ x|tojson(indent=0) }}", {"x": {"a": [1, {"b": []}], "c": {}}}),
    ("{{ x|tojson(separators=(',', ':')) }}|{{ x|tojson(sort_keys=true) }}|{{ x|tojson(ensure_ascii=true) }}", {"x": {"z": "é😀", "a": [1, {"d": 1, "c": 2}]}}),
    ("{{ {1: 'int key', 2.5: 'float', true: 'bool', none: 'none'}|tojson }}{{ (1, 2)|tojson }}", {}),
    ("{{ 'abc'|tojson }}{{ 1.0|tojson }}{{ none|tojson }}", {}),
    # tests
    ("{{ x is sequence }}{{ x is iterable }}{{ y is iterable }}{{ true is number }}{{ true is integer }}{{ 's' is sequence }}{{ u is iterable }}{{ u is sequence }}", {"x": {}, "y": None}),
    ("{{ x is none }}{{ x is not none }}{{ y is defined }}{{ y is undefined }}{{ 1 is odd }}{{ 2 is even }}{{ 6 is divisibleby 3 }}{{ 6 is divisibleby(4) }}", {"x": None}),
    ("{{ 'a' is string }}{{ 1 is string }}{{ {} is mapping }}{{ [] is mapping }}{{ 1.5 is float }}{{ 1 is float }}{{ true is boolean }}{{ false is false }}{{ 0 is false }}{{ true is true }}", {}),
    ("{{ 'abc' is lower }}{{ 'ABC' is upper }}{{ 'upper' is filter }}{{ 'odd' is test }}{{ 'nope' is filter }}{{ range is callable }}{{ 1 is in [1] }}{{ 3 is gt 2 }}{{ 3 is le 2 }}{{ 'a' is eq 'a' }}{{ none is sameas none }}", {}),
    ("{{ enable_thinking is defined and enable_thinking is false }}", {"enable_thinking": False}),
    # whitespace control (trim_blocks, lstrip_blocks, - and +)
    ("  {% if true %}\n  x\n  {% endif %}\n  y\n", {}),
    ("a\n{%- if true -%}\n  b  \n{%- endif %}\nc", {}),
    ("{# comment #}\nA{#- c -#}   B  {# c #}\n  {# indented comment #}\nC", {}),
    ("  {%+ if true %}kept indent{% endif +%}\nnext", {}),
    ("{% for i in [1, 2] %}\n  {{ i }}\n{% endfor %}\n", {}),
    ("{% for i in [1, 2] -%}\n  {{ i }}\n{%- endfor %}", {}),
    ("x {{- ' y ' -}} z\n  {{ 'v' }}  {%- if true %} w {% endif -%}  !", {}),
    ("\t{% set x = 1 %}\n{{ x }}\r\n{{ x }}\rend\n\n", {}),
    ("{% raw %}{{ x }}{% endraw %}|{%- raw -%}  {% y %}  {%- endraw %}|", {}),
    ("line1\n    {% if false %}\n    hidden\n    {% else %}\n    shown\n    {% endif %}\n", {}),
    ("{{ 'a' }}\n{{ 'b' }}\n", {}),
    # loops
    ("{% for m in msgs %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.previtem }}{{ loop.nextitem }}|{% endfor %}", {"msgs": [1, 2, 3]}),
    ("{% for a, b in {'x': 1, 'y': 2}.items() %}{{ a }}{{ b }}{{ loop.index }}/{{ loop.length }}{% endfor %}", {}),
    ("{% for a in [1, 2, 3, 4] if a is even %}{{ loop.index }}:{{ a }}:{{ loop.length }};{% else %}none{% endfor %}", {}),
    ("{% for a in [] %}x{% else %}empty{% endfor %}{% for a in u %}x{% else %}undefined iterates empty{% endfor %}", {}),
    ("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}", {}),
    ("{% for i in range(2) %}{% for j in range(2) %}{{ loop.index }}{{ loop.depth }}{% endfor %}{% endfor %}{{ range(1, 10, 3)|list }}{{ range(3, 0, -1)|list }}", {}),
    ("{% for x in 'ab' %}{{ x }}{% endfor %}{% for k in {'a': 1, 'b': 2} %}{{ k }}{% endfor %}{% for i in range(3) %}{{ loop.cycle('o', 'e') }}{% endfor %}", {}),
    ("{% for n in tree recursive %}[{{ n.name }}{% if n.kids %}{{ loop(n.kids) }}{% endif %}:{{ loop.depth }}]{% endfor %}", {"tree": [{"name": "a", "kids": [{"name": "b", "kids": []}]}, {"name": "c"}]}),
    ("{% for v in [1, 1, 2, 2, 1] %}{% if loop.changed(v) %}{{ v }}{% endif %}{% endfor %}", {}),
    # scoping, set, namespace, with
    ("{% for i in [1, 2, 3] %}{% if i == 1 %}{% set x = 'a' %}{% endif %}[{{ x }}]{% endfor %}[{{ x }}]", {}),
    ("{% set x = 'o' %}{% for i in [1, 2] %}[{{ x }}]{% set x = i %}[{{ x }}]{% endfor %}{{ x }}", {}),
    ("{% if true %}{% set leaked = 'yes' %}{% endif %}{{ leaked }}", {}),
    ("{% set ns = namespace(a=1, items=[]) %}{% for i in range(3) %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}{{ ns.items }}{{ ns.missing }}", {}),
    ("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set (c, d) = 'xy' %}{{ c }}{{ d }}", {}),
    ("{%- set x %}  hello {{ 1 }} {% endset -%}[{{ x }}]{% set y | upper | trim %} up {% endset %}[{{ y }}]", {}),
    ("{% with a = 1, b = 2 %}{{ a }}{{ b }}{% endwith %}[{{ a }}]", {}),
    ("{% filter upper %}abc{{ 'd' }}{% endfilter %}{% filter replace('a', 'b') %}aaa{% endfilter %}", {}),
    ("{% set d = dict(a=1, b='x') %}{{ d }}{{ dict([('k', 'v')]) }}{{ dict(d, c=3) }}", {}),
    # macros
    ("{% macro f(a, b='x') %}{{ a }}-{{ b }}{% endmacro %}{{ f(1) }}|{{ f(1, 2) }}|{{ f(b=3, a=4) }}|{{ f() }}", {}),
    ("{% macro f() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ f(1, 2, k='v') }}", {}),
    ("{% set x = 1 %}{% macro m() %}{{ x }}{% endmacro %}{% set x = 2 %}{{ m() }}{% macro m2() %}{{ y }}{% endmacro %}{% for y in [5] %}[{{ m2() }}]{% endfor %}", {}),
    ("{% macro render(item) %}<{{ item }}>{% endmacro %}{% for i in [1, 2] %}{{ render(i) }}{% endfor %}{% macro fact(n) %}{{ 1 if n <= 1 else n * fact(n - 1)|int }}{% endmacro %}{{ fact(5) }}", {}),
    ("{% macro wrap(t) %}[{{ caller() }}{{ t }}]{% endmacro %}{% call wrap('!') %}inner{% endcall %}{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}{% call(v) each([1, 2]) %}<{{ v }}>{% endcall %}", {}),
    # lookups: attribute vs item, undefined
    ("{{ d.items is callable }}|{{ d['items'] }}|{{ d.x }}|{{ d['x'] }}|{{ d[1] }}|{{ l[5] }}|{{ l.x }}|{{ none.x }}", {"d": {"x": 1, "items": "value"}, "l": [1]}),
    ("{{ u }}|{{ u|length }}|{{ u|list }}|{{ u is defined }}|{{ u|default('dflt') }}", {}),
    ("{{ messages[0].content.split('</think>')[-1].lstrip('\\n') }}", {"messages": [{"content": "<think>\nx\n</think>\n\nhi"}]}),
    ("{{ strftime_now('%Y')|length }}", {}),
    # errors (the message is compared too)
    ("{{ x.y }}", {}),
    ("{{ x.y.z }}", {"x": {}}),
    ("{{ x + 'a' }}", {}),
    ("{{ 'x' + 1 }}", {}),
    ("{{ 1 + none }}", {}),
    ("{{ 1 / 0 }}", {}),
    ("{{ [] < 1 }}", {}),
    ("{{ foo() }}", {}),
    ("{{ 'abc'() }}", {}),
    ("{{ raise_exception('Conversation roles must alternate') }}", {}),
    ("{{ x|nosuchfilter }}", {}),
    ("{{ x is nosuchtest }}", {}),
    ("{% for a, b in [1] %}{% endfor %}", {}),
    ("{% set x = 1 %}{% set x.y = 2 %}", {}),
    ("{% set ns = namespace() %}{% set ns._private = 1 %}", {}),
    ("{{ [1].append(2) }}", {}),
    ("{{ {'a': 1}|items|first|tojson }}{{ u|tojson }}", {}),
    ("{% if x %}{% endfor %}", {}),
    ("{{ 'a' }", {}),
    ("{% if true %}never closed", {}),
    ("{% unknowntag %}", {}),
    ("{{ 1 +* 2 }}", {}),
    ("{{ 'unterminated }}", {}),
    ("{% macro m(a=1, b) %}{% endmacro %}", {}),
    ("{% macro m() %}{% endmacro %}{{ m(1) }}", {}),
    ("{% macro m() %}{% endmacro %}{{ m(a=1) }}", {}),
    ("{% macro m() %}{% endmacro %}{% call m() %}x{% endcall %}", {}),
    ("{% for x in 1 %}{% endfor %}", {}),
    ("{{ range(10, 0, 0) }}", {}),
]


def main():
    tokenizer_dir = os.path.join(DATA, "tokenizer-qwen3-0.6b")
    tokenizer = hf_reference.load_tokenizer(tokenizer_dir)
    sources = {}
    for name, spec in TEMPLATES.items():
        if "file" in spec:
            with open(os.path.join(DATA, spec["file"]), encoding="utf-8") as f:
                sources[name] = f.read()
        else:
            sources[name] = None  # the tokenizer's own template
    cases = []
    for template in TEMPLATES:
        for conv_name in CONVERSATIONS:
            for tools, agp, thinking in VARIANTS + EXTRA_VARIANTS.get(conv_name, []):
                request = {"messages": CONVERSATIONS[conv_name],
                           "tools": TOOLS[tools] if tools else None,
                           "add_generation_prompt": agp}
                if thinking is not None:
                    request["enable_thinking"] = thinking
                case = {"template": template, "conversation": conv_name, "tools": tools,
                        "add_generation_prompt": agp}
                if thinking is not None:
                    case["enable_thinking"] = thinking
                case.update(hf_reference.render(tokenizer, request, sources[template]))
                cases.append(case)
    out = {
        "generated_by": "tests/runtime/text/chat/make_cases.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "special_tokens": tokenizer.special_tokens_map,
        "templates": TEMPLATES,
        "tools": TOOLS,
        "conversations": CONVERSATIONS,
        "cases": cases,
    }
    with open(os.path.join(DATA, "chat_template_cases.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")

    snippets = []
    for source, variables in JINJA:
        case = {"source": source, "vars": variables}
        case.update(hf_reference.render_jinja(source, variables))
        snippets.append(case)
    with open(os.path.join(DATA, "jinja_cases.json"), "w", encoding="utf-8") as f:
        json.dump({"generated_by": "tests/runtime/text/chat/make_cases.py",
                   "jinja2": jinja2.__version__, "cases": snippets}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum(1 for c in cases if "error" in c)
    print(f"{len(cases)} chat cases ({n_err} template errors), {len(snippets)} jinja cases")


if __name__ == "__main__":
    main()
