//! Text to speech with the text-to-codes transformer (`tensor_audio::tts`) and the neural
//! codec (`tensor_audio::codec`).
//!
//! ```text
//! # train on the speech corpus (scripts/fetch_speech.sh prints its root)
//! cargo run --release -p tensor-examples --example text_to_audio -- \
//!     --train --data DIR --codec CODEC_DIR --out TTS_DIR [--steps N] [--device cpu|cuda]
//! # synthesise
//! cargo run --release -p tensor-examples --example text_to_audio -- \
//!     --text "Hello there." --out hello.wav --checkpoint TTS_DIR [--voice NAME] [--seed N]
//! ```
//!
//! Training encodes every clip of `DIR/train` and `DIR/heldout` once with the codec (the
//! codes are cached in `TTS_DIR/codes.safetensors`, keyed by the codec file and the clips),
//! trains with teacher forcing, AdamW, warmup-cosine and gradient clipping, shows a progress
//! bar, writes `TTS_DIR/tts.safetensors` (weights, optimizer state, step, config, curves;
//! `--resume` continues from it), a copy of the codec weights (`TTS_DIR/codec.safetensors`, so
//! the folder is all synthesis needs), `TTS_DIR/loss.png`, the held-out teacher-forced
//! cross-entropy and code accuracy (`TTS_DIR/eval.md`), and a synthesised held-out sentence
//! (`TTS_DIR/heldout_sample.wav`) with its duration and level.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use tensor_audio::codec::Codec;
use tensor_audio::dataset::AudioFolder;
use tensor_audio::tts::{
    code_accuracy, collate, CharTokenizer, SamplingConfig, SplitMix64, TextToCodes, TtsConfig,
    TtsExample,
};
use tensor_audio::wav::{write_wav, Audio, SampleFormat};
use tensor_core::{manual_seed, no_grad, DType, Device, Tensor};
use tensor_examples::curves::{format_curves, parse_curves, Curves};
use tensor_examples::plot::{save_png, Chart, Series};
use tensor_io::resample::ResampleQuality;
use tensor_nn::checkpoint::{load_safetensors, save_safetensors, write_atomic};
use tensor_nn::lr_scheduler::{warmup_cosine, LrScheduler};
use tensor_nn::optim::{clip_grad_norm, AdamW, AdamWConfig, Optimizer};
use tensor_nn::{Checkpoint, VarBuilder, VarMap};

const USAGE: &str =
    "usage: text_to_audio --text \"...\" --out OUT.wav --checkpoint TTS_DIR [options]
       text_to_audio --train --data DIR --codec CODEC_DIR --out TTS_DIR [options]

Synthesises speech from text with a trained text-to-codes model and its codec, or (--train)
trains the model on a speech corpus.

synthesis options:
  --text TEXT        what to say (required)
  --out FILE         the WAV file to write (required)
  --checkpoint DIR   folder written by --train (default runs/tts)
  --voice NAME       one of the corpus voices (default: the first)
  --seed N           sampling seed (default 0)
  --temperature X    sampling temperature, 0 = greedy (default 0.7)
  --top-k N          sample among the N likeliest codes, 0 = all (default 40)
  --codec PATH       another codec checkpoint (file or folder) than DIR/codec.safetensors

training options:
  --data DIR         corpus root with train/ and heldout/ (scripts/fetch_speech.sh prints it)
  --codec PATH       the trained codec: a folder with codec.safetensors, or the file
  --out DIR          where tts.safetensors, loss.png, eval.md go (default runs/tts)
  --steps N          total optimizer steps (default 3000)
  --resume           continue from DIR/tts.safetensors
  --stop-after N     stop after step N (as if interrupted; --resume continues the run)
  --batch-size N     utterances per batch (default 16)
  --lr X             peak learning rate (default 1e-3)
  --codebooks K      codec codebooks to predict per frame (default 2)
  --dim N            model width (default 192)
  --layers N         encoder and decoder layers each (default 3)
  --heads N          attention heads (default 4)
  --seed N           seed of initialisation, batching and dropout (default 0)
  --save-every N     write the checkpoint every N steps (default 100)
  --eval-every N     held-out cross-entropy every N steps (default 250)

common options:
  --device D         cpu, cuda or cuda:N (default cpu)
  --threads N        CPU threads (default: all cores)
  -h, --help         print this help";

const TTS_FILE: &str = "tts.safetensors";
const CODEC_FILE: &str = "codec.safetensors";
const CACHE_FILE: &str = "codes.safetensors";

