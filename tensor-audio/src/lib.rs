//! Audio: spectrograms, neural audio codec, vocoders.

pub mod codec;
pub mod codes;
pub mod metrics;
