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
/// plane symmetric round-to-nearest with step `max|x| / 127`, the second the remainder at
/// 1/128 of that step.
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    debug_assert_eq!(x.len(), out.len() * 32);
    for (xb, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let step = amax / 127.0;
        let id = if step != 0.0 { 1.0 / step } else { 0.0 };
        let mut sum = 0i32;
        for ((q, r), &v) in b.qs.iter_mut().zip(b.qr.iter_mut()).zip(xb) {
            let t = v * id;
            let hi = t.round().clamp(-127.0, 127.0);
            let lo = ((t - hi) * 128.0).round().clamp(-64.0, 64.0);
            *q = hi as i8;
            *r = lo as i8;
            sum += 128 * hi as i32 + lo as i32;
        }
        b.d = step / 128.0;
        b.s = b.d * sum as f32;
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
