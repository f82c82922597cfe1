//! Text to speech through codec codes: a small encoder–decoder transformer reads characters
//! and a voice and writes the first `K` codebooks of the neural codec
//! ([`crate::codec::Codec`]) frame by frame; the codec's decoder turns them into audio.
//!
//! - [`CharTokenizer`]: the character vocabulary (`<pad>`, `<bos>`, `<eos>`, `<unk>`).
//! - [`TextToCodes`] / [`TtsConfig`]: the model, its teacher-forced loss and its
//!   autoregressive [`TextToCodes::generate`] (greedy or top-k/temperature sampling).
//! - [`TtsExample`] / [`collate`]: padded teacher-forcing batches.
//!
//! Training and synthesis programs live in `examples/text_to_audio.rs`.

mod batch;
mod model;
mod sampling;
mod text;

pub use batch::{collate, TtsBatch, TtsExample};
pub use model::{code_accuracy, Generated, TextToCodes, TtsConfig, TtsLoss};
pub use sampling::{sample, SamplingConfig, SplitMix64};
pub use text::{CharTokenizer, BOS_ID, EOS_ID, PAD_ID, UNK_ID};
