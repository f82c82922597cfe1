//! Indexing (index_select, gather, scatter_add, index_add) and unfold/fold
//! (`kernels/index.cu`).
//!
//! index_select is a gather and index_add a scatter-add whose 1-D ids are seen broadcast over
//! the other dims (a stride-0 view), so each op is one launch of one of two kernels. The
//! kernels check every id and raise the device error flag on a bad one (skipping it); the
//! host then reads the flag (`check_err`, a device synchronisation) and, on an error, reads
//! the ids back to name the first bad one in the error, as the CPU backend does. The output
//! of a failed op is dropped. When the ids' dtype cannot hold a bad id (u8 ids into a dim of
//! 256 or more) the flag is not read and nothing waits.
//!
//! scatter_add and index_add copy `dst` into the output, then add with atomics (f16/bf16
//! and u8 through a compare-and-swap on the containing 32-bit word), so float results may
//! vary in their last bits between runs when ids repeat. fold is a gather (each output
//! element sums its taps in kernel order, like the CPU backend), so it is deterministic.

use cudarc::driver::DeviceRepr;
use tensor_core::checks;
use tensor_core::{DType, Error, HostData, Layout, Result, Shape, UnfoldParams};

use crate::kernels::{cfg_1d, check_u32, ModuleSrc, Strided};
use crate::{check_layout, launch, CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "index",
    src: include_str!("../kernels/index.cu"),
};

// ---- checks shared with the CPU backend's index ops ------------------------------------------

