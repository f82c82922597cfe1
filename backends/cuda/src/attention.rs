//! Flash-style attention forward and backward (`kernels/attention.cu`).
//!
//! The forward runs an online softmax over key tiles and never stores the `[Lq, Lk]` scores;
//! when there are too few query blocks to fill the GPU (decoding), the key range is split
//! across blocks and the partial softmax states are merged by a second kernel. The backward
//! is FlashAttention-2's: `delta = rowsum(dO ∘ O)`, then one kernel per key tile for dK/dV
//! (looping over the queries of every head of the GQA group) and one per query tile for dQ,
//! so every output element is written by one block and no atomics are needed.
//!
//! f16/bf16 with a head dim of 32, 64, 96 or 128 (the same for V) run on tensor cores
//! (`mma.sync`, f32 accumulators; the forward only from 16 query rows up); every other case
//! runs SIMT kernels in the compute type (f32, or f64 for f64), whose forward gives each
//! block the query rows of a whole GQA group so that a K/V tile is read once for all of them.
//! Inputs are read in place when their rows are contiguous (and, for the tensor cores,
//! 16-byte aligned), else copied first. Shapes the kernels can't take (shared memory beyond
//! the device's limit) and invalid arguments go to the composite.

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{DeviceRepr, LaunchConfig};
use tensor_core::{composite, AttentionParams, DType, Layout, Result, Tensor};

use crate::copy::copy_strided;
use crate::error::drv;
use crate::kernels::ModuleSrc;
use crate::storage::cuda;
use crate::{launch, CudaDevice, CudaStorage};

pub(crate) static MODULE: ModuleSrc = ModuleSrc {
    name: "attention",
    src: include_str!("../kernels/attention.cu"),
};

/// Row `(b, h, i)` of a `[B, H, L, X]` view starts at `off + b·s0 + h·s1 + i·s2`; the inner
/// stride is 1. The kernels' `AttnRows`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Rows {
    off: u64,
    s0: u64,
    s1: u64,
    s2: u64,
}

/// The kernels' `AttnArgs` (all fields 8 bytes wide, so the layouts agree without padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Args {
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    lse: u64,
    dout: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    bias: u64,
    alibi: u64,
    delta: u64,
    part: u64,
    qr: Rows,
    kr: Rows,
    vr: Rows,
    orr: Rows,
    dor: Rows,
    boff: u64,
    bs: [u64; 4],
    b: u64,
    hq: u64,
    hkv: u64,
    g: u64,
    lq: u64,
    lk: u64,
    d: u64,
    dv_dim: u64,
    window: i64,
    causal: u64,
    scale: f64,
    nsplit: u64,
    rb: u64,
    bk: u64,
}

// SAFETY: plain `repr(C)` data of 8-byte fields, laid out as the kernels' `AttnArgs`.
unsafe impl DeviceRepr for Args {}

/// Keys per tile of the SIMT backward kernels (one per lane).
const SIMT_BK: usize = 32;
/// Warps per block of the SIMT kernels.
const SIMT_WARPS: usize = 8;
/// Most query rows per block of the SIMT forward (a GQA group's rows share each K/V tile).
const SIMT_ROWS: usize = 32;
/// Query rows per block and keys per tile of the tensor-core kernels (4 warps × 16 rows).
const TC_TILE: usize = 64;
/// Head dims the tensor-core kernels are built for.
const TC_DIMS: [usize; 4] = [32, 64, 96, 128];
/// Fewest query rows for the tensor-core forward (below, the SIMT one with split keys).
const TC_MIN_LQ: usize = 16;

/// Shapes of one call.
#[derive(Clone, Copy, Debug)]
struct Geom {
    b: usize,
    hq: usize,
    hkv: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
}

impl Geom {
    fn new(q: &Tensor, k: &Tensor, v: &Tensor) -> Geom {
        let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
        Geom {
            b: qd[0],
            hq: qd[1],
            hkv: kd[1],
            lq: qd[2],
            lk: kd[2],
            d: qd[3],
            dv: vd[3],
        }
    }

