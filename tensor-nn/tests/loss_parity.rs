//! PyTorch parity of the loss functions. Each fixture of `tests/fixtures/losses/` (written by
//! `tools/make_nn_loss_fixtures.py` from torch in float64; never hand-edited; the format is
//! described in that script's header) holds the inputs, the loss's parameters, torch's output
//! and torch's gradient of every float input it differentiates, for a fixed upstream gradient.
//! Every case runs three times:
//!
//! - f64 with contiguous inputs: output and gradients against torch;
//! - f64 with every input a narrowed (non-contiguous) view: the same;
//! - f32 (class indices u32 where they are non-negative): the output only.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use tensor_core::{DType, Device, Error, Result, Tensor, Var};
use tensor_nn::loss::{self, KlReduction, Reduction};

/// Every fixture, by file stem (a test checks this list against the folder).
const CASES: &[&str] = &[
    "bce_logits_extreme_none",
    "bce_logits_mean",
    "bce_logits_none",
    "bce_logits_sum",
    "bce_logits_weight_pos_weight_mean",
    "bce_logits_weight_pos_weight_none",
    "bce_logits_weight_pos_weight_sum",
    "bce_mean",
    "bce_none",
    "bce_saturated_sum",
    "bce_sum",
    "bce_weight_mean",
    "bce_weight_none",
    "bce_weight_sum",
    "ce_3d_mean",
    "ce_3d_none",
    "ce_3d_probs_mean",
    "ce_3d_probs_none",
    "ce_3d_sum",
    "ce_3d_weight_ignore_smooth_mean",
    "ce_3d_weight_ignore_smooth_none",
    "ce_3d_weight_ignore_smooth_sum",
    "ce_4d_weight_ignore_mean",
    "ce_all_ignored_mean",
    "ce_all_ignored_none",
    "ce_all_ignored_sum",
    "ce_ignore_default_mean",
    "ce_ignore_default_none",
    "ce_mean",
    "ce_none",
    "ce_probs_mean",
    "ce_probs_none",
    "ce_probs_sum",
    "ce_probs_weight_smooth_mean",
    "ce_probs_weight_smooth_none",
    "ce_probs_weight_smooth_sum",
    "ce_smooth_all_ignored_mean",
    "ce_smooth_all_ignored_sum",
    "ce_smooth_mean",
    "ce_smooth_none",
    "ce_smooth_sum",
    "ce_smooth_weight_ignore_mean",
    "ce_smooth_weight_ignore_none",
    "ce_smooth_weight_ignore_sum",
    "ce_sum",
    "ce_unbatched_mean",
    "ce_unbatched_none",
    "ce_unbatched_probs_smooth_sum",
    "ce_weight_all_ignored_mean",
    "ce_weight_ignore_mean",
    "ce_weight_ignore_none",
    "ce_weight_ignore_sum",
    "ce_weight_mean",
    "ce_weight_none",
    "ce_weight_sum",
    "contrastive_mean",
    "contrastive_none",
    "contrastive_sum",
    "cosine_embedding_mean",
    "cosine_embedding_none",
    "cosine_embedding_sum",
    "cosine_embedding_unbatched_sum",
    "focal_mean",
    "focal_no_alpha_gamma0_mean",
    "focal_none",
    "focal_soft_gamma1_5_sum",
    "focal_sum",
    "huber_delta2_3d_sum",
    "huber_mean",
    "huber_none",
    "huber_sum",
    "info_nce_extra_keys_mean",
    "info_nce_mean",
    "info_nce_none",
    "info_nce_sum",
    "info_nce_symmetric_mean",
    "info_nce_symmetric_none",
    "kl_div_batchmean",
    "kl_div_log_target_batchmean",
    "kl_div_log_target_none",
    "kl_div_mean",
    "kl_div_none",
    "kl_div_sum",
    "kl_div_zero_target_sum",
    "l1_mean",
    "l1_none",
    "l1_sum",
    "mse_mean",
    "mse_none",
    "mse_sum",
    "nll_3d_mean",
    "nll_3d_none",
    "nll_all_ignored_mean",
    "nll_mean",
    "nll_none",
    "nll_sum",
    "nll_unbatched_sum",
    "nll_weight_ignore_mean",
    "nll_weight_ignore_none",
    "nll_weight_ignore_sum",
    "smooth_l1_beta0_mean",
    "smooth_l1_mean",
    "smooth_l1_none",
    "smooth_l1_sum",
    "triplet_mean",
    "triplet_none",
    "triplet_p3_eps_sum",
    "triplet_sum",
    "triplet_swap_p1_mean",
    "triplet_swap_p1_none",
    "triplet_unbatched_none",
];

