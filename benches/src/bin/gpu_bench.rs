//! GPU benchmarks of the CUDA backend, one JSON line per measurement on stdout. Run on the
//! GPU host by `benches/gpu_vs_torch.py`, which times PyTorch on the same GPU in the same run
//! and prints the side-by-side table.
//!
//! ```text
//! gpu_bench gemm   [--sizes 4096,8192] [--reps 20]
//! gpu_bench decode [--prompt 128] [--tokens 128] [--layers 16]
//! gpu_bench train  [--steps 10] [--warmup 3] [--batch 8] [--seq 1024]
//! ```
//!
//! - `gemm`: bf16 `[n, n] · [n, n]` through `Tensor::matmul` (cuBLAS), TFLOP/s.
//! - `decode`: a Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32 heads, 8 KV heads,
//!   intermediate 8192, vocab 128256) with random bf16 weights on the backend's fused decoder:
//!   a 128-token prompt, then greedy decoding at batch 1; tokens/s of the decode phase.
//! - `train`: one GPT-2-small-shaped training step (vocab 50257, 12 layers, 12 heads, width
//!   768, learned positions, pre-LayerNorm, GELU-tanh MLP, tied head; batch 8 × 1024) with bf16
//!   compute and f32 master weights updated by AdamW; median step time.

use std::process::ExitCode;
use std::time::Instant;

use tensor_core::decoder::{DecoderLayerSpec, DecoderSpec, Weight};
use tensor_core::{manual_seed, DType, Device, Result, Tensor};
use tensor_nn::attention::AttentionConfig;
use tensor_nn::layers::{LayerNorm, MlpKind};
use tensor_nn::loss::{cross_entropy, CrossEntropyOptions};
use tensor_nn::memory::MasterWeights;
use tensor_nn::module::{Activation, Module};
use tensor_nn::optim::{AdamW, AdamWConfig, Optimizer};
use tensor_nn::transformer::{
    BlockConfig, BlockInputs, BlockNames, NormKind, NormPosition, TransformerBlock,
};
use tensor_nn::{Embedding, Init, VarBuilder, VarMap};

fn flag<T: std::str::FromStr>(
    args: &[String],
    name: &str,
    default: T,
) -> std::result::Result<T, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name}: missing or invalid value")),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn gemm(dev: &Device, args: &[String]) -> std::result::Result<(), String> {
    let e = |e: tensor_core::Error| e.to_string();
    let sizes: String = flag(args, "--sizes", "4096,8192".to_string())?;
    let reps: usize = flag(args, "--reps", 20)?;
    for n in sizes
        .split(',')
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad size {s}")))
    {
        let n = n?;
        let a = Tensor::randn_seeded(0.0, 1.0, (n, n), DType::BF16, dev, 1).map_err(e)?;
        let b = Tensor::randn_seeded(0.0, 1.0, (n, n), DType::BF16, dev, 2).map_err(e)?;
        for _ in 0..3 {
            a.matmul(&b).map_err(e)?;
        }
        dev.synchronize().map_err(e)?;
        let mut times = vec![];
        for _ in 0..reps {
            let t = Instant::now();
            let c = a.matmul(&b).map_err(e)?;
            dev.synchronize().map_err(e)?;
            times.push(t.elapsed().as_secs_f64());
            drop(c);
        }
        let s = median(times);
        let tflops = 2.0 * (n as f64).powi(3) / s / 1e12;
        println!(
            "{{\"bench\":\"gemm_bf16\",\"n\":{n},\"ms\":{:.4},\"tflops\":{tflops:.1}}}",
            s * 1e3
        );
    }
    Ok(())
}

/// Random bf16 weights `[rows, cols]` scaled like a trained model's (std 0.02).
fn w(dev: &Device, rows: usize, cols: usize, seed: u64) -> Result<Weight> {
    Ok(Weight::Dense(Tensor::randn_seeded(
        0.0,
        0.02,
        (rows, cols),
        DType::BF16,
        dev,
        seed,
    )?))
}

