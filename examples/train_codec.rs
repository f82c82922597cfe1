//! Train the neural audio codec (`tensor_audio::codec`) on a folder of speech.
//!
//! ```text
//! cargo run --release -p tensor-examples --example train_codec -- --data DIR [--steps N]
//! ```
//!
//! `DIR` is a corpus root with `train/` and `heldout/` folders of WAV files (what
//! `scripts/fetch_speech.sh` prints). Trains on random crops with AdamW and a warmup-cosine
//! schedule, a random number of quantizers per batch (quantizer dropout, so one model serves
//! every bitrate), shows a progress bar, writes `<out>/codec.safetensors` (weights, EMA
//! codebooks, optimizer state, step, config; `--resume` continues from it) and
//! `<out>/losses.png`, and finally scores the held-out clips at each bitrate up to 6 kbps
//! next to µ-law baselines (the table is printed and saved to `<out>/eval.md`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use tensor_audio::codec::{Codec, CodecConfig};
use tensor_audio::dataset::{AudioFolder, AudioLoader};
use tensor_audio::losses::{CodecLoss, CodecLossConfig};
use tensor_core::{manual_seed, DType};
use tensor_examples::codec_eval::{evaluate, format_table};
use tensor_examples::curves::{format_curves, parse_curves, Curves};
use tensor_examples::plot::{save_png, Chart, Series};
use tensor_io::resample::ResampleQuality;
use tensor_nn::lr_scheduler::{warmup_cosine, LrScheduler};
use tensor_nn::optim::{clip_grad_norm, AdamW, AdamWConfig, Optimizer};
use tensor_nn::{Checkpoint, VarBuilder, VarMap};

const USAGE: &str = "usage: train_codec --data DIR [options]

Trains the neural audio codec on DIR/train, then scores it on DIR/heldout.

options:
  --data DIR        corpus root with train/ and heldout/ WAV folders (required)
  --steps N         total optimizer steps (default 3000)
  --out DIR         where codec.safetensors, losses.png and eval.md go (default runs/codec)
  --resume          continue from DIR/codec.safetensors
  --stop-after N    stop after step N (as if interrupted; --resume continues the run)
  --device D        cpu, cuda or cuda:N (default cpu)
  --batch-size N    clips per batch (default 8)
  --crop-ms N       length of the random training crops in ms (default 500)
  --lr X            peak learning rate (default 1e-3)
  --n-q N           most quantizers (default 12 = 6 kbps); each batch uses 1..=N
  --channels N      base channels of the encoder/decoder (default 16)
  --w-waveform X    weight of the waveform L1 loss (default 1)
  --w-stft X        weight of the multi-scale STFT loss (default 1)
  --w-mel X         weight of the log-mel L1 loss (default 1; 0 skips it)
  --w-snr X         weight of the negative SNR loss in dB (default 3; 0 skips it)
  --seed N          seed of initialisation, crops and quantizer dropout (default 0)
  --save-every N    write the checkpoint every N steps (default 100)
  --eval-clips N    score at most N held-out clips (default all); 0 skips the evaluation
  --threads N       CPU threads (default: all cores)
  -h, --help        print this help";

