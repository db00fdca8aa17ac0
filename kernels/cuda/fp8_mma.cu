// FP8-weight GEMMs on mma.sync with the FP8 tiles widened in shared memory (see fp8_mma.h).
//
// Per k tile of 64: the block's threads cp.async the raw tiles (A: 64 rows of x, bf16 or e4m3;
// B: 128 rows of w, e4m3) into a 3-stage ring; once a stage lands, the e4m3 tiles are widened to
// bf16 into single swizzled tiles (mma.cuh's TileAddr<64>) that the warps read with ldmatrix. A
// 128-row block of w lies in one 128-row scale block (n0 is a multiple of 128) and a 64-column k
// tile in one 128-column one, so every k tile has one weight scale; the group sums are scaled
// every second tile (and after the last).
#include "kernels/cuda/fp8_mma.h"

#include "kernels/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/fp8.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/ops.h"

namespace tessera::cuda {
namespace {

constexpr int kBM = 64, kBN = 128, kBK = 64, kStages = 3, kThreads = 256;
static_assert(kBN == kFp8Block && kFp8Block % kBK == 0,
              "a block of w rows and a k tile each lie in one 128 x 128 scale block");
constexpr int kTilesPerGroup = kFp8Block / kBK;

struct Params {
  const void* a;  // bf16 or e4m3 [m, k]
  const float* a_scale;
  int64_t a_scale_stride;
  const uint8_t* w;  // e4m3 [n, k]
  const float* w_scale;
  int64_t w_scale_stride;
  int m, n, k;
  bf16* y;
};

template <bool kAFp8>
__host__ __device__ constexpr int AStageBytes() {
  return kAFp8 ? kBM * kBK : kBM * kBK * 2;
}
constexpr int kBStageBytes = kBN * kBK;
template <bool kAFp8>
__host__ __device__ constexpr int SmemBytes() {
  return kStages * (AStageBytes<kAFp8>() + kBStageBytes) + (kAFp8 ? kBM * kBK * 2 : 0) +
         kBN * kBK * 2;
}

template <bool kAFp8>
__global__ void __launch_bounds__(kThreads) Fp8MmaKernel(const Params p) {
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  constexpr int kStageBytes = AStageBytes<kAFp8>() + kBStageBytes;
  const uint32_t a_wide = smem_base + kStages * kStageBytes;     // bf16 [64, 64] (e4m3 A only)
  const uint32_t b_wide = a_wide + (kAFp8 ? kBM * kBK * 2 : 0);  // bf16 [128, 64]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int ktiles = (p.k + kBK - 1) / kBK;

  auto load_stage = [&](int stage, int kt) {
    const uint32_t a_dst = smem_base + stage * kStageBytes;
    const uint32_t b_dst = a_dst + AStageBytes<kAFp8>();
    const int k0 = kt * kBK;
    if (kAFp8) {  // 64 rows x 4 chunks of 16 e4m3
      const int row = tid / 4, ch = tid % 4, gk = k0 + ch * 16;
      const bool ok = m0 + row < p.m && gk < p.k;
      const auto* src =
          static_cast<const uint8_t*>(p.a) + (ok ? static_cast<int64_t>(m0 + row) * p.k + gk : 0);
      CpAsync16(a_dst + row * kBK + ch * 16, src, ok);
    } else {  // 64 rows x 8 chunks of 8 bf16, stored swizzled for ldmatrix
#pragma unroll
      for (int c = tid; c < kBM * 8; c += kThreads) {
        const int row = c / 8, ch = c % 8, gk = k0 + ch * 8;
        const bool ok = m0 + row < p.m && gk < p.k;
        const auto* src =
            static_cast<const bf16*>(p.a) + (ok ? static_cast<int64_t>(m0 + row) * p.k + gk : 0);
        CpAsync16(TileAddr<kBK>(a_dst, row, ch), src, ok);
      }
    }
#pragma unroll
    for (int c = tid; c < kBN * 4; c += kThreads) {  // 128 rows x 4 chunks of 16 e4m3
      const int row = c / 4, ch = c % 4, gk = k0 + ch * 16;
      const bool ok = n0 + row < p.n && gk < p.k;
      const uint8_t* src = p.w + (ok ? static_cast<int64_t>(n0 + row) * p.k + gk : 0);
      CpAsync16(b_dst + row * kBK + ch * 16, src, ok);
    }
  };

  float acc[2][4][4], part[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = part[i][j][e] = 0.0f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    CpAsyncCommit();
  }

  const int wm = warp / 4, wn = warp % 4;  // warp tile: rows wm*32 .. +32, cols wn*32 .. +32
  const float* w_scale_row = p.w_scale + (n0 / kFp8Block) * p.w_scale_stride;

  for (int kt = 0; kt < ktiles; ++kt) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();  // stage kt landed for every thread; tile kt - 1's reads are done
    if (kt + kStages - 1 < ktiles) load_stage((kt + kStages - 1) % kStages, kt + kStages - 1);
    CpAsyncCommit();

    const int stage = kt % kStages;
    const uint8_t* a_raw = smem + stage * kStageBytes;
    const uint8_t* b_raw = a_raw + AStageBytes<kAFp8>();
#pragma unroll
    for (int c = tid; c < kBN * 4; c += kThreads) {
      const int row = c / 4, ch = c % 4;
      uint4 lo, hi;
      WidenE4M3<false>(*reinterpret_cast<const uint4*>(b_raw + row * kBK + ch * 16), 1.0f, lo, hi);
      StoreChunks(TileAddr<kBK>(b_wide, row, 2 * ch), TileAddr<kBK>(b_wide, row, 2 * ch + 1), lo,
                  hi);
    }
    if (kAFp8) {
      const int row = tid / 4, ch = tid % 4;
      uint4 lo, hi;
      WidenE4M3<false>(*reinterpret_cast<const uint4*>(a_raw + row * kBK + ch * 16), 1.0f, lo, hi);
      StoreChunks(TileAddr<kBK>(a_wide, row, 2 * ch), TileAddr<kBK>(a_wide, row, 2 * ch + 1), lo,
                  hi);
    }
    __syncthreads();  // the widened tiles are complete

    const uint32_t a_tile = kAFp8 ? a_wide : smem_base + stage * kStageBytes;
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
      uint32_t a[2][4], b[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        LdMatrixX4(a[mi],
                   TileAddr<kBK>(a_tile, wm * 32 + mi * 16 + (lane & 15), ks * 2 + (lane >> 4)));
#pragma unroll
      for (int nj = 0; nj < 2; ++nj)
        LdMatrixX4(b[nj], TileAddr<kBK>(b_wide, wn * 32 + nj * 16 + (lane >> 4) * 8 + (lane & 7),
                                        ks * 2 + ((lane >> 3) & 1)));
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
          Mma(part[mi][ni], a[mi], b[ni / 2][(ni % 2) * 2], b[ni / 2][(ni % 2) * 2 + 1]);
    }

    if (kt % kTilesPerGroup == kTilesPerGroup - 1 || kt == ktiles - 1) {
      const int g = kt / kTilesPerGroup;
      const float sw = __ldg(w_scale_row + g);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float f = sw;
          if (kAFp8) {
            const int row = min(m0 + wm * 32 + mi * 16 + (lane >> 2) + 8 * h, p.m - 1);
            f = __ldg(p.a_scale + g * p.a_scale_stride + row) * sw;
          }
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              acc[mi][ni][2 * h + e] = fmaf(part[mi][ni][2 * h + e], f, acc[mi][ni][2 * h + e]);
              part[mi][ni][2 * h + e] = 0.0f;
            }
          }
        }
      }
    }
  }
  CpAsyncWait<0>();

