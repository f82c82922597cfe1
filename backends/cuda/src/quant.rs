//! Quantized matrix products on GGUF blocks (`kernels/quant.cu`).
//!
//! The weight's blocks must already be in device memory ([`QTensor::to_device`]): an op never
//! copies weights from the host. Few activation rows (decode) go to matrix-vector kernels
//! that dequantize in registers and read each weight byte once per 8 rows; more rows
//! dequantize the weight to bf16, a bounded slice of rows at a time, and multiply on cuBLAS
//! (bf16 inputs, f32 accumulation) with the activations split in two bf16 planes
//! (`x ≈ hi + lo`), so that only the weight is rounded to bf16, as on the CPU's AMX path.

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::LaunchConfig;
use tensor_core::quant::{GgmlType, QTensor};
use tensor_core::{DType, Error, Layout, Result, Tensor};

use crate::error::backend;
use crate::kernels::{cfg_1d, check_u32, ModuleSrc};
use crate::{launch, with_storage, CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "quant",
    src: include_str!("../kernels/quant.cu"),
};

/// Weight types with kernels here.
pub(crate) const SUPPORTED: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// Most activation rows one matrix-vector launch takes (its kernels take up to 1, 2, 4 or 8).
const MV_ROWS: usize = 8;
/// Products of at most this many activation rows use the matrix-vector kernels; more rows go
/// through the bf16 dequantization and cuBLAS. (On an H100, for a 4096 × 4096 weight: 8 rows
/// take about 35 µs either way, 16 rows 70 µs as 2 matrix-vector launches and 45 µs on
/// cuBLAS.)
pub(crate) const MV_MAX_ROWS: usize = 8;
/// Warps per block of the matrix-vector kernels (QMV_WARPS in quant.cu).
const MV_WARPS: u32 = 4;
/// Activations (f32) the matrix-vector kernels stage in shared memory at a time (32 KiB).
const MV_SMEM_FLOATS: usize = 8192;
/// Most elements of the bf16 weight slice the cuBLAS path dequantizes at a time (128 MiB).
const DEQUANT_CHUNK: usize = 1 << 26;

fn op_err(msg: String) -> Error {
    Error::InvalidArgument { op: "qmatmul", msg }
}

/// `x · wᵀ` for `w: [N, K]` (with its device copy on this device) and `x: [..., K]` of a
/// float dtype; the result is `[..., N]` of `x`'s dtype. f16/bf16 activations are multiplied
/// in f32.
pub(crate) fn qmatmul(dev: &CudaDevice, x: &Tensor, w: &QTensor) -> Result<Tensor> {
    let ty = w.ggml_type();
    if w.dims().len() != 2 || x.rank() == 0 || x.dims()[x.rank() - 1] != w.row_len() {
        return Err(op_err(format!(
            "input {:?} does not fit weight {w:?} (expected [..., {}] and a 2-d weight)",
            x.dims(),
            w.row_len()
        )));
    }
    let here = x.device();
    let wbuf = match w.device_bytes() {
        Some((d, s)) if d.same_device(here) => crate::storage::cuda(s)?,
        Some((d, _)) => {
            return Err(op_err(format!(
                "the weight {w:?} is on {}, the input on {}: upload the quantized weight to \
                 this device with QTensor::to_device first",
                d.name(),
                here.name()
            )))
        }
        None => {
            return Err(op_err(format!(
                "the weight {w:?} has no copy on {}: upload the quantized weight with \
                 QTensor::to_device first",
                here.name()
            )))
        }
    };
    if wbuf.len != w.data().len() || wbuf.dtype != DType::U8 {
        return Err(backend(format!(
            "qmatmul: the device copy of {w:?} holds {} {:?} elements, not its {} bytes",
            wbuf.len,
            wbuf.dtype,
            w.data().len()
        )));
    }
    if !SUPPORTED.contains(&ty) {
        return Err(op_err(format!(
            "CUDA has no quantized kernels for {ty} weights (it has them for Q4_0, Q4_1, \
             Q8_0, Q4_K and Q6_K)"
        )));
    }
    let xdt = x.dtype();
    if !matches!(xdt, DType::F32 | DType::F16 | DType::BF16) {
        return Err(op_err(format!(
            "the input must be a float of at most 32 bits, got {xdt:?}"
        )));
    }
    let (n, k) = (w.rows(), w.row_len());
    let m = x.elem_count() / k.max(1);
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank checked above") = n;

    let out = if m == 0 || n == 0 || k == 0 {
        dev.zeros(m * n, DType::F32)?
    } else {
        with_storage(x, |s, l| {
            // The activations as contiguous f32 from a 16-byte aligned address.
            let owned;
            let xs: (&CudaStorage, usize) =
                if s.dtype == DType::F32 && l.is_contiguous() && l.offset() % 4 == 0 {
                    (s, l.offset())
                } else if s.dtype == DType::F32 {
                    owned = crate::copy::copy_strided(dev, s, l)?;
                    (&owned, 0)
                } else {
                    owned = crate::copy::cast(dev, s, l, DType::F32)?;
                    (&owned, 0)
                };
            let out = dev.alloc(m * n, DType::F32)?;
            qmatmul_f32(dev, ty, wbuf.ptr(), n, k, xs.0.ptr_at(xs.1), m, out.ptr())?;
            Ok(out)
        })?
    };
    let out = if xdt == DType::F32 {
        out
    } else {
        crate::copy::cast(dev, &out, &Layout::contiguous(m * n), xdt)?
    };
    dev.tensor(out, dims, x)
}

