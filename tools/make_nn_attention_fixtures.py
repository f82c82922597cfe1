#!/usr/bin/env python3
"""Write the PyTorch/transformers parity fixtures of tensor-nn's attention, RoPE, positional
embeddings and transformer blocks.

What it makes: one JSON file per case in ``tensor-nn/tests/fixtures/attention/<case>.json``,
read by tensor-nn/tests/attention_parity.rs. Every file has

    "case": name, "kind": "attention" | "block" | "rope" | "sinusoidal",
    "reference": what the values were computed with (for humans),
    "config": the module's options (see below)

and, for the kinds with a forward and backward pass ("attention", "block"):

    "inputs": {"x": tensor, "memory": tensor, "mask": keep-mask, "memory_mask": keep-mask},
    "params": {state_dict name: tensor},   # our names = Hugging Face's
    "gy": tensor,                          # the upstream gradient of the output
    "output": tensor,
    "grads": {name: tensor}                # d<output·gy>/d<input or parameter>

"rope" cases hold transformers' ``inv_freq``, ``attention_factor`` and the cos/sin tables
``[L, rotary_dim/2]`` that its rotary-embedding module produces for positions 0..L (float32,
as transformers computes them); "sinusoidal" cases hold the PyTorch-tutorial table.

A tensor is ``{"shape": [...], "data": [row-major values]}`` plus ``"dtype": "u8"`` for masks
(1 = attend, the Hugging Face convention; ``nn.MultiheadAttention``'s key_padding_mask is its
negation). Float tensors are float64.

The references: ``torch.nn.MultiheadAttention`` (self-, causal and cross-attention with
key_padding_mask; its packed ``in_proj_weight`` is split into q/k/v), a hand-written float64
attention (GQA via HF ``repeat_kv``, HF ``rotate_half`` or GPT-J interleaved RoPE with the
scaling variants, sliding windows, ALiBi with BLOOM's slopes, q/k RMSNorm) for the options
``nn.MultiheadAttention`` lacks, transformers' ``ROPE_INIT_FUNCTIONS`` and
``LlamaRotaryEmbedding`` for the RoPE tables, and transformers' ``LlamaDecoderLayer``,
``Qwen3DecoderLayer``, ``BartEncoderLayer`` and ``BartDecoderLayer`` (eager attention) for
the blocks; the Llama/Qwen3 RMSNorm and eager-attention softmax are patched to stay in
float64 (transformers computes both in float32 whatever the input dtype; same formulas). The float64 RoPE frequencies the hand-written reference and the decoder layers
use are checked here against transformers' float32 ones.

Everything runs in float64 on the CPU, single-threaded, with values drawn from
``torch.manual_seed(crc32(case name))``, so re-running gives byte-identical files and adding a
case does not change the others. Files not produced by this script are deleted from the
fixture folder.

How to run (from the repository root, with a python that has torch and transformers; neither
is a dependency of the repository and CI never runs this script):

    python tools/make_nn_attention_fixtures.py

Then update ``CASES`` in tensor-nn/tests/attention_parity.rs (a test there checks that both
lists agree) and run ``cargo test -p tensor-nn --test attention_parity``. Never hand-edit the
fixtures: change this script and re-run it.
"""

import json
import math
import sys
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import BartConfig, LlamaConfig, Qwen3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.bart.modeling_bart import BartDecoderLayer, BartEncoderLayer
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.models.qwen3 import modeling_qwen3
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RMSNorm

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tensor-nn" / "tests" / "fixtures" / "attention"
MAX_BYTES = 100_000
F64 = torch.float64

CASES = []


def case(name, kind, reference):
    def register(build):
        CASES.append((name, kind, reference, build))
        return build

    return register


def randn(*shape, scale=1.0):
    return torch.randn(*shape, dtype=F64) * scale


def keep_mask(b, lk, padded):
    """[b, lk] keep-mask with the last `padded[i]` positions of row i masked."""
    m = torch.ones(b, lk, dtype=torch.bool)
    for i, p in enumerate(padded):
        if p:
            m[i, lk - p :] = False
    return m


# ---- RoPE frequencies in float64 ----------------------------------------------------------------