struct Args {
    data: PathBuf,
    steps: usize,
    out: PathBuf,
    resume: bool,
    stop_after: Option<usize>,
    device: String,
    batch: usize,
    crop_ms: usize,
    lr: f64,
    n_q: usize,
    channels: usize,
    /// Loss weights: waveform, stft, mel, snr.
    weights: [f64; 4],
    seed: u64,
    save_every: usize,
    eval_clips: Option<usize>,
    threads: Option<usize>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> std::result::Result<Option<Args>, String> {
    let mut data = None;
    let mut a = Args {
        data: PathBuf::new(),
        steps: 3000,
        out: PathBuf::from("runs/codec"),
        resume: false,
        stop_after: None,
        device: "cpu".into(),
        batch: 8,
        crop_ms: 500,
        lr: 1e-3,
        n_q: 12,
        channels: 16,
        weights: [1.0, 1.0, 1.0, 3.0],
        seed: 0,
        save_every: 100,
        eval_clips: None,
        threads: None,
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
    let pos = |n: &usize| *n > 0;
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next());
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--data" => data = Some(PathBuf::from(value().ok_or("--data needs a value")?)),
            "--steps" => a.steps = num("--steps", value(), pos)?,
            "--out" => a.out = PathBuf::from(value().ok_or("--out needs a value")?),
            "--resume" => a.resume = true,
            "--stop-after" => a.stop_after = Some(num("--stop-after", value(), pos)?),
            "--device" => a.device = value().ok_or("--device needs a value")?,
            "--batch-size" => a.batch = num("--batch-size", value(), pos)?,
            "--crop-ms" => a.crop_ms = num("--crop-ms", value(), |&n: &usize| n >= 20)?,
            "--lr" => a.lr = num("--lr", value(), |&x: &f64| x.is_finite() && x > 0.0)?,
            "--n-q" => a.n_q = num("--n-q", value(), pos)?,
            "--channels" => {
                a.channels = num("--channels", value(), |&n: &usize| {
                    n >= 2 && n.is_multiple_of(2)
                })?
            }
            "--w-waveform" | "--w-stft" | "--w-mel" | "--w-snr" => {
                let i = ["--w-waveform", "--w-stft", "--w-mel", "--w-snr"]
                    .iter()
                    .position(|f| *f == flag)
                    .expect("matched above");
                a.weights[i] = num(&flag, value(), |&x: &f64| x.is_finite() && x >= 0.0)?;
            }
            "--seed" => a.seed = num("--seed", value(), |_: &u64| true)?,
            "--save-every" => a.save_every = num("--save-every", value(), pos)?,
            "--eval-clips" => {
                let n: usize = num("--eval-clips", value(), |_| true)?;
                a.eval_clips = Some(n);
            }
            "--threads" => a.threads = Some(num("--threads", value(), pos)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    a.data = data.ok_or("--data DIR is required")?;
    Ok(Some(a))
}

/// The quantizers of step `step`: uniform in `1..=max`, from a hash of the seed and the step,
/// so a resumed run draws the same sequence.
fn n_q_at(seed: u64, step: usize, max: usize) -> usize {
    let mut z = seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    1 + (z % max as u64) as usize
}

fn plot(path: &std::path::Path, curves: &Curves) -> std::result::Result<(), String> {
    let colors = [
        [200, 30, 30],
        [30, 30, 200],
        [30, 150, 30],
        [180, 120, 0],
        [120, 0, 160],
        [0, 140, 160],
    ];
    let series = |names: &[&str]| -> Vec<Series> {
        names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                curves.get(*n).map(|p| Series {
                    label: n.to_string(),
                    color: colors[i % colors.len()],
                    points: p.clone(),
                })
            })
            .collect()
    };
    let mut charts = vec![
        Chart {
            title: "total loss (mean per logging window)".into(),
            series: series(&["total"]),
        },
        Chart {
            title: "reconstruction terms".into(),
            series: series(&["stft_sc", "stft_logmag", "mel_l1"]),
        },
        Chart {
            title: "waveform L1 and commitment".into(),
            series: series(&["waveform_l1", "commitment", "codebook"]),
        },
        Chart {
            title: "negative SNR over the batch (dB)".into(),
            series: series(&["neg_snr"]),
        },
    ];
    // Terms a run does not use (the codebook loss of EMA codebooks, SNR at weight 0).
    charts.retain(|c| !c.series.is_empty());
    save_png(path, &charts)
}

