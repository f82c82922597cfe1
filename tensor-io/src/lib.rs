//! Checkpoint and data formats (safetensors, GGUF, tokenizers, WAV, datasets). Today: small
//! real data sets and batching; the model formats come with the loading issue.

pub mod datasets;
pub mod text;
