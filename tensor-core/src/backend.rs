//! The object-safe backend trait. Core never names a concrete backend: a backend crate
//! implements [`BackendDevice`] and [`BackendStorage`] and hands out a [`Device`].
//!
//! The required methods are a small set of primitives (elementwise, comparisons, where,
//! reductions, cast, strided copy, batched matmul, gather/scatter, unfold/fold, fill/random).
//! The provided methods are fused ops whose default bodies compose the primitives
//! (see [`crate::composite`]); a backend overrides the ones it can do faster.
//!
//! Contract for every primitive: core has already validated shapes, dtypes and devices, and
//! layouts may be arbitrary strided views (including stride 0 from broadcasting). Results
//! are new contiguous storages. Index values are only checked by the backend (reading them on
//! the host would cost a device sync); an out-of-range index must be an `Err`.

use std::any::Any;
use std::sync::Arc;

use crate::{DType, HostData, Layout, Result, Tensor};

/// Backend-owned memory. Core only moves it around; a backend downcasts it with `as_any`.
pub trait BackendStorage: Send + Sync + std::fmt::Debug + Any {
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

pub type Storage = Box<dyn BackendStorage>;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Abs,
    Sign,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Recip,
    Sqr,
    Sin,
    Cos,
    Tanh,
    Sigmoid,
    Relu,
    /// Exact GELU, x·Φ(x).
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    Erf,
    Silu,
    /// log(1 + exp(x)), linear above 20 as in PyTorch.
    Softplus,
    Floor,
    Ceil,
    Round,
    /// x·mul + add.
    Affine {
        mul: f64,
        add: f64,
    },
    /// x^e.
    Powf(f64),
    /// x if x > 0 else alpha·(exp(x) − 1).
    Elu(f64),
    /// x if x > 0 else slope·x.
    LeakyRelu(f64),
    Clamp {
        min: f64,
        max: f64,
    },
}

impl UnaryOp {
    pub fn name(&self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Sign => "sign",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Recip => "recip",
            UnaryOp::Sqr => "sqr",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Erf => "erf",
            UnaryOp::Silu => "silu",
            UnaryOp::Softplus => "softplus",
            UnaryOp::Floor => "floor",
            UnaryOp::Ceil => "ceil",
            UnaryOp::Round => "round",
            UnaryOp::Affine { .. } => "affine",
            UnaryOp::Powf(_) => "powf",
            UnaryOp::Elu(_) => "elu",
            UnaryOp::LeakyRelu(_) => "leaky_relu",
            UnaryOp::Clamp { .. } => "clamp",
        }
    }

    /// Ops that make sense on integer tensors (computed exactly in the integer type).
    pub fn supports_int(&self) -> bool {
        matches!(
            self,
            UnaryOp::Neg
                | UnaryOp::Abs
                | UnaryOp::Sign
                | UnaryOp::Sqr
                | UnaryOp::Relu
                | UnaryOp::Affine { .. }
                | UnaryOp::Clamp { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Maximum,
    Minimum,
}

impl BinaryOp {
    pub fn name(&self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn name(&self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
    /// Index of the first maximum along exactly one dim; output dtype i64.
    ArgMax,
    /// Index of the first minimum along exactly one dim; output dtype i64.
    ArgMin,
}

impl ReduceOp {
    pub fn name(&self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::ArgMax => "argmax",
            ReduceOp::ArgMin => "argmin",
        }
    }
}

/// Sliding-window patch extraction (im2col) over the trailing `kernel.len()` spatial dims of an
/// `[N, C, *spatial]` tensor, giving `[N, C·∏kernel, L]` with L the number of output positions
/// (the layout of `torch.nn.functional.unfold`). Out-of-bounds taps read `pad_value`.
#[derive(Clone, Debug, PartialEq)]
pub struct UnfoldParams {
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub padding: Vec<usize>,
    pub dilation: Vec<usize>,
    pub pad_value: f64,
}

impl UnfoldParams {
    /// Output spatial size for an input spatial size, or None if the kernel does not fit.
    pub fn out_spatial(&self, input: &[usize]) -> Option<Vec<usize>> {
        input
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let (k, st, d, p) = (
                    *self.kernel.get(i)?,
                    *self.stride.get(i)?,
                    *self.dilation.get(i)?,
                    *self.padding.get(i)?,
                );
                if k == 0 || st == 0 || d == 0 {
                    return None;
                }
                let span = d.checked_mul(k - 1)?.checked_add(1)?;
                let padded = p.checked_mul(2)?.checked_add(s)?;
                if padded < span {
                    None
                } else {
                    Some((padded - span) / st + 1)
                }
            })
            .collect()
    }
}

/// Parameters of scaled-dot-product attention on `q: [B, Hq, Lq, D]`, `k, v: [B, Hkv, Lk, D]`
/// with `Hq` a multiple of `Hkv` (grouped-query attention shares each KV head among
/// `Hq / Hkv` query heads). Query `i` sits at absolute position `Lk − Lq + i` (KV-cache
/// alignment), which is what `causal` and `window` are measured against.
#[derive(Clone, Debug, Default)]
pub struct AttentionParams {
    pub scale: f64,
    pub causal: bool,
    /// Attend only to keys with `|pos_q − pos_k| < window`.
    pub window: Option<usize>,
    /// ALiBi: per query head slope `m_h`, adding `m_h · (pos_k − pos_q)` to the scores. `[Hq]`.
    pub alibi_slopes: Option<Tensor>,
    /// Additive bias broadcastable to `[B, Hq, Lq, Lk]` (padding masks use −inf).
    pub bias: Option<Tensor>,
}

/// Options of the fused softmax cross-entropy over class indices
/// ([`Tensor::softmax_cross_entropy`](crate::Tensor::softmax_cross_entropy)).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CrossEntropyParams {
    /// Rows whose target equals this get loss 0 and no gradient.
    pub ignore_index: Option<i64>,
    /// Label smoothing ε in [0, 1]: the target distribution is `(1 − ε)·onehot + ε / C`.
    pub label_smoothing: f64,
}

