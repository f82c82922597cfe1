//! Short-time Fourier transforms and mel spectrograms as differentiable tensor ops, with
//! PyTorch's conventions (`torch.stft`, `torch.istft`, `torchaudio.transforms.MelSpectrogram`).
//!
//! A complex spectrum is a real tensor whose last dim holds `(re, im)`, the layout of
//! `torch.view_as_real(torch.stft(..., return_complex=True))`: `[..., n_fft/2+1, frames, 2]`.
//!
//! On the CPU, [`stft`] and [`istft`] run `realfft` behind custom autograd ops whose backward
//! is the exact adjoint transform (itself a custom op, so gradients of gradients work too).
//! On any other device the same maps are built from differentiable tensor ops — a DFT as a
//! matmul against real cos/sin bases — so data never round-trips through the host.

mod dft;
mod fft;
mod geometry;
mod mel;

use tensor_core::{DType, Device, Error, Result, Tensor};

pub use mel::{mel_filterbank, MelConfig, MelNorm, MelScale, MelSpectrogram};

use geometry::{IstftGeom, StftGeom};

/// The window applied to each frame (`torch.hann_window`, `torch.hamming_window`, or none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum WindowKind {
    #[default]
    Hann,
    Hamming,
    Rectangular,
}

impl WindowKind {
    /// The window's values in f64. `periodic` windows are the first `len` samples of the
    /// symmetric window of length `len + 1` (what spectral analysis wants; torch's default).
    pub fn values(self, len: usize, periodic: bool) -> Vec<f64> {
        if len == 1 {
            return vec![1.0];
        }
        let denom = if periodic { len } else { len - 1 } as f64;
        let cos_window = |a: f64, b: f64| -> Vec<f64> {
            (0..len)
                .map(|n| a - b * (2.0 * std::f64::consts::PI * n as f64 / denom).cos())
                .collect()
        };
        match self {
            WindowKind::Hann => cos_window(0.5, 0.5),
            WindowKind::Hamming => cos_window(0.54, 0.46),
            WindowKind::Rectangular => vec![1.0; len],
        }
    }
}

/// A window as a 1-D tensor (`torch.hann_window(len, periodic=...)` and friends).
pub fn window(
    kind: WindowKind,
    len: usize,
    periodic: bool,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    check_float_dtype("window", dtype)?;
    Tensor::from_f64s(&kind.values(len, periodic), len, dtype, device)
}

/// Framing and transform settings shared by [`stft`], [`istft`] and [`spectrogram`]
/// (the arguments of `torch.stft` with `onesided=True`, `pad_mode="reflect"` and a periodic
/// window of `win_length` samples, zero-padded on both sides to `n_fft`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StftConfig {
    pub n_fft: usize,
    pub hop_length: usize,
    pub win_length: usize,
    pub window: WindowKind,
    /// Reflect-pad `n_fft / 2` samples on both sides so frame `t` is centred on sample
    /// `t * hop_length` (and `istft` trims them again).
    pub center: bool,
    /// Scale the transform by `1/sqrt(n_fft)` (orthonormal frames, `torch.stft(normalized=True)`).
    pub normalized: bool,
}

impl StftConfig {
    /// Hann window of `n_fft` samples, `center = true`, `normalized = false` (torch's defaults).
    pub fn new(n_fft: usize, hop_length: usize) -> Self {
        StftConfig {
            n_fft,
            hop_length,
            win_length: n_fft,
            window: WindowKind::Hann,
            center: true,
            normalized: false,
        }
    }
    pub fn win_length(mut self, win_length: usize) -> Self {
        self.win_length = win_length;
        self
    }
    pub fn window(mut self, window: WindowKind) -> Self {
        self.window = window;
        self
    }
    pub fn center(mut self, center: bool) -> Self {
        self.center = center;
        self
    }
    pub fn normalized(mut self, normalized: bool) -> Self {
        self.normalized = normalized;
        self
    }
    /// Frequency bins of the one-sided spectrum (`n_fft / 2 + 1`).
    pub fn n_freqs(&self) -> usize {
        self.n_fft / 2 + 1
    }
    /// How many frames [`stft`] makes from a signal of `signal_len` samples.
    pub fn n_frames(&self, signal_len: usize) -> Result<usize> {
        Ok(StftGeom::new(self, signal_len)?.frames)
    }
    /// The analysis window zero-padded (centred) to `n_fft`, as torch applies it.
    pub fn padded_window(&self) -> Result<Vec<f64>> {
        self.validate()?;
        Ok(geometry::padded_window(self))
    }

