//! Reductions (sum, max, min, argmax, argmin) and cumsum.
//!
//! A reduction splits the view into kept dims (the output) and reduced dims. Two loop orders:
//! when the reduced dims are innermost in memory, each output folds a run of memory (multi-lane
//! sums that vectorise; one huge output is split into fixed ranges folded in parallel); when
//! the kept dims are innermost, rows of the reduced space are added onto a vector of
//! accumulators. Either way the grouping of the arithmetic is fixed, so results do not depend
//! on the thread count.

use rayon::prelude::*;
use tensor_core::{map_host, BackendStorage, Error, HostData, Layout, ReduceOp, Result};

use crate::copy::{fill_chunks_sized, Walker};
use crate::elementwise::map1;
use crate::storage::cpu;
use crate::{check_layout, map_same, Acc, Elem, PAR_CHUNK, PAR_THRESHOLD};

/// A fold over the reduced elements of one output.
trait Reducer<T: Copy>: Sync {
    type Acc: Copy + Send + Sync;
    type Out: Copy + Send + Sync + Default;
    fn init(&self) -> Self::Acc;
    /// `i` is the element's row-major position in the reduced index space.
    fn step(&self, acc: Self::Acc, x: T, i: usize) -> Self::Acc;
    /// Combine the fold of an earlier range with the fold of the range after it.
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
    fn finish(&self, a: Self::Acc) -> Self::Out;
    /// Fold a contiguous run starting at position `i0`.
    fn step_run(&self, mut acc: Self::Acc, xs: &[T], i0: usize) -> Self::Acc {
        for (j, &x) in xs.iter().enumerate() {
            acc = self.step(acc, x, i0 + j);
        }
        acc
    }
}

struct SumR;
impl<T: Elem> Reducer<T> for SumR {
    type Acc = T::Acc;
    type Out = T;
    fn init(&self) -> T::Acc {
        T::Acc::default()
    }
    #[inline(always)]
    fn step(&self, acc: T::Acc, x: T, _: usize) -> T::Acc {
        acc.add(x.to_acc())
    }
    fn merge(&self, a: T::Acc, b: T::Acc) -> T::Acc {
        a.add(b)
    }
    fn finish(&self, a: T::Acc) -> T {
        T::from_acc(a)
    }
    /// Eight independent lanes (so the loop vectorises) over blocks of 4096, whose partial
    /// sums are then added: far less rounding error than one running sum.
    fn step_run(&self, acc: T::Acc, xs: &[T], _: usize) -> T::Acc {
        let mut total = acc;
        for block in xs.chunks(4096) {
            let mut lanes = [T::Acc::default(); 8];
            let mut it = block.chunks_exact(8);
            for c in &mut it {
                for k in 0..8 {
                    lanes[k] = lanes[k].add(c[k].to_acc());
                }
            }
            let mut s = (lanes[0].add(lanes[4]).add(lanes[1].add(lanes[5])))
                .add(lanes[2].add(lanes[6]).add(lanes[3].add(lanes[7])));
            for &x in it.remainder() {
                s = s.add(x.to_acc());
            }
            total = total.add(s);
        }
        total
    }
}

/// Max/min in the element type; a NaN wins and then stays (torch.max semantics).
struct ExtremumR<const MAX: bool>;
impl<T: Elem, const MAX: bool> Reducer<T> for ExtremumR<MAX> {
    type Acc = T;
    type Out = T;
    fn init(&self) -> T {
        if MAX {
            T::LOWEST
        } else {
            T::HIGHEST
        }
    }
    #[inline(always)]
    fn step(&self, acc: T, x: T, _: usize) -> T {
        let better = if MAX { x > acc } else { x < acc };
        if better || x.is_nan() {
            x
        } else {
            acc
        }
    }
    fn merge(&self, a: T, b: T) -> T {
        if a.is_nan() {
            a
        } else {
            <Self as Reducer<T>>::step(self, a, b, 0)
        }
    }
    fn finish(&self, a: T) -> T {
        a
    }
}

