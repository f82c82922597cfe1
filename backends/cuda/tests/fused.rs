//! The fused kernels (`src/fused.rs`) on the GPU, against f64 references computed here on
//! the host from the inputs' (rounded) values, and against `tensor_core::composite` on the
//! same device. Every test skips (passes with a note) without a CUDA device; the composite
//! comparisons are skipped while a primitive they need is not on CUDA yet.

use tensor_core::{
    composite, optim, CrossEntropyParams, DType, Device, HostData, OptimRule, Tensor, UnaryOp,
};

/// The device's error flag is shared by every op: tests that raise it on purpose and tests
/// that read it (cross-entropy checks its targets) must not run at the same time.
static ERR_FLAG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn flag_lock() -> std::sync::MutexGuard<'static, ()> {
    ERR_FLAG.lock().unwrap_or_else(|e| e.into_inner())
}

fn dev() -> Option<Device> {
    match tensor_cuda::device(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Deterministic values in [-1, 1) (splitmix64).
fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

fn rnd(d: &Device, dims: &[usize], dt: DType, seed: u64, scale: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f64> = noise(n, seed).into_iter().map(|x| x * scale).collect();
    Tensor::from_f64s(&v, dims.to_vec(), dt, d).unwrap()
}

/// A view with inner stride ≠ 1 holding random values: built with the last two dims swapped
/// and transposed back.
fn strided(d: &Device, dims: &[usize], dt: DType, seed: u64, scale: f64) -> Tensor {
    let r = dims.len();
    let mut td = dims.to_vec();
    td.swap(r - 1, r - 2);
    let t = rnd(d, &td, dt, seed, scale)
        .transpose(r - 1, r - 2)
        .unwrap();
    assert!(!t.is_contiguous());
    t
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

/// Round f64 values to `dt` (as a tensor of that dtype holds them).
fn round_to(v: &[f64], dt: DType) -> Vec<f64> {
    HostData::from_f64_slice(v, dt).to_f64_vec()
}

fn tol(dt: DType) -> f64 {
    match dt {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::BF16 => 2e-2,
        _ => 4e-3,
    }
}

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];

/// Max |a − b| / (1 + |b|) ≤ tol; NaN must match NaN and infinities must be equal.
fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        if a.is_nan() || b.is_nan() {
            assert!(a.is_nan() && b.is_nan(), "{what}[{i}]: {a} vs {b}");
            continue;
        }
        if a.is_infinite() || b.is_infinite() {
            assert_eq!(a, b, "{what}[{i}]");
            continue;
        }
        let err = (a - b).abs() / (1.0 + b.abs());
        assert!(
            err <= tol,
            "{what}[{i}]: {a} vs {b} (err {err:e}, tol {tol:e})"
        );
    }
}

fn close_t(got: &Tensor, want: &[f64], tol: f64, what: &str) {
    close(&vals(got), want, tol, what)
}

/// The composite result, or None (with a note) while a primitive it needs is missing on CUDA.
fn composite_ok<T>(r: tensor_core::Result<T>, what: &str) -> Option<T> {
    match r {
        Ok(t) => Some(t),
        Err(e) if e.to_string().contains("not on CUDA yet") => {
            eprintln!("{what}: composite reference skipped ({e})");
            None
        }
        Err(e) => panic!("{what}: composite failed: {e}"),
    }
}

fn vs_composite(got: &Tensor, want: tensor_core::Result<Tensor>, dt: DType, what: &str) {
    if let Some(w) = composite_ok(want, what) {
        assert_eq!(got.dims(), w.dims(), "{what}: shape");
        assert_eq!(got.dtype(), w.dtype(), "{what}: dtype");
        // Both round once or more to dt; allow two roundings' worth.
        close(
            &vals(got),
            &vals(&w),
            2.0 * tol(dt),
            &format!("{what} vs composite"),
        );
    }
}

// ---- host references (f64) ----------------------------------------------------------------------

fn rows_of(v: &[f64], d: usize) -> impl Iterator<Item = &[f64]> {
    v.chunks(d.max(1))
}

fn ref_softmax(x: &[f64], d: usize, log: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in rows_of(x, d) {
        let m = row.iter().fold(
            f64::NEG_INFINITY,
            |m, &v| if v > m || v.is_nan() { v } else { m },
        );
        if log {
            let shift = if m.is_finite() { m } else { 0.0 };
            let s: f64 = row.iter().map(|&v| (v - shift).exp()).sum();
            let lse = s.ln() + shift;
            out.extend(row.iter().map(|&v| v - lse));
        } else {
            let s: f64 = row.iter().map(|&v| (v - m).exp()).sum();
            out.extend(row.iter().map(|&v| (v - m).exp() / s));
        }
    }
    out
}

fn ref_layer_norm(x: &[f64], d: usize, w: Option<&[f64]>, b: Option<&[f64]>, eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in rows_of(x, d) {
        let n = d as f64;
        let mean = row.iter().sum::<f64>() / n;
        let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let r = 1.0 / (var + eps).sqrt();
        for (j, &v) in row.iter().enumerate() {
            let mut y = (v - mean) * r;
            if let Some(w) = w {
                y *= w[j];
            }
            if let Some(b) = b {
                y += b[j];
            }
            out.push(y);
        }
    }
    out
}

fn ref_rms_norm(x: &[f64], d: usize, w: Option<&[f64]>, eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in rows_of(x, d) {
        let ms = row.iter().map(|&v| v * v).sum::<f64>() / d as f64;
        let r = 1.0 / (ms + eps).sqrt();
        for (j, &v) in row.iter().enumerate() {
            out.push(v * r * w.map_or(1.0, |w| w[j]));
        }
    }
    out
}

