//! The module traits, activation modules and `Sequential`.
//!
//! A module is a plain struct holding tensors with a `forward`. Train/eval mode is explicit:
//! modules whose behaviour depends on it (dropout, batch norm) implement [`ModuleT`] and take
//! `train: bool` in `forward_t`; every [`Module`] is a `ModuleT` that ignores the flag.

use tensor_core::{Error, Result, Tensor};

/// A layer whose output depends only on its input.
pub trait Module {
    fn forward(&self, xs: &Tensor) -> Result<Tensor>;
}

/// A layer that behaves differently in training and evaluation (dropout, batch norm).
pub trait ModuleT {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor>;
}

impl<M: Module + ?Sized> ModuleT for M {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        self.forward(xs)
    }
}

impl<M: Module + ?Sized> Module for Box<M> {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        (**self).forward(xs)
    }
}

/// Elementwise activations, as modules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    /// Exact (erf) GELU, `nn.GELU()`.
    Gelu,
    /// `nn.GELU(approximate="tanh")`, a.k.a. `gelu_new`/`gelu_pytorch_tanh` in HF configs.
    GeluTanh,
    Silu,
    Sigmoid,
    Tanh,
    Softplus,
    Elu(f64),
    LeakyRelu(f64),
    /// `relu(x)²` (Primer).
    Relu2,
}

impl Activation {
    /// Parse a Hugging Face `hidden_act` / PyTorch activation name.
    pub fn from_name(name: &str) -> Result<Activation> {
        Ok(match name {
            "identity" | "linear" => Activation::Identity,
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_tanh" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "softplus" => Activation::Softplus,
            "elu" => Activation::Elu(1.0),
            "leaky_relu" => Activation::LeakyRelu(0.01),
            "relu2" => Activation::Relu2,
            other => {
                return Err(Error::invalid(
                    "activation",
                    format!(
                        "unknown activation '{other}' (known: identity, relu, gelu, gelu_new, \
                         gelu_pytorch_tanh, silu, swish, sigmoid, tanh, softplus, elu, \
                         leaky_relu, relu2)"
                    ),
                ))
            }
        })
    }
}

impl Activation {
    /// The gated-MLP hidden state `act(gate) · up` (GLU variants: SiLU → SwiGLU, GELU →
    /// GeGLU, ReLU → ReGLU). SwiGLU runs as one fused op forward and backward.
    pub fn gated(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Silu => gate.silu_mul(up),
            act => act.forward(gate)?.mul(up),
        }
    }
}

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match *self {
            Activation::Identity => Ok(xs.clone()),
            Activation::Relu => xs.relu(),
            Activation::Gelu => xs.gelu(),
            Activation::GeluTanh => xs.gelu_tanh(),
            Activation::Silu => xs.silu(),
            Activation::Sigmoid => xs.sigmoid(),
            Activation::Tanh => xs.tanh(),
            Activation::Softplus => xs.softplus(),
            Activation::Elu(a) => xs.elu(a),
            Activation::LeakyRelu(s) => xs.leaky_relu(s),
            Activation::Relu2 => xs.relu()?.sqr(),
        }
    }
}

/// A closure as a module (`Func::new(|x| x.flatten_from(1))`).
pub struct Func<F>(F);

impl<F: Fn(&Tensor) -> Result<Tensor>> Func<F> {
    pub fn new(f: F) -> Self {
        Func(f)
    }
}

impl<F: Fn(&Tensor) -> Result<Tensor>> Module for Func<F> {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        (self.0)(xs)
    }
}

/// `nn.Flatten`: merge dims `start..=end` (default 1..=-1).
#[derive(Clone, Copy, Debug)]
pub struct Flatten {
    pub start: isize,
    pub end: isize,
}

impl Default for Flatten {
    fn default() -> Self {
        Flatten { start: 1, end: -1 }
    }
}

impl Module for Flatten {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let r = xs.rank() as isize;
        let norm = |d: isize| if d < 0 { d + r } else { d };
        let (s, e) = (norm(self.start), norm(self.end));
        if s < 0 || e >= r || s > e {
            return Err(Error::invalid(
                "flatten",
                format!(
                    "dims {}..={} out of range for shape {:?}",
                    self.start,
                    self.end,
                    xs.dims()
                ),
            ));
        }
        let (s, e) = (s as usize, e as usize);
        let d = xs.dims();
        let mut out: Vec<usize> = d[..s].to_vec();
        out.push(d[s..=e].iter().product());
        out.extend_from_slice(&d[e + 1..]);
        xs.reshape(out)
    }
}

/// Layers applied in order (`nn.Sequential`).
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn ModuleT + Send + Sync>>,
}

impl Sequential {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a layer (builder style).
    #[allow(clippy::should_implement_trait)]
    pub fn add<M: ModuleT + Send + Sync + 'static>(mut self, m: M) -> Self {
        self.layers.push(Box::new(m));
        self
    }

    /// Append a closure.
    pub fn add_fn<F>(self, f: F) -> Self
    where
        F: Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
    {
        self.add(Func::new(f))
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl ModuleT for Sequential {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = xs.clone();
        for l in &self.layers {
            x = l.forward_t(&x, train)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor_core::DType;

    #[test]
    fn sequential_and_flatten() -> Result<()> {
        let dev = tensor_cpu::device();
        let x = Tensor::arange(-6.0, 6.0, 1.0, DType::F32, &dev)?.reshape((2, 3, 2))?;
        let s = Sequential::new()
            .add(Activation::Relu)
            .add(Flatten::default())
            .add_fn(|x| x.mul_scalar(2.0));
        let y = s.forward_t(&x, false)?;
        assert_eq!(y.dims(), &[2, 6]);
        assert_eq!(
            y.to_vec::<f32>()?,
            vec![0., 0., 0., 0., 0., 0., 0., 2., 4., 6., 8., 10.]
        );
        assert!(Flatten { start: 2, end: 1 }.forward(&x).is_err());
        assert!(Activation::from_name("nope").is_err());
        Ok(())
    }
}