fn decode(dev: &Device, args: &[String]) -> std::result::Result<(), String> {
    let e = |e: tensor_core::Error| e.to_string();
    let prompt: usize = flag(args, "--prompt", 128)?;
    let tokens: usize = flag(args, "--tokens", 128)?;
    let n_layers: usize = flag(args, "--layers", 16)?;
    let (hidden, heads, kv_heads, inter, vocab) = (2048, 32, 8, 8192, 128256);
    let hd = hidden / heads;
    let ones = |n| Tensor::full(1.0, n, DType::BF16, dev);
    let mut layers = Vec::new();
    for l in 0..n_layers as u64 {
        let s = 100 + l * 10;
        layers.push(DecoderLayerSpec {
            attn_norm: ones(hidden).map_err(e)?,
            wq: w(dev, heads * hd, hidden, s).map_err(e)?,
            wk: w(dev, kv_heads * hd, hidden, s + 1).map_err(e)?,
            wv: w(dev, kv_heads * hd, hidden, s + 2).map_err(e)?,
            bq: None,
            bk: None,
            bv: None,
            wo: w(dev, hidden, heads * hd, s + 3).map_err(e)?,
            ffn_norm: ones(hidden).map_err(e)?,
            w_gate: w(dev, inter, hidden, s + 4).map_err(e)?,
            w_up: w(dev, inter, hidden, s + 5).map_err(e)?,
            w_down: w(dev, hidden, inter, s + 6).map_err(e)?,
        });
    }
    let embedding = w(dev, vocab, hidden, 7).map_err(e)?;
    let spec = DecoderSpec {
        vocab_size: vocab,
        hidden_size: hidden,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: hd,
        intermediate_size: inter,
        rms_eps: 1e-5,
        rope_inv_freq: (0..hd / 2)
            .map(|i| 1.0 / 500000f32.powf(2.0 * i as f32 / hd as f32))
            .collect(),
        rope_interleaved: false,
        lm_head: embedding.clone(),
        embedding,
        layers,
        final_norm: ones(hidden).map_err(e)?,
        max_positions: prompt + tokens + 8,
    };
    let weight_bytes: usize = 2
        * (vocab * hidden
            + n_layers
                * (hidden * (heads + 2 * kv_heads) * hd
                    + hidden * heads * hd
                    + 3 * hidden * inter));
    let mut engine = dev
        .backend()
        .fused_decoder(&spec)
        .map_err(e)?
        .ok_or("this device has no fused decoder")?;
    let ids: Vec<u32> = (0..prompt as u32)
        .map(|i| (i * 7919 + 13) % vocab as u32)
        .collect();
    // Warm-up run (compiles kernels, captures the graph), then the timed run.
    let mut result = (0.0, 0.0);
    for round in 0..2 {
        engine.truncate(0).map_err(e)?;
        let t = Instant::now();
        // Greedy, as HF's generate: the decoder picks the token where the logits are.
        let mut next = engine.forward_argmax(&ids).map_err(e)?;
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..tokens {
            next = engine.forward_argmax(&[next]).map_err(e)?;
        }
        let dt = t.elapsed().as_secs_f64();
        if round == 1 {
            result = (prompt as f64 / prefill, tokens as f64 / dt);
        }
    }
    println!(
        "{{\"bench\":\"decode\",\"layers\":{n_layers},\"prompt\":{prompt},\"tokens\":{tokens},\"prefill_tok_s\":{:.1},\"decode_tok_s\":{:.1},\"weight_bytes\":{weight_bytes}}}",
        result.0, result.1
    );
    Ok(())
}

struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<TransformerBlock>,
    ln_f: LayerNorm,
}

impl Gpt2 {
    fn build(vb: &VarBuilder, vocab: usize, seq: usize) -> Result<Gpt2> {
        let (dim, heads, layers) = (768, 12, 12);
        let attn = AttentionConfig {
            causal: true,
            max_positions: seq,
            ..AttentionConfig::new(dim, heads)
        };
        let bc = BlockConfig {
            attn,
            cross_attn: None,
            mlp: MlpKind::Plain(Activation::GeluTanh),
            hidden_dim: 4 * dim,
            mlp_bias: true,
            norm: NormKind::LayerNorm {
                eps: 1e-5,
                bias: true,
            },
            norm_position: NormPosition::Pre,
            dropout: 0.0,
            names: BlockNames::llama(),
        };
        let blocks = (0..layers)
            .map(|i| TransformerBlock::build(&vb.pp("h").pp(i), &bc))
            .collect::<Result<Vec<_>>>()?;
        // GPT-2's initialisation of the tables (std 0.02), so the loss starts near ln(vocab).
        let table = |name: &str, rows: usize| {
            let init = Init::Normal {
                mean: 0.0,
                std: 0.02,
            };
            Embedding::new(vb.pp(name).get_with_init((rows, dim), "weight", init)?)
        };
        Ok(Gpt2 {
            wte: table("wte", vocab)?,
            wpe: table("wpe", seq)?,
            blocks,
            ln_f: LayerNorm::build(&vb.pp("ln_f"), dim, 1e-5, true)?,
        })
    }

    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = (ids.dims()[0], ids.dims()[1]);
        let pos = Tensor::arange(0.0, t as f64, 1.0, DType::I64, ids.device())?;
        let mut x = self.wte.forward(ids)?.add(&self.wpe.forward(&pos)?)?;
        for blk in &self.blocks {
            x = blk.forward_t(&x, &BlockInputs::default(), None, true)?;
        }
        let x = self.ln_f.forward(&x)?;
        let dim = x.dims()[2];
        x.reshape((b * t, dim))?.matmul(&self.wte.weight.t()?)
    }
}

