//! Conformance cases: bad input. Every class of invalid argument must come back as `Err` —
//! never a panic (the runner counts a panic as a failure) — with a message that names the op
//! and, for shape errors, the offending shape. Index values are only checked by the backend
//! (see the backend contract), so the out-of-range index cases exercise the backend itself.
//!
//! Each check runs under `catch_unwind` (see [`Checks`]), so one panicking input is reported by
//! name and the rest of its case still runs.

use std::sync::Arc;

use super::Case;
use crate::{
    AttentionParams, BackendDevice, BackendStorage, BinaryOp, CmpOp, ConvParams, DType, Device,
    Error, HostData, Layout, ReduceOp, Result, Storage, Tensor, UnaryOp, UnfoldParams, Var,
};

mod args;
mod device;
mod nn;
mod shapes;

fn case(name: &'static str, run: fn(&Device) -> Result<()>) -> Case {
    Case {
        group: "errors",
        name,
        run,
    }
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
    let mut v = Vec::new();
    v.extend(args::cases());
    v.extend(device::cases());
    v.extend(nn::cases());
    v.extend(shapes::cases());
    v
}
