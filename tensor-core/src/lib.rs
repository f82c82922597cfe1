//! tensor-core: the `Tensor` type, dtypes, layouts, reverse-mode autograd and the object-safe
//! backend trait. Core names no concrete backend; see `docs/architecture.md`.

mod backend;
mod backprop;
pub mod checks;
pub mod composite;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod decoder;
mod dtype;
mod error;
mod layout;
mod nn_ops;
mod ops;
pub mod optim;
pub mod quant;
mod random;
mod shape;
mod tensor;
mod views;

pub use backend::{
    AttentionParams, BackendDevice, BackendStorage, BinaryOp, CmpOp, ConvParams,
    CrossEntropyParams, Device, ReduceOp, Storage, UnaryOp, UnfoldParams,
};
pub use backprop::{
    enable_grad, grad_enabled, no_grad, CustomOp, EnableGradGuard, GradStore, NoGradGuard,
};
pub use dtype::{DType, HostData, WithDType};
pub use error::{Context, Error, Result};
pub use layout::Layout;
pub use optim::OptimRule;
pub use random::{manual_seed, rng_state};
pub use shape::{AllDims, Dim, Dims, Shape};
pub use tensor::{Tensor, TensorId, Var};

pub use half::{bf16, f16};
