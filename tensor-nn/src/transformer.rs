//! Transformer blocks and stacks: the pre-norm block of Llama-style decoders and the post-norm
//! block of BERT/BART encoders, optional cross-attention (encoder–decoder), residual dropout
//! in training, and [`TransformerEncoder`] / [`TransformerDecoder`] stacks with an optional
//! final norm and per-layer KV caches for decoding.
//!
//! Default names are Hugging Face Llama's (`input_layernorm`, `self_attn`,
//! `post_attention_layernorm`, `mlp`) or BART's (`self_attn`, `self_attn_layer_norm`,
//! `encoder_attn`, `encoder_attn_layer_norm`, `fc1`/`fc2`, `final_layer_norm`); see
//! [`BlockNames`]. Models with other layouts assemble a block with [`TransformerBlock::new`].

use std::sync::Arc;

use tensor_core::{DType, Device, Error, Result, Tensor};

use crate::attention::{AttentionConfig, KvCache, MultiHeadAttention};
use crate::layers::{Dropout, LayerNorm, Mlp, MlpKind, RmsNorm};
use crate::module::{Module, ModuleT};
use crate::rope::RopeCache;
use crate::var_builder::VarBuilder;

/// Which normalisation a block uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormKind {
    LayerNorm { eps: f64, bias: bool },
    RmsNorm { eps: f64 },
}

/// A built normalisation layer.
#[derive(Clone, Debug)]
pub enum Norm {
    LayerNorm(LayerNorm),
    RmsNorm(RmsNorm),
}

impl Norm {
    pub fn build(vb: &VarBuilder, kind: NormKind, dim: usize) -> Result<Norm> {
        Ok(match kind {
            NormKind::LayerNorm { eps, bias } => {
                Norm::LayerNorm(LayerNorm::build(vb, dim, eps, bias)?)
            }
            NormKind::RmsNorm { eps } => Norm::RmsNorm(RmsNorm::build(vb, dim, eps)?),
        })
    }
}

impl Module for Norm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Norm::LayerNorm(n) => n.forward(xs),
            Norm::RmsNorm(n) => n.forward(xs),
        }
    }
}

/// The feed-forward part of a block: the standard [`Mlp`], or any module (fused gate/up
/// projections, GPT-2's `Conv1D` layout, mixtures of experts).
#[derive(Clone)]
pub enum FeedForward {
    Mlp(Mlp),
    Custom(Arc<dyn ModuleT + Send + Sync>),
}

impl std::fmt::Debug for FeedForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedForward::Mlp(m) => m.fmt(f),
            FeedForward::Custom(_) => f.write_str("FeedForward::Custom"),
        }
    }
}

impl ModuleT for FeedForward {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            FeedForward::Mlp(m) => m.forward(xs),
            FeedForward::Custom(m) => m.forward_t(xs, train),
        }
    }
}

/// Where the norms sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPosition {
    /// `x + f(norm(x))` (GPT-2, Llama, Whisper).
    Pre,
    /// `norm(x + f(x))` (the original Transformer, BERT, BART).
    Post,
}

/// Names of a block's parts under its prefix. An empty `mlp` puts the feed-forward layers
/// directly under the block (BART's `fc1`/`fc2`).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockNames {
    pub self_attn: String,
    pub attn_norm: String,
    pub cross_attn: String,
    pub cross_attn_norm: String,
    pub mlp: String,
    pub mlp_norm: String,
}

impl BlockNames {
    /// Hugging Face Llama (the cross-attention names are BART's, Llama has none).
    pub fn llama() -> BlockNames {
        BlockNames {
            self_attn: "self_attn".into(),
            attn_norm: "input_layernorm".into(),
            cross_attn: "encoder_attn".into(),
            cross_attn_norm: "encoder_attn_layer_norm".into(),
            mlp: "mlp".into(),
            mlp_norm: "post_attention_layernorm".into(),
        }
    }

    /// Hugging Face BART/Whisper/Marian.
    pub fn bart() -> BlockNames {
        BlockNames {
            self_attn: "self_attn".into(),
            attn_norm: "self_attn_layer_norm".into(),
            cross_attn: "encoder_attn".into(),
            cross_attn_norm: "encoder_attn_layer_norm".into(),
            mlp: String::new(),
            mlp_norm: "final_layer_norm".into(),
        }
    }
}

