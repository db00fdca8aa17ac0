# transformers' FP8 reference for the FP8 fixtures (tests/golden/make_fp8_fixtures.py), on the GPU:
# loads each FP8 checkpoint with transformers (FineGrainedFP8, bf16 compute; this also checks that
# the fixtures are in the format transformers reads), writes its prompt logits and greedy tokens,
# and compares `tessera run --device cuda` (W8A8, and W8A16 with TESSERA_FP8_W8A16=1) against them
# and against transformers' bf16 logits of the unquantized weights (NAME_bf16).
# transformers' FP8 forward needs the `kernels` package (its finegrained-fp8 kernels); where it is
# missing (the GPU machine has no network to install it) the reference is transformers' bf16
# forward of the FP8 checkpoint dequantized exactly (w * scale_inv per 128 x 128 block, written as
# NAME_dequantized): the FP8 weights without activation quantization, i.e. W8A16's math, and the
# lines say "dequantized" instead of "FP8".
# usage: python3 fp8_golden.py FIXTURES_DIR TESSERA_BINARY OUT_DIR
import glob, json, os, shutil, subprocess, sys
import numpy as np, torch
from transformers import AutoModelForCausalLM

root, tessera, out_dir = sys.argv[1:4]
NEW = 8


def rel(a, b):
    r = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    return f"median {np.median(r):.3e} max {r.max():.3e}"


def dequantized_dir(d):
    """Writes d's FP8 checkpoint as bf16 (w * scale_inv per 128 x 128 block) beside it."""
    from safetensors.torch import load_file, save_file
    out = d.rstrip("/") + "_dequantized"
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(d):
        src = os.path.join(d, f)
        if os.path.isfile(src) and not f.endswith(".safetensors") and f not in (
                "config.json", "model.safetensors.index.json"):
            shutil.copy(src, out)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg.pop("quantization_config", None)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index):
        idx = json.load(open(index))
        idx["weight_map"] = {k: v for k, v in idx["weight_map"].items()
                             if not k.endswith("_scale_inv")}
        json.dump(idx, open(os.path.join(out, "model.safetensors.index.json"), "w"))
    tensors = {}
    for f in glob.glob(os.path.join(d, "*.safetensors")):
        tensors.update({k: (f, v) for k, v in load_file(f).items()})
    by_file = {}
    for k, (f, v) in tensors.items():
        if k.endswith("_scale_inv"):
            continue
        scale = tensors.get(k + "_scale_inv")
        if scale is not None:
            n, kk = v.shape
            s = scale[1].float().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :kk]
            v = (v.float() * s).to(torch.bfloat16)
        by_file.setdefault(os.path.basename(f), {})[k] = v.contiguous()
    for f, t in by_file.items():
        save_file(t, os.path.join(out, f), metadata={"format": "pt"})
    return out


def hf(d, prompt):
    """transformers' logits and greedy tokens for d; falls back to d dequantized (see the top)."""
    try:
        return run_hf(d, prompt) + ("FP8",)
    except ImportError as e:
        if "fp8" not in str(e).lower():
            raise
        print(f"[fp8 golden] transformers' FP8 kernels unavailable ({str(e)[:80]}...): "
              f"reference = transformers bf16 on {os.path.basename(d)} dequantized", flush=True)
        return run_hf(dequantized_dir(d), prompt) + ("dequantized",)


def run_hf(d, prompt):
    try:
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map="cuda")
    except (ImportError, ValueError):  # no accelerate: load, then move
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).to("cuda")
    m = m.eval()
    ids = torch.tensor([prompt], device="cuda")
    with torch.no_grad():
        logits = m(ids).logits[0].float().cpu().numpy()
        toks = m.generate(ids, max_new_tokens=NEW, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(prompt):].tolist()
    return logits, toks


def ours(d, prompt, env):
    out = os.path.join(out_dir, "ours.npy")
    p = subprocess.run([tessera, "run", "--device", "cuda", "--model", d, "--prompt-ids",
                        ",".join(map(str, prompt)), "--temperature", "0", "--json",
                        "--max-new-tokens", str(NEW), "--prompt-logits-out", out],
                       capture_output=True, text=True, env=dict(os.environ, **env))
    if p.returncode != 0:
        return None, p.stderr[-2000:]
    return np.load(out), json.loads(p.stdout.strip().splitlines()[0])["tokens"]


for name in ("fp8_dense", "fp8_moe"):
    d = os.path.join(root, name)
    prompt = json.load(open(os.path.join(d, "prompt.json")))["prompt_ids"]
    ref, ref_toks, kind = hf(d, prompt)
    np.save(os.path.join(out_dir, f"{name}_hf_{kind.lower()}_logits.npy"), ref)
    bf16, bf16_toks = run_hf(d + "_bf16", prompt)
    print(f"[fp8 golden] {name}: transformers {kind} vs its bf16 weights: {rel(ref, bf16)}; "
          f"tokens {ref_toks} vs {bf16_toks}", flush=True)
    for label, env in (("W8A8", {}), ("W8A16", {"TESSERA_FP8_W8A16": "1"})):
        got, toks = ours(d, prompt, env)
        if got is None:
            print(f"[fp8 golden] {name} {label}: tessera failed: {toks}", flush=True)
            continue
        print(f"[fp8 golden] {name} {label}: tessera cuda vs transformers {kind} {rel(got, ref)}, "
              f"vs bf16 weights {rel(got, bf16)}; tokens {toks} (transformers {ref_toks})",
              flush=True)