def inv_freq_f64(rope, seq_len=None):
    """(inv_freq, attention_factor) in float64, the formulas of transformers'
    modeling_rope_utils.py (checked against it in `check_rope_f64`)."""
    dim, base = rope["rotary_dim"], rope["theta"]
    s = rope["scaling"] or {"rope_type": "default"}
    kind = s["rope_type"]
    exps = torch.arange(0, dim, 2, dtype=F64) / dim
    inv = 1.0 / base**exps
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / s["factor"], 1.0
    if kind == "llama3":
        old = s["original_max_position_embeddings"]
        lo, hi, fac = s["low_freq_factor"], s["high_freq_factor"], s["factor"]
        wavelen = 2 * math.pi / inv
        out = torch.where(wavelen > old / lo, inv / fac, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / fac + smooth * out
        medium = ~(wavelen < old / hi) * ~(wavelen > old / lo)
        return torch.where(medium, smoothed, out), 1.0
    if kind == "yarn":
        fac, orig = s["factor"], s["original_max_position_embeddings"]
        mscale = lambda sc, m=1.0: 1.0 if sc <= 1 else 0.1 * m * math.log(sc) + 1.0
        if s.get("attention_factor") is not None:
            af = s["attention_factor"]
        elif s.get("mscale") and s.get("mscale_all_dim"):
            af = mscale(fac, s["mscale"]) / mscale(fac, s["mscale_all_dim"])
        else:
            af = mscale(fac)
        corr = lambda rot: dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))
        low, high = corr(s.get("beta_fast") or 32), corr(s.get("beta_slow") or 1)
        if s.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=F64) - low) / (high - low)).clamp(0, 1)
        extra = 1 - ramp
        return (inv / fac) * (1 - extra) + inv * extra, af
    raise ValueError(kind)


def hf_rope_config(rope, head_dim, max_pos):
    params = dict(rope["scaling"] or {"rope_type": "default"})
    params["rope_theta"] = rope["theta"]
    if rope["rotary_dim"] != head_dim:
        params["partial_rotary_factor"] = rope["rotary_dim"] / head_dim
    if "factor" in params and "original_max_position_embeddings" in params:
        max_pos = int(params["factor"] * params["original_max_position_embeddings"])
    return LlamaConfig(
        hidden_size=head_dim * 2,
        num_attention_heads=2,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters=params,
    )


def check_rope_f64(rope, head_dim):
    """The float64 frequencies agree with transformers' float32 ones."""
    kind = (rope["scaling"] or {"rope_type": "default"})["rope_type"]
    ours, af = inv_freq_f64(rope)
    if kind == "default":
        base = rope["theta"]
        dim = rope["rotary_dim"]
        hf = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        hf_af = 1.0
    else:
        hf, hf_af = ROPE_INIT_FUNCTIONS[kind](hf_rope_config(rope, head_dim, 4096), None)
    assert torch.allclose(ours, hf.double(), rtol=1e-6, atol=0), (kind, ours, hf)
    assert abs(af - hf_af) < 1e-12, (kind, af, hf_af)


def cos_sin(rope, positions):
    inv, af = inv_freq_f64(rope)
    ang = positions.double()[:, None] * inv[None, :]
    return ang.cos() * af, ang.sin() * af


def apply_rope(x, rope, offset):
    """x: [B, H, L, D]; rotates the first rotary_dim dims of each head."""
    rot = rope["rotary_dim"]
    cos, sin = cos_sin(rope, torch.arange(offset, offset + x.shape[2]))
    xr, xp = x[..., :rot], x[..., rot:]
    if rope["interleaved"]:  # GPT-J: pairs (2i, 2i+1)
        c, s = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)
        rot_x = torch.stack((-xr[..., 1::2], xr[..., 0::2]), -1).flatten(-2)
    else:  # HF rotate_half
        c, s = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
        h = rot // 2
        rot_x = torch.cat((-xr[..., h:], xr[..., :h]), -1)
    return torch.cat((xr * c + rot_x * s, xp), -1)


# ---- hand-written attention -------------------------------------------------------------------------