/// Index of the first max/min; a NaN counts as the extremum (torch.argmax semantics).
struct ArgR<const MAX: bool>;
impl<const MAX: bool> ArgR<MAX> {
    #[inline(always)]
    fn better<T: Elem>(x: T, cur: T) -> bool {
        !cur.is_nan() && (x.is_nan() || if MAX { x > cur } else { x < cur })
    }
}
impl<T: Elem, const MAX: bool> Reducer<T> for ArgR<MAX> {
    /// (value, position); position −1 while nothing has been seen.
    type Acc = (T, i64);
    type Out = i64;
    fn init(&self) -> (T, i64) {
        (T::default(), -1)
    }
    #[inline(always)]
    fn step(&self, acc: (T, i64), x: T, i: usize) -> (T, i64) {
        if acc.1 < 0 || Self::better(x, acc.0) {
            (x, i as i64)
        } else {
            acc
        }
    }
    fn merge(&self, a: (T, i64), b: (T, i64)) -> (T, i64) {
        if b.1 < 0 || (a.1 >= 0 && !Self::better(b.0, a.0)) {
            a
        } else {
            b
        }
    }
    fn finish(&self, a: (T, i64)) -> i64 {
        a.1.max(0)
    }
}

/// Rows of the reduced space folded onto accumulators before those are merged into the
/// totals (keeps long sums pairwise-ish instead of one running sum).
const ROW_BLOCK: usize = 1024;
/// The fewest outputs for which adding whole rows onto accumulators beats strided folds.
const MIN_ROW_OUTPUTS: usize = 8;

fn reduce_with<T, R>(src: &[T], l: &Layout, dims: &[usize], r: &R) -> Vec<R::Out>
where
    T: Copy + Send + Sync,
    R: Reducer<T>,
{
    let (ld, ls) = (l.dims(), l.strides());
    let (mut kd, mut ks, mut rd, mut rs) = (vec![], vec![], vec![], vec![]);
    for i in 0..ld.len() {
        if dims.contains(&i) {
            rd.push(ld[i]);
            rs.push(ls[i]);
        } else {
            kd.push(ld[i]);
            ks.push(ls[i]);
        }
    }
    let out_n: usize = kd.iter().product();
    let red_n: usize = rd.iter().product();
    if out_n == 0 {
        return Vec::new();
    }
    if red_n == 0 {
        return vec![r.finish(r.init()); out_n];
    }
    let kept = Walker::new(&kd, [(&ks, 0)]);
    let red = Walker::new(&rd, [(&rs, 0)]);
    let ([k_s], [r_s]) = (kept.inner_strides(), red.inner_strides());
    let base = l.offset();
    let parallel = out_n.saturating_mul(red_n) > PAR_THRESHOLD;

    if k_s == 1 && r_s != 1 && out_n >= MIN_ROW_OUTPUTS {
        // Kept dims innermost: add rows of the reduced space onto accumulators.
        let mut acc = vec![r.init(); out_n];
        let chunk = (PAR_CHUNK / red_n).max(256);
        fill_chunks_sized(&mut acc, chunk, parallel, |start, chunk| {
            let mut part = vec![r.init(); chunk.len()];
            let mut r0 = 0;
            while r0 < red_n {
                let r1 = (r0 + ROW_BLOCK).min(red_n);
                part.fill(r.init());
                red.blocks(r0, r1, |rpos, [rb], rlen| {
                    for t in 0..rlen {
                        let (roff, i) = (base + rb + t * r_s, rpos + t);
                        kept.blocks(start, start + part.len(), |pos, [kb], klen| {
                            let o = &mut part[pos - start..pos - start + klen];
                            let b = roff + kb;
                            for (a, &x) in o.iter_mut().zip(&src[b..b + klen]) {
                                *a = r.step(*a, x, i);
                            }
                        });
                    }
                });
                for (a, &p) in chunk.iter_mut().zip(&part) {
                    *a = r.merge(*a, p);
                }
                r0 = r1;
            }
        });
        return acc.into_iter().map(|a| r.finish(a)).collect();
    }

    // Reduced dims innermost (or too few outputs): fold each output's elements.
    let fold = |obase: usize, start: usize, end: usize| -> R::Acc {
        let mut acc = r.init();
        red.blocks(start, end, |pos, [b], len| {
            let b = obase + b;
            if r_s == 1 {
                acc = r.step_run(acc, &src[b..b + len], pos);
            } else {
                for j in 0..len {
                    acc = r.step(acc, src[b + j * r_s], pos + j);
                }
            }
        });
        acc
    };
    let mut out = vec![R::Out::default(); out_n];
    if out_n < MIN_ROW_OUTPUTS && red_n > PAR_THRESHOLD {
        // Few huge folds: split each into fixed ranges folded in parallel, merged in order.
        for (o, slot) in out.iter_mut().enumerate() {
            let mut obase = base;
            kept.blocks(o, o + 1, |_, [kb], _| obase += kb);
            let parts: Vec<R::Acc> = (0..red_n.div_ceil(PAR_CHUNK))
                .into_par_iter()
                .map(|c| fold(obase, c * PAR_CHUNK, ((c + 1) * PAR_CHUNK).min(red_n)))
                .collect();
            let total = parts.into_iter().fold(r.init(), |a, p| r.merge(a, p));
            *slot = r.finish(total);
        }
        return out;
    }
    let chunk = (PAR_CHUNK / red_n).max(1);
    fill_chunks_sized(&mut out, chunk, parallel, |start, chunk| {
        kept.blocks(start, start + chunk.len(), |pos, [kb], klen| {
            for j in 0..klen {
                chunk[pos - start + j] = r.finish(fold(base + kb + j * k_s, 0, red_n));
            }
        })
    });
    out
}

