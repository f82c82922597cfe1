//! Learning-rate schedules with `torch.optim.lr_scheduler` values, in closed form.
//!
//! A schedule is a pure function of the step: [`LrScheduler::lr_at`]`(t)` is the learning rate
//! of the `t`-th optimizer step (0-based), i.e. PyTorch's `optimizer.param_groups[0]["lr"]`
//! after `t` calls to `scheduler.step()`. There is no hidden state, so resuming only needs
//! the step count. PyTorch's chainable (recursive) forms agree with these closed forms up to
//! floating-point rounding.
//!
//! ```
//! # use tensor_nn::lr_scheduler::{warmup_cosine, LrScheduler};
//! let s = warmup_cosine(1e-3, 100, 1000, 1e-5).unwrap();
//! // in the training loop: opt.set_learning_rate(s.lr_at(step)); opt.step(&grads)?;
//! assert_eq!(s.lr_at(100), 1e-3);
//! ```
//!
//! With several parameter groups, `Optimizer::set_learning_rate` scales every group by the
//! same factor, which matches PyTorch's per-group schedules exactly for the multiplicative
//! ones (step, exponential, linear, polynomial, cosine with `eta_min = 0`); for the others,
//! build one schedule per group and use `Optim::set_group_learning_rate`.

use std::f64::consts::PI;

use tensor_core::{Error, Result};

use crate::optim::Optimizer;

/// A learning-rate schedule.
pub trait LrScheduler: std::fmt::Debug + Send + Sync {
    /// The learning rate of optimizer step `step` (0-based).
    fn lr_at(&self, step: usize) -> f64;

    /// Set `opt`'s learning rate for step `step`.
    fn apply(&self, opt: &mut dyn Optimizer, step: usize) {
        opt.set_learning_rate(self.lr_at(step));
    }
}

fn bad(what: &'static str, msg: String) -> Error {
    Error::invalid(what, msg)
}

fn check_lr(what: &'static str, name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(bad(
            what,
            format!("{name} must be finite and >= 0, got {v}"),
        ))
    }
}

fn check_positive(what: &'static str, name: &str, v: usize) -> Result<()> {
    if v > 0 {
        Ok(())
    } else {
        Err(bad(what, format!("{name} must be > 0")))
    }
}

/// `torch.optim.lr_scheduler.ConstantLR`: `base_lr · factor` for the first `total_iters`
/// steps, then `base_lr`. [`ConstantLr::new`] is a plain constant.
#[derive(Clone, Debug, PartialEq)]
pub struct ConstantLr {
    pub base_lr: f64,
    pub factor: f64,
    pub total_iters: usize,
}

impl ConstantLr {
    /// A constant learning rate.
    pub fn new(lr: f64) -> Result<Self> {
        Self::with_factor(lr, 1.0, 0)
    }
    /// PyTorch's `ConstantLR(factor, total_iters)` (defaults 1/3 and 5).
    pub fn with_factor(base_lr: f64, factor: f64, total_iters: usize) -> Result<Self> {
        check_lr("ConstantLr", "base_lr", base_lr)?;
        if !(0.0..=1.0).contains(&factor) {
            return Err(bad(
                "ConstantLr",
                format!("factor must be in [0, 1], got {factor}"),
            ));
        }
        Ok(ConstantLr {
            base_lr,
            factor,
            total_iters,
        })
    }
}

impl LrScheduler for ConstantLr {
    fn lr_at(&self, step: usize) -> f64 {
        if step < self.total_iters {
            self.base_lr * self.factor
        } else {
            self.base_lr
        }
    }
}

/// `torch.optim.lr_scheduler.LinearLR`: the factor goes linearly from `start_factor` to
/// `end_factor` over `total_iters` steps, then stays (linear warmup with `end_factor = 1`).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearWarmup {
    pub base_lr: f64,
    pub start_factor: f64,
    pub end_factor: f64,
    pub total_iters: usize,
}

