//! Building blocks of the fused kernels: the [`Float`] compute types (f32, f64) with an exp
//! that LLVM can vectorise, the [`Io`] storage types read and written through them, the
//! vectorised row reductions, and the run-time choice of instruction set ([`dispatch`]).
//!
//! Kernels are generic Rust written so that it auto-vectorises; [`dispatch`] runs a kernel
//! body inside a `#[target_feature]` function with a [`Simd`] token, so the same source is
//! compiled for AVX-512, for AVX2+FMA and for the baseline target, and the CPU picks at run
//! time (never `target-cpu=native`). Only the register tiles of small products are written
//! with intrinsics (`tile::x86`), reached through the token.

use std::ops::{Add, AddAssign, Div, Mul, Sub};
use std::sync::OnceLock;

use half::{bf16, f16};

/// A type the fused kernels compute in: f32 (also for the 16-bit floats) or f64.
pub(crate) trait Float:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + std::fmt::Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    fn from_f64(v: f64) -> Self;
    fn is_finite(self) -> bool;
    fn sqrt(self) -> Self;
    fn ln(self) -> Self;
    /// `exp` as branch-free arithmetic (see [`exp_f32`], [`exp_f64`]), so loops over it
    /// vectorise; `M` picks fused or plain multiply-adds for the polynomial.
    fn exp<M: Simd>(self) -> Self;
    /// The fused multiply-add `self · b + c` (one rounding). Only call it where FMA is
    /// enabled: without it this is a libm call. Kernels reach it through [`Simd::madd`].
    fn fma(self, b: Self, c: Self) -> Self;
    /// An AVX-512 register tile of this type ([`super::tile::x86`]).
    ///
    /// # Safety
    /// The CPU must support avx512f, avx2 and fma.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx512<const R: usize, const W: usize>(t: TileArgs<'_, Self>);
    /// An AVX2 register tile of this type.
    ///
    /// # Safety
    /// The CPU must support avx2 and fma.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx2<const R: usize, const W: usize>(t: TileArgs<'_, Self>);
    /// Larger of the two; a NaN in `b` propagates (unlike `f32::max`), and it compiles to a
    /// single vector max instruction.
    #[inline(always)]
    fn max(self, b: Self) -> Self {
        if self > b {
            self
        } else {
            b
        }
    }
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f32::ln(self)
    }
    #[inline(always)]
    fn exp<M: Simd>(self) -> Self {
        exp_f32::<M>(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn tile_avx512<const R: usize, const W: usize>(t: TileArgs<'_, Self>) {
        // SAFETY: same contract as this method's.
        unsafe { super::tile::x86::avx512_f32::<R, W>(t) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn tile_avx2<const R: usize, const W: usize>(t: TileArgs<'_, Self>) {
        // SAFETY: same contract as this method's.
        unsafe { super::tile::x86::avx2_f32::<R, W>(t) }
    }
    #[inline(always)]
    fn fma(self, b: Self, c: Self) -> Self {
        self.mul_add(b, c)
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f64::ln(self)
    }
    #[inline(always)]
    fn exp<M: Simd>(self) -> Self {
        exp_f64::<M>(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn tile_avx512<const R: usize, const W: usize>(t: TileArgs<'_, Self>) {
        // SAFETY: same contract as this method's.
        unsafe { super::tile::x86::avx512_f64::<R, W>(t) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn tile_avx2<const R: usize, const W: usize>(t: TileArgs<'_, Self>) {
        // SAFETY: same contract as this method's.
        unsafe { super::tile::x86::avx2_f64::<R, W>(t) }
    }
    #[inline(always)]
    fn fma(self, b: Self, c: Self) -> Self {
        self.mul_add(b, c)
    }
}

/// `e^x` for f32 in branch-free arithmetic: Cody–Waite reduction `x = n·ln2 + r`,
/// `|r| ≤ ln2/2`, a degree-7 Taylor polynomial (truncation 5e-9 relative, below f32 rounding),
/// and `2^n` applied as two exponent-field scalings so that results near overflow and in the
/// subnormal range are right too. Max error ≈ 2 ulp; NaN propagates, −inf gives exactly 0.
#[inline(always)]
pub(crate) fn exp_f32<M: Simd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln2 split so that n·LN2_HI is exact for |n| < 2^10.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Below −104 the result rounds to 0 even as a subnormal; above 89 it is +inf.
    const LO: f32 = -104.0;
    const HI: f32 = 89.0;
    // 1.5·2^23: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    // NaN passes through clamp (and on to the result).
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = M::madd(p, r, c);
    }
    // n as an integer, straight from the bits of t (|n| ≤ 151 < 2^22).
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    p * s1 * s2
}

/// `e^x` for f64, as [`exp_f32`] with a degree-13 polynomial (truncation 4e-18 relative).
/// Max error ≈ 2 ulp.
#[inline(always)]
pub(crate) fn exp_f64<M: Simd>(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // fdlibm's split: LN2_HI has 32 trailing zero bits, so n·LN2_HI is exact.
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const LO: f64 = -746.0;
    const HI: f64 = 710.0;
    // 1.5·2^52.
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    // 1/k! for k = 13 down to 2.
    const C: [f64; 12] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ];
    // NaN passes through clamp (and on to the result).
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = C[0];
    for &c in &C[1..] {
        p = M::madd(p, r, c);
    }
    p = M::madd(p, r, 1.0);
    p = M::madd(p, r, 1.0);
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i64;
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f64::from_bits(((n1 + 1023) as u64) << 52);
    let s2 = f64::from_bits(((n2 + 1023) as u64) << 52);
    p * s1 * s2
}

/// A token for an instruction set the CPU supports. A value exists only inside [`dispatch_on`]
/// after run-time detection, which is what makes the `unsafe` calls into `#[target_feature]`
/// code behind it sound.
pub(crate) trait Simd: Copy + Send + Sync + 'static {
    /// Bytes per vector register (tile widths are derived from it).
    const VBYTES: usize;
    /// `a · b + c`: fused where the CPU has FMA (`f32::mul_add` without hardware FMA is a slow
    /// libm call), two roundings otherwise.
    fn madd<T: Float>(a: T, b: T, c: T) -> T;
    /// One register tile of a small product, see [`super::tile`].
    fn tile<T: Float, const R: usize, const W: usize>(self, t: TileArgs<'_, T>);
}

/// Operands of one register tile: `c[r][0..W] = (c if acc) + Σ_k a[r][k] · b[k][0..W]`.
pub(crate) struct TileArgs<'a, T> {
    /// `A(r, k)` is `a[r · a_rs + k · a_cs]`.
    pub a: &'a [T],
    pub a_rs: usize,
    pub a_cs: usize,
    pub b: &'a [T],
    pub ldb: usize,
    pub kd: usize,
    pub c: &'a mut [T],
    pub ldc: usize,
    pub acc: bool,
}

/// Portable code (SSE2 on x86-64), no FMA.
#[derive(Clone, Copy)]
pub(crate) struct Baseline(());

/// AVX2 with FMA.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx2(());

/// AVX-512F (with AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx512(());

impl Simd for Baseline {
    const VBYTES: usize = 16;
    #[inline(always)]
    fn madd<T: Float>(a: T, b: T, c: T) -> T {
        a * b + c
    }
    #[inline(always)]
    fn tile<T: Float, const R: usize, const W: usize>(self, t: TileArgs<'_, T>) {
        tile_baseline::<T, R, W>(t)
    }
}

#[inline(never)]
fn tile_baseline<T: Float, const R: usize, const W: usize>(t: TileArgs<'_, T>) {
    super::tile::tile_body::<T, Baseline, R, W>(t)
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    const VBYTES: usize = 32;
    #[inline(always)]
    fn madd<T: Float>(a: T, b: T, c: T) -> T {
        a.fma(b, c)
    }
    #[inline(always)]
    fn tile<T: Float, const R: usize, const W: usize>(self, t: TileArgs<'_, T>) {
        // SAFETY: an `Avx2` token is only created by `dispatch_on` after detecting avx2+fma.
        unsafe { T::tile_avx2::<R, W>(t) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    const VBYTES: usize = 64;
    #[inline(always)]
    fn madd<T: Float>(a: T, b: T, c: T) -> T {
        a.fma(b, c)
    }
    #[inline(always)]
    fn tile<T: Float, const R: usize, const W: usize>(self, t: TileArgs<'_, T>) {
        // SAFETY: an `Avx512` token is only created by `dispatch_on` after detecting
        // avx512f, avx2 and fma.
        unsafe { T::tile_avx512::<R, W>(t) }
    }
}

/// A kernel body that [`dispatch`] compiles per instruction set. `run` must be
/// `#[inline(always)]` (and so must what it calls in hot loops) so that it is compiled inside
/// the `#[target_feature]` wrapper rather than for the baseline target.
pub(crate) trait Kernel {
    type Out;
    fn run<M: Simd>(self, m: M) -> Self::Out;
}

/// The instruction sets the fused kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// Whether this CPU can run code compiled for `self` (run-time detection, cached by std).
    pub(crate) fn supported(self) -> bool {
        match self {
            Isa::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Isa::Avx2.supported() && std::arch::is_x86_feature_detected!("avx512f"),
        }
    }

    /// The best instruction set this CPU supports (detected once).
    pub(crate) fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| *Isa::available().last().unwrap_or(&Isa::Baseline))
    }

    /// Every instruction set this CPU can run, best last (tests compare them).
    pub(crate) fn available() -> Vec<Isa> {
        let all = [
            Isa::Baseline,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512,
        ];
        all.into_iter().filter(|i| i.supported()).collect()
    }
}

/// # Safety
/// The CPU must support avx512f, avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_avx512<K: Kernel>(k: K) -> K::Out {
    k.run(Avx512(()))
}

/// # Safety
/// The CPU must support avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<K: Kernel>(k: K) -> K::Out {
    k.run(Avx2(()))
}

