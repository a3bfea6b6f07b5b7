#!/usr/bin/env bash
# Produces the demo corpus data/kjv/kjv.txt: the King James Bible from Debian's bible-kjv-text
# package (through its `bible` program), as plain English prose:
#   - one verse per line, the verse reference ("Ge1:1 ", "1Cor13:4 ", ...) stripped;
#   - a blank line between books, so books read as paragraphs of verses.
# The output is deterministic for a given package version (31,102 verses, about 4.1 MB, ASCII).
# Installs bible-kjv with apt-get when the `bible` program is missing. The file is written to a
# temporary name and renamed, so an interrupted run never leaves a half-written corpus.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/data/kjv/kjv.txt"
# SHA-256 of the output made from bible-kjv-text 4.38 (Debian 12). A different package version
# may legitimately give different text; the tokenizer test then says "corpus differs".
expected_sha256=2e2fd01b526102393195e1bb652edbdd491d9427e42fa9f5448d4e68889803ce

if ! command -v bible > /dev/null; then
  echo "installing bible-kjv (the 'bible' program and its text) with apt-get"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q bible-kjv bible-kjv-text
fi

if [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$expected_sha256" ]; then
  echo "ok: $out"
  exit 0
fi

mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT

# `bible -f` prints "Ge1:1 In the beginning ..." (one verse per line when not on a terminal).
# COLUMNS is cleared so that no line wrapping can depend on the caller's terminal.
COLUMNS= bible -f Gen1:1-Rev22:21 | LC_ALL=C awk '
  {
    if (!match($0, /^[1-3]?[A-Z][A-Za-z]*[0-9]+:[0-9]+ /)) {
      printf "error: line %d of bible output has no verse reference: %s\n", NR, $0 > "/dev/stderr"
      exit 1
    }
    ref = substr($0, 1, RLENGTH - 1)
    book = ref; sub(/[0-9]+:[0-9]+$/, "", book)
    if (NR > 1 && book != previous_book) print ""
    previous_book = book
    print substr($0, RLENGTH + 1)
    verses++
  }
  END {
    if (verses != 31102) {
      printf "error: expected 31102 verses from bible, got %d\n", verses > "/dev/stderr"
      exit 1
    }
  }' > "$tmp"

sync "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
got=$(sha256sum "$out" | cut -d' ' -f1)
echo "wrote $out ($(wc -c < "$out") bytes, sha256 $got)"
if [ "$got" != "$expected_sha256" ]; then
  echo "note: this differs from the corpus the committed tokenizer fixtures were made from" \
       "(sha256 $expected_sha256); was bible-kjv-text updated?" >&2
fi
