//! Classification losses: cross entropy (class indices or probabilities), negative log
//! likelihood, binary cross entropy (on probabilities or logits) and the sigmoid focal loss.

use tensor_core::{DType, Error, Result, Tensor};

use super::{
    check_broadcast_weight, check_device, check_dtype, check_finite, check_float, check_pair,
    class_shape, keep_where, neg_log_sigmoid, Reduction,
};

/// Options of [`cross_entropy`] (torch's keyword arguments and defaults).
#[derive(Clone, Debug)]
pub struct CrossEntropyOptions {
    /// A rescaling weight per class, shape `[C]`.
    pub weight: Option<Tensor>,
    /// Targets equal to this class index contribute nothing (torch's default: -100).
    pub ignore_index: Option<i64>,
    /// In `[0, 1]`: the target is mixed with the uniform distribution by this amount.
    pub label_smoothing: f64,
    pub reduction: Reduction,
}

impl Default for CrossEntropyOptions {
    fn default() -> Self {
        CrossEntropyOptions {
            weight: None,
            ignore_index: Some(-100),
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
        }
    }
}

/// Options of [`nll_loss`] (torch's keyword arguments and defaults).
#[derive(Clone, Debug)]
pub struct NllOptions {
    pub weight: Option<Tensor>,
    pub ignore_index: Option<i64>,
    pub reduction: Reduction,
}

impl Default for NllOptions {
    fn default() -> Self {
        NllOptions {
            weight: None,
            ignore_index: Some(-100),
            reduction: Reduction::Mean,
        }
    }
}

/// The input's class dim and class count: `(C)` unbatched, else `(N, C, d1, ...)`.
fn classes(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    check_float(op, x)?;
    let cdim = match x.rank() {
        0 => {
            return Err(Error::UnexpectedShape {
                op,
                expected: "an input of shape (C), (N, C) or (N, C, d1, ...)".into(),
                got: x.shape().clone(),
            })
        }
        1 => 0,
        _ => 1,
    };
    let c = x.dims()[cdim];
    if c == 0 {
        return Err(Error::invalid(
            op,
            format!("input {:?} has no classes", x.shape()),
        ));
    }
    Ok((cdim, c))
}

fn check_class_weight(op: &'static str, w: Option<&Tensor>, x: &Tensor, c: usize) -> Result<()> {
    if let Some(w) = w {
        check_device(op, x, w)?;
        check_dtype(op, x, w)?;
        if w.dims() != [c] {
            return Err(Error::UnexpectedShape {
                op,
                expected: format!("a class weight of shape [{c}]"),
                got: w.shape().clone(),
            });
        }
    }
    Ok(())
}

/// Cross entropy between `logits` and `target`, like `torch.nn.functional.cross_entropy`.
///
/// The class dim is dim 1 of `(N, C, d1, ...)` logits, or dim 0 of unbatched `(C)` logits.
/// With class indices (an integer `target` shaped like the logits without the class dim),
/// each element's loss is `−w[t]·log_softmax(x)[t]`; with label smoothing ε it becomes
/// `(1−ε)` times that plus `ε/C` times `−Σ_c w[c]·log_softmax(x)[c]`. Targets equal to
/// `ignore_index` contribute 0, and the mean divides by the summed weight `w[t]` of the
/// non-ignored targets (nan when every target is ignored, like torch). With class
/// probabilities (a float `target` shaped like the logits), the loss is
/// `−Σ_c w[c]·p'[c]·log_softmax(x)[c]` with `p' = (1−ε)·p + ε/C`, and the mean divides by the
/// number of elements `N·d1·...`.
///
/// Class indices are read back to the host once, to check their range.
pub fn cross_entropy(
    logits: &Tensor,
    target: &Tensor,
    opts: &CrossEntropyOptions,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    let (cdim, c) = classes(OP, logits)?;
    let eps = opts.label_smoothing;
    if !(0.0..=1.0).contains(&eps) {
        return Err(Error::invalid(
            OP,
            format!("label_smoothing must be in [0, 1], got {eps}"),
        ));
    }
    let weight = opts.weight.as_ref();
    check_class_weight(OP, weight, logits, c)?;
    check_device(OP, logits, target)?;
    if !target.dtype().is_float() {
        if logits.rank() == 2 && weight.is_none() && target.dims() == [logits.dims()[0]] {
            return fused_index_cross_entropy(logits, target, opts);
        }
        let logp = logits.log_softmax(cdim)?;
        return nll(
            OP,
            &logp,
            target,
            weight,
            opts.ignore_index,
            eps,
            opts.reduction,
        );
    }
    check_dtype(OP, logits, target)?;
    if target.shape() != logits.shape() {
        return Err(Error::UnexpectedShape {
            op: OP,
            expected: format!(
                "class indices of the logits' shape without dim {cdim}, or class probabilities of the logits' shape {:?}",
                logits.shape()
            ),
            got: target.shape().clone(),
        });
    }
    if let Some(i) = opts.ignore_index.filter(|&i| i >= 0) {
        return Err(Error::invalid(
            OP,
            format!("ignore_index {i} is not supported for class-probability targets"),
        ));
    }
    let logp = logits.log_softmax(cdim)?;
    let p = if eps > 0.0 {
        target.affine(1.0 - eps, eps / c as f64)?
    } else {
        target.clone()
    };
    let mut prod = logp.mul(&p)?;
    if let Some(w) = weight {
        prod = prod.mul(&w.reshape(class_shape(logits.rank(), cdim, c))?)?;
    }
    opts.reduction.apply(prod.sum(cdim)?.neg()?)
}