fn run(args: Args) -> std::result::Result<(), String> {
    let e = |e: tensor_core::Error| e.to_string();
    let dev = tensor_examples::device_from_name(&args.device)?;
    let (train_dir, heldout_dir) = (args.data.join("train"), args.data.join("heldout"));
    for d in [&train_dir, &heldout_dir] {
        if !d.is_dir() {
            return Err(format!(
                "{} is not a folder: --data must hold train/ and heldout/ \
                 (scripts/fetch_speech.sh builds one)",
                d.display()
            ));
        }
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|err| format!("cannot create {}: {err}", args.out.display()))?;
    let ckpt_path = args.out.join("codec.safetensors");

    // On resume the stored config wins (the weights must match it).
    let prev = if args.resume {
        Some(Checkpoint::load(&ckpt_path, &dev).map_err(e)?)
    } else {
        None
    };
    let cfg = match &prev {
        Some(ck) => CodecConfig::from_metadata(&ck.metadata).map_err(e)?,
        None => CodecConfig {
            channels: args.channels,
            num_quantizers: args.n_q,
            ..Default::default()
        },
    };
    let n_q_max = args.n_q.min(cfg.num_quantizers);
    let sr = cfg.sample_rate;
    let folder = AudioFolder::open(&train_dir, sr, ResampleQuality::High).map_err(e)?;
    let crop = (args.crop_ms * sr as usize / 1000).div_ceil(cfg.hop_length()) * cfg.hop_length();
    let mut loader = AudioLoader::new(&folder, args.batch, crop, args.seed).map_err(e)?;
    let per_epoch = folder.len() / args.batch;
    if per_epoch == 0 {
        return Err(format!(
            "{} clips in {} are fewer than one batch of {}",
            folder.len(),
            train_dir.display(),
            args.batch
        ));
    }

    manual_seed(args.seed);
    let vars = VarMap::new();
    let codec = Codec::new(
        &VarBuilder::from_varmap(&vars, DType::F32, &dev),
        cfg.clone(),
    )
    .map_err(e)?;
    let [waveform, stft, mel, snr] = args.weights;
    let mut loss_cfg = CodecLossConfig {
        waveform,
        stft,
        mel,
        snr,
        ..CodecLossConfig::new(sr)
    };
    // Windows longer than twice the crop cannot be reflect-padded.
    loss_cfg.stft_scales.retain(|&n| n / 2 < crop);
    let loss_fn = CodecLoss::new(loss_cfg, &dev).map_err(e)?;
    let params = vars.trainable_vars();
    let param_tensors: Vec<_> = params.iter().map(|(_, v)| v.as_tensor().clone()).collect();
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: args.lr,
            betas: (0.8, 0.99),
            weight_decay: 1e-4,
            ..Default::default()
        },
    )
    .map_err(e)?;
    let warmup = (args.steps / 20).clamp(1, 200).min(args.steps - 1);
    let sched = if args.steps > 1 {
        Some(warmup_cosine(args.lr, warmup, args.steps, args.lr * 0.05).map_err(e)?)
    } else {
        None
    };

    let mut curves = Curves::new();
    let mut step = 0usize;
    if let Some(ck) = prev {
        vars.load_state_dict(&ck.model, true).map_err(e)?;
        opt.load_state_tensors(&ck.optimizer).map_err(e)?;
        opt.set_step_count(ck.step);
        step = ck.step as usize;
        if let Some(c) = ck.metadata.get("curves") {
            curves = parse_curves(c).ok_or("the checkpoint's curves are corrupt")?;
        }
        println!("resumed from {} at step {step}", ckpt_path.display());
    }
    let params_n = vars.num_trainable_parameters();
    println!(
        "train_codec: {} clips, crops of {crop} samples, batch {}, {params_n} parameters, \
         hop {} ({} frames/s), up to {n_q_max} quantizers ({:.1} kbit/s), device {}",
        folder.len(),
        args.batch,
        cfg.hop_length(),
        cfg.frame_rate(),
        cfg.bitrate_kbps(n_q_max),
        dev.name()
    );

    let save = |step: usize, opt: &AdamW, curves: &Curves| -> std::result::Result<(), String> {
        let mut metadata = cfg.to_metadata();
        metadata.insert("curves".into(), format_curves(curves));
        metadata.insert("train_seed".into(), args.seed.to_string());
        Checkpoint {
            model: vars.state_dict(),
            optimizer: opt.state_tensors().into_iter().collect::<HashMap<_, _>>(),
            step: step as u64,
            metadata,
        }
        .save(&ckpt_path)
        .map_err(e)
    };

    let end = args.stop_after.map_or(args.steps, |s| s.min(args.steps));
    let pb = tensor_examples::progress_bar(args.steps as u64);
    pb.set_position(step as u64);
    let t0 = Instant::now();
    let start = step;
    let log_every = 10usize;
    let mut window: BTreeMap<&'static str, (f64, usize)> = BTreeMap::new();
    // The loader's epochs are seeded by their index: skip the ones a resumed run consumed.
    loader.set_epoch((step / per_epoch) as u64);
    let mut batches = loader.epoch(&dev);
    for _ in 0..step % per_epoch {
        batches.next();
    }
    while step < end {
        let x = match batches.next() {
            Some(b) => b.map_err(e)?,
            None => {
                batches = loader.epoch(&dev);
                continue;
            }
        };
        if let Some(s) = &sched {
            opt.set_learning_rate(s.lr_at(step));
        }
        let n_q = n_q_at(args.seed, step, n_q_max);
        let out = codec.forward_train(&x, n_q, true).map_err(e)?;
        let terms = loss_fn.compute(&x, &out).map_err(e)?;
        let mut grads = terms.total.backward().map_err(e)?;
        let refs: Vec<_> = param_tensors.iter().collect();
        clip_grad_norm(&mut grads, &refs, 1.0, 2.0).map_err(e)?;
        opt.step(&grads).map_err(e)?;
        step += 1;
        pb.inc(1);
        for (name, v) in terms.values().map_err(e)? {
            let w = window.entry(name).or_insert((0.0, 0));
            w.0 += v;
            w.1 += 1;
        }
        if step.is_multiple_of(log_every) || step == end {
            let mut msg = String::new();
            for (name, (sum, n)) in std::mem::take(&mut window) {
                let mean = sum / n as f64;
                curves
                    .entry(name.to_string())
                    .or_default()
                    .push((step as f64, mean));
                if matches!(name, "total" | "mel_l1" | "waveform_l1" | "neg_snr") {
                    msg.push_str(&format!("{name} {mean:.4} "));
                }
            }
            pb.set_message(msg.clone());
            if pb.is_hidden() && step.is_multiple_of(log_every * 10) {
                println!("step {step}: {msg}");
            }
        }
        if step.is_multiple_of(args.save_every) || step == end {
            save(step, &opt, &curves)?;
        }
    }
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let png = args.out.join("losses.png");
    plot(&png, &curves)?;
    println!(
        "trained {} steps in {secs:.1} s ({:.2} s/step); checkpoint {}, plot {}",
        step - start,
        secs / (step - start).max(1) as f64,
        ckpt_path.display(),
        png.display()
    );
    if step < args.steps || args.eval_clips == Some(0) {
        return Ok(());
    }
    let (rows, clips, seconds) = evaluate(&codec, &heldout_dir, args.eval_clips, &dev)?;
    let table = format_table(&rows);
    println!("held-out: {clips} clips, {seconds:.1} s of audio\n{table}");
    let md = args.out.join("eval.md");
    tensor_nn::checkpoint::write_atomic(
        &md,
        format!("held-out: {clips} clips, {seconds:.1} s of audio\n\n{table}").as_bytes(),
    )
    .map_err(e)?;
    Ok(())
}

fn main() -> ExitCode {
    let parsed = parse_args(std::env::args().skip(1));
    tensor_examples::cli_main("train_codec", USAGE, parsed, |a| a.threads, run)
}