pub(crate) fn reduce(
    op: ReduceOp,
    s: &dyn BackendStorage,
    l: &Layout,
    dims: &[usize],
) -> Result<HostData> {
    let name = op.name();
    check_layout(s, l, name)?;
    tensor_core::checks::reduce_dims(op, l, dims)?;
    let red_n: usize = dims.iter().map(|&d| l.dims()[d]).product();
    let out_n: usize = (0..l.rank())
        .filter(|i| !dims.contains(i))
        .map(|i| l.dims()[i])
        .product();
    if red_n == 0 && out_n > 0 && op != ReduceOp::Sum {
        return Err(Error::invalid(
            name,
            format!("cannot reduce an empty dimension (shape {:?})", l.dims()),
        ));
    }
    let data = &cpu(s)?.data;
    Ok(match op {
        ReduceOp::Sum => map_same!(data, v => reduce_with(v, l, dims, &SumR)),
        ReduceOp::Max => map_same!(data, v => reduce_with(v, l, dims, &ExtremumR::<true>)),
        ReduceOp::Min => map_same!(data, v => reduce_with(v, l, dims, &ExtremumR::<false>)),
        ReduceOp::ArgMax => {
            HostData::I64(map_host!(data, v => reduce_with(v, l, dims, &ArgR::<true>)))
        }
        ReduceOp::ArgMin => {
            HostData::I64(map_host!(data, v => reduce_with(v, l, dims, &ArgR::<false>)))
        }
    })
}

/// Inclusive prefix sums along `dim` of a contiguous `[outer, n, inner]` buffer, in place.
fn cumsum_contiguous<A: Acc>(buf: &mut [A], n: usize, inner: usize) {
    let plane = n * inner;
    if plane == 0 {
        return;
    }
    let scan = |p: &mut [A]| {
        for i in 1..n {
            let (prev, cur) = p.split_at_mut(i * inner);
            let prev = &prev[(i - 1) * inner..];
            for (c, &q) in cur[..inner].iter_mut().zip(prev) {
                *c = c.add(q);
            }
        }
    };
    let planes_per_task = (PAR_CHUNK / plane).max(1);
    if buf.len() > PAR_THRESHOLD && buf.len() > plane {
        buf.par_chunks_mut(plane * planes_per_task)
            .for_each(|c| c.chunks_mut(plane).for_each(scan));
    } else {
        buf.chunks_mut(plane).for_each(scan);
    }
}

fn cumsum_typed<T: Elem>(src: &[T], l: &Layout, dim: usize) -> Vec<T> {
    let dims = l.dims();
    let (n, inner) = (dims[dim], dims[dim + 1..].iter().product());
    let mut acc = map1(src, l, |x: T| x.to_acc());
    cumsum_contiguous(&mut acc, n, inner);
    map1(&acc, &Layout::contiguous([acc.len()]), T::from_acc)
}

