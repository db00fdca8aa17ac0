// Tensor-core and async-copy primitives shared by the attention kernels (flash_prefill.cu,
// decode_attention.cu), sm_80+: cp.async, ldmatrix, mma.sync m16n8k16 (bf16 in, fp32 out), exp2,
// and the XOR-swizzled [rows, kD] bf16 shared-memory tile both kernels stage K and V in.
// Included by .cu files only.
#pragma once

#include <cstdint>

namespace tessera::cuda {

// Byte address of the 16-byte chunk `chunk` (8 bf16) of row `row` in a [rows, kD] bf16 tile.
// NOTE: chunks are XOR-swizzled with the row's low 3 bits, so the 8 row addresses an ldmatrix
// phase reads (8 consecutive rows, one logical chunk) fall in 8 distinct 16-byte bank groups.
template <int kD>
__device__ __forceinline__ uint32_t TileAddr(uint32_t base, int row, int chunk) {
  static_assert(kD % 64 == 0, "rows of >= 8 16-byte chunks: the XOR swizzle permutes 8 chunks");
  return base + row * (kD * 2) + ((chunk ^ (row & 7)) << 4);
}

// The ldmatrix addresses of the kernels' loops are rows R + r and chunks C + c, with R a multiple
// of 8 (so row & 7 == r), C even and c in {0, 1}. Then chunk ^ r == C ^ (c ^ r), and since
// r * row_bytes lies above the chunk bits, TileAddr(base, R + r, C + c) ==
// base + R * row_bytes + (LaneOffset(r, c) ^ (C << 4)).
// NOTE: so each k step costs one XOR with an immediate instead of a full address computation.
template <int kD>
__device__ __forceinline__ uint32_t LaneOffset(int r, int c) {
  return r * (kD * 2) + ((c ^ (r & 7)) << 4);
}

__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  // src-size 0 fills the 16 bytes with zeros and reads nothing.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c[16x8] += a[16x16] b[16x8], bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float Exp2(float x) {  // exp2(-inf) = +0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace tessera::cuda
