//! Fused kernels of the training path: RMS-norm backward, SwiGLU (`silu(gate)·up`) forward
//! and backward, and softmax cross-entropy over class indices forward and backward.
//!
//! Each replaces a chain of elementwise ops (and their temporaries) with one pass over
//! memory. f32 and f64 compute natively; other dtypes go to the composite in
//! `tensor_core::composite`, which is also the reference the tests compare against.
//! Outputs are written without a zero-fill first; work goes to rayon in fixed chunks, so
//! results do not depend on the thread count.

use std::mem::MaybeUninit;

use rayon::prelude::*;
use tensor_core::{composite, CrossEntropyParams, DType, Error, Result, Tensor, WithDType};

use super::math::{self, Float, Io, Kernel, Simd};
use super::{elems, tensor_of};
use crate::storage::{assume_init, uninit_vec as uninit};

/// Elements per parallel task of the elementwise kernels.
const CHUNK: usize = 16 * 1024;

/// Run `f` on the elements of `t` in row-major order (copying only a non-contiguous view).
fn with_slice<T: Io + WithDType, R>(
    t: &Tensor,
    op: &'static str,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let g = t.storage();
    let data = elems::<T>(&**g, &t, op)?;
    let off = t.layout().offset();
    let n = t.elem_count();
    let s = data.get(off..off + n).ok_or_else(|| Error::Backend {
        backend: "cpu".into(),
        msg: format!("{op}: view reaches outside its storage"),
    })?;
    f(s)
}

/// `1 / (1 + e^−a)` through the vectorisable exp.
#[inline(always)]
fn sigmoid<T: Float, M: Simd>(a: T) -> T {
    T::ONE / (T::ONE + (T::ZERO - a).exp::<M>())
}

// ---- silu · mul --------------------------------------------------------------------------

struct SiluMulFwd<'a, T> {
    a: &'a [T],
    b: &'a [T],
    out: &'a mut [MaybeUninit<T>],
}

impl<T: Float> Kernel for SiluMulFwd<'_, T> {
    type Out = ();
    #[inline(always)]
    fn run<M: Simd>(self, _: M) {
        for ((o, &a), &b) in self.out.iter_mut().zip(self.a).zip(self.b) {
            o.write(a * sigmoid::<T, M>(a) * b);
        }
    }
}

struct SiluMulBwd<'a, T> {
    a: &'a [T],
    b: &'a [T],
    g: &'a [T],
    ga: &'a mut [MaybeUninit<T>],
    gb: &'a mut [MaybeUninit<T>],
}

impl<T: Float> Kernel for SiluMulBwd<'_, T> {
    type Out = ();
    #[inline(always)]
    fn run<M: Simd>(self, _: M) {
        let it = self.ga.iter_mut().zip(self.gb.iter_mut());
        for ((((ga, gb), &a), &b), &g) in it.zip(self.a).zip(self.b).zip(self.g) {
            let s = sigmoid::<T, M>(a);
            let sa = a * s;
            gb.write(g * sa);
            // d silu / da = σ + a·σ·(1 − σ)
            ga.write(g * b * (s + sa * (T::ONE - s)));
        }
    }
}

fn silu_mul_typed<T: Float + Io<T = T> + WithDType>(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let n = gate.elem_count();
    let out = with_slice::<T, _>(gate, "silu_mul", |a| {
        with_slice::<T, _>(up, "silu_mul", |b| {
            let mut out = uninit::<T>(n);
            out.par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                .for_each(|(out, (a, b))| math::dispatch(SiluMulFwd { a, b, out }));
            // SAFETY: the chunks cover `out` and the kernel writes each of their elements.
            Ok(unsafe { assume_init(out) })
        })
    })?;
    tensor_of(out, gate.shape().clone(), gate)
}

/// `silu(gate) · up` for same-shape operands.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let same = gate.shape() == up.shape() && gate.dtype() == up.dtype();
    match gate.dtype() {
        DType::F32 if same => silu_mul_typed::<f32>(gate, up),
        DType::F64 if same => silu_mul_typed::<f64>(gate, up),
        _ => composite::silu_mul(gate, up),
    }
}

