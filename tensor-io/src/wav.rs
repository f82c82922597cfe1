//! WAV files (torchaudio.load / torchaudio.save for `.wav`): integer PCM of 8, 16, 24 or 32 bits
//! and 32-bit IEEE float, any channel count, read into interleaved f32 samples at full scale 1.0
//! and written back atomically. hound writes files and double-checks headers; a header scan of
//! our own runs first so that a malformed or unsupported file gets an error saying what it is
//! (encoding, bit depth, truncation) and naming the file, instead of hound's bare
//! "unsupported", and the samples are decoded straight from the bytes it located.

use std::io::Cursor;
use std::path::Path;

use tensor_core::{DType, Device, Error, Result, Tensor};

/// Decoded audio: `samples` interleaved frame by frame (`[f0c0, f0c1, f1c0, …]`), full scale 1.0.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub channels: u16,
    pub samples: Vec<f32>,
}

/// How samples are stored in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SampleFormat {
    Int8,
    Int16,
    Int24,
    Int32,
    Float32,
}

impl SampleFormat {
    pub fn bits(self) -> u16 {
        match self {
            SampleFormat::Int8 => 8,
            SampleFormat::Int16 => 16,
            SampleFormat::Int24 => 24,
            SampleFormat::Int32 | SampleFormat::Float32 => 32,
        }
    }

    pub fn is_float(self) -> bool {
        self == SampleFormat::Float32
    }
}

impl Audio {
    /// Checks the invariants the rest of the crate relies on (a channel, a rate, whole frames).
    pub fn new(sample_rate: u32, channels: u16, samples: Vec<f32>) -> Result<Audio> {
        if channels == 0 || sample_rate == 0 {
            return Err(Error::invalid(
                "Audio::new",
                format!("need at least one channel and a positive rate, got {channels} channels at {sample_rate} Hz"),
            ));
        }
        if !samples.len().is_multiple_of(channels as usize) {
            return Err(Error::invalid(
                "Audio::new",
                format!(
                    "{} samples is not a whole number of {channels}-channel frames",
                    samples.len()
                ),
            ));
        }
        Ok(Audio {
            sample_rate,
            channels,
            samples,
        })
    }

    /// Samples per channel.
    pub fn frames(&self) -> usize {
        self.samples.len() / (self.channels.max(1) as usize)
    }

    pub fn duration_secs(&self) -> f64 {
        self.frames() as f64 / self.sample_rate.max(1) as f64
    }

    /// The mean of the channels (the usual downmix; torchaudio users write `x.mean(0)`).
    pub fn to_mono(&self) -> Audio {
        let c = self.channels.max(1) as usize;
        let samples = if c == 1 {
            self.samples.clone()
        } else {
            self.samples
                .chunks_exact(c)
                .map(|f| (f.iter().map(|&x| x as f64).sum::<f64>() / c as f64) as f32)
                .collect()
        };
        Audio {
            sample_rate: self.sample_rate,
            channels: 1,
            samples,
        }
    }

    /// One channel's samples; an empty vector when `c` is out of range.
    pub fn channel(&self, c: usize) -> Vec<f32> {
        let n = self.channels as usize;
        if c >= n {
            return Vec::new();
        }
        self.samples.iter().skip(c).step_by(n).copied().collect()
    }

