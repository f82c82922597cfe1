//! Single-precision GEMM for the CPU backend: `C = A · B` with `C` row-major and `A`, `B`
//! arbitrary strided views (transposes cost nothing: packing absorbs them).
//!
//! The structure is the classic Goto/BLIS one. `B` is cut into `KC × NC` blocks packed into
//! `NR`-wide column panels, `A` into `MC × KC` blocks packed into `MR`-tall row panels, and a
//! register-blocked `MR × NR` microkernel streams through them. The microkernel is AVX-512
//! (selected at run time with `is_x86_feature_detected!`), with a portable fallback used on
//! other CPUs. Inputs may be f32 or half floats: packing converts to f32 on the fly, so bf16/f16
//! matmuls never materialise an f32 copy of their operands.
//!
//! Threads: the output is cut into one independent sub-product per thread (rows when `m` is
//! tall enough, else columns), so a call forks and joins once. Tiny problems stay on the
//! calling thread, and `m ≤ SMALL_M` goes to a direct
//! matrix-vector path that never packs `B` (decode-time matvecs are memory-bound: packing
//! would triple the traffic).

use std::cell::Cell;
use std::mem::MaybeUninit;

use half::{bf16, f16};
use rayon::prelude::*;

/// Rows of the microkernel tile.
pub(crate) const MR: usize = 12;
/// Columns of the microkernel tile (two 16-lane AVX-512 vectors).
pub(crate) const NR: usize = 32;
/// Depth of a packed block: one `MR × KC` panel of `A` (12 KiB) stays in the 48 KiB L1.
const KC: usize = 256;
/// Rows of a packed `A` block (its micro-panels pass through L1 one at a time).
const MC: usize = 768;
/// Columns of a packed `B` block: `KC × NC` floats (1 MiB) stay in each core's 2 MiB L2.
const NC: usize = 1024;
/// Up to this many rows, `C = A·B` runs as a direct matrix-vector product.
const SMALL_M: usize = 4;
/// Below this many multiply-adds a product stays on one thread (waking the pool costs more).
pub(crate) const PAR_MIN_MACS: usize = 96 * 96 * 96;

/// An element type that packing can widen to f32.
pub(crate) trait PackElem: Copy + Send + Sync + 'static {
    /// Which storage format this is, for the SIMD packing routines.
    const KIND: Kind;
    fn to_f32(self) -> f32;
    /// The slice itself when it already is f32 (no conversion needed).
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        let _ = s;
        None
    }
}

/// The element formats packing understands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    F32,
    BF16,
    F16,
}

impl PackElem for f32 {
    const KIND: Kind = Kind::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
}

impl PackElem for bf16 {
    const KIND: Kind = Kind::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

impl PackElem for f16 {
    const KIND: Kind = Kind::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// A read-only strided matrix view: element `(i, j)` is `data[offset + i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<T> MatRef<'_, T> {
    /// Whether every element of a `rows × cols` view lies inside `data`.
    pub(crate) fn fits(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1)
            .checked_mul(self.rs)
            .and_then(|r| {
                (cols - 1)
                    .checked_mul(self.cs)
                    .and_then(|c| r.checked_add(c))
            })
            .and_then(|x| x.checked_add(self.offset));
        matches!(last, Some(l) if l < self.data.len())
    }

    /// The transposed view.
    fn t(self) -> Self {
        MatRef {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// Raw pointers (with their strides) that may cross threads.
#[derive(Clone, Copy)]
struct Raw<T> {
    ptr: *const T,
    rs: usize,
    cs: usize,
}
// SAFETY: `Raw` only ever points into a borrowed slice that outlives the parallel region it is
// used in, and it is only read through.
unsafe impl<T: Sync> Send for Raw<T> {}
// SAFETY: as above; shared reads of `T: Sync` data are thread-safe.
unsafe impl<T: Sync> Sync for Raw<T> {}

/// The output pointer shared by all threads; each thread writes a disjoint set of tiles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: threads write disjoint rectangles of `C` (the work split guarantees it), and the
// borrow of `C` outlives the parallel region.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Which microkernel this CPU runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
        }
        Isa::Portable
    }
}

/// `c[m × n] (row stride n) = a[m × k] · b[k × n]`, on up to `threads` threads.
///
/// Errors (never panics) if a view reaches outside its slice or `c` is too short.
#[cfg(test)]
pub(crate) fn sgemm<TA: PackElem, TB: PackElem>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: &mut [f32],
    threads: usize,
) -> Result<(), String> {
    sgemm_with(Isa::detect(), m, n, k, a, b, c, threads)
}

/// `c[m × n] = a · b` into an uninitialised output: on `Ok`, each of the first `m · n` elements of `c`
/// has been written (nothing is read from it).
pub(crate) fn sgemm_uninit<TA: PackElem, TB: PackElem>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: &mut [MaybeUninit<f32>],
    threads: usize,
) -> Result<(), String> {
    sgemm_raw(Isa::detect(), m, n, k, a, b, c, threads)
}

/// [`sgemm`] with an explicit microkernel choice (tests compare the two).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_with<TA: PackElem, TB: PackElem>(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: &mut [f32],
    threads: usize,
) -> Result<(), String> {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and `sgemm_raw` only ever stores
    // initialised floats through it, so `c` stays initialised.
    let c = unsafe { &mut *(c as *mut [f32] as *mut [MaybeUninit<f32>]) };
    sgemm_raw(isa, m, n, k, a, b, c, threads)
}

