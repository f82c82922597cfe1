//! Fused in-place optimizer updates (`BackendDevice::optim_update`): one pass over parameter,
//! gradient and state, split across rayon for large tensors, writing straight into the
//! storages. Only contiguous f32/f64 tensors take this path; anything else falls back to the
//! composed default in `tensor_core::optim`.
//!
//! Each rule follows PyTorch's single-tensor code (`torch/optim/*.py`) operation by operation,
//! with the host-side scalars computed in f64 and rounded to the element type as PyTorch does
//! when it hands a Python float to a kernel, so f32 results track PyTorch's to a few ulps.

use std::sync::RwLockWriteGuard;

use rayon::prelude::*;
use tensor_core::{optim, DType, Error, HostData, OptimRule, Result, Storage, Tensor};

use crate::elementwise::Float;
use crate::storage::{cpu, cpu_mut};
use crate::{check_layout, PAR_CHUNK, PAR_THRESHOLD};

pub(crate) fn optim_update(
    rule: &OptimRule,
    step: u64,
    grad_scale: f64,
    param: &Tensor,
    grad: &Tensor,
    state: &[Tensor],
) -> Result<()> {
    // Validation also guarantees distinct storages, so the locks below cannot deadlock.
    optim::validate(rule, step, grad_scale, param, grad, state)?;
    if param.elem_count() == 0 {
        return Ok(());
    }
    let fast = matches!(param.dtype(), DType::F32 | DType::F64)
        && param.is_contiguous()
        && state.iter().all(|s| s.is_contiguous());
    if !fast {
        return optim::update_composite(rule, step, grad_scale, param, grad, state);
    }
    // Weight gradients often arrive as transposed views (the backward of `x·Wᵀ`); one
    // contiguous copy of the gradient keeps the update fused and in place.
    let grad = if grad.is_contiguous() {
        grad.clone()
    } else {
        let _g = tensor_core::no_grad();
        grad.detach().contiguous()?
    };
    match param.dtype() {
        DType::F32 => run::<f32>(rule, step, grad_scale, param, &grad, state),
        _ => run::<f64>(rule, step, grad_scale, param, &grad, state),
    }
}

/// The float types with a fused path, and mutable access to their host vectors.
trait OptFloat: Float {
    fn vec_mut(h: &mut HostData) -> Option<&mut Vec<Self>>;
}
impl OptFloat for f32 {
    fn vec_mut(h: &mut HostData) -> Option<&mut Vec<Self>> {
        match h {
            HostData::F32(v) => Some(v),
            _ => None,
        }
    }
}
impl OptFloat for f64 {
    fn vec_mut(h: &mut HostData) -> Option<&mut Vec<Self>> {
        match h {
            HostData::F64(v) => Some(v),
            _ => None,
        }
    }
}

fn bad_storage(what: &str) -> Error {
    Error::Backend {
        backend: "cpu".into(),
        msg: format!("optim_update: {what} storage does not hold the tensor's dtype"),
    }
}

/// The `[offset, offset + n)` window of a contiguous tensor's storage.
fn window_mut<'a, T: OptFloat>(
    guard: &'a mut RwLockWriteGuard<'_, Storage>,
    t: &Tensor,
    what: &str,
) -> Result<&'a mut [T]> {
    check_layout(guard.as_ref(), t.layout(), "optim_update")?;
    let (off, n) = (t.layout().offset(), t.elem_count());
    let v = T::vec_mut(&mut cpu_mut(guard.as_mut())?.data).ok_or_else(|| bad_storage(what))?;
    Ok(&mut v[off..off + n])
}

/// `torch.lerp` with a scalar weight, in ATen's two-sided form.
#[inline(always)]
fn lerp<T: Float>(start: T, end: T, w: T) -> T {
    if w.abs() < T::c(0.5) {
        start + w * (end - start)
    } else {
        end - (end - start) * (T::c(1.0) - w)
    }
}

