//! WAV reading/writing and resampling: round trips in every sample format, files made byte by
//! byte the way other tools write them, malformed and unsupported files (errors that name the
//! file and say what is wrong), and resampled sines compared with the analytic signal.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use tensor_io::resample::{resample, ResampleQuality};
use tensor_io::wav::{read_wav, write_wav, Audio, SampleFormat};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tensor-io-wav-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A RIFF/WAVE file from a fmt chunk body and raw data bytes, with an extra `LIST` chunk in
/// between the way many editors write one, so the reader must skip unknown chunks.
fn riff(fmt: &[u8], data: &[u8], declared_data_len: Option<u32>) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&0u32.to_le_bytes()); // patched below
    b.extend_from_slice(b"WAVE");
    b.extend_from_slice(b"fmt ");
    b.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    b.extend_from_slice(fmt);
    let list = b"INFOISFT\x05\x00\x00\x00test\x00\x00"; // odd-length string, padded
    b.extend_from_slice(b"LIST");
    b.extend_from_slice(&(list.len() as u32).to_le_bytes());
    b.extend_from_slice(list);
    b.extend_from_slice(b"data");
    b.extend_from_slice(&declared_data_len.unwrap_or(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    let riff_len = (b.len() - 8) as u32;
    b[4..8].copy_from_slice(&riff_len.to_le_bytes());
    b
}

/// A plain (WAVEFORMATEX, 16-byte) fmt chunk.
fn fmt_chunk(tag: u16, channels: u16, rate: u32, bits: u16) -> Vec<u8> {
    let block = channels * bits.div_ceil(8);
    let mut f = Vec::new();
    f.extend_from_slice(&tag.to_le_bytes());
    f.extend_from_slice(&channels.to_le_bytes());
    f.extend_from_slice(&rate.to_le_bytes());
    f.extend_from_slice(&(rate * block as u32).to_le_bytes());
    f.extend_from_slice(&block.to_le_bytes());
    f.extend_from_slice(&bits.to_le_bytes());
    f
}

/// A WAVE_FORMAT_EXTENSIBLE fmt chunk (40 bytes), as 24-bit and multi-channel writers use.
fn fmt_extensible(sub_tag: u16, channels: u16, rate: u32, container: u16, valid: u16) -> Vec<u8> {
    let mut f = fmt_chunk(0xfffe, channels, rate, container);
    f.extend_from_slice(&22u16.to_le_bytes()); // cbSize
    f.extend_from_slice(&valid.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes()); // channel mask
    f.extend_from_slice(&sub_tag.to_le_bytes());
    // The rest of the KSDATAFORMAT_SUBTYPE GUID.
    f.extend_from_slice(&[
        0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38, 0x9b, 0x71,
    ]);
    f
}

fn read_err(path: &Path) -> String {
    read_wav(path)
        .expect_err("a malformed file must be an error")
        .to_string()
}

/// Samples on the grid of a `bits`-bit format (so a round trip must be exact), covering both
/// extremes, zero and values in between.
fn grid_samples(bits: u16, n: usize) -> Vec<f32> {
    let full = (1u64 << (bits - 1)) as f64;
    (0..n)
        .map(|i| {
            let code = match i {
                0 => -full,
                1 => full - 1.0,
                2 => 0.0,
                _ => ((i as f64 * 0.7371).sin() * (full - 1.0)).round(),
            };
            (code / full) as f32
        })
        .collect()
}

#[test]
fn round_trip_every_format_mono_and_stereo() {
    let dir = tmpdir("rt");
    for format in [
        SampleFormat::Int8,
        SampleFormat::Int16,
        SampleFormat::Int24,
        SampleFormat::Int32,
        SampleFormat::Float32,
    ] {
        for channels in [1u16, 2, 3] {
            let bits = if format.is_float() { 24 } else { format.bits() };
            let samples = grid_samples(bits, 301 * channels as usize);
            let audio = Audio::new(22050, channels, samples).unwrap();
            let p = dir.join(format!("{format:?}-{channels}.wav"));
            write_wav(&p, &audio, format).unwrap();
            let back = read_wav(&p).unwrap();
            assert_eq!(back.sample_rate, 22050);
            assert_eq!(back.channels, channels);
            assert_eq!(back.frames(), 301);
            assert_eq!(back.samples, audio.samples, "{format:?} {channels} ch");
        }
    }
    // Float32 keeps headroom; integer formats clip it.
    let loud = Audio::new(8000, 1, vec![1.5, -2.0, 0.25]).unwrap();
    let p = dir.join("loud.wav");
    write_wav(&p, &loud, SampleFormat::Float32).unwrap();
    assert_eq!(read_wav(&p).unwrap().samples, vec![1.5, -2.0, 0.25]);
    write_wav(&p, &loud, SampleFormat::Int16).unwrap();
    assert_eq!(
        read_wav(&p).unwrap().samples,
        vec![32767.0 / 32768.0, -1.0, 0.25]
    );
    // Off-grid values round to the nearest code (within half a step).
    let x: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.01).sin() * 0.9).collect();
    write_wav(
        &p,
        &Audio::new(8000, 1, x.clone()).unwrap(),
        SampleFormat::Int16,
    )
    .unwrap();
    let y = read_wav(&p).unwrap().samples;
    let worst = x
        .iter()
        .zip(&y)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 0.5 / 32768.0 + 1e-9,
        "worst rounding error {worst}"
    );
    // No temporary files are left behind by the atomic writer.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn reads_24_bit_files_written_by_other_tools() {
    let dir = tmpdir("24");
    // Three stereo frames of known codes, packed little-endian in 3 bytes.
    let codes: [i32; 6] = [0, -1, 8_388_607, -8_388_608, 4_194_304, -123_456];
    let mut data = Vec::new();
    for c in codes {
        data.extend_from_slice(&c.to_le_bytes()[..3]);
    }
    let want: Vec<f32> = codes.iter().map(|&c| c as f32 / 8_388_608.0).collect();

    let plain = dir.join("plain24.wav");
    std::fs::write(&plain, riff(&fmt_chunk(1, 2, 48000, 24), &data, None)).unwrap();
    let a = read_wav(&plain).unwrap();
    assert_eq!((a.sample_rate, a.channels, a.frames()), (48000, 2, 3));
    assert_eq!(a.samples, want);
    assert_eq!(a.channel(0), vec![want[0], want[2], want[4]]);
    assert_eq!(a.channel(1), vec![want[1], want[3], want[5]]);

    let ext = dir.join("ext24.wav");
    std::fs::write(
        &ext,
        riff(&fmt_extensible(1, 2, 48000, 24, 24), &data, None),
    )
    .unwrap();
    assert_eq!(read_wav(&ext).unwrap().samples, want);

    // 24 valid bits left-justified in 32-bit containers (WAVE_FORMAT_EXTENSIBLE).
    let ext32 = dir.join("ext24in32.wav");
    let data32: Vec<u8> = codes.iter().flat_map(|&c| (c << 8).to_le_bytes()).collect();
    std::fs::write(
        &ext32,
        riff(&fmt_extensible(1, 2, 48000, 32, 24), &data32, None),
    )
    .unwrap();
    assert_eq!(read_wav(&ext32).unwrap().samples, want);

    // 8-bit WAV is unsigned with 128 as zero.
    let u8p = dir.join("u8.wav");
    std::fs::write(
        &u8p,
        riff(&fmt_chunk(1, 1, 8000, 8), &[128, 0, 255, 192], None),
    )
    .unwrap();
    assert_eq!(
        read_wav(&u8p).unwrap().samples,
        vec![0.0, -1.0, 127.0 / 128.0, 0.5]
    );

    // 32-bit float written by hand.
    let f32p = dir.join("f32.wav");
    let fdata: Vec<u8> = [0.5f32, -0.75]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write(&f32p, riff(&fmt_chunk(3, 1, 16000, 32), &fdata, None)).unwrap();
    assert_eq!(read_wav(&f32p).unwrap().samples, vec![0.5, -0.75]);
}

