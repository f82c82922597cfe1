//! Text generation over any [`CausalLm`]: prefill the prompt once, then decode one token per
//! step through the model's KV cache, sampling with [`SamplingParams`] and streaming text that
//! never splits a UTF-8 character and never shows a stop string.
//!
//! ```no_run
//! # fn demo(model: &mut dyn tensor_models::CausalLm, tok: &tensor_io::tokenizer::Tokenizer)
//! # -> tensor_core::Result<()> {
//! use tensor_models::generation::{generate, SamplingParams};
//! let prompt = tok.encode("Once upon a time", true)?;
//! let params = SamplingParams { temperature: 0.7, top_p: 0.9, seed: 1, ..Default::default() };
//! let out = generate(model, tok, &prompt, &params, |piece| {
//!     print!("{piece}");
//!     true // false stops generation
//! })?;
//! eprintln!("{} tokens, {:.1} tok/s", out.stats.generated_tokens, out.stats.decode_tokens_per_s);
//! # Ok(()) }
//! ```
//!
//! Batches: [`generate_batch`] runs prompts of equal length together, one forward per step
//! for the whole group, each sequence with its own sampler (seed `params.seed + index`) and its
//! own stop conditions; finished sequences keep being fed (their outputs are ignored) until
//! the whole group is done. [`CausalLm`] has no attention mask, so prompts of different
//! lengths cannot be left-padded into one batch: they are grouped by length and the groups
//! run one after the other (each starting from an empty cache).

mod sampling;
mod stream;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use sampling::{
    apply_min_p, apply_presence_frequency_penalty, apply_repetition_penalty, apply_temperature,
    apply_top_k, apply_top_p, argmax, process_logits, softmax, Rng, Sampler, SamplingParams,
};
pub use stream::{StopMatcher, TokenDecoder};

use tensor_core::{no_grad, DType, Error, Result, Tensor};
use tensor_io::tokenizer::Tokenizer;

use crate::lm::CausalLm;

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS id was sampled (it is the last of the returned ids, not part of the text).
    Eos,
    /// The text reached this stop string (cut from the text; the ids keep the token that
    /// completed it).
    StopString(String),
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The model's `max_seq_len` was reached.
    ContextFull,
    /// The streaming callback returned `false`.
    Cancelled,
}

/// Counts and timings of one generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// From the start of the prefill to the first sampled token.
    pub time_to_first_token: Duration,
    /// The prompt's forward pass.
    pub prefill_time: Duration,
    /// Every later step (forward of one token per sequence, sampling, detokenising).
    pub decode_time: Duration,
    /// Prompt tokens per second of prefill (all sequences of the batch).
    pub prefill_tokens_per_s: f64,
    /// Tokens per second after the first one (which comes from the prefill).
    pub decode_tokens_per_s: f64,
}

/// What [`generate`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationOutput {
    /// Generated ids (the EOS id included when that ended generation).
    pub ids: Vec<u32>,
    /// The generated text, without special tokens and without the stop string.
    pub text: String,
    pub finish_reason: FinishReason,
    pub stats: GenerationStats,
}

/// Generate a continuation of `prompt_ids`, calling `on_token` with each new piece of text
/// (never empty, never a partial character, never part of a stop string); `on_token`
/// returning `false` stops generation. The model's cache is reset first.
pub fn generate(
    model: &mut dyn CausalLm,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    params: &SamplingParams,
    mut on_token: impl FnMut(&str) -> bool,
) -> Result<GenerationOutput> {
    let mut outs = run_group(
        model,
        tokenizer,
        &[prompt_ids],
        &[params.seed],
        params,
        &mut |_, piece| on_token(piece),
    )?;
    outs.pop()
        .ok_or_else(|| Error::msg("generate: no output for the prompt"))
}

/// Generate for several prompts: equal-length prompts run as one batch (see the module docs);
/// sequence `i` samples with seed `params.seed + i`, so its output equals that of
/// [`generate`] with that seed. Outputs are in the order of `prompts`.
pub fn generate_batch(
    model: &mut dyn CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
) -> Result<Vec<GenerationOutput>> {
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        groups.entry(p.len()).or_default().push(i);
    }
    let mut outs: Vec<Option<GenerationOutput>> = vec![None; prompts.len()];
    for idx in groups.values() {
        let group: Vec<&[u32]> = idx.iter().map(|&i| prompts[i].as_slice()).collect();
        let seeds: Vec<u64> = idx
            .iter()
            .map(|&i| params.seed.wrapping_add(i as u64))
            .collect();
        let res = run_group(model, tokenizer, &group, &seeds, params, &mut |_, _| true)?;
        for (&i, o) in idx.iter().zip(res) {
            outs[i] = Some(o);
        }
    }
    outs.into_iter()
        .map(|o| o.ok_or_else(|| Error::msg("generate_batch: a prompt got no output")))
        .collect()
}

