//! Plain-text corpora and a byte-level tokenizer for training small language models.

use std::path::Path;

use tensor_core::{Device, Error, Result, Tensor};

/// Read every fortune-cookie file of a `fortunes` folder (entries separated by `%` lines;
/// the `.dat` index files and the `.u8` links are skipped) into one text, entries joined by
/// blank lines, files in name order so the corpus is the same on every machine.
pub fn load_fortunes(dir: impl AsRef<Path>) -> Result<String> {
    let dir = dir.as_ref();
    let err = |e: std::io::Error| {
        Error::invalid(
            "load_fortunes",
            format!(
                "cannot read '{}': {e} (run scripts/fetch_fortunes.sh)",
                dir.display()
            ),
        )
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(err)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_none())
        .collect();
    files.sort();
    let mut out = String::new();
    for f in files {
        let bytes = std::fs::read(&f).map_err(err)?;
        // A few files are Latin-1; keep what decodes, replace the rest.
        let text = String::from_utf8_lossy(&bytes);
        for entry in text.split("\n%\n") {
            let e = entry.trim_matches(|c: char| c == '%' || c.is_whitespace());
            if !e.is_empty() {
                out.push_str(e);
                out.push_str("\n\n");
            }
        }
    }
    if out.is_empty() {
        return Err(Error::invalid(
            "load_fortunes",
            format!("no fortune files in '{}'", dir.display()),
        ));
    }
    Ok(out)
}

/// Bytes as tokens (vocabulary 256): lossless for any UTF-8 text, no training needed.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    pub const VOCAB: usize = 256;

    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    /// Decode, replacing invalid UTF-8 (a sequence cut mid-character) with U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().map(|&i| i.min(255) as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Random contiguous windows of a token stream for next-token prediction: inputs `[B, L]`
/// and targets shifted by one, both i64, from a seeded generator.
pub fn lm_batch(
    tokens: &[u32],
    batch: usize,
    len: usize,
    seed: u64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    if tokens.len() <= len + 1 || batch == 0 || len == 0 {
        return Err(Error::invalid(
            "lm_batch",
            format!(
                "need more than {} tokens for windows of {len}, have {}",
                len + 1,
                tokens.len()
            ),
        ));
    }
    let starts = crate::datasets::permutation(tokens.len() - len - 1, seed);
    let mut x = Vec::with_capacity(batch * len);
    let mut y = Vec::with_capacity(batch * len);
    for b in 0..batch {
        let s = starts[b % starts.len()];
        x.extend(tokens[s..s + len].iter().map(|&t| t as i64));
        y.extend(tokens[s + 1..s + len + 1].iter().map(|&t| t as i64));
    }
    Ok((
        Tensor::from_vec(x, (batch, len), device)?,
        Tensor::from_vec(y, (batch, len), device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_roundtrip_and_batches() -> Result<()> {
        let t = ByteTokenizer;
        let s = "héllo, wörld ✓";
        assert_eq!(t.decode(&t.encode(s)), s);
        let toks = t.encode("abcdefghijklmnopqrstuvwxyz");
        let dev = tensor_cpu::device();
        let (x, y) = lm_batch(&toks, 3, 5, 1, &dev)?;
        let (xv, yv) = (x.to_vec::<i64>()?, y.to_vec::<i64>()?);
        for i in 0..15 {
            if i % 5 != 4 {
                assert_eq!(xv[i + 1], yv[i]);
            }
            assert_eq!(xv[i] + 1, yv[i]);
        }
        assert!(lm_batch(&toks, 1, 30, 0, &dev).is_err());
        Ok(())
    }
}
