//! Strided traversal and copies. [`Walker`] visits one or more views of the same shape in
//! row-major order, one innermost run at a time, after merging dims that are contiguous with
//! each other in every view; every other kernel file builds on it. `copy_strided`, `copy_into`
//! and `to_host` live here too.

use rayon::prelude::*;
use tensor_core::{BackendStorage, DType, Error, HostData, Layout, Result};

use crate::storage::{cpu, cpu_mut};
use crate::{check_layout, check_same_shape, map_same, PAR_CHUNK, PAR_THRESHOLD};

/// Row-major traversal of `K` views that share a shape. Dims of size 1 are dropped and
/// neighbouring dims merged where all views allow it, so a contiguous view becomes one run.
#[derive(Clone, Debug)]
pub(crate) struct Walker<const K: usize> {
    dims: Vec<usize>,
    strides: [Vec<usize>; K],
    offsets: [usize; K],
}

impl<const K: usize> Walker<K> {
    /// `views[k] = (strides, offset)` of view `k`, each with one stride per entry of `dims`.
    pub fn new(dims: &[usize], views: [(&[usize], usize); K]) -> Self {
        let mut md: Vec<usize> = Vec::with_capacity(dims.len());
        let mut ms: [Vec<usize>; K] = std::array::from_fn(|_| Vec::with_capacity(dims.len()));
        for (i, &d) in dims.iter().enumerate() {
            if d == 1 {
                continue;
            }
            if let Some(last) = md.last_mut() {
                // Merge into the previous (outer) dim when it steps exactly over this one.
                if (0..K).all(|k| ms[k].last() == Some(&(views[k].0[i] * d))) {
                    *last *= d;
                    for k in 0..K {
                        if let Some(s) = ms[k].last_mut() {
                            *s = views[k].0[i];
                        }
                    }
                    continue;
                }
            }
            md.push(d);
            for k in 0..K {
                ms[k].push(views[k].0[i]);
            }
        }
        if md.is_empty() {
            md.push(1);
            for s in ms.iter_mut() {
                s.push(0);
            }
        }
        Walker {
            dims: md,
            strides: ms,
            offsets: std::array::from_fn(|k| views[k].1),
        }
    }

    /// A walker over several layouts of the same shape.
    pub fn from_layouts(ls: [&Layout; K]) -> Self {
        let dims = ls[0].dims();
        Walker::new(
            dims,
            std::array::from_fn(|k| (ls[k].strides(), ls[k].offset())),
        )
    }

    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// The stride of the innermost run in each view.
    pub fn inner_strides(&self) -> [usize; K] {
        let r = self.dims.len() - 1;
        std::array::from_fn(|k| self.strides[k][r])
    }

    /// The length of a full innermost run.
    pub fn inner_len(&self) -> usize {
        self.dims[self.dims.len() - 1]
    }

    /// Calls `f(pos, bases, len)` for consecutive innermost runs covering the row-major range
    /// `[start, end)`: `bases[k]` is view `k`'s offset of element `pos`, and the run continues
    /// for `len` elements with stride `inner_strides()[k]`.
    pub fn blocks(&self, start: usize, end: usize, mut f: impl FnMut(usize, [usize; K], usize)) {
        if start >= end {
            return;
        }
        let r = self.dims.len();
        let inner = self.dims[r - 1];
        let inner_s = self.inner_strides();
        let mut idx = vec![0usize; r - 1];
        let mut rem = start / inner;
        for d in (0..r - 1).rev() {
            idx[d] = rem % self.dims[d];
            rem /= self.dims[d];
        }
        let mut base: [usize; K] = std::array::from_fn(|k| {
            self.offsets[k]
                + idx
                    .iter()
                    .zip(&self.strides[k])
                    .map(|(&i, &s)| i * s)
                    .sum::<usize>()
        });
        let mut j = start % inner;
        let mut pos = start;
        loop {
            let len = (inner - j).min(end - pos);
            f(pos, std::array::from_fn(|k| base[k] + j * inner_s[k]), len);
            pos += len;
            if pos >= end {
                break;
            }
            j = 0;
            let mut d = r - 1;
            while d > 0 {
                d -= 1;
                idx[d] += 1;
                for (b, s) in base.iter_mut().zip(&self.strides) {
                    *b += s[d];
                }
                if idx[d] < self.dims[d] {
                    break;
                }
                for (b, s) in base.iter_mut().zip(&self.strides) {
                    *b -= s[d] * self.dims[d];
                }
                idx[d] = 0;
            }
        }
    }

    /// Every offset of view `k` in row-major order, in a callback.
    pub fn for_each(&self, k: usize, mut f: impl FnMut(usize)) {
        let s = self.inner_strides()[k];
        self.blocks(0, self.len(), |_, b, len| {
            for j in 0..len {
                f(b[k] + j * s);
            }
        });
    }
}

/// Fill `out` by calling `f(start, chunk)` on consecutive chunks, in parallel when `out` is
/// large. `start` is the chunk's position in `out`.
pub(crate) fn fill_chunks<O: Send>(out: &mut [O], f: impl Fn(usize, &mut [O]) + Sync) {
    fill_chunks_sized(out, PAR_CHUNK, out.len() > PAR_THRESHOLD, f)
}

