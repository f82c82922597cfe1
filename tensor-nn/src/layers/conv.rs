//! Convolution layers: `Conv1d/2d/3d`, `ConvTranspose1d/2d` and a depthwise-separable block,
//! with PyTorch's parameter names, layouts and default initialisation.

use tensor_core::{ConvParams, Error, Result, Tensor};

use crate::init::Init;
use crate::module::Module;
use crate::var_builder::VarBuilder;

/// Geometry of a convolution layer (the same value along every spatial dim).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvConfig {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
    pub bias: bool,
    /// Transposed convolutions only: extra size added to one side of the output.
    pub output_padding: usize,
}

impl Default for ConvConfig {
    fn default() -> Self {
        ConvConfig {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
            output_padding: 0,
        }
    }
}

impl ConvConfig {
    fn params(&self, nd: usize) -> ConvParams {
        ConvParams {
            stride: vec![self.stride; nd],
            padding: vec![self.padding; nd],
            dilation: vec![self.dilation; nd],
            groups: self.groups,
        }
    }

    fn check(&self, op: &'static str, cin: usize, cout: usize) -> Result<()> {
        let g = self.groups;
        if g == 0
            || !cin.is_multiple_of(g)
            || !cout.is_multiple_of(g)
            || self.stride == 0
            || self.dilation == 0
        {
            return Err(Error::invalid(
                op,
                format!(
                    "in_channels {cin} and out_channels {cout} must divide by groups {g}; \
                     stride {} and dilation {} must be positive",
                    self.stride, self.dilation
                ),
            ));
        }
        Ok(())
    }
}

/// An N-d convolution (`nn.Conv1d/2d/3d`): weight `[Cout, Cin/groups, *k]`, bias `[Cout]`.
#[derive(Clone, Debug)]
pub struct Conv {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub params: ConvParams,
}

pub type Conv1d = Conv;
pub type Conv2d = Conv;
pub type Conv3d = Conv;

impl Conv {
    /// A convolution with `nd` spatial dims and a cubic kernel of side `kernel`.
    pub fn build(
        vb: &VarBuilder,
        nd: usize,
        cin: usize,
        cout: usize,
        kernel: usize,
        cfg: ConvConfig,
    ) -> Result<Conv> {
        cfg.check("Conv", cin, cout)?;
        let mut shape = vec![cout, cin / cfg.groups];
        shape.extend(std::iter::repeat_n(kernel, nd));
        let fan_in = cin / cfg.groups * kernel.pow(nd as u32);
        let weight = vb.get_with_init(shape, "weight", Init::torch_default())?;
        let bias = if cfg.bias {
            Some(vb.get_with_init((cout,), "bias", Init::torch_default_bias(fan_in))?)
        } else {
            None
        };
        Ok(Conv {
            weight,
            bias,
            params: cfg.params(nd),
        })
    }
}

/// `nn.Conv1d(cin, cout, kernel, …)`.
pub fn conv1d(vb: &VarBuilder, cin: usize, cout: usize, k: usize, cfg: ConvConfig) -> Result<Conv> {
    Conv::build(vb, 1, cin, cout, k, cfg)
}

/// `nn.Conv2d(cin, cout, kernel, …)`.
pub fn conv2d(vb: &VarBuilder, cin: usize, cout: usize, k: usize, cfg: ConvConfig) -> Result<Conv> {
    Conv::build(vb, 2, cin, cout, k, cfg)
}

/// `nn.Conv3d(cin, cout, kernel, …)`.
pub fn conv3d(vb: &VarBuilder, cin: usize, cout: usize, k: usize, cfg: ConvConfig) -> Result<Conv> {
    Conv::build(vb, 3, cin, cout, k, cfg)
}

impl Module for Conv {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.conv_nd(&self.weight, self.bias.as_ref(), &self.params)
    }
}

/// A transposed convolution (`nn.ConvTranspose1d/2d`): weight `[Cin, Cout/groups, *k]`.
#[derive(Clone, Debug)]
pub struct ConvTranspose {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub params: ConvParams,
    pub output_padding: Vec<usize>,
}

pub type ConvTranspose1d = ConvTranspose;
pub type ConvTranspose2d = ConvTranspose;

impl ConvTranspose {
    pub fn build(
        vb: &VarBuilder,
        nd: usize,
        cin: usize,
        cout: usize,
        kernel: usize,
        cfg: ConvConfig,
    ) -> Result<ConvTranspose> {
        cfg.check("ConvTranspose", cin, cout)?;
        let mut shape = vec![cin, cout / cfg.groups];
        shape.extend(std::iter::repeat_n(kernel, nd));
        // PyTorch computes the fan from weight dim 1, i.e. Cout/groups · k^nd.
        let fan_in = cout / cfg.groups * kernel.pow(nd as u32);
        let weight = vb.get_with_init(shape, "weight", Init::torch_default())?;
        let bias = if cfg.bias {
            Some(vb.get_with_init((cout,), "bias", Init::torch_default_bias(fan_in))?)
        } else {
            None
        };
        Ok(ConvTranspose {
            weight,
            bias,
            params: cfg.params(nd),
            output_padding: vec![cfg.output_padding; nd],
        })
    }
}

/// `nn.ConvTranspose1d(cin, cout, kernel, …)`.
pub fn conv_transpose1d(
    vb: &VarBuilder,
    cin: usize,
    cout: usize,
    k: usize,
    cfg: ConvConfig,
) -> Result<ConvTranspose> {
    ConvTranspose::build(vb, 1, cin, cout, k, cfg)
}

/// `nn.ConvTranspose2d(cin, cout, kernel, …)`.
pub fn conv_transpose2d(
    vb: &VarBuilder,
    cin: usize,
    cout: usize,
    k: usize,
    cfg: ConvConfig,
) -> Result<ConvTranspose> {
    ConvTranspose::build(vb, 2, cin, cout, k, cfg)
}

impl Module for ConvTranspose {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.conv_transpose_nd(
            &self.weight,
            self.bias.as_ref(),
            &self.params,
            &self.output_padding,
        )
    }
}

/// Depthwise-separable 2-d convolution (MobileNet): a per-channel `k×k` convolution
/// (`depthwise`, groups = Cin) followed by a `1×1` convolution (`pointwise`) mixing channels.
#[derive(Clone, Debug)]
pub struct DepthwiseSeparableConv2d {
    pub depthwise: Conv,
    pub pointwise: Conv,
}

impl DepthwiseSeparableConv2d {
    /// `cfg` gives the depthwise geometry and whether both convolutions have a bias.
    pub fn build(
        vb: &VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        cfg: ConvConfig,
    ) -> Result<Self> {
        let dw = ConvConfig { groups: cin, ..cfg };
        let pw = ConvConfig {
            groups: 1,
            stride: 1,
            padding: 0,
            dilation: 1,
            ..cfg
        };
        Ok(DepthwiseSeparableConv2d {
            depthwise: conv2d(&vb.pp("depthwise"), cin, cin, kernel, dw)?,
            pointwise: conv2d(&vb.pp("pointwise"), cin, cout, 1, pw)?,
        })
    }
}

impl Module for DepthwiseSeparableConv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.pointwise.forward(&self.depthwise.forward(xs)?)
    }
}
