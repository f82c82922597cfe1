//! CPU backend for tensor-engine: host vectors, rayon for large work, and a strided walker that
//! keeps the innermost dimension a tight loop. [`device()`] hands out the shared CPU device.
//!
//! This file also holds the per-element traits the kernels are generic over: `Elem` for every
//! dtype, `HalfFloat` for the 16-bit types computed through f32 (the float math trait, `Float`,
//! lives in `elementwise.rs`), plus the layout checks every primitive runs first.

mod cast;
mod conv;
mod copy;
mod device;
mod elementwise;
mod fused;
// The matmul helper's packed f32 GEMM, used by `matmul`.
mod decoder;
mod gemm_f32;
mod index;
mod matmul;
mod optim;
pub mod quant;
mod random;
mod reduce;
mod storage;

pub use device::{device, CpuDevice};
pub use storage::CpuStorage;

/// The CPU's fused decoder for `spec` on `threads` threads (the device's
/// `fused_decoder` uses rayon's thread count).
pub fn fused_decoder(
    spec: &tensor_core::decoder::DecoderSpec,
    threads: usize,
) -> Result<Box<dyn tensor_core::decoder::FusedDecoder>> {
    Ok(Box::new(decoder::CpuDecoder::new(spec, threads)?))
}

use half::{bf16, f16};
use tensor_core::{BackendStorage, Error, Layout, Result, WithDType};

/// Element count above which a kernel splits its output across rayon threads.
pub(crate) const PAR_THRESHOLD: usize = 32 * 1024;
/// Elements per parallel task (fixed, so chunked results do not depend on the thread count).
pub(crate) const PAR_CHUNK: usize = 16 * 1024;

/// An accumulator: f32/f64 add normally, integers wrap (as PyTorch's integer adds do).
pub(crate) trait Acc: Copy + Send + Sync + Default + std::fmt::Debug + 'static {
    fn add(self, other: Self) -> Self;
}

macro_rules! acc_int {
    ($($t:ty),*) => {$(
        impl Acc for $t {
            #[inline(always)]
            fn add(self, other: Self) -> Self {
                self.wrapping_add(other)
            }
        }
    )*};
}
acc_int!(u8, u32, i64);
impl Acc for f32 {
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self + other
    }
}
impl Acc for f64 {
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self + other
    }
}

/// What every kernel needs from an element type.
pub(crate) trait Elem: WithDType {
    const IS_INT: bool;
    /// The identity of `max` (−inf for floats, the type's minimum for integers).
    const LOWEST: Self;
    /// The identity of `min`.
    const HIGHEST: Self;
    /// Sums accumulate in this type: f32 for the 16-bit floats, the type itself otherwise.
    type Acc: Acc;
    fn to_acc(self) -> Self::Acc;
    fn from_acc(a: Self::Acc) -> Self;
    fn is_nan(self) -> bool;
    /// Integers exactly; floats truncated toward zero (saturating, NaN → 0).
    fn as_i64(self) -> i64;
    /// Wrapping for integers (like a C cast), rounding for floats.
    fn from_i64(v: i64) -> Self;
}

macro_rules! elem_int {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            const IS_INT: bool = true;
            const LOWEST: Self = <$t>::MIN;
            const HIGHEST: Self = <$t>::MAX;
            type Acc = $t;
            #[inline(always)]
            fn to_acc(self) -> Self::Acc { self }
            #[inline(always)]
            fn from_acc(a: Self::Acc) -> Self { a }
            #[inline(always)]
            fn is_nan(self) -> bool { false }
            #[inline(always)]
            fn as_i64(self) -> i64 { self as i64 }
            #[inline(always)]
            fn from_i64(v: i64) -> Self { v as $t }
        }
    )*};
}
elem_int!(u8, u32, i64);

