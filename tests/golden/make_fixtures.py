#!/usr/bin/env python3
"""Generates the golden fixtures: tiny random-weight Qwen3 / Qwen3-MoE checkpoints and
Hugging Face transformers' float32 logits and greedy continuations for them.

Needs torch + transformers (the GPU machine has both; on a CPU machine `pip install torch
transformers safetensors numpy`). Run from the repository root:

    python3 tests/golden/make_fixtures.py [--out tests/golden/fixtures]

For each fixture it writes DIR/<name>/:
  config.json, model.safetensors (or shards + model.safetensors.index.json)  the checkpoint
  prompt_logits.npy   float32 [n_prompt, vocab]: row i = logits after prompt token i
  expected.json       prompt ids, greedy continuation, min top-1/top-2 margin, RoPE inv_freq and
                      attention scaling as transformers computed them, versions

The reference is built the way the issue prescribes: the checkpoint is saved first, then loaded
back with from_pretrained(dir, dtype=torch.float32), so RoPE's inv_freq is computed in fp32 from
the config rather than rounded through bf16. Seeds are fixed; a fixture whose greedy path has a
near-tie (margin < 1e-3) is rejected and the next seed tried, so token-exact comparisons are not
decided by rounding.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from transformers import (Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM)

NEW_TOKENS = 12
MIN_MARGIN = 1e-3

# Sizes divisible for TP 2/4 and EP 2/4: heads 8, kv 4 (or 2, replicated at TP 4), vocab 384.
BASE = dict(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=8, num_key_value_heads=4, head_dim=16, rms_norm_eps=1e-6,
            max_position_embeddings=512, rope_theta=1000000.0, tie_word_embeddings=False,
            bos_token_id=None, eos_token_id=None, pad_token_id=None)

FIXTURES = [
    # name, model kind, config overrides, dtype saved, config spelling, shard size, prompt length
    ("dense_gqa", "dense", {}, torch.bfloat16, "v5", None, 37),
    ("dense_mha_tied", "dense", dict(num_key_value_heads=8, tie_word_embeddings=True),
     torch.float16, "hub", None, 23),
    ("dense_gqa_kv2", "dense", dict(num_key_value_heads=2, num_hidden_layers=2), torch.float32,
     "v5", None, 19),
    ("dense_yarn", "dense",
     dict(max_position_embeddings=256,
          rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
     torch.bfloat16, "hub", None, 100),
    ("dense_yarn_v5", "dense",
     dict(max_position_embeddings=256,
          rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 128,
                        "beta_fast": 16.0, "beta_slow": 2.0}),
     torch.float32, "v5", None, 150),
    ("moe_norm_topk", "moe",
     dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True),
     torch.bfloat16, "v5", "100KB", 29),
    ("moe_no_norm", "moe",
     dict(num_experts=8, num_experts_per_tok=3, moe_intermediate_size=24, norm_topk_prob=False),
     torch.float32, "hub", None, 31),
    ("moe_mixed_layers", "moe",
     dict(num_hidden_layers=4, hidden_size=48, num_experts=4, num_experts_per_tok=2,
          moe_intermediate_size=16, norm_topk_prob=True, decoder_sparse_step=2,
          mlp_only_layers=[1], tie_word_embeddings=True),
     torch.bfloat16, "hub", None, 27),
]


def hub_spelling(config_path):
    """Rewrites a config.json written by transformers v5 into the Hub's spelling."""
    with open(config_path) as f:
        cfg = json.load(f)
    rope = cfg.pop("rope_parameters", None) or {}
    cfg["rope_theta"] = rope.pop("rope_theta", 10000.0)
    rope_type = rope.get("rope_type", "default")
    cfg["rope_scaling"] = None if rope_type == "default" else rope
    if "num_local_experts" in cfg:
        cfg["num_experts"] = cfg.pop("num_local_experts")
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    with open(config_path, "w") as f:
        json.dump(cfg, f, indent=2)


def randomize(model, generator):
    """Weights large enough that logits are well separated (the default init is near-uniform)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=generator))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=generator) * (1.5 / fan_in ** 0.5))


def build(name, kind, overrides, save_dtype, spelling, shard_size, prompt_len, out_dir, seed):
    params = dict(BASE)
    params.update(overrides)
    if kind == "dense":
        config = Qwen3Config(**params)
        cls = Qwen3ForCausalLM
    else:
        params.setdefault("decoder_sparse_step", 1)
        params.setdefault("mlp_only_layers", [])
        config = Qwen3MoeConfig(**params)
        cls = Qwen3MoeForCausalLM
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = cls(config).eval()
    randomize(model, generator)
    model = model.to(save_dtype)

    path = os.path.join(out_dir, name)
    shutil.rmtree(path, ignore_errors=True)
    save_kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(path, **save_kwargs)
    if spelling == "hub":
        hub_spelling(os.path.join(path, "config.json"))
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(path, extra)):
            os.remove(os.path.join(path, extra))
    del model

    # The reference: reload from disk in float32.
    ref = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(seed + 1)
    prompt = torch.randint(0, config.vocab_size, (1, prompt_len), generator=g)
    with torch.no_grad():
        logits = ref(prompt).logits[0].float().numpy()
        out = ref.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False,
                           eos_token_id=None, pad_token_id=0, output_logits=True,
                           return_dict_in_generate=True)
    tokens = out.sequences[0, prompt_len:].tolist()
    margins = []
    for step_logits in list(logits) + [l[0].float().numpy() for l in out.logits]:
        top2 = np.sort(step_logits)[-2:]
        margins.append(float(top2[1] - top2[0]))
    np.save(os.path.join(path, "prompt_logits.npy"), logits.astype(np.float32))
    rotary = ref.model.rotary_emb
    expected = dict(prompt_ids=prompt[0].tolist(), greedy_tokens=tokens,
                    inv_freq=[float(x) for x in rotary.inv_freq.float().tolist()],
                    attention_scaling=float(rotary.attention_scaling),
                    min_margin=min(margins), seed=seed, saved_dtype=str(save_dtype),
                    config_spelling=spelling,
                    transformers=transformers.__version__, torch=torch.__version__)
    with open(os.path.join(path, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    return min(margins)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "fixtures"))
    parser.add_argument("--only", default=None, help="comma-separated fixture names")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    only = set(args.only.split(",")) if args.only else None
    for name, kind, overrides, dtype, spelling, shard, plen in FIXTURES:
        if only and name not in only:
            continue
        for seed in range(100, 140):
            margin = build(name, kind, overrides, dtype, spelling, shard, plen, args.out, seed)
            if margin >= MIN_MARGIN:
                break
            print(f"{name}: seed {seed} has a near-tie ({margin:.2e}); trying the next", file=sys.stderr)
        else:
            sys.exit(f"{name}: no seed without near-ties")
        print(f"{name}: seed {seed}, min margin {margin:.4f}")


if __name__ == "__main__":
    main()
