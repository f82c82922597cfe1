//! AVX2 (+FMA, F16C) k-quant kernels: 32 weights per register.
//!
//! A block is eight chunks of 32 weights, chunk `j` matching activations `32j..32j+32`,
//! decoded into unsigned 8-bit quants and a vector of 16-bit scales (one per `maddubs` pair);
//! `madd` + `add` multiplies the pairs by their scales into 32-bit sums.
//!
//! Everything below the `#[target_feature]` entry point is `#[inline(always)]`, so it is
//! compiled inside it with its features. Every `unsafe fn` here requires those features and
//! that the pointers it is given are readable for what it loads (whole blocks: a weight block
//! of `SIZE` bytes, one [`BlockQ8K`]); nothing reads past the block it is given.

use super::{iq4xs_scales, k4_scales, q3_scales, Fmt, Job, Min, IQ4XS, KVALUES_IQ4NL, Q2K, Q3K};
use super::{Q4K, Q5K, Q6K, QK_K};
use crate::quant::act::BlockQ8K;
use std::arch::x86_64::*;

/// One decoded block, what every chunk of it and the final scaling need.
#[derive(Clone, Copy)]
pub(super) struct Blk {
    /// `d` and `dmin`, in every lane.
    d: __m256,
    dm: __m256,
    /// Per 16-weight group, the factor of the activations' group sum (see the AVX-512
    /// kernels).
    m16: __m256i,
    /// Scales for the chunks to pick from: 32-weight groups: the eight 16-bit scales in both
    /// 128-bit halves of `s0`; 16-weight groups: each scale twice per 32-bit lane, groups
    /// 0..8 in `s0` and 8..16 in `s1`.
    s0: __m256i,
    s1: __m256i,
}

/// A format's AVX2 decoder.
pub(super) trait Kind: Fmt {
    /// # Safety
    /// AVX2 and F16C; `b` is readable for `Self::SIZE` bytes.
    unsafe fn prep(b: *const u8) -> Blk;
    /// Chunk `j` (`0..8`) of the block at `b`: unsigned quants, 16-bit scales per pair, and
    /// (for [`Fmt::SIGNED`] formats) the signed quants whose signs move to the activations.
    ///
    /// # Safety
    /// As [`Kind::prep`], `p` from `prep(b)`, `j < 8`.
    unsafe fn chunk(p: &Blk, b: *const u8, j: usize) -> (__m256i, __m256i, __m256i);
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

#[inline(always)]
unsafe fn mask(v: __m256i, m: i8) -> __m256i {
    _mm256_and_si256(v, _mm256_set1_epi8(m))
}

/// Every 16-bit lane shifted so that bit `from` lands on bit `to` (the caller masks).
#[inline(always)]
unsafe fn move_bits(v: __m256i, from: usize, to: usize) -> __m256i {
    if from >= to {
        _mm256_srl_epi16(v, _mm_cvtsi32_si128((from - to) as i32))
    } else {
        _mm256_sll_epi16(v, _mm_cvtsi32_si128((to - from) as i32))
    }
}

/// The f16 at `p`, in every lane.
#[inline(always)]
unsafe fn f16_splat(p: *const u8) -> __m256 {
    let h = p.cast::<u16>().read_unaligned();
    _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// The f16 pair (`d`, `dmin`) at `p`, each in every lane.
#[inline(always)]
unsafe fn f16_pair(p: *const u8) -> (__m256, __m256) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
    (
        _mm256_broadcastss_ps(v),
        _mm256_broadcastss_ps(_mm_movehdup_ps(v)),
    )
}

/// 16-weight groups: sixteen 8-bit scales `s` as `(s0, s1)` of [`Blk`].
#[inline(always)]
unsafe fn pairs16(s: __m128i) -> (__m256i, __m256i) {
    (
        _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(s, s)),
        _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(s, s)),
    )
}

/// 16-weight groups: chunk `j`'s scales (groups 2j, 2j + 1, each over eight pairs).
#[inline(always)]
unsafe fn scales16(p: &Blk, j: usize) -> __m256i {
    let s = if j < 4 { p.s0 } else { p.s1 };
    let (g0, g1) = ((2 * j % 8) as i32, (2 * j % 8 + 1) as i32);
    _mm256_permutevar8x32_epi32(s, _mm256_set_epi32(g1, g1, g1, g1, g0, g0, g0, g0))
}

/// 32-weight groups: chunk `j`'s scale (16-bit lane `j` of `s0`) in every lane.
#[inline(always)]
unsafe fn scales32(p: &Blk, j: usize) -> __m256i {
    let pick = ((2 * j) | (2 * j + 1) << 8) as i16;
    _mm256_shuffle_epi8(p.s0, _mm256_set1_epi16(pick))
}

