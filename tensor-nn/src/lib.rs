//! tensor-nn: modules, losses, optimizers, LR schedulers and checkpoints, built only from
//! `tensor-core` tensor ops (so every backend trains them).
//!
//! Modules are plain structs with a `forward` ([`Module`], or [`ModuleT`] when train/eval
//! mode matters). Parameters are found by name through a [`VarBuilder`]: over a [`VarMap`]
//! for training (fresh, initialised like PyTorch) or over loaded tensors for inference. The
//! names are PyTorch `state_dict` keys.

pub mod init;
pub mod layers;
pub mod module;
pub mod var_builder;

pub use init::{FanMode, Init, Nonlinearity};
pub use layers::*;
pub use module::{Activation, Flatten, Func, Module, ModuleT, Sequential};
pub use var_builder::{TensorMap, VarBuilder, VarMap, WeightSource};

pub use tensor_core as core;
