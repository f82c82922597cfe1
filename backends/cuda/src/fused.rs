//! Fused ops: softmax, log-softmax, layer/RMS norm, SwiGLU, cross-entropy, rotary
//! embeddings, convolution and optimizer updates (`kernels/fused.cu`).

use tensor_core::{composite, ConvParams, CrossEntropyParams, OptimRule, Result, Tensor};

use crate::kernels::ModuleSrc;
use crate::CudaDevice;

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "fused",
    src: include_str!("../kernels/fused.cu"),
};

pub(crate) fn softmax_last_dim(_dev: &CudaDevice, x: &Tensor) -> Result<Tensor> {
    composite::softmax_last_dim(x)
}
pub(crate) fn log_softmax_last_dim(_dev: &CudaDevice, x: &Tensor) -> Result<Tensor> {
    composite::log_softmax_last_dim(x)
}
pub(crate) fn layer_norm(
    _dev: &CudaDevice,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    composite::layer_norm(x, weight, bias, eps)
}
pub(crate) fn rms_norm(
    _dev: &CudaDevice,
    x: &Tensor,
    weight: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    composite::rms_norm(x, weight, eps)
}
pub(crate) fn rms_norm_backward(
    _dev: &CudaDevice,
    x: &Tensor,
    weight: Option<&Tensor>,
    grad: &Tensor,
    eps: f64,
) -> Result<(Tensor, Option<Tensor>)> {
    composite::rms_norm_backward(x, weight, grad, eps)
}
pub(crate) fn silu_mul(_dev: &CudaDevice, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    composite::silu_mul(gate, up)
}
pub(crate) fn silu_mul_backward(
    _dev: &CudaDevice,
    gate: &Tensor,
    up: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor)> {
    composite::silu_mul_backward(gate, up, grad)
}
pub(crate) fn cross_entropy(
    _dev: &CudaDevice,
    logits: &Tensor,
    targets: &Tensor,
    p: &CrossEntropyParams,
) -> Result<Tensor> {
    composite::cross_entropy(logits, targets, p)
}
pub(crate) fn cross_entropy_backward(
    _dev: &CudaDevice,
    logits: &Tensor,
    targets: &Tensor,
    grad: &Tensor,
    p: &CrossEntropyParams,
) -> Result<Tensor> {
    composite::cross_entropy_backward(logits, targets, grad, p)
}
pub(crate) fn rope(
    _dev: &CudaDevice,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> Result<Tensor> {
    composite::rope(x, cos, sin, interleaved)
}
pub(crate) fn conv(_dev: &CudaDevice, x: &Tensor, w: &Tensor, p: &ConvParams) -> Result<Tensor> {
    composite::conv(x, w, p)
}
pub(crate) fn optim_update(
    _dev: &CudaDevice,
    rule: &OptimRule,
    step: u64,
    grad_scale: f64,
    param: &Tensor,
    grad: &Tensor,
    state: &[Tensor],
) -> Result<()> {
    tensor_core::optim::update_composite(rule, step, grad_scale, param, grad, state)
}
