//! Error cases: invalid convolution, pooling, im2col and attention parameters.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("invalid_conv_params", |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[1, 4, 6])?;
            let w = f32s(d, &[2, 4, 3])?;
            c.err(
                "conv1d stride 0",
                || x.conv1d(&w, None, 0, 0, 1, 1),
                &["conv", "stride"],
            );
            c.err(
                "conv1d dilation 0",
                || x.conv1d(&w, None, 1, 0, 0, 1),
                &["conv", "dilation"],
            );
            c.err(
                "conv1d groups 0",
                || x.conv1d(&w, None, 1, 0, 1, 0),
                &["conv", "groups"],
            );
            c.err(
                "conv1d groups 2 with weight [3, 2, 3] (Cout % groups)",
                || x.conv1d(&f32s(d, &[3, 2, 3])?, None, 1, 0, 1, 2),
                &["conv", "groups", "[3, 2, 3]"],
            );
            c.err(
                "conv1d groups 3 of 4 channels",
                || x.conv1d(&f32s(d, &[3, 1, 3])?, None, 1, 0, 1, 3),
                &["conv", "groups", "[1, 4, 6]"],
            );
            c.err(
                "conv1d kernel 8 > input 6",
                || x.conv1d(&f32s(d, &[2, 4, 8])?, None, 1, 0, 1, 1),
                &["conv", "[1, 4, 6]"],
            );
            c.err(
                "conv1d dilated kernel span 7 > input 6",
                || x.conv1d(&w, None, 1, 0, 3, 1),
                &["conv", "[1, 4, 6]"],
            );
            c.err(
                "conv1d zero-size kernel",
                || x.conv1d(&Tensor::zeros((2, 4, 0), DType::F32, d)?, None, 1, 0, 1, 1),
                &["conv"],
            );
            c.err(
                "conv_nd params for 2 dims on a 1-D conv",
                || x.conv_nd(&w, None, &conv_p(1, 0, 1, 1, 2)),
                &["conv", "stride"],
            );
            let x2 = f32s(d, &[1, 2, 4, 4])?;
            c.err(
                "conv2d stride 0",
                || x2.conv2d(&f32s(d, &[2, 2, 3, 3])?, None, 0, 1, 1, 1),
                &["conv", "stride"],
            );
            c.err(
                "conv3d with a 2-D weight",
                || f32s(d, &[1, 2, 3, 3, 3])?.conv3d(&f32s(d, &[2, 2, 2, 2])?, None, 1, 0, 1, 1),
                &["conv", "[2, 2, 2, 2]"],
            );
            let wt = f32s(d, &[4, 2, 3])?;
            c.err(
                "conv_transpose1d output_padding 2 >= stride 2",
                || x.conv_transpose1d(&wt, None, 2, 0, 2, 1, 1),
                &["conv_transpose", "output_padding"],
            );
            c.err(
                "conv_transpose1d output_padding 1 with stride 1",
                || x.conv_transpose1d(&wt, None, 1, 0, 1, 1, 1),
                &["conv_transpose", "output_padding"],
            );
            c.err(
                "conv_transpose1d stride 0",
                || x.conv_transpose1d(&wt, None, 0, 0, 0, 1, 1),
                &["conv_transpose", "stride"],
            );
            c.err(
                "conv_transpose1d groups 3 of 4 channels",
                || x.conv_transpose1d(&wt, None, 1, 0, 0, 1, 3),
                &["conv_transpose", "groups"],
            );
            c.err(
                "conv_transpose1d padding eats the output",
                || {
                    f32s(d, &[1, 4, 1])?.conv_transpose1d(
                        &f32s(d, &[4, 2, 1])?,
                        None,
                        1,
                        1,
                        0,
                        1,
                        1,
                    )
                },
                &["conv_transpose", "padding"],
            );
            c.err(
                "conv_transpose1d zero-size kernel",
                || {
                    x.conv_transpose1d(
                        &Tensor::zeros((4, 2, 0), DType::F32, d)?,
                        None,
                        1,
                        0,
                        0,
                        1,
                        1,
                    )
                },
                &["conv_transpose"],
            );
            c.finish()
        }),
        case("invalid_pool_params", |d| {
            let mut c = Checks::new();
            let x = f32s(d, &[1, 2, 5, 5])?;
            c.err(
                "max_pool2d padding 2 > kernel 2 / 2",
                || x.max_pool2d(2, 1, 2),
                &["max_pool", "padding"],
            );
            c.err(
                "avg_pool1d padding 2 > kernel 3 / 2",
                || f32s(d, &[1, 2, 5])?.avg_pool1d(3, 1, 2),
                &["avg_pool", "padding"],
            );
            c.err(
                "max_pool2d kernel 0",
                || x.max_pool2d(0, 1, 0),
                &["max_pool", "kernel"],
            );
            c.err(
                "avg_pool2d stride 0",
                || x.avg_pool2d(2, 0, 0),
                &["avg_pool", "stride"],
            );
            c.err(
                "max_pool1d kernel 6 > input 5",
                || f32s(d, &[1, 2, 5])?.max_pool1d(6, 1, 0),
                &["max_pool", "[1, 2, 5]"],
            );
            c.err(
                "max_pool2d on a 1-D input",
                || f32s(d, &[5])?.max_pool2d(2, 2, 0),
                &["max_pool", "[5]"],
            );
            c.err(
                "adaptive_avg_pool2d to 0",
                || x.adaptive_avg_pool2d((0, 2)),
                &["adaptive_avg_pool"],
            );
            c.err(
                "adaptive_max_pool2d of a 2-D input",
                || f32s(d, &[4, 4])?.adaptive_max_pool2d((2, 2)),
                &["adaptive_max_pool", "[4, 4]"],
            );
            c.err(
                "adaptive_avg_pool1d of an empty dim",
                || f32s(d, &[1, 2, 0])?.adaptive_avg_pool1d(2),
                &["adaptive_avg_pool"],
            );
            let up = |k: Vec<usize>, s: Vec<usize>| UnfoldParams {
                kernel: k.clone(),
                stride: s,
                padding: vec![0; k.len()],
                dilation: vec![1; k.len()],
                pad_value: 0.0,
            };
            c.err(
                "unfold kernel 0",
                || x.unfold_patches(&up(vec![0, 2], vec![1, 1])),
                &["unfold", "kernel"],
            );
            c.err(
                "unfold stride 0",
                || x.unfold_patches(&up(vec![2, 2], vec![0, 1])),
                &["unfold", "stride"],
            );
            c.err(
                "unfold 1-D params on a 2-D input",
                || x.unfold_patches(&up(vec![2], vec![1])),
                &["unfold", "[1, 2, 5, 5]"],
            );
            c.err(
                "unfold kernel 6 > input 5",
                || x.unfold_patches(&up(vec![6, 2], vec![1, 1])),
                &["unfold"],
            );
            c.err(
                "fold with the wrong L",
                || f32s(d, &[1, 8, 5])?.fold_patches(&up(vec![2, 2], vec![1, 1]), &[4, 4]),
                &["fold", "[1, 8, 5]"],
            );
            c.err(
                "fold with channels not a multiple of the kernel",
                || f32s(d, &[1, 7, 9])?.fold_patches(&up(vec![2, 2], vec![1, 1]), &[4, 4]),
                &["fold", "[1, 7, 9]"],
            );
            c.finish()
        }),
        case("invalid_attention_params", |d| {
            let mut c = Checks::new();
            let p = |causal: bool, window: Option<usize>| AttentionParams {
                scale: 0.5,
                causal,
                window,
                ..Default::default()
            };
            let q5 = f32s(d, &[1, 2, 5, 4])?;
            let kv3 = f32s(d, &[1, 2, 3, 4])?;
            c.err(
                "attention causal Lq 5 > Lk 3",
                || q5.scaled_dot_product_attention(&kv3, &kv3, &p(true, None)),
                &["attention", "5", "3"],
            );
            c.err(
                "attention window 0",
                || kv3.scaled_dot_product_attention(&kv3, &kv3, &p(false, Some(0))),
                &["attention", "window"],
            );
            c.err(
                "attention Hq 3 not a multiple of Hkv 2",
                || {
                    f32s(d, &[1, 3, 3, 4])?.scaled_dot_product_attention(
                        &kv3,
                        &kv3,
                        &p(false, None),
                    )
                },
                &["attention", "[1, 3, 3, 4]", "[1, 2, 3, 4]"],
            );
            c.err(
                "attention Hkv 0",
                || {
                    f32s(d, &[1, 2, 3, 4])?.scaled_dot_product_attention(
                        &f32s(d, &[1, 0, 3, 4])?,
                        &f32s(d, &[1, 0, 3, 4])?,
                        &p(false, None),
                    )
                },
                &["attention", "[1, 0, 3, 4]"],
            );
            // A tracked bias or slopes: no gradient rule, so an error rather than a silently
            // missing gradient — also when q, k, v are untracked.
            let bias = Var::from_tensor(&Tensor::zeros((1, 1, 3, 3), DType::F32, d)?)?;
            let pb = AttentionParams {
                scale: 0.5,
                bias: Some(bias.as_tensor().clone()),
                ..Default::default()
            };
            match kv3.scaled_dot_product_attention(&kv3, &kv3, &pb) {
                Err(Error::NoBackward {
                    op: "attention", ..
                }) => {}
                other => c.fail(format!(
                    "attention with a tracked bias: expected NoBackward from attention, got {:?}",
                    other.err().map(|e| e.to_string())
                )),
            }
            let slopes = Var::from_tensor(&Tensor::ones(2, DType::F32, d)?)?;
            let ps = AttentionParams {
                scale: 0.5,
                alibi_slopes: Some(slopes.sqr()?),
                ..Default::default()
            };
            match kv3.scaled_dot_product_attention(&kv3, &kv3, &ps) {
                Err(Error::NoBackward {
                    op: "attention", ..
                }) => {}
                other => c.fail(format!(
                    "attention with tracked slopes: expected NoBackward from attention, got {:?}",
                    other.err().map(|e| e.to_string())
                )),
            }
            // A detached bias is fine.
            if let Err(e) = kv3.scaled_dot_product_attention(
                &kv3,
                &kv3,
                &AttentionParams {
                    bias: Some(bias.detach()),
                    ..pb.clone()
                },
            ) {
                c.fail(format!("attention with a detached bias failed: {e}"));
            }
            c.finish()
        }),
    ]
}
