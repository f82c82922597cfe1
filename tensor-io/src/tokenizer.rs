//! Text tokenizers: Hugging Face `tokenizer.json` files, and tokenizers rebuilt from a GGUF file's
//! metadata, both on the `tokenizers` crate so that ids match Hugging Face's.
//!
//! ```no_run
//! use tensor_io::tokenizer::Tokenizer;
//! let tok = Tokenizer::from_file("tokenizer.json")?;
//! let ids = tok.encode("Hello world", true)?;
//! assert_eq!(tok.decode(&ids, true)?, "Hello world");
//! # Ok::<(), tensor_core::Error>(())
//! ```
//!
//! A GGUF carries no `tokenizer.json`; its vocabulary, merges and special-token ids are stored as
//! `tokenizer.ggml.*` keys. [`GgufTokenizerSpec`] holds those keys and [`Tokenizer::from_gguf_spec`]
//! rebuilds the tokenizer the way `transformers` does when it loads a GGUF (`AutoTokenizer`
//! with `gguf_file=`), so the two produce the same ids.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tensor_core::{Error, Result};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, Sequence as NormalizerSequence};
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// A tokenizer: text to token ids and back.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn tk_err(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::invalid(op, e.to_string())
}

/// A special token as `tokenizer_config.json` spells it: a string, or an `AddedToken` object.
fn config_token(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(m) => m.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

impl Tokenizer {
    /// Load a Hugging Face `tokenizer.json`. If a `tokenizer_config.json` lies beside it, its
    /// `bos_token` / `eos_token` give [`Tokenizer::bos_token_id`] / [`Tokenizer::eos_token_id`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            context: format!("reading tokenizer {}", path.display()),
            source,
        })?;
        let mut tok = Self::from_bytes(&bytes)
            .map_err(|e| Error::msg(format!("loading tokenizer {}: {e}", path.display())))?;
        let config = path.with_file_name("tokenizer_config.json");
        if config.is_file() {
            tok.apply_tokenizer_config(&config)?;
        }
        Ok(tok)
    }

    /// Parse the contents of a `tokenizer.json`. No bos/eos ids are known until
    /// [`Tokenizer::apply_tokenizer_config`] or [`Tokenizer::set_bos_token_id`] says so.
    pub fn from_bytes(json: &[u8]) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(json).map_err(|e| tk_err("tokenizer.json", e))?;
        Ok(Self::from_inner(inner))
    }

    /// Wrap an already built `tokenizers` tokenizer.
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        Self {
            inner,
            bos: None,
            eos: None,
        }
    }

    /// Read `bos_token` / `eos_token` from a `tokenizer_config.json` and look up their ids.
    pub fn apply_tokenizer_config(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("parsing {}: {e}", path.display())))?;
        if let Some(t) = config_token(cfg.get("bos_token")) {
            self.bos = self.token_to_id(&t);
        }
        if let Some(t) = config_token(cfg.get("eos_token")) {
            self.eos = self.token_to_id(&t);
        }
        Ok(())
    }

    /// Rebuild the tokenizer a GGUF file describes, the way `transformers` does.
    pub fn from_gguf_spec(spec: &GgufTokenizerSpec) -> Result<Self> {
        gguf::build(spec)
    }

    /// Token ids for `text`. With `add_special_tokens` the tokenizer's template adds its
    /// bos/eos tokens (as Hugging Face's `encode(text, add_special_tokens=True)`). Special tokens
    /// written in the text (`<|im_start|>`) are matched whole either way.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| tk_err("tokenizer.encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text for `ids`; with `skip_special_tokens`, special tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tk_err("tokenizer.decode", e))
    }

    /// The id of a token (as the vocabulary spells it, e.g. `"Ġthe"` in a byte-level vocabulary).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token an id stands for.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of distinct tokens, added tokens included (Hugging Face's `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The beginning-of-sequence id, when the source says which it is.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id, when the source says which it is.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn set_bos_token_id(&mut self, id: Option<u32>) {
        self.bos = id;
    }

    pub fn set_eos_token_id(&mut self, id: Option<u32>) {
        self.eos = id;
    }

    /// Whether an id is a special (added, special) token such as `<|im_end|>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }

    /// The `tokenizer.json` text for this tokenizer.
    pub fn to_json(&self, pretty: bool) -> Result<String> {
        self.inner
            .to_string(pretty)
            .map_err(|e| tk_err("tokenizer.to_json", e))
    }

    /// Write this tokenizer as a `tokenizer.json`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = self.to_json(false)?;
        std::fs::write(path, json).map_err(|source| Error::Io {
            context: format!("writing tokenizer {}", path.display()),
            source,
        })
    }

    /// The `tokenizers` tokenizer underneath, for what this wrapper does not expose.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum GgufTokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

