//! The fused quantized decoder against the module graph over dequantized weights, on the real
//! SmolLM2-135M-Instruct Q4_1 GGUF (run when `scripts/fetch-models.sh` has cached it).

use std::path::PathBuf;

use tensor_core::Tensor;
use tensor_models::llm::{load_with, LoadOptions};

fn smollm2() -> Option<PathBuf> {
    let cache = std::env::var_os("TENSOR_ENGINE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tensor-engine")))
        .unwrap_or_else(|| PathBuf::from(".cache/tensor-engine"));
    let p = cache.join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "note: skipping: {} is absent (run scripts/fetch-models.sh)",
            p.display()
        );
        None
    }
}

fn last_logits(t: &Tensor) -> Vec<f32> {
    let d = t.dims().to_vec();
    t.narrow(1, d[1] - 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

/// Prompts as the chat example sends them (the model's chat template) plus raw text.
const PROMPTS: [&str; 4] = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nHow many legs does a spider have?<|im_end|>\n<|im_start|>assistant\n",
    "The capital of France is",
];

#[test]
fn fused_decoder_follows_the_dequantized_graph() {
    let Some(path) = smollm2() else { return };
    let dev = tensor_cpu::device();
    let mut fused = load_with(&path, &dev, &LoadOptions::default()).unwrap();
    assert!(fused.model.info().architecture == "llama");
    let mut graph = load_with(
        &path,
        &dev,
        &LoadOptions {
            fused: false,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let tok = fused.tokenizer().unwrap();
    for prompt in PROMPTS {
        fused.model.reset();
        graph.model.reset();
        let ids = tok.encode(prompt, false).unwrap();
        let n = ids.len();
        let input = Tensor::from_vec(ids.clone(), (1, n), &dev).unwrap();
        let a = fused.model.forward(&input, 0).unwrap();
        let b = graph.model.forward(&input, 0).unwrap();
        assert_eq!(a.dims(), b.dims());
        let fa = a.flatten_all().unwrap().to_vec::<f32>().unwrap();
        let fb = b.flatten_all().unwrap().to_vec::<f32>().unwrap();
        let scale = fb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = fa
            .iter()
            .zip(&fb)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        eprintln!("{prompt:?}: prefill max |fused - graph| = {err} (max |logit| {scale})");
        assert!(
            err < 0.01 * scale,
            "prefill logits differ by {err} (scale {scale})"
        );
        // Greedy, token by token: the same 20 tokens.
        let (mut la, mut lb) = (last_logits(&a), last_logits(&b));
        for step in 0..20 {
            let (ta, tb) = (argmax(&la), argmax(&lb));
            assert_eq!(
                ta, tb,
                "{prompt:?} step {step}: fused picks {ta}, graph {tb}"
            );
            let next = Tensor::from_vec(vec![ta as u32], (1, 1), &dev).unwrap();
            la = last_logits(&fused.model.forward_last(&next, n + step).unwrap());
            lb = last_logits(&graph.model.forward(&next, n + step).unwrap());
        }
    }
}
