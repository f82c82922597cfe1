//! The memory-mapped safetensors reader and the atomic writer: fixtures written by
//! `tools/make_io_fixtures.py` (torch + safetensors), round trips, and corrupt files, which must
//! be errors naming the file (and tensor), never panics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tensor_core::{DType, Tensor};
use tensor_io::safetensors::{save_safetensors, MmapedSafetensors, StDtype, INDEX_FILE};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/io")
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tensor-io-st-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn expected() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["module.safetensors"].as_object().unwrap().clone()
}

fn check_against_expected(st: &MmapedSafetensors) {
    let dev = tensor_cpu::device();
    let want = expected();
    let mut want_names: Vec<&str> = want.keys().map(String::as_str).collect();
    want_names.sort();
    assert_eq!(st.names(), want_names);
    for (name, w) in &want {
        let stored = StDtype::parse(w["dtype"].as_str().unwrap()).unwrap();
        assert_eq!(st.dtype(name).unwrap(), stored, "{name}");
        let shape: Vec<usize> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(st.shape(name).unwrap(), shape.as_slice(), "{name}");
        let t = st.tensor(name, &dev).unwrap();
        assert_eq!(t.dtype(), stored.core_dtype().unwrap(), "{name}");
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        let values: Vec<f64> = w["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(t.to_f64_vec().unwrap(), values, "{name}");
        assert_eq!(
            st.get_raw(name).unwrap().len(),
            values.len() * stored.size_in_bytes()
        );
    }
}

#[test]
fn reads_torch_written_file() {
    let st = MmapedSafetensors::open(fixtures().join("module.safetensors")).unwrap();
    check_against_expected(&st);
    assert_eq!(st.metadata().get("note").map(String::as_str), Some("tiny"));
    // Raw bytes straight from the map: little-endian i64 [1, -2, 3e12].
    let raw = st.get_raw("steps").unwrap();
    assert_eq!(&raw[8..16], &(-2i64).to_le_bytes());
    let e = st
        .tensor("missing", &tensor_cpu::device())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing") && e.contains("module.safetensors"),
        "{e}"
    );
}