/// The tokenizer part of a GGUF file's metadata, as plain data.
///
/// A GGUF reader fills it from these keys (each optional unless said otherwise):
///
/// | field | GGUF key | type |
/// |---|---|---|
/// | `model` (required) | `tokenizer.ggml.model` | string: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece) |
/// | `pre` | `tokenizer.ggml.pre` | string: the pre-tokenizer, e.g. `"llama-bpe"`, `"qwen2"`, `"smollm"` |
/// | `tokens` (required) | `tokenizer.ggml.tokens` | array of string |
/// | `scores` | `tokenizer.ggml.scores` | array of f32 |
/// | `token_types` | `tokenizer.ggml.token_type` | array of i32 ([`GgufTokenType`]) |
/// | `merges` | `tokenizer.ggml.merges` | array of string, `"a b"` |
/// | `bos`, `eos`, `unk`, `pad` | `tokenizer.ggml.{bos,eos,unknown,padding}_token_id` | u32 |
/// | `add_bos`, `add_eos` | `tokenizer.ggml.add_{bos,eos}_token` | bool |
/// | `add_space_prefix` | `tokenizer.ggml.add_space_prefix` | bool |
/// | `architecture` | `general.architecture` | string (`"gemma"`, `"phi3"` change the SentencePiece setup) |
/// | `chat_template` | `tokenizer.chat_template` | string |
///
/// `add_space_prefix` is kept for reference only: like `transformers`, the rebuilt tokenizer
/// ignores it (SentencePiece vocabularies always get the `▁` prefix on the first word, byte-level
/// ones never do).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GgufTokenizerSpec {
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    pub merges: Option<Vec<String>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub architecture: Option<String>,
    pub chat_template: Option<String>,
}

impl GgufTokenizerSpec {
    /// The string of token `id`, if in range.
    pub fn token(&self, id: Option<u32>) -> Option<&str> {
        self.tokens.get(id? as usize).map(String::as_str)
    }
}

/// The pre-tokenizer split regexes, as `transformers` (and llama.cpp) use them per `tokenizer.ggml.pre`.
pub mod pre_tokenizer_regex {
    /// Llama 3 (`llama-bpe`, `llama3`, ...).
    pub const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    /// Qwen2 / Qwen3 and DeepSeek-R1 distills.
    pub const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    /// Qwen3.5.
    pub const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    /// Mistral's tekken (Nemo, Pixtral-era vocabularies).
    pub const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    /// GPT-4o / Llama 4 (o200k).
    pub const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
}

mod gguf {
    use super::*;

    /// How a byte-level vocabulary splits text before BPE.
    enum PreSplit {
        /// GPT-2's regex (`ByteLevel` with `use_regex`).
        Gpt2,
        /// Every digit alone, then GPT-2's regex (llama.cpp's smollm/starcoder/refact).
        DigitsThenGpt2,
        /// A split regex, then `ByteLevel` without its own regex.
        Regex(&'static str),
    }

    const GPT2_NAMES: &[&str] = &["default", "gpt2", "gpt-2", "phi-2", "olmo", "roberta-bpe"];
    const DIGIT_NAMES: &[&str] = &[
        "smollm",
        "starcoder",
        "refact",
        "command-r",
        "codeshell",
        "exaone",
        "minerva",
    ];
    const LLAMA3_NAMES: &[&str] = &[
        "llama3",
        "llama-v3",
        "llama-bpe",
        "falcon3",
        "falcon-h1",
        "pixtral",
        "midm-2.0",
        "lfm2",
        "jina-v5-nano",
        "dbrx",
        "smaug-bpe",
    ];
    const QWEN2_NAMES: &[&str] = &["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"];
    const GPT4O_NAMES: &[&str] = &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"];

