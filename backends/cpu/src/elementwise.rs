//! Elementwise kernels: unary ops, binary ops, comparisons and `where`. Each op is one
//! monomorphised closure fed to `map1`/`map2`/`map3`, which take the contiguous fast path as a
//! plain slice loop (auto-vectorised) and otherwise walk innermost runs of the strided views.
//! f16/bf16 compute through f32.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use tensor_core::{BackendStorage, BinaryOp, CmpOp, DType, Error, HostData, Layout, Result};
use tensor_core::{UnaryOp, WithDType};

use crate::copy::{fill_chunks, Walker};
use crate::storage::cpu;
use crate::{check_layout, check_same_shape, Elem, HalfFloat};

// ---- generic maps over strided views ---------------------------------------------------------

/// A new vector of `n` elements, every one written by `f` (called on disjoint chunks, maybe in
/// parallel) without zero-filling the buffer first: for large outputs that fill pass costs as
/// much as the op itself.
pub(crate) fn fill_uninit<O: Copy + Send>(
    n: usize,
    f: impl Fn(usize, &mut [MaybeUninit<O>]) + Sync,
) -> Vec<O> {
    let mut out: Vec<O> = Vec::with_capacity(n);
    fill_chunks(&mut out.spare_capacity_mut()[..n], f);
    // SAFETY: `fill_chunks` hands every index of `0..n` to exactly one call of `f`, and the
    // callers' `f` write each element of the chunk they get.
    unsafe { out.set_len(n) };
    out
}

/// `f` applied to every element of a view, into a new contiguous vector.
pub(crate) fn map1<A, O, F>(a: &[A], al: &Layout, f: F) -> Vec<O>
where
    A: Copy + Sync,
    O: Copy + Send + Sync + Default,
    F: Fn(A) -> O + Sync,
{
    let n = al.elem_count();
    if n == 0 {
        return Vec::new();
    }
    if al.is_contiguous() {
        // Collecting writes straight into the new buffer: no zero-fill pass first.
        let src = &a[al.offset()..al.offset() + n];
        return fill_uninit(n, |start, o| {
            let end = start + o.len();
            for (o, &x) in o.iter_mut().zip(&src[start..end]) {
                o.write(f(x));
            }
        });
    }
    let mut out = vec![O::default(); n];
    let w = Walker::from_layouts([al]);
    let [s] = w.inner_strides();
    fill_chunks(&mut out, |start, chunk| {
        w.blocks(start, start + chunk.len(), |pos, [b], len| {
            let o = &mut chunk[pos - start..pos - start + len];
            match s {
                1 => {
                    for (o, &x) in o.iter_mut().zip(&a[b..b + len]) {
                        *o = f(x);
                    }
                }
                0 => o.fill(f(a[b])),
                _ => {
                    for (j, o) in o.iter_mut().enumerate() {
                        *o = f(a[b + j * s]);
                    }
                }
            }
        })
    });
    out
}

/// `f` applied pairwise to two views of the same shape.
pub(crate) fn map2<A, B, O, F>(a: &[A], al: &Layout, b: &[B], bl: &Layout, f: F) -> Vec<O>
where
    A: Copy + Sync,
    B: Copy + Sync,
    O: Copy + Send + Sync + Default,
    F: Fn(A, B) -> O + Sync,
{
    let n = al.elem_count();
    if n == 0 {
        return Vec::new();
    }
    if al.is_contiguous() && bl.is_contiguous() {
        let (xa, xb) = (
            &a[al.offset()..al.offset() + n],
            &b[bl.offset()..bl.offset() + n],
        );
        return fill_uninit(n, |start, o| {
            let end = start + o.len();
            for ((o, &x), &y) in o.iter_mut().zip(&xa[start..end]).zip(&xb[start..end]) {
                o.write(f(x, y));
            }
        });
    }
    let mut out = vec![O::default(); n];
    let w = Walker::from_layouts([al, bl]);
    let [sa, sb] = w.inner_strides();
    fill_chunks(&mut out, |start, chunk| {
        w.blocks(start, start + chunk.len(), |pos, [ba, bb], len| {
            let o = &mut chunk[pos - start..pos - start + len];
            match (sa, sb) {
                (1, 1) => {
                    for ((o, &x), &y) in o.iter_mut().zip(&a[ba..ba + len]).zip(&b[bb..bb + len]) {
                        *o = f(x, y);
                    }
                }
                (1, 0) => {
                    let y = b[bb];
                    for (o, &x) in o.iter_mut().zip(&a[ba..ba + len]) {
                        *o = f(x, y);
                    }
                }
                (0, 1) => {
                    let x = a[ba];
                    for (o, &y) in o.iter_mut().zip(&b[bb..bb + len]) {
                        *o = f(x, y);
                    }
                }
                _ => {
                    for (j, o) in o.iter_mut().enumerate() {
                        *o = f(a[ba + j * sa], b[bb + j * sb]);
                    }
                }
            }
        })
    });
    out
}

/// `f` applied to three views of the same shape (for `where`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn map3<A, B, C, O, F>(
    a: &[A],
    al: &Layout,
    b: &[B],
    bl: &Layout,
    c: &[C],
    cl: &Layout,
    f: F,
) -> Vec<O>
where
    A: Copy + Sync,
    B: Copy + Sync,
    C: Copy + Sync,
    O: Copy + Send + Sync + Default,
    F: Fn(A, B, C) -> O + Sync,
{
    let n = al.elem_count();
    if n == 0 {
        return Vec::new();
    }
    let mut out = vec![O::default(); n];
    let w = Walker::from_layouts([al, bl, cl]);
    let [sa, sb, sc] = w.inner_strides();
    fill_chunks(&mut out, |start, chunk| {
        w.blocks(start, start + chunk.len(), |pos, [ba, bb, bc], len| {
            let o = &mut chunk[pos - start..pos - start + len];
            if (sa, sb, sc) == (1, 1, 1) {
                let it = a[ba..ba + len]
                    .iter()
                    .zip(&b[bb..bb + len])
                    .zip(&c[bc..bc + len]);
                for (o, ((&x, &y), &z)) in o.iter_mut().zip(it) {
                    *o = f(x, y, z);
                }
            } else {
                for (j, o) in o.iter_mut().enumerate() {
                    *o = f(a[ba + j * sa], b[bb + j * sb], c[bc + j * sc]);
                }
            }
        })
    });
    out
}

