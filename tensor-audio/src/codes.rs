//! The codes file: what `codec encode` writes and `codec decode` reads. A small header
//! (everything needed to check the file against a model and to restore the length), then the
//! code indices bit-packed at `ceil(log2(codebook_size))` bits each, so the file size is the
//! bitrate times the duration plus the header.
//!
//! Layout (little-endian):
//!
//! | bytes | field |
//! |-------|-------|
//! | 4 | magic `TECC` |
//! | 2 | version (1) |
//! | 4 | sample rate (Hz) |
//! | 4 | hop length (samples per frame) |
//! | 4 | codebook size |
//! | 1 | bits per code (= ceil(log2(codebook size))) |
//! | 2 | n_q (quantizers) |
//! | 4 | frames |
//! | 8 | samples (the length before padding to whole frames) |
//! | … | `frames · n_q` codes, frame by frame (all quantizers of frame 0, then frame 1, …), packed LSB-first |

use std::path::Path;

use tensor_core::{DType, Device, Error, Result, Tensor};

use crate::codec::bits_for;

pub const MAGIC: [u8; 4] = *b"TECC";
pub const VERSION: u16 = 1;
const HEADER_LEN: usize = 4 + 2 + 4 + 4 + 4 + 1 + 2 + 4 + 8;

/// A decoded codes file.
#[derive(Clone, Debug, PartialEq)]
pub struct CodesFile {
    pub sample_rate: u32,
    pub hop_length: u32,
    pub codebook_size: u32,
    pub n_q: usize,
    pub frames: usize,
    /// The audio length in samples (the codec pads to whole frames; decode cuts back).
    pub samples: u64,
    /// Codes `[n_q, frames]`, row-major.
    pub codes: Vec<u32>,
}

fn err(msg: impl Into<String>) -> Error {
    Error::invalid("codes file", msg.into())
}

impl CodesFile {
    /// Wrap codes `[1, n_q, frames]` or `[n_q, frames]` (any integer dtype) from
    /// [`crate::codec::Codec::encode`].
    pub fn from_tensor(
        codes: &Tensor,
        sample_rate: u32,
        hop_length: usize,
        codebook_size: usize,
        samples: usize,
    ) -> Result<CodesFile> {
        let d = codes.dims();
        let (n_q, frames) = match d {
            [1, q, f] | [q, f] => (*q, *f),
            _ => {
                return Err(err(format!(
                    "codes {d:?} must be [1, n_q, frames] or [n_q, frames]"
                )))
            }
        };
        if codes.dtype().is_float() {
            return Err(err(format!(
                "codes must be integers, got {}",
                codes.dtype()
            )));
        }
        let vals = codes.to_dtype(DType::I64)?.flatten_all()?.to_vec::<i64>()?;
        let mut out = Vec::with_capacity(vals.len());
        for v in vals {
            if v < 0 || v as u64 >= codebook_size as u64 {
                return Err(err(format!(
                    "code {v} is outside the codebook of {codebook_size} entries"
                )));
            }
            out.push(v as u32);
        }
        let f = CodesFile {
            sample_rate,
            hop_length: u32::try_from(hop_length).map_err(|_| err("hop length too large"))?,
            codebook_size: u32::try_from(codebook_size)
                .map_err(|_| err("codebook size too large"))?,
            n_q,
            frames,
            samples: samples as u64,
            codes: out,
        };
        f.check()?;
        Ok(f)
    }

