//! Where frames sit in the signal, shared by the FFT kernels and the matmul composite so that
//! both paths agree on padding, trimming and the window envelope by construction.

use tensor_core::{Error, Result};

use super::StftConfig;

/// The window of `win_length` samples, centred in `n_fft` zeros (torch's placement).
pub(crate) fn padded_window(cfg: &StftConfig) -> Vec<f64> {
    let mut w = vec![0.0; cfg.n_fft];
    let left = (cfg.n_fft - cfg.win_length) / 2;
    w[left..left + cfg.win_length].copy_from_slice(&cfg.window.values(cfg.win_length, true));
    w
}

/// Index into a signal of `len` samples of position `i` of its reflect-padded version
/// (`i` relative to the first real sample; needs `-len < i < 2 * len - 1`).
#[inline]
pub(crate) fn reflect(i: isize, len: usize) -> usize {
    let last = len as isize - 1;
    let j = if i < 0 {
        -i
    } else if i > last {
        2 * last - i
    } else {
        i
    };
    j as usize
}

/// The frames of a forward STFT over signals of `sig_len` samples.
#[derive(Debug)]
pub(crate) struct StftGeom {
    pub n_fft: usize,
    pub hop: usize,
    /// Reflect padding on each side (`n_fft / 2` with `center`, else 0).
    pub pad: usize,
    pub sig_len: usize,
    pub frames: usize,
    /// `n_fft` values, the transform's scale folded in.
    pub window: Vec<f64>,
}

impl StftGeom {
    pub fn new(cfg: &StftConfig, sig_len: usize) -> Result<StftGeom> {
        cfg.validate()?;
        let pad = if cfg.center { cfg.n_fft / 2 } else { 0 };
        if cfg.center && pad >= sig_len {
            return Err(Error::invalid(
                "stft",
                format!(
                    "center=true reflect-pads {pad} samples (n_fft / 2) on each side, which needs a signal longer than {pad} samples, got {sig_len}"
                ),
            ));
        }
        let padded = sig_len + 2 * pad;
        if padded < cfg.n_fft {
            return Err(Error::invalid(
                "stft",
                format!(
                    "a signal of {sig_len} samples (padded: {padded}) is shorter than n_fft {}",
                    cfg.n_fft
                ),
            ));
        }
        let scale = if cfg.normalized {
            1.0 / (cfg.n_fft as f64).sqrt()
        } else {
            1.0
        };
        Ok(StftGeom {
            n_fft: cfg.n_fft,
            hop: cfg.hop_length,
            pad,
            sig_len,
            frames: 1 + (padded - cfg.n_fft) / cfg.hop_length,
            window: padded_window(cfg).into_iter().map(|w| w * scale).collect(),
        })
    }

    pub fn n_freqs(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// For every sample of every frame (frame-major), the signal sample it reads.
    pub fn frame_sources(&self) -> Vec<usize> {
        let mut v = Vec::with_capacity(self.frames * self.n_fft);
        for t in 0..self.frames {
            let start = (t * self.hop) as isize - self.pad as isize;
            for k in 0..self.n_fft {
                v.push(reflect(start + k as isize, self.sig_len));
            }
        }
        v
    }
}

/// The overlap-add of an inverse STFT of `frames` frames, trimmed to `out_len` samples.
#[derive(Debug)]
pub(crate) struct IstftGeom {
    pub n_fft: usize,
    pub hop: usize,
    pub frames: usize,
    /// `n_fft` values, the inverse transform's scale (`1/n_fft` or `1/sqrt(n_fft)`) folded in.
    pub window: Vec<f64>,
    /// Length of the untrimmed overlap-add, `n_fft + hop * (frames - 1)`.
    pub full_len: usize,
    /// First sample of the full signal that is kept.
    pub start: usize,
    pub out_len: usize,
    /// `1 / Σ window²` over the kept samples that frames cover (zero elsewhere).
    pub inv_env: Vec<f64>,
}

impl IstftGeom {
    pub fn new(cfg: &StftConfig, frames: usize, length: Option<usize>) -> Result<IstftGeom> {
        cfg.validate()?;
        if frames == 0 {
            return Err(Error::invalid("istft", "the spectrum has no frames"));
        }
        let n = cfg.n_fft;
        let full_len = n + cfg.hop_length * (frames - 1);
        let start = if cfg.center { n / 2 } else { 0 };
        let out_len = match length {
            Some(l) => l,
            None if cfg.center => full_len.saturating_sub(2 * start),
            None => full_len,
        };
        if out_len == 0 {
            return Err(Error::invalid(
                "istft",
                format!(
                    "the output would be empty ({frames} frames of n_fft {n} with hop {} and center={})",
                    cfg.hop_length, cfg.center
                ),
            ));
        }
        let win = padded_window(cfg);
        let mut env = vec![0.0; full_len];
        for t in 0..frames {
            for (k, w) in win.iter().enumerate() {
                env[t * cfg.hop_length + k] += w * w;
            }
        }
        let kept_end = (start + out_len).min(full_len);
        let mut inv_env = vec![0.0; full_len];
        for j in start..kept_end {
            // torch's NOLA check: the window overlap must not vanish where samples are kept.
            if env[j].abs() < 1e-11 {
                return Err(Error::invalid(
                    "istft",
                    format!(
                        "the squared window overlap-adds to {:e} at sample {j}: this window, n_fft {n} and hop {} do not satisfy the NOLA condition there",
                        env[j], cfg.hop_length
                    ),
                ));
            }
            inv_env[j] = 1.0 / env[j];
        }
        let scale = if cfg.normalized {
            1.0 / (n as f64).sqrt()
        } else {
            1.0 / n as f64
        };
        Ok(IstftGeom {
            n_fft: n,
            hop: cfg.hop_length,
            frames,
            window: win.into_iter().map(|w| w * scale).collect(),
            full_len,
            start,
            out_len,
            inv_env,
        })
    }

    pub fn n_freqs(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Samples `start..start + kept` of the full signal make the output; the rest of it
    /// (past the last frame) is zero.
    pub fn kept(&self) -> usize {
        self.out_len.min(self.full_len.saturating_sub(self.start))
    }
}

/// Weight of bin `f` when a one-sided spectrum stands for the full Hermitian one: the DC bin
/// and (for even `n`) the Nyquist bin appear once, every other bin twice.
#[inline]
pub(crate) fn hermitian_weight(f: usize, n: usize) -> f64 {
    if f == 0 || (n.is_multiple_of(2) && f == n / 2) {
        1.0
    } else {
        2.0
    }
}
