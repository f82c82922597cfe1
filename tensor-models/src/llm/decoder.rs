//! The one config-driven decoder behind every family: token (and, for GPT-2, learned position)
//! embeddings, pre-norm blocks of causal self-attention and a feed-forward (gated MLP, plain
//! MLP or sparse mixture of experts), a final norm and the LM head. Each [`LlmConfig`] field
//! switches one difference on: sandwich norms, soft-capping, per-layer sliding windows and
//! RoPE bases, q/k norms, biases, embedding scaling, tied heads.
//!
//! Parameters are requested by canonical (Hugging Face Llama) names through a [`VarBuilder`];
//! see the `weights` module for how those are found in each checkpoint format. The KV cache is
//! preallocated for `max_seq_len` positions on the first call at position 0, for that call's
//! batch size.

use tensor_core::{no_grad, DType, Device, Error, Result, Tensor};
use tensor_nn::attention::{AttentionConfig, AttentionNames, KvCache, MultiHeadAttention, QkNorm};
use tensor_nn::transformer::{Norm, NormKind};
use tensor_nn::{Embedding, Linear, Mlp, MlpKind, MoE, Module, MoeConfig, RopeCache, VarBuilder};

use super::config::{FfnKind, LlmConfig};
use crate::lm::{CausalLm, LmInfo};

enum Ffn {
    Mlp(Mlp),
    Moe(MoE),
}

impl Ffn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Ffn::Mlp(m) => m.forward(x),
            Ffn::Moe(m) => m.forward(x),
        }
    }
}

struct Layer {
    attn_norm: Norm,
    attn: MultiHeadAttention,
    post_attn_norm: Option<Norm>,
    mlp_norm: Norm,
    ffn: Ffn,
    post_mlp_norm: Option<Norm>,
}