impl Kind for Q2K {
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> Blk {
        let (d, dm) = f16_pair(b.add(80));
        let s = _mm_loadu_si128(b.cast());
        let lo = _mm_and_si128(s, _mm_set1_epi8(0x0F));
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(s), _mm_set1_epi8(0x0F));
        let (s0, s1) = pairs16(lo);
        Blk {
            d,
            dm,
            m16: _mm256_cvtepu8_epi16(hi),
            s0,
            s1,
        }
    }

    #[inline(always)]
    unsafe fn chunk(p: &Blk, b: *const u8, j: usize) -> (__m256i, __m256i, __m256i) {
        // Element 32j + l: bits 2 (j % 4) of qs[32 (j / 4) + l].
        let q = mask(move_bits(load(b.add(16 + 32 * (j / 4))), 2 * (j % 4), 0), 3);
        (q, scales16(p, j), q)
    }
}

impl Kind for Q3K {
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> Blk {
        let s = q3_scales(&b.add(96).cast::<[u8; 12]>().read_unaligned());
        let s = _mm_sub_epi8(_mm_loadu_si128(s.as_ptr().cast()), _mm_set1_epi8(32));
        let (s0, s1) = pairs16(s);
        let s16 = _mm256_cvtepi8_epi16(s);
        Blk {
            d: f16_splat(b.add(108)),
            dm: _mm256_setzero_ps(),
            m16: _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<2>(s16)),
            s0,
            s1,
        }
    }

    #[inline(always)]
    unsafe fn chunk(p: &Blk, b: *const u8, j: usize) -> (__m256i, __m256i, __m256i) {
        let q = mask(move_bits(load(b.add(32 + 32 * (j / 4))), 2 * (j % 4), 0), 3);
        // High bit of element 32j + l: bit j of hmask[l], to bit 2.
        let h = mask(move_bits(load(b), j, 2), 4);
        let q = _mm256_or_si256(q, h);
        (q, scales16(p, j), q)
    }
}

/// Q4_K/Q5_K: scales, minimums (each over two groups of 16) and the two f16 factors.
#[inline(always)]
unsafe fn prep_k4(b: *const u8) -> Blk {
    let (d, dm) = f16_pair(b);
    let (sc, mn) = k4_scales(&b.add(4).cast::<[u8; 12]>().read_unaligned());
    let sc = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
    let mn = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64)));
    #[rustfmt::skip]
    let dup = _mm256_setr_epi8(
        0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7,
        8, 9, 8, 9, 10, 11, 10, 11, 12, 13, 12, 13, 14, 15, 14, 15,
    );
    Blk {
        d,
        dm,
        m16: _mm256_shuffle_epi8(mn, dup),
        s0: _mm256_broadcastsi128_si256(sc),
        s1: _mm256_setzero_si256(),
    }
}

/// Q4_K/Q5_K chunk `j`: sub-block j is the low (j even) or high nibbles of qs[32 (j / 2)..].
#[inline(always)]
unsafe fn nibbles_k4(qs: *const u8, j: usize) -> __m256i {
    let v = load(qs.add(32 * (j / 2)));
    mask(
        if j % 2 == 1 {
            _mm256_srli_epi16::<4>(v)
        } else {
            v
        },
        0x0F,
    )
}

impl Kind for Q4K {
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> Blk {
        prep_k4(b)
    }

    #[inline(always)]
    unsafe fn chunk(p: &Blk, b: *const u8, j: usize) -> (__m256i, __m256i, __m256i) {
        let q = nibbles_k4(b.add(16), j);
        (q, scales32(p, j), q)
    }
}

impl Kind for Q5K {
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> Blk {
        prep_k4(b)
    }

    #[inline(always)]
    unsafe fn chunk(p: &Blk, b: *const u8, j: usize) -> (__m256i, __m256i, __m256i) {
        // Fifth bit of element l of sub-block j: bit j of qh[l], to bit 4.
        let h = mask(move_bits(load(b.add(16)), j, 4), 0x10);
        let q = _mm256_or_si256(nibbles_k4(b.add(48), j), h);
        (q, scales32(p, j), q)
    }
}

