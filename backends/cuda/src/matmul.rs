//! Batched matrix products on cuBLAS (`cublasGemmStridedBatchedEx`).
//!
//! cuBLAS is column-major: the row-major product `C = A·B` (`A: [m, k]`, `B: [k, n]`) is
//! computed as the column-major `Cᵀ = Bᵀ·Aᵀ`, i.e. a gemm of size `(n, m, k)` with B in the
//! first operand slot and A in the second. A row-major matrix with a unit column stride is a
//! column-major matrix of the transpose (`CUBLAS_OP_N`, leading dim = its row stride); one
//! with a unit row stride is column-major already (`CUBLAS_OP_T`, leading dim = its column
//! stride). So transposed operands are consumed in place; only an operand with neither unit
//! stride (or an unusable leading dim) is copied contiguous first.
//!
//! Batch dims: the longest run of innermost batch dims along which both operands advance by
//! one stride each (0 for a broadcast operand) becomes one strided-batched call; the remaining
//! outer batch dims loop on the host, unless that loop would be long, in which case each
//! operand whose own batch dims do not collapse to one stride is copied contiguous and the
//! whole batch is one call.
//!
//! Alignment: cuBLAS falls back to far slower kernels (4–6× on an H100) for 16-bit matrices
//! whose dims or rows are not multiples of 8 elements (16 bytes), as with a vocabulary of
//! 50257. A single large product of that kind runs on padded copies instead: m, k and n
//! rounded up to multiples of 8, the extra k zero (so the product is unchanged), C written
//! padded and copied out. That is a few passes at memory speed instead of a slow product.
//!
//! Precision: f32 computes with `CUBLAS_COMPUTE_32F` (true f32, never TF32), f64 with
//! `CUBLAS_COMPUTE_64F`, f16/bf16 in and out with f32 accumulation (`CUBLAS_COMPUTE_32F`),
//! with reduced-precision (16-bit) split-K reductions disallowed, so half results are the
//! f32 sums rounded once, like the CPU backend's. Integer dtypes are an error, as on the CPU.

use std::ffi::c_void;

use cudarc::cublas::sys;
use tensor_core::{DType, Error, Layout, Result};

use crate::error::{backend, drv};
use crate::{check_layout, CudaDevice, CudaStorage};

const OP: &str = "matmul";

/// Outer batch iterations above which non-collapsing operands are copied instead.
const MAX_OUTER_LOOP: usize = 32;

/// How one operand's matrix is laid out, as cuBLAS sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// Element (i, j) at `i·ld + j`.
    RowMajor(usize),
    /// Element (i, j) at `i + j·ld`.
    ColMajor(usize),
}

impl Form {
    /// The form of a `rows × cols` matrix with strides `(rs, cs)`, if cuBLAS can read it in
    /// place. Strides of size-1 dims are free; leading dims must fit cuBLAS' `int`.
    fn of(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<Form> {
        let fits = |ld: usize| i32::try_from(ld).is_ok();
        if cols <= 1 || cs == 1 {
            let ld = if rows <= 1 { cols.max(1) } else { rs };
            if ld >= cols.max(1) && fits(ld) {
                return Some(Form::RowMajor(ld));
            }
        }
        if rows <= 1 || rs == 1 {
            let ld = if cols <= 1 { rows.max(1) } else { cs };
            if ld >= rows.max(1) && fits(ld) {
                return Some(Form::ColMajor(ld));
            }
        }
        None
    }

    /// The cuBLAS operation and leading dim of this matrix's transpose as a column-major
    /// operand (what the `Cᵀ = Bᵀ·Aᵀ` formulation passes).
    fn op_ld(self) -> (sys::cublasOperation_t, i32) {
        match self {
            Form::RowMajor(ld) => (sys::cublasOperation_t::CUBLAS_OP_N, ld as i32),
            Form::ColMajor(ld) => (sys::cublasOperation_t::CUBLAS_OP_T, ld as i32),
        }
    }
}

/// One operand: its storage (the original or a contiguous copy), layout and matrix form.
struct Operand<'a> {
    copy: Option<CudaStorage>,
    orig: &'a CudaStorage,
    layout: Layout,
    form: Form,
}