/// `torch.sign`: 0 stays 0, NaN stays NaN.
#[inline(always)]
fn sign<T: Float>(x: T) -> T {
    if x > T::c(0.0) {
        T::c(1.0)
    } else if x < T::c(0.0) {
        T::c(-1.0)
    } else {
        x
    }
}

/// `torch.maximum`: NaN propagates.
#[inline(always)]
fn maximum<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || a > b {
        a
    } else {
        b
    }
}

/// A rule's scalars, rounded to the element type once per step.
#[derive(Clone, Copy)]
enum Kernel<T> {
    Sgd {
        neg_lr: T,
        momentum: Option<T>,
        one_minus_dampening: T,
        nesterov: bool,
        first: bool,
        wd: T,
    },
    Adam {
        decay: Option<T>,
        wd: T,
        w1: T,
        b2: T,
        w2: T,
        bc2_sqrt: T,
        eps: T,
        neg_step_size: T,
        amsgrad: bool,
    },
    RmsProp {
        neg_lr: T,
        alpha: T,
        w: T,
        eps: T,
        wd: T,
        momentum: Option<T>,
        centered: bool,
    },
    Adagrad {
        neg_clr: T,
        wd: T,
        eps: T,
    },
    Lion {
        neg_lr: T,
        decay: T,
        b1: T,
        w1: T,
        b2: T,
        w2: T,
    },
}

struct Prep<T> {
    kernel: Kernel<T>,
    /// `Some(s)` multiplies the gradient by `s` first.
    scale: Option<T>,
    maximize: bool,
}

fn prepare<T: Float>(rule: &OptimRule, step: u64, grad_scale: f64) -> Prep<T> {
    let c = T::c;
    let scale = (grad_scale != 1.0).then(|| c(grad_scale));
    let (kernel, maximize) = match *rule {
        OptimRule::Sgd {
            lr,
            momentum,
            dampening,
            nesterov,
            weight_decay,
            maximize,
        } => (
            Kernel::Sgd {
                neg_lr: c(-lr),
                momentum: (momentum != 0.0).then(|| c(momentum)),
                one_minus_dampening: c(1.0 - dampening),
                nesterov,
                first: step == 1,
                wd: c(weight_decay),
            },
            maximize,
        ),
        OptimRule::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
            amsgrad,
            maximize,
        } => {
            let s = step as f64;
            let step_size = lr / (1.0 - beta1.powf(s));
            let bc2_sqrt = (1.0 - beta2.powf(s)).sqrt();
            (
                Kernel::Adam {
                    decay: (decoupled && weight_decay != 0.0).then(|| c(1.0 - lr * weight_decay)),
                    wd: if decoupled { c(0.0) } else { c(weight_decay) },
                    w1: c(1.0 - beta1),
                    b2: c(beta2),
                    w2: c(1.0 - beta2),
                    bc2_sqrt: c(bc2_sqrt),
                    eps: c(eps),
                    neg_step_size: c(-step_size),
                    amsgrad,
                },
                maximize,
            )
        }
        OptimRule::RmsProp {
            lr,
            alpha,
            eps,
            weight_decay,
            momentum,
            centered,
            maximize,
        } => (
            Kernel::RmsProp {
                neg_lr: c(-lr),
                alpha: c(alpha),
                w: c(1.0 - alpha),
                eps: c(eps),
                wd: c(weight_decay),
                momentum: (momentum > 0.0).then(|| c(momentum)),
                centered,
            },
            maximize,
        ),
        OptimRule::Adagrad {
            lr,
            lr_decay,
            weight_decay,
            eps,
            maximize,
        } => (
            Kernel::Adagrad {
                neg_clr: c(-(lr / (1.0 + (step - 1) as f64 * lr_decay))),
                wd: c(weight_decay),
                eps: c(eps),
            },
            maximize,
        ),
        OptimRule::Lion {
            lr,
            beta1,
            beta2,
            weight_decay,
        } => (
            Kernel::Lion {
                neg_lr: c(-lr),
                decay: c(1.0 - lr * weight_decay),
                b1: c(beta1),
                w1: c(1.0 - beta1),
                b2: c(beta2),
                w2: c(1.0 - beta2),
            },
            false,
        ),
    };
    Prep {
        kernel,
        scale,
        maximize,
    }
}

