//! The preconditions every backend checks before it runs an op, written once.
//!
//! Core's `Tensor` methods check what a user can get wrong; a backend is also called directly
//! (by composites, by other crates, by the conformance suite) and must refuse the same bad
//! input with the same error, never panic. These functions are those checks, so that the CPU
//! and CUDA backends (and any other) report identical errors for identical mistakes.

use crate::{AttentionParams, DType, Error, Layout, ReduceOp, Result, Tensor, UnfoldParams};

/// `Error::UnexpectedShape` for `got`, naming what was `expected`.
pub fn unexpected_shape(op: &'static str, expected: String, got: &Layout) -> Error {
    Error::UnexpectedShape {
        op,
        expected,
        got: got.shape().clone(),
    }
}

/// `dim` must be a dim of `l`.
pub fn dim_in_range(op: &'static str, l: &Layout, dim: usize) -> Result<()> {
    if dim >= l.rank() {
        return Err(Error::DimOutOfRange {
            op,
            dim: dim as i64,
            rank: l.rank(),
            shape: l.shape().clone(),
        });
    }
    Ok(())
}

/// Two operands of `op` must share a dtype.
pub fn same_dtype(op: &'static str, lhs: DType, rhs: DType) -> Result<()> {
    if lhs != rhs {
        return Err(Error::DTypeMismatch { op, lhs, rhs });
    }
    Ok(())
}

/// `op` draws or computes floats only.
pub fn float_dtype(op: &'static str, dtype: DType) -> Result<()> {
    if dtype.is_int() {
        return Err(Error::UnsupportedDType {
            op,
            dtype,
            expected: "a float dtype",
        });
    }
    Ok(())
}

/// Indices `ids_l` must have the rank of `other` and no larger size off `dim`
/// (gather, scatter_add).
pub fn ids_fit(op: &'static str, ids_l: &Layout, other: &Layout, dim: usize) -> Result<()> {
    let fits = ids_l.rank() == other.rank()
        && ids_l
            .dims()
            .iter()
            .zip(other.dims())
            .enumerate()
            .all(|(d, (&i, &o))| d == dim || i <= o);
    if !fits {
        return Err(unexpected_shape(
            op,
            format!(
                "indices of rank {} with sizes <= {:?} off dim {dim}",
                other.rank(),
                other.dims()
            ),
            ids_l,
        ));
    }
    Ok(())
}

/// Reduction dims: sorted, distinct, non-empty, in range; exactly one for argmax/argmin.
pub fn reduce_dims(op: ReduceOp, l: &Layout, dims: &[usize]) -> Result<()> {
    let name = op.name();
    if dims.is_empty() || dims.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::invalid(
            name,
            format!("reduction dims must be sorted, distinct and non-empty, got {dims:?}"),
        ));
    }
    for &d in dims {
        dim_in_range(name, l, d)?;
    }
    if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) && dims.len() != 1 {
        return Err(Error::invalid(
            name,
            format!("expects exactly one dim, got {dims:?}"),
        ));
    }
    Ok(())
}

/// `rand_uniform` bounds: finite, `lo <= hi`.
pub fn uniform_bounds(lo: f64, hi: f64) -> Result<()> {
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return Err(Error::invalid(
            "rand_uniform",
            format!("bounds must be finite with lo <= hi, got [{lo}, {hi})"),
        ));
    }
    Ok(())
}

/// `rand_normal` parameters: a finite mean, a finite `std >= 0`.
pub fn normal_params(mean: f64, std: f64) -> Result<()> {
    if !(mean.is_finite() && std.is_finite() && std >= 0.0) {
        return Err(Error::invalid(
            "rand_normal",
            format!("needs a finite mean and std >= 0, got mean {mean}, std {std}"),
        ));
    }
    Ok(())
}

/// The unfold/fold parameters for an input of `spatial` dims (1 to 3 of them): every list
/// as long as the kernel, kernel, stride and dilation positive, and the kernel fitting the
/// padded input. Returns the output's spatial dims.
pub fn unfold_out_spatial(
    op: &'static str,
    p: &UnfoldParams,
    spatial: &[usize],
) -> Result<Vec<usize>> {
    let k = p.kernel.len();
    if !(1..=3).contains(&k) {
        return Err(Error::invalid(
            op,
            format!("supports 1 to 3 spatial dims, got {k}"),
        ));
    }
    if [
        p.stride.len(),
        p.padding.len(),
        p.dilation.len(),
        spatial.len(),
    ] != [k; 4]
    {
        return Err(Error::invalid(
            op,
            format!(
                "kernel {:?}, stride {:?}, padding {:?}, dilation {:?} and spatial {spatial:?} \
                 must all have {k} entries",
                p.kernel, p.stride, p.padding, p.dilation
            ),
        ));
    }
    if p.kernel.contains(&0) || p.stride.contains(&0) || p.dilation.contains(&0) {
        return Err(Error::invalid(
            op,
            format!(
                "kernel {:?}, stride {:?} and dilation {:?} must be positive",
                p.kernel, p.stride, p.dilation
            ),
        ));
    }
    p.out_spatial(spatial).ok_or_else(|| {
        Error::invalid(
            op,
            format!(
                "kernel {:?} (dilation {:?}) does not fit spatial {spatial:?} with padding {:?}",
                p.kernel, p.dilation, p.padding
            ),
        )
    })
}

