//! Quantize an LLM checkpoint into a GGUF file that both llama.cpp and our loader read.
//!
//! ```text
//! cargo run --release -p tensor-examples --example quantize -- IN OUT.gguf TYPE
//! cargo run --release -p tensor-examples --example quantize -- \
//!     ~/.cache/tensor-engine/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     SmolLM2-135M-Instruct.Q4_K_M.gguf Q4_K_M
//! ```
//!
//! IN is a `.gguf` file, whose metadata is copied entry by entry, or a Hugging Face
//! checkpoint of the llama architecture (a folder with `config.json` and `*.safetensors`, or a
//! `.safetensors` / `model.safetensors.index.json` file beside its `config.json`), converted
//! the way llama.cpp's `convert_hf_to_gguf.py` does it: tensor names, the q/k row permutation,
//! the hyper-parameters, llama3 rope factors, and the tokenizer from `tokenizer.json`.
//!
//! Which ggml type each tensor gets is [`choose_types`]: llama.cpp's `llama_tensor_get_type`
//! (src/llama-quant.cpp) for the requested `llama_ftype`, so that a file made here has the
//! same per-tensor types as `llama-quantize` would give it, and, the reference quantizers of
//! `tensor_core::quant` being bit-exact, the same bytes. Two deliberate differences:
//! * a quantized input is requantized without `--allow-requantize` (with a warning): making
//!   Q8_0/Q4_0/Q4_K_M variants of a shipped Q4_1 file is what the benchmarks need;
//! * a row length that neither the chosen type nor llama.cpp's fallback divides becomes F16
//!   where llama.cpp aborts (it does the same itself when its fallback does not fit).
//!
//! Checked against `llama_model_quantize` of llama-cpp-python 0.3.36: the same type for every
//! tensor and the same bytes, for every TYPE, on SmolLM2-135M (whose 576-wide rows exercise the
//! fallbacks) and on a 30-layer model with rows of multiples of 256 (the layer-dependent mixes).
//!
//! Exit codes: 0 success, 1 runtime error (reading, converting, writing), 2 usage error.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use rayon::prelude::*;
use serde_json::Value;
use tensor_core::f16;
use tensor_core::quant::quantize_into;
use tensor_io::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use tensor_io::safetensors::{MmapedSafetensors, StDtype};
use tensor_io::tokenizer::pre_tokenizer_regex;

const USAGE: &str = "usage: quantize [options] IN OUT.gguf TYPE

Writes OUT.gguf with the tensors of IN quantized to TYPE, choosing each tensor's type as
llama.cpp's llama-quantize does.

IN     a .gguf file, or a Hugging Face llama checkpoint: a folder with config.json and
       *.safetensors (tokenizer.json and tokenizer_config.json are used when present), or a
       .safetensors / model.safetensors.index.json file beside its config.json
TYPE   Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K,
       F16 BF16 F32; Q3_K, Q4_K, Q5_K are llama-quantize's aliases of Q3_K_M, Q4_K_M, Q5_K_M

options:
  --pure         every quantizable tensor gets TYPE's base type (no per-tensor mix; a row
                 length the type does not divide still falls back)
  --dry-run      print the type chosen for each tensor and write nothing
  --threads N    CPU threads (default: all cores)
  -h, --help     print this help";

// ---------------------------------------------------------------------------------------------
// File types and the per-tensor choice (pure; the unit tests at the end pin llama.cpp's choices)
// ---------------------------------------------------------------------------------------------

/// llama.cpp's `llama_ftype`: the mix a user asks for, stored as `general.file_type`.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

/// (name, file type, `llama_ftype` value, default tensor type: `llama_ftype_get_default_type`).
const FILE_TYPES: [(&str, FileType, u32, GgmlType); 17] = [
    ("F32", FileType::F32, 0, GgmlType::F32),
    ("F16", FileType::F16, 1, GgmlType::F16),
    ("BF16", FileType::BF16, 32, GgmlType::BF16),
    ("Q4_0", FileType::Q4_0, 2, GgmlType::Q4_0),
    ("Q4_1", FileType::Q4_1, 3, GgmlType::Q4_1),
    ("Q5_0", FileType::Q5_0, 8, GgmlType::Q5_0),
    ("Q5_1", FileType::Q5_1, 9, GgmlType::Q5_1),
    ("Q8_0", FileType::Q8_0, 7, GgmlType::Q8_0),
    ("Q2_K", FileType::Q2_K, 10, GgmlType::Q2_K),
    ("Q3_K_S", FileType::Q3_K_S, 11, GgmlType::Q3_K),
    ("Q3_K_M", FileType::Q3_K_M, 12, GgmlType::Q3_K),
    ("Q3_K_L", FileType::Q3_K_L, 13, GgmlType::Q3_K),
    ("Q4_K_S", FileType::Q4_K_S, 14, GgmlType::Q4_K),
    ("Q4_K_M", FileType::Q4_K_M, 15, GgmlType::Q4_K),
    ("Q5_K_S", FileType::Q5_K_S, 16, GgmlType::Q5_K),
    ("Q5_K_M", FileType::Q5_K_M, 17, GgmlType::Q5_K),
    ("Q6_K", FileType::Q6_K, 18, GgmlType::Q6_K),
];

impl FileType {
    /// A TYPE argument, case-insensitive, with llama-quantize's aliases.
    fn parse(s: &str) -> Option<FileType> {
        let up = s.trim().to_ascii_uppercase();
        let up = match up.as_str() {
            "Q3_K" => "Q3_K_M",
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            other => other,
        };
        FILE_TYPES.iter().find(|r| r.0 == up).map(|r| r.1)
    }

    fn row(self) -> &'static (&'static str, FileType, u32, GgmlType) {
        FILE_TYPES
            .iter()
            .find(|r| r.1 == self)
            .expect("every FileType is in FILE_TYPES")
    }

    fn name(self) -> &'static str {
        self.row().0
    }

    fn id(self) -> u32 {
        self.row().2
    }

    fn default_type(self) -> GgmlType {
        self.row().3
    }
}

/// What the choice needs to know of the model (llama.cpp reads it from the hparams).
#[derive(Clone, Debug, PartialEq)]
struct ModelParams {
    arch: String,
    n_layer: usize,
    n_head: usize,
    n_head_kv: usize,
    n_expert: usize,
}

impl ModelParams {
    fn n_gqa(&self) -> usize {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    fn falcon(&self) -> bool {
        self.arch == "falcon"
    }

    /// llama.cpp's `LLM_TYPE_70B` (an 80-layer llama with grouped-query attention): its small
    /// attn_v gets more bits.
    fn is_70b(&self) -> bool {
        self.arch == "llama" && self.n_layer == 80 && self.n_head != self.n_head_kv
    }
}

/// One tensor as the choice sees it: `ne` in ggml order (`ne[0]` is the row length).
#[derive(Clone, Debug, PartialEq)]
struct TensorDesc {
    name: String,
    ne: Vec<usize>,
    /// The type it has in the input (kept when the tensor may not be quantized).
    ty: GgmlType,
}

/// The type a tensor gets; `fallback_from` is set when its row length forced a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Choice {
    ty: GgmlType,
    fallback_from: Option<GgmlType>,
}

/// llama.cpp's `tensor_category`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

