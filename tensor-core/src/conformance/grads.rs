//! Conformance cases: gradients. Every differentiable op is checked against central finite
//! differences in f64 (`gradcheck` repeats each check on transposed and narrowed inputs), over
//! several shapes including broadcasting; the last cases pin down the semantics of autograd
//! itself (accumulation, detach, no_grad, custom ops, gradient stores, in-place updates).
//!
//! Inputs are deterministic and chosen away from kinks (0 for relu/abs, the bounds of clamp,
//! ties for max/min), where a finite difference would straddle two branches.

use std::sync::Arc;

use super::gradcheck::{check_grad, check_grad_tol, input, input_in};
use super::{assert_close, assert_close_slices, det_tensor, det_values, Case};
use crate::{
    no_grad, AttentionParams, CustomOp, DType, Device, Error, GradStore, Result, Shape, Tensor,
    UnfoldParams, Var,
};

mod autograd;
mod elementwise;
mod nn;
mod shape;

type Unary = fn(&Tensor) -> Result<Tensor>;
type Binary = fn(&Tensor, &Tensor) -> Result<Tensor>;

fn case(name: &'static str, run: fn(&Device) -> Result<()>) -> Case {
    Case {
        group: "grad",
        name,
        run,
    }
}

pub(super) fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(autograd::cases());
    v.extend(elementwise::cases());
    v.extend(nn::cases());
    v.extend(shape::cases());
    v
}

fn grad_of<'a>(g: &'a GradStore, v: &Var) -> Result<&'a Tensor> {
    g.get(v.as_tensor())
        .ok_or_else(|| Error::msg("the variable got no gradient"))
}
