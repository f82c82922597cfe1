//! Batched matmul on the CPU: `[...batch, m, k] · [...batch, k, n] → [...batch, m, n]`.
//!
//! f32 runs on our own packed AVX-512 GEMM ([`crate::gemm_f32`]); bf16 and f16 go through the
//! same kernel (packing widens them to f32, the f32 result is rounded back once), so half
//! matmuls accumulate in f32 like PyTorch's CPU kernels. f64 uses the `gemm` crate.
//!
//! Operands are arbitrary strided views: transposed operands are consumed in place by the
//! packing routines, never copied. A batch whose right operand is broadcast (stride 0, the
//! `x · Wᵀ` of a linear layer) and whose left operand stacks into one tall matrix runs as a
//! single GEMM; small matrices in a large batch run one per thread.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;
use tensor_core::{Error, HostData, Layout, Result};

use crate::gemm_f32::{self, MatRef, PackElem};
use crate::storage::CpuStorage;

const OP: &str = "matmul";

/// Multiply-adds per matrix below which a batch is spread over threads one matrix each
/// (rather than each matrix over all threads).
const BATCH_PAR_MACS: usize = 192 * 192 * 192;

/// `lhs · rhs` over matching batch dims; see the module docs.
pub fn matmul(
    lhs: &CpuStorage,
    lhs_l: &Layout,
    rhs: &CpuStorage,
    rhs_l: &Layout,
) -> Result<CpuStorage> {
    let (ld, rd) = (lhs.data.dtype(), rhs.data.dtype());
    if ld != rd {
        return Err(Error::DTypeMismatch {
            op: OP,
            lhs: ld,
            rhs: rd,
        });
    }
    let p = Problem::new(lhs_l, rhs_l)?;
    let data = match (&lhs.data, &rhs.data) {
        (HostData::F32(a), HostData::F32(b)) => HostData::F32(p.run_f32(a, b)?),
        (HostData::BF16(a), HostData::BF16(b)) => {
            let out = p.run_f32(a, b)?;
            let mut h = vec![bf16::ZERO; out.len()];
            h.convert_from_f32_slice(&out);
            HostData::BF16(h)
        }
        (HostData::F16(a), HostData::F16(b)) => {
            let out = p.run_f32(a, b)?;
            let mut h = vec![f16::ZERO; out.len()];
            h.convert_from_f32_slice(&out);
            HostData::F16(h)
        }
        (HostData::F64(a), HostData::F64(b)) => HostData::F64(p.run_f64(a, b)?),
        _ => {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype: ld,
                expected: "f16, bf16, f32 or f64",
            })
        }
    };
    Ok(CpuStorage::new(data))
}

/// One matrix of the batch: where its operands start.
#[derive(Clone, Copy, Debug)]
struct Item {
    a_off: usize,
    b_off: usize,
}

/// The validated geometry of a batched product.
#[derive(Debug)]
struct Problem {
    m: usize,
    n: usize,
    k: usize,
    a_rs: usize,
    a_cs: usize,
    b_rs: usize,
    b_cs: usize,
    /// One entry per output matrix (after folding the batch into `m` where possible).
    items: Vec<Item>,
    /// Elements of one output matrix.
    out_len: usize,
}