const ATOL64: f64 = 1e-10;
const RTOL64: f64 = 1e-10;
const ATOL32: f64 = 1e-5;
const RTOL32: f64 = 1e-5;

fn bad(what: impl std::fmt::Display) -> Error {
    Error::msg(format!("malformed loss fixture: {what}"))
}

/// A flat row-major array; `int` for class indices / labels (i64 in the fixture).
struct Array {
    shape: Vec<usize>,
    int: bool,
    data: Vec<f64>,
}

struct Fixture {
    params: Map<String, Value>,
    inputs: BTreeMap<String, Array>,
    gy: Array,
    output: Array,
    grads: BTreeMap<String, Array>,
}

fn number(v: &Value) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| bad(n)),
        Value::String(s) if s == "nan" => Ok(f64::NAN),
        Value::String(s) if s == "inf" => Ok(f64::INFINITY),
        Value::String(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
        _ => Err(bad(format!("{v} is not a number"))),
    }
}

fn array(what: &str, v: &Value) -> Result<Array> {
    let shape = v["shape"]
        .as_array()
        .ok_or_else(|| bad(format!("{what}: no shape")))?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or_else(|| bad(d)))
        .collect::<Result<Vec<_>>>()?;
    let int = match v.get("dtype").and_then(Value::as_str) {
        None => false,
        Some("i64") => true,
        Some(d) => return Err(bad(format!("{what}: dtype {d}"))),
    };
    let data = v["data"]
        .as_array()
        .ok_or_else(|| bad(format!("{what}: no data")))?
        .iter()
        .map(number)
        .collect::<Result<Vec<_>>>()?;
    if data.len() != shape.iter().product::<usize>() {
        return Err(bad(format!("{what}: {} values for {shape:?}", data.len())));
    }
    Ok(Array { shape, int, data })
}

fn section(fx: &Value, key: &str) -> Result<BTreeMap<String, Array>> {
    fx[key]
        .as_object()
        .ok_or_else(|| bad(format!("no {key}")))?
        .iter()
        .map(|(k, v)| Ok((k.clone(), array(&format!("{key}.{k}"), v)?)))
        .collect()
}

fn parse(json: &str) -> Result<Fixture> {
    let fx: Value = serde_json::from_str(json).map_err(bad)?;
    Ok(Fixture {
        params: fx["params"]
            .as_object()
            .cloned()
            .ok_or_else(|| bad("no params"))?,
        inputs: section(&fx, "inputs")?,
        gy: array("gy", &fx["gy"])?,
        output: array("output", &fx["output"])?,
        grads: section(&fx, "grads")?,
    })
}

/// The inputs of one run and the case's parameters.
struct Env<'a> {
    t: BTreeMap<String, Tensor>,
    params: &'a Map<String, Value>,
}

impl Env<'_> {
    fn t(&self, k: &str) -> Result<&Tensor> {
        self.t.get(k).ok_or_else(|| bad(format!("no input {k}")))
    }
    fn opt(&self, k: &str) -> Option<Tensor> {
        self.t.get(k).cloned()
    }
    fn f(&self, k: &str) -> Result<f64> {
        self.params
            .get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| bad(format!("param {k}")))
    }
    fn b(&self, k: &str) -> Result<bool> {
        self.params
            .get(k)
            .and_then(Value::as_bool)
            .ok_or_else(|| bad(format!("param {k}")))
    }
    fn s(&self, k: &str) -> Result<&str> {
        self.params
            .get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("param {k}")))
    }
    fn reduction(&self) -> Result<Reduction> {
        Ok(match self.s("reduction")? {
            "none" => Reduction::None,
            "mean" => Reduction::Mean,
            "sum" => Reduction::Sum,
            r => return Err(bad(format!("reduction {r}"))),
        })
    }
    fn ignore_index(&self) -> Option<i64> {
        Some(
            self.params
                .get("ignore_index")
                .map_or(-100, |v| v.as_i64().unwrap_or(-100)),
        )
    }
}

