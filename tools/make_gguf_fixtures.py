#!/usr/bin/env python3
"""Write the GGUF fixtures of tensor-io/tests/gguf.rs with the `gguf` Python package.

    $TORCH_PY tools/make_gguf_fixtures.py     # or any python3 with `gguf` and numpy

Outputs, in tensor-io/tests/fixtures/gguf/ (never edit them by hand; rerun this script):

* quants.gguf: metadata of every GGUF value type (nested arrays included) and one tensor per
  ggml type that tensor-io dequantizes. Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/BF16/TQ1_0/TQ2_0/MXFP4 come from
  `gguf.quants.quantize` of seeded random data; the k-quants and IQ4_NL/IQ4_XS (which gguf-py
  cannot quantize) are seeded random blocks with sane f16 scales, so every bit pattern of the
  quants is exercised; Q8_1 and Q8_K (unknown to gguf-py) are quantized here like ggml's
  reference quantizer.
* quants_expected.gguf: for each tensor of quants.gguf an F32 tensor of the same name and shape
  holding `gguf.quants.dequantize` of it (for Q8_1/Q8_K: d * q in f32, as ggml does), written
  with `general.alignment` = 64.
"""

from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

OUT = Path(__file__).resolve().parent.parent / "tensor-io" / "tests" / "fixtures" / "gguf"
QK_K = 256

rng = np.random.default_rng(20240607)


def f16_bytes(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(-1, 2)


def random_blocks(qtype, n_blocks, f16_fields):
    """Random block bytes whose f16 fields (byte offsets) hold finite scales."""
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in f16_fields:
        blocks[:, off:off + 2] = f16_bytes(rng.uniform(-0.02, 0.02, n_blocks))
    return blocks


def quantize_q8_1(x):
    """ggml's quantize_row_q8_1_ref: d = amax/127, q = round(x/d), s = d * sum(q)."""
    blocks = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = np.round(blocks * inv).astype(np.int8)
    s = d[:, 0] * q.astype(np.float32).sum(axis=1)
    out = np.concatenate([f16_bytes(d[:, 0]), f16_bytes(s), q.view(np.uint8)], axis=1)
    assert out.shape[1] == 36
    return out


def quantize_q8_k(x):
    """ggml's quantize_row_q8_K_ref: d = -max/127 with max the signed absmax, plus bsums."""
    blocks = x.reshape(-1, QK_K).astype(np.float32)
    imax = np.abs(blocks).argmax(axis=1)
    mx = blocks[np.arange(len(blocks)), imax][:, None]
    iscale = np.float32(-127) / mx
    q = np.minimum(np.round(blocks * iscale), 127).astype(np.int8)
    d = (np.float32(1) / iscale).astype(np.float32)
    bsums = q.reshape(-1, 16, 16).astype(np.int16).sum(axis=2, dtype=np.int16)
    out = np.concatenate([d.view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)], axis=1)
    assert out.shape[1] == 292
    return out