/// The body of the sgemm entry points: writes the product into `c` without reading it first.
#[allow(clippy::too_many_arguments)]
fn sgemm_raw<TA: PackElem, TB: PackElem>(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: &mut [MaybeUninit<f32>],
    threads: usize,
) -> Result<(), String> {
    let mn = m.checked_mul(n).ok_or("m·n overflows")?;
    if c.len() < mn {
        return Err(format!("output has {} elements, need {mn}", c.len()));
    }
    if !a.fits(m, k) || !b.fits(k, n) {
        return Err("operand view reaches outside its storage".into());
    }
    let c = &mut c[..mn];
    if mn == 0 {
        return Ok(());
    }
    if k == 0 {
        for x in c.iter_mut() {
            x.write(0.0);
        }
        return Ok(());
    }
    let macs = mn.saturating_mul(k);
    let threads = if macs < PAR_MIN_MACS {
        1
    } else {
        threads.max(1)
    };
    if n == 1 && m > 1 {
        // A column output is also a contiguous row: solve Cᵀ = Bᵀ·Aᵀ with one row.
        return sgemm_raw(isa, 1, m, k, b.t(), a.t(), c, threads);
    }
    if m <= SMALL_M && (b.cs == 1 || b.rs == 1) {
        small_m(isa, m, n, k, a, b, c, threads);
        return Ok(());
    }
    let a = Raw {
        ptr: a.data[a.offset..].as_ptr(),
        rs: a.rs,
        cs: a.cs,
    };
    let b = Raw {
        ptr: b.data[b.offset..].as_ptr(),
        rs: b.rs,
        cs: b.cs,
    };
    // SAFETY: the `fits` checks above guarantee every (i, p) / (p, j) index of the views is in
    // bounds of the slices they were taken from, and `c` holds `m · n` elements.
    unsafe { packed(isa, m, n, k, a, b, OutPtr(c.as_mut_ptr().cast()), threads) };
    Ok(())
}

thread_local! {
    /// Per-thread scratch for packed `A` blocks, kept between calls so that repeated
    /// matmuls do not page-fault fresh allocations in.
    static A_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// The calling thread's scratch for packed `B` blocks.
    static B_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Borrow a thread-local scratch vector of at least `len` floats plus alignment slack.
/// Re-entrant calls (a rayon worker running another matmul while it waits) simply find the
/// cell empty and allocate.
fn take_buf(cell: &'static std::thread::LocalKey<Cell<Vec<f32>>>, len: usize) -> Vec<f32> {
    let mut v = cell.with(|c| c.take());
    if v.len() < len + 16 {
        v = vec![0.0; len + 16];
    }
    v
}

fn give_buf(cell: &'static std::thread::LocalKey<Cell<Vec<f32>>>, v: Vec<f32>) {
    cell.with(|c| {
        let old = c.take();
        c.set(if old.len() > v.len() { old } else { v });
    });
}

/// The 64-byte-aligned window of `len` floats inside a scratch vector.
fn aligned(v: &mut [f32], len: usize) -> &mut [f32] {
    let skip = v.as_ptr().align_offset(64).min(16);
    &mut v[skip..skip + len]
}

/// Round up to a multiple of `to`.
fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// The blocked, packed product, split over threads.
///
/// The output is cut into a `tm × tn` grid of independent sub-products, one per thread:
/// rows when `m` is tall enough, else column panels. Each thread packs its own operands, so
/// there is a single fork-join per call and no barrier (waking the pool is the expensive part
/// of a parallel region here); the price is that the threads of one grid row both pack the
/// same `B` block (or, splitting columns, the same `A` block), a cost of order `1/m` (`1/n`)
/// of the work.
///
/// # Safety
/// `a` (`m × k`) and `b` (`k × n`) must be readable at every index their strides reach, and
/// `c` must point to `m · n` writable floats, not aliased by `a` or `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn packed<TA: PackElem, TB: PackElem>(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: Raw<TA>,
    b: Raw<TB>,
    c: OutPtr,
    threads: usize,
) {
    let panels = n.div_ceil(NR);
    let t = threads.min(panels * m.div_ceil(MR)).max(1);
    // Splitting rows makes every thread pack all of B (k·n), splitting columns all of A
    // (m·k): duplicate the smaller operand, where the split leaves each thread enough work.
    let rows_ok = m >= t * 4 * MR;
    let cols_ok = panels >= t * 4;
    let tm = if rows_ok && (n <= m || !cols_ok) {
        t
    } else {
        1
    };
    let tn = (t / tm).min(panels).max(1);
    let work = |w: usize| {
        // Capture the Send/Sync wrappers whole, not their raw-pointer fields.
        let (a, b, c) = (a, b, c);
        let rows = split(m, tm, w / tn, MR);
        let cols = split(n, tn, w % tn, NR);
        if rows.is_empty() || cols.is_empty() {
            return;
        }
        let asub = Raw {
            ptr: a.ptr.wrapping_add(rows.start * a.rs),
            ..a
        };
        let bsub = Raw {
            ptr: b.ptr.wrapping_add(cols.start * b.cs),
            ..b
        };
        let csub = OutPtr(c.0.wrapping_add(rows.start * n + cols.start));
        // SAFETY: the grid cells are disjoint rectangles of the `m × n` output; the operand
        // origins move to the cell's first row of `a` and first column of `b`, which stay
        // readable over the cell's `rows × k` and `k × cols`.
        unsafe { packed_single(isa, rows.len(), cols.len(), k, asub, bsub, csub, n) };
    };
    if tm * tn > 1 {
        (0..tm * tn).into_par_iter().for_each(work);
    } else {
        work(0);
    }
}