def alibi_slopes(n):
    def pow2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return pow2(n)
    closest = 2 ** math.floor(math.log2(n))
    return pow2(closest) + alibi_slopes(2 * closest)[0::2][: n - closest]


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def repeat_kv(t, g):  # HF's
    b, h, l, d = t.shape
    return t[:, :, None].expand(b, h, g, l, d).reshape(b, h * g, l, d)


def reference_attention(t, cfg):
    x = t["x"]
    b, lq, _ = x.shape
    h, hkv, d = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
    cross = cfg["cross"]
    src = t["memory"] if cross else x
    lk = src.shape[1]
    p = lambda n: t.get(n)
    q = F.linear(x, t["q_proj.weight"], p("q_proj.bias"))
    k = F.linear(src, t["k_proj.weight"], p("k_proj.bias"))
    v = F.linear(src, t["v_proj.weight"], p("v_proj.bias"))
    qk = cfg["qk_norm"]
    if qk == "full":
        q, k = rms(q, t["q_norm.weight"], cfg["qk_eps"]), rms(k, t["k_norm.weight"], cfg["qk_eps"])
    q, k, v = q.view(b, lq, h, d), k.view(b, lk, hkv, d), v.view(b, lk, hkv, d)
    if qk == "per_head":
        q, k = rms(q, t["q_norm.weight"], cfg["qk_eps"]), rms(k, t["k_norm.weight"], cfg["qk_eps"])
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if cfg["rope"] and not cross:
        q, k = apply_rope(q, cfg["rope"], cfg["offset"]), apply_rope(k, cfg["rope"], cfg["offset"])
    k, v = repeat_kv(k, h // hkv), repeat_kv(v, h // hkv)
    scale = cfg["softmax_scale"] or d**-0.5
    s = q @ k.transpose(-1, -2) * scale
    i = torch.arange(lq)[:, None] + (lk - lq)
    j = torch.arange(lk)[None, :]
    hidden = torch.zeros(lq, lk, dtype=torch.bool)
    if not cross:
        if cfg["causal"]:
            hidden |= j > i
        if cfg["sliding_window"]:
            hidden |= (i - j).abs() >= cfg["sliding_window"]
        if cfg["alibi"]:
            slopes = torch.tensor(alibi_slopes(h), dtype=F64)
            s = s + slopes[:, None, None] * (j - i).double()
    s = s.masked_fill(hidden, float("-inf"))
    if "mask" in t:
        s = s.masked_fill(~t["mask"][:, None, None, :], float("-inf"))
    out = torch.softmax(s, -1) @ v
    return F.linear(out.transpose(1, 2).reshape(b, lq, h * d), t["o_proj.weight"], p("o_proj.bias"))


def attn_config(dim, h, hkv, d, **kw):
    cfg = dict(
        dim=dim, num_heads=h, num_kv_heads=hkv, head_dim=d, kv_dim=None, qkv_bias=False,
        out_bias=False, causal=False, sliding_window=None, alibi=False, qk_norm=None,
        qk_eps=1e-6, softmax_scale=None, rope=None, offset=0, cross=False,
    )
    cfg.update(kw)
    return cfg


def rope_cfg(theta, rotary_dim, interleaved=False, scaling=None, max_pos=64):
    return dict(theta=theta, rotary_dim=rotary_dim, interleaved=interleaved, scaling=scaling,
                max_position_embeddings=max_pos)


def attn_params(cfg):
    dim, h, hkv, d = cfg["dim"], cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
    kvd = cfg["kv_dim"] or dim
    ps = {
        "q_proj.weight": randn(h * d, dim, scale=dim**-0.5),
        "k_proj.weight": randn(hkv * d, kvd, scale=kvd**-0.5),
        "v_proj.weight": randn(hkv * d, kvd, scale=kvd**-0.5),
        "o_proj.weight": randn(dim, h * d, scale=(h * d) ** -0.5),
    }
    if cfg["qkv_bias"]:
        ps.update({"q_proj.bias": randn(h * d, scale=0.3), "k_proj.bias": randn(hkv * d, scale=0.3),
                   "v_proj.bias": randn(hkv * d, scale=0.3)})
    if cfg["out_bias"]:
        ps["o_proj.bias"] = randn(dim, scale=0.3)
    if cfg["qk_norm"]:
        qd, kd = (d, d) if cfg["qk_norm"] == "per_head" else (h * d, hkv * d)
        ps["q_norm.weight"] = 1 + randn(qd, scale=0.2)
        ps["k_norm.weight"] = 1 + randn(kd, scale=0.2)
    return ps


def hand_case(cfg, b, lq, lk=None, padded=None, grads_memory=True):
    """A hand-written-reference attention case."""
    if cfg["rope"]:
        check_rope_f64(cfg["rope"], cfg["head_dim"])
    params = attn_params(cfg)
    inputs = {"x": randn(b, lq, cfg["dim"])}
    if cfg["cross"]:
        inputs["memory"] = randn(b, lk, cfg["kv_dim"] or cfg["dim"])
    if padded:
        inputs["mask"] = keep_mask(b, lk if cfg["cross"] else lq, padded)
    diff = ["x"] + (["memory"] if cfg["cross"] else []) + list(params)
    return dict(config=cfg, inputs=inputs, params=params, diff=diff,
                fn=lambda t: reference_attention(t, cfg))


# ---- attention cases ------------------------------------------------------------------------------


def torch_mha_case(cfg, b, lq, lk, padded, causal):
    e, h = cfg["dim"], cfg["num_heads"]
    kd = cfg["kv_dim"]
    mha = torch.nn.MultiheadAttention(e, h, bias=True, batch_first=True, kdim=kd, vdim=kd, dtype=F64)
    with torch.no_grad():
        for prm in mha.parameters():
            prm.copy_(randn(*prm.shape, scale=0.4))
    x = randn(b, lq, e)
    cross = cfg["cross"]
    memory = randn(b, lk, kd or e) if cross else None
    keep = keep_mask(b, lk if cross else lq, padded)
    attn_mask = torch.triu(torch.ones(lq, lq, dtype=torch.bool), 1) if causal else None

    def names():  # our parameter name -> (module parameter, slice of it)
        if mha._qkv_same_embed_dim:
            w = [(mha.in_proj_weight, slice(i * e, (i + 1) * e)) for i in range(3)]
        else:
            w = [(mha.q_proj_weight, slice(None)), (mha.k_proj_weight, slice(None)),
                 (mha.v_proj_weight, slice(None))]
        out = {}
        for n, (prm, sl) in zip("qkv", w):
            out[f"{n}_proj.weight"] = (prm, sl)
            out[f"{n}_proj.bias"] = (mha.in_proj_bias, slice("qkv".index(n) * e, ("qkv".index(n) + 1) * e))
        out["o_proj.weight"] = (mha.out_proj.weight, slice(None))
        out["o_proj.bias"] = (mha.out_proj.bias, slice(None))
        return out

    mapping = names()
    params = {n: prm.detach()[sl].clone() for n, (prm, sl) in mapping.items()}
    inputs = {"x": x, "mask": keep}
    if cross:
        inputs["memory"] = memory

    def run(gy):
        xs = x.clone().requires_grad_(True)
        mem = memory.clone().requires_grad_(True) if cross else xs
        y, _ = mha(xs, mem, mem, key_padding_mask=~keep, attn_mask=attn_mask, need_weights=False)
        if gy is None:
            return y
        leaves = [xs] + ([mem] if cross else []) + list(dict.fromkeys(p for p, _ in mapping.values()))
        grads = torch.autograd.grad(y, leaves, gy)
        by_leaf = dict(zip(map(id, leaves), grads))
        g = {"x": grads[0]}
        if cross:
            g["memory"] = grads[1]
        for n, (prm, sl) in mapping.items():
            g[n] = by_leaf[id(prm)][sl]
        return y, g

    return dict(config=cfg, inputs=inputs, params=params, run=run)


@case("mha_self_padding", "attention", "nn.MultiheadAttention(8, 2, batch_first=True)(x, x, x, key_padding_mask)")
def _():
    return torch_mha_case(attn_config(8, 2, 2, 4, qkv_bias=True, out_bias=True), 2, 5, 5, [0, 2], False)


@case("mha_self_causal_padding", "attention",
      "nn.MultiheadAttention(8, 2, batch_first=True)(x, x, x, key_padding_mask, attn_mask=triu causal)")
def _():
    cfg = attn_config(8, 2, 2, 4, qkv_bias=True, out_bias=True, causal=True)
    return torch_mha_case(cfg, 2, 6, 6, [1, 0], True)


@case("mha_cross_kdim", "attention",
      "nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True)(x, mem, mem, key_padding_mask)")
def _():
    cfg = attn_config(8, 2, 2, 4, kv_dim=6, qkv_bias=True, out_bias=True, cross=True)
    return torch_mha_case(cfg, 2, 4, 7, [3, 0], False)


@case("gqa_cross_padding", "attention", "hand-written GQA cross-attention (4 q heads, 2 kv heads), memory mask")
def _():
    cfg = attn_config(12, 4, 2, 3, kv_dim=10, qkv_bias=True, cross=True)
    return hand_case(cfg, 2, 3, lk=5, padded=[0, 2])


@case("gqa_rope_qwen2", "attention", "hand-written causal GQA (4/2 heads), qkv bias, HF rotate_half RoPE theta 1e4")
def _():
    cfg = attn_config(12, 4, 2, 4, qkv_bias=True, causal=True, rope=rope_cfg(10000.0, 4))
    return hand_case(cfg, 2, 5)


@case("qwen3_qknorm_offset_padding", "attention",
      "hand-written causal GQA with per-head q/k RMSNorm (Qwen3), RoPE theta 1e6 at offset 3, padding")
def _():
    cfg = attn_config(16, 4, 2, 4, causal=True, qk_norm="per_head", rope=rope_cfg(1e6, 4), offset=3)
    return hand_case(cfg, 2, 5, padded=[0, 1])


@case("mqa_window_llama3_interleaved", "attention",
      "hand-written causal MQA (4 q heads, 1 kv head), sliding window 3, GPT-J interleaved RoPE with llama3 scaling")
def _():
    scaling = dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=512)
    cfg = attn_config(12, 4, 1, 6, causal=True, sliding_window=3, out_bias=True,
                      rope=rope_cfg(10000.0, 6, interleaved=True, scaling=scaling))
    return hand_case(cfg, 2, 7)