impl LinearWarmup {
    /// `start_factor` in `(0, 1]`, `end_factor` in `[0, 1]` as PyTorch requires.
    pub fn new(
        base_lr: f64,
        start_factor: f64,
        end_factor: f64,
        total_iters: usize,
    ) -> Result<Self> {
        check_lr("LinearWarmup", "base_lr", base_lr)?;
        if !(start_factor > 0.0 && start_factor <= 1.0) {
            return Err(bad(
                "LinearWarmup",
                format!("start_factor must be in (0, 1], got {start_factor}"),
            ));
        }
        if !(0.0..=1.0).contains(&end_factor) {
            return Err(bad(
                "LinearWarmup",
                format!("end_factor must be in [0, 1], got {end_factor}"),
            ));
        }
        Ok(LinearWarmup {
            base_lr,
            start_factor,
            end_factor,
            total_iters,
        })
    }
}

impl LrScheduler for LinearWarmup {
    fn lr_at(&self, step: usize) -> f64 {
        if self.total_iters == 0 {
            return self.base_lr * self.end_factor;
        }
        let t = step.min(self.total_iters) as f64;
        self.base_lr
            * (self.start_factor
                + (self.end_factor - self.start_factor) * t / self.total_iters as f64)
    }
}

/// `torch.optim.lr_scheduler.CosineAnnealingLR`:
/// `eta_min + (base_lr − eta_min)·(1 + cos(π·t/t_max))/2` (periodic past `t_max`, as in
/// PyTorch).
#[derive(Clone, Debug, PartialEq)]
pub struct CosineAnnealing {
    pub base_lr: f64,
    pub t_max: usize,
    pub eta_min: f64,
}

impl CosineAnnealing {
    pub fn new(base_lr: f64, t_max: usize, eta_min: f64) -> Result<Self> {
        check_lr("CosineAnnealing", "base_lr", base_lr)?;
        check_lr("CosineAnnealing", "eta_min", eta_min)?;
        check_positive("CosineAnnealing", "t_max", t_max)?;
        Ok(CosineAnnealing {
            base_lr,
            t_max,
            eta_min,
        })
    }
}

impl LrScheduler for CosineAnnealing {
    fn lr_at(&self, step: usize) -> f64 {
        let c = (PI * step as f64 / self.t_max as f64).cos();
        self.eta_min + (self.base_lr - self.eta_min) * (1.0 + c) / 2.0
    }
}

/// `torch.optim.lr_scheduler.CosineAnnealingWarmRestarts` (SGDR): cosine from `base_lr` to
/// `eta_min` over `t_0` steps, restarting with periods multiplied by `t_mult`.
#[derive(Clone, Debug, PartialEq)]
pub struct CosineAnnealingWarmRestarts {
    pub base_lr: f64,
    pub t_0: usize,
    pub t_mult: usize,
    pub eta_min: f64,
}

impl CosineAnnealingWarmRestarts {
    pub fn new(base_lr: f64, t_0: usize, t_mult: usize, eta_min: f64) -> Result<Self> {
        check_lr("CosineAnnealingWarmRestarts", "base_lr", base_lr)?;
        check_lr("CosineAnnealingWarmRestarts", "eta_min", eta_min)?;
        check_positive("CosineAnnealingWarmRestarts", "t_0", t_0)?;
        check_positive("CosineAnnealingWarmRestarts", "t_mult", t_mult)?;
        Ok(CosineAnnealingWarmRestarts {
            base_lr,
            t_0,
            t_mult,
            eta_min,
        })
    }
}

impl LrScheduler for CosineAnnealingWarmRestarts {
    fn lr_at(&self, step: usize) -> f64 {
        // Walk the periods in integers (exact, unlike PyTorch's log-based epoch form).
        let (mut t_cur, mut t_i) = (step as u128, self.t_0.max(1) as u128);
        while t_cur >= t_i {
            t_cur -= t_i;
            t_i *= self.t_mult.max(1) as u128;
        }
        let c = (PI * t_cur as f64 / t_i as f64).cos();
        self.eta_min + (self.base_lr - self.eta_min) * (1.0 + c) / 2.0
    }
}

/// `torch.optim.lr_scheduler.StepLR`: `base_lr · gamma^(t / step_size)`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLr {
    pub base_lr: f64,
    pub step_size: usize,
    pub gamma: f64,
}

impl StepLr {
    pub fn new(base_lr: f64, step_size: usize, gamma: f64) -> Result<Self> {
        check_lr("StepLr", "base_lr", base_lr)?;
        check_lr("StepLr", "gamma", gamma)?;
        check_positive("StepLr", "step_size", step_size)?;
        Ok(StepLr {
            base_lr,
            step_size,
            gamma,
        })
    }
}

