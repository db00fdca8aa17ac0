#!/usr/bin/env bash
# Packs what the GPU machine needs to run the CUDA correctness check (cuda-correctness.sh) into
# CHECKOUT/.devcarry: the CUDA test binaries and `tessera` (debug info stripped), the shared
# libraries that machine lacks (gRPC, Abseil, ICU, ...: pack-libs.sh beside this script), all in one
# xz tarball (the working tree travels under a 64 MiB limit), and the scripts.
#
#   scripts/gpu/pack.sh BUILD_DIR CHECKOUT
#   then, on the device: bash .devcarry/cuda-correctness.sh   (with carry [".devcarry"])
#   and/or bash .devcarry/load-bench.sh (weight loading on a real-size checkpoint)
#   and/or bash .devcarry/a2a-bench.sh (expert-exchange kernels and modes, issue 17)
#   and/or bash .devcarry/fp8-moe.sh (grouped FP8 expert GEMMs and 30B-A3B decode, issue 16)
#   and/or bash .devcarry/step-timer-check.sh (the engine's per-step device time, issue 15)
#   and/or bash .devcarry/fp8-dispatch.sh (FP8 linears at every m, the decode GEMVs, issue 16)
#
# BUILD_DIR: a build of this tree, e.g. cmake -B build-cuda90a -DCMAKE_CUDA_ARCHITECTURES=90a.
# CHECKOUT: the checkout the device tool sends (its .devcarry/ must be git-ignored).
set -euo pipefail
build=$(realpath "$1")
dest=$(realpath "$2")/.devcarry
here=$(dirname "$(realpath "$0")")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$dest"
# BINS (paths under BUILD_DIR) narrows the binaries packed, e.g. BINS=tessera for benchmarks only.
all=(tessera tests/golden/cuda_golden_test tests/golden/cuda_graph_test
  tests/kernels/cuda_{linear,norm,rope,attention,elementwise,moe,moe_dispatch,random,sampling,convert,fp8,moe_fp8}_test
  tests/kernels/cuda_moe_bench_test tests/kernels/cuda_fp8_bench_test
  tests/parallel/nccl_communicator_test)
for f in ${BINS:-${all[@]}}; do
  strip --strip-debug -o "$stage/bin/$(basename "$f")" "$build/$f"
done
"$here/pack-libs.sh" "$stage/lib" "$stage"/bin/* >/dev/null
tar -C "$stage" -cf - bin lib | xz -T2 -6 >"$dest/pack.tar.xz"
cp "$here/cuda-correctness.sh" "$here/hf_bf16.py" "$here/compare_npy.py" "$here/comm-bench.sh" \
  "$here/load-bench.sh" "$here/load_bench.py" "$here/serve-bench.sh" "$here/a2a-bench.sh" \
  "$here/fp8-golden.sh" "$here/fp8-moe.sh" "$here/fp8-dispatch.sh" "$here/fp8_golden.py" \
  "$here/checks.sh" "$here/async-check.sh" "$here/step-timer-check.sh" \
  "$here/../../tests/parallel/cuda_parity_test.py" "$here/../../tests/parallel/nccl_fault_test.py" \
  "$here/../../tests/launch/bench_expert_load_test.py" "$dest/"
du -sh "$dest"
