//! Error cases: mismatched and non-broadcastable shapes.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("shape_mismatch_elementwise", |d| {
            let mut c = Checks::new();
            let (a, b) = (f32s(d, &[2, 3])?, f32s(d, &[4])?);
            c.err("add [2, 3] + [4]", || a.add(&b), &["add", "[2, 3]", "[4]"]);
            c.err("mul [2, 3] * [4]", || a.mul(&b), &["mul", "[2, 3]", "[4]"]);
            c.err(
                "maximum [2, 3], [4]",
                || a.maximum(&b),
                &["maximum", "[2, 3]", "[4]"],
            );
            c.err("eq [2, 3], [4]", || a.eq(&b), &["eq", "[2, 3]", "[4]"]);
            c.err(
                "add [2, 3] + [3, 2]",
                || a.add(&f32s(d, &[3, 2])?),
                &["add", "[2, 3]", "[3, 2]"],
            );
            c.err(
                "add [2, 1, 3] + [4, 2]",
                || f32s(d, &[2, 1, 3])?.add(&f32s(d, &[4, 2])?),
                &["add", "[2, 1, 3]", "[4, 2]"],
            );
            c.err("sub operator", || &a - &b, &["sub", "[2, 3]", "[4]"]);
            c.err(
                "broadcast_as [2, 3] -> [3, 3]",
                || a.broadcast_as((3, 3)),
                &["broadcast_as", "[2, 3]", "[3, 3]"],
            );
            c.err(
                "broadcast_as [2, 3] -> [3]",
                || a.broadcast_as(3),
                &["broadcast_as", "[2, 3]", "[3]"],
            );
            c.finish()
        }),
        case("shape_mismatch_matmul", |d| {
            let mut c = Checks::new();
            c.err(
                "matmul [2, 3] x [4, 5]",
                || f32s(d, &[2, 3])?.matmul(&f32s(d, &[4, 5])?),
                &["matmul", "[2, 3]", "[4, 5]"],
            );
            c.err(
                "matmul batch [2, 3, 4] x [3, 4, 5]",
                || f32s(d, &[2, 3, 4])?.matmul(&f32s(d, &[3, 4, 5])?),
                &["matmul", "[2, 3, 4]", "[3, 4, 5]"],
            );
            c.err(
                "matmul [3] x [4]",
                || f32s(d, &[3])?.matmul(&f32s(d, &[4])?),
                &["matmul", "[3]", "[4]"],
            );
            c.err(
                "matmul [2, 3] x [4]",
                || f32s(d, &[2, 3])?.matmul(&f32s(d, &[4])?),
                &["matmul", "[4]"],
            );
            c.err(
                "matmul of a scalar",
                || Tensor::scalar(1.0, DType::F32, d)?.matmul(&f32s(d, &[2, 2])?),
                &["matmul", "[2, 2]"],
            );
            c.finish()
        }),
        case("shape_mismatch_cat_stack", |d| {
            let mut c = Checks::new();
            let (a, b) = (f32s(d, &[2, 3])?, f32s(d, &[2, 4])?);
            c.err(
                "cat [2, 3], [2, 4] on dim 0",
                || Tensor::cat(&[&a, &b], 0),
                &["cat", "[2, 3]", "[2, 4]"],
            );
            c.err(
                "cat [2, 3], [3] (rank)",
                || Tensor::cat(&[&a, &f32s(d, &[3])?], 0),
                &["cat", "[2, 3]", "[3]"],
            );
            c.err("cat of nothing", || Tensor::cat(&[], 0), &["cat"]);
            c.err(
                "cat dim 2 of rank 2",
                || Tensor::cat(&[&a, &a], 2),
                &["cat", "2"],
            );
            c.err(
                "stack [2, 3], [3, 2]",
                || Tensor::stack(&[&a, &f32s(d, &[3, 2])?], 0),
                &["stack", "[2, 3]", "[3, 2]"],
            );
            c.err("stack of nothing", || Tensor::stack(&[], 0), &["stack"]);
            c.err(
                "stack dim 4 of rank 2",
                || Tensor::stack(&[&a, &a], 4),
                &["stack", "4"],
            );
            c.finish()
        }),
        case("shape_mismatch_where", |d| {
            let mut c = Checks::new();
            let cond = Tensor::zeros((2, 3), DType::U8, d)?;
            c.err(
                "where cond [2, 3], on_true [4]",
                || cond.where_cond(&f32s(d, &[4])?, &f32s(d, &[2, 3])?),
                &["where", "[2, 3]", "[4]"],
            );
            c.err(
                "where cond [2, 3], on_false [3, 3]",
                || cond.where_cond(&f32s(d, &[2, 3])?, &f32s(d, &[3, 3])?),
                &["where", "[3, 3]"],
            );
            c.err_any_op(
                "masked_fill with a [4] mask",
                || f32s(d, &[2, 3])?.masked_fill(&Tensor::zeros(4, DType::U8, d)?, 0.0),
                &["masked_fill", "where"],
                &["[2, 3]", "[4]"],
            );
            c.err(
                "where with an f32 condition",
                || f32s(d, &[2, 3])?.where_cond(&f32s(d, &[2, 3])?, &f32s(d, &[2, 3])?),
                &["where", "f32"],
            );
            c.finish()
        }),
        case("shape_mismatch_indexing", |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[3, 4])?;
            c.err(
                "gather with [3] ids into [3, 4]",
                || x.gather(&ids(d, &[0, 1, 2])?, 1),
                &["gather", "[3, 4]", "[3]"],
            );
            let big = Tensor::zeros((4, 2), DType::I64, d)?;
            c.err(
                "gather [4, 2] ids along dim 1 of [3, 4]",
                || x.gather(&big, 1),
                &["gather", "[3, 4]", "[4, 2]"],
            );
            let i24 = Tensor::zeros((2, 4), DType::I64, d)?;
            c.err(
                "scatter_add ids [2, 4] with src [2, 3]",
                || x.scatter_add(&i24, &f32s(d, &[2, 3])?, 0),
                &["scatter_add", "[2, 4]", "[2, 3]"],
            );
            c.err(
                "scatter_add ids [4, 4] into [3, 4] along dim 1",
                || {
                    x.scatter_add(
                        &Tensor::zeros((4, 4), DType::I64, d)?,
                        &f32s(d, &[4, 4])?,
                        1,
                    )
                },
                &["scatter_add", "[3, 4]", "[4, 4]"],
            );
            let dst = f32s(d, &[5, 3])?;
            c.err(
                "index_add src [3, 4] into [5, 3]",
                || dst.index_add(&ids(d, &[0, 1, 2])?, &f32s(d, &[3, 4])?, 0),
                &["index_add", "[5, 3]", "[3, 4]"],
            );
            c.err(
                "index_add 2 ids for a [3, 3] src",
                || dst.index_add(&ids(d, &[0, 1])?, &f32s(d, &[3, 3])?, 0),
                &["index_add", "[3, 3]", "[2]"],
            );
            c.err(
                "index_select with [2, 2] ids",
                || x.index_select(&Tensor::zeros((2, 2), DType::I64, d)?, 0),
                &["index_select", "[2, 2]"],
            );
            c.err(
                "index_select with f32 ids",
                || x.index_select(&f32s(d, &[2])?, 0),
                &["index_select", "f32"],
            );
            c.err(
                "gather with f64 ids",
                || x.gather(&Tensor::zeros((3, 4), DType::F64, d)?, 0),
                &["gather", "f64"],
            );
            c.err_any_op(
                "embedding from a 1-D table",
                || f32s(d, &[5])?.embedding(&ids(d, &[0])?),
                &["embedding"],
                &["[5]"],
            );
            c.finish()
        }),
        case("shape_mismatch_nn", |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[1, 3, 5, 5])?;
            c.err(
                "conv2d Cin 3 vs weight [4, 2, 3, 3]",
                || x.conv2d(&f32s(d, &[4, 2, 3, 3])?, None, 1, 0, 1, 1),
                &["conv", "[1, 3, 5, 5]", "[4, 2, 3, 3]"],
            );
            c.err(
                "conv2d with a rank-3 weight",
                || x.conv2d(&f32s(d, &[4, 3, 3])?, None, 1, 0, 1, 1),
                &["conv", "[1, 3, 5, 5]", "[4, 3, 3]"],
            );
            c.err(
                "conv1d with a rank-4 input",
                || x.conv1d(&f32s(d, &[4, 3, 3])?, None, 1, 0, 1, 1),
                &["conv", "[1, 3, 5, 5]", "[4, 3, 3]"],
            );
            c.err(
                "conv2d bias [3] for 4 channels",
                || x.conv2d(&f32s(d, &[4, 3, 3, 3])?, Some(&f32s(d, &[3])?), 1, 0, 1, 1),
                &["conv", "[3]"],
            );
            c.err(
                "conv_transpose2d weight [2, 3, 3, 3] for Cin 3",
                || x.conv_transpose2d(&f32s(d, &[2, 3, 3, 3])?, None, 1, 0, 0, 1, 1),
                &["conv_transpose", "[1, 3, 5, 5]", "[2, 3, 3, 3]"],
            );
            let xl = f32s(d, &[2, 5])?;
            c.err(
                "layer_norm weight [4] for [2, 5]",
                || xl.layer_norm(Some(&f32s(d, &[4])?), None, 1e-5),
                &["layer_norm", "[2, 5]", "[4]"],
            );
            c.err(
                "layer_norm bias [5, 1]",
                || xl.layer_norm(None, Some(&f32s(d, &[5, 1])?), 1e-5),
                &["layer_norm", "[5, 1]"],
            );
            c.err(
                "layer_norm of a scalar",
                || Tensor::scalar(1.0, DType::F32, d)?.layer_norm(None, None, 1e-5),
                &["layer_norm"],
            );
            c.err(
                "rms_norm weight [3] for [2, 5]",
                || xl.rms_norm(Some(&f32s(d, &[3])?), 1e-5),
                &["rms_norm", "[2, 5]", "[3]"],
            );
            c.err(
                "group_norm 3 groups of 4 channels",
                || f32s(d, &[2, 4, 3])?.group_norm(3, None, None, 1e-5),
                &["group_norm", "[2, 4, 3]"],
            );
            c.err(
                "group_norm 0 groups",
                || f32s(d, &[2, 4, 3])?.group_norm(0, None, None, 1e-5),
                &["group_norm"],
            );
            c.err(
                "group_norm weight [3] for 4 channels",
                || f32s(d, &[2, 4, 3])?.group_norm(2, Some(&f32s(d, &[3])?), None, 1e-5),
                &["group_norm", "[3]"],
            );
            c.err(
                "batch_norm weight [2] for 3 channels",
                || {
                    f32s(d, &[4, 3])?.batch_norm(
                        None,
                        None,
                        Some(&f32s(d, &[2])?),
                        None,
                        true,
                        0.1,
                        1e-5,
                    )
                },
                &["batch_norm", "[2]"],
            );
            c.err(
                "batch_norm training on one value per channel",
                || f32s(d, &[1, 3])?.batch_norm(None, None, None, None, true, 0.1, 1e-5),
                &["batch_norm", "[1, 3]"],
            );
            c.err(
                "batch_norm eval without running stats",
                || f32s(d, &[4, 3])?.batch_norm(None, None, None, None, false, 0.1, 1e-5),
                &["batch_norm"],
            );
            c.err(
                "batch_norm of a 1-D input",
                || f32s(d, &[4])?.batch_norm(None, None, None, None, true, 0.1, 1e-5),
                &["batch_norm", "[4]"],
            );
            let cs = f32s(d, &[3, 2])?;
            c.err(
                "rope with odd D",
                || f32s(d, &[1, 1, 3, 5])?.rope(&cs, &cs, false),
                &["rope", "[1, 1, 3, 5]"],
            );
            c.err(
                "rope cos [3, 3] for D 4",
                || f32s(d, &[1, 1, 3, 4])?.rope(&f32s(d, &[3, 3])?, &cs, false),
                &["rope", "[3, 3]"],
            );
            c.err(
                "rope of a rank-3 input",
                || f32s(d, &[1, 3, 4])?.rope(&cs, &cs, true),
                &["rope", "[1, 3, 4]"],
            );
            c.err(
                "softmax of a scalar",
                || Tensor::scalar(1.0, DType::F32, d)?.softmax(-1),
                &["softmax"],
            );
            c.finish()
        }),
        case("shape_mismatch_attention", |d| {
            let mut c = Checks::new();
            let p = AttentionParams {
                scale: 0.5,
                ..Default::default()
            };
            let q = f32s(d, &[1, 2, 3, 4])?;
            c.err(
                "attention k head dim 3 vs q 4",
                || {
                    q.scaled_dot_product_attention(
                        &f32s(d, &[1, 2, 5, 3])?,
                        &f32s(d, &[1, 2, 5, 3])?,
                        &p,
                    )
                },
                &["attention", "[1, 2, 3, 4]", "[1, 2, 5, 3]"],
            );
            c.err(
                "attention k/v length mismatch",
                || {
                    q.scaled_dot_product_attention(
                        &f32s(d, &[1, 2, 5, 4])?,
                        &f32s(d, &[1, 2, 6, 4])?,
                        &p,
                    )
                },
                &["attention", "[1, 2, 5, 4]", "[1, 2, 6, 4]"],
            );
            c.err(
                "attention batch mismatch",
                || {
                    q.scaled_dot_product_attention(
                        &f32s(d, &[2, 2, 5, 4])?,
                        &f32s(d, &[2, 2, 5, 4])?,
                        &p,
                    )
                },
                &["attention", "[2, 2, 5, 4]"],
            );
            c.err(
                "attention rank-3 q",
                || {
                    f32s(d, &[2, 3, 4])?.scaled_dot_product_attention(
                        &f32s(d, &[1, 2, 5, 4])?,
                        &f32s(d, &[1, 2, 5, 4])?,
                        &p,
                    )
                },
                &["attention", "[2, 3, 4]"],
            );
            let kv = f32s(d, &[1, 2, 5, 4])?;
            c.err(
                "attention Hq 3 vs Hkv 2",
                || f32s(d, &[1, 3, 3, 4])?.scaled_dot_product_attention(&kv, &kv, &p),
                &["attention", "[1, 3, 3, 4]", "[1, 2, 5, 4]"],
            );
            let bad_bias = AttentionParams {
                scale: 0.5,
                bias: Some(f32s(d, &[1, 2, 3, 4])?),
                ..Default::default()
            };
            c.err(
                "attention bias [1, 2, 3, 4] for Lk 5",
                || q.scaled_dot_product_attention(&kv, &kv, &bad_bias),
                &["attention", "[1, 2, 3, 4]"],
            );
            let bad_slopes = AttentionParams {
                scale: 0.5,
                alibi_slopes: Some(f32s(d, &[3])?),
                ..Default::default()
            };
            c.err(
                "attention alibi slopes [3] for 2 heads",
                || q.scaled_dot_product_attention(&kv, &kv, &bad_slopes),
                &["attention", "[3]"],
            );
            c.finish()
        }),
    ]
}
