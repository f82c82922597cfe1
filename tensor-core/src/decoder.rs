//! A fused decoder: the whole forward pass of a Llama-style language model as one backend
//! operation, for inference.
//!
//! Generating text step by step through tensor ops allocates every intermediate and crosses a
//! thread pool a dozen times per layer; at 135M parameters that overhead costs more than the
//! arithmetic. A backend that can do better runs the model itself from a [`DecoderSpec`]
//! (weights dense or quantized, borrowed, never copied) with its buffers, KV cache and threads
//! set up once, so a generated token allocates nothing. [`BackendDevice::fused_decoder`]
//! returns `None` when the backend has no such engine (the default), and model code then runs
//! its ordinary module graph — the "default composition" of this op.
//!
//! [`BackendDevice::fused_decoder`]: crate::BackendDevice::fused_decoder

use crate::quant::QTensor;
use crate::{Result, Tensor};

/// A weight matrix `[out, in]`: dense (any float dtype) or quantized.
#[derive(Clone, Debug)]
pub enum Weight {
    Dense(Tensor),
    Quant(QTensor),
}

impl Weight {
    /// `[out, in]`.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Dense(t) => t.dims().to_vec(),
            Weight::Quant(q) => q.dims().to_vec(),
        }
    }
}

/// One pre-norm block: RMS-normed attention with RoPE and grouped KV heads, then an RMS-normed
/// SwiGLU feed-forward, each added to the residual stream.
#[derive(Clone, Debug)]
pub struct DecoderLayerSpec {
    pub attn_norm: Tensor,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    /// Biases of q/k/v (Qwen2), `[out]`.
    pub bq: Option<Tensor>,
    pub bk: Option<Tensor>,
    pub bv: Option<Tensor>,
    pub wo: Weight,
    pub ffn_norm: Tensor,
    pub w_gate: Weight,
    pub w_up: Weight,
    pub w_down: Weight,
}

/// The whole model.
#[derive(Clone, Debug)]
pub struct DecoderSpec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub rms_eps: f32,
    /// Inverse frequencies of the rotary embedding, `head_dim / 2` of them (scaling applied).
    pub rope_inv_freq: Vec<f32>,
    /// Rotate adjacent pairs (2i, 2i+1), as GGUF's permuted llama weights expect, instead of
    /// the two halves of each head.
    pub rope_interleaved: bool,
    /// Token embeddings `[vocab, hidden]`.
    pub embedding: Weight,
    pub layers: Vec<DecoderLayerSpec>,
    pub final_norm: Tensor,
    /// `[vocab, hidden]`; often the embedding matrix itself.
    pub lm_head: Weight,
    /// Positions the KV cache may hold.
    pub max_positions: usize,
}

/// A running fused decoder with its KV cache.
/// The index of the largest value: the lowest index among equal maxima, NaN never chosen
/// (0 for an empty or all-NaN slice).
pub fn argmax_f32(v: &[f32]) -> u32 {
    let (mut best, mut at) = (f32::NEG_INFINITY, None);
    for (i, &x) in v.iter().enumerate() {
        if x > best || (at.is_none() && x == best) {
            best = x;
            at = Some(i as u32);
        }
    }
    at.unwrap_or(0)
}

pub trait FusedDecoder: Send {
    /// Feed `tokens` at positions `cache_len()..`, append them to the cache, and return the
    /// logits: of the last token (`all_logits == false`, `vocab_size` values) or of every
    /// token (`tokens.len() × vocab_size`, row-major). The slice lives in the decoder's own
    /// buffer until the next call.
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<&[f32]>;
    /// Feed `tokens` like [`FusedDecoder::forward`] and return the id of the last token's
    /// largest logit (greedy decoding; see [`argmax_f32`] for ties and NaN). The default takes
    /// it from `forward`'s logits on the host; a device decoder finds it where the logits are
    /// and copies back one id instead of the whole row.
    fn forward_argmax(&mut self, tokens: &[u32]) -> Result<u32> {
        Ok(argmax_f32(self.forward(tokens, false)?))
    }
    /// Positions held in the cache.
    fn cache_len(&self) -> usize;
    /// Forget every position from `len` on (`0` clears the cache).
    fn truncate(&mut self, len: usize) -> Result<()>;
    /// The number of threads the decoder runs on.
    fn threads(&self) -> usize;
}

#[cfg(test)]
mod tests {
    use super::argmax_f32;

    #[test]
    fn argmax_picks_the_first_maximum_and_skips_nan() {
        assert_eq!(argmax_f32(&[1.0, 3.0, 2.0, 3.0]), 1);
        assert_eq!(argmax_f32(&[f32::NAN, 0.5, f32::NAN, 0.7]), 3);
        assert_eq!(argmax_f32(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax_f32(&[f32::NAN, f32::NEG_INFINITY]), 1);
        assert_eq!(argmax_f32(&[f32::NAN]), 0);
        assert_eq!(argmax_f32(&[]), 0);
    }
}