/// [`fill_chunks`] with a chosen chunk length (≥ 1) and an explicit parallel/sequential choice,
/// for kernels whose work per output element is not one element.
pub(crate) fn fill_chunks_sized<O: Send>(
    out: &mut [O],
    chunk: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [O]) + Sync,
) {
    let chunk = chunk.max(1);
    if parallel && out.len() > chunk {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i * chunk, c));
    } else {
        f(0, out);
    }
}

/// The elements of a strided view, contiguous.
pub(crate) fn copy_view<T: Copy + Send + Sync + Default>(src: &[T], l: &Layout) -> Vec<T> {
    let n = l.elem_count();
    if n == 0 {
        return Vec::new();
    }
    if l.is_contiguous() {
        return src[l.offset()..l.offset() + n].to_vec();
    }
    let w = Walker::from_layouts([l]);
    let [s] = w.inner_strides();
    let mut out = vec![T::default(); n];
    fill_chunks(&mut out, |start, chunk| {
        w.blocks(start, start + chunk.len(), |pos, [b], len| {
            let o = &mut chunk[pos - start..pos - start + len];
            match s {
                1 => o.copy_from_slice(&src[b..b + len]),
                0 => o.fill(src[b]),
                _ => {
                    for (j, v) in o.iter_mut().enumerate() {
                        *v = src[b + j * s];
                    }
                }
            }
        })
    });
    out
}

/// A contiguous view of `l` over `src`: borrowed when already contiguous, copied otherwise.
pub(crate) fn contiguous<'a, T: Copy + Send + Sync + Default>(
    src: &'a [T],
    l: &Layout,
) -> std::borrow::Cow<'a, [T]> {
    if l.is_contiguous() {
        let n = l.elem_count();
        std::borrow::Cow::Borrowed(&src[l.offset()..l.offset() + n])
    } else {
        std::borrow::Cow::Owned(copy_view(src, l))
    }
}

/// Write the view `src_l` of `src` into the positions `dst_l` of `dst`.
fn copy_view_into<T: Copy + Send + Sync>(dst: &mut [T], dst_l: &Layout, src: &[T], src_l: &Layout) {
    let n = dst_l.elem_count();
    if n == 0 {
        return;
    }
    if dst_l.is_contiguous() && src_l.is_contiguous() {
        let (d, s) = (dst_l.offset(), src_l.offset());
        dst[d..d + n].copy_from_slice(&src[s..s + n]);
        return;
    }
    // A destination with stride 0 (a broadcast view) is written once per position it covers;
    // the last write wins, as with any in-place copy into an expanded view.
    let w = Walker::from_layouts([dst_l, src_l]);
    let [ds, ss] = w.inner_strides();
    w.blocks(0, n, |_, [db, sb], len| {
        if ds == 1 && ss == 1 {
            dst[db..db + len].copy_from_slice(&src[sb..sb + len]);
        } else {
            for j in 0..len {
                dst[db + j * ds] = src[sb + j * ss];
            }
        }
    });
}

pub(crate) fn copy_strided(s: &dyn BackendStorage, l: &Layout) -> Result<HostData> {
    check_layout(s, l, "copy_strided")?;
    Ok(map_same!(&cpu(s)?.data, v => copy_view(v, l)))
}

pub(crate) fn copy_into(
    dst: &mut dyn BackendStorage,
    dst_l: &Layout,
    src: &dyn BackendStorage,
    src_l: &Layout,
) -> Result<()> {
    const OP: &str = "copy_into";
    check_same_shape(dst_l, src_l, OP)?;
    check_layout(src, src_l, OP)?;
    check_layout(dst, dst_l, OP)?;
    let (dd, sd) = (dst.dtype(), src.dtype());
    if dd != sd {
        return Err(Error::DTypeMismatch {
            op: OP,
            lhs: dd,
            rhs: sd,
        });
    }
    let src = &cpu(src)?.data;
    let dst = &mut cpu_mut(dst)?.data;
    match (dst, src) {
        (HostData::U8(d), HostData::U8(s)) => copy_view_into(d, dst_l, s, src_l),
        (HostData::U32(d), HostData::U32(s)) => copy_view_into(d, dst_l, s, src_l),
        (HostData::I64(d), HostData::I64(s)) => copy_view_into(d, dst_l, s, src_l),
        (HostData::F16(d), HostData::F16(s)) => copy_view_into(d, dst_l, s, src_l),
        (HostData::BF16(d), HostData::BF16(s)) => copy_view_into(d, dst_l, s, src_l),
        (HostData::F32(d), HostData::F32(s)) => copy_view_into(d, dst_l, s, src_l),
        (HostData::F64(d), HostData::F64(s)) => copy_view_into(d, dst_l, s, src_l),
        _ => {
            return Err(Error::DTypeMismatch {
                op: OP,
                lhs: dd,
                rhs: sd,
            })
        }
    }
    Ok(())
}

