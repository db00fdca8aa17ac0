// The token-sampling rule shared by the CPU reference (kernels/cpu/sampling.cc) and the CUDA
// kernel (kernels/cuda/sampling.cu), written once so that both pick the same token, bit for bit,
// from the same logits. Included by those two translation units only.
//
// Given a row x[0, V) (V = the sampleable vocabulary; ids >= V are never drawn) and
// SamplingRowParams (kernels/ops.h):
//   0. Penalties, when the row has them (SamplingPenaltyRow, kernels/ops.h): x[id] = Penalise
//      below for each of the row's (id, count) entries; the steps after read the penalised row.
//   1. m = max x; greedy (temperature 0) returns the lowest id holding m.
//   2. Weights: q(x) = floor(2^40 * 2^((x - m) * log2(e) / T)) as an integer, with 2^t evaluated
//      by Exp2Fixed below from correctly rounded float operations only (no FMA contraction), so
//      it is the same number on every device. q(m) = 2^40; q < 1 (tokens 28 nats or more below
//      the max) is 0 and never drawn, a mass below 2^-40 * V * q(m) over the whole tail.
//   3. top-k (0 < k < V): tau_k = the k-th largest value of x counted with multiplicity; keep
//      x >= tau_k (ties at the k-th value are all kept, as Hugging Face's TopKLogitsWarper).
//   4. top-p (p < 1): S = sum of q over the top-k set; target = min(S, ceil(p * S)) in double.
//      tau_p = the largest value v of the top-k set with sum(q : x >= v) >= target; keep
//      x >= tau_p. Ties at tau_p are all kept: the kept set is the smallest run of whole value
//      classes, from the top, whose mass reaches p.
//   5. min-p (> 0): keep q >= ceil(min_p * 2^40) (probability >= min_p * the top probability).
//   6. Draw: M = sum of q over the kept set (integers: the same in any summation order);
//      r = DrawBits(seed, step), t = floor(r * M / 2^64) uniform in [0, M); the token is the
//      smallest id whose running sum of kept q, in ascending id order, exceeds t.
// Values are compared as floats (-0 == +0); logits are finite or -inf (NaN is undefined).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define TESSERA_HD __host__ __device__ __forceinline__
#else
#define TESSERA_HD inline
#endif

namespace tessera::sampling {

constexpr int kWeightBits = 40;
constexpr float kLog2E = 1.4426950408889634f;
// Weights vanish below 2^-kWeightBits: t <= -(kWeightBits + 1) gives 0 whatever the polynomial.
constexpr float kMinExponent = -(kWeightBits + 1.0f);

// Correctly rounded float operations that the compiler may not fuse into FMAs (on the host the
// file including this one is built with -ffp-contract=off).
TESSERA_HD float Mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
TESSERA_HD float Add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
TESSERA_HD float Sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
TESSERA_HD float Div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// log2(e) / T, the factor applied to x - m.
TESSERA_HD float WeightScale(float temperature) { return Div(kLog2E, temperature); }

// floor(2^kWeightBits * 2^t) for t <= 0, with 2^t = 2^floor(t) * P(t - floor(t)) and P the
// degree-7 Taylor polynomial of 2^f on [0, 1) (relative error < 2e-6). Every step is exact or
// one correctly rounded operation.
TESSERA_HD uint64_t Exp2Fixed(float t) {
  if (!(t > kMinExponent)) return 0;  // also -inf and NaN
#if defined(__CUDA_ARCH__)
  const float k = floorf(t);
#else
  const float k = std::floor(t);
#endif
  const float f = Sub(t, k);  // exact: the fraction bits of t
  float p = 1.5252734e-05f;
  p = Add(Mul(p, f), 1.5403530e-04f);
  p = Add(Mul(p, f), 1.3333558e-03f);
  p = Add(Mul(p, f), 9.6181291e-03f);
  p = Add(Mul(p, f), 5.5504109e-02f);
  p = Add(Mul(p, f), 2.4022651e-01f);
  p = Add(Mul(p, f), 6.9314718e-01f);
  p = Add(Mul(p, f), 1.0f);
  const int e = kWeightBits + static_cast<int>(k);  // in [-1, kWeightBits]
  const uint32_t bits = static_cast<uint32_t>(127 + e) << 23;
  float two_e;  // 2^e, exactly
#if defined(__CUDA_ARCH__)
  two_e = __uint_as_float(bits);
#else
  std::memcpy(&two_e, &bits, sizeof(two_e));
#endif
  return static_cast<uint64_t>(Mul(p, two_e));  // exact product (power of two), truncated
}

// The weight of logit x in a row whose maximum is m.
TESSERA_HD uint64_t Weight(float x, float m, float scale) {
  return Exp2Fixed(Mul(Sub(x, m), scale));
}

// ceil(fraction * total), at most total, in double (correctly rounded on both sides).
TESSERA_HD uint64_t FractionOf(float fraction, uint64_t total) {
#if defined(__CUDA_ARCH__)
  const double want = ceil(__dmul_rn(static_cast<double>(fraction), static_cast<double>(total)));
#else
  const double want = std::ceil(static_cast<double>(fraction) * static_cast<double>(total));
#endif
  const uint64_t t = static_cast<uint64_t>(want);
  return t < total ? t : total;
}

TESSERA_HD uint64_t SplitMix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// 64 random bits for the `step`-th token of the stream `seed` (counter-based: no state).
TESSERA_HD uint64_t DrawBits(uint64_t seed, uint64_t step) {
  return SplitMix64(SplitMix64(seed) + step);
}

// Logit x of an id seen `count` times in the output (0: prompt only) after the penalties of
// SamplingPenaltyRow (kernels/ops.h), in correctly rounded operations.
TESSERA_HD float Penalise(float x, int32_t count, float repetition, float presence,
                          float frequency) {
  if (repetition != 1.0f) x = x > 0.0f ? Div(x, repetition) : Mul(x, repetition);
  if (count > 0 && (presence != 0.0f || frequency != 0.0f))
    x = Sub(x, Add(Mul(frequency, static_cast<float>(count)), presence));
  return x;
}

// floor(r * total / 2^64): uniform in [0, total) for uniform r.
TESSERA_HD uint64_t ScaleDraw(uint64_t r, uint64_t total) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(r, total);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(r) * total) >> 64);
#endif
}

}  // namespace tessera::sampling
