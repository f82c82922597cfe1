//! Pretrained decoder-only LLMs: Llama 2/3/3.1/3.2, Mistral, Mixtral, Qwen2/2.5, Qwen3,
//! Gemma 1/2/3 (text), Phi-3 and GPT-2, from Hugging Face checkpoints or GGUF files, behind
//! the [`CausalLm`](crate::CausalLm) trait.
//!
//! # Loading
//!
//! ```no_run
//! # fn run(device: &tensor_core::Device) -> tensor_core::Result<()> {
//! use std::path::Path;
//! use tensor_models::llm::{load, load_with, LoadOptions};
//!
//! // A GGUF file (quantized tensors are dequantized to f32) ...
//! let mut lm = load(Path::new("SmolLM2-135M-Instruct.Q4_1.gguf"), device)?;
//! // ... or a Hugging Face folder: config.json + model.safetensors (or sharded
//! // model-*.safetensors with model.safetensors.index.json, or pytorch_model.bin / .pth).
//! let opts = LoadOptions { max_seq_len: Some(2048), ..LoadOptions::default() };
//! let other = load_with(Path::new("Qwen2.5-0.5B-Instruct/"), device, &opts)?;
//!
//! let tokenizer = lm.tokenizer()?; // from the GGUF metadata, or tokenizer.json
//! let ids = tokenizer.encode("Hello", false)?;
//! let ids = tensor_core::Tensor::from_vec(ids.clone(), (1, ids.len()), device)?;
//! let logits = lm.model.forward(&ids, 0)?; // [1, L, vocab], f32; then decode at pos = L ...
//! # let _ = (logits, other); Ok(()) }
//! ```
//!
//! * [`load`]`(path, device) -> Result<`[`LoadedLm`]`>` and [`load_with`] (with
//!   [`LoadOptions`]: `max_seq_len` (default: the context length, at most 4096) and `dtype`
//!   (f32 default; bf16/f16 optional)).
//! * [`LoadedLm`]: `model: Box<dyn CausalLm>`, `config: LlmConfig`, `format`, `path`, and
//!   `gguf: Option<Arc<GgufFile>>` (metadata: tokenizer, chat template); `tokenizer()`,
//!   `gguf_tokenizer_spec()`, `tokenizer_json()`.
//! * [`gguf_tokenizer_spec`]`(&GgufFile) -> Result<GgufTokenizerSpec>` for
//!   `Tokenizer::from_gguf_spec` and `ChatTemplate::from_gguf_spec`.
//! * [`LlmConfig`]`::from_hf_json` / `::from_gguf` and [`LlmDecoder`]`::new(cfg, vb,
//!   max_seq_len)` to build a model over any [`tensor_nn::VarBuilder`] of canonical names.
//!
//! The architecture comes from `config.json`'s `model_type` (or `architectures`) or from GGUF's
//! `general.architecture`; anything else is an error listing [`SUPPORTED_HF_MODEL_TYPES`] /
//! [`SUPPORTED_GGUF_ARCHITECTURES`].
//!
//! # Design
//!
//! One config-driven decoder ([`LlmDecoder`], module `decoder`) serves every family; a family
//! is a set of [`LlmConfig`] switches (module `config`, GPT-2's in `gpt2`). The decoder asks
//! for weights by Hugging Face Llama names and the `weights` module maps them onto each format:
//! it slices fused projections, transposes GPT-2's `Conv1D`, undoes llama.cpp's q/k
//! permutation of `llama` GGUF files (so one rotate-half RoPE serves all), and adds the 1 of
//! Hugging Face Gemma norms. Each layer keeps a preallocated [`tensor_nn::KvCache`]; sliding
//! windows mask the cache instead of rolling it, so memory is `max_seq_len` positions per
//! layer.

mod config;
mod decoder;
mod fused;
mod gpt2;
mod load;
mod weights;

pub use config::{
    Family, FfnKind, LlmConfig, SUPPORTED_GGUF_ARCHITECTURES, SUPPORTED_HF_MODEL_TYPES,
};
pub use decoder::LlmDecoder;
pub use fused::FusedLm;
pub use load::{
    gguf_tokenizer_spec, load, load_with, LmFormat, LoadOptions, LoadedLm, DEFAULT_MAX_SEQ_LEN_CAP,
};
