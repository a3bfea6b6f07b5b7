#!/usr/bin/env python3
"""Check that Hugging Face's `safetensors` package loads a file written by our C++ writer.

Usage: .venv/bin/python tools/check_safetensors_interop.py FILE

Loads every tensor with safetensors.safe_open (framework "pt") and prints name, dtype, shape and
the first values, plus the metadata. If the metadata says "gemma3.check": "roundtrip-v1" (the file
written by the writer round-trip test in tests/test_safetensors.cpp when the environment variable
GEMMA3_SAFETENSORS_INTEROP_OUT names an output path), every value is also compared exactly with
what that test wrote, recomputed here; BF16 tensors are compared with torch's own float32 ->
bfloat16 rounding. Exits non-zero on any mismatch or load error.
"""

import sys

import torch
from safetensors import safe_open


def float_formula(n, k):
    """(i + 1) / 7 - k in float64, as in tests/test_safetensors.cpp."""
    return (torch.arange(n, dtype=torch.float64) + 1.0) / 7.0 - float(k)


def roundtrip_v1_expected():
    """name -> (torch dtype, shape, values) of the tensors the C++ round-trip test writes."""
    f32 = float_formula(12, 1).to(torch.float32)
    f64 = float_formula(12, 2)
    i32 = torch.tensor([-2**31, -1, 0, 1, 123456, 2**31 - 1], dtype=torch.int32)
    i64 = torch.tensor([-2**63, -5, 7, 2**63 - 1], dtype=torch.int64)
    # Rounded by hand from the double inputs (see the C++ test): 1 + 2^-8 + 2^-40, 1 + 2^-8,
    # -(1 + 3 * 2^-8), 1/3. torch rounds double -> bfloat16 via float32, so its own conversion
    # would be wrong for the first one; we compare the bits directly.
    bf16_from_double_bits = torch.tensor([0x3F81, 0x3F80, 0xBF82 - 0x10000, 0x3EAB], dtype=torch.int16)
    return {
        "weights.f32": (torch.float32, [3, 4], f32.reshape(3, 4)),
        "weights.f64": (torch.float64, [2, 3, 2], f64.reshape(2, 3, 2)),
        "weights.bf16": (torch.bfloat16, [5, 3], float_formula(15, 3).to(torch.float32).to(torch.bfloat16).reshape(5, 3)),
        "weights.bf16_from_double": (torch.bfloat16, [4], bf16_from_double_bits.view(torch.bfloat16)),
        "weights.f64_from_f32": (torch.float64, [12], f32.to(torch.float64)),
        "weights.f32_from_f64": (torch.float32, [12], f64.to(torch.float32)),
        "counts.i32": (torch.int32, [6], i32),
        "counts.i64_from_i32": (torch.int64, [2, 3], i32.to(torch.int64).reshape(2, 3)),
        "steps.i64": (torch.int64, [2, 2], i64.reshape(2, 2)),
        "scalar": (torch.float32, [], torch.tensor(0.25, dtype=torch.float32)),
        "empty": (torch.float32, [0], torch.zeros(0, dtype=torch.float32)),
    }


def bits(tensor):
    """The raw bits of a tensor, for exact comparison (NaN-safe, -0 distinct from 0)."""
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.contiguous().view(width)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = sys.argv[1]
    failures = []
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
        print(f"{path}: {len(list(handle.keys()))} tensors, metadata {metadata}")
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    for name, tensor in tensors.items():
        head = tensor.flatten()[:4].tolist()
        print(f"  {name}: {tensor.dtype} {list(tensor.shape)} first values {head}")

    if metadata.get("gemma3.check") == "roundtrip-v1":
        expected = roundtrip_v1_expected()
        if set(expected) != set(tensors):
            failures.append(f"tensor names differ: expected {sorted(expected)}, got {sorted(tensors)}")
        for name, (dtype, shape, values) in expected.items():
            if name not in tensors:
                continue
            got = tensors[name]
            if got.dtype != dtype or list(got.shape) != shape:
                failures.append(f"{name}: expected {dtype} {shape}, got {got.dtype} {list(got.shape)}")
            elif not torch.equal(bits(got), bits(values.to(dtype))):
                failures.append(f"{name}: values differ: expected {values.flatten().tolist()}, got {got.flatten().tolist()}")
        if metadata.get("step") != "42":
            failures.append(f"metadata 'step': expected '42', got {metadata.get('step')!r}")
        print(f"roundtrip-v1 check: {len(expected)} tensors compared exactly, {len(failures)} mismatches")

    for failure in failures:
        print("MISMATCH:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
