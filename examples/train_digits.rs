//! Train a small CNN on scikit-learn's handwritten digits (1,797 real 8×8 images) on the CPU.
//!
//! ```text
//! cargo run --release -p tensor-examples --example train_digits -- [--epochs N] [--resume]
//! ```
//!
//! Fetches the data on first use (`scripts/fetch_digits.sh`), holds out a fixed 20% test
//! split, trains with AdamW and a warmup-cosine schedule, shows a progress bar, writes
//! `<out>/digits.png` (loss and accuracy curves) and `<out>/digits.safetensors` (model,
//! optimizer state and step; `--resume` continues from it), and prints
//! `test_accuracy: <value>` as its last line.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use tensor_core::{manual_seed, no_grad, DType, Result, Tensor};
use tensor_examples::plot::{save_png, Chart, Series};
use tensor_io::datasets::{accuracy, epoch_batches, load_digits, Dataset};
use tensor_nn::loss::{cross_entropy, CrossEntropyOptions};
use tensor_nn::lr_scheduler::{warmup_cosine, LrScheduler};
use tensor_nn::optim::{AdamW, AdamWConfig, Optimizer};
use tensor_nn::{
    conv2d, linear, Activation, Checkpoint, ConvConfig, Dropout, Flatten, ModuleT, Pool,
    Sequential, VarBuilder, VarMap,
};

const USAGE: &str = "usage: train_digits [options]

Trains a CNN on scikit-learn's 8x8 handwritten digits and prints test_accuracy last.

options:
  --epochs N     total epochs to train (default 40)
  --batch N      mini-batch size (default 32)
  --lr X         peak learning rate of the warmup-cosine schedule (default 3e-3)
  --seed N       seed of the split, initialisation, shuffling and dropout (default 0)
  --data PATH    the digits CSV (default: fetched by scripts/fetch_digits.sh)
  --out DIR      where the checkpoint and the plot go (default runs/digits)
  --resume       continue from DIR/digits.safetensors
  --stop-after N stop after epoch N (as if interrupted; --resume continues the same run)
  --device D     cpu, cuda or cuda:N (default cpu)
  -h, --help     print this help";

const TEST_ROWS: usize = 360;

