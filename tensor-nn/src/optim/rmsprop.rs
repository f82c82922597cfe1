//! RMSprop, optionally centered and with momentum (`torch.optim.RMSprop`).

use tensor_core::OptimRule;

use super::{Optim, OptimizerConfig};

/// `torch.optim.RMSprop` hyper-parameters; `Default` gives PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct RmsPropConfig {
    pub lr: f64,
    /// Smoothing constant of the squared-gradient average.
    pub alpha: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    /// Normalise by the gradient's estimated variance instead of its second moment.
    pub centered: bool,
    pub maximize: bool,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        RmsPropConfig {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

impl OptimizerConfig for RmsPropConfig {
    fn rule(&self) -> OptimRule {
        OptimRule::RmsProp {
            lr: self.lr,
            alpha: self.alpha,
            eps: self.eps,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            centered: self.centered,
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

/// RMSprop: `RmsProp::new(named_vars, RmsPropConfig::default())`.
pub type RmsProp = Optim<RmsPropConfig>;

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Optimizer;
    use super::*;
    use tensor_core::Result;

    #[test]
    fn first_step_by_hand() -> Result<()> {
        let w = var(&[1.0]);
        let cfg = RmsPropConfig {
            lr: 0.01,
            centered: true,
            momentum: 0.5,
            ..Default::default()
        };
        let mut opt = RmsProp::new(vec![("w".into(), w.clone())], cfg)?;
        opt.step(&grads_of(&[(&w, &[2.0])])?)?;
        // sq = 0.01·4; ga = 0.01·2; avg = sqrt(0.04 − 0.0004) + 1e-8; buf = 2/avg.
        let avg = (0.04f64 - 0.0004).sqrt() + 1e-8;
        let expect = 1.0 - 0.01 * (2.0 / avg);
        assert!((w.to_vec::<f64>()?[0] - expect).abs() < 1e-12);
        let names: Vec<String> = opt.state_tensors().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["w.square_avg", "w.momentum_buffer", "w.grad_avg", "w.step"]
        );
        Ok(())
    }
}
