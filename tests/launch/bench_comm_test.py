#!/usr/bin/env python3
"""`tessera bench-comm --device cpu` runs under mpirun -np 2 (the MPI communicator on host buffers)
and reports well-formed, positive figures for every size asked; the table goes to stderr and one
JSON object to stdout. Speed itself is measured on the GPU machines (scripts/gpu/comm-bench.sh).

usage: bench_comm_test.py TESSERA MPIRUN [MPIRUN_FLAGS...]
"""
import json
import os
import subprocess
import sys

TESSERA, MPIRUN, *MPI_FLAGS = sys.argv[1:]
env = dict(os.environ, OMP_NUM_THREADS="1")
cmd = [MPIRUN, *MPI_FLAGS, "-np", "2", TESSERA, "bench-comm", "--device", "cpu", "--sizes-kb", "8,80",
       "--bw-sizes-mb", "1", "--a2a-sizes-mb", "1,2", "--rs-ag-sizes-mb", "1", "--skew-mb", "1",
       "--repeats", "3", "--warmup", "1", "--json"]
proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
failures = []


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name)
    if not cond:
        failures.append(name)
        print("    ", detail)


check("exit 0", proc.returncode == 0, proc.stderr[-3000:])
try:
    r = json.loads(proc.stdout)
except ValueError as e:
    print("stdout is not one JSON object:", e, proc.stdout[:2000])
    sys.exit(1)
check("header fields", r["device"] == "cpu" and r["ranks"] == 2 and r["dtype"] == "F32" and
      r["commit"] and r["graph_mode"] is False and "no CUDA graphs" in r["note"], r)
lat = r["allreduce_latency"]
check("latency sizes", [x["kb"] for x in lat] == [8, 80], lat)
check("latency positive, no graph figures on the CPU",
      all(x["eager_us"] > 0 and "graph_us" not in x for x in lat), lat)


def bandwidth(rows, sizes, bus_factor, key):
    check(f"{key}: sizes", [x["mb"] for x in rows] == sizes, rows)
    for x in rows:
        ok = x["us"] > 0 and x["algbw_gbs"] > 0 and x["busbw_gbs"] > 0 and x["bytes"] > 0
        ok = ok and abs(x["busbw_gbs"] - x["algbw_gbs"] * bus_factor) <= 1e-6 * x["busbw_gbs"]
        ok = ok and abs(x["algbw_gbs"] - x["bytes"] / (x["us"] * 1e-6) * 1e-9) <= 1e-6 * x["algbw_gbs"]
        check(f"{key} {x['mb']} MB: positive, algbw = bytes/time, busbw = algbw x {bus_factor}", ok, x)


bandwidth(r["allreduce_bandwidth"], [1], 1.0, "all-reduce")  # 2 (n-1)/n = 1 for n = 2
bandwidth(r["alltoall"], [1, 2, 1], 0.5, "all-to-all")
check("all-to-all patterns", [x["pattern"] for x in r["alltoall"]] == ["equal", "equal", "skewed"],
      r["alltoall"])
bandwidth(r["reduce_scatter"], [1], 0.5, "reduce-scatter")
bandwidth(r["all_gather"], [1], 0.5, "all-gather")
check("the table went to stderr", "all-reduce latency" in proc.stderr and "all-to-all" in proc.stderr,
      proc.stderr[-2000:])

# Outside mpirun, a clear error rather than a meaningless figure.
solo = subprocess.run([TESSERA, "bench-comm", "--device", "cpu"], capture_output=True, text=True,
                      timeout=60, env=env)
check("one rank: exit 2 with a message", solo.returncode == 2 and "mpirun" in solo.stderr,
      solo.stderr)
print(f"{len(failures)} failed")
sys.exit(1 if failures else 0)