/// The kernel-name suffix of an index dtype.
fn ids_name(op: &'static str, ids: &CudaStorage) -> Result<&'static str> {
    match ids.dtype {
        DType::U8 | DType::U32 | DType::I64 => Ok(ids.dtype.as_str()),
        dtype => Err(Error::UnsupportedDType {
            op,
            dtype,
            expected: "u8, u32 or i64 indices",
        }),
    }
}

/// Whether an id of this dtype can lie outside `0..size` at all.
fn may_be_out_of_range(dtype: DType, size: usize) -> bool {
    match dtype {
        DType::U8 => size <= u8::MAX as usize,
        DType::U32 => (size as u64) <= u32::MAX as u64,
        _ => true,
    }
}

/// The first id (row-major in `l`) outside `0..size`, read on the host.
fn first_bad_id(
    dev: &CudaDevice,
    ids: &CudaStorage,
    l: &Layout,
    size: usize,
) -> Result<Option<i64>> {
    let bad = |i: i64| i < 0 || i as u64 >= size as u64;
    Ok(match crate::copy::to_host(dev, ids, l)? {
        HostData::U8(v) => v.into_iter().map(i64::from).find(|&i| bad(i)),
        HostData::U32(v) => v.into_iter().map(i64::from).find(|&i| bad(i)),
        HostData::I64(v) => v.into_iter().find(|&i| bad(i)),
        _ => None,
    })
}

/// After a launch that validated ids against `0..size`: the error of the first bad id, if
/// the kernel found one.
fn check_ids(
    dev: &CudaDevice,
    op: &'static str,
    ids: &CudaStorage,
    ids_l: &Layout,
    size: usize,
    dim: usize,
) -> Result<()> {
    if !may_be_out_of_range(ids.dtype, size) {
        return Ok(());
    }
    match dev.check_err(op) {
        Ok(()) => Ok(()),
        Err(e) => match first_bad_id(dev, ids, ids_l, size)? {
            Some(index) => Err(Error::IndexOutOfRange {
                op,
                index,
                dim,
                size,
            }),
            None => Err(e),
        },
    }
}

/// Validate ids on the host when no kernel runs (an empty output with non-empty ids).
fn check_ids_host(
    dev: &CudaDevice,
    op: &'static str,
    ids: &CudaStorage,
    ids_l: &Layout,
    size: usize,
    dim: usize,
) -> Result<()> {
    if ids_l.elem_count() == 0 || !may_be_out_of_range(ids.dtype, size) {
        return Ok(());
    }
    match first_bad_id(dev, ids, ids_l, size)? {
        Some(index) => Err(Error::IndexOutOfRange {
            op,
            index,
            dim,
            size,
        }),
        None => Ok(()),
    }
}

/// `strides` with entry `dim` set to 0.
fn zero_at(strides: &[usize], dim: usize) -> Vec<usize> {
    let mut s = strides.to_vec();
    s[dim] = 0;
    s
}

/// A 1-D view (stride `s`, offset `off`) seen broadcast over `dims`, varying along `dim`.
fn broadcast_1d(dims: &[usize], dim: usize, s: usize, off: usize) -> Layout {
    let mut strides = vec![0; dims.len()];
    strides[dim] = s;
    Layout::new(Shape::from(dims.to_vec()), strides, off)
}

/// `out[i] = src[view(i) + ids[iv(i)] * stride(dim)]` over `out_dims`, where `view` is the
/// source with `out_dims` and a zero stride along `dim`.
#[allow(clippy::too_many_arguments)]
fn run_gather(
    dev: &CudaDevice,
    op: &'static str,
    src: &CudaStorage,
    src_l: &Layout,
    ids: &CudaStorage,
    ids_l: &Layout,
    ids_view: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    let idt = ids_name(op, ids)?;
    let out_dims = ids_view.dims();
    let total = ids_view.elem_count();
    let size = src_l.dims()[dim];
    let out = dev.alloc(total, src.dtype)?;
    if total == 0 {
        check_ids_host(dev, op, ids, ids_l, size, dim)?;
        return Ok(out);
    }
    let n32 = check_u32(total)?;
    let sview = Layout::new(
        Shape::from(out_dims.to_vec()),
        zero_at(src_l.strides(), dim),
        src_l.offset(),
    );
    let (sp, sv, sd, sz) = (
        src.ptr(),
        Strided::new(&sview)?,
        src_l.strides()[dim] as u64,
        size as u64,
    );
    let (ip, iv, op_, err) = (
        ids.ptr(),
        Strided::new(ids_view)?,
        out.ptr(),
        dev.err_ptr()?,
    );
    let name = format!("gather_b{}_{idt}", src.dtype.size_in_bytes());
    launch!(
        dev,
        MODULE,
        &name,
        cfg_1d(n32, dev.max_blocks()),
        n32,
        sp,
        sv,
        sd,
        sz,
        ip,
        iv,
        op_,
        err
    )?;
    check_ids(dev, op, ids, ids_l, size, dim)?;
    Ok(out)
}

pub(crate) fn index_select(
    dev: &CudaDevice,
    src: &CudaStorage,
    src_l: &Layout,
    ids: &CudaStorage,
    ids_l: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    const OP: &str = "index_select";
    check_layout(src, src_l, OP)?;
    check_layout(ids, ids_l, OP)?;
    checks::dim_in_range(OP, src_l, dim)?;
    if ids_l.rank() != 1 {
        return Err(checks::unexpected_shape(OP, "1-D indices".into(), ids_l));
    }
    let mut dims = src_l.dims().to_vec();
    dims[dim] = ids_l.dims()[0];
    let view = broadcast_1d(&dims, dim, ids_l.strides()[0], ids_l.offset());
    run_gather(dev, OP, src, src_l, ids, ids_l, &view, dim)
}

pub(crate) fn gather(
    dev: &CudaDevice,
    src: &CudaStorage,
    src_l: &Layout,
    ids: &CudaStorage,
    ids_l: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    const OP: &str = "gather";
    check_layout(src, src_l, OP)?;
    check_layout(ids, ids_l, OP)?;
    checks::dim_in_range(OP, src_l, dim)?;
    checks::ids_fit(OP, ids_l, src_l, dim)?;
    run_gather(dev, OP, src, src_l, ids, ids_l, ids_l, dim)
}

/// `out = dst; out[oview(i) + ids[iv(i)] * stride(dim)] += src[i]` over `src_l`'s shape.
#[allow(clippy::too_many_arguments)]
fn run_scatter_add(
    dev: &CudaDevice,
    op: &'static str,
    dst: &CudaStorage,
    dst_l: &Layout,
    ids: &CudaStorage,
    ids_l: &Layout,
    ids_view: &Layout,
    src: &CudaStorage,
    src_l: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    let idt = ids_name(op, ids)?;
    let size = dst_l.dims()[dim];
    let out = crate::copy::copy_strided(dev, dst, dst_l)?;
    let total = src_l.elem_count();
    if total == 0 {
        check_ids_host(dev, op, ids, ids_l, size, dim)?;
        return Ok(out);
    }
    let n32 = check_u32(total)?;
    let ostrides = dst_l.shape().contiguous_strides();
    let oview = Layout::new(src_l.shape().clone(), zero_at(&ostrides, dim), 0);
    let (optr, ov, od, sz) = (
        out.ptr(),
        Strided::new(&oview)?,
        ostrides[dim] as u64,
        size as u64,
    );
    let (ip, iv, sp, sv, err) = (
        ids.ptr(),
        Strided::new(ids_view)?,
        src.ptr(),
        Strided::new(src_l)?,
        dev.err_ptr()?,
    );
    let name = format!("scatter_add_{}_{idt}", dst.dtype.as_str());
    launch!(
        dev,
        MODULE,
        &name,
        cfg_1d(n32, dev.max_blocks()),
        n32,
        optr,
        ov,
        od,
        sz,
        ip,
        iv,
        sp,
        sv,
        err
    )?;
    check_ids(dev, op, ids, ids_l, size, dim)?;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn scatter_add(
    dev: &CudaDevice,
    dst: &CudaStorage,
    dst_l: &Layout,
    ids: &CudaStorage,
    ids_l: &Layout,
    src: &CudaStorage,
    src_l: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    const OP: &str = "scatter_add";
    check_layout(dst, dst_l, OP)?;
    check_layout(ids, ids_l, OP)?;
    check_layout(src, src_l, OP)?;
    checks::dim_in_range(OP, dst_l, dim)?;
    checks::same_dtype(OP, dst.dtype, src.dtype)?;
    if ids_l.dims() != src_l.dims() {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: ids_l.shape().clone(),
            rhs: src_l.shape().clone(),
        });
    }
    checks::ids_fit(OP, ids_l, dst_l, dim)?;
    run_scatter_add(dev, OP, dst, dst_l, ids, ids_l, ids_l, src, src_l, dim)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn index_add(
    dev: &CudaDevice,
    dst: &CudaStorage,
    dst_l: &Layout,
    ids: &CudaStorage,
    ids_l: &Layout,
    src: &CudaStorage,
    src_l: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    const OP: &str = "index_add";
    check_layout(dst, dst_l, OP)?;
    check_layout(ids, ids_l, OP)?;
    check_layout(src, src_l, OP)?;
    checks::dim_in_range(OP, dst_l, dim)?;
    checks::same_dtype(OP, dst.dtype, src.dtype)?;
    if ids_l.rank() != 1 {
        return Err(checks::unexpected_shape(OP, "1-D indices".into(), ids_l));
    }
    let mut want = dst_l.dims().to_vec();
    want[dim] = ids_l.dims()[0];
    if src_l.dims() != want.as_slice() {
        return Err(checks::unexpected_shape(
            OP,
            format!("source of shape {want:?}"),
            src_l,
        ));
    }
    let view = broadcast_1d(&want, dim, ids_l.strides()[0], ids_l.offset());
    run_scatter_add(dev, OP, dst, dst_l, ids, ids_l, &view, src, src_l, dim)
}

// ---- unfold / fold --------------------------------------------------------------------------

/// The kernels' `struct Geom` (kernels/index.cu): geometry normalised to three spatial dims
/// (leading dims of size 1), plus the strides of the strided operand.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Geom {
    s_n: u64,
    s_c: u64,
    s_sp: [u64; 3],
    offset: u64,
    input: [u32; 3],
    out: [u32; 3],
    kernel: [u32; 3],
    stride: [u32; 3],
    padding: [u32; 3],
    dilation: [u32; 3],
    channels: u32,
    klen: u32,
    olen: u32,
    pad_: u32,
}

