//! Chat with a pretrained instruction-tuned LLM on the CPU.
//!
//! ```text
//! cargo run --release -p tensor-examples --example chat -- --message "What is the capital of France?"
//! cargo run --release -p tensor-examples --example chat -- --model Qwen/Qwen2.5-0.5B-Instruct
//! ```
//!
//! Without `--model` it uses SmolLM2-135M-Instruct (GGUF), fetched on first use by
//! `scripts/fetch-models.sh smollm2`. With `--message` it answers once: the reply alone on
//! stdout, statistics on stderr. Without it, it reads one user turn per line from stdin and
//! keeps the conversation (`/reset` clears it, `/quit` or end of input leaves).
//!
//! Exit codes: 0 success, 1 runtime error (loading, generation), 2 usage error.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{SystemTime, UNIX_EPOCH};

use tensor_io::chat_template::{ChatMessage, ChatTemplate};
use tensor_io::hub::{Hub, RepoType};
use tensor_io::tokenizer::Tokenizer;
use tensor_models::generation::{generate, SamplingParams};
use tensor_models::llm::{load, LoadedLm};

const USAGE: &str = "usage: chat [options]

Chats with an instruction-tuned LLM. With --message: prints the reply on stdout and statistics
on stderr. Without: an interactive session on stdin (/reset clears the history, /quit leaves).

options:
  --model M        a .gguf file, a folder with config.json, *.safetensors and tokenizer.json,
                   or a Hugging Face Hub id (org/name); default: SmolLM2-135M-Instruct (GGUF),
                   fetched by scripts/fetch-models.sh smollm2 into $TENSOR_ENGINE_CACHE
  --message TEXT   one user message: answer it and exit
  --system TEXT    a system message put before the conversation
  --max-tokens N   the most tokens per reply (default 256)
  --temperature T  sampling temperature, 0 = greedy (default 0.7)
  --top-k K        keep the K most likely tokens, 0 = off (default 50)
  --top-p P        nucleus sampling threshold in (0, 1], 1 = off (default 0.9)
  --seed S         sampling seed (default: from the clock)
  --threads N      CPU threads (default: all cores)
  --device D       cpu, cuda or cuda:N (default cpu)
  --stats-json     also write the statistics as one JSON line on stderr
  -h, --help       print this help";

const DEFAULT_MODEL_DIR: &str = "smollm2-135m-instruct";
const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const FETCH_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/fetch-models.sh");

struct Args {
    model: Option<String>,
    message: Option<String>,
    system: Option<String>,
    max_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    seed: Option<u64>,
    threads: Option<usize>,
    stats_json: bool,
    device: String,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        model: None,
        message: None,
        system: None,
        max_tokens: 256,
        temperature: 0.7,
        top_k: 50,
        top_p: 0.9,
        seed: None,
        threads: None,
        stats_json: false,
        device: "cpu".into(),
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
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--model" => a.model = Some(value().ok_or("--model needs a value")?),
            "--message" => a.message = Some(value().ok_or("--message needs a value")?),
            "--system" => a.system = Some(value().ok_or("--system needs a value")?),
            "--max-tokens" => {
                a.max_tokens = num("--max-tokens", value(), |&n: &usize| n > 0, "N >= 1")?
            }
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
            "--seed" => a.seed = Some(num("--seed", value(), |_: &u64| true, "an integer >= 0")?),
            "--device" => a.device = value().ok_or("--device needs a value")?,
            "--threads" => {
                a.threads = Some(num("--threads", value(), |&n: &usize| n > 0, "N >= 1")?)
            }
            "--stats-json" => {
                if inline.is_some() {
                    return Err("--stats-json takes no value".into());
                }
                a.stats_json = true
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some(m) = &a.model {
        if m.is_empty() {
            return Err("--model needs a value".into());
        }
        if !Path::new(m).exists() && !looks_like_hub_id(m) {
            return Err(format!(
                "--model {m:?}: no such file or folder (nor an org/name Hub id)"
            ));
        }
    }
    Ok(Some(a))
}

/// `org/name` with the characters the Hub allows, and not a path to a model file.
fn looks_like_hub_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.starts_with('-')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let lower = name.to_ascii_lowercase();
    part_ok(org)
        && part_ok(name)
        && ![".gguf", ".safetensors", ".json", ".bin", ".pth"]
            .iter()
            .any(|ext| lower.ends_with(ext))
}

/// `${TENSOR_ENGINE_CACHE:-$HOME/.cache/tensor-engine}/models`, as scripts/fetch-models.sh.
fn models_cache() -> PathBuf {
    match std::env::var_os("TENSOR_ENGINE_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("models"),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
            PathBuf::from(home).join(".cache/tensor-engine/models")
        }
    }
}

