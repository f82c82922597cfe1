//! Loss functions with PyTorch's names and semantics (`torch.nn.functional`, plus torchvision's
//! `sigmoid_focal_loss` and the usual contrastive losses). They are composed only from
//! tensor-core ops, so autograd differentiates them on every backend. Each returns the
//! per-element loss for [`Reduction::None`] and a rank-0 tensor otherwise; bad inputs are
//! errors naming the loss, never panics.

mod classification;
mod embedding;
mod regression;
#[cfg(test)]
mod tests;

pub use classification::{
    binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, nll_loss,
    sigmoid_focal_loss, CrossEntropyOptions, NllOptions,
};
pub use embedding::{
    contrastive_loss, cosine_embedding_loss, info_nce, info_nce_symmetric, pairwise_distance,
    triplet_margin_loss, TripletOptions,
};
pub use regression::{huber_loss, kl_div, l1_loss, mse_loss, smooth_l1_loss, KlReduction};

use tensor_core::{Error, Result, Shape, Tensor};

/// How per-element losses are combined, as torch's `reduction=` argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// Keep the per-element losses.
    None,
    /// Their mean (nan for an empty input, like torch).
    #[default]
    Mean,
    /// Their sum.
    Sum,
}

impl Reduction {
    /// Reduce a per-element loss.
    pub fn apply(self, loss: Tensor) -> Result<Tensor> {
        match self {
            Reduction::None => Ok(loss),
            Reduction::Mean => loss.mean_all(),
            Reduction::Sum => loss.sum_all(),
        }
    }
}

fn check_float(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            op,
            dtype: t.dtype(),
            expected: "a float dtype",
        })
    }
}

fn check_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
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

fn check_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
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

/// Both float, same dtype, device and shape (the losses do not broadcast input vs target).
fn check_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    check_float(op, a)?;
    check_device(op, a, b)?;
    check_dtype(op, a, b)?;
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
        });
    }
    Ok(())
}

/// An optional elementwise weight: same dtype and device as `x`, broadcastable to `x`'s shape
/// without enlarging it.
fn check_broadcast_weight(op: &'static str, w: Option<&Tensor>, x: &Tensor) -> Result<()> {
    let Some(w) = w else { return Ok(()) };
    check_device(op, x, w)?;
    check_dtype(op, x, w)?;
    match w.shape().broadcast_with(x.shape(), op) {
        Ok(s) if &s == x.shape() => Ok(()),
        _ => Err(Error::UnexpectedShape {
            op,
            expected: format!("a weight broadcastable to the input shape {:?}", x.shape()),
            got: w.shape().clone(),
        }),
    }
}

fn check_finite(op: &'static str, name: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("{name} must be finite, got {v}"),
        ))
    }
}

/// `x` where the u8 `mask` is set, else 0 (via `where`, so masked entries get an exact zero
/// gradient even when the upstream gradient is infinite).
fn keep_where(mask: &Tensor, x: &Tensor) -> Result<Tensor> {
    mask.where_cond(x, &Tensor::zeros((), x.dtype(), x.device())?)
}

/// `softplus(−x) = −log σ(x) = log(1 + e^{−|x|}) − min(x, 0)`: exact for any |x| (no
/// overflow, no threshold), and the tie rule of `minimum` gives the right slope −½ at 0.
fn neg_log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let zero = Tensor::zeros((), x.dtype(), x.device())?;
    x.abs()?
        .neg()?
        .exp()?
        .add_scalar(1.0)?
        .log()?
        .sub(&x.minimum(&zero)?)
}

/// `[1, .., C, .., 1]`: the shape that broadcasts a class vector along `class_dim`.
fn class_shape(rank: usize, class_dim: usize, c: usize) -> Shape {
    let mut d = vec![1; rank];
    d[class_dim] = c;
    Shape::from(d)
}