impl LrScheduler for StepLr {
    fn lr_at(&self, step: usize) -> f64 {
        self.base_lr * self.gamma.powi((step / self.step_size.max(1)) as i32)
    }
}

/// `torch.optim.lr_scheduler.MultiStepLR`: multiply by `gamma` at each milestone (a
/// milestone listed twice counts twice, as in PyTorch).
#[derive(Clone, Debug, PartialEq)]
pub struct MultiStepLr {
    pub base_lr: f64,
    pub milestones: Vec<usize>,
    pub gamma: f64,
}

impl MultiStepLr {
    pub fn new(base_lr: f64, milestones: Vec<usize>, gamma: f64) -> Result<Self> {
        check_lr("MultiStepLr", "base_lr", base_lr)?;
        check_lr("MultiStepLr", "gamma", gamma)?;
        let mut milestones = milestones;
        milestones.sort_unstable();
        Ok(MultiStepLr {
            base_lr,
            milestones,
            gamma,
        })
    }
}

impl LrScheduler for MultiStepLr {
    fn lr_at(&self, step: usize) -> f64 {
        let passed = self.milestones.iter().filter(|&&m| m <= step).count();
        self.base_lr * self.gamma.powi(passed as i32)
    }
}

/// `torch.optim.lr_scheduler.ExponentialLR`: `base_lr · gamma^t`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExponentialLr {
    pub base_lr: f64,
    pub gamma: f64,
}

impl ExponentialLr {
    pub fn new(base_lr: f64, gamma: f64) -> Result<Self> {
        check_lr("ExponentialLr", "base_lr", base_lr)?;
        check_lr("ExponentialLr", "gamma", gamma)?;
        Ok(ExponentialLr { base_lr, gamma })
    }
}

impl LrScheduler for ExponentialLr {
    fn lr_at(&self, step: usize) -> f64 {
        self.base_lr * self.gamma.powf(step as f64)
    }
}

/// `torch.optim.lr_scheduler.PolynomialLR`:
/// `base_lr · (1 − min(t, total_iters)/total_iters)^power`.
#[derive(Clone, Debug, PartialEq)]
pub struct PolynomialLr {
    pub base_lr: f64,
    pub total_iters: usize,
    pub power: f64,
}

impl PolynomialLr {
    pub fn new(base_lr: f64, total_iters: usize, power: f64) -> Result<Self> {
        check_lr("PolynomialLr", "base_lr", base_lr)?;
        check_lr("PolynomialLr", "power", power)?;
        Ok(PolynomialLr {
            base_lr,
            total_iters,
            power,
        })
    }
}

impl LrScheduler for PolynomialLr {
    fn lr_at(&self, step: usize) -> f64 {
        if self.total_iters == 0 {
            return self.base_lr;
        }
        let t = step.min(self.total_iters) as f64;
        self.base_lr * (1.0 - t / self.total_iters as f64).powf(self.power)
    }
}

/// How [`CyclicLr`] scales the amplitude of its cycles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CyclicMode {
    /// Constant amplitude.
    Triangular,
    /// The amplitude halves every cycle.
    Triangular2,
    /// The amplitude is multiplied by `gamma^t` (t the step).
    ExpRange { gamma: f64 },
}

/// `torch.optim.lr_scheduler.CyclicLR` (learning rate only; `cycle_momentum` is not
/// modelled): up from `base_lr` to `max_lr` in `step_size_up` steps, down in
/// `step_size_down`.
#[derive(Clone, Debug, PartialEq)]
pub struct CyclicLr {
    pub base_lr: f64,
    pub max_lr: f64,
    pub step_size_up: usize,
    pub step_size_down: usize,
    pub mode: CyclicMode,
}

impl CyclicLr {
    /// PyTorch's defaults: `step_size_up` 2000, `step_size_down = step_size_up`.
    pub fn new(
        base_lr: f64,
        max_lr: f64,
        step_size_up: usize,
        step_size_down: Option<usize>,
        mode: CyclicMode,
    ) -> Result<Self> {
        check_lr("CyclicLr", "base_lr", base_lr)?;
        check_lr("CyclicLr", "max_lr", max_lr)?;
        let step_size_down = step_size_down.unwrap_or(step_size_up);
        if step_size_up + step_size_down == 0 {
            return Err(bad("CyclicLr", "the cycle length must be > 0".into()));
        }
        if let CyclicMode::ExpRange { gamma } = mode {
            check_lr("CyclicLr", "gamma", gamma)?;
        }
        Ok(CyclicLr {
            base_lr,
            max_lr,
            step_size_up,
            step_size_down,
            mode,
        })
    }
}

