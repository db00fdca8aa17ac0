#!/usr/bin/env python3
"""`tessera bench-serve` end to end: a real `tessera serve` (the embedded tiny model on the CPU,
free ports) and the load generator through its gRPC API, with --metrics-address for the engine's
bound. Checks the JSON report is whole and its figures consistent; speed itself is measured on the
GPU machine, not here: the bound is the device's busy time (tessera:engine_step_device_seconds),
at most the window's wall time. The server runs with --step-trace: after it drains, the step
timeline is Chrome trace JSON with every step's phases and composition.

usage: bench_serve_smoke_test.py TESSERA
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TESSERA = sys.argv[1]
run_dir = tempfile.mkdtemp(prefix="tessera-bench-serve-")
port_file = os.path.join(run_dir, "port")
trace_path = os.path.join(run_dir, "steps.json")
log_path = os.path.join(run_dir, "serve.log")
env = dict(os.environ, OMP_NUM_THREADS="1")
log = open(log_path, "w")
server = subprocess.Popen(
    [TESSERA, "serve", "--device", "cpu", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
     "--http-port", "-1", "--port-file", port_file, "--log-stats-interval", "0",
     "--step-trace", trace_path],
    stdout=log, stderr=subprocess.STDOUT, env=env)


def server_log():
    with open(log_path) as f:
        return f.read()


code = 1
try:
    deadline = time.time() + 120
    while not os.path.exists(port_file):
        assert server.poll() is None, f"serve exited {server.returncode}:\n{server_log()}"
        assert time.time() < deadline, f"serve did not come up:\n{server_log()}"
        time.sleep(0.1)
    with open(port_file) as f:
        grpc_port, metrics_port = map(int, f.read().split()[:2])

    proc = subprocess.run(
        [TESSERA, "bench-serve", "--address", f"127.0.0.1:{grpc_port}",
         "--metrics-address", f"127.0.0.1:{metrics_port}", "--request-rate", "inf",
         "--num-prompts", "8", "--input-len", "16",
         "--output-len", "8", "--json"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"bench-serve exit {proc.returncode}: {proc.stderr}"
    r = json.loads(proc.stdout)
    assert r["completed"] == 8 and r["failed"] == 0, r
    assert r["total_output_tokens"] == 64, r
    assert r["total_input_tokens"] == 8 * 16, r
    for name in ("ttft_ms", "tpot_ms"):
        assert r[name]["mean"] > 0 and r[name]["p50"] > 0 and r[name]["p99"] > 0, (name, r[name])
    for name in ("engine_step_seconds", "engine_steps", "bound_output_throughput", "efficiency",
                 "engine_host_seconds", "host_us_per_step", "device_busy_seconds",
                 "device_utilization"):
        assert name in r, (name, sorted(r))
    assert r["engine_steps"] > 0 and r["bound_output_throughput"] > 0, r
    # The bound is the device's (here: the forwards' wall time on the CPU): busy at most the
    # whole window, and efficiency = achieved / bound = busy / wall.
    busy, util = r["device_busy_seconds"], r["device_utilization"]
    assert 0 < busy <= r["duration_s"] * 1.01, (busy, r["duration_s"])
    assert 0 < util <= 1.01, util
    assert abs(r["efficiency"] - util) < 1e-6 * max(1, util), (r["efficiency"], util)
    assert abs(r["bound_output_throughput"] * busy - r["total_output_tokens"]) < 1e-3, r
    assert r["output_throughput"] > 0 and r["duration_s"] > 0, r
    print(f"ok   bench-serve: {r['output_throughput']:.0f} output tok/s, TTFT p50 "
          f"{r['ttft_ms']['p50']:.1f} ms, TPOT p50 {r['tpot_ms']['p50']:.2f} ms, "
          f"efficiency {r['efficiency']:.2f} (device busy {busy:.3f} s of {r['duration_s']:.3f})")

    assert r["engine_host_seconds"] > 0 and r["host_us_per_step"] > 0, r

    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0, f"serve exit {server.returncode}:\n{server_log()}"
    with open(trace_path) as f:
        trace = json.load(f)
    events = trace["traceEvents"]
    steps = [e for e in events if e.get("cat") == "step"]
    phases = [e for e in events if e.get("cat") == "phase"]
    assert len(steps) >= r["engine_steps"] > 0, (len(steps), r["engine_steps"])
    names = {e["name"] for e in phases}
    for name in ("intake", "schedule", "plan", "forward", "output_wait", "sample", "output"):
        assert name in names, (name, names)
    for e in steps + phases:
        assert e["ph"] == "X" and e["dur"] >= 0 and e["ts"] >= 0, e
    decode = sum(e["args"]["decode_tokens"] for e in steps)
    prefill = sum(e["args"]["prefill_tokens"] for e in steps)
    assert prefill >= 8 * 16 and decode >= 8 * 7, (prefill, decode)
    assert any(e["args"]["pure_decode"] for e in steps), steps
    for e in steps:
        a = e["args"]
        assert a["seqs"] >= 1 and a["decode_tokens"] + a["prefill_tokens"] >= a["seqs"], a
        assert a["collected_device_ms"] >= 0, a
    assert sum(e["args"]["collected_device_ms"] for e in steps) > 0, steps
    print(f"ok   step trace: {len(steps)} steps, {len(phases)} phases")
    code = 0
except Exception as e:
    print(f"FAIL {e}")
finally:
    if server.poll() is None:
        server.kill()
        server.wait()
    log.close()
    shutil.rmtree(run_dir, ignore_errors=True)
sys.exit(code)
