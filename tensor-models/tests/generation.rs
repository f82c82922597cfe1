//! Generation with a tiny deterministic fake [`CausalLm`] whose logits are made by hand: the
//! model follows a script of token ids chosen by the prompt's first token (or returns fixed
//! logits), checks that it is driven through its KV cache correctly, and records every call.
//! Text goes through real tokenizers from tensor-io's fixtures (SmolLM2's byte-level BPE and
//! a small SentencePiece vocabulary with `<0xE2>`-style byte-fallback tokens).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use tensor_core::{Device, Error, Result, Tensor};
use tensor_io::tokenizer::Tokenizer;
use tensor_models::generation::{
    apply_min_p, apply_presence_frequency_penalty, apply_repetition_penalty, apply_top_k,
    apply_top_p, generate, generate_batch, process_logits, softmax, FinishReason, Sampler,
    SamplingParams,
};
use tensor_models::{CausalLm, LmInfo};

/// What the fake model predicts.
enum Mode {
    /// Sequence `r` follows `scripts[prompt_r[0]]`: the k-th generated token is `script[k]`
    /// (logit 10, everything else 0); past the end of the script it predicts `filler`.
    Script {
        scripts: HashMap<u32, Vec<u32>>,
        filler: u32,
    },
    /// The same logits at every position.
    Fixed(Vec<f32>),
}

struct FakeLm {
    info: LmInfo,
    device: Device,
    mode: Mode,
    cache: usize,
    prompt_len: usize,
    first_tokens: Vec<u32>,
    /// Every call: (batch, length, pos).
    calls: Vec<(usize, usize, usize)>,
    /// Every token fed per sequence, in order.
    fed: Vec<Vec<u32>>,
}

impl FakeLm {
    fn new(vocab: usize, max_seq_len: usize, eos: Vec<u32>, mode: Mode) -> FakeLm {
        FakeLm {
            info: LmInfo {
                architecture: "fake".into(),
                vocab_size: vocab,
                max_seq_len,
                eos_token_ids: eos,
                bos_token_id: None,
            },
            device: tensor_cpu::device(),
            mode,
            cache: 0,
            prompt_len: 0,
            first_tokens: Vec::new(),
            calls: Vec::new(),
            fed: Vec::new(),
        }
    }

    fn script(vocab: usize, scripts: &[(u32, Vec<u32>)]) -> FakeLm {
        let mode = Mode::Script {
            scripts: scripts.iter().cloned().collect(),
            filler: 0,
        };
        FakeLm::new(vocab, 4096, vec![], mode)
    }

    fn row(&self, seq: usize, position: usize) -> Vec<f32> {
        let v = self.info.vocab_size;
        match &self.mode {
            Mode::Fixed(l) => l.clone(),
            Mode::Script { scripts, filler } => {
                let k = (position + 1).saturating_sub(self.prompt_len);
                let tok = scripts
                    .get(&self.first_tokens[seq])
                    .and_then(|s| s.get(k).copied())
                    .unwrap_or(*filler);
                let mut row = vec![0.0; v];
                row[tok as usize] = 10.0;
                row
            }
        }
    }
}

impl CausalLm for FakeLm {
    fn info(&self) -> &LmInfo {
        &self.info
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn forward(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        if pos != self.cache || pos + l > self.info.max_seq_len {
            return Err(Error::msg(format!(
                "fake: pos {pos} with cache {} and {l} tokens",
                self.cache
            )));
        }
        let ids = ids.to_vec2::<u32>()?;
        if pos == 0 {
            self.prompt_len = l;
            self.first_tokens = ids.iter().map(|r| r[0]).collect();
            self.fed = vec![Vec::new(); b];
        }
        for (f, r) in self.fed.iter_mut().zip(&ids) {
            f.extend(r);
        }
        self.calls.push((b, l, pos));
        self.cache += l;
        let mut out = Vec::new();
        for s in 0..b {
            for i in 0..l {
                out.extend(self.row(s, pos + i));
            }
        }
        let width = out.len() / (b * l);
        Tensor::from_vec(out, (b, l, width), &self.device)
    }
    fn reset(&mut self) {
        self.cache = 0;
    }
    fn cache_len(&self) -> usize {
        self.cache
    }
    fn truncate_cache(&mut self, len: usize) -> Result<()> {
        self.cache = self.cache.min(len);
        Ok(())
    }
}

trait Dims2 {
    fn dims2(&self) -> Result<(usize, usize)>;
}

impl Dims2 for Tensor {
    fn dims2(&self) -> Result<(usize, usize)> {
        match self.dims() {
            [b, l] => Ok((*b, *l)),
            d => Err(Error::msg(format!("fake: ids must be [B, L], got {d:?}"))),
        }
    }
}

fn tok_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tensor-io/tests/fixtures/tokenizer"
    ))
}

