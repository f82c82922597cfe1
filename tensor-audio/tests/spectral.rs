//! `tensor_audio::spectral` against torch/torchaudio fixtures (written by
//! `tools/make_audio_fixtures.py`), finite-difference gradient checks in f64, the
//! `istft(stft(x)) == x` round trip, and the device (DFT-as-matmul) path against the FFT path.

use std::collections::HashMap;
use std::path::PathBuf;

use tensor_audio::spectral::{
    istft, istft_dft_matmul, mel_filterbank, spectrogram, stft, stft_dft_matmul, MelConfig,
    MelNorm, MelScale, MelSpectrogram, StftConfig, WindowKind,
};
use tensor_core::conformance::gradcheck::{check_grad, input};
use tensor_core::{DType, Device, Result, Tensor, Var};
use tensor_io::safetensors::MmapedSafetensors;

fn dev() -> Device {
    tensor_cpu::device()
}

fn fixture(name: &str) -> MmapedSafetensors {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/spectral")
        .join(name);
    MmapedSafetensors::open(&p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn get(st: &MmapedSafetensors, name: &str) -> Tensor {
    st.tensor(name, &dev())
        .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"))
}

/// A case's `key=value` settings from the file's metadata.
fn settings(st: &MmapedSafetensors, case: &str) -> HashMap<String, String> {
    st.metadata()
        .get(case)
        .unwrap_or_else(|| panic!("no metadata for {case}"))
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn num<T: std::str::FromStr>(s: &HashMap<String, String>, k: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s[k].parse()
        .unwrap_or_else(|e| panic!("{k}={}: {e:?}", s[k]))
}

/// Largest |a - b| / (atol + rtol·|b|) must be ≤ 1.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    let mut worst = (0.0, 0usize);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let r = (a - b).abs() / (atol + rtol * b.abs());
        assert!(
            r.is_finite(),
            "{what}: non-finite at {i}: got {a}, want {b}"
        );
        if r > worst.0 {
            worst = (r, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 1.0,
        "{what}: element {i}: got {}, want {} (|diff| {:e}, atol {atol:e}, rtol {rtol:e})",
        g[i],
        w[i],
        (g[i] - w[i]).abs()
    );
}

fn stft_cfg(s: &HashMap<String, String>) -> StftConfig {
    StftConfig::new(num(s, "n_fft"), num(s, "hop"))
        .win_length(num(s, "win"))
        .window(match s["window"].as_str() {
            "hann" => WindowKind::Hann,
            "hamming" => WindowKind::Hamming,
            "rect" => WindowKind::Rectangular,
            w => panic!("window {w}"),
        })
        .center(s["center"] == "1")
        .normalized(s["normalized"] == "1")
}

const STFT_CASES: [&str; 4] = [
    "hann_center",
    "hamming_short_win_norm",
    "rect_odd_nocenter",
    "hann_batch_dims",
];

/// The gradient of `sum(y * w)` with respect to `x`.
fn grad_of(x: &Tensor, w: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Tensor {
    let v = Var::from_tensor(x).unwrap();
    let y = f(v.as_tensor()).unwrap();
    let g = y.mul(w).unwrap().sum_all().unwrap().backward().unwrap();
    g.get(v.as_tensor()).expect("a gradient").clone()
}

#[test]
fn stft_and_istft_match_torch_forward_and_backward() {
    let st = fixture("stft.safetensors");
    for case in STFT_CASES {
        let s = settings(&st, case);
        let cfg = stft_cfg(&s);
        let x = get(&st, &format!("{case}.x"));
        for (path, run) in [
            ("fft", stft as fn(&Tensor, &StftConfig) -> Result<Tensor>),
            ("matmul", stft_dft_matmul),
        ] {
            let what = format!("{case} stft ({path})");
            let spec = run(&x, &cfg).unwrap();
            assert_close(
                &what,
                &spec,
                &get(&st, &format!("{case}.spec")),
                1e-12,
                1e-10,
            );
            let dx = grad_of(&x, &get(&st, &format!("{case}.gw")), |x| run(x, &cfg));
            assert_close(
                &format!("{what} gradient"),
                &dx,
                &get(&st, &format!("{case}.dx")),
                1e-12,
                1e-10,
            );
        }
        // The same settings with f32 data.
        let spec32 = stft(&x.to_dtype(DType::F32).unwrap(), &cfg).unwrap();
        assert_eq!(spec32.dtype(), DType::F32);
        assert_close(
            &format!("{case} stft f32"),
            &spec32,
            &get(&st, &format!("{case}.spec")),
            1e-5,
            1e-5,
        );

        let spec_in = get(&st, &format!("{case}.spec_in"));
        let sig_len: usize = num(&s, "signal_len");
        let refused: Vec<&str> = s["istft_refused"].split(',').collect();
        for (label, length) in [
            ("none", None),
            ("same", Some(sig_len)),
            ("short", Some(sig_len - 5)),
            ("long", Some(sig_len + 7)),
        ] {
            if refused.contains(&label) {
                let e = istft(&spec_in, &cfg, length).unwrap_err().to_string();
                assert!(e.contains("NOLA"), "{case} {label}: {e}");
                continue;
            }
            for (path, run) in [
                (
                    "fft",
                    istft as fn(&Tensor, &StftConfig, Option<usize>) -> Result<Tensor>,
                ),
                ("matmul", istft_dft_matmul),
            ] {
                let what = format!("{case} istft length={label} ({path})");
                let y = run(&spec_in, &cfg, length).unwrap();
                assert_close(
                    &what,
                    &y,
                    &get(&st, &format!("{case}.{label}.y")),
                    1e-12,
                    1e-10,
                );
                let dspec = grad_of(&spec_in, &get(&st, &format!("{case}.{label}.gy")), |s| {
                    run(s, &cfg, length)
                });
                assert_close(
                    &format!("{what} gradient"),
                    &dspec,
                    &get(&st, &format!("{case}.{label}.dspec")),
                    1e-12,
                    1e-10,
                );
            }
        }
    }
}

fn mel_cfg(s: &HashMap<String, String>) -> MelConfig {
    MelConfig {
        sample_rate: num(s, "sample_rate"),
        n_fft: num(s, "n_fft"),
        win_length: num(s, "win_length"),
        hop_length: num(s, "hop_length"),
        f_min: num(s, "f_min"),
        f_max: match s["f_max"].as_str() {
            "None" => None,
            v => Some(v.parse().expect("f_max")),
        },
        n_mels: num(s, "n_mels"),
        power: num(s, "power"),
        center: true,
        norm: match s["norm"].as_str() {
            "none" => MelNorm::None,
            "slaney" => MelNorm::Slaney,
            n => panic!("norm {n}"),
        },
        mel_scale: match s["mel_scale"].as_str() {
            "htk" => MelScale::Htk,
            "slaney" => MelScale::Slaney,
            m => panic!("mel_scale {m}"),
        },
    }
}

#[test]
fn mel_filterbanks_match_torchaudio() {
    let st = fixture("mel.safetensors");
    let names: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| n.starts_with("fb."))
        .map(String::from)
        .collect();
    assert_eq!(names.len(), 5, "filterbank fixtures: {names:?}");
    for name in names {
        let s = settings(&st, &name);
        let parts: Vec<&str> = name.split('.').collect();
        let scale = match parts[1] {
            "htk" => MelScale::Htk,
            _ => MelScale::Slaney,
        };
        let norm = match parts[2] {
            "none" => MelNorm::None,
            _ => MelNorm::Slaney,
        };
        let (n_freqs, n_mels): (usize, usize) = (num(&s, "n_freqs"), num(&s, "n_mels"));
        let fb = mel_filterbank(
            n_freqs,
            num(&s, "f_min"),
            num(&s, "f_max"),
            n_mels,
            num(&s, "sample_rate"),
            norm,
            scale,
        );
        let got = Tensor::from_f64s(&fb, (n_freqs, n_mels), DType::F64, &dev()).unwrap();
        assert_close(&name, &got, &get(&st, &name), 1e-12, 1e-9);
    }
}

const MEL_CASES: [&str; 4] = [
    "sr16k_nfft1024_hop256_mels80",
    "sr24k_nfft1024_hop256_mels100",
    "sr24k_slaney_win400_power1",
    "torchaudio_defaults",
];

#[test]
fn mel_spectrogram_and_log_mel_match_torchaudio() {
    let st = fixture("mel.safetensors");
    for case in MEL_CASES {
        let s = settings(&st, case);
        let cfg = mel_cfg(&s);
        let eps: f64 = num(&s, "eps");
        let x = get(&st, &format!("{case}.x"));

        // float32, as torchaudio runs by default: log-mel within 1e-4 absolute (on log values).
        let m32 = MelSpectrogram::new(cfg, DType::F32, &dev()).unwrap();
        let x32 = x.to_dtype(DType::F32).unwrap();
        let mel32 = m32.forward(&x32).unwrap();
        assert_eq!(mel32.dtype(), DType::F32);
        let want = get(&st, &format!("{case}.mel32"));
        let scale = want
            .to_f64_vec()
            .unwrap()
            .iter()
            .fold(0.0f64, |a, v| a.max(*v));
        assert_close(
            &format!("{case} mel f32"),
            &mel32,
            &want,
            1e-6 * scale,
            1e-4,
        );
        // torchaudio's defaults put 128 mels on 201 bins: some filters are (nearly) empty, so a
        // few mel values sit near eps, where float32 rounding of the power spectrum alone moves
        // the log by ~6e-4 (torchaudio's own f32 result differs from its f64 one by that much).
        // There the bound is float32's, not ours; the f64 comparison below stays tight.
        let log_tol = if case == "torchaudio_defaults" {
            2e-3
        } else {
            1e-4
        };
        assert_close(
            &format!("{case} log-mel f32"),
            &m32.log_mel(&x32, eps).unwrap(),
            &get(&st, &format!("{case}.logmel32")),
            log_tol,
            0.0,
        );

        // float64: forward and backward at tight tolerances.
        let m64 = MelSpectrogram::new(cfg, DType::F64, &dev()).unwrap();
        assert_close(
            &format!("{case} mel f64"),
            &m64.forward(&x).unwrap(),
            &get(&st, &format!("{case}.mel64")),
            1e-12,
            1e-9,
        );
        assert_close(
            &format!("{case} log-mel f64"),
            &m64.log_mel(&x, eps).unwrap(),
            &get(&st, &format!("{case}.logmel64")),
            1e-9,
            0.0,
        );
        let dx = grad_of(&x, &get(&st, &format!("{case}.gw")), |x| {
            m64.log_mel(x, eps)
        });
        let want = get(&st, &format!("{case}.dx"));
        let scale = want
            .to_f64_vec()
            .unwrap()
            .iter()
            .fold(0.0f64, |a, v| a.max(v.abs()));
        assert_close(
            &format!("{case} log-mel gradient"),
            &dx,
            &want,
            1e-9 * scale,
            1e-7,
        );
    }
}

/// Configurations for the gradient checks: center on/off, win_length < n_fft, odd n_fft and
/// odd lengths, normalized, each window, and leading batch dims.
fn grad_configs() -> Vec<(StftConfig, Vec<usize>)> {
    vec![
        (StftConfig::new(8, 2), vec![2, 3, 13]),
        (
            StftConfig::new(9, 3)
                .win_length(6)
                .center(false)
                .window(WindowKind::Hamming),
            vec![17],
        ),
        (
            StftConfig::new(8, 3)
                .win_length(5)
                .normalized(true)
                .window(WindowKind::Hamming),
            vec![2, 11],
        ),
        (
            StftConfig::new(7, 2)
                .center(true)
                .window(WindowKind::Rectangular),
            vec![3, 10],
        ),
    ]
}

#[test]
fn stft_gradients_match_finite_differences() -> Result<()> {
    for (i, (cfg, shape)) in grad_configs().into_iter().enumerate() {
        let x = input(shape.clone(), &dev(), 10 + i as u64)?;
        check_grad(
            &format!("stft {cfg:?} {shape:?}"),
            std::slice::from_ref(&x),
            |t| stft(&t[0], &cfg),
        )?;
        check_grad(&format!("stft matmul {cfg:?} {shape:?}"), &[x], |t| {
            stft_dft_matmul(&t[0], &cfg)
        })?;
    }
    Ok(())
}

#[test]
fn istft_gradients_match_finite_differences() -> Result<()> {
    // Windows that overlap-add to something non-zero everywhere (NOLA) in every config.
    let configs = [
        (StftConfig::new(8, 2), vec![2, 5, 7, 2], None),
        (StftConfig::new(8, 2), vec![5, 7, 2], Some(15)),
        (
            StftConfig::new(9, 3)
                .center(false)
                .window(WindowKind::Hamming),
            vec![5, 4, 2],
            Some(20),
        ),
        (
            StftConfig::new(8, 3)
                .win_length(6)
                .normalized(true)
                .window(WindowKind::Hamming),
            vec![2, 5, 6, 2],
            None,
        ),
        (
            StftConfig::new(6, 2)
                .center(false)
                .window(WindowKind::Rectangular),
            vec![4, 5, 2],
            Some(12),
        ),
    ];
    for (i, (cfg, shape, len)) in configs.into_iter().enumerate() {
        let s = input(shape.clone(), &dev(), 30 + i as u64)?;
        check_grad(
            &format!("istft {cfg:?} {shape:?} {len:?}"),
            std::slice::from_ref(&s),
            |t| istft(&t[0], &cfg, len),
        )?;
        check_grad(
            &format!("istft matmul {cfg:?} {shape:?} {len:?}"),
            &[s],
            |t| istft_dft_matmul(&t[0], &cfg, len),
        )?;
    }
    Ok(())
}

#[test]
fn spectrogram_gradients_are_finite_at_zero() -> Result<()> {
    let cfg = StftConfig::new(8, 2);
    for power in [1.0, 2.0, 0.5] {
        let x = Var::from_tensor(&Tensor::zeros((2, 16), DType::F64, &dev())?)?;
        let g = spectrogram(x.as_tensor(), &cfg, power)?
            .sum_all()?
            .backward()?;
        let gx = g.get(x.as_tensor()).expect("gradient").to_f64_vec()?;
        assert!(gx.iter().all(|v| v.is_finite()), "power {power}: {gx:?}");
    }
    // Away from zero, power 1 and 2 pass finite differences.
    for power in [1.0, 2.0] {
        let x = input((2, 14), &dev(), 60)?;
        check_grad(&format!("spectrogram power {power}"), &[x], |t| {
            spectrogram(&t[0], &cfg, power)
        })?;
    }
    Ok(())
}

#[test]
fn log_mel_gradients_match_finite_differences() -> Result<()> {
    let cfg = MelConfig {
        n_fft: 16,
        win_length: 12,
        hop_length: 4,
        n_mels: 5,
        ..MelConfig::default()
    };
    let m = MelSpectrogram::new(cfg, DType::F64, &dev())?;
    let x = input((2, 30), &dev(), 70)?;
    check_grad("log_mel", &[x], |t| m.log_mel(&t[0], 1e-6))
}

#[test]
fn istft_inverts_stft() -> Result<()> {
    let cases = [
        (StftConfig::new(64, 16), vec![3, 1000]),
        (StftConfig::new(1024, 256), vec![2, 16000]),
        (
            StftConfig::new(50, 12).win_length(40).normalized(true),
            vec![2, 2, 257],
        ),
        (
            StftConfig::new(33, 10)
                .center(false)
                .window(WindowKind::Hamming),
            vec![1, 303],
        ),
    ];
    for (cfg, shape) in cases {
        let len = *shape.last().unwrap();
        for dtype in [DType::F64, DType::F32] {
            let x = Tensor::randn_seeded(0.0, 1.0, shape.clone(), dtype, &dev(), 7)?;
            let spec = stft(&x, &cfg)?;
            let y = istft(&spec, &cfg, Some(len))?;
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            if cfg.center {
                assert_close(&format!("round trip {cfg:?} {dtype}"), &y, &x, tol, tol);
            } else {
                // Without centring, samples past the last whole frame are not covered.
                let covered = cfg.n_fft + cfg.hop_length * (cfg.n_frames(len)? - 1);
                let d = x.rank() - 1;
                assert_close(
                    &format!("round trip {cfg:?} {dtype}"),
                    &y.narrow(d, 0, covered)?,
                    &x.narrow(d, 0, covered)?,
                    tol,
                    tol,
                );
            }
        }
    }
    Ok(())
}

#[test]
fn matmul_path_matches_fft_path_in_f32() -> Result<()> {
    let cfg = StftConfig::new(256, 64).win_length(200);
    let x = Tensor::randn_seeded(0.0, 1.0, (2, 3000), DType::F32, &dev(), 9)?;
    let a = stft(&x, &cfg)?;
    let b = stft_dft_matmul(&x, &cfg)?;
    assert_close("stft f32 paths", &b, &a, 1e-3, 1e-4);
    let ya = istft(&a, &cfg, Some(3000))?;
    let yb = istft_dft_matmul(&a, &cfg, Some(3000))?;
    assert_close("istft f32 paths", &yb, &ya, 1e-5, 1e-4);
    Ok(())
}

#[test]
fn bad_inputs_are_errors() -> Result<()> {
    let cfg = StftConfig::new(16, 4);
    let ints = Tensor::zeros(100, DType::I64, &dev())?;
    assert!(stft(&ints, &cfg)
        .unwrap_err()
        .to_string()
        .contains("f32 or f64"));
    let short = Tensor::zeros((2, 8), DType::F32, &dev())?;
    let e = stft(&short, &cfg).unwrap_err().to_string();
    assert!(e.contains("reflect"), "{e}");
    let scalar = Tensor::scalar(1.0, DType::F32, &dev())?;
    assert!(stft(&scalar, &cfg).is_err());
    let wrong_bins = Tensor::zeros((8, 5, 2), DType::F32, &dev())?;
    let e = istft(&wrong_bins, &cfg, None).unwrap_err().to_string();
    assert!(e.contains("[..., 9, frames, 2]"), "{e}");
    let no_pair = Tensor::zeros((9, 5, 3), DType::F32, &dev())?;
    assert!(istft(&no_pair, &cfg, None).is_err());
    // A Hann window with center=false has no overlap at the first sample.
    let e = istft(
        &Tensor::zeros((9, 5, 2), DType::F32, &dev())?,
        &cfg.center(false),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("NOLA"), "{e}");
    assert!(spectrogram(&short, &StftConfig::new(4, 1), 0.0).is_err());
    let mel = MelSpectrogram::new(MelConfig::default(), DType::F32, &dev())?;
    let e = mel
        .forward(&Tensor::zeros(1000, DType::F64, &dev())?)
        .unwrap_err()
        .to_string();
    assert!(e.contains("f32"), "{e}");
    let bad = MelConfig {
        f_min: 9000.0,
        ..MelConfig::default()
    };
    assert!(MelSpectrogram::new(bad, DType::F32, &dev()).is_err());
    assert!(mel
        .log_mel(&Tensor::zeros(1000, DType::F32, &dev())?, 0.0)
        .is_err());
    Ok(())
}

/// Release-mode timing of stft + backward on a batch of 16 one-second 16 kHz clips
/// (`cargo test --release -p tensor-audio --test spectral -- --ignored --nocapture`).
#[test]
#[ignore]
fn bench_stft_forward_backward() -> Result<()> {
    let cfg = StftConfig::new(1024, 256);
    let x = Tensor::randn_seeded(0.0, 1.0, (16, 16000), DType::F32, &dev(), 1)?;
    let w = Tensor::randn_seeded(0.0, 1.0, (16, 513, 63, 2), DType::F32, &dev(), 2)?;
    let run = || -> Result<()> {
        let v = Var::from_tensor(&x)?;
        let g = stft(v.as_tensor(), &cfg)?.mul(&w)?.sum_all()?.backward()?;
        assert!(g.get(v.as_tensor()).is_some());
        Ok(())
    };
    for _ in 0..3 {
        run()?;
    }
    let reps = 20;
    let t = std::time::Instant::now();
    for _ in 0..reps {
        run()?;
    }
    let per = t.elapsed().as_secs_f64() / reps as f64;
    let fwd = {
        let t = std::time::Instant::now();
        for _ in 0..reps {
            stft(&x, &cfg)?;
        }
        t.elapsed().as_secs_f64() / reps as f64
    };
    println!(
        "stft [16, 16000] n_fft 1024 hop 256 f32: forward {:.2} ms, forward+backward {:.2} ms ({} rayon threads)",
        fwd * 1e3,
        per * 1e3,
        rayon::current_num_threads()
    );
    Ok(())
}
