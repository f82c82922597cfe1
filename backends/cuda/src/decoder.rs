//! The CUDA fused decoder (`kernels/decoder.cu`): a Llama-style model run from dense f32, f16
//! or bf16 weights on the GPU, with its KV cache and every buffer allocated once, at creation.
//!
//! - **Decode** (one token) is a handful of kernels per layer: q/k/v products with the RMS norm
//!   fused in front and bias + RoPE + KV-cache append behind; attention split over the keys
//!   (flash-decoding, the last block of each head group merging the splits); the output
//!   product with the residual add; the gate/up products with SiLU·up; the down product with
//!   the residual add; then the final norm and the head. The products stream each weight row
//!   with 16-byte loads, one warp per row. Kernels read the token and its position from a
//!   small device buffer, so the step is captured once as a CUDA graph and replayed for every
//!   later token (`TENSOR_ENGINE_NO_CUDA_GRAPH=1` runs the same kernels without the graph).
//! - **Prompts** (several tokens) go through cuBLAS (weights' dtype in, f32 out and compute) in
//!   chunks of up to [`PREFILL_CHUNK`] tokens, with the same attention kernel over the cache.
//!
//! Activations and logits are f32; the KV cache holds the weights' dtype. Weights are borrowed
//! from the spec (kept alive by holding their tensors), except matrices that must first be made
//! contiguous, 16-byte aligned or cast to the dtype of the others, which are copied once.
//!
//! [`engine`] builds one straight from a [`DecoderSpec`] (for benchmarks and tests); the
//! device's `fused_decoder` answers `None` for specs this engine does not run (quantized
//! weights, weights on another device, unusual shapes).
//!
//! Measured on one H100 (80 GB HBM3), a Llama-3.2-1B-shaped bf16 model (2.47 GB of weights)
//! after a 128-token prompt: about 1.18 ms per decode step with the graph (≈ 846 tokens/s,
//! 2.1 TB/s of weights), 1.29 ms without (≈ 778 tokens/s); the prompt takes about 2.8 ms.
//! The test file's `bench_llama_1b_shape` measures it.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as blas_result, sys as blas_sys};
use cudarc::driver::{result, sys, CudaFunction, CudaGraph};
use tensor_core::decoder::{check_tokens, DecoderSpec, FusedDecoder, Weight};
use tensor_core::{BackendDevice, DType, Device, Error, HostData, Result, Tensor};

use crate::error::{backend, drv};
use crate::kernels::ModuleSrc;
use crate::{copy, CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "decoder",
    src: include_str!("../kernels/decoder.cu"),
};

/// Most tokens of a prompt run through the layers at once; longer prompts go in chunks.
pub const PREFILL_CHUNK: usize = 512;
/// Threads per block of the matrix-vector kernels (one weight row per warp at a time).
const MV_BLOCK: u32 = 256;
/// The attention kernel's warps per block (`AT_WARPS`).
const AT_WARPS: u32 = 8;
/// Most key splits of a decode step's attention (`AT_MAXS`).
const AT_MAXS: usize = 64;
/// Keys per warp step of the attention kernel.
const AT_CHUNK: usize = 32;

/// The attention kernel's query heads per block `G` (the largest power of two ≤ 8 and ≤ the
/// heads per KV head) and values per lane `D` (≥ head dim / 32), its name's suffixes.
fn attn_geometry(group: usize, hd: usize) -> (usize, usize) {
    let g = [8, 4, 2, 1].into_iter().find(|&g| g <= group).unwrap_or(1);
    let d = match hd {
        0..=64 => 2,
        65..=128 => 4,
        _ => 8,
    };
    (g, d)
}

/// The fused decoder for `spec` on the CUDA device `dev`, or `None` when this engine cannot
/// run it: a weight that is quantized, not on `dev`, or not f32/f16/bf16, or a head dim that
/// is not a multiple of 8 up to 256 (the model then runs its module graph).
pub(crate) fn fused_decoder(
    dev: &CudaDevice,
    spec: &DecoderSpec,
) -> Result<Option<Box<dyn FusedDecoder>>> {
    let Some(arc) = crate::as_cuda(spec.final_norm.device()) else {
        return Ok(None);
    };
    if !std::ptr::eq(Arc::as_ptr(&arc), dev) {
        return Ok(None);
    }
    Ok(match CudaDecoder::build(arc, spec, graph_from_env())? {
        Built::Ready(d) => Some(d),
        Built::Unsupported(_) => None,
    })
}

/// A CUDA fused decoder for `spec`, whose weights must be dense f32/f16/bf16 tensors on the
/// CUDA device `dev` (any other spec is an error saying why). This is the constructor for
/// benchmarks and tests that build a [`DecoderSpec`] themselves, without a model file; model
/// loaders go through `Device::backend().fused_decoder(spec)`, which answers `None` instead
/// of an error for specs this engine does not run.
///
/// Everything is allocated here: the KV cache for `spec.max_positions` positions, the
/// activations of one decode step and of a prompt chunk, the logits. The first single-token
/// `forward` captures the decode step as a CUDA graph, replayed by every later one, unless the
/// environment sets `TENSOR_ENGINE_NO_CUDA_GRAPH=1` (see [`engine_with`]). Use one decoder
/// from one thread at a time, with no other work queued on the device while a step is being
/// captured.
pub fn engine(dev: &Device, spec: &DecoderSpec) -> Result<Box<dyn FusedDecoder>> {
    engine_with(dev, spec, graph_from_env())
}

