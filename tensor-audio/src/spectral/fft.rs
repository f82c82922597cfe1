//! The CPU path: STFT, inverse STFT and their adjoints with `realfft`, as custom autograd ops.
//!
//! All four maps are linear, and each one's backward is another of the four (stft ↔ its
//! adjoint, istft ↔ its adjoint), so gradients of any order come out exact.

use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::num_traits::Zero;
use realfft::{ComplexToReal, FftNum, RealFftPlanner, RealToComplex};
use tensor_core::{CustomOp, DType, Error, Result, Tensor, WithDType};

use super::geometry::{hermitian_weight, reflect, IstftGeom, StftGeom};

/// A float type the kernels run in, with its shared (plan-caching) FFT planner.
trait Sample: FftNum + WithDType {
    fn planner() -> &'static Mutex<RealFftPlanner<Self>>;
}

impl Sample for f32 {
    fn planner() -> &'static Mutex<RealFftPlanner<f32>> {
        static P: OnceLock<Mutex<RealFftPlanner<f32>>> = OnceLock::new();
        P.get_or_init(|| Mutex::new(RealFftPlanner::new()))
    }
}

impl Sample for f64 {
    fn planner() -> &'static Mutex<RealFftPlanner<f64>> {
        static P: OnceLock<Mutex<RealFftPlanner<f64>>> = OnceLock::new();
        P.get_or_init(|| Mutex::new(RealFftPlanner::new()))
    }
}

fn num<T: Sample>(v: f64) -> T {
    <T as WithDType>::from_f64(v)
}

fn planner_err() -> Error {
    Error::msg("stft: the FFT planner's lock was poisoned by a panic in another thread")
}

fn r2c<T: Sample>(n: usize) -> Result<Arc<dyn RealToComplex<T>>> {
    Ok(T::planner()
        .lock()
        .map_err(|_| planner_err())?
        .plan_fft_forward(n))
}

fn c2r<T: Sample>(n: usize) -> Result<Arc<dyn ComplexToReal<T>>> {
    Ok(T::planner()
        .lock()
        .map_err(|_| planner_err())?
        .plan_fft_inverse(n))
}

fn fft_err(e: realfft::FftError) -> Error {
    Error::msg(format!("stft: realfft failed: {e}"))
}

/// Which of the four linear maps an op applies.
#[derive(Clone)]
enum Map {
    /// `[B, T]` → `[B, F, frames, 2]`.
    Stft(Arc<StftGeom>),
    /// `[B, F, frames, 2]` → `[B, T]`.
    StftAdjoint(Arc<StftGeom>),
    /// `[B, F, frames, 2]` → `[B, out_len]`.
    Istft(Arc<IstftGeom>),
    /// `[B, out_len]` → `[B, F, frames, 2]`.
    IstftAdjoint(Arc<IstftGeom>),
}

impl Map {
    fn adjoint(&self) -> Map {
        match self {
            Map::Stft(g) => Map::StftAdjoint(g.clone()),
            Map::StftAdjoint(g) => Map::Stft(g.clone()),
            Map::Istft(g) => Map::IstftAdjoint(g.clone()),
            Map::IstftAdjoint(g) => Map::Istft(g.clone()),
        }
    }

    /// Per-batch-row element counts of the input and output.
    fn sizes(&self) -> (usize, usize) {
        let spec = |f: usize, frames: usize| f * frames * 2;
        match self {
            Map::Stft(g) => (g.sig_len, spec(g.n_freqs(), g.frames)),
            Map::StftAdjoint(g) => (spec(g.n_freqs(), g.frames), g.sig_len),
            Map::Istft(g) => (spec(g.n_freqs(), g.frames), g.out_len),
            Map::IstftAdjoint(g) => (g.out_len, spec(g.n_freqs(), g.frames)),
        }
    }

    fn out_shape(&self, batch: usize) -> Vec<usize> {
        match self {
            Map::Stft(g) => vec![batch, g.n_freqs(), g.frames, 2],
            Map::IstftAdjoint(g) => vec![batch, g.n_freqs(), g.frames, 2],
            Map::StftAdjoint(g) => vec![batch, g.sig_len],
            Map::Istft(g) => vec![batch, g.out_len],
        }
    }

