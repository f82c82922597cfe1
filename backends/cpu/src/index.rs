//! Index ops: index_select, gather, scatter_add, index_add. Index tensors (u8/u32/i64) are
//! read and range-checked once up front, so a bad index is an `IndexOutOfRange` error before any
//! output is written and the kernels themselves never see one.

use rayon::prelude::*;
use tensor_core::checks;
use tensor_core::{BackendStorage, Error, HostData, Layout, Result};

use crate::copy::{contiguous, copy_view, fill_chunks, fill_chunks_sized, Walker};
use crate::elementwise::map1;
use crate::storage::cpu;
use crate::{check_layout, Acc, Elem, PAR_CHUNK, PAR_THRESHOLD};

/// The values of an index view in row-major order, each checked to lie in `0..size`.
fn read_ids(
    op: &'static str,
    ids: &dyn BackendStorage,
    l: &Layout,
    size: usize,
    dim: usize,
) -> Result<Vec<usize>> {
    check_layout(ids, l, op)?;
    fn conv<T: Elem>(
        v: &[T],
        l: &Layout,
        size: usize,
        dim: usize,
        op: &'static str,
    ) -> Result<Vec<usize>> {
        map1(v, l, |x: T| x.as_i64())
            .into_iter()
            .map(|i| {
                if i < 0 || i as u64 >= size as u64 {
                    Err(Error::IndexOutOfRange {
                        op,
                        index: i,
                        dim,
                        size,
                    })
                } else {
                    Ok(i as usize)
                }
            })
            .collect()
    }
    match &cpu(ids)?.data {
        HostData::U8(v) => conv(v, l, size, dim, op),
        HostData::U32(v) => conv(v, l, size, dim, op),
        HostData::I64(v) => conv(v, l, size, dim, op),
        other => Err(Error::UnsupportedDType {
            op,
            dtype: other.dtype(),
            expected: "u8, u32 or i64 indices",
        }),
    }
}

/// The storage offsets of a sub-view relative to its start: a single run, or a list.
enum Inner {
    Run(usize),
    Offsets(Vec<usize>),
}

impl Inner {
    fn new(dims: &[usize], strides: &[usize]) -> Inner {
        let w = Walker::new(dims, [(strides, 0)]);
        if (w.inner_strides()[0] == 1 && w.inner_len() == w.len()) || w.len() == 1 {
            Inner::Run(w.len())
        } else {
            let mut v = Vec::with_capacity(w.len());
            w.for_each(0, |o| v.push(o));
            Inner::Offsets(v)
        }
    }
}

/// Storage offsets of every index of the leading `dims`, relative to the layout's offset.
fn outer_offsets(dims: &[usize], strides: &[usize]) -> Vec<usize> {
    let w = Walker::new(dims, [(strides, 0)]);
    let mut v = Vec::with_capacity(w.len());
    w.for_each(0, |o| v.push(o));
    v
}

fn index_select_typed<T: Copy + Send + Sync + Default>(
    src: &[T],
    l: &Layout,
    ids: &[usize],
    dim: usize,
) -> Vec<T> {
    let (dims, strides) = (l.dims(), l.strides());
    let n = ids.len();
    let inner_n: usize = dims[dim + 1..].iter().product();
    let outer = outer_offsets(&dims[..dim], &strides[..dim]);
    let total = outer.len() * n * inner_n;
    if total == 0 {
        return Vec::new();
    }
    let inner = Inner::new(&dims[dim + 1..], &strides[dim + 1..]);
    let sd = strides[dim];
    let mut out = vec![T::default(); total];
    let rows_per_task = (PAR_CHUNK / inner_n).max(1);
    fill_chunks_sized(
        &mut out,
        rows_per_task * inner_n,
        total > PAR_THRESHOLD,
        |start, chunk| {
            for (ri, row) in chunk.chunks_mut(inner_n).enumerate() {
                let r = start / inner_n + ri;
                let base = l.offset() + outer[r / n] + ids[r % n] * sd;
                match &inner {
                    Inner::Run(len) => row.copy_from_slice(&src[base..base + len]),
                    Inner::Offsets(offs) => {
                        for (o, &off) in row.iter_mut().zip(offs) {
                            *o = src[base + off];
                        }
                    }
                }
            }
        },
    );
    out
}