impl Category {
    fn of(name: &str) -> Category {
        use Category::*;
        if name == "output.weight" {
            return Output;
        }
        if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            return TokenEmbd;
        }
        // Substring tests in llama.cpp's order: "attn_qkv" before "attn_q", and so on.
        let table = [
            ("attn_qkv.weight", AttnQkv),
            ("attn_kv_b.weight", AttnKvB),
            ("attn_v.weight", AttnV),
            ("attn_k.weight", AttnK),
            ("attn_q.weight", AttnQ),
            ("attn_output.weight", AttnOutput),
            ("ffn_up", FfnUp),
            ("ffn_gate", FfnGate),
            ("ffn_down", FfnDown),
        ];
        table
            .iter()
            .find(|(pat, _)| name.contains(pat))
            .map_or(Other, |&(_, c)| c)
    }

    /// The tensors llama.cpp treats as attn_v (the most sensitive to quantization).
    fn is_attn_v(self) -> bool {
        matches!(
            self,
            Category::AttnV | Category::AttnQkv | Category::AttnKvB
        )
    }
}

/// `ggml_n_dims`: trailing dimensions of size 1 do not count.
fn n_dims(ne: &[usize]) -> usize {
    ne.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
}

/// llama.cpp's `tensor_allows_quantization` (with `quantize_output_tensor` on): only 2-d and
/// 3-d `*weight` tensors, never norms, routers, positional embeddings or the small tensors
/// some architectures keep exact.
fn allows_quantization(name: &str, ne: &[usize]) -> bool {
    const NEVER: [&str; 35] = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    n_dims(ne) >= 2
        && name.ends_with("weight")
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !NEVER.iter().any(|p| name.contains(p))
}

/// The `N` of a `blk.N.` name; the loader orders tensors by it (others first, as -1).
fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// `tensor_type_fallback`: a type whose block does not divide the row length is replaced.
fn fallback(ne0: usize, ty: GgmlType) -> Choice {
    use GgmlType::*;
    if ne0.is_multiple_of(ty.block_size()) {
        return Choice {
            ty,
            fallback_from: None,
        };
    }
    let mut to = match ty {
        Q2_K | Q3_K => Q4_0,
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K => Q8_0,
        // llama.cpp aborts here ("no tensor type fallback is defined"); F16 is what it
        // uses itself when its fallback does not fit either.
        _ => F16,
    };
    if !ne0.is_multiple_of(to.block_size()) {
        to = F16;
    }
    Choice {
        ty: to,
        fallback_from: Some(ty),
    }
}

/// llama.cpp's `quantize_state_impl`: counters that advance as tensors are visited in the
/// loader's order, so "layer i" means the i-th attn_v / ffn_down met.
struct MixState {
    n_attn_v: usize,
    i_attn_v: usize,
    i_ffn_down: usize,
    i_ffn_gate: usize,
    i_ffn_up: usize,
    tied_embeddings: bool,
}

/// `use_more_bits`: the first and last eighth of the layers, and every third one between.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl MixState {
    /// `layer_info`: the counter, except for MoE models where experts are not consecutive
    /// and the layer is read from the name.
    fn layer(&self, counter: usize, name: &str, m: &ModelParams) -> Result<(usize, usize), String> {
        if m.n_expert <= 1 {
            return Ok((counter, m.n_layer));
        }
        match layer_of(name) {
            Some(i) if i < m.n_layer => Ok((i, m.n_layer)),
            Some(i) => Err(format!(
                "bad layer {i} for tensor {name} (the model has {})",
                m.n_layer
            )),
            None => Err(format!("cannot determine the layer of tensor {name}")),
        }
    }

    /// `llama_tensor_get_type_impl` for the file types offered here (the i-quant and MXFP4
    /// branches are left out: those types cannot be asked for).
    fn pick(
        &mut self,
        t: &TensorDesc,
        cat: Category,
        ftype: FileType,
        mut ty: GgmlType,
        m: &ModelParams,
    ) -> Result<GgmlType, String> {
        use FileType as F;
        use GgmlType as G;
        let ne0 = t.ne.first().copied().unwrap_or(1);
        if cat == Category::Output || (self.tied_embeddings && cat == Category::TokenEmbd) {
            // The output projection decides every token: Q6_K unless the row does not fit
            // the base type's blocks (then Q8_0), and Q8_0 files keep Q8_0.
            if m.falcon() || !ne0.is_multiple_of(ty.block_size()) {
                ty = G::Q8_0;
            } else if ty != G::Q8_0 {
                ty = G::Q6_K;
            }
        } else if cat == Category::TokenEmbd {
            // Only the i-quant and ternary mixes change untied token embeddings.
        } else if cat.is_attn_v() {
            let i = self.i_attn_v;
            ty = match ftype {
                F::Q2_K if m.n_gqa() >= 4 => G::Q4_K,
                F::Q2_K => G::Q3_K,
                F::Q3_K_M if i < 2 => G::Q5_K,
                F::Q3_K_M => G::Q4_K,
                F::Q3_K_L => G::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(i, self.n_attn_v) => G::Q6_K,
                F::Q4_K_S if i < 4 => G::Q5_K,
                _ => ty,
            };
            if m.is_70b() && matches!(ty, G::Q3_K | G::Q4_K) {
                ty = G::Q5_K;
            }
            if m.n_expert == 8 {
                ty = G::Q8_0;
            }
            self.i_attn_v += 1;
        } else if cat == Category::AttnK {
            if m.n_expert == 8 {
                ty = G::Q8_0;
            }
        } else if cat == Category::FfnDown {
            let (i, n) = self.layer(self.i_ffn_down, &t.name, m)?;
            ty = match ftype {
                F::Q2_K => G::Q3_K,
                F::Q3_K_M if i < n / 16 => G::Q5_K,
                F::Q3_K_M if !m.falcon() || use_more_bits(i, n) => G::Q4_K,
                F::Q3_K_M => G::Q3_K,
                F::Q3_K_L if m.falcon() => G::Q4_K,
                F::Q3_K_L => G::Q5_K,
                F::Q4_K_M if m.falcon() && i < n / 16 => G::Q6_K,
                F::Q4_K_M if m.falcon() && use_more_bits(i, n) => G::Q5_K,
                F::Q4_K_M if m.falcon() => G::Q4_K,
                F::Q4_K_M if use_more_bits(i, n) => G::Q6_K,
                F::Q4_K_M => ty,
                F::Q5_K_M if use_more_bits(i, n) => G::Q6_K,
                F::Q4_K_S if !m.falcon() && i < n / 8 => G::Q5_K,
                _ => ty,
            };
            self.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            if m.falcon() {
                if ftype == F::Q3_K_L {
                    ty = G::Q4_K;
                }
            } else if m.n_expert == 8 {
                if matches!(
                    ftype,
                    F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::Q4_K_S | F::Q4_K_M
                ) {
                    ty = G::Q5_K;
                }
            } else {
                ty = match ftype {
                    F::Q2_K => G::Q3_K,
                    F::Q3_K_M => G::Q4_K,
                    F::Q3_K_L => G::Q5_K,
                    _ => ty,
                };
            }
        } else if cat == Category::FfnGate {
            // Only IQ3_XS changes ffn_gate/ffn_up, but the layer check and counter remain.
            self.layer(self.i_ffn_gate, &t.name, m)?;
            self.i_ffn_gate += 1;
        } else if cat == Category::FfnUp {
            self.layer(self.i_ffn_up, &t.name, m)?;
            self.i_ffn_up += 1;
        }
        Ok(ty)
    }
}

