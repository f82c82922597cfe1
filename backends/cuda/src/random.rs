//! Seeded uniform and normal random numbers (`kernels/random.cu`).
//!
//! Counter-based: element `i` of a draw is Philox4x32-10 keyed by the seed at counter
//! `(i, attempt, 0, 0)`, so a seed gives the same values whatever the launch configuration,
//! and a shorter draw is a prefix of a longer one. The values differ from the CPU backend's
//! (which uses `StdRng` per chunk); the distributions are the same.

use tensor_core::checks;
use tensor_core::{DType, Result};

use crate::kernels::{cfg_1d, check_u32, ModuleSrc};
use crate::{launch, CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "random",
    src: include_str!("../kernels/random.cu"),
};

/// Launch `rand_{kind}_{dtype}(n, seed, a, b, out)`.
fn draw(
    dev: &CudaDevice,
    kind: &str,
    n: usize,
    a: f64,
    b: f64,
    dtype: DType,
    seed: u64,
) -> Result<CudaStorage> {
    let out = dev.alloc(n, dtype)?;
    if n == 0 {
        return Ok(out);
    }
    let n32 = check_u32(n)?;
    let o = out.ptr();
    launch!(
        dev,
        MODULE,
        &format!("rand_{kind}_{}", dtype.as_str()),
        cfg_1d(n32, dev.max_blocks()),
        n32,
        seed,
        a,
        b,
        o
    )?;
    Ok(out)
}

pub(crate) fn rand_uniform(
    dev: &CudaDevice,
    n: usize,
    lo: f64,
    hi: f64,
    dtype: DType,
    seed: u64,
) -> Result<CudaStorage> {
    const OP: &str = "rand_uniform";
    checks::float_dtype(OP, dtype)?;
    checks::uniform_bounds(lo, hi)?;
    if lo == hi {
        return crate::copy::full(dev, n, lo, dtype);
    }
    draw(dev, "uniform", n, lo, hi, dtype, seed)
}

pub(crate) fn rand_normal(
    dev: &CudaDevice,
    n: usize,
    mean: f64,
    std: f64,
    dtype: DType,
    seed: u64,
) -> Result<CudaStorage> {
    const OP: &str = "rand_normal";
    checks::float_dtype(OP, dtype)?;
    checks::normal_params(mean, std)?;
    draw(dev, "normal", n, mean, std, dtype, seed)
}
