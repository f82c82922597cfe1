//! The CUDA fused decoder against a plain f64 implementation of the same model on the host
//! (from the weights' stored values), for f32, f16 and bf16 weights; the CUDA-graph and
//! graph-less decode steps against each other; truncating the cache and feeding again; long
//! prompts (chunked prefill, attention split over many keys); specs the engine must decline.
//! GPU tests skip without a CUDA device. The last test is a benchmark, run on request:
//! `cargo test --release -p tensor-cuda --test decoder -- --ignored --nocapture`.

use std::sync::Mutex;

use tensor_core::decoder::{DecoderLayerSpec, DecoderSpec, Weight};
use tensor_core::quant::{GgmlType, QTensor};
use tensor_core::{DType, Device, HostData, Tensor};

/// GPU tests share the device's one stream: run them one at a time (a graph capture must not
/// see another test's work).
static GPU: Mutex<()> = Mutex::new(());

fn gpu() -> Option<(Device, std::sync::MutexGuard<'static, ()>)> {
    let guard = GPU.lock().unwrap_or_else(|e| e.into_inner());
    match tensor_cuda::device(0) {
        Ok(d) => Some((d, guard)),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

#[test]
fn decoder_module_compiles() {
    if !tensor_cuda::kernels::nvrtc_present() {
        eprintln!("skipped: libnvrtc not found");
        return;
    }
    let m = tensor_cuda::kernels::all_modules()
        .into_iter()
        .find(|m| m.name == "decoder")
        .expect("the decoder module is listed");
    let cubin = tensor_cuda::kernels::compile_cubin(m, "sm_90").unwrap_or_else(|e| panic!("{e}"));
    // Every kernel the engine looks up is in it.
    let has = |name: &str| {
        let n = format!("{name}\0");
        cubin.windows(n.len()).any(|w| w == n.as_bytes())
    };
    for t in ["f16", "bf16", "f32"] {
        for k in [
            "embed",
            "mv_plain",
            "mv_swiglu",
            "mv_qkv",
            "rmsrows",
            "qkvpost",
            "swiglu",
            "tocast",
        ] {
            assert!(has(&format!("dec_{k}_{t}")), "dec_{k}_{t} missing");
        }
        for g in [1, 2, 4, 8] {
            for d in [2, 4, 8] {
                assert!(
                    has(&format!("dec_attn_{t}_g{g}_d{d}")),
                    "attention {t} {g} {d}"
                );
            }
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-a, a).
    fn uniform(&mut self, a: f64) -> f64 {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * a
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[derive(Clone, Copy, Debug)]
struct Cfg {
    d: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    ff: usize,
    vocab: usize,
    layers: usize,
    /// dtype of the weight matrices, of the norms and biases, of the embedding.
    wdt: DType,
    norm_dt: DType,
    emb_dt: DType,
    bias: bool,
    interleaved: bool,
    /// lm_head is the embedding tensor itself.
    tied: bool,
    max_pos: usize,
}

impl Cfg {
    fn small(wdt: DType) -> Cfg {
        Cfg {
            d: 256,
            nh: 8,
            nkv: 2,
            hd: 32,
            ff: 512,
            vocab: 1000,
            layers: 2,
            wdt,
            norm_dt: wdt,
            emb_dt: wdt,
            bias: false,
            interleaved: false,
            tied: false,
            max_pos: 64,
        }
    }
    fn qd(&self) -> usize {
        self.nh * self.hd
    }
    fn kvd(&self) -> usize {
        self.nkv * self.hd
    }
}

struct RefLayer {
    attn_norm: Vec<f64>,
    wq: Vec<f64>,
    wk: Vec<f64>,
    wv: Vec<f64>,
    bq: Option<Vec<f64>>,
    bk: Option<Vec<f64>>,
    bv: Option<Vec<f64>>,
    wo: Vec<f64>,
    ffn_norm: Vec<f64>,
    wg: Vec<f64>,
    wu: Vec<f64>,
    wd: Vec<f64>,
}

/// The model's stored values, in f64, with its KV cache.
struct RefModel {
    c: Cfg,
    eps: f64,
    inv_freq: Vec<f32>,
    emb: Vec<f64>,
    layers: Vec<RefLayer>,
    final_norm: Vec<f64>,
    lm_head: Vec<f64>,
    kc: Vec<Vec<f64>>,
    vc: Vec<Vec<f64>>,
}

/// A random tensor on `dev` and its stored values.
fn rand_tensor(
    dev: &Device,
    rng: &mut Rng,
    shape: &[usize],
    offset: f64,
    scale: f64,
    dt: DType,
) -> (Tensor, Vec<f64>) {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| offset + rng.uniform(scale)).collect();
    let t = Tensor::from_f64s(&v, shape.to_vec(), dt, dev).unwrap();
    let stored = t.to_f64_vec().unwrap();
    (t, stored)
}

fn build(dev: &Device, c: Cfg, seed: u64) -> (DecoderSpec, RefModel) {
    let mut rng = Rng(seed | 1);
    let (d, qd, kvd, ff) = (c.d, c.qd(), c.kvd(), c.ff);
    let mat = |rows: usize, cols: usize, rng: &mut Rng| {
        let (t, v) = rand_tensor(
            dev,
            rng,
            &[rows, cols],
            0.0,
            (3.0 / cols as f64).sqrt(),
            c.wdt,
        );
        (Weight::Dense(t), v)
    };
    let mut layers = vec![];
    let mut rlayers = vec![];
    for _ in 0..c.layers {
        let (attn_norm, an) = rand_tensor(dev, &mut rng, &[d], 1.0, 0.2, c.norm_dt);
        let (wq, wqv) = mat(qd, d, &mut rng);
        let (wk, wkv) = mat(kvd, d, &mut rng);
        let (wv, wvv) = mat(kvd, d, &mut rng);
        let bias = |n: usize, rng: &mut Rng| {
            if c.bias {
                let (t, v) = rand_tensor(dev, rng, &[n], 0.0, 0.5, c.norm_dt);
                (Some(t), Some(v))
            } else {
                (None, None)
            }
        };
        let (bq, bqv) = bias(qd, &mut rng);
        let (bk, bkv) = bias(kvd, &mut rng);
        let (bv, bvv) = bias(kvd, &mut rng);
        let (wo, wov) = mat(d, qd, &mut rng);
        let (ffn_norm, fnv) = rand_tensor(dev, &mut rng, &[d], 1.0, 0.2, c.norm_dt);
        let (wg, wgv) = mat(ff, d, &mut rng);
        let (wu, wuv) = mat(ff, d, &mut rng);
        let (wd, wdv) = mat(d, ff, &mut rng);
        layers.push(DecoderLayerSpec {
            attn_norm,
            wq,
            wk,
            wv,
            bq,
            bk,
            bv,
            wo,
            ffn_norm,
            w_gate: wg,
            w_up: wu,
            w_down: wd,
        });
        rlayers.push(RefLayer {
            attn_norm: an,
            wq: wqv,
            wk: wkv,
            wv: wvv,
            bq: bqv,
            bk: bkv,
            bv: bvv,
            wo: wov,
            ffn_norm: fnv,
            wg: wgv,
            wu: wuv,
            wd: wdv,
        });
    }
    let (emb, embv) = rand_tensor(dev, &mut rng, &[c.vocab, d], 0.0, 1.0, c.emb_dt);
    let (final_norm, fv) = rand_tensor(dev, &mut rng, &[d], 1.0, 0.2, c.norm_dt);
    let (lm_head, lmv) = if c.tied {
        (Weight::Dense(emb.clone()), embv.clone())
    } else {
        mat(c.vocab, d, &mut rng)
    };
    let inv_freq: Vec<f32> = (0..c.hd / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / c.hd as f32))
        .collect();
    let spec = DecoderSpec {
        vocab_size: c.vocab,
        hidden_size: d,
        num_heads: c.nh,
        num_kv_heads: c.nkv,
        head_dim: c.hd,
        intermediate_size: ff,
        rms_eps: 1e-5,
        rope_inv_freq: inv_freq.clone(),
        rope_interleaved: c.interleaved,
        embedding: Weight::Dense(emb),
        layers,
        final_norm,
        lm_head,
        max_positions: c.max_pos,
    };
    let rm = RefModel {
        c,
        eps: 1e-5f32 as f64,
        inv_freq,
        emb: embv,
        layers: rlayers,
        final_norm: fv,
        lm_head: lmv,
        kc: vec![vec![]; c.layers],
        vc: vec![vec![]; c.layers],
    };
    (spec, rm)
}

fn mv(w: &[f64], x: &[f64]) -> Vec<f64> {
    let k = x.len();
    w.chunks_exact(k)
        .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn rms(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(g).map(|(v, g)| v * r * g).collect()
}

impl RefModel {
    fn len(&self) -> usize {
        self.kc[0].len() / self.c.kvd()
    }

    fn truncate(&mut self, len: usize) {
        let kvd = self.c.kvd();
        for l in 0..self.c.layers {
            self.kc[l].truncate(len * kvd);
            self.vc[l].truncate(len * kvd);
        }
    }

    fn rope(&self, x: &mut [f64], pos: usize) {
        let hd = self.c.hd;
        let half = hd / 2;
        for head in x.chunks_exact_mut(hd) {
            for i in 0..half {
                // The engine's angles are f32, as the CPU decoder's.
                let ang = (pos as f32 * self.inv_freq[i]) as f64;
                let (s, co) = ang.sin_cos();
                let (ia, ib) = if self.c.interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + half)
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * co - b * s;
                head[ib] = a * s + b * co;
            }
        }
    }

    /// Feed one token; its logits when `head`.
    fn step(&mut self, tok: u32, head: bool) -> Option<Vec<f64>> {
        let c = self.c;
        let (d, hd, kvd) = (c.d, c.hd, c.kvd());
        let pos = self.len();
        let mut x = self.emb[tok as usize * d..(tok as usize + 1) * d].to_vec();
        for li in 0..c.layers {
            let l = &self.layers[li];
            let xn = rms(&x, &l.attn_norm, self.eps);
            let mut q = mv(&l.wq, &xn);
            let mut k = mv(&l.wk, &xn);
            let mut v = mv(&l.wv, &xn);
            for (o, b) in [(&mut q, &l.bq), (&mut k, &l.bk), (&mut v, &l.bv)] {
                if let Some(b) = b {
                    o.iter_mut().zip(b).for_each(|(o, b)| *o += b);
                }
            }
            self.rope(&mut q, pos);
            self.rope(&mut k, pos);
            self.kc[li].extend_from_slice(&k);
            self.vc[li].extend_from_slice(&v);
            let l = &self.layers[li];
            let n = pos + 1;
            let group = c.nh / c.nkv;
            let mut att = vec![0.0; c.qd()];
            for h in 0..c.nh {
                let g = h / group;
                let qh = &q[h * hd..(h + 1) * hd];
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        let kj = &self.kc[li][j * kvd + g * hd..j * kvd + (g + 1) * hd];
                        qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    let vj = &self.vc[li][j * kvd + g * hd..j * kvd + (g + 1) * hd];
                    for (o, vv) in att[h * hd..(h + 1) * hd].iter_mut().zip(vj) {
                        *o += ej / sum * vv;
                    }
                }
            }
            let o = mv(&l.wo, &att);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            let xn = rms(&x, &l.ffn_norm, self.eps);
            let gt = mv(&l.wg, &xn);
            let up = mv(&l.wu, &xn);
            let h: Vec<f64> = gt
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let o = mv(&l.wd, &h);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
        }
        head.then(|| mv(&self.lm_head, &rms(&x, &self.final_norm, self.eps)))
    }
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut num = 0.0;
    let mut den = 0.0;
    for (g, w) in got.iter().zip(want) {
        let g = *g as f64;
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num += (g - w) * (g - w);
        den += w * w;
    }
    (num / den.max(1e-30)).sqrt()
}

fn check_rows(what: &str, got: &[f32], want: &[Vec<f64>], tol: f64) {
    let vocab = want[0].len();
    assert_eq!(got.len(), want.len() * vocab, "{what}: logits length");
    for (i, w) in want.iter().enumerate() {
        let e = rel_err(&got[i * vocab..(i + 1) * vocab], w);
        assert!(
            e < tol,
            "{what}: row {i}: relative error {e:.3e} ≥ {tol:.1e}"
        );
    }
}

/// Prompt of 9 tokens (every row's logits), 5 single steps, against the reference; the
/// graph and graph-less engines agree bit for bit; truncate + re-feed gives the same logits;
/// decode steps allocate nothing.
fn run_model(c: Cfg, tol: f64) {
    let Some((dev, _g)) = gpu() else { return };
    let (spec, mut rm) = build(&dev, c, 0x5eed_0000 + c.d as u64 + c.hd as u64);
    let mut rng = Rng(77);
    let toks: Vec<u32> = (0..14).map(|_| rng.below(c.vocab) as u32).collect();
    let mut want: Vec<Vec<f64>> = vec![];
    for &t in &toks {
        want.push(rm.step(t, true).unwrap());
    }
    let mut runs: Vec<Vec<Vec<f32>>> = vec![];
    for graph in [true, false] {
        let what = format!("{c:?} graph={graph}");
        let mut e = tensor_cuda::decoder::engine_with(&dev, &spec, graph).unwrap();
        assert_eq!(e.cache_len(), 0);
        assert_eq!(e.threads(), 1);
        let mut got = vec![];
        let p = e.forward(&toks[..9], true).unwrap().to_vec();
        check_rows(&format!("{what} prompt"), &p, &want[..9], tol);
        got.extend(p.chunks(c.vocab).map(|r| r.to_vec()));
        assert_eq!(e.cache_len(), 9);
        let cuda = tensor_cuda::as_cuda(&dev).unwrap();
        let mut stats = None;
        for (i, &t) in toks[9..].iter().enumerate() {
            let l = e.forward(&[t], false).unwrap().to_vec();
            check_rows(&format!("{what} step {i}"), &l, &want[9 + i..10 + i], tol);
            got.push(l);
            // Past the first step (which captures the graph), nothing is allocated.
            let s = cuda.pool_stats();
            if let Some(prev) = stats {
                assert_eq!(
                    (s.driver_allocs, s.used_bytes),
                    prev,
                    "{what}: a decode step allocated"
                );
            }
            stats = Some((s.driver_allocs, s.used_bytes));
        }
        assert_eq!(e.cache_len(), 14);
        // Truncate and feed again, one token at a time: the same logits, exactly.
        e.truncate(11).unwrap();
        assert_eq!(e.cache_len(), 11);
        for i in 11..14 {
            let l = e.forward(&[toks[i]], false).unwrap();
            assert_eq!(l, &got[i][..], "{what}: step {i} after truncate");
        }
        // Truncate and feed the tail as one prompt (a chunk at a nonzero position).
        e.truncate(9).unwrap();
        let l = e.forward(&toks[9..], true).unwrap().to_vec();
        check_rows(&format!("{what} re-fed tail"), &l, &want[9..], tol);
        e.truncate(9).unwrap();
        let l = e.forward(&toks[9..], false).unwrap().to_vec();
        check_rows(&format!("{what} re-fed tail, last"), &l, &want[13..], tol);
        // Greedy steps pick on the device what the host picks from the logits.
        for i in 11..14 {
            e.truncate(i).unwrap();
            let pick = e.forward_argmax(&[toks[i]]).unwrap();
            assert_eq!(e.cache_len(), i + 1);
            assert_eq!(
                pick,
                tensor_core::decoder::argmax_f32(&got[i]),
                "{what}: greedy pick at step {i}"
            );
        }
        assert!(e.forward_argmax(&[c.vocab as u32]).is_err());
        assert!(e.truncate(15).is_err());
        assert!(e.forward(&[c.vocab as u32], false).is_err());
        assert!(e.forward(&[], false).is_err());
        runs.push(got);
    }
    assert_eq!(runs[0], runs[1], "graph and graph-less logits differ");
    rm.truncate(0);
}

#[test]
fn f32_model_matches_the_reference() {
    run_model(Cfg::small(DType::F32), 1e-4);
}

#[test]
fn bf16_model_with_biases_and_interleaved_rope() {
    run_model(
        Cfg {
            bias: true,
            interleaved: true,
            ..Cfg::small(DType::BF16)
        },
        3e-2,
    );
}

/// f16 matrices with f32 norms, an f32 embedding tied to the head (cast to f16 for the head),
/// 16 query heads on one KV head (two head batches in the attention kernel), q dim ≠ hidden.
#[test]
fn f16_model_with_f32_norms_and_tied_head() {
    run_model(
        Cfg {
            nh: 16,
            nkv: 1,
            hd: 64,
            norm_dt: DType::F32,
            emb_dt: DType::F32,
            tied: true,
            ..Cfg::small(DType::F16)
        },
        5e-3,
    );
}

/// A prompt longer than a prefill chunk, then decode steps whose attention spans many key
/// chunks and splits.
#[test]
fn long_prompt_in_chunks() {
    let Some((dev, g)) = gpu() else { return };
    drop(g);
    let c = Cfg {
        max_pos: 700,
        layers: 1,
        ..Cfg::small(DType::F32)
    };
    let _g = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let (spec, mut rm) = build(&dev, c, 99);
    let mut rng = Rng(5);
    let toks: Vec<u32> = (0..604).map(|_| rng.below(c.vocab) as u32).collect();
    let mut want = vec![];
    for (i, &t) in toks.iter().enumerate() {
        if let Some(l) = rm.step(t, i >= 599) {
            want.push(l);
        }
    }
    let mut e = tensor_cuda::decoder::engine(&dev, &spec).unwrap();
    let l = e.forward(&toks[..600], false).unwrap().to_vec();
    check_rows("600-token prompt", &l, &want[..1], 1e-4);
    for i in 0..4 {
        let l = e.forward(&[toks[600 + i]], false).unwrap().to_vec();
        check_rows(
            &format!("step {i} after 600"),
            &l,
            &want[1 + i..2 + i],
            1e-4,
        );
    }
    // Every row of a chunked prompt.
    e.truncate(0).unwrap();
    let all = e.forward(&toks[..600], true).unwrap();
    assert_eq!(all.len(), 600 * c.vocab);
    check_rows(
        "600-token prompt, row 599",
        &all[599 * c.vocab..],
        &want[..1],
        1e-4,
    );
    assert!(
        e.forward(&vec![1u32; 101], false).is_err(),
        "past max_positions"
    );
}

#[test]
fn declines_quantized_weights() {
    let Some((dev, _g)) = gpu() else { return };
    let c = Cfg::small(DType::F32);
    let (spec, _) = build(&dev, c, 3);
    assert!(dev.backend().fused_decoder(&spec).unwrap().is_some());
    let mut q = spec.clone();
    q.layers[1].wk = Weight::Quant(
        QTensor::from_bytes(GgmlType::F32, &[c.kvd(), c.d], vec![0u8; c.kvd() * c.d * 4]).unwrap(),
    );
    assert!(dev.backend().fused_decoder(&q).unwrap().is_none());
    let e = tensor_cuda::decoder::engine(&dev, &q)
        .err()
        .expect("quantized");
    assert!(e.to_string().contains("quantized"), "{e}");
    // A weight of the wrong shape is an error, not a decline.
    let mut w = spec.clone();
    w.layers[0].wo = w.layers[0].wq.clone();
    w.layers[0].w_down = w.layers[0].w_gate.clone();
    assert!(dev.backend().fused_decoder(&w).is_err());
}

/// Decode speed of a Llama-3.2-1B-shaped bf16 model (random weights) after a 128-token
/// prompt, with and without the CUDA graph. Run on request (see the module doc).
#[test]
#[ignore]
fn bench_llama_1b_shape() {
    let Some((dev, _g)) = gpu() else { return };
    let (d, nh, nkv, hd, ff, vocab, nl) = (2048, 32, 8, 64, 8192, 128256, 16);
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut rand_bf16 = |rows: usize, cols: usize| {
        let a = (3.0 / cols as f32).sqrt();
        let v: Vec<half::bf16> = (0..rows * cols)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let u = (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                half::bf16::from_f32(u * a)
            })
            .collect();
        Tensor::from_host(HostData::BF16(v), vec![rows, cols], &dev).unwrap()
    };
    let ones = |n: usize| Tensor::from_f64s(&vec![1.0; n], vec![n], DType::BF16, &dev).unwrap();
    let mut layers = vec![];
    for _ in 0..nl {
        layers.push(DecoderLayerSpec {
            attn_norm: ones(d),
            wq: Weight::Dense(rand_bf16(nh * hd, d)),
            wk: Weight::Dense(rand_bf16(nkv * hd, d)),
            wv: Weight::Dense(rand_bf16(nkv * hd, d)),
            bq: None,
            bk: None,
            bv: None,
            wo: Weight::Dense(rand_bf16(d, nh * hd)),
            ffn_norm: ones(d),
            w_gate: Weight::Dense(rand_bf16(ff, d)),
            w_up: Weight::Dense(rand_bf16(ff, d)),
            w_down: Weight::Dense(rand_bf16(d, ff)),
        });
    }
    let emb = rand_bf16(vocab, d);
    let spec = DecoderSpec {
        vocab_size: vocab,
        hidden_size: d,
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
        intermediate_size: ff,
        rms_eps: 1e-5,
        rope_inv_freq: (0..hd / 2)
            .map(|i| 1.0 / 500000f32.powf(2.0 * i as f32 / hd as f32))
            .collect(),
        rope_interleaved: false,
        embedding: Weight::Dense(emb.clone()),
        layers,
        final_norm: ones(d),
        lm_head: Weight::Dense(emb),
        max_positions: 2048,
    };
    let bytes = (nl * (d * (nh * hd + 2 * nkv * hd) + d * nh * hd + 3 * d * ff) + vocab * d) * 2;
    let prompt: Vec<u32> = (0..128).map(|i| (i * 7919 % vocab) as u32).collect();
    let argmax = |l: &[f32]| {
        l.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap()
    };
    // DEC_BENCH_MODES=1,0 (graph on/off), DEC_BENCH_REPS, DEC_BENCH_STEPS: for profiling.
    let env = |k: &str, dflt: &str| std::env::var(k).unwrap_or_else(|_| dflt.to_string());
    let modes: Vec<bool> = env("DEC_BENCH_MODES", "1,0")
        .split(',')
        .map(|m| m.trim() == "1")
        .collect();
    let reps: usize = env("DEC_BENCH_REPS", "3").parse().unwrap();
    let steps: usize = env("DEC_BENCH_STEPS", "300").parse().unwrap();
    for graph in modes {
        let mut e = tensor_cuda::decoder::engine_with(&dev, &spec, graph).unwrap();
        let (mut prefill, mut fwd, mut gen) = (f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..reps {
            e.truncate(0).unwrap();
            let t0 = std::time::Instant::now();
            let mut next = argmax(e.forward(&prompt, false).unwrap());
            prefill = prefill.min(t0.elapsed().as_secs_f64());
            next = argmax(e.forward(&[next], false).unwrap());
            // Generation: each step feeds the argmax of the last logits.
            let t1 = std::time::Instant::now();
            for _ in 0..steps {
                next = argmax(e.forward(&[next], false).unwrap());
            }
            gen = gen.min(t1.elapsed().as_secs_f64() / steps as f64);
            // The engine alone: the same token again (no host work on the logits).
            e.truncate(129).unwrap();
            let t2 = std::time::Instant::now();
            for _ in 0..steps {
                e.forward(&[next], false).unwrap();
            }
            fwd = fwd.min(t2.elapsed().as_secs_f64() / steps as f64);
        }
        eprintln!(
            "graph={graph}: prefill 128 tokens {:.2} ms; decode {:.3} ms/token = {:.0} tok/s \
             ({:.2} TB/s of weights); with argmax {:.3} ms = {:.0} tok/s",
            prefill * 1e3,
            fwd * 1e3,
            1.0 / fwd,
            bytes as f64 / fwd / 1e12,
            gen * 1e3,
            1.0 / gen,
        );
    }
}
