// The one-shot peer-memory all-reduce (peer_allreduce.h has the slot layout and the contract).
//
// One launch of kPeerBlocks blocks per rank. Block b owns one contiguous range of the message,
// computed from the count alone, so block b of every rank covers the same elements whatever each
// rank's buffer alignment; the block then only needs block b of each peer:
//   1. copy its range of the input into our slot's half (epoch parity);
//   2. announce the epoch in each peer's flags[b][rank] (release, system scope) and wait until
//      every peer's flags[b][peer] in our slot reaches the epoch (acquire; bounded);
//   3. sum its range of every rank's half in rank order in fp32, write the rounded sum over the
//      input.
// After step 2: every peer's block b has finished step 1 of this call, so its range is readable.
// Reuse: call K writes half K % 2, and starts only after call K-1 ended here, which needed every
// peer to have started K-1, so to have ended K-2 (stream order): nobody still reads half K % 2.
#include "kernels/cuda/peer_allreduce.h"

#include "kernels/base/check.h"
#include "kernels/cuda/common.cuh"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ uint64_t LoadAcquireSys(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void StoreReleaseSys(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// 16 bytes of T as floats, and back (each element rounded once).
template <typename T>
struct Vec16;
template <>
struct Vec16<bf16> {
  static constexpr int kN = 8;
  __device__ static void Unpack(uint4 v, float (&f)[kN]) { Unpack8(Bf16x8{v}, f); }
  __device__ static uint4 Pack(const float (&f)[kN]) { return Pack8(f).bits; }
  __device__ static float ToF(bf16 x) { return ToFloat(x); }
  __device__ static bf16 FromF(float x) { return ToBf16(x); }
};
template <>
struct Vec16<float> {
  static constexpr int kN = 4;
  __device__ static void Unpack(uint4 v, float (&f)[kN]) {
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  }
  __device__ static uint4 Pack(const float (&f)[kN]) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]),
                      __float_as_uint(f[3]));
  }
  __device__ static float ToF(float x) { return x; }
  __device__ static float FromF(float x) { return x; }
};

