//! Gradient cases: indexing, views, copies, casts and moves.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        // ---- indexing ----
        case("index_select", |d| {
            let x = [input((4, 3), d, 26)?];
            check_grad("index_select dim 0 (repeats)", &x, |xs| {
                xs[0].index_select(
                    &Tensor::from_vec(vec![2i64, 0, 2, 3], 4, xs[0].device())?,
                    0,
                )
            })?;
            check_grad("index_select dim 1 (u32 ids)", &x, |xs| {
                xs[0].index_select(
                    &Tensor::from_vec(vec![1u32, 1, 0, 2, 1], 5, xs[0].device())?,
                    1,
                )
            })
        }),
        case("gather", |d| {
            let x = [input((3, 4), d, 27)?];
            check_grad("gather dim 1", &x, |xs| {
                let ids = Tensor::from_vec(vec![3i64, 0, 1, 1, 2, 2], (3, 2), xs[0].device())?;
                xs[0].gather(&ids, 1)
            })?;
            check_grad("gather dim 0 (ids smaller than src)", &x, |xs| {
                let ids = Tensor::from_vec(vec![2u32, 0, 1, 2, 2, 2], (2, 3), xs[0].device())?;
                xs[0].gather(&ids, 0)
            })
        }),
        case("scatter_add", |d| {
            let x = [input((3, 4), d, 28)?, input((2, 4), d, 29)?];
            check_grad("scatter_add dim 0 (w.r.t. dst and src)", &x, |xs| {
                let ids =
                    Tensor::from_vec(vec![0i64, 2, 2, 1, 0, 0, 1, 2], (2, 4), xs[0].device())?;
                xs[0].scatter_add(&ids, &xs[1], 0)
            })?;
            let x = [input((3, 4), d, 30)?, input((3, 2), d, 31)?];
            check_grad("scatter_add dim 1 (duplicates)", &x, |xs| {
                let ids = Tensor::from_vec(vec![3i64, 3, 0, 1, 2, 0], (3, 2), xs[0].device())?;
                xs[0].scatter_add(&ids, &xs[1], 1)
            })
        }),
        case("index_add", |d| {
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
        }),
        case("embedding", |d| {
            let x = [input((5, 3), d, 36)?];
            check_grad("embedding", &x, |xs| {
                let ids = Tensor::from_vec(vec![4i64, 0, 4, 2, 1, 4], (2, 3), xs[0].device())?;
                xs[0].embedding(&ids)
            })
        }),
        // ---- views and copies ----
        case("reshape", |d| {
            let x = [input((3, 4), d, 37)?];
            check_grad("reshape", &x, |xs| xs[0].reshape((2, 6)))?;
            check_grad("reshape_infer", &x, |xs| xs[0].reshape_infer(&[-1, 2, 3]))?;
            check_grad("reshape after transpose", &x, |xs| {
                xs[0].t()?.reshape((6, 2))
            })?;
            check_grad("flatten_all", &x, |xs| xs[0].flatten_all())
        }),
        case("transpose_permute", |d| {
            let x = [input((2, 3, 4), d, 38)?];
            check_grad("transpose(0, 2)", &x, |xs| xs[0].transpose(0, 2))?;
            check_grad("t", &x, |xs| xs[0].t())?;
            check_grad("permute", &x, |xs| xs[0].permute([2, 0, 1])?.contiguous())?;
            check_grad("permute then matmul", &x, |xs| {
                let w = det_tensor((2, 3), DType::F64, xs[0].device(), 97)?;
                xs[0]
                    .permute([2, 0, 1])?
                    .reshape((4, 6))?
                    .matmul(&w.reshape(6)?)
            })
        }),
        case("narrow_slice", |d| {
            let x = [input((4, 5), d, 39)?];
            check_grad("narrow", &x, |xs| xs[0].narrow(1, 1, 3))?;
            check_grad("narrow dim 0", &x, |xs| xs[0].narrow(0, 2, 2))?;
            check_grad("slice (negative bounds)", &x, |xs| xs[0].slice(-1, -4, -1))?;
            check_grad("narrow of narrow", &x, |xs| {
                xs[0].narrow(1, 1, 4)?.narrow(1, 1, 2)?.narrow(0, 1, 2)
            })
        }),
        case("squeeze_unsqueeze", |d| {
            let x = [input((3, 1, 4), d, 40)?];
            check_grad("squeeze", &x, |xs| xs[0].squeeze(1))?;
            check_grad("unsqueeze", &x, |xs| xs[0].unsqueeze(0)?.unsqueeze(-1))
        }),
        case("broadcast_expand", |d| {
            let x = [input((3, 1), d, 41)?];
            check_grad("broadcast_as", &x, |xs| xs[0].broadcast_as((2, 3, 4)))?;
            check_grad("expand", &x, |xs| xs[0].expand((3, 5)))?;
            check_grad("broadcast_left", &x, |xs| xs[0].broadcast_left(&[2]))
        }),
        case("flatten", |d| {
            let x = [input((2, 3, 2, 2), d, 42)?];
            check_grad("flatten(1, 2)", &x, |xs| xs[0].flatten(1, 2))?;
            check_grad("flatten(0, -1)", &x, |xs| xs[0].flatten(0, -1))
        }),
        case("chunk_split", |d| {
            let x = [input((3, 7), d, 43)?];
            check_grad("chunk", &x, |xs| {
                let c = xs[0].chunk(3, 1)?;
                Tensor::cat(&[&c[2].affine(3.0, 0.0)?, &c[0], &c[1].sqr()?], 1)
            })?;
            check_grad("split", &x, |xs| {
                let s = xs[0].split(&[2, 1, 4], 1)?;
                Tensor::cat(&[&s[2], &s[0].exp()?, &s[1]], 1)
            })
        }),
        case("cat_stack", |d| {
            let x = [
                input((2, 3), d, 44)?,
                input((2, 2), d, 45)?,
                input((2, 3), d, 46)?,
            ];
            check_grad("cat dim 1", &x, |xs| {
                Tensor::cat(&[&xs[0], &xs[1], &xs[2]], 1)
            })?;
            check_grad("cat dim 0", &x, |xs| {
                Tensor::cat(&[&xs[0], &xs[2].sqr()?, &xs[0]], 0)
            })?;
            check_grad("stack dim 0", &x, |xs| Tensor::stack(&[&xs[0], &xs[2]], 0))?;
            check_grad("stack dim -1", &x, |xs| {
                Tensor::stack(&[&xs[2], &xs[0], &xs[2]], -1)
            })
        }),
        case("pad_with_zeros", |d| {
            let x = [input((3, 4), d, 47)?];
            check_grad("pad dim 0", &x, |xs| xs[0].pad_with_zeros(0, 1, 2))?;
            check_grad("pad dim 1", &x, |xs| xs[0].pad_with_zeros(1, 2, 0))?;
            check_grad("pad with value", &x, |xs| {
                xs[0].pad_with_value(1, 1, 1, -3.0)
            })
        }),
        case("contiguous_copy", |d| {
            let x = [input((3, 4), d, 48)?];
            check_grad("contiguous", &x, |xs| xs[0].t()?.contiguous())?;
            check_grad("copy", &x, |xs| xs[0].copy()?.mul(&xs[0]))
        }),
        case("to_dtype_round_trip", |d| {
            // f32 rounding moves the inputs by ~3e-8 against a step of 1e-6: a loose tolerance.
            let x = [input((3, 4), d, 49)?];
            check_grad_tol("f64 -> f32 -> f64", &x, 0.1, 0.1, |xs| {
                xs[0].to_dtype(DType::F32)?.sqr()?.to_dtype(DType::F64)
            })?;
            // The cast passes gradients straight through: exactly the upstream gradient, rounded
            // to f32 on its way through the f32 node.
            let v = Var::from_tensor(&x[0])?;
            let w = det_tensor((3, 4), DType::F64, d, 96)?;
            let g = v
                .to_dtype(DType::F32)?
                .to_dtype(DType::F64)?
                .mul(&w)?
                .sum_all()?
                .backward()?;
            let gv = g
                .get(&v)
                .ok_or_else(|| Error::msg("no gradient through to_dtype"))?;
            let want = w.to_dtype(DType::F32)?.to_dtype(DType::F64)?;
            assert_close("to_dtype gradient", gv, &want, 0.0, 0.0)
        }),
        case("to_device_same", |d| {
            let x = [input((2, 3), d, 50)?];
            check_grad("to_device (same device)", &x, |xs| {
                xs[0].to_device(d)?.sqr()
            })
        }),
    ]
}