fn smollm2() -> Tokenizer {
    let gz = std::fs::read(tok_dir().join("smollm2/tokenizer.json.gz")).expect("fixture");
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut json)
        .expect("gunzip");
    let mut t = Tokenizer::from_bytes(&json).expect("smollm2 tokenizer");
    t.set_eos_token_id(t.token_to_id("<|im_end|>"));
    t
}

fn tiny_llama() -> Tokenizer {
    Tokenizer::from_file(tok_dir().join("tiny_llama/tokenizer.json")).expect("tiny_llama")
}

/// Generate, collecting the streamed pieces.
fn collect(
    model: &mut dyn CausalLm,
    tok: &Tokenizer,
    prompt: &[u32],
    params: &SamplingParams,
) -> (tensor_models::GenerationOutput, Vec<String>) {
    let mut pieces = Vec::new();
    let out = generate(model, tok, prompt, params, |p| {
        pieces.push(p.to_string());
        true
    })
    .expect("generate");
    (out, pieces)
}

#[test]
fn greedy_follows_the_script_through_the_cache() {
    let tok = smollm2();
    let script = tok
        .encode("Hello world, this is a test", false)
        .expect("encode");
    let vocab = tok.vocab_size();
    let mut lm = FakeLm::script(vocab, &[(1, script.clone())]);
    let params = SamplingParams {
        max_new_tokens: 4,
        ..SamplingParams::greedy()
    };
    let (out, pieces) = collect(&mut lm, &tok, &[1, 2, 3], &params);
    assert_eq!(out.ids, script[..4]);
    assert_eq!(out.finish_reason, FinishReason::MaxTokens);
    assert_eq!(out.text, tok.decode(&script[..4], true).expect("decode"));
    assert_eq!(pieces.concat(), out.text);
    // One prefill, then one token per step at increasing positions; the last sampled token
    // is never fed.
    assert_eq!(lm.calls, vec![(1, 3, 0), (1, 1, 3), (1, 1, 4), (1, 1, 5)]);
    assert_eq!(lm.fed[0], [&[1, 2, 3], &script[..3]].concat());
    assert_eq!(out.stats.prompt_tokens, 3);
    assert_eq!(out.stats.generated_tokens, 4);
    assert!(out.stats.prefill_time <= out.stats.time_to_first_token);

    // max_new_tokens = 0 generates nothing and runs no forward.
    let mut lm = FakeLm::script(vocab, &[(1, script.clone())]);
    let zero = SamplingParams {
        max_new_tokens: 0,
        ..params
    };
    let (out, pieces) = collect(&mut lm, &tok, &[1], &zero);
    assert!(out.ids.is_empty() && pieces.is_empty() && lm.calls.is_empty());
}

