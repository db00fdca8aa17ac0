#!/usr/bin/env python3
"""Writes the model-input fixtures under tests/data/ with the reference Python packages.

Run once by hand (the outputs are committed; the C++ tests never run Python):
    /opt/tessera-ref/bin/python tests/data/make_input_fixtures.py

Needs torch, transformers 5.23, safetensors and huggingface_hub. Writes:
  configs/v5/*.json          config.json as transformers 5.23 saves it (rope_parameters,
                             num_local_experts), dense and MoE, with and without YaRN
  configs/yarn/*.json        YaRN configs in both spellings and their corner cases
  configs/yarn_expected.json for each configs/yarn file: the attention factor and inv_freq that
                             transformers computes (modeling_rope_utils._compute_yarn_parameters)
  safetensors/single/model.safetensors   one tensor of each dtype, written by safetensors.torch
  safetensors/sharded/                   a sharded checkpoint with an index, written by
                                         huggingface_hub.save_torch_state_dict
Tensor values follow value(tensor_index, i) below, so the C++ tests recompute them.
"""
import copy
import json
import os
import shutil
import tempfile

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import save_file
from transformers import AutoConfig, Qwen3Config, Qwen3MoeConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

HERE = os.path.dirname(os.path.abspath(__file__))
HUB_8B = os.path.join(HERE, "configs", "Qwen3-8B.config.json")


def save_config(config, path):
    with tempfile.TemporaryDirectory() as d:
        config.save_pretrained(d)
        shutil.copy(os.path.join(d, "config.json"), path)


def write_v5_configs():
    out = os.path.join(HERE, "configs", "v5")
    os.makedirs(out, exist_ok=True)
    small = dict(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 max_position_embeddings=4096, eos_token_id=[7, 9], bos_token_id=5,
                 tie_word_embeddings=True, dtype="bfloat16")
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
            "rope_theta": 1000000.0}
    save_config(Qwen3Config(**small), os.path.join(out, "qwen3.json"))
    save_config(Qwen3Config(**small, rope_parameters=dict(yarn)), os.path.join(out, "qwen3-yarn.json"))
    moe = dict(small, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=48,
               norm_topk_prob=True, decoder_sparse_step=2, mlp_only_layers=[1])
    save_config(Qwen3MoeConfig(**moe), os.path.join(out, "qwen3_moe.json"))
    save_config(Qwen3MoeConfig(**moe, rope_parameters=dict(yarn)),
                os.path.join(out, "qwen3_moe-yarn.json"))


def write_yarn_configs():
    out = os.path.join(HERE, "configs", "yarn")
    os.makedirs(out, exist_ok=True)
    with open(HUB_8B) as f:
        hub = json.load(f)
    cases = {
        # Qwen's documented long-context setting, Hub spelling.
        "hub-rope_scaling.json": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                   "original_max_position_embeddings": 32768}},
        # The older "type" key, a null factor (derived from the two lengths), mscale pair,
        # beta_fast 0 (means 32), no truncation.
        "hub-corner-cases.json": {"rope_scaling": {"type": "yarn", "factor": None,
                                                   "original_max_position_embeddings": 10240,
                                                   "mscale": 0.707, "mscale_all_dim": 1.0,
                                                   "beta_fast": 0, "beta_slow": 2,
                                                   "truncate": False}},
        # transformers v5 spelling with an explicit attention factor; the top-level rope_theta is
        # ignored because the dict has its own.
        "v5-rope_parameters.json": {"rope_parameters": {"rope_type": "yarn", "factor": 2,
                                                        "original_max_position_embeddings": 20480,
                                                        "rope_theta": 500000.0,
                                                        "attention_factor": 0.9},
                                    "rope_theta": 123.0},
    }
    expected = {}
    for name, change in cases.items():
        config = copy.deepcopy(hub)
        config.update(change)
        path = os.path.join(out, name)
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(path, os.path.join(d, "config.json"))
            loaded = AutoConfig.from_pretrained(d)
        inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](loaded, "cpu")
        expected[name] = {"attention_factor": float(attention_factor),
                          "inv_freq": [float(x) for x in inv_freq.tolist()]}
    with open(os.path.join(HERE, "configs", "yarn_expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


def value(tensor_index, i):
    # Multiples of 1/4 in [-2, 2]: exact in every float dtype, F8_E4M3 included.
    return ((i * 7 + tensor_index * 3) % 17 - 8) * 0.25


def make_tensor(tensor_index, shape, dtype):
    n = 1
    for d in shape:
        n *= d
    if dtype in (torch.int32, torch.int64):
        data = torch.tensor([i * 1000003 - 7 * tensor_index for i in range(n)], dtype=torch.int64)
    else:
        data = torch.tensor([value(tensor_index, i) for i in range(n)], dtype=torch.float32)
    return data.to(dtype).reshape(shape)


# name, shape, dtype; the tensor index is the position in this list.
SINGLE = [
    ("bf16.3d", (3, 5, 7), torch.bfloat16),
    ("f16.2d", (4, 3), torch.float16),
    ("f32.3d", (2, 3, 5), torch.float32),
    ("f8.2d", (5, 6), torch.float8_e4m3fn),
    ("i32.1d", (4,), torch.int32),
    ("i64.1d", (3,), torch.int64),
    ("f32.scalar", (), torch.float32),
    ("f32.empty", (0, 4), torch.float32),
]


def write_safetensors():
    single = os.path.join(HERE, "safetensors", "single")
    os.makedirs(single, exist_ok=True)
    tensors = {name: make_tensor(k, shape, dtype) for k, (name, shape, dtype) in enumerate(SINGLE)}
    save_file(tensors, os.path.join(single, "model.safetensors"), metadata={"format": "pt"})

    sharded = os.path.join(HERE, "safetensors", "sharded")
    shutil.rmtree(sharded, ignore_errors=True)
    os.makedirs(sharded)
    # Qwen3-style names; max_shard_size forces three shards.
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight",
             "model.layers.1.mlp.down_proj.weight", "model.norm.weight"]
    shapes = [(11, 8), (8, 8), (8, 12), (8, 8), (8, 12), (8,)]
    state = {n: make_tensor(k, s, torch.bfloat16) for k, (n, s) in enumerate(zip(names, shapes))}
    save_torch_state_dict(state, sharded, max_shard_size=400, metadata={"format": "pt"})


if __name__ == "__main__":
    write_v5_configs()
    write_yarn_configs()
    write_safetensors()
