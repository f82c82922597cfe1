//! Finite-difference gradient checks (f64) of every loss, and the errors of bad inputs. Value
//! and gradient parity with PyTorch is in `tests/loss_parity.rs`.

use tensor_core::conformance::gradcheck::{check_grad, input, input_in};
use tensor_core::{DType, Device, Result, Tensor};

use super::*;

fn dev() -> Device {
    tensor_cpu::device()
}

fn ids(v: &[i64], shape: impl Into<tensor_core::Shape>) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &dev()).unwrap()
}

fn f64s(v: &[f64], shape: impl Into<tensor_core::Shape>) -> Tensor {
    Tensor::from_f64s(v, shape, DType::F64, &dev()).unwrap()
}

fn grad(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    check_grad(name, inputs, f).unwrap_or_else(|e| panic!("{e}"));
}

// ---- gradient checks --------------------------------------------------------------------------

#[test]
fn grad_cross_entropy_indices() {
    let d = dev();
    // (N, C, L) = (2, 4, 3), weights, an ignored target, label smoothing.
    let x = input((2, 4, 3), &d, 1).unwrap();
    let t = ids(&[0, 3, -100, 2, 1, 1], (2, 3));
    let opts = CrossEntropyOptions {
        weight: Some(f64s(&[0.5, 1.0, 2.0, 1.5], 4)),
        label_smoothing: 0.1,
        ..Default::default()
    };
    grad("cross_entropy 3-D", &[x], |v| {
        cross_entropy(&v[0], &t, &opts)
    });
    let x = input((5, 3), &d, 2).unwrap();
    let t = ids(&[2, 0, 1, 1, 0], 5);
    let opts = CrossEntropyOptions {
        ignore_index: Some(1),
        reduction: Reduction::None,
        ..Default::default()
    };
    grad("cross_entropy ignore", &[x], |v| {
        cross_entropy(&v[0], &t, &opts)
    });
}

#[test]
fn grad_cross_entropy_probabilities() {
    let d = dev();
    let x = input((3, 4), &d, 3).unwrap();
    let p = input_in((3, 4), 0.0, 1.0, &d, 4).unwrap();
    let opts = CrossEntropyOptions {
        weight: Some(f64s(&[0.5, 1.0, 2.0, 1.5], 4)),
        label_smoothing: 0.2,
        ..Default::default()
    };
    grad("cross_entropy probs", &[x, p], |v| {
        cross_entropy(&v[0], &v[1], &opts)
    });
}

#[test]
fn grad_nll_loss() {
    let x = input((4, 3), &dev(), 5).unwrap();
    let t = ids(&[2, 0, 1, 2], 4);
    let opts = NllOptions {
        weight: Some(f64s(&[0.3, 1.0, 2.0], 3)),
        ignore_index: Some(0),
        reduction: Reduction::Mean,
    };
    grad("nll_loss", &[x], |v| nll_loss(&v[0], &t, &opts));
}

#[test]
fn grad_binary_cross_entropy() {
    let d = dev();
    let p = input_in((3, 4), 0.05, 0.95, &d, 6).unwrap();
    let t = input_in((3, 4), 0.0, 1.0, &d, 7).unwrap();
    let w = input_in(4, 0.5, 2.0, &d, 8).unwrap();
    grad("binary_cross_entropy", &[p, t], |v| {
        binary_cross_entropy(&v[0], &v[1], Some(&w), Reduction::Mean)
    });
}

#[test]
fn grad_binary_cross_entropy_with_logits() {
    let d = dev();
    let x = input((3, 4), &d, 9).unwrap().affine(4.0, 0.0).unwrap();
    let t = input_in((3, 4), 0.0, 1.0, &d, 10).unwrap();
    let w = input_in((3, 1), 0.5, 2.0, &d, 11).unwrap();
    let pw = input_in(4, 0.5, 3.0, &d, 12).unwrap();
    grad("binary_cross_entropy_with_logits", &[x, t], |v| {
        binary_cross_entropy_with_logits(&v[0], &v[1], Some(&w), Some(&pw), Reduction::None)
    });
    // The slope at x = 0 is σ(0) − t = 0.5 − t (abs and minimum both have kinks there).
    let x = Tensor::zeros(2, DType::F64, &d).unwrap();
    grad("binary_cross_entropy_with_logits at 0", &[x], |v| {
        binary_cross_entropy_with_logits(&v[0], &f64s(&[0.0, 1.0], 2), None, None, Reduction::Sum)
    });
}