/// `(N, C)` logits, class-index targets, no class weight: the fused softmax cross-entropy,
/// which never stores the `(N, C)` log-probabilities (forward or backward).
fn fused_index_cross_entropy(
    logits: &Tensor,
    target: &Tensor,
    opts: &CrossEntropyOptions,
) -> Result<Tensor> {
    if !matches!(target.dtype(), DType::I64 | DType::U32 | DType::U8) {
        return Err(Error::UnsupportedDType {
            op: "cross_entropy",
            dtype: target.dtype(),
            expected: "integer class indices (i64, u32 or u8)",
        });
    }
    let p = tensor_core::CrossEntropyParams {
        ignore_index: opts.ignore_index,
        label_smoothing: opts.label_smoothing,
    };
    let loss = logits.softmax_cross_entropy(target, &p)?;
    match (opts.reduction, opts.ignore_index) {
        (Reduction::Mean, Some(ig)) => {
            // Mean over the counted rows (nan when every row is ignored, like torch).
            // (Compared as i64: a negative ignore index must not match class 0 of u8 targets.)
            let counted = target
                .to_dtype(DType::I64)?
                .ne_scalar(ig as f64)?
                .to_dtype(loss.dtype())?
                .sum_all()?;
            loss.sum_all()?.div(&counted)
        }
        (r, _) => r.apply(loss),
    }
}

/// Negative log likelihood, like `torch.nn.functional.nll_loss`: each element's loss is
/// `−w[t]·log_probs[t]` (class dim 1 of `(N, C, d1, ...)`, or dim 0 of `(C)`), 0 for targets
/// equal to `ignore_index`; the mean divides by the summed weight of the non-ignored targets.
pub fn nll_loss(log_probs: &Tensor, target: &Tensor, opts: &NllOptions) -> Result<Tensor> {
    const OP: &str = "nll_loss";
    let (_, c) = classes(OP, log_probs)?;
    check_class_weight(OP, opts.weight.as_ref(), log_probs, c)?;
    check_device(OP, log_probs, target)?;
    nll(
        OP,
        log_probs,
        target,
        opts.weight.as_ref(),
        opts.ignore_index,
        0.0,
        opts.reduction,
    )
}

