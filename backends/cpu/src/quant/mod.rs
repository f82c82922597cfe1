//! Quantized matrix products on the CPU: weights stay in their ggml blocks (borrowed from the
//! memory-mapped file), activations are quantized to 8-bit blocks ([`act`]), and the products
//! are integer dot products scaled per block.
//!
//! Every weight type has a scalar reference kernel and, where they pay, AVX2 and AVX-512
//! (VNNI) kernels chosen at run time; tests compare each SIMD path with the scalar one on
//! random data. Types without a kernel of their own fall back to dequantizing: the
//! default `qmatmul` composition, or one row at a time in the fused decoder.

pub mod act;
pub mod amx;
mod kquants;
mod legacy;
pub mod to_bf16;

use crate::fused::math::{dispatch, Kernel as SimdKernel, Simd};
pub use act::{quantize_q8, quantize_q8k, BlockQ8, BlockQ8K};
use tensor_core::quant::GgmlType;

/// How far ahead of its reads a matrix-vector kernel prefetches the weight stream, in bytes.
/// Decode reads every weight once per token; the hardware prefetcher alone left SmolLM2-135M
/// waiting on loads for about a third of the time (84 → 130 tok/s on Q4_1 when added), and
/// the speed plateaus from about 4 KiB on.
pub(crate) const PREFETCH: usize = 8192;

/// Products over at least this many tokens run on AMX tiles where the CPU and OS allow
/// (for weight types [`to_bf16`] decodes): below it, dequantizing the weights to bf16 costs
/// more than the integer kernels save.
pub(crate) const AMX_MIN_TOKENS: usize = 16;

/// Whether `ty` weights with rows of `k` can multiply on AMX tiles here.
pub(crate) fn amx_ready(ty: GgmlType, k: usize) -> bool {
    k.is_multiple_of(32) && !to_bf16::paths(ty).is_empty() && amx::available()
}

/// `[m, k]` activations as the two bf16 planes of the AMX products, `x ≈ hi + lo` (each
/// [`amx::packed_len`]`(m, k)` long): one plane alone (8-bit mantissas) moved a random test
/// model's logits by 2% of their scale; two make the activations about 16-bit for one more
/// tile product each. `scratch` holds `m · k` floats.
pub(crate) fn pack_planes(
    x: &[f32],
    m: usize,
    k: usize,
    hi: &mut [u16],
    lo: &mut [u16],
    scratch: &mut [f32],
) {
    amx::pack_x(x, m, k, hi);
    bf16_residual(&x[..m * k], &mut scratch[..m * k]);
    amx::pack_x(scratch, m, k, lo);
}

struct Bf16Residual<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
}
impl SimdKernel for Bf16Residual<'_> {
    type Out = ();
    #[inline(always)]
    fn run<M: Simd>(self, _m: M) {
        for (o, &x) in self.out.iter_mut().zip(self.x) {
            // Round to nearest even at bit 16, as the hardware conversion does for finite
            // values (it flushes f32 denormals, whose residual here is below 1e-38).
            let b = x.to_bits();
            let hi = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
            *o = x - f32::from_bits(hi);
        }
    }
}

/// `out = x − bf16(x)`: what rounding to bf16 leaves, the second plane of the AMX activations.
fn bf16_residual(x: &[f32], out: &mut [f32]) {
    dispatch(Bf16Residual { x, out })
}

/// `out[c * ldo + r] = w[r] · a[c]` for `r < nr`, `c < nc`: `w` holds `nr` rows of `n`
/// weights as blocks, `a` holds `nc` columns of `n` activations as 8-bit blocks.
pub type GemmFn<A> =
    fn(n: usize, w: &[u8], nr: usize, a: &[A], nc: usize, out: &mut [f32], ldo: usize);

/// A kernel with the activation format it expects.
#[derive(Clone, Copy)]
pub enum Kernel {
    Q8(GemmFn<BlockQ8>),
    Q8K(GemmFn<BlockQ8K>),
}

/// A named implementation of a type's kernel ("scalar", "avx2", "avx512", "avx512vnni").
#[derive(Clone, Copy)]
pub struct Path {
    pub name: &'static str,
    pub kernel: Kernel,
}

/// Every implementation of `ty`'s kernel this CPU can run, the scalar reference first and the
/// fastest last; empty when the type has no kernel of its own.
pub fn paths(ty: GgmlType) -> Vec<Path> {
    let mut v = legacy::paths(ty);
    v.extend(kquants::paths(ty));
    v
}

