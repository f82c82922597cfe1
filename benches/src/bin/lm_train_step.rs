//! Time training steps of a fixed small transformer LM (the tensor-nn benchmark shape):
//! d_model 256, 4 layers, 4 heads, seq 128, batch 16, vocab 4096, AdamW. Prints one JSON line
//! with the median step time. `benches/lm_train_vs_torch.py` runs it next to PyTorch.
//!
//! Usage: `lm_train_step [--steps N] [--warmup W] [--checkpoint-activations]`.

use std::process::ExitCode;
use std::time::Instant;

use tensor_core::{manual_seed, DType, Result, Tensor};
use tensor_models::{DecoderLm, DecoderLmConfig};
use tensor_nn::loss::{cross_entropy, CrossEntropyOptions};
use tensor_nn::optim::{AdamW, AdamWConfig, Optimizer};
use tensor_nn::{VarBuilder, VarMap};

pub const VOCAB: usize = 4096;
pub const DIM: usize = 256;
pub const LAYERS: usize = 4;
pub const HEADS: usize = 4;
pub const SEQ: usize = 128;
pub const BATCH: usize = 16;
/// SwiGLU hidden width (as in the PyTorch twin of the script).
pub const HIDDEN: usize = 688;

fn run(steps: usize, warmup: usize, ckpt: bool) -> Result<()> {
    let dev = tensor_cpu::device();
    manual_seed(0);
    let cfg = DecoderLmConfig {
        vocab: VOCAB,
        dim: DIM,
        layers: LAYERS,
        heads: HEADS,
        kv_heads: HEADS,
        hidden: HIDDEN,
        max_len: SEQ,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        tie_embeddings: false,
    };
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
    let model = DecoderLm::build(&vb, &cfg, ckpt.then_some(&vars))?;
    let mut opt = AdamW::new(vars.trainable_vars(), AdamWConfig::default())?;
    let ids = |seed: u64| -> Result<Tensor> {
        Tensor::rand_seeded(0.0, VOCAB as f64, (BATCH, SEQ + 1), DType::F32, &dev, seed)?
            .floor()?
            .to_dtype(DType::I64)
    };
    let mut times = Vec::new();
    let mut last = 0.0;
    for s in 0..warmup + steps {
        let batch = ids(s as u64)?;
        let t = Instant::now();
        let x = batch.narrow(1, 0, SEQ)?.contiguous()?;
        let y = batch.narrow(1, 1, SEQ)?.contiguous()?;
        let logits = model.forward_t(&x, true)?;
        let loss = cross_entropy(
            &logits.reshape((BATCH * SEQ, VOCAB))?,
            &y.reshape(BATCH * SEQ)?,
            &CrossEntropyOptions::default(),
        )?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        last = loss.to_f64()?;
        if s >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{{\"impl\":\"tensor-engine\",\"params\":{},\"steps\":{steps},\"median_step_s\":{median:.6},\"min_step_s\":{:.6},\"last_loss\":{last:.4}}}",
        vars.num_parameters(),
        times[0]
    );
    Ok(())
}

fn main() -> ExitCode {
    let mut steps = 10;
    let mut warmup = 2;
    let mut ckpt = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let parsed = match a.as_str() {
            "--steps" => it.next().and_then(|v| v.parse().ok()).map(|v| steps = v),
            "--warmup" => it.next().and_then(|v| v.parse().ok()).map(|v| warmup = v),
            "--checkpoint-activations" => {
                ckpt = true;
                Some(())
            }
            _ => None,
        };
        if parsed.is_none() || steps == 0 {
            eprintln!("usage: lm_train_step [--steps N>0] [--warmup W] [--checkpoint-activations]");
            return ExitCode::from(2);
        }
    }
    match run(steps, warmup, ckpt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lm_train_step: {e}");
            ExitCode::FAILURE
        }
    }
}