/// Run `k` compiled for the best instruction set of this CPU.
#[inline]
pub(crate) fn dispatch<K: Kernel>(k: K) -> K::Out {
    dispatch_on(Isa::best(), k)
}

/// Run `k` compiled for `isa`. `isa` must come from [`Isa::best`] or [`Isa::available`],
/// which only offer what the CPU reports; anything else is a bug, caught here.
#[inline]
pub(crate) fn dispatch_on<K: Kernel>(isa: Isa, k: K) -> K::Out {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(
                isa.supported(),
                "avx512 kernel requested on a CPU without it"
            );
            // SAFETY: checked just above that the CPU has avx512f, avx2 and fma.
            unsafe { run_avx512(k) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(isa.supported(), "avx2 kernel requested on a CPU without it");
            // SAFETY: checked just above that the CPU has avx2 and fma.
            unsafe { run_avx2(k) }
        }
        Isa::Baseline => k.run(Baseline(())),
    }
}

/// A storage element type and the [`Float`] type its math runs in: f32 and f64 natively,
/// f16/bf16 through f32 (converted on read, rounded once on write).
pub(crate) trait Io: Copy + Send + Sync + Default + 'static {
    type T: Float;
    fn load(self) -> Self::T;
    fn store(v: Self::T) -> Self;
    /// The slice itself when `Self` is its own compute type (no conversion needed).
    fn native(s: &[Self]) -> Option<&[Self::T]>;
    fn native_mut(s: &mut [Self]) -> Option<&mut [Self::T]>;
}