impl<'a> Operand<'a> {
    fn new(dev: &CudaDevice, s: &'a CudaStorage, l: &Layout) -> Result<Operand<'a>> {
        let r = l.rank();
        let (d, st) = (l.dims(), l.strides());
        match Form::of(d[r - 2], d[r - 1], st[r - 2], st[r - 1]) {
            Some(form) => Ok(Operand {
                copy: None,
                orig: s,
                layout: l.clone(),
                form,
            }),
            None => Operand::contiguous(dev, s, l),
        }
    }

    /// The operand copied into a new contiguous buffer.
    fn contiguous(dev: &CudaDevice, s: &'a CudaStorage, l: &Layout) -> Result<Operand<'a>> {
        let c = crate::copy::copy_strided(dev, s, l)?;
        let layout = Layout::contiguous(l.shape().clone());
        let r = layout.rank();
        let (d, st) = (layout.dims(), layout.strides());
        let form = Form::of(d[r - 2], d[r - 1], st[r - 2], st[r - 1]).ok_or_else(|| {
            backend(format!(
                "matmul: a contiguous operand of shape {:?} has a leading dim beyond cuBLAS' int range",
                layout.dims()
            ))
        })?;
        Ok(Operand {
            copy: Some(c),
            orig: s,
            layout,
            form,
        })
    }

    fn storage(&self) -> &CudaStorage {
        self.copy.as_ref().unwrap_or(self.orig)
    }

    /// This single `rows × cols` matrix copied into a buffer of `rows_to × cols_to`
    /// (each at least as large, multiples of 8) whose lines start on 16-byte boundaries; the
    /// extra rows and columns are zero.
    fn padded(
        &self,
        dev: &CudaDevice,
        (rows, cols): (usize, usize),
        (rows_to, cols_to): (usize, usize),
    ) -> Result<Operand<'a>> {
        let s = self.storage();
        let esize = s.dtype.size_in_bytes();
        // Lines are rows of a row-major matrix, columns of a column-major one.
        let (lines, len, ld, lines_to, pitch) = match self.form {
            Form::RowMajor(ld) => (rows, cols, ld, rows_to, cols_to),
            Form::ColMajor(ld) => (cols, rows, ld, cols_to, rows_to),
        };
        let buf = if lines_to > lines || pitch > len {
            dev.zeros(lines_to * pitch, s.dtype)?
        } else {
            dev.alloc(lines_to * pitch, s.dtype)?
        };
        let src = s.ptr() + (self.layout.offset() * esize) as u64;
        pitched_copy(
            dev,
            src,
            ld * esize,
            buf.ptr(),
            pitch * esize,
            len * esize,
            lines,
        )?;
        let r = self.layout.rank();
        let mut dims = self.layout.dims().to_vec();
        dims[r - 2] = rows_to;
        dims[r - 1] = cols_to;
        let mut strides = vec![0; r];
        let form = match self.form {
            Form::RowMajor(_) => {
                strides[r - 2] = pitch;
                strides[r - 1] = 1;
                Form::RowMajor(pitch)
            }
            Form::ColMajor(_) => {
                strides[r - 2] = 1;
                strides[r - 1] = pitch;
                Form::ColMajor(pitch)
            }
        };
        Ok(Operand {
            copy: Some(buf),
            orig: self.orig,
            layout: Layout::new(tensor_core::Shape::from(dims), strides, 0),
            form,
        })
    }

    /// Whether cuBLAS sees this operand's lines start off 16-byte boundaries.
    fn misaligned(&self, esize: usize) -> bool {
        let ld = match self.form {
            Form::RowMajor(ld) | Form::ColMajor(ld) => ld,
        };
        let base = self.storage().ptr() as usize + self.layout.offset() * esize;
        !(ld * esize).is_multiple_of(ALIGN) || !base.is_multiple_of(ALIGN)
    }

    fn batch_strides(&self) -> &[usize] {
        &self.layout.strides()[..self.layout.rank() - 2]
    }

    /// Whether this operand's batch dims advance by one stride over the whole batch.
    fn batch_collapses(&self, batch: &[usize]) -> bool {
        split_batch(batch, &[self.batch_strides()]).outer_count() == 1
    }
}

/// Row alignment (bytes) below which cuBLAS leaves its fast kernels.
const ALIGN: usize = 16;
/// Products of at least this many multiply-adds pay for padding copies.
const PAD_MIN_MACS: usize = 1 << 28;

/// Copy `lines` lines of `width` bytes between device buffers with the given pitches (bytes),
/// on the device's stream.
fn pitched_copy(
    dev: &CudaDevice,
    src: u64,
    src_pitch: usize,
    dst: u64,
    dst_pitch: usize,
    width: usize,
    lines: usize,
) -> Result<()> {
    use cudarc::driver::sys as d;
    let p = d::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: d::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcHost: std::ptr::null(),
        srcDevice: src,
        srcArray: std::ptr::null_mut(),
        srcPitch: src_pitch,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: d::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: std::ptr::null_mut(),
        dstDevice: dst,
        dstArray: std::ptr::null_mut(),
        dstPitch: dst_pitch,
        WidthInBytes: width,
        Height: lines,
    };
    // SAFETY: both regions lie inside live device buffers (`lines` lines of `width` bytes at
    // the given pitches, which the callers sized), queued on the device's stream.
    unsafe { d::cuMemcpy2DAsync_v2(&p, dev.stream().cu_stream()) }
        .result()
        .map_err(drv("cuMemcpy2DAsync"))
}

