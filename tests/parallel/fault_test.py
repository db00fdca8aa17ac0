#!/usr/bin/env python3
"""Faults end in errors and a non-zero exit on every rank, never a hang:
  - a rank's shard file is missing          -> all ranks exit non-zero within 10 s
  - a rank fails to load / crashes loading  -> likewise
  - a rank hangs in a step                  -> the collective watchdog names rank and operation
  - a mis-specified layout                  -> a clear message before any weight is read

usage: fault_test.py TESSERA_BINARY FIXTURES_DIR MPIRUN [MPIRUN_FLAGS...]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

TESSERA, FIXTURES, MPIRUN, *MPI_FLAGS = sys.argv[1:]
failures, passed = [], 0


def check(name, cond, detail):
    global passed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failures.append(name)
        print(f"FAIL {name}: {detail}")


def mpirun(ranks, args, env_extra=None, limit=30):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [MPIRUN, *MPI_FLAGS, "-np", str(ranks), TESSERA, "run", *args]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env)
        return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start
    except subprocess.TimeoutExpired as exc:
        return None, exc.stdout or "", exc.stderr or "", time.monotonic() - start


moe = os.path.join(FIXTURES, "moe_norm_topk")  # sharded checkpoint
prompt = ",".join(map(str, json.load(open(os.path.join(moe, "expected.json")))["prompt_ids"]))
base = ["--device", "cpu", "--prompt-ids", prompt, "--max-new-tokens", "4", "--temperature", "0"]

with tempfile.TemporaryDirectory() as tmp:
    broken = os.path.join(tmp, "missing-shard")
    shutil.copytree(moe, broken)
    index = json.load(open(os.path.join(broken, "model.safetensors.index.json")))
    shard = sorted(set(index["weight_map"].values()))[-1]
    os.remove(os.path.join(broken, shard))
    code, out, err, secs = mpirun(2, ["--model", broken, "--ep", "2", *base])
    check("missing shard: non-zero exit within 10 s", code not in (0, None) and secs < 10,
          f"exit {code} after {secs:.1f}s: {err}")
    check("missing shard: the message names the file", shard in err, err)
    check("missing shard: nothing on stdout", out == "", out)

    code, out, err, secs = mpirun(2, ["--model", moe, "--ep", "2", *base], {"TESSERA_FAULT": "fail-load@1"})
    check("rank 1 fails to load: non-zero exit within 10 s", code not in (0, None) and secs < 10,
          f"exit {code} after {secs:.1f}s")
    check("rank 1 fails to load: tagged with its rank", "[rank 1]" in err, err)

    code, out, err, secs = mpirun(2, ["--model", moe, "--ep", "2", *base], {"TESSERA_FAULT": "crash-load@1"})
    check("rank 1 crashes while loading: non-zero exit within 10 s", code not in (0, None) and secs < 10,
          f"exit {code} after {secs:.1f}s: {err}")

    code, out, err, secs = mpirun(2, ["--model", moe, "--ep", "2", "--collective-timeout", "2", *base],
                                  {"TESSERA_FAULT": "hang-step@1"})
    check("rank 1 hangs: the job ends non-zero within 10 s", code not in (0, None) and secs < 10,
          f"exit {code} after {secs:.1f}s: {err}")
    check("rank 1 hangs: the watchdog names rank and operation",
          "watchdog: rank 0 stuck in" in err, err)

    for ranks, flags, needle in [(3, ["--tp", "3"], "--tp 3 does not divide num_attention_heads (8)"),
                                 (3, ["--ep", "3"], "--ep 3 does not divide num_experts (8)"),
                                 (2, ["--tp", "4"], "the world has 2 ranks, not a multiple"),
                                 (4, ["--pp", "4"], "--pp 4 exceeds the number of layers (3)"),
                                 (4, ["--tp", "2", "--ep", "2"], "--ep 2 must be 1 or --tp x --dp = 4")]:
        code, out, err, secs = mpirun(ranks, ["--model", moe, *flags, *base])
        check(f"layout {' '.join(flags)}: clear message", code not in (0, None) and needle in err,
              f"exit {code}: {err}")

print(f"{passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
