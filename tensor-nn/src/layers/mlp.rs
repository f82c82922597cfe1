//! Feed-forward blocks: the plain two-layer MLP and the gated variants (SwiGLU, GeGLU, ReGLU)
//! of modern transformers.

use tensor_core::Result;

use crate::layers::linear::Linear;
use crate::module::{Activation, Module};
use crate::var_builder::VarBuilder;

/// Which feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MlpKind {
    /// `fc2(act(fc1(x)))` (BERT/GPT-2/ViT).
    Plain(Activation),
    /// `down_proj(act(gate_proj(x)) · up_proj(x))` (Llama): SwiGLU with `Silu`, GeGLU with
    /// `Gelu`/`GeluTanh`, ReGLU with `Relu`.
    Gated(Activation),
}

impl MlpKind {
    pub const SWIGLU: MlpKind = MlpKind::Gated(Activation::Silu);
    pub const GEGLU: MlpKind = MlpKind::Gated(Activation::Gelu);
    pub const REGLU: MlpKind = MlpKind::Gated(Activation::Relu);
}

/// A feed-forward block. Parameter names: `fc1`, `fc2` (plain) or `gate_proj`, `up_proj`,
/// `down_proj` (gated, Hugging Face Llama names).
#[derive(Clone, Debug)]
pub struct Mlp {
    kind: MlpKind,
    first: Linear,
    gate: Option<Linear>,
    last: Linear,
}

impl Mlp {
    pub fn build(
        vb: &VarBuilder,
        kind: MlpKind,
        dim: usize,
        hidden: usize,
        bias: bool,
    ) -> Result<Mlp> {
        Ok(match kind {
            MlpKind::Plain(_) => Mlp {
                kind,
                first: Linear::build(&vb.pp("fc1"), dim, hidden, bias)?,
                gate: None,
                last: Linear::build(&vb.pp("fc2"), hidden, dim, bias)?,
            },
            MlpKind::Gated(_) => Mlp {
                kind,
                first: Linear::build(&vb.pp("up_proj"), dim, hidden, bias)?,
                gate: Some(Linear::build(&vb.pp("gate_proj"), dim, hidden, bias)?),
                last: Linear::build(&vb.pp("down_proj"), hidden, dim, bias)?,
            },
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = match (self.kind, &self.gate) {
            (MlpKind::Gated(act), Some(g)) => {
                act.gated(&g.forward(xs)?, &self.first.forward(xs)?)?
            }
            (MlpKind::Plain(act), _) | (MlpKind::Gated(act), None) => {
                act.forward(&self.first.forward(xs)?)?
            }
        };
        self.last.forward(&h)
    }
}

use tensor_core::Tensor;