def q_dequant_d_times_q(blocks, d_dtype, q_start):
    """d * q in f32 for Q8_1 (f16 d) and Q8_K (f32 d)."""
    d = blocks[:, :np.dtype(d_dtype).itemsize].copy().view(d_dtype).astype(np.float32)
    block_size = 32 if d_dtype == np.float16 else QK_K
    q = blocks[:, q_start:q_start + block_size].copy().view(np.int8).astype(np.float32)
    return d * q


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    # name -> (ggml type, row-major shape, stored array, expected f32 values)
    tensors = {}

    x = rng.standard_normal((3, 5)).astype(np.float32)
    tensors["f32"] = (T.F32, x.shape, x, x)
    x = rng.standard_normal((2, 8)).astype(np.float16)
    tensors["f16"] = (T.F16, x.shape, x, x.astype(np.float32))
    x = rng.standard_normal((4, 8)).astype(np.float32)
    q = gguf.quants.quantize(x, T.BF16)
    tensors["bf16"] = (T.BF16, x.shape, q, gguf.quants.dequantize(q, T.BF16))
    x = rng.standard_normal((2, 3))
    tensors["f64"] = (T.F64, x.shape, x, x.astype(np.float32))
    for name, dtype in [("i8", np.int8), ("i16", np.int16), ("i32", np.int32), ("i64", np.int64)]:
        info = np.iinfo(dtype)
        x = rng.integers(max(info.min, -(1 << 20)), min(info.max, 1 << 20), size=(2, 4), dtype=dtype)
        x[0, 0], x[0, 1] = max(info.min, -(1 << 20)), min(info.max, 1 << 20)
        tensors[name] = ({"i8": T.I8, "i16": T.I16, "i32": T.I32, "i64": T.I64}[name], x.shape, x,
                         x.astype(np.float32))

    for qtype in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.MXFP4]:
        x = rng.standard_normal((3, 64)).astype(np.float32)
        x[0, :32] = 0.0  # an all-zero block
        q = gguf.quants.quantize(x, qtype)
        tensors[qtype.name.lower()] = (qtype, x.shape, q, gguf.quants.dequantize(q, qtype))
    for qtype in [T.TQ1_0, T.TQ2_0]:
        x = rng.standard_normal((2, 256)).astype(np.float32)
        q = gguf.quants.quantize(x, qtype)
        tensors[qtype.name.lower()] = (qtype, x.shape, q, gguf.quants.dequantize(q, qtype))

    # Block formats gguf-py only dequantizes: random bytes with finite scales.
    f16_fields = {
        T.Q2_K: [80, 82],
        T.Q3_K: [108],
        T.Q4_K: [0, 2],
        T.Q5_K: [0, 2],
        T.Q6_K: [208],
        T.IQ4_NL: [0],
        T.IQ4_XS: [0],
    }
    for qtype, fields in f16_fields.items():
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = 2, 2 * max(block_size, 256)
        blocks = random_blocks(qtype, rows * cols // block_size, fields)
        q = blocks.reshape(rows, cols // block_size * type_size)
        tensors[qtype.name.lower()] = (qtype, (rows, cols), q, gguf.quants.dequantize(q, qtype))

    x = rng.standard_normal((2, 64)).astype(np.float32)
    blocks = quantize_q8_1(x)
    tensors["q8_1"] = (T.Q8_1, x.shape, blocks.reshape(2, -1),
                       q_dequant_d_times_q(blocks, np.float16, 4).reshape(x.shape))
    x = rng.standard_normal((2, 512)).astype(np.float32)
    blocks = quantize_q8_k(x)
    tensors["q8_k"] = (T.Q8_K, x.shape, blocks.reshape(2, -1),
                       q_dequant_d_times_q(blocks, np.float32, 4).reshape(x.shape))

    w = gguf.GGUFWriter(OUT / "quants.gguf", "fixture")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4_000_000_000)
    w.add_int32("test.i32", -2_000_000_000)
    w.add_float32("test.f32", 0.1)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo, GGUF ✓")
    w.add_uint64("test.u64", 18_000_000_000_000_000_000)
    w.add_int64("test.i64", -9_000_000_000_000_000_000)
    w.add_float64("test.f64", 0.1)
    arrays = {
        V.UINT8: [0, 1, 255], V.INT8: [-128, 0, 127], V.UINT16: [0, 65535], V.INT16: [-32768, 7],
        V.UINT32: [1, 2, 3], V.INT32: [-1, 0, 1], V.FLOAT32: [0.5, -1.25, 3.0],
        V.BOOL: [True, False, True], V.STRING: ["a", "", "ünïcode"], V.UINT64: [1 << 63],
        V.INT64: [-(1 << 63), (1 << 63) - 1], V.FLOAT64: [1e300, -2.5],
    }
    for vtype, values in arrays.items():
        w.add_key_value(f"test.array.{vtype.name.lower()}", values, V.ARRAY, sub_type=vtype)
    w.add_key_value("test.array.nested", [[1, 2, 3], [4], [5, 6]], V.ARRAY)
    w.add_key_value("test.array.nested_str", [["x", "y"], ["z"]], V.ARRAY)
    for name, (qtype, shape, stored, _) in tensors.items():
        if qtype == T.Q8_1:
            # gguf-py sizes Q8_1 as 40 bytes (ggml: 36); give the shape so it is not derived.
            w.add_tensor(name, stored.view(np.int8), raw_shape=shape, raw_dtype=qtype)
        elif stored.dtype == np.uint8:
            w.add_tensor(name, stored, raw_dtype=qtype)
        else:
            w.add_tensor(name, stored)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    w = gguf.GGUFWriter(OUT / "quants_expected.gguf", "fixture")
    w.add_custom_alignment(64)
    for name, (qtype, shape, _, expected) in tensors.items():
        expected = np.asarray(expected, dtype=np.float32).reshape(shape)
        assert np.isfinite(expected).all(), name
        w.add_tensor(name, expected)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for f in sorted(OUT.iterdir()):
        print(f"{f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
