//! Optimizer update rules as one in-place backend op. The optimizers of `tensor-nn` describe
//! a step with an [`OptimRule`] and call [`update`], which validates the inputs and hands them
//! to [`crate::BackendDevice::optim_update`]. Its default body, [`update_composite`], composes
//! tensor ops and writes the results back with `copy_from` (the reference path; it allocates
//! temporaries). A backend overrides it with a fused kernel that updates parameter and state
//! in place, computing the same formulas as PyTorch's single-tensor paths
//! (`torch/optim/{sgd,adam,rmsprop,adagrad}.py`) and the Lion paper.
//!
//! The optimizer state tensors handed to the op, in order, per rule (see
//! [`OptimRule::state_names`]; all have the parameter's shape and dtype):
//!
//! | rule      | state                                                                  |
//! |-----------|------------------------------------------------------------------------|
//! | `Sgd`     | `momentum_buffer` when `momentum != 0` (overwritten with the grad at step 1) |
//! | `Adam`    | `exp_avg`, `exp_avg_sq`, plus `max_exp_avg_sq` when `amsgrad`          |
//! | `RmsProp` | `square_avg`, `momentum_buffer` when `momentum > 0`, `grad_avg` when `centered` |
//! | `Adagrad` | `sum` (starts at the optimizer's `initial_accumulator_value`)          |
//! | `Lion`    | `exp_avg`                                                              |
//!
//! Everything but Adagrad's `sum` starts at zero.

use crate::{Error, Result, Tensor};

/// One optimizer's hyper-parameters for one update. Field names and defaults follow
/// `torch.optim`; Lion follows Chen et al. 2023 ("Symbolic Discovery of Optimization
/// Algorithms"), with decoupled weight decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimRule {
    /// `torch.optim.SGD`.
    Sgd {
        lr: f64,
        momentum: f64,
        dampening: f64,
        nesterov: bool,
        weight_decay: f64,
        maximize: bool,
    },
    /// `torch.optim.Adam` (`decoupled: false`) and `torch.optim.AdamW` (`decoupled: true`).
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
        amsgrad: bool,
        maximize: bool,
    },
    /// `torch.optim.RMSprop`.
    RmsProp {
        lr: f64,
        alpha: f64,
        eps: f64,
        weight_decay: f64,
        momentum: f64,
        centered: bool,
        maximize: bool,
    },
    /// `torch.optim.Adagrad`.
    Adagrad {
        lr: f64,
        lr_decay: f64,
        weight_decay: f64,
        eps: f64,
        maximize: bool,
    },
    /// Lion: `c = β1·m + (1−β1)·g; p ← p·(1 − lr·wd) − lr·sign(c); m ← β2·m + (1−β2)·g`.
    Lion {
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
    },
}

fn check_nonneg(what: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "optim",
            format!("{what} must be finite and >= 0, got {v}"),
        ))
    }
}

fn check_beta(what: &str, v: f64) -> Result<()> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::invalid(
            "optim",
            format!("{what} must be in [0, 1), got {v}"),
        ))
    }
}

impl OptimRule {
    /// A short name for messages (`sgd`, `adam`, `adamw`, `rmsprop`, `adagrad`, `lion`).
    pub fn name(&self) -> &'static str {
        match self {
            OptimRule::Sgd { .. } => "sgd",
            OptimRule::Adam {
                decoupled: false, ..
            } => "adam",
            OptimRule::Adam {
                decoupled: true, ..
            } => "adamw",
            OptimRule::RmsProp { .. } => "rmsprop",
            OptimRule::Adagrad { .. } => "adagrad",
            OptimRule::Lion { .. } => "lion",
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            OptimRule::Sgd { lr, .. }
            | OptimRule::Adam { lr, .. }
            | OptimRule::RmsProp { lr, .. }
            | OptimRule::Adagrad { lr, .. }
            | OptimRule::Lion { lr, .. } => lr,
        }
    }

    /// Names of the state tensors the update reads and writes, in the order it takes them.
    pub fn state_names(&self) -> &'static [&'static str] {
        match *self {
            OptimRule::Sgd { momentum, .. } => {
                if momentum != 0.0 {
                    &["momentum_buffer"]
                } else {
                    &[]
                }
            }
            OptimRule::Adam { amsgrad, .. } => {
                if amsgrad {
                    &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
                } else {
                    &["exp_avg", "exp_avg_sq"]
                }
            }
            OptimRule::RmsProp {
                momentum, centered, ..
            } => match (momentum > 0.0, centered) {
                (false, false) => &["square_avg"],
                (true, false) => &["square_avg", "momentum_buffer"],
                (false, true) => &["square_avg", "grad_avg"],
                (true, true) => &["square_avg", "momentum_buffer", "grad_avg"],
            },
            OptimRule::Adagrad { .. } => &["sum"],
            OptimRule::Lion { .. } => &["exp_avg"],
        }
    }

    /// Check the hyper-parameters (the ranges `torch.optim` accepts, betas in `[0, 1)`).
    pub fn validate(&self) -> Result<()> {
        check_nonneg("lr", self.lr())?;
        match *self {
            OptimRule::Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
                ..
            } => {
                check_nonneg("momentum", momentum)?;
                check_nonneg("weight_decay", weight_decay)?;
                if !dampening.is_finite() {
                    return Err(Error::invalid(
                        "optim",
                        format!("dampening must be finite, got {dampening}"),
                    ));
                }
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return Err(Error::invalid(
                        "optim",
                        format!("nesterov momentum requires momentum > 0 and dampening 0, got momentum {momentum}, dampening {dampening}"),
                    ));
                }
            }
            OptimRule::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                check_beta("beta1", beta1)?;
                check_beta("beta2", beta2)?;
                check_nonneg("eps", eps)?;
                check_nonneg("weight_decay", weight_decay)?;
            }
            OptimRule::RmsProp {
                alpha,
                eps,
                weight_decay,
                momentum,
                ..
            } => {
                if !(0.0..=1.0).contains(&alpha) {
                    return Err(Error::invalid(
                        "optim",
                        format!("alpha must be in [0, 1], got {alpha}"),
                    ));
                }
                check_nonneg("eps", eps)?;
                check_nonneg("weight_decay", weight_decay)?;
                check_nonneg("momentum", momentum)?;
            }
            OptimRule::Adagrad {
                lr_decay,
                weight_decay,
                eps,
                ..
            } => {
                check_nonneg("lr_decay", lr_decay)?;
                check_nonneg("weight_decay", weight_decay)?;
                check_nonneg("eps", eps)?;
            }
            OptimRule::Lion {
                beta1,
                beta2,
                weight_decay,
                ..
            } => {
                check_beta("beta1", beta1)?;
                check_beta("beta2", beta2)?;
                check_nonneg("weight_decay", weight_decay)?;
            }
        }
        Ok(())
    }
}

