#!/usr/bin/env python3
"""Proves that a gemma3-train checkpoint loads in Hugging Face transformers with the same logits.

  .venv/bin/python tools/check_hf_checkpoint.py out/demo/latest [--gemma3-generate build/bin/gemma3-generate]

Runs our model (gemma3-generate --logits-out) and transformers' Gemma3ForCausalLM.from_pretrained on
the same token ids, both in float32, and compares the logits: max|ours - HF| / max|HF| must be
<= 1e-5 (the float32 bound the forward-pass fixtures use). Exits 1 if not.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import Gemma3ForCausalLM


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--gemma3-generate", default=os.path.join(os.path.dirname(__file__), "..", "build", "bin",
                                                                   "gemma3-generate"))
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()

    model, info = Gemma3ForCausalLM.from_pretrained(args.checkpoint, attn_implementation="eager", dtype=torch.float32,
                                                    output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        print(f"transformers reported problems loading {args.checkpoint}: {problems}")
        return 1
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.tokens,), generator=generator)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.safetensors")
        subprocess.run([args.gemma3_generate, "--checkpoint", args.checkpoint, "--prompt-ids",
                        " ".join(str(i) for i in ids.tolist()), "--logits-out", out], check=True)
        ours = load_file(out)["logits"].double()
    with torch.no_grad():
        theirs = model(input_ids=ids[None, :], use_cache=False).logits[0].double()
    err = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    print(f"{args.checkpoint}: transformers {__import__('transformers').__version__} loaded it with no missing or "
          f"unexpected tensors; logits of {args.tokens} tokens: max|ours - HF| / max|HF| = {err:.3e}")
    return 0 if err <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