/// The shape and options of a [`TransformerBlock`].
#[derive(Clone, Debug, PartialEq)]
pub struct BlockConfig {
    pub attn: AttentionConfig,
    /// Cross-attention over an encoder's output (decoder blocks).
    pub cross_attn: Option<AttentionConfig>,
    pub mlp: MlpKind,
    pub hidden_dim: usize,
    pub mlp_bias: bool,
    pub norm: NormKind,
    pub norm_position: NormPosition,
    /// Dropout on each branch's output before the residual add, in training only.
    pub dropout: f64,
    pub names: BlockNames,
}

impl BlockConfig {
    /// A Llama decoder layer: pre-RMSNorm, causal GQA with RoPE, SwiGLU.
    pub fn llama(attn: AttentionConfig, hidden_dim: usize, rms_eps: f64) -> BlockConfig {
        BlockConfig {
            attn,
            cross_attn: None,
            mlp: MlpKind::SWIGLU,
            hidden_dim,
            mlp_bias: false,
            norm: NormKind::RmsNorm { eps: rms_eps },
            norm_position: NormPosition::Pre,
            dropout: 0.0,
            names: BlockNames::llama(),
        }
    }

    /// A BART encoder layer: post-LayerNorm, bidirectional attention, GELU MLP (`fc1`/`fc2`).
    /// Add `cross_attn` and make `attn` causal for a decoder layer.
    pub fn bart(dim: usize, num_heads: usize, hidden_dim: usize, dropout: f64) -> BlockConfig {
        BlockConfig {
            attn: AttentionConfig {
                names: crate::attention::AttentionNames::bart(),
                ..AttentionConfig::new(dim, num_heads)
            },
            cross_attn: None,
            mlp: MlpKind::Plain(crate::module::Activation::Gelu),
            hidden_dim,
            mlp_bias: true,
            norm: NormKind::LayerNorm {
                eps: 1e-5,
                bias: true,
            },
            norm_position: NormPosition::Post,
            dropout,
            names: BlockNames::bart(),
        }
    }
}

/// What a block reads besides its input.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockInputs<'a> {
    /// Self-attention mask ([`crate::attention::mask_to_bias`]); with a cache it covers every
    /// stored position plus the new ones.
    pub mask: Option<&'a Tensor>,
    /// The encoder output cross-attention reads (`[B, Lm, kv_dim]`).
    pub memory: Option<&'a Tensor>,
    /// Padding mask over the memory positions.
    pub memory_mask: Option<&'a Tensor>,
    /// Position of the first token when no cache is given (RoPE/ALiBi).
    pub offset: usize,
}

/// One transformer layer (see the module docs).
#[derive(Clone, Debug)]
pub struct TransformerBlock {
    pub self_attn: MultiHeadAttention,
    pub attn_norm: Norm,
    pub cross_attn: Option<MultiHeadAttention>,
    pub cross_attn_norm: Option<Norm>,
    pub mlp: FeedForward,
    pub mlp_norm: Norm,
    pub norm_position: NormPosition,
    pub dropout: Dropout,
}

impl TransformerBlock {
    /// Assemble from built parts (no cross-attention; set the fields for one).
    pub fn new(
        self_attn: MultiHeadAttention,
        attn_norm: Norm,
        mlp: FeedForward,
        mlp_norm: Norm,
        norm_position: NormPosition,
        dropout: f64,
    ) -> Result<TransformerBlock> {
        Ok(TransformerBlock {
            self_attn,
            attn_norm,
            cross_attn: None,
            cross_attn_norm: None,
            mlp,
            mlp_norm,
            norm_position,
            dropout: Dropout::new(dropout)?,
        })
    }

    pub fn build(vb: &VarBuilder, cfg: &BlockConfig) -> Result<TransformerBlock> {
        let rope = shared_rope(vb, cfg)?;
        Self::build_with_rope(vb, cfg, rope)
    }

    /// [`TransformerBlock::build`] with a RoPE cache shared between layers.
    pub fn build_with_rope(
        vb: &VarBuilder,
        cfg: &BlockConfig,
        rope: Option<RopeCache>,
    ) -> Result<TransformerBlock> {
        let n = &cfg.names;
        let dim = cfg.attn.dim;
        let self_attn = MultiHeadAttention::build_with_rope(&vb.pp(&n.self_attn), &cfg.attn, rope)?;
        let attn_norm = Norm::build(&vb.pp(&n.attn_norm), cfg.norm, dim)?;
        let mlp_vb = if n.mlp.is_empty() {
            vb.clone()
        } else {
            vb.pp(&n.mlp)
        };
        let mlp = Mlp::build(&mlp_vb, cfg.mlp, dim, cfg.hidden_dim, cfg.mlp_bias)?;
        let mlp_norm = Norm::build(&vb.pp(&n.mlp_norm), cfg.norm, dim)?;
        let mut block = TransformerBlock::new(
            self_attn,
            attn_norm,
            FeedForward::Mlp(mlp),
            mlp_norm,
            cfg.norm_position,
            cfg.dropout,
        )?;
        if let Some(c) = &cfg.cross_attn {
            if c.dim != dim {
                return Err(Error::invalid(
                    "TransformerBlock",
                    format!(
                        "cross-attention dim {} differs from the block's {dim}",
                        c.dim
                    ),
                ));
            }
            block.cross_attn = Some(MultiHeadAttention::build(&vb.pp(&n.cross_attn), c)?);
            block.cross_attn_norm = Some(Norm::build(&vb.pp(&n.cross_attn_norm), cfg.norm, dim)?);
        }
        Ok(block)
    }