#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = m0 + wm * 32 + mi * 16 + (lane >> 2) + 8 * h;
      if (row >= p.m) continue;
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = n0 + wn * 32 + ni * 8 + 2 * (lane & 3) + e;
          if (col < p.n)
            p.y[static_cast<int64_t>(row) * p.n + col] = ToBf16(acc[mi][ni][2 * h + e]);
        }
    }
}

template <bool kAFp8>
void Launch(const Params& p, cudaStream_t stream) {
  if (p.m == 0 || p.n == 0) return;
  const auto kernel = Fp8MmaKernel<kAFp8>;
  AllowDynamicSmem(reinterpret_cast<const void*>(kernel), SmemBytes<kAFp8>());
  const dim3 grid((p.n + kBN - 1) / kBN, (p.m + kBM - 1) / kBM);
  kernel<<<grid, kThreads, SmemBytes<kAFp8>(), stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

void CheckShape(const void* x, const uint8_t* w, int64_t m, int64_t n, int64_t k,
                int64_t w_scale_stride) {
  TESSERA_CHECK(Fp8MmaSupported(x, w, k))
      << "FP8 mma GEMM needs k % 16 == 0 and 16-byte aligned x and w (k=" << k << ")";
  TESSERA_CHECK(m < (int64_t{1} << 31) && n < (int64_t{1} << 31) && k < (int64_t{1} << 31));
  TESSERA_CHECK(w_scale_stride >= Fp8Blocks(k)) << "weight scale stride " << w_scale_stride;
}

}  // namespace

bool Fp8MmaSupported(const void* x, const uint8_t* w, int64_t k) {
  return k > 0 && k % 16 == 0 && IsAligned(x, 16) && IsAligned(w, 16);
}

void LaunchFp8MmaW8A16(const bf16* x, const uint8_t* w, const float* w_scale,
                       int64_t w_scale_stride, int64_t m, int64_t n, int64_t k, bf16* y,
                       cudaStream_t stream) {
  CheckShape(x, w, m, n, k, w_scale_stride);
  Launch<false>({x, nullptr, 0, w, w_scale, w_scale_stride, static_cast<int>(m),
                 static_cast<int>(n), static_cast<int>(k), y},
                stream);
}

void LaunchFp8MmaW8A8(const uint8_t* x, const float* x_scale, int64_t x_scale_stride,
                      const uint8_t* w, const float* w_scale, int64_t w_scale_stride, int64_t m,
                      int64_t n, int64_t k, bf16* y, cudaStream_t stream) {
  CheckShape(x, w, m, n, k, w_scale_stride);
  TESSERA_CHECK(x_scale_stride >= m) << "activation scale stride " << x_scale_stride;
  Launch<true>({x, x_scale, x_scale_stride, w, w_scale, w_scale_stride, static_cast<int>(m),
                static_cast<int>(n), static_cast<int>(k), y},
               stream);
}

}  // namespace tessera::cuda
