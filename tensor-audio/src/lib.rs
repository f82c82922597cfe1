//! Audio for tensor-engine: WAV I/O and resampling (re-exported from tensor-io) and a
//! folder-of-clips data set with seeded random-crop batches.

pub mod dataset;

pub use tensor_io::{resample, wav};
