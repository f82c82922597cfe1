//! Flash-style attention on the CPU: forward with an online softmax over key blocks, and the
//! FlashAttention-2 backward that recomputes probabilities from the saved log-sum-exp. The
//! `[Lq, Lk]` score matrix (and a broadcast bias) is never materialised: work happens on
//! `BQ × BK` blocks that stay in cache, through the small products of [`super::tile`].
//!
//! Forward tasks are (batch, kv head, query block), holding the query rows of every head that
//! shares the kv head (GQA), so each key/value block is read once for the whole group. When
//! there are too few tasks to fill the threads (decoding), the key range is also split and
//! the partial softmax states are merged afterwards (flash-decoding). Backward tasks are
//! (batch, kv head): each owns its dK/dV rows and the dQ rows of its query heads, so no
//! write is shared.

use half::{bf16, f16};
use rayon::prelude::*;
use tensor_core::{composite, AttentionParams, DType, Result, Tensor, WithDType};

use super::math::{self, dispatch, Float, Io, Kernel, Madd};
use super::tile::{gemm, transpose, Mat};
use super::{elems, tensor_of};

/// Query rows per forward task (summed over the heads of a GQA group).
const BQ: usize = 64;
/// Keys per block.
const BK: usize = 64;
/// Key blocks a split of the key range covers at least (decode-time splitting).
const MIN_SPLIT_BLOCKS: usize = 4;
/// Forward tasks wanted before the key range is split. Fixed (not the thread count) so that
/// results do not depend on the machine.
const TARGET_TASKS: usize = 32;

/// Storage offset and strides of a rank-4 view (broadcast dims have stride 0).
#[derive(Clone, Copy, Debug)]
struct View4 {
    off: usize,
    st: [usize; 4],
}

impl View4 {
    /// `t` aligned to the right of a rank-4 shape: missing leading dims and size-1 dims read
    /// with stride 0, so a bias broadcastable to `[B, Hq, Lq, Lk]` is indexed in place.
    fn of(t: &Tensor) -> View4 {
        let l = t.layout();
        let r = l.rank();
        let mut st = [0; 4];
        for i in 0..r.min(4) {
            let (d, s) = (l.dims()[r - 1 - i], l.strides()[r - 1 - i]);
            st[3 - i] = if d == 1 { 0 } else { s };
        }
        View4 { off: l.offset(), st }
    }

    #[inline(always)]
    fn row(&self, a: usize, b: usize, c: usize) -> usize {
        self.off + a * self.st[0] + b * self.st[1] + c * self.st[2]
    }
}

/// Elements of `data` as the compute type: borrowed when they already are, else converted
/// (only the span `[off, end)` a view reaches; offsets into it shift by `off`).
fn as_compute<S: Io>(data: &[S], off: usize, end: usize) -> (std::borrow::Cow<'_, [S::T]>, usize) {
    match S::native(data) {
        Some(d) => (std::borrow::Cow::Borrowed(d), off),
        None => (
            std::borrow::Cow::Owned(data[off..end.max(off)].iter().map(|x| x.load()).collect()),
            0,
        ),
    }
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
struct Geom {
    b: usize,
    hq: usize,
    hkv: usize,
    g: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
    /// Key blocks.
    nkb: usize,
}

impl Geom {
    fn new(q: &Tensor, k: &Tensor, v: &Tensor) -> Geom {
        let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
        Geom {
            b: qd[0],
            hq: qd[1],
            hkv: kd[1],
            g: qd[1] / kd[1],
            lq: qd[2],
            lk: kd[2],
            d: qd[3],
            dv: vd[3],
            nkb: kd[2].div_ceil(BK),
        }
    }
}

/// The additive terms and masks of the scores: causal/window masks, ALiBi and bias.
struct Scores<'a, T> {
    lq: usize,
    lk: usize,
    causal: bool,
    window: Option<i64>,
    alibi: Option<Vec<T>>,
    bias: Option<(&'a [T], View4)>,
    /// `0, 1, …, BK−1` (ALiBi's column ramp).
    ramp: [T; BK],
}

impl<T: Float> Scores<'_, T> {
    /// Absolute position of query row `i`.
    #[inline(always)]
    fn pos(&self, i: usize) -> i64 {
        self.lk as i64 - self.lq as i64 + i as i64
    }

    /// Keys `[lo, hi)` visible to some query among positions `p0..=p1` (empty if lo ≥ hi).
    #[inline(always)]
    fn visible(&self, p0: i64, p1: i64) -> (usize, usize) {
        let mut lo = 0i64;
        let mut hi = self.lk as i64;
        if self.causal {
            hi = hi.min(p1.saturating_add(1));
        }
        if let Some(w) = self.window {
            lo = lo.max(p0.saturating_sub(w).saturating_add(1));
            hi = hi.min(p1.saturating_add(w));
        }
        let lo = lo.clamp(0, self.lk as i64) as usize;
        let hi = hi.clamp(0, self.lk as i64) as usize;
        (lo, hi.max(lo))
    }

    /// Keys visible to some query row among `i0..i0+n`.
    #[inline(always)]
    fn key_range(&self, i0: usize, n: usize) -> (usize, usize) {
        if n == 0 {
            return (0, 0);
        }
        self.visible(self.pos(i0), self.pos(i0 + n - 1))
    }

    /// Whether every key in `j0..j1` is visible to every query row in `i0..i0+n`.
    #[inline(always)]
    fn all_visible(&self, i0: usize, n: usize, j0: usize, j1: usize) -> bool {
        let (p0, p1) = (self.pos(i0), self.pos(i0 + n - 1));
        let (j0, j1) = (j0 as i64, j1 as i64 - 1);
        (!self.causal || j1 <= p0) && self.window.is_none_or(|w| p1 - j0 < w && j1 - p0 < w)
    }

    /// Add ALiBi and bias to one row of raw scores `s[0..BK]` (keys `j0..`, `nv` of them
    /// real) of query `(b, h, i)`, then set masked and padding columns to −inf.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn finish_row(&self, s: &mut [T], b: usize, h: usize, i: usize, j0: usize, nv: usize, masked: bool) {
        let p = self.pos(i);
        if let Some(al) = &self.alibi {
            let slope = al[h];
            let base = T::from_f64((j0 as i64 - p) as f64);
            for (x, &r) in s.iter_mut().zip(&self.ramp) {
                *x += slope * (base - r);
            }
        }
        if let Some((bd, bv)) = &self.bias {
            let o = bv.row(b, h, i) + j0 * bv.st[3];
            if bv.st[3] == 1 {
                for (x, &y) in s[..nv].iter_mut().zip(&bd[o..o + nv]) {
                    *x += y;
                }
            } else {
                for (j, x) in s[..nv].iter_mut().enumerate() {
                    *x += bd[o + j * bv.st[3]];
                }
            }
        }
        if masked {
            let (lo, hi) = self.visible(p, p);
            let lo = lo.saturating_sub(j0).min(BK);
            let hi = hi.saturating_sub(j0).clamp(lo, BK);
            s[..lo].fill(T::NEG_INF);
            s[hi..].fill(T::NEG_INF);
        }
        s[nv..BK.min(nv + 1)].fill(T::NEG_INF);
    }
}

