//! Fast CPU kernels for the backend trait's fused ops: softmax, log-softmax, layer/RMS norm,
//! rotary embeddings, and flash-style attention forward/backward ([`attention`] module).
//!
//! Each public function has the signature of the trait method it overrides, and the same
//! semantics as its default composition in `tensor_core::composite` (the reference the tests
//! compare against). Inputs may be arbitrary strided views; they are read in place. f32 and
//! f64 compute natively, f16/bf16 in f32 with one rounding at the end; any other dtype goes
//! to the composite (which reports the proper error).
//!
//! Rows go to rayon in fixed-size chunks, and every chunk runs through
//! [`math::dispatch`], so the inner loops are vectorised for the CPU at hand.

mod attention;
pub(crate) mod math;
mod tile;
mod train;

pub use attention::{attention, attention_backward};
pub use train::{
    cross_entropy, cross_entropy_backward, rms_norm_backward, silu_mul, silu_mul_backward,
};

use half::{bf16, f16};
use rayon::prelude::*;
use tensor_core::{
    composite, BackendStorage, DType, Error, Layout, Result, Shape, Tensor, WithDType,
};

use crate::CpuStorage;
use math::{Float, Io, Kernel, Simd};

/// Elements per parallel task of the row kernels (rows are never split).
const ROW_CHUNK: usize = 16 * 1024;

/// The typed elements of a tensor's CPU storage (the whole buffer: index it with the layout).
pub(crate) fn elems<'a, S: Io + WithDType>(
    s: &'a dyn BackendStorage,
    t: &Tensor,
    op: &'static str,
) -> Result<&'a [S]> {
    let c = crate::storage::cpu(s)?;
    crate::check_layout(s, t.layout(), op)?;
    S::slice_of(&c.data).ok_or_else(|| Error::Backend {
        backend: "cpu".into(),
        msg: format!(
            "{op}: expected {} storage, got {}",
            S::DTYPE,
            c.data.dtype()
        ),
    })
}

/// The elements of a view in row-major order, in the compute type.
pub(crate) fn gather<S: Io>(data: &[S], l: &Layout) -> Vec<S::T> {
    let mut v = Vec::with_capacity(l.elem_count());
    l.for_each_offset(|o| v.push(data[o].load()));
    v
}

/// Wrap a result vector as a contiguous CPU tensor.
pub(crate) fn tensor_of<S: Io + WithDType>(
    v: Vec<S>,
    shape: impl Into<Shape>,
    like: &Tensor,
) -> Result<Tensor> {
    Tensor::from_backend_storage(
        Box::new(CpuStorage::new(S::into_host(v))),
        shape,
        like.device(),
    )
}

/// Storage offsets of the rows (last dim) of a view, their length and element stride.
fn row_geometry(l: &Layout) -> (Vec<usize>, usize, usize) {
    let r = l.rank();
    if r == 0 {
        return (vec![l.offset()], 1, 1);
    }
    let outer = Layout::new(
        Shape::from(&l.dims()[..r - 1]),
        l.strides()[..r - 1].to_vec(),
        l.offset(),
    );
    (outer.offsets(), l.dims()[r - 1], l.strides()[r - 1])
}

/// What a row kernel does to one row.
#[derive(Clone, Copy)]
enum RowOp<'a, T> {
    Softmax,
    LogSoftmax,
    LayerNorm {
        w: Option<&'a [T]>,
        b: Option<&'a [T]>,
        eps: T,
    },
    RmsNorm {
        w: Option<&'a [T]>,
        eps: T,
    },
}

