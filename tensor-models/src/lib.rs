//! Model families built only from tensor-nn. Today: a Llama-layout decoder LM for training
//! from scratch; the pretrained LLM families come with the loading issue.

pub mod decoder_lm;

pub use decoder_lm::{DecoderLm, DecoderLmConfig};