/// [`engine`] with the CUDA graph chosen by the caller: `cuda_graph == false` launches the
/// decode step's kernels one by one (the same kernels, so the same logits; for debugging and
/// for measuring what the graph saves).
pub fn engine_with(
    dev: &Device,
    spec: &DecoderSpec,
    cuda_graph: bool,
) -> Result<Box<dyn FusedDecoder>> {
    let cuda = crate::as_cuda(dev).ok_or_else(|| {
        Error::msg(format!(
            "cuda fused decoder: {} is not a CUDA device",
            dev.name()
        ))
    })?;
    match CudaDecoder::build(cuda, spec, cuda_graph)? {
        Built::Ready(d) => Ok(d),
        Built::Unsupported(why) => Err(Error::msg(format!("cuda fused decoder: {why}"))),
    }
}

/// Whether the environment allows the CUDA graph (`TENSOR_ENGINE_NO_CUDA_GRAPH` unset, empty
/// or `0`).
fn graph_from_env() -> bool {
    std::env::var("TENSOR_ENGINE_NO_CUDA_GRAPH")
        .map(|v| v.is_empty() || v == "0")
        .unwrap_or(true)
}

enum Built {
    Ready(Box<CudaDecoder>),
    Unsupported(String),
}

/// One kernel argument, as the kernel declares it.
#[derive(Clone, Copy)]
enum Arg {
    /// A device pointer (0 for "none").
    P(u64),
    U(u32),
    F(f32),
}

const MAX_ARGS: usize = 20;

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
    /// Outputs of the concatenated q|k|v products.
    fn qkv(&self) -> usize {
        self.qd() + 2 * self.kvd()
    }
}

/// Device addresses of one layer.
struct LayerPtrs {
    wq: u64,
    wk: u64,
    wv: u64,
    wo: u64,
    wg: u64,
    wu: u64,
    wd: u64,
    /// f32 norm weights.
    attn_norm: u64,
    ffn_norm: u64,
    /// f32 `[qd + 2·kvd]` q|k|v bias, or 0.
    bias: u64,
    /// `[max_positions, kvd]` in the weights' dtype.
    kc: u64,
    vc: u64,
}

struct Funcs {
    embed: CudaFunction,
    mv_plain: CudaFunction,
    mv_swiglu: CudaFunction,
    mv_qkv: CudaFunction,
    attn: CudaFunction,
    rmsrows: CudaFunction,
    qkvpost: CudaFunction,
    swiglu: CudaFunction,
    tocast: CudaFunction,
    argmax: CudaFunction,
}

/// Launch geometry of the decode step's kernels.
struct Grids {
    qkv: u32,
    o: u32,
    swiglu: u32,
    down: u32,
    head: u32,
    /// Attention blocks: head batches × key splits.
    at_units: u32,
    at_splits: u32,
    at_smem: u32,
}

/// Page-locked host memory (for the per-step token/position upload and the logits).
struct Pinned<T: Copy> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: plain host memory owned by this value.
unsafe impl<T: Copy> Send for Pinned<T> {}

impl<T: Copy> Pinned<T> {
    fn new(dev: &CudaDevice, len: usize) -> Result<Pinned<T>> {
        dev.context()
            .bind_to_thread()
            .map_err(drv("bind context"))?;
        let bytes = (len.max(1) * std::mem::size_of::<T>()).max(64);
        // SAFETY: a fresh page-locked allocation, freed in `drop`.
        let ptr = unsafe { result::malloc_host(bytes, 0) }.map_err(drv("cuMemHostAlloc"))?;
        Ok(Pinned {
            ptr: ptr as *mut T,
            len,
        })
    }
    fn as_slice(&self) -> &[T] {
        // SAFETY: `len` elements were allocated (the contents are plain data).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy> Drop for Pinned<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by `malloc_host`; no copy into or out of it is in flight (every
        // forward waits for its copies).
        let _ = unsafe { result::free_host(self.ptr as *mut c_void) };
    }
}

/// The captured decode step.
struct Graph(CudaGraph);
// SAFETY: the graph is only launched or destroyed by its decoder, which `&mut self` makes
// exclusive (graphs must not be used from two threads at once, which this upholds).
unsafe impl Send for Graph {}

/// A fused decoder on one CUDA device. See the module documentation.
pub struct CudaDecoder {
    dev: Arc<CudaDevice>,
    dims: Dims,
    /// dtype of every weight matrix and of the KV cache.
    wdt: DType,
    f: Funcs,
    layers: Vec<LayerPtrs>,
    emb: u64,
    lm_head: u64,
    final_norm: u64,
    /// `[max_positions, hd / 2]` f32 each.
    cos: u64,
    sin: u64,
    /// `[1 + PREFILL_CHUNK]` u32: the position of the first new token, then the tokens.
    inp: u64,
    x: u64,
    xn: u64,
    qkv: u64,
    q: u64,
    att: u64,
    g: u64,
    u: u64,
    logits: u64,
    part: u64,
    cnt: u64,
    /// `[chunk, vocab]` f32 for prompts that want every token's logits (made on first use).
    logits_all: Option<CudaStorage>,
    chunk: usize,
    grids: Grids,
    /// Tensors whose memory the pointers above borrow, and buffers this decoder owns.
    _tensors: Vec<Tensor>,
    _bufs: Vec<CudaStorage>,
    host_in: Pinned<u32>,
    host_logits: Pinned<f32>,
    /// The greedy pick: one u32 on the device and its pinned host copy.
    pick: CudaStorage,
    host_pick: Pinned<u32>,
    graph: Option<Graph>,
    use_graph: bool,
    len: usize,
    max_positions: usize,
}