    fn run<T: Sample>(&self, x: &[T], batch: usize) -> Result<Vec<T>> {
        match self {
            Map::Stft(g) => stft_forward(x, batch, g),
            Map::StftAdjoint(g) => stft_adjoint(x, batch, g),
            Map::Istft(g) => istft_forward(x, batch, g),
            Map::IstftAdjoint(g) => istft_adjoint(x, batch, g),
        }
    }
}

struct SpectralOp(Map);

impl CustomOp for SpectralOp {
    fn name(&self) -> &'static str {
        match self.0 {
            Map::Stft(_) => "stft",
            Map::StftAdjoint(_) => "stft_backward",
            Map::Istft(_) => "istft",
            Map::IstftAdjoint(_) => "istft_backward",
        }
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Tensor> {
        let x = &inputs[0];
        let (per_in, _) = self.0.sizes();
        let batch = x.dims()[0];
        if x.elem_count() != batch * per_in {
            return Err(Error::invalid(
                self.name(),
                format!(
                    "expected {per_in} elements per batch row, got shape {:?}",
                    x.dims()
                ),
            ));
        }
        let shape = self.0.out_shape(batch);
        match x.dtype() {
            DType::F32 => {
                Tensor::from_vec(self.0.run(&x.to_vec::<f32>()?, batch)?, shape, x.device())
            }
            DType::F64 => {
                Tensor::from_vec(self.0.run(&x.to_vec::<f64>()?, batch)?, shape, x.device())
            }
            d => Err(Error::UnsupportedDType {
                op: self.name(),
                dtype: d,
                expected: "f32 or f64",
            }),
        }
    }

    fn has_backward(&self) -> bool {
        true
    }

    fn backward(
        &self,
        _inputs: &[Tensor],
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(apply(grad, self.0.adjoint())?)])
    }
}

fn apply(x: &Tensor, map: Map) -> Result<Tensor> {
    Tensor::apply_custom(&[x], Arc::new(SpectralOp(map)))
}

/// `x: [B, T]` → `[B, F, frames, 2]`.
pub(crate) fn stft(x: &Tensor, geom: StftGeom) -> Result<Tensor> {
    apply(x, Map::Stft(Arc::new(geom)))
}

/// `spec: [B, F, frames, 2]` → `[B, out_len]`.
pub(crate) fn istft(spec: &Tensor, geom: IstftGeom) -> Result<Tensor> {
    apply(spec, Map::Istft(Arc::new(geom)))
}

/// Frame-major spectra `[B, frames, F]` → `[B, F, frames, 2]`.
fn to_bins_major<T: Sample>(spec: &[Complex<T>], batch: usize, nf: usize, frames: usize) -> Vec<T> {
    let mut out = vec![T::zero(); batch * nf * frames * 2];
    out.par_chunks_mut(frames * 2)
        .enumerate()
        .for_each(|(row, o)| {
            let (b, f) = (row / nf, row % nf);
            for t in 0..frames {
                let c = spec[(b * frames + t) * nf + f];
                o[2 * t] = c.re;
                o[2 * t + 1] = c.im;
            }
        });
    out
}

/// Bin `f` of frame `t` of batch row `b` in a `[B, F, frames, 2]` buffer.
#[inline]
fn bin<T: Sample>(s: &[T], nf: usize, frames: usize, b: usize, f: usize, t: usize) -> Complex<T> {
    let i = ((b * nf + f) * frames + t) * 2;
    Complex::new(s[i], s[i + 1])
}

fn stft_forward<T: Sample>(x: &[T], batch: usize, g: &StftGeom) -> Result<Vec<T>> {
    let (n, nf, frames, len) = (g.n_fft, g.n_freqs(), g.frames, g.sig_len);
    let fft = r2c::<T>(n)?;
    let w: Vec<T> = g.window.iter().map(|&v| num(v)).collect();
    let mut spec = vec![Complex::<T>::zero(); batch * frames * nf];
    spec.par_chunks_mut(nf).enumerate().try_for_each_init(
        || (fft.make_input_vec(), fft.make_scratch_vec()),
        |(buf, scratch), (i, out)| {
            let (b, t) = (i / frames, i % frames);
            let xs = &x[b * len..(b + 1) * len];
            let start = (t * g.hop) as isize - g.pad as isize;
            for (k, (v, wk)) in buf.iter_mut().zip(&w).enumerate() {
                *v = xs[reflect(start + k as isize, len)] * *wk;
            }
            fft.process_with_scratch(buf, out, scratch).map_err(fft_err)
        },
    )?;
    Ok(to_bins_major(&spec, batch, nf, frames))
}

