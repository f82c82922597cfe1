//! Kernels for the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) against
//! [`BlockQ8`] activations: a scalar reference, an AVX2 kernel ([`avx2`]) and an AVX-512 VNNI
//! kernel, chosen at run time.
//!
//! Every format is brought to one shape: a block decodes to 32 *unsigned* bytes `u` and two
//! coefficients `(dw, mc)` such that the block's dot product with activations `d·q` is
//! `dw · d·Σ u·q + mc · s` (with `s = d·Σ q`). Unsigned weights are what VNNI's `vpdpbusd`
//! multiplies (u8 × i8), and the offsets that make them unsigned (−8 for Q4_0, −16 for
//! Q5_0, −128 for Q8_0 and IQ4_NL) or the block minimum (Q4_1, Q5_1) fold into `mc`.
//!
//! The SIMD kernel decodes a chunk of a weight row once into that form and reuses it for
//! every activation column, four at a time, so a prompt's GEMM decodes each weight once.

use super::act::{f16_at, BlockQ8};
use super::{features, Kernel, Path, PREFETCH};
use tensor_core::quant::GgmlType;

/// IQ4_NL's non-linear 4-bit code book.
pub(crate) const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The formats of this file, as a const-generic tag.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;
const IQ4_NL: u8 = 5;

fn tag(ty: GgmlType) -> Option<u8> {
    Some(match ty {
        GgmlType::Q4_0 => Q4_0,
        GgmlType::Q4_1 => Q4_1,
        GgmlType::Q5_0 => Q5_0,
        GgmlType::Q5_1 => Q5_1,
        GgmlType::Q8_0 => Q8_0,
        GgmlType::IQ4_NL => IQ4_NL,
        _ => return None,
    })
}

const fn block_bytes(t: u8) -> usize {
    match t {
        Q4_0 | IQ4_NL => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    }
}

pub(super) fn paths(ty: GgmlType) -> Vec<Path> {
    let Some(t) = tag(ty) else {
        return Vec::new();
    };
    macro_rules! pick {
        ($f:ident) => {
            match t {
                Q4_0 => $f::<Q4_0> as super::GemmFn<BlockQ8>,
                Q4_1 => $f::<Q4_1>,
                Q5_0 => $f::<Q5_0>,
                Q5_1 => $f::<Q5_1>,
                Q8_0 => $f::<Q8_0>,
                _ => $f::<IQ4_NL>,
            }
        };
    }
    let mut v = vec![Path {
        name: "scalar",
        kernel: Kernel::Q8(pick!(gemm_scalar)),
    }];
    #[cfg(target_arch = "x86_64")]
    if features().avx2 {
        v.push(Path {
            name: "avx2",
            kernel: Kernel::Q8(pick!(gemm_avx2)),
        });
    }
    #[cfg(target_arch = "x86_64")]
    if features().avx512vnni {
        v.push(Path {
            name: "avx512vnni",
            kernel: Kernel::Q8(pick!(gemm_avx512)),
        });
    }
    v
}

/// Decode block `b` of format `T` into unsigned bytes and `(dw, mc)`.
#[inline(always)]
fn decode<const T: u8>(b: &[u8], u: &mut [u8; 32]) -> (f32, f32) {
    let d = f16_at(b);
    match T {
        Q4_0 | Q4_1 | IQ4_NL => {
            let qs = &b[if T == Q4_1 { 4 } else { 2 }..][..16];
            for j in 0..16 {
                u[j] = qs[j] & 15;
                u[j + 16] = qs[j] >> 4;
            }
            if T == IQ4_NL {
                for x in u.iter_mut() {
                    *x = (IQ4_VALUES[*x as usize] as i16 + 128) as u8;
                }
            }
            match T {
                Q4_0 => (d, -8.0 * d),
                Q4_1 => (d, f16_at(&b[2..])),
                _ => (d, -128.0 * d),
            }
        }
        Q5_0 | Q5_1 => {
            let off = if T == Q5_1 { 4 } else { 2 };
            let qh = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
            let qs = &b[off + 4..][..16];
            for j in 0..16 {
                u[j] = (qs[j] & 15) | (((qh >> j) & 1) << 4) as u8;
                u[j + 16] = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
            }
            if T == Q5_0 {
                (d, -16.0 * d)
            } else {
                (d, f16_at(&b[2..]))
            }
        }
        _ => {
            for (x, &q) in u.iter_mut().zip(&b[2..34]) {
                *x = (q as i8 as i16 + 128) as u8;
            }
            (d, -128.0 * d)
        }
    }
}

