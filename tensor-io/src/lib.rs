//! Checkpoint and data formats (safetensors, GGUF, tokenizers, WAV, datasets). Filled by the
//! loading issue; nothing here yet.