/// Sum over frames of window · (one-sided inverse DFT of each frame's gradient), folded back
/// through the reflect padding.
fn stft_adjoint<T: Sample>(gs: &[T], batch: usize, g: &StftGeom) -> Result<Vec<T>> {
    let (n, nf, frames, len, pad) = (g.n_fft, g.n_freqs(), g.frames, g.sig_len, g.pad);
    let ifft = c2r::<T>(n)?;
    let w: Vec<T> = g.window.iter().map(|&v| num(v)).collect();
    // d/dframe[k] = Σ_f Re(G_f e^{+2πi fk/n}); the c2r counts interior bins twice, so halve them.
    let half: Vec<T> = (0..nf).map(|f| num(1.0 / hermitian_weight(f, n))).collect();
    let mut fr = vec![T::zero(); batch * frames * n];
    fr.par_chunks_mut(n).enumerate().try_for_each_init(
        || (ifft.make_input_vec(), ifft.make_scratch_vec()),
        |(z, scratch), (i, out)| {
            let (b, t) = (i / frames, i % frames);
            for (f, zf) in z.iter_mut().enumerate() {
                *zf = bin(gs, nf, frames, b, f, t) * half[f];
            }
            zero_unpaired_imag(z, n);
            ifft.process_with_scratch(z, out, scratch)
                .map_err(fft_err)?;
            for (v, wk) in out.iter_mut().zip(&w) {
                *v = *v * *wk;
            }
            Ok::<(), Error>(())
        },
    )?;
    let mut dx = vec![T::zero(); batch * len];
    dx.par_chunks_mut(len).enumerate().for_each(|(b, dxb)| {
        for t in 0..frames {
            let src = &fr[(b * frames + t) * n..(b * frames + t + 1) * n];
            let start = (t * g.hop) as isize - pad as isize;
            if start >= 0 && start as usize + n <= len {
                let dst = &mut dxb[start as usize..start as usize + n];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = *d + *s;
                }
            } else {
                for (k, s) in src.iter().enumerate() {
                    let j = reflect(start + k as isize, len);
                    dxb[j] = dxb[j] + *s;
                }
            }
        }
    });
    Ok(dx)
}

/// The DC and (even n) Nyquist bins of a real signal's spectrum have no imaginary part;
/// realfft rejects non-zero ones, and torch's irfft ignores them.
fn zero_unpaired_imag<T: Sample>(z: &mut [Complex<T>], n: usize) {
    z[0].im = T::zero();
    if n.is_multiple_of(2) {
        z[n / 2].im = T::zero();
    }
}

fn istft_forward<T: Sample>(spec: &[T], batch: usize, g: &IstftGeom) -> Result<Vec<T>> {
    let (n, nf, frames) = (g.n_fft, g.n_freqs(), g.frames);
    let ifft = c2r::<T>(n)?;
    let w: Vec<T> = g.window.iter().map(|&v| num(v)).collect();
    let mut fr = vec![T::zero(); batch * frames * n];
    fr.par_chunks_mut(n).enumerate().try_for_each_init(
        || (ifft.make_input_vec(), ifft.make_scratch_vec()),
        |(z, scratch), (i, out)| {
            let (b, t) = (i / frames, i % frames);
            for (f, zf) in z.iter_mut().enumerate() {
                *zf = bin(spec, nf, frames, b, f, t);
            }
            zero_unpaired_imag(z, n);
            ifft.process_with_scratch(z, out, scratch)
                .map_err(fft_err)?;
            for (v, wk) in out.iter_mut().zip(&w) {
                *v = *v * *wk;
            }
            Ok::<(), Error>(())
        },
    )?;
    let inv_env: Vec<T> = g.inv_env.iter().map(|&v| num(v)).collect();
    let kept = g.kept();
    let mut y = vec![T::zero(); batch * g.out_len];
    y.par_chunks_mut(g.out_len).enumerate().for_each(|(b, yb)| {
        let mut full = vec![T::zero(); g.full_len];
        for t in 0..frames {
            let src = &fr[(b * frames + t) * n..(b * frames + t + 1) * n];
            for (d, s) in full[t * g.hop..t * g.hop + n].iter_mut().zip(src) {
                *d = *d + *s;
            }
        }
        for (i, v) in yb[..kept].iter_mut().enumerate() {
            *v = full[g.start + i] * inv_env[g.start + i];
        }
    });
    Ok(y)
}