/// The type of every tensor (in input order) when quantizing to `ftype`: llama.cpp's
/// `llama_tensor_get_type` with the default parameters (no imatrix, no overrides), or with
/// `--pure` when `pure`. Tensors that may not be quantized keep their input type.
fn choose_types(
    tensors: &[TensorDesc],
    model: &ModelParams,
    ftype: FileType,
    pure: bool,
) -> Result<Vec<Choice>, String> {
    let cats: Vec<Category> = tensors.iter().map(|t| Category::of(&t.name)).collect();
    let mut st = MixState {
        n_attn_v: cats.iter().filter(|c| c.is_attn_v()).count(),
        i_attn_v: 0,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
        tied_embeddings: !cats.contains(&Category::Output),
    };
    // The counters advance in the order llama.cpp's loader keeps tensors in: by layer
    // (non-layer tensors first), then by name.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (ta, tb) = (&tensors[a], &tensors[b]);
        (layer_of(&ta.name), &ta.name).cmp(&(layer_of(&tb.name), &tb.name))
    });
    let base = ftype.default_type();
    let mut out = vec![
        Choice {
            ty: GgmlType::F32,
            fallback_from: None
        };
        tensors.len()
    ];
    for i in order {
        let t = &tensors[i];
        out[i] = if !allows_quantization(&t.name, &t.ne) {
            Choice {
                ty: t.ty,
                fallback_from: None,
            }
        } else if !base.is_quantized() {
            Choice {
                ty: base,
                fallback_from: None,
            }
        } else {
            let ty = if pure {
                base
            } else {
                st.pick(t, cats[i], ftype, base, model)?
            };
            fallback(t.ne.first().copied().unwrap_or(1), ty)
        };
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Inputs: a GGUF file, or a Hugging Face llama checkpoint converted on the fly
// ---------------------------------------------------------------------------------------------

/// How a GGUF tensor of a Hugging Face checkpoint is made.
enum HfTensor {
    /// The checkpoint tensor as is.
    Copy(String),
    /// llama.cpp's q/k row permutation (its rope pairs dimensions (i, i + d/2) differently).
    Permute(String, usize),
    /// Computed values (llama3 rope factors).
    Values(Vec<f32>),
}

enum Weights {
    Gguf(GgufFile),
    Hf {
        st: MmapedSafetensors,
        plan: Vec<HfTensor>,
    },
}

struct Input {
    metadata: Vec<(String, GgufValue)>,
    model: ModelParams,
    tensors: Vec<TensorDesc>,
    weights: Weights,
}

impl Input {
    fn open(path: &Path) -> Result<Input, String> {
        let is_gguf = path.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if is_gguf {
            open_gguf(path)
        } else {
            open_hf(path)
        }
    }

    /// The stored bytes of tensor `i`, when the input holds it in `tensors[i].ty` as is.
    fn raw(&self, i: usize) -> Result<Option<&[u8]>, String> {
        match &self.weights {
            Weights::Gguf(f) => f
                .tensor_bytes(&self.tensors[i].name)
                .map(Some)
                .map_err(|e| e.to_string()),
            Weights::Hf { .. } => Ok(None),
        }
    }

    /// Bytes tensor `i` takes in the input (for the size report).
    fn stored_size(&self, i: usize) -> usize {
        let t = &self.tensors[i];
        match &self.weights {
            Weights::Gguf(_) => {
                let n: usize = t.ne.iter().product();
                t.ty.byte_size(n as u64).unwrap_or(0) as usize
            }
            Weights::Hf { st, plan } => match &plan[i] {
                HfTensor::Copy(src) | HfTensor::Permute(src, _) => {
                    st.get_raw(src).map_or(0, <[u8]>::len)
                }
                HfTensor::Values(v) => v.len() * 4,
            },
        }
    }

    /// Tensor `i` as f32 values, row-major.
    fn values(&self, i: usize) -> Result<Vec<f32>, String> {
        let name = &self.tensors[i].name;
        match &self.weights {
            Weights::Gguf(f) => f.dequantize(name).map_err(|e| e.to_string()),
            Weights::Hf { st, plan } => match &plan[i] {
                HfTensor::Values(v) => Ok(v.clone()),
                HfTensor::Copy(src) => st_values(st, src),
                HfTensor::Permute(src, heads) => {
                    let x = st_values(st, src)?;
                    let rows = st.shape(src).map_err(|e| e.to_string())?[0];
                    permute_qk(&x, rows, *heads).ok_or_else(|| {
                        format!("{src}: {rows} rows do not split into {heads} heads")
                    })
                }
            },
        }
    }
}

fn open_gguf(path: &Path) -> Result<Input, String> {
    let file = GgufFile::open(path).map_err(|e| e.to_string())?;
    let arch = file.architecture().map_err(|e| e.to_string())?.to_string();
    let u = |key: &str| {
        file.get(&format!("{arch}.{key}"))
            .and_then(GgufValue::to_u64)
            .map(|v| v as usize)
    };
    let n_head = u("attention.head_count").unwrap_or(0);
    let model = ModelParams {
        n_layer: u("block_count")
            .ok_or_else(|| format!("{}: no {arch}.block_count in the metadata", path.display()))?,
        n_head,
        n_head_kv: u("attention.head_count_kv").unwrap_or(n_head),
        n_expert: u("expert_count").unwrap_or(0),
        arch,
    };
    let tensors = file
        .tensors()
        .iter()
        .map(|t| TensorDesc {
            name: t.name().to_string(),
            ne: t.ggml_dims().to_vec(),
            ty: t.ggml_type(),
        })
        .collect();
    Ok(Input {
        metadata: file.metadata().to_vec(),
        model,
        tensors,
        weights: Weights::Gguf(file),
    })
}

/// A safetensors tensor as f32 (F32, F16 and BF16 checkpoints).
fn st_values(st: &MmapedSafetensors, name: &str) -> Result<Vec<f32>, String> {
    let raw = st.get_raw(name).map_err(|e| e.to_string())?;
    let dtype = st.dtype(name).map_err(|e| e.to_string())?;
    let words = |n: usize| raw.chunks_exact(n);
    Ok(match dtype {
        StDtype::F32 => words(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        StDtype::F16 => words(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        StDtype::BF16 => words(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        other => {
            return Err(format!(
                "tensor {name}: dtype {} is not a float checkpoint dtype (F32, F16, BF16)",
                other.as_str()
            ))
        }
    })
}

/// `LlamaModel.permute` of convert_hf_to_gguf.py: within each head, rows (s, j) with s in
/// {0, 1} and j < d/2 move to (j, s). `None` when the rows do not split evenly.
fn permute_qk(x: &[f32], rows: usize, heads: usize) -> Option<Vec<f32>> {
    if heads == 0 || rows == 0 || !rows.is_multiple_of(heads * 2) || !x.len().is_multiple_of(rows) {
        return None;
    }
    let cols = x.len() / rows;
    let (hd, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0f32; x.len()];
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                let dst = h * hd + j * 2 + s;
                let src = h * hd + s * half + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&x[src * cols..(src + 1) * cols]);
            }
        }
    }
    Some(out)
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: invalid JSON: {e}", path.display()))
}

/// The hyper-parameters of a Hugging Face llama `config.json`.
struct LlamaConfig {
    hidden: usize,
    n_layer: usize,
    n_head: usize,
    n_head_kv: usize,
    ffn: usize,
    vocab: usize,
    context: usize,
    eps: f32,
    theta: f32,
    head_dim: Option<usize>,
    /// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5).
    rope: Option<Value>,
    tied: bool,
}

