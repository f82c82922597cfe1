//! Parity of tensor-nn's attention, RoPE tables, positional embeddings and transformer blocks
//! with PyTorch and transformers: forward outputs and the gradients of the input(s) and every
//! parameter, in f64 (tight) and f32, against the fixtures written by
//! tools/make_nn_attention_fixtures.py (see its docstring for what each case holds).

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;
use tensor_core::{DType, Result, Tensor, Var};
use tensor_nn::{
    Activation, AttentionConfig, AttentionNames, BlockConfig, BlockInputs, BlockNames, MlpKind,
    MultiHeadAttention, NormKind, NormPosition, QkNorm, RopeCache, RopeConfig, RopeScaling,
    SinusoidalPositionalEmbedding, TransformerBlock, VarBuilder, VarMap,
};

/// The fixture names; `case_list_matches_fixtures` keeps this and the folder in step.
const CASES: &[&str] = &[
    "alibi_full_qknorm_padding",
    "bart_decoder_layer",
    "bart_encoder_layer",
    "gqa_cross_padding",
    "gqa_rope_qwen2",
    "linear_rope_mha_window_causal",
    "llama_decoder_layer",
    "mha_cross_kdim",
    "mha_self_causal_padding",
    "mha_self_padding",
    "mqa_window_llama3_interleaved",
    "partial_yarn_window_scale",
    "qwen3_decoder_layer",
    "qwen3_qknorm_offset_padding",
    "rope_default",
    "rope_dynamic_long",
    "rope_dynamic_short",
    "rope_linear_partial",
    "rope_llama3",
    "rope_longrope_long",
    "rope_longrope_short",
    "rope_yarn",
    "rope_yarn_mscale_notrunc_partial",
    "sinusoidal",
];

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/attention")
}

fn load(name: &str) -> Value {
    let path = fixture_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {name}: {e}"))
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("a finite number"),
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        Value::String(s) if s == "nan" => f64::NAN,
        other => panic!("not a number: {other}"),
    }
}