    fn validate(&self) -> Result<()> {
        if self.n_fft == 0 || self.hop_length == 0 {
            return Err(Error::invalid(
                "stft",
                format!(
                    "n_fft and hop_length must be positive, got n_fft {} and hop_length {}",
                    self.n_fft, self.hop_length
                ),
            ));
        }
        if self.win_length == 0 || self.win_length > self.n_fft {
            return Err(Error::invalid(
                "stft",
                format!(
                    "win_length must be in 1..=n_fft ({}), got {}",
                    self.n_fft, self.win_length
                ),
            ));
        }
        Ok(())
    }
}

/// Which implementation runs the transforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// realfft on host memory, for tensors on the CPU.
    Fft,
    /// Differentiable tensor ops (DFT as matmul), for any device.
    Matmul,
}

fn path_for(t: &Tensor) -> Path {
    if t.device().name() == "cpu" {
        Path::Fft
    } else {
        Path::Matmul
    }
}

fn check_float_dtype(op: &'static str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F64 => Ok(()),
        d => Err(Error::UnsupportedDType {
            op,
            dtype: d,
            expected: "f32 or f64",
        }),
    }
}

/// The short-time Fourier transform of real signals `x: [..., T]` (f32 or f64), as
/// `[..., n_fft/2+1, frames, 2]` (`torch.view_as_real(torch.stft(x, ..., return_complex=True))`).
/// Differentiable in `x`.
pub fn stft(x: &Tensor, cfg: &StftConfig) -> Result<Tensor> {
    stft_on(x, cfg, path_for(x))
}

/// The inverse of [`stft`] (`torch.istft`): overlap-add of the inverse FFT of each frame
/// times the window, divided by the summed squared window. `spec: [..., n_fft/2+1, frames, 2]`;
/// the result has `length` samples (default: what [`stft`] would have been given, i.e.
/// `n_fft + hop * (frames - 1)`, less `2 * (n_fft / 2)` when `center`), zero-filled past the
/// last frame like torch. Differentiable in `spec`. The imaginary parts of the DC and Nyquist
/// bins are ignored (they have no real signal), so their gradient is zero.
pub fn istft(spec: &Tensor, cfg: &StftConfig, length: Option<usize>) -> Result<Tensor> {
    istft_on(spec, cfg, length, path_for(spec))
}

/// [`stft`] through the DFT-as-matmul composite that non-CPU devices use, on any device.
/// Exposed so that tests can check it against the FFT path on the CPU.
#[doc(hidden)]
pub fn stft_dft_matmul(x: &Tensor, cfg: &StftConfig) -> Result<Tensor> {
    stft_on(x, cfg, Path::Matmul)
}

/// [`istft`] through the DFT-as-matmul composite (see [`stft_dft_matmul`]).
#[doc(hidden)]
pub fn istft_dft_matmul(spec: &Tensor, cfg: &StftConfig, length: Option<usize>) -> Result<Tensor> {
    istft_on(spec, cfg, length, Path::Matmul)
}

fn stft_on(x: &Tensor, cfg: &StftConfig, path: Path) -> Result<Tensor> {
    check_float_dtype("stft", x.dtype())?;
    if x.rank() == 0 {
        return Err(Error::invalid(
            "stft",
            "expected a signal of shape [..., time], got a scalar",
        ));
    }
    let dims = x.dims();
    let (lead, len) = (&dims[..dims.len() - 1], dims[dims.len() - 1]);
    let geom = StftGeom::new(cfg, len)?;
    let batch: usize = lead.iter().product();
    let flat = x.reshape((batch, len))?;
    let out = match path {
        Path::Fft => fft::stft(&flat, geom)?,
        Path::Matmul => dft::stft(&flat, &geom)?,
    };
    let mut shape = lead.to_vec();
    shape.extend(out.dims()[1..].iter().copied());
    out.reshape(shape)
}

