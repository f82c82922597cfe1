//! AVX-512 (F/BW/VL, with and without VNNI) k-quant kernels: 64 weights per register.
//!
//! A block is four chunks of 64 weights, chunk `k` matching activations `64k..64k+64`. Each
//! chunk is decoded into unsigned 8-bit quants; the block's 16-bit scales are spread over the
//! products' lanes with `vpermw`. Without VNNI a chunk is `maddubs` (sums of pairs, 16 bits)
//! then `madd` with the pairs' scales into 32 bits. With VNNI, formats with unsigned quants
//! of at most 6 bits take `dpbusd` (sums of four, at most 4 · 63 · 128 in magnitude) on two
//! chunks, pack both to 16 bits in one register and `madd` that with the scales: three
//! multiplies for 128 weights instead of four. IQ4_XS (quants up to 127) keeps `maddubs`.
//!
//! Everything below the two `#[target_feature]` entry points is `#[inline(always)]`, so it is
//! compiled inside them with their features. Every `unsafe fn` here requires those features
//! and that the pointers it is given are readable for what it loads (whole blocks: a
//! weight block of `SIZE` bytes, one [`BlockQ8K`]); nothing reads past the block it is given.

use super::{iq4xs_scales, k4_scales, q3_scales, Fmt, Job, Min, ABS_IQ4NL, IQ4XS, Q2K, Q3K, Q4K};
use super::{Q5K, Q6K};
use crate::quant::act::BlockQ8K;
use crate::quant::PREFETCH;
use std::arch::x86_64::*;

/// One decoded block, what every chunk of it and the final scaling need.
#[derive(Clone, Copy)]
pub(super) struct Blk {
    /// The block's scale `d`, in every lane.
    d: __m512,
    /// `dmin` in every lane ([`Min::Float`]).
    dm: __m256,
    /// Per 16-weight group, the factor of the activations' group sum: the minimums
    /// ([`Min::Float`]) or minus offset × scale ([`Min::Int`]).
    m16: __m256i,
    /// The block's 16-bit scales in the low lanes, for `vpermw`.
    sc: __m512i,
}

/// A format's AVX-512 decoder.
pub(super) trait Kind: Fmt {
    /// # Safety
    /// AVX-512F/BW/VL and F16C; `b` is readable for `Self::SIZE` bytes.
    unsafe fn prep(b: *const u8) -> Blk;
    /// Chunk `k` (`0..4`) of the block at `b`: unsigned quants and (for [`Fmt::SIGNED`]
    /// formats) the mask of quants whose value is negative.
    ///
    /// # Safety
    /// As [`Kind::prep`], `k < 4`.
    unsafe fn chunk(b: *const u8, k: usize) -> (__m512i, __mmask64);
}

/// `vpermw` indices that spread a block's scales over the 16-bit pairs of chunk `k`
/// (`maddubs` pairs), for groups of 16 and 32 weights.
static CHUNK16: [[i16; 32]; 4] = chunk_index(16);
static CHUNK32: [[i16; 32]; 4] = chunk_index(32);
/// The same for the VNNI kernels' packed sums of chunks `2i` and `2i + 1`: in 128-bit lane
/// `L`, words 0..4 are the 4-weight sums `4L..4L + 4` of the first chunk, words 4..8 those of
/// the second (`vpackssdw`).
static PACKED16: [[i16; 32]; 2] = packed_index(16);
static PACKED32: [[i16; 32]; 2] = packed_index(32);
/// For Q4_K/Q5_K: group `g` of 16 takes minimum `g / 2` (lanes 8.. of the scales).
static IDX_MIN4: [i16; 16] = [8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15];

const fn chunk_index(group: usize) -> [[i16; 32]; 4] {
    let mut t = [[0i16; 32]; 4];
    let mut k = 0;
    while k < 4 {
        let mut i = 0;
        while i < 32 {
            // Pair i covers weights 64k + 2i, 64k + 2i + 1.
            t[k][i] = ((64 * k + 2 * i) / group) as i16;
            i += 1;
        }
        k += 1;
    }
    t
}

