//! The codec model (shapes, encode/decode consistency, a short training run lowering the
//! loss), the codes file (round trip, every read error) and the metrics (known values).

use std::path::PathBuf;

use tensor_audio::codec::{Codec, CodecConfig};
use tensor_audio::codes::{CodesFile, MAGIC};
use tensor_audio::metrics::{mu_law_baseline, mu_law_decode, mu_law_encode, si_snr};
use tensor_core::{manual_seed, DType, Result, Tensor};
use tensor_nn::optim::{AdamW, AdamWConfig, Optimizer};
use tensor_nn::{Checkpoint, VarBuilder, VarMap};

fn dev() -> tensor_core::Device {
    tensor_cpu::device()
}

fn tiny() -> CodecConfig {
    CodecConfig {
        channels: 4,
        strides: vec![2, 3],
        latent_dim: 8,
        codebook_size: 16,
        num_quantizers: 3,
        dilations: vec![1, 3],
        ..Default::default()
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tensor-audio-codec-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// A few sine mixtures, `[b, 1, t]`.
fn tones(b: usize, t: usize, seed: u64) -> Result<Tensor> {
    let mut v = Vec::with_capacity(b * t);
    for i in 0..b {
        let f1 = 200.0 + 97.0 * ((i as u64 + seed) % 7) as f64;
        let f2 = 1100.0 + 131.0 * ((i as u64 * 3 + seed) % 5) as f64;
        for n in 0..t {
            let tt = n as f64 / 16000.0;
            let x = 0.3 * (2.0 * std::f64::consts::PI * f1 * tt).sin()
                + 0.1 * (2.0 * std::f64::consts::PI * f2 * tt).sin();
            v.push(x as f32);
        }
    }
    Tensor::from_vec(v, (b, 1, t), &dev())
}

#[test]
fn shapes_lengths_and_bitrate() -> Result<()> {
    manual_seed(0);
    let map = VarMap::new();
    let codec = Codec::new(&VarBuilder::from_varmap(&map, DType::F32, &dev()), tiny())?;
    assert_eq!(codec.hop_length(), 6);
    // 50 samples → 9 frames (the input is padded to 54).
    let x = tones(2, 50, 1)?;
    let codes = codec.encode(&x, 2)?;
    assert_eq!(codes.dims(), &[2, 2, 9]);
    assert_eq!(codes.dtype(), DType::I64);
    let y = codec.decode(&codes)?;
    assert_eq!(y.dims(), &[2, 1, 54]);
    assert_eq!(codec.decode_len(&codes, 50)?.dims(), &[2, 1, 50]);
    let out = codec.forward_train(&x, 3, false)?;
    assert_eq!(out.audio.dims(), &[2, 1, 50]);
    assert_eq!(out.codes.dims(), &[2, 3, 9]);
    // Eval-mode forward = decode(encode) on the same codes.
    let codes3 = codec.encode(&x, 3)?;
    assert_eq!(
        out.codes.to_vec::<i64>()?,
        codes3.flatten_all()?.to_vec::<i64>()?
    );
    let y3 = codec.decode_len(&codes3, 50)?;
    let diff = out
        .audio
        .sub(&y3)?
        .abs()?
        .max(tensor_core::AllDims)?
        .to_f64()?;
    assert!(
        diff < 1e-5,
        "forward_train and decode(encode) differ by {diff}"
    );
    // Bad inputs are errors.
    assert!(codec.encode(&x, 0).is_err());
    assert!(codec.encode(&x, 4).is_err());
    assert!(codec
        .encode(&Tensor::zeros((2, 2, 50), DType::F32, &dev())?, 1)
        .is_err());
    assert!(codec
        .decode(&Tensor::zeros((1, 4, 3), DType::I64, &dev())?)
        .is_err());
    let big = Tensor::from_vec(vec![16i64, 0, 0], (1, 1, 3), &dev())?;
    assert!(codec.decode(&big).is_err());
    assert!(codec.decode_len(&codes, 55).is_err());
    let bad = CodecConfig {
        strides: vec![2, 1],
        ..tiny()
    };
    assert!(Codec::new(
        &VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev()),
        bad
    )
    .is_err());
    Ok(())
}

#[test]
fn training_lowers_the_loss_and_checkpoints_load() -> Result<()> {
    manual_seed(3);
    let map = VarMap::new();
    let cfg = tiny();
    let codec = Codec::new(
        &VarBuilder::from_varmap(&map, DType::F32, &dev()),
        cfg.clone(),
    )?;
    let mut opt = AdamW::new(
        map.trainable_vars(),
        AdamWConfig {
            lr: 3e-3,
            ..Default::default()
        },
    )?;
    let x = tones(4, 240, 5)?;
    let loss_of = |train: bool| -> Result<Tensor> {
        let out = codec.forward_train(&x, 3, train)?;
        out.audio
            .sub(&x)?
            .abs()?
            .mean_all()?
            .add(&out.commitment_loss)
    };
    let first = loss_of(false)?.to_f64()?;
    for _ in 0..60 {
        let loss = loss_of(true)?;
        let g = loss.backward()?;
        opt.step(&g)?;
    }
    let last = loss_of(false)?.to_f64()?;
    assert!(last < 0.7 * first, "loss {first} -> {last}");

    // Save as a training checkpoint and load back: identical codes and audio.
    let path = tmp("tiny.safetensors");
    Checkpoint {
        model: map.state_dict(),
        metadata: cfg.to_metadata(),
        ..Default::default()
    }
    .save(&path)?;
    let loaded = Codec::load(&path, &dev())?;
    assert_eq!(loaded.config(), &cfg);
    let a = codec.encode(&x, 2)?;
    let b = loaded.encode(&x, 2)?;
    assert_eq!(a.to_vec::<i64>()?, b.to_vec::<i64>()?);
    assert_eq!(
        codec.decode(&a)?.to_vec::<f32>()?,
        loaded.decode(&b)?.to_vec::<f32>()?
    );
    // A checkpoint without the codec config is refused with a message saying so.
    Checkpoint {
        model: map.state_dict(),
        ..Default::default()
    }
    .save(&path)?;
    let e = Codec::load(&path, &dev()).unwrap_err().to_string();
    assert!(e.contains("codec.sample_rate"), "{e}");
    Ok(())
}

fn sample_file() -> CodesFile {
    let (n_q, frames) = (3, 7);
    CodesFile {
        sample_rate: 16000,
        hop_length: 320,
        codebook_size: 1000,
        n_q,
        frames,
        samples: 6 * 320 + 5,
        codes: (0..n_q * frames)
            .map(|i| (i as u32 * 337 + 999) % 1000)
            .collect(),
    }
}

#[test]
fn codes_file_round_trip() -> Result<()> {
    let f = sample_file();
    let bytes = f.to_bytes()?;
    // 33-byte header + ceil(21 codes · 10 bits / 8) bytes.
    assert_eq!(bytes.len(), 33 + 27);
    assert_eq!(&bytes[..4], &MAGIC);
    assert_eq!(CodesFile::from_bytes(&bytes)?, f);
    let path = tmp("a.codes");
    f.write(&path)?;
    assert_eq!(CodesFile::read(&path)?, f);
    // Through a tensor.
    let t = f.to_tensor(&dev())?;
    assert_eq!(t.dims(), &[1, 3, 7]);
    let g = CodesFile::from_tensor(&t, 16000, 320, 1000, 6 * 320 + 5)?;
    assert_eq!(g, f);
    assert!((f.bitrate_kbps() - 1.5).abs() < 1e-12);
    // Every width from 1 to 16 bits packs and unpacks.
    for bits in 1..=16u32 {
        let size = 1u32 << bits;
        let g = CodesFile {
            codebook_size: size,
            codes: (0..21).map(|i| (i * 7919 + 13) % size).collect(),
            ..sample_file()
        };
        assert_eq!(CodesFile::from_bytes(&g.to_bytes()?)?, g, "{bits} bits");
    }
    Ok(())
}

fn read_err(b: &[u8]) -> String {
    CodesFile::from_bytes(b).unwrap_err().to_string()
}

#[test]
fn codes_file_errors() -> Result<()> {
    let good = sample_file().to_bytes()?;
    let mut b = good.clone();
    b[0] = b'X';
    assert!(read_err(&b).contains("magic"));
    assert!(read_err(&good[..20]).contains("truncated header"));
    assert!(read_err(&good[..good.len() - 1]).contains("truncated"));
    let mut b = good.clone();
    b.push(0);
    assert!(read_err(&b).contains("trailing"));
    let mut b = good.clone();
    b[4] = 9;
    assert!(read_err(&b).contains("version 9"));
    // Bits that do not match the codebook size.
    let mut b = good.clone();
    b[18] = 11;
    assert!(read_err(&b).contains("bits per code"));
    // A code ≥ codebook size (1000 < 1024 fit in 10 bits): set the first code to 1023.
    let mut b = good.clone();
    b[33] = 0xff;
    b[34] |= 0x03;
    assert!(read_err(&b).contains("outside the codebook"));
    // Frames inconsistent with the samples.
    let mut b = good.clone();
    b[25] = 0;
    b[26] = 0;
    assert!(read_err(&b).contains("frames"));
    // Missing file, and writing codes outside the codebook.
    assert!(CodesFile::read(tmp("missing.codes")).is_err());
    let t = Tensor::from_vec(vec![5i64, 1000], (1, 1, 2), &dev())?;
    assert!(CodesFile::from_tensor(&t, 16000, 320, 1000, 600).is_err());
    let t = Tensor::from_vec(vec![0.5f32, 1.0], (1, 1, 2), &dev())?;
    assert!(CodesFile::from_tensor(&t, 16000, 320, 1000, 600).is_err());
    Ok(())
}

fn noise(n: usize, seed: u64) -> Vec<f32> {
    Tensor::randn_seeded(0.0, 1.0, n, DType::F32, &dev(), seed)
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn si_snr_known_values() -> Result<()> {
    let x: Vec<f32> = (0..8000)
        .map(|n| (n as f32 * 0.05).sin() + 0.3 * (n as f32 * 0.31).cos())
        .collect();
    // A scaled copy (and an offset one) is perfect.
    let x2: Vec<f32> = x.iter().map(|v| 2.0 * v + 0.25).collect();
    assert!(si_snr(&x, &x2)? > 100.0);
    // Noise at a set SNR: x + n with |n|² = |x|² / 10^(snr/10).
    let nz = noise(x.len(), 11);
    let px: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
    let pn: f64 = nz.iter().map(|&v| (v as f64).powi(2)).sum();
    for snr in [-5.0, 0.0, 10.0, 20.0] {
        let g = (px / pn / 10f64.powf(snr / 10.0)).sqrt();
        let y: Vec<f32> = x
            .iter()
            .zip(&nz)
            .map(|(&a, &b)| a + (g * b as f64) as f32)
            .collect();
        let got = si_snr(&x, &y)?;
        assert!((got - snr).abs() < 0.2, "SNR {snr}: SI-SNR {got}");
    }
    // Orthogonal: very negative. Wrong lengths: error.
    let s: Vec<f32> = (0..1000).map(|n| (n as f32 * 0.1).sin()).collect();
    let c: Vec<f32> = (0..1000).map(|n| (n as f32 * 0.1).cos()).collect();
    assert!(si_snr(&s, &c)? < -20.0);
    assert!(si_snr(&s, &c[..999]).is_err());
    assert!(si_snr(&[0.0; 4], &[1.0, 2.0, 3.0, 4.0]).is_err());
    Ok(())
}

#[test]
fn mu_law_known_values() -> Result<()> {
    // torchaudio.functional.mu_law_encoding(torch.tensor([-1., -0.5, 0., 0.01, 0.5, 1.]), 256)
    // = [0, 16, 128, 157, 239, 255] (its formula, evaluated in PyTorch).
    let x = [-1.0f32, -0.5, 0.0, 0.01, 0.5, 1.0];
    assert_eq!(mu_law_encode(&x, 8)?, [0, 16, 128, 157, 239, 255]);
    // Out of range input is clipped.
    assert_eq!(mu_law_encode(&[-3.0, 3.0], 8)?, [0, 255]);
    // Decoding: the ends are exact, small values are fine-grained.
    let d = mu_law_decode(&[0, 128, 255], 8)?;
    assert!((d[0] + 1.0).abs() < 1e-6 && (d[2] - 1.0).abs() < 1e-6);
    assert!(d[1].abs() < 1e-4);
    assert!(mu_law_decode(&[256], 8).is_err());
    assert!(mu_law_encode(&x, 1).is_err());
    // 8-bit µ-law of a speech-level tone is about 38 dB SNR; 4-bit much worse.
    let t: Vec<f32> = (0..16000).map(|n| 0.1 * (n as f32 * 0.07).sin()).collect();
    let r8 = mu_law_decode(&mu_law_encode(&t, 8)?, 8)?;
    let r4 = mu_law_decode(&mu_law_encode(&t, 4)?, 4)?;
    let (s8, s4) = (si_snr(&t, &r8)?, si_snr(&t, &r4)?);
    assert!(s8 > 30.0 && s8 < 45.0, "{s8}");
    assert!(s4 < s8 - 15.0, "{s4}");
    // The baseline's bitrate, with an identity "resampler" at the full rate.
    let id = |v: &[f32], _: u32, _: u32| -> Result<Vec<f32>> { Ok(v.to_vec()) };
    let (y, kbps) = mu_law_baseline(&t, 8000, 8000, 8, &id)?;
    assert_eq!(kbps, 64.0);
    assert_eq!(y, r8);
    // Decimation by 2 with sample-and-hold: the length comes back.
    let half = |v: &[f32], from: u32, to: u32| -> Result<Vec<f32>> {
        Ok(if to < from {
            v.iter().step_by(2).copied().collect()
        } else {
            v.iter().flat_map(|&s| [s, s]).collect()
        })
    };
    let (y, kbps) = mu_law_baseline(&t[..999], 16000, 8000, 4, &half)?;
    assert_eq!((y.len(), kbps), (999, 32.0));
    assert!(mu_law_baseline(&t, 8000, 16000, 8, &id).is_err());
    Ok(())
}

#[test]
fn log_mel_distance_orders_degradations() -> Result<()> {
    use tensor_audio::metrics::{log_mel_distance, LogMelDistance};
    let x: Vec<f32> = (0..16000)
        .map(|n| 0.3 * (n as f32 * 0.05).sin() + 0.1 * (n as f32 * 0.41).sin())
        .collect();
    let d = LogMelDistance::new(16000, &dev())?;
    assert_eq!(d.distance(&x, &x)?, 0.0);
    // A gain change moves every log-mel bin by ln(gain) (above the floor).
    let x2: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
    let g = d.distance(&x, &x2)?;
    assert!(g > 0.3 && g < std::f64::consts::LN_2 + 1e-3, "{g}");
    let nz = noise(x.len(), 4);
    let noisy = |a: f32| -> Vec<f32> { x.iter().zip(&nz).map(|(v, n)| v + a * n).collect() };
    let (small, big) = (
        d.distance(&x, &noisy(0.001))?,
        d.distance(&x, &noisy(0.05))?,
    );
    assert!(0.0 < small && small < big, "{small} {big}");
    assert_eq!(log_mel_distance(&x, &noisy(0.05), 16000, &dev())?, big);
    assert!(d.distance(&x, &x[..100]).is_err());
    Ok(())
}

#[test]
fn neg_snr_values_and_gradients() -> Result<()> {
    use tensor_audio::losses::neg_snr;
    use tensor_core::conformance::gradcheck::{check_grad, input};
    let x = tones(2, 300, 1)?;
    // A silent estimate is 0 dB, a half-amplitude one 10·log10(1/4), the reference itself
    // far below.
    let zero = x.zeros_like()?;
    assert!(neg_snr(&x, &zero)?.to_f64()?.abs() < 1e-6);
    let half = neg_snr(&x, &x.mul_scalar(0.5)?)?.to_f64()?;
    assert!((half - 10.0 * 0.25f64.log10()).abs() < 1e-4, "{half}");
    assert!(neg_snr(&x, &x)?.to_f64()? < -60.0);
    // The ratio is over the whole batch: a silent row does not dominate.
    let rows = Tensor::cat(&[&x.narrow(0, 0, 1)?, &zero.narrow(0, 0, 1)?], 0)?;
    let est = Tensor::cat(
        &[&x.narrow(0, 0, 1)?.mul_scalar(0.5)?, &zero.narrow(0, 0, 1)?],
        0,
    )?;
    assert!((neg_snr(&rows, &est)?.to_f64()? - half).abs() < 1e-4);
    assert!(neg_snr(&x, &x.narrow(2, 0, 10)?).is_err());
    // Gradients in the estimate (the reference is detached) by finite differences.
    let r = input((2, 1, 12), &tensor_cpu::device(), 3)?;
    check_grad(
        "neg_snr",
        &[input((2, 1, 12), &tensor_cpu::device(), 4)?],
        |t| neg_snr(&r, &t[0]),
    )
}

#[test]
fn codec_loss_terms_and_gradients() -> Result<()> {
    use tensor_audio::losses::{CodecLoss, CodecLossConfig};
    manual_seed(4);
    let map = VarMap::new();
    let codec = Codec::new(&VarBuilder::from_varmap(&map, DType::F32, &dev()), tiny())?;
    let mut cfg = CodecLossConfig::new(16000);
    cfg.stft_scales = vec![256, 128, 64];
    let loss = CodecLoss::new(cfg, &dev())?;
    let x = tones(2, 600, 2)?;
    let out = codec.forward_train(&x, 2, false)?;
    let terms = loss.compute(&x, &out)?;
    let names: Vec<&str> = terms.terms.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "total",
            "waveform_l1",
            "stft_sc",
            "stft_logmag",
            "mel_l1",
            "neg_snr",
            "commitment"
        ]
    );
    let v = terms.values()?;
    // The total is the weighted sum (weights 1, the SNR's 3): SC and log-mag enter together.
    let sum: f64 = v[1..]
        .iter()
        .map(|(n, x)| if *n == "neg_snr" { 3.0 * x } else { *x })
        .sum();
    assert!((v[0].1 - sum).abs() < 1e-4 * sum.abs().max(1.0), "{v:?}");
    assert!(
        v.iter()
            .all(|(n, x)| x.is_finite() && (*n == "neg_snr" || *x >= 0.0)),
        "{v:?}"
    );
    // Every trainable parameter gets a gradient.
    let g = terms.total.backward()?;
    for (name, var) in map.trainable_vars() {
        let gv = g
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(gv.abs()?.sum_all()?.to_f64()?.is_finite());
    }
    // A perfect reconstruction has zero reconstruction terms.
    let same = tensor_audio::codec::CodecOutput {
        audio: x.clone(),
        ..out.clone()
    };
    let v = loss.compute(&x, &same)?.values()?;
    for (n, val) in &v[1..5] {
        assert!(val.abs() < 1e-5, "{n} = {val}");
    }
    assert!(v[5].1 < -60.0, "a perfect SNR term: {:?}", v[5]);
    // Mismatched shapes and signals shorter than every window are errors.
    let short = CodecLoss::new(
        CodecLossConfig {
            stft_scales: vec![2048],
            mel: 0.0,
            ..CodecLossConfig::new(16000)
        },
        &dev(),
    )?;
    assert!(short.compute(&x, &out).is_err());
    let wrong = tensor_audio::codec::CodecOutput {
        audio: x.narrow(2, 0, 500)?,
        ..out
    };
    assert!(loss.compute(&x, &wrong).is_err());
    Ok(())
}

