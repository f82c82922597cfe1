//! Elementwise unary, binary, comparison and where kernels (`kernels/elementwise.cu`).

use tensor_core::{BinaryOp, CmpOp, Layout, Result, UnaryOp};

use crate::error::backend;
use crate::kernels::ModuleSrc;
use crate::{CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "elementwise",
    src: include_str!("../kernels/elementwise.cu"),
};

pub(crate) fn unary(
    _dev: &CudaDevice,
    op: UnaryOp,
    _s: &CudaStorage,
    _l: &Layout,
) -> Result<CudaStorage> {
    Err(backend(format!("unary {} is not on CUDA yet", op.name())))
}

pub(crate) fn binary(
    _dev: &CudaDevice,
    op: BinaryOp,
    _lhs: &CudaStorage,
    _lhs_l: &Layout,
    _rhs: &CudaStorage,
    _rhs_l: &Layout,
) -> Result<CudaStorage> {
    Err(backend(format!("binary {} is not on CUDA yet", op.name())))
}

pub(crate) fn cmp(
    _dev: &CudaDevice,
    op: CmpOp,
    _lhs: &CudaStorage,
    _lhs_l: &Layout,
    _rhs: &CudaStorage,
    _rhs_l: &Layout,
) -> Result<CudaStorage> {
    Err(backend(format!("cmp {} is not on CUDA yet", op.name())))
}

pub(crate) fn where_cond(
    _dev: &CudaDevice,
    _cond: &CudaStorage,
    _cond_l: &Layout,
    _t: &CudaStorage,
    _t_l: &Layout,
    _f: &CudaStorage,
    _f_l: &Layout,
) -> Result<CudaStorage> {
    Err(backend("where_cond is not on CUDA yet"))
}
