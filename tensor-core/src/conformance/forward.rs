//! Conformance cases: forward results against exact hand-computed or naive-loop references,
//! in every dtype an op applies to (f32, f64, f16, bf16 with per-dtype tolerances; u8, u32 and
//! i64 exactly for the integer-capable ops). References are computed in f64 from the inputs as
//! stored in the tested dtype, so half-precision rounding of the inputs is not an error.

use super::{assert_close_slices, det_values, Case};
use crate::{
    AttentionParams, DType, Device, Error, HostData, Result, Shape, Tensor, Var, WithDType,
};
use half::{bf16, f16};

mod attention;
mod create;
mod elementwise;
mod matmul;
mod reduce;

use attention::attention;
use create::{casts, creation, rand_uniform, randn, typed};
use elementwise::{binary_float, binary_int, comparisons, unary_float, unary_int, where_cond};
use matmul::{matmul, matmul_batched};
use reduce::reductions;

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];
const INTS: [DType; 3] = [DType::U8, DType::U32, DType::I64];

type Unary = fn(&Tensor) -> Result<Tensor>;
type Binary = fn(&Tensor, &Tensor) -> Result<Tensor>;
/// A reference for a unary op in f64.
type RefUnary = fn(f64) -> f64;
/// A reference for a binary op in f64.
type RefBinary = fn(f64, f64) -> f64;
/// A named op, its f64 reference and the inputs it is checked on.
type UnaryRow = (&'static str, Unary, RefUnary, &'static [f64]);

macro_rules! cases {
    ($($name:literal => $run:expr),* $(,)?) => {
        vec![$(Case { group: "forward", name: $name, run: $run }),*]
    };
}

