//! Tensor ops that map onto backend primitives: elementwise (with broadcasting), comparisons,
//! where, reductions, matmul and indexing. Every op validates its inputs here, so every
//! backend reports the same errors.

use crate::backprop::{record, Op};
use crate::{BinaryOp, CmpOp, DType, Dim, Dims, Error, ReduceOp, Result, Shape, Tensor, UnaryOp};

pub(crate) fn check_same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device().same_device(b.device()) {
        Ok(())
    } else {
        Err(Error::DeviceMismatch {
            op,
            lhs: a.device().name(),
            rhs: b.device().name(),
        })
    }
}

fn check_same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() == b.dtype() {
        Ok(())
    } else {
        Err(Error::DTypeMismatch {
            op,
            lhs: a.dtype(),
            rhs: b.dtype(),
        })
    }
}

pub(crate) fn check_float(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            op,
            dtype: t.dtype(),
            expected: "a float dtype (f16, bf16, f32, f64)",
        })
    }
}

fn check_index_dtype(op: &'static str, ids: &Tensor) -> Result<()> {
    match ids.dtype() {
        DType::U8 | DType::U32 | DType::I64 => Ok(()),
        d => Err(Error::UnsupportedDType {
            op,
            dtype: d,
            expected: "an integer index dtype (u8, u32, i64)",
        }),
    }
}

/// Broadcast two tensors to their common shape.
pub(crate) fn broadcast_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    if a.shape() == b.shape() {
        return Ok((a.clone(), b.clone()));
    }
    let shape = a.shape().broadcast_with(b.shape(), op)?;
    Ok((a.broadcast_as(shape.clone())?, b.broadcast_as(shape)?))
}

macro_rules! unary_methods {
    ($($name:ident => $op:expr),* $(,)?) => {
        impl Tensor {
            $(pub fn $name(&self) -> Result<Tensor> { self.unary($op) })*
        }
    };
}

unary_methods!(
    neg => UnaryOp::Neg,
    abs => UnaryOp::Abs,
    sign => UnaryOp::Sign,
    exp => UnaryOp::Exp,
    log => UnaryOp::Log,
    sqrt => UnaryOp::Sqrt,
    rsqrt => UnaryOp::Rsqrt,
    recip => UnaryOp::Recip,
    sqr => UnaryOp::Sqr,
    sin => UnaryOp::Sin,
    cos => UnaryOp::Cos,
    tanh => UnaryOp::Tanh,
    sigmoid => UnaryOp::Sigmoid,
    relu => UnaryOp::Relu,
    gelu => UnaryOp::Gelu,
    gelu_tanh => UnaryOp::GeluTanh,
    erf => UnaryOp::Erf,
    silu => UnaryOp::Silu,
    softplus => UnaryOp::Softplus,
    floor => UnaryOp::Floor,
    ceil => UnaryOp::Ceil,
    round => UnaryOp::Round,
);

