//! Where the decoder's weights come from. The decoder asks for tensors by *canonical* names —
//! Hugging Face Llama's (`model.layers.3.self_attn.q_proj.weight`, `mlp.fc1` for plain MLPs,
//! `block_sparse_moe.experts.2.w1`, `model.embed_positions` for learned positions) — and
//! [`LlmWeights`] finds each one in a checkpoint: a safetensors file or sharded set, PyTorch
//! `.bin`/`.pth` files, or a GGUF file. A [`Plan`] says which stored tensor holds it and how
//! to turn that into the Hugging Face layout:
//!
//! * fused projections are sliced (Phi-3 `qkv_proj`/`gate_up_proj`, GPT-2 `c_attn`, GGUF
//!   `attn_qkv`, stacked GGUF experts `ffn_*_exps`);
//! * GPT-2's `Conv1D` weights (`[in, out]`) are transposed;
//! * llama.cpp's q/k row permutation of `llama` GGUF files (its converter interleaves the two
//!   rotary halves of every head) is undone, so the usual rotate-half RoPE applies;
//! * Hugging Face Gemma norms (`1 + w`) get their 1 added (GGUF files store `1 + w`).
//!
//! GGUF quantized tensors are dequantized to f32 as they are read. A tensor that is missing, or
//! whose shape does not fit, is an error naming the stored tensor and the expected shape.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tensor_core::{DType, Device, Error, Result, Shape, Tensor};
use tensor_io::gguf::GgufFile;
use tensor_io::pth::PthFile;
use tensor_io::safetensors::MmapedSafetensors;
use tensor_nn::{Init, WeightSource};

use super::config::{Family, LlmConfig};
use super::gpt2;

/// One transformation from the stored layout towards the Hugging Face one.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    /// `[in, out]` → `[out, in]` (GPT-2 `Conv1D`).
    Transpose,
    /// Rows `start..start + len` of a fused tensor.
    Rows { start: usize, len: usize },
    /// Undo llama.cpp's `permute(w, heads)` of q/k rows.
    Unpermute { heads: usize },
    /// `w + 1` (Gemma norms stored as offsets from one).
    AddOne,
    /// Entry `i` of a stacked tensor (`[experts, ...]`).
    Index(usize),
}

/// A stored tensor name and the steps that make the canonical tensor from it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Candidate {
    pub name: String,
    pub steps: Vec<Step>,
}

impl Candidate {
    pub fn new(name: impl Into<String>, steps: Vec<Step>) -> Candidate {
        Candidate {
            name: name.into(),
            steps,
        }
    }

    pub fn plain(name: impl Into<String>) -> Candidate {
        Candidate::new(name, Vec::new())
    }

    /// Whether several canonical tensors are cut from this one stored tensor.
    fn is_shared(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::Rows { .. } | Step::Index(_)))
    }
}

/// Where a canonical tensor may be stored, most likely first.
pub(crate) type Plan = Vec<Candidate>;

/// How the checkpoint names its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    HuggingFace,
    Gguf,
}

/// The opened checkpoint files.
pub(crate) enum Checkpoint {
    Safetensors(MmapedSafetensors),
    Pth {
        files: Vec<PthFile>,
        index: HashMap<String, usize>,
    },
    Gguf(Arc<GgufFile>),
}

