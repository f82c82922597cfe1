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

/// Chunk length fed to the asynchronous resamplers; it only trades memory against overhead.
const CHUNK: usize = 1024;
/// Smallest FFT block (input frames) of the FFT resampler: longer blocks give a sharper
/// anti-aliasing filter.
const FFT_LEN: usize = 1024;
/// Taps of the windowed-sinc interpolator (a multiple of 8, as rubato wants).
const SINC_LEN: usize = 256;
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
    if channels == 0 || !audio.samples.len().is_multiple_of(channels) {
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
    let g = gcd(from as u64, to_rate as u64);
    let (min_in, min_out) = (from as u64 / g, to_rate as u64 / g);
    let fft =
        quality == ResampleQuality::High && min_in <= MAX_FFT_BLOCK && min_out <= MAX_FFT_BLOCK;
    let mut samples = if fft {
        // Blocks of an even number of frames on both sides: with an odd block the delay that
        // process_all trims (half an output block, rounded down) is off by half a sample.
        let blocks = 2 * (FFT_LEN as u64).div_ceil(2 * min_in);
        let mut r = Fft::<f32>::new(
            from as usize,
            to_rate as usize,
            (blocks * min_in) as usize,
            channels,
            FixedSync::Both,
        )
        .map_err(|e| rub(&e))?;
        let input =
            InterleavedSlice::new(&audio.samples[..], channels, frames).map_err(|e| rub(&e))?;
        r.process_all(&input, frames, None)
            .map_err(|e| rub(&e))?
            .take_data()
    } else {
        let (mut r, points): (Async<f32>, u64) = match quality {
            ResampleQuality::Fast => (
                Async::<f32>::new_poly(
                    ratio,
                    1.0,
                    PolynomialDegree::Cubic,
                    CHUNK,
                    channels,
                    FixedAsync::Input,
                )
                .map_err(|e| rub(&e))?,
                PolynomialDegree::Cubic.nbr_points() as u64,
            ),
            ResampleQuality::High => {
                let params =
                    SincInterpolationParameters::new(SINC_LEN, WindowFunction::BlackmanHarris2)
                        .oversampling_factor(256)
                        .interpolation(SincInterpolationType::Cubic);
                (
                    Async::<f32>::new_sinc(ratio, 1.0, &params, CHUNK, channels, FixedAsync::Input)
                        .map_err(|e| rub(&e))?,
                    SINC_LEN as u64,
                )
            }
        };
        // The asynchronous resamplers evaluate output frame j at input position
        // (j + 1) / ratio - points / 2, and process_all trims a whole number of frames, which
        // leaves up to a sample of misalignment. Prepending `pad` zeros with
        // (pad + points/2) * to / from a whole number `skip + 1` makes frame `skip` land
        // exactly on input sample 0; trailing zeros make sure enough frames come out.
        let half = points / 2;
        let mut m = half.div_ceil(min_in).max(1);
        while (m * min_in - half) * (to_rate as u64) < from as u64 {
            m += 1;
        }
        let pad = (m * min_in - half) as usize;
        let skip = (m * min_out - 1) as usize;
        let tail = (2.0 / ratio).ceil() as usize + points as usize;
        let mut padded = vec![0f32; (pad + frames + tail) * channels];
        padded[pad * channels..(pad + frames) * channels].copy_from_slice(&audio.samples);
        let n_in = pad + frames + tail;
        let input = InterleavedSlice::new(&padded[..], channels, n_in).map_err(|e| rub(&e))?;
        let trimmed = r.output_delay();
        let data = r
            .process_all(&input, n_in, None)
            .map_err(|e| rub(&e))?
            .take_data();
        let drop = skip.checked_sub(trimmed).ok_or_else(|| {
            Error::msg(format!(
                "resample {from} Hz -> {to_rate} Hz: rubato trimmed {trimmed} frames, more than the {skip} to align"
            ))
        })?;
        data.get(drop * channels..).unwrap_or(&[]).to_vec()
    };
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
