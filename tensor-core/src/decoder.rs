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
use crate::{Error, Result, Tensor};

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

impl DecoderSpec {
    /// The checks every fused decoder makes before it builds: KV heads dividing the heads,
    /// an even head dim with `head_dim / 2` RoPE frequencies, a vocabulary of 1 to 2³²
    /// tokens, and every weight, bias and norm of the shape the dims imply.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::msg(format!("fused decoder: {msg}")));
        let (d, nh, nkv, hd) = (
            self.hidden_size,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
        );
        if nkv == 0 || !nh.is_multiple_of(nkv) || hd == 0 || !hd.is_multiple_of(2) {
            return bad(format!(
                "{nh} heads, {nkv} KV heads, head dim {hd}: heads must be a multiple of KV \
                 heads and the head dim even and positive"
            ));
        }
        if self.rope_inv_freq.len() != hd / 2 {
            return bad(format!(
                "{} RoPE frequencies for head dim {hd}",
                self.rope_inv_freq.len()
            ));
        }
        let vocab = self.vocab_size;
        if vocab == 0 || vocab > u32::MAX as usize {
            return bad(format!("vocabulary of {vocab}"));
        }
        let (qd, kvd, ff) = (nh * hd, nkv * hd, self.intermediate_size);
        let mat = |w: &Weight, rows: usize, cols: usize, name: &str| -> Result<()> {
            if w.dims() != [rows, cols] {
                return bad(format!(
                    "{name} is {:?}, expected [{rows}, {cols}]",
                    w.dims()
                ));
            }
            Ok(())
        };
        let vec = |t: &Tensor, len: usize, name: &str| -> Result<()> {
            if t.elem_count() != len {
                return bad(format!(
                    "{name} has {} values, expected {len}",
                    t.elem_count()
                ));
            }
            Ok(())
        };
        mat(&self.embedding, vocab, d, "embedding")?;
        mat(&self.lm_head, vocab, d, "lm_head")?;
        vec(&self.final_norm, d, "final norm")?;
        for (i, l) in self.layers.iter().enumerate() {
            let n = |what: &str| format!("layer {i} {what}");
            vec(&l.attn_norm, d, &n("attention norm"))?;
            vec(&l.ffn_norm, d, &n("feed-forward norm"))?;
            mat(&l.wq, qd, d, &n("wq"))?;
            mat(&l.wk, kvd, d, &n("wk"))?;
            mat(&l.wv, kvd, d, &n("wv"))?;
            mat(&l.wo, d, qd, &n("wo"))?;
            mat(&l.w_gate, ff, d, &n("w_gate"))?;
            mat(&l.w_up, ff, d, &n("w_up"))?;
            mat(&l.w_down, d, ff, &n("w_down"))?;
            for (b, len, what) in [(&l.bq, qd, "bq"), (&l.bk, kvd, "bk"), (&l.bv, kvd, "bv")] {
                if let Some(b) = b {
                    vec(b, len, &n(what))?;
                }
            }
        }
        Ok(())
    }
}

/// The checks of a fused decoder's `forward`: at least one token, every id below `vocab`,
/// and `cached + tokens.len()` within `max_positions`.
pub fn check_tokens(
    tokens: &[u32],
    vocab: usize,
    cached: usize,
    max_positions: usize,
) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::msg(
            "fused decoder: forward needs at least one token",
        ));
    }
    if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::msg(format!(
            "fused decoder: token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let end = cached + tokens.len();
    if end > max_positions {
        return Err(Error::msg(format!(
            "fused decoder: {end} positions exceed the maximum of {max_positions}"
        )));
    }
    Ok(())
}

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

/// A running fused decoder with its KV cache.
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