fn values(t: &Value) -> Vec<f64> {
    t["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(num)
        .collect()
}

fn shape(t: &Value) -> Vec<usize> {
    t["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}

/// A fixture tensor as `dtype` (masks stay u8).
fn tensor(t: &Value, dtype: DType) -> Result<Tensor> {
    let dt = match t.get("dtype").and_then(|d| d.as_str()) {
        Some("u8") => DType::U8,
        Some(other) => panic!("unexpected fixture dtype {other}"),
        None => dtype,
    };
    Tensor::from_f64s(&values(t), shape(t), dt, &tensor_cpu::device())
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("an unsigned integer") as usize
}

fn opt_usize(v: &Value) -> Option<usize> {
    v.as_u64().map(|x| x as usize)
}

fn rope_config(r: &Value) -> Result<RopeConfig> {
    let scaling = RopeScaling::from_hf(&r["scaling"], usize_of(&r["max_position_embeddings"]))?;
    Ok(RopeConfig {
        theta: num(&r["theta"]),
        head_dim: usize_of(&r["rotary_dim"]),
        interleaved: r["interleaved"].as_bool().unwrap_or(false),
        scaling,
    })
}

fn attention_config(c: &Value) -> Result<AttentionConfig> {
    let eps = num(&c["qk_eps"]);
    let qk_norm = match c["qk_norm"].as_str() {
        None => None,
        Some("per_head") => Some(QkNorm::PerHead { eps }),
        Some("full") => Some(QkNorm::Full { eps }),
        Some(other) => panic!("unknown qk_norm {other}"),
    };
    let rope = if c["rope"].is_null() {
        None
    } else {
        Some(rope_config(&c["rope"])?)
    };
    Ok(AttentionConfig {
        dim: usize_of(&c["dim"]),
        num_heads: usize_of(&c["num_heads"]),
        num_kv_heads: usize_of(&c["num_kv_heads"]),
        head_dim: usize_of(&c["head_dim"]),
        kv_dim: opt_usize(&c["kv_dim"]),
        qkv_bias: c["qkv_bias"].as_bool().expect("qkv_bias"),
        out_bias: c["out_bias"].as_bool().expect("out_bias"),
        rope,
        max_positions: 64,
        alibi: c["alibi"].as_bool().expect("alibi"),
        sliding_window: opt_usize(&c["sliding_window"]),
        causal: c["causal"].as_bool().expect("causal"),
        qk_norm,
        softmax_scale: c["softmax_scale"].as_f64(),
        names: AttentionNames::hf(),
    })
}

fn block_config(c: &Value) -> Result<BlockConfig> {
    let (names, attn_names) = match c["names"].as_str() {
        Some("llama") => (BlockNames::llama(), AttentionNames::hf()),
        Some("bart") => (BlockNames::bart(), AttentionNames::bart()),
        other => panic!("unknown names {other:?}"),
    };
    let mut attn = attention_config(&c["attn"])?;
    attn.names = attn_names.clone();
    let cross_attn = if c["cross_attn"].is_null() {
        None
    } else {
        let mut a = attention_config(&c["cross_attn"])?;
        a.names = attn_names;
        Some(a)
    };
    let eps = num(&c["eps"]);
    Ok(BlockConfig {
        attn,
        cross_attn,
        mlp: match c["mlp"].as_str() {
            Some("swiglu") => MlpKind::SWIGLU,
            Some("gelu") => MlpKind::Plain(Activation::Gelu),
            other => panic!("unknown mlp {other:?}"),
        },
        hidden_dim: usize_of(&c["hidden_dim"]),
        mlp_bias: c["mlp_bias"].as_bool().expect("mlp_bias"),
        norm: match c["norm"].as_str() {
            Some("rms") => NormKind::RmsNorm { eps },
            Some("layer") => NormKind::LayerNorm { eps, bias: true },
            other => panic!("unknown norm {other:?}"),
        },
        norm_position: match c["norm_position"].as_str() {
            Some("pre") => NormPosition::Pre,
            Some("post") => NormPosition::Post,
            other => panic!("unknown norm position {other:?}"),
        },
        dropout: 0.0,
        names,
    })
}

/// The worst `|got − want| / (1 + |want|)`.
fn rel_err(got: &Tensor, want: &Value) -> Result<f64> {
    assert_eq!(got.dims(), shape(want).as_slice(), "shape");
    let g = got.to_f64_vec()?;
    Ok(g.iter()
        .zip(values(want))
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0.0, f64::max))
}

enum Module {
    Attention(Box<MultiHeadAttention>, Value),
    Block(Box<TransformerBlock>),
}

/// Build the case's module over fresh variables, load the fixture's parameters, run forward
/// and backward, and compare everything; returns the worst relative error.
fn check_module_case(name: &str, dtype: DType) -> Result<f64> {
    let fx = load(name);
    let dev = tensor_cpu::device();
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, dtype, &dev);
    let kind = fx["kind"].as_str().expect("kind");
    let module = match kind {
        "attention" => Module::Attention(
            Box::new(MultiHeadAttention::build(
                &vb,
                &attention_config(&fx["config"])?,
            )?),
            fx["config"].clone(),
        ),
        "block" => Module::Block(Box::new(TransformerBlock::build(
            &vb,
            &block_config(&fx["config"])?,
        )?)),
        other => panic!("{name}: not a module case ({other})"),
    };
    let mut params = HashMap::new();
    for (k, v) in fx["params"].as_object().expect("params") {
        params.insert(k.clone(), tensor(v, dtype)?);
    }
    map.load_state_dict(&params, true)?;

    let inputs = fx["inputs"].as_object().expect("inputs");
    let var = |k: &str| -> Result<Option<Var>> {
        inputs
            .get(k)
            .map(|t| Var::from_tensor(&tensor(t, dtype)?))
            .transpose()
    };
    let mask =
        |k: &str| -> Result<Option<Tensor>> { inputs.get(k).map(|t| tensor(t, dtype)).transpose() };
    let x = var("x")?.expect("x");
    let memory = var("memory")?;
    let (mask, memory_mask) = (mask("mask")?, mask("memory_mask")?);
    let y = match &module {
        Module::Attention(a, cfg) => {
            if cfg["cross"].as_bool() == Some(true) {
                a.forward_cross(&x, memory.as_ref().expect("memory"), mask.as_ref())?
            } else {
                a.forward_at(&x, mask.as_ref(), usize_of(&cfg["offset"]))?
            }
        }
        Module::Block(b) => {
            let inputs = BlockInputs {
                mask: mask.as_ref(),
                memory: memory.as_deref(),
                memory_mask: memory_mask.as_ref(),
                offset: 0,
            };
            b.forward_t(&x, &inputs, None, false)?
        }
    };
    let mut worst = rel_err(&y, &fx["output"])?;
    let grads = y.backward_with_grad(&tensor(&fx["gy"], dtype)?)?;
    let want = fx["grads"].as_object().expect("grads");
    assert_eq!(
        want.len(),
        params.len() + 1 + memory.is_some() as usize,
        "{name}: the fixture differentiates the input(s) and every parameter"
    );
    for (k, g) in want {
        let t = match k.as_str() {
            "x" => x.as_tensor().clone(),
            "memory" => memory.as_ref().expect("memory").as_tensor().clone(),
            p => map
                .get_var(p)
                .unwrap_or_else(|| panic!("{name}: no variable {p}"))
                .as_tensor()
                .clone(),
        };
        let got = grads
            .get(&t)
            .unwrap_or_else(|| panic!("{name}: no gradient for {k}"));
        let e = rel_err(got, g)?;
        assert!(e.is_finite(), "{name}: gradient of {k} not finite");
        worst = worst.max(e);
    }
    Ok(worst)
}

fn module_cases() -> Vec<&'static str> {
    CASES
        .iter()
        .copied()
        .filter(|n| matches!(load(n)["kind"].as_str(), Some("attention" | "block")))
        .collect()
}