// ---- float math --------------------------------------------------------------------------------

/// The float operations the unary/binary tables need, for f32 and f64.
pub(crate) trait Float:
    Elem
    + std::ops::Neg<Output = Self>
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn c(v: f64) -> Self;
    fn exp(self) -> Self;
    fn exp_m1(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
    fn erfc(self) -> Self;
    fn floor(self) -> Self;
    fn ceil(self) -> Self;
    fn round_ties_even(self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn abs(self) -> Self;
}

macro_rules! float_impl {
    ($t:ty, $erf:path, $erfc:path) => {
        impl Float for $t {
            #[inline(always)]
            fn c(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn exp_m1(self) -> Self {
                <$t>::exp_m1(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn erfc(self) -> Self {
                $erfc(self)
            }
            #[inline(always)]
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            #[inline(always)]
            fn ceil(self) -> Self {
                <$t>::ceil(self)
            }
            #[inline(always)]
            fn round_ties_even(self) -> Self {
                <$t>::round_ties_even(self)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
        }
    };
}
float_impl!(f32, libm::erff, libm::erfcf);
float_impl!(f64, libm::erf, libm::erfc);

/// Stable for large |x|: never evaluates exp of a large positive number.
#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    let one = T::c(1.0);
    if x >= T::c(0.0) {
        one / (one + (-x).exp())
    } else {
        let e = x.exp();
        e / (one + e)
    }
}

/// Clamp with PyTorch's semantics: NaN stays NaN, and `min > max` gives `max` everywhere.
#[inline(always)]
fn clamp<T: PartialOrd + Copy>(x: T, lo: T, hi: T) -> T {
    let y = if x < lo { lo } else { x };
    if y > hi {
        hi
    } else {
        y
    }
}

/// Receives one monomorphised closure per op (so each op gets its own tight loop).
pub(crate) trait UnaryKernel<T> {
    type Out;
    fn run<F: Fn(T) -> T + Sync>(self, f: F) -> Self::Out;
}

/// The float unary ops, each handed to `k` as a closure over `T`.
fn float_unary<T: Float, K: UnaryKernel<T>>(op: UnaryOp, k: K) -> K::Out {
    let c = T::c;
    match op {
        UnaryOp::Neg => k.run(|x: T| -x),
        UnaryOp::Abs => k.run(|x: T| x.abs()),
        // (0 < x) − (x < 0), as PyTorch: sign(±0) = 0 and sign(NaN) = 0.
        UnaryOp::Sign => k.run(|x: T| {
            if x > T::c(0.0) {
                T::c(1.0)
            } else if x < T::c(0.0) {
                T::c(-1.0)
            } else {
                T::c(0.0)
            }
        }),
        UnaryOp::Exp => k.run(|x: T| x.exp()),
        UnaryOp::Log => k.run(|x: T| x.ln()),
        UnaryOp::Sqrt => k.run(|x: T| x.sqrt()),
        UnaryOp::Rsqrt => k.run(|x: T| T::c(1.0) / x.sqrt()),
        UnaryOp::Recip => k.run(|x: T| T::c(1.0) / x),
        UnaryOp::Sqr => k.run(|x: T| x * x),
        UnaryOp::Sin => k.run(|x: T| x.sin()),
        UnaryOp::Cos => k.run(|x: T| x.cos()),
        UnaryOp::Tanh => k.run(|x: T| x.tanh()),
        UnaryOp::Sigmoid => k.run(sigmoid::<T>),
        // NaN < 0 is false, so NaN propagates as in torch.relu.
        UnaryOp::Relu => k.run(|x: T| if x < T::c(0.0) { T::c(0.0) } else { x }),
        // 0.5·x·(1 + erf(x/√2)), written with erfc(−x/√2) = 1 + erf(x/√2) so the negative
        // tail keeps full relative precision instead of cancelling in 1 + erf.
        UnaryOp::Gelu => {
            k.run(|x: T| T::c(0.5) * x * (-x * T::c(std::f64::consts::FRAC_1_SQRT_2)).erfc())
        }
        UnaryOp::GeluTanh => k.run(|x: T| {
            // √(2/π)
            let k0 = T::c(0.797_884_560_802_865_4);
            let inner = k0 * (x + T::c(0.044715) * x * x * x);
            T::c(0.5) * x * (T::c(1.0) + inner.tanh())
        }),
        UnaryOp::Erf => k.run(|x: T| x.erf()),
        UnaryOp::Silu => k.run(|x: T| x * sigmoid(x)),
        UnaryOp::Softplus => k.run(|x: T| if x > T::c(20.0) { x } else { x.exp().ln_1p() }),
        UnaryOp::Floor => k.run(|x: T| x.floor()),
        UnaryOp::Ceil => k.run(|x: T| x.ceil()),
        UnaryOp::Round => k.run(|x: T| x.round_ties_even()),
        UnaryOp::Affine { mul, add } => {
            let (m, a) = (c(mul), c(add));
            k.run(move |x: T| x * m + a)
        }
        UnaryOp::Powf(e) => {
            let e = c(e);
            k.run(move |x: T| x.powf(e))
        }
        UnaryOp::Elu(alpha) => {
            let alpha = c(alpha);
            k.run(move |x: T| if x > T::c(0.0) { x } else { alpha * x.exp_m1() })
        }
        UnaryOp::LeakyRelu(slope) => {
            let slope = c(slope);
            k.run(move |x: T| if x > T::c(0.0) { x } else { slope * x })
        }
        UnaryOp::Clamp { min, max } => {
            let (lo, hi) = (c(min), c(max));
            k.run(move |x: T| clamp(x, lo, hi))
        }
    }
}

/// Runs the closure directly over a view of `T`.
struct Direct<'a, T> {
    src: &'a [T],
    l: &'a Layout,
}

impl<T: Elem> UnaryKernel<T> for Direct<'_, T> {
    type Out = Vec<T>;
    fn run<F: Fn(T) -> T + Sync>(self, f: F) -> Vec<T> {
        map1(self.src, self.l, f)
    }
}

/// Runs an f32 closure over a view of a 16-bit float type.
struct ViaF32<'a, H> {
    src: &'a [H],
    l: &'a Layout,
}

impl<H: HalfFloat> UnaryKernel<f32> for ViaF32<'_, H> {
    type Out = Vec<H>;
    fn run<F: Fn(f32) -> f32 + Sync>(self, f: F) -> Vec<H> {
        map1(self.src, self.l, |h: H| H::from_f32(f(h.to_f32())))
    }
}

