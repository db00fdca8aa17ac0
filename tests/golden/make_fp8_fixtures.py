#!/usr/bin/env python3
"""Writes the FP8 golden fixtures: tiny Qwen3 / Qwen3-MoE checkpoints in the format of Qwen's FP8
releases (transformers' FineGrainedFP8: `quantization_config` {"quant_method": "fp8", "fmt":
"e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}, each linear's
`*.weight` float8_e4m3fn [out, in] and `*.weight_scale_inv` float32 [ceil(out/128),
ceil(in/128)]; embeddings, norms, lm_head and the MoE router in bf16).

Needs only numpy (CI's CPU machine has no torch): the weights are quantized exactly as
transformers' Fp8Quantize does it (per 128x128 block: amax in float32, s = 448 / amax (1 for an
all-zero block), e4m3(clamp(w * s)) rounded to nearest even, weight_scale_inv = 1 / s), with
e4m3 encoded by a port of kernels/base/dtype.cc FloatToF8E4M3 (identical to torch's cast for
finite values in range). Every linear dimension is a multiple of 128, as transformers' quantizer
requires. scripts/gpu/fp8-golden.py checks that transformers loads them and makes its logits.

For each fixture NAME it writes, under --out (default tests/golden/fixtures):
  NAME/          the FP8 checkpoint (config.json, model.safetensors, prompt.json)
  NAME_bf16/     the same bf16 weights before quantization (no quantization_config): the
                 "bf16 logits of the same weights" and the input of `--quantization fp8`, which
                 must reproduce NAME's FP8 bytes and scales
  NAME_dequant/  float32 weights = NAME's e4m3 values times their scales, exactly: the CPU
                 backend's exact dequantized reference for NAME

Run from the repository root:  python3 tests/golden/make_fp8_fixtures.py
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

BLOCK = 128
FP8_MAX = np.float32(448.0)
PROMPT_LEN = 21

# Sizes: head_dim 128 so q/k/v shards are whole blocks at TP2; the dense intermediate 768 gives
# 384 rows a rank at TP2 (whole blocks); the MoE fixture's dense layer and its experts
# (intermediate 384: 192 a rank, rank 1 from row 192, half-way into block 1, as Qwen3-235B's
# experts (1536) at TP8) split a 128-block at TP2.
BASE = dict(vocab_size=384, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
            head_dim=128, rms_norm_eps=1e-6, max_position_embeddings=512, rope_theta=1000000.0,
            tie_word_embeddings=False, hidden_act="silu", attention_bias=False,
            attention_dropout=0.0, use_sliding_window=False, initializer_range=0.02,
            bos_token_id=None, eos_token_id=None, torch_dtype="bfloat16")

FIXTURES = [
    ("fp8_dense", dict(BASE, model_type="qwen3", architectures=["Qwen3ForCausalLM"],
                       intermediate_size=768, num_hidden_layers=2), 1),
    ("fp8_moe", dict(BASE, model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"],
                     intermediate_size=384, num_hidden_layers=3, num_experts=8,
                     num_experts_per_tok=2, moe_intermediate_size=384, norm_topk_prob=True,
                     decoder_sparse_step=1, mlp_only_layers=[0], output_router_logits=False,
                     router_aux_loss_coef=0.001), 2),
]


def to_bf16_bits(x):
    """float32 -> bf16 bits, round to nearest even (as torch)."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_bits_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def e4m3_encode(f):
    """float32 -> e4m3fn bytes: nearest even, saturating to +-448 (kernels/base/dtype.cc)."""
    f = np.asarray(f, dtype=np.float32)
    u = f.view(np.uint32)
    sign = ((u >> 24) & 0x80).astype(np.uint8)
    a = u & 0x7FFFFFFF
    out = np.zeros(f.shape, dtype=np.uint8)
    mag = a.view(np.float32)
    nan = a > 0x7F800000
    sub = (~nan) & (mag < np.float32(2.0 ** -6))
    # subnormals: multiples of 2^-9, nearest even (np.rint rounds half to even)
    out[sub] = np.rint(mag[sub] * np.float32(512.0)).astype(np.uint8)
    norm = (~nan) & (~sub)
    r = (a[norm].astype(np.uint64) + 0x7FFFF + ((a[norm] >> 20) & 1)).astype(np.uint64)
    exponent = (r >> 23).astype(np.int64) - 127 + 7
    mant = ((r >> 20) & 7).astype(np.int64)
    sat = (exponent > 15) | ((exponent == 15) & (mant == 7))
    val = np.where(sat, 0x7E, (exponent << 3) | mant).astype(np.uint8)
    out[norm] = val
    out[nan] = 0x7F
    return out | sign


def e4m3_decode(b):
    b = np.asarray(b, dtype=np.uint8)
    sign = np.where(b & 0x80, -1.0, 1.0).astype(np.float32)
    e = ((b >> 3) & 0xF).astype(np.int32)
    m = (b & 7).astype(np.float32)
    val = np.where(e == 0, m * np.float32(2.0 ** -9),
                   (1.0 + m / 8.0) * np.power(2.0, e - 7)).astype(np.float32)
    val = np.where((b & 0x7F) == 0x7F, np.nan, val).astype(np.float32)
    return sign * val


