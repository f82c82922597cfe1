//! End-to-end runs of the `quantize` and `generate` examples.
//!
//! The quantize runs use the tiny llama fixture of tensor-models (`model.gguf`, and the same
//! weights as a Hugging Face folder), so they always run; the ones on SmolLM2-135M-Instruct
//! are skipped, with a note, unless it is cached under
//! `${TENSOR_ENGINE_CACHE:-$HOME/.cache/tensor-engine}/models/smollm2-135m-instruct/`
//! (`scripts/fetch-models.sh smollm2` puts it there). The examples are built and run in
//! release mode through `cargo run --release`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tensor_io::gguf::{GgmlType, GgufFile};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tensor-models/tests/fixtures/llm/llama")
}

fn smollm2() -> Option<PathBuf> {
    let base = match std::env::var_os("TENSOR_ENGINE_CACHE").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
            .join(".cache/tensor-engine"),
    };
    let p = base.join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
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

/// A fresh scratch folder for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quantize-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `cargo run --release -q -p tensor-examples --example NAME -- ARGS`.
fn run_example(name: &str, args: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
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
        .output()
        .expect("cargo runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn quantize(input: &Path, output: &Path, ty: &str) {
    let out = run_example(
        "quantize",
        &[input.to_str().unwrap(), output.to_str().unwrap(), ty],
    );
    assert!(
        out.status.success(),
        "quantize {ty} failed: {}",
        text(&out.stderr)
    );
}

fn types_of(file: &GgufFile) -> HashMap<String, GgmlType> {
    file.tensors()
        .iter()
        .map(|t| (t.name().to_string(), t.ggml_type()))
        .collect()
}

#[test]
fn fixture_to_q8_0() {
    let dir = scratch("q8_0");
    let out = dir.join("tiny.Q8_0.gguf");
    quantize(&fixture_dir().join("model.gguf"), &out, "Q8_0");
    let f = GgufFile::open(&out).unwrap();
    let ty = types_of(&f);
    assert_eq!(ty.len(), 22);
    for i in 0..2 {
        for n in [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
        ] {
            assert_eq!(
                ty[&format!("blk.{i}.{n}.weight")],
                GgmlType::Q8_0,
                "{n} {i}"
            );
        }
        // Rows of 48 fit no 32-block: F16, as llama.cpp's last resort.
        assert_eq!(ty[&format!("blk.{i}.ffn_down.weight")], GgmlType::F16);
        assert_eq!(ty[&format!("blk.{i}.attn_norm.weight")], GgmlType::F32);
    }
    assert_eq!(ty["token_embd.weight"], GgmlType::Q8_0);
    assert_eq!(ty["output.weight"], GgmlType::Q8_0);
    assert_eq!(ty["rope_freqs.weight"], GgmlType::F32);
    // Metadata: copied, plus the file type (LLAMA_FTYPE_MOSTLY_Q8_0 = 7).
    assert_eq!(f.get_u32("general.file_type").unwrap(), 7);
    assert_eq!(f.get_u32("general.quantization_version").unwrap(), 2);
    assert_eq!(f.get_str("general.name").unwrap(), "tiny-llama");
    assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 128);
    // The values survive: Q8_0 of small random weights is close to f32.
    let src = GgufFile::open(fixture_dir().join("model.gguf")).unwrap();
    let (a, b) = (
        src.dequantize("blk.1.attn_q.weight").unwrap(),
        f.dequantize("blk.1.attn_q.weight").unwrap(),
    );
    let max = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= max / 100.0, "max error {err} for values up to {max}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fixture_to_q4_k_m() {
    let dir = scratch("q4_k_m");
    let out = dir.join("tiny.Q4_K_M.gguf");
    quantize(&fixture_dir().join("model.gguf"), &out, "Q4_K_M");
    let f = GgufFile::open(&out).unwrap();
    let ty = types_of(&f);
    // Rows of 32 fit no 256-block, so llama.cpp's fallbacks decide: Q4_K -> Q5_0, Q6_K -> Q8_0.
    // attn_v / ffn_down get Q6_K in "more bits" layers (of 2 layers: the last one).
    assert_eq!(ty["blk.0.attn_v.weight"], GgmlType::Q5_0);
    assert_eq!(ty["blk.1.attn_v.weight"], GgmlType::Q8_0);
    assert_eq!(ty["blk.0.attn_q.weight"], GgmlType::Q5_0);
    assert_eq!(ty["blk.1.ffn_up.weight"], GgmlType::Q5_0);
    assert_eq!(ty["blk.0.ffn_down.weight"], GgmlType::F16);
    assert_eq!(ty["blk.1.ffn_down.weight"], GgmlType::F16);
    // Untied output: Q8_0 (rows not a multiple of 256); token embeddings: the base type.
    assert_eq!(ty["output.weight"], GgmlType::Q8_0);
    assert_eq!(ty["token_embd.weight"], GgmlType::Q5_0);
    assert_eq!(ty["output_norm.weight"], GgmlType::F32);
    assert_eq!(f.get_u32("general.file_type").unwrap(), 15);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn safetensors_folder_converts_like_the_fixture_gguf() {
    // The fixture's GGUF was written from the same weights as llama.cpp's converter does
    // (q/k permuted, llama3 rope factors as rope_freqs): F32 output must equal it bit for bit.
    let dir = scratch("hf");
    let out = dir.join("tiny.F32.gguf");
    quantize(&fixture_dir(), &out, "F32");
    let ours = GgufFile::open(&out).unwrap();
    let theirs = GgufFile::open(fixture_dir().join("model.gguf")).unwrap();
    assert_eq!(ours.tensors().len(), theirs.tensors().len());
    for t in theirs.tensors() {
        assert_eq!(
            ours.tensor_bytes(t.name()).unwrap(),
            theirs.tensor_bytes(t.name()).unwrap(),
            "{}",
            t.name()
        );
    }
    assert_eq!(ours.architecture().unwrap(), "llama");
    for key in ["block_count", "embedding_length", "attention.head_count_kv"] {
        let k = format!("llama.{key}");
        assert_eq!(
            ours.get_u32(&k).unwrap(),
            theirs.get_u32(&k).unwrap(),
            "{k}"
        );
    }
    assert_eq!(ours.get_u32("general.file_type").unwrap(), 0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn quantize_usage_errors_exit_2() {
    let fixture = fixture_dir().join("model.gguf");
    let fx = fixture.to_str().unwrap();
    let out = std::env::temp_dir().join("quantize-cli-never-written.gguf");
    let o = out.to_str().unwrap();
    for args in [
        &[fx, o, "Q4_2"][..],
        &[fx, o, "IQ2_XXS"],
        &[fx, o],
        &[fx, o, "Q8_0", "extra"],
        &[fx, o, "Q8_0", "--threads", "0"],
        &[fx, o, "Q8_0", "--bogus"],
        &[fx, o, "Q8_0", "--pure=yes"],
        &["/definitely/not/here.gguf", o, "Q8_0"],
        &[fx, "/definitely/not/a/folder/out.gguf", "Q8_0"],
    ] {
        let r = run_example("quantize", args);
        let stderr = text(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("quantize: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert!(!out.exists());
    let r = run_example("quantize", &[fx, o, "Q9_9"]);
    assert!(text(&r.stderr).contains("unknown TYPE \"Q9_9\""));
}

#[test]
fn quantize_unreadable_input_exits_1() {
    let dir = scratch("bad");
    let bad = dir.join("broken.gguf");
    std::fs::write(&bad, b"not a gguf file").unwrap();
    let out = dir.join("out.gguf");
    let r = run_example(
        "quantize",
        &[bad.to_str().unwrap(), out.to_str().unwrap(), "Q8_0"],
    );
    let stderr = text(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken.gguf"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A folder without config.json is neither input kind.
    let r = run_example(
        "quantize",
        &[dir.to_str().unwrap(), out.to_str().unwrap(), "Q8_0"],
    );
    let stderr = text(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no config.json"), "{stderr}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn smollm2_q8_0_completes_with_paris() {
    let Some(model) = smollm2() else { return };
    let dir = scratch("smollm2");
    let out = dir.join("SmolLM2.Q8_0.gguf");
    quantize(&model, &out, "Q8_0");
    let r = run_example(
        "generate",
        &[
            "--model",
            out.to_str().unwrap(),
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "4",
            "--threads",
            "2",
        ],
    );
    std::fs::remove_dir_all(&dir).ok();
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(text(&r.stdout).contains("Paris"), "{}", text(&r.stdout));
}

#[test]
fn generate_exact_prompt_tokens_and_stats() {
    let Some(model) = smollm2() else { return };
    let r = run_example(
        "generate",
        &[
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Once upon a time",
            "--prompt-tokens",
            "20",
            "--max-tokens",
            "6",
            "--ignore-eos",
            "--warmup",
            "--stats-json",
        ],
    );
    let stderr = text(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    let stats: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("the stats line is JSON"))
        .collect();
    assert_eq!(stats.len(), 1, "{stderr}");
    assert_eq!(stats[0]["prompt_tokens"], 20);
    assert_eq!(stats[0]["generated_tokens"], 6);
    for key in ["ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb"] {
        assert!(
            stats[0][key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {}",
            stats[0]
        );
    }
}

#[test]
fn generate_usage_errors_exit_2() {
    let fixture = fixture_dir().join("model.gguf");
    let fx = fixture.to_str().unwrap();
    for args in [
        &["--prompt", "hi"][..],
        &["--model", fx],
        &["--model", fx, "--prompt", "a", "--prompt-ids", "1"],
        &["--model", fx, "--prompt-ids", "1,x"],
        &["--model", fx, "--prompt", "a", "--max-tokens", "0"],
        &["--model", fx, "--prompt", "a", "--prompt-tokens", "-3"],
        &["--model", fx, "--prompt", "a", "--temperature", "hot"],
        &["--model", fx, "--prompt", "a", "--ignore-eos=no"],
        &["--model", fx, "--prompt-file", "/no/such/prompt.txt"],
        &["--model", "/no/such/model.gguf", "--prompt", "a"],
        &["--model", fx, "--prompt", "a", "--frobnicate"],
    ] {
        let r = run_example("generate", args);
        let stderr = text(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("generate: "), "{args:?}: {stderr}");
        assert!(r.stdout.is_empty(), "{args:?}");
    }
}