/// One sequence's decoding state.
struct Seq<'t> {
    sampler: Sampler,
    context: Vec<u32>,
    prompt_len: usize,
    decoder: TokenDecoder<'t>,
    stops: StopMatcher,
    finish: Option<FinishReason>,
    first_token_at: Option<Instant>,
    done_at: Option<Instant>,
}

impl Seq<'_> {
    fn generated(&self) -> &[u32] {
        &self.context[self.prompt_len..]
    }

    /// Sample from `logits`, stream the new text; sets `finish` when a stop condition hits.
    fn step(
        &mut self,
        logits: &[f32],
        eos: &[u32],
        max_new: usize,
        room: usize,
        index: usize,
        on_piece: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Result<()> {
        let id = self
            .sampler
            .sample(logits, &self.context, &self.context[self.prompt_len..])?;
        self.context.push(id);
        let now = Instant::now();
        self.first_token_at.get_or_insert(now);
        if eos.contains(&id) {
            self.finish = Some(FinishReason::Eos);
        } else {
            let piece = self.decoder.push(id)?;
            let (out, stopped) = self.stops.push(&piece);
            if !out.is_empty() && !on_piece(index, &out) {
                self.finish = Some(FinishReason::Cancelled);
            }
            if stopped {
                self.finish = Some(FinishReason::StopString(
                    self.stops.matched().unwrap_or_default().to_string(),
                ));
            }
        }
        let n = self.generated().len();
        if self.finish.is_none() {
            if n >= max_new {
                self.finish = Some(FinishReason::MaxTokens);
            } else if n > room {
                self.finish = Some(FinishReason::ContextFull);
            }
        }
        if self.finish.is_some() {
            self.done_at = Some(now);
            self.flush(index, on_piece)?;
        }
        Ok(())
    }

    /// Release held-back text at the end (it may still complete a stop string).
    fn flush(&mut self, index: usize, on_piece: &mut dyn FnMut(usize, &str) -> bool) -> Result<()> {
        if self.stops.stopped() {
            return Ok(());
        }
        let rest = if matches!(self.finish, Some(FinishReason::Cancelled)) {
            String::new()
        } else {
            self.decoder.flush()?
        };
        let (mut out, stopped) = self.stops.push(&rest);
        if stopped {
            self.finish = Some(FinishReason::StopString(
                self.stops.matched().unwrap_or_default().to_string(),
            ));
        } else {
            out.push_str(&self.stops.finish());
        }
        if !out.is_empty() && !matches!(self.finish, Some(FinishReason::Cancelled)) {
            on_piece(index, &out);
        }
        Ok(())
    }
}

