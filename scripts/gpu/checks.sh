#!/bin/bash
# One device call that runs several of the check scripts beside it, in order of priority, each under
# a time cap within BUDGET_S seconds in all (default 560, under the device's 600 s per call). The
# device returns at most 8 files, so every script writes into its own folder under /tmp and all of
# them are packed into $OUT/logs.tgz after each script (a call cut short still returns what ran);
# $OUT/checks.txt gets each script's exit status, time and the tail of its output.
#
#   STAGES="fp8-golden:200 serve-bench:240 a2a-bench:90" bash .devcarry/checks.sh
#
# Each script reads its own variables (MODELS, TESTS, BENCH, ...) from the environment.
set -u
cd "$(dirname "$0")/.."
final=$OUT
work=$(mktemp -d)
deadline=$(($(date +%s) + ${BUDGET_S:-560}))
for stage in ${STAGES:-fp8-golden:200 serve-bench:240 a2a-bench:90 cuda-correctness:150}; do
  name=${stage%%:*}
  cap=${stage##*:}
  left=$((deadline - $(date +%s)))
  if [ $left -lt 30 ]; then
    echo "===== $name: skipped, ${left} s left" >>"$final/checks.txt"
    continue
  fi
  [ "$cap" -gt $left ] && cap=$left
  mkdir -p "$work/$name"
  start=$(date +%s)
  OUT=$work/$name timeout "$cap" bash ".devcarry/$name.sh" >"$work/$name/stdout.txt" 2>&1
  code=$?
  {
    echo "===== $name: exit $code in $(($(date +%s) - start)) s (cap $cap s)"
    tail -n ${TAIL_LINES:-80} "$work/$name/stdout.txt"
  } >>"$final/checks.txt"
  tar -czf "$final/logs.tgz" -C "$work" .
done
