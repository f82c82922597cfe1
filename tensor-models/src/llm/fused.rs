//! GGUF models on a backend's fused decoder ([`tensor_core::decoder`]): the weights stay
//! quantized in the memory-mapped file and the backend runs the whole forward pass.
//!
//! Only the plain Llama-style block qualifies (RMS norm, RoPE over the whole head, SwiGLU,
//! optional q/k/v biases: Llama, Mistral without sliding windows, Qwen2, SmolLM); anything
//! else — or a backend without a fused engine — uses the module graph of [`super::LlmDecoder`].

use tensor_core::decoder::{DecoderLayerSpec, DecoderSpec, FusedDecoder, Weight};
use tensor_core::{Device, Error, Result, Tensor};
use tensor_io::gguf::GgufFile;
use tensor_nn::transformer::NormKind;
use tensor_nn::Activation;

use super::config::{Family, FfnKind, LlmConfig};
use crate::lm::{CausalLm, LmInfo};

/// The fused-decoder spec of a GGUF model, or `None` when its architecture has a feature the
/// fused decoder does not implement.
pub(crate) fn gguf_spec(
    cfg: &LlmConfig,
    file: &GgufFile,
    device: &Device,
    max_seq_len: usize,
) -> Result<Option<DecoderSpec>> {
    let eps = match cfg.norm {
        NormKind::RmsNorm { eps } => eps,
        NormKind::LayerNorm { .. } => return Ok(None),
    };
    let Some(rope) = &cfg.rope else {
        return Ok(None);
    };
    let plain = matches!(cfg.family, Family::Llama | Family::Mistral | Family::Qwen2)
        && cfg.ffn == FfnKind::Gated(Activation::Silu)
        && !cfg.mlp_bias
        && !cfg.o_bias
        && !cfg.qk_norm
        && cfg.embed_scale.is_none()
        && cfg.attn_scale.is_none()
        && cfg.attn_softcap.is_none()
        && cfg.final_softcap.is_none()
        && cfg.sliding_layers.iter().all(|s| !s)
        && !cfg.sandwich_norms
        && !cfg.norm_plus_one
        && !cfg.learned_positions
        && cfg.rope_local.as_ref().is_none_or(|r| r == rope)
        && rope.head_dim == cfg.head_dim
        && !rope.is_dynamic();
    if !plain {
        return Ok(None);
    }
    let (inv_freq, attention_factor) = rope.inv_freq(None)?;
    if attention_factor != 1.0 {
        return Ok(None);
    }
    let q = |name: &str| -> Result<Weight> { Ok(Weight::Quant(file.qtensor(name)?)) };
    let vector = |name: &str| file.tensor(name, device);
    let opt = |name: &str| -> Result<Option<Tensor>> {
        match file.tensor_info(name) {
            Some(_) => Ok(Some(file.tensor(name, device)?)),
            None => Ok(None),
        }
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let n = |part: &str| format!("blk.{i}.{part}");
        layers.push(DecoderLayerSpec {
            attn_norm: vector(&n("attn_norm.weight"))?,
            wq: q(&n("attn_q.weight"))?,
            wk: q(&n("attn_k.weight"))?,
            wv: q(&n("attn_v.weight"))?,
            bq: opt(&n("attn_q.bias"))?,
            bk: opt(&n("attn_k.bias"))?,
            bv: opt(&n("attn_v.bias"))?,
            wo: q(&n("attn_output.weight"))?,
            ffn_norm: vector(&n("ffn_norm.weight"))?,
            w_gate: q(&n("ffn_gate.weight"))?,
            w_up: q(&n("ffn_up.weight"))?,
            w_down: q(&n("ffn_down.weight"))?,
        });
    }
    let embedding = q("token_embd.weight")?;
    let lm_head = match file.tensor_info("output.weight") {
        Some(_) => q("output.weight")?,
        None => embedding.clone(),
    };
    Ok(Some(DecoderSpec {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        num_heads: cfg.num_heads,
        num_kv_heads: cfg.num_kv_heads,
        head_dim: cfg.head_dim,
        intermediate_size: cfg.intermediate_size,
        rms_eps: eps as f32,
        rope_inv_freq: inv_freq.iter().map(|&f| f as f32).collect(),
        // llama.cpp's converter permutes q/k of "llama" models for adjacent-pair rotation.
        rope_interleaved: cfg.architecture == "llama",
        embedding,
        layers,
        final_norm: vector("output_norm.weight")?,
        lm_head,
        max_positions: max_seq_len,
    }))
}

/// A [`CausalLm`] over fused decoders, one per sequence of a batch (made on first use; rows
/// run one after the other), logits copied out of the decoders' buffers.
pub struct FusedLm {
    info: LmInfo,
    device: Device,
    spec: DecoderSpec,
    inner: Vec<Box<dyn FusedDecoder>>,
}

impl FusedLm {
    pub(crate) fn new(
        info: LmInfo,
        device: Device,
        spec: DecoderSpec,
        first: Box<dyn FusedDecoder>,
    ) -> FusedLm {
        FusedLm {
            info,
            device,
            spec,
            inner: vec![first],
        }
    }

    /// The engine of the first sequence, for callers that want its allocation-free interface.
    pub fn decoder(&mut self) -> &mut dyn FusedDecoder {
        &mut *self.inner[0]
    }

    fn run(&mut self, ids: &Tensor, pos: usize, all: bool) -> Result<Tensor> {
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
        if pos != self.cache_len() || (pos > 0 && b > self.inner.len()) {
            return bad(format!(
                "forward of {b} sequences at position {pos}, but the cache holds {} positions \
                 of {} (call reset or truncate_cache first)",
                self.cache_len(),
                self.inner.len()
            ));
        }
        if pos + l > self.info.max_seq_len {
            return bad(format!(
                "positions {pos}..{} exceed max_seq_len {}",
                pos + l,
                self.info.max_seq_len
            ));
        }
        let toks: Vec<u32> = ids
            .flatten_all()?
            .to_dtype(tensor_core::DType::I64)?
            .to_vec::<i64>()?
            .into_iter()
            .map(|x| u32::try_from(x).unwrap_or(u32::MAX))
            .collect();
        while self.inner.len() < b {
            let dec = self
                .device
                .backend()
                .fused_decoder(&self.spec)?
                .ok_or_else(|| {
                    Error::msg("the backend no longer offers a fused decoder for this model")
                })?;
            self.inner.push(dec);
        }
        let rows = if all { l } else { 1 };
        let mut logits = Vec::with_capacity(b * rows * self.info.vocab_size);
        for (i, dec) in self.inner.iter_mut().take(b).enumerate() {
            if pos == 0 {
                dec.truncate(0)?;
            }
            logits.extend_from_slice(dec.forward(&toks[i * l..(i + 1) * l], all)?);
        }
        // Sequences beyond this batch would go stale; forget them.
        self.inner.truncate(b.max(1));
        Tensor::from_vec(logits, (b, rows, self.info.vocab_size), &self.device)
    }
}

impl CausalLm for FusedLm {
    fn info(&self) -> &LmInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        self.run(ids, pos, true)
    }

    fn forward_last(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        self.run(ids, pos, false)
    }

    fn reset(&mut self) {
        for d in &mut self.inner {
            // Truncating to zero cannot fail.
            let _ = d.truncate(0);
        }
    }

    fn cache_len(&self) -> usize {
        self.inner[0].cache_len()
    }

    fn truncate_cache(&mut self, len: usize) -> Result<()> {
        for d in &mut self.inner {
            d.truncate(len)?;
        }
        Ok(())
    }
}