#[test]
fn eos_ends_generation() {
    let tok = smollm2();
    let vocab = tok.vocab_size();
    let eos = tok.token_to_id("<|im_end|>").expect("im_end");
    let mut script = tok.encode("Hi there", false).expect("encode");
    script.push(eos);
    script.extend(tok.encode(" never", false).expect("encode"));
    // Default EOS ids: the model's (none here) plus the tokenizer's.
    let mut lm = FakeLm::script(vocab, &[(5, script.clone())]);
    let (out, pieces) = collect(&mut lm, &tok, &[5], &SamplingParams::greedy());
    assert_eq!(out.finish_reason, FinishReason::Eos);
    assert_eq!(*out.ids.last().expect("ids"), eos);
    assert_eq!(out.text, "Hi there");
    assert_eq!(pieces.concat(), "Hi there");
    // Explicit EOS ids replace the defaults.
    let other = script[1];
    let params = SamplingParams {
        eos_token_ids: vec![other],
        ..SamplingParams::greedy()
    };
    let mut lm = FakeLm::script(vocab, &[(5, script.clone())]);
    let (out, _) = collect(&mut lm, &tok, &[5], &params);
    assert_eq!(out.ids, script[..2]);
    assert_eq!(out.finish_reason, FinishReason::Eos);
    // The model's EOS ids count too.
    let mut lm = FakeLm::script(vocab, &[(5, script.clone())]);
    lm.info.eos_token_ids = vec![script[0]];
    let mut plain = tok.clone();
    plain.set_eos_token_id(None);
    let (out, _) = collect(&mut lm, &plain, &[5], &SamplingParams::greedy());
    assert_eq!(out.ids, [script[0]]);
}

#[test]
fn stop_strings_across_token_boundaries() {
    let tok = smollm2();
    let vocab = tok.vocab_size();
    let script = tok
        .encode("Answer: 42</stop> and more text", false)
        .expect("encode");
    // "</stop>" is three tokens ("</", "stop", ">").
    let params = SamplingParams {
        stop_strings: vec!["</stop>".into(), "unused".into()],
        max_new_tokens: 50,
        ..SamplingParams::greedy()
    };
    let mut lm = FakeLm::script(vocab, &[(1, script.clone())]);
    let (out, pieces) = collect(&mut lm, &tok, &[1], &params);
    assert_eq!(out.text, "Answer: 42");
    assert_eq!(pieces.concat(), "Answer: 42");
    assert!(pieces.iter().all(|p| !p.contains('<')), "{pieces:?}");
    assert_eq!(
        out.finish_reason,
        FinishReason::StopString("</stop>".into())
    );
    let stop_end = tok
        .encode("Answer: 42</stop>", false)
        .expect("encode")
        .len();
    assert_eq!(out.ids, script[..stop_end]);

    // A prefix of the stop string that does not complete it is released later, unchanged.
    let script = tok.encode("a </sto b</st", false).expect("encode");
    let mut lm = FakeLm::script(vocab, &[(1, script.clone())]);
    let params = SamplingParams {
        max_new_tokens: script.len(),
        ..params
    };
    let (out, pieces) = collect(&mut lm, &tok, &[1], &params);
    assert_eq!(out.finish_reason, FinishReason::MaxTokens);
    assert_eq!(out.text, "a </sto b</st");
    assert_eq!(pieces.concat(), "a </sto b</st");

    // A stop string inside a single token, and one completed by the very last token.
    let script = tok.encode("x hello y", false).expect("encode");
    let mut lm = FakeLm::script(vocab, &[(1, script.clone())]);
    let params = SamplingParams {
        stop_strings: vec!["ell".into()],
        max_new_tokens: 10,
        ..SamplingParams::greedy()
    };
    let (out, pieces) = collect(&mut lm, &tok, &[1], &params);
    assert_eq!(
        (out.text.as_str(), pieces.concat().as_str()),
        ("x h", "x h")
    );
    let mut lm = FakeLm::script(vocab, &[(1, script.clone())]);
    let params = SamplingParams {
        stop_strings: vec![" y".into()],
        max_new_tokens: script.len(),
        ..SamplingParams::greedy()
    };
    let (out, _) = collect(&mut lm, &tok, &[1], &params);
    assert_eq!(out.text, "x hello");
    assert_eq!(out.finish_reason, FinishReason::StopString(" y".into()));
}

