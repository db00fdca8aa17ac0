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
ARGS = ["--ttft", "16,48", "--decode-batch", "1,4", "--decode-context", "32", "--decode-steps", "4",
        "--repeats", "2", "--throughput-requests", "24", "--input-mean", "24", "--output-mean", "8",
        "--max-num-batched-tokens", "128", "--json"]
for name, ranks, layout in [("dense_gqa", 1, []), ("dense_gqa", 2, ["--tp", "2"]),
                            ("moe_norm_topk", 2, ["--ep", "2"]), ("dense_yarn", 2, ["--pp", "2"])]:
    cmd = [TESSERA, "bench", "--model", os.path.join(FIXTURES, name), *layout, *ARGS]
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
        assert r["load_format"] == "dummy" and r["commit"], r
        passed += 1
        print(f"ok   {label}: {t['output_tokens_per_s']:.0f} output tok/s")
    except Exception as e:  # report every case, then fail
        failures.append(label)
        print(f"FAIL {label}: {e}")
print(f"{passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
