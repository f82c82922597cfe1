//! Reverse-mode autograd. A result remembers its op and inputs only when some input is
//! tracked; `backward` walks that graph once in reverse topological order. Every backward rule
//! of the crate lives in `Op::backward` below, written with tensor ops, so every backend
//! trains for free.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::{
    AttentionParams, BinaryOp, CrossEntropyParams, Error, ReduceOp, Result, Tensor, TensorId,
    UnaryOp, UnfoldParams,
};

thread_local! {
    static NO_GRAD_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Whether new results may record their op (false inside a `no_grad` scope).
pub fn grad_enabled() -> bool {
    NO_GRAD_DEPTH.with(|d| d.get() == 0)
}

/// While the guard lives, nothing is recorded on this thread (like `torch.no_grad()`).
pub struct NoGradGuard(());

pub fn no_grad() -> NoGradGuard {
    NO_GRAD_DEPTH.with(|d| d.set(d.get() + 1));
    NoGradGuard(())
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// While the guard lives, recording is on again even inside `no_grad` or a backward pass
/// (like `torch.enable_grad()`); activation checkpointing re-runs a block's forward this way.
pub struct EnableGradGuard(usize);

pub fn enable_grad() -> EnableGradGuard {
    EnableGradGuard(NO_GRAD_DEPTH.with(|d| d.replace(0)))
}

impl Drop for EnableGradGuard {
    fn drop(&mut self) {
        NO_GRAD_DEPTH.with(|d| d.set(self.0));
    }
}

/// A user-defined differentiable op (see `Tensor::apply_custom`).
pub trait CustomOp: Send + Sync {
    fn name(&self) -> &'static str;
    /// Forward on untracked inputs.
    fn forward(&self, inputs: &[Tensor]) -> Result<Tensor>;
    /// Whether `backward` is implemented. Applying an op without one to a tracked input is
    /// an error.
    fn has_backward(&self) -> bool {
        false
    }
    /// Gradients for each input (`None` for inputs that get none) given the output's gradient.
    fn backward(
        &self,
        _inputs: &[Tensor],
        _output: &Tensor,
        _grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        Err(Error::NoBackward {
            op: self.name(),
            why: "custom op without a backward rule".into(),
        })
    }
}

/// How a tracked tensor was produced.
#[derive(Clone)]
pub(crate) enum Op {
    Unary(Tensor, UnaryOp),
    /// Inputs already broadcast to the output shape (broadcasting is its own op).
    Binary(Tensor, Tensor, BinaryOp),
    WhereCond(Tensor, Tensor, Tensor),
    /// Sum/Max/Min over sorted dims, output keeps the dims with size 1.
    Reduce(Tensor, ReduceOp, Vec<usize>),
    Cumsum(Tensor, usize),
    Cast(Tensor),
    ToDevice(Tensor),
    Copy(Tensor),
    Reshape(Tensor),
    Permute(Tensor, Vec<usize>),
    /// dim, start, len
    Narrow(Tensor, usize, usize, usize),
    Broadcast(Tensor),
    Cat(Vec<Tensor>, usize),
    Matmul(Tensor, Tensor),
    IndexSelect(Tensor, Tensor, usize),
    Gather(Tensor, Tensor, usize),
    ScatterAdd(Tensor, Tensor, Tensor, usize),
    IndexAdd(Tensor, Tensor, Tensor, usize),
    Unfold(Tensor, UnfoldParams),
    Fold(Tensor, UnfoldParams),
    Softmax(Tensor),
    LogSoftmax(Tensor),
    Attention {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lse: Tensor,
        params: AttentionParams,
    },
    /// Fused RMS norm: input, optional weight, eps.
    RmsNorm(Tensor, Option<Tensor>, f64),
    /// Fused layer norm: input, optional weight, optional bias, eps.
    LayerNorm(Tensor, Option<Tensor>, Option<Tensor>, f64),
    /// Fused rotary embedding of `x` with constant (untracked) `cos`, `sin`.
    Rope {
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        interleaved: bool,
    },
    /// `silu(gate) · up`.
    SiluMul(Tensor, Tensor),
    /// Per-row softmax cross-entropy of logits against class indices (not differentiated).
    CrossEntropy(Tensor, Tensor, CrossEntropyParams),
    Custom(Vec<Tensor>, Arc<dyn CustomOp>),
}

impl Op {
    fn inputs(&self) -> Vec<&Tensor> {
        match self {
            Op::Unary(a, _)
            | Op::Reduce(a, _, _)
            | Op::Cumsum(a, _)
            | Op::Cast(a)
            | Op::ToDevice(a)
            | Op::Copy(a)
            | Op::Reshape(a)
            | Op::Permute(a, _)
            | Op::Narrow(a, _, _, _)
            | Op::Broadcast(a)
            | Op::IndexSelect(a, _, _)
            | Op::Gather(a, _, _)
            | Op::Unfold(a, _)
            | Op::Fold(a, _)
            | Op::Softmax(a)
            | Op::LogSoftmax(a)
            | Op::Rope { x: a, .. }
            | Op::CrossEntropy(a, _, _)
            | Op::RmsNorm(a, None, _) => vec![a],
            Op::Binary(a, b, _)
            | Op::Matmul(a, b)
            | Op::SiluMul(a, b)
            | Op::RmsNorm(a, Some(b), _) => vec![a, b],
            Op::LayerNorm(x, w, b, _) => std::iter::once(x).chain(w).chain(b).collect(),
            Op::WhereCond(_, t, f) => vec![t, f],
            Op::ScatterAdd(d, _, s, _) | Op::IndexAdd(d, _, s, _) => vec![d, s],
            Op::Cat(ts, _) | Op::Custom(ts, _) => ts.iter().collect(),
            Op::Attention { q, k, v, .. } => vec![q, k, v],
        }
    }
}

/// Record `op` for a result computed from `inputs`, if any of them is tracked.
pub(crate) fn record(inputs: &[&Tensor], op: impl FnOnce() -> Op) -> Option<Op> {
    if grad_enabled() && inputs.iter().any(|t| t.tracked()) {
        Some(op())
    } else {
        None
    }
}

/// Gradients of a scalar with respect to every variable upstream of it.
#[derive(Default, Debug)]
pub struct GradStore(HashMap<TensorId, Tensor>);

impl GradStore {
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.0.get(&t.id())
    }
    pub fn get_id(&self, id: TensorId) -> Option<&Tensor> {
        self.0.get(&id)
    }
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.0.remove(&t.id())
    }
    pub fn insert(&mut self, t: &Tensor, g: Tensor) -> Option<Tensor> {
        self.0.insert(t.id(), g)
    }
    pub fn ids(&self) -> impl Iterator<Item = &TensorId> {
        self.0.keys()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Add another store into this one (gradient accumulation over micro-batches).
    pub fn accumulate(&mut self, other: GradStore) -> Result<()> {
        for (id, g) in other.0 {
            let merged = match self.0.remove(&id) {
                Some(prev) => (&prev + &g)?,
                None => g,
            };
            self.0.insert(id, merged);
        }
        Ok(())
    }
}

/// Tracked nodes reachable from `root`, inputs before the nodes that use them.
fn topo_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen: HashSet<TensorId> = HashSet::new();
    // Iterative post-order DFS: deep graphs (long RNN unrolls) must not overflow the stack.
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(op) = t.op() {
            for inp in op.inputs() {
                if inp.tracked() && !seen.contains(&inp.id()) {
                    stack.push((inp.clone(), false));
                }
            }
        }
    }
    order
}