fn check_utf8_stream(tok: &Tokenizer, script: &[u32], expected: &str) {
    let vocab = tok.vocab_size();
    let mut lm = FakeLm::script(vocab, &[(1, script.to_vec())]);
    let params = SamplingParams {
        max_new_tokens: script.len(),
        ..SamplingParams::greedy()
    };
    let (out, pieces) = collect(&mut lm, tok, &[1], &params);
    assert_eq!(out.ids, script);
    assert_eq!(out.text, expected);
    assert_eq!(pieces.concat(), expected);
    assert!(
        pieces
            .iter()
            .all(|p| !p.contains('\u{FFFD}') && !p.is_empty()),
        "{pieces:?}"
    );
    // Some tokens are parts of a character: fewer pieces than tokens.
    assert!(pieces.len() < script.len(), "{pieces:?}");
}

#[test]
fn utf8_is_never_split_byte_level_bpe() {
    let tok = smollm2();
    let text = "Hello 世界 🎉 café";
    let script = tok.encode(text, false).expect("encode");
    // The fixture really splits characters across tokens.
    let single: Vec<String> = script
        .iter()
        .map(|&i| tok.decode(&[i], true).expect("decode"))
        .collect();
    assert!(single.iter().any(|s| s.contains('\u{FFFD}')), "{single:?}");
    check_utf8_stream(&tok, &script, text);
}

#[test]
fn utf8_is_never_split_byte_fallback() {
    let tok = tiny_llama();
    let script = tok.encode("the 世界 é", false).expect("encode");
    let byte_tokens = script
        .iter()
        .filter(|&&i| tok.id_to_token(i).is_some_and(|t| t.starts_with("<0x")))
        .count();
    assert!(byte_tokens >= 6, "expected <0x..> tokens in {script:?}");
    let expected = tok.decode(&script, true).expect("decode");
    assert_eq!(expected, "the 世界 é");
    check_utf8_stream(&tok, &script, &expected);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let tok = smollm2();
    let mut logits = vec![-10.0f32; 300];
    for (i, l) in logits.iter_mut().enumerate().take(60).skip(40) {
        *l = (i % 7) as f32 * 0.3;
    }
    let run = |seed: u64| {
        let mut lm = FakeLm::new(300, 4096, vec![], Mode::Fixed(logits.clone()));
        let params = SamplingParams {
            temperature: 1.0,
            seed,
            max_new_tokens: 40,
            ..Default::default()
        };
        collect(&mut lm, &tok, &[1], &params).0.ids
    };
    let a = run(7);
    assert_eq!(a, run(7));
    assert_ne!(a, run(8));
    assert!(a.iter().all(|&i| (40..60).contains(&i)), "{a:?}");
}

#[test]
fn sampling_distribution_matches_softmax() {
    let logits = [0.0f32, 1.0, 2.0, 0.5, -1.0];
    let probs = softmax(&logits);
    let mut s = Sampler::new(&SamplingParams::sampled(1.0, 3)).expect("sampler");
    let n = 40_000;
    let mut counts = [0usize; 5];
    for _ in 0..n {
        counts[s.sample(&logits, &[], &[]).expect("sample") as usize] += 1;
    }
    for (c, p) in counts.iter().zip(&probs) {
        let f = *c as f64 / n as f64;
        assert!((f - p).abs() < 0.01, "frequency {f} vs probability {p}");
    }
    // Temperature 0.5 squares the odds: p ∝ exp(2·logit).
    let mut s = Sampler::new(&SamplingParams::sampled(0.5, 4)).expect("sampler");
    let hot = softmax(&logits.map(|x| 2.0 * x));
    let mut counts = [0usize; 5];
    for _ in 0..n {
        counts[s.sample(&logits, &[], &[]).expect("sample") as usize] += 1;
    }
    for (c, p) in counts.iter().zip(&hot) {
        assert!((*c as f64 / n as f64 - p).abs() < 0.01);
    }
}