#[test]
fn grad_sigmoid_focal_loss() {
    let d = dev();
    let x = input((3, 4), &d, 13).unwrap().affine(3.0, 0.0).unwrap();
    let t = input_in((3, 4), 0.0, 1.0, &d, 14).unwrap();
    grad("sigmoid_focal_loss", &[x.clone(), t.clone()], |v| {
        sigmoid_focal_loss(&v[0], &v[1], 0.25, 2.0, Reduction::Mean)
    });
    grad("sigmoid_focal_loss gamma 1.5", &[x, t], |v| {
        sigmoid_focal_loss(&v[0], &v[1], -1.0, 1.5, Reduction::None)
    });
}

#[test]
fn grad_regression_losses() {
    let d = dev();
    let x = input((3, 5), &d, 15).unwrap().affine(2.0, 0.0).unwrap();
    let y = input((3, 5), &d, 16).unwrap();
    let xy = [x, y];
    grad("mse_loss", &xy, |v| mse_loss(&v[0], &v[1], Reduction::Mean));
    grad("l1_loss", &xy, |v| l1_loss(&v[0], &v[1], Reduction::Sum));
    grad("smooth_l1_loss", &xy, |v| {
        smooth_l1_loss(&v[0], &v[1], 0.7, Reduction::None)
    });
    grad("huber_loss", &xy, |v| {
        huber_loss(&v[0], &v[1], 1.3, Reduction::Mean)
    });
}

#[test]
fn grad_kl_div() {
    let d = dev();
    let x = input((3, 4), &d, 17).unwrap();
    let t = input_in((3, 4), 0.05, 1.0, &d, 18).unwrap();
    grad("kl_div", &[x.clone(), t.clone()], |v| {
        kl_div(&v[0], &v[1], KlReduction::BatchMean, false)
    });
    grad("kl_div log_target", &[x, t], |v| {
        kl_div(&v[0], &v[1], KlReduction::None, true)
    });
}

#[test]
fn grad_info_nce() {
    let d = dev();
    let q = input((3, 4), &d, 19).unwrap();
    let k = input((5, 4), &d, 20).unwrap();
    grad("info_nce", &[q.clone(), k], |v| {
        info_nce(&v[0], &v[1], 0.3, Reduction::Mean)
    });
    let k = input((3, 4), &d, 21).unwrap();
    grad("info_nce_symmetric", &[q, k], |v| {
        info_nce_symmetric(&v[0], &v[1], 0.5, Reduction::None)
    });
}

#[test]
fn grad_pair_losses() {
    let d = dev();
    let x1 = input((5, 3), &d, 22).unwrap();
    let x2 = input((5, 3), &d, 23).unwrap();
    let y = ids(&[1, -1, -1, 1, -1], 5);
    grad("cosine_embedding_loss", &[x1.clone(), x2.clone()], |v| {
        cosine_embedding_loss(&v[0], &v[1], &y, -0.3, Reduction::None)
    });
    let s = input_in(5, 0.0, 1.0, &d, 24).unwrap();
    grad("contrastive_loss", &[x1, x2, s], |v| {
        contrastive_loss(&v[0], &v[1], &v[2], 1.5, Reduction::Mean)
    });
}

#[test]
fn grad_triplet_margin_loss() {
    let d = dev();
    let abc: Vec<Tensor> = (25..28).map(|s| input((4, 3), &d, s).unwrap()).collect();
    for (p, swap) in [(2.0, false), (3.0, true), (1.0, true)] {
        let opts = TripletOptions {
            margin: 1.5,
            p,
            swap,
            reduction: Reduction::None,
            ..Default::default()
        };
        grad(&format!("triplet p={p} swap={swap}"), &abc, |v| {
            triplet_margin_loss(&v[0], &v[1], &v[2], &opts)
        });
    }
}

