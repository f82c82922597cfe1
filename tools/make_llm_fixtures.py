#!/usr/bin/env python3
"""Write the fixtures of tensor-models/tests/llm_parity.rs with PyTorch + transformers.

    $TORCH_PY tools/make_llm_fixtures.py      # python3 with torch, transformers 5, safetensors, gguf

Outputs, in tensor-models/tests/fixtures/llm/ (never edit them by hand; rerun this script):

* `<family>/config.json`, `<family>/model.safetensors`: a tiny random-weight model of each
  family (`transformers` `save_pretrained`: llama (with llama3 rope scaling), mistral (sliding
  window), qwen2 (qkv bias, tied head), qwen3 (q/k norm, explicit head_dim), gemma, gemma2
  (soft-capping, alternating sliding layers), gemma3 (q/k norm, local rope base, linear-scaled
  global rope, query_pre_attn_scalar != head_dim), phi3 (fused qkv/gate_up, partial rotary), mixtral (4 experts, top-2), gpt2.
  Weights are re-drawn at unit scale so masks, windows and caps visibly change the logits.
* `<family>/reference.safetensors`: `input_ids` (i64 `[2, L]`) and the f32 `logits`
  (`[2, L, vocab]`) of the model on them, eager attention, no padding.
* `<family>/model.gguf` for llama, qwen2, gemma2 and gpt2: the same weights written with the
  `gguf` package the way llama.cpp's `convert_hf_to_gguf.py` does (tensor names, metadata, the
  q/k row permutation of llama-family models, Llama 3.1 scaling as a `rope_freqs` tensor,
  Gemma's `norm + 1`, GPT-2's transposed Conv1D), f32 tensors; the reference logits are the
  HF model's.
* `gpt2_bin/`: the gpt2 model as `config.json` + `pytorch_model.bin` (`torch.save`).
* `smollm2_reference.json`: if the real SmolLM2-135M-Instruct Q4_1 GGUF is in the model cache
  (`scripts/fetch-models.sh smollm2`), the ids of a short prompt and, for the last position,
  the top-20 token ids and logits plus the first 64 logits of every position, computed by
  `transformers` from the GGUF (`from_pretrained(dir, gguf_file=...)`, which dequantizes).
"""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import gguf
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config

OUT = Path(__file__).resolve().parent.parent / "tensor-models" / "tests" / "fixtures" / "llm"
VOCAB = 128
SEQ = 12

COMMON = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

FAMILIES = {
    "llama": dict(
        model_type="llama",
        tie_word_embeddings=False,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=10000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    "mistral": dict(model_type="mistral", sliding_window=4),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", head_dim=16),
    "gemma": dict(model_type="gemma", head_dim=16),
    "gemma2": dict(
        model_type="gemma2",
        head_dim=16,
        query_pre_attn_scalar=16,  # llama.cpp's converter requires = head_dim
        attn_logit_softcapping=2.0,
        final_logit_softcapping=5.0,
        sliding_window=4,
    ),
    "gemma3": dict(
        model_type="gemma3_text",
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "full_attention": dict(rope_type="linear", factor=2.0, rope_theta=1000000.0),
            "sliding_attention": dict(rope_type="default", rope_theta=10000.0),
        },
    ),
    "phi3": dict(
        model_type="phi3",
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5),
    ),
    "mixtral": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
    "gpt2": None,
}

GGUF_FAMILIES = ["llama", "qwen2", "gemma2", "gpt2"]


def make_config(name, spec):
    if spec is None:
        return GPT2Config(
            n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
            bos_token_id=1, eos_token_id=2,
        )
    spec = dict(spec)
    mt = spec.pop("model_type")
    return AutoConfig.for_model(mt, **{**COMMON, **spec})


def randomize(model, gemma):
    """Unit-scale weights: embeddings N(0,1), matrices N(0, 1/fan_in), norms around 1."""
    g = torch.Generator().manual_seed(7)
    for n, p in model.named_parameters():
        if p.ndim == 1:
            base = 0.0 if (gemma or not n.endswith("weight")) else 1.0
            if "ln_" in n and n.endswith("weight"):
                base = 1.0
            p.data = base + 0.2 * torch.randn(p.shape, generator=g)
        elif "embed" in n or ".wte." in n or ".wpe." in n:
            p.data = torch.randn(p.shape, generator=g)
        else:
            fan_in = p.shape[0] if "transformer.h." in n else p.shape[-1]  # GPT-2 Conv1D: [in, out]
            p.data = torch.randn(p.shape, generator=g) / fan_in**0.5


def build(name, spec, seed):
    torch.manual_seed(seed)
    cfg = make_config(name, spec)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    randomize(model, gemma=name.startswith("gemma"))
    model.eval()
    return model


def ids_for(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (2, SEQ), generator=g, dtype=torch.int64)


# ---- GGUF export, mirroring llama.cpp's convert_hf_to_gguf.py ----------------------------------