impl Checkpoint {
    /// Open PyTorch checkpoints (one file, or the shards of a `pytorch_model.bin.index.json`).
    pub fn open_pth(paths: &[PathBuf]) -> Result<Checkpoint> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = PthFile::open(p)?;
            for n in f.names() {
                index.entry(n.to_string()).or_insert(i);
            }
            files.push(f);
        }
        Ok(Checkpoint::Pth { files, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Checkpoint::Safetensors(s) => s.contains(name),
            Checkpoint::Pth { index, .. } => index.contains_key(name),
            Checkpoint::Gguf(g) => g.tensor_info(name).is_some(),
        }
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            Checkpoint::Safetensors(s) => s.shape(name).ok().map(<[usize]>::to_vec),
            Checkpoint::Pth { files, index } => index
                .get(name)
                .and_then(|&i| files[i].shape(name).ok())
                .map(<[usize]>::to_vec),
            Checkpoint::Gguf(g) => g.tensor_info(name).map(|t| t.dims().to_vec()),
        }
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        match self {
            Checkpoint::Safetensors(s) => s.tensor(name, device),
            Checkpoint::Pth { files, index } => match index.get(name) {
                Some(&i) => files[i].tensor(name, device),
                None => Err(Error::invalid("load weight", format!("no tensor '{name}'"))),
            },
            Checkpoint::Gguf(g) => g.tensor(name, device),
        }
    }

    /// The file(s), for messages.
    pub fn describe(&self) -> String {
        fn show(p: &[&Path]) -> String {
            match p {
                [one] => one.display().to_string(),
                [first, ..] => format!("{} (and {} more shards)", first.display(), p.len() - 1),
                [] => "an empty checkpoint".into(),
            }
        }
        match self {
            Checkpoint::Safetensors(s) => show(&s.files()),
            Checkpoint::Pth { files, .. } => {
                show(&files.iter().map(|f| f.path()).collect::<Vec<_>>())
            }
            Checkpoint::Gguf(g) => g.path().display().to_string(),
        }
    }
}

/// A [`WeightSource`] over a checkpoint, answering canonical names.
pub(crate) struct LlmWeights {
    ckpt: Checkpoint,
    scheme: Scheme,
    cfg: LlmConfig,
    /// Recently read fused/stacked tensors, so that slicing q, k and v (or every expert) reads
    /// and dequantizes the stored tensor once.
    shared: Mutex<Vec<(String, Tensor)>>,
}

const SHARED_CACHE: usize = 3;

impl LlmWeights {
    pub fn new(ckpt: Checkpoint, scheme: Scheme, cfg: &LlmConfig) -> LlmWeights {
        LlmWeights {
            ckpt,
            scheme,
            cfg: cfg.clone(),
            shared: Mutex::new(Vec::new()),
        }
    }

    pub fn plan(&self, name: &str) -> Option<Plan> {
        match (self.scheme, self.cfg.family) {
            (Scheme::HuggingFace, Family::Gpt2) => gpt2::hf_plan(&self.cfg, name),
            (Scheme::Gguf, Family::Gpt2) => gpt2::gguf_plan(&self.cfg, name),
            (Scheme::HuggingFace, _) => Some(hf_plan(&self.cfg, name)),
            (Scheme::Gguf, _) => gguf_plan(&self.cfg, name),
        }
    }

    fn stored(&self, c: &Candidate, device: &Device) -> Result<Tensor> {
        if !c.is_shared() {
            return self.ckpt.load(&c.name, device);
        }
        let mut cache = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, t)) = cache.iter().find(|(n, _)| *n == c.name) {
            return Ok(t.clone());
        }
        let t = self.ckpt.load(&c.name, device)?;
        if cache.len() >= SHARED_CACHE {
            cache.remove(0);
        }
        cache.push((c.name.clone(), t.clone()));
        Ok(t)
    }

    fn missing(&self, name: &str, plan: &Plan, shape: &Shape) -> Error {
        let stored: Vec<&str> = plan.iter().map(|c| c.name.as_str()).collect();
        let what = if stored.len() == 1 && stored[0] == name {
            format!("tensor '{name}'")
        } else {
            format!("tensor '{}' (for {name})", stored.join("' or '"))
        };
        Error::invalid(
            "load weight",
            format!(
                "{what} of shape {:?} is missing from {}",
                shape.dims(),
                self.ckpt.describe()
            ),
        )
    }
}

