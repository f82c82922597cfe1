#!/usr/bin/env python3
"""Write the PyTorch parity fixtures of the conformance suite.

What it makes: one JSON file per case in ``tensor-core/tests/fixtures/ops/<case>.json``:

    {
      "case": name,
      "reference": the torch expression the fixture was computed with (for humans),
      "params": the op's parameters (read by tensor-core/src/conformance/parity.rs),
      "inputs": {name: tensor},   # values before the op ran
      "gy": tensor,               # the fixed upstream gradient of the output
      "output": tensor,           # the op's result
      "grads": {name: tensor},    # d<output·gy>/d<input> by torch autograd, one per differentiable input
      "updated": {name: tensor}   # inputs the op writes in place (batch-norm running stats), after the op
    }

where a tensor is ``{"shape": [...], "data": [row-major values]}`` plus ``"dtype": "i64"`` or
``"u8"`` for index and mask inputs (float tensors are f64 and carry no dtype). Non-finite
values are written as the strings "inf", "-inf" and "nan" (JSON has no literal for them).

Everything is computed in float64 on the CPU, single-threaded, with inputs drawn from
``torch.manual_seed(crc32(case name))``, so re-running gives byte-identical files and adding a
case does not change the others. Files not produced by this script are deleted from the
fixture folder, so the folder always matches this list of cases.

How to run (from the repository root; torch lives in a separate venv and is never a
dependency of the repository; CI never runs this script):

    $TORCH_PY tools/make_op_fixtures.py    # TORCH_PY: the python of a venv that has torch

Then add or remove the matching entries of ``CASES`` in tensor-core/src/conformance/parity.rs
(a unit test there checks that both lists agree) and run the parity group of the conformance
suite, e.g. ``cargo test -p tensor-cpu --test conformance parity``.
Never hand-edit the fixtures: change this script and re-run it.
"""

import json
import math
import sys
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tensor-core" / "tests" / "fixtures" / "ops"
MAX_BYTES = 60_000
F64 = torch.float64

CASES = []


def case(name, reference):
    """Register a case builder. The builder returns a dict with
    inputs: {name: tensor} (float64, or int64 indices / bool masks),
    grads: names of the inputs to differentiate,
    fn: inputs -> output,
    params: dict for the Rust side (optional),
    updated: names of inputs the op mutates in place (optional)."""

    def register(build):
        CASES.append((name, reference, build))
        return build

    return register


def randn(*shape, scale=1.0):
    return torch.randn(*shape, dtype=F64) * scale


def rand(*shape, lo=0.0, hi=1.0):
    return torch.rand(*shape, dtype=F64) * (hi - lo) + lo


def ints(hi, *shape):
    return torch.randint(0, hi, shape, dtype=torch.int64)


# ---- convolutions -----------------------------------------------------------------------------


@case("conv1d", "F.conv1d(x, w, b, stride=2, padding=1, dilation=2, groups=2)")
def _():
    return dict(
        inputs=dict(x=randn(2, 4, 11), w=randn(6, 2, 3), b=randn(6)),
        params=dict(stride=2, padding=1, dilation=2, groups=2),
        grads=["x", "w", "b"],
        fn=lambda t: F.conv1d(t["x"], t["w"], t["b"], stride=2, padding=1, dilation=2, groups=2),
    )


@case("conv2d_s2_p1_d2", "F.conv2d(x, w, b, stride=2, padding=1, dilation=2)")
def _():
    return dict(
        inputs=dict(x=randn(2, 3, 9, 8), w=randn(4, 3, 3, 3), b=randn(4)),
        params=dict(stride=2, padding=1, dilation=2, groups=1),
        grads=["x", "w", "b"],
        fn=lambda t: F.conv2d(t["x"], t["w"], t["b"], stride=2, padding=1, dilation=2),
    )


@case("conv2d_groups2", "F.conv2d(x, w, b, stride=1, padding=1, groups=2)")
def _():
    return dict(
        inputs=dict(x=randn(2, 4, 5, 6), w=randn(6, 2, 3, 3), b=randn(6)),
        params=dict(stride=1, padding=1, dilation=1, groups=2),
        grads=["x", "w", "b"],
        fn=lambda t: F.conv2d(t["x"], t["w"], t["b"], stride=1, padding=1, groups=2),
    )


