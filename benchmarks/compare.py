#!/usr/bin/env python3
"""gemma3 against PyTorch on this machine, in one run, with the machine's own limits.

  tools/setup_python.sh && .venv/bin/python benchmarks/compare.py [--config seed] [--batch 4 --seq 128]

Measures, each in its own process (so peak memory is per measurement):
  - this machine's limits: sgemm GFLOP/s at the model's matrix shapes and copy bandwidth
    (build/bin/gemma3-bench --mode limits);
  - training steps (forward + backward + AdamW) and forward passes of the same model, batch and
    thread count: gemma3 (build/bin/gemma3-bench), the current PyPI torch (.venv), and Debian's torch
    1.13 (/usr/bin/python3, package python3-torch) when installed;
  - decoding one sequence after a --seq-token prompt: gemma3's KV cache against transformers'
    generate with its cache.
PyTorch gets the tuning docs/design.md §4 recommends: torch.set_num_threads(2), OMP_WAIT_POLICY=PASSIVE.
Prints a table: tokens/s, GFLOP/s, fraction of the roofline, ratio to the best PyTorch, peak RSS.
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="seed", choices=["seed", "demo", "tiny"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bench", default=os.path.join(ROOT, "build", "bin", "gemma3-bench"))
    p.add_argument("--debian-python", default="/usr/bin/python3")
    a = p.parse_args()
    from torch_gemma3 import CONFIGS
    cfg = CONFIGS[a.config]
    if not os.path.exists(a.bench):
        sys.exit(f"{a.bench} not found: build it with  cmake --build build --target gemma3-bench")
    common = ["--config", a.config, "--batch", str(a.batch), "--seq", str(a.seq), "--repeats", str(a.repeats)]
    # Both cores of the reference machine for everyone: gemma3 (OpenMP + OpenBLAS) and torch alike.
    ours_env = {"OMP_NUM_THREADS": "2"}
    torch_env = {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    script = os.path.join(ROOT, "benchmarks", "torch_gemma3.py")
    pythons = [("torch (PyPI)", sys.executable)]
    probe = subprocess.run([a.debian_python, "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pythons.append(("torch (Debian)", a.debian_python))

    print(f"config {a.config}, batch {a.batch} x {a.seq}, 2 threads; measuring...", file=sys.stderr, flush=True)
    limits, err = run([a.bench, "--mode", "limits"] + common, ours_env)
    if limits is None:
        sys.exit(f"gemma3-bench --mode limits failed: {err}")
    results = {}
    for mode in ["train", "forward", "decode"]:
        results[(mode, "gemma3")] = run([a.bench, "--mode", mode] + common, ours_env)
    for name, py in pythons:
        for mode in ["train", "forward"]:
            results[(mode, name)] = run([py, script, "--mode", mode] + common, torch_env)
    results[("decode", "transformers generate")] = run([sys.executable, script, "--mode", "hf-decode"] + common, torch_env)

    fpt = flops_per_token(cfg, a.seq)
    roof = {"train": limits["sgemm_gflops"] * 1e9 / fpt, "forward": limits["sgemm_gflops"] * 1e9 / (fpt / 3),
            "decode": limits["copy_gbps"] * 1e9 / decode_bytes(cfg)}
    print(f"\nmachine: sgemm {limits['sgemm_gflops']:.0f} GFLOP/s at the model's shapes, copy {limits['copy_gbps']:.1f} GB/s"
          f" -> rooflines: train {roof['train']:.0f}, forward {roof['forward']:.0f}, decode {roof['decode']:.1f} tokens/s")
    print(f"{'':9}{'':24}{'tokens/s':>10}{'GFLOP/s':>9}{'roofline':>10}{'vs PyTorch':>12}{'peak RSS':>11}")
    for mode in ["train", "forward", "decode"]:
        rows = [(k[1], v) for k, v in results.items() if k[0] == mode]
        best = max((r[0]["tokens_per_s"] for n, r in rows if n != "gemma3" and r[0]), default=None)
        for name, (row, err) in rows:
            if row is None:
                print(f"{mode:9}{name:24}  failed: {err}")
                continue
            tps = row["tokens_per_s"]
            gf = tps * (fpt if mode == "train" else fpt / 3) / 1e9 if mode != "decode" else float("nan")
            ratio = f"{tps / best:.2f}x" if (best and name == "gemma3") else ""
            rss = f"{row['peak_rss_mib']:.0f} MiB"
            gf_text = f"{gf:9.1f}" if mode != "decode" else f"{'':>9}"
            print(f"{mode:9}{name:24}{tps:10.1f}{gf_text}{tps / roof[mode]:9.0%} {ratio:>11}{rss:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