/// The fastest kernel for `ty` on this CPU, or `None` (use [`generic`]).
pub fn best(ty: GgmlType) -> Option<Kernel> {
    static TABLE: std::sync::OnceLock<Vec<(GgmlType, Kernel)>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        GgmlType::ALL
            .iter()
            .filter_map(|&t| paths(t).last().map(|p| (t, p.kernel)))
            .collect()
    });
    table.iter().find(|(t, _)| *t == ty).map(|(_, k)| *k)
}

/// Which SIMD extensions this CPU has, detected once.
#[derive(Clone, Copy, Debug)]
pub struct Features {
    pub avx2: bool,
    pub avx512: bool,
    pub avx512vnni: bool,
}

pub fn features() -> Features {
    static F: std::sync::OnceLock<Features> = std::sync::OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            let avx512 = avx2
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl");
            let avx512vnni = avx512 && std::arch::is_x86_feature_detected!("avx512vnni");
            Features {
                avx2,
                avx512,
                avx512vnni,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Features {
            avx2: false,
            avx512: false,
            avx512vnni: false,
        }
    })
}

/// `x · wᵀ` for the backend's `qmatmul`: `x` is `[..., K]` f32, `w` is `[N, K]`. Types
/// without a kernel (or a `K` the kernel's blocks do not tile) go through the default
/// dequantize-and-multiply composition.
pub(crate) fn qmatmul(
    x: &tensor_core::Tensor,
    w: &tensor_core::quant::QTensor,
) -> tensor_core::Result<tensor_core::Tensor> {
    use rayon::prelude::*;
    let (n, k) = (w.rows(), w.row_len());
    let kernel = best(w.ggml_type()).filter(|kn| match kn {
        Kernel::Q8(_) => k % 32 == 0,
        Kernel::Q8K(_) => k % 256 == 0,
    });
    let Some(kernel) = kernel else {
        return tensor_core::composite::qmatmul(x, w);
    };
    let xs = x.flatten_all()?.to_vec::<f32>()?;
    let m = xs.len() / k.max(1);
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("qmatmul checked the rank") = n;
    if m >= AMX_MIN_TOKENS && amx_ready(w.ggml_type(), k) {
        let out = qmatmul_amx(&xs, m, k, w);
        return tensor_core::Tensor::from_vec(out, dims, x.device());
    }
    let mut out = vec![0f32; m * n];
    let data = w.data();
    let rb = w.row_bytes();
    // Rows of `w` per task when there is one input row; input rows per task otherwise.
    const ROWS: usize = 64;
    const COLS: usize = 8;
    match kernel {
        Kernel::Q8(f) => {
            let mut a = vec![BlockQ8::default(); m * k / 32];
            quantize_q8(&xs, &mut a);
            if m == 1 {
                out.par_chunks_mut(ROWS).enumerate().for_each(|(i, o)| {
                    let r0 = i * ROWS;
                    f(k, &data[r0 * rb..(r0 + o.len()) * rb], o.len(), &a, 1, o, n)
                });
            } else {
                out.par_chunks_mut(COLS * n).enumerate().for_each(|(i, o)| {
                    let c0 = i * COLS;
                    let nc = o.len() / n;
                    f(k, data, n, &a[c0 * k / 32..(c0 + nc) * k / 32], nc, o, n)
                });
            }
        }
        Kernel::Q8K(f) => {
            let mut a = vec![BlockQ8K::default(); m * k / 256];
            quantize_q8k(&xs, &mut a);
            if m == 1 {
                out.par_chunks_mut(ROWS).enumerate().for_each(|(i, o)| {
                    let r0 = i * ROWS;
                    f(k, &data[r0 * rb..(r0 + o.len()) * rb], o.len(), &a, 1, o, n)
                });
            } else {
                out.par_chunks_mut(COLS * n).enumerate().for_each(|(i, o)| {
                    let c0 = i * COLS;
                    let nc = o.len() / n;
                    f(k, data, n, &a[c0 * k / 256..(c0 + nc) * k / 256], nc, o, n)
                });
            }
        }
    }
    tensor_core::Tensor::from_vec(out, dims, x.device())
}

