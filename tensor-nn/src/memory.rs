//! Memory tools for training: activation (gradient) checkpointing of a block, and bf16/f16
//! mixed precision with f32 master weights.

use std::sync::Arc;

use tensor_core::{
    enable_grad, manual_seed, rng_state, CustomOp, DType, Error, GradStore, Result, Tensor, Var,
};

use crate::module::ModuleT;
use crate::var_builder::VarMap;

/// A block whose activations are not kept for backward: the forward runs without recording,
/// and the backward pass re-runs it (replaying the same random draws, so dropout masks
/// match) to get the gradients. Trades one extra forward for the block's activation memory,
/// like `torch.utils.checkpoint`.
pub struct Checkpointed<M> {
    inner: Arc<M>,
    params: Vec<Tensor>,
}

impl<M: ModuleT + Send + Sync + 'static> Checkpointed<M> {
    /// `params` must be every trainable tensor the block uses (e.g.
    /// `vars.vars_with_prefix("layers.3.")`); a parameter left out gets no gradient.
    pub fn new(inner: M, params: Vec<Tensor>) -> Self {
        Checkpointed {
            inner: Arc::new(inner),
            params,
        }
    }

    pub fn inner(&self) -> &M {
        &self.inner
    }
}

struct CheckpointOp<M> {
    inner: Arc<M>,
    train: bool,
    rng: u64,
    /// The block's parameters themselves: the inputs `backward` receives are detached
    /// copies with new ids, so gradients are looked up on these.
    params: Vec<Tensor>,
}

impl<M: ModuleT + Send + Sync> CustomOp for CheckpointOp<M> {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Tensor> {
        self.inner.forward_t(&inputs[0], self.train)
    }

    fn has_backward(&self) -> bool {
        true
    }

    fn backward(
        &self,
        inputs: &[Tensor],
        _output: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let _record = enable_grad();
        let x = Var::from_tensor(&inputs[0])?;
        let now = rng_state();
        manual_seed(self.rng);
        let out = self.inner.forward_t(&x, self.train);
        manual_seed(now);
        let out = out?;
        let mut out_grads = vec![None; 1 + self.params.len()];
        if !out.tracked() {
            // Nothing in the block depends on a trainable tensor.
            return Ok(out_grads);
        }
        let g = out.backward_with_grad(grad)?;
        out_grads[0] = g.get(&x).cloned();
        for (slot, p) in out_grads[1..].iter_mut().zip(&self.params) {
            *slot = g.get(p).cloned();
        }
        Ok(out_grads)
    }
}

impl<M: ModuleT + Send + Sync + 'static> ModuleT for Checkpointed<M> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let op = CheckpointOp {
            inner: self.inner.clone(),
            train,
            rng: rng_state(),
            params: self.params.clone(),
        };
        let mut inputs: Vec<&Tensor> = vec![xs];
        inputs.extend(self.params.iter());
        Tensor::apply_custom(&inputs, Arc::new(op))
    }
}

impl VarMap {
    /// The trainable tensors whose names start with `prefix` (for [`Checkpointed::new`]).
    pub fn vars_with_prefix(&self, prefix: &str) -> Vec<Tensor> {
        self.trainable_vars()
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.into_inner())
            .collect()
    }
}

/// Mixed-precision training: the model computes with low-precision (bf16 or f16) variables
/// while the optimizer updates f32 master copies. Per step: `backward` on the low-precision
/// model, [`MasterWeights::master_grads`] to turn its gradients into f32 gradients of the
/// masters, the optimizer's `step` on those, then [`MasterWeights::sync`] to copy the masters
/// back into the model. Small updates that would round away in bf16 accumulate in f32.
pub struct MasterWeights {
    /// `(name, master f32 variable, model variable)`.
    pairs: Vec<(String, Var, Var)>,
}

impl MasterWeights {
    /// Masters for every trainable variable of `model_vars` (which hold the low-precision
    /// weights the model was built from).
    pub fn new(model_vars: &VarMap, master_dtype: DType) -> Result<MasterWeights> {
        if !master_dtype.is_float() {
            return Err(Error::invalid(
                "MasterWeights",
                format!("master dtype must be a float type, got {master_dtype:?}"),
            ));
        }
        let mut pairs = Vec::new();
        for (name, v) in model_vars.trainable_vars() {
            let master = Var::from_tensor(&v.as_tensor().detach().to_dtype(master_dtype)?)?;
            pairs.push((name, master, v));
        }
        Ok(MasterWeights { pairs })
    }

