//! Gradient cases: convolutions, pooling, im2col, normalisation, dropout, rope and attention.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        // ---- convolutions ----
        case("conv1d", |d| {
            conv(d, "conv1d", &[2, 4, 7], &[6, 2, 3], true, |x, w, b| {
                x.conv1d(w, b, 2, 1, 2, 2)
            })?;
            conv(
                d,
                "conv1d plain",
                &[1, 2, 6],
                &[3, 2, 3],
                false,
                |x, w, b| x.conv1d(w, b, 1, 0, 1, 1),
            )?;
            conv(
                d,
                "conv1d depthwise",
                &[1, 3, 6],
                &[3, 1, 2],
                true,
                |x, w, b| x.conv1d(w, b, 1, 1, 1, 3),
            )?;
            // Stride larger than the kernel: some inputs are never read (zero gradient).
            conv(
                d,
                "conv1d stride 3 > kernel 2",
                &[1, 2, 8],
                &[2, 2, 2],
                false,
                |x, w, b| x.conv1d(w, b, 3, 0, 1, 1),
            )
        }),
        case("conv2d", |d| {
            conv(
                d,
                "conv2d plain",
                &[1, 2, 5, 4],
                &[3, 2, 3, 3],
                false,
                |x, w, b| x.conv2d(w, b, 1, 0, 1, 1),
            )?;
            conv(
                d,
                "conv2d stride 2 pad 1",
                &[2, 2, 5, 5],
                &[2, 2, 3, 3],
                true,
                |x, w, b| x.conv2d(w, b, 2, 1, 1, 1),
            )?;
            conv(
                d,
                "conv2d dilation 2",
                &[1, 2, 6, 5],
                &[2, 2, 2, 2],
                false,
                |x, w, b| x.conv2d(w, b, 1, 1, 2, 1),
            )
        }),
        case("conv2d_groups", |d| {
            conv(
                d,
                "conv2d groups 2",
                &[1, 4, 4, 4],
                &[2, 2, 3, 3],
                true,
                |x, w, b| x.conv2d(w, b, 1, 1, 1, 2),
            )?;
            conv(
                d,
                "conv2d depthwise",
                &[1, 3, 5, 4],
                &[3, 1, 3, 3],
                false,
                |x, w, b| x.conv2d(w, b, 1, 1, 1, 3),
            )?;
            conv(
                d,
                "conv2d depthwise multiplier 2",
                &[1, 2, 4, 4],
                &[4, 1, 2, 2],
                true,
                |x, w, b| x.conv2d(w, b, 2, 0, 1, 2),
            )
        }),
        case("conv3d", |d| {
            conv(
                d,
                "conv3d plain",
                &[1, 2, 3, 4, 3],
                &[2, 2, 2, 2, 2],
                true,
                |x, w, b| x.conv3d(w, b, 1, 0, 1, 1),
            )?;
            conv(
                d,
                "conv3d stride/pad/groups",
                &[1, 2, 4, 3, 3],
                &[2, 1, 2, 2, 2],
                false,
                |x, w, b| x.conv3d(w, b, 2, 1, 1, 2),
            )
        }),
        case("conv_transpose1d", |d| {
            conv(
                d,
                "conv_transpose1d stride 2 pad 1 out_pad 1",
                &[1, 4, 5],
                &[4, 3, 3],
                true,
                |x, w, b| x.conv_transpose1d(w, b, 2, 1, 1, 1, 1),
            )?;
            conv(
                d,
                "conv_transpose1d groups 2 stride 3 out_pad 2",
                &[2, 4, 4],
                &[4, 1, 3],
                false,
                |x, w, b| x.conv_transpose1d(w, b, 3, 1, 2, 1, 2),
            )?;
            conv(
                d,
                "conv_transpose1d dilation 2",
                &[1, 2, 4],
                &[2, 2, 2],
                false,
                |x, w, b| x.conv_transpose1d(w, b, 1, 0, 0, 2, 1),
            )
        }),
        // PyTorch allows output_padding < max(stride, dilation): here 1 with stride 1, dilation 2.
        case("conv_transpose1d_output_padding_lt_dilation", |d| {
            conv(
                d,
                "conv_transpose1d stride 1 dilation 2 out_pad 1",
                &[1, 2, 4],
                &[2, 2, 2],
                false,
                |x, w, b| x.conv_transpose1d(w, b, 1, 0, 1, 2, 1),
            )
        }),
        case("conv_transpose2d", |d| {
            conv(
                d,
                "conv_transpose2d stride 2 pad 1 out_pad 1",
                &[1, 2, 3, 3],
                &[2, 2, 3, 3],
                true,
                |x, w, b| x.conv_transpose2d(w, b, 2, 1, 1, 1, 1),
            )?;
            conv(
                d,
                "conv_transpose2d groups 2",
                &[1, 4, 3, 2],
                &[4, 1, 2, 2],
                false,
                |x, w, b| x.conv_transpose2d(w, b, 2, 0, 0, 1, 2),
            )
        }),
        // ---- pooling ----
        case("max_pool", |d| {
            pool(d, "max_pool1d k3 s2 p1", &[2, 3, 7], |x| {
                x.max_pool1d(3, 2, 1)
            })?;
            pool(d, "max_pool1d [C, L]", &[3, 6], |x| x.max_pool1d(2, 2, 0))?;
            pool(d, "max_pool1d stride 3 > kernel 2", &[1, 2, 8], |x| {
                x.max_pool1d(2, 3, 0)
            })?;
            pool(d, "max_pool2d k3 s2 p1", &[1, 2, 5, 5], |x| {
                x.max_pool2d(3, 2, 1)
            })?;
            pool(d, "max_pool2d k2 s1 (overlapping)", &[2, 1, 4, 3], |x| {
                x.max_pool2d(2, 1, 0)
            })
        }),
        case("avg_pool", |d| {
            pool(d, "avg_pool1d k3 s2 p1", &[2, 3, 7], |x| {
                x.avg_pool1d(3, 2, 1)
            })?;
            pool(d, "avg_pool1d [C, L]", &[3, 6], |x| x.avg_pool1d(2, 2, 0))?;
            pool(d, "avg_pool2d k3 s2 p1", &[1, 2, 5, 5], |x| {
                x.avg_pool2d(3, 2, 1)
            })?;
            pool(d, "avg_pool2d k2 s1", &[2, 1, 4, 3], |x| {
                x.avg_pool2d(2, 1, 0)
            })
        }),
        case("adaptive_pool", |d| {
            pool(d, "adaptive_avg_pool1d dividing", &[2, 3, 8], |x| {
                x.adaptive_avg_pool1d(4)
            })?;
            pool(d, "adaptive_avg_pool1d non-dividing", &[2, 3, 7], |x| {
                x.adaptive_avg_pool1d(3)
            })?;
            pool(d, "adaptive_max_pool1d dividing", &[2, 3, 8], |x| {
                x.adaptive_max_pool1d(2)
            })?;
            pool(d, "adaptive_max_pool1d non-dividing", &[2, 3, 7], |x| {
                x.adaptive_max_pool1d(4)
            })?;
            pool(d, "adaptive_avg_pool2d mixed", &[1, 2, 6, 5], |x| {
                x.adaptive_avg_pool2d((3, 2))
            })?;
            pool(d, "adaptive_max_pool2d mixed", &[1, 2, 6, 5], |x| {
                x.adaptive_max_pool2d((2, 3))
            })
        }),
        case("unfold_fold", |d| {
            let p = UnfoldParams {
                kernel: vec![2, 3],
                stride: vec![1, 2],
                padding: vec![1, 0],
                dilation: vec![1, 1],
                pad_value: 0.0,
            };
            let x = [input((1, 2, 4, 5), d, 51)?];
            check_grad("unfold_patches 2d", &x, |xs| xs[0].unfold_patches(&p))?;
            let p1 = UnfoldParams {
                kernel: vec![3],
                stride: vec![2],
                padding: vec![1],
                dilation: vec![2],
                pad_value: 0.0,
            };
            let x = [input((2, 2, 7), d, 52)?];
            check_grad("unfold_patches 1d dilated", &x, |xs| {
                xs[0].unfold_patches(&p1)
            })?;
            // fold: [1, 2·6, L] back to [1, 2, 4, 5]; L = 5·2 for this geometry.
            let l = p
                .out_spatial(&[4, 5])
                .map(|v| v.iter().product::<usize>())
                .unwrap_or(0);
            let x = [input((1, 12, l), d, 53)?];
            check_grad("fold_patches 2d", &x, |xs| xs[0].fold_patches(&p, &[4, 5]))
        }),
        // ---- normalisation ----
        case("layer_norm", |d| {
            let x = [input((3, 5), d, 54)?, input(5, d, 55)?, input(5, d, 56)?];
            check_grad("layer_norm affine", &x, |xs| {
                xs[0].layer_norm(Some(&xs[1]), Some(&xs[2]), 1e-5)
            })?;
            let x = [input((2, 2, 4), d, 57)?];
            check_grad("layer_norm plain", &x, |xs| {
                xs[0].layer_norm(None, None, 1e-5)
            })
        }),
        case("rms_norm", |d| {
            let x = [input((3, 5), d, 58)?, input(5, d, 59)?];
            check_grad("rms_norm weight", &x, |xs| {
                xs[0].rms_norm(Some(&xs[1]), 1e-6)
            })?;
            let x = [input((2, 2, 4), d, 60)?];
            check_grad("rms_norm plain", &x, |xs| xs[0].rms_norm(None, 1e-6))
        }),
        case("group_norm", |d| {
            let x = [input((2, 4, 3), d, 61)?, input(4, d, 62)?, input(4, d, 63)?];
            check_grad("group_norm affine", &x, |xs| {
                xs[0].group_norm(2, Some(&xs[1]), Some(&xs[2]), 1e-5)
            })?;
            let x = [input((2, 6, 2, 2), d, 64)?];
            check_grad("group_norm 4-D plain", &x, |xs| {
                xs[0].group_norm(3, None, None, 1e-5)
            })
        }),
        case("batch_norm", |d| {
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
        }),
        case("dropout", dropout),
        // ---- rope and attention ----
        case("rope", |d| {
            for interleaved in [false, true] {
                let x = [
                    input((1, 2, 3, 4), d, 71)?,
                    input((3, 2), d, 72)?,
                    input((3, 2), d, 73)?,
                ];
                let name = if interleaved {
                    "rope interleaved (x, cos, sin)"
                } else {
                    "rope halves (x, cos, sin)"
                };
                check_grad(name, &x, |xs| xs[0].rope(&xs[1], &xs[2], interleaved))?;
                let x = [
                    input((2, 1, 2, 6), d, 74)?,
                    input((2, 3), d, 75)?,
                    input((2, 3), d, 76)?,
                ];
                check_grad(name, &x, |xs| xs[0].rope(&xs[1], &xs[2], interleaved))?;
            }
            Ok(())
        }),
        case("rope_fixed_angles", |d| {
            // Untracked angles take the fused kernel, differentiated by the inverse rotation.
            for interleaved in [false, true] {
                let x = [input((2, 2, 3, 6), d, 77)?];
                let cos = det_tensor((3, 3), DType::F64, d, 78)?;
                let sin = det_tensor((3, 3), DType::F64, d, 79)?;
                check_grad("rope with constant cos/sin", &x, |xs| {
                    xs[0].rope(&cos, &sin, interleaved)
                })?;
            }
            Ok(())
        }),
        case("silu_mul", |d| {
            let x = [input((3, 7), d, 80)?, input((3, 7), d, 81)?];
            check_grad("silu_mul (gate, up)", &x, |xs| xs[0].silu_mul(&xs[1]))
        }),
        case("softmax_cross_entropy", |d| {
            let targets = Tensor::from_vec(vec![2i64, -100, 0, 4], 4, d)?;
            for smoothing in [0.0, 0.2] {
                let x = [input((4, 5), d, 82)?];
                let p = crate::CrossEntropyParams {
                    ignore_index: Some(-100),
                    label_smoothing: smoothing,
                };
                check_grad("softmax_cross_entropy", &x, |xs| {
                    xs[0].softmax_cross_entropy(&targets, &p)
                })?;
            }
            Ok(())
        }),
        case("attention_plain", |d| {
            attention(
                d,
                "plain",
                [1, 2, 3, 4],
                [1, 2, 5, 4],
                3,
                AttentionParams {
                    scale: 0.5,
                    ..Default::default()
                },
            )
        }),
        case("attention_causal", |d| {
            attention(
                d,
                "causal",
                [2, 1, 4, 3],
                [2, 1, 4, 3],
                3,
                AttentionParams {
                    scale: 0.6,
                    causal: true,
                    ..Default::default()
                },
            )
        }),
        case("attention_causal_lq_lt_lk", |d| {
            let p = AttentionParams {
                scale: 0.5,
                causal: true,
                ..Default::default()
            };
            attention(d, "causal Lq<Lk", [1, 2, 2, 4], [1, 2, 5, 4], 2, p.clone())?;
            attention(
                d,
                "causal decode step Lq=1",
                [2, 2, 1, 4],
                [2, 2, 5, 4],
                3,
                p,
            )
        }),
        case("attention_gqa", |d| {
            attention(
                d,
                "GQA",
                [1, 4, 3, 4],
                [1, 2, 5, 4],
                3,
                AttentionParams {
                    scale: 0.5,
                    causal: true,
                    ..Default::default()
                },
            )
        }),
        case("attention_window", |d| {
            attention(
                d,
                "window 2",
                [1, 2, 4, 3],
                [1, 2, 4, 3],
                2,
                AttentionParams {
                    scale: 0.7,
                    window: Some(2),
                    ..Default::default()
                },
            )
        }),
        case("attention_alibi", |d| {
            let slopes = Tensor::from_vec(vec![0.5f64, 0.25], 2, d)?;
            attention(
                d,
                "alibi",
                [1, 2, 3, 4],
                [1, 2, 4, 4],
                3,
                AttentionParams {
                    scale: 0.5,
                    causal: true,
                    alibi_slopes: Some(slopes),
                    ..Default::default()
                },
            )
        }),
        case("attention_bias_neg_inf", |d| {
            // An additive [1, Hq, Lq, Lk] bias with −inf entries; query row 1 of head 0 is fully
            // masked (its output and gradients must be exactly zero, not NaN).
            let (lq, lk) = (3, 4);
            let mut b = det_values(2 * lq * lk, 93);
            for (i, v) in b.iter_mut().enumerate() {
                let (h, r, c) = (i / (lq * lk), (i / lk) % lq, i % lk);
                if (h == 0 && r == 1) || (h == 1 && c == (r + 1) % lk) || (r == 2 && c == 0) {
                    *v = f64::NEG_INFINITY;
                }
            }
            let bias = Tensor::from_f64s(&b, (1, 2, lq, lk), DType::F64, d)?;
            let p = AttentionParams {
                scale: 0.5,
                bias: Some(bias),
                ..Default::default()
            };
            attention(
                d,
                "bias with -inf",
                [2, 2, lq, 4],
                [2, 2, lk, 4],
                3,
                p.clone(),
            )?;
            let q = input((2, 2, lq, 4), d, 80)?;
            let (k, v) = (input((2, 2, lk, 4), d, 81)?, input((2, 2, lk, 3), d, 82)?);
            let out = q.scaled_dot_product_attention(&k, &v, &p)?;
            let row = out.narrow(1, 0, 1)?.narrow(2, 1, 1)?.to_f64_vec()?;
            assert_close_slices(
                "fully masked attention row",
                &row,
                &vec![0.0; row.len()],
                0.0,
                0.0,
            )
        }),
    ]
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