@case("conv2d_depthwise", "F.conv2d(x, w, b, stride=2, padding=1, groups=4)  # 4 channels, multiplier 2")
def _():
    return dict(
        inputs=dict(x=randn(2, 4, 7, 6), w=randn(8, 1, 3, 3), b=randn(8)),
        params=dict(stride=2, padding=1, dilation=1, groups=4),
        grads=["x", "w", "b"],
        fn=lambda t: F.conv2d(t["x"], t["w"], t["b"], stride=2, padding=1, groups=4),
    )


@case(
    "conv2d_asym",
    "F.conv2d(x, w, None, stride=(2, 1), padding=(0, 2), dilation=(1, 2))  # 2x3 kernel, no bias",
)
def _():
    return dict(
        inputs=dict(x=randn(1, 2, 7, 6), w=randn(3, 2, 2, 3)),
        params=dict(stride=[2, 1], padding=[0, 2], dilation=[1, 2], groups=1),
        grads=["x", "w"],
        fn=lambda t: F.conv2d(t["x"], t["w"], None, stride=(2, 1), padding=(0, 2), dilation=(1, 2)),
    )


@case("conv3d", "F.conv3d(x, w, b, stride=2, padding=1)")
def _():
    return dict(
        inputs=dict(x=randn(1, 2, 5, 6, 4), w=randn(3, 2, 3, 3, 3), b=randn(3)),
        params=dict(stride=2, padding=1, dilation=1, groups=1),
        grads=["x", "w", "b"],
        fn=lambda t: F.conv3d(t["x"], t["w"], t["b"], stride=2, padding=1),
    )


@case(
    "conv_transpose1d",
    "F.conv_transpose1d(x, w, b, stride=2, padding=1, output_padding=1, groups=2)",
)
def _():
    return dict(
        inputs=dict(x=randn(2, 4, 5), w=randn(4, 3, 3), b=randn(6)),
        params=dict(stride=2, padding=1, output_padding=1, dilation=1, groups=2),
        grads=["x", "w", "b"],
        fn=lambda t: F.conv_transpose1d(
            t["x"], t["w"], t["b"], stride=2, padding=1, output_padding=1, groups=2
        ),
    )


@case(
    "conv_transpose2d_d1",
    "F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, dilation=1)",
)
def _():
    return dict(
        inputs=dict(x=randn(2, 4, 3, 4), w=randn(4, 2, 3, 3), b=randn(2)),
        params=dict(stride=2, padding=1, output_padding=1, dilation=1, groups=1),
        grads=["x", "w", "b"],
        fn=lambda t: F.conv_transpose2d(
            t["x"], t["w"], t["b"], stride=2, padding=1, output_padding=1, dilation=1
        ),
    )


@case(
    "conv_transpose2d_d2",
    "F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, dilation=2)",
)
def _():
    return dict(
        inputs=dict(x=randn(1, 3, 4, 3), w=randn(3, 2, 3, 2), b=randn(2)),
        params=dict(stride=2, padding=1, output_padding=1, dilation=2, groups=1),
        grads=["x", "w", "b"],
        fn=lambda t: F.conv_transpose2d(
            t["x"], t["w"], t["b"], stride=2, padding=1, output_padding=1, dilation=2
        ),
    )


# ---- pooling ------------------------------------------------------------------------------------


@case("max_pool1d", "F.max_pool1d(x, 3, stride=2, padding=1)")
def _():
    return dict(
        inputs=dict(x=randn(2, 3, 10)),
        params=dict(kernel=3, stride=2, padding=1),
        grads=["x"],
        fn=lambda t: F.max_pool1d(t["x"], 3, stride=2, padding=1),
    )


@case("max_pool2d", "F.max_pool2d(x, 3, stride=2, padding=1)")
def _():
    return dict(
        inputs=dict(x=randn(2, 3, 7, 6)),
        params=dict(kernel=3, stride=2, padding=1),
        grads=["x"],
        fn=lambda t: F.max_pool2d(t["x"], 3, stride=2, padding=1),
    )


