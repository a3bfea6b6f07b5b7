#!/usr/bin/env python3
"""Writes the expected GPT-2 token ids for tests/test_tokenizer.cpp, computed with tiktoken.

The reference is the PyPI `tiktoken` package, loading the SAME ranks file the C++ tokenizer
loads (data/gpt2.tiktoken, see scripts/fetch_tokenizer.sh) with tiktoken's own GPT-2 pattern
(tiktoken_ext.openai_public.r50k_pat_str) and `<|endoftext|>` = 50256, as tiktoken's "gpt2"
encoding defines them.

Outputs (under tests/data/tokenizer/):
  hard_cases.expected.json  ids for hard_cases.txt (a hand-written, binary-safe file):
      whole_file                  tiktoken `_encode_bytes(file)` (its raw-bytes path, which is how
                                  tiktoken treats bytes that are not valid UTF-8)
      lines                       `_encode_bytes(line)` for each line (newline kept)
      lines_allow_special         `encode(line, allowed_special={"<|endoftext|>"})` for each line
                                  that is valid UTF-8, else null
      valid_prefix_allow_special  the same for the file's valid UTF-8 prefix
  kjv.ids.u16le             ids of data/kjv/kjv.txt (`encode_ordinary`), uint16 little-endian
  kjv.meta.json             the corpus's SHA-256 and size, the token count, the ids' SHA-256
  unicode_classes.txt       for every code point, the class tiktoken's pattern gives it
                            (L letter, N number, W whitespace, O other), as "first last class"
                            hex ranges; found by probing tiktoken (see probe_class)

Run:  .venv/bin/python tools/make_tokenizer_fixtures.py   (after scripts/fetch_tokenizer.sh and
      scripts/fetch_corpus.sh)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe
from tiktoken_ext import openai_public

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "tokenizer"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT = "<|endoftext|>"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def gpt2_encoding(ranks_path: Path) -> tiktoken.Encoding:
    raw = ranks_path.read_bytes()
    if sha256(raw) != RANKS_SHA256:
        sys.exit(f"{ranks_path}: unexpected SHA-256; run scripts/fetch_tokenizer.sh")
    ranks = load_tiktoken_bpe(str(ranks_path))
    return tiktoken.Encoding(
        name="gpt2_from_data",
        pat_str=openai_public.r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={openai_public.ENDOFTEXT: 50256},
        explicit_n_vocab=50257,
    )


def check_hf_files(enc: tiktoken.Encoding, hf_dir: Path) -> None:
    """tiktoken's own converter must turn the HF files into exactly the ranks of gpt2.tiktoken."""
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files directly, cache nothing
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(hf_dir / "merges.txt"), encoder_json_file=str(hf_dir / "vocab.json")
    )
    if ranks != enc._mergeable_ranks:
        sys.exit(f"{hf_dir}: vocab.json + merges.txt do not give the ranks of gpt2.tiktoken")
    print(f"ok: {hf_dir}/vocab.json + merges.txt == gpt2.tiktoken ranks (via tiktoken's converter)")


