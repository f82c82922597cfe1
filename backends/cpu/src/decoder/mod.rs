//! The CPU's fused decoder ([`tensor_core::decoder`]): a Llama-style model run straight from
//! its (usually quantized, memory-mapped) weights by a [`Team`] of spinning threads.
//!
//! One forward call is one [`Team::run`]: every thread walks the layers together, each doing
//! its share of a step and meeting the others at a barrier before the next step needs the
//! result. Matrix products use the quantized kernels of [`crate::quant`] (activations
//! quantized to 8-bit blocks once per step and shared by the products that read them);
//! weight types without a kernel dequantize a row at a time.
//!
//! Work split: with one token, threads take disjoint rows of each weight matrix (decode is
//! bound by streaming the weights, so each byte is read once); with a prompt, threads take
//! disjoint tokens and each runs the GEMM tile kernel over every weight row, decoding each
//! weight block once per four tokens. Every buffer, the KV cache and the RoPE table are
//! allocated before the team starts, so a decode step allocates nothing (a test counts).

mod attn;
mod team;

use std::ops::Range;

use tensor_core::decoder::{check_tokens, DecoderSpec, FusedDecoder, Weight};
use tensor_core::quant::{dequantize_into, GgmlType, QTensor};
use tensor_core::{DType, Error, HostData, Result, Tensor};

use crate::quant::amx::{self, AlignedBuf};
use crate::quant::{self, BlockQ8, BlockQ8K, Kernel, AMX_MIN_TOKENS};
pub use team::Team;

/// A weight matrix `[rows, cols]` and the kernel that multiplies by it.
struct Mat {
    w: QTensor,
    rows: usize,
    cols: usize,
    kernel: Option<Kernel>,
    /// Whether prompts multiply by it on AMX tiles (bf16, see [`quant::amx`]).
    amx: bool,
}

impl Mat {
    fn new(w: &Weight, rows: usize, cols: usize, name: &str) -> Result<Mat> {
        let w = match w {
            Weight::Quant(q) => q.clone(),
            Weight::Dense(t) => dense_to_q(t)?,
        };
        if w.dims() != [rows, cols] {
            return Err(Error::msg(format!(
                "fused decoder: {name} is {:?}, expected [{rows}, {cols}]",
                w.dims()
            )));
        }
        let kernel = quant::best(w.ggml_type()).filter(|k| match k {
            Kernel::Q8(_) => cols.is_multiple_of(32),
            Kernel::Q8K(_) => cols.is_multiple_of(256),
        });
        let amx = quant::amx_ready(w.ggml_type(), cols);
        Ok(Mat {
            w,
            rows,
            cols,
            kernel,
            amx,
        })
    }
}