/// The batch dims split into outer dims (looped on the host) and an inner run of `count`
/// matrices with one stride per operand.
#[derive(Debug)]
struct BatchSplit {
    /// Outer dims: (size, stride per operand); size-1 dims left out.
    outer: Vec<(usize, Vec<usize>)>,
    count: usize,
    strides: Vec<usize>,
}

impl BatchSplit {
    fn outer_count(&self) -> usize {
        self.outer.iter().map(|(d, _)| d).product()
    }
}

/// Collapse the innermost batch dims (skipping size-1 dims) while every operand's stride
/// along the next dim equals its inner stride times the run's length so far.
fn split_batch(batch: &[usize], strides: &[&[usize]]) -> BatchSplit {
    let mut count = 1usize;
    let mut inner = vec![0usize; strides.len()];
    let mut d = batch.len();
    while d > 0 {
        let size = batch[d - 1];
        if size != 1 {
            if count == 1 {
                for (o, s) in inner.iter_mut().zip(strides) {
                    *o = s[d - 1];
                }
            } else if !strides
                .iter()
                .zip(&inner)
                .all(|(s, &i)| Some(s[d - 1]) == i.checked_mul(count))
            {
                break;
            }
            count *= size;
        }
        d -= 1;
    }
    let outer = (0..d)
        .filter(|&j| batch[j] != 1)
        .map(|j| (batch[j], strides.iter().map(|s| s[j]).collect()))
        .collect();
    BatchSplit {
        outer,
        count,
        strides: inner,
    }
}

fn cublas_types(dt: DType) -> Result<(sys::cudaDataType, sys::cublasComputeType_t)> {
    use sys::cublasComputeType_t::{CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_64F};
    use sys::cudaDataType::{CUDA_R_16BF, CUDA_R_16F, CUDA_R_32F, CUDA_R_64F};
    Ok(match dt {
        DType::F16 => (CUDA_R_16F, CUBLAS_COMPUTE_32F),
        DType::BF16 => (CUDA_R_16BF, CUBLAS_COMPUTE_32F),
        DType::F32 => (CUDA_R_32F, CUBLAS_COMPUTE_32F),
        DType::F64 => (CUDA_R_64F, CUBLAS_COMPUTE_64F),
        dtype => {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype,
                expected: "f16, bf16, f32 or f64",
            })
        }
    })
}

fn int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| backend(format!("matmul: {what} = {v} is beyond cuBLAS' int range")))
}

