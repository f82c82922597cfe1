//! The whole raw-tensor API on one page: a 2 → 32 → 32 → 2 tanh MLP fitted with hand-written
//! SGD to two interleaved spirals. No `tensor-nn`: parameters are plain `Var`s, the loss is
//! log-softmax + gather, gradients come from `loss.backward()`, and the update is
//! `var.set(var − lr·grad)`.
//!
//! ```text
//! cargo run --release -p tensor-examples --example train_mlp -- --steps 2000 --lr 0.5
//! ```

use std::process::ExitCode;
use std::time::Instant;

use tensor_core::{manual_seed, no_grad, DType, Device, Result, Tensor, Var};

const USAGE: &str = "usage: train_mlp [--steps N] [--lr X]

Fits a small MLP to two interleaved spirals with plain SGD and prints the loss and the
final training accuracy.

options:
  --steps N   number of full-batch SGD steps (default 2000, must be > 0)
  --lr X      learning rate (default 0.5, must be a finite number > 0)
  -h, --help  print this help";

/// Points per spiral arm.
const POINTS_PER_CLASS: usize = 200;
const HIDDEN: usize = 32;

struct Args {
    steps: usize,
    lr: f64,
}

/// Parse `--steps N` / `--lr X` (also `--flag=value`). `Ok(None)` means help was requested.
fn parse_args(mut it: impl Iterator<Item = String>) -> std::result::Result<Option<Args>, String> {
    let mut args = Args {
        steps: 2000,
        lr: 0.5,
    };
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--steps" => {
                let v = value("--steps")?;
                args.steps = match v.parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("--steps expects a positive integer, got {v:?}")),
                };
            }
            "--lr" => {
                let v = value("--lr")?;
                args.lr = match v.parse::<f64>() {
                    Ok(x) if x.is_finite() && x > 0.0 => x,
                    _ => return Err(format!("--lr expects a finite number > 0, got {v:?}")),
                };
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(args))
}

/// Two interleaved spirals, built with tensor ops so the data set is itself an API demo.
/// Returns `x: [2n, 2]` (f32) and `labels: [2n, 1]` (i64, the shape `gather` wants).
fn spirals(n: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    // Starting at t = 0.05 keeps the two arms from meeting at the origin, where no classifier
    // could separate them.
    let t = Tensor::linspace(0.05, 1.0, n, DType::F32, dev)?;
    let t = Tensor::cat(&[&t, &t], 0)?;
    let class = Tensor::cat(
        &[
            &Tensor::zeros(n, DType::F32, dev)?,
            &Tensor::ones(n, DType::F32, dev)?,
        ],
        0,
    )?;
    // One and a half turns per arm; the second arm is the first rotated by π.
    let turns = 1.5 * std::f64::consts::TAU;
    let theta = (&t.affine(turns, 0.0)? + &class.affine(std::f64::consts::PI, 0.0)?)?;
    let radius = t.affine(2.0, 0.0)?;
    let x = (&radius * &theta.cos()?)?;
    let y = (&radius * &theta.sin()?)?;
    let points = Tensor::stack(&[&x, &y], 1)?;
    // Noise comes from the seeded global generator, so every run sees the same data.
    let noise = Tensor::randn(0.0, 0.05, (2 * n, 2), DType::F32, dev)?;
    let labels = class.to_dtype(DType::I64)?.unsqueeze(1)?;
    Ok(((&points + &noise)?, labels))
}

/// One linear layer's parameters.
struct Linear {
    w: Var,
    b: Var,
}

