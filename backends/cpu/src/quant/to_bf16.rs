//! ggml weight rows dequantized straight to bf16: the weight operand of the AMX prefill
//! product ([`super::amx::gemm`]), which a prompt's tokens then share.
//!
//! The scalar path is the reference: core's `dequantize_into` (bit-identical to ggml) then
//! [`f32_to_bf16`]. The AVX-512 paths compute every f32 with the same operations in the same
//! order as core's dequantizers (`d·q + m` is a multiply then an add, never a fused one) and
//! round with `vcvtne2ps2bf16`, which `f32_to_bf16` matches bit for bit — so the tests can
//! ask for equality, not closeness. Each path decodes a block in registers and writes 64-byte
//! vectors of bf16, one block (or 16-value group) at a time.

use super::amx::f32_to_bf16;
use super::features;
use tensor_core::quant::GgmlType;

/// Dequantize `nr` rows of `k` weights of type `ty` (`w`: the rows' blocks, back to back) to
/// bf16 bits in `out` (row-major, `nr·k` values). Returns `false`, writing nothing, for a type
/// it does not handle or a `k` that is not a whole number of `ty`'s blocks.
///
/// Handled: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (AVX-512 paths
/// for all of them), F16, F32 (AVX-512 too), BF16 (copied).
pub fn dequant_rows_bf16(ty: GgmlType, w: &[u8], nr: usize, k: usize, out: &mut [u16]) -> bool {
    let Some(f) = paths(ty).last().map(|p| p.1) else {
        return false;
    };
    if !k.is_multiple_of(ty.block_size()) {
        return false;
    }
    let nblk = nr * k / ty.block_size();
    assert!(
        w.len() >= nblk * ty.type_size() && out.len() >= nr * k,
        "dequant_rows_bf16 {ty}: {} bytes / {} outputs for {nr} rows of {k}",
        w.len(),
        out.len()
    );
    f(ty, &w[..nblk * ty.type_size()], &mut out[..nr * k]);
    true
}

/// A whole number of blocks of one type to bf16 (`out.len()` values).
type RowsFn = fn(GgmlType, &[u8], &mut [u16]);

/// Every implementation for `ty` this CPU can run, the scalar reference first and the fastest
/// last; empty when `ty` is not handled.
pub(crate) fn paths(ty: GgmlType) -> Vec<(&'static str, RowsFn)> {
    use GgmlType::*;
    match ty {
        BF16 => return vec![("copy", copy_bf16 as RowsFn)],
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | IQ4_NL | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | F16
        | F32 => {}
        _ => return Vec::new(),
    }
    let mut v = vec![("scalar", scalar as RowsFn)];
    #[cfg(target_arch = "x86_64")]
    if features().avx512 && super::amx::bf16_convert() {
        v.push(("avx512bf16", avx512 as RowsFn));
    }
    v
}

fn copy_bf16(_: GgmlType, w: &[u8], out: &mut [u16]) {
    for (o, b) in out.iter_mut().zip(w.chunks_exact(2)) {
        *o = u16::from_le_bytes([b[0], b[1]]);
    }
}