/// Prefill one group of equal-length prompts, then decode until every sequence finished.
fn run_group(
    model: &mut dyn CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[&[u32]],
    seeds: &[u64],
    params: &SamplingParams,
    on_piece: &mut dyn FnMut(usize, &str) -> bool,
) -> Result<Vec<GenerationOutput>> {
    params.validate()?;
    let b = prompts.len();
    let len = prompts.first().map_or(0, |p| p.len());
    if b == 0 {
        return Ok(Vec::new());
    }
    if len == 0 {
        return Err(Error::invalid(
            "generate",
            "the prompt is empty (give at least one token, e.g. BOS)",
        ));
    }
    if prompts.iter().any(|p| p.len() != len) {
        return Err(Error::invalid(
            "generate",
            "a batch group needs prompts of equal length",
        ));
    }
    let info = model.info().clone();
    if len > info.max_seq_len {
        return Err(Error::invalid(
            "generate",
            format!(
                "the prompt has {len} tokens, more than the model's max_seq_len {}",
                info.max_seq_len
            ),
        ));
    }
    let mut eos = params.eos_token_ids.clone();
    if eos.is_empty() {
        eos = info.eos_token_ids.clone();
        eos.extend(tokenizer.eos_token_id());
    }
    // Tokens that can still be fed after the prompt; one more can be sampled.
    let room = info.max_seq_len - len;
    let mut seqs: Vec<Seq> = prompts
        .iter()
        .zip(seeds)
        .map(|(p, &seed)| {
            Ok(Seq {
                sampler: Sampler::new(&SamplingParams {
                    seed,
                    ..params.clone()
                })?,
                context: p.to_vec(),
                prompt_len: len,
                decoder: TokenDecoder::new(tokenizer, true),
                stops: StopMatcher::new(&params.stop_strings),
                finish: None,
                first_token_at: None,
                done_at: None,
            })
        })
        .collect::<Result<_>>()?;
    let empty_stats = GenerationStats {
        prompt_tokens: len,
        ..Default::default()
    };
    if params.max_new_tokens == 0 {
        return Ok(seqs
            .into_iter()
            .map(|_| GenerationOutput {
                ids: Vec::new(),
                text: String::new(),
                finish_reason: FinishReason::MaxTokens,
                stats: empty_stats.clone(),
            })
            .collect());
    }

    let _guard = no_grad();
    let device = model.device().clone();
    model.reset();
    let start = Instant::now();
    let flat: Vec<u32> = prompts.iter().flat_map(|p| p.iter().copied()).collect();
    let ids = Tensor::from_vec(flat, (b, len), &device)?;
    let logits = model.forward_last(&ids, 0)?;
    let rows = last_rows(&logits, b, info.vocab_size)?;
    let prefill_time = start.elapsed();
    let mut pos = len;
    for (i, (s, row)) in seqs.iter_mut().zip(&rows).enumerate() {
        s.step(row, &eos, params.max_new_tokens, room, i, on_piece)?;
    }
    while seqs.iter().any(|s| s.finish.is_none()) {
        let next: Vec<u32> = seqs
            .iter()
            .map(|s| s.context.last().copied().unwrap_or(0))
            .collect();
        let ids = Tensor::from_vec(next, (b, 1), &device)?;
        let logits = model.forward_last(&ids, pos)?;
        pos += 1;
        let rows = last_rows(&logits, b, info.vocab_size)?;
        for (i, (s, row)) in seqs.iter_mut().zip(&rows).enumerate() {
            if s.finish.is_none() {
                s.step(row, &eos, params.max_new_tokens, room, i, on_piece)?;
            }
        }
    }

    let end = Instant::now();
    Ok(seqs
        .into_iter()
        .map(|s| {
            let n = s.generated().len();
            let first = s.first_token_at.unwrap_or(end);
            let done = s.done_at.unwrap_or(end);
            let decode_time = done.saturating_duration_since(first);
            let stats = GenerationStats {
                prompt_tokens: len,
                generated_tokens: n,
                time_to_first_token: first.saturating_duration_since(start),
                prefill_time,
                decode_time,
                prefill_tokens_per_s: per_s(b * len, prefill_time),
                decode_tokens_per_s: per_s(n.saturating_sub(1), decode_time),
            };
            GenerationOutput {
                text: s.stops.text().to_string(),
                ids: s.generated().to_vec(),
                finish_reason: s.finish.unwrap_or(FinishReason::MaxTokens),
                stats,
            }
        })
        .collect())
}

fn per_s(n: usize, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// The logits of the last position of each sequence, as host rows.
fn last_rows(logits: &Tensor, b: usize, vocab: usize) -> Result<Vec<Vec<f32>>> {
    let d = logits.dims();
    if d.len() != 3 || d[0] != b || d[1] == 0 {
        return Err(Error::UnexpectedShape {
            op: "generate",
            expected: format!("logits [{b}, L, vocab]"),
            got: logits.shape().clone(),
        });
    }
    let last = logits.narrow(1, d[1] - 1, 1)?;
    let last = if last.dtype() == DType::F32 {
        last
    } else {
        last.to_dtype(DType::F32)?
    };
    let v = d[2];
    if v == 0 || (vocab != 0 && v != vocab) {
        return Err(Error::invalid(
            "generate",
            format!("logits have {v} entries per position, the model info says vocab {vocab}"),
        ));
    }
    let flat = last.to_vec::<f32>()?;
    Ok(flat.chunks(v).map(<[f32]>::to_vec).collect())
}
