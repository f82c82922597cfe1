//! Compress speech with the trained neural codec, and measure it.
//!
//! ```text
//! codec encode IN.wav OUT.codes [--checkpoint DIR] [--n-q N | --kbps K]
//! codec decode IN.codes OUT.wav [--checkpoint DIR]
//! codec eval --data DIR [--checkpoint DIR] [--clips N]
//! ```
//!
//! `encode` mixes the input to mono, resamples it to the codec's rate and writes the codes
//! file (`tensor_audio::codes`: a header with the sample rate, codebook size, quantizers and
//! length, then the codes bit-packed); `decode` restores the original length as 16-bit WAV;
//! `eval` prints the held-out table that `train_codec` prints at the end. The checkpoint is
//! what `train_codec --out DIR` wrote (default `runs/codec`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tensor_audio::codec::Codec;
use tensor_audio::codes::CodesFile;
use tensor_core::{no_grad, Tensor};
use tensor_examples::codec_eval::{evaluate, format_table};
use tensor_io::resample::{resample, ResampleQuality};
use tensor_io::wav::{read_wav, write_wav, Audio, SampleFormat};

const USAGE: &str = "usage:
  codec encode IN.wav OUT.codes [--checkpoint DIR] [--n-q N | --kbps K]
  codec decode IN.codes OUT.wav [--checkpoint DIR]
  codec eval --data DIR [--checkpoint DIR] [--clips N]

options:
  --checkpoint P  a train_codec output folder or its codec.safetensors (default runs/codec)
  --n-q N         quantizers to use (default: all the model has)
  --kbps K        the most quantizers whose bitrate is at most K kbit/s
  --data DIR      corpus root whose heldout/ folder is scored (eval)
  --clips N       score at most N held-out clips (eval; default all)
  --device D      cpu, cuda or cuda:N (default cpu)
  --threads N     CPU threads (default: all cores)
  -h, --help      print this help";

enum Cmd {
    Encode { input: PathBuf, output: PathBuf },
    Decode { input: PathBuf, output: PathBuf },
    Eval { data: PathBuf },
}

struct Args {
    cmd: Cmd,
    checkpoint: PathBuf,
    n_q: Option<usize>,
    kbps: Option<f64>,
    clips: Option<usize>,
    device: String,
    threads: Option<usize>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut positional = Vec::new();
    let mut a = Args {
        cmd: Cmd::Eval {
            data: PathBuf::new(),
        },
        checkpoint: PathBuf::from("runs/codec"),
        n_q: None,
        kbps: None,
        clips: None,
        device: "cpu".into(),
        threads: None,
    };
    let mut data = None;
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
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next());
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--checkpoint" => {
                a.checkpoint = PathBuf::from(value().ok_or("--checkpoint needs a value")?)
            }
            "--n-q" => a.n_q = Some(num("--n-q", value(), |&n: &usize| n > 0)?),
            "--kbps" => a.kbps = Some(num("--kbps", value(), |&x: &f64| x.is_finite() && x > 0.0)?),
            "--clips" => a.clips = Some(num("--clips", value(), |&n: &usize| n > 0)?),
            "--data" => data = Some(PathBuf::from(value().ok_or("--data needs a value")?)),
            "--device" => a.device = value().ok_or("--device needs a value")?,
            "--threads" => a.threads = Some(num("--threads", value(), |&n: &usize| n > 0)?),
            f if f.starts_with('-') && f.len() > 1 => {
                return Err(format!("unknown argument {f:?}"))
            }
            _ => positional.push(arg),
        }
    }
    if a.n_q.is_some() && a.kbps.is_some() {
        return Err("give --n-q or --kbps, not both".into());
    }
    let sub = positional
        .first()
        .cloned()
        .ok_or("missing command (encode, decode or eval)")?;
    let files = &positional[1..];
    let two = |what: &str| -> Result<(PathBuf, PathBuf), String> {
        match files {
            [i, o] => Ok((PathBuf::from(i), PathBuf::from(o))),
            _ => Err(format!(
                "{sub} needs {what}, got {} file argument(s)",
                files.len()
            )),
        }
    };
    a.cmd = match sub.as_str() {
        "encode" => {
            let (input, output) = two("IN.wav OUT.codes")?;
            Cmd::Encode { input, output }
        }
        "decode" => {
            if a.n_q.is_some() || a.kbps.is_some() {
                return Err(
                    "decode takes the quantizers from the codes file: drop --n-q/--kbps".into(),
                );
            }
            let (input, output) = two("IN.codes OUT.wav")?;
            Cmd::Decode { input, output }
        }
        "eval" => {
            if !files.is_empty() {
                return Err(format!("eval takes no file arguments, got {files:?}"));
            }
            Cmd::Eval {
                data: data.clone().ok_or("eval needs --data DIR")?,
            }
        }
        other => {
            return Err(format!(
                "unknown command {other:?} (expected encode, decode or eval)"
            ))
        }
    };
    if data.is_some() && !matches!(a.cmd, Cmd::Eval { .. }) {
        return Err("--data is for eval only".into());
    }
    Ok(Some(a))
}