impl LlamaConfig {
    fn parse(cfg: &Value, path: &Path) -> Result<LlamaConfig, String> {
        let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
        if !matches!(model_type, "llama" | "mistral") {
            return Err(format!(
                "{}: model_type {model_type:?}: converting safetensors supports the llama \
                 architecture (model_type llama or mistral) only; convert other models with \
                 llama.cpp's convert_hf_to_gguf.py and quantize the GGUF",
                path.display()
            ));
        }
        let int = |k: &str| cfg.get(k).and_then(Value::as_u64).map(|v| v as usize);
        let need = |k: &str| int(k).ok_or_else(|| format!("{}: no integer {k:?}", path.display()));
        let float = |k: &str| cfg.get(k).and_then(Value::as_f64);
        let n_head = need("num_attention_heads")?;
        let rope = ["rope_scaling", "rope_parameters"]
            .iter()
            .find_map(|k| cfg.get(*k).filter(|v| v.is_object()).cloned());
        let theta = float("rope_theta")
            .or_else(|| rope.as_ref()?.get("rope_theta")?.as_f64())
            .unwrap_or(10_000.0);
        let c = LlamaConfig {
            hidden: need("hidden_size")?,
            n_layer: need("num_hidden_layers")?,
            n_head,
            n_head_kv: int("num_key_value_heads").unwrap_or(n_head),
            ffn: need("intermediate_size")?,
            vocab: need("vocab_size")?,
            context: int("max_position_embeddings").unwrap_or(2048),
            eps: float("rms_norm_eps").unwrap_or(1e-6) as f32,
            theta: theta as f32,
            head_dim: int("head_dim"),
            rope,
            tied: cfg
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        if c.n_head == 0
            || c.n_head_kv == 0
            || c.hidden == 0
            || !c.n_head.is_multiple_of(c.n_head_kv)
        {
            return Err(format!(
                "{}: {} heads / {} KV heads / hidden size {} do not fit together",
                path.display(),
                c.n_head,
                c.n_head_kv,
                c.hidden
            ));
        }
        Ok(c)
    }

    fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden / self.n_head)
    }

    /// The rope-scaling type, lower-case (`rope_type` or the older `type`); `None` or
    /// "default" mean plain rope.
    fn rope_type(&self) -> Option<String> {
        let r = self.rope.as_ref()?;
        let t = r.get("rope_type").or_else(|| r.get("type"))?.as_str()?;
        Some(t.to_ascii_lowercase())
    }

    fn rope_f(&self, key: &str, default: f64) -> f64 {
        self.rope
            .as_ref()
            .and_then(|r| r.get(key))
            .and_then(Value::as_f64)
            .unwrap_or(default)
    }

    /// `rope_freqs.weight` for llama3 rope scaling, as convert_hf_to_gguf.py computes it.
    fn llama3_rope_factors(&self) -> Vec<f32> {
        let dim = self.head_dim();
        let factor = self.rope_f("factor", 8.0);
        let low = self.rope_f("low_freq_factor", 1.0);
        let high = self.rope_f("high_freq_factor", 4.0);
        let old_ctx = self.rope_f("original_max_position_embeddings", 8192.0);
        let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
        (0..dim)
            .step_by(2)
            .map(|i| {
                // torch computes the frequencies in f32; keep that rounding.
                let freq = 1.0 / (self.theta.powf(i as f32 / dim as f32));
                let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
                let f = if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (old_ctx / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                };
                f as f32
            })
            .collect()
    }
}

/// The config folder and the weights of a Hugging Face checkpoint path.
fn open_hf_files(path: &Path) -> Result<(PathBuf, MmapedSafetensors), String> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    if !dir.join("config.json").is_file() {
        return Err(format!(
            "{}: not a .gguf file, and no config.json in {} (a Hugging Face checkpoint needs one)",
            path.display(),
            dir.display()
        ));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let st = if path.is_dir() || ext == "json" {
        MmapedSafetensors::open_sharded(path)
    } else if ext == "safetensors" {
        MmapedSafetensors::open(path)
    } else {
        return Err(format!(
            "{}: expected a .gguf or .safetensors file, a model.safetensors.index.json, or a folder",
            path.display()
        ));
    };
    Ok((dir, st.map_err(|e| e.to_string())?))
}

/// The GGUF name and recipe of a Hugging Face llama tensor; `Ok(None)` for tensors
/// llama.cpp does not store (rope caches).
fn hf_tensor(name: &str, c: &LlamaConfig) -> Result<Option<(String, HfTensor)>, String> {
    let copy = |gguf: String| Ok(Some((gguf, HfTensor::Copy(name.to_string()))));
    match name {
        "model.embed_tokens.weight" => return copy("token_embd.weight".into()),
        "model.norm.weight" => return copy("output_norm.weight".into()),
        "lm_head.weight" if c.tied => return Ok(None),
        "lm_head.weight" => return copy("output.weight".into()),
        _ => {}
    }
    let unexpected = || format!("unexpected tensor {name} in a llama checkpoint");
    let rest = name.strip_prefix("model.layers.").ok_or_else(unexpected)?;
    let (layer, part) = rest.split_once('.').ok_or_else(unexpected)?;
    let i: usize = layer.parse().map_err(|_| unexpected())?;
    if part.ends_with("rotary_emb.inv_freq") {
        return Ok(None);
    }
    let (module, kind) = part.rsplit_once('.').ok_or_else(unexpected)?;
    let gguf = |n: &str| format!("blk.{i}.{n}.{kind}");
    let permute =
        |n: &str, heads: usize| Ok(Some((gguf(n), HfTensor::Permute(name.to_string(), heads))));
    match module {
        "input_layernorm" => copy(gguf("attn_norm")),
        "self_attn.q_proj" => permute("attn_q", c.n_head),
        "self_attn.k_proj" => permute("attn_k", c.n_head_kv),
        "self_attn.v_proj" => copy(gguf("attn_v")),
        "self_attn.o_proj" => copy(gguf("attn_output")),
        "post_attention_layernorm" => copy(gguf("ffn_norm")),
        "mlp.gate_proj" => copy(gguf("ffn_gate")),
        "mlp.up_proj" => copy(gguf("ffn_up")),
        "mlp.down_proj" => copy(gguf("ffn_down")),
        _ => Err(unexpected()),
    }
}

