// Expert parallelism's token exchange over all-to-all (normal mode): each rank sends each of its
// routed tokens once to every rank that owns one of its experts, the receivers run their experts
// on what they received, and each partial sum returns to the token's home rank, which adds them
// in increasing rank order.
//
// Why: the all-gather exchange it replaces (TESSERA_EP_EXCHANGE=allgather; see
// runtime/engine/ENGINE.md) sends every rank's rows to every rank; at EP8 top-8 of 128 a token
// reaches ~5.3 of the 8 ranks, and the all-gather's bytes grow with the rank count while these
// stay bounded by top_k.
//
// One call of Dispatch + Combine, with S ranks, m rows on this rank, E experts, k = top_k:
//   1. Layout (Backend::MoeDispatchLayout): per destination rank the count of rows and their
//      tokens, in a fixed order (rank, then token); per token its send rows by increasing rank.
//   2. Counts: each rank's S send counts and E routed-pair counts (S + E int32) are all-gathered
//      on the device over the Communicator, then come to the host (one stream wait per MoE
//      layer: the payload's sizes must be known when NCCL's send/recv are enqueued, as in
//      DeepEP's normal mode). NOTE: an all-gather rather than an all-to-all of the S counts: a
//      few hundred bytes more per rank, and every rank then sees the whole stage's expert load.
//   3. Payload: the rows (activation dtype), the tokens' ids (int32) and weights (fp32), by
//      Communicator::AllToAllV (MPI_Alltoallv on the CPU backend; grouped ncclSend/ncclRecv on
//      the CUDA one). Rank d receives, in source-rank order, each source's rows for it in token
//      order, so every rank's expert input is fixed by the routing alone.
//   4. The caller runs its experts on recv_x() -> recv_y() (Backend::MoeExperts: the sum over
//      the experts held here, in increasing expert id).
//   5. Combine: recv_y() goes back by the reverse AllToAllV into the send rows, and
//      Backend::MoeCombineRanks sums each token's rows in increasing rank order, in fp32, rounded
//      once: the same bits on every run.
//
// Low-latency mode (decode): no host read at all, so the whole step records into a CUDA graph.
// Each (source, destination) pair has a block of B rows, B fixed before the data exist (the same
// on every rank of a call, at most block_capacity, for which the buffers are sized when the
// exchange is built), and a rank's m <= B rows fit it whatever the routing: a token goes at most
// once to a rank, so rows(source -> destination) <= m (the bound min(m * k, m * experts per rank,
// m) is m for any k >= 1). Layout puts rank d's rows at block d (MoeDispatchLayout with B),
// Pack fills a block's unused rows with zeros and ids -1, and one Communicator::AllToAll moves
// the three arrays' S fixed blocks (one NCCL group; MPI_Alltoallv per array on the CPU backend).
// NOTE: the count travels in-band: a block's rows past its count carry ids -1, which the
// receiver's MoeExperts reads on the device (such rows take no expert and return zeros), so no
// separate count header is exchanged. The receiver computes all S * B rows (as the all-gather
// exchange does its S * M); combine returns the S blocks the same way and sums in rank order as
// in normal mode, so both modes give the same bits.
//
// Expert load: normal mode adds the gathered counts on the host at each Dispatch. Low-latency
// mode cannot (no host read), so its layout adds this rank's counts (rows per destination |
// pairs per expert) to int64 counters on the device, which a recorded graph updates on every
// replay; SyncLoad (a collective outside any graph: an all-gather of S + E int64 and one host
// read) folds the group's totals into tokens_per_expert() / rows_per_rank(). The model calls it
// every few low-latency steps (TESSERA_EP_LOAD_SYNC_STEPS). SetValidRows marks a decode graph's
// padding tokens on the device: they are routed nowhere, so not counted either.
//
// FP8 payload (fp8_payload; TESSERA_EP_PAYLOAD=fp8 for the model): the dispatched rows travel as
// e4m3 with one fp32 scale per 1 x 128 group (Backend::QuantizeFp8, block by block so that each
// destination's scales are contiguous: [ceil(H / 128), rows] per block) and are dequantized to
// the activation dtype on arrival (Backend::DequantizeFp8), before the experts: about half the
// bytes of bf16 rows (H + 4 H / 128 per row against 2 H). Each row's result is exactly
// DequantizeFp8(QuantizeFp8(row)) (the groups are per row), so the exchange changes the numerics
// only by that rounding. The combine's partial sums return in the activation dtype.
//
// Every rank of `ep` must call Dispatch and Combine the same number of times with the same mode,
// including ranks with no rows (m = 0: an idle DP replica joins with empty counts, or with empty
// blocks in low-latency mode). Buffers are allocated once, for `max_tokens` rows per rank per call
// (normal mode) and `block_capacity` (low-latency mode).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/ops.h"
#include "parallel/communicator.h"