@case("alibi_full_qknorm_padding", "attention",
      "hand-written causal ALiBi attention (6 heads, BLOOM slopes), whole-projection q/k RMSNorm (OLMo2), padding")
def _():
    cfg = attn_config(12, 6, 6, 2, causal=True, alibi=True, qk_norm="full", qkv_bias=True)
    return hand_case(cfg, 2, 6, padded=[2, 0])


@case("partial_yarn_window_scale", "attention",
      "hand-written bidirectional attention, window 4, partial RoPE (4 of 8 dims) with YaRN x4, scale 0.3, offset 5")
def _():
    scaling = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=8)
    cfg = attn_config(10, 2, 2, 8, sliding_window=4, softmax_scale=0.3, offset=5,
                      rope=rope_cfg(10000.0, 4, scaling=scaling))
    return hand_case(cfg, 2, 6)


@case("linear_rope_mha_window_causal", "attention",
      "hand-written causal MHA, window 2, RoPE with linear scaling x2, out bias")
def _():
    cfg = attn_config(8, 2, 2, 4, causal=True, sliding_window=2, out_bias=True,
                      rope=rope_cfg(500.0, 4, scaling=dict(rope_type="linear", factor=2.0)))
    return hand_case(cfg, 1, 5)


# ---- RoPE tables ----------------------------------------------------------------------------------