#[test]
fn top_k_one_is_greedy_and_filters_keep_the_right_set() {
    let mut rng = tensor_models::generation::Rng::new(11);
    for trial in 0..50 {
        let logits: Vec<f32> = (0..32).map(|_| rng.next_f64() as f32 * 8.0 - 4.0).collect();
        let greedy = Sampler::new(&SamplingParams::greedy())
            .expect("s")
            .sample(&logits, &[], &[])
            .expect("sample");
        let mut topk1 = Sampler::new(&SamplingParams {
            top_k: 1,
            ..SamplingParams::sampled(1.3, trial)
        })
        .expect("s");
        for _ in 0..5 {
            assert_eq!(topk1.sample(&logits, &[], &[]).expect("sample"), greedy);
        }
    }
    // probabilities 0.5, 0.3, 0.15, 0.05 (ids 0..4)
    let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
    let kept = |params: SamplingParams| {
        let mut s = Sampler::new(&params).expect("s");
        let mut seen = [false; 4];
        for _ in 0..4000 {
            seen[s.sample(&logits, &[], &[]).expect("sample") as usize] = true;
        }
        seen
    };
    let p = |top_p, min_p, top_k| SamplingParams {
        top_p,
        min_p,
        top_k,
        ..SamplingParams::sampled(1.0, 9)
    };
    // Top-p keeps the smallest head whose mass reaches p.
    assert_eq!(kept(p(0.75, 0.0, 0)), [true, true, false, false]);
    assert_eq!(kept(p(0.81, 0.0, 0)), [true, true, true, false]);
    assert_eq!(kept(p(0.3, 0.0, 0)), [true, false, false, false]);
    // Min-p 0.5: threshold 0.25.
    assert_eq!(kept(p(1.0, 0.5, 0)), [true, true, false, false]);
    assert_eq!(kept(p(1.0, 0.0, 3)), [true, true, true, false]);
    assert_eq!(kept(p(1.0, 0.0, 0)), [true, true, true, true]);
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        let ok = (g.is_infinite() && g == w) || (g - w).abs() < 1e-5;
        assert!(ok, "got {got:?}\nwant {want:?}");
    }
}

#[test]
fn penalties_match_hand_computation() {
    // Repetition penalty (HF): seen tokens 0, 1 (twice) and 3 — each distinct token once.
    let mut l = vec![2.0f32, -2.0, 0.5, 1.0];
    apply_repetition_penalty(&mut l, &[0, 1, 1, 3, 99], 2.0);
    assert_eq!(l, [1.0, -4.0, 0.5, 0.5]);
    // Presence / frequency (OpenAI): logit -= count·frequency + (count > 0)·presence.
    let mut l = vec![2.0f32, -2.0, 0.5, 1.0];
    apply_presence_frequency_penalty(&mut l, &[0, 1, 1, 99], 0.5, 0.25);
    assert_eq!(l, [2.0 - 0.25 - 0.5, -2.0 - 0.5 - 0.5, 0.5, 1.0]);
    // Neutral values change nothing.
    let mut l = vec![2.0f32, -2.0];
    apply_repetition_penalty(&mut l, &[0, 1], 1.0);
    apply_presence_frequency_penalty(&mut l, &[0, 1], 0.0, 0.0);
    assert_eq!(l, [2.0, -2.0]);
    // A penalty steers greedy decoding away from the repeated token.
    let logits = [3.0f32, 2.5, 0.0];
    let mut s = Sampler::new(&SamplingParams {
        repetition_penalty: 1.5,
        ..SamplingParams::greedy()
    })
    .expect("s");
    assert_eq!(s.sample(&logits, &[0], &[0]).expect("sample"), 1);
    let mut s = Sampler::new(&SamplingParams {
        frequency_penalty: 0.3,
        ..SamplingParams::greedy()
    })
    .expect("s");
    assert_eq!(s.sample(&logits, &[7], &[0]).expect("sample"), 0);
    assert_eq!(s.sample(&logits, &[7], &[0, 0]).expect("sample"), 1);
}

