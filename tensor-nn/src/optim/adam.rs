//! Adam and AdamW (decoupled weight decay), both with AMSGrad (`torch.optim.Adam`,
//! `torch.optim.AdamW`).

use tensor_core::{OptimRule, Result};

use super::{check_betas, Optim, OptimizerConfig};

/// `torch.optim.Adam` hyper-parameters (L2 weight decay added to the gradient); `Default`
/// gives PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
    pub maximize: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
        }
    }
}

/// `torch.optim.AdamW` hyper-parameters (decoupled weight decay `p ← p·(1 − lr·wd)`);
/// `Default` gives PyTorch's defaults (`weight_decay` 0.01).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
    pub maximize: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            amsgrad: false,
            maximize: false,
        }
    }
}

macro_rules! adam_config {
    ($t:ty, $decoupled:expr) => {
        impl OptimizerConfig for $t {
            fn rule(&self) -> OptimRule {
                OptimRule::Adam {
                    lr: self.lr,
                    beta1: self.betas.0,
                    beta2: self.betas.1,
                    eps: self.eps,
                    weight_decay: self.weight_decay,
                    decoupled: $decoupled,
                    amsgrad: self.amsgrad,
                    maximize: self.maximize,
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
    };
}
adam_config!(AdamConfig, false);
adam_config!(AdamWConfig, true);

/// Adam: `Adam::new(named_vars, AdamConfig::default())`.
pub type Adam = Optim<AdamConfig>;
/// AdamW: `AdamW::new(named_vars, AdamWConfig::default())`.
pub type AdamW = Optim<AdamWConfig>;

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Optimizer;
    use super::*;

    /// Adam's first step moves every coordinate by ~lr against the gradient's sign
    /// (bias correction makes m̂/√v̂ = ±1); AdamW also shrinks by `1 − lr·wd` first.
    #[test]
    fn first_step_is_lr_times_sign() -> Result<()> {
        let w = var(&[1.0, -2.0]);
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone())],
            AdamWConfig {
                lr: 0.1,
                weight_decay: 0.5,
                ..Default::default()
            },
        )?;
        opt.step(&grads_of(&[(&w, &[3.0, -0.25])])?)?;
        let v = w.to_vec::<f64>()?;
        let shrink = 1.0 - 0.1 * 0.5;
        assert!((v[0] - (shrink - 0.1)).abs() < 1e-7, "{v:?}");
        assert!((v[1] - (-2.0 * shrink + 0.1)).abs() < 1e-7, "{v:?}");
        Ok(())
    }
}