// ---- values that need no fixture ----------------------------------------------------------------

#[test]
fn defaults_follow_torch() {
    assert_eq!(Reduction::default(), Reduction::Mean);
    assert_eq!(KlReduction::default(), KlReduction::Mean);
    assert_eq!(CrossEntropyOptions::default().ignore_index, Some(-100));
    assert_eq!(NllOptions::default().ignore_index, Some(-100));
    let t = TripletOptions::default();
    assert_eq!((t.margin, t.p, t.eps, t.swap), (1.0, 2.0, 1e-6, false));
}

#[test]
fn empty_batch_mean_is_nan() {
    let x = Tensor::zeros((0, 3), DType::F64, &dev()).unwrap();
    let t = Tensor::zeros(0, DType::I64, &dev()).unwrap();
    let l = cross_entropy(&x, &t, &Default::default()).unwrap();
    assert!(l.to_f64().unwrap().is_nan());
    let l = mse_loss(&x, &x, Reduction::Sum).unwrap();
    assert_eq!(l.to_f64().unwrap(), 0.0);
}

// ---- bad inputs ---------------------------------------------------------------------------------

fn err(r: Result<Tensor>, needle: &str) {
    match r {
        Ok(t) => panic!("expected an error mentioning {needle:?}, got {t:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
        }
    }
}

#[test]
fn bad_cross_entropy_and_nll() {
    let x = f64s(&[0.0; 6], (2, 3));
    let ce = |t: &Tensor, o: &CrossEntropyOptions| cross_entropy(&x, t, o);
    let dflt = CrossEntropyOptions::default();
    err(
        ce(&ids(&[0, 3], 2), &dflt),
        "target class 3 out of range for 3 classes",
    );
    err(ce(&ids(&[0, -1], 2), &dflt), "target class -1 out of range");
    err(ce(&ids(&[0, 1, 2], 3), &dflt), "class indices of shape [2]");
    err(ce(&ids(&[0, 1], (2, 1)), &dflt), "cross_entropy");
    let p32 = Tensor::zeros((2, 3), DType::F32, &dev()).unwrap();
    err(ce(&p32, &dflt), "dtype mismatch, lhs f64 vs rhs f32");
    err(ce(&f64s(&[0.5; 4], (2, 2)), &dflt), "class probabilities");
    let o = CrossEntropyOptions {
        ignore_index: Some(0),
        ..Default::default()
    };
    err(
        ce(&f64s(&[0.5; 6], (2, 3)), &o),
        "not supported for class-probability",
    );
    let o = CrossEntropyOptions {
        label_smoothing: 1.5,
        ..Default::default()
    };
    err(
        ce(&ids(&[0, 1], 2), &o),
        "label_smoothing must be in [0, 1]",
    );
    let o = CrossEntropyOptions {
        weight: Some(f64s(&[1.0, 2.0], 2)),
        ..Default::default()
    };
    err(ce(&ids(&[0, 1], 2), &o), "class weight of shape [3]");
    let s = Tensor::scalar(1.0, DType::F64, &dev()).unwrap();
    err(cross_entropy(&s, &ids(&[0], ()), &dflt), "(N, C)");
    let int_logits = ids(&[0; 6], (2, 3));
    err(
        cross_entropy(&int_logits, &ids(&[0, 1], 2), &dflt),
        "float dtype",
    );
    err(
        nll_loss(&x, &f64s(&[0.0, 1.0], 2), &NllOptions::default()),
        "integer class indices",
    );
    err(
        nll_loss(&x, &ids(&[5, 0], 2), &NllOptions::default()),
        "nll_loss: invalid argument: target class 5",
    );
}

