//! Choosing a code from a head's logits: greedy, or temperature and top-k sampling from a
//! seeded generator (so a `--seed` reproduces the same audio on every machine).

use tensor_core::{Error, Result};

/// How [`super::TextToCodes::generate`] picks codes.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; `0` is greedy (argmax).
    pub temperature: f64,
    /// Sample among the `top_k` most likely codes only; `0` keeps all.
    pub top_k: usize,
    pub seed: u64,
    /// A tighter cap on the frames than the one derived from the text length.
    pub max_frames: Option<usize>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.8,
            top_k: 50,
            seed: 0,
            max_frames: None,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding.
    pub fn greedy() -> SamplingConfig {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::invalid(
                "SamplingConfig",
                format!(
                    "temperature must be finite and >= 0, got {}",
                    self.temperature
                ),
            ));
        }
        if self.max_frames == Some(0) {
            return Err(Error::invalid(
                "SamplingConfig",
                "max_frames must be positive",
            ));
        }
        Ok(())
    }
}

/// splitmix64: tiny, seedable, identical everywhere.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An index of `logits` among those `allowed`: the argmax when greedy, else a draw from the
/// softmax of `logits / temperature` restricted to the `top_k` best allowed ones. Ties and
/// non-finite logits resolve to the lowest index; at least one index must be allowed.
pub fn sample(
    logits: &[f64],
    allowed: impl Fn(usize) -> bool,
    cfg: &SamplingConfig,
    rng: &mut SplitMix64,
) -> usize {
    let mut cand: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .filter(|&(i, x)| allowed(i) && !x.is_nan())
        .map(|(i, &x)| (i, x))
        .collect();
    if cand.is_empty() {
        return (0..logits.len()).find(|&i| allowed(i)).unwrap_or(0);
    }
    // Stable sort: equal logits keep index order.
    cand.sort_by(|a, b| b.1.total_cmp(&a.1));
    if cfg.temperature == 0.0 {
        return cand[0].0;
    }
    if cfg.top_k > 0 {
        cand.truncate(cfg.top_k);
    }
    let top = cand[0].1;
    let weights: Vec<f64> = cand
        .iter()
        .map(|&(_, x)| ((x - top) / cfg.temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.next_f64() * total;
    for (&(i, _), w) in cand.iter().zip(&weights) {
        if r < *w {
            return i;
        }
        r -= w;
    }
    cand[cand.len() - 1].0
}
