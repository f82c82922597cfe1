//! Reductions and cumulative sums (`kernels/reduce.cu`).

use tensor_core::{Layout, ReduceOp, Result};

use crate::error::backend;
use crate::kernels::ModuleSrc;
use crate::{CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "reduce",
    src: include_str!("../kernels/reduce.cu"),
};

pub(crate) fn reduce(
    _dev: &CudaDevice,
    op: ReduceOp,
    _s: &CudaStorage,
    _l: &Layout,
    _dims: &[usize],
) -> Result<CudaStorage> {
    Err(backend(format!("reduce {} is not on CUDA yet", op.name())))
}

pub(crate) fn cumsum(
    _dev: &CudaDevice,
    _s: &CudaStorage,
    _l: &Layout,
    _dim: usize,
) -> Result<CudaStorage> {
    Err(backend("cumsum is not on CUDA yet"))
}
