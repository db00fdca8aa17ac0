#!/usr/bin/env python3
"""Expert load under EP2 (mpirun -np 2 tessera bench --ep 2, tiny MoE model, CPU): the counters
see every dispatch in both exchange modes, low-latency included, and which path ran.

- default (TESSERA_EP_MODE=auto): prefills go through the normal mode, decode steps through the
  low-latency one; with TESSERA_EP_LOAD_SYNC_STEPS=1 the totals are exact after every step:
  (token, expert) pairs = tokens x top_k x MoE layers, split by mode as the steps were;
- TESSERA_EP_MODE=low_latency: every pair counted by the low-latency counters, the same totals
  per expert and per rank (the same routing);
- TESSERA_EP_LOAD_SYNC_STEPS=3: the low-latency pairs arrive at each third decode step;
- TESSERA_EP_EXCHANGE=allgather: the fallback ran (no exchange, no expert load), so the default
  above went through the all-to-all exchange.

On GPUs (BENCH_DEVICE=cuda, 2 GPUs: scripts/gpu/a2a-bench.sh) the decode steps replay CUDA graphs
and batch 3 runs padded to the graph bucket 4: the padding token must not be counted.

usage: [BENCH_DEVICE=cuda] bench_expert_load_test.py TESSERA FIXTURES_DIR MPIRUN [MPIRUN_FLAGS...]
"""
import json
import os
import subprocess
import sys

TESSERA, FIXTURES, MPIRUN, *MPI_FLAGS = sys.argv[1:]
MODEL = os.path.join(FIXTURES, "moe_norm_topk")
config = json.load(open(os.path.join(MODEL, "config.json")))
TOP_K = config["num_experts_per_tok"]
EXPERTS = config["num_local_experts"]
LAYERS = config["num_hidden_layers"]
assert not config.get("mlp_only_layers") and config.get("decoder_sparse_step", 1) == 1
MOE_LAYERS = LAYERS

DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
TTFT, REPEATS, BATCHES, CONTEXT, STEPS = [16, 48], 2, [1, 3], 32, 4
ARGS = ["--ep", "2", "--ttft", ",".join(map(str, TTFT)), "--repeats", str(REPEATS),
        "--decode-batch", ",".join(map(str, BATCHES)), "--decode-context", str(CONTEXT),
        "--decode-steps", str(STEPS), "--json"]
# Tokens through the layers: every TTFT run (warm-up included), the decode contexts' prefills,
# the decode steps. Prefills are larger than the low-latency capacity (the largest decode batch's
# graph bucket), so normal mode; decode steps low-latency.
PREFILL_TOKENS = sum(TTFT) * (REPEATS + 1) + sum(BATCHES) * CONTEXT
DECODE_TOKENS = sum(BATCHES) * STEPS
PER_TOKEN = TOP_K * MOE_LAYERS

failures = []


def bench(extra_env):
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra_env)
    exported = [a for k in extra_env for a in ("-x", k)]
    cmd = [MPIRUN, *MPI_FLAGS, *exported, "-np", "2", TESSERA, "bench", "--device", DEVICE,
           "--model", MODEL, *ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout), proc.stderr


def check(label, fn):
    try:
        fn()
        print(f"ok   {label}")
    except Exception as e:  # report every case, then fail
        failures.append(label)
        print(f"FAIL {label}: {e!r}")


loads = {}


def exact(mode_env, want_normal, want_low):
    def run():
        r, err = bench({"TESSERA_EP_LOAD_SYNC_STEPS": "1", **mode_env})
        load = r["expert_load"]
        experts, ranks = load["tokens_per_expert"], load["rows_per_rank"]
        assert len(experts) == EXPERTS and len(ranks) == 2, load
        assert load["pairs_normal"] == want_normal, load
        assert load["pairs_low_latency"] == want_low, load
        assert sum(experts) == want_normal + want_low, load
        # Each token reaches each rank that owns one of its experts once: between one rank and
        # min(top_k, ranks) ranks per token and layer.
        tokens = (want_normal + want_low) // PER_TOKEN
        assert tokens * MOE_LAYERS <= sum(ranks) <= tokens * MOE_LAYERS * min(TOP_K, 2), load
        assert load["max_over_mean_expert"] >= 1 and load["max_over_mean_rank"] >= 1, load
        assert "expert load (max/mean)" in err and "low-latency" in err, err
        loads[json.dumps(mode_env)] = load
    return run


check("auto: prefill normal, decode low-latency, exact totals",
      exact({}, PREFILL_TOKENS * PER_TOKEN, DECODE_TOKENS * PER_TOKEN))
check("low_latency forced: every pair through the device counters",
      exact({"TESSERA_EP_MODE": "low_latency"}, 0, (PREFILL_TOKENS + DECODE_TOKENS) * PER_TOKEN))


def same_routing():
    a, b = loads[json.dumps({})], loads[json.dumps({"TESSERA_EP_MODE": "low_latency"})]
    assert a["tokens_per_expert"] == b["tokens_per_expert"], (a, b)
    assert a["rows_per_rank"] == b["rows_per_rank"], (a, b)


check("both modes count the same routing alike", same_routing)


def interval():
    # Decode forwards in order: STEPS of each batch; synced every 3, so the forwards up to the last
    # multiple of 3 are in, the rest wait for the next sync.
    r, _ = bench({"TESSERA_EP_LOAD_SYNC_STEPS": "3"})
    load = r["expert_load"]
    forwards = [b for b in BATCHES for _ in range(STEPS)]
    synced = sum(forwards[:len(forwards) // 3 * 3])
    assert load["pairs_normal"] == PREFILL_TOKENS * PER_TOKEN, load
    assert load["pairs_low_latency"] == synced * PER_TOKEN, load


check("TESSERA_EP_LOAD_SYNC_STEPS=3: low-latency pairs arrive at each sync", interval)


def allgather():
    r, err = bench({"TESSERA_EP_EXCHANGE": "allgather"})
    assert "expert_load" not in r, r.get("expert_load")
    assert "expert load" not in err, err


check("TESSERA_EP_EXCHANGE=allgather: the fallback runs only when asked", allgather)

print(f"{5 - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
