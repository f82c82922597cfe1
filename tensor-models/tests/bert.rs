//! BERT against `transformers` and sentence-transformers. The fixtures under `fixtures/bert/`
//! are written by `tools/make_bert_fixtures.py`: a tiny random `BertModel` with a small
//! WordPiece tokenizer (always run), and all-MiniLM-L6-v2 embeddings of varied sentences
//! (run when `scripts/fetch-models.sh minilm` has cached the model).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use tensor_core::{DType, Tensor};
use tensor_io::safetensors::{save_safetensors, MmapedSafetensors};
use tensor_models::bert::{l2_normalize, mean_pool};
use tensor_models::{BertConfig, BertModel, SentenceEmbedder};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert")
}

fn tiny_dir() -> PathBuf {
    fixtures().join("tiny")
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

fn u32_rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_u64().expect("int") as u32)
                .collect()
        })
        .collect()
}

fn flat_f32(v: &Value, out: &mut Vec<f32>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flat_f32(x, out)),
        x => out.push(x.as_f64().expect("number") as f32),
    }
}

fn tensor2(rows: &[Vec<u32>]) -> Tensor {
    let (b, l) = (rows.len(), rows[0].len());
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (b, l), &tensor_cpu::device()).expect("tensor")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "tensor-models-bert-{}-{name}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn check_hidden(model: &BertModel, exp: &Value) {
    let ids = tensor2(&u32_rows(&exp["input_ids"]));
    let mask = tensor2(&u32_rows(&exp["attention_mask"]));
    let types = tensor2(&u32_rows(&exp["token_type_ids"]));
    let out = model
        .forward(&ids, Some(&types), Some(&mask))
        .expect("forward");
    let mut want = Vec::new();
    flat_f32(&exp["last_hidden_state"], &mut want);
    let got = out.to_vec::<f32>().expect("f32");
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-4, "last_hidden_state differs by {d}");
}

#[test]
fn tiny_bert_matches_transformers() {
    let exp = json(&tiny_dir().join("expected.json"));
    let model = BertModel::from_dir(tiny_dir(), &tensor_cpu::device()).expect("load tiny bert");
    check_hidden(&model, &exp);
}