pub(crate) fn index_select(
    src: &dyn BackendStorage,
    src_l: &Layout,
    ids: &dyn BackendStorage,
    ids_l: &Layout,
    dim: usize,
) -> Result<HostData> {
    const OP: &str = "index_select";
    check_layout(src, src_l, OP)?;
    checks::dim_in_range(OP, src_l, dim)?;
    if ids_l.rank() != 1 {
        return Err(checks::unexpected_shape(OP, "1-D indices".into(), ids_l));
    }
    let idx = read_ids(OP, ids, ids_l, src_l.dims()[dim], dim)?;
    Ok(crate::map_same!(&cpu(src)?.data, v => index_select_typed(v, src_l, &idx, dim)))
}

fn gather_typed<T: Copy + Send + Sync + Default>(
    src: &[T],
    l: &Layout,
    ids_l: &Layout,
    idx: &[usize],
    dim: usize,
) -> Vec<T> {
    let n = idx.len();
    if n == 0 {
        return Vec::new();
    }
    // The source seen with the indices' shape, its `dim` stride replaced by the index.
    let mut strides = l.strides().to_vec();
    let sd = strides[dim];
    strides[dim] = 0;
    let w = Walker::new(ids_l.dims(), [(&strides, l.offset())]);
    let [s] = w.inner_strides();
    let mut out = vec![T::default(); n];
    fill_chunks(&mut out, |start, chunk| {
        w.blocks(start, start + chunk.len(), |pos, [b], len| {
            let o = &mut chunk[pos - start..pos - start + len];
            for (j, (o, &i)) in o.iter_mut().zip(&idx[pos..pos + len]).enumerate() {
                *o = src[b + j * s + i * sd];
            }
        })
    });
    out
}

pub(crate) fn gather(
    src: &dyn BackendStorage,
    src_l: &Layout,
    ids: &dyn BackendStorage,
    ids_l: &Layout,
    dim: usize,
) -> Result<HostData> {
    const OP: &str = "gather";
    check_layout(src, src_l, OP)?;
    checks::dim_in_range(OP, src_l, dim)?;
    checks::ids_fit(OP, ids_l, src_l, dim)?;
    let idx = read_ids(OP, ids, ids_l, src_l.dims()[dim], dim)?;
    Ok(crate::map_same!(&cpu(src)?.data, v => gather_typed(v, src_l, ids_l, &idx, dim)))
}

#[inline(always)]
fn add<T: Elem>(a: T, b: T) -> T {
    T::from_acc(a.to_acc().add(b.to_acc()))
}

fn scatter_add_typed<T: Elem>(
    dst: &[T],
    dst_l: &Layout,
    ids_l: &Layout,
    idx: &[usize],
    src: &[T],
    src_l: &Layout,
    dim: usize,
) -> Vec<T> {
    let mut out = copy_view(dst, dst_l);
    let n = idx.len();
    if n == 0 {
        return out;
    }
    let sv = contiguous(src, src_l);
    let mut strides = dst_l.shape().contiguous_strides();
    let od = strides[dim];
    strides[dim] = 0;
    let w = Walker::new(ids_l.dims(), [(&strides, 0)]);
    let [s] = w.inner_strides();
    // Writes only move along `dim`, so slabs of dim 0 are disjoint when dim > 0.
    let apply = |slab: &mut [T], slab_off: usize, start: usize, end: usize| {
        w.blocks(start, end, |pos, [b], len| {
            for j in 0..len {
                let p = pos + j;
                let o = b + j * s + idx[p] * od - slab_off;
                slab[o] = add(slab[o], sv[p]);
            }
        })
    };
    let slab_len = strides[0];
    let ids_d0 = ids_l.dims()[0];
    if dim > 0 && n > PAR_THRESHOLD && slab_len > 0 && ids_d0 > 1 {
        let per = n / ids_d0;
        out.par_chunks_mut(slab_len)
            .take(ids_d0)
            .enumerate()
            .for_each(|(i0, slab)| apply(slab, i0 * slab_len, i0 * per, (i0 + 1) * per));
    } else {
        apply(&mut out, 0, 0, n);
    }
    out
}

