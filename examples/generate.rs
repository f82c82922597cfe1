//! Raw text completion with a pretrained LLM on the CPU: no chat template, for benchmarks and
//! scripts.
//!
//! ```text
//! cargo run --release -p tensor-examples --example generate -- \
//!     --model ~/.cache/tensor-engine/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --prompt "The capital of France is" --max-tokens 32
//! # a benchmark shape: exactly 128 prompt tokens, 128 generated, EOS ignored
//! cargo run --release -p tensor-examples --example generate -- --model M.gguf \
//!     --prompt-file text.txt --prompt-tokens 128 --max-tokens 128 --ignore-eos --stats-json
//! ```
//!
//! The completion goes to stdout as it is generated; statistics go to stderr (with
//! `--stats-json`, also one JSON line with the keys of the chat example's). The prompt is the
//! text tokenized as the model's tokenizer does by default (BOS added only when the tokenizer
//! says so), or token ids given directly with `--prompt-ids`, so that another engine can be fed
//! the very same ids. The KV cache holds exactly prompt + `--max-tokens` positions, so memory
//! figures do not include a cache sized for the model's whole context.
//!
//! Exit codes: 0 success, 1 runtime error (loading, generation), 2 usage error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tensor_io::gguf::GgufFile;
use tensor_io::tokenizer::Tokenizer;
use tensor_models::generation::{generate, SamplingParams};
use tensor_models::llm::{gguf_tokenizer_spec, load_with, LoadOptions};

const USAGE: &str =
    "usage: generate --model PATH (--prompt TEXT | --prompt-file F | --prompt-ids IDS) [options]

Continues the prompt (no chat template): the completion on stdout, statistics on stderr.

options:
  --model PATH        a .gguf file, or a folder with config.json, *.safetensors and tokenizer.json
  --prompt TEXT       the prompt text
  --prompt-file F     read the prompt text from a file (UTF-8)
  --prompt-ids IDS    the prompt as token ids, comma- or space-separated
  --prompt-tokens N   cut or repeat the prompt's tokens to exactly N
  --max-tokens N      the most tokens to generate (default 128)
  --ignore-eos        do not stop at end-of-sequence tokens (always generate --max-tokens)
  --temperature T     sampling temperature, 0 = greedy (default 0)
  --top-k K           keep the K most likely tokens, 0 = off (default 0)
  --top-p P           nucleus sampling threshold in (0, 1], 1 = off (default 1)
  --seed S            sampling seed (default 0)
  --threads N         CPU threads (default: all cores)
  --warmup            first run one untimed 1-token step (touches every weight once)
  --stats-json        also write the statistics as one JSON line on stderr
  -h, --help          print this help";

enum Prompt {
    Text(String),
    File(PathBuf),
    Ids(Vec<u32>),
}

struct Args {
    model: PathBuf,
    prompt: Prompt,
    prompt_tokens: Option<usize>,
    max_tokens: usize,
    ignore_eos: bool,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    seed: u64,
    threads: Option<usize>,
    warmup: bool,
    stats_json: bool,
}