macro_rules! elem_float {
    ($t:ty, $acc:ty, $to:expr, $from:expr) => {
        impl Elem for $t {
            const IS_INT: bool = false;
            const LOWEST: Self = <$t>::NEG_INFINITY;
            const HIGHEST: Self = <$t>::INFINITY;
            type Acc = $acc;
            #[inline(always)]
            fn to_acc(self) -> Self::Acc {
                $to(self)
            }
            #[inline(always)]
            fn from_acc(a: Self::Acc) -> Self {
                $from(a)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                self.is_nan()
            }
            #[inline(always)]
            fn as_i64(self) -> i64 {
                self.to_f64() as i64
            }
            #[inline(always)]
            fn from_i64(v: i64) -> Self {
                <$t as WithDType>::from_f64(v as f64)
            }
        }
    };
}
elem_float!(f16, f32, f16::to_f32, f16::from_f32);
elem_float!(bf16, f32, bf16::to_f32, bf16::from_f32);
elem_float!(f32, f32, |x| x, |x| x);
elem_float!(f64, f64, |x| x, |x| x);

/// The 16-bit floats, whose math runs in f32.
pub(crate) trait HalfFloat: Elem {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}
impl HalfFloat for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}
impl HalfFloat for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// Dispatch on a [`tensor_core::HostData`] and wrap the result in the same variant:
/// `map_same!(&data, v => kernel(v))` where `kernel` returns a `Vec` of the input's type.
macro_rules! map_same {
    ($h:expr, $v:ident => $body:expr) => {
        match $h {
            tensor_core::HostData::U8($v) => tensor_core::HostData::U8($body),
            tensor_core::HostData::U32($v) => tensor_core::HostData::U32($body),
            tensor_core::HostData::I64($v) => tensor_core::HostData::I64($body),
            tensor_core::HostData::F16($v) => tensor_core::HostData::F16($body),
            tensor_core::HostData::BF16($v) => tensor_core::HostData::BF16($body),
            tensor_core::HostData::F32($v) => tensor_core::HostData::F32($body),
            tensor_core::HostData::F64($v) => tensor_core::HostData::F64($body),
        }
    };
}
pub(crate) use map_same;

/// The storage error for a layout that reaches past the end of its buffer; kernels index
/// with the layout's offsets, so this is checked once up front instead of panicking inside.
pub(crate) fn check_layout(s: &dyn BackendStorage, l: &Layout, op: &'static str) -> Result<()> {
    let need = l.required_len();
    if need > s.len() {
        return Err(Error::Backend {
            backend: "cpu".into(),
            msg: format!(
                "{op}: layout {:?} (strides {:?}, offset {}) needs {need} elements, storage has {}",
                l.dims(),
                l.strides(),
                l.offset(),
                s.len()
            ),
        });
    }
    Ok(())
}

/// Two views that must have the same shape.
pub(crate) fn check_same_shape(a: &Layout, b: &Layout, op: &'static str) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Small helpers shared by the unit tests of every kernel file.
    use tensor_core::{BackendDevice, BackendStorage, DType, HostData, Layout};

    use crate::CpuDevice;

    pub fn dev() -> CpuDevice {
        CpuDevice
    }

    pub fn st(data: HostData) -> Box<dyn BackendStorage> {
        Box::new(crate::CpuStorage::new(data))
    }

    pub fn f64s(v: &[f64], dtype: DType) -> Box<dyn BackendStorage> {
        st(HostData::from_f64_slice(v, dtype))
    }

    /// Read a storage back as f64 in its contiguous order.
    pub fn read(s: &dyn BackendStorage) -> Vec<f64> {
        let l = Layout::contiguous([s.len()]);
        dev()
            .to_host(s, &l)
            .expect("to_host of a test storage")
            .to_f64_vec()
    }

    /// A deterministic pseudo-random sequence in [-1, 1) (xorshift), for test data.
    pub fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    /// Reference: the values of a strided view, in row-major order.
    pub fn view(data: &[f64], l: &Layout) -> Vec<f64> {
        l.offsets().into_iter().map(|o| data[o]).collect()
    }
}
