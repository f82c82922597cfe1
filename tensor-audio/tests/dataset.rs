//! AudioFolder and AudioLoader on tiny WAV folders written here: loading (mono mix, resampling,
//! transcripts), errors for missing/empty folders and bad metadata, and the loader's seeded
//! order, crops, zero padding and batch shapes.

use std::path::PathBuf;

use tensor_audio::dataset::{AudioFolder, AudioLoader};
use tensor_audio::resample::ResampleQuality;
use tensor_audio::wav::{write_wav, Audio, SampleFormat};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tensor-audio-ds-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Clip `k` holds the ramp `k*1000 + i` (scaled into [-1, 1) on the 16-bit grid, so values
/// survive the file exactly), which lets a test tell which clip and which offset a crop came
/// from.
fn code(k: usize, i: usize) -> f32 {
    ((k * 1000 + i) as f32 - 16384.0) / 32768.0
}

fn make_folder(tag: &str, lens: &[usize], rate: u32) -> PathBuf {
    let dir = tmpdir(tag);
    for (k, &n) in lens.iter().enumerate() {
        let samples = (0..n).map(|i| code(k, i)).collect();
        let a = Audio::new(rate, 1, samples).unwrap();
        write_wav(dir.join(format!("clip{k:02}.wav")), &a, SampleFormat::Int16).unwrap();
    }
    dir
}

#[test]
fn folder_loads_sorted_mono_resampled_with_transcripts() {
    let dir = make_folder("load", &[300, 500, 200], 16000);
    // A stereo clip at another rate: mixed to mono, then resampled.
    let st: Vec<f32> = (0..800).flat_map(|_| [0.5f32, -0.25]).collect();
    write_wav(
        dir.join("b_stereo.wav"),
        &Audio::new(32000, 2, st).unwrap(),
        SampleFormat::Float32,
    )
    .unwrap();
    std::fs::write(dir.join("notes.txt"), "not audio").unwrap();
    std::fs::write(
        dir.join("metadata.tsv"),
        "file\tvoice\ttext\nclip00.wav\ten-us\tHello there, friend.\n\nclip02.wav\ten-gb+f3\tA second line.\n",
    )
    .unwrap();
    let f = AudioFolder::open(&dir, 16000, ResampleQuality::High).unwrap();
    assert_eq!(f.len(), 4);
    assert_eq!(f.sample_rate(), 16000);
    let names: Vec<&str> = f.clips().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["b_stereo.wav", "clip00.wav", "clip01.wav", "clip02.wav"]
    );
    let st = &f.clips()[0];
    assert_eq!(st.samples.len(), 400);
    // The mean of the channels (0.125) away from the clip edges.
    for &x in &st.samples[50..350] {
        assert!((x - 0.125).abs() < 1e-3, "{x}");
    }
    assert_eq!(
        f.clips()[1].samples[..3],
        [code(0, 0), code(0, 1), code(0, 2)]
    );
    assert_eq!(f.clips()[1].text.as_deref(), Some("Hello there, friend."));
    assert_eq!(f.clips()[1].voice.as_deref(), Some("en-us"));
    assert_eq!(f.clips()[2].text, None);
    assert_eq!(f.clips()[3].voice.as_deref(), Some("en-gb+f3"));
    assert!((f.duration_secs() - 1400.0 / 16000.0).abs() < 1e-9);
}

#[test]
fn folder_errors() {
    let missing = std::env::temp_dir().join(format!("tensor-audio-nope-{}", std::process::id()));
    let e = AudioFolder::open(&missing, 16000, ResampleQuality::Fast)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tensor-audio-nope") && e.contains("cannot list"),
        "{e}"
    );

    let empty = tmpdir("empty");
    std::fs::write(empty.join("readme.txt"), "x").unwrap();
    let e = AudioFolder::open(&empty, 16000, ResampleQuality::Fast)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no .wav files") && e.contains("fetch_speech.sh"),
        "{e}"
    );

    let dir = make_folder("meta", &[100, 100], 16000);
    for (meta, needle) in [
        ("clip00.wav\ten-us\n", "metadata.tsv:1: fewer than 3"),
        (
            "clip00.wav\ten-us\tok\nclip01.wav only one field\n",
            "metadata.tsv:2",
        ),
        ("clip00.wav\tv\ta\tb\n", "more than 3"),
        ("sub/clip00.wav\tv\tt\n", "bare file name"),
        ("clip00.wav\tv\tt\nclip00.wav\tv\tt\n", "listed twice"),
        ("clip00.wav\tv\tt\nghost.wav\tv\tt\n", "\"ghost.wav\""),
    ] {
        std::fs::write(dir.join("metadata.tsv"), meta).unwrap();
        let e = AudioFolder::open(&dir, 16000, ResampleQuality::Fast)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(needle) && e.contains("audio folder"),
            "{meta:?}: {e}"
        );
    }

    // A broken WAV among good ones names that file.
    std::fs::remove_file(dir.join("metadata.tsv")).unwrap();
    std::fs::write(dir.join("clip05.wav"), b"RIFF....").unwrap();
    let e = AudioFolder::open(&dir, 16000, ResampleQuality::Fast)
        .unwrap_err()
        .to_string();
    assert!(e.contains("clip05.wav"), "{e}");
    assert!(AudioFolder::open(&dir, 0, ResampleQuality::Fast).is_err());
}