/// The reference: decode each block, integer dot product, scale.
fn gemm_scalar<const T: u8>(
    n: usize,
    w: &[u8],
    nr: usize,
    a: &[BlockQ8],
    nc: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let nb = n / 32;
    let rb = nb * block_bytes(T);
    assert!(
        w.len() >= nr * rb
            && a.len() >= nc * nb
            && (nc == 0 || out.len() > (nc - 1) * ldo + nr - 1)
    );
    let mut u = [0u8; 32];
    for r in 0..nr {
        for c in 0..nc {
            let mut acc = 0f32;
            for (b, x) in w[r * rb..(r + 1) * rb]
                .chunks_exact(block_bytes(T))
                .zip(&a[c * nb..(c + 1) * nb])
            {
                let (dw, mc) = decode::<T>(b, &mut u);
                let dot: i32 = u
                    .iter()
                    .zip(x.qs.iter().zip(&x.qr))
                    .map(|(&p, (&q, &r))| p as i32 * (128 * q as i32 + r as i32))
                    .sum();
                acc += dw * (x.d * dot as f32) + mc * x.s;
            }
            out[c * ldo + r] = acc;
        }
    }
}

/// Elements of a row decoded at a time by the SIMD kernel (fits L1 with room to spare).
const CHUNK: usize = 2048;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// The bounds every SIMD kernel relies on: `w` holds `nr` rows and `a` `nc` columns of
/// `n / 32` blocks, and `out` reaches the last output.
#[cfg(target_arch = "x86_64")]
fn check_job<const T: u8>(
    n: usize,
    w: &[u8],
    nr: usize,
    a: &[BlockQ8],
    nc: usize,
    out: &[f32],
    ldo: usize,
) {
    let nb = n / 32;
    assert!(
        n.is_multiple_of(32)
            && w.len() >= nr * nb * block_bytes(T)
            && a.len() >= nc * nb
            && (nc == 0 || nr == 0 || out.len() > (nc - 1) * ldo + nr - 1),
        "quantized kernel: buffers too small for {nr} rows × {nc} columns of {n}"
    );
}

#[cfg(target_arch = "x86_64")]
fn gemm_avx2<const T: u8>(
    n: usize,
    w: &[u8],
    nr: usize,
    a: &[BlockQ8],
    nc: usize,
    out: &mut [f32],
    ldo: usize,
) {
    check_job::<T>(n, w, nr, a, nc, out, ldo);
    // SAFETY: `paths` hands this kernel out only when AVX2, FMA and F16C were detected;
    // `check_job` checked the lengths.
    unsafe { avx2::gemm::<T>(n, w, nr, a, nc, out, ldo) }
}