fn silu_mul_backward_typed<T: Float + Io<T = T> + WithDType>(
    gate: &Tensor,
    up: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let n = gate.elem_count();
    let (ga, gb) = with_slice::<T, _>(gate, "silu_mul_backward", |a| {
        with_slice::<T, _>(up, "silu_mul_backward", |b| {
            with_slice::<T, _>(grad, "silu_mul_backward", |g| {
                let (mut ga, mut gb) = (uninit::<T>(n), uninit::<T>(n));
                ga.par_chunks_mut(CHUNK)
                    .zip(gb.par_chunks_mut(CHUNK))
                    .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                    .zip(g.par_chunks(CHUNK))
                    .for_each(|(((ga, gb), (a, b)), g)| {
                        math::dispatch(SiluMulBwd { a, b, g, ga, gb })
                    });
                // SAFETY: the chunks cover both buffers and the kernel writes every element.
                Ok(unsafe { (assume_init(ga), assume_init(gb)) })
            })
        })
    })?;
    Ok((
        tensor_of(ga, gate.shape().clone(), gate)?,
        tensor_of(gb, gate.shape().clone(), gate)?,
    ))
}

/// Gradients of [`silu_mul`] with respect to `gate` and `up`.
pub fn silu_mul_backward(gate: &Tensor, up: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let same = gate.shape() == up.shape()
        && gate.shape() == grad.shape()
        && gate.dtype() == up.dtype()
        && gate.dtype() == grad.dtype();
    match gate.dtype() {
        DType::F32 if same => silu_mul_backward_typed::<f32>(gate, up, grad),
        DType::F64 if same => silu_mul_backward_typed::<f64>(gate, up, grad),
        _ => composite::silu_mul_backward(gate, up, grad),
    }
}

// ---- RMS norm backward ---------------------------------------------------------------------

/// Sum of squares with independent lanes (vectorises).
#[inline(always)]
fn sum_sq<T: Float, M: Simd>(x: &[T]) -> T {
    let mut acc = [T::ZERO; 16];
    let mut ch = x.chunks_exact(16);
    for c in &mut ch {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = M::madd(v, v, *a);
        }
    }
    let mut s = T::ZERO;
    for &v in ch.remainder() {
        s = M::madd(v, v, s);
    }
    acc.iter().fold(s, |s, &a| s + a)
}

/// Dot product with independent lanes.
#[inline(always)]
fn dot<T: Float, M: Simd>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::ZERO; 16];
    let mut xc = x.chunks_exact(16);
    let mut yc = y.chunks_exact(16);
    for (a16, b16) in (&mut xc).zip(&mut yc) {
        for ((a, &u), &v) in acc.iter_mut().zip(a16).zip(b16) {
            *a = M::madd(u, v, *a);
        }
    }
    let mut s = T::ZERO;
    for (&u, &v) in xc.remainder().iter().zip(yc.remainder()) {
        s = M::madd(u, v, s);
    }
    acc.iter().fold(s, |s, &a| s + a)
}

/// Consecutive rows of one task: writes their `∂x` and adds their share of `∂w` to `gw`.
struct RmsBwd<'a, T> {
    x: &'a [T],
    g: &'a [T],
    w: Option<&'a [T]>,
    eps: T,
    d: usize,
    gx: &'a mut [MaybeUninit<T>],
    gw: &'a mut [T],
    h: &'a mut Vec<T>,
}

impl<T: Float> Kernel for RmsBwd<'_, T> {
    type Out = ();
    #[inline(always)]
    fn run<M: Simd>(self, _: M) {
        let d = self.d;
        let nd = T::from_f64(d as f64);
        let rows = self.x.chunks_exact(d).zip(self.g.chunks_exact(d));
        for ((x, g), gx) in rows.zip(self.gx.chunks_exact_mut(d)) {
            let r = T::ONE / (sum_sq::<T, M>(x) / nd + self.eps).sqrt();
            let h: &[T] = match self.w {
                Some(w) => {
                    self.h.clear();
                    self.h.extend(g.iter().zip(w).map(|(&g, &w)| g * w));
                    for ((a, &g), &x) in self.gw.iter_mut().zip(g).zip(x) {
                        *a = M::madd(g, x * r, *a);
                    }
                    &self.h[..]
                }
                None => g,
            };
            // ∂x = r·h − x·r³·(h·x)/d
            let c = r * r * r * dot::<T, M>(h, x) / nd;
            for ((o, &h), &x) in gx.iter_mut().zip(h).zip(x) {
                o.write(r * h - x * c);
            }
        }
    }
}

