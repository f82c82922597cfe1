//! Fused ops: softmax, log-softmax, layer/RMS norm, SwiGLU, cross-entropy, rotary
//! embeddings, convolution and optimizer updates (`kernels/fused.cu`).
//!
//! Semantics are those of `tensor_core::composite` (and of the CPU backend's fused kernels):
//! f32 and f64 compute natively, f16/bf16 in f32 with one rounding when stored. Inputs are
//! read in place through [`Strided`] views; outputs are new contiguous storages. Anything the
//! kernels do not cover (integer dtypes, mismatched dtypes or shapes, which core rejects
//! before calling us) goes to the composite, which reports the proper error. Convolution stays
//! on the composite (im2col through the CUDA unfold, then cuBLAS).

use cudarc::driver::{DeviceRepr, LaunchConfig};
use tensor_core::{
    composite, optim, ConvParams, CrossEntropyParams, DType, Error, OptimRule, Result, Tensor,
};

use crate::kernels::{cfg_1d, check_u32, ModuleSrc, Strided};
use crate::{launch, with_storage, CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "fused",
    src: include_str!("../kernels/fused.cu"),
};

/// The dtypes with kernels here.
fn is_float(dt: DType) -> bool {
    matches!(dt, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// The compute dtype of a float dtype (f32 for the 16-bit floats).
fn compute_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// The device address of a tensor's storage (element 0, not the view's offset) and its view.
/// The storage lives as long as the tensor; all work runs on the device's one stream, so a
/// kernel queued now reads it before anything queued later can reuse it.
fn view(t: &Tensor) -> Result<(u64, Strided)> {
    with_storage(t, |s, l| Ok((s.ptr(), Strided::new(l)?)))
}

/// The device address of a tensor's first element in row-major order, through a contiguous
/// copy when the tensor is a strided view (the copy is returned to be kept until the launch is
/// queued; the stream orders its reuse after the kernel).
fn contiguous(dev: &CudaDevice, t: &Tensor) -> Result<(u64, Option<CudaStorage>)> {
    with_storage(t, |s, l| {
        if l.is_contiguous() {
            Ok((s.ptr_at(l.offset()), None))
        } else {
            let c = crate::copy::copy_strided(dev, s, l)?;
            Ok((c.ptr(), Some(c)))
        }
    })
}

/// [`contiguous`] of an optional tensor, or a null pointer.
fn opt_contiguous(dev: &CudaDevice, t: Option<&Tensor>) -> Result<(u64, Option<CudaStorage>)> {
    match t {
        Some(t) => contiguous(dev, t),
        None => Ok((0, None)),
    }
}

fn cfg(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.max(1), 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Rows of at most this many elements get one warp each (32 elements a lane in registers).
const WARP_ROW_MAX: usize = 1024;
/// Threads per block of warp-per-row kernels (8 rows per block).
const WARP_ROWS_BLOCK: u32 = 256;
/// Elements a thread keeps in registers in the block-per-row kernels (`_b`).
const BLOCK_ROW_NPL: usize = 16;

/// Launch shape of a row kernel over `rows` rows of `d` elements: the kernel-name infix
/// (`w`: a warp per row, `b`: a block per row kept in registers, `s`: a block per row
/// streamed from memory) and the config.
fn row_cfg(dev: &CudaDevice, rows: u32, d: usize) -> (&'static str, LaunchConfig) {
    let cap = dev.max_blocks().saturating_mul(8).max(1);
    if d <= WARP_ROW_MAX {
        let per = WARP_ROWS_BLOCK / 32;
        ("w", cfg(rows.div_ceil(per).min(cap), WARP_ROWS_BLOCK))
    } else if d <= BLOCK_ROW_NPL * 1024 {
        let block = d
            .div_ceil(BLOCK_ROW_NPL)
            .next_power_of_two()
            .clamp(64, 1024) as u32;
        ("b", cfg(rows.min(cap), block))
    } else {
        ("s", cfg(rows.min(cap), 1024))
    }
}

// ---- row ops --------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum RowOp {
    Softmax,
    LogSoftmax,
    LayerNorm,
    RmsNorm,
}

impl RowOp {
    fn name(self) -> &'static str {
        match self {
            RowOp::Softmax => "softmax",
            RowOp::LogSoftmax => "log_softmax",
            RowOp::LayerNorm => "layer_norm",
            RowOp::RmsNorm => "rms_norm",
        }
    }
}

/// Whether an optional `[d]` norm parameter fits the kernels.
fn param_ok(p: Option<&Tensor>, dt: DType, d: usize) -> bool {
    p.is_none_or(|p| p.dtype() == dt && p.dims() == [d])
}

/// A row op over the last dim of `x`, or `None` when the kernels do not cover the case.
fn rows(
    dev: &CudaDevice,
    x: &Tensor,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
    eps: f64,
    op: RowOp,
) -> Result<Option<Tensor>> {
    let dt = x.dtype();
    if !is_float(dt) || x.rank() == 0 {
        return Ok(None);
    }
    let d = x.dims()[x.rank() - 1];
    if !param_ok(w, dt, d) || !param_ok(b, dt, d) {
        return Ok(None);
    }
    let n = x.elem_count();
    let out = dev.alloc(n, dt)?;
    if n > 0 {
        let rows = check_u32(n / d)?;
        let d32 = check_u32(d)?;
        let (xp, _xc) = contiguous(dev, x)?;
        let (wp, _wc) = opt_contiguous(dev, w)?;
        let (bp, _bc) = opt_contiguous(dev, b)?;
        let flags = u32::from(w.is_some()) | (u32::from(b.is_some()) << 1);
        let yp = out.ptr();
        let (shape, c) = row_cfg(dev, rows, d);
        let name = format!("fused_{}_{shape}_{}", op.name(), dt.as_str());
        launch!(dev, MODULE, &name, c, rows, d32, xp, wp, bp, flags, eps, yp)?;
    }
    Ok(Some(dev.tensor(out, x.shape().clone(), x)?))
}

pub(crate) fn softmax_last_dim(dev: &CudaDevice, x: &Tensor) -> Result<Tensor> {
    match rows(dev, x, None, None, 0.0, RowOp::Softmax)? {
        Some(y) => Ok(y),
        None => composite::softmax_last_dim(x),
    }
}

pub(crate) fn log_softmax_last_dim(dev: &CudaDevice, x: &Tensor) -> Result<Tensor> {
    match rows(dev, x, None, None, 0.0, RowOp::LogSoftmax)? {
        Some(y) => Ok(y),
        None => composite::log_softmax_last_dim(x),
    }
}

pub(crate) fn layer_norm(
    dev: &CudaDevice,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    match rows(dev, x, weight, bias, eps, RowOp::LayerNorm)? {
        Some(y) => Ok(y),
        None => composite::layer_norm(x, weight, bias, eps),
    }
}

pub(crate) fn rms_norm(
    dev: &CudaDevice,
    x: &Tensor,
    weight: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    match rows(dev, x, weight, None, eps, RowOp::RmsNorm)? {
        Some(y) => Ok(y),
        None => composite::rms_norm(x, weight, eps),
    }
}

// ---- RMS norm backward ------------------------------------------------------------------------

/// Rows per chunk of the weight-gradient column sums: at most 256 chunks, each of at least 64
/// rows.
fn gw_chunk(rows: u32) -> u32 {
    rows.div_ceil(256).max(64)
}

pub(crate) fn rms_norm_backward(
    dev: &CudaDevice,
    x: &Tensor,
    weight: Option<&Tensor>,
    grad: &Tensor,
    eps: f64,
) -> Result<(Tensor, Option<Tensor>)> {
    let dt = x.dtype();
    let ok = is_float(dt)
        && x.rank() >= 1
        && grad.shape() == x.shape()
        && grad.dtype() == dt
        && param_ok(weight, dt, x.dims()[x.rank().max(1) - 1]);
    if !ok {
        return composite::rms_norm_backward(x, weight, grad, eps);
    }
    let d = x.dims()[x.rank() - 1];
    let n = x.elem_count();
    let gx = dev.alloc(n, dt)?;
    let mut gw = None;
    if n == 0 {
        if weight.is_some() {
            gw = Some(dev.zeros(d, dt)?);
        }
    } else {
        let rows = check_u32(n / d)?;
        let d32 = check_u32(d)?;
        let (xp, _xc) = contiguous(dev, x)?;
        let (gp, _gc) = contiguous(dev, grad)?;
        let (wp, _wc) = opt_contiguous(dev, weight)?;
        let flags = u32::from(weight.is_some());
        let rsave = if weight.is_some() {
            Some(dev.alloc(n / d, compute_dtype(dt))?)
        } else {
            None
        };
        let rp = rsave.as_ref().map_or(0, |s| s.ptr());
        let gxp = gx.ptr();
        let (shape, c) = row_cfg(dev, rows, d);
        let name = format!("fused_rms_bwd_{shape}_{}", dt.as_str());
        launch!(dev, MODULE, &name, c, rows, d32, xp, gp, wp, flags, eps, gxp, rp)?;
        if rsave.is_some() {
            let chunk = gw_chunk(rows);
            let chunks = rows.div_ceil(chunk);
            let part = dev.alloc(chunks as usize * d, compute_dtype(dt))?;
            let pp = part.ptr();
            let c = LaunchConfig {
                grid_dim: (d32.div_ceil(32), chunks, 1),
                block_dim: (32, 8, 1),
                shared_mem_bytes: 0,
            };
            let name = format!("fused_rms_gw_part_{}", dt.as_str());
            launch!(dev, MODULE, &name, c, rows, d32, xp, gp, rp, chunk, pp)?;
            let out = dev.alloc(d, dt)?;
            let op = out.ptr();
            let name = format!("fused_rms_gw_sum_{}", dt.as_str());
            let c = cfg_1d(d32, dev.max_blocks());
            launch!(dev, MODULE, &name, c, d32, chunks, pp, op)?;
            gw = Some(out);
        }
    }
    let gx = dev.tensor(gx, x.shape().clone(), x)?;
    let gw = match (gw, weight) {
        (Some(s), Some(w)) => Some(dev.tensor(s, w.shape().clone(), x)?),
        _ => None,
    };
    Ok((gx, gw))
}

// ---- layer norm backward ------------------------------------------------------------------------

pub(crate) fn layer_norm_backward(
    dev: &CudaDevice,
    x: &Tensor,
    weight: Option<&Tensor>,
    has_bias: bool,
    grad: &Tensor,
    eps: f64,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let dt = x.dtype();
    let ok = is_float(dt)
        && x.rank() >= 1
        && grad.shape() == x.shape()
        && grad.dtype() == dt
        && param_ok(weight, dt, x.dims()[x.rank().max(1) - 1]);
    if !ok {
        return composite::layer_norm_backward(x, weight, has_bias, grad, eps);
    }
    let d = x.dims()[x.rank() - 1];
    let n = x.elem_count();
    let gx = dev.alloc(n, dt)?;
    let params = weight.is_some() || has_bias;
    let (mut gw, mut gb) = (None, None);
    if n == 0 {
        if weight.is_some() {
            gw = Some(dev.zeros(d, dt)?);
        }
        if has_bias {
            gb = Some(dev.zeros(d, dt)?);
        }
    } else {
        let rows = check_u32(n / d)?;
        let d32 = check_u32(d)?;
        let (xp, _xc) = contiguous(dev, x)?;
        let (gp, _gc) = contiguous(dev, grad)?;
        let (wp, _wc) = opt_contiguous(dev, weight)?;
        let flags = u32::from(weight.is_some());
        // Per row: mean and rstd, for the parameter gradients.
        let save = if params {
            Some(dev.alloc(2 * (n / d), compute_dtype(dt))?)
        } else {
            None
        };
        let sp = save.as_ref().map_or(0, |s| s.ptr());
        let gxp = gx.ptr();
        let (shape, c) = row_cfg(dev, rows, d);
        let name = format!("fused_ln_bwd_{shape}_{}", dt.as_str());
        launch!(dev, MODULE, &name, c, rows, d32, xp, gp, wp, flags, eps, gxp, sp)?;
        if params {
            let chunk = gw_chunk(rows);
            let chunks = rows.div_ceil(chunk);
            let part = dev.alloc(2 * chunks as usize * d, compute_dtype(dt))?;
            let pp = part.ptr();
            let c = LaunchConfig {
                grid_dim: (d32.div_ceil(32), chunks, 1),
                block_dim: (32, 8, 1),
                shared_mem_bytes: 0,
            };
            let name = format!("fused_ln_wb_part_{}", dt.as_str());
            launch!(dev, MODULE, &name, c, rows, d32, xp, gp, sp, chunk, pp)?;
            let w_out = weight.map(|_| dev.alloc(d, dt)).transpose()?;
            let b_out = if has_bias {
                Some(dev.alloc(d, dt)?)
            } else {
                None
            };
            let wo = w_out.as_ref().map_or(0, |s| s.ptr());
            let bo = b_out.as_ref().map_or(0, |s| s.ptr());
            let name = format!("fused_ln_wb_sum_{}", dt.as_str());
            let c = cfg_1d(d32, dev.max_blocks());
            launch!(dev, MODULE, &name, c, d32, chunks, pp, wo, bo)?;
            gw = w_out;
            gb = b_out;
        }
    }
    let param_shape = tensor_core::Shape::from(vec![d]);
    let wrap = |s: Option<CudaStorage>| -> Result<Option<Tensor>> {
        s.map(|s| dev.tensor(s, param_shape.clone(), x)).transpose()
    };
    let gx = dev.tensor(gx, x.shape().clone(), x)?;
    Ok((gx, wrap(gw)?, wrap(gb)?))
}

// ---- SwiGLU -----------------------------------------------------------------------------------

pub(crate) fn silu_mul(dev: &CudaDevice, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let dt = gate.dtype();
    if !is_float(dt) || up.dtype() != dt || up.shape() != gate.shape() {
        return composite::silu_mul(gate, up);
    }
    let n = gate.elem_count();
    let out = dev.alloc(n, dt)?;
    if n > 0 {
        let n32 = check_u32(n)?;
        let (ap, as_) = view(gate)?;
        let (bp, bs) = view(up)?;
        let op = out.ptr();
        let name = format!("fused_silu_mul_{}", dt.as_str());
        launch!(
            dev,
            MODULE,
            &name,
            cfg_1d(n32, dev.max_blocks()),
            n32,
            ap,
            as_,
            bp,
            bs,
            op
        )?;
    }
    dev.tensor(out, gate.shape().clone(), gate)
}

pub(crate) fn silu_mul_backward(
    dev: &CudaDevice,
    gate: &Tensor,
    up: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let dt = gate.dtype();
    let ok = is_float(dt)
        && up.dtype() == dt
        && grad.dtype() == dt
        && up.shape() == gate.shape()
        && grad.shape() == gate.shape();
    if !ok {
        return composite::silu_mul_backward(gate, up, grad);
    }
    let n = gate.elem_count();
    let ga = dev.alloc(n, dt)?;
    let gb = dev.alloc(n, dt)?;
    if n > 0 {
        let n32 = check_u32(n)?;
        let (ap, as_) = view(gate)?;
        let (bp, bs) = view(up)?;
        let (gp, gs) = view(grad)?;
        let (gap, gbp) = (ga.ptr(), gb.ptr());
        let name = format!("fused_silu_mul_bwd_{}", dt.as_str());
        launch!(
            dev,
            MODULE,
            &name,
            cfg_1d(n32, dev.max_blocks()),
            n32,
            ap,
            as_,
            bp,
            bs,
            gp,
            gs,
            gap,
            gbp
        )?;
    }
    Ok((
        dev.tensor(ga, gate.shape().clone(), gate)?,
        dev.tensor(gb, gate.shape().clone(), gate)?,
    ))
}

// ---- softmax cross-entropy --------------------------------------------------------------------

/// Whether the kernels cover these operands (the backend contract's shapes and dtypes).
fn ce_fast(logits: &Tensor, targets: &Tensor, grad: Option<&Tensor>) -> bool {
    is_float(logits.dtype())
        && logits.rank() == 2
        && targets.dims() == [logits.dims()[0]]
        && targets.dtype() == DType::I64
        && grad.is_none_or(|g| g.dims() == [logits.dims()[0]] && g.dtype() == logits.dtype())
}

/// Threads per block for rows of `c` classes: a power of two in 32..=512, about 8 elements a
/// thread.
fn ce_block(c: usize) -> u32 {
    (c.div_ceil(8).next_power_of_two()).clamp(32, 512) as u32
}

/// After the device flagged a bad target: the composite's error, naming the first bad row
/// (read on the host; this path is taken only on error).
fn ce_target_error(targets: &Tensor, c: usize, p: &CrossEntropyParams, flagged: Error) -> Error {
    let Ok(t) = targets.to_vec::<i64>() else {
        return flagged;
    };
    for (i, &v) in t.iter().enumerate() {
        if Some(v) != p.ignore_index && !(v >= 0 && (v as u64) < c as u64) {
            return Error::invalid(
                "cross_entropy",
                format!("target class {v} out of range for {c} classes (row {i})"),
            );
        }
    }
    flagged
}

fn ce_launch(
    dev: &CudaDevice,
    logits: &Tensor,
    targets: &Tensor,
    grad: Option<&Tensor>,
    p: &CrossEntropyParams,
) -> Result<Tensor> {
    let dt = logits.dtype();
    let (n, c) = (logits.dims()[0], logits.dims()[1]);
    let out_len = if grad.is_some() { n * c } else { n };
    let out = dev.alloc(out_len, dt)?;
    if n > 0 {
        let rows = check_u32(n)?;
        let c32 = check_u32(c)?;
        check_u32(n * c)?;
        let (xp, xs) = view(logits)?;
        let (tp, ts) = view(targets)?;
        let has_ignore = u32::from(p.ignore_index.is_some());
        let ignore = p.ignore_index.unwrap_or(0);
        let eps = p.label_smoothing;
        let op = out.ptr();
        let err = dev.err_ptr()?;
        let lc = cfg(rows.min(dev.max_blocks().saturating_mul(8)), ce_block(c));
        let checked = match grad {
            None => {
                let name = format!("fused_ce_fwd_{}", dt.as_str());
                launch!(
                    dev, MODULE, &name, lc, rows, c32, xp, xs, tp, ts, has_ignore, ignore, eps, op,
                    err
                )?;
                dev.check_err("cross_entropy")
            }
            Some(g) => {
                let (gp, gs) = view(g)?;
                let name = format!("fused_ce_bwd_{}", dt.as_str());
                launch!(
                    dev, MODULE, &name, lc, rows, c32, xp, xs, tp, ts, has_ignore, ignore, eps, gp,
                    gs, op, err
                )?;
                dev.check_err("cross_entropy_backward")
            }
        };
        if let Err(e) = checked {
            return Err(ce_target_error(targets, c, p, e));
        }
    }
    if grad.is_some() {
        dev.tensor(out, (n, c), logits)
    } else {
        dev.tensor(out, n, logits)
    }
}

pub(crate) fn cross_entropy(
    dev: &CudaDevice,
    logits: &Tensor,
    targets: &Tensor,
    p: &CrossEntropyParams,
) -> Result<Tensor> {
    if !ce_fast(logits, targets, None) {
        return composite::cross_entropy(logits, targets, p);
    }
    ce_launch(dev, logits, targets, None, p)
}

pub(crate) fn cross_entropy_backward(
    dev: &CudaDevice,
    logits: &Tensor,
    targets: &Tensor,
    grad: &Tensor,
    p: &CrossEntropyParams,
) -> Result<Tensor> {
    if !ce_fast(logits, targets, Some(grad)) {
        return composite::cross_entropy_backward(logits, targets, grad, p);
    }
    ce_launch(dev, logits, targets, Some(grad), p)
}

// ---- rotary embeddings ------------------------------------------------------------------------

pub(crate) fn rope(
    dev: &CudaDevice,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> Result<Tensor> {
    let dt = x.dtype();
    let ok = is_float(dt)
        && x.rank() == 4
        && x.dims()[3].is_multiple_of(2)
        && cos.dims() == [x.dims()[2], x.dims()[3] / 2]
        && sin.dims() == cos.dims()
        && cos.dtype() == dt
        && sin.dtype() == dt;
    if !ok {
        return composite::rope(x, cos, sin, interleaved);
    }
    let n = x.elem_count();
    let out = dev.alloc(n, dt)?;
    if n > 0 {
        let pairs = check_u32(n / 2)?;
        let h = check_u32(x.dims()[3] / 2)?;
        let l = check_u32(x.dims()[2])?;
        let (xp, xs) = view(x)?;
        let (cp, cs) = view(cos)?;
        let (sp, ss) = view(sin)?;
        let yp = out.ptr();
        let kind = if interleaved { "inter" } else { "half" };
        let name = format!("fused_rope_{kind}_{}", dt.as_str());
        launch!(
            dev,
            MODULE,
            &name,
            cfg_1d(pairs, dev.max_blocks()),
            pairs,
            h,
            l,
            xp,
            xs,
            cp,
            cs,
            sp,
            ss,
            yp
        )?;
    }
    dev.tensor(out, x.shape().clone(), x)
}

pub(crate) fn conv(_dev: &CudaDevice, x: &Tensor, w: &Tensor, p: &ConvParams) -> Result<Tensor> {
    composite::conv(x, w, p)
}

// ---- optimizer updates ------------------------------------------------------------------------

/// The kernels' `struct OptimArgs`: the rule's scalars in f64 (rounded to the compute type on
/// the device) and flags. Which field means what depends on the rule (see [`optim_args`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct OptimArgs {
    scale: f64,
    neg_lr: f64,
    b1: f64,
    w1: f64,
    b2: f64,
    w2: f64,
    eps: f64,
    wd: f64,
    decay: f64,
    bc2_sqrt: f64,
    momentum: f64,
    damp: f64,
    flags: u32,
    pad: u32,
}

// SAFETY: plain `repr(C)` data with the layout of the kernels' struct (12 doubles, 2 u32).
unsafe impl DeviceRepr for OptimArgs {}

const OPT_SCALE: u32 = 1;
const OPT_MAXIMIZE: u32 = 2;
const OPT_NESTEROV: u32 = 4;
const OPT_FIRST: u32 = 8;
const OPT_AMSGRAD: u32 = 16;
const OPT_CENTERED: u32 = 32;
const OPT_MOMENTUM: u32 = 64;
const OPT_DECAY: u32 = 128;

/// The kernel name suffix of a rule and its scalars, as the CPU backend prepares them.
fn optim_args(rule: &OptimRule, step: u64, grad_scale: f64) -> (&'static str, OptimArgs) {
    let mut a = OptimArgs {
        scale: grad_scale,
        ..Default::default()
    };
    if grad_scale != 1.0 {
        a.flags |= OPT_SCALE;
    }
    let flag = |on: bool, f: u32| if on { f } else { 0 };
    let kind = match *rule {
        OptimRule::Sgd {
            lr,
            momentum,
            dampening,
            nesterov,
            weight_decay,
            maximize,
        } => {
            a.neg_lr = -lr;
            a.momentum = momentum;
            a.damp = 1.0 - dampening;
            a.wd = weight_decay;
            a.flags |= flag(maximize, OPT_MAXIMIZE)
                | flag(momentum != 0.0, OPT_MOMENTUM)
                | flag(nesterov, OPT_NESTEROV)
                | flag(step == 1, OPT_FIRST);
            "sgd"
        }
        OptimRule::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
            amsgrad,
            maximize,
        } => {
            let s = step as f64;
            a.neg_lr = -(lr / (1.0 - beta1.powf(s)));
            a.bc2_sqrt = (1.0 - beta2.powf(s)).sqrt();
            a.w1 = 1.0 - beta1;
            a.b2 = beta2;
            a.w2 = 1.0 - beta2;
            a.eps = eps;
            a.wd = if decoupled { 0.0 } else { weight_decay };
            a.decay = 1.0 - lr * weight_decay;
            a.flags |= flag(maximize, OPT_MAXIMIZE)
                | flag(amsgrad, OPT_AMSGRAD)
                | flag(decoupled && weight_decay != 0.0, OPT_DECAY);
            "adam"
        }
        OptimRule::RmsProp {
            lr,
            alpha,
            eps,
            weight_decay,
            momentum,
            centered,
            maximize,
        } => {
            a.neg_lr = -lr;
            a.b2 = alpha;
            a.w2 = 1.0 - alpha;
            a.eps = eps;
            a.wd = weight_decay;
            a.momentum = momentum;
            a.flags |= flag(maximize, OPT_MAXIMIZE)
                | flag(momentum > 0.0, OPT_MOMENTUM)
                | flag(centered, OPT_CENTERED);
            "rmsprop"
        }
        OptimRule::Adagrad {
            lr,
            lr_decay,
            weight_decay,
            eps,
            maximize,
        } => {
            a.neg_lr = -(lr / (1.0 + (step - 1) as f64 * lr_decay));
            a.wd = weight_decay;
            a.eps = eps;
            a.flags |= flag(maximize, OPT_MAXIMIZE);
            "adagrad"
        }
        OptimRule::Lion {
            lr,
            beta1,
            beta2,
            weight_decay,
        } => {
            a.neg_lr = -lr;
            a.decay = 1.0 - lr * weight_decay;
            a.b1 = beta1;
            a.w1 = 1.0 - beta1;
            a.b2 = beta2;
            a.w2 = 1.0 - beta2;
            "lion"
        }
    };
    (kind, a)
}