fn parse_ids(v: &str) -> Result<Vec<u32>, String> {
    let ids: Vec<u32> = v
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| format!("--prompt-ids: {s:?} is not a token id"))
        })
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Err("--prompt-ids: no ids given".into());
    }
    Ok(ids)
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut model = None;
    let mut prompts = Vec::new();
    let mut a = Args {
        model: PathBuf::new(),
        prompt: Prompt::Text(String::new()),
        prompt_tokens: None,
        max_tokens: 128,
        ignore_eos: false,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
        threads: None,
        warmup: false,
        stats_json: false,
    };
    fn num<T: std::str::FromStr>(
        flag: &str,
        v: Option<String>,
        ok: impl Fn(&T) -> bool,
        want: &str,
    ) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        match v.trim().parse::<T>() {
            Ok(x) if ok(&x) => Ok(x),
            _ => Err(format!("{flag}: invalid value {v:?} (expected {want})")),
        }
    }
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next());
        let no_value = |flag: &str| match inline {
            Some(_) => Err(format!("{flag} takes no value")),
            None => Ok(true),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--model" => model = Some(PathBuf::from(value().ok_or("--model needs a value")?)),
            "--prompt" => prompts.push(Prompt::Text(value().ok_or("--prompt needs a value")?)),
            "--prompt-file" => prompts.push(Prompt::File(PathBuf::from(
                value().ok_or("--prompt-file needs a value")?,
            ))),
            "--prompt-ids" => prompts.push(Prompt::Ids(parse_ids(
                &value().ok_or("--prompt-ids needs a value")?,
            )?)),
            "--prompt-tokens" => {
                a.prompt_tokens = Some(num(
                    "--prompt-tokens",
                    value(),
                    |&n: &usize| n > 0,
                    "N >= 1",
                )?)
            }
            "--max-tokens" => {
                a.max_tokens = num("--max-tokens", value(), |&n: &usize| n > 0, "N >= 1")?
            }
            "--ignore-eos" => a.ignore_eos = no_value("--ignore-eos")?,
            "--temperature" => {
                a.temperature = num(
                    "--temperature",
                    value(),
                    |&t: &f32| t.is_finite() && t >= 0.0,
                    "a number >= 0",
                )?
            }
            "--top-k" => a.top_k = num("--top-k", value(), |_: &usize| true, "an integer >= 0")?,
            "--top-p" => {
                a.top_p = num(
                    "--top-p",
                    value(),
                    |&p: &f32| p > 0.0 && p <= 1.0,
                    "a number in (0, 1]",
                )?
            }
            "--seed" => a.seed = num("--seed", value(), |_: &u64| true, "an integer >= 0")?,
            "--threads" => {
                a.threads = Some(num("--threads", value(), |&n: &usize| n > 0, "N >= 1")?)
            }
            "--warmup" => a.warmup = no_value("--warmup")?,
            "--stats-json" => a.stats_json = no_value("--stats-json")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    a.model = model.ok_or("--model is required")?;
    if a.model.as_os_str().is_empty() || !a.model.exists() {
        return Err(format!(
            "--model {}: no such file or folder",
            a.model.display()
        ));
    }
    a.prompt = match prompts.len() {
        0 => return Err("a prompt is required: --prompt, --prompt-file or --prompt-ids".into()),
        1 => prompts.pop().expect("one prompt"),
        _ => return Err("give only one of --prompt, --prompt-file and --prompt-ids".into()),
    };
    if let Prompt::File(f) = &a.prompt {
        if !f.is_file() {
            return Err(format!("--prompt-file {}: no such file", f.display()));
        }
    }
    Ok(Some(a))
}

/// The model's tokenizer, built without loading the weights, so that the prompt length is
/// known when the KV cache is sized.
fn tokenizer_for(model: &Path) -> Result<Tokenizer, String> {
    let is_gguf = model.is_file()
        && model
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let built = if is_gguf {
        GgufFile::open(model)
            .and_then(|f| gguf_tokenizer_spec(&f))
            .and_then(|spec| Tokenizer::from_gguf_spec(&spec))
    } else {
        let dir = if model.is_dir() {
            model
        } else {
            model.parent().unwrap_or(Path::new("."))
        };
        Tokenizer::from_file(dir.join("tokenizer.json"))
    };
    built.map_err(|e| format!("cannot build the tokenizer of {}: {e}", model.display()))
}

/// `ids` cut, or repeated from the start, to exactly `n` tokens.
fn fit_tokens(ids: &[u32], n: usize) -> Vec<u32> {
    ids.iter().copied().cycle().take(n).collect()
}

