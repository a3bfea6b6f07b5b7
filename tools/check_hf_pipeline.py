#!/usr/bin/env python3
"""Proves that pipeline("text-generation", model=checkpoint) runs a gemma3-train checkpoint as it is and
continues a prompt greedily with the same tokens as gemma3-generate --temperature 0.

  .venv/bin/python tools/check_hf_pipeline.py CHECKPOINT_DIR [--prompt TEXT] [--max-new-tokens N]
      [--gemma3-generate build/bin/gemma3-generate]

Two float32 implementations agree on the logits to ~1e-5 of their largest magnitude (the bound of
tools/check_hf_checkpoint.py), so their greedy choices can differ only where the top two logits
are closer than that. The tokens are compared up to the first difference; a difference at a
position whose top-2 margin (in transformers' logits along its own path) exceeds the bound is a
failure, one within it is reported as a tie. Needs torch and transformers (the tools' venv).
"""
import argparse
import os
import subprocess
import sys

import torch
from transformers import pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--prompt", default="And God said")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--gemma3-generate", default=os.path.join(os.path.dirname(__file__), "..", "build", "bin",
                                                                   "gemma3-generate"))
    args = parser.parse_args()

    generator = pipeline("text-generation", model=args.checkpoint, dtype=torch.float32, device="cpu")
    result = generator(args.prompt, max_new_tokens=args.max_new_tokens, do_sample=False, return_tensors=True)
    tokenizer, model = generator.tokenizer, generator.model
    prompt_ids = tokenizer.encode(args.prompt)
    ids = list(result[0]["generated_token_ids"])
    if ids[:len(prompt_ids)] == prompt_ids:
        ids = ids[len(prompt_ids):]
    eos = model.generation_config.eos_token_id
    if ids and ids[-1] == eos:
        ids = ids[:-1]  # gemma3-generate stops at <|endoftext|> without printing it

    ours_run = subprocess.run([args.gemma3_generate, "--checkpoint", args.checkpoint, "--prompt", args.prompt,
                               "--temperature", "0", "--max-new-tokens", str(args.max_new_tokens), "--ids"],
                              capture_output=True, text=True, check=True)
    ours = [int(t) for t in ours_run.stdout.split()]

    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + ids]), use_cache=False).logits[0].double()
    margins, bounds = [], []
    for i in range(len(ids) + 1 if len(prompt_ids) + len(ids) <= logits.shape[0] else len(ids)):
        row = logits[len(prompt_ids) - 1 + i]
        top = row.topk(2).values
        margins.append((top[0] - top[1]).item())
        bounds.append(1e-5 * row.abs().max().item())

    print(f"transformers {__import__('transformers').__version__}: pipeline('text-generation', model={args.checkpoint!r}) "
          f"loaded {type(model).__name__} and {type(tokenizer).__name__}")
    print(f"prompt {args.prompt!r} = {prompt_ids}")
    print(f"pipeline greedy ({len(ids)} tokens): {ids}")
    print(f"gemma3-generate --temperature 0 ({len(ours)} tokens): {ours}")
    print(f"text: {tokenizer.decode(ids)!r}")
    first = next((i for i, (a, b) in enumerate(zip(ids, ours)) if a != b), None)
    if first is None and len(ids) == len(ours):
        print(f"equal: all {len(ids)} tokens; smallest top-2 margin on the path {min(margins):.3e} "
              f"(bound {max(bounds):.1e})")
        return 0
    if first is None:
        first = min(len(ids), len(ours))
    if first < len(margins) and margins[first] <= bounds[first]:
        print(f"equal for the first {first} tokens; at token {first} the top-2 margin {margins[first]:.3e} is within "
              f"float32 rounding ({bounds[first]:.1e}): a tie either side may break")
        return 0
    print(f"FAIL: the tokens differ at position {first}, where the top-2 margin is "
          f"{margins[first] if first < len(margins) else float('nan'):.3e}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
