//! The small per-token kernels of the fused decoder: RMS norm, RoPE, SwiGLU and one head's
//! attention over the cache. Each is written as plain loops in independent lanes and compiled
//! per instruction set through [`crate::fused::math::dispatch`], so LLVM vectorises them with
//! AVX-512 or AVX2 where the CPU has them and no `unsafe` is needed.

use crate::fused::math::{dispatch, Kernel, Simd};

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
    out: &'a mut [f32],
}
impl Kernel for Attend<'_> {
    type Out = ();
    #[inline(always)]
    fn run<M: Simd>(self, _m: M) {
        use crate::fused::math::exp_f32;
        let hd = self.q.len();
        let key = |j: usize| &self.kc[j * self.stride..j * self.stride + hd];
        let val = |j: usize| &self.vc[j * self.stride..j * self.stride + hd];
        // Online softmax over chunks of positions: the running maximum `m`, the running sum
        // `l` of exp(score − m) and the output accumulated with the same weights; a larger
        // maximum rescales both. No buffer of all the scores.
        let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
        self.out.fill(0.0);
        for j0 in (0..self.npos).step_by(LANES) {
            let n = (self.npos - j0).min(LANES);
            // Lanes past the last position score −inf, so their weight is exactly 0.
            let mut s = [f32::NEG_INFINITY; LANES];
            for (i, s) in s.iter_mut().enumerate().take(n) {
                *s = dot_lanes(self.q, key(j0 + i)) * self.scale;
            }
            let m_new = s.iter().fold(m, |a, &b| a.max(b));
            // The chunk's weights in one vector of exps.
            let mut p = [0f32; LANES];
            for (p, &s) in p.iter_mut().zip(&s) {
                *p = exp_f32::<M>(s - m_new);
            }
            if m_new > m {
                // exp(−inf) is exactly 0: the first chunk scales the empty state by zero.
                let corr = exp_f32::<M>(m - m_new);
                l *= corr;
                for o in self.out.iter_mut() {
                    *o *= corr;
                }
                m = m_new;
            }
            l += p.iter().sum::<f32>();
            for (i, &pi) in p.iter().enumerate().take(n) {
                for (o, &x) in self.out.iter_mut().zip(val(j0 + i)) {
                    *o += pi * x;
                }
            }
        }
        let inv = 1.0 / l;
        for o in self.out.iter_mut() {
            *o *= inv;
        }
    }
}

/// One head of causal attention: `out = softmax(scale · q·Kᵀ) · V` over the first `npos`
/// cached positions, whose keys/values start every `stride` floats in `kc`/`vc`, in one pass
/// with an online softmax.
pub fn attend(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    stride: usize,
    npos: usize,
    scale: f32,
    out: &mut [f32],
) {
    dispatch(Attend {
        q,
        kc,
        vc,
        stride,
        npos,
        scale,
        out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass online softmax against scores, softmax and weighted sum done in f64.
    #[test]
    fn online_attention_matches_the_two_pass_reference() {
        let (hd, stride) = (64, 3 * 64);
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        let kc: Vec<f32> = (0..100 * stride).map(|_| rnd()).collect();
        let vc: Vec<f32> = (0..100 * stride).map(|_| rnd()).collect();
        let q: Vec<f32> = (0..hd).map(|_| rnd()).collect();
        for npos in [1, 15, 16, 17, 33, 100] {
            let off = hd; // the second KV head
            let mut out = vec![0f32; hd];
            attend(&q, &kc[off..], &vc[off..], stride, npos, 0.125, &mut out);
            let s: Vec<f64> = (0..npos)
                .map(|j| {
                    let k = &kc[off + j * stride..off + j * stride + hd];
                    0.125
                        * q.iter()
                            .zip(k)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for (d, o) in out.iter().enumerate() {
                let want: f64 = (0..npos)
                    .map(|j| e[j] / z * vc[off + j * stride + d] as f64)
                    .sum();
                assert!(
                    (*o as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "npos {npos} dim {d}: {o} vs {want}"
                );
            }
        }
    }
}
