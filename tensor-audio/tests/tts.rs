//! The text-to-codes model: the character tokenizer (round trip, errors), the model's shapes,
//! a tiny model overfitting a few random (text, codes) pairs, the KV-cached synthesis
//! agreeing with the teacher-forced forward pass, checkpoint save/load, config metadata and
//! the sampler.

use std::path::PathBuf;

use tensor_audio::tts::{
    code_accuracy, collate, sample, CharTokenizer, SamplingConfig, SplitMix64, TextToCodes,
    TtsConfig, TtsExample, BOS_ID, EOS_ID, UNK_ID,
};
use tensor_core::{manual_seed, no_grad, DType, Result, Tensor};
use tensor_nn::optim::{AdamW, AdamWConfig, Optimizer};
use tensor_nn::{Checkpoint, VarBuilder, VarMap};

fn dev() -> tensor_core::Device {
    tensor_cpu::device()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tensor-audio-tts-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn tiny() -> TtsConfig {
    TtsConfig {
        max_text_len: 16,
        voices: vec!["alice".into(), "bob".into()],
        dim: 32,
        num_heads: 2,
        encoder_layers: 1,
        decoder_layers: 2,
        hidden_dim: 64,
        dropout: 0.0,
        codebook_size: 16,
        num_codebooks: 2,
        max_frames: 24,
        frame_rate: 50.0,
        frames_per_char: 2.0,
        ..Default::default()
    }
}

/// Random (text, voice, codes) examples from a fixed generator.
fn random_examples(cfg: &TtsConfig, n: usize, seed: u64) -> Vec<TtsExample> {
    let mut rng = SplitMix64::new(seed);
    let mut below = |m: usize| (rng.next_u64() % m as u64) as usize;
    (0..n)
        .map(|_| {
            let chars = 4 + below(5);
            let mut text = vec![BOS_ID];
            text.extend((0..chars).map(|_| 5 + below(26) as u32));
            text.push(EOS_ID);
            let frames = 5 + below(6);
            let codes = (0..cfg.num_codebooks * frames)
                .map(|_| below(cfg.codebook_size) as u32)
                .collect();
            TtsExample {
                text,
                voice: below(cfg.voices.len()),
                codes,
                frames,
            }
        })
        .collect()
}

fn build(cfg: &TtsConfig, seed: u64) -> Result<(VarMap, TextToCodes)> {
    manual_seed(seed);
    let map = VarMap::new();
    let model = TextToCodes::new(
        &VarBuilder::from_varmap(&map, DType::F32, &dev()),
        cfg.clone(),
    )?;
    Ok((map, model))
}

#[test]
fn tokenizer_round_trip_and_errors() -> Result<()> {
    let tok = CharTokenizer::new();
    let ids = tok.encode("  Hello,\tWorld!  It's 42 ", 100)?;
    assert_eq!(ids[0], BOS_ID);
    assert_eq!(*ids.last().unwrap(), EOS_ID);
    assert_eq!(ids.len(), "hello, world! it's 42".len() + 2);
    assert!(!ids.contains(&UNK_ID));
    assert_eq!(tok.decode(&ids)?, "hello, world! it's 42");
    assert_eq!(tok.normalize(" A\n b "), "a b");
    // Every vocabulary character survives; ids are distinct and below the vocabulary size.
    let all = " abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()&%$/+=@#*";
    let ids = tok.encode(&format!("x{all}x"), 200)?;
    assert_eq!(tok.decode(&ids)?, format!("x{all}x").trim());
    assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
    let mut uniq = ids[1..ids.len() - 1].to_vec();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), all.trim().len() + 1); // + 'x'; the inner spaces repeat
                                                  // Unknown characters map to <unk>, shown as U+FFFD.
    let ids = tok.encode("Café ~", 100)?;
    assert_eq!(ids.iter().filter(|&&i| i == UNK_ID).count(), 2);
    assert_eq!(tok.decode(&ids)?, "caf\u{FFFD} \u{FFFD}");
    assert_eq!(tok.id_to_token(UNK_ID).as_deref(), Some("<unk>"));
    assert_eq!(tok.id_to_token(5).as_deref(), Some("a"));
    // Errors: empty, too long, bad id.
    let e = tok.encode(" \n\t ", 100).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    assert!(tok.encode("", 100).is_err());
    let e = tok.encode("abcdef", 5).unwrap_err().to_string();
    assert!(e.contains("6 characters") && e.contains("at most 5"), "{e}");
    assert!(tok.encode("abcde", 5).is_ok());
    assert!(tok.decode(&[tok.vocab_size() as u32]).is_err());
    Ok(())
}

