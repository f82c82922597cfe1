//! Neural-network ops: softmax, convolutions, pools, norms, dropout, rope and attention.
//! Each validates its arguments, then either runs the backend's fused kernel (untracked
//! inputs, or ops with their own backward rule) or the differentiable composition.

use crate::backprop::{grad_enabled, no_grad, record, Op};
use crate::ops::check_float;
use crate::{
    composite, AttentionParams, ConvParams, CrossEntropyParams, DType, Dim, Error, Result, Tensor,
    UnfoldParams,
};

fn any_tracked(ts: &[Option<&Tensor>]) -> bool {
    grad_enabled() && ts.iter().flatten().any(|t| t.tracked())
}

/// Re-wrap the untracked output of a fused kernel with the op that differentiates it.
fn with_op(out: Tensor, inputs: &[&Tensor], op: impl FnOnce() -> Op) -> Tensor {
    match record(inputs, op) {
        Some(op) => out.view_with(out.layout().clone(), Some(op)),
        None => out,
    }
}

fn check_param_vec(op: &'static str, name: &str, v: &[usize], nd: usize, min: usize) -> Result<()> {
    if v.len() != nd {
        return Err(Error::invalid(
            op,
            format!("{name} has {} entries, expected {nd}", v.len()),
        ));
    }
    if v.iter().any(|&x| x < min) {
        return Err(Error::invalid(op, format!("{name} {v:?} must be >= {min}")));
    }
    Ok(())
}

impl Tensor {
    /// Softmax along `dim`.
    pub fn softmax(&self, dim: impl Dim) -> Result<Tensor> {
        self.softmax_impl(dim, false)
    }

    /// Log-softmax along `dim`.
    pub fn log_softmax(&self, dim: impl Dim) -> Result<Tensor> {
        self.softmax_impl(dim, true)
    }

    fn softmax_impl(&self, dim: impl Dim, log: bool) -> Result<Tensor> {
        let name = if log { "log_softmax" } else { "softmax" };
        check_float(name, self)?;
        let d = dim.resolve(self.shape(), name)?;
        let last = self.rank() - 1;
        if d != last {
            return self
                .transpose(d, last)?
                .softmax_impl(last, log)?
                .transpose(d, last);
        }
        let out = {
            let _g = no_grad();
            let be = self.device().backend();
            if log {
                be.log_softmax_last_dim(self)?
            } else {
                be.softmax_last_dim(self)?
            }
        };
        Ok(with_op(out, &[self], || {
            if log {
                Op::LogSoftmax(self.clone())
            } else {
                Op::Softmax(self.clone())
            }
        }))
    }

    // ---- im2col -------------------------------------------------------------------------------

    fn check_unfold(&self, op: &'static str, p: &UnfoldParams) -> Result<usize> {
        let nd = p.kernel.len();
        if !(1..=3).contains(&nd) {
            return Err(Error::invalid(
                op,
                format!("1 to 3 spatial dims supported, got {nd}"),
            ));
        }
        check_param_vec(op, "kernel", &p.kernel, nd, 1)?;
        check_param_vec(op, "stride", &p.stride, nd, 1)?;
        check_param_vec(op, "dilation", &p.dilation, nd, 1)?;
        check_param_vec(op, "padding", &p.padding, nd, 0)?;
        Ok(nd)
    }

    /// Sliding patches `[N, C, *s] → [N, C·∏k, L]` (`torch.nn.functional.unfold`).
    pub fn unfold_patches(&self, p: &UnfoldParams) -> Result<Tensor> {
        let nd = self.check_unfold("unfold", p)?;
        if self.rank() != nd + 2 {
            return Err(Error::UnexpectedShape {
                op: "unfold",
                expected: format!("[N, C, {nd} spatial dims]"),
                got: self.shape().clone(),
            });
        }
        let out_sp = p.out_spatial(&self.dims()[2..]).ok_or_else(|| {
            Error::invalid(
                "unfold",
                format!(
                    "kernel {:?} (dilation {:?}) larger than padded input {:?}",
                    p.kernel,
                    p.dilation,
                    self.shape()
                ),
            )
        })?;
        let k: usize = p.kernel.iter().product();
        let dims = vec![self.dims()[0], self.dims()[1] * k, out_sp.iter().product()];
        let s = {
            let st = self.storage();
            self.device()
                .backend()
                .unfold(st.as_ref(), self.layout(), p)?
        };
        let rec = record(&[self], || Op::Unfold(self.clone(), p.clone()));
        Ok(Tensor::from_storage(s, dims, self.device(), rec))
    }

