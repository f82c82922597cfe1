//! Audio for tensor-engine: WAV I/O and resampling (re-exported from tensor-io),
//! differentiable spectral transforms (STFT, inverse STFT, mel spectrograms), a
//! folder-of-clips data set with seeded random-crop batches, and a neural audio codec with
//! its codes file and quality metrics.

pub mod codec;
pub mod codes;
pub mod dataset;
pub mod losses;
pub mod metrics;
pub mod spectral;
pub mod tts;

pub use tensor_io::{resample, wav};