    /// Evaluation-mode self-attention block over `x: [B, L, dim]` (no memory, no cache).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let inputs = BlockInputs {
            mask,
            ..Default::default()
        };
        self.forward_t(x, &inputs, None, false)
    }

    /// The block with everything: masks, memory for cross-attention, a KV cache for the
    /// self-attention, and the training flag (residual dropout).
    pub fn forward_t(
        &self,
        x: &Tensor,
        inputs: &BlockInputs,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let attn = |h: &Tensor, cache: Option<&mut KvCache>| match cache {
            Some(c) => self.self_attn.forward_cached(h, inputs.mask, c),
            None => self.self_attn.forward_at(h, inputs.mask, inputs.offset),
        };
        let cross = match (&self.cross_attn, &self.cross_attn_norm, inputs.memory) {
            (Some(c), Some(n), Some(m)) => Some((c, n, m)),
            (None, _, None) => None,
            (Some(_), None, _) => {
                return Err(Error::invalid(
                    "TransformerBlock",
                    "cross_attn is set but cross_attn_norm is not",
                ))
            }
            (Some(_), _, None) => {
                return Err(Error::invalid(
                    "TransformerBlock",
                    "this block cross-attends and needs the encoder memory",
                ))
            }
            (None, _, Some(_)) => {
                return Err(Error::invalid(
                    "TransformerBlock",
                    "a memory was given to a block without cross-attention",
                ))
            }
        };
        let drop = |t: Tensor| self.dropout.forward_t(&t, train);
        match self.norm_position {
            NormPosition::Pre => {
                let mut h = x.add(&drop(attn(&self.attn_norm.forward(x)?, cache)?)?)?;
                if let Some((c, n, m)) = cross {
                    let a = c.forward_cross(&n.forward(&h)?, m, inputs.memory_mask)?;
                    h = h.add(&drop(a)?)?;
                }
                let f = self.mlp.forward_t(&self.mlp_norm.forward(&h)?, train)?;
                h.add(&drop(f)?)
            }
            NormPosition::Post => {
                let mut h = self.attn_norm.forward(&x.add(&drop(attn(x, cache)?)?)?)?;
                if let Some((c, n, m)) = cross {
                    let a = c.forward_cross(&h, m, inputs.memory_mask)?;
                    h = n.forward(&h.add(&drop(a)?)?)?;
                }
                let f = self.mlp.forward_t(&h, train)?;
                self.mlp_norm.forward(&h.add(&drop(f)?)?)
            }
        }
    }
}

/// One RoPE table for every layer built from `cfg`.
fn shared_rope(vb: &VarBuilder, cfg: &BlockConfig) -> Result<Option<RopeCache>> {
    match &cfg.attn.rope {
        Some(r) => Ok(Some(RopeCache::new(
            r,
            cfg.attn.max_positions,
            if vb.dtype() == DType::F64 {
                DType::F64
            } else {
                DType::F32
            },
            vb.device(),
        )?)),
        None => Ok(None),
    }
}

fn build_layers(
    vb: &VarBuilder,
    cfg: &BlockConfig,
    num_layers: usize,
    final_norm: Option<&str>,
) -> Result<(Vec<TransformerBlock>, Option<Norm>)> {
    let rope = shared_rope(vb, cfg)?;
    let layers = (0..num_layers)
        .map(|i| TransformerBlock::build_with_rope(&vb.pp("layers").pp(i), cfg, rope.clone()))
        .collect::<Result<Vec<_>>>()?;
    let norm = match final_norm {
        Some(name) => Some(Norm::build(&vb.pp(name), cfg.norm, cfg.attn.dim)?),
        None => None,
    };
    Ok((layers, norm))
}