/// A contiguous storage of `n` copies of `value` (converted as `as` casts do).
pub(crate) fn full(n: usize, value: f64, dtype: DType) -> HostData {
    use half::{bf16, f16};
    use tensor_core::WithDType;
    fn fill<T: WithDType>(n: usize, value: f64) -> Vec<T> {
        vec![T::from_f64(value); n]
    }
    match dtype {
        DType::U8 => HostData::U8(fill::<u8>(n, value)),
        DType::U32 => HostData::U32(fill::<u32>(n, value)),
        DType::I64 => HostData::I64(fill::<i64>(n, value)),
        DType::F16 => HostData::F16(fill::<f16>(n, value)),
        DType::BF16 => HostData::BF16(fill::<bf16>(n, value)),
        DType::F32 => HostData::F32(fill::<f32>(n, value)),
        DType::F64 => HostData::F64(fill::<f64>(n, value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use tensor_core::{BackendDevice, Shape};

    #[test]
    fn walker_merges_contiguous_dims() {
        let l = Layout::contiguous([2, 3, 4]);
        let w = Walker::from_layouts([&l]);
        assert_eq!(w.inner_len(), 24);
        let t = l.permute(&[1, 0, 2]); // [3, 2, 4]: only the last dim is a run
        let w = Walker::from_layouts([&t]);
        assert_eq!(w.inner_len(), 4);
        let mut seen = vec![];
        w.for_each(0, |o| seen.push(o));
        assert_eq!(seen, t.offsets());
    }

    #[test]
    fn walker_partial_ranges_match_offsets() {
        let l = Layout::new(Shape::from([3, 4, 5]), vec![40, 1, 8], 7);
        let all = l.offsets();
        let w = Walker::from_layouts([&l]);
        let [s] = w.inner_strides();
        for (a, b) in [(0, 60), (3, 17), (19, 20), (21, 59), (0, 1)] {
            let mut got = vec![];
            w.blocks(a, b, |pos, [base], len| {
                assert_eq!(pos, a + got.len());
                for j in 0..len {
                    got.push(base + j * s);
                }
            });
            assert_eq!(got, all[a..b], "range {a}..{b}");
        }
    }

    #[test]
    fn copy_strided_views() {
        let data: Vec<f64> = (0..60).map(|x| x as f64).collect();
        let src = f64s(&data, DType::F32);
        let views = [
            Layout::contiguous([60]),
            Layout::contiguous([3, 4, 5]).permute(&[2, 0, 1]),
            Layout::contiguous([3, 1, 5])
                .broadcast_as(&Shape::from([2, 3, 4, 5]))
                .unwrap(),
            Layout::contiguous([6, 10]).narrow(1, 3, 4),
            Layout::new(Shape::from([2, 3]), vec![0, 7], 5),
        ];
        for l in &views {
            let out = dev().copy_strided(src.as_ref(), l).unwrap();
            assert_eq!(read(out.as_ref()), view(&data, l), "{l:?}");
            let host = dev().to_host(src.as_ref(), l).unwrap();
            assert_eq!(host.to_f64_vec(), view(&data, l));
        }
    }

    #[test]
    fn copy_strided_large_parallel() {
        let n = 300 * 257;
        let data = noise(n, 3);
        let src = f64s(&data, DType::F64);
        let l = Layout::contiguous([300, 257]).permute(&[1, 0]);
        let out = dev().copy_strided(src.as_ref(), &l).unwrap();
        assert_eq!(read(out.as_ref()), view(&data, &l));
    }

    #[test]
    fn copy_into_strided_dst() {
        let mut dst = f64s(&[0.0; 12], DType::I64);
        let src = f64s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], DType::I64);
        // dst viewed as the transpose of a [3, 4] narrowed to columns 1..3: shape [2, 3].
        let dst_l = Layout::contiguous([3, 4]).narrow(1, 1, 2).permute(&[1, 0]);
        let src_l = Layout::contiguous([2, 3]);
        dev()
            .copy_into(dst.as_mut(), &dst_l, src.as_ref(), &src_l)
            .unwrap();
        assert_eq!(
            read(dst.as_ref()),
            vec![0., 1., 4., 0., 0., 2., 5., 0., 0., 3., 6., 0.]
        );
        // Shape and dtype mismatches are errors.
        let bad = f64s(&[1.0; 6], DType::F32);
        assert!(dev()
            .copy_into(dst.as_mut(), &dst_l, bad.as_ref(), &src_l)
            .is_err());
        assert!(dev()
            .copy_into(
                dst.as_mut(),
                &dst_l,
                src.as_ref(),
                &Layout::contiguous([3, 2])
            )
            .is_err());
    }

    #[test]
    fn layout_past_the_end_is_an_error() {
        let s = f64s(&[1.0; 4], DType::F32);
        let l = Layout::contiguous([5]);
        assert!(dev().copy_strided(s.as_ref(), &l).is_err());
    }

    #[test]
    fn full_all_dtypes() {
        for dt in DType::ALL {
            let s = dev().full(5, 3.0, dt).unwrap();
            assert_eq!(s.dtype(), dt);
            assert_eq!(read(s.as_ref()), vec![3.0; 5]);
        }
    }
}
