//! Parameter initialisers, with PyTorch's `torch.nn.init` semantics (fan computation, gains),
//! so a freshly built module has the same statistics as its PyTorch counterpart.

use tensor_core::{DType, Device, Error, Result, Shape, Tensor};

/// Which fan Kaiming initialisation preserves the variance of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    FanIn,
    FanOut,
}

/// The non-linearity a Kaiming/Xavier gain is computed for (`torch.nn.init.calculate_gain`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Nonlinearity {
    Linear,
    Sigmoid,
    Tanh,
    Relu,
    /// Leaky ReLU with this negative slope.
    LeakyRelu(f64),
    Selu,
}

impl Nonlinearity {
    /// The recommended gain, as `torch.nn.init.calculate_gain`.
    pub fn gain(self) -> f64 {
        match self {
            Nonlinearity::Linear | Nonlinearity::Sigmoid => 1.0,
            Nonlinearity::Tanh => 5.0 / 3.0,
            Nonlinearity::Relu => 2f64.sqrt(),
            Nonlinearity::LeakyRelu(a) => (2.0 / (1.0 + a * a)).sqrt(),
            Nonlinearity::Selu => 0.75,
        }
    }
}

/// How a fresh parameter is filled.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    Const(f64),
    Uniform {
        lo: f64,
        hi: f64,
    },
    Normal {
        mean: f64,
        std: f64,
    },
    /// Uniform(±gain·√(3/fan)).
    KaimingUniform {
        mode: FanMode,
        nonlinearity: Nonlinearity,
    },
    /// Normal(0, gain/√fan).
    KaimingNormal {
        mode: FanMode,
        nonlinearity: Nonlinearity,
    },
    /// Uniform(±gain·√(6/(fan_in+fan_out))).
    XavierUniform {
        gain: f64,
    },
    /// Normal(0, gain·√(2/(fan_in+fan_out))).
    XavierNormal {
        gain: f64,
    },
}

impl Init {
    pub const ZEROS: Init = Init::Const(0.0);
    pub const ONES: Init = Init::Const(1.0);

    /// PyTorch's default for `Linear`/`Conv*` weights: `kaiming_uniform_(a=√5)`, which is
    /// Uniform(±1/√fan_in).
    pub fn torch_default() -> Init {
        Init::KaimingUniform {
            mode: FanMode::FanIn,
            nonlinearity: Nonlinearity::LeakyRelu(5f64.sqrt()),
        }
    }

    /// PyTorch's default for the bias of a layer whose weight has `fan_in` inputs:
    /// Uniform(±1/√fan_in).
    pub fn torch_default_bias(fan_in: usize) -> Init {
        let b = if fan_in > 0 {
            1.0 / (fan_in as f64).sqrt()
        } else {
            0.0
        };
        Init::Uniform { lo: -b, hi: b }
    }

    /// A fresh tensor of `shape` drawn from this initialiser (from the global seeded RNG,
    /// see [`tensor_core::manual_seed`]).
    pub fn make(&self, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let (fan_in, fan_out) = fans(shape);
        let fan = |mode: FanMode| -> Result<f64> {
            let f = match mode {
                FanMode::FanIn => fan_in,
                FanMode::FanOut => fan_out,
            };
            if f == 0 {
                return Err(Error::invalid(
                    "init",
                    format!("cannot compute a fan for an empty tensor of shape {shape:?}"),
                ));
            }
            Ok(f as f64)
        };
        match *self {
            Init::Const(v) => Tensor::full(v, shape.clone(), dtype, device),
            Init::Uniform { lo, hi } => Tensor::rand(lo, hi, shape.clone(), dtype, device),
            Init::Normal { mean, std } => Tensor::randn(mean, std, shape.clone(), dtype, device),
            Init::KaimingUniform { mode, nonlinearity } => {
                let bound = nonlinearity.gain() * (3.0 / fan(mode)?).sqrt();
                Tensor::rand(-bound, bound, shape.clone(), dtype, device)
            }
            Init::KaimingNormal { mode, nonlinearity } => {
                let std = nonlinearity.gain() / fan(mode)?.sqrt();
                Tensor::randn(0.0, std, shape.clone(), dtype, device)
            }
            Init::XavierUniform { gain } => {
                let bound = gain * (6.0 / (fan(FanMode::FanIn)? + fan_out as f64)).sqrt();
                Tensor::rand(-bound, bound, shape.clone(), dtype, device)
            }
            Init::XavierNormal { gain } => {
                let std = gain * (2.0 / (fan(FanMode::FanIn)? + fan_out as f64)).sqrt();
                Tensor::randn(0.0, std, shape.clone(), dtype, device)
            }
        }
    }
}

/// `(fan_in, fan_out)` as PyTorch computes them: dims 1 and 0 times the receptive field
/// (the product of the remaining dims); a 1-D tensor has both equal to its length.
pub fn fans(shape: &Shape) -> (usize, usize) {
    let d = shape.dims();
    match d.len() {
        0 => (1, 1),
        1 => (d[0], d[0]),
        _ => {
            let receptive: usize = d[2..].iter().product();
            (d[1] * receptive, d[0] * receptive)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fans_follow_torch() {
        assert_eq!(fans(&Shape::from(vec![16, 8])), (8, 16));
        assert_eq!(fans(&Shape::from(vec![32, 4, 3, 3])), (36, 288));
    }

    #[test]
    fn kaiming_default_bound_is_one_over_sqrt_fan_in() -> Result<()> {
        let dev = tensor_cpu::device();
        let w = Init::torch_default().make(&Shape::from(vec![64, 100]), DType::F64, &dev)?;
        let v = w.to_vec::<f64>()?;
        let max = v.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(max <= 0.1 + 1e-12 && max > 0.09, "max {max}");
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01);
        Ok(())
    }

    #[test]
    fn xavier_normal_std() -> Result<()> {
        let dev = tensor_cpu::device();
        let w = Init::XavierNormal { gain: 1.0 }.make(
            &Shape::from(vec![200, 300]),
            DType::F64,
            &dev,
        )?;
        let v = w.to_vec::<f64>()?;
        let var = v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64;
        let want = 2.0 / 500.0;
        assert!((var / want - 1.0).abs() < 0.05, "var {var} want {want}");
        Ok(())
    }
}