fn open_hf(path: &Path) -> Result<Input, String> {
    let (dir, st) = open_hf_files(path)?;
    let cfg_path = dir.join("config.json");
    let c = LlamaConfig::parse(&read_json(&cfg_path)?, &cfg_path)?;
    let mut entries: Vec<(TensorDesc, HfTensor)> = Vec::new();
    for name in st.names() {
        let Some((gguf, recipe)) = hf_tensor(name, &c)? else {
            continue;
        };
        let shape = st.shape(name).map_err(|e| e.to_string())?;
        let ne = shape.iter().rev().copied().collect();
        entries.push((
            TensorDesc {
                name: gguf,
                ne,
                ty: GgmlType::F32,
            },
            recipe,
        ));
    }
    let head_dim = c.head_dim();
    let arch = "llama";
    let k = |s: &str| format!("{arch}.{s}");
    let mut md: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), arch.into()),
        ("general.type".into(), "model".into()),
    ];
    if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
        md.push(("general.name".into(), name.into()));
    }
    md.extend([
        (k("block_count"), (c.n_layer as u32).into()),
        (k("context_length"), (c.context as u32).into()),
        (k("embedding_length"), (c.hidden as u32).into()),
        (k("feed_forward_length"), (c.ffn as u32).into()),
        (k("attention.head_count"), (c.n_head as u32).into()),
        (k("attention.head_count_kv"), (c.n_head_kv as u32).into()),
        (k("rope.freq_base"), c.theta.into()),
        (k("attention.layer_norm_rms_epsilon"), c.eps.into()),
        (k("vocab_size"), (c.vocab as u32).into()),
        (k("rope.dimension_count"), (head_dim as u32).into()),
    ]);
    if c.head_dim.is_some() {
        md.push((k("attention.key_length"), (head_dim as u32).into()));
        md.push((k("attention.value_length"), (head_dim as u32).into()));
    }
    match c.rope_type().as_deref() {
        None | Some("default") => {}
        Some("linear") => {
            md.push((k("rope.scaling.type"), "linear".into()));
            md.push((
                k("rope.scaling.factor"),
                (c.rope_f("factor", 1.0) as f32).into(),
            ));
        }
        Some("yarn") => {
            md.push((k("rope.scaling.type"), "yarn".into()));
            md.push((
                k("rope.scaling.factor"),
                (c.rope_f("factor", 1.0) as f32).into(),
            ));
            let orig = c.rope_f("original_max_position_embeddings", c.context as f64);
            md.push((
                k("rope.scaling.original_context_length"),
                (orig as u32).into(),
            ));
        }
        Some("llama3") => {
            let v = c.llama3_rope_factors();
            entries.push((
                TensorDesc {
                    name: "rope_freqs.weight".into(),
                    ne: vec![v.len()],
                    ty: GgmlType::F32,
                },
                HfTensor::Values(v),
            ));
        }
        Some(other) => {
            return Err(format!(
                "{}: rope scaling {other:?} is not supported (default, linear, yarn, llama3)",
                cfg_path.display()
            ))
        }
    }
    md.extend(tokenizer_metadata(&dir, &c)?);
    // The loader's order: non-layer tensors first, then by layer, then by name.
    entries
        .sort_by(|(a, _), (b, _)| (layer_of(&a.name), &a.name).cmp(&(layer_of(&b.name), &b.name)));
    let (tensors, plan) = entries.into_iter().unzip();
    Ok(Input {
        metadata: md,
        model: ModelParams {
            arch: arch.into(),
            n_layer: c.n_layer,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            n_expert: 0,
        },
        tensors,
        weights: Weights::Hf { st, plan },
    })
}

// ---------------------------------------------------------------------------------------------
// Tokenizer metadata from tokenizer.json (what convert_hf_to_gguf.py writes for BPE vocabularies)
// ---------------------------------------------------------------------------------------------