/// One row: `x` in, `y` out (same length, non-empty).
#[inline(always)]
fn apply_row<T: Float, M: Simd>(op: RowOp<'_, T>, x: &[T], y: &mut [T]) {
    let n = T::from_f64(x.len() as f64);
    match op {
        RowOp::Softmax => {
            let m = math::max_of(x);
            let s = math::exp_shift_sum::<T, M>(x, m, y);
            math::scale(y, T::ONE / s);
        }
        RowOp::LogSoftmax => {
            // As `logsumexp`: an infinite max shifts by 0 instead (no NaN from −inf − −inf).
            let m = math::max_of(x);
            let shift = if m.is_finite() { m } else { T::ZERO };
            let s = math::exp_shift_sum::<T, M>(x, shift, y);
            let lse = s.ln() + shift;
            for (o, &v) in y.iter_mut().zip(x) {
                *o = v - lse;
            }
        }
        RowOp::LayerNorm { w, b, eps } => {
            let mean = math::sum_of(x) / n;
            for (o, &v) in y.iter_mut().zip(x) {
                *o = v - mean;
            }
            let mut acc = [T::ZERO; 16];
            let mut ch = y.chunks_exact(16);
            for c in &mut ch {
                for (a, &v) in acc.iter_mut().zip(c) {
                    *a = M::madd(v, v, *a);
                }
            }
            let mut ss = T::ZERO;
            for &v in ch.remainder() {
                ss = M::madd(v, v, ss);
            }
            for a in acc {
                ss += a;
            }
            let r = T::ONE / (ss / n + eps).sqrt();
            match (w, b) {
                (Some(w), Some(b)) => {
                    for ((o, &w), &b) in y.iter_mut().zip(w).zip(b) {
                        *o = *o * r * w + b;
                    }
                }
                (Some(w), None) => {
                    for (o, &w) in y.iter_mut().zip(w) {
                        *o = *o * r * w;
                    }
                }
                (None, Some(b)) => {
                    for (o, &b) in y.iter_mut().zip(b) {
                        *o = *o * r + b;
                    }
                }
                (None, None) => math::scale(y, r),
            }
        }
        RowOp::RmsNorm { w, eps } => {
            let mut acc = [T::ZERO; 16];
            let mut ch = x.chunks_exact(16);
            for c in &mut ch {
                for (a, &v) in acc.iter_mut().zip(c) {
                    *a = M::madd(v, v, *a);
                }
            }
            let mut ss = T::ZERO;
            for &v in ch.remainder() {
                ss = M::madd(v, v, ss);
            }
            for a in acc {
                ss += a;
            }
            let r = T::ONE / (ss / n + eps).sqrt();
            match w {
                Some(w) => {
                    for ((o, &v), &w) in y.iter_mut().zip(x).zip(w) {
                        *o = v * r * w;
                    }
                }
                None => {
                    for (o, &v) in y.iter_mut().zip(x) {
                        *o = v * r;
                    }
                }
            }
        }
    }
}

/// A chunk of consecutive rows for one parallel task.
struct Rows<'a, S: Io> {
    op: RowOp<'a, S::T>,
    data: &'a [S],
    bases: &'a [usize],
    n: usize,
    stride: usize,
    out: &'a mut [S],
}

impl<S: Io> Kernel for Rows<'_, S> {
    type Out = ();
    #[inline(always)]
    fn run<M: Simd>(self, _: M) {
        let n = self.n;
        let mut xin = Vec::new();
        let mut yout = Vec::new();
        for (&base, out) in self.bases.iter().zip(self.out.chunks_exact_mut(n)) {
            let direct = if self.stride == 1 {
                S::native(&self.data[base..base + n])
            } else {
                None
            };
            let x: &[S::T] = match direct {
                Some(x) => x,
                None => {
                    xin.clear();
                    xin.extend((0..n).map(|i| self.data[base + i * self.stride].load()));
                    &xin
                }
            };
            match S::native_mut(out) {
                Some(y) => apply_row::<S::T, M>(self.op, x, y),
                None => {
                    yout.resize(n, S::T::ZERO);
                    apply_row::<S::T, M>(self.op, x, &mut yout);
                    for (o, &v) in out.iter_mut().zip(&yout) {
                        *o = S::store(v);
                    }
                }
            }
        }
    }
}

