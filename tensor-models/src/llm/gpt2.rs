//! GPT-2 in the shared decoder: learned positions, pre-LayerNorm blocks with biases, a plain
//! `gelu_new` MLP and a head tied to the token embedding. What differs from Llama is only
//! configuration and names: Hugging Face stores `Conv1D` weights as `[in, out]` (transposed
//! here) and fuses q/k/v into `attn.c_attn` (sliced here); llama.cpp's GGUF keeps the fused
//! `attn_qkv` but already transposed.

use tensor_core::Result;
use tensor_nn::transformer::NormKind;
use tensor_nn::Activation;

use super::config::{
    cfg_err, dedup_in_order, Family, FfnKind, GgufMeta, Json, LlmConfig, TokenIds,
};
use super::weights::{layer_part, split_kind, Candidate, Plan, Step};

fn base(
    arch: &str,
    hidden: usize,
    layers: usize,
    heads: usize,
    ff: usize,
    ctx: usize,
) -> LlmConfig {
    LlmConfig {
        architecture: arch.to_string(),
        family: Family::Gpt2,
        vocab_size: 0,
        hidden_size: hidden,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim: hidden.checked_div(heads).unwrap_or(0),
        intermediate_size: ff,
        context_length: ctx,
        norm: NormKind::LayerNorm {
            eps: 1e-5,
            bias: true,
        },
        ffn: FfnKind::Plain(Activation::GeluTanh),
        mlp_bias: true,
        qkv_bias: true,
        o_bias: true,
        qk_norm: false,
        rope: None,
        rope_local: None,
        learned_positions: true,
        embed_scale: None,
        attn_scale: None,
        attn_softcap: None,
        final_softcap: None,
        sliding_window: None,
        sliding_layers: vec![false; layers],
        sandwich_norms: false,
        norm_plus_one: false,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    }
}

/// `GPT2Config` fields (`n_embd`, `n_layer`, `n_head`, `n_positions`, `n_inner`, ...).
pub(crate) fn config_from_hf(j: &Json) -> Result<LlmConfig> {
    if j.opt_bool("scale_attn_by_inverse_layer_idx") == Some(true) {
        return Err(cfg_err(
            "gpt2: scale_attn_by_inverse_layer_idx is not supported",
        ));
    }
    if j.opt_bool("scale_attn_weights") == Some(false) {
        return Err(cfg_err("gpt2: scale_attn_weights = false is not supported"));
    }
    let hidden = j.usize("n_embd")?;
    let ctx = match j.opt_usize("n_positions")? {
        Some(n) => n,
        None => j.usize("n_ctx")?,
    };
    let ff = j.opt_usize("n_inner")?.unwrap_or(4 * hidden);
    let mut cfg = base(
        "gpt2",
        hidden,
        j.usize("n_layer")?,
        j.usize("n_head")?,
        ff,
        ctx,
    );
    cfg.vocab_size = j.usize("vocab_size")?;
    cfg.norm = NormKind::LayerNorm {
        eps: j.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
        bias: true,
    };
    cfg.ffn = FfnKind::Plain(Activation::from_name(
        j.opt_str("activation_function").unwrap_or("gelu_new"),
    )?);
    cfg.tie_word_embeddings = j.opt_bool("tie_word_embeddings").unwrap_or(true);
    cfg.bos_token_id = j.ids("bos_token_id").first().copied();
    cfg.eos_token_ids = j.ids("eos_token_id");
    dedup_in_order(&mut cfg.eos_token_ids);
    cfg.validate()?;
    Ok(cfg)
}