struct Args {
    epochs: usize,
    batch: usize,
    lr: f64,
    seed: u64,
    data: Option<PathBuf>,
    out: PathBuf,
    resume: bool,
    stop_after: Option<usize>,
    device: String,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> std::result::Result<Option<Args>, String> {
    let mut a = Args {
        epochs: 40,
        batch: 32,
        lr: 3e-3,
        seed: 0,
        data: None,
        out: PathBuf::from("runs/digits"),
        resume: false,
        stop_after: None,
        device: "cpu".into(),
    };
    fn num<T: std::str::FromStr>(
        flag: &str,
        v: Option<String>,
        ok: impl Fn(&T) -> bool,
    ) -> std::result::Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        match v.parse::<T>() {
            Ok(x) if ok(&x) => Ok(x),
            _ => Err(format!("{flag}: invalid value {v:?}")),
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
            "--epochs" => a.epochs = num("--epochs", value(), |&n: &usize| n > 0)?,
            "--batch" => a.batch = num("--batch", value(), |&n: &usize| n > 0)?,
            "--lr" => a.lr = num("--lr", value(), |&x: &f64| x.is_finite() && x > 0.0)?,
            "--seed" => a.seed = num("--seed", value(), |_: &u64| true)?,
            "--data" => a.data = Some(PathBuf::from(value().ok_or("--data needs a value")?)),
            "--out" => a.out = PathBuf::from(value().ok_or("--out needs a value")?),
            "--resume" => a.resume = true,
            "--device" => a.device = value().ok_or("--device needs a value")?,
            "--stop-after" => {
                a.stop_after = Some(num("--stop-after", value(), |&n: &usize| n > 0)?)
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(a))
}

/// The digits CSV: `--data`, or the cached copy, fetched on first use.
fn data_path(args: &Args) -> std::result::Result<PathBuf, String> {
    if let Some(p) = &args.data {
        return Ok(p.clone());
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch_digits.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "fetching the digits failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// conv(1→16) → relu → conv(16→32) → relu → maxpool 2 → flatten → fc(512→128) → relu →
/// dropout → fc(128→10). The names match a PyTorch module with attributes conv1, conv2,
/// fc1, fc2, so the checkpoint loads there with `load_state_dict`.
fn build_model(vb: &VarBuilder) -> Result<Sequential> {
    let same = ConvConfig {
        padding: 1,
        ..Default::default()
    };
    Ok(Sequential::new()
        .add(conv2d(&vb.pp("conv1"), 1, 16, 3, same)?)
        .add(Activation::Relu)
        .add(conv2d(&vb.pp("conv2"), 16, 32, 3, same)?)
        .add(Activation::Relu)
        .add(Pool::max2d(2))
        .add(Flatten::default())
        .add(linear(&vb.pp("fc1"), 32 * 4 * 4, 128)?)
        .add(Activation::Relu)
        .add(Dropout::new(0.25)?)
        .add(linear(&vb.pp("fc2"), 128, 10)?))
}

fn images(x: &Tensor) -> Result<Tensor> {
    let n = x.dims()[0];
    x.reshape((n, 1, 8, 8))
}

fn evaluate(model: &Sequential, data: &Dataset, dev: &tensor_core::Device) -> Result<(f64, f64)> {
    let _g = no_grad();
    let (x, y) = data.tensors(dev)?;
    let logits = model.forward_t(&images(&x)?, false)?;
    let loss = cross_entropy(&logits, &y, &CrossEntropyOptions::default())?.to_f64()?;
    Ok((loss, accuracy(&logits, &y)?))
}

fn run(args: Args) -> std::result::Result<f64, String> {
    let e = |e: tensor_core::Error| e.to_string();
    let dev = tensor_examples::device_from_name(&args.device)?;
    let data = load_digits(data_path(&args)?).map_err(e)?;
    let (train, test) = data.split(TEST_ROWS, args.seed).map_err(e)?;
    println!(
        "digits: {} train / {} test images, device {}, {} threads",
        train.len(),
        test.len(),
        dev.name(),
        rayon_threads()
    );

    manual_seed(args.seed);
    let vars = VarMap::new();
    let model = build_model(&VarBuilder::from_varmap(&vars, DType::F32, &dev)).map_err(e)?;
    let mut opt = AdamW::new(
        vars.trainable_vars(),
        AdamWConfig {
            lr: args.lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )
    .map_err(e)?;
    let steps_per_epoch = train.len().div_ceil(args.batch);
    let total_steps = args.epochs * steps_per_epoch;
    let sched = warmup_cosine(args.lr, steps_per_epoch, total_steps, args.lr * 0.01).map_err(e)?;

    std::fs::create_dir_all(&args.out)
        .map_err(|err| format!("cannot create {}: {err}", args.out.display()))?;
    let ckpt_path = args.out.join("digits.safetensors");
    let mut start_epoch = 0;
    let mut curves: [Vec<(f64, f64)>; 4] = Default::default();
    if args.resume {
        let ck = Checkpoint::load(&ckpt_path, &dev).map_err(e)?;
        vars.load_state_dict(&ck.model, true).map_err(e)?;
        opt.load_state_tensors(&ck.optimizer).map_err(e)?;
        opt.set_step_count(ck.step);
        start_epoch = ck
            .metadata
            .get("epoch")
            .and_then(|s| s.parse().ok())
            .ok_or("the checkpoint has no epoch")?;
        if let Some(c) = ck.metadata.get("curves") {
            curves = parse_curves(c).ok_or("the checkpoint's curves are corrupt")?;
        }
        println!(
            "resumed from {} at epoch {start_epoch}",
            ckpt_path.display()
        );
    }

    let pb = tensor_examples::progress_bar(total_steps as u64);
    pb.set_position((start_epoch * steps_per_epoch) as u64);
    let t0 = Instant::now();
    let mut step = start_epoch * steps_per_epoch;
    let end_epoch = args.stop_after.map_or(args.epochs, |s| s.min(args.epochs));
    for epoch in start_epoch..end_epoch {
        // Dropout draws from the global generator: reseed per epoch so a resumed run
        // continues exactly as an uninterrupted one would.
        manual_seed(args.seed.wrapping_mul(7919).wrapping_add(epoch as u64 + 1));
        let mut sum = 0.0;
        let batches = epoch_batches(train.len(), args.batch, args.seed, epoch as u64, false);
        for idx in &batches {
            opt.set_learning_rate(sched.lr_at(step));
            let (x, y) = train.batch(idx, &dev).map_err(e)?;
            let logits = model.forward_t(&images(&x).map_err(e)?, true).map_err(e)?;
            let loss = cross_entropy(&logits, &y, &CrossEntropyOptions::default()).map_err(e)?;
            let grads = loss.backward().map_err(e)?;
            opt.step(&grads).map_err(e)?;
            sum += loss.to_f64().map_err(e)?;
            step += 1;
            pb.inc(1);
        }
        let train_loss = sum / batches.len() as f64;
        let (test_loss, test_acc) = evaluate(&model, &test, &dev).map_err(e)?;
        let ep = (epoch + 1) as f64;
        curves[0].push((ep, train_loss));
        curves[1].push((ep, test_loss));
        curves[2].push((ep, evaluate(&model, &train, &dev).map_err(e)?.1));
        curves[3].push((ep, test_acc));
        pb.set_message(format!("loss {train_loss:.4} test acc {test_acc:.4}"));
        let line = format!(
            "epoch {:3}  train loss {train_loss:.4}  test loss {test_loss:.4}  test acc {test_acc:.4}",
            epoch + 1
        );
        // indicatif drops println output when stderr is not a terminal (CI logs).
        if pb.is_hidden() {
            println!("{line}");
        } else {
            pb.println(line);
        }
        let ck = Checkpoint {
            model: vars.state_dict(),
            optimizer: opt.state_tensors().into_iter().collect::<HashMap<_, _>>(),
            step: opt.step_count(),
            metadata: BTreeMap::from([
                ("epoch".to_string(), (epoch + 1).to_string()),
                ("curves".to_string(), format_curves(&curves)),
            ]),
        };
        ck.save(&ckpt_path).map_err(e)?;
    }
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let (_, test_acc) = evaluate(&model, &test, &dev).map_err(e)?;
    let png = args.out.join("digits.png");
    let series = |label: &str, color, c: &Vec<(f64, f64)>| Series {
        label: label.into(),
        color,
        points: c.clone(),
    };
    save_png(
        &png,
        &[
            Chart {
                title: "loss per epoch".into(),
                series: vec![
                    series("train", [200, 30, 30], &curves[0]),
                    series("test", [30, 30, 200], &curves[1]),
                ],
            },
            Chart {
                title: "accuracy per epoch".into(),
                series: vec![
                    series("train", [200, 30, 30], &curves[2]),
                    series("test", [30, 30, 200], &curves[3]),
                ],
            },
        ],
    )?;
    println!(
        "trained {} steps in {secs:.1} s; checkpoint {}, plot {}",
        step - start_epoch * steps_per_epoch,
        ckpt_path.display(),
        png.display()
    );
    Ok(test_acc)
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Curves in the checkpoint metadata: `x,y;x,y|x,y;…` (four series).
fn format_curves(c: &[Vec<(f64, f64)>; 4]) -> String {
    c.iter()
        .map(|s| {
            s.iter()
                .map(|(x, y)| format!("{x},{y}"))
                .collect::<Vec<_>>()
                .join(";")
        })
        .collect::<Vec<_>>()
        .join("|")
}

fn parse_curves(s: &str) -> Option<[Vec<(f64, f64)>; 4]> {
    let mut out: [Vec<(f64, f64)>; 4] = Default::default();
    let parts: Vec<&str> = s.split('|').collect();
    if parts.len() != 4 {
        return None;
    }
    for (o, p) in out.iter_mut().zip(parts) {
        for pt in p.split(';').filter(|t| !t.is_empty()) {
            let (x, y) = pt.split_once(',')?;
            o.push((x.parse().ok()?, y.parse().ok()?));
        }
    }
    Some(out)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("train_digits: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(acc) => {
            println!("test_accuracy: {acc:.4}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("train_digits: {msg}");
            ExitCode::FAILURE
        }
    }
}