/// Run a row op over every row of `x` (typed), with norm params read through their layouts.
fn rows_typed<S: Io + WithDType>(
    x: &Tensor,
    kind: RowKind<'_>,
    name: &'static str,
) -> Result<Tensor> {
    let g = x.storage();
    let data = elems::<S>(&**g, x, name)?;
    let param = |t: Option<&Tensor>| -> Result<Option<Vec<S::T>>> {
        t.map(|t| {
            let pg = t.storage();
            let pd = elems::<S>(&**pg, t, name)?;
            Ok(gather(pd, t.layout()))
        })
        .transpose()
    };
    let (wv, bv, eps) = match kind {
        RowKind::Softmax | RowKind::LogSoftmax => (None, None, 0.0),
        RowKind::LayerNorm { w, b, eps } => (param(w)?, param(b)?, eps),
        RowKind::RmsNorm { w, eps } => (param(w)?, None, eps),
    };
    let eps = S::T::from_f64(eps);
    let op = match kind {
        RowKind::Softmax => RowOp::Softmax,
        RowKind::LogSoftmax => RowOp::LogSoftmax,
        RowKind::LayerNorm { .. } => RowOp::LayerNorm {
            w: wv.as_deref(),
            b: bv.as_deref(),
            eps,
        },
        RowKind::RmsNorm { .. } => RowOp::RmsNorm {
            w: wv.as_deref(),
            eps,
        },
    };
    let mut out = vec![S::default(); x.elem_count()];
    let (bases, n, stride) = row_geometry(x.layout());
    if let Some(rows_per) = ROW_CHUNK.checked_div(n) {
        let rows_per = rows_per.max(1);
        out.par_chunks_mut(rows_per * n)
            .zip(bases.par_chunks(rows_per))
            .for_each(|(out, bases)| {
                math::dispatch(Rows {
                    op,
                    data,
                    bases,
                    n,
                    stride,
                    out,
                })
            });
    }
    tensor_of(out, x.shape().clone(), x)
}

/// A row op with its tensor parameters (before typing).
#[derive(Clone, Copy)]
enum RowKind<'a> {
    Softmax,
    LogSoftmax,
    LayerNorm {
        w: Option<&'a Tensor>,
        b: Option<&'a Tensor>,
        eps: f64,
    },
    RmsNorm {
        w: Option<&'a Tensor>,
        eps: f64,
    },
}

fn rows(x: &Tensor, kind: RowKind<'_>, name: &'static str) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => rows_typed::<f32>(x, kind, name),
        DType::F64 => rows_typed::<f64>(x, kind, name),
        DType::F16 => rows_typed::<f16>(x, kind, name),
        DType::BF16 => rows_typed::<bf16>(x, kind, name),
        _ => match kind {
            RowKind::Softmax => composite::softmax_last_dim(x),
            RowKind::LogSoftmax => composite::log_softmax_last_dim(x),
            RowKind::LayerNorm { w, b, eps } => composite::layer_norm(x, w, b, eps),
            RowKind::RmsNorm { w, eps } => composite::rms_norm(x, w, eps),
        },
    }
}

/// Softmax over the last dim (max-shifted; an all −inf row gives NaN, as the composite).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    rows(x, RowKind::Softmax, "softmax")
}

/// `x − logsumexp(x)` over the last dim.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    rows(x, RowKind::LogSoftmax, "log_softmax")
}

/// Layer norm over the last dim with biased variance; `weight`/`bias` are `[D]`.
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    rows(
        x,
        RowKind::LayerNorm {
            w: weight,
            b: bias,
            eps,
        },
        "layer_norm",
    )
}

/// `x · rsqrt(mean(x²) + eps) · weight` over the last dim.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    rows(x, RowKind::RmsNorm { w: weight, eps }, "rms_norm")
}

// ---- rotary embeddings ----------------------------------------------------------------------

/// A chunk of `[.., L, D]` rows for rope: row `r` of the chunk is global row `row0 + r`.
struct Rope<'a, S: Io> {
    data: &'a [S],
    bases: &'a [usize],
    stride: usize,
    d: usize,
    l: usize,
    row0: usize,
    cos: &'a [S::T],
    sin: &'a [S::T],
    interleaved: bool,
    out: &'a mut [S],
}