impl Layer {
    fn build(
        vb: &VarBuilder,
        cfg: &LlmConfig,
        i: usize,
        rope: Option<RopeCache>,
        max_seq_len: usize,
    ) -> Result<Layer> {
        let d = cfg.hidden_size;
        let norm = |name: &str| Norm::build(&vb.pp(name), cfg.norm, d);
        let qk_eps = match cfg.norm {
            NormKind::RmsNorm { eps } | NormKind::LayerNorm { eps, .. } => eps,
        };
        let acfg = AttentionConfig {
            dim: d,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            kv_dim: None,
            qkv_bias: cfg.qkv_bias,
            out_bias: cfg.o_bias,
            rope: rope.as_ref().map(|r| r.config().clone()),
            max_positions: max_seq_len,
            alibi: false,
            sliding_window: if cfg.sliding_layers[i] {
                cfg.sliding_window
            } else {
                None
            },
            causal: true,
            qk_norm: cfg.qk_norm.then_some(QkNorm::PerHead { eps: qk_eps }),
            softmax_scale: cfg.attn_scale,
            names: AttentionNames::hf(),
        };
        let attn = MultiHeadAttention::build_with_rope(&vb.pp("self_attn"), &acfg, rope)?
            .with_logit_softcap(cfg.attn_softcap)?;
        let (post_attn_norm, mlp_norm, post_mlp_norm) = if cfg.sandwich_norms {
            (
                Some(norm("post_attention_layernorm")?),
                norm("pre_feedforward_layernorm")?,
                Some(norm("post_feedforward_layernorm")?),
            )
        } else {
            (None, norm("post_attention_layernorm")?, None)
        };
        let ff = cfg.intermediate_size;
        let ffn = match cfg.ffn {
            FfnKind::Gated(act) => Ffn::Mlp(Mlp::build(
                &vb.pp("mlp"),
                MlpKind::Gated(act),
                d,
                ff,
                cfg.mlp_bias,
            )?),
            FfnKind::Plain(act) => Ffn::Mlp(Mlp::build(
                &vb.pp("mlp"),
                MlpKind::Plain(act),
                d,
                ff,
                cfg.mlp_bias,
            )?),
            FfnKind::Moe {
                num_experts,
                top_k,
                activation,
            } => {
                let mc = MoeConfig {
                    activation,
                    ..MoeConfig::mixtral(d, ff, num_experts, top_k)
                };
                Ffn::Moe(MoE::build(&vb.pp("block_sparse_moe"), mc)?)
            }
        };
        Ok(Layer {
            attn_norm: norm("input_layernorm")?,
            attn,
            post_attn_norm,
            mlp_norm,
            ffn,
            post_mlp_norm,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let mut a = self
            .attn
            .forward_cached(&self.attn_norm.forward(x)?, None, cache)?;
        if let Some(n) = &self.post_attn_norm {
            a = n.forward(&a)?;
        }
        let h = x.add(&a)?;
        let mut f = self.ffn.forward(&self.mlp_norm.forward(&h)?)?;
        if let Some(n) = &self.post_mlp_norm {
            f = n.forward(&f)?;
        }
        h.add(&f)
    }
}

/// A pretrained decoder-only LM of any supported family, with its KV cache (see the module
/// docs). Build it with [`LlmDecoder::new`] over a [`VarBuilder`] of canonical names, or load
/// one with [`crate::llm::load`].
pub struct LlmDecoder {
    cfg: LlmConfig,
    info: LmInfo,
    device: Device,
    dtype: DType,
    embed: Embedding,
    embed_scale: Option<f64>,
    pos_embed: Option<Tensor>,
    layers: Vec<Layer>,
    norm: Norm,
    head: Linear,
    caches: Vec<KvCache>,
    cache_batch: usize,
    len: usize,
}

impl LlmDecoder {
    /// Build the model from `vb` (its dtype is the compute dtype) for sequences of up to
    /// `max_seq_len` positions.
    pub fn new(cfg: &LlmConfig, vb: &VarBuilder, max_seq_len: usize) -> Result<LlmDecoder> {
        cfg.validate()?;
        if max_seq_len == 0 {
            return Err(Error::invalid("LlmDecoder", "max_seq_len must be positive"));
        }
        if cfg.learned_positions && max_seq_len > cfg.context_length {
            return Err(Error::invalid(
                "LlmDecoder",
                format!(
                    "max_seq_len {max_seq_len} exceeds the {} learned positions of this model",
                    cfg.context_length
                ),
            ));
        }
        let dtype = vb.dtype();
        let device = vb.device().clone();
        let (v, d) = (cfg.vocab_size, cfg.hidden_size);
        let m = vb.pp("model");
        let embed = Embedding::build(&m.pp("embed_tokens"), v, d)?;
        let pos_embed = if cfg.learned_positions {
            Some(
                m.pp("embed_positions")
                    .get((cfg.context_length, d), "weight")?,
            )
        } else {
            None
        };
        let table_dtype = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let rope = match &cfg.rope {
            Some(r) => Some(RopeCache::new(r, max_seq_len, table_dtype, &device)?),
            None => None,
        };
        let rope_local = match (&cfg.rope_local, &rope) {
            (Some(l), Some(g)) if l == g.config() => Some(g.clone()),
            (Some(l), _) => Some(RopeCache::new(l, max_seq_len, table_dtype, &device)?),
            (None, _) => None,
        };
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let r = if cfg.sliding_layers[i] {
                    rope_local.clone()
                } else {
                    rope.clone()
                };
                Layer::build(&m.pp("layers").pp(i), cfg, i, r, max_seq_len)
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = Norm::build(&m.pp("norm"), cfg.norm, d)?;
        let head = if cfg.tie_word_embeddings {
            Linear::new(embed.weight.clone(), None)?
        } else {
            Linear::build(&vb.pp("lm_head"), d, v, false)?
        };
        // Gemma multiplies by the scale rounded to the compute dtype.
        let embed_scale = match cfg.embed_scale {
            Some(s) => Some(Tensor::from_f64s(&[s], 1, dtype, &device)?.to_f64_vec()?[0]),
            None => None,
        };
        Ok(LlmDecoder {
            info: LmInfo {
                architecture: cfg.architecture.clone(),
                vocab_size: v,
                max_seq_len,
                eos_token_ids: cfg.eos_token_ids.clone(),
                bos_token_id: cfg.bos_token_id,
            },
            cfg: cfg.clone(),
            device,
            dtype,
            embed,
            embed_scale,
            pos_embed,
            layers,
            norm,
            head,
            caches: Vec::new(),
            cache_batch: 0,
            len: 0,
        })
    }

    pub fn config(&self) -> &LlmConfig {
        &self.cfg
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn check_ids(&self, ids: &Tensor, pos: usize) -> Result<(usize, usize)> {
        let bad = |msg: String| Err(Error::invalid("CausalLm::forward", msg));
        if ids.rank() != 2 || ids.dims()[0] == 0 || ids.dims()[1] == 0 {
            return bad(format!(
                "token ids must be [batch, len] with both positive, got {:?}",
                ids.dims()
            ));
        }
        if ids.dtype().is_float() {
            return bad(format!("token ids must be integers, got {}", ids.dtype()));
        }
        let (b, l) = (ids.dims()[0], ids.dims()[1]);
        if pos != self.len {
            return bad(format!(
                "forward at position {pos}, but the cache holds {} positions (call reset or \
                 truncate_cache first)",
                self.len
            ));
        }
        if pos + l > self.info.max_seq_len {
            return bad(format!(
                "positions {pos}..{} exceed max_seq_len {}",
                pos + l,
                self.info.max_seq_len
            ));
        }
        if pos > 0 && b != self.cache_batch {
            return bad(format!(
                "batch of {b} sequences, but the cache was started with {}",
                self.cache_batch
            ));
        }
        let v = self.cfg.vocab_size as f64;
        if let Some(x) = ids
            .to_f64_vec()?
            .into_iter()
            .find(|&x| !(0.0..v).contains(&x))
        {
            return bad(format!("token id {x} is outside the vocabulary of {v}"));
        }
        Ok((b, l))
    }

    fn step(&mut self, ids: &Tensor, pos: usize, last_only: bool) -> Result<Tensor> {
        let _g = no_grad();
        let (b, l) = self.check_ids(ids, pos)?;
        if pos == 0 && (self.caches.is_empty() || self.cache_batch != b) {
            self.caches.clear();
            for layer in &self.layers {
                self.caches.push(KvCache::for_attention(
                    &layer.attn,
                    b,
                    self.info.max_seq_len,
                    self.dtype,
                    &self.device,
                )?);
            }
            self.cache_batch = b;
        }
        match self.run(ids, pos, l, last_only) {
            Ok(logits) => {
                self.len = pos + l;
                Ok(logits)
            }
            Err(e) => {
                // Layers that already appended must not keep half a step.
                for c in &mut self.caches {
                    c.truncate(pos);
                }
                Err(e)
            }
        }
    }

    fn run(&mut self, ids: &Tensor, pos: usize, l: usize, last_only: bool) -> Result<Tensor> {
        let mut h = self.embed.forward(ids)?;
        if let Some(s) = self.embed_scale {
            h = h.affine(s, 0.0)?;
        }
        if let Some(pe) = &self.pos_embed {
            h = h.add(&pe.narrow(0, pos, l)?.unsqueeze(0)?)?;
        }
        for (layer, cache) in self.layers.iter().zip(self.caches.iter_mut()) {
            h = layer.forward(&h, cache)?;
        }
        if last_only && l > 1 {
            h = h.narrow(1, l - 1, 1)?;
        }
        let mut logits = self.head.forward(&self.norm.forward(&h)?)?;
        if logits.dtype() != DType::F32 {
            logits = logits.to_dtype(DType::F32)?;
        }
        if let Some(cap) = self.cfg.final_softcap {
            logits = logits.affine(1.0 / cap, 0.0)?.tanh()?.affine(cap, 0.0)?;
        }
        Ok(logits)
    }
}

impl CausalLm for LlmDecoder {
    fn info(&self) -> &LmInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        self.step(ids, pos, false)
    }

    fn forward_last(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        self.step(ids, pos, true)
    }

    fn reset(&mut self) {
        self.len = 0;
        for c in &mut self.caches {
            c.reset();
        }
    }

    fn cache_len(&self) -> usize {
        self.len
    }

    fn truncate_cache(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::invalid(
                "CausalLm::truncate_cache",
                format!("cannot keep {len} positions: the cache holds {}", self.len),
            ));
        }
        self.len = len;
        for c in &mut self.caches {
            c.truncate(len);
        }
        Ok(())
    }
}