/// The part of `0..len` that the `part`-th of `parts` workers gets: near-equal shares
/// whose boundaries fall on multiples of `unit`.
fn split(len: usize, parts: usize, part: usize, unit: usize) -> std::ops::Range<usize> {
    let units = len.div_ceil(unit);
    let lo = (units * part / parts * unit).min(len);
    let hi = (units * (part + 1) / parts * unit).min(len);
    lo..hi
}

/// The blocked product on the calling thread, writing `C` with row stride `ldc`.
///
/// # Safety
/// As [`packed`], with `c` an `m × n` window of row stride `ldc`.
#[allow(clippy::too_many_arguments)]
unsafe fn packed_single<TA: PackElem, TB: PackElem>(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: Raw<TA>,
    b: Raw<TB>,
    c: OutPtr,
    ldc: usize,
) {
    let nc_max = round_up(NC.min(n), NR);
    let kc_max = KC.min(k);
    let mc_max = round_up(MC.min(m), MR);
    let mut bbuf = take_buf(&B_BUF, nc_max * kc_max);
    let mut abuf = take_buf(&A_BUF, mc_max * kc_max);
    {
        let bpack = aligned(&mut bbuf, nc_max * kc_max);
        let apack = aligned(&mut abuf, mc_max * kc_max);
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let bsub = Raw {
                    ptr: b.ptr.wrapping_add(pc * b.rs + jc * b.cs),
                    ..b
                };
                // SAFETY: the `kc × nc` block at (pc, jc) lies inside `b`; `bpack` holds
                // `round_up(nc, NR) · kc` floats.
                unsafe { pack_b(isa, bpack, bsub, kc, nc, 0, nc.div_ceil(NR)) };
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    let asub = Raw {
                        ptr: a.ptr.wrapping_add(ic * a.rs + pc * a.cs),
                        ..a
                    };
                    // SAFETY: rows `ic..ic+mc`, depth `pc..pc+kc` are inside `a`; `apack`
                    // holds `round_up(mc, MR) · kc` floats.
                    unsafe { pack_a(isa, apack, asub, mc, kc) };
                    let cblk = OutPtr(c.0.wrapping_add(ic * ldc + jc));
                    // SAFETY: the `mc × nc` window at (ic, jc) is inside this call's `C`.
                    unsafe { macro_block(isa, apack, bpack, cblk, ldc, mc, nc, kc, pc > 0) };
                }
            }
        }
    }
    give_buf(&A_BUF, abuf);
    give_buf(&B_BUF, bbuf);
}

/// `C[mc × nc] (+)= Apack · Bpack` for one packed `A` block and one packed `B` block.
///
/// # Safety
/// `c` points to an `mc × nc` window of row stride `ldc`; the packs hold `kc`-deep panels
/// covering `mc` rows and `nc` columns.
#[allow(clippy::too_many_arguments)]
unsafe fn macro_block(
    isa: Isa,
    apack: &[f32],
    bpack: &[f32],
    c: OutPtr,
    ldc: usize,
    mc: usize,
    nc: usize,
    kc: usize,
    accumulate: bool,
) {
    // Each A micro-panel (MR × kc, 12 KiB) stays in L1 while the B panels stream past it
    // from L2 (the whole kc × nc block of B fits there).
    for ip in 0..mc.div_ceil(MR) {
        let i0 = ip * MR;
        let mr = MR.min(mc - i0);
        let ap = &apack[ip * MR * kc..(ip + 1) * MR * kc];
        for jp in 0..nc.div_ceil(NR) {
            let j0 = jp * NR;
            let nr = NR.min(nc - j0);
            let bp = &bpack[jp * NR * kc..(jp + 1) * NR * kc];
            // SAFETY: the `mr × nr` tile at (i0, j0) is inside the window; the packed
            // panels hold `kc` full steps.
            unsafe {
                let cp = c.0.add(i0 * ldc + j0);
                microkernel(isa, kc, ap, bp, cp, ldc, mr, nr, accumulate);
            }
        }
    }
}