fn rms_norm_backward_typed<T: Float + Io<T = T> + WithDType>(
    x: &Tensor,
    weight: Option<&Tensor>,
    grad: &Tensor,
    eps: f64,
) -> Result<(Tensor, Option<Tensor>)> {
    const OP: &str = "rms_norm_backward";
    let d = x.dim(-1)?;
    let n = x.elem_count();
    let wv: Option<Vec<T>> = weight.map(|w| w.contiguous()?.to_vec::<T>()).transpose()?;
    let rows_per = (CHUNK / d.max(1)).max(1);
    let (gx, gw) = with_slice::<T, _>(x, OP, |xs| {
        with_slice::<T, _>(grad, OP, |gs| {
            let mut gx = uninit::<T>(n);
            let partial: Vec<Vec<T>> = if d == 0 {
                Vec::new()
            } else {
                gx.par_chunks_mut(rows_per * d)
                    .zip(xs.par_chunks(rows_per * d).zip(gs.par_chunks(rows_per * d)))
                    .map(|(gx, (x, g))| {
                        let mut gw = vec![T::ZERO; if wv.is_some() { d } else { 0 }];
                        let mut h = Vec::with_capacity(d);
                        math::dispatch(RmsBwd {
                            x,
                            g,
                            w: wv.as_deref(),
                            eps: <T as Float>::from_f64(eps),
                            d,
                            gx,
                            gw: &mut gw,
                            h: &mut h,
                        });
                        gw
                    })
                    .collect()
            };
            // SAFETY: the row chunks cover `gx` and every row is written in full.
            let gx = unsafe { assume_init(gx) };
            // Per-task partial sums added in task order: the same result on any thread count.
            let gw = wv.as_ref().map(|_| {
                let mut acc = vec![T::ZERO; d];
                for p in &partial {
                    for (a, &v) in acc.iter_mut().zip(p) {
                        *a += v;
                    }
                }
                acc
            });
            Ok((gx, gw))
        })
    })?;
    let gx = tensor_of(gx, x.shape().clone(), x)?;
    let gw = match (gw, weight) {
        (Some(v), Some(w)) => Some(tensor_of(v, w.shape().clone(), x)?),
        _ => None,
    };
    Ok((gx, gw))
}

/// Gradients of RMS norm over the last dim with respect to `x` and `weight`.
pub fn rms_norm_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    grad: &Tensor,
    eps: f64,
) -> Result<(Tensor, Option<Tensor>)> {
    let ok = x.rank() >= 1
        && grad.shape() == x.shape()
        && grad.dtype() == x.dtype()
        && weight.is_none_or(|w| w.dtype() == x.dtype() && w.dims() == [x.dims()[x.rank() - 1]]);
    match x.dtype() {
        DType::F32 if ok => rms_norm_backward_typed::<f32>(x, weight, grad, eps),
        DType::F64 if ok => rms_norm_backward_typed::<f64>(x, weight, grad, eps),
        _ => composite::rms_norm_backward(x, weight, grad, eps),
    }
}

// ---- softmax cross-entropy -----------------------------------------------------------------

/// Σ e^(x − shift) with independent lanes.
#[inline(always)]
fn sum_exp<T: Float, M: Simd>(x: &[T], shift: T) -> T {
    let mut acc = [T::ZERO; 16];
    let mut ch = x.chunks_exact(16);
    for c in &mut ch {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v - shift).exp::<M>();
        }
    }
    let mut s = T::ZERO;
    for &v in ch.remainder() {
        s += (v - shift).exp::<M>();
    }
    acc.iter().fold(s, |s, &a| s + a)
}

/// log Σ e^x of a row (an all −inf row gives −inf, like `logsumexp`).
#[inline(always)]
fn row_lse<T: Float, M: Simd>(x: &[T]) -> T {
    let m = math::max_of(x);
    let shift = if m.is_finite() { m } else { T::ZERO };
    sum_exp::<T, M>(x, shift).ln() + shift
}

/// Class index of each row, or `None` for ignored rows; an out-of-range target is an error.
fn ce_classes(targets: &Tensor, c: usize, p: &CrossEntropyParams) -> Result<Vec<Option<usize>>> {
    let t = targets.contiguous()?.to_vec::<i64>()?;
    t.iter()
        .enumerate()
        .map(|(i, &v)| {
            if Some(v) == p.ignore_index {
                Ok(None)
            } else if v >= 0 && (v as u64) < c as u64 {
                Ok(Some(v as usize))
            } else {
                Err(Error::invalid(
                    "cross_entropy",
                    format!("target class {v} out of range for {c} classes (row {i})"),
                ))
            }
        })
        .collect()
}

