//! Optimizers (SGD, Adam, AdamW, RMSprop, Adagrad, Lion) and gradient clipping, with
//! `torch.optim` semantics.
//!
//! Every optimizer is an [`Optim`] over a config type ([`SgdConfig`], [`AdamConfig`], …) whose
//! defaults are PyTorch's. Parameters are named variables, optionally split into
//! [`ParamGroup`]s with their own hyper-parameters. A step reads a [`GradStore`] (the result
//! of `loss.backward()`); parameters without a gradient in it are skipped, like PyTorch
//! skips parameters whose `.grad` is `None`.
//!
//! Each parameter's state (`exp_avg`, `momentum_buffer`, … — see [`tensor_core::optim`]) is
//! allocated on its first step; from then on a step runs the backend's fused in-place update
//! ([`tensor_core::BackendDevice::optim_update`]) and allocates no parameter-sized memory.
//!
//! Gradient accumulation: sum the stores of several micro-batches with
//! [`GradStore::accumulate`] and step once, scaling by `1/k` to average:
//!
//! ```
//! # use tensor_core::{DType, Result, Tensor, Var};
//! # use tensor_nn::optim::{Optimizer, Sgd, SgdConfig};
//! # fn main() -> Result<()> {
//! # let dev = tensor_cpu::device();
//! let w = Var::from_tensor(&Tensor::from_slice(&[1.0f32, -1.0], 2, &dev)?)?;
//! let mut opt = Sgd::new(vec![("w".into(), w.clone())], SgdConfig { lr: 0.1, ..Default::default() })?;
//! let batches = [[1.0f32, 2.0], [3.0, 4.0]];
//! let mut grads = tensor_core::GradStore::default();
//! for x in &batches {
//!     let x = Tensor::from_slice(x, 2, &dev)?;
//!     grads.accumulate(w.mul(&x)?.sum_all()?.backward()?)?;
//! }
//! opt.step_scaled(&grads, 1.0 / batches.len() as f64)?; // the mean gradient, [2, 3]
//! assert_eq!(w.to_vec::<f32>()?, vec![0.8, -1.3]);
//! # Ok(())
//! # }
//! ```
//!
//! Checkpoints: [`Optimizer::state_tensors`] names every state tensor
//! `"<param name>.<state name>"` (`"fc1.weight.exp_avg"`) plus `"<param name>.step"` (an i64
//! scalar, the parameter's own update count); [`Optimizer::load_state_tensors`] restores them.

mod adagrad;
mod adam;
mod clip;
mod lion;
mod rmsprop;
mod sgd;

pub use adagrad::{Adagrad, AdagradConfig};
pub use adam::{Adam, AdamConfig, AdamW, AdamWConfig};
pub use clip::{clip_coef, clip_grad_norm, clip_grad_value, grad_norm};
pub use lion::{Lion, LionConfig};
pub use rmsprop::{RmsProp, RmsPropConfig};
pub use sgd::{Sgd, SgdConfig};

use std::collections::{HashMap, HashSet};

use tensor_core::optim::{self as core_optim, OptimRule};
use tensor_core::{Error, GradStore, Result, Tensor, Var};

/// What a training loop needs from an optimizer.
pub trait Optimizer {
    /// One update from `grads` (parameters without a gradient are skipped).
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_scaled(grads, 1.0)
    }
    /// One update from `grads · grad_scale`, without materialising the scaled gradients:
    /// clip-by-norm as `step_scaled(g, clip_coef(grad_norm(g, ..)?, max_norm))`, or the mean
    /// of `k` accumulated micro-batches as `step_scaled(g, 1.0 / k)`.
    fn step_scaled(&mut self, grads: &GradStore, grad_scale: f64) -> Result<()>;
    /// The learning rate of the first parameter group.
    fn learning_rate(&self) -> f64;
    /// Set the learning rate (what an [`crate::lr_scheduler::LrScheduler`] drives). With
    /// several groups, every group is scaled by the same factor relative to its initial
    /// learning rate, which is what PyTorch's multiplicative schedulers do per group. An
    /// invalid value (negative, NaN) makes the next step fail.
    fn set_learning_rate(&mut self, lr: f64);
    /// The number of successful `step` calls.
    fn step_count(&self) -> u64;
    /// Restore the step count (when resuming from a checkpoint).
    fn set_step_count(&mut self, steps: u64);
    /// Every state tensor, named `"<param>.<state>"`, plus `"<param>.step"` (i64 scalar).
    /// The state tensors are the live buffers (no copy): save them before the next step.
    fn state_tensors(&self) -> Vec<(String, Tensor)>;
    /// Restore what [`Optimizer::state_tensors`] returned. Names must belong to this
    /// optimizer's parameters and shapes/dtypes must match; the tensors are copied.
    fn load_state_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()>;
}

