//! Parity of `Lstm`, `Gru`, `LstmCell` and `GruCell` with PyTorch, forward and backward.
//!
//! Each fixture of `tests/fixtures/rnn/` (written by `tools/make_nn_rnn_fixtures.py`, never
//! hand-edited) holds a torch module's `state_dict`, inputs (with or without an initial state),
//! its outputs, a fixed upstream gradient for each output and torch's gradients with respect
//! to every input and every weight. We load the weights by name into a fresh [`VarMap`]
//! (strict: the names must line up exactly), run the same inputs, back-propagate
//! `Σ output·gy` and compare everything, in f64 (to rounding) and in f32 (to ~1e-5).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tensor_core::conformance::assert_close_slices;
use tensor_core::{DType, Device, Error, Result, Tensor, Var};
use tensor_nn::{Gru, GruCell, Lstm, LstmCell, LstmState, RnnConfig, VarBuilder, VarMap};

/// Every fixture the script writes (a test checks the folder matches).
const CASES: &[&str] = &[
    "gru_1layer",
    "gru_1layer_h0",
    "gru_2layer_bidir_h0",
    "gru_3layer_nobias_batch_first",
    "gru_batch_first_bidir",
    "gru_cell",
    "gru_cell_nobias",
    "gru_unbatched_bidir",
    "lstm_1layer",
    "lstm_1layer_h0",
    "lstm_2layer_bidir_h0",
    "lstm_3layer_nobias_batch_first",
    "lstm_batch_first_bidir",
    "lstm_cell",
    "lstm_cell_nobias",
    "lstm_unbatched_bidir",
];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rnn")
}

struct Array {
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl Array {
    fn tensor(&self, dtype: DType, dev: &Device) -> Result<Tensor> {
        Tensor::from_f64s(&self.data, self.shape.clone(), dtype, dev)
    }
}

struct Fixture {
    params: serde_json::Map<String, Value>,
    weights: BTreeMap<String, Array>,
    inputs: BTreeMap<String, Array>,
    outputs: BTreeMap<String, Array>,
    gy: BTreeMap<String, Array>,
    grads: BTreeMap<String, Array>,
}

fn bad(case: &str, what: impl std::fmt::Display) -> Error {
    Error::msg(format!("fixture {case}: {what}"))
}

fn section(case: &str, v: &Value, name: &str) -> Result<BTreeMap<String, Array>> {
    let obj = v
        .get(name)
        .and_then(Value::as_object)
        .ok_or_else(|| bad(case, format!("no section '{name}'")))?;
    let mut out = BTreeMap::new();
    for (k, t) in obj {
        let shape = t["shape"]
            .as_array()
            .ok_or_else(|| bad(case, format!("{name}.{k}: no shape")))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad(case, format!("{name}.{k}: bad shape")))?;
        let data = t["data"]
            .as_array()
            .ok_or_else(|| bad(case, format!("{name}.{k}: no data")))?
            .iter()
            .map(Value::as_f64)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad(case, format!("{name}.{k}: non-numeric data")))?;
        out.insert(k.clone(), Array { shape, data });
    }
    Ok(out)
}

fn load(case: &str) -> Result<Fixture> {
    let path = fixture_dir().join(format!("{case}.json"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| bad(case, format!("reading {}: {e}", path.display())))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(case, e))?;
    Ok(Fixture {
        params: v["params"]
            .as_object()
            .cloned()
            .ok_or_else(|| bad(case, "no params"))?,
        weights: section(case, &v, "weights")?,
        inputs: section(case, &v, "inputs")?,
        outputs: section(case, &v, "outputs")?,
        gy: section(case, &v, "gy")?,
        grads: section(case, &v, "grads")?,
    })
}

fn param_usize(f: &Fixture, k: &str) -> usize {
    f.params[k].as_u64().expect("integer param") as usize
}

fn param_bool(f: &Fixture, k: &str) -> bool {
    f.params[k].as_bool().expect("boolean param")
}

/// Tolerances `atol + rtol·|expected|`.
#[derive(Clone, Copy)]
struct Tol {
    atol: f64,
    rtol: f64,
}

