//! Flash attention on the GPU (forward and backward) against a naive f64 softmax attention
//! computed here on the host. Skipped without a CUDA device.

use tensor_core::{AttentionParams, DType, Device, Tensor};

fn gpu() -> Option<Device> {
    match tensor_cuda::device(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Deterministic values in [-amp, amp).
fn noise(n: usize, seed: u64, amp: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(0x2545_f491_4f6c_dd1d);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * amp
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Case {
    b: usize,
    hq: usize,
    hkv: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
    causal: bool,
    window: Option<usize>,
    alibi: bool,
    /// Bias shape, broadcastable to [B, Hq, Lq, Lk]; about one entry in eight is −inf, and
    /// (when the bias has a query dim) the first query row is entirely −inf.
    bias: Option<Vec<usize>>,
    /// q built as a transposed [B, Lq, Hq, D] view, k as a transposed [B, Hkv, D, Lk] view.
    strided: bool,
}

fn case(b: usize, hq: usize, hkv: usize, lq: usize, lk: usize, d: usize, dv: usize) -> Case {
    Case {
        b,
        hq,
        hkv,
        lq,
        lk,
        d,
        dv,
        causal: false,
        window: None,
        alibi: false,
        bias: None,
        strided: false,
    }
}

struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    go: Tensor,
    p: AttentionParams,
    bias_dims: Vec<usize>,
}

fn inputs(c: &Case, dt: DType, dev: &Device, seed: u64) -> Inputs {
    let t = |v: Vec<f64>, dims: Vec<usize>| Tensor::from_f64s(&v, dims, dt, dev).unwrap();
    let nq = c.b * c.hq * c.lq * c.d;
    let nk = c.b * c.hkv * c.lk * c.d;
    let (q, k) = if c.strided {
        (
            t(noise(nq, seed, 1.5), vec![c.b, c.lq, c.hq, c.d])
                .transpose(1, 2)
                .unwrap(),
            t(noise(nk, seed + 1, 1.5), vec![c.b, c.hkv, c.d, c.lk])
                .transpose(2, 3)
                .unwrap(),
        )
    } else {
        (
            t(noise(nq, seed, 1.5), vec![c.b, c.hq, c.lq, c.d]),
            t(noise(nk, seed + 1, 1.5), vec![c.b, c.hkv, c.lk, c.d]),
        )
    };
    let v = t(
        noise(c.b * c.hkv * c.lk * c.dv, seed + 2, 1.0),
        vec![c.b, c.hkv, c.lk, c.dv],
    );
    let go = t(
        noise(c.b * c.hq * c.lq * c.dv, seed + 3, 1.0),
        vec![c.b, c.hq, c.lq, c.dv],
    );
    let bias = c.bias.as_ref().map(|dims| {
        let n: usize = dims.iter().product();
        let mut v = noise(n, seed + 4, 1.0);
        for x in v.iter_mut() {
            if *x > 0.75 {
                *x = f64::NEG_INFINITY;
            }
        }
        if dims.len() >= 2 && dims[dims.len() - 2] > 1 {
            let lk = dims[dims.len() - 1];
            for plane in v.chunks_mut(lk * dims[dims.len() - 2]) {
                plane[..lk].fill(f64::NEG_INFINITY);
            }
        }
        t(v, dims.clone())
    });
    let alibi = c.alibi.then(|| {
        let s: Vec<f64> = (0..c.hq).map(|h| 0.5f64.powi(h as i32 + 1)).collect();
        t(s, vec![c.hq])
    });
    Inputs {
        q,
        k,
        v,
        go,
        bias_dims: c.bias.clone().unwrap_or_default(),
        p: AttentionParams {
            scale: 1.0 / (c.d as f64).sqrt(),
            causal: c.causal,
            window: c.window,
            alibi_slopes: alibi,
            bias,
        },
    }
}

struct Reference {
    out: Vec<f64>,
    lse: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

/// Naive attention in f64 on the values the device holds, and its gradients for `go`.
fn reference(c: &Case, i: &Inputs) -> Reference {
    let f = |t: &Tensor| t.to_f64_vec().unwrap();
    let (q, k, v, go) = (f(&i.q), f(&i.k), f(&i.v), f(&i.go));
    let bias = i.p.bias.as_ref().map(f);
    let slopes = i.p.alibi_slopes.as_ref().map(f);
    let Case {
        b,
        hq,
        hkv,
        lq,
        lk,
        d,
        dv,
        ..
    } = *c;
    let g = hq / hkv;
    let bias_at = |bi: usize, h: usize, qi: usize, j: usize| -> f64 {
        let Some(bv) = &bias else { return 0.0 };
        let dims = &i.bias_dims;
        let idx = [bi, h, qi, j];
        let r = dims.len();
        let mut off = 0;
        for (a, &dim) in dims.iter().enumerate() {
            let x = if dim == 1 { 0 } else { idx[4 - r + a] };
            off = off * dim + x;
        }
        bv[off]
    };
    let mut r = Reference {
        out: vec![0.0; b * hq * lq * dv],
        lse: vec![f64::NEG_INFINITY; b * hq * lq],
        dq: vec![0.0; b * hq * lq * d],
        dk: vec![0.0; b * hkv * lk * d],
        dv: vec![0.0; b * hkv * lk * dv],
    };
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / g;
            let kbase = (bi * hkv + kh) * lk;
            for qi in 0..lq {
                let row = (bi * hq + h) * lq + qi;
                let pos = lk as i64 - lq as i64 + qi as i64;
                let s: Vec<f64> = (0..lk)
                    .map(|j| {
                        let jj = j as i64;
                        if (c.causal && jj > pos)
                            || c.window.is_some_and(|w| (pos - jj).abs() >= w as i64)
                        {
                            return f64::NEG_INFINITY;
                        }
                        let mut x = 0.0;
                        for e in 0..d {
                            x += q[row * d + e] * k[(kbase + j) * d + e];
                        }
                        x *= i.p.scale;
                        if let Some(sl) = &slopes {
                            x += sl[h] * (jj - pos) as f64;
                        }
                        x + bias_at(bi, h, qi, j)
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                r.lse[row] = m + z.ln();
                let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
                for e in 0..dv {
                    r.out[row * dv + e] = (0..lk).map(|j| p[j] * v[(kbase + j) * dv + e]).sum();
                }
                // Gradients.
                let gor = &go[row * dv..][..dv];
                let dsum: f64 = (0..dv).map(|e| gor[e] * r.out[row * dv + e]).sum();
                for j in 0..lk {
                    if p[j] == 0.0 {
                        continue;
                    }
                    let dp: f64 = (0..dv).map(|e| gor[e] * v[(kbase + j) * dv + e]).sum();
                    let ds = p[j] * (dp - dsum);
                    let dvr = &mut r.dv[(kbase + j) * dv..][..dv];
                    for (x, &g) in dvr.iter_mut().zip(gor) {
                        *x += p[j] * g;
                    }
                    for e in 0..d {
                        r.dq[row * d + e] += ds * k[(kbase + j) * d + e] * i.p.scale;
                        r.dk[(kbase + j) * d + e] += ds * q[row * d + e] * i.p.scale;
                    }
                }
            }
        }
    }
    r
}

/// Every element within `tol` of the reference, relative to the reference's largest
/// magnitude; infinities must match exactly.
fn assert_close(got: &Tensor, want: &[f64], tol: f64, what: &str) {
    let got = got.to_f64_vec().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f64, |a, x| a.max(x.abs()))
        .max(0.1);
    for (n, (&x, &y)) in got.iter().zip(want).enumerate() {
        if y.is_infinite() || x.is_infinite() {
            assert_eq!(x, y, "{what}[{n}]: got {x}, want {y}");
            continue;
        }
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{n}]: got {x}, want {y} (tolerance {} on a scale of {scale})",
            tol * scale
        );
    }
}