macro_rules! io_native {
    ($t:ty) => {
        impl Io for $t {
            type T = $t;
            #[inline(always)]
            fn load(self) -> $t {
                self
            }
            #[inline(always)]
            fn store(v: $t) -> Self {
                v
            }
            #[inline(always)]
            fn native(s: &[Self]) -> Option<&[$t]> {
                Some(s)
            }
            #[inline(always)]
            fn native_mut(s: &mut [Self]) -> Option<&mut [$t]> {
                Some(s)
            }
        }
    };
}
io_native!(f32);
io_native!(f64);

macro_rules! io_half {
    ($t:ty) => {
        impl Io for $t {
            type T = f32;
            #[inline(always)]
            fn load(self) -> f32 {
                self.to_f32()
            }
            #[inline(always)]
            fn store(v: f32) -> Self {
                <$t>::from_f32(v)
            }
            #[inline(always)]
            fn native(_: &[Self]) -> Option<&[f32]> {
                None
            }
            #[inline(always)]
            fn native_mut(_: &mut [Self]) -> Option<&mut [f32]> {
                None
            }
        }
    };
}
io_half!(f16);
io_half!(bf16);

/// Lanes of the vectorised reductions: independent partial results so that LLVM can keep
/// them in vector registers (a single scalar accumulator would serialise the loop).
const LANES: usize = 16;

/// Largest element (−inf for an empty slice).
#[inline(always)]
pub(crate) fn max_of<T: Float>(x: &[T]) -> T {
    let mut acc = [T::NEG_INF; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = a.max(v);
    }
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            acc[l] = acc[l].max(acc[l + w]);
        }
    }
    acc[0]
}

/// Sum of the elements.
#[inline(always)]
pub(crate) fn sum_of<T: Float>(x: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v;
    }
    super::tile::hsum(acc)
}

