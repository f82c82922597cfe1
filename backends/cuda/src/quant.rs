//! Quantized matrix products on GGUF blocks (`kernels/quant.cu`).

use tensor_core::quant::QTensor;
use tensor_core::{composite, Result, Tensor};

use crate::kernels::ModuleSrc;
use crate::CudaDevice;

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "quant",
    src: include_str!("../kernels/quant.cu"),
};

pub(crate) fn qmatmul(_dev: &CudaDevice, x: &Tensor, w: &QTensor) -> Result<Tensor> {
    composite::qmatmul(x, w)
}
