//! Gradient clipping with `torch.nn.utils.clip_grad_norm_` / `clip_grad_value_` semantics.
//! The norm is over every listed parameter's gradient together; parameters without a
//! gradient in the store are left out, like PyTorch leaves out `grad is None`.

use tensor_core::{Error, GradStore, Result, Tensor};

fn check_norm_type(norm_type: f64) -> Result<()> {
    if norm_type == f64::INFINITY || (norm_type.is_finite() && norm_type > 0.0) {
        Ok(())
    } else {
        Err(Error::invalid(
            "clip_grad_norm",
            format!("norm_type must be > 0 or infinity, got {norm_type}"),
        ))
    }
}

/// The `norm_type`-norm (2.0, 1.0, any p > 0, or `f64::INFINITY` for the max-abs) of all the
/// gradients of `params` in `grads` taken as one vector. Each tensor's norm is computed in its
/// dtype and the norms are combined in f64. 0 when no parameter has a gradient.
pub fn grad_norm(grads: &GradStore, params: &[&Tensor], norm_type: f64) -> Result<f64> {
    check_norm_type(norm_type)?;
    let _ng = tensor_core::no_grad();
    let mut acc = 0.0f64;
    for p in params {
        let Some(g) = grads.get(p) else { continue };
        if g.elem_count() == 0 {
            continue;
        }
        let n = if norm_type == f64::INFINITY {
            g.abs()?.flatten_all()?.max(0)?.to_f64()?
        } else if norm_type == 2.0 {
            g.sqr()?.sum_all()?.sqrt()?.to_f64()?
        } else if norm_type == 1.0 {
            g.abs()?.sum_all()?.to_f64()?
        } else {
            g.abs()?
                .powf(norm_type)?
                .sum_all()?
                .powf(1.0 / norm_type)?
                .to_f64()?
        };
        if norm_type == f64::INFINITY {
            // NaN must win, as in torch.
            acc = if n.is_nan() || acc.is_nan() {
                f64::NAN
            } else {
                acc.max(n)
            };
        } else {
            acc += n.powf(norm_type);
        }
    }
    Ok(if norm_type == f64::INFINITY {
        acc
    } else {
        acc.powf(1.0 / norm_type)
    })
}

/// The factor `clip_grad_norm` multiplies gradients by: `max_norm / (total_norm + 1e-6)`,
/// clamped to at most 1. Pass it to `Optimizer::step_scaled` to clip without rewriting the
/// gradients.
pub fn clip_coef(total_norm: f64, max_norm: f64) -> f64 {
    (max_norm / (total_norm + 1e-6)).min(1.0)
}

/// Rescale the gradients of `params` so their joint norm is at most `max_norm`, and return
/// the norm before clipping (`torch.nn.utils.clip_grad_norm_`). The store's gradients are
/// replaced by scaled copies (two parameters' gradients may share memory, so scaling in place
/// could scale one twice); [`clip_coef`] with `step_scaled` avoids the copies.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[&Tensor],
    max_norm: f64,
    norm_type: f64,
) -> Result<f64> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(Error::invalid(
            "clip_grad_norm",
            format!("max_norm must be >= 0, got {max_norm}"),
        ));
    }
    let total = grad_norm(grads, params, norm_type)?;
    let coef = clip_coef(total, max_norm);
    // coef is NaN for a NaN norm; torch then multiplies by NaN too.
    if coef.is_nan() || coef < 1.0 {
        let _ng = tensor_core::no_grad();
        for p in params {
            if let Some(g) = grads.get(p) {
                let scaled = g.mul_scalar(coef)?;
                grads.insert(p, scaled);
            }
        }
    }
    Ok(total)
}

/// Clamp every gradient of `params` to `[-clip_value, clip_value]`
/// (`torch.nn.utils.clip_grad_value_`).
pub fn clip_grad_value(grads: &mut GradStore, params: &[&Tensor], clip_value: f64) -> Result<()> {
    if clip_value.is_nan() || clip_value < 0.0 {
        return Err(Error::invalid(
            "clip_grad_value",
            format!("clip_value must be >= 0, got {clip_value}"),
        ));
    }
    let _ng = tensor_core::no_grad();
    for p in params {
        if let Some(g) = grads.get(p) {
            let c = g.clamp(-clip_value, clip_value)?;
            grads.insert(p, c);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Optimizer, Sgd, SgdConfig};
    use super::*;

    #[test]
    fn norm_clipping_like_torch() -> Result<()> {
        let (a, b, c) = (var(&[0.0, 0.0]), var(&[0.0]), var(&[0.0]));
        let mut g = grads_of(&[(&a, &[3.0, 0.0]), (&b, &[-4.0])])?;
        let params = [a.as_tensor(), b.as_tensor(), c.as_tensor()];
        assert_eq!(grad_norm(&g, &params, f64::INFINITY)?, 4.0);
        assert_eq!(grad_norm(&g, &params, 1.0)?, 7.0);
        assert!((grad_norm(&g, &params, 3.0)? - 91f64.powf(1.0 / 3.0)).abs() < 1e-12);
        let total = clip_grad_norm(&mut g, &params, 1.0, 2.0)?;
        assert_eq!(total, 5.0);
        let k = 1.0 / (5.0 + 1e-6);
        assert_eq!(g.get(&a).unwrap().to_vec::<f64>()?, vec![3.0 * k, 0.0]);
        assert_eq!(g.get(&b).unwrap().to_vec::<f64>()?, vec![-4.0 * k]);
        // Below the threshold nothing changes.
        let before = g.get(&a).unwrap().to_vec::<f64>()?;
        clip_grad_norm(&mut g, &params, 10.0, 2.0)?;
        assert_eq!(g.get(&a).unwrap().to_vec::<f64>()?, before);
        assert!(clip_grad_norm(&mut g, &params, -1.0, 2.0).is_err());
        assert!(clip_grad_norm(&mut g, &params, 1.0, 0.0).is_err());
        Ok(())
    }

    #[test]
    fn value_clipping() -> Result<()> {
        let a = var(&[0.0, 0.0, 0.0]);
        let mut g = grads_of(&[(&a, &[3.0, -0.5, -7.0])])?;
        clip_grad_value(&mut g, &[a.as_tensor()], 1.0)?;
        assert_eq!(g.get(&a).unwrap().to_vec::<f64>()?, vec![1.0, -0.5, -1.0]);
        assert!(clip_grad_value(&mut g, &[a.as_tensor()], f64::NAN).is_err());
        Ok(())
    }

    #[test]
    fn fused_clipping_matches_rewriting_the_grads() -> Result<()> {
        let (w1, w2) = (var(&[1.0, 2.0]), var(&[1.0, 2.0]));
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        };
        let mut o1 = Sgd::new(vec![("w".into(), w1.clone())], cfg.clone())?;
        let mut o2 = Sgd::new(vec![("w".into(), w2.clone())], cfg)?;
        for x in [[3.0, 4.0], [0.1, 0.2], [-6.0, 8.0]] {
            let mut g1 = grads_of(&[(&w1, &x)])?;
            clip_grad_norm(&mut g1, &[w1.as_tensor()], 1.0, 2.0)?;
            o1.step(&g1)?;
            let g2 = grads_of(&[(&w2, &x)])?;
            let total = grad_norm(&g2, &[w2.as_tensor()], 2.0)?;
            o2.step_scaled(&g2, clip_coef(total, 1.0))?;
        }
        let (a, b) = (w1.to_vec::<f64>()?, w2.to_vec::<f64>()?);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-15, "{a:?} vs {b:?}");
        }
        Ok(())
    }
}
