#include "runtime/qwen3.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"

namespace tessera {
namespace {

std::string LayerName(int64_t layer, const char* suffix) {
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

std::string ExpertName(int64_t layer, int64_t expert, const char* proj) {
  return absl::StrCat("model.layers.", layer, ".mlp.experts.", expert, ".", proj, ".weight");
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

std::vector<TensorSpec> Qwen3Model::TensorTable(const ModelConfig& c) {
  const int64_t H = c.hidden_size, D = c.head_dim;
  std::vector<TensorSpec> t;
  t.push_back({"model.embed_tokens.weight", {c.vocab_size, H}, ShardRule::kVocab});
  t.push_back({"model.norm.weight", {H}, ShardRule::kReplicated});
  if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {c.vocab_size, H}, ShardRule::kVocab});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    t.push_back({LayerName(l, "input_layernorm.weight"), {H}, ShardRule::kReplicated});
    t.push_back({LayerName(l, "post_attention_layernorm.weight"), {H}, ShardRule::kReplicated});
    t.push_back({LayerName(l, "self_attn.q_proj.weight"),
                 {c.num_attention_heads * D, H},
                 ShardRule::kColumn});
    t.push_back({LayerName(l, "self_attn.k_proj.weight"),
                 {c.num_key_value_heads * D, H},
                 ShardRule::kColumn});
    t.push_back({LayerName(l, "self_attn.v_proj.weight"),
                 {c.num_key_value_heads * D, H},
                 ShardRule::kColumn});
    t.push_back(
        {LayerName(l, "self_attn.o_proj.weight"), {H, c.num_attention_heads * D}, ShardRule::kRow});
    t.push_back({LayerName(l, "self_attn.q_norm.weight"), {D}, ShardRule::kReplicated});
    t.push_back({LayerName(l, "self_attn.k_norm.weight"), {D}, ShardRule::kReplicated});
    if (c.IsMoeLayer(l)) {
      const int64_t I = c.moe_intermediate_size;
      t.push_back({LayerName(l, "mlp.gate.weight"), {c.num_experts, H}, ShardRule::kReplicated});
      for (int64_t e = 0; e < c.num_experts; ++e) {
        t.push_back({ExpertName(l, e, "gate_proj"), {I, H}, ShardRule::kExpert});
        t.push_back({ExpertName(l, e, "up_proj"), {I, H}, ShardRule::kExpert});
        t.push_back({ExpertName(l, e, "down_proj"), {H, I}, ShardRule::kExpert});
      }
    } else {
      const int64_t I = c.intermediate_size;
      t.push_back({LayerName(l, "mlp.gate_proj.weight"), {I, H}, ShardRule::kColumn});
      t.push_back({LayerName(l, "mlp.up_proj.weight"), {I, H}, ShardRule::kColumn});
      t.push_back({LayerName(l, "mlp.down_proj.weight"), {H, I}, ShardRule::kRow});
    }
  }
  return t;
}

Qwen3Model::Qwen3Model(const ModelConfig& config, Backend& backend, const ShardSpec& shard)
    : config_(config), backend_(backend), shard_(shard), rope_(ComputeRopeTables(config)) {
  const int tp = shard.tp_size;
  q_heads_local_ = config.num_attention_heads / tp;
  kv_heads_local_ = std::max<int64_t>(1, config.num_key_value_heads / tp);
  intermediate_local_ = config.intermediate_size / tp;
  if (shard.ep_size > 1) {
    num_local_experts_ = config.num_experts / shard.ep_size;
    first_expert_ = shard.ep_rank * num_local_experts_;
    moe_intermediate_local_ = config.moe_intermediate_size;
  } else {
    num_local_experts_ = config.num_experts;
    first_expert_ = 0;
    moe_intermediate_local_ = config.moe_intermediate_size / tp;
  }
  const int64_t vocab_local = config.vocab_size / tp;
  vocab_start_ = shard.tp_rank * vocab_local;
  vocab_end_ = vocab_start_ + vocab_local;
  if (shard_.last_layer < 0) shard_.last_layer = config.num_hidden_layers;
}

absl::StatusOr<std::unique_ptr<Qwen3Model>> Qwen3Model::Load(const ModelConfig& config,
                                                             const Checkpoint& checkpoint,
                                                             Backend& backend,
                                                             const ShardSpec& shard) {
  // Every tensor of the table must be present with its exact shape, and nothing else may be.
  const std::vector<TensorSpec> table = TensorTable(config);
  std::set<std::string, std::less<>> expected;
  for (const TensorSpec& spec : table) {
    expected.insert(spec.name);
    absl::StatusOr<Checkpoint::Entry> entry = checkpoint.Find(spec.name);
    if (!entry.ok()) {
      return absl::NotFoundError(absl::StrCat("checkpoint ", checkpoint.dir(), ": missing tensor ",
                                              spec.name, " (", entry.status().message(), ")"));
    }
    if (entry->info->shape != spec.shape) {
      return absl::InvalidArgumentError(absl::StrCat(entry->file->path(), ": tensor ", spec.name,
                                                     " has shape ", ShapeString(entry->info->shape),
                                                     ", expected ", ShapeString(spec.shape)));
    }
  }
  for (const std::string& name : checkpoint.TensorNames()) {
    if (expected.count(name)) continue;
    // A tied checkpoint may still carry a copy of lm_head; transformers ignores it, and so do we.
    if (config.tie_word_embeddings && name == "lm_head.weight") continue;
    absl::StatusOr<Checkpoint::Entry> entry = checkpoint.Find(name);
    return absl::InvalidArgumentError(
        absl::StrCat(entry.ok() ? entry->file->path() : checkpoint.dir(), ": unexpected tensor ",
                     name, " (not part of a ", config.model_type, " model with this config)"));
  }
  std::unique_ptr<Qwen3Model> model(new Qwen3Model(config, backend, shard));
  RETURN_IF_ERROR(model->LoadWeights(checkpoint));
  return model;
}

absl::Status Qwen3Model::LoadWeights(const Checkpoint& ckpt) {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, D = c.head_dim;
  const DType wdt = backend_.weight_dtype();
  std::vector<float> host;

  // Reads slices into `host` at `offset` (elements).
  auto read = [&](const std::string& name, int dim, int64_t start, int64_t length, size_t offset) {
    return ckpt.ReadFloat(name, dim, start, length, host.data() + offset);
  };
  auto upload = [&](size_t count) {
    DeviceBuffer buffer = backend_.Allocate(count * DTypeSize(wdt));
    backend_.UploadFloat(buffer.data(), wdt, host.data(), count);
    return buffer;
  };
  auto load_whole = [&](const std::string& name, size_t count, DeviceBuffer* out) -> absl::Status {
    host.resize(count);
    RETURN_IF_ERROR(read(name, 0, 0, -1, 0));
    *out = upload(count);
    return absl::OkStatus();
  };

  // The first stage embeds; the last stage normalises and projects to the vocabulary (through the
  // embedding when tied). Each holds only its vocabulary slice.
  const int64_t vocab_local = vocab_end_ - vocab_start_;
  host.resize(vocab_local * H);
  if (first_stage() || (last_stage() && c.tie_word_embeddings)) {
    RETURN_IF_ERROR(read("model.embed_tokens.weight", 0, vocab_start_, vocab_local, 0));
    embed_ = upload(vocab_local * H);
  }
  if (last_stage()) {
    if (!c.tie_word_embeddings) {
      RETURN_IF_ERROR(read("lm_head.weight", 0, vocab_start_, vocab_local, 0));
      lm_head_ = upload(vocab_local * H);
    }
    RETURN_IF_ERROR(load_whole("model.norm.weight", H, &final_norm_));
  }
  inv_freq_ = backend_.Allocate(rope_.inv_freq.size() * sizeof(float));
  backend_.CopyToDevice(inv_freq_.data(), rope_.inv_freq.data(),
                        rope_.inv_freq.size() * sizeof(float));

  const int64_t q_start = shard_.tp_rank * q_heads_local_;
  // With tp > kv heads, consecutive ranks share (replicate) one KV head.
  const int64_t kv_start = shard_.tp_size <= c.num_key_value_heads
                               ? shard_.tp_rank * kv_heads_local_
                               : shard_.tp_rank / (shard_.tp_size / c.num_key_value_heads);
  layers_.resize(shard_.last_layer - shard_.first_layer);
  for (int64_t l = shard_.first_layer; l < shard_.last_layer; ++l) {
    Layer& layer = layers_[l - shard_.first_layer];
    RETURN_IF_ERROR(load_whole(LayerName(l, "input_layernorm.weight"), H, &layer.input_norm));
    RETURN_IF_ERROR(
        load_whole(LayerName(l, "post_attention_layernorm.weight"), H, &layer.post_norm));
    RETURN_IF_ERROR(load_whole(LayerName(l, "self_attn.q_norm.weight"), D, &layer.q_norm));
    RETURN_IF_ERROR(load_whole(LayerName(l, "self_attn.k_norm.weight"), D, &layer.k_norm));

    // q, k, v fused into one column-parallel projection: [q_local | k_local | v_local] rows.
    const int64_t q_rows = q_heads_local_ * D, kv_rows = kv_heads_local_ * D;
    host.resize((q_rows + 2 * kv_rows) * H);
    RETURN_IF_ERROR(read(LayerName(l, "self_attn.q_proj.weight"), 0, q_start * D, q_rows, 0));
    RETURN_IF_ERROR(
        read(LayerName(l, "self_attn.k_proj.weight"), 0, kv_start * D, kv_rows, q_rows * H));
    RETURN_IF_ERROR(read(LayerName(l, "self_attn.v_proj.weight"), 0, kv_start * D, kv_rows,
                         (q_rows + kv_rows) * H));
    layer.qkv = upload(host.size());
    host.resize(H * q_rows);
    RETURN_IF_ERROR(read(LayerName(l, "self_attn.o_proj.weight"), 1, q_start * D, q_rows, 0));
    layer.o_proj = upload(host.size());

    layer.moe = c.IsMoeLayer(l);
    if (!layer.moe) {
      const int64_t I = intermediate_local_, start = shard_.tp_rank * I;
      host.resize(2 * I * H);
      RETURN_IF_ERROR(read(LayerName(l, "mlp.gate_proj.weight"), 0, start, I, 0));
      RETURN_IF_ERROR(read(LayerName(l, "mlp.up_proj.weight"), 0, start, I, I * H));
      layer.gate_up = upload(host.size());
      host.resize(H * I);
      RETURN_IF_ERROR(read(LayerName(l, "mlp.down_proj.weight"), 1, start, I, 0));
      layer.down = upload(host.size());
    } else {
      RETURN_IF_ERROR(
          load_whole(LayerName(l, "mlp.gate.weight"), c.num_experts * H, &layer.router));
      const int64_t I = moe_intermediate_local_;
      const int64_t start = shard_.ep_size > 1 ? 0 : shard_.tp_rank * I;
      host.resize(num_local_experts_ * 2 * I * H);
      for (int64_t e = 0; e < num_local_experts_; ++e) {
        const int64_t g = first_expert_ + e;
        RETURN_IF_ERROR(read(ExpertName(l, g, "gate_proj"), 0, start, I, e * 2 * I * H));
        RETURN_IF_ERROR(read(ExpertName(l, g, "up_proj"), 0, start, I, (e * 2 + 1) * I * H));
      }
      layer.gate_up = upload(host.size());
      host.resize(num_local_experts_ * H * I);
      for (int64_t e = 0; e < num_local_experts_; ++e) {
        RETURN_IF_ERROR(
            read(ExpertName(l, first_expert_ + e, "down_proj"), 1, start, I, e * H * I));
      }
      layer.down = upload(host.size());
    }
  }
  return absl::OkStatus();
}

void Qwen3Model::EnsureWorkspace(int num_tokens, int num_logits, int num_seqs, int max_blocks) {
  const size_t a = DTypeSize(backend_.activation_dtype());
  const ModelConfig& c = config_;
  if (num_tokens > token_capacity_) {
    const int64_t n = std::max(num_tokens, 2 * token_capacity_);
    const int64_t H = c.hidden_size, D = c.head_dim;
    const int64_t I = std::max(intermediate_local_, moe_intermediate_local_);
    ids_ = backend_.Allocate(n * sizeof(int32_t));
    positions_ = backend_.Allocate(n * sizeof(int32_t));
    token_seq_ = backend_.Allocate(n * sizeof(int32_t));
    slots_ = backend_.Allocate(n * sizeof(int32_t));
    residual_ = backend_.Allocate(n * H * a);
    hidden_ = backend_.Allocate(n * H * a);
    qkv_buf_ = backend_.Allocate(n * (q_heads_local_ + 2 * kv_heads_local_) * D * a);
    attn_ = backend_.Allocate(n * q_heads_local_ * D * a);
    proj_ = backend_.Allocate(n * H * a);
    gate_up_buf_ = backend_.Allocate(n * 2 * I * a);
    act_ = backend_.Allocate(n * I * a);
    if (c.is_moe()) {
      router_logits_ = backend_.Allocate(n * c.num_experts * a);
      topk_ids_ = backend_.Allocate(n * c.num_experts_per_tok * sizeof(int32_t));
      topk_weights_ = backend_.Allocate(n * c.num_experts_per_tok * sizeof(float));
    }
    token_capacity_ = static_cast<int>(n);
  }
  if (num_logits > logit_capacity_) {
    const int64_t r = std::max(num_logits, 2 * logit_capacity_);
    logit_rows_ = backend_.Allocate(r * sizeof(int32_t));
    selected_ = backend_.Allocate(r * c.hidden_size * a);
    logits_buf_ = backend_.Allocate(r * (vocab_end_ - vocab_start_) * a);
    logit_capacity_ = static_cast<int>(r);
  }
  if (num_seqs * max_blocks > table_capacity_) {
    table_capacity_ = std::max(num_seqs * max_blocks, 2 * table_capacity_);
    tables_ = backend_.Allocate(static_cast<size_t>(table_capacity_) * sizeof(int32_t));
  }
}

void Qwen3Model::TpAllReduce(void* buf, int64_t count) {
  if (shard_.tp != nullptr && count > 0) {
    shard_.tp->AllReduceSum(buf, static_cast<size_t>(count), backend_.activation_dtype());
  }
}

void Qwen3Model::ExpertParallelMoe(const Layer& layer, int n) {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size;
  const int k = static_cast<int>(c.num_experts_per_tok);
  const int num_experts = static_cast<int>(c.num_experts);
  const int per_rank = static_cast<int>(num_local_experts_);
  const DType act = backend_.activation_dtype();
  const size_t a = DTypeSize(act);
  Communicator& ep = *shard_.ep;
  const int S = ep.size();

  // TP ranks hold identical hidden states, so each routes only its slice of the tokens: no expert
  // work is duplicated. [begin, end) of the n tokens.
  const int T = shard_.tp_size, t = shard_.tp_rank;
  const int begin = static_cast<int>(static_cast<int64_t>(n) * t / T);
  const int end = static_cast<int>(static_cast<int64_t>(n) * (t + 1) / T);
  const int m = end - begin;
  std::vector<int32_t> ids(static_cast<size_t>(m) * k);
  std::vector<float> weights(static_cast<size_t>(m) * k), x(static_cast<size_t>(m) * H);
  if (m > 0) {
    const char* slice = hidden_.as<char>() + begin * H * a;
    backend_.Linear(slice, layer.router.data(), m, num_experts, H, router_logits_.data());
    backend_.RouterTopK(router_logits_.data(), m, num_experts, k, c.norm_topk_prob,
                        topk_ids_.as<int32_t>(), topk_weights_.as<float>());
    backend_.CopyToHost(ids.data(), topk_ids_.data(), ids.size() * sizeof(int32_t));
    backend_.CopyToHost(weights.data(), topk_weights_.data(), weights.size() * sizeof(float));
    backend_.DownloadFloat(x.data(), slice, act, x.size());
  }

  // Dispatch: one row per (token, owner) pair, grouped by owner; the row carries the token's k
  // expert ids (-1 where another rank owns the expert) and weights.
  std::vector<std::vector<int>> rows_for(S);
  for (int i = 0; i < m; ++i) {
    for (int d = 0; d < S; ++d) {
      for (int j = 0; j < k; ++j) {
        if (ids[i * k + j] / per_rank == d) {
          rows_for[d].push_back(i);
          break;
        }
      }
    }
  }
  std::vector<int64_t> send_rows(S), recv_rows;
  for (int d = 0; d < S; ++d) send_rows[d] = static_cast<int64_t>(rows_for[d].size());
  ep.AllToAllCounts(send_rows, &recv_rows);  // counts first, then payload
  int64_t total_send = 0, total_recv = 0;
  for (int d = 0; d < S; ++d) {
    total_send += send_rows[d];
    total_recv += recv_rows[d];
  }
  std::vector<float> send_x(total_send * H);
  std::vector<int32_t> send_ids(total_send * k);
  std::vector<float> send_w(total_send * k);
  int64_t row = 0;
  for (int d = 0; d < S; ++d) {
    for (int i : rows_for[d]) {
      std::copy(x.begin() + i * H, x.begin() + (i + 1) * H, send_x.begin() + row * H);
      for (int j = 0; j < k; ++j) {
        const int32_t id = ids[i * k + j];
        send_ids[row * k + j] = id / per_rank == d ? id : -1;
        send_w[row * k + j] = weights[i * k + j];
      }
      ++row;
    }
  }
  auto layout = [S](const std::vector<int64_t>& rows, int64_t width, std::vector<size_t>* counts,
                    std::vector<size_t>* displs) {
    counts->resize(S);
    displs->resize(S);
    size_t offset = 0;
    for (int d = 0; d < S; ++d) {
      (*counts)[d] = static_cast<size_t>(rows[d] * width);
      (*displs)[d] = offset;
      offset += (*counts)[d];
    }
  };
  std::vector<size_t> sc_h, sd_h, rc_h, rd_h, sc_k, sd_k, rc_k, rd_k;
  layout(send_rows, H, &sc_h, &sd_h);
  layout(recv_rows, H, &rc_h, &rd_h);
  layout(send_rows, k, &sc_k, &sd_k);
  layout(recv_rows, k, &rc_k, &rd_k);
  std::vector<float> recv_x(total_recv * H), recv_w(total_recv * k);
  std::vector<int32_t> recv_ids(total_recv * k);
  ep.AllToAllV(send_x.data(), sc_h, sd_h, recv_x.data(), rc_h, rd_h, DType::kF32);
  ep.AllToAllV(send_ids.data(), sc_k, sd_k, recv_ids.data(), rc_k, rd_k, DType::kI32);
  ep.AllToAllV(send_w.data(), sc_k, sd_k, recv_w.data(), rc_k, rd_k, DType::kF32);

  // Local experts on the received rows.
  std::vector<float> recv_y(total_recv * H);
  if (total_recv > 0) {
    if (total_recv > ep_capacity_) {
      ep_capacity_ = std::max(total_recv, 2 * ep_capacity_);
      ep_x_ = backend_.Allocate(ep_capacity_ * H * a);
      ep_y_ = backend_.Allocate(ep_capacity_ * H * a);
      ep_ids_ = backend_.Allocate(ep_capacity_ * k * sizeof(int32_t));
      ep_weights_ = backend_.Allocate(ep_capacity_ * k * sizeof(float));
    }
    backend_.UploadFloat(ep_x_.data(), act, recv_x.data(), recv_x.size());
    backend_.CopyToDevice(ep_ids_.data(), recv_ids.data(), recv_ids.size() * sizeof(int32_t));
    backend_.CopyToDevice(ep_weights_.data(), recv_w.data(), recv_w.size() * sizeof(float));
    ExpertWeights experts;
    experts.first_expert = static_cast<int>(first_expert_);
    experts.num_local_experts = per_rank;
    experts.hidden = H;
    experts.intermediate = moe_intermediate_local_;
    experts.gate_up = layer.gate_up.data();
    experts.down = layer.down.data();
    backend_.MoeExperts(ep_x_.data(), static_cast<int>(total_recv), ep_ids_.as<int32_t>(),
                        ep_weights_.as<float>(), k, experts, ep_y_.data());
    backend_.DownloadFloat(recv_y.data(), ep_y_.data(), act, recv_y.size());
  }

  // Combine: results travel back the way the rows came, and each token sums its owners' partial
  // sums in owner order (the same order as one rank summing its experts).
  std::vector<float> back(total_send * H);
  ep.AllToAllV(recv_y.data(), rc_h, rd_h, back.data(), sc_h, sd_h, DType::kF32);
  std::vector<float> out(static_cast<size_t>(m) * H, 0.0f);
  row = 0;
  for (int d = 0; d < S; ++d) {
    for (int i : rows_for[d]) {
      for (int64_t h = 0; h < H; ++h) out[i * H + h] += back[row * H + h];
      ++row;
    }
  }

  // Gather the TP group's slices back into all n tokens.
  std::vector<float> full;
  if (T > 1) {
    std::vector<size_t> counts(T), displs(T);
    for (int r = 0; r < T; ++r) {
      const int64_t b = static_cast<int64_t>(n) * r / T, e = static_cast<int64_t>(n) * (r + 1) / T;
      counts[r] = static_cast<size_t>((e - b) * H);
      displs[r] = static_cast<size_t>(b * H);
    }
    full.resize(static_cast<size_t>(n) * H);
    shard_.tp->AllGatherV(out.data(), out.size(), full.data(), counts, displs, DType::kF32);
  } else {
    full = std::move(out);
  }
  if (n > 0) backend_.UploadFloat(proj_.data(), act, full.data(), full.size());
}

void Qwen3Model::Forward(const StepBatch& batch, KvCache& kv, std::vector<float>* logits) {
  const ModelConfig& c = config_;
  const int n = static_cast<int>(batch.token_ids.size());
  const int r = static_cast<int>(batch.logit_tokens.size());
  TESSERA_CHECK_EQ(batch.positions.size(), static_cast<size_t>(n));
  TESSERA_CHECK_EQ(batch.slot_mapping.size(), static_cast<size_t>(n));
  TESSERA_CHECK_EQ(batch.token_seq.size(), static_cast<size_t>(n));
  TESSERA_CHECK_EQ(batch.block_tables.size(),
                   static_cast<size_t>(batch.num_seqs) * batch.max_blocks_per_seq);
  TESSERA_CHECK_LE(r, n);
  logits->clear();
  EnsureWorkspace(std::max(n, 1), std::max(r, 1), std::max(batch.num_seqs, 1),
                  std::max(batch.max_blocks_per_seq, 1));

  const int64_t H = c.hidden_size, D = c.head_dim;
  const int qh = static_cast<int>(q_heads_local_), kvh = static_cast<int>(kv_heads_local_);
  const int64_t qkv_row = (q_heads_local_ + 2 * kv_heads_local_) * D;
  const DType act = backend_.activation_dtype();
  const size_t a = DTypeSize(act);
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  if (n > 0) {
    backend_.CopyToDevice(ids_.data(), batch.token_ids.data(), n * sizeof(int32_t));
    backend_.CopyToDevice(positions_.data(), batch.positions.data(), n * sizeof(int32_t));
    backend_.CopyToDevice(token_seq_.data(), batch.token_seq.data(), n * sizeof(int32_t));
    backend_.CopyToDevice(slots_.data(), batch.slot_mapping.data(), n * sizeof(int32_t));
    backend_.CopyToDevice(tables_.data(), batch.block_tables.data(),
                          batch.block_tables.size() * sizeof(int32_t));
  }
  AttentionBatch attn_batch;
  attn_batch.num_tokens = n;
  attn_batch.num_seqs = batch.num_seqs;
  attn_batch.positions = positions_.as<int32_t>();
  attn_batch.token_seq = token_seq_.as<int32_t>();
  attn_batch.slot_mapping = slots_.as<int32_t>();
  attn_batch.block_tables = tables_.as<int32_t>();
  attn_batch.max_blocks_per_seq = batch.max_blocks_per_seq;
  attn_batch.block_size = kv.block_size();

  // The hidden state entering this stage: embeddings (summed over vocabulary shards), or the
  // previous stage's output.
  if (first_stage()) {
    if (n > 0) {
      backend_.Embedding(embed_.data(), vocab_start_, vocab_end_, H, ids_.as<int32_t>(), n,
                         residual_.data());
    }
    TpAllReduce(residual_.data(), n * H);
  } else if (n > 0) {
    shard_.pp->Recv(residual_.data(), static_cast<size_t>(n) * H, act, shard_.pp_prev);
  }

  // after this loop: residual_ holds the hidden state before the last layer's MLP residual add,
  // proj_ holds that MLP's output (summed over TP ranks).
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = layers_[i];
    const int cache_layer = static_cast<int>(i);
    if (n > 0) {
      if (i == 0) {
        backend_.RmsNorm(residual_.data(), layer.input_norm.data(), n, H, eps, hidden_.data());
      } else {
        backend_.AddRmsNorm(residual_.data(), proj_.data(), layer.input_norm.data(), n, H, eps,
                            hidden_.data());
      }
      // Attention: qkv [n, q | k | v], per-head norm + RoPE on q and k, cache write, attention.
      backend_.Linear(hidden_.data(), layer.qkv.data(), n, qkv_row, H, qkv_buf_.data());
      char* qkv = qkv_buf_.as<char>();
      char* k = qkv + q_heads_local_ * D * a;
      char* v = k + kv_heads_local_ * D * a;
      backend_.HeadNormRope(qkv, qkv_row, n, qh, static_cast<int>(D), layer.q_norm.data(), eps,
                            positions_.as<int32_t>(), inv_freq_.as<float>(),
                            rope_.attention_scaling);
      backend_.HeadNormRope(k, qkv_row, n, kvh, static_cast<int>(D), layer.k_norm.data(), eps,
                            positions_.as<int32_t>(), inv_freq_.as<float>(),
                            rope_.attention_scaling);
      backend_.WriteKvCache(k, v, qkv_row, n, kvh, static_cast<int>(D), slots_.as<int32_t>(),
                            kv.k(cache_layer), kv.v(cache_layer));
      backend_.Attention(qkv, qkv_row, kv.k(cache_layer), kv.v(cache_layer), attn_batch, qh, kvh,
                         static_cast<int>(D), scale, attn_.data());
      backend_.Linear(attn_.data(), layer.o_proj.data(), n, H, q_heads_local_ * D, proj_.data());
    }
    TpAllReduce(proj_.data(), n * H);  // o_proj is row-parallel
    if (n > 0) {
      backend_.AddRmsNorm(residual_.data(), proj_.data(), layer.post_norm.data(), n, H, eps,
                          hidden_.data());
    }
    // MLP.
    if (!layer.moe) {
      if (n > 0) {
        const int64_t I = intermediate_local_;
        backend_.Linear(hidden_.data(), layer.gate_up.data(), n, 2 * I, H, gate_up_buf_.data());
        backend_.SiluMul(gate_up_buf_.data(), n, I, act_.data());
        backend_.Linear(act_.data(), layer.down.data(), n, H, I, proj_.data());
      }
      TpAllReduce(proj_.data(), n * H);  // down_proj is row-parallel
    } else if (shard_.ep_size > 1) {
      ExpertParallelMoe(layer, n);
    } else {
      if (n > 0) {
        const int top_k = static_cast<int>(c.num_experts_per_tok);
        const int num_experts = static_cast<int>(c.num_experts);
        backend_.Linear(hidden_.data(), layer.router.data(), n, num_experts, H,
                        router_logits_.data());
        backend_.RouterTopK(router_logits_.data(), n, num_experts, top_k, c.norm_topk_prob,
                            topk_ids_.as<int32_t>(), topk_weights_.as<float>());
        ExpertWeights experts;
        experts.first_expert = static_cast<int>(first_expert_);
        experts.num_local_experts = static_cast<int>(num_local_experts_);
        experts.hidden = H;
        experts.intermediate = moe_intermediate_local_;
        experts.gate_up = layer.gate_up.data();
        experts.down = layer.down.data();
        backend_.MoeExperts(hidden_.data(), n, topk_ids_.as<int32_t>(), topk_weights_.as<float>(),
                            top_k, experts, proj_.data());
      }
      TpAllReduce(proj_.data(), n * H);  // experts split along their intermediate dimension
    }
  }
  if (n > 0) backend_.Add(residual_.data(), proj_.data(), n * H, residual_.data());
  if (!last_stage()) {
    if (n > 0) shard_.pp->Send(residual_.data(), static_cast<size_t>(n) * H, act, shard_.pp_next);
    return;
  }
  if (r == 0) return;

