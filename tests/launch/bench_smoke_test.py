#!/usr/bin/env python3
"""`tessera bench` runs end to end (dummy weights, TTFT, decode, engine throughput) on one rank and
under mpirun, and reports well-formed figures. Speed itself is measured on the GPU machine, not here.

usage: bench_smoke_test.py TESSERA FIXTURES_DIR MPIRUN [MPIRUN_FLAGS...]
"""
import json
import os
import subprocess
import sys

TESSERA, FIXTURES, MPIRUN, *MPI_FLAGS = sys.argv[1:]
failures, passed = [], 0
env = dict(os.environ, OMP_NUM_THREADS="1")
# The commit the binary reports is the checkout's HEAD at build time ("unknown" outside git).
_git = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                      cwd=os.path.dirname(os.path.abspath(__file__)))
HEAD = _git.stdout.strip() if _git.returncode == 0 else "unknown"
ARGS = ["--ttft", "16,48", "--decode-batch", "1,4", "--decode-context", "32", "--decode-steps", "4",
        "--repeats", "2", "--throughput-requests", "24", "--input-mean", "24", "--output-mean", "8",
        "--max-num-batched-tokens", "128", "--json"]
for name, ranks, layout in [("dense_gqa", 1, []), ("dense_gqa", 2, ["--tp", "2"]),
                            ("moe_norm_topk", 2, ["--ep", "2"]), ("dense_yarn", 2, ["--pp", "2"])]:
    cmd = [TESSERA, "bench", "--device", "cpu", "--model", os.path.join(FIXTURES, name), *layout, *ARGS]
    if ranks > 1:
        cmd = [MPIRUN, *MPI_FLAGS, "-np", str(ranks), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    label = f"{name} np={ranks} {' '.join(layout)}"
    try:
        assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
        r = json.loads(proc.stdout)
        assert [t["prompt_tokens"] for t in r["ttft"]] == [16, 48]
        assert all(t["ms_p50"] > 0 for t in r["ttft"])
        assert [d["batch"] for d in r["decode"]] == [1, 4]
        assert all(d["ms_per_step_p50"] > 0 and d["tokens_per_s"] > 0 for d in r["decode"])
        t = r["throughput"]
        assert t["failures"] == 0 and t["requests"] == 24 and t["output_tokens_per_s"] > 0, t
        assert 0 < t["tpot_ms_p50"] <= t["tpot_ms_p99"] and 0 < t["ttft_ms_p50"] <= t["ttft_ms_p99"], t
        assert r["load_format"] == "dummy" and r["commit"].startswith(HEAD), (r["commit"], HEAD)
        passed += 1
        print(f"ok   {label}: {t['output_tokens_per_s']:.0f} output tok/s")
    except Exception as e:  # report every case, then fail
        failures.append(label)
        print(f"FAIL {label}: {e}")

# --op-profile: every op of a step timed; the table accounts for the whole forward.
cmd = [TESSERA, "bench", "--device", "cpu", "--model", os.path.join(FIXTURES, "dense_gqa"), "--ttft", "40",
       "--decode-batch", "3", "--decode-context", "20", "--decode-steps", "3", "--repeats", "1",
       "--op-profile", "--json"]
proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
try:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    r = json.loads(proc.stdout)
    prof = r["op_profile"]
    assert sorted(prof) == ["decode batch 3", "ttft 40"], sorted(prof)
    layers = json.load(open(os.path.join(FIXTURES, "dense_gqa", "config.json")))["num_hidden_layers"]
    for what, attention in [("ttft 40", "Attention prefill"), ("decode batch 3", "Attention decode")]:
        ops = {row["op"]: row for row in prof[what]}
        assert ops[attention]["calls_per_step"] == layers, (what, ops[attention])
        assert "Embedding" in ops and "SiluMul" in ops, sorted(ops)
        # q/k norm + RoPE + the KV-cache write: one fused op per layer.
        assert ops["QkNormRopeKvWrite"]["calls_per_step"] == layers, sorted(ops)
        linear = [row for row in prof[what] if row["op"].startswith("Linear")]
        # qkv, o_proj, gate_up, down per layer, and lm_head once.
        assert sum(row["calls_per_step"] for row in linear) == 4 * layers + 1, linear
        assert all(row["ms_per_step"] >= 0 for row in prof[what])
        assert sum(row["ms_per_step"] for row in prof[what]) > 0
    assert "op profile, decode batch 3" in proc.stderr, proc.stderr
    passed += 1
    print("ok   --op-profile")
except Exception as e:
    failures.append("--op-profile")
    print(f"FAIL --op-profile: {e}")
# The default KV cache holds every measurement: 70 sequences of 15 + 2 + 1 positions take two
# 16-token blocks each (140), more than their tokens' worth of blocks plus the slack (67 + 64).
cmd = [TESSERA, "bench", "--device", "cpu", "--model", os.path.join(FIXTURES, "dense_gqa"), "--decode-batch", "70",
       "--decode-context", "15", "--decode-steps", "2", "--repeats", "1", "--json"]
proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
try:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    assert json.loads(proc.stdout)["decode"][0]["batch"] == 70
    passed += 1
    print("ok   default KV blocks for a large decode batch")
except Exception as e:
    failures.append("default KV blocks")
    print(f"FAIL default KV blocks: {e}")
print(f"{passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