#[cfg(target_arch = "x86_64")]
fn gemm_avx512<const T: u8>(
    n: usize,
    w: &[u8],
    nr: usize,
    a: &[BlockQ8],
    nc: usize,
    out: &mut [f32],
    ldo: usize,
) {
    check_job::<T>(n, w, nr, a, nc, out, ldo);
    // SAFETY: `paths` hands this kernel out only when AVX-512 BW/VL and VNNI were detected;
    // `check_job` checked the lengths.
    unsafe { avx512::gemm::<T>(n, w, nr, a, nc, out, ldo) }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// Decode 32 blocks (or fewer) of one row into `u` (bytes), `dw` and `mc`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
    unsafe fn decode_chunk<const T: u8>(
        w: &[u8],
        nblk: usize,
        u: &mut [u8; CHUNK],
        dw: &mut [f32; CHUNK / 32],
        mc: &mut [f32; CHUNK / 32],
    ) {
        let bs = block_bytes(T);
        let m4 = _mm256_set1_epi8(15);
        for i in 0..nblk {
            let b = &w[i * bs..(i + 1) * bs];
            let d = f16_at(b);
            dw[i] = d;
            let dst = u.as_mut_ptr().add(i * 32) as *mut __m256i;
            match T {
                Q8_0 => {
                    let q = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
                    _mm256_storeu_si256(dst, _mm256_xor_si256(q, _mm256_set1_epi8(-128)));
                    mc[i] = -128.0 * d;
                }
                _ => {
                    let off = match T {
                        Q4_0 | IQ4_NL => 2,
                        Q4_1 => 4,
                        Q5_0 => 6,
                        _ => 8,
                    };
                    let q = _mm_loadu_si128(b.as_ptr().add(off) as *const __m128i);
                    let q2 =
                        _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1);
                    let mut v = _mm256_and_si256(q2, m4);
                    if T == Q5_0 || T == Q5_1 {
                        let hoff = if T == Q5_1 { 4 } else { 2 };
                        let qh =
                            u32::from_le_bytes([b[hoff], b[hoff + 1], b[hoff + 2], b[hoff + 3]]);
                        v = _mm256_mask_add_epi8(v, qh, v, _mm256_set1_epi8(16));
                    }
                    if T == IQ4_NL {
                        // Code book shifted by +128 so it is unsigned, looked up per lane.
                        let tbl = _mm256_broadcastsi128_si256(_mm_setr_epi8(
                            1, 24, 45, 63, 79, 93, 106, 118, -127, -115, -103, -90, -75, -59, -39,
                            -15,
                        ));
                        v = _mm256_shuffle_epi8(tbl, v);
                    }
                    _mm256_storeu_si256(dst, v);
                    mc[i] = match T {
                        Q4_0 => -8.0 * d,
                        Q5_0 => -16.0 * d,
                        IQ4_NL => -128.0 * d,
                        _ => f16_at(&b[2..]),
                    };
                }
            }
        }
    }

    /// Two activation blocks' planes as 64-byte vectors, and their scales spread over the
    /// lanes each block's partial sums land in (lanes 0..8 and 8..16).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    unsafe fn act2(a: *const BlockQ8) -> (__m512i, __m512i, __m512) {
        let a0 = &*a;
        let a1 = &*a.add(1);
        let two = |p: *const i8, q: *const i8| {
            _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256(p as *const __m256i)),
                _mm256_loadu_si256(q as *const __m256i),
                1,
            )
        };
        let hi = two(a0.qs.as_ptr(), a1.qs.as_ptr());
        let lo = two(a0.qr.as_ptr(), a1.qr.as_ptr());
        let d = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a0.d), _mm512_set1_ps(a1.d));
        (hi, lo, d)
    }

    /// `Σ w·(128·hi + lo)` per 4-byte lane group.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dot2(w: __m512i, hi: __m512i, lo: __m512i) -> __m512i {
        let h = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, hi);
        _mm512_dpbusd_epi32(_mm512_slli_epi32(h, 7), w, lo)
    }

    /// Two consecutive blocks of one row (starting at `p`) as 64 unsigned bytes, block `i` in
    /// the low half. The 4-bit formats broadcast each block's 16 bytes into two 128-bit lanes
    /// and shift the upper lane's copy, so the nibbles land in element order without a
    /// shuffle.
    #[inline(always)]
    unsafe fn pair_bytes<const T: u8>(p: *const u8) -> __m512i {
        let q = p.add(block_bytes(T));
        if T == Q8_0 {
            let v = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256(p.add(2) as *const __m256i)),
                _mm256_loadu_si256(q.add(2) as *const __m256i),
                1,
            );
            return _mm512_xor_si512(v, _mm512_set1_epi8(-128));
        }
        let off = match T {
            Q4_0 | IQ4_NL => 2,
            Q4_1 => 4,
            Q5_0 => 6,
            _ => 8,
        };
        let z = _mm512_broadcast_i32x4(_mm_loadu_si128(p.add(off) as *const __m128i));
        let z =
            _mm512_mask_broadcast_i32x4(z, 0xFF00, _mm_loadu_si128(q.add(off) as *const __m128i));
        let z = _mm512_mask_srli_epi16::<4>(z, 0xFF00_FF00, z);
        let mut v = _mm512_and_si512(z, _mm512_set1_epi8(15));
        if T == Q5_0 || T == Q5_1 {
            let h = if T == Q5_1 { 4 } else { 2 };
            let qh0 = (p.add(h) as *const u32).read_unaligned();
            let qh1 = (q.add(h) as *const u32).read_unaligned();
            let mask = qh0 as u64 | (qh1 as u64) << 32;
            v = _mm512_mask_add_epi8(v, mask, v, _mm512_set1_epi8(16));
        }
        if T == IQ4_NL {
            let tbl = _mm512_broadcast_i32x4(_mm_setr_epi8(
                1, 24, 45, 63, 79, 93, 106, 118, -127, -115, -103, -90, -75, -59, -39, -15,
            ));
            v = _mm512_shuffle_epi8(tbl, v);
        }
        v
    }

    /// The f16 header words of two consecutive blocks as `[d0, m0, d1, m1]` (the formats
    /// without a stored minimum leave `m` zero).
    #[inline(always)]
    unsafe fn pair_scales<const T: u8>(p: *const u8) -> __m128 {
        let q = p.add(block_bytes(T));
        let h = _mm_insert_epi32::<1>(
            _mm_cvtsi32_si128((p as *const i32).read_unaligned()),
            (q as *const i32).read_unaligned(),
        );
        if T == Q4_1 || T == Q5_1 {
            _mm_cvtph_ps(h)
        } else {
            _mm_maskz_cvtph_ps(0b0101, h)
        }
    }

    /// The coefficient of `s` in each block's constant term, per `pair_scales` lane:
    /// `-offset · d` for the symmetric formats, the stored minimum `m` for Q4_1 and Q5_1.
    #[inline(always)]
    fn const_coefs<const T: u8>() -> (f32, f32) {
        match T {
            Q4_0 => (-8.0, 0.0),
            Q5_0 => (-16.0, 0.0),
            Q4_1 | Q5_1 => (0.0, 1.0),
            _ => (-128.0, 0.0),
        }
    }

    /// One activation column (`nc == 1`, decode): rows in groups of four share each
    /// activation load, blocks are decoded in registers (never stored), the block scales of
    /// a pair are converted in one instruction, and the weight stream is prefetched
    /// [`PREFETCH`] bytes ahead (the hardware prefetcher alone leaves decode waiting on
    /// loads about a third of the time).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn matvec<const T: u8>(nb: usize, w: &[u8], nr: usize, a: &[BlockQ8], out: &mut [f32]) {
        const R: usize = 4;
        let bs = block_bytes(T);
        let rb = nb * bs;
        let (cf, cg) = const_coefs::<T>();
        // Lanes 0..8 take block 0's scale, 8..16 block 1's.
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
        let mut r = 0;
        while r < nr {
            let rn = (nr - r).min(R);
            let mut acc = [_mm512_setzero_ps(); R];
            let mut accm = [_mm_setzero_ps(); R];
            let mut i = 0;
            while i < nb {
                let ap = a.as_ptr().add(i);
                let (hi, lo, d) = act2(ap);
                let (s0, s1) = ((*ap).s, (*ap.add(1)).s);
                let sv = _mm_setr_ps(cf * s0, cg * s0, cf * s1, cg * s1);
                for j in 0..rn {
                    let wp = w.as_ptr().add((r + j) * rb + i * bs);
                    _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(PREFETCH) as *const i8);
                    let wv = pair_bytes::<T>(wp);
                    let sc = pair_scales::<T>(wp);
                    let dwv = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(sc));
                    let dot = dot2(wv, hi, lo);
                    acc[j] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dwv, d), acc[j]);
                    accm[j] = _mm_fmadd_ps(sc, sv, accm[j]);
                }
                i += 2;
            }
            for j in 0..rn {
                let m = accm[j];
                let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
                let m = _mm_add_ss(m, _mm_movehdup_ps(m));
                out[r + j] = _mm512_reduce_add_ps(acc[j]) + _mm_cvtss_f32(m);
            }
            r += rn;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn gemm<const T: u8>(
        n: usize,
        w: &[u8],
        nr: usize,
        a: &[BlockQ8],
        nc: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        let nb = n / 32;
        let rb = nb * block_bytes(T);
        if nc == 1 && nb.is_multiple_of(2) {
            matvec::<T>(nb, w, nr, a, out);
            return;
        }
        let mut u = [0u8; CHUNK];
        let mut dw = [0f32; CHUNK / 32];
        let mut mc = [0f32; CHUNK / 32];
        for r in 0..nr {
            let row = &w[r * rb..(r + 1) * rb];
            let mut b0 = 0;
            while b0 < nb {
                let cb = (nb - b0).min(CHUNK / 32);
                decode_chunk::<T>(&row[b0 * block_bytes(T)..], cb, &mut u, &mut dw, &mut mc);
                let first = b0 == 0;
                let mut c = 0;
                while c < nc {
                    let cn = (nc - c).min(4);
                    let mut acc = [_mm512_setzero_ps(); 4];
                    let mut accm = [0f32; 4];
                    let mut i = 0;
                    // Pairs of blocks: one 64-byte weight vector feeds up to four columns.
                    while i + 2 <= cb {
                        let wv = _mm512_loadu_si512(u.as_ptr().add(i * 32) as *const __m512i);
                        let dwv = _mm512_mask_blend_ps(
                            0xFF00,
                            _mm512_set1_ps(dw[i]),
                            _mm512_set1_ps(dw[i + 1]),
                        );
                        for j in 0..cn {
                            let ap = a.as_ptr().add((c + j) * nb + b0 + i);
                            let (hi, lo, d) = act2(ap);
                            let dot = dot2(wv, hi, lo);
                            acc[j] = _mm512_fmadd_ps(
                                _mm512_cvtepi32_ps(dot),
                                _mm512_mul_ps(dwv, d),
                                acc[j],
                            );
                            accm[j] += mc[i] * (*ap).s + mc[i + 1] * (*ap.add(1)).s;
                        }
                        i += 2;
                    }
                    if i < cb {
                        let wv = _mm256_loadu_si256(u.as_ptr().add(i * 32) as *const __m256i);
                        for j in 0..cn {
                            let x = &*a.as_ptr().add((c + j) * nb + b0 + i);
                            let hi = _mm256_loadu_si256(x.qs.as_ptr() as *const __m256i);
                            let lo = _mm256_loadu_si256(x.qr.as_ptr() as *const __m256i);
                            let h = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv, hi);
                            let dot = _mm256_dpbusd_epi32(_mm256_slli_epi32(h, 7), wv, lo);
                            let s = _mm256_cvtepi32_ps(dot);
                            let part = _mm512_castps256_ps512(_mm256_mul_ps(
                                s,
                                _mm256_set1_ps(dw[i] * x.d),
                            ));
                            acc[j] = _mm512_add_ps(acc[j], _mm512_maskz_mov_ps(0x00FF, part));
                            accm[j] += mc[i] * x.s;
                        }
                    }
                    for j in 0..cn {
                        let v = _mm512_reduce_add_ps(acc[j]) + accm[j];
                        let o = &mut out[(c + j) * ldo + r];
                        *o = if first { v } else { *o + v };
                    }
                    c += cn;
                }
                b0 += cb;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing::check_paths;

    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::IQ4_NL,
        ] {
            let names: Vec<_> = paths(ty).iter().map(|p| p.name).collect();
            assert!(
                !features().avx2 || names.contains(&"avx2"),
                "{ty}: {names:?}"
            );
            check_paths(ty, 2e-6);
        }
    }

    #[test]
    fn the_scalar_decoder_agrees_with_core_dequantization() {
        // `dw·u + mc/d_a`-style decoding must give the same weights as the reference.
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::IQ4_NL,
        ] {
            let blocks = crate::quant::testing::random_blocks(ty, 4, 3);
            let want = tensor_core::quant::dequantize(ty, &blocks).unwrap();
            let t = tag(ty).unwrap();
            let mut u = [0u8; 32];
            for (bi, b) in blocks.chunks_exact(ty.type_size()).enumerate() {
                let (dw, mc) = match t {
                    Q4_0 => decode::<Q4_0>(b, &mut u),
                    Q4_1 => decode::<Q4_1>(b, &mut u),
                    Q5_0 => decode::<Q5_0>(b, &mut u),
                    Q5_1 => decode::<Q5_1>(b, &mut u),
                    Q8_0 => decode::<Q8_0>(b, &mut u),
                    _ => decode::<IQ4_NL>(b, &mut u),
                };
                for j in 0..32 {
                    let got = dw * u[j] as f32 + mc;
                    let w = want[bi * 32 + j];
                    assert!(
                        (got - w).abs() <= 1e-6 * w.abs().max(dw * 128.0),
                        "{ty} {bi}/{j}: {got} vs {w}"
                    );
                }
            }
        }
    }
}