/// The per-optimizer part: hyper-parameters and how they map onto an [`OptimRule`].
pub trait OptimizerConfig: Clone + std::fmt::Debug {
    /// The update rule of one step.
    fn rule(&self) -> OptimRule;
    fn lr(&self) -> f64;
    fn set_lr(&mut self, lr: f64);
    /// The value a freshly allocated state tensor starts at (0 except Adagrad's `sum`).
    fn initial_state_value(&self, _state: &str) -> f64 {
        0.0
    }
    /// Reject bad hyper-parameters.
    fn validate(&self) -> Result<()> {
        self.rule().validate()
    }
}

/// Parameters that share hyper-parameters (PyTorch's `param_groups` entries).
#[derive(Clone, Debug)]
pub struct ParamGroup<C> {
    pub params: Vec<(String, Var)>,
    pub config: C,
}

impl<C> ParamGroup<C> {
    pub fn new(params: Vec<(String, Var)>, config: C) -> Self {
        ParamGroup { params, config }
    }
}

#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    /// Updates this parameter has received (its own count, as in PyTorch's `state["step"]`).
    step: u64,
    /// The state tensors, in the order of `names`; empty until the first step.
    state: Vec<Tensor>,
    names: &'static [&'static str],
}

#[derive(Debug)]
struct Group<C> {
    config: C,
    initial_lr: f64,
    slots: Vec<Slot>,
}

/// An optimizer: parameter groups, per-parameter state, and a config type `C` that picks the
/// update rule. Use the aliases [`Sgd`], [`Adam`], [`AdamW`], [`RmsProp`], [`Adagrad`],
/// [`Lion`].
#[derive(Debug)]
pub struct Optim<C: OptimizerConfig> {
    groups: Vec<Group<C>>,
    steps: u64,
}

impl<C: OptimizerConfig> Optim<C> {
    /// One group of named parameters (e.g. `var_map.trainable_vars()`).
    pub fn new(params: Vec<(String, Var)>, config: C) -> Result<Self> {
        Self::with_groups(vec![ParamGroup::new(params, config)])
    }

    /// Several groups with their own hyper-parameters. Names must be unique and a variable
    /// may belong to one group only.
    pub fn with_groups(groups: Vec<ParamGroup<C>>) -> Result<Self> {
        if groups.is_empty() {
            return Err(Error::invalid("optimizer", "no parameter groups given"));
        }
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        let mut out = Vec::with_capacity(groups.len());
        for (gi, g) in groups.into_iter().enumerate() {
            g.config
                .validate()
                .map_err(|e| Error::invalid("optimizer", format!("group {gi}: {e}")))?;
            let mut slots = Vec::with_capacity(g.params.len());
            for (name, var) in g.params {
                if !var.dtype().is_float() {
                    return Err(Error::invalid(
                        "optimizer",
                        format!("parameter `{name}` has dtype {}, not a float", var.dtype()),
                    ));
                }
                if !ids.insert(var.id()) {
                    return Err(Error::invalid(
                        "optimizer",
                        format!("parameter `{name}` appears more than once"),
                    ));
                }
                if !names.insert(name.clone()) {
                    return Err(Error::invalid(
                        "optimizer",
                        format!("two parameters are named `{name}`"),
                    ));
                }
                slots.push(Slot {
                    name,
                    var,
                    step: 0,
                    state: Vec::new(),
                    names: &[],
                });
            }
            out.push(Group {
                initial_lr: g.config.lr(),
                config: g.config,
                slots,
            });
        }
        Ok(Optim {
            groups: out,
            steps: 0,
        })
    }

    pub fn num_groups(&self) -> usize {
        self.groups.len()
    }

    /// The hyper-parameters of group `i`.
    pub fn group_config(&self, i: usize) -> Option<&C> {
        self.groups.get(i).map(|g| &g.config)
    }

