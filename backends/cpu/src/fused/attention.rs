//! Flash-style attention on the CPU: forward with an online softmax over key blocks, and the
//! FlashAttention-2 backward that recomputes probabilities from the saved log-sum-exp. The
//! `[Lq, Lk]` score matrix (and a broadcast bias) is never materialised: work happens on
//! `BK × BQ` blocks that stay in cache, through the small products of [`super::tile`].
//!
//! Blocks hold scores transposed, `Sᵀ = K · Qᵀ` (keys down, queries across), so every
//! softmax reduction (row max, row sum, rescaling) runs down the columns as plain vector
//! operations with no horizontal reductions, and K is read in place, whatever its strides.
//! The products that need `S` rather than `Sᵀ` read it through strides ([`AMat`]).
//!
//! Forward tasks are (batch, kv head, query block), holding the query rows of every head that
//! shares the kv head (GQA), so each key/value block is read once for the whole group. When
//! there are too few tasks to fill the threads (decoding), the key range is also split and
//! the partial softmax states are merged afterwards (flash-decoding). Backward tasks are
//! (batch, kv head, key range): each owns its dK/dV rows and returns a partial dQ for its
//! query heads, summed afterwards, so no write is shared.

use std::borrow::Cow;

use half::{bf16, f16};
use rayon::prelude::*;
use tensor_core::{composite, AttentionParams, DType, Result, Tensor, WithDType};

use super::math::{self, dispatch, Float, Io, Kernel, Simd};
use super::tile::{dot, gemm, AMat, Mat};
use super::{elems, tensor_of};

/// Query rows per task (summed over the heads of a GQA group).
const BQ: usize = 64;
/// Below this many query rows a task computes its scores as dot products (decoding), which
/// vectorise along the head dim, instead of as a product tiled across the query rows.
const NARROW: usize = 8;
/// Keys per block.
const BK: usize = 64;
/// Key blocks a split of the key range covers at least.
const MIN_SPLIT_BLOCKS: usize = 4;
/// Tasks wanted before the key range is split. Fixed (not the thread count) so that results
/// do not depend on the machine.
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
        View4 {
            off: l.offset(),
            st,
        }
    }

    /// A contiguous `[_, h, l, d]` buffer.
    fn contiguous(h: usize, l: usize, d: usize) -> View4 {
        View4 {
            off: 0,
            st: [h * l * d, l * d, d, 1],
        }
    }

    #[inline(always)]
    fn row(&self, a: usize, b: usize, c: usize) -> usize {
        self.off + a * self.st[0] + b * self.st[1] + c * self.st[2]
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
}

/// Per query row (one column of a transposed score block): what the scores need.
#[derive(Default)]
struct Cols<T> {
    /// Absolute position, as the compute type (ALiBi).
    pos: Vec<T>,
    slope: Vec<T>,
    /// Bias offset of key 0.
    boff: Vec<usize>,
    /// Visible keys `[lo, hi)`.
    lo: Vec<usize>,
    hi: Vec<usize>,
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
    fn key_range(&self, i0: usize, n: usize) -> (usize, usize) {
        if n == 0 {
            return (0, 0);
        }
        self.visible(self.pos(i0), self.pos(i0 + n - 1))
    }

    /// Whether every key in `j0..j1` is visible to every query row in `i0..i0+n`.
    fn all_visible(&self, i0: usize, n: usize, j0: usize, j1: usize) -> bool {
        let (p0, p1) = (self.pos(i0), self.pos(i0 + n - 1));
        let (j0, j1) = (j0 as i64, j1 as i64 - 1);
        (!self.causal || j1 <= p0) && self.window.is_none_or(|w| p1 - j0 < w && j1 - p0 < w)
    }

    /// Column data for query rows `(h, i)` of batch `b`.
    fn cols(&self, b: usize, rows: impl Iterator<Item = (usize, usize)>) -> Cols<T> {
        let mut c = Cols::default();
        for (h, i) in rows {
            let p = self.pos(i);
            let (lo, hi) = self.visible(p, p);
            c.pos.push(T::from_f64(p as f64));
            c.slope.push(self.alibi.as_ref().map_or(T::ZERO, |a| a[h]));
            c.boff
                .push(self.bias.as_ref().map_or(0, |(_, bv)| bv.row(b, h, i)));
            c.lo.push(lo);
            c.hi.push(hi);
        }
        c
    }

