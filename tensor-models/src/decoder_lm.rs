//! A decoder-only transformer language model in the Llama layout (token embedding, pre-norm
//! blocks with RoPE attention and SwiGLU, final RMSNorm, LM head), with Hugging Face names
//! (`model.embed_tokens`, `model.layers.{i}`, `model.norm`, `lm_head`). Built for training
//! from scratch (the `train_lm` example and the training benchmark), with optional
//! activation checkpointing per block.

use tensor_core::{Error, Result, Tensor};
use tensor_nn::attention::AttentionConfig;
use tensor_nn::transformer::{BlockConfig, BlockInputs, TransformerBlock};
use tensor_nn::{
    linear_no_bias, Checkpointed, Embedding, Linear, Module, ModuleT, RmsNorm, VarBuilder, VarMap,
};

/// Shape of a [`DecoderLm`].
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderLmConfig {
    pub vocab: usize,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Width of the SwiGLU hidden layer.
    pub hidden: usize,
    /// Longest sequence (the RoPE table size).
    pub max_len: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    /// Use the embedding table as the LM head (no `lm_head.weight`).
    pub tie_embeddings: bool,
}

impl DecoderLmConfig {
    fn validate(&self) -> Result<()> {
        let ok = self.vocab > 0
            && self.dim > 0
            && self.layers > 0
            && self.heads > 0
            && self.kv_heads > 0
            && self.dim.is_multiple_of(self.heads)
            && self.heads.is_multiple_of(self.kv_heads)
            && (self.dim / self.heads).is_multiple_of(2)
            && self.max_len > 0;
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "DecoderLm",
                format!(
                    "bad config {self:?}: need positive sizes, heads dividing dim into an even \
                     head size, and kv_heads dividing heads"
                ),
            ))
        }
    }
}

/// A block as a train/eval module, so it can be wrapped in [`Checkpointed`].
struct Block(TransformerBlock);

impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.0.forward_t(xs, &BlockInputs::default(), None, train)
    }
}

enum Layer {
    Plain(Box<Block>),
    Checkpointed(Checkpointed<Block>),
}

/// The language model. `forward_t(ids: [B, L] integer) -> logits [B, L, vocab]`.
pub struct DecoderLm {
    cfg: DecoderLmConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    head: Option<Linear>,
}

impl DecoderLm {
    /// Build under `vb`. With `checkpoint_activations`, each block's activations are
    /// recomputed during backward instead of stored; `vars` must then be the map behind `vb`
    /// (the blocks' parameters are looked up there by name).
    pub fn build(
        vb: &VarBuilder,
        cfg: &DecoderLmConfig,
        checkpoint_activations: Option<&VarMap>,
    ) -> Result<DecoderLm> {
        cfg.validate()?;
        let m = vb.pp("model");
        let embed = Embedding::build(&m.pp("embed_tokens"), cfg.vocab, cfg.dim)?;
        let attn = AttentionConfig::llama(
            cfg.dim,
            cfg.heads,
            cfg.kv_heads,
            cfg.rope_theta,
            cfg.max_len,
        );
        let bc = BlockConfig::llama(attn, cfg.hidden, cfg.rms_eps);
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let lvb = m.pp("layers").pp(i);
            let block = Block(TransformerBlock::build(&lvb, &bc)?);
            layers.push(match checkpoint_activations {
                Some(vars) => {
                    let params = vars.vars_with_prefix(&format!("{}.", lvb.prefix()));
                    Layer::Checkpointed(Checkpointed::new(block, params))
                }
                None => Layer::Plain(Box::new(block)),
            });
        }
        let norm = RmsNorm::build(&m.pp("norm"), cfg.dim, cfg.rms_eps)?;
        let head = if cfg.tie_embeddings {
            None
        } else {
            Some(linear_no_bias(&vb.pp("lm_head"), cfg.dim, cfg.vocab)?)
        };
        Ok(DecoderLm {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            head,
        })
    }

    pub fn config(&self) -> &DecoderLmConfig {
        &self.cfg
    }

    /// Logits for every position of `ids: [B, L]`.
    pub fn forward_t(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        if ids.rank() != 2 || ids.dims()[1] > self.cfg.max_len || ids.dims()[1] == 0 {
            return Err(Error::invalid(
                "DecoderLm",
                format!(
                    "expected token ids [batch, len] with 0 < len <= {}, got {:?}",
                    self.cfg.max_len,
                    ids.dims()
                ),
            ));
        }
        let mut h = self.embed.forward(ids)?;
        for l in &self.layers {
            h = match l {
                Layer::Plain(b) => b.forward_t(&h, train)?,
                Layer::Checkpointed(b) => b.forward_t(&h, train)?,
            };
        }
        let h = self.norm.forward(&h)?;
        match &self.head {
            Some(head) => head.forward(&h),
            None => Linear::new(self.embed.weight.clone(), None)?.forward(&h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor_core::{manual_seed, DType};

    fn cfg() -> DecoderLmConfig {
        DecoderLmConfig {
            vocab: 17,
            dim: 16,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            hidden: 24,
            max_len: 12,
            rope_theta: 10000.0,
            rms_eps: 1e-6,
            tie_embeddings: false,
        }
    }

    #[test]
    fn checkpointed_model_matches_plain() -> Result<()> {
        let dev = tensor_cpu::device();
        manual_seed(1);
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F64, &dev);
        let plain = DecoderLm::build(&vb, &cfg(), None)?;
        let ck = DecoderLm::build(&vb, &cfg(), Some(&vars))?;
        let ids = Tensor::from_vec(vec![1i64, 5, 3, 16, 0, 2, 9, 4], (2, 4), &dev)?;
        let loss = |m: &DecoderLm| -> Result<Vec<Vec<f64>>> {
            let l = m.forward_t(&ids, true)?.sqr()?.mean_all()?;
            let g = l.backward()?;
            let mut out = vec![vec![l.to_f64()?]];
            for (_, v) in vars.trainable_vars() {
                out.push(
                    g.get(v.as_tensor())
                        .expect("every parameter gets a gradient")
                        .to_f64_vec()?,
                );
            }
            Ok(out)
        };
        let (a, b) = (loss(&plain)?, loss(&ck)?);
        for (u, v) in a.iter().zip(&b) {
            for (p, q) in u.iter().zip(v) {
                assert!((p - q).abs() <= 1e-12 * (1.0 + p.abs()), "{p} vs {q}");
            }
        }
        assert!(plain.forward_t(&ids.reshape(8)?, false).is_err());
        let bad = DecoderLmConfig { heads: 3, ..cfg() };
        assert!(DecoderLm::build(&vb.pp("x"), &bad, None).is_err());
        Ok(())
    }
}
