//! Small dense products for the attention kernels: `C (+)= A · B` on blocks of a few dozen
//! rows and columns that already sit in cache, where a packing GEMM would cost more than it
//! saves. `A` is read by rows (one broadcast per multiply-add column), `B` by rows of `W`
//! contiguous elements, and an `RB × W` accumulator tile stays in vector registers.
//!
//! Everything here is `#[inline(always)]`: it is compiled inside the caller's
//! `#[target_feature]` context (see [`super::math::dispatch`]).

use super::math::{Float, Madd};

/// Rows of the register tile.
const RB: usize = 4;

/// A row-major matrix view: element `(i, j)` is `data[i * ld + j]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub ld: usize,
}

/// `RB × W` tile: `c[r][0..W] = (c[r][0..W] if acc) + Σ_k a[r][k] · b[k][0..W]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<T: Float, M: Madd, const R: usize, const W: usize>(
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    kd: usize,
    c: &mut [T],
    ldc: usize,
    acc: bool,
) {
    let mut t = [[T::ZERO; W]; R];
    if acc {
        for (r, row) in t.iter_mut().enumerate() {
            row.copy_from_slice(&c[r * ldc..r * ldc + W]);
        }
    }
    let arows: [&[T]; R] = std::array::from_fn(|r| &a[r * lda..r * lda + kd]);
    for k in 0..kd {
        let brow: &[T; W] = b[k * ldb..k * ldb + W]
            .try_into()
            .expect("tile: B row slice has W elements");
        for (row, ar) in t.iter_mut().zip(&arows) {
            let x = ar[k];
            for (o, &y) in row.iter_mut().zip(brow) {
                *o = M::madd(x, y, *o);
            }
        }
    }
    for (r, row) in t.iter().enumerate() {
        c[r * ldc..r * ldc + W].copy_from_slice(row);
    }
}

/// Columns `j0..j0+w` of `C` for rows `0..m`, `w < W`: the narrow edge of a product.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn edge<T: Float, M: Madd>(
    m: usize,
    w: usize,
    a: Mat<'_, T>,
    b: &[T],
    ldb: usize,
    kd: usize,
    c: &mut [T],
    ldc: usize,
    acc: bool,
) {
    for i in 0..m {
        let ar = &a.data[i * a.ld..i * a.ld + kd];
        let cr = &mut c[i * ldc..i * ldc + w];
        if !acc {
            cr.fill(T::ZERO);
        }
        for (k, &x) in ar.iter().enumerate() {
            for (o, &y) in cr.iter_mut().zip(&b[k * ldb..k * ldb + w]) {
                *o = M::madd(x, y, *o);
            }
        }
    }
}

/// Column strip `j0..j0+W·⌊n/W⌋` handled by `W`-wide tiles, rows in steps of `RB` then 1.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn strips<T: Float, M: Madd, const W: usize>(
    m: usize,
    n: usize,
    kd: usize,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    c: &mut [T],
    ldc: usize,
    acc: bool,
) -> usize {
    let full = n / W * W;
    let mut j = 0;
    while j < full {
        let mut i = 0;
        while i + RB <= m {
            tile::<T, M, RB, W>(
                &a.data[i * a.ld..],
                a.ld,
                &b.data[j..],
                b.ld,
                kd,
                &mut c[i * ldc + j..],
                ldc,
                acc,
            );
            i += RB;
        }
        while i < m {
            tile::<T, M, 1, W>(
                &a.data[i * a.ld..],
                a.ld,
                &b.data[j..],
                b.ld,
                kd,
                &mut c[i * ldc + j..],
                ldc,
                acc,
            );
            i += 1;
        }
        j += W;
    }
    full
}

/// `C[m × n] = (C if acc) + A[m × kd] · B[kd × n]`, all row-major with leading dimensions
/// `a.ld`, `b.ld`, `ldc`. Tiles are 64 bytes × 4 wide (then 64 bytes, then scalar edges).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Float, M: Madd>(
    m: usize,
    n: usize,
    kd: usize,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    c: &mut [T],
    ldc: usize,
    acc: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if kd == 0 {
        if !acc {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(T::ZERO);
            }
        }
        return;
    }
    // Register budget: RB rows × 4 vectors of 64 bytes = 16 accumulators.
    let done = if std::mem::size_of::<T>() == 4 {
        let d = strips::<T, M, 64>(m, n, kd, a, b, c, ldc, acc);
        d + strips::<T, M, 16>(
            m,
            n - d,
            kd,
            a,
            Mat {
                data: &b.data[d..],
                ld: b.ld,
            },
            &mut c[d..],
            ldc,
            acc,
        )
    } else {
        let d = strips::<T, M, 32>(m, n, kd, a, b, c, ldc, acc);
        d + strips::<T, M, 8>(
            m,
            n - d,
            kd,
            a,
            Mat {
                data: &b.data[d..],
                ld: b.ld,
            },
            &mut c[d..],
            ldc,
            acc,
        )
    };
    if done < n {
        edge::<T, M>(m, n - done, a, &b.data[done..], b.ld, kd, &mut c[done..], ldc, acc);
    }
}