/// The reference: core's dequantization, a bounded chunk at a time, then RNE rounding.
fn scalar(ty: GgmlType, w: &[u8], out: &mut [u16]) {
    // A multiple of every block size, small enough to stay in L1.
    const CHUNK: usize = 1024;
    let mut buf = [0f32; CHUNK];
    let bytes = CHUNK / ty.block_size() * ty.type_size();
    for (wc, oc) in w.chunks(bytes).zip(out.chunks_mut(CHUNK)) {
        let f = &mut buf[..oc.len()];
        tensor_core::quant::dequantize_into(ty, wc, f).expect("whole blocks");
        for (o, x) in oc.iter_mut().zip(f.iter()) {
            *o = f32_to_bf16(*x);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512(ty: GgmlType, w: &[u8], out: &mut [u16]) {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let nblk = w.len() / ts;
    assert!(w.len() == nblk * ts && out.len() == nblk * bs);
    // SAFETY: `paths` hands this out only with AVX-512 F/BW/VL and BF16 detected; each kernel
    // reads `nblk` blocks of `ts` bytes from `w` and writes `nblk · bs` values, checked above.
    unsafe {
        use GgmlType::*;
        let (p, o) = (w.as_ptr(), out.as_mut_ptr());
        match ty {
            Q4_0 => x86::legacy::<{ x86::Q4_0 }>(p, nblk, o),
            Q4_1 => x86::legacy::<{ x86::Q4_1 }>(p, nblk, o),
            Q5_0 => x86::legacy::<{ x86::Q5_0 }>(p, nblk, o),
            Q5_1 => x86::legacy::<{ x86::Q5_1 }>(p, nblk, o),
            Q8_0 => x86::legacy::<{ x86::Q8_0 }>(p, nblk, o),
            IQ4_NL => x86::legacy::<{ x86::IQ4_NL }>(p, nblk, o),
            Q2_K => x86::q2_k(p, nblk, o),
            Q3_K => x86::q3_k(p, nblk, o),
            Q4_K => x86::q45_k::<false>(p, nblk, o),
            Q5_K => x86::q45_k::<true>(p, nblk, o),
            Q6_K => x86::q6_k(p, nblk, o),
            F16 => x86::f16(p, nblk, o),
            F32 => x86::f32(p, nblk, o),
            _ => unreachable!("paths lists the handled types"),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::f32_to_bf16;
    use crate::quant::amx::x86_cvt32 as cvt32;
    use std::arch::x86_64::*;

    pub const Q4_0: u8 = 0;
    pub const Q4_1: u8 = 1;
    pub const Q5_0: u8 = 2;
    pub const Q5_1: u8 = 3;
    pub const Q8_0: u8 = 4;
    pub const IQ4_NL: u8 = 5;

    /// The f16 at `p` as f32 (exact, like `half`'s conversion).
    #[inline(always)]
    unsafe fn h(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// The f16 at `p` as f32 in every lane.
    ///
    /// Why not `set1(h(p))`: `h` compiles to a `vpinsrw` that merges into whatever register
    /// is free, which in a short loop can hold the previous iteration's result — a false
    /// dependency chaining the iterations (Q8_0 ran 2.6× slower). A broadcast load writes the
    /// whole register. For the same reason the per-group scales of the k-quants are computed
    /// as vectors (`vcvtsi2ss` merges too) and read back with broadcast loads.
    #[inline(always)]
    unsafe fn hv(p: *const u8) -> __m512 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm512_cvtph_ps(_mm256_set1_epi16(bits as i16))
    }

    /// `d · ints[i]` for 16 small integers, in f32 (the same single rounding as scalar code).
    #[inline(always)]
    unsafe fn scaled16(d: __m512, ints: __m512i) -> [f32; 16] {
        let mut out = [0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), _mm512_mul_ps(d, _mm512_cvtepi32_ps(ints)));
        out
    }

    /// 32 f32 (two vectors, in order) as 32 bf16 at `o`.
    #[inline(always)]
    unsafe fn put(o: *mut u16, lo: __m512, hi: __m512) {
        _mm512_storeu_si512(o as *mut __m512i, cvt32(lo, hi));
    }

    /// 16 bytes at `p` widened to 16 u32 lanes.
    #[inline(always)]
    unsafe fn u8x16(p: *const u8) -> __m512i {
        _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i))
    }

    #[inline(always)]
    unsafe fn f(v: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(v)
    }

    /// The 32-element formats: `d·(q − offset)`, `d·q + m` or `q·d` exactly as core has them.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,f16c")]
    pub unsafe fn legacy<const T: u8>(w: *const u8, nblk: usize, out: *mut u16) {
        let bs = match T {
            Q4_0 | IQ4_NL => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            _ => 34,
        };
        let m4 = _mm512_set1_epi32(15);
        let iq4 = _mm512_setr_epi32(
            -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
        );
        for i in 0..nblk {
            let p = w.add(i * bs);
            let o = out.add(32 * i);
            let d = hv(p);
            if T == Q8_0 {
                let lo = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(2) as *const __m128i));
                let hi = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(18) as *const __m128i));
                put(o, _mm512_mul_ps(f(lo), d), _mm512_mul_ps(f(hi), d));
                continue;
            }
            let qs = match T {
                Q4_0 | IQ4_NL => 2,
                Q4_1 => 4,
                Q5_0 => 6,
                _ => 8,
            };
            let v = u8x16(p.add(qs));
            let mut lo = _mm512_and_si512(v, m4);
            let mut hi = _mm512_srli_epi32::<4>(v);
            if T == Q5_0 || T == Q5_1 {
                let at = if T == Q5_1 { 4 } else { 2 };
                let qh = u32::from_le_bytes([
                    *p.add(at),
                    *p.add(at + 1),
                    *p.add(at + 2),
                    *p.add(at + 3),
                ]);
                let sixteen = _mm512_set1_epi32(16);
                lo = _mm512_mask_add_epi32(lo, qh as u16, lo, sixteen);
                hi = _mm512_mask_add_epi32(hi, (qh >> 16) as u16, hi, sixteen);
            }
            match T {
                Q4_0 | Q5_0 => {
                    let off = _mm512_set1_epi32(if T == Q4_0 { 8 } else { 16 });
                    let lo = f(_mm512_sub_epi32(lo, off));
                    let hi = f(_mm512_sub_epi32(hi, off));
                    put(o, _mm512_mul_ps(d, lo), _mm512_mul_ps(d, hi));
                }
                IQ4_NL => {
                    let lo = f(_mm512_permutexvar_epi32(lo, iq4));
                    let hi = f(_mm512_permutexvar_epi32(hi, iq4));
                    put(o, _mm512_mul_ps(d, lo), _mm512_mul_ps(d, hi));
                }
                _ => {
                    // Q4_1, Q5_1: d·q + m, rounded after the multiply and after the add.
                    let m = hv(p.add(2));
                    let lo = _mm512_add_ps(_mm512_mul_ps(d, f(lo)), m);
                    let hi = _mm512_add_ps(_mm512_mul_ps(d, f(hi)), m);
                    put(o, lo, hi);
                }
            }
        }
    }

    /// Q4_K/Q5_K's eight 6-bit scales (lanes 0..8) and mins (lanes 8..16).
    #[inline(always)]
    unsafe fn scale_min_k4(s: *const u8) -> __m512i {
        let s = std::slice::from_raw_parts(s, 12);
        let mut v = [0i32; 16];
        for j in 0..4 {
            v[j] = (s[j] & 0x3F) as i32;
            v[8 + j] = (s[j + 4] & 0x3F) as i32;
            v[j + 4] = ((s[j + 8] & 0xF) | ((s[j] >> 2) & 0x30)) as i32;
            v[8 + j + 4] = ((s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30)) as i32;
        }
        _mm512_loadu_si512(v.as_ptr() as *const __m512i)
    }

    /// Q4_K (`HIGH = false`) and Q5_K: `(d·sc)·q − dmin·m` per sub-block of 32, where sub-blocks
    /// 2c and 2c+1 are the low and high nibbles of the same 32 bytes (Q5_K adds bit j of
    /// `qh[l]` as the fifth bit of element l of sub-block j).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,f16c")]
    pub unsafe fn q45_k<const HIGH: bool>(w: *const u8, nblk: usize, out: *mut u16) {
        let bs = if HIGH { 176 } else { 144 };
        let m4 = _mm512_set1_epi32(15);
        let sixteen = _mm512_set1_epi32(16);
        for i in 0..nblk {
            let p = w.add(i * bs);
            let o = out.add(256 * i);
            // [d × 8, dmin × 8] · [scales, mins]: dl in lanes 0..8, ml in lanes 8..16.
            let dd = _mm512_mask_blend_ps(0xFF00, hv(p), hv(p.add(2)));
            let dm = scaled16(dd, scale_min_k4(p.add(4)));
            let qs = p.add(if HIGH { 48 } else { 16 });
            let qh = _mm256_loadu_si256(p.add(16) as *const __m256i);
            for c in 0..4 {
                let a = u8x16(qs.add(32 * c));
                let b = u8x16(qs.add(32 * c + 16));
                for half in 0..2 {
                    let j = 2 * c + half;
                    let (mut lo, mut hi) = if half == 0 {
                        (_mm512_and_si512(a, m4), _mm512_and_si512(b, m4))
                    } else {
                        (_mm512_srli_epi32::<4>(a), _mm512_srli_epi32::<4>(b))
                    };
                    if HIGH {
                        let bit = _mm256_set1_epi8((1u8 << j) as i8);
                        let mask = _mm256_test_epi8_mask(qh, bit);
                        lo = _mm512_mask_add_epi32(lo, mask as u16, lo, sixteen);
                        hi = _mm512_mask_add_epi32(hi, (mask >> 16) as u16, hi, sixteen);
                    }
                    let dl = _mm512_set1_ps(dm[j]);
                    let ml = _mm512_set1_ps(dm[8 + j]);
                    let lo = _mm512_sub_ps(_mm512_mul_ps(dl, f(lo)), ml);
                    let hi = _mm512_sub_ps(_mm512_mul_ps(dl, f(hi)), ml);
                    put(o.add(32 * j), lo, hi);
                }
            }
        }
    }

    /// Q6_K: `(d·scale)·(q − 32)`, q = 4 low bits from `ql` and 2 high bits from `qh`, one
    /// scale per group of 16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,f16c")]
    pub unsafe fn q6_k(w: *const u8, nblk: usize, out: *mut u16) {
        let m4 = _mm512_set1_epi32(15);
        let m2 = _mm512_set1_epi32(3);
        let off = _mm512_set1_epi32(32);
        for i in 0..nblk {
            let p = w.add(i * 210);
            let o = out.add(256 * i);
            let (ql, qh) = (p, p.add(128));
            let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(192) as *const __m128i));
            let dls = scaled16(hv(p.add(208)), sc);
            // Two groups of 16 per store: elements 32g..32g+32.
            for g in 0..8 {
                let mut v = [_mm512_setzero_ps(); 2];
                for (half, v) in v.iter_mut().enumerate() {
                    let e0 = 32 * g + 16 * half;
                    let (hb, r0, l0) = (e0 / 128, e0 % 128, e0 % 32);
                    let low = u8x16(ql.add(hb * 64 + r0 % 64));
                    let low = _mm512_and_si512(
                        _mm512_srlv_epi32(low, _mm512_set1_epi32(4 * (r0 / 64) as i32)),
                        m4,
                    );
                    let high = u8x16(qh.add(hb * 32 + l0));
                    let high = _mm512_and_si512(
                        _mm512_srlv_epi32(high, _mm512_set1_epi32(2 * (r0 / 32) as i32)),
                        m2,
                    );
                    let q =
                        _mm512_sub_epi32(_mm512_or_si512(low, _mm512_slli_epi32::<4>(high)), off);
                    *v = _mm512_mul_ps(_mm512_set1_ps(dls[e0 / 16]), f(q));
                }
                put(o.add(32 * g), v[0], v[1]);
            }
        }
    }

    /// The 2-bit fields of elements `e0..e0 + 16` (`e0` a multiple of 16) of a 64-byte `qs`.
    #[inline(always)]
    unsafe fn two_bit16(qs: *const u8, e0: usize) -> __m512i {
        let (half, shift, l0) = (e0 / 128, (e0 % 128) / 32, e0 % 32);
        let v = u8x16(qs.add(half * 32 + l0));
        _mm512_and_si512(
            _mm512_srlv_epi32(v, _mm512_set1_epi32(2 * shift as i32)),
            _mm512_set1_epi32(3),
        )
    }

    /// Q2_K: `(d·(sc & 15))·q − dmin·(sc >> 4)` per group of 16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,f16c")]
    pub unsafe fn q2_k(w: *const u8, nblk: usize, out: *mut u16) {
        for i in 0..nblk {
            let p = w.add(i * 84);
            let o = out.add(256 * i);
            let qs = p.add(16);
            let sc = u8x16(p);
            let dls = scaled16(hv(p.add(80)), _mm512_and_si512(sc, _mm512_set1_epi32(15)));
            let mls = scaled16(hv(p.add(82)), _mm512_srli_epi32::<4>(sc));
            for g in 0..8 {
                let mut v = [_mm512_setzero_ps(); 2];
                for (half, v) in v.iter_mut().enumerate() {
                    let s = 2 * g + half;
                    let (dl, ml) = (_mm512_set1_ps(dls[s]), _mm512_set1_ps(mls[s]));
                    *v = _mm512_sub_ps(_mm512_mul_ps(dl, f(two_bit16(qs, 16 * s))), ml);
                }
                put(o.add(32 * g), v[0], v[1]);
            }
        }
    }

    /// Q3_K: `(d·(scale − 32))·(q − 4·!hbit)` per group of 16, 6-bit scales.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,f16c")]
    pub unsafe fn q3_k(w: *const u8, nblk: usize, out: *mut u16) {
        let one = _mm512_set1_epi32(1);
        let four = _mm512_set1_epi32(4);
        for i in 0..nblk {
            let p = w.add(i * 110);
            let o = out.add(256 * i);
            let (hmask, qs, sc) = (p, p.add(32), p.add(96));
            let mut ints = [0i32; 16];
            for (s, v) in ints.iter_mut().enumerate() {
                let low = (*sc.add(s % 8) >> (4 * (s / 8))) & 0xF;
                let high = (*sc.add(8 + s % 4) >> (2 * (s / 4))) & 3;
                *v = ((low | high << 4) as i8 - 32) as i32;
            }
            let dls = scaled16(
                hv(p.add(108)),
                _mm512_loadu_si512(ints.as_ptr() as *const __m512i),
            );
            for g in 0..8 {
                let mut v = [_mm512_setzero_ps(); 2];
                for (half, v) in v.iter_mut().enumerate() {
                    let s = 2 * g + half;
                    let dl = _mm512_set1_ps(dls[s]);
                    let e0 = 16 * s;
                    let hb = u8x16(hmask.add(e0 % 32));
                    let hb = _mm512_and_si512(
                        _mm512_srlv_epi32(hb, _mm512_set1_epi32((e0 / 32) as i32)),
                        one,
                    );
                    // q − 4 + 4·hbit: the stored high bit is the complement of "subtract 4".
                    let q = _mm512_add_epi32(
                        _mm512_sub_epi32(two_bit16(qs, e0), four),
                        _mm512_slli_epi32::<2>(hb),
                    );
                    *v = _mm512_mul_ps(dl, f(q));
                }
                put(o.add(32 * g), v[0], v[1]);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,f16c")]
    pub unsafe fn f16(w: *const u8, n: usize, out: *mut u16) {
        let mut i = 0;
        while i + 32 <= n {
            let lo = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(2 * i) as *const __m256i));
            let hi = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(2 * i + 32) as *const __m256i));
            put(out.add(i), lo, hi);
            i += 32;
        }
        for j in i..n {
            *out.add(j) = f32_to_bf16(h(w.add(2 * j)));
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn f32(w: *const u8, n: usize, out: *mut u16) {
        let mut i = 0;
        while i + 32 <= n {
            let lo = _mm512_loadu_ps(w.add(4 * i) as *const f32);
            let hi = _mm512_loadu_ps(w.add(4 * i + 64) as *const f32);
            put(out.add(i), lo, hi);
            i += 32;
        }
        for j in i..n {
            let b = std::slice::from_raw_parts(w.add(4 * j), 4);
            *out.add(j) = f32_to_bf16(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing::random_blocks;
    use rand::{Rng, SeedableRng};

    const TYPES: [GgmlType; 14] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::IQ4_NL,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F32,
    ];

    /// Random rows of `ty`: sane-scaled random blocks, or random bit patterns (NaNs,
    /// infinities and denormals included) for the plain types.
    fn random_rows(ty: GgmlType, nr: usize, k: usize, seed: u64) -> Vec<u8> {
        let nblk = nr * k / ty.block_size();
        if ty.is_quantized() {
            return random_blocks(ty, nblk, seed);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v: Vec<u8> = (0..nblk * ty.type_size()).map(|_| rng.random()).collect();
        if ty == GgmlType::F32 {
            // Mostly ordinary values, so rounding (not only the special cases) is exercised.
            for (i, c) in v.chunks_exact_mut(4).enumerate() {
                if i % 4 != 0 {
                    let x = rng.random::<f32>() * 4.0 - 2.0;
                    c.copy_from_slice(&x.to_le_bytes());
                }
            }
        }
        v
    }

    #[test]
    fn simd_paths_equal_the_scalar_path() {
        for ty in TYPES {
            let all = paths(ty);
            assert!(!all.is_empty(), "{ty} not handled");
            let k = ty.block_size().max(32) * 8;
            for (nr, seed) in [(1, 1), (3, 2), (17, 3)] {
                let w = random_rows(ty, nr, k, seed);
                let mut want = vec![0u16; nr * k];
                all[0].1(ty, &w, &mut want);
                for p in &all[1..] {
                    let mut got = vec![0xAAAAu16; nr * k];
                    p.1(ty, &w, &mut got);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g, e, "{ty} {} nr={nr} #{i}: {g:04x} vs {e:04x}", p.0);
                    }
                }
            }
        }
    }

    #[test]
    fn the_scalar_path_rounds_core_dequantization() {
        for ty in TYPES {
            let k = ty.block_size().max(32) * 2;
            let w = random_rows(ty, 2, k, 9);
            let mut got = vec![0u16; 2 * k];
            assert!(dequant_rows_bf16(ty, &w, 2, k, &mut got));
            let f = tensor_core::quant::dequantize(ty, &w).unwrap();
            for (i, (g, x)) in got.iter().zip(&f).enumerate() {
                let back = crate::quant::amx::bf16_to_f32(*g);
                if x.is_nan() {
                    assert!(back.is_nan(), "{ty} #{i}");
                    continue;
                }
                // Within half a bf16 ulp (8 bits of mantissa), or flushed from a denormal.
                let tol = x.abs() / 256.0;
                assert!(
                    (back - x).abs() <= tol || (x.abs() < f32::MIN_POSITIVE && back == 0.0),
                    "{ty} #{i}: {back} vs {x}"
                );
            }
        }
    }

    #[test]
    fn unhandled_types_and_partial_blocks_are_refused() {
        let mut out = vec![0u16; 256];
        assert!(!dequant_rows_bf16(
            GgmlType::IQ2_XXS,
            &[0; 66],
            1,
            256,
            &mut out
        ));
        assert!(!dequant_rows_bf16(
            GgmlType::Q4_K,
            &[0; 144],
            1,
            128,
            &mut out
        ));
        assert!(dequant_rows_bf16(GgmlType::Q4_0, &[0; 36], 1, 64, &mut out));
    }

    /// `cargo test -p tensor-cpu --release --lib quant::to_bf16::tests::bench -- --ignored
    /// --nocapture`: single-thread ns per weight of the fastest path, output kept in L2.
    #[test]
    #[ignore]
    fn bench() {
        let (nr, k) = (64, 2048);
        for ty in TYPES {
            let w = random_rows(ty, nr, k, 1);
            let mut out = vec![0u16; nr * k];
            for (name, f) in paths(ty) {
                let t = std::time::Instant::now();
                let mut best = f64::MAX;
                while t.elapsed().as_secs_f64() < 0.3 {
                    let t1 = std::time::Instant::now();
                    f(ty, &w, &mut out);
                    best = best.min(t1.elapsed().as_secs_f64());
                }
                println!(
                    "{:7} {name:10}: {:.3} ns/weight",
                    ty.name(),
                    best * 1e9 / (nr * k) as f64
                );
            }
        }
    }
}