fn run_case(case: &str, dtype: DType, tol: Tol) -> Result<()> {
    let dev = tensor_cpu::device();
    let f = load(case)?;
    let kind = f.params["kind"].as_str().expect("kind").to_string();
    let (input, hidden) = (
        param_usize(&f, "input_size"),
        param_usize(&f, "hidden_size"),
    );
    let cfg = RnnConfig::new(input, hidden)
        .num_layers(param_usize(&f, "num_layers"))
        .bias(param_bool(&f, "bias"))
        .batch_first(param_bool(&f, "batch_first"))
        .bidirectional(param_bool(&f, "bidirectional"));

    // Fresh variables, then the torch weights loaded by name (strict).
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, dtype, &dev);
    enum Model {
        Lstm(Lstm),
        Gru(Gru),
        LstmCell(LstmCell),
        GruCell(GruCell),
    }
    let model = match kind.as_str() {
        "lstm" => Model::Lstm(Lstm::build(&vb, cfg)?),
        "gru" => Model::Gru(Gru::build(&vb, cfg)?),
        "lstm_cell" => Model::LstmCell(LstmCell::build(&vb, input, hidden, cfg.bias)?),
        "gru_cell" => Model::GruCell(GruCell::build(&vb, input, hidden, cfg.bias)?),
        k => return Err(bad(case, format!("unknown kind {k}"))),
    };
    let sd: HashMap<String, Tensor> = f
        .weights
        .iter()
        .map(|(k, a)| Ok((k.clone(), a.tensor(dtype, &dev)?)))
        .collect::<Result<_>>()?;
    map.load_state_dict(&sd, true)?;

    let inputs: BTreeMap<String, Var> = f
        .inputs
        .iter()
        .map(|(k, a)| Ok((k.clone(), Var::from_tensor(&a.tensor(dtype, &dev)?)?)))
        .collect::<Result<_>>()?;
    let x = inputs["x"].as_tensor();
    let h0 = inputs.get("h0").map(|v| v.as_tensor().clone());
    let c0 = inputs.get("c0").map(|v| v.as_tensor().clone());
    let lstm_state = match (&h0, &c0) {
        (Some(h), Some(c)) => Some(LstmState {
            h: h.clone(),
            c: c.clone(),
        }),
        _ => None,
    };

    let mut outputs: BTreeMap<String, Tensor> = BTreeMap::new();
    match &model {
        Model::Lstm(m) => {
            let (y, st) = m.forward(x, lstm_state.as_ref(), false)?;
            outputs.insert("output".into(), y);
            outputs.insert("h_n".into(), st.h);
            outputs.insert("c_n".into(), st.c);
        }
        Model::Gru(m) => {
            let (y, h) = m.forward(x, h0.as_ref(), false)?;
            outputs.insert("output".into(), y);
            outputs.insert("h_n".into(), h);
        }
        Model::LstmCell(m) => {
            let st = m.forward(x, lstm_state.as_ref())?;
            outputs.insert("h".into(), st.h);
            outputs.insert("c".into(), st.c);
        }
        Model::GruCell(m) => {
            outputs.insert("h".into(), m.forward(x, h0.as_ref())?);
        }
    }

    let keys: Vec<&String> = outputs.keys().collect();
    let want: Vec<&String> = f.outputs.keys().collect();
    if keys != want {
        return Err(bad(case, format!("outputs {keys:?}, fixture has {want:?}")));
    }
    let mut loss: Option<Tensor> = None;
    for (k, y) in &outputs {
        let exp = &f.outputs[k];
        if y.dims() != exp.shape.as_slice() {
            return Err(bad(
                case,
                format!("{k}: shape {:?}, torch {:?}", y.dims(), exp.shape),
            ));
        }
        assert_close_slices(
            &format!("{case} [{dtype}] {k}"),
            &y.to_f64_vec()?,
            &exp.data,
            tol.atol,
            tol.rtol,
        )?;
        let term = y.mul(&f.gy[k].tensor(dtype, &dev)?)?.sum_all()?;
        loss = Some(match loss {
            Some(l) => l.add(&term)?,
            None => term,
        });
    }
    let grads = loss.expect("at least one output").backward()?;

    let mut checked = 0;
    for (k, exp) in &f.grads {
        let t: Tensor = match inputs.get(k) {
            Some(v) => v.as_tensor().clone(),
            None => map
                .get_var(k)
                .ok_or_else(|| bad(case, format!("gradient of unknown tensor {k}")))?
                .as_tensor()
                .clone(),
        };
        let g = grads
            .get(&t)
            .ok_or_else(|| bad(case, format!("no gradient for {k}")))?;
        assert_close_slices(
            &format!("{case} [{dtype}] grad {k}"),
            &g.to_f64_vec()?,
            &exp.data,
            tol.atol,
            tol.rtol,
        )?;
        checked += 1;
    }
    if checked != f.inputs.len() + f.weights.len() {
        return Err(bad(case, "the fixture misses some gradients"));
    }
    Ok(())
}

fn run_all(dtype: DType, tol: Tol) {
    let mut failures = Vec::new();
    for case in CASES {
        if let Err(e) = run_case(case, dtype, tol) {
            failures.push(e.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        CASES.len(),
        failures.join("\n  ")
    );
}

#[test]
fn fixtures_match_the_case_list() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("fixture folder")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "json").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "fixtures on disk and CASES differ: re-run tools/make_nn_rnn_fixtures.py and update CASES"
    );
}

#[test]
fn parity_f64() {
    run_all(
        DType::F64,
        Tol {
            atol: 1e-12,
            rtol: 1e-9,
        },
    );
}

#[test]
fn parity_f32() {
    run_all(
        DType::F32,
        Tol {
            atol: 1e-6,
            rtol: 1e-5,
        },
    );
}