/// (forward, gradients) tolerances per dtype, relative to each tensor's largest value.
fn tols(dt: DType) -> (f64, f64) {
    match dt {
        DType::F64 => (1e-10, 1e-9),
        DType::F32 => (2e-5, 1e-4),
        DType::F16 => (4e-3, 1.5e-2),
        _ => (2e-2, 6e-2),
    }
}

fn check_dtypes(dev: &Device, c: &Case, what: &str, dtypes: &[DType]) {
    for (n, &dt) in dtypes.iter().enumerate() {
        let i = inputs(c, dt, dev, 17 + 5 * n as u64);
        let r = reference(c, &i);
        let be = dev.backend();
        let (o, lse) = be.attention(&i.q, &i.k, &i.v, &i.p).unwrap();
        let (ft, gt) = tols(dt);
        let w = format!("{what} {dt} {c:?}");
        assert_eq!(o.dims(), [c.b, c.hq, c.lq, c.dv]);
        assert_eq!(lse.dims(), [c.b, c.hq, c.lq]);
        assert_close(&o, &r.out, ft, &format!("{w}: out"));
        assert_close(&lse, &r.lse, ft, &format!("{w}: lse"));
        let (dq, dk, dv) = be
            .attention_backward(&i.q, &i.k, &i.v, &o, &lse, &i.go, &i.p)
            .unwrap();
        assert_eq!(dq.dims(), i.q.dims());
        assert_eq!(dk.dims(), i.k.dims());
        assert_eq!(dv.dims(), i.v.dims());
        assert_close(&dq, &r.dq, gt, &format!("{w}: dq"));
        assert_close(&dk, &r.dk, gt, &format!("{w}: dk"));
        assert_close(&dv, &r.dv, gt, &format!("{w}: dv"));
    }
}