#[test]
fn processors_match_transformers() {
    // Values from transformers 5.x:
    //   logits = [[1.5, -0.5, 3.0, 0.25, -2.0, 2.0, 0.0, 1.0]]; ids = [[0, 1, 1, 4, 7]]
    //   LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3),
    //       TemperatureLogitsWarper(0.7), TopKLogitsWarper(6), TopPLogitsWarper(0.9),
    //       MinPLogitsWarper(0.05)])(ids, logits)
    let logits = [1.5f32, -0.5, 3.0, 0.25, -2.0, 2.0, 0.0, 1.0];
    let ids = [0u32, 1, 1, 4, 7];
    let inf = f32::NEG_INFINITY;

    let mut l = logits.to_vec();
    apply_repetition_penalty(&mut l, &ids, 1.3);
    let hf_rep = [1.1538461, -0.65, 3.0, 0.25, -2.6, 2.0, 0.0, 0.7692308];
    assert_close(&l, &hf_rep);

    let mut l = logits.to_vec();
    apply_top_k(&mut l, 3);
    assert_close(&l, &[1.5, inf, 3.0, inf, inf, 2.0, inf, inf]);
    let mut l = logits.to_vec();
    apply_top_p(&mut l, 0.6);
    assert_close(&l, &[inf, inf, 3.0, inf, inf, 2.0, inf, inf]);
    let mut l = logits.to_vec();
    apply_min_p(&mut l, 0.3);
    assert_close(&l, &[inf, inf, 3.0, inf, inf, 2.0, inf, inf]);

    let params = SamplingParams {
        repetition_penalty: 1.3,
        temperature: 0.7,
        top_k: 6,
        top_p: 0.9,
        min_p: 0.05,
        ..Default::default()
    };
    let mut l = logits.to_vec();
    process_logits(&mut l, &ids, &[], &params);
    let hf_full = [1.6483517, inf, 4.285714, inf, inf, 2.857143, inf, inf];
    assert_close(&l, &hf_full);
}

#[test]
fn batch_matches_single_generation() {
    let tok = smollm2();
    let vocab = tok.vocab_size();
    let eos = tok.token_to_id("<|im_end|>").expect("eos");
    let a = tok.encode("first answer is long", false).expect("encode");
    let mut b = tok.encode("short", false).expect("encode");
    b.push(eos);
    let c = tok.encode("third one STOP here", false).expect("encode");
    let scripts = [(10, a.clone()), (20, b.clone()), (30, c.clone())];
    let params = SamplingParams {
        stop_strings: vec!["STOP".into()],
        max_new_tokens: 8,
        ..SamplingParams::greedy()
    };
    let prompts = vec![vec![10, 1, 2], vec![20, 1, 2], vec![30, 5, 6]];
    let mut lm = FakeLm::script(vocab, &scripts);
    let outs = generate_batch(&mut lm, &tok, &prompts, &params).expect("batch");
    // One prefill for all three, then one batched step per token.
    assert_eq!(lm.calls[0], (3, 3, 0));
    assert!(lm.calls[1..].iter().all(|&(b, l, _)| b == 3 && l == 1));
    assert_eq!(outs[0].text, "first answer is long");
    assert_eq!(outs[1].text, "short");
    assert_eq!(outs[1].finish_reason, FinishReason::Eos);
    assert_eq!(outs[2].text, "third one ");
    assert_eq!(
        outs[2].finish_reason,
        FinishReason::StopString("STOP".into())
    );
    for (p, o) in prompts.iter().zip(&outs) {
        let mut lm = FakeLm::script(vocab, &scripts);
        let (single, _) = collect(&mut lm, &tok, p, &params);
        assert_eq!((&single.ids, &single.text), (&o.ids, &o.text));
    }

    // Different lengths run as separate groups; outputs stay in prompt order.
    let prompts = vec![vec![10, 1, 2, 3], vec![20], vec![30, 5, 6, 7]];
    let mut lm = FakeLm::script(vocab, &scripts);
    let outs2 = generate_batch(&mut lm, &tok, &prompts, &params).expect("batch");
    assert_eq!(lm.calls[0], (1, 1, 0));
    assert!(lm.calls.contains(&(2, 4, 0)));
    for (o, o2) in outs.iter().zip(&outs2) {
        assert_eq!(o.text, o2.text);
    }

    // Sampled: sequence i uses seed + i, exactly as a single generation with that seed.
    let mut logits = vec![-5.0f32; 300];
    for (i, l) in logits.iter_mut().enumerate().skip(65).take(26) {
        *l = (i % 5) as f32 * 0.4;
    }
    let params = SamplingParams {
        max_new_tokens: 12,
        ..SamplingParams::sampled(1.0, 100)
    };
    let prompts = vec![vec![1, 2], vec![3, 4]];
    let mut lm = FakeLm::new(300, 4096, vec![], Mode::Fixed(logits.clone()));
    let outs = generate_batch(&mut lm, &tok, &prompts, &params).expect("batch");
    for (i, o) in outs.iter().enumerate() {
        let mut lm = FakeLm::new(300, 4096, vec![], Mode::Fixed(logits.clone()));
        let p = SamplingParams {
            seed: 100 + i as u64,
            ..params.clone()
        };
        assert_eq!(collect(&mut lm, &tok, &prompts[i], &p).0.ids, o.ids);
    }
    assert_ne!(outs[0].ids, outs[1].ids);
}