/// `tokenizer.ggml.pre` for a byte-level BPE pre-tokenizer, recognised by its structure;
/// `None` when unknown (llama.cpp then warns and uses its default).
fn detect_pre(pre: &Value) -> Option<&'static str> {
    let ty = |v: &Value| {
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let parts: Vec<&Value> = match ty(pre).as_str() {
        "Sequence" => pre.get("pretokenizers")?.as_array()?.iter().collect(),
        _ => vec![pre],
    };
    let kinds: Vec<String> = parts.iter().map(|p| ty(p)).collect();
    let regex = |p: &Value| {
        p.get("pattern")
            .and_then(|pat| pat.get("Regex"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let byte_level_regex = |p: &Value| p.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
    match kinds.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["ByteLevel"] if byte_level_regex(parts[0]) => Some("gpt-2"),
        ["Digits", "ByteLevel"]
            if parts[0].get("individual_digits").and_then(Value::as_bool) == Some(true) =>
        {
            // smollm, starcoder and refact share this split in llama.cpp.
            Some("smollm")
        }
        ["Split", "ByteLevel"] if !byte_level_regex(parts[1]) => match regex(parts[0]).as_deref() {
            Some(r) if r == pre_tokenizer_regex::LLAMA3 => Some("llama-bpe"),
            Some(r) if r == pre_tokenizer_regex::QWEN2 => Some("qwen2"),
            _ => None,
        },
        _ => None,
    }
}

/// The id of a special token named in tokenizer_config.json (a string or an AddedToken).
fn special_id(cfg: &Value, key: &str, ids: &HashMap<&str, u32>) -> Option<u32> {
    let v = cfg.get(key)?;
    let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
    ids.get(s).copied()
}

/// The `tokenizer.*` metadata llama.cpp needs, from `tokenizer.json` (plus
/// `tokenizer_config.json`, `chat_template.jinja` and the config's special ids). Byte-level BPE
/// vocabularies become `gpt2` with merges; BPE with byte fallback (Llama 2 style, no
/// `tokenizer.model` needed) becomes `llama`, scored by merge order.
fn tokenizer_metadata(dir: &Path, c: &LlamaConfig) -> Result<Vec<(String, GgufValue)>, String> {
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        eprintln!(
            "quantize: warning: no tokenizer.json in {}: the GGUF gets no tokenizer, so \
             llama.cpp will not load it",
            dir.display()
        );
        return Ok(Vec::new());
    }
    let tok = read_json(&tok_path)?;
    let bad = |what: &str| format!("{}: {what}", tok_path.display());
    let model = tok.get("model").ok_or_else(|| bad("no \"model\""))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(bad(
            "only BPE tokenizers can be converted (convert this model with llama.cpp's \
             convert_hf_to_gguf.py)",
        ));
    }
    let byte_fallback = model.get("byte_fallback").and_then(Value::as_bool) == Some(true);
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no model.vocab object"))?;
    let mut by_id: BTreeMap<u32, (String, i32)> = BTreeMap::new();
    const NORMAL: i32 = 1;
    const UNKNOWN: i32 = 2;
    const CONTROL: i32 = 3;
    const USER_DEFINED: i32 = 4;
    const UNUSED: i32 = 5;
    const BYTE: i32 = 6;
    for (piece, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad("a vocab id is not an integer"))? as u32;
        let is_byte =
            byte_fallback && piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>');
        by_id.insert(id, (piece.clone(), if is_byte { BYTE } else { NORMAL }));
    }
    for t in tok
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(content)) = (
            t.get("id").and_then(Value::as_u64),
            t.get("content").and_then(Value::as_str),
        ) else {
            continue;
        };
        let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
        by_id.insert(
            id as u32,
            (
                content.to_string(),
                if special { CONTROL } else { USER_DEFINED },
            ),
        );
    }
    if let Some(unk) = model.get("unk_token").and_then(Value::as_str) {
        if let Some(e) = by_id.values_mut().find(|(p, _)| p == unk) {
            e.1 = UNKNOWN;
        }
    }
    let n = c
        .vocab
        .max(by_id.keys().next_back().map_or(0, |&m| m as usize + 1));
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for id in 0..n as u32 {
        // Ids the tokenizer does not use (the embedding is padded): convert_hf_to_gguf.py
        // names them [PADi] and marks them unused.
        let (piece, ty) = by_id
            .get(&id)
            .cloned()
            .unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED));
        tokens.push(piece);
        types.push(ty);
    }
    let ids: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();

    let mut md: Vec<(String, GgufValue)> = Vec::new();
    let key = |s: &str| format!("tokenizer.ggml.{s}");
    if byte_fallback {
        md.push((key("model"), "llama".into()));
        md.push((key("pre"), "default".into()));
    } else {
        md.push((key("model"), "gpt2".into()));
        match tok.get("pre_tokenizer").and_then(detect_pre) {
            Some(pre) => md.push((key("pre"), pre.into())),
            None => eprintln!(
                "quantize: warning: unrecognised pre-tokenizer in {}; tokenizer.ggml.pre is left \
                 out and llama.cpp will use its default split",
                tok_path.display()
            ),
        }
    }
    md.push((key("tokens"), GgufValue::from(tokens.clone())));
    if byte_fallback {
        // SentencePiece BPE merges the highest-scoring pair first; Llama-style vocabularies
        // list pieces in merge order, so minus the id ranks them the same way.
        let scores: Vec<f32> = (0..tokens.len())
            .map(|i| if types[i] == NORMAL { -(i as f32) } else { 0.0 })
            .collect();
        md.push((key("scores"), GgufValue::from(scores)));
    }
    md.push((key("token_type"), GgufValue::from(types)));
    if !byte_fallback {
        let merges: Vec<String> = model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no model.merges"))?
            .iter()
            .map(|m| match m {
                Value::String(s) => Some(s.clone()),
                Value::Array(pair) => match &pair[..] {
                    [Value::String(a), Value::String(b)] => Some(format!("{a} {b}")),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(|| bad("a merge is neither \"a b\" nor [a, b]"))?;
        md.push((key("merges"), GgufValue::from(merges)));
    }

    let tcfg_path = dir.join("tokenizer_config.json");
    let tcfg = if tcfg_path.is_file() {
        read_json(&tcfg_path)?
    } else {
        Value::Null
    };
    let cfg = read_json(&dir.join("config.json"))?;
    let cfg_id = |k: &str| -> Option<u32> {
        let v = cfg.get(k)?;
        v.as_u64()
            .or_else(|| v.as_array()?.first()?.as_u64())
            .map(|x| x as u32)
    };
    for (gguf, tcfg_key, cfg_key) in [
        ("bos_token_id", "bos_token", "bos_token_id"),
        ("eos_token_id", "eos_token", "eos_token_id"),
        ("unknown_token_id", "unk_token", ""),
        ("padding_token_id", "pad_token", "pad_token_id"),
    ] {
        let id = special_id(&tcfg, tcfg_key, &ids).or_else(|| cfg_id(cfg_key));
        if let Some(id) = id.filter(|&i| (i as usize) < tokens.len()) {
            md.push((key(gguf), id.into()));
        }
    }
    // Whether BOS is prepended: tokenizer_config.json says so, or the post-processor's
    // template starts with a special token.
    let add_bos = tcfg
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| {
            tok.get("post_processor")
                .and_then(|p| p.get("single"))
                .and_then(Value::as_array)
                .and_then(|s| s.first())
                .is_some_and(|first| first.get("SpecialToken").is_some())
        });
    md.push((key("add_bos_token"), add_bos.into()));
    if let Some(eos) = tcfg.get("add_eos_token").and_then(Value::as_bool) {
        md.push((key("add_eos_token"), eos.into()));
    }
    // Byte-level vocabularies mark spaces themselves; SentencePiece ones prefix a space.
    md.push((key("add_space_prefix"), byte_fallback.into()));
    let template = match tcfg.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        // A list of named templates: the default one.
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
    .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    if let Some(t) = template {
        md.push(("tokenizer.chat_template".into(), t.into()));
    }
    Ok(md)
}

// ---------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------

struct Args {
    input: PathBuf,
    output: PathBuf,
    ftype: FileType,
    pure: bool,
    dry_run: bool,
    threads: Option<usize>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut positional = Vec::new();
    let (mut pure, mut dry_run, mut threads) = (false, false, None);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--pure" | "--dry-run" if inline.is_some() => {
                return Err(format!("{flag} takes no value"))
            }
            "--pure" => pure = true,
            "--dry-run" => dry_run = true,
            "--threads" => {
                let v = inline
                    .or_else(|| it.next())
                    .ok_or("--threads needs a value")?;
                threads = Some(
                    v.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| {
                            format!("--threads: invalid value {v:?} (expected N >= 1)")
                        })?,
                );
            }
            f if f.starts_with('-') && f.len() > 1 => {
                return Err(format!("unknown argument {f:?}"))
            }
            _ => positional.push(arg),
        }
    }
    let [input, output, ty] = <[String; 3]>::try_from(positional).map_err(|p| {
        format!(
            "expected IN OUT.gguf TYPE, got {} positional argument(s)",
            p.len()
        )
    })?;
    let ftype = FileType::parse(&ty).ok_or_else(|| {
        let names: Vec<&str> = FILE_TYPES.iter().map(|r| r.0).collect();
        format!(
            "unknown TYPE {ty:?} (expected one of {}, or Q3_K/Q4_K/Q5_K)",
            names.join(", ")
        )
    })?;
    let input = PathBuf::from(input);
    if !input.exists() {
        return Err(format!("{}: no such file or folder", input.display()));
    }
    let output = PathBuf::from(output);
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty());
    if output.as_os_str().is_empty() || parent.is_some_and(|p| !p.is_dir()) || output.is_dir() {
        return Err(format!(
            "{}: not a file path in an existing folder",
            output.display()
        ));
    }
    Ok(Some(Args {
        input,
        output,
        ftype,
        pure,
        dry_run,
        threads,
    }))
}

