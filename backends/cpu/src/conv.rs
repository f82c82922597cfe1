//! unfold (im2col) and fold (col2im), the building blocks of convolution (conv = unfold +
//! matmul). 1-D and 2-D inputs are treated as 3-D with leading spatial dims of size 1, so one
//! kernel serves all; its innermost loop runs along the last spatial dim, copying whole row
//! segments when the stride there is 1. Work is split over the N·C planes.

use rayon::prelude::*;
use tensor_core::{BackendStorage, Error, HostData, Layout, Result, UnfoldParams};

use crate::copy::contiguous;
use crate::storage::cpu;
use crate::{check_layout, map_same, Acc, Elem, PAR_THRESHOLD};

/// Geometry normalised to three spatial dims (depth, height, width).
#[derive(Clone, Copy, Debug)]
struct Geom {
    input: [usize; 3],
    out: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
}

impl Geom {
    fn kernel_len(&self) -> usize {
        self.kernel.iter().product()
    }
    fn in_len(&self) -> usize {
        self.input.iter().product()
    }
    fn out_len(&self) -> usize {
        self.out.iter().product()
    }

    /// Input coordinate of output position `o` for kernel tap `k` along spatial dim `d`,
    /// or None when it falls in the padding.
    #[inline(always)]
    fn coord(&self, d: usize, o: usize, k: usize) -> Option<usize> {
        (o * self.stride[d] + k * self.dilation[d])
            .checked_sub(self.padding[d])
            .filter(|&i| i < self.input[d])
    }

    /// The output positions `[lo, hi)` along the width whose tap `k` lands inside the input.
    fn valid_x(&self, k: usize) -> (usize, usize) {
        let (s, p, w) = (self.stride[2], self.padding[2], self.input[2]);
        let shift = k * self.dilation[2];
        let lo = if shift >= p {
            0
        } else {
            (p - shift).div_ceil(s)
        };
        let hi = if w + p <= shift {
            0
        } else {
            (w + p - shift).div_ceil(s)
        };
        let hi = hi.min(self.out[2]);
        (lo.min(hi), hi)
    }

    /// Visit every (kernel row, output row segment) pair of one plane: `f(row, seg_start,
    /// input_row_start, tap_x)` where `input_row_start` is None for taps in the padding.
    fn for_each_segment(&self, mut f: impl FnMut(usize, usize, Option<usize>, usize)) {
        let [kd, kh, kw] = self.kernel;
        let [od, oh, ow] = self.out;
        let (h, w) = (self.input[1], self.input[2]);
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let row = (a * kh + b) * kw + e;
                    for z in 0..od {
                        let iz = self.coord(0, z, a);
                        for y in 0..oh {
                            let iy = self.coord(1, y, b);
                            let src = match (iz, iy) {
                                (Some(iz), Some(iy)) => Some((iz * h + iy) * w),
                                _ => None,
                            };
                            f(row, (z * oh + y) * ow, src, e);
                        }
                    }
                }
            }
        }
    }
}

/// Check the parameters and normalise an `[N, C, *spatial]` geometry to 3-D.
fn geometry(op: &'static str, p: &UnfoldParams, spatial: &[usize]) -> Result<Geom> {
    let k = p.kernel.len();
    let out = tensor_core::checks::unfold_out_spatial(op, p, spatial)?;
    let pad3 = |v: &[usize], fill: usize| -> [usize; 3] {
        let mut a = [fill; 3];
        a[3 - k..].copy_from_slice(v);
        a
    };
    Ok(Geom {
        input: pad3(spatial, 1),
        out: pad3(&out, 1),
        kernel: pad3(&p.kernel, 1),
        stride: pad3(&p.stride, 1),
        padding: pad3(&p.padding, 0),
        dilation: pad3(&p.dilation, 1),
    })
}