/// The default model: the cached SmolLM2 GGUF, fetched by the script when missing.
fn default_model() -> Result<PathBuf, String> {
    let cached = models_cache()
        .join(DEFAULT_MODEL_DIR)
        .join(DEFAULT_MODEL_FILE);
    if cached.is_file() {
        return Ok(cached);
    }
    eprintln!("chat: fetching the default model with {FETCH_SCRIPT} smollm2 ...");
    let out = Command::new("bash")
        .arg(FETCH_SCRIPT)
        .arg("smollm2")
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {FETCH_SCRIPT}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{FETCH_SCRIPT} smollm2 failed ({}); pass --model PATH instead",
            out.status
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .unwrap_or(cached);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{FETCH_SCRIPT} smollm2 finished but {} is missing",
            path.display()
        ))
    }
}

/// Download (or find in the cache) what `load` needs of a Hub repository; returns the
/// snapshot folder. Offline (`HF_HUB_OFFLINE=1`), everything must already be cached.
fn fetch_hub_model(repo: &str) -> Result<PathBuf, String> {
    let hub = Hub::from_env();
    let offline = hub.config().offline;
    let err = |e: tensor_core::Error| format!("{repo}: {e}");
    // Optional files: absent ones are skipped (offline: looked up in the cache only).
    let optional = |name: &str| -> Option<PathBuf> {
        if offline {
            hub.cached(RepoType::Model, repo, None, name).ok().flatten()
        } else {
            hub.fetch(repo, None, name).ok()
        }
    };
    eprintln!(
        "chat: resolving {repo} from the Hugging Face Hub{}",
        if offline { " cache (offline)" } else { "" }
    );
    let config = hub.fetch(repo, None, "config.json").map_err(err)?;
    let dir = config
        .parent()
        .ok_or_else(|| format!("{repo}: odd cache path {}", config.display()))?
        .to_path_buf();
    hub.fetch(repo, None, "tokenizer.json").map_err(err)?;
    for name in [
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        optional(name);
    }
    match optional("model.safetensors.index.json") {
        Some(index) => {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| format!("reading {}: {e}", index.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("parsing {}: {e}", index.display()))?;
            let mut shards: Vec<&str> = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| format!("{}: no weight_map", index.display()))?
                .values()
                .filter_map(|v| v.as_str())
                .collect();
            shards.sort_unstable();
            shards.dedup();
            for shard in shards {
                hub.fetch(repo, None, shard).map_err(err)?;
            }
        }
        None => {
            hub.fetch(repo, None, "model.safetensors").map_err(err)?;
        }
    }
    Ok(dir)
}

/// How a conversation becomes prompt text.
enum Template {
    Jinja(Box<ChatTemplate>),
    /// `System: ...\nUser: ...\nAssistant:` for models without a chat template.
    Plain,
}

impl Template {
    fn find(lm: &LoadedLm, tokenizer: &Tokenizer) -> Template {
        let found = match lm.gguf_tokenizer_spec() {
            Ok(Some(spec)) if spec.chat_template.is_some() => {
                ChatTemplate::from_gguf_spec(&spec).map(Some)
            }
            Ok(Some(_)) => Ok(None),
            Err(e) => Err(e),
            Ok(None) => {
                let dir = &lm.path;
                let has_config = dir.join("tokenizer_config.json").is_file()
                    && std::fs::read_to_string(dir.join("tokenizer_config.json"))
                        .is_ok_and(|t| t.contains("\"chat_template\""));
                if dir.join("chat_template.jinja").is_file() || has_config {
                    ChatTemplate::from_pretrained_dir(dir).map(Some)
                } else {
                    Ok(None)
                }
            }
        };
        match found {
            Ok(Some(mut t)) => {
                // Templates may name tokens the metadata left out (e.g. `bos_token`).
                for (key, id) in [
                    ("bos_token", tokenizer.bos_token_id()),
                    ("eos_token", tokenizer.eos_token_id()),
                ] {
                    if !t.special_tokens().contains_key(key) {
                        if let Some(tok) = id.and_then(|id| tokenizer.id_to_token(id)) {
                            t = t.with_special_token(key, tok);
                        }
                    }
                }
                Template::Jinja(Box::new(t))
            }
            Ok(None) => {
                eprintln!(
                    "chat: warning: the model has no chat template; using a plain \
                     \"System:/User:/Assistant:\" prompt"
                );
                Template::Plain
            }
            Err(e) => {
                eprintln!(
                    "chat: warning: cannot read the model's chat template ({e}); using a plain \
                     \"System:/User:/Assistant:\" prompt"
                );
                Template::Plain
            }
        }
    }

    fn render(&self, messages: &[ChatMessage]) -> Result<String, String> {
        match self {
            Template::Jinja(t) => t
                .render(messages, true)
                .map_err(|e| format!("rendering the chat template: {e}")),
            Template::Plain => {
                let mut s = String::new();
                for m in messages {
                    let role = match m.role.as_str() {
                        "system" => "System",
                        "assistant" => "Assistant",
                        _ => "User",
                    };
                    s.push_str(&format!("{role}: {}\n", m.content.trim()));
                }
                s.push_str("Assistant:");
                Ok(s)
            }
        }
    }

    /// Whether the tokenizer should add its own special tokens (BOS) to the rendered text:
    /// chat templates write them themselves, as `apply_chat_template` assumes.
    fn add_special_tokens(&self) -> bool {
        matches!(self, Template::Plain)
    }