/// `out[i] = exp(x[i] − shift)`, returning the sum of the outputs.
#[inline(always)]
pub(crate) fn exp_shift_sum<T: Float, M: Simd>(x: &[T], shift: T, out: &mut [T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let mut xc = x.chunks_exact(LANES);
    let mut oc = out.chunks_exact_mut(LANES);
    for (c, o) in (&mut xc).zip(&mut oc) {
        for ((a, &v), o) in acc.iter_mut().zip(c).zip(o) {
            let e = (v - shift).exp::<M>();
            *o = e;
            *a += e;
        }
    }
    for ((a, &v), o) in acc.iter_mut().zip(xc.remainder()).zip(oc.into_remainder()) {
        let e = (v - shift).exp::<M>();
        *o = e;
        *a += e;
    }
    super::tile::hsum(acc)
}

/// `x[i] ·= s`.
#[inline(always)]
pub(crate) fn scale<T: Float>(x: &mut [T], s: T) {
    for v in x {
        *v = *v * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp` over a slice, compiled for the instruction set it runs on.
    struct ExpAll<'a, T>(&'a [T]);
    impl<T: Float> Kernel for ExpAll<'_, T> {
        type Out = Vec<T>;
        #[inline(always)]
        fn run<M: Simd>(self, _: M) -> Vec<T> {
            self.0.iter().map(|&x| x.exp::<M>()).collect()
        }
    }

    fn exp_each_isa<T: Float>(xs: &[T]) -> Vec<(Isa, Vec<T>)> {
        Isa::available()
            .into_iter()
            .map(|isa| (isa, dispatch_on(isa, ExpAll(xs))))
            .collect()
    }

    /// Relative error against the correctly rounded (to f64) `exp`, on every instruction set.
    #[test]
    fn exp_matches_std_f32() {
        let mut xs: Vec<f32> = (0..273_000)
            .map(|i| -110.0 + i as f32 * 0.000_731)
            .collect();
        xs.extend([
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            0.0,
            88.72,
            88.73,
            -87.5,
        ]);
        for (isa, got) in exp_each_isa(&xs) {
            let mut worst = 0.0f64;
            for (&x, &g) in xs.iter().zip(&got) {
                let (g, want) = (g as f64, (x as f64).exp());
                if x.is_nan() {
                    assert!(g.is_nan(), "{isa:?}");
                } else if want > f32::MAX as f64 {
                    assert_eq!(g, f64::INFINITY, "{isa:?} x = {x}");
                } else if want >= f32::MIN_POSITIVE as f64 {
                    worst = worst.max(((g - want) / want).abs());
                } else {
                    // Subnormal range: within one subnormal step.
                    assert!(
                        (g - want).abs() <= 1.5e-45,
                        "{isa:?} x = {x}: {g} vs {want}"
                    );
                }
            }
            assert!(worst < 2.5e-7, "{isa:?}: worst relative error {worst}");
        }
    }

    #[test]
    fn exp_matches_std_f64() {
        let mut xs: Vec<f64> = (0..1_600_000)
            .map(|i| -750.0 + i as f64 * 0.000_913_7)
            .collect();
        xs.extend([
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NAN,
            0.0,
            709.78,
            709.79,
        ]);
        for (isa, got) in exp_each_isa(&xs) {
            let mut worst = 0.0f64;
            for (&x, &g) in xs.iter().zip(&got) {
                let want = x.exp();
                if x.is_nan() {
                    assert!(g.is_nan(), "{isa:?}");
                } else if want.is_infinite() {
                    assert_eq!(g, f64::INFINITY, "{isa:?} x = {x}");
                } else if want >= f64::MIN_POSITIVE {
                    worst = worst.max(((g - want) / want).abs());
                } else {
                    assert!((g - want).abs() <= 1e-323, "{isa:?} x = {x}: {g} vs {want}");
                }
            }
            assert!(worst < 5e-16, "{isa:?}: worst relative error {worst}");
        }
    }

    struct SumExp<'a>(&'a [f32]);
    impl Kernel for SumExp<'_> {
        type Out = (f32, f32, Vec<f32>);
        #[inline(always)]
        fn run<M: Simd>(self, _: M) -> Self::Out {
            let mut out = vec![0.0; self.0.len()];
            let s = exp_shift_sum::<f32, M>(self.0, 1.5, &mut out);
            (max_of(self.0), s, out)
        }
    }

    /// The vectorised reductions, compiled for every instruction set, against scalar loops.
    #[test]
    fn reductions_match_scalar_on_every_isa() {
        for n in [0usize, 1, 15, 16, 17, 100, 1000] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37) % 101) as f32 * 0.05 - 2.5)
                .collect();
            let want_max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let want_e: Vec<f64> = x.iter().map(|&v| ((v - 1.5) as f64).exp()).collect();
            let want_sum: f64 = want_e.iter().sum();
            for isa in Isa::available() {
                let (m, s, e) = dispatch_on(isa, SumExp(&x));
                assert_eq!(m, want_max, "{isa:?} n={n}");
                assert!(
                    (s as f64 - want_sum).abs() <= 1e-5 * want_sum.max(1.0),
                    "{isa:?}"
                );
                for (a, b) in e.iter().zip(&want_e) {
                    assert!((*a as f64 - b).abs() <= 3e-7 * b, "{isa:?}");
                }
            }
        }
    }

    #[test]
    fn madd_variants_agree() {
        assert_eq!(Baseline::madd(2.0f64, 3.0, 1.0), 7.0);
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(Avx2::madd(2.0f32, 3.0, 1.0), 7.0);
            assert_eq!(Avx512::madd(2.0f32, 3.0, 1.0), 7.0);
        }
    }
}