#[test]
fn malformed_and_unsupported_files_are_clear_errors() {
    let dir = tmpdir("bad");
    let missing = dir.join("nope.wav");
    let e = read_err(&missing);
    assert!(e.contains("nope.wav") && e.contains("cannot read"), "{e}");

    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "text.wav",
            b"hello, this is not audio at all".to_vec(),
            &["not a RIFF/WAVE", "\"hell\""],
        ),
        (
            "tiny.wav",
            b"RIFF".to_vec(),
            &["not a RIFF/WAVE", "4 bytes"],
        ),
        (
            "avi.wav",
            {
                let mut b = riff(&fmt_chunk(1, 1, 8000, 16), &[0, 0], None);
                b[8..12].copy_from_slice(b"AVI ");
                b
            },
            &["not a RIFF/WAVE", "AVI"],
        ),
        (
            "alaw.wav",
            riff(&fmt_chunk(6, 1, 8000, 8), &[0xd5; 8], None),
            &["A-law", "0x0006", "unsupported"],
        ),
        (
            "mulaw-ext.wav",
            riff(&fmt_extensible(7, 1, 8000, 8, 8), &[0xff; 8], None),
            &["mu-law", "unsupported"],
        ),
        (
            "f64.wav",
            riff(&fmt_chunk(3, 1, 8000, 64), &[0; 16], None),
            &["64-bit float", "unsupported"],
        ),
        (
            "pcm12.wav",
            riff(&fmt_chunk(1, 1, 8000, 12), &[0; 8], None),
            &["12-bit integer PCM", "unsupported"],
        ),
        (
            "ext20.wav",
            riff(&fmt_extensible(1, 1, 8000, 24, 20), &[0; 6], None),
            &["20-bit integer PCM"],
        ),
        (
            "trunc-data.wav",
            riff(&fmt_chunk(1, 2, 8000, 16), &[0; 40], Some(4000)),
            &["truncated", "4000", "40"],
        ),
        (
            "trunc-frame.wav",
            riff(&fmt_chunk(1, 2, 8000, 16), &[0; 6], None),
            &["truncated", "4-byte frames"],
        ),
        (
            "no-data.wav",
            {
                let b = riff(&fmt_chunk(1, 1, 8000, 16), &[], None);
                b[..b.len() - 8].to_vec()
            },
            &["truncated", "data chunk"],
        ),
        (
            "trunc-fmt.wav",
            riff(&fmt_chunk(1, 1, 8000, 16), &[], None)[..30].to_vec(),
            &["fmt chunk"],
        ),
        (
            "zero-ch.wav",
            riff(&fmt_chunk(1, 0, 8000, 16), &[], None),
            &["zero channels"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = read_err(&p);
        assert!(
            e.contains(name),
            "{name}: message does not name the file: {e}"
        );
        for n in needles {
            assert!(e.contains(n), "{name}: expected {n:?} in: {e}");
        }
    }
}