const fn packed_index(group: usize) -> [[i16; 32]; 2] {
    let mut t = [[0i16; 32]; 2];
    let mut h = 0;
    while h < 2 {
        let mut i = 0;
        while i < 32 {
            let (lane, word) = (i / 8, i % 8);
            let k = 2 * h + word / 4;
            // Word i holds the sum of weights 64k + 4 (4 lane + word % 4) + 0..4.
            t[h][i] = ((64 * k + 4 * (4 * lane + word % 4)) / group) as i16;
            i += 1;
        }
        h += 1;
    }
    t
}

/// Activations `64k..64k + 64` of block `x`.
#[inline(always)]
unsafe fn act(x: *const BlockQ8K, k: usize) -> __m512i {
    _mm512_loadu_si512((*x).qs.as_ptr().add(64 * k).cast())
}

/// A block's 16-bit scales `sc` picked by the index vector `idx`.
#[inline(always)]
unsafe fn pick(idx: &[i16; 32], sc: __m512i) -> __m512i {
    _mm512_permutexvar_epi16(_mm512_loadu_si512(idx.as_ptr().cast()), sc)
}

/// 32 bytes at `p` in both halves of a register.
#[inline(always)]
unsafe fn bcast256(p: *const u8) -> __m512i {
    _mm512_broadcast_i64x4(_mm256_loadu_si256(p.cast()))
}

/// Every 64-bit lane of the low half shifted right by `lo`, of the high half by `hi`.
#[inline(always)]
unsafe fn shr_halves(v: __m512i, lo: u64, hi: u64) -> __m512i {
    let (lo, hi) = (lo as i64, hi as i64);
    _mm512_srlv_epi64(v, _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo))
}

/// Byte `bit` set in every byte of the low half, `bit + 1` in the high half.
#[inline(always)]
unsafe fn bit_halves(bit: usize) -> __m512i {
    let lo = (0x0101_0101_0101_0101u64 << bit) as i64;
    let hi = (0x0101_0101_0101_0101u64 << (bit + 1)) as i64;
    _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo)
}

/// The f16 at `p`, in every lane.
#[inline(always)]
unsafe fn f16_splat(p: *const u8) -> __m512 {
    let h = p.cast::<u16>().read_unaligned();
    _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// The f16 pair (`d`, `dmin`) at `p`, each in every lane.
#[inline(always)]
unsafe fn f16_pair(p: *const u8) -> (__m512, __m256) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
    (
        _mm512_broadcastss_ps(v),
        _mm256_broadcastss_ps(_mm_movehdup_ps(v)),
    )
}

#[inline(always)]
unsafe fn nib(v: __m512i) -> __m512i {
    _mm512_and_si512(v, _mm512_set1_epi8(0x0F))
}

impl Kind for Q2K {
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> Blk {
        let (d, dm) = f16_pair(b.add(80));
        let s = _mm_loadu_si128(b.cast());
        let lo = _mm_and_si128(s, _mm_set1_epi8(0x0F));
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(s), _mm_set1_epi8(0x0F));
        Blk {
            d,
            dm,
            m16: _mm256_cvtepu8_epi16(hi),
            sc: _mm512_castsi256_si512(_mm256_cvtepu8_epi16(lo)),
        }
    }

    #[inline(always)]
    unsafe fn chunk(b: *const u8, k: usize) -> (__m512i, __mmask64) {
        // Chunk k: bytes 32 (k / 2).. of qs, bit pairs 2 (k % 2) and 2 (k % 2) + 1.
        let s = 4 * (k as u64 % 2);
        let v = shr_halves(bcast256(b.add(16 + 32 * (k / 2))), s, s + 2);
        let q = _mm512_and_si512(v, _mm512_set1_epi8(3));
        (q, 0)
    }
}