/// Dispatch a `dst, src` pair of the same dtype to a typed kernel returning `Vec<T>`.
macro_rules! map_pair {
    ($op:expr, $a:expr, $b:expr, ($x:ident, $y:ident) => $body:expr) => {
        match ($a, $b) {
            (HostData::U8($x), HostData::U8($y)) => HostData::U8($body),
            (HostData::U32($x), HostData::U32($y)) => HostData::U32($body),
            (HostData::I64($x), HostData::I64($y)) => HostData::I64($body),
            (HostData::F16($x), HostData::F16($y)) => HostData::F16($body),
            (HostData::BF16($x), HostData::BF16($y)) => HostData::BF16($body),
            (HostData::F32($x), HostData::F32($y)) => HostData::F32($body),
            (HostData::F64($x), HostData::F64($y)) => HostData::F64($body),
            (a, b) => {
                return Err(Error::DTypeMismatch {
                    op: $op,
                    lhs: a.dtype(),
                    rhs: b.dtype(),
                })
            }
        }
    };
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn scatter_add(
    dst: &dyn BackendStorage,
    dst_l: &Layout,
    ids: &dyn BackendStorage,
    ids_l: &Layout,
    src: &dyn BackendStorage,
    src_l: &Layout,
    dim: usize,
) -> Result<HostData> {
    const OP: &str = "scatter_add";
    check_layout(dst, dst_l, OP)?;
    check_layout(src, src_l, OP)?;
    checks::dim_in_range(OP, dst_l, dim)?;
    checks::same_dtype(OP, dst.dtype(), src.dtype())?;
    if ids_l.dims() != src_l.dims() {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: ids_l.shape().clone(),
            rhs: src_l.shape().clone(),
        });
    }
    checks::ids_fit(OP, ids_l, dst_l, dim)?;
    let idx = read_ids(OP, ids, ids_l, dst_l.dims()[dim], dim)?;
    let (d, s) = (&cpu(dst)?.data, &cpu(src)?.data);
    Ok(map_pair!(OP, d, s, (x, y) => scatter_add_typed(x, dst_l, ids_l, &idx, y, src_l, dim)))
}