def rope_case(theta, head_dim, max_pos, seq, params=None, partial=1.0):
    p = dict(params or {"rope_type": "default"})
    p["rope_theta"] = theta
    if partial != 1.0:
        p["partial_rotary_factor"] = partial
    cfg = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                      max_position_embeddings=max_pos, rope_parameters=p)
    emb = LlamaRotaryEmbedding(cfg)
    pos = torch.arange(seq)[None, :]
    cos, sin = emb(torch.zeros(1, dtype=torch.float32), pos)
    half = emb.inv_freq.shape[0]
    return dict(
        config=dict(theta=theta, rotary_dim=2 * half, head_dim=head_dim, scaling=params,
                    max_position_embeddings=max_pos, seq_len=seq),
        tables=dict(inv_freq=emb.inv_freq.double(), cos=cos[0, :, :half].double(),
                    sin=sin[0, :, :half].double()),
        attention_factor=float(emb.attention_scaling),
    )


@case("rope_default", "rope", "LlamaRotaryEmbedding, rope_type default, theta 1e4, head_dim 16")
def _():
    return rope_case(10000.0, 16, 64, 20)


@case("rope_linear_partial", "rope", "LlamaRotaryEmbedding, linear x2, partial_rotary_factor 0.5")
def _():
    return rope_case(10000.0, 16, 64, 20, dict(rope_type="linear", factor=2.0), partial=0.5)


