#!/usr/bin/env python3
"""PyTorch side of benchmarks/compare.py: the same Gemma 3 model and the same measurements as
build/bin/gemma3-bench, so the two can be compared on one machine in one run.

  python benchmarks/torch_gemma3.py --config seed --mode train --batch 4 --seq 128

The model is a compact, self-contained Gemma 3 (docs/model.md §3: embedding x sqrt(D), Gemma RMSNorm, q/k
norm, split-half RoPE with per-layer base, sliding/full causal masks, GQA, GeGLU with tanh GELU,
untied head for the seed config), written for both the current PyPI torch and Debian's torch 1.13.
Mode `hf-decode` instead times transformers' Gemma3ForCausalLM.generate with its KV cache; mode
`save-hf` writes a randomly initialised HF directory of the architecture (for llama.cpp's converter,
benchmarks/llama_cpp.py).
Prints one JSON object per measurement, like gemma3-bench.
"""
import argparse
import contextlib
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    "seed": dict(vocab=50257, dim=640, heads=4, kv_heads=1, head_dim=256, ffn=2048, layers=18, window=512,
                 scalar=256, tied=False),
    "demo": dict(vocab=50257, dim=256, heads=4, kv_heads=1, head_dim=64, ffn=768, layers=6, window=64, scalar=64,
                 tied=True),
    "tiny": dict(vocab=512, dim=64, heads=4, kv_heads=1, head_dim=16, ffn=192, layers=6, window=8, scalar=16,
                 tied=False),
}


def full_layer(cfg, i):
    period = 3 if cfg["layers"] == 6 and cfg["dim"] == 64 else 6
    return (i + 1) % period == 0


class RMSNorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + self.weight)


