//! Prompt-prefill matrix products on Intel AMX tiles (bf16 × bf16 → f32).
//!
//! A prompt multiplies every weight row by many tokens at once, which makes the product
//! compute-bound; AMX's `tdpbf16ps` does a 16×16×32 bf16 product (16 384 flops) per
//! instruction, several times what AVX-512 reaches. Weights reach it as bf16 rows
//! ([`super::to_bf16`] dequantizes ggml blocks straight to them), activations as bf16 tiles
//! in the layout the instruction wants for its second operand ([`pack_x`]).
//!
//! Rust's AMX intrinsics are unstable, so the tile instructions are written with `asm!` and
//! fixed tile registers: C tiles in `tmm0..3`, weight (A) tiles in `tmm4, tmm5`, token (B)
//! tiles in `tmm6, tmm7`, a 2×2 blocking in which each tile load feeds two products.
//!
//! What the measurements on a Sapphire Rapids core decided (single thread; `tdpbf16ps` alone
//! peaks at ~3.5 TFLOP/s there):
//! - Tile loads are the limit, and alignment is most of it: a 1 KiB tile whose 64-byte rows
//!   straddle cache lines loads in ~15 ns, an aligned one in ~2.4 ns; the 2×2 loop runs at
//!   ~1.1 TFLOP/s on misaligned operands and ~3 TFLOP/s on aligned ones (from L1). Hence
//!   [`AlignedBuf`], and aligned copies inside [`gemm()`] of operands that are not.
//! - The C tiles are \[weight row]\[token] and the output is \[token]\[weight row], so each is
//!   transposed (AVX-512 shuffles) on its way out. For m = 128, k = 576, 1536 rows: the
//!   products alone take ~121 µs, with the transposing stores interleaved ~243 µs, with all
//!   C tiles of a chunk stored first and written out afterwards (what [`gemm()`] does) ~185 µs.
//!   Swapping the operands (tokens as A, weights packed as B) lets `tilestored` write the
//!   output directly: ~160 µs there, and ~30% less time on problems that fit L2, at the price
//!   of packing the weights into tiles — a possible next step.
//!
//! Using AMX needs more than CPUID: Linux keeps the 8 KiB tile state disabled (XFD) until the
//! process asks for it with `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; the first
//! tile instruction of a process that did not ask dies with SIGILL (as ggml's AMX path does on
//! some machines). [`available`] checks the CPU, the OS and asks for the permission once; every
//! caller must fall back when it says no. `TENSOR_ENGINE_NO_AMX=1` makes it say no, to test and
//! measure the fallback.

use std::sync::OnceLock;