impl LrScheduler for CyclicLr {
    fn lr_at(&self, step: usize) -> f64 {
        let total = (self.step_size_up + self.step_size_down) as f64;
        let ratio = self.step_size_up as f64 / total;
        let t = step as f64;
        let cycle = (1.0 + t / total).floor();
        let x = 1.0 + t / total - cycle;
        let scale_factor = if x <= ratio {
            x / ratio
        } else {
            (x - 1.0) / (ratio - 1.0)
        };
        let height = (self.max_lr - self.base_lr) * scale_factor;
        let s = match self.mode {
            CyclicMode::Triangular => 1.0,
            CyclicMode::Triangular2 => 1.0 / 2f64.powf(cycle - 1.0),
            CyclicMode::ExpRange { gamma } => gamma.powf(t),
        };
        self.base_lr + height * s
    }
}

/// How [`OneCycleLr`] interpolates within a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnealStrategy {
    Cos,
    Linear,
}

/// `torch.optim.lr_scheduler.OneCycleLR` (learning rate only; `cycle_momentum` is not
/// modelled): from `max_lr/div_factor` up to `max_lr` over `pct_start` of the steps, then down
/// to `max_lr/(div_factor·final_div_factor)`; `three_phase` comes back to the initial lr
/// symmetrically before the final annealing. Past `total_steps` (where PyTorch raises) it
/// stays at the value of step `total_steps`.
#[derive(Clone, Debug, PartialEq)]
pub struct OneCycleLr {
    pub max_lr: f64,
    pub total_steps: usize,
    pub pct_start: f64,
    pub anneal: AnnealStrategy,
    pub div_factor: f64,
    pub final_div_factor: f64,
    pub three_phase: bool,
}

impl OneCycleLr {
    /// PyTorch's defaults for the rest: `pct_start` 0.3, cosine, `div_factor` 25,
    /// `final_div_factor` 1e4, two phases.
    pub fn new(max_lr: f64, total_steps: usize) -> Result<Self> {
        OneCycleLr {
            max_lr,
            total_steps,
            pct_start: 0.3,
            anneal: AnnealStrategy::Cos,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
        .validated()
    }

    /// Check the fields (after setting them directly).
    pub fn validated(self) -> Result<Self> {
        check_lr("OneCycleLr", "max_lr", self.max_lr)?;
        check_positive("OneCycleLr", "total_steps", self.total_steps)?;
        if !(0.0..=1.0).contains(&self.pct_start) {
            return Err(bad(
                "OneCycleLr",
                format!("pct_start must be in [0, 1], got {}", self.pct_start),
            ));
        }
        for (n, v) in [
            ("div_factor", self.div_factor),
            ("final_div_factor", self.final_div_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(
                    "OneCycleLr",
                    format!("{n} must be finite and > 0, got {v}"),
                ));
            }
        }
        Ok(self)
    }
}

impl LrScheduler for OneCycleLr {
    fn lr_at(&self, step: usize) -> f64 {
        let initial = self.max_lr / self.div_factor;
        let min = initial / self.final_div_factor;
        let total = self.total_steps as f64;
        let up_end = self.pct_start * total - 1.0;
        let phases: &[(f64, f64, f64)] = if self.three_phase {
            &[
                (up_end, initial, self.max_lr),
                (2.0 * self.pct_start * total - 2.0, self.max_lr, initial),
                (total - 1.0, initial, min),
            ]
        } else {
            &[
                (up_end, initial, self.max_lr),
                (total - 1.0, self.max_lr, min),
            ]
        };
        let t = step.min(self.total_steps) as f64;
        let mut start_step = 0.0;
        for (i, &(end_step, start, end)) in phases.iter().enumerate() {
            if t <= end_step || i == phases.len() - 1 {
                let pct = (t - start_step) / (end_step - start_step);
                return match self.anneal {
                    AnnealStrategy::Cos => end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0),
                    AnnealStrategy::Linear => (end - start) * pct + start,
                };
            }
            start_step = end_step;
        }
        unreachable!("the last phase always matches")
    }
}