/// The kernels' state slots `[s0, s1, s2]` as indices into the rule's state list (RMSprop's
/// `grad_avg` always goes to s2, its `momentum_buffer` to s1).
fn state_slots(rule: &OptimRule, len: usize) -> [Option<usize>; 3] {
    match *rule {
        OptimRule::RmsProp {
            momentum, centered, ..
        } => {
            let mom = momentum > 0.0;
            [
                Some(0),
                mom.then_some(1),
                centered.then_some(if mom { 2 } else { 1 }),
            ]
        }
        _ => [
            (len > 0).then_some(0),
            (len > 1).then_some(1),
            (len > 2).then_some(2),
        ],
    }
}

pub(crate) fn optim_update(
    dev: &CudaDevice,
    rule: &OptimRule,
    step: u64,
    grad_scale: f64,
    param: &Tensor,
    grad: &Tensor,
    state: &[Tensor],
) -> Result<()> {
    // Validation also guarantees distinct storages, so the locks below cannot deadlock.
    optim::validate(rule, step, grad_scale, param, grad, state)?;
    let n = param.elem_count();
    if n == 0 {
        return Ok(());
    }
    let fast =
        is_float(param.dtype()) && param.is_contiguous() && state.iter().all(|s| s.is_contiguous());
    if !fast {
        return optim::update_composite(rule, step, grad_scale, param, grad, state);
    }
    let dt = param.dtype();
    let n32 = check_u32(n)?;
    let (kind, args) = optim_args(rule, step, grad_scale);
    // The gradient is only read, through its view; parameter and state are written in place
    // (under their write locks) from their offsets on.
    let (gp, gs) = view(grad)?;
    let mut p_guard = param.storage_mut();
    let ps = crate::storage::cuda_mut(p_guard.as_mut())?;
    crate::check_layout(ps, param.layout(), "optim_update")?;
    let pp = ps.ptr_at(param.layout().offset());
    let mut guards: Vec<_> = state.iter().map(|t| t.storage_mut()).collect();
    let mut sptr = Vec::with_capacity(state.len());
    for (t, g) in state.iter().zip(guards.iter_mut()) {
        let s = crate::storage::cuda_mut(g.as_mut())?;
        crate::check_layout(s, t.layout(), "optim_update")?;
        sptr.push(s.ptr_at(t.layout().offset()));
    }
    let [s0, s1, s2] = state_slots(rule, state.len()).map(|k| k.map_or(0, |k| sptr[k]));
    let name = format!("fused_optim_{kind}_{}", dt.as_str());
    launch!(
        dev,
        MODULE,
        &name,
        cfg_1d(n32, dev.max_blocks()),
        n32,
        pp,
        gp,
        gs,
        s0,
        s1,
        s2,
        args
    )
}