    /// Change the hyper-parameters of group `i` (checked at the next step). Changing which
    /// state a rule keeps (e.g. turning on `amsgrad`) allocates the new state at zero.
    pub fn group_config_mut(&mut self, i: usize) -> Option<&mut C> {
        self.groups.get_mut(i).map(|g| &mut g.config)
    }

    /// Set one group's learning rate exactly (schedulers with an additive floor, such as
    /// cosine with `eta_min`, are not proportional across groups; use this per group).
    pub fn set_group_learning_rate(&mut self, i: usize, lr: f64) -> Result<()> {
        let n = self.groups.len();
        let g = self.groups.get_mut(i).ok_or_else(|| {
            Error::invalid("optimizer", format!("group {i} out of range ({n} groups)"))
        })?;
        g.config.set_lr(lr);
        Ok(())
    }

    /// The named parameters of every group.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.groups
            .iter()
            .flat_map(|g| g.slots.iter().map(|s| (s.name.as_str(), &s.var)))
    }

    /// Allocate (or, after a config change, re-arrange) a parameter's state for `rule`.
    fn ensure_state(slot: &mut Slot, rule: &OptimRule, config: &C) -> Result<()> {
        let names = rule.state_names();
        if slot.names == names && slot.state.len() == names.len() {
            return Ok(());
        }
        let mut old: HashMap<&str, Tensor> = slot
            .names
            .iter()
            .copied()
            .zip(slot.state.drain(..))
            .collect();
        let p = slot.var.as_tensor();
        for name in names {
            let t = match old.remove(name) {
                Some(t) => t,
                None => Tensor::full(
                    config.initial_state_value(name),
                    p.shape().clone(),
                    p.dtype(),
                    p.device(),
                )?,
            };
            slot.state.push(t);
        }
        slot.names = names;
        Ok(())
    }
}

impl<C: OptimizerConfig> Optimizer for Optim<C> {
    fn step_scaled(&mut self, grads: &GradStore, grad_scale: f64) -> Result<()> {
        // Check every group before touching any parameter, so a bad config changes nothing.
        for (gi, g) in self.groups.iter().enumerate() {
            g.config
                .validate()
                .map_err(|e| Error::invalid("optimizer", format!("group {gi}: {e}")))?;
        }
        if !(grad_scale.is_finite() && grad_scale >= 0.0) {
            return Err(Error::invalid(
                "optimizer",
                format!("grad_scale must be finite and >= 0, got {grad_scale}"),
            ));
        }
        // Check every gradient too, so a bad one fails the step before any parameter moved.
        for s in self.groups.iter().flat_map(|g| &g.slots) {
            let Some(grad) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let p = s.var.as_tensor();
            if grad.shape() != p.shape()
                || grad.dtype() != p.dtype()
                || !grad.device().same_device(p.device())
            {
                return Err(Error::invalid(
                    "optimizer",
                    format!(
                        "parameter `{}` is {:?} {} on {}, its gradient {:?} {} on {}",
                        s.name,
                        p.dims(),
                        p.dtype(),
                        p.device().name(),
                        grad.dims(),
                        grad.dtype(),
                        grad.device().name()
                    ),
                ));
            }
        }
        for g in &mut self.groups {
            let rule = g.config.rule();
            for slot in &mut g.slots {
                let Some(grad) = grads.get(slot.var.as_tensor()) else {
                    continue;
                };
                Self::ensure_state(slot, &rule, &g.config)?;
                // A gradient that is the parameter's own memory cannot be read while the
                // parameter is written in place: use a copy (rare; never from `backward`).
                let own;
                let grad = if core_optim::shares_storage(grad, slot.var.as_tensor()) {
                    own = {
                        let _ng = tensor_core::no_grad();
                        grad.detach().copy()?
                    };
                    &own
                } else {
                    grad
                };
                let step = slot.step + 1;
                core_optim::update(&rule, step, grad_scale, &slot.var, grad, &slot.state).map_err(
                    |e| Error::invalid("optimizer", format!("parameter `{}`: {e}", slot.name)),
                )?;
                slot.step = step;
            }
        }
        self.steps += 1;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.groups[0].config.lr()
    }

    fn set_learning_rate(&mut self, lr: f64) {
        let base = self.groups[0].initial_lr;
        for g in &mut self.groups {
            let v = if base == 0.0 {
                lr
            } else {
                g.initial_lr * (lr / base)
            };
            g.config.set_lr(v);
        }
    }

    fn step_count(&self) -> u64 {
        self.steps
    }