const ALL: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];

fn check(dev: &Device, c: &Case, what: &str) {
    check_dtypes(dev, c, what, &ALL);
}

#[test]
fn plain_and_gqa() {
    let Some(dev) = gpu() else { return };
    check(&dev, &case(2, 2, 2, 9, 13, 8, 8), "plain small");
    check(&dev, &case(2, 4, 2, 70, 70, 16, 24), "gqa dv != d");
    check(&dev, &case(1, 8, 1, 40, 64, 32, 20), "mqa");
    // Tensor-core shapes (16-bit types) and the same on the SIMT path (f32, f64).
    check(&dev, &case(2, 4, 2, 100, 130, 64, 64), "gqa d64");
    check(&dev, &case(1, 2, 1, 70, 90, 128, 128), "gqa d128");
    check(&dev, &case(1, 2, 2, 33, 65, 32, 32), "d32");
    check(&dev, &case(1, 1, 1, 40, 50, 96, 96), "d96");
}

#[test]
fn causal_with_kv_cache_alignment() {
    let Some(dev) = gpu() else { return };
    for (lq, lk, d) in [(37, 150, 16), (130, 130, 8), (100, 260, 64), (64, 64, 64)] {
        check(
            &dev,
            &Case {
                causal: true,
                ..case(1, 4, 2, lq, lk, d, d)
            },
            "causal",
        );
    }
}

#[test]
fn sliding_window() {
    let Some(dev) = gpu() else { return };
    check(
        &dev,
        &Case {
            window: Some(9),
            ..case(1, 2, 2, 70, 90, 8, 8)
        },
        "window",
    );
    check(
        &dev,
        &Case {
            window: Some(20),
            causal: true,
            ..case(1, 2, 1, 150, 150, 64, 64)
        },
        "window causal d64",
    );
    check(
        &dev,
        &Case {
            window: Some(4),
            ..case(1, 1, 1, 12, 5, 4, 4)
        },
        "window lq > lk",
    );
}