/// Class-index targets as safe gather indices (ignored entries → class 0) and, when some
/// target is ignored, the u8 mask of the counted ones. Reads the targets to the host.
fn class_targets(
    op: &'static str,
    target: &Tensor,
    c: usize,
    ignore: Option<i64>,
) -> Result<(Tensor, Option<Tensor>)> {
    let vals = target.to_f64_vec()?;
    let mut safe = Vec::with_capacity(vals.len());
    let mut keep = Vec::with_capacity(vals.len());
    for &v in &vals {
        let i = v as i64;
        if Some(i) == ignore {
            safe.push(0.0);
            keep.push(0.0);
        } else if i < 0 || i as usize >= c {
            return Err(Error::invalid(
                op,
                format!(
                    "target class {i} out of range for {c} classes{}",
                    ignore.map_or(String::new(), |g| format!(" (ignore_index {g})"))
                ),
            ));
        } else {
            safe.push(v);
            keep.push(1.0);
        }
    }
    let (shape, dev) = (target.shape().clone(), target.device());
    if keep.iter().all(|&k| k == 1.0) {
        return Ok((target.clone(), None));
    }
    Ok((
        Tensor::from_f64s(&safe, shape.clone(), DType::I64, dev)?,
        Some(Tensor::from_f64s(&keep, shape, DType::U8, dev)?),
    ))
}

/// The shared body of `nll_loss` and index-target `cross_entropy` (see their docs).
fn nll(
    op: &'static str,
    logp: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    ignore: Option<i64>,
    eps: f64,
    reduction: Reduction,
) -> Result<Tensor> {
    let (cdim, c) = classes(op, logp)?;
    if !matches!(target.dtype(), DType::I64 | DType::U32 | DType::U8) {
        return Err(Error::UnsupportedDType {
            op,
            dtype: target.dtype(),
            expected: "integer class indices (i64, u32 or u8)",
        });
    }
    let mut tdims = logp.dims().to_vec();
    tdims.remove(cdim);
    if target.dims() != tdims {
        return Err(Error::UnexpectedShape {
            op,
            expected: format!(
                "class indices of shape {tdims:?} for an input of shape {:?}",
                logp.shape()
            ),
            got: target.shape().clone(),
        });
    }
    let (safe, keep) = class_targets(op, target, c, ignore)?;
    let picked = logp.gather(&safe.unsqueeze(cdim)?, cdim)?.squeeze(cdim)?;
    let wt = match weight {
        Some(w) => Some(w.index_select(&safe.flatten_all()?, 0)?.reshape(tdims)?),
        None => None,
    };
    let mut loss = match &wt {
        Some(w) => picked.mul(w)?,
        None => picked,
    }
    .neg()?;
    if eps > 0.0 {
        let all = match weight {
            Some(w) => logp.mul(&w.reshape(class_shape(logp.rank(), cdim, c))?)?,
            None => logp.clone(),
        };
        let smooth = all.sum(cdim)?.affine(-eps / c as f64, 0.0)?;
        loss = loss.affine(1.0 - eps, 0.0)?.add(&smooth)?;
    }
    if let Some(k) = &keep {
        loss = keep_where(k, &loss)?;
    }
    if reduction != Reduction::Mean {
        return reduction.apply(loss);
    }
    let total_weight = match (&wt, &keep) {
        (Some(w), Some(k)) => keep_where(k, w)?.sum_all()?,
        (Some(w), None) => w.sum_all()?,
        (None, Some(k)) => k.to_dtype(loss.dtype())?.sum_all()?,
        (None, None) => return loss.mean_all(),
    };
    loss.sum_all()?.div(&total_weight)
}

/// Binary cross entropy on probabilities, like `torch.nn.functional.binary_cross_entropy`:
/// `−w·(t·log p + (1−t)·log(1−p))`, each log clamped to at least −100 as torch does (so
/// p = 0 or 1 gives a finite loss). `weight` broadcasts to the input. Probabilities outside
/// `[0, 1]` are an error (checked with one reduction read back to the host).
pub fn binary_cross_entropy(
    probs: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    reduction: Reduction,
) -> Result<Tensor> {
    const OP: &str = "binary_cross_entropy";
    check_pair(OP, probs, target)?;
    check_broadcast_weight(OP, weight, probs)?;
    if probs.elem_count() > 0 {
        // |p − ½| ≤ ½ ⇔ p ∈ [0, 1]; written so that a nan also fails.
        let dev = probs
            .detach()
            .affine(1.0, -0.5)?
            .abs()?
            .max(tensor_core::AllDims)?
            .to_f64()?;
        if dev.is_nan() || dev > 0.5 {
            return Err(Error::invalid(
                OP,
                "all elements of the input should be between 0 and 1",
            ));
        }
    }
    let log_p = clamped_log(probs)?;
    let log_1mp = clamped_log(&probs.affine(-1.0, 1.0)?)?;
    let ll = target
        .mul(&log_p)?
        .add(&target.affine(-1.0, 1.0)?.mul(&log_1mp)?)?;
    let loss = match weight {
        Some(w) => ll.mul(w)?,
        None => ll,
    };
    reduction.apply(loss.neg()?)
}

