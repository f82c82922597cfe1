//! Quantized matrix products on the GPU: `x · wᵀ` for every weight type with CUDA kernels,
//! against the product with the host reference dequantization computed in f64. Each GPU test
//! skips (passes with a note) on a machine without CUDA.

use tensor_core::quant::{quantize, GgmlType, QTensor};
use tensor_core::{DType, Device, Tensor};

const TYPES: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

fn gpu() -> Option<Device> {
    match tensor_cuda::device(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// A deterministic generator of values roughly N(0, 1) (sum of uniforms), xorshift-based.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        ((0..4).map(|_| self.uniform()).sum::<f64>() - 2.0) as f32 * 1.7
    }
}

/// `[n, k]` random weights of type `ty` (rows of different scales, a few outliers), with
/// their host dequantization.
fn weights(ty: GgmlType, n: usize, k: usize, seed: u64) -> (QTensor, Vec<f32>) {
    let mut r = Rng(seed | 1);
    let mut v = Vec::with_capacity(n * k);
    for row in 0..n {
        let scale = 0.02 * (1.0 + (row % 7) as f32);
        for i in 0..k {
            let outlier = if (row * 31 + i * 7) % 97 == 0 {
                8.0
            } else {
                1.0
            };
            v.push(r.normal() * scale * outlier);
        }
    }
    let bytes = quantize(ty, &v).unwrap();
    let q = QTensor::from_bytes(ty, &[n, k], bytes).unwrap();
    let deq = q.dequantize_f32().unwrap();
    (q, deq)
}

fn activations(len: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..len).map(|_| r.normal()).collect()
}

/// Compare `got` (`[m, n]`) with `x · wᵀ` in f64: each entry within `rel` of `Σ|x·w|` (the
/// scale every rounding error is relative to). Returns the largest error in those units.
fn check(
    what: &str,
    got: &[f64],
    x: &[f32],
    w: &[f32],
    mnk: (usize, usize, usize),
    rel: f64,
) -> f64 {
    let (m, n, k) = mnk;
    assert_eq!(got.len(), m * n, "{what}: output length");
    let mut worst = 0f64;
    for i in 0..m {
        for j in 0..n {
            let (mut dot, mut mag) = (0f64, 0f64);
            for t in 0..k {
                let p = x[i * k + t] as f64 * w[j * k + t] as f64;
                dot += p;
                mag += p.abs();
            }
            let err = (got[i * n + j] - dot).abs() / (mag + 1e-30);
            assert!(
                err <= rel,
                "{what}: out[{i}, {j}] = {} but x·wᵀ = {dot} (error {err:.2e} of Σ|x·w| = {mag}, \
                 allowed {rel:.1e})",
                got[i * n + j]
            );
            worst = worst.max(err);
        }
    }
    worst
}

/// The tolerance (relative to `Σ|x·w|`) for `m` activation rows: the matrix-vector kernels
/// accumulate in f32; more rows go through weights rounded to bf16 (2⁻⁹ relative each).
fn tolerance(m: usize) -> f64 {
    if m <= 8 {
        1e-5
    } else {
        2.5e-3
    }
}

#[test]
fn the_quant_module_compiles() {
    if !tensor_cuda::kernels::nvrtc_present() {
        eprintln!("skipped: libnvrtc not found");
        return;
    }
    let m = tensor_cuda::kernels::all_modules()
        .into_iter()
        .find(|m| m.name == "quant")
        .expect("the quant module is listed");
    if let Err(e) = tensor_cuda::kernels::compile_cubin(m, "sm_90") {
        panic!("{e}");
    }
}