    /// f32 `[channels, frames]`, the layout torchaudio.load returns.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let c = self.channels as usize;
        let mut planar: Vec<f32> = Vec::with_capacity(self.samples.len());
        for ch in 0..c {
            planar.extend(self.samples.iter().skip(ch).step_by(c));
        }
        Tensor::from_vec(planar, (c, self.frames()), device)
    }

    /// From `[channels, frames]` or `[frames]` (mono), f32 or f64.
    pub fn from_tensor(t: &Tensor, sample_rate: u32) -> Result<Audio> {
        let (c, n) = match t.dims() {
            [n] => (1, *n),
            [c, n] => (*c, *n),
            _ => {
                return Err(Error::UnexpectedShape {
                    op: "Audio::from_tensor",
                    expected: "[channels, frames] or [frames]".into(),
                    got: t.shape().clone(),
                })
            }
        };
        if c == 0 || c > u16::MAX as usize {
            return Err(Error::invalid(
                "Audio::from_tensor",
                format!("{c} channels (expected 1..=65535)"),
            ));
        }
        let planar: Vec<f32> = t.to_dtype(DType::F32)?.contiguous()?.to_vec()?;
        let mut samples = vec![0f32; c * n];
        for ch in 0..c {
            for (i, &x) in planar[ch * n..(ch + 1) * n].iter().enumerate() {
                samples[i * c + ch] = x;
            }
        }
        Audio::new(sample_rate, c as u16, samples)
    }
}

fn wav_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Msg(format!("wav '{}': {msg}", path.display()))
}