impl<S: Io> Kernel for Rope<'_, S> {
    type Out = ();
    #[inline(always)]
    fn run<M: Simd>(self, _: M) {
        let (d, h) = (self.d, self.d / 2);
        let mut xin = Vec::new();
        let mut yout = vec![S::T::ZERO; d];
        for (r, (&base, out)) in self
            .bases
            .iter()
            .zip(self.out.chunks_exact_mut(d))
            .enumerate()
        {
            let pos = (self.row0 + r) % self.l;
            let (c, s) = (
                &self.cos[pos * h..pos * h + h],
                &self.sin[pos * h..pos * h + h],
            );
            let direct = if self.stride == 1 {
                S::native(&self.data[base..base + d])
            } else {
                None
            };
            let x: &[S::T] = match direct {
                Some(x) => x,
                None => {
                    xin.clear();
                    xin.extend((0..d).map(|i| self.data[base + i * self.stride].load()));
                    &xin
                }
            };
            let y: &mut [S::T] = match S::native_mut(out) {
                Some(y) => y,
                None => &mut yout,
            };
            if self.interleaved {
                for (((yp, xp), &c), &s) in
                    y.chunks_exact_mut(2).zip(x.chunks_exact(2)).zip(c).zip(s)
                {
                    yp[0] = xp[0] * c - xp[1] * s;
                    yp[1] = xp[1] * c + xp[0] * s;
                }
            } else {
                let (x1, x2) = x.split_at(h);
                let (y1, y2) = y.split_at_mut(h);
                for i in 0..h {
                    y1[i] = x1[i] * c[i] - x2[i] * s[i];
                    y2[i] = x2[i] * c[i] + x1[i] * s[i];
                }
            }
            if S::native(out).is_none() {
                for (o, &v) in out.iter_mut().zip(&yout) {
                    *o = S::store(v);
                }
            }
        }
    }
}

