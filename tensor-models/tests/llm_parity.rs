//! Logit parity of the pretrained LLM families with `transformers`, on the tiny random models
//! of `tools/make_llm_fixtures.py` (safetensors and GGUF), and on the real SmolLM2-135M GGUF
//! when it is in the model cache (`scripts/fetch-models.sh smollm2`; skipped otherwise).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tensor_core::{DType, Device, Result, Tensor};
use tensor_io::gguf::{GgufFile, GgufValue, GgufWriter};
use tensor_io::safetensors::{save_safetensors, MmapedSafetensors};
use tensor_io::tokenizer::Tokenizer;
use tensor_models::llm::{gguf_tokenizer_spec, load, load_with, LoadOptions};
use tensor_models::CausalLm;

const FAMILIES: &[&str] = &[
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "mixtral", "gpt2",
];
const GGUF_FAMILIES: &[&str] = &["llama", "qwen2", "gemma2", "gpt2"];
const TOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm")
}

fn dev() -> Device {
    tensor_cpu::device()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// `(input_ids [2, L], logits [2, L, V])` of a family.
fn reference(family: &str) -> (Tensor, Tensor) {
    let st =
        MmapedSafetensors::open(fixtures().join(family).join("reference.safetensors")).unwrap();
    (
        st.tensor("input_ids", &dev()).unwrap(),
        st.tensor("logits", &dev()).unwrap(),
    )
}

/// Max errors of: the full batch-2 forward, prefill + token-by-token decoding of both
/// sequences, batch 1 (the second sequence alone), and re-decoding after `truncate_cache`.
fn check(model: &mut dyn CausalLm, ids: &Tensor, want: &Tensor) -> Result<[f64; 4]> {
    let l = ids.dims()[1];
    model.reset();
    let full = model.forward(ids, 0)?;
    let e_full = max_diff(&full, want);

    model.reset();
    let mut parts = vec![model.forward(&ids.narrow(1, 0, 5)?, 0)?];
    for t in 5..l {
        parts.push(model.forward(&ids.narrow(1, t, 1)?, t)?);
    }
    assert_eq!(model.cache_len(), l);
    let inc = Tensor::cat(&parts.iter().collect::<Vec<_>>(), 1)?;
    let e_inc = max_diff(&inc, want);

    model.reset();
    let one = model.forward(&ids.narrow(0, 1, 1)?, 0)?;
    let e_one = max_diff(&one, &want.narrow(0, 1, 1)?);

    model.reset();
    model.forward(ids, 0)?;
    model.truncate_cache(7)?;
    let tail = model.forward(&ids.narrow(1, 7, l - 7)?, 7)?;
    let e_tail = max_diff(&tail, &want.narrow(1, 7, l - 7)?);
    Ok([e_full, e_inc, e_one, e_tail])
}

#[test]
fn hf_safetensors_families_match_transformers() -> Result<()> {
    let mut worst = 0f64;
    for fam in FAMILIES {
        let mut lm = load(&fixtures().join(fam), &dev())?;
        let (ids, want) = reference(fam);
        assert_eq!(lm.model.info().vocab_size, want.dims()[2]);
        let e = check(lm.model.as_mut(), &ids, &want)?;
        println!(
            "{fam:8} ({}): full {:.2e}  incremental {:.2e}  batch1 {:.2e}  truncated {:.2e}",
            lm.model.info().architecture,
            e[0],
            e[1],
            e[2],
            e[3]
        );
        for x in e {
            assert!(
                x < TOL,
                "{fam}: max error {x:e} (full, incremental, batch 1, truncated: {e:?})"
            );
        }
        worst = worst.max(e.into_iter().fold(0.0, f64::max));
    }
    println!("worst over all families: {worst:.2e}");
    Ok(())
}

#[test]
fn gguf_exports_match_transformers() -> Result<()> {
    for fam in GGUF_FAMILIES {
        let path = fixtures().join(fam).join("model.gguf");
        let mut lm = load(&path, &dev())?;
        assert!(lm.gguf.is_some());
        let (ids, want) = reference(fam);
        let e = check(lm.model.as_mut(), &ids, &want)?;
        println!(
            "{fam:8} gguf: full {:.2e}  incremental {:.2e}  batch1 {:.2e}  truncated {:.2e}",
            e[0], e[1], e[2], e[3]
        );
        for x in e {
            assert!(x < TOL, "{fam} gguf: max error {x:e} ({e:?})");
        }
        let spec = lm
            .gguf_tokenizer_spec()?
            .expect("a GGUF model has a tokenizer spec");
        assert_eq!(spec.tokens.len(), lm.model.info().vocab_size);
        assert_eq!(lm.model.info().bos_token_id, Some(1));
        assert_eq!(lm.model.info().eos_token_ids, vec![2]);
    }
    Ok(())
}

#[test]
fn pytorch_bin_and_sharded_safetensors_load() -> Result<()> {
    // GPT-2 from `torch.save` (with the `transformer.` prefix and a tied `lm_head`).
    let mut lm = load(&fixtures().join("gpt2_bin"), &dev())?;
    assert_eq!(lm.format, tensor_models::llm::LmFormat::Pth);
    let (ids, want) = reference("gpt2");
    let e = max_diff(&lm.model.forward(&ids, 0)?, &want);
    assert!(e < TOL, "gpt2 .bin: {e}");

    // Mixtral split over two shards with a model.safetensors.index.json.
    let dir = scratch("sharded", "mixtral");
    let st = MmapedSafetensors::open(dir.join("model.safetensors")).unwrap();
    let all = st.tensors(&dev())?;
    drop(st);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let mut map = serde_json::Map::new();
    for (k, part) in all.chunks(all.len() / 2 + 1).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", k + 1);
        let refs: Vec<(&str, &Tensor)> = part.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save_safetensors(dir.join(&file), &refs, &BTreeMap::new())?;
        for (n, _) in part {
            map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let mut lm = load(&dir, &dev())?;
    let (ids, want) = reference("mixtral");
    let e = max_diff(&lm.model.forward(&ids, 0)?, &want);
    assert!(e < TOL, "sharded mixtral: {e}");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[test]
fn bf16_compute_is_close() -> Result<()> {
    let opts = LoadOptions {
        dtype: DType::BF16,
        max_seq_len: Some(16),
        ..LoadOptions::default()
    };
    let mut lm = load_with(&fixtures().join("llama"), &dev(), &opts)?;
    let (ids, want) = reference("llama");
    let got = lm.model.forward(&ids, 0)?;
    assert_eq!(got.dtype(), DType::F32);
    let e = max_diff(&got, &want);
    println!("llama bf16: max error {e:.3}");
    assert!(e < 0.3, "{e}");
    Ok(())
}

/// A copy of a fixture folder whose config or weights the test then breaks.
fn scratch(name: &str, from: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llm_parity_{}_{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join(from).join(f), dir.join(f)).unwrap();
    }
    dir
}

fn rewrite_weights(dir: &Path, edit: impl Fn(&str, Tensor) -> Option<Tensor>) {
    let st = MmapedSafetensors::open(dir.join("model.safetensors")).unwrap();
    let tensors: Vec<(String, Tensor)> = st
        .tensors(&dev())
        .unwrap()
        .into_iter()
        .filter_map(|(n, t)| edit(&n, t).map(|t| (n, t)))
        .collect();
    drop(st);
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_safetensors(dir.join("model.safetensors"), &refs, &BTreeMap::new()).unwrap();
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    // Unknown architecture.
    let dir = scratch("arch", "llama");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"llama\"", "\"falcon\"")
            .replace("LlamaForCausalLM", "FalconForCausalLM"),
    )
    .unwrap();
    let e = load(&dir, &dev()).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("falcon") && e.contains("qwen2") && e.contains("gemma2"),
        "{e}"
    );

    // A missing tensor names itself and its shape.
    let dir = scratch("missing", "qwen2");
    rewrite_weights(&dir, |n, t| {
        (n != "model.layers.1.self_attn.k_proj.bias").then_some(t)
    });
    let e = load(&dir, &dev()).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("model.layers.1.self_attn.k_proj.bias") && e.contains("[16]"),
        "{e}"
    );

    // A tensor of the wrong shape.
    let dir = scratch("shape", "llama");
    rewrite_weights(&dir, |n, t| {
        Some(if n == "model.layers.0.mlp.up_proj.weight" {
            t.narrow(0, 0, 40).unwrap().contiguous().unwrap()
        } else {
            t
        })
    });
    let e = load(&dir, &dev()).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("model.layers.0.mlp.up_proj.weight")
            && e.contains("[48, 32]")
            && e.contains("[40, 32]"),
        "{e}"
    );

    // Fused Phi-3 tensors too short to cut q/k/v from.
    let dir = scratch("fused", "phi3");
    rewrite_weights(&dir, |n, t| {
        Some(if n.ends_with("qkv_proj.weight") {
            t.narrow(0, 0, 50).unwrap().contiguous().unwrap()
        } else {
            t
        })
    });
    let e = load(&dir, &dev()).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("qkv_proj.weight") && e.contains("[50, 32]"),
        "{e}"
    );

    // GGUF: an unknown architecture, a missing metadata key, a missing tensor.
    let dir = scratch("gguf", "llama");
    let src = GgufFile::open(fixtures().join("llama/model.gguf")).unwrap();
    let rewrite = |path: &Path, skip_key: &str, skip_tensor: &str, arch: &str| {
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata() {
            if k == "general.architecture" {
                w.add_metadata(k.clone(), GgufValue::String(arch.into()))
                    .unwrap();
            } else if k != skip_key {
                w.add_metadata(k.replace("llama.", &format!("{arch}.")), v.clone())
                    .unwrap();
            }
        }
        for t in src.tensors() {
            if t.name() != skip_tensor {
                w.add_tensor(t.name(), &src.tensor(t.name(), &dev()).unwrap())
                    .unwrap();
            }
        }
        w.write(path).unwrap();
    };
    let p = dir.join("x.gguf");
    rewrite(&p, "", "", "rwkv6");
    let e = load(&p, &dev()).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("rwkv6") && e.contains("qwen3") && e.contains("phi3"),
        "{e}"
    );
    rewrite(&p, "llama.block_count", "", "llama");
    let e = load(&p, &dev()).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("llama.block_count"), "{e}");
    rewrite(&p, "", "blk.1.ffn_down.weight", "llama");
    let e = load(&p, &dev()).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("blk.1.ffn_down.weight") && e.contains("[32, 48]"),
        "{e}"
    );

    // No config, no weights, nothing at all.
    let dir = scratch("empty", "llama");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load(&dir, &dev()).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("no model weights"), "{e}");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(load(&dir, &dev())
        .unwrap_err()
        .to_string()
        .contains("config.json"));
    assert!(load(&dir.join("nope.gguf"), &dev()).is_err());
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"GGUF not really").unwrap();
    assert!(load(&bad, &dev()).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_inputs_are_errors_and_leave_the_cache_usable() -> Result<()> {
    let mut lm = load_with(
        &fixtures().join("gemma2"),
        &dev(),
        &LoadOptions {
            max_seq_len: Some(12),
            ..LoadOptions::default()
        },
    )?;
    let (ids, want) = reference("gemma2");
    let m = lm.model.as_mut();
    let d = dev();
    assert!(m.forward(&ids.reshape(24)?, 0).is_err());
    assert!(m.forward(&ids.to_dtype(DType::F32)?, 0).is_err());
    let oov = Tensor::from_vec(vec![1i64, 500], (1, 2), &d)?;
    assert!(m.forward(&oov, 0).unwrap_err().to_string().contains("500"));
    let neg = Tensor::from_vec(vec![-1i64], (1, 1), &d)?;
    assert!(m.forward(&neg, 0).is_err());
    assert!(m.forward(&ids.narrow(1, 0, 1)?, 3).is_err()); // pos != cache_len
    m.forward(&ids.narrow(1, 0, 4)?, 0)?;
    assert!(m
        .forward(&ids.narrow(0, 0, 1)?.narrow(1, 4, 1)?, 4)
        .is_err()); // batch changed
    assert!(m.forward(&ids, 4).is_err()); // 4 + 12 positions > max_seq_len 12
    assert!(m.truncate_cache(9).is_err());
    assert_eq!(m.cache_len(), 4);
    let rest = m.forward(&ids.narrow(1, 4, 8)?, 4)?;
    let e = max_diff(&rest, &want.narrow(1, 4, 8)?);
    assert!(e < TOL, "{e}");
    Ok(())
}

fn smollm2_path() -> Option<PathBuf> {
    let cache = std::env::var_os("TENSOR_ENGINE_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tensor-engine"))
        })?;
    let p = cache.join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        println!(
            "note: {} is absent (scripts/fetch-models.sh smollm2); skipping the SmolLM2 check",
            p.display()
        );
        None
    }
}

