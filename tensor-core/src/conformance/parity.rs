//! Conformance cases: parity with PyTorch, forward and backward, for the nn-level ops.
//!
//! Each case reads one fixture of `tests/fixtures/ops/` (written by
//! `tools/make_op_fixtures.py` from PyTorch in float64 — never hand-edited): inputs, the op's
//! parameters, torch's output, a fixed upstream gradient `gy`, torch's gradient of every
//! differentiable input, and the values of inputs the op updates in place (batch-norm running
//! statistics). A case runs our op six times (see [`MODES`]):
//!
//! - f64 with plain tensors: the backend's fused forward kernels (conv, norms, rope, ...);
//! - f64 with the differentiable inputs as [`Var`]s: the forward again (fused ops then take
//!   their differentiable path), then `y.backward_with_grad(gy)` against torch's gradients;
//! - both again with every input a non-contiguous view (transposed or narrowed);
//! - f32 (index inputs u32 instead of i64), contiguous and strided, forward only.
//!
//! The fixture format is described in the header of `tools/make_op_fixtures.py`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{assert_close_slices, Case};
use crate::{AttentionParams, ConvParams, DType, Device, Error, HostData, Result, Tensor, Var};

/// Tolerances `atol + rtol·|expected|` for the f64 runs (output and gradients) and the f32 run
/// (output only).
#[derive(Clone, Copy, Debug)]
struct Tol {
    atol64: f64,
    rtol64: f64,
    atol32: f64,
    rtol32: f64,
}

/// Default: f64 agrees with torch to rounding; f32 to ~1e-4 relative.
const STRICT: Tol = Tol {
    atol64: 1e-9,
    rtol64: 1e-7,
    atol32: 1e-5,
    rtol32: 1e-4,
};

/// A flat row-major array read from a fixture. `dtype` is None for float data (f64 in the
/// fixture), or the integer dtype of index and mask inputs.
#[derive(Debug)]
struct Array {
    shape: Vec<usize>,
    dtype: Option<DType>,
    data: Vec<f64>,
}

struct Fixture {
    params: Map<String, Value>,
    inputs: Vec<(String, Array)>,
    gy: Array,
    output: Array,
    grads: Vec<(String, Array)>,
    updated: Vec<(String, Array)>,
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::msg(format!("malformed parity fixture: {what}"))
}

fn parse_number(v: &Value) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| bad(format!("number {n}"))),
        Value::String(s) => match s.as_str() {
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            "nan" => Ok(f64::NAN),
            _ => Err(bad(format!("string {s:?} where a number was expected"))),
        },
        _ => Err(bad(format!("{v} where a number was expected"))),
    }
}

fn parse_array(what: &str, v: &Value) -> Result<Array> {
    let obj = v
        .as_object()
        .ok_or_else(|| bad(format!("{what} is not an object")))?;
    let shape = obj
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("{what} has no shape")))?
        .iter()
        .map(|d| {
            d.as_u64()
                .map(|d| d as usize)
                .ok_or_else(|| bad(format!("{what}: shape entry {d}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let dtype = match obj.get("dtype").map(|d| d.as_str()) {
        None => None,
        Some(Some("i64")) => Some(DType::I64),
        Some(Some("u8")) => Some(DType::U8),
        Some(d) => return Err(bad(format!("{what}: dtype {d:?}"))),
    };
    let data = obj
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("{what} has no data")))?
        .iter()
        .map(parse_number)
        .collect::<Result<Vec<_>>>()?;
    if data.len() != shape.iter().product::<usize>() {
        return Err(bad(format!(
            "{what}: {} values for shape {shape:?}",
            data.len()
        )));
    }
    Ok(Array { shape, dtype, data })
}

fn parse_section(fx: &Map<String, Value>, key: &str) -> Result<Vec<(String, Array)>> {
    let obj = fx
        .get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| bad(format!("no {key:?} section")))?;
    obj.iter()
        .map(|(k, v)| Ok((k.clone(), parse_array(&format!("{key}.{k}"), v)?)))
        .collect()
}