/// A dense weight as a plain-typed [`QTensor`] (F32/F16/BF16 rows) so one code path reads it.
fn dense_to_q(t: &Tensor) -> Result<QTensor> {
    let dims = t.dims().to_vec();
    let (ty, bytes): (GgmlType, Vec<u8>) = match t.to_host()? {
        HostData::F16(v) => (
            GgmlType::F16,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        HostData::BF16(v) => (
            GgmlType::BF16,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        _ => {
            let v = t.to_dtype(DType::F32)?.to_vec::<f32>()?;
            (
                GgmlType::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        }
    };
    QTensor::from_bytes(ty, &dims, bytes)
}

fn vec_of(t: &Tensor, len: usize, name: &str) -> Result<Vec<f32>> {
    if t.elem_count() != len {
        return Err(Error::msg(format!(
            "fused decoder: {name} has {} values, expected {len}",
            t.elem_count()
        )));
    }
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec::<f32>()
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Mat,
    wk: Mat,
    wv: Mat,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    wo: Mat,
    ffn_norm: Vec<f32>,
    gate: Mat,
    up: Mat,
    down: Mat,
    /// `[positions, kv_dim]` each.
    kc: Vec<f32>,
    vc: Vec<f32>,
}

/// Shapes of the model.
#[derive(Clone, Copy)]
struct Dims {
    d: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    ff: usize,
    vocab: usize,
    eps: f32,
    interleaved: bool,
}

impl Dims {
    fn qd(&self) -> usize {
        self.nh * self.hd
    }
    fn kvd(&self) -> usize {
        self.nkv * self.hd
    }
}

/// Per-forward buffers, sized for `cap` tokens.
#[derive(Default)]
struct Bufs {
    cap: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    o: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    a8: Vec<BlockQ8>,
    a8k: Vec<BlockQ8K>,
    /// A prompt's activations as bf16 tiles for the AMX products, in two planes: the values
    /// rounded to bf16, then what that rounding left (`[2, packed_len(cap, maxk)]`).
    xp: Option<AlignedBuf>,
    /// Per thread: a panel of weight rows dequantized to bf16 for the AMX products.
    panels: Vec<AlignedBuf>,
    /// Per thread: f32 scratch for the second plane (16 tokens) and its product (a panel's
    /// rows for every token).
    amx_tmp: Vec<Vec<f32>>,
    logits: Vec<f32>,
    /// Per thread: one dequantized weight row.
    row: Vec<Vec<f32>>,
}

pub struct CpuDecoder {
    dims: Dims,
    embedding: QTensor,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    lm_head: Mat,
    inv_freq: Vec<f32>,
    /// `[kv_cap, hd/2]` cos and sin of each position.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    kv_cap: usize,
    max_positions: usize,
    len: usize,
    bufs: Bufs,
    /// Raw views of the per-layer caches and per-thread scratch, refreshed when they grow.
    kv_ptrs: Vec<(P, P)>,
    scratch_ptrs: Vec<P>,
    panel_ptrs: Vec<(PQ<u16>, P)>,
    /// Whether some weight matrix can multiply a prompt on AMX tiles.
    amx: bool,
    team: Team,
}

/// Weight rows a thread dequantizes to bf16 at a time for the AMX products.
const PANEL: usize = 64;

/// Positions the KV cache holds at first; it grows by doubling up to `max_positions`.
const FIRST_KV_CAP: usize = 512;

impl CpuDecoder {
    pub fn new(spec: &DecoderSpec, threads: usize) -> Result<CpuDecoder> {
        spec.validate()?;
        let s = spec;
        let dims = Dims {
            d: s.hidden_size,
            nh: s.num_heads,
            nkv: s.num_kv_heads,
            hd: s.head_dim,
            ff: s.intermediate_size,
            vocab: s.vocab_size,
            eps: s.rms_eps,
            interleaved: s.rope_interleaved,
        };
        let (d, qd, kvd, ff) = (dims.d, dims.qd(), dims.kvd(), dims.ff);
        let embedding = match &s.embedding {
            Weight::Quant(q) => q.clone(),
            Weight::Dense(t) => dense_to_q(t)?,
        };
        if embedding.dims() != [dims.vocab, d] {
            return Err(Error::msg(format!(
                "fused decoder: embedding is {:?}, expected [{}, {d}]",
                embedding.dims(),
                dims.vocab
            )));
        }
        let mut layers = Vec::with_capacity(s.layers.len());
        for (i, l) in s.layers.iter().enumerate() {
            let n = |what: &str| format!("layer {i} {what}");
            let bias = |b: &Option<Tensor>, len: usize, what: &str| -> Result<Option<Vec<f32>>> {
                b.as_ref().map(|t| vec_of(t, len, &n(what))).transpose()
            };
            layers.push(Layer {
                attn_norm: vec_of(&l.attn_norm, d, &n("attn_norm"))?,
                wq: Mat::new(&l.wq, qd, d, &n("q"))?,
                wk: Mat::new(&l.wk, kvd, d, &n("k"))?,
                wv: Mat::new(&l.wv, kvd, d, &n("v"))?,
                bq: bias(&l.bq, qd, "q bias")?,
                bk: bias(&l.bk, kvd, "k bias")?,
                bv: bias(&l.bv, kvd, "v bias")?,
                wo: Mat::new(&l.wo, d, qd, &n("o"))?,
                ffn_norm: vec_of(&l.ffn_norm, d, &n("ffn_norm"))?,
                gate: Mat::new(&l.w_gate, ff, d, &n("gate"))?,
                up: Mat::new(&l.w_up, ff, d, &n("up"))?,
                down: Mat::new(&l.w_down, d, ff, &n("down"))?,
                kc: Vec::new(),
                vc: Vec::new(),
            });
        }
        let mut dec = CpuDecoder {
            dims,
            embedding,
            layers,
            final_norm: vec_of(&s.final_norm, d, "final norm")?,
            lm_head: Mat::new(&s.lm_head, dims.vocab, d, "lm_head")?,
            inv_freq: s.rope_inv_freq.clone(),
            rope_cos: Vec::new(),
            rope_sin: Vec::new(),
            kv_cap: 0,
            max_positions: s.max_positions.max(1),
            len: 0,
            bufs: Bufs::default(),
            kv_ptrs: Vec::new(),
            scratch_ptrs: Vec::new(),
            panel_ptrs: Vec::new(),
            amx: false,
            team: Team::new(threads),
        };
        dec.amx = dec.layers.iter().any(|l| {
            [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                .iter()
                .any(|m| m.amx)
        });
        dec.grow_kv(FIRST_KV_CAP.min(dec.max_positions));
        dec.grow_bufs(1);
        Ok(dec)
    }

    fn grow_kv(&mut self, cap: usize) {
        if cap <= self.kv_cap {
            return;
        }
        let kvd = self.dims.kvd();
        for l in &mut self.layers {
            l.kc.resize(cap * kvd, 0.0);
            l.vc.resize(cap * kvd, 0.0);
        }
        let half = self.dims.hd / 2;
        self.rope_cos.resize(cap * half, 0.0);
        self.rope_sin.resize(cap * half, 0.0);
        for p in self.kv_cap..cap {
            for (i, f) in self.inv_freq.iter().enumerate() {
                let (s, c) = (p as f32 * f).sin_cos();
                self.rope_cos[p * half + i] = c;
                self.rope_sin[p * half + i] = s;
            }
        }
        self.kv_cap = cap;
        self.refresh_ptrs();
    }

    fn refresh_ptrs(&mut self) {
        self.kv_ptrs = self
            .layers
            .iter_mut()
            .map(|l| (P(l.kc.as_mut_ptr()), P(l.vc.as_mut_ptr())))
            .collect();
        let b = &mut self.bufs;
        self.scratch_ptrs = b.row.iter_mut().map(|r| P(r.as_mut_ptr())).collect();
        self.panel_ptrs = b
            .panels
            .iter_mut()
            .zip(b.amx_tmp.iter_mut())
            .map(|(p, a)| (PQ(p.as_mut_ptr()), P(a.as_mut_ptr())))
            .collect();
    }

    fn grow_bufs(&mut self, t: usize) {
        if t <= self.bufs.cap {
            return;
        }
        let dm = self.dims;
        let maxk = dm.d.max(dm.qd()).max(dm.ff);
        let b = &mut self.bufs;
        b.cap = t;
        b.x = vec![0.0; t * dm.d];
        b.xn = vec![0.0; t * maxk];
        b.o = vec![0.0; t * dm.d];
        b.q = vec![0.0; t * dm.qd()];
        b.k = vec![0.0; t * dm.kvd()];
        b.v = vec![0.0; t * dm.kvd()];
        b.att = vec![0.0; t * dm.qd()];
        b.g = vec![0.0; t * dm.ff];
        b.u = vec![0.0; t * dm.ff];
        b.a8 = vec![BlockQ8::default(); t * maxk.div_ceil(32)];
        b.a8k = vec![BlockQ8K::default(); t * maxk.div_ceil(256)];
        b.logits = vec![0.0; t * dm.vocab];
        b.row = vec![vec![0.0; maxk]; self.team.threads()];
        if t >= AMX_MIN_TOKENS && self.amx {
            b.xp = Some(AlignedBuf::zeroed(2 * amx::packed_len(t, maxk)));
            b.panels = (0..self.team.threads())
                .map(|_| AlignedBuf::zeroed(PANEL * maxk))
                .collect();
            b.amx_tmp = vec![vec![0.0; (16 * maxk).max(t * PANEL)]; self.team.threads()];
        }
        self.refresh_ptrs();
    }
}

/// A pointer to a buffer that threads of the team write at disjoint places between barriers.
#[derive(Clone, Copy)]
struct P(*mut f32);
// SAFETY: the team's barriers order every write before the reads of the next step, and the
// work split gives each thread disjoint ranges to write.
unsafe impl Send for P {}
unsafe impl Sync for P {}

impl P {
    /// # Safety
    /// `start..start + len` must lie in the buffer and no other thread may write it now.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }

    /// # Safety
    /// `start..start + len` must lie in the buffer and no thread may write it now.
    unsafe fn get(&self, start: usize, len: usize) -> &[f32] {
        std::slice::from_raw_parts(self.0.add(start), len)
    }
}

#[derive(Clone, Copy)]
struct PQ<T>(*mut T);
unsafe impl<T> Send for PQ<T> {}
unsafe impl<T> Sync for PQ<T> {}

/// The activation block of the products `mats`: 256 values when one reads [`BlockQ8K`]s,
/// else 32.
fn unit(mats: &[&Mat]) -> usize {
    if mats
        .iter()
        .any(|m| matches!(m.kernel, Some(Kernel::Q8K(_))))
    {
        256
    } else {
        32
    }
}

/// `n` items split into `nth` near-equal contiguous parts; part `tid`.
fn split(n: usize, tid: usize, nth: usize) -> Range<usize> {
    let (q, r) = (n / nth, n % nth);
    let start = tid * q + tid.min(r);
    start..start + q + usize::from(tid < r)
}

/// Everything one forward call shares across the team.
struct Ctx<'a> {
    dims: Dims,
    t: usize,
    pos: usize,
    nth: usize,
    layers: &'a [Layer],
    final_norm: &'a [f32],
    lm_head: &'a Mat,
    rope_cos: &'a [f32],
    rope_sin: &'a [f32],
    kv_cap: usize,
    /// Rows of the output whose logits are wanted: the last, or all.
    logit_rows: Range<usize>,
    x: P,
    xn: P,
    o: P,
    q: P,
    k: P,
    v: P,
    att: P,
    g: P,
    u: P,
    logits: P,
    a8: PQ<BlockQ8>,
    a8k: PQ<BlockQ8K>,
    /// Whether some product can run on AMX tiles (the buffers below are then allocated).
    amx: bool,
    /// The two activation planes for AMX (see [`Bufs::xp`]).
    xp: PQ<u16>,
    xp_lo: PQ<u16>,
    /// Per thread: the weight panel and the f32 scratch.
    panels: &'a [(PQ<u16>, P)],
    /// Per layer: the K and V caches.
    kv: &'a [(P, P)],
    /// Per thread: the dequantized-row buffer.
    scratch: &'a [P],
    team: &'a Team,
}

impl Ctx<'_> {
    /// Whether products over `nt` tokens run on AMX tiles (for the matrices that can).
    fn amx_for(&self, nt: usize) -> bool {
        self.amx && nt >= AMX_MIN_TOKENS
    }

    /// This thread's part of a per-token step over rows of `k` values: with at least as many
    /// tokens as threads, its share of the tokens, whole; with fewer (decode), every token but
    /// only its share of each row, in units of `unit` values (the activation block of the
    /// products that read the result), so no thread idles while another normalizes.
    fn row_share(
        &self,
        tid: usize,
        nt: usize,
        k: usize,
        unit: usize,
    ) -> (Range<usize>, Range<usize>) {
        if self.amx_for(nt) {
            // Whole groups of 16 tokens, the unit the AMX activation tiles are packed in.
            let g = split(nt.div_ceil(16), tid, self.nth);
            ((g.start * 16).min(nt)..(g.end * 16).min(nt), 0..k)
        } else if nt >= self.nth {
            (split(nt, tid, self.nth), 0..k)
        } else {
            let u = split(k.div_ceil(unit), tid, self.nth);
            (0..nt, (u.start * unit).min(k)..(u.end * unit).min(k))
        }
    }

    /// `xn[t] = rms_norm(x[first + t]) · w` for `t < nt`, quantized for the products `mats`
    /// that read it: this thread's part (every thread computes the row's norm itself).
    unsafe fn norm_and_quantize(
        &self,
        tid: usize,
        w: &[f32],
        mats: &[&Mat],
        first: usize,
        nt: usize,
    ) {
        let d = self.dims.d;
        let (toks, e) = self.row_share(tid, nt, d, unit(mats));
        for t in toks.clone() {
            let x = self.x.get((first + t) * d, d);
            let r = attn::rms_inv(x, self.dims.eps);
            let xn = self.xn.slice(t * d + e.start, e.len());
            attn::scale_mul(&x[e.clone()], &w[e.clone()], r, xn);
        }
        self.prepare(tid, nt, toks, d, e, mats);
    }

    /// Bring `xn[t][e]` for `t` in `toks` of `nt` (rows of `k`; `e` on block boundaries) into the
    /// activation formats the products `mats` read: 8-bit blocks, or bf16 tiles for AMX
    /// (then `toks` are whole groups of 16 and `e` the whole row; see [`Ctx::row_share`]).
    unsafe fn prepare(
        &self,
        tid: usize,
        nt: usize,
        toks: Range<usize>,
        k: usize,
        e: Range<usize>,
        mats: &[&Mat],
    ) {
        if e.is_empty() || toks.is_empty() {
            return;
        }
        let amx = self.amx_for(nt);
        let on_amx = |m: &&&Mat| amx && m.amx;
        let q8 = mats
            .iter()
            .any(|m| !on_amx(&m) && matches!(m.kernel, Some(Kernel::Q8(_))));
        let q8k = mats
            .iter()
            .any(|m| !on_amx(&m) && matches!(m.kernel, Some(Kernel::Q8K(_))));
        for t in toks.clone() {
            let xn = self.xn.get(t * k + e.start, e.len());
            if q8 {
                let a = std::slice::from_raw_parts_mut(
                    self.a8.0.add((t * k + e.start) / 32),
                    e.len() / 32,
                );
                quant::quantize_q8(xn, a);
            }
            if q8k {
                let a = std::slice::from_raw_parts_mut(
                    self.a8k.0.add((t * k + e.start) / 256),
                    e.len() / 256,
                );
                quant::quantize_q8k(xn, a);
            }
        }
        if mats.iter().any(|m| on_amx(&m)) {
            // Groups of 16 tokens, so the per-thread scratch holds one group's second plane.
            for g0 in toks.clone().step_by(16) {
                let n = (toks.end - g0).min(16);
                let len = amx::packed_len(n, k);
                quant::pack_planes(
                    self.xn.get(g0 * k, n * k),
                    n,
                    k,
                    std::slice::from_raw_parts_mut(self.xp.0.add(g0 * k), len),
                    std::slice::from_raw_parts_mut(self.xp_lo.0.add(g0 * k), len),
                    self.panels[tid].1.slice(0, n * k),
                );
            }
        }
    }

    /// `o = m · xn` (as [`Ctx::matmul`]), then the residual `x += o` for the outputs this
    /// thread computed, so the next step's norm only reads `x`.
    unsafe fn matmul_residual(&self, tid: usize, m: &Mat) {
        self.matmul(tid, m, self.o, self.t);
        let d = self.dims.d;
        let (rows, toks) = self.my_outputs(tid, m, self.t);
        for t in toks {
            let r = t * d + rows.start..t * d + rows.end;
            attn::add(self.x.slice(r.start, r.len()), self.o.get(r.start, r.len()));
        }
    }

    /// The outputs of `m · xn` over `nt` tokens this thread computes: rows × tokens. One
    /// token or AMX: a share of the rows (whole 16-row tiles for AMX) for every token; else
    /// a share of the tokens for every row.
    fn my_outputs(&self, tid: usize, m: &Mat, nt: usize) -> (Range<usize>, Range<usize>) {
        let n = m.rows;
        if m.amx && self.amx_for(nt) {
            let tiles = split(n.div_ceil(16), tid, self.nth);
            ((tiles.start * 16).min(n)..(tiles.end * 16).min(n), 0..nt)
        } else if nt == 1 {
            (split(n, tid, self.nth), 0..1)
        } else {
            (0..n, split(nt, tid, self.nth))
        }
    }

    /// `out[t] = m · xn[t]` for tokens `0..nt` (their activations were quantized by the
    /// previous step): this thread's share of the tokens, or with one token its share of the
    /// rows.
    unsafe fn matmul(&self, tid: usize, m: &Mat, out: P, nt: usize) {
        let (k, n) = (m.cols, m.rows);
        let rb = m.w.row_bytes();
        let data = m.w.data();
        let (rows, toks) = self.my_outputs(tid, m, nt);
        if rows.is_empty() || toks.is_empty() {
            return;
        }
        if m.amx && self.amx_for(nt) {
            // Each thread dequantizes a panel of its rows to bf16 and multiplies every token
            // by it.
            let xp = std::slice::from_raw_parts(self.xp.0, amx::packed_len(nt, k));
            let xp_lo = std::slice::from_raw_parts(self.xp_lo.0, amx::packed_len(nt, k));
            let panel = std::slice::from_raw_parts_mut(self.panels[tid].0 .0, PANEL * k);
            for r0 in rows.clone().step_by(PANEL) {
                let pr = (rows.end - r0).min(PANEL);
                quant::amx_rows(
                    m.w.ggml_type(),
                    &data[r0 * rb..(r0 + pr) * rb],
                    pr,
                    k,
                    nt,
                    (xp, xp_lo),
                    panel,
                    self.panels[tid].1.slice(0, nt * pr),
                    out.slice(r0, (nt - 1) * n + pr),
                    n,
                );
            }
            return;
        }
        let nc = toks.len();
        let w = &data[rows.start * rb..rows.end * rb];
        let out = out.slice(toks.start * n + rows.start, (nc - 1) * n + rows.len());
        match m.kernel {
            Some(Kernel::Q8(f)) => {
                let a = std::slice::from_raw_parts(self.a8.0.add(toks.start * k / 32), nc * k / 32);
                f(k, w, rows.len(), a, nc, out, n);
            }
            Some(Kernel::Q8K(f)) => {
                let a =
                    std::slice::from_raw_parts(self.a8k.0.add(toks.start * k / 256), nc * k / 256);
                f(k, w, rows.len(), a, nc, out, n);
            }
            None => {
                let row = self.scratch[tid].slice(0, k);
                let xs = self.xn.slice(toks.start * k, nc * k);
                for (ri, wr) in w.chunks_exact(rb).enumerate() {
                    dequantize_into(m.w.ggml_type(), wr, row)
                        .expect("row sizes were checked at load");
                    for c in 0..nc {
                        out[c * n + ri] = attn::dot(row, &xs[c * k..(c + 1) * k]);
                    }
                }
            }
        }
    }

    /// The whole forward pass, run by every thread of the team.
    unsafe fn run(&self, tid: usize) {
        let dm = self.dims;
        let bar = || self.team.barrier();
        for (li, l) in self.layers.iter().enumerate() {
            // Attention input: residual (+ the previous layer's FFN output), norm, quantize.
            self.norm_and_quantize(tid, &l.attn_norm, &[&l.wq, &l.wk, &l.wv], 0, self.t);
            bar();
            self.matmul(tid, &l.wq, self.q, self.t);
            self.matmul(tid, &l.wk, self.k, self.t);
            self.matmul(tid, &l.wv, self.v, self.t);
            bar();
            // Biases, RoPE, and the new keys/values into the cache.
            let units = self.t * (dm.nh + dm.nkv);
            for u in split(units, tid, self.nth) {
                let (t, h) = (u / (dm.nh + dm.nkv), u % (dm.nh + dm.nkv));
                let p = self.pos + t;
                let (cos, sin) = (
                    &self.rope_cos[p * dm.hd / 2..(p + 1) * dm.hd / 2],
                    &self.rope_sin[p * dm.hd / 2..(p + 1) * dm.hd / 2],
                );
                if h < dm.nh {
                    let q = self.q.slice(t * dm.qd() + h * dm.hd, dm.hd);
                    if let Some(b) = &l.bq {
                        attn::add(q, &b[h * dm.hd..(h + 1) * dm.hd]);
                    }
                    attn::rope(q, cos, sin, dm.interleaved);
                } else {
                    let g = h - dm.nh;
                    let r = g * dm.hd..(g + 1) * dm.hd;
                    let k = self.k.slice(t * dm.kvd() + r.start, dm.hd);
                    let v = self.v.slice(t * dm.kvd() + r.start, dm.hd);
                    if let Some(b) = &l.bk {
                        attn::add(k, &b[r.clone()]);
                    }
                    if let Some(b) = &l.bv {
                        attn::add(v, &b[r.clone()]);
                    }
                    attn::rope(k, cos, sin, dm.interleaved);
                    self.kv[li]
                        .0
                        .slice(p * dm.kvd() + r.start, dm.hd)
                        .copy_from_slice(k);
                    self.kv[li]
                        .1
                        .slice(p * dm.kvd() + r.start, dm.hd)
                        .copy_from_slice(v);
                }
            }
            bar();
            // Causal attention of every (token, head) over the cache.
            let scale = 1.0 / (dm.hd as f32).sqrt();
            let group = dm.nh / dm.nkv;
            for u in split(self.t * dm.nh, tid, self.nth) {
                let (t, h) = (u / dm.nh, u % dm.nh);
                let npos = self.pos + t + 1;
                let g = h / group;
                let kc = self.kv[li].0.slice(0, self.kv_cap * dm.kvd());
                let vc = self.kv[li].1.slice(0, self.kv_cap * dm.kvd());
                attn::attend(
                    self.q.slice(t * dm.qd() + h * dm.hd, dm.hd),
                    &kc[g * dm.hd..],
                    &vc[g * dm.hd..],
                    dm.kvd(),
                    npos,
                    scale,
                    self.att.slice(t * dm.qd() + h * dm.hd, dm.hd),
                );
            }
            bar();
            let (toks, e) = self.row_share(tid, self.t, dm.qd(), unit(&[&l.wo]));
            for t in toks.clone() {
                let r = t * dm.qd() + e.start..t * dm.qd() + e.end;
                self.xn
                    .slice(r.start, r.len())
                    .copy_from_slice(self.att.get(r.start, r.len()));
            }
            self.prepare(tid, self.t, toks, dm.qd(), e, &[&l.wo]);
            bar();
            self.matmul_residual(tid, &l.wo);
            bar();
            self.norm_and_quantize(tid, &l.ffn_norm, &[&l.gate, &l.up], 0, self.t);
            bar();
            self.matmul(tid, &l.gate, self.g, self.t);
            self.matmul(tid, &l.up, self.u, self.t);
            bar();
            let (toks, e) = self.row_share(tid, self.t, dm.ff, unit(&[&l.down]));
            for t in toks.clone() {
                let r = t * dm.ff + e.start..t * dm.ff + e.end;
                attn::silu_mul(
                    self.g.get(r.start, r.len()),
                    self.u.get(r.start, r.len()),
                    self.xn.slice(r.start, r.len()),
                );
            }
            self.prepare(tid, self.t, toks, dm.ff, e, &[&l.down]);
            bar();
            self.matmul_residual(tid, &l.down);
            bar();
        }
        // Final norm and the head, for the rows whose logits are wanted (their index in the
        // logits buffer counts from the first of them).
        let lr = self.logit_rows.clone();
        self.norm_and_quantize(tid, self.final_norm, &[self.lm_head], lr.start, lr.len());
        bar();
        self.matmul(tid, self.lm_head, self.logits, lr.len());
    }
}

impl FusedDecoder for CpuDecoder {
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<&[f32]> {
        let t = tokens.len();
        let dm = self.dims;
        check_tokens(tokens, dm.vocab, self.len, self.max_positions)?;
        let end = self.len + t;
        if end > self.kv_cap {
            self.grow_kv(end.max(2 * self.kv_cap).min(self.max_positions));
        }
        self.grow_bufs(t);
        let row_bytes = self.embedding.row_bytes();
        for (i, &id) in tokens.iter().enumerate() {
            let id = id as usize;
            let src = &self.embedding.data()[id * row_bytes..(id + 1) * row_bytes];
            dequantize_into(
                self.embedding.ggml_type(),
                src,
                &mut self.bufs.x[i * dm.d..(i + 1) * dm.d],
            )?;
        }
        let b = &mut self.bufs;
        let ctx = Ctx {
            dims: dm,
            t,
            pos: self.len,
            nth: self.team.threads(),
            layers: &self.layers,
            final_norm: &self.final_norm,
            lm_head: &self.lm_head,
            rope_cos: &self.rope_cos,
            rope_sin: &self.rope_sin,
            kv_cap: self.kv_cap,
            logit_rows: if all_logits { 0..t } else { t - 1..t },
            x: P(b.x.as_mut_ptr()),
            xn: P(b.xn.as_mut_ptr()),
            o: P(b.o.as_mut_ptr()),
            q: P(b.q.as_mut_ptr()),
            k: P(b.k.as_mut_ptr()),
            v: P(b.v.as_mut_ptr()),
            att: P(b.att.as_mut_ptr()),
            g: P(b.g.as_mut_ptr()),
            u: P(b.u.as_mut_ptr()),
            logits: P(b.logits.as_mut_ptr()),
            a8: PQ(b.a8.as_mut_ptr()),
            a8k: PQ(b.a8k.as_mut_ptr()),
            amx: self.amx && t >= AMX_MIN_TOKENS,
            xp: PQ(b
                .xp
                .as_mut()
                .map_or(std::ptr::null_mut(), |x| x.as_mut_ptr())),
            xp_lo: PQ(b.xp.as_mut().map_or(std::ptr::null_mut(), |x| {
                x.as_mut_ptr().wrapping_add(x.len() / 2)
            })),
            panels: &self.panel_ptrs,
            kv: &self.kv_ptrs,
            scratch: &self.scratch_ptrs,
            team: &self.team,
        };
        // SAFETY: `ctx` points into buffers sized for `t` tokens and `kv_cap` positions above;
        // `Ctx::run` splits the writes between threads and orders them with barriers.
        self.team.run(&|tid| unsafe { ctx.run(tid) });
        self.len = end;
        let n = if all_logits { t * dm.vocab } else { dm.vocab };
        Ok(&self.bufs.logits[..n])
    }

    fn cache_len(&self) -> usize {
        self.len
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::msg(format!(
                "fused decoder: cannot truncate a cache of {} positions to {len}",
                self.len
            )));
        }
        self.len = len;
        Ok(())
    }

    fn threads(&self) -> usize {
        self.team.threads()
    }
}
