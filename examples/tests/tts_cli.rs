//! End-to-end runs of the `text_to_audio` example: flag errors exit non-zero with a message
//! that says what is wrong, and a tiny train-then-synthesise run on a generated corpus (a
//! few tones with transcripts, a small untrained codec) writes every promised file. The
//! example is built and run in release mode through `cargo run --release`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tensor_audio::codec::{Codec, CodecConfig};
use tensor_audio::wav::{read_wav, write_wav, Audio, SampleFormat};
use tensor_core::{manual_seed, DType};
use tensor_nn::{Checkpoint, VarBuilder, VarMap};

/// A fresh scratch folder for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tts-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `cargo run --release -q -p tensor-examples --example text_to_audio -- ARGS`.
fn tts(args: &[&str]) -> Output {
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
            "text_to_audio",
            "--",
        ])
        .args(args)
        .output()
        .expect("cargo runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The run failed with `code` and its stderr mentions every one of `needles`.
fn fails_with(args: &[&str], code: i32, needles: &[&str]) {
    let o = tts(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected {n:?} in {err}");
    }
}

#[test]
fn flag_errors_are_clear() {
    let dir = scratch("flags");
    let wav = dir.join("x.wav");
    let w = wav.to_str().unwrap();
    // Usage errors exit 2 and print the usage.
    fails_with(&["--out", w], 2, &["--text", "required", "usage:"]);
    fails_with(&["--text", "hi"], 2, &["--out OUT.wav is required"]);
    fails_with(&["--text"], 2, &["--text needs a value"]);
    fails_with(
        &["--train", "--data", "d", "--codec", "c", "--steps", "0"],
        2,
        &["--steps: invalid value \"0\""],
    );
    fails_with(
        &["--train", "--data", "d", "--codec", "c", "--steps", "ten"],
        2,
        &["--steps: invalid value \"ten\""],
    );
    fails_with(
        &["--train", "--codec", "c"],
        2,
        &["--train needs --data DIR"],
    );
    fails_with(&["--train", "--data", "d"], 2, &["--codec"]);
    fails_with(
        &["--text", "hi", "--out", w, "--steps", "5"],
        2,
        &["--steps is a training option"],
    );
    fails_with(
        &["--train", "--data", "d", "--codec", "c", "--text", "hi"],
        2,
        &["--text is a synthesis option"],
    );
    fails_with(
        &["--text", "hi", "--out", w, "--bogus"],
        2,
        &["unknown argument \"--bogus\""],
    );
    fails_with(
        &["--text", "hi", "--out", w, "--temperature", "-1"],
        2,
        &["--temperature: invalid value"],
    );
    // Run errors exit 1 with the program's name.
    let missing = dir.join("no-such-model");
    fails_with(
        &[
            "--text",
            "hi",
            "--out",
            w,
            "--checkpoint",
            missing.to_str().unwrap(),
        ],
        1,
        &["text_to_audio:", "no text-to-codes checkpoint", "--train"],
    );
    fails_with(
        &["--train", "--data", dir.to_str().unwrap(), "--codec", "c"],
        1,
        &["train", "is not a folder", "fetch_speech.sh"],
    );
    assert!(!wav.exists());
    let help = tts(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--checkpoint DIR"));
}

/// A corpus of `n` short two-tone clips per split, in two voices, with transcripts.
fn write_corpus(root: &Path, n: usize) {
    let sr = 16_000u32;
    for (split, offset) in [("train", 0usize), ("heldout", 100)] {
        let d = root.join(split);
        std::fs::create_dir_all(&d).unwrap();
        let mut meta = String::new();
        for i in 0..n {
            let id = i + offset;
            let voice = if i.is_multiple_of(2) { "low" } else { "high" };
            let f = if voice == "low" { 180.0 } else { 320.0 } + 15.0 * (id % 5) as f32;
            let len = 4000 + 800 * (id % 4);
            let samples: Vec<f32> = (0..len)
                .map(|t| {
                    let x = t as f32 / sr as f32;
                    0.3 * (2.0 * std::f32::consts::PI * f * x).sin()
                        + 0.1 * (2.0 * std::f32::consts::PI * 3.0 * f * x).sin()
                })
                .collect();
            let name = format!("c{id:03}.wav");
            write_wav(
                d.join(&name),
                &Audio::new(sr, 1, samples).unwrap(),
                SampleFormat::Int16,
            )
            .unwrap();
            meta.push_str(&format!(
                "{name}\t{voice}\tTone number {id}, voice {voice}.\n"
            ));
        }
        std::fs::write(d.join("metadata.tsv"), meta).unwrap();
    }
}

/// A small untrained codec saved the way train_codec saves one.
fn write_codec(dir: &Path) {
    let cfg = CodecConfig {
        channels: 4,
        strides: vec![4, 5, 8],
        latent_dim: 8,
        codebook_size: 32,
        num_quantizers: 3,
        dilations: vec![1],
        ..Default::default()
    };
    manual_seed(0);
    let map = VarMap::new();
    Codec::new(
        &VarBuilder::from_varmap(&map, DType::F32, &tensor_cpu::device()),
        cfg.clone(),
    )
    .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    Checkpoint {
        model: map.state_dict(),
        metadata: cfg.to_metadata(),
        ..Default::default()
    }
    .save(dir.join("codec.safetensors"))
    .unwrap();
}

#[test]
fn tiny_train_resume_and_synthesise() {
    let dir = scratch("e2e");
    let data = dir.join("corpus");
    let codec = dir.join("codec");
    let out = dir.join("tts");
    write_corpus(&data, 8);
    write_codec(&codec);
    let (d, c, o) = (
        data.to_str().unwrap(),
        codec.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let common = [
        "--train",
        "--data",
        d,
        "--codec",
        c,
        "--out",
        o,
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--dim",
        "32",
        "--layers",
        "1",
        "--heads",
        "2",
        "--eval-every",
        "2",
        "--threads",
        "2",
    ];
    // Interrupted after 3 steps, then resumed to the end.
    let mut first = common.to_vec();
    first.extend(["--stop-after", "3"]);
    let r = tts(&first);
    assert!(r.status.success(), "{}", stderr(&r));
    let ck = Checkpoint::load(out.join("tts.safetensors"), &tensor_cpu::device()).unwrap();
    assert_eq!(ck.step, 3);
    let mut second = common.to_vec();
    second.push("--resume");
    let r = tts(&second);
    let so = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(so.contains("resumed from"), "{so}");
    assert!(so.contains("held-out: 8 utterances"), "{so}");
    for f in [
        "tts.safetensors",
        "codec.safetensors",
        "codes.safetensors",
        "loss.png",
        "eval.md",
        "heldout_sample.wav",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let ck = Checkpoint::load(out.join("tts.safetensors"), &tensor_cpu::device()).unwrap();
    assert_eq!(ck.step, 6);
    assert_eq!(ck.metadata["tts.voices"], "high,low");

    // Synthesis from the folder, in a named voice; an unknown voice is an error.
    let wav = dir.join("hello.wav");
    let w = wav.to_str().unwrap();
    let r = tts(&[
        "--text",
        "Tone number 7.",
        "--out",
        w,
        "--checkpoint",
        o,
        "--voice",
        "low",
        "--seed",
        "3",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let a = read_wav(&wav).unwrap();
    assert_eq!(a.sample_rate, 16_000);
    assert_eq!(a.channels, 1);
    assert!(
        a.frames() > 0 && a.frames().is_multiple_of(160),
        "{}",
        a.frames()
    );
    fails_with(
        &[
            "--text",
            "hi",
            "--out",
            w,
            "--checkpoint",
            o,
            "--voice",
            "alto",
        ],
        1,
        &["--voice", "unknown voice \"alto\"", "high, low"],
    );
    fails_with(
        &["--text", "   ", "--out", w, "--checkpoint", o],
        1,
        &["--text", "empty"],
    );
    let long = "a".repeat(500);
    fails_with(
        &["--text", &long, "--out", w, "--checkpoint", o],
        1,
        &["--text", "500 characters", "at most"],
    );
}
