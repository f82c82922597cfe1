//! Batched matrix products on cuBLAS.

use tensor_core::{Layout, Result};

use crate::error::backend;
use crate::{CudaDevice, CudaStorage};

pub(crate) fn matmul(
    _dev: &CudaDevice,
    _lhs: &CudaStorage,
    _lhs_l: &Layout,
    _rhs: &CudaStorage,
    _rhs_l: &Layout,
) -> Result<CudaStorage> {
    Err(backend("matmul is not on CUDA yet"))
}
