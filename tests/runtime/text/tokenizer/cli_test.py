#!/usr/bin/env python3
"""The contract of `tessera tokenize` and `tessera detokenize` that outside checks rely on.

Usage: cli_test.py --tessera BIN --tokenizer-dir DIR   (plain Python, no reference packages)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

FAILURES = []


def run(binary, *args, stdin=None):
    p = subprocess.run([binary, *args], capture_output=True, input=stdin, timeout=60)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def check(name, cond, detail=""):
    if not cond:
        FAILURES.append(f"{name}: {detail}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tessera", required=True)
    ap.add_argument("--tokenizer-dir", required=True)
    a = ap.parse_args()
    t, d = a.tessera, a.tokenizer_dir
    tmp = tempfile.mkdtemp(prefix="tessera-cli-")

    rc, out, err = run(t, "tokenize", "--tokenizer", d, "--text", "Hello world", "--json")
    check("tokenize --json", rc == 0 and json.loads(out) == {"ids": [9707, 1879]}, (rc, out, err))
    rc, out, err = run(t, "tokenize", "--tokenizer", d, "--text", "Hello world")
    check("tokenize plain", rc == 0 and out.split() == [b"9707", b"1879"], (rc, out))
    # Special tokens: recognised by default, text with --no-special, only special ones text with
    # --split-special-tokens (<think> is added but not special).
    text = "<|im_start|>hi<think>"
    rc, out, _ = run(t, "tokenize", "--tokenizer", d, "--text", text, "--json")
    check("special default", json.loads(out)["ids"] == [151644, 6023, 151667], out)
    rc, out, _ = run(t, "tokenize", "--tokenizer", d, "--text", text, "--json", "--no-special")
    check("--no-special", all(i < 151643 for i in json.loads(out)["ids"]), out)
    rc, out, _ = run(t, "tokenize", "--tokenizer", d, "--text", text, "--json",
                     "--split-special-tokens")
    ids = json.loads(out)["ids"]
    check("--split-special-tokens", ids[-1] == 151667 and 151644 not in ids, out)
    # --text-file takes the file's bytes as they are (a trailing newline is text too).
    path = os.path.join(tmp, "t.txt")
    with open(path, "wb") as f:
        f.write("naïve café\n".encode())
    rc, out, _ = run(t, "tokenize", "--tokenizer", d, "--text-file", path, "--json")
    rc2, out2, _ = run(t, "detokenize", "--tokenizer", d, "--ids",
                       ",".join(map(str, json.loads(out)["ids"])), "--json")
    check("text-file round trip", rc == 0 and rc2 == 0 and
          json.loads(out2) == {"text": "naïve café\n"}, (out, out2))
    # Trio directory (no tokenizer.json) gives the same ids.
    trio = os.path.join(tmp, "trio")
    os.mkdir(trio)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        os.symlink(os.path.abspath(os.path.join(d, name)), os.path.join(trio, name))
    rc, out, _ = run(t, "tokenize", "--tokenizer", trio, "--text", "Hello world<|im_end|>",
                     "--json")
    check("trio", json.loads(out)["ids"] == [9707, 1879, 151645], out)

    rc, out, _ = run(t, "detokenize", "--tokenizer", d, "--ids", "151644,9707,1879,151645",
                     "--json")
    check("detokenize --json", json.loads(out) == {"text": "<|im_start|>Hello world<|im_end|>"},
          out)
    rc, out, _ = run(t, "detokenize", "--tokenizer", d, "--ids", "151644,9707,1879,151645",
                     "--json", "--skip-special-tokens")
    check("--skip-special-tokens", json.loads(out) == {"text": "Hello world"}, out)
    rc, out, _ = run(t, "detokenize", "--tokenizer", d, "--ids", "9707,1879")
    check("detokenize plain", rc == 0 and out == b"Hello world", out)
    # Bytes of one emoji in separate tokens: held back until complete in --stream chunks.
    rc, out, _ = run(t, "tokenize", "--tokenizer", d, "--text", "😀", "--json")
    emoji = json.loads(out)["ids"]
    rc, out, _ = run(t, "detokenize", "--tokenizer", d, "--ids", ",".join(map(str, emoji)),
                     "--json", "--stream")
    r = json.loads(out)
    check("--stream", r["text"] == "😀" and "".join(r["chunks"]) == "😀" and
          all(c in ("", "😀") for c in r["chunks"]), out)

    # Batches: one JSON line in, one out; a bad line fails alone (exit 1).
    path = os.path.join(tmp, "batch.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps("Hello world") + "\n" + "not json\n" + json.dumps("") + "\n")
    rc, out, _ = run(t, "tokenize", "--tokenizer", d, "--text-file", path, "--jsonl")
    lines = [json.loads(l) for l in out.decode().split("\n") if l]
    check("--jsonl", rc == 1 and lines[0] == {"ids": [9707, 1879]} and "error" in lines[1] and
          lines[2] == {"ids": []}, out)

    # Errors: 1 for bad input or files, 2 for usage; the message on stderr.
    bad = os.path.join(tmp, "bad.txt")
    with open(bad, "wb") as f:
        f.write(b"ok \xff")
    rc, out, err = run(t, "tokenize", "--tokenizer", d, "--text-file", bad)
    check("invalid UTF-8", rc == 1 and "byte offset 3" in err and out == b"", (rc, err))
    rc, out, err = run(t, "detokenize", "--tokenizer", d, "--ids", "1,151936")
    check("unknown id", rc == 1 and "151936" in err, (rc, err))
    rc, out, err = run(t, "tokenize", "--tokenizer", os.path.join(tmp, "none"), "--text", "x")
    check("missing dir", rc == 1 and "none" in err, (rc, err))
    for args in (["tokenize", "--tokenizer", d], ["tokenize", "--text", "x"],
                 ["tokenize", "--tokenizer", d, "--text", "x", "--text-file", path],
                 ["tokenize", "--tokenizer", d, "--text", "x", "--frobnicate"],
                 ["detokenize", "--tokenizer", d], ["detokenize", "--tokenizer", d, "--ids", "1,x"]):
        rc, out, err = run(t, *args)
        check(f"usage {args}", rc == 2 and err, (rc, err))

    if FAILURES:
        print("FAILED:\n" + "\n".join(FAILURES))
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