#[test]
fn model_shapes_and_batches() -> Result<()> {
    let cfg = tiny();
    let (map, model) = build(&cfg, 1)?;
    assert!(map
        .get_var("encoder.layers.0.self_attn.q_proj.weight")
        .is_some());
    assert!(map
        .get_var("decoder.layers.1.encoder_attn.k_proj.weight")
        .is_some());
    assert!(map.get_var("code_embeddings.1.weight").is_some());
    assert!(map.get_var("heads.0.weight").is_some());
    assert!(map.get_var("voice_embedding.weight").is_some());
    let ex = random_examples(&cfg, 3, 7);
    let refs: Vec<&TtsExample> = ex.iter().collect();
    let batch = collate(&refs, &cfg, &dev())?;
    let l = ex.iter().map(|e| e.text.len()).max().unwrap();
    let t = ex.iter().map(|e| e.frames).max().unwrap();
    assert_eq!(batch.text.dims(), [3, l]);
    assert_eq!(batch.inputs.dims(), [3, 2, t + 1]);
    assert_eq!(batch.targets.dims(), [3, 2, t + 1]);
    assert_eq!(
        batch.target_count()?,
        ex.iter().map(|e| e.frames + 1).sum::<usize>()
    );
    // Teacher forcing: inputs are <bos> then the codes; targets the codes then <eos>.
    let inp = batch.inputs.to_vec::<i64>()?;
    let tgt = batch.targets.to_vec::<i64>()?;
    let e0 = &ex[0];
    assert_eq!(inp[0], cfg.bos_code() as i64);
    assert_eq!(inp[1], e0.codes[0] as i64);
    assert_eq!(tgt[0], e0.codes[0] as i64);
    assert_eq!(tgt[e0.frames], cfg.eos_code() as i64);
    if e0.frames < t {
        assert_eq!(tgt[e0.frames + 1], -100);
    }
    let _g = no_grad();
    let memory = model.encode_text(&batch.text, Some(&batch.text_mask), false)?;
    assert_eq!(memory.dims(), [3, l, cfg.dim]);
    let out = model.loss(&batch, false)?;
    assert_eq!(out.logits.dims(), [3, 2, t + 1, cfg.code_vocab()]);
    assert_eq!(out.codebook_losses.len(), 2);
    // An untrained model is close to uniform over the code_vocab ids.
    let l0 = out.loss.to_f64()?;
    assert!(
        (l0 - (cfg.code_vocab() as f64).ln()).abs() < 1.5,
        "initial loss {l0}"
    );
    // A padded example gives the same logits as alone (the masks work).
    let alone = model
        .loss(&collate(&refs[..1], &cfg, &dev())?, false)?
        .logits;
    let (tl, fr) = (ex[0].text.len(), ex[0].frames + 1);
    let padded = out.logits.narrow(0, 0, 1)?.narrow(2, 0, fr)?;
    let diff = padded
        .sub(&alone)?
        .to_f64_vec()?
        .iter()
        .fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(
        diff < 1e-4,
        "padding changed the logits by {diff} (text {tl})"
    );
    // Bad batches are errors that say what is wrong.
    let mut bad = ex[0].clone();
    bad.codes[0] = cfg.codebook_size as u32;
    let e = collate(&[&bad], &cfg, &dev()).unwrap_err().to_string();
    assert!(e.contains("codebook size"), "{e}");
    let mut bad = ex[0].clone();
    bad.voice = 5;
    assert!(collate(&[&bad], &cfg, &dev()).is_err());
    let mut bad = ex[0].clone();
    bad.frames += 1;
    assert!(collate(&[&bad], &cfg, &dev()).is_err());
    assert!(collate(&[], &cfg, &dev()).is_err());
    let wrong_k = Tensor::zeros((1, 3, 4), DType::I64, &dev())?;
    let v = Tensor::zeros(1, DType::I64, &dev())?;
    assert!(model
        .decode_logits(&memory.narrow(0, 0, 1)?, None, &v, &wrong_k, false)
        .is_err());
    Ok(())
}

