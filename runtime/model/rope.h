// RoPE inverse frequencies and attention scaling, computed exactly as transformers does
// (modeling_rope_utils.py): inv_freq in float32, YaRN's ramp and mscale included.
#pragma once

#include <vector>

#include "runtime/model/model_config.h"

namespace tessera {

struct RopeTables {
  std::vector<float> inv_freq;     // [head_dim / 2]
  float attention_scaling = 1.0f;  // multiplies cos and sin (YaRN's attention_factor)
};

RopeTables ComputeRopeTables(const ModelConfig& config);

}  // namespace tessera
