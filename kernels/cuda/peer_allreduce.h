// The one-shot all-reduce over peer memory (peer_allreduce.cu): for small messages between the GPUs
// of one node, one kernel per rank instead of NCCL's protocol (TP decode's 80 all-reduces a step).
//
// Every rank owns one peer-visible device allocation (its "slot") that every other rank has mapped
// (CUDA IPC; parallel/peer_allreduce.cc sets that up). A call on rank r: each block copies its part
// of r's input into r's slot, tells the same block of every peer it is there (a flag written into
// the peer's slot), waits for the peers' flags in its own slot, then sums its part of every rank's
// slot in rank order 0..n-1 in fp32 and writes the result over the input, rounded once. Every rank
// computes the same fp32 sum in the same order, so all ranks hold bit-identical results.
//
// Slot layout (bytes):
//   [0, kPeerFlagsBytes)          flags [kPeerBlocks][kPeerMaxRanks] u64: flags[b][s] is the last
//                                 epoch block b of rank s announced here (written by rank s only)
//   [kPeerEpochsOffset, +8 * kPeerBlocks)  epochs [kPeerBlocks] u64: this rank's count of calls,
//                                 one counter per block (all equal: every block runs every call)
//   [kPeerDataOffset, + 2 * half_bytes)    data: two halves, used by the epoch's parity
// NOTE: the epoch lives in device memory and the kernel advances it, so a call captured in a CUDA
// graph replays correctly with fixed arguments.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/base/dtype.h"

namespace tessera::cuda {

constexpr int kPeerMaxRanks = 8;
// NOTE: a fixed grid, whatever the size: each block's epoch counter must see every call.
constexpr int kPeerBlocks = 32;
constexpr size_t kPeerFlagsBytes = sizeof(uint64_t) * kPeerBlocks * kPeerMaxRanks;
constexpr size_t kPeerEpochsOffset = kPeerFlagsBytes;
constexpr size_t kPeerDataOffset = 8192;
static_assert(kPeerEpochsOffset + sizeof(uint64_t) * kPeerBlocks <= kPeerDataOffset,
              "flags and epochs must fit below the data");

// Bytes of one slot whose halves hold `max_bytes` each (rounded up to 256).
size_t PeerSlotBytes(size_t max_bytes);

struct PeerAllReduceArgs {
  char* slots[kPeerMaxRanks];  // every rank's slot, mapped in this process (ours at [rank])
  int ranks;
  int rank;
  size_t half_bytes;    // one data half (>= the message's bytes)
  int* error;           // set to 1 (device-visible host memory) when a peer never arrived
  uint64_t timeout_ns;  // how long a block waits for a peer before it gives up; 0: no bound
};

// buf [count] (bf16 or f32, any alignment) = the sum over ranks of buf, in place. Every rank must
// call it with the same count and dtype, in the same order relative to its other calls on the same
// slots. count * DTypeSize(dtype) <= args.half_bytes.
void LaunchPeerAllReduceSum(const PeerAllReduceArgs& args, void* buf, size_t count, DType dtype,
                            cudaStream_t stream);

}  // namespace tessera::cuda
