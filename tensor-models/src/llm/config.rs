//! What a pretrained decoder LLM looks like: one [`LlmConfig`] for every supported family,
//! read from a Hugging Face `config.json` ([`LlmConfig::from_hf_json`]) or from a GGUF file's
//! metadata ([`LlmConfig::from_gguf`]). The decoder is built from this alone, so a family is
//! "supported" when its differences from Llama are fields here.

use serde_json::Value;
use tensor_core::{Error, Result};
use tensor_io::gguf::GgufFile;
use tensor_nn::transformer::NormKind;
use tensor_nn::{Activation, RopeConfig, RopeScaling};

use super::gpt2;

/// The model families the decoder implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Llama,
    Mistral,
    Mixtral,
    Qwen2,
    Qwen3,
    Gemma,
    Gemma2,
    Gemma3,
    Phi3,
    Gpt2,
}

/// `model_type` values of `config.json` that [`LlmConfig::from_hf_json`] accepts.
pub const SUPPORTED_HF_MODEL_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
];

/// `general.architecture` values that [`LlmConfig::from_gguf`] accepts (`llama` also covers
/// Mistral, and Mixtral when `llama.expert_count` is set).
pub const SUPPORTED_GGUF_ARCHITECTURES: &[&str] = &[
    "llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2",
];

impl Family {
    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma | Family::Gemma2 | Family::Gemma3)
    }

    fn from_model_type(mt: &str) -> Option<Family> {
        Some(match mt {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "mixtral" => Family::Mixtral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma" => Family::Gemma,
            "gemma2" => Family::Gemma2,
            "gemma3_text" => Family::Gemma3,
            "phi3" => Family::Phi3,
            "gpt2" => Family::Gpt2,
            _ => return None,
        })
    }

    fn from_hf_architecture(arch: &str) -> Option<Family> {
        Some(match arch {
            "LlamaForCausalLM" => Family::Llama,
            "MistralForCausalLM" => Family::Mistral,
            "MixtralForCausalLM" => Family::Mixtral,
            "Qwen2ForCausalLM" => Family::Qwen2,
            "Qwen3ForCausalLM" => Family::Qwen3,
            "GemmaForCausalLM" => Family::Gemma,
            "Gemma2ForCausalLM" => Family::Gemma2,
            "Gemma3ForCausalLM" => Family::Gemma3,
            "Phi3ForCausalLM" => Family::Phi3,
            "GPT2LMHeadModel" => Family::Gpt2,
            _ => return None,
        })
    }
}

/// The feed-forward part of every block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FfnKind {
    /// `down(act(gate(x)) · up(x))` (`mlp.gate_proj/up_proj/down_proj`).
    Gated(Activation),
    /// `fc2(act(fc1(x)))` (GPT-2's `c_fc`/`c_proj`).
    Plain(Activation),
    /// Mixtral's sparse mixture (`block_sparse_moe`): SwiGLU experts, softmax over the top-k.
    Moe {
        num_experts: usize,
        top_k: usize,
        activation: Activation,
    },
}

/// Everything the shared decoder needs to know about a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmConfig {
    /// As written in the checkpoint (`model_type` or `general.architecture`).
    pub architecture: String,
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    /// `max_position_embeddings` / `{arch}.context_length`.
    pub context_length: usize,
    pub norm: NormKind,
    pub ffn: FfnKind,
    pub mlp_bias: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    /// RMSNorm of each query/key head before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// RoPE of the global (or every) layer; `None` for learned positions.
    pub rope: Option<RopeConfig>,
    /// RoPE of the sliding-window layers when it differs (Gemma 3's local base).
    pub rope_local: Option<RopeConfig>,
    /// GPT-2's learned position table (`wpe`).
    pub learned_positions: bool,
    /// Embeddings multiplied by this (Gemma: `√hidden`).
    pub embed_scale: Option<f64>,
    /// Softmax scale override (Gemma 2/3: `query_pre_attn_scalar^-½`).
    pub attn_scale: Option<f64>,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub sliding_window: Option<usize>,
    /// Per layer: whether it uses `sliding_window`.
    pub sliding_layers: Vec<bool>,
    /// Gemma 2/3: norms after attention and after the MLP too (`post_attention_layernorm` is
    /// then the post-attention norm and `pre_feedforward_layernorm` the MLP's input norm).
    pub sandwich_norms: bool,
    /// Hugging Face Gemma stores RMSNorm weights as `w` and multiplies by `1 + w` (GGUF files
    /// store `1 + w`).
    pub norm_plus_one: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