/// `torch.optim.lr_scheduler.SequentialLR`: `schedulers[i]` runs from `milestones[i-1]`,
/// restarted at its own step 0.
#[derive(Debug)]
pub struct SequentialLr {
    schedulers: Vec<Box<dyn LrScheduler>>,
    milestones: Vec<usize>,
}

impl SequentialLr {
    /// One more scheduler than milestones; milestones strictly increasing.
    pub fn new(schedulers: Vec<Box<dyn LrScheduler>>, milestones: Vec<usize>) -> Result<Self> {
        if schedulers.len() != milestones.len() + 1 {
            return Err(bad(
                "SequentialLr",
                format!(
                    "need one more scheduler than milestones, got {} schedulers and {} milestones",
                    schedulers.len(),
                    milestones.len()
                ),
            ));
        }
        if milestones.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(
                "SequentialLr",
                format!("milestones must be strictly increasing, got {milestones:?}"),
            ));
        }
        Ok(SequentialLr {
            schedulers,
            milestones,
        })
    }
}

impl LrScheduler for SequentialLr {
    fn lr_at(&self, step: usize) -> f64 {
        let idx = self.milestones.iter().filter(|&&m| m <= step).count();
        let start = if idx == 0 {
            0
        } else {
            self.milestones[idx - 1]
        };
        self.schedulers[idx].lr_at(step - start)
    }
}

/// Linear warmup then cosine decay: PyTorch's
/// `SequentialLR([LinearLR(start_factor=1/warmup, total_iters=warmup),
/// CosineAnnealingLR(T_max=total-warmup, eta_min=min_lr)], milestones=[warmup])`.
/// Step `warmup` has `base_lr`, step `total` has `min_lr`; `warmup = 0` is plain cosine.
pub fn warmup_cosine(
    base_lr: f64,
    warmup: usize,
    total: usize,
    min_lr: f64,
) -> Result<SequentialLr> {
    if warmup >= total {
        return Err(bad(
            "warmup_cosine",
            format!("warmup ({warmup}) must be shorter than total ({total})"),
        ));
    }
    let cosine = CosineAnnealing::new(base_lr, total - warmup, min_lr)?;
    if warmup == 0 {
        return SequentialLr::new(vec![Box::new(cosine)], vec![]);
    }
    let warm = LinearWarmup::new(base_lr, 1.0 / warmup as f64, 1.0, warmup)?;
    SequentialLr::new(vec![Box::new(warm), Box::new(cosine)], vec![warmup])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_are_errors() {
        assert!(StepLr::new(0.1, 0, 0.5).is_err());
        assert!(StepLr::new(-0.1, 1, 0.5).is_err());
        assert!(LinearWarmup::new(0.1, 0.0, 1.0, 5).is_err());
        assert!(CosineAnnealing::new(0.1, 0, 0.0).is_err());
        assert!(CosineAnnealingWarmRestarts::new(0.1, 10, 0, 0.0).is_err());
        assert!(CyclicLr::new(0.1, 1.0, 0, Some(0), CyclicMode::Triangular).is_err());
        assert!(OneCycleLr::new(f64::NAN, 10).is_err());
        let s: Vec<Box<dyn LrScheduler>> = vec![Box::new(ConstantLr::new(0.1).unwrap())];
        assert!(SequentialLr::new(s, vec![3]).is_err());
        assert!(warmup_cosine(0.1, 10, 10, 0.0).is_err());
    }

    #[test]
    fn warmup_cosine_endpoints() {
        let s = warmup_cosine(1.0, 4, 14, 0.1).unwrap();
        assert_eq!(s.lr_at(0), 0.25);
        assert_eq!(s.lr_at(4), 1.0);
        assert!((s.lr_at(14) - 0.1).abs() < 1e-15);
        let plain = warmup_cosine(1.0, 0, 10, 0.0).unwrap();
        assert_eq!(plain.lr_at(0), 1.0);
    }

    #[test]
    fn warm_restarts_periods_grow() {
        let s = CosineAnnealingWarmRestarts::new(1.0, 2, 2, 0.0).unwrap();
        // Periods 2, 4, 8: restarts at steps 2 and 6.
        assert_eq!(s.lr_at(2), 1.0);
        assert_eq!(s.lr_at(6), 1.0);
        assert!(s.lr_at(5) < s.lr_at(4));
    }
}
