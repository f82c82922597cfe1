//! Conformance cases: gradients. Every differentiable op is checked against central finite
//! differences in f64 (`gradcheck` repeats each check on transposed and narrowed inputs), over
//! several shapes including broadcasting; the last cases pin down the semantics of autograd
//! itself (accumulation, detach, no_grad, custom ops, gradient stores, in-place updates).
//!
//! Inputs are deterministic and chosen away from kinks (0 for relu/abs, the bounds of clamp,
//! ties for max/min), where a finite difference would straddle two branches.

use std::sync::Arc;

use super::gradcheck::{check_grad, check_grad_tol, input, input_in};
use super::{assert_close, assert_close_slices, det_tensor, Case};
use crate::{
    no_grad, AttentionParams, CustomOp, DType, Device, Error, GradStore, Result, Shape, Tensor,
    UnfoldParams, Var,
};

type Unary = fn(&Tensor) -> Result<Tensor>;
type Binary = fn(&Tensor, &Tensor) -> Result<Tensor>;

macro_rules! cases {
    ($($name:literal => $run:expr),* $(,)?) => {
        vec![$(Case { group: "grad", name: $name, run: $run }),*]
    };
}

pub(super) fn cases() -> Vec<Case> {
    let mut v = cases![
        // ---- elementwise unary ----
        "neg" => |d| unary(d, "neg", &[(-1.0, 1.0)], |x| x.neg()),
        "abs" => |d| unary(d, "abs", &[(-1.0, 1.0)], |x| x.abs()),
        "exp" => |d| unary(d, "exp", &[(-2.0, 2.0)], |x| x.exp()),
        "log" => |d| unary(d, "log", &[(0.2, 3.0)], |x| x.log()),
        "sqrt" => |d| unary(d, "sqrt", &[(0.2, 3.0)], |x| x.sqrt()),
        "rsqrt" => |d| unary(d, "rsqrt", &[(0.2, 3.0)], |x| x.rsqrt()),
        "recip" => |d| unary(d, "recip", &[(0.3, 2.0), (-2.0, -0.3)], |x| x.recip()),
        "sqr" => |d| unary(d, "sqr", &[(-2.0, 2.0)], |x| x.sqr()),
        "sin" => |d| unary(d, "sin", &[(-3.0, 3.0)], |x| x.sin()),
        "cos" => |d| unary(d, "cos", &[(-3.0, 3.0)], |x| x.cos()),
        "tanh" => |d| unary(d, "tanh", &[(-3.0, 3.0)], |x| x.tanh()),
        "sigmoid" => |d| unary(d, "sigmoid", &[(-4.0, 4.0)], |x| x.sigmoid()),
        "relu" => |d| unary(d, "relu", &[(-1.0, 1.0)], |x| x.relu()),
        "gelu" => |d| unary(d, "gelu", &[(-3.0, 3.0)], |x| x.gelu()),
        "gelu_tanh" => |d| unary(d, "gelu_tanh", &[(-3.0, 3.0)], |x| x.gelu_tanh()),
        "erf" => |d| unary(d, "erf", &[(-2.5, 2.5)], |x| x.erf()),
        "silu" => |d| unary(d, "silu", &[(-4.0, 4.0)], |x| x.silu()),
        // Both sides of PyTorch's linear threshold at 20.
        "softplus" => |d| unary(d, "softplus", &[(-3.0, 3.0), (15.0, 25.0), (-25.0, -15.0)], |x| x.softplus()),
        "elu" => |d| unary(d, "elu", &[(-2.0, 2.0)], |x| x.elu(1.3)),
        "leaky_relu" => |d| unary(d, "leaky_relu", &[(-1.0, 1.0)], |x| x.leaky_relu(0.05)),
        "clamp" => |d| unary(d, "clamp", &[(-1.0, 1.0)], |x| x.clamp(-0.5, 0.4)),
        "affine" => |d| unary(d, "affine", &[(-1.0, 1.0)], |x| x.affine(1.7, -0.3)),
        "powf" => |d| {
            unary(d, "powf 2.5", &[(0.2, 2.0)], |x| x.powf(2.5))?;
            unary(d, "powf -1.5", &[(0.2, 2.0)], |x| x.powf(-1.5))?;
            unary(d, "powf 3 (negative base)", &[(-1.5, 1.5)], |x| x.powf(3.0))
        },
        // Piecewise-constant ops: zero gradient away from the jumps.
        "floor_ceil_round_sign" => |d| {
            unary(d, "floor", &[(-2.0, 2.0)], |x| x.floor())?;
            unary(d, "ceil", &[(-2.0, 2.0)], |x| x.ceil())?;
            unary(d, "round", &[(-2.0, 2.0)], |x| x.round())?;
            unary(d, "sign", &[(-2.0, 2.0)], |x| x.sign())
        },
        "composite_unary_chain" => |d| unary(d, "chain", &[(-1.0, 1.0)], |x| x.tanh()?.exp()?.mul(&x.sin()?)),
        // ---- elementwise binary (with broadcasting) ----
        "add" => |d| binary(d, "add", (-1.0, 1.0), (-1.0, 1.0), |a, b| a.add(b)),
        "sub" => |d| binary(d, "sub", (-1.0, 1.0), (-1.0, 1.0), |a, b| a.sub(b)),
        "mul" => |d| binary(d, "mul", (-1.0, 1.0), (-1.0, 1.0), |a, b| a.mul(b)),
        "div" => |d| {
            binary(d, "div", (-1.0, 1.0), (0.5, 2.0), |a, b| a.div(b))?;
            binary(d, "div (negative divisor)", (-1.0, 1.0), (-2.0, -0.5), |a, b| a.div(b))
        },
        "pow" => |d| binary(d, "pow", (0.3, 2.0), (-1.5, 2.5), |a, b| a.pow(b)),
        "maximum" => |d| binary(d, "maximum", (-1.0, 1.0), (-1.0, 1.0), |a, b| a.maximum(b)),
        "minimum" => |d| binary(d, "minimum", (-1.0, 1.0), (-1.0, 1.0), |a, b| a.minimum(b)),
        "operators" => |d| {
            let x = [input((3, 4), d, 1)?, input(4, d, 2)?];
            check_grad("operators", &x, |xs| {
                let s = (&xs[0] + &xs[1])?;
                let p = (&s * &xs[0])?;
                let q = (&p - &xs[1])?;
                (&q / 3.0)?.neg()
            })
        },
        "same_input_twice" => |d| {
            let x = [input((3, 4), d, 3)?];
            check_grad("x*x", &x, |xs| xs[0].mul(&xs[0]))?;
            check_grad("x*x + exp(x) - x", &x, |xs| xs[0].mul(&xs[0])?.add(&xs[0].exp()?)?.sub(&xs[0]))
        },
        // ---- where / masked_fill ----
        "where_cond" => |d| {
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
        },
        "masked_fill" => |d| {
            let x = [input((3, 4), d, 10)?];
            check_grad("masked_fill", &x, |xs| {
                let m = det_tensor((3, 4), DType::F64, xs[0].device(), 98)?.lt_scalar(-0.2)?;
                xs[0].masked_fill(&m, -1e9)
            })?;
            check_grad("masked_fill (broadcast mask)", &x, |xs| {
                let m = Tensor::from_vec(vec![0u8, 1, 1, 0], 4, xs[0].device())?;
                xs[0].masked_fill(&m, f64::NEG_INFINITY)?.exp()
            })
        },
        // ---- reductions ----
        "sum" => |d| reduce(d, "sum", &[
            |x| x.sum(1), |x| x.sum_keepdim(1), |x| x.sum([0, 2]), |x| x.sum_keepdim([0, 2]),
            |x| x.sum_all(), |x| x.sum(-1),
        ]),
        "mean" => |d| reduce(d, "mean", &[
            |x| x.mean(1), |x| x.mean_keepdim(0), |x| x.mean([0, 2]), |x| x.mean_keepdim([1, 2]),
            |x| x.mean_all(),
        ]),
        "max" => |d| reduce(d, "max", &[
            |x| x.max(1), |x| x.max_keepdim(2), |x| x.max([0, 2]), |x| x.max_keepdim([0, 1]),
            |x| x.max(crate::AllDims),
        ]),
        "min" => |d| reduce(d, "min", &[
            |x| x.min(0), |x| x.min_keepdim(1), |x| x.min([1, 2]), |x| x.min_keepdim([0, 2]),
            |x| x.min(crate::AllDims),
        ]),
        "var_std" => |d| reduce(d, "var/std", &[
            |x| x.var(1, 1), |x| x.var(1, 0), |x| x.var_keepdim([0, 2], 1), |x| x.var_keepdim(2, 0),
            |x| x.std(1, 1), |x| x.std(2, 0), |x| x.std_keepdim([0, 1], 1), |x| x.std_keepdim(0, 0),
        ]),
        "logsumexp" => |d| reduce(d, "logsumexp", &[
            |x| x.logsumexp(1), |x| x.logsumexp_keepdim(2), |x| x.logsumexp([0, 2]),
            |x| x.logsumexp_keepdim([0, 1, 2]),
        ]),
        "cumsum" => |d| reduce(d, "cumsum", &[|x| x.cumsum(0), |x| x.cumsum(1), |x| x.cumsum(-1)]),
        // ---- matmul ----
        "matmul_2d" => |d| {
            matmul(d, &[3, 4], &[4, 5])?;
            matmul(d, &[1, 3], &[3, 1])
        },
        "matmul_batched" => |d| matmul(d, &[2, 3, 4], &[2, 4, 5]),
        "matmul_broadcast_batch" => |d| {
            matmul(d, &[2, 1, 3, 4], &[3, 4, 2])?;
            matmul(d, &[3, 4], &[2, 4, 2])
        },
        "matmul_1d_operand" => |d| {
            matmul(d, &[4], &[4, 5])?;
            matmul(d, &[3, 4], &[4])?;
            matmul(d, &[2, 3, 4], &[4])?;
            matmul(d, &[4], &[2, 4, 3])
        },
        // PyTorch: vector · vector is a 0-d dot product.
        "matmul_vec_vec" => |d| {
            let x = [input(5, d, 20)?, input(5, d, 21)?];
            let y = x[0].matmul(&x[1])?;
            if !y.dims().is_empty() {
                return Err(Error::msg(format!("matmul [5]·[5]: shape {:?}, expected []", y.dims())));
            }
            check_grad("matmul [5]·[5]", &x, |xs| xs[0].matmul(&xs[1]))
        },
        // ---- softmax ----
        "softmax" => |d| {
            let x = [input((3, 5), d, 22)?];
            check_grad("softmax(-1)", &x, |xs| xs[0].softmax(-1))?;
            check_grad("softmax(0)", &x, |xs| xs[0].softmax(0))?;
            let x = [input_in((2, 3, 4), -3.0, 3.0, d, 23)?];
            check_grad("softmax(1) of [2, 3, 4]", &x, |xs| xs[0].softmax(1))
        },
        "log_softmax" => |d| {
            let x = [input((3, 5), d, 24)?];
            check_grad("log_softmax(-1)", &x, |xs| xs[0].log_softmax(-1))?;
            let x = [input_in((2, 3, 4), -3.0, 3.0, d, 25)?];
            check_grad("log_softmax(1) of [2, 3, 4]", &x, |xs| xs[0].log_softmax(1))
        },
        // ---- indexing ----
        "index_select" => |d| {
            let x = [input((4, 3), d, 26)?];
            check_grad("index_select dim 0 (repeats)", &x, |xs| {
                xs[0].index_select(&Tensor::from_vec(vec![2i64, 0, 2, 3], 4, xs[0].device())?, 0)
            })?;
            check_grad("index_select dim 1 (u32 ids)", &x, |xs| {
                xs[0].index_select(&Tensor::from_vec(vec![1u32, 1, 0, 2, 1], 5, xs[0].device())?, 1)
            })
        },
        "gather" => |d| {
            let x = [input((3, 4), d, 27)?];
            check_grad("gather dim 1", &x, |xs| {
                let ids = Tensor::from_vec(vec![3i64, 0, 1, 1, 2, 2], (3, 2), xs[0].device())?;
                xs[0].gather(&ids, 1)
            })?;
            check_grad("gather dim 0 (ids smaller than src)", &x, |xs| {
                let ids = Tensor::from_vec(vec![2u32, 0, 1, 2, 2, 2], (2, 3), xs[0].device())?;
                xs[0].gather(&ids, 0)
            })
        },
        "scatter_add" => |d| {
            let x = [input((3, 4), d, 28)?, input((2, 4), d, 29)?];
            check_grad("scatter_add dim 0 (w.r.t. dst and src)", &x, |xs| {
                let ids = Tensor::from_vec(vec![0i64, 2, 2, 1, 0, 0, 1, 2], (2, 4), xs[0].device())?;
                xs[0].scatter_add(&ids, &xs[1], 0)
            })?;
            let x = [input((3, 4), d, 30)?, input((3, 2), d, 31)?];
            check_grad("scatter_add dim 1 (duplicates)", &x, |xs| {
                let ids = Tensor::from_vec(vec![3i64, 3, 0, 1, 2, 0], (3, 2), xs[0].device())?;
                xs[0].scatter_add(&ids, &xs[1], 1)
            })
        },
        "index_add" => |d| {
            let x = [input((5, 3), d, 32)?, input((3, 3), d, 33)?];
            check_grad("index_add dim 0 (w.r.t. dst and src)", &x, |xs| {
                let ids = Tensor::from_vec(vec![4i64, 0, 4], 3, xs[0].device())?;
                xs[0].index_add(&ids, &xs[1], 0)
            })?;
            let x = [input((2, 4), d, 34)?, input((2, 3), d, 35)?];
            check_grad("index_add dim 1", &x, |xs| {
                let ids = Tensor::from_vec(vec![1u32, 3, 1], 3, xs[0].device())?;
                xs[0].index_add(&ids, &xs[1], 1)
            })
        },
        "embedding" => |d| {
            let x = [input((5, 3), d, 36)?];
            check_grad("embedding", &x, |xs| {
                let ids = Tensor::from_vec(vec![4i64, 0, 4, 2, 1, 4], (2, 3), xs[0].device())?;
                xs[0].embedding(&ids)
            })
        },
        // ---- views and copies ----
        "reshape" => |d| {
            let x = [input((3, 4), d, 37)?];
            check_grad("reshape", &x, |xs| xs[0].reshape((2, 6)))?;
            check_grad("reshape_infer", &x, |xs| xs[0].reshape_infer(&[-1, 2, 3]))?;
            check_grad("reshape after transpose", &x, |xs| xs[0].t()?.reshape((6, 2)))?;
            check_grad("flatten_all", &x, |xs| xs[0].flatten_all())
        },
        "transpose_permute" => |d| {
            let x = [input((2, 3, 4), d, 38)?];
            check_grad("transpose(0, 2)", &x, |xs| xs[0].transpose(0, 2))?;
            check_grad("t", &x, |xs| xs[0].t())?;
            check_grad("permute", &x, |xs| xs[0].permute([2, 0, 1])?.contiguous())?;
            check_grad("permute then matmul", &x, |xs| {
                let w = det_tensor((2, 3), DType::F64, xs[0].device(), 97)?;
                xs[0].permute([2, 0, 1])?.reshape((4, 6))?.matmul(&w.reshape(6)?)
            })
        },
        "narrow_slice" => |d| {
            let x = [input((4, 5), d, 39)?];
            check_grad("narrow", &x, |xs| xs[0].narrow(1, 1, 3))?;
            check_grad("narrow dim 0", &x, |xs| xs[0].narrow(0, 2, 2))?;
            check_grad("slice (negative bounds)", &x, |xs| xs[0].slice(-1, -4, -1))?;
            check_grad("narrow of narrow", &x, |xs| xs[0].narrow(1, 1, 4)?.narrow(1, 1, 2)?.narrow(0, 1, 2))
        },
        "squeeze_unsqueeze" => |d| {
            let x = [input((3, 1, 4), d, 40)?];
            check_grad("squeeze", &x, |xs| xs[0].squeeze(1))?;
            check_grad("unsqueeze", &x, |xs| xs[0].unsqueeze(0)?.unsqueeze(-1))
        },
        "broadcast_expand" => |d| {
            let x = [input((3, 1), d, 41)?];
            check_grad("broadcast_as", &x, |xs| xs[0].broadcast_as((2, 3, 4)))?;
            check_grad("expand", &x, |xs| xs[0].expand((3, 5)))?;
            check_grad("broadcast_left", &x, |xs| xs[0].broadcast_left(&[2]))
        },
        "flatten" => |d| {
            let x = [input((2, 3, 2, 2), d, 42)?];
            check_grad("flatten(1, 2)", &x, |xs| xs[0].flatten(1, 2))?;
            check_grad("flatten(0, -1)", &x, |xs| xs[0].flatten(0, -1))
        },
        "chunk_split" => |d| {
            let x = [input((3, 7), d, 43)?];
            check_grad("chunk", &x, |xs| {
                let c = xs[0].chunk(3, 1)?;
                Tensor::cat(&[&c[2].affine(3.0, 0.0)?, &c[0], &c[1].sqr()?], 1)
            })?;
            check_grad("split", &x, |xs| {
                let s = xs[0].split(&[2, 1, 4], 1)?;
                Tensor::cat(&[&s[2], &s[0].exp()?, &s[1]], 1)
            })
        },
        "cat_stack" => |d| {
            let x = [input((2, 3), d, 44)?, input((2, 2), d, 45)?, input((2, 3), d, 46)?];
            check_grad("cat dim 1", &x, |xs| Tensor::cat(&[&xs[0], &xs[1], &xs[2]], 1))?;
            check_grad("cat dim 0", &x, |xs| Tensor::cat(&[&xs[0], &xs[2].sqr()?, &xs[0]], 0))?;
            check_grad("stack dim 0", &x, |xs| Tensor::stack(&[&xs[0], &xs[2]], 0))?;
            check_grad("stack dim -1", &x, |xs| Tensor::stack(&[&xs[2], &xs[0], &xs[2]], -1))
        },
        "pad_with_zeros" => |d| {
            let x = [input((3, 4), d, 47)?];
            check_grad("pad dim 0", &x, |xs| xs[0].pad_with_zeros(0, 1, 2))?;
            check_grad("pad dim 1", &x, |xs| xs[0].pad_with_zeros(1, 2, 0))?;
            check_grad("pad with value", &x, |xs| xs[0].pad_with_value(1, 1, 1, -3.0))
        },
        "contiguous_copy" => |d| {
            let x = [input((3, 4), d, 48)?];
            check_grad("contiguous", &x, |xs| xs[0].t()?.contiguous())?;
            check_grad("copy", &x, |xs| xs[0].copy()?.mul(&xs[0]))
        },
        "to_dtype_round_trip" => |d| {
            // f32 rounding moves the inputs by ~3e-8 against a step of 1e-6: a loose tolerance.
            let x = [input((3, 4), d, 49)?];
            check_grad_tol("f64 -> f32 -> f64", &x, 0.1, 0.1, |xs| {
                xs[0].to_dtype(DType::F32)?.sqr()?.to_dtype(DType::F64)
            })?;
            // The cast passes gradients straight through: exactly the upstream gradient, rounded
            // to f32 on its way through the f32 node.
            let v = Var::from_tensor(&x[0])?;
            let w = det_tensor((3, 4), DType::F64, d, 96)?;
            let g = v.to_dtype(DType::F32)?.to_dtype(DType::F64)?.mul(&w)?.sum_all()?.backward()?;
            let gv = g.get(&v).ok_or_else(|| Error::msg("no gradient through to_dtype"))?;
            let want = w.to_dtype(DType::F32)?.to_dtype(DType::F64)?;
            assert_close("to_dtype gradient", gv, &want, 0.0, 0.0)
        },
        "to_device_same" => |d| {
            let x = [input((2, 3), d, 50)?];
            check_grad("to_device (same device)", &x, |xs| xs[0].to_device(d)?.sqr())
        },
        // ---- convolutions ----
        "conv1d" => |d| {
            conv(d, "conv1d", &[2, 4, 7], &[6, 2, 3], true, |x, w, b| x.conv1d(w, b, 2, 1, 2, 2))?;
            conv(d, "conv1d plain", &[1, 2, 6], &[3, 2, 3], false, |x, w, b| x.conv1d(w, b, 1, 0, 1, 1))?;
            conv(d, "conv1d depthwise", &[1, 3, 6], &[3, 1, 2], true, |x, w, b| x.conv1d(w, b, 1, 1, 1, 3))
        },
        "conv2d" => |d| {
            conv(d, "conv2d plain", &[1, 2, 5, 4], &[3, 2, 3, 3], false, |x, w, b| x.conv2d(w, b, 1, 0, 1, 1))?;
            conv(d, "conv2d stride 2 pad 1", &[2, 2, 5, 5], &[2, 2, 3, 3], true, |x, w, b| x.conv2d(w, b, 2, 1, 1, 1))?;
            conv(d, "conv2d dilation 2", &[1, 2, 6, 5], &[2, 2, 2, 2], false, |x, w, b| x.conv2d(w, b, 1, 1, 2, 1))
        },
        "conv2d_groups" => |d| {
            conv(d, "conv2d groups 2", &[1, 4, 4, 4], &[2, 2, 3, 3], true, |x, w, b| x.conv2d(w, b, 1, 1, 1, 2))?;
            conv(d, "conv2d depthwise", &[1, 3, 5, 4], &[3, 1, 3, 3], false, |x, w, b| x.conv2d(w, b, 1, 1, 1, 3))?;
            conv(d, "conv2d depthwise multiplier 2", &[1, 2, 4, 4], &[4, 1, 2, 2], true, |x, w, b| x.conv2d(w, b, 2, 0, 1, 2))
        },
        "conv3d" => |d| {
            conv(d, "conv3d plain", &[1, 2, 3, 4, 3], &[2, 2, 2, 2, 2], true, |x, w, b| x.conv3d(w, b, 1, 0, 1, 1))?;
            conv(d, "conv3d stride/pad/groups", &[1, 2, 4, 3, 3], &[2, 1, 2, 2, 2], false, |x, w, b| x.conv3d(w, b, 2, 1, 1, 2))
        },
        "conv_transpose1d" => |d| {
            conv(d, "conv_transpose1d stride 2 pad 1 out_pad 1", &[1, 4, 5], &[4, 3, 3], true, |x, w, b| x.conv_transpose1d(w, b, 2, 1, 1, 1, 1))?;
            conv(d, "conv_transpose1d groups 2 stride 3 out_pad 2", &[2, 4, 4], &[4, 1, 3], false, |x, w, b| x.conv_transpose1d(w, b, 3, 1, 2, 1, 2))?;
            conv(d, "conv_transpose1d dilation 2", &[1, 2, 4], &[2, 2, 2], false, |x, w, b| x.conv_transpose1d(w, b, 1, 0, 1, 2, 1))
        },
        "conv_transpose2d" => |d| {
            conv(d, "conv_transpose2d stride 2 pad 1 out_pad 1", &[1, 2, 3, 3], &[2, 2, 3, 3], true, |x, w, b| x.conv_transpose2d(w, b, 2, 1, 1, 1, 1))?;
            conv(d, "conv_transpose2d groups 2", &[1, 4, 3, 2], &[4, 1, 2, 2], false, |x, w, b| x.conv_transpose2d(w, b, 2, 0, 0, 1, 2))
        },
        // ---- pooling ----
        "max_pool" => |d| {
            pool(d, "max_pool1d k3 s2 p1", &[2, 3, 7], |x| x.max_pool1d(3, 2, 1))?;
            pool(d, "max_pool1d [C, L]", &[3, 6], |x| x.max_pool1d(2, 2, 0))?;
            pool(d, "max_pool2d k3 s2 p1", &[1, 2, 5, 5], |x| x.max_pool2d(3, 2, 1))?;
            pool(d, "max_pool2d k2 s1 (overlapping)", &[2, 1, 4, 3], |x| x.max_pool2d(2, 1, 0))
        },
        "avg_pool" => |d| {
            pool(d, "avg_pool1d k3 s2 p1", &[2, 3, 7], |x| x.avg_pool1d(3, 2, 1))?;
            pool(d, "avg_pool1d [C, L]", &[3, 6], |x| x.avg_pool1d(2, 2, 0))?;
            pool(d, "avg_pool2d k3 s2 p1", &[1, 2, 5, 5], |x| x.avg_pool2d(3, 2, 1))?;
            pool(d, "avg_pool2d k2 s1", &[2, 1, 4, 3], |x| x.avg_pool2d(2, 1, 0))
        },
        "adaptive_pool" => |d| {
            pool(d, "adaptive_avg_pool1d dividing", &[2, 3, 8], |x| x.adaptive_avg_pool1d(4))?;
            pool(d, "adaptive_avg_pool1d non-dividing", &[2, 3, 7], |x| x.adaptive_avg_pool1d(3))?;
            pool(d, "adaptive_max_pool1d dividing", &[2, 3, 8], |x| x.adaptive_max_pool1d(2))?;
            pool(d, "adaptive_max_pool1d non-dividing", &[2, 3, 7], |x| x.adaptive_max_pool1d(4))?;
            pool(d, "adaptive_avg_pool2d mixed", &[1, 2, 6, 5], |x| x.adaptive_avg_pool2d((3, 2)))?;
            pool(d, "adaptive_max_pool2d mixed", &[1, 2, 6, 5], |x| x.adaptive_max_pool2d((2, 3)))
        },
        "unfold_fold" => |d| {
            let p = UnfoldParams { kernel: vec![2, 3], stride: vec![1, 2], padding: vec![1, 0], dilation: vec![1, 1], pad_value: 0.0 };
            let x = [input((1, 2, 4, 5), d, 51)?];
            check_grad("unfold_patches 2d", &x, |xs| xs[0].unfold_patches(&p))?;
            let p1 = UnfoldParams { kernel: vec![3], stride: vec![2], padding: vec![1], dilation: vec![2], pad_value: 0.0 };
            let x = [input((2, 2, 7), d, 52)?];
            check_grad("unfold_patches 1d dilated", &x, |xs| xs[0].unfold_patches(&p1))?;
            // fold: [1, 2·6, L] back to [1, 2, 4, 5]; L = 5·2 for this geometry.
            let l = p.out_spatial(&[4, 5]).map(|v| v.iter().product::<usize>()).unwrap_or(0);
            let x = [input((1, 12, l), d, 53)?];
            check_grad("fold_patches 2d", &x, |xs| xs[0].fold_patches(&p, &[4, 5]))
        },
        // ---- normalisation ----
        "layer_norm" => |d| {
            let x = [input((3, 5), d, 54)?, input(5, d, 55)?, input(5, d, 56)?];
            check_grad("layer_norm affine", &x, |xs| xs[0].layer_norm(Some(&xs[1]), Some(&xs[2]), 1e-5))?;
            let x = [input((2, 2, 4), d, 57)?];
            check_grad("layer_norm plain", &x, |xs| xs[0].layer_norm(None, None, 1e-5))
        },
        "rms_norm" => |d| {
            let x = [input((3, 5), d, 58)?, input(5, d, 59)?];
            check_grad("rms_norm weight", &x, |xs| xs[0].rms_norm(Some(&xs[1]), 1e-6))?;
            let x = [input((2, 2, 4), d, 60)?];
            check_grad("rms_norm plain", &x, |xs| xs[0].rms_norm(None, 1e-6))
        },
        "group_norm" => |d| {
            let x = [input((2, 4, 3), d, 61)?, input(4, d, 62)?, input(4, d, 63)?];
            check_grad("group_norm affine", &x, |xs| xs[0].group_norm(2, Some(&xs[1]), Some(&xs[2]), 1e-5))?;
            let x = [input((2, 6, 2, 2), d, 64)?];
            check_grad("group_norm 4-D plain", &x, |xs| xs[0].group_norm(3, None, None, 1e-5))
        },
        "batch_norm" => |d| {
            let x = [input((3, 2, 4), d, 65)?, input(2, d, 66)?, input(2, d, 67)?];
            check_grad("batch_norm training (input, weight, bias)", &x, |xs| {
                xs[0].batch_norm(None, None, Some(&xs[1]), Some(&xs[2]), true, 0.1, 1e-5)
            })?;
            let x = [input((2, 3, 2, 2), d, 68)?];
            check_grad("batch_norm training with running stats", &x, |xs| {
                let rm = Tensor::zeros(3, DType::F64, xs[0].device())?;
                let rv = Tensor::ones(3, DType::F64, xs[0].device())?;
                xs[0].batch_norm(Some(&rm), Some(&rv), None, None, true, 0.1, 1e-5)
            })?;
            let x = [input((2, 3, 2), d, 69)?, input(3, d, 70)?];
            check_grad("batch_norm eval", &x, |xs| {
                let rm = det_tensor(3, DType::F64, xs[0].device(), 95)?;
                let rv = input_in(3, 0.5, 2.0, xs[0].device(), 94)?;
                xs[0].batch_norm(Some(&rm), Some(&rv), Some(&xs[1]), None, false, 0.1, 1e-5)
            })
        },
        "dropout" => dropout,
        // ---- rope and attention ----
        "rope" => |d| {
            for interleaved in [false, true] {
                let x = [input((1, 2, 3, 4), d, 71)?, input((3, 2), d, 72)?, input((3, 2), d, 73)?];
                let name = if interleaved { "rope interleaved (x, cos, sin)" } else { "rope halves (x, cos, sin)" };
                check_grad(name, &x, |xs| xs[0].rope(&xs[1], &xs[2], interleaved))?;
                let x = [input((2, 1, 2, 6), d, 74)?, input((2, 3), d, 75)?, input((2, 3), d, 76)?];
                check_grad(name, &x, |xs| xs[0].rope(&xs[1], &xs[2], interleaved))?;
            }
            Ok(())
        },
        "attention_plain" => |d| attention(d, "plain", [1, 2, 3, 4], [1, 2, 5, 4], 3, AttentionParams { scale: 0.5, ..Default::default() }),
        "attention_causal" => |d| attention(d, "causal", [2, 1, 4, 3], [2, 1, 4, 3], 3, AttentionParams { scale: 0.6, causal: true, ..Default::default() }),
        "attention_causal_lq_lt_lk" => |d| attention(d, "causal Lq<Lk", [1, 2, 2, 4], [1, 2, 5, 4], 2, AttentionParams { scale: 0.5, causal: true, ..Default::default() }),
        "attention_gqa" => |d| attention(d, "GQA", [1, 4, 3, 4], [1, 2, 5, 4], 3, AttentionParams { scale: 0.5, causal: true, ..Default::default() }),
        "attention_window" => |d| attention(d, "window 2", [1, 2, 4, 3], [1, 2, 4, 3], 2, AttentionParams { scale: 0.7, window: Some(2), ..Default::default() }),
        "attention_alibi" => |d| {
            let slopes = Tensor::from_vec(vec![0.5f64, 0.25], 2, d)?;
            attention(d, "alibi", [1, 2, 3, 4], [1, 2, 4, 4], 3, AttentionParams { scale: 0.5, causal: true, alibi_slopes: Some(slopes), ..Default::default() })
        },
        "attention_bias_neg_inf" => |d| {
            // An additive [1, Hq, Lq, Lk] bias with −inf entries; query row 1 of head 0 is fully
            // masked (its output and gradients must be exactly zero, not NaN).
            let (lq, lk) = (3, 4);
            let mut b = super::det_values(2 * lq * lk, 93);
            for (i, v) in b.iter_mut().enumerate() {
                let (h, r, c) = (i / (lq * lk), (i / lk) % lq, i % lk);
                if (h == 0 && r == 1) || (h == 1 && c == (r + 1) % lk) || (r == 2 && c == 0) {
                    *v = f64::NEG_INFINITY;
                }
            }
            let bias = Tensor::from_f64s(&b, (1, 2, lq, lk), DType::F64, d)?;
            let p = AttentionParams { scale: 0.5, bias: Some(bias), ..Default::default() };
            attention(d, "bias with -inf", [2, 2, lq, 4], [2, 2, lk, 4], 3, p.clone())?;
            let q = input((2, 2, lq, 4), d, 80)?;
            let (k, v) = (input((2, 2, lk, 4), d, 81)?, input((2, 2, lk, 3), d, 82)?);
            let out = q.scaled_dot_product_attention(&k, &v, &p)?;
            let row = out.narrow(1, 0, 1)?.narrow(2, 1, 1)?.to_f64_vec()?;
            assert_close_slices("fully masked attention row", &row, &vec![0.0; row.len()], 0.0, 0.0)
        },
        // ---- autograd semantics ----
        "autograd_accumulates_reuse" => |d| {
            let x = Var::from_tensor(&input((2, 3), d, 83)?)?;
            let y = x.mul(&x)?.add(&x.sin()?)?.add(&x)?.sum_all()?;
            let g = y.backward()?;
            let want = x.affine(2.0, 1.0)?.add(&x.cos()?)?;
            assert_close("d(x² + sin x + x)", grad_of(&g, &x)?, &want, 1e-12, 1e-12)
        },
        "autograd_detach" => |d| {
            let x = Var::from_tensor(&input((2, 3), d, 84)?)?;
            let xd = x.detach();
            if xd.tracked() {
                return Err(Error::msg("detach() returned a tracked tensor"));
            }
            let g = x.mul(&xd)?.sum_all()?.backward()?;
            // Only the tracked factor contributes: gradient x, not 2x.
            assert_close("d(x·detach(x))", grad_of(&g, &x)?, x.as_tensor(), 1e-12, 1e-12)?;
            let g = x.sqr()?.detach().mul(&x)?.sum_all()?.backward()?;
            assert_close("d(detach(x²)·x)", grad_of(&g, &x)?, &x.sqr()?.detach(), 1e-12, 1e-12)
        },
        "autograd_no_grad" => |d| {
            let x = Var::from_tensor(&input((2, 3), d, 85)?)?;
            let y = {
                let _g = no_grad();
                if crate::grad_enabled() {
                    return Err(Error::msg("grad_enabled() is true inside no_grad"));
                }
                x.mul(&x)?.exp()?.sum_all()?
            };
            if !crate::grad_enabled() {
                return Err(Error::msg("grad_enabled() is still false after the guard dropped"));
            }
            if y.tracked() {
                return Err(Error::msg("a result computed under no_grad is tracked"));
            }
            if y.backward().is_ok() {
                return Err(Error::msg("backward on a result computed under no_grad succeeded"));
            }
            // Recording resumes once the guard is gone.
            if !x.mul(&x)?.tracked() {
                return Err(Error::msg("results are not tracked after no_grad ended"));
            }
            Ok(())
        },
        "autograd_backward_non_scalar" => |d| {
            let x = Var::from_tensor(&input((2, 3), d, 86)?)?;
            match x.sqr()?.backward() {
                Err(e) => {
                    if !e.to_string().contains("backward") || !e.to_string().contains("[2, 3]") {
                        return Err(Error::msg(format!("backward on [2, 3]: message {e:?} names neither the op nor the shape")));
                    }
                }
                Ok(_) => return Err(Error::msg("backward on a [2, 3] tensor succeeded")),
            }
            // backward_with_grad is the vector-Jacobian product for non-scalars.
            let gy = det_tensor((2, 3), DType::F64, d, 92)?;
            let g = x.sqr()?.backward_with_grad(&gy)?;
            assert_close("backward_with_grad", grad_of(&g, &x)?, &x.affine(2.0, 0.0)?.mul(&gy)?, 1e-12, 1e-12)
        },
        "autograd_custom_op" => |d| {
            let x = Var::from_tensor(&input((2, 3), d, 87)?)?;
            match Tensor::apply_custom(&[&x], Arc::new(Cube { with_backward: false })) {
                Err(Error::NoBackward { op: "cube", .. }) => {}
                Err(e) => return Err(Error::msg(format!("custom op without backward: expected NoBackward naming \"cube\", got {e}"))),
                Ok(_) => return Err(Error::msg("custom op without backward accepted a tracked input")),
            }
            // Untracked inputs (or no_grad) may use it freely.
            let y = Tensor::apply_custom(&[&x.detach()], Arc::new(Cube { with_backward: false }))?;
            assert_close("custom op forward", &y, &x.powf(3.0)?.detach(), 1e-12, 1e-12)?;
            {
                let _g = no_grad();
                Tensor::apply_custom(&[&x], Arc::new(Cube { with_backward: false }))?;
            }
            let y = Tensor::apply_custom(&[&x], Arc::new(Cube { with_backward: true }))?;
            if !y.tracked() {
                return Err(Error::msg("custom op with backward: result not tracked"));
            }
            let g = y.sum_all()?.backward()?;
            assert_close("custom op gradient", grad_of(&g, &x)?, &x.sqr()?.affine(3.0, 0.0)?.detach(), 1e-12, 1e-12)?;
            let xs = [input((3, 2), d, 88)?];
            check_grad("custom op in a graph", &xs, |xs| {
                Tensor::apply_custom(&[&xs[0].sin()?], Arc::new(Cube { with_backward: true }))?.mul(&xs[0])
            })
        },
        "autograd_gradstore_accumulate" => |d| {
            let x = Var::from_tensor(&input((2, 3), d, 89)?)?;
            let y = Var::from_tensor(&input(3, d, 90)?)?;
            let mut g1 = x.sqr()?.sum_all()?.backward()?;
            let g2 = x.mul(y.as_tensor())?.sum_all()?.backward()?;
            let want_x = x.affine(2.0, 0.0)?.add(y.as_tensor())?;
            g1.accumulate(g2)?;
            assert_close("accumulated d/dx", grad_of(&g1, &x)?, &want_x, 1e-12, 1e-12)?;
            // y only appears in the second store: its gradient is copied over.
            assert_close("accumulated d/dy", grad_of(&g1, &y)?, &x.sum(0)?.detach(), 1e-12, 1e-12)?;
            let mut empty = GradStore::default();
            empty.accumulate(x.sum_all()?.backward()?)?;
            assert_close("accumulate into empty", grad_of(&empty, &x)?, &x.ones_like()?, 0.0, 0.0)?;
            // A variable the loss does not depend on gets no gradient.
            let z = Var::from_tensor(&input(3, d, 91)?)?;
            if x.sum_all()?.backward()?.get(&z).is_some() {
                return Err(Error::msg("an unrelated variable got a gradient"));
            }
            Ok(())
        },
        "autograd_var_set" => |d| {
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
            assert_close("gradient after Var::set", grad_of(&g, &v)?, &new.affine(2.0, 0.0)?, 1e-12, 1e-12)?;
            if v.set(&input((3, 2), d, 94)?).is_ok() {
                return Err(Error::msg("Var::set with a different shape succeeded"));
            }
            Ok(())
        },
    ];
    v.shrink_to_fit();
    v
}