/// Pack rows `0..mc` × depth `0..kc` of `a` into `MR`-tall panels, `k`-major, zero-padded.
///
/// # Safety
/// `a` must be readable over `mc × kc`; `dst` holds `round_up(mc, MR) · kc` floats.
unsafe fn pack_a<T: PackElem>(isa: Isa, dst: &mut [f32], a: Raw<T>, mc: usize, kc: usize) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && a.cs == 1 {
        // SAFETY: AVX-512F was detected; same contract as this function.
        unsafe { avx512::pack_a_rows(dst, a, mc, kc) };
        return;
    }
    let _ = isa;
    for (ip, panel) in dst
        .chunks_exact_mut(MR * kc)
        .take(mc.div_ceil(MR))
        .enumerate()
    {
        let i0 = ip * MR;
        let mr = MR.min(mc - i0);
        if mr < MR {
            panel.fill(0.0);
        }
        if a.cs == 1 {
            // Row-major A: read each row contiguously, scatter into the interleaved panel.
            for i in 0..mr {
                // SAFETY: row `i0 + i` has `kc` readable elements at unit stride.
                let row = unsafe { std::slice::from_raw_parts(a.ptr.add((i0 + i) * a.rs), kc) };
                for (p, &x) in row.iter().enumerate() {
                    panel[p * MR + i] = x.to_f32();
                }
            }
        } else {
            for p in 0..kc {
                let dstp = &mut panel[p * MR..p * MR + mr];
                for (i, d) in dstp.iter_mut().enumerate() {
                    // SAFETY: (i0 + i, p) is inside the `mc × kc` view.
                    *d = unsafe { *a.ptr.add((i0 + i) * a.rs + p * a.cs) }.to_f32();
                }
            }
        }
    }
}

/// Pack column panels `p0..p0+np` (each `NR` wide) of a `kc × nc` block of `b`, `k`-major,
/// zero-padded past `nc`.
///
/// # Safety
/// `b` must be readable over `kc × nc`; `dst` holds `np · NR · kc` floats.
unsafe fn pack_b<T: PackElem>(
    isa: Isa,
    dst: &mut [f32],
    b: Raw<T>,
    kc: usize,
    nc: usize,
    p0: usize,
    np: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && (b.rs == 1 || b.cs == 1) {
        // SAFETY: AVX-512F was detected; same contract as this function.
        unsafe { avx512::pack_b(dst, b, kc, nc, p0, np) };
        return;
    }
    let _ = isa;
    for (q, panel) in dst.chunks_exact_mut(NR * kc).take(np).enumerate() {
        let j0 = (p0 + q) * NR;
        let nr = NR.min(nc - j0);
        if nr < NR {
            panel.fill(0.0);
        }
        if b.cs == 1 {
            for p in 0..kc {
                // SAFETY: row `p` of the block has `nr` readable elements from column `j0`.
                let src = unsafe { std::slice::from_raw_parts(b.ptr.add(p * b.rs + j0), nr) };
                for (d, &x) in panel[p * NR..p * NR + nr].iter_mut().zip(src) {
                    *d = x.to_f32();
                }
            }
        } else if b.rs == 1 {
            // Column-major B (e.g. `x · Wᵀ`): read columns contiguously.
            for j in 0..nr {
                // SAFETY: column `j0 + j` has `kc` readable elements at unit stride.
                let col = unsafe { std::slice::from_raw_parts(b.ptr.add((j0 + j) * b.cs), kc) };
                for (p, &x) in col.iter().enumerate() {
                    panel[p * NR + j] = x.to_f32();
                }
            }
        } else {
            for p in 0..kc {
                for j in 0..nr {
                    // SAFETY: (p, j0 + j) is inside the `kc × nc` view.
                    panel[p * NR + j] = unsafe { *b.ptr.add(p * b.rs + (j0 + j) * b.cs) }.to_f32();
                }
            }
        }
    }
}

/// `C[mr × nr] (+)= Apanel · Bpanel` over `kc` steps.
///
/// # Safety
/// `a` holds `kc · MR`, `b` holds `kc · NR` floats; `c` points to an `mr × nr` tile with row
/// stride `ldc`, `mr ≤ MR`, `nr ≤ NR`.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn microkernel(
    isa: Isa,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced after `is_x86_feature_detected!("avx512f")`;
        // the pointer contract is forwarded unchanged.
        Isa::Avx512 => unsafe {
            avx512::kernel(kc, a.as_ptr(), b.as_ptr(), c, ldc, mr, nr, accumulate)
        },
        // SAFETY: forwarded pointer contract.
        Isa::Portable => unsafe { portable_kernel(kc, a, b, c, ldc, mr, nr, accumulate) },
    }
}