namespace tessera {

struct ExpertExchangeShape {
  int64_t hidden = 0;   // H
  int top_k = 0;        // k
  int num_experts = 0;  // E over all ranks; rank r holds [r E / S, (r + 1) E / S)
  int max_tokens = 0;   // the most rows any rank dispatches in one call
  // C: rows per (source, destination) block in low-latency mode, the most rows any rank
  // dispatches in one low-latency call; 0: no low-latency mode.
  int block_capacity = 0;
  bool fp8_payload = false;  // rows sent as e4m3 + 1x128 fp32 scales
};

class ExpertExchange {
 public:
  ExpertExchange(Communicator& ep, Backend& backend, const ExpertExchangeShape& shape);

  // Collective over `ep`. Sends rows x A[m, H] with their routing ids int32 [m, k] and weights
  // fp32 [m, k] (ids < 0: padding, sent nowhere) to the ranks owning their experts; returns the
  // rows this rank received. Waits for the stream once (the counts).
  int Dispatch(const void* x, const int32_t* ids, const float* weights, int m);
  // The same in low-latency mode, in blocks of `block_rows` rows (m <= block_rows <=
  // block_capacity; every rank of the call passes the same value): never waits, records into a
  // CUDA graph, and returns S * block_rows, the rows past each block's count having ids -1.
  int DispatchLowLatency(const void* x, const int32_t* ids, const float* weights, int m,
                         int block_rows);
  // Low-latency mode only: the rows of later dispatches from `rows` on are padding (routed
  // nowhere, not counted), until the next call. Enqueued (a 4-byte upload), read on the device at
  // each dispatch, so a recorded graph follows it; the default counts every row.
  void SetValidRows(int rows);

  // The rows received by the last Dispatch: recv_x A[received, H], recv_ids int32 [received, k],
  // recv_weights fp32 [received, k]; recv_y A[received, H] is for the caller's expert outputs.
  const void* recv_x() const { return recv_x_.data(); }
  const int32_t* recv_ids() const { return recv_ids_.as<int32_t>(); }
  const float* recv_weights() const { return recv_w_.as<float>(); }
  void* recv_y() const { return recv_y_.data(); }

  // Collective over `ep`, in the last Dispatch's mode. Returns recv_y()'s rows to their home
  // ranks: out A[m, H] (m of the last Dispatch) = per token the sum of its ranks' partial sums in
  // increasing rank order.
  void Combine(void* out);

  // Expert load over the whole group (the same on every rank), summed over every normal-mode
  // Dispatch since construction and every low-latency one before the last SyncLoad: (token,
  // expert) pairs routed to each expert [E], and rows each rank received [S] (a token counts once
  // per rank however many of its experts live there). The pairs by mode: load_pairs(false) normal,
  // load_pairs(true) low latency.
  const std::vector<int64_t>& tokens_per_expert() const { return tokens_per_expert_; }
  const std::vector<int64_t>& rows_per_rank() const { return rows_per_rank_; }
  int64_t load_pairs(bool low_latency) const {
    return low_latency ? low_latency_pairs_ : normal_pairs_;
  }
  // Collective over `ep`, never inside a recorded graph: the low-latency counters of every rank
  // all-gathered and read by the host (waits for the stream) into the totals above.
  void SyncLoad();
  // SyncLoad in two halves, for a host that must not wait for the stream here (async
  // scheduling): StartLoadSync (the collective) gathers the counters on the device and enqueues
  // their copy to `host` (AllocateStaging memory of load_sync_bytes() bytes); FinishLoadSync,
  // once an event recorded after StartLoadSync has passed, adds that copy to the totals. Finish
  // them in the order they were started (each adds what grew since the one before).
  size_t load_sync_bytes() const { return host_load_.size() * sizeof(int64_t); }
  void StartLoadSync(void* host);
  void FinishLoadSync(const void* host);