/// Read-only inputs shared by the forward tasks.
struct FwdShared<'a, S: Io> {
    geo: Geom,
    sc: Scores<'a, S::T>,
    scale: S::T,
    q: &'a [S],
    qv: View4,
    /// K transposed per block: `[B·Hkv][nkb][D][BK]`, zero-padded.
    kt: &'a [S::T],
    /// V rows (`v.1` locates row 0 of each (batch, kv head), `v.2` is the row stride).
    v: (&'a [S::T], View4, usize),
}

/// One forward task: queries `i0..i0+nq` of every head of kv head `hk`, keys in key blocks
/// `kb0..kb1`. Returns the un-normalised output rows, row maxima and row sums.
struct FwdTask<'s, 'a, S: Io> {
    sh: &'s FwdShared<'a, S>,
    b: usize,
    hk: usize,
    i0: usize,
    nq: usize,
    kb0: usize,
    kb1: usize,
}

/// Partial softmax state of a block of query rows.
struct Partial<T> {
    o: Vec<T>,
    m: Vec<T>,
    l: Vec<T>,
}

impl<S: Io> Kernel for FwdTask<'_, '_, S> {
    type Out = Partial<S::T>;

    #[inline(always)]
    fn run<M: Madd>(self) -> Partial<S::T> {
        let sh = self.sh;
        let Geom { d, dv, g, .. } = sh.geo;
        let (b, nq, i0) = (self.b, self.nq, self.i0);
        let rows = g * nq;
        // Query rows of the group, scaled: row hh·nq + r is head hk·g + hh, position i0 + r.
        let mut qs = vec![S::T::ZERO; rows * d];
        for hh in 0..g {
            for r in 0..nq {
                let base = sh.qv.row(b, self.hk * g + hh, i0 + r);
                let dst = &mut qs[(hh * nq + r) * d..][..d];
                for (c, x) in dst.iter_mut().enumerate() {
                    *x = sh.q[base + c * sh.qv.st[3]].load() * sh.scale;
                }
            }
        }
        let mut s = vec![S::T::ZERO; rows * BK];
        let mut o = vec![S::T::ZERO; rows * dv];
        let mut mx = vec![S::T::NEG_INF; rows];
        let mut l = vec![S::T::ZERO; rows];
        let bh = b * sh.geo.hkv + self.hk;
        let (vd, vv, ldv) = sh.v;
        let vbase = vv.row(b, self.hk, 0);
        for kb in self.kb0..self.kb1 {
            let j0 = kb * BK;
            let nv = BK.min(sh.geo.lk - j0);
            let ktb = &sh.kt[(bh * sh.geo.nkb + kb) * d * BK..][..d * BK];
            gemm::<S::T, M>(
                rows,
                BK,
                d,
                Mat { data: &qs, ld: d },
                Mat { data: ktb, ld: BK },
                &mut s,
                BK,
                false,
            );
            let masked = !sh.sc.all_visible(i0, nq, j0, j0 + nv);
            for (row, sr) in s.chunks_exact_mut(BK).enumerate() {
                let (hh, r) = (row / nq, row % nq);
                sh.sc
                    .finish_row(sr, b, self.hk * g + hh, i0 + r, j0, nv, masked);
                let m_new = mx[row].max(math::max_of(sr));
                if m_new == S::T::NEG_INF {
                    // Nothing visible yet: contribute nothing (exp(−inf − −inf) would be NaN).
                    sr.fill(S::T::ZERO);
                    continue;
                }
                let alpha = (mx[row] - m_new).exp();
                let sum = math::exp_shift_sum_inplace(sr, m_new);
                l[row] = l[row] * alpha + sum;
                mx[row] = m_new;
                if alpha != S::T::ONE {
                    math::scale(&mut o[row * dv..][..dv], alpha);
                }
            }
            gemm::<S::T, M>(
                rows,
                dv,
                nv,
                Mat { data: &s, ld: BK },
                Mat {
                    data: &vd[vbase + j0 * ldv..],
                    ld: ldv,
                },
                &mut o,
                dv,
                true,
            );
        }
        Partial { o, m: mx, l }
    }
}