@case("avg_pool1d", "F.avg_pool1d(x, 3, stride=2, padding=1, count_include_pad=True)")
def _():
    return dict(
        inputs=dict(x=randn(2, 3, 10)),
        params=dict(kernel=3, stride=2, padding=1),
        grads=["x"],
        fn=lambda t: F.avg_pool1d(t["x"], 3, stride=2, padding=1, count_include_pad=True),
    )


@case("avg_pool2d", "F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=True)")
def _():
    return dict(
        inputs=dict(x=randn(2, 3, 7, 6)),
        params=dict(kernel=3, stride=2, padding=1),
        grads=["x"],
        fn=lambda t: F.avg_pool2d(t["x"], 3, stride=2, padding=1, count_include_pad=True),
    )


def _adaptive(name, fn, in_hw, out_hw):
    ref = f"F.{fn.__name__}(x, {tuple(out_hw)})  # input {in_hw[0]}x{in_hw[1]}"

    @case(name, ref)
    def _():
        return dict(
            inputs=dict(x=randn(2, 3, *in_hw)),
            params=dict(out=list(out_hw)),
            grads=["x"],
            fn=lambda t: fn(t["x"], tuple(out_hw)),
        )


# 7 -> 3 does not divide (overlapping windows), 6 -> 3 does; 5 -> 4 overlaps heavily.
_adaptive("adaptive_avg_pool2d_7x6_to_3x3", F.adaptive_avg_pool2d, (7, 6), (3, 3))
_adaptive("adaptive_avg_pool2d_5x8_to_4x3", F.adaptive_avg_pool2d, (5, 8), (4, 3))
_adaptive("adaptive_max_pool2d_7x6_to_3x3", F.adaptive_max_pool2d, (7, 6), (3, 3))
_adaptive("adaptive_max_pool2d_5x8_to_4x3", F.adaptive_max_pool2d, (5, 8), (4, 3))


@case("adaptive_avg_pool1d_10_to_4", "F.adaptive_avg_pool1d(x, 4)  # input length 10")
def _():
    return dict(
        inputs=dict(x=randn(2, 3, 10)),
        params=dict(out=4),
        grads=["x"],
        fn=lambda t: F.adaptive_avg_pool1d(t["x"], 4),
    )


@case("adaptive_avg_pool1d_9_to_3", "F.adaptive_avg_pool1d(x, 3)  # input length 9")
def _():
    return dict(
        inputs=dict(x=randn(2, 3, 9)),
        params=dict(out=3),
        grads=["x"],
        fn=lambda t: F.adaptive_avg_pool1d(t["x"], 3),
    )


# ---- normalisation ---------------------------------------------------------------------------


@case("layer_norm_affine", "F.layer_norm(x, (8,), w, b, eps=1e-5)")
def _():
    return dict(
        inputs=dict(x=randn(2, 3, 8, scale=2.0) + 0.5, w=randn(8), b=randn(8)),
        params=dict(eps=1e-5),
        grads=["x", "w", "b"],
        fn=lambda t: F.layer_norm(t["x"], (8,), t["w"], t["b"], eps=1e-5),
    )


@case("layer_norm_plain", "F.layer_norm(x, (8,), None, None, eps=1e-5)")
def _():
    return dict(
        inputs=dict(x=randn(2, 3, 8, scale=2.0) + 0.5),
        params=dict(eps=1e-5),
        grads=["x"],
        fn=lambda t: F.layer_norm(t["x"], (8,), None, None, eps=1e-5),
    )


@case("rms_norm", "F.rms_norm(x, (8,), w, eps=1e-6)")
def _():
    return dict(
        inputs=dict(x=randn(2, 3, 8, scale=2.0) + 0.5, w=randn(8)),
        params=dict(eps=1e-6),
        grads=["x", "w"],
        fn=lambda t: F.rms_norm(t["x"], (8,), t["w"], eps=1e-6),
    )


@case("group_norm", "F.group_norm(x, 2, w, b, eps=1e-5)")
def _():
    return dict(
        inputs=dict(x=randn(2, 6, 4, 3, scale=2.0) + 0.5, w=randn(6), b=randn(6)),
        params=dict(groups=2, eps=1e-5),
        grads=["x", "w", "b"],
        fn=lambda t: F.group_norm(t["x"], 2, t["w"], t["b"], eps=1e-5),
    )


