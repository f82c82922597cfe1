//! Regression and distribution losses: squared, absolute, smooth-L1 / Huber errors and the
//! Kullback–Leibler divergence. Input and target must have the same shape (torch broadcasts
//! them with a warning; here that is an error, as it is almost always a bug).

use tensor_core::{Error, Result, Tensor};

use super::{check_pair, keep_where, Reduction};

/// Mean squared error, like `torch.nn.functional.mse_loss`: `(x − y)²` per element.
pub fn mse_loss(input: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    check_pair("mse_loss", input, target)?;
    reduction.apply(input.sub(target)?.sqr()?)
}

/// Mean absolute error, like `torch.nn.functional.l1_loss`: `|x − y|` per element.
pub fn l1_loss(input: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    check_pair("l1_loss", input, target)?;
    reduction.apply(input.sub(target)?.abs()?)
}

/// `quad` where |d| < threshold, else `lin`, for d = x − y.
fn piecewise(
    input: &Tensor,
    target: &Tensor,
    threshold: f64,
    quad_scale: f64,
    lin: (f64, f64),
) -> Result<Tensor> {
    let d = input.sub(target)?;
    let ad = d.abs()?;
    let quad = d.sqr()?.affine(quad_scale, 0.0)?;
    let lin = ad.affine(lin.0, lin.1)?;
    ad.lt_scalar(threshold)?.where_cond(&quad, &lin)
}

/// Smooth L1 loss, like `torch.nn.functional.smooth_l1_loss`: `½·d²/β` where |d| < β, else
/// `|d| − ½·β` (d = x − y); β = 0 is the L1 loss.
pub fn smooth_l1_loss(
    input: &Tensor,
    target: &Tensor,
    beta: f64,
    reduction: Reduction,
) -> Result<Tensor> {
    const OP: &str = "smooth_l1_loss";
    check_pair(OP, input, target)?;
    if !(beta >= 0.0 && beta.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("beta must be finite and >= 0, got {beta}"),
        ));
    }
    if beta == 0.0 {
        return l1_loss(input, target, reduction);
    }
    reduction.apply(piecewise(
        input,
        target,
        beta,
        0.5 / beta,
        (1.0, -0.5 * beta),
    )?)
}

/// Huber loss, like `torch.nn.functional.huber_loss`: `½·d²` where |d| < δ, else
/// `δ·(|d| − ½·δ)` (d = x − y); it equals δ times the smooth L1 loss with β = δ.
pub fn huber_loss(
    input: &Tensor,
    target: &Tensor,
    delta: f64,
    reduction: Reduction,
) -> Result<Tensor> {
    const OP: &str = "huber_loss";
    check_pair(OP, input, target)?;
    if !(delta > 0.0 && delta.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("delta must be finite and > 0, got {delta}"),
        ));
    }
    reduction.apply(piecewise(
        input,
        target,
        delta,
        0.5,
        (delta, -0.5 * delta * delta),
    )?)
}

/// The reductions of [`kl_div`]: torch's, including `batchmean`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KlReduction {
    None,
    /// Mean over all elements (torch's default, though rarely the divergence one wants).
    #[default]
    Mean,
    Sum,
    /// Sum divided by the batch size (dim 0): the KL divergence averaged over the batch.
    BatchMean,
}

impl From<Reduction> for KlReduction {
    fn from(r: Reduction) -> Self {
        match r {
            Reduction::None => KlReduction::None,
            Reduction::Mean => KlReduction::Mean,
            Reduction::Sum => KlReduction::Sum,
        }
    }
}

/// Kullback–Leibler divergence, like `torch.nn.functional.kl_div`, with `input` holding
/// log-probabilities: per element `t·(log t − x)` (0 where t = 0), or `e^t·(t − x)` when
/// `log_target` says the target holds log-probabilities too. `BatchMean` divides the sum by
/// the size of dim 0 (a rank-0 input is just summed).
pub fn kl_div(
    input: &Tensor,
    target: &Tensor,
    reduction: KlReduction,
    log_target: bool,
) -> Result<Tensor> {
    check_pair("kl_div", input, target)?;
    let loss = if log_target {
        target.exp()?.mul(&target.sub(input)?)?
    } else {
        // xlogy(t, t): the log is taken of 1 where t = 0 so no inf/nan reaches the gradient.
        let nonzero = target.ne_scalar(0.0)?;
        let one = Tensor::ones((), target.dtype(), target.device())?;
        let safe = nonzero.where_cond(target, &one)?;
        keep_where(&nonzero, &target.mul(&safe.log()?)?)?.sub(&target.mul(input)?)?
    };
    match reduction {
        KlReduction::None => Ok(loss),
        KlReduction::Mean => loss.mean_all(),
        KlReduction::Sum => loss.sum_all(),
        KlReduction::BatchMean if input.rank() == 0 => loss.sum_all(),
        KlReduction::BatchMean => loss.sum_all()?.div_scalar(input.dims()[0] as f64),
    }
}