    /// The codes as an i64 tensor `[1, n_q, frames]` for [`crate::codec::Codec::decode`].
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let v: Vec<i64> = self.codes.iter().map(|&c| c as i64).collect();
        Tensor::from_vec(v, (1, self.n_q, self.frames), device)
    }

    pub fn bits_per_code(&self) -> u32 {
        bits_for(self.codebook_size as usize)
    }

    /// The payload's bitrate in kbit/s (header excluded).
    pub fn bitrate_kbps(&self) -> f64 {
        let frame_rate = self.sample_rate as f64 / self.hop_length as f64;
        self.n_q as f64 * self.bits_per_code() as f64 * frame_rate / 1000.0
    }

    fn payload_len(&self) -> usize {
        (self.n_q * self.frames * self.bits_per_code() as usize).div_ceil(8)
    }

    /// Internal consistency: sizes, code range, frames covering the samples.
    fn check(&self) -> Result<()> {
        if self.sample_rate == 0 || self.hop_length == 0 {
            return Err(err("sample rate and hop length must be positive"));
        }
        if self.codebook_size < 2 {
            return Err(err(format!(
                "codebook size {} must be at least 2",
                self.codebook_size
            )));
        }
        if self.n_q == 0 || self.n_q > u16::MAX as usize || self.frames > u32::MAX as usize {
            return Err(err(format!(
                "n_q {} must be in 1..=65535 and frames {} below 2^32",
                self.n_q, self.frames
            )));
        }
        if self.codes.len() != self.n_q * self.frames {
            return Err(err(format!(
                "{} codes for n_q {} × {} frames",
                self.codes.len(),
                self.n_q,
                self.frames
            )));
        }
        let want_frames = self.samples.div_ceil(self.hop_length as u64);
        if want_frames != self.frames as u64 {
            return Err(err(format!(
                "{} samples at hop {} need {want_frames} frames, the file has {}",
                self.samples, self.hop_length, self.frames
            )));
        }
        if let Some(&c) = self.codes.iter().find(|&&c| c >= self.codebook_size) {
            return Err(err(format!(
                "code {c} is outside the codebook of {} entries",
                self.codebook_size
            )));
        }
        Ok(())
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.check()?;
        let bits = self.bits_per_code();
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload_len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.sample_rate.to_le_bytes());
        out.extend_from_slice(&self.hop_length.to_le_bytes());
        out.extend_from_slice(&self.codebook_size.to_le_bytes());
        out.push(bits as u8);
        out.extend_from_slice(&(self.n_q as u16).to_le_bytes());
        out.extend_from_slice(&(self.frames as u32).to_le_bytes());
        out.extend_from_slice(&self.samples.to_le_bytes());
        // Frame-major order, so a reader could stream frame by frame.
        let mut acc: u64 = 0;
        let mut n_acc = 0u32;
        for t in 0..self.frames {
            for q in 0..self.n_q {
                acc |= (self.codes[q * self.frames + t] as u64) << n_acc;
                n_acc += bits;
                while n_acc >= 8 {
                    out.push(acc as u8);
                    acc >>= 8;
                    n_acc -= 8;
                }
            }
        }
        if n_acc > 0 {
            out.push(acc as u8);
        }
        Ok(out)
    }

    /// Parse a file's bytes; every malformation is an error saying what was expected.
    pub fn from_bytes(b: &[u8]) -> Result<CodesFile> {
        if b.len() < 4 || b[..4] != MAGIC {
            return Err(err(format!(
                "not a codes file: expected magic {:?}",
                std::str::from_utf8(&MAGIC).expect("ASCII magic")
            )));
        }
        if b.len() < HEADER_LEN {
            return Err(err(format!(
                "truncated header: {} bytes, expected at least {HEADER_LEN}",
                b.len()
            )));
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let version = u16_at(4);
        if version != VERSION {
            return Err(err(format!(
                "unsupported version {version} (this build reads version {VERSION})"
            )));
        }
        let sample_rate = u32_at(6);
        let hop_length = u32_at(10);
        let codebook_size = u32_at(14);
        let bits = b[18] as u32;
        let n_q = u16_at(19) as usize;
        let frames = u32_at(21) as usize;
        let samples = u64::from_le_bytes(b[25..33].try_into().expect("8 bytes"));
        if codebook_size < 2 || bits != bits_for(codebook_size as usize) {
            return Err(err(format!(
                "{bits} bits per code do not match the codebook size {codebook_size}"
            )));
        }
        let mut f = CodesFile {
            sample_rate,
            hop_length,
            codebook_size,
            n_q,
            frames,
            samples,
            codes: Vec::new(),
        };
        let want = HEADER_LEN as u64 + (n_q as u64 * frames as u64 * bits as u64).div_ceil(8);
        if (b.len() as u64) < want {
            return Err(err(format!(
                "truncated: {} bytes, the header announces {want}",
                b.len()
            )));
        }
        if b.len() as u64 > want {
            return Err(err(format!(
                "{} trailing bytes after the codes",
                b.len() as u64 - want
            )));
        }
        let mut codes = vec![0u32; n_q * frames];
        let mask = (1u64 << bits) - 1;
        let mut acc: u64 = 0;
        let mut n_acc = 0u32;
        let mut bytes = b[HEADER_LEN..].iter();
        for t in 0..frames {
            for q in 0..n_q {
                while n_acc < bits {
                    acc |= (*bytes.next().expect("length checked above") as u64) << n_acc;
                    n_acc += 8;
                }
                codes[q * frames + t] = (acc & mask) as u32;
                acc >>= bits;
                n_acc -= bits;
            }
        }
        f.codes = codes;
        f.check()?;
        Ok(f)
    }

    /// Write atomically (temporary file in the same folder, then rename).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        tensor_nn::checkpoint::write_atomic(path.as_ref(), &self.to_bytes()?)
    }

    pub fn read(path: impl AsRef<Path>) -> Result<CodesFile> {
        let path = path.as_ref();
        let b = std::fs::read(path)
            .map_err(|e| err(format!("cannot read '{}': {e}", path.display())))?;
        CodesFile::from_bytes(&b).map_err(|e| err(format!("'{}': {}", path.display(), strip(&e))))
    }
}

/// The message of an error made by [`err`], without its prefix, for re-wrapping.
fn strip(e: &Error) -> String {
    match e {
        Error::InvalidArgument { msg, .. } => msg.clone(),
        other => other.to_string(),
    }
}