/// Whether two tensors are views of the same memory. In-place updates need parameter, gradient
/// and state in distinct storages (a backend takes a write lock on each).
pub fn shares_storage(a: &Tensor, b: &Tensor) -> bool {
    a.same_storage(b)
}

/// Validate one update: hyper-parameters, `step >= 1`, a finite `grad_scale >= 0`, a float
/// parameter, a gradient and `rule.state_names().len()` state tensors of the parameter's
/// shape, dtype and device, and no two of them sharing storage. Backends may call it again
/// before taking locks; it allocates nothing unless it fails.
pub fn validate(
    rule: &OptimRule,
    step: u64,
    grad_scale: f64,
    param: &Tensor,
    grad: &Tensor,
    state: &[Tensor],
) -> Result<()> {
    const OP: &str = "optim_update";
    rule.validate()?;
    if step == 0 {
        return Err(Error::invalid(OP, "step is 1-based, got 0"));
    }
    check_nonneg("grad_scale", grad_scale)?;
    crate::ops::check_float(OP, param)?;
    let expected = rule.state_names();
    if state.len() != expected.len() {
        return Err(Error::invalid(
            OP,
            format!(
                "{} takes {} state tensors {:?}, got {}",
                rule.name(),
                expected.len(),
                expected,
                state.len()
            ),
        ));
    }
    for t in std::iter::once(grad).chain(state) {
        crate::ops::check_same_device(OP, param, t)?;
        if t.dtype() != param.dtype() {
            return Err(Error::DTypeMismatch {
                op: OP,
                lhs: param.dtype(),
                rhs: t.dtype(),
            });
        }
        if t.shape() != param.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: param.shape().clone(),
                rhs: t.shape().clone(),
            });
        }
    }
    // Index 0 is the parameter, 1 the gradient, then the state (no allocation on success).
    let at = |k: usize| match k {
        0 => param,
        1 => grad,
        k => &state[k - 2],
    };
    let n = state.len() + 2;
    for i in 0..n {
        for j in i + 1..n {
            if at(i).same_storage(at(j)) {
                let name = |k: usize| match k {
                    0 => "the parameter".to_string(),
                    1 => "the gradient".to_string(),
                    k => format!("state `{}`", expected[k - 2]),
                };
                return Err(Error::invalid(
                    OP,
                    format!(
                        "{} and {} share storage; in-place updates need distinct tensors",
                        name(i),
                        name(j)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Apply one optimizer update in place: `param` and `state` are overwritten. `step` is the
/// 1-based number of updates this parameter has received, this one included (bias corrections,
/// Adagrad's decay, SGD's first-step momentum buffer). The gradient is multiplied by
/// `grad_scale` first (1.0 for none), which fuses clip-by-norm into the update.
pub fn update(
    rule: &OptimRule,
    step: u64,
    grad_scale: f64,
    param: &Tensor,
    grad: &Tensor,
    state: &[Tensor],
) -> Result<()> {
    validate(rule, step, grad_scale, param, grad, state)?;
    param
        .device()
        .backend()
        .optim_update(rule, step, grad_scale, param, grad, state)
}

/// The default body of [`crate::BackendDevice::optim_update`]: the update composed from tensor
/// ops in PyTorch's order, written back with `copy_from`. Allocates temporaries.
pub fn update_composite(
    rule: &OptimRule,
    step: u64,
    grad_scale: f64,
    param: &Tensor,
    grad: &Tensor,
    state: &[Tensor],
) -> Result<()> {
    validate(rule, step, grad_scale, param, grad, state)?;
    let _no_grad = crate::no_grad();
    let p = param.detach();
    let mut g = grad.detach();
    if grad_scale != 1.0 {
        g = g.mul_scalar(grad_scale)?;
    }
    let maximize = match *rule {
        OptimRule::Sgd { maximize, .. }
        | OptimRule::Adam { maximize, .. }
        | OptimRule::RmsProp { maximize, .. }
        | OptimRule::Adagrad { maximize, .. } => maximize,
        OptimRule::Lion { .. } => false,
    };
    if maximize {
        g = g.neg()?;
    }
    let new_p = match *rule {
        OptimRule::Sgd {
            lr,
            momentum,
            dampening,
            nesterov,
            weight_decay,
            ..
        } => {
            if weight_decay != 0.0 {
                g = g.add(&p.mul_scalar(weight_decay)?)?;
            }
            if momentum != 0.0 {
                let buf = if step == 1 {
                    g.clone()
                } else {
                    state[0]
                        .mul_scalar(momentum)?
                        .add(&g.mul_scalar(1.0 - dampening)?)?
                };
                state[0].copy_from(&buf)?;
                g = if nesterov {
                    g.add(&buf.mul_scalar(momentum)?)?
                } else {
                    buf
                };
            }
            p.add(&g.mul_scalar(-lr)?)?
        }
        OptimRule::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
            amsgrad,
            ..
        } => {
            let mut p = p;
            if weight_decay != 0.0 {
                if decoupled {
                    p = p.mul_scalar(1.0 - lr * weight_decay)?;
                } else {
                    g = g.add(&p.mul_scalar(weight_decay)?)?;
                }
            }
            let m = state[0].add(&g.sub(&state[0])?.mul_scalar(1.0 - beta1)?)?;
            let v = state[1]
                .mul_scalar(beta2)?
                .add(&g.mul_scalar(1.0 - beta2)?.mul(&g)?)?;
            state[0].copy_from(&m)?;
            state[1].copy_from(&v)?;
            let s = step as f64;
            let step_size = lr / (1.0 - beta1.powf(s));
            let bc2_sqrt = (1.0 - beta2.powf(s)).sqrt();
            let d = if amsgrad {
                let vmax = state[2].maximum(&v)?;
                state[2].copy_from(&vmax)?;
                vmax
            } else {
                v
            };
            let denom = d.sqrt()?.div_scalar(bc2_sqrt)?.add_scalar(eps)?;
            p.add(&m.div(&denom)?.mul_scalar(-step_size)?)?
        }
        OptimRule::RmsProp {
            lr,
            alpha,
            eps,
            weight_decay,
            momentum,
            centered,
            ..
        } => {
            if weight_decay != 0.0 {
                g = g.add(&p.mul_scalar(weight_decay)?)?;
            }
            let sq = state[0]
                .mul_scalar(alpha)?
                .add(&g.mul_scalar(1.0 - alpha)?.mul(&g)?)?;
            state[0].copy_from(&sq)?;
            let avg = if centered {
                let ga_t = state.last().expect("validated: centered has grad_avg");
                let ga = ga_t.add(&g.sub(ga_t)?.mul_scalar(1.0 - alpha)?)?;
                ga_t.copy_from(&ga)?;
                sq.sub(&ga.mul(&ga)?)?.sqrt()?
            } else {
                sq.sqrt()?
            };
            let avg = avg.add_scalar(eps)?;
            if momentum > 0.0 {
                let buf = state[1].mul_scalar(momentum)?.add(&g.div(&avg)?)?;
                state[1].copy_from(&buf)?;
                p.add(&buf.mul_scalar(-lr)?)?
            } else {
                p.add(&g.div(&avg)?.mul_scalar(-lr)?)?
            }
        }
        OptimRule::Adagrad {
            lr,
            lr_decay,
            weight_decay,
            eps,
            ..
        } => {
            if weight_decay != 0.0 {
                g = g.add(&p.mul_scalar(weight_decay)?)?;
            }
            let clr = lr / (1.0 + (step - 1) as f64 * lr_decay);
            let sum = state[0].add(&g.mul(&g)?)?;
            state[0].copy_from(&sum)?;
            let std = sum.sqrt()?.add_scalar(eps)?;
            p.add(&g.div(&std)?.mul_scalar(-clr)?)?
        }
        OptimRule::Lion {
            lr,
            beta1,
            beta2,
            weight_decay,
        } => {
            let m = &state[0];
            let c = m.mul_scalar(beta1)?.add(&g.mul_scalar(1.0 - beta1)?)?;
            let mut p = p;
            if weight_decay != 0.0 {
                p = p.mul_scalar(1.0 - lr * weight_decay)?;
            }
            let p = p.add(&c.sign()?.mul_scalar(-lr)?)?;
            let new_m = m.mul_scalar(beta2)?.add(&g.mul_scalar(1.0 - beta2)?)?;
            m.copy_from(&new_m)?;
            p
        }
    };
    param.copy_from(&new_p)
}
