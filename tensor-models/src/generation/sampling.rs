//! Choosing the next token from a row of logits: the sampling parameters, the logits
//! processors in Hugging Face's order (penalties → temperature → top-k → top-p → min-p), and
//! a seeded [`Sampler`] whose draws depend only on its seed.

use std::collections::HashMap;

use tensor_core::{Error, Result};

/// How to pick tokens and when to stop. The defaults are greedy decoding with no penalties,
/// 256 new tokens, no stop strings and the model's own EOS ids.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax after the penalties; the top-k/p and
    /// min-p filters then change nothing and are skipped).
    pub temperature: f32,
    /// Keep the `k` highest logits (ties with the k-th kept, as Hugging Face); `0` = off.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability
    /// reaches `top_p`; `1.0` = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; `0.0` = off.
    pub min_p: f32,
    /// Hugging Face's repetition penalty over the prompt and the generated tokens: a seen
    /// token's logit is divided by it when positive and multiplied by it when negative;
    /// `1.0` = off.
    pub repetition_penalty: f32,
    /// OpenAI's presence penalty over the generated tokens: subtracted once from the logit
    /// of every token generated so far; `0.0` = off.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty over the generated tokens: subtracted once per occurrence;
    /// `0.0` = off.
    pub frequency_penalty: f32,
    /// Seed of the sampler's random numbers (same seed, same model, same tokens).
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Stop as soon as the text contains one of these; the stop string itself is neither
    /// streamed nor part of the returned text. Empty strings are ignored.
    pub stop_strings: Vec<String>,
    /// Token ids that end generation (not part of the text). Empty: the model's
    /// [`crate::LmInfo::eos_token_ids`] plus the tokenizer's EOS id.
    pub eos_token_ids: Vec<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
            max_new_tokens: 256,
            stop_strings: Vec::new(),
            eos_token_ids: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (the default).
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Sampling at `temperature` with `seed`, no other filter.
    pub fn sampled(temperature: f32, seed: u64) -> Self {
        SamplingParams {
            temperature,
            seed,
            ..Self::default()
        }
    }

    /// An error naming the first parameter outside its range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32| {
            Err(Error::invalid(
                "SamplingParams",
                format!("{what} = {v} is out of range"),
            ))
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature (must be >= 0)", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p (must be in (0, 1])", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p (must be in [0, 1])", self.min_p);
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty (must be > 0)", self.repetition_penalty);
        }
        if !self.presence_penalty.is_finite() {
            return bad("presence_penalty", self.presence_penalty);
        }
        if !self.frequency_penalty.is_finite() {
            return bad("frequency_penalty", self.frequency_penalty);
        }
        Ok(())
    }
}

/// Hugging Face's `RepetitionPenaltyLogitsProcessor`: every distinct token of `context`
/// (prompt and generated ids) has its logit divided by `penalty` if positive, multiplied by
/// it if negative. Ids outside `logits` are ignored.
pub fn apply_repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &id in context {
        let i = id as usize;
        if i < logits.len() && !seen[i] {
            seen[i] = true;
            let x = logits[i];
            logits[i] = if x < 0.0 { x * penalty } else { x / penalty };
        }
    }
}

