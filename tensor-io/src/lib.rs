//! Checkpoint and data formats (safetensors, GGUF, tokenizers, WAV, datasets). Today: small
//! real data sets and batching; the model formats come with the loading issue.

pub mod chat_template;
pub mod datasets;
pub mod gguf;
pub mod hub;
pub mod pth;
pub mod resample;
pub mod safetensors;
pub mod text;
pub mod tokenizer;
pub mod wav;