#[test]
fn reads_sharded_checkpoint_by_dir_and_by_index() {
    let dir = fixtures().join("sharded");
    for st in [
        MmapedSafetensors::open_sharded(&dir).unwrap(),
        MmapedSafetensors::open_sharded(dir.join(INDEX_FILE)).unwrap(),
    ] {
        assert_eq!(st.files().len(), 2);
        check_against_expected(&st);
        assert!(st
            .file_of("steps")
            .unwrap()
            .ends_with("model-00001-of-00002.safetensors"));
        assert!(st
            .file_of("norm.bias")
            .unwrap()
            .ends_with("model-00002-of-00002.safetensors"));
    }
    // A directory with a single model.safetensors opens that file.
    let d = tmpdir("single");
    std::fs::copy(
        fixtures().join("module.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    check_against_expected(&MmapedSafetensors::open_sharded(&d).unwrap());
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn sharded_errors_name_the_shard_and_tensor() {
    let src = fixtures().join("sharded");
    let d = tmpdir("shards");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
    }
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join(INDEX_FILE)).unwrap()).unwrap();

    // A shard missing from disk.
    std::fs::rename(
        d.join("model-00002-of-00002.safetensors"),
        d.join("elsewhere.safetensors"),
    )
    .unwrap();
    let e = MmapedSafetensors::open_sharded(&d).unwrap_err().to_string();
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );
    let wm = index["weight_map"].as_object().unwrap();
    let in_second: Vec<&String> = wm
        .iter()
        .filter(|(_, f)| f.as_str() == Some("model-00002-of-00002.safetensors"))
        .map(|(k, _)| k)
        .collect();
    assert!(in_second.iter().any(|n| e.contains(n.as_str())), "{e}");
    std::fs::rename(
        d.join("elsewhere.safetensors"),
        d.join("model-00002-of-00002.safetensors"),
    )
    .unwrap();

    // The index maps a tensor to the wrong shard.
    let mut bad = index.clone();
    bad["weight_map"]["steps"] = "model-00002-of-00002.safetensors".into();
    std::fs::write(d.join(INDEX_FILE), bad.to_string()).unwrap();
    let e = MmapedSafetensors::open_sharded(&d).unwrap_err().to_string();
    assert!(
        e.contains("'steps'") && e.contains("model-00002-of-00002.safetensors"),
        "{e}"
    );

    // Paths escaping the directory are refused.
    let mut bad = index.clone();
    bad["weight_map"]["steps"] = "../model-00001-of-00002.safetensors".into();
    std::fs::write(d.join(INDEX_FILE), bad.to_string()).unwrap();
    let e = MmapedSafetensors::open_sharded(&d).unwrap_err().to_string();
    assert!(e.contains("'steps'") && e.contains("relative"), "{e}");

    // An index that is not JSON, or has no weight_map.
    std::fs::write(d.join(INDEX_FILE), "{oops").unwrap();
    let e = MmapedSafetensors::open_sharded(&d).unwrap_err().to_string();
    assert!(e.contains(INDEX_FILE) && e.contains("JSON"), "{e}");
    std::fs::write(d.join(INDEX_FILE), "{}").unwrap();
    let e = MmapedSafetensors::open_sharded(&d).unwrap_err().to_string();
    assert!(e.contains("weight_map"), "{e}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn save_round_trips_every_dtype_atomically() {
    let dev = tensor_cpu::device();
    let d = tmpdir("roundtrip");
    let p = d.join("all.safetensors");
    let mut owned = Vec::new();
    for dt in DType::ALL {
        let t = Tensor::arange(0.0, 6.0, 1.0, DType::F64, &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        owned.push((format!("t.{dt}"), t));
    }
    // A non-contiguous view is written as its values.
    let tr = owned[5].1.t().unwrap();
    owned.push(("transposed".into(), tr));
    owned.push((
        "empty".into(),
        Tensor::zeros((0, 4), DType::F32, &dev).unwrap(),
    ));
    let refs: Vec<(&str, &Tensor)> = owned.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    // Twice: the second save replaces the first through the rename.
    save_safetensors(&p, &refs, &meta).unwrap();
    save_safetensors(&p, &refs, &meta).unwrap();
    let st = MmapedSafetensors::open(&p).unwrap();
    assert_eq!(st.len(), owned.len());
    assert_eq!(st.metadata(), &meta);
    for (name, t) in &owned {
        let back = st.tensor(name, &dev).unwrap();
        assert_eq!(back.dtype(), t.dtype(), "{name}");
        assert_eq!(back.dims(), t.dims(), "{name}");
        assert_eq!(
            back.to_f64_vec().unwrap(),
            t.to_f64_vec().unwrap(),
            "{name}"
        );
        // Largest element size first + 8-byte aligned data section: every tensor is aligned.
        let raw = st.get_raw(name).unwrap();
        assert_eq!(
            raw.as_ptr() as usize % t.dtype().size_in_bytes(),
            0,
            "{name}"
        );
    }
    let names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left behind: {names:?}");

    let dup = [("a", &owned[0].1), ("a", &owned[1].1)];
    let e = save_safetensors(d.join("dup.safetensors"), &dup, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("'a'") && e.contains("twice"), "{e}");
    assert!(!d.join("dup.safetensors").exists());
    std::fs::remove_dir_all(d).ok();
}

/// A valid two-tensor file: `a` F32 [2, 2] at [0, 16], `b` I64 [3] at [16, 40].
fn valid_file() -> Vec<u8> {
    let header = r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"I64","shape":[3],"data_offsets":[16,40]}}"#;
    build(header, 40)
}

fn build(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend((0..data_len).map(|i| i as u8));
    out
}

