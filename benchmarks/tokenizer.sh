#!/usr/bin/env bash
# GPT-2 encode throughput, ours vs tiktoken, one thread each, on the same bytes:
#   1. the demo corpus data/kjv/kjv.txt
#   2. the valid UTF-8 part of tests/data/tokenizer/hard_cases.txt, repeated to about 4 MB
#      (tiktoken's str API takes only valid UTF-8; its byte path would turn everything after an
#      invalid byte into one piece, which is no throughput test)
# Both run pinned to the same CPU (when taskset exists); each reports the best of N runs.
#
# Usage: benchmarks/tokenizer.sh [runs]     (BUILD_DIR=build by default; builds the benchmark)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build="${BUILD_DIR:-$root/build}"
runs="${1:-7}"
python="$root/.venv/bin/python"
[ -x "$python" ] || python=python3

for f in "$root/data/gpt2.tiktoken" "$root/data/kjv/kjv.txt"; do
  [ -f "$f" ] || { echo "missing $f: run scripts/fetch_tokenizer.sh and scripts/fetch_corpus.sh" >&2; exit 1; }
done
cmake --build "$build" --target gemma3-tokenizer-bench > /dev/null
bench="$build/bin/gemma3-tokenizer-bench"

pin=()
if command -v taskset > /dev/null; then pin=(taskset -c 0); fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" - "$root/tests/data/tokenizer/hard_cases.txt" "$work/hard_cases_repeated.txt" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
try:
    data.decode("utf-8")
    valid = data
except UnicodeDecodeError as e:
    valid = data[: e.start]
repeated = valid * (4_000_000 // len(valid) + 1)
open(sys.argv[2], "wb").write(repeated)
EOF

printf '%-34s %12s %12s %8s\n' "text" "ours MB/s" "tiktoken" "ratio"
for text in "$root/data/kjv/kjv.txt" "$work/hard_cases_repeated.txt"; do
  ours_output=$(OMP_NUM_THREADS=1 "${pin[@]}" "$bench" --tokenizer "$root/data/gpt2.tiktoken" --text "$text" --runs "$runs")
  theirs_output=$(RAYON_NUM_THREADS=1 "${pin[@]}" "$python" "$root/tools/bench_tiktoken.py" \
                    --ranks "$root/data/gpt2.tiktoken" --text "$text" --runs "$runs")
  ours=$(awk '/^ours_MBps/ {print $2}' <<< "$ours_output")
  theirs=$(awk '/^tiktoken_MBps/ {print $2}' <<< "$theirs_output")
  ours_tokens=$(awk '/^text / {print $(NF-1)}' <<< "$ours_output" | head -1)
  ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN {printf "%.2fx", a / b}')
  printf '%-34s %12s %12s %8s\n' "$(basename "$text")" "$ours" "$theirs" "$ratio"
  grep '^pre-tokenisation' <<< "$ours_output" | sed 's/^/    /'
  grep -q "$ours_tokens tokens" <<< "$theirs_output" || echo "    note: token counts differ: $ours_output / $theirs_output"
done