/// The fallback microkernel: plain loops over a register-sized accumulator that LLVM
/// vectorises for the baseline target.
///
/// # Safety
/// As [`microkernel`].
#[allow(clippy::too_many_arguments)]
unsafe fn portable_kernel(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
    let mut acc = [[0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for (row, &x) in acc.iter_mut().zip(ap) {
            for (r, &y) in row.iter_mut().zip(bp) {
                *r += x * y;
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(mr) {
        if accumulate {
            // SAFETY: row `i < mr` of the tile has `nr` writable, initialised floats.
            let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), nr) };
            for (d, &x) in dst.iter_mut().zip(row) {
                *d += x;
            }
        } else {
            // SAFETY: row `i < mr` of the tile has `nr` writable floats (maybe uninitialised:
            // written, never read).
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(i * ldc), nr) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Kind, PackElem, Raw, MR, NR};
    use std::arch::x86_64::*;

    const NV: usize = NR / 16;
    /// How far ahead (in floats: 16 steps of k) the microkernel prefetches its B panel.
    const PF_B: usize = 512;
    /// The lanes of a 16-lane vector that one `MR`-row step of a packed A panel holds.
    const AMASK: __mmask16 = ((1u32 << MR) - 1) as __mmask16;

    /// Sixteen consecutive elements widened to f32.
    ///
    /// # Safety
    /// AVX-512F; `p` must be readable for 16 elements.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16<T: PackElem>(p: *const T) -> __m512 {
        // SAFETY: `KIND` names the concrete type (each impl sets its own), so the casts
        // reinterpret the elements as what they are; 16 elements are readable.
        unsafe {
            match T::KIND {
                Kind::F32 => _mm512_loadu_ps(p.cast::<f32>()),
                Kind::BF16 => {
                    let h = _mm256_loadu_si256(p.cast::<__m256i>());
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                }
                Kind::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast::<__m256i>())),
            }
        }
    }

    /// In-register transpose of a 16 × 16 block of f32 (`r[i]` row `i` becomes column `i`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: &mut [__m512; 16]) {
        // 1: interleave pairs of rows within 128-bit lanes.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // 2: interleave 64-bit pairs: r[4g + c], lane L = rows 4g..4g+4 of column 4L + c.
        for g in 0..4 {
            let x = |j: usize| _mm512_castps_pd(t[4 * g + j]);
            r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(x(0), x(2)));
            r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x(0), x(2)));
            r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(x(1), x(3)));
            r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(x(1), x(3)));
        }
        // 3, 4: transpose the 4 × 4 grid of 128-bit lanes across r[c], r[4 + c], ….
        for c in 0..4 {
            let u0 = _mm512_shuffle_f32x4::<0x88>(r[c], r[4 + c]);
            let u1 = _mm512_shuffle_f32x4::<0xDD>(r[c], r[4 + c]);
            let u2 = _mm512_shuffle_f32x4::<0x88>(r[8 + c], r[12 + c]);
            let u3 = _mm512_shuffle_f32x4::<0xDD>(r[8 + c], r[12 + c]);
            t[c] = _mm512_shuffle_f32x4::<0x88>(u0, u2);
            t[8 + c] = _mm512_shuffle_f32x4::<0xDD>(u0, u2);
            t[4 + c] = _mm512_shuffle_f32x4::<0x88>(u1, u3);
            t[12 + c] = _mm512_shuffle_f32x4::<0xDD>(u1, u3);
        }
        *r = t;
    }

    /// [`super::pack_a`] for a unit column stride: 16 × 16 register transposes.
    ///
    /// # Safety
    /// AVX-512F; `a.cs == 1`; contract of [`super::pack_a`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_a_rows<T: PackElem>(
        dst: &mut [f32],
        a: Raw<T>,
        mc: usize,
        kc: usize,
    ) {
        let kc16 = kc / 16 * 16;
        for (ip, panel) in dst
            .chunks_exact_mut(MR * kc)
            .take(mc.div_ceil(MR))
            .enumerate()
        {
            let i0 = ip * MR;
            let mr = MR.min(mc - i0);
            let out = panel.as_mut_ptr();
            // SAFETY: rows `i0..i0 + mr` are readable for `kc` elements; `panel` holds
            // `MR · kc` floats and each store writes `MR` of them at step `p + q < kc`.
            unsafe {
                let row = |i: usize| a.ptr.add((i0 + i) * a.rs);
                let mut p = 0;
                while p < kc16 {
                    let mut r = [_mm512_setzero_ps(); 16];
                    if mr == MR {
                        for (i, x) in r.iter_mut().enumerate().take(MR) {
                            *x = load16(row(i).add(p));
                        }
                    } else {
                        for (i, x) in r.iter_mut().enumerate().take(mr) {
                            *x = load16(row(i).add(p));
                        }
                    }
                    transpose16(&mut r);
                    for (q, &x) in r.iter().enumerate() {
                        _mm512_mask_storeu_ps(out.add((p + q) * MR), AMASK, x);
                    }
                    p += 16;
                }
                for p in kc16..kc {
                    for i in 0..MR {
                        *out.add(p * MR + i) = if i < mr {
                            (*row(i).add(p)).to_f32()
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }

    /// [`super::pack_b`] for a unit row or column stride.
    ///
    /// # Safety
    /// AVX-512F; `b.rs == 1 || b.cs == 1`; contract of [`super::pack_b`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_b<T: PackElem>(
        dst: &mut [f32],
        b: Raw<T>,
        kc: usize,
        nc: usize,
        p0: usize,
        np: usize,
    ) {
        let kc16 = kc / 16 * 16;
        for (q, panel) in dst.chunks_exact_mut(NR * kc).take(np).enumerate() {
            let j0 = (p0 + q) * NR;
            let nr = NR.min(nc - j0);
            if nr < NR {
                panel.fill(0.0);
            }
            let out = panel.as_mut_ptr();
            for g in 0..NV {
                let cols = nr.saturating_sub(16 * g).min(16);
                if cols == 0 {
                    break;
                }
                let jg = j0 + 16 * g;
                // SAFETY: columns `jg..jg + cols` are readable for `kc` rows; stores land in
                // row `p < kc`, columns `16g..16g + 16` of the `kc × NR` panel.
                unsafe {
                    if b.cs == 1 {
                        // Row-major B: each step of k is a contiguous run of columns.
                        for p in 0..kc {
                            let src = b.ptr.add(p * b.rs + jg);
                            let o = out.add(p * NR + 16 * g);
                            if cols == 16 {
                                _mm512_storeu_ps(o, load16(src));
                            } else {
                                for j in 0..cols {
                                    *o.add(j) = (*src.add(j)).to_f32();
                                }
                            }
                        }
                    } else {
                        // Column-major B (`x · Wᵀ`): transpose 16 × 16 blocks.
                        let col = |j: usize| b.ptr.add((jg + j) * b.cs);
                        let mut p = 0;
                        while p < kc16 {
                            let mut r = [_mm512_setzero_ps(); 16];
                            if cols == 16 {
                                for (j, x) in r.iter_mut().enumerate() {
                                    *x = load16(col(j).add(p));
                                }
                            } else {
                                for (j, x) in r.iter_mut().enumerate().take(cols) {
                                    *x = load16(col(j).add(p));
                                }
                            }
                            transpose16(&mut r);
                            for (s, &x) in r.iter().enumerate() {
                                _mm512_storeu_ps(out.add((p + s) * NR + 16 * g), x);
                            }
                            p += 16;
                        }
                        for p in kc16..kc {
                            for j in 0..cols {
                                *out.add(p * NR + 16 * g + j) = (*col(j).add(p)).to_f32();
                            }
                        }
                    }
                }
            }
        }
    }

    /// AVX-512 `MR × NR` microkernel: `MR · NV` zmm accumulators, `NV` vector loads of `B` and
    /// `MR` broadcasts of `A` (folded into the FMAs) per step of `k`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; pointer contract as [`super::microkernel`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        mr: usize,
        nr: usize,
        accumulate: bool,
    ) {
        // Pull the C tile towards L1 now so that the read-modify-write at the end does not
        // stall on misses (C rows are a page or more apart).
        for i in 0..mr {
            for v in 0..NV {
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc + 16 * v) as *const i8);
            }
        }
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let (mut ap, mut bp) = (a, b);
        for _ in 0..kc {
            // SAFETY: each step reads `NR` floats of the B panel and `MR` of the A panel,
            // `kc` steps in all, which the caller guarantees are there.
            unsafe {
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(bp.add(16 * v));
                    // B streams in from L2: ask for it a few steps early.
                    _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PF_B + 16 * v) as *const i8);
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(i));
                    for (r, &y) in row.iter_mut().zip(&bv) {
                        *r = _mm512_fmadd_ps(av, y, *r);
                    }
                }
                ap = ap.add(MR);
                bp = bp.add(NR);
            }
        }
        let mut masks = [0 as __mmask16; NV];
        for (v, m) in masks.iter_mut().enumerate() {
            let cols = nr.saturating_sub(16 * v).min(16);
            *m = ((1u32 << cols) - 1) as __mmask16;
        }
        for (i, row) in acc.iter().enumerate().take(mr) {
            for (v, &x) in row.iter().enumerate() {
                // SAFETY: the masked lanes are the `nr` valid columns of row `i < mr`.
                unsafe {
                    let p = c.add(i * ldc + 16 * v);
                    let y = if accumulate {
                        _mm512_add_ps(x, _mm512_maskz_loadu_ps(masks[v], p))
                    } else {
                        x
                    };
                    _mm512_mask_storeu_ps(p, masks[v], y);
                }
            }
        }
    }
}

