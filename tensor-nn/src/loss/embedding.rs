//! Metric-learning losses on embeddings: InfoNCE (CLIP / SimCLR style), cosine embedding,
//! the classic contrastive loss of Hadsell et al., and the triplet margin loss.

use tensor_core::{DType, Error, Result, Tensor};

use super::{check_finite, check_float, check_pair, keep_where, Reduction};

/// Embeddings of shape `(D)` or `(N, D)`, the same for both.
fn check_embeddings(op: &'static str, x1: &Tensor, x2: &Tensor) -> Result<()> {
    check_pair(op, x1, x2)?;
    if !matches!(x1.rank(), 1 | 2) {
        return Err(Error::UnexpectedShape {
            op,
            expected: "embeddings of shape (D) or (N, D)".into(),
            got: x1.shape().clone(),
        });
    }
    Ok(())
}

/// A per-pair label: shape `(N)` for `(N, D)` embeddings, `()` for `(D)`.
fn check_labels(op: &'static str, x: &Tensor, y: &Tensor) -> Result<()> {
    let want = &x.dims()[..x.rank() - 1];
    if y.dims() != want {
        return Err(Error::UnexpectedShape {
            op,
            expected: format!("labels of shape {want:?} for embeddings {:?}", x.shape()),
            got: y.shape().clone(),
        });
    }
    super::check_device(op, x, y)
}

/// `‖x1 − x2 + eps‖_p` over the last dim, like `torch.nn.functional.pairwise_distance`
/// (same shapes, no broadcasting; `p` finite and > 0).
pub fn pairwise_distance(x1: &Tensor, x2: &Tensor, p: f64, eps: f64) -> Result<Tensor> {
    const OP: &str = "pairwise_distance";
    check_pair(OP, x1, x2)?;
    if x1.rank() == 0 {
        return Err(Error::UnexpectedShape {
            op: OP,
            expected: "rank >= 1".into(),
            got: x1.shape().clone(),
        });
    }
    if !(p > 0.0 && p.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("p must be finite and > 0, got {p}"),
        ));
    }
    check_finite(OP, "eps", eps)?;
    let d = x1.sub(x2)?.add_scalar(eps)?;
    if p == 2.0 {
        d.sqr()?.sum(-1)?.sqrt()
    } else if p == 1.0 {
        d.abs()?.sum(-1)
    } else {
        d.abs()?.powf(p)?.sum(-1)?.powf(1.0 / p)
    }
}

/// Cross entropy of each row of `logits` against the class on the diagonal.
fn diagonal_cross_entropy(logits: &Tensor, reduction: Reduction) -> Result<Tensor> {
    let n = logits.dims()[0];
    let ids = Tensor::arange(0.0, n as f64, 1.0, DType::I64, logits.device())?;
    let loss = logits
        .log_softmax(1)?
        .gather(&ids.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?;
    reduction.apply(loss)
}

fn info_nce_logits(
    op: &'static str,
    query: &Tensor,
    keys: &Tensor,
    temperature: f64,
    square: bool,
) -> Result<Tensor> {
    check_float(op, query)?;
    super::check_device(op, query, keys)?;
    super::check_dtype(op, query, keys)?;
    let ok = query.rank() == 2
        && keys.rank() == 2
        && query.dims()[1] == keys.dims()[1]
        && if square {
            keys.dims()[0] == query.dims()[0]
        } else {
            keys.dims()[0] >= query.dims()[0]
        };
    if !ok {
        return Err(Error::invalid(
            op,
            format!(
                "expected query (N, D) and keys ({}, D), got {:?} and {:?}",
                if square { "N" } else { "M >= N" },
                query.shape(),
                keys.shape()
            ),
        ));
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::invalid(
            op,
            format!("temperature must be finite and > 0, got {temperature}"),
        ));
    }
    query.matmul(&keys.t()?)?.affine(1.0 / temperature, 0.0)
}

/// InfoNCE (the CLIP / SimCLR contrastive loss): logits `q·kᵀ / temperature` between each
/// query `(N, D)` and every key `(M, D)`, `M ≥ N`; the positive of query i is key i and the
/// other keys are its negatives; the loss of query i is the cross entropy of its row against
/// class i. Normalise the embeddings first for the cosine-similarity form.
pub fn info_nce(
    query: &Tensor,
    keys: &Tensor,
    temperature: f64,
    reduction: Reduction,
) -> Result<Tensor> {
    let logits = info_nce_logits("info_nce", query, keys, temperature, false)?;
    diagonal_cross_entropy(&logits, reduction)
}

/// Symmetric InfoNCE (CLIP): the mean of [`info_nce`] from queries to keys and from keys to
/// queries, over N matching pairs (`query` and `keys` both `(N, D)`).
pub fn info_nce_symmetric(
    query: &Tensor,
    keys: &Tensor,
    temperature: f64,
    reduction: Reduction,
) -> Result<Tensor> {
    let logits = info_nce_logits("info_nce_symmetric", query, keys, temperature, true)?;
    let a = diagonal_cross_entropy(&logits, reduction)?;
    let b = diagonal_cross_entropy(&logits.t()?, reduction)?;
    a.add(&b)?.affine(0.5, 0.0)
}