struct CeFwd<'a, T> {
    x: &'a [T],
    t: &'a [Option<usize>],
    c: usize,
    eps: T,
    out: &'a mut [T],
}

impl<T: Float> Kernel for CeFwd<'_, T> {
    type Out = ();
    #[inline(always)]
    fn run<M: Simd>(self, _: M) {
        let cf = T::from_f64(self.c as f64);
        for ((x, t), o) in self.x.chunks_exact(self.c).zip(self.t).zip(self.out) {
            *o = match *t {
                None => T::ZERO,
                Some(t) => {
                    let mut l = row_lse::<T, M>(x) - (T::ONE - self.eps) * x[t];
                    if self.eps > T::ZERO {
                        l = l - self.eps * math::sum_of(x) / cf;
                    }
                    l
                }
            };
        }
    }
}

struct CeBwd<'a, T> {
    x: &'a [T],
    t: &'a [Option<usize>],
    g: &'a [T],
    c: usize,
    eps: T,
    out: &'a mut [MaybeUninit<T>],
}

impl<T: Float> Kernel for CeBwd<'_, T> {
    type Out = ();
    #[inline(always)]
    fn run<M: Simd>(self, _: M) {
        let smooth = self.eps / T::from_f64(self.c as f64);
        let rows = self.x.chunks_exact(self.c).zip(self.t).zip(self.g);
        for (((x, t), &g), o) in rows.zip(self.out.chunks_exact_mut(self.c)) {
            let Some(t) = *t else {
                for o in o.iter_mut() {
                    o.write(T::ZERO);
                }
                continue;
            };
            let lse = row_lse::<T, M>(x);
            // g·(softmax − ε/C), then the target's −g·(1 − ε)
            for (o, &v) in o.iter_mut().zip(x) {
                o.write(g * ((v - lse).exp::<M>() - smooth));
            }
            let v = (x[t] - lse).exp::<M>() - smooth - (T::ONE - self.eps);
            o[t].write(g * v);
        }
    }
}

fn cross_entropy_typed<T: Float + Io<T = T> + WithDType>(
    logits: &Tensor,
    targets: &Tensor,
    grad: Option<&Tensor>,
    p: &CrossEntropyParams,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    let (n, c) = (logits.dim(0)?, logits.dim(1)?);
    let t = ce_classes(targets, c, p)?;
    let eps = <T as Float>::from_f64(p.label_smoothing);
    let rows_per = (CHUNK / c.max(1)).max(1);
    with_slice::<T, _>(logits, OP, |x| match grad {
        None => {
            let mut out = vec![T::ZERO; n];
            if c > 0 {
                out.par_chunks_mut(rows_per)
                    .zip(x.par_chunks(rows_per * c).zip(t.par_chunks(rows_per)))
                    .for_each(|(out, (x, t))| math::dispatch(CeFwd { x, t, c, eps, out }));
            }
            tensor_of(out, n, logits)
        }
        Some(grad) => {
            let g = grad.contiguous()?.to_vec::<T>()?;
            let mut out = uninit::<T>(n * c);
            if c > 0 {
                out.par_chunks_mut(rows_per * c)
                    .zip(x.par_chunks(rows_per * c).zip(t.par_chunks(rows_per)))
                    .zip(g.par_chunks(rows_per))
                    .for_each(|((out, (x, t)), g)| {
                        math::dispatch(CeBwd {
                            x,
                            t,
                            g,
                            c,
                            eps,
                            out,
                        })
                    });
            }
            // SAFETY: the row chunks cover `out` and every row is written in full.
            let out = unsafe { assume_init(out) };
            tensor_of(out, (n, c), logits)
        }
    })
}

fn ce_fast(logits: &Tensor, targets: &Tensor, grad: Option<&Tensor>) -> bool {
    logits.rank() == 2
        && targets.dims() == [logits.dims()[0]]
        && targets.dtype() == DType::I64
        && grad.is_none_or(|g| g.dims() == [logits.dims()[0]] && g.dtype() == logits.dtype())
}

/// Per-row softmax cross-entropy of `logits: [N, C]` against class indices `targets: [N]`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, p: &CrossEntropyParams) -> Result<Tensor> {
    let fast = ce_fast(logits, targets, None);
    match logits.dtype() {
        DType::F32 if fast => cross_entropy_typed::<f32>(logits, targets, None, p),
        DType::F64 if fast => cross_entropy_typed::<f64>(logits, targets, None, p),
        _ => composite::cross_entropy(logits, targets, p),
    }
}