/// `m ≤ SMALL_M` rows against a unit-stride `B`: stream `B` once, no packing.
#[allow(clippy::too_many_arguments)]
fn small_m<TA: PackElem, TB: PackElem>(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: &mut [MaybeUninit<f32>],
    threads: usize,
) {
    // A is at most SMALL_M × k: gather it into contiguous f32 rows.
    let mut arows = vec![0f32; m * k];
    for (i, row) in arows.chunks_exact_mut(k).enumerate() {
        for (p, x) in row.iter_mut().enumerate() {
            *x = a.data[a.offset + i * a.rs + p * a.cs].to_f32();
        }
    }
    // Split the columns of C over threads in chunks of whole cache lines.
    let chunk = if threads > 1 {
        round_up(n.div_ceil(threads), 16)
    } else {
        n
    };
    let arows = &arows[..];
    let run = |j0: usize, out: &mut [Vec<f32>]| {
        let nj = out[0].len();
        if b.cs == 1 {
            axpy_rows(isa, arows, k, b, j0, nj, out);
        } else {
            dot_cols(isa, arows, k, b, j0, nj, out);
        }
    };
    let pieces: Vec<(usize, Vec<Vec<f32>>)> = (0..n)
        .step_by(chunk.max(1))
        .map(|j0| (j0, vec![vec![0f32; chunk.min(n - j0)]; m]))
        .collect();
    let pieces: Vec<(usize, Vec<Vec<f32>>)> = if threads > 1 && pieces.len() > 1 {
        pieces
            .into_par_iter()
            .map(|(j0, mut out)| {
                run(j0, &mut out);
                (j0, out)
            })
            .collect()
    } else {
        pieces
            .into_iter()
            .map(|(j0, mut out)| {
                run(j0, &mut out);
                (j0, out)
            })
            .collect()
    };
    for (j0, out) in pieces {
        for (i, row) in out.iter().enumerate() {
            for (d, &x) in c[i * n + j0..i * n + j0 + row.len()].iter_mut().zip(row) {
                d.write(x);
            }
        }
    }
}