/// How many key splits per query block so that there are enough tasks for the threads.
fn key_splits(tasks: usize, blocks: usize) -> usize {
    if tasks == 0 || tasks >= TARGET_TASKS || blocks < 2 * MIN_SPLIT_BLOCKS {
        return 1;
    }
    TARGET_TASKS
        .div_ceil(tasks)
        .min(blocks / MIN_SPLIT_BLOCKS)
        .max(1)
}

/// `v` cut into `n` equal consecutive parts (empty parts when `v` is empty).
fn split_n<T>(v: &mut [T], n: usize) -> Vec<&mut [T]> {
    if n == 0 {
        return Vec::new();
    }
    let size = v.len() / n;
    if size == 0 {
        return (0..n).map(|_| <&mut [T]>::default()).collect();
    }
    v.chunks_mut(size).collect()
}

/// Pack K transposed per block (`[B·Hkv][nkb][D][BK]`, zero-padded).
fn pack_kt<S: Io>(k: &[S], kv: View4, geo: Geom) -> Vec<S::T> {
    let (d, lk) = (geo.d, geo.lk);
    let mut kt = vec![S::T::ZERO; geo.b * geo.hkv * geo.nkb * d * BK];
    if kt.is_empty() {
        return kt;
    }
    kt.par_chunks_mut(d * BK).enumerate().for_each(|(idx, blk)| {
        let kb = idx % geo.nkb;
        let bh = idx / geo.nkb;
        let (b, hk) = (bh / geo.hkv, bh % geo.hkv);
        let j0 = kb * BK;
        for j in 0..BK.min(lk - j0) {
            let base = kv.row(b, hk, j0 + j);
            for c in 0..d {
                blk[c * BK + j] = k[base + c * kv.st[3]].load();
            }
        }
    });
    kt
}

/// Contiguous compute-type copy of a `[B, H, L, D]` view (rows of `D`).
fn pack_rows<S: Io>(x: &[S], xv: View4, dims: [usize; 4]) -> Vec<S::T> {
    let [_, h, l, d] = dims;
    let mut out = vec![S::T::ZERO; dims.iter().product()];
    if d == 0 || out.is_empty() {
        return out;
    }
    out.par_chunks_mut(l * d).enumerate().for_each(|(bh, o)| {
        let (b, hh) = (bh / h, bh % h);
        for (i, row) in o.chunks_exact_mut(d).enumerate() {
            let base = xv.row(b, hh, i);
            for (c, y) in row.iter_mut().enumerate() {
                *y = x[base + c * xv.st[3]].load();
            }
        }
    });
    out
}

fn scores_of<'a, S: Io>(
    p: &AttentionParams,
    geo: Geom,
    alibi: Option<Vec<S::T>>,
    bias: Option<(&'a [S::T], View4)>,
) -> Scores<'a, S::T> {
    Scores {
        lq: geo.lq,
        lk: geo.lk,
        causal: p.causal,
        window: p.window.map(|w| w.min(i64::MAX as usize) as i64),
        alibi,
        bias,
        ramp: std::array::from_fn(|j| S::T::from_f64(j as f64)),
    }
}

/// ALiBi slopes as the compute type.
fn alibi_of<S: Io + WithDType>(p: &AttentionParams) -> Result<Option<Vec<S::T>>> {
    p.alibi_slopes
        .as_ref()
        .map(|t| {
            let g = t.storage();
            Ok(super::gather(elems::<S>(&**g, t, "attention")?, t.layout()))
        })
        .transpose()
}

