//! tensor-core: the `Tensor` type, dtypes, layouts, reverse-mode autograd and the object-safe
//! backend trait. Core names no concrete backend; see `docs/architecture.md`.

mod backend;
mod backprop;
pub mod composite;
#[cfg(feature = "conformance")]
pub mod conformance;
mod dtype;
mod error;
mod layout;
mod nn_ops;
mod ops;
mod random;
mod shape;
mod tensor;
mod views;

pub use backend::{
    AttentionParams, BackendDevice, BackendStorage, BinaryOp, CmpOp, ConvParams, Device, ReduceOp,
    Storage, UnaryOp, UnfoldParams,
};
pub use backprop::{grad_enabled, no_grad, CustomOp, GradStore, NoGradGuard};
pub use dtype::{DType, HostData, WithDType};
pub use error::{Context, Error, Result};
pub use layout::Layout;
pub use random::manual_seed;
pub use shape::{AllDims, Dim, Dims, Shape};
pub use tensor::{Tensor, TensorId, Var};

pub use half::{bf16, f16};
