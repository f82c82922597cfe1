#!/usr/bin/env python3
"""Write the fixtures of tensor-core/tests/quant.rs: ggml's exact bytes for every type that
`tensor_core::quant::quantize` writes, and the reference dequantization of every type.

    $TORCH_PY tools/make_quant_fixtures.py   # or any python3 with numpy, gguf, llama-cpp-python

Sources:

* Quantization: ggml itself, through ctypes on the `libggml-base` shared library that the
  `llama-cpp-python` package ships. Types go through `ggml_quantize_chunk(type, ...,
  imatrix = NULL)`, what `llama-quantize` runs without an importance matrix; Q8_1 and Q8_K,
  which that function does not take, through `quantize_row_q8_1_ref` / `quantize_row_q8_K_ref`.
  Where the `gguf` Python package can quantize a type too (Q4_0..Q8_0, BF16, TQ1_0, TQ2_0,
  MXFP4) its bytes are checked to be the same.
* Dequantization: `gguf.quants.dequantize` (dequant.rs promises bit-identity with it), checked
  against ggml's `dequantize_row_*` wherever ggml exports one; Q8_1 (unknown to both) is
  `d * q` in f32, as ggml computes it, and Q1_0 (unknown to gguf-py's quants) is `±d`.

Outputs, in tensor-core/tests/fixtures/quant/ (never edit them by hand; rerun this script):

* inputs.f32: the quantizer inputs, little-endian f32, one 256-element case after another
  (cases named in manifest.txt: random data, all zeros, one huge outlier, negative-only, tiny
  values, ...).
* TYPE.q: ggml's bytes for inputs.f32; TYPE.f32: the dequantization of TYPE.q.
* TYPE.blocks / TYPE.blocks.f32 for the types only dequantized (the i-quants below 4 bits and
  NVFP4): seeded random blocks with finite scales, and their dequantization.
* manifest.txt: one line per type saying which files exist and where their bytes came from.

With `--stress DIR` it writes, instead, many more random blocks (in the same file layout, never
committed) to DIR, for the ignored test that runs with QUANT_STRESS_DIR=DIR:

    python3 tools/make_quant_fixtures.py --stress /tmp/quant-stress
    QUANT_STRESS_DIR=/tmp/quant-stress cargo test -p tensor-core --test quant -- --ignored
"""

import argparse
import ctypes
from pathlib import Path

import numpy as np
import gguf
import gguf.quants
from gguf import GGMLQuantizationType as T
import llama_cpp

OUT = Path(__file__).resolve().parent.parent / "tensor-core" / "tests" / "fixtures" / "quant"
QK_K = 256

rng = np.random.default_rng(20250101)


def cases():
    """(name, 256 float32 values) pairs: typical data plus the edge cases quantizers trip on."""
    n = QK_K
    out = []
    out.append(("normal", rng.standard_normal(n)))
    out.append(("weights", 0.02 * rng.standard_normal(n) + 0.003))
    out.append(("uniform", rng.uniform(-5.0, 5.0, n)))
    out.append(("zeros", np.zeros(n)))
    outlier = 0.1 * rng.standard_normal(n)
    outlier[37] = 1000.0
    out.append(("outlier", outlier))
    neg_outlier = 0.1 * rng.standard_normal(n)
    neg_outlier[200] = -3e4
    out.append(("negative_outlier", neg_outlier))
    out.append(("negative_only", -np.abs(rng.standard_normal(n)) - 0.01))
    out.append(("positive_only", np.abs(rng.laplace(size=n)) + 0.5))
    out.append(("tiny", 1e-6 * rng.standard_normal(n)))
    # Below f16's smallest normal (scales underflow) and below ggml's GROUP_MAX_EPS (1e-15).
    out.append(("subnormal_scale", 1e-7 * rng.standard_normal(n)))
    out.append(("below_eps", 1e-17 * rng.standard_normal(n)))
    out.append(("constant", np.full(n, 0.75)))
    # Multiples of 1/8 land exactly on rounding ties for many scales.
    out.append(("ties", (np.arange(n) - 128) / 8.0))
    sparse = np.where(rng.uniform(size=n) < 0.1, rng.standard_normal(n), 0.0)
    out.append(("sparse", sparse))
    out.append(("heavy_tail", rng.standard_t(2.0, n)))
    return [(name, np.asarray(v, dtype=np.float32)) for name, v in out]