#[test]
fn tiny_model_overfits_random_pairs() -> Result<()> {
    let cfg = tiny();
    let (map, model) = build(&cfg, 3)?;
    let ex = random_examples(&cfg, 4, 11);
    let refs: Vec<&TtsExample> = ex.iter().collect();
    let batch = collate(&refs, &cfg, &dev())?;
    let mut opt = AdamW::new(
        map.trainable_vars(),
        AdamWConfig {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let first = model.loss(&batch, true)?.loss.to_f64()?;
    let mut last = first;
    for _ in 0..200 {
        let out = model.loss(&batch, true)?;
        last = out.loss.to_f64()?;
        opt.step(&out.loss.backward()?)?;
    }
    eprintln!("overfit: loss {first:.4} -> {last:.5} after 200 steps");
    // From ~ln(18) = 2.9 nats to memorised: at least 20x lower.
    assert!(last < first / 20.0, "loss {first} -> {last}");
    let _g = no_grad();
    let out = model.loss(&batch, false)?;
    for (cb, (ok, n)) in code_accuracy(&out.logits, &batch.targets)?
        .into_iter()
        .enumerate()
    {
        assert_eq!(ok, n, "codebook {cb}: {ok}/{n} teacher-forced codes right");
    }
    // Greedy synthesis of a training text in its voice gives back its codes and stops.
    for e in &ex {
        let g = model.generate(&e.text, e.voice, &SamplingConfig::greedy())?;
        assert!(g.stopped_at_eos);
        assert_eq!(g.codes.dims(), [1, 2, e.frames]);
        let got: Vec<u32> = g.codes.to_vec::<i64>()?.iter().map(|&c| c as u32).collect();
        assert_eq!(got, e.codes);
    }
    Ok(())
}

#[test]
fn cached_synthesis_matches_the_teacher_forced_pass() -> Result<()> {
    let cfg = tiny();
    let (_map, model) = build(&cfg, 5)?;
    let tok = CharTokenizer::new();
    let text = tok.encode("a test.", cfg.max_text_len)?;
    for seed in [0u64, 1] {
        let opts = SamplingConfig {
            temperature: 0.0,
            seed,
            max_frames: Some(10),
            ..Default::default()
        };
        let g = model.generate(&text, seed as usize, &opts)?;
        assert!(g.max_frames <= 10);
        let frames = g.codes.dims()[2];
        assert!(frames >= 1 && frames <= g.max_frames);
        // Re-run the whole sequence with teacher forcing: its argmax over the ids the sampler
        // allows must be what the cached steps chose.
        let _g = no_grad();
        let bos = Tensor::full(cfg.bos_code() as f64, (1, 2, 1), DType::I64, &dev())?;
        let inputs = Tensor::cat(&[&bos, &g.codes], 2)?;
        let text_t = Tensor::from_vec(
            text.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            (1, text.len()),
            &dev(),
        )?;
        let memory = model.encode_text(&text_t, None, false)?;
        let voice = Tensor::from_vec(vec![seed as i64], 1, &dev())?;
        let logits = model
            .decode_logits(&memory, None, &voice, &inputs, false)?
            .to_f64_vec()?;
        let codes = g.codes.to_vec::<i64>()?;
        let v = cfg.code_vocab();
        for t in 0..frames.min(g.max_frames) {
            for k in 0..2 {
                let row = &logits[(k * (frames + 1) + t) * v..(k * (frames + 1) + t + 1) * v];
                let best = sample(
                    row,
                    |i| i < cfg.codebook_size || (k == 0 && t > 0 && i == v - 1),
                    &SamplingConfig::greedy(),
                    &mut SplitMix64::new(0),
                );
                assert_eq!(best as i64, codes[k * frames + t], "step {t} codebook {k}");
            }
        }
    }
    // Sampling with a seed is reproducible.
    let opts = SamplingConfig {
        temperature: 1.0,
        top_k: 5,
        seed: 9,
        max_frames: Some(8),
    };
    let a = model.generate(&text, 0, &opts)?.codes.to_vec::<i64>()?;
    let b = model.generate(&text, 0, &opts)?.codes.to_vec::<i64>()?;
    assert_eq!(a, b);
    // Errors.
    assert!(model.generate(&text, 2, &opts).is_err());
    assert!(model.generate(&[BOS_ID, EOS_ID], 0, &opts).is_err());
    assert!(model.generate(&[BOS_ID, 200, EOS_ID], 0, &opts).is_err());
    let bad = SamplingConfig {
        temperature: -1.0,
        ..Default::default()
    };
    assert!(model.generate(&text, 0, &bad).is_err());
    Ok(())
}

#[test]
fn checkpoint_round_trip_gives_identical_logits() -> Result<()> {
    let cfg = tiny();
    let (map, model) = build(&cfg, 21)?;
    let path = tmp("tts.safetensors");
    Checkpoint {
        model: map.state_dict(),
        metadata: cfg.to_metadata(),
        ..Default::default()
    }
    .save(&path)?;
    let loaded = TextToCodes::load(&path, &dev())?;
    assert_eq!(loaded.config(), &cfg);
    let ex = random_examples(&cfg, 2, 4);
    let refs: Vec<&TtsExample> = ex.iter().collect();
    let batch = collate(&refs, &cfg, &dev())?;
    let _g = no_grad();
    let a = model.forward_t(&batch, false)?.to_vec::<f32>()?;
    let b = loaded.forward_t(&batch, false)?.to_vec::<f32>()?;
    assert_eq!(a, b);
    let opts = SamplingConfig {
        seed: 3,
        max_frames: Some(6),
        ..Default::default()
    };
    let ga = model
        .generate(&ex[0].text, 1, &opts)?
        .codes
        .to_vec::<i64>()?;
    let gb = loaded
        .generate(&ex[0].text, 1, &opts)?
        .codes
        .to_vec::<i64>()?;
    assert_eq!(ga, gb);
    // A checkpoint without the config, or with a broken entry, is a clear error.
    Checkpoint {
        model: map.state_dict(),
        ..Default::default()
    }
    .save(&path)?;
    let e = TextToCodes::load(&path, &dev()).unwrap_err().to_string();
    assert!(e.contains("tts."), "{e}");
    let mut meta = cfg.to_metadata();
    meta.insert("tts.dim".into(), "wide".into());
    Checkpoint {
        model: map.state_dict(),
        metadata: meta,
        ..Default::default()
    }
    .save(&path)?;
    let e = TextToCodes::load(&path, &dev()).unwrap_err().to_string();
    assert!(e.contains("tts.dim"), "{e}");
    assert!(TextToCodes::load(tmp("missing.safetensors"), &dev()).is_err());
    Ok(())
}

#[test]
fn config_checks_voices_and_length_limit() -> Result<()> {
    let cfg = tiny();
    assert_eq!(TtsConfig::from_metadata(&cfg.to_metadata())?, cfg);
    assert_eq!(cfg.voice_id("bob")?, 1);
    let e = cfg.voice_id("carol").unwrap_err().to_string();
    assert!(e.contains("alice, bob"), "{e}");
    // 2 frames per character plus half a second (25 frames), capped at max_frames.
    assert_eq!(cfg.max_frames_for(1), 24);
    let long = TtsConfig {
        max_frames: 1000,
        ..cfg.clone()
    };
    assert_eq!(long.max_frames_for(10), 45);
    for bad in [
        TtsConfig {
            dim: 30,
            ..cfg.clone()
        },
        TtsConfig {
            voices: vec![],
            ..cfg.clone()
        },
        TtsConfig {
            voices: vec!["a,b".into()],
            ..cfg.clone()
        },
        TtsConfig {
            dropout: 1.0,
            ..cfg.clone()
        },
        TtsConfig {
            frames_per_char: 0.0,
            ..cfg.clone()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    Ok(())
}

#[test]
fn sampler_greedy_topk_and_mask() {
    let logits = [0.0, 3.0, 1.0, 2.9, f64::NAN];
    let mut rng = SplitMix64::new(1);
    let g = SamplingConfig::greedy();
    assert_eq!(sample(&logits, |_| true, &g, &mut rng), 1);
    assert_eq!(sample(&logits, |i| i != 1, &g, &mut rng), 3);
    // top_k = 1 is greedy whatever the temperature.
    let k1 = SamplingConfig {
        temperature: 5.0,
        top_k: 1,
        ..Default::default()
    };
    for _ in 0..20 {
        assert_eq!(sample(&logits, |_| true, &k1, &mut rng), 1);
    }
    // top_k = 2 only ever draws the two best, both of them, in about their softmax ratio.
    let k2 = SamplingConfig {
        temperature: 1.0,
        top_k: 2,
        ..Default::default()
    };
    let mut counts = [0usize; 5];
    for _ in 0..4000 {
        counts[sample(&logits, |_| true, &k2, &mut rng)] += 1;
    }
    assert_eq!(counts[0] + counts[2] + counts[4], 0);
    let p1 = counts[1] as f64 / 4000.0;
    let want = 1.0 / (1.0 + (-0.1f64).exp());
    assert!((p1 - want).abs() < 0.03, "{p1} vs {want}");
    // The same seed draws the same sequence.
    let draw = |seed| {
        let mut r = SplitMix64::new(seed);
        (0..10)
            .map(|_| sample(&logits, |_| true, &SamplingConfig::default(), &mut r))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(4), draw(4));
}