impl Tensor {
    /// Apply an elementwise unary op.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        if !self.dtype().is_float() && !op.supports_int() {
            return Err(Error::UnsupportedDType {
                op: op.name(),
                dtype: self.dtype(),
                expected: "a float dtype",
            });
        }
        let s = {
            let st = self.storage();
            self.device()
                .backend()
                .unary(op, st.as_ref(), self.layout())?
        };
        let rec = if self.dtype().is_float() {
            record(&[self], || Op::Unary(self.clone(), op))
        } else {
            None
        };
        Ok(Tensor::from_storage(
            s,
            self.shape().clone(),
            self.device(),
            rec,
        ))
    }

    /// `self * mul + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Affine { mul, add })
    }
    pub fn add_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, v)
    }
    pub fn sub_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, -v)
    }
    pub fn mul_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(v, 0.0)
    }
    pub fn div_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0 / v, 0.0)
    }
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Powf(e))
    }
    pub fn elu(&self, alpha: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Elu(alpha))
    }
    pub fn leaky_relu(&self, slope: f64) -> Result<Tensor> {
        self.unary(UnaryOp::LeakyRelu(slope))
    }
    pub fn clamp(&self, min: f64, max: f64) -> Result<Tensor> {
        if min > max {
            return Err(Error::invalid("clamp", format!("min {min} > max {max}")));
        }
        self.unary(UnaryOp::Clamp { min, max })
    }

    /// Elementwise binary op with NumPy broadcasting.
    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        check_same_device(op.name(), self, rhs)?;
        check_same_dtype(op.name(), self, rhs)?;
        let (a, b) = broadcast_pair(op.name(), self, rhs)?;
        let s = {
            let (sa, sb) = (a.storage(), b.storage());
            self.device()
                .backend()
                .binary(op, sa.as_ref(), a.layout(), sb.as_ref(), b.layout())?
        };
        let rec = if self.dtype().is_float() {
            record(&[&a, &b], || Op::Binary(a.clone(), b.clone(), op))
        } else {
            None
        };
        Ok(Tensor::from_storage(
            s,
            a.shape().clone(),
            self.device(),
            rec,
        ))
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div)
    }
    pub fn pow(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Pow)
    }
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Maximum)
    }
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Minimum)
    }

    // ---- comparisons (u8 results, not differentiable) ---------------------------------------

    pub fn cmp(&self, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
        check_same_device(op.name(), self, rhs)?;
        check_same_dtype(op.name(), self, rhs)?;
        let (a, b) = broadcast_pair(op.name(), &self.detach(), &rhs.detach())?;
        let s = {
            let (sa, sb) = (a.storage(), b.storage());
            self.device()
                .backend()
                .cmp(op, sa.as_ref(), a.layout(), sb.as_ref(), b.layout())?
        };
        Ok(Tensor::from_storage(
            s,
            a.shape().clone(),
            self.device(),
            None,
        ))
    }

    fn cmp_scalar(&self, v: f64, op: CmpOp) -> Result<Tensor> {
        let s = Tensor::scalar(v, self.dtype(), self.device())?;
        self.cmp(&s, op)
    }

    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Eq)
    }
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Ne)
    }
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Lt)
    }
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Le)
    }
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Gt)
    }
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Ge)
    }
    pub fn eq_scalar(&self, v: f64) -> Result<Tensor> {
        self.cmp_scalar(v, CmpOp::Eq)
    }
    pub fn ne_scalar(&self, v: f64) -> Result<Tensor> {
        self.cmp_scalar(v, CmpOp::Ne)
    }
    pub fn lt_scalar(&self, v: f64) -> Result<Tensor> {
        self.cmp_scalar(v, CmpOp::Lt)
    }
    pub fn le_scalar(&self, v: f64) -> Result<Tensor> {
        self.cmp_scalar(v, CmpOp::Le)
    }
    pub fn gt_scalar(&self, v: f64) -> Result<Tensor> {
        self.cmp_scalar(v, CmpOp::Gt)
    }
    pub fn ge_scalar(&self, v: f64) -> Result<Tensor> {
        self.cmp_scalar(v, CmpOp::Ge)
    }

    /// `self` is a u8 condition: pick `on_true` where non-zero, else `on_false` (broadcasting).
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        if self.dtype() != DType::U8 {
            return Err(Error::UnsupportedDType {
                op: "where",
                dtype: self.dtype(),
                expected: "u8 (a comparison result)",
            });
        }
        check_same_device("where", self, on_true)?;
        check_same_device("where", self, on_false)?;
        check_same_dtype("where", on_true, on_false)?;
        let shape = self
            .shape()
            .broadcast_with(on_true.shape(), "where")?
            .broadcast_with(on_false.shape(), "where")?;
        let c = self.detach().broadcast_as(shape.clone())?;
        let t = on_true.broadcast_as(shape.clone())?;
        let f = on_false.broadcast_as(shape.clone())?;
        let s = {
            let (sc, st, sf) = (c.storage(), t.storage(), f.storage());
            self.device().backend().where_cond(
                sc.as_ref(),
                c.layout(),
                st.as_ref(),
                t.layout(),
                sf.as_ref(),
                f.layout(),
            )?
        };
        let rec = if t.dtype().is_float() {
            record(&[&t, &f], || Op::WhereCond(c.clone(), t.clone(), f.clone()))
        } else {
            None
        };
        Ok(Tensor::from_storage(s, shape, self.device(), rec))
    }

    /// Replace the entries where `mask` (u8, broadcastable) is non-zero by `value`.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        let fill = Tensor::scalar(value, self.dtype(), self.device())?;
        mask.where_cond(&fill, self)
    }

    /// Upper triangle of the last two dims (entries with `col − row ≥ diagonal`).
    pub fn triu(&self, diagonal: i64) -> Result<Tensor> {
        self.keep_triangle(diagonal, true)
    }

    /// Lower triangle of the last two dims (entries with `col − row ≤ diagonal`).
    pub fn tril(&self, diagonal: i64) -> Result<Tensor> {
        self.keep_triangle(diagonal, false)
    }

    fn keep_triangle(&self, diagonal: i64, upper: bool) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::UnexpectedShape {
                op: if upper { "triu" } else { "tril" },
                expected: "rank >= 2".into(),
                got: self.shape().clone(),
            });
        }
        let (r, c) = (self.dims()[self.rank() - 2], self.dims()[self.rank() - 1]);
        let mut keep = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                let d = j as i64 - i as i64;
                if (upper && d >= diagonal) || (!upper && d <= diagonal) {
                    keep[i * c + j] = 1.0;
                }
            }
        }
        let mask = Tensor::from_f64s(&keep, (r, c), DType::U8, self.device())?;
        mask.where_cond(self, &self.zeros_like()?)
    }

    // ---- reductions -----------------------------------------------------------------------

    fn reduce_keepdim(&self, op: ReduceOp, dims: &[usize]) -> Result<Tensor> {
        let mut out_dims = self.dims().to_vec();
        for &d in dims {
            if self.dims()[d] == 0 && op != ReduceOp::Sum {
                return Err(Error::invalid(
                    op.name(),
                    format!("cannot reduce the empty dim {d} of {:?}", self.shape()),
                ));
            }
            out_dims[d] = 1;
        }
        if dims.is_empty() {
            return Ok(self.clone());
        }
        let s = {
            let st = self.storage();
            self.device()
                .backend()
                .reduce(op, st.as_ref(), self.layout(), dims)?
        };
        let rec = match op {
            ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min if self.dtype().is_float() => {
                record(&[self], || Op::Reduce(self.clone(), op, dims.to_vec()))
            }
            _ => None,
        };
        Ok(Tensor::from_storage(s, out_dims, self.device(), rec))
    }

    fn drop_dims(t: Tensor, dims: &[usize]) -> Result<Tensor> {
        let kept: Vec<usize> = t
            .dims()
            .iter()
            .enumerate()
            .filter(|(i, _)| !dims.contains(i))
            .map(|(_, &d)| d)
            .collect();
        t.reshape(kept)
    }

    pub fn sum_keepdim(&self, dims: impl Dims) -> Result<Tensor> {
        let d = dims.resolve_all(self.shape(), "sum")?;
        self.reduce_keepdim(ReduceOp::Sum, &d)
    }
    pub fn sum(&self, dims: impl Dims) -> Result<Tensor> {
        let d = dims.resolve_all(self.shape(), "sum")?;
        Tensor::drop_dims(self.reduce_keepdim(ReduceOp::Sum, &d)?, &d)
    }
    /// Sum of all elements (a rank-0 tensor).
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(crate::AllDims)
    }
    pub fn max_keepdim(&self, dims: impl Dims) -> Result<Tensor> {
        let d = dims.resolve_all(self.shape(), "max")?;
        self.reduce_keepdim(ReduceOp::Max, &d)
    }
    pub fn max(&self, dims: impl Dims) -> Result<Tensor> {
        let d = dims.resolve_all(self.shape(), "max")?;
        Tensor::drop_dims(self.reduce_keepdim(ReduceOp::Max, &d)?, &d)
    }
    pub fn min_keepdim(&self, dims: impl Dims) -> Result<Tensor> {
        let d = dims.resolve_all(self.shape(), "min")?;
        self.reduce_keepdim(ReduceOp::Min, &d)
    }
    pub fn min(&self, dims: impl Dims) -> Result<Tensor> {
        let d = dims.resolve_all(self.shape(), "min")?;
        Tensor::drop_dims(self.reduce_keepdim(ReduceOp::Min, &d)?, &d)
    }
    pub fn argmax_keepdim(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "argmax")?;
        self.reduce_keepdim(ReduceOp::ArgMax, &[d])
    }
    /// Index (i64) of the first maximum along `dim`.
    pub fn argmax(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "argmax")?;
        Tensor::drop_dims(self.reduce_keepdim(ReduceOp::ArgMax, &[d])?, &[d])
    }
    pub fn argmin_keepdim(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "argmin")?;
        self.reduce_keepdim(ReduceOp::ArgMin, &[d])
    }
    pub fn argmin(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "argmin")?;
        Tensor::drop_dims(self.reduce_keepdim(ReduceOp::ArgMin, &[d])?, &[d])
    }

    pub fn mean_keepdim(&self, dims: impl Dims) -> Result<Tensor> {
        check_float("mean", self)?;
        let d = dims.resolve_all(self.shape(), "mean")?;
        let n: usize = d.iter().map(|&i| self.dims()[i]).product();
        self.reduce_keepdim(ReduceOp::Sum, &d)?
            .affine(1.0 / n as f64, 0.0)
    }
    pub fn mean(&self, dims: impl Dims) -> Result<Tensor> {
        let d = dims.resolve_all(self.shape(), "mean")?;
        Tensor::drop_dims(self.mean_keepdim(d.as_slice())?, &d)
    }
    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean(crate::AllDims)
    }

    /// Variance with `correction` (1 = unbiased, like torch's default; 0 = population).
    pub fn var_keepdim(&self, dims: impl Dims, correction: usize) -> Result<Tensor> {
        check_float("var", self)?;
        let d = dims.resolve_all(self.shape(), "var")?;
        let n: usize = d.iter().map(|&i| self.dims()[i]).product();
        if n <= correction {
            return Err(Error::invalid(
                "var",
                format!("{n} elements per reduction is too few for correction {correction}"),
            ));
        }
        let mean = self.mean_keepdim(d.as_slice())?;
        let dev = self.sub(&mean)?;
        dev.sqr()?
            .reduce_keepdim(ReduceOp::Sum, &d)?
            .affine(1.0 / (n - correction) as f64, 0.0)
    }
    pub fn var(&self, dims: impl Dims, correction: usize) -> Result<Tensor> {
        let d = dims.resolve_all(self.shape(), "var")?;
        Tensor::drop_dims(self.var_keepdim(d.as_slice(), correction)?, &d)
    }
    pub fn std_keepdim(&self, dims: impl Dims, correction: usize) -> Result<Tensor> {
        self.var_keepdim(dims, correction)?.sqrt()
    }
    pub fn std(&self, dims: impl Dims, correction: usize) -> Result<Tensor> {
        self.var(dims, correction)?.sqrt()
    }

    /// log Σ exp, computed stably (the max is subtracted; it carries no gradient).
    pub fn logsumexp_keepdim(&self, dims: impl Dims) -> Result<Tensor> {
        check_float("logsumexp", self)?;
        let d = dims.resolve_all(self.shape(), "logsumexp")?;
        let m = self.detach().reduce_keepdim(ReduceOp::Max, &d)?;
        // An all −inf row would give NaN from (−inf) − (−inf); use 0 as its shift instead.
        let finite = m.abs()?.lt_scalar(f64::INFINITY)?;
        let m = finite.where_cond(&m, &m.zeros_like()?)?;
        let s = self
            .sub(&m)?
            .exp()?
            .reduce_keepdim(ReduceOp::Sum, &d)?
            .log()?;
        s.add(&m)
    }
    pub fn logsumexp(&self, dims: impl Dims) -> Result<Tensor> {
        let d = dims.resolve_all(self.shape(), "logsumexp")?;
        Tensor::drop_dims(self.logsumexp_keepdim(d.as_slice())?, &d)
    }

    /// Inclusive cumulative sum along `dim`.
    pub fn cumsum(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "cumsum")?;
        let s = {
            let st = self.storage();
            self.device()
                .backend()
                .cumsum(st.as_ref(), self.layout(), d)?
        };
        let rec = if self.dtype().is_float() {
            record(&[self], || Op::Cumsum(self.clone(), d))
        } else {
            None
        };
        Ok(Tensor::from_storage(
            s,
            self.shape().clone(),
            self.device(),
            rec,
        ))
    }

    // ---- matmul -----------------------------------------------------------------------------

    /// Matrix product with PyTorch semantics: 1-D operands are promoted, batch dims broadcast.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        check_same_device("matmul", self, rhs)?;
        check_same_dtype("matmul", self, rhs)?;
        check_float("matmul", self)?;
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
            });
        }
        // Check the contracted dims on the shapes the caller passed (before vector promotion).
        let k_lhs = self.dims()[self.rank() - 1];
        let k_rhs = rhs.dims()[rhs.rank().saturating_sub(2)];
        if k_lhs != k_rhs {
            return Err(Error::invalid(
                "matmul",
                format!(
                    "cannot multiply {:?} by {:?}: the lhs has {k_lhs} columns but the rhs has {k_rhs} rows",
                    self.shape(),
                    rhs.shape()
                ),
            ));
        }
        if self.rank() == 1 || rhs.rank() == 1 {
            // Promote vectors to matrices, multiply, then drop the promoted dims (torch rules).
            let a = if self.rank() == 1 {
                self.unsqueeze(0)?
            } else {
                self.clone()
            };
            let b = if rhs.rank() == 1 {
                rhs.unsqueeze(1)?
            } else {
                rhs.clone()
            };
            let mut r = a.matmul(&b)?;
            if rhs.rank() == 1 {
                r = r.squeeze(-1)?;
            }
            if self.rank() == 1 {
                r = r.squeeze(if rhs.rank() == 1 { -1 } else { -2 })?;
            }
            return Ok(r);
        }
        let (m, k) = (self.dims()[self.rank() - 2], self.dims()[self.rank() - 1]);
        let (k2, n) = (rhs.dims()[rhs.rank() - 2], rhs.dims()[rhs.rank() - 1]);
        if k != k2 {
            return Err(Error::invalid(
                "matmul",
                format!(
                    "cannot multiply {:?} by {:?}: the lhs has {k} columns but the rhs has {k2} rows",
                    self.shape(),
                    rhs.shape()
                ),
            ));
        }
        let ba = Shape::from(self.dims()[..self.rank() - 2].to_vec());
        let bb = Shape::from(rhs.dims()[..rhs.rank() - 2].to_vec());
        let batch = ba.broadcast_with(&bb, "matmul").map_err(|_| {
            Error::invalid(
                "matmul",
                format!(
                    "batch dims of {:?} and {:?} do not broadcast",
                    self.shape(),
                    rhs.shape()
                ),
            )
        })?;
        let mut da = batch.dims().to_vec();
        da.extend([m, k]);
        let mut db = batch.dims().to_vec();
        db.extend([k, n]);
        let a = self.broadcast_as(da)?;
        let b = rhs.broadcast_as(db)?;
        let mut dout = batch.dims().to_vec();
        dout.extend([m, n]);
        let s = {
            let (sa, sb) = (a.storage(), b.storage());
            self.device()
                .backend()
                .matmul(sa.as_ref(), a.layout(), sb.as_ref(), b.layout())?
        };
        let rec = record(&[&a, &b], || Op::Matmul(a.clone(), b.clone()));
        Ok(Tensor::from_storage(s, dout, self.device(), rec))
    }

    // ---- indexing -----------------------------------------------------------------------------

    /// Entries `ids` (1-D) along `dim`.
    pub fn index_select(&self, ids: &Tensor, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "index_select")?;
        check_index_dtype("index_select", ids)?;
        check_same_device("index_select", self, ids)?;
        if ids.rank() != 1 {
            return Err(Error::UnexpectedShape {
                op: "index_select",
                expected: "1-D indices".into(),
                got: ids.shape().clone(),
            });
        }
        let mut dims = self.dims().to_vec();
        dims[d] = ids.elem_count();
        let s = {
            let (ss, si) = (self.storage(), ids.storage());
            self.device().backend().index_select(
                ss.as_ref(),
                self.layout(),
                si.as_ref(),
                ids.layout(),
                d,
            )?
        };
        let rec = record(&[self], || Op::IndexSelect(self.clone(), ids.detach(), d));
        Ok(Tensor::from_storage(s, dims, self.device(), rec))
    }

    /// Rows of an embedding table `self: [V, D]` for integer `ids` of any shape → `[*ids, D]`.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::UnexpectedShape {
                op: "embedding",
                expected: "a [vocab, dim] table".into(),
                got: self.shape().clone(),
            });
        }
        let mut dims = ids.dims().to_vec();
        dims.push(self.dims()[1]);
        self.index_select(&ids.flatten_all()?, 0)?.reshape(dims)
    }

    /// `out[i][j] = self[ids[i][j]][j]` along `dim` (like `torch.gather`).
    pub fn gather(&self, ids: &Tensor, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "gather")?;
        check_index_dtype("gather", ids)?;
        check_same_device("gather", self, ids)?;
        let ok = ids.rank() == self.rank()
            && ids
                .dims()
                .iter()
                .zip(self.dims())
                .enumerate()
                .all(|(i, (a, b))| i == d || a <= b);
        if !ok {
            return Err(Error::ShapeMismatch {
                op: "gather",
                lhs: self.shape().clone(),
                rhs: ids.shape().clone(),
            });
        }
        let s = {
            let (ss, si) = (self.storage(), ids.storage());
            self.device().backend().gather(
                ss.as_ref(),
                self.layout(),
                si.as_ref(),
                ids.layout(),
                d,
            )?
        };
        let rec = record(&[self], || Op::Gather(self.clone(), ids.detach(), d));
        Ok(Tensor::from_storage(
            s,
            ids.shape().clone(),
            self.device(),
            rec,
        ))
    }

    /// `self` plus `src` scattered to positions `ids` along `dim` (like `Tensor.scatter_add`).
    pub fn scatter_add(&self, ids: &Tensor, src: &Tensor, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "scatter_add")?;
        check_index_dtype("scatter_add", ids)?;
        check_same_device("scatter_add", self, ids)?;
        check_same_device("scatter_add", self, src)?;
        check_same_dtype("scatter_add", self, src)?;
        let ok = ids.shape() == src.shape()
            && ids.rank() == self.rank()
            && ids
                .dims()
                .iter()
                .zip(self.dims())
                .enumerate()
                .all(|(i, (a, b))| i == d || a <= b);
        if !ok {
            return Err(Error::invalid(
                "scatter_add",
                format!(
                    "dst {:?}, ids {:?}, src {:?} along dim {d}: ids and src must have the same shape, the rank of dst, and sizes no larger than dst's off dim {d}",
                    self.shape(),
                    ids.shape(),
                    src.shape()
                ),
            ));
        }
        let s = {
            let (sd, si, ss) = (self.storage(), ids.storage(), src.storage());
            self.device().backend().scatter_add(
                sd.as_ref(),
                self.layout(),
                si.as_ref(),
                ids.layout(),
                ss.as_ref(),
                src.layout(),
                d,
            )?
        };
        let rec = record(&[self, src], || {
            Op::ScatterAdd(self.clone(), ids.detach(), src.clone(), d)
        });
        Ok(Tensor::from_storage(
            s,
            self.shape().clone(),
            self.device(),
            rec,
        ))
    }

    /// `self` with `src`'s slices along `dim` added at positions `ids` (1-D), like `index_add`.
    pub fn index_add(&self, ids: &Tensor, src: &Tensor, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "index_add")?;
        check_index_dtype("index_add", ids)?;
        check_same_device("index_add", self, ids)?;
        check_same_device("index_add", self, src)?;
        check_same_dtype("index_add", self, src)?;
        let ok = ids.rank() == 1
            && src.rank() == self.rank()
            && src.dims()[d] == ids.elem_count()
            && src
                .dims()
                .iter()
                .zip(self.dims())
                .enumerate()
                .all(|(i, (a, b))| i == d || a == b);
        if !ok {
            return Err(Error::invalid(
                "index_add",
                format!(
                    "dst {:?}, ids {:?}, src {:?} along dim {d}: need 1-D ids with src.dims[{d}] = ids.len() and src matching dst elsewhere",
                    self.shape(),
                    ids.shape(),
                    src.shape()
                ),
            ));
        }
        let s = {
            let (sd, si, ss) = (self.storage(), ids.storage(), src.storage());
            self.device().backend().index_add(
                sd.as_ref(),
                self.layout(),
                si.as_ref(),
                ids.layout(),
                ss.as_ref(),
                src.layout(),
                d,
            )?
        };
        let rec = record(&[self, src], || {
            Op::IndexAdd(self.clone(), ids.detach(), src.clone(), d)
        });
        Ok(Tensor::from_storage(
            s,
            self.shape().clone(),
            self.device(),
            rec,
        ))
    }
}