fn check_caches(caches: &[KvCache], layers: usize) -> Result<()> {
    if caches.len() != layers {
        return Err(Error::invalid(
            "transformer stack",
            format!("{} KV caches for {layers} layers", caches.len()),
        ));
    }
    Ok(())
}

fn new_caches(
    layers: &[TransformerBlock],
    batch: usize,
    max_len: usize,
    dtype: DType,
    device: &Device,
) -> Result<Vec<KvCache>> {
    layers
        .iter()
        .map(|l| KvCache::for_attention(&l.self_attn, batch, max_len, dtype, device))
        .collect()
}

/// A stack of self-attention blocks (`layers.{i}`) and an optional final norm: a BERT-style
/// encoder, or with causal attention a decoder-only language model body.
#[derive(Clone, Debug)]
pub struct TransformerEncoder {
    pub layers: Vec<TransformerBlock>,
    pub norm: Option<Norm>,
}

impl TransformerEncoder {
    /// `num_layers` blocks under `vb.pp("layers").pp(i)` sharing one RoPE table, and a final
    /// norm named `final_norm` (Llama: `"norm"`).
    pub fn build(
        vb: &VarBuilder,
        cfg: &BlockConfig,
        num_layers: usize,
        final_norm: Option<&str>,
    ) -> Result<TransformerEncoder> {
        if cfg.cross_attn.is_some() {
            return Err(Error::invalid(
                "TransformerEncoder",
                "encoder blocks have no cross-attention; use TransformerDecoder",
            ));
        }
        let (layers, norm) = build_layers(vb, cfg, num_layers, final_norm)?;
        Ok(TransformerEncoder { layers, norm })
    }

    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let inputs = BlockInputs {
            mask,
            ..Default::default()
        };
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward_t(&h, &inputs, None, train)?;
        }
        self.finish(h)
    }

    /// One KV cache per layer.
    pub fn new_caches(
        &self,
        batch: usize,
        max_len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Vec<KvCache>> {
        new_caches(&self.layers, batch, max_len, dtype, device)
    }

    /// Decoding step(s): new tokens `x` after the positions in `caches` (evaluation mode).
    pub fn forward_cached(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        caches: &mut [KvCache],
    ) -> Result<Tensor> {
        check_caches(caches, self.layers.len())?;
        let inputs = BlockInputs {
            mask,
            ..Default::default()
        };
        let mut h = x.clone();
        for (l, c) in self.layers.iter().zip(caches.iter_mut()) {
            h = l.forward_t(&h, &inputs, Some(c), false)?;
        }
        self.finish(h)
    }

    fn finish(&self, h: Tensor) -> Result<Tensor> {
        match &self.norm {
            Some(n) => n.forward(&h),
            None => Ok(h),
        }
    }
}

/// A stack of decoder blocks (causal self-attention, cross-attention over an encoder's
/// output) with an optional final norm.
#[derive(Clone, Debug)]
pub struct TransformerDecoder {
    pub layers: Vec<TransformerBlock>,
    pub norm: Option<Norm>,
}

impl TransformerDecoder {
    /// As [`TransformerEncoder::build`]; `cfg.cross_attn` must be set.
    pub fn build(
        vb: &VarBuilder,
        cfg: &BlockConfig,
        num_layers: usize,
        final_norm: Option<&str>,
    ) -> Result<TransformerDecoder> {
        if cfg.cross_attn.is_none() {
            return Err(Error::invalid(
                "TransformerDecoder",
                "decoder blocks need a cross-attention config",
            ));
        }
        let (layers, norm) = build_layers(vb, cfg, num_layers, final_norm)?;
        Ok(TransformerDecoder { layers, norm })
    }