fn apply(t: Tensor, step: &Step) -> Result<Tensor> {
    match step {
        Step::Transpose => {
            if t.rank() != 2 {
                return Err(Error::invalid("transpose", "not a matrix"));
            }
            t.t()?.contiguous()
        }
        Step::Rows { start, len } => t.narrow(0, *start, *len)?.contiguous(),
        Step::Unpermute { heads } => {
            let dims = t.dims().to_vec();
            let rows = dims.first().copied().unwrap_or(0);
            if *heads == 0 || !rows.is_multiple_of(2 * heads) {
                return Err(Error::invalid(
                    "unpermute",
                    format!("{rows} rows do not split into {heads} heads of even size"),
                ));
            }
            let mut split = vec![*heads, rows / heads / 2, 2];
            split.extend_from_slice(&dims[1..]);
            t.contiguous()?
                .reshape(split)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape(dims)
        }
        Step::AddOne => t.to_dtype(DType::F32)?.add_scalar(1.0),
        Step::Index(i) => t.narrow(0, *i, 1)?.squeeze(0)?.contiguous(),
    }
}

impl WeightSource for LlmWeights {
    fn get(
        &self,
        name: &str,
        shape: &Shape,
        _init: &Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let plan = self.plan(name).ok_or_else(|| {
            Error::invalid(
                "load weight",
                format!(
                    "the {} decoder needs '{name}' (shape {:?}), which has no name in {:?} \
                     checkpoints",
                    self.cfg.architecture,
                    shape.dims(),
                    self.scheme
                ),
            )
        })?;
        let c = plan
            .iter()
            .find(|c| self.ckpt.contains(&c.name))
            .ok_or_else(|| self.missing(name, &plan, shape))?;
        let stored_shape = self.ckpt.shape(&c.name).unwrap_or_default();
        let mismatch = |why: String| {
            let target = if c.name == name {
                String::new()
            } else {
                format!(" (for {name})")
            };
            Error::invalid(
                "load weight",
                format!(
                    "tensor '{}'{target} in {} has shape {stored_shape:?}, but the model expects \
                     {:?}{why}",
                    c.name,
                    self.ckpt.describe(),
                    shape.dims()
                ),
            )
        };
        let raw = self.stored(c, device)?;
        let mut t = raw;
        for s in &c.steps {
            t = apply(t, s).map_err(|e| mismatch(format!(" ({e})")))?;
        }
        if t.shape() != shape {
            let after = if c.steps.is_empty() {
                String::new()
            } else {
                format!(" (got {:?} after {:?})", t.dims(), c.steps)
            };
            return Err(mismatch(after));
        }
        if t.dtype() != dtype {
            t = t.to_dtype(dtype)?;
        }
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        self.plan(name)
            .is_some_and(|p| p.iter().any(|c| self.ckpt.contains(&c.name)))
    }
}