/// Call the loss the fixture names.
fn run_loss(e: &Env) -> Result<Tensor> {
    let name = e.s("loss")?;
    let input = || e.t("input");
    let target = || e.t("target");
    match name {
        "cross_entropy" => loss::cross_entropy(
            e.t("x")?,
            target()?,
            &loss::CrossEntropyOptions {
                weight: e.opt("weight"),
                ignore_index: e.ignore_index(),
                label_smoothing: e.f("label_smoothing")?,
                reduction: e.reduction()?,
            },
        ),
        "nll_loss" => loss::nll_loss(
            e.t("x")?,
            target()?,
            &loss::NllOptions {
                weight: e.opt("weight"),
                ignore_index: e.ignore_index(),
                reduction: e.reduction()?,
            },
        ),
        "binary_cross_entropy" => loss::binary_cross_entropy(
            e.t("p")?,
            target()?,
            e.opt("weight").as_ref(),
            e.reduction()?,
        ),
        "binary_cross_entropy_with_logits" => loss::binary_cross_entropy_with_logits(
            e.t("x")?,
            target()?,
            e.opt("weight").as_ref(),
            e.opt("pos_weight").as_ref(),
            e.reduction()?,
        ),
        "sigmoid_focal_loss" => loss::sigmoid_focal_loss(
            e.t("x")?,
            target()?,
            e.f("alpha")?,
            e.f("gamma")?,
            e.reduction()?,
        ),
        "mse_loss" => loss::mse_loss(input()?, target()?, e.reduction()?),
        "l1_loss" => loss::l1_loss(input()?, target()?, e.reduction()?),
        "smooth_l1_loss" => loss::smooth_l1_loss(input()?, target()?, e.f("beta")?, e.reduction()?),
        "huber_loss" => loss::huber_loss(input()?, target()?, e.f("delta")?, e.reduction()?),
        "kl_div" => {
            let r = match e.s("reduction")? {
                "batchmean" => KlReduction::BatchMean,
                _ => e.reduction()?.into(),
            };
            loss::kl_div(input()?, target()?, r, e.b("log_target")?)
        }
        "info_nce" | "info_nce_symmetric" => {
            let f = if name == "info_nce" {
                loss::info_nce
            } else {
                loss::info_nce_symmetric
            };
            f(
                e.t("query")?,
                e.t("keys")?,
                e.f("temperature")?,
                e.reduction()?,
            )
        }
        "cosine_embedding_loss" | "contrastive_loss" => {
            let f = if name == "contrastive_loss" {
                loss::contrastive_loss
            } else {
                loss::cosine_embedding_loss
            };
            f(
                e.t("x1")?,
                e.t("x2")?,
                e.t("y")?,
                e.f("margin")?,
                e.reduction()?,
            )
        }
        "triplet_margin_loss" => loss::triplet_margin_loss(
            e.t("anchor")?,
            e.t("positive")?,
            e.t("negative")?,
            &loss::TripletOptions {
                margin: e.f("margin")?,
                p: e.f("p")?,
                eps: e.f("eps")?,
                swap: e.b("swap")?,
                reduction: e.reduction()?,
            },
        ),
        _ => Err(bad(format!("unknown loss {name}"))),
    }
}

fn close(what: &str, got: &[f64], want: &Array, atol: f64, rtol: f64) -> Result<()> {
    if got.len() != want.data.len() {
        return Err(Error::msg(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.data.len()
        )));
    }
    for (i, (&g, &w)) in got.iter().zip(&want.data).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= atol + rtol * w.abs()
        };
        if !ok {
            return Err(Error::msg(format!(
                "{what}[{i}]: got {g:e}, expected {w:e} (|diff| {:e})",
                (g - w).abs()
            )));
        }
    }
    Ok(())
}