fn parse_fixture(text: &str) -> Result<Fixture> {
    let root: Value = serde_json::from_str(text).map_err(bad)?;
    let fx = root
        .as_object()
        .ok_or_else(|| bad("top level is not an object"))?;
    let params = fx
        .get("params")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| bad("no params"))?;
    let inputs = parse_section(fx, "inputs")?;
    let gy = parse_array("gy", fx.get("gy").ok_or_else(|| bad("no gy"))?)?;
    let output = parse_array("output", fx.get("output").ok_or_else(|| bad("no output"))?)?;
    let grads = parse_section(fx, "grads")?;
    let updated = parse_section(fx, "updated")?;
    if gy.shape != output.shape {
        return Err(bad(format!(
            "gy shape {:?} vs output shape {:?}",
            gy.shape, output.shape
        )));
    }
    for (name, g) in grads.iter().chain(&updated) {
        match inputs.iter().find(|(n, _)| n == name) {
            Some((_, a)) if a.shape == g.shape && a.dtype.is_none() => {}
            _ => {
                return Err(bad(format!(
                    "{name:?} is not a float input of shape {:?}",
                    g.shape
                )))
            }
        }
    }
    Ok(Fixture {
        params,
        inputs,
        gy,
        output,
        grads,
        updated,
    })
}

/// How a run builds its inputs.
#[derive(Clone, Copy, Debug)]
struct Mode {
    /// F64, or F32 (index inputs are then u32 instead of i64, covering a second index dtype).
    dtype: DType,
    /// The inputs with expected gradients are variables and the run back-propagates `gy`.
    /// Untracked runs reach the backend's fused forward kernels; tracked runs the
    /// differentiable compositions and the backward rules.
    tracked: bool,
    /// Every input is a non-contiguous view with the same values: of rank >= 2 a transposed
    /// view of a buffer holding the transpose, of rank 1 the middle of a padded buffer.
    strided: bool,
}

const MODES: [Mode; 6] = [
    Mode {
        dtype: DType::F64,
        tracked: false,
        strided: false,
    },
    Mode {
        dtype: DType::F64,
        tracked: true,
        strided: false,
    },
    Mode {
        dtype: DType::F64,
        tracked: false,
        strided: true,
    },
    Mode {
        dtype: DType::F64,
        tracked: true,
        strided: true,
    },
    Mode {
        dtype: DType::F32,
        tracked: false,
        strided: false,
    },
    Mode {
        dtype: DType::F32,
        tracked: false,
        strided: true,
    },
];

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.dtype,
            if self.strided {
                "strided"
            } else {
                "contiguous"
            },
            if self.tracked {
                "forward+backward"
            } else {
                "forward"
            }
        )
    }
}

/// The buffer behind an input: itself, or (strided) a buffer that [`view`] turns back into it.
fn buffer_for(t: &Tensor, strided: bool) -> Result<Tensor> {
    match t.rank() {
        _ if !strided => Ok(t.clone()),
        0 => Ok(t.clone()),
        1 => t.pad_with_value(0, 1, 1, 7.0),
        _ => t.t()?.contiguous(),
    }
}

/// The op's view of a buffer made by [`buffer_for`] (also maps a buffer's gradient back).
fn view(buf: &Tensor, strided: bool) -> Result<Tensor> {
    match buf.rank() {
        _ if !strided => Ok(buf.clone()),
        0 => Ok(buf.clone()),
        1 => buf.narrow(0, 1, buf.dims()[0] - 2),
        _ => buf.t(),
    }
}

/// The inputs of one run, by name, and the op's parameters.
struct Env {
    params: Map<String, Value>,
    tensors: BTreeMap<String, Tensor>,
}

