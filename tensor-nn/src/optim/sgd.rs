//! Stochastic gradient descent with momentum, dampening, Nesterov and weight decay
//! (`torch.optim.SGD`).

use tensor_core::OptimRule;

use super::{Optim, OptimizerConfig};

/// `torch.optim.SGD` hyper-parameters; `Default` gives PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

impl OptimizerConfig for SgdConfig {
    fn rule(&self) -> OptimRule {
        OptimRule::Sgd {
            lr: self.lr,
            momentum: self.momentum,
            dampening: self.dampening,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
            maximize: self.maximize,
        }
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
}

/// SGD: `Sgd::new(named_vars, SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() })`.
pub type Sgd = Optim<SgdConfig>;

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Optimizer;
    use super::*;
    use tensor_core::Result;

    /// Hand-computed torch values: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    /// on p = 1 with gradients 1, then 2.
    #[test]
    fn nesterov_with_weight_decay_by_hand() -> Result<()> {
        let w = var(&[1.0]);
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], cfg)?;
        opt.step(&grads_of(&[(&w, &[1.0])])?)?;
        // d = 1 + 0.1·1 = 1.1; buf = 1.1; d = 1.1 + 0.9·1.1 = 2.09; p = 1 − 0.209.
        let p1 = 1.0 - 0.1 * 2.09;
        assert!((w.to_vec::<f64>()?[0] - p1).abs() < 1e-15);
        opt.step(&grads_of(&[(&w, &[2.0])])?)?;
        let d = 2.0 + 0.1 * p1;
        let buf = 0.9 * 1.1 + d;
        let p2 = p1 - 0.1 * (d + 0.9 * buf);
        assert!((w.to_vec::<f64>()?[0] - p2).abs() < 1e-15);
        Ok(())
    }

    #[test]
    fn nesterov_needs_momentum() {
        let cfg = SgdConfig {
            nesterov: true,
            ..Default::default()
        };
        assert!(Sgd::new(vec![("w".into(), var(&[1.0]))], cfg).is_err());
    }
}
