//! Streaming text out of token ids: [`TokenDecoder`] turns ids into text pieces without ever
//! splitting a UTF-8 character (byte-level BPE pieces and `<0xE2>` byte-fallback tokens can end
//! mid-character), and [`StopMatcher`] holds back text that could be the start of a stop
//! string, so a stop string spanning several tokens is never streamed.

use tensor_core::Result;
use tensor_io::tokenizer::Tokenizer;

/// Incremental detokenisation, as text-generation-inference and vLLM do it: decode the ids
/// from a `prefix_offset` twice, without and with the new ones, and emit the difference
/// once it is longer and does not end in U+FFFD (an incomplete character). Decoding with a
/// few tokens of left context keeps the spaces that SentencePiece-style decoders derive from
/// the previous token.
#[derive(Debug)]
pub struct TokenDecoder<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

impl<'a> TokenDecoder<'a> {
    /// A decoder of generated ids; special tokens are left out when `skip_special_tokens`.
    pub fn new(tokenizer: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        TokenDecoder {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            skip_special_tokens,
        }
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, self.skip_special_tokens)
    }

    /// Add one id; returns the newly complete text (often empty while a character is split).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = self.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            if let Some(new) = full.get(prefix.len()..) {
                let new = new.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                return Ok(new);
            }
        }
        Ok(String::new())
    }

    /// The text still held back (an incomplete character at the very end decodes as U+FFFD).
    pub fn flush(&mut self) -> Result<String> {
        let prefix = self.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or_default().to_string())
    }
}

/// Finds stop strings in streamed text. Text is released only when no stop string can start
/// in it: the longest suffix that is a proper prefix of a stop string is held back until
/// the next piece decides.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
    matched: Option<String>,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Default::default()
        }
    }

    /// All text accepted so far (cut before the stop string once one matched).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop string that matched, if one did.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// Add a piece of text; returns the text that is now safe to stream, and whether a stop
    /// string matched (then the text ends right before it, and later pieces are ignored).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped() {
            return (String::new(), true);
        }
        self.text.push_str(piece);
        let tail = &self.text[self.emitted..];
        // The earliest match of any stop string. None can start before `emitted`: such a
        // start would have been held back as a prefix of that stop string.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| tail.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, _)| at);
        if let Some((at, stop)) = hit {
            let stop = stop.clone();
            let cut = self.emitted + at;
            let out = self.text[self.emitted..cut].to_string();
            self.text.truncate(cut);
            self.emitted = cut;
            self.matched = Some(stop);
            return (out, true);
        }
        let hold = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(tail, s))
            .max()
            .unwrap_or(0);
        let end = self.text.len() - hold;
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        (out, false)
    }

    /// The held-back text, at the end of generation (it matched no stop string).
    pub fn finish(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = (stop.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let (t, s) = m.push(p);
            out.push(t);
            if s {
                stopped = true;
                break;
            }
        }
        if !stopped {
            out.push(m.finish());
        }
        (out, m.text().to_string(), stopped)
    }

    #[test]
    fn holds_back_possible_stop_prefixes() {
        let (out, text, stopped) = run(&["</end>"], &["hello <", "/e", "nd> tail"]);
        assert_eq!(out, ["hello ", "", ""]);
        assert_eq!(text, "hello ");
        assert!(stopped);

        let (out, text, stopped) = run(&["</end>"], &["a <", "/x", "yz"]);
        assert_eq!(out.concat(), "a </xyz");
        assert_eq!(out[0], "a ");
        assert_eq!(text, "a </xyz");
        assert!(!stopped);
    }

    #[test]
    fn earliest_of_several_stops_and_multibyte() {
        let (out, text, _) = run(&["STOP", "é!"], &["caf", "é", "!STOP"]);
        assert_eq!(out.concat(), "caf");
        assert_eq!(text, "caf");
        assert_eq!(longest_suffix_prefix("xé", "é!"), "é".len());
        assert_eq!(longest_suffix_prefix("abc", "x"), 0);
    }
}
