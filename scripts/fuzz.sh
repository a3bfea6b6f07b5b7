#!/usr/bin/env bash
# Runs the fuzz harnesses of tests/fuzz/ under libFuzzer (clang, with AddressSanitizer and
# UndefinedBehaviorSanitizer) for a bounded time, and fails on any finding: a crash, a sanitizer
# report, a leak, a broken promise of the harness, an input slower than 30 s, or more than 2 GB.
#
#   scripts/fuzz.sh NAME [SECONDS] [libFuzzer options...]   one harness, SECONDS of fuzzing (60)
#   scripts/fuzz.sh all [SECONDS]                            every harness, SECONDS each (in parallel)
#   scripts/fuzz.sh list                                     the harness names
#   scripts/fuzz.sh build                                    only build every harness
#
# The search corpus grows in build/fuzz/corpus/NAME and is kept between runs; every run also
# starts from the committed seeds (tests/fuzz/corpus/NAME) and the harness's generated seeds. An
# input that breaks something is saved as build/fuzz/crash-NAME-<hash> (or leak-, timeout-, oom-);
# reproduce it with build/fuzz/bin/fuzz_NAME <file>, and once fixed, add it to tests/fuzz/corpus/NAME
# so that ctest keeps checking it. Needs clang++ (Debian: clang, libclang-rt-dev).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
harnesses=(safetensors config tokenizer tokenizer_files token_file checkpoint)
out=${GEMMA3_FUZZ_DIR:-$root/build/fuzz}

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
name=$1
seconds=${2:-60}
shift $(( $# >= 2 ? 2 : 1 ))
[[ $seconds =~ ^[0-9]+$ ]] || usage
if [ "$name" = list ]; then printf '%s\n' "${harnesses[@]}"; exit 0; fi

clangxx=${CLANGXX:-}
if [ -z "$clangxx" ]; then
  for candidate in clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
    if command -v "$candidate" > /dev/null; then clangxx=$candidate; break; fi
  done
fi
[ -n "$clangxx" ] || { echo "fuzz.sh: no clang++ found (Debian: apt-get install clang libclang-rt-dev)" >&2; exit 1; }

# Builds build/fuzz/bin/fuzz_$1 when a header or harness source is newer than it.
build() {
  local harness=$1 binary=$out/bin/fuzz_$1
  local libraries=(-lopenblas)
  case $harness in tokenizer*) libraries+=(-lpcre2-8) ;; esac
  if [ -x "$binary" ] && [ -z "$(find "$root/include" "$root/tests/fuzz" -newer "$binary" -type f -print -quit)" ]; then
    return 0
  fi
  mkdir -p "$out/bin"
  "$clangxx" -std=c++20 -O1 -gline-tables-only -fno-omit-frame-pointer -fopenmp \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -DGEMMA3_LIBFUZZER -DGEMMA3_SOURCE_DIR="\"$root\"" -I"$root/include" -isystem /usr/include/eigen3 \
    "$root/tests/fuzz/fuzz_$harness.cpp" -o "$binary.tmp" "${libraries[@]}"
  mv "$binary.tmp" "$binary"
}

run() {
  local harness=$1
  shift  # the rest are libFuzzer options
  local corpus=$out/corpus/$harness generated=$out/generated/$harness
  mkdir -p "$corpus" "$generated"
  echo "== fuzz_$harness: $seconds s"
  # -max_len: the generated seeds of a megabyte (config) would otherwise make every mutation that
  # large; they run whole in ctest (fuzz_corpus.*).
  local log=$out/log-$harness.txt status=0 max_len=16384
  # Each input is encoded several times over: shorter texts give many more executions.
  [ "$harness" != tokenizer ] || max_len=4096
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
  GEMMA3_FUZZ_SEED_DIR=$generated OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
    "$out/bin/fuzz_$harness" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -max_len="$max_len" \
      -dict="$root/tests/fuzz/$harness.dict" -artifact_prefix="$out/crash-$harness-" -print_final_stats=1 \
      "$@" "$corpus" "$generated" "$root/tests/fuzz/corpus/$harness" > "$log" 2>&1 || status=$?
  if [ "$status" -eq 0 ]; then
    grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|Done [0-9]+ runs|stat::(number_of_executed_units|peak_rss_mb))' "$log" || true
  else
    tail -n 60 "$log"  # the report: sanitizer or harness message, stack, saved input
  fi
  return "$status"
}

if [ "$name" = all ] || [ "$name" = build ]; then
  selected=("${harnesses[@]}")
else
  [[ " ${harnesses[*]} " == *" $name "* ]] || { echo "fuzz.sh: no harness '$name' (one of: ${harnesses[*]})" >&2; exit 2; }
  selected=("$name")
fi
# Build in parallel (clang with sanitizers is slow), then fuzz GEMMA3_FUZZ_JOBS harnesses at a time
# (the number of cores by default): each runs on one thread, so on two cores "all 40" takes about
# two minutes rather than four.
pids=()
for harness in "${selected[@]}"; do build "$harness" & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid"; done
[ "$name" != build ] || exit 0
jobs=${GEMMA3_FUZZ_JOBS:-$(nproc)}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: GEMMA3_FUZZ_JOBS must be a positive integer, not '$jobs'" >&2; exit 2; }
status=0
running=() running_pids=()
finish_running() {  # waits for the harnesses under way and prints their summaries in order
  local i
  for i in "${!running[@]}"; do
    local harness=${running[$i]} harness_status=0
    wait "${running_pids[$i]}" || harness_status=$?
    cat "$out/summary-$harness.txt"
    if [ "$harness_status" -ne 0 ]; then
      status=$harness_status
      echo "fuzz.sh: fuzz_$harness found a problem (see above; input saved under $out/crash-$harness-*)" >&2
    fi
  done
  running=() running_pids=()
}
for harness in "${selected[@]}"; do
  run "$harness" "$@" > "$out/summary-$harness.txt" 2>&1 &
  running+=("$harness") running_pids+=($!)
  [ "${#running[@]}" -lt "$jobs" ] || finish_running
done
finish_running
exit "$status"