/// Convolution geometry, one entry per spatial dim.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvParams {
    pub stride: Vec<usize>,
    pub padding: Vec<usize>,
    pub dilation: Vec<usize>,
    pub groups: usize,
}

/// A compute device: one instance per physical device, shared through [`Device`].
pub trait BackendDevice: Send + Sync + std::fmt::Debug {
    /// A stable name such as `cpu` or `cuda:0`; two devices are the same iff names are equal.
    fn name(&self) -> String;

    /// Wait for queued work (no-op on synchronous backends).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    // ---- data movement -------------------------------------------------------------------
    #[allow(clippy::wrong_self_convention)]
    fn from_host(&self, data: HostData) -> Result<Storage>;
    /// Elements in row-major order of `layout`.
    fn to_host(&self, s: &dyn BackendStorage, layout: &Layout) -> Result<HostData>;
    /// A contiguous storage of `n` elements all equal to `value`.
    fn full(&self, n: usize, value: f64, dtype: DType) -> Result<Storage>;
    /// Uniform in `[lo, hi)`. Deterministic for a given seed, whatever the thread count.
    fn rand_uniform(&self, n: usize, lo: f64, hi: f64, dtype: DType, seed: u64) -> Result<Storage>;
    /// Normal(mean, std). Deterministic for a given seed, whatever the thread count.
    fn rand_normal(
        &self,
        n: usize,
        mean: f64,
        std: f64,
        dtype: DType,
        seed: u64,
    ) -> Result<Storage>;
    /// Contiguous copy of a strided view.
    fn copy_strided(&self, s: &dyn BackendStorage, layout: &Layout) -> Result<Storage>;
    /// Write `src` (viewed through `src_l`) into `dst` at the positions of `dst_l` (same shape).
    fn copy_into(
        &self,
        dst: &mut dyn BackendStorage,
        dst_l: &Layout,
        src: &dyn BackendStorage,
        src_l: &Layout,
    ) -> Result<()>;
    fn cast(&self, s: &dyn BackendStorage, layout: &Layout, dtype: DType) -> Result<Storage>;

