//! Parameter-free layers: pooling, dropout and stochastic depth.

use tensor_core::{Error, Result, Tensor};

use crate::module::{Module, ModuleT};

/// Pooling flavours, as modules over `[N, C, L]` (1-d) or `[N, C, H, W]` (2-d).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pool {
    MaxPool1d {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    MaxPool2d {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool1d {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool2d {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    AdaptiveAvgPool1d(usize),
    AdaptiveAvgPool2d(usize, usize),
    AdaptiveMaxPool1d(usize),
    AdaptiveMaxPool2d(usize, usize),
}

impl Pool {
    /// `nn.MaxPool2d(kernel)` (stride = kernel, like PyTorch's default).
    pub fn max2d(kernel: usize) -> Pool {
        Pool::MaxPool2d {
            kernel,
            stride: kernel,
            padding: 0,
        }
    }

    /// `nn.AvgPool2d(kernel)` (stride = kernel).
    pub fn avg2d(kernel: usize) -> Pool {
        Pool::AvgPool2d {
            kernel,
            stride: kernel,
            padding: 0,
        }
    }
}

impl Module for Pool {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match *self {
            Pool::MaxPool1d {
                kernel,
                stride,
                padding,
            } => x.max_pool1d(kernel, stride, padding),
            Pool::MaxPool2d {
                kernel,
                stride,
                padding,
            } => x.max_pool2d(kernel, stride, padding),
            Pool::AvgPool1d {
                kernel,
                stride,
                padding,
            } => x.avg_pool1d(kernel, stride, padding),
            Pool::AvgPool2d {
                kernel,
                stride,
                padding,
            } => x.avg_pool2d(kernel, stride, padding),
            Pool::AdaptiveAvgPool1d(o) => x.adaptive_avg_pool1d(o),
            Pool::AdaptiveAvgPool2d(h, w) => x.adaptive_avg_pool2d((h, w)),
            Pool::AdaptiveMaxPool1d(o) => x.adaptive_max_pool1d(o),
            Pool::AdaptiveMaxPool2d(h, w) => x.adaptive_max_pool2d((h, w)),
        }
    }
}

/// `nn.Dropout(p)`: active only in training.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f64,
}

impl Dropout {
    pub fn new(p: f64) -> Result<Dropout> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid(
                "Dropout",
                format!("probability {p} outside [0, 1]"),
            ));
        }
        Ok(Dropout { p })
    }
}

impl ModuleT for Dropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        xs.dropout(self.p, train)
    }
}

/// Stochastic depth (`DropPath`, timm): in training, drop a residual branch for whole samples
/// with probability `p` and scale the kept ones by 1/(1−p). Apply to the branch output
/// before adding it to the residual stream.
#[derive(Clone, Copy, Debug)]
pub struct DropPath {
    pub p: f64,
}

impl DropPath {
    pub fn new(p: f64) -> Result<DropPath> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid(
                "DropPath",
                format!("probability {p} outside [0, 1)"),
            ));
        }
        Ok(DropPath { p })
    }
}

impl ModuleT for DropPath {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 || xs.rank() == 0 {
            return Ok(xs.clone());
        }
        let mut shape = vec![1; xs.rank()];
        shape[0] = xs.dims()[0];
        let keep = Tensor::bernoulli(1.0 - self.p, shape, xs.dtype(), xs.device())?;
        xs.mul(&keep.affine(1.0 / (1.0 - self.p), 0.0)?)
    }
}
