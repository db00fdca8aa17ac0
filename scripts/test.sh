#!/usr/bin/env bash
# Installs what is needed, builds, and runs every test: the README's test command and CI's job.
#
#   ./scripts/test.sh            everything (build dir: build/)
#   FUZZ_SECONDS=30 ./scripts/test.sh   shorter fuzzing (default 60 s per target)
#
# Steps: Debian packages -> reference Python env (HF tokenizers/transformers, numpy) -> one
# CMake/Ninja build (ccache) -> clang-format check -> ctest in parallel -> bounded fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${BUILD_DIR:-$root/build}
jobs=$(nproc)

echo "== dependencies"
./scripts/install-deps.sh
python=$(./scripts/install-test-deps.sh | tail -n 1)

echo "== build"
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
# Paths relative to the checkout, and debug info without the checkout's path in the hash: a fresh
# clone elsewhere (CI) still hits the cache.
export CCACHE_BASEDIR=$root CCACHE_NOHASHDIR=1
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTESSERA_PYTHON="$python" >/dev/null
cmake --build "$build" -j "$jobs"

echo "== format"
./scripts/check-format.sh

echo "== tests"
(cd "$build" && ctest -j "$jobs" --output-on-failure --timeout 900)

echo "== fuzzing"
./scripts/run-fuzzers.sh "${FUZZ_SECONDS:-60}"
echo "== all tests passed"