impl Env {
    fn t(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| bad(format!("no input {name:?}")))
    }
    /// An optional input (bias, affine weights).
    fn opt(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
    fn param(&self, key: &str) -> Result<&Value> {
        self.params
            .get(key)
            .ok_or_else(|| bad(format!("no parameter {key:?}")))
    }
    fn u(&self, key: &str) -> Result<usize> {
        self.param(key)?
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("parameter {key:?} is not a usize")))
    }
    fn i(&self, key: &str) -> Result<i64> {
        self.param(key)?
            .as_i64()
            .ok_or_else(|| bad(format!("parameter {key:?} is not an integer")))
    }
    fn f(&self, key: &str) -> Result<f64> {
        self.param(key)?
            .as_f64()
            .ok_or_else(|| bad(format!("parameter {key:?} is not a number")))
    }
    fn b(&self, key: &str) -> Result<bool> {
        self.param(key)?
            .as_bool()
            .ok_or_else(|| bad(format!("parameter {key:?} is not a bool")))
    }
    /// A list of integers, or one integer repeated `n` times.
    fn us(&self, key: &str, n: usize) -> Result<Vec<usize>> {
        match self.param(key)? {
            Value::Array(a) => a
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|v| v as usize)
                        .ok_or_else(|| bad(format!("parameter {key:?}: entry {v}")))
                })
                .collect(),
            _ => Ok(vec![self.u(key)?; n]),
        }
    }
    fn is(&self, key: &str) -> Result<Vec<i64>> {
        self.param(key)?
            .as_array()
            .ok_or_else(|| bad(format!("parameter {key:?} is not a list")))?
            .iter()
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| bad(format!("parameter {key:?}: entry {v}")))
            })
            .collect()
    }
    fn opt_u(&self, key: &str) -> Result<Option<usize>> {
        match self.param(key)? {
            Value::Null => Ok(None),
            _ => self.u(key).map(Some),
        }
    }
    fn conv_params(&self, nd: usize) -> Result<ConvParams> {
        Ok(ConvParams {
            stride: self.us("stride", nd)?,
            padding: self.us("padding", nd)?,
            dilation: self.us("dilation", nd)?,
            groups: self.u("groups")?,
        })
    }
}

type OpFn = fn(&Env) -> Result<Tensor>;

fn compare(what: &str, got: &Tensor, expected: &Array, atol: f64, rtol: f64) -> Result<()> {
    if got.dims() != expected.shape.as_slice() {
        return Err(Error::msg(format!(
            "{what}: shape {:?}, torch has {:?}",
            got.dims(),
            expected.shape
        )));
    }
    assert_close_slices(what, &got.to_f64_vec()?, &expected.data, atol, rtol)
}

fn run_mode(dev: &Device, fx: &Fixture, tol: Tol, op: OpFn, mode: Mode) -> Result<()> {
    let (atol, rtol) = match mode.dtype {
        DType::F64 => (tol.atol64, tol.rtol64),
        _ => (tol.atol32, tol.rtol32),
    };
    let mut tensors = BTreeMap::new();
    let mut vars: Vec<(&str, Var)> = vec![];
    for (name, a) in &fx.inputs {
        let dtype = match (a.dtype, mode.dtype) {
            (None, float) => float,
            (Some(DType::I64), DType::F32) => DType::U32,
            (Some(d), _) => d,
        };
        let t = Tensor::from_host(
            HostData::from_f64_slice(&a.data, dtype),
            a.shape.clone(),
            dev,
        )?;
        let buf = buffer_for(&t, mode.strided)?;
        let buf = if mode.tracked && fx.grads.iter().any(|(g, _)| g == name) {
            let v = Var::from_tensor(&buf)?;
            vars.push((name, v.clone()));
            v.into_inner()
        } else {
            buf
        };
        tensors.insert(name.clone(), view(&buf, mode.strided)?);
    }
    let env = Env {
        params: fx.params.clone(),
        tensors,
    };
    let y = op(&env)?;
    if y.dtype() != mode.dtype {
        return Err(Error::msg(format!(
            "output dtype {}, expected {}",
            y.dtype(),
            mode.dtype
        )));
    }
    compare("output", &y, &fx.output, atol, rtol)?;
    for (name, expected) in &fx.updated {
        compare(
            &format!("{name} after the op"),
            env.t(name)?,
            expected,
            atol,
            rtol,
        )?;
    }
    if !mode.tracked {
        return Ok(());
    }
    let gy = Tensor::from_f64s(&fx.gy.data, fx.gy.shape.clone(), DType::F64, dev)?;
    let grads = y.backward_with_grad(&gy)?;
    for (name, var) in &vars {
        let expected = &fx
            .grads
            .iter()
            .find(|(g, _)| g == name)
            .expect("vars are built from grads")
            .1;
        let got = match grads.get(var.as_tensor()) {
            Some(g) => view(g, mode.strided)?,
            // No entry means no path from the output: a zero gradient, which torch must agree with.
            None => view(&var.zeros_like()?, mode.strided)?,
        };
        compare(&format!("gradient of {name}"), &got, expected, atol, rtol)?;
    }
    Ok(())
}