    /// Add ALiBi and bias to a transposed block of raw scores (`st[j·ld + r]` for key
    /// `j0 + j`, `j < nv`, and query column `r` = row `c0 + r` of `c`, `r < ld`), then set
    /// masked entries to −inf.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        c: &Cols<T>,
        c0: usize,
        st: &mut [T],
        ld: usize,
        j0: usize,
        nv: usize,
        masked: bool,
    ) {
        let cr = c0..c0 + ld;
        for (j, row) in st.chunks_exact_mut(ld).take(nv).enumerate() {
            let jj = j0 + j;
            if self.alibi.is_some() {
                let jf = T::from_f64(jj as f64);
                for ((x, &s), &p) in row
                    .iter_mut()
                    .zip(&c.slope[cr.clone()])
                    .zip(&c.pos[cr.clone()])
                {
                    *x += s * (jf - p);
                }
            }
            if let Some((bd, bv)) = &self.bias {
                let o = jj * bv.st[3];
                for (x, &bo) in row.iter_mut().zip(&c.boff[cr.clone()]) {
                    *x += bd[bo + o];
                }
            }
            if masked {
                for ((x, &lo), &hi) in row.iter_mut().zip(&c.lo[cr.clone()]).zip(&c.hi[cr.clone()])
                {
                    if jj < lo || jj >= hi {
                        *x = T::NEG_INF;
                    }
                }
            }
        }
    }
}

/// Elements of `data` as the compute type: borrowed when they already are, else converted
/// (only the span `[off, end)` a view reaches; offsets into it shift by `off`).
fn as_compute<S: Io>(data: &[S], off: usize, end: usize) -> (Cow<'_, [S::T]>, usize) {
    match S::native(data) {
        Some(d) => (Cow::Borrowed(d), off),
        None => (
            Cow::Owned(data[off..end.max(off)].iter().map(|x| x.load()).collect()),
            0,
        ),
    }
}

/// A bias in the compute type, with its rank-4 view.
type BiasData<'a, T> = Option<(Cow<'a, [T]>, View4)>;

/// The bias as the compute type with its rank-4 view.
fn bias_of<'a, S: Io + WithDType>(
    p: &AttentionParams,
    g: Option<&'a dyn tensor_core::BackendStorage>,
) -> Result<BiasData<'a, S::T>> {
    match (&p.bias, g) {
        (Some(b), Some(g)) => {
            let data = elems::<S>(g, b, "attention")?;
            let mut bv = View4::of(b);
            let (c, off) = as_compute(data, bv.off, b.layout().required_len());
            bv.off = off;
            Ok(Some((c, bv)))
        }
        _ => Ok(None),
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

fn scores_of<'a, T: Float>(
    p: &AttentionParams,
    geo: Geom,
    alibi: Option<Vec<T>>,
    bias: Option<(&'a [T], View4)>,
) -> Scores<'a, T> {
    Scores {
        lq: geo.lq,
        lk: geo.lk,
        causal: p.causal,
        window: p.window.map(|w| w.min(i64::MAX as usize) as i64),
        alibi,
        bias,
    }
}