// SAFETY: plain `repr(C)` data with the layout of the kernels' struct.
unsafe impl DeviceRepr for Geom {}

/// Check the parameters (as the CPU backend does) and normalise an `[N, C, *spatial]`
/// geometry to three spatial dims. Strides, offset and channels are left to the caller.
fn geometry(op: &'static str, p: &UnfoldParams, spatial: &[usize]) -> Result<Geom> {
    let k = p.kernel.len();
    let out = tensor_core::checks::unfold_out_spatial(op, p, spatial)?;
    let pad3 = |v: &[usize], fill: u32| -> Result<[u32; 3]> {
        let mut a = [fill; 3];
        for (o, &x) in a[3 - k..].iter_mut().zip(v) {
            *o = check_u32(x)?;
        }
        Ok(a)
    };
    Ok(Geom {
        input: pad3(spatial, 1)?,
        out: pad3(&out, 1)?,
        kernel: pad3(&p.kernel, 1)?,
        stride: pad3(&p.stride, 1)?,
        padding: pad3(&p.padding, 0)?,
        dilation: pad3(&p.dilation, 1)?,
        klen: check_u32(p.kernel.iter().product())?,
        olen: check_u32(out.iter().product())?,
        ..Default::default()
    })
}

/// The bits of `v` stored in `dtype` (as a host tensor of that dtype would hold it).
fn value_bits(v: f64, dtype: DType) -> u64 {
    match HostData::from_f64_slice(&[v], dtype) {
        HostData::U8(v) => v[0] as u64,
        HostData::U32(v) => v[0] as u64,
        HostData::I64(v) => v[0] as u64,
        HostData::F16(v) => v[0].to_bits() as u64,
        HostData::BF16(v) => v[0].to_bits() as u64,
        HostData::F32(v) => v[0].to_bits() as u64,
        HostData::F64(v) => v[0].to_bits(),
    }
}