@case(
    "batch_norm_train",
    "F.batch_norm(x, running_mean, running_var, w, b, training=True, momentum=0.1, eps=1e-5)",
)
def _():
    return dict(
        inputs=dict(
            x=randn(4, 3, 2, 3, scale=2.0) + 0.5,
            running_mean=randn(3),
            running_var=rand(3, lo=0.5, hi=1.5),
            w=randn(3),
            b=randn(3),
        ),
        params=dict(training=True, momentum=0.1, eps=1e-5),
        grads=["x", "w", "b"],
        updated=["running_mean", "running_var"],
        fn=lambda t: F.batch_norm(
            t["x"], t["running_mean"], t["running_var"], t["w"], t["b"],
            training=True, momentum=0.1, eps=1e-5,
        ),
    )


@case(
    "batch_norm_eval",
    "F.batch_norm(x, running_mean, running_var, w, b, training=False, eps=1e-5)",
)
def _():
    return dict(
        inputs=dict(
            x=randn(4, 3, 5, scale=2.0) + 0.5,
            running_mean=randn(3),
            running_var=rand(3, lo=0.5, hi=1.5),
            w=randn(3),
            b=randn(3),
        ),
        params=dict(training=False, momentum=0.1, eps=1e-5),
        grads=["x", "w", "b"],
        fn=lambda t: F.batch_norm(
            t["x"], t["running_mean"], t["running_var"], t["w"], t["b"],
            training=False, momentum=0.1, eps=1e-5,
        ),
    )


# ---- softmax family, activations, reductions --------------------------------------------------------


def _softmax(name, log, dim, masked):
    fname = "log_softmax" if log else "softmax"
    ref = f"F.{fname}(x, dim={dim})" + ("  # x has some -inf entries, no row fully masked" if masked else "")

    @case(name, ref)
    def _():
        x = randn(3, 4, 5, scale=2.0)
        if masked:
            # -inf at a fixed scattering of positions; every softmax row along `dim` keeps
            # at least one finite entry.
            m = torch.zeros(3, 4, 5, dtype=torch.bool)
            m[0, 1, 2] = m[0, 3, 0] = m[1, 0, 4] = m[2, 2, 1] = m[2, 2, 3] = True
            x = x.masked_fill(m, -math.inf)
        f = F.log_softmax if log else F.softmax
        return dict(
            inputs=dict(x=x),
            params=dict(dim=dim),
            grads=["x"],
            fn=lambda t: f(t["x"], dim=dim),
        )


_softmax("softmax_last", False, -1, False)
_softmax("softmax_dim1", False, 1, False)
_softmax("softmax_masked", False, -1, True)
_softmax("log_softmax_last", True, -1, False)
_softmax("log_softmax_dim1", True, 1, False)
_softmax("log_softmax_masked", True, -1, True)


def _unary(name, ref, fn, params=None, scale=2.0):
    @case(name, ref)
    def _():
        return dict(
            inputs=dict(x=randn(5, 8, scale=scale)),
            params=params or {},
            grads=["x"],
            fn=lambda t: fn(t["x"]),
        )


_unary("gelu", "F.gelu(x)", F.gelu)
_unary("gelu_tanh", "F.gelu(x, approximate='tanh')", lambda x: F.gelu(x, approximate="tanh"))
_unary("silu", "F.silu(x)", F.silu)
# Scale 12: some inputs exceed torch's threshold of 20, where softplus is the identity.
_unary("softplus", "F.softplus(x)  # beta=1, threshold=20; |x| up to ~30", F.softplus, scale=12.0)
_unary("elu", "F.elu(x, alpha=0.7)", lambda x: F.elu(x, alpha=0.7), params=dict(alpha=0.7))
_unary(
    "leaky_relu",
    "F.leaky_relu(x, negative_slope=0.1)",
    lambda x: F.leaky_relu(x, negative_slope=0.1),
    params=dict(slope=0.1),
)


