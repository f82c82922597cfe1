//! A SoundStream/Encodec-style neural audio codec: a strided convolutional encoder turns a
//! waveform into a low-rate latent sequence, a residual vector quantizer
//! ([`tensor_nn::rvq`]) turns each latent frame into `n_q` code indices, and a decoder built
//! from transposed convolutions turns the summed code vectors back into a waveform.
//!
//! The bitrate is chosen at call time by how many quantizers are used: each costs
//! `log2(codebook_size)` bits per frame. Training with a random `n_q` per batch (quantizer
//! dropout) makes one model serve every bitrate up to `num_quantizers`.
//!
//! Built from `tensor-nn` layers and `Tensor` ops only, so it trains and runs on any backend.
//! Parameter names follow Encodec's layout loosely (`encoder.*`, `quantizer.layers.{i}.*`,
//! `decoder.*`); they are this crate's own, not a PyTorch checkpoint's.

use std::collections::BTreeMap;
use std::path::Path;

use tensor_core::{Device, Error, Result, Tensor};
use tensor_nn::rvq::{CodebookUpdate, ResidualVectorQuantizer, RvqConfig, VqConfig};
use tensor_nn::{
    conv1d, conv_transpose1d, Checkpoint, Conv1d, ConvConfig, ConvTranspose1d, Module, VarBuilder,
};

/// Hyper-parameters of a [`Codec`]. The defaults give a 16 kHz codec with hop 320
/// (strides 2·4·5·8) → 50 frames/s, 1024-entry codebooks (10 bits), up to 12 quantizers
/// (6 kbps).
#[derive(Clone, Debug, PartialEq)]
pub struct CodecConfig {
    pub sample_rate: u32,
    /// Channels of the first convolution; they double at every downsampling.
    pub channels: usize,
    /// Downsampling factors of the encoder (the decoder upsamples in reverse order).
    pub strides: Vec<usize>,
    /// Dimension of the latent frames (and code vectors).
    pub latent_dim: usize,
    pub codebook_size: usize,
    /// The most quantizers a caller may use.
    pub num_quantizers: usize,
    /// Dilations of the residual units before each downsampling (after each upsampling).
    pub dilations: Vec<usize>,
    /// Kernel of the first and last convolutions.
    pub kernel_size: usize,
    /// Commitment loss scale of every quantizer.
    pub commitment_weight: f64,
    /// EMA codebooks (Encodec) or learned ones with a codebook loss (VQ-VAE).
    pub ema_codebooks: bool,
}

impl Default for CodecConfig {
    fn default() -> Self {
        CodecConfig {
            sample_rate: 16_000,
            channels: 16,
            strides: vec![2, 4, 5, 8],
            latent_dim: 64,
            codebook_size: 1024,
            num_quantizers: 12,
            dilations: vec![1, 3, 9],
            kernel_size: 7,
            commitment_weight: 1.0,
            ema_codebooks: true,
        }
    }
}

impl CodecConfig {
    /// Samples per latent frame: the product of the strides.
    pub fn hop_length(&self) -> usize {
        self.strides.iter().product()
    }

    /// Latent frames per second.
    pub fn frame_rate(&self) -> f64 {
        self.sample_rate as f64 / self.hop_length() as f64
    }

    /// Bits per code: `ceil(log2(codebook_size))`.
    pub fn bits_per_code(&self) -> u32 {
        bits_for(self.codebook_size)
    }

    /// The bitrate of `n_q` quantizers in kbit/s: `n_q · bits · frame_rate / 1000`.
    pub fn bitrate_kbps(&self, n_q: usize) -> f64 {
        n_q as f64 * self.bits_per_code() as f64 * self.frame_rate() / 1000.0
    }