/// Gradient of [`cross_entropy`] with respect to the logits.
pub fn cross_entropy_backward(
    logits: &Tensor,
    targets: &Tensor,
    grad: &Tensor,
    p: &CrossEntropyParams,
) -> Result<Tensor> {
    let fast = ce_fast(logits, targets, Some(grad));
    match logits.dtype() {
        DType::F32 if fast => cross_entropy_typed::<f32>(logits, targets, Some(grad), p),
        DType::F64 if fast => cross_entropy_typed::<f64>(logits, targets, Some(grad), p),
        _ => composite::cross_entropy_backward(logits, targets, grad, p),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_close, rnd, tol};
    use super::*;

    #[test]
    fn silu_mul_matches_composite() {
        for dt in [DType::F32, DType::F64] {
            for dims in [vec![3, 37], vec![5, 4000], vec![0, 3]] {
                let a = rnd(&dims, dt, 1, 6.0);
                let b = rnd(&dims, dt, 2, 2.0);
                let g = rnd(&dims, dt, 3, 1.0);
                assert_close(
                    &silu_mul(&a, &b).unwrap(),
                    &composite::silu_mul(&a, &b).unwrap(),
                    tol(dt),
                    "silu_mul",
                );
                let (ga, gb) = silu_mul_backward(&a, &b, &g).unwrap();
                let (wa, wb) = composite::silu_mul_backward(&a, &b, &g).unwrap();
                assert_close(&ga, &wa, tol(dt), "silu_mul grad gate");
                assert_close(&gb, &wb, tol(dt), "silu_mul grad up");
            }
        }
    }

    #[test]
    fn rms_norm_backward_matches_composite() {
        for dt in [DType::F32, DType::F64] {
            for dims in [vec![3, 37], vec![700, 64], vec![2, 3, 5]] {
                let d = dims[dims.len() - 1];
                let x = rnd(&dims, dt, 4, 3.0);
                let g = rnd(&dims, dt, 5, 1.0);
                let w = rnd(&[d], dt, 6, 2.0);
                // Transposed grad: a non-contiguous view takes the copy path.
                let gt = g.t().unwrap().contiguous().unwrap().t().unwrap();
                for (w, g) in [(Some(&w), &g), (None, &g), (Some(&w), &gt)] {
                    let (gx, gw) = rms_norm_backward(&x, w, g, 1e-5).unwrap();
                    let (wx, ww) = composite::rms_norm_backward(&x, w, g, 1e-5).unwrap();
                    assert_close(&gx, &wx, tol(dt), "rms_norm grad x");
                    match (gw, ww) {
                        (Some(a), Some(b)) => assert_close(&a, &b, tol(dt) * 10.0, "grad w"),
                        (None, None) => {}
                        _ => panic!("weight gradient presence differs"),
                    }
                }
            }
        }
    }

    #[test]
    fn cross_entropy_matches_composite() {
        let dev = crate::device();
        for dt in [DType::F32, DType::F64] {
            for (n, c) in [(7, 5), (33, 4096), (1, 1)] {
                let x = rnd(&[n, c], dt, 7, 8.0);
                let t: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % c as i64).collect();
                let mut t2 = t.clone();
                t2[0] = -100;
                let g = rnd(&[n], dt, 8, 1.0);
                for (tv, eps) in [(&t, 0.0), (&t2, 0.1), (&t, 0.25)] {
                    let tt = Tensor::from_vec(tv.clone(), n, &dev).unwrap();
                    let p = CrossEntropyParams {
                        ignore_index: Some(-100),
                        label_smoothing: eps,
                    };
                    assert_close(
                        &cross_entropy(&x, &tt, &p).unwrap(),
                        &composite::cross_entropy(&x, &tt, &p).unwrap(),
                        tol(dt),
                        "cross_entropy",
                    );
                    assert_close(
                        &cross_entropy_backward(&x, &tt, &g, &p).unwrap(),
                        &composite::cross_entropy_backward(&x, &tt, &g, &p).unwrap(),
                        tol(dt),
                        "cross_entropy grad",
                    );
                }
            }
        }
        let x = rnd(&[2, 3], DType::F32, 9, 1.0);
        let bad = Tensor::from_vec(vec![0i64, 3], 2, &dev).unwrap();
        let e = cross_entropy(&x, &bad, &CrossEntropyParams::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("target class 3 out of range for 3 classes (row 1)"),
            "{e}"
        );
    }
}