#[test]
fn smollm2_gguf_matches_transformers() -> Result<()> {
    let Some(path) = smollm2_path() else {
        return Ok(());
    };
    let text = std::fs::read_to_string(fixtures().join("smollm2_reference.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<i64> = r["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let l = ids.len();

    let t0 = Instant::now();
    // The module graph over dequantized weights, in f32 like transformers; the fused
    // quantized decoder is held to this graph in tests/fused.rs.
    let mut lm = load_with(
        &path,
        &dev(),
        &LoadOptions {
            fused: false,
            ..LoadOptions::default()
        },
    )?;
    println!(
        "SmolLM2 loaded in {:.2}s: {:?}",
        t0.elapsed().as_secs_f64(),
        lm.model.info()
    );
    assert_eq!(lm.model.info().architecture, "llama");
    assert_eq!(lm.model.info().vocab_size, 49152);

    // Our tokenizer, rebuilt from the GGUF metadata, gives transformers' ids.
    let tok = Tokenizer::from_gguf_spec(&gguf_tokenizer_spec(&GgufFile::open(&path)?)?)?;
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ours: Vec<i64> = tok
        .encode(prompt, false)?
        .into_iter()
        .map(i64::from)
        .collect();
    assert_eq!(ours, ids);

    let x = Tensor::from_vec(ids.clone(), (1, l), &dev())?;
    let logits = lm.model.forward(&x, 0)?;
    let v = logits.to_f64_vec()?;
    assert!(v.iter().all(|x| x.is_finite()));
    let vocab = 49152;
    let last = &v[(l - 1) * vocab..l * vocab];
    let mut err = 0f64;
    for (id, want) in r["top20_ids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["top20_logits"].as_array().unwrap())
    {
        err = err.max((last[id.as_u64().unwrap() as usize] - want.as_f64().unwrap()).abs());
    }
    let mut best: Vec<usize> = (0..vocab).collect();
    best.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    let want_top: Vec<usize> = r["top20_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(&best[..5], &want_top[..5]);
    for (p, row) in r["first64"].as_array().unwrap().iter().enumerate() {
        for (j, want) in row.as_array().unwrap().iter().enumerate() {
            err = err.max((v[p * vocab + j] - want.as_f64().unwrap()).abs());
        }
    }
    println!("SmolLM2 vs transformers: max error {err:.2e} (top-20 of the last position, first 64 logits of every position)");
    assert!(err < 1e-3, "{err}");

    // Decoding through the cache continues the prefill exactly.
    lm.model.reset();
    lm.model.forward(&x.narrow(1, 0, l - 3)?, 0)?;
    let mut last_inc = None;
    for t in l - 3..l {
        last_inc = Some(lm.model.forward(&x.narrow(1, t, 1)?, t)?);
    }
    let inc = last_inc.unwrap().to_f64_vec()?;
    let d = inc
        .iter()
        .zip(last)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-3, "{d}");

    // Rough speed: a ~100-token prefill and per-token decoding.
    let long: Vec<i64> = (0..100).map(|i| ids[i % l]).collect();
    lm.model.reset();
    let t0 = Instant::now();
    lm.model
        .forward(&Tensor::from_vec(long, (1, 100), &dev())?, 0)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for t in 100..116 {
        lm.model
            .forward(&Tensor::from_vec(vec![ids[t % l]], (1, 1), &dev())?, t)?;
    }
    let decode = t0.elapsed().as_secs_f64() / 16.0;
    println!(
        "SmolLM2 f32 on this machine: prefill 100 tokens {prefill:.2}s, decode {:.1} ms/token",
        decode * 1e3
    );
    Ok(())
}