/// The storage of `t` with its layout, if it lives on `dev`.
fn storage_on<R>(
    dev: &Arc<CudaDevice>,
    t: &Tensor,
    f: impl FnOnce(&CudaStorage, &tensor_core::Layout) -> Result<R>,
) -> Result<Option<R>> {
    match crate::as_cuda(t.device()) {
        Some(d) if Arc::ptr_eq(&d, dev) => crate::with_storage(t, f).map(Some),
        _ => Ok(None),
    }
}

/// Collects device pointers to weights while building a decoder, copying what must be copied.
struct Loader<'a> {
    dev: &'a Arc<CudaDevice>,
    wdt: DType,
    tensors: Vec<Tensor>,
    bufs: Vec<CudaStorage>,
}

impl Loader<'_> {
    /// `[rows, cols]` weight matrix in `wdt`, contiguous and 16-byte aligned.
    fn mat(&mut self, w: &Weight, rows: usize, cols: usize, name: &str) -> Result<u64> {
        let Weight::Dense(t) = w else {
            unreachable!("checked by `unsupported`")
        };
        if t.dims() != [rows, cols] {
            return Err(Error::msg(format!(
                "fused decoder: {name} is {:?}, expected [{rows}, {cols}]",
                t.dims()
            )));
        }
        let wdt = self.wdt;
        let dev = self.dev.clone();
        let r = storage_on(self.dev, t, |s, l| {
            let ptr = s.ptr_at(l.offset());
            if s.dtype == wdt && l.is_contiguous() && ptr % 16 == 0 {
                Ok((ptr, None))
            } else {
                let c = copy::cast(&dev, s, l, wdt)?;
                Ok((c.ptr(), Some(c)))
            }
        })?
        .ok_or_else(|| Error::msg(format!("fused decoder: {name} is not on this device")))?;
        match r.1 {
            Some(c) => self.bufs.push(c),
            None => self.tensors.push(t.clone()),
        }
        Ok(r.0)
    }

    /// An f32 copy of a vector of `len` values.
    fn vec(&mut self, t: &Tensor, len: usize, name: &str) -> Result<u64> {
        if t.elem_count() != len {
            return Err(Error::msg(format!(
                "fused decoder: {name} has {} values, expected {len}",
                t.elem_count()
            )));
        }
        let dev = self.dev.clone();
        let c = storage_on(self.dev, t, |s, l| copy::cast(&dev, s, l, DType::F32))?
            .ok_or_else(|| Error::msg(format!("fused decoder: {name} is not on this device")))?;
        let p = c.ptr();
        self.bufs.push(c);
        Ok(p)
    }

    fn alloc(&mut self, n: usize, dtype: DType) -> Result<u64> {
        let s = self.dev.alloc(n.max(1), dtype)?;
        let p = s.ptr();
        self.bufs.push(s);
        Ok(p)
    }

    fn zeros(&mut self, n: usize, dtype: DType) -> Result<u64> {
        let s = self.dev.zeros(n.max(1), dtype)?;
        let p = s.ptr();
        self.bufs.push(s);
        Ok(p)
    }
}

/// Why this engine cannot run `spec` on `dev`, if it cannot.
fn unsupported(dev: &Arc<CudaDevice>, spec: &DecoderSpec) -> Option<String> {
    let on_dev = |t: &Tensor| matches!(crate::as_cuda(t.device()), Some(d) if Arc::ptr_eq(&d, dev));
    let float = |t: &Tensor| matches!(t.dtype(), DType::F16 | DType::BF16 | DType::F32);
    let mut mats: Vec<(&Weight, String)> = vec![
        (&spec.embedding, "embedding".into()),
        (&spec.lm_head, "lm_head".into()),
    ];
    let mut vecs: Vec<(&Tensor, String)> = vec![(&spec.final_norm, "final norm".into())];
    for (i, l) in spec.layers.iter().enumerate() {
        for (w, n) in [
            (&l.wq, "q"),
            (&l.wk, "k"),
            (&l.wv, "v"),
            (&l.wo, "o"),
            (&l.w_gate, "gate"),
            (&l.w_up, "up"),
            (&l.w_down, "down"),
        ] {
            mats.push((w, format!("layer {i} {n}")));
        }
        vecs.push((&l.attn_norm, format!("layer {i} attn_norm")));
        vecs.push((&l.ffn_norm, format!("layer {i} ffn_norm")));
        for (b, n) in [(&l.bq, "q bias"), (&l.bk, "k bias"), (&l.bv, "v bias")] {
            if let Some(b) = b {
                vecs.push((b, format!("layer {i} {n}")));
            }
        }
    }
    for (w, name) in &mats {
        match w {
            Weight::Quant(_) => return Some(format!("{name} is quantized")),
            Weight::Dense(t) => {
                if !on_dev(t) {
                    return Some(format!("{name} is not on {}", dev.name()));
                }
                if !float(t) {
                    return Some(format!("{name} is {}, not f32/f16/bf16", t.dtype()));
                }
            }
        }
    }
    for (t, name) in &vecs {
        if !on_dev(t) {
            return Some(format!("{name} is not on {}", dev.name()));
        }
        if !t.dtype().is_float() {
            return Some(format!("{name} is {}", t.dtype()));
        }
    }
    let (hd, d, ff) = (spec.head_dim, spec.hidden_size, spec.intermediate_size);
    if hd == 0 || !hd.is_multiple_of(8) || hd > 256 {
        return Some(format!(
            "head dim {hd}: this engine runs multiples of 8 up to 256"
        ));
    }
    if !d.is_multiple_of(8) || !ff.is_multiple_of(8) {
        return Some(format!(
            "hidden size {d}, intermediate size {ff}: this engine runs multiples of 8"
        ));
    }
    if spec.layers.is_empty() {
        return Some("the spec has no layers".into());
    }
    None
}