def quantize(w):
    """w float32 [n, k] (multiples of 128) -> (e4m3 bytes [n, k], float32 scale_inv)."""
    n, k = w.shape
    tiles = w.reshape(n // BLOCK, BLOCK, k // BLOCK, BLOCK)
    amax = np.abs(tiles).max(axis=(1, 3)).astype(np.float32)
    scales = np.where(amax > 0, FP8_MAX / np.where(amax > 0, amax, 1), 1).astype(np.float32)
    inv = (np.float32(1.0) / scales).astype(np.float32)
    scaled = (tiles * scales[:, None, :, None]).astype(np.float32)
    scaled = np.clip(scaled, -FP8_MAX, FP8_MAX)
    return e4m3_encode(scaled.reshape(n, k)), inv


def dequantize(q, inv):
    n, k = q.shape
    vals = e4m3_decode(q).reshape(n // BLOCK, BLOCK, k // BLOCK, BLOCK)
    return (vals * inv[:, None, :, None]).astype(np.float32).reshape(n, k)


def write_safetensors(path, tensors):
    """tensors: name -> (dtype name, numpy array of the stored bytes' element type)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        dtype, array = tensors[name]
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def tensor_table(cfg):
    """(name, shape, kind): kind "linear" for FP8 candidates, "norm", or "other" (bf16)."""
    h, d, v = cfg["hidden_size"], cfg["head_dim"], cfg["vocab_size"]
    out = [("model.embed_tokens.weight", (v, h), "other"), ("model.norm.weight", (h,), "norm"),
           ("lm_head.weight", (v, h), "other")]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out += [(p + "input_layernorm.weight", (h,), "norm"),
                (p + "post_attention_layernorm.weight", (h,), "norm"),
                (p + "self_attn.q_norm.weight", (d,), "norm"),
                (p + "self_attn.k_norm.weight", (d,), "norm"),
                (p + "self_attn.q_proj.weight", (cfg["num_attention_heads"] * d, h), "linear"),
                (p + "self_attn.k_proj.weight", (cfg["num_key_value_heads"] * d, h), "linear"),
                (p + "self_attn.v_proj.weight", (cfg["num_key_value_heads"] * d, h), "linear"),
                (p + "self_attn.o_proj.weight", (h, cfg["num_attention_heads"] * d), "linear")]
        moe = cfg["model_type"] == "qwen3_moe" and layer not in cfg.get("mlp_only_layers", [])
        if moe:
            i = cfg["moe_intermediate_size"]
            out.append((p + "mlp.gate.weight", (cfg["num_experts"], h), "other"))
            for e in range(cfg["num_experts"]):
                q = f"{p}mlp.experts.{e}."
                out += [(q + "gate_proj.weight", (i, h), "linear"),
                        (q + "up_proj.weight", (i, h), "linear"),
                        (q + "down_proj.weight", (h, i), "linear")]
        else:
            i = cfg["intermediate_size"]
            out += [(p + "mlp.gate_proj.weight", (i, h), "linear"),
                    (p + "mlp.up_proj.weight", (i, h), "linear"),
                    (p + "mlp.down_proj.weight", (h, i), "linear")]
    return out


def build(name, cfg, seed, out_dir):
    rng = np.random.default_rng(seed)
    bf16, fp8, dequant = {}, {}, {}
    for tensor, shape, kind in tensor_table(cfg):
        if kind == "norm":
            w = 1.0 + 0.2 * rng.standard_normal(shape)
        elif kind == "other" and "mlp.gate" not in tensor:
            w = rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) * (1.5 / shape[-1] ** 0.5)
        bits = to_bf16_bits(w.astype(np.float32))
        bf16[tensor] = ("BF16", bits)
        if kind == "linear":
            q, inv = quantize(bf16_bits_to_f32(bits))
            fp8[tensor] = ("F8_E4M3", q)
            fp8[tensor + "_scale_inv"] = ("F32", inv)
            dequant[tensor] = ("F32", dequantize(q, inv))
        else:
            fp8[tensor] = ("BF16", bits)
            dequant[tensor] = ("F32", bf16_bits_to_f32(bits))
    prompt = rng.integers(0, cfg["vocab_size"], PROMPT_LEN).tolist()
    fp8_cfg = dict(cfg, quantization_config={
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
        "weight_block_size": [BLOCK, BLOCK],
        "modules_to_not_convert": ["lm_head"] + [
            f"model.layers.{l}.mlp.gate" for l in range(cfg["num_hidden_layers"])
            if cfg["model_type"] == "qwen3_moe" and l not in cfg.get("mlp_only_layers", [])]})
    for suffix, tensors, config in (("", fp8, fp8_cfg), ("_bf16", bf16, cfg),
                                    ("_dequant", dequant, dict(cfg, torch_dtype="float32"))):
        path = os.path.join(out_dir, name + suffix)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        write_safetensors(os.path.join(path, "model.safetensors"), tensors)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(path, "prompt.json"), "w") as f:
            json.dump({"prompt_ids": prompt}, f)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join("tests", "golden", "fixtures"))
    args = parser.parse_args()
    # The encoder against every e4m3 value and the midpoints between them (ties to even).
    codes = np.arange(256, dtype=np.uint8)
    finite = codes[(codes & 0x7F) != 0x7F]
    assert np.array_equal(e4m3_encode(e4m3_decode(finite)), finite)
    for name, cfg, seed in FIXTURES:
        build(name, cfg, seed, args.out)
        print("wrote", name)


if __name__ == "__main__":
    main()