    fn set_step_count(&mut self, steps: u64) {
        self.steps = steps;
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for g in &self.groups {
            for s in &g.slots {
                if s.step == 0 && s.state.is_empty() {
                    continue;
                }
                for (n, t) in s.names.iter().zip(&s.state) {
                    out.push((format!("{}.{n}", s.name), t.clone()));
                }
                let step = Tensor::from_vec(vec![s.step as i64], (), s.var.device())
                    .expect("a one-element host tensor");
                out.push((format!("{}.step", s.name), step));
            }
        }
        out
    }

    fn load_state_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        const OP: &str = "load_state_tensors";
        let mut used = HashSet::new();
        // Build everything first, then commit, so a failed load leaves the optimizer as it was.
        let mut staged = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            let names = g.config.rule().state_names();
            for (si, s) in g.slots.iter().enumerate() {
                let step_key = format!("{}.step", s.name);
                let step = match tensors.get(&step_key) {
                    Some(t) => {
                        used.insert(step_key.clone());
                        let v = t.to_f64_vec()?;
                        match v.as_slice() {
                            [x] if *x >= 0.0 && x.fract() == 0.0 => *x as u64,
                            _ => {
                                return Err(Error::invalid(
                                    OP,
                                    format!("`{step_key}` must hold one non-negative integer"),
                                ))
                            }
                        }
                    }
                    None => 0,
                };
                let mut state = Vec::new();
                for n in names {
                    let key = format!("{}.{n}", s.name);
                    if let Some(t) = tensors.get(&key) {
                        used.insert(key.clone());
                        let p = s.var.as_tensor();
                        if t.shape() != p.shape() || t.dtype() != p.dtype() {
                            return Err(Error::invalid(
                                OP,
                                format!(
                                    "`{key}` is {:?} {}, the parameter is {:?} {}",
                                    t.dims(),
                                    t.dtype(),
                                    p.dims(),
                                    p.dtype()
                                ),
                            ));
                        }
                        // A private copy on the parameter's device: updates are in place.
                        let _ng = tensor_core::no_grad();
                        state.push(t.detach().to_device(p.device())?.copy()?);
                    }
                }
                if !state.is_empty() && state.len() != names.len() {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "incomplete state for `{}`: need {:?}, found {} of them",
                            s.name,
                            names,
                            state.len()
                        ),
                    ));
                }
                if state.is_empty() && step > 0 && !names.is_empty() {
                    return Err(Error::invalid(
                        OP,
                        format!("`{step_key}` is {step} but the state {names:?} is missing"),
                    ));
                }
                let slot_names: &'static [&'static str] =
                    if state.is_empty() { &[] } else { names };
                staged.push((gi, si, step, state, slot_names));
            }
        }
        let mut unknown: Vec<&String> = tensors.keys().filter(|k| !used.contains(*k)).collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(Error::invalid(
                OP,
                format!("names that match no parameter state of this optimizer: {unknown:?}"),
            ));
        }
        for (gi, si, step, state, names) in staged {
            let slot = &mut self.groups[gi].slots[si];
            slot.step = step;
            slot.state = state;
            slot.names = names;
        }
        Ok(())
    }
}

