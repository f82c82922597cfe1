//! The text-to-codes transformer: a character encoder and an autoregressive decoder over
//! codec frames that cross-attends to it.
//!
//! Each decoder step reads one frame — the sum of its `K` codebook embeddings, the voice
//! embedding and a sinusoidal position — and predicts the next frame's `K` codes with one
//! linear head per codebook (the "parallel" pattern of MusicGen: all codebooks of a frame at
//! the same step). A delay pattern would let codebook `k` see codebook `k-1` of the same
//! frame, but with the few coarse codebooks used here the first carries most of the content
//! and the parallel pattern needs `K-1` fewer steps and no (de)interleaving.
//!
//! Per-codebook ids are `0..codebook_size` for codes, then [`TtsConfig::bos_code`] (input
//! of the first step only) and [`TtsConfig::eos_code`] (the target after the last frame;
//! at synthesis, codebook 0 emitting it ends the audio).
//!
//! Absolute sinusoidal positions are added to both the text and the frame inputs (as in
//! Transformer-TTS) rather than rotating queries and keys: the cross-attention has to learn
//! a roughly monotonic text-to-frame alignment, which needs position in the memory itself.

use std::collections::BTreeMap;
use std::path::Path;

use tensor_core::{no_grad, DType, Device, Error, Result, Tensor};
use tensor_nn::loss::{cross_entropy, CrossEntropyOptions};
use tensor_nn::{
    AttentionConfig, AttentionNames, BlockConfig, Checkpoint, Embedding, Linear, Module,
    NormPosition, SinusoidalPositionalEmbedding, TransformerDecoder, TransformerEncoder,
    VarBuilder,
};

use super::batch::TtsBatch;
use super::sampling::{sample, SamplingConfig, SplitMix64};
use super::text::CharTokenizer;

/// Hyper-parameters of a [`TextToCodes`] model (stored in its checkpoint's metadata).
#[derive(Clone, Debug, PartialEq)]
pub struct TtsConfig {
    /// Size of the text vocabulary ([`CharTokenizer::vocab_size`]).
    pub text_vocab: usize,
    /// Most characters of one text (the encoder reads two more: `<bos>`, `<eos>`).
    pub max_text_len: usize,
    /// Speaker names, in embedding order.
    pub voices: Vec<String>,
    /// Model width.
    pub dim: usize,
    pub num_heads: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    /// Width of the feed-forward layers.
    pub hidden_dim: usize,
    /// Residual dropout in training.
    pub dropout: f64,
    /// Entries per codec codebook.
    pub codebook_size: usize,
    /// Codebooks predicted per frame (the codec's first `K` quantizers).
    pub num_codebooks: usize,
    /// Most frames of one utterance (the decoder's position table covers one more).
    pub max_frames: usize,
    /// Codec frames per second.
    pub frame_rate: f64,
    /// The most frames per character seen in training: synthesis stops after
    /// [`TtsConfig::max_frames_for`] frames if no end-of-audio comes.
    pub frames_per_char: f64,
}

impl Default for TtsConfig {
    fn default() -> Self {
        TtsConfig {
            text_vocab: CharTokenizer.vocab_size(),
            max_text_len: 200,
            voices: vec!["default".into()],
            dim: 192,
            num_heads: 4,
            encoder_layers: 3,
            decoder_layers: 4,
            hidden_dim: 768,
            dropout: 0.1,
            codebook_size: 1024,
            num_codebooks: 2,
            max_frames: 1000,
            frame_rate: 50.0,
            frames_per_char: 8.0,
        }
    }
}

const META_PREFIX: &str = "tts.";

impl TtsConfig {
    /// Ids per codebook: the codes, `<bos>` and `<eos>`.
    pub fn code_vocab(&self) -> usize {
        self.codebook_size + 2
    }

    /// The input id of the first decoder step.
    pub fn bos_code(&self) -> u32 {
        self.codebook_size as u32
    }

    /// The end-of-audio id.
    pub fn eos_code(&self) -> u32 {
        self.codebook_size as u32 + 1
    }