impl Kind for Q6K {
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> Blk {
        let s = _mm_loadu_si128(b.add(192).cast());
        let (s0, s1) = pairs16(s);
        let s16 = _mm256_cvtepi8_epi16(s);
        Blk {
            d: f16_splat(b.add(208)),
            dm: _mm256_setzero_ps(),
            m16: _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<5>(s16)),
            s0,
            s1,
        }
    }

    #[inline(always)]
    unsafe fn chunk(p: &Blk, b: *const u8, j: usize) -> (__m256i, __m256i, __m256i) {
        // Element 32j + l, in half h = j / 4 at run t = j % 4: low nibble from
        // ql[64h + 32 (t % 2) + l] (high nibble if t >= 2), bits 2t of qh[32h + l].
        let (h, t) = (j / 4, j % 4);
        let l = load(b.add(64 * h + 32 * (t % 2)));
        let l = mask(if t >= 2 { _mm256_srli_epi16::<4>(l) } else { l }, 0x0F);
        let hb = mask(move_bits(load(b.add(128 + 32 * h)), 2 * t, 4), 0x30);
        let q = _mm256_or_si256(l, hb);
        (q, scales16(p, j), q)
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
            s0: _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(s)),
            s1: _mm256_setzero_si256(),
        }
    }

    #[inline(always)]
    unsafe fn chunk(p: &Blk, b: *const u8, j: usize) -> (__m256i, __m256i, __m256i) {
        // Sub-block j: low nibbles of qs[16j..16j + 16], then the high nibbles.
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(b.add(8 + 16 * j).cast()));
        let n = mask(_mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0)), 0x0F);
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast()));
        let signed = _mm256_shuffle_epi8(table, n);
        (_mm256_abs_epi8(signed), scales32(p, j), signed)
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Row `w` (`nb` blocks) against the `C` columns starting at `a` (column `c` is
/// `a[c·nb..(c + 1)·nb]`).
///
/// # Safety
/// AVX2, FMA and F16C; `w` readable for `nb` blocks, `a` for `C · nb` activation blocks.
#[inline(always)]
unsafe fn tile<T: Kind, const C: usize>(nb: usize, w: *const u8, a: *const BlockQ8K) -> [f32; C] {
    let mut acc = [_mm256_setzero_ps(); C];
    for i in 0..nb {
        let b = w.add(i * T::SIZE);
        let p = T::prep(b);
        let mut s = [_mm256_setzero_si256(); C];
        for j in 0..QK_K / 32 {
            let (q, sc, signed) = T::chunk(&p, b, j);
            for (c, s) in s.iter_mut().enumerate() {
                let x = &*a.add(c * nb + i);
                let mut av = _mm256_loadu_si256(x.qs.as_ptr().add(32 * j).cast());
                if T::SIGNED {
                    av = _mm256_sign_epi8(av, signed);
                }
                let pairs = _mm256_maddubs_epi16(q, av);
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(pairs, sc));
            }
        }
        for (c, (acc, s)) in acc.iter_mut().zip(s).enumerate() {
            let x = &*a.add(c * nb + i);
            let bsums = _mm256_loadu_si256(x.bsums.as_ptr().cast());
            let f = match T::MIN {
                Min::None => _mm256_mul_ps(_mm256_cvtepi32_ps(s), p.d),
                Min::Int => {
                    let s = _mm256_add_epi32(s, _mm256_madd_epi16(p.m16, bsums));
                    _mm256_mul_ps(_mm256_cvtepi32_ps(s), p.d)
                }
                Min::Float => {
                    let m = _mm256_cvtepi32_ps(_mm256_madd_epi16(p.m16, bsums));
                    _mm256_fmsub_ps(_mm256_cvtepi32_ps(s), p.d, _mm256_mul_ps(m, p.dm))
                }
            };
            *acc = _mm256_fmadd_ps(f, _mm256_set1_ps(x.d), *acc);
        }
    }
    let mut out = [0f32; C];
    for (o, v) in out.iter_mut().zip(acc) {
        *o = hsum(v);
    }
    out
}

/// The whole product: row panels that stay in cache, column tiles of four inside each (as
/// the AVX-512 driver).
///
/// # Safety
/// As [`tile`]; `j` from [`super::job`] for `T`.
#[inline(always)]
unsafe fn drive<T: Kind>(j: Job<'_>) {
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
                    1 => put(&tile::<T, 1>(nb, wr, ac)),
                    2 => put(&tile::<T, 2>(nb, wr, ac)),
                    3 => put(&tile::<T, 3>(nb, wr, ac)),
                    _ => put(&tile::<T, 4>(nb, wr, ac)),
                }
            }
        }
    }
}

/// # Safety
/// The CPU has AVX2, FMA and F16C; `j` comes from [`super::job`] for `T`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemm<T: Kind>(j: Job<'_>) {
    // SAFETY: the features are enabled here and `j`'s slices cover every block it names.
    unsafe { drive::<T>(j) }
}