impl Tensor {
    /// Gradients of this tensor (which must hold one element, like a loss) with respect to
    /// every variable it depends on.
    pub fn backward(&self) -> Result<GradStore> {
        if self.elem_count() != 1 {
            return Err(Error::UnexpectedShape {
                op: "backward",
                expected:
                    "a single-element tensor (e.g. a scalar loss); use backward_with_grad otherwise"
                        .into(),
                got: self.shape().clone(),
            });
        }
        self.backward_with_grad(&self.ones_like()?)
    }

    /// Vector-Jacobian product: back-propagate `grad` (same shape as `self`).
    pub fn backward_with_grad(&self, grad: &Tensor) -> Result<GradStore> {
        if !self.tracked() {
            return Err(Error::invalid(
                "backward",
                "the tensor does not depend on any variable (was it computed under no_grad or detached?)",
            ));
        }
        if grad.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "backward",
                lhs: self.shape().clone(),
                rhs: grad.shape().clone(),
            });
        }
        let _guard = no_grad();
        let order = topo_order(self);
        let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
        pending.insert(self.id(), grad.detach());
        let mut store = GradStore::default();
        for node in order.iter().rev() {
            // Consumed here: intermediate gradients are freed as soon as they are propagated.
            let Some(g) = pending.remove(&node.id()) else {
                continue;
            };
            if node.is_variable() {
                let g = match store.0.remove(&node.id()) {
                    Some(prev) => (&prev + &g)?,
                    None => g,
                };
                store.0.insert(node.id(), g);
                continue;
            }
            let Some(op) = node.op() else { continue };
            for (inp, gi) in backward_op(op, node, &g)? {
                if !inp.tracked() {
                    continue;
                }
                let gi = if gi.dtype() != inp.dtype() {
                    gi.to_dtype(inp.dtype())?
                } else {
                    gi
                };
                let acc = match pending.remove(&inp.id()) {
                    Some(prev) => (&prev + &gi)?,
                    None => gi,
                };
                pending.insert(inp.id(), acc);
            }
        }
        Ok(store)
    }
}