fn attention_typed<S: Io + WithDType>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &AttentionParams,
) -> Result<(Tensor, Tensor)> {
    let geo = Geom::new(q, k, v);
    let (gq, gk, gv) = (q.storage(), k.storage(), v.storage());
    let qd = elems::<S>(&**gq, q, "attention")?;
    let kd = elems::<S>(&**gk, k, "attention")?;
    let vd = elems::<S>(&**gv, v, "attention")?;
    let gb = p.bias.as_ref().map(|b| b.storage());
    let bias = match (&p.bias, &gb) {
        (Some(b), Some(g)) => {
            let data = elems::<S>(&***g, b, "attention")?;
            let mut bv = View4::of(b);
            let (c, off) = as_compute(data, bv.off, b.layout().required_len());
            bv.off = off;
            Some((c, bv))
        }
        _ => None,
    };
    let alibi = alibi_of::<S>(p)?;
    let kt = pack_kt(kd, View4::of(k), geo);
    let vview = View4::of(v);
    let vpacked;
    let vsrc = match S::native(vd) {
        Some(vn) if vview.st[3] == 1 => (vn, vview, vview.st[2]),
        _ => {
            vpacked = pack_rows(vd, vview, [geo.b, geo.hkv, geo.lk, geo.dv]);
            let cv = View4 {
                off: 0,
                st: [geo.hkv * geo.lk * geo.dv, geo.lk * geo.dv, geo.dv, 1],
            };
            (&vpacked[..], cv, geo.dv)
        }
    };
    let sh = FwdShared::<S> {
        geo,
        sc: scores_of::<S>(p, geo, alibi, bias.as_ref().map(|(c, v)| (&c[..], *v))),
        scale: S::T::from_f64(p.scale),
        q: qd,
        qv: View4::of(q),
        kt: &kt,
        v: vsrc,
    };

    // Tasks: (batch, kv head, query block of nq positions × g heads, key split).
    let nq = (BQ / geo.g).max(1);
    let nqb = geo.lq.div_ceil(nq);
    let blocks: Vec<(usize, usize, usize, usize)> = (0..geo.b * geo.hkv * nqb)
        .map(|t| {
            let (bh, qb) = (t / nqb, t % nqb);
            let i0 = qb * nq;
            let (lo, hi) = sh.sc.key_range(i0, nq.min(geo.lq - i0));
            let (kb0, kb1) = if lo < hi { (lo / BK, hi.div_ceil(BK)) } else { (0, 0) };
            (bh, qb, kb0, kb1)
        })
        .collect();
    let max_blocks = blocks.iter().map(|t| t.3 - t.2).max().unwrap_or(0);
    let splits = key_splits(blocks.len(), max_blocks);
    let parts: Vec<Partial<S::T>> = (0..blocks.len() * splits)
        .into_par_iter()
        .map(|t| {
            let (bh, qb, kb0, kb1) = blocks[t / splits];
            let sp = t % splits;
            let n = kb1 - kb0;
            let i0 = qb * nq;
            dispatch(FwdTask {
                sh: &sh,
                b: bh / geo.hkv,
                hk: bh % geo.hkv,
                i0,
                nq: nq.min(geo.lq - i0),
                kb0: kb0 + n * sp / splits,
                kb1: kb0 + n * (sp + 1) / splits,
            })
        })
        .collect();

    // Merge the key splits, normalise, and scatter rows to [B, Hq, Lq, ·].
    let (dv, lq, g) = (geo.dv, geo.lq, geo.g);
    let mut out = vec![S::default(); geo.b * geo.hq * lq * dv];
    let mut lse = vec![S::default(); geo.b * geo.hq * lq];
    let nbh = geo.b * geo.hkv;
    split_n(&mut out, nbh)
        .into_par_iter()
        .zip(split_n(&mut lse, nbh))
        .enumerate()
        .for_each(|(bh, (out, lse))| {
            let mut acc = vec![S::T::ZERO; dv];
            for qb in 0..nqb {
                let i0 = qb * nq;
                let n = nq.min(lq - i0);
                let ps = &parts[(bh * nqb + qb) * splits..][..splits];
                for hh in 0..g {
                    for r in 0..n {
                        let row = hh * n + r;
                        let m = ps.iter().fold(S::T::NEG_INF, |a, p| a.max(p.m[row]));
                        let dst = &mut out[(hh * lq + i0 + r) * dv..][..dv];
                        if m == S::T::NEG_INF {
                            // Every key masked: output 0 and log-sum-exp −inf.
                            dst.fill(S::store(S::T::ZERO));
                            lse[hh * lq + i0 + r] = S::store(S::T::NEG_INF);
                            continue;
                        }
                        acc.fill(S::T::ZERO);
                        let mut l = S::T::ZERO;
                        for p in ps {
                            if p.m[row] == S::T::NEG_INF {
                                continue;
                            }
                            let w = (p.m[row] - m).exp();
                            l += p.l[row] * w;
                            for (a, &x) in acc.iter_mut().zip(&p.o[row * dv..][..dv]) {
                                *a += x * w;
                            }
                        }
                        let inv = S::T::ONE / l;
                        for (o, &a) in dst.iter_mut().zip(&acc) {
                            *o = S::store(a * inv);
                        }
                        lse[hh * lq + i0 + r] = S::store(m + l.ln());
                    }
                }
            }
        });
    let dims = [geo.b, geo.hq, geo.lq, geo.dv];
    Ok((
        tensor_of(out, dims.to_vec(), q)?,
        tensor_of(lse, vec![geo.b, geo.hq, geo.lq], q)?,
    ))
}

/// Scaled-dot-product attention forward (see `tensor_core::AttentionParams`): the output
/// `[B, Hq, Lq, Dv]` and the log-sum-exp of each row `[B, Hq, Lq]` (dtype of `q`).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &AttentionParams,
) -> Result<(Tensor, Tensor)> {
    if !shapes_ok(q, k, v, p) {
        return composite::attention(q, k, v, p);
    }
    match q.dtype() {
        DType::F32 => attention_typed::<f32>(q, k, v, p),
        DType::F64 => attention_typed::<f64>(q, k, v, p),
        DType::F16 => attention_typed::<f16>(q, k, v, p),
        DType::BF16 => attention_typed::<bf16>(q, k, v, p),
        _ => composite::attention(q, k, v, p),
    }
}