pub(super) fn cases() -> Vec<Case> {
    cases![
        "unary_float" => unary_float,
        "unary_int" => unary_int,
        "round_ties_even" => |d| {
            for dt in FLOATS {
                let x = t(d, &[0.5, 1.5, 2.5, -0.5, -2.5, 3.5], 6, dt)?;
                expect(&format!("round {dt}"), &x.round()?, &[6], dt, &[0.0, 2.0, 2.0, 0.0, -2.0, 4.0], (0.0, 0.0))?;
            }
            Ok(())
        },
        "binary_float" => binary_float,
        "binary_int" => binary_int,
        "int_floor_div_and_wrap" => |d| {
            // Integer division floors (PyTorch's `//`); u8/u32 arithmetic wraps.
            let a = t(d, &[-7.0, 7.0, -8.0, 0.0], 4, DType::I64)?;
            let b = t(d, &[2.0, -2.0, 3.0, -5.0], 4, DType::I64)?;
            expect("i64 floor division", &a.div(&b)?, &[4], DType::I64, &[-4.0, -4.0, -3.0, 0.0], (0.0, 0.0))?;
            let a = t(d, &[200.0, 3.0, 16.0], 3, DType::U8)?;
            let b = t(d, &[100.0, 5.0, 16.0], 3, DType::U8)?;
            expect("u8 add wraps", &a.add(&b)?, &[3], DType::U8, &[44.0, 8.0, 32.0], (0.0, 0.0))?;
            expect("u8 sub wraps", &a.sub(&b)?, &[3], DType::U8, &[100.0, 254.0, 0.0], (0.0, 0.0))?;
            expect("u8 mul wraps", &a.mul(&b)?, &[3], DType::U8, &[32.0, 15.0, 0.0], (0.0, 0.0))?;
            let a = t(d, &[1.0, 4294967295.0], 2, DType::U32)?;
            let b = t(d, &[2.0, 1.0], 2, DType::U32)?;
            expect("u32 sub/add wrap", &a.sub(&b)?.add(&a.add(&b)?)?, &[2], DType::U32, &[2.0, 4294967294.0], (0.0, 0.0))
        },
        "int_div_by_zero_is_err" => |d| {
            for dt in INTS {
                let a = t(d, &[1.0, 2.0], 2, dt)?;
                let b = t(d, &[1.0, 0.0], 2, dt)?;
                must_err(&format!("{dt} division by zero"), a.div(&b), &["div"])?;
            }
            Ok(())
        },
        "comparisons" => comparisons,
        "where_cond" => where_cond,
        "masked_fill_triu_tril" => |d| {
            for dt in FLOATS.iter().chain(&INTS).copied() {
                let x = t(d, &(0..12).map(f64::from).collect::<Vec<_>>(), (3, 4), dt)?;
                let m = t(d, &[1.0, 0.0, 0.0, 1.0], 4, DType::U8)?;
                let want: Vec<f64> = (0..12).map(|i| if i % 4 == 0 || i % 4 == 3 { 9.0 } else { i as f64 }).collect();
                expect(&format!("masked_fill {dt}"), &x.masked_fill(&m, 9.0)?, &[3, 4], dt, &want, (0.0, 0.0))?;
                for diag in [-1i64, 0, 1, 2] {
                    let up: Vec<f64> = (0..12).map(|i| if (i % 4) as i64 - (i / 4) as i64 >= diag { i as f64 } else { 0.0 }).collect();
                    let lo: Vec<f64> = (0..12).map(|i| if (i % 4) as i64 - (i / 4) as i64 <= diag { i as f64 } else { 0.0 }).collect();
                    expect(&format!("triu({diag}) {dt}"), &x.triu(diag)?, &[3, 4], dt, &up, (0.0, 0.0))?;
                    expect(&format!("tril({diag}) {dt}"), &x.tril(diag)?, &[3, 4], dt, &lo, (0.0, 0.0))?;
                }
                // Batched: the triangle applies to the last two dims of each matrix.
                let b = Tensor::stack(&[&x, &x], 0)?.tril(0)?;
                let lo: Vec<f64> = (0..24).map(|i| i % 12).map(|i| if i % 4 <= i / 4 { i as f64 } else { 0.0 }).collect();
                expect(&format!("batched tril {dt}"), &b, &[2, 3, 4], dt, &lo, (0.0, 0.0))?;
            }
            Ok(())
        },
        "reductions" => reductions,
        "argmax_argmin_ties" => |d| {
            // First occurrence wins, along either dim.
            let v = [3.0, 1.0, 3.0, 0.0, 1.0, 1.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0];
            for dt in FLOATS.iter().chain(&INTS).copied() {
                let x = t(d, &v, (3, 4), dt)?;
                expect(&format!("argmax(1) {dt}"), &x.argmax(1)?, &[3], DType::I64, &[0.0, 0.0, 0.0], (0.0, 0.0))?;
                expect(&format!("argmin(1) {dt}"), &x.argmin(1)?, &[3], DType::I64, &[3.0, 2.0, 0.0], (0.0, 0.0))?;
                expect(&format!("argmax(0) {dt}"), &x.argmax(0)?, &[4], DType::I64, &[0.0, 2.0, 0.0, 2.0], (0.0, 0.0))?;
                expect(&format!("argmin(0) {dt}"), &x.argmin(0)?, &[4], DType::I64, &[1.0, 0.0, 1.0, 0.0], (0.0, 0.0))?;
                expect(&format!("argmax_keepdim(1) {dt}"), &x.argmax_keepdim(1)?, &[3, 1], DType::I64, &[0.0, 0.0, 0.0], (0.0, 0.0))?;
                expect(&format!("argmin_keepdim(0) {dt}"), &x.argmin_keepdim(0)?, &[1, 4], DType::I64, &[1.0, 0.0, 1.0, 0.0], (0.0, 0.0))?;
                // On a transposed view.
                expect(&format!("argmax(0) of transpose {dt}"), &x.t()?.argmax(0)?, &[3], DType::I64, &[0.0, 0.0, 0.0], (0.0, 0.0))?;
            }
            Ok(())
        },
        "var_std" => |d| {
            let v = [1.0, 2.0, 3.0, 4.0, 2.0, 4.0, 4.0, 10.0];
            for dt in FLOATS {
                let x = t(d, &v, (2, 4), dt)?;
                let tl = tol(dt);
                expect(&format!("var(1, 1) {dt}"), &x.var(1, 1)?, &[2], dt, &[5.0 / 3.0, 12.0], tl)?;
                expect(&format!("var(1, 0) {dt}"), &x.var(1, 0)?, &[2], dt, &[1.25, 9.0], tl)?;
                expect(&format!("var_keepdim(0, 1) {dt}"), &x.var_keepdim(0, 1)?, &[1, 4], dt, &[0.5, 2.0, 0.5, 18.0], tl)?;
                expect(&format!("var(0, 0) {dt}"), &x.var(0, 0)?, &[4], dt, &[0.25, 1.0, 0.25, 9.0], tl)?;
                expect(&format!("std(1, 1) {dt}"), &x.std(1, 1)?, &[2], dt, &[(5.0f64 / 3.0).sqrt(), 12f64.sqrt()], tl)?;
                expect(&format!("std_keepdim(1, 0) {dt}"), &x.std_keepdim(1, 0)?, &[2, 1], dt, &[1.25f64.sqrt(), 3.0], tl)?;
                // Over all dims: mean 3.75, Σ(x−m)² = 53.5.
                expect(&format!("var([0, 1], 1) {dt}"), &x.var([0, 1], 1)?, &[], dt, &[53.5 / 7.0], tl)?;
            }
            Ok(())
        },
        "logsumexp" => |d| {
            let inf = f64::INFINITY;
            let v = [1.0, 2.0, 3.0, -inf, -inf, -inf, -inf, 0.0, 0.0, inf, 0.0, 1.0];
            let want = [3.0 + (1.0 + (-1f64).exp() + (-2f64).exp()).ln(), -inf, 2f64.ln(), inf];
            for dt in FLOATS {
                let x = t(d, &v, (4, 3), dt)?;
                expect(&format!("logsumexp(1) {dt}"), &x.logsumexp(1)?, &[4], dt, &want, tol(dt))?;
                expect(&format!("logsumexp_keepdim(-1) {dt}"), &x.logsumexp_keepdim(-1)?, &[4, 1], dt, &want, tol(dt))?;
                let y = t(d, &[0.5, -1.0, 2.0, 0.25], (2, 2), dt)?;
                let r: f64 = rounded(&[0.5, -1.0, 2.0, 0.25], dt).iter().map(|v| v.exp()).sum::<f64>().ln();
                expect(&format!("logsumexp([0, 1]) {dt}"), &y.logsumexp([0, 1])?, &[], dt, &[r], tol(dt))?;
            }
            Ok(())
        },
        "cumsum" => |d| {
            for dt in FLOATS.iter().chain(&INTS).copied() {
                let x = t(d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), dt)?;
                expect(&format!("cumsum(1) {dt}"), &x.cumsum(1)?, &[2, 3], dt, &[1.0, 3.0, 6.0, 4.0, 9.0, 15.0], (0.0, 0.0))?;
                expect(&format!("cumsum(0) {dt}"), &x.cumsum(0)?, &[2, 3], dt, &[1.0, 2.0, 3.0, 5.0, 7.0, 9.0], (0.0, 0.0))?;
                expect(&format!("cumsum(-1) of transpose {dt}"), &x.t()?.cumsum(-1)?, &[3, 2], dt, &[1.0, 5.0, 2.0, 7.0, 3.0, 9.0], (0.0, 0.0))?;
            }
            Ok(())
        },
        "matmul" => matmul,
        "matmul_batched" => matmul_batched,
        "casts" => casts,
        "cast_rounding" => |d| {
            let v = [1.0 / 3.0, 2.0 / 3.0, 1e-3, 65504.0, -0.1, 1.0 + 1.0 / 1024.0];
            for src in FLOATS {
                let x = t(d, &v, 6, src)?;
                let xs = rounded(&v, src);
                for dst in FLOATS {
                    let want = rounded(&xs, dst);
                    expect(&format!("cast {src} -> {dst}"), &x.to_dtype(dst)?, &[6], dst, &want, (0.0, 0.0))?;
                }
            }
            Ok(())
        },
        "creation" => creation,
        "arange_linspace_eye" => |d| {
            for dt in FLOATS.iter().chain(&INTS).copied() {
                expect(&format!("arange(0, 5) {dt}"), &Tensor::arange(0.0, 5.0, 1.0, dt, d)?, &[5], dt, &[0.0, 1.0, 2.0, 3.0, 4.0], (0.0, 0.0))?;
                expect(&format!("arange(7, 0, -3) {dt}"), &Tensor::arange(7.0, 0.0, -3.0, dt, d)?, &[3], dt, &[7.0, 4.0, 1.0], (0.0, 0.0))?;
                expect(&format!("arange(3, 3) {dt}"), &Tensor::arange(3.0, 3.0, 1.0, dt, d)?, &[0], dt, &[], (0.0, 0.0))?;
                expect(&format!("eye(3) {dt}"), &Tensor::eye(3, dt, d)?, &[3, 3], dt, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], (0.0, 0.0))?;
            }
            for dt in FLOATS {
                expect(&format!("arange(1, 2, 0.25) {dt}"), &Tensor::arange(1.0, 2.0, 0.25, dt, d)?, &[4], dt, &[1.0, 1.25, 1.5, 1.75], (0.0, 0.0))?;
                expect(&format!("linspace(0, 1, 5) {dt}"), &Tensor::linspace(0.0, 1.0, 5, dt, d)?, &[5], dt, &[0.0, 0.25, 0.5, 0.75, 1.0], (0.0, 0.0))?;
                expect(&format!("linspace(2, -1, 4) {dt}"), &Tensor::linspace(2.0, -1.0, 4, dt, d)?, &[4], dt, &[2.0, 1.0, 0.0, -1.0], (0.0, 0.0))?;
                expect(&format!("linspace(3, 9, 1) {dt}"), &Tensor::linspace(3.0, 9.0, 1, dt, d)?, &[1], dt, &[3.0], (0.0, 0.0))?;
            }
            Ok(())
        },
        "rand_uniform" => rand_uniform,
        "randn" => randn,
        "bernoulli" => |d| {
            for dt in [DType::F32, DType::F64, DType::BF16, DType::U8] {
                let x = Tensor::bernoulli(0.3, 10_000, dt, d)?;
                if x.dtype() != dt || x.dims() != [10_000] {
                    return Err(Error::msg(format!("bernoulli {dt}: got {x:?}")));
                }
                let v = x.to_f64_vec()?;
                if let Some(bad) = v.iter().find(|&&b| b != 0.0 && b != 1.0) {
                    return Err(Error::msg(format!("bernoulli {dt}: value {bad} is neither 0 nor 1")));
                }
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                if (mean - 0.3).abs() > 0.03 {
                    return Err(Error::msg(format!("bernoulli(0.3) {dt}: mean {mean}")));
                }
            }
            expect("bernoulli(0)", &Tensor::bernoulli(0.0, 50, DType::F32, d)?, &[50], DType::F32, &[0.0; 50], (0.0, 0.0))?;
            expect("bernoulli(1)", &Tensor::bernoulli(1.0, 50, DType::F32, d)?, &[50], DType::F32, &[1.0; 50], (0.0, 0.0))?;
            let p = t(d, &[0.0, 1.0, 0.0, 1.0], 4, DType::F32)?;
            expect("bernoulli_from_probs of 0/1", &p.bernoulli_from_probs()?, &[4], DType::F32, &[0.0, 1.0, 0.0, 1.0], (0.0, 0.0))
        },
        "views_reshape_noncontiguous" => |d| {
            for dt in [DType::F32, DType::F64, DType::F16, DType::BF16, DType::U8, DType::U32, DType::I64] {
                let x = t(d, &(0..6).map(f64::from).collect::<Vec<_>>(), (2, 3), dt)?;
                let xt = x.t()?;
                expect(&format!("transpose {dt}"), &xt, &[3, 2], dt, &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0], (0.0, 0.0))?;
                expect(&format!("reshape of transpose {dt}"), &xt.reshape(6)?, &[6], dt, &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0], (0.0, 0.0))?;
                expect(&format!("reshape (2, 3) of transpose {dt}"), &xt.reshape((2, 3))?, &[2, 3], dt, &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0], (0.0, 0.0))?;
                expect(&format!("contiguous {dt}"), &xt.contiguous()?, &[3, 2], dt, &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0], (0.0, 0.0))?;
                if !xt.contiguous()?.is_contiguous() {
                    return Err(Error::msg("contiguous() is not contiguous"));
                }
            }
            // A narrowed-then-transposed view reshaped: strides and offset both matter.
            let x = t(d, &(0..24).map(f64::from).collect::<Vec<_>>(), (2, 3, 4), DType::F32)?;
            let v = x.narrow(2, 1, 2)?.transpose(0, 1)?; // [3, 2, 2]
            let want: Vec<f64> = (0..3).flat_map(|i| (0..2).flat_map(move |j| (1..3).map(move |k| (j * 12 + i * 4 + k) as f64))).collect();
            expect("reshape of narrowed transpose", &v.reshape(12)?, &[12], DType::F32, &want, (0.0, 0.0))?;
            expect("flatten_all of narrowed transpose", &v.flatten_all()?, &[12], DType::F32, &want, (0.0, 0.0))
        },
        "views_permute_narrow" => |d| {
            let x = t(d, &(0..24).map(f64::from).collect::<Vec<_>>(), (2, 3, 4), DType::F32)?;
            let p = x.permute([2, 0, 1])?;
            let want: Vec<f64> = (0..4).flat_map(|k| (0..2).flat_map(move |i| (0..3).map(move |j| (i * 12 + j * 4 + k) as f64))).collect();
            expect("permute [2, 0, 1]", &p, &[4, 2, 3], DType::F32, &want, (0.0, 0.0))?;
            let n = x.narrow(1, 1, 2)?;
            let want: Vec<f64> = (0..2).flat_map(|i| (1..3).flat_map(move |j| (0..4).map(move |k| (i * 12 + j * 4 + k) as f64))).collect();
            expect("narrow(1, 1, 2)", &n, &[2, 2, 4], DType::F32, &want, (0.0, 0.0))?;
            expect("slice(-1, -3, -1)", &x.slice(-1, -3, -1)?, &[2, 3, 2], DType::F32,
                &(0..6).flat_map(|r| [(r * 4 + 1) as f64, (r * 4 + 2) as f64]).collect::<Vec<_>>(), (0.0, 0.0))?;
            expect("transpose(0, 2)", &x.transpose(0, 2)?, &[4, 3, 2], DType::F32,
                &(0..4).flat_map(|k| (0..3).flat_map(move |j| (0..2).map(move |i| (i * 12 + j * 4 + k) as f64))).collect::<Vec<_>>(), (0.0, 0.0))?;
            expect("broadcast_as", &t(d, &[1.0, 2.0], (2, 1), DType::F32)?.broadcast_as((2, 2, 3))?, &[2, 2, 3], DType::F32,
                &[1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0], (0.0, 0.0))?;
            expect("pad_with_zeros", &t(d, &[1.0, 2.0, 3.0, 4.0], (2, 2), DType::I64)?.pad_with_zeros(1, 1, 2)?, &[2, 5], DType::I64,
                &[0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0], (0.0, 0.0))
        },
        "views_chunk_split_cat_stack" => |d| {
            let x = t(d, &(0..14).map(f64::from).collect::<Vec<_>>(), (2, 7), DType::F32)?;
            let c = x.chunk(3, 1)?;
            let sizes: Vec<usize> = c.iter().map(|c| c.dims()[1]).collect();
            if sizes != [3, 3, 1] {
                return Err(Error::msg(format!("chunk(3) of 7: sizes {sizes:?}, expected [3, 3, 1]")));
            }
            expect("chunk[1]", &c[1], &[2, 3], DType::F32, &[3.0, 4.0, 5.0, 10.0, 11.0, 12.0], (0.0, 0.0))?;
            expect("chunk[2]", &c[2], &[2, 1], DType::F32, &[6.0, 13.0], (0.0, 0.0))?;
            let s = x.split(&[1, 4, 2], 1)?;
            expect("split[1]", &s[1], &[2, 4], DType::F32, &[1.0, 2.0, 3.0, 4.0, 8.0, 9.0, 10.0, 11.0], (0.0, 0.0))?;
            expect("split[2]", &s[2], &[2, 2], DType::F32, &[5.0, 6.0, 12.0, 13.0], (0.0, 0.0))?;
            let a = t(d, &[1.0, 2.0, 3.0, 4.0], (2, 2), DType::F32)?;
            let b = t(d, &[5.0, 6.0], (2, 1), DType::F32)?;
            expect("cat dim 1", &Tensor::cat(&[&a, &b], 1)?, &[2, 3], DType::F32, &[1.0, 2.0, 5.0, 3.0, 4.0, 6.0], (0.0, 0.0))?;
            expect("cat dim 0 with a transposed view", &Tensor::cat(&[&a, &a.t()?], 0)?, &[4, 2], DType::F32,
                &[1.0, 2.0, 3.0, 4.0, 1.0, 3.0, 2.0, 4.0], (0.0, 0.0))?;
            expect("stack dim 0", &Tensor::stack(&[&a, &a.t()?], 0)?, &[2, 2, 2], DType::F32,
                &[1.0, 2.0, 3.0, 4.0, 1.0, 3.0, 2.0, 4.0], (0.0, 0.0))?;
            expect("stack dim -1", &Tensor::stack(&[&a, &a.affine(10.0, 0.0)?], -1)?, &[2, 2, 2], DType::F32,
                &[1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0], (0.0, 0.0))?;
            let i = t(d, &[7.0, 8.0], 2, DType::U32)?;
            expect("cat u32", &Tensor::cat(&[&i, &i, &i], 0)?, &[6], DType::U32, &[7.0, 8.0, 7.0, 8.0, 7.0, 8.0], (0.0, 0.0))
        },
        "views_squeeze_flatten_infer" => |d| {
            let x = t(d, &(0..6).map(f64::from).collect::<Vec<_>>(), (1, 2, 1, 3), DType::F64)?;
            let all: Vec<f64> = (0..6).map(f64::from).collect();
            expect("squeeze(0)", &x.squeeze(0)?, &[2, 1, 3], DType::F64, &all, (0.0, 0.0))?;
            expect("squeeze(-2)", &x.squeeze(-2)?, &[1, 2, 3], DType::F64, &all, (0.0, 0.0))?;
            expect("unsqueeze(4)", &x.unsqueeze(4)?, &[1, 2, 1, 3, 1], DType::F64, &all, (0.0, 0.0))?;
            expect("unsqueeze(-1)", &x.unsqueeze(-1)?, &[1, 2, 1, 3, 1], DType::F64, &all, (0.0, 0.0))?;
            expect("flatten(1, 3)", &x.flatten(1, 3)?, &[1, 6], DType::F64, &all, (0.0, 0.0))?;
            expect("flatten(0, 1)", &x.flatten(0, 1)?, &[2, 1, 3], DType::F64, &all, (0.0, 0.0))?;
            expect("reshape_infer [-1, 2]", &x.reshape_infer(&[-1, 2])?, &[3, 2], DType::F64, &all, (0.0, 0.0))?;
            expect("reshape_infer [3, -1, 1]", &x.reshape_infer(&[3, -1, 1])?, &[3, 2, 1], DType::F64, &all, (0.0, 0.0))?;
            let s = Tensor::scalar(4.0, DType::F64, d)?;
            expect("scalar flatten", &s.flatten(0, 0)?, &[1], DType::F64, &[4.0], (0.0, 0.0))?;
            expect("scalar unsqueeze", &s.unsqueeze(0)?, &[1], DType::F64, &[4.0], (0.0, 0.0))
        },
        "index_select" => |d| {
            for dt in [DType::F32, DType::BF16, DType::I64, DType::U8] {
                let x = t(d, &(0..12).map(f64::from).collect::<Vec<_>>(), (3, 4), dt)?;
                for idt in INTS {
                    let ids = t(d, &[2.0, 0.0, 2.0], 3, idt)?;
                    expect(&format!("index_select dim 0 {dt} ids {idt}"), &x.index_select(&ids, 0)?, &[3, 4], dt,
                        &[8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0], (0.0, 0.0))?;
                    expect(&format!("index_select dim 1 {dt} ids {idt}"), &x.index_select(&ids, 1)?, &[3, 3], dt,
                        &[2.0, 0.0, 2.0, 6.0, 4.0, 6.0, 10.0, 8.0, 10.0], (0.0, 0.0))?;
                }
                // Non-contiguous source and ids.
                let ids = t(d, &[3.0, 9.0, 1.0, 9.0], (2, 2), DType::I64)?.t()?.narrow(0, 0, 1)?.squeeze(0)?; // [3, 1]
                expect(&format!("index_select of transpose {dt}"), &x.t()?.index_select(&ids, 0)?, &[2, 3], dt,
                    &[3.0, 7.0, 11.0, 1.0, 5.0, 9.0], (0.0, 0.0))?;
            }
            Ok(())
        },
        "gather_scatter_index_add" => |d| {
            for dt in [DType::F32, DType::F64, DType::F16, DType::I64, DType::U32] {
                let x = t(d, &(0..12).map(f64::from).collect::<Vec<_>>(), (3, 4), dt)?;
                let ids = t(d, &[3.0, 0.0, 1.0, 1.0, 2.0, 2.0], (3, 2), DType::I64)?;
                expect(&format!("gather dim 1 {dt}"), &x.gather(&ids, 1)?, &[3, 2], dt, &[3.0, 0.0, 5.0, 5.0, 10.0, 10.0], (0.0, 0.0))?;
                let ids = t(d, &[2.0, 0.0, 1.0, 2.0, 2.0, 2.0], (2, 3), DType::U32)?;
                expect(&format!("gather dim 0 {dt}"), &x.gather(&ids, 0)?, &[2, 3], dt, &[8.0, 1.0, 6.0, 8.0, 9.0, 10.0], (0.0, 0.0))?;
                let dst = Tensor::ones((3, 4), dt, d)?;
                let ids = t(d, &[0.0, 2.0, 2.0, 1.0, 0.0, 0.0, 1.0, 2.0], (2, 4), DType::I64)?;
                let src = t(d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], (2, 4), dt)?;
                expect(&format!("scatter_add dim 0 {dt}"), &dst.scatter_add(&ids, &src, 0)?, &[3, 4], dt,
                    &[7.0, 7.0, 1.0, 1.0, 1.0, 1.0, 8.0, 5.0, 1.0, 3.0, 4.0, 9.0], (0.0, 0.0))?;
                let dst = Tensor::zeros((4, 2), dt, d)?;
                let ids = t(d, &[3.0, 0.0, 3.0], 3, DType::U8)?;
                let src = t(d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (3, 2), dt)?;
                expect(&format!("index_add dim 0 {dt}"), &dst.index_add(&ids, &src, 0)?, &[4, 2], dt,
                    &[3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 6.0, 8.0], (0.0, 0.0))?;
                let dst = Tensor::ones((2, 3), dt, d)?;
                let ids = t(d, &[2.0, 2.0], 2, DType::I64)?;
                let src = t(d, &[1.0, 2.0, 3.0, 4.0], (2, 2), dt)?;
                expect(&format!("index_add dim 1 {dt}"), &dst.index_add(&ids, &src, 1)?, &[2, 3], dt,
                    &[1.0, 1.0, 4.0, 1.0, 1.0, 8.0], (0.0, 0.0))?;
                // The destination of index_add/scatter_add is not modified in place.
                expect(&format!("index_add leaves dst {dt}"), &dst, &[2, 3], dt, &[1.0; 6], (0.0, 0.0))?;
            }
            Ok(())
        },
        "embedding" => |d| {
            for dt in [DType::F32, DType::F16, DType::I64] {
                let table = t(d, &(0..8).map(f64::from).collect::<Vec<_>>(), (4, 2), dt)?;
                for idt in INTS {
                    let ids = t(d, &[3.0, 0.0, 1.0, 3.0], (2, 2), idt)?;
                    expect(&format!("embedding {dt} ids {idt}"), &table.embedding(&ids)?, &[2, 2, 2], dt,
                        &[6.0, 7.0, 0.0, 1.0, 2.0, 3.0, 6.0, 7.0], (0.0, 0.0))?;
                }
            }
            Ok(())
        },
        "to_vec_typed" => |d| {
            typed::<u8>(d)?;
            typed::<u32>(d)?;
            typed::<i64>(d)?;
            typed::<f16>(d)?;
            typed::<bf16>(d)?;
            typed::<f32>(d)?;
            typed::<f64>(d)
        },
        "copy_from_in_place" => |d| {
            let base = Tensor::zeros((3, 4), DType::F32, d)?;
            base.narrow(1, 1, 2)?.copy_from(&Tensor::full(5.0, (3, 2), DType::F32, d)?)?;
            expect("copy_from into narrow(1, 1, 2)", &base, &[3, 4], DType::F32,
                &[0.0, 5.0, 5.0, 0.0, 0.0, 5.0, 5.0, 0.0, 0.0, 5.0, 5.0, 0.0], (0.0, 0.0))?;
            // Into a transposed view, from a transposed source, with a dtype conversion.
            let src = t(d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), DType::F64)?;
            base.t()?.narrow(0, 1, 3)?.narrow(1, 0, 2)?.copy_from(&src.t()?)?;
            expect("copy_from into a transposed view", &base, &[3, 4], DType::F32,
                &[0.0, 1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 0.0, 5.0, 5.0, 0.0], (0.0, 0.0))?;
            // Var::set on the whole variable, and in place through a narrowed view of it.
            let v = Var::from_tensor(&Tensor::zeros((2, 3), DType::F32, d)?)?;
            v.set(&t(d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), DType::F32)?)?;
            expect("Var::set", v.as_tensor(), &[2, 3], DType::F32, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (0.0, 0.0))?;
            v.narrow(0, 1, 1)?.copy_from(&Tensor::full(-1.0, (1, 3), DType::F32, d)?)?;
            expect("copy_from into a Var's row", v.as_tensor(), &[2, 3], DType::F32, &[1.0, 2.0, 3.0, -1.0, -1.0, -1.0], (0.0, 0.0))?;
            // An aliasing copy: a tensor's own shifted view as the source.
            let a = t(d, &[1.0, 2.0, 3.0, 4.0], 4, DType::I64)?;
            a.narrow(0, 1, 3)?.copy_from(&a.narrow(0, 0, 3)?)?;
            expect("overlapping copy_from", &a, &[4], DType::I64, &[1.0, 1.0, 2.0, 3.0], (0.0, 0.0))
        },
        "to_dtype_to_device_same" => |d| {
            for dt in FLOATS.iter().chain(&INTS).copied() {
                let x = t(d, &[1.0, 2.0, 3.0], 3, dt)?;
                expect(&format!("to_dtype({dt}) to itself"), &x.to_dtype(dt)?, &[3], dt, &[1.0, 2.0, 3.0], (0.0, 0.0))?;
                let y = x.to_device(d)?;
                if !y.device().same_device(d) {
                    return Err(Error::msg("to_device(same) changed the device"));
                }
                expect(&format!("to_device(same) {dt}"), &y, &[3], dt, &[1.0, 2.0, 3.0], (0.0, 0.0))?;
            }
            Ok(())
        },
        "softmax" => |d| {
            let ninf = f64::NEG_INFINITY;
            let v = [1.0, 2.0, 3.0, 0.0, ninf, 0.0];
            let s = (-2f64).exp() + (-1f64).exp() + 1.0;
            let want = [(-2f64).exp() / s, (-1f64).exp() / s, 1.0 / s, 0.5, 0.0, 0.5];
            let lwant = [-2.0 - s.ln(), -1.0 - s.ln(), -s.ln(), -(2f64.ln()), ninf, -(2f64.ln())];
            for dt in FLOATS {
                let x = t(d, &v, (2, 3), dt)?;
                expect(&format!("softmax(-1) {dt}"), &x.softmax(-1)?, &[2, 3], dt, &want, tol(dt))?;
                expect(&format!("log_softmax(-1) {dt}"), &x.log_softmax(-1)?, &[2, 3], dt, &lwant, tol(dt))?;
                expect(&format!("softmax(0) of transpose {dt}"), &x.t()?.softmax(0)?, &[3, 2], dt,
                    &[want[0], want[3], want[1], want[4], want[2], want[5]], tol(dt))?;
            }
            // Large logits must not overflow.
            let x = t(d, &[1000.0, 1000.0, -1000.0], 3, DType::F32)?;
            expect("softmax of large logits", &x.softmax(0)?, &[3], DType::F32, &[0.5, 0.5, 0.0], (1e-7, 1e-6))
        },
        "attention" => attention,
    ]
}

