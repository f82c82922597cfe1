//! Small dense products for the attention kernels: `C (+)= A · B` on blocks of a few dozen
//! rows and columns that already sit in cache, where a packing GEMM would cost more than it
//! saves. `A` is read by rows (one broadcast per multiply-add column), `B` by rows of `W`
//! contiguous elements, and an `R × W` accumulator tile stays in vector registers.
//!
//! Each tile is its own function ([`Simd::tile`]): AVX-512 and AVX2 tiles use intrinsics
//! ([`x86`]), the baseline tile is plain loops left to the auto-vectoriser.

use super::math::{Float, Simd, TileArgs};

/// Rows of the register tile.
const RB: usize = 4;

/// A row-major matrix view: element `(i, j)` is `data[i * ld + j]` (the `B` operand).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub ld: usize,
}

/// A strided matrix view: element `(i, k)` is `data[i * rs + k * cs]` (the `A` operand, read
/// one element at a time, so a transposed view costs nothing).
#[derive(Clone, Copy)]
pub(crate) struct AMat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// The portable body of [`Simd::tile`]: `c[r][0..W] = (c if acc) + Σ_k a[r][k] · b[k][0..W]`,
/// `r < R`.
#[inline(always)]
pub(crate) fn tile_body<T: Float, M: Simd, const R: usize, const W: usize>(t: TileArgs<'_, T>) {
    let TileArgs {
        a,
        a_rs,
        a_cs,
        b,
        ldb,
        kd,
        c,
        ldc,
        acc,
    } = t;
    let mut tt = [[T::ZERO; W]; R];
    if acc {
        for (r, row) in tt.iter_mut().enumerate() {
            row.copy_from_slice(&c[r * ldc..r * ldc + W]);
        }
    }
    for k in 0..kd {
        let brow: &[T; W] = b[k * ldb..k * ldb + W]
            .try_into()
            .expect("tile: B row slice has W elements");
        for (r, row) in tt.iter_mut().enumerate() {
            let x = a[r * a_rs + k * a_cs];
            for (o, &y) in row.iter_mut().zip(brow) {
                *o = M::madd(x, y, *o);
            }
        }
    }
    for (r, row) in tt.iter().enumerate() {
        c[r * ldc..r * ldc + W].copy_from_slice(row);
    }
}

/// Register tiles written with x86 intrinsics: `R × NV` vector accumulators, `NV` loads of a
/// `B` row and `R` broadcasts of `A` per step of `k`. (Plain loops would be shorter, but LLVM
/// does not reliably keep their accumulators in registers for every tile shape.)
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::TileArgs;
    use std::arch::x86_64::*;

    macro_rules! simd_tile {
        ($name:ident, $feat:literal, $t:ty, $v:ty, $lanes:literal,
         $zero:ident, $load:ident, $store:ident, $set1:ident, $fmadd:ident) => {
            /// One `R × W` register tile (`W` a multiple of the vector width, at most four
            /// vectors); see [`TileArgs`]. Slice lengths are checked up front (panicking on a
            /// caller bug), so the raw accesses below stay in bounds.
            ///
            /// # Safety
            #[doc = concat!("The CPU must support ", $feat, ".")]
            #[target_feature(enable = $feat)]
            #[inline(never)]
            pub(crate) unsafe fn $name<const R: usize, const W: usize>(t: TileArgs<'_, $t>) {
                const L: usize = $lanes;
                let nv = W / L;
                assert!(W % L == 0 && (1..=4).contains(&nv) && R > 0, "tile shape");
                let TileArgs {
                    a,
                    a_rs,
                    a_cs,
                    b,
                    ldb,
                    kd,
                    c,
                    ldc,
                    acc,
                } = t;
                if kd > 0 {
                    assert!(
                        a.len() > (R - 1) * a_rs + (kd - 1) * a_cs,
                        "tile: A too short"
                    );
                    assert!(b.len() >= (kd - 1) * ldb + W, "tile: B too short");
                }
                assert!(c.len() >= (R - 1) * ldc + W, "tile: C too short");
                let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
                // SAFETY (for every raw access below): offsets are bounded by the length
                // checks above — A(r, k) for r < R, k < kd is at most (R−1)·a_rs + (kd−1)·a_cs,
                // rows k < kd of B reach
                // (kd−1)·ldb + W, rows r < R of C reach (R−1)·ldc + W — and the target features
                // are guaranteed by this function's contract.
                unsafe {
                    let mut tt = [[$zero(); 4]; R];
                    if acc {
                        for (r, row) in tt.iter_mut().enumerate() {
                            for (v, x) in row.iter_mut().enumerate().take(nv) {
                                *x = $load(cp.add(r * ldc + v * L));
                            }
                        }
                    }
                    for k in 0..kd {
                        let brow = bp.add(k * ldb);
                        let bv: [$v; 4] = std::array::from_fn(|v| {
                            if v < nv {
                                $load(brow.add(v * L))
                            } else {
                                $zero()
                            }
                        });
                        for (r, row) in tt.iter_mut().enumerate() {
                            let x = $set1(*ap.add(r * a_rs + k * a_cs));
                            for (acc, &y) in row.iter_mut().zip(&bv).take(nv) {
                                *acc = $fmadd(x, y, *acc);
                            }
                        }
                    }
                    for (r, row) in tt.iter().enumerate() {
                        for (v, &x) in row.iter().enumerate().take(nv) {
                            $store(cp.add(r * ldc + v * L), x);
                        }
                    }
                }
            }
        };
    }

    simd_tile!(
        avx512_f32,
        "avx512f,avx2,fma",
        f32,
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps
    );
    simd_tile!(
        avx512_f64,
        "avx512f,avx2,fma",
        f64,
        __m512d,
        8,
        _mm512_setzero_pd,
        _mm512_loadu_pd,
        _mm512_storeu_pd,
        _mm512_set1_pd,
        _mm512_fmadd_pd
    );
    simd_tile!(
        avx2_f32,
        "avx2,fma",
        f32,
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps
    );
    simd_tile!(
        avx2_f64,
        "avx2,fma",
        f64,
        __m256d,
        4,
        _mm256_setzero_pd,
        _mm256_loadu_pd,
        _mm256_storeu_pd,
        _mm256_set1_pd,
        _mm256_fmadd_pd
    );
}

