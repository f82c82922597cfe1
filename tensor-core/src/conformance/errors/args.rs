//! Error cases: dtypes, dims, index values, element counts, backward misuse, scalar
//! arguments, custom ops, and odd-but-valid inputs that must not panic.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("dtype_mismatch", |d| {
            let mut c = Checks::new();
            let a = f32s(d, &[2, 2])?;
            let b = Tensor::zeros((2, 2), DType::F64, d)?;
            c.err("add f32 + f64", || a.add(&b), &["add", "f32", "f64"]);
            c.err("lt f32, f64", || a.lt(&b), &["lt", "f32", "f64"]);
            c.err(
                "matmul f32 x f64",
                || a.matmul(&b),
                &["matmul", "f32", "f64"],
            );
            let cond = Tensor::ones((2, 2), DType::U8, d)?;
            c.err(
                "where f32 / f64 branches",
                || cond.where_cond(&a, &b),
                &["where", "f32", "f64"],
            );
            c.err(
                "cat f32, f64",
                || Tensor::cat(&[&a, &b], 0),
                &["cat", "f32", "f64"],
            );
            c.err(
                "scatter_add f64 src into f32",
                || a.scatter_add(&Tensor::zeros((2, 2), DType::I64, d)?, &b, 0),
                &["scatter_add", "f32", "f64"],
            );
            c.err(
                "index_add f64 src into f32",
                || a.index_add(&ids(d, &[0, 1])?, &b, 0),
                &["index_add", "f32", "f64"],
            );
            let x = f32s(d, &[1, 2, 5])?;
            c.err(
                "conv1d f32 input, f64 weight",
                || x.conv1d(&Tensor::zeros((3, 2, 3), DType::F64, d)?, None, 1, 0, 1, 1),
                &["conv", "f32", "f64"],
            );
            c.err(
                "conv_transpose1d f32 input, f16 weight",
                || {
                    x.conv_transpose1d(
                        &Tensor::zeros((2, 3, 3), DType::F16, d)?,
                        None,
                        1,
                        0,
                        0,
                        1,
                        1,
                    )
                },
                &["conv_transpose", "f32", "f16"],
            );
            c.err(
                "layer_norm f64 weight for f32",
                || a.layer_norm(Some(&Tensor::ones(2, DType::F64, d)?), None, 1e-5),
                &["layer_norm", "f32", "f64"],
            );
            c.err(
                "rope f64 cos for f32",
                || {
                    f32s(d, &[1, 1, 3, 4])?.rope(
                        &Tensor::ones((3, 2), DType::F64, d)?,
                        &f32s(d, &[3, 2])?,
                        false,
                    )
                },
                &["rope", "f32", "f64"],
            );
            let q = f32s(d, &[1, 1, 2, 4])?;
            let k64 = Tensor::zeros((1, 1, 2, 4), DType::F64, d)?;
            c.err(
                "attention f32 q, f64 k",
                || {
                    q.scaled_dot_product_attention(
                        &k64,
                        &q,
                        &AttentionParams {
                            scale: 1.0,
                            ..Default::default()
                        },
                    )
                },
                &["attention", "f32", "f64"],
            );
            let bias = AttentionParams {
                scale: 1.0,
                bias: Some(Tensor::zeros((1, 1, 2, 2), DType::BF16, d)?),
                ..Default::default()
            };
            c.err(
                "attention bf16 bias for f32",
                || q.scaled_dot_product_attention(&q, &q, &bias),
                &["attention", "f32", "bf16"],
            );
            c.finish()
        }),
        case("int_dtype_to_float_op", |d| {
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
            c.err(
                "log_softmax on i64",
                || i.log_softmax(-1),
                &["log_softmax", "i64"],
            );
            c.err(
                "matmul on u32",
                || w.matmul(&typed(d, &[3, 2], DType::U32)?),
                &["matmul", "u32"],
            );
            c.err("mean on i64", || i.mean(0), &["mean", "i64"]);
            c.err("var on u8", || u.var(1, 1), &["var", "u8"]);
            c.err("logsumexp on u32", || w.logsumexp(1), &["logsumexp", "u32"]);
            c.err(
                "layer_norm on i64",
                || i.layer_norm(None, None, 1e-5),
                &["layer_norm", "i64"],
            );
            c.err(
                "conv1d on u8",
                || {
                    typed(d, &[1, 2, 5], DType::U8)?.conv1d(
                        &typed(d, &[1, 2, 3], DType::U8)?,
                        None,
                        1,
                        0,
                        1,
                        1,
                    )
                },
                &["conv", "u8"],
            );
            c.err(
                "max_pool1d on i64",
                || typed(d, &[1, 2, 5], DType::I64)?.max_pool1d(2, 2, 0),
                &["max_pool", "i64"],
            );
            c.err(
                "dropout on i64",
                || i.dropout(0.5, true),
                &["dropout", "i64"],
            );
            c.err(
                "rand in i64",
                || Tensor::rand_seeded(0.0, 1.0, 4, DType::I64, d, 1),
                &["rand", "i64"],
            );
            c.err(
                "randn in u8",
                || Tensor::randn_seeded(0.0, 1.0, 4, DType::U8, d, 1),
                &["randn", "u8"],
            );
            c.err(
                "attention on u32",
                || {
                    w.reshape((1, 1, 2, 3))?.scaled_dot_product_attention(
                        &w.reshape((1, 1, 2, 3))?,
                        &w.reshape((1, 1, 2, 3))?,
                        &AttentionParams::default(),
                    )
                },
                &["attention", "u32"],
            );
            c.finish()
        }),
        case("dim_out_of_range", |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[2, 3])?;
            c.err("sum(5) of [2, 3]", || x.sum(5), &["sum", "5", "[2, 3]"]);
            c.err("sum(-3) of [2, 3]", || x.sum(-3), &["sum", "-3", "[2, 3]"]);
            c.err("sum([0, 0]) repeated dim", || x.sum([0, 0]), &["sum"]);
            c.err(
                "max_keepdim(2)",
                || x.max_keepdim(2),
                &["max", "2", "[2, 3]"],
            );
            c.err("mean(7)", || x.mean(7), &["mean", "7"]);
            c.err("argmax(2)", || x.argmax(2), &["argmax", "2", "[2, 3]"]);
            c.err("cumsum(3)", || x.cumsum(3), &["cumsum", "3"]);
            c.err("softmax(2)", || x.softmax(2), &["softmax", "2"]);
            c.err(
                "transpose(0, 9)",
                || x.transpose(0, 9),
                &["transpose", "9", "[2, 3]"],
            );
            c.err(
                "permute([0, 0])",
                || x.permute([0, 0]),
                &["permute", "[2, 3]"],
            );
            c.err(
                "permute([0, 1, 2])",
                || x.permute([0, 1, 2]),
                &["permute", "[2, 3]"],
            );
            c.err(
                "narrow(1, 2, 5) beyond the end",
                || x.narrow(1, 2, 5),
                &["narrow", "[2, 3]"],
            );
            c.err(
                "narrow(1, usize::MAX, 2) overflow",
                || x.narrow(1, usize::MAX, 2),
                &["narrow"],
            );
            c.err("narrow(2, 0, 1)", || x.narrow(2, 0, 1), &["narrow", "2"]);
            c.err(
                "squeeze(1) of size 3",
                || x.squeeze(1),
                &["squeeze", "[2, 3]"],
            );
            c.err("squeeze(-3)", || x.squeeze(-3), &["squeeze", "-3"]);
            c.err("unsqueeze(4)", || x.unsqueeze(4), &["unsqueeze", "4"]);
            c.err("unsqueeze(-4)", || x.unsqueeze(-4), &["unsqueeze", "-4"]);
            c.err("flatten(1, 0)", || x.flatten(1, 0), &["flatten"]);
            c.err("flatten(0, 5)", || x.flatten(0, 5), &["flatten", "5"]);
            c.err("chunk(2, 2)", || x.chunk(2, 2), &["chunk", "2"]);
            c.err("chunk(0, 0)", || x.chunk(0, 0), &["chunk"]);
            c.err(
                "split sizes [1, 1] of 3",
                || x.split(&[1, 1], 1),
                &["split", "[1, 1]"],
            );
            c.err(
                "index_select dim 2",
                || x.index_select(&ids(d, &[0])?, 2),
                &["index_select", "2"],
            );
            c.err("pad dim 3", || x.pad_with_zeros(3, 1, 1), &["pad", "3"]);
            c.err("t() of a 1-D tensor", || f32s(d, &[3])?.t(), &["t", "[3]"]);
            c.err(
                "triu of a 1-D tensor",
                || f32s(d, &[3])?.triu(0),
                &["triu", "[3]"],
            );
            c.err("dim(2) of [2, 3]", || x.dim(2), &["2", "[2, 3]"]);
            c.err(
                "max over an empty dim",
                || f32s(d, &[2, 0])?.max(1),
                &["max", "[2, 0]"],
            );
            c.err(
                "argmin over an empty dim",
                || f32s(d, &[0, 2])?.argmin(0),
                &["argmin", "[0, 2]"],
            );
            c.err(
                "var with one element",
                || f32s(d, &[2, 1])?.var(1, 1),
                &["var"],
            );
            c.finish()
        }),
        case("index_out_of_range", |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[3, 4])?;
            c.err(
                "index_select id 5 of 3",
                || x.index_select(&ids(d, &[0, 5])?, 0),
                &["index_select", "5"],
            );
            c.err(
                "index_select id 4 on dim 1 (u32)",
                || x.index_select(&Tensor::from_vec(vec![4u32], 1, d)?, 1),
                &["index_select", "4"],
            );
            c.err(
                "index_select id 200 (u8)",
                || x.index_select(&Tensor::from_vec(vec![200u8], 1, d)?, 0),
                &["index_select", "200"],
            );
            c.err(
                "index_select negative id",
                || x.index_select(&ids(d, &[-1])?, 0),
                &["index_select", "-1"],
            );
            c.err(
                "gather id 3 along dim 0 of size 3",
                || x.gather(&Tensor::from_vec(vec![0i64, 3, 1, 2], (1, 4), d)?, 0),
                &["gather", "3"],
            );
            c.err(
                "gather id -2",
                || x.gather(&Tensor::from_vec(vec![-2i64], (1, 1), d)?, 1),
                &["gather", "-2"],
            );
            c.err_any_op(
                "embedding id 7 of 5",
                || f32s(d, &[5, 2])?.embedding(&Tensor::from_vec(vec![1i64, 7], (1, 2), d)?),
                &["embedding", "index_select"],
                &["7"],
            );
            let src = f32s(d, &[1, 4])?;
            c.err(
                "scatter_add id 3 of 3",
                || x.scatter_add(&Tensor::from_vec(vec![0i64, 3, 0, 0], (1, 4), d)?, &src, 0),
                &["scatter_add", "3"],
            );
            c.err(
                "scatter_add id 4 along dim 1",
                || x.scatter_add(&Tensor::from_vec(vec![4u32, 0, 0, 0], (1, 4), d)?, &src, 1),
                &["scatter_add", "4"],
            );
            c.err(
                "index_add id 9",
                || x.index_add(&ids(d, &[9])?, &f32s(d, &[1, 4])?, 0),
                &["index_add", "9"],
            );
            c.err(
                "index_add negative id",
                || x.index_add(&ids(d, &[-1])?, &f32s(d, &[1, 4])?, 0),
                &["index_add", "-1"],
            );
            // The backward rules of index ops must not turn a bad index into a panic either.
            let v = Var::from_tensor(&Tensor::zeros((3, 2), DType::F64, d)?)?;
            c.err(
                "tracked index_select id 3",
                || v.index_select(&ids(d, &[3])?, 0),
                &["index_select", "3"],
            );
            c.finish()
        }),
        case("element_count_and_data", |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[2, 3])?;
            c.err(
                "reshape [2, 3] -> [4]",
                || x.reshape(4),
                &["reshape", "[2, 3]", "[4]"],
            );
            c.err(
                "reshape [2, 3] -> [2, 2, 2]",
                || x.reshape((2, 2, 2)),
                &["reshape", "[2, 3]", "[2, 2, 2]"],
            );
            c.err(
                "reshape_infer [-1, -1]",
                || x.reshape_infer(&[-1, -1]),
                &["reshape"],
            );
            c.err(
                "reshape_infer [-1, 4]",
                || x.reshape_infer(&[-1, 4]),
                &["reshape", "[2, 3]"],
            );
            c.err(
                "reshape_infer [-2, 3]",
                || x.reshape_infer(&[-2, 3]),
                &["reshape"],
            );
            c.err(
                "from_vec of 5 values as [2, 3]",
                || Tensor::from_vec(vec![1.0f32; 5], (2, 3), d),
                &["from_vec", "[2, 3]", "5"],
            );
            c.err(
                "from_host of 7 values as [2, 3]",
                || Tensor::from_host(HostData::U8(vec![0; 7]), (2, 3), d),
                &["[2, 3]", "7"],
            );
            c.err(
                "to_vec::<f64> of f32",
                || x.to_vec::<f64>(),
                &["to_vec", "f32", "f64"],
            );
            c.err(
                "to_vec::<u8> of f32",
                || x.to_vec::<u8>(),
                &["to_vec", "f32", "u8"],
            );
            c.err(
                "to_vec2 of a 1-D tensor",
                || f32s(d, &[3])?.to_vec2::<f32>(),
                &["to_vec2", "[3]"],
            );
            c.err(
                "to_scalar of [2, 3]",
                || x.to_scalar::<f32>(),
                &["to_scalar", "[2, 3]"],
            );
            c.err("to_f64 of [2, 3]", || x.to_f64(), &["to_f64", "[2, 3]"]);
            c.err(
                "to_scalar::<i64> of f32",
                || f32s(d, &[1])?.to_scalar::<i64>(),
                &["to_vec", "f32", "i64"],
            );
            c.err(
                "copy_from [3, 2] into [2, 3]",
                || x.copy_from(&f32s(d, &[3, 2])?),
                &["copy_from", "[2, 3]", "[3, 2]"],
            );
            let v = Var::from_tensor(&f32s(d, &[2, 3])?)?;
            c.err(
                "Var::set with [6]",
                || v.set(&f32s(d, &[6])?),
                &["[2, 3]", "[6]"],
            );
            match x.copy_from(&v.sqr()?) {
                Err(Error::NoBackward {
                    op: "copy_from", ..
                }) => {}
                other => c.fail(format!(
                    "copy_from a tracked source: expected NoBackward from copy_from, got {:?}",
                    other.err()
                )),
            }
            c.finish()
        }),
        case("backward_errors", |d| {
            let mut c = Checks::new();
            let v = Var::from_tensor(&Tensor::ones((2, 3), DType::F64, d)?)?;
            c.err(
                "backward on [2, 3]",
                || v.sqr()?.backward(),
                &["backward", "[2, 3]"],
            );
            c.err(
                "backward on an untracked tensor",
                || Tensor::ones((), DType::F64, d)?.backward(),
                &["backward"],
            );
            c.err(
                "backward on a detached result",
                || v.sqr()?.sum_all()?.detach().backward(),
                &["backward"],
            );
            c.err(
                "backward_with_grad of the wrong shape",
                || {
                    v.sqr()?
                        .backward_with_grad(&Tensor::ones(6, DType::F64, d)?)
                },
                &["backward", "[2, 3]", "[6]"],
            );
            match v.argmax(1)?.to_dtype(DType::F64)?.sum_all()?.backward() {
                // Integer results are untracked, so there is nothing to differentiate.
                Err(e) if e.to_string().contains("backward") => {}
                Err(e) => c.fail(format!(
                    "backward through argmax: message {e} does not name backward"
                )),
                Ok(_) => c.fail(
                    "backward through argmax succeeded (integer results must not be tracked)"
                        .into(),
                ),
            }
            c.finish()
        }),
        case("invalid_scalar_args", |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[2, 3])?;
            c.err(
                "dropout p = 1.5",
                || x.dropout(1.5, true),
                &["dropout", "1.5"],
            );
            c.err(
                "dropout p = -0.1",
                || x.dropout(-0.1, true),
                &["dropout", "-0.1"],
            );
            c.err(
                "dropout p = NaN",
                || x.dropout(f64::NAN, true),
                &["dropout", "NaN"],
            );
            c.err(
                "dropout p = 2 in eval mode",
                || x.dropout(2.0, false),
                &["dropout", "2"],
            );
            c.err(
                "bernoulli p = 2",
                || Tensor::bernoulli(2.0, 3, DType::F32, d),
                &["bernoulli", "2"],
            );
            c.err(
                "rand lo == hi",
                || Tensor::rand_seeded(1.0, 1.0, 3, DType::F32, d, 1),
                &["rand", "1"],
            );
            c.err(
                "rand lo > hi",
                || Tensor::rand_seeded(2.0, 1.0, 3, DType::F32, d, 1),
                &["rand", "2", "1"],
            );
            c.err(
                "rand NaN bound",
                || Tensor::rand_seeded(f64::NAN, 1.0, 3, DType::F32, d, 1),
                &["rand", "NaN"],
            );
            c.err(
                "global rand lo > hi",
                || Tensor::rand(2.0, 1.0, 3, DType::F32, d),
                &["rand"],
            );
            c.err(
                "randn std -1",
                || Tensor::randn_seeded(0.0, -1.0, 3, DType::F32, d, 1),
                &["randn", "-1"],
            );
            c.err(
                "randn std inf",
                || Tensor::randn_seeded(0.0, f64::INFINITY, 3, DType::F32, d, 1),
                &["randn", "inf"],
            );
            c.err(
                "clamp min 2 > max 1",
                || x.clamp(2.0, 1.0),
                &["clamp", "2", "1"],
            );
            c.err(
                "arange step 0",
                || Tensor::arange(0.0, 5.0, 0.0, DType::F32, d),
                &["arange", "step"],
            );
            c.err(
                "arange infinite end",
                || Tensor::arange(0.0, f64::INFINITY, 1.0, DType::F32, d),
                &["arange", "inf"],
            );
            c.finish()
        }),
        case("custom_op_without_backward", |d| {
            let mut c = Checks::new();
            let v = Var::from_tensor(&Tensor::ones(3, DType::F32, d)?)?;
            match Tensor::apply_custom(&[&v], Arc::new(NoBackwardOp)) {
                Err(Error::NoBackward {
                    op: "no_backward_op",
                    ..
                }) => {}
                other => c.fail(format!(
                    "custom op without backward on a tracked input: expected NoBackward, got {:?}",
                    other.err().map(|e| e.to_string())
                )),
            }
            c.finish()
        }),
        // Inputs that are odd rather than wrong: the op may succeed or fail, but must not panic.
        case("no_panic_edge_cases", |d| {
            let mut c = Checks::new();
            // Non-causal attention with Lq > Lk and a window or ALiBi: query positions Lk − Lq + i
            // are negative for the first queries.
            let q = f32s(d, &[1, 2, 5, 4])?;
            let kv = f32s(d, &[1, 2, 3, 4])?;
            c.no_panic("attention Lq 5 > Lk 3 with window 2", || {
                q.scaled_dot_product_attention(
                    &kv,
                    &kv,
                    &AttentionParams {
                        scale: 0.5,
                        window: Some(2),
                        ..Default::default()
                    },
                )
            });
            c.no_panic("attention Lq 5 > Lk 3 with alibi", || {
                let slopes = Tensor::ones(2, DType::F32, d)?;
                q.scaled_dot_product_attention(
                    &kv,
                    &kv,
                    &AttentionParams {
                        scale: 0.5,
                        alibi_slopes: Some(slopes),
                        ..Default::default()
                    },
                )
            });
            // Zero-size tensors.
            c.no_panic("conv_transpose1d of a zero-length input", || {
                f32s(d, &[1, 4, 0])?.conv_transpose1d(&f32s(d, &[4, 2, 3])?, None, 1, 0, 0, 1, 1)
            });
            c.no_panic("softmax of [0, 3]", || f32s(d, &[0, 3])?.softmax(-1));
            c.no_panic("layer_norm of [0, 3]", || {
                f32s(d, &[0, 3])?.layer_norm(None, None, 1e-5)
            });
            c.no_panic("matmul [2, 0] x [0, 3]", || {
                f32s(d, &[2, 0])?.matmul(&f32s(d, &[0, 3])?)
            });
            c.no_panic("sum over an empty dim", || f32s(d, &[2, 0])?.sum(1));
            c.no_panic("logsumexp over an empty dim", || {
                f32s(d, &[2, 0])?.logsumexp(1)
            });
            c.no_panic("index_select with no ids", || {
                f32s(d, &[3, 2])?.index_select(&Tensor::zeros(0, DType::I64, d)?, 0)
            });
            c.no_panic("embedding of an empty table", || {
                f32s(d, &[0, 2])?.embedding(&Tensor::zeros(0, DType::I64, d)?)
            });
            c.no_panic("adaptive_avg_pool2d of an empty input", || {
                f32s(d, &[1, 1, 0, 0])?.adaptive_avg_pool2d((1, 1))
            });
            // Extreme scalars.
            c.no_panic("powf(NaN)", || f32s(d, &[2])?.powf(f64::NAN));
            c.no_panic("div_scalar(0)", || f32s(d, &[2])?.div_scalar(0.0));
            c.err(
                "arange of 1e303 elements",
                || Tensor::arange(0.0, 1e3, 1e-300, DType::F32, d),
                &["arange"],
            );
            c.finish()
        }),
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