fn istft_on(spec: &Tensor, cfg: &StftConfig, length: Option<usize>, path: Path) -> Result<Tensor> {
    check_float_dtype("istft", spec.dtype())?;
    let dims = spec.dims();
    let r = dims.len();
    if r < 3 || dims[r - 1] != 2 || dims[r - 3] != cfg.n_freqs() {
        return Err(Error::invalid(
            "istft",
            format!(
                "expected a spectrum of shape [..., {}, frames, 2] (n_fft {} gives {} bins; the last dim holds re, im), got {:?}",
                cfg.n_freqs(),
                cfg.n_fft,
                cfg.n_freqs(),
                dims
            ),
        ));
    }
    let frames = dims[r - 2];
    let geom = IstftGeom::new(cfg, frames, length)?;
    let lead = &dims[..r - 3];
    let batch: usize = lead.iter().product();
    let flat = spec.reshape((batch, cfg.n_freqs(), frames, 2))?;
    let out = match path {
        Path::Fft => fft::istft(&flat, geom)?,
        Path::Matmul => dft::istft(&flat, &geom)?,
    };
    let mut shape = lead.to_vec();
    shape.push(out.dims()[1]);
    out.reshape(shape)
}

/// `|stft(x)|^power` as `[..., n_fft/2+1, frames]` (torchaudio's `Spectrogram`; power 2 is the
/// power spectrum, 1 the magnitude). Differentiable; the gradient at a zero bin is zero rather
/// than NaN (the subgradient torch picks for `abs` of a complex zero).
pub fn spectrogram(x: &Tensor, cfg: &StftConfig, power: f64) -> Result<Tensor> {
    if !(power.is_finite() && power > 0.0) {
        return Err(Error::invalid(
            "spectrogram",
            format!("power must be positive and finite, got {power}"),
        ));
    }
    magnitude_pow(&stft(x, cfg)?, power)
}

/// `|z|^power` of a `[..., 2]` complex tensor, safe at zero.
pub(crate) fn magnitude_pow(spec: &Tensor, power: f64) -> Result<Tensor> {
    let p2 = spec.sqr()?.sum(spec.rank() - 1)?;
    if power == 2.0 {
        return Ok(p2);
    }
    // sqrt'(0) is infinite: route zeros through a constant branch so their gradient is 0.
    let nonzero = p2.gt_scalar(0.0)?;
    let safe = nonzero.where_cond(&p2, &p2.ones_like()?)?;
    let powered = if power == 1.0 {
        safe.sqrt()?
    } else {
        safe.powf(power / 2.0)?
    };
    nonzero.where_cond(&powered, &p2.zeros_like()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_match_torch_definitions() {
        let h = WindowKind::Hann.values(4, true);
        let want = [0.0, 0.5, 1.0, 0.5];
        for (a, b) in h.iter().zip(want) {
            assert!((a - b).abs() < 1e-15);
        }
        let s = WindowKind::Hann.values(5, false);
        assert!((s[2] - 1.0).abs() < 1e-15 && s[0].abs() < 1e-15 && s[4].abs() < 1e-15);
        let m = WindowKind::Hamming.values(4, true);
        assert!((m[0] - 0.08).abs() < 1e-15 && (m[2] - 1.0).abs() < 1e-15);
        assert_eq!(WindowKind::Rectangular.values(3, true), vec![1.0; 3]);
        assert_eq!(WindowKind::Hann.values(1, true), vec![1.0]);
    }

    #[test]
    fn config_errors_name_the_problem() {
        let e = StftConfig::new(8, 0).n_frames(100).unwrap_err().to_string();
        assert!(e.contains("hop_length"), "{e}");
        let e = StftConfig::new(8, 2)
            .win_length(9)
            .n_frames(100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("win_length"), "{e}");
        let e = StftConfig::new(8, 2).n_frames(4).unwrap_err().to_string();
        assert!(e.contains("reflect"), "{e}");
        let e = StftConfig::new(8, 2)
            .center(false)
            .n_frames(7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_fft"), "{e}");
        assert_eq!(StftConfig::new(8, 2).n_frames(100).unwrap(), 51);
        assert_eq!(StftConfig::new(8, 3).center(false).n_frames(8).unwrap(), 1);
    }
}