/// Check a pair of betas the way the configs take them.
pub(crate) fn check_betas(betas: (f64, f64)) -> Result<()> {
    for (i, b) in [betas.0, betas.1].into_iter().enumerate() {
        if !(0.0..1.0).contains(&b) {
            return Err(Error::invalid(
                "optimizer",
                format!("betas.{i} must be in [0, 1), got {b}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_util {
    use tensor_core::{DType, Device, Result, Tensor, Var};

    pub fn dev() -> Device {
        tensor_cpu::device()
    }

    pub fn var(v: &[f64]) -> Var {
        Var::from_tensor(&Tensor::from_f64s(v, v.len(), DType::F64, &dev()).unwrap()).unwrap()
    }

    /// The gradient store of `sum(w · x)` (so the gradient of `w` is `x`).
    pub fn grads_of(pairs: &[(&Var, &[f64])]) -> Result<tensor_core::GradStore> {
        let mut loss: Option<Tensor> = None;
        for (w, x) in pairs {
            let x = Tensor::from_f64s(x, x.len(), DType::F64, &dev())?;
            let term = w.mul(&x)?.sum_all()?;
            loss = Some(match loss {
                Some(l) => l.add(&term)?,
                None => term,
            });
        }
        loss.expect("at least one pair").backward()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use tensor_core::DType;

    #[test]
    fn params_without_grads_are_skipped_and_keep_their_own_step() -> Result<()> {
        let (a, b) = (var(&[1.0, 2.0]), var(&[3.0]));
        let mut opt = Adam::new(
            vec![("a".into(), a.clone()), ("b".into(), b.clone())],
            AdamConfig::default(),
        )?;
        opt.step(&grads_of(&[(&a, &[1.0, 1.0])])?)?;
        assert_eq!(b.to_vec::<f64>()?, vec![3.0]);
        opt.step(&grads_of(&[(&a, &[1.0, 1.0]), (&b, &[1.0])])?)?;
        let st: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
        assert_eq!(st["a.step"].to_vec::<i64>()?, vec![2]);
        assert_eq!(st["b.step"].to_vec::<i64>()?, vec![1]);
        // b's first Adam step moves it by exactly lr.
        assert!((b.to_vec::<f64>()?[0] - (3.0 - 1e-3)).abs() < 1e-10);
        assert_eq!(opt.step_count(), 2);
        Ok(())
    }

    #[test]
    fn groups_have_their_own_hyper_parameters_and_scale_together() -> Result<()> {
        let (a, b) = (var(&[1.0]), var(&[1.0]));
        let mut opt = Sgd::with_groups(vec![
            ParamGroup::new(
                vec![("a".into(), a.clone())],
                SgdConfig {
                    lr: 0.1,
                    ..Default::default()
                },
            ),
            ParamGroup::new(
                vec![("b".into(), b.clone())],
                SgdConfig {
                    lr: 0.01,
                    ..Default::default()
                },
            ),
        ])?;
        opt.step(&grads_of(&[(&a, &[1.0]), (&b, &[1.0])])?)?;
        assert!((a.to_vec::<f64>()?[0] - 0.9).abs() < 1e-15);
        assert!((b.to_vec::<f64>()?[0] - 0.99).abs() < 1e-15);
        opt.set_learning_rate(0.05);
        assert_eq!(opt.learning_rate(), 0.05);
        assert!((opt.group_config(1).unwrap().lr - 0.005).abs() < 1e-15);
        opt.set_group_learning_rate(1, 0.3)?;
        assert_eq!(opt.group_config(1).unwrap().lr, 0.3);
        Ok(())
    }

    #[test]
    fn bad_configs_and_duplicates_are_errors() {
        let a = var(&[1.0]);
        let bad = |c: AdamConfig| Adam::new(vec![("a".into(), a.clone())], c).is_err();
        assert!(bad(AdamConfig {
            lr: -1.0,
            ..Default::default()
        }));
        assert!(bad(AdamConfig {
            betas: (0.9, 1.0),
            ..Default::default()
        }));
        assert!(bad(AdamConfig {
            eps: -1e-8,
            ..Default::default()
        }));
        let dup = vec![("a".into(), a.clone()), ("a2".into(), a.clone())];
        assert!(Sgd::new(dup, SgdConfig::default()).is_err());
        let b = var(&[1.0]);
        let same_name = vec![("a".into(), a.clone()), ("a".into(), b)];
        assert!(Sgd::new(same_name, SgdConfig::default()).is_err());
        // A bad lr set later is reported by the next step, which changes nothing.
        let mut opt = Sgd::new(vec![("a".into(), a.clone())], SgdConfig::default()).unwrap();
        opt.set_learning_rate(f64::NAN);
        let g = grads_of(&[(&a, &[1.0])]).unwrap();
        assert!(opt.step(&g).is_err());
        assert_eq!(a.to_vec::<f64>().unwrap(), vec![1.0]);
        // Mismatched gradient shape.
        let mut bad_g = GradStore::default();
        bad_g.insert(a.as_tensor(), Tensor::zeros(3, DType::F64, &dev()).unwrap());
        let b = var(&[5.0]);
        bad_g.insert(b.as_tensor(), Tensor::ones(1, DType::F64, &dev()).unwrap());
        let mut opt = Sgd::new(
            vec![("b".into(), b.clone()), ("a".into(), a.clone())],
            SgdConfig::default(),
        )
        .unwrap();
        let e = opt.step(&bad_g).unwrap_err().to_string();
        assert!(e.contains("`a`") && e.contains("[3]"), "{e}");
        // Nothing moved, not even the parameter with a good gradient.
        assert_eq!(b.to_vec::<f64>().unwrap(), vec![5.0]);
    }

    #[test]
    fn state_round_trips_through_tensors() -> Result<()> {
        let mk = || var(&[0.5, -0.5, 2.0]);
        let (w1, w2) = (mk(), mk());
        let cfg = AdamWConfig {
            amsgrad: true,
            ..Default::default()
        };
        let mut o1 = AdamW::new(vec![("w".into(), w1.clone())], cfg.clone())?;
        let mut o2 = AdamW::new(vec![("w".into(), w2.clone())], cfg)?;
        let gs: [&[f64]; 3] = [&[1.0, -2.0, 0.5], &[0.3, 0.1, -1.0], &[2.0, 2.0, 2.0]];
        o1.step(&grads_of(&[(&w1, gs[0])])?)?;
        o1.step(&grads_of(&[(&w1, gs[1])])?)?;
        // Resume o2 from o1's state and weights, then both take the same third step.
        let saved: HashMap<String, Tensor> = o1.state_tensors().into_iter().collect();
        let mut names: Vec<&String> = saved.keys().collect();
        names.sort();
        assert_eq!(
            names,
            ["w.exp_avg", "w.exp_avg_sq", "w.max_exp_avg_sq", "w.step"]
        );
        w2.set(&w1)?;
        o2.load_state_tensors(&saved)?;
        o2.set_step_count(o1.step_count());
        // The loaded state was copied: o2's step does not write into o1's tensors.
        let snapshot = saved["w.exp_avg"].to_vec::<f64>()?;
        o2.step(&grads_of(&[(&w2, gs[2])])?)?;
        assert_eq!(saved["w.exp_avg"].to_vec::<f64>()?, snapshot);
        o1.step(&grads_of(&[(&w1, gs[2])])?)?;
        assert_eq!(w1.to_vec::<f64>()?, w2.to_vec::<f64>()?);
        // Wrong names, shapes and partial states are rejected and change nothing.
        let mut bad = saved.clone();
        bad.insert("v.exp_avg".into(), Tensor::zeros(3, DType::F64, &dev())?);
        assert!(o2.load_state_tensors(&bad).is_err());
        let mut bad = saved.clone();
        bad.insert("w.exp_avg".into(), Tensor::zeros(4, DType::F64, &dev())?);
        assert!(o2.load_state_tensors(&bad).is_err());
        let mut bad = saved.clone();
        bad.remove("w.exp_avg_sq");
        assert!(o2.load_state_tensors(&bad).is_err());
        Ok(())
    }

    #[test]
    fn gradient_accumulation_matches_the_full_batch() -> Result<()> {
        // loss(w) = mean over samples of (w·x − y)², once over the whole batch and once as
        // two accumulated micro-batches of half the size.
        let xs = [[1.0, 2.0], [0.5, -1.0], [2.0, 0.0], [-1.0, 1.0]];
        let ys = [1.0, 0.0, 2.0, -1.0];
        let loss = |w: &Var, idx: &[usize], scale: f64| -> Result<Tensor> {
            let x: Vec<f64> = idx.iter().flat_map(|&i| xs[i]).collect();
            let y: Vec<f64> = idx.iter().map(|&i| ys[i]).collect();
            let x = Tensor::from_f64s(&x, (idx.len(), 2), DType::F64, &dev())?;
            let y = Tensor::from_f64s(&y, (idx.len(), 1), DType::F64, &dev())?;
            let w2 = w.reshape((2, 1))?;
            x.matmul(&w2)?.sub(&y)?.sqr()?.sum_all()?.mul_scalar(scale)
        };
        let (wa, wb) = (var(&[0.1, 0.2]), var(&[0.1, 0.2]));
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        };
        let mut full = Sgd::new(vec![("w".into(), wa.clone())], cfg.clone())?;
        let mut acc = Sgd::new(vec![("w".into(), wb.clone())], cfg)?;
        for _ in 0..3 {
            full.step(&loss(&wa, &[0, 1, 2, 3], 0.25)?.backward()?)?;
            let mut g = loss(&wb, &[0, 1], 0.5)?.backward()?;
            g.accumulate(loss(&wb, &[2, 3], 0.5)?.backward()?)?;
            acc.step_scaled(&g, 0.5)?;
        }
        let (a, b) = (wa.to_vec::<f64>()?, wb.to_vec::<f64>()?);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
        Ok(())
    }
}