impl Problem {
    fn new(lhs_l: &Layout, rhs_l: &Layout) -> Result<Problem> {
        let mismatch = || Error::ShapeMismatch {
            op: OP,
            lhs: lhs_l.shape().clone(),
            rhs: rhs_l.shape().clone(),
        };
        let (ld, rd) = (lhs_l.dims(), rhs_l.dims());
        let r = ld.len();
        if r < 2 || rd.len() != r || ld[..r - 2] != rd[..r - 2] || ld[r - 1] != rd[r - 2] {
            return Err(mismatch());
        }
        let (ls, rs) = (lhs_l.strides(), rhs_l.strides());
        let (m, k, n) = (ld[r - 2], ld[r - 1], rd[r - 1]);
        let batch = &ld[..r - 2];
        let mut p = Problem {
            m,
            n,
            k,
            a_rs: ls[r - 2],
            a_cs: ls[r - 1],
            b_rs: rs[r - 2],
            b_cs: rs[r - 1],
            items: Vec::new(),
            out_len: m * n,
        };
        let count: usize = batch.iter().product();
        if count == 0 {
            return Ok(p);
        }
        // A shared right operand (every batch stride 0) and a left operand whose batch dims
        // stack evenly onto its rows: the whole batch is one `(batch·m) × k` GEMM.
        let rhs_shared = batch.iter().zip(rs).all(|(&d, &s)| d == 1 || s == 0);
        if count > 1 && rhs_shared {
            let rows: Vec<(usize, usize)> =
                ld[..r - 1].iter().zip(ls).map(|(&d, &s)| (d, s)).collect();
            if let Some(stride) = stacked_stride(&rows) {
                p.m = m * count;
                p.a_rs = stride;
                p.out_len = p.m * n;
                p.items.push(Item {
                    a_off: lhs_l.offset(),
                    b_off: rhs_l.offset(),
                });
                return Ok(p);
            }
        }
        // Walk the batch multi-index, tracking both operands' offsets.
        p.items.reserve(count);
        let mut idx = vec![0usize; batch.len()];
        let (mut ao, mut bo) = (lhs_l.offset(), rhs_l.offset());
        for _ in 0..count {
            p.items.push(Item {
                a_off: ao,
                b_off: bo,
            });
            for d in (0..batch.len()).rev() {
                idx[d] += 1;
                ao += ls[d];
                bo += rs[d];
                if idx[d] < batch[d] {
                    break;
                }
                ao -= ls[d] * batch[d];
                bo -= rs[d] * batch[d];
                idx[d] = 0;
            }
        }
        Ok(p)
    }

