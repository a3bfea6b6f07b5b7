#!/usr/bin/env python3
"""tiktoken's GPT-2 encode throughput on a file, one thread: best of N runs of
`encode_ordinary` over the whole text (MB = 10^6 bytes of UTF-8).

tiktoken loads the same ranks file as the C++ tokenizer (data/gpt2.tiktoken) with its own GPT-2
pattern. A single `encode_ordinary` call runs on the calling thread (it releases the GIL but does
not fan out), so this is a one-thread measurement. The text must be valid UTF-8 (tiktoken's str
API); decoding the file to str happens once, outside the timing.

Prints "tiktoken_MBps <value>". Used by benchmarks/tokenizer.sh.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext import openai_public

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=Path, default=ROOT / "data" / "gpt2.tiktoken")
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    enc = tiktoken.Encoding(
        name="gpt2_from_data",
        pat_str=openai_public.r50k_pat_str,
        mergeable_ranks=load_tiktoken_bpe(str(args.ranks)),
        special_tokens={openai_public.ENDOFTEXT: 50256},
        explicit_n_vocab=50257,
    )
    raw = args.text.read_bytes()
    text = raw.decode("utf-8")
    tokens = len(enc.encode_ordinary(text))  # warm-up (also builds the str's UTF-8 cache)
    best = float("inf")
    for _ in range(args.runs):
        start = time.perf_counter()
        tokens = len(enc.encode_ordinary(text))
        best = min(best, time.perf_counter() - start)
    print(f"text {args.text}: {len(raw)} bytes, {tokens} tokens (tiktoken {tiktoken.__version__})")
    print(f"tiktoken_MBps {len(raw) / 1e6 / best:.2f}")


if __name__ == "__main__":
    main()