@case("rope_dynamic_short", "rope", "LlamaRotaryEmbedding, dynamic x2, sequence within max_position_embeddings")
def _():
    return rope_case(10000.0, 8, 16, 12, dict(rope_type="dynamic", factor=2.0))


@case("rope_dynamic_long", "rope", "LlamaRotaryEmbedding, dynamic x2, sequence 40 > max_position_embeddings 16")
def _():
    return rope_case(10000.0, 8, 16, 40, dict(rope_type="dynamic", factor=2.0))


@case("rope_llama3", "rope", "LlamaRotaryEmbedding, llama3 (factor 8, low 1, high 4, original 64), theta 5e5")
def _():
    return rope_case(500000.0, 16, 512, 20, dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                  high_freq_factor=4.0, original_max_position_embeddings=64))


@case("rope_yarn", "rope", "LlamaRotaryEmbedding, yarn x4 over an original 16, default betas")
def _():
    return rope_case(10000.0, 16, 64, 20, dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16))


@case("rope_yarn_mscale_notrunc_partial", "rope",
      "LlamaRotaryEmbedding, yarn x8 with mscale 1 / mscale_all_dim 0.7, beta_fast 16, truncate false, partial 0.75")
def _():
    return rope_case(10000.0, 16, 128, 20, dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=16,
                                                 mscale=1.0, mscale_all_dim=0.7, beta_fast=16.0, truncate=False),
                     partial=0.75)


def _longrope(seq):
    g = torch.Generator().manual_seed(1)
    short = (1 + torch.rand(4, generator=g, dtype=F64)).tolist()
    long = (2 + 3 * torch.rand(4, generator=g, dtype=F64)).tolist()
    return rope_case(10000.0, 8, 64, seq, dict(rope_type="longrope", short_factor=short, long_factor=long,
                                                original_max_position_embeddings=16))


@case("rope_longrope_short", "rope", "LlamaRotaryEmbedding, longrope (Phi-3), sequence 12 within the original 16")
def _():
    return _longrope(12)


@case("rope_longrope_long", "rope", "LlamaRotaryEmbedding, longrope (Phi-3), sequence 40 beyond the original 16")
def _():
    return _longrope(40)


@case("sinusoidal", "sinusoidal", "the PyTorch tutorial's PositionalEncoding table (max_len 12, d_model 6)")
def _():
    max_len, d = 12, 6
    position = torch.arange(max_len, dtype=F64).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2, dtype=F64) * (-math.log(10000.0) / d))
    pe = torch.zeros(max_len, d, dtype=F64)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return dict(config=dict(max_positions=max_len, dim=d), tables=dict(table=pe))


# ---- transformer blocks ---------------------------------------------------------------------------


def randomize(module):
    with torch.no_grad():
        for n, prm in module.named_parameters():
            if "norm" in n and n.endswith("weight"):
                prm.copy_(1 + randn(*prm.shape, scale=0.2))
            else:
                prm.copy_(randn(*prm.shape, scale=prm.shape[-1] ** -0.5 if prm.dim() > 1 else 0.2))


def additive(keep_q_k):
    """Bool [B, 1, Lq, Lk] 'may attend' → the additive float mask eager attention takes."""
    return torch.zeros(keep_q_k.shape, dtype=F64).masked_fill(~keep_q_k, float("-inf"))


