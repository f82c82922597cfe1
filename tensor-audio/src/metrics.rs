//! Quality metrics for reconstructed audio and the simple baselines a codec is compared
//! against.
//!
//! - [`si_snr`]: scale-invariant signal-to-noise ratio in dB (both signals made zero-mean;
//!   the estimate is projected on the reference, so a gain change costs nothing).
//! - [`log_mel_distance`]: the mean absolute difference of `ln(max(mel, 1e-5))` between two
//!   signals, with the mel config of [`LogMelDistance::default_config`].
//! - µ-law companding ([`mu_law_encode`]/[`mu_law_decode`], torchaudio's
//!   `mu_law_encoding`/`mu_law_decoding`), the telephone baseline: 8 bits at 8 kHz is
//!   64 kbit/s; [`mu_law_baseline`] also downsamples first to reach lower bitrates.

use tensor_core::{DType, Device, Error, Result, Tensor};

/// SI-SNR in dB of `estimate` against `reference` (same length). `+inf` when the estimate is
/// an exact multiple of the reference; `-inf` when it is orthogonal to it (or silent).
pub fn si_snr(reference: &[f32], estimate: &[f32]) -> Result<f64> {
    if reference.len() != estimate.len() || reference.is_empty() {
        return Err(Error::invalid(
            "si_snr",
            format!(
                "signals must have the same non-zero length, got {} and {}",
                reference.len(),
                estimate.len()
            ),
        ));
    }
    let n = reference.len() as f64;
    let mr = reference.iter().map(|&v| v as f64).sum::<f64>() / n;
    let me = estimate.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut dot, mut rr) = (0.0, 0.0);
    for (&r, &e) in reference.iter().zip(estimate) {
        let (r, e) = (r as f64 - mr, e as f64 - me);
        dot += r * e;
        rr += r * r;
    }
    if rr == 0.0 {
        return Err(Error::invalid(
            "si_snr",
            "the reference is constant (silent)",
        ));
    }
    let alpha = dot / rr;
    let (mut target, mut noise) = (0.0, 0.0);
    for (&r, &e) in reference.iter().zip(estimate) {
        let (r, e) = (r as f64 - mr, e as f64 - me);
        let t = alpha * r;
        target += t * t;
        noise += (e - t) * (e - t);
    }
    Ok(10.0 * (target / noise).log10())
}

fn check_channels(bits: u32, op: &'static str) -> Result<f64> {
    if !(2..=16).contains(&bits) {
        return Err(Error::invalid(
            op,
            format!("bits {bits} must be between 2 and 16"),
        ));
    }
    Ok(((1u32 << bits) - 1) as f64)
}

/// µ-law companding to `bits`-bit integers (torchaudio's `mu_law_encoding` with
/// `quantization_channels = 2^bits`): samples in [-1, 1] (clipped) → `0..2^bits`.
pub fn mu_law_encode(x: &[f32], bits: u32) -> Result<Vec<u32>> {
    let mu = check_channels(bits, "mu_law_encode")?;
    Ok(x.iter()
        .map(|&v| {
            let v = (v as f64).clamp(-1.0, 1.0);
            let y = v.signum() * (1.0 + mu * v.abs()).ln() / (1.0 + mu).ln();
            (((y + 1.0) / 2.0 * mu) + 0.5).floor() as u32
        })
        .collect())
}

/// The inverse of [`mu_law_encode`] (torchaudio's `mu_law_decoding`).
pub fn mu_law_decode(codes: &[u32], bits: u32) -> Result<Vec<f32>> {
    let mu = check_channels(bits, "mu_law_decode")?;
    codes
        .iter()
        .map(|&c| {
            if c as f64 > mu {
                return Err(Error::invalid(
                    "mu_law_decode",
                    format!("code {c} does not fit in {bits} bits"),
                ));
            }
            let y = c as f64 / mu * 2.0 - 1.0;
            let x = y.signum() * ((1.0 + mu).powf(y.abs()) - 1.0) / mu;
            Ok(x as f32)
        })
        .collect()
}

