//! Modules, losses, optimizers, LR schedulers and checkpoints. Filled by the tensor-nn issue;
//! today it only re-exports the core API that modules are built on.

pub use tensor_core as core;
