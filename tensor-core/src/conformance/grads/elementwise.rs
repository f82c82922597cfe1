//! Gradient cases: elementwise ops, where, reductions, matmul and softmax.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        // ---- elementwise unary ----
        case("neg", |d| unary(d, "neg", &[(-1.0, 1.0)], |x| x.neg())),
        case("abs", |d| unary(d, "abs", &[(-1.0, 1.0)], |x| x.abs())),
        case("exp", |d| unary(d, "exp", &[(-2.0, 2.0)], |x| x.exp())),
        case("log", |d| unary(d, "log", &[(0.2, 3.0)], |x| x.log())),
        case("sqrt", |d| unary(d, "sqrt", &[(0.2, 3.0)], |x| x.sqrt())),
        case("rsqrt", |d| unary(d, "rsqrt", &[(0.2, 3.0)], |x| x.rsqrt())),
        case("recip", |d| {
            unary(d, "recip", &[(0.3, 2.0), (-2.0, -0.3)], |x| x.recip())
        }),
        case("sqr", |d| unary(d, "sqr", &[(-2.0, 2.0)], |x| x.sqr())),
        case("sin", |d| unary(d, "sin", &[(-3.0, 3.0)], |x| x.sin())),
        case("cos", |d| unary(d, "cos", &[(-3.0, 3.0)], |x| x.cos())),
        case("tanh", |d| unary(d, "tanh", &[(-3.0, 3.0)], |x| x.tanh())),
        case("sigmoid", |d| {
            unary(d, "sigmoid", &[(-4.0, 4.0)], |x| x.sigmoid())
        }),
        case("relu", |d| unary(d, "relu", &[(-1.0, 1.0)], |x| x.relu())),
        case("gelu", |d| unary(d, "gelu", &[(-3.0, 3.0)], |x| x.gelu())),
        case("gelu_tanh", |d| {
            unary(d, "gelu_tanh", &[(-3.0, 3.0)], |x| x.gelu_tanh())
        }),
        case("erf", |d| unary(d, "erf", &[(-2.5, 2.5)], |x| x.erf())),
        case("silu", |d| unary(d, "silu", &[(-4.0, 4.0)], |x| x.silu())),
        // Both sides of PyTorch's linear threshold at 20.
        case("softplus", |d| {
            unary(
                d,
                "softplus",
                &[(-3.0, 3.0), (15.0, 25.0), (-25.0, -15.0)],
                |x| x.softplus(),
            )
        }),
        case("elu", |d| unary(d, "elu", &[(-2.0, 2.0)], |x| x.elu(1.3))),
        case("leaky_relu", |d| {
            unary(d, "leaky_relu", &[(-1.0, 1.0)], |x| x.leaky_relu(0.05))
        }),
        case("clamp", |d| {
            unary(d, "clamp", &[(-1.0, 1.0)], |x| x.clamp(-0.5, 0.4))
        }),
        case("affine", |d| {
            unary(d, "affine", &[(-1.0, 1.0)], |x| x.affine(1.7, -0.3))
        }),
        case("powf", |d| {
            unary(d, "powf 2.5", &[(0.2, 2.0)], |x| x.powf(2.5))?;
            unary(d, "powf -1.5", &[(0.2, 2.0)], |x| x.powf(-1.5))?;
            unary(d, "powf 3 (negative base)", &[(-1.5, 1.5)], |x| x.powf(3.0))
        }),
        // Piecewise-constant ops: zero gradient away from the jumps.
        case("floor_ceil_round_sign", |d| {
            unary(d, "floor", &[(-2.0, 2.0)], |x| x.floor())?;
            unary(d, "ceil", &[(-2.0, 2.0)], |x| x.ceil())?;
            unary(d, "round", &[(-2.0, 2.0)], |x| x.round())?;
            unary(d, "sign", &[(-2.0, 2.0)], |x| x.sign())
        }),
        case("composite_unary_chain", |d| {
            unary(d, "chain", &[(-1.0, 1.0)], |x| {
                x.tanh()?.exp()?.mul(&x.sin()?)
            })
        }),
        // ---- elementwise binary (with broadcasting) ----
        case("add", |d| {
            binary(d, "add", (-1.0, 1.0), (-1.0, 1.0), |a, b| a.add(b))
        }),
        case("sub", |d| {
            binary(d, "sub", (-1.0, 1.0), (-1.0, 1.0), |a, b| a.sub(b))
        }),
        case("mul", |d| {
            binary(d, "mul", (-1.0, 1.0), (-1.0, 1.0), |a, b| a.mul(b))
        }),
        case("div", |d| {
            binary(d, "div", (-1.0, 1.0), (0.5, 2.0), |a, b| a.div(b))?;
            binary(
                d,
                "div (negative divisor)",
                (-1.0, 1.0),
                (-2.0, -0.5),
                |a, b| a.div(b),
            )
        }),
        case("pow", |d| {
            binary(d, "pow", (0.3, 2.0), (-1.5, 2.5), |a, b| a.pow(b))
        }),
        case("maximum", |d| {
            binary(d, "maximum", (-1.0, 1.0), (-1.0, 1.0), |a, b| a.maximum(b))
        }),
        case("minimum", |d| {
            binary(d, "minimum", (-1.0, 1.0), (-1.0, 1.0), |a, b| a.minimum(b))
        }),
        case("operators", |d| {
            let x = [input((3, 4), d, 1)?, input(4, d, 2)?];
            check_grad("operators", &x, |xs| {
                let s = (&xs[0] + &xs[1])?;
                let p = (&s * &xs[0])?;
                let q = (&p - &xs[1])?;
                (&q / 3.0)?.neg()
            })
        }),
        case("same_input_twice", |d| {
            let x = [input((3, 4), d, 3)?];
            check_grad("x*x", &x, |xs| xs[0].mul(&xs[0]))?;
            check_grad("x*x + exp(x) - x", &x, |xs| {
                xs[0].mul(&xs[0])?.add(&xs[0].exp()?)?.sub(&xs[0])
            })
        }),
        // ---- where / masked_fill ----
        case("where_cond", |d| {
            let x = [input((3, 4), d, 4)?, input((3, 4), d, 5)?];
            check_grad("where", &x, |xs| {
                let c = det_tensor((3, 4), DType::F64, xs[0].device(), 99)?.gt_scalar(0.0)?;
                c.where_cond(&xs[0], &xs[1])
            })?;
            // Broadcast condition and branches: [3, 1] cond, [3, 4] true, [4] false.
            let x = [input((3, 4), d, 6)?, input(4, d, 7)?];
            check_grad("where (broadcast)", &x, |xs| {
                let c = Tensor::from_vec(vec![1u8, 0, 1], (3, 1), xs[0].device())?;
                c.where_cond(&xs[0], &xs[1])
            })?;
            let x = [input((2, 1), d, 8)?, input((2, 3), d, 9)?];
            check_grad("where (broadcast true branch)", &x, |xs| {
                let c = Tensor::from_vec(vec![1u8, 0, 1, 0, 0, 1], (2, 3), xs[0].device())?;
                c.where_cond(&xs[0], &xs[1])
            })
        }),
        case("masked_fill", |d| {
            let x = [input((3, 4), d, 10)?];
            check_grad("masked_fill", &x, |xs| {
                let m = det_tensor((3, 4), DType::F64, xs[0].device(), 98)?.lt_scalar(-0.2)?;
                xs[0].masked_fill(&m, 2.5)
            })?;
            check_grad("masked_fill (broadcast mask)", &x, |xs| {
                let m = Tensor::from_vec(vec![0u8, 1, 1, 0], 4, xs[0].device())?;
                xs[0].masked_fill(&m, f64::NEG_INFINITY)?.exp()
            })
        }),
        // ---- reductions ----
        case("sum", |d| {
            reduce(
                d,
                "sum",
                &[
                    |x| x.sum(1),
                    |x| x.sum_keepdim(1),
                    |x| x.sum([0, 2]),
                    |x| x.sum_keepdim([0, 2]),
                    |x| x.sum_all(),
                    |x| x.sum(-1),
                ],
            )
        }),
        case("mean", |d| {
            reduce(
                d,
                "mean",
                &[
                    |x| x.mean(1),
                    |x| x.mean_keepdim(0),
                    |x| x.mean([0, 2]),
                    |x| x.mean_keepdim([1, 2]),
                    |x| x.mean_all(),
                ],
            )
        }),
        case("max", |d| {
            reduce(
                d,
                "max",
                &[
                    |x| x.max(1),
                    |x| x.max_keepdim(2),
                    |x| x.max([0, 2]),
                    |x| x.max_keepdim([0, 1]),
                    |x| x.max(crate::AllDims),
                ],
            )
        }),
        case("min", |d| {
            reduce(
                d,
                "min",
                &[
                    |x| x.min(0),
                    |x| x.min_keepdim(1),
                    |x| x.min([1, 2]),
                    |x| x.min_keepdim([0, 2]),
                    |x| x.min(crate::AllDims),
                ],
            )
        }),
        case("var_std", |d| {
            reduce(
                d,
                "var/std",
                &[
                    |x| x.var(1, 1),
                    |x| x.var(1, 0),
                    |x| x.var_keepdim([0, 2], 1),
                    |x| x.var_keepdim(2, 0),
                    |x| x.std(1, 1),
                    |x| x.std(2, 0),
                    |x| x.std_keepdim([0, 1], 1),
                    |x| x.std_keepdim(0, 0),
                ],
            )
        }),
        case("logsumexp", |d| {
            reduce(
                d,
                "logsumexp",
                &[
                    |x| x.logsumexp(1),
                    |x| x.logsumexp_keepdim(2),
                    |x| x.logsumexp([0, 2]),
                    |x| x.logsumexp_keepdim([0, 1, 2]),
                ],
            )
        }),
        case("cumsum", |d| {
            reduce(
                d,
                "cumsum",
                &[|x| x.cumsum(0), |x| x.cumsum(1), |x| x.cumsum(-1)],
            )
        }),
        // ---- matmul ----
        case("matmul_2d", |d| {
            matmul(d, &[3, 4], &[4, 5])?;
            matmul(d, &[1, 3], &[3, 1])
        }),
        case("matmul_batched", |d| matmul(d, &[2, 3, 4], &[2, 4, 5])),
        case("matmul_broadcast_batch", |d| {
            matmul(d, &[2, 1, 3, 4], &[3, 4, 2])?;
            matmul(d, &[3, 4], &[2, 4, 2])
        }),
        case("matmul_1d_operand", |d| {
            matmul(d, &[4], &[4, 5])?;
            matmul(d, &[3, 4], &[4])?;
            matmul(d, &[2, 3, 4], &[4])?;
            matmul(d, &[4], &[2, 4, 3])
        }),
        // PyTorch: vector · vector is a 0-d dot product.
        case("matmul_vec_vec", |d| {
            let x = [input(5, d, 20)?, input(5, d, 21)?];
            let y = x[0].matmul(&x[1])?;
            if !y.dims().is_empty() {
                return Err(Error::msg(format!(
                    "matmul [5]·[5]: shape {:?}, expected []",
                    y.dims()
                )));
            }
            check_grad("matmul [5]·[5]", &x, |xs| xs[0].matmul(&xs[1]))
        }),
        // ---- softmax ----
        case("softmax", |d| {
            let x = [input((3, 5), d, 22)?];
            check_grad("softmax(-1)", &x, |xs| xs[0].softmax(-1))?;
            check_grad("softmax(0)", &x, |xs| xs[0].softmax(0))?;
            let x = [input_in((2, 3, 4), -3.0, 3.0, d, 23)?];
            check_grad("softmax(1) of [2, 3, 4]", &x, |xs| xs[0].softmax(1))
        }),
        case("log_softmax", |d| {
            let x = [input((3, 5), d, 24)?];
            check_grad("log_softmax(-1)", &x, |xs| xs[0].log_softmax(-1))?;
            let x = [input_in((2, 3, 4), -3.0, 3.0, d, 25)?];
            check_grad("log_softmax(1) of [2, 3, 4]", &x, |xs| xs[0].log_softmax(1))
        }),
    ]
}