/// Contiguous compute-type copy of a `[B, H, L, D]` view.
fn pack_rows<S: Io>(x: &[S], xv: View4, dims: [usize; 4]) -> Vec<S::T> {
    let [_, h, l, d] = dims;
    let mut out = vec![S::T::ZERO; dims.iter().product()];
    if out.is_empty() {
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

/// Compute-type copy of a `[B, H, L, D]` view transposed per (batch, head): `[B·H][D][L]`,
/// multiplied by `scale`.
fn pack_transposed<S: Io>(x: &[S], xv: View4, dims: [usize; 4], scale: S::T) -> Vec<S::T> {
    let [_, h, l, d] = dims;
    let mut out = vec![S::T::ZERO; dims.iter().product()];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(l * d).enumerate().for_each(|(bh, o)| {
        let (b, hh) = (bh / h, bh % h);
        for i in 0..l {
            let base = xv.row(b, hh, i);
            for c in 0..d {
                o[c * l + i] = x[base + c * xv.st[3]].load() * scale;
            }
        }
    });
    out
}

/// A view usable in place as rows of the compute type (`S` native, inner stride 1), or a
/// packed contiguous copy.
fn rows_of<'a, S: Io>(
    x: &'a [S],
    xv: View4,
    dims: [usize; 4],
    need_unit: bool,
) -> (Cow<'a, [S::T]>, View4) {
    match S::native(x) {
        Some(n) if !need_unit || xv.st[3] == 1 || dims[3] <= 1 => (Cow::Borrowed(n), xv),
        _ => (
            Cow::Owned(pack_rows(x, xv, dims)),
            View4::contiguous(dims[1], dims[2], dims[3]),
        ),
    }
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

/// How many parts to split each task's key range into so that there are enough tasks.
fn key_splits(tasks: usize, blocks: usize) -> usize {
    if tasks == 0 || tasks >= TARGET_TASKS || blocks < 2 * MIN_SPLIT_BLOCKS {
        return 1;
    }
    TARGET_TASKS
        .div_ceil(tasks)
        .min(blocks / MIN_SPLIT_BLOCKS)
        .max(1)
}

// ---- forward ------------------------------------------------------------------------------

/// Read-only inputs shared by the forward tasks.
struct FwdShared<'a, S: Io> {
    geo: Geom,
    sc: Scores<'a, S::T>,
    scale: S::T,
    q: &'a [S],
    qv: View4,
    k: (&'a [S::T], View4),
    /// Inner stride 1.
    v: (&'a [S::T], View4),
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

/// Partial softmax state of a block of query rows (row `hh · nq + r` is head `hk·g + hh`,
/// position `i0 + r`).
struct Partial<T> {
    o: Vec<T>,
    m: Vec<T>,
    l: Vec<T>,
}

impl<S: Io> Kernel for FwdTask<'_, '_, S> {
    type Out = Partial<S::T>;

    #[inline(always)]
    fn run<M: Simd>(self, simd: M) -> Partial<S::T> {
        let sh = self.sh;
        let Geom { d, dv, g, .. } = sh.geo;
        let (b, nq, i0, hk) = (self.b, self.nq, self.i0, self.hk);
        let n = g * nq;
        // Scaled queries as rows (narrow tasks) or transposed, qt[c·n + row].
        let mut qrows = vec![S::T::ZERO; d * n];
        for row in 0..n {
            let base = sh.qv.row(b, hk * g + row / nq, i0 + row % nq);
            for c in 0..d {
                qrows[row * d + c] = sh.q[base + c * sh.qv.st[3]].load() * sh.scale;
            }
        }
        let mut qt = vec![S::T::ZERO; if n < NARROW { 0 } else { d * n }];
        for (row, qr) in qrows
            .chunks_exact(d.max(1))
            .enumerate()
            .take(qt.len().min(n))
        {
            for (c, &x) in qr.iter().enumerate() {
                qt[c * n + row] = x;
            }
        }
        let cols = sh
            .sc
            .cols(b, (0..n).map(|row| (hk * g + row / nq, i0 + row % nq)));
        let mut st = vec![S::T::ZERO; BK * n];
        let mut o = vec![S::T::ZERO; n * dv];
        let mut mx = vec![S::T::NEG_INF; n];
        let mut l = vec![S::T::ZERO; n];
        let mut shift = vec![S::T::ZERO; n];
        let mut alpha = vec![S::T::ZERO; n];
        let (kd, kv) = sh.k;
        let (vd, vv) = sh.v;
        for kb in self.kb0..self.kb1 {
            let j0 = kb * BK;
            let nv = BK.min(sh.geo.lk - j0);
            let st = &mut st[..nv * n];
            let kblk = &kd[kv.row(b, hk, j0)..];
            if n < NARROW {
                // Sᵀ[j][r] = K[j] · Q[r], both rows contiguous along the head dim.
                for (j, srow) in st.chunks_exact_mut(n).enumerate() {
                    for (r, x) in srow.iter_mut().enumerate() {
                        *x = dot::<S::T, M>(kblk, j * kv.st[2], kv.st[3], &qrows, r * d, 1, d);
                    }
                }
            } else {
                let ka = AMat {
                    data: kblk,
                    rs: kv.st[2],
                    cs: kv.st[3],
                };
                gemm::<S::T, M>(simd, nv, n, d, ka, Mat { data: &qt, ld: n }, st, n, false);
            }
            let masked = !sh.sc.all_visible(i0, nq, j0, j0 + nv);
            sh.sc.finish(&cols, 0, st, n, j0, nv, masked);
            // Online softmax, down the columns.
            shift.fill(S::T::NEG_INF);
            for row in st.chunks_exact(n) {
                for (m, &x) in shift.iter_mut().zip(row) {
                    *m = m.max(x);
                }
            }
            for (((m, sf), a), li) in mx.iter_mut().zip(&mut shift).zip(&mut alpha).zip(&mut l) {
                let m_new = m.max(*sf);
                // Nothing visible yet: shift by 0 so that exp(−inf − shift) is 0, not NaN.
                *sf = if m_new == S::T::NEG_INF {
                    S::T::ZERO
                } else {
                    m_new
                };
                *a = (*m - *sf).exp::<M>();
                *m = m_new;
                *li = *li * *a;
            }
            for row in st.chunks_exact_mut(n) {
                for ((x, &sf), li) in row.iter_mut().zip(&shift).zip(&mut l) {
                    let e = (*x - sf).exp::<M>();
                    *x = e;
                    *li += e;
                }
            }
            for (orow, &a) in o.chunks_exact_mut(dv.max(1)).zip(&alpha) {
                if a != S::T::ONE {
                    math::scale(orow, a);
                }
            }
            // O += P · V with P(r, j) = st[j·n + r].
            gemm::<S::T, M>(
                simd,
                n,
                dv,
                nv,
                AMat {
                    data: st,
                    rs: 1,
                    cs: n,
                },
                Mat {
                    data: &vd[vv.row(b, hk, j0)..],
                    ld: vv.st[2],
                },
                &mut o,
                dv,
                true,
            );
        }
        Partial { o, m: mx, l }
    }
}

fn attention_typed<S: Io + WithDType>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &AttentionParams,
) -> Result<(Tensor, Tensor)> {
    let geo = Geom::new(q, k, v);
    let Geom {
        b,
        hq,
        hkv,
        g,
        lq,
        lk,
        d,
        dv,
        ..
    } = geo;
    let (gq, gk, gv) = (q.storage(), k.storage(), v.storage());
    let gb = p.bias.as_ref().map(|t| t.storage());
    let qd = elems::<S>(&**gq, q, "attention")?;
    let (kc, kv) = rows_of(
        elems::<S>(&**gk, k, "attention")?,
        View4::of(k),
        [b, hkv, lk, d],
        false,
    );
    let (vc, vv) = rows_of(
        elems::<S>(&**gv, v, "attention")?,
        View4::of(v),
        [b, hkv, lk, dv],
        true,
    );
    let bias = bias_of::<S>(p, gb.as_ref().map(|g| &***g))?;
    let sh = FwdShared::<S> {
        geo,
        sc: scores_of(
            p,
            geo,
            alibi_of::<S>(p)?,
            bias.as_ref().map(|(c, v)| (&c[..], *v)),
        ),
        scale: S::T::from_f64(p.scale),
        q: qd,
        qv: View4::of(q),
        k: (&kc, kv),
        v: (&vc, vv),
    };

    // Tasks: (batch, kv head, query block of nq positions × g heads, key split).
    let nq = (BQ / g).max(1);
    let nqb = lq.div_ceil(nq);
    let blocks: Vec<(usize, usize, usize)> = (0..b * hkv * nqb)
        .map(|t| {
            let i0 = (t % nqb) * nq;
            let (lo, hi) = sh.sc.key_range(i0, nq.min(lq - i0));
            if lo < hi {
                (t, lo / BK, hi.div_ceil(BK))
            } else {
                (t, 0, 0)
            }
        })
        .collect();
    let max_blocks = blocks.iter().map(|t| t.2 - t.1).max().unwrap_or(0);
    let splits = key_splits(blocks.len(), max_blocks);
    let parts: Vec<Partial<S::T>> = (0..blocks.len() * splits)
        .into_par_iter()
        .map(|t| {
            let (bq, kb0, kb1) = blocks[t / splits];
            let (sp, nb) = (t % splits, kb1 - kb0);
            let (bh, i0) = (bq / nqb, (bq % nqb) * nq);
            dispatch(FwdTask {
                sh: &sh,
                b: bh / hkv,
                hk: bh % hkv,
                i0,
                nq: nq.min(lq - i0),
                kb0: kb0 + nb * sp / splits,
                kb1: kb0 + nb * (sp + 1) / splits,
            })
        })
        .collect();

    // Merge the key splits, normalise, and scatter rows to [B, Hq, Lq, ·]; the rows of
    // (batch, kv head) `bh` are one contiguous chunk.
    let mut out = vec![S::default(); b * hq * lq * dv];
    let mut lse = vec![S::default(); b * hq * lq];
    split_n(&mut out, b * hkv)
        .into_par_iter()
        .zip(split_n(&mut lse, b * hkv))
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
                        for p in ps.iter().filter(|p| p.m[row] != S::T::NEG_INF) {
                            let w = (p.m[row] - m).exp::<math::Baseline>();
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
    Ok((
        tensor_of(out, vec![b, hq, lq, dv], q)?,
        tensor_of(lse, vec![b, hq, lq], q)?,
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
    tensor_core::checks::attention(q, k, v, p)?;
    match q.dtype() {
        DType::F32 => attention_typed::<f32>(q, k, v, p),
        DType::F64 => attention_typed::<f64>(q, k, v, p),
        DType::F16 => attention_typed::<f16>(q, k, v, p),
        DType::BF16 => attention_typed::<bf16>(q, k, v, p),
        _ => composite::attention(q, k, v, p),
    }
}

// ---- backward -----------------------------------------------------------------------------

/// Read-only inputs of the backward tasks, in the compute type, contiguous.
struct BwdShared<'a, T> {
    geo: Geom,
    sc: Scores<'a, T>,
    /// Scaled queries `[B, Hq, Lq, D]` and transposed `[B·Hq][D][Lq]`.
    qs: Vec<T>,
    qt: Vec<T>,
    /// Output gradient `[B, Hq, Lq, Dv]` and transposed `[B·Hq][Dv][Lq]`.
    go: Vec<T>,
    got: Vec<T>,
    /// `rowsum(dO ∘ O)`, `[B, Hq, Lq]`.
    dsum: Vec<T>,
    /// Log-sum-exp with non-finite values replaced by 0 (as the composite's `probs`).
    lse: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
}

/// Gradients from key blocks `kb0..kb1` of one (batch, kv head).
struct BwdTask<'s, 'a, T> {
    sh: &'s BwdShared<'a, T>,
    b: usize,
    hk: usize,
    kb0: usize,
    kb1: usize,
}

/// What a backward task returns: dK and dV rows of its key range, and its share of dQ for
/// the `g` query heads (`[g][Lq][D]`, not yet scaled).
struct BwdPart<T> {
    dk: Vec<T>,
    dv: Vec<T>,
    dq: Vec<T>,
}

impl<T: Float> Kernel for BwdTask<'_, '_, T> {
    type Out = BwdPart<T>;

    #[inline(always)]
    fn run<M: Simd>(self, simd: M) -> BwdPart<T> {
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
        let j_lo = self.kb0 * BK;
        let j_hi = (self.kb1 * BK).min(lk);
        let mut out = BwdPart {
            dk: vec![T::ZERO; (j_hi - j_lo) * d],
            dv: vec![T::ZERO; (j_hi - j_lo) * dv],
            dq: vec![T::ZERO; g * lq * d],
        };
        let mut st = [T::ZERO; BK * BQ];
        let mut dp = [T::ZERO; BK * BQ];
        // Column data of every query row of the group: row hh·lq + i.
        let cols = sh
            .sc
            .cols(b, (0..g * lq).map(|r| (self.hk * g + r / lq, r % lq)));
        for kb in self.kb0..self.kb1 {
            let j0 = kb * BK;
            let nv = BK.min(lk - j0);
            let dkb = &mut out.dk[(j0 - j_lo) * d..][..nv * d];
            let dvb = &mut out.dv[(j0 - j_lo) * dv..][..nv * dv];
            let kblk = &kh[j0 * d..];
            for hh in 0..g {
                let h = self.hk * g + hh;
                let bh = b * hq + h;
                let row0 = bh * lq;
                for i0 in (0..lq).step_by(BQ) {
                    let m = BQ.min(lq - i0);
                    let (lo, hi) = sh.sc.key_range(i0, m);
                    if lo >= j0 + nv || hi <= j0 {
                        continue;
                    }
                    let masked = !sh.sc.all_visible(i0, m, j0, j0 + nv);
                    // Pᵀ = exp(Sᵀ − lse), Sᵀ = K · (Q·scale)ᵀ
                    let st = &mut st[..nv * m];
                    let ka = AMat {
                        data: kblk,
                        rs: d,
                        cs: 1,
                    };
                    let qcols = Mat {
                        data: &sh.qt[bh * d * lq + i0..],
                        ld: lq,
                    };
                    gemm::<T, M>(simd, nv, m, d, ka, qcols, st, m, false);
                    sh.sc.finish(&cols, hh * lq + i0, st, m, j0, nv, masked);
                    let lse = &sh.lse[row0 + i0..][..m];
                    for row in st.chunks_exact_mut(m) {
                        for (x, &s) in row.iter_mut().zip(lse) {
                            *x = (*x - s).exp::<M>();
                        }
                    }
                    // dV += Pᵀ · dO
                    let go = Mat {
                        data: &sh.go[(row0 + i0) * dv..],
                        ld: dv,
                    };
                    let pt = AMat {
                        data: &*st,
                        rs: m,
                        cs: 1,
                    };
                    gemm::<T, M>(simd, nv, dv, m, pt, go, dvb, dv, true);
                    // dPᵀ = V · dOᵀ, then dSᵀ = Pᵀ ∘ (dPᵀ − D) in place of Pᵀ
                    let dp = &mut dp[..nv * m];
                    let vb = AMat {
                        data: &vh[j0 * dv..],
                        rs: dv,
                        cs: 1,
                    };
                    let got = Mat {
                        data: &sh.got[bh * dv * lq + i0..],
                        ld: lq,
                    };
                    gemm::<T, M>(simd, nv, m, dv, vb, got, dp, m, false);
                    let dsum = &sh.dsum[row0 + i0..][..m];
                    for (row, drow) in st.chunks_exact_mut(m).zip(dp.chunks_exact(m)) {
                        for ((x, &y), &s) in row.iter_mut().zip(drow).zip(dsum) {
                            *x = *x * (y - s);
                        }
                    }
                    // dK += dSᵀ · Q·scale; dQ += dS · K (dS(r, j) = st[j·m + r])
                    let qs = Mat {
                        data: &sh.qs[(row0 + i0) * d..],
                        ld: d,
                    };
                    let dst = AMat {
                        data: &*st,
                        rs: m,
                        cs: 1,
                    };
                    gemm::<T, M>(simd, nv, d, m, dst, qs, dkb, d, true);
                    let ds = AMat {
                        data: &*st,
                        rs: 1,
                        cs: m,
                    };
                    let kr = Mat { data: kblk, ld: d };
                    let dq = &mut out.dq[(hh * lq + i0) * d..][..m * d];
                    gemm::<T, M>(simd, m, d, nv, ds, kr, dq, d, true);
                }
            }
        }
        out
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
    let op = "attention_backward";
    let geo = Geom::new(q, k, v);
    let Geom {
        b,
        hq,
        hkv,
        lq,
        lk,
        d,
        dv,
        nkb,
        ..
    } = geo;
    let scale = S::T::from_f64(p.scale);
    let gb = p.bias.as_ref().map(|t| t.storage());
    let bias = bias_of::<S>(p, gb.as_ref().map(|g| &***g))?;
    let sh = {
        let (gq, gk, gv) = (q.storage(), k.storage(), v.storage());
        let (go_, gl, gg) = (out.storage(), lse.storage(), grad_out.storage());
        let (qd, gd) = (elems::<S>(&**gq, q, op)?, elems::<S>(&**gg, grad_out, op)?);
        let (qv, gv_) = (View4::of(q), View4::of(grad_out));
        let mut qs = pack_rows(qd, qv, [b, hq, lq, d]);
        math::scale(&mut qs, scale);
        let go = pack_rows(gd, gv_, [b, hq, lq, dv]);
        let o = pack_rows(
            elems::<S>(&**go_, out, op)?,
            View4::of(out),
            [b, hq, lq, dv],
        );
        let dsum: Vec<S::T> = if dv == 0 {
            vec![S::T::ZERO; b * hq * lq]
        } else {
            go.chunks_exact(dv)
                .zip(o.chunks_exact(dv))
                .map(|(x, y)| x.iter().zip(y).fold(S::T::ZERO, |a, (&x, &y)| a + x * y))
                .collect()
        };
        let lsev: Vec<S::T> = super::gather(elems::<S>(&**gl, lse, op)?, lse.layout())
            .into_iter()
            .map(|x| if x.is_finite() { x } else { S::T::ZERO })
            .collect();
        BwdShared {
            geo,
            sc: scores_of(
                p,
                geo,
                alibi_of::<S>(p)?,
                bias.as_ref().map(|(c, v)| (&c[..], *v)),
            ),
            qt: pack_transposed(qd, qv, [b, hq, lq, d], scale),
            qs,
            got: pack_transposed(gd, gv_, [b, hq, lq, dv], S::T::ONE),
            go,
            dsum,
            lse: lsev,
            k: pack_rows(elems::<S>(&**gk, k, op)?, View4::of(k), [b, hkv, lk, d]),
            v: pack_rows(elems::<S>(&**gv, v, op)?, View4::of(v), [b, hkv, lk, dv]),
        }
    };
    // Tasks: (batch, kv head, key split).
    let splits = key_splits(b * hkv, nkb);
    let parts: Vec<BwdPart<S::T>> = (0..b * hkv * splits)
        .into_par_iter()
        .map(|t| {
            let (bh, sp) = (t / splits, t % splits);
            dispatch(BwdTask {
                sh: &sh,
                b: bh / hkv,
                hk: bh % hkv,
                kb0: nkb * sp / splits,
                kb1: nkb * (sp + 1) / splits,
            })
        })
        .collect();
    let mut dq = vec![S::default(); b * hq * lq * d];
    let mut dk = vec![S::default(); b * hkv * lk * d];
    let mut dvv = vec![S::default(); b * hkv * lk * dv];
    split_n(&mut dq, b * hkv)
        .into_par_iter()
        .zip(split_n(&mut dk, b * hkv))
        .zip(split_n(&mut dvv, b * hkv))
        .enumerate()
        .for_each(|(bh, ((dq, dk), dv_))| {
            let ps = &parts[bh * splits..][..splits];
            for (i, o) in dq.iter_mut().enumerate() {
                let s = ps.iter().fold(S::T::ZERO, |a, p| a + p.dq[i]);
                *o = S::store(s * scale);
            }
            let dks = ps.iter().flat_map(|p| p.dk.iter());
            for (o, &x) in dk.iter_mut().zip(dks) {
                *o = S::store(x);
            }
            let dvs = ps.iter().flat_map(|p| p.dv.iter());
            for (o, &x) in dv_.iter_mut().zip(dvs) {
                *o = S::store(x);
            }
        });
    Ok((
        tensor_of(dq, vec![b, hq, lq, d], q)?,
        tensor_of(dk, vec![b, hkv, lk, d], q)?,
        tensor_of(dvv, vec![b, hkv, lk, dv], q)?,
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
    tensor_core::checks::attention_backward(q, k, v, out, lse, grad_out, p)?;
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
                rnd(&[c.b, c.lq, c.hq, c.d], dt, seed, 1.5)
                    .transpose(1, 2)
                    .unwrap(),
                // [B, Hkv, D, Lk] viewed as [B, Hkv, Lk, D]: inner stride Lk.
                rnd(&[c.b, c.hkv, c.d, c.lk], dt, seed + 1, 1.5)
                    .transpose(2, 3)
                    .unwrap(),
                // [B, Hkv, Dv, Lk] viewed as [B, Hkv, Lk, Dv]: inner stride Lk.
                rnd(&[c.b, c.hkv, c.dv, c.lk], dt, seed + 2, 1.0)
                    .transpose(2, 3)
                    .unwrap(),
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
        for (n, dt) in [DType::F32, DType::F64, DType::F16, DType::BF16]
            .into_iter()
            .enumerate()
        {
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
        check(
            &Case {
                causal: true,
                ..case(1, 4, 2, 37, 150, 16, 16)
            },
            "causal lq<lk",
        );
        check(
            &Case {
                causal: true,
                ..case(2, 2, 1, 130, 130, 8, 12)
            },
            "causal square",
        );
    }

    #[test]
    fn sliding_window() {
        check(
            &Case {
                window: Some(9),
                ..case(1, 2, 2, 70, 90, 8, 8)
            },
            "window",
        );
        check(
            &Case {
                window: Some(20),
                causal: true,
                ..case(1, 2, 1, 100, 100, 8, 8)
            },
            "window causal",
        );
        // More queries than keys (negative positions), non-causal.
        check(
            &Case {
                window: Some(4),
                ..case(1, 1, 1, 12, 5, 4, 4)
            },
            "window lq>lk",
        );
    }

    #[test]
    fn alibi_and_broadcast_bias() {
        check(
            &Case {
                alibi: true,
                causal: true,
                ..case(1, 4, 2, 33, 80, 8, 8)
            },
            "alibi",
        );
        // Padding mask [B, 1, 1, Lk].
        check(
            &Case {
                bias: Some(vec![2, 1, 1, 75]),
                ..case(2, 2, 1, 20, 75, 8, 8)
            },
            "bias b11k",
        );
        // [Lq, Lk] (rank 2, with a fully masked first row) plus ALiBi.
        check(
            &Case {
                bias: Some(vec![20, 75]),
                alibi: true,
                ..case(2, 2, 2, 20, 75, 8, 8)
            },
            "bias qk",
        );
        // Per head, broadcast over queries.
        check(
            &Case {
                bias: Some(vec![1, 4, 1, 66]),
                causal: true,
                ..case(1, 4, 2, 10, 66, 8, 8)
            },
            "bias 1h1k",
        );
        // Full [B, Hq, Lq, Lk] with fully-masked rows.
        check(
            &Case {
                bias: Some(vec![1, 2, 9, 70]),
                ..case(1, 2, 1, 9, 70, 8, 8)
            },
            "bias full",
        );
    }

    #[test]
    fn fully_masked_rows_give_zero_and_neg_inf() {
        // Window 1 non-causal with Lq > Lk: queries before position 0 see no key at all.
        let c = Case {
            window: Some(1),
            ..case(1, 1, 1, 8, 3, 4, 4)
        };
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
        check(
            &Case {
                strided: true,
                causal: true,
                ..case(2, 4, 2, 30, 70, 16, 8)
            },
            "strided",
        );
        check(
            &Case {
                strided: true,
                bias: Some(vec![2, 1, 30, 1]),
                ..case(2, 2, 2, 30, 70, 8, 8)
            },
            "strided bias",
        );
    }

    #[test]
    fn decode_with_split_keys() {
        // One query per head against a long cache: few tasks, so the key range is split.
        let c = Case {
            causal: true,
            ..case(1, 4, 2, 1, 700, 16, 16)
        };
        assert!(key_splits(2, 11) > 1);
        check(&c, "decode");
        check(
            &Case {
                window: Some(300),
                alibi: true,
                ..c.clone()
            },
            "decode window alibi",
        );
        check(
            &Case {
                strided: true,
                bias: Some(vec![1, 1, 1, 700]),
                ..c.clone()
            },
            "decode strided bias",
        );
        // Two query rows per head of a 3-head group: 6 rows, still the dot-product path.
        check(
            &Case {
                causal: true,
                ..case(2, 3, 1, 2, 520, 12, 8)
            },
            "decode gqa 2 rows",
        );
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