/// Sum `g` (the gradient of a reduce output with kept dims) back over nothing: broadcast it to
/// the input's shape.
fn expand_to(g: &Tensor, like: &Tensor) -> Result<Tensor> {
    g.broadcast_as(like.shape().clone())
}

/// The backward rules: given the output `out` of `op` and its gradient `g`, the gradient of
/// each input.
fn backward_op(op: &Op, out: &Tensor, g: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
    use UnaryOp as U;
    Ok(match op {
        Op::Unary(x, u) => {
            let gx = match *u {
                U::Neg => g.neg()?,
                U::Abs => (g * &x.sign()?)?,
                U::Sign | U::Floor | U::Ceil | U::Round => g.zeros_like()?,
                U::Exp => (g * out)?,
                U::Log => (g / x)?,
                U::Sqrt => (g / &out.affine(2.0, 0.0)?)?,
                U::Rsqrt => (g * &out.powf(3.0)?.affine(-0.5, 0.0)?)?,
                U::Recip => (g * &out.sqr()?.neg()?)?,
                U::Sqr => (g * &x.affine(2.0, 0.0)?)?,
                U::Sin => (g * &x.cos()?)?,
                U::Cos => (g * &x.sin()?.neg()?)?,
                U::Tanh => (g * &out.sqr()?.affine(-1.0, 1.0)?)?,
                U::Sigmoid => (g * &(out * &out.affine(-1.0, 1.0)?)?)?,
                U::Relu => (g * &x.gt_scalar(0.0)?.to_dtype(x.dtype())?)?,
                // One fused kernel where the backend has one: the composites take 6–12
                // full-size temporaries, each rounded to the input's dtype.
                U::Gelu | U::GeluTanh | U::Silu => x.device().backend().unary_backward(*u, x, g)?,
                U::Erf => {
                    let d = x
                        .sqr()?
                        .neg()?
                        .exp()?
                        .affine(2.0 / std::f64::consts::PI.sqrt(), 0.0)?;
                    (g * &d)?
                }
                U::Softplus => {
                    // Linear (slope 1) above the threshold, sigmoid below.
                    let s = x.sigmoid()?;
                    let above = x.gt_scalar(20.0)?;
                    let d = above.where_cond(&s.ones_like()?, &s)?;
                    (g * &d)?
                }
                U::Affine { mul, .. } => g.affine(mul, 0.0)?,
                U::Powf(e) => (g * &x.powf(e - 1.0)?.affine(e, 0.0)?)?,
                U::Elu(alpha) => {
                    let pos = x.gt_scalar(0.0)?;
                    let neg_d = out.affine(1.0, alpha)?; // alpha·exp(x) = out + alpha for x ≤ 0
                    (g * &pos.where_cond(&x.ones_like()?, &neg_d)?)?
                }
                U::LeakyRelu(slope) => {
                    let pos = x.gt_scalar(0.0)?;
                    (g * &pos.where_cond(&x.ones_like()?, &x.full_like(slope)?)?)?
                }
                U::Clamp { min, max } => {
                    let inside = (&x.ge_scalar(min)?.to_dtype(x.dtype())?
                        * &x.le_scalar(max)?.to_dtype(x.dtype())?)?;
                    (g * &inside)?
                }
            };
            vec![(x.clone(), gx)]
        }
        Op::Binary(a, b, bop) => {
            let (ga, gb) = match bop {
                BinaryOp::Add => (g.clone(), g.clone()),
                BinaryOp::Sub => (g.clone(), g.neg()?),
                BinaryOp::Mul => ((g * b)?, (g * a)?),
                BinaryOp::Div => {
                    let ga = (g / b)?;
                    let gb = (&(g * out)? / b)?.neg()?;
                    (ga, gb)
                }
                BinaryOp::Pow => {
                    // d a^b / da = b·a^(b−1); d a^b / db = a^b·ln a (0 where a == 0, like torch)
                    let ga = (g * &(b * &(out / a)?)?)?;
                    let ga = a
                        .eq_scalar(0.0)?
                        .where_cond(&(g * &(b * &a.pow(&b.affine(1.0, -1.0)?)?)?)?, &ga)?;
                    let ln = a.log()?;
                    let ln = a.le_scalar(0.0)?.where_cond(&a.zeros_like()?, &ln)?;
                    (ga, (g * &(out * &ln)?)?)
                }
                BinaryOp::Maximum | BinaryOp::Minimum => {
                    // The gradient goes to the selected input; ties split it evenly, as torch does.
                    let (pick_a, tie) = if *bop == BinaryOp::Maximum {
                        (a.gt(b)?, a.eq(b)?)
                    } else {
                        (a.lt(b)?, a.eq(b)?)
                    };
                    let dt = g.dtype();
                    let wa = (&pick_a.to_dtype(dt)? + &tie.to_dtype(dt)?.affine(0.5, 0.0)?)?;
                    let wb = wa.affine(-1.0, 1.0)?;
                    ((g * &wa)?, (g * &wb)?)
                }
            };
            vec![(a.clone(), ga), (b.clone(), gb)]
        }
        Op::WhereCond(c, t, f) => {
            let z = g.zeros_like()?;
            vec![
                (t.clone(), c.where_cond(g, &z)?),
                (f.clone(), c.where_cond(&z, g)?),
            ]
        }
        Op::Reduce(x, rop, _dims) => match rop {
            ReduceOp::Sum => vec![(x.clone(), expand_to(g, x)?)],
            ReduceOp::Max | ReduceOp::Min => {
                // Split among ties like torch's amax/amin.
                let mask = x
                    .eq(&out.broadcast_as(x.shape().clone())?)?
                    .to_dtype(x.dtype())?;
                let count = mask.sum_keepdim(_dims.as_slice())?;
                let gx = (&expand_to(&(g / &count)?, x)? * &mask)?;
                vec![(x.clone(), gx)]
            }
            ReduceOp::ArgMax | ReduceOp::ArgMin => {
                return Err(Error::NoBackward {
                    op: rop.name(),
                    why: "arg reductions have integer outputs".into(),
                })
            }
        },
        Op::Cumsum(x, dim) => {
            // Reverse cumulative sum: total − cumsum + g.
            let total = g.sum_keepdim(*dim)?.broadcast_as(g.shape().clone())?;
            let gx = (&(&total - &g.cumsum(*dim)?)? + g)?;
            vec![(x.clone(), gx)]
        }
        Op::Cast(x) => vec![(x.clone(), g.to_dtype(x.dtype())?)],
        Op::ToDevice(x) => vec![(x.clone(), g.to_device(x.device())?)],
        Op::Copy(x) => vec![(x.clone(), g.clone())],
        Op::Reshape(x) => vec![(x.clone(), g.reshape(x.shape().clone())?)],
        Op::Permute(x, perm) => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![(x.clone(), g.permute(inv.as_slice())?)]
        }
        Op::Narrow(x, dim, start, len) => {
            let size = x.dims()[*dim];
            vec![(
                x.clone(),
                g.pad_with_zeros(*dim, *start, size - start - len)?,
            )]
        }
        Op::Broadcast(x) => {
            let dims = g.shape().broadcast_reduce_dims(x.shape());
            let gx = if dims.is_empty() {
                g.clone()
            } else {
                g.sum_keepdim(dims.as_slice())?
            };
            // Drop the leading dims broadcasting added.
            vec![(x.clone(), gx.reshape(x.shape().clone())?)]
        }
        Op::Cat(xs, dim) => {
            let mut start = 0;
            let mut out = Vec::with_capacity(xs.len());
            for x in xs {
                let len = x.dims()[*dim];
                out.push((x.clone(), g.narrow(*dim, start, len)?));
                start += len;
            }
            out
        }
        Op::Matmul(a, b) => {
            let ga = g.matmul(&b.transpose(-1, -2)?)?;
            let gb = a.transpose(-1, -2)?.matmul(g)?;
            vec![(a.clone(), ga), (b.clone(), gb)]
        }
        Op::IndexSelect(x, ids, dim) => {
            let z = x.zeros_like()?;
            vec![(x.clone(), z.index_add(ids, g, *dim)?)]
        }
        Op::Gather(x, ids, dim) => {
            let z = x.zeros_like()?;
            vec![(x.clone(), z.scatter_add(ids, g, *dim)?)]
        }
        Op::ScatterAdd(d, ids, s, dim) => {
            vec![(d.clone(), g.clone()), (s.clone(), g.gather(ids, *dim)?)]
        }
        Op::IndexAdd(d, ids, s, dim) => {
            vec![
                (d.clone(), g.clone()),
                (s.clone(), g.index_select(ids, *dim)?),
            ]
        }
        Op::Unfold(x, p) => {
            let spatial = x.dims()[2..].to_vec();
            vec![(x.clone(), g.fold_patches(p, &spatial)?)]
        }
        Op::Fold(x, p) => vec![(x.clone(), g.unfold_patches(p)?)],
        Op::Softmax(x) => {
            // y·(g − Σ g·y)
            let gy = (g * out)?;
            let s = gy.sum_keepdim(-1)?;
            vec![(
                x.clone(),
                (&gy - &(out * &s.broadcast_as(out.shape().clone())?)?)?,
            )]
        }
        Op::LogSoftmax(x) => {
            // g − softmax·Σ g
            let s = g.sum_keepdim(-1)?.broadcast_as(g.shape().clone())?;
            vec![(x.clone(), (g - &(&out.exp()? * &s)?)?)]
        }
        Op::Attention {
            q,
            k,
            v,
            lse,
            params,
        } => {
            let (gq, gk, gv) = q
                .device()
                .backend()
                .attention_backward(q, k, v, out, lse, g, params)?;
            vec![(q.clone(), gq), (k.clone(), gk), (v.clone(), gv)]
        }
        Op::RmsNorm(x, w, eps) => {
            let (gx, gw) = x
                .device()
                .backend()
                .rms_norm_backward(x, w.as_ref(), g, *eps)?;
            let mut out = vec![(x.clone(), gx)];
            if let (Some(w), Some(gw)) = (w, gw) {
                out.push((w.clone(), gw));
            }
            out
        }
        Op::LayerNorm(x, w, b, eps) => {
            let (gx, gw, gb) =
                x.device()
                    .backend()
                    .layer_norm_backward(x, w.as_ref(), b.is_some(), g, *eps)?;
            let mut out = vec![(x.clone(), gx)];
            if let (Some(w), Some(gw)) = (w, gw) {
                out.push((w.clone(), gw));
            }
            if let (Some(b), Some(gb)) = (b, gb) {
                out.push((b.clone(), gb));
            }
            out
        }
        Op::Rope {
            x,
            cos,
            sin,
            interleaved,
        } => {
            // The rotation's transpose is the rotation by −θ.
            let gx = x
                .device()
                .backend()
                .rope(g, cos, &sin.neg()?, *interleaved)?;
            vec![(x.clone(), gx)]
        }
        Op::SiluMul(gate, up) => {
            let (gg, gu) = gate.device().backend().silu_mul_backward(gate, up, g)?;
            vec![(gate.clone(), gg), (up.clone(), gu)]
        }
        Op::CrossEntropy(logits, targets, p) => {
            let gl = logits
                .device()
                .backend()
                .cross_entropy_backward(logits, targets, g, p)?;
            vec![(logits.clone(), gl)]
        }
        Op::Custom(inputs, cop) => {
            let detached: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
            let grads = cop.backward(&detached, out, g)?;
            if grads.len() != inputs.len() {
                return Err(Error::invalid(
                    cop.name(),
                    format!(
                        "backward returned {} gradients for {} inputs",
                        grads.len(),
                        inputs.len()
                    ),
                ));
            }
            inputs
                .iter()
                .zip(grads)
                .filter_map(|(i, g)| g.map(|g| (i.clone(), g)))
                .collect()
        }
    })
}

impl Tensor {
    /// Apply a user-defined op. A tracked input reaching an op without a backward rule is an
    /// error here, at forward time, rather than a silently missing gradient later.
    pub fn apply_custom(inputs: &[&Tensor], op: Arc<dyn CustomOp>) -> Result<Tensor> {
        let tracked = grad_enabled() && inputs.iter().any(|t| t.tracked());
        let detached: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
        if tracked && !op.has_backward() {
            return Err(Error::NoBackward {
                op: op.name(),
                why: "custom op applied to a tracked tensor has no backward rule".into(),
            });
        }
        let out = {
            let _g = no_grad();
            op.forward(&detached)?
        };
        if !tracked {
            return Ok(out);
        }
        let inputs: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
        Ok(out.view_with(out.layout().clone(), Some(Op::Custom(inputs, op))))
    }
}
