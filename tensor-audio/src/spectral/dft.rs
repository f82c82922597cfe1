//! The device path: STFT and inverse STFT composed from differentiable tensor ops — a gather
//! for framing (and reflect padding), a matmul against real cos/sin bases with the window
//! folded in, and `index_add` for the overlap-add. Autograd derives the backward, and nothing
//! leaves the device; only the small constant bases and indices are uploaded (and cached).
//! O(n_fft²) per frame instead of O(n_fft log n_fft), which a GPU matmul absorbs well.

use std::collections::HashMap;
use std::f64::consts::PI;
use std::sync::{Mutex, OnceLock};

use tensor_core::{DType, Device, Result, Tensor};

use super::geometry::{hermitian_weight, IstftGeom, StftGeom};

/// `cos(2π·f·k/n)` and `sin(2π·f·k/n)` with the phase reduced mod n first, so large products
/// lose no precision.
fn cos_sin(f: usize, k: usize, n: usize) -> (f64, f64) {
    let a = 2.0 * PI * ((f * k) % n) as f64 / n as f64;
    (a.cos(), a.sin())
}

/// Uploaded constants, keyed by what they are built from, so repeated calls (every training
/// step) do not upload them again.
type CacheKey = (String, DType, &'static str, Vec<usize>, Vec<u64>);

fn cached(
    key: CacheKey,
    device: &Device,
    build: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Tensor>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(t) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        if t.device().same_device(device) {
            return Ok(t);
        }
    }
    let t = build()?;
    if let Ok(mut c) = cache.lock() {
        // A handful of STFT settings is typical (multi-resolution losses use three or four).
        if c.len() >= 32 {
            c.clear();
        }
        c.insert(key, t.clone());
    }
    Ok(t)
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn index_tensor(
    name: &'static str,
    idx: Vec<usize>,
    sizes: Vec<usize>,
    device: &Device,
) -> Result<Tensor> {
    cached(
        (device.name(), DType::U32, name, sizes, vec![]),
        device,
        || {
            let v: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
            Tensor::from_vec(v, idx.len(), device)
        },
    )
}

/// `x: [B, T]` → `[B, F, frames, 2]`.
pub(crate) fn stft(x: &Tensor, g: &StftGeom) -> Result<Tensor> {
    let (n, nf, dev, dtype) = (g.n_fft, g.n_freqs(), x.device().clone(), x.dtype());
    let batch = x.dims()[0];
    let ids = index_tensor(
        "stft_frames",
        g.frame_sources(),
        vec![g.n_fft, g.hop, g.pad, g.sig_len],
        &dev,
    )?;
    // Column 2f is the real part of bin f, column 2f+1 its imaginary part.
    let basis = cached(
        (dev.name(), dtype, "stft_basis", vec![n], bits(&g.window)),
        &dev,
        || {
            let mut b = vec![0.0; n * 2 * nf];
            for k in 0..n {
                for f in 0..nf {
                    let (c, s) = cos_sin(f, k, n);
                    b[k * 2 * nf + 2 * f] = g.window[k] * c;
                    b[k * 2 * nf + 2 * f + 1] = -g.window[k] * s;
                }
            }
            Tensor::from_f64s(&b, (n, 2 * nf), dtype, &dev)
        },
    )?;
    let frames = x.index_select(&ids, 1)?.reshape((batch, g.frames, n))?;
    frames
        .matmul(&basis)?
        .reshape((batch, g.frames, nf, 2))?
        .transpose(1, 2)
}

/// `spec: [B, F, frames, 2]` → `[B, out_len]`.
pub(crate) fn istft(spec: &Tensor, g: &IstftGeom) -> Result<Tensor> {
    let (n, nf, dev, dtype) = (g.n_fft, g.n_freqs(), spec.device().clone(), spec.dtype());
    let batch = spec.dims()[0];
    // Row 2f maps Re X_f to a frame, row 2f+1 maps Im X_f (zero for DC and Nyquist, which
    // torch's irfft ignores), with the Hermitian weights, scale and window folded in.
    let basis = cached(
        (dev.name(), dtype, "istft_basis", vec![n], bits(&g.window)),
        &dev,
        || {
            let mut b = vec![0.0; 2 * nf * n];
            for f in 0..nf {
                let h = hermitian_weight(f, n);
                let paired = !(f == 0 || (n.is_multiple_of(2) && f == n / 2));
                for k in 0..n {
                    let (c, s) = cos_sin(f, k, n);
                    b[2 * f * n + k] = h * c * g.window[k];
                    if paired {
                        b[(2 * f + 1) * n + k] = -h * s * g.window[k];
                    }
                }
            }
            Tensor::from_f64s(&b, (2 * nf, n), dtype, &dev)
        },
    )?;
    let ids = index_tensor(
        "istft_overlap",
        (0..g.frames)
            .flat_map(|t| (0..n).map(move |k| t * g.hop + k))
            .collect(),
        vec![g.n_fft, g.hop, g.frames],
        &dev,
    )?;
    let frames = spec
        .transpose(1, 2)?
        .contiguous()?
        .reshape((batch, g.frames, 2 * nf))?
        .matmul(&basis)?
        .reshape((batch, g.frames * n))?;
    let full = Tensor::zeros((batch, g.full_len), dtype, &dev)?.index_add(&ids, &frames, 1)?;
    let kept = g.kept();
    let inv_env = cached(
        (
            dev.name(),
            dtype,
            "istft_inv_env",
            vec![g.start, kept],
            bits(&g.inv_env),
        ),
        &dev,
        || Tensor::from_f64s(&g.inv_env[g.start..g.start + kept], kept, dtype, &dev),
    )?;
    let y = full.narrow(1, g.start, kept)?.mul(&inv_env)?;
    if kept < g.out_len {
        y.pad_with_zeros(1, 0, g.out_len - kept)
    } else {
        Ok(y)
    }
}
