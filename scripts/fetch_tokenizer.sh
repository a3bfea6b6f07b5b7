#!/usr/bin/env bash
# Obtains GPT-2's BPE files from the PyPI package openai-whisper (which ships them as package
# data), without installing the package, and verifies them against committed SHA-256 sums:
#
#   data/gpt2.tiktoken        GPT-2's ranks in tiktoken format (openai-whisper 20250625,
#                             whisper/assets/gpt2.tiktoken). Its SHA-256 is also the one tiktoken
#                             itself pins for OpenAI's r50k_base.tiktoken, the GPT-2 ranks.
#   data/gpt2-hf/vocab.json   GPT-2's Hugging Face format files (openai-whisper 20230124, the last
#   data/gpt2-hf/merges.txt   release that shipped whisper/assets/gpt2/{vocab.json,merges.txt}).
#
# Idempotent: files that are already present with the right checksum are left alone. Nothing is
# written in place: each file is verified in a temporary directory, then renamed into data/.
#
# Usage: scripts/fetch_tokenizer.sh            (run from anywhere; uses .venv/bin/python if present)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
data="$root/data"

tiktoken_version=20250625
tiktoken_sha256=306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930
hf_version=20230124
vocab_sha256=3ba3c3109ff33976c4bd966589c11ee14fcaa1f4c9e5e154c2ed7f99d80709e7
merges_sha256=fe36cab26d4f4421ed725e10a2e9ddb7f799449c603a96e7f29b5a3c82a95862

if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# is_ok <file> <sha256>: the file exists and has the expected checksum.
is_ok() { [ -f "$1" ] && [ "$(sha_of "$1")" = "$2" ]; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# download <version>: prints the path of the downloaded openai-whisper distribution.
download() {
  local version=$1 dest="$work/dist-$1"
  mkdir -p "$dest"
  # The old sdists run a setup.py that imports pkg_resources, which current setuptools no
  # longer ships; pin an older setuptools for pip's metadata step (nothing is installed).
  printf 'setuptools<70\n' > "$work/constraints.txt"
  PIP_CONSTRAINT="$work/constraints.txt" "$python" -m pip download --quiet --no-deps \
    --disable-pip-version-check "openai-whisper==$version" -d "$dest" >&2 || {
      echo "error: 'pip download openai-whisper==$version' failed (is PyPI reachable?)" >&2
      return 1
    }
  local files=("$dest"/*)
  [ -f "${files[0]}" ] || { echo "error: pip downloaded nothing for openai-whisper==$version" >&2; return 1; }
  echo "${files[0]}"
}

# extract <archive> <member suffix> <output>: copies one member of an sdist or wheel.
extract() {
  "$python" - "$1" "$2" "$3" <<'EOF'
import sys, tarfile, zipfile
archive, suffix, out = sys.argv[1:]
if archive.endswith(".whl") or archive.endswith(".zip"):
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if n.endswith(suffix)]
        data = z.read(names[0]) if names else None
else:
    with tarfile.open(archive) as t:
        members = [m for m in t.getmembers() if m.isfile() and m.name.endswith(suffix)]
        data = t.extractfile(members[0]).read() if members else None
if data is None:
    sys.exit(f"error: {archive} has no member ending in {suffix}")
with open(out, "wb") as f:
    f.write(data)
EOF
}

# install <tmp file> <sha256> <destination>: verify, then atomically move into place.
install_verified() {
  local got
  got=$(sha_of "$1")
  if [ "$got" != "$2" ]; then
    echo "error: $(basename "$3") from openai-whisper has SHA-256 $got, expected $2" >&2
    return 1
  fi
  mkdir -p "$(dirname "$3")"
  cp "$1" "$3.tmp.$$"
  sync "$3.tmp.$$"
  mv -f "$3.tmp.$$" "$3"
  echo "wrote $3 (sha256 $2)"
}

if is_ok "$data/gpt2.tiktoken" "$tiktoken_sha256"; then
  echo "ok: $data/gpt2.tiktoken"
else
  [ -e "$data/gpt2.tiktoken" ] && echo "replacing $data/gpt2.tiktoken (checksum differs)"
  archive=$(download "$tiktoken_version")
  extract "$archive" whisper/assets/gpt2.tiktoken "$work/gpt2.tiktoken"
  install_verified "$work/gpt2.tiktoken" "$tiktoken_sha256" "$data/gpt2.tiktoken"
fi

if is_ok "$data/gpt2-hf/vocab.json" "$vocab_sha256" && is_ok "$data/gpt2-hf/merges.txt" "$merges_sha256"; then
  echo "ok: $data/gpt2-hf/vocab.json, $data/gpt2-hf/merges.txt"
else
  archive=$(download "$hf_version")
  extract "$archive" whisper/assets/gpt2/vocab.json "$work/vocab.json"
  extract "$archive" whisper/assets/gpt2/merges.txt "$work/merges.txt"
  install_verified "$work/vocab.json" "$vocab_sha256" "$data/gpt2-hf/vocab.json"
  install_verified "$work/merges.txt" "$merges_sha256" "$data/gpt2-hf/merges.txt"
fi