    /// The index of a voice name; the error lists the known voices.
    pub fn voice_id(&self, name: &str) -> Result<usize> {
        self.voices.iter().position(|v| v == name).ok_or_else(|| {
            Error::invalid(
                "TtsConfig::voice_id",
                format!(
                    "unknown voice {name:?}; this model knows {}",
                    self.voices.join(", ")
                ),
            )
        })
    }

    /// The synthesis length limit for a text of `chars` characters: the most frames per
    /// character seen in training, plus half a second, capped at `max_frames`.
    pub fn max_frames_for(&self, chars: usize) -> usize {
        let f = (self.frames_per_char * chars as f64).ceil() + (self.frame_rate / 2.0).ceil();
        (f as usize).clamp(1, self.max_frames)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid("TtsConfig", m));
        if self.text_vocab < 5 || self.max_text_len == 0 || self.max_frames == 0 {
            return bad(format!(
                "text_vocab {} must be >= 5, max_text_len {} and max_frames {} positive",
                self.text_vocab, self.max_text_len, self.max_frames
            ));
        }
        if self.voices.is_empty()
            || self
                .voices
                .iter()
                .any(|v| v.is_empty() || v.contains(',') || v.trim() != v)
        {
            return bad(format!(
                "voices {:?} must be a non-empty list of names without commas or surrounding \
                 spaces",
                self.voices
            ));
        }
        if self.num_heads == 0 || self.dim == 0 || !self.dim.is_multiple_of(2 * self.num_heads) {
            return bad(format!(
                "dim {} must be a positive multiple of 2 · num_heads {} (even head size)",
                self.dim, self.num_heads
            ));
        }
        if self.encoder_layers == 0 || self.decoder_layers == 0 || self.hidden_dim == 0 {
            return bad("layer counts and hidden_dim must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if self.codebook_size < 2 || self.num_codebooks == 0 {
            return bad(format!(
                "codebook_size {} must be >= 2 and num_codebooks {} >= 1",
                self.codebook_size, self.num_codebooks
            ));
        }
        let pos_ok = |x: f64| x.is_finite() && x > 0.0;
        if !pos_ok(self.frame_rate) || !pos_ok(self.frames_per_char) {
            return bad(format!(
                "frame_rate {} and frames_per_char {} must be positive",
                self.frame_rate, self.frames_per_char
            ));
        }
        Ok(())
    }