/// Quantize whole rows of `x` (rows of `row_len`) to `ty`, in parallel: rows are
/// independent, so the result is the same bytes as one sequential pass.
fn quantize_rows(ty: GgmlType, x: &[f32], row_len: usize) -> Result<Vec<u8>, String> {
    if x.is_empty() {
        return Ok(Vec::new());
    }
    let row_bytes = row_len / ty.block_size() * ty.type_size();
    let rows = x.len() / row_len;
    let mut out = vec![0u8; rows * row_bytes];
    // About 64k values per task: enough to amortise the scheduling, small enough to balance.
    let per_task = (65_536 / row_len).max(1);
    x.par_chunks(per_task * row_len)
        .zip(out.par_chunks_mut(per_task * row_bytes))
        .try_for_each(|(src, dst)| quantize_into(ty, src, dst))
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn run(args: Args) -> Result<(), String> {
    let start = Instant::now();
    let input = Input::open(&args.input)?;
    let choices = choose_types(&input.tensors, &input.model, args.ftype, args.pure)?;

    // Refuse before any work what cannot be done, naming the first tensor it concerns.
    let gguf_input = matches!(input.weights, Weights::Gguf(_));
    let mut requantized = BTreeMap::<String, usize>::new();
    for (t, c) in input.tensors.iter().zip(&choices) {
        if c.ty == t.ty {
            continue;
        }
        if !c.ty.can_quantize() {
            return Err(format!(
                "{} needs {} (for {}), which tensor_core::quant cannot write yet",
                t.name,
                c.ty,
                args.ftype.name()
            ));
        }
        if gguf_input && !t.ty.can_dequantize() {
            return Err(format!(
                "{}: its input type {} cannot be dequantized",
                t.name, t.ty
            ));
        }
        if t.ty.is_quantized() {
            *requantized.entry(t.ty.name().to_string()).or_default() += 1;
        }
    }
    if !requantized.is_empty() {
        let list: Vec<String> = requantized
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        eprintln!(
            "quantize: warning: requantizing already quantized tensors ({}): the result cannot \
             be better than the input",
            list.join(", ")
        );
    }
    let fallbacks: Vec<String> = input
        .tensors
        .iter()
        .zip(&choices)
        .filter_map(|(t, c)| {
            let from = c.fallback_from?;
            Some(format!(
                "{} (row of {}): {from} -> {}",
                t.name,
                t.ne.first().copied().unwrap_or(1),
                c.ty
            ))
        })
        .collect();
    if !fallbacks.is_empty() {
        eprintln!(
            "quantize: {} of {} tensors fell back to another type (row length not a multiple of \
             the block size){}",
            fallbacks.len(),
            input.tensors.len(),
            if args.dry_run {
                ""
            } else {
                "; --dry-run lists them"
            }
        );
    }
    if args.dry_run {
        for (t, c) in input.tensors.iter().zip(&choices) {
            let note = c
                .fallback_from
                .map(|f| format!(" (fallback from {f})"))
                .unwrap_or_default();
            println!(
                "{:<40} {:>20} {:>6} -> {}{note}",
                t.name,
                format!("{:?}", t.ne),
                t.ty,
                c.ty
            );
        }
        return Ok(());
    }

    let mut writer = GgufWriter::new();
    let (mut have_ftype, mut have_qv) = (false, false);
    for (k, v) in &input.metadata {
        // llama-quantize drops the split keys (one output file) and rewrites these two.
        let v = match k.as_str() {
            "split.no" | "split.count" | "split.tensors.count" => continue,
            "general.file_type" => {
                have_ftype = true;
                GgufValue::U32(args.ftype.id())
            }
            "general.quantization_version" => {
                have_qv = true;
                GgufValue::U32(2)
            }
            _ => v.clone(),
        };
        writer
            .add_metadata(k.clone(), v)
            .map_err(|e| e.to_string())?;
    }
    if !have_qv {
        writer
            .add_metadata("general.quantization_version", 2u32)
            .map_err(|e| e.to_string())?;
    }
    if !have_ftype {
        writer
            .add_metadata("general.file_type", args.ftype.id())
            .map_err(|e| e.to_string())?;
    }

    let pb = tensor_examples::progress_bar(input.tensors.len() as u64);
    let (mut size_in, mut size_out, mut elems) = (0usize, 0usize, 0usize);
    for (i, (t, c)) in input.tensors.iter().zip(&choices).enumerate() {
        pb.set_message(t.name.clone());
        let n: usize = t.ne.iter().product();
        elems += n;
        size_in += input.stored_size(i);
        let data: Cow<[u8]> = match input.raw(i)? {
            Some(raw) if c.ty == t.ty => Cow::Borrowed(raw),
            _ => {
                let x = input.values(i).map_err(|e| format!("{}: {e}", t.name))?;
                let row = t.ne.first().copied().unwrap_or(1);
                Cow::Owned(quantize_rows(c.ty, &x, row).map_err(|e| format!("{}: {e}", t.name))?)
            }
        };
        size_out += data.len();
        let dims: Vec<usize> = t.ne.iter().rev().copied().collect();
        writer
            .add_raw(t.name.clone(), c.ty, &dims, data)
            .map_err(|e| e.to_string())?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    writer.write(&args.output).map_err(|e| e.to_string())?;

    let mut counts = BTreeMap::<&str, usize>::new();
    for c in &choices {
        *counts.entry(c.ty.name()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    let bpw = |bytes: usize| bytes as f64 * 8.0 / elems.max(1) as f64;
    eprintln!(
        "quantize: {} -> {} ({}) in {:.1} s\n  tensors: {}\n  size: {:.2} MiB ({:.2} BPW) -> \
         {:.2} MiB ({:.2} BPW)",
        args.input.display(),
        args.output.display(),
        args.ftype.name(),
        start.elapsed().as_secs_f64(),
        counts.join(", "),
        mib(size_in),
        bpw(size_in),
        mib(size_out),
        bpw(size_out)
    );
    Ok(())
}

fn main() -> ExitCode {
    tensor_examples::cli_main(
        "quantize",
        USAGE,
        parse_args(std::env::args().skip(1)),
        |a| a.threads,
        run,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    /// A llama model's tensors in GGUF naming: `d` wide, `ff` FFN, tied or not.
    fn llama(n_layer: usize, d: usize, kv: usize, ff: usize, tied: bool) -> Vec<TensorDesc> {
        let t = |name: String, ne: &[usize]| TensorDesc {
            name,
            ne: ne.to_vec(),
            ty: F32,
        };
        let mut v = vec![
            t("token_embd.weight".into(), &[d, 49152]),
            t("output_norm.weight".into(), &[d]),
        ];
        if !tied {
            v.push(t("output.weight".into(), &[d, 49152]));
        }
        for i in 0..n_layer {
            let b = |n: &str| format!("blk.{i}.{n}.weight");
            v.extend([
                t(b("attn_norm"), &[d]),
                t(b("attn_q"), &[d, d]),
                t(b("attn_k"), &[d, kv]),
                t(b("attn_v"), &[d, kv]),
                t(b("attn_output"), &[d, d]),
                t(b("ffn_norm"), &[d]),
                t(b("ffn_gate"), &[d, ff]),
                t(b("ffn_up"), &[d, ff]),
                t(b("ffn_down"), &[ff, d]),
            ]);
        }
        v
    }

    fn params(n_layer: usize, n_head: usize, n_head_kv: usize) -> ModelParams {
        ModelParams {
            arch: "llama".into(),
            n_layer,
            n_head,
            n_head_kv,
            n_expert: 0,
        }
    }

    fn types(
        ts: &[TensorDesc],
        m: &ModelParams,
        f: FileType,
        pure: bool,
    ) -> HashMap<String, GgmlType> {
        let c = choose_types(ts, m, f, pure).unwrap();
        ts.iter()
            .zip(c)
            .map(|(t, c)| (t.name.clone(), c.ty))
            .collect()
    }

    const MORE_BITS_30: [usize; 14] = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29];

    #[test]
    fn use_more_bits_for_30_layers() {
        let got: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(got, MORE_BITS_30);
    }

    #[test]
    fn q4_k_m_30_layers_rows_of_256() {
        // d 1024, 16 heads / 4 KV heads, FFN 2816 (11 x 256): no fallback anywhere.
        let ts = llama(30, 1024, 256, 2816, false);
        let ty = types(&ts, &params(30, 16, 4), FileType::Q4_K_M, false);
        for i in 0..30 {
            let want = if MORE_BITS_30.contains(&i) {
                Q6_K
            } else {
                Q4_K
            };
            assert_eq!(ty[&format!("blk.{i}.attn_v.weight")], want, "attn_v {i}");
            assert_eq!(
                ty[&format!("blk.{i}.ffn_down.weight")],
                want,
                "ffn_down {i}"
            );
            for n in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"] {
                assert_eq!(ty[&format!("blk.{i}.{n}.weight")], Q4_K, "{n} {i}");
            }
            assert_eq!(ty[&format!("blk.{i}.attn_norm.weight")], F32);
        }
        assert_eq!(ty["output.weight"], Q6_K);
        assert_eq!(ty["token_embd.weight"], Q4_K);
        assert_eq!(ty["output_norm.weight"], F32);
    }

    #[test]
    fn tied_embeddings_are_treated_as_the_output() {
        let ts = llama(30, 1024, 256, 2816, true);
        let m = params(30, 16, 4);
        assert_eq!(
            types(&ts, &m, FileType::Q4_K_M, false)["token_embd.weight"],
            Q6_K
        );
        assert_eq!(
            types(&ts, &m, FileType::Q4_0, false)["token_embd.weight"],
            Q6_K
        );
        assert_eq!(
            types(&ts, &m, FileType::Q8_0, false)["token_embd.weight"],
            Q8_0
        );
        // --pure skips the mix, output included.
        assert_eq!(
            types(&ts, &m, FileType::Q4_0, true)["token_embd.weight"],
            Q4_0
        );
    }

    #[test]
    fn q4_k_s_and_q5_k_m_and_q2_k() {
        let ts = llama(30, 1024, 256, 2816, false);
        let m = params(30, 16, 4);
        let s = types(&ts, &m, FileType::Q4_K_S, false);
        for i in 0..30 {
            let v = if i < 4 { Q5_K } else { Q4_K };
            let down = if i < 3 { Q5_K } else { Q4_K };
            assert_eq!(s[&format!("blk.{i}.attn_v.weight")], v, "Q4_K_S attn_v {i}");
            assert_eq!(
                s[&format!("blk.{i}.ffn_down.weight")],
                down,
                "Q4_K_S ffn_down {i}"
            );
        }
        let m5 = types(&ts, &m, FileType::Q5_K_M, false);
        assert_eq!(m5["blk.3.attn_v.weight"], Q5_K);
        assert_eq!(m5["blk.5.ffn_down.weight"], Q6_K);
        assert_eq!(m5["output.weight"], Q6_K);
        // Q2_K: attn_v depends on grouped-query attention (16 / 4 = 4 here).
        let q2 = types(&ts, &m, FileType::Q2_K, false);
        assert_eq!(q2["blk.7.attn_v.weight"], Q4_K);
        assert_eq!(q2["blk.7.ffn_down.weight"], Q3_K);
        assert_eq!(q2["blk.7.attn_output.weight"], Q3_K);
        assert_eq!(q2["blk.7.attn_q.weight"], Q2_K);
        let q2_mha = types(&ts, &params(30, 16, 16), FileType::Q2_K, false);
        assert_eq!(q2_mha["blk.7.attn_v.weight"], Q3_K);
    }

    #[test]
    fn smollm2_shapes_fall_back() {
        // SmolLM2-135M: d 576 (not a multiple of 256), FFN 1536 (6 x 256), tied.
        let ts = llama(30, 576, 192, 1536, true);
        let m = params(30, 9, 3);
        let c = choose_types(&ts, &m, FileType::Q4_K_M, false).unwrap();
        let by: HashMap<&str, Choice> = ts.iter().map(|t| t.name.as_str()).zip(c).collect();
        let fb = |ty, from| Choice {
            ty,
            fallback_from: Some(from),
        };
        assert_eq!(by["blk.4.attn_q.weight"], fb(Q5_0, Q4_K));
        assert_eq!(by["blk.0.attn_v.weight"], fb(Q8_0, Q6_K));
        assert_eq!(by["blk.4.attn_v.weight"], fb(Q5_0, Q4_K));
        // ffn_down rows are 1536 long: real K-quants.
        assert_eq!(by["blk.0.ffn_down.weight"].ty, Q6_K);
        assert_eq!(by["blk.4.ffn_down.weight"].ty, Q4_K);
        assert_eq!(by["blk.4.ffn_down.weight"].fallback_from, None);
        // The tied embeddings: 576 % 256 != 0 -> Q8_0, decided before any fallback.
        assert_eq!(
            by["token_embd.weight"],
            Choice {
                ty: Q8_0,
                fallback_from: None
            }
        );
        // The shipped Q4_1 file's choice for its own embeddings.
        let q41 = types(&ts, &m, FileType::Q4_1, false);
        assert_eq!(q41["token_embd.weight"], Q8_0);
        assert_eq!(q41["blk.0.attn_q.weight"], Q4_1);
    }

    #[test]
    fn odd_rows_fall_back_to_f16_and_norms_stay() {
        let ts = vec![
            TensorDesc {
                name: "blk.0.ffn_down.weight".into(),
                ne: vec![48, 32],
                ty: F32,
            },
            TensorDesc {
                name: "blk.0.attn_norm.weight".into(),
                ne: vec![32],
                ty: F32,
            },
            TensorDesc {
                name: "rope_freqs.weight".into(),
                ne: vec![4],
                ty: F32,
            },
            TensorDesc {
                name: "blk.0.attn_q.weight".into(),
                ne: vec![32, 32],
                ty: Q4_1,
            },
        ];
        let m = params(1, 4, 2);
        let c = choose_types(&ts, &m, FileType::Q8_0, false).unwrap();
        assert_eq!(c[0].ty, F16);
        assert_eq!(c[0].fallback_from, Some(Q8_0));
        assert_eq!((c[1].ty, c[2].ty), (F32, F32));
        assert_eq!(c[3].ty, Q8_0);
        // Non-quantized targets apply to every quantizable tensor, nothing else.
        let c = choose_types(&ts, &m, FileType::F16, false).unwrap();
        assert_eq!([c[0].ty, c[1].ty, c[3].ty], [F16, F32, F16]);
    }

    #[test]
    fn moe_layers_come_from_names() {
        let mut ts = llama(2, 1024, 256, 2816, false);
        ts.push(TensorDesc {
            name: "blk.7.ffn_down_exps.weight".into(),
            ne: vec![2816, 1024, 8],
            ty: F32,
        });
        let mut m = params(2, 16, 4);
        m.n_expert = 8;
        let err = choose_types(&ts, &m, FileType::Q4_K_M, false).unwrap_err();
        assert!(err.contains("bad layer 7"), "{err}");
    }

    #[test]
    fn type_names() {
        assert_eq!(FileType::parse("q4_k_m"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::parse("Q4_K"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::parse("Q6_K").map(FileType::id), Some(18));
        assert_eq!(FileType::parse("Q8_0").map(FileType::id), Some(7));
        assert_eq!(FileType::parse("Q4_2"), None);
        assert_eq!(FileType::parse("IQ2_XXS"), None);
    }

    #[test]
    fn permute_matches_convert_hf_to_gguf() {
        // One head of 4 rows: (s, j) order [0, 1, 2, 3] = (0,0) (0,1) (1,0) (1,1) becomes
        // (0,0) (1,0) (0,1) (1,1).
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
        assert_eq!(
            permute_qk(&x, 4, 1).unwrap(),
            vec![0., 1., 4., 5., 2., 3., 6., 7.]
        );
        assert!(permute_qk(&x, 4, 3).is_none());
    }

    #[test]
    fn pre_tokenizer_detection() {
        let smollm: Value = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]});
        assert_eq!(detect_pre(&smollm), Some("smollm"));
        let llama3: Value = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pre_tokenizer_regex::LLAMA3}},
            {"type": "ByteLevel", "use_regex": false}]});
        assert_eq!(detect_pre(&llama3), Some("llama-bpe"));
        assert_eq!(
            detect_pre(&serde_json::json!({"type": "ByteLevel"})),
            Some("gpt-2")
        );
        assert_eq!(detect_pre(&serde_json::json!({"type": "Whitespace"})), None);
    }
}
