//! The small per-token kernels of the fused decoder: RMS norm, RoPE, SwiGLU and one head's
//! attention over the cache. Each is written as plain loops in independent lanes and compiled
//! per instruction set through [`crate::fused::math::dispatch`], so LLVM vectorises them with
//! AVX-512 or AVX2 where the CPU has them and no `unsafe` is needed.

use crate::fused::math::{dispatch, max_of, Kernel, Simd};

const LANES: usize = 16;

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    s += acc[0];
    s
}

struct Dot<'a>(&'a [f32], &'a [f32]);
impl Kernel for Dot<'_> {
    type Out = f32;
    #[inline(always)]
    fn run<M: Simd>(self, _m: M) -> f32 {
        dot_lanes(self.0, self.1)
    }
}

/// `a · b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dispatch(Dot(a, b))
}

/// `a += b`.
pub fn add(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += *y;
    }
}

/// `1 / sqrt(mean(x²) + eps)`, the RMS norm's scale.
pub fn rms_inv(x: &[f32], eps: f32) -> f32 {
    let ms = dot(x, x) / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

struct ScaleMul<'a> {
    x: &'a [f32],
    w: &'a [f32],
    r: f32,
    out: &'a mut [f32],
}
impl Kernel for ScaleMul<'_> {
    type Out = ();
    #[inline(always)]
    fn run<M: Simd>(self, _m: M) {
        for ((o, &x), &w) in self.out.iter_mut().zip(self.x).zip(self.w) {
            *o = x * self.r * w;
        }
    }
}

/// `out = x · r · w`: the RMS norm applied with `r` from [`rms_inv`].
pub fn scale_mul(x: &[f32], w: &[f32], r: f32, out: &mut [f32]) {
    dispatch(ScaleMul { x, w, r, out })
}

/// Rotate one head in place by the angles whose cosines and sines are given (`hd / 2` each):
/// adjacent pairs when `interleaved`, else the two halves.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = x.len() / 2;
    if interleaved {
        for i in 0..half {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = a * cos[i] - b * sin[i];
            x[2 * i + 1] = a * sin[i] + b * cos[i];
        }
    } else {
        let (lo, hi) = x.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * cos[i] - b * sin[i];
            hi[i] = a * sin[i] + b * cos[i];
        }
    }
}

struct SiluMul<'a> {
    g: &'a [f32],
    u: &'a [f32],
    out: &'a mut [f32],
}
impl Kernel for SiluMul<'_> {
    type Out = ();
    #[inline(always)]
    fn run<M: Simd>(self, _m: M) {
        for ((o, &g), &u) in self.out.iter_mut().zip(self.g).zip(self.u) {
            let e = crate::fused::math::exp_f32::<M>(-g);
            *o = g / (1.0 + e) * u;
        }
    }
}

/// `out = silu(g) · u`.
pub fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    dispatch(SiluMul { g, u, out })
}

struct Attend<'a> {
    q: &'a [f32],
    kc: &'a [f32],
    vc: &'a [f32],
    stride: usize,
    npos: usize,
    scale: f32,
    scores: &'a mut [f32],
    out: &'a mut [f32],
}
impl Kernel for Attend<'_> {
    type Out = ();
    #[inline(always)]
    fn run<M: Simd>(self, _m: M) {
        let hd = self.q.len();
        for (j, s) in self.scores.iter_mut().enumerate().take(self.npos) {
            let k = &self.kc[j * self.stride..j * self.stride + hd];
            *s = dot_lanes(self.q, k) * self.scale;
        }
        let scores = &mut self.scores[..self.npos];
        let m = max_of(scores);
        let mut acc = [0f32; LANES];
        let mut chunks = scores.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                c[l] = crate::fused::math::exp_f32::<M>(c[l] - m);
                acc[l] += c[l];
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for v in chunks.into_remainder() {
            *v = crate::fused::math::exp_f32::<M>(*v - m);
            sum += *v;
        }
        let inv = 1.0 / sum;
        self.out.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let v = &self.vc[j * self.stride..j * self.stride + hd];
            let p = p * inv;
            for (o, &x) in self.out.iter_mut().zip(v) {
                *o += p * x;
            }
        }
    }
}

/// One head of causal attention: `out = softmax(scale · q·Kᵀ) · V` over the first `npos`
/// cached positions, whose keys/values start every `stride` floats in `kc`/`vc`.
/// `scores` is scratch of at least `npos` floats.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    stride: usize,
    npos: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    dispatch(Attend {
        q,
        kc,
        vc,
        stride,
        npos,
        scale,
        scores,
        out,
    })
}
