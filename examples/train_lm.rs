//! Train a small byte-level transformer language model on real English text (the Debian
//! `fortunes` files) on the CPU, then sample from it.
//!
//! ```text
//! cargo run --release -p tensor-examples --example train_lm -- [--steps N] [--checkpoint-activations]
//! ```
//!
//! AdamW with a warmup-cosine schedule and gradient clipping by global norm; prints the
//! training and held-out loss as it falls, tokens per second, then a text sample.

use std::process::ExitCode;
use std::time::Instant;

use tensor_core::{manual_seed, no_grad, DType, Device, Result, Tensor};
use tensor_io::text::{lm_batch, load_fortunes, ByteTokenizer};
use tensor_models::{DecoderLm, DecoderLmConfig};
use tensor_nn::loss::{cross_entropy, CrossEntropyOptions};
use tensor_nn::lr_scheduler::{warmup_cosine, LrScheduler};
use tensor_nn::optim::{clip_coef, grad_norm, AdamW, AdamWConfig, Optimizer};
use tensor_nn::{VarBuilder, VarMap};

const USAGE: &str = "usage: train_lm [options]

Trains a byte-level transformer LM on the fortunes corpus and samples from it.

options:
  --steps N                 optimizer steps (default 400)
  --batch N                 sequences per step (default 16)
  --seq N                   tokens per sequence (default 128)
  --dim N                   model width (default 256)
  --layers N                transformer blocks (default 4)
  --heads N                 attention heads (default 4)
  --lr X                    peak learning rate (default 2e-3)
  --clip X                  max global gradient norm (default 1.0)
  --checkpoint-activations  recompute block activations in backward (less memory)
  --sample N                bytes to sample at the end (default 300)
  --prompt TEXT             start of the sample (default \"The \")
  --seed N                  seed (default 0)
  --data DIR                fortunes folder (default: from scripts/fetch_fortunes.sh)
  -h, --help                print this help";

struct Args {
    steps: usize,
    batch: usize,
    seq: usize,
    dim: usize,
    layers: usize,
    heads: usize,
    lr: f64,
    clip: f64,
    ckpt: bool,
    sample: usize,
    prompt: String,
    seed: u64,
    data: Option<String>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> std::result::Result<Option<Args>, String> {
    let mut a = Args {
        steps: 400,
        batch: 16,
        seq: 128,
        dim: 256,
        layers: 4,
        heads: 4,
        lr: 2e-3,
        clip: 1.0,
        ckpt: false,
        sample: 300,
        prompt: "The ".into(),
        seed: 0,
        data: None,
    };
    fn pos(flag: &str, v: Option<String>) -> std::result::Result<usize, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{flag} expects a positive integer, got {v:?}")),
        }
    }
    fn real(flag: &str, v: Option<String>) -> std::result::Result<f64, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => Err(format!("{flag} expects a finite number > 0, got {v:?}")),
        }
    }
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next());
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--steps" => a.steps = pos("--steps", value())?,
            "--batch" => a.batch = pos("--batch", value())?,
            "--seq" => a.seq = pos("--seq", value())?,
            "--dim" => a.dim = pos("--dim", value())?,
            "--layers" => a.layers = pos("--layers", value())?,
            "--heads" => a.heads = pos("--heads", value())?,
            "--lr" => a.lr = real("--lr", value())?,
            "--clip" => a.clip = real("--clip", value())?,
            "--checkpoint-activations" => a.ckpt = true,
            "--sample" => a.sample = pos("--sample", value())?,
            "--prompt" => a.prompt = value().ok_or("--prompt needs a value")?,
            "--seed" => {
                let v = value().ok_or("--seed needs a value")?;
                a.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: invalid value {v:?}"))?;
            }
            "--data" => a.data = Some(value().ok_or("--data needs a value")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !a.dim.is_multiple_of(a.heads) || !(a.dim / a.heads).is_multiple_of(2) {
        return Err(format!(
            "--heads {} must divide --dim {} into an even head size",
            a.heads, a.dim
        ));
    }
    Ok(Some(a))
}