  // Final norm and lm_head only for the rows whose logits are wanted; vocabulary shards gathered.
  for (int t : batch.logit_tokens)
    TESSERA_CHECK(t >= 0 && t < n) << "logit token " << t << " of " << n;
  backend_.CopyToDevice(logit_rows_.data(), batch.logit_tokens.data(), r * sizeof(int32_t));
  backend_.GatherRows(residual_.data(), logit_rows_.as<int32_t>(), r, H, selected_.data());
  backend_.RmsNorm(selected_.data(), final_norm_.data(), r, H, eps, hidden_.data());
  const int64_t vocab_local = vocab_end_ - vocab_start_;
  const void* head = c.tie_word_embeddings ? embed_.data() : lm_head_.data();
  backend_.Linear(hidden_.data(), head, r, vocab_local, H, logits_buf_.data());
  host_logits_.resize(static_cast<size_t>(r) * vocab_local);
  backend_.DownloadFloat(host_logits_.data(), logits_buf_.data(), act, host_logits_.size());
  if (shard_.tp_size == 1) {
    logits->swap(host_logits_);
    return;
  }
  // [T, r, V/T] -> [r, V].
  const int T = shard_.tp_size;
  std::vector<float> gathered(host_logits_.size() * T);
  shard_.tp->AllGather(host_logits_.data(), gathered.data(), host_logits_.size(), DType::kF32);
  logits->resize(static_cast<size_t>(r) * c.vocab_size);
  for (int s = 0; s < T; ++s) {
    for (int i = 0; i < r; ++i) {
      std::copy(gathered.begin() + (static_cast<int64_t>(s) * r + i) * vocab_local,
                gathered.begin() + (static_cast<int64_t>(s) * r + i + 1) * vocab_local,
                logits->begin() + i * c.vocab_size + s * vocab_local);
    }
  }
}

}  // namespace tessera
