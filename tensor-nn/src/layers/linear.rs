//! `Linear` and `Embedding`: the two lookup/projection layers every model starts from.

use tensor_core::{Error, Result, Tensor};

use crate::init::Init;
use crate::module::Module;
use crate::var_builder::VarBuilder;

/// `y = x·Wᵀ + b` with `W: [out, in]` (PyTorch layout, names `weight` and `bias`).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        if weight.rank() != 2 {
            return Err(Error::invalid(
                "Linear",
                format!("weight must be [out, in], got {:?}", weight.dims()),
            ));
        }
        if let Some(b) = &bias {
            if b.dims() != [weight.dims()[0]] {
                return Err(Error::invalid(
                    "Linear",
                    format!(
                        "bias {:?} does not match weight {:?}",
                        b.dims(),
                        weight.dims()
                    ),
                ));
            }
        }
        Ok(Linear { weight, bias })
    }

    /// PyTorch's `nn.Linear(in_dim, out_dim, bias)`, with its default initialisation.
    pub fn build(vb: &VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let weight = vb.get_with_init((out_dim, in_dim), "weight", Init::torch_default())?;
        let bias = if bias {
            Some(vb.get_with_init((out_dim,), "bias", Init::torch_default_bias(in_dim))?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// Shorthand for [`Linear::build`] with a bias.
pub fn linear(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<Linear> {
    Linear::build(vb, in_dim, out_dim, true)
}

/// Shorthand for [`Linear::build`] without a bias.
pub fn linear_no_bias(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<Linear> {
    Linear::build(vb, in_dim, out_dim, false)
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let d = xs.dims();
        let k = self.in_dim();
        if d.last() != Some(&k) {
            return Err(Error::invalid(
                "Linear",
                format!("input {d:?} must end in the layer's in_dim {k}"),
            ));
        }
        // Fold the leading dims into one so the product is a single GEMM.
        let rows: usize = d[..d.len() - 1].iter().product();
        let x2 = if d.len() == 2 {
            xs.clone()
        } else {
            xs.reshape((rows, k))?
        };
        let y = x2.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.add(b)?,
            None => y,
        };
        if d.len() == 2 {
            Ok(y)
        } else {
            let mut out = d[..d.len() - 1].to_vec();
            out.push(self.out_dim());
            y.reshape(out)
        }
    }
}

/// A `[vocab, dim]` table looked up by integer ids (`nn.Embedding`, name `weight`).
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    /// `nn.Embedding(vocab, dim)`: weights drawn from N(0, 1) like PyTorch.
    pub fn build(vb: &VarBuilder, vocab: usize, dim: usize) -> Result<Embedding> {
        let weight = vb.get_with_init(
            (vocab, dim),
            "weight",
            Init::Normal {
                mean: 0.0,
                std: 1.0,
            },
        )?;
        Ok(Embedding { weight })
    }

    pub fn new(weight: Tensor) -> Result<Embedding> {
        if weight.rank() != 2 {
            return Err(Error::invalid(
                "Embedding",
                format!("table must be [vocab, dim], got {:?}", weight.dims()),
            ));
        }
        Ok(Embedding { weight })
    }

    pub fn dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn vocab(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.weight.embedding(ids)
    }
}