// args.slots[r] without a run-time index into the parameter array.
__device__ __forceinline__ char* SlotOf(const PeerAllReduceArgs& a, int r) {
  char* slot = nullptr;
#pragma unroll
  for (int i = 0; i < kPeerMaxRanks; ++i) {
    if (i == r) slot = a.slots[i];
  }
  return slot;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    PeerAllReduceKernel(const PeerAllReduceArgs a, T* buf, size_t count) {
  using V = Vec16<T>;
  constexpr int kN = V::kN;
  const int block = blockIdx.x, tid = threadIdx.x;
  char* const mine = SlotOf(a, a.rank);

  __shared__ uint64_t epoch_shared;
  if (tid == 0) {
    uint64_t* epochs = reinterpret_cast<uint64_t*>(mine + kPeerEpochsOffset);
    epoch_shared = epochs[block] + 1;
    epochs[block] = epoch_shared;
  }
  __syncthreads();
  const uint64_t epoch = epoch_shared;
  const size_t data = kPeerDataOffset + (epoch & 1) * a.half_bytes;

  // NOTE: ranges start at multiples of 8 elements, so every slot access below is 16-byte aligned.
  const size_t chunk = ((count + gridDim.x - 1) / gridDim.x + 7) / 8 * 8;
  const size_t begin = min(count, block * chunk), end = min(count, begin + chunk);
  const size_t vec_end = begin + (end - begin) / kN * kN;
  const bool aligned = reinterpret_cast<uintptr_t>(buf) % 16 == 0;
  T* const stage = reinterpret_cast<T*>(mine + data);

  // 1. Our range of the input into our slot.
  if (aligned) {
    for (size_t i = begin + tid * kN; i < vec_end; i += kThreads * kN) {
      *reinterpret_cast<uint4*>(stage + i) = *reinterpret_cast<const uint4*>(buf + i);
    }
    for (size_t i = vec_end + tid; i < end; i += kThreads) stage[i] = buf[i];
  } else {
    for (size_t i = begin + tid; i < end; i += kThreads) stage[i] = buf[i];
  }
  __syncthreads();

  // 2. Thread p signals peer p and waits for it. The release after the barrier publishes the
  // whole block's copies (cumulativity); the acquire before the next barrier covers every thread's
  // reads below.
  if (tid < a.ranks && tid != a.rank) {
    uint64_t* peer_flags = reinterpret_cast<uint64_t*>(SlotOf(a, tid));
    StoreReleaseSys(peer_flags + block * kPeerMaxRanks + a.rank, epoch);
    const uint64_t* flag = reinterpret_cast<const uint64_t*>(mine) + block * kPeerMaxRanks + tid;
    // NOTE: >=, not ==: a fast peer may already have announced the next call.
    if (LoadAcquireSys(flag) < epoch) {
      const uint64_t start = GlobalTimerNs();
      uint32_t spins = 0;
      while (LoadAcquireSys(flag) < epoch) {
        if (a.timeout_ns != 0 && (++spins & 255) == 0 && GlobalTimerNs() - start > a.timeout_ns) {
          *reinterpret_cast<volatile int*>(a.error) = 1;  // the host's stream wait reports it
          __threadfence_system();
          break;
        }
      }
    }
  }
  __syncthreads();
  // After this barrier: every peer's range [begin, end) of this epoch's half is written.

  // 3. Sum in rank order (the same order, hence the same bits, on every rank); round once.
  for (size_t i = begin + tid * kN; i < vec_end; i += kThreads * kN) {
    uint4 v[kPeerMaxRanks];
#pragma unroll
    for (int r = 0; r < kPeerMaxRanks; ++r) {  // every load in flight before the first add
      if (r < a.ranks) v[r] = __ldcg(reinterpret_cast<const uint4*>(a.slots[r] + data) + i / kN);
    }
    float acc[kN], x[kN];
    V::Unpack(v[0], acc);
#pragma unroll
    for (int r = 1; r < kPeerMaxRanks; ++r) {
      if (r < a.ranks) {
        V::Unpack(v[r], x);
#pragma unroll
        for (int j = 0; j < kN; ++j) acc[j] += x[j];
      }
    }
    if (aligned) {
      *reinterpret_cast<uint4*>(buf + i) = V::Pack(acc);
    } else {
#pragma unroll
      for (int j = 0; j < kN; ++j) buf[i + j] = V::FromF(acc[j]);
    }
  }
  for (size_t i = vec_end + tid; i < end; i += kThreads) {
    float acc = V::ToF(__ldcg(reinterpret_cast<const T*>(a.slots[0] + data) + i));
#pragma unroll
    for (int r = 1; r < kPeerMaxRanks; ++r) {
      if (r < a.ranks) acc += V::ToF(__ldcg(reinterpret_cast<const T*>(a.slots[r] + data) + i));
    }
    buf[i] = V::FromF(acc);
  }
}

}  // namespace

size_t PeerSlotBytes(size_t max_bytes) {
  const size_t half = (max_bytes + 255) / 256 * 256;
  return kPeerDataOffset + 2 * half;
}

void LaunchPeerAllReduceSum(const PeerAllReduceArgs& args, void* buf, size_t count, DType dtype,
                            cudaStream_t stream) {
  TESSERA_CHECK(args.ranks >= 1 && args.ranks <= kPeerMaxRanks && args.rank >= 0 &&
                args.rank < args.ranks)
      << "peer all-reduce: rank " << args.rank << " of " << args.ranks;
  TESSERA_CHECK(count * DTypeSize(dtype) <= args.half_bytes)
      << "peer all-reduce: " << count << " elements do not fit the slot";
  if (count == 0) return;
  if (dtype == DType::kBF16) {
    PeerAllReduceKernel<bf16>
        <<<kPeerBlocks, kThreads, 0, stream>>>(args, static_cast<bf16*>(buf), count);
  } else {
    TESSERA_CHECK(dtype == DType::kF32) << "peer all-reduce: bf16 or f32, not " << DTypeName(dtype);
    PeerAllReduceKernel<float>
        <<<kPeerBlocks, kThreads, 0, stream>>>(args, static_cast<float*>(buf), count);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