// ---- integer math ------------------------------------------------------------------------------

/// Integer element types: exact arithmetic that wraps on overflow, as PyTorch's integer ops do.
pub(crate) trait Int: Elem + Ord {
    const ZERO: Self;
    const ONE: Self;
    fn w_add(self, o: Self) -> Self;
    fn w_sub(self, o: Self) -> Self;
    fn w_mul(self, o: Self) -> Self;
    fn w_neg(self) -> Self;
    fn w_abs(self) -> Self;
    /// Floor division (PyTorch's `//`); None on division by zero.
    fn floor_div(self, o: Self) -> Option<Self>;
    /// `self^o`, wrapping; negative exponents go through f64 and truncate.
    fn w_pow(self, o: Self) -> Self;
}

macro_rules! int_impl {
    ($t:ty, signed = $signed:expr) => {
        impl Int for $t {
            const ZERO: Self = 0;
            const ONE: Self = 1;
            #[inline(always)]
            fn w_add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn w_sub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn w_mul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            #[inline(always)]
            fn w_neg(self) -> Self {
                self.wrapping_neg()
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn w_abs(self) -> Self {
                if self < 0 {
                    self.wrapping_neg()
                } else {
                    self
                }
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn floor_div(self, o: Self) -> Option<Self> {
                if o == 0 {
                    return None;
                }
                let q = self.wrapping_div(o);
                if $signed && (self % o != 0) && ((self < 0) != (o < 0)) {
                    Some(q - 1)
                } else {
                    Some(q)
                }
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn w_pow(self, o: Self) -> Self {
                if o < 0 {
                    <$t as WithDType>::from_f64(self.to_f64().powf(o.to_f64()))
                } else {
                    self.wrapping_pow(u32::try_from(o).unwrap_or(u32::MAX))
                }
            }
        }
    };
}
int_impl!(u8, signed = false);
int_impl!(u32, signed = false);
int_impl!(i64, signed = true);

fn int_unary<T: Int>(op: UnaryOp, src: &[T], l: &Layout, dtype: DType) -> Result<Vec<T>> {
    let out = match op {
        UnaryOp::Neg => map1(src, l, |x: T| x.w_neg()),
        UnaryOp::Abs => map1(src, l, |x: T| x.w_abs()),
        UnaryOp::Sign => map1(src, l, |x: T| {
            if x > T::ZERO {
                T::ONE
            } else if x < T::ZERO {
                T::ZERO.w_sub(T::ONE)
            } else {
                T::ZERO
            }
        }),
        UnaryOp::Sqr => map1(src, l, |x: T| x.w_mul(x)),
        UnaryOp::Relu => map1(src, l, |x: T| x.max(T::ZERO)),
        UnaryOp::Affine { mul, add } => {
            if mul.fract() == 0.0 && add.fract() == 0.0 && mul.abs() < 9e15 && add.abs() < 9e15 {
                // Integral coefficients: exact, wrapping like any integer op.
                let (m, a) = (T::from_i64(mul as i64), T::from_i64(add as i64));
                map1(src, l, move |x: T| x.w_mul(m).w_add(a))
            } else {
                map1(src, l, move |x: T| T::from_f64(x.to_f64() * mul + add))
            }
        }
        // min(max(x, min), max) as torch.clamp: `min > max` gives `max` everywhere.
        UnaryOp::Clamp { min, max } => map1(src, l, move |x: T| {
            let v = x.to_f64();
            let below = v < min;
            let y = if below { min.ceil() } else { v };
            if y > max {
                T::from_f64(max.floor())
            } else if below {
                T::from_f64(min.ceil())
            } else {
                x
            }
        }),
        _ => {
            return Err(Error::UnsupportedDType {
                op: op.name(),
                dtype,
                expected: "a float dtype",
            })
        }
    };
    Ok(out)
}

pub(crate) fn unary(op: UnaryOp, s: &dyn BackendStorage, l: &Layout) -> Result<HostData> {
    check_layout(s, l, op.name())?;
    let dtype = s.dtype();
    Ok(match &cpu(s)?.data {
        HostData::U8(v) => HostData::U8(int_unary(op, v, l, dtype)?),
        HostData::U32(v) => HostData::U32(int_unary(op, v, l, dtype)?),
        HostData::I64(v) => HostData::I64(int_unary(op, v, l, dtype)?),
        HostData::F16(v) => HostData::F16(float_unary::<f32, _>(op, ViaF32 { src: v, l })),
        HostData::BF16(v) => HostData::BF16(float_unary::<f32, _>(op, ViaF32 { src: v, l })),
        HostData::F32(v) => HostData::F32(float_unary::<f32, _>(op, Direct { src: v, l })),
        HostData::F64(v) => HostData::F64(float_unary::<f64, _>(op, Direct { src: v, l })),
    })
}

// ---- binary ------------------------------------------------------------------------------------

pub(crate) trait BinaryKernel<T> {
    type Out;
    fn run<F: Fn(T, T) -> T + Sync>(self, f: F) -> Self::Out;
}

/// torch.maximum/minimum: a NaN on either side wins.
fn float_binary<T: Float, K: BinaryKernel<T>>(op: BinaryOp, k: K) -> K::Out {
    match op {
        BinaryOp::Add => k.run(|a: T, b: T| a + b),
        BinaryOp::Sub => k.run(|a: T, b: T| a - b),
        BinaryOp::Mul => k.run(|a: T, b: T| a * b),
        BinaryOp::Div => k.run(|a: T, b: T| a / b),
        BinaryOp::Pow => k.run(|a: T, b: T| a.powf(b)),
        BinaryOp::Maximum => k.run(|a: T, b: T| if a > b || a.is_nan() { a } else { b }),
        BinaryOp::Minimum => k.run(|a: T, b: T| if a < b || a.is_nan() { a } else { b }),
    }
}

struct Direct2<'a, T> {
    a: &'a [T],
    al: &'a Layout,
    b: &'a [T],
    bl: &'a Layout,
}

impl<T: Elem> BinaryKernel<T> for Direct2<'_, T> {
    type Out = Vec<T>;
    fn run<F: Fn(T, T) -> T + Sync>(self, f: F) -> Vec<T> {
        map2(self.a, self.al, self.b, self.bl, f)
    }
}

struct ViaF32x2<'a, H> {
    a: &'a [H],
    al: &'a Layout,
    b: &'a [H],
    bl: &'a Layout,
}

