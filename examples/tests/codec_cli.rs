//! End-to-end runs of `train_codec` and `codec` on a tiny generated corpus (tones and noise
//! bursts written as WAV files): a few training steps with a checkpoint, resume, the held-out
//! table, encode/decode round trips, and the error exits. The examples are built and run in
//! release mode through `cargo run --release`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tensor_audio::codes::CodesFile;
use tensor_io::wav::{read_wav, write_wav, Audio, SampleFormat};

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("codec-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_example(name: &str, args: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "--release",
            "-q",
            "-p",
            "tensor-examples",
            "--example",
            name,
            "--",
        ])
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("cargo runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(o: &Output) -> String {
    let (out, err) = text(o);
    assert!(o.status.success(), "failed: {:?}\n{out}\n{err}", o.status);
    out
}

/// A clip of `secs` seconds at `sr` Hz: a gliding tone with a noise burst (a deterministic
/// hash, not a RNG, so the corpus is the same on every run).
fn clip(i: usize, secs: f64, sr: u32) -> Audio {
    let n = (secs * sr as f64) as usize;
    let samples = (0..n)
        .map(|k| {
            let t = k as f64 / sr as f64;
            let f = 150.0 + 60.0 * i as f64 + 200.0 * t;
            let h = (k as u64 ^ (i as u64) << 32).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            let noise = (h as f64 / (1u64 << 24) as f64 - 0.5) * 0.05;
            (0.3 * (2.0 * std::f64::consts::PI * f * t).sin() + noise) as f32
        })
        .collect();
    Audio {
        sample_rate: sr,
        channels: 1,
        samples,
    }
}

/// `root/{train,heldout}/*.wav`: 6 training clips and 2 held-out ones (one at 22.05 kHz, so
/// loading resamples).
fn corpus(root: &Path) {
    for (split, n) in [("train", 6), ("heldout", 2)] {
        let d = root.join(split);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            let sr = if split == "heldout" && i == 1 {
                22050
            } else {
                16000
            };
            let a = clip(i + if split == "train" { 0 } else { 10 }, 0.7, sr);
            write_wav(d.join(format!("{split}{i}.wav")), &a, SampleFormat::Int16).unwrap();
        }
    }
}

const TINY: [&str; 10] = [
    "--batch-size",
    "2",
    "--crop-ms",
    "200",
    "--channels",
    "4",
    "--n-q",
    "4",
    "--save-every",
    "2",
];

