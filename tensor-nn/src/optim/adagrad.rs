//! Adagrad with learning-rate decay and an initial accumulator (`torch.optim.Adagrad`).

use tensor_core::{Error, OptimRule, Result};

use super::{Optim, OptimizerConfig};

/// `torch.optim.Adagrad` hyper-parameters; `Default` gives PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct AdagradConfig {
    pub lr: f64,
    /// The step size at update `t` is `lr / (1 + (t − 1)·lr_decay)`.
    pub lr_decay: f64,
    pub weight_decay: f64,
    /// The value the squared-gradient sum starts at.
    pub initial_accumulator_value: f64,
    pub eps: f64,
    pub maximize: bool,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

impl OptimizerConfig for AdagradConfig {
    fn rule(&self) -> OptimRule {
        OptimRule::Adagrad {
            lr: self.lr,
            lr_decay: self.lr_decay,
            weight_decay: self.weight_decay,
            eps: self.eps,
            maximize: self.maximize,
        }
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn initial_state_value(&self, _state: &str) -> f64 {
        self.initial_accumulator_value
    }
    fn validate(&self) -> Result<()> {
        let v = self.initial_accumulator_value;
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::invalid(
                "adagrad",
                format!("initial_accumulator_value must be finite and >= 0, got {v}"),
            ));
        }
        self.rule().validate()
    }
}

/// Adagrad: `Adagrad::new(named_vars, AdagradConfig::default())`.
pub type Adagrad = Optim<AdagradConfig>;

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Optimizer;
    use super::*;

    #[test]
    fn decay_and_initial_accumulator_by_hand() -> Result<()> {
        let w = var(&[0.0]);
        let cfg = AdagradConfig {
            lr: 0.1,
            lr_decay: 0.5,
            initial_accumulator_value: 1.0,
            ..Default::default()
        };
        let mut opt = Adagrad::new(vec![("w".into(), w.clone())], cfg)?;
        opt.step(&grads_of(&[(&w, &[1.0])])?)?;
        let p1 = -0.1 * 1.0 / (2.0f64.sqrt() + 1e-10);
        assert!((w.to_vec::<f64>()?[0] - p1).abs() < 1e-15);
        opt.step(&grads_of(&[(&w, &[2.0])])?)?;
        // clr = 0.1 / (1 + 1·0.5); sum = 2 + 4.
        let p2 = p1 - 0.1 / 1.5 * 2.0 / (6.0f64.sqrt() + 1e-10);
        assert!((w.to_vec::<f64>()?[0] - p2).abs() < 1e-15);
        assert!(Adagrad::new(
            vec![("w".into(), w.clone())],
            AdagradConfig {
                initial_accumulator_value: -1.0,
                ..Default::default()
            }
        )
        .is_err());
        Ok(())
    }
}
