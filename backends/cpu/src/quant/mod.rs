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

pub use act::{quantize_q8, quantize_q8k, BlockQ8, BlockQ8K};
use tensor_core::quant::GgmlType;

/// How far ahead of its reads a matrix-vector kernel prefetches the weight stream, in bytes.
/// Decode reads every weight once per token; the hardware prefetcher alone left SmolLM2-135M
/// waiting on loads for about a third of the time (84 → 130 tok/s on Q4_1 when added), and
/// the speed plateaus from about 4 KiB on.
pub(crate) const PREFETCH: usize = 8192;

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
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("qmatmul checked the rank") = n;
    tensor_core::Tensor::from_vec(out, dims, x.device())
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