/// The preconditions core validates; anything else goes to the composite, which errors.
fn shapes_ok(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams) -> bool {
    let dt = q.dtype();
    let same = |t: &Tensor| t.dtype() == dt;
    q.rank() == 4
        && k.rank() == 4
        && v.rank() == 4
        && same(k)
        && same(v)
        && k.dims()[0] == q.dims()[0]
        && v.dims()[0] == q.dims()[0]
        && k.dims()[1] == v.dims()[1]
        && k.dims()[1] > 0
        && q.dims()[1].is_multiple_of(k.dims()[1])
        && k.dims()[2] == v.dims()[2]
        && k.dims()[3] == q.dims()[3]
        && p.window != Some(0)
        && p
            .alibi_slopes
            .as_ref()
            .is_none_or(|s| s.dims() == [q.dims()[1]] && same(s))
        && p.bias.as_ref().is_none_or(|b| {
            let full = [q.dims()[0], q.dims()[1], q.dims()[2], k.dims()[2]];
            let bd = b.dims();
            same(b)
                && bd.len() <= 4
                && bd
                    .iter()
                    .rev()
                    .zip(full.iter().rev())
                    .all(|(&x, &y)| x == y || x == 1)
        })
}

// ---- backward -----------------------------------------------------------------------------

/// Read-only inputs of the backward tasks, in the compute type.
struct BwdShared<'a, T> {
    geo: Geom,
    sc: Scores<'a, T>,
    scale: T,
    /// Scaled queries `[B, Hq, Lq, D]`.
    qs: Vec<T>,
    /// Output gradient `[B, Hq, Lq, Dv]`.
    go: Vec<T>,
    /// `rowsum(dO ∘ O)` `[B, Hq, Lq]`.
    dsum: Vec<T>,
    /// Log-sum-exp with non-finite values replaced by 0 (as the composite's `probs`).
    lse: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
}

/// Gradients for one (batch, kv head): `dq` of its `g` query heads, `dk`, `dv`.
struct BwdTask<'s, 'a, T> {
    sh: &'s BwdShared<'a, T>,
    b: usize,
    hk: usize,
    dq: &'s mut [T],
    dk: &'s mut [T],
    dv: &'s mut [T],
}

impl<T: Float> Kernel for BwdTask<'_, '_, T> {
    type Out = ();

    #[inline(always)]
    fn run<M: Madd>(self) {
        let sh = self.sh;
        let Geom {
            d,
            dv,
            g,
            lq,
            lk,
            hq,
            hkv,
            ..
        } = sh.geo;
        let b = self.b;
        let bkv = b * hkv + self.hk;
        let kh = &sh.k[bkv * lk * d..][..lk * d];
        let vh = &sh.v[bkv * lk * dv..][..lk * dv];
        let mut kt = vec![T::ZERO; d * BK];
        let mut vt = vec![T::ZERO; dv * BK];
        let mut dkb = vec![T::ZERO; BK * d];
        let mut dvb = vec![T::ZERO; BK * dv];
        let mut s = vec![T::ZERO; BQ * BK];
        let mut dp = vec![T::ZERO; BQ * BK];
        let mut tr = vec![T::ZERO; BK * BQ];
        for kb in 0..sh.geo.nkb {
            let j0 = kb * BK;
            let nv = BK.min(lk - j0);
            transpose(nv, d, &kh[j0 * d..], d, &mut kt, BK);
            transpose(nv, dv, &vh[j0 * dv..], dv, &mut vt, BK);
            dkb.fill(T::ZERO);
            dvb.fill(T::ZERO);
            for hh in 0..g {
                let h = self.hk * g + hh;
                let row0 = (b * hq + h) * lq;
                for i0 in (0..lq).step_by(BQ) {
                    let m = BQ.min(lq - i0);
                    let (lo, hi) = sh.sc.key_range(i0, m);
                    if lo >= j0 + nv || hi <= j0 {
                        continue;
                    }
                    let masked = !sh.sc.all_visible(i0, m, j0, j0 + nv);
                    let qb = &sh.qs[(row0 + i0) * d..][..m * d];
                    let gb = &sh.go[(row0 + i0) * dv..][..m * dv];
                    // P = exp(S − lse)
                    let s = &mut s[..m * BK];
                    gemm::<T, M>(m, BK, d, Mat { data: qb, ld: d }, Mat { data: &kt, ld: BK }, s, BK, false);
                    for (r, sr) in s.chunks_exact_mut(BK).enumerate() {
                        sh.sc.finish_row(sr, b, h, i0 + r, j0, nv, masked);
                        let shift = sh.lse[row0 + i0 + r];
                        for x in sr.iter_mut() {
                            *x = (*x - shift).exp();
                        }
                    }
                    // dV += Pᵀ dO
                    transpose(m, nv, s, BK, &mut tr, m);
                    gemm::<T, M>(nv, dv, m, Mat { data: &tr, ld: m }, Mat { data: gb, ld: dv }, &mut dvb, dv, true);
                    // dP = dO Vᵀ, then dS = P ∘ (dP − D) in place of P
                    let dp = &mut dp[..m * BK];
                    gemm::<T, M>(m, BK, dv, Mat { data: gb, ld: dv }, Mat { data: &vt, ld: BK }, dp, BK, false);
                    for (r, (sr, dr)) in s.chunks_exact_mut(BK).zip(dp.chunks_exact(BK)).enumerate() {
                        let dd = sh.dsum[row0 + i0 + r];
                        for (x, &y) in sr.iter_mut().zip(dr) {
                            *x = *x * (y - dd);
                        }
                    }
                    // dK += dSᵀ Q·scale, dQ += dS K (scaled at the end)
                    transpose(m, nv, s, BK, &mut tr, m);
                    gemm::<T, M>(nv, d, m, Mat { data: &tr, ld: m }, Mat { data: qb, ld: d }, &mut dkb, d, true);
                    let dqb = &mut self.dq[(hh * lq + i0) * d..][..m * d];
                    gemm::<T, M>(m, d, nv, Mat { data: s, ld: BK }, Mat { data: &kh[j0 * d..], ld: d }, dqb, d, true);
                }
            }
            self.dk[j0 * d..][..nv * d].copy_from_slice(&dkb[..nv * d]);
            self.dv[j0 * dv..][..nv * dv].copy_from_slice(&dvb[..nv * dv]);
        }
        math::scale(self.dq, sh.scale * sh.scale);
    }
}