    /// The master variables, to hand to an optimizer.
    pub fn master_vars(&self) -> Vec<(String, Var)> {
        self.pairs
            .iter()
            .map(|(n, m, _)| (n.clone(), m.clone()))
            .collect()
    }

    /// The model's gradients converted to the masters' dtype and keyed by the masters.
    pub fn master_grads(&self, grads: &GradStore) -> Result<GradStore> {
        let mut out = GradStore::default();
        for (_, m, v) in &self.pairs {
            if let Some(g) = grads.get(v.as_tensor()) {
                out.insert(m.as_tensor(), g.to_dtype(m.dtype())?);
            }
        }
        Ok(out)
    }

    /// Copy the (updated) masters into the model's low-precision variables.
    pub fn sync(&self) -> Result<()> {
        for (_, m, v) in &self.pairs {
            v.set(&m.as_tensor().to_dtype(v.dtype())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{linear, Dropout, Linear};
    use crate::module::{Activation, Module, Sequential};
    use crate::var_builder::VarBuilder;

    fn block(vb: &VarBuilder) -> Result<Sequential> {
        Ok(Sequential::new()
            .add(linear(&vb.pp("a"), 6, 8)?)
            .add(Activation::Tanh)
            .add(Dropout::new(0.3)?)
            .add(linear(&vb.pp("b"), 8, 6)?))
    }

    #[test]
    fn checkpointed_block_gives_the_same_gradients() -> Result<()> {
        let dev = tensor_cpu::device();
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F64, &dev);
        manual_seed(3);
        let plain = block(&vb.pp("blk"))?;
        let head: Linear = linear(&vb.pp("head"), 6, 1)?;
        let ck = Checkpointed::new(block(&vb.pp("blk"))?, vars.vars_with_prefix("blk."));
        let x = Var::randn(0.0, 1.0, (5, 6), DType::F64, &dev)?;
        let run = |m: &dyn ModuleT| -> Result<Vec<Vec<f64>>> {
            manual_seed(11);
            let y = m.forward_t(&x, true)?;
            let y = m.forward_t(&y, true)?; // used twice: gradients accumulate
            let loss = head.forward(&y)?.sqr()?.sum_all()?;
            let g = loss.backward()?;
            let mut out = vec![g.get(&x).expect("input grad").to_f64_vec()?];
            for (_, v) in vars.trainable_vars() {
                out.push(g.get(v.as_tensor()).expect("param grad").to_f64_vec()?);
            }
            Ok(out)
        };
        let a = run(&plain)?;
        let b = run(&ck)?;
        assert_eq!(a.len(), b.len());
        for (u, v) in a.iter().zip(&b) {
            for (p, q) in u.iter().zip(v) {
                assert!((p - q).abs() < 1e-12, "{p} vs {q}");
            }
        }
        Ok(())
    }

    #[test]
    fn bf16_training_with_f32_masters() -> Result<()> {
        let dev = tensor_cpu::device();
        manual_seed(5);
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::BF16, &dev);
        let model = linear(&vb.pp("fc"), 4, 1)?;
        let masters = MasterWeights::new(&vars, DType::F32)?;
        let x = Tensor::randn(0.0, 1.0, (64, 4), DType::F32, &dev)?;
        let w_true = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.25], (4, 1), &dev)?;
        let y = x.matmul(&w_true)?;
        let (xb, yb) = (x.to_dtype(DType::BF16)?, y.to_dtype(DType::BF16)?);
        let lr = 0.1;
        let mut last = f64::MAX;
        for _ in 0..200 {
            let loss = model.forward(&xb)?.sub(&yb)?.sqr()?.mean_all()?;
            last = loss.to_f64()?;
            let g = masters.master_grads(&loss.backward()?)?;
            for (_, m) in masters.master_vars() {
                let gm = g.get(m.as_tensor()).expect("grad");
                assert_eq!(gm.dtype(), DType::F32);
                m.set(&m.as_tensor().sub(&gm.mul_scalar(lr)?)?)?;
            }
            masters.sync()?;
        }
        assert!(last < 1e-3, "loss {last}");
        assert_eq!(model.weight.dtype(), DType::BF16);
        Ok(())
    }
}
