//! Sample-rate conversion of whole clips (torchaudio.functional.resample), through rubato: a
//! fast polynomial interpolator or a high-quality band-limited one. The resampler's start-up
//! delay is trimmed, so sample `i` of the output sits at time `i / to_rate`, the same instant as
//! in the input, and the output has `round(frames * to / from)` frames.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, Fft, FixedAsync, FixedSync, PolynomialDegree, Resampler, SincInterpolationParameters,
    SincInterpolationType, WindowFunction,
};
use tensor_core::{Error, Result};

use crate::wav::Audio;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ResampleQuality {
    /// Cubic polynomial interpolation, no anti-aliasing filter: cheap, and downsampling folds
    /// content above the new Nyquist frequency back into the band.
    Fast,
    /// Band-limited: rubato's FFT resampler (Blackman-Harris² anti-aliasing window) when the
    /// two rates share a large common factor, otherwise a 256-tap windowed-sinc interpolator.
    #[default]
    High,
}

/// Chunk length fed to rubato; it only trades memory against per-call overhead.
const CHUNK: usize = 1024;
/// The FFT resampler works on blocks of `rate / gcd` frames; beyond this the blocks (and the
/// delay to flush) grow large and the sinc interpolator is the better tool.
const MAX_FFT_BLOCK: u64 = 4096;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Resample every channel of `audio` to `to_rate`. Equal rates return a copy.
pub fn resample(audio: &Audio, to_rate: u32, quality: ResampleQuality) -> Result<Audio> {
    let from = audio.sample_rate;
    if from == 0 || to_rate == 0 {
        return Err(Error::invalid(
            "resample",
            format!("sample rates must be positive, got {from} Hz -> {to_rate} Hz"),
        ));
    }
    let channels = audio.channels as usize;
    if channels == 0 || audio.samples.len() % channels != 0 {
        return Err(Error::invalid(
            "resample",
            format!(
                "{} samples do not make whole frames of {channels} channels",
                audio.samples.len()
            ),
        ));
    }
    let frames = audio.frames();
    let out_frames =
        ((frames as u128 * to_rate as u128 + from as u128 / 2) / from as u128) as usize;
    if from == to_rate {
        return Ok(audio.clone());
    }
    if frames == 0 || out_frames == 0 {
        return Ok(Audio {
            sample_rate: to_rate,
            channels: audio.channels,
            samples: Vec::new(),
        });
    }
    let rub = |e: &dyn std::fmt::Display| {
        Error::msg(format!("resample {from} Hz -> {to_rate} Hz: rubato: {e}"))
    };
    let ratio = to_rate as f64 / from as f64;
    let mut resampler: Box<dyn Resampler<f32>> = match quality {
        ResampleQuality::Fast => Box::new(
            Async::<f32>::new_poly(
                ratio,
                1.0,
                PolynomialDegree::Cubic,
                CHUNK,
                channels,
                FixedAsync::Input,
            )
            .map_err(|e| rub(&e))?,
        ),
        ResampleQuality::High => {
            let g = gcd(from as u64, to_rate as u64);
            if from as u64 / g <= MAX_FFT_BLOCK && to_rate as u64 / g <= MAX_FFT_BLOCK {
                Box::new(
                    Fft::<f32>::new(
                        from as usize,
                        to_rate as usize,
                        CHUNK,
                        channels,
                        FixedSync::Both,
                    )
                    .map_err(|e| rub(&e))?,
                )
            } else {
                let params = SincInterpolationParameters::new(256, WindowFunction::BlackmanHarris2)
                    .oversampling_factor(256)
                    .interpolation(SincInterpolationType::Cubic);
                Box::new(
                    Async::<f32>::new_sinc(ratio, 1.0, &params, CHUNK, channels, FixedAsync::Input)
                        .map_err(|e| rub(&e))?,
                )
            }
        }
    };
    let input = InterleavedSlice::new(&audio.samples[..], channels, frames).map_err(|e| rub(&e))?;
    // process_all pushes the tail through with zeros and trims the start-up delay.
    let out = resampler
        .process_all(&input, frames, None)
        .map_err(|e| rub(&e))?;
    let mut samples = out.take_data();
    if samples.len() < out_frames * channels {
        return Err(Error::msg(format!(
            "resample {from} Hz -> {to_rate} Hz: rubato returned {} frames, expected {out_frames}",
            samples.len() / channels
        )));
    }
    samples.truncate(out_frames * channels);
    Ok(Audio {
        sample_rate: to_rate,
        channels: audio.channels,
        samples,
    })
}