fn corpus_dir(args: &Args) -> std::result::Result<String, String> {
    if let Some(d) = &args.data {
        return Ok(d.clone());
    }
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch_fortunes.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Mean cross entropy of next-byte prediction.
fn lm_loss(model: &DecoderLm, x: &Tensor, y: &Tensor, train: bool) -> Result<Tensor> {
    let logits = model.forward_t(x, train)?;
    let v = logits.dims()[2];
    let n = x.elem_count();
    cross_entropy(
        &logits.reshape((n, v))?,
        &y.reshape(n)?,
        &CrossEntropyOptions::default(),
    )
}

/// Sample `n` bytes after `prompt` with temperature 0.8 from the seeded generator.
fn sample(model: &DecoderLm, prompt: &str, n: usize, seed: u64, dev: &Device) -> Result<String> {
    let _g = no_grad();
    let tok = ByteTokenizer;
    let mut ids = tok.encode(prompt);
    if ids.is_empty() {
        ids.push(b'\n' as u32);
    }
    let max = model.config().max_len;
    let mut rng = seed ^ 0x2545_f491_4f6c_dd1d;
    for _ in 0..n {
        let ctx: Vec<i64> = ids[ids.len().saturating_sub(max)..]
            .iter()
            .map(|&t| t as i64)
            .collect();
        let len = ctx.len();
        let logits = model.forward_t(&Tensor::from_vec(ctx, (1, len), dev)?, false)?;
        let last = logits
            .narrow(1, len - 1, 1)?
            .reshape(ByteTokenizer::VOCAB)?;
        let probs = last.mul_scalar(1.0 / 0.8)?.softmax(0)?.to_vec::<f32>()?;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut u = (rng >> 11) as f64 / (1u64 << 53) as f64;
        let mut next = probs.len() - 1;
        for (i, p) in probs.iter().enumerate() {
            u -= *p as f64;
            if u <= 0.0 {
                next = i;
                break;
            }
        }
        ids.push(next as u32);
    }
    Ok(tok.decode(&ids))
}

fn run(args: Args) -> std::result::Result<(), String> {
    let e = |e: tensor_core::Error| e.to_string();
    let dev = tensor_cpu::device();
    let text = load_fortunes(corpus_dir(&args)?).map_err(e)?;
    let tokens = ByteTokenizer.encode(&text);
    // The last 5% is held out.
    let cut = tokens.len() * 95 / 100;
    let (train, held) = tokens.split_at(cut);
    println!(
        "corpus: {} bytes of fortunes ({} train / {} held out)",
        tokens.len(),
        train.len(),
        held.len()
    );

    manual_seed(args.seed);
    let cfg = DecoderLmConfig {
        vocab: ByteTokenizer::VOCAB,
        dim: args.dim,
        layers: args.layers,
        heads: args.heads,
        kv_heads: args.heads,
        hidden: args.dim * 8 / 3 / 32 * 32,
        max_len: args.seq,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        tie_embeddings: false,
    };
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
    let model = DecoderLm::build(&vb, &cfg, args.ckpt.then_some(&vars)).map_err(e)?;
    println!(
        "model: {} parameters, {} layers, width {}, {} heads, context {}{}",
        vars.num_parameters(),
        cfg.layers,
        cfg.dim,
        cfg.heads,
        cfg.max_len,
        if args.ckpt {
            ", activation checkpointing"
        } else {
            ""
        }
    );
    let params = vars.trainable_vars();
    let param_tensors: Vec<Tensor> = params.iter().map(|(_, v)| v.as_tensor().clone()).collect();
    let param_refs: Vec<&Tensor> = param_tensors.iter().collect();
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: args.lr,
            weight_decay: 0.1,
            betas: (0.9, 0.95),
            ..Default::default()
        },
    )
    .map_err(e)?;
    let warmup = (args.steps / 10).max(1).min(args.steps - 1);
    let sched = if args.steps > 1 {
        Some(warmup_cosine(args.lr, warmup, args.steps, args.lr * 0.1).map_err(e)?)
    } else {
        None
    };
    let eval = |seed: u64| -> Result<f64> {
        let _g = no_grad();
        let (x, y) = lm_batch(held, args.batch, args.seq, seed, &dev)?;
        lm_loss(&model, &x, &y, false)?.to_f64()
    };
    println!(
        "step     0  held-out loss {:.4}  (uniform over bytes: {:.4})",
        eval(1).map_err(e)?,
        (ByteTokenizer::VOCAB as f64).ln()
    );
    let report = (args.steps / 10).max(1);
    let t0 = Instant::now();
    let mut timed_tokens = 0usize;
    let mut timed_secs = 0.0;
    let mut sum = 0.0;
    for step in 0..args.steps {
        let ts = Instant::now();
        if let Some(s) = &sched {
            opt.set_learning_rate(s.lr_at(step));
        }
        let seed = args
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(step as u64 + 7);
        let (x, y) = lm_batch(train, args.batch, args.seq, seed, &dev).map_err(e)?;
        let loss = lm_loss(&model, &x, &y, true).map_err(e)?;
        let grads = loss.backward().map_err(e)?;
        let norm = grad_norm(&grads, &param_refs, 2.0).map_err(e)?;
        opt.step_scaled(&grads, clip_coef(norm, args.clip))
            .map_err(e)?;
        sum += loss.to_f64().map_err(e)?;
        if step > 0 {
            // The first step pays one-off costs (allocations, optimizer state).
            timed_tokens += args.batch * args.seq;
            timed_secs += ts.elapsed().as_secs_f64();
        }
        if (step + 1) % report == 0 || step + 1 == args.steps {
            let n = if (step + 1) % report == 0 {
                report
            } else {
                (step + 1) % report
            };
            println!(
                "step {:5}  train loss {:.4}  held-out loss {:.4}  grad norm {norm:.3}  lr {:.2e}",
                step + 1,
                sum / n as f64,
                eval(1).map_err(e)?,
                opt.learning_rate()
            );
            sum = 0.0;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if timed_secs > 0.0 {
        println!(
            "trained {} steps in {secs:.1} s: {:.0} tokens/s",
            args.steps,
            timed_tokens as f64 / timed_secs
        );
    }
    println!("--- sample ---");
    println!(
        "{}",
        sample(&model, &args.prompt, args.sample, args.seed, &dev).map_err(e)?
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("train_lm: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("train_lm: {msg}");
            ExitCode::FAILURE
        }
    }
}