    /// The config as `tts.*` metadata entries (stored in checkpoints).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(format!("{META_PREFIX}{k}"), v);
        };
        put("text_vocab", self.text_vocab.to_string());
        put("max_text_len", self.max_text_len.to_string());
        put("voices", self.voices.join(","));
        put("dim", self.dim.to_string());
        put("num_heads", self.num_heads.to_string());
        put("encoder_layers", self.encoder_layers.to_string());
        put("decoder_layers", self.decoder_layers.to_string());
        put("hidden_dim", self.hidden_dim.to_string());
        put("dropout", self.dropout.to_string());
        put("codebook_size", self.codebook_size.to_string());
        put("num_codebooks", self.num_codebooks.to_string());
        put("max_frames", self.max_frames.to_string());
        put("frame_rate", self.frame_rate.to_string());
        put("frames_per_char", self.frames_per_char.to_string());
        m
    }

    /// Read the config back from checkpoint metadata; a missing or malformed entry is an
    /// error naming it.
    pub fn from_metadata(meta: &BTreeMap<String, String>) -> Result<TtsConfig> {
        fn get<'a>(meta: &'a BTreeMap<String, String>, k: &str) -> Result<&'a str> {
            meta.get(&format!("{META_PREFIX}{k}"))
                .map(String::as_str)
                .ok_or_else(|| {
                    Error::invalid(
                        "TtsConfig::from_metadata",
                        format!(
                            "the checkpoint has no '{META_PREFIX}{k}' entry (not a \
                             text-to-codes checkpoint?)"
                        ),
                    )
                })
        }
        fn num<T: std::str::FromStr>(meta: &BTreeMap<String, String>, k: &str) -> Result<T> {
            let v = get(meta, k)?;
            v.parse().map_err(|_| {
                Error::invalid(
                    "TtsConfig::from_metadata",
                    format!("bad value {v:?} for '{META_PREFIX}{k}'"),
                )
            })
        }
        let cfg = TtsConfig {
            text_vocab: num(meta, "text_vocab")?,
            max_text_len: num(meta, "max_text_len")?,
            voices: get(meta, "voices")?.split(',').map(String::from).collect(),
            dim: num(meta, "dim")?,
            num_heads: num(meta, "num_heads")?,
            encoder_layers: num(meta, "encoder_layers")?,
            decoder_layers: num(meta, "decoder_layers")?,
            hidden_dim: num(meta, "hidden_dim")?,
            dropout: num(meta, "dropout")?,
            codebook_size: num(meta, "codebook_size")?,
            num_codebooks: num(meta, "num_codebooks")?,
            max_frames: num(meta, "max_frames")?,
            frame_rate: num(meta, "frame_rate")?,
            frames_per_char: num(meta, "frames_per_char")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// What [`TextToCodes::loss`] returns.
#[derive(Clone, Debug)]
pub struct TtsLoss {
    /// The mean of the per-codebook cross-entropies (what training minimises).
    pub loss: Tensor,
    /// Cross-entropy of each codebook's head over the non-padded targets.
    pub codebook_losses: Vec<Tensor>,
    /// Logits `[B, K, T+1, code_vocab]`.
    pub logits: Tensor,
}

/// Codes synthesised by [`TextToCodes::generate`].
#[derive(Clone, Debug)]
pub struct Generated {
    /// `[1, K, frames]` (i64), ready for the codec's `decode`.
    pub codes: Tensor,
    /// Whether codebook 0 emitted end-of-audio (else the length limit stopped it).
    pub stopped_at_eos: bool,
    /// The length limit that applied.
    pub max_frames: usize,
}

/// The text-to-codes model (see the module docs).
#[derive(Clone, Debug)]
pub struct TextToCodes {
    cfg: TtsConfig,
    text_embedding: Embedding,
    encoder: TransformerEncoder,
    voice_embedding: Embedding,
    code_embeddings: Vec<Embedding>,
    decoder: TransformerDecoder,
    heads: Vec<Linear>,
    positions: SinusoidalPositionalEmbedding,
}

fn block_config(cfg: &TtsConfig, decoder: bool) -> BlockConfig {
    let attn = AttentionConfig {
        names: AttentionNames::bart(),
        ..AttentionConfig::new(cfg.dim, cfg.num_heads)
    };
    let mut b = BlockConfig::bart(cfg.dim, cfg.num_heads, cfg.hidden_dim, cfg.dropout);
    // Pre-norm trains without a long warmup and tolerates the summed embeddings' scale.
    b.norm_position = NormPosition::Pre;
    if decoder {
        b.attn = AttentionConfig {
            causal: true,
            ..attn.clone()
        };
        b.cross_attn = Some(attn);
    }
    b
}

impl TextToCodes {
    /// Build fresh (through a `VarMap` builder) or from stored tensors. Parameter names:
    /// `text_embedding`, `encoder.layers.{i}.*`, `encoder.layer_norm`, `voice_embedding`,
    /// `code_embeddings.{k}`, `decoder.layers.{i}.*` (BART names), `decoder.layer_norm`,
    /// `heads.{k}`.
    pub fn new(vb: &VarBuilder, cfg: TtsConfig) -> Result<TextToCodes> {
        cfg.validate()?;
        let text_embedding = Embedding::build(&vb.pp("text_embedding"), cfg.text_vocab, cfg.dim)?;
        let encoder = TransformerEncoder::build(
            &vb.pp("encoder"),
            &block_config(&cfg, false),
            cfg.encoder_layers,
            Some("layer_norm"),
        )?;
        let voice_embedding =
            Embedding::build(&vb.pp("voice_embedding"), cfg.voices.len(), cfg.dim)?;
        let code_embeddings = (0..cfg.num_codebooks)
            .map(|k| Embedding::build(&vb.pp("code_embeddings").pp(k), cfg.code_vocab(), cfg.dim))
            .collect::<Result<Vec<_>>>()?;
        let decoder = TransformerDecoder::build(
            &vb.pp("decoder"),
            &block_config(&cfg, true),
            cfg.decoder_layers,
            Some("layer_norm"),
        )?;
        let heads = (0..cfg.num_codebooks)
            .map(|k| Linear::build(&vb.pp("heads").pp(k), cfg.dim, cfg.code_vocab(), true))
            .collect::<Result<Vec<_>>>()?;
        let pos_dtype = if vb.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let positions = SinusoidalPositionalEmbedding::new(
            (cfg.max_text_len + 2).max(cfg.max_frames + 1),
            cfg.dim,
            pos_dtype,
            vb.device(),
        )?;
        Ok(TextToCodes {
            cfg,
            text_embedding,
            encoder,
            voice_embedding,
            code_embeddings,
            decoder,
            heads,
            positions,
        })
    }

    /// Load a model saved by the training program: weights plus the config in the metadata.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<TextToCodes> {
        let path = path.as_ref();
        let ck = Checkpoint::load(path, device)?;
        let cfg = TtsConfig::from_metadata(&ck.metadata)
            .map_err(|e| Error::invalid("TextToCodes::load", format!("{}: {e}", path.display())))?;
        let dtype = ck.model.values().next().map(|t| t.dtype()).ok_or_else(|| {
            Error::invalid(
                "TextToCodes::load",
                format!("{} holds no weights", path.display()),
            )
        })?;
        TextToCodes::new(&VarBuilder::from_tensors(ck.model, dtype, device), cfg)
            .map_err(|e| Error::invalid("TextToCodes::load", format!("{}: {e}", path.display())))
    }

    pub fn config(&self) -> &TtsConfig {
        &self.cfg
    }

    fn positioned(&self, x: Tensor, start: usize) -> Result<Tensor> {
        let pe = self.positions.positions(start, x.dims()[1])?;
        let pe = if pe.dtype() == x.dtype() {
            pe
        } else {
            pe.to_dtype(x.dtype())?
        };
        x.add(&pe)
    }

    /// The encoder's output `[B, L, dim]` for text ids `[B, L]` (integer; `<bos>` … `<eos>`,
    /// padded with `<pad>`), `text_mask` `[B, L]` non-zero at real characters.
    pub fn encode_text(
        &self,
        text: &Tensor,
        text_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let d = text.dims();
        if d.len() != 2 || d[1] == 0 || d[1] > self.cfg.max_text_len + 2 || text.dtype().is_float()
        {
            return Err(Error::invalid(
                "TextToCodes::encode_text",
                format!(
                    "text ids must be integer [B, L] with 0 < L <= {}, got {} {d:?}",
                    self.cfg.max_text_len + 2,
                    text.dtype()
                ),
            ));
        }
        let x = self.positioned(self.text_embedding.forward(text)?, 0)?;
        self.encoder.forward_t(&x, text_mask, train)
    }

    /// The decoder inputs `[B, T, dim]` of frames `codes: [B, K, T]` at positions
    /// `start..start+T`.
    fn frame_inputs(&self, voice: &Tensor, codes: &Tensor, start: usize) -> Result<Tensor> {
        let d = codes.dims();
        let k = self.cfg.num_codebooks;
        if d.len() != 3 || d[1] != k || d[2] == 0 || codes.dtype().is_float() {
            return Err(Error::invalid(
                "TextToCodes",
                format!(
                    "frame codes must be integer [B, {k}, T] with T > 0, got {} {d:?}",
                    codes.dtype()
                ),
            ));
        }
        if start + d[2] > self.cfg.max_frames + 1 {
            return Err(Error::invalid(
                "TextToCodes",
                format!(
                    "{} frames exceed the model's limit of {} (+1 for the start frame)",
                    start + d[2],
                    self.cfg.max_frames
                ),
            ));
        }
        if voice.dims() != [d[0]] || voice.dtype().is_float() {
            return Err(Error::invalid(
                "TextToCodes",
                format!(
                    "voice ids must be integer [B] = [{}], got {} {:?}",
                    d[0],
                    voice.dtype(),
                    voice.dims()
                ),
            ));
        }
        let mut x = self.voice_embedding.forward(voice)?.unsqueeze(1)?;
        for (i, emb) in self.code_embeddings.iter().enumerate() {
            x = emb.forward(&codes.narrow(1, i, 1)?.squeeze(1)?)?.add(&x)?;
        }
        self.positioned(x, start)
    }

    fn heads_logits(&self, h: &Tensor) -> Result<Tensor> {
        let per: Vec<Tensor> = self
            .heads
            .iter()
            .map(|head| head.forward(h))
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = per.iter().collect();
        Tensor::stack(&refs, 1)
    }

    /// Teacher-forced logits `[B, K, T, code_vocab]`: step `t` reads frame `codes[:, :, t]`
    /// and predicts frame `t+1` (`codes` starts with the `<bos>` frame).
    pub fn decode_logits(
        &self,
        memory: &Tensor,
        memory_mask: Option<&Tensor>,
        voice: &Tensor,
        codes: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let x = self.frame_inputs(voice, codes, 0)?;
        let h = self
            .decoder
            .forward_t(&x, memory, None, memory_mask, train)?;
        self.heads_logits(&h)
    }

    /// Teacher-forced logits `[B, K, T+1, code_vocab]` of a batch.
    pub fn forward_t(&self, batch: &TtsBatch, train: bool) -> Result<Tensor> {
        let memory = self.encode_text(&batch.text, Some(&batch.text_mask), train)?;
        self.decode_logits(
            &memory,
            Some(&batch.text_mask),
            &batch.voice,
            &batch.inputs,
            train,
        )
    }

    /// Cross-entropy of every codebook head against the batch's targets (padding ignored).
    pub fn loss(&self, batch: &TtsBatch, train: bool) -> Result<TtsLoss> {
        let logits = self.forward_t(batch, train)?;
        let (b, k, t, v) = dims4(&logits)?;
        let opts = CrossEntropyOptions::default();
        let mut codebook_losses = Vec::with_capacity(k);
        for i in 0..k {
            let l = logits.narrow(1, i, 1)?.reshape((b * t, v))?;
            let y = batch.targets.narrow(1, i, 1)?.reshape(b * t)?;
            codebook_losses.push(cross_entropy(&l, &y, &opts)?);
        }
        let mut loss = codebook_losses[0].clone();
        for l in &codebook_losses[1..] {
            loss = loss.add(l)?;
        }
        let loss = loss.div_scalar(k as f64)?;
        Ok(TtsLoss {
            loss,
            codebook_losses,
            logits,
        })
    }

    /// Synthesise codes for text ids (`<bos>` … `<eos>`, from [`CharTokenizer::encode`]) in
    /// voice `voice`: one frame per step with a KV cache, until codebook 0 emits `<eos>` or
    /// [`TtsConfig::max_frames_for`] (or `opts.max_frames`, if smaller) frames are made.
    pub fn generate(&self, text: &[u32], voice: usize, opts: &SamplingConfig) -> Result<Generated> {
        opts.validate()?;
        let cfg = &self.cfg;
        if voice >= cfg.voices.len() {
            return Err(Error::invalid(
                "TextToCodes::generate",
                format!(
                    "voice {voice} is out of range; the model has {}",
                    cfg.voices.len()
                ),
            ));
        }
        if text.len() < 3 {
            return Err(Error::invalid(
                "TextToCodes::generate",
                "the text ids must hold at least one character between <bos> and <eos>",
            ));
        }
        if let Some(&bad) = text.iter().find(|&&i| i as usize >= cfg.text_vocab) {
            return Err(Error::invalid(
                "TextToCodes::generate",
                format!(
                    "text id {bad} is outside the vocabulary of {}",
                    cfg.text_vocab
                ),
            ));
        }
        let _g = no_grad();
        let dev = self.text_embedding.weight.device().clone();
        let dtype = self.text_embedding.weight.dtype();
        let ids: Vec<i64> = text.iter().map(|&i| i as i64).collect();
        let text_t = Tensor::from_vec(ids, (1, text.len()), &dev)?;
        let memory = self.encode_text(&text_t, None, false)?;
        let mut limit = cfg.max_frames_for(text.len() - 2);
        if let Some(m) = opts.max_frames {
            limit = limit.min(m);
        }
        let voice_t = Tensor::from_vec(vec![voice as i64], 1, &dev)?;
        let mut caches = self.decoder.new_caches(1, limit + 1, dtype, &dev)?;
        let k = cfg.num_codebooks;
        let v = cfg.code_vocab();
        let mut rng = SplitMix64::new(opts.seed);
        let mut frame = vec![cfg.bos_code() as i64; k];
        let mut out: Vec<Vec<i64>> = vec![Vec::new(); k];
        let mut stopped_at_eos = false;
        for step in 0..limit {
            let x = self.frame_inputs(
                &voice_t,
                &Tensor::from_vec(frame.clone(), (1, k, 1), &dev)?,
                step,
            )?;
            let h = self
                .decoder
                .forward_cached(&x, &memory, None, None, &mut caches)?;
            let logits = self.heads_logits(&h)?.to_f64_vec()?; // [1, K, 1, V]
            for (i, f) in frame.iter_mut().enumerate() {
                let row = &logits[i * v..(i + 1) * v];
                // Codes only; codebook 0 may also end the audio (after at least one frame).
                let allowed = |id: usize| {
                    id < cfg.codebook_size || (i == 0 && step > 0 && id == cfg.eos_code() as usize)
                };
                *f = sample(row, allowed, opts, &mut rng) as i64;
            }
            if frame[0] == cfg.eos_code() as i64 {
                stopped_at_eos = true;
                break;
            }
            for (o, &c) in out.iter_mut().zip(&frame) {
                o.push(c);
            }
        }
        let frames = out[0].len();
        let flat: Vec<i64> = out.into_iter().flatten().collect();
        Ok(Generated {
            codes: Tensor::from_vec(flat, (1, k, frames), &dev)?,
            stopped_at_eos,
            max_frames: limit,
        })
    }
}

