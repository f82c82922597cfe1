//! The standard layers.

pub mod conv;
pub mod linear;
pub mod misc;
pub mod mlp;
pub mod norm;

pub use conv::{
    conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d, Conv, Conv1d, Conv2d, Conv3d,
    ConvConfig, ConvTranspose, ConvTranspose1d, ConvTranspose2d, DepthwiseSeparableConv2d,
};
pub use linear::{linear, linear_no_bias, Embedding, Linear};
pub use misc::{DropPath, Dropout, Pool};
pub use mlp::{Mlp, MlpKind};
pub use norm::{
    batch_norm, layer_norm, BatchNorm, BatchNorm1d, BatchNorm2d, BatchNormConfig, GroupNorm,
    InstanceNorm, LayerNorm, RmsNorm,
};
