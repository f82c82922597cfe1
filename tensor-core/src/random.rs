//! The global seed source for random tensors. `manual_seed(s)` makes a program reproducible:
//! each random op draws the next seed of a splitmix64 sequence and hands it to the backend.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{DType, Error, Result};

static STATE: AtomicU64 = AtomicU64::new(0x5EED_0F7E_5012);

/// Reset the global generator, like `torch.manual_seed`.
pub fn manual_seed(seed: u64) {
    STATE.store(seed, Ordering::SeqCst);
}

/// The generator's current state: `manual_seed(rng_state())` later replays the same random
/// draws (what activation checkpointing does to recompute dropout masks exactly).
pub fn rng_state() -> u64 {
    STATE.load(Ordering::SeqCst)
}

pub(crate) fn next_seed() -> u64 {
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn check_float(op: &'static str, dtype: DType) -> Result<()> {
    if dtype.is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            op,
            dtype,
            expected: "a float dtype",
        })
    }
}