def permute(w, n_head, n_head_kv):
    """LlamaModel.permute: HF rotate-half rows -> llama.cpp's interleaved rope rows."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(rp, dim):
    """LlamaModel.generate_extra_tensors: Llama 3.1 scaling as per-frequency divisors."""
    base = rp["rope_theta"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rp.get("factor", 8.0)
    low, high = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    old = rp.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


LAYER_MAP = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}

GPT2_MAP = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}


def gguf_name(arch, hf):
    if arch == "gpt2":
        hf = hf.removeprefix("transformer.")
        top = {"wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
               "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias"}
        if hf in top:
            return top[hf]
        _, bid, rest = hf.split(".", 2)
        part, kind = rest.rsplit(".", 1)
        return f"blk.{bid}.{GPT2_MAP[part]}.{kind}"
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, bid, rest = hf.split(".", 3)
    part, kind = rest.rsplit(".", 1)
    if part == "post_attention_layernorm":
        new = "post_attention_norm" if arch in ("gemma2", "gemma3") else "ffn_norm"
    else:
        new = LAYER_MAP[part]
    return f"blk.{bid}.{new}.{kind}"


def write_gguf(name, model, path):
    cfg = model.config
    arch = cfg.model_type
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{name}")
    if arch == "gpt2":
        w.add_block_count(cfg.n_layer)
        w.add_context_length(cfg.n_positions)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    else:
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        rp = cfg.rope_parameters
        w.add_rope_freq_base(rp["rope_theta"])
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
        if arch == "gemma2":
            if cfg.query_pre_attn_scalar != head_dim:
                raise ValueError("query_pre_attn_scalar must be equal to n_embd_head_k")
            w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
            w.add_sliding_window(cfg.sliding_window)
        if rp.get("rope_type") == "llama3":
            w.add_tensor("rope_freqs.weight", llama3_rope_factors(rp, head_dim))
    w.add_vocab_size(VOCAB)
    # A minimal byte-level tokenizer so that the file is complete.
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"<t{i}>" for i in range(VOCAB)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    sd = model.state_dict()
    tied = getattr(cfg, "tie_word_embeddings", False)
    n_head = cfg.num_attention_heads if arch != "gpt2" else cfg.n_head
    n_kv = cfg.num_key_value_heads if arch != "gpt2" else cfg.n_head
    for hf, t in sd.items():
        if tied and hf == "lm_head.weight":
            continue
        if hf.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        data = t.detach().to(torch.float32).numpy().copy()
        if arch == "llama":
            if hf.endswith("q_proj.weight"):
                data = permute(data, n_head, n_head)
            elif hf.endswith("k_proj.weight"):
                data = permute(data, n_head, n_kv)
        if arch.startswith("gemma") and hf.endswith("norm.weight"):
            data = data + 1.0
        if arch == "gpt2" and hf.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            data = data.T.copy()
        w.add_tensor(gguf_name(arch, hf), data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- the real model -------------------------------------------------------------------------

def smollm2_reference():
    cache = Path(os.environ.get("TENSOR_ENGINE_CACHE", Path.home() / ".cache" / "tensor-engine"))
    path = cache / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        print(f"note: {path} is absent (scripts/fetch-models.sh smollm2); smollm2_reference.json kept")
        return
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    last = logits[-1]
    top = torch.topk(last, 20)
    ref = {
        "file": path.name,
        "input_ids": ids,
        "top20_ids": top.indices.tolist(),
        "top20_logits": [float(x) for x in top.values],
        "first64": [[float(x) for x in row[:64]] for row in logits],
    }
    (OUT / "smollm2_reference.json").write_text(json.dumps(ref) + "\n")
    print("smollm2 reference: top ids", ref["top20_ids"][:5])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (name, spec) in enumerate(FAMILIES.items()):
        model = build(name, spec, 100 + i)
        ids = ids_for(200 + i)
        with torch.no_grad():
            logits = model(ids).logits.float().contiguous()
        d = OUT / name
        shutil.rmtree(d, ignore_errors=True)
        model.save_pretrained(d, safe_serialization=True)
        (d / "generation_config.json").unlink(missing_ok=True)
        save_file({"input_ids": ids.contiguous(), "logits": logits}, str(d / "reference.safetensors"))
        if name in GGUF_FAMILIES:
            write_gguf(name, model, d / "model.gguf")
        if name == "gpt2":
            # The same weights as a PyTorch checkpoint (torch.save of the state dict).
            b = OUT / "gpt2_bin"
            shutil.rmtree(b, ignore_errors=True)
            b.mkdir()
            shutil.copy(d / "config.json", b / "config.json")
            torch.save(model.state_dict(), b / "pytorch_model.bin")
        print(f"{name}: logits {tuple(logits.shape)} |max| {logits.abs().max():.3f}")
    smollm2_reference()
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"total fixture size: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