    /// The adjoint of `unfold_patches`: `[N, C·∏k, L] → [N, C, *out_spatial]` (`F.fold`).
    pub fn fold_patches(&self, p: &UnfoldParams, out_spatial: &[usize]) -> Result<Tensor> {
        let nd = self.check_unfold("fold", p)?;
        let k: usize = p.kernel.iter().product();
        let l = p
            .out_spatial(out_spatial)
            .map(|v| v.iter().product::<usize>());
        if self.rank() != 3
            || out_spatial.len() != nd
            || !self.dims()[1].is_multiple_of(k)
            || l != Some(self.dims()[2])
        {
            return Err(Error::UnexpectedShape {
                op: "fold",
                expected: format!(
                    "[N, C·{k}, {}] for output size {out_spatial:?}",
                    l.map_or("?".into(), |l| l.to_string())
                ),
                got: self.shape().clone(),
            });
        }
        let mut dims = vec![self.dims()[0], self.dims()[1] / k];
        dims.extend_from_slice(out_spatial);
        let s = {
            let st = self.storage();
            self.device()
                .backend()
                .fold(st.as_ref(), self.layout(), p, out_spatial)?
        };
        let rec = record(&[self], || Op::Fold(self.clone(), p.clone()));
        Ok(Tensor::from_storage(s, dims, self.device(), rec))
    }

    // ---- convolutions ---------------------------------------------------------------------------

