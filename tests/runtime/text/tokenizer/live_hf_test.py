#!/usr/bin/env python3
"""Live comparison of `tessera tokenize/detokenize` with Hugging Face on fresh random text.

Each run draws new strings (random Unicode from many scripts, combining marks, emoji sequences,
whitespace of every kind, digits, contractions, fragments of special tokens), from a seed taken
from the clock and printed first, so that a failure can be replayed with --seed. The strings go
to the tessera binary in batches (one process per file form and mode, --jsonl), and the ids must
equal those of:
  tokenizer.json          HF `tokenizers` (Tokenizer.from_file)
  vocab.json + merges.txt transformers' Qwen2Tokenizer built from the trio alone
for the three ways of treating added tokens (recognised, all plain text, only special ones plain
text). Random id sequences, many cutting UTF-8 characters apart, are decoded both ways (with and
without skip_special_tokens, through the streaming detokenizer) and must equal HF's decode.

Usage: live_hf_test.py --tessera BIN --tokenizer-dir DIR [--seed N] [--count N]
Needs the reference environment from scripts/install-test-deps.sh.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata

try:
    from tokenizers import Tokenizer
except ImportError as e:  # ctest reports exit code 77 as "skipped"
    print(f"skipped: no Hugging Face tokenizers here ({e}); run scripts/install-test-deps.sh")
    sys.exit(77)

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]

# Scripts and blocks to draw letters from (ranges; unassigned code points are skipped).
SCRIPT_RANGES = [
    (0x41, 0x7A), (0xC0, 0x24F), (0x250, 0x2AF), (0x370, 0x3FF), (0x400, 0x52F),
    (0x530, 0x58F), (0x590, 0x5FF), (0x600, 0x6FF), (0x700, 0x74F), (0x780, 0x7BF),
    (0x900, 0x97F), (0x980, 0x9FF), (0xA00, 0xA7F), (0xB80, 0xBFF), (0xC00, 0xC7F),
    (0xD00, 0xD7F), (0xD80, 0xDFF), (0xE00, 0xE7F), (0xE80, 0xEFF), (0xF00, 0xFFF),
    (0x1000, 0x109F), (0x10A0, 0x10FF), (0x1100, 0x11FF), (0x1200, 0x137F), (0x13A0, 0x13FF),
    (0x1780, 0x17FF), (0x1800, 0x18AF), (0x1E00, 0x1EFF), (0x1F00, 0x1FFF), (0x2C00, 0x2C5F),
    (0x3040, 0x309F), (0x30A0, 0x30FF), (0x3100, 0x312F), (0x4E00, 0x9FFF), (0xA000, 0xA4CF),
    (0xAC00, 0xD7A3), (0xF900, 0xFAFF), (0xFB00, 0xFB4F), (0xFF00, 0xFFEF), (0x10000, 0x1007F),
    (0x10330, 0x1034F), (0x1D400, 0x1D7FF), (0x20000, 0x2A6DF), (0x2F800, 0x2FA1F),
]
WHITESPACE = [" ", "  ", "\t", "\n", "\r", "\r\n", "\n\n", "\x0b", "\x0c", "\x85", "\xa0",
              "\u1680", "\u180e", "\u2000", "\u2003", "\u200a", "\u200b", "\u2028", "\u2029",
              "\u202f", "\u205f", "\u3000", "\ufeff", " " * 5, "\t\t", " \n ", "\n \n"]
WORDS = ["the", "Hello", "world", "tokenizer", "don't", "I'M", "we'll", "you're", "it'S",
         "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'ſ", "’s", "''", "x", "ABC", "naïve",
         "Straße", "İstanbul", "ǅ", "ﬁ", "_", "__init__", "a.b", "::", "->", "!=", "==", "...",
         "http://example.com/a?b=c", "#", "@", "$", "%", "^&*", "()", "[]", "{}", "<", ">", "|"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "❤️", "#️⃣", "🧑🏿‍🚀", "\u200d", "\ufe0f",
         "🏻", "🫠", "✅", "☺"]


def build_pools():
    def assigned(cp):
        return not (0xD800 <= cp <= 0xDFFF) and unicodedata.category(chr(cp)) != "Cn"

    script = [cp for lo, hi in SCRIPT_RANGES for cp in range(lo, hi + 1) if assigned(cp)]
    marks = [cp for cp in range(0x110000) if assigned(cp) and unicodedata.category(chr(cp))[0] == "M"]
    digits = [cp for cp in range(0x110000) if assigned(cp) and unicodedata.category(chr(cp))[0] == "N"]
    # Any assigned code point. PCRE2 10.42 classifies with Unicode 14 tables and Oniguruma (in
    # HF) with Unicode 16: code points assigned after 14.0 are known to differ, so the universe
    # is Unicode 14's when Python's tables are (Debian 12's Python 3.11), else the older blocks.
    if unicodedata.unidata_version == "14.0.0":
        anything = [cp for cp in range(0x110000) if assigned(cp)]
    else:
        print(f"note: Python has Unicode {unicodedata.unidata_version}, not 14.0.0; drawing "
              "only from the listed scripts", file=sys.stderr)
        anything = script
    return script, marks, digits, anything


def random_text(rng, pools):
    script, marks, digits, anything = pools
    parts = []
    for _ in range(rng.randint(0, 40)):
        r = rng.random()
        if r < 0.20:
            parts.append("".join(chr(rng.choice(script)) for _ in range(rng.randint(1, 8))))
        elif r < 0.30:
            parts.append(chr(rng.choice(anything)))
        elif r < 0.38:
            parts.append(chr(rng.choice(script)) + chr(rng.choice(marks)) *
                         rng.randint(1, 3))
        elif r < 0.40:
            # Runs of marks of every Unicode version: NFC reorders and composes them.
            parts.append("".join(chr(rng.choice(marks)) for _ in range(rng.randint(1, 5))))
        elif r < 0.55:
            parts.append(rng.choice(WHITESPACE))
        elif r < 0.63:
            parts.append(rng.choice(["0", "7", "42", "2024", "3.14", "1,000"]) if rng.random() < 0.5
                         else "".join(chr(rng.choice(digits)) for _ in range(rng.randint(1, 4))))
        elif r < 0.80:
            parts.append(rng.choice(WORDS))
        elif r < 0.88:
            parts.append(rng.choice(EMOJI))
        else:
            token = rng.choice(SPECIAL_TOKENS)
            s = rng.random()
            if s < 0.5:
                parts.append(token)
            elif s < 0.75:
                parts.append(token[: rng.randint(1, len(token) - 1)])
            else:
                parts.append(token[rng.randint(1, len(token) - 1):])
    return "".join(parts)


def run_tessera(binary, args, lines, tmp):
    path = os.path.join(tmp, "input.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    proc = subprocess.run([binary] + args + [path], capture_output=True, timeout=300)
    # One JSON object per '\n'-terminated line (tessera escapes everything else).
    out = [json.loads(l) for l in proc.stdout.decode("utf-8").split("\n") if l]
    if len(out) != len(lines):
        sys.exit(f"tessera {' '.join(args)}: {len(out)} results for {len(lines)} inputs "
                 f"(exit {proc.returncode}): {proc.stderr.decode(errors='replace')[:500]}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tessera", required=True)
    ap.add_argument("--tokenizer-dir", required=True)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--count", type=int, default=2000)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % (1 << 31)
    print(f"seed {seed}  (replay: {sys.argv[0]} --tessera {args.tessera} "
          f"--tokenizer-dir {args.tokenizer_dir} --seed {seed} --count {args.count})", flush=True)
    start = time.time()

    from transformers import AutoTokenizer  # slow import, after the seed is printed

    rng = random.Random(seed)
    pools = build_pools()
    texts = [random_text(rng, pools) for _ in range(args.count)]

    tmp = tempfile.mkdtemp(prefix="tessera-live-")
    try:
        trio = os.path.join(tmp, "trio")
        os.mkdir(trio)
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            shutil.copy(os.path.join(args.tokenizer_dir, name), trio)
        hf = Tokenizer.from_file(os.path.join(args.tokenizer_dir, "tokenizer.json"))
        hf_split = Tokenizer.from_file(os.path.join(args.tokenizer_dir, "tokenizer.json"))
        hf_split.encode_special_tokens = True
        tf_trio = AutoTokenizer.from_pretrained(trio)
        assert type(tf_trio).__name__ == "Qwen2Tokenizer", type(tf_trio)

        def hf_no_added(t, text):
            if text == "":
                return []
            n = t.normalizer.normalize_str(text)
            return [x.id for p, _ in t.pre_tokenizer.pre_tokenize_str(n) for x in t.model.tokenize(p)]

        expected = {
            ("json", "default"): [e.ids for e in hf.encode_batch(texts)],
            ("json", "no-special"): [hf_no_added(hf, t) for t in texts],
            ("json", "split"): [e.ids for e in hf_split.encode_batch(texts)],
            ("trio", "default"): [tf_trio.encode(t, add_special_tokens=False) for t in texts],
            ("trio", "no-special"): [tf_trio._encode_without_added_tokens(t) if t else []
                                     for t in texts],
            ("trio", "split"): [tf_trio.encode(t, add_special_tokens=False,
                                               split_special_tokens=True) for t in texts],
        }
        flags = {"default": [], "no-special": ["--no-special"],
                 "split": ["--split-special-tokens"]}
        dirs = {"json": args.tokenizer_dir, "trio": trio}
        failures = []
        checked = 0
        for (form, mode), want in expected.items():
            got = run_tessera(args.tessera, ["tokenize", "--tokenizer", dirs[form], "--jsonl",
                                             "--json"] + flags[mode] + ["--text-file"], texts, tmp)
            for i, (text, w, g) in enumerate(zip(texts, want, got)):
                checked += 1
                if g.get("ids") != w:
                    failures.append(f"{form}/{mode} text #{i} {text!r}:\n  HF      {w}\n"
                                    f"  tessera {g}")

        # Decoding: the encoded ids, and random sequences of ids (single bytes often, which cut
        # characters apart; special and added tokens; anything).
        byte_level_ids = list(range(0, 256))
        seqs = [w for w in expected[("json", "default")][: args.count // 2]]
        for _ in range(args.count // 2):
            seq = []
            for _ in range(rng.randint(0, 20)):
                r = rng.random()
                seq.append(rng.choice(byte_level_ids) if r < 0.5 else
                           rng.randint(151643, 151668) if r < 0.6 else
                           rng.randint(0, 151642))
            seqs.append(seq)
        for skip in (False, True):
            extra = ["--skip-special-tokens"] if skip else []
            for form in ("json", "trio"):
                got = run_tessera(args.tessera, ["detokenize", "--tokenizer", dirs[form], "--jsonl",
                                                 "--stream"] + extra + ["--ids-file"], seqs, tmp)
                for i, (seq, g) in enumerate(zip(seqs, got)):
                    checked += 1
                    want = (hf if form == "json" else tf_trio).decode(seq, skip_special_tokens=skip)
                    if g.get("text") != want or "".join(g.get("chunks", [])) != want:
                        failures.append(f"decode {form} skip={skip} #{i} {seq}:\n  HF      {want!r}\n"
                                        f"  tessera {g}")
    finally:
        shutil.rmtree(tmp)

    elapsed = time.time() - start
    if failures:
        print(f"FAILED: {len(failures)} of {checked} checks differ from Hugging Face "
              f"(seed {seed}); the first ones:")
        for f in failures[:15]:
            print(f)
        return 1
    print(f"ok: {checked} checks ({args.count} random texts x 2 forms x 3 modes, "
          f"{len(seqs)} id sequences x 2 forms x 2) match Hugging Face in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
