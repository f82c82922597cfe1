//! The interface between pretrained language models and everything that drives them
//! (generation, the chat, perplexity and embedding programs): a causal LM owns its KV cache
//! and is fed token ids at explicit positions.

use tensor_core::{Device, Result, Tensor};

/// What a driver needs to know about a loaded causal LM.
#[derive(Clone, Debug, PartialEq)]
pub struct LmInfo {
    /// The architecture name as written in the checkpoint (`llama`, `qwen2`, `gemma2`, ...).
    pub architecture: String,
    /// Number of output logits per position.
    pub vocab_size: usize,
    /// The longest sequence (prompt + generated tokens) the model and its cache accept.
    pub max_seq_len: usize,
    /// End-of-sequence ids from the model config (the tokenizer may add more).
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence id, if the model has one.
    pub bos_token_id: Option<u32>,
}

/// A decoder-only language model with its own preallocated KV cache.
///
/// `forward(ids, pos)` runs `ids: [B, L]` (integer dtype) at absolute positions
/// `pos..pos + L` of every sequence in the batch, attending to the cache entries
/// `0..pos` written by earlier calls plus the new ones, and returns logits `[B, L, vocab]`
/// (f32). Prefill is one call with the whole prompt at `pos = 0`; decoding then feeds one
/// token per sequence at `pos = prompt_len`, `prompt_len + 1`, ... A `pos` other than the
/// cache's current length, or `pos + L > max_seq_len`, is an error.
pub trait CausalLm: Send {
    fn info(&self) -> &LmInfo;
    fn device(&self) -> &Device;
    fn forward(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor>;
    /// [`CausalLm::forward`] when only the logits of the last position are wanted (as in
    /// generation): `[B, 1, vocab]`. Models that can skip the LM head for the other
    /// positions override it.
    fn forward_last(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        let logits = self.forward(ids, pos)?;
        let l = logits.dim(1)?;
        logits.narrow(1, l.saturating_sub(1), 1)
    }
    /// Empty the KV cache (a new conversation); the next `forward` starts at `pos = 0`.
    fn reset(&mut self);
    /// The number of positions held in the cache.
    fn cache_len(&self) -> usize;
    /// Keep only the first `len` cached positions (e.g. to reuse a shared prompt prefix).
    fn truncate_cache(&mut self, len: usize) -> Result<()>;
}