fn run_fixture(dev: &Device, json: &str, tol: Tol, op: OpFn) -> Result<()> {
    let fx = parse_fixture(json)?;
    for mode in MODES {
        run_mode(dev, &fx, tol, op, mode).map_err(|e| Error::msg(format!("{mode}: {e}")))?;
    }
    Ok(())
}

/// One entry per fixture: `name, tolerances, op`. The name is the fixture's file stem.
macro_rules! parity_cases {
    ($(($name:literal, $tol:expr, $op:expr)),* $(,)?) => {
        pub(super) fn cases() -> Vec<Case> {
            vec![$(Case {
                group: "parity",
                name: $name,
                run: |dev| run_fixture(
                    dev,
                    include_str!(concat!("../../tests/fixtures/ops/", $name, ".json")),
                    $tol,
                    $op,
                ),
            }),*]
        }

        #[cfg(test)]
        const FIXTURES: &[(&str, &str)] =
            &[$(($name, include_str!(concat!("../../tests/fixtures/ops/", $name, ".json")))),*];
    };
}

fn conv(e: &Env) -> Result<Tensor> {
    let x = e.t("x")?;
    let (w, b) = (e.t("w")?, e.opt("b"));
    let (s, p, d, g) = (
        e.u("stride")?,
        e.u("padding")?,
        e.u("dilation")?,
        e.u("groups")?,
    );
    match x.rank() {
        3 => x.conv1d(w, b, s, p, d, g),
        4 => x.conv2d(w, b, s, p, d, g),
        _ => x.conv3d(w, b, s, p, d, g),
    }
}

fn conv_transpose(e: &Env) -> Result<Tensor> {
    let x = e.t("x")?;
    let (w, b) = (e.t("w")?, e.opt("b"));
    let (s, p, op, d, g) = (
        e.u("stride")?,
        e.u("padding")?,
        e.u("output_padding")?,
        e.u("dilation")?,
        e.u("groups")?,
    );
    if x.rank() == 3 {
        x.conv_transpose1d(w, b, s, p, op, d, g)
    } else {
        x.conv_transpose2d(w, b, s, p, op, d, g)
    }
}

fn pool(e: &Env, f: fn(&Tensor, usize, usize, usize) -> Result<Tensor>) -> Result<Tensor> {
    f(e.t("x")?, e.u("kernel")?, e.u("stride")?, e.u("padding")?)
}

fn out_hw(e: &Env) -> Result<(usize, usize)> {
    let o = e.us("out", 2)?;
    Ok((o[0], o[1]))
}

fn attention(e: &Env) -> Result<Tensor> {
    let p = AttentionParams {
        scale: e.f("scale")?,
        causal: e.b("causal")?,
        window: e.opt_u("window")?,
        alibi_slopes: e.opt("alibi_slopes").cloned(),
        bias: e.opt("bias").cloned(),
    };
    e.t("q")?
        .scaled_dot_product_attention(e.t("k")?, e.t("v")?, &p)
}

