#!/usr/bin/env python3
"""llama.cpp's side of benchmarks/compare.py: its llama-bench on the same architecture.

llama.cpp is a benchmark aid here, never a dependency: give compare.py the folder of a llama.cpp
source tree built with its llama-bench target (`--llama-cpp DIR`; DIR/build/bin/llama-bench and
DIR/convert_hf_to_gguf.py). Its source reaches a machine without GitHub inside the PyPI sdist of
llama-cpp-python (`pip download --no-deps --no-binary :all: llama-cpp-python`, folder
vendor/llama.cpp), and builds CPU-only:

  cmake -S DIR -B DIR/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
  ninja -C DIR/build llama-bench

The model: torch_gemma3.py --mode save-hf writes a randomly initialised Hugging Face directory of the
config (GPT-2 tokenizer files included), which llama.cpp's own converter turns into F32, BF16 and
Q8_0 GGUFs, cached under build/bench/llama.cpp/. Measured per format, as gemma3-bench's forward and
decode modes are: prompt processing of batch x seq tokens (llama-bench pp: one causal sequence of
that length, where gemma3-bench runs `batch` sequences of `seq`), and decoding 64 tokens after a
prompt of seq tokens (llama-bench tg with --n-depth).
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ["f32", "bf16", "q8_0"]


def ggufs(llama_dir, config, python, tokenizer_dir):
    """The config's GGUF files by format, converted once and cached."""
    work = os.path.join(ROOT, "build", "bench", "llama.cpp")
    hf_dir = os.path.join(work, f"{config}-hf")
    out = {f: os.path.join(work, f"{config}-{f}.gguf") for f in FORMATS}
    if all(os.path.exists(p) for p in out.values()):
        return out
    os.makedirs(work, exist_ok=True)
    if not os.path.exists(os.path.join(hf_dir, "model.safetensors")):
        subprocess.run([python, os.path.join(ROOT, "benchmarks", "torch_gemma3.py"), "--config", config, "--mode", "save-hf",
                        "--out", hf_dir, "--tokenizer-dir", tokenizer_dir], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=os.path.join(llama_dir, "gguf-py"))
    for fmt, path in out.items():
        if not os.path.exists(path):
            partial = path + ".partial"
            subprocess.run([python, os.path.join(llama_dir, "convert_hf_to_gguf.py"), hf_dir, "--outfile", partial,
                            "--outtype", fmt], check=True, capture_output=True, env=env)
            os.replace(partial, path)  # a half-written file is never taken for a model
    return out


def run_bench(cmd):
    """Runs llama-bench; returns (its JSON results, that process's peak RSS in MiB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        lines = (stderr or stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else "llama-bench failed")
    return json.loads(stdout), usage.ru_maxrss / 1024


def measure(llama_dir, config, threads, pin, prompt_tokens, depth, decode_tokens, repeats, python, tokenizer_dir):
    """Rows like gemma3-bench's JSON: mode, name, tokens_per_s, weight format."""
    bench = os.path.join(llama_dir, "build", "bin", "llama-bench")
    if not os.path.exists(bench):
        raise RuntimeError(f"{bench} not found: build llama.cpp's llama-bench target first")
    rows = []
    for fmt, path in ggufs(llama_dir, config, python, tokenizer_dir).items():
        base = pin + [bench, "-m", path, "-t", str(threads), "-r", str(repeats), "-o", "json"]
        for mode, extra in [("forward", ["-p", str(prompt_tokens), "-n", "0"]),
                            ("decode", ["-p", "0", "-n", str(decode_tokens), "-d", str(depth)])]:
            results, peak_mib = run_bench(base + extra)
            rows.append({"mode": mode, "format": fmt.upper(), "tokens_per_s": results[0]["avg_ts"], "peak_rss_mib": peak_mib,
                         "test": f"pp{prompt_tokens}" if mode == "forward" else f"tg{decode_tokens} at depth {depth}",
                         "build": results[0].get("build_commit", "?")})
    return rows


def main():
    import argparse
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-cpp", required=True, help="llama.cpp source tree with build/bin/llama-bench")
    p.add_argument("--config", default="seed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pin", action="store_true", help="run llama-bench under taskset -c 0")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--depth", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokenizer-dir", default=os.path.join(ROOT, "data", "gpt2-hf"))
    a = p.parse_args()
    rows = measure(a.llama_cpp, a.config, a.threads, ["taskset", "-c", "0"] if a.pin else [], a.prompt_tokens, a.depth,
                   a.decode_tokens, a.repeats, sys.executable, a.tokenizer_dir)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