#[test]
fn bert_prefix_is_detected() {
    // The same weights as a task head's checkpoint (`bert.` prefix, plus an unrelated head).
    let dev = tensor_cpu::device();
    let st = MmapedSafetensors::open(tiny_dir().join("model.safetensors")).expect("open");
    let mut named: Vec<(String, Tensor)> = st
        .tensors(&dev)
        .expect("tensors")
        .into_iter()
        .map(|(n, t)| (format!("bert.{n}"), t))
        .collect();
    named.push((
        "cls.predictions.bias".into(),
        Tensor::zeros(4, DType::F32, &dev).expect("zeros"),
    ));
    let dir = temp_dir("prefix");
    std::fs::copy(tiny_dir().join("config.json"), dir.join("config.json")).expect("copy");
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_safetensors(dir.join("model.safetensors"), &refs, &BTreeMap::new()).expect("save");
    let model = BertModel::from_dir(&dir, &dev).expect("load prefixed");
    check_hidden(&model, &json(&tiny_dir().join("expected.json")));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tiny_embedder_matches_reference_pooling() {
    let exp = json(&tiny_dir().join("expected.json"));
    let emb = SentenceEmbedder::load(tiny_dir(), &tensor_cpu::device()).expect("load");
    let texts: Vec<&str> = exp["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| t.as_str().expect("text"))
        .collect();
    // The tokenizer.json pads to 16 and truncates; the embedder must not.
    for (t, want) in texts.iter().zip(u32_rows(&exp["text_ids"])) {
        assert_eq!(emb.tokenize(t).expect("tokenize"), want, "ids of {t:?}");
    }
    let got = emb.embed(&texts).expect("embed");
    let mut want = Vec::new();
    flat_f32(&exp["embeddings"], &mut want);
    let got_flat: Vec<f32> = got.iter().flatten().copied().collect();
    let d = max_abs_diff(&got_flat, &want);
    assert!(d < 1e-5, "embeddings differ by {d}");
    // Batching must not change a text's embedding (padding is masked out).
    for (i, t) in texts.iter().enumerate() {
        let one = emb.embed(&[t]).expect("embed one");
        let d = max_abs_diff(&one[0], &got[i]);
        assert!(d < 1e-5, "{t:?}: alone vs batched differ by {d}");
    }
    assert!(emb.embed(&[]).expect("empty").is_empty());
}

#[test]
fn pooling_helpers() {
    let dev = tensor_cpu::device();
    let h = Tensor::from_vec(
        vec![
            1.0f32, 2.0, 3.0, 4.0, 100.0, 100.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0,
        ],
        (2, 3, 2),
        &dev,
    )
    .expect("h");
    let m = Tensor::from_vec(vec![1u32, 1, 0, 1, 0, 0], (2, 3), &dev).expect("m");
    let pooled = mean_pool(&h, Some(&m)).expect("pool");
    assert_eq!(
        pooled.to_vec2::<f32>().expect("v"),
        vec![vec![2.0, 3.0], vec![3.0, 4.0]]
    );
    let n = l2_normalize(&pooled)
        .expect("norm")
        .to_vec2::<f32>()
        .expect("v");
    assert!((n[1][0] - 0.6).abs() < 1e-6 && (n[1][1] - 0.8).abs() < 1e-6);
}

#[test]
fn bad_inputs_are_errors() {
    let dev = tensor_cpu::device();
    assert!(SentenceEmbedder::load("/nonexistent/model", &dev).is_err());
    assert!(BertConfig::from_json("{").is_err());
    assert!(BertConfig::from_json(r#"{"vocab_size": 10}"#).is_err());
    let bad_heads = r#"{"vocab_size": 10, "hidden_size": 10, "num_hidden_layers": 1,
        "num_attention_heads": 3, "intermediate_size": 4}"#;
    assert!(BertConfig::from_json(bad_heads).is_err());
    let rel = r#"{"vocab_size": 10, "hidden_size": 12, "num_hidden_layers": 1,
        "num_attention_heads": 3, "intermediate_size": 4,
        "position_embedding_type": "relative_key"}"#;
    assert!(BertConfig::from_json(rel).is_err());

    let model = BertModel::from_dir(tiny_dir(), &dev).expect("load");
    let too_long = Tensor::zeros((1, 65), DType::U32, &dev).expect("ids");
    assert!(model.forward(&too_long, None, None).is_err());
    let float_ids = Tensor::zeros((1, 3), DType::F32, &dev).expect("ids");
    assert!(model.forward(&float_ids, None, None).is_err());
    let out_of_vocab = Tensor::from_vec(vec![2u32, 100_000, 3], (1, 3), &dev).expect("ids");
    assert!(model.forward(&out_of_vocab, None, None).is_err());
    let ids = Tensor::zeros((1, 3), DType::U32, &dev).expect("ids");
    let bad_mask = Tensor::zeros((1, 4), DType::U32, &dev).expect("mask");
    assert!(model.forward(&ids, None, Some(&bad_mask)).is_err());
}

fn minilm_dir() -> PathBuf {
    let cache = std::env::var_os("TENSOR_ENGINE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tensor-engine")))
        .unwrap_or_else(|| PathBuf::from(".cache/tensor-engine"));
    cache.join("models/all-minilm-l6-v2")
}

#[test]
fn minilm_matches_sentence_transformers() {
    let dir = minilm_dir();
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "note: skipping the all-MiniLM-L6-v2 test: {} is absent (run scripts/fetch-models.sh minilm)",
            dir.display()
        );
        return;
    }
    let exp = json(&fixtures().join("minilm.json"));
    let emb = SentenceEmbedder::load(&dir, &tensor_cpu::device()).expect("load MiniLM");
    assert_eq!(emb.dim(), 384);
    assert_eq!(
        emb.max_seq_length() as u64,
        exp["max_seq_length"].as_u64().expect("max_seq_length")
    );
    let sentences: Vec<&str> = exp["sentences"]
        .as_array()
        .expect("sentences")
        .iter()
        .map(|s| s.as_str().expect("sentence"))
        .collect();
    let counts: Vec<usize> = exp["token_counts"]
        .as_array()
        .expect("counts")
        .iter()
        .map(|c| c.as_u64().expect("count") as usize)
        .collect();
    for (s, &n) in sentences.iter().zip(&counts) {
        assert_eq!(
            emb.tokenize(s).expect("tokenize").len(),
            n,
            "tokens of {s:?}"
        );
    }
    let got = emb.embed(&sentences).expect("embed");
    let want: Vec<Vec<f32>> = exp["embeddings"]
        .as_array()
        .expect("embeddings")
        .iter()
        .map(|r| {
            let mut v = Vec::new();
            flat_f32(r, &mut v);
            v
        })
        .collect();
    for ((s, g), w) in sentences.iter().zip(&got).zip(&want) {
        let dot: f32 = g.iter().zip(w).map(|(a, b)| a * b).sum();
        let ng: f32 = g.iter().map(|a| a * a).sum::<f32>().sqrt();
        let nw: f32 = w.iter().map(|a| a * a).sum::<f32>().sqrt();
        let cos = dot / (ng * nw);
        eprintln!("cosine {cos:.7}  {:.40}", s);
        assert!(cos >= 0.9999, "cosine {cos} for {s:?}");
        assert!((ng - 1.0).abs() < 1e-5, "not normalised: {ng}");
    }
}