/// (clip index, crop offset) of each row of a batch, recovered from the ramp values.
fn decode_rows(batch: &[f32], crop: usize) -> Vec<(usize, usize)> {
    batch
        .chunks(crop)
        .map(|row| {
            let v = (row[0] * 32768.0 + 16384.0).round() as usize;
            (v / 1000, v % 1000)
        })
        .collect()
}

#[test]
fn loader_is_seeded_crops_pads_and_batches() {
    let lens = [400, 400, 400, 400, 400, 400, 400, 50, 400, 400, 400];
    let dir = make_folder("loader", &lens, 16000);
    let f = AudioFolder::open(&dir, 16000, ResampleQuality::High).unwrap();
    let dev = tensor_cpu::device();
    let crop = 100;

    let collect = |seed: u64, epochs: usize| -> Vec<Vec<f32>> {
        let mut l = AudioLoader::new(&f, 4, crop, seed).unwrap();
        let mut out = Vec::new();
        for _ in 0..epochs {
            for b in l.epoch(&dev) {
                let b = b.unwrap();
                assert_eq!(b.dims(), &[4, 1, crop]);
                out.push(b.to_vec::<f32>().unwrap());
            }
        }
        out
    };
    let a = collect(7, 3);
    // 11 clips, batches of 4: two full batches per epoch, the partial one dropped.
    assert_eq!(a.len(), 6);
    assert_eq!(a, collect(7, 3), "same seed, same batches");
    let b = collect(8, 3);
    assert_ne!(a, b, "another seed, another order");
    assert_ne!(a[0..2], a[2..4], "epochs differ");

    let mut seen_offsets = std::collections::HashSet::new();
    for batch in &a {
        let rows = decode_rows(batch, crop);
        for (r, &(clip, off)) in rows.iter().enumerate() {
            assert!(clip < lens.len());
            let row = &batch[r * crop..(r + 1) * crop];
            if lens[clip] < crop {
                // Short clip: the whole clip from the start, then zeros.
                assert_eq!(off, 0);
                assert!(row[lens[clip]..].iter().all(|&x| x == 0.0));
                for (i, &x) in row[..lens[clip]].iter().enumerate() {
                    assert_eq!(x, code(clip, i));
                }
            } else {
                assert!(off + crop <= lens[clip], "crop {off}+{crop} past the end");
                for (i, &x) in row.iter().enumerate() {
                    assert_eq!(x, code(clip, off + i), "a crop is a contiguous slice");
                }
                seen_offsets.insert(off);
            }
        }
        // No clip twice in a batch.
        let mut clips: Vec<usize> = rows.iter().map(|r| r.0).collect();
        clips.sort();
        clips.dedup();
        assert_eq!(clips.len(), 4);
    }
    assert!(
        seen_offsets.len() > 5,
        "crops are not at random offsets: {seen_offsets:?}"
    );

    // Within an epoch every clip appears at most once; over an epoch's order all clips appear.
    let mut l = AudioLoader::new(&f, 4, crop, 3).unwrap();
    assert_eq!(l.batches_per_epoch(), 2);
    let ep = l.epoch(&dev);
    assert_eq!(ep.len(), 2);
    let planned: Vec<usize> = ep.remaining_clips().concat();
    let got: Vec<usize> = ep
        .flat_map(|b| decode_rows(&b.unwrap().to_vec::<f32>().unwrap(), crop))
        .map(|r| r.0)
        .collect();
    assert_eq!(planned, got);

    // Resuming at an epoch reproduces it.
    let mut l1 = AudioLoader::new(&f, 4, crop, 11).unwrap();
    let _ = l1.epoch(&dev).count();
    let second: Vec<Vec<f32>> = l1
        .epoch(&dev)
        .map(|b| b.unwrap().to_vec().unwrap())
        .collect();
    let mut l2 = AudioLoader::new(&f, 4, crop, 11).unwrap();
    l2.set_epoch(1);
    assert_eq!(l2.current_epoch(), 1);
    let again: Vec<Vec<f32>> = l2
        .epoch(&dev)
        .map(|b| b.unwrap().to_vec().unwrap())
        .collect();
    assert_eq!(second, again);

    // Crops longer than every clip: all rows zero-padded.
    let mut long = AudioLoader::new(&f, 2, 1000, 1).unwrap();
    for b in long.epoch(&dev) {
        let v = b.unwrap().to_vec::<f32>().unwrap();
        for row in v.chunks(1000) {
            assert!(row[400..].iter().all(|&x| x == 0.0));
            assert!(row[..50].iter().all(|&x| x != 0.0));
        }
    }

    assert!(AudioLoader::new(&f, 0, 10, 0).is_err());
    assert!(AudioLoader::new(&f, 4, 0, 0).is_err());
    let e = AudioLoader::new(&f, 12, 10, 0).unwrap_err().to_string();
    assert!(e.contains("12") && e.contains("11 clips"), "{e}");
}