    /// N-d convolution (`x: [N, Cin, *s]`, `w: [Cout, Cin/groups, *k]`, bias `[Cout]`).
    pub fn conv_nd(&self, w: &Tensor, bias: Option<&Tensor>, p: &ConvParams) -> Result<Tensor> {
        let op = "conv";
        check_float(op, self)?;
        crate::ops::check_same_device(op, self, w)?;
        if self.dtype() != w.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                lhs: self.dtype(),
                rhs: w.dtype(),
            });
        }
        let nd = w.rank().saturating_sub(2);
        if !(1..=3).contains(&nd) || self.rank() != nd + 2 {
            return Err(Error::ShapeMismatch {
                op,
                lhs: self.shape().clone(),
                rhs: w.shape().clone(),
            });
        }
        check_param_vec(op, "stride", &p.stride, nd, 1)?;
        check_param_vec(op, "dilation", &p.dilation, nd, 1)?;
        check_param_vec(op, "padding", &p.padding, nd, 0)?;
        let (cin, cout, g) = (self.dims()[1], w.dims()[0], p.groups);
        if g == 0 || cin % g != 0 || cout % g != 0 || w.dims()[1] * g != cin {
            return Err(Error::invalid(
                op,
                format!("input {:?} and weight {:?} do not agree with groups {g} (need Cin = w.dims[1]·groups, Cout % groups == 0)", self.shape(), w.shape()),
            ));
        }
        let up = UnfoldParams {
            kernel: w.dims()[2..].to_vec(),
            stride: p.stride.clone(),
            padding: p.padding.clone(),
            dilation: p.dilation.clone(),
            pad_value: 0.0,
        };
        if up.out_spatial(&self.dims()[2..]).is_none() {
            return Err(Error::invalid(
                op,
                format!(
                    "kernel {:?} (dilation {:?}) larger than padded input {:?}",
                    &w.dims()[2..],
                    p.dilation,
                    self.shape()
                ),
            ));
        }
        if let Some(b) = bias {
            if b.dims() != [cout] {
                return Err(Error::ShapeMismatch {
                    op: "conv bias",
                    lhs: w.shape().clone(),
                    rhs: b.shape().clone(),
                });
            }
        }
        let out = if any_tracked(&[Some(self), Some(w)]) {
            composite::conv(self, w, p)?
        } else {
            self.device().backend().conv(self, w, p)?
        };
        match bias {
            None => Ok(out),
            Some(b) => {
                let mut bd = vec![1; out.rank()];
                bd[1] = cout;
                out.add(&b.reshape(bd)?)
            }
        }
    }

    pub fn conv1d(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
        groups: usize,
    ) -> Result<Tensor> {
        self.conv_nd(
            w,
            bias,
            &ConvParams {
                stride: vec![stride],
                padding: vec![padding],
                dilation: vec![dilation],
                groups,
            },
        )
    }

    pub fn conv2d(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
        groups: usize,
    ) -> Result<Tensor> {
        self.conv_nd(
            w,
            bias,
            &ConvParams {
                stride: vec![stride; 2],
                padding: vec![padding; 2],
                dilation: vec![dilation; 2],
                groups,
            },
        )
    }

    pub fn conv3d(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
        groups: usize,
    ) -> Result<Tensor> {
        self.conv_nd(
            w,
            bias,
            &ConvParams {
                stride: vec![stride; 3],
                padding: vec![padding; 3],
                dilation: vec![dilation; 3],
                groups,
            },
        )
    }

    /// Transposed convolution (`x: [N, Cin, *s]`, `w: [Cin, Cout/groups, *k]`), the gradient
    /// of `conv_nd` with respect to its input; `output_padding` adds to one side of the output.
    pub fn conv_transpose_nd(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        p: &ConvParams,
        output_padding: &[usize],
    ) -> Result<Tensor> {
        let op = "conv_transpose";
        check_float(op, self)?;
        crate::ops::check_same_device(op, self, w)?;
        if self.dtype() != w.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                lhs: self.dtype(),
                rhs: w.dtype(),
            });
        }
        let nd = w.rank().saturating_sub(2);
        if !(1..=3).contains(&nd) || self.rank() != nd + 2 {
            return Err(Error::ShapeMismatch {
                op,
                lhs: self.shape().clone(),
                rhs: w.shape().clone(),
            });
        }
        check_param_vec(op, "stride", &p.stride, nd, 1)?;
        check_param_vec(op, "dilation", &p.dilation, nd, 1)?;
        check_param_vec(op, "padding", &p.padding, nd, 0)?;
        check_param_vec(op, "output_padding", output_padding, nd, 0)?;
        let (cin, g) = (self.dims()[1], p.groups);
        if g == 0 || w.dims()[0] != cin || cin % g != 0 {
            return Err(Error::invalid(op, format!("input {:?} and weight {:?} do not agree with groups {g} (need w.dims[0] = Cin)", self.shape(), w.shape())));
        }
        for i in 0..nd {
            if output_padding[i] >= p.stride[i].max(p.dilation[i]) {
                return Err(Error::invalid(
                    op,
                    format!(
                        "output_padding {output_padding:?} must be smaller than stride or dilation"
                    ),
                ));
            }
            let (k, s) = (w.dims()[2 + i], self.dims()[2 + i]);
            if k == 0 || s == 0 {
                return Err(Error::invalid(
                    op,
                    format!("empty kernel {:?} or input {:?}", w.shape(), self.shape()),
                ));
            }
            // Taps land in [0, full); output_padding only appends cells no tap reaches.
            let full = (s - 1) * p.stride[i] + p.dilation[i] * (k - 1) + 1;
            if full <= 2 * p.padding[i] {
                return Err(Error::invalid(
                    op,
                    format!(
                        "padding {:?} leaves no output for input {:?}",
                        p.padding,
                        self.shape()
                    ),
                ));
            }
        }
        let cout = w.dims()[1] * g;
        if let Some(b) = bias {
            if b.dims() != [cout] {
                return Err(Error::ShapeMismatch {
                    op: "conv_transpose bias",
                    lhs: w.shape().clone(),
                    rhs: b.shape().clone(),
                });
            }
        }
        let out = composite::conv_transpose(self, w, p, output_padding)?;
        match bias {
            None => Ok(out),
            Some(b) => {
                let mut bd = vec![1; out.rank()];
                bd[1] = cout;
                out.add(&b.reshape(bd)?)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn conv_transpose1d(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        output_padding: usize,
        dilation: usize,
        groups: usize,
    ) -> Result<Tensor> {
        self.conv_transpose_nd(
            w,
            bias,
            &ConvParams {
                stride: vec![stride],
                padding: vec![padding],
                dilation: vec![dilation],
                groups,
            },
            &[output_padding],
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn conv_transpose2d(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        output_padding: usize,
        dilation: usize,
        groups: usize,
    ) -> Result<Tensor> {
        self.conv_transpose_nd(
            w,
            bias,
            &ConvParams {
                stride: vec![stride; 2],
                padding: vec![padding; 2],
                dilation: vec![dilation; 2],
                groups,
            },
            &[output_padding; 2],
        )
    }

    // ---- pooling --------------------------------------------------------------------------------

    fn pool(
        &self,
        nd: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        max: bool,
    ) -> Result<Tensor> {
        let op = if max { "max_pool" } else { "avg_pool" };
        check_float(op, self)?;
        if self.rank() != nd + 2 && self.rank() != nd + 1 {
            return Err(Error::UnexpectedShape {
                op,
                expected: format!("[N, C, {nd} spatial dims] or [C, {nd} spatial dims]"),
                got: self.shape().clone(),
            });
        }
        if self.rank() == nd + 1 {
            return self
                .unsqueeze(0)?
                .pool(nd, kernel, stride, padding, max)?
                .squeeze(0);
        }
        if kernel == 0 || stride == 0 {
            return Err(Error::invalid(
                op,
                format!("kernel {kernel} and stride {stride} must be > 0"),
            ));
        }
        if 2 * padding > kernel {
            return Err(Error::invalid(
                op,
                format!("padding {padding} must be at most half the kernel size {kernel}"),
            ));
        }
        let p = UnfoldParams {
            kernel: vec![kernel; nd],
            stride: vec![stride; nd],
            padding: vec![padding; nd],
            dilation: vec![1; nd],
            pad_value: if max { f64::NEG_INFINITY } else { 0.0 },
        };
        let out_sp = p.out_spatial(&self.dims()[2..]).ok_or_else(|| {
            Error::invalid(
                op,
                format!(
                    "kernel {kernel} larger than padded input {:?}",
                    self.shape()
                ),
            )
        })?;
        let (n, c) = (self.dims()[0], self.dims()[1]);
        let mut flat = vec![n * c, 1];
        flat.extend_from_slice(&self.dims()[2..]);
        let cols = self.reshape(flat)?.unfold_patches(&p)?; // [N·C, K, L]
        let red = if max { cols.max(1)? } else { cols.mean(1)? };
        let mut out = vec![n, c];
        out.extend(out_sp);
        red.reshape(out)
    }

    pub fn max_pool1d(&self, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        self.pool(1, kernel, stride, padding, true)
    }
    pub fn max_pool2d(&self, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        self.pool(2, kernel, stride, padding, true)
    }
    /// Average pooling; padded zeros count in the average (`count_include_pad=True`).
    pub fn avg_pool1d(&self, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        self.pool(1, kernel, stride, padding, false)
    }
    pub fn avg_pool2d(&self, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        self.pool(2, kernel, stride, padding, false)
    }

    fn adaptive_pool(&self, out_size: &[usize], max: bool) -> Result<Tensor> {
        let op = if max {
            "adaptive_max_pool"
        } else {
            "adaptive_avg_pool"
        };
        check_float(op, self)?;
        let nd = out_size.len();
        if self.rank() < nd + 1 || out_size.contains(&0) {
            return Err(Error::UnexpectedShape { op, expected: format!("a tensor with {nd} trailing spatial dims and output sizes > 0 (got {out_size:?})"), got: self.shape().clone() });
        }
        let first = self.rank() - nd;
        let mut t = self.clone();
        // Pool one spatial dim at a time: windows [floor(i·s/o), ceil((i+1)·s/o)).
        for (j, &o) in out_size.iter().enumerate() {
            let d = first + j;
            let s = t.dims()[d];
            if s == 0 {
                return Err(Error::invalid(
                    op,
                    format!("empty spatial dim in {:?}", self.shape()),
                ));
            }
            if s.is_multiple_of(o) {
                let k = s / o;
                let mut dims = t.dims()[..d].to_vec();
                dims.extend([o, k]);
                dims.extend_from_slice(&t.dims()[d + 1..]);
                let r = t.reshape(dims)?;
                t = if max { r.max(d + 1)? } else { r.mean(d + 1)? };
                continue;
            }
            let mut parts = Vec::with_capacity(o);
            for i in 0..o {
                let start = i * s / o;
                let end = ((i + 1) * s).div_ceil(o);
                let w = t.narrow(d, start, end - start)?;
                parts.push(if max {
                    w.max_keepdim(d)?
                } else {
                    w.mean_keepdim(d)?
                });
            }
            t = Tensor::cat(&parts.iter().collect::<Vec<_>>(), d)?;
        }
        Ok(t)
    }

    pub fn adaptive_avg_pool1d(&self, out: usize) -> Result<Tensor> {
        self.adaptive_pool(&[out], false)
    }
    pub fn adaptive_avg_pool2d(&self, out: (usize, usize)) -> Result<Tensor> {
        self.adaptive_pool(&[out.0, out.1], false)
    }
    pub fn adaptive_max_pool1d(&self, out: usize) -> Result<Tensor> {
        self.adaptive_pool(&[out], true)
    }
    pub fn adaptive_max_pool2d(&self, out: (usize, usize)) -> Result<Tensor> {
        self.adaptive_pool(&[out.0, out.1], true)
    }

    // ---- normalisation ------------------------------------------------------------------------------

    fn check_norm_param(&self, op: &'static str, p: Option<&Tensor>, size: usize) -> Result<()> {
        if let Some(p) = p {
            crate::ops::check_same_device(op, self, p)?;
            if p.dims() != [size] {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: self.shape().clone(),
                    rhs: p.shape().clone(),
                });
            }
            if p.dtype() != self.dtype() {
                return Err(Error::DTypeMismatch {
                    op,
                    lhs: self.dtype(),
                    rhs: p.dtype(),
                });
            }
        }
        Ok(())
    }

    /// Layer norm over the last dim (biased variance), with optional affine `[D]` params.
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        check_float("layer_norm", self)?;
        let d = self.dim(-1).map_err(|_| Error::UnexpectedShape {
            op: "layer_norm",
            expected: "rank >= 1".into(),
            got: self.shape().clone(),
        })?;
        self.check_norm_param("layer_norm", weight, d)?;
        self.check_norm_param("layer_norm", bias, d)?;
        let out = {
            let _g = no_grad();
            self.device()
                .backend()
                .layer_norm(self, weight, bias, eps)?
        };
        let mut inputs = vec![self];
        inputs.extend(weight);
        inputs.extend(bias);
        Ok(with_op(out, &inputs, || {
            Op::LayerNorm(self.clone(), weight.cloned(), bias.cloned(), eps)
        }))
    }

    /// RMS norm over the last dim: `x / sqrt(mean(x²) + eps) · weight`.
    pub fn rms_norm(&self, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        check_float("rms_norm", self)?;
        let d = self.dim(-1).map_err(|_| Error::UnexpectedShape {
            op: "rms_norm",
            expected: "rank >= 1".into(),
            got: self.shape().clone(),
        })?;
        self.check_norm_param("rms_norm", weight, d)?;
        let out = {
            let _g = no_grad();
            self.device().backend().rms_norm(self, weight, eps)?
        };
        let mut inputs = vec![self];
        inputs.extend(weight);
        Ok(with_op(out, &inputs, || {
            Op::RmsNorm(self.clone(), weight.cloned(), eps)
        }))
    }

    /// `self · wᵀ` for a quantized weight `w: [N, K]` (a linear layer's weight as GGUF stores
    /// it) and an f32 `self: [..., K]`; the result is `[..., N]`. The weight holds no
    /// gradient; a tracked `self` gets one through the dequantized weight.
    pub fn qmatmul(&self, w: &crate::quant::QTensor) -> Result<Tensor> {
        if self.dtype() != DType::F32 {
            return Err(Error::msg(format!(
                "qmatmul: the input must be f32, got {:?}",
                self.dtype()
            )));
        }
        let k = self.dim(-1).ok();
        if w.dims().len() != 2 || k != Some(w.row_len()) {
            return Err(Error::msg(format!(
                "qmatmul: input {:?} does not fit weight {w:?} (expected [..., {}] and a 2-d \
                 weight)",
                self.dims(),
                w.row_len()
            )));
        }
        if self.tracked() {
            return crate::composite::qmatmul(self, w);
        }
        self.device().backend().qmatmul(self, w)
    }

    /// `silu(self) · up` — the SwiGLU hidden activation `silu(x·W_gate) · (x·W_up)` — in one
    /// fused kernel forward and backward. Both operands have one shape and float dtype.
    pub fn silu_mul(&self, up: &Tensor) -> Result<Tensor> {
        check_float("silu_mul", self)?;
        crate::ops::check_same_device("silu_mul", self, up)?;
        if self.shape() != up.shape() {
            return Err(Error::ShapeMismatch {
                op: "silu_mul",
                lhs: self.shape().clone(),
                rhs: up.shape().clone(),
            });
        }
        if self.dtype() != up.dtype() {
            return Err(Error::DTypeMismatch {
                op: "silu_mul",
                lhs: self.dtype(),
                rhs: up.dtype(),
            });
        }
        let out = {
            let _g = no_grad();
            self.device().backend().silu_mul(self, up)?
        };
        Ok(with_op(out, &[self, up], || {
            Op::SiluMul(self.clone(), up.clone())
        }))
    }

    /// Softmax cross-entropy of logits `self: [N, C]` against class indices `targets: [N]`
    /// (an integer dtype), one loss per row (`[N]`, 0 for rows whose target is the ignore
    /// index), with optional label smoothing — `torch.nn.functional.cross_entropy` with
    /// `reduction="none"`. Fused forward and backward: the `[N, C]` log-probabilities are never
    /// stored. A target outside `0..C` (other than the ignore index) is an error.
    pub fn softmax_cross_entropy(
        &self,
        targets: &Tensor,
        p: &CrossEntropyParams,
    ) -> Result<Tensor> {
        const OP: &str = "softmax_cross_entropy";
        check_float(OP, self)?;
        crate::ops::check_same_device(OP, self, targets)?;
        if self.rank() != 2 || targets.dims() != [self.dims()[0]] {
            return Err(Error::UnexpectedShape {
                op: OP,
                expected: format!(
                    "logits [N, C] and targets [N]; got logits {:?}",
                    self.shape()
                ),
                got: targets.shape().clone(),
            });
        }
        if targets.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype: targets.dtype(),
                expected: "integer class indices",
            });
        }
        if !(0.0..=1.0).contains(&p.label_smoothing) {
            return Err(Error::invalid(
                OP,
                format!(
                    "label_smoothing must be in [0, 1], got {}",
                    p.label_smoothing
                ),
            ));
        }
        let targets = if targets.dtype() == DType::I64 {
            targets.detach()
        } else {
            targets.to_dtype(DType::I64)?.detach()
        };
        let out = {
            let _g = no_grad();
            self.device().backend().cross_entropy(self, &targets, p)?
        };
        Ok(with_op(out, &[self], || {
            Op::CrossEntropy(self.clone(), targets.clone(), *p)
        }))
    }

    /// Group norm of `[N, C, *]` with `groups` dividing C; affine params `[C]`.
    pub fn group_norm(
        &self,
        groups: usize,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        check_float("group_norm", self)?;
        if self.rank() < 2 || groups == 0 || !self.dims()[1].is_multiple_of(groups) {
            return Err(Error::invalid(
                "group_norm",
                format!(
                    "need [N, C, *] with C divisible by groups {groups}, got {:?}",
                    self.shape()
                ),
            ));
        }
        let c = self.dims()[1];
        self.check_norm_param("group_norm", weight, c)?;
        self.check_norm_param("group_norm", bias, c)?;
        let n = self.dims()[0];
        let x = self.reshape((n, groups, self.elem_count() / (n * groups).max(1)))?;
        let mean = x.mean_keepdim(2)?;
        let var = x.var_keepdim(2, 0)?;
        let y = x
            .sub(&mean)?
            .div(&var.affine(1.0, eps)?.sqrt()?)?
            .reshape(self.shape().clone())?;
        let mut pd = vec![1; self.rank()];
        pd[1] = c;
        let y = match weight {
            Some(w) => y.mul(&w.reshape(pd.clone())?)?,
            None => y,
        };
        match bias {
            Some(b) => y.add(&b.reshape(pd)?),
            None => Ok(y),
        }
    }

    /// Batch norm of `[N, C, *]`. In training, normalises with the batch statistics and
    /// updates `running_mean`/`running_var` in place (unbiased variance, like PyTorch); in
    /// evaluation, uses the running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &self,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        training: bool,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor> {
        check_float("batch_norm", self)?;
        if self.rank() < 2 {
            return Err(Error::UnexpectedShape {
                op: "batch_norm",
                expected: "[N, C, *]".into(),
                got: self.shape().clone(),
            });
        }
        let c = self.dims()[1];
        for p in [running_mean, running_var, weight, bias] {
            self.check_norm_param("batch_norm", p, c)?;
        }
        let mut pd = vec![1; self.rank()];
        pd[1] = c;
        let red: Vec<usize> = (0..self.rank()).filter(|&d| d != 1).collect();
        let (mean, var) = if training {
            let n: usize = red.iter().map(|&d| self.dims()[d]).product();
            if n <= 1 {
                return Err(Error::invalid(
                    "batch_norm",
                    format!(
                        "training needs more than one value per channel, got input {:?}",
                        self.shape()
                    ),
                ));
            }
            let mean = self.mean_keepdim(red.as_slice())?;
            let var = self.var_keepdim(red.as_slice(), 0)?;
            if let (Some(rm), Some(rv)) = (running_mean, running_var) {
                let _g = no_grad();
                let bm = mean.detach().reshape(c)?;
                let bv = var
                    .detach()
                    .reshape(c)?
                    .affine(n as f64 / (n - 1) as f64, 0.0)?;
                rm.copy_from(&(&rm.affine(1.0 - momentum, 0.0)? + &bm.affine(momentum, 0.0)?)?)?;
                rv.copy_from(&(&rv.affine(1.0 - momentum, 0.0)? + &bv.affine(momentum, 0.0)?)?)?;
            }
            (mean, var)
        } else {
            match (running_mean, running_var) {
                (Some(rm), Some(rv)) => (rm.reshape(pd.clone())?, rv.reshape(pd.clone())?),
                _ => {
                    return Err(Error::invalid(
                        "batch_norm",
                        "evaluation mode needs running_mean and running_var",
                    ))
                }
            }
        };
        let y = self.sub(&mean)?.div(&var.affine(1.0, eps)?.sqrt()?)?;
        let y = match weight {
            Some(w) => y.mul(&w.reshape(pd.clone())?)?,
            None => y,
        };
        match bias {
            Some(b) => y.add(&b.reshape(pd)?),
            None => Ok(y),
        }
    }

    /// Inverted dropout: zero each entry with probability `p` and scale the rest by 1/(1−p).
    /// The identity when `train` is false.
    pub fn dropout(&self, p: f64, train: bool) -> Result<Tensor> {
        check_float("dropout", self)?;
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid(
                "dropout",
                format!("probability {p} outside [0, 1]"),
            ));
        }
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        if p == 1.0 {
            return self.mul_scalar(0.0);
        }
        let keep = self.bernoulli_mask(1.0 - p)?;
        self.mul(&keep.affine(1.0 / (1.0 - p), 0.0)?)
    }

    /// A tensor of this shape and dtype with ones drawn with probability `p`, else zeros.
    pub fn bernoulli_mask(&self, p: f64) -> Result<Tensor> {
        Tensor::bernoulli(p, self.shape().clone(), self.dtype(), self.device())
    }

    /// Samples of Bernoulli(`p`) as 0/1 values of `dtype`.
    pub fn bernoulli(
        p: f64,
        shape: impl Into<crate::Shape>,
        dtype: DType,
        device: &crate::Device,
    ) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid(
                "bernoulli",
                format!("probability {p} outside [0, 1]"),
            ));
        }
        let u = Tensor::rand(0.0, 1.0, shape, DType::F32, device)?;
        u.lt_scalar(p)?.to_dtype(dtype)
    }

    /// Samples of Bernoulli(self) elementwise (self holds probabilities), like `torch.bernoulli`.
    pub fn bernoulli_from_probs(&self) -> Result<Tensor> {
        check_float("bernoulli", self)?;
        let u = Tensor::rand(0.0, 1.0, self.shape().clone(), self.dtype(), self.device())?;
        u.lt(&self.detach())?.to_dtype(self.dtype())
    }

    // ---- rotary embeddings and attention -----------------------------------------------------------

    /// Rotary position embedding of `x: [B, H, L, D]` with `cos, sin: [L, D/2]`.
    /// `interleaved` rotates pairs (2i, 2i+1) (GPT-J/GGUF style), otherwise the two halves
    /// (rotate-half, Hugging Face Llama style).
    pub fn rope(&self, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
        check_float("rope", self)?;
        if self.rank() != 4 || !self.dims()[3].is_multiple_of(2) {
            return Err(Error::UnexpectedShape {
                op: "rope",
                expected: "[B, H, L, D] with even D".into(),
                got: self.shape().clone(),
            });
        }
        let (l, d) = (self.dims()[2], self.dims()[3]);
        for t in [cos, sin] {
            crate::ops::check_same_device("rope", self, t)?;
            if t.dims() != [l, d / 2] {
                return Err(Error::UnexpectedShape {
                    op: "rope",
                    expected: format!("cos/sin of shape [{l}, {}]", d / 2),
                    got: t.shape().clone(),
                });
            }
            if t.dtype() != self.dtype() {
                return Err(Error::DTypeMismatch {
                    op: "rope",
                    lhs: self.dtype(),
                    rhs: t.dtype(),
                });
            }
        }
        if any_tracked(&[Some(cos), Some(sin)]) {
            // Learned angles: differentiate through the composition.
            return composite::rope(self, cos, sin, interleaved);
        }
        let out = {
            let _g = no_grad();
            self.device().backend().rope(self, cos, sin, interleaved)?
        };
        Ok(with_op(out, &[self], || Op::Rope {
            x: self.clone(),
            cos: cos.detach(),
            sin: sin.detach(),
            interleaved,
        }))
    }

    /// Scaled-dot-product attention (see [`AttentionParams`]): `self` is q `[B, Hq, Lq, D]`,
    /// `k: [B, Hkv, Lk, D]`, `v: [B, Hkv, Lk, Dv]`. Runs the backend's attention kernel (on the
    /// CPU an online-softmax kernel that never materialises the score matrix) and records
    /// its backward.
    pub fn scaled_dot_product_attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        p: &AttentionParams,
    ) -> Result<Tensor> {
        let op = "attention";
        let q = self;
        for t in [k, v] {
            crate::ops::check_same_device(op, q, t)?;
        }
        crate::checks::attention(q, k, v, p)?;
        if any_tracked(&[p.bias.as_ref(), p.alibi_slopes.as_ref()]) {
            return Err(Error::NoBackward { op, why: "gradients with respect to the attention bias or ALiBi slopes are not supported; detach them".into() });
        }
        let (out, lse) = {
            let _g = no_grad();
            q.device().backend().attention(q, k, v, p)?
        };
        Ok(with_op(out, &[q, k, v], || Op::Attention {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            lse,
            params: p.clone(),
        }))
    }
}