#[test]
fn qmatmul_matches_the_dequantized_product() {
    let Some(dev) = gpu() else { return };
    // (n, k): n not a multiple of the 4 rows a block of the matrix-vector kernel takes; rows
    // of one super-block (fewer units than lanes) and of several.
    for (si, &(n, k)) in [(37usize, 256usize), (72, 768)].iter().enumerate() {
        for (ti, &ty) in TYPES.iter().enumerate() {
            let (w, wd) = weights(ty, n, k, 11 + ti as u64 * 101 + si as u64);
            let wg = w.to_device(&dev).unwrap();
            // 1, 2, 8: the matrix-vector kernel for that many rows; 3 and 5: the 4-row and
            // 8-row kernels with fewer; 9 and 40: cuBLAS.
            for m in [1usize, 2, 3, 5, 8, 9, 40] {
                let x = activations(m * k, (m * 1000 + ti * 10 + si) as u64);
                let xt = Tensor::from_vec(x.clone(), (m, k), &dev).unwrap();
                let out = xt.qmatmul(&wg).unwrap();
                assert_eq!(out.dims(), &[m, n]);
                assert_eq!(out.dtype(), DType::F32);
                let got = out.to_f64_vec().unwrap();
                let what = format!("{ty} n={n} k={k} m={m}");
                let worst = check(&what, &got, &x, &wd, (m, n, k), tolerance(m));
                eprintln!("{what}: worst error {worst:.2e} of Σ|x·w|");
            }
        }
    }
}

#[test]
fn qmatmul_takes_batched_and_strided_inputs() {
    let Some(dev) = gpu() else { return };
    let (n, k) = (24, 512);
    for (ti, &ty) in TYPES.iter().enumerate() {
        let (w, wd) = weights(ty, n, k, 7 + ti as u64);
        let wg = w.to_device(&dev).unwrap();
        for m in [2usize, 40] {
            let x = activations(m * k, 99 + m as u64);
            let tol = tolerance(m);
            // [2, m/2, k]: the output keeps the leading dims.
            let b = Tensor::from_vec(x.clone(), (2, m / 2, k), &dev).unwrap();
            let out = b.qmatmul(&wg).unwrap();
            assert_eq!(out.dims(), &[2, m / 2, n]);
            let what = format!("{ty} batched m={m}");
            check(&what, &out.to_f64_vec().unwrap(), &x, &wd, (m, n, k), tol);
            // A transposed view ([k, m] storage).
            let mut xt = vec![0f32; m * k];
            for i in 0..m {
                for t in 0..k {
                    xt[t * m + i] = x[i * k + t];
                }
            }
            let tv = Tensor::from_vec(xt, (k, m), &dev).unwrap().t().unwrap();
            let what = format!("{ty} transposed m={m}");
            let got = tv.qmatmul(&wg).unwrap().to_f64_vec().unwrap();
            check(&what, &got, &x, &wd, (m, n, k), tol);
            // A contiguous view at an odd offset (rows of k + 3, narrowed to k from column 3):
            // copied to an aligned buffer first.
            let mut wide = vec![0f32; m * (k + 3)];
            for i in 0..m {
                wide[i * (k + 3) + 3..(i + 1) * (k + 3)].copy_from_slice(&x[i * k..(i + 1) * k]);
            }
            let nv = Tensor::from_vec(wide, (m, k + 3), &dev)
                .unwrap()
                .narrow(1, 3, k)
                .unwrap();
            let what = format!("{ty} narrowed m={m}");
            let got = nv.qmatmul(&wg).unwrap().to_f64_vec().unwrap();
            check(&what, &got, &x, &wd, (m, n, k), tol);
            // One row at an odd offset: contiguous but misaligned.
            let flat = Tensor::from_vec([vec![0f32], x[..k].to_vec()].concat(), k + 1, &dev)
                .unwrap()
                .narrow(0, 1, k)
                .unwrap();
            let what = format!("{ty} offset row");
            let got = flat.qmatmul(&wg).unwrap().to_f64_vec().unwrap();
            check(&what, &got, &x[..k], &wd, (1, n, k), tolerance(1));
        }
    }
}

