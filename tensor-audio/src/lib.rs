//! Audio for tensor-engine: differentiable spectral transforms (STFT, inverse STFT, mel
//! spectrograms), and the audio models built on them.

pub mod spectral;
