#!/usr/bin/env bash
# The main job on its embedded default: `tessera serve` on the tiny Qwen3 model (CPU backend, two
# MPI ranks, gRPC on a free port), then `tessera client` streams a chat reply, then the server is
# drained with SIGTERM. Run after building (README, first command).
#
#   scripts/demo.sh [--build DIR] ["your question"]
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
if [ "${1:-}" = "--build" ]; then build=$2; shift 2; fi
question=${1:-"Write a haiku about tensor parallelism."}
tessera=$build/tessera
[ -x "$tessera" ] || { echo "demo: $tessera not built (cmake --build $build)" >&2; exit 1; }

# mpirun refuses to start as root unless told it is intended (containers often run as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== starting: mpirun -np 2 $tessera serve (embedded tiny Qwen3, CPU backend)"
mpirun --oversubscribe --bind-to none -np 2 "$tessera" serve --host 127.0.0.1 --port 0 \
  --metrics-port 0 --http-port 0 --port-file "$work/port" >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 300); do
  [ -s "$work/port" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done
read -r port metrics pid http <"$work/port"
head -n 1 "$work/serve.log"
echo "== health: $("$tessera" client --address "127.0.0.1:$port" health)"
echo "== chat (streamed; the weights are random, so the words are too): $question"
"$tessera" client --address "127.0.0.1:$port" chat --user "$question" --no-thinking --max-tokens 48 --seed 1
echo "== metrics: $(curl -s "http://127.0.0.1:$metrics/metrics" | grep -E '^tessera:generation_tokens_total')"
echo "== draining (SIGTERM to rank 0)"
kill -TERM "$pid"
wait "$server"
echo "== server exited $?"