    /// The special tokens that close an assistant turn, found by rendering a short
    /// conversation and looking at what follows the reply (e.g. `<|im_end|>`).
    fn end_of_turn_ids(&self, tokenizer: &Tokenizer) -> Vec<u32> {
        let mut ids = Vec::new();
        if let Template::Jinja(t) = self {
            const MARK: &str = "Xq7Zz9";
            let conv = [
                ChatMessage::new("user", "Hi"),
                ChatMessage::new("assistant", MARK),
            ];
            if let Ok(text) = t.render(&conv, false) {
                if let Some(at) = text.rfind(MARK) {
                    let after = &text[at + MARK.len()..];
                    if let Ok(toks) = tokenizer.encode(after, false) {
                        ids.extend(
                            toks.into_iter()
                                .take(3)
                                .filter(|&id| tokenizer.is_special(id))
                                .take(1),
                        );
                    }
                }
            }
        }
        for name in ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"] {
            if let Some(id) = tokenizer.token_to_id(name) {
                if tokenizer.is_special(id) && !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }
}

struct Chat {
    lm: LoadedLm,
    tokenizer: Tokenizer,
    template: Template,
    params: SamplingParams,
    stats_json: bool,
}

impl Chat {
    /// Generate the assistant's reply to `messages`, streaming it to stdout.
    fn reply(&mut self, messages: &[ChatMessage]) -> Result<String, String> {
        let text = self.template.render(messages)?;
        let prompt = self
            .tokenizer
            .encode(&text, self.template.add_special_tokens())
            .map_err(|e| format!("tokenizing the prompt: {e}"))?;
        let max_seq = self.lm.model.info().max_seq_len;
        if prompt.len() >= max_seq {
            return Err(format!(
                "the conversation has {} tokens, the model holds at most {max_seq} \
                 (start over with /reset)",
                prompt.len()
            ));
        }
        let mut stdout = std::io::stdout().lock();
        let mut write_err = None;
        let out = generate(
            self.lm.model.as_mut(),
            &self.tokenizer,
            &prompt,
            &self.params,
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
        writeln!(stdout).map_err(|e| format!("writing to stdout: {e}"))?;
        stdout
            .flush()
            .map_err(|e| format!("writing to stdout: {e}"))?;
        drop(stdout);
        tensor_examples::report_stats(&out.stats, self.stats_json);
        // Advance the seed so that a repeated question gets a fresh sample.
        self.params.seed = self.params.seed.wrapping_add(1);
        Ok(out.text)
    }
}

fn system_messages(system: &Option<String>) -> Vec<ChatMessage> {
    system
        .iter()
        .map(|s| ChatMessage::new("system", s.as_str()))
        .collect()
}

fn interactive(chat: &mut Chat, system: &Option<String>) -> Result<(), String> {
    let mut history = system_messages(system);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    eprintln!("chat: type a message (/reset clears the history, /quit leaves)");
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let Some(line) = lines.next() else {
            eprintln!();
            return Ok(());
        };
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                history = system_messages(system);
                eprintln!("chat: history cleared");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::new("user", line));
        match chat.reply(&history) {
            Ok(text) => history.push(ChatMessage::new("assistant", text.trim())),
            Err(e) => {
                history.pop();
                eprintln!("chat: {e}");
            }
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let path = match &args.model {
        None => default_model()?,
        Some(m) if Path::new(m).exists() => PathBuf::from(m),
        Some(m) => fetch_hub_model(m)?,
    };
    let device = tensor_examples::device_from_name(&args.device)?;
    let lm = load(&path, &device)
        .map_err(|e| format!("cannot load the model from {}: {e}", path.display()))?;
    let tokenizer = lm
        .tokenizer()
        .map_err(|e| format!("cannot build the tokenizer: {e}"))?;
    let template = Template::find(&lm, &tokenizer);

    let mut eos = lm.model.info().eos_token_ids.clone();
    eos.extend(tokenizer.eos_token_id());
    eos.extend(template.end_of_turn_ids(&tokenizer));
    let mut seen = std::collections::HashSet::new();
    eos.retain(|id| seen.insert(*id));
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed,
        max_new_tokens: args.max_tokens,
        eos_token_ids: eos,
        stop_strings: match template {
            Template::Plain => vec!["\nUser:".into(), "\nSystem:".into()],
            Template::Jinja(_) => Vec::new(),
        },
        ..SamplingParams::default()
    };
    params.validate().map_err(|e| e.to_string())?;
    let mut chat = Chat {
        lm,
        tokenizer,
        template,
        params,
        stats_json: args.stats_json,
    };
    match &args.message {
        Some(msg) => {
            let mut messages = system_messages(&args.system);
            messages.push(ChatMessage::new("user", msg.as_str()));
            chat.reply(&messages).map(|_| ())
        }
        None => interactive(&mut chat, &args.system),
    }
}

fn main() -> ExitCode {
    tensor_examples::cli_main(
        "chat",
        USAGE,
        parse_args(std::env::args().skip(1)),
        |a| a.threads,
        run,
    )
}