impl Kind for Q3K {
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> Blk {
        let s = q3_scales(&b.add(96).cast::<[u8; 12]>().read_unaligned());
        let s = _mm_sub_epi8(_mm_loadu_si128(s.as_ptr().cast()), _mm_set1_epi8(32));
        let s16 = _mm256_cvtepi8_epi16(s);
        Blk {
            d: f16_splat(b.add(108)),
            dm: _mm256_setzero_ps(),
            // Quants are stored +4: subtract 4 · scale · group sum.
            m16: _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<2>(s16)),
            sc: _mm512_castsi256_si512(s16),
        }
    }

    #[inline(always)]
    unsafe fn chunk(b: *const u8, k: usize) -> (__m512i, __mmask64) {
        let s = 4 * (k as u64 % 2);
        let v = shr_halves(bcast256(b.add(32 + 32 * (k / 2))), s, s + 2);
        let q = _mm512_and_si512(v, _mm512_set1_epi8(3));
        // The high bit of element e is bit e / 32 of hmask[e % 32].
        let h = _mm512_test_epi8_mask(bcast256(b), bit_halves(2 * k));
        let q = _mm512_mask_add_epi8(q, h, q, _mm512_set1_epi8(4));
        (q, 0)
    }
}

/// Q4_K/Q5_K: scales, minimums and the two f16 factors.
#[inline(always)]
unsafe fn prep_k4(b: *const u8) -> Blk {
    let (d, dm) = f16_pair(b);
    let (sc, mn) = k4_scales(&b.add(4).cast::<[u8; 12]>().read_unaligned());
    let ms = _mm256_cvtepu8_epi16(_mm_set_epi64x(mn as i64, sc as i64));
    Blk {
        d,
        dm,
        m16: _mm256_permutexvar_epi16(_mm256_loadu_si256(IDX_MIN4.as_ptr().cast()), ms),
        sc: _mm512_castsi256_si512(ms),
    }
}

/// Q4_K/Q5_K chunk `k`: sub-blocks 2k and 2k + 1 are the low and high nibbles of the same
/// 32 bytes of `qs`.
#[inline(always)]
unsafe fn nibbles_k4(qs: *const u8, k: usize) -> __m512i {
    nib(shr_halves(bcast256(qs.add(32 * k)), 0, 4))
}

impl Kind for Q4K {
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> Blk {
        prep_k4(b)
    }

    #[inline(always)]
    unsafe fn chunk(b: *const u8, k: usize) -> (__m512i, __mmask64) {
        (nibbles_k4(b.add(16), k), 0)
    }
}

impl Kind for Q5K {
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> Blk {
        prep_k4(b)
    }

    #[inline(always)]
    unsafe fn chunk(b: *const u8, k: usize) -> (__m512i, __mmask64) {
        let q = nibbles_k4(b.add(48), k);
        // The fifth bit of element l of sub-block j is bit j of qh[l].
        let h = _mm512_test_epi8_mask(bcast256(b.add(16)), bit_halves(2 * k));
        let q = _mm512_mask_add_epi8(q, h, q, _mm512_set1_epi8(16));
        (q, 0)
    }
}

impl Kind for Q6K {
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> Blk {
        let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192).cast()));
        Blk {
            d: f16_splat(b.add(208)),
            dm: _mm256_setzero_ps(),
            // Quants are stored +32: subtract 32 · scale · group sum.
            m16: _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<5>(s16)),
            sc: _mm512_castsi256_si512(s16),
        }
    }

    #[inline(always)]
    unsafe fn chunk(b: *const u8, k: usize) -> (__m512i, __mmask64) {
        // Chunk k: half h = k / 2 of the block; low nibbles (k even) or high nibbles of
        // ql[64h..64h + 64]; bit pairs 2 (k % 2) · 2, + 2 of qh[32h..32h + 32] in each half.
        let h = k / 2;
        let l = _mm512_loadu_si512(b.add(64 * h).cast());
        let l = if k % 2 == 1 {
            _mm512_srli_epi16::<4>(l)
        } else {
            l
        };
        let qh = bcast256(b.add(128 + 32 * h));
        // Move the bit pair to bits 4..6 (qword shifts: the mask below drops what crosses).
        let hs = if k.is_multiple_of(2) {
            _mm512_sllv_epi64(qh, _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4))
        } else {
            _mm512_srlv_epi64(qh, _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0))
        };
        let q = _mm512_or_si512(nib(l), _mm512_and_si512(hs, _mm512_set1_epi8(0x30)));
        (q, 0)
    }
}

