//! Tokenizers against Hugging Face: the fixtures under `fixtures/tokenizer/` were written by
//! `tools/make_tokenizer_fixtures.py` from SmolLM2-135M-Instruct's GGUF (byte-level BPE) and a
//! small SentencePiece vocabulary, with `transformers`' ids and decodes for hard strings.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use tensor_io::tokenizer::{GgufTokenizerSpec, Tokenizer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

fn read(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .expect("gunzip fixture");
        out
    } else {
        bytes
    }
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&read(path)).expect("fixture is JSON")
}

fn spec(path: &Path) -> GgufTokenizerSpec {
    serde_json::from_slice(&read(path)).expect("fixture is a GgufTokenizerSpec")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// A fresh temporary folder for this test.
fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tensor-io-tok-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every case: ids with and without special tokens, and both decodes, equal Hugging Face's.
fn check_cases(tok: &Tokenizer, cases: &Value, what: &str) -> usize {
    let cases = cases.as_array().expect("cases");
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode(text, true).unwrap();
        assert_eq!(got, want, "{what}: ids for {text:?}");
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&case["ids_no_special"]),
            "{what}: ids without specials for {text:?}"
        );
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{what}: decode of {text:?}"
        );
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap(),
            "{what}: decode (skip special) of {text:?}"
        );
    }
    cases.len()
}

fn smollm2_from_json() -> Tokenizer {
    let dir = temp_dir("smollm2");
    std::fs::write(
        dir.join("tokenizer.json"),
        read(&fixtures().join("smollm2/tokenizer.json.gz")),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("smollm2/tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    tok
}

#[test]
fn smollm2_tokenizer_json_matches_transformers() {
    let expected = json(&fixtures().join("smollm2/expected.json"));
    let tok = smollm2_from_json();
    let n = check_cases(&tok, &expected["cases"], "tokenizer.json");
    assert!(n >= 20);
    assert_eq!(
        tok.vocab_size() as u64,
        expected["vocab_size"].as_u64().unwrap()
    );
    assert_eq!(tok.bos_token_id().map(u64::from), expected["bos"].as_u64());
    assert_eq!(tok.eos_token_id().map(u64::from), expected["eos"].as_u64());
}

#[test]
fn smollm2_gguf_spec_matches_transformers_and_tokenizer_json() {
    let expected = json(&fixtures().join("smollm2/expected.json"));
    let spec = spec(&fixtures().join("smollm2/gguf_spec.json.gz"));
    assert_eq!(spec.model, "gpt2");
    assert_eq!(spec.pre.as_deref(), Some("smollm"));
    let tok = Tokenizer::from_gguf_spec(&spec).unwrap();
    check_cases(&tok, &expected["cases"], "gguf spec");
    assert_eq!(
        tok.vocab_size() as u64,
        expected["vocab_size"].as_u64().unwrap()
    );
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_id(), Some(2));

    // The same ids as the tokenizer.json, on every case and on a long mixed text.
    let from_json = smollm2_from_json();
    let mut long = String::new();
    for case in expected["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            from_json.encode(text, true).unwrap()
        );
        long.push_str(text);
        long.push_str(" \u{3000}");
    }
    let a = tok.encode(&long, true).unwrap();
    assert_eq!(a, from_json.encode(&long, true).unwrap());
    assert_eq!(tok.decode(&a, false).unwrap(), long, "decode round-trips");
}

#[test]
fn smollm2_vocabulary_with_other_pre_tokenizers() {
    let expected = json(&fixtures().join("smollm2/expected.json"));
    let base = spec(&fixtures().join("smollm2/gguf_spec.json.gz"));
    let variants = expected["variants"].as_array().unwrap();
    let pres: Vec<&str> = variants
        .iter()
        .map(|v| v["pre"].as_str().unwrap())
        .collect();
    assert_eq!(pres, ["gpt2", "llama-bpe", "qwen2", "tekken"]);
    for v in variants {
        let pre = v["pre"].as_str().unwrap();
        let spec = GgufTokenizerSpec {
            pre: Some(pre.to_owned()),
            add_bos: v["add_bos"].as_bool(),
            ..base.clone()
        };
        let tok = Tokenizer::from_gguf_spec(&spec).unwrap();
        check_cases(&tok, &v["cases"], pre);
    }
}