fn grad_of<'a>(g: &'a GradStore, v: &Var) -> Result<&'a Tensor> {
    g.get(v.as_tensor())
        .ok_or_else(|| Error::msg("the variable got no gradient"))
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

/// A convolution w.r.t. input, weight and (optionally) bias.
fn conv(
    d: &Device,
    name: &str,
    sx: &[usize],
    sw: &[usize],
    bias: bool,
    f: fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>,
) -> Result<()> {
    let x = input(sx, d, 5000)?;
    let w = input(sw, d, 5001)?;
    if bias {
        // The bias has one entry per output channel; ask the op for its output shape.
        let cout = f(&x, &w, None)?.dims()[1];
        let b = input(cout, d, 5002)?;
        check_grad(name, &[x, w, b], |xs| f(&xs[0], &xs[1], Some(&xs[2])))
    } else {
        check_grad(name, &[x, w], |xs| f(&xs[0], &xs[1], None))
    }
}

fn pool(d: &Device, name: &str, sx: &[usize], f: Unary) -> Result<()> {
    let x = input(sx, d, 6000)?;
    check_grad(name, &[x], |xs| f(&xs[0]))
}

fn attention(
    d: &Device,
    name: &str,
    sq: [usize; 4],
    sk: [usize; 4],
    dv: usize,
    p: AttentionParams,
) -> Result<()> {
    let sv = Shape::from(vec![sk[0], sk[1], sk[2], dv]);
    let x = [
        input(sq, d, 7000)?,
        input(sk, d, 7001)?,
        input(sv, d, 7002)?,
    ];
    check_grad(&format!("attention {name} (q, k, v)"), &x, |xs| {
        xs[0].scaled_dot_product_attention(&xs[1], &xs[2], &p)
    })
}