def load_ggml():
    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    lib = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
    f32p, voidp, i64 = ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, f32p, voidp, i64, i64, i64, f32p]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    for name in ("quantize_row_q8_1_ref", "quantize_row_q8_K_ref"):
        getattr(lib, name).argtypes = [f32p, voidp, i64]
    return lib


def as_f32p(x):
    return x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def quant_size(qtype):
    """(elements, bytes) per block. Older gguf-py says 40 bytes for Q8_1; ggml writes 36."""
    return (32, 36) if qtype == T.Q8_1 else gguf.GGML_QUANT_SIZES[qtype]


def ggml_quantize(lib, qtype, x):
    block, size = quant_size(qtype)
    out = np.zeros(len(x) // block * size, dtype=np.uint8)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == T.Q8_1:
        lib.quantize_row_q8_1_ref(as_f32p(x), out.ctypes.data, len(x))
    elif qtype == T.Q8_K:
        lib.quantize_row_q8_K_ref(as_f32p(x), out.ctypes.data, len(x))
    else:
        lib.ggml_quantize_init(int(qtype))
        rows = len(x) // QK_K
        written = lib.ggml_quantize_chunk(int(qtype), as_f32p(x), out.ctypes.data, 0, rows, QK_K, None)
        assert written == out.nbytes, (qtype, written, out.nbytes)
    return out


def ggml_dequantize(lib, qtype, data):
    """ggml's dequantize_row_* of `data`, or None where ggml exports none for the type."""
    name = "dequantize_row_" + qtype.name.lower().replace("_k", "_K")
    if not hasattr(lib, name):
        return None
    fn = getattr(lib, name)
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64]
    block, size = quant_size(qtype)
    out = np.zeros(len(data) // size * block, dtype=np.float32)
    data = np.ascontiguousarray(data)
    fn(data.ctypes.data, as_f32p(out), len(out))
    return out


def reference_dequantize(qtype, data):
    if qtype == T.Q8_1:
        blocks = data.reshape(-1, 36)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        return (blocks[:, 4:].view(np.int8).astype(np.float32) * d).ravel()
    if qtype == T.Q8_K:
        blocks = data.reshape(-1, 292)
        d = blocks[:, :4].copy().view(np.float32)
        return (d * blocks[:, 4:260].view(np.int8).astype(np.float32)).ravel()
    if qtype == T.Q1_0:
        blocks = data.reshape(-1, 18)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        bits = np.unpackbits(blocks[:, 2:], axis=-1, bitorder="little")
        return np.where(bits == 1, d, -d).astype(np.float32).ravel()
    return gguf.quants.dequantize(data, qtype).astype(np.float32).ravel()


def same_bits(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


QUANTIZED = [
    T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q8_1,
    T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K, T.IQ4_NL, T.IQ4_XS,
    T.TQ1_0, T.TQ2_0, T.MXFP4, T.Q1_0,
]

DEQUANT_ONLY = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M, T.NVFP4]


def random_blocks(qtype, n_blocks):
    """Random bytes with finite, modest scales, so every quant bit pattern is exercised."""
    size = quant_size(qtype)[1]
    blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    d = (rng.uniform(1e-3, 1e-1, n_blocks) * rng.choice([-1.0, 1.0], n_blocks)).astype(np.float16)
    if qtype == T.IQ1_M:
        # The f16 scale is spread over the top nibbles of the four u16 words at byte 48.
        words = blocks[:, 48:56].copy().view(np.uint16)
        bits = d.view(np.uint16)
        for k in range(4):
            words[:, k] = (words[:, k] & 0x0FFF) | (((bits >> (4 * k)) & 0xF) << 12)
        blocks[:, 48:56] = words.view(np.uint8)
    elif qtype != T.NVFP4:  # NVFP4's four e4m3 scales are always finite
        blocks[:, :2] = d.view(np.uint8).reshape(-1, 2)
    return blocks.ravel()


def stress_cases(n_blocks):
    """Blocks of random shape and scale: the edge cases of cases(), mixed and at every scale."""
    out = []
    for i in range(n_blocks):
        kind = rng.integers(0, 6)
        if kind == 0:
            v = rng.standard_normal(QK_K)
        elif kind == 1:
            v = rng.uniform(-1.0, 1.0, QK_K) + rng.uniform(-1.0, 1.0)
        elif kind == 2:
            v = rng.standard_t(1.5, QK_K)
        elif kind == 3:
            v = rng.laplace(size=QK_K) * rng.choice([-1.0, 1.0]) + rng.uniform(0.0, 3.0)
        elif kind == 4:  # small integers times a step: rounding ties
            v = rng.integers(-40, 41, QK_K) / rng.choice([2.0, 4.0, 8.0, 16.0, 3.0])
        else:
            v = np.abs(rng.standard_normal(QK_K)) * rng.choice([-1.0, 1.0])
        # Mostly ordinary scales; a few blocks of f32 subnormals, whose inverse scale overflows.
        v = v * 10.0 ** (rng.uniform(-9.0, 4.0) if rng.uniform() < 0.97 else rng.uniform(-44.0, -38.0))
        if rng.uniform() < 0.3:
            v[rng.uniform(size=QK_K) < rng.uniform(0.0, 0.9)] = 0.0
        if rng.uniform() < 0.2:
            v[rng.integers(0, QK_K)] *= 10.0 ** rng.uniform(1.0, 4.0)
        if rng.uniform() < 0.1:
            v[:] = v[0]
        if rng.uniform() < 0.2:
            v = np.clip(v, -65504.0, 65504.0).astype(np.float16).astype(np.float64)
        out.append((f"stress{i}", v))
    return [(name, np.asarray(v, dtype=np.float32)) for name, v in out]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stress", type=Path, help="write many random blocks here instead")
    parser.add_argument("--blocks", type=int, default=4000, help="blocks of 256 for --stress")
    args = parser.parse_args()
    out_dir = args.stress or OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = load_ggml()
    named = stress_cases(args.blocks) if args.stress else cases()
    x = np.concatenate([v for _, v in named])
    x.astype("<f4").tofile(out_dir / "inputs.f32")
    manifest = ["# type  kind  bytes-source  values-source  (written by tools/make_quant_fixtures.py)"]
    manifest.append("cases " + " ".join(name for name, _ in named))

    for qtype in QUANTIZED:
        if qtype == T.F32:
            q = x.view(np.uint8).copy()
        else:
            q = ggml_quantize(lib, qtype, x)
        source = "copy" if qtype == T.F32 else "ggml"
        try:
            py = gguf.quants.quantize(x.reshape(-1, QK_K), qtype).ravel()
        except (NotImplementedError, KeyError, AssertionError):
            py = None
        if py is not None and qtype != T.F32:
            if np.array_equal(py.view(np.uint8), q):
                source = "ggml=gguf-py"
            else:
                bad = np.flatnonzero(py.view(np.uint8) != q)
                print(f"{qtype.name}: gguf-py differs from ggml at {len(bad)} bytes, first {bad[:8]}")
        y = reference_dequantize(qtype, q)
        ours = ggml_dequantize(lib, qtype, q)
        dq = "gguf-py" if qtype not in (T.Q8_1, T.Q8_K, T.Q1_0) else "numpy"
        if ours is not None:
            if same_bits(ours, y):
                dq += "=ggml"
            else:
                print(f"{qtype.name}: ggml dequantize differs from {dq}")
        q.tofile(out_dir / f"{qtype.name}.q")
        y.astype("<f4").tofile(out_dir / f"{qtype.name}.f32")
        manifest.append(f"{qtype.name} quantize {source} {dq}")

    for qtype in DEQUANT_ONLY:
        if args.stress:
            break
        data = random_blocks(qtype, 4)
        y = reference_dequantize(qtype, data)
        ours = ggml_dequantize(lib, qtype, data)
        dq = "gguf-py"
        if ours is not None:
            if same_bits(ours, y):
                dq += "=ggml"
            else:
                print(f"{qtype.name}: ggml dequantize differs from gguf-py")
        data.tofile(out_dir / f"{qtype.name}.blocks")
        y.astype("<f4").tofile(out_dir / f"{qtype.name}.blocks.f32")
        manifest.append(f"{qtype.name} dequantize random {dq}")

    (out_dir / "manifest.txt").write_text("\n".join(manifest) + "\n")
    total = sum(p.stat().st_size for p in out_dir.iterdir())
    print(f"wrote {out_dir} ({total} bytes)")


if __name__ == "__main__":
    main()