/// What the header scan learned: enough to say what a file is before hound decodes it.
struct Header {
    format: SampleFormat,
    /// Bytes per sample as stored; wider than the format's bits for e.g. 24-in-32 files, whose
    /// samples are left-justified in the container.
    container: usize,
    /// Byte range of the samples.
    data: std::ops::Range<usize>,
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn encoding_name(tag: u16) -> String {
    let name = match tag {
        0x0002 => "Microsoft ADPCM",
        0x0006 => "A-law",
        0x0007 => "mu-law",
        0x0011 => "IMA ADPCM",
        0x0031 => "GSM 6.10",
        0x0050 | 0x0055 => "MPEG audio",
        _ => "an unknown encoding",
    };
    format!("{name} (format tag 0x{tag:04x})")
}

const SUPPORTED: &str = "expected integer PCM of 8, 16, 24 or 32 bits, or 32-bit float";

/// Walks the RIFF chunks up to `data`, checking what hound would reject (or silently misread)
/// and saying so in words.
fn scan_header(b: &[u8]) -> std::result::Result<Header, String> {
    if b.len() < 12 {
        return Err(format!(
            "not a RIFF/WAVE file (only {} bytes, a WAV header needs at least 44)",
            b.len()
        ));
    }
    match &b[0..4] {
        b"RIFF" => {}
        b"RF64" | b"BW64" => {
            return Err("RF64/BW64 (WAV over 4 GiB) is not supported".into());
        }
        b"RIFX" => return Err("big-endian RIFX WAV is not supported".into()),
        other => {
            return Err(format!(
                "not a RIFF/WAVE file (starts with {:?}, expected \"RIFF\")",
                String::from_utf8_lossy(other)
            ))
        }
    }
    if &b[8..12] != b"WAVE" {
        return Err(format!(
            "not a RIFF/WAVE file (RIFF form type {:?}, expected \"WAVE\")",
            String::from_utf8_lossy(&b[8..12])
        ));
    }
    let mut pos = 12usize;
    let mut format = None;
    let mut block_align = 0u16;
    let mut container = 0usize;
    loop {
        if pos + 8 > b.len() {
            return Err(match format {
                None => "truncated: the file ends before its fmt chunk".into(),
                Some(_) => "truncated: the file ends before its data chunk".into(),
            });
        }
        let id = &b[pos..pos + 4];
        let len = u32_at(b, pos + 4) as usize;
        let body = pos + 8;
        if id == b"data" {
            let Some(format) = format else {
                return Err("data chunk comes before the fmt chunk".into());
            };
            let have = b.len() - body;
            if len > have {
                return Err(format!(
                    "truncated: the data chunk declares {len} bytes but only {have} follow"
                ));
            }
            if block_align > 0 && !len.is_multiple_of(block_align as usize) {
                return Err(format!(
                    "truncated: the data chunk holds {len} bytes, not a whole number of \
                     {block_align}-byte frames"
                ));
            }
            return Ok(Header {
                format,
                container,
                data: body..body + len,
            });
        }
        if id == b"fmt " {
            if len < 16 || body + len > b.len() {
                return Err(format!(
                    "truncated or malformed fmt chunk ({len} bytes declared, {} present, at least 16 needed)",
                    b.len().saturating_sub(body)
                ));
            }
            let f = &b[body..body + len];
            let mut tag = u16_at(f, 0);
            let channels = u16_at(f, 2);
            let rate = u32_at(f, 4);
            block_align = u16_at(f, 12);
            let mut bits = u16_at(f, 14);
            container = (bits as usize).div_ceil(8);
            if tag == 0xfffe {
                // WAVE_FORMAT_EXTENSIBLE: the real encoding is the first two bytes of the
                // sub-format GUID, the real depth is wValidBitsPerSample (when set).
                if len < 40 {
                    return Err(format!(
                        "WAVE_FORMAT_EXTENSIBLE fmt chunk of {len} bytes (expected 40)"
                    ));
                }
                let valid = u16_at(f, 18);
                if valid > 0 {
                    bits = valid;
                }
                tag = u16_at(f, 24);
            }
            if channels == 0 {
                return Err("the fmt chunk declares zero channels".into());
            }
            if rate == 0 {
                return Err("the fmt chunk declares a sample rate of 0 Hz".into());
            }
            if block_align as usize != channels as usize * container
                || bits as usize > 8 * container
            {
                return Err(format!(
                    "inconsistent fmt chunk: {channels} channels of {bits}-bit samples in \
                     {block_align}-byte frames"
                ));
            }
            format = Some(match (tag, bits) {
                (1, 8) => SampleFormat::Int8,
                (1, 16) => SampleFormat::Int16,
                (1, 24) => SampleFormat::Int24,
                (1, 32) => SampleFormat::Int32,
                (3, 32) => SampleFormat::Float32,
                (1, _) => {
                    return Err(format!(
                        "unsupported sample format: {bits}-bit integer PCM ({SUPPORTED})"
                    ))
                }
                (3, _) => {
                    return Err(format!(
                        "unsupported sample format: {bits}-bit float ({SUPPORTED})"
                    ))
                }
                _ => {
                    return Err(format!(
                        "unsupported sample format: {} ({SUPPORTED})",
                        encoding_name(tag)
                    ))
                }
            });
        }
        // Chunks are padded to an even length.
        pos = body.saturating_add(len).saturating_add(len & 1);
    }
}

/// Read a WAV file: any channel count, integer samples scaled by 1/2^(bits-1) into [-1, 1),
/// float samples as stored.
pub fn read_wav(path: impl AsRef<Path>) -> Result<Audio> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        context: format!("wav: cannot read '{}'", path.display()),
        source: e,
    })?;
    let header = scan_header(&bytes).map_err(|m| wav_err(path, m))?;
    // hound parses the header too, as a second opinion on what the scan accepted.
    let spec = hound::WavReader::new(Cursor::new(&bytes[..]))
        .map_err(|e| wav_err(path, format!("malformed header: {e}")))?
        .spec();
    let samples = decode(&bytes[header.data.clone()], &header);
    Audio::new(spec.sample_rate, spec.channels, samples).map_err(|e| wav_err(path, e))
}

/// The samples of a data chunk whose length the scan checked. Decoded here rather than through
/// hound's per-sample iterator, which is about 20 times slower (a corpus loads in seconds
/// otherwise). Integers are scaled by the container width, which is right for left-justified
/// samples (24 valid bits in a 32-bit container) as WAVE_FORMAT_EXTENSIBLE stores them.
fn decode(data: &[u8], h: &Header) -> Vec<f32> {
    let w = h.container;
    if h.format.is_float() {
        return data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
    }
    if w == 1 {
        // 8-bit WAV is unsigned, 128 being zero.
        return data.iter().map(|&b| (b as f32 - 128.0) / 128.0).collect();
    }
    let scale = 1.0 / (1u64 << (8 * w - 1)) as f64;
    data.chunks_exact(w)
        .map(|b| {
            // Little-endian, sign-extended from the top byte.
            let mut v = (b[w - 1] as i8) as i64;
            for &byte in b[..w - 1].iter().rev() {
                v = (v << 8) | byte as i64;
            }
            (v as f64 * scale) as f32
        })
        .collect()
}

