#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) with clang in build-fuzz/ and runs each for a bounded
# time. Exits non-zero if a target fails to build or any input crashes it (a crash, a sanitizer
# report, a broken invariant, a timeout or running out of memory).
#
#   scripts/run-fuzzers.sh [seconds per target, default 60]
#
# The committed seed corpus (tests/fuzz/corpus/<target>/) is only read; new inputs go to
# build-fuzz/fuzz-corpus/<target>/ and crashing ones to build-fuzz/fuzz-artifacts/.
set -euo pipefail

seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${TESSERA_FUZZ_BUILD_DIR:-$root/build-fuzz}
jobs=${TESSERA_BUILD_JOBS:-2}
targets=(safetensors_header config tokenizer tokenizer_files generate_request)

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DTESSERA_FUZZ=ON \
  -DTESSERA_CUDA=OFF -DBUILD_TESTING=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$build" -j "$jobs" "${targets[@]/%/_fuzzer}"

mkdir -p "$build/fuzz-artifacts"
summary=()
for target in "${targets[@]}"; do
  work=$build/fuzz-corpus/$target
  log=$build/fuzz-$target.log
  mkdir -p "$work"
  echo "== $target: ${seconds}s"
  status=0
  extra=()
  [ -f "$root/tests/fuzz/$target.dict" ] && extra+=(-dict="$root/tests/fuzz/$target.dict")
  [ "$target" = tokenizer ] && extra+=(-max_len=4096)
  "$build/tests/fuzz/${target}_fuzzer" "$work" "$root/tests/fuzz/corpus/$target" \
    "${extra[@]}" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$build/fuzz-artifacts/$target-" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log"
    summary+=("$target: FAILED (exit $status), see $log and $build/fuzz-artifacts/")
  else
    summary+=("$target: ok, ${execs:-?} runs (${rate:-?}/s), ${cov:-cov: ?}, corpus $(ls "$work" | wc -l) files")
  fi
done

printf '%s\n' "${summary[@]}"
for line in "${summary[@]}"; do
  case $line in *FAILED*) exit 1 ;; esac
done
