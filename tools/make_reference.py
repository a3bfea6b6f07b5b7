#!/usr/bin/env python3
"""Reference fixtures from Hugging Face transformers' Gemma3ForCausalLM (text-only).

Writes, for each case in CASES, a directory tests/data/hf/<case>/ with
  model_config.json      the architecture in our config format (also compiled into a config type)
  model.safetensors      the weights, float64, with HF's tensor names (only for the small cases)
  reference.safetensors  input_ids [B, T] (I32) and the logits of:
                           logits_f64     HF in float64 with the precision patches below
                           logits_hf_f32  stock HF in float32 (weights rounded to fp32), unpatched
  grads.safetensors      (small cases) targets [B, T], the mean cross-entropy `loss` and PyTorch
                         autograd's gradient of it for every parameter (float64, HF names; with a
                         tied head the embedding's gradient includes the head's part)
  trajectory.safetensors (mqa_untied) 10 AdamW steps of the seed's training loop in float64: the
                         micro-batches, the loss and learning rate of every iteration, the global
                         gradient norm before clipping at every step, and the final weights

The case `seed_dims` has the full dimensions of config/model_config.json. Its 165M weights are not
stored: both this script and the C++ test fill them from the closed-form formula `closed_form()`
(a SplitMix64 hash of the tensor name and element index, so every value is bit-identical in numpy
and C++). Only parts of its logits are stored, to keep the fixture small: every 16th vocabulary
column at every position, all columns at the last position, and the log-sum-exp over the whole
vocabulary at every position.

Precision patches (float64 only). Stock HF computes three things in float32 even when the model is
float64: RMSNorm (`x.float()`), the RoPE angles and their cos/sin (`dtype=torch.float`), and the
attention softmax (`dtype=torch.float32`). That caps a float64 comparison at ~1e-7. For the float64
reference they are evaluated in float64 instead; for float32 inputs the patched functions are the
original ones (checked below: identical logits with and without the patches in float32).

Usage: tools/setup_python.sh && .venv/bin/python tools/make_reference.py [--out tests/data/hf]
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import Gemma3ForCausalLM, Gemma3TextConfig
from transformers.models.gemma3 import modeling_gemma3 as gm

# --------------------------------------------------------------------------------------------
# Cases

CASES = {
    # One kv head (MQA), untied head, sliding window active (T > W), both layer kinds, odd vocab.
    "mqa_untied": dict(vocab_size=389, emb_dim=64, n_heads=4, n_kv_groups=1, head_dim=16, hidden_dim=128,
                       layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                       sliding_window=4, context_length=64, query_pre_attn_scalar=16,
                       tie_word_embeddings=False, batch=2, seq=12),
    # Grouped-query attention (4 query heads, 2 kv heads), tied head, emb_dim != heads*head_dim,
    # query_pre_attn_scalar != head_dim.
    "gqa_tied": dict(vocab_size=300, emb_dim=48, n_heads=4, n_kv_groups=2, head_dim=16, hidden_dim=96,
                     layer_types=["sliding_attention", "full_attention"],
                     sliding_window=5, context_length=64, query_pre_attn_scalar=24,
                     tie_word_embeddings=True, batch=2, seq=13),
    # The seed's full dimensions, closed-form weights, one sequence of 16 tokens.
    "seed_dims": dict(vocab_size=50257, emb_dim=640, n_heads=4, n_kv_groups=1, head_dim=256, hidden_dim=2048,
                      layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
                      sliding_window=512, context_length=32768, query_pre_attn_scalar=256,
                      tie_word_embeddings=False, batch=1, seq=16, closed_form=True),
}
ROPE_LOCAL_BASE = 10000.0
ROPE_BASE = 1000000.0
RMS_NORM_EPS = 1e-6


def model_config_json(case):
    """The case in the format of config/model_config.json (the seed's fields)."""
    return {
        "vocab_size": case["vocab_size"],
        "context_length": case["context_length"],
        "emb_dim": case["emb_dim"],
        "n_heads": case["n_heads"],
        "n_layers": len(case["layer_types"]),
        "hidden_dim": case["hidden_dim"],
        "head_dim": case["head_dim"],
        "qk_norm": True,
        "n_kv_groups": case["n_kv_groups"],
        "rope_local_base": ROPE_LOCAL_BASE,
        "rope_base": ROPE_BASE,
        "sliding_window": case["sliding_window"],
        "layer_types": case["layer_types"],
        "dtype": "float64",
        "query_pre_attn_scalar": case["query_pre_attn_scalar"],
        "tie_word_embeddings": case["tie_word_embeddings"],
        "rms_norm_eps": RMS_NORM_EPS,
    }


def hf_config(case):
    return Gemma3TextConfig(
        vocab_size=case["vocab_size"],
        hidden_size=case["emb_dim"],
        intermediate_size=case["hidden_dim"],
        num_hidden_layers=len(case["layer_types"]),
        num_attention_heads=case["n_heads"],
        num_key_value_heads=case["n_kv_groups"],
        head_dim=case["head_dim"],
        max_position_embeddings=case["context_length"],
        rms_norm_eps=RMS_NORM_EPS,
        query_pre_attn_scalar=case["query_pre_attn_scalar"],
        sliding_window=case["sliding_window"],
        layer_types=list(case["layer_types"]),
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": ROPE_LOCAL_BASE},
            "full_attention": {"rope_type": "default", "rope_theta": ROPE_BASE},
        },
        tie_word_embeddings=case["tie_word_embeddings"],
        hidden_activation="gelu_pytorch_tanh",
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        pad_token_id=None,  # no padding_idx: the seed has none (docs/model.md §10.10)
        attn_implementation="eager",
    )


