//! Element types a tensor can hold, and the host-side buffer that moves data between backends.

use half::{bf16, f16};

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    U8,
    U32,
    I64,
    F16,
    BF16,
    F32,
    F64,
}

impl DType {
    pub const ALL: [DType; 7] = [
        DType::U8,
        DType::U32,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
    ];

    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    pub fn is_int(self) -> bool {
        !self.is_float()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::U32 => "u32",
            DType::I64 => "i64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Rust scalar type that maps to a [`DType`].
pub trait WithDType: Copy + Send + Sync + 'static + std::fmt::Debug + PartialOrd + Default {
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    fn into_host(v: Vec<Self>) -> HostData;
    fn slice_of(h: &HostData) -> Option<&[Self]>;
}

macro_rules! with_dtype {
    ($ty:ty, $variant:ident, $to:expr, $from:expr) => {
        impl WithDType for $ty {
            const DTYPE: DType = DType::$variant;
            #[inline(always)]
            fn to_f64(self) -> f64 {
                $to(self)
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            fn into_host(v: Vec<Self>) -> HostData {
                HostData::$variant(v)
            }
            fn slice_of(h: &HostData) -> Option<&[Self]> {
                match h {
                    HostData::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

with_dtype!(u8, U8, |v: u8| v as f64, |v: f64| v as u8);
with_dtype!(u32, U32, |v: u32| v as f64, |v: f64| v as u32);
with_dtype!(i64, I64, |v: i64| v as f64, |v: f64| v as i64);
with_dtype!(f16, F16, |v: f16| v.to_f64(), f16::from_f64);
with_dtype!(bf16, BF16, |v: bf16| v.to_f64(), bf16::from_f64);
with_dtype!(f32, F32, |v: f32| v as f64, |v: f64| v as f32);
with_dtype!(f64, F64, |v: f64| v, |v: f64| v);

/// Contiguous data on the host, one variant per dtype. Backends take it in `from_host` and
/// give it back from `to_host`; it is the only currency of data that core understands.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    U8(Vec<u8>),
    U32(Vec<u32>),
    I64(Vec<i64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Dispatch on a [`HostData`] with the vector bound to `$v` in every arm.
#[macro_export]
macro_rules! map_host {
    ($h:expr, $v:ident => $body:expr) => {
        match $h {
            $crate::HostData::U8($v) => $body,
            $crate::HostData::U32($v) => $body,
            $crate::HostData::I64($v) => $body,
            $crate::HostData::F16($v) => $body,
            $crate::HostData::BF16($v) => $body,
            $crate::HostData::F32($v) => $body,
            $crate::HostData::F64($v) => $body,
        }
    };
}

impl HostData {
    pub fn dtype(&self) -> DType {
        match self {
            HostData::U8(_) => DType::U8,
            HostData::U32(_) => DType::U32,
            HostData::I64(_) => DType::I64,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
            HostData::F32(_) => DType::F32,
            HostData::F64(_) => DType::F64,
        }
    }

    pub fn len(&self) -> usize {
        map_host!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every element converted to f64 (exact for all dtypes except i64 beyond 2^53).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        map_host!(self, v => v.iter().map(|x| x.to_f64()).collect())
    }

    /// Build a buffer of `dtype` from f64 values (rounding/truncating as `as` casts do).
    pub fn from_f64_slice(values: &[f64], dtype: DType) -> HostData {
        fn conv<T: WithDType>(values: &[f64]) -> HostData {
            T::into_host(values.iter().map(|&x| T::from_f64(x)).collect())
        }
        match dtype {
            DType::U8 => conv::<u8>(values),
            DType::U32 => conv::<u32>(values),
            DType::I64 => conv::<i64>(values),
            DType::F16 => conv::<f16>(values),
            DType::BF16 => conv::<bf16>(values),
            DType::F32 => conv::<f32>(values),
            DType::F64 => conv::<f64>(values),
        }
    }
}