/// The checkpoint file: `P` itself, or `P/codec.safetensors` for a folder.
fn checkpoint_file(p: &Path) -> Result<PathBuf, String> {
    tensor_examples::checkpoint_in(
        p,
        "codec.safetensors",
        "codec",
        "train one with train_codec --out DIR, or pass --checkpoint",
    )
}

fn run(args: Args) -> Result<(), String> {
    let e = |e: tensor_core::Error| e.to_string();
    let dev = tensor_examples::device_from_name(&args.device)?;
    let ck = checkpoint_file(&args.checkpoint)?;
    let codec = Codec::load(&ck, &dev).map_err(e)?;
    let sr = codec.sample_rate();
    let _g = no_grad();
    match &args.cmd {
        Cmd::Encode { input, output } => {
            let n_q = match (args.n_q, args.kbps) {
                (Some(n), _) if n > codec.num_quantizers() => {
                    return Err(format!(
                        "--n-q {n}: the model has {} quantizers",
                        codec.num_quantizers()
                    ))
                }
                (Some(n), _) => n,
                (None, Some(k)) => codec.config().n_q_for_kbps(k),
                (None, None) => codec.num_quantizers(),
            };
            let audio = read_wav(input).map_err(e)?.to_mono();
            if audio.frames() == 0 {
                return Err(format!("{} holds no samples", input.display()));
            }
            let audio = if audio.sample_rate != sr {
                resample(&audio, sr, ResampleQuality::High).map_err(e)?
            } else {
                audio
            };
            let t = audio.samples.len();
            let wav = Tensor::from_vec(audio.samples, (1, 1, t), &dev).map_err(e)?;
            let codes = codec.encode(&wav, n_q).map_err(e)?;
            let file =
                CodesFile::from_tensor(&codes, sr, codec.hop_length(), codec.codebook_size(), t)
                    .map_err(e)?;
            file.write(output).map_err(e)?;
            let bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
            println!(
                "encoded {:.2} s into {} frames × {n_q} codes at {:.2} kbit/s: {} ({bytes} bytes)",
                t as f64 / sr as f64,
                file.frames,
                file.bitrate_kbps(),
                output.display()
            );
        }
        Cmd::Decode { input, output } => {
            let file = CodesFile::read(input).map_err(e)?;
            let c = codec.config();
            if file.sample_rate != sr
                || file.hop_length as usize != c.hop_length()
                || file.codebook_size as usize != c.codebook_size
                || file.n_q > c.num_quantizers
            {
                return Err(format!(
                    "{} was made by another codec ({} Hz, hop {}, {} codes, {} quantizers) than \
                     {} ({} Hz, hop {}, {} codes, {} quantizers)",
                    input.display(),
                    file.sample_rate,
                    file.hop_length,
                    file.codebook_size,
                    file.n_q,
                    ck.display(),
                    sr,
                    c.hop_length(),
                    c.codebook_size,
                    c.num_quantizers
                ));
            }
            let codes = file.to_tensor(&dev).map_err(e)?;
            let y = codec
                .decode_len(&codes, file.samples as usize)
                .map_err(e)?
                .clamp(-1.0, 1.0)
                .map_err(e)?
                .flatten_all()
                .map_err(e)?
                .to_vec::<f32>()
                .map_err(e)?;
            let audio = Audio {
                sample_rate: sr,
                channels: 1,
                samples: y,
            };
            write_wav(output, &audio, SampleFormat::Int16).map_err(e)?;
            println!(
                "decoded {} frames × {} codes into {:.2} s of audio: {}",
                file.frames,
                file.n_q,
                file.samples as f64 / sr as f64,
                output.display()
            );
        }
        Cmd::Eval { data } => {
            let dir = data.join("heldout");
            if !dir.is_dir() {
                return Err(format!(
                    "{} is not a folder: --data must hold heldout/",
                    dir.display()
                ));
            }
            let (rows, clips, seconds) = evaluate(&codec, &dir, args.clips, &dev)?;
            println!(
                "held-out: {clips} clips, {seconds:.1} s of audio\n{}",
                format_table(&rows)
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let parsed = parse_args(std::env::args().skip(1));
    tensor_examples::cli_main("codec", USAGE, parsed, |a| a.threads, run)
}
