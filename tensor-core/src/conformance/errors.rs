//! Conformance cases: bad input. Every class of invalid argument must come back as `Err` —
//! never a panic (the runner counts a panic as a failure) — with a message that names the op
//! and, for shape errors, the offending shape. Index values are only checked by the backend
//! (see the backend contract), so the out-of-range index cases exercise the backend itself.
//!
//! Device mismatches need two devices. Rather than depend on a second backend, the suite wraps
//! the device under test in [`OtherDevice`]: the same kernels under another name, which core
//! must treat as a different device.

use std::sync::Arc;

use super::Case;
use crate::{
    AttentionParams, BackendDevice, BackendStorage, BinaryOp, CmpOp, ConvParams, DType, Device,
    Error, HostData, Layout, ReduceOp, Result, Storage, Tensor, UnaryOp, UnfoldParams, Var,
};

macro_rules! cases {
    ($($name:literal => $run:expr),* $(,)?) => {
        vec![$(Case { group: "errors", name: $name, run: $run }),*]
    };
}

/// Collects every failed expectation of a case, so one report lists them all. Each check runs
/// its closure under `catch_unwind`, so a panic is reported against that check and the others
/// still run.
struct Checks(Vec<String>);

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

impl Checks {
    fn new() -> Self {
        Checks(vec![])
    }

    fn run<T>(&mut self, what: &str, f: impl FnOnce() -> Result<T>) -> Option<Result<T>> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(p) => {
                self.0.push(format!("{what}: PANIC {}", panic_message(p)));
                None
            }
        }
    }

    /// `f` must return an error whose message contains every needle.
    fn err<T>(&mut self, what: &str, f: impl FnOnce() -> Result<T>, needles: &[&str]) {
        self.err_any_op(what, f, &[], needles)
    }

    /// Like `err`, and the message must name one of `ops` (for ops defined through another).
    fn err_any_op<T>(
        &mut self,
        what: &str,
        f: impl FnOnce() -> Result<T>,
        ops: &[&str],
        needles: &[&str],
    ) {
        match self.run(what, f) {
            None => {}
            Some(Ok(_)) => self.0.push(format!("{what}: expected an error, got Ok")),
            Some(Err(e)) => {
                let m = e.to_string();
                if !ops.is_empty() && !ops.iter().any(|o| m.contains(o)) {
                    self.0
                        .push(format!("{what}: message {m:?} names none of {ops:?}"));
                }
                let missing: Vec<&&str> = needles.iter().filter(|n| !m.contains(**n)).collect();
                if !missing.is_empty() {
                    self.0.push(format!(
                        "{what}: message {m:?} does not mention {missing:?}"
                    ));
                }
            }
        }
    }

    /// `f` may succeed or fail, but must not panic.
    fn no_panic<T>(&mut self, what: &str, f: impl FnOnce() -> Result<T>) {
        self.run(what, f);
    }

    fn fail(&mut self, msg: String) {
        self.0.push(msg);
    }

    fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::msg(self.0.join("; ")))
        }
    }
}

fn f32s(d: &Device, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Tensor::from_f64s(&super::det_values(n, 1), shape, DType::F32, d)
}

fn typed(d: &Device, shape: &[usize], dt: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Tensor::from_f64s(
        &(0..n).map(|i| (i % 5) as f64).collect::<Vec<_>>(),
        shape,
        dt,
        d,
    )
}

fn ids(d: &Device, v: &[i64]) -> Result<Tensor> {
    Tensor::from_vec(v.to_vec(), v.len(), d)
}

fn conv_p(stride: usize, padding: usize, dilation: usize, groups: usize, nd: usize) -> ConvParams {
    ConvParams {
        stride: vec![stride; nd],
        padding: vec![padding; nd],
        dilation: vec![dilation; nd],
        groups,
    }
}