parity_cases![
    // convolutions
    ("conv1d", STRICT, conv),
    ("conv2d_s2_p1_d2", STRICT, conv),
    ("conv2d_groups2", STRICT, conv),
    ("conv2d_depthwise", STRICT, conv),
    ("conv2d_asym", STRICT, |e| e.t("x")?.conv_nd(
        e.t("w")?,
        e.opt("b"),
        &e.conv_params(2)?
    )),
    ("conv3d", STRICT, conv),
    ("conv_transpose1d", STRICT, conv_transpose),
    ("conv_transpose2d_d1", STRICT, conv_transpose),
    ("conv_transpose2d_d2", STRICT, conv_transpose),
    // pooling
    ("max_pool1d", STRICT, |e| pool(e, Tensor::max_pool1d)),
    ("max_pool2d", STRICT, |e| pool(e, Tensor::max_pool2d)),
    ("avg_pool1d", STRICT, |e| pool(e, Tensor::avg_pool1d)),
    ("avg_pool2d", STRICT, |e| pool(e, Tensor::avg_pool2d)),
    ("adaptive_avg_pool2d_7x6_to_3x3", STRICT, |e| e
        .t("x")?
        .adaptive_avg_pool2d(out_hw(e)?)),
    ("adaptive_avg_pool2d_5x8_to_4x3", STRICT, |e| e
        .t("x")?
        .adaptive_avg_pool2d(out_hw(e)?)),
    ("adaptive_max_pool2d_7x6_to_3x3", STRICT, |e| e
        .t("x")?
        .adaptive_max_pool2d(out_hw(e)?)),
    ("adaptive_max_pool2d_5x8_to_4x3", STRICT, |e| e
        .t("x")?
        .adaptive_max_pool2d(out_hw(e)?)),
    ("adaptive_avg_pool1d_10_to_4", STRICT, |e| e
        .t("x")?
        .adaptive_avg_pool1d(e.u("out")?)),
    ("adaptive_avg_pool1d_9_to_3", STRICT, |e| e
        .t("x")?
        .adaptive_avg_pool1d(e.u("out")?)),
    // normalisation
    ("layer_norm_affine", STRICT, |e| e.t("x")?.layer_norm(
        e.opt("w"),
        e.opt("b"),
        e.f("eps")?
    )),
    ("layer_norm_plain", STRICT, |e| e.t("x")?.layer_norm(
        e.opt("w"),
        e.opt("b"),
        e.f("eps")?
    )),
    ("rms_norm", STRICT, |e| e
        .t("x")?
        .rms_norm(Some(e.t("w")?), e.f("eps")?)),
    ("group_norm", STRICT, |e| e.t("x")?.group_norm(
        e.u("groups")?,
        e.opt("w"),
        e.opt("b"),
        e.f("eps")?
    )),
    ("batch_norm_train", STRICT, batch_norm),
    ("batch_norm_eval", STRICT, batch_norm),
    // softmax family
    ("softmax_last", STRICT, |e| e.t("x")?.softmax(e.i("dim")?)),
    ("softmax_dim1", STRICT, |e| e.t("x")?.softmax(e.i("dim")?)),
    ("softmax_masked", STRICT, |e| e.t("x")?.softmax(e.i("dim")?)),
    ("log_softmax_last", STRICT, |e| e
        .t("x")?
        .log_softmax(e.i("dim")?)),
    ("log_softmax_dim1", STRICT, |e| e
        .t("x")?
        .log_softmax(e.i("dim")?)),
    ("log_softmax_masked", STRICT, |e| e
        .t("x")?
        .log_softmax(e.i("dim")?)),
    // activations
    ("gelu", STRICT, |e| e.t("x")?.gelu()),
    ("gelu_tanh", STRICT, |e| e.t("x")?.gelu_tanh()),
    ("silu", STRICT, |e| e.t("x")?.silu()),
    ("softplus", STRICT, |e| e.t("x")?.softplus()),
    ("elu", STRICT, |e| e.t("x")?.elu(e.f("alpha")?)),
    ("leaky_relu", STRICT, |e| e
        .t("x")?
        .leaky_relu(e.f("slope")?)),
    // reductions and scans
    ("logsumexp_last", STRICT, |e| e
        .t("x")?
        .logsumexp(e.is("dims")?)),
    ("logsumexp_dims02", STRICT, |e| e
        .t("x")?
        .logsumexp(e.is("dims")?)),
    ("logsumexp_neginf", STRICT, |e| e
        .t("x")?
        .logsumexp(e.is("dims")?)),
    ("var_dim1", STRICT, |e| e.t("x")?.var(e.is("dims")?, 1)),
    ("var_dims02", STRICT, |e| e.t("x")?.var(e.is("dims")?, 1)),
    ("std_dim1", STRICT, |e| e.t("x")?.std(e.is("dims")?, 1)),
    ("std_dims02", STRICT, |e| e.t("x")?.std(e.is("dims")?, 1)),
    ("cumsum_dim1", STRICT, |e| e.t("x")?.cumsum(e.i("dim")?)),
    ("cumsum_last", STRICT, |e| e.t("x")?.cumsum(e.i("dim")?)),
    // rotary embeddings
    ("rope_half", STRICT, |e| e.t("x")?.rope(
        e.t("cos")?,
        e.t("sin")?,
        e.b("interleaved")?
    )),
    ("rope_interleaved", STRICT, |e| e.t("x")?.rope(
        e.t("cos")?,
        e.t("sin")?,
        e.b("interleaved")?
    )),
    // attention
    ("attention_plain", STRICT, attention),
    ("attention_causal", STRICT, attention),
    ("attention_gqa", STRICT, attention),
    ("attention_gqa_causal", STRICT, attention),
    ("attention_bias", STRICT, attention),
    ("attention_alibi_causal", STRICT, attention),
    ("attention_alibi_kv_cache", STRICT, attention),
    ("attention_window_causal", STRICT, attention),
    ("attention_window_kv_cache", STRICT, attention),
    ("attention_causal_kv_cache", STRICT, attention),
    // matmul and indexing
    ("matmul_broadcast", STRICT, |e| e.t("a")?.matmul(e.t("b")?)),
    ("matmul_vec_right", STRICT, |e| e.t("a")?.matmul(e.t("v")?)),
    ("matmul_vec_left", STRICT, |e| e.t("v")?.matmul(e.t("b")?)),
    ("embedding", STRICT, |e| e
        .t("table")?
        .embedding(e.t("ids")?)),
    ("gather_dim1", STRICT, |e| e
        .t("x")?
        .gather(e.t("ids")?, e.u("dim")?)),
    ("gather_dim0", STRICT, |e| e
        .t("x")?
        .gather(e.t("ids")?, e.u("dim")?)),
    ("scatter_add_dim1", STRICT, |e| e.t("x")?.scatter_add(
        e.t("ids")?,
        e.t("src")?,
        e.u("dim")?
    )),
    ("scatter_add_dim0", STRICT, |e| e.t("x")?.scatter_add(
        e.t("ids")?,
        e.t("src")?,
        e.u("dim")?
    )),
    ("index_select", STRICT, |e| e
        .t("x")?
        .index_select(e.t("ids")?, e.u("dim")?)),
    ("masked_fill", STRICT, |e| e
        .t("x")?
        .masked_fill(e.t("mask")?, e.f("value")?)),
    ("where", STRICT, |e| e
        .t("cond")?
        .where_cond(e.t("a")?, e.t("b")?)),
];

