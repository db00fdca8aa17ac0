#!/bin/bash
# Async scheduling on the GPU (issue 15): the golden fixtures served with and without
# --async-scheduling under load (24 concurrent greedy and seeded requests of different lengths,
# some with stop strings), each request's tokens compared between the two servers. GPU kernels
# may round differently at different batch shapes, so a difference is reported (request, first
# differing position), not hidden. Logs under $OUT; scripts/gpu/pack.sh prepares .devcarry.
set -u
cd "$(dirname "$0")/.."
root=$PWD
[ -d .devcarry/bin ] || python3 -c "import tarfile; tarfile.open('.devcarry/pack.tar.xz').extractall('.devcarry')" || exit 1
export LD_LIBRARY_PATH=$root/.devcarry/lib NCCL_NVLS_ENABLE=0
B=$root/.devcarry/bin
S=$OUT/async-check.txt
for f in ${FIXTURES:-dense_gqa moe_mixed_layers}; do
  for mode in async sync; do
    flag=; [ $mode = sync ] && flag=--no-async-scheduling
    rm -f /tmp/port
    $B/tessera serve --model tests/golden/fixtures/$f --device cuda --port 0 --http-port -1 \
      --metrics-port -1 --port-file /tmp/port --kv-cache-memory 256MiB --max-num-seqs 16 \
      --max-num-batched-tokens 64 $flag >/tmp/serve-$f-$mode.log 2>&1 &
    pid=$!
    for _ in $(seq 120); do { [ -s /tmp/port ] || ! kill -0 $pid; } && break; sleep 0.5; done
    port=$(cut -d' ' -f1 /tmp/port 2>/dev/null)
    mkdir -p /tmp/ac-$f-$mode
    for i in $(seq 0 23); do
      ids=$(python3 -c "import random; r=random.Random($i); print(','.join(str(r.randrange(1, 380)) for _ in range(r.randrange(3, 90))))")
      extra="--temperature 0"; [ $((i % 4)) = 3 ] && extra="--temperature 0.8 --seed $i"
      timeout 120 $B/tessera client --address 127.0.0.1:$port generate --prompt-ids $ids \
        --max-tokens $((8 + i * 3)) --ignore-eos $extra --json >/tmp/ac-$f-$mode/$i.json 2>&1 &
    done
    wait $(jobs -p | grep -v "^$pid$") 2>/dev/null
    kill -TERM $pid; wait $pid; echo "$f $mode: serve exit $?" | tee -a $S
  done
  python3 - $f <<'PY' | tee -a $S
import json, sys
f = sys.argv[1]
same = diff = bad = 0
for i in range(24):
    try:
        a = json.loads(open(f"/tmp/ac-{f}-async/{i}.json").read().strip().splitlines()[-1])["token_ids"]
        s = json.loads(open(f"/tmp/ac-{f}-sync/{i}.json").read().strip().splitlines()[-1])["token_ids"]
    except Exception as e:
        bad += 1; print(f"{f} request {i}: no result ({e})"); continue
    if a == s: same += 1
    else:
        diff += 1
        at = next((k for k, (x, y) in enumerate(zip(a, s)) if x != y), min(len(a), len(s)))
        print(f"{f} request {i}: differ at token {at} of {len(a)}/{len(s)}")
print(f"{f}: async vs sync under load: {same} equal, {diff} differ, {bad} failed of 24")
PY
done