  // Device bytes held by the exchange's buffers.
  size_t workspace_bytes() const { return workspace_bytes_; }

 private:
  Communicator& ep_;
  Backend& backend_;
  ExpertExchangeShape shape_;
  int ranks_;
  int experts_per_rank_;
  int64_t send_capacity_;  // rows: max(max_tokens * min(k, S), S * C)
  int64_t recv_capacity_;  // rows: S * max(max_tokens, C)
  DType act_;

  DeviceBuffer counts_;       // int32 [(1 + S), S + E]: ours (send counts | routed per expert),
                              // then every rank's, gathered
  DeviceBuffer send_tokens_;  // int32 [send_capacity]
  DeviceBuffer token_slots_;  // int32 [max(max_tokens, C), k]
  DeviceBuffer send_x_;       // A [send_capacity, H]; also the combine's landing rows
  DeviceBuffer send_ids_;     // int32 [send_capacity, k]
  DeviceBuffer send_w_;       // fp32 [send_capacity, k]
  DeviceBuffer recv_x_;       // A [recv_capacity, H]
  DeviceBuffer recv_ids_;     // int32 [recv_capacity, k]
  DeviceBuffer recv_w_;       // fp32 [recv_capacity, k]
  DeviceBuffer recv_y_;       // A [recv_capacity, H]
  // FP8 payload only, G = ceil(H / 128): per block of b rows starting at row f, its scales are
  // fp32 [G, b] at G * f.
  DeviceBuffer send_q_;      // e4m3 [send_capacity, H]
  DeviceBuffer send_scale_;  // fp32 [send_capacity * G]
  DeviceBuffer recv_q_;      // e4m3 [recv_capacity, H]
  DeviceBuffer recv_scale_;  // fp32 [recv_capacity * G]
  // Low-latency expert load: this rank's counters since construction, every rank's gathered by
  // SyncLoad, and the dispatches' valid-row count.
  DeviceBuffer load_;        // int64 [S + E]: rows sent to each rank | pairs per expert
  DeviceBuffer load_all_;    // int64 [S, S + E]
  DeviceBuffer valid_rows_;  // int32 [1]
  size_t workspace_bytes_ = 0;

  // The last Dispatch: rows per peer (counts and displacements), and m.
  std::vector<int32_t> host_counts_;  // [S, S + E]: every rank's counts
  std::vector<size_t> send_rows_, send_displs_, recv_rows_, recv_displs_;
  std::vector<size_t> scaled_a_, scaled_b_, scaled_c_, scaled_d_;  // per-call element counts
  int m_ = 0;
  int received_ = 0;
  int block_rows_ = 0;  // the last dispatch's blocks (low-latency mode), 0 in normal mode

  void CombineLowLatency(void* out);
  // FP8 payload: QuantizeFp8 of send_x_'s blocks (rows[r] rows from row first[r]) into send_q_ /
  // send_scale_; DequantizeFp8 of recv_q_'s blocks into recv_x_.
  void QuantizeBlocks(const std::vector<size_t>& rows, const std::vector<size_t>& first);
  void DequantizeBlocks(const std::vector<size_t>& rows, const std::vector<size_t>& first);
  std::vector<size_t> ll_rows_, ll_first_;  // the low-latency blocks, [S] each

  std::vector<int64_t> tokens_per_expert_;
  std::vector<int64_t> rows_per_rank_;
  std::vector<int64_t> synced_load_;  // [S + E]: the group's low-latency totals at the last sync
  std::vector<int64_t> host_load_;    // [S, S + E]: SyncLoad's gathered counters (its size
                                      // sizes StartLoadSync's copy too)
  int64_t normal_pairs_ = 0, low_latency_pairs_ = 0;
};

}  // namespace tessera