fn ref_rms_norm_bwd(
    x: &[f64],
    g: &[f64],
    d: usize,
    w: Option<&[f64]>,
    eps: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut gx = Vec::with_capacity(x.len());
    let mut gw = vec![0.0; d];
    for (row, gr) in x.chunks(d).zip(g.chunks(d)) {
        let n = d as f64;
        let r = 1.0 / (row.iter().map(|&v| v * v).sum::<f64>() / n + eps).sqrt();
        let h: Vec<f64> = (0..d).map(|j| gr[j] * w.map_or(1.0, |w| w[j])).collect();
        let dot = (0..d).map(|j| h[j] * row[j] * r).sum::<f64>() / n;
        for j in 0..d {
            gx.push(r * (h[j] - row[j] * r * dot));
            gw[j] += gr[j] * row[j] * r;
        }
    }
    (gx, gw)
}

fn sigmoid(a: f64) -> f64 {
    1.0 / (1.0 + (-a).exp())
}

/// Per-row losses and gradient rows (`None` for the gradient when `g` is None).
fn ref_ce(
    x: &[f64],
    t: &[i64],
    c: usize,
    g: Option<&[f64]>,
    p: &CrossEntropyParams,
) -> (Vec<f64>, Vec<f64>) {
    let eps = p.label_smoothing;
    let mut loss = vec![];
    let mut grad = vec![];
    for (i, row) in x.chunks(c).enumerate() {
        if Some(t[i]) == p.ignore_index {
            loss.push(0.0);
            grad.extend(std::iter::repeat_n(0.0, c));
            continue;
        }
        let ti = t[i] as usize;
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = row.iter().map(|&v| (v - m).exp()).sum::<f64>().ln() + m;
        let mut l = lse - (1.0 - eps) * row[ti];
        if eps > 0.0 {
            l -= eps * row.iter().sum::<f64>() / c as f64;
        }
        loss.push(l);
        if let Some(g) = g {
            for (j, &v) in row.iter().enumerate() {
                let tgt = if j == ti { 1.0 - eps } else { 0.0 } + eps / c as f64;
                grad.push(g[i] * ((v - lse).exp() - tgt));
            }
        }
    }
    (loss, grad)
}

fn ref_rope(x: &[f64], dims: [usize; 4], cos: &[f64], sin: &[f64], interleaved: bool) -> Vec<f64> {
    let (l, d) = (dims[2], dims[3]);
    let h = d / 2;
    let mut out = vec![0.0; x.len()];
    for (row, (xr, yr)) in x.chunks(d).zip(out.chunks_mut(d)).enumerate() {
        let pos = row % l;
        for i in 0..h {
            let (c, s) = (cos[pos * h + i], sin[pos * h + i]);
            let (i1, i2) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + h)
            };
            yr[i1] = xr[i1] * c - xr[i2] * s;
            yr[i2] = xr[i2] * c + xr[i1] * s;
        }
    }
    out
}

// ---- softmax family -------------------------------------------------------------------------------

#[test]
fn softmax_and_log_softmax() {
    let Some(d) = dev() else { return };
    let be = d.backend();
    for dt in FLOATS {
        let shapes: Vec<Vec<usize>> = vec![
            vec![3, 5, 37],
            vec![4, 1024],
            vec![3, 1500],
            vec![2, 5000],
            vec![1, 20000],
            vec![1, 1],
            vec![2, 0, 3],
        ];
        let mut inputs: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| rnd(&d, s, dt, i as u64, 4.0))
            .collect();
        inputs.push(strided(&d, &[2, 7, 19], dt, 20, 4.0));
        inputs.push(strided(&d, &[3, 2000], dt, 21, 4.0));
        inputs.push(rnd(&d, &[4, 50], dt, 22, 4.0).narrow(1, 3, 40).unwrap());
        for x in &inputs {
            let dl = x.dims()[x.rank() - 1];
            let xv = vals(x);
            let what = format!("softmax {dt} {:?}", x.dims());
            let y = be.softmax_last_dim(x).unwrap();
            assert_eq!(y.dims(), x.dims());
            assert_eq!(y.dtype(), dt);
            close_t(&y, &ref_softmax(&xv, dl, false), tol(dt), &what);
            vs_composite(&y, composite::softmax_last_dim(x), dt, &what);
            let what = format!("log_softmax {dt} {:?}", x.dims());
            let y = be.log_softmax_last_dim(x).unwrap();
            close_t(&y, &ref_softmax(&xv, dl, true), tol(dt), &what);
            vs_composite(&y, composite::log_softmax_last_dim(x), dt, &what);
        }
    }
}

#[test]
fn softmax_of_infinite_and_nan_rows() {
    let Some(d) = dev() else { return };
    let be = d.backend();
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    let v = [
        -inf, -inf, -inf, // all −inf
        0.5, -inf, 2.0, // some −inf
        1.0, inf, 2.0, // +inf
        1.0, nan, 2.0, // NaN
        1.0, 2.0, 3.0,
    ];
    for dt in [DType::F32, DType::F64] {
        let x = Tensor::from_f64s(&v, (5, 3), dt, &d).unwrap();
        close_t(
            &be.softmax_last_dim(&x).unwrap(),
            &ref_softmax(&v, 3, false),
            tol(dt),
            "softmax inf",
        );
        close_t(
            &be.log_softmax_last_dim(&x).unwrap(),
            &ref_softmax(&v, 3, true),
            tol(dt),
            "log_softmax inf",
        );
    }
}