// ---- helpers --------------------------------------------------------------------------------

/// (atol, rtol) for results rounded to `dt`.
fn tol(dt: DType) -> (f64, f64) {
    match dt {
        DType::F64 => (1e-12, 1e-12),
        DType::F32 => (1e-6, 1e-6),
        DType::F16 => (1e-3, 2e-3),
        DType::BF16 => (1e-2, 1e-2),
        _ => (0.0, 0.0),
    }
}

fn t(d: &Device, v: &[f64], shape: impl Into<Shape>, dt: DType) -> Result<Tensor> {
    Tensor::from_f64s(v, shape, dt, d)
}

/// Values as stored in `dt`.
fn rounded(v: &[f64], dt: DType) -> Vec<f64> {
    HostData::from_f64_slice(v, dt).to_f64_vec()
}

/// Check shape, dtype and values.
fn expect(
    what: &str,
    got: &Tensor,
    dims: &[usize],
    dt: DType,
    want: &[f64],
    (atol, rtol): (f64, f64),
) -> Result<()> {
    if got.dims() != dims {
        return Err(Error::msg(format!(
            "{what}: shape {:?}, expected {dims:?}",
            got.dims()
        )));
    }
    if got.dtype() != dt {
        return Err(Error::msg(format!(
            "{what}: dtype {}, expected {dt}",
            got.dtype()
        )));
    }
    assert_close_slices(what, &got.to_f64_vec()?, want, atol, rtol)
}

fn must_err<T>(what: &str, r: Result<T>, needles: &[&str]) -> Result<()> {
    match r {
        Ok(_) => Err(Error::msg(format!("{what}: expected an error, got Ok"))),
        Err(e) => {
            let m = e.to_string();
            match needles.iter().find(|n| !m.contains(*n)) {
                Some(n) => Err(Error::msg(format!(
                    "{what}: message {m:?} does not mention {n:?}"
                ))),
                None => Ok(()),
            }
        }
    }
}