#[test]
fn half_precision_inputs_give_outputs_of_their_dtype() {
    let Some(dev) = gpu() else { return };
    // Core's Tensor::qmatmul takes f32 only; the backend also takes f16/bf16 activations.
    let (n, k) = (16, 256);
    let (w, wd) = weights(GgmlType::Q8_0, n, k, 5);
    let wg = w.to_device(&dev).unwrap();
    for dt in [DType::F16, DType::BF16] {
        for m in [1usize, 40] {
            let x = Tensor::from_vec(activations(m * k, 3), (m, k), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let xr: Vec<f32> = x
                .to_f64_vec()
                .unwrap()
                .into_iter()
                .map(|v| v as f32)
                .collect();
            let out = dev.backend().qmatmul(&x, &wg).unwrap();
            assert_eq!((out.dims(), out.dtype()), (&[m, n][..], dt));
            // The f32 result rounded once more to 8 (bf16) or 11 (f16) bits.
            let tol = tolerance(m) + if dt == DType::BF16 { 8e-3 } else { 1e-3 };
            let what = format!("{dt:?} m={m}");
            check(&what, &out.to_f64_vec().unwrap(), &xr, &wd, (m, n, k), tol);
        }
    }
}

#[test]
fn weights_must_be_uploaded_first() {
    let Some(dev) = gpu() else { return };
    let (w, _) = weights(GgmlType::Q4_0, 8, 64, 1);
    let x = Tensor::from_vec(activations(64, 2), (1, 64), &dev).unwrap();
    let e = x.qmatmul(&w).expect_err("a host-only weight").to_string();
    assert!(e.contains("QTensor::to_device"), "unclear error: {e}");
    // Once uploaded it works, and the host blocks are still there.
    let wg = w.to_device(&dev).unwrap();
    assert_eq!(wg.data(), w.data());
    assert!(wg.device_bytes().unwrap().0.same_device(&dev));
    x.qmatmul(&wg).unwrap();
    // Moving to the same device again does not copy.
    let again = wg.to_device(&dev).unwrap();
    let addr = |q: &QTensor| {
        q.device_bytes().unwrap().1 as *const dyn tensor_core::BackendStorage as *const u8
    };
    assert!(std::ptr::eq(addr(&wg), addr(&again)));
}

#[test]
fn types_without_kernels_are_named_in_the_error() {
    let Some(dev) = gpu() else { return };
    let bytes = quantize(GgmlType::Q5_0, &activations(4 * 64, 4)).unwrap();
    let w = QTensor::from_bytes(GgmlType::Q5_0, &[4, 64], bytes)
        .unwrap()
        .to_device(&dev)
        .unwrap();
    let x = Tensor::from_vec(activations(64, 2), (1, 64), &dev).unwrap();
    let e = x.qmatmul(&w).expect_err("no Q5_0 kernel").to_string();
    assert!(e.contains("Q5_0"), "unclear error: {e}");
}

/// Timings on the GPU (`cargo test --release -p tensor-cuda --test quant -- --ignored
/// --nocapture`), per call including the launch overhead: 4096 × 4096 weights for 1 to 512
/// activation rows, and a 14336 × 4096 weight.
#[test]
#[ignore]
fn qmatmul_timings() {
    let Some(dev) = gpu() else { return };
    for (n, k, ms) in [
        (4096usize, 4096usize, &[1usize, 2, 4, 8, 9, 16, 512][..]),
        (14336, 4096, &[1, 8, 512][..]),
    ] {
        for (ti, &ty) in TYPES.iter().enumerate() {
            let (w, _) = weights(ty, n, k, 3 + ti as u64);
            let bytes = w.data().len() as f64;
            let wg = w.to_device(&dev).unwrap();
            for &m in ms {
                let x = Tensor::from_vec(activations(m * k, 1), (m, k), &dev).unwrap();
                for _ in 0..3 {
                    x.qmatmul(&wg).unwrap();
                }
                dev.synchronize().unwrap();
                let reps = 50;
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    x.qmatmul(&wg).unwrap();
                }
                dev.synchronize().unwrap();
                let s = t.elapsed().as_secs_f64() / reps as f64;
                eprintln!(
                    "{ty} {n}x{k} m={m:4}: {:8.1} us, weights at {:7.1} GB/s, {:7.2} TFLOP/s",
                    s * 1e6,
                    bytes / s / 1e9,
                    2.0 * (m * n * k) as f64 / s / 1e12
                );
            }
        }
    }
}
