//! Finite-difference gradient checks in f64. Each check runs three times: with contiguous
//! inputs, with inputs that are transposed views of their variable, and with inputs narrowed
//! out of a larger variable — so backward rules are exercised on non-contiguous layouts too.

use super::{assert_close_slices, det_tensor};
use crate::{no_grad, DType, Device, Error, Result, Tensor, Var};

const EPS: f64 = 1e-6;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Presentation {
    Contiguous,
    Transposed,
    Narrowed,
}

/// A variable and how to turn it into the input the function sees.
struct Input {
    var: Var,
    pres: Presentation,
}

impl Input {
    fn new(x: &Tensor, pres: Presentation) -> Result<Input> {
        let base = match pres {
            Presentation::Contiguous => x.clone(),
            Presentation::Transposed if x.rank() >= 2 => x.t()?.contiguous()?,
            Presentation::Transposed => x.clone(),
            Presentation::Narrowed if x.rank() >= 1 => {
                // One extra slice on each side of dim 0; the function sees the middle.
                x.pad_with_value(0, 1, 1, 7.0)?
            }
            Presentation::Narrowed => x.clone(),
        };
        Ok(Input {
            var: Var::from_tensor(&base)?,
            pres,
        })
    }

    fn view(&self, t: &Tensor) -> Result<Tensor> {
        match self.pres {
            Presentation::Contiguous => Ok(t.clone()),
            Presentation::Transposed if t.rank() >= 2 => t.t(),
            Presentation::Transposed => Ok(t.clone()),
            Presentation::Narrowed if t.rank() >= 1 => t.narrow(0, 1, t.dims()[0] - 2),
            Presentation::Narrowed => Ok(t.clone()),
        }
    }
}

/// Check the gradients of `f` with respect to every input (f64 tensors) by central
/// differences. `f` may return any shape; it is reduced with fixed random weights.
pub fn check_grad(
    name: &str,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    check_grad_tol(name, inputs, 1e-6, 1e-5, f)
}

/// [`check_grad`] with explicit tolerances (absolute, relative).
pub fn check_grad_tol(
    name: &str,
    inputs: &[Tensor],
    atol: f64,
    rtol: f64,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    for x in inputs {
        if x.dtype() != DType::F64 {
            return Err(Error::msg(format!(
                "{name}: gradient checks take f64 inputs, got {}",
                x.dtype()
            )));
        }
    }
    for pres in [
        Presentation::Contiguous,
        Presentation::Transposed,
        Presentation::Narrowed,
    ] {
        check_one(name, inputs, pres, atol, rtol, &f)
            .map_err(|e| Error::msg(format!("{name} ({pres:?} inputs): {e}")))?;
    }
    Ok(())
}

fn check_one(
    name: &str,
    inputs: &[Tensor],
    pres: Presentation,
    atol: f64,
    rtol: f64,
    f: &impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let ins: Vec<Input> = inputs
        .iter()
        .map(|x| Input::new(x, pres))
        .collect::<Result<_>>()?;
    let views = |vals: &[Tensor]| -> Result<Vec<Tensor>> {
        ins.iter().zip(vals).map(|(i, v)| i.view(v)).collect()
    };
    let vars: Vec<Tensor> = ins.iter().map(|i| i.var.as_tensor().clone()).collect();
    let y = f(&views(&vars)?)?;
    if y.dtype() != DType::F64 {
        return Err(Error::msg(format!(
            "output dtype {} (expected f64)",
            y.dtype()
        )));
    }
    let dev = y.device().clone();
    let w = det_tensor(y.shape().clone(), DType::F64, &dev, 0xC0FFEE)?;
    let loss = y.mul(&w)?.sum_all()?;
    let grads = loss.backward()?;
    let eval = |vals: &[Tensor]| -> Result<f64> {
        let _g = no_grad();
        f(&views(vals)?)?.mul(&w)?.sum_all()?.to_f64()
    };
    for (i, inp) in ins.iter().enumerate() {
        let base = inp.var.as_tensor();
        let data = base.to_f64_vec()?;
        let analytic = match grads.get(base) {
            Some(g) => g.to_f64_vec()?,
            None => vec![0.0; data.len()],
        };
        let mut numeric = vec![0.0; data.len()];
        for j in 0..data.len() {
            let mut vals: Vec<Tensor> = vars.iter().map(|v| v.detach()).collect();
            let mut d = data.clone();
            d[j] = data[j] + EPS;
            vals[i] = Tensor::from_f64s(&d, base.shape().clone(), DType::F64, &dev)?;
            let lp = eval(&vals)?;
            d[j] = data[j] - EPS;
            vals[i] = Tensor::from_f64s(&d, base.shape().clone(), DType::F64, &dev)?;
            let lm = eval(&vals)?;
            numeric[j] = (lp - lm) / (2.0 * EPS);
        }
        assert_close_slices(
            &format!("{name}: gradient of input {i}"),
            &analytic,
            &numeric,
            atol,
            rtol,
        )?;
    }
    Ok(())
}

/// A deterministic f64 input in [-1, 1) for gradient checks.
pub fn input(shape: impl Into<crate::Shape>, device: &Device, seed: u64) -> Result<Tensor> {
    det_tensor(shape, DType::F64, device, seed)
}

/// A deterministic f64 input in [lo, hi) (for ops with restricted domains such as log).
pub fn input_in(
    shape: impl Into<crate::Shape>,
    lo: f64,
    hi: f64,
    device: &Device,
    seed: u64,
) -> Result<Tensor> {
    det_tensor(shape, DType::F64, device, seed)?.affine((hi - lo) / 2.0, (hi + lo) / 2.0)
}