fn dtype_of(w: &Weight) -> DType {
    match w {
        Weight::Dense(t) => t.dtype(),
        Weight::Quant(_) => DType::F32,
    }
}

impl CudaDecoder {
    fn build(dev: Arc<CudaDevice>, spec: &DecoderSpec, use_graph: bool) -> Result<Built> {
        spec.validate()?;
        if let Some(why) = unsupported(&dev, spec) {
            return Ok(Built::Unsupported(why));
        }
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
        let (d, qd, kvd, ff, vocab) = (dims.d, dims.qd(), dims.kvd(), dims.ff, dims.vocab);
        let max_positions = s.max_positions.max(1);
        let wdt = dtype_of(&s.layers[0].wq);
        let mut ld = Loader {
            dev: &dev,
            wdt,
            tensors: Vec::new(),
            bufs: Vec::new(),
        };

        // Weights.
        let mut layers = Vec::with_capacity(s.layers.len());
        for (i, l) in s.layers.iter().enumerate() {
            let n = |what: &str| format!("layer {i} {what}");
            let bias = if l.bq.is_some() || l.bk.is_some() || l.bv.is_some() {
                let all = ld.zeros(dims.qkv(), DType::F32)?;
                for (b, off, len, what) in [
                    (&l.bq, 0, qd, "q bias"),
                    (&l.bk, qd, kvd, "k bias"),
                    (&l.bv, qd + kvd, kvd, "v bias"),
                ] {
                    if let Some(b) = b {
                        let src = ld.vec(b, len, &n(what))?;
                        // SAFETY: both buffers hold the `len` f32 copied, on our stream.
                        unsafe {
                            result::memcpy_dtod_async(
                                all + (off * 4) as u64,
                                src,
                                len * 4,
                                dev.stream().cu_stream(),
                            )
                        }
                        .map_err(drv("copy bias"))?;
                    }
                }
                all
            } else {
                0
            };
            let kc = ld.alloc(max_positions * kvd, wdt)?;
            let vc = ld.alloc(max_positions * kvd, wdt)?;
            layers.push(LayerPtrs {
                wq: ld.mat(&l.wq, qd, d, &n("q"))?,
                wk: ld.mat(&l.wk, kvd, d, &n("k"))?,
                wv: ld.mat(&l.wv, kvd, d, &n("v"))?,
                wo: ld.mat(&l.wo, d, qd, &n("o"))?,
                wg: ld.mat(&l.w_gate, ff, d, &n("gate"))?,
                wu: ld.mat(&l.w_up, ff, d, &n("up"))?,
                wd: ld.mat(&l.w_down, d, ff, &n("down"))?,
                attn_norm: ld.vec(&l.attn_norm, d, &n("attn_norm"))?,
                ffn_norm: ld.vec(&l.ffn_norm, d, &n("ffn_norm"))?,
                bias,
                kc,
                vc,
            });
        }
        let lm_head = ld.mat(&s.lm_head, vocab, d, "lm_head")?;
        let final_norm = ld.vec(&s.final_norm, d, "final norm")?;
        // The embedding is only gathered: any float dtype, contiguous.
        let Weight::Dense(et) = &s.embedding else {
            unreachable!("checked by `unsupported`")
        };
        if et.dims() != [vocab, d] {
            return Err(Error::msg(format!(
                "fused decoder: embedding is {:?}, expected [{vocab}, {d}]",
                et.dims()
            )));
        }
        let emb_dt = et.dtype();
        let dev2 = dev.clone();
        let (emb, emb_copy) = storage_on(&dev, et, |st, l| {
            if l.is_contiguous() {
                Ok((st.ptr_at(l.offset()), None))
            } else {
                let c = copy::copy_strided(&dev2, st, l)?;
                Ok((c.ptr(), Some(c)))
            }
        })?
        .ok_or_else(|| Error::msg("fused decoder: the embedding is not on this device"))?;
        match emb_copy {
            Some(c) => ld.bufs.push(c),
            None => ld.tensors.push(et.clone()),
        }

        // RoPE tables, computed as the CPU decoder does.
        let half = dims.hd / 2;
        let mut cos = vec![0f32; max_positions * half];
        let mut sin = vec![0f32; max_positions * half];
        for p in 0..max_positions {
            for (i, f) in s.rope_inv_freq.iter().enumerate() {
                let (sv, cv) = (p as f32 * f).sin_cos();
                cos[p * half + i] = cv;
                sin[p * half + i] = sv;
            }
        }
        let cos = copy::from_host(&dev, HostData::F32(cos))?;
        let sin = copy::from_host(&dev, HostData::F32(sin))?;
        let (cos_p, sin_p) = (cos.ptr(), sin.ptr());
        ld.bufs.push(cos);
        ld.bufs.push(sin);

        // Kernels.
        let t = wdt.as_str();
        let func = |name: String| dev.func(&MODULE, &name);
        let (at_g, at_d) = attn_geometry(dims.nh / dims.nkv, dims.hd);
        let f = Funcs {
            embed: func(format!("dec_embed_{}", emb_dt.as_str()))?,
            mv_plain: func(format!("dec_mv_plain_{t}"))?,
            mv_swiglu: func(format!("dec_mv_swiglu_{t}"))?,
            mv_qkv: func(format!("dec_mv_qkv_{t}"))?,
            attn: func(format!("dec_attn_{t}_g{at_g}_d{at_d}"))?,
            rmsrows: func(format!("dec_rmsrows_{t}"))?,
            qkvpost: func(format!("dec_qkvpost_{t}"))?,
            swiglu: func(format!("dec_swiglu_{t}"))?,
            tocast: func(format!("dec_tocast_{t}"))?,
            argmax: func("dec_argmax".to_string())?,
        };
        // The products stage their input vector (K f32) in dynamic shared memory.
        let maxk = d.max(qd).max(ff);
        let smem_max = (maxk * 4) as i32;
        if smem_max > 48 * 1024 {
            for fun in [&f.mv_plain, &f.mv_swiglu, &f.mv_qkv] {
                fun.set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem_max,
                )
                .map_err(drv(
                    "raising the shared memory limit of the decoder's products",
                ))?;
            }
        }
        let at_smem = at_g * dims.hd * (1 + AT_WARPS as usize) * 4;
        if at_smem > 48 * 1024 {
            f.attn
                .set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    at_smem as i32,
                )
                .map_err(drv(
                    "raising the shared memory limit of the decoder's attention",
                ))?;
        }
        let sm = dev.sm_count();
        let blocks = |fun: &CudaFunction, units: usize, k: usize| -> u32 {
            let per_sm = fun
                .occupancy_max_active_blocks_per_multiprocessor(MV_BLOCK, k * 4, None)
                .unwrap_or(2)
                .max(1);
            let want = units.div_ceil((MV_BLOCK / 32) as usize).max(1);
            want.min((sm * per_sm) as usize) as u32
        };
        let nbg = (dims.nh / dims.nkv).div_ceil(at_g);
        let at_units = (dims.nkv * nbg) as u32;
        let max_steps = max_positions.div_ceil(AT_CHUNK).div_ceil(AT_WARPS as usize);
        let at_splits = ((2 * sm).div_ceil(at_units) as usize)
            .clamp(1, max_steps.max(1))
            .min(AT_MAXS) as u32;
        let grids = Grids {
            qkv: blocks(&f.mv_qkv, dims.qkv() / 2, d),
            o: blocks(&f.mv_plain, d, qd),
            swiglu: blocks(&f.mv_swiglu, ff, d),
            down: blocks(&f.mv_plain, d, ff),
            head: blocks(&f.mv_plain, vocab, d),
            at_units,
            at_splits,
            at_smem: at_smem as u32,
        };

        // Buffers.
        let chunk = max_positions.min(PREFILL_CHUNK);
        let inp = ld.alloc(1 + chunk, DType::U32)?;
        let x = ld.alloc(chunk * d, DType::F32)?;
        let xn = ld.alloc(chunk * maxk, wdt)?;
        let qkv = ld.alloc(chunk * dims.qkv(), DType::F32)?;
        let q = ld.alloc(chunk * qd, DType::F32)?;
        let att = ld.alloc(chunk * qd, DType::F32)?;
        let g = ld.alloc(chunk * ff, DType::F32)?;
        let u = ld.alloc(chunk * ff, DType::F32)?;
        let logits = ld.alloc(vocab, DType::F32)?;
        let part = ld.alloc(dims.nh * at_splits as usize * (dims.hd + 2), DType::F32)?;
        let cnt = ld.zeros(at_units as usize, DType::U32)?;
        let host_in = Pinned::new(&dev, 1 + chunk)?;
        let host_logits = Pinned::new(&dev, vocab)?;
        let pick = dev.alloc(1, DType::U32)?;
        let host_pick = Pinned::new(&dev, 1)?;
        let Loader { tensors, bufs, .. } = ld;
        dev.stream().synchronize().map_err(drv("synchronize"))?;
        Ok(Built::Ready(Box::new(CudaDecoder {
            dev,
            dims,
            wdt,
            f,
            layers,
            emb,
            lm_head,
            final_norm,
            cos: cos_p,
            sin: sin_p,
            inp,
            x,
            xn,
            qkv,
            q,
            att,
            g,
            u,
            logits,
            part,
            cnt,
            logits_all: None,
            chunk,
            grids,
            _tensors: tensors,
            _bufs: bufs,
            host_in,
            host_logits,
            pick,
            host_pick,
            graph: None,
            use_graph,
            len: 0,
            max_positions,
        })))
    }

    /// Queue kernel `f` on the device stream.
    fn launch(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        debug_assert!(args.len() <= MAX_ARGS);
        let mut store = [Arg::U(0); MAX_ARGS];
        store[..args.len()].copy_from_slice(args);
        let mut ptrs = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for (p, a) in ptrs.iter_mut().zip(store.iter_mut()) {
            *p = match a {
                Arg::P(v) => v as *mut u64 as *mut c_void,
                Arg::U(v) => v as *mut u32 as *mut c_void,
                Arg::F(v) => v as *mut f32 as *mut c_void,
            };
        }
        // SAFETY: every kernel of decoder.cu is called from one place below with its
        // parameters in order (pointers as `Arg::P`, u32 as `Arg::U`, float as `Arg::F`); the
        // driver copies the values during the call; pointers address live buffers.
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                grid,
                (block, 1, 1),
                smem,
                self.dev.stream().cu_stream(),
                &mut ptrs[..args.len()],
            )
        }
        .map_err(|e| backend(format!("fused decoder: kernel launch failed: {e}")))
    }

    fn posp(&self) -> u64 {
        self.inp
    }
    fn tokp(&self) -> u64 {
        self.inp + 4
    }

    /// Row-major `c[m, n] (= | +=) x[m, :] · w[n, :]` for `m < rows`, `n < n_out`, over `k`:
    /// `w` and `x` in the weights' dtype, `c` f32 with row stride `ldc`; `accumulate` adds.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        w: u64,
        x: u64,
        c: u64,
        n_out: usize,
        rows: usize,
        k: usize,
        ldc: usize,
        accumulate: bool,
    ) -> Result<()> {
        use blas_sys::cudaDataType::{CUDA_R_16BF, CUDA_R_16F, CUDA_R_32F};
        let ty = match self.wdt {
            DType::BF16 => CUDA_R_16BF,
            DType::F16 => CUDA_R_16F,
            _ => CUDA_R_32F,
        };
        let alpha = 1f32;
        let beta = if accumulate { 1f32 } else { 0f32 };
        let blas = self.dev.blas();
        // SAFETY: `w` holds `n_out × k`, `x` `rows × k` values of `ty`, `c` `rows` rows of
        // `ldc ≥ n_out` f32; alpha/beta are host scalars (the handle's default pointer mode).
        // Column-major: cᵀ[n_out, rows] = (wᵀ)ᵀ · xᵀ with w seen as [k, n_out].
        unsafe {
            blas_result::gemm_ex(
                *blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n_out as i32,
                rows as i32,
                k as i32,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                ty,
                k as i32,
                x as *const c_void,
                ty,
                k as i32,
                &beta as *const f32 as *const c_void,
                c as *mut c_void,
                CUDA_R_32F,
                ldc as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| backend(format!("fused decoder: cublasGemmEx: {e}")))
    }

    /// The decode step's kernels: the token at `*tokp`, position `*posp`, logits into
    /// `self.logits`. Nothing here depends on the position, so it can be captured.
    fn decode_kernels(&self) -> Result<()> {
        use Arg::{F, P, U};
        let dm = self.dims;
        let (d, qd, ff) = (dm.d as u32, dm.qd() as u32, dm.ff as u32);
        let gr = &self.grids;
        let eps = dm.eps;
        let mv = MV_BLOCK;
        let scale = 1.0 / (dm.hd as f32).sqrt();
        self.launch(
            &self.f.embed,
            (d.div_ceil(256), 1, 1),
            256,
            0,
            &[P(self.emb), P(self.tokp()), P(self.x), U(d), U(1)],
        )?;
        for l in &self.layers {
            self.launch(
                &self.f.mv_qkv,
                (gr.qkv, 1, 1),
                mv,
                d * 4,
                &[
                    P(l.wq),
                    P(l.wk),
                    P(l.wv),
                    P(self.x),
                    P(l.attn_norm),
                    F(eps),
                    P(l.bias),
                    P(self.cos),
                    P(self.sin),
                    P(self.posp()),
                    P(self.q),
                    P(l.kc),
                    P(l.vc),
                    U(d),
                    U(dm.nh as u32),
                    U(dm.nkv as u32),
                    U(dm.hd as u32),
                    U(dm.interleaved as u32),
                ],
            )?;
            self.launch(
                &self.f.attn,
                (gr.at_units, gr.at_splits, 1),
                AT_WARPS * 32,
                gr.at_smem,
                &[
                    P(self.q),
                    P(l.kc),
                    P(l.vc),
                    P(self.att),
                    P(self.part),
                    P(self.cnt),
                    P(self.posp()),
                    U(dm.nh as u32),
                    U(dm.nkv as u32),
                    U(dm.hd as u32),
                    F(scale),
                ],
            )?;
            self.launch(
                &self.f.mv_plain,
                (gr.o, 1, 1),
                mv,
                qd * 4,
                &[
                    P(l.wo),
                    P(self.att),
                    P(0),
                    F(eps),
                    P(self.x),
                    U(d),
                    U(qd),
                    U(1),
                ],
            )?;
            self.launch(
                &self.f.mv_swiglu,
                (gr.swiglu, 1, 1),
                mv,
                d * 4,
                &[
                    P(l.wg),
                    P(l.wu),
                    P(self.x),
                    P(l.ffn_norm),
                    F(eps),
                    P(self.g),
                    U(ff),
                    U(d),
                ],
            )?;
            self.launch(
                &self.f.mv_plain,
                (gr.down, 1, 1),
                mv,
                ff * 4,
                &[
                    P(l.wd),
                    P(self.g),
                    P(0),
                    F(eps),
                    P(self.x),
                    U(d),
                    U(ff),
                    U(1),
                ],
            )?;
        }
        self.launch(
            &self.f.mv_plain,
            (gr.head, 1, 1),
            mv,
            d * 4,
            &[
                P(self.lm_head),
                P(self.x),
                P(self.final_norm),
                F(eps),
                P(self.logits),
                U(dm.vocab as u32),
                U(d),
                U(0),
            ],
        )
    }

    /// One token at position `self.len`: logits into `host_logits[..vocab]`.
    /// Validate a call's tokens (ids in the vocabulary, room in the cache) and bind the
    /// context to this thread.
    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        check_tokens(tokens, self.dims.vocab, self.len, self.max_positions)?;
        self.dev
            .context()
            .bind_to_thread()
            .map_err(drv("bind context"))
    }

    fn decode(&mut self, token: u32, greedy: bool) -> Result<()> {
        let stream = self.dev.stream().clone();
        {
            let h = self.host_in.as_mut_slice();
            h[0] = self.len as u32;
            h[1] = token;
        }
        // SAFETY: 8 bytes of pinned memory into the 4 + 4·chunk byte input buffer; the host
        // writes `host_in` again only after a later synchronisation.
        unsafe {
            result::memcpy_htod_async(self.inp, &self.host_in.as_slice()[..2], stream.cu_stream())
        }
        .map_err(drv("upload token"))?;
        if self.use_graph && self.graph.is_none() {
            self.capture()?;
        }
        match &self.graph {
            Some(g) => g.0.launch().map_err(drv("launching the decode graph"))?,
            None => self.decode_kernels()?,
        }
        let vocab = self.dims.vocab;
        let logits = self.logits;
        if greedy {
            let pick = self.pick.ptr();
            self.launch(
                &self.f.argmax,
                (1, 1, 1),
                1024,
                0,
                &[Arg::P(logits), Arg::U(vocab as u32), Arg::P(pick)],
            )?;
            // SAFETY: one u32 from our pick buffer into pinned memory, waited for below.
            unsafe {
                result::memcpy_dtoh_async(self.host_pick.as_mut_slice(), pick, stream.cu_stream())
            }
            .map_err(drv("copy the greedy pick"))?;
        } else {
            // SAFETY: `vocab` f32 from our logits buffer into pinned memory, waited for below.
            unsafe {
                result::memcpy_dtoh_async(
                    &mut self.host_logits.as_mut_slice()[..vocab],
                    logits,
                    stream.cu_stream(),
                )
            }
            .map_err(drv("copy logits"))?;
        }
        stream.synchronize().map_err(drv("synchronize"))
    }

    /// Capture the decode step as a graph; on any capture failure run without one.
    fn capture(&mut self) -> Result<()> {
        let stream = self.dev.stream().clone();
        if stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .is_err()
        {
            self.use_graph = false;
            return Ok(());
        }
        let queued = self.decode_kernels();
        let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        queued?;
        match ended {
            Ok(Some(g)) => {
                // Uploading is an optimisation only.
                let _ = g.upload();
                self.graph = Some(Graph(g));
            }
            _ => self.use_graph = false,
        }
        Ok(())
    }

    /// Tokens at positions `pos..` (at most `self.chunk` of them) through the layers; with
    /// `head = Some((all, out_row))` the logits of the last (`all == false`) or of every token
    /// then go to `host_logits[out_row * vocab ..]`.
    fn prefill_chunk(
        &mut self,
        tokens: &[u32],
        pos: usize,
        head: Option<(bool, usize)>,
    ) -> Result<()> {
        use Arg::{P, U};
        let stream = self.dev.stream().clone();
        let dm = self.dims;
        let m = tokens.len();
        let (d, qd, kvd, ff, vocab) = (dm.d, dm.qd(), dm.kvd(), dm.ff, dm.vocab);
        {
            let h = self.host_in.as_mut_slice();
            h[0] = pos as u32;
            h[1..1 + m].copy_from_slice(tokens);
        }
        // SAFETY: 1 + m ≤ 1 + chunk u32 from pinned memory; waited for before `host_in` is
        // written again (every chunk ends with a synchronisation).
        unsafe {
            result::memcpy_htod_async(
                self.inp,
                &self.host_in.as_slice()[..1 + m],
                stream.cu_stream(),
            )
        }
        .map_err(drv("upload tokens"))?;
        let m32 = m as u32;
        let blocks = |n: usize| (n.div_ceil(256) as u32).clamp(1, self.dev.max_blocks());
        self.launch(
            &self.f.embed,
            (blocks(m * d), 1, 1),
            256,
            0,
            &[P(self.emb), P(self.tokp()), P(self.x), U(d as u32), U(m32)],
        )?;
        let eps = dm.eps;
        let scale = 1.0 / (dm.hd as f32).sqrt();
        for l in &self.layers {
            self.launch(
                &self.f.rmsrows,
                (m32, 1, 1),
                256,
                0,
                &[
                    P(self.x),
                    P(l.attn_norm),
                    P(self.xn),
                    U(d as u32),
                    Arg::F(eps),
                ],
            )?;
            let tot = dm.qkv();
            self.gemm(l.wq, self.xn, self.qkv, qd, m, d, tot, false)?;
            self.gemm(
                l.wk,
                self.xn,
                self.qkv + (qd * 4) as u64,
                kvd,
                m,
                d,
                tot,
                false,
            )?;
            self.gemm(
                l.wv,
                self.xn,
                self.qkv + ((qd + kvd) * 4) as u64,
                kvd,
                m,
                d,
                tot,
                false,
            )?;
            let npairs = tot / 2;
            self.launch(
                &self.f.qkvpost,
                (blocks(m * npairs), 1, 1),
                256,
                0,
                &[
                    P(self.qkv),
                    P(l.bias),
                    P(self.cos),
                    P(self.sin),
                    P(self.posp()),
                    P(self.q),
                    P(l.kc),
                    P(l.vc),
                    U(m32),
                    U(dm.nh as u32),
                    U(dm.nkv as u32),
                    U(dm.hd as u32),
                    U(dm.interleaved as u32),
                ],
            )?;
            self.launch(
                &self.f.attn,
                (self.grids.at_units, 1, m32),
                AT_WARPS * 32,
                self.grids.at_smem,
                &[
                    P(self.q),
                    P(l.kc),
                    P(l.vc),
                    P(self.att),
                    P(0),
                    P(0),
                    P(self.posp()),
                    U(dm.nh as u32),
                    U(dm.nkv as u32),
                    U(dm.hd as u32),
                    Arg::F(scale),
                ],
            )?;
            self.launch(
                &self.f.tocast,
                (blocks(m * qd), 1, 1),
                256,
                0,
                &[P(self.att), P(self.xn), U((m * qd) as u32)],
            )?;
            self.gemm(l.wo, self.xn, self.x, d, m, qd, d, true)?;
            self.launch(
                &self.f.rmsrows,
                (m32, 1, 1),
                256,
                0,
                &[
                    P(self.x),
                    P(l.ffn_norm),
                    P(self.xn),
                    U(d as u32),
                    Arg::F(eps),
                ],
            )?;
            self.gemm(l.wg, self.xn, self.g, ff, m, d, ff, false)?;
            self.gemm(l.wu, self.xn, self.u, ff, m, d, ff, false)?;
            self.launch(
                &self.f.swiglu,
                (blocks(m * ff), 1, 1),
                256,
                0,
                &[P(self.g), P(self.u), P(self.xn), U((m * ff) as u32)],
            )?;
            self.gemm(l.wd, self.xn, self.x, d, m, ff, d, true)?;
        }
        // The head, for the rows whose logits are wanted.
        if let Some((all, out_row)) = head {
            let (r0, rows) = if all { (0, m) } else { (m - 1, 1) };
            self.launch(
                &self.f.rmsrows,
                (rows as u32, 1, 1),
                256,
                0,
                &[
                    P(self.x + (r0 * d * 4) as u64),
                    P(self.final_norm),
                    P(self.xn),
                    U(d as u32),
                    Arg::F(eps),
                ],
            )?;
            let out = if rows == 1 {
                self.logits
            } else {
                if self.logits_all.is_none() {
                    self.logits_all = Some(self.dev.alloc(self.chunk * vocab, DType::F32)?);
                }
                self.logits_all.as_ref().map(|s| s.ptr()).unwrap_or(0)
            };
            self.gemm(self.lm_head, self.xn, out, vocab, rows, d, vocab, false)?;
            let dst =
                &mut self.host_logits.as_mut_slice()[out_row * vocab..(out_row + rows) * vocab];
            // SAFETY: `rows × vocab` f32 into pinned memory that holds them, waited for below.
            unsafe { result::memcpy_dtoh_async(dst, out, stream.cu_stream()) }
                .map_err(drv("copy logits"))?;
        }
        stream.synchronize().map_err(drv("synchronize"))
    }
}

