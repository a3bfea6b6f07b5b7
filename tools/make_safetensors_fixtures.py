#!/usr/bin/env python3
"""Write the safetensors fixtures read by tests/test_safetensors.cpp.

The files are written by Hugging Face's own `safetensors` package (the independent
implementation our reader is checked against), from values given by closed-form formulas that the
C++ test recomputes on its own:

* floating point: v[i] = (i + 1) / 7 - k, computed in float64. Only IEEE-754 division and
  subtraction are used; both are correctly rounded in numpy and in C++, so both sides get the
  same bits. F32 tensors are that float64 value rounded to float32 (round to nearest even, the
  same as C++'s static_cast<float>).
* integers with b bits: x[i] = (i * 0x9E3779B97F4A7C15 + k) mod 2^b, read as two's complement for
  signed dtypes, plus a tensor [min, max] of the dtype.
* bool: i % 3 == 0.

For the rounded dtypes (BF16, F16) the expected values are what the reference library produced:
they are stored, widened exactly to F64, in a "<name>.expected" tensor of the same file, and the
rounding input in "<name>.source" (F32) where there is one. BF16 comes from torch's float32 ->
bfloat16 conversion (round to nearest even), F16 from numpy's float64 -> float16 conversion
(round to nearest even).

Usage: .venv/bin/python tools/make_safetensors_fixtures.py [output_dir]
       (default: tests/data/safetensors next to this script's repository root)
"""

import pathlib
import sys

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

GOLDEN = 0x9E3779B97F4A7C15


def float_formula(n, k):
    """(i + 1) / 7 - k for i in [0, n), in float64."""
    return (np.arange(n, dtype=np.float64) + 1.0) / 7.0 - float(k)


def int_formula(n, k, bits, signed):
    mask = (1 << bits) - 1
    values = []
    for i in range(n):
        x = (i * GOLDEN + k) & mask
        if signed and x >= 1 << (bits - 1):
            x -= 1 << bits
        values.append(x)
    return values


INTEGER_DTYPES = [  # (name used in tensor names, numpy dtype, bits, signed, k)
    ("i8", np.int8, 8, True, 11),
    ("u8", np.uint8, 8, False, 12),
    ("i16", np.int16, 16, True, 13),
    ("u16", np.uint16, 16, False, 14),
    ("i32", np.int32, 32, True, 15),
    ("u32", np.uint32, 32, False, 16),
    ("i64", np.int64, 64, True, 17),
    ("u64", np.uint64, 64, False, 18),
]

F16_SPECIALS = [0.0, -0.0, 1.0, -2.0, 65504.0, -65504.0, 2.0**-14, 2.0**-24, 3 * 2.0**-24,
                1023 * 2.0**-24, float("inf"), float("-inf"), float("nan")]

# float32 inputs whose bfloat16 rounding is interesting: exact ties (must go to even), the largest
# finite bfloat16, values that overflow to inf, subnormals (including a tie), inf, NaN, -0.
BF16_SPECIAL_BITS = [
    0x3F808000,  # 1 + 2^-8: tie between 0x3F80 and 0x3F81 -> even 0x3F80
    0x3F818000,  # 1 + 3*2^-8: tie between 0x3F81 and 0x3F82 -> even 0x3F82
    0xBF808000,  # negative tie -> 0xBF80
    0xBF818000,  # negative tie -> 0xBF82
    0x3F808001,  # just above a tie -> 0x3F81
    0x3F817FFF,  # just below a tie -> 0x3F81
    0x7F7F0000,  # largest finite bfloat16, exact
    0x7F7F7FFF,  # rounds down to the largest finite
    0x7F7F8000,  # tie above the largest finite -> inf (even)
    0x7F7FFFFF,  # FLT_MAX -> inf
    0x7F800000,  # inf
    0xFF800000,  # -inf
    0x7FC00000,  # quiet NaN
    0x00010000,  # smallest bfloat16 subnormal, exact
    0x00008000,  # tie between 0 and the smallest subnormal -> 0
    0x00018000,  # tie between 0x0001 and 0x0002 -> 0x0002
    0x80000000,  # -0
    0x3EAAAAAB,  # float32(1/3) -> 0x3EAB
]


def write_numpy_file(directory):
    tensors = {
        "f64.matrix": float_formula(12, 1).reshape(3, 4),
        "f32.tensor3": float_formula(24, 2).astype(np.float32).reshape(2, 3, 4),
        "f32.scalar": np.array(float_formula(1, 5)[0], dtype=np.float32),
        "f32.empty": np.zeros((0,), dtype=np.float32),
        "i64.empty": np.zeros((2, 0), dtype=np.int64),
        "bool.mask": np.array([i % 3 == 0 for i in range(7)], dtype=np.bool_),
    }
    f16 = float_formula(10, 3).astype(np.float16)
    tensors["f16.values"] = f16.reshape(2, 5)
    tensors["f16.values.expected"] = f16.astype(np.float64).reshape(2, 5)
    tensors["f16.specials"] = np.array(F16_SPECIALS, dtype=np.float16)
    for name, dtype, bits, signed, k in INTEGER_DTYPES:
        tensors[f"{name}.values"] = np.array(int_formula(6, k, bits, signed), dtype=dtype).reshape(2, 3)
        info = np.iinfo(dtype)
        tensors[f"{name}.extremes"] = np.array([info.min, info.max], dtype=dtype)
    metadata = {"format": "np", "generator": "tools/make_safetensors_fixtures.py", "unicode": "héllo ✓"}
    safetensors.numpy.save_file(tensors, str(directory / "numpy_all_dtypes.safetensors"), metadata=metadata)


def write_torch_file(directory):
    source = torch.from_numpy(float_formula(24, 4).astype(np.float32)).reshape(4, 6)
    bf16 = source.to(torch.bfloat16)
    special_source = torch.from_numpy(np.array(BF16_SPECIAL_BITS, dtype=np.uint32).view(np.float32).copy())
    special_bf16 = special_source.to(torch.bfloat16)
    tensors = {
        "bf16.matrix": bf16,
        "bf16.matrix.source": source,
        "bf16.matrix.expected": bf16.to(torch.float64),
        "bf16.specials": special_bf16,
        "bf16.specials.source": special_source,
        "bf16.specials.expected": special_bf16.to(torch.float64),
        "bf16.scalar": torch.tensor(2.5, dtype=torch.bfloat16),
        "bf16.empty": torch.zeros(0, 3, dtype=torch.bfloat16),
        "i32.from_torch": torch.tensor(int_formula(5, 21, 32, True), dtype=torch.int32),
    }
    metadata = {"format": "pt", "generator": "tools/make_safetensors_fixtures.py"}
    safetensors.torch.save_file(tensors, str(directory / "torch_bf16.safetensors"), metadata=metadata)


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    directory = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "tests" / "data" / "safetensors"
    directory.mkdir(parents=True, exist_ok=True)
    write_numpy_file(directory)
    write_torch_file(directory)
    for path in sorted(directory.glob("*.safetensors")):
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
