//! Training examples (text ids, voice, codec codes) and their padded, teacher-forced batches.

use tensor_core::{DType, Device, Error, Result, Tensor};

use super::model::TtsConfig;
use super::text::PAD_ID;

/// One utterance: text ids (`<bos>` … `<eos>`), its voice and the codec's first `K`
/// codebooks of it.
#[derive(Clone, Debug, PartialEq)]
pub struct TtsExample {
    pub text: Vec<u32>,
    pub voice: usize,
    /// Codes `[K, frames]`, row-major.
    pub codes: Vec<u32>,
    pub frames: usize,
}

/// A padded batch as the model reads it.
#[derive(Clone, Debug)]
pub struct TtsBatch {
    /// Text ids `[B, L]` (i64), padded with `<pad>`.
    pub text: Tensor,
    /// `[B, L]` (u8): 1 at real text positions.
    pub text_mask: Tensor,
    /// Voice ids `[B]` (i64).
    pub voice: Tensor,
    /// Decoder inputs `[B, K, T+1]` (i64): the `<bos>` frame, then the codes (padding after
    /// them is never attended to, the decoder being causal).
    pub inputs: Tensor,
    /// Targets `[B, K, T+1]` (i64): the codes, then `<eos>`, then -100 (ignored).
    pub targets: Tensor,
}

/// Pad and stack `examples` for `cfg`'s model. Errors name the offending example.
pub fn collate(examples: &[&TtsExample], cfg: &TtsConfig, device: &Device) -> Result<TtsBatch> {
    if examples.is_empty() {
        return Err(Error::invalid("tts collate", "no examples"));
    }
    let k = cfg.num_codebooks;
    for (n, e) in examples.iter().enumerate() {
        let bad = |m: String| Err(Error::invalid("tts collate", format!("example {n}: {m}")));
        if e.text.len() < 3 || e.text.len() > cfg.max_text_len + 2 {
            return bad(format!(
                "{} text ids; expected 3..={} (<bos>, characters, <eos>)",
                e.text.len(),
                cfg.max_text_len + 2
            ));
        }
        if let Some(id) = e.text.iter().find(|&&i| i as usize >= cfg.text_vocab) {
            return bad(format!("text id {id} >= vocabulary {}", cfg.text_vocab));
        }
        if e.voice >= cfg.voices.len() {
            return bad(format!(
                "voice {} >= the model's {} voices",
                e.voice,
                cfg.voices.len()
            ));
        }
        if e.frames == 0 || e.frames > cfg.max_frames || e.codes.len() != k * e.frames {
            return bad(format!(
                "{} codes for {} frames of {k} codebooks (frames must be 1..={})",
                e.codes.len(),
                e.frames,
                cfg.max_frames
            ));
        }
        if let Some(c) = e.codes.iter().find(|&&c| c as usize >= cfg.codebook_size) {
            return bad(format!("code {c} >= codebook size {}", cfg.codebook_size));
        }
    }
    let b = examples.len();
    let l = examples.iter().map(|e| e.text.len()).max().unwrap_or(0);
    let t1 = examples.iter().map(|e| e.frames).max().unwrap_or(0) + 1;
    let mut text = vec![PAD_ID as i64; b * l];
    let mut mask = vec![0u8; b * l];
    let mut inputs = vec![cfg.eos_code() as i64; b * k * t1];
    let mut targets = vec![-100i64; b * k * t1];
    for (n, e) in examples.iter().enumerate() {
        for (j, &id) in e.text.iter().enumerate() {
            text[n * l + j] = id as i64;
            mask[n * l + j] = 1;
        }
        for cb in 0..k {
            let row = &e.codes[cb * e.frames..(cb + 1) * e.frames];
            let base = (n * k + cb) * t1;
            inputs[base] = cfg.bos_code() as i64;
            for (t, &c) in row.iter().enumerate() {
                inputs[base + t + 1] = c as i64;
                targets[base + t] = c as i64;
            }
            targets[base + e.frames] = cfg.eos_code() as i64;
        }
    }
    let voice: Vec<i64> = examples.iter().map(|e| e.voice as i64).collect();
    Ok(TtsBatch {
        text: Tensor::from_vec(text, (b, l), device)?,
        text_mask: Tensor::from_vec(mask, (b, l), device)?,
        voice: Tensor::from_vec(voice, b, device)?,
        inputs: Tensor::from_vec(inputs, (b, k, t1), device)?,
        targets: Tensor::from_vec(targets, (b, k, t1), device)?,
    })
}

impl TtsBatch {
    /// Examples in the batch.
    pub fn len(&self) -> usize {
        self.voice.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Target positions that count (codes and `<eos>`), per codebook.
    pub fn target_count(&self) -> Result<usize> {
        let k = self.targets.dims()[1];
        let n = self
            .targets
            .ge_scalar(0.0)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_f64()?;
        Ok(n as usize / k)
    }
}
