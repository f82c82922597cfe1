//! Gradient cases: the semantics of autograd itself — accumulation, detach, no_grad,
//! non-scalar backward, custom ops, gradient stores and in-place variable updates.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        // ---- autograd semantics ----
        case("autograd_accumulates_reuse", |d| {
            let x = Var::from_tensor(&input((2, 3), d, 83)?)?;
            let y = x.mul(&x)?.add(&x.sin()?)?.add(&x)?.sum_all()?;
            let g = y.backward()?;
            let want = x.affine(2.0, 1.0)?.add(&x.cos()?)?;
            assert_close("d(x² + sin x + x)", grad_of(&g, &x)?, &want, 1e-12, 1e-12)
        }),
        case("autograd_detach", |d| {
            let x = Var::from_tensor(&input((2, 3), d, 84)?)?;
            let xd = x.detach();
            if xd.tracked() {
                return Err(Error::msg("detach() returned a tracked tensor"));
            }
            let g = x.mul(&xd)?.sum_all()?.backward()?;
            // Only the tracked factor contributes: gradient x, not 2x.
            assert_close(
                "d(x·detach(x))",
                grad_of(&g, &x)?,
                x.as_tensor(),
                1e-12,
                1e-12,
            )?;
            let g = x.sqr()?.detach().mul(&x)?.sum_all()?.backward()?;
            assert_close(
                "d(detach(x²)·x)",
                grad_of(&g, &x)?,
                &x.sqr()?.detach(),
                1e-12,
                1e-12,
            )
        }),
        case("autograd_no_grad", |d| {
            let x = Var::from_tensor(&input((2, 3), d, 85)?)?;
            let y = {
                let _g = no_grad();
                if crate::grad_enabled() {
                    return Err(Error::msg("grad_enabled() is true inside no_grad"));
                }
                x.mul(&x)?.exp()?.sum_all()?
            };
            if !crate::grad_enabled() {
                return Err(Error::msg(
                    "grad_enabled() is still false after the guard dropped",
                ));
            }
            if y.tracked() {
                return Err(Error::msg("a result computed under no_grad is tracked"));
            }
            if y.backward().is_ok() {
                return Err(Error::msg(
                    "backward on a result computed under no_grad succeeded",
                ));
            }
            // Recording resumes once the guard is gone.
            if !x.mul(&x)?.tracked() {
                return Err(Error::msg("results are not tracked after no_grad ended"));
            }
            Ok(())
        }),
        case("autograd_backward_non_scalar", |d| {
            let x = Var::from_tensor(&input((2, 3), d, 86)?)?;
            match x.sqr()?.backward() {
                Err(e) => {
                    if !e.to_string().contains("backward") || !e.to_string().contains("[2, 3]") {
                        return Err(Error::msg(format!(
                            "backward on [2, 3]: message {e:?} names neither the op nor the shape"
                        )));
                    }
                }
                Ok(_) => return Err(Error::msg("backward on a [2, 3] tensor succeeded")),
            }
            // backward_with_grad is the vector-Jacobian product for non-scalars.
            let gy = det_tensor((2, 3), DType::F64, d, 92)?;
            let g = x.sqr()?.backward_with_grad(&gy)?;
            assert_close(
                "backward_with_grad",
                grad_of(&g, &x)?,
                &x.affine(2.0, 0.0)?.mul(&gy)?,
                1e-12,
                1e-12,
            )
        }),
        case("autograd_custom_op", |d| {
            let x = Var::from_tensor(&input((2, 3), d, 87)?)?;
            match Tensor::apply_custom(
                &[&x],
                Arc::new(Cube {
                    with_backward: false,
                }),
            ) {
                Err(Error::NoBackward { op: "cube", .. }) => {}
                Err(e) => {
                    return Err(Error::msg(format!(
                        "custom op without backward: expected NoBackward naming \"cube\", got {e}"
                    )))
                }
                Ok(_) => {
                    return Err(Error::msg(
                        "custom op without backward accepted a tracked input",
                    ))
                }
            }
            // Untracked inputs (or no_grad) may use it freely.
            let y = Tensor::apply_custom(
                &[&x.detach()],
                Arc::new(Cube {
                    with_backward: false,
                }),
            )?;
            assert_close(
                "custom op forward",
                &y,
                &x.powf(3.0)?.detach(),
                1e-12,
                1e-12,
            )?;
            {
                let _g = no_grad();
                Tensor::apply_custom(
                    &[&x],
                    Arc::new(Cube {
                        with_backward: false,
                    }),
                )?;
            }
            let y = Tensor::apply_custom(
                &[&x],
                Arc::new(Cube {
                    with_backward: true,
                }),
            )?;
            if !y.tracked() {
                return Err(Error::msg("custom op with backward: result not tracked"));
            }
            let g = y.sum_all()?.backward()?;
            assert_close(
                "custom op gradient",
                grad_of(&g, &x)?,
                &x.sqr()?.affine(3.0, 0.0)?.detach(),
                1e-12,
                1e-12,
            )?;
            let xs = [input((3, 2), d, 88)?];
            check_grad("custom op in a graph", &xs, |xs| {
                Tensor::apply_custom(
                    &[&xs[0].sin()?],
                    Arc::new(Cube {
                        with_backward: true,
                    }),
                )?
                .mul(&xs[0])
            })
        }),
        case("autograd_gradstore_accumulate", |d| {
            let x = Var::from_tensor(&input((2, 3), d, 89)?)?;
            let y = Var::from_tensor(&input(3, d, 90)?)?;
            let mut g1 = x.sqr()?.sum_all()?.backward()?;
            let g2 = x.mul(y.as_tensor())?.sum_all()?.backward()?;
            let want_x = x.affine(2.0, 0.0)?.add(y.as_tensor())?;
            g1.accumulate(g2)?;
            assert_close("accumulated d/dx", grad_of(&g1, &x)?, &want_x, 1e-12, 1e-12)?;
            // y only appears in the second store: its gradient is copied over.
            assert_close(
                "accumulated d/dy",
                grad_of(&g1, &y)?,
                &x.sum(0)?.detach(),
                1e-12,
                1e-12,
            )?;
            let mut empty = GradStore::default();
            empty.accumulate(x.sum_all()?.backward()?)?;
            assert_close(
                "accumulate into empty",
                grad_of(&empty, &x)?,
                &x.ones_like()?,
                0.0,
                0.0,
            )?;
            // A variable the loss does not depend on gets no gradient.
            let z = Var::from_tensor(&input(3, d, 91)?)?;
            if x.sum_all()?.backward()?.get(&z).is_some() {
                return Err(Error::msg("an unrelated variable got a gradient"));
            }
            Ok(())
        }),
        case("autograd_var_set", |d| {
            let v = Var::from_tensor(&input((2, 3), d, 92)?)?;
            let id = v.id();
            let new = input((2, 3), d, 93)?;
            v.set(&new)?;
            if v.id() != id || !v.is_variable() {
                return Err(Error::msg("Var::set changed the variable's identity"));
            }
            assert_close("Var::set values", v.as_tensor(), &new, 0.0, 0.0)?;
            // Gradients are computed at the new values.
            let g = v.sqr()?.sum_all()?.backward()?;
            assert_close(
                "gradient after Var::set",
                grad_of(&g, &v)?,
                &new.affine(2.0, 0.0)?,
                1e-12,
                1e-12,
            )?;
            if v.set(&input((3, 2), d, 94)?).is_ok() {
                return Err(Error::msg("Var::set with a different shape succeeded"));
            }
            Ok(())
        }),
    ]
}

/// x³ as a user-defined op, with or without its backward rule.
struct Cube {
    with_backward: bool,
}

impl CustomOp for Cube {
    fn name(&self) -> &'static str {
        "cube"
    }
    fn forward(&self, inputs: &[Tensor]) -> Result<Tensor> {
        inputs[0].powf(3.0)
    }
    fn has_backward(&self) -> bool {
        self.with_backward
    }
    fn backward(
        &self,
        inputs: &[Tensor],
        _output: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        if !self.with_backward {
            return Err(Error::NoBackward {
                op: "cube",
                why: "test op without backward".into(),
            });
        }
        Ok(vec![Some(grad.mul(&inputs[0].sqr()?.affine(3.0, 0.0)?)?)])
    }
}
