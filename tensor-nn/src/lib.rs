//! tensor-nn: modules, losses, optimizers, LR schedulers and checkpoints, built only from
//! `tensor-core` tensor ops (so every backend trains them).
//!
//! Modules are plain structs with a `forward` ([`Module`], or [`ModuleT`] when train/eval
//! mode matters). Parameters are found by name through a [`VarBuilder`]: over a [`VarMap`]
//! for training (fresh, initialised like PyTorch) or over loaded tensors for inference. The
//! names are PyTorch `state_dict` keys.

pub mod attention;
pub mod checkpoint;
pub mod init;
pub mod layers;
pub mod loss;
pub mod lr_scheduler;
pub mod memory;
pub mod module;
pub mod moe;
pub mod optim;
pub mod pos_emb;
pub mod rnn;
pub mod rope;
pub mod rvq;
pub mod transformer;
pub mod var_builder;

pub use attention::{
    alibi_slopes, mask_to_bias, AttentionConfig, AttentionNames, KvCache, MultiHeadAttention,
    QkNorm,
};
pub use checkpoint::Checkpoint;
pub use init::{FanMode, Init, Nonlinearity};
pub use layers::*;
pub use memory::{Checkpointed, MasterWeights};
pub use module::{Activation, Flatten, Func, Module, ModuleT, Sequential};
pub use moe::{
    load_balancing_loss, topk_indices, Expert, ExpertNames, MoE, MoeConfig, MoeOutput, MoeRouting,
};
pub use pos_emb::{LearnedPositionalEmbedding, SinusoidalPositionalEmbedding};
pub use rnn::{Gru, GruCell, Lstm, LstmCell, LstmState, RnnConfig, RnnWeights};
pub use rope::{RopeCache, RopeConfig, RopeScaling};
pub use rvq::{
    CodebookUpdate, ResidualVectorQuantizer, RvqConfig, VectorQuantizer, VqConfig, VqOutput,
};
pub use transformer::{
    BlockConfig, BlockInputs, BlockNames, FeedForward, Norm, NormKind, NormPosition,
    TransformerBlock, TransformerDecoder, TransformerEncoder,
};
pub use var_builder::{TensorMap, VarBuilder, VarMap, WeightSource};

pub use tensor_core as core;