    fn tc(&self, dt: DType) -> bool {
        matches!(dt, DType::F16 | DType::BF16) && self.d == self.dv && TC_DIMS.contains(&self.d)
    }
}

/// A device pointer with the row view the kernels read through, and the contiguous copy
/// it points into when the tensor could not be read in place.
struct View {
    ptr: u64,
    rows: Rows,
    _copy: Option<CudaStorage>,
}

/// Contiguous row strides of `[_, h, l, x]`.
fn contiguous_rows(h: usize, l: usize, x: usize) -> Rows {
    Rows {
        off: 0,
        s0: (h * l * x) as u64,
        s1: (l * x) as u64,
        s2: x as u64,
    }
}

/// `[B, H, L, X]` storage as rows: in place when the inner stride is 1 and (for `align` > 1)
/// every row starts at a multiple of `align` elements; else a contiguous copy.
fn view(dev: &CudaDevice, s: &CudaStorage, l: &Layout, align: usize) -> Result<View> {
    crate::check_layout(s, l, "attention")?;
    let (dims, st) = (l.dims(), l.strides());
    // Strides of size-1 dims are never used.
    let eff = |i: usize| if dims[i] <= 1 { 0 } else { st[i] };
    let in_place = (dims[3] <= 1 || st[3] == 1)
        && [l.offset(), eff(0), eff(1), eff(2)]
            .iter()
            .all(|x| x % align == 0);
    if in_place {
        return Ok(View {
            ptr: s.ptr(),
            rows: Rows {
                off: l.offset() as u64,
                s0: eff(0) as u64,
                s1: eff(1) as u64,
                s2: eff(2) as u64,
            },
            _copy: None,
        });
    }
    let c = copy_strided(dev, s, l)?;
    Ok(View {
        ptr: c.ptr(),
        rows: contiguous_rows(dims[1], dims[2], dims[3]),
        _copy: Some(c),
    })
}

/// A storage read as a contiguous vector (in place, or a copy).
fn flat(dev: &CudaDevice, s: &CudaStorage, l: &Layout) -> Result<(u64, Option<CudaStorage>)> {
    crate::check_layout(s, l, "attention")?;
    if l.is_contiguous() {
        Ok((s.ptr_at(l.offset()), None))
    } else {
        let c = copy_strided(dev, s, l)?;
        Ok((c.ptr(), Some(c)))
    }
}

/// Fill the masking, ALiBi, bias and shape fields of `a`; returns the storages that must
/// live until the kernels are queued.
fn fill_common(
    dev: &CudaDevice,
    a: &mut Args,
    geo: Geom,
    p: &AttentionParams,
) -> Result<Vec<CudaStorage>> {
    let mut keep = vec![];
    a.b = geo.b as u64;
    a.hq = geo.hq as u64;
    a.hkv = geo.hkv as u64;
    a.g = (geo.hq / geo.hkv) as u64;
    a.lq = geo.lq as u64;
    a.lk = geo.lk as u64;
    a.d = geo.d as u64;
    a.dv_dim = geo.dv as u64;
    a.causal = p.causal as u64;
    a.scale = p.scale;
    a.nsplit = 1;
    // |pos − j| ≤ Lq + Lk, so a wider window is no window (and the kernels' sums can't
    // overflow).
    a.window = p.window.map_or(0, |w| w.min(geo.lq + geo.lk + 1) as i64);
    if let Some(s) = &p.alibi_slopes {
        let g = s.storage();
        let (ptr, c) = flat(dev, cuda(g.as_ref())?, s.layout())?;
        a.alibi = ptr;
        keep.extend(c);
    }
    if let Some(bias) = &p.bias {
        let g = bias.storage();
        let s = cuda(g.as_ref())?;
        let l = bias.layout();
        crate::check_layout(s, l, "attention")?;
        a.bias = s.ptr();
        a.boff = l.offset() as u64;
        let r = l.rank();
        for i in 0..r.min(4) {
            let (d, st) = (l.dims()[r - 1 - i], l.strides()[r - 1 - i]);
            a.bs[3 - i] = if d == 1 { 0 } else { st as u64 };
        }
    }
    Ok(keep)
}