/// A rate converter `(samples, from_rate, to_rate) -> samples` for [`mu_law_baseline`].
pub type Resampler<'a> = &'a dyn Fn(&[f32], u32, u32) -> Result<Vec<f32>>;

/// The baseline "resample to `rate` Hz, µ-law `bits` bits, resample back to `sample_rate`":
/// returns the reconstruction (same length as `x`) and its bitrate `rate · bits / 1000`
/// kbit/s. `resample(samples, from, to)` does the rate conversions (e.g. a windowed-sinc
/// resampler; the conversion is part of the baseline, so use a good one).
pub fn mu_law_baseline(
    x: &[f32],
    sample_rate: u32,
    rate: u32,
    bits: u32,
    resample: Resampler,
) -> Result<(Vec<f32>, f64)> {
    if rate == 0 || rate > sample_rate {
        return Err(Error::invalid(
            "mu_law_baseline",
            format!("rate {rate} must be in 1..={sample_rate}"),
        ));
    }
    let low = if rate == sample_rate {
        x.to_vec()
    } else {
        resample(x, sample_rate, rate)?
    };
    let coded = mu_law_decode(&mu_law_encode(&low, bits)?, bits)?;
    let mut back = if rate == sample_rate {
        coded
    } else {
        resample(&coded, rate, sample_rate)?
    };
    back.resize(x.len(), 0.0);
    Ok((back, rate as f64 * bits as f64 / 1000.0))
}

/// The log-mel distance: a mel spectrogram (see [`LogMelDistance::default_config`]) of both
/// signals, `ln(max(mel, eps))`, mean absolute difference.
pub struct LogMelDistance {
    mel: crate::spectral::MelSpectrogram,
    eps: f64,
    device: Device,
}

impl LogMelDistance {
    /// 16 kHz-style speech analysis: n_fft 1024, hop 256, 80 mels (Slaney scale and norm),
    /// power 1 (magnitude), f_min 0, f_max = Nyquist; `eps` 1e-5 inside the log.
    pub fn default_config(sample_rate: u32) -> crate::spectral::MelConfig {
        crate::spectral::MelConfig {
            sample_rate,
            n_fft: 1024,
            win_length: 1024,
            hop_length: 256,
            f_min: 0.0,
            f_max: None,
            n_mels: 80,
            power: 1.0,
            center: true,
            norm: crate::spectral::MelNorm::Slaney,
            mel_scale: crate::spectral::MelScale::Slaney,
        }
    }

    pub fn new(sample_rate: u32, device: &Device) -> Result<Self> {
        Self::with_config(Self::default_config(sample_rate), 1e-5, device)
    }

    pub fn with_config(cfg: crate::spectral::MelConfig, eps: f64, device: &Device) -> Result<Self> {
        Ok(LogMelDistance {
            mel: crate::spectral::MelSpectrogram::new(cfg, DType::F32, device)?,
            eps,
            device: device.clone(),
        })
    }

    /// The distance between two signals of the same length.
    pub fn distance(&self, reference: &[f32], estimate: &[f32]) -> Result<f64> {
        if reference.len() != estimate.len() || reference.is_empty() {
            return Err(Error::invalid(
                "log_mel_distance",
                format!(
                    "signals must have the same non-zero length, got {} and {}",
                    reference.len(),
                    estimate.len()
                ),
            ));
        }
        let _g = tensor_core::no_grad();
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), v.len(), &self.device);
        let a = self.mel.log_mel(&t(reference)?, self.eps)?;
        let b = self.mel.log_mel(&t(estimate)?, self.eps)?;
        a.sub(&b)?.abs()?.mean_all()?.to_f64()
    }
}

/// [`LogMelDistance`] with its default config, for one pair of signals.
pub fn log_mel_distance(
    reference: &[f32],
    estimate: &[f32],
    sample_rate: u32,
    device: &Device,
) -> Result<f64> {
    LogMelDistance::new(sample_rate, device)?.distance(reference, estimate)
}