/// Dropout's mask is random, so instead of finite differences: the gradient must be exactly
/// the upstream gradient times keep/(1−p), with the same mask as the forward pass.
fn dropout(d: &Device) -> Result<()> {
    let p = 0.3;
    let x = Var::from_tensor(&input_in((10, 20), 0.5, 1.5, d, 8000)?)?;
    let y = x.dropout(p, true)?;
    let w = det_tensor((10, 20), DType::F64, d, 8001)?;
    let g = y.mul(&w)?.sum_all()?.backward()?;
    let keep = y.ne_scalar(0.0)?.to_dtype(DType::F64)?;
    let scale = keep.affine(1.0 / (1.0 - p), 0.0)?;
    assert_close(
        "dropout forward = x·keep/(1−p)",
        &y.detach(),
        &x.mul(&scale)?.detach(),
        1e-12,
        1e-12,
    )?;
    assert_close(
        "dropout gradient = w·keep/(1−p)",
        grad_of(&g, &x)?,
        &w.mul(&scale)?,
        1e-12,
        1e-12,
    )?;
    let kept = keep.mean_all()?.to_f64()?;
    if !(0.55..=0.85).contains(&kept) {
        return Err(Error::msg(format!(
            "dropout p={p}: kept fraction {kept} of 200 (expected ~0.7)"
        )));
    }
    // Evaluation mode is the identity, and so is its gradient.
    let g = x.dropout(p, false)?.mul(&w)?.sum_all()?.backward()?;
    assert_close("dropout eval gradient", grad_of(&g, &x)?, &w, 0.0, 0.0)?;
    // p = 1 drops everything.
    let g = x.dropout(1.0, true)?.mul(&w)?.sum_all()?.backward()?;
    assert_close(
        "dropout p=1 gradient",
        grad_of(&g, &x)?,
        &w.zeros_like()?,
        0.0,
        0.0,
    )
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