/// Scaled-dot-product attention's operands and parameters: float q `[B, Hq, Lq, D]`,
/// k `[B, Hkv, Lk, D]`, v `[B, Hkv, Lk, Dv]` of one dtype with `Hq` a multiple of `Hkv`;
/// `Lq <= Lk` when causal; a window of at least 1; ALiBi slopes `[Hq]` and a bias
/// broadcastable to `[B, Hq, Lq, Lk]`, both of q's dtype.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams) -> Result<()> {
    let op = "attention";
    float_dtype(op, q.dtype())?;
    for t in [k, v] {
        same_dtype(op, q.dtype(), t.dtype())?;
    }
    let ok = q.rank() == 4
        && k.rank() == 4
        && v.rank() == 4
        && k.dims()[0] == q.dims()[0]
        && v.dims()[0] == q.dims()[0]
        && k.dims()[1] == v.dims()[1]
        && k.dims()[1] > 0
        && q.dims()[1].is_multiple_of(k.dims()[1])
        && k.dims()[2] == v.dims()[2]
        && k.dims()[3] == q.dims()[3];
    if !ok {
        return Err(Error::invalid(
            op,
            format!(
                "expected q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv] with Hq \
                 divisible by Hkv; got q {:?}, k {:?}, v {:?}",
                q.shape(),
                k.shape(),
                v.shape()
            ),
        ));
    }
    let (b, hq, lq, lk) = (q.dims()[0], q.dims()[1], q.dims()[2], k.dims()[2]);
    if p.causal && lq > lk {
        return Err(Error::invalid(
            op,
            format!("causal attention needs Lq <= Lk, got {lq} > {lk}"),
        ));
    }
    if p.window == Some(0) {
        return Err(Error::invalid(op, "window must be > 0"));
    }
    if let Some(s) = &p.alibi_slopes {
        if s.dims() != [hq] || s.dtype() != q.dtype() {
            return Err(Error::UnexpectedShape {
                op,
                expected: format!("alibi slopes [{hq}] of dtype {}", q.dtype()),
                got: s.shape().clone(),
            });
        }
    }
    if let Some(bias) = &p.bias {
        same_dtype(op, q.dtype(), bias.dtype())?;
        let full = crate::Shape::from([b, hq, lq, lk]);
        if bias
            .shape()
            .broadcast_with(&full, op)
            .map(|s| s.dims() != full.dims())
            .unwrap_or(true)
        {
            return Err(Error::UnexpectedShape {
                op,
                expected: format!("a bias broadcastable to [{b}, {hq}, {lq}, {lk}]"),
                got: bias.shape().clone(),
            });
        }
    }
    Ok(())
}

/// The backward of [`attention`]: its operands, plus the forward's output `[B, Hq, Lq, Dv]`,
/// its log-sum-exp `[B, Hq, Lq]` and the output gradient, all of q's dtype.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    grad_out: &Tensor,
    p: &AttentionParams,
) -> Result<()> {
    attention(q, k, v, p)?;
    let op = "attention_backward";
    for t in [out, lse, grad_out] {
        same_dtype(op, q.dtype(), t.dtype())?;
    }
    let o = [q.dims()[0], q.dims()[1], q.dims()[2], v.dims()[3]];
    if out.dims() != o || grad_out.dims() != o || lse.dims() != &o[..3] {
        return Err(Error::invalid(
            op,
            format!(
                "expected the output and its gradient {o:?} and the log-sum-exp {:?}; got {:?}, \
                 {:?} and {:?}",
                &o[..3],
                out.shape(),
                grad_out.shape(),
                lse.shape()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Shape;

    #[test]
    fn index_and_reduce_checks() {
        let l = Layout::contiguous(Shape::from([2, 3]));
        assert!(dim_in_range("x", &l, 1).is_ok());
        assert!(matches!(
            dim_in_range("x", &l, 2),
            Err(Error::DimOutOfRange {
                dim: 2,
                rank: 2,
                ..
            })
        ));
        let ids = Layout::contiguous(Shape::from([2, 5]));
        assert!(ids_fit("gather", &ids, &l, 1).is_ok());
        assert!(ids_fit("gather", &ids, &l, 0).is_err());
        assert!(reduce_dims(ReduceOp::Sum, &l, &[0, 1]).is_ok());
        for bad in [&[][..], &[1, 0], &[0, 0], &[2]] {
            assert!(reduce_dims(ReduceOp::Sum, &l, bad).is_err(), "{bad:?}");
        }
        assert!(reduce_dims(ReduceOp::ArgMax, &l, &[0, 1]).is_err());
        assert!(same_dtype("x", DType::F32, DType::F16).is_err());
        assert!(float_dtype("x", DType::I64).is_err());
        assert!(uniform_bounds(1.0, 0.0).is_err() && uniform_bounds(0.0, f64::NAN).is_err());
        assert!(normal_params(0.0, -1.0).is_err() && normal_params(0.0, 0.0).is_ok());
    }
}