pub(crate) fn unfold(
    dev: &CudaDevice,
    s: &CudaStorage,
    l: &Layout,
    p: &UnfoldParams,
) -> Result<CudaStorage> {
    const OP: &str = "unfold";
    check_layout(s, l, OP)?;
    let dims = l.dims();
    if dims.len() != p.kernel.len() + 2 {
        return Err(Error::UnexpectedShape {
            op: OP,
            expected: format!("[N, C, {} spatial dims]", p.kernel.len()),
            got: l.shape().clone(),
        });
    }
    let mut g = geometry(OP, p, &dims[2..])?;
    let total = dims[0] * dims[1] * g.klen as usize * g.olen as usize;
    let out = dev.alloc(total, s.dtype)?;
    if total == 0 {
        return Ok(out);
    }
    let st = l.strides();
    let k = dims.len() - 2;
    g.s_n = st[0] as u64;
    g.s_c = st[1] as u64;
    for (o, &x) in g.s_sp[3 - k..].iter_mut().zip(&st[2..]) {
        *o = x as u64;
    }
    g.offset = l.offset() as u64;
    g.channels = check_u32(dims[1])?;
    let n32 = check_u32(total)?;
    let (x, pad_bits, o) = (s.ptr(), value_bits(p.pad_value, s.dtype), out.ptr());
    launch!(
        dev,
        MODULE,
        &format!("unfold_{}", s.dtype.as_str()),
        cfg_1d(n32, dev.max_blocks()),
        n32,
        x,
        g,
        pad_bits,
        o
    )?;
    Ok(out)
}

pub(crate) fn fold(
    dev: &CudaDevice,
    s: &CudaStorage,
    l: &Layout,
    p: &UnfoldParams,
    out_spatial: &[usize],
) -> Result<CudaStorage> {
    const OP: &str = "fold";
    check_layout(s, l, OP)?;
    let mut g = geometry(OP, p, out_spatial)?;
    let (k, n_pos) = (g.klen as usize, g.olen as usize);
    let dims = l.dims();
    if dims.len() != 3 || !dims[1].is_multiple_of(k) || dims[2] != n_pos {
        return Err(Error::UnexpectedShape {
            op: OP,
            expected: format!("[N, C·{k}, {n_pos}] for output spatial {out_spatial:?}"),
            got: l.shape().clone(),
        });
    }
    let channels = dims[1] / k;
    let total = dims[0] * channels * out_spatial.iter().product::<usize>();
    let out = dev.alloc(total, s.dtype)?;
    if total == 0 {
        return Ok(out);
    }
    let st = l.strides();
    g.s_n = st[0] as u64;
    g.s_c = st[1] as u64;
    g.s_sp[0] = st[2] as u64;
    g.offset = l.offset() as u64;
    g.channels = check_u32(channels)?;
    let n32 = check_u32(total)?;
    let (cols, o) = (s.ptr(), out.ptr());
    launch!(
        dev,
        MODULE,
        &format!("fold_{}", s.dtype.as_str()),
        cfg_1d(n32, dev.max_blocks()),
        n32,
        cols,
        g,
        o
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geom_matches_the_kernel_struct_size() {
        // 6 u64, then 18 + 4 u32: the CUDA struct has no padding either.
        assert_eq!(std::mem::size_of::<Geom>(), 6 * 8 + 22 * 4);
    }

    #[test]
    fn u8_ids_into_large_dims_need_no_check() {
        assert!(!may_be_out_of_range(DType::U8, 256));
        assert!(may_be_out_of_range(DType::U8, 255));
        assert!(may_be_out_of_range(DType::U32, 1 << 20));
        assert!(may_be_out_of_range(DType::I64, usize::MAX));
    }

    #[test]
    fn geometry_pads_to_three_dims() {
        let p = UnfoldParams {
            kernel: vec![3, 2],
            stride: vec![1, 2],
            padding: vec![1, 0],
            dilation: vec![1, 1],
            pad_value: 0.0,
        };
        let g = geometry("unfold", &p, &[5, 6]).unwrap();
        assert_eq!(g.input, [1, 5, 6]);
        assert_eq!(g.out, [1, 5, 3]);
        assert_eq!(g.kernel, [1, 3, 2]);
        assert_eq!(g.padding, [0, 1, 0]);
        assert_eq!((g.klen, g.olen), (6, 15));
        assert!(geometry("unfold", &p, &[5]).is_err());
        assert!(geometry(
            "unfold",
            &UnfoldParams {
                kernel: vec![0, 2],
                ..p
            },
            &[5, 6]
        )
        .is_err());
    }
}