/// `gpt2.*` metadata of a GGUF file.
pub(crate) fn config_from_gguf(m: &GgufMeta) -> Result<LlmConfig> {
    let hidden = m.usize("embedding_length")?;
    let ff = m.opt_usize("feed_forward_length")?.unwrap_or(4 * hidden);
    let mut cfg = base(
        m.arch,
        hidden,
        m.usize("block_count")?,
        m.usize("attention.head_count")?,
        ff,
        m.usize("context_length")?,
    );
    cfg.vocab_size = match m.file.tensor_info("token_embd.weight") {
        Some(t) if t.dims().len() == 2 => t.dims()[0],
        _ => m.usize("vocab_size")?,
    };
    cfg.norm = NormKind::LayerNorm {
        eps: m.opt_f64("attention.layer_norm_epsilon")?.unwrap_or(1e-5),
        bias: true,
    };
    cfg.tie_word_embeddings = m.file.tensor_info("output.weight").is_none();
    let tok = TokenIds::from_gguf(m.file);
    cfg.bos_token_id = tok.bos;
    cfg.eos_token_ids = tok.eos;
    cfg.validate()?;
    Ok(cfg)
}

/// Hugging Face names (with or without the `transformer.` prefix of `GPT2LMHeadModel`).
pub(crate) fn hf_plan(cfg: &LlmConfig, name: &str) -> Option<Plan> {
    let both = |n: String, steps: Vec<Step>| {
        vec![
            Candidate::new(format!("transformer.{n}"), steps.clone()),
            Candidate::new(n, steps),
        ]
    };
    let top = match name {
        "model.embed_tokens.weight" => Some("wte.weight"),
        "model.embed_positions.weight" => Some("wpe.weight"),
        "model.norm.weight" => Some("ln_f.weight"),
        "model.norm.bias" => Some("ln_f.bias"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(both(t.to_string(), Vec::new()));
    }
    if name == "lm_head.weight" {
        return Some(vec![Candidate::plain(name)]);
    }
    let (i, rest) = layer_part(name)?;
    let (part, kind) = split_kind(rest)?;
    let d = cfg.hidden_size;
    let weight = kind == "weight";
    // Conv1D weights are [in, out]: transpose first, then cut q/k/v rows.
    let conv = |n: &str, rows: Option<(usize, usize)>| {
        let mut steps = Vec::new();
        if weight {
            steps.push(Step::Transpose);
        }
        if let Some((start, len)) = rows {
            steps.push(Step::Rows { start, len });
        }
        both(format!("h.{i}.{n}.{kind}"), steps)
    };
    Some(match part {
        "input_layernorm" => both(format!("h.{i}.ln_1.{kind}"), Vec::new()),
        "post_attention_layernorm" => both(format!("h.{i}.ln_2.{kind}"), Vec::new()),
        "self_attn.q_proj" => conv("attn.c_attn", Some((0, d))),
        "self_attn.k_proj" => conv("attn.c_attn", Some((d, d))),
        "self_attn.v_proj" => conv("attn.c_attn", Some((2 * d, d))),
        "self_attn.o_proj" => conv("attn.c_proj", None),
        "mlp.fc1" => conv("mlp.c_fc", None),
        "mlp.fc2" => conv("mlp.c_proj", None),
        _ => return None,
    })
}

/// llama.cpp's GPT-2 names (weights already `[out, in]`).
pub(crate) fn gguf_plan(cfg: &LlmConfig, name: &str) -> Option<Plan> {
    let top = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.embed_positions.weight" => Some("position_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "model.norm.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(vec![Candidate::plain(t)]);
    }
    let (i, rest) = layer_part(name)?;
    let (part, kind) = split_kind(rest)?;
    let d = cfg.hidden_size;
    let blk =
        |n: &str, steps: Vec<Step>| vec![Candidate::new(format!("blk.{i}.{n}.{kind}"), steps)];
    let qkv = |start: usize| blk("attn_qkv", vec![Step::Rows { start, len: d }]);
    Some(match part {
        "input_layernorm" => blk("attn_norm", Vec::new()),
        "post_attention_layernorm" => blk("ffn_norm", Vec::new()),
        "self_attn.q_proj" => qkv(0),
        "self_attn.k_proj" => qkv(d),
        "self_attn.v_proj" => qkv(2 * d),
        "self_attn.o_proj" => blk("attn_output", Vec::new()),
        "mlp.fc1" => blk("ffn_up", Vec::new()),
        "mlp.fc2" => blk("ffn_down", Vec::new()),
        _ => return None,
    })
}
