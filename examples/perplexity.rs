//! Perplexity of a pretrained LLM on a text file, on the CPU.
//!
//! ```text
//! scripts/fetch-models.sh smollm2
//! cargo run --release -p tensor-examples --example perplexity -- \
//!     --model ~/.cache/tensor-engine/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --file README.md --ctx 128
//! ```
//!
//! The text is tokenized without BOS and cut into non-overlapping windows of `--ctx` tokens
//! (the last one may be shorter). Every token of a window but its first is scored with the
//! log-softmax of the logits at the position before it; the perplexity is the exponential of
//! the mean negative log-likelihood over all scored tokens. Prints the token and window
//! counts, then `ppl: <value>` as its last line; progress goes to stderr.
//!
//! Exit codes: 0 success, 1 runtime error, 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use tensor_core::{no_grad, DType, Tensor};
use tensor_models::llm::{load_with, LoadOptions};

const USAGE: &str = "usage: perplexity --model PATH --file TEXT [--ctx N] [--threads N]

Prints the model's perplexity on the text file; `ppl: <value>` is the last line.

options:
  --model PATH   a .gguf file, or a folder with config.json, *.safetensors and tokenizer.json
  --file TEXT    the text to score (UTF-8)
  --ctx N        tokens per window, at least 2 (default 128)
  --threads N    CPU threads (default: all cores)
  --no-fused     run a GGUF model through the module graph over weights dequantized to f32
                 instead of the fused quantized decoder (to measure what quantized
                 activations cost)
  -h, --help     print this help";

struct Args {
    model: PathBuf,
    file: PathBuf,
    ctx: usize,
    threads: Option<usize>,
    fused: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut model = None;
    let mut file = None;
    let mut ctx = 128;
    let mut threads = None;
    let mut fused = true;
    fn num(flag: &str, v: Option<String>, min: usize) -> Result<usize, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        match v.trim().parse::<usize>() {
            Ok(x) if x >= min => Ok(x),
            _ => Err(format!(
                "{flag}: invalid value {v:?} (expected an integer >= {min})"
            )),
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
            "--model" => model = Some(PathBuf::from(value().ok_or("--model needs a value")?)),
            "--file" => file = Some(PathBuf::from(value().ok_or("--file needs a value")?)),
            "--ctx" => ctx = num("--ctx", value(), 2)?,
            "--threads" => threads = Some(num("--threads", value(), 1)?),
            "--no-fused" => fused = false,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let model = model.ok_or("--model is required")?;
    let file = file.ok_or("--file is required")?;
    if !model.exists() {
        return Err(format!(
            "--model {}: no such file or folder",
            model.display()
        ));
    }
    if !file.is_file() {
        return Err(format!("--file {}: no such file", file.display()));
    }
    Ok(Some(Args {
        model,
        file,
        ctx,
        threads,
        fused,
    }))
}

/// `log_softmax(row)[target]`, computed in f64.
fn log_prob(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}

fn run(args: Args) -> Result<f64, String> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let device = tensor_cpu::device();
    let opts = LoadOptions {
        max_seq_len: Some(args.ctx),
        fused: args.fused,
        ..LoadOptions::default()
    };
    let mut lm = load_with(&args.model, &device, &opts)
        .map_err(|e| format!("cannot load the model from {}: {e}", args.model.display()))?;
    if args.ctx > lm.config.context_length {
        eprintln!(
            "perplexity: warning: --ctx {} is longer than the model's context length {}",
            args.ctx, lm.config.context_length
        );
    }
    let tokenizer = lm
        .tokenizer()
        .map_err(|e| format!("cannot build the tokenizer: {e}"))?;
    let ids = tokenizer
        .encode(&text, false)
        .map_err(|e| format!("tokenizing {}: {e}", args.file.display()))?;
    let windows: Vec<&[u32]> = ids.chunks(args.ctx).collect();
    let scored: usize = windows.iter().map(|w| w.len().saturating_sub(1)).sum();
    println!("tokens: {}", ids.len());
    println!("windows: {} of up to {} tokens", windows.len(), args.ctx);
    if scored == 0 {
        return Err(format!(
            "{} has {} token(s): nothing to score (a window needs at least 2 tokens)",
            args.file.display(),
            ids.len()
        ));
    }
    let vocab = lm.model.info().vocab_size;
    let _guard = no_grad();
    let start = Instant::now();
    let mut nll = 0.0f64;
    let mut count = 0usize;
    for (w, window) in windows.iter().enumerate() {
        if window.len() < 2 {
            continue;
        }
        lm.model.reset();
        let input = Tensor::from_vec(window.to_vec(), (1, window.len()), &device)
            .map_err(|e| e.to_string())?;
        let logits = lm
            .model
            .forward(&input, 0)
            .map_err(|e| format!("forward of window {}: {e}", w + 1))?;
        let logits = if logits.dtype() == DType::F32 {
            logits
        } else {
            logits.to_dtype(DType::F32).map_err(|e| e.to_string())?
        };
        let v = logits.dims().last().copied().unwrap_or(0);
        if v == 0 || (vocab != 0 && v != vocab) || logits.elem_count() != window.len() * v {
            return Err(format!(
                "unexpected logits shape {:?} for a window of {} tokens",
                logits.dims(),
                window.len()
            ));
        }
        let flat = logits.to_vec::<f32>().map_err(|e| e.to_string())?;
        for i in 1..window.len() {
            let target = window[i] as usize;
            if target >= v {
                return Err(format!(
                    "token id {target} is outside the vocabulary of {v}"
                ));
            }
            nll -= log_prob(&flat[(i - 1) * v..i * v], target);
            count += 1;
        }
        eprintln!(
            "perplexity: window {}/{}: {} tokens scored, running ppl {:.4} ({:.1} tok/s)",
            w + 1,
            windows.len(),
            count,
            (nll / count as f64).exp(),
            count as f64 / start.elapsed().as_secs_f64().max(1e-9)
        );
    }
    println!("scored tokens: {count}");
    Ok((nll / count as f64).exp())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("perplexity: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(n) = args.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("perplexity: cannot start {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    match std::panic::catch_unwind(|| run(args)) {
        Ok(Ok(ppl)) if ppl.is_finite() => {
            println!("ppl: {ppl:.4}");
            ExitCode::SUCCESS
        }
        Ok(Ok(ppl)) => {
            eprintln!("perplexity: the result is not finite ({ppl})");
            println!("ppl: {ppl}");
            ExitCode::FAILURE
        }
        Ok(Err(msg)) => {
            eprintln!("perplexity: {msg}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("perplexity: internal error (panic)");
            ExitCode::FAILURE
        }
    }
}