#[test]
fn write_rejects_bad_audio_and_leaves_the_old_file() {
    let dir = tmpdir("wbad");
    let p = dir.join("keep.wav");
    let good = Audio::new(8000, 1, vec![0.5; 10]).unwrap();
    write_wav(&p, &good, SampleFormat::Int16).unwrap();
    let nan = Audio {
        sample_rate: 8000,
        channels: 1,
        samples: vec![0.0, f32::NAN],
    };
    let e = write_wav(&p, &nan, SampleFormat::Int16)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("keep.wav") && e.contains("sample 1") && e.contains("NaN"),
        "{e}"
    );
    let ragged = Audio {
        sample_rate: 8000,
        channels: 2,
        samples: vec![0.0; 3],
    };
    let e = write_wav(&p, &ragged, SampleFormat::Int16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("whole number"), "{e}");
    let e = write_wav(dir.join("no/such/dir/x.wav"), &good, SampleFormat::Int16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.wav"), "{e}");
    assert_eq!(read_wav(&p).unwrap(), {
        let mut g = good.clone();
        g.samples = vec![0.5; 10];
        g
    });
    assert!(Audio::new(8000, 2, vec![0.0; 3]).is_err());
    assert!(Audio::new(0, 1, vec![]).is_err());
}

#[test]
fn audio_helpers_and_tensor_round_trip() {
    let dev = tensor_cpu::device();
    let a = Audio::new(16000, 2, vec![1.0, 3.0, -1.0, 1.0, 0.5, 0.5]).unwrap();
    assert_eq!(a.frames(), 3);
    assert!((a.duration_secs() - 3.0 / 16000.0).abs() < 1e-12);
    assert_eq!(a.to_mono().samples, vec![2.0, 0.0, 0.5]);
    assert_eq!(a.channel(1), vec![3.0, 1.0, 0.5]);
    assert!(a.channel(2).is_empty());
    let t = a.to_tensor(&dev).unwrap();
    assert_eq!(t.dims(), &[2, 3]);
    assert_eq!(
        t.to_vec::<f32>().unwrap(),
        vec![1.0, -1.0, 0.5, 3.0, 1.0, 0.5]
    );
    assert_eq!(Audio::from_tensor(&t, 16000).unwrap(), a);
    let mono = tensor_core::Tensor::from_vec(vec![0.25f64, -0.5], 2, &dev).unwrap();
    let m = Audio::from_tensor(&mono, 8000).unwrap();
    assert_eq!((m.channels, m.samples.clone()), (1, vec![0.25, -0.5]));
    let cube = tensor_core::Tensor::zeros((1, 1, 4), tensor_core::DType::F32, &dev).unwrap();
    let e = Audio::from_tensor(&cube, 8000).unwrap_err().to_string();
    assert!(e.contains("[channels, frames]"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Resampling

fn sine(rate: u32, secs: f64, freq: f64, phase: f64) -> Vec<f32> {
    let n = (rate as f64 * secs).round() as usize;
    (0..n)
        .map(|i| (2.0 * PI * freq * i as f64 / rate as f64 + phase).sin() as f32)
        .collect()
}

/// Largest deviation from the analytic sine away from the clip's edges (where the abrupt start
/// and end of the input ring through any band-limited filter), and the fitted phase offset of
/// the whole interior in radians.
fn sine_error(y: &[f32], rate: u32, freq: f64, phase: f64, margin: usize) -> (f64, f64) {
    let (mut worst, mut ss, mut sc) = (0f64, 0f64, 0f64);
    for (i, &v) in y.iter().enumerate().take(y.len() - margin).skip(margin) {
        let arg = 2.0 * PI * freq * i as f64 / rate as f64 + phase;
        worst = worst.max((v as f64 - arg.sin()).abs());
        ss += v as f64 * arg.sin();
        sc += v as f64 * arg.cos();
    }
    (worst, sc.atan2(ss))
}

#[test]
fn resampled_sine_keeps_frequency_and_phase() {
    for (from, to) in [
        (44100u32, 16000u32),
        (22050, 16000),
        (16000, 44100),
        (44117, 16000),
        (8000, 16000),
    ] {
        let x = Audio::new(from, 1, sine(from, 0.5, 440.0, 0.3)).unwrap();
        let want_len = ((x.frames() as f64) * to as f64 / from as f64).round() as usize;
        for (q, tol) in [(ResampleQuality::High, 1e-3), (ResampleQuality::Fast, 2e-3)] {
            let y = resample(&x, to, q).unwrap();
            assert_eq!(y.sample_rate, to);
            assert_eq!(y.frames(), want_len, "{from}->{to} {q:?}");
            let (worst, dphase) = sine_error(&y.samples, to, 440.0, 0.3, (to / 100) as usize);
            eprintln!("{from}->{to} {q:?}: max error {worst:.2e}, phase {dphase:.2e} rad");
            assert!(worst < tol, "{from}->{to} {q:?}: max error {worst}");
            assert!(
                dphase.abs() < tol,
                "{from}->{to} {q:?}: phase off by {dphase} rad"
            );
        }
    }
}

#[test]
fn resample_handles_channels_lengths_and_identity() {
    // Two channels with different tones: each must come out with its own tone.
    let (from, to) = (48000u32, 16000u32);
    let a = sine(from, 0.25, 300.0, 0.0);
    let b = sine(from, 0.25, 1000.0, 1.0);
    let inter: Vec<f32> = a.iter().zip(&b).flat_map(|(x, y)| [*x, *y]).collect();
    let x = Audio::new(from, 2, inter).unwrap();
    for q in [ResampleQuality::High, ResampleQuality::Fast] {
        let y = resample(&x, to, q).unwrap();
        assert_eq!((y.channels, y.frames()), (2, 4000));
        let (e0, _) = sine_error(&y.channel(0), to, 300.0, 0.0, 160);
        let (e1, _) = sine_error(&y.channel(1), to, 1000.0, 1.0, 160);
        assert!(e0 < 5e-3 && e1 < 5e-3, "{q:?}: {e0} {e1}");
    }
    // Output length is round(frames * to / from), also for tiny clips.
    for n in [0usize, 1, 2, 3, 7, 100, 1001] {
        let x = Audio::new(44100, 1, vec![0.1; n]).unwrap();
        let want = ((n as f64) * 16000.0 / 44100.0).round() as usize;
        for q in [ResampleQuality::High, ResampleQuality::Fast] {
            assert_eq!(
                resample(&x, 16000, q).unwrap().frames(),
                want,
                "n={n} {q:?}"
            );
        }
    }
    // Equal rates: unchanged.
    let x = Audio::new(16000, 1, sine(16000, 0.01, 440.0, 0.0)).unwrap();
    assert_eq!(resample(&x, 16000, ResampleQuality::High).unwrap(), x);
    assert!(resample(&x, 0, ResampleQuality::Fast).is_err());
}

#[test]
fn high_quality_removes_what_the_new_rate_cannot_hold() {
    // A 10 kHz tone cannot exist at 16 kHz (Nyquist 8 kHz). High filters it out; Fast, which has
    // no anti-aliasing filter, folds it down to 6 kHz.
    for from in [44100u32, 44117] {
        let x = Audio::new(from, 1, sine(from, 0.5, 10_000.0, 0.0)).unwrap();
        let rms = |q| {
            let y = resample(&x, 16000, q).unwrap().samples;
            let body = &y[400..y.len() - 400];
            (body.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / body.len() as f64).sqrt()
        };
        let (high, fast) = (rms(ResampleQuality::High), rms(ResampleQuality::Fast));
        eprintln!("{from} Hz, 10 kHz tone -> 16 kHz: rms High {high:.2e}, Fast {fast:.2e}");
        assert!(high < 1e-3, "{from}: High left rms {high}");
        assert!(fast > 0.3, "{from}: Fast rms {fast}");
    }
}