def module_case(module, cfg, inputs, call, diff_inputs):
    module = module.double().eval()
    randomize(module)
    params = {n: p.detach().clone() for n, p in module.named_parameters()}

    def run(gy):
        live = {k: (v.clone().requires_grad_(True) if k in diff_inputs else v) for k, v in inputs.items()}
        y = call(module, live)
        if gy is None:
            return y
        names = list(diff_inputs) + list(params)
        leaves = [live[k] for k in diff_inputs] + [dict(module.named_parameters())[n] for n in params]
        return y, dict(zip(names, torch.autograd.grad(y, leaves, gy)))

    return dict(config=cfg, inputs=inputs, params=params, run=run)


def _rms_norm_in_input_dtype(self, hidden_states):
    """transformers' RMSNorm without its float32 round trip (which would cap a float64
    reference at float32 accuracy); the same formula otherwise."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _eager_attention_in_input_dtype(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' Llama/Qwen3 eager attention with the softmax in the input dtype (it
    computes it in float32); the same formula otherwise."""
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = torch.softmax(attn_weights, dim=-1)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


LlamaRMSNorm.forward = _rms_norm_in_input_dtype
Qwen3RMSNorm.forward = _rms_norm_in_input_dtype
modeling_llama.eager_attention_forward = _eager_attention_in_input_dtype
modeling_qwen3.eager_attention_forward = _eager_attention_in_input_dtype


def decoder_rope_block(layer_cls, config_cls, qk_norm):
    dim, h, hkv, d, hidden, eps = 16, 4, 2, 4, 12, 1e-6
    theta = 10000.0
    hf = config_cls(hidden_size=dim, num_attention_heads=h, num_key_value_heads=hkv, head_dim=d,
                    intermediate_size=hidden, rms_norm_eps=eps, attention_bias=False,
                    rope_parameters={"rope_type": "default", "rope_theta": theta},
                    attn_implementation="eager")
    rope = rope_cfg(theta, d)
    check_rope_f64(rope, d)
    b, l = 2, 5
    cfg = dict(attn=attn_config(dim, h, hkv, d, causal=True, rope=rope, qk_norm=qk_norm, qk_eps=eps),
               cross_attn=None, norm="rms", eps=eps, norm_position="pre", mlp="swiglu",
               hidden_dim=hidden, mlp_bias=False, names="llama")
    keep = keep_mask(b, l, [0, 1])
    inputs = {"x": randn(b, l, dim), "mask": keep}
    cos, sin = cos_sin(rope, torch.arange(l))
    pe = (torch.cat((cos, cos), -1)[None].expand(b, l, d), torch.cat((sin, sin), -1)[None].expand(b, l, d))
    causal = torch.tril(torch.ones(l, l, dtype=torch.bool))
    mask4 = additive(causal[None, None] & keep[:, None, None, :])

    def call(m, t):
        return m(t["x"], attention_mask=mask4, position_ids=torch.arange(l)[None], position_embeddings=pe)

    return module_case(layer_cls(hf, layer_idx=0), cfg, inputs, call, ["x"])


@case("llama_decoder_layer", "block",
      "transformers LlamaDecoderLayer (eager, float64 RoPE tables), GQA 4/2, causal + padding mask")
def _():
    return decoder_rope_block(LlamaDecoderLayer, LlamaConfig, None)


@case("qwen3_decoder_layer", "block",
      "transformers Qwen3DecoderLayer (eager, float64 RoPE tables), per-head q/k RMSNorm, causal + padding mask")
def _():
    return decoder_rope_block(Qwen3DecoderLayer, Qwen3Config, "per_head")


def bart(dim=8, h=2, ffn=12):
    return BartConfig(d_model=dim, encoder_attention_heads=h, decoder_attention_heads=h,
                      encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, dropout=0.0, attention_dropout=0.0,
                      activation_dropout=0.0, activation_function="gelu", attn_implementation="eager")


def bart_cfg(causal, cross):
    attn = attn_config(8, 2, 2, 4, qkv_bias=True, out_bias=True, causal=causal)
    return dict(attn=attn, cross_attn=attn_config(8, 2, 2, 4, qkv_bias=True, out_bias=True, cross=True) if cross else None,
                norm="layer", eps=1e-5, norm_position="post", mlp="gelu", hidden_dim=12, mlp_bias=True,
                names="bart")