/// `out[m, n] = x[m, :] · w[n, :]` on raw device addresses: `w` holds `n` rows of `k` `ty`
/// elements as ggml blocks (one of [`SUPPORTED`]), `x` is `m` contiguous f32 rows of `k`,
/// both from 16-byte aligned addresses; `out` has room for `m · n` f32. All sizes non-zero.
#[allow(clippy::too_many_arguments)]
pub(crate) fn qmatmul_f32(
    dev: &CudaDevice,
    ty: GgmlType,
    w: u64,
    n: usize,
    k: usize,
    x: u64,
    m: usize,
    out: u64,
) -> Result<()> {
    if !SUPPORTED.contains(&ty) {
        return Err(backend(format!("qmatmul: no CUDA kernel for {ty} weights")));
    }
    if !k.is_multiple_of(ty.block_size()) {
        return Err(backend(format!(
            "qmatmul: rows of {k} are not whole {ty} blocks"
        )));
    }
    if m <= MV_MAX_ROWS {
        matvec(dev, ty, w, n, k, x, m, out)
    } else {
        dequant_gemm(dev, ty, w, n, k, x, m, out, DEQUANT_CHUNK)
    }
}

/// The matrix-vector kernels, [`MV_ROWS`] activation rows per launch.
#[allow(clippy::too_many_arguments)]
fn matvec(
    dev: &CudaDevice,
    ty: GgmlType,
    w: u64,
    n: usize,
    k: usize,
    x: u64,
    m: usize,
    out: u64,
) -> Result<()> {
    let (n32, k32) = (check_u32(n)?, check_u32(k)?);
    let mut m0 = 0;
    while m0 < m {
        let rows = (m - m0).min(MV_ROWS);
        // The kernel for up to `mm` rows (1, 2, 4 or 8), and its weight rows per warp (QMV_R
        // in quant.cu).
        let mm = rows.next_power_of_two();
        let per_warp = if mm == 1 { 2 } else { 4 };
        // Activation columns staged in shared memory at a time: a multiple of 256 (every
        // block size divides it) with mm · kt floats in 32 KiB, or all of them.
        let kt = (MV_SMEM_FLOATS / mm / 256 * 256).min(k) as u32;
        let cfg = LaunchConfig {
            grid_dim: (n32.div_ceil(MV_WARPS * per_warp), 1, 1),
            block_dim: (32 * MV_WARPS, 1, 1),
            shared_mem_bytes: mm as u32 * kt * 4,
        };
        let xp = x + (m0 * k * 4) as u64;
        let op = out + (m0 * n * 4) as u64;
        let mrows = rows as u32;
        // qmv_<T>_m<M>(const u8* w, const float* x, float* out, u32 n, u32 k, u32 kt,
        //              u32 mrows)
        launch!(
            dev,
            MODULE,
            &format!("qmv_{}_m{mm}", ty.name()),
            cfg,
            w,
            xp,
            op,
            n32,
            k32,
            kt,
            mrows
        )?;
        m0 += rows;
    }
    Ok(())
}