/// `lhs · rhs` over matching batch dims; see the module docs.
pub(crate) fn matmul(
    dev: &CudaDevice,
    lhs: &CudaStorage,
    lhs_l: &Layout,
    rhs: &CudaStorage,
    rhs_l: &Layout,
) -> Result<CudaStorage> {
    if lhs.dtype != rhs.dtype {
        return Err(Error::DTypeMismatch {
            op: OP,
            lhs: lhs.dtype,
            rhs: rhs.dtype,
        });
    }
    let dtype = lhs.dtype;
    let (data_type, compute) = cublas_types(dtype)?;
    check_layout(lhs, lhs_l, OP)?;
    check_layout(rhs, rhs_l, OP)?;
    let (ld, rd) = (lhs_l.dims(), rhs_l.dims());
    let r = ld.len();
    if r < 2 || rd.len() != r || ld[..r - 2] != rd[..r - 2] || ld[r - 1] != rd[r - 2] {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: lhs_l.shape().clone(),
            rhs: rhs_l.shape().clone(),
        });
    }
    let (m, k, n) = (ld[r - 2], ld[r - 1], rd[r - 1]);
    let batch = &ld[..r - 2];
    let count: usize = batch.iter().product();
    let total = count * m * n;
    if total == 0 {
        return dev.alloc(0, dtype);
    }
    if k == 0 {
        return dev.zeros(total, dtype);
    }
    int("m", m)?;
    int("n", n)?;
    int("k", k)?;

    let mut a = Operand::new(dev, lhs, lhs_l)?;
    let mut b = Operand::new(dev, rhs, rhs_l)?;
    let mut split = split_batch(batch, &[a.batch_strides(), b.batch_strides()]);
    if split.outer_count() > MAX_OUTER_LOOP {
        if !a.batch_collapses(batch) {
            a = Operand::contiguous(dev, lhs, lhs_l)?;
        }
        if !b.batch_collapses(batch) {
            b = Operand::contiguous(dev, rhs, rhs_l)?;
        }
        split = split_batch(batch, &[a.batch_strides(), b.batch_strides()]);
    }
    let batch_count = int("batch", split.count)?;
    let esize = dtype.size_in_bytes() as u64;
    // One large 16-bit product with dims or rows off 16-byte boundaries: pad (see the module
    // docs). (gm, gk, gn) are the dims cuBLAS sees.
    let (mut gm, mut gk, mut gn) = (m, k, n);
    let pad = esize == 2
        && split.count == 1
        && split.outer_count() == 1
        && m.saturating_mul(n).saturating_mul(k) >= PAD_MIN_MACS
        && (m % 8 != 0 || k % 8 != 0 || n % 8 != 0 || a.misaligned(2) || b.misaligned(2));
    if pad {
        (gm, gk, gn) = (
            m.next_multiple_of(8),
            k.next_multiple_of(8),
            n.next_multiple_of(8),
        );
        if (gm, gk) != (m, k) || a.misaligned(2) {
            a = a.padded(dev, (m, k), (gm, gk))?;
        }
        if (gk, gn) != (k, n) || b.misaligned(2) {
            b = b.padded(dev, (k, n), (gk, gn))?;
        }
    }
    let (mi, ni, ki) = (int("m", gm)?, int("n", gn)?, int("k", gk)?);
    let out = dev.alloc(total, dtype)?;
    let padded_c = if pad {
        Some(dev.alloc(gm * gn, dtype)?)
    } else {
        None
    };
    // Cᵀ (n × m, ldc = n) = Bᵀ (n × k) · Aᵀ (k × m), in the dims cuBLAS sees.
    let (op_b, ldb) = b.form.op_ld();
    let (op_a, lda) = a.form.op_ld();
    let stride_b = split.strides[1] as i64;
    let stride_a = split.strides[0] as i64;
    let stride_c = (m * n) as i64;
    let (one32, zero32, one64, zero64) = (1.0f32, 0.0f32, 1.0f64, 0.0f64);
    let (alpha, beta): (*const c_void, *const c_void) = if dtype == DType::F64 {
        (
            &one64 as *const f64 as *const c_void,
            &zero64 as *const f64 as *const c_void,
        )
    } else {
        (
            &one32 as *const f32 as *const c_void,
            &zero32 as *const f32 as *const c_void,
        )
    };

    dev.context()
        .bind_to_thread()
        .map_err(drv("binding the CUDA context"))?;
    let blas = dev.blas();
    let handle = *blas.handle();
    // SAFETY: a live handle; sets a mode flag only.
    unsafe {
        sys::cublasSetMathMode(
            handle,
            sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
        )
    }
    .result()
    .map_err(drv("cublasSetMathMode"))?;

    let (a_base, b_base) = (
        a.storage().ptr() + a.layout.offset() as u64 * esize,
        b.storage().ptr() + b.layout.offset() as u64 * esize,
    );
    let outer_count = split.outer_count();
    let mut idx = vec![0usize; split.outer.len()];
    for o in 0..outer_count {
        // Element offsets of this outer batch index in each operand.
        let (mut ao, mut bo) = (0usize, 0usize);
        for (&i, (_, s)) in idx.iter().zip(&split.outer) {
            ao += i * s[0];
            bo += i * s[1];
        }
        let c_ptr = match &padded_c {
            Some(c) => c.ptr(),
            None => out.ptr() + (o * split.count * m * n) as u64 * esize,
        };
        let a_ptr = a_base + ao as u64 * esize;
        let b_ptr = b_base + bo as u64 * esize;
        // SAFETY: every matrix read lies inside its storage (layouts checked above, leading
        // dims and strides taken from those layouts), C is a fresh buffer of `total`
        // elements, alpha/beta point at host scalars of the compute type, all on the
        // device's stream (the handle is bound to it).
        unsafe {
            sys::cublasGemmStridedBatchedEx(
                handle,
                op_b,
                op_a,
                ni,
                mi,
                ki,
                alpha,
                b_ptr as *const c_void,
                data_type,
                ldb,
                stride_b,
                a_ptr as *const c_void,
                data_type,
                lda,
                stride_a,
                beta,
                c_ptr as *mut c_void,
                data_type,
                ni,
                stride_c,
                batch_count,
                compute,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        }
        .result()
        .map_err(|e| {
            backend(format!(
                "cublasGemmStridedBatchedEx ({dtype}, m {m}, n {n}, k {k}, batch {}): {e:?}",
                split.count
            ))
        })?;
        // Next outer index (row-major).
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < split.outer[d].0 {
                break;
            }
            idx[d] = 0;
        }
    }
    if let Some(c) = &padded_c {
        pitched_copy(dev, c.ptr(), gn * 2, out.ptr(), n * 2, n * 2, m)?;
    }
    // Copies made above go back to the pool when dropped here, while the products may
    // still be queued: the pool hands memory out again only to later work on this stream.
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_of_matrices() {
        // Contiguous [3, 4]: row-major, ld 4.
        assert_eq!(Form::of(3, 4, 4, 1), Some(Form::RowMajor(4)));
        // Its transpose [4, 3] with strides (1, 4): column-major, ld 4.
        assert_eq!(Form::of(4, 3, 1, 4), Some(Form::ColMajor(4)));
        // A narrowed view with padded rows.
        assert_eq!(Form::of(5, 7, 12, 1), Some(Form::RowMajor(12)));
        // Vectors: any stride on the size-1 dim.
        assert_eq!(Form::of(1, 7, 0, 1), Some(Form::RowMajor(7)));
        assert_eq!(Form::of(7, 1, 1, 0), Some(Form::RowMajor(1)));
        assert_eq!(Form::of(7, 1, 3, 0), Some(Form::RowMajor(3)));
        // Neither stride is 1, or the leading dim is too small: needs a copy.
        assert_eq!(Form::of(3, 4, 8, 2), None);
        assert_eq!(Form::of(3, 4, 2, 1), None);
        assert_eq!(Form::of(3, 4, 0, 1), None);
    }

    #[test]
    fn batch_splits() {
        // [2, 3] batch, both contiguous: one run of 6.
        let s = split_batch(&[2, 3], &[&[60, 20], &[30, 10]]);
        assert_eq!((s.count, s.outer_count()), (6, 1));
        assert_eq!(s.strides, [20, 10]);
        // Broadcast rhs (all strides 0) collapses too.
        let s = split_batch(&[2, 3], &[&[60, 20], &[0, 0]]);
        assert_eq!((s.count, s.outer_count()), (6, 1));
        // [2, 1, 4, 5] x [3, 5, 2]: inner run of 3, outer loop of 2.
        let s = split_batch(&[2, 3], &[&[20, 0], &[0, 10]]);
        assert_eq!((s.count, s.outer_count()), (3, 2));
        assert_eq!(s.strides, [0, 10]);
        assert_eq!(s.outer, vec![(2, vec![20, 0])]);
        // Size-1 dims are skipped wherever they are.
        let s = split_batch(&[1, 4, 1], &[&[7, 5, 3], &[0, 9, 1]]);
        assert_eq!((s.count, s.outer_count()), (4, 1));
        assert_eq!(s.strides, [5, 9]);
        // No batch dims.
        let s = split_batch(&[], &[&[], &[]]);
        assert_eq!((s.count, s.outer_count()), (1, 1));
    }
}
