//! The CUDA fused decoder (`kernels/decoder.cu`).

use tensor_core::decoder::{DecoderSpec, FusedDecoder};
use tensor_core::Result;

use crate::kernels::ModuleSrc;
use crate::CudaDevice;

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "decoder",
    src: include_str!("../kernels/decoder.cu"),
};

pub(crate) fn fused_decoder(
    _dev: &CudaDevice,
    _spec: &DecoderSpec,
) -> Result<Option<Box<dyn FusedDecoder>>> {
    Ok(None)
}