/// Opt-in shared memory per block of this device.
fn max_smem(dev: &CudaDevice) -> Result<usize> {
    let v = dev
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(drv("shared memory per block"))?;
    Ok(v.max(48 * 1024) as usize)
}

/// Allow kernel `name` `bytes` of dynamic shared memory (past the default 48 KiB).
fn allow_smem(dev: &CudaDevice, name: &str, bytes: usize) -> Result<()> {
    if bytes > 48 * 1024 {
        dev.func(&MODULE, name)?
            .set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(drv("raising a kernel's shared memory limit"))?;
    }
    Ok(())
}

fn cfg(blocks: usize, threads: usize, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

fn cfg3(blocks: usize, z: usize, threads: usize, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, z as u32),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// Grid sizes the kernels take (x up to 2³¹ − 1).
fn check_grid(n: usize) -> Result<()> {
    if n >= (1 << 31) {
        return Err(crate::error::backend(format!(
            "attention: {n} blocks exceed the CUDA grid limit"
        )));
    }
    Ok(())
}

/// Shared memory (elements of the compute type) of the SIMT kernels, as the kernels lay it
/// out.
fn simt_fwd_smem(rows: usize, bk: usize, d: usize, dv: usize) -> usize {
    rows * d + bk * (d + 1) + bk * dv + rows * bk + rows * dv + 6 * rows
}

/// Rows per block and keys per tile of the SIMT forward: as many rows (up to 32) of a kv
/// head's `rows_h` as fit in `max` bytes of shared memory, tiles of 64 keys if they fit.
fn simt_fwd_tiles(
    rows_h: usize,
    d: usize,
    dv: usize,
    asz: usize,
    max: usize,
) -> Option<(usize, usize)> {
    let mut r = rows_h.clamp(1, SIMT_ROWS);
    loop {
        for bk in [64, 32] {
            if simt_fwd_smem(r, bk, d, dv) * asz <= max {
                return Some((r, bk));
            }
        }
        if r == 1 {
            return None;
        }
        r = r.div_ceil(2);
    }
}
fn simt_dkdv_smem(d: usize, dv: usize) -> usize {
    SIMT_BK * (2 * d + 2 * dv)
        + SIMT_BK * (d + 1)
        + SIMT_BK * (dv + 1)
        + 2 * SIMT_BK
        + 2 * SIMT_WARPS * SIMT_BK
}
fn simt_dq_smem(nw: usize, d: usize, dv: usize) -> usize {
    2 * nw * d + nw * dv + SIMT_BK * (d + 1) + SIMT_BK * (dv + 1) + nw * SIMT_BK
}

/// Bytes of `tiles` 16-bit tiles of the tensor-core kernels (rows padded to `d + 8`).
fn tc_smem(tiles: usize, d: usize) -> usize {
    tiles * TC_TILE * (d + 8) * 2
}

/// Bytes of the compute type of `dt`.
fn acc_size(dt: DType) -> usize {
    if dt == DType::F64 {
        8
    } else {
        4
    }
}

/// How many parts to split the key range into so that `blocks` query blocks with up to
/// `tiles` key tiles each fill the GPU.
fn key_splits(dev: &CudaDevice, blocks: usize, tiles: usize) -> usize {
    // About one wave: the SIMT blocks are large (some 70 KB of shared memory at D = 128).
    let target = 2 * dev.sm_count() as usize;
    if blocks == 0 || blocks >= target / 2 || tiles < 2 {
        return 1;
    }
    target.div_ceil(blocks).min(tiles).clamp(1, 128)
}

pub(crate) fn attention(
    dev: &CudaDevice,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &AttentionParams,
) -> Result<(Tensor, Tensor)> {
    tensor_core::checks::attention(q, k, v, p)?;
    let dt = q.dtype();
    let geo = Geom::new(q, k, v);
    let Geom {
        b,
        hq,
        lq,
        lk,
        d,
        dv,
        ..
    } = geo;
    let tc = geo.tc(dt) && lq >= TC_MIN_LQ;
    let rows_h = (hq / geo.hkv) * lq;
    let simt = simt_fwd_tiles(rows_h, d, dv, acc_size(dt), max_smem(dev)?);
    let Some((rb, bk)) = simt.or(tc.then_some((1, 32))) else {
        return composite::attention(q, k, v, p);
    };
    let rows = b * hq * lq;
    let out = dev.alloc(rows * dv, dt)?;
    let lse = dev.alloc(rows, dt)?;
    let wrap = |out: CudaStorage, lse: CudaStorage| -> Result<(Tensor, Tensor)> {
        Ok((
            dev.tensor(out, [b, hq, lq, dv], q)?,
            dev.tensor(lse, [b, hq, lq], q)?,
        ))
    };
    if rows == 0 {
        return wrap(out, lse);
    }
    let align = if tc { 8 } else { 1 };
    let (gq, gk, gv) = (q.storage(), k.storage(), v.storage());
    let qv = view(dev, cuda(gq.as_ref())?, q.layout(), align)?;
    let kv = view(dev, cuda(gk.as_ref())?, k.layout(), align)?;
    let vv = view(dev, cuda(gv.as_ref())?, v.layout(), align)?;
    let mut a = Args {
        q: qv.ptr,
        k: kv.ptr,
        v: vv.ptr,
        o: out.ptr(),
        lse: lse.ptr(),
        qr: qv.rows,
        kr: kv.rows,
        vr: vv.rows,
        orr: contiguous_rows(hq, lq, dv),
        ..Default::default()
    };
    let _keep = fill_common(dev, &mut a, geo, p)?;
    let ty = dt.as_str();

    let (blocks, tiles, name, threads, smem) = if tc {
        let nqb = lq.div_ceil(TC_TILE);
        let name = format!("attn_fwd_tc{d}_{ty}");
        let smem = tc_smem(5, d);
        (nqb * b * hq, lk.div_ceil(TC_TILE), name, 128, smem)
    } else {
        a.rb = rb as u64;
        a.bk = bk as u64;
        let name = format!("attn_fwd_simt_{ty}");
        let smem = simt_fwd_smem(rb, bk, d, dv) * acc_size(dt);
        (
            rows_h.div_ceil(rb) * b * geo.hkv,
            lk.div_ceil(bk),
            name,
            256,
            smem,
        )
    };
    check_grid(blocks)?;
    let nsplit = key_splits(dev, blocks, tiles);
    let part = if nsplit > 1 {
        let n = nsplit * rows * (dv + 2);
        let part = dev.alloc(
            n,
            if dt == DType::F64 {
                DType::F64
            } else {
                DType::F32
            },
        )?;
        a.part = part.ptr();
        a.nsplit = nsplit as u64;
        Some(part)
    } else {
        None
    };
    allow_smem(dev, &name, smem)?;
    launch!(dev, MODULE, &name, cfg3(blocks, nsplit, threads, smem), a)?;
    if nsplit > 1 {
        let name = format!("attn_combine_{ty}");
        let blocks = rows.div_ceil(SIMT_WARPS);
        check_grid(blocks)?;
        launch!(dev, MODULE, &name, cfg(blocks, 32 * SIMT_WARPS, 0), a)?;
    }
    drop(part);
    wrap(out, lse)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    dev: &CudaDevice,
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
    let geo = Geom::new(q, k, v);
    let Geom {
        b,
        hq,
        hkv,
        lq,
        lk,
        d,
        dv,
    } = geo;
    let tc = geo.tc(dt);
    let asz = acc_size(dt);
    let nw = lq.clamp(1, SIMT_WARPS);
    let (smem_kv, smem_q) = if tc {
        (tc_smem(6, d) + 4 * TC_TILE * 4, tc_smem(6, d))
    } else {
        (simt_dkdv_smem(d, dv) * asz, simt_dq_smem(nw, d, dv) * asz)
    };
    if smem_kv.max(smem_q) > max_smem(dev)? {
        return composite::attention_backward(q, k, v, out, lse, grad_out, p);
    }
    let rows = b * hq * lq;
    let dq = dev.alloc(rows * d, dt)?;
    let dk = dev.alloc(b * hkv * lk * d, dt)?;
    let dvs = dev.alloc(b * hkv * lk * dv, dt)?;
    let wrap = |dq: CudaStorage, dk: CudaStorage, dvs: CudaStorage| -> Result<_> {
        Ok((
            dev.tensor(dq, [b, hq, lq, d], q)?,
            dev.tensor(dk, [b, hkv, lk, d], q)?,
            dev.tensor(dvs, [b, hkv, lk, dv], q)?,
        ))
    };
    if b * hq == 0 {
        return wrap(dq, dk, dvs);
    }
    let align = if tc { 8 } else { 1 };
    let (gq, gk, gv) = (q.storage(), k.storage(), v.storage());
    let (go_, gl, gg) = (out.storage(), lse.storage(), grad_out.storage());
    let qv = view(dev, cuda(gq.as_ref())?, q.layout(), align)?;
    let kv = view(dev, cuda(gk.as_ref())?, k.layout(), align)?;
    let vv = view(dev, cuda(gv.as_ref())?, v.layout(), align)?;
    let ov = view(dev, cuda(go_.as_ref())?, out.layout(), 1)?;
    let gov = view(dev, cuda(gg.as_ref())?, grad_out.layout(), align)?;
    let (lse_ptr, _lse_copy) = flat(dev, cuda(gl.as_ref())?, lse.layout())?;
    let delta = dev.alloc(
        rows,
        if dt == DType::F64 {
            DType::F64
        } else {
            DType::F32
        },
    )?;
    let mut a = Args {
        q: qv.ptr,
        k: kv.ptr,
        v: vv.ptr,
        o: ov.ptr,
        lse: lse_ptr,
        dout: gov.ptr,
        dq: dq.ptr(),
        dk: dk.ptr(),
        dv: dvs.ptr(),
        delta: delta.ptr(),
        qr: qv.rows,
        kr: kv.rows,
        vr: vv.rows,
        orr: ov.rows,
        dor: gov.rows,
        ..Default::default()
    };
    let _keep = fill_common(dev, &mut a, geo, p)?;
    let ty = dt.as_str();
    if rows > 0 {
        let name = format!("attn_bwd_pre_{ty}");
        let blocks = rows.div_ceil(SIMT_WARPS);
        check_grid(blocks)?;
        launch!(dev, MODULE, &name, cfg(blocks, 32 * SIMT_WARPS, 0), a)?;
    }
    let (kv_blocks, kv_name, kv_threads) = if tc {
        (
            lk.div_ceil(TC_TILE) * b * hkv,
            format!("attn_bwd_dkdv_tc{d}_{ty}"),
            128,
        )
    } else {
        (
            lk.div_ceil(SIMT_BK) * b * hkv,
            format!("attn_bwd_dkdv_simt_{ty}"),
            32 * SIMT_WARPS,
        )
    };
    if kv_blocks > 0 {
        check_grid(kv_blocks)?;
        allow_smem(dev, &kv_name, smem_kv)?;
        launch!(
            dev,
            MODULE,
            &kv_name,
            cfg(kv_blocks, kv_threads, smem_kv),
            a
        )?;
    }
    let (q_blocks, q_name, q_threads) = if tc {
        (
            lq.div_ceil(TC_TILE) * b * hq,
            format!("attn_bwd_dq_tc{d}_{ty}"),
            128,
        )
    } else {
        (
            lq.div_ceil(nw) * b * hq,
            format!("attn_bwd_dq_simt_{ty}"),
            32 * nw,
        )
    };
    if q_blocks > 0 {
        check_grid(q_blocks)?;
        allow_smem(dev, &q_name, smem_q)?;
        launch!(dev, MODULE, &q_name, cfg(q_blocks, q_threads, smem_q), a)?;
    }
    drop(delta);
    wrap(dq, dk, dvs)
}
