//! Indexing (index_select, gather, scatter_add, index_add) and unfold/fold
//! (`kernels/index.cu`).

use tensor_core::{Layout, Result, UnfoldParams};

use crate::error::backend;
use crate::kernels::ModuleSrc;
use crate::{CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "index",
    src: include_str!("../kernels/index.cu"),
};

pub(crate) fn index_select(
    _dev: &CudaDevice,
    _src: &CudaStorage,
    _src_l: &Layout,
    _ids: &CudaStorage,
    _ids_l: &Layout,
    _dim: usize,
) -> Result<CudaStorage> {
    Err(backend("index_select is not on CUDA yet"))
}

pub(crate) fn gather(
    _dev: &CudaDevice,
    _src: &CudaStorage,
    _src_l: &Layout,
    _ids: &CudaStorage,
    _ids_l: &Layout,
    _dim: usize,
) -> Result<CudaStorage> {
    Err(backend("gather is not on CUDA yet"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn scatter_add(
    _dev: &CudaDevice,
    _dst: &CudaStorage,
    _dst_l: &Layout,
    _ids: &CudaStorage,
    _ids_l: &Layout,
    _src: &CudaStorage,
    _src_l: &Layout,
    _dim: usize,
) -> Result<CudaStorage> {
    Err(backend("scatter_add is not on CUDA yet"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn index_add(
    _dev: &CudaDevice,
    _dst: &CudaStorage,
    _dst_l: &Layout,
    _ids: &CudaStorage,
    _ids_l: &Layout,
    _src: &CudaStorage,
    _src_l: &Layout,
    _dim: usize,
) -> Result<CudaStorage> {
    Err(backend("index_add is not on CUDA yet"))
}

pub(crate) fn unfold(
    _dev: &CudaDevice,
    _s: &CudaStorage,
    _l: &Layout,
    _p: &UnfoldParams,
) -> Result<CudaStorage> {
    Err(backend("unfold is not on CUDA yet"))
}

pub(crate) fn fold(
    _dev: &CudaDevice,
    _s: &CudaStorage,
    _l: &Layout,
    _p: &UnfoldParams,
    _out_spatial: &[usize],
) -> Result<CudaStorage> {
    Err(backend("fold is not on CUDA yet"))
}
