// The parallel layout: how the world of N ranks splits into pipeline stages, tensor-parallel
// groups, attention data-parallel replicas and expert-parallel groups. Built once at start.
//
// Rank order (outermost first): stage, dp, tp. So with P stages of D x T ranks:
//   stage   = rank / (T * D)
//   dp_rank = (rank % (T * D)) / T
//   tp_rank = rank % T
// Attention is tensor-parallel over T and data-parallel over D (each DP replica owns distinct
// sequences). Dense MLPs are tensor-parallel over T. MoE experts are either expert-parallel over
// all T x D ranks of the stage (E = T x D; ep_rank = rank within the stage), or, with E = 1,
// split along their intermediate dimension by TP.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace tessera {

// The model numbers the layout must divide. Filled by the runtime from config.json.
struct ModelDims {
  int64_t num_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t intermediate_size = 0;      // dense MLP (0 if no dense layer)
  int64_t moe_intermediate_size = 0;  // 0 for dense models
  int64_t num_experts = 0;            // 0 for dense models
  int64_t vocab_size = 0;
};

struct ParallelConfig {
  int world_size = 1;
  int rank = 0;
  int tp = 1;  // tensor-parallel size T
  int pp = 1;  // pipeline stages P
  int dp = 1;  // attention data-parallel replicas D per stage
  int ep = 1;  // expert-parallel size E: 1 or T x D

  int stage() const { return rank / (tp * dp); }
  int dp_rank() const { return (rank % (tp * dp)) / tp; }
  int tp_rank() const { return rank % tp; }
  int ep_rank() const { return ep > 1 ? rank % (tp * dp) : 0; }
  int stage_size() const { return tp * dp; }
  // Global rank of (stage, dp_rank, tp_rank).
  int RankOf(int stage, int dp_rank, int tp_rank) const {
    return stage * tp * dp + dp_rank * tp + tp_rank;
  }
  // This stage's layers: [first_layer, last_layer). Balanced, contiguous; earlier stages take the
  // remainder.
  int64_t FirstLayer(int64_t num_layers, int stage) const;
  int64_t first_layer(int64_t num_layers) const { return FirstLayer(num_layers, stage()); }
  int64_t last_layer(int64_t num_layers) const { return FirstLayer(num_layers, stage() + 1); }
  std::string ToString() const;

  // Validates the layout against the world and the model before any weight is read. `dp` <= 0
  // means "the rest": N / (P x T). Errors name the numbers, e.g.
  // "--tp 3 does not divide num_attention_heads (8)".
  static absl::StatusOr<ParallelConfig> Create(int world_size, int rank, int tp, int pp, int ep,
                                               int dp, const ModelDims& model);
};

}  // namespace tessera