impl<H: HalfFloat> BinaryKernel<f32> for ViaF32x2<'_, H> {
    type Out = Vec<H>;
    fn run<F: Fn(f32, f32) -> f32 + Sync>(self, f: F) -> Vec<H> {
        map2(self.a, self.al, self.b, self.bl, |x: H, y: H| {
            H::from_f32(f(x.to_f32(), y.to_f32()))
        })
    }
}

fn int_binary<T: Int>(op: BinaryOp, a: &[T], al: &Layout, b: &[T], bl: &Layout) -> Result<Vec<T>> {
    Ok(match op {
        BinaryOp::Add => map2(a, al, b, bl, |x: T, y: T| x.w_add(y)),
        BinaryOp::Sub => map2(a, al, b, bl, |x: T, y: T| x.w_sub(y)),
        BinaryOp::Mul => map2(a, al, b, bl, |x: T, y: T| x.w_mul(y)),
        BinaryOp::Pow => map2(a, al, b, bl, |x: T, y: T| x.w_pow(y)),
        BinaryOp::Maximum => map2(a, al, b, bl, |x: T, y: T| x.max(y)),
        BinaryOp::Minimum => map2(a, al, b, bl, |x: T, y: T| x.min(y)),
        BinaryOp::Div => {
            let by_zero = AtomicBool::new(false);
            let out = map2(a, al, b, bl, |x: T, y: T| {
                x.floor_div(y).unwrap_or_else(|| {
                    by_zero.store(true, Ordering::Relaxed);
                    T::ZERO
                })
            });
            if by_zero.load(Ordering::Relaxed) {
                return Err(Error::invalid("div", "integer division by zero"));
            }
            out
        }
    })
}

/// The two operands of a binary-shaped op, checked and downcast.
fn operands<'a>(
    op: &'static str,
    lhs: &'a dyn BackendStorage,
    lhs_l: &Layout,
    rhs: &'a dyn BackendStorage,
    rhs_l: &Layout,
) -> Result<(&'a HostData, &'a HostData)> {
    check_same_shape(lhs_l, rhs_l, op)?;
    check_layout(lhs, lhs_l, op)?;
    check_layout(rhs, rhs_l, op)?;
    if lhs.dtype() != rhs.dtype() {
        return Err(Error::DTypeMismatch {
            op,
            lhs: lhs.dtype(),
            rhs: rhs.dtype(),
        });
    }
    Ok((&cpu(lhs)?.data, &cpu(rhs)?.data))
}

fn mismatch(op: &'static str, a: &HostData, b: &HostData) -> Error {
    Error::DTypeMismatch {
        op,
        lhs: a.dtype(),
        rhs: b.dtype(),
    }
}

pub(crate) fn binary(
    op: BinaryOp,
    lhs: &dyn BackendStorage,
    al: &Layout,
    rhs: &dyn BackendStorage,
    bl: &Layout,
) -> Result<HostData> {
    let (x, y) = operands(op.name(), lhs, al, rhs, bl)?;
    Ok(match (x, y) {
        (HostData::U8(a), HostData::U8(b)) => HostData::U8(int_binary(op, a, al, b, bl)?),
        (HostData::U32(a), HostData::U32(b)) => HostData::U32(int_binary(op, a, al, b, bl)?),
        (HostData::I64(a), HostData::I64(b)) => HostData::I64(int_binary(op, a, al, b, bl)?),
        (HostData::F16(a), HostData::F16(b)) => {
            HostData::F16(float_binary::<f32, _>(op, ViaF32x2 { a, al, b, bl }))
        }
        (HostData::BF16(a), HostData::BF16(b)) => {
            HostData::BF16(float_binary::<f32, _>(op, ViaF32x2 { a, al, b, bl }))
        }
        (HostData::F32(a), HostData::F32(b)) => {
            HostData::F32(float_binary::<f32, _>(op, Direct2 { a, al, b, bl }))
        }
        (HostData::F64(a), HostData::F64(b)) => {
            HostData::F64(float_binary::<f64, _>(op, Direct2 { a, al, b, bl }))
        }
        _ => return Err(mismatch(op.name(), x, y)),
    })
}