impl FusedDecoder for CudaDecoder {
    fn forward_argmax(&mut self, tokens: &[u32]) -> Result<u32> {
        if tokens.len() != 1 {
            return Ok(tensor_core::decoder::argmax_f32(
                self.forward(tokens, false)?,
            ));
        }
        self.check_tokens(tokens)?;
        self.decode(tokens[0], true)?;
        self.len += 1;
        Ok(self.host_pick.as_slice()[0])
    }

    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<&[f32]> {
        self.check_tokens(tokens)?;
        let t = tokens.len();
        let vocab = self.dims.vocab;
        let end = self.len + t;
        let rows = if all_logits { t } else { 1 };
        if rows * vocab > self.host_logits.len {
            self.host_logits = Pinned::new(&self.dev, rows * vocab)?;
        }
        if t == 1 {
            self.decode(tokens[0], false)?;
        } else {
            let mut done = 0;
            while done < t {
                let n = (t - done).min(self.chunk);
                let last = done + n == t;
                // Only the last chunk's last row matters unless every row is wanted.
                let head =
                    (all_logits || last).then_some((all_logits, if all_logits { done } else { 0 }));
                self.prefill_chunk(&tokens[done..done + n], self.len + done, head)?;
                done += n;
            }
        }
        self.len = end;
        Ok(&self.host_logits.as_slice()[..rows * vocab])
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
        1
    }
}
