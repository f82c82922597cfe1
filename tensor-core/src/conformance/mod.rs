//! The backend conformance suite: one table of cases — forward results against references,
//! gradients against finite differences in f64, PyTorch parity fixtures, and bad-input errors —
//! that every backend runs against its own device. A new backend is done when it passes:
//!
//! ```ignore
//! #[test]
//! fn conformance_grads() {
//!     tensor_core::conformance::run_group(&my_backend::device(), "grad").unwrap();
//! }
//! ```

pub mod gradcheck;

mod errors;
mod forward;
mod grads;
mod parity;

use crate::{Device, Error, Result};

/// One conformance check.
pub struct Case {
    pub group: &'static str,
    pub name: &'static str,
    pub run: fn(&Device) -> Result<()>,
}

/// Every case, in group order.
pub fn cases() -> Vec<Case> {
    let mut v = forward::cases();
    v.extend(grads::cases());
    v.extend(parity::cases());
    v.extend(errors::cases());
    v
}

/// The group names: `forward`, `grad`, `parity`, `errors`.
pub const GROUPS: [&str; 4] = ["forward", "grad", "parity", "errors"];

/// Run the cases of `group` (all groups for `"all"`), filtered by the `CONFORMANCE_FILTER`
/// environment variable (a substring of the case name) when set. Every case runs, even after
/// failures; the error lists each failing case with its message. A panicking case counts as a
/// failure too (backends must not panic on valid or invalid input).
pub fn run_group(device: &Device, group: &str) -> Result<()> {
    let filter = std::env::var("CONFORMANCE_FILTER").ok();
    let mut failures = vec![];
    let mut ran = 0;
    for case in cases() {
        if group != "all" && case.group != group {
            continue;
        }
        if filter.as_deref().is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        ran += 1;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(device)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{}/{}: {e}", case.group, case.name)),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                failures.push(format!("{}/{}: PANIC {msg}", case.group, case.name));
            }
        }
    }
    if ran == 0 && filter.is_none() {
        return Err(Error::msg(format!(
            "no conformance cases in group {group:?}"
        )));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "{} of {ran} conformance cases failed on {}:\n  {}",
            failures.len(),
            device.name(),
            failures.join("\n  ")
        )))
    }
}

/// Compare two tensors elementwise (as f64) within `atol + rtol·|expected|`.
pub fn assert_close(
    what: &str,
    got: &crate::Tensor,
    expected: &crate::Tensor,
    atol: f64,
    rtol: f64,
) -> Result<()> {
    if got.shape() != expected.shape() {
        return Err(Error::msg(format!(
            "{what}: shape {:?}, expected {:?}",
            got.shape(),
            expected.shape()
        )));
    }
    assert_close_slices(
        what,
        &got.to_f64_vec()?,
        &expected.to_f64_vec()?,
        atol,
        rtol,
    )
}

/// Compare two f64 slices within `atol + rtol·|expected|`; NaNs must match NaNs.
pub fn assert_close_slices(
    what: &str,
    got: &[f64],
    expected: &[f64],
    atol: f64,
    rtol: f64,
) -> Result<()> {
    if got.len() != expected.len() {
        return Err(Error::msg(format!(
            "{what}: {} values, expected {}",
            got.len(),
            expected.len()
        )));
    }
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        let ok = if e.is_nan() {
            g.is_nan()
        } else if e.is_infinite() {
            g == e
        } else {
            (g - e).abs() <= atol + rtol * e.abs()
        };
        if !ok {
            let err = (g - e).abs();
            if worst.is_none_or(|(_, w)| err > w || err.is_nan()) {
                worst = Some((i, err));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(Error::msg(format!(
            "{what}: mismatch at flat index {i}: got {}, expected {} (atol {atol}, rtol {rtol})",
            got[i], expected[i]
        ))),
    }
}

/// Deterministic pseudo-random values in [-1, 1) (independent of any backend's RNG), so
/// that every backend checks the same numbers.
pub fn det_values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// A tensor of deterministic values in [-1, 1).
pub fn det_tensor(
    shape: impl Into<crate::Shape>,
    dtype: crate::DType,
    device: &Device,
    seed: u64,
) -> Result<crate::Tensor> {
    let shape = shape.into();
    crate::Tensor::from_f64s(&det_values(shape.elem_count(), seed), shape, dtype, device)
}
