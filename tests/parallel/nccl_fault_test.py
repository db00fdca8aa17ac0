#!/usr/bin/env python3
"""NCCL collectives only enqueue, so a hung peer shows in the host's next wait for the stream: that
wait must end the job with a clear message and a non-zero exit, never hang (docs/design.md, "Errors").
Runs nccl_communicator_test's DISABLED_HungPeerEndsTheJob under mpirun -np 2 with a 3 s collective
timeout. Exits 77 (skipped) on a machine with fewer than 2 GPUs.

usage: nccl_fault_test.py NCCL_COMMUNICATOR_TEST MPIRUN [MPIRUN_FLAGS...]
"""
import os
import subprocess
import sys
import time

TEST, MPIRUN, *MPI_FLAGS = sys.argv[1:]
env = dict(os.environ, TESSERA_COLLECTIVE_TIMEOUT="3")
cmd = [MPIRUN, *MPI_FLAGS, "-np", "2", TEST, "--gtest_also_run_disabled_tests",
       "--gtest_filter=*HungPeerEndsTheJob"]
start = time.monotonic()
try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
except subprocess.TimeoutExpired:
    print("FAIL a hung peer hung the job (no exit within 120 s)")
    sys.exit(1)
secs = time.monotonic() - start
out = proc.stdout + proc.stderr
if "[  SKIPPED ]" in out:
    print("skipped: fewer CUDA devices than ranks")
    sys.exit(77)
failures = []
if proc.returncode == 0:
    failures.append("exit 0: the job should fail")
if "in stream wait after all_reduce on communicator 'world'" not in out:
    failures.append("no watchdog message naming the stream wait after all_reduce")
if secs > 60:
    failures.append(f"took {secs:.1f} s with a 3 s timeout")
for f in failures:
    print("FAIL", f)
if failures:
    print(out[-4000:])
    sys.exit(1)
print(f"ok   hung peer: exit {proc.returncode} after {secs:.1f} s")