/// `model.layers.{i}.{rest}` → `(i, rest)`.
pub(crate) fn layer_part(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// `mlp.gate_proj.weight` → `("mlp.gate_proj", "weight")`.
pub(crate) fn split_kind(rest: &str) -> Option<(&str, &str)> {
    rest.rsplit_once('.')
}

/// Hugging Face checkpoints: the canonical names, except Phi-3's fused projections and the
/// `1 + w` of Gemma norms.
fn hf_plan(cfg: &LlmConfig, name: &str) -> Plan {
    let mut steps = Vec::new();
    if cfg.norm_plus_one && name.ends_with("norm.weight") {
        steps.push(Step::AddOne);
    }
    if cfg.family == Family::Phi3 {
        if let Some((i, rest)) = layer_part(name) {
            let (q, kv, ff) = (
                cfg.num_heads * cfg.head_dim,
                cfg.num_kv_heads * cfg.head_dim,
                cfg.intermediate_size,
            );
            let fused = match split_kind(rest) {
                Some(("self_attn.q_proj", k)) => Some(("self_attn.qkv_proj", k, 0, q)),
                Some(("self_attn.k_proj", k)) => Some(("self_attn.qkv_proj", k, q, kv)),
                Some(("self_attn.v_proj", k)) => Some(("self_attn.qkv_proj", k, q + kv, kv)),
                Some(("mlp.gate_proj", k)) => Some(("mlp.gate_up_proj", k, 0, ff)),
                Some(("mlp.up_proj", k)) => Some(("mlp.gate_up_proj", k, ff, ff)),
                _ => None,
            };
            if let Some((part, kind, start, len)) = fused {
                return vec![
                    Candidate::new(
                        format!("model.layers.{i}.{part}.{kind}"),
                        vec![Step::Rows { start, len }],
                    ),
                    // Already split (a converted checkpoint).
                    Candidate::plain(name),
                ];
            }
        }
    }
    vec![Candidate::new(name, steps)]
}

/// GGUF (llama.cpp) names of the canonical tensors.
fn gguf_plan(cfg: &LlmConfig, name: &str) -> Option<Plan> {
    let top = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(vec![Candidate::plain(t)]);
    }
    let (i, rest) = layer_part(name)?;
    let (part, kind) = split_kind(rest)?;
    let blk = |n: &str| format!("blk.{i}.{n}.{kind}");
    // llama.cpp permutes q/k of the architectures its converter runs through LlamaModel.
    let permuted = cfg.architecture == "llama";
    let unpermute = |heads: usize| {
        if permuted {
            vec![Step::Unpermute { heads }]
        } else {
            Vec::new()
        }
    };
    let (q, kv, ff) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
        cfg.intermediate_size,
    );
    let phi3 = cfg.family == Family::Phi3;
    let rows = |n: &str, start: usize, len: usize| {
        vec![Candidate::new(blk(n), vec![Step::Rows { start, len }])]
    };
    let plan = match part {
        "input_layernorm" => vec![Candidate::plain(blk("attn_norm"))],
        "self_attn.q_proj" if phi3 => rows("attn_qkv", 0, q),
        "self_attn.k_proj" if phi3 => rows("attn_qkv", q, kv),
        "self_attn.v_proj" if phi3 => rows("attn_qkv", q + kv, kv),
        "self_attn.q_proj" => vec![Candidate::new(blk("attn_q"), unpermute(cfg.num_heads))],
        "self_attn.k_proj" => vec![Candidate::new(blk("attn_k"), unpermute(cfg.num_kv_heads))],
        "self_attn.v_proj" => vec![Candidate::plain(blk("attn_v"))],
        "self_attn.o_proj" => vec![Candidate::plain(blk("attn_output"))],
        "self_attn.q_norm" => vec![Candidate::plain(blk("attn_q_norm"))],
        "self_attn.k_norm" => vec![Candidate::plain(blk("attn_k_norm"))],
        "post_attention_layernorm" if cfg.sandwich_norms => {
            vec![Candidate::plain(blk("post_attention_norm"))]
        }
        "post_attention_layernorm" | "pre_feedforward_layernorm" => {
            vec![Candidate::plain(blk("ffn_norm"))]
        }
        "post_feedforward_layernorm" => vec![Candidate::plain(blk("post_ffw_norm"))],
        "mlp.gate_proj" if phi3 => rows("ffn_up", 0, ff),
        "mlp.up_proj" if phi3 => rows("ffn_up", ff, ff),
        "mlp.gate_proj" => vec![Candidate::plain(blk("ffn_gate"))],
        "mlp.up_proj" => vec![Candidate::plain(blk("ffn_up"))],
        "mlp.down_proj" => vec![Candidate::plain(blk("ffn_down"))],
        "block_sparse_moe.gate" => vec![Candidate::plain(blk("ffn_gate_inp"))],
        _ => {
            // block_sparse_moe.experts.{e}.w{1,2,3}: stacked `ffn_*_exps`, or the older
            // per-expert `ffn_*.{e}`.
            let rest = part.strip_prefix("block_sparse_moe.experts.")?;
            let (e, w) = rest.split_once('.')?;
            let e: usize = e.parse().ok()?;
            let base = match w {
                "w1" => "ffn_gate",
                "w2" => "ffn_down",
                "w3" => "ffn_up",
                _ => return None,
            };
            vec![
                Candidate::new(format!("blk.{i}.{base}_exps.{kind}"), vec![Step::Index(e)]),
                Candidate::plain(format!("blk.{i}.{base}.{e}.{kind}")),
            ]
        }
    };
    Some(plan)
}