/// Scale to the integer grid of `bits`: clip to [-1, 1], multiply by 2^(bits-1), round half to
/// even, then clamp to the signed range (so +1.0 becomes the largest code, 2^(bits-1) - 1).
fn quantize(x: f32, bits: u16) -> i32 {
    let full = (1u64 << (bits - 1)) as f64;
    let v = (x.clamp(-1.0, 1.0) as f64 * full).round_ties_even();
    v.clamp(-full, full - 1.0) as i32
}

/// Write `audio` as a WAV file in `format`, atomically (temporary file in the same folder, then
/// rename, so a reader never sees half a file). Integer formats clip to [-1, 1] and round half to
/// even; Float32 stores values as they are (headroom above 1.0 is kept). NaN or infinite samples
/// are an error.
pub fn write_wav(path: impl AsRef<Path>, audio: &Audio, format: SampleFormat) -> Result<()> {
    let path = path.as_ref();
    if audio.channels == 0 || audio.sample_rate == 0 {
        return Err(wav_err(
            path,
            format!(
                "cannot write {} channels at {} Hz (need at least one channel and a positive rate)",
                audio.channels, audio.sample_rate
            ),
        ));
    }
    if !audio.samples.len().is_multiple_of(audio.channels as usize) {
        return Err(wav_err(
            path,
            format!(
                "{} samples is not a whole number of {}-channel frames",
                audio.samples.len(),
                audio.channels
            ),
        ));
    }
    if let Some(i) = audio.samples.iter().position(|x| !x.is_finite()) {
        return Err(wav_err(
            path,
            format!(
                "sample {i} is {} (expected a finite value)",
                audio.samples[i]
            ),
        ));
    }
    // hound writes u32 chunk sizes; refuse what would overflow them rather than write garbage.
    let bytes = audio.samples.len() as u64 * (format.bits() / 8) as u64;
    if bytes > u32::MAX as u64 - 64 {
        return Err(wav_err(
            path,
            format!("{bytes} bytes of samples do not fit a RIFF file (4 GiB limit)"),
        ));
    }
    let spec = hound::WavSpec {
        channels: audio.channels,
        sample_rate: audio.sample_rate,
        bits_per_sample: format.bits(),
        sample_format: if format.is_float() {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    crate::safetensors::write_atomic(path, "wav", |w| {
        let mut wr = hound::WavWriter::new(w, spec).map_err(|e| wav_err(path, e))?;
        if format.is_float() {
            for &x in &audio.samples {
                wr.write_sample(x).map_err(|e| wav_err(path, e))?;
            }
        } else {
            let bits = format.bits();
            for &x in &audio.samples {
                wr.write_sample(quantize(x, bits))
                    .map_err(|e| wav_err(path, e))?;
            }
        }
        wr.finalize().map_err(|e| wav_err(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_clips_and_rounds_half_to_even() {
        assert_eq!(quantize(1.0, 16), 32767);
        assert_eq!(quantize(2.0, 16), 32767);
        assert_eq!(quantize(-1.0, 16), -32768);
        assert_eq!(quantize(-3.0, 8), -128);
        // 0.5 and 1.5 LSB: ties go to the even code.
        assert_eq!(quantize(0.5 / 128.0, 8), 0);
        assert_eq!(quantize(1.5 / 128.0, 8), 2);
        assert_eq!(quantize(-1.5 / 128.0, 8), -2);
        assert_eq!(quantize(0.25, 32), 1 << 29);
    }
}