/// im2col of one `[D, H, W]` plane into `[K, L]` rows.
fn unfold_plane<T: Copy>(g: &Geom, inp: &[T], out: &mut [T], pad: T) {
    let (ow, l, w) = (g.out[2], g.out_len(), g.input[2]);
    let (sw, dw, pw) = (g.stride[2], g.dilation[2], g.padding[2]);
    let ranges: Vec<(usize, usize)> = (0..g.kernel[2]).map(|e| g.valid_x(e)).collect();
    g.for_each_segment(|row, seg, src, e| {
        let o = &mut out[row * l + seg..row * l + seg + ow];
        let Some(src) = src else {
            o.fill(pad);
            return;
        };
        let (lo, hi) = ranges[e];
        o[..lo].fill(pad);
        o[hi..].fill(pad);
        let irow = &inp[src..src + w];
        // First input column read: lo·sw + e·dw − pw ≥ 0 by construction of `lo`.
        let first = lo * sw + e * dw - pw;
        if sw == 1 {
            o[lo..hi].copy_from_slice(&irow[first..first + (hi - lo)]);
        } else {
            for (j, v) in o[lo..hi].iter_mut().enumerate() {
                *v = irow[first + j * sw];
            }
        }
    });
}

/// col2im of one plane's `[K, L]` rows, accumulated into a `[D, H, W]` plane.
fn fold_plane<A: Acc, T: Elem<Acc = A>>(g: &Geom, cols: &[T], plane: &mut [A]) {
    let (ow, l, w) = (g.out[2], g.out_len(), g.input[2]);
    let (sw, dw, pw) = (g.stride[2], g.dilation[2], g.padding[2]);
    let ranges: Vec<(usize, usize)> = (0..g.kernel[2]).map(|e| g.valid_x(e)).collect();
    g.for_each_segment(|row, seg, src, e| {
        let Some(src) = src else { return };
        let (lo, hi) = ranges[e];
        if lo >= hi {
            return;
        }
        let c = &cols[row * l + seg..row * l + seg + ow];
        let prow = &mut plane[src..src + w];
        let first = lo * sw + e * dw - pw;
        if sw == 1 {
            for (p, &v) in prow[first..first + (hi - lo)].iter_mut().zip(&c[lo..hi]) {
                *p = p.add(v.to_acc());
            }
        } else {
            for (j, &v) in c[lo..hi].iter().enumerate() {
                let p = &mut prow[first + j * sw];
                *p = p.add(v.to_acc());
            }
        }
    });
}

fn unfold_typed<T: Elem>(src: &[T], l: &Layout, g: &Geom, planes: usize, pad: f64) -> Vec<T> {
    let x = contiguous(src, l);
    let (kl, il) = (g.kernel_len() * g.out_len(), g.in_len());
    let total = planes * kl;
    if total == 0 {
        return Vec::new();
    }
    let pad_value = T::from_f64(pad);
    let mut out = vec![pad_value; total];
    let work = |(i, o): (usize, &mut [T])| unfold_plane(g, &x[i * il..(i + 1) * il], o, pad_value);
    if total > PAR_THRESHOLD && planes > 1 {
        out.par_chunks_mut(kl).enumerate().for_each(work);
    } else {
        out.chunks_mut(kl).enumerate().for_each(work);
    }
    out
}

pub(crate) fn unfold(s: &dyn BackendStorage, l: &Layout, p: &UnfoldParams) -> Result<HostData> {
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
    let g = geometry(OP, p, &dims[2..])?;
    let planes = dims[0] * dims[1];
    Ok(map_same!(&cpu(s)?.data, v => unfold_typed(v, l, &g, planes, p.pad_value)))
}

fn fold_typed<T: Elem>(src: &[T], l: &Layout, g: &Geom, planes: usize) -> Vec<T> {
    let x = contiguous(src, l);
    let (kl, il) = (g.kernel_len() * g.out_len(), g.in_len());
    let total = planes * il;
    if total == 0 {
        return Vec::new();
    }
    let mut out = vec![T::from_f64(0.0); total];
    let work = |(i, o): (usize, &mut [T])| {
        let mut acc = vec![T::Acc::default(); il];
        fold_plane(g, &x[i * kl..(i + 1) * kl], &mut acc);
        for (o, a) in o.iter_mut().zip(acc) {
            *o = T::from_acc(a);
        }
    };
    if total.max(planes * kl) > PAR_THRESHOLD && planes > 1 {
        out.par_chunks_mut(il).enumerate().for_each(work);
    } else {
        out.chunks_mut(il).enumerate().for_each(work);
    }
    out
}