impl Kind for IQ4XS {
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> Blk {
        let sh = b.add(2).cast::<u16>().read_unaligned();
        let s = iq4xs_scales(sh, b.add(4).cast::<[u8; 4]>().read_unaligned());
        let s = _mm_sub_epi8(_mm_cvtsi64_si128(s as i64), _mm_set1_epi8(32));
        Blk {
            d: f16_splat(b),
            dm: _mm256_setzero_ps(),
            m16: _mm256_setzero_si256(),
            sc: _mm512_castsi128_si512(_mm_cvtepi8_epi16(s)),
        }
    }

    #[inline(always)]
    unsafe fn chunk(b: *const u8, k: usize) -> (__m512i, __mmask64) {
        // Sub-block 2k + i is the 16 bytes qs[32k + 16i..]: low nibbles then high nibbles.
        let y = _mm512_castsi256_si512(_mm256_loadu_si256(b.add(8 + 32 * k).cast()));
        let v = _mm512_permutexvar_epi64(_mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0), y);
        let n = nib(_mm512_srlv_epi64(
            v,
            _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0),
        ));
        let table = _mm512_broadcast_i32x4(_mm_loadu_si128(ABS_IQ4NL.as_ptr().cast()));
        let q = _mm512_shuffle_epi8(table, n);
        let neg = _mm512_testn_epi8_mask(n, _mm512_set1_epi8(8));
        (q, neg)
    }
}

/// `acc + Σ pairs of p · s` in 32-bit lanes.
#[inline(always)]
unsafe fn dot<const VNNI: bool>(acc: __m512i, p: __m512i, s: __m512i) -> __m512i {
    if VNNI {
        _mm512_dpwssd_epi32(acc, p, s)
    } else {
        _mm512_add_epi32(acc, _mm512_madd_epi16(p, s))
    }
}

/// Row `w` (`nb` blocks) against the `C` columns starting at `a` (column `c` is
/// `a[c·nb..(c + 1)·nb]`).
///
/// Without VNNI, each chunk is `maddubs` (pairs, 16 bits) then `madd` with the pairs'
/// scales. With VNNI, unsigned formats take `dpbusd` (sums of four, 32 bits; at most
/// 4 · 63 · 128, so they fit 16 bits) on two chunks, pack both into one register and `madd`
/// that with the scales: one multiply fewer per chunk.
///
/// # Safety
/// AVX-512F/BW/VL, FMA and F16C (plus VNNI if `VNNI`); `w` readable for `nb` blocks, `a`
/// for `C · nb` activation blocks.
#[inline(always)]
unsafe fn tile<T: Kind, const VNNI: bool, const C: usize>(
    nb: usize,
    w: *const u8,
    a: *const BlockQ8K,
) -> [f32; C] {
    let zero = _mm512_setzero_si512();
    let (chunk_idx, packed_idx) = if T::GROUP == 16 {
        (&CHUNK16, &PACKED16)
    } else {
        (&CHUNK32, &PACKED32)
    };
    let mut acc = [_mm512_setzero_ps(); C];
    for i in 0..nb {
        let b = w.add(i * T::SIZE);
        if C == 1 {
            // Decode streams the weights once: fetch ahead of the reads (see `PREFETCH`).
            for l in (0..T::SIZE).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH + l) as *const i8);
            }
        }
        let p = T::prep(b);
        let mut s = [zero; C];
        if VNNI && !T::SIGNED {
            for (h, idx) in packed_idx.iter().enumerate() {
                let (q0, _) = T::chunk(b, 2 * h);
                let (q1, _) = T::chunk(b, 2 * h + 1);
                let sc = pick(idx, p.sc);
                for (c, s) in s.iter_mut().enumerate() {
                    let x0 = _mm512_dpbusd_epi32(zero, q0, act(a.add(c * nb + i), 2 * h));
                    let x1 = _mm512_dpbusd_epi32(zero, q1, act(a.add(c * nb + i), 2 * h + 1));
                    *s = dot::<VNNI>(*s, _mm512_packs_epi32(x0, x1), sc);
                }
            }
        } else {
            for (k, idx) in chunk_idx.iter().enumerate() {
                let (q, neg) = T::chunk(b, k);
                let sc = pick(idx, p.sc);
                for (c, s) in s.iter_mut().enumerate() {
                    let mut av = act(a.add(c * nb + i), k);
                    if T::SIGNED {
                        av = _mm512_mask_sub_epi8(av, neg, zero, av);
                    }
                    *s = dot::<VNNI>(*s, _mm512_maddubs_epi16(q, av), sc);
                }
            }
        }
        for (c, (acc, s)) in acc.iter_mut().zip(s).enumerate() {
            let x = &*a.add(c * nb + i);
            let bsums = _mm256_loadu_si256(x.bsums.as_ptr().cast());
            let f = match T::MIN {
                Min::None => _mm512_mul_ps(_mm512_cvtepi32_ps(s), p.d),
                Min::Int => {
                    let m = _mm512_zextsi256_si512(_mm256_madd_epi16(p.m16, bsums));
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s, m)), p.d)
                }
                Min::Float => {
                    let m = _mm256_cvtepi32_ps(_mm256_madd_epi16(p.m16, bsums));
                    let m = _mm512_zextps256_ps512(_mm256_mul_ps(m, p.dm));
                    _mm512_fmsub_ps(_mm512_cvtepi32_ps(s), p.d, m)
                }
            };
            *acc = _mm512_fmadd_ps(f, _mm512_set1_ps(x.d), *acc);
        }
    }
    let mut out = [0f32; C];
    for (o, v) in out.iter_mut().zip(acc) {
        *o = _mm512_reduce_add_ps(v);
    }
    out
}

