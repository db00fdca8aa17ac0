#!/usr/bin/env python3
"""`tessera run` as outside checks use it: --json output, --prompt-logits-out, sampling flags,
the embedded default model, and a precise message + non-zero exit for every bad input.

usage: run_cli_test.py TESSERA_BINARY FIXTURES_DIR
Needs numpy and safetensors (scripts/install-test-deps.sh).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file

TESSERA, FIXTURES = sys.argv[1], sys.argv[2]
failures = []
passed = 0


def run(*args, env=None):
    # The CPU backend explicitly (--device defaults to cuda where a GPU is visible); a later
    # --device in `args` wins.
    proc = subprocess.run([TESSERA, "run", "--device", "cpu", *args], capture_output=True,
                          text=True, timeout=120,
                          env=env)
    return proc.returncode, proc.stdout, proc.stderr


def check(name, condition, detail=""):
    global passed
    if condition:
        passed += 1
    else:
        failures.append(f"{name}: {detail}")
        print(f"FAIL {name}: {detail}", file=sys.stderr)


def expect_error(name, args, *needles):
    code, out, err = run(*args)
    check(name + " exits non-zero", code != 0, f"exit {code}, stdout {out!r}")
    check(name + " prints nothing on stdout", out == "", repr(out))
    for needle in needles:
        check(f"{name} names {needle!r}", needle in err, err)


def ids(values):
    return ",".join(str(v) for v in values)


def row_rel_l2(got, want):
    return float(np.max(np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)))


tmp = tempfile.mkdtemp(prefix="tessera-run-cli-")
try:
    # Every fixture: greedy tokens and prompt logits through the command line.
    for name in sorted(os.listdir(FIXTURES)):
        d = os.path.join(FIXTURES, name)
        expected = json.load(open(os.path.join(d, "expected.json")))
        prompt, greedy = expected["prompt_ids"], expected["greedy_tokens"]
        code, out, err = run("--model", d, "--device", "cpu", "--prompt-ids", ids(prompt),
                             "--max-new-tokens", str(len(greedy)), "--temperature", "0", "--json")
        check(f"{name} run exits 0", code == 0, err)
        if code == 0:
            lines = out.strip().splitlines()
            check(f"{name} prints one JSON line", len(lines) == 1, out)
            obj = json.loads(lines[0])
            check(f"{name} tokens", obj["tokens"] == greedy, f"{obj['tokens']} != {greedy}")
            check(f"{name} prompt_tokens", obj["prompt_tokens"] == prompt, str(obj["prompt_tokens"]))
        npy = os.path.join(tmp, name + ".npy")
        code, out, err = run("--model", d, "--prompt-ids", ids(prompt), "--max-new-tokens", "0",
                             "--prompt-logits-out", npy, "--json")
        check(f"{name} scoring exits 0", code == 0, err)
        if code == 0:
            got = np.load(npy)
            want = np.load(os.path.join(d, "prompt_logits.npy"))
            check(f"{name} logits shape", got.shape == want.shape and got.dtype == np.float32,
                  f"{got.shape} {got.dtype}")
            if got.shape == want.shape:
                err_l2 = row_rel_l2(got, want)
                check(f"{name} logits within 1e-4", err_l2 <= 1e-4, f"{err_l2:.3e}")
            check(f"{name} scoring generates nothing", json.loads(out)["tokens"] == [], out)

    d = os.path.join(FIXTURES, "dense_gqa")
    expected = json.load(open(os.path.join(d, "expected.json")))
    prompt = ids(expected["prompt_ids"])
    vocab = json.load(open(os.path.join(d, "config.json")))["vocab_size"]

    # Sampling: a seed reproduces; top-k 1 is greedy; different seeds explore.
    def tokens(*extra):
        code, out, err = run("--model", d, "--prompt-ids", prompt, "--max-new-tokens", "12",
                             "--json", *extra)
        check(f"sampling {extra} exits 0", code == 0, err)
        return json.loads(out)["tokens"] if code == 0 else None
    a = tokens("--temperature", "1.0", "--seed", "7")
    b = tokens("--temperature", "1.0", "--seed", "7")
    check("same seed, same tokens", a == b, f"{a} vs {b}")
    samples = {tuple(tokens("--temperature", "1.5", "--seed", str(s)) or []) for s in range(4)}
    check("different seeds explore", len(samples) > 1, str(samples))
    check("top-k 1 is greedy", tokens("--temperature", "0.8", "--top-k", "1", "--seed", "3")
          == expected["greedy_tokens"])
    check("top-p/min-p accepted", tokens("--temperature", "0.7", "--top-p", "0.9", "--min-p", "0.05") is not None)

    # Bad inputs: a message naming the problem and a non-zero exit.
    expect_error("id past the vocabulary", ["--model", d, "--prompt-ids", f"1,{vocab},2"],
                 str(vocab), "vocabulary")
    expect_error("negative id", ["--model", d, "--prompt-ids", "1,-5"], "-5")
    expect_error("non-numeric id", ["--model", d, "--prompt-ids", "1,x"], "'x'")
    expect_error("empty prompt", ["--model", d, "--prompt-ids", ""], "empty")
    expect_error("prompt too long", ["--model", d, "--prompt-ids", ids([1] * 513)],
                 "max_position_embeddings")
    expect_error("missing model dir", ["--model", os.path.join(tmp, "nope"), "--prompt-ids", "1"],
                 os.path.join(tmp, "nope"))
    expect_error("unknown flag", ["--model", d, "--prompt-ids", "1", "--tempreature", "0"], "--tempreature")
    expect_error("negative temperature", ["--model", d, "--prompt-ids", "1", "--temperature", "-1"],
                 "temperature")
    expect_error("top_p out of range", ["--model", d, "--prompt-ids", "1", "--top-p", "0"], "top_p")
    expect_error("unknown device", ["--model", d, "--prompt-ids", "1", "--device", "tpu"], "tpu")

    # Broken checkpoints: missing, extra and mis-shaped tensors name the file and the tensor.
    f32 = os.path.join(FIXTURES, "dense_gqa_kv2")  # float32 weights: numpy can rewrite them

    def broken(tag, mutate, *needles):
        bd = os.path.join(tmp, tag)
        shutil.copytree(f32, bd)
        path = os.path.join(bd, "model.safetensors")
        tensors = load_file(path)
        mutate(tensors)
        save_file(tensors, path)
        expect_error(tag, ["--model", bd, "--prompt-ids", "1,2"], *needles)
    victim = "model.layers.1.self_attn.k_proj.weight"
    broken("missing-tensor", lambda t: t.pop(victim), victim)
    broken("extra-tensor", lambda t: t.__setitem__("model.layers.9.foo.weight", np.zeros(3, np.float32)),
           "model.layers.9.foo.weight", "model.safetensors")
    broken("misshaped-tensor", lambda t: t.__setitem__(victim, t[victim][:-1]), victim,
           "model.safetensors", "shape")
    bd = os.path.join(tmp, "bad-config")
    shutil.copytree(d, bd)
    cfg = json.load(open(os.path.join(bd, "config.json")))
    cfg.pop("num_attention_heads")
    json.dump(cfg, open(os.path.join(bd, "config.json"), "w"))
    expect_error("config missing a field", ["--model", bd, "--prompt-ids", "1"], "num_attention_heads",
                 "config.json")

    # The embedded default model (written on first use into the cache directory).
    env = dict(os.environ, XDG_CACHE_HOME=os.path.join(tmp, "cache"))
    code, out, err = run("--prompt-ids", "151644,872,198", "--max-new-tokens", "5", "--json", env=env)
    check("embedded default runs", code == 0, err)
    if code == 0:
        toks = json.loads(out)["tokens"]
        check("embedded default generates", len(toks) == 5 and all(0 <= t < 151669 for t in toks), str(toks))
finally:
    shutil.rmtree(tmp, ignore_errors=True)

print(f"{passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
