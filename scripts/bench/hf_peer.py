#!/usr/bin/env python3
"""The Hugging Face transformers peer for `tessera bench`: the same model shapes with random bf16
weights on one GPU, the same measurements (TTFT at given prompt lengths; decode ms per step at
given batch sizes and context), printed as JSON in the shape `tessera bench --json` uses.

    python3 scripts/bench/hf_peer.py --model scripts/bench/models/Qwen3-14B \\
        --ttft 1024,4096 --decode-batch 1,16 --decode-context 1024 [--compile]

Needs torch and transformers with a CUDA GPU (the H200 machine has both). --compile uses a static
cache and torch.compile for decode (CUDA graphs), the fastest HF configuration.
"""
import argparse
import json
import os
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def timed(fn, repeats):
    times = []
    for i in range(repeats + 1):  # the first call warms up
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if i > 0:
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return times[len(times) // 2], times[0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a directory with config.json")
    p.add_argument("--ttft", default="1024")
    p.add_argument("--decode-batch", default="1")
    p.add_argument("--decode-context", type=int, default=1024)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(args.model)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16,
                                                 attn_implementation=args.attn).eval()
    vocab = config.vocab_size
    result = {"peer": f"transformers {transformers.__version__}, torch {torch.__version__}",
              "model": os.path.abspath(args.model), "gpu": torch.cuda.get_device_name(),
              "attn": args.attn, "compile": args.compile, "ttft": [], "decode": []}

    with torch.no_grad():
        for length in [int(x) for x in args.ttft.split(",") if x]:
            ids = torch.randint(0, vocab, (1, length), device="cuda")
            p50, best = timed(lambda: model(ids, use_cache=True, logits_to_keep=1).logits.argmax(-1),
                              args.repeats)
            result["ttft"].append({"prompt_tokens": length, "ms_p50": p50, "ms_min": best})
            print(f"TTFT {length:6d} tokens: {p50:9.2f} ms", flush=True)

        for batch in [int(x) for x in args.decode_batch.split(",") if x]:
            ids = torch.randint(0, vocab, (batch, args.decode_context), device="cuda")
            if args.compile:
                out = model.generate(ids, max_new_tokens=2, do_sample=False, cache_implementation="static",
                                     compile_config=None)  # builds and warms the static cache
            steps = args.decode_steps
            gen_kwargs = dict(min_new_tokens=steps, max_new_tokens=steps, do_sample=False, pad_token_id=0)
            if args.compile:
                gen_kwargs["cache_implementation"] = "static"
            # Decode time = generate(steps) - prefill, per step.
            prefill_ms, _ = timed(lambda: model(ids, use_cache=True, logits_to_keep=1), 2)
            total_ms, _ = timed(lambda: model.generate(ids, **gen_kwargs), 2)
            per_step = (total_ms - prefill_ms) / (steps - 1)
            result["decode"].append({"batch": batch, "context": args.decode_context,
                                     "ms_per_step_p50": per_step, "tokens_per_s": batch * 1000 / per_step})
            print(f"decode batch {batch:4d}: {per_step:8.2f} ms/step, {batch * 1000 / per_step:9.1f} tok/s",
                  flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