    /// The most quantizers whose bitrate is at most `kbps` (at least 1, at most all).
    pub fn n_q_for_kbps(&self, kbps: f64) -> usize {
        let per_q = self.bitrate_kbps(1);
        let n = (kbps / per_q + 1e-9).floor();
        (n.max(1.0) as usize).min(self.num_quantizers)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("CodecConfig", msg));
        if self.sample_rate == 0 || self.channels == 0 || self.latent_dim == 0 {
            return bad("sample_rate, channels and latent_dim must be positive".into());
        }
        if self.strides.is_empty() || self.strides.iter().any(|&s| s < 2) {
            return bad(format!(
                "strides {:?} must be a non-empty list of factors >= 2",
                self.strides
            ));
        }
        if !self.channels.is_multiple_of(2) {
            return bad(format!(
                "channels {} must be even (residual units halve them)",
                self.channels
            ));
        }
        if self.codebook_size < 2 || self.num_quantizers == 0 {
            return bad(format!(
                "codebook_size {} must be >= 2 and num_quantizers {} >= 1",
                self.codebook_size, self.num_quantizers
            ));
        }
        if self.kernel_size.is_multiple_of(2) || self.dilations.contains(&0) {
            return bad(format!(
                "kernel_size {} must be odd and dilations {:?} positive",
                self.kernel_size, self.dilations
            ));
        }
        Ok(())
    }

    /// The config as `key=value` metadata (stored in checkpoints).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let list = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        BTreeMap::from([
            ("codec.sample_rate".into(), self.sample_rate.to_string()),
            ("codec.channels".into(), self.channels.to_string()),
            ("codec.strides".into(), list(&self.strides)),
            ("codec.latent_dim".into(), self.latent_dim.to_string()),
            ("codec.codebook_size".into(), self.codebook_size.to_string()),
            (
                "codec.num_quantizers".into(),
                self.num_quantizers.to_string(),
            ),
            ("codec.dilations".into(), list(&self.dilations)),
            ("codec.kernel_size".into(), self.kernel_size.to_string()),
            (
                "codec.commitment_weight".into(),
                self.commitment_weight.to_string(),
            ),
            ("codec.ema_codebooks".into(), self.ema_codebooks.to_string()),
        ])
    }

    /// The config stored by [`CodecConfig::to_metadata`].
    pub fn from_metadata(meta: &BTreeMap<String, String>) -> Result<CodecConfig> {
        fn field<T: std::str::FromStr>(meta: &BTreeMap<String, String>, k: &str) -> Result<T> {
            let key = format!("codec.{k}");
            let v = meta.get(&key).ok_or_else(|| {
                Error::invalid(
                    "CodecConfig",
                    format!("the checkpoint has no '{key}' entry (is it a codec checkpoint?)"),
                )
            })?;
            v.parse()
                .map_err(|_| Error::invalid("CodecConfig", format!("bad value {v:?} for '{key}'")))
        }
        let list = |k: &str| -> Result<Vec<usize>> {
            let s: String = field(meta, k)?;
            s.split(',')
                .map(|x| {
                    x.parse().map_err(|_| {
                        Error::invalid("CodecConfig", format!("bad list {s:?} for 'codec.{k}'"))
                    })
                })
                .collect()
        };
        let cfg = CodecConfig {
            sample_rate: field(meta, "sample_rate")?,
            channels: field(meta, "channels")?,
            strides: list("strides")?,
            latent_dim: field(meta, "latent_dim")?,
            codebook_size: field(meta, "codebook_size")?,
            num_quantizers: field(meta, "num_quantizers")?,
            dilations: list("dilations")?,
            kernel_size: field(meta, "kernel_size")?,
            commitment_weight: field(meta, "commitment_weight")?,
            ema_codebooks: field(meta, "ema_codebooks")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `ceil(log2(n))` for `n >= 2` (1 for n <= 2).
pub(crate) fn bits_for(n: usize) -> u32 {
    let n = n.max(2) as u64;
    64 - (n - 1).leading_zeros()
}

const ELU_ALPHA: f64 = 1.0;

fn same(k: usize, dilation: usize) -> ConvConfig {
    ConvConfig {
        padding: (k - 1) / 2 * dilation,
        dilation,
        ..Default::default()
    }
}

/// Encodec's `SEANetResnetBlock`: ELU → dilated conv k3 (dim → dim/2) → ELU → conv k1
/// (dim/2 → dim), added to the input.
#[derive(Clone, Debug)]
struct ResidualUnit {
    conv1: Conv1d,
    conv2: Conv1d,
}

impl ResidualUnit {
    fn new(vb: &VarBuilder, dim: usize, dilation: usize) -> Result<Self> {
        Ok(ResidualUnit {
            conv1: conv1d(&vb.pp("conv1"), dim, dim / 2, 3, same(3, dilation))?,
            conv2: conv1d(&vb.pp("conv2"), dim / 2, dim, 1, ConvConfig::default())?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&x.elu(ELU_ALPHA)?)?;
        let h = self.conv2.forward(&h.elu(ELU_ALPHA)?)?;
        x.add(&h)
    }
}

/// Padding of a strided conv with kernel 2s so that `L` samples give exactly `L / s` frames
/// (and of the transposed conv undoing it, with `output_padding = 2p − s`).
fn stride_padding(s: usize) -> usize {
    s.div_ceil(2)
}

#[derive(Clone, Debug)]
struct EncoderBlock {
    units: Vec<ResidualUnit>,
    down: Conv1d,
}

#[derive(Clone, Debug)]
struct DecoderBlock {
    up: ConvTranspose1d,
    units: Vec<ResidualUnit>,
}

/// The codec: encoder, residual vector quantizer, decoder.
#[derive(Clone, Debug)]
pub struct Codec {
    cfg: CodecConfig,
    enc_in: Conv1d,
    enc_blocks: Vec<EncoderBlock>,
    enc_out: Conv1d,
    quantizer: ResidualVectorQuantizer,
    dec_in: Conv1d,
    dec_blocks: Vec<DecoderBlock>,
    dec_out: Conv1d,
}

/// What a training forward pass returns.
#[derive(Clone, Debug)]
pub struct CodecOutput {
    /// The reconstruction `[B, 1, T]` (same length as the input).
    pub audio: Tensor,
    /// Codes `[B, n_q, frames]` (i64).
    pub codes: Tensor,
    /// The quantizers' commitment loss (already scaled by `commitment_weight`).
    pub commitment_loss: Tensor,
    /// The codebook loss of learned codebooks; `None` for EMA codebooks.
    pub codebook_loss: Option<Tensor>,
}

impl Codec {
    /// Build (fresh through a `VarMap` builder, or loaded from stored tensors).
    pub fn new(vb: &VarBuilder, cfg: CodecConfig) -> Result<Codec> {
        cfg.validate()?;
        let k = cfg.kernel_size;
        let units = |vb: &VarBuilder, dim: usize| -> Result<Vec<ResidualUnit>> {
            cfg.dilations
                .iter()
                .enumerate()
                .map(|(j, &d)| ResidualUnit::new(&vb.pp("units").pp(j), dim, d))
                .collect()
        };
        let venc = vb.pp("encoder");
        let enc_in = conv1d(&venc.pp("conv_in"), 1, cfg.channels, k, same(k, 1))?;
        let mut enc_blocks = Vec::new();
        let mut ch = cfg.channels;
        for (i, &s) in cfg.strides.iter().enumerate() {
            let vbb = venc.pp("blocks").pp(i);
            let down_cfg = ConvConfig {
                stride: s,
                padding: stride_padding(s),
                ..Default::default()
            };
            enc_blocks.push(EncoderBlock {
                units: units(&vbb, ch)?,
                down: conv1d(&vbb.pp("down"), ch, 2 * ch, 2 * s, down_cfg)?,
            });
            ch *= 2;
        }
        let enc_out = conv1d(&venc.pp("conv_out"), ch, cfg.latent_dim, 3, same(3, 1))?;

        let vq = VqConfig {
            commitment_weight: cfg.commitment_weight,
            update: if cfg.ema_codebooks {
                VqConfig::new(cfg.latent_dim, cfg.codebook_size).update
            } else {
                CodebookUpdate::Learned
            },
            ..VqConfig::new(cfg.latent_dim, cfg.codebook_size)
        };
        let quantizer = ResidualVectorQuantizer::build(
            &vb.pp("quantizer"),
            RvqConfig {
                num_quantizers: cfg.num_quantizers,
                vq,
            },
        )?;

        let vdec = vb.pp("decoder");
        let dec_in = conv1d(&vdec.pp("conv_in"), cfg.latent_dim, ch, k, same(k, 1))?;
        let mut dec_blocks = Vec::new();
        for (i, &s) in cfg.strides.iter().rev().enumerate() {
            let vbb = vdec.pp("blocks").pp(i);
            let p = stride_padding(s);
            let up_cfg = ConvConfig {
                stride: s,
                padding: p,
                output_padding: 2 * p - s,
                ..Default::default()
            };
            dec_blocks.push(DecoderBlock {
                up: conv_transpose1d(&vbb.pp("up"), ch, ch / 2, 2 * s, up_cfg)?,
                units: units(&vbb, ch / 2)?,
            });
            ch /= 2;
        }
        let dec_out = conv1d(&vdec.pp("conv_out"), ch, 1, k, same(k, 1))?;
        Ok(Codec {
            cfg,
            enc_in,
            enc_blocks,
            enc_out,
            quantizer,
            dec_in,
            dec_blocks,
            dec_out,
        })
    }

    /// Load the codec saved in a training checkpoint (weights plus the config in its metadata).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Codec> {
        let path = path.as_ref();
        let ck = Checkpoint::load(path, device)?;
        let cfg = CodecConfig::from_metadata(&ck.metadata)
            .map_err(|e| Error::invalid("Codec::load", format!("{}: {e}", path.display())))?;
        let dtype = ck.model.values().next().map(|t| t.dtype()).ok_or_else(|| {
            Error::invalid(
                "Codec::load",
                format!("{} holds no weights", path.display()),
            )
        })?;
        Codec::new(&VarBuilder::from_tensors(ck.model, dtype, device), cfg)
    }

    pub fn config(&self) -> &CodecConfig {
        &self.cfg
    }

    pub fn sample_rate(&self) -> u32 {
        self.cfg.sample_rate
    }

    pub fn hop_length(&self) -> usize {
        self.cfg.hop_length()
    }

    pub fn frame_rate(&self) -> f64 {
        self.cfg.frame_rate()
    }

    pub fn num_quantizers(&self) -> usize {
        self.cfg.num_quantizers
    }

    pub fn codebook_size(&self) -> usize {
        self.cfg.codebook_size
    }

    pub fn bitrate_kbps(&self, n_q: usize) -> f64 {
        self.cfg.bitrate_kbps(n_q)
    }

    /// Latent frames for `samples` samples (the input is zero-padded to whole frames).
    pub fn frames_for(&self, samples: usize) -> usize {
        samples.div_ceil(self.hop_length())
    }

    fn check_wav(&self, wav: &Tensor, op: &'static str) -> Result<()> {
        let d = wav.dims();
        if d.len() != 3 || d[1] != 1 || d[2] == 0 {
            return Err(Error::invalid(
                op,
                format!("the waveform {d:?} must be [B, 1, T] with T > 0 (mono)"),
            ));
        }
        if !wav.dtype().is_float() {
            return Err(Error::invalid(
                op,
                format!("the waveform must be float, got {}", wav.dtype()),
            ));
        }
        Ok(())
    }

    fn check_n_q(&self, n_q: usize, op: &'static str) -> Result<()> {
        if n_q == 0 || n_q > self.cfg.num_quantizers {
            return Err(Error::invalid(
                op,
                format!(
                    "n_q {n_q} must be between 1 and {} (the model's quantizers)",
                    self.cfg.num_quantizers
                ),
            ));
        }
        Ok(())
    }

    /// The latent frames `[B, latent_dim, ceil(T / hop)]` of `wav: [B, 1, T]`.
    pub fn encode_latent(&self, wav: &Tensor) -> Result<Tensor> {
        self.check_wav(wav, "Codec::encode")?;
        let t = wav.dims()[2];
        let padded = self.frames_for(t) * self.hop_length();
        let x = if padded > t {
            wav.pad_with_zeros(2, 0, padded - t)?
        } else {
            wav.clone()
        };
        let mut h = self.enc_in.forward(&x)?;
        for b in &self.enc_blocks {
            for u in &b.units {
                h = u.forward(&h)?;
            }
            h = b.down.forward(&h.elu(ELU_ALPHA)?)?;
        }
        self.enc_out.forward(&h.elu(ELU_ALPHA)?)
    }

    /// The waveform `[B, 1, frames · hop]` of latent frames `[B, latent_dim, frames]`.
    pub fn decode_latent(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.dec_in.forward(z)?;
        for b in &self.dec_blocks {
            h = b.up.forward(&h.elu(ELU_ALPHA)?)?;
            for u in &b.units {
                h = u.forward(&h)?;
            }
        }
        self.dec_out.forward(&h.elu(ELU_ALPHA)?)
    }

    /// Codes `[B, n_q, frames]` (i64) of `wav: [B, 1, T]` at `sample_rate()`, with the first
    /// `n_q` quantizers. `frames = ceil(T / hop_length())`.
    pub fn encode(&self, wav: &Tensor, n_q: usize) -> Result<Tensor> {
        self.check_n_q(n_q, "Codec::encode")?;
        let z = self.encode_latent(wav)?;
        self.quantizer.encode(&z, Some(n_q))
    }

    /// The waveform `[B, 1, frames · hop_length()]` of codes `[B, n_q, frames]` (any integer
    /// dtype, values below `codebook_size`); `n_q` may be fewer than the model's quantizers.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let d = codes.dims();
        if d.len() != 3 || d[2] == 0 {
            return Err(Error::invalid(
                "Codec::decode",
                format!("codes {d:?} must be [B, n_q, frames] with frames > 0"),
            ));
        }
        self.check_n_q(d[1], "Codec::decode")?;
        let z = self.quantizer.decode(codes)?;
        self.decode_latent(&z)
    }

    /// [`Codec::decode`] cut to `samples` samples (the length before encoding).
    pub fn decode_len(&self, codes: &Tensor, samples: usize) -> Result<Tensor> {
        let y = self.decode(codes)?;
        let have = y.dims()[2];
        if samples > have || samples == 0 {
            return Err(Error::invalid(
                "Codec::decode_len",
                format!("{samples} samples requested but the codes hold 1..={have}"),
            ));
        }
        y.narrow(2, 0, samples)
    }

    /// Encode, quantize with the first `n_q` quantizers and decode, keeping the graph for
    /// training. With `train`, the EMA codebooks are updated and dead codes re-seeded.
    pub fn forward_train(&self, wav: &Tensor, n_q: usize, train: bool) -> Result<CodecOutput> {
        self.check_n_q(n_q, "Codec::forward_train")?;
        let t = wav.dims().get(2).copied().unwrap_or(0);
        let z = self.encode_latent(wav)?;
        let q = self.quantizer.forward_with(&z, Some(n_q), train)?;
        let y = self.decode_latent(&q.quantized)?.narrow(2, 0, t)?;
        Ok(CodecOutput {
            audio: y,
            codes: q.codes,
            commitment_loss: q.commitment_loss,
            codebook_loss: q.codebook_loss,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_rates() {
        assert_eq!(bits_for(1024), 10);
        assert_eq!(bits_for(1000), 10);
        assert_eq!(bits_for(1025), 11);
        assert_eq!(bits_for(2), 1);
        let c = CodecConfig::default();
        assert_eq!(c.hop_length(), 320);
        assert_eq!(c.frame_rate(), 50.0);
        assert_eq!(c.bitrate_kbps(12), 6.0);
        assert_eq!(c.n_q_for_kbps(6.0), 12);
        assert_eq!(c.n_q_for_kbps(1.5), 3);
        assert_eq!(c.n_q_for_kbps(100.0), 12);
        assert_eq!(c.n_q_for_kbps(0.1), 1);
    }

    #[test]
    fn metadata_round_trip() -> Result<()> {
        let c = CodecConfig {
            strides: vec![2, 3],
            ema_codebooks: false,
            ..Default::default()
        };
        assert_eq!(CodecConfig::from_metadata(&c.to_metadata())?, c);
        let mut m = c.to_metadata();
        m.remove("codec.channels");
        assert!(CodecConfig::from_metadata(&m).is_err());
        Ok(())
    }
}