#[test]
fn train_resume_encode_decode_eval() {
    let dir = scratch("full");
    corpus(&dir);
    let data = dir.to_str().unwrap();
    let out_dir = dir.join("run");
    let out = out_dir.to_str().unwrap();
    // Interrupted after 2 of 4 steps, then resumed to the end (with the evaluation).
    let mut args = vec![
        "--data",
        data,
        "--out",
        out,
        "--steps",
        "4",
        "--stop-after",
        "2",
    ];
    args.extend(TINY);
    let s = ok(&run_example("train_codec", &args));
    assert!(s.contains("trained 2 steps"), "{s}");
    assert!(
        !s.contains("held-out"),
        "no evaluation before the last step: {s}"
    );
    let ck = out_dir.join("codec.safetensors");
    assert!(ck.is_file() && out_dir.join("losses.png").is_file());
    let mut args = vec!["--data", data, "--out", out, "--steps", "4", "--resume"];
    args.extend(TINY);
    let s = ok(&run_example("train_codec", &args));
    assert!(s.contains("resumed from") && s.contains("at step 2"), "{s}");
    assert!(s.contains("trained 2 steps"), "{s}");
    assert!(s.contains("| codec, n_q = 4 | 2.0 |"), "{s}");
    assert!(s.contains("µ-law 8-bit at 8 kHz | 64.0"), "{s}");
    let md = std::fs::read_to_string(out_dir.join("eval.md")).unwrap();
    assert!(md.contains("held-out: 2 clips"), "{md}");

    // Encode a 22.05 kHz file at 1 kbit/s: 2 quantizers of 10 bits at 50 frames/s.
    let wav = dir.join("heldout/heldout1.wav");
    let codes = dir.join("a.codes");
    let s = ok(&run_example(
        "codec",
        &[
            "encode",
            wav.to_str().unwrap(),
            codes.to_str().unwrap(),
            "--checkpoint",
            out,
            "--kbps",
            "1",
        ],
    ));
    assert!(s.contains("1.00 kbit/s"), "{s}");
    let f = CodesFile::read(&codes).unwrap();
    let samples = (0.7f64 * 16000.0).round() as u64;
    assert_eq!((f.n_q, f.sample_rate, f.codebook_size), (2, 16000, 1024));
    assert!(f.samples.abs_diff(samples) <= 1, "{} samples", f.samples);
    assert_eq!(f.frames as u64, f.samples.div_ceil(320));
    let bytes = std::fs::metadata(&codes).unwrap().len() as usize;
    assert_eq!(bytes, 33 + (f.frames * 2 * 10).div_ceil(8));
    // Encoding is deterministic: the same codes again.
    let codes2 = dir.join("b.codes");
    ok(&run_example(
        "codec",
        &[
            "encode",
            wav.to_str().unwrap(),
            codes2.to_str().unwrap(),
            "--checkpoint",
            ck.to_str().unwrap(),
            "--n-q",
            "2",
        ],
    ));
    assert_eq!(
        std::fs::read(&codes).unwrap(),
        std::fs::read(&codes2).unwrap()
    );
    // Decode restores the length at the codec's rate.
    let back = dir.join("back.wav");
    ok(&run_example(
        "codec",
        &[
            "decode",
            codes.to_str().unwrap(),
            back.to_str().unwrap(),
            "--checkpoint",
            out,
        ],
    ));
    let a = read_wav(&back).unwrap();
    assert_eq!((a.sample_rate, a.channels), (16000, 1));
    assert_eq!(a.samples.len() as u64, f.samples);
    assert!(a.samples.iter().all(|v| v.is_finite() && v.abs() <= 1.0));

    // eval on one clip.
    let s = ok(&run_example(
        "codec",
        &["eval", "--data", data, "--checkpoint", out, "--clips", "1"],
    ));
    assert!(
        s.contains("held-out: 1 clips") && s.contains("| codec, n_q = 1 | 0.5 |"),
        "{s}"
    );

    // Errors: exit code 1 with a message for bad files, 2 for bad flags.
    let fail = |args: &[&str], code: i32, needle: &str| {
        let o = run_example("codec", args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    let missing = dir.join("missing.wav");
    fail(
        &[
            "encode",
            missing.to_str().unwrap(),
            "x.codes",
            "--checkpoint",
            out,
        ],
        1,
        "missing.wav",
    );
    fail(
        &[
            "encode",
            wav.to_str().unwrap(),
            "x.codes",
            "--checkpoint",
            out,
            "--n-q",
            "9",
        ],
        1,
        "4 quantizers",
    );
    fail(
        &[
            "encode",
            wav.to_str().unwrap(),
            "x.codes",
            "--checkpoint",
            dir.join("nope").to_str().unwrap(),
        ],
        1,
        "no codec checkpoint",
    );
    fail(&["encode", wav.to_str().unwrap()], 2, "IN.wav OUT.codes");
    fail(
        &["encode", "a", "b", "--n-q", "2", "--kbps", "1"],
        2,
        "not both",
    );
    fail(&["decode", "a", "b", "--bogus"], 2, "unknown argument");
    fail(&["transcode", "a", "b"], 2, "unknown command");
    fail(&["eval"], 2, "--data");
    let bad = dir.join("bad.codes");
    std::fs::write(&bad, b"RIFF0000WAVE").unwrap();
    fail(
        &[
            "decode",
            bad.to_str().unwrap(),
            "y.wav",
            "--checkpoint",
            out,
        ],
        1,
        "magic",
    );
    let mut truncated = std::fs::read(&codes).unwrap();
    truncated.pop();
    std::fs::write(&bad, &truncated).unwrap();
    fail(
        &[
            "decode",
            bad.to_str().unwrap(),
            "y.wav",
            "--checkpoint",
            out,
        ],
        1,
        "truncated",
    );

    let o = run_example("train_codec", &["--steps", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--data DIR is required"));
    let o = run_example("train_codec", &["--data", "d", "--w-snr", "-1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("--w-snr: invalid value"),
        "{}",
        text(&o).1
    );
    let o = run_example(
        "train_codec",
        &["--data", dir.join("nope").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("train"), "{}", text(&o).1);
    let _ = std::fs::remove_dir_all(&dir);
}
