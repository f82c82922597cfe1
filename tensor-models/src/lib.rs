//! Model families built only from tensor-nn. Today: a Llama-layout decoder LM for training
//! from scratch; the pretrained LLM families come with the loading issue.

pub mod bert;
pub mod decoder_lm;
pub mod generation;
pub mod llm;
pub mod lm;

pub use bert::{BertConfig, BertModel, SentenceEmbedder};
pub use decoder_lm::{DecoderLm, DecoderLmConfig};
pub use generation::{
    generate, generate_batch, FinishReason, GenerationOutput, GenerationStats, Sampler,
    SamplingParams,
};
pub use llm::{load as load_llm, LlmConfig, LlmDecoder, LoadOptions, LoadedLm};
pub use lm::{CausalLm, LmInfo};