def _reduce(name, ref, fn, dims, neginf=False):
    @case(name, ref)
    def _():
        x = randn(3, 4, 5, scale=2.0)
        if neginf:
            x[0, 1, 2] = x[1, 2, 0] = x[1, 2, 4] = x[2, 0, 3] = -math.inf
        return dict(
            inputs=dict(x=x),
            params=dict(dims=dims),
            grads=["x"],
            fn=lambda t: fn(t["x"], dims),
        )


_reduce("logsumexp_last", "torch.logsumexp(x, [-1])", lambda x, d: torch.logsumexp(x, d), [-1])
_reduce("logsumexp_dims02", "torch.logsumexp(x, [0, 2])", lambda x, d: torch.logsumexp(x, d), [0, 2])
_reduce(
    "logsumexp_neginf",
    "torch.logsumexp(x, [-1])  # some -inf entries, no row all -inf",
    lambda x, d: torch.logsumexp(x, d),
    [-1],
    neginf=True,
)
_reduce("var_dim1", "torch.var(x, [1], correction=1)", lambda x, d: torch.var(x, d, correction=1), [1])
_reduce("var_dims02", "torch.var(x, [0, 2], correction=1)", lambda x, d: torch.var(x, d, correction=1), [0, 2])
_reduce("std_dim1", "torch.std(x, [1], correction=1)", lambda x, d: torch.std(x, d, correction=1), [1])
_reduce("std_dims02", "torch.std(x, [0, 2], correction=1)", lambda x, d: torch.std(x, d, correction=1), [0, 2])


@case("cumsum_dim1", "torch.cumsum(x, 1)")
def _():
    return dict(inputs=dict(x=randn(3, 4, 5)), params=dict(dim=1), grads=["x"], fn=lambda t: torch.cumsum(t["x"], 1))


@case("cumsum_last", "torch.cumsum(x, -1)")
def _():
    return dict(inputs=dict(x=randn(3, 4, 5)), params=dict(dim=-1), grads=["x"], fn=lambda t: torch.cumsum(t["x"], -1))


# ---- rotary embeddings --------------------------------------------------------------------------


def _rope_tables(seq, half, base=10000.0, offset=3):
    inv = 1.0 / base ** (torch.arange(half, dtype=F64) / half)
    pos = torch.arange(offset, offset + seq, dtype=F64)
    ang = pos[:, None] * inv[None, :]
    return torch.cos(ang), torch.sin(ang)


def _rope_half(x, cos, sin):
    # Hugging Face Llama: x·cos + rotate_half(x)·sin with the tables repeated over both halves.
    h = x.shape[-1] // 2
    c = torch.cat([cos, cos], -1)
    s = torch.cat([sin, sin], -1)
    rot = torch.cat([-x[..., h:], x[..., :h]], -1)
    return x * c + rot * s