    // ---- elementwise -----------------------------------------------------------------------
    fn unary(&self, op: UnaryOp, s: &dyn BackendStorage, layout: &Layout) -> Result<Storage>;
    /// `lhs` and `rhs` have the same shape (broadcasting is already in the layouts) and dtype.
    /// On integers, `Div` is floor division (Python's `//`) and division by zero is an `Err`;
    /// add/sub/mul wrap.
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage>;
    /// Same-shape comparison; output dtype u8 (1 true, 0 false).
    fn cmp(
        &self,
        op: CmpOp,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage>;
    /// `cond` (u8) picks `on_true` where non-zero. All three have the same shape.
    fn where_cond(
        &self,
        cond: &dyn BackendStorage,
        cond_l: &Layout,
        on_true: &dyn BackendStorage,
        t_l: &Layout,
        on_false: &dyn BackendStorage,
        f_l: &Layout,
    ) -> Result<Storage>;

    // ---- reductions ------------------------------------------------------------------------
    /// Reduce over `dims` (sorted, non-empty); the output keeps those dims with size 1.
    /// ArgMax/ArgMin get exactly one dim and produce i64.
    fn reduce(
        &self,
        op: ReduceOp,
        s: &dyn BackendStorage,
        layout: &Layout,
        dims: &[usize],
    ) -> Result<Storage>;
    /// Inclusive prefix sum along `dim`. Integer sums keep the input dtype (wrapping).
    fn cumsum(&self, s: &dyn BackendStorage, layout: &Layout, dim: usize) -> Result<Storage>;

    // ---- matmul ----------------------------------------------------------------------------
    /// `lhs: [...batch, m, k]`, `rhs: [...batch, k, n]` with identical batch dims (broadcast
    /// already in the strides); output contiguous `[...batch, m, n]`.
    fn matmul(
        &self,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage>;

    // ---- indexing --------------------------------------------------------------------------
    /// `ids` is 1-D (u8/u32/i64); output is `src` with `dims[dim] = ids.len()`.
    fn index_select(
        &self,
        src: &dyn BackendStorage,
        src_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        dim: usize,
    ) -> Result<Storage>;
    /// `ids` has the rank of `src` (and sizes ≤ src's off `dim`); output has the shape of `ids`.
    fn gather(
        &self,
        src: &dyn BackendStorage,
        src_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        dim: usize,
    ) -> Result<Storage>;
    /// `out = dst.clone(); out[.., ids[i, j, ..], ..] += src[i, j, ..]` along `dim`; `ids` and
    /// `src` have the same shape. Output has `dst`'s shape.
    #[allow(clippy::too_many_arguments)]
    fn scatter_add(
        &self,
        dst: &dyn BackendStorage,
        dst_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        src: &dyn BackendStorage,
        src_l: &Layout,
        dim: usize,
    ) -> Result<Storage>;
    /// `out = dst.clone(); out.narrow(dim, ids[i], 1) += src.narrow(dim, i, 1)`; `ids` is 1-D.
    #[allow(clippy::too_many_arguments)]
    fn index_add(
        &self,
        dst: &dyn BackendStorage,
        dst_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        src: &dyn BackendStorage,
        src_l: &Layout,
        dim: usize,
    ) -> Result<Storage>;

    // ---- convolution building blocks ---------------------------------------------------------
    /// im2col, see [`UnfoldParams`]: `[N, C, *spatial] -> [N, C·∏k, L]`.
    fn unfold(&self, s: &dyn BackendStorage, layout: &Layout, p: &UnfoldParams) -> Result<Storage>;
    /// col2im, the adjoint of `unfold`: `[N, C·∏k, L] -> [N, C, *out_spatial]`, summing
    /// overlapping taps and dropping those that fall in the padding.
    fn fold(
        &self,
        s: &dyn BackendStorage,
        layout: &Layout,
        p: &UnfoldParams,
        out_spatial: &[usize],
    ) -> Result<Storage>;

    // ---- fused ops (provided: override for speed) ----------------------------------------
    // Called by core only on untracked inputs, or inside an op that has its own backward rule.
    fn softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        crate::composite::softmax_last_dim(x)
    }
    fn log_softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        crate::composite::log_softmax_last_dim(x)
    }
    /// Normalise over the last dim; `weight`/`bias` have shape `[D]`.
    fn layer_norm(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        crate::composite::layer_norm(x, weight, bias, eps)
    }
    /// Gradients of [`BackendDevice::layer_norm`] with respect to `x`, `weight` (if given)
    /// and the bias (if `has_bias`), for the output gradient `grad` (shape of `x`).
    fn layer_norm_backward(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        has_bias: bool,
        grad: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        crate::composite::layer_norm_backward(x, weight, has_bias, grad, eps)
    }
    fn rms_norm(&self, x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        crate::composite::rms_norm(x, weight, eps)
    }
    /// Gradients of [`BackendDevice::rms_norm`] with respect to `x` and (if given) `weight`,
    /// for the output gradient `grad` (shape of `x`).
    fn rms_norm_backward(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        grad: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        crate::composite::rms_norm_backward(x, weight, grad, eps)
    }
    /// `grad · f'(x)` for the activations `op` ∈ {`Gelu`, `GeluTanh`, `Silu`}, whose
    /// derivatives depend on the input alone; `x` and `grad` have one shape. The result has
    /// `x`'s dtype.
    fn unary_backward(&self, op: crate::UnaryOp, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        crate::composite::unary_backward(op, x, grad)
    }
    /// `silu(gate) · up` (the SwiGLU hidden activation); both of one shape.
    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        crate::composite::silu_mul(gate, up)
    }
    /// Gradients of [`BackendDevice::silu_mul`] with respect to `gate` and `up`.
    fn silu_mul_backward(
        &self,
        gate: &Tensor,
        up: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        crate::composite::silu_mul_backward(gate, up, grad)
    }
    /// Per-row softmax cross-entropy of `logits: [N, C]` against class indices
    /// `targets: [N]` (I64, each in `0..C` or the ignore index): `[N]` losses in the logits'
    /// dtype, 0 on ignored rows.
    fn cross_entropy(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        p: &CrossEntropyParams,
    ) -> Result<Tensor> {
        crate::composite::cross_entropy(logits, targets, p)
    }
    /// Gradient of [`BackendDevice::cross_entropy`] with respect to the logits, for the
    /// per-row output gradient `grad: [N]`.
    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        grad: &Tensor,
        p: &CrossEntropyParams,
    ) -> Result<Tensor> {
        crate::composite::cross_entropy_backward(logits, targets, grad, p)
    }
    /// `x: [B, H, L, D]`, `cos, sin: [L, D/2]`.
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
        crate::composite::rope(x, cos, sin, interleaved)
    }
    /// Returns the output `[B, Hq, Lq, Dv]` and the per-row log-sum-exp of the scaled, biased
    /// and masked scores `[B, Hq, Lq]` (dtype of `q`), which the backward pass reuses.
    /// A row whose keys are all masked gives output 0 and log-sum-exp −inf.
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        p: &AttentionParams,
    ) -> Result<(Tensor, Tensor)> {
        crate::composite::attention(q, k, v, p)
    }
    /// Gradients of attention with respect to q, k, v.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        grad_out: &Tensor,
        p: &AttentionParams,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        crate::composite::attention_backward(q, k, v, out, lse, grad_out, p)
    }
    /// `x · wᵀ` for a quantized weight `w: [N, K]` and an f32 `x: [..., K]`: the product of a
    /// linear layer, shape `[..., N]`. The default dequantizes `w` and multiplies; a backend
    /// overrides it with kernels that read the blocks where they lie.
    fn qmatmul(&self, x: &Tensor, w: &crate::quant::QTensor) -> Result<Tensor> {
        crate::composite::qmatmul(x, w)
    }
    /// A fused inference engine for `spec` (see [`crate::decoder`]), or `None` when this
    /// backend has none and the caller should run the model's module graph instead.
    fn fused_decoder(
        &self,
        spec: &crate::decoder::DecoderSpec,
    ) -> Result<Option<Box<dyn crate::decoder::FusedDecoder>>> {
        let _ = spec;
        Ok(None)
    }
    /// Convolution without bias: `x: [N, Cin, *s]`, `w: [Cout, Cin/groups, *k]`.
    fn conv(&self, x: &Tensor, w: &Tensor, p: &ConvParams) -> Result<Tensor> {
        crate::composite::conv(x, w, p)
    }
    /// One optimizer update, in place: overwrite `param` and the optimizer `state` (see
    /// [`crate::optim`] for the state each rule takes) from `grad · grad_scale`. `step` is the
    /// 1-based update count of this parameter. Callers go through [`crate::optim::update`],
    /// which has validated shapes, dtypes, devices and that no two tensors share storage.
    /// The default composes tensor ops and allocates temporaries; override it with a fused
    /// kernel that allocates nothing.
    fn optim_update(
        &self,
        rule: &crate::OptimRule,
        step: u64,
        grad_scale: f64,
        param: &Tensor,
        grad: &Tensor,
        state: &[Tensor],
    ) -> Result<()> {
        crate::optim::update_composite(rule, step, grad_scale, param, grad, state)
    }
}

/// A handle to a backend device. Cheap to clone; compared by name.
#[derive(Clone)]
pub struct Device(Arc<dyn BackendDevice>);

impl Device {
    pub fn new(backend: Arc<dyn BackendDevice>) -> Self {
        Device(backend)
    }
    pub fn backend(&self) -> &dyn BackendDevice {
        self.0.as_ref()
    }
    pub fn name(&self) -> String {
        self.0.name()
    }
    pub fn same_device(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.name() == other.0.name()
    }
    pub fn synchronize(&self) -> Result<()> {
        self.0.synchronize()
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.0.name())
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.same_device(other)
    }
}