# --------------------------------------------------------------------------------------------
# Precision patches for the float64 reference (see the module docstring)

_original_rmsnorm_forward = gm.Gemma3RMSNorm.forward
_original_rotary_forward = gm.Gemma3RotaryEmbedding.forward
_original_eager_attention = gm.eager_attention_forward


def _rmsnorm_forward_f64(self, x):
    if x.dtype != torch.float64:
        return _original_rmsnorm_forward(self, x)
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
    return out * (1.0 + self.weight.to(torch.float64))


@torch.no_grad()
def _rotary_forward_f64(self, x, position_ids, layer_type):
    if x.dtype != torch.float64:
        return _original_rotary_forward(self, x, position_ids, layer_type)
    theta = self.config.rope_parameters[layer_type]["rope_theta"]
    dim = self.config.head_dim
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((angles, angles), dim=-1)
    scaling = getattr(self, f"{layer_type}_attention_scaling")
    return emb.cos() * scaling, emb.sin() * scaling


def _eager_attention_f64(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kw):
    if query.dtype != torch.float64:
        return _original_eager_attention(module, query, key, value, attention_mask, dropout, scaling, softcap, **kw)
    key = gm.repeat_kv(key, module.num_key_value_groups)
    value = gm.repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    assert softcap is None
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float64)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def set_precision_patches(enabled):
    gm.Gemma3RMSNorm.forward = _rmsnorm_forward_f64 if enabled else _original_rmsnorm_forward
    gm.Gemma3RotaryEmbedding.forward = _rotary_forward_f64 if enabled else _original_rotary_forward
    gm.eager_attention_forward = _eager_attention_f64 if enabled else _original_eager_attention


# --------------------------------------------------------------------------------------------
# Weights

MASK64 = (1 << 64) - 1


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


