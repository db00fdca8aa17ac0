#!/usr/bin/env python3
"""Live check: tessera's chat templates against transformers on randomised inputs.

Each run draws fresh random conversations (roles in any order, tool calls with dict or string
arguments, reasoning fields, null and non-string content, unicode, floats of every magnitude) and
renders them with transformers' apply_chat_template and with chat_template_driver, for Qwen3's
current template and the original Qwen3, Qwen2.5 and QwQ ones; it also renders Jinja expressions
over random values (str(), repr, tojson, filters). With --tessera it also runs
`tessera chat-template --json` on some of the requests and compares text and ids with
apply_chat_template(..., tokenize=True). Any difference fails the check and prints the seed and the
input. Reproduce with --seed.

    live_check.py --driver build/tests/runtime/text/chat/chat_template_driver \
                  --data tests/data/qwen3 [--tessera build/tessera] [--seed N]
                  [--conversations 400] [--values 400] [--commands 12]
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference  # noqa: E402

TEMPLATE_FILES = {
    "qwen3-original": "chat-templates-llama.cpp/Qwen-Qwen3-0.6B.jinja",
    "qwen2.5": "chat-templates-llama.cpp/Qwen-Qwen2.5-7B-Instruct.jinja",
    "qwq": "chat-templates-llama.cpp/Qwen-QwQ-32B.jinja",
}

WORDS = ["hello", "Paris", "日本語", "émoji 😀", "שלום", "e\u0301", "tab\t", "quote \"", "it's",
         "back\\slash", "{{ x }}", "{% if %}", "<think>", "</think>", "<tool_call>",
         "<tool_response>", "</tool_response>", "\n", "\n\n", " ", "\u2028", "\x85", "\u00a0",
         "\x01", "ß", "İ", "<|im_end|>", "100%", "%s", "{}", ""]


def rand_text(rng, max_words=6):
    return "".join(rng.choice(WORDS) + rng.choice(["", " ", "\n"])
                   for _ in range(rng.randint(0, max_words)))


def rand_float(rng):
    kind = rng.randrange(6)
    if kind == 0:
        return rng.uniform(-1000, 1000)
    if kind == 1:
        return rng.choice([-1, 1]) * 10 ** rng.uniform(-30, 30)
    if kind == 2:
        return float(rng.randint(-10**6, 10**6))
    if kind == 3:
        return rng.choice([0.0, -0.0, 1e16, 1e15, 1e-5, 1e-4, 0.1, 0.5, 2.5, 1e22, 1.5e-7])
    if kind == 4:
        return round(rng.uniform(-10, 10), rng.randint(0, 6))
    return rng.randint(-2**53, 2**53) / 2**rng.randint(0, 60)


def rand_value(rng, depth=0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-2**53, 2**53) if rng.random() < 0.3 else rng.randint(-100, 100)
    if kind == 3:
        return rand_float(rng)
    if kind in (4, 5):
        return rand_text(rng, 3)
    if kind == 6:
        return [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rand_text(rng, 1) + str(i): rand_value(rng, depth + 1) for i in range(rng.randint(0, 4))}


def rand_tool(rng, i):
    props = {f"p{j}_{rand_text(rng, 1)}": {"type": rng.choice(["string", "number", "integer"]),
                                          "description": rand_text(rng, 3)}
             for j in range(rng.randint(0, 3))}
    if rng.random() < 0.3:
        props["limit"] = {"type": "number", "minimum": rand_float(rng)}
    return {"type": "function",
            "function": {"name": f"tool_{i}", "description": rand_text(rng, 5),
                         "parameters": {"type": "object", "properties": props,
                                        "required": list(props)[:1]}}}


def rand_tool_call(rng):
    args = ({k: rand_value(rng, 1) for k in ("a", "b", rand_text(rng, 1))} if rng.random() < 0.7
            else json.dumps({"x": rand_value(rng, 1)}, ensure_ascii=rng.random() < 0.5))
    fn = {"name": f"tool_{rng.randint(0, 3)}", "arguments": args}
    return {"type": "function", "function": fn} if rng.random() < 0.8 else fn


def rand_content(rng):
    r = rng.random()
    if r < 0.06:
        return None
    if r < 0.1:
        return [{"type": "text", "text": rand_text(rng)}]
    if r < 0.25:
        return f"<think>\n{rand_text(rng)}\n</think>\n\n{rand_text(rng)}"
    if r < 0.3:
        return f"<tool_response>\n{rand_text(rng)}\n</tool_response>"
    return rand_text(rng)


def rand_message(rng, role):
    m = {"role": role}
    if rng.random() < 0.95:
        m["content"] = rand_content(rng)
    if role == "assistant":
        if rng.random() < 0.35:
            m["tool_calls"] = [rand_tool_call(rng) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.3:
            m[rng.choice(["reasoning_content", "reasoning", "thinking"])] = (
                rand_text(rng) if rng.random() < 0.9 else None)
    return m


def rand_conversation(rng):
    roles = []
    if rng.random() < 0.5:
        roles.append("system")
    for _ in range(rng.randint(1, 6)):
        turn = rng.random()
        if turn < 0.15:  # anything goes: templates must fail (or not) exactly like transformers
            roles.append(rng.choice(["user", "assistant", "system", "tool"]))
        else:
            roles.append("user")
            roles.append("assistant")
            if rng.random() < 0.4:
                roles.extend(["tool"] * rng.randint(1, 3))
                roles.append("assistant")
    if rng.random() < 0.5 and roles[-1] == "assistant":
        roles.pop()
    return [rand_message(rng, role) for role in roles]


def rand_request(rng):
    request = {"messages": rand_conversation(rng),
               "tools": ([rand_tool(rng, i) for i in range(rng.randint(0, 3))]
                         if rng.random() < 0.4 else None),
               "add_generation_prompt": rng.random() < 0.7}
    if rng.random() < 0.6:
        request["enable_thinking"] = rng.choice([True, False, None])
    return request


VALUE_TEMPLATES = [
    "{{ x }}", "{{ x|tojson }}", "{{ x|tojson(indent=2, sort_keys=false) }}",
    "{{ x|string|length }}", "{{ x is string }}{{ x is number }}{{ x is mapping }}{{ x is sequence }}",
    "{{ x|tojson(ensure_ascii=true) }}", "{{ [x, x]|tojson(separators=(',', ':')) }}",
    "{% if x is string %}{{ x.strip() }}|{{ x.split() }}|{{ x|upper }}|{{ x|title }}|{{ x[::-1] }}"
    "|{{ x.splitlines() }}|{{ x|trim }}|{{ x|indent(2) }}|{{ x|wordcount }}{% endif %}",
    # |int only below 2**63: tessera's ints are int64 (documented), Python's are unbounded.
    "{% if x is number %}{{ x + 1 }}|{{ x * 2 }}|{{ x|abs }}|{{ x|round(2) }}|{{ x|float }}"
    "{% if x|abs < 9e18 %}|{{ x|int }}{% endif %}{% endif %}",
    "{% if x is mapping %}{{ x|dictsort }}{{ x.items()|list }}{% endif %}",
    "{% if x is sequence and x is not string %}{{ x|length }}{{ x|first }}{{ x|reverse|list }}"
    "{% endif %}",
]


def check_command(tessera, tokenizer_dir, tokenizer, rng, count, seed):
    """`tessera chat-template --json` against apply_chat_template(tokenize=True)."""
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "request.json")
        for _ in range(count):
            request = rand_request(rng)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(request, f, ensure_ascii=False)
            want = hf_reference.render(tokenizer, request)
            run = subprocess.run([tessera, "chat-template", "--tokenizer", tokenizer_dir,
                                  "--request-file", path, "--json"], capture_output=True)
            if "text" in want:
                kwargs = dict(request.get("chat_template_kwargs") or {})
                if "enable_thinking" in request:
                    kwargs["enable_thinking"] = request["enable_thinking"]
                ids = tokenizer.apply_chat_template(
                    request["messages"], tools=request.get("tools"), tokenize=True,
                    return_dict=False, add_generation_prompt=request["add_generation_prompt"],
                    **kwargs)
                got = json.loads(run.stdout.decode("utf-8")) if run.returncode == 0 else None
                ok = got == {"text": want["text"], "ids": ids}
            else:
                ok = run.returncode == 1 and want["error"] in run.stderr.decode("utf-8")
            if not ok:
                failures += 1
                print(f"COMMAND MISMATCH, seed {seed}\n  request: "
                      f"{json.dumps(request, ensure_ascii=False)}\n  transformers: {want!r}\n"
                      f"  tessera (rc {run.returncode}): {run.stdout[:2000]!r} {run.stderr!r}")
    print(f"live_check: tessera chat-template: {count - failures}/{count} identical")
    return failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--driver", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--values", type=int, default=400)
    parser.add_argument("--tessera", default=None, help="the tessera executable")
    parser.add_argument("--commands", type=int, default=12)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    print(f"live_check: seed {seed}", flush=True)

    tokenizer_dir = os.path.join(args.data, "tokenizer-qwen3-0.6b")
    tokenizer = hf_reference.load_tokenizer(tokenizer_dir)
    sources = {}
    for name, path in TEMPLATE_FILES.items():
        with open(os.path.join(args.data, path), encoding="utf-8") as f:
            sources[name] = f.read()

    inputs, expected, labels = [], [], []
    for _ in range(args.conversations):
        request = rand_request(rng)
        for name in ["qwen3"] + list(TEMPLATE_FILES):
            if name == "qwen3":
                inputs.append({"dir": tokenizer_dir, "request": request})
                expected.append(hf_reference.render(tokenizer, request))
            else:
                inputs.append({"template": sources[name],
                               "special_tokens": tokenizer.special_tokens_map, "request": request})
                expected.append(hf_reference.render(tokenizer, request, sources[name]))
            labels.append(name)
    for _ in range(args.values):
        variables = {"x": rand_value(rng)}
        source = rng.choice(VALUE_TEMPLATES)
        inputs.append({"jinja": source, "vars": variables})
        expected.append(hf_reference.render_jinja(source, variables))
        labels.append("jinja")

    feed = "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in inputs)
    run = subprocess.run([args.driver], input=feed.encode("utf-8"), capture_output=True,
                         check=True)
    answers = run.stdout.decode("utf-8").split("\n")
    failures = 0
    for given, want, got_line, label in zip(inputs, expected, answers, labels):
        got = json.loads(got_line)
        if "text" in want:
            ok = got.get("text") == want["text"]
        else:
            ok = "error" in got and want["error"] in got["error"]
        if not ok:
            failures += 1
            if failures <= 5:
                print(f"MISMATCH ({label}), seed {seed}\n  input: "
                      f"{json.dumps(given.get('request', given.get('vars')), ensure_ascii=False)}\n"
                      f"  transformers: {want!r}\n  tessera:      {got!r}")
    if args.tessera:
        failures += check_command(args.tessera, tokenizer_dir, tokenizer, rng, args.commands, seed)
    errors = sum(1 for e in expected if "error" in e)
    print(f"live_check: {len(inputs) - failures}/{len(inputs)} identical "
          f"({errors} where transformers raised), seed {seed}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
