#!/usr/bin/env bash
# The README's test command: on a fresh machine, installs what is missing, builds everything and
# runs every test — a Release build, the same tests under AddressSanitizer + UndefinedBehavior-
# Sanitizer, libFuzzer on every fuzz harness for a bounded time (GEMMA3_FUZZ_SECONDS each, 40 by
# default), and a downstream project built against an installed copy of the library.
# Exits non-zero as soon as anything fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jobs=$(nproc)
started=$SECONDS step_started=$SECONDS
# Each step's banner says how long the one before took, so a CI log shows where the time goes.
step() {
  printf '\n==== %s (previous step %d s, %d s in all) ====\n' "$*" $((SECONDS - step_started)) $((SECONDS - started))
  step_started=$SECONDS
}

step "dependencies"
scripts/install_deps.sh
scripts/fetch_tokenizer.sh
scripts/fetch_corpus.sh

step "release build"
# CUDA device code for sm_80 and sm_90 (the default): nothing can run it here, so this build proves
# that the kernels compile for both, warning-free and without register spills.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="80;90"
cmake --build build -j "$jobs"

step "tests"
ctest --test-dir build --output-on-failure

step "a checkpoint's tokenizer in transformers (no torch)"
# A fresh gemma3-train checkpoint of a GPT-2-vocabulary model (two iterations of the demo config)
# must load in AutoTokenizer and encode the hard cases like gemma3-tokenize. transformers and
# tokenizers go into a venv of their own in build/ (transformers does not depend on torch).
hf_venv=build/hf-tokenizer-venv
if [ ! -x "$hf_venv/bin/python" ]; then python3 -m venv "$hf_venv"; fi
"$hf_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tools/requirements-tokenizer-check.txt
hf_run=build/hf-tokenizer-check
rm -rf "$hf_run"
mkdir -p "$hf_run/data"
build/bin/gemma3-prepare tests/data/tokenizer/unicode_classes.txt --out-dir "$hf_run/data" --chunk-tokens 512 --quiet
build/bin/gemma3-train --model-config config/demo_model_config.json --training-config config/demo_training_config.json \
  --data-dir "$hf_run/data" --out-dir "$hf_run/out" --max-iters 2 --warmup-steps 1 --eval-iters 2 --eval-batches 1 \
  --batch-size 1 --block-size 16 > "$hf_run/train.log"
"$hf_venv/bin/python" tools/check_hf_tokenizer.py "$hf_run/out/latest" tests/data/tokenizer/hard_cases.txt \
  tests/data/tokenizer/unicode_classes.txt --gemma3-tokenize build/bin/gemma3-tokenize

step "tests under AddressSanitizer + UndefinedBehaviorSanitizer"
# The CUDA kernels run here through the emulator (host code, sanitized); the nvcc device build is
# the release build's job. What keeps this stage to minutes (each measured on a test file, see
# docs/design.md §5):
#  - -O1 -g1 (line tables only), as AddressSanitizer recommends: less than half the compile time of
#    -O2 -g, and the reports keep their file:line stacks;
#  - five UndefinedBehaviorSanitizer checks left out, which together cost as much compile time as
#    all the others: alignment (the parsers of file bytes, the only source of a misaligned typed
#    pointer, run under clang's full UBSan in the fuzzing step below, committed corpora included),
#    null, object-size and pointer-overflow (AddressSanitizer reports the accesses they
#    approximate), vptr (no virtual dispatch in the library);
#  - only what the tests run is built: GEMMA3_SANITIZE leaves the programs no test runs out of
#    "all", and gemma3-train holds only the architecture the tests train (Gemma3Tiny), not four;
#  - the tests run two at a time on one OpenMP thread each: the sanitizers look at memory, which the
#    thread count does not change, and the release stage above runs every test with all threads.
cmake -S . -B build/sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
  -DGEMMA3_SANITIZE=ON -DGEMMA3_SANITIZE_EXCLUDE=alignment,null,object-size,pointer-overflow,vptr \
  -DGEMMA3_BUILD_BENCHMARKS=OFF -DGEMMA3_CUDA=OFF \
  -DGEMMA3_PROGRAM_SHIPPED_CONFIGS=Gemma3Tiny -DGEMMA3_TRAINER_CONFIGS=
cmake --build build/sanitize -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 OMP_NUM_THREADS=1 \
  ctest --test-dir build/sanitize --output-on-failure -j "$jobs"

step "fuzzing: each harness of tests/fuzz under libFuzzer for ${GEMMA3_FUZZ_SECONDS:=40} s"
# The corpora already ran as tests above; this searches for new inputs for a bounded time and fails
# on any finding. scripts/fuzz.sh NAME SECONDS runs one harness longer.
if command -v clang++ > /dev/null; then
  scripts/fuzz.sh all "$GEMMA3_FUZZ_SECONDS"
else
  echo "no clang++ (Debian: clang libclang-rt-dev): fuzzing skipped"
fi

step "downstream project against an installed copy"
rm -rf build/install build/downstream build/downstream-core
cmake --install build --prefix build/install
cmake -S examples/downstream -B build/downstream -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$root/build/install"
cmake --build build/downstream -j "$jobs"
build/downstream/downstream
build/downstream/downstream_tokenizer
# The README's minimal trainer and generator: train, save, load the checkpoint back, generate.
build/downstream/train build/downstream/small_model
build/downstream/generate build/downstream/small_model
# The same project without the tokenizer component: the core needs no PCRE2.
cmake -S examples/downstream -B build/downstream-core -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$root/build/install" -DDOWNSTREAM_WITH_TOKENIZER=OFF
cmake --build build/downstream-core -j "$jobs"
build/downstream-core/downstream

step "all tests passed"
