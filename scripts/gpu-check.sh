#!/usr/bin/env bash
# What the CPU emulator cannot show, checked on a real GPU in one command:
#   1. builds the CUDA back end (nvcc, sm_80 and sm_90, warnings as errors, ptxas reports kept);
#   2. runs the kernel and model tests on the device: the same test binaries CI runs on the emulator,
#      their "[device]" cases, against the same CPU references and bounds;
#   3. checks the ptxas reports for register spills;
#   4. benchmarks training of the seed config and prints tokens/s, MFU and peak device memory;
#   5. times generation of the seed config (cuda::Generator: prefill, then single-token decoding
#      with the logits sampled on the host) and prints prefill and decode tokens/s.
#
#   scripts/gpu-check.sh [--build-dir DIR] [-- benchmark options, e.g. --batch=32 --seq=128 --steps=20]
#
# Environment: CUDA_ARCHITECTURES (default "80;90"; "native" builds for this GPU only).
# Exit status: non-zero if the build, a device test or the spill check fails.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-gpu"
bench_args=()
while (($#)); do
    case "$1" in
        --build-dir) build=$2; shift 2 ;;
        --build-dir=*) build=${1#*=}; shift ;;
        --) shift; bench_args=("$@"); break ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "gpu-check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

command -v nvcc > /dev/null || { echo "gpu-check.sh: nvcc not found; put the CUDA toolkit's bin/ on PATH" >&2; exit 1; }
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/GPU: /'
else
    echo "gpu-check.sh: nvidia-smi not found; the device tests will say whether a GPU is usable"
fi

generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
mkdir -p "$build"
echo "== build ($build; logs: configure.log, build.log)"
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DGEMMA3_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES:-80;90}" > "$build/configure.log" 2>&1 ||
    { tail -n 40 "$build/configure.log" >&2; exit 1; }
grep -E 'gemma3: (CUDA|NCCL)' "$build/configure.log" || true
# Everything: the ptxas checks below cover every target with device code (tests, gemma3-train, bench).
cmake --build "$build" -j "$(nproc)" > "$build/build.log" 2>&1 || { grep -E 'error|FAILED' -A5 "$build/build.log" | head -n 60 >&2; exit 1; }

status=0
echo
echo "== device tests (GEMMA3_CUDA_BACKEND=device)"
for t in test_cuda test_cuda_ops test_cuda_model test_cuda_trainer; do
    if GEMMA3_CUDA_BACKEND=device "$build/tests/$t" > "$build/$t.device.log" 2>&1; then
        echo "$t: passed ($(grep -c 'MESSAGE' "$build/$t.device.log" || true) measured errors in $build/$t.device.log)"
    else
        echo "$t: FAILED (see $build/$t.device.log)"
        tail -n 40 "$build/$t.device.log"
        status=1
    fi
done

if [ -x "$build/tests/test_cuda_trainer_mpi" ]; then  # built when MPI was found: 2 ranks on this GPU
    if GEMMA3_CUDA_BACKEND=device ctest --test-dir "$build" -R '^test_cuda_trainer_mpi$' --output-on-failure \
        > "$build/test_cuda_trainer_mpi.device.log" 2>&1; then
        echo "test_cuda_trainer_mpi: passed ($build/test_cuda_trainer_mpi.device.log)"
    else
        echo "test_cuda_trainer_mpi: FAILED (see $build/test_cuda_trainer_mpi.device.log)"
        tail -n 40 "$build/test_cuda_trainer_mpi.device.log"
        status=1
    fi
fi

echo
echo "== register spills (ptxas -v, sm_80 and sm_90)"
if ctest --test-dir "$build" -R 'ptxas' --output-on-failure > "$build/ptxas.log" 2>&1; then
    echo "no kernel spills (report: $build/ptxas.log)"
else
    grep -E 'SPILLS|Failed' "$build/ptxas.log" || true
    status=1
fi

echo
echo "== seed-config training benchmark"
"$build/bin/gemma3-gpu-train-bench" "${bench_args[@]}" || status=1

echo
echo "== seed-config generation benchmark (prompt 128, 256 new tokens)"
"$build/bin/gemma3-gpu-generate-bench" --prompt=128 --new-tokens=256 --runs=3 || status=1
exit $status
