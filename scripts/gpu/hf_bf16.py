# transformers itself, in bf16 on the GPU, against its own fp32 golden fixtures: how far a bf16
# forward lands from the fp32 reference (the yardstick for the CUDA backend's golden tolerances).
# usage: python3 hf_bf16.py tests/golden/fixtures
import json, os, sys
import numpy as np, torch
from transformers import AutoModelForCausalLM
root = sys.argv[1]
for name in sorted(os.listdir(root)):
    d = os.path.join(root, name)
    e = json.load(open(os.path.join(d, "expected.json")))
    want = np.load(os.path.join(d, "prompt_logits.npy"))
    for dev in ("cuda",):
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, attn_implementation="eager").to(dev).eval()
        with torch.no_grad():
            got = m(torch.tensor([e["prompt_ids"]], device=dev)).logits[0].float().cpu().numpy()
            out = m.generate(torch.tensor([e["prompt_ids"]], device=dev), max_new_tokens=len(e["greedy_tokens"]), do_sample=False, eos_token_id=None, pad_token_id=0)
        rows = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
        toks = out[0, len(e["prompt_ids"]):].tolist()
        agree = next((i for i, (a, b) in enumerate(zip(toks, e["greedy_tokens"])) if a != b), len(toks))
        print(f"[hf bf16 {dev}] {name}: row relative L2 median {np.median(rows):.3e} max {rows.max():.3e}; greedy tokens equal for {agree} of {len(toks)}", flush=True)
