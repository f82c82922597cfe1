//! The character vocabulary of the text-to-codes model: lower-cased ASCII letters, digits,
//! space and common punctuation, plus `<pad>`, `<bos>`, `<eos>` and `<unk>`.
//!
//! Characters rather than phonemes keep the model free of a pronunciation dictionary; the
//! corpus is small and read by a rule-based synthesiser, so spelling carries the
//! pronunciation well enough.

use tensor_core::{Error, Result};

/// Padding id (text batches are padded with it and masked out).
pub const PAD_ID: u32 = 0;
/// Start of text.
pub const BOS_ID: u32 = 1;
/// End of text.
pub const EOS_ID: u32 = 2;
/// Any character outside the vocabulary.
pub const UNK_ID: u32 = 3;

const SPECIALS: [&str; 4] = ["<pad>", "<bos>", "<eos>", "<unk>"];

/// What the decoder prints for `<unk>` (the replacement character, so it cannot be confused
/// with a vocabulary character).
const UNK_CHAR: char = '\u{FFFD}';

/// Every ordinary character, in id order after the four special ids.
const CHARS: &str = " abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()&%$/+=@#*";

/// The fixed character tokenizer (no state: the vocabulary is part of the code, so a saved
/// model never disagrees with it; the vocabulary size is stored in checkpoints and checked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CharTokenizer;

impl CharTokenizer {
    pub fn new() -> CharTokenizer {
        CharTokenizer
    }

    /// Ids in the vocabulary, specials included.
    pub fn vocab_size(&self) -> usize {
        SPECIALS.len() + CHARS.chars().count()
    }

    /// The text as the model sees it: lower-cased, every run of whitespace one space, trimmed.
    pub fn normalize(&self, text: &str) -> String {
        text.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    }

    /// The id of one (already normalised) character; `<unk>` when it is not in the vocabulary.
    pub fn char_id(&self, c: char) -> u32 {
        CHARS
            .chars()
            .position(|v| v == c)
            .map_or(UNK_ID, |i| (i + SPECIALS.len()) as u32)
    }

    /// `[<bos>, chars…, <eos>]` of the normalised text. Errors when nothing is left after
    /// normalising or when more than `max_chars` characters are.
    pub fn encode(&self, text: &str, max_chars: usize) -> Result<Vec<u32>> {
        let norm = self.normalize(text);
        let n = norm.chars().count();
        if n == 0 {
            return Err(Error::invalid(
                "CharTokenizer::encode",
                "the text is empty (nothing but whitespace)",
            ));
        }
        if n > max_chars {
            return Err(Error::invalid(
                "CharTokenizer::encode",
                format!(
                    "the text has {n} characters after normalising; this model reads at most \
                     {max_chars}"
                ),
            ));
        }
        let mut ids = Vec::with_capacity(n + 2);
        ids.push(BOS_ID);
        ids.extend(norm.chars().map(|c| self.char_id(c)));
        ids.push(EOS_ID);
        Ok(ids)
    }

    /// The text of `ids`: `<bos>`, `<eos>` and `<pad>` are dropped, `<unk>` becomes U+FFFD.
    /// Errors on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let chars: Vec<char> = CHARS.chars().collect();
        let mut out = String::with_capacity(ids.len());
        for &id in ids {
            match id {
                PAD_ID | BOS_ID | EOS_ID => {}
                UNK_ID => out.push(UNK_CHAR),
                _ => {
                    let c = chars.get(id as usize - SPECIALS.len()).ok_or_else(|| {
                        Error::invalid(
                            "CharTokenizer::decode",
                            format!("id {id} is outside the vocabulary of {}", self.vocab_size()),
                        )
                    })?;
                    out.push(*c);
                }
            }
        }
        Ok(out)
    }

    /// The printable name of an id (`<pad>`… for specials).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match SPECIALS.get(id as usize) {
            Some(s) => Some(s.to_string()),
            None => CHARS
                .chars()
                .nth(id as usize - SPECIALS.len())
                .map(String::from),
        }
    }
}