/// Sum of `LANES` partial results, as a tree (short dependency chains).
#[inline(always)]
pub(crate) fn hsum<T: Float>(mut a: [T; 16]) -> T {
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            a[l] += a[l + w];
        }
    }
    a[0]
}

/// `Σ_k a[ao + k·acs] · b[bo + k·bs]` over `k < kd`, with independent partial sums so that it
/// is not one long chain of dependent multiply-adds (vectorised when both are contiguous).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dot<T: Float, M: Simd>(
    a: &[T],
    ao: usize,
    acs: usize,
    b: &[T],
    bo: usize,
    bs: usize,
    kd: usize,
) -> T {
    let mut acc = [T::ZERO; 16];
    if acs == 1 && bs == 1 {
        let (a, b) = (&a[ao..ao + kd], &b[bo..bo + kd]);
        let (mut ac, mut bc) = (a.chunks_exact(16), b.chunks_exact(16));
        for (x, y) in (&mut ac).zip(&mut bc) {
            for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
                *s = M::madd(x, y, *s);
            }
        }
        for ((s, &x), &y) in acc.iter_mut().zip(ac.remainder()).zip(bc.remainder()) {
            *s = M::madd(x, y, *s);
        }
    } else {
        for k in 0..kd {
            let s = &mut acc[k % 4];
            *s = M::madd(a[ao + k * acs], b[bo + k * bs], *s);
        }
    }
    hsum(acc)
}

/// Columns `0..w` of `C` for rows `0..m`, `w` narrower than one vector: one dot product per
/// element.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn edge<T: Float, M: Simd>(
    m: usize,
    w: usize,
    a: AMat<'_, T>,
    b: Mat<'_, T>,
    kd: usize,
    c: &mut [T],
    ldc: usize,
    acc: bool,
) {
    for i in 0..m {
        for (jj, o) in c[i * ldc..i * ldc + w].iter_mut().enumerate() {
            let s = dot::<T, M>(a.data, i * a.rs, a.cs, b.data, jj, b.ld, kd);
            *o = if acc { *o + s } else { s };
        }
    }
}

/// Columns `0..W·⌊n/W⌋` in `W`-wide tiles, rows in steps of `RB` then 1; returns the
/// number of columns done.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn strips<T: Float, M: Simd, const W: usize>(
    s: M,
    m: usize,
    n: usize,
    kd: usize,
    a: AMat<'_, T>,
    b: Mat<'_, T>,
    c: &mut [T],
    ldc: usize,
    acc: bool,
) -> usize {
    let full = n / W * W;
    for j in (0..full).step_by(W) {
        let mut i = 0;
        while i + RB <= m {
            s.tile::<T, RB, W>(TileArgs {
                a: &a.data[i * a.rs..],
                a_rs: a.rs,
                a_cs: a.cs,
                b: &b.data[j..],
                ldb: b.ld,
                kd,
                c: &mut c[i * ldc + j..],
                ldc,
                acc,
            });
            i += RB;
        }
        while i < m {
            s.tile::<T, 1, W>(TileArgs {
                a: &a.data[i * a.rs..],
                a_rs: a.rs,
                a_cs: a.cs,
                b: &b.data[j..],
                ldb: b.ld,
                kd,
                c: &mut c[i * ldc + j..],
                ldc,
                acc,
            });
            i += 1;
        }
    }
    full
}