fn run(args: Args) -> Result<(), String> {
    let tokenizer = tokenizer_for(&args.model)?;
    let mut prompt = match &args.prompt {
        Prompt::Ids(ids) => ids.clone(),
        Prompt::Text(text) => tokenizer
            .encode(text, true)
            .map_err(|e| format!("tokenizing the prompt: {e}"))?,
        Prompt::File(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            tokenizer
                .encode(&text, true)
                .map_err(|e| format!("tokenizing {}: {e}", path.display()))?
        }
    };
    if prompt.is_empty() {
        return Err("the prompt has no tokens".into());
    }
    if let Some(n) = args.prompt_tokens {
        prompt = fit_tokens(&prompt, n);
    }
    let device = tensor_cpu::device();
    let opts = LoadOptions {
        max_seq_len: Some(prompt.len() + args.max_tokens),
        ..LoadOptions::default()
    };
    let mut lm = load_with(&args.model, &device, &opts)
        .map_err(|e| format!("cannot load the model from {}: {e}", args.model.display()))?;
    let vocab = lm.model.info().vocab_size;
    if let Some(bad) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(format!(
            "prompt token id {bad} is outside the vocabulary of {vocab}"
        ));
    }
    if prompt.len() + args.max_tokens > lm.config.context_length {
        eprintln!(
            "generate: warning: {} prompt + {} new tokens exceed the model's context length {}",
            prompt.len(),
            args.max_tokens,
            lm.config.context_length
        );
    }
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        max_new_tokens: args.max_tokens,
        // An empty list means "the model's EOS ids"; an id no vocabulary reaches means none.
        eos_token_ids: if args.ignore_eos {
            vec![u32::MAX]
        } else {
            Vec::new()
        },
        ..SamplingParams::default()
    };
    params.validate().map_err(|e| e.to_string())?;
    if args.warmup {
        // Weights that are memory-mapped or packed lazily are paid for here, not in the
        // measured prefill (benchmarks give the other engine the same warm-up).
        let once = SamplingParams {
            max_new_tokens: 1,
            ..params.clone()
        };
        generate(lm.model.as_mut(), &tokenizer, &prompt[..1], &once, |_| true)
            .map_err(|e| format!("warm-up failed: {e}"))?;
    }
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let out = generate(
        lm.model.as_mut(),
        &tokenizer,
        &prompt,
        &params,
        |piece| match stdout
            .write_all(piece.as_bytes())
            .and_then(|_| stdout.flush())
        {
            Ok(()) => true,
            Err(e) => {
                write_err = Some(e);
                false
            }
        },
    )
    .map_err(|e| format!("generation failed: {e}"))?;
    if let Some(e) = write_err {
        return Err(format!("writing to stdout: {e}"));
    }
    writeln!(stdout)
        .and_then(|_| stdout.flush())
        .map_err(|e| format!("writing to stdout: {e}"))?;
    drop(stdout);
    tensor_examples::report_stats(&out.stats, args.stats_json);
    Ok(())
}

fn main() -> ExitCode {
    tensor_examples::cli_main(
        "generate",
        USAGE,
        parse_args(std::env::args().skip(1)),
        |a| a.threads,
        run,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn prompt_tokens_cut_or_repeat() {
        assert_eq!(fit_tokens(&[1, 2, 3], 2), vec![1, 2]);
        assert_eq!(fit_tokens(&[1, 2, 3], 7), vec![1, 2, 3, 1, 2, 3, 1]);
    }

    #[test]
    fn ids_parse() {
        assert_eq!(parse_ids("1, 2 3,4").unwrap(), vec![1, 2, 3, 4]);
        assert!(parse_ids("1,x").is_err());
        assert!(parse_ids(" , ").is_err());
    }

    #[test]
    fn usage_errors() {
        let model = env!("CARGO_MANIFEST_DIR");
        assert!(parse(&["--prompt", "hi"]).is_err());
        assert!(parse(&["--model", model]).is_err());
        assert!(parse(&["--model", model, "--prompt", "a", "--prompt-ids", "1"]).is_err());
        assert!(parse(&["--model", model, "--prompt", "a", "--max-tokens", "0"]).is_err());
        assert!(parse(&["--model", model, "--prompt", "a", "--ignore-eos=1"]).is_err());
        let a = parse(&["--model", model, "--prompt-ids=5,6", "--ignore-eos"])
            .unwrap()
            .unwrap();
        assert!(a.ignore_eos && matches!(a.prompt, Prompt::Ids(ref v) if v == &[5, 6]));
    }
}
