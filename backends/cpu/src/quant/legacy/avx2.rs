//! The AVX2 kernel for the 32-element formats, for CPUs without AVX-512: `vpmaddubsw`
//! (u8 × i8 pairs into i16) then `vpmaddwd` into i32, per activation plane.
//!
//! `vpmaddubsw` saturates at ±32767, so the weights go in as small unsigned values where
//! they are (the 4- and 5-bit formats: `u ≤ 31`, pair sums ≤ 2·31·127) and otherwise signed
//! (Q8_0, IQ4_NL) through the sign trick: `|w|` times the activation with `w`'s sign, pair
//! sums ≤ 2·128·127 < 32767.

use super::{block_bytes, BlockQ8, IQ4_NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use std::arch::x86_64::*;

/// An f16 at `p` as f32 (a broadcast load, so no false dependency on an old register).
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(bits as i16)))
}

/// Block `p` of format `T` as 32 weights in element order, unsigned for the 4/5-bit formats
/// and signed for Q8_0 and IQ4_NL, with its `(dw, mc)`: the block's dot product with
/// activations `d·q` is `dw · d·Σ w·q + mc · s`.
#[inline(always)]
unsafe fn block<const T: u8>(p: *const u8) -> (__m256i, f32, f32) {
    let d = f16_at(p);
    if T == Q8_0 {
        return (_mm256_loadu_si256(p.add(2) as *const __m256i), d, 0.0);
    }
    let off = match T {
        Q4_0 | IQ4_NL => 2,
        Q4_1 => 4,
        Q5_0 => 6,
        _ => 8,
    };
    let q = _mm_loadu_si128(p.add(off) as *const __m128i);
    let mut v = _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(q, 4), q),
        _mm256_set1_epi8(15),
    );
    if T == Q5_0 || T == Q5_1 {
        // Bit j of qh is the fifth bit of element j: spread the 32 bits over 32 bytes.
        let h = if T == Q5_1 { 4 } else { 2 };
        let qh = (p.add(h) as *const u32).read_unaligned();
        let x = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh as i32),
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(x, bit), bit);
        v = _mm256_or_si256(v, _mm256_and_si256(set, _mm256_set1_epi8(16)));
    }
    match T {
        IQ4_NL => {
            let tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                super::IQ4_VALUES.as_ptr() as *const __m128i
            ));
            (_mm256_shuffle_epi8(tbl, v), d, 0.0)
        }
        Q4_0 => (v, d, -8.0 * d),
        Q5_0 => (v, d, -16.0 * d),
        _ => (v, d, f16_at(p.add(2))),
    }
}

/// `Σ w·(128·hi + lo)` per 4-byte group, `w` unsigned (`≤ 31`) or, if `SIGNED`, signed.
#[inline(always)]
unsafe fn dot<const SIGNED: bool>(w: __m256i, hi: __m256i, lo: __m256i) -> __m256i {
    let (w, hi, lo) = if SIGNED {
        (
            _mm256_abs_epi8(w),
            _mm256_sign_epi8(hi, w),
            _mm256_sign_epi8(lo, w),
        )
    } else {
        (w, hi, lo)
    };
    let ones = _mm256_set1_epi16(1);
    let h = _mm256_madd_epi16(_mm256_maddubs_epi16(w, hi), ones);
    let l = _mm256_madd_epi16(_mm256_maddubs_epi16(w, lo), ones);
    _mm256_add_epi32(_mm256_slli_epi32(h, 7), l)
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` holds `nr` rows of `n / 32` blocks, `a` `nc` columns
/// of `n / 32` blocks, and `out` reaches `(nc - 1) · ldo + nr - 1`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemm<const T: u8>(
    n: usize,
    w: &[u8],
    nr: usize,
    a: &[BlockQ8],
    nc: usize,
    out: &mut [f32],
    ldo: usize,
) {
    const SIGNED: [bool; 6] = [false, false, false, false, true, true];
    let signed = SIGNED[T as usize];
    let nb = n / 32;
    let bs = block_bytes(T);
    let rb = nb * bs;
    // Columns four at a time: each decoded block feeds up to four activation columns.
    for c0 in (0..nc).step_by(4) {
        let cn = (nc - c0).min(4);
        for r in 0..nr {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut accm = [0f32; 4];
            for i in 0..nb {
                let (v, dw, mc) = block::<T>(w.as_ptr().add(r * rb + i * bs));
                for j in 0..cn {
                    let x = &*a.as_ptr().add((c0 + j) * nb + i);
                    let hi = _mm256_loadu_si256(x.qs.as_ptr() as *const __m256i);
                    let lo = _mm256_loadu_si256(x.qr.as_ptr() as *const __m256i);
                    let d = if signed {
                        dot::<true>(v, hi, lo)
                    } else {
                        dot::<false>(v, hi, lo)
                    };
                    acc[j] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(dw * x.d), acc[j]);
                    accm[j] += mc * x.s;
                }
            }
            for j in 0..cn {
                out[(c0 + j) * ldo + r] = hsum(acc[j]) + accm[j];
            }
        }
    }
}