/// Whether [`gemm()`] can run here: the CPU has AMX-TILE, AMX-BF16 and AVX-512, the OS saves the
/// tile state, the kernel granted this process the tile-data permission, and
/// `TENSOR_ENGINE_NO_AMX` is not set (to anything but `0`). Decided once per process.
pub fn available() -> bool {
    static A: OnceLock<bool> = OnceLock::new();
    *A.get_or_init(|| {
        if std::env::var("TENSOR_ENGINE_NO_AMX").is_ok_and(|v| !v.is_empty() && v != "0") {
            return false;
        }
        detect()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    if !super::features().avx512 {
        return false;
    }
    let max_leaf = __cpuid(0).eax;
    if max_leaf < 0x1e {
        return false;
    }
    let l7 = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = ((l7.edx >> 22) & 1 == 1, (l7.edx >> 24) & 1 == 1);
    let osxsave = (__cpuid(1).ecx >> 27) & 1 == 1;
    if !(amx_bf16 && amx_tile && osxsave) {
        return false;
    }
    // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS saves and restores the tile state.
    // SAFETY: OSXSAVE was checked, so XGETBV is enabled.
    let xcr0 = unsafe { xgetbv0() };
    if xcr0 & (3 << 17) != 3 << 17 {
        return false;
    }
    // Palette 1 must offer what the kernel configures: 8 tiles of 16 rows × 64 bytes, and the
    // multiplier must take a full tile (16 rows of K, 64 bytes of N).
    let p1 = __cpuid_count(0x1d, 1);
    let tmul = __cpuid_count(0x1e, 0);
    let tiles_fit = (p1.eax >> 16) >= 1024
        && (p1.ebx & 0xffff) >= 64
        && (p1.ebx >> 16) >= 8
        && (p1.ecx & 0xffff) >= 16
        && (tmul.ebx & 0xff) >= 16
        && ((tmul.ebx >> 8) & 0xffff) >= 64;
    if !tiles_fit {
        return false;
    }
    request_tile_permission()
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    // Other systems enable AMX differently (or not at all); stay on the fallback there.
    false
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    std::arch::x86_64::_xgetbv(0)
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, then `ARCH_GET_XCOMP_PERM` to check
/// that the grant took. The permission is per process, so one request covers every thread.
/// A raw `syscall` keeps the crate free of libc.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_GET_XCOMP_PERM: u64 = 0x1022;
    const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
    const XFEATURE_XTILEDATA: u64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl takes an integer here and touches no memory of ours; `syscall`
    // clobbers rcx and r11, declared below.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret != 0 {
        return false;
    }
    let mut bits = 0u64;
    let ret: i64;
    // SAFETY: ARCH_GET_XCOMP_PERM writes one u64 to the address passed, which is `bits`.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_GET_XCOMP_PERM,
            in("rsi") &mut bits as *mut u64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0 && (bits >> XFEATURE_XTILEDATA) & 1 == 1
}

/// `f32` → bf16 bits the way `vcvtne2ps2bf16` (and so [`pack_x`]'s fast path) does it:
/// round to nearest even, NaNs kept but made quiet, and — unlike a plain rounding — f32
/// denormals flushed to a signed zero. Matching the instruction bit for bit lets every SIMD
/// conversion be tested for equality with this one; the flushed values (below 1.2e-38) are
/// far beneath anything a bf16 product can resolve anyway.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    if b & 0x7f80_0000 == 0 {
        return ((b >> 16) & 0x8000) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 value of bf16 bits.
#[inline]
pub fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// A 64-byte aligned buffer of bf16 bits (or any u16), for [`pack_x`]'s output and the
/// weights given to [`gemm()`]: a tile row that straddles two cache lines loads several times
/// slower (measured: ~2.4 ns per 1 KiB tile aligned, ~15 ns misaligned), and a `Vec<u16>`
/// is only 16-byte aligned. [`gemm()`] copies misaligned operands into aligned scratch.
#[derive(Clone)]
pub struct AlignedBuf {
    lines: Vec<Line>,
    len: usize,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u16; 32]);

impl AlignedBuf {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        AlignedBuf {
            lines: vec![Line([0; 32]); len.div_ceil(32)],
            len,
        }
    }

    /// A copy of `s`.
    pub fn from_slice(s: &[u16]) -> Self {
        let mut b = Self::zeroed(s.len());
        b.copy_from_slice(s);
        b
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u16];
    fn deref(&self) -> &[u16] {
        // SAFETY: `lines` holds at least `len` initialized u16s, contiguous (repr(C) arrays
        // of u16 with no padding: 64 bytes each).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u16, self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u16] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut u16, self.len) }
    }
}

/// Elements (u16) [`pack_x`] writes for `m` tokens of `k` values: tokens padded to 16.
pub fn packed_len(m: usize, k: usize) -> usize {
    m.div_ceil(16) * 16 * k
}

/// Index in a packed buffer of token `t`, element `kk` (see [`pack_x`]).
#[inline]
fn packed_index(k: usize, t: usize, kk: usize) -> usize {
    let (g, c) = (t / 16, t % 16);
    let (s, e) = (kk / 32, kk % 32);
    (g * (k / 32) + s) * 512 + (e / 2) * 32 + 2 * c + e % 2
}

/// Convert `[m, k]` row-major f32 activations to bf16 tiles for [`gemm()`] (`k` a multiple of
/// 32; `out` holds at least [`packed_len`] elements).
///
/// Tokens are the N side of the tile product: for each group of 16 tokens (the last padded
/// with zeros) and each step of 32 along `k` comes one 1 KiB tile of 16 rows × 16 dwords, row
/// `r`, dword `c` holding `(x[t0 + c][k0 + 2r], x[t0 + c][k0 + 2r + 1])`. Tiles are stored
/// `[group][step]`, so the kernel walks one group's tiles contiguously (row stride 64 bytes).
pub fn pack_x(x: &[f32], m: usize, k: usize, out: &mut [u16]) {
    assert!(
        k.is_multiple_of(32),
        "pack_x: k = {k} is not a multiple of 32"
    );
    assert!(x.len() >= m * k && out.len() >= packed_len(m, k));
    #[cfg(target_arch = "x86_64")]
    if bf16_convert() {
        // SAFETY: AVX-512 F/BW/VL and BF16 were detected; the lengths were checked above.
        unsafe { x86::pack_x(x, m, k, out) };
        return;
    }
    pack_x_ref(x, m, k, out);
}