#[derive(Debug)]
struct TrainArgs {
    data: PathBuf,
    codec: PathBuf,
    out: PathBuf,
    steps: usize,
    resume: bool,
    stop_after: Option<usize>,
    batch: usize,
    lr: f64,
    codebooks: usize,
    dim: usize,
    layers: usize,
    heads: usize,
    seed: u64,
    save_every: usize,
    eval_every: usize,
}

#[derive(Debug)]
struct SynthArgs {
    text: String,
    out: PathBuf,
    checkpoint: PathBuf,
    voice: Option<String>,
    sampling: SamplingConfig,
    codec: Option<PathBuf>,
}

#[derive(Debug)]
enum Mode {
    Train(TrainArgs),
    Synth(SynthArgs),
}

struct Args {
    mode: Mode,
    device: String,
    threads: Option<usize>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    fn num<T: std::str::FromStr>(
        flag: &str,
        v: Option<String>,
        ok: impl Fn(&T) -> bool,
    ) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        match v.parse::<T>() {
            Ok(x) if ok(&x) => Ok(x),
            _ => Err(format!("{flag}: invalid value {v:?}")),
        }
    }
    let pos = |n: &usize| *n > 0;
    let mut train = false;
    let mut flags: HashMap<&'static str, String> = HashMap::new();
    let mut t = TrainArgs {
        data: PathBuf::new(),
        codec: PathBuf::new(),
        out: PathBuf::from("runs/tts"),
        steps: 3000,
        resume: false,
        stop_after: None,
        batch: 16,
        lr: 1e-3,
        codebooks: 2,
        dim: 192,
        layers: 3,
        heads: 4,
        seed: 0,
        save_every: 100,
        eval_every: 250,
    };
    let mut sampling = SamplingConfig {
        temperature: 0.7,
        top_k: 40,
        ..Default::default()
    };
    let mut device = "cpu".to_string();
    let mut threads = None;
    // Flags that belong to one mode only, to reject them in the other.
    let mut train_only = Vec::new();
    let mut synth_only = Vec::new();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next());
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--train" => train = true,
            "--text" | "--checkpoint" | "--voice" | "--out" | "--data" | "--codec" => {
                let name: &'static str = match flag.as_str() {
                    "--text" => "--text",
                    "--checkpoint" => "--checkpoint",
                    "--voice" => "--voice",
                    "--out" => "--out",
                    "--data" => "--data",
                    _ => "--codec",
                };
                let v = value().ok_or(format!("{name} needs a value"))?;
                flags.insert(name, v);
                if matches!(name, "--text" | "--checkpoint" | "--voice") {
                    synth_only.push(name);
                } else if name == "--data" {
                    train_only.push(name);
                }
            }
            "--seed" => {
                let s = num("--seed", value(), |_: &u64| true)?;
                t.seed = s;
                sampling.seed = s;
            }
            "--temperature" => {
                sampling.temperature = num("--temperature", value(), |&x: &f64| {
                    x.is_finite() && x >= 0.0
                })?;
                synth_only.push("--temperature");
            }
            "--top-k" => {
                sampling.top_k = num("--top-k", value(), |_: &usize| true)?;
                synth_only.push("--top-k");
            }
            "--steps" => {
                t.steps = num("--steps", value(), pos)?;
                train_only.push("--steps");
            }
            "--resume" => {
                t.resume = true;
                train_only.push("--resume");
            }
            "--stop-after" => {
                t.stop_after = Some(num("--stop-after", value(), pos)?);
                train_only.push("--stop-after");
            }
            "--batch-size" => {
                t.batch = num("--batch-size", value(), pos)?;
                train_only.push("--batch-size");
            }
            "--lr" => {
                t.lr = num("--lr", value(), |&x: &f64| x.is_finite() && x > 0.0)?;
                train_only.push("--lr");
            }
            "--codebooks" => {
                t.codebooks = num("--codebooks", value(), pos)?;
                train_only.push("--codebooks");
            }
            "--dim" => {
                t.dim = num("--dim", value(), pos)?;
                train_only.push("--dim");
            }
            "--layers" => {
                t.layers = num("--layers", value(), pos)?;
                train_only.push("--layers");
            }
            "--heads" => {
                t.heads = num("--heads", value(), pos)?;
                train_only.push("--heads");
            }
            "--save-every" => {
                t.save_every = num("--save-every", value(), pos)?;
                train_only.push("--save-every");
            }
            "--eval-every" => {
                t.eval_every = num("--eval-every", value(), pos)?;
                train_only.push("--eval-every");
            }
            "--device" => device = value().ok_or("--device needs a value")?,
            "--threads" => threads = Some(num("--threads", value(), pos)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mode = if train {
        if let Some(f) = synth_only.first() {
            return Err(format!(
                "{f} is a synthesis option; it cannot go with --train"
            ));
        }
        t.data = PathBuf::from(flags.remove("--data").ok_or("--train needs --data DIR")?);
        t.codec = PathBuf::from(
            flags
                .remove("--codec")
                .ok_or("--train needs --codec CODEC_DIR (a trained codec; see train_codec)")?,
        );
        if let Some(o) = flags.remove("--out") {
            t.out = PathBuf::from(o);
        }
        if let Some(s) = t.stop_after {
            t.stop_after = Some(s.min(t.steps));
        }
        Mode::Train(t)
    } else {
        if let Some(f) = train_only.first() {
            return Err(format!("{f} is a training option; add --train to train"));
        }
        let text = flags
            .remove("--text")
            .ok_or("--text \"...\" is required (or --train to train a model)")?;
        let out = PathBuf::from(
            flags
                .remove("--out")
                .ok_or("--out OUT.wav is required (the WAV file to write)")?,
        );
        Mode::Synth(SynthArgs {
            text,
            out,
            checkpoint: PathBuf::from(
                flags
                    .remove("--checkpoint")
                    .unwrap_or_else(|| "runs/tts".into()),
            ),
            voice: flags.remove("--voice"),
            sampling,
            codec: flags.remove("--codec").map(PathBuf::from),
        })
    };
    Ok(Some(Args {
        mode,
        device,
        threads,
    }))
}

