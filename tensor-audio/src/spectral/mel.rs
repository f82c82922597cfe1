//! Mel filterbanks and mel spectrograms, following `torchaudio.functional.melscale_fbanks`
//! and `torchaudio.transforms.MelSpectrogram` (same defaults, same formulas).

use tensor_core::{DType, Device, Error, Result, Tensor};

use super::{check_float_dtype, spectrogram, StftConfig, WindowKind};

/// The Hz ↔ mel mapping (`mel_scale=` in torchaudio).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MelScale {
    /// `2595 · log10(1 + f / 700)`.
    #[default]
    Htk,
    /// Slaney's Auditory Toolbox: linear below 1 kHz, logarithmic above (librosa's default).
    Slaney,
}

/// Filter normalisation (`norm=` in torchaudio).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MelNorm {
    /// Triangles of peak 1.
    #[default]
    None,
    /// Triangles of unit area in Hz (`2 / (f_right - f_left)` peak).
    Slaney,
}

const SLANEY_F_SP: f64 = 200.0 / 3.0;
const SLANEY_MIN_LOG_HZ: f64 = 1000.0;

fn slaney_logstep() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(f: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 2595.0 * (1.0 + f / 700.0).log10(),
        MelScale::Slaney => {
            if f >= SLANEY_MIN_LOG_HZ {
                SLANEY_MIN_LOG_HZ / SLANEY_F_SP + (f / SLANEY_MIN_LOG_HZ).ln() / slaney_logstep()
            } else {
                f / SLANEY_F_SP
            }
        }
    }
}

fn mel_to_hz(m: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 700.0 * (10f64.powf(m / 2595.0) - 1.0),
        MelScale::Slaney => {
            let min_log_mel = SLANEY_MIN_LOG_HZ / SLANEY_F_SP;
            if m >= min_log_mel {
                SLANEY_MIN_LOG_HZ * (slaney_logstep() * (m - min_log_mel)).exp()
            } else {
                SLANEY_F_SP * m
            }
        }
    }
}

/// `torch.linspace(start, end, steps)`.
fn linspace(start: f64, end: f64, steps: usize) -> Vec<f64> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f64;
    (0..steps).map(|i| start + step * i as f64).collect()
}

/// Triangular mel filters over the `n_freqs` bins of a one-sided spectrum, `[n_freqs, n_mels]`
/// row-major (`torchaudio.functional.melscale_fbanks`, computed in f64). Bins are spaced
/// evenly from 0 to `sample_rate / 2` (integer division, as torchaudio does); filter edges
/// are evenly spaced in mel between `f_min` and `f_max`. Degenerate arguments (no mels,
/// `f_min >= f_max`) give non-finite or all-zero filters exactly as torchaudio does;
/// [`MelSpectrogram::new`] rejects them.
pub fn mel_filterbank(
    n_freqs: usize,
    f_min: f64,
    f_max: f64,
    n_mels: usize,
    sample_rate: u32,
    norm: MelNorm,
    scale: MelScale,
) -> Vec<f64> {
    let all_freqs = linspace(0.0, (sample_rate / 2) as f64, n_freqs);
    let m_pts = linspace(hz_to_mel(f_min, scale), hz_to_mel(f_max, scale), n_mels + 2);
    let f_pts: Vec<f64> = m_pts.iter().map(|&m| mel_to_hz(m, scale)).collect();
    let mut fb = vec![0.0; n_freqs * n_mels];
    for (i, &freq) in all_freqs.iter().enumerate() {
        for m in 0..n_mels {
            let down = (freq - f_pts[m]) / (f_pts[m + 1] - f_pts[m]);
            let up = (f_pts[m + 2] - freq) / (f_pts[m + 2] - f_pts[m + 1]);
            let mut v = down.min(up).max(0.0);
            if norm == MelNorm::Slaney {
                v *= 2.0 / (f_pts[m + 2] - f_pts[m]);
            }
            fb[i * n_mels + m] = v;
        }
    }
    fb
}

/// `torchaudio.transforms.MelSpectrogram`'s arguments (Hann window, reflect padding,
/// `normalized=False`). `Default` is torchaudio's defaults: 16 kHz, n_fft 400, hop 200,
/// 128 mels, power 2, HTK scale, no norm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MelConfig {
    pub sample_rate: u32,
    pub n_fft: usize,
    pub win_length: usize,
    pub hop_length: usize,
    pub f_min: f64,
    /// `None`: `sample_rate / 2`.
    pub f_max: Option<f64>,
    pub n_mels: usize,
    pub power: f64,
    pub center: bool,
    pub norm: MelNorm,
    pub mel_scale: MelScale,
}

impl Default for MelConfig {
    fn default() -> Self {
        MelConfig {
            sample_rate: 16000,
            n_fft: 400,
            win_length: 400,
            hop_length: 200,
            f_min: 0.0,
            f_max: None,
            n_mels: 128,
            power: 2.0,
            center: true,
            norm: MelNorm::None,
            mel_scale: MelScale::Htk,
        }
    }
}

impl MelConfig {
    /// torchaudio's defaults with these sizes (`win_length = n_fft`).
    pub fn new(sample_rate: u32, n_fft: usize, hop_length: usize, n_mels: usize) -> Self {
        MelConfig {
            sample_rate,
            n_fft,
            win_length: n_fft,
            hop_length,
            n_mels,
            ..MelConfig::default()
        }
    }