pub(crate) fn cumsum(s: &dyn BackendStorage, l: &Layout, dim: usize) -> Result<HostData> {
    check_layout(s, l, "cumsum")?;
    if dim >= l.rank() {
        return Err(Error::DimOutOfRange {
            op: "cumsum",
            dim: dim as i64,
            rank: l.rank(),
            shape: l.shape().clone(),
        });
    }
    Ok(map_same!(&cpu(s)?.data, v => cumsum_typed(v, l, dim)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use tensor_core::{BackendDevice, DType, Shape};

    /// Reference reduction over a strided view, in f64.
    fn reference(data: &[f64], l: &Layout, dims: &[usize], op: ReduceOp) -> Vec<f64> {
        let vals = view(data, l);
        let shape = l.dims();
        let out_dims: Vec<usize> = shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if dims.contains(&i) { 1 } else { d })
            .collect();
        let out_strides = Shape::from(out_dims.clone()).contiguous_strides();
        let red_strides =
            Shape::from(dims.iter().map(|&d| shape[d]).collect::<Vec<_>>()).contiguous_strides();
        let out_n: usize = out_dims.iter().product();
        let mut groups: Vec<Vec<(usize, f64)>> = vec![vec![]; out_n];
        let in_strides = l.shape().contiguous_strides();
        for (lin, &v) in vals.iter().enumerate() {
            let (mut o, mut ri) = (0, 0);
            for d in 0..shape.len() {
                let idx = (lin / in_strides[d]) % shape[d];
                if let Some(p) = dims.iter().position(|&x| x == d) {
                    ri += idx * red_strides[p];
                } else {
                    o += idx * out_strides[d];
                }
            }
            groups[o].push((ri, v));
        }
        groups
            .into_iter()
            .map(|mut g| {
                g.sort_by_key(|x| x.0);
                match op {
                    ReduceOp::Sum => g.iter().map(|x| x.1).sum(),
                    ReduceOp::Max => g.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max),
                    ReduceOp::Min => g.iter().map(|x| x.1).fold(f64::INFINITY, f64::min),
                    ReduceOp::ArgMax | ReduceOp::ArgMin => {
                        let mut best = 0;
                        for (i, x) in g.iter().enumerate() {
                            let b = g[best].1;
                            if (op == ReduceOp::ArgMax && x.1 > b)
                                || (op == ReduceOp::ArgMin && x.1 < b)
                            {
                                best = i;
                            }
                        }
                        best as f64
                    }
                }
            })
            .collect()
    }

    fn check(data: &[f64], l: &Layout, dims: &[usize], dt: DType, tol: f64) {
        let src = f64s(data, dt);
        let stored = read(src.as_ref());
        let ops: &[ReduceOp] = if dims.len() == 1 {
            &[
                ReduceOp::Sum,
                ReduceOp::Max,
                ReduceOp::Min,
                ReduceOp::ArgMax,
                ReduceOp::ArgMin,
            ]
        } else {
            &[ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min]
        };
        for &op in ops {
            let out = dev().reduce(op, src.as_ref(), l, dims).unwrap();
            let mut want = reference(&stored, l, dims, op);
            if op == ReduceOp::Sum && dt.is_float() {
                // The exact sum, rounded once into the dtype.
                want = read(f64s(&want, dt).as_ref());
            }
            if op == ReduceOp::Sum && dt.is_int() {
                // Integer sums wrap in the element type.
                let m = match dt {
                    DType::U8 => 256.0,
                    DType::U32 => 4294967296.0,
                    _ => f64::INFINITY,
                };
                want.iter_mut()
                    .for_each(|w| *w = if m.is_finite() { w.rem_euclid(m) } else { *w });
            }
            let got = read(out.as_ref());
            let arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
            assert_eq!(out.dtype(), if arg { DType::I64 } else { dt });
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let t = if op == ReduceOp::Sum { tol } else { 0.0 };
                assert!(
                    (g - w).abs() <= t * (1.0 + w.abs()),
                    "{op:?} {dt} {:?} dims {dims:?} [{i}]: {g} vs {w}",
                    l.dims()
                );
            }
        }
    }

    #[test]
    fn reductions_match_reference() {
        // Integer-valued data so 16-bit and integer sums are exact.
        let data: Vec<f64> = noise(2 * 3 * 4 * 5, 3)
            .iter()
            .map(|x| (x * 8.0).round().abs())
            .collect();
        let c = Layout::contiguous([2, 3, 4, 5]);
        let views = [
            c.clone(),
            c.permute(&[3, 1, 0, 2]),
            Layout::contiguous([3, 1, 5])
                .broadcast_as(&Shape::from([2, 3, 4, 5]))
                .unwrap(),
            Layout::contiguous([2, 3, 4, 10]).narrow(3, 2, 5),
        ];
        let dim_sets: [&[usize]; 8] = [
            &[0],
            &[1],
            &[3],
            &[0, 1],
            &[1, 3],
            &[0, 2],
            &[2, 3],
            &[0, 1, 2, 3],
        ];
        for dt in DType::ALL {
            for l in &views {
                let need = l.required_len();
                let d = &data.iter().cycle().take(need).copied().collect::<Vec<_>>();
                for dims in dim_sets {
                    check(d, l, dims, dt, 0.0);
                }
            }
        }
    }

    #[test]
    fn large_reductions_both_orders() {
        let (r, c) = (700, 300);
        let data = noise(r * c, 4);
        let l = Layout::contiguous([r, c]);
        for dims in [&[0usize][..], &[1], &[0, 1]] {
            check(&data, &l, dims, DType::F64, 1e-12);
            check(&data, &l, dims, DType::F32, 1e-5);
        }
        // A transposed large view: the reduced dim is strided.
        check(&data, &l.permute(&[1, 0]), &[1], DType::F32, 1e-5);
        // One huge output (parallel ranges) and a few outputs.
        check(&data, &Layout::contiguous([r * c]), &[0], DType::F32, 1e-5);
        check(
            &data,
            &Layout::contiguous([3, r * c / 3]),
            &[1],
            DType::F64,
            1e-12,
        );
        check(
            &data,
            &Layout::contiguous([r * c / 4, 4]),
            &[0],
            DType::F64,
            1e-12,
        );
    }

    #[test]
    fn nan_and_first_occurrence() {
        let s = f64s(&[1.0, 3.0, f64::NAN, 3.0, 5.0, 5.0, 0.0, 5.0], DType::F32);
        let l = Layout::contiguous([2, 4]);
        let run = |op| read(dev().reduce(op, s.as_ref(), &l, &[1]).unwrap().as_ref());
        let m = run(ReduceOp::Max);
        assert!(m[0].is_nan());
        assert_eq!(m[1], 5.0);
        assert!(run(ReduceOp::Min)[0].is_nan());
        assert_eq!(run(ReduceOp::ArgMax), [2.0, 0.0]);
        assert_eq!(run(ReduceOp::ArgMin), [2.0, 2.0]);
        // Sum over an empty dim is zero; max over it is an error.
        let e = f64s(&[], DType::F32);
        let le = Layout::contiguous([3, 0]);
        let z = dev().reduce(ReduceOp::Sum, e.as_ref(), &le, &[1]).unwrap();
        assert_eq!(read(z.as_ref()), [0.0; 3]);
        assert!(dev().reduce(ReduceOp::Max, e.as_ref(), &le, &[1]).is_err());
        // Bad dims are errors, not panics.
        assert!(dev().reduce(ReduceOp::Sum, s.as_ref(), &l, &[2]).is_err());
        assert!(dev().reduce(ReduceOp::Sum, s.as_ref(), &l, &[]).is_err());
        assert!(dev()
            .reduce(ReduceOp::ArgMax, s.as_ref(), &l, &[0, 1])
            .is_err());
    }

    #[test]
    fn cumsum_all_dtypes_and_views() {
        for dt in DType::ALL {
            let s = f64s(&[1., 2., 3., 4., 5., 6.], dt);
            let l = Layout::contiguous([2, 3]);
            let a = dev().cumsum(s.as_ref(), &l, 1).unwrap();
            assert_eq!(read(a.as_ref()), [1., 3., 6., 4., 9., 15.]);
            let b = dev().cumsum(s.as_ref(), &l, 0).unwrap();
            assert_eq!(read(b.as_ref()), [1., 2., 3., 5., 7., 9.]);
            let t = dev().cumsum(s.as_ref(), &l.permute(&[1, 0]), 1).unwrap();
            assert_eq!(read(t.as_ref()), [1., 5., 2., 7., 3., 9.]);
        }
        // Large, parallel, along a middle dim.
        let (a, n, c) = (40, 50, 30);
        let data = noise(a * n * c, 8);
        let s = f64s(&data, DType::F64);
        let out = read(
            dev()
                .cumsum(s.as_ref(), &Layout::contiguous([a, n, c]), 1)
                .unwrap()
                .as_ref(),
        );
        for i in 0..a {
            for k in 0..c {
                let mut acc = 0.0;
                for j in 0..n {
                    let idx = (i * n + j) * c + k;
                    acc += data[idx];
                    assert!((out[idx] - acc).abs() < 1e-12);
                }
            }
        }
        assert!(dev()
            .cumsum(s.as_ref(), &Layout::contiguous([a, n, c]), 3)
            .is_err());
    }
}