/// Wide strips of `W` columns, then one-vector strips of `V`, then a scalar edge.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_wv<T: Float, M: Simd, const W: usize, const V: usize>(
    s: M,
    m: usize,
    n: usize,
    kd: usize,
    a: AMat<'_, T>,
    b: Mat<'_, T>,
    c: &mut [T],
    ldc: usize,
    acc: bool,
) {
    let mut done = strips::<T, M, W>(s, m, n, kd, a, b, c, ldc, acc);
    let bv = Mat {
        data: &b.data[done..],
        ld: b.ld,
    };
    done += strips::<T, M, V>(s, m, n - done, kd, a, bv, &mut c[done..], ldc, acc);
    if done < n {
        let be = Mat {
            data: &b.data[done..],
            ld: b.ld,
        };
        edge::<T, M>(m, n - done, a, be, kd, &mut c[done..], ldc, acc);
    }
}

/// `C[m × n] = (C if acc) + A[m × kd] · B[kd × n]`: `A` any strides, `B` and `C` row-major
/// with leading dimensions `b.ld`, `ldc`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Float, M: Simd>(
    s: M,
    m: usize,
    n: usize,
    kd: usize,
    a: AMat<'_, T>,
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
    // Tiles of RB rows × W columns: 16 of the 32 zmm registers hold accumulators on
    // AVX-512, 12 of the 16 ymm/xmm registers on AVX2 and SSE2.
    let f32 = std::mem::size_of::<T>() == 4;
    match (M::VBYTES, f32) {
        (64, true) => gemm_wv::<T, M, 64, 16>(s, m, n, kd, a, b, c, ldc, acc),
        (64, false) => gemm_wv::<T, M, 32, 8>(s, m, n, kd, a, b, c, ldc, acc),
        (32, true) => gemm_wv::<T, M, 24, 8>(s, m, n, kd, a, b, c, ldc, acc),
        (32, false) => gemm_wv::<T, M, 12, 4>(s, m, n, kd, a, b, c, ldc, acc),
        (_, true) => gemm_wv::<T, M, 12, 4>(s, m, n, kd, a, b, c, ldc, acc),
        (_, false) => gemm_wv::<T, M, 6, 2>(s, m, n, kd, a, b, c, ldc, acc),
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
        a_rs: usize,
        a_cs: usize,
        b: &'a [T],
        ldb: usize,
        c: Vec<T>,
        ldc: usize,
        acc: bool,
    }

    impl<T: Float> Kernel for G<'_, T> {
        type Out = Vec<T>;
        #[inline(always)]
        fn run<M: Simd>(mut self, s: M) -> Vec<T> {
            gemm::<T, M>(
                s,
                self.m,
                self.n,
                self.k,
                AMat {
                    data: self.a,
                    rs: self.a_rs,
                    cs: self.a_cs,
                },
                Mat {
                    data: self.b,
                    ld: self.ldb,
                },
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

    /// Every instruction set's tiles against a scalar f64 loop.
    fn check<T: Float + Into<f64>>(tol: f64) {
        // Shapes straddling every tile boundary (4 rows; 64/32/24/12/6 columns and their
        // one-vector strips).
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 17, 5),
            (4, 64, 64),
            (7, 80, 33),
            (9, 130, 64),
            (64, 64, 64),
            (6, 27, 7),
            (5, 3, 0),
        ] {
            let (ldb, ldc) = (n + 5, n + 2);
            let a: Vec<T> = (0..(m + 3) * (k + 3))
                .map(|i| T::from_f64(val(i)))
                .collect();
            let b: Vec<T> = (0..k * ldb).map(|i| T::from_f64(val(i + 1000))).collect();
            let c0: Vec<T> = (0..m * ldc).map(|i| T::from_f64(val(i + 5000))).collect();
            // A row-major (padded rows), and A transposed (column-major, padded columns).
            for ((a_rs, a_cs), acc) in [
                ((k + 3, 1), false),
                ((1, m + 3), true),
                ((k + 3, 1), true),
                ((1, m + 3), false),
            ] {
                let mut want = c0.clone();
                for i in 0..m {
                    for j in 0..n {
                        let mut s: f64 = if acc { c0[i * ldc + j].into() } else { 0.0 };
                        for kk in 0..k {
                            let (x, y): (f64, f64) =
                                (a[i * a_rs + kk * a_cs].into(), b[kk * ldb + j].into());
                            s += x * y;
                        }
                        want[i * ldc + j] = T::from_f64(s);
                    }
                }
                for isa in Isa::available() {
                    let g = G {
                        m,
                        n,
                        k,
                        a: &a,
                        a_rs,
                        a_cs,
                        b: &b,
                        ldb,
                        c: c0.clone(),
                        ldc,
                        acc,
                    };
                    let got = dispatch_on(isa, g);
                    for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                        let (gf, wf): (f64, f64) = ((*g).into(), (*w).into());
                        assert!(
                            (gf - wf).abs() <= tol * (1.0 + wf.abs()),
                            "{isa:?} m={m} n={n} k={k} a=({a_rs},{a_cs}) acc={acc} at {idx}: {g:?} vs {w:?}"
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
}