def splitmix64(x):
    """Vectorised SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def closed_form_amplitude(name, shape):
    """Scale of the uniform [-1, 1) values: unit-gain matrices, visible norm weights."""
    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        return 0.2
    if name == "model.embed_tokens.weight":
        return 1.0
    return math.sqrt(3.0 / shape[1])


def closed_form(name, shape):
    """value[i] = amplitude * (2 * u53(splitmix64(fnv1a64(name) + i)) * 2^-53 - 1), i the flat index."""
    n = int(np.prod(shape))
    seed = np.uint64(fnv1a64(name))
    out = np.empty(n, dtype=np.float64)
    amp = closed_form_amplitude(name, shape)
    chunk = 1 << 22
    with np.errstate(over="ignore"):
        for start in range(0, n, chunk):
            idx = np.arange(start, min(n, start + chunk), dtype=np.uint64)
            bits = splitmix64(idx + seed) >> np.uint64(11)
            out[start:start + len(idx)] = amp * (bits.astype(np.float64) * 2.0**-53 * 2.0 - 1.0)
    return torch.from_numpy(out.reshape(shape))


def random_weights(model, generator):
    """Every tensor random (norm weights too, so the (1 + w) scale is exercised)."""
    state = {}
    for name, p in model.named_parameters():
        if "norm" in name:
            std = 0.2
        elif name == "model.embed_tokens.weight":
            std = 0.5
        else:
            std = 1.0 / math.sqrt(p.shape[1])
        state[name] = torch.randn(p.shape, generator=generator, dtype=torch.float64) * std
    return state


# --------------------------------------------------------------------------------------------


def build_model(case, dtype):
    torch.set_default_dtype(dtype)
    try:
        model = Gemma3ForCausalLM(hf_config(case)).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    return model


def load_state(model, state):
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state[name].to(p.dtype))


def run(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


# Training hyper-parameters of the trajectory fixture: the seed's loop at a small scale, with the
# seed's quirks kept (min_lr > learning_rate, so the cosine phase rises) and clipping active.
TRAJECTORY = dict(learning_rate=3e-3, min_lr=6e-3, warmup_steps=4, max_iters=20, accumulation=2,
                  beta1=0.9, beta2=0.95, eps=1e-9, weight_decay=0.1, grad_clip=0.5, warmup_start_factor=1.0 / 3.0)


def cross_entropy(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def make_gradients(model64, case, generator, out_dir):
    """Autograd gradients of the mean cross-entropy, float64 with the precision patches."""
    batch, seq = case["batch"], case["seq"]
    input_ids = torch.randint(0, case["vocab_size"], (batch, seq), generator=generator)
    targets = torch.randint(0, case["vocab_size"], (batch, seq), generator=generator)
    set_precision_patches(True)
    model64.zero_grad(set_to_none=True)
    loss = cross_entropy(model64(input_ids=input_ids, use_cache=False).logits, targets)
    loss.backward()
    set_precision_patches(False)
    tensors = {"input_ids": input_ids.to(torch.int32), "targets": targets.to(torch.int32),
               "loss": loss.detach().reshape(1)}
    for pname, p in model64.named_parameters():
        tensors["grad." + pname] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, "grads.safetensors"))
    print(f"  gradients: loss {loss.item():.6f}, {len(tensors) - 3} tensors")


def make_trajectory(model64, case, generator, out_dir):
    """The seed's loop: AdamW, LinearLR warmup then cosine (SequentialLR, stepped per iteration),
    loss / accumulation, global-norm clipping before each optimizer step."""
    cfg = TRAJECTORY
    batch, seq, iters = case["batch"], case["seq"], cfg["max_iters"]
    stream = torch.randint(0, case["vocab_size"], (4096,), generator=generator)
    starts = torch.randint(0, len(stream) - seq - 1, (iters, batch), generator=generator)
    xs = torch.stack([torch.stack([stream[i:i + seq] for i in row]) for row in starts])
    ys = torch.stack([torch.stack([stream[i + 1:i + seq + 1] for i in row]) for row in starts])
    params = list(model64.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"],
                            weight_decay=cfg["weight_decay"])
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=cfg["warmup_start_factor"],
                                               total_iters=cfg["warmup_steps"])
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters - cfg["warmup_steps"], eta_min=cfg["min_lr"])
    sched = torch.optim.lr_scheduler.SequentialLR(opt, schedulers=[warmup, cosine], milestones=[cfg["warmup_steps"]])
    losses, lrs, norms = [], [], []
    set_precision_patches(True)
    opt.zero_grad(set_to_none=True)
    for e in range(iters):
        loss = cross_entropy(model64(input_ids=xs[e], use_cache=False).logits, ys[e])
        (loss / cfg["accumulation"]).backward()
        losses.append(loss.item())
        lrs.append(opt.param_groups[0]["lr"])
        if (e + 1) % cfg["accumulation"] == 0 or e + 1 == iters:
            norms.append(torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"]).item())
            opt.step()
            opt.zero_grad(set_to_none=True)
        sched.step()
    set_precision_patches(False)
    assert max(norms) > cfg["grad_clip"], "clipping must be active in the fixture"
    tensors = {"x": xs.to(torch.int32), "y": ys.to(torch.int32), "loss": torch.tensor(losses, dtype=torch.float64),
               "lr": torch.tensor(lrs, dtype=torch.float64), "grad_norm": torch.tensor(norms, dtype=torch.float64)}
    for pname, p in model64.named_parameters():
        tensors["final." + pname] = p.detach().clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, "trajectory.safetensors"),
              metadata={k: repr(v) for k, v in cfg.items()})
    print(f"  trajectory: losses {losses[0]:.5f} -> {losses[-1]:.5f}, grad norms {min(norms):.3f}..{max(norms):.3f}")


def make_case(name, case, out_dir):
    print(f"[{name}]", flush=True)
    os.makedirs(out_dir, exist_ok=True)
    generator = torch.Generator().manual_seed(20250817 + len(name))
    batch, seq = case["batch"], case["seq"]
    input_ids = torch.randint(0, case["vocab_size"], (batch, seq), generator=generator)

    model64 = build_model(case, torch.float64)
    if case.get("closed_form"):
        state = {n: closed_form(n, tuple(p.shape)) for n, p in model64.named_parameters()}
    else:
        state = random_weights(model64, generator)
    load_state(model64, state)
    if case["tie_word_embeddings"]:
        assert model64.lm_head.weight.data_ptr() == model64.model.embed_tokens.weight.data_ptr()

    set_precision_patches(True)
    logits64 = run(model64, input_ids)
    set_precision_patches(False)
    logits64_stock = run(model64, input_ids)
    if not case.get("closed_form"):
        make_gradients(model64, case, generator, out_dir)
        if name == "mqa_untied":
            make_trajectory(model64, case, generator, out_dir)
    del model64

    model32 = build_model(case, torch.float32)
    load_state(model32, state)
    logits32 = run(model32, input_ids)
    set_precision_patches(True)
    logits32_patched = run(model32, input_ids)
    set_precision_patches(False)
    del model32
    assert torch.equal(logits32, logits32_patched), "the patches must not change the float32 model"

    def rel(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

    print(f"  logits max|ref| {logits64.abs().max().item():.4f}; stock HF float64 vs patched float64: "
          f"{rel(logits64_stock, logits64):.2e}; stock HF float32 vs patched float64: {rel(logits32, logits64):.2e}")

    with open(os.path.join(out_dir, "model_config.json"), "w") as f:
        json.dump(model_config_json(case), f, indent=2)
        f.write("\n")
    tensors = {"input_ids": input_ids.to(torch.int32).contiguous()}
    if case.get("closed_form"):
        stride = 16
        tensors["logits_f64_cols"] = logits64[:, :, ::stride].contiguous()
        tensors["logits_f64_last"] = logits64[:, -1, :].contiguous()
        tensors["logsumexp_f64"] = torch.logsumexp(logits64, dim=-1).contiguous()
        tensors["logits_hf_f32_cols"] = logits32[:, :, ::stride].contiguous()
        tensors["column_stride"] = torch.tensor([stride], dtype=torch.int32)
    else:
        tensors["logits_f64"] = logits64.contiguous()
        tensors["logits_hf_f32"] = logits32.contiguous()
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out_dir, "model.safetensors"),
                  metadata={"format": "pt"})
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"),
              metadata={"transformers": transformers.__version__, "torch": torch.__version__})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "hf"))
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for name, case in CASES.items():
        if args.only and name not in args.only:
            continue
        make_case(name, case, os.path.join(args.out, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