def rope_tables(theta, head_dim, seq):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.arange(seq, dtype=torch.float64)[:, None] * inv[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # a no-op in fp32; bf16 with --bf16-weights
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class Block(nn.Module):
    def __init__(self, cfg, full):
        super().__init__()
        d, h, kv, hd, f = cfg["dim"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["ffn"]
        self.cfg, self.full = cfg, full
        self.input_norm, self.post_attn_norm = RMSNorm(d), RMSNorm(d)
        self.pre_ff_norm, self.post_ff_norm = RMSNorm(d), RMSNorm(d)
        self.q = nn.Linear(d, h * hd, bias=False)
        self.k = nn.Linear(d, kv * hd, bias=False)
        self.v = nn.Linear(d, kv * hd, bias=False)
        self.o = nn.Linear(h * hd, d, bias=False)
        self.q_norm, self.k_norm = RMSNorm(hd), RMSNorm(hd)
        self.gate = nn.Linear(d, f, bias=False)
        self.up = nn.Linear(d, f, bias=False)
        self.down = nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        c = self.cfg
        a = self.input_norm(x)
        q = self.q_norm(self.q(a).view(b, t, c["heads"], c["head_dim"]).transpose(1, 2))
        k = self.k_norm(self.k(a).view(b, t, c["kv_heads"], c["head_dim"]).transpose(1, 2))
        v = self.v(a).view(b, t, c["kv_heads"], c["head_dim"]).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        rep = c["heads"] // c["kv_heads"]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if hasattr(F, "scaled_dot_product_attention"):
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=c["scalar"] ** -0.5)
        else:  # torch 1.13
            s = (q @ k.transpose(-1, -2)) * c["scalar"] ** -0.5
            o = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v
        x = x + self.post_attn_norm(self.o(o.transpose(1, 2).reshape(b, t, -1)))
        m = self.pre_ff_norm(x)
        return x + self.post_ff_norm(self.down(F.gelu(self.gate(m), approximate="tanh") * self.up(m)))


class Gemma3(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg["vocab"], cfg["dim"])
        self.blocks = nn.ModuleList([Block(cfg, full_layer(cfg, i)) for i in range(cfg["layers"])])
        self.final_norm = RMSNorm(cfg["dim"])
        self.head = None if cfg["tied"] else nn.Linear(cfg["dim"], cfg["vocab"], bias=False)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        t = ids.shape[1]
        c = self.cfg
        x = self.embed(ids) * math.sqrt(c["dim"])
        i = torch.arange(t)[:, None]
        j = torch.arange(t)[None, :]
        causal = j <= i
        sliding = causal & (j > i - c["window"])
        tables = {True: rope_tables(1e6, c["head_dim"], t), False: rope_tables(1e4, c["head_dim"], t)}
        for blk in self.blocks:
            cos, sin = tables[blk.full]
            x = blk(x, cos, sin, causal if blk.full else sliding)
        x = self.final_norm(x)
        return x @ (self.embed.weight if self.head is None else self.head.weight).t()


def timed(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def peak_rss_mib():
    """VmHWM: this process's peak (ru_maxrss would include the parent's, carried across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def report(**kv):
    kv["peak_rss_mib"] = peak_rss_mib()
    kv["torch"] = torch.__version__
    kv["threads"] = torch.get_num_threads()
    print(json.dumps(kv), flush=True)


def hf_model(cfg):
    """transformers' Gemma3ForCausalLM of this architecture, randomly initialised."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    return Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=cfg["vocab"], hidden_size=cfg["dim"], intermediate_size=cfg["ffn"],
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"], num_key_value_heads=cfg["kv_heads"],
        head_dim=cfg["head_dim"], sliding_window=cfg["window"], query_pre_attn_scalar=cfg["scalar"],
        layer_types=["full_attention" if full_layer(cfg, i) else "sliding_attention" for i in range(cfg["layers"])],
        tie_word_embeddings=cfg["tied"], pad_token_id=None, eos_token_id=None, bos_token_id=None,
        max_position_embeddings=4096)).eval()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="seed", choices=list(CONFIGS))
    p.add_argument("--mode", required=True, choices=["forward", "train", "decode", "hf-decode", "save-hf"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--autocast", action="store_true",
                   help='bf16 mixed precision: torch.autocast("cpu", dtype=torch.bfloat16)')
    p.add_argument("--bf16-weights", action="store_true",
                   help="forward: the model cast to bfloat16 (model.to(torch.bfloat16)), pure bf16 inference")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--out", help="save-hf: the directory to write")
    p.add_argument("--tokenizer-dir", help="save-hf: a directory with GPT-2's vocab.json and merges.txt")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = CONFIGS[a.config]
    ids = torch.randint(0, cfg["vocab"], (a.batch, a.seq))
    targets = torch.randint(0, cfg["vocab"], (a.batch, a.seq))
    n = a.batch * a.seq

    if a.mode == "save-hf":  # a randomly initialised HF directory of this architecture (for llama.cpp's converter)
        if not a.out or not a.tokenizer_dir:
            p.error("save-hf needs --out DIR and --tokenizer-dir DIR (vocab.json, merges.txt)")
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast
        hf_model(cfg).save_pretrained(a.out, safe_serialization=True)
        # GPT-2's tokenizer.json: byte-level BPE, no prefix space (the converter recognises its
        # pre-tokenizer by the ids of a test string, which this reproduces).
        bpe = Tokenizer(models.BPE.from_file(f"{a.tokenizer_dir}/vocab.json", f"{a.tokenizer_dir}/merges.txt"))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
        PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>").save_pretrained(a.out)
        return

    if a.mode == "hf-decode":
        hf = hf_model(cfg)
        prompt = ids[:1]

        def gen(k):
            with torch.no_grad():
                hf.generate(prompt, max_new_tokens=k, min_new_tokens=k, do_sample=False, use_cache=True)

        t_prefill = timed(lambda: gen(1), a.warmup, a.repeats)
        t_all = timed(lambda: gen(a.decode_tokens + 1), a.warmup, max(1, a.repeats // 2))
        report(mode="hf-decode", tokens_per_s=a.decode_tokens / (t_all - t_prefill), prompt=a.seq)
        return

    model = Gemma3(cfg)
    if a.bf16_weights:
        if a.mode != "forward":
            p.error("--bf16-weights is for --mode forward (bf16 training keeps fp32 weights: --autocast)")
        model = model.to(torch.bfloat16)
    if a.compile:
        model = torch.compile(model)
    extra = {"autocast": a.autocast, "compile": a.compile, "bf16_weights": a.bf16_weights}

    def precision():
        return torch.autocast("cpu", dtype=torch.bfloat16) if a.autocast else contextlib.nullcontext()

    if a.mode == "forward":
        def fwd():
            with torch.no_grad(), precision():
                model(ids)
        t = timed(fwd, a.warmup + (2 if a.compile else 0), a.repeats)
        report(mode="forward", tokens_per_s=n / t, seconds=t, **extra)
    elif a.mode == "train":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-9, weight_decay=0.1)

        def step():
            with precision():
                logits = model(ids)
            loss = F.cross_entropy(logits.float().view(-1, cfg["vocab"]), targets.view(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        t = timed(step, a.warmup + (2 if a.compile else 0), a.repeats)
        report(mode="train", tokens_per_s=n / t, seconds=t, **extra)
    else:  # decode without a cache: the seed's own generate recomputes the whole prefix each step
        prompt = ids[:1]

        def decode():
            x = prompt
            with torch.no_grad():
                for _ in range(a.decode_tokens):
                    nxt = model(x)[:, -1].argmax(-1, keepdim=True)
                    x = torch.cat([x, nxt], dim=1)
        t = timed(decode, 0, 1)
        report(mode="decode-no-cache", tokens_per_s=a.decode_tokens / t, prompt=a.seq)


if __name__ == "__main__":
    main()