/// `max(log x, −100)` for x ≥ 0, as torch's BCE, with a finite gradient at x = 0 (the log
/// is never taken of 0, and the floor is a constant there).
fn clamped_log(x: &Tensor) -> Result<Tensor> {
    let pos = x.gt_scalar(0.0)?;
    let one = Tensor::ones((), x.dtype(), x.device())?;
    let floor = Tensor::full(-100.0, (), x.dtype(), x.device())?;
    let log = pos.where_cond(x, &one)?.log()?;
    pos.where_cond(&log, &floor)?.clamp(-100.0, f64::INFINITY)
}

/// Binary cross entropy on logits, like `torch.nn.functional.binary_cross_entropy_with_logits`:
/// `w·((1−t)·x + (1 + (pos_weight−1)·t)·softplus(−x))`, i.e. `−w·(pos_weight·t·log σ(x) +
/// (1−t)·log(1−σ(x)))` computed without overflow for any |x|. `weight` and `pos_weight`
/// (typically one per class, the last dim) broadcast to the input.
pub fn binary_cross_entropy_with_logits(
    logits: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    pos_weight: Option<&Tensor>,
    reduction: Reduction,
) -> Result<Tensor> {
    const OP: &str = "binary_cross_entropy_with_logits";
    check_pair(OP, logits, target)?;
    check_broadcast_weight(OP, weight, logits)?;
    check_broadcast_weight(OP, pos_weight, logits)?;
    let loss = bce_logits(logits, target, pos_weight)?;
    let loss = match weight {
        Some(w) => loss.mul(w)?,
        None => loss,
    };
    reduction.apply(loss)
}

fn bce_logits(x: &Tensor, t: &Tensor, pos_weight: Option<&Tensor>) -> Result<Tensor> {
    let sp = neg_log_sigmoid(x)?;
    let sp = match pos_weight {
        Some(pw) => sp.mul(&t.mul(&pw.affine(1.0, -1.0)?)?.affine(1.0, 1.0)?)?,
        None => sp,
    };
    t.affine(-1.0, 1.0)?.mul(x)?.add(&sp)
}

/// The focal loss of RetinaNet on logits, like `torchvision.ops.sigmoid_focal_loss`:
/// `α_t·(1 − p_t)^γ·BCE(x, t)` with `p = σ(x)`, `p_t = p·t + (1−p)·(1−t)` and
/// `α_t = α·t + (1−α)·(1−t)`; a negative `alpha` turns the α weighting off.
pub fn sigmoid_focal_loss(
    logits: &Tensor,
    targets: &Tensor,
    alpha: f64,
    gamma: f64,
    reduction: Reduction,
) -> Result<Tensor> {
    const OP: &str = "sigmoid_focal_loss";
    check_pair(OP, logits, targets)?;
    check_finite(OP, "alpha", alpha)?;
    if !(gamma.is_finite() && gamma >= 0.0) || alpha > 1.0 {
        return Err(Error::invalid(
            OP,
            format!(
                "need gamma >= 0 and alpha <= 1 (negative: off), got gamma {gamma}, alpha {alpha}"
            ),
        ));
    }
    let mut loss = bce_logits(logits, targets, None)?;
    if gamma != 0.0 {
        let p = logits.sigmoid()?;
        let t = targets;
        let p_t = p
            .mul(t)?
            .add(&p.affine(-1.0, 1.0)?.mul(&t.affine(-1.0, 1.0)?)?)?;
        loss = loss.mul(&p_t.affine(-1.0, 1.0)?.powf(gamma)?)?;
    }
    if alpha >= 0.0 {
        loss = loss.mul(&targets.affine(2.0 * alpha - 1.0, 1.0 - alpha)?)?;
    }
    reduction.apply(loss)
}