    pub fn forward_t(
        &self,
        x: &Tensor,
        memory: &Tensor,
        mask: Option<&Tensor>,
        memory_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let inputs = BlockInputs {
            mask,
            memory: Some(memory),
            memory_mask,
            offset: 0,
        };
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward_t(&h, &inputs, None, train)?;
        }
        self.finish(h)
    }

    pub fn new_caches(
        &self,
        batch: usize,
        max_len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Vec<KvCache>> {
        new_caches(&self.layers, batch, max_len, dtype, device)
    }

    /// Decoding step(s) with per-layer self-attention caches (evaluation mode).
    pub fn forward_cached(
        &self,
        x: &Tensor,
        memory: &Tensor,
        mask: Option<&Tensor>,
        memory_mask: Option<&Tensor>,
        caches: &mut [KvCache],
    ) -> Result<Tensor> {
        check_caches(caches, self.layers.len())?;
        let inputs = BlockInputs {
            mask,
            memory: Some(memory),
            memory_mask,
            offset: 0,
        };
        let mut h = x.clone();
        for (l, c) in self.layers.iter().zip(caches.iter_mut()) {
            h = l.forward_t(&h, &inputs, Some(c), false)?;
        }
        self.finish(h)
    }

    fn finish(&self, h: Tensor) -> Result<Tensor> {
        match &self.norm {
            Some(n) => n.forward(&h),
            None => Ok(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::var_builder::VarMap;
    use tensor_core::no_grad;

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        let (a, b) = (a.to_f64_vec()?, b.to_f64_vec()?);
        Ok(a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max))
    }

    #[test]
    fn decoder_stack_caches_and_names() -> Result<()> {
        let _g = no_grad();
        let dev = tensor_cpu::device();
        tensor_core::manual_seed(5);
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F64, &dev);
        let mut cfg = BlockConfig::bart(8, 2, 16, 0.1);
        cfg.attn.causal = true;
        cfg.cross_attn = Some(AttentionConfig {
            kv_dim: Some(6),
            ..cfg.attn.clone()
        });
        let dec = TransformerDecoder::build(&vb.pp("decoder"), &cfg, 2, Some("layer_norm"))?;
        let names: Vec<String> = map.all_vars().into_iter().map(|(k, _)| k).collect();
        for n in [
            "decoder.layers.0.self_attn.q_proj.weight",
            "decoder.layers.1.self_attn.out_proj.bias",
            "decoder.layers.0.encoder_attn.k_proj.weight",
            "decoder.layers.0.encoder_attn_layer_norm.weight",
            "decoder.layers.1.fc1.weight",
            "decoder.layers.1.final_layer_norm.bias",
            "decoder.layer_norm.weight",
        ] {
            assert!(names.iter().any(|k| k == n), "missing {n} in {names:?}");
        }
        let x = Tensor::randn(0.0, 1.0, (2, 5, 8), DType::F64, &dev)?;
        let mem = Tensor::randn(0.0, 1.0, (2, 3, 6), DType::F64, &dev)?;
        let full = dec.forward_t(&x, &mem, None, None, false)?;
        let mut caches = dec.new_caches(2, 5, DType::F64, &dev)?;
        let mut parts =
            vec![dec.forward_cached(&x.narrow(1, 0, 2)?, &mem, None, None, &mut caches)?];
        for t in 2..5 {
            parts.push(dec.forward_cached(&x.narrow(1, t, 1)?, &mem, None, None, &mut caches)?);
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        let d = max_diff(&full, &Tensor::cat(&refs, 1)?)?;
        assert!(d < 1e-12, "{d}");
        // Training mode drops (differs), evaluation does not.
        let tr = dec.forward_t(&x, &mem, None, None, true)?;
        assert!(max_diff(&tr, &full)? > 1e-6);
        assert!(dec.forward_t(&x, &x, None, None, false).is_err()); // memory width 8 ≠ 6
        assert!(dec.layers[0]
            .forward_t(&x, &BlockInputs::default(), None, false)
            .is_err());
        Ok(())
    }

    #[test]
    fn llama_stack_prefill_and_decode() -> Result<()> {
        let _g = no_grad();
        let dev = tensor_cpu::device();
        tensor_core::manual_seed(9);
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F64, &dev);
        let cfg = BlockConfig::llama(AttentionConfig::llama(16, 4, 2, 10000.0, 32), 24, 1e-6);
        let enc = TransformerEncoder::build(&vb.pp("model"), &cfg, 2, Some("norm"))?;
        assert!(map.get_var("model.layers.1.mlp.gate_proj.weight").is_some());
        assert!(map
            .get_var("model.layers.0.input_layernorm.weight")
            .is_some());
        assert!(map.get_var("model.norm.weight").is_some());
        let x = Tensor::randn(0.0, 1.0, (1, 6, 16), DType::F64, &dev)?;
        let full = enc.forward_t(&x, None, false)?;
        let mut caches = enc.new_caches(1, 8, DType::F64, &dev)?;
        let a = enc.forward_cached(&x.narrow(1, 0, 3)?, None, &mut caches)?;
        let b = enc.forward_cached(&x.narrow(1, 3, 3)?, None, &mut caches)?;
        let d = max_diff(&full, &Tensor::cat(&[&a, &b], 1)?)?;
        assert!(d < 1e-12, "{d}");
        assert!(enc.forward_cached(&x, None, &mut caches[..1]).is_err());
        Ok(())
    }
}