/// `dst[j][i] = src[i][j]` for an `m × n` block (`src` row stride `lds`, `dst` row stride `ldd`).
#[inline(always)]
pub(crate) fn transpose<T: Copy>(m: usize, n: usize, src: &[T], lds: usize, dst: &mut [T], ldd: usize) {
    // 8×8 sub-blocks keep both sides within a few cache lines.
    const S: usize = 8;
    for i0 in (0..m).step_by(S) {
        for j0 in (0..n).step_by(S) {
            for i in i0..(i0 + S).min(m) {
                for j in j0..(j0 + S).min(n) {
                    dst[j * ldd + i] = src[i * lds + j];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::math::{dispatch_on, Isa, Kernel};
    use super::*;

    struct G<'a, T> {
        m: usize,
        n: usize,
        k: usize,
        a: &'a [T],
        lda: usize,
        b: &'a [T],
        ldb: usize,
        c: Vec<T>,
        ldc: usize,
        acc: bool,
    }

    impl<T: Float> Kernel for G<'_, T> {
        type Out = Vec<T>;
        #[inline(always)]
        fn run<M: Madd>(mut self) -> Vec<T> {
            gemm::<T, M>(
                self.m,
                self.n,
                self.k,
                Mat { data: self.a, ld: self.lda },
                Mat { data: self.b, ld: self.ldb },
                &mut self.c,
                self.ldc,
                self.acc,
            );
            self.c
        }
    }

    fn val(i: usize) -> f64 {
        ((i * 7919) % 263) as f64 / 131.0 - 1.0
    }

    fn check<T: Float + Into<f64>>(tol: f64) {
        // Shapes straddling every tile boundary (4 rows, 64/16 or 32/8 columns).
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 17, 5),
            (4, 64, 64),
            (7, 80, 33),
            (9, 130, 64),
            (64, 64, 64),
            (5, 3, 0),
        ] {
            let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
            let a: Vec<T> = (0..m * lda).map(|i| T::from_f64(val(i))).collect();
            let b: Vec<T> = (0..k * ldb).map(|i| T::from_f64(val(i + 1000))).collect();
            let c0: Vec<T> = (0..m * ldc).map(|i| T::from_f64(val(i + 5000))).collect();
            for acc in [false, true] {
                let mut want = c0.clone();
                for i in 0..m {
                    for j in 0..n {
                        let mut s: f64 = if acc { c0[i * ldc + j].into() } else { 0.0 };
                        for kk in 0..k {
                            let (x, y): (f64, f64) = (a[i * lda + kk].into(), b[kk * ldb + j].into());
                            s += x * y;
                        }
                        want[i * ldc + j] = T::from_f64(s);
                    }
                }
                for isa in Isa::available() {
                    let got = dispatch_on(
                        isa,
                        G { m, n, k, a: &a, lda, b: &b, ldb, c: c0.clone(), ldc, acc },
                    );
                    for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                        let (gf, wf): (f64, f64) = ((*g).into(), (*w).into());
                        assert!(
                            (gf - wf).abs() <= tol * (1.0 + wf.abs()),
                            "{isa:?} m={m} n={n} k={k} acc={acc} at {idx}: {g:?} vs {w:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_matches_scalar_f32() {
        check::<f32>(2e-5);
    }

    #[test]
    fn gemm_matches_scalar_f64() {
        check::<f64>(1e-13);
    }

    #[test]
    fn transpose_blocks() {
        let (m, n) = (11, 19);
        let src: Vec<usize> = (0..m * (n + 1)).collect();
        let mut dst = vec![0usize; n * (m + 2)];
        transpose(m, n, &src, n + 1, &mut dst, m + 2);
        for i in 0..m {
            for j in 0..n {
                assert_eq!(dst[j * (m + 2) + i], src[i * (n + 1) + j]);
            }
        }
    }
}