// ---- operator overloading: `&a + &b`, `&a * 2.0` (panics only where std's traits force it) --

macro_rules! bin_trait {
    ($trait:ident, $method:ident, $op:ident, $scalar:expr) => {
        impl std::ops::$trait<&Tensor> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                self.binary(rhs, BinaryOp::$op)
            }
        }
        impl std::ops::$trait<Tensor> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: Tensor) -> Result<Tensor> {
                self.binary(&rhs, BinaryOp::$op)
            }
        }
        impl std::ops::$trait<&Tensor> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                self.binary(rhs, BinaryOp::$op)
            }
        }
        impl std::ops::$trait<f64> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: f64) -> Result<Tensor> {
                let f: fn(&Tensor, f64) -> Result<Tensor> = $scalar;
                f(self, rhs)
            }
        }
        impl std::ops::$trait<f64> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: f64) -> Result<Tensor> {
                let f: fn(&Tensor, f64) -> Result<Tensor> = $scalar;
                f(&self, rhs)
            }
        }
    };
}

bin_trait!(Add, add, Add, |t, v| t.affine(1.0, v));
bin_trait!(Sub, sub, Sub, |t, v| t.affine(1.0, -v));
bin_trait!(Mul, mul, Mul, |t, v| t.affine(v, 0.0));
bin_trait!(Div, div, Div, |t, v| t.affine(1.0 / v, 0.0));

impl std::ops::Neg for &Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
}