fn batch_norm(e: &Env) -> Result<Tensor> {
    e.t("x")?.batch_norm(
        e.opt("running_mean"),
        e.opt("running_var"),
        e.opt("w"),
        e.opt("b"),
        e.b("training")?,
        e.f("momentum")?,
        e.f("eps")?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fixture the script wrote has a case, and every case's fixture parses.
    #[test]
    fn fixtures_match_cases() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ops");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("fixture folder")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = FIXTURES.iter().map(|(n, _)| n.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "fixtures on disk vs parity cases");
        assert_eq!(cases().len(), FIXTURES.len());
        for (name, json) in FIXTURES {
            let fx = parse_fixture(json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!fx.grads.is_empty(), "{name}: no gradients to check");
            assert!(!fx.output.data.is_empty(), "{name}: empty output");
        }
    }

    #[test]
    fn non_finite_values_parse() {
        let a = parse_array(
            "t",
            &serde_json::json!({"shape": [3], "data": [1.5, "-inf", "nan"]}),
        )
        .unwrap();
        assert_eq!(a.data[0], 1.5);
        assert_eq!(a.data[1], f64::NEG_INFINITY);
        assert!(a.data[2].is_nan());
        assert!(parse_array("t", &serde_json::json!({"shape": [2], "data": [1.0]})).is_err());
    }
}