pub(crate) fn fold(
    s: &dyn BackendStorage,
    l: &Layout,
    p: &UnfoldParams,
    out_spatial: &[usize],
) -> Result<HostData> {
    const OP: &str = "fold";
    check_layout(s, l, OP)?;
    let g = geometry(OP, p, out_spatial)?;
    let (k, n_pos) = (g.kernel_len(), g.out_len());
    let dims = l.dims();
    if dims.len() != 3 || dims[1] != dims[1] / k * k || dims[2] != n_pos {
        return Err(Error::UnexpectedShape {
            op: OP,
            expected: format!("[N, C·{k}, {n_pos}] for output spatial {out_spatial:?}"),
            got: l.shape().clone(),
        });
    }
    let planes = dims[0] * (dims[1] / k);
    Ok(map_same!(&cpu(s)?.data, v => fold_typed(v, l, &g, planes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use tensor_core::{BackendDevice, DType, Shape};

    fn params(k: &[usize], s: &[usize], p: &[usize], d: &[usize], pad: f64) -> UnfoldParams {
        UnfoldParams {
            kernel: k.to_vec(),
            stride: s.to_vec(),
            padding: p.to_vec(),
            dilation: d.to_vec(),
            pad_value: pad,
        }
    }

    /// Direct transcription of torch.nn.functional.unfold for any number of spatial dims.
    fn unfold_ref(x: &[f64], dims: &[usize], p: &UnfoldParams) -> Vec<f64> {
        let (n, c, sp) = (dims[0], dims[1], &dims[2..]);
        let out = p.out_spatial(sp).unwrap();
        let kn: usize = p.kernel.iter().product();
        let ln: usize = out.iter().product();
        let ks = Shape::from(p.kernel.clone()).contiguous_strides();
        let os = Shape::from(out.clone()).contiguous_strides();
        let is = Shape::from(sp.to_vec()).contiguous_strides();
        let plane: usize = sp.iter().product();
        let mut res = vec![0.0; n * c * kn * ln];
        for b in 0..n {
            for ch in 0..c {
                for kk in 0..kn {
                    for pos in 0..ln {
                        let mut off = Some(0usize);
                        for d in 0..sp.len() {
                            let ki = (kk / ks[d]) % p.kernel[d];
                            let oi = (pos / os[d]) % out[d];
                            let i = (oi * p.stride[d] + ki * p.dilation[d]) as i64
                                - p.padding[d] as i64;
                            off = match off {
                                Some(o) if i >= 0 && (i as usize) < sp[d] => {
                                    Some(o + i as usize * is[d])
                                }
                                _ => None,
                            };
                        }
                        res[((b * c + ch) * kn + kk) * ln + pos] = match off {
                            Some(o) => x[(b * c + ch) * plane + o],
                            None => p.pad_value,
                        };
                    }
                }
            }
        }
        res
    }

    fn cases() -> Vec<(Vec<usize>, UnfoldParams)> {
        vec![
            (vec![2, 3, 9], params(&[3], &[1], &[0], &[1], 0.0)),
            (vec![1, 2, 10], params(&[4], &[3], &[2], &[2], -1.5)),
            (
                vec![2, 3, 5, 6],
                params(&[3, 3], &[1, 1], &[1, 1], &[1, 1], 0.0),
            ),
            (
                vec![1, 2, 7, 8],
                params(&[2, 3], &[2, 3], &[1, 2], &[2, 1], 0.5),
            ),
            (
                vec![2, 1, 6, 5],
                params(&[1, 1], &[2, 1], &[0, 0], &[1, 1], 0.0),
            ),
            (
                vec![1, 2, 4, 5, 6],
                params(&[2, 3, 2], &[1, 2, 1], &[1, 0, 1], &[1, 1, 2], 0.0),
            ),
            // Padding larger than the kernel span: whole rows of padding.
            (
                vec![1, 1, 3, 3],
                params(&[2, 2], &[1, 1], &[3, 3], &[1, 1], 0.0),
            ),
        ]
    }

    #[test]
    fn unfold_matches_reference() {
        for (dims, p) in cases() {
            let n: usize = dims.iter().product();
            let data = noise(n, 11);
            for dt in [DType::F32, DType::F64, DType::BF16, DType::I64] {
                let src = f64s(&data, dt);
                let stored = read(src.as_ref());
                let out = dev()
                    .unfold(src.as_ref(), &Layout::contiguous(dims.clone()), &p)
                    .unwrap();
                let mut want = unfold_ref(&stored, &dims, &p);
                if dt == DType::I64 || dt == DType::BF16 {
                    // The pad value is stored in the dtype too.
                    let pv = read(f64s(&[p.pad_value], dt).as_ref())[0];
                    for (w, r) in want.iter_mut().zip(unfold_ref(
                        &stored,
                        &dims,
                        &UnfoldParams {
                            pad_value: f64::NAN,
                            ..p.clone()
                        },
                    )) {
                        if r.is_nan() {
                            *w = pv;
                        }
                    }
                }
                assert_eq!(read(out.as_ref()), want, "{dims:?} {p:?} {dt}");
            }
        }
    }

    #[test]
    fn unfold_strided_input() {
        // A [1, 2, 5, 6] input seen through a permute of a [1, 5, 6, 2] buffer (channels last).
        let data = noise(60, 4);
        let src = f64s(&data, DType::F64);
        let l = Layout::contiguous([1, 5, 6, 2]).permute(&[0, 3, 1, 2]);
        let p = params(&[3, 2], &[1, 2], &[1, 0], &[1, 1], 0.0);
        let out = dev().unfold(src.as_ref(), &l, &p).unwrap();
        assert_eq!(
            read(out.as_ref()),
            unfold_ref(&view(&data, &l), &[1, 2, 5, 6], &p)
        );
    }

    #[test]
    fn fold_is_the_adjoint_of_unfold() {
        for (dims, p) in cases() {
            let p = UnfoldParams {
                pad_value: 0.0,
                ..p
            };
            let n: usize = dims.iter().product();
            let x = noise(n, 21);
            let xs = f64s(&x, DType::F64);
            let u = dev()
                .unfold(xs.as_ref(), &Layout::contiguous(dims.clone()), &p)
                .unwrap();
            let u = read(u.as_ref());
            let y = noise(u.len(), 22);
            let ys = f64s(&y, DType::F64);
            let c = dims[1] * p.kernel.iter().product::<usize>();
            let yl = Layout::contiguous([dims[0], c, u.len() / (dims[0] * c)]);
            let f = dev().fold(ys.as_ref(), &yl, &p, &dims[2..]).unwrap();
            let f = read(f.as_ref());
            assert_eq!(f.len(), n);
            let lhs: f64 = u.iter().zip(&y).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&f).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() < 1e-12 * (1.0 + lhs.abs()),
                "{dims:?}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn large_2d_parallel_and_fold_dtypes() {
        let dims = [2, 8, 40, 40];
        let n: usize = dims.iter().product();
        let data = noise(n, 5);
        let p = params(&[3, 3], &[1, 1], &[1, 1], &[1, 1], 0.0);
        let src = f64s(&data, DType::F32);
        let stored = read(src.as_ref());
        let out = dev()
            .unfold(src.as_ref(), &Layout::contiguous(dims), &p)
            .unwrap();
        assert_eq!(read(out.as_ref()), unfold_ref(&stored, &dims, &p));
        // fold of unfold counts each pixel's taps: ones in -> tap counts out, in every dtype.
        for dt in [DType::F16, DType::U8, DType::F32] {
            let ones = f64s(&vec![1.0; n], dt);
            let u = dev()
                .unfold(ones.as_ref(), &Layout::contiguous(dims), &p)
                .unwrap();
            let ul = Layout::contiguous([2, 8 * 9, 1600]);
            let f = read(dev().fold(u.as_ref(), &ul, &p, &[40, 40]).unwrap().as_ref());
            // Interior pixels are covered by 9 taps, corners by 4.
            assert_eq!(f[41], 9.0);
            assert_eq!(f[0], 4.0);
        }
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let s = f64s(&[0.0; 16], DType::F32);
        let l = Layout::contiguous([1, 1, 4, 4]);
        let big = params(&[5, 5], &[1, 1], &[0, 0], &[1, 1], 0.0);
        assert!(dev().unfold(s.as_ref(), &l, &big).is_err());
        let zero = params(&[2, 2], &[0, 1], &[0, 0], &[1, 1], 0.0);
        assert!(dev().unfold(s.as_ref(), &l, &zero).is_err());
        let rank = params(&[2], &[1], &[0], &[1], 0.0);
        assert!(dev().unfold(s.as_ref(), &l, &rank).is_err());
        let ok = params(&[2, 2], &[1, 1], &[0, 0], &[1, 1], 0.0);
        // fold input whose last dim does not match the number of positions.
        assert!(dev()
            .fold(s.as_ref(), &Layout::contiguous([1, 4, 4]), &ok, &[4, 4])
            .is_err());
    }
}