fn rope_typed<S: Io + WithDType>(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> Result<Tensor> {
    let (gx, gc, gs) = (x.storage(), cos.storage(), sin.storage());
    let data = elems::<S>(&**gx, x, "rope")?;
    let cv = gather(elems::<S>(&**gc, cos, "rope")?, cos.layout());
    let sv = gather(elems::<S>(&**gs, sin, "rope")?, sin.layout());
    let dims = x.dims();
    let (l, d) = (dims[2], dims[3]);
    let mut out = vec![S::default(); x.elem_count()];
    if let Some(rows_per) = ROW_CHUNK.checked_div(d) {
        let rows_per = rows_per.max(1);
        let (bases, _, stride) = row_geometry(x.layout());
        out.par_chunks_mut(rows_per * d)
            .zip(bases.par_chunks(rows_per))
            .enumerate()
            .for_each(|(ci, (out, bases))| {
                math::dispatch(Rope {
                    data,
                    bases,
                    stride,
                    d,
                    l,
                    row0: ci * rows_per,
                    cos: &cv,
                    sin: &sv,
                    interleaved,
                    out,
                })
            });
    }
    tensor_of(out, x.shape().clone(), x)
}

/// Rotary embedding of `x: [B, H, L, D]` with `cos, sin: [L, D/2]`: rotate-half
/// (`[x1·c − x2·s, x2·c + x1·s]` on the halves) or interleaved (pairs `2i, 2i+1`).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let ok = x.rank() == 4
        && x.dims()[3].is_multiple_of(2)
        && cos.dims() == [x.dims()[2], x.dims()[3] / 2]
        && sin.dims() == cos.dims()
        && cos.dtype() == x.dtype()
        && sin.dtype() == x.dtype();
    if !ok {
        return composite::rope(x, cos, sin, interleaved);
    }
    match x.dtype() {
        DType::F32 => rope_typed::<f32>(x, cos, sin, interleaved),
        DType::F64 => rope_typed::<f64>(x, cos, sin, interleaved),
        DType::F16 => rope_typed::<f16>(x, cos, sin, interleaved),
        DType::BF16 => rope_typed::<bf16>(x, cos, sin, interleaved),
        _ => composite::rope(x, cos, sin, interleaved),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tensor_core::Device;

    pub(crate) fn dev() -> Device {
        crate::device()
    }

    /// A deterministic random tensor (values in [-scale, scale)).
    pub(crate) fn rnd(dims: &[usize], dtype: DType, seed: u64, scale: f64) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f64> = crate::test_util::noise(n, seed)
            .into_iter()
            .map(|x| x * scale)
            .collect();
        Tensor::from_f64s(&v, dims.to_vec(), dtype, &dev()).expect("test tensor")
    }

    /// Max |a − b| / (1 + |b|), failing on shape mismatch or a NaN on one side only.
    pub(crate) fn assert_close(got: &Tensor, want: &Tensor, tol: f64, what: &str) {
        assert_eq!(got.dims(), want.dims(), "{what}: shape");
        assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
        let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            if a.is_nan() || b.is_nan() {
                assert!(a.is_nan() && b.is_nan(), "{what}[{i}]: {a} vs {b}");
                continue;
            }
            if a.is_infinite() || b.is_infinite() {
                assert_eq!(a, b, "{what}[{i}]");
                continue;
            }
            let err = (a - b).abs() / (1.0 + b.abs());
            assert!(
                err <= tol,
                "{what}[{i}]: {a} vs {b} (err {err:e}, tol {tol:e})"
            );
        }
    }

    pub(crate) fn tol(dtype: DType) -> f64 {
        match dtype {
            DType::F64 => 1e-12,
            DType::F32 => 1e-5,
            DType::BF16 => 2e-2,
            _ => 4e-3,
        }
    }

    /// A non-contiguous view with the same values as a fresh `dims` tensor: built transposed
    /// and transposed back (inner stride ≠ 1).
    fn strided(dims: &[usize], dtype: DType, seed: u64) -> Tensor {
        let r = dims.len();
        let mut td = dims.to_vec();
        td.swap(r - 1, r - 2);
        rnd(&td, dtype, seed, 3.0).transpose(r - 1, r - 2).unwrap()
    }

    const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

    #[test]
    fn softmax_and_log_softmax_match_composite() {
        for dt in FLOATS {
            for dims in [vec![3, 5, 37], vec![4, 1024], vec![1, 1], vec![2, 0, 3]] {
                let x = rnd(&dims, dt, 1, 4.0);
                assert_close(
                    &softmax_last_dim(&x).unwrap(),
                    &composite::softmax_last_dim(&x).unwrap(),
                    tol(dt),
                    "softmax",
                );
                assert_close(
                    &log_softmax_last_dim(&x).unwrap(),
                    &composite::log_softmax_last_dim(&x).unwrap(),
                    tol(dt),
                    "log_softmax",
                );
            }
            let x = strided(&[2, 7, 19], dt, 2);
            assert!(!x.is_contiguous());
            assert_close(
                &softmax_last_dim(&x).unwrap(),
                &composite::softmax_last_dim(&x).unwrap(),
                tol(dt),
                "softmax strided",
            );
            assert_close(
                &log_softmax_last_dim(&x).unwrap(),
                &composite::log_softmax_last_dim(&x).unwrap(),
                tol(dt),
                "log_softmax strided",
            );
        }
    }

    #[test]
    fn softmax_of_infinite_rows_matches_composite() {
        let inf = f64::INFINITY;
        let x = Tensor::from_f64s(
            &[-inf, -inf, -inf, 0.5, -inf, 2.0, 1.0, 2.0, 3.0],
            (3, 3),
            DType::F32,
            &dev(),
        )
        .unwrap();
        assert_close(
            &softmax_last_dim(&x).unwrap(),
            &composite::softmax_last_dim(&x).unwrap(),
            1e-6,
            "softmax inf",
        );
        assert_close(
            &log_softmax_last_dim(&x).unwrap(),
            &composite::log_softmax_last_dim(&x).unwrap(),
            1e-6,
            "log_softmax inf",
        );
    }

    #[test]
    fn norms_match_composite() {
        for dt in FLOATS {
            for (dims, seed) in [(vec![3, 4, 33], 3u64), (vec![2, 1000], 4), (vec![5, 1], 5)] {
                let d = *dims.last().unwrap();
                let x = rnd(&dims, dt, seed, 2.0).affine(1.0, 0.3).unwrap();
                let w = rnd(&[d], dt, seed + 10, 1.0);
                let b = rnd(&[d], dt, seed + 20, 1.0);
                for (wo, bo) in [
                    (None, None),
                    (Some(&w), None),
                    (None, Some(&b)),
                    (Some(&w), Some(&b)),
                ] {
                    assert_close(
                        &layer_norm(&x, wo, bo, 1e-5).unwrap(),
                        &composite::layer_norm(&x, wo, bo, 1e-5).unwrap(),
                        tol(dt),
                        "layer_norm",
                    );
                }
                for wo in [None, Some(&w)] {
                    assert_close(
                        &rms_norm(&x, wo, 1e-6).unwrap(),
                        &composite::rms_norm(&x, wo, 1e-6).unwrap(),
                        tol(dt),
                        "rms_norm",
                    );
                }
            }
            // Strided input and a strided (broadcast-free) weight view.
            let x = strided(&[3, 6, 21], dt, 6);
            let w = rnd(&[2, 21], dt, 7, 1.0)
                .narrow(0, 1, 1)
                .unwrap()
                .squeeze(0)
                .unwrap();
            let wt = rnd(&[21, 2], dt, 8, 1.0)
                .narrow(1, 0, 1)
                .unwrap()
                .squeeze(1)
                .unwrap();
            assert!(!wt.is_contiguous());
            assert_close(
                &layer_norm(&x, Some(&wt), Some(&w), 1e-5).unwrap(),
                &composite::layer_norm(&x, Some(&wt), Some(&w), 1e-5).unwrap(),
                tol(dt),
                "layer_norm strided",
            );
            assert_close(
                &rms_norm(&x, Some(&wt), 1e-5).unwrap(),
                &composite::rms_norm(&x, Some(&wt), 1e-5).unwrap(),
                tol(dt),
                "rms_norm strided",
            );
        }
    }

    #[test]
    fn rope_matches_composite() {
        for dt in FLOATS {
            for interleaved in [false, true] {
                for (b, h, l, d) in [(2, 3, 5, 8), (1, 2, 7, 64), (1, 1, 1, 2)] {
                    let x = rnd(&[b, h, l, d], dt, 11, 1.0);
                    let cos = rnd(&[l, d / 2], dt, 12, 1.0);
                    let sin = rnd(&[l, d / 2], dt, 13, 1.0);
                    assert_close(
                        &rope(&x, &cos, &sin, interleaved).unwrap(),
                        &composite::rope(&x, &cos, &sin, interleaved).unwrap(),
                        tol(dt),
                        "rope",
                    );
                }
                // [B, L, H, D] storage viewed as [B, H, L, D], and strided cos/sin.
                let x = rnd(&[2, 6, 3, 16], dt, 14, 1.0).transpose(1, 2).unwrap();
                let cos = rnd(&[8, 6], dt, 15, 1.0).t().unwrap();
                let sin = rnd(&[6, 8], dt, 16, 1.0);
                assert_close(
                    &rope(&x, &cos, &sin, interleaved).unwrap(),
                    &composite::rope(&x, &cos, &sin, interleaved).unwrap(),
                    tol(dt),
                    "rope strided",
                );
                let xs = strided(&[1, 2, 4, 8], dt, 17);
                let (c4, s4) = (rnd(&[4, 4], dt, 18, 1.0), rnd(&[4, 4], dt, 19, 1.0));
                assert_close(
                    &rope(&xs, &c4, &s4, interleaved).unwrap(),
                    &composite::rope(&xs, &c4, &s4, interleaved).unwrap(),
                    tol(dt),
                    "rope inner-strided",
                );
            }
        }
    }
}