pub(crate) fn cfg_err(msg: impl Into<String>) -> Error {
    Error::invalid("llm config", msg.into())
}

/// Typed access to a `config.json` object with errors naming the key.
pub(crate) struct Json<'a>(pub &'a Value);

impl Json<'_> {
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    cfg_err(format!("config.json: '{key}' must be an integer, got {v}"))
                }),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| cfg_err(format!("config.json: '{key}' is missing")))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| cfg_err(format!("config.json: '{key}' must be a number, got {v}"))),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        self.0.get(key).and_then(Value::as_bool)
    }

    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    /// A token id or a list of them (`eos_token_id`).
    pub fn ids(&self, key: &str) -> Vec<u32> {
        match self.0.get(key) {
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .into_iter()
                .collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A RoPE config from a `rope_parameters` / `rope_scaling` object (either may be `None`) and
/// the config's top-level `rope_theta`.
fn hf_rope(
    j: &Json,
    params: Option<&Value>,
    default_theta: f64,
    head_dim: usize,
    context: usize,
) -> Result<RopeConfig> {
    let theta = match params
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
    {
        Some(t) => t,
        None => j.opt_f64("rope_theta")?.unwrap_or(default_theta),
    };
    let partial = params
        .and_then(|p| p.get("partial_rotary_factor"))
        .and_then(Value::as_f64)
        .or(j.opt_f64("partial_rotary_factor")?)
        .unwrap_or(1.0);
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(cfg_err(format!(
            "partial_rotary_factor must be in (0, 1], got {partial}"
        )));
    }
    let scaling = match params {
        Some(p) if !p.is_null() => {
            let mut p = p.clone();
            // Phi-3 keeps original_max_position_embeddings at the top level.
            if let (Some(obj), Some(orig)) = (
                p.as_object_mut(),
                j.opt_usize("original_max_position_embeddings")?,
            ) {
                obj.entry("original_max_position_embeddings")
                    .or_insert_with(|| Value::from(orig));
            }
            RopeScaling::from_hf(&p, context)?
        }
        _ => RopeScaling::None,
    };
    Ok(RopeConfig::new(theta, RopeConfig::partial_dim(head_dim, partial)).with_scaling(scaling))
}

impl LlmConfig {
    /// Parse a Hugging Face `config.json` (`transformers` 4.x or 5.x spelling: `rope_theta` +
    /// `rope_scaling`, or `rope_parameters`). An unsupported `model_type` is an error listing
    /// the supported ones.
    pub fn from_hf_json(v: &Value) -> Result<LlmConfig> {
        let j = Json(v);
        let model_type = j.opt_str("model_type").unwrap_or("");
        let family = Family::from_model_type(model_type).or_else(|| {
            v.get("architectures")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .and_then(Family::from_hf_architecture)
        });
        let Some(family) = family else {
            let what = if model_type == "gemma3" {
                " (multimodal Gemma 3 checkpoints are not supported; use a Gemma3ForCausalLM \
                 / gemma3_text checkpoint)"
            } else {
                ""
            };
            return Err(cfg_err(format!(
                "unsupported model_type '{model_type}'{what}; supported: {}",
                SUPPORTED_HF_MODEL_TYPES.join(", ")
            )));
        };
        if family == Family::Gpt2 {
            return gpt2::config_from_hf(&j);
        }
        let hidden = j.usize("hidden_size")?;
        let layers = j.usize("num_hidden_layers")?;
        let heads = j.usize("num_attention_heads")?;
        let kv_heads = j.opt_usize("num_key_value_heads")?.unwrap_or(heads);
        if heads == 0 {
            return Err(cfg_err("num_attention_heads must be positive"));
        }
        let head_dim = j.opt_usize("head_dim")?.unwrap_or(hidden / heads);
        let context = j.opt_usize("max_position_embeddings")?.unwrap_or(2048);
        let eps = j.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
        let gemma = family.is_gemma();
        let act_name = if gemma {
            match (j.opt_str("hidden_activation"), j.opt_str("hidden_act")) {
                (Some(a), _) => a,
                // transformers runs legacy Gemma configs ("gelu") with the tanh approximation.
                (None, Some("gelu")) | (None, None) => "gelu_pytorch_tanh",
                (None, Some(a)) => a,
            }
        } else {
            j.opt_str("hidden_act").unwrap_or("silu")
        };
        let act = Activation::from_name(act_name)?;
        let attention_bias = j.opt_bool("attention_bias").unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Mistral | Family::Mixtral | Family::Phi3 => (false, false),
            _ => (attention_bias, attention_bias),
        };
        let ffn = if family == Family::Mixtral {
            FfnKind::Moe {
                num_experts: j.usize("num_local_experts")?,
                top_k: j.usize("num_experts_per_tok")?,
                activation: act,
            }
        } else {
            FfnKind::Gated(act)
        };
        let default_theta = match family {
            Family::Mixtral => 1e6,
            _ => 10000.0,
        };
        let rope_params = v.get("rope_parameters").filter(|p| !p.is_null());
        let (rope, rope_local) = if family == Family::Gemma3 {
            let per_type = rope_params.filter(|p| p.get("full_attention").is_some());
            match per_type {
                Some(p) => (
                    hf_rope(&j, p.get("full_attention"), 1e6, head_dim, context)?,
                    hf_rope(&j, p.get("sliding_attention"), 10000.0, head_dim, context)?,
                ),
                None => {
                    let global = hf_rope(
                        &j,
                        rope_params.or(v.get("rope_scaling")),
                        1e6,
                        head_dim,
                        context,
                    )?;
                    let local_theta = j.opt_f64("rope_local_base_freq")?.unwrap_or(10000.0);
                    (global, RopeConfig::new(local_theta, head_dim))
                }
            }
        } else {
            let r = hf_rope(
                &j,
                rope_params.or(v.get("rope_scaling")),
                default_theta,
                head_dim,
                context,
            )?;
            (r.clone(), r)
        };
        let sliding_window = j.opt_usize("sliding_window")?;
        let sliding_layers = hf_sliding_layers(&j, family, layers, sliding_window)?;
        let (attn_scale, attn_softcap, final_softcap) = match family {
            Family::Gemma2 | Family::Gemma3 => (
                Some(
                    j.opt_f64("query_pre_attn_scalar")?
                        .unwrap_or(head_dim as f64)
                        .powf(-0.5),
                ),
                j.opt_f64("attn_logit_softcapping")?,
                j.opt_f64("final_logit_softcapping")?,
            ),
            _ => (None, None, None),
        };
        let mut eos = j.ids("eos_token_id");
        dedup_in_order(&mut eos);
        let cfg = LlmConfig {
            architecture: model_type.to_string(),
            family,
            vocab_size: j.usize("vocab_size")?,
            hidden_size: hidden,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            intermediate_size: j.usize("intermediate_size")?,
            context_length: context,
            norm: NormKind::RmsNorm { eps },
            ffn,
            mlp_bias: j.opt_bool("mlp_bias").unwrap_or(false),
            qkv_bias,
            o_bias,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            rope: Some(rope),
            rope_local: Some(rope_local),
            learned_positions: false,
            embed_scale: gemma.then(|| (hidden as f64).sqrt()),
            attn_scale,
            attn_softcap,
            final_softcap,
            sliding_window,
            sliding_layers,
            sandwich_norms: matches!(family, Family::Gemma2 | Family::Gemma3),
            norm_plus_one: gemma,
            tie_word_embeddings: j.opt_bool("tie_word_embeddings").unwrap_or(gemma),
            bos_token_id: j.ids("bos_token_id").first().copied(),
            eos_token_ids: eos,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read the config from a GGUF file's metadata (`general.architecture` and the
    /// `{arch}.*` keys llama.cpp writes). Whether the head is tied (no `output.weight`) and the
    /// presence of biases and q/k norms are read from the tensor list.
    pub fn from_gguf(file: &GgufFile) -> Result<LlmConfig> {
        let arch = file.architecture()?.to_string();
        let m = GgufMeta { file, arch: &arch };
        let family = match arch.as_str() {
            "llama" => {
                if m.opt_usize("expert_count")?.unwrap_or(0) > 0 {
                    Family::Mixtral
                } else {
                    Family::Llama
                }
            }
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma" => Family::Gemma,
            "gemma2" => Family::Gemma2,
            "gemma3" => Family::Gemma3,
            "phi3" => Family::Phi3,
            "gpt2" => return gpt2::config_from_gguf(&m),
            other => {
                return Err(cfg_err(format!(
                    "GGUF file {}: unsupported architecture '{other}'; supported: {}",
                    file.path().display(),
                    SUPPORTED_GGUF_ARCHITECTURES.join(", ")
                )))
            }
        };
        let hidden = m.usize("embedding_length")?;
        let layers = m.usize("block_count")?;
        let heads = m.usize("attention.head_count")?;
        let kv_heads = m.opt_usize("attention.head_count_kv")?.unwrap_or(heads);
        if heads == 0 {
            return Err(cfg_err("attention.head_count must be positive"));
        }
        let head_dim = m
            .opt_usize("attention.key_length")?
            .unwrap_or(hidden / heads);
        let rot_dim = m.opt_usize("rope.dimension_count")?.unwrap_or(head_dim);
        let context = m.opt_usize("context_length")?.unwrap_or(2048);
        let eps = m
            .opt_f64("attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-6);
        let gemma = family.is_gemma();
        let act = if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        };
        let theta = m.opt_f64("rope.freq_base")?.unwrap_or(10000.0);
        let scaling = gguf_rope_scaling(&m, rot_dim, context)?;
        let rope = RopeConfig::new(theta, rot_dim).with_scaling(scaling);
        let rope_local = if family == Family::Gemma3 {
            // llama.cpp's fixed local base for Gemma 3 unless the file says otherwise.
            let t = m.opt_f64("rope.freq_base_swa")?.unwrap_or(10000.0);
            RopeConfig::new(t, rot_dim)
        } else {
            rope.clone()
        };
        let vocab = match file.tensor_info("token_embd.weight") {
            Some(t) if t.dims().len() == 2 => t.dims()[0],
            _ => m.opt_usize("vocab_size")?.unwrap_or(
                file.get_str_array("tokenizer.ggml.tokens")
                    .map(|t| t.len())
                    .unwrap_or(0),
            ),
        };
        let ffn = if family == Family::Mixtral {
            FfnKind::Moe {
                num_experts: m.usize("expert_count")?,
                top_k: m.usize("expert_used_count")?,
                activation: act,
            }
        } else {
            FfnKind::Gated(act)
        };
        let intermediate = match m.opt_usize("feed_forward_length")? {
            Some(f) => f,
            None if family == Family::Mixtral => m.usize("expert_feed_forward_length")?,
            None => {
                return Err(cfg_err(format!(
                    "GGUF: '{arch}.feed_forward_length' is missing"
                )))
            }
        };
        let sliding_window = m.opt_usize("attention.sliding_window")?;
        let sliding_layers = (0..layers)
            .map(|i| {
                sliding_window.is_some()
                    && match family {
                        Family::Gemma2 => i % 2 == 0,
                        Family::Gemma3 => {
                            let p = m
                                .opt_usize("attention.sliding_window_pattern")
                                .ok()
                                .flatten();
                            let p = p.unwrap_or(6).max(1);
                            (i + 1) % p != 0
                        }
                        _ => true,
                    }
            })
            .collect();
        // llama.cpp's attention scale for Gemma 2/3: 1/√(hidden/heads) for the 27B models
        // (query_pre_attn_scalar = hidden/heads there), 1/√head_dim otherwise.
        let attn_scale = match (family, layers) {
            _ if m.opt_f64("attention.scale")?.is_some() => m.opt_f64("attention.scale")?,
            (Family::Gemma2, 46) | (Family::Gemma3, 62) => {
                Some(((hidden / heads) as f64).powf(-0.5))
            }
            (Family::Gemma2 | Family::Gemma3, _) => Some((head_dim as f64).powf(-0.5)),
            _ => None,
        };
        let has = |n: &str| file.tensor_info(n).is_some();
        let qkv_bias = has("blk.0.attn_q.bias") || has("blk.0.attn_qkv.bias");
        let tok = TokenIds::from_gguf(file);
        let cfg = LlmConfig {
            architecture: arch.clone(),
            family,
            vocab_size: vocab,
            hidden_size: hidden,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            intermediate_size: intermediate,
            context_length: context,
            norm: NormKind::RmsNorm { eps },
            ffn,
            mlp_bias: has("blk.0.ffn_up.bias"),
            qkv_bias,
            o_bias: has("blk.0.attn_output.bias"),
            qk_norm: has("blk.0.attn_q_norm.weight"),
            rope: Some(rope),
            rope_local: Some(rope_local),
            learned_positions: false,
            embed_scale: gemma.then(|| (hidden as f64).sqrt()),
            attn_scale,
            attn_softcap: m.opt_f64("attn_logit_softcapping")?,
            final_softcap: m.opt_f64("final_logit_softcapping")?,
            sliding_window,
            sliding_layers,
            sandwich_norms: matches!(family, Family::Gemma2 | Family::Gemma3),
            norm_plus_one: false,
            tie_word_embeddings: !has("output.weight"),
            bos_token_id: tok.bos,
            eos_token_ids: tok.eos,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check sizes so that building the model cannot fail on arithmetic.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(cfg_err(format!("{}: {what}", self.architecture)));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
            ("context_length", self.context_length),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.sliding_layers.len() != self.num_layers {
            return bad(format!(
                "{} layer types for {} layers",
                self.sliding_layers.len(),
                self.num_layers
            ));
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window must be positive".into());
        }
        for r in [&self.rope, &self.rope_local].into_iter().flatten() {
            if r.head_dim > self.head_dim || r.head_dim == 0 || !r.head_dim.is_multiple_of(2) {
                return bad(format!(
                    "rotary dim {} must be even, positive and at most head_dim {}",
                    r.head_dim, self.head_dim
                ));
            }
            r.inv_freq(None)?;
        }
        if let FfnKind::Moe {
            num_experts, top_k, ..
        } = self.ffn
        {
            if top_k == 0 || top_k > num_experts {
                return bad(format!(
                    "experts per token {top_k} must be in 1..={num_experts}"
                ));
            }
        }
        for (name, c) in [
            ("attn_logit_softcapping", self.attn_softcap),
            ("final_logit_softcapping", self.final_softcap),
        ] {
            if let Some(c) = c {
                if !(c > 0.0 && c.is_finite()) {
                    return bad(format!("{name} must be positive, got {c}"));
                }
            }
        }
        Ok(())
    }
}

/// Which layers slide, from `layer_types` when the config has it, else each family's rule.
fn hf_sliding_layers(
    j: &Json,
    family: Family,
    layers: usize,
    window: Option<usize>,
) -> Result<Vec<bool>> {
    if let Some(types) = j.0.get("layer_types").and_then(Value::as_array) {
        if types.len() != layers {
            return Err(cfg_err(format!(
                "config.json: layer_types has {} entries for {layers} layers",
                types.len()
            )));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(window.is_some()),
                Some("full_attention") => Ok(false),
                _ => Err(cfg_err(format!(
                    "config.json: unsupported layer type {t} (known: full_attention, \
                     sliding_attention)"
                ))),
            })
            .collect();
    }
    let Some(_) = window else {
        return Ok(vec![false; layers]);
    };
    let use_sw = j.opt_bool("use_sliding_window").unwrap_or(false);
    let max_window_layers = j.opt_usize("max_window_layers")?.unwrap_or(0);
    let pattern = match j.opt_usize("sliding_window_pattern")? {
        Some(p) => p,
        None => j.opt_usize("_sliding_window_pattern")?.unwrap_or(6),
    }
    .max(1);
    Ok((0..layers)
        .map(|i| match family {
            Family::Qwen2 | Family::Qwen3 => use_sw && i >= max_window_layers,
            Family::Gemma2 => i % 2 == 0,
            Family::Gemma3 => (i + 1) % pattern != 0,
            Family::Gemma | Family::Llama | Family::Gpt2 => false,
            Family::Mistral | Family::Mixtral | Family::Phi3 => true,
        })
        .collect())
}

/// `{arch}.*` metadata of a GGUF file.
pub(crate) struct GgufMeta<'a> {
    pub file: &'a GgufFile,
    pub arch: &'a str,
}

impl GgufMeta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    pub fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        let key = self.key(k);
        if self.file.get(&key).is_none() {
            return Ok(None);
        }
        let v = self.file.get_u64(&key)?;
        usize::try_from(v)
            .map(Some)
            .map_err(|_| cfg_err(format!("GGUF: '{key}' = {v} does not fit in usize")))
    }

    pub fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?
            .ok_or_else(|| cfg_err(format!("GGUF: metadata key '{}' is missing", self.key(k))))
    }

    pub fn opt_f64(&self, k: &str) -> Result<Option<f64>> {
        let key = self.key(k);
        if self.file.get(&key).is_none() {
            return Ok(None);
        }
        self.file.get_f64(&key).map(Some)
    }

    pub fn opt_str(&self, k: &str) -> Option<&str> {
        self.file.get_str(&self.key(k)).ok()
    }
}