#[allow(clippy::too_many_arguments)]
fn attention_backward_typed<S: Io + WithDType>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    grad_out: &Tensor,
    p: &AttentionParams,
) -> Result<(Tensor, Tensor, Tensor)> {
    let geo = Geom::new(q, k, v);
    let Geom { b, hq, hkv, lq, lk, d, dv, .. } = geo;
    let scale = S::T::from_f64(p.scale);
    let (qs, go, dsum, lsev, kc, vc) = {
        let (gq, gk, gv) = (q.storage(), k.storage(), v.storage());
        let (go_, gl, gg) = (out.storage(), lse.storage(), grad_out.storage());
        let op = "attention_backward";
        let mut qs = pack_rows(elems::<S>(&**gq, q, op)?, View4::of(q), [b, hq, lq, d]);
        math::scale(&mut qs, scale);
        let gov = pack_rows(elems::<S>(&**gg, grad_out, op)?, View4::of(grad_out), [b, hq, lq, dv]);
        let o = pack_rows(elems::<S>(&**go_, out, op)?, View4::of(out), [b, hq, lq, dv]);
        let dsum: Vec<S::T> = if dv == 0 {
            vec![S::T::ZERO; b * hq * lq]
        } else {
            gov.chunks_exact(dv)
                .zip(o.chunks_exact(dv))
                .map(|(x, y)| x.iter().zip(y).fold(S::T::ZERO, |a, (&x, &y)| a + x * y))
                .collect()
        };
        let lsev: Vec<S::T> = super::gather(elems::<S>(&**gl, lse, op)?, lse.layout())
            .into_iter()
            .map(|x| if (x - x) == S::T::ZERO { x } else { S::T::ZERO })
            .collect();
        let kc = pack_rows(elems::<S>(&**gk, k, op)?, View4::of(k), [b, hkv, lk, d]);
        let vc = pack_rows(elems::<S>(&**gv, v, op)?, View4::of(v), [b, hkv, lk, dv]);
        (qs, gov, dsum, lsev, kc, vc)
    };
    let gb = p.bias.as_ref().map(|b| b.storage());
    let bias = match (&p.bias, &gb) {
        (Some(bt), Some(g)) => {
            let data = elems::<S>(&***g, bt, "attention_backward")?;
            let mut bv = View4::of(bt);
            let (c, off) = as_compute(data, bv.off, bt.layout().required_len());
            bv.off = off;
            Some((c, bv))
        }
        _ => None,
    };
    let alibi = alibi_of::<S>(p)?;
    let sh = BwdShared {
        geo,
        sc: scores_of::<S>(p, geo, alibi, bias.as_ref().map(|(c, v)| (&c[..], *v))),
        scale,
        qs,
        go,
        dsum,
        lse: lsev,
        k: kc,
        v: vc,
    };
    let mut dq = vec![S::T::ZERO; b * hq * lq * d];
    let mut dk = vec![S::T::ZERO; b * hkv * lk * d];
    let mut dvv = vec![S::T::ZERO; b * hkv * lk * dv];
    let nbh = b * hkv;
    split_n(&mut dq, nbh)
        .into_par_iter()
        .zip(split_n(&mut dk, nbh))
        .zip(split_n(&mut dvv, nbh))
        .enumerate()
        .for_each(|(bkv, ((dq, dk), dv_))| {
            dispatch(BwdTask {
                sh: &sh,
                b: bkv / hkv,
                hk: bkv % hkv,
                dq,
                dk,
                dv: dv_,
            })
        });
    let conv = |v: Vec<S::T>| -> Vec<S> { v.into_iter().map(S::store).collect() };
    Ok((
        tensor_of(conv(dq), vec![b, hq, lq, d], q)?,
        tensor_of(conv(dk), vec![b, hkv, lk, d], q)?,
        tensor_of(conv(dvv), vec![b, hkv, lk, dv], q)?,
    ))
}