/// The weight dequantized to bf16 (whole rows, at most `chunk_elems` elements at a time when
/// rows are shorter) times the activations' two bf16 planes on cuBLAS, accumulated in f32.
#[allow(clippy::too_many_arguments)]
fn dequant_gemm(
    dev: &CudaDevice,
    ty: GgmlType,
    w: u64,
    n: usize,
    k: usize,
    x: u64,
    m: usize,
    out: u64,
    chunk_elems: usize,
) -> Result<()> {
    let int = |v: usize| {
        i32::try_from(v)
            .map_err(|_| backend(format!("qmatmul: dimension {v} is too large for cuBLAS")))
    };
    let (mi, ki, ni) = (int(m)?, int(k)?, int(n)?);
    let mk = check_u32(m * k)?;
    // x ≈ hi + lo in bf16.
    let hi = dev.alloc(m * k, DType::BF16)?;
    let lo = dev.alloc(m * k, DType::BF16)?;
    let (hp, lp) = (hi.ptr(), lo.ptr());
    // qsplit_bf16(u32 n, const float* x, u16* hi, u16* lo)
    launch!(
        dev,
        MODULE,
        "qsplit_bf16",
        cfg_1d(mk, dev.max_blocks()),
        mk,
        x,
        hp,
        lp
    )?;
    let units_per_block = match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 2,
        _ => 8,
    };
    let blocks_per_row = k / ty.block_size();
    let row_bytes = blocks_per_row * ty.type_size();
    let chunk = (chunk_elems / k).clamp(1, n);
    let wtmp = dev.alloc(chunk * k, DType::BF16)?;
    let wt = wtmp.ptr();
    let qdq = format!("qdq_{}_bf16", ty.name());
    let mut n0 = 0;
    while n0 < n {
        let rows = (n - n0).min(chunk);
        let units = check_u32(rows * blocks_per_row * units_per_block)?;
        let wp = w + (n0 * row_bytes) as u64;
        // qdq_<T>_bf16(u32 units, const u8* w, u16* out)
        launch!(
            dev,
            MODULE,
            &qdq,
            cfg_1d(units, dev.max_blocks()),
            units,
            wp,
            wt
        )?;
        // Column-major, out[m, n0..n0 + rows]ᵀ (rows × m, ld n) = Wᵀ (rows × k, from the
        // row-major [rows, k] slice, ld k) · X (k × m, from row-major [m, k], ld k).
        let op = out + (n0 * 4) as u64;
        for (plane, beta) in [(hp, 0f32), (lp, 1f32)] {
            let alpha = 1f32;
            let blas_h = dev.blas();
            // SAFETY: every pointer addresses live device memory of the sizes described above;
            // the handle queues on the device's stream, after the kernels that fill them.
            unsafe {
                blas::gemm_ex(
                    *blas_h.handle(),
                    blas_sys::cublasOperation_t::CUBLAS_OP_T,
                    blas_sys::cublasOperation_t::CUBLAS_OP_N,
                    rows as i32,
                    mi,
                    ki,
                    &alpha as *const f32 as *const _,
                    wt as *const _,
                    blas_sys::cudaDataType::CUDA_R_16BF,
                    ki,
                    plane as *const _,
                    blas_sys::cudaDataType::CUDA_R_16BF,
                    ki,
                    &beta as *const f32 as *const _,
                    op as *mut _,
                    blas_sys::cudaDataType::CUDA_R_32F,
                    ni,
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| backend(format!("qmatmul: cublasGemmEx: {e}")))?;
        }
        n0 += rows;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor_core::HostData;

    /// The cuBLAS path in slices of 3 weight rows (the last slice shorter) against the
    /// matrix-vector kernels, on the GPU (skipped without one).
    #[test]
    fn sliced_dequantization_matches_the_matrix_vector_kernels() {
        let Ok(d) = crate::device(0) else {
            eprintln!("skipped: no CUDA device");
            return;
        };
        let dev = crate::as_cuda(&d).expect("a CUDA device");
        let (n, k, m) = (10usize, 512usize, 40usize);
        let wv: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        let xv: Vec<f32> = (0..m * k)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.02)
            .collect();
        for ty in SUPPORTED {
            let wq = tensor_core::quant::quantize(ty, &wv).unwrap();
            let w = crate::copy::from_host(&dev, HostData::U8(wq)).unwrap();
            let x = crate::copy::from_host(&dev, HostData::F32(xv.clone())).unwrap();
            let a = dev.alloc(m * n, DType::F32).unwrap();
            let b = dev.alloc(m * n, DType::F32).unwrap();
            matvec(&dev, ty, w.ptr(), n, k, x.ptr(), m, a.ptr()).unwrap();
            dequant_gemm(&dev, ty, w.ptr(), n, k, x.ptr(), m, b.ptr(), 3 * k).unwrap();
            let l = Layout::contiguous(m * n);
            let a = crate::copy::to_host(&dev, &a, &l).unwrap().to_f64_vec();
            let b = crate::copy::to_host(&dev, &b, &l).unwrap().to_f64_vec();
            let scale = a.iter().fold(0f64, |s, v| s.max(v.abs()));
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-2 * scale,
                    "{ty}: out[{i}]: matrix-vector {p}, cuBLAS {q} (scale {scale})"
                );
            }
        }
    }
}
