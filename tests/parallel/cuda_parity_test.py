#!/usr/bin/env python3
"""Parallel layouts on the CUDA backend (NCCL between GPUs) against transformers' golden logits and
tokens, through `mpirun ... tessera run --device cuda`, one rank per GPU. Exits 77 (ctest: skipped)
on a machine without a GPU. Expert-parallel layouts must say in the load report that they ran the
all-to-all exchange (over NCCL).

bf16 tolerances as tests/golden/bf16_golden.h derives them: the median prompt row within 2.5e-2 of
transformers' fp32 logits; every row within 0.25 (the CLI cannot tell which tokens a router near-tie
sent to another expert: such a row moved by up to 0.17 in the bf16 emulation; a wrong shard or
collective moves rows by O(1)); greedy tokens equal transformers' until they first differ, at a
step whose fp32 top-2 margin (scored here on the CPU backend) is below 1.0 logit.

usage: cuda_parity_test.py TESSERA_BINARY FIXTURES_DIR GPUS MPIRUN [MPIRUN_FLAGS...]
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

TESSERA, FIXTURES, GPUS, MPIRUN, *MPI_FLAGS = sys.argv[1:]
GPUS = int(GPUS)
MEDIAN_TOL, ROW_TOL, NEAR_TIE = 2.5e-2, 0.25, 1.0

LAYOUTS = [
    ("dense_gqa", 2, ["--tp", "2"]),
    ("dense_mha_tied", 2, ["--tp", "2"]),
    ("moe_norm_topk", 2, ["--ep", "2"]),
    ("moe_no_norm", 2, ["--ep", "2"]),
    ("moe_norm_topk", 2, ["--tp", "2"]),
    ("moe_norm_topk", 2, ["--tp", "2", "--ep", "2"]),
    ("dense_yarn", 2, ["--pp", "2"]),
    ("dense_yarn", 2, ["--pp", "2", "--prefill-chunk", "17"]),
    ("moe_mixed_layers", 2, ["--pp", "2"]),
    ("moe_norm_topk", 2, ["--dp", "2", "--ep", "2"]),
    ("dense_gqa", 2, ["--dp", "2"]),
    ("dense_gqa", 4, ["--tp", "4"]),
    ("dense_gqa_kv2", 4, ["--tp", "4"]),
    ("moe_mixed_layers", 4, ["--tp", "2", "--ep", "4"]),
    ("dense_gqa", 4, ["--tp", "2", "--pp", "2"]),
    # EP layouts above take the exchange's low-latency mode for decode (steps in CUDA graphs) and
    # the normal one for prefill; these force one mode for both.
    ("moe_norm_topk", 2, ["--ep", "2"], {"TESSERA_EP_MODE": "low_latency"}),
    ("moe_norm_topk", 2, ["--dp", "2", "--ep", "2"], {"TESSERA_EP_MODE": "normal"}),
]


def check_exchange(flags, env, stderr):
    """An expert-parallel layout says which exchange it ran (the load report): all-to-all unless
    TESSERA_EP_EXCHANGE=allgather asks for the fallback."""
    if "--ep" not in flags:
        return
    fallback = (env or {}).get("TESSERA_EP_EXCHANGE") == "allgather"
    want = "expert exchange: all-gather" if fallback else "expert exchange: all-to-all"
    if want not in stderr:
        raise RuntimeError(f"expected {want!r} in the log:\n{stderr}")


def run(fixture, ranks, flags, out, device="cuda", prompt=None, new_tokens=None, env=None):
    d = os.path.join(FIXTURES, fixture)
    expected = json.load(open(os.path.join(d, "expected.json")))
    prompt = expected["prompt_ids"] if prompt is None else prompt
    new_tokens = len(expected["greedy_tokens"]) if new_tokens is None else new_tokens
    cmd = [TESSERA, "run", "--model", d, "--device", device, "--prompt-ids",
           ",".join(map(str, prompt)), "--temperature", "0", "--json", "--max-new-tokens",
           str(new_tokens), "--prompt-logits-out", out, *flags]
    if ranks > 1:
        exported = [a for k in (env or {}) for a in ("-x", k)]
        cmd = [MPIRUN, *MPI_FLAGS, "-x", "LD_LIBRARY_PATH", *exported, "-np", str(ranks), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    if device == "cuda":
        check_exchange(flags, env, proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(out), expected


def margins(fixture, tmp):
    """fp32 top-2 margin of each greedy step, from the CPU backend scoring prompt + tokens."""
    expected = json.load(open(os.path.join(FIXTURES, fixture, "expected.json")))
    n = len(expected["prompt_ids"])
    seq = expected["prompt_ids"] + expected["greedy_tokens"][:-1]
    _, logits, _ = run(fixture, 1, [], os.path.join(tmp, "cpu.npy"), "cpu", seq, 0)
    top2 = np.sort(logits[n - 1:], axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


with tempfile.TemporaryDirectory() as tmp:
    probe = subprocess.run([TESSERA, "run", "--model", os.path.join(FIXTURES, "dense_gqa"),
                            "--device", "cuda", "--prompt-ids", "1", "--max-new-tokens", "0"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"skipped: no usable GPU ({probe.stderr.strip()})")
        sys.exit(77)
    failures, passed, skipped = [], 0, 0
    cache = {}
    for fixture, ranks, flags, *extra in LAYOUTS:
        env = extra[0] if extra else None
        name = f"{fixture} np={ranks} {' '.join(flags)}" + "".join(f" {k}={v}" for k, v in (env or {}).items())
        if ranks > GPUS:
            skipped += 1
            continue
        try:
            if fixture not in cache:
                cache[fixture] = margins(fixture, tmp)
            out, logits, expected = run(fixture, ranks, flags, os.path.join(tmp, "layout.npy"),
                                        env=env)
            golden = np.load(os.path.join(FIXTURES, fixture, "prompt_logits.npy"))
            rows = np.linalg.norm(logits - golden, axis=1) / np.linalg.norm(golden, axis=1)
            want = expected["greedy_tokens"]
            agree = next((i for i, (a, b) in enumerate(zip(out["tokens"], want)) if a != b),
                         len(want))
            tokens_ok = agree == len(want) or cache[fixture][agree] < NEAR_TIE
            ok = (np.median(rows) <= MEDIAN_TOL and rows.max() <= ROW_TOL and tokens_ok
                  and out["prompt_tokens"] == expected["prompt_ids"])
            tok = "all equal" if agree == len(want) else \
                f"equal for {agree}, then margin {cache[fixture][agree]:.3f}"
            print(f"{'ok  ' if ok else 'FAIL'} {name}: rows vs HF median {np.median(rows):.2e} "
                  f"max {rows.max():.2e}; tokens {tok}", flush=True)
            passed += ok
            if not ok:
                failures.append(name)
        except Exception as exc:  # report every layout, then fail
            print(f"FAIL {name}: {exc}", flush=True)
            failures.append(name)
    print(f"{passed} passed, {len(failures)} failed, {skipped} skipped (more ranks than {GPUS} GPUs)")
    sys.exit(1 if failures else 0)
