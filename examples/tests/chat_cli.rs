//! End-to-end runs of the `chat` and `perplexity` examples on SmolLM2-135M-Instruct (GGUF).
//!
//! The runs that need the model are skipped, with a note, unless it is cached under
//! `${TENSOR_ENGINE_CACHE:-$HOME/.cache/tensor-engine}/models/smollm2-135m-instruct/`
//! (`scripts/fetch-models.sh smollm2` puts it there). The examples are built and run in
//! release mode through `cargo run --release`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output};

const TEXT: &str = "The river town woke slowly on winter mornings. Before the sun rose over the \
hills, the baker lit his ovens and the smell of bread drifted along the narrow streets. Children \
walked to school in small groups, their breath white in the cold air, while their parents opened \
shops, swept the steps and talked about the weather. Most people in the town had lived there all \
their lives, and they knew each other well. They knew who kept the best garden, who told the \
longest stories, and who could be trusted to repair a broken clock.

In the spring the river rose with melted snow from the mountains. Farmers watched the water \
carefully, because a flood could ruin a whole season of work. When the water stayed within its \
banks, the fields turned green, and the market in the main square grew busy again. People sold \
eggs, cheese, honey, apples from the previous autumn, and warm wool for the last cold nights. \
Visitors came from the nearby villages to buy tools and to hear the news.

Summer brought long evenings and music. Families carried tables into the street and shared \
their dinners with their neighbours. Old men played cards under the trees, and young people \
danced until late at night. The school was closed, so the children spent their days swimming in \
the river, climbing the hills and reading books in the shade. Everyone agreed that summer passed \
too quickly.

In the autumn the leaves turned red and gold, and the harvest filled the barns. It was a time of \
hard work, but also of thanks. At the end of the season the town held a festival with food, \
games and a small parade. Then the days grew shorter, the first frost covered the fields, and \
the town prepared once more for the quiet months of winter. The baker lit his ovens, the \
children walked to school, and life went on as it always had.";

fn model_path() -> PathBuf {
    let base = match std::env::var_os("TENSOR_ENGINE_CACHE").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
            .join(".cache/tensor-engine"),
    };
    base.join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The cached model, or `None` after printing why the test is skipped.
fn cached_model() -> Option<PathBuf> {
    let p = model_path();
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} is not cached (run scripts/fetch-models.sh smollm2)",
            p.display()
        );
        None
    }
}

/// `cargo run --release -q -p tensor-examples --example NAME -- ARGS`, with `stdin` piped in.
fn run_example(name: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "--release",
            "-q",
            "-p",
            "tensor-examples",
            "--example",
            name,
            "--",
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("cargo runs");
    {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
    }
    child.wait_with_output().expect("cargo finishes")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const STATS_KEYS: [&str; 6] = [
    "prompt_tokens",
    "generated_tokens",
    "ttft_ms",
    "prefill_tok_s",
    "decode_tok_s",
    "peak_rss_mb",
];

#[test]
fn chat_one_shot_answers_and_reports_stats() {
    let Some(model) = cached_model() else { return };
    let out = run_example(
        "chat",
        &[
            "--model",
            model.to_str().unwrap(),
            "--message",
            "What is the capital of France?",
            "--temperature",
            "0",
            "--max-tokens",
            "32",
            "--stats-json",
        ],
        None,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "chat failed: {stderr}");
    assert!(stdout.contains("Paris"), "stdout: {stdout:?}");
    let stats: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("the stats line is JSON"))
        .collect();
    assert_eq!(stats.len(), 1, "one JSON line expected on stderr: {stderr}");
    for key in STATS_KEYS {
        let v = stats[0].get(key).and_then(|v| v.as_f64());
        assert!(
            v.is_some_and(|v| v.is_finite() && v >= 0.0),
            "{key} in {}",
            stats[0]
        );
    }
    assert!(stats[0]["prompt_tokens"].as_u64().unwrap() > 0);
    let generated = stats[0]["generated_tokens"].as_u64().unwrap();
    assert!((1..=32).contains(&generated), "{generated}");
}

#[test]
fn chat_default_model_interactive_keeps_history() {
    if cached_model().is_none() {
        return;
    }
    // No --model: the cached default. Two turns, a reset, then end of input.
    let out = run_example(
        "chat",
        &["--temperature", "0", "--max-tokens", "24", "--threads", "2"],
        Some("What is the capital of France?\n/reset\nWhat is the capital of France?\n"),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "chat failed: {stderr}");
    let replies: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(replies.len(), 2, "stdout: {stdout:?}");
    // Greedy and the same history after /reset: the same reply.
    assert_eq!(replies[0], replies[1]);
    assert!(replies[0].contains("Paris"), "stdout: {stdout:?}");
    assert!(stderr.contains("history cleared"), "stderr: {stderr}");
}

#[test]
fn chat_usage_errors_exit_2() {
    for args in [
        &["--bogus"][..],
        &["--temperature", "-1", "--message", "hi"],
        &["--temperature", "warm", "--message", "hi"],
        &["--top-p", "0", "--message", "hi"],
        &["--top-p", "1.5", "--message", "hi"],
        &["--threads", "0", "--message", "hi"],
        &["--max-tokens"],
        &["--model", "/definitely/not/here.gguf", "--message", "hi"],
    ] {
        let out = run_example("chat", args, None);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("chat: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn chat_runtime_error_exits_1() {
    let dir = std::env::temp_dir().join(format!("chat-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("broken.gguf");
    std::fs::write(&bad, b"not a gguf file").unwrap();
    let out = run_example(
        "chat",
        &["--model", bad.to_str().unwrap(), "--message", "hi"],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot load the model"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn perplexity_of_plain_english_is_reasonable() {
    let Some(model) = cached_model() else { return };
    let dir = std::env::temp_dir().join(format!("ppl-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("text.txt");
    std::fs::write(&file, TEXT).unwrap();
    let out = run_example(
        "perplexity",
        &[
            "--model",
            model.to_str().unwrap(),
            "--file",
            file.to_str().unwrap(),
            "--ctx",
            "128",
        ],
        None,
    );
    std::fs::remove_dir_all(&dir).ok();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "perplexity failed: {stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let ppl: f64 = last
        .strip_prefix("ppl: ")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("last line {last:?} of {stdout:?}"));
    assert!(ppl.is_finite() && ppl > 1.0 && ppl < 1000.0, "ppl {ppl}");
    assert!(stdout.contains("tokens: ") && stdout.contains("windows: "));
}

#[test]
fn perplexity_usage_errors_exit_2() {
    for args in [
        &["--file", "x.txt"][..],
        &["--model", "m.gguf"],
        &["--model", "/no/such.gguf", "--file", "/no/such.txt"],
        &["--ctx", "1"],
        &["--ctx", "many"],
        &["--frobnicate"],
    ] {
        let out = run_example("perplexity", args, None);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("perplexity: "), "{args:?}: {stderr}");
    }
}