fn check_all(dtype: DType, tol: f64) -> Result<()> {
    let mut failures = Vec::new();
    for name in module_cases() {
        let e = check_module_case(name, dtype)?;
        println!("{name} ({dtype}): worst relative error {e:.2e}");
        if e > tol {
            failures.push(format!("{name}: {e:.2e}"));
        }
    }
    assert!(failures.is_empty(), "beyond {tol:e}: {failures:?}");
    Ok(())
}

#[test]
fn case_list_matches_fixtures() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("fixture folder")
        .filter_map(|e| {
            let p = e.ok()?.path();
            if p.extension()? != "json" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(listed, on_disk, "CASES and the fixture folder disagree");
}

#[test]
fn modules_match_torch_f64() -> Result<()> {
    check_all(DType::F64, 1e-10)
}

#[test]
fn modules_match_torch_f32() -> Result<()> {
    check_all(DType::F32, 2e-5)
}

/// transformers' rotary tables are float32: frequencies to f32 rounding, cos/sin to f32
/// accuracy at these short positions.
#[test]
fn rope_tables_match_transformers() -> Result<()> {
    for &name in CASES.iter().filter(|n| n.starts_with("rope_")) {
        let fx = load(name);
        let c = &fx["config"];
        let cfg = RopeConfig {
            theta: num(&c["theta"]),
            head_dim: usize_of(&c["rotary_dim"]),
            interleaved: false,
            scaling: RopeScaling::from_hf(&c["scaling"], usize_of(&c["max_position_embeddings"]))?,
        };
        let seq = usize_of(&c["seq_len"]);
        let (inv, af) = cfg.inv_freq(Some(seq))?;
        let want_inv = values(&fx["tables"]["inv_freq"]);
        assert_eq!(inv.len(), want_inv.len(), "{name}");
        for (a, b) in inv.iter().zip(&want_inv) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs(),
                "{name}: inv_freq {a} vs {b}"
            );
        }
        let want_af = num(&fx["attention_factor"]);
        assert!((af - want_af).abs() < 1e-12, "{name}: {af} vs {want_af}");
        for dtype in [DType::F64, DType::F32] {
            let cache = RopeCache::new(&cfg, seq, dtype, &tensor_cpu::device())?;
            let (cos, sin) = cache.cos_sin(0, seq, dtype)?;
            for (got, key) in [(cos, "cos"), (sin, "sin")] {
                let e = rel_err(&got, &fx["tables"][key])?;
                assert!(e < 2e-5, "{name} {key} ({dtype}): {e:e}");
            }
        }
    }
    Ok(())
}

#[test]
fn sinusoidal_table_matches_the_tutorial() -> Result<()> {
    let fx = load("sinusoidal");
    let c = &fx["config"];
    let pe = SinusoidalPositionalEmbedding::new(
        usize_of(&c["max_positions"]),
        usize_of(&c["dim"]),
        DType::F64,
        &tensor_cpu::device(),
    )?;
    let e = rel_err(&pe.table, &fx["tables"]["table"])?;
    assert!(e < 1e-12, "{e:e}");
    Ok(())
}