fn index_add_typed<T: Elem>(
    dst: &[T],
    dst_l: &Layout,
    idx: &[usize],
    src: &[T],
    src_l: &Layout,
    dim: usize,
) -> Vec<T> {
    let mut out = copy_view(dst, dst_l);
    let dims = dst_l.dims();
    let inner: usize = dims[dim + 1..].iter().product();
    let plane = dims[dim] * inner;
    let n = idx.len();
    if plane == 0 || n == 0 || out.is_empty() {
        return out;
    }
    let sv = contiguous(src, src_l);
    let add_plane = |o: usize, p: &mut [T]| {
        for (k, &i) in idx.iter().enumerate() {
            let s0 = (o * n + k) * inner;
            let row = &mut p[i * inner..(i + 1) * inner];
            for (a, &b) in row.iter_mut().zip(&sv[s0..s0 + inner]) {
                *a = add(*a, b);
            }
        }
    };
    if out.len() > plane && n * out.len() / dims[dim].max(1) > PAR_THRESHOLD {
        out.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(o, p)| add_plane(o, p));
    } else {
        out.chunks_mut(plane)
            .enumerate()
            .for_each(|(o, p)| add_plane(o, p));
    }
    out
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn index_add(
    dst: &dyn BackendStorage,
    dst_l: &Layout,
    ids: &dyn BackendStorage,
    ids_l: &Layout,
    src: &dyn BackendStorage,
    src_l: &Layout,
    dim: usize,
) -> Result<HostData> {
    const OP: &str = "index_add";
    check_layout(dst, dst_l, OP)?;
    check_layout(src, src_l, OP)?;
    checks::dim_in_range(OP, dst_l, dim)?;
    checks::same_dtype(OP, dst.dtype(), src.dtype())?;
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
    let idx = read_ids(OP, ids, ids_l, dst_l.dims()[dim], dim)?;
    let (d, s) = (&cpu(dst)?.data, &cpu(src)?.data);
    Ok(map_pair!(OP, d, s, (x, y) => index_add_typed(x, dst_l, &idx, y, src_l, dim)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use tensor_core::{BackendDevice, DType, Shape};

    const ID_DTYPES: [DType; 3] = [DType::U8, DType::U32, DType::I64];

    #[test]
    fn index_select_dims_dtypes_and_views() {
        // src [3, 4] = 0..12, also seen transposed.
        let data: Vec<f64> = (0..12).map(|x| x as f64).collect();
        for dt in DType::ALL {
            let src = f64s(&data, dt);
            for idt in ID_DTYPES {
                let ids = f64s(&[2.0, 0.0, 2.0], idt);
                let il = Layout::contiguous([3]);
                let l = Layout::contiguous([3, 4]);
                let r0 = dev()
                    .index_select(src.as_ref(), &l, ids.as_ref(), &il, 0)
                    .unwrap();
                assert_eq!(r0.dtype(), dt);
                assert_eq!(
                    read(r0.as_ref()),
                    [8., 9., 10., 11., 0., 1., 2., 3., 8., 9., 10., 11.]
                );
                let r1 = dev()
                    .index_select(src.as_ref(), &l, ids.as_ref(), &il, 1)
                    .unwrap();
                assert_eq!(read(r1.as_ref()), [2., 0., 2., 6., 4., 6., 10., 8., 10.]);
                // Transposed source [4, 3]: rows of the transpose are columns of the original.
                let t = l.permute(&[1, 0]);
                let r2 = dev()
                    .index_select(src.as_ref(), &t, ids.as_ref(), &il, 0)
                    .unwrap();
                assert_eq!(read(r2.as_ref()), [2., 6., 10., 0., 4., 8., 2., 6., 10.]);
            }
        }
    }

    #[test]
    fn index_select_large_parallel() {
        let (v, d) = (500, 96);
        let data = noise(v * d, 2);
        let src = f64s(&data, DType::F32);
        let stored = read(src.as_ref());
        let ids_v: Vec<f64> = (0..1000).map(|i| ((i * 37) % v) as f64).collect();
        let ids = f64s(&ids_v, DType::I64);
        let out = dev()
            .index_select(
                src.as_ref(),
                &Layout::contiguous([v, d]),
                ids.as_ref(),
                &Layout::contiguous([1000]),
                0,
            )
            .unwrap();
        let got = read(out.as_ref());
        for (k, &i) in ids_v.iter().enumerate() {
            let i = i as usize;
            assert_eq!(got[k * d..(k + 1) * d], stored[i * d..(i + 1) * d]);
        }
    }

    #[test]
    fn out_of_range_and_bad_dtype_ids_are_errors() {
        let src = f64s(&[1.0; 6], DType::F32);
        let l = Layout::contiguous([2, 3]);
        let il = Layout::contiguous([2]);
        for (ids, want) in [(vec![0.0, 3.0], 3), (vec![-1.0, 0.0], -1)] {
            let ids = f64s(&ids, DType::I64);
            match dev().index_select(src.as_ref(), &l, ids.as_ref(), &il, 1) {
                Err(Error::IndexOutOfRange {
                    index,
                    dim: 1,
                    size: 3,
                    ..
                }) => assert_eq!(index, want),
                other => panic!("expected IndexOutOfRange, got {other:?}"),
            }
        }
        let fids = f64s(&[0.0, 1.0], DType::F32);
        assert!(matches!(
            dev().index_select(src.as_ref(), &l, fids.as_ref(), &il, 0),
            Err(Error::UnsupportedDType { .. })
        ));
        let bad = f64s(&[0.0, 0.0, 5.0, 0.0], DType::U32);
        let bl = Layout::contiguous([2, 2]);
        assert!(matches!(
            dev().gather(src.as_ref(), &l, bad.as_ref(), &bl, 1),
            Err(Error::IndexOutOfRange { index: 5, .. })
        ));
        let s2 = f64s(&[1.0; 4], DType::F32);
        assert!(matches!(
            dev().scatter_add(src.as_ref(), &l, bad.as_ref(), &bl, s2.as_ref(), &bl, 1),
            Err(Error::IndexOutOfRange { .. })
        ));
        let s3 = f64s(&[1.0; 6], DType::F32);
        let ib = f64s(&[0.0, 2.0], DType::U8);
        assert!(matches!(
            dev().index_add(
                src.as_ref(),
                &l,
                ib.as_ref(),
                &il,
                s3.as_ref(),
                &Layout::contiguous([2, 3]),
                0
            ),
            Err(Error::IndexOutOfRange {
                index: 2,
                size: 2,
                ..
            })
        ));
        // Index tensors larger than the source off `dim` are rejected, not read out of bounds.
        let big = f64s(&[0.0; 8], DType::I64);
        assert!(dev()
            .gather(
                src.as_ref(),
                &l,
                big.as_ref(),
                &Layout::contiguous([4, 2]),
                1
            )
            .is_err());
    }

    /// Reference gather: out[p] = src[p with p[dim] = ids[p]].
    fn gather_ref(
        src: &[f64],
        sdims: &[usize],
        ids: &[usize],
        idims: &[usize],
        dim: usize,
    ) -> Vec<f64> {
        let ss = Shape::from(sdims.to_vec()).contiguous_strides();
        let is = Shape::from(idims.to_vec()).contiguous_strides();
        (0..ids.len())
            .map(|p| {
                let mut off = 0;
                for d in 0..idims.len() {
                    let c = if d == dim {
                        ids[p]
                    } else {
                        (p / is[d]) % idims[d]
                    };
                    off += c * ss[d];
                }
                src[off]
            })
            .collect()
    }

    #[test]
    fn gather_and_scatter_add_match_reference() {
        let sdims = [3, 5, 4];
        let data: Vec<f64> = (0..60).map(|x| x as f64).collect();
        let idims = [2, 3, 4];
        for dim in 0..3 {
            let size = sdims[dim];
            let ids_u: Vec<usize> = noise(24, dim as u64 + 1)
                .iter()
                .map(|x| ((x + 1.0) * 0.5 * size as f64) as usize % size)
                .collect();
            let ids_f: Vec<f64> = ids_u.iter().map(|&x| x as f64).collect();
            for dt in [DType::F32, DType::BF16, DType::I64, DType::U8] {
                let src = f64s(&data, dt);
                let ids = f64s(&ids_f, DType::I64);
                let out = dev()
                    .gather(
                        src.as_ref(),
                        &Layout::contiguous(sdims),
                        ids.as_ref(),
                        &Layout::contiguous(idims),
                        dim,
                    )
                    .unwrap();
                let stored = read(src.as_ref());
                assert_eq!(
                    read(out.as_ref()),
                    gather_ref(&stored, &sdims, &ids_u, &idims, dim)
                );

                // scatter_add is gather's adjoint: <gather(x), y> == <x, scatter_add(0, y)>.
                let y: Vec<f64> = (0..24).map(|i| (i % 7) as f64).collect();
                let ys = f64s(&y, dt);
                let zeros = f64s(&[0.0; 60], dt);
                let sc = dev()
                    .scatter_add(
                        zeros.as_ref(),
                        &Layout::contiguous(sdims),
                        ids.as_ref(),
                        &Layout::contiguous(idims),
                        ys.as_ref(),
                        &Layout::contiguous(idims),
                        dim,
                    )
                    .unwrap();
                let lhs: f64 = read(out.as_ref()).iter().zip(&y).map(|(a, b)| a * b).sum();
                let rhs: f64 = read(sc.as_ref())
                    .iter()
                    .zip(&stored)
                    .map(|(a, b)| a * b)
                    .sum();
                if dt != DType::U8 {
                    assert_eq!(lhs, rhs, "dim {dim} {dt}");
                }
            }
        }
    }

    #[test]
    fn gather_and_scatter_strided_views() {
        // src viewed transposed; ids viewed with a broadcast; dst of scatter_add strided.
        let data: Vec<f64> = (0..12).map(|x| x as f64).collect();
        let src = f64s(&data, DType::F64);
        let sl = Layout::contiguous([3, 4]).permute(&[1, 0]); // [4, 3], row i = column i
        let ids = f64s(&[2.0, 0.0], DType::I64);
        let il = Layout::contiguous([1, 2])
            .broadcast_as(&Shape::from([4, 2]))
            .unwrap();
        let g = dev()
            .gather(src.as_ref(), &sl, ids.as_ref(), &il, 1)
            .unwrap();
        // row i of the transpose is [i, 4 + i, 8 + i]; take entries 2 then 0.
        assert_eq!(read(g.as_ref()), [8., 0., 9., 1., 10., 2., 11., 3.]);
        let ones = f64s(&[1.0; 8], DType::F64);
        let ol = Layout::contiguous([4, 2]);
        let sc = dev()
            .scatter_add(src.as_ref(), &sl, ids.as_ref(), &il, ones.as_ref(), &ol, 1)
            .unwrap();
        assert_eq!(
            read(sc.as_ref()),
            [1., 4., 9., 2., 5., 10., 3., 6., 11., 4., 7., 12.]
        );
    }

    #[test]
    fn scatter_add_large_parallel_slabs() {
        let (r, c) = (400, 100);
        let ids_v: Vec<f64> = (0..r * c).map(|i| ((i * 13) % 7) as f64).collect();
        let ids = f64s(&ids_v, DType::I64);
        let ones = f64s(&vec![1.0; r * c], DType::F32);
        let zeros = f64s(&vec![0.0; r * 7], DType::F32);
        let out = dev()
            .scatter_add(
                zeros.as_ref(),
                &Layout::contiguous([r, 7]),
                ids.as_ref(),
                &Layout::contiguous([r, c]),
                ones.as_ref(),
                &Layout::contiguous([r, c]),
                1,
            )
            .unwrap();
        let got = read(out.as_ref());
        let mut want = vec![0.0; r * 7];
        for (p, &i) in ids_v.iter().enumerate() {
            want[(p / c) * 7 + i as usize] += 1.0;
        }
        assert_eq!(got, want);
    }

    #[test]
    fn index_add_dims_and_dtypes() {
        for dt in DType::ALL {
            let dst = f64s(&[0.0; 6], dt);
            let dl = Layout::contiguous([2, 3]);
            let ids = f64s(&[2.0, 0.0, 2.0, 1.0], DType::U32);
            let il = Layout::contiguous([4]);
            let src = f64s(&[1., 2., 3., 4., 5., 6., 7., 8.], dt);
            let out = dev()
                .index_add(
                    dst.as_ref(),
                    &dl,
                    ids.as_ref(),
                    &il,
                    src.as_ref(),
                    &Layout::contiguous([2, 4]),
                    1,
                )
                .unwrap();
            assert_eq!(read(out.as_ref()), [2., 4., 4., 6., 8., 12.]);
            // dim 0 with a transposed source [3, 2] -> read as src^T.
            let ids0 = f64s(&[1.0, 1.0, 0.0], DType::I64);
            let src0 = f64s(&[1., 2., 3., 4., 5., 6.], dt);
            let s0l = Layout::contiguous([2, 3]).permute(&[1, 0]); // [[1,4],[2,5],[3,6]]
            let out = dev()
                .index_add(
                    dst.as_ref(),
                    &Layout::contiguous([2, 3]).narrow(1, 0, 2),
                    ids0.as_ref(),
                    &Layout::contiguous([3]),
                    src0.as_ref(),
                    &s0l,
                    0,
                )
                .unwrap();
            assert_eq!(read(out.as_ref()), [3., 6., 3., 9.]);
        }
    }
}
