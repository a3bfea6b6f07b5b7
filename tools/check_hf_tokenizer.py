#!/usr/bin/env python3
"""Proves that transformers loads the tokenizer a gemma3-train checkpoint carries and encodes like gemma3-tokenize.

  python tools/check_hf_tokenizer.py CHECKPOINT_DIR TEXT_FILE... [--gemma3-tokenize build/bin/gemma3-tokenize]

For each text file: AutoTokenizer.from_pretrained(CHECKPOINT_DIR) (which reads tokenizer.json) and
AutoTokenizer.from_pretrained on a copy of the files older transformers versions read
(vocab.json + merges.txt + tokenizer_config.json, without tokenizer.json) must give exactly the ids of `gemma3-tokenize encode --allow-special`, and decoding them must give
the text back (invalid UTF-8 in a file is replaced by U+FFFD first: transformers takes only text). Needs only transformers and tokenizers (no torch). Exits 1 on any difference.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from transformers import AutoTokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--gemma3-tokenize", default=os.path.join(os.path.dirname(__file__), "..", "build", "bin",
                                                                   "gemma3-tokenize"))
    args = parser.parse_args()

    fast = AutoTokenizer.from_pretrained(args.checkpoint)
    with tempfile.TemporaryDirectory() as legacy_dir:
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            shutil.copy(os.path.join(args.checkpoint, name), legacy_dir)
        legacy = AutoTokenizer.from_pretrained(legacy_dir)
    with open(os.path.join(args.checkpoint, "tokenizer_config.json")) as f:
        config = json.load(f)
    failures = 0
    print(f"{args.checkpoint}: transformers {__import__('transformers').__version__} loaded "
          f"{type(fast).__name__} ({len(fast)} tokens, bos {fast.bos_token!r} = {fast.bos_token_id}, "
          f"eos {fast.eos_token!r} = {fast.eos_token_id}; tokenizer_config.json class {config['tokenizer_class']})")
    if fast.bos_token_id != 50256 or fast.eos_token_id != 50256:
        print("FAIL: bos and eos should be <|endoftext|> = 50256")
        failures += 1
    for path in args.texts:
        with open(path, "rb") as f:
            raw = f.read()
        # transformers takes text, not bytes: invalid UTF-8 (the hard cases have some) becomes U+FFFD
        # for both sides.
        text = raw.decode("utf-8", errors="replace")
        ours = [int(t) for t in subprocess.run([args.gemma3_tokenize, "encode", "--allow-special"], input=text.encode(),
                                               capture_output=True, check=True).stdout.split()]
        for name, ids, decoded in (
                ("AutoTokenizer (tokenizer.json)", fast.encode(text, add_special_tokens=False),
                 lambda ids: fast.decode(ids)),
                ("vocab.json + merges.txt", legacy.encode(text, add_special_tokens=False), lambda ids: legacy.decode(ids))):
            same = ids == ours
            first = next((i for i, (a, b) in enumerate(zip(ids, ours)) if a != b), min(len(ids), len(ours)))
            round_trip = decoded(ids) == text
            print(f"  {os.path.basename(path)}: {name}: {len(ids)} ids, gemma3-tokenize {len(ours)}: "
                  f"{'equal' if same else f'DIFFER from position {first}'}; decode gives the text back: {round_trip}")
            failures += (not same) + (not round_trip)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