/// A codec checkpoint given as a folder (holding `codec.safetensors`) or as the file.
fn codec_file(p: &Path) -> Result<PathBuf, String> {
    tensor_examples::checkpoint_in(
        p,
        CODEC_FILE,
        "codec",
        "train one with train_codec, or pass its folder",
    )
}

// ---- synthesis ------------------------------------------------------------------------------

fn synthesize(a: SynthArgs, dev: &Device) -> Result<(), String> {
    let e = |e: tensor_core::Error| e.to_string();
    let ck = a.checkpoint.join(TTS_FILE);
    if !ck.is_file() {
        return Err(format!(
            "no text-to-codes checkpoint at {} (train one with --train --out {})",
            ck.display(),
            a.checkpoint.display()
        ));
    }
    let codec_path = match &a.codec {
        Some(p) => codec_file(p)?,
        None => codec_file(&a.checkpoint.join(CODEC_FILE))?,
    };
    let tok = CharTokenizer::new();
    let model = TextToCodes::load(&ck, dev).map_err(e)?;
    let cfg = model.config().clone();
    let text = tok
        .encode(&a.text, cfg.max_text_len)
        .map_err(|err| format!("--text: {err}"))?;
    let voice = match &a.voice {
        Some(v) => cfg.voice_id(v).map_err(|err| format!("--voice: {err}"))?,
        None => 0,
    };
    let codec = Codec::load(&codec_path, dev).map_err(e)?;
    check_codec(&cfg, &codec)?;
    let t0 = Instant::now();
    let g = model.generate(&text, voice, &a.sampling).map_err(e)?;
    let frames = g.codes.dims()[2];
    let audio = decode_audio(&codec, &g.codes)?;
    write_wav(&a.out, &audio, SampleFormat::Int16).map_err(e)?;
    let (rms, peak) = level(&audio.samples);
    println!(
        "voice {}, {} characters -> {frames} frames ({}), {:.2} s of audio at {} Hz, RMS {rms:.4}, \
         peak {peak:.3}, {:.1} s to synthesise; wrote {}",
        cfg.voices[voice],
        text.len() - 2,
        if g.stopped_at_eos {
            "ended by the model".to_string()
        } else {
            format!("stopped at the limit of {}", g.max_frames)
        },
        audio.duration_secs(),
        audio.sample_rate,
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    if rms < 1e-3 {
        eprintln!("text_to_audio: warning: the audio is nearly silent (RMS {rms:.2e})");
    }
    Ok(())
}

fn check_codec(cfg: &TtsConfig, codec: &Codec) -> Result<(), String> {
    if codec.codebook_size() != cfg.codebook_size || codec.num_quantizers() < cfg.num_codebooks {
        return Err(format!(
            "the codec ({} quantizers of {} codes) does not match the model ({} codebooks of {})",
            codec.num_quantizers(),
            codec.codebook_size(),
            cfg.num_codebooks,
            cfg.codebook_size
        ));
    }
    if (codec.frame_rate() - cfg.frame_rate).abs() > 1e-9 {
        return Err(format!(
            "the codec runs at {} frames/s but the model was trained at {}",
            codec.frame_rate(),
            cfg.frame_rate
        ));
    }
    Ok(())
}

/// The codec's waveform of codes `[1, K, frames]`, as mono audio.
fn decode_audio(codec: &Codec, codes: &Tensor) -> Result<Audio, String> {
    let e = |e: tensor_core::Error| e.to_string();
    let _g = no_grad();
    let y = codec.decode(codes).map_err(e)?;
    let n = y.dims()[2];
    let y = y.reshape(n).map_err(e)?.clamp(-1.0, 1.0).map_err(e)?;
    Audio::from_tensor(&y, codec.sample_rate()).map_err(e)
}

/// RMS and peak of samples.
fn level(s: &[f32]) -> (f64, f64) {
    if s.is_empty() {
        return (0.0, 0.0);
    }
    let sq: f64 = s.iter().map(|&x| (x as f64) * (x as f64)).sum();
    let peak = s.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
    ((sq / s.len() as f64).sqrt(), peak)
}

// ---- the codes of the corpus ----------------------------------------------------------------

/// One clip's transcript, voice and codes.
struct Utterance {
    text: String,
    voice: String,
    codes: Vec<u32>,
    frames: usize,
    samples: usize,
}

/// FNV-1a over the bytes of every part: a cheap fingerprint of the codec file and the clips.
fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&[0xffu8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn codec_fingerprint(path: &Path, k: usize) -> Result<String, String> {
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{}-{mtime}-k{k}", m.len()))
}

/// Every clip of `dir` encoded with `codec`'s first `k` quantizers, read from the cache in
/// `cache` when it was made from the same codec file and the same clips, else encoded now
/// (and the cache rewritten).
fn corpus_codes(
    split: &str,
    dir: &Path,
    codec: &Codec,
    codec_key: &str,
    k: usize,
    cache: &Path,
    dev: &Device,
) -> Result<Vec<Utterance>, String> {
    let e = |e: tensor_core::Error| e.to_string();
    let folder = AudioFolder::open(dir, codec.sample_rate(), ResampleQuality::High).map_err(e)?;
    let mut parts: Vec<Vec<u8>> = vec![codec_key.as_bytes().to_vec()];
    for c in folder.clips() {
        if c.text.is_none() || c.voice.is_none() {
            return Err(format!(
                "{}: clip {} has no transcript and voice in metadata.tsv",
                dir.display(),
                c.name
            ));
        }
        parts.push(c.name.as_bytes().to_vec());
        parts.push(c.samples.len().to_le_bytes().to_vec());
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let key = fingerprint(&refs);
    let meta_key = format!("{split}.key");
    let codes_name = format!("{split}.codes");
    let frames_name = format!("{split}.frames");

    let (mut tensors, mut meta) = if cache.is_file() {
        load_safetensors(cache, dev).map_err(e)?
    } else {
        (HashMap::new(), BTreeMap::new())
    };
    let cached = meta.get(&meta_key) == Some(&key);
    let (flat, frames): (Vec<i64>, Vec<i64>) = if cached {
        let get = |n: &str| -> Result<Vec<i64>, String> {
            tensors
                .get(n)
                .ok_or_else(|| format!("{}: no tensor {n}", cache.display()))?
                .to_vec::<i64>()
                .map_err(e)
        };
        (get(&codes_name)?, get(&frames_name)?)
    } else {
        println!(
            "encoding {} {split} clips with the codec ({} codebooks)...",
            folder.len(),
            k
        );
        let pb = tensor_examples::progress_bar(folder.len() as u64);
        let _g = no_grad();
        let mut flat = Vec::new();
        let mut frames = Vec::new();
        for c in folder.clips() {
            let n = c.samples.len();
            let wav = Tensor::from_slice(&c.samples, (1, 1, n), dev).map_err(e)?;
            let codes = codec.encode(&wav, k).map_err(e)?; // [1, K, F]
            frames.push(codes.dims()[2] as i64);
            flat.extend(
                codes
                    .to_dtype(DType::I64)
                    .map_err(e)?
                    .to_vec::<i64>()
                    .map_err(e)?,
            );
            pb.inc(1);
        }
        pb.finish_and_clear();
        let n = flat.len();
        tensors.insert(
            codes_name.clone(),
            Tensor::from_vec(flat.clone(), n, dev).map_err(e)?,
        );
        let m = frames.len();
        tensors.insert(
            frames_name.clone(),
            Tensor::from_vec(frames.clone(), m, dev).map_err(e)?,
        );
        meta.insert(meta_key, key);
        save_safetensors(cache, &tensors, &meta).map_err(e)?;
        (flat, frames)
    };
    if frames.len() != folder.len() {
        return Err(format!(
            "{}: corrupt codes cache (delete it)",
            cache.display()
        ));
    }
    let mut out = Vec::with_capacity(folder.len());
    let mut at = 0usize;
    for (c, &f) in folder.clips().iter().zip(&frames) {
        let f = f as usize;
        let chunk = flat
            .get(at..at + k * f)
            .ok_or_else(|| format!("{}: corrupt codes cache (delete it)", cache.display()))?;
        at += k * f;
        out.push(Utterance {
            text: c.text.clone().unwrap_or_default(),
            voice: c.voice.clone().unwrap_or_default(),
            codes: chunk.iter().map(|&x| x as u32).collect(),
            frames: f,
            samples: c.samples.len(),
        });
    }
    Ok(out)
}

fn to_examples(
    utts: &[Utterance],
    cfg: &TtsConfig,
    split: &str,
) -> Result<Vec<TtsExample>, String> {
    let tok = CharTokenizer::new();
    let k = cfg.num_codebooks;
    let mut out = Vec::with_capacity(utts.len());
    for u in utts {
        let text = tok
            .encode(&u.text, cfg.max_text_len)
            .map_err(|e| format!("{split} text {:?}: {e}", u.text))?;
        let voice = cfg
            .voice_id(&u.voice)
            .map_err(|e| format!("{split} clip: {e}"))?;
        // A clip longer than the model's limit keeps its first max_frames frames.
        let frames = u.frames.min(cfg.max_frames);
        let codes = (0..k)
            .flat_map(|cb| {
                u.codes[cb * u.frames..cb * u.frames + frames]
                    .iter()
                    .copied()
            })
            .collect();
        out.push(TtsExample {
            text,
            voice,
            codes,
            frames,
        });
    }
    Ok(out)
}

// ---- training -------------------------------------------------------------------------------

/// Batches of one epoch: a seeded shuffle, then utterances of similar length grouped (within
/// windows of 8 batches) so little of each batch is padding, then the batch order shuffled.
fn epoch_batches(examples: &[TtsExample], batch: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut rng = SplitMix64::new(seed ^ (epoch + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..examples.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut batches = Vec::new();
    for window in order.chunks(batch * 8) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| examples[i].frames);
        batches.extend(
            w.chunks(batch)
                .filter(|c| c.len() == batch)
                .map(<[usize]>::to_vec),
        );
    }
    for i in (1..batches.len()).rev() {
        batches.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    batches
}

/// Teacher-forced cross-entropy (mean per target, over codebooks) and code accuracy per
/// codebook on `examples`.
fn evaluate(
    model: &TextToCodes,
    examples: &[TtsExample],
    dev: &Device,
) -> Result<(f64, Vec<f64>, Vec<f64>), String> {
    let e = |e: tensor_core::Error| e.to_string();
    let _g = no_grad();
    let cfg = model.config();
    let k = cfg.num_codebooks;
    let mut ce = vec![0.0; k];
    let mut acc = vec![(0usize, 0usize); k];
    for chunk in examples.chunks(16) {
        let refs: Vec<&TtsExample> = chunk.iter().collect();
        let batch = collate(&refs, cfg, dev).map_err(e)?;
        let n = batch.target_count().map_err(e)? as f64;
        let out = model.loss(&batch, false).map_err(e)?;
        for (c, l) in ce.iter_mut().zip(&out.codebook_losses) {
            *c += l.to_f64().map_err(e)? * n;
        }
        for (a, (ok, cnt)) in acc
            .iter_mut()
            .zip(code_accuracy(&out.logits, &batch.targets).map_err(e)?)
        {
            a.0 += ok;
            a.1 += cnt;
        }
    }
    let total: usize = acc[0].1.max(1);
    let per_ce: Vec<f64> = ce.iter().map(|c| c / total as f64).collect();
    let mean = per_ce.iter().sum::<f64>() / k as f64;
    let per_acc = acc
        .iter()
        .map(|(o, n)| *o as f64 / (*n).max(1) as f64)
        .collect();
    Ok((mean, per_ce, per_acc))
}

fn plot(path: &Path, curves: &Curves) -> Result<(), String> {
    let s = |name: &str, color| Series {
        label: name.into(),
        color,
        points: curves.get(name).cloned().unwrap_or_default(),
    };
    save_png(
        path,
        &[
            Chart {
                title: "cross-entropy per code (nats)".into(),
                series: vec![s("train", [200, 30, 30]), s("heldout", [30, 30, 200])],
            },
            Chart {
                title: "held-out code accuracy (codebook 0)".into(),
                series: vec![s("heldout_acc0", [30, 150, 30])],
            },
        ],
    )
}

fn train(a: TrainArgs, dev: &Device) -> Result<(), String> {
    let e = |e: tensor_core::Error| e.to_string();
    let (train_dir, heldout_dir) = (a.data.join("train"), a.data.join("heldout"));
    for d in [&train_dir, &heldout_dir] {
        if !d.is_dir() {
            return Err(format!(
                "{} is not a folder: --data must hold train/ and heldout/ \
                 (scripts/fetch_speech.sh builds one)",
                d.display()
            ));
        }
    }
    let codec_src = codec_file(&a.codec)?;
    std::fs::create_dir_all(&a.out)
        .map_err(|err| format!("cannot create {}: {err}", a.out.display()))?;
    let ckpt_path = a.out.join(TTS_FILE);
    let prev = if a.resume {
        if !ckpt_path.is_file() {
            return Err(format!(
                "--resume: no checkpoint at {} to continue from",
                ckpt_path.display()
            ));
        }
        Some(Checkpoint::load(&ckpt_path, dev).map_err(e)?)
    } else {
        None
    };
    let prev_cfg = match &prev {
        Some(ck) => Some(TtsConfig::from_metadata(&ck.metadata).map_err(e)?),
        None => None,
    };
    let k = prev_cfg.as_ref().map_or(a.codebooks, |c| c.num_codebooks);

    // The codec: used once to encode the corpus; its weights are copied next to the model.
    let codec_ck = Checkpoint::load(&codec_src, dev).map_err(e)?;
    let codec = Codec::load(&codec_src, dev).map_err(e)?;
    if k > codec.num_quantizers() {
        return Err(format!(
            "--codebooks {k} exceeds the codec's {} quantizers",
            codec.num_quantizers()
        ));
    }
    let codec_dst = a.out.join(CODEC_FILE);
    let same_file =
        std::fs::canonicalize(&codec_src).ok() == std::fs::canonicalize(&codec_dst).ok();
    if !same_file {
        let mut meta = codec_ck.metadata.clone();
        meta.remove("curves");
        Checkpoint {
            model: codec_ck.model,
            optimizer: HashMap::new(),
            step: codec_ck.step,
            metadata: meta,
        }
        .save(&codec_dst)
        .map_err(e)?;
    }
    let codec_key = codec_fingerprint(&codec_src, k)?;
    let cache = a.out.join(CACHE_FILE);
    let train_utts = corpus_codes("train", &train_dir, &codec, &codec_key, k, &cache, dev)?;
    let held_utts = corpus_codes("heldout", &heldout_dir, &codec, &codec_key, k, &cache, dev)?;

    let tok = CharTokenizer::new();
    let cfg = match prev_cfg {
        Some(c) => c,
        None => {
            let mut voices: Vec<String> = train_utts.iter().map(|u| u.voice.clone()).collect();
            voices.sort();
            voices.dedup();
            let chars = |u: &Utterance| tok.normalize(&u.text).chars().count().max(1);
            let frames_per_char = train_utts
                .iter()
                .map(|u| u.frames as f64 / chars(u) as f64)
                .fold(0.0, f64::max);
            let longest_text = train_utts.iter().map(chars).max().unwrap_or(1);
            let longest = train_utts.iter().map(|u| u.frames).max().unwrap_or(1);
            TtsConfig {
                voices,
                max_text_len: longest_text.max(200),
                dim: a.dim,
                num_heads: a.heads,
                encoder_layers: a.layers,
                decoder_layers: a.layers,
                hidden_dim: 4 * a.dim,
                dropout: 0.1,
                codebook_size: codec.codebook_size(),
                num_codebooks: k,
                max_frames: (longest * 2).max(1000),
                frame_rate: codec.frame_rate(),
                frames_per_char,
                ..Default::default()
            }
        }
    };
    cfg.validate().map_err(e)?;
    check_codec(&cfg, &codec)?;
    let train_ex = to_examples(&train_utts, &cfg, "train")?;
    let held_ex = to_examples(&held_utts, &cfg, "heldout")?;
    // Utterances are grouped by length in windows of 8 batches; the partial batch of each
    // window is dropped, so the count is the same every epoch.
    let per_epoch = epoch_batches(&train_ex, a.batch, a.seed, 0).len();
    if per_epoch == 0 {
        return Err(format!(
            "{} training clips are fewer than one batch of {}",
            train_ex.len(),
            a.batch
        ));
    }

    manual_seed(a.seed);
    let vars = VarMap::new();
    let model = TextToCodes::new(
        &VarBuilder::from_varmap(&vars, DType::F32, dev),
        cfg.clone(),
    )
    .map_err(e)?;
    let params = vars.trainable_vars();
    let param_tensors: Vec<Tensor> = params.iter().map(|(_, v)| v.as_tensor().clone()).collect();
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: a.lr,
            betas: (0.9, 0.98),
            weight_decay: 0.01,
            ..Default::default()
        },
    )
    .map_err(e)?;
    let warmup = (a.steps / 10).clamp(1, 300).min(a.steps.saturating_sub(1));
    let sched = if a.steps > 1 {
        Some(warmup_cosine(a.lr, warmup, a.steps, a.lr * 0.05).map_err(e)?)
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
    let secs_audio: f64 =
        train_utts.iter().map(|u| u.samples).sum::<usize>() as f64 / codec.sample_rate() as f64;
    println!(
        "text_to_audio: {} train / {} held-out utterances ({:.0} s of training audio), {} voices, \
         {k} codebooks of {} at {} frames/s (parallel pattern), {} parameters, batch {}, device {}",
        train_ex.len(),
        held_ex.len(),
        secs_audio,
        cfg.voices.len(),
        cfg.codebook_size,
        cfg.frame_rate,
        vars.num_trainable_parameters(),
        a.batch,
        dev.name()
    );

    let save = |step: usize, opt: &AdamW, curves: &Curves| -> Result<(), String> {
        let mut metadata = cfg.to_metadata();
        metadata.insert("curves".into(), format_curves(curves));
        metadata.insert("train_seed".into(), a.seed.to_string());
        Checkpoint {
            model: vars.state_dict(),
            optimizer: opt.state_tensors().into_iter().collect::<HashMap<_, _>>(),
            step: step as u64,
            metadata,
        }
        .save(&ckpt_path)
        .map_err(e)
    };
    // Held-out curve points use a fixed subset, so they are cheap and comparable.
    let eval_subset: Vec<TtsExample> = held_ex.iter().step_by(3).cloned().collect();

    let end = a.stop_after.unwrap_or(a.steps);
    let pb = tensor_examples::progress_bar(a.steps as u64);
    pb.set_position(step as u64);
    let t0 = Instant::now();
    let start = step;
    let log_every = 10usize;
    let mut window = (0.0f64, 0usize);
    while step < end {
        let epoch = step / per_epoch;
        let batches = epoch_batches(&train_ex, a.batch, a.seed, epoch as u64);
        let idx = &batches[step % per_epoch];
        if let Some(s) = &sched {
            opt.set_learning_rate(s.lr_at(step));
        }
        // Dropout draws from the global generator: seed it per step so a resumed run repeats
        // an uninterrupted one exactly.
        manual_seed(a.seed.wrapping_mul(7919).wrapping_add(step as u64 + 1));
        let refs: Vec<&TtsExample> = idx.iter().map(|&i| &train_ex[i]).collect();
        let batch = collate(&refs, &cfg, dev).map_err(e)?;
        let out = model.loss(&batch, true).map_err(e)?;
        let mut grads = out.loss.backward().map_err(e)?;
        let prefs: Vec<&Tensor> = param_tensors.iter().collect();
        clip_grad_norm(&mut grads, &prefs, 1.0, 2.0).map_err(e)?;
        opt.step(&grads).map_err(e)?;
        step += 1;
        pb.inc(1);
        window.0 += out.loss.to_f64().map_err(e)?;
        window.1 += 1;
        if step.is_multiple_of(log_every) || step == end {
            let mean = window.0 / window.1 as f64;
            window = (0.0, 0);
            curves
                .entry("train".into())
                .or_default()
                .push((step as f64, mean));
            pb.set_message(format!("loss {mean:.3}"));
            if pb.is_hidden() && step.is_multiple_of(log_every * 10) {
                println!("step {step}: train loss {mean:.4}");
            }
        }
        if step.is_multiple_of(a.eval_every) || step == end {
            let (ce, _, acc) = evaluate(&model, &eval_subset, dev)?;
            curves
                .entry("heldout".into())
                .or_default()
                .push((step as f64, ce));
            curves
                .entry("heldout_acc0".into())
                .or_default()
                .push((step as f64, acc[0]));
            let line = format!(
                "step {step}: held-out cross-entropy {ce:.4}, accuracy {:.3}",
                acc[0]
            );
            if pb.is_hidden() {
                println!("{line}");
            } else {
                pb.println(line);
            }
        }
        if step.is_multiple_of(a.save_every) || step == end {
            save(step, &opt, &curves)?;
        }
    }
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let png = a.out.join("loss.png");
    plot(&png, &curves)?;
    println!(
        "trained {} steps in {secs:.1} s ({:.2} s/step); checkpoint {}, plot {}",
        step - start,
        secs / (step - start).max(1) as f64,
        ckpt_path.display(),
        png.display()
    );
    if step < a.steps {
        return Ok(());
    }
    report(&model, &codec, &held_ex, &held_utts, &a.out, dev)
}

/// The final held-out figures and one synthesised held-out sentence.
fn report(
    model: &TextToCodes,
    codec: &Codec,
    held_ex: &[TtsExample],
    held_utts: &[Utterance],
    out: &Path,
    dev: &Device,
) -> Result<(), String> {
    let e = |e: tensor_core::Error| e.to_string();
    let cfg = model.config();
    let (ce, per_ce, acc) = evaluate(model, held_ex, dev)?;
    let uniform = (cfg.code_vocab() as f64).ln();
    let mut md = format!(
        "held-out: {} utterances, teacher-forced cross-entropy {ce:.4} nats per code \
         (uniform: {uniform:.4})\n\n| codebook | cross-entropy | accuracy |\n|---|---|---|\n",
        held_ex.len()
    );
    for (i, (c, a)) in per_ce.iter().zip(&acc).enumerate() {
        md.push_str(&format!("| {i} | {c:.4} | {a:.4} |\n"));
    }
    // Listen-free checks on a held-out sentence: plausible duration, not silence.
    let (ex, utt) = (&held_ex[0], &held_utts[0]);
    let g = model
        .generate(
            &ex.text,
            ex.voice,
            &SamplingConfig {
                temperature: 0.7,
                top_k: 40,
                ..Default::default()
            },
        )
        .map_err(e)?;
    let wav = out.join("heldout_sample.wav");
    let audio = decode_audio(codec, &g.codes)?;
    write_wav(&wav, &audio, SampleFormat::Int16).map_err(e)?;
    let (rms, peak) = level(&audio.samples);
    let real = utt.samples as f64 / codec.sample_rate() as f64;
    md.push_str(&format!(
        "\nsynthesised held-out sentence {:?} (voice {}): {:.2} s (the recording: {real:.2} s, \
         ratio {:.2}), {}, RMS {rms:.4}, peak {peak:.3}\n",
        utt.text,
        utt.voice,
        audio.duration_secs(),
        audio.duration_secs() / real,
        if g.stopped_at_eos {
            "ended by the model".to_string()
        } else {
            format!("stopped at the limit of {} frames", g.max_frames)
        }
    ));
    print!("{md}");
    write_atomic(&out.join("eval.md"), md.as_bytes()).map_err(e)?;
    println!("wrote {}", wav.display());
    Ok(())
}

fn run(args: Args) -> Result<(), String> {
    let dev = tensor_examples::device_from_name(&args.device)?;
    match args.mode {
        Mode::Train(t) => train(t, &dev),
        Mode::Synth(s) => synthesize(s, &dev),
    }
}

fn main() -> ExitCode {
    let parsed = parse_args(std::env::args().skip(1));
    tensor_examples::cli_main("text_to_audio", USAGE, parsed, |a| a.threads, run)
}