pub(super) fn cases() -> Vec<Case> {
    cases![
        "shape_mismatch_elementwise" => |d| {
            let mut c = Checks::new();
            let (a, b) = (f32s(d, &[2, 3])?, f32s(d, &[4])?);
            c.err("add [2, 3] + [4]", || a.add(&b), &["add", "[2, 3]", "[4]"]);
            c.err("mul [2, 3] * [4]", || a.mul(&b), &["mul", "[2, 3]", "[4]"]);
            c.err("maximum [2, 3], [4]", || a.maximum(&b), &["maximum", "[2, 3]", "[4]"]);
            c.err("eq [2, 3], [4]", || a.eq(&b), &["eq", "[2, 3]", "[4]"]);
            c.err("add [2, 3] + [3, 2]", || a.add(&f32s(d, &[3, 2])?), &["add", "[2, 3]", "[3, 2]"]);
            c.err("add [2, 1, 3] + [4, 2]", || f32s(d, &[2, 1, 3])?.add(&f32s(d, &[4, 2])?), &["add", "[2, 1, 3]", "[4, 2]"]);
            c.err("sub operator", || &a - &b, &["sub", "[2, 3]", "[4]"]);
            c.err("broadcast_as [2, 3] -> [3, 3]", || a.broadcast_as((3, 3)), &["broadcast_as", "[2, 3]", "[3, 3]"]);
            c.err("broadcast_as [2, 3] -> [3]", || a.broadcast_as(3), &["broadcast_as", "[2, 3]", "[3]"]);
            c.finish()
        },
        "shape_mismatch_matmul" => |d| {
            let mut c = Checks::new();
            c.err("matmul [2, 3] x [4, 5]", || f32s(d, &[2, 3])?.matmul(&f32s(d, &[4, 5])?), &["matmul", "[2, 3]", "[4, 5]"]);
            c.err("matmul batch [2, 3, 4] x [3, 4, 5]", || f32s(d, &[2, 3, 4])?.matmul(&f32s(d, &[3, 4, 5])?), &["matmul", "[2, 3, 4]", "[3, 4, 5]"]);
            c.err("matmul [3] x [4]", || f32s(d, &[3])?.matmul(&f32s(d, &[4])?), &["matmul", "[3]", "[4]"]);
            c.err("matmul [2, 3] x [4]", || f32s(d, &[2, 3])?.matmul(&f32s(d, &[4])?), &["matmul", "[4]"]);
            c.err("matmul of a scalar", || Tensor::scalar(1.0, DType::F32, d)?.matmul(&f32s(d, &[2, 2])?), &["matmul", "[2, 2]"]);
            c.finish()
        },
        "shape_mismatch_cat_stack" => |d| {
            let mut c = Checks::new();
            let (a, b) = (f32s(d, &[2, 3])?, f32s(d, &[2, 4])?);
            c.err("cat [2, 3], [2, 4] on dim 0", || Tensor::cat(&[&a, &b], 0), &["cat", "[2, 3]", "[2, 4]"]);
            c.err("cat [2, 3], [3] (rank)", || Tensor::cat(&[&a, &f32s(d, &[3])?], 0), &["cat", "[2, 3]", "[3]"]);
            c.err("cat of nothing", || Tensor::cat(&[], 0), &["cat"]);
            c.err("cat dim 2 of rank 2", || Tensor::cat(&[&a, &a], 2), &["cat", "2"]);
            c.err("stack [2, 3], [3, 2]", || Tensor::stack(&[&a, &f32s(d, &[3, 2])?], 0), &["stack", "[2, 3]", "[3, 2]"]);
            c.err("stack of nothing", || Tensor::stack(&[], 0), &["stack"]);
            c.err("stack dim 4 of rank 2", || Tensor::stack(&[&a, &a], 4), &["stack", "4"]);
            c.finish()
        },
        "shape_mismatch_where" => |d| {
            let mut c = Checks::new();
            let cond = Tensor::zeros((2, 3), DType::U8, d)?;
            c.err("where cond [2, 3], on_true [4]", || cond.where_cond(&f32s(d, &[4])?, &f32s(d, &[2, 3])?), &["where", "[2, 3]", "[4]"]);
            c.err("where cond [2, 3], on_false [3, 3]", || cond.where_cond(&f32s(d, &[2, 3])?, &f32s(d, &[3, 3])?), &["where", "[3, 3]"]);
            c.err_any_op("masked_fill with a [4] mask", || f32s(d, &[2, 3])?.masked_fill(&Tensor::zeros(4, DType::U8, d)?, 0.0), &["masked_fill", "where"], &["[2, 3]", "[4]"]);
            c.err("where with an f32 condition", || f32s(d, &[2, 3])?.where_cond(&f32s(d, &[2, 3])?, &f32s(d, &[2, 3])?), &["where", "f32"]);
            c.finish()
        },
        "shape_mismatch_indexing" => |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[3, 4])?;
            c.err("gather with [3] ids into [3, 4]", || x.gather(&ids(d, &[0, 1, 2])?, 1), &["gather", "[3, 4]", "[3]"]);
            let big = Tensor::zeros((4, 2), DType::I64, d)?;
            c.err("gather [4, 2] ids along dim 1 of [3, 4]", || x.gather(&big, 1), &["gather", "[3, 4]", "[4, 2]"]);
            let i24 = Tensor::zeros((2, 4), DType::I64, d)?;
            c.err("scatter_add ids [2, 4] with src [2, 3]", || x.scatter_add(&i24, &f32s(d, &[2, 3])?, 0), &["scatter_add", "[2, 4]", "[2, 3]"]);
            c.err("scatter_add ids [4, 4] into [3, 4] along dim 1", || x.scatter_add(&Tensor::zeros((4, 4), DType::I64, d)?, &f32s(d, &[4, 4])?, 1), &["scatter_add", "[3, 4]", "[4, 4]"]);
            let dst = f32s(d, &[5, 3])?;
            c.err("index_add src [3, 4] into [5, 3]", || dst.index_add(&ids(d, &[0, 1, 2])?, &f32s(d, &[3, 4])?, 0), &["index_add", "[5, 3]", "[3, 4]"]);
            c.err("index_add 2 ids for a [3, 3] src", || dst.index_add(&ids(d, &[0, 1])?, &f32s(d, &[3, 3])?, 0), &["index_add", "[3, 3]", "[2]"]);
            c.err("index_select with [2, 2] ids", || x.index_select(&Tensor::zeros((2, 2), DType::I64, d)?, 0), &["index_select", "[2, 2]"]);
            c.err("index_select with f32 ids", || x.index_select(&f32s(d, &[2])?, 0), &["index_select", "f32"]);
            c.err("gather with f64 ids", || x.gather(&Tensor::zeros((3, 4), DType::F64, d)?, 0), &["gather", "f64"]);
            c.err_any_op("embedding from a 1-D table", || f32s(d, &[5])?.embedding(&ids(d, &[0])?), &["embedding"], &["[5]"]);
            c.finish()
        },
        "shape_mismatch_nn" => |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[1, 3, 5, 5])?;
            c.err("conv2d Cin 3 vs weight [4, 2, 3, 3]", || x.conv2d(&f32s(d, &[4, 2, 3, 3])?, None, 1, 0, 1, 1), &["conv", "[1, 3, 5, 5]", "[4, 2, 3, 3]"]);
            c.err("conv2d with a rank-3 weight", || x.conv2d(&f32s(d, &[4, 3, 3])?, None, 1, 0, 1, 1), &["conv", "[1, 3, 5, 5]", "[4, 3, 3]"]);
            c.err("conv1d with a rank-4 input", || x.conv1d(&f32s(d, &[4, 3, 3])?, None, 1, 0, 1, 1), &["conv", "[1, 3, 5, 5]", "[4, 3, 3]"]);
            c.err("conv2d bias [3] for 4 channels", || x.conv2d(&f32s(d, &[4, 3, 3, 3])?, Some(&f32s(d, &[3])?), 1, 0, 1, 1), &["conv", "[3]"]);
            c.err("conv_transpose2d weight [2, 3, 3, 3] for Cin 3", || x.conv_transpose2d(&f32s(d, &[2, 3, 3, 3])?, None, 1, 0, 0, 1, 1), &["conv_transpose", "[1, 3, 5, 5]", "[2, 3, 3, 3]"]);
            let xl = f32s(d, &[2, 5])?;
            c.err("layer_norm weight [4] for [2, 5]", || xl.layer_norm(Some(&f32s(d, &[4])?), None, 1e-5), &["layer_norm", "[2, 5]", "[4]"]);
            c.err("layer_norm bias [5, 1]", || xl.layer_norm(None, Some(&f32s(d, &[5, 1])?), 1e-5), &["layer_norm", "[5, 1]"]);
            c.err("layer_norm of a scalar", || Tensor::scalar(1.0, DType::F32, d)?.layer_norm(None, None, 1e-5), &["layer_norm"]);
            c.err("rms_norm weight [3] for [2, 5]", || xl.rms_norm(Some(&f32s(d, &[3])?), 1e-5), &["rms_norm", "[2, 5]", "[3]"]);
            c.err("group_norm 3 groups of 4 channels", || f32s(d, &[2, 4, 3])?.group_norm(3, None, None, 1e-5), &["group_norm", "[2, 4, 3]"]);
            c.err("group_norm 0 groups", || f32s(d, &[2, 4, 3])?.group_norm(0, None, None, 1e-5), &["group_norm"]);
            c.err("group_norm weight [3] for 4 channels", || f32s(d, &[2, 4, 3])?.group_norm(2, Some(&f32s(d, &[3])?), None, 1e-5), &["group_norm", "[3]"]);
            c.err("batch_norm weight [2] for 3 channels", || f32s(d, &[4, 3])?.batch_norm(None, None, Some(&f32s(d, &[2])?), None, true, 0.1, 1e-5), &["batch_norm", "[2]"]);
            c.err("batch_norm training on one value per channel", || f32s(d, &[1, 3])?.batch_norm(None, None, None, None, true, 0.1, 1e-5), &["batch_norm", "[1, 3]"]);
            c.err("batch_norm eval without running stats", || f32s(d, &[4, 3])?.batch_norm(None, None, None, None, false, 0.1, 1e-5), &["batch_norm"]);
            c.err("batch_norm of a 1-D input", || f32s(d, &[4])?.batch_norm(None, None, None, None, true, 0.1, 1e-5), &["batch_norm", "[4]"]);
            let cs = f32s(d, &[3, 2])?;
            c.err("rope with odd D", || f32s(d, &[1, 1, 3, 5])?.rope(&cs, &cs, false), &["rope", "[1, 1, 3, 5]"]);
            c.err("rope cos [3, 3] for D 4", || f32s(d, &[1, 1, 3, 4])?.rope(&f32s(d, &[3, 3])?, &cs, false), &["rope", "[3, 3]"]);
            c.err("rope of a rank-3 input", || f32s(d, &[1, 3, 4])?.rope(&cs, &cs, true), &["rope", "[1, 3, 4]"]);
            c.err("softmax of a scalar", || Tensor::scalar(1.0, DType::F32, d)?.softmax(-1), &["softmax"]);
            c.finish()
        },
        "shape_mismatch_attention" => |d| {
            let mut c = Checks::new();
            let p = AttentionParams { scale: 0.5, ..Default::default() };
            let q = f32s(d, &[1, 2, 3, 4])?;
            c.err("attention k head dim 3 vs q 4", || q.scaled_dot_product_attention(&f32s(d, &[1, 2, 5, 3])?, &f32s(d, &[1, 2, 5, 3])?, &p), &["attention", "[1, 2, 3, 4]", "[1, 2, 5, 3]"]);
            c.err("attention k/v length mismatch", || q.scaled_dot_product_attention(&f32s(d, &[1, 2, 5, 4])?, &f32s(d, &[1, 2, 6, 4])?, &p), &["attention", "[1, 2, 5, 4]", "[1, 2, 6, 4]"]);
            c.err("attention batch mismatch", || q.scaled_dot_product_attention(&f32s(d, &[2, 2, 5, 4])?, &f32s(d, &[2, 2, 5, 4])?, &p), &["attention", "[2, 2, 5, 4]"]);
            c.err("attention rank-3 q", || f32s(d, &[2, 3, 4])?.scaled_dot_product_attention(&f32s(d, &[1, 2, 5, 4])?, &f32s(d, &[1, 2, 5, 4])?, &p), &["attention", "[2, 3, 4]"]);
            let kv = f32s(d, &[1, 2, 5, 4])?;
            c.err("attention Hq 3 vs Hkv 2", || f32s(d, &[1, 3, 3, 4])?.scaled_dot_product_attention(&kv, &kv, &p), &["attention", "[1, 3, 3, 4]", "[1, 2, 5, 4]"]);
            let bad_bias = AttentionParams { scale: 0.5, bias: Some(f32s(d, &[1, 2, 3, 4])?), ..Default::default() };
            c.err("attention bias [1, 2, 3, 4] for Lk 5", || q.scaled_dot_product_attention(&kv, &kv, &bad_bias), &["attention", "[1, 2, 3, 4]"]);
            let bad_slopes = AttentionParams { scale: 0.5, alibi_slopes: Some(f32s(d, &[3])?), ..Default::default() };
            c.err("attention alibi slopes [3] for 2 heads", || q.scaled_dot_product_attention(&kv, &kv, &bad_slopes), &["attention", "[3]"]);
            c.finish()
        },
        "dtype_mismatch" => |d| {
            let mut c = Checks::new();
            let a = f32s(d, &[2, 2])?;
            let b = Tensor::zeros((2, 2), DType::F64, d)?;
            c.err("add f32 + f64", || a.add(&b), &["add", "f32", "f64"]);
            c.err("lt f32, f64", || a.lt(&b), &["lt", "f32", "f64"]);
            c.err("matmul f32 x f64", || a.matmul(&b), &["matmul", "f32", "f64"]);
            let cond = Tensor::ones((2, 2), DType::U8, d)?;
            c.err("where f32 / f64 branches", || cond.where_cond(&a, &b), &["where", "f32", "f64"]);
            c.err("cat f32, f64", || Tensor::cat(&[&a, &b], 0), &["cat", "f32", "f64"]);
            c.err("scatter_add f64 src into f32", || a.scatter_add(&Tensor::zeros((2, 2), DType::I64, d)?, &b, 0), &["scatter_add", "f32", "f64"]);
            c.err("index_add f64 src into f32", || a.index_add(&ids(d, &[0, 1])?, &b, 0), &["index_add", "f32", "f64"]);
            let x = f32s(d, &[1, 2, 5])?;
            c.err("conv1d f32 input, f64 weight", || x.conv1d(&Tensor::zeros((3, 2, 3), DType::F64, d)?, None, 1, 0, 1, 1), &["conv", "f32", "f64"]);
            c.err("conv_transpose1d f32 input, f16 weight", || x.conv_transpose1d(&Tensor::zeros((2, 3, 3), DType::F16, d)?, None, 1, 0, 0, 1, 1), &["conv_transpose", "f32", "f16"]);
            c.err("layer_norm f64 weight for f32", || a.layer_norm(Some(&Tensor::ones(2, DType::F64, d)?), None, 1e-5), &["layer_norm", "f32", "f64"]);
            c.err("rope f64 cos for f32", || f32s(d, &[1, 1, 3, 4])?.rope(&Tensor::ones((3, 2), DType::F64, d)?, &f32s(d, &[3, 2])?, false), &["rope", "f32", "f64"]);
            let q = f32s(d, &[1, 1, 2, 4])?;
            let k64 = Tensor::zeros((1, 1, 2, 4), DType::F64, d)?;
            c.err("attention f32 q, f64 k", || q.scaled_dot_product_attention(&k64, &q, &AttentionParams { scale: 1.0, ..Default::default() }), &["attention", "f32", "f64"]);
            let bias = AttentionParams { scale: 1.0, bias: Some(Tensor::zeros((1, 1, 2, 2), DType::BF16, d)?), ..Default::default() };
            c.err("attention bf16 bias for f32", || q.scaled_dot_product_attention(&q, &q, &bias), &["attention", "f32", "bf16"]);
            c.finish()
        },
        "int_dtype_to_float_op" => |d| {
            let mut c = Checks::new();
            let i = typed(d, &[2, 3], DType::I64)?;
            let u = typed(d, &[2, 3], DType::U8)?;
            let w = typed(d, &[2, 3], DType::U32)?;
            c.err("exp on i64", || i.exp(), &["exp", "i64"]);
            c.err("log on u8", || u.log(), &["log", "u8"]);
            c.err("sqrt on u32", || w.sqrt(), &["sqrt", "u32"]);
            c.err("gelu on i64", || i.gelu(), &["gelu", "i64"]);
            c.err("powf on u8", || u.powf(2.0), &["powf", "u8"]);
            c.err("softmax on u8", || u.softmax(-1), &["softmax", "u8"]);
            c.err("log_softmax on i64", || i.log_softmax(-1), &["log_softmax", "i64"]);
            c.err("matmul on u32", || w.matmul(&typed(d, &[3, 2], DType::U32)?), &["matmul", "u32"]);
            c.err("mean on i64", || i.mean(0), &["mean", "i64"]);
            c.err("var on u8", || u.var(1, 1), &["var", "u8"]);
            c.err("logsumexp on u32", || w.logsumexp(1), &["logsumexp", "u32"]);
            c.err("layer_norm on i64", || i.layer_norm(None, None, 1e-5), &["layer_norm", "i64"]);
            c.err("conv1d on u8", || typed(d, &[1, 2, 5], DType::U8)?.conv1d(&typed(d, &[1, 2, 3], DType::U8)?, None, 1, 0, 1, 1), &["conv", "u8"]);
            c.err("max_pool1d on i64", || typed(d, &[1, 2, 5], DType::I64)?.max_pool1d(2, 2, 0), &["max_pool", "i64"]);
            c.err("dropout on i64", || i.dropout(0.5, true), &["dropout", "i64"]);
            c.err("rand in i64", || Tensor::rand_seeded(0.0, 1.0, 4, DType::I64, d, 1), &["rand", "i64"]);
            c.err("randn in u8", || Tensor::randn_seeded(0.0, 1.0, 4, DType::U8, d, 1), &["randn", "u8"]);
            c.err("attention on u32", || w.reshape((1, 1, 2, 3))?.scaled_dot_product_attention(&w.reshape((1, 1, 2, 3))?, &w.reshape((1, 1, 2, 3))?, &AttentionParams::default()), &["attention", "u32"]);
            c.finish()
        },
        "dim_out_of_range" => |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[2, 3])?;
            c.err("sum(5) of [2, 3]", || x.sum(5), &["sum", "5", "[2, 3]"]);
            c.err("sum(-3) of [2, 3]", || x.sum(-3), &["sum", "-3", "[2, 3]"]);
            c.err("sum([0, 0]) repeated dim", || x.sum([0, 0]), &["sum"]);
            c.err("max_keepdim(2)", || x.max_keepdim(2), &["max", "2", "[2, 3]"]);
            c.err("mean(7)", || x.mean(7), &["mean", "7"]);
            c.err("argmax(2)", || x.argmax(2), &["argmax", "2", "[2, 3]"]);
            c.err("cumsum(3)", || x.cumsum(3), &["cumsum", "3"]);
            c.err("softmax(2)", || x.softmax(2), &["softmax", "2"]);
            c.err("transpose(0, 9)", || x.transpose(0, 9), &["transpose", "9", "[2, 3]"]);
            c.err("permute([0, 0])", || x.permute([0, 0]), &["permute", "[2, 3]"]);
            c.err("permute([0, 1, 2])", || x.permute([0, 1, 2]), &["permute", "[2, 3]"]);
            c.err("narrow(1, 2, 5) beyond the end", || x.narrow(1, 2, 5), &["narrow", "[2, 3]"]);
            c.err("narrow(1, usize::MAX, 2) overflow", || x.narrow(1, usize::MAX, 2), &["narrow"]);
            c.err("narrow(2, 0, 1)", || x.narrow(2, 0, 1), &["narrow", "2"]);
            c.err("squeeze(1) of size 3", || x.squeeze(1), &["squeeze", "[2, 3]"]);
            c.err("squeeze(-3)", || x.squeeze(-3), &["squeeze", "-3"]);
            c.err("unsqueeze(4)", || x.unsqueeze(4), &["unsqueeze", "4"]);
            c.err("unsqueeze(-4)", || x.unsqueeze(-4), &["unsqueeze", "-4"]);
            c.err("flatten(1, 0)", || x.flatten(1, 0), &["flatten"]);
            c.err("flatten(0, 5)", || x.flatten(0, 5), &["flatten", "5"]);
            c.err("chunk(2, 2)", || x.chunk(2, 2), &["chunk", "2"]);
            c.err("chunk(0, 0)", || x.chunk(0, 0), &["chunk"]);
            c.err("split sizes [1, 1] of 3", || x.split(&[1, 1], 1), &["split", "[1, 1]"]);
            c.err("index_select dim 2", || x.index_select(&ids(d, &[0])?, 2), &["index_select", "2"]);
            c.err("pad dim 3", || x.pad_with_zeros(3, 1, 1), &["pad", "3"]);
            c.err("t() of a 1-D tensor", || f32s(d, &[3])?.t(), &["t", "[3]"]);
            c.err("triu of a 1-D tensor", || f32s(d, &[3])?.triu(0), &["triu", "[3]"]);
            c.err("dim(2) of [2, 3]", || x.dim(2), &["2", "[2, 3]"]);
            c.err("max over an empty dim", || f32s(d, &[2, 0])?.max(1), &["max", "[2, 0]"]);
            c.err("argmin over an empty dim", || f32s(d, &[0, 2])?.argmin(0), &["argmin", "[0, 2]"]);
            c.err("var with one element", || f32s(d, &[2, 1])?.var(1, 1), &["var"]);
            c.finish()
        },
        "index_out_of_range" => |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[3, 4])?;
            c.err("index_select id 5 of 3", || x.index_select(&ids(d, &[0, 5])?, 0), &["index_select", "5"]);
            c.err("index_select id 4 on dim 1 (u32)", || x.index_select(&Tensor::from_vec(vec![4u32], 1, d)?, 1), &["index_select", "4"]);
            c.err("index_select id 200 (u8)", || x.index_select(&Tensor::from_vec(vec![200u8], 1, d)?, 0), &["index_select", "200"]);
            c.err("index_select negative id", || x.index_select(&ids(d, &[-1])?, 0), &["index_select", "-1"]);
            c.err("gather id 3 along dim 0 of size 3", || x.gather(&Tensor::from_vec(vec![0i64, 3, 1, 2], (1, 4), d)?, 0), &["gather", "3"]);
            c.err("gather id -2", || x.gather(&Tensor::from_vec(vec![-2i64], (1, 1), d)?, 1), &["gather", "-2"]);
            c.err_any_op("embedding id 7 of 5", || f32s(d, &[5, 2])?.embedding(&Tensor::from_vec(vec![1i64, 7], (1, 2), d)?), &["embedding", "index_select"], &["7"]);
            let src = f32s(d, &[1, 4])?;
            c.err("scatter_add id 3 of 3", || x.scatter_add(&Tensor::from_vec(vec![0i64, 3, 0, 0], (1, 4), d)?, &src, 0), &["scatter_add", "3"]);
            c.err("scatter_add id 4 along dim 1", || x.scatter_add(&Tensor::from_vec(vec![4u32, 0, 0, 0], (1, 4), d)?, &src, 1), &["scatter_add", "4"]);
            c.err("index_add id 9", || x.index_add(&ids(d, &[9])?, &f32s(d, &[1, 4])?, 0), &["index_add", "9"]);
            c.err("index_add negative id", || x.index_add(&ids(d, &[-1])?, &f32s(d, &[1, 4])?, 0), &["index_add", "-1"]);
            // The backward rules of index ops must not turn a bad index into a panic either.
            let v = Var::from_tensor(&Tensor::zeros((3, 2), DType::F64, d)?)?;
            c.err("tracked index_select id 3", || v.index_select(&ids(d, &[3])?, 0), &["index_select", "3"]);
            c.finish()
        },
        "invalid_conv_params" => |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[1, 4, 6])?;
            let w = f32s(d, &[2, 4, 3])?;
            c.err("conv1d stride 0", || x.conv1d(&w, None, 0, 0, 1, 1), &["conv", "stride"]);
            c.err("conv1d dilation 0", || x.conv1d(&w, None, 1, 0, 0, 1), &["conv", "dilation"]);
            c.err("conv1d groups 0", || x.conv1d(&w, None, 1, 0, 1, 0), &["conv", "groups"]);
            c.err("conv1d groups 2 with weight [3, 2, 3] (Cout % groups)", || x.conv1d(&f32s(d, &[3, 2, 3])?, None, 1, 0, 1, 2), &["conv", "groups", "[3, 2, 3]"]);
            c.err("conv1d groups 3 of 4 channels", || x.conv1d(&f32s(d, &[3, 1, 3])?, None, 1, 0, 1, 3), &["conv", "groups", "[1, 4, 6]"]);
            c.err("conv1d kernel 8 > input 6", || x.conv1d(&f32s(d, &[2, 4, 8])?, None, 1, 0, 1, 1), &["conv", "[1, 4, 6]"]);
            c.err("conv1d dilated kernel span 7 > input 6", || x.conv1d(&w, None, 1, 0, 3, 1), &["conv", "[1, 4, 6]"]);
            c.err("conv1d zero-size kernel", || x.conv1d(&Tensor::zeros((2, 4, 0), DType::F32, d)?, None, 1, 0, 1, 1), &["conv"]);
            c.err("conv_nd params for 2 dims on a 1-D conv", || x.conv_nd(&w, None, &conv_p(1, 0, 1, 1, 2)), &["conv", "stride"]);
            let x2 = f32s(d, &[1, 2, 4, 4])?;
            c.err("conv2d stride 0", || x2.conv2d(&f32s(d, &[2, 2, 3, 3])?, None, 0, 1, 1, 1), &["conv", "stride"]);
            c.err("conv3d with a 2-D weight", || f32s(d, &[1, 2, 3, 3, 3])?.conv3d(&f32s(d, &[2, 2, 2, 2])?, None, 1, 0, 1, 1), &["conv", "[2, 2, 2, 2]"]);
            let wt = f32s(d, &[4, 2, 3])?;
            c.err("conv_transpose1d output_padding 2 >= stride 2", || x.conv_transpose1d(&wt, None, 2, 0, 2, 1, 1), &["conv_transpose", "output_padding"]);
            c.err("conv_transpose1d output_padding 1 with stride 1", || x.conv_transpose1d(&wt, None, 1, 0, 1, 1, 1), &["conv_transpose", "output_padding"]);
            c.err("conv_transpose1d stride 0", || x.conv_transpose1d(&wt, None, 0, 0, 0, 1, 1), &["conv_transpose", "stride"]);
            c.err("conv_transpose1d groups 3 of 4 channels", || x.conv_transpose1d(&wt, None, 1, 0, 0, 1, 3), &["conv_transpose", "groups"]);
            c.err("conv_transpose1d padding eats the output", || f32s(d, &[1, 4, 1])?.conv_transpose1d(&f32s(d, &[4, 2, 1])?, None, 1, 1, 0, 1, 1), &["conv_transpose", "padding"]);
            c.err("conv_transpose1d zero-size kernel", || x.conv_transpose1d(&Tensor::zeros((4, 2, 0), DType::F32, d)?, None, 1, 0, 0, 1, 1), &["conv_transpose"]);
            c.finish()
        },
        "invalid_pool_params" => |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[1, 2, 5, 5])?;
            c.err("max_pool2d padding 2 > kernel 2 / 2", || x.max_pool2d(2, 1, 2), &["max_pool", "padding"]);
            c.err("avg_pool1d padding 2 > kernel 3 / 2", || f32s(d, &[1, 2, 5])?.avg_pool1d(3, 1, 2), &["avg_pool", "padding"]);
            c.err("max_pool2d kernel 0", || x.max_pool2d(0, 1, 0), &["max_pool", "kernel"]);
            c.err("avg_pool2d stride 0", || x.avg_pool2d(2, 0, 0), &["avg_pool", "stride"]);
            c.err("max_pool1d kernel 6 > input 5", || f32s(d, &[1, 2, 5])?.max_pool1d(6, 1, 0), &["max_pool", "[1, 2, 5]"]);
            c.err("max_pool2d on a 1-D input", || f32s(d, &[5])?.max_pool2d(2, 2, 0), &["max_pool", "[5]"]);
            c.err("adaptive_avg_pool2d to 0", || x.adaptive_avg_pool2d((0, 2)), &["adaptive_avg_pool"]);
            c.err("adaptive_max_pool2d of a 2-D input", || f32s(d, &[4, 4])?.adaptive_max_pool2d((2, 2)), &["adaptive_max_pool", "[4, 4]"]);
            c.err("adaptive_avg_pool1d of an empty dim", || f32s(d, &[1, 2, 0])?.adaptive_avg_pool1d(2), &["adaptive_avg_pool"]);
            let up = |k: Vec<usize>, s: Vec<usize>| UnfoldParams { kernel: k.clone(), stride: s, padding: vec![0; k.len()], dilation: vec![1; k.len()], pad_value: 0.0 };
            c.err("unfold kernel 0", || x.unfold_patches(&up(vec![0, 2], vec![1, 1])), &["unfold", "kernel"]);
            c.err("unfold stride 0", || x.unfold_patches(&up(vec![2, 2], vec![0, 1])), &["unfold", "stride"]);
            c.err("unfold 1-D params on a 2-D input", || x.unfold_patches(&up(vec![2], vec![1])), &["unfold", "[1, 2, 5, 5]"]);
            c.err("unfold kernel 6 > input 5", || x.unfold_patches(&up(vec![6, 2], vec![1, 1])), &["unfold"]);
            c.err("fold with the wrong L", || f32s(d, &[1, 8, 5])?.fold_patches(&up(vec![2, 2], vec![1, 1]), &[4, 4]), &["fold", "[1, 8, 5]"]);
            c.err("fold with channels not a multiple of the kernel", || f32s(d, &[1, 7, 9])?.fold_patches(&up(vec![2, 2], vec![1, 1]), &[4, 4]), &["fold", "[1, 7, 9]"]);
            c.finish()
        },
        "element_count_and_data" => |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[2, 3])?;
            c.err("reshape [2, 3] -> [4]", || x.reshape(4), &["reshape", "[2, 3]", "[4]"]);
            c.err("reshape [2, 3] -> [2, 2, 2]", || x.reshape((2, 2, 2)), &["reshape", "[2, 3]", "[2, 2, 2]"]);
            c.err("reshape_infer [-1, -1]", || x.reshape_infer(&[-1, -1]), &["reshape"]);
            c.err("reshape_infer [-1, 4]", || x.reshape_infer(&[-1, 4]), &["reshape", "[2, 3]"]);
            c.err("reshape_infer [-2, 3]", || x.reshape_infer(&[-2, 3]), &["reshape"]);
            c.err("from_vec of 5 values as [2, 3]", || Tensor::from_vec(vec![1.0f32; 5], (2, 3), d), &["from_vec", "[2, 3]", "5"]);
            c.err("from_host of 7 values as [2, 3]", || Tensor::from_host(HostData::U8(vec![0; 7]), (2, 3), d), &["[2, 3]", "7"]);
            c.err("to_vec::<f64> of f32", || x.to_vec::<f64>(), &["to_vec", "f32", "f64"]);
            c.err("to_vec::<u8> of f32", || x.to_vec::<u8>(), &["to_vec", "f32", "u8"]);
            c.err("to_vec2 of a 1-D tensor", || f32s(d, &[3])?.to_vec2::<f32>(), &["to_vec2", "[3]"]);
            c.err("to_scalar of [2, 3]", || x.to_scalar::<f32>(), &["to_scalar", "[2, 3]"]);
            c.err("to_f64 of [2, 3]", || x.to_f64(), &["to_f64", "[2, 3]"]);
            c.err("to_scalar::<i64> of f32", || f32s(d, &[1])?.to_scalar::<i64>(), &["to_vec", "f32", "i64"]);
            c.err("copy_from [3, 2] into [2, 3]", || x.copy_from(&f32s(d, &[3, 2])?), &["copy_from", "[2, 3]", "[3, 2]"]);
            let v = Var::from_tensor(&f32s(d, &[2, 3])?)?;
            c.err("Var::set with [6]", || v.set(&f32s(d, &[6])?), &["[2, 3]", "[6]"]);
            match x.copy_from(&v.sqr()?) {
                Err(Error::NoBackward { op: "copy_from", .. }) => {}
                other => c.fail(format!("copy_from a tracked source: expected NoBackward from copy_from, got {:?}", other.err())),
            }
            c.finish()
        },
        "backward_errors" => |d| {
            let mut c = Checks::new();
            let v = Var::from_tensor(&Tensor::ones((2, 3), DType::F64, d)?)?;
            c.err("backward on [2, 3]", || v.sqr()?.backward(), &["backward", "[2, 3]"]);
            c.err("backward on an untracked tensor", || Tensor::ones((), DType::F64, d)?.backward(), &["backward"]);
            c.err("backward on a detached result", || v.sqr()?.sum_all()?.detach().backward(), &["backward"]);
            c.err("backward_with_grad of the wrong shape", || v.sqr()?.backward_with_grad(&Tensor::ones(6, DType::F64, d)?), &["backward", "[2, 3]", "[6]"]);
            match v.argmax(1)?.to_dtype(DType::F64)?.sum_all()?.backward() {
                // Integer results are untracked, so there is nothing to differentiate.
                Err(e) if e.to_string().contains("backward") => {}
                Err(e) => c.fail(format!("backward through argmax: message {e} does not name backward")),
                Ok(_) => c.fail("backward through argmax succeeded (integer results must not be tracked)".into()),
            }
            c.finish()
        },
        "invalid_scalar_args" => |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[2, 3])?;
            c.err("dropout p = 1.5", || x.dropout(1.5, true), &["dropout", "1.5"]);
            c.err("dropout p = -0.1", || x.dropout(-0.1, true), &["dropout", "-0.1"]);
            c.err("dropout p = NaN", || x.dropout(f64::NAN, true), &["dropout", "NaN"]);
            c.err("dropout p = 2 in eval mode", || x.dropout(2.0, false), &["dropout", "2"]);
            c.err("bernoulli p = 2", || Tensor::bernoulli(2.0, 3, DType::F32, d), &["bernoulli", "2"]);
            c.err("rand lo == hi", || Tensor::rand_seeded(1.0, 1.0, 3, DType::F32, d, 1), &["rand", "1"]);
            c.err("rand lo > hi", || Tensor::rand_seeded(2.0, 1.0, 3, DType::F32, d, 1), &["rand", "2", "1"]);
            c.err("rand NaN bound", || Tensor::rand_seeded(f64::NAN, 1.0, 3, DType::F32, d, 1), &["rand", "NaN"]);
            c.err("global rand lo > hi", || Tensor::rand(2.0, 1.0, 3, DType::F32, d), &["rand"]);
            c.err("randn std -1", || Tensor::randn_seeded(0.0, -1.0, 3, DType::F32, d, 1), &["randn", "-1"]);
            c.err("randn std inf", || Tensor::randn_seeded(0.0, f64::INFINITY, 3, DType::F32, d, 1), &["randn", "inf"]);
            c.err("clamp min 2 > max 1", || x.clamp(2.0, 1.0), &["clamp", "2", "1"]);
            c.err("arange step 0", || Tensor::arange(0.0, 5.0, 0.0, DType::F32, d), &["arange", "step"]);
            c.err("arange infinite end", || Tensor::arange(0.0, f64::INFINITY, 1.0, DType::F32, d), &["arange", "inf"]);
            c.finish()
        },
        "invalid_attention_params" => |d| {
            let mut c = Checks::new();
            let p = |causal: bool, window: Option<usize>| AttentionParams { scale: 0.5, causal, window, ..Default::default() };
            let q5 = f32s(d, &[1, 2, 5, 4])?;
            let kv3 = f32s(d, &[1, 2, 3, 4])?;
            c.err("attention causal Lq 5 > Lk 3", || q5.scaled_dot_product_attention(&kv3, &kv3, &p(true, None)), &["attention", "5", "3"]);
            c.err("attention window 0", || kv3.scaled_dot_product_attention(&kv3, &kv3, &p(false, Some(0))), &["attention", "window"]);
            c.err("attention Hq 3 not a multiple of Hkv 2", || f32s(d, &[1, 3, 3, 4])?.scaled_dot_product_attention(&kv3, &kv3, &p(false, None)), &["attention", "[1, 3, 3, 4]", "[1, 2, 3, 4]"]);
            c.err("attention Hkv 0", || f32s(d, &[1, 2, 3, 4])?.scaled_dot_product_attention(&f32s(d, &[1, 0, 3, 4])?, &f32s(d, &[1, 0, 3, 4])?, &p(false, None)), &["attention", "[1, 0, 3, 4]"]);
            // A tracked bias or slopes: no gradient rule, so an error rather than a silently
            // missing gradient — also when q, k, v are untracked.
            let bias = Var::from_tensor(&Tensor::zeros((1, 1, 3, 3), DType::F32, d)?)?;
            let pb = AttentionParams { scale: 0.5, bias: Some(bias.as_tensor().clone()), ..Default::default() };
            match kv3.scaled_dot_product_attention(&kv3, &kv3, &pb) {
                Err(Error::NoBackward { op: "attention", .. }) => {}
                other => c.fail(format!("attention with a tracked bias: expected NoBackward from attention, got {:?}", other.err().map(|e| e.to_string()))),
            }
            let slopes = Var::from_tensor(&Tensor::ones(2, DType::F32, d)?)?;
            let ps = AttentionParams { scale: 0.5, alibi_slopes: Some(slopes.sqr()?), ..Default::default() };
            match kv3.scaled_dot_product_attention(&kv3, &kv3, &ps) {
                Err(Error::NoBackward { op: "attention", .. }) => {}
                other => c.fail(format!("attention with tracked slopes: expected NoBackward from attention, got {:?}", other.err().map(|e| e.to_string()))),
            }
            // A detached bias is fine.
            if let Err(e) = kv3.scaled_dot_product_attention(&kv3, &kv3, &AttentionParams { bias: Some(bias.detach()), ..pb.clone() }) {
                c.fail(format!("attention with a detached bias failed: {e}"));
            }
            c.finish()
        },
        "custom_op_without_backward" => |d| {
            let mut c = Checks::new();
            let v = Var::from_tensor(&Tensor::ones(3, DType::F32, d)?)?;
            match Tensor::apply_custom(&[&v], Arc::new(NoBackwardOp)) {
                Err(Error::NoBackward { op: "no_backward_op", .. }) => {}
                other => c.fail(format!("custom op without backward on a tracked input: expected NoBackward, got {:?}", other.err().map(|e| e.to_string()))),
            }
            c.finish()
        },
        // Inputs that are odd rather than wrong: the op may succeed or fail, but must not panic.
        "no_panic_edge_cases" => |d| {
            let mut c = Checks::new();
            // Non-causal attention with Lq > Lk and a window or ALiBi: query positions Lk − Lq + i
            // are negative for the first queries.
            let q = f32s(d, &[1, 2, 5, 4])?;
            let kv = f32s(d, &[1, 2, 3, 4])?;
            c.no_panic("attention Lq 5 > Lk 3 with window 2", || q.scaled_dot_product_attention(&kv, &kv, &AttentionParams { scale: 0.5, window: Some(2), ..Default::default() }));
            c.no_panic("attention Lq 5 > Lk 3 with alibi", || {
                let slopes = Tensor::ones(2, DType::F32, d)?;
                q.scaled_dot_product_attention(&kv, &kv, &AttentionParams { scale: 0.5, alibi_slopes: Some(slopes), ..Default::default() })
            });
            // Zero-size tensors.
            c.no_panic("conv_transpose1d of a zero-length input", || f32s(d, &[1, 4, 0])?.conv_transpose1d(&f32s(d, &[4, 2, 3])?, None, 1, 0, 0, 1, 1));
            c.no_panic("softmax of [0, 3]", || f32s(d, &[0, 3])?.softmax(-1));
            c.no_panic("layer_norm of [0, 3]", || f32s(d, &[0, 3])?.layer_norm(None, None, 1e-5));
            c.no_panic("matmul [2, 0] x [0, 3]", || f32s(d, &[2, 0])?.matmul(&f32s(d, &[0, 3])?));
            c.no_panic("sum over an empty dim", || f32s(d, &[2, 0])?.sum(1));
            c.no_panic("logsumexp over an empty dim", || f32s(d, &[2, 0])?.logsumexp(1));
            c.no_panic("index_select with no ids", || f32s(d, &[3, 2])?.index_select(&Tensor::zeros(0, DType::I64, d)?, 0));
            c.no_panic("embedding of an empty table", || f32s(d, &[0, 2])?.embedding(&Tensor::zeros(0, DType::I64, d)?));
            c.no_panic("adaptive_avg_pool2d of an empty input", || f32s(d, &[1, 1, 0, 0])?.adaptive_avg_pool2d((1, 1)));
            // Extreme scalars.
            c.no_panic("powf(NaN)", || f32s(d, &[2])?.powf(f64::NAN));
            c.no_panic("div_scalar(0)", || f32s(d, &[2])?.div_scalar(0.0));
            c.err("arange of 1e303 elements", || Tensor::arange(0.0, 1e3, 1e-300, DType::F32, d), &["arange"]);
            c.finish()
        },
        "device_mismatch" => device_mismatch,
    ]
}

