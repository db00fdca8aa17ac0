#include "parallel/parallel_config.h"

#include "absl/strings/str_cat.h"

namespace tessera {

int64_t ParallelConfig::FirstLayer(int64_t num_layers, int stage) const {
  const int64_t base = num_layers / pp, extra = num_layers % pp;
  return stage * base + std::min<int64_t>(stage, extra);
}

std::string ParallelConfig::ToString() const {
  return absl::StrCat("world ", world_size, " = pp ", pp, " x dp ", dp, " x tp ", tp, ", ep ", ep,
                      "; rank ", rank, " = stage ", stage(), ", dp ", dp_rank(), ", tp ",
                      tp_rank());
}

absl::StatusOr<ParallelConfig> ParallelConfig::Create(int world_size, int rank, int tp, int pp,
                                                      int ep, int dp, const ModelDims& m) {
  auto err = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (tp < 1) return err("--tp must be >= 1, got ", tp);
  if (pp < 1) return err("--pp must be >= 1, got ", pp);
  if (ep < 1) return err("--ep must be >= 1, got ", ep);
  if (world_size % (tp * pp) != 0) {
    return err("the world has ", world_size, " ranks, not a multiple of --pp ", pp, " x --tp ", tp);
  }
  if (dp <= 0) dp = world_size / (tp * pp);
  if (pp * tp * dp != world_size) {
    return err("--pp ", pp, " x --dp ", dp, " x --tp ", tp, " = ", pp * tp * dp,
               ", but the world has ", world_size, " ranks");
  }
  if (m.num_attention_heads % tp != 0) {
    return err("--tp ", tp, " does not divide num_attention_heads (", m.num_attention_heads, ")");
  }
  if (tp > m.num_key_value_heads && tp % m.num_key_value_heads != 0) {
    return err("--tp ", tp, " exceeds num_key_value_heads (", m.num_key_value_heads,
               ") and is not a multiple of it, so KV heads cannot be replicated evenly");
  }
  if (tp <= m.num_key_value_heads && m.num_key_value_heads % tp != 0) {
    return err("--tp ", tp, " does not divide num_key_value_heads (", m.num_key_value_heads, ")");
  }
  if (m.intermediate_size % tp != 0) {
    return err("--tp ", tp, " does not divide intermediate_size (", m.intermediate_size, ")");
  }
  if (m.vocab_size % tp != 0) {
    return err("--tp ", tp, " does not divide vocab_size (", m.vocab_size, ")");
  }
  if (m.num_experts == 0 && ep != 1) {
    return err("--ep ", ep, " needs a MoE model; this one is dense");
  }
  if (ep != 1 && ep != tp * dp) {
    return err("--ep ", ep, " must be 1 or --tp x --dp = ", tp * dp,
               " (experts are spread over all ranks of a pipeline stage)");
  }
  if (m.num_experts > 0) {
    if (m.num_experts % ep != 0) {
      return err("--ep ", ep, " does not divide num_experts (", m.num_experts, ")");
    }
    if (ep == 1 && m.moe_intermediate_size % tp != 0) {
      return err("--tp ", tp, " does not divide moe_intermediate_size (", m.moe_intermediate_size,
                 "); use --ep to spread whole experts instead");
    }
  }
  if (pp > m.num_layers) {
    return err("--pp ", pp, " exceeds the number of layers (", m.num_layers, ")");
  }
  if (rank < 0 || rank >= world_size)
    return err("rank ", rank, " outside the world of ", world_size);
  ParallelConfig c;
  c.world_size = world_size;
  c.rank = rank;
  c.tp = tp;
  c.pp = pp;
  c.dp = dp;
  c.ep = ep;
  return c;
}

}  // namespace tessera