// ---- norms ------------------------------------------------------------------------------------------

#[test]
fn layer_norm_and_rms_norm() {
    let Some(d) = dev() else { return };
    let be = d.backend();
    for dt in FLOATS {
        let mut cases: Vec<(Tensor, Tensor, Tensor)> = vec![];
        for (dims, seed) in [
            (vec![3, 4, 33], 3u64),
            (vec![2, 1000], 4),
            (vec![5, 1], 5),
            (vec![2, 3000], 6),
            (vec![2, 768], 7),
        ] {
            let dl = *dims.last().unwrap();
            let n: usize = dims.iter().product();
            let v: Vec<f64> = noise(n, seed).iter().map(|v| 2.0 * v + 0.3).collect();
            let x = Tensor::from_f64s(&v, dims.clone(), dt, &d).unwrap();
            cases.push((
                x,
                rnd(&d, &[dl], dt, seed + 10, 1.0),
                rnd(&d, &[dl], dt, seed + 20, 1.0),
            ));
        }
        // Strided input, and strided weight/bias views.
        let x = strided(&d, &[3, 6, 21], dt, 8, 2.0);
        let w = rnd(&d, &[21, 2], dt, 9, 1.0)
            .narrow(1, 0, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let b = rnd(&d, &[2, 21], dt, 10, 1.0)
            .narrow(0, 1, 1)
            .unwrap()
            .squeeze(0)
            .unwrap();
        assert!(!w.is_contiguous());
        cases.push((x, w, b));
        for (x, w, b) in &cases {
            let dl = x.dims()[x.rank() - 1];
            let (xv, wv, bv) = (vals(x), vals(w), vals(b));
            for (wo, bo) in [
                (None, None),
                (Some(w), None),
                (None, Some(b)),
                (Some(w), Some(b)),
            ] {
                let what = format!(
                    "layer_norm {dt} {:?} w {} b {}",
                    x.dims(),
                    wo.is_some(),
                    bo.is_some()
                );
                let y = be.layer_norm(x, wo, bo, 1e-5).unwrap();
                let want = ref_layer_norm(
                    &xv,
                    dl,
                    wo.map(|_| wv.as_slice()),
                    bo.map(|_| bv.as_slice()),
                    1e-5,
                );
                close_t(&y, &want, tol(dt), &what);
                vs_composite(&y, composite::layer_norm(x, wo, bo, 1e-5), dt, &what);
            }
            for wo in [None, Some(w)] {
                let what = format!("rms_norm {dt} {:?} w {}", x.dims(), wo.is_some());
                let y = be.rms_norm(x, wo, 1e-6).unwrap();
                close_t(
                    &y,
                    &ref_rms_norm(&xv, dl, wo.map(|_| wv.as_slice()), 1e-6),
                    tol(dt),
                    &what,
                );
                vs_composite(&y, composite::rms_norm(x, wo, 1e-6), dt, &what);
            }
        }
    }
}

#[test]
fn rms_norm_backward() {
    let Some(d) = dev() else { return };
    let be = d.backend();
    for dt in FLOATS {
        for dims in [
            vec![3, 37],
            vec![700, 64],
            vec![2, 3, 5],
            vec![3, 3000],
            vec![1000, 768],
        ] {
            let dl = dims[dims.len() - 1];
            let x = rnd(&d, &dims, dt, 4, 3.0);
            let g = rnd(&d, &dims, dt, 5, 1.0);
            let w = rnd(&d, &[dl], dt, 6, 2.0);
            let gt = g.t().unwrap().contiguous().unwrap().t().unwrap();
            let (xv, gv, wv) = (vals(&x), vals(&g), vals(&w));
            for (wo, gg) in [(Some(&w), &g), (None, &g), (Some(&w), &gt)] {
                let what = format!("rms_norm_backward {dt} {dims:?} w {}", wo.is_some());
                let (gx, gw) = be.rms_norm_backward(&x, wo, gg, 1e-5).unwrap();
                let (rx, rw) = ref_rms_norm_bwd(&xv, &gv, dl, wo.map(|_| wv.as_slice()), 1e-5);
                assert_eq!(gx.dims(), x.dims());
                close_t(&gx, &rx, tol(dt), &format!("{what} ∂x"));
                assert_eq!(
                    gw.is_some(),
                    wo.is_some(),
                    "{what}: weight gradient presence"
                );
                if let Some(gw) = &gw {
                    assert_eq!(gw.dims(), [dl]);
                    // A sum over up to 1000 rows: relative to the sum of magnitudes.
                    let scale = (dims.iter().product::<usize>() / dl) as f64;
                    let got = vals(gw);
                    for (i, (a, b)) in got.iter().zip(&rw).enumerate() {
                        let err = (a - b).abs() / (1.0 + b.abs() + scale.sqrt());
                        assert!(err <= tol(dt), "{what} ∂w[{i}]: {a} vs {b}");
                    }
                }
                if let Some((cx, cw)) =
                    composite_ok(composite::rms_norm_backward(&x, wo, gg, 1e-5), &what)
                {
                    close(
                        &vals(&gx),
                        &vals(&cx),
                        2.0 * tol(dt),
                        &format!("{what} ∂x vs composite"),
                    );
                    if let (Some(a), Some(b)) = (&gw, &cw) {
                        let (a, b) = (vals(a), vals(b));
                        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                            let err = (a - b).abs() / (1.0 + b.abs() + 10.0);
                            assert!(
                                err <= 2.0 * tol(dt),
                                "{what} ∂w[{i}] vs composite: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }
}

fn ref_layer_norm_bwd(
    x: &[f64],
    g: &[f64],
    d: usize,
    w: Option<&[f64]>,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut gx = Vec::with_capacity(x.len());
    let (mut gw, mut gb) = (vec![0.0; d], vec![0.0; d]);
    let n = d as f64;
    for (row, gr) in x.chunks(d).zip(g.chunks(d)) {
        let mean = row.iter().sum::<f64>() / n;
        let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let r = 1.0 / (var + eps).sqrt();
        let xh: Vec<f64> = row.iter().map(|&v| (v - mean) * r).collect();
        let h: Vec<f64> = (0..d).map(|j| gr[j] * w.map_or(1.0, |w| w[j])).collect();
        let mh = h.iter().sum::<f64>() / n;
        let mhx = (0..d).map(|j| h[j] * xh[j]).sum::<f64>() / n;
        for j in 0..d {
            gx.push(r * (h[j] - mh - xh[j] * mhx));
            gw[j] += gr[j] * xh[j];
            gb[j] += gr[j];
        }
    }
    (gx, gw, gb)
}

#[test]
fn layer_norm_backward() {
    let Some(d) = dev() else { return };
    let be = d.backend();
    for dt in FLOATS {
        for dims in [
            vec![3, 37],
            vec![700, 64],
            vec![2, 3, 5],
            vec![3, 3000],
            vec![1000, 768],
            vec![0, 8],
        ] {
            let dl = dims[dims.len() - 1];
            let x = rnd(&d, &dims, dt, 14, 3.0).affine(1.0, 0.5).unwrap();
            let g = rnd(&d, &dims, dt, 15, 1.0);
            let w = rnd(&d, &[dl], dt, 16, 2.0);
            let (xv, gv, wv) = (vals(&x), vals(&g), vals(&w));
            for (wo, has_b) in [
                (Some(&w), true),
                (None, false),
                (Some(&w), false),
                (None, true),
            ] {
                let what = format!(
                    "layer_norm_backward {dt} {dims:?} w {} b {has_b}",
                    wo.is_some()
                );
                let (gx, gw, gb) = be.layer_norm_backward(&x, wo, has_b, &g, 1e-5).unwrap();
                let (rx, rw, rb) =
                    ref_layer_norm_bwd(&xv, &gv, dl, wo.map(|_| wv.as_slice()), 1e-5);
                assert_eq!(gx.dims(), x.dims());
                close_t(&gx, &rx, 2.0 * tol(dt), &format!("{what} ∂x"));
                assert_eq!(gw.is_some(), wo.is_some(), "{what}: ∂w presence");
                assert_eq!(gb.is_some(), has_b, "{what}: ∂b presence");
                let scale = (dims.iter().product::<usize>() / dl.max(1)) as f64;
                for (name, got, want) in [("∂w", &gw, &rw), ("∂b", &gb, &rb)] {
                    if let Some(t) = got {
                        assert_eq!(t.dims(), [dl], "{what} {name} shape");
                        for (i, (a, b)) in vals(t).iter().zip(want).enumerate() {
                            let err = (a - b).abs() / (1.0 + b.abs() + scale.sqrt());
                            assert!(err <= tol(dt), "{what} {name}[{i}]: {a} vs {b}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn activation_backward_matches_the_derivative() {
    let Some(d) = dev() else { return };
    let be = d.backend();
    let gelu = |x: f64| {
        // Φ(x) + x·φ(x), with Φ from the f64 erf of the composite (libm).
        let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        cdf + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
    };
    let gelu_tanh = |x: f64| {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        let t = (k * (x + 0.044715 * x * x * x)).tanh();
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
    };
    let silu = |x: f64| sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x)));
    let ops: [(UnaryOp, &dyn Fn(f64) -> f64); 3] = [
        (UnaryOp::Gelu, &gelu),
        (UnaryOp::GeluTanh, &gelu_tanh),
        (UnaryOp::Silu, &silu),
    ];
    for dt in FLOATS {
        for dims in [vec![1000, 77], vec![5], vec![0, 3]] {
            let x = rnd(&d, &dims, dt, 21, 8.0);
            let g = rnd(&d, &dims, dt, 22, 2.0);
            // A transposed gradient exercises the strided path.
            let mut grads = vec![g.clone()];
            if dims.len() == 2 {
                grads.push(g.t().unwrap().contiguous().unwrap().t().unwrap());
            }
            for (op, f) in ops {
                for gg in &grads {
                    let what = format!("unary_backward {op:?} {dt} {dims:?}");
                    let got = be.unary_backward(op, &x, gg).unwrap();
                    assert_eq!(got.dtype(), dt, "{what}: dtype");
                    let want: Vec<f64> = vals(&x)
                        .iter()
                        .zip(vals(gg))
                        .map(|(&x, g)| g * f(x))
                        .collect();
                    close_t(&got, &round_to(&want, dt), 2.0 * tol(dt), &what);
                }
            }
        }
    }
}

// ---- SwiGLU -----------------------------------------------------------------------------------------

#[test]
fn silu_mul_forward_and_backward() {
    let Some(d) = dev() else { return };
    let be = d.backend();
    for dt in FLOATS {
        for dims in [vec![3, 37], vec![5, 4000], vec![0, 3]] {
            let a = rnd(&d, &dims, dt, 1, 6.0);
            let b = rnd(&d, &dims, dt, 2, 2.0);
            let g = rnd(&d, &dims, dt, 3, 1.0);
            let a_s = if dims[0] > 0 {
                strided(&d, &dims, dt, 4, 6.0)
            } else {
                a.clone()
            };
            for a in [&a, &a_s] {
                let (av, bv, gv) = (vals(a), vals(&b), vals(&g));
                let what = format!("silu_mul {dt} {dims:?} contiguous {}", a.is_contiguous());
                let y = be.silu_mul(a, &b).unwrap();
                let want: Vec<f64> = av
                    .iter()
                    .zip(&bv)
                    .map(|(&a, &b)| a * sigmoid(a) * b)
                    .collect();
                close_t(&y, &want, tol(dt), &what);
                vs_composite(&y, composite::silu_mul(a, &b), dt, &what);
                let (ga, gb) = be.silu_mul_backward(a, &b, &g).unwrap();
                let mut wa = vec![];
                let mut wb = vec![];
                for i in 0..av.len() {
                    let s = sigmoid(av[i]);
                    wb.push(gv[i] * av[i] * s);
                    wa.push(gv[i] * bv[i] * s * (1.0 + av[i] * (1.0 - s)));
                }
                close_t(&ga, &wa, tol(dt), &format!("{what} ∂gate"));
                close_t(&gb, &wb, tol(dt), &format!("{what} ∂up"));
                if let Some((ca, cb)) = composite_ok(composite::silu_mul_backward(a, &b, &g), &what)
                {
                    // The composite rounds after every op in 16-bit dtypes.
                    close(
                        &vals(&ga),
                        &vals(&ca),
                        3.0 * tol(dt),
                        &format!("{what} ∂gate vs composite"),
                    );
                    close(
                        &vals(&gb),
                        &vals(&cb),
                        3.0 * tol(dt),
                        &format!("{what} ∂up vs composite"),
                    );
                }
            }
        }
    }
}

// ---- cross-entropy ------------------------------------------------------------------------------------

#[test]
fn cross_entropy_forward_and_backward() {
    let Some(d) = dev() else { return };
    let _flag = flag_lock();
    let be = d.backend();
    for dt in FLOATS {
        for (n, c) in [(7usize, 5usize), (33, 4096), (3, 50257), (4, 768), (1, 1)] {
            let full = rnd(&d, &[n + 1, c + 3], dt, 7, 8.0);
            let views = [
                rnd(&d, &[n, c], dt, 7, 8.0),
                // Offset rows with a row stride ≠ C (scalar path).
                full.narrow(0, 1, n).unwrap().narrow(1, 2, c).unwrap(),
                // Transposed storage (inner stride ≠ 1).
                rnd(&d, &[c, n], dt, 8, 8.0).t().unwrap(),
            ];
            let t: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % c as i64).collect();
            let mut t2 = t.clone();
            t2[0] = -100;
            let gs = rnd(&d, &[n], dt, 9, 1.0);
            let gb = Tensor::full(0.75, 1, dt, &d)
                .unwrap()
                .broadcast_as(n)
                .unwrap();
            for x in &views {
                let xv = vals(x);
                for (tv, eps) in [(&t, 0.0), (&t2, 0.1), (&t, 0.25)] {
                    let tt = Tensor::from_vec(tv.clone(), n, &d).unwrap();
                    let p = CrossEntropyParams {
                        ignore_index: Some(-100),
                        label_smoothing: eps,
                    };
                    let what = format!(
                        "cross_entropy {dt} [{n}, {c}] contiguous {} eps {eps}",
                        x.is_contiguous()
                    );
                    let loss = be.cross_entropy(x, &tt, &p).unwrap();
                    assert_eq!(loss.dims(), [n]);
                    assert_eq!(loss.dtype(), dt);
                    let (rl, _) = ref_ce(&xv, tv, c, None, &p);
                    close_t(&loss, &rl, tol(dt), &what);
                    vs_composite(&loss, composite::cross_entropy(x, &tt, &p), dt, &what);
                    for g in [&gs, &gb] {
                        let gv = vals(g);
                        let gx = be.cross_entropy_backward(x, &tt, g, &p).unwrap();
                        assert_eq!(gx.dims(), [n, c]);
                        let (_, rg) = ref_ce(&xv, tv, c, Some(&gv), &p);
                        close_t(&gx, &rg, tol(dt), &format!("{what} grad"));
                        vs_composite(
                            &gx,
                            composite::cross_entropy_backward(x, &tt, g, &p),
                            dt,
                            &format!("{what} grad"),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn cross_entropy_out_of_range_target_is_an_error() {
    let Some(d) = dev() else { return };
    let _flag = flag_lock();
    let be = d.backend();
    let x = rnd(&d, &[2, 3], DType::F32, 9, 1.0);
    let g = rnd(&d, &[2], DType::F32, 10, 1.0);
    let p = CrossEntropyParams::default();
    for bad in [vec![0i64, 3], vec![0i64, -1]] {
        let t = Tensor::from_vec(bad.clone(), 2, &d).unwrap();
        let e = be.cross_entropy(&x, &t, &p).unwrap_err().to_string();
        let want = format!("target class {} out of range for 3 classes (row 1)", bad[1]);
        assert!(e.contains(&want), "{e}");
        let e = be
            .cross_entropy_backward(&x, &t, &g, &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&want), "{e}");
    }
    // -100 is out of range unless it is the ignore index.
    let t = Tensor::from_vec(vec![-100i64, 2], 2, &d).unwrap();
    assert!(be.cross_entropy(&x, &t, &p).is_err());
    let p = CrossEntropyParams {
        ignore_index: Some(-100),
        ..Default::default()
    };
    let l = vals(&be.cross_entropy(&x, &t, &p).unwrap());
    assert_eq!(l[0], 0.0);
    // The error flag was reset: the device still works.
    let ok = Tensor::from_vec(vec![0i64, 2], 2, &d).unwrap();
    be.cross_entropy(&x, &ok, &p).unwrap();
}

// ---- rotary embeddings ---------------------------------------------------------------------------------

#[test]
fn rope_both_layouts() {
    let Some(d) = dev() else { return };
    let be = d.backend();
    for dt in FLOATS {
        for interleaved in [false, true] {
            let mut cases = vec![];
            for (b, h, l, dd) in [(2, 3, 5, 8), (1, 2, 7, 64), (1, 1, 1, 2)] {
                cases.push((
                    rnd(&d, &[b, h, l, dd], dt, 11, 1.0),
                    rnd(&d, &[l, dd / 2], dt, 12, 1.0),
                    rnd(&d, &[l, dd / 2], dt, 13, 1.0),
                ));
            }
            // [B, L, H, D] storage viewed as [B, H, L, D], and strided cos.
            cases.push((
                rnd(&d, &[2, 6, 3, 16], dt, 14, 1.0)
                    .transpose(1, 2)
                    .unwrap(),
                rnd(&d, &[8, 6], dt, 15, 1.0).t().unwrap(),
                rnd(&d, &[6, 8], dt, 16, 1.0),
            ));
            cases.push((
                strided(&d, &[1, 2, 4, 8], dt, 17, 1.0),
                rnd(&d, &[4, 4], dt, 18, 1.0),
                rnd(&d, &[4, 4], dt, 19, 1.0),
            ));
            for (x, cos, sin) in &cases {
                let dims: [usize; 4] = x.dims().try_into().unwrap();
                let what = format!("rope {dt} {dims:?} interleaved {interleaved}");
                let y = be.rope(x, cos, sin, interleaved).unwrap();
                assert_eq!(y.dims(), x.dims());
                let want = ref_rope(&vals(x), dims, &vals(cos), &vals(sin), interleaved);
                close_t(&y, &want, tol(dt), &what);
                vs_composite(&y, composite::rope(x, cos, sin, interleaved), dt, &what);
            }
        }
    }
}

// ---- optimizer updates ------------------------------------------------------------------------------------

/// Every rule with the option combinations worth telling apart.
fn rules() -> Vec<OptimRule> {
    let mut out = vec![];
    for maximize in [false, true] {
        for wd in [0.0, 0.05] {
            for (momentum, dampening, nesterov) in
                [(0.0, 0.0, false), (0.9, 0.1, false), (0.9, 0.0, true)]
            {
                out.push(OptimRule::Sgd {
                    lr: 0.1,
                    momentum,
                    dampening,
                    nesterov,
                    weight_decay: wd,
                    maximize,
                });
            }
            for decoupled in [false, true] {
                for amsgrad in [false, true] {
                    out.push(OptimRule::Adam {
                        lr: 0.01,
                        beta1: 0.9,
                        beta2: 0.999,
                        eps: 1e-8,
                        weight_decay: wd,
                        decoupled,
                        amsgrad,
                        maximize,
                    });
                }
            }
            for momentum in [0.0, 0.5] {
                for centered in [false, true] {
                    out.push(OptimRule::RmsProp {
                        lr: 0.01,
                        alpha: 0.99,
                        eps: 1e-8,
                        weight_decay: wd,
                        momentum,
                        centered,
                        maximize,
                    });
                }
            }
            out.push(OptimRule::Adagrad {
                lr: 0.1,
                lr_decay: 0.01,
                weight_decay: wd,
                eps: 1e-10,
                maximize,
            });
        }
    }
    for wd in [0.0, 0.1] {
        out.push(OptimRule::Lion {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: wd,
        });
    }
    out
}

fn lerp(a: f64, b: f64, w: f64) -> f64 {
    a + w * (b - a)
}

/// One step of `rule` in f64 on host vectors (state in the rule's order).
fn ref_step(rule: &OptimRule, step: u64, scale: f64, p: &mut [f64], g: &[f64], s: &mut [Vec<f64>]) {
    let sign = |x: f64| {
        if x > 0.0 {
            1.0
        } else if x < 0.0 {
            -1.0
        } else {
            x
        }
    };
    for i in 0..p.len() {
        let mut d = g[i] * scale;
        match *rule {
            OptimRule::Sgd {
                lr,
                momentum,
                dampening,
                nesterov,
                weight_decay,
                maximize,
            } => {
                if maximize {
                    d = -d;
                }
                d += weight_decay * p[i];
                if momentum != 0.0 {
                    let buf = if step == 1 {
                        d
                    } else {
                        s[0][i] * momentum + (1.0 - dampening) * d
                    };
                    s[0][i] = buf;
                    d = if nesterov { d + momentum * buf } else { buf };
                }
                p[i] -= lr * d;
            }
            OptimRule::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
                amsgrad,
                maximize,
            } => {
                if maximize {
                    d = -d;
                }
                if decoupled {
                    p[i] *= 1.0 - lr * weight_decay;
                } else {
                    d += weight_decay * p[i];
                }
                let m = lerp(s[0][i], d, 1.0 - beta1);
                s[0][i] = m;
                let mut v = s[1][i] * beta2 + (1.0 - beta2) * d * d;
                s[1][i] = v;
                if amsgrad {
                    v = v.max(s[2][i]);
                    s[2][i] = v;
                }
                let st = step as f64;
                let bc2 = (1.0 - beta2.powf(st)).sqrt();
                let step_size = lr / (1.0 - beta1.powf(st));
                p[i] -= step_size * m / (v.sqrt() / bc2 + eps);
            }
            OptimRule::RmsProp {
                lr,
                alpha,
                eps,
                weight_decay,
                momentum,
                centered,
                maximize,
            } => {
                if maximize {
                    d = -d;
                }
                d += weight_decay * p[i];
                let sq = s[0][i] * alpha + (1.0 - alpha) * d * d;
                s[0][i] = sq;
                let avg = if centered {
                    let k = s.len() - 1;
                    let ga = lerp(s[k][i], d, 1.0 - alpha);
                    s[k][i] = ga;
                    (sq - ga * ga).sqrt()
                } else {
                    sq.sqrt()
                } + eps;
                if momentum > 0.0 {
                    let b = s[1][i] * momentum + d / avg;
                    s[1][i] = b;
                    p[i] -= lr * b;
                } else {
                    p[i] -= lr * d / avg;
                }
            }
            OptimRule::Adagrad {
                lr,
                lr_decay,
                weight_decay,
                eps,
                maximize,
            } => {
                if maximize {
                    d = -d;
                }
                d += weight_decay * p[i];
                let clr = lr / (1.0 + (step - 1) as f64 * lr_decay);
                let sum = s[0][i] + d * d;
                s[0][i] = sum;
                p[i] -= clr * d / (sum.sqrt() + eps);
            }
            OptimRule::Lion {
                lr,
                beta1,
                beta2,
                weight_decay,
            } => {
                let m = s[0][i];
                let c = m * beta1 + (1.0 - beta1) * d;
                p[i] = p[i] * (1.0 - lr * weight_decay) - lr * sign(c);
                s[0][i] = m * beta2 + (1.0 - beta2) * d;
            }
        }
    }
}

fn initial_state(rule: &OptimRule, n: usize) -> Vec<Vec<f64>> {
    rule.state_names()
        .iter()
        .map(|_| match rule {
            OptimRule::Adagrad { .. } => vec![0.1; n],
            _ => vec![0.0; n],
        })
        .collect()
}

#[test]
fn optimizer_updates_match_references() {
    let Some(d) = dev() else { return };
    let n = 37 * 5;
    for dt in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        // Tolerance per step on values of magnitude ≲ 2.
        let tl = match dt {
            DType::F64 => 1e-12,
            DType::F32 => 2e-6,
            _ => 2.0 * tol(dt),
        };
        for rule in rules() {
            let mut p_host = round_to(&noise(n, 1), dt);
            let mut s_host = initial_state(&rule, n);
            // The parameter is a contiguous view at an offset of a larger buffer.
            let big = Tensor::from_f64s(&[vec![9.0; 37], p_host.clone()].concat(), (6, 37), dt, &d)
                .unwrap();
            let param = big.narrow(0, 1, 5).unwrap();
            assert!(param.is_contiguous());
            let state: Vec<Tensor> = s_host
                .iter()
                .map(|v| Tensor::from_f64s(v, (5, 37), dt, &d).unwrap())
                .collect();
            // The composite's copies, when the composite runs on this device.
            let p_c = param.copy().unwrap();
            let s_c: Vec<Tensor> = state.iter().map(|t| t.copy().unwrap()).collect();
            // In f16 the composite, which rounds to 16 bits after every op, is no reference:
            // `grad²` underflows into f16's subnormals (or overflows) where the fused kernel
            // computes in f32, so its state drifts by tens of percent. The f64 reference
            // above is the strict check for every dtype.
            let mut composite_on = dt != DType::F16;
            for step in 1..=3u64 {
                let what = format!("{} {dt} step {step} {rule:?}", rule.name());
                let scale = if step == 2 { 0.5 } else { 1.0 };
                // Step 3's gradient is a transposed view.
                let g = if step == 3 {
                    rnd(&d, &[37, 5], dt, 100 + step, 1.0).t().unwrap()
                } else {
                    rnd(&d, &[5, 37], dt, 100 + step, 1.0)
                };
                let gv = vals(&g);
                optim::update(&rule, step, scale, &param, &g, &state).unwrap();
                ref_step(&rule, step, scale, &mut p_host, &gv, &mut s_host);
                p_host = round_to(&p_host, dt);
                for s in s_host.iter_mut() {
                    *s = round_to(s, dt);
                }
                close(&vals(&param), &p_host, tl, &format!("{what}: param"));
                for (k, (t, want)) in state.iter().zip(&s_host).enumerate() {
                    close(
                        &vals(t),
                        want,
                        tl,
                        &format!("{what}: state {}", rule.state_names()[k]),
                    );
                }
                if composite_on {
                    match composite_ok(
                        optim::update_composite(&rule, step, scale, &p_c, &g, &s_c),
                        &what,
                    ) {
                        Some(()) => {
                            // The composite rounds to 16 bits after every op (the fused
                            // kernel once), so in bf16 the two drift apart by tens of ulps
                            // over a few steps.
                            let tc = if dt == DType::BF16 {
                                5.0 * tl
                            } else {
                                2.0 * tl
                            };
                            close(
                                &vals(&param),
                                &vals(&p_c),
                                tc,
                                &format!("{what}: param vs composite"),
                            );
                            for (a, b) in state.iter().zip(&s_c) {
                                close(
                                    &vals(a),
                                    &vals(b),
                                    tc,
                                    &format!("{what}: state vs composite"),
                                );
                            }
                        }
                        None => composite_on = false,
                    }
                }
                // Rows outside the view are untouched.
                assert_eq!(
                    &vals(&big)[..37],
                    &[9.0; 37][..],
                    "{what}: wrote outside the view"
                );
            }
        }
    }
}

#[test]
fn optimizer_falls_back_for_non_contiguous_params() {
    let Some(d) = dev() else { return };
    let rule = OptimRule::Sgd {
        lr: 0.1,
        momentum: 0.0,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 0.0,
        maximize: false,
    };
    let p = rnd(&d, &[4, 3], DType::F32, 1, 1.0);
    let pt = p.t().unwrap();
    let g = rnd(&d, &[3, 4], DType::F32, 2, 1.0);
    let (pv, gv) = (vals(&pt), vals(&g));
    if composite_ok(
        optim::update(&rule, 1, 1.0, &pt, &g, &[]),
        "sgd on a transposed parameter",
    )
    .is_some()
    {
        let want: Vec<f64> = pv.iter().zip(&gv).map(|(p, g)| p - 0.1 * g).collect();
        close(
            &vals(&pt),
            &round_to(&want, DType::F32),
            1e-6,
            "sgd transposed",
        );
    }
}

// ---- timings (run by hand: `cargo test --release -p tensor-cuda --test fused -- --ignored --nocapture`)

/// Median wall time of `f` over `reps` runs (after one warm-up), device work included.
fn time_it(d: &Device, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    d.synchronize().unwrap();
    let mut ts = vec![];
    for _ in 0..reps {
        let t0 = std::time::Instant::now();
        f();
        d.synchronize().unwrap();
        ts.push(t0.elapsed().as_secs_f64());
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    ts[reps / 2]
}

/// A large `[rows, cols]` tensor (rows a multiple of 64) tiled from 64 random rows.
fn big(d: &Device, rows: usize, cols: usize, dt: DType, seed: u64, scale: f64) -> Tensor {
    rnd(d, &[1, 64, cols], dt, seed, scale)
        .broadcast_as([rows / 64, 64, cols])
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

#[test]
#[ignore]
fn bench_fused_kernels() {
    let Some(d) = dev() else { return };
    let _flag = flag_lock();
    let be = d.backend();
    let gb = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
    for dt in [DType::BF16, DType::F32] {
        let (n, c) = (8192usize, 50257usize);
        let x = big(&d, n, c, dt, 1, 4.0);
        let t: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % c as i64).collect();
        let t = Tensor::from_vec(t, n, &d).unwrap();
        let g = Tensor::full(1.0 / n as f64, n, dt, &d).unwrap();
        let p = CrossEntropyParams {
            ignore_index: Some(-100),
            label_smoothing: 0.0,
        };
        let bytes = n * c * dt.size_in_bytes();
        let s = time_it(&d, 5, || {
            be.cross_entropy(&x, &t, &p).unwrap();
        });
        println!(
            "cross_entropy fwd {dt} [{n}, {c}]: {:.3} ms, {:.0} GB/s",
            s * 1e3,
            gb(bytes, s)
        );
        let s = time_it(&d, 5, || {
            be.cross_entropy_backward(&x, &t, &g, &p).unwrap();
        });
        println!(
            "cross_entropy bwd {dt} [{n}, {c}]: {:.3} ms, {:.0} GB/s (read + write)",
            s * 1e3,
            gb(2 * bytes, s)
        );
        for (rows, dd) in [(8192usize, 768usize), (8192, 3072), (1024, 50257)] {
            let x = big(&d, rows, dd, dt, 2, 2.0);
            let w = Tensor::ones(dd, dt, &d).unwrap();
            let bytes = 2 * rows * dd * dt.size_in_bytes();
            let s = time_it(&d, 10, || {
                be.layer_norm(&x, Some(&w), Some(&w), 1e-5).unwrap();
            });
            println!(
                "layer_norm {dt} [{rows}, {dd}]: {:.3} ms, {:.0} GB/s",
                s * 1e3,
                gb(bytes, s)
            );
            let s = time_it(&d, 10, || {
                be.softmax_last_dim(&x).unwrap();
            });
            println!(
                "softmax {dt} [{rows}, {dd}]: {:.3} ms, {:.0} GB/s",
                s * 1e3,
                gb(bytes, s)
            );
        }
        let np = 123_994_112usize; // 64·64·30272, about GPT-2 small
        let p = big(&d, np / 64, 64, dt, 3, 1.0);
        let gr = big(&d, np / 64, 64, dt, 4, 1.0);
        let st = [
            Tensor::zeros((np / 64, 64), dt, &d).unwrap(),
            Tensor::zeros((np / 64, 64), dt, &d).unwrap(),
        ];
        let rule = OptimRule::Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            decoupled: true,
            amsgrad: false,
            maximize: false,
        };
        let mut step = 0;
        let s = time_it(&d, 5, || {
            step += 1;
            optim::update(&rule, step, 0.5, &p, &gr, &st).unwrap();
        });
        let bytes = 7 * np * dt.size_in_bytes();
        println!(
            "adamw {dt} {np} params: {:.3} ms, {:.0} GB/s",
            s * 1e3,
            gb(bytes, s)
        );
    }
}
