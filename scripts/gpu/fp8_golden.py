# transformers' FP8 reference for the FP8 fixtures (tests/golden/make_fp8_fixtures.py), on the GPU:
# loads each FP8 checkpoint with transformers (FineGrainedFP8, bf16 compute; this also checks that
# the fixtures are in the format transformers reads), writes its prompt logits and greedy tokens,
# and compares `tessera run --device cuda` (W8A8, and W8A16 with TESSERA_FP8_W8A16=1) against them
# and against transformers' bf16 logits of the unquantized weights (NAME_bf16).
# usage: python3 fp8_golden.py FIXTURES_DIR TESSERA_BINARY OUT_DIR
import json, os, subprocess, sys
import numpy as np, torch
from transformers import AutoModelForCausalLM

root, tessera, out_dir = sys.argv[1:4]
NEW = 8


def rel(a, b):
    r = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    return f"median {np.median(r):.3e} max {r.max():.3e}"


def hf(d, prompt):
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
    ref, ref_toks = hf(d, prompt)
    np.save(os.path.join(out_dir, f"{name}_hf_fp8_logits.npy"), ref)
    bf16, bf16_toks = hf(d + "_bf16", prompt)
    print(f"[fp8 golden] {name}: transformers FP8 vs its bf16 weights: {rel(ref, bf16)}; "
          f"tokens {ref_toks} vs {bf16_toks}", flush=True)
    for label, env in (("W8A8", {}), ("W8A16", {"TESSERA_FP8_W8A16": "1"})):
        got, toks = ours(d, prompt, env)
        if got is None:
            print(f"[fp8 golden] {name} {label}: tessera failed: {toks}", flush=True)
            continue
        print(f"[fp8 golden] {name} {label}: tessera cuda vs transformers FP8 {rel(got, ref)}, "
              f"vs bf16 weights {rel(got, bf16)}; tokens {toks} (transformers {ref_toks})",
              flush=True)