/// One unary op over three shapes (1-D, 2-D, 3-D) for each input range.
fn unary(d: &Device, name: &str, ranges: &[(f64, f64)], f: Unary) -> Result<()> {
    for (r, &(lo, hi)) in ranges.iter().enumerate() {
        for (i, shape) in [vec![7], vec![3, 4], vec![2, 3, 2]].into_iter().enumerate() {
            let x = input_in(shape.clone(), lo, hi, d, 1000 + 10 * r as u64 + i as u64)?;
            check_grad(
                &format!("{name} on {shape:?} in [{lo}, {hi})"),
                &[x],
                |xs| f(&xs[0]),
            )?;
        }
    }
    Ok(())
}

/// One binary op over equal and broadcast shape pairs.
fn binary(d: &Device, name: &str, ra: (f64, f64), rb: (f64, f64), f: Binary) -> Result<()> {
    let pairs: [(&[usize], &[usize]); 6] = [
        (&[3, 4], &[3, 4]),
        (&[3, 4], &[4]),
        (&[3, 1], &[1, 4]),
        (&[2, 1, 3], &[4, 1]),
        (&[], &[2, 3]),
        (&[2, 3], &[1]),
    ];
    for (i, (sa, sb)) in pairs.into_iter().enumerate() {
        let a = input_in(sa, ra.0, ra.1, d, 2000 + i as u64)?;
        let b = input_in(sb, rb.0, rb.1, d, 2100 + i as u64)?;
        check_grad(&format!("{name} {sa:?} with {sb:?}"), &[a, b], |xs| {
            f(&xs[0], &xs[1])
        })?;
    }
    Ok(())
}

/// Each reduction applied to a [2, 3, 4] input.
fn reduce(d: &Device, name: &str, fs: &[Unary]) -> Result<()> {
    for (i, f) in fs.iter().enumerate() {
        let x = input((2, 3, 4), d, 3000 + i as u64)?;
        check_grad(&format!("{name} #{i} on [2, 3, 4]"), &[x], |xs| f(&xs[0]))?;
    }
    Ok(())
}

fn matmul(d: &Device, sa: &[usize], sb: &[usize]) -> Result<()> {
    let x = [input(sa, d, 4000)?, input(sb, d, 4001)?];
    check_grad(&format!("matmul {sa:?} x {sb:?}"), &x, |xs| {
        xs[0].matmul(&xs[1])
    })
}