#[test]
fn bad_binary_losses() {
    let p = f64s(&[0.2, 1.5], 2);
    let t = f64s(&[0.0, 1.0], 2);
    err(
        binary_cross_entropy(&p, &t, None, Reduction::Mean),
        "between 0 and 1",
    );
    let nan = f64s(&[0.2, f64::NAN], 2);
    err(
        binary_cross_entropy(&nan, &t, None, Reduction::Mean),
        "between 0 and 1",
    );
    let p = f64s(&[0.2, 0.5], 2);
    err(
        binary_cross_entropy(&p, &f64s(&[0.0; 3], 3), None, Reduction::Mean),
        "shape mismatch",
    );
    let x = f64s(&[0.0; 6], (2, 3));
    let t = f64s(&[0.0; 6], (2, 3));
    let big = f64s(&[1.0; 12], (2, 2, 3));
    err(
        binary_cross_entropy_with_logits(&x, &t, Some(&big), None, Reduction::Sum),
        "broadcastable to the input shape [2, 3]",
    );
    err(
        binary_cross_entropy_with_logits(&x, &t, None, Some(&f64s(&[1.0; 2], 2)), Reduction::Sum),
        "binary_cross_entropy_with_logits",
    );
    err(
        sigmoid_focal_loss(&x, &t, 0.25, -1.0, Reduction::Mean),
        "need gamma >= 0",
    );
    err(
        sigmoid_focal_loss(&x, &t, f64::NAN, 2.0, Reduction::Mean),
        "alpha must be finite",
    );
}

#[test]
fn bad_regression_losses() {
    let a = f64s(&[0.0; 6], (2, 3));
    let b = f64s(&[0.0; 6], (3, 2));
    err(
        mse_loss(&a, &b, Reduction::Mean),
        "mse_loss: shape mismatch",
    );
    err(
        l1_loss(&a, &a.to_dtype(DType::F32).unwrap(), Reduction::Mean),
        "dtype mismatch",
    );
    let i = ids(&[0; 6], (2, 3));
    err(l1_loss(&i, &i, Reduction::Mean), "float dtype");
    err(
        smooth_l1_loss(&a, &a, -1.0, Reduction::Mean),
        "beta must be",
    );
    err(huber_loss(&a, &a, 0.0, Reduction::Mean), "delta must be");
    err(
        kl_div(&a, &b, KlReduction::BatchMean, false),
        "kl_div: shape mismatch",
    );
}

#[test]
fn bad_embedding_losses() {
    let q = f64s(&[0.0; 6], (2, 3));
    err(
        info_nce(&q, &q, 0.0, Reduction::Mean),
        "temperature must be finite and > 0",
    );
    err(info_nce(&q, &q, -1.0, Reduction::Mean), "temperature");
    err(
        info_nce(&q, &f64s(&[0.0; 4], (2, 2)), 0.1, Reduction::Mean),
        "expected query (N, D)",
    );
    err(
        info_nce(&q, &f64s(&[0.0; 3], (1, 3)), 0.1, Reduction::Mean),
        "M >= N",
    );
    err(
        info_nce_symmetric(&q, &f64s(&[0.0; 9], (3, 3)), 0.1, Reduction::Mean),
        "info_nce_symmetric",
    );
    let y = ids(&[1, -1], 2);
    err(
        cosine_embedding_loss(&q, &q, &ids(&[1, -1, 1], 3), 0.0, Reduction::Mean),
        "labels of shape [2]",
    );
    let yu = Tensor::from_vec(vec![1u32, 1], 2, &dev()).unwrap();
    err(
        cosine_embedding_loss(&q, &q, &yu, 0.0, Reduction::Mean),
        "signed labels",
    );
    let r3 = f64s(&[0.0; 12], (2, 2, 3));
    err(
        cosine_embedding_loss(&r3, &r3, &y, 0.0, Reduction::Mean),
        "(D) or (N, D)",
    );
    err(
        contrastive_loss(&q, &q, &y, 1.0, Reduction::Mean),
        "dtype mismatch",
    );
    let opts = TripletOptions {
        p: 0.0,
        ..Default::default()
    };
    err(
        triplet_margin_loss(&q, &q, &q, &opts),
        "p must be finite and > 0",
    );
    let d = TripletOptions::default();
    err(
        triplet_margin_loss(&q, &q, &f64s(&[0.0; 4], (2, 2)), &d),
        "shape mismatch",
    );
    err(triplet_margin_loss(&r3, &r3, &r3, &d), "(D) or (N, D)");
}