/// One slice of every operand; absent state tensors are empty slices.
struct Chunk<'a, T> {
    p: &'a mut [T],
    g: &'a [T],
    s: [&'a mut [T]; 3],
}

fn run<T: OptFloat>(
    rule: &OptimRule,
    step: u64,
    grad_scale: f64,
    param: &Tensor,
    grad: &Tensor,
    state: &[Tensor],
) -> Result<()> {
    let prep = prepare::<T>(rule, step, grad_scale);
    let g_guard = grad.storage();
    check_layout(g_guard.as_ref(), grad.layout(), "optim_update")?;
    let (goff, n) = (grad.layout().offset(), grad.elem_count());
    let g = T::slice_of(&cpu(g_guard.as_ref())?.data).ok_or_else(|| bad_storage("gradient"))?;
    let g = &g[goff..goff + n];
    let mut p_guard = param.storage_mut();
    let p = window_mut::<T>(&mut p_guard, param, "parameter")?;
    let mut guards: [Option<RwLockWriteGuard<'_, Storage>>; 3] = [None, None, None];
    for (slot, t) in guards.iter_mut().zip(state) {
        *slot = Some(t.storage_mut());
    }
    let [g0, g1, g2] = &mut guards;
    let mut s: [&mut [T]; 3] = [&mut [], &mut [], &mut []];
    for (k, (slot, guard)) in s.iter_mut().zip([g0, g1, g2]).enumerate() {
        if let Some(guard) = guard {
            *slot = window_mut::<T>(guard, &state[k], optim_state_name(rule, k))?;
        }
    }
    if n < PAR_THRESHOLD {
        apply(&prep, Chunk { p, g, s });
        return Ok(());
    }
    // Split every operand at the same boundaries; the chunk list is tiny (n / PAR_CHUNK).
    let mut chunks = Vec::with_capacity(n.div_ceil(PAR_CHUNK));
    let (mut p, mut g) = (p, g);
    let [mut s0, mut s1, mut s2] = s;
    while !p.is_empty() {
        let len = PAR_CHUNK.min(p.len());
        let (ph, pt) = p.split_at_mut(len);
        let (gh, gt) = g.split_at(len);
        let (h0, t0) = cut(s0, len);
        let (h1, t1) = cut(s1, len);
        let (h2, t2) = cut(s2, len);
        chunks.push(Chunk {
            p: ph,
            g: gh,
            s: [h0, h1, h2],
        });
        (p, g, s0, s1, s2) = (pt, gt, t0, t1, t2);
    }
    chunks.into_par_iter().for_each(|c| apply(&prep, c));
    Ok(())
}

/// Split an operand at `len`; an absent (empty) state stays empty on both sides.
fn cut<T>(x: &mut [T], len: usize) -> (&mut [T], &mut [T]) {
    if x.is_empty() {
        (&mut [], &mut [])
    } else {
        x.split_at_mut(len)
    }
}

fn optim_state_name(rule: &OptimRule, k: usize) -> &'static str {
    rule.state_names().get(k).copied().unwrap_or("state")
}