/// llama.cpp's RoPE scaling metadata, and the per-frequency factor tensors (`rope_freqs` of
/// Llama 3.1, `rope_factors_long/short` of Phi-3).
fn gguf_rope_scaling(m: &GgufMeta, rot_dim: usize, context: usize) -> Result<RopeScaling> {
    let factors = |name: &str| -> Result<Option<Vec<f64>>> {
        if m.file.tensor_info(name).is_none() {
            return Ok(None);
        }
        let v = m.file.dequantize(name)?;
        if v.len() != rot_dim / 2 {
            return Err(cfg_err(format!(
                "GGUF tensor '{name}' has {} factors, expected rotary_dim/2 = {}",
                v.len(),
                rot_dim / 2
            )));
        }
        Ok(Some(v.into_iter().map(f64::from).collect()))
    };
    let orig = m
        .opt_usize("rope.scaling.original_context_length")?
        .unwrap_or(context);
    if let (Some(long), Some(short)) = (
        factors("rope_factors_long.weight")?,
        factors("rope_factors_short.weight")?,
    ) {
        return Ok(RopeScaling::LongRope {
            short_factor: short,
            long_factor: long,
            factor: context as f64 / orig as f64,
            original_max: orig,
            attention_factor: m.opt_f64("rope.scaling.attn_factor")?,
        });
    }
    if let Some(f) = factors("rope_freqs.weight")? {
        // Fixed per-frequency divisors (Llama 3.1's precomputed scaling) are LongRoPE with
        // equal short/long factors and no attention factor.
        return Ok(RopeScaling::LongRope {
            short_factor: f.clone(),
            long_factor: f,
            factor: 1.0,
            original_max: context.max(1),
            attention_factor: Some(1.0),
        });
    }
    let factor = m.opt_f64("rope.scaling.factor")?;
    Ok(match (m.opt_str("rope.scaling.type"), factor) {
        (Some("linear"), Some(f)) if f != 1.0 => RopeScaling::Linear { factor: f },
        (Some("yarn"), Some(f)) => RopeScaling::yarn(f, orig),
        (None | Some("none") | Some("linear"), _) => RopeScaling::None,
        (Some(other), _) => {
            return Err(cfg_err(format!(
                "GGUF: unsupported rope scaling type '{other}' (known: none, linear, yarn)"
            )))
        }
    })
}

/// bos/eos ids of a GGUF tokenizer (eos also gathers `eot` and `eom`).
pub(crate) struct TokenIds {
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
}

impl TokenIds {
    pub fn from_gguf(file: &GgufFile) -> TokenIds {
        let id = |k: &str| file.get(k).and_then(|_| file.get_u32(k).ok());
        let mut eos: Vec<u32> = [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ]
        .into_iter()
        .filter_map(id)
        .collect();
        dedup_in_order(&mut eos);
        TokenIds {
            bos: id("tokenizer.ggml.bos_token_id"),
            eos,
        }
    }
}

/// Remove repeated ids, keeping the first occurrence of each.
pub(crate) fn dedup_in_order(ids: &mut Vec<u32>) {
    let mut seen = std::collections::HashSet::new();
    ids.retain(|x| seen.insert(*x));
}
