//! Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): a sign update of
//! an interpolated momentum, with decoupled weight decay. PyTorch has no Lion; the parity
//! fixtures implement the paper's update by hand.

use tensor_core::{OptimRule, Result};

use super::{check_betas, Optim, OptimizerConfig};

/// Lion hyper-parameters; `Default` gives the paper's betas and the `lion-pytorch` defaults
/// (lr 1e-4, no weight decay). Lion wants a 3–10× smaller lr than AdamW and a larger wd.
#[derive(Clone, Debug, PartialEq)]
pub struct LionConfig {
    pub lr: f64,
    /// `(β1, β2)`: β1 interpolates the update direction, β2 the kept momentum.
    pub betas: (f64, f64),
    pub weight_decay: f64,
}

impl Default for LionConfig {
    fn default() -> Self {
        LionConfig {
            lr: 1e-4,
            betas: (0.9, 0.99),
            weight_decay: 0.0,
        }
    }
}

impl OptimizerConfig for LionConfig {
    fn rule(&self) -> OptimRule {
        OptimRule::Lion {
            lr: self.lr,
            beta1: self.betas.0,
            beta2: self.betas.1,
            weight_decay: self.weight_decay,
        }
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn validate(&self) -> Result<()> {
        check_betas(self.betas)?;
        self.rule().validate()
    }
}

/// Lion: `Lion::new(named_vars, LionConfig::default())`.
pub type Lion = Optim<LionConfig>;

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Optimizer;
    use super::*;

    #[test]
    fn sign_update_by_hand() -> Result<()> {
        let w = var(&[1.0, 1.0, 1.0]);
        let cfg = LionConfig {
            lr: 0.1,
            weight_decay: 1.0,
            ..Default::default()
        };
        let mut opt = Lion::new(vec![("w".into(), w.clone())], cfg)?;
        opt.step(&grads_of(&[(&w, &[0.5, -3.0, 0.0])])?)?;
        // p·(1 − 0.1) − 0.1·sign(0.1·g); a zero gradient gives sign 0.
        let v = w.to_vec::<f64>()?;
        assert_eq!(v, vec![0.9 - 0.1, 0.9 + 0.1, 0.9]);
        // m = 0.01·g; next c = 0.9·m + 0.1·g2 with g2 = −m·(0.9/0.1)·2 flips the sign.
        opt.step(&grads_of(&[(&w, &[-0.09, 0.0, 0.0])])?)?;
        let v2 = w.to_vec::<f64>()?;
        // c0 = 0.9·0.005 − 0.009 < 0 → +lr; c1 = 0.9·(−0.03) < 0 → +lr.
        assert!((v2[0] - (v[0] * 0.9 + 0.1)).abs() < 1e-15, "{v2:?}");
        assert!((v2[1] - (v[1] * 0.9 + 0.1)).abs() < 1e-15, "{v2:?}");
        Ok(())
    }
}
