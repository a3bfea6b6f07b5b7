#!/usr/bin/env python3
"""gemma3 against PyTorch on this machine, in one run, with the machine's own limits.

  tools/setup_python.sh && .venv/bin/python benchmarks/compare.py [--config seed] [--batch 4 --seq 128]

Measures, each in its own process (so peak memory is per measurement):
  - this machine's limits: sgemm GFLOP/s at the model's matrix shapes, copy bandwidth, and the peak
    rates of the fp32 FMA and bf16 dot-product instructions (build/bin/gemma3-bench --mode limits);
  - training steps (forward + backward + AdamW) and forward passes of the same model, batch and
    thread count: gemma3 (build/bin/gemma3-bench) in fp32 and bf16 mixed precision (Cpu<bf16>), the
    current PyPI torch (.venv) in fp32, bf16 autocast and bf16 autocast + torch.compile (and, for the
    forward, the model cast to bf16), and Debian's torch 1.13 (/usr/bin/python3, package
    python3-torch) when installed. Our bf16 forward runs on weights that are bf16 values, as a bf16
    checkpoint gives them (Cpu<bf16> then reads them in place), our bf16 training step on fp32 master
    weights;
  - decoding one sequence after a --seq-token prompt: gemma3's KV cache with its weight matrices in
    fp32, bf16 and blockwise int8 (gemma3-bench --weights), against transformers' generate with its
    cache; a decode row's roofline is the copy bandwidth over the weight bytes it reads per token;
  - with --llama-cpp DIR, llama.cpp's llama-bench on GGUFs of the same architecture (F32, BF16, Q8_0):
    prompt processing of batch x seq tokens, and 64 tokens decoded after seq (benchmarks/llama_cpp.py);
  - with --baseline-bench PATH, a gemma3-bench built from an earlier commit, in fp32 (training, forward,
    decode), with OPENBLAS_CORETYPE=Haswell, the environment the CPU issue measured "today" in: commit
    7ee89d6, before oneDNN, multiplied with OpenBLAS. Each fp32 row of ours then gets its ratio to it.
    To build it (a few minutes):
      git worktree add /tmp/gemma3-7ee89d6 7ee89d6
      cmake -S /tmp/gemma3-7ee89d6 -B /tmp/gemma3-7ee89d6/build -G Ninja -DCMAKE_BUILD_TYPE=Release \
            -DGEMMA3_CUDA=OFF -DGEMMA3_BUILD_TESTS=OFF
      cmake --build /tmp/gemma3-7ee89d6/build --target gemma3-bench
Each at one thread pinned to core 0 (taskset -c 0) and at two threads (--threads). PyTorch gets the
tuning docs/design.md §4 recommends: torch.set_num_threads(n), OMP_WAIT_POLICY=PASSIVE.
Prints a table per thread count: tokens/s, GFLOP/s, fraction of the roofline (the GEMM rate of the
row's precision), ratio to the best PyTorch, ratio to llama.cpp in the same precision (F32 for
float32, BF16 for bfloat16 and bf16 weights, Q8_0 for int8 weights), peak RSS; and the GEMM engine
with its instruction set.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def flops_per_token(cfg, seq):
    """Training FLOPs per token (gemma3-info's formula): 6 x matrix parameters + attention."""
    d, h, kv, hd, f, v = cfg["dim"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["ffn"], cfg["vocab"]
    matrices = cfg["layers"] * (h * hd * d + 2 * kv * hd * d + d * h * hd + 3 * f * d) + v * d
    attention = 0.0
    for i in range(cfg["layers"]):
        from torch_gemma3 import full_layer
        window = seq if full_layer(cfg, i) else cfg["window"]
        keys = sum(min(t + 1, window) for t in range(seq)) / seq
        attention += 12.0 * h * hd * keys
    return 6.0 * matrices + attention


def decode_bytes(cfg):
    d, h, kv, hd, f, v = cfg["dim"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["ffn"], cfg["vocab"]
    matrices = cfg["layers"] * (h * hd * d + 2 * kv * hd * d + d * h * hd + 3 * f * d) + v * d
    return 4.0 * matrices


def run(cmd, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return None, (out.stderr or out.stdout).strip().splitlines()[-1:] or ["failed"]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return rows[-1] if rows else None, None


BASELINE = "gemma3 fp32, baseline build"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="seed", choices=["seed", "demo", "tiny"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bench", default=os.path.join(ROOT, "build", "bin", "gemma3-bench"))
    p.add_argument("--debian-python", default="/usr/bin/python3")
    p.add_argument("--threads", default="1,2", help="thread counts to measure; 1 is pinned to core 0 (taskset)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it compiles for minutes)")
    p.add_argument("--baseline-bench", metavar="PATH",
                   help="a gemma3-bench of an earlier commit (fp32 only), run with OPENBLAS_CORETYPE=Haswell; "
                        "our fp32 rows show their ratio to it (see above)")
    p.add_argument("--llama-cpp", metavar="DIR",
                   help="also measure llama.cpp's llama-bench (DIR: a llama.cpp source tree built with it; "
                        "see benchmarks/llama_cpp.py)")
    a = p.parse_args()
    from torch_gemma3 import CONFIGS
    cfg = CONFIGS[a.config]
    if not os.path.exists(a.bench):
        sys.exit(f"{a.bench} not found: build it with  cmake --build build --target gemma3-bench")
    if a.baseline_bench and not os.access(a.baseline_bench, os.X_OK):
        sys.exit(f"--baseline-bench {a.baseline_bench}: not an executable (see --help for how to build one)")
    common = ["--config", a.config, "--batch", str(a.batch), "--seq", str(a.seq), "--repeats", str(a.repeats)]
    script = os.path.join(ROOT, "benchmarks", "torch_gemma3.py")
    pythons = [("torch (PyPI)", sys.executable)]
    probe = subprocess.run([a.debian_python, "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pythons.append(("torch (Debian)", a.debian_python))
    fpt = flops_per_token(cfg, a.seq)
    for threads in [int(t) for t in a.threads.split(",")]:
        # One thread pinned to one core (ratios that survive a busy second core), or all threads
        # unpinned. PyTorch gets the tuning docs/design.md §4 recommends: OMP_WAIT_POLICY=PASSIVE.
        pin = ["taskset", "-c", "0"] if threads == 1 else []
        ours_env = {"OMP_NUM_THREADS": str(threads)}
        torch_env = {"OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
        print(f"config {a.config}, batch {a.batch} x {a.seq}, {threads} thread(s){' pinned' if pin else ''}; measuring...",
              file=sys.stderr, flush=True)
        limits, err = run(pin + [a.bench, "--mode", "limits"] + common, ours_env)
        if limits is None:
            sys.exit(f"gemma3-bench --mode limits failed: {err}")
        results = {}
        for mode in ["train", "forward"]:
            for dtype in ["float32", "bfloat16"]:
                name = f"gemma3 {dtype}" + (", bf16 weights" if (mode, dtype) == ("forward", "bfloat16") else "")
                results[(mode, name)] = run(pin + [a.bench, "--mode", mode, "--dtype", dtype] + common, ours_env)
        # Decoding with the weight matrices in fp32, bf16 and blockwise int8 (activations fp32 throughout).
        for weights in ["f32", "bf16", "int8"]:
            results[("decode", f"gemma3 {weights} weights")] = run(
                pin + [a.bench, "--mode", "decode", "--weights", weights] + common, ours_env)
        if a.baseline_bench:
            baseline_env = dict(ours_env, OPENBLAS_CORETYPE="Haswell")
            for mode in ["train", "forward", "decode"]:
                results[(mode, BASELINE)] = run(pin + [a.baseline_bench, "--mode", mode] + common, baseline_env)
        torch_common = common + ["--threads", str(threads)]
        for name, py in pythons:
            variants = [("", [])]
            if name == "torch (PyPI)":
                variants += [(" bf16 autocast", ["--autocast"])]
                if not a.no_compile:
                    variants += [(" bf16 autocast+compile", ["--autocast", "--compile"])]
            for mode in ["train", "forward"]:
                for suffix, flags in variants:
                    results[(mode, name + suffix)] = run(pin + [py, script, "--mode", mode] + torch_common + flags, torch_env)
            if name == "torch (PyPI)":  # pure bf16 inference: the forward our bf16 row runs, bf16 weights
                results[("forward", name + " bf16 weights")] = run(
                    pin + [py, script, "--mode", "forward", "--bf16-weights"] + torch_common, torch_env)
        results[("decode", "transformers generate")] = run(pin + [sys.executable, script, "--mode", "hf-decode"] + torch_common,
                                                           torch_env)
        if a.llama_cpp:
            import llama_cpp
            try:
                for row in llama_cpp.measure(a.llama_cpp, a.config, threads, pin, a.batch * a.seq, a.seq, 64, 3,
                                             sys.executable, os.path.join(ROOT, "data", "gpt2-hf")):
                    fmt = row["format"].lower()
                    if row["mode"] == "decode":  # bytes of weights per token, for the roofline
                        row["weight_bytes_per_token"] = decode_bytes(cfg) * {"f32": 1, "bf16": 0.5, "q8_0": 34 / 128}[fmt]
                    results[(row["mode"], f"llama.cpp {fmt} ({row['test']})")] = (row, None)
            except (RuntimeError, subprocess.CalledProcessError) as e:
                results[("forward", "llama.cpp")] = (None, [str(e)])

        def roofline(mode, name, row):
            gemm = limits["bf16_gemm_gflops"] if ("bf16" in name or "bfloat16" in name) else limits["sgemm_gflops"]
            if mode == "decode":
                # Copy bandwidth over the weight bytes the row reads per token.
                return limits["copy_gbps"] * 1e9 / row.get("weight_bytes_per_token", decode_bytes(cfg))
            return gemm * 1e9 / (fpt if mode == "train" else fpt / 3)

        print(f"\n{threads} thread(s){' pinned to core 0' if pin else ''}; GEMM engine: {limits.get('gemm_engine', '?')}")
        print(f"machine: GEMM {limits['sgemm_gflops']:.0f} GFLOP/s fp32, {limits['bf16_gemm_gflops']:.0f} GFLOP/s bf16 inputs "
              f"at the model's shapes, copy {limits['copy_gbps']:.1f} GB/s")
        peak = {k: limits.get(k) for k in ("fp32_fma_gflops", "bf16_dot_gflops")}
        if peak["fp32_fma_gflops"]:  # absent on CPUs without AVX-512 (and from older builds)
            bf16_dot = f"{peak['bf16_dot_gflops']:.0f}" if peak["bf16_dot_gflops"] else "none"
            print(f"instruction peaks: fp32 FMA {peak['fp32_fma_gflops']:.0f} GFLOP/s, bf16 dot product (avx512_bf16) "
                  f"{bf16_dot} GFLOP/s")
        print(f"{'':9}{'':40}{'tokens/s':>10}{'GFLOP/s':>9}{'roofline':>10}{'vs best PyTorch':>17}{'vs llama.cpp':>19}"
              f"{'peak RSS':>11}")
        for mode in ["train", "forward", "decode"]:
            rows = [(k[1], v) for k, v in results.items() if k[0] == mode]

            def best(prefix):
                return max((r[0]["tokens_per_s"] for n, r in rows if n.startswith(prefix) and r[0]), default=None)
            best_torch = max(filter(None, [best("torch"), best("transformers")]), default=None)

            def llama_same_precision(name):  # llama.cpp in the row's precision: f32, bf16, or Q8_0 for int8
                precision = ("f32" if ("float32" in name or "f32" in name) else "bf16" if ("bfloat16" in name or "bf16" in name)
                             else "q8_0" if "int8" in name else None)
                return best(f"llama.cpp {precision} ") if precision else None
            for name, (row, err) in rows:
                if row is None:
                    print(f"{mode:9}{name:40}  failed: {err}")
                    continue
                tps = row["tokens_per_s"]
                gf = tps * (fpt if mode == "train" else fpt / 3) / 1e9 if mode != "decode" else float("nan")
                mine = name.startswith("gemma3")
                vs_torch = f"{tps / best_torch:.2f}x" if (best_torch and mine) else ""
                same = llama_same_precision(name) if mine else None
                vs_llama = f"{tps / same:.2f}x" if same else ""
                rss = f"{row['peak_rss_mib']:.0f} MiB"
                gf_text = f"{gf:9.1f}" if mode != "decode" else f"{'':>9}"
                print(f"{mode:9}{name:40}{tps:10.1f}{gf_text}{tps / roofline(mode, name, row):9.0%} {vs_torch:>16}"
                      f"{vs_llama:>19}{rss:>11}")
        if a.baseline_bench:
            ratios = []
            for mode, ours in [("train", "gemma3 float32"), ("forward", "gemma3 float32"), ("decode", "gemma3 f32 weights")]:
                base, now = results.get((mode, BASELINE), (None, None))[0], results.get((mode, ours), (None, None))[0]
                if base and now:
                    ratios.append(f"{mode} {now['tokens_per_s'] / base['tokens_per_s']:.2f}x")
            print(f"fp32 against the baseline build ({a.baseline_bench}, OPENBLAS_CORETYPE=Haswell): " +
                  (", ".join(ratios) or "not measured"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