/// `out[i][j] = Σ_p arows[i][p] · B[p, j0 + j]` for row-major B (unit column stride).
fn axpy_rows<TB: PackElem>(
    isa: Isa,
    arows: &[f32],
    k: usize,
    b: MatRef<'_, TB>,
    j0: usize,
    nj: usize,
    out: &mut [Vec<f32>],
) {
    // Work in column blocks that keep the output rows in L1.
    const JB: usize = 2048;
    let mut brow = vec![0f32; JB.min(nj)];
    for jb in (0..nj).step_by(JB) {
        let w = JB.min(nj - jb);
        for p in 0..k {
            let s = b.offset + p * b.rs + j0 + jb;
            let src = &b.data[s..s + w];
            let row: &[f32] = if let Some(f) = TB::as_f32(src) {
                f
            } else {
                for (d, &x) in brow.iter_mut().zip(src) {
                    *d = x.to_f32();
                }
                &brow[..w]
            };
            for (i, o) in out.iter_mut().enumerate() {
                axpy(isa, arows[i * k + p], row, &mut o[jb..jb + w]);
            }
        }
    }
}

/// `out[i][j] = Σ_p arows[i][p] · B[p, j0 + j]` for column-major B (unit row stride).
fn dot_cols<TB: PackElem>(
    isa: Isa,
    arows: &[f32],
    k: usize,
    b: MatRef<'_, TB>,
    j0: usize,
    nj: usize,
    out: &mut [Vec<f32>],
) {
    let mut col = vec![0f32; k];
    for j in 0..nj {
        let s = b.offset + (j0 + j) * b.cs;
        let src = &b.data[s..s + k];
        let colf: &[f32] = if let Some(f) = TB::as_f32(src) {
            f
        } else {
            for (d, &x) in col.iter_mut().zip(src) {
                *d = x.to_f32();
            }
            &col
        };
        for (i, o) in out.iter_mut().enumerate() {
            o[j] = dot(isa, &arows[i * k..(i + 1) * k], colf);
        }
    }
}