// ---- comparisons and where ---------------------------------------------------------------------

fn cmp_typed<T: Elem>(op: CmpOp, a: &[T], al: &Layout, b: &[T], bl: &Layout) -> Vec<u8> {
    match op {
        CmpOp::Eq => map2(a, al, b, bl, |x: T, y: T| (x == y) as u8),
        CmpOp::Ne => map2(a, al, b, bl, |x: T, y: T| (x != y) as u8),
        CmpOp::Lt => map2(a, al, b, bl, |x: T, y: T| (x < y) as u8),
        CmpOp::Le => map2(a, al, b, bl, |x: T, y: T| (x <= y) as u8),
        CmpOp::Gt => map2(a, al, b, bl, |x: T, y: T| (x > y) as u8),
        CmpOp::Ge => map2(a, al, b, bl, |x: T, y: T| (x >= y) as u8),
    }
}

pub(crate) fn cmp(
    op: CmpOp,
    lhs: &dyn BackendStorage,
    al: &Layout,
    rhs: &dyn BackendStorage,
    bl: &Layout,
) -> Result<HostData> {
    let (x, y) = operands(op.name(), lhs, al, rhs, bl)?;
    let out = match (x, y) {
        (HostData::U8(a), HostData::U8(b)) => cmp_typed(op, a, al, b, bl),
        (HostData::U32(a), HostData::U32(b)) => cmp_typed(op, a, al, b, bl),
        (HostData::I64(a), HostData::I64(b)) => cmp_typed(op, a, al, b, bl),
        (HostData::F16(a), HostData::F16(b)) => cmp_typed(op, a, al, b, bl),
        (HostData::BF16(a), HostData::BF16(b)) => cmp_typed(op, a, al, b, bl),
        (HostData::F32(a), HostData::F32(b)) => cmp_typed(op, a, al, b, bl),
        (HostData::F64(a), HostData::F64(b)) => cmp_typed(op, a, al, b, bl),
        _ => return Err(mismatch(op.name(), x, y)),
    };
    Ok(HostData::U8(out))
}

fn where_typed<C: Elem, T: Elem>(
    c: &[C],
    cl: &Layout,
    t: &[T],
    tl: &Layout,
    f: &[T],
    fl: &Layout,
) -> Vec<T> {
    let zero = C::from_i64(0);
    map3(
        c,
        cl,
        t,
        tl,
        f,
        fl,
        |c: C, t: T, f: T| {
            if c != zero {
                t
            } else {
                f
            }
        },
    )
}

/// The condition is normally u8; any dtype is accepted and read as "non-zero".
fn where_cond_typed<C: Elem>(
    c: &[C],
    cl: &Layout,
    x: &HostData,
    tl: &Layout,
    y: &HostData,
    fl: &Layout,
) -> Result<HostData> {
    Ok(match (x, y) {
        (HostData::U8(t), HostData::U8(f)) => HostData::U8(where_typed(c, cl, t, tl, f, fl)),
        (HostData::U32(t), HostData::U32(f)) => HostData::U32(where_typed(c, cl, t, tl, f, fl)),
        (HostData::I64(t), HostData::I64(f)) => HostData::I64(where_typed(c, cl, t, tl, f, fl)),
        (HostData::F16(t), HostData::F16(f)) => HostData::F16(where_typed(c, cl, t, tl, f, fl)),
        (HostData::BF16(t), HostData::BF16(f)) => HostData::BF16(where_typed(c, cl, t, tl, f, fl)),
        (HostData::F32(t), HostData::F32(f)) => HostData::F32(where_typed(c, cl, t, tl, f, fl)),
        (HostData::F64(t), HostData::F64(f)) => HostData::F64(where_typed(c, cl, t, tl, f, fl)),
        _ => return Err(mismatch("where", x, y)),
    })
}