/// Gradients of [`attention`] with respect to q, k and v, recomputed block by block from the
/// saved log-sum-exp (FlashAttention-2).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    grad_out: &Tensor,
    p: &AttentionParams,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dt = q.dtype();
    let ok = shapes_ok(q, k, v, p)
        && [out, lse, grad_out].iter().all(|t| t.dtype() == dt)
        && out.dims() == [q.dims()[0], q.dims()[1], q.dims()[2], v.dims()[3]]
        && grad_out.dims() == out.dims()
        && lse.dims() == &q.dims()[..3];
    if !ok {
        return composite::attention_backward(q, k, v, out, lse, grad_out, p);
    }
    match dt {
        DType::F32 => attention_backward_typed::<f32>(q, k, v, out, lse, grad_out, p),
        DType::F64 => attention_backward_typed::<f64>(q, k, v, out, lse, grad_out, p),
        DType::F16 => attention_backward_typed::<f16>(q, k, v, out, lse, grad_out, p),
        DType::BF16 => attention_backward_typed::<bf16>(q, k, v, out, lse, grad_out, p),
        _ => composite::attention_backward(q, k, v, out, lse, grad_out, p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests::{assert_close, dev, rnd, tol};

    /// One attention configuration: shapes, masking and how the inputs are laid out.
    #[derive(Clone)]
    struct Case {
        b: usize,
        hq: usize,
        hkv: usize,
        lq: usize,
        lk: usize,
        d: usize,
        dv: usize,
        causal: bool,
        window: Option<usize>,
        alibi: bool,
        /// Bias shape (broadcastable to [B, Hq, Lq, Lk]); entries of −inf mask.
        bias: Option<Vec<usize>>,
        /// Build q, k, v as transposed views (non-contiguous, inner stride ≠ 1 for v).
        strided: bool,
    }

    fn case(b: usize, hq: usize, hkv: usize, lq: usize, lk: usize, d: usize, dv: usize) -> Case {
        Case {
            b,
            hq,
            hkv,
            lq,
            lk,
            d,
            dv,
            causal: false,
            window: None,
            alibi: false,
            bias: None,
            strided: false,
        }
    }

    struct Inputs {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        go: Tensor,
        p: AttentionParams,
    }

    fn inputs(c: &Case, dt: DType, seed: u64) -> Inputs {
        let (q, k, v) = if c.strided {
            (
                rnd(&[c.b, c.lq, c.hq, c.d], dt, seed, 1.5).transpose(1, 2).unwrap(),
                rnd(&[c.b, c.lk, c.hkv, c.d], dt, seed + 1, 1.5).transpose(1, 2).unwrap(),
                // [B, Hkv, Dv, Lk] viewed as [B, Hkv, Lk, Dv]: inner stride Lk.
                rnd(&[c.b, c.hkv, c.dv, c.lk], dt, seed + 2, 1.0).transpose(2, 3).unwrap(),
            )
        } else {
            (
                rnd(&[c.b, c.hq, c.lq, c.d], dt, seed, 1.5),
                rnd(&[c.b, c.hkv, c.lk, c.d], dt, seed + 1, 1.5),
                rnd(&[c.b, c.hkv, c.lk, c.dv], dt, seed + 2, 1.0),
            )
        };
        let bias = c.bias.as_ref().map(|dims| {
            let n: usize = dims.iter().product();
            let mut v: Vec<f64> = crate::test_util::noise(n, seed + 3);
            // Mask about one entry in eight, and the whole first row of the last two dims
            // when they are both present (a fully-masked query row).
            for x in v.iter_mut() {
                if *x > 0.75 {
                    *x = f64::NEG_INFINITY;
                }
            }
            if dims.len() >= 2 && dims[dims.len() - 2] > 1 {
                let lk = dims[dims.len() - 1];
                for row in v.chunks_mut(lk * dims[dims.len() - 2]) {
                    row[..lk].fill(f64::NEG_INFINITY);
                }
            }
            Tensor::from_f64s(&v, dims.clone(), dt, &dev()).unwrap()
        });
        let alibi = c.alibi.then(|| {
            let s: Vec<f64> = (0..c.hq).map(|h| 0.5f64.powi(h as i32 + 1)).collect();
            Tensor::from_f64s(&s, c.hq, dt, &dev()).unwrap()
        });
        Inputs {
            go: rnd(&[c.b, c.hq, c.lq, c.dv], dt, seed + 4, 1.0),
            q,
            k,
            v,
            p: AttentionParams {
                scale: 1.0 / (c.d as f64).sqrt(),
                causal: c.causal,
                window: c.window,
                alibi_slopes: alibi,
                bias,
            },
        }
    }

    /// Reference forward and backward: the composite, in f32 for the half types (the
    /// composite itself would round every intermediate to 16 bits).
    #[allow(clippy::type_complexity)]
    fn reference(i: &Inputs) -> ((Tensor, Tensor), (Tensor, Tensor, Tensor)) {
        let dt = i.q.dtype();
        let up = |t: &Tensor| match dt {
            DType::F16 | DType::BF16 => t.to_dtype(DType::F32).unwrap(),
            _ => t.clone(),
        };
        let down = |t: Tensor| t.to_dtype(dt).unwrap();
        let p = AttentionParams {
            scale: i.p.scale,
            causal: i.p.causal,
            window: i.p.window,
            alibi_slopes: i.p.alibi_slopes.as_ref().map(up),
            bias: i.p.bias.as_ref().map(up),
        };
        let (q, k, v, go) = (up(&i.q), up(&i.k), up(&i.v), up(&i.go));
        let (o, lse) = composite::attention(&q, &k, &v, &p).unwrap();
        let (dq, dk, dv) = composite::attention_backward(&q, &k, &v, &o, &lse, &go, &p).unwrap();
        ((down(o), down(lse)), (down(dq), down(dk), down(dv)))
    }

    fn check(c: &Case, what: &str) {
        for (n, dt) in [DType::F32, DType::F64, DType::F16, DType::BF16].into_iter().enumerate() {
            let i = inputs(c, dt, 100 + n as u64);
            let ((ro, rl), (rdq, rdk, rdv)) = reference(&i);
            let (o, lse) = attention(&i.q, &i.k, &i.v, &i.p).unwrap();
            let t = tol(dt);
            assert_close(&o, &ro, t, &format!("{what} {dt} out"));
            assert_close(&lse, &rl, t, &format!("{what} {dt} lse"));
            // Backward from the reference forward, so that only the backward is under test.
            let (dq, dk, dv) = attention_backward(&i.q, &i.k, &i.v, &ro, &rl, &i.go, &i.p).unwrap();
            // Gradients sum over many terms: allow a little more for them.
            let gt = if t < 1e-4 { t * 10.0 } else { t * 2.0 };
            assert_close(&dq, &rdq, gt, &format!("{what} {dt} dq"));
            assert_close(&dk, &rdk, gt, &format!("{what} {dt} dk"));
            assert_close(&dv, &rdv, gt, &format!("{what} {dt} dv"));
        }
    }

    #[test]
    fn plain_gqa_and_dv_ne_d() {
        check(&case(2, 4, 2, 70, 70, 16, 24), "gqa");
        check(&case(1, 2, 2, 5, 130, 8, 8), "mha short q");
        check(&case(1, 8, 1, 40, 64, 32, 20), "mqa");
    }

    #[test]
    fn causal_with_kv_cache_alignment() {
        check(&Case { causal: true, ..case(1, 4, 2, 37, 150, 16, 16) }, "causal lq<lk");
        check(&Case { causal: true, ..case(2, 2, 1, 130, 130, 8, 12) }, "causal square");
    }

    #[test]
    fn sliding_window() {
        check(&Case { window: Some(9), ..case(1, 2, 2, 70, 90, 8, 8) }, "window");
        check(&Case { window: Some(20), causal: true, ..case(1, 2, 1, 100, 100, 8, 8) }, "window causal");
        // More queries than keys (negative positions), non-causal.
        check(&Case { window: Some(4), ..case(1, 1, 1, 12, 5, 4, 4) }, "window lq>lk");
    }

    #[test]
    fn alibi_and_broadcast_bias() {
        check(&Case { alibi: true, causal: true, ..case(1, 4, 2, 33, 80, 8, 8) }, "alibi");
        // Padding mask [B, 1, 1, Lk].
        check(&Case { bias: Some(vec![2, 1, 1, 75]), ..case(2, 2, 1, 20, 75, 8, 8) }, "bias b11k");
        // [Lq, Lk] (rank 2, with a fully masked first row) plus ALiBi.
        check(&Case { bias: Some(vec![20, 75]), alibi: true, ..case(2, 2, 2, 20, 75, 8, 8) }, "bias qk");
        // Per head, broadcast over queries.
        check(&Case { bias: Some(vec![1, 4, 1, 66]), causal: true, ..case(1, 4, 2, 10, 66, 8, 8) }, "bias 1h1k");
        // Full [B, Hq, Lq, Lk] with fully-masked rows.
        check(&Case { bias: Some(vec![1, 2, 9, 70]), ..case(1, 2, 1, 9, 70, 8, 8) }, "bias full");
    }

    #[test]
    fn fully_masked_rows_give_zero_and_neg_inf() {
        // Window 1 non-causal with Lq > Lk: queries before position 0 see no key at all.
        let c = Case { window: Some(1), ..case(1, 1, 1, 8, 3, 4, 4) };
        check(&c, "masked rows");
        let i = inputs(&c, DType::F32, 1);
        let (o, lse) = attention(&i.q, &i.k, &i.v, &i.p).unwrap();
        let (o, lse) = (o.to_f64_vec().unwrap(), lse.to_f64_vec().unwrap());
        assert_eq!(lse[0], f64::NEG_INFINITY);
        assert!(o[..4].iter().all(|&x| x == 0.0));
        assert!(lse[7].is_finite());
    }

    #[test]
    fn strided_inputs() {
        check(&Case { strided: true, causal: true, ..case(2, 4, 2, 30, 70, 16, 8) }, "strided");
        check(&Case { strided: true, bias: Some(vec![2, 1, 30, 1]), ..case(2, 2, 2, 30, 70, 8, 8) }, "strided bias");
    }

    #[test]
    fn decode_with_split_keys() {
        // One query per head against a long cache: few tasks, so the key range is split.
        let c = Case { causal: true, ..case(1, 4, 2, 1, 700, 16, 16) };
        assert!(key_splits(2, 11) > 1);
        check(&c, "decode");
        check(&Case { window: Some(300), alibi: true, ..c.clone() }, "decode window alibi");
    }

    #[test]
    fn split_helpers() {
        let mut v = [1, 2, 3, 4, 5, 6];
        let parts = split_n(&mut v, 3);
        assert_eq!(parts.len(), 3);
        assert_eq!(&*parts[1], &[3, 4]);
        let mut e: [i32; 0] = [];
        assert_eq!(split_n(&mut e, 4).len(), 4);
        assert_eq!(key_splits(64, 100), 1);
        assert_eq!(key_splits(1, 3), 1);
    }
}