/// A custom op with no backward rule.
struct NoBackwardOp;

impl crate::CustomOp for NoBackwardOp {
    fn name(&self) -> &'static str {
        "no_backward_op"
    }
    fn forward(&self, inputs: &[Tensor]) -> Result<Tensor> {
        inputs[0].affine(2.0, 0.0)
    }
}

fn device_mismatch(d: &Device) -> Result<()> {
    // Only one device of this backend is needed: the same kernels under another name count as a
    // different device for core's checks (which compare device names).
    let other = Device::new(Arc::new(OtherDevice(d.clone())));
    let (dn, on) = (d.name(), other.name());
    let mut c = Checks::new();
    let a = f32s(d, &[2, 3])?;
    let b = f32s(&other, &[2, 3])?;
    c.err("add across devices", || a.add(&b), &["add", &dn, &on]);
    c.err("eq across devices", || a.eq(&b), &["eq", &dn, &on]);
    c.err(
        "matmul across devices",
        || a.matmul(&f32s(&other, &[3, 2])?),
        &["matmul", &dn, &on],
    );
    c.err(
        "cat across devices",
        || Tensor::cat(&[&a, &b], 0),
        &["cat", &dn, &on],
    );
    let cond = Tensor::ones((2, 3), DType::U8, &other)?;
    c.err(
        "where condition on another device",
        || cond.where_cond(&a, &a),
        &["where", &dn, &on],
    );
    c.err(
        "index_select ids on another device",
        || a.index_select(&ids(&other, &[0])?, 0),
        &["index_select", &dn, &on],
    );
    c.err(
        "gather ids on another device",
        || a.gather(&Tensor::zeros((2, 3), DType::I64, &other)?, 1),
        &["gather", &dn, &on],
    );
    c.err(
        "scatter_add src on another device",
        || a.scatter_add(&Tensor::zeros((2, 3), DType::I64, d)?, &b, 1),
        &["scatter_add", &dn, &on],
    );
    c.err(
        "conv weight on another device",
        || f32s(d, &[1, 2, 5])?.conv1d(&f32s(&other, &[1, 2, 3])?, None, 1, 0, 1, 1),
        &["conv", &dn, &on],
    );
    c.err(
        "layer_norm weight on another device",
        || a.layer_norm(Some(&f32s(&other, &[3])?), None, 1e-5),
        &["layer_norm", &dn, &on],
    );
    let q = f32s(d, &[1, 1, 2, 4])?;
    let k = f32s(&other, &[1, 1, 2, 4])?;
    c.err(
        "attention k on another device",
        || {
            q.scaled_dot_product_attention(
                &k,
                &q,
                &AttentionParams {
                    scale: 1.0,
                    ..Default::default()
                },
            )
        },
        &["attention", &dn, &on],
    );
    c.err(
        "copy_from another device",
        || a.copy_from(&b),
        &["copy_from", &dn, &on],
    );
    // Moving is the way across, and it round-trips.
    let back = b.to_device(d)?;
    if !back.device().same_device(d) || back.to_f64_vec()? != b.to_f64_vec()? {
        c.fail("to_device across devices did not round-trip".into());
    }
    let v = Var::from_tensor(&f32s(d, &[2, 3])?.to_dtype(DType::F64)?)?;
    match v.to_device(&other)?.sqr()?.sum_all()?.backward() {
        Ok(g) => match g.get(v.as_tensor()) {
            Some(gv) if gv.device().same_device(d) => {}
            Some(gv) => c.fail(format!(
                "gradient through to_device landed on {}",
                gv.device().name()
            )),
            None => c.fail("no gradient through to_device".into()),
        },
        Err(e) => c.fail(format!("backward through to_device failed: {e}")),
    }
    c.finish()
}

