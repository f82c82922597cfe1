//! PyTorch zip checkpoints against fixtures written by `tools/make_io_fixtures.py` (torch):
//! every tensor's name, dtype, shape and values must match what torch saved.

use std::path::{Path, PathBuf};

use tensor_core::{DType, Tensor};
use tensor_io::pth::{read_pth, PthFile, PthValue};
use tensor_io::safetensors::{MmapedSafetensors, StDtype};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/io")
}

fn expected(file: &str) -> Vec<(String, serde_json::Value)> {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    // serde_json's map is sorted; recover the file order from the text itself.
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entries = v[file].as_object().unwrap();
    let mut out: Vec<(String, serde_json::Value)> = entries
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let section = &text[text.find(&format!("\"{file}\"")).unwrap()..];
    out.sort_by_key(|(k, _)| section.find(&format!("\"{k}\": {{")).unwrap());
    out
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tensor-io-pth-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The dtype a stored safetensors dtype string loads as.
fn loaded_dtype(st: &str) -> DType {
    StDtype::parse(st).unwrap().core_dtype().unwrap()
}

fn check_tensor(file: &str, name: &str, t: &Tensor, want: &serde_json::Value) {
    let shape: Vec<usize> = want["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(t.dims(), shape.as_slice(), "{file}: {name} shape");
    assert_eq!(
        t.dtype(),
        loaded_dtype(want["dtype"].as_str().unwrap()),
        "{file}: {name} dtype"
    );
    let values: Vec<f64> = want["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(t.to_f64_vec().unwrap(), values, "{file}: {name} values");
}

fn check_file(file: &str) {
    let dev = tensor_cpu::device();
    let got = read_pth(fixtures().join(file), &dev).unwrap();
    let want = expected(file);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let want_names: Vec<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, want_names, "{file}: names in pickle order");
    for ((name, t), (_, w)) in got.iter().zip(&want) {
        check_tensor(file, name, t, w);
    }
}

#[test]
fn module_state_dict_all_dtypes() {
    check_file("pytorch_model.bin");
    let f = PthFile::open(fixtures().join("pytorch_model.bin")).unwrap();
    assert_eq!(f.dtype("emb.weight").unwrap(), StDtype::F16);
    assert_eq!(f.dtype("norm.weight").unwrap(), StDtype::BF16);
    assert_eq!(f.dtype("counts").unwrap(), StDtype::I32);
    assert_eq!(f.dtype("mask").unwrap(), StDtype::Bool);
    assert_eq!(f.shape("lin.weight").unwrap(), &[3, 4]);
    assert!(f.contains("lin.bias") && !f.contains("nope"));
    let e = f
        .tensor("nope", &tensor_cpu::device())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope") && e.contains("pytorch_model.bin"), "{e}");
}

#[test]
fn non_contiguous_views_and_shared_storages() {
    check_file("views.pth");
    let dev = tensor_cpu::device();
    let f = PthFile::open(fixtures().join("views.pth")).unwrap();
    let b = f.tensor("shared_b", &dev).unwrap();
    assert_eq!(b.to_vec::<f32>().unwrap(), [2.0, 2.5, 3.0, 3.5, 4.0, 4.5]);
    assert_eq!(f.tensor("scalar", &dev).unwrap().rank(), 0);
}

#[test]
fn deflated_archive_reads_the_same() {
    check_file("views_deflate.pth");
}

#[test]
fn nested_training_checkpoint() {
    check_file("nested.pth");
    let dev = tensor_cpu::device();
    let f = PthFile::open(fixtures().join("nested.pth")).unwrap();
    assert_eq!(f.value("epoch"), Some(&PthValue::Int(3)));
    assert_eq!(f.value("name"), Some(&PthValue::Str("run-1".into())));
    assert_eq!(
        f.value("optimizer.param_groups.0.lr"),
        Some(&PthValue::Float(0.01))
    );
    assert_eq!(
        f.value("optimizer.param_groups.0.betas.1"),
        Some(&PthValue::Float(0.999))
    );
    let model = f.tensors_under("model", &dev).unwrap();
    let names: Vec<&str> = model.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["lin.weight", "lin.bias"]);
    // The sub-dict holds the same weights as the plain state dict.
    let plain = PthFile::open(fixtures().join("pytorch_model.bin")).unwrap();
    assert_eq!(
        model[0].1.to_vec::<f32>().unwrap(),
        plain
            .tensor("lin.weight", &dev)
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
    );
    let e = f.tensors_under("nothing", &dev).unwrap_err().to_string();
    assert!(e.contains("nothing"), "{e}");
}

#[test]
fn pth_and_safetensors_agree() {
    let dev = tensor_cpu::device();
    let pth = read_pth(fixtures().join("pytorch_model.bin"), &dev).unwrap();
    let st = MmapedSafetensors::open(fixtures().join("module.safetensors")).unwrap();
    assert_eq!(pth.len(), st.len());
    for (name, t) in &pth {
        let s = st.tensor(name, &dev).unwrap();
        assert_eq!(s.dtype(), t.dtype(), "{name}");
        assert_eq!(s.dims(), t.dims(), "{name}");
        assert_eq!(s.to_f64_vec().unwrap(), t.to_f64_vec().unwrap(), "{name}");
    }
}

#[test]
fn legacy_format_is_refused_clearly() {
    let e = PthFile::open(fixtures().join("legacy.pth"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("legacy") && e.contains("legacy.pth"), "{e}");
}

#[test]
fn disallowed_globals_are_refused() {
    let e = PthFile::open(fixtures().join("evil.pth"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refusing") && e.contains(".system") && e.contains("evil.pth"),
        "{e}"
    );
}

#[test]
fn not_a_checkpoint() {
    let d = tmpdir("notzip");
    let p = d.join("x.pth");
    std::fs::write(&p, b"hello world").unwrap();
    let e = PthFile::open(&p).unwrap_err().to_string();
    assert!(
        e.contains("not a PyTorch zip") && e.contains("x.pth"),
        "{e}"
    );
    std::fs::write(&p, b"PK").unwrap();
    assert!(PthFile::open(&p).unwrap_err().to_string().contains("x.pth"));
    assert!(PthFile::open(d.join("missing.pth")).is_err());
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn truncated_archives_are_errors() {
    let bytes = std::fs::read(fixtures().join("pytorch_model.bin")).unwrap();
    let d = tmpdir("trunc");
    let p = d.join("cut.bin");
    for keep in [
        4,
        30,
        100,
        bytes.len() / 2,
        bytes.len() - 30,
        bytes.len() - 1,
    ] {
        std::fs::write(&p, &bytes[..keep]).unwrap();
        let e = PthFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("cut.bin"), "{keep}: {e}");
    }
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn storage_too_small_for_the_view_is_an_error() {
    // Shrink one storage member in place: rewrite its size fields in the local and central
    // headers so the zip stays valid but the view reaches past the (now shorter) storage.
    let mut bytes = std::fs::read(fixtures().join("views.pth")).unwrap();
    let name = b"views/data/0";
    let mut hits = 0;
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(name.len()).position(|w| w == name) {
        let at = i + pos;
        // Local header: signature 30 bytes before the name, sizes at +18/+22.
        if at >= 30 && bytes[at - 30..at - 26] == *b"PK\x03\x04" {
            bytes[at - 12..at - 8].copy_from_slice(&8u32.to_le_bytes());
            bytes[at - 8..at - 4].copy_from_slice(&8u32.to_le_bytes());
            hits += 1;
        }
        // Central header: signature 46 bytes before the name, sizes at +20/+24.
        if at >= 46 && bytes[at - 46..at - 42] == *b"PK\x01\x02" {
            bytes[at - 26..at - 22].copy_from_slice(&8u32.to_le_bytes());
            bytes[at - 22..at - 18].copy_from_slice(&8u32.to_le_bytes());
            hits += 1;
        }
        i = at + name.len();
    }
    assert_eq!(hits, 2, "found both headers of views/data/0");
    let d = tmpdir("short");
    let p = d.join("short.pth");
    std::fs::write(&p, &bytes).unwrap();
    let f = PthFile::open(&p).unwrap();
    let e = f
        .tensor("transposed", &tensor_cpu::device())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("transposed") && e.contains("short.pth") && e.contains("reaches past"),
        "{e}"
    );
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn corrupted_bytes_never_panic() {
    let dev = tensor_cpu::device();
    let d = tmpdir("fuzz");
    for file in ["pytorch_model.bin", "views_deflate.pth"] {
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        let p = d.join(file);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for step in 0..400 {
            let mut b = bytes.clone();
            for _ in 0..1 + step % 3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state as usize) % b.len();
                b[i] = (state >> 32) as u8;
            }
            std::fs::write(&p, &b).unwrap();
            if let Ok(f) = PthFile::open(&p) {
                for n in f.names() {
                    let _ = f.tensor(n, &dev);
                }
            }
        }
    }
    std::fs::remove_dir_all(d).ok();
}