/// The codec's encoder and decoder (every conv, transposed conv, residual unit and
/// activation, with odd and even strides) against finite differences in f64, for the input
/// and every weight.
#[test]
fn encoder_decoder_gradients_match_finite_differences() -> Result<()> {
    use std::collections::HashMap;
    use tensor_core::conformance::gradcheck::{check_grad_tol, input};
    for strides in [vec![2], vec![5], vec![3, 2], vec![8]] {
        manual_seed(1);
        let map = VarMap::new();
        let cfg = CodecConfig {
            channels: 2,
            strides: strides.clone(),
            latent_dim: 3,
            codebook_size: 4,
            num_quantizers: 2,
            dilations: vec![1],
            kernel_size: 3,
            ..Default::default()
        };
        Codec::new(
            &VarBuilder::from_varmap(&map, DType::F64, &dev()),
            cfg.clone(),
        )?;
        let stored = map.state_dict();
        let mut names: Vec<String> = stored
            .keys()
            .filter(|k| !k.starts_with("quantizer"))
            .cloned()
            .collect();
        names.sort();
        let hop: usize = strides.iter().product();
        let mut inputs = vec![input((1, 1, 2 * hop), &dev(), 7)?];
        for n in &names {
            inputs.push(stored[n].detach());
        }
        check_grad_tol(&format!("codec {strides:?}"), &inputs, 1e-6, 1e-4, |t| {
            let mut m: HashMap<String, Tensor> = stored.clone();
            for (n, v) in names.iter().zip(&t[1..]) {
                m.insert(n.clone(), v.clone());
            }
            let codec = Codec::new(
                &VarBuilder::from_tensors(m, DType::F64, &dev()),
                cfg.clone(),
            )?;
            codec.decode_latent(&codec.encode_latent(&t[0])?)
        })?;
    }
    Ok(())
}