/// `out[t · ldo + r] = w[r] · x[t]` for the `pr` rows of `ty` weights in `wb` and the `m`
/// tokens [`pack_planes`] packed into `planes`: the rows dequantized to bf16 into `panel`
/// (`pr · k`), one tile product per plane, the second through `tmp` (`m · pr`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn amx_rows(
    ty: GgmlType,
    wb: &[u8],
    pr: usize,
    k: usize,
    m: usize,
    planes: (&[u16], &[u16]),
    panel: &mut [u16],
    tmp: &mut [f32],
    out: &mut [f32],
    ldo: usize,
) {
    let done = to_bf16::dequant_rows_bf16(ty, wb, pr, k, panel);
    debug_assert!(done, "amx_ready checked the type");
    let w = &panel[..pr * k];
    amx::gemm(m, k, planes.0, w, pr, out, ldo);
    amx::gemm(m, k, planes.1, w, pr, tmp, pr);
    for t in 0..m {
        let o = &mut out[t * ldo..t * ldo + pr];
        o.iter_mut()
            .zip(&tmp[t * pr..(t + 1) * pr])
            .for_each(|(o, l)| *o += l);
    }
}

/// `xs · wᵀ` (`[m, k]` by `[n, k]`) on AMX tiles: the activations packed once as two bf16
/// planes, then rayon tasks of 64 weight rows, each dequantizing its rows to bf16 and
/// multiplying every token by them.
fn qmatmul_amx(xs: &[f32], m: usize, k: usize, w: &tensor_core::quant::QTensor) -> Vec<f32> {
    use rayon::prelude::*;
    const PANEL: usize = 64;
    let (n, rb, ty) = (w.rows(), w.row_bytes(), w.ggml_type());
    let len = amx::packed_len(m, k);
    let (mut hi, mut lo) = (amx::AlignedBuf::zeroed(len), amx::AlignedBuf::zeroed(len));
    pack_planes(xs, m, k, &mut hi, &mut lo, &mut vec![0f32; m * k]);
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(PANEL))
        .into_par_iter()
        .map(|p| {
            let (r0, pr) = (p * PANEL, (n - p * PANEL).min(PANEL));
            let mut panel = amx::AlignedBuf::zeroed(pr * k);
            let (mut a, mut tmp) = (vec![0f32; m * pr], vec![0f32; m * pr]);
            let wb = &w.data()[r0 * rb..(r0 + pr) * rb];
            amx_rows(
                ty,
                wb,
                pr,
                k,
                m,
                (&hi, &lo),
                &mut panel,
                &mut tmp,
                &mut a,
                pr,
            );
            a
        })
        .collect();
    let mut out = vec![0f32; m * n];
    for (p, blk) in blocks.iter().enumerate() {
        let (r0, pr) = (p * PANEL, (n - p * PANEL).min(PANEL));
        for t in 0..m {
            out[t * n + r0..t * n + r0 + pr].copy_from_slice(&blk[t * pr..(t + 1) * pr]);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod testing {
    //! Random blocks and the comparison every kernel test runs.

    use super::*;
    use rand::{Rng, SeedableRng};

    /// Byte offsets of the f16 scale fields (`d`, `dmin`, `m`) inside a block of `ty`.
    fn scale_offsets(ty: GgmlType) -> &'static [usize] {
        use GgmlType::*;
        match ty {
            Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS => &[0],
            Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
            Q2_K => &[80, 82],
            Q3_K => &[108],
            Q6_K => &[208],
            other => panic!("no test blocks for {other}"),
        }
    }

    /// `nblocks` random blocks of `ty`: random bytes, with every f16 scale set to a small
    /// finite value so the products stay in a sane range.
    pub fn random_blocks(ty: GgmlType, nblocks: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let size = ty.type_size();
        let mut w: Vec<u8> = (0..nblocks * size).map(|_| rng.random()).collect();
        for b in w.chunks_exact_mut(size) {
            for &o in scale_offsets(ty) {
                let v = half::f16::from_f32(rng.random::<f32>() * 0.02 + 0.001);
                b[o..o + 2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        w
    }

    pub fn random_acts(n: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n * cols)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect()
    }

    /// Run every path of `ty` on the same random problem (several shapes, including a single
    /// column and column counts that are not a multiple of any tile) and compare each with
    /// the scalar path (`tol` relative to the sum of |terms|) and the scalar path with an f64
    /// product of the dequantized operands.
    pub fn check_paths(ty: GgmlType, tol: f32) {
        let all = paths(ty);
        assert!(!all.is_empty(), "{ty}: no kernels");
        assert_eq!(all[0].name, "scalar");
        let blk = ty.block_size().max(32);
        for &(nb, nr, nc) in &[
            (1, 1, 1),
            (2, 1, 1),
            (3, 5, 1),
            (8, 6, 1),
            (18, 9, 1),
            (8, 7, 3),
            (9, 9, 6),
            (24, 4, 5),
        ] {
            let n = nb * blk;
            let w = random_blocks(ty, n / ty.block_size() * nr, 7 + n as u64);
            let x = random_acts(n, nc, 11 + nr as u64);
            let wd = tensor_core::quant::dequantize(ty, &w).unwrap();
            let run = |k: Kernel| -> (Vec<f32>, Vec<f64>) {
                let mut out = vec![f32::NAN; nc * (nr + 2)];
                let ldo = nr + 2;
                // Dequantized activations, to give the f64 reference the same inputs.
                let xd: Vec<f32> = match k {
                    Kernel::Q8(f) => {
                        let mut a = vec![BlockQ8::default(); n / 32 * nc];
                        quantize_q8(&x, &mut a);
                        f(n, &w, nr, &a, nc, &mut out, ldo);
                        a.iter().flat_map(|b| (0..32).map(|i| b.value(i))).collect()
                    }
                    Kernel::Q8K(f) => {
                        let mut a = vec![BlockQ8K::default(); n / 256 * nc];
                        quantize_q8k(&x, &mut a);
                        f(n, &w, nr, &a, nc, &mut out, ldo);
                        a.iter()
                            .flat_map(|b| b.qs.map(|q| q as f32 * b.d))
                            .collect()
                    }
                };
                let mut got = Vec::new();
                let mut scale = Vec::new();
                for c in 0..nc {
                    for r in 0..nr {
                        got.push(out[c * ldo + r]);
                        let wr = &wd[r * n..(r + 1) * n];
                        let xc = &xd[c * n..(c + 1) * n];
                        let want: f64 = wr.iter().zip(xc).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let mag: f64 = wr
                            .iter()
                            .zip(xc)
                            .map(|(a, b)| (*a as f64 * *b as f64).abs())
                            .sum();
                        scale.push(want);
                        scale.push(mag);
                    }
                    // Columns beyond `nr` in the output stride are left alone.
                    assert!(
                        out[c * ldo + nr].is_nan(),
                        "{ty}: kernel wrote past its rows"
                    );
                }
                (got, scale)
            };
            let (reference, exact) = run(all[0].kernel);
            for (i, r) in reference.iter().enumerate() {
                let (want, mag) = (exact[2 * i], exact[2 * i + 1]);
                let err = (*r as f64 - want).abs();
                assert!(
                    err <= 1e-5 * mag + 1e-6,
                    "{ty} scalar n={n} nr={nr} nc={nc} #{i}: {r} vs exact {want} (|terms| {mag})"
                );
            }
            for p in &all[1..] {
                let (got, _) = run(p.kernel);
                for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
                    let mag = exact[2 * i + 1] as f32;
                    assert!(
                        (g - r).abs() <= tol * mag + 1e-6,
                        "{ty} {} n={n} nr={nr} nc={nc} #{i}: {g} vs scalar {r} (|terms| {mag})",
                        p.name
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{random_acts, random_blocks};
    use tensor_core::quant::{GgmlType, QTensor};
    use tensor_core::Tensor;

    /// The backend's `qmatmul` (integer kernels for one token or a few, AMX tiles for a prompt
    /// where the CPU allows) against dequantize-then-f32-matmul.
    #[test]
    fn qmatmul_matches_the_dequantized_product() {
        let dev = crate::device();
        let (n, k) = (70, 512);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            let w = QTensor::from_bytes(ty, &[n, k], random_blocks(ty, n * k / ty.block_size(), 5))
                .unwrap();
            let wd = tensor_core::quant::dequantize(ty, w.data()).unwrap();
            for m in [1, 5, 40] {
                let xv = random_acts(k, m, 9 + m as u64);
                let x = Tensor::from_vec(xv.clone(), (m, k), &dev).unwrap();
                let got = x.qmatmul(&w).unwrap();
                assert_eq!(got.dims(), [m, n]);
                let got = got.flatten_all().unwrap().to_vec::<f32>().unwrap();
                for t in 0..m {
                    for r in 0..n {
                        let (xs, ws) = (&xv[t * k..(t + 1) * k], &wd[r * k..(r + 1) * k]);
                        let want: f64 = xs.iter().zip(ws).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let mag: f64 = xs
                            .iter()
                            .zip(ws)
                            .map(|(a, b)| (*a as f64 * *b as f64).abs())
                            .sum();
                        let g = got[t * n + r] as f64;
                        assert!(
                            (g - want).abs() <= 5e-3 * mag + 1e-5,
                            "{ty} m={m} [{t}, {r}]: {g} vs {want} (|terms| {mag})"
                        );
                    }
                }
            }
        }
    }
}