fn dims4(t: &Tensor) -> Result<(usize, usize, usize, usize)> {
    match *t.dims() {
        [b, k, l, v] => Ok((b, k, l, v)),
        _ => Err(Error::invalid(
            "TextToCodes",
            format!("expected [B, K, T, V] logits, got {:?}", t.dims()),
        )),
    }
}

/// Per codebook, `(correct, counted)`: how many argmax predictions of `logits`
/// `[B, K, T, V]` equal `targets` `[B, K, T]`, over the targets that are not -100.
pub fn code_accuracy(logits: &Tensor, targets: &Tensor) -> Result<Vec<(usize, usize)>> {
    let (b, k, t, _) = dims4(logits)?;
    if targets.dims() != [b, k, t] {
        return Err(Error::invalid(
            "code_accuracy",
            format!(
                "targets {:?} must be [B, K, T] = [{b}, {k}, {t}]",
                targets.dims()
            ),
        ));
    }
    let pred = logits.argmax(3)?.to_f64_vec()?;
    let want = targets.to_f64_vec()?;
    let mut out = vec![(0, 0); k];
    for (i, (p, y)) in pred.iter().zip(&want).enumerate() {
        if *y < 0.0 {
            continue;
        }
        let cb = (i / t) % k;
        out[cb].1 += 1;
        if p == y {
            out[cb].0 += 1;
        }
    }
    Ok(out)
}