/// The per-element update of one chunk, one tight loop per rule.
fn apply<T: Float>(prep: &Prep<T>, c: Chunk<'_, T>) {
    let Chunk { p, g, s } = c;
    let [s0, s1, s2] = s;
    let (scale, maximize) = (prep.scale, prep.maximize);
    // The gradient as the rule sees it: scaled by clipping, negated for `maximize`.
    let grad = |i: usize| {
        let mut x = g[i];
        if let Some(sc) = scale {
            x = x * sc;
        }
        if maximize {
            -x
        } else {
            x
        }
    };
    let zero = T::c(0.0);
    match prep.kernel {
        Kernel::Sgd {
            neg_lr,
            momentum,
            one_minus_dampening,
            nesterov,
            first,
            wd,
        } => {
            for i in 0..p.len() {
                let mut d = grad(i);
                if wd != zero {
                    d = d + wd * p[i];
                }
                if let Some(mom) = momentum {
                    let buf = if first {
                        d
                    } else {
                        s0[i] * mom + one_minus_dampening * d
                    };
                    s0[i] = buf;
                    d = if nesterov { d + mom * buf } else { buf };
                }
                p[i] = p[i] + neg_lr * d;
            }
        }
        Kernel::Adam {
            decay,
            wd,
            w1,
            b2,
            w2,
            bc2_sqrt,
            eps,
            neg_step_size,
            amsgrad,
        } => {
            for i in 0..p.len() {
                let mut d = grad(i);
                let mut pi = p[i];
                if let Some(decay) = decay {
                    pi = pi * decay;
                } else if wd != zero {
                    d = d + wd * pi;
                }
                let m = lerp(s0[i], d, w1);
                s0[i] = m;
                let mut v = s1[i] * b2 + w2 * d * d;
                s1[i] = v;
                if amsgrad {
                    v = maximum(s2[i], v);
                    s2[i] = v;
                }
                let denom = v.sqrt() / bc2_sqrt + eps;
                p[i] = pi + neg_step_size * (m / denom);
            }
        }
        Kernel::RmsProp {
            neg_lr,
            alpha,
            w,
            eps,
            wd,
            momentum,
            centered,
        } => {
            // State order: square_avg, momentum_buffer (if momentum), grad_avg (if centered).
            let (buf, gavg) = if momentum.is_none() && centered {
                (s2, s1)
            } else {
                (s1, s2)
            };
            for i in 0..p.len() {
                let mut d = grad(i);
                if wd != zero {
                    d = d + wd * p[i];
                }
                let sq = s0[i] * alpha + w * d * d;
                s0[i] = sq;
                let avg = if centered {
                    let ga = lerp(gavg[i], d, w);
                    gavg[i] = ga;
                    (sq - ga * ga).sqrt()
                } else {
                    sq.sqrt()
                } + eps;
                p[i] = match momentum {
                    Some(mom) => {
                        let b = buf[i] * mom + d / avg;
                        buf[i] = b;
                        p[i] + neg_lr * b
                    }
                    None => p[i] + neg_lr * (d / avg),
                };
            }
        }
        Kernel::Adagrad { neg_clr, wd, eps } => {
            for i in 0..p.len() {
                let mut d = grad(i);
                if wd != zero {
                    d = d + wd * p[i];
                }
                let sum = s0[i] + d * d;
                s0[i] = sum;
                p[i] = p[i] + neg_clr * (d / (sum.sqrt() + eps));
            }
        }
        Kernel::Lion {
            neg_lr,
            decay,
            b1,
            w1,
            b2,
            w2,
        } => {
            for i in 0..p.len() {
                let d = grad(i);
                let m = s0[i];
                let c = m * b1 + w1 * d;
                p[i] = p[i] * decay + neg_lr * sign(c);
                s0[i] = m * b2 + w2 * d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::noise;
    use tensor_core::{Device, Var};

    fn dev() -> Device {
        crate::device()
    }

    fn tensor(v: &[f64], shape: &[usize], dtype: DType) -> Tensor {
        Tensor::from_f64s(v, shape.to_vec(), dtype, &dev()).unwrap()
    }

    /// Every rule with every option combination worth telling apart.
    fn rules() -> Vec<OptimRule> {
        let mut out = Vec::new();
        for maximize in [false, true] {
            for wd in [0.0, 0.05] {
                for (momentum, dampening, nesterov) in [
                    (0.0, 0.0, false),
                    (0.9, 0.0, false),
                    (0.9, 0.1, false),
                    (0.9, 0.0, true),
                ] {
                    out.push(OptimRule::Sgd {
                        lr: 0.1,
                        momentum,
                        dampening,
                        nesterov,
                        weight_decay: wd,
                        maximize,
                    });
                }
                for decoupled in [false, true] {
                    for amsgrad in [false, true] {
                        out.push(OptimRule::Adam {
                            lr: 0.01,
                            beta1: 0.9,
                            beta2: 0.999,
                            eps: 1e-8,
                            weight_decay: wd,
                            decoupled,
                            amsgrad,
                            maximize,
                        });
                    }
                }
                for momentum in [0.0, 0.9] {
                    for centered in [false, true] {
                        out.push(OptimRule::RmsProp {
                            lr: 0.01,
                            alpha: 0.99,
                            eps: 1e-8,
                            weight_decay: wd,
                            momentum,
                            centered,
                            maximize,
                        });
                    }
                }
                for lr_decay in [0.0, 0.01] {
                    out.push(OptimRule::Adagrad {
                        lr: 0.01,
                        lr_decay,
                        weight_decay: wd,
                        eps: 1e-10,
                        maximize,
                    });
                }
            }
        }
        for wd in [0.0, 0.1] {
            out.push(OptimRule::Lion {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.99,
                weight_decay: wd,
            });
        }
        out
    }

    fn initial_state(rule: &OptimRule, n: usize, dtype: DType, seed: u64) -> Vec<Tensor> {
        rule.state_names()
            .iter()
            .enumerate()
            .map(|(k, name)| {
                // Non-negative values where the rule needs them (second moments, sums).
                let v: Vec<f64> = noise(n, seed + k as u64)
                    .into_iter()
                    .map(|x| match *name {
                        "exp_avg_sq" | "max_exp_avg_sq" | "square_avg" | "sum" => x.abs() + 0.5,
                        _ => 0.1 * x,
                    })
                    .collect();
                tensor(&v, &[n], dtype)
            })
            .collect()
    }

    fn close(a: &[f64], b: &[f64], tol: f64) -> std::result::Result<(), String> {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            if (x - y).abs() > tol * (1.0 + y.abs()) {
                return Err(format!("element {i}: {x} vs {y}"));
            }
        }
        Ok(())
    }

    /// Run `steps` updates with the fused kernel and with the composed default from the
    /// same start, comparing parameter and state after every step.
    fn compare(rule: &OptimRule, n: usize, dtype: DType, grad_scale: f64, tol: f64) {
        let p0 = noise(n, 7);
        let (pf, pc) = (tensor(&p0, &[n], dtype), tensor(&p0, &[n], dtype));
        let (sf, sc) = (
            initial_state(rule, n, dtype, 11),
            initial_state(rule, n, dtype, 11),
        );
        for step in 1..=4u64 {
            let g = tensor(&noise(n, 100 + step), &[n], dtype);
            optim_update(rule, step, grad_scale, &pf, &g, &sf).unwrap();
            optim::update_composite(rule, step, grad_scale, &pc, &g, &sc).unwrap();
            let what = format!("{rule:?} n={n} {dtype} scale={grad_scale} step {step}");
            close(&pf.to_f64_vec().unwrap(), &pc.to_f64_vec().unwrap(), tol)
                .unwrap_or_else(|e| panic!("param of {what}: {e}"));
            for (k, (a, b)) in sf.iter().zip(&sc).enumerate() {
                close(&a.to_f64_vec().unwrap(), &b.to_f64_vec().unwrap(), tol)
                    .unwrap_or_else(|e| panic!("state {k} of {what}: {e}"));
            }
        }
    }

    #[test]
    fn fused_matches_composite_for_every_rule() {
        for rule in rules() {
            for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-12)] {
                for grad_scale in [1.0, 0.5] {
                    compare(&rule, 1000, dtype, grad_scale, tol);
                }
            }
        }
    }

    #[test]
    fn fused_matches_composite_on_the_parallel_path() {
        let n = PAR_THRESHOLD + PAR_CHUNK + 123;
        for rule in rules() {
            compare(&rule, n, DType::F32, 0.7, 2e-5);
        }
    }

    #[test]
    fn sgd_first_step_copies_the_gradient_into_the_buffer() {
        let rule = OptimRule::Sgd {
            lr: 0.5,
            momentum: 0.9,
            dampening: 0.3,
            nesterov: false,
            weight_decay: 0.0,
            maximize: false,
        };
        let p = tensor(&[1.0, 2.0], &[2], DType::F32);
        let buf = tensor(&[100.0, 100.0], &[2], DType::F32);
        let g = tensor(&[0.5, -1.0], &[2], DType::F32);
        optim_update(&rule, 1, 1.0, &p, &g, std::slice::from_ref(&buf)).unwrap();
        assert_eq!(buf.to_vec::<f32>().unwrap(), vec![0.5, -1.0]);
        assert_eq!(p.to_vec::<f32>().unwrap(), vec![0.75, 2.5]);
        // Step 2: buf = 0.9·buf + 0.7·g.
        optim_update(&rule, 2, 1.0, &p, &g, std::slice::from_ref(&buf)).unwrap();
        let b = buf.to_vec::<f32>().unwrap();
        assert!((b[0] - (0.45 + 0.35)).abs() < 1e-6, "{b:?}");
    }

    #[test]
    fn updates_a_variable_in_place() {
        let v = Var::from_tensor(&tensor(&[1.0, -1.0], &[2], DType::F64)).unwrap();
        let g = tensor(&[1.0, 1.0], &[2], DType::F64);
        let rule = OptimRule::Lion {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.0,
        };
        let m = tensor(&[0.0, 0.0], &[2], DType::F64);
        optim_update(&rule, 1, 1.0, &v, &g, std::slice::from_ref(&m)).unwrap();
        assert_eq!(v.to_vec::<f64>().unwrap(), vec![0.9, -1.1]);
        assert!(v.is_variable());
    }

    #[test]
    fn transposed_gradient_takes_the_fused_path_correctly() {
        let rule = OptimRule::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decoupled: true,
            amsgrad: false,
            maximize: false,
        };
        let base = noise(12, 5);
        let gt = tensor(&noise(12, 6), &[3, 4], DType::F32);
        let g = gt.t().unwrap();
        let state = || -> Vec<Tensor> {
            (0..2)
                .map(|_| Tensor::zeros((4, 3), DType::F32, &dev()).unwrap())
                .collect()
        };
        let p1 = tensor(&base, &[4, 3], DType::F32);
        optim_update(&rule, 1, 1.0, &p1, &g, &state()).unwrap();
        let p2 = tensor(&base, &[4, 3], DType::F32);
        optim::update_composite(&rule, 1, 1.0, &p2, &g.contiguous().unwrap(), &state()).unwrap();
        close(&p1.to_f64_vec().unwrap(), &p2.to_f64_vec().unwrap(), 1e-6).unwrap();
    }

    #[test]
    fn non_contiguous_and_half_params_fall_back_to_the_composite() {
        let rule = OptimRule::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decoupled: true,
            amsgrad: false,
            maximize: false,
        };
        let base = noise(12, 3);
        let g = tensor(&noise(12, 4), &[4, 3], DType::F32);
        let zeros = || -> Vec<Tensor> {
            (0..2)
                .map(|_| Tensor::zeros((4, 3), DType::F32, &dev()).unwrap())
                .collect()
        };
        // A transposed view as the parameter: the update lands in the right positions.
        let store = tensor(&base, &[3, 4], DType::F32);
        optim_update(&rule, 1, 1.0, &store.t().unwrap(), &g, &zeros()).unwrap();
        let contiguous = store.t().unwrap().contiguous().unwrap();
        let reference = tensor(&base, &[3, 4], DType::F32)
            .t()
            .unwrap()
            .contiguous()
            .unwrap();
        optim_update(&rule, 1, 1.0, &reference, &g, &zeros()).unwrap();
        close(
            &contiguous.to_f64_vec().unwrap(),
            &reference.to_f64_vec().unwrap(),
            1e-6,
        )
        .unwrap();
        // bf16 goes through the composite and still moves the parameter.
        let pb = tensor(&[1.0, 2.0], &[2], DType::BF16);
        let gb = tensor(&[1.0, -1.0], &[2], DType::BF16);
        let sb: Vec<Tensor> = (0..2)
            .map(|_| Tensor::zeros(2, DType::BF16, &dev()).unwrap())
            .collect();
        optim_update(&rule, 1, 1.0, &pb, &gb, &sb).unwrap();
        let v = pb.to_f64_vec().unwrap();
        assert!(v[0] < 1.0 && v[1] > 1.9, "{v:?}");
    }

    #[test]
    fn empty_parameters_are_a_no_op() {
        let e = || Tensor::zeros((0, 3), DType::F32, &dev()).unwrap();
        let rule = OptimRule::Lion {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.0,
        };
        optim_update(&rule, 1, 1.0, &e(), &e(), &[e()]).unwrap();
    }

    #[test]
    fn bad_inputs_are_errors_not_deadlocks() {
        let rule = OptimRule::Sgd {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            maximize: false,
        };
        let p = tensor(&[1.0, 2.0], &[2], DType::F32);
        let buf = Tensor::zeros(2, DType::F32, &dev()).unwrap();
        let good_g = tensor(&[1.0, 2.0], &[2], DType::F32);
        let one = std::slice::from_ref(&buf);
        // Gradient aliasing the parameter.
        let e = optim_update(&rule, 1, 1.0, &p, &p.clone(), one).unwrap_err();
        assert!(e.to_string().contains("share storage"), "{e}");
        // State aliasing the gradient.
        let e = optim_update(&rule, 1, 1.0, &p, &good_g, std::slice::from_ref(&good_g));
        assert!(e.unwrap_err().to_string().contains("share storage"));
        // Shape, dtype, state count, step, hyper-parameters.
        let g3 = tensor(&[1.0, 2.0, 3.0], &[3], DType::F32);
        assert!(optim_update(&rule, 1, 1.0, &p, &g3, one).is_err());
        let g64 = tensor(&[1.0, 2.0], &[2], DType::F64);
        assert!(optim_update(&rule, 1, 1.0, &p, &g64, one).is_err());
        assert!(optim_update(&rule, 1, 1.0, &p, &good_g, &[]).is_err());
        assert!(optim_update(&rule, 0, 1.0, &p, &good_g, one).is_err());
        assert!(optim_update(&rule, 1, f64::NAN, &p, &good_g, one).is_err());
        let neg = OptimRule::Sgd {
            lr: -0.1,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            maximize: false,
        };
        assert!(optim_update(&neg, 1, 1.0, &p, &good_g, one).is_err());
        let adam = OptimRule::Adam {
            lr: 0.1,
            beta1: 1.0,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            amsgrad: false,
            maximize: false,
        };
        let e = adam.validate().unwrap_err();
        assert!(e.to_string().contains("beta1"), "{e}");
        let ints = Tensor::zeros(2, DType::I64, &dev()).unwrap();
        assert!(optim_update(&rule, 1, 1.0, &ints, &good_g, one).is_err());
        // Nothing was written by the failed calls.
        assert_eq!(p.to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
    }
}
