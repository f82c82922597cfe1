//! Activations quantized to 8-bit blocks, the right-hand side of every quantized dot product:
//! [`BlockQ8`] (32 values, for the 32-element weight formats) and [`BlockQ8K`] (256 values,
//! ggml's `block_q8_K`, for the k-quants and IQ4_XS).

use half::f16;

/// 32 activations as two 8-bit planes: `x[i] ≈ d · (128·qs[i] + qr[i])`, where `qs` is the
/// usual round-to-nearest int8 quantization (`|qs| ≤ 127`) and `qr` (`|qr| ≤ 64`) quantizes
/// what it left over at 1/128 of its step. `s = d · Σ (128·qs + qr)` is precomputed for the
/// formats whose blocks carry a minimum (Q4_1, Q5_1).
///
/// Why two planes: one int8 plane (ggml's Q8_0/Q8_1) perturbs small models enough to change
/// their greedy output — SmolLM2-135M answers "What is the capital of France?" with
/// "L'Étoile, …" through llama.cpp and through a single plane here, and "Paris" in f32. The
/// second plane makes activations ≈ 15-bit while every product stays an integer `u8 × i8`
/// dot product (one more `vpdpbusd` per weight vector, which decode — bound by streaming the
/// weights — does not notice).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
    pub qr: [i8; 32],
}

impl BlockQ8 {
    /// The value of element `i`.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        self.d * (128 * self.qs[i] as i32 + self.qr[i] as i32) as f32
    }
}

impl Default for BlockQ8 {
    fn default() -> Self {
        BlockQ8 {
            d: 0.0,
            s: 0.0,
            qs: [0; 32],
            qr: [0; 32],
        }
    }
}

/// 256 activations as `d · qs[i]`, with the sum of each group of 16 quants in `bsums`
/// (the k-quant kernels fold their per-group minimums through it). ggml's `block_q8_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16],
        }
    }
}

/// Quantize `x` (a multiple of 32 long) into `out` (one block per 32 values): the first
/// plane symmetric with step `max|x| / 127`, the second the remainder at 1/128 of that step,
/// both rounded to nearest, ties to even (what the SIMD rounding instruction does, so the
/// AVX-512 path gives the same bits).
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    assert_eq!(
        x.len(),
        out.len() * 32,
        "quantize_q8: one block per 32 values"
    );
    #[cfg(target_arch = "x86_64")]
    if super::features().avx512 {
        // SAFETY: AVX-512F/BW was detected; the lengths were checked above.
        unsafe { avx512::quantize_q8(x, out) };
        return;
    }
    quantize_q8_scalar(x, out);
}

/// The reference for [`quantize_q8`].
pub fn quantize_q8_scalar(x: &[f32], out: &mut [BlockQ8]) {
    for (xb, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let step = amax / 127.0;
        let id = if step != 0.0 { 1.0 / step } else { 0.0 };
        let mut sum = 0i32;
        for ((q, r), &v) in b.qs.iter_mut().zip(b.qr.iter_mut()).zip(xb) {
            let t = v * id;
            let hi = t.round_ties_even().clamp(-127.0, 127.0);
            let lo = ((t - hi) * 128.0).round_ties_even().clamp(-64.0, 64.0);
            *q = hi as i8;
            *r = lo as i8;
            sum += 128 * hi as i32 + lo as i32;
        }
        b.d = step / 128.0;
        b.s = b.d * sum as f32;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::BlockQ8;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F/BW; `x.len() == 32 · out.len()`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let (lim_hi, lim_lo) = (_mm512_set1_ps(127.0), _mm512_set1_ps(64.0));
        let clamp = |v: __m512, l: __m512| {
            _mm512_max_ps(_mm512_min_ps(v, l), _mm512_sub_ps(_mm512_setzero_ps(), l))
        };
        for (i, b) in out.iter_mut().enumerate() {
            let p = x.as_ptr().add(32 * i);
            let v = [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))];
            let amax =
                _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
            let step = amax / 127.0;
            let id = _mm512_set1_ps(if step != 0.0 { 1.0 / step } else { 0.0 });
            let mut sum = _mm512_setzero_si512();
            for (h, v) in v.iter().enumerate() {
                let t = _mm512_mul_ps(*v, id);
                let hi = clamp(_mm512_roundscale_ps::<NEAREST>(t), lim_hi);
                let lo = _mm512_mul_ps(_mm512_sub_ps(t, hi), _mm512_set1_ps(128.0));
                let lo = clamp(_mm512_roundscale_ps::<NEAREST>(lo), lim_lo);
                let (hi, lo) = (_mm512_cvtps_epi32(hi), _mm512_cvtps_epi32(lo));
                _mm_storeu_si128(
                    b.qs.as_mut_ptr().add(16 * h).cast(),
                    _mm512_cvtepi32_epi8(hi),
                );
                _mm_storeu_si128(
                    b.qr.as_mut_ptr().add(16 * h).cast(),
                    _mm512_cvtepi32_epi8(lo),
                );
                sum = _mm512_add_epi32(sum, _mm512_add_epi32(_mm512_slli_epi32::<7>(hi), lo));
            }
            b.d = step / 128.0;
            b.s = b.d * _mm512_reduce_add_epi32(sum) as f32;
        }
    }
}

/// Quantize `x` (a multiple of 256 long) into `out`, symmetric round to nearest, with the
/// group sums filled in.
pub fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    debug_assert_eq!(x.len(), out.len() * 256);
    for (xb, b) in x.chunks_exact(256).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
        for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        b.d = d;
    }
}

/// An f16 stored little-endian at `b[0..2]`, as f32.
#[inline(always)]
pub fn f16_at(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn simd_q8_quantization_gives_the_reference_bits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut x: Vec<f32> = (0..32 * 200)
            .map(|i| rng.random_range(-4.0f32..4.0) * (1 + i % 7) as f32)
            .collect();
        // An all-zero block, a block of exact ties, and one large outlier.
        x[..32].fill(0.0);
        for (i, v) in x[32..64].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 0.5;
        }
        x[100] = 1e6;
        let mut want = vec![BlockQ8::default(); x.len() / 32];
        let mut got = want.clone();
        quantize_q8_scalar(&x, &mut want);
        quantize_q8(&x, &mut got);
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!((w.qs, w.qr), (g.qs, g.qr), "block {i}");
            assert_eq!(
                (w.d.to_bits(), w.s.to_bits()),
                (g.d.to_bits(), g.s.to_bits()),
                "block {i}"
            );
        }
    }
}