fn open_err(tag: &str, bytes: &[u8]) -> String {
    let d = tmpdir("corrupt");
    let p = d.join(format!("{tag}.safetensors"));
    std::fs::write(&p, bytes).unwrap();
    let e = MmapedSafetensors::open(&p).unwrap_err().to_string();
    assert!(e.contains(&format!("{tag}.safetensors")), "{tag}: {e}");
    e
}

#[test]
fn corrupt_files_are_errors_naming_file_and_tensor() {
    let good = valid_file();
    let d = tmpdir("valid");
    std::fs::write(d.join("ok.safetensors"), &good).unwrap();
    let st = MmapedSafetensors::open(d.join("ok.safetensors")).unwrap();
    assert_eq!(st.names(), ["a", "b"]);
    std::fs::remove_dir_all(d).ok();

    let e = open_err("tiny", &good[..5]);
    assert!(e.contains("truncated"), "{e}");
    let e = open_err("truncated", &good[..good.len() - 3]);
    assert!(e.contains("'b'") && e.contains("beyond"), "{e}");
    let mut lying = good.clone();
    lying[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = open_err("headerlen", &lying);
    assert!(e.contains("header length"), "{e}");
    let e = open_err("json", &build(r#"{"a":{"dtype":"F32",#"#, 0));
    assert!(e.contains("not valid JSON"), "{e}");
    let e = open_err(
        "range",
        &build(
            r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[32,48]}}"#,
            40,
        ),
    );
    assert!(e.contains("'a'") && e.contains("beyond"), "{e}");
    let e = open_err(
        "overlap",
        &build(
            r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"I64","shape":[3],"data_offsets":[8,32]}}"#,
            40,
        ),
    );
    assert!(
        e.contains("'a'") && e.contains("'b'") && e.contains("overlap"),
        "{e}"
    );
    let e = open_err(
        "size",
        &build(
            r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#,
            16,
        ),
    );
    assert!(e.contains("'a'") && e.contains("needs 24 bytes"), "{e}");
    let e = open_err(
        "overflow",
        &build(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#,
            16,
        ),
    );
    assert!(e.contains("'a'") && e.contains("overflows"), "{e}");
    let e = open_err(
        "dtype",
        &build(
            r#"{"a":{"dtype":"F48","shape":[2],"data_offsets":[0,12]}}"#,
            12,
        ),
    );
    assert!(
        e.contains("'a'") && e.contains("unknown dtype 'F48'"),
        "{e}"
    );
    let e = open_err(
        "backwards",
        &build(
            r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}"#,
            4,
        ),
    );
    assert!(e.contains("'a'"), "{e}");
    let e = open_err("notobject", &build("[1, 2]", 0));
    assert!(e.contains("not an object"), "{e}");
    assert!(MmapedSafetensors::open("/nonexistent/x.safetensors")
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/x.safetensors"));
}

#[test]
fn unsupported_dtypes_open_but_only_load_raw() {
    let dev = tensor_cpu::device();
    let d = tmpdir("f8");
    let p = d.join("f8.safetensors");
    let header = r#"{"q":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]},"w":{"dtype":"U16","shape":[2],"data_offsets":[4,8]},"i":{"dtype":"I8","shape":[2],"data_offsets":[8,10]}}"#;
    let mut bytes = build(header, 0);
    bytes.extend([1, 2, 3, 4]);
    bytes.extend(65535u16.to_le_bytes());
    bytes.extend(7u16.to_le_bytes());
    bytes.extend([0xFF, 0x05]);
    std::fs::write(&p, &bytes).unwrap();
    let st = MmapedSafetensors::open(&p).unwrap();
    assert_eq!(st.get_raw("q").unwrap(), &[1, 2, 3, 4]);
    let e = st.tensor("q", &dev).unwrap_err().to_string();
    assert!(
        e.contains("'q'") && e.contains("F8_E4M3") && e.contains("f8.safetensors"),
        "{e}"
    );
    let w = st.tensor("w", &dev).unwrap();
    assert_eq!(w.dtype(), DType::U32);
    assert_eq!(w.to_vec::<u32>().unwrap(), [65535, 7]);
    assert_eq!(
        st.tensor("i", &dev).unwrap().to_vec::<i64>().unwrap(),
        [-1, 5]
    );
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn corrupted_bytes_never_panic() {
    let dev = tensor_cpu::device();
    let bytes = std::fs::read(fixtures().join("module.safetensors")).unwrap();
    let d = tmpdir("fuzz");
    let p = d.join("f.safetensors");
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for step in 0..400 {
        let mut b = bytes.clone();
        for _ in 0..1 + step % 3 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Mostly the header, where corruption matters.
            let i = (state as usize) % (b.len().min(700));
            b[i] = (state >> 40) as u8;
        }
        if step % 50 == 0 {
            b.truncate((state as usize) % b.len());
        }
        std::fs::write(&p, &b).unwrap();
        if let Ok(st) = MmapedSafetensors::open(&p) {
            for n in st.names() {
                let _ = st.tensor(n, &dev);
            }
        }
    }
    std::fs::remove_dir_all(d).ok();
}