/// Pad dim 0 by one slice on each side (a variable holds the padded tensor; the loss sees
/// the middle, a non-contiguous view).
fn padded(t: &Tensor) -> Result<Tensor> {
    if t.rank() == 0 {
        return Ok(t.clone());
    }
    t.pad_with_value(0, 1, 1, 7.0)
}

fn unpad(t: &Tensor) -> Result<Tensor> {
    if t.rank() == 0 {
        return Ok(t.clone());
    }
    t.narrow(0, 1, t.dims()[0] - 2)
}

/// f64 run: output and every gradient against torch.
fn run_f64(dev: &Device, fx: &Fixture, strided: bool) -> Result<()> {
    let mut t = BTreeMap::new();
    let mut vars = vec![];
    for (name, a) in &fx.inputs {
        let dtype = if a.int { DType::I64 } else { DType::F64 };
        let base = Tensor::from_f64s(&a.data, a.shape.clone(), dtype, dev)?;
        let base = if strided { padded(&base)? } else { base };
        let base = if fx.grads.contains_key(name) {
            let v = Var::from_tensor(&base)?;
            vars.push((name.clone(), v.clone()));
            v.as_tensor().clone()
        } else {
            base
        };
        t.insert(name.clone(), if strided { unpad(&base)? } else { base });
    }
    let y = run_loss(&Env {
        t,
        params: &fx.params,
    })?;
    if y.dims() != fx.output.shape.as_slice() {
        return Err(Error::msg(format!(
            "output shape {:?}, expected {:?}",
            y.dims(),
            fx.output.shape
        )));
    }
    close("output", &y.to_f64_vec()?, &fx.output, ATOL64, RTOL64)?;
    if vars.is_empty() {
        return Ok(());
    }
    let gy = Tensor::from_f64s(&fx.gy.data, fx.gy.shape.clone(), DType::F64, dev)?;
    let grads = y.backward_with_grad(&gy)?;
    for (name, var) in &vars {
        let g = match grads.get(var.as_tensor()) {
            Some(g) => g.clone(),
            None => var.zeros_like()?,
        };
        let g = if strided { unpad(&g)? } else { g };
        close(
            &format!("gradient of {name}"),
            &g.to_f64_vec()?,
            &fx.grads[name],
            ATOL64,
            RTOL64,
        )?;
    }
    Ok(())
}

/// f32 run: the output only.
fn run_f32(dev: &Device, fx: &Fixture) -> Result<()> {
    let mut t = BTreeMap::new();
    for (name, a) in &fx.inputs {
        let dtype = match a.int {
            false => DType::F32,
            true if a.data.iter().all(|&v| v >= 0.0) => DType::U32,
            true => DType::I64,
        };
        t.insert(
            name.clone(),
            Tensor::from_f64s(&a.data, a.shape.clone(), dtype, dev)?,
        );
    }
    let y = run_loss(&Env {
        t,
        params: &fx.params,
    })?;
    if y.dtype() != DType::F32 {
        return Err(Error::msg(format!("f32 inputs gave a {} loss", y.dtype())));
    }
    close("f32 output", &y.to_f64_vec()?, &fx.output, ATOL32, RTOL32)
}

fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/losses")
}

#[test]
fn loss_parity_with_torch() {
    let dev = tensor_cpu::device();
    let mut failures = vec![];
    for name in CASES {
        let run = || -> Result<()> {
            let json = std::fs::read_to_string(fixture_dir().join(format!("{name}.json")))
                .map_err(|e| Error::msg(format!("reading the fixture: {e}")))?;
            let fx = parse(&json)?;
            run_f64(&dev, &fx, false).map_err(|e| Error::msg(format!("f64: {e}")))?;
            run_f64(&dev, &fx, true).map_err(|e| Error::msg(format!("f64 strided: {e}")))?;
            run_f32(&dev, &fx)
        };
        if let Err(e) = run() {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} loss fixtures failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

/// Every fixture the script wrote is a case here, and every case has its fixture.
#[test]
fn fixtures_match_cases() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("fixture folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "fixtures on disk vs CASES");
}