    /// The STFT these settings run.
    pub fn stft_config(&self) -> StftConfig {
        StftConfig {
            n_fft: self.n_fft,
            hop_length: self.hop_length,
            win_length: self.win_length,
            window: WindowKind::Hann,
            center: self.center,
            normalized: false,
        }
    }

    /// `f_max`, or the Nyquist frequency as torchaudio computes it (`sample_rate // 2`).
    pub fn f_max_hz(&self) -> f64 {
        self.f_max.unwrap_or((self.sample_rate / 2) as f64)
    }
}

/// A mel spectrogram transform holding its filterbank on a device.
#[derive(Clone, Debug)]
pub struct MelSpectrogram {
    cfg: MelConfig,
    stft: StftConfig,
    /// `[n_mels, n_freqs]`: the transpose of torchaudio's `fb`, so `fb_t @ spec` maps
    /// `[..., n_freqs, frames]` to `[..., n_mels, frames]` directly.
    fb_t: Tensor,
}

impl MelSpectrogram {
    pub fn new(cfg: MelConfig, dtype: DType, device: &Device) -> Result<Self> {
        check_float_dtype("MelSpectrogram", dtype)?;
        let stft = cfg.stft_config();
        stft.validate()?;
        let f_max = cfg.f_max_hz();
        if cfg.sample_rate == 0 || cfg.n_mels == 0 {
            return Err(Error::invalid(
                "MelSpectrogram",
                format!(
                    "sample_rate and n_mels must be positive, got {} and {}",
                    cfg.sample_rate, cfg.n_mels
                ),
            ));
        }
        if !(cfg.f_min >= 0.0 && cfg.f_min < f_max && f_max.is_finite()) {
            return Err(Error::invalid(
                "MelSpectrogram",
                format!(
                    "expected 0 <= f_min < f_max, got f_min {} and f_max {f_max}",
                    cfg.f_min
                ),
            ));
        }
        if !(cfg.power.is_finite() && cfg.power > 0.0) {
            return Err(Error::invalid(
                "MelSpectrogram",
                format!("power must be positive and finite, got {}", cfg.power),
            ));
        }
        let n_freqs = stft.n_freqs();
        let fb = mel_filterbank(
            n_freqs,
            cfg.f_min,
            f_max,
            cfg.n_mels,
            cfg.sample_rate,
            cfg.norm,
            cfg.mel_scale,
        );
        let mut fb_t = vec![0.0; fb.len()];
        for f in 0..n_freqs {
            for m in 0..cfg.n_mels {
                fb_t[m * n_freqs + f] = fb[f * cfg.n_mels + m];
            }
        }
        let fb_t = Tensor::from_f64s(&fb_t, (cfg.n_mels, n_freqs), dtype, device)?;
        Ok(MelSpectrogram { cfg, stft, fb_t })
    }

    pub fn config(&self) -> &MelConfig {
        &self.cfg
    }

    /// The filterbank as `[n_mels, n_freqs]`.
    pub fn filterbank(&self) -> &Tensor {
        &self.fb_t
    }

    /// `x: [..., T]` → mel spectrogram `[..., n_mels, frames]`. Differentiable in `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() != self.fb_t.dtype() || !x.device().same_device(self.fb_t.device()) {
            return Err(Error::invalid(
                "MelSpectrogram",
                format!(
                    "the transform was built for {} on {}, got a {} signal on {}",
                    self.fb_t.dtype(),
                    self.fb_t.device().name(),
                    x.dtype(),
                    x.device().name()
                ),
            ));
        }
        let spec = spectrogram(x, &self.stft, self.cfg.power)?;
        self.fb_t.matmul(&spec)
    }

    /// `ln(max(mel, eps))`, the usual log-mel feature (the gradient is zero where the clamp
    /// is active).
    pub fn log_mel(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::invalid(
                "log_mel",
                format!("eps must be positive and finite, got {eps}"),
            ));
        }
        self.forward(x)?.clamp(eps, f64::INFINITY)?.log()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scales_round_trip() {
        for scale in [MelScale::Htk, MelScale::Slaney] {
            for f in [0.0, 300.0, 999.0, 1000.0, 4000.0, 11025.0] {
                let back = mel_to_hz(hz_to_mel(f, scale), scale);
                assert!(
                    (back - f).abs() < 1e-9 * (1.0 + f),
                    "{scale:?} {f} -> {back}"
                );
            }
        }
        // Slaney is linear below 1 kHz: 1000 Hz is mel 15.
        assert!((hz_to_mel(1000.0, MelScale::Slaney) - 15.0).abs() < 1e-12);
    }

    #[test]
    fn filters_are_triangles_that_tile() {
        let fb = mel_filterbank(257, 0.0, 8000.0, 20, 16000, MelNorm::None, MelScale::Htk);
        // Between the first and last centre, adjacent triangles sum to one.
        let sum = |i: usize| (0..20).map(|m| fb[i * 20 + m]).sum::<f64>();
        for i in 20..200 {
            assert!((sum(i) - 1.0).abs() < 1e-9, "bin {i}: {}", sum(i));
        }
        assert!(fb.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
}