#[test]
fn special_tokens_are_matched_whole() {
    let spec = spec(&fixtures().join("smollm2/gguf_spec.json.gz"));
    let tok = Tokenizer::from_gguf_spec(&spec).unwrap();
    let start = tok.token_to_id("<|im_start|>").unwrap();
    let end = tok.token_to_id("<|im_end|>").unwrap();
    assert_eq!((start, end), (1, 2));
    assert!(tok.is_special(start) && tok.is_special(end));
    let ids = tok.encode("x<|im_start|>user<|im_end|>", false).unwrap();
    assert!(ids.contains(&start) && ids.contains(&end), "{ids:?}");
    assert_eq!(tok.id_to_token(start).as_deref(), Some("<|im_start|>"));
    // A normal token: byte-level spelling, and not special.
    let the = tok.token_to_id("Ġthe").unwrap();
    assert_eq!(tok.id_to_token(the).as_deref(), Some("Ġthe"));
    assert!(!tok.is_special(the));
    assert_eq!(tok.id_to_token(u32::MAX), None);
    // Almost special, so plain text.
    let ids = tok.encode("<|im_start", false).unwrap();
    assert!(!ids.contains(&start));
    // Save and reload: the same tokenizer.
    let dir = temp_dir("save");
    let path = dir.join("tokenizer.json");
    tok.save(&path).unwrap();
    let back = Tokenizer::from_file(&path).unwrap();
    let text = "<|im_start|>user\nHéllo 👋 12345<|im_end|>";
    assert_eq!(
        back.encode(text, true).unwrap(),
        tok.encode(text, true).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tiny_sentencepiece_matches_transformers() {
    let expected = json(&fixtures().join("tiny_llama/expected.json"));
    let base = spec(&fixtures().join("tiny_llama/gguf_spec.json"));
    assert_eq!(base.model, "llama");
    assert!(base.merges.is_none(), "merges are derived from the scores");
    let variants = expected["variants"].as_array().unwrap();
    let names: Vec<&str> = variants
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "no_space_prefix", "phi3", "gemma2"]);
    for v in variants {
        let name = v["name"].as_str().unwrap();
        let mut spec = base.clone();
        let o = &v["overrides"];
        if let Some(b) = o.get("add_bos") {
            spec.add_bos = b.as_bool();
        }
        if let Some(b) = o.get("add_eos") {
            spec.add_eos = b.as_bool();
        }
        if let Some(b) = o.get("add_space_prefix") {
            spec.add_space_prefix = b.as_bool();
        }
        if let Some(a) = o.get("architecture") {
            spec.architecture = a.as_str().map(str::to_owned);
        }
        let tok = Tokenizer::from_gguf_spec(&spec).unwrap();
        check_cases(&tok, &v["cases"], name);
        // transformers appends GemmaTokenizer's default specials (`<bos>`, `<mask>`, ...) when the
        // vocabulary lacks them; this tokenizer does not invent ids past the model's vocabulary.
        if name != "gemma2" {
            assert_eq!(tok.vocab_size() as u64, v["vocab_size"].as_u64().unwrap());
        }
        assert_eq!(tok.bos_token_id().map(u64::from), v["bos"].as_u64());
        assert_eq!(tok.eos_token_id().map(u64::from), v["eos"].as_u64());
    }
    // transformers' own tokenizer.json for the default variant agrees too.
    let from_json = Tokenizer::from_file(fixtures().join("tiny_llama/tokenizer.json")).unwrap();
    check_cases(&from_json, &variants[0]["cases"], "tiny tokenizer.json");
}

#[test]
fn sentencepiece_byte_fallback_and_control_tokens() {
    let base = spec(&fixtures().join("tiny_llama/gguf_spec.json"));
    let tok = Tokenizer::from_gguf_spec(&base).unwrap();
    // CJK is not in the tiny vocabulary: UTF-8 bytes, and back.
    let ids = tok.encode("中", false).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
    assert!(pieces.contains(&"<0xE4>".to_owned()), "{pieces:?}");
    assert_eq!(tok.decode(&ids, false).unwrap(), "中");
    let eot = tok.token_to_id("<|eot|>").unwrap();
    assert!(tok.is_special(eot));
    let user = tok.token_to_id("<tool>").unwrap();
    assert!(
        !tok.is_special(user),
        "user-defined tokens are added, not special"
    );
    let ids = tok.encode("a<|eot|>b<tool>", false).unwrap();
    assert!(ids.contains(&eot) && ids.contains(&user), "{ids:?}");
}