#[test]
fn cancel_context_limit_and_errors() {
    let tok = smollm2();
    let vocab = tok.vocab_size();
    let script = tok
        .encode("one two three four five", false)
        .expect("encode");
    // The callback stops generation.
    let mut lm = FakeLm::script(vocab, &[(1, script.clone())]);
    let mut n = 0;
    let out = generate(&mut lm, &tok, &[1], &SamplingParams::greedy(), |_| {
        n += 1;
        n < 2
    })
    .expect("generate");
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert_eq!(out.ids.len(), 2);

    // The context fills: prompt 3 + at most 2 fed tokens + 1 last sampled token.
    let mut lm = FakeLm::script(vocab, &[(1, script.clone())]);
    lm.info.max_seq_len = 5;
    let (out, _) = collect(&mut lm, &tok, &[1, 2, 3], &SamplingParams::greedy());
    assert_eq!(out.finish_reason, FinishReason::ContextFull);
    assert_eq!(out.ids, script[..3]);

    let mut lm = FakeLm::script(vocab, &[(1, script.clone())]);
    let g = SamplingParams::greedy();
    assert!(generate(&mut lm, &tok, &[], &g, |_| true).is_err());
    lm.info.max_seq_len = 2;
    assert!(generate(&mut lm, &tok, &[1, 2, 3], &g, |_| true).is_err());
    for bad in [
        SamplingParams::sampled(-1.0, 0),
        SamplingParams::sampled(f32::NAN, 0),
        SamplingParams {
            top_p: 0.0,
            ..g.clone()
        },
        SamplingParams {
            min_p: 1.5,
            ..g.clone()
        },
        SamplingParams {
            repetition_penalty: 0.0,
            ..g.clone()
        },
    ] {
        let mut lm = FakeLm::script(vocab, &[(1, script.clone())]);
        assert!(
            generate(&mut lm, &tok, &[1], &bad, |_| true).is_err(),
            "{bad:?}"
        );
    }
    // NaN logits are an error, not a panic.
    let mut lm = FakeLm::new(4, 64, vec![], Mode::Fixed(vec![0.0, f32::NAN, 1.0, 0.0]));
    assert!(generate(&mut lm, &tok, &[1], &g, |_| true).is_err());
    // Logits narrower than the advertised vocabulary are an error.
    let mut lm = FakeLm::new(4, 64, vec![], Mode::Fixed(vec![0.0, 1.0, 2.0]));
    assert!(generate(&mut lm, &tok, &[1], &g, |_| true).is_err());
}
