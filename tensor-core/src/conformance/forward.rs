//! Conformance cases: forward results against exact hand-computed or naive-loop references,
//! in every dtype an op applies to (f32, f64, f16, bf16 with per-dtype tolerances; u8, u32 and
//! i64 exactly for the integer-capable ops). References are computed in f64 from the inputs as
//! stored in the tested dtype, so half-precision rounding of the inputs is not an error.

use super::{assert_close_slices, det_values, Case};
use crate::{
    AttentionParams, DType, Device, Error, HostData, Result, Shape, Tensor, UnfoldParams, Var,
    WithDType,
};
use half::{bf16, f16};

mod conv;
mod create;
mod elementwise;
mod matmul;
mod nn;
mod reduce;
mod views;

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];
const INTS: [DType; 3] = [DType::U8, DType::U32, DType::I64];

type Unary = fn(&Tensor) -> Result<Tensor>;
type Binary = fn(&Tensor, &Tensor) -> Result<Tensor>;
/// A reference for a unary op in f64.
type RefUnary = fn(f64) -> f64;
/// A reference for a binary op in f64.
type RefBinary = fn(f64, f64) -> f64;
/// A named op, its f64 reference and the inputs it is checked on.
type UnaryRow = (&'static str, Unary, RefUnary, &'static [f64]);

fn case(name: &'static str, run: fn(&Device) -> Result<()>) -> Case {
    Case {
        group: "forward",
        name,
        run,
    }
}

pub(super) fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(conv::cases());
    v.extend(create::cases());
    v.extend(elementwise::cases());
    v.extend(matmul::cases());
    v.extend(nn::cases());
    v.extend(reduce::cases());
    v.extend(views::cases());
    v
}

// ---- helpers --------------------------------------------------------------------------------

/// (atol, rtol) for results rounded to `dt`.
fn tol(dt: DType) -> (f64, f64) {
    match dt {
        DType::F64 => (1e-12, 1e-12),
        DType::F32 => (1e-6, 1e-6),
        DType::F16 => (1e-3, 2e-3),
        DType::BF16 => (1e-2, 1e-2),
        _ => (0.0, 0.0),
    }
}

fn t(d: &Device, v: &[f64], shape: impl Into<Shape>, dt: DType) -> Result<Tensor> {
    Tensor::from_f64s(v, shape, dt, d)
}

/// Values as stored in `dt`.
fn rounded(v: &[f64], dt: DType) -> Vec<f64> {
    HostData::from_f64_slice(v, dt).to_f64_vec()
}

/// Check shape, dtype and values.
fn expect(
    what: &str,
    got: &Tensor,
    dims: &[usize],
    dt: DType,
    want: &[f64],
    (atol, rtol): (f64, f64),
) -> Result<()> {
    if got.dims() != dims {
        return Err(Error::msg(format!(
            "{what}: shape {:?}, expected {dims:?}",
            got.dims()
        )));
    }
    if got.dtype() != dt {
        return Err(Error::msg(format!(
            "{what}: dtype {}, expected {dt}",
            got.dtype()
        )));
    }
    assert_close_slices(what, &got.to_f64_vec()?, want, atol, rtol)
}

fn must_err<T>(what: &str, r: Result<T>, needles: &[&str]) -> Result<()> {
    match r {
        Ok(_) => Err(Error::msg(format!("{what}: expected an error, got Ok"))),
        Err(e) => {
            let m = e.to_string();
            match needles.iter().find(|n| !m.contains(*n)) {
                Some(n) => Err(Error::msg(format!(
                    "{what}: message {m:?} does not mention {n:?}"
                ))),
                None => Ok(()),
            }
        }
    }
}