@case("bart_encoder_layer", "block", "transformers BartEncoderLayer (eager, post-norm, GELU), padding mask")
def _():
    b, l = 2, 5
    keep = keep_mask(b, l, [2, 0])
    mask4 = additive(keep[:, None, None, :].expand(b, 1, l, l))
    inputs = {"x": randn(b, l, 8), "mask": keep}
    return module_case(BartEncoderLayer(bart()), bart_cfg(False, False), inputs,
                       lambda m, t: m(t["x"], attention_mask=mask4), ["x"])


@case("bart_decoder_layer", "block",
      "transformers BartDecoderLayer (eager, post-norm): causal self-attention, cross-attention with memory mask")
def _():
    b, l, lm = 2, 4, 6
    keep_m = keep_mask(b, lm, [0, 2])
    causal = torch.tril(torch.ones(l, l, dtype=torch.bool))
    self_mask = additive(causal[None, None].expand(b, 1, l, l))
    mem_mask = additive(keep_m[:, None, None, :].expand(b, 1, l, lm))
    inputs = {"x": randn(b, l, 8), "memory": randn(b, lm, 8), "memory_mask": keep_m}
    call = lambda m, t: m(t["x"], attention_mask=self_mask, encoder_hidden_states=t["memory"],
                          encoder_attention_mask=mem_mask, use_cache=False)
    return module_case(BartDecoderLayer(bart(), layer_idx=0), bart_cfg(True, True), inputs, call, ["x", "memory"])


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


def build_fixture(name, kind, reference, build):
    torch.manual_seed(zlib.crc32(name.encode()))
    spec = build()
    parts = [
        f'  "case": {json.dumps(name)}',
        f'  "kind": {json.dumps(kind)}',
        f'  "reference": {json.dumps(reference)}',
        f'  "config": {json.dumps(spec["config"])}',
    ]
    if kind in ("attention", "block"):
        if "run" in spec:
            run = spec["run"]
        else:  # a function of {name: tensor}: differentiate the names in spec["diff"]
            def run(gy, spec=spec):
                live = {k: v.clone() for k, v in {**spec["inputs"], **spec["params"]}.items()}
                for k in spec["diff"]:
                    live[k].requires_grad_(True)
                y = spec["fn"](live)
                if gy is None:
                    return y
                return y, dict(zip(spec["diff"], torch.autograd.grad(y, [live[k] for k in spec["diff"]], gy)))
        y = run(None)
        assert y.dtype == F64 and torch.isfinite(y).all(), f"{name}: bad output"
        gy = torch.randn(y.shape, dtype=F64)
        y, grads = run(gy)
        for g, v in grads.items():
            assert torch.isfinite(v).all(), f"{name}: non-finite gradient of {g}"
        parts += [
            _section("inputs", spec["inputs"]),
            _section("params", spec["params"]),
            f'  "gy": {_tensor(gy)}',
            f'  "output": {_tensor(y.detach())}',
            _section("grads", grads),
        ]
    else:
        parts.append(_section("tables", spec["tables"]))
        if "attention_factor" in spec:
            parts.append(f'  "attention_factor": {_num(spec["attention_factor"])}')
    text = "{\n" + ",\n".join(parts) + "\n}\n"
    json.loads(text)  # well-formed
    if len(text) > MAX_BYTES:
        raise SystemExit(f"{name}: fixture is {len(text)} bytes (limit {MAX_BYTES}); use smaller shapes")
    return text


def main():
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    names = [n for n, _, _, _ in CASES]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SystemExit(f"duplicate case names: {sorted(dupes)}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, kind, reference, build in CASES:
        (OUT_DIR / f"{name}.json").write_text(build_fixture(name, kind, reference, build))
    for stale in sorted(OUT_DIR.glob("*.json")):
        if stale.stem not in names:
            stale.unlink()
            print(f"removed stale {stale.name}", file=sys.stderr)
    print(f"wrote {len(CASES)} fixtures to {OUT_DIR.relative_to(ROOT)} "
          f"(torch {torch.__version__}, transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
