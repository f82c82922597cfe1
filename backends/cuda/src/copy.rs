//! Host↔device transfers, fills, strided copies and casts (`kernels/copy.cu`).
//!
//! Transfers happen only here, when the user asks for them (`from_host`/`to_host`); every
//! other op stays on the device.

use cudarc::driver::result;
use half::{bf16, f16};
use tensor_core::{map_host, DType, HostData, Layout, Result};

use crate::error::drv;
use crate::kernels::{cfg_1d, check_u32, ModuleSrc, Strided};
use crate::{launch, CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "copy",
    src: include_str!("../kernels/copy.cu"),
};

pub(crate) fn from_host(dev: &CudaDevice, data: HostData) -> Result<CudaStorage> {
    let n = data.len();
    let s = dev.alloc(n, data.dtype())?;
    if n > 0 {
        map_host!(&data, v => {
            // SAFETY: the buffer holds `n` elements of this dtype; we wait for the copy
            // before `data` is dropped.
            unsafe { result::memcpy_htod_async(s.ptr(), v.as_slice(), dev.stream().cu_stream()) }
                .map_err(drv("copy to device"))?;
        });
        dev.stream().synchronize().map_err(drv("synchronize"))?;
    }
    Ok(s)
}

fn read<T: Clone + Default>(dev: &CudaDevice, ptr: u64, n: usize) -> Result<Vec<T>> {
    let mut v = vec![T::default(); n];
    if n > 0 {
        // SAFETY: `ptr` addresses `n` elements of `T` (checked by the caller's layout).
        unsafe { result::memcpy_dtoh_async(v.as_mut_slice(), ptr, dev.stream().cu_stream()) }
            .map_err(drv("copy to host"))?;
        dev.stream().synchronize().map_err(drv("synchronize"))?;
    }
    Ok(v)
}

pub(crate) fn to_host(dev: &CudaDevice, s: &CudaStorage, l: &Layout) -> Result<HostData> {
    crate::check_layout(s, l, "to_host")?;
    let n = l.elem_count();
    let contiguous;
    let (src, off) = if l.is_contiguous() {
        (s, l.offset())
    } else {
        contiguous = copy_strided(dev, s, l)?;
        (&contiguous, 0)
    };
    let ptr = src.ptr_at(off);
    Ok(match s.dtype {
        DType::U8 => HostData::U8(read::<u8>(dev, ptr, n)?),
        DType::U32 => HostData::U32(read::<u32>(dev, ptr, n)?),
        DType::I64 => HostData::I64(read::<i64>(dev, ptr, n)?),
        DType::F16 => HostData::F16(read::<f16>(dev, ptr, n)?),
        DType::BF16 => HostData::BF16(read::<bf16>(dev, ptr, n)?),
        DType::F32 => HostData::F32(read::<f32>(dev, ptr, n)?),
        DType::F64 => HostData::F64(read::<f64>(dev, ptr, n)?),
    })
}

/// The element-size suffix of the dtype-agnostic copy and fill kernels.
fn width(dt: DType) -> usize {
    dt.size_in_bytes()
}

pub(crate) fn full(dev: &CudaDevice, n: usize, value: f64, dtype: DType) -> Result<CudaStorage> {
    let out = dev.alloc(n, dtype)?;
    if n == 0 {
        return Ok(out);
    }
    // The value converted on the host exactly as a host tensor of this dtype would hold it.
    let bits: u64 = match HostData::from_f64_slice(&[value], dtype) {
        HostData::U8(v) => v[0] as u64,
        HostData::U32(v) => v[0] as u64,
        HostData::I64(v) => v[0] as u64,
        HostData::F16(v) => v[0].to_bits() as u64,
        HostData::BF16(v) => v[0].to_bits() as u64,
        HostData::F32(v) => v[0].to_bits() as u64,
        HostData::F64(v) => v[0].to_bits(),
    };
    let n32 = check_u32(n)?;
    let dst = out.ptr();
    launch!(
        dev,
        MODULE,
        &format!("fill_b{}", width(dtype)),
        cfg_1d(n32, dev.max_blocks()),
        n32,
        dst,
        bits
    )?;
    Ok(out)
}

pub(crate) fn copy_strided(dev: &CudaDevice, s: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    crate::check_layout(s, l, "copy_strided")?;
    let n = l.elem_count();
    let out = dev.alloc(n, s.dtype)?;
    if n == 0 {
        return Ok(out);
    }
    let n32 = check_u32(n)?;
    let (src, sv, dst, dv) = (s.ptr(), Strided::new(l)?, out.ptr(), Strided::contiguous(0));
    launch!(
        dev,
        MODULE,
        &format!("copy_b{}", width(s.dtype)),
        cfg_1d(n32, dev.max_blocks()),
        n32,
        src,
        sv,
        dst,
        dv
    )?;
    Ok(out)
}

pub(crate) fn copy_into(
    dev: &CudaDevice,
    dst: &mut CudaStorage,
    dst_l: &Layout,
    src: &CudaStorage,
    src_l: &Layout,
) -> Result<()> {
    crate::check_layout(dst, dst_l, "copy_into")?;
    crate::check_layout(src, src_l, "copy_into")?;
    crate::check_same_shape(dst_l, src_l, "copy_into")?;
    let n = src_l.elem_count();
    if n == 0 {
        return Ok(());
    }
    let n32 = check_u32(n)?;
    let (sp, sv, dp, dv) = (
        src.ptr(),
        Strided::new(src_l)?,
        dst.ptr(),
        Strided::new(dst_l)?,
    );
    launch!(
        dev,
        MODULE,
        &format!("copy_b{}", width(src.dtype)),
        cfg_1d(n32, dev.max_blocks()),
        n32,
        sp,
        sv,
        dp,
        dv
    )
}

pub(crate) fn cast(
    dev: &CudaDevice,
    s: &CudaStorage,
    l: &Layout,
    dtype: DType,
) -> Result<CudaStorage> {
    if dtype == s.dtype {
        return copy_strided(dev, s, l);
    }
    crate::check_layout(s, l, "cast")?;
    let n = l.elem_count();
    let out = dev.alloc(n, dtype)?;
    if n == 0 {
        return Ok(out);
    }
    let n32 = check_u32(n)?;
    let (src, sv, dst) = (s.ptr(), Strided::new(l)?, out.ptr());
    let name = format!("cast_{}_{}", s.dtype.as_str(), dtype.as_str());
    launch!(
        dev,
        MODULE,
        &name,
        cfg_1d(n32, dev.max_blocks()),
        n32,
        src,
        sv,
        dst
    )?;
    Ok(out)
}