/// Cosine embedding loss, like `torch.nn.functional.cosine_embedding_loss`: with
/// `cos = x1·x2 / sqrt((|x1|² + 1e-12)(|x2|² + 1e-12))` per pair, the loss is `1 − cos` for
/// y = 1 and `max(0, cos − margin)` for y = −1 (0 for other labels, as in torch). `y` holds
/// ±1 as i64 or floats, shape `(N)` for `(N, D)` inputs or `()` for `(D)`.
pub fn cosine_embedding_loss(
    x1: &Tensor,
    x2: &Tensor,
    y: &Tensor,
    margin: f64,
    reduction: Reduction,
) -> Result<Tensor> {
    const OP: &str = "cosine_embedding_loss";
    check_embeddings(OP, x1, x2)?;
    check_labels(OP, x1, y)?;
    check_finite(OP, "margin", margin)?;
    if matches!(y.dtype(), DType::U8 | DType::U32) {
        return Err(Error::UnsupportedDType {
            op: OP,
            dtype: y.dtype(),
            expected: "signed labels ±1 (i64 or a float dtype)",
        });
    }
    const EPS: f64 = 1e-12;
    let dot = x1.mul(x2)?.sum(-1)?;
    let m1 = x1.sqr()?.sum(-1)?.add_scalar(EPS)?;
    let m2 = x2.sqr()?.sum(-1)?.add_scalar(EPS)?;
    let cos = dot.div(&m1.mul(&m2)?.sqrt()?)?;
    let pos = keep_where(&y.eq_scalar(1.0)?, &cos.affine(-1.0, 1.0)?)?;
    let neg = cos.affine(1.0, -margin)?.clamp(0.0, f64::INFINITY)?;
    let neg = keep_where(&y.eq_scalar(-1.0)?, &neg)?;
    reduction.apply(pos.add(&neg)?)
}

/// The contrastive loss of Hadsell, Chopra & LeCun (2006), with `y` = 1 for a similar pair
/// and 0 for a dissimilar one: `y·d²/2 + (1−y)·max(0, margin − d)²/2` where
/// `d = pairwise_distance(x1, x2, 2, 1e-6)`. `y` is a float of the inputs' dtype, shape
/// `(N)` for `(N, D)` inputs or `()` for `(D)`.
pub fn contrastive_loss(
    x1: &Tensor,
    x2: &Tensor,
    y: &Tensor,
    margin: f64,
    reduction: Reduction,
) -> Result<Tensor> {
    const OP: &str = "contrastive_loss";
    check_embeddings(OP, x1, x2)?;
    check_labels(OP, x1, y)?;
    super::check_dtype(OP, x1, y)?;
    check_finite(OP, "margin", margin)?;
    let d = pairwise_distance(x1, x2, 2.0, 1e-6)?;
    let near = y.mul(&d.sqr()?)?;
    let hinge = d.affine(-1.0, margin)?.clamp(0.0, f64::INFINITY)?.sqr()?;
    let far = y.affine(-1.0, 1.0)?.mul(&hinge)?;
    reduction.apply(near.add(&far)?.affine(0.5, 0.0)?)
}

/// Options of [`triplet_margin_loss`] (torch's keyword arguments and defaults).
#[derive(Clone, Copy, Debug)]
pub struct TripletOptions {
    pub margin: f64,
    /// The norm of the pairwise distance.
    pub p: f64,
    /// Added to the difference before the norm (torch's `pairwise_distance` eps).
    pub eps: f64,
    /// Use the smaller of d(anchor, negative) and d(positive, negative) (Balntas et al. 2016).
    pub swap: bool,
    pub reduction: Reduction,
}

impl Default for TripletOptions {
    fn default() -> Self {
        TripletOptions {
            margin: 1.0,
            p: 2.0,
            eps: 1e-6,
            swap: false,
            reduction: Reduction::Mean,
        }
    }
}

/// Triplet margin loss, like `torch.nn.functional.triplet_margin_loss`:
/// `max(0, margin + d(a, p) − d(a, n))` with `d = pairwise_distance(·, ·, p, eps)`; with
/// `swap`, `d(a, n)` is replaced by `min(d(a, n), d(p, n))`. Inputs are `(N, D)` or `(D)`,
/// all of the same shape.
pub fn triplet_margin_loss(
    anchor: &Tensor,
    positive: &Tensor,
    negative: &Tensor,
    opts: &TripletOptions,
) -> Result<Tensor> {
    const OP: &str = "triplet_margin_loss";
    check_embeddings(OP, anchor, positive)?;
    check_embeddings(OP, anchor, negative)?;
    check_finite(OP, "margin", opts.margin)?;
    let d_pos = pairwise_distance(anchor, positive, opts.p, opts.eps)?;
    let mut d_neg = pairwise_distance(anchor, negative, opts.p, opts.eps)?;
    if opts.swap {
        d_neg = d_neg.minimum(&pairwise_distance(positive, negative, opts.p, opts.eps)?)?;
    }
    let loss = d_pos
        .sub(&d_neg)?
        .affine(1.0, opts.margin)?
        .clamp(0.0, f64::INFINITY)?;
    opts.reduction.apply(loss)
}