/// The real all-MiniLM-L6-v2 checkpoint (BERT), when `scripts/fetch-models.sh minilm` has
/// cached it; skipped with a note otherwise.
#[test]
fn real_minilm_checkpoint() {
    let cache = std::env::var_os("TENSOR_ENGINE_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tensor-engine"))
        });
    let Some(cache) = cache else {
        eprintln!("skipped: no TENSOR_ENGINE_CACHE or HOME");
        return;
    };
    let path = cache.join("models/all-minilm-l6-v2/model.safetensors");
    if !path.exists() {
        eprintln!(
            "skipped: {} absent (run scripts/fetch-models.sh minilm)",
            path.display()
        );
        return;
    }
    let dev = tensor_cpu::device();
    let st = MmapedSafetensors::open(&path).unwrap();
    // 5 embedding tensors + position_ids, 16 per layer × 6, the pooler's 2.
    assert_eq!(st.len(), 6 + 16 * 6 + 2, "{:?}", st.names());
    let shape = |n: &str| st.shape(n).unwrap().to_vec();
    assert_eq!(shape("embeddings.word_embeddings.weight"), [30522, 384]);
    assert_eq!(shape("embeddings.position_embeddings.weight"), [512, 384]);
    assert_eq!(shape("embeddings.token_type_embeddings.weight"), [2, 384]);
    assert_eq!(shape("embeddings.LayerNorm.weight"), [384]);
    assert_eq!(st.dtype("embeddings.position_ids").unwrap(), StDtype::I64);
    for l in 0..6 {
        let p = format!("encoder.layer.{l}");
        for w in ["query", "key", "value"] {
            assert_eq!(shape(&format!("{p}.attention.self.{w}.weight")), [384, 384]);
            assert_eq!(shape(&format!("{p}.attention.self.{w}.bias")), [384]);
        }
        assert_eq!(
            shape(&format!("{p}.attention.output.dense.weight")),
            [384, 384]
        );
        assert_eq!(
            shape(&format!("{p}.attention.output.LayerNorm.bias")),
            [384]
        );
        assert_eq!(
            shape(&format!("{p}.intermediate.dense.weight")),
            [1536, 384]
        );
        assert_eq!(shape(&format!("{p}.output.dense.weight")), [384, 1536]);
        assert_eq!(shape(&format!("{p}.output.LayerNorm.weight")), [384]);
    }
    assert_eq!(shape("pooler.dense.weight"), [384, 384]);
    let ids = st.tensor("embeddings.position_ids", &dev).unwrap();
    assert_eq!(ids.to_vec::<i64>().unwrap(), (0..512).collect::<Vec<i64>>());
    let ln = st.tensor("embeddings.LayerNorm.weight", &dev).unwrap();
    assert_eq!(ln.dtype(), DType::F32);
    let v = ln.to_vec::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != 0.0));
    let we = st
        .tensor("embeddings.word_embeddings.weight", &dev)
        .unwrap();
    assert_eq!(we.dims(), [30522, 384]);
}