pub(crate) fn where_cond(
    cond: &dyn BackendStorage,
    cl: &Layout,
    on_true: &dyn BackendStorage,
    tl: &Layout,
    on_false: &dyn BackendStorage,
    fl: &Layout,
) -> Result<HostData> {
    const OP: &str = "where";
    check_same_shape(cl, tl, OP)?;
    check_layout(cond, cl, OP)?;
    let (x, y) = operands(OP, on_true, tl, on_false, fl)?;
    match &cpu(cond)?.data {
        HostData::U8(c) => where_cond_typed(c, cl, x, tl, y, fl),
        HostData::U32(c) => where_cond_typed(c, cl, x, tl, y, fl),
        HostData::I64(c) => where_cond_typed(c, cl, x, tl, y, fl),
        HostData::F16(c) => where_cond_typed(c, cl, x, tl, y, fl),
        HostData::BF16(c) => where_cond_typed(c, cl, x, tl, y, fl),
        HostData::F32(c) => where_cond_typed(c, cl, x, tl, y, fl),
        HostData::F64(c) => where_cond_typed(c, cl, x, tl, y, fl),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use tensor_core::{BackendDevice, Shape};

    const FLOATS: [DType; 4] = [DType::F16, DType::BF16, DType::F32, DType::F64];
    const INTS: [DType; 3] = [DType::U8, DType::U32, DType::I64];

    fn tol(dt: DType) -> f64 {
        match dt {
            DType::F16 => 2e-3,
            DType::BF16 => 1.6e-2,
            DType::F32 => 2e-6,
            _ => 1e-14,
        }
    }

    fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            let ok = (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol * (1.0 + y.abs());
            assert!(ok, "{what}[{i}]: got {x}, want {y}");
        }
    }

    fn erf_ref(x: f64) -> f64 {
        // Abramowitz–Stegun 7.1.26 is too coarse; use the series / continued fraction.
        if x.abs() < 3.0 {
            let mut sum = x;
            let mut term = x;
            let x2 = x * x;
            for n in 1..200 {
                term *= -x2 / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            libm::erf(x)
        }
    }

    fn unary_ref(op: UnaryOp, x: f64) -> f64 {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        match op {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sign => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Sqr => x * x,
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sig(x),
            UnaryOp::Relu => x.max(0.0),
            UnaryOp::Gelu => 0.5 * x * (1.0 + erf_ref(x / 2f64.sqrt())),
            UnaryOp::GeluTanh => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh())
            }
            UnaryOp::Erf => erf_ref(x),
            UnaryOp::Silu => x * sig(x),
            UnaryOp::Softplus => {
                if x > 20.0 {
                    x
                } else {
                    x.exp().ln_1p()
                }
            }
            UnaryOp::Floor => x.floor(),
            UnaryOp::Ceil => x.ceil(),
            UnaryOp::Round => x.round_ties_even(),
            UnaryOp::Affine { mul, add } => x * mul + add,
            UnaryOp::Powf(e) => x.powf(e),
            UnaryOp::Elu(a) => {
                if x > 0.0 {
                    x
                } else {
                    a * x.exp_m1()
                }
            }
            UnaryOp::LeakyRelu(s) => {
                if x > 0.0 {
                    x
                } else {
                    s * x
                }
            }
            UnaryOp::Clamp { min, max } => x.max(min).min(max),
        }
    }

    const ALL_UNARY: [UnaryOp; 27] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Sign,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Recip,
        UnaryOp::Sqr,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Erf,
        UnaryOp::Silu,
        UnaryOp::Softplus,
        UnaryOp::Floor,
        UnaryOp::Ceil,
        UnaryOp::Round,
        UnaryOp::Affine {
            mul: 1.5,
            add: -0.25,
        },
        UnaryOp::Powf(1.7),
        UnaryOp::Elu(0.8),
        UnaryOp::LeakyRelu(0.1),
        UnaryOp::Clamp {
            min: -0.3,
            max: 0.4,
        },
    ];

    /// Ops whose domain is the positive reals get positive inputs.
    fn positive_domain(op: UnaryOp) -> bool {
        matches!(
            op,
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Powf(_)
        )
    }

    #[test]
    fn unary_floats_match_reference_on_strided_views() {
        let raw: Vec<f64> = noise(48, 1).iter().map(|x| x * 4.0).collect();
        let pos: Vec<f64> = raw.iter().map(|x| x.abs() + 0.1).collect();
        let views = [
            Layout::contiguous([48]),
            Layout::contiguous([4, 12]).permute(&[1, 0]),
            Layout::contiguous([1, 12])
                .broadcast_as(&Shape::from([3, 12]))
                .unwrap(),
        ];
        for dt in FLOATS {
            for op in ALL_UNARY {
                let src = f64s(if positive_domain(op) { &pos } else { &raw }, dt);
                // The reference sees the values as stored (already rounded to `dt`).
                let stored = read(src.as_ref());
                for l in &views {
                    let out = dev().unary(op, src.as_ref(), l).unwrap();
                    assert_eq!(out.dtype(), dt);
                    let want: Vec<f64> =
                        view(&stored, l).iter().map(|&x| unary_ref(op, x)).collect();
                    let what = format!("{} {dt} {:?}", op.name(), l.dims());
                    close(&read(out.as_ref()), &want, 2.0 * tol(dt), &what);
                }
            }
        }
    }

    #[test]
    fn special_values() {
        let src = f64s(&[-1000.0, 1000.0, 0.0, 2.5, 3.5, -2.5, 30.0], DType::F64);
        let l = Layout::contiguous([7]);
        let run = |op| read(dev().unary(op, src.as_ref(), &l).unwrap().as_ref());
        let s = run(UnaryOp::Sigmoid);
        assert_eq!(s[0], 0.0);
        assert_eq!(s[1], 1.0);
        assert!(s.iter().all(|x| x.is_finite()));
        assert_eq!(run(UnaryOp::Round)[3..6], [2.0, 4.0, -2.0]);
        assert_eq!(run(UnaryOp::Sign)[..3], [-1.0, 1.0, 0.0]);
        assert_eq!(run(UnaryOp::Softplus)[6], 30.0);
        assert_eq!(run(UnaryOp::Softplus)[1], 1000.0);
        assert!(run(UnaryOp::Silu).iter().all(|x| x.is_finite()));
        // Gelu at a point where the erf tail matters, in full f64 precision.
        let g = f64s(&[-3.0, 1e-3], DType::F64);
        let got = read(
            dev()
                .unary(UnaryOp::Gelu, g.as_ref(), &Layout::contiguous([2]))
                .unwrap()
                .as_ref(),
        );
        let r = std::f64::consts::FRAC_1_SQRT_2;
        let want = [
            -1.5 * libm::erfc(3.0 * r),
            0.5e-3 * (1.0 + erf_ref(1e-3 * r)),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 2e-15 * w.abs(), "{g} vs {w}");
        }
        // NaN propagates through relu and clamp.
        let n = f64s(&[f64::NAN], DType::F32);
        let l1 = Layout::contiguous([1]);
        for op in [UnaryOp::Relu, UnaryOp::Clamp { min: 0.0, max: 1.0 }] {
            assert!(read(dev().unary(op, n.as_ref(), &l1).unwrap().as_ref())[0].is_nan());
        }
    }

    #[test]
    fn unary_ints() {
        let l = Layout::contiguous([4]);
        let s = f64s(&[-3.0, 0.0, 2.0, 5.0], DType::I64);
        let run = |op| read(dev().unary(op, s.as_ref(), &l).unwrap().as_ref());
        assert_eq!(run(UnaryOp::Neg), [3.0, 0.0, -2.0, -5.0]);
        assert_eq!(run(UnaryOp::Abs), [3.0, 0.0, 2.0, 5.0]);
        assert_eq!(run(UnaryOp::Sign), [-1.0, 0.0, 1.0, 1.0]);
        assert_eq!(run(UnaryOp::Sqr), [9.0, 0.0, 4.0, 25.0]);
        assert_eq!(run(UnaryOp::Relu), [0.0, 0.0, 2.0, 5.0]);
        assert_eq!(
            run(UnaryOp::Affine { mul: 2.0, add: 1.0 }),
            [-5.0, 1.0, 5.0, 11.0]
        );
        assert_eq!(
            run(UnaryOp::Clamp {
                min: -1.0,
                max: 3.0
            }),
            [-1.0, 0.0, 2.0, 3.0]
        );
        for dt in INTS {
            let s = f64s(&[1.0, 2.0], dt);
            let l = Layout::contiguous([2]);
            assert_eq!(
                read(dev().unary(UnaryOp::Sqr, s.as_ref(), &l).unwrap().as_ref()),
                [1.0, 4.0]
            );
            assert!(matches!(
                dev().unary(UnaryOp::Exp, s.as_ref(), &l),
                Err(Error::UnsupportedDType { .. })
            ));
        }
    }

    fn binary_ref(op: BinaryOp, a: f64, b: f64) -> f64 {
        match op {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Pow => a.powf(b),
            BinaryOp::Maximum => a.max(b),
            BinaryOp::Minimum => a.min(b),
        }
    }

    const ALL_BINARY: [BinaryOp; 7] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
    ];

    /// (lhs layout, rhs layout) pairs of shape [3, 4, 5] over buffers of 60 and 20 elements.
    fn binary_layouts() -> Vec<(Layout, Layout)> {
        let s = Shape::from([3, 4, 5]);
        let c = Layout::contiguous([3, 4, 5]);
        vec![
            (c.clone(), c.clone()),
            // rhs broadcast along the leading dim (stride 0), and along the last dim.
            (
                c.clone(),
                Layout::contiguous([4, 5]).broadcast_as(&s).unwrap(),
            ),
            (
                Layout::contiguous([4, 5]).broadcast_as(&s).unwrap(),
                c.clone(),
            ),
            (
                c.clone(),
                Layout::contiguous([3, 4, 1]).broadcast_as(&s).unwrap(),
            ),
            // Transposed lhs with an offset-free permute, rhs narrowed with an offset.
            (
                Layout::contiguous([5, 4, 3]).permute(&[2, 1, 0]),
                Layout::contiguous([3, 4, 10]).narrow(2, 5, 5),
            ),
        ]
    }

    #[test]
    fn binary_floats_broadcast_and_strided() {
        // Positive lhs (for pow), rhs bounded away from zero (for div).
        let da: Vec<f64> = noise(120, 5).iter().map(|x| x.abs() * 3.0 + 0.5).collect();
        let db: Vec<f64> = noise(120, 6)
            .iter()
            .map(|x| x.signum() * (x.abs() * 3.0 + 0.25))
            .collect();
        for dt in FLOATS {
            let (sa, sb) = (f64s(&da, dt), f64s(&db, dt));
            let (ra, rb) = (read(sa.as_ref()), read(sb.as_ref()));
            for (al, bl) in binary_layouts() {
                let (va, vb) = (view(&ra, &al), view(&rb, &bl));
                for op in ALL_BINARY {
                    let out = dev()
                        .binary(op, sa.as_ref(), &al, sb.as_ref(), &bl)
                        .unwrap();
                    assert_eq!(out.dtype(), dt);
                    let want: Vec<f64> = va
                        .iter()
                        .zip(&vb)
                        .map(|(&a, &b)| binary_ref(op, a, b))
                        .collect();
                    let what = format!("{} {dt} {:?} {:?}", op.name(), al, bl);
                    close(&read(out.as_ref()), &want, 2.0 * tol(dt), &what);
                }
            }
        }
    }

    #[test]
    fn binary_large_parallel_broadcast() {
        let (r, c) = (300, 301);
        let da = noise(r * c, 9);
        let db = noise(c, 10);
        let sa = f64s(&da, DType::F32);
        let sb = f64s(&db, DType::F32);
        let al = Layout::contiguous([r, c]);
        let bl = Layout::contiguous([1, c])
            .broadcast_as(&Shape::from([r, c]))
            .unwrap();
        let out = dev()
            .binary(BinaryOp::Mul, sa.as_ref(), &al, sb.as_ref(), &bl)
            .unwrap();
        let (ra, rb) = (read(sa.as_ref()), read(sb.as_ref()));
        let want: Vec<f64> = (0..r * c)
            .map(|i| ((ra[i] as f32) * (rb[i % c] as f32)) as f64)
            .collect();
        assert_eq!(read(out.as_ref()), want);
    }

    #[test]
    fn maximum_propagates_nan() {
        let a = f64s(&[f64::NAN, 1.0, 2.0], DType::F32);
        let b = f64s(&[0.0, f64::NAN, 1.0], DType::F32);
        let l = Layout::contiguous([3]);
        for op in [BinaryOp::Maximum, BinaryOp::Minimum] {
            let o = read(
                dev()
                    .binary(op, a.as_ref(), &l, b.as_ref(), &l)
                    .unwrap()
                    .as_ref(),
            );
            assert!(o[0].is_nan() && o[1].is_nan(), "{op:?}: {o:?}");
        }
    }

    #[test]
    fn binary_ints() {
        let l = Layout::contiguous([4]);
        let a = f64s(&[7.0, -7.0, 7.0, -7.0], DType::I64);
        let b = f64s(&[2.0, 2.0, -2.0, -2.0], DType::I64);
        let run = |op| {
            read(
                dev()
                    .binary(op, a.as_ref(), &l, b.as_ref(), &l)
                    .unwrap()
                    .as_ref(),
            )
        };
        assert_eq!(run(BinaryOp::Div), [3.0, -4.0, -4.0, 3.0]);
        assert_eq!(run(BinaryOp::Add), [9.0, -5.0, 5.0, -9.0]);
        assert_eq!(run(BinaryOp::Mul), [14.0, -14.0, -14.0, 14.0]);
        assert_eq!(run(BinaryOp::Maximum), [7.0, 2.0, 7.0, -2.0]);
        assert_eq!(run(BinaryOp::Pow), [49.0, 49.0, 0.0, 0.0]);
        for dt in INTS {
            let a = f64s(&[6.0, 9.0, 200.0], dt);
            let b = f64s(&[4.0, 2.0, 100.0], dt);
            let l = Layout::contiguous([3]);
            let run = |op| {
                read(
                    dev()
                        .binary(op, a.as_ref(), &l, b.as_ref(), &l)
                        .unwrap()
                        .as_ref(),
                )
            };
            assert_eq!(run(BinaryOp::Div), [1.0, 4.0, 2.0]);
            assert_eq!(run(BinaryOp::Sub), [2.0, 7.0, 100.0]);
            assert_eq!(run(BinaryOp::Minimum), [4.0, 2.0, 100.0]);
            let z = f64s(&[1.0, 0.0, 1.0], dt);
            assert!(dev()
                .binary(BinaryOp::Div, a.as_ref(), &l, z.as_ref(), &l)
                .is_err());
        }
        // u8 wraps like torch.uint8.
        let a = f64s(&[200.0], DType::U8);
        let l1 = Layout::contiguous([1]);
        let o = dev()
            .binary(BinaryOp::Add, a.as_ref(), &l1, a.as_ref(), &l1)
            .unwrap();
        assert_eq!(read(o.as_ref()), [144.0]);
    }

    #[test]
    fn binary_mismatches_are_errors() {
        let a = f64s(&[1.0, 2.0], DType::F32);
        let b = f64s(&[1.0, 2.0], DType::F64);
        let l = Layout::contiguous([2]);
        assert!(matches!(
            dev().binary(BinaryOp::Add, a.as_ref(), &l, b.as_ref(), &l),
            Err(Error::DTypeMismatch { .. })
        ));
        assert!(dev()
            .binary(
                BinaryOp::Add,
                a.as_ref(),
                &l,
                a.as_ref(),
                &Layout::contiguous([1, 2])
            )
            .is_err());
    }

    #[test]
    fn cmp_and_where_all_dtypes() {
        for dt in DType::ALL {
            let a = f64s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dt);
            let b = f64s(&[3.0, 2.0, 1.0], dt);
            let al = Layout::contiguous([2, 3]);
            let bl = Layout::contiguous([3])
                .broadcast_as(&Shape::from([2, 3]))
                .unwrap();
            let run = |op| {
                read(
                    dev()
                        .cmp(op, a.as_ref(), &al, b.as_ref(), &bl)
                        .unwrap()
                        .as_ref(),
                )
            };
            assert_eq!(run(CmpOp::Lt), [1., 0., 0., 0., 0., 0.]);
            assert_eq!(run(CmpOp::Le), [1., 1., 0., 0., 0., 0.]);
            assert_eq!(run(CmpOp::Eq), [0., 1., 0., 0., 0., 0.]);
            assert_eq!(run(CmpOp::Ne), [1., 0., 1., 1., 1., 1.]);
            assert_eq!(run(CmpOp::Gt), [0., 0., 1., 1., 1., 1.]);
            assert_eq!(run(CmpOp::Ge), [0., 1., 1., 1., 1., 1.]);
            let c = dev()
                .cmp(CmpOp::Gt, a.as_ref(), &al, b.as_ref(), &bl)
                .unwrap();
            assert_eq!(c.dtype(), DType::U8);
            // where(a > b, a, b broadcast), with the condition transposed twice.
            let w = dev()
                .where_cond(c.as_ref(), &al, a.as_ref(), &al, b.as_ref(), &bl)
                .unwrap();
            assert_eq!(read(w.as_ref()), [3., 2., 3., 4., 5., 6.]);
            let ct = Layout::contiguous([3, 2]).permute(&[1, 0]);
            let cond = f64s(&[1.0, 0.0, 0.0, 1.0, 1.0, 0.0], DType::U8);
            let w = dev()
                .where_cond(cond.as_ref(), &ct, a.as_ref(), &al, b.as_ref(), &bl)
                .unwrap();
            // cond viewed through ct is [[1, 0, 1], [0, 1, 0]].
            assert_eq!(read(w.as_ref()), [1., 2., 3., 3., 5., 1.]);
        }
    }
}