def _rope_interleaved(x, cos, sin):
    # GPT-J / GGUF: rotate the pairs (2i, 2i+1) by angle i.
    x1, x2 = x[..., 0::2], x[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    return torch.stack([o1, o2], -1).flatten(-2)


def _rope(name, interleaved):
    ref = (
        "interleaved: out[2i] = x[2i]cos_i - x[2i+1]sin_i, out[2i+1] = x[2i+1]cos_i + x[2i]sin_i"
        if interleaved
        else "rotate-half: x*cat(cos,cos) + cat(-x[D/2:], x[:D/2])*cat(sin,sin)"
    ) + "; x [B,H,L,D], cos/sin [L,D/2] (positions 3.., base 1e4); grads include cos and sin"
    fn = _rope_interleaved if interleaved else _rope_half

    @case(name, ref)
    def _():
        cos, sin = _rope_tables(5, 4)
        return dict(
            inputs=dict(x=randn(2, 3, 5, 8), cos=cos, sin=sin),
            params=dict(interleaved=interleaved),
            grads=["x", "cos", "sin"],
            fn=lambda t: fn(t["x"], t["cos"], t["sin"]),
        )


_rope("rope_half", False)
_rope("rope_interleaved", True)


# ---- attention ------------------------------------------------------------------------------------


def _positions_mask(lq, lk, causal, window):
    """Allowed[i, j] with query i at absolute position lk - lq + i (KV-cache alignment)."""
    pq = torch.arange(lk - lq, lk)[:, None]
    pk = torch.arange(lk)[None, :]
    ok = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        ok &= pk <= pq
    if window is not None:
        ok &= (pq - pk).abs() < window
    return ok


def _alibi_bias(slopes, lq, lk):
    pq = torch.arange(lk - lq, lk, dtype=F64)[:, None]
    pk = torch.arange(lk, dtype=F64)[None, :]
    return slopes[:, None, None] * (pk - pq)[None]  # [H, Lq, Lk]


def _attention(name, ref, b=2, hq=3, hkv=None, lq=4, lk=6, d=8, dv=5, scale=None, causal=False,
               window=None, alibi=False, bias=False, torch_causal=False):
    hkv = hkv or hq
    scale = scale if scale is not None else 1.0 / math.sqrt(d)

    @case(name, ref)
    def _():
        inputs = dict(q=randn(b, hq, lq, d), k=randn(b, hkv, lk, d), v=randn(b, hkv, lk, dv))
        if alibi:
            inputs["alibi_slopes"] = torch.tensor([2.0 ** (-8.0 * (h + 1) / hq) for h in range(hq)], dtype=F64)
        if bias:
            bb = randn(b, 1, lq, lk)
            # Padding-style -inf entries; no row is fully masked.
            bb[0, 0, :, lk - 1] = -math.inf
            bb[1, 0, 1, 0] = bb[1, 0, 2, 3] = -math.inf
            inputs["bias"] = bb

        def fn(t):
            g = hq // hkv
            k = t["k"].repeat_interleave(g, dim=1)
            v = t["v"].repeat_interleave(g, dim=1)
            if torch_causal:
                return F.scaled_dot_product_attention(t["q"], k, v, is_causal=True, scale=scale)
            mask = None
            if causal or window is not None:
                ok = _positions_mask(lq, lk, causal, window)
                mask = torch.zeros(lq, lk, dtype=F64).masked_fill(~ok, -math.inf)
            if alibi:
                a = _alibi_bias(t["alibi_slopes"], lq, lk)
                mask = a if mask is None else a + mask
            if bias:
                mask = t["bias"] if mask is None else t["bias"] + mask
            return F.scaled_dot_product_attention(t["q"], k, v, attn_mask=mask, scale=scale)

        return dict(
            inputs=inputs,
            params=dict(scale=scale, causal=causal or torch_causal, window=window),
            grads=["q", "k", "v"],
            fn=fn,
        )


_attention("attention_plain", "F.scaled_dot_product_attention(q, k, v, scale=0.3)  # Lq 4, Lk 6, Dv 5", scale=0.3)
_attention(
    "attention_causal",
    "F.scaled_dot_product_attention(q, k, v, is_causal=True)  # Lq = Lk = 5",
    lq=5, lk=5, torch_causal=True,
)
_attention(
    "attention_gqa",
    "F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))  # Hq 4, Hkv 2",
    hq=4, hkv=2,
)
_attention(
    "attention_gqa_causal",
    "F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)"
    "  # Hq 4, Hkv 2, Lq = Lk = 5",
    hq=4, hkv=2, lq=5, lk=5, torch_causal=True,
)
_attention(
    "attention_bias",
    "F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # bias [B,1,Lq,Lk] with -inf entries",
    bias=True,
)
_attention(
    "attention_alibi_causal",
    "F.scaled_dot_product_attention(q, k, v, attn_mask=slope_h*(j - i) + causal -inf mask)  # Lq = Lk = 5",
    lq=5, lk=5, causal=True, alibi=True,
)
_attention(
    "attention_alibi_kv_cache",
    "F.scaled_dot_product_attention(q, k, v, attn_mask=slope_h*(j - (Lk-Lq+i)))  # not causal, Lq 3, Lk 7",
    lq=3, lk=7, alibi=True,
)
_attention(
    "attention_window_causal",
    "F.scaled_dot_product_attention(q, k, v, attn_mask=-inf unless 0 <= i-j < 3)  # Lq = Lk = 7, window 3",
    lq=7, lk=7, causal=True, window=3,
)
_attention(
    "attention_window_kv_cache",
    "F.scaled_dot_product_attention(q, k, v, attn_mask=-inf unless |Lk-Lq+i - j| < 3)  # not causal, Lq 3, Lk 7",
    lq=3, lk=7, window=3,
)
_attention(
    "attention_causal_kv_cache",
    "F.scaled_dot_product_attention(q, k, v, attn_mask=-inf where j > Lk-Lq+i)  # Lq 3 < Lk 7",
    lq=3, lk=7, causal=True,
)


# ---- matmul and indexing ------------------------------------------------------------------------


@case("matmul_broadcast", "torch.matmul(a, b)  # a [2,1,3,4], b [3,4,5]")
def _():
    return dict(inputs=dict(a=randn(2, 1, 3, 4), b=randn(3, 4, 5)), grads=["a", "b"], fn=lambda t: t["a"] @ t["b"])


@case("matmul_vec_right", "torch.matmul(a, v)  # a [2,3,4], v [4]")
def _():
    return dict(inputs=dict(a=randn(2, 3, 4), v=randn(4)), grads=["a", "v"], fn=lambda t: t["a"] @ t["v"])


@case("matmul_vec_left", "torch.matmul(v, b)  # v [4], b [2,4,3]")
def _():
    return dict(inputs=dict(v=randn(4), b=randn(2, 4, 3)), grads=["v", "b"], fn=lambda t: t["v"] @ t["b"])


@case("embedding", "F.embedding(ids, table)  # table [7,4], ids [2,5] with repeats")
def _():
    ids = torch.tensor([[1, 3, 3, 6, 0], [2, 1, 1, 1, 5]])
    return dict(
        inputs=dict(table=randn(7, 4), ids=ids), grads=["table"], fn=lambda t: F.embedding(t["ids"], t["table"])
    )


@case("gather_dim1", "torch.gather(x, 1, ids)  # x [2,4,3], ids [2,6,2]")
def _():
    return dict(
        inputs=dict(x=randn(2, 4, 3), ids=ints(4, 2, 6, 2)),
        params=dict(dim=1),
        grads=["x"],
        fn=lambda t: torch.gather(t["x"], 1, t["ids"]),
    )


@case("gather_dim0", "torch.gather(x, 0, ids)  # x [3,5], ids [4,5]")
def _():
    return dict(
        inputs=dict(x=randn(3, 5), ids=ints(3, 4, 5)),
        params=dict(dim=0),
        grads=["x"],
        fn=lambda t: torch.gather(t["x"], 0, t["ids"]),
    )


@case("scatter_add_dim1", "x.scatter_add(1, ids, src)  # x [3,6], ids/src [3,4]")
def _():
    return dict(
        inputs=dict(x=randn(3, 6), ids=ints(6, 3, 4), src=randn(3, 4)),
        params=dict(dim=1),
        grads=["x", "src"],
        fn=lambda t: t["x"].scatter_add(1, t["ids"], t["src"]),
    )


@case("scatter_add_dim0", "x.scatter_add(0, ids, src)  # x [5,3,2], ids/src [4,2,2]")
def _():
    return dict(
        inputs=dict(x=randn(5, 3, 2), ids=ints(5, 4, 2, 2), src=randn(4, 2, 2)),
        params=dict(dim=0),
        grads=["x", "src"],
        fn=lambda t: t["x"].scatter_add(0, t["ids"], t["src"]),
    )


@case("index_select", "torch.index_select(x, 1, ids)  # x [5,3,4], ids [0,2,2,1,0]")
def _():
    return dict(
        inputs=dict(x=randn(5, 3, 4), ids=torch.tensor([0, 2, 2, 1, 0])),
        params=dict(dim=1),
        grads=["x"],
        fn=lambda t: torch.index_select(t["x"], 1, t["ids"]),
    )


@case("masked_fill", "x.masked_fill(mask, -1.5)  # x [2,3,4], mask [3,4] broadcast")
def _():
    return dict(
        inputs=dict(x=randn(2, 3, 4), mask=torch.rand(3, 4) < 0.4),
        params=dict(value=-1.5),
        grads=["x"],
        fn=lambda t: t["x"].masked_fill(t["mask"], -1.5),
    )


@case("where", "torch.where(cond, a, b)  # cond/a [2,3,4], b [3,1] broadcast")
def _():
    return dict(
        inputs=dict(cond=torch.rand(2, 3, 4) < 0.5, a=randn(2, 3, 4), b=randn(3, 1)),
        grads=["a", "b"],
        fn=lambda t: torch.where(t["cond"], t["a"], t["b"]),
    )


# ---- writing --------------------------------------------------------------------------------------


def _num(v):
    if isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, float) and not math.isfinite(v):
        return '"nan"' if math.isnan(v) else ('"inf"' if v > 0 else '"-inf"')
    return repr(v) if isinstance(v, float) else json.dumps(v)