    fn pre_split(pre: Option<&str>) -> Result<PreSplit> {
        use super::pre_tokenizer_regex as re;
        let Some(name) = pre else {
            return Ok(PreSplit::Gpt2);
        };
        Ok(if GPT2_NAMES.contains(&name) {
            PreSplit::Gpt2
        } else if DIGIT_NAMES.contains(&name) {
            PreSplit::DigitsThenGpt2
        } else if LLAMA3_NAMES.contains(&name) {
            PreSplit::Regex(re::LLAMA3)
        } else if QWEN2_NAMES.contains(&name) {
            PreSplit::Regex(re::QWEN2)
        } else if name == "qwen35" {
            PreSplit::Regex(re::QWEN35)
        } else if name == "tekken" {
            PreSplit::Regex(re::TEKKEN)
        } else if GPT4O_NAMES.contains(&name) {
            PreSplit::Regex(re::GPT4O)
        } else {
            let known: Vec<&str> = GPT2_NAMES
                .iter()
                .chain(DIGIT_NAMES)
                .chain(LLAMA3_NAMES)
                .chain(QWEN2_NAMES)
                .chain(GPT4O_NAMES)
                .chain(&["qwen35", "tekken"])
                .copied()
                .collect();
            return Err(Error::invalid(
                "gguf tokenizer",
                format!(
                    "unsupported tokenizer.ggml.pre {name:?} (its split regex is unknown here); supported: {}",
                    known.join(", ")
                ),
            ));
        })
    }

    /// GPT-2's byte to printable-character table (`bytes_to_unicode`).
    pub(super) fn bytes_to_unicode() -> [char; 256] {
        let mut table = ['\0'; 256];
        let mut printable = [false; 256];
        for b in (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF) {
            printable[b as usize] = true;
            table[b as usize] = char::from(b);
        }
        let mut n = 0u32;
        for b in 0..256usize {
            if !printable[b] {
                table[b] = char::from_u32(256 + n).expect("valid code point");
                n += 1;
            }
        }
        table
    }