def split_lines_keep_newline(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def first_invalid_utf8(data: bytes) -> int:
    try:
        data.decode("utf-8")
        return len(data)
    except UnicodeDecodeError as e:
        return e.start


def hard_cases(enc: tiktoken.Encoding) -> None:
    path = OUT / "hard_cases.txt"
    data = path.read_bytes()
    valid = first_invalid_utf8(data)
    lines = split_lines_keep_newline(data)
    lines_allow_special = []
    for line in lines:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            lines_allow_special.append(None)
            continue
        lines_allow_special.append(enc.encode(text, allowed_special={EOT}))
    expected = {
        "generator": "tools/make_tokenizer_fixtures.py",
        "tiktoken_version": tiktoken.__version__,
        "ranks_sha256": RANKS_SHA256,
        "input": "hard_cases.txt",
        "input_sha256": sha256(data),
        "first_invalid_byte": valid,
        "whole_file": enc._encode_bytes(data),
        "lines": [enc._encode_bytes(line) for line in lines],
        "lines_allow_special": lines_allow_special,
        "valid_prefix_allow_special": enc.encode(data[:valid].decode("utf-8"), allowed_special={EOT}),
    }
    # For valid UTF-8 the bytes path must be plain encode_ordinary: a check on the reference.
    assert enc._encode_bytes(data[:valid]) == enc.encode_ordinary(data[:valid].decode("utf-8"))
    text = json.dumps(expected, separators=(",", ":")) + "\n"
    write_atomic(OUT / "hard_cases.expected.json", text.encode())
    print(f"wrote {OUT / 'hard_cases.expected.json'}: {len(expected['whole_file'])} ids for "
          f"{len(data)} bytes, {len(lines)} lines")


def corpus(enc: tiktoken.Encoding, corpus_path: Path) -> None:
    raw = corpus_path.read_bytes()
    ids = enc.encode_ordinary(raw.decode("utf-8"))
    array = np.asarray(ids, dtype="<u2")
    assert int(array.max()) < 65536 and len(array) == len(ids)
    write_atomic(OUT / "kjv.ids.u16le", array.tobytes())
    meta = {
        "generator": "tools/make_tokenizer_fixtures.py",
        "tiktoken_version": tiktoken.__version__,
        "ranks_sha256": RANKS_SHA256,
        "corpus": "data/kjv/kjv.txt",
        "corpus_sha256": sha256(raw),
        "corpus_bytes": len(raw),
        "token_count": len(ids),
        "ids_file": "kjv.ids.u16le",
        "ids_sha256": sha256(array.tobytes()),
    }
    write_atomic(OUT / "kjv.meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    print(f"wrote {OUT / 'kjv.ids.u16le'}: {len(ids)} ids ({array.nbytes} bytes) for {len(raw)} bytes")


def probe_class(enc: tiktoken.Encoding, c: str) -> str:
    """The class of character c under tiktoken's GPT-2 pattern, read from the pieces it makes.

    `encode_with_unstable` returns, first, the tokens of every piece but the last; it is empty
    exactly when the whole probe is one piece. "a"+c is one piece iff c is a letter, "1"+c iff c
    is a number, c+"!" iff c is "other" (for c != " ", which ` ?[^\\s...]` would join to "!")."""
    if c == " ":
        return "W"
    if not enc.encode_with_unstable("a" + c)[0]:
        return "L"
    if not enc.encode_with_unstable("1" + c)[0]:
        return "N"
    if not enc.encode_with_unstable(c + "!")[0]:
        return "O"
    return "W"


def unicode_classes(enc: tiktoken.Encoding) -> None:
    runs: list[list] = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue  # surrogates are not characters; UTF-8 cannot hold them
        cls = probe_class(enc, chr(cp))
        if runs and runs[-1][2] == cls and runs[-1][1] == cp - 1:
            runs[-1][1] = cp
        else:
            runs.append([cp, cp, cls])
    lines = [f"# class of each code point under tiktoken {tiktoken.__version__}'s GPT-2 pattern: "
             "first last class (hex; L letter, N number, W whitespace, O other)"]
    lines += [f"{a:X} {b:X} {c}" for a, b, c in runs]
    write_atomic(OUT / "unicode_classes.txt", ("\n".join(lines) + "\n").encode())
    print(f"wrote {OUT / 'unicode_classes.txt'}: {len(runs)} ranges")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=Path, default=ROOT / "data" / "gpt2.tiktoken")
    parser.add_argument("--hf-dir", type=Path, default=ROOT / "data" / "gpt2-hf")
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "kjv" / "kjv.txt")
    parser.add_argument("--skip-unicode", action="store_true", help="skip the slow (~30 s) code point probe")
    args = parser.parse_args()

    enc = gpt2_encoding(args.ranks)
    check_hf_files(enc, args.hf_dir)
    OUT.mkdir(parents=True, exist_ok=True)
    hard_cases(enc)
    corpus(enc, args.corpus)
    if not args.skip_unicode:
        unicode_classes(enc)


if __name__ == "__main__":
    main()