/// OpenAI's penalties over the generated ids: `logit[j] -= count[j] · frequency +
/// (count[j] > 0) · presence`. Ids outside `logits` are ignored.
pub fn apply_presence_frequency_penalty(
    logits: &mut [f32],
    generated: &[u32],
    presence: f32,
    frequency: f32,
) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &id in generated {
        if (id as usize) < logits.len() {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    for (id, n) in counts {
        logits[id as usize] -= n as f32 * frequency + presence;
    }
}

/// Divide every logit by `temperature` (> 0).
pub fn apply_temperature(logits: &mut [f32], temperature: f32) {
    if temperature != 1.0 && temperature > 0.0 {
        for x in logits.iter_mut() {
            *x /= temperature;
        }
    }
}

/// Hugging Face's `TopKLogitsWarper`: logits below the k-th largest become −∞ (ties with the
/// k-th value are kept). `k = 0` or `k >= len` keeps everything.
pub fn apply_top_k(logits: &mut [f32], k: usize) {
    if k == 0 || k >= logits.len() {
        return;
    }
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    for x in logits.iter_mut() {
        if *x < kth {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// Hugging Face's `TopPLogitsWarper`: sort ascending, and drop every token whose cumulative
/// probability (its own included) is at most `1 − top_p`; the most likely token always stays.
pub fn apply_top_p(logits: &mut [f32], top_p: f32) {
    if top_p >= 1.0 || logits.is_empty() {
        return;
    }
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]));
    let threshold = 1.0 - top_p as f64;
    let mut cum = 0.0f64;
    let last = order.len() - 1;
    for (rank, &i) in order.iter().enumerate() {
        cum += probs[i];
        if rank < last && cum <= threshold {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

/// Hugging Face's `MinPLogitsWarper`: drop tokens whose probability is below `min_p` times
/// the largest probability; the most likely token always stays.
pub fn apply_min_p(logits: &mut [f32], min_p: f32) {
    if min_p <= 0.0 || logits.is_empty() {
        return;
    }
    let probs = softmax(logits);
    let top = argmax(logits);
    let cut = min_p as f64 * probs[top];
    for (i, x) in logits.iter_mut().enumerate() {
        if i != top && probs[i] < cut {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// Every processor of `params` in Hugging Face's order: repetition penalty, presence and
/// frequency penalties, then (when sampling, `temperature > 0`) temperature, top-k, top-p and
/// min-p. `context` is prompt + generated ids, `generated` the generated ones.
pub fn process_logits(
    logits: &mut [f32],
    context: &[u32],
    generated: &[u32],
    params: &SamplingParams,
) {
    apply_repetition_penalty(logits, context, params.repetition_penalty);
    apply_presence_frequency_penalty(
        logits,
        generated,
        params.presence_penalty,
        params.frequency_penalty,
    );
    if params.temperature > 0.0 {
        apply_temperature(logits, params.temperature);
        apply_top_k(logits, params.top_k);
        apply_top_p(logits, params.top_p);
        apply_min_p(logits, params.min_p);
    }
}

/// Softmax in f64 (−∞ entries get probability 0).
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if max == f64::NEG_INFINITY {
        return vec![0.0; logits.len()];
    }
    let exps: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Index of the largest value (the first one on ties, as `torch.argmax`).
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// xoshiro256** seeded through SplitMix64: small, fast, and fixed forever, so a seed gives
/// the same tokens on every platform and every version of this crate.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Picks tokens for one sequence: the processors of its [`SamplingParams`], then argmax
/// (temperature 0) or a draw from the softmax with its own seeded [`Rng`].
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Result<Sampler> {
        params.validate()?;
        Ok(Sampler {
            params: params.clone(),
            rng: Rng::new(params.seed),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token for raw `logits` (one row, vocabulary-sized). `context` is prompt +
    /// generated ids (repetition penalty), `generated` the generated ones (presence and
    /// frequency penalties). NaN logits or an empty row are errors.
    pub fn sample(&mut self, logits: &[f32], context: &[u32], generated: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::invalid("Sampler::sample", "empty logits row"));
        }
        if logits.iter().any(|x| x.is_nan()) {
            return Err(Error::invalid(
                "Sampler::sample",
                "the model produced NaN logits",
            ));
        }
        let mut l = logits.to_vec();
        process_logits(&mut l, context, generated, &self.params);
        if self.params.temperature == 0.0 {
            return Ok(argmax(&l) as u32);
        }
        let probs = softmax(&l);
        if probs.iter().all(|&p| p == 0.0) {
            // Every logit was −∞ (a degenerate model): fall back to the raw argmax.
            return Ok(argmax(logits) as u32);
        }
        let u = self.rng.next_f64();
        let mut cum = 0.0;
        let mut last_kept = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                cum += p;
                last_kept = i;
                if u < cum {
                    return Ok(i as u32);
                }
            }
        }
        // Rounding left the cumulative sum just under `u`.
        Ok(last_kept as u32)
    }
}