/// `y += alpha · x`.
#[inline]
fn axpy(isa: Isa, alpha: f32, x: &[f32], y: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only reached after AVX-512F was detected.
        Isa::Avx512 => unsafe { avx512_axpy(alpha, x, y) },
        Isa::Portable => {
            for (d, &s) in y.iter_mut().zip(x) {
                *d += alpha * s;
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let av = _mm512_set1_ps(alpha);
    let mut j = 0;
    // SAFETY: every access is below `n`, which bounds both slices; tails are masked.
    unsafe {
        while j + 16 <= n {
            let yp = y.as_mut_ptr().add(j);
            let v = _mm512_fmadd_ps(av, _mm512_loadu_ps(x.as_ptr().add(j)), _mm512_loadu_ps(yp));
            _mm512_storeu_ps(yp, v);
            j += 16;
        }
        if j < n {
            let m = ((1u32 << (n - j)) - 1) as __mmask16;
            let yp = y.as_mut_ptr().add(j);
            let xv = _mm512_maskz_loadu_ps(m, x.as_ptr().add(j));
            let v = _mm512_fmadd_ps(av, xv, _mm512_maskz_loadu_ps(m, yp));
            _mm512_mask_storeu_ps(yp, m, v);
        }
    }
}

/// `Σ x·y`.
#[inline]
fn dot(isa: Isa, x: &[f32], y: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only reached after AVX-512F was detected.
        Isa::Avx512 => unsafe { avx512_dot(x, y) },
        Isa::Portable => {
            // Eight partial sums let LLVM vectorise without reassociating a single chain.
            let mut acc = [0f32; 8];
            let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
            let (xr, yr) = (xc.remainder(), yc.remainder());
            for (xs, ys) in xc.zip(yc) {
                for l in 0..8 {
                    acc[l] += xs[l] * ys[l];
                }
            }
            let tail: f32 = xr.iter().zip(yr).map(|(a, b)| a * b).sum();
            acc.iter().sum::<f32>() + tail
        }
    }
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_dot(x: &[f32], y: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let (xp, yp) = (x.as_ptr(), y.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut j = 0;
    // SAFETY: every access is below `n`, which bounds both slices; tails are masked.
    unsafe {
        while j + 64 <= n {
            for (u, s) in acc.iter_mut().enumerate() {
                let o = j + 16 * u;
                *s = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(o)), _mm512_loadu_ps(yp.add(o)), *s);
            }
            j += 64;
        }
        while j + 16 <= n {
            acc[0] = _mm512_fmadd_ps(
                _mm512_loadu_ps(xp.add(j)),
                _mm512_loadu_ps(yp.add(j)),
                acc[0],
            );
            j += 16;
        }
        if j < n {
            let m = ((1u32 << (n - j)) - 1) as __mmask16;
            let v = _mm512_mul_ps(
                _mm512_maskz_loadu_ps(m, xp.add(j)),
                _mm512_maskz_loadu_ps(m, yp.add(j)),
            );
            acc[1] = _mm512_add_ps(acc[1], v);
        }
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Strides for an `r × c` matrix stored row-major, column-major, or padded with gaps.
    fn strides(order: usize, r: usize, c: usize) -> (usize, usize, usize) {
        match order {
            0 => (c, 1, r * c),
            1 => (1, r, r * c),
            // Odd strides: row stride 2c + 3, column stride 2.
            _ => (2 * c + 3, 2, r.max(1) * (2 * c + 3)),
        }
    }

    fn reference<T: PackElem>(
        m: usize,
        n: usize,
        k: usize,
        a: MatRef<'_, T>,
        b: MatRef<'_, T>,
    ) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    let x = a.data[a.offset + i * a.rs + p * a.cs].to_f32() as f64;
                    let y = b.data[b.offset + p * b.rs + j * b.cs].to_f32() as f64;
                    s += x * y;
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            v.push(Isa::detect());
        }
        v
    }

    fn check<T: PackElem>(conv: impl Fn(f32) -> T, m: usize, n: usize, k: usize, tol: f64) {
        for (ao, bo) in [(0, 0), (1, 0), (0, 1), (1, 1), (2, 2), (1, 2)] {
            let (ars, acs, alen) = strides(ao, m, k);
            let (brs, bcs, blen) = strides(bo, k, n);
            let a: Vec<T> = noise(alen + 5, (m * 31 + k) as u64)
                .into_iter()
                .map(&conv)
                .collect();
            let b: Vec<T> = noise(blen + 5, (n * 17 + k) as u64)
                .into_iter()
                .map(&conv)
                .collect();
            let av = MatRef {
                data: &a,
                offset: 3,
                rs: ars,
                cs: acs,
            };
            let bv = MatRef {
                data: &b,
                offset: 2,
                rs: brs,
                cs: bcs,
            };
            let want = reference(m, n, k, av, bv);
            for isa in isas() {
                for threads in [1, 2] {
                    let mut c = vec![f32::NAN; m * n];
                    sgemm_with(isa, m, n, k, av, bv, &mut c, threads).expect("in-bounds views");
                    for (idx, (&got, &w)) in c.iter().zip(&want).enumerate() {
                        let err = (got as f64 - w).abs();
                        assert!(
                            err <= tol * (1.0 + w.abs()) * (k as f64).sqrt().max(1.0),
                            "{isa:?} t{threads} m{m} n{n} k{k} orders ({ao},{bo}) at {idx}: \
                             got {got}, want {w}"
                        );
                    }
                }
            }
        }
    }

    const SIZES: [usize; 6] = [1, 7, 16, 33, 129, 260];

    #[test]
    fn f32_matches_reference_on_awkward_sizes() {
        for &m in &SIZES {
            for &n in &SIZES {
                for &k in &[1, 7, 33, 129, 260] {
                    // Keep the largest cubes out: they add time, not coverage.
                    if m * n * k <= 260 * 260 * 33 {
                        check(|x| x, m, n, k, 1e-5);
                    }
                }
            }
        }
    }

    #[test]
    fn f32_block_boundaries() {
        // Cross MC (rows), NC (columns) and KC (depth) blocks, with ragged edges.
        check(|x| x, MC + 13, 40, KC + 5, 1e-5);
        check(|x| x, 37, NC + 45, 20, 1e-5);
        check(|x| x, 100, 70, 3 * KC + 1, 1e-5);
    }

    #[test]
    fn half_inputs_widen_exactly() {
        for (m, n, k) in [
            (1, 33, 17),
            (7, 129, 33),
            (33, 7, 129),
            (129, 70, 40),
            (5, 1, 33),
        ] {
            check(bf16::from_f32, m, n, k, 1e-5);
            check(f16::from_f32, m, n, k, 1e-5);
        }
    }

    #[test]
    fn degenerate_shapes() {
        let a = [1f32, 2.0];
        let b = [3f32, 4.0];
        let av = MatRef {
            data: &a[..],
            offset: 0,
            rs: 2,
            cs: 1,
        };
        let bv = MatRef {
            data: &b[..],
            offset: 0,
            rs: 2,
            cs: 1,
        };
        // k = 0: zeros, whatever was in C.
        let mut c = vec![7f32; 4];
        sgemm(2, 2, 0, av, bv, &mut c, 2).expect("k = 0");
        assert_eq!(c, [0.0; 4]);
        // Empty output.
        let mut c: Vec<f32> = vec![];
        sgemm(0, 2, 1, av, bv, &mut c, 2).expect("m = 0");
        // Out-of-bounds views and short outputs are errors, not panics.
        let mut c = vec![0f32; 4];
        assert!(sgemm(2, 2, 2, av, bv, &mut c, 1).is_err());
        let mut c = vec![0f32; 1];
        assert!(sgemm(1, 2, 1, av, bv, &mut c, 1).is_err());
    }

    #[test]
    fn transpose16_is_a_transpose() {
        #[cfg(target_arch = "x86_64")]
        if Isa::detect() == Isa::Avx512 {
            // A 16 × 16 packed through the column-major path equals the row-major one.
            let b: Vec<f32> = (0..16 * 16).map(|x| x as f32).collect();
            let rm = Raw {
                ptr: b.as_ptr(),
                rs: 16,
                cs: 1,
            };
            let cm = Raw {
                ptr: b.as_ptr(),
                rs: 1,
                cs: 16,
            };
            let (mut x, mut y) = (vec![0f32; NR * 16], vec![0f32; NR * 16]);
            // SAFETY: AVX-512F detected; both views cover the 256-element buffer exactly.
            unsafe {
                avx512::pack_b(&mut x, rm, 16, 16, 0, 1);
                avx512::pack_b(&mut y, cm, 16, 16, 0, 1);
            }
            for p in 0..16 {
                for j in 0..16 {
                    assert_eq!(x[p * NR + j], b[p * 16 + j]);
                    assert_eq!(y[p * NR + j], b[j * 16 + p]);
                }
            }
        }
    }
}