    fn views<'a, T>(&self, a: &'a [T], b: &'a [T], it: Item) -> (MatRef<'a, T>, MatRef<'a, T>) {
        (
            MatRef {
                data: a,
                offset: it.a_off,
                rs: self.a_rs,
                cs: self.a_cs,
            },
            MatRef {
                data: b,
                offset: it.b_off,
                rs: self.b_rs,
                cs: self.b_cs,
            },
        )
    }

    /// Whether to give each thread whole matrices instead of sharing each matrix.
    fn batch_parallel(&self, threads: usize) -> bool {
        let macs = self.m.saturating_mul(self.n).saturating_mul(self.k);
        threads > 1 && self.items.len() > 1 && macs < BATCH_PAR_MACS
    }

    fn run_f32<T: PackElem>(&self, a: &[T], b: &[T]) -> Result<Vec<f32>> {
        let total = self.items.len() * self.out_len;
        if total == 0 {
            return Ok(Vec::new());
        }
        // No zero-fill: every product writes its whole `out_len` chunk.
        let mut out = crate::storage::uninit_vec::<f32>(total);
        let threads = rayon::current_num_threads();
        let one = |it: Item, c: &mut [std::mem::MaybeUninit<f32>], threads: usize| {
            let (av, bv) = self.views(a, b, it);
            gemm_f32::sgemm_uninit(self.m, self.n, self.k, av, bv, c, threads).map_err(backend_err)
        };
        if self.batch_parallel(threads) {
            out.par_chunks_mut(self.out_len)
                .zip(self.items.par_iter())
                .try_for_each(|(c, &it)| one(it, c, 1))?;
        } else {
            for (c, &it) in out.chunks_mut(self.out_len).zip(&self.items) {
                one(it, c, threads)?;
            }
        }
        // SAFETY: the chunks of `out_len` cover `out` (total = items · out_len), and each
        // succeeded `sgemm_uninit` wrote all `m · n = out_len` elements of its chunk.
        Ok(unsafe { crate::storage::assume_init(out) })
    }

    fn run_f64(&self, a: &[f64], b: &[f64]) -> Result<Vec<f64>> {
        let total = self.items.len() * self.out_len;
        let mut out = vec![0f64; total];
        if total == 0 || self.k == 0 {
            return Ok(out);
        }
        let threads = rayon::current_num_threads();
        let one = |it: Item, c: &mut [f64], threads: usize| -> Result<()> {
            let (av, bv) = self.views(a, b, it);
            if !av.fits(self.m, self.k) || !bv.fits(self.k, self.n) || c.len() < self.out_len {
                return Err(backend_err(
                    "operand view reaches outside its storage".into(),
                ));
            }
            let macs = self.m * self.n * self.k;
            let par = if threads > 1 && macs >= gemm_f32::PAR_MIN_MACS {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            // SAFETY: `fits` checked that every element the views address lies inside `a` and
            // `b`; `c` holds `m · n` elements written row-major (row stride n, column stride 1)
            // and does not alias the inputs (it is a fresh vector).
            unsafe {
                gemm::gemm(
                    self.m,
                    self.n,
                    self.k,
                    c.as_mut_ptr(),
                    1,
                    self.n as isize,
                    false,
                    a.as_ptr().add(it.a_off),
                    self.a_cs as isize,
                    self.a_rs as isize,
                    b.as_ptr().add(it.b_off),
                    self.b_cs as isize,
                    self.b_rs as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            };
            Ok(())
        };
        if self.batch_parallel(threads) {
            out.par_chunks_mut(self.out_len)
                .zip(self.items.par_iter())
                .try_for_each(|(c, &it)| one(it, c, 1))?;
        } else {
            for (c, &it) in out.chunks_mut(self.out_len).zip(&self.items) {
                one(it, c, threads)?;
            }
        }
        Ok(out)
    }
}

/// If the `(size, stride)` dims, outermost first, walk one evenly strided sequence (each
/// dim's stride is the next one's stride times its size; size-1 dims do not matter), the
/// stride of that sequence.
fn stacked_stride(dims: &[(usize, usize)]) -> Option<usize> {
    let live: Vec<(usize, usize)> = dims.iter().copied().filter(|&(d, _)| d != 1).collect();
    let Some(&(_, inner)) = live.last() else {
        return Some(0);
    };
    for w in live.windows(2) {
        let ((_, s0), (d1, s1)) = (w[0], w[1]);
        if s1.checked_mul(d1) != Some(s0) {
            return None;
        }
    }
    Some(inner)
}

fn backend_err(msg: String) -> Error {
    Error::Backend {
        backend: "cpu".into(),
        msg: format!("{OP}: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{noise, view};
    use tensor_core::{DType, Shape};

    fn storage(v: &[f64], dtype: DType) -> CpuStorage {
        CpuStorage::new(HostData::from_f64_slice(v, dtype))
    }

    /// Naive f64 batched product of two views of the same rank.
    fn reference(a: &[f64], al: &Layout, b: &[f64], bl: &Layout) -> Vec<f64> {
        let (av, bv) = (view(a, al), view(b, bl));
        let r = al.rank();
        let (m, k, n) = (al.dims()[r - 2], al.dims()[r - 1], bl.dims()[r - 1]);
        let batch: usize = al.dims()[..r - 2].iter().product();
        let mut out = vec![0.0; batch * m * n];
        for t in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    out[(t * m + i) * n + j] = (0..k)
                        .map(|p| av[(t * m + i) * k + p] * bv[(t * k + p) * n + j])
                        .sum();
                }
            }
        }
        out
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what} at {i}: got {g}, want {w}"
            );
        }
    }

    fn run(a: &[f64], al: &Layout, b: &[f64], bl: &Layout, dtype: DType, tol: f64, what: &str) {
        // Round the inputs to the dtype first so the reference sees the same values.
        let (sa, sb) = (storage(a, dtype), storage(b, dtype));
        let (ra, rb) = (sa.data.to_f64_vec(), sb.data.to_f64_vec());
        let out = matmul(&sa, al, &sb, bl).expect(what);
        assert_eq!(out.data.dtype(), dtype, "{what}: dtype");
        assert_close(
            &out.data.to_f64_vec(),
            &reference(&ra, al, &rb, bl),
            tol,
            what,
        );
    }

    /// Contiguous layout of `dims` with the last two dims stored transposed.
    fn transposed(dims: &[usize]) -> Layout {
        let r = dims.len();
        let mut stored = dims.to_vec();
        stored.swap(r - 2, r - 1);
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        Layout::contiguous(stored).permute(&perm)
    }

    #[test]
    fn all_float_dtypes_and_orientations() {
        for (m, k, n) in [
            (1, 7, 33),
            (7, 33, 1),
            (33, 129, 7),
            (64, 64, 64),
            (130, 40, 70),
        ] {
            let a = noise(m * k, 1);
            let b = noise(k * n, 2);
            let layouts = [
                (Layout::contiguous([m, k]), Layout::contiguous([k, n])),
                (transposed(&[m, k]), Layout::contiguous([k, n])),
                (Layout::contiguous([m, k]), transposed(&[k, n])),
                (transposed(&[m, k]), transposed(&[k, n])),
            ];
            for (al, bl) in &layouts {
                for (dtype, tol) in [
                    (DType::F32, 1e-5),
                    (DType::F64, 1e-12),
                    (DType::BF16, 1e-2),
                    (DType::F16, 2e-3),
                ] {
                    let what = format!("{dtype} {m}x{k}x{n} {:?} {:?}", al.strides(), bl.strides());
                    run(&a, al, &b, bl, dtype, tol, &what);
                }
            }
        }
    }

    #[test]
    fn batches_broadcasts_and_odd_strides() {
        let (m, k, n) = (9, 20, 11);
        let a = noise(4 * m * k, 3);
        let b = noise(4 * k * n, 4);
        // Shared right operand (stride-0 batch): folded into one tall GEMM.
        let al = Layout::contiguous([2, 2, m, k]);
        let bl = Layout::contiguous([k, n])
            .broadcast_as(&Shape::from([2, 2, k, n]))
            .unwrap();
        run(&a, &al, &b, &bl, DType::F32, 1e-5, "shared rhs");
        // Shared left operand.
        let al = Layout::contiguous([m, k])
            .broadcast_as(&Shape::from([4, m, k]))
            .unwrap();
        let bl = Layout::contiguous([4, k, n]);
        run(&a, &al, &b, &bl, DType::F32, 1e-5, "shared lhs");
        // Shared rhs but a left operand that cannot stack (batch of transposed matrices).
        let al = transposed(&[4, m, k]);
        let bl = Layout::contiguous([k, n])
            .broadcast_as(&Shape::from([4, k, n]))
            .unwrap();
        run(
            &a,
            &al,
            &b,
            &bl,
            DType::BF16,
            1e-2,
            "shared rhs, transposed lhs",
        );
        // Odd strides: every other column of a wider matrix, offset into the storage.
        let al = Layout::new(Shape::from([3, m, k / 2]), vec![m * k, k, 2], 1);
        let bl = Layout::new(Shape::from([3, k / 2, n]), vec![k * n, 2 * n, 1], 3);
        run(&a, &al, &b, &bl, DType::F32, 1e-5, "odd strides");
        run(&a, &al, &b, &bl, DType::F64, 1e-12, "odd strides f64");
        // Many small matrices (batch-parallel path) and an empty batch.
        let al = Layout::contiguous([64, 3, 5]);
        let bl = Layout::contiguous([64, 5, 2]);
        let a = noise(64 * 15, 5);
        let b = noise(64 * 10, 6);
        run(&a, &al, &b, &bl, DType::F32, 1e-5, "many small");
        let out = matmul(
            &storage(&[], DType::F32),
            &Layout::contiguous([0, 3, 5]),
            &storage(&[], DType::F32),
            &Layout::contiguous([0, 5, 2]),
        )
        .expect("empty batch");
        assert!(out.data.is_empty());
    }

    #[test]
    fn k_zero_gives_zeros() {
        for dtype in [DType::F32, DType::F64, DType::BF16] {
            let out = matmul(
                &storage(&[], dtype),
                &Layout::contiguous([2, 0]),
                &storage(&[], dtype),
                &Layout::contiguous([0, 3]),
            )
            .expect("k = 0");
            assert_eq!(out.data.to_f64_vec(), vec![0.0; 6]);
        }
    }

    #[test]
    fn errors_instead_of_panics() {
        let a = storage(&[1.0; 6], DType::F32);
        let l23 = Layout::contiguous([2, 3]);
        let l32 = Layout::contiguous([3, 2]);
        let b64 = storage(&[1.0; 6], DType::F64);
        assert!(matches!(
            matmul(&a, &l23, &b64, &l32),
            Err(Error::DTypeMismatch { .. })
        ));
        let i = storage(&[1.0; 6], DType::I64);
        assert!(matches!(
            matmul(&i, &l23, &i, &l32),
            Err(Error::UnsupportedDType { .. })
        ));
        assert!(matches!(
            matmul(&a, &l23, &a, &l23),
            Err(Error::ShapeMismatch { .. })
        ));
        let l1 = Layout::contiguous([6]);
        assert!(matches!(
            matmul(&a, &l1, &a, &l1),
            Err(Error::ShapeMismatch { .. })
        ));
        // A layout that reaches past its storage.
        let big = Layout::contiguous([3, 3]);
        let l33 = Layout::contiguous([3, 3]);
        assert!(matmul(&a, &big, &a, &l33).is_err());
        let b64s = storage(&[1.0; 6], DType::F64);
        assert!(matmul(&b64s, &big, &b64s, &l33).is_err());
    }
}