impl Linear {
    fn new(fan_in: usize, fan_out: usize, dev: &Device) -> Result<Linear> {
        // std 1/√fan_in keeps tanh pre-activations near unit scale, so nothing saturates at
        // step 0 and gradients reach the first layer.
        let std = 1.0 / (fan_in as f64).sqrt();
        Ok(Linear {
            w: Var::randn(0.0, std, (fan_in, fan_out), DType::F32, dev)?,
            b: Var::zeros(fan_out, DType::F32, dev)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // `[N, out] + [out]` broadcasts the bias over the batch; its gradient is summed back.
        &x.matmul(&self.w)? + &*self.b
    }
}

struct Mlp {
    layers: [Linear; 3],
}

impl Mlp {
    fn new(dev: &Device) -> Result<Mlp> {
        Ok(Mlp {
            layers: [
                Linear::new(2, HIDDEN, dev)?,
                Linear::new(HIDDEN, HIDDEN, dev)?,
                Linear::new(HIDDEN, 2, dev)?,
            ],
        })
    }

    /// Logits `[N, 2]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [l1, l2, l3] = &self.layers;
        let h = l1.forward(x)?.tanh()?;
        let h = l2.forward(&h)?.tanh()?;
        l3.forward(&h)
    }

    fn params(&self) -> impl Iterator<Item = &Var> {
        self.layers.iter().flat_map(|l| [&l.w, &l.b])
    }
}

/// Mean negative log-likelihood of the true class. log_softmax has its own backward rule, so
/// this is as stable as a fused cross-entropy without being a special op.
fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    logits.log_softmax(1)?.gather(labels, 1)?.mean_all()?.neg()
}

fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let pred = logits.argmax(1)?;
    pred.eq(&labels.squeeze(1)?)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_f64()
}

/// One full-batch SGD step; returns the loss before the update.
fn sgd_step(model: &Mlp, x: &Tensor, labels: &Tensor, lr: f64) -> Result<f64> {
    let loss = cross_entropy(&model.forward(x)?, labels)?;
    let grads = loss.backward()?;
    // Without the guard, `var - lr·grad` would itself be recorded as a graph node hanging off
    // the variable: wasted work, and memory held until the result is dropped.
    let _guard = no_grad();
    for p in model.params() {
        // A Var that does not reach the loss has no entry; here every one does.
        let Some(g) = grads.get(p) else { continue };
        p.set(&(&**p - &(g * lr)?)?)?;
    }
    loss.to_f64()
}

fn train(args: &Args) -> Result<()> {
    let dev = tensor_cpu::device();
    // One seed fixes the data noise and the initial weights: the printed curve is reproducible.
    manual_seed(0);
    let (x, labels) = spirals(POINTS_PER_CLASS, &dev)?;
    let model = Mlp::new(&dev)?;

    println!(
        "two spirals: {} points, MLP 2-{HIDDEN}-{HIDDEN}-2 (tanh), {} steps of SGD at lr {}",
        x.dims()[0],
        args.steps,
        args.lr
    );
    let every = (args.steps / 10).max(1);
    let start = Instant::now();
    for step in 1..=args.steps {
        let loss = sgd_step(&model, &x, &labels, args.lr)?;
        if !loss.is_finite() {
            return Err(tensor_core::Error::msg(format!(
                "loss became {loss} at step {step}; try a smaller --lr"
            )));
        }
        if step == 1 || step % every == 0 || step == args.steps {
            println!("step {step:>6}  loss {loss:.4}");
        }
    }
    let train_time = start.elapsed();

    // Evaluation needs no graph at all.
    let _guard = no_grad();
    let logits = model.forward(&x)?;
    println!(
        "final loss {:.4}, train accuracy {:.1}% ({:.2}s)",
        cross_entropy(&logits, &labels)?.to_f64()?,
        100.0 * accuracy(&logits, &labels)?,
        train_time.as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("error: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match train(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_args;

    fn parse(args: &[&str]) -> Result<Option<(usize, f64)>, String> {
        parse_args(args.iter().map(|s| s.to_string())).map(|a| a.map(|a| (a.steps, a.lr)))
    }

    #[test]
    fn flags_parse_in_both_spellings() {
        assert_eq!(parse(&[]), Ok(Some((2000, 0.5))));
        assert_eq!(parse(&["--steps", "300", "--lr=0.1"]), Ok(Some((300, 0.1))));
        assert_eq!(parse(&["--help"]), Ok(None));
    }

    #[test]
    fn bad_flags_are_errors() {
        for bad in [
            &["--steps"][..],
            &["--steps", "0"],
            &["--steps", "-3"],
            &["--lr", "nan"],
            &["--lr", "0"],
            &["--lr=abc"],
            &["--epochs", "3"],
            &["300"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