/// The device under test, renamed: a distinct device for core, the same kernels underneath.
#[derive(Debug)]
struct OtherDevice(Device);

impl BackendDevice for OtherDevice {
    fn name(&self) -> String {
        format!("{}-other", self.0.name())
    }
    fn from_host(&self, data: HostData) -> Result<Storage> {
        self.0.backend().from_host(data)
    }
    fn to_host(&self, s: &dyn BackendStorage, layout: &Layout) -> Result<HostData> {
        self.0.backend().to_host(s, layout)
    }
    fn full(&self, n: usize, value: f64, dtype: DType) -> Result<Storage> {
        self.0.backend().full(n, value, dtype)
    }
    fn rand_uniform(&self, n: usize, lo: f64, hi: f64, dtype: DType, seed: u64) -> Result<Storage> {
        self.0.backend().rand_uniform(n, lo, hi, dtype, seed)
    }
    fn rand_normal(
        &self,
        n: usize,
        mean: f64,
        std: f64,
        dtype: DType,
        seed: u64,
    ) -> Result<Storage> {
        self.0.backend().rand_normal(n, mean, std, dtype, seed)
    }
    fn copy_strided(&self, s: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        self.0.backend().copy_strided(s, layout)
    }
    fn copy_into(
        &self,
        dst: &mut dyn BackendStorage,
        dst_l: &Layout,
        src: &dyn BackendStorage,
        src_l: &Layout,
    ) -> Result<()> {
        self.0.backend().copy_into(dst, dst_l, src, src_l)
    }
    fn cast(&self, s: &dyn BackendStorage, layout: &Layout, dtype: DType) -> Result<Storage> {
        self.0.backend().cast(s, layout, dtype)
    }
    fn unary(&self, op: UnaryOp, s: &dyn BackendStorage, layout: &Layout) -> Result<Storage> {
        self.0.backend().unary(op, s, layout)
    }
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage> {
        self.0.backend().binary(op, lhs, lhs_l, rhs, rhs_l)
    }
    fn cmp(
        &self,
        op: CmpOp,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage> {
        self.0.backend().cmp(op, lhs, lhs_l, rhs, rhs_l)
    }
    fn where_cond(
        &self,
        cond: &dyn BackendStorage,
        cond_l: &Layout,
        on_true: &dyn BackendStorage,
        t_l: &Layout,
        on_false: &dyn BackendStorage,
        f_l: &Layout,
    ) -> Result<Storage> {
        self.0
            .backend()
            .where_cond(cond, cond_l, on_true, t_l, on_false, f_l)
    }
    fn reduce(
        &self,
        op: ReduceOp,
        s: &dyn BackendStorage,
        layout: &Layout,
        dims: &[usize],
    ) -> Result<Storage> {
        self.0.backend().reduce(op, s, layout, dims)
    }
    fn cumsum(&self, s: &dyn BackendStorage, layout: &Layout, dim: usize) -> Result<Storage> {
        self.0.backend().cumsum(s, layout, dim)
    }
    fn matmul(
        &self,
        lhs: &dyn BackendStorage,
        lhs_l: &Layout,
        rhs: &dyn BackendStorage,
        rhs_l: &Layout,
    ) -> Result<Storage> {
        self.0.backend().matmul(lhs, lhs_l, rhs, rhs_l)
    }
    fn index_select(
        &self,
        src: &dyn BackendStorage,
        src_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        self.0.backend().index_select(src, src_l, ids, ids_l, dim)
    }
    fn gather(
        &self,
        src: &dyn BackendStorage,
        src_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        self.0.backend().gather(src, src_l, ids, ids_l, dim)
    }
    fn scatter_add(
        &self,
        dst: &dyn BackendStorage,
        dst_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        src: &dyn BackendStorage,
        src_l: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        self.0
            .backend()
            .scatter_add(dst, dst_l, ids, ids_l, src, src_l, dim)
    }
    fn index_add(
        &self,
        dst: &dyn BackendStorage,
        dst_l: &Layout,
        ids: &dyn BackendStorage,
        ids_l: &Layout,
        src: &dyn BackendStorage,
        src_l: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        self.0
            .backend()
            .index_add(dst, dst_l, ids, ids_l, src, src_l, dim)
    }
    fn unfold(&self, s: &dyn BackendStorage, layout: &Layout, p: &UnfoldParams) -> Result<Storage> {
        self.0.backend().unfold(s, layout, p)
    }
    fn fold(
        &self,
        s: &dyn BackendStorage,
        layout: &Layout,
        p: &UnfoldParams,
        out_spatial: &[usize],
    ) -> Result<Storage> {
        self.0.backend().fold(s, layout, p, out_spatial)
    }
}