fn istft_adjoint<T: Sample>(gy: &[T], batch: usize, g: &IstftGeom) -> Result<Vec<T>> {
    let (n, nf, frames) = (g.n_fft, g.n_freqs(), g.frames);
    let fft = r2c::<T>(n)?;
    let w: Vec<T> = g.window.iter().map(|&v| num(v)).collect();
    let weight: Vec<T> = (0..nf).map(|f| num(hermitian_weight(f, n))).collect();
    // The output gradient spread back over the untrimmed signal, divided by the envelope.
    let kept = g.kept();
    let mut gfull = vec![T::zero(); batch * g.full_len];
    gfull
        .par_chunks_mut(g.full_len)
        .enumerate()
        .for_each(|(b, gf)| {
            for i in 0..kept {
                let j = g.start + i;
                gf[j] = gy[b * g.out_len + i] * num::<T>(g.inv_env[j]);
            }
        });
    let mut spec = vec![Complex::<T>::zero(); batch * frames * nf];
    spec.par_chunks_mut(nf).enumerate().try_for_each_init(
        || (fft.make_input_vec(), fft.make_scratch_vec()),
        |(buf, scratch), (i, out)| {
            let (b, t) = (i / frames, i % frames);
            let src = &gfull[b * g.full_len + t * g.hop..b * g.full_len + t * g.hop + n];
            for ((v, s), wk) in buf.iter_mut().zip(src).zip(&w) {
                *v = *s * *wk;
            }
            fft.process_with_scratch(buf, out, scratch)
                .map_err(fft_err)?;
            for (o, wf) in out.iter_mut().zip(&weight) {
                *o = *o * *wf;
            }
            zero_unpaired_imag(out, n);
            Ok::<(), Error>(())
        },
    )?;
    Ok(to_bins_major(&spec, batch, nf, frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spectral::{StftConfig, WindowKind};
    use tensor_core::conformance::gradcheck::{check_grad, input};

    fn dot(a: &Tensor, b: &Tensor) -> f64 {
        a.mul(b).unwrap().sum_all().unwrap().to_f64().unwrap()
    }

    /// ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ for both transforms, and the adjoints (which are what backward
    /// runs, and whose own backward is the forward map) pass finite differences.
    #[test]
    fn adjoints_are_adjoint_and_differentiable() -> Result<()> {
        let dev = tensor_cpu::device();
        let cfgs = [
            StftConfig::new(8, 3).win_length(6),
            StftConfig::new(9, 2)
                .center(false)
                .window(WindowKind::Hamming)
                .normalized(true),
        ];
        for (i, cfg) in cfgs.iter().enumerate() {
            let seed = 10 * i as u64;
            let g = Arc::new(StftGeom::new(cfg, 13)?);
            let x = input((2, 13), &dev, seed)?;
            let y = input((2, g.n_freqs(), g.frames, 2), &dev, seed + 1)?;
            let ax = apply(&x, Map::Stft(g.clone()))?;
            let aty = apply(&y, Map::StftAdjoint(g.clone()))?;
            assert!((dot(&ax, &y) - dot(&x, &aty)).abs() < 1e-10);
            check_grad("stft adjoint", &[y], |t| {
                apply(&t[0], Map::StftAdjoint(g.clone()))
            })?;

            let gi = Arc::new(IstftGeom::new(
                &cfg.window(WindowKind::Hamming),
                5,
                Some(14),
            )?);
            let s = input((2, gi.n_freqs(), 5, 2), &dev, seed + 2)?;
            let u = input((2, 14), &dev, seed + 3)?;
            let bs = apply(&s, Map::Istft(gi.clone()))?;
            let btu = apply(&u, Map::IstftAdjoint(gi.clone()))?;
            assert!((dot(&bs, &u) - dot(&s, &btu)).abs() < 1e-10);
            check_grad("istft adjoint", &[u], |t| {
                apply(&t[0], Map::IstftAdjoint(gi.clone()))
            })?;
        }
        Ok(())
    }
}