    /// Token ids by string; a repeated string keeps its last id (a Python dict built in order).
    fn vocab_of(tokens: &[String]) -> Vocab {
        let mut vocab = Vocab::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), i as u32);
        }
        vocab
    }

    /// Merges implied by a vocabulary and a score per token (`transformers`' `generate_merges`):
    /// every split of a token into two vocabulary tokens, best-scoring merged token first.
    pub(super) fn generate_merges(
        tokens: &[String],
        vocab: &Vocab,
        score_of: &dyn Fn(usize) -> f64,
    ) -> Vec<(String, String)> {
        // The dict `{token: score}` iterates in first-seen order and holds the last score.
        let mut seen = HashSet::with_capacity(tokens.len());
        let mut last_index: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            last_index.insert(t.as_str(), i);
        }
        let mut merges: Vec<(String, String, f64, usize, usize)> = Vec::new();
        for t in tokens {
            if !seen.insert(t.as_str()) {
                continue;
            }
            let score = score_of(last_index[t.as_str()]);
            let mut local = Vec::new();
            for (pos, _) in t.char_indices().skip(1) {
                let (l, r) = t.split_at(pos);
                if let (Some(&il), Some(&ir)) = (vocab.get(l), vocab.get(r)) {
                    local.push((l, r, il, ir));
                }
            }
            local.sort_by_key(|&(_, _, il, ir)| (il, ir));
            for (l, r, _, _) in local {
                merges.push((
                    l.to_owned(),
                    r.to_owned(),
                    score,
                    l.chars().count(),
                    r.chars().count(),
                ));
            }
        }
        // Python's `sorted(..., key=(score, len_l, len_r), reverse=True)`: stable, descending.
        merges.sort_by(|a, b| {
            b.2.partial_cmp(&a.2)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.3.cmp(&a.3))
                .then(b.4.cmp(&a.4))
        });
        merges.into_iter().map(|(l, r, ..)| (l, r)).collect()
    }

    fn parse_merges(merges: &[String]) -> Result<Vec<(String, String)>> {
        merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| {
                        Error::invalid(
                            "gguf tokenizer",
                            format!("merge {m:?} in tokenizer.ggml.merges has no space"),
                        )
                    })
            })
            .collect()
    }

    fn build_bpe(
        vocab: Vocab,
        merges: Vec<(String, String)>,
        sentencepiece: bool,
        unk: Option<&str>,
    ) -> Result<BPE> {
        let mut b = BPE::builder().vocab_and_merges(vocab, merges);
        if sentencepiece {
            b = b.fuse_unk(true).byte_fallback(true);
        } else {
            b = b
                .continuing_subword_prefix(String::new())
                .end_of_word_suffix(String::new());
        }
        if let Some(u) = unk {
            b = b.unk_token(u.to_owned());
        }
        b.build().map_err(|e| tk_err("gguf tokenizer", e))
    }

    fn post_processor(
        add_bos: bool,
        add_eos: bool,
        bos: Option<(&str, u32)>,
        eos: Option<(&str, u32)>,
    ) -> Result<TemplateProcessing> {
        // As `transformers`' `update_post_processor`: no token, no adding it.
        let bos = bos.filter(|_| add_bos);
        let eos = eos.filter(|_| add_eos);
        let mut single = Vec::new();
        let mut special = Vec::new();
        if let Some((t, id)) = bos {
            single.push(format!("{t}:0"));
            special.push((t.to_owned(), id));
        }
        single.push("$A:0".to_owned());
        if let Some((t, id)) = eos {
            single.push(format!("{t}:0"));
            if !special.iter().any(|(s, _)| s == t) {
                special.push((t.to_owned(), id));
            }
        }
        let mut pair = single.clone();
        if let Some((t, _)) = bos {
            pair.push(format!("{t}:1"));
        }
        pair.push("$B:1".to_owned());
        if let Some((t, _)) = eos {
            pair.push(format!("{t}:1"));
        }
        TemplateProcessing::builder()
            .try_single(single)
            .map_err(|e| tk_err("gguf tokenizer", e))?
            .try_pair(pair)
            .map_err(|e| tk_err("gguf tokenizer", e))?
            .special_tokens(special)
            .build()
            .map_err(|e| tk_err("gguf tokenizer", e))
    }

    pub(super) fn build(spec: &GgufTokenizerSpec) -> Result<Tokenizer> {
        let n = spec.tokens.len();
        if n == 0 {
            return Err(Error::invalid(
                "gguf tokenizer",
                "tokenizer.ggml.tokens is empty",
            ));
        }
        for (name, id) in [
            ("bos", spec.bos),
            ("eos", spec.eos),
            ("unknown", spec.unk),
            ("padding", spec.pad),
        ] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(Error::invalid(
                        "gguf tokenizer",
                        format!(
                            "tokenizer.ggml.{name}_token_id {id} is out of range for {n} tokens"
                        ),
                    ));
                }
            }
        }
        if let Some(types) = &spec.token_types {
            if types.len() != n {
                return Err(Error::invalid(
                    "gguf tokenizer",
                    format!(
                        "tokenizer.ggml.token_type has {} entries for {n} tokens",
                        types.len()
                    ),
                ));
            }
        }
        if let Some(scores) = &spec.scores {
            if scores.len() != n {
                return Err(Error::invalid(
                    "gguf tokenizer",
                    format!(
                        "tokenizer.ggml.scores has {} entries for {n} tokens",
                        scores.len()
                    ),
                ));
            }
        }
        let arch = spec.architecture.as_deref().unwrap_or("");
        match spec.model.as_str() {
            "gpt2" => build_byte_level(spec),
            "llama" => build_sentencepiece(spec, arch),
            other => Err(Error::invalid(
                "gguf tokenizer",
                format!("unsupported tokenizer.ggml.model {other:?} (supported: gpt2, llama)"),
            )),
        }
    }

    fn token_type(spec: &GgufTokenizerSpec, i: usize) -> i32 {
        spec.token_types
            .as_ref()
            .map_or(GgufTokenType::Normal as i32, |t| t[i])
    }

    /// Control tokens (special), user-defined ones (plain added tokens), then the named
    /// specials and the defaults of the `transformers` class that would have been used.
    fn add_special(
        tok: &mut tokenizers::Tokenizer,
        spec: &GgufTokenizerSpec,
        class_defaults: &[&str],
        control_ok: &dyn Fn(&str) -> bool,
        respell: &dyn Fn(&str) -> String,
    ) {
        let vocab = tok.get_vocab(false);
        let defaults: Vec<AddedToken> = class_defaults
            .iter()
            .filter(|t| vocab.contains_key(**t))
            .map(|t| AddedToken::from(*t, true))
            .collect();
        tok.add_special_tokens(&defaults);
        let control: Vec<AddedToken> = spec
            .tokens
            .iter()
            .enumerate()
            .filter(|&(i, t)| token_type(spec, i) == GgufTokenType::Control as i32 && control_ok(t))
            .map(|(_, t)| AddedToken::from(respell(t), true))
            .collect();
        tok.add_special_tokens(&control);
        let vocab = tok.get_vocab(true);
        let user: Vec<AddedToken> = spec
            .tokens
            .iter()
            .enumerate()
            .filter(|&(i, t)| {
                token_type(spec, i) == GgufTokenType::UserDefined as i32 && vocab.contains_key(t)
            })
            .map(|(_, t)| AddedToken::from(t.as_str(), false).normalized(false))
            .collect();
        tok.add_tokens(&user);
        let named: Vec<AddedToken> = [spec.bos, spec.eos, spec.unk, spec.pad]
            .iter()
            .filter_map(|&id| spec.token(id))
            .map(|t| AddedToken::from(respell(t), true))
            .filter(|t| tok.token_to_id(&t.content).is_some())
            .collect();
        tok.add_special_tokens(&named);
    }

    fn finish(
        mut tok: tokenizers::Tokenizer,
        spec: &GgufTokenizerSpec,
        add_bos: bool,
        add_eos: bool,
        respell: &dyn Fn(&str) -> String,
    ) -> Result<Tokenizer> {
        let named = |id: Option<u32>| -> Option<(String, u32)> {
            let t = respell(spec.token(id)?);
            let id = tok.token_to_id(&t)?;
            Some((t, id))
        };
        let bos = named(spec.bos);
        let eos = named(spec.eos);
        let pp = post_processor(
            add_bos,
            add_eos,
            bos.as_ref().map(|(t, i)| (t.as_str(), *i)),
            eos.as_ref().map(|(t, i)| (t.as_str(), *i)),
        )?;
        tok.with_post_processor(Some(pp));
        Ok(Tokenizer {
            inner: tok,
            bos: bos.map(|b| b.1),
            eos: eos.map(|e| e.1),
        })
    }

    fn build_byte_level(spec: &GgufTokenizerSpec) -> Result<Tokenizer> {
        let table = bytes_to_unicode();
        let alphabet: HashSet<char> = table.iter().copied().collect();
        let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
        let respell = |t: &str| -> String {
            if in_alphabet(t) {
                t.to_owned()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            }
        };
        let spelled: Vec<String> = spec.tokens.iter().map(|t| respell(t)).collect();
        let vocab = vocab_of(&spelled);
        let merges = match (&spec.merges, &spec.scores) {
            (Some(m), _) => parse_merges(m)?,
            (None, Some(s)) => generate_merges(&spelled, &vocab, &|i| s[i] as f64),
            (None, None) => {
                return Err(Error::invalid(
                    "gguf tokenizer",
                    "a gpt2 tokenizer needs tokenizer.ggml.merges (or scores to derive them)",
                ))
            }
        };
        let bpe = build_bpe(vocab, merges, false, None)?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        let pre: PreTokenizerWrapper = match pre_split(spec.pre.as_deref())? {
            PreSplit::Gpt2 => ByteLevel::new(false, true, true).into(),
            PreSplit::DigitsThenGpt2 => PreTokenizerSequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            PreSplit::Regex(re) => PreTokenizerSequence::new(vec![
                Split::new(
                    SplitPattern::Regex(re.to_owned()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| tk_err("gguf tokenizer", e))?
                .into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
        };
        tok.with_pre_tokenizer(Some(pre));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        add_special(
            &mut tok,
            spec,
            &["<|endoftext|>"],
            &|t| in_alphabet(t),
            &|t| t.to_owned(),
        );
        finish(
            tok,
            spec,
            spec.add_bos.unwrap_or(false),
            spec.add_eos.unwrap_or(false),
            &respell,
        )
    }

    fn build_sentencepiece(spec: &GgufTokenizerSpec, arch: &str) -> Result<Tokenizer> {
        let gemma = matches!(arch, "gemma" | "gemma2" | "gemma3");
        // Gemma stores tokens of two or more spaces as real spaces; its merges use `▁`.
        let tokens: Vec<String> = if gemma {
            spec.tokens
                .iter()
                .map(|t| {
                    if t.contains(' ') && t.trim().is_empty() {
                        "\u{2581}".repeat(t.chars().count())
                    } else {
                        t.clone()
                    }
                })
                .collect()
        } else {
            spec.tokens.clone()
        };
        let vocab = vocab_of(&tokens);
        let merges = match (&spec.merges, &spec.scores) {
            (Some(m), _) => parse_merges(m)?,
            // Gemma's scores do not follow its merge order; the file order does.
            _ if gemma => generate_merges(&tokens, &vocab, &|i| -(i as f64)),
            (None, Some(s)) => generate_merges(&tokens, &vocab, &|i| s[i] as f64),
            (None, None) => {
                return Err(Error::invalid(
                    "gguf tokenizer",
                    "a llama (SentencePiece) tokenizer needs tokenizer.ggml.scores or .merges",
                ))
            }
        };
        let bpe = build_bpe(vocab, merges, true, gemma.then_some("<unk>"))?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        let class_defaults: &[&str] = if gemma {
            tok.with_normalizer(Some(
                Replace::new(" ", "\u{2581}").map_err(|e| tk_err("gguf tokenizer", e))?,
            ));
            tok.with_pre_tokenizer(Some(
                Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false)
                    .map_err(|e| tk_err("gguf tokenizer", e))?,
            ));
            tok.with_decoder(Some(DecoderSequence::new(vec![
                DecoderWrapper::Replace(
                    Replace::new("\u{2581}", " ").map_err(|e| tk_err("gguf tokenizer", e))?,
                ),
                ByteFallback::new().into(),
                Fuse::new().into(),
            ])));
            &["<unk>", "<bos>", "<eos>", "<pad>", "<mask>"]
        } else {
            if arch == "phi3" {
                // The prefix space comes from a normalizer, not from `Metaspace`.
                let seq: Vec<NormalizerWrapper> = vec![
                    Prepend::new("\u{2581}".to_owned()).into(),
                    Replace::new(" ", "\u{2581}")
                        .map_err(|e| tk_err("gguf tokenizer", e))?
                        .into(),
                ];
                tok.with_normalizer(Some(NormalizerSequence::new(seq)));
            } else {
                tok.with_pre_tokenizer(Some(Metaspace::new(
                    '\u{2581}',
                    PrependScheme::First,
                    false,
                )));
            }
            tok.with_decoder(Some(DecoderSequence::new(vec![
                DecoderWrapper::Replace(
                    Replace::new("\u{2581}", " ").map_err(|e| tk_err("gguf tokenizer", e))?,
                ),
                ByteFallback::new().into(),
                Fuse::new().into(),
                Strip::new(' ', 1, 0).into(),
            ])));
            &["<unk>", "<s>", "</s>"]
        };
        add_special(&mut tok, spec, class_defaults, &|_| true, &|t| t.to_owned());
        finish(
            tok,
            spec,
            spec.add_bos.unwrap_or(true),
            spec.add_eos.unwrap_or(false),
            &|t| t.to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = gguf::bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'A' as usize], 'A');
        let distinct: HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn generate_merges_orders_by_score_then_length() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let vocab = gguf::generate_merges(
            &tokens,
            &tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i as u32))
                .collect(),
            &|i| [0.0, 0.0, 0.0, -1.0, -2.0, -3.0][i],
        );
        let want: Vec<(String, String)> = [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(vocab, want);
    }

    #[test]
    fn bad_specs_are_errors() {
        let spec = GgufTokenizerSpec {
            model: "gpt2".into(),
            tokens: vec!["a".into(), "b".into()],
            merges: Some(vec!["a b".into()]),
            ..Default::default()
        };
        // "ab" is not in the vocabulary
        assert!(Tokenizer::from_gguf_spec(&spec).is_err());
        let spec = GgufTokenizerSpec {
            model: "rwkv".into(),
            tokens: vec!["a".into()],
            ..Default::default()
        };
        let err = Tokenizer::from_gguf_spec(&spec).unwrap_err().to_string();
        assert!(err.contains("rwkv"), "{err}");
        let spec = GgufTokenizerSpec {
            model: "gpt2".into(),
            pre: Some("no-such-pre".into()),
            tokens: vec!["a".into()],
            merges: Some(vec![]),
            ..Default::default()
        };
        let err = Tokenizer::from_gguf_spec(&spec).unwrap_err().to_string();
        assert!(
            err.contains("no-such-pre") && err.contains("llama-bpe"),
            "{err}"
        );
        let spec = GgufTokenizerSpec {
            model: "gpt2".into(),
            tokens: vec!["a".into()],
            merges: Some(vec![]),
            eos: Some(5),
            ..Default::default()
        };
        assert!(Tokenizer::from_gguf_spec(&spec).is_err());
    }
}
