//! Sentence embeddings with a BERT sentence-transformers model (e.g. all-MiniLM-L6-v2) on the
//! CPU.
//!
//! ```text
//! scripts/fetch-models.sh minilm
//! cargo run --release -p tensor-examples --example embed -- \
//!     --model ~/.cache/tensor-engine/models/all-minilm-l6-v2 --text "Hello" --text "World"
//! ```
//!
//! Prints one JSON array per text (the mean-pooled, L2-normalised embedding), in order.

use std::path::PathBuf;
use std::process::ExitCode;

use tensor_models::SentenceEmbedder;

const USAGE: &str = "usage: embed --model PATH --text T [--text T ...]

Prints one JSON array per --text: its normalised, mean-pooled sentence embedding.

options:
  --model PATH   a sentence-transformers BERT folder (config.json, model.safetensors,
                 tokenizer.json), e.g. the one scripts/fetch-models.sh minilm caches
  --text T       a text to embed (repeat for several; they run as one batch)
  -h, --help     print this help";

struct Args {
    model: PathBuf,
    texts: Vec<String>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut model = None;
    let mut texts = Vec::new();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next());
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--model" => model = Some(PathBuf::from(value().ok_or("--model needs a value")?)),
            "--text" => texts.push(value().ok_or("--text needs a value")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let model = model.ok_or("--model is required")?;
    if texts.is_empty() {
        return Err("give at least one --text".into());
    }
    Ok(Some(Args { model, texts }))
}

/// A JSON array of numbers (non-finite values, which a normalised embedding never has, become
/// `null` so the line stays valid JSON).
fn json_array(v: &[f32]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|x| {
            if x.is_finite() {
                format!("{x}")
            } else {
                "null".into()
            }
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn run(args: Args) -> Result<(), String> {
    let device = tensor_cpu::device();
    let embedder = SentenceEmbedder::load(&args.model, &device)
        .map_err(|e| format!("cannot load the model from {}: {e}", args.model.display()))?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let embeddings = embedder.embed(&texts).map_err(|e| e.to_string())?;
    for e in embeddings {
        println!("{}", json_array(&e));
    }
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
            eprintln!("embed: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("embed: {msg}");
            ExitCode::FAILURE
        }
    }
}