#[test]
fn alibi_and_bias() {
    let Some(dev) = gpu() else { return };
    for d in [8, 64] {
        check(
            &dev,
            &Case {
                alibi: true,
                causal: true,
                ..case(1, 4, 2, 33, 80, d, d)
            },
            "alibi causal",
        );
        // Padding mask [B, 1, 1, Lk].
        check(
            &dev,
            &Case {
                bias: Some(vec![2, 1, 1, 75]),
                ..case(2, 2, 1, 20, 75, d, d)
            },
            "padding bias",
        );
        // [Lq, Lk] with a fully masked first row, plus ALiBi.
        check(
            &dev,
            &Case {
                bias: Some(vec![20, 75]),
                alibi: true,
                ..case(2, 2, 2, 20, 75, d, d)
            },
            "bias qk",
        );
        // Full [B, Hq, Lq, Lk].
        check(
            &dev,
            &Case {
                bias: Some(vec![1, 2, 19, 70]),
                ..case(1, 2, 1, 19, 70, d, d)
            },
            "bias full",
        );
        // Broadcast over keys [B, 1, Lq, 1] (inner bias stride 0).
        check(
            &dev,
            &Case {
                bias: Some(vec![2, 1, 30, 1]),
                causal: true,
                ..case(2, 2, 2, 30, 70, d, d)
            },
            "bias b1q1",
        );
    }
}

#[test]
fn fully_masked_rows_give_zero_and_neg_inf() {
    let Some(dev) = gpu() else { return };
    // Window 1, non-causal, Lq > Lk: queries at negative positions see no key.
    for d in [4, 64] {
        let c = Case {
            window: Some(1),
            ..case(1, 1, 1, 20, 3, d, d)
        };
        check(&dev, &c, "masked rows");
        for dt in ALL {
            let i = inputs(&c, dt, &dev, 1);
            let (o, lse) = dev.backend().attention(&i.q, &i.k, &i.v, &i.p).unwrap();
            let (o, lse) = (o.to_f64_vec().unwrap(), lse.to_f64_vec().unwrap());
            assert_eq!(lse[0], f64::NEG_INFINITY, "{dt}");
            assert!(o[..d].iter().all(|&x| x == 0.0), "{dt}");
            assert!(lse[19].is_finite(), "{dt}");
        }
    }
}

#[test]
fn strided_inputs() {
    let Some(dev) = gpu() else { return };
    for d in [8, 64] {
        check(
            &dev,
            &Case {
                strided: true,
                causal: true,
                ..case(2, 4, 2, 30, 70, d, d)
            },
            "strided",
        );
    }
}

#[test]
fn decode_with_split_keys() {
    let Some(dev) = gpu() else { return };
    for d in [16, 64] {
        let c = Case {
            causal: true,
            ..case(1, 4, 2, 1, 700, d, d)
        };
        check(&dev, &c, "decode");
        check(
            &dev,
            &Case {
                window: Some(300),
                alibi: true,
                ..c.clone()
            },
            "decode window alibi",
        );
        check(
            &dev,
            &Case {
                strided: true,
                bias: Some(vec![1, 1, 1, 700]),
                ..c.clone()
            },
            "decode strided bias",
        );
    }
    check(
        &dev,
        &Case {
            causal: true,
            ..case(2, 3, 1, 2, 520, 12, 8)
        },
        "decode gqa 2 rows",
    );
}

#[test]
fn empty_and_degenerate_shapes() {
    let Some(dev) = gpu() else { return };
    check(&dev, &case(1, 2, 1, 3, 0, 8, 8), "no keys");
    check(&dev, &case(1, 2, 1, 0, 5, 8, 8), "no queries");
    check(&dev, &case(0, 2, 1, 3, 5, 8, 8), "no batch");
}