def _tensor(t):
    if t.dtype == torch.bool:
        dtype, data = "u8", [int(v) for v in t.flatten().tolist()]
    elif t.dtype == torch.int64:
        dtype, data = "i64", t.flatten().tolist()
    elif t.dtype == F64:
        dtype, data = None, t.detach().flatten().tolist()
    else:
        raise TypeError(f"unexpected dtype {t.dtype}")
    head = '{"shape": ' + json.dumps(list(t.shape))
    if dtype:
        head += ', "dtype": "' + dtype + '"'
    return head + ', "data": [' + ", ".join(_num(v) for v in data) + "]}"


def _section(name, tensors):
    body = ",\n".join(f'    "{k}": {_tensor(v)}' for k, v in tensors.items())
    return f'  "{name}": {{\n{body}\n  }}' if tensors else f'  "{name}": {{}}'


def _params(p):
    items = ", ".join(f"{json.dumps(k)}: {_param_value(v)}" for k, v in p.items())
    return "{" + items + "}"


def _param_value(v):
    if isinstance(v, list):
        return "[" + ", ".join(_num(x) for x in v) + "]"
    if v is None:
        return "null"
    return _num(v)


def build_fixture(name, reference, build):
    torch.manual_seed(zlib.crc32(name.encode()))
    spec = build()
    inputs = spec["inputs"]
    before = {k: v.clone() for k, v in inputs.items()}
    grad_names = spec["grads"]
    for g in grad_names:
        assert inputs[g].dtype == F64, f"{name}: grad input {g} is not float64"
    live = {k: (v.clone().requires_grad_(True) if k in grad_names else v.clone()) for k, v in inputs.items()}
    y = spec["fn"](live)
    assert y.dtype == F64, f"{name}: output dtype {y.dtype}"
    if "masked" not in name:  # masked log-softmax legitimately outputs -inf
        assert torch.isfinite(y).all(), f"{name}: output not finite"
    gy = torch.randn(y.shape, dtype=F64)
    grads = torch.autograd.grad(y, [live[g] for g in grad_names], gy)
    for g, gr in zip(grad_names, grads):
        assert torch.isfinite(gr).all(), f"{name}: non-finite gradient of {g}"
    updated = {k: live[k].detach() for k in spec.get("updated", [])}
    for k in updated:
        assert not torch.equal(updated[k], before[k]), f"{name}: {k} was not updated"

    parts = [
        f'  "case": {json.dumps(name)}',
        f'  "reference": {json.dumps(reference)}',
        f'  "params": {_params(spec.get("params", {}))}',
        _section("inputs", before),
        f'  "gy": {_tensor(gy)}',
        f'  "output": {_tensor(y.detach())}',
        _section("grads", dict(zip(grad_names, grads))),
        _section("updated", updated),
    ]
    text = "{\n" + ",\n".join(parts) + "\n}\n"
    json.loads(text)  # well-formed
    if len(text) > MAX_BYTES:
        raise SystemExit(f"{name}: fixture is {len(text)} bytes (limit {MAX_BYTES}); use smaller shapes")
    return text


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    names = [n for n, _, _ in CASES]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SystemExit(f"duplicate case names: {sorted(dupes)}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, reference, build in CASES:
        (OUT_DIR / f"{name}.json").write_text(build_fixture(name, reference, build))
    for stale in sorted(OUT_DIR.glob("*.json")):
        if stale.stem not in names:
            stale.unlink()
            print(f"removed stale {stale.name}", file=sys.stderr)
    print(f"wrote {len(CASES)} fixtures to {OUT_DIR.relative_to(ROOT)} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
