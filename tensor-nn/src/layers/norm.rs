//! Normalisation layers: LayerNorm, RMSNorm, GroupNorm, BatchNorm (running statistics) and
//! InstanceNorm, with PyTorch's parameter and buffer names.

use tensor_core::{DType, Error, Result, Tensor};

use crate::init::Init;
use crate::module::{Module, ModuleT};
use crate::var_builder::VarBuilder;

/// `nn.LayerNorm(dim)` over the last dim: `weight`, `bias` (optional affine).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    /// With an affine weight (ones) and, if `bias`, a bias (zeros).
    pub fn build(vb: &VarBuilder, dim: usize, eps: f64, bias: bool) -> Result<LayerNorm> {
        let weight = Some(vb.get_with_init((dim,), "weight", Init::ONES)?);
        let bias = if bias {
            Some(vb.get_with_init((dim,), "bias", Init::ZEROS)?)
        } else {
            None
        };
        Ok(LayerNorm { weight, bias, eps })
    }
}

/// `nn.LayerNorm(dim, eps)` with weight and bias.
pub fn layer_norm(vb: &VarBuilder, dim: usize, eps: f64) -> Result<LayerNorm> {
    LayerNorm::build(vb, dim, eps, true)
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.layer_norm(self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
}

/// RMSNorm over the last dim (`weight` only), as in Llama.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn build(vb: &VarBuilder, dim: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: vb.get_with_init((dim,), "weight", Init::ONES)?,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.rms_norm(Some(&self.weight), self.eps)
    }
}

/// `nn.GroupNorm(groups, channels)` on `[N, C, *]`.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    pub groups: usize,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl GroupNorm {
    pub fn build(vb: &VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<GroupNorm> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(Error::invalid(
                "GroupNorm",
                format!("channels {channels} must divide by groups {groups}"),
            ));
        }
        Ok(GroupNorm {
            groups,
            weight: Some(vb.get_with_init((channels,), "weight", Init::ONES)?),
            bias: Some(vb.get_with_init((channels,), "bias", Init::ZEROS)?),
            eps,
        })
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.group_norm(
            self.groups,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
        )
    }
}

/// Options of [`BatchNorm`] (PyTorch defaults).
#[derive(Clone, Copy, Debug)]
pub struct BatchNormConfig {
    pub eps: f64,
    pub momentum: f64,
    pub affine: bool,
    pub track_running_stats: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: 0.1,
            affine: true,
            track_running_stats: true,
        }
    }
}

/// `nn.BatchNorm1d/2d/3d` on `[N, C, *]`: `weight`, `bias`, and the buffers `running_mean`,
/// `running_var`, `num_batches_tracked`. Training normalises with the batch statistics and
/// updates the running ones in place; evaluation uses the running statistics.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub running_mean: Option<Tensor>,
    pub running_var: Option<Tensor>,
    pub num_batches_tracked: Option<Tensor>,
    pub cfg: BatchNormConfig,
}

pub type BatchNorm1d = BatchNorm;
pub type BatchNorm2d = BatchNorm;

impl BatchNorm {
    pub fn build(vb: &VarBuilder, channels: usize, cfg: BatchNormConfig) -> Result<BatchNorm> {
        let (weight, bias) = if cfg.affine {
            (
                Some(vb.get_with_init((channels,), "weight", Init::ONES)?),
                Some(vb.get_with_init((channels,), "bias", Init::ZEROS)?),
            )
        } else {
            (None, None)
        };
        let (running_mean, running_var, num_batches_tracked) = if cfg.track_running_stats {
            let dt = vb.dtype();
            (
                Some(vb.get_buffer((channels,), "running_mean", Init::ZEROS, dt)?),
                Some(vb.get_buffer((channels,), "running_var", Init::ONES, dt)?),
                Some(vb.get_buffer((), "num_batches_tracked", Init::ZEROS, DType::I64)?),
            )
        } else {
            (None, None, None)
        };
        Ok(BatchNorm {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            cfg,
        })
    }
}

/// `nn.BatchNorm2d(channels)` with default options.
pub fn batch_norm(vb: &VarBuilder, channels: usize) -> Result<BatchNorm> {
    BatchNorm::build(vb, channels, BatchNormConfig::default())
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        // Without running statistics PyTorch always uses the batch statistics.
        let use_batch = train || self.running_mean.is_none();
        let y = xs.batch_norm(
            self.running_mean.as_ref(),
            self.running_var.as_ref(),
            self.weight.as_ref(),
            self.bias.as_ref(),
            use_batch,
            self.cfg.momentum,
            self.cfg.eps,
        )?;
        if train {
            if let Some(n) = &self.num_batches_tracked {
                let _g = tensor_core::no_grad();
                n.copy_from(&n.add_scalar(1.0)?)?;
            }
        }
        Ok(y)
    }
}

/// `nn.InstanceNorm1d/2d`: each sample's channels normalised over their spatial positions;
/// optional affine `weight`/`bias` (off by default in PyTorch). No running statistics.
#[derive(Clone, Debug)]
pub struct InstanceNorm {
    pub channels: usize,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl InstanceNorm {
    pub fn build(vb: &VarBuilder, channels: usize, eps: f64, affine: bool) -> Result<Self> {
        let (weight, bias) = if affine {
            (
                Some(vb.get_with_init((channels,), "weight", Init::ONES)?),
                Some(vb.get_with_init((channels,), "bias", Init::ZEROS)?),
            )
        } else {
            (None, None)
        };
        Ok(InstanceNorm {
            channels,
            weight,
            bias,
            eps,
        })
    }
}

impl Module for InstanceNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if xs.rank() < 3 || xs.dims()[1] != self.channels {
            return Err(Error::invalid(
                "InstanceNorm",
                format!(
                    "expected [N, {}, *spatial], got {:?}",
                    self.channels,
                    xs.dims()
                ),
            ));
        }
        // One group per channel is exactly instance normalisation.
        xs.group_norm(
            self.channels,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
        )
    }
}