/// Whether this CPU converts f32 to bf16 in hardware (AVX-512 BF16), detected once.
pub(crate) fn bf16_convert() -> bool {
    static B: OnceLock<bool> = OnceLock::new();
    *B.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            super::features().avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// The reference for [`pack_x`]: one element at a time.
pub fn pack_x_ref(x: &[f32], m: usize, k: usize, out: &mut [u16]) {
    assert!(k.is_multiple_of(32) && x.len() >= m * k && out.len() >= packed_len(m, k));
    for t in 0..m.div_ceil(16) * 16 {
        for kk in 0..k {
            let v = if t < m { f32_to_bf16(x[t * k + kk]) } else { 0 };
            out[packed_index(k, t, kk)] = v;
        }
    }
}

/// `out[t * ldo + r] = Σ_k w[r][k] · x[t][k]` for `t < m`, `r < nr`, on AMX tiles.
///
/// `xp` holds the `m` tokens packed by [`pack_x`]; `w` holds `nr` rows of `k` bf16 weights,
/// row-major; `k` is a multiple of 32. Sums are f32 (each `tdpbf16ps` adds 32 exact bf16
/// products). Only the `m × nr` outputs are written; entries of `out` between rows (`ldo >
/// nr`) are left alone. Panics unless [`available`] (instead of dying on an illegal
/// instruction). Safe to call from several threads at once: the tile state is per thread.
pub fn gemm(m: usize, k: usize, xp: &[u16], w: &[u16], nr: usize, out: &mut [f32], ldo: usize) {
    assert!(
        available(),
        "amx::gemm called without AMX (check amx::available())"
    );
    assert!(
        k.is_multiple_of(32),
        "amx::gemm: k = {k} is not a multiple of 32"
    );
    assert!(xp.len() >= packed_len(m, k) && w.len() >= nr * k);
    if m == 0 || nr == 0 || k == 0 {
        if k == 0 {
            for t in 0..m {
                out[t * ldo..t * ldo + nr].fill(0.0);
            }
        }
        return;
    }
    assert!(
        (m == 1 || ldo >= nr) && out.len() >= (m - 1) * ldo + nr,
        "amx::gemm: output too small"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available` checked AMX, AVX-512 and the OS permission; lengths checked above.
    unsafe {
        x86::gemm(m, k, xp, w, nr, out, ldo)
    }
}

/// The reference for [`gemm()`]: the same bf16 inputs, multiplied and summed in f32.
pub fn gemm_ref(m: usize, k: usize, xp: &[u16], w: &[u16], nr: usize, out: &mut [f32], ldo: usize) {
    assert!(k.is_multiple_of(32) && xp.len() >= packed_len(m, k) && w.len() >= nr * k);
    let mut xt = vec![0f32; k];
    for t in 0..m {
        for (kk, v) in xt.iter_mut().enumerate() {
            *v = bf16_to_f32(xp[packed_index(k, t, kk)]);
        }
        for r in 0..nr {
            let wr = &w[r * k..(r + 1) * k];
            out[t * ldo + r] = wr.iter().zip(&xt).map(|(&a, &b)| bf16_to_f32(a) * b).sum();
        }
    }
}

/// `vcvtne2ps2bf16` of two f32 vectors, for [`super::to_bf16`]'s kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::cvt32 as x86_cvt32;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{packed_len, AlignedBuf};
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// Transpose a 16×16 block of 32-bit values held as 16 rows (4 shuffle stages, 64 shuffles).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn transpose16(r: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        // Within each 128-bit lane L, rows 2i and 2i+1 interleaved.
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // r[4g + j], lane L: column 4L + j of rows 4g..4g+4.
        for g in 0..4 {
            let b = 4 * g;
            let (a0, a1) = (_mm512_castps_pd(t[b]), _mm512_castps_pd(t[b + 1]));
            let (a2, a3) = (_mm512_castps_pd(t[b + 2]), _mm512_castps_pd(t[b + 3]));
            r[b] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
            r[b + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
            r[b + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
            r[b + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
        }
        // Gather lane L of r[j], r[4 + j], r[8 + j], r[12 + j]: column 4L + j.
        for j in 0..4 {
            let u0 = _mm512_shuffle_f32x4::<0x88>(r[j], r[4 + j]);
            let v0 = _mm512_shuffle_f32x4::<0xdd>(r[j], r[4 + j]);
            let u1 = _mm512_shuffle_f32x4::<0x88>(r[8 + j], r[12 + j]);
            let v1 = _mm512_shuffle_f32x4::<0xdd>(r[8 + j], r[12 + j]);
            t[j] = _mm512_shuffle_f32x4::<0x88>(u0, u1);
            t[8 + j] = _mm512_shuffle_f32x4::<0xdd>(u0, u1);
            t[4 + j] = _mm512_shuffle_f32x4::<0x88>(v0, v1);
            t[12 + j] = _mm512_shuffle_f32x4::<0xdd>(v0, v1);
        }
        *r = t;
    }

    /// 32 f32 → 32 bf16 (one 64-byte vector, element order kept).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(crate) fn cvt32(lo: __m512, hi: __m512) -> __m512i {
        // `vcvtne2ps2bf16` puts its second operand in the low half.
        // SAFETY: __m512bh and __m512i are both 64 plain bytes.
        unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn pack_x(x: &[f32], m: usize, k: usize, out: &mut [u16]) {
        let ks = k / 32;
        let mut rows = [_mm512_setzero_ps(); 16];
        for g in 0..m.div_ceil(16) {
            let n = (m - 16 * g).min(16);
            for s in 0..ks {
                for (c, row) in rows.iter_mut().enumerate() {
                    *row = if c < n {
                        let p = x.as_ptr().add((16 * g + c) * k + 32 * s);
                        let v = cvt32(_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
                        _mm512_castsi512_ps(v)
                    } else {
                        _mm512_setzero_ps()
                    };
                }
                transpose16(&mut rows);
                let dst = out.as_mut_ptr().add((g * ks + s) * 512);
                for (r, row) in rows.iter().enumerate() {
                    _mm512_storeu_ps(dst.add(32 * r) as *mut f32, *row);
                }
            }
        }
    }

    /// The 64-byte tile configuration: palette 1, every tile used 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    impl TileConfig {
        fn full() -> Self {
            let mut c = [0u8; 64];
            c[0] = 1; // palette
            for t in 0..8 {
                c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes()); // colsb
                c[48 + t] = 16; // rows
            }
            TileConfig(c)
        }
    }

    macro_rules! tload {
        ($t:literal, $p:expr, $stride:expr) => {
            asm!(
                concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
                p = in(reg) $p,
                s = in(reg) $stride,
                options(nostack, readonly, preserves_flags)
            )
        };
    }
    macro_rules! tdp {
        ($c:literal, $a:literal, $b:literal) => {
            asm!(
                concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
                options(nomem, nostack, preserves_flags)
            )
        };
    }
    macro_rules! tstore {
        ($t:literal, $p:expr) => {
            asm!(
                concat!("tilestored [{p} + {s}*1], tmm", $t),
                p = in(reg) $p,
                s = in(reg) 64usize,
                options(nostack, preserves_flags)
            )
        };
    }
    macro_rules! tzero {
        ($t:literal) => {
            asm!(
                concat!("tilezero tmm", $t),
                options(nomem, nostack, preserves_flags)
            )
        };
    }

    /// One block of `RA` (1 or 2) weight tiles × `TB` (1 or 2) token tiles over all of `k`,
    /// stored to `c` (tile `2·ia + ib` at `c[256·(2·ia + ib)..]`, [weight row][token]).
    #[inline(always)]
    unsafe fn block<const RA: usize, const TB: usize>(
        a: [*const u16; 2],
        b: [*const u16; 2],
        ks: usize,
        sa: usize,
        c: *mut f32,
    ) {
        tzero!(0);
        if TB == 2 {
            tzero!(1);
        }
        if RA == 2 {
            tzero!(2);
            if TB == 2 {
                tzero!(3);
            }
        }
        for s in 0..ks {
            tload!(4, a[0].add(32 * s), sa);
            tload!(6, b[0].add(512 * s), 64usize);
            tdp!(0, 4, 6);
            if TB == 2 {
                tload!(7, b[1].add(512 * s), 64usize);
                tdp!(1, 4, 7);
            }
            if RA == 2 {
                tload!(5, a[1].add(32 * s), sa);
                tdp!(2, 5, 6);
                if TB == 2 {
                    tdp!(3, 5, 7);
                }
            }
        }
        tstore!(0, c);
        if TB == 2 {
            tstore!(1, c.add(256));
        }
        if RA == 2 {
            tstore!(2, c.add(512));
            if TB == 2 {
                tstore!(3, c.add(768));
            }
        }
    }

    /// Write C tile `c` ([16 weight rows][16 tokens]) to `out[t * ldo + r]` for the first
    /// `nt` tokens and `nw` rows, transposed in registers.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn write_tile(c: *const f32, out: *mut f32, ldo: usize, nt: usize, nw: usize) {
        let mut v = [_mm512_setzero_ps(); 16];
        for (i, x) in v.iter_mut().enumerate() {
            *x = _mm512_load_ps(c.add(16 * i));
        }
        transpose16(&mut v);
        let mask: __mmask16 = if nw >= 16 { 0xffff } else { (1u16 << nw) - 1 };
        for (t, x) in v.iter().enumerate().take(nt) {
            _mm512_mask_storeu_ps(out.add(t * ldo), mask, *x);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn gemm(
        m: usize,
        k: usize,
        xp: &[u16],
        w: &[u16],
        nr: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        let ks = k / 32;
        let sa = 2 * k; // bytes between weight rows
        let ng = m.div_ceil(16);
        // Tile rows that straddle two cache lines load several times slower, so misaligned
        // operands are copied into aligned scratch: the tokens once, the weights a chunk at
        // a time (which also pads a last, partial block of rows with zero rows, so tile loads
        // never read past `w`).
        let xcopy;
        let xp = if (xp.as_ptr() as usize).is_multiple_of(64) {
            xp
        } else {
            xcopy = AlignedBuf::from_slice(&xp[..packed_len(m, k)]);
            &xcopy[..]
        };
        let w_aligned = (w.as_ptr() as usize).is_multiple_of(64);
        let mut panel = AlignedBuf::zeroed(0);
        // Weight rows per chunk: ~256 KiB of them, which stay in L2 while every pair of
        // token groups streams past (a pair of token groups, 64·k bytes, stays in L1).
        let chunk = ((256 << 10) / sa).max(32) / 32 * 32;
        // C tiles of one pair of token groups × one chunk: [row block][token group].
        let mut cbuf = AlignedBuf::zeroed(2 * 512 * chunk.min(nr.div_ceil(32) * 32) / 16);
        let c = cbuf.as_mut_ptr() as *mut f32;
        let o = out.as_mut_ptr();
        let cfg = TileConfig::full();
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        let mut r0 = 0;
        while r0 < nr {
            let rows = (nr - r0).min(chunk);
            let nb = rows.div_ceil(16);
            let abase = if w_aligned && rows.is_multiple_of(16) {
                w.as_ptr().add(r0 * k)
            } else {
                if panel.len() < nb * 16 * k {
                    panel = AlignedBuf::zeroed(nb * 16 * k);
                }
                panel[..rows * k].copy_from_slice(&w[r0 * k..(r0 + rows) * k]);
                panel[rows * k..nb * 16 * k].fill(0);
                panel.as_ptr()
            };
            let mut g = 0;
            while g < ng {
                let tb = (ng - g).min(2);
                let b = [
                    xp.as_ptr().add(g * ks * 512),
                    xp.as_ptr().add((g + tb - 1) * ks * 512),
                ];
                // All products first, then all the transposing writes: interleaving the
                // stores to `out` with the tile work measured ~25% slower.
                let mut rb = 0;
                while rb < nb {
                    let ra = (nb - rb).min(2);
                    let a = [abase.add(16 * rb * k), abase.add(16 * (rb + ra - 1) * k)];
                    let cp = c.add(512 * rb);
                    match (ra, tb) {
                        (2, 2) => block::<2, 2>(a, b, ks, sa, cp),
                        (2, _) => block::<2, 1>(a, b, ks, sa, cp),
                        (_, 2) => block::<1, 2>(a, b, ks, sa, cp),
                        _ => block::<1, 1>(a, b, ks, sa, cp),
                    }
                    rb += ra;
                }
                for ib in 0..tb {
                    let t0 = 16 * (g + ib);
                    for j in 0..nb {
                        let r = r0 + 16 * j;
                        write_tile(
                            c.add(256 * (2 * j + ib)),
                            o.add(t0 * ldo + r),
                            ldo,
                            (m - t0).min(16),
                            (nr - r).min(16),
                        );
                    }
                }
                g += tb;
            }
            r0 += rows;
        }
        asm!("tilerelease", options(nomem, nostack, preserves_flags));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_bf16(n: usize, rng: &mut rand::rngs::StdRng) -> Vec<u16> {
        (0..n)
            .map(|_| f32_to_bf16(rng.random::<f32>() * 2.0 - 1.0))
            .collect()
    }

    #[test]
    fn f32_to_bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even stays
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd rounds up
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80); // rounds to infinity
        assert_eq!(f32_to_bf16(f32::from_bits(0x8000_0005)), 0x8000); // denormal flushed
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0); // sNaN made quiet
        assert_eq!(f32_to_bf16(f32::NEG_INFINITY), 0xff80);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn hardware_conversion_matches_f32_to_bf16() {
        use std::arch::x86_64::*;
        if !bf16_convert() {
            eprintln!("no AVX-512 BF16 here: hardware conversion not tested");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut xs: Vec<u32> = (0..1 << 16).map(|_| rng.random()).collect();
        // Special values and exact ties.
        xs.extend([
            0,
            0x8000_0000,
            1,
            0x007f_ffff,
            0x8000_0001,
            0x0080_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7f80_0001,
            0x7fc0_0000,
            0xffc1_2345,
            0x7f7f_ffff,
            0x3f80_8000,
            0x3f81_8000,
        ]);
        xs.resize(xs.len().div_ceil(32) * 32, 0);
        for ch in xs.chunks_exact(32) {
            let f: Vec<f32> = ch.iter().map(|&b| f32::from_bits(b)).collect();
            let mut got = [0u16; 32];
            // SAFETY: BF16 conversion detected; 32 floats and 32 outputs.
            unsafe {
                let v = x86::cvt32(
                    _mm512_loadu_ps(f.as_ptr()),
                    _mm512_loadu_ps(f.as_ptr().add(16)),
                );
                _mm512_storeu_si512(got.as_mut_ptr() as *mut __m512i, v);
            }
            for (g, x) in got.iter().zip(&f) {
                assert_eq!(*g, f32_to_bf16(*x), "{:08x}", x.to_bits());
            }
        }
    }

    #[test]
    fn pack_x_matches_the_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for &(m, k) in &[(1, 32), (5, 64), (16, 32), (17, 96), (40, 576)] {
            let x: Vec<f32> = (0..m * k)
                .map(|_| rng.random::<f32>() * 4.0 - 2.0)
                .collect();
            let n = packed_len(m, k);
            let (mut a, mut b) = (vec![0xffffu16; n], vec![0xeeeeu16; n]);
            pack_x(&x, m, k, &mut a);
            pack_x_ref(&x, m, k, &mut b);
            assert_eq!(a, b, "m={m} k={k}");
            // The layout itself: token t, element kk.
            for t in 0..m {
                for kk in 0..k {
                    assert_eq!(a[packed_index(k, t, kk)], f32_to_bf16(x[t * k + kk]));
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transpose16_transposes() {
        use std::arch::x86_64::*;
        if !crate::quant::features().avx512 {
            return;
        }
        let src: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut got = [0f32; 256];
        // SAFETY: AVX-512 detected; 256 floats in and out.
        unsafe {
            let mut v = [_mm512_setzero_ps(); 16];
            for (i, x) in v.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(src.as_ptr().add(16 * i));
            }
            x86::transpose16(&mut v);
            for (i, x) in v.iter().enumerate() {
                _mm512_storeu_ps(got.as_mut_ptr().add(16 * i), *x);
            }
        }
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(got[16 * i + j], src[16 * j + i]);
            }
        }
    }

    /// Compare [`gemm()`] with [`gemm_ref`], with operands 64-byte aligned and not (one u16
    /// off); `ldo = nr + 3` checks nothing is written between output rows.
    fn check(m: usize, k: usize, nr: usize, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x: Vec<f32> = (0..m * k)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        let w = AlignedBuf::from_slice(&random_bf16(nr * k + 1, &mut rng));
        let mut xp = AlignedBuf::zeroed(packed_len(m, k) + 1);
        pack_x(&x, m, k, &mut xp);
        let ldo = nr + 3;
        let len = (m - 1) * ldo + nr;
        let mut want = vec![f32::NAN; len];
        gemm_ref(m, k, &xp, &w, nr, &mut want, ldo);
        // The same operands one element into their buffers.
        let mut xp1 = AlignedBuf::zeroed(packed_len(m, k) + 1);
        xp1[1..].copy_from_slice(&xp[..packed_len(m, k)]);
        let mut w1 = AlignedBuf::zeroed(nr * k + 1);
        w1[1..].copy_from_slice(&w[..nr * k]);
        for (xs, ws) in [(&xp[..], &w[..]), (&xp1[1..], &w1[1..])] {
            let mut got = vec![f32::NAN; len];
            gemm(m, k, xs, ws, nr, &mut got, ldo);
            for t in 0..m {
                for r in 0..nr {
                    let mag: f32 = (0..k)
                        .map(|kk| {
                            (bf16_to_f32(w[r * k + kk]) * bf16_to_f32(xp[packed_index(k, t, kk)]))
                                .abs()
                        })
                        .sum();
                    let (g, e) = (got[t * ldo + r], want[t * ldo + r]);
                    assert!(
                        (g - e).abs() <= 1e-4 * mag + 1e-30,
                        "m={m} k={k} nr={nr} t={t} r={r}: {g} vs {e} (|terms| {mag})"
                    );
                }
                for r in nr..ldo {
                    if t * ldo + r < len {
                        assert!(got[t * ldo + r].is_nan(), "wrote between rows");
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_matches_the_reference() {
        if !available() {
            eprintln!("AMX not available here: amx::gemm not tested");
            return;
        }
        let mut seed = 0;
        for &m in &[1, 5, 16, 17, 128] {
            for &nr in &[1, 15, 16, 33, 100] {
                for &k in &[32, 64, 576, 1536] {
                    seed += 1;
                    check(m, k, nr, seed);
                }
            }
        }
    }

    #[test]
    fn gemm_runs_on_several_threads_at_once() {
        if !available() {
            eprintln!("AMX not available here: amx::gemm not tested");
            return;
        }
        let (m, k, nr) = (37, 256, 70);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let x: Vec<f32> = (0..m * k)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        let w = random_bf16(nr * k, &mut rng);
        let mut xp = vec![0u16; packed_len(m, k)];
        pack_x(&x, m, k, &mut xp);
        let mut want = vec![0f32; m * nr];
        gemm(m, k, &xp, &w, nr, &mut want, nr);
        // Each thread computes the whole product many times into its own buffer.
        let results: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut o = vec![0f32; m * nr];
                        for _ in 0..50 {
                            gemm(m, k, &xp, &w, nr, &mut o, nr);
                        }
                        o
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            assert_eq!(r, want);
        }
    }

    /// `cargo test -p tensor-cpu --release --lib quant::amx::tests::bench -- --ignored
    /// --nocapture`: single-thread GFLOP/s of the prefill shapes.
    #[test]
    #[ignore]
    fn bench() {
        if !available() {
            eprintln!("AMX not available here");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for &(m, k, nr) in &[
            (128, 576, 1536),
            (128, 1536, 576),
            (512, 576, 1536),
            (128, 2048, 2048),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|_| rng.random::<f32>() * 2.0 - 1.0)
                .collect();
            let w = AlignedBuf::from_slice(&random_bf16(nr * k, &mut rng));
            let mut xp = AlignedBuf::zeroed(packed_len(m, k));
            let mut out = vec![0f32; m * nr];
            let t = std::time::Instant::now();
            let mut pack = f64::MAX;
            while t.elapsed().as_secs_f64() < 0.3 {
                let t1 = std::time::Instant::now();
                pack_x(&x, m, k, &mut xp);
                pack = pack.min(t1.elapsed().as_secs_f64());
            }
            gemm(m, k, &xp, &w, nr, &mut out, nr);
            // The fastest of many runs: the machine may be shared.
            let t = std::time::Instant::now();
            let mut s = f64::MAX;
            while t.elapsed().as_secs_f64() < 1.0 {
                let t1 = std::time::Instant::now();
                gemm(m, k, &xp, &w, nr, &mut out, nr);
                s = s.min(t1.elapsed().as_secs_f64());
            }
            let flops = 2.0 * (m * k * nr) as f64;
            println!(
                "m={m:4} k={k:5} nr={nr:5}: {:8.1} us, {:6.1} GFLOP/s (pack_x {:.1} us)",
                s * 1e6,
                flops / s * 1e-9,
                pack * 1e6
            );
        }
    }
}