/// A GPT-2-sized causal call in bf16 (the training benchmark's shape, one batch): the
/// tensor-core kernels against the f32 SIMT kernels on the same inputs.
#[test]
fn gpt2_shape_bf16_matches_f32() {
    let Some(dev) = gpu() else { return };
    let c = Case {
        causal: true,
        ..case(1, 12, 12, 1024, 1024, 64, 64)
    };
    let i = inputs(&c, DType::BF16, &dev, 3);
    let up = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let be = dev.backend();
    let (o, lse) = be.attention(&i.q, &i.k, &i.v, &i.p).unwrap();
    let (dq, dk, dv) = be
        .attention_backward(&i.q, &i.k, &i.v, &o, &lse, &i.go, &i.p)
        .unwrap();
    let (q, k, v, go) = (up(&i.q), up(&i.k), up(&i.v), up(&i.go));
    let (o32, lse32) = be.attention(&q, &k, &v, &i.p).unwrap();
    let (dq32, dk32, dv32) = be
        .attention_backward(&q, &k, &v, &up(&o), &up(&lse), &go, &i.p)
        .unwrap();
    let f = |t: &Tensor| t.to_f64_vec().unwrap();
    assert_close(&o, &f(&o32), 2e-2, "gpt2 out");
    assert_close(&lse, &f(&lse32), 1e-2, "gpt2 lse");
    assert_close(&dq, &f(&dq32), 5e-2, "gpt2 dq");
    assert_close(&dk, &f(&dk32), 5e-2, "gpt2 dk");
    assert_close(&dv, &f(&dv32), 5e-2, "gpt2 dv");
}

/// Timing of the GPT-2 small training shape (B=8, H=12, L=1024, D=64, causal, bf16) and of
/// one decode step; run with `--ignored --nocapture`.
#[test]
#[ignore]
fn bench_gpt2_and_decode() {
    let Some(dev) = gpu() else { return };
    let time = |what: &str, n: usize, f: &dyn Fn()| {
        f();
        dev.synchronize().unwrap();
        let t = std::time::Instant::now();
        for _ in 0..n {
            f();
        }
        dev.synchronize().unwrap();
        eprintln!(
            "{what}: {:.3} ms",
            t.elapsed().as_secs_f64() * 1e3 / n as f64
        );
    };
    for dt in [DType::BF16, DType::F16, DType::F32] {
        let c = Case {
            causal: true,
            ..case(8, 12, 12, 1024, 1024, 64, 64)
        };
        let i = inputs(&c, dt, &dev, 5);
        let be = dev.backend();
        let (o, lse) = be.attention(&i.q, &i.k, &i.v, &i.p).unwrap();
        time(&format!("gpt2 {dt} forward"), 20, &|| {
            be.attention(&i.q, &i.k, &i.v, &i.p).unwrap();
        });
        time(&format!("gpt2 {dt} backward"), 20, &|| {
            be.attention_backward(&i.q, &i.k, &i.v, &o, &lse, &i.go, &i.p)
                .unwrap();
        });
    }
    for (dt, lk) in [(DType::BF16, 4096), (DType::F32, 4096), (DType::BF16, 512)] {
        let c = Case {
            causal: true,
            ..case(1, 32, 8, 1, lk, 128, 128)
        };
        let i = inputs(&c, dt, &dev, 6);
        let be = dev.backend();
        time(
            &format!("decode {dt} Lk={lk} Hq=32 Hkv=8 D=128"),
            50,
            &|| {
                be.attention(&i.q, &i.k, &i.v, &i.p).unwrap();
            },
        );
    }
}

/// One call of each kernel family at benchmark shapes, for a profiler; run with `--ignored`.
#[test]
#[ignore]
fn profile_once() {
    let Some(dev) = gpu() else { return };
    for (c, dt) in [
        (
            Case {
                causal: true,
                ..case(8, 12, 12, 1024, 1024, 64, 64)
            },
            DType::BF16,
        ),
        (
            Case {
                causal: true,
                ..case(8, 12, 12, 1024, 1024, 64, 64)
            },
            DType::F32,
        ),
        (
            Case {
                causal: true,
                ..case(1, 32, 8, 1, 4096, 128, 128)
            },
            DType::BF16,
        ),
    ] {
        let i = inputs(&c, dt, &dev, 5);
        let be = dev.backend();
        let (o, lse) = be.attention(&i.q, &i.k, &i.v, &i.p).unwrap();
        if c.lq > 1 {
            be.attention_backward(&i.q, &i.k, &i.v, &o, &lse, &i.go, &i.p)
                .unwrap();
        }
        dev.synchronize().unwrap();
    }
}