fn train(dev: &Device, args: &[String]) -> std::result::Result<(), String> {
    let e = |e: tensor_core::Error| e.to_string();
    let steps: usize = flag(args, "--steps", 10)?;
    let warmup: usize = flag(args, "--warmup", 3)?;
    let batch: usize = flag(args, "--batch", 8)?;
    let seq: usize = flag(args, "--seq", 1024)?;
    let vocab = 50257;
    manual_seed(0);
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::BF16, dev);
    let model = Gpt2::build(&vb, vocab, seq).map_err(e)?;
    let masters = MasterWeights::new(&vars, DType::F32).map_err(e)?;
    let mut opt = AdamW::new(masters.master_vars(), AdamWConfig::default()).map_err(e)?;
    let ids = |s: u64| -> Result<Tensor> {
        Tensor::rand_seeded(0.0, vocab as f64, (batch, seq + 1), DType::F32, dev, s)?
            .floor()?
            .to_dtype(DType::I64)
    };
    // Per step: wall time, and the host time to queue each phase (forward, backward,
    // optimizer) without waiting for the GPU; a step whose queueing time is close to its wall
    // time is bound by the host, not the GPU.
    let mut rows: Vec<[f64; 5]> = vec![];
    let mut last = 0.0;
    for s in 0..warmup + steps {
        let data = ids(s as u64).map_err(e)?;
        dev.synchronize().map_err(e)?;
        let launches = tensor_cuda::launch_count();
        let t = Instant::now();
        let x = data.narrow(1, 0, seq).map_err(e)?;
        let y = data
            .narrow(1, 1, seq)
            .map_err(e)?
            .reshape(batch * seq)
            .map_err(e)?;
        let logits = model.forward(&x.contiguous().map_err(e)?).map_err(e)?;
        let loss = cross_entropy(&logits, &y, &CrossEntropyOptions::default()).map_err(e)?;
        let t_fwd = t.elapsed().as_secs_f64();
        let grads = loss.backward().map_err(e)?;
        let t_bwd = t.elapsed().as_secs_f64();
        let mg = masters.master_grads(&grads).map_err(e)?;
        opt.step(&mg).map_err(e)?;
        masters.sync().map_err(e)?;
        let t_opt = t.elapsed().as_secs_f64();
        dev.synchronize().map_err(e)?;
        let dt = t.elapsed().as_secs_f64();
        let n = (tensor_cuda::launch_count() - launches) as f64;
        if s >= warmup {
            rows.push([dt, t_fwd, t_bwd - t_fwd, t_opt - t_bwd, n]);
        }
        last = loss.to_f64().map_err(e)?;
    }
    let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
    println!(
        "{{\"bench\":\"train_gpt2\",\"batch\":{batch},\"seq\":{seq},\"step_ms\":{:.2},\"loss\":{last:.4},\"queue_fwd_ms\":{:.2},\"queue_bwd_ms\":{:.2},\"queue_opt_ms\":{:.2},\"launches\":{}}}",
        col(0) * 1e3,
        col(1) * 1e3,
        col(2) * 1e3,
        col(3) * 1e3,
        col(4)
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = || -> std::result::Result<(), String> {
        let dev = tensor_cuda::device(0).map_err(|e| e.to_string())?;
        match args.first().map(String::as_str) {
            Some("gemm") => gemm(&dev, &args),
            Some("decode") => decode(&dev, &args),
            Some("train") => train(&dev, &args),
            _ => Err("usage: gpu_bench gemm|decode|train [options]".into()),
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(m) => {
            eprintln!("gpu_bench: {m}");
            ExitCode::FAILURE
        }
    }
}
