//! Casts between all dtypes, with PyTorch's conversions: integer→integer wraps like a C cast,
//! float→integer truncates toward zero (saturating at the type's bounds, NaN → 0), and the
//! 16-bit floats convert through f32 (exact widening, one rounding).

use half::{bf16, f16};
use tensor_core::{map_host, BackendStorage, DType, HostData, Layout, Result};

use crate::copy::copy_view;
use crate::elementwise::map1;
use crate::storage::cpu;
use crate::{check_layout, map_same, Elem};

trait CastElem: Elem {
    /// f32 is an exact intermediate between any two of f16, bf16 and f32.
    const VIA_F32: bool;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

macro_rules! cast_elem {
    ($t:ty, $via:expr, $to:expr, $from:expr) => {
        impl CastElem for $t {
            const VIA_F32: bool = $via;
            #[inline(always)]
            fn to_f32(self) -> f32 {
                $to(self)
            }
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                $from(v)
            }
        }
    };
}
cast_elem!(u8, false, |x: u8| x as f32, |v: f32| v as u8);
cast_elem!(u32, false, |x: u32| x as f32, |v: f32| v as u32);
cast_elem!(i64, false, |x: i64| x as f32, |v: f32| v as i64);
cast_elem!(f16, true, f16::to_f32, f16::from_f32);
cast_elem!(bf16, true, bf16::to_f32, bf16::from_f32);
cast_elem!(f32, true, |x: f32| x, |v: f32| v);
cast_elem!(f64, false, |x: f64| x as f32, |v: f32| v as f64);

#[inline(always)]
fn conv<A: CastElem, B: CastElem>(a: A) -> B {
    if A::IS_INT && B::IS_INT {
        B::from_i64(a.as_i64())
    } else if A::VIA_F32 && B::VIA_F32 {
        B::from_f32(a.to_f32())
    } else {
        B::from_f64(a.to_f64())
    }
}

fn cast_from<A: CastElem>(src: &[A], l: &Layout, dtype: DType) -> HostData {
    match dtype {
        DType::U8 => HostData::U8(map1(src, l, conv::<A, u8>)),
        DType::U32 => HostData::U32(map1(src, l, conv::<A, u32>)),
        DType::I64 => HostData::I64(map1(src, l, conv::<A, i64>)),
        DType::F16 => HostData::F16(map1(src, l, conv::<A, f16>)),
        DType::BF16 => HostData::BF16(map1(src, l, conv::<A, bf16>)),
        DType::F32 => HostData::F32(map1(src, l, conv::<A, f32>)),
        DType::F64 => HostData::F64(map1(src, l, conv::<A, f64>)),
    }
}

pub(crate) fn cast(s: &dyn BackendStorage, l: &Layout, dtype: DType) -> Result<HostData> {
    check_layout(s, l, "cast")?;
    let data = &cpu(s)?.data;
    if data.dtype() == dtype {
        return Ok(map_same!(data, v => copy_view(v, l)));
    }
    Ok(map_host!(data, v => cast_from(v, l, dtype)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use tensor_core::{BackendDevice, Shape};

    #[test]
    fn float_to_int_truncates_and_saturates() {
        let s = dev()
            .from_host(HostData::F32(vec![2.7, -2.7, f32::NAN, 300.0, -5.0, 1e20]))
            .unwrap();
        let l = Layout::contiguous([6]);
        let i = dev().cast(s.as_ref(), &l, DType::I64).unwrap();
        assert_eq!(
            read(i.as_ref()),
            [2., -2., 0., 300., -5., 1e20f32 as i64 as f64]
        );
        let u = dev().cast(s.as_ref(), &l, DType::U8).unwrap();
        assert_eq!(read(u.as_ref()), [2., 0., 0., 255., 0., 255.]);
    }

    #[test]
    fn int_to_int_wraps_and_floats_round() {
        let s = dev()
            .from_host(HostData::I64(vec![-1, 256, 257, 1 << 40]))
            .unwrap();
        let l = Layout::contiguous([4]);
        let u = dev().cast(s.as_ref(), &l, DType::U8).unwrap();
        assert_eq!(read(u.as_ref()), [255., 0., 1., 0.]);
        let u32s = dev().cast(s.as_ref(), &l, DType::U32).unwrap();
        assert_eq!(read(u32s.as_ref()), [u32::MAX as f64, 256., 257., 0.]);
        let f = dev()
            .from_host(HostData::F64(vec![1.0 + 1e-3, 65504.0, 1e6]))
            .unwrap();
        let l3 = Layout::contiguous([3]);
        let h = dev().cast(f.as_ref(), &l3, DType::F16).unwrap();
        assert_eq!(
            dev().to_host(h.as_ref(), &l3).unwrap(),
            HostData::F16(vec![
                f16::from_f64(1.001),
                f16::from_f64(65504.0),
                f16::INFINITY
            ])
        );
        let b = dev().cast(h.as_ref(), &l3, DType::BF16).unwrap();
        assert_eq!(
            dev().to_host(b.as_ref(), &l3).unwrap(),
            HostData::BF16(vec![
                bf16::from_f32(f16::from_f64(1.001).to_f32()),
                bf16::from_f32(65504.0),
                bf16::INFINITY
            ])
        );
    }

    #[test]
    fn every_pair_of_dtypes_on_a_strided_view() {
        let vals = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let l = Layout::contiguous([2, 4]).permute(&[1, 0]);
        let want = view(&vals, &l);
        for a in DType::ALL {
            let s = f64s(&vals, a);
            for b in DType::ALL {
                let c = dev().cast(s.as_ref(), &l, b).unwrap();
                assert_eq!(c.dtype(), b);
                assert_eq!(read(c.as_ref()), want, "{a} -> {b}");
            }
        }
        // A broadcast view.
        let s = f64s(&[1.5, -2.5], DType::F32);
        let bl = Layout::contiguous([2, 1])
            .broadcast_as(&Shape::from([2, 3]))
            .unwrap();
        let c = dev().cast(s.as_ref(), &bl, DType::F64).unwrap();
        assert_eq!(read(c.as_ref()), [1.5, 1.5, 1.5, -2.5, -2.5, -2.5]);
    }
}
