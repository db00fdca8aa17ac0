#include "parallel/expert_exchange.h"

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/base/check.h"

namespace tessera {

ExpertExchange::ExpertExchange(Communicator& ep, Backend& backend, const ExpertExchangeShape& shape)
    : ep_(ep),
      backend_(backend),
      shape_(shape),
      ranks_(ep.size()),
      act_(backend.activation_dtype()) {
  const int S = ranks_, k = shape.top_k;
  TESSERA_CHECK(shape.hidden > 0 && k >= 1 && shape.max_tokens >= 0 && shape.block_capacity >= 0)
      << "expert exchange shape";
  TESSERA_CHECK(shape.num_experts % S == 0)
      << shape.num_experts << " experts over " << S << " expert-parallel ranks";
  experts_per_rank_ = shape.num_experts / S;
  // The two modes never run at once: they share the buffers, sized for the larger.
  const int64_t C = shape.block_capacity;
  send_capacity_ = std::max(static_cast<int64_t>(shape.max_tokens) * std::min(k, S), S * C);
  recv_capacity_ = static_cast<int64_t>(S) * std::max<int64_t>(shape.max_tokens, C);
  TESSERA_CHECK_LE(recv_capacity_, int64_t{INT32_MAX}) << "expert exchange rows per call";
  const size_t a = DTypeSize(act_);
  auto alloc = [&](DeviceBuffer* buf, int64_t bytes) {
    *buf = backend_.Allocate(static_cast<size_t>(std::max<int64_t>(bytes, 16)));
    workspace_bytes_ += buf->bytes();
  };
  alloc(&counts_, (1 + S) * (S + shape.num_experts) * sizeof(int32_t));
  alloc(&send_tokens_, send_capacity_ * sizeof(int32_t));
  alloc(&token_slots_, std::max<int64_t>(shape.max_tokens, C) * k * sizeof(int32_t));
  alloc(&send_x_, send_capacity_ * shape.hidden * a);
  alloc(&send_ids_, send_capacity_ * k * sizeof(int32_t));
  alloc(&send_w_, send_capacity_ * k * sizeof(float));
  alloc(&recv_x_, recv_capacity_ * shape.hidden * a);
  alloc(&recv_ids_, recv_capacity_ * k * sizeof(int32_t));
  alloc(&recv_w_, recv_capacity_ * k * sizeof(float));
  alloc(&recv_y_, recv_capacity_ * shape.hidden * a);
  if (shape.fp8_payload) {
    const int64_t G = Fp8Blocks(shape.hidden);
    alloc(&send_q_, send_capacity_ * shape.hidden);
    alloc(&send_scale_, send_capacity_ * G * static_cast<int64_t>(sizeof(float)));
    alloc(&recv_q_, recv_capacity_ * shape.hidden);
    alloc(&recv_scale_, recv_capacity_ * G * static_cast<int64_t>(sizeof(float)));
  }
  const int64_t load_size = S + shape.num_experts;
  alloc(&load_, load_size * static_cast<int64_t>(sizeof(int64_t)));
  alloc(&load_all_, S * load_size * static_cast<int64_t>(sizeof(int64_t)));
  alloc(&valid_rows_, sizeof(int32_t));
  const std::vector<int64_t> zeros(static_cast<size_t>(load_size), 0);
  backend_.CopyToDevice(load_.data(), zeros.data(), zeros.size() * sizeof(int64_t));
  SetValidRows(INT32_MAX);
  synced_load_.assign(static_cast<size_t>(load_size), 0);
  host_load_.resize(static_cast<size_t>(S * load_size));
  ll_rows_.resize(S);
  ll_first_.resize(S);
  host_counts_.resize(static_cast<size_t>(S) * (S + shape.num_experts));
  send_rows_.resize(S);
  send_displs_.resize(S);
  recv_rows_.resize(S);
  recv_displs_.resize(S);
  scaled_a_.resize(S);
  scaled_b_.resize(S);
  scaled_c_.resize(S);
  scaled_d_.resize(S);
  tokens_per_expert_.assign(shape.num_experts, 0);
  rows_per_rank_.assign(S, 0);
}

int ExpertExchange::Dispatch(const void* x, const int32_t* ids, const float* weights, int m) {
  block_rows_ = 0;
  const int S = ranks_, k = shape_.top_k, E = shape_.num_experts;
  const int64_t H = shape_.hidden;
  TESSERA_CHECK(m >= 0 && m <= shape_.max_tokens)
      << m << " rows to dispatch (expert exchange planned for " << shape_.max_tokens << ")";
  const int row = S + E;  // one rank's counts: rows for each rank | pairs for each expert
  int32_t* counts = counts_.as<int32_t>();
  backend_.MoeDispatchLayout(ids, m, k, S, experts_per_rank_, counts, counts + S,
                             send_tokens_.as<int32_t>(), token_slots_.as<int32_t>(), 0,
                             /*valid_rows=*/nullptr, /*load=*/nullptr);
  ep_.AllGather(counts, counts + row, static_cast<size_t>(row), DType::kI32);
  backend_.CopyToHost(host_counts_.data(), counts + row, host_counts_.size() * sizeof(int32_t));
  // after this loop: rows to and from each peer, and where they sit (send rows grouped by
  // destination, received rows by source, both in rank order); the group's load added up.
  const int me = ep_.rank();
  size_t sent = 0, received = 0;
  for (int r = 0; r < S; ++r) {
    const int32_t* theirs = host_counts_.data() + static_cast<size_t>(r) * row;
    send_rows_[r] = static_cast<size_t>(host_counts_[static_cast<size_t>(me) * row + r]);
    recv_rows_[r] = static_cast<size_t>(theirs[me]);
    send_displs_[r] = sent;
    recv_displs_[r] = received;
    sent += send_rows_[r];
    received += recv_rows_[r];
    for (int d = 0; d < S; ++d) rows_per_rank_[d] += theirs[d];
    for (int e = 0; e < E; ++e) {
      tokens_per_expert_[e] += theirs[S + e];
      normal_pairs_ += theirs[S + e];
    }
  }
  TESSERA_CHECK_LE(static_cast<int64_t>(received), recv_capacity_)
      << "rows received by the expert exchange (planned for " << shape_.max_tokens << " per rank)";
  m_ = m;
  received_ = static_cast<int>(received);

  backend_.MoeDispatchPack(x, ids, weights, send_tokens_.as<int32_t>(), static_cast<int>(sent), H,
                           k, send_x_.data(), send_ids_.as<int32_t>(), send_w_.as<float>());
  auto scale = [S](const std::vector<size_t>& v, int64_t by, std::vector<size_t>* out) {
    for (int r = 0; r < S; ++r) (*out)[r] = v[r] * static_cast<size_t>(by);
  };
  scale(send_rows_, H, &scaled_a_);
  scale(send_displs_, H, &scaled_b_);
  scale(recv_rows_, H, &scaled_c_);
  scale(recv_displs_, H, &scaled_d_);
  if (shape_.fp8_payload) {
    QuantizeBlocks(send_rows_, send_displs_);
    ep_.AllToAllV(send_q_.data(), scaled_a_, scaled_b_, recv_q_.data(), scaled_c_, scaled_d_,
                  DType::kF8E4M3);
    const int64_t G = Fp8Blocks(H);
    scale(send_rows_, G, &scaled_a_);
    scale(send_displs_, G, &scaled_b_);
    scale(recv_rows_, G, &scaled_c_);
    scale(recv_displs_, G, &scaled_d_);
    ep_.AllToAllV(send_scale_.data(), scaled_a_, scaled_b_, recv_scale_.data(), scaled_c_,
                  scaled_d_, DType::kF32);
    DequantizeBlocks(recv_rows_, recv_displs_);
  } else {
    ep_.AllToAllV(send_x_.data(), scaled_a_, scaled_b_, recv_x_.data(), scaled_c_, scaled_d_, act_);
  }
  scale(send_rows_, k, &scaled_a_);
  scale(send_displs_, k, &scaled_b_);
  scale(recv_rows_, k, &scaled_c_);
  scale(recv_displs_, k, &scaled_d_);
  ep_.AllToAllV(send_ids_.data(), scaled_a_, scaled_b_, recv_ids_.data(), scaled_c_, scaled_d_,
                DType::kI32);
  ep_.AllToAllV(send_w_.data(), scaled_a_, scaled_b_, recv_w_.data(), scaled_c_, scaled_d_,
                DType::kF32);
  return received_;
}

int ExpertExchange::DispatchLowLatency(const void* x, const int32_t* ids, const float* weights,
                                       int m, int block_rows) {
  const int S = ranks_, k = shape_.top_k, C = block_rows;
  const int64_t H = shape_.hidden;
  TESSERA_CHECK(m >= 0 && m <= C && C <= shape_.block_capacity)
      << m << " rows to dispatch in low-latency blocks of " << C << " rows (planned for "
      << shape_.block_capacity << ")";
  // Block d of the send rows: this rank's rows for rank d, then zeros with ids -1 up to C; the
  // counts added to the load counters on the device.
  backend_.MoeDispatchLayout(ids, m, k, S, experts_per_rank_, counts_.as<int32_t>(), nullptr,
                             send_tokens_.as<int32_t>(), token_slots_.as<int32_t>(), C,
                             valid_rows_.as<int32_t>(), load_.as<int64_t>());
  backend_.MoeDispatchPack(x, ids, weights, send_tokens_.as<int32_t>(), S * C, H, k, send_x_.data(),
                           send_ids_.as<int32_t>(), send_w_.as<float>());
  const size_t rows = static_cast<size_t>(C);
  if (shape_.fp8_payload) {
    for (int r = 0; r < S; ++r) {
      ll_rows_[r] = rows;
      ll_first_[r] = static_cast<size_t>(r) * rows;
    }
    QuantizeBlocks(ll_rows_, ll_first_);
    const size_t G = static_cast<size_t>(Fp8Blocks(H));
    ep_.AllToAll({{send_q_.data(), recv_q_.data(), rows * H, DType::kF8E4M3},
                  {send_scale_.data(), recv_scale_.data(), rows * G, DType::kF32},
                  {send_ids_.data(), recv_ids_.data(), rows * k, DType::kI32},
                  {send_w_.data(), recv_w_.data(), rows * k, DType::kF32}});
    DequantizeBlocks(ll_rows_, ll_first_);
  } else {
    ep_.AllToAll({{send_x_.data(), recv_x_.data(), rows * H, act_},
                  {send_ids_.data(), recv_ids_.data(), rows * k, DType::kI32},
                  {send_w_.data(), recv_w_.data(), rows * k, DType::kF32}});
  }
  m_ = m;
  block_rows_ = C;
  received_ = S * C;
  return received_;
}

void ExpertExchange::SetValidRows(int rows) {
  const int32_t value = rows;
  backend_.CopyToDevice(valid_rows_.data(), &value, sizeof(value));
}

void ExpertExchange::SyncLoad() {
  const size_t row = static_cast<size_t>(ranks_ + shape_.num_experts);
  ep_.AllGather(load_.data(), load_all_.data(), row, DType::kI64);
  backend_.CopyToHost(host_load_.data(), load_all_.data(), load_sync_bytes());
  FinishLoadSync(host_load_.data());
}

void ExpertExchange::StartLoadSync(void* host) {
  const size_t row = static_cast<size_t>(ranks_ + shape_.num_experts);
  ep_.AllGather(load_.data(), load_all_.data(), row, DType::kI64);
  backend_.CopyToHostAsync(host, load_all_.data(), load_sync_bytes());
}

void ExpertExchange::FinishLoadSync(const void* host) {
  const int S = ranks_, E = shape_.num_experts;
  const size_t row = static_cast<size_t>(S + E);
  const auto* gathered = static_cast<const int64_t*>(host);  // [S, S + E]
  // after this loop: the totals include every rank's low-latency counts up to the gather, each
  // added once (the counters only grow; what the last sync saw is subtracted).
  for (size_t i = 0; i < row; ++i) {
    int64_t total = 0;
    for (int r = 0; r < S; ++r) total += gathered[r * row + i];
    const int64_t added = total - synced_load_[i];
    synced_load_[i] = total;
    if (i < static_cast<size_t>(S)) {
      rows_per_rank_[i] += added;
    } else {
      tokens_per_expert_[i - S] += added;
      low_latency_pairs_ += added;
    }
  }
}

void ExpertExchange::QuantizeBlocks(const std::vector<size_t>& rows,
                                    const std::vector<size_t>& first) {
  const int64_t H = shape_.hidden, G = Fp8Blocks(H);
  const size_t a = DTypeSize(act_);
  for (int r = 0; r < ranks_; ++r) {
    if (rows[r] == 0) continue;
    const auto b = static_cast<int64_t>(rows[r]), f = static_cast<int64_t>(first[r]);
    Fp8Activations q;
    q.data = send_q_.as<uint8_t>() + f * H;
    q.scale = send_scale_.as<float>() + f * G;
    q.scale_stride = b;
    backend_.QuantizeFp8(send_x_.as<char>() + f * H * a, b, H, q);
  }
}

void ExpertExchange::DequantizeBlocks(const std::vector<size_t>& rows,
                                      const std::vector<size_t>& first) {
  const int64_t H = shape_.hidden, G = Fp8Blocks(H);
  const size_t a = DTypeSize(act_);
  for (int r = 0; r < ranks_; ++r) {
    if (rows[r] == 0) continue;
    const auto b = static_cast<int64_t>(rows[r]), f = static_cast<int64_t>(first[r]);
    Fp8Activations q;
    q.data = recv_q_.as<uint8_t>() + f * H;
    q.scale = recv_scale_.as<float>() + f * G;
    q.scale_stride = b;
    backend_.DequantizeFp8(q, b, H, recv_x_.as<char>() + f * H * a);
  }
}

void ExpertExchange::CombineLowLatency(void* out) {
  const size_t rows = static_cast<size_t>(block_rows_);
  const int64_t H = shape_.hidden;
  // Block s of recv_y answers source s's block for us; it lands in our block for s.
  ep_.AllToAll({{recv_y_.data(), send_x_.data(), rows * H, act_}});
  backend_.MoeCombineRanks(send_x_.data(), token_slots_.as<int32_t>(), m_, shape_.top_k, H, out);
}

void ExpertExchange::Combine(void* out) {
  if (block_rows_ > 0) return CombineLowLatency(out);
  const int S = ranks_;
  const int64_t H = shape_.hidden;
  for (int r = 0; r < S; ++r) {
    scaled_a_[r] = recv_rows_[r] * static_cast<size_t>(H);
    scaled_b_[r] = recv_displs_[r] * static_cast<size_t>(H);
    scaled_c_[r] = send_rows_[r] * static_cast<size_t>(H);
    scaled_d_[r] = send_displs_[r] * static_cast<size_t>(H);
  }
  // The partial sums land in the send rows they answer (send_x_ is free once dispatched).
  ep_.AllToAllV(recv_y_.data(), scaled_a_, scaled_b_, send_x_.data(), scaled_c_, scaled_d_, act_);
  backend_.MoeCombineRanks(send_x_.data(), token_slots_.as<int32_t>(), m_, shape_.top_k, H, out);
}

}  // namespace tessera
