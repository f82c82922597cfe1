//! Seeded uniform and normal random numbers (`kernels/random.cu`).

use tensor_core::{DType, Result};

use crate::error::backend;
use crate::kernels::ModuleSrc;
use crate::{CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "random",
    src: include_str!("../kernels/random.cu"),
};

pub(crate) fn rand_uniform(
    _dev: &CudaDevice,
    _n: usize,
    _lo: f64,
    _hi: f64,
    _dtype: DType,
    _seed: u64,
) -> Result<CudaStorage> {
    Err(backend("rand_uniform is not on CUDA yet"))
}

pub(crate) fn rand_normal(
    _dev: &CudaDevice,
    _n: usize,
    _mean: f64,
    _std: f64,
    _dtype: DType,
    _seed: u64,
) -> Result<CudaStorage> {
    Err(backend("rand_normal is not on CUDA yet"))
}
