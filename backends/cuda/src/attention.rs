//! Flash-style attention forward and backward (`kernels/attention.cu`).

use tensor_core::{composite, AttentionParams, Result, Tensor};

use crate::kernels::ModuleSrc;
use crate::CudaDevice;

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "attention",
    src: include_str!("../kernels/attention.cu"),
};

pub(crate) fn attention(
    _dev: &CudaDevice,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &AttentionParams,
) -> Result<(Tensor, Tensor)> {
    composite::attention(q, k, v, p)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    _dev: &CudaDevice,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    grad_out: &Tensor,
    p: &AttentionParams,
) -> Result<(Tensor, Tensor, Tensor)> {
    composite::attention_backward(q, k, v, out, lse, grad_out, p)
}