/// The whole product: row panels that stay in cache, column tiles of four inside each.
///
/// # Safety
/// As [`tile`]; `j` from [`super::job`] for `T`.
#[inline(always)]
unsafe fn drive<T: Kind, const VNNI: bool>(j: Job<'_>) {
    let Job {
        nb,
        w,
        nr,
        a,
        nc,
        out,
        ldo,
    } = j;
    let row = nb * T::SIZE;
    // With one tile of columns the weights pass once; with more, a panel of rows (about
    // 32 KiB) is reused by every tile before the next one is read.
    let panel = if nc <= 4 {
        nr.max(1)
    } else {
        (32 * 1024 / row.max(1)).clamp(1, nr.max(1))
    };
    let (w, a) = (w.as_ptr(), a.as_ptr());
    for r0 in (0..nr).step_by(panel) {
        for c0 in (0..nc).step_by(4) {
            let ac = a.add(c0 * nb);
            for r in r0..(r0 + panel).min(nr) {
                let wr = w.add(r * row);
                let mut put = |v: &[f32]| {
                    for (c, v) in v.iter().enumerate() {
                        out[(c0 + c) * ldo + r] = *v;
                    }
                };
                match nc - c0 {
                    1 => put(&tile::<T, VNNI, 1>(nb, wr, ac)),
                    2 => put(&tile::<T, VNNI, 2>(nb, wr, ac)),
                    3 => put(&tile::<T, VNNI, 3>(nb, wr, ac)),
                    _ => put(&tile::<T, VNNI, 4>(nb, wr, ac)),
                }
            }
        }
    }
}

/// # Safety
/// The CPU has AVX-512F/BW/VL, AVX2, FMA and F16C; `j` comes from [`super::job`] for `T`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn gemm<T: Kind>(j: Job<'_>) {
    // SAFETY: the features are enabled here and `j`'s slices cover every block it names.
    unsafe { drive::<T, false>(j) }
}

/// # Safety
/// The CPU has AVX-512F/BW/VL/VNNI, AVX2, FMA and F16C; `j` comes from [`super::job`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn gemm_vnni<T: Kind>(j: Job<'_>) {
    // SAFETY: the features are enabled here and `j`'s slices cover every block it names.
    unsafe { drive::<T, true>(j) }
}
