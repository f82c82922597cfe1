//! Opening a pretrained LLM from disk: a `.gguf` file, or a Hugging Face folder
//! (`config.json` + safetensors or PyTorch weights), into a [`LoadedLm`] that also knows how
//! to build the matching tokenizer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tensor_core::{DType, Device, Error, Result};
use tensor_io::gguf::GgufFile;
use tensor_io::safetensors::{MmapedSafetensors, INDEX_FILE};
use tensor_io::tokenizer::{GgufTokenizerSpec, Tokenizer};
use tensor_nn::VarBuilder;

use super::config::{dedup_in_order, Json, LlmConfig};
use super::decoder::LlmDecoder;
use super::fused::FusedLm;
use super::weights::{Checkpoint, LlmWeights, Scheme};
use crate::lm::{CausalLm, LmInfo};

/// The default `max_seq_len` is the model's context length capped at this, so that the
/// preallocated KV cache of a long-context model stays small; ask for more explicitly.
pub const DEFAULT_MAX_SEQ_LEN_CAP: usize = 4096;

/// Options of [`load_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct LoadOptions {
    /// Longest prompt + generation (the KV cache size). Default: the model's context length,
    /// at most [`DEFAULT_MAX_SEQ_LEN_CAP`].
    pub max_seq_len: Option<usize>,
    /// Compute and weight dtype (F32 by default; BF16/F16 halve the memory). Logits are
    /// always f32.
    pub dtype: DType,
    /// Run GGUF models of the plain Llama-style architectures on the backend's fused
    /// decoder (quantized weights used in place, no per-token allocation) when the backend
    /// has one. On by default; off gives the module graph over dequantized weights.
    pub fused: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_seq_len: None,
            dtype: DType::F32,
            fused: true,
        }
    }
}

/// The checkpoint format a model was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LmFormat {
    Gguf,
    Safetensors,
    /// PyTorch `torch.save` files (`pytorch_model.bin`, `.pth`).
    Pth,
}

/// A loaded model and what a driver needs next to it.
pub struct LoadedLm {
    pub model: Box<dyn CausalLm>,
    pub config: LlmConfig,
    pub format: LmFormat,
    /// The `.gguf` file, or the folder holding `config.json`.
    pub path: PathBuf,
    /// The open GGUF file (its metadata holds the tokenizer and chat template).
    pub gguf: Option<Arc<GgufFile>>,
}

impl std::fmt::Debug for LoadedLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedLm")
            .field("info", self.model.info())
            .field("format", &self.format)
            .field("path", &self.path)
            .finish()
    }
}

impl LoadedLm {
    /// `tokenizer.json` beside a Hugging Face checkpoint, if there is one.
    pub fn tokenizer_json(&self) -> Option<PathBuf> {
        if self.gguf.is_some() {
            return None;
        }
        let p = self.path.join("tokenizer.json");
        p.is_file().then_some(p)
    }

    /// The tokenizer description of a GGUF model (`None` for other formats).
    pub fn gguf_tokenizer_spec(&self) -> Result<Option<GgufTokenizerSpec>> {
        self.gguf.as_deref().map(gguf_tokenizer_spec).transpose()
    }

    /// The model's tokenizer: rebuilt from the GGUF metadata, or `tokenizer.json` (with
    /// `tokenizer_config.json`) from the checkpoint folder.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        if let Some(spec) = self.gguf_tokenizer_spec()? {
            return Tokenizer::from_gguf_spec(&spec);
        }
        match self.tokenizer_json() {
            Some(p) => Tokenizer::from_file(p),
            None => Err(Error::invalid(
                "LoadedLm::tokenizer",
                format!("no tokenizer.json in {}", self.path.display()),
            )),
        }
    }
}

/// Load `path` (a `.gguf` file, or a folder with `config.json` and weights) on `device`
/// with [`LoadOptions::default`].
pub fn load(path: &Path, device: &Device) -> Result<LoadedLm> {
    load_with(path, device, &LoadOptions::default())
}

/// [`load`] with options.
pub fn load_with(path: &Path, device: &Device, opts: &LoadOptions) -> Result<LoadedLm> {
    if !opts.dtype.is_float() {
        return Err(Error::invalid(
            "llm::load",
            format!("dtype must be a float type, got {}", opts.dtype),
        ));
    }
    if opts.max_seq_len == Some(0) {
        return Err(Error::invalid("llm::load", "max_seq_len must be positive"));
    }
    let is_gguf = path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if is_gguf {
        load_gguf(path, device, opts)
    } else {
        load_hf(path, device, opts)
    }
}

fn build(
    cfg: &LlmConfig,
    weights: LlmWeights,
    device: &Device,
    opts: &LoadOptions,
) -> Result<Box<dyn CausalLm>> {
    let max = max_seq_len(cfg, opts);
    let vb = VarBuilder::from_source(Arc::new(weights), opts.dtype, device);
    Ok(Box::new(LlmDecoder::new(cfg, &vb, max)?))
}

fn max_seq_len(cfg: &LlmConfig, opts: &LoadOptions) -> usize {
    opts.max_seq_len
        .unwrap_or_else(|| cfg.context_length.min(DEFAULT_MAX_SEQ_LEN_CAP))
}

fn load_gguf(path: &Path, device: &Device, opts: &LoadOptions) -> Result<LoadedLm> {
    let file = Arc::new(GgufFile::open(path)?);
    let cfg = LlmConfig::from_gguf(&file)?;
    if opts.fused && opts.dtype == DType::F32 {
        let max = max_seq_len(&cfg, opts);
        if let Some(spec) = super::fused::gguf_spec(&cfg, &file, device, max)? {
            if let Some(dec) = device.backend().fused_decoder(&spec)? {
                let info = LmInfo {
                    architecture: cfg.architecture.clone(),
                    vocab_size: cfg.vocab_size,
                    max_seq_len: max,
                    eos_token_ids: cfg.eos_token_ids.clone(),
                    bos_token_id: cfg.bos_token_id,
                };
                let model = Box::new(FusedLm::new(info, device.clone(), spec, dec));
                return Ok(LoadedLm {
                    model,
                    config: cfg,
                    format: LmFormat::Gguf,
                    path: path.to_path_buf(),
                    gguf: Some(file),
                });
            }
        }
    }
    let weights = LlmWeights::new(Checkpoint::Gguf(file.clone()), Scheme::Gguf, &cfg);
    let model = build(&cfg, weights, device, opts)?;
    Ok(LoadedLm {
        model,
        config: cfg,
        format: LmFormat::Gguf,
        path: path.to_path_buf(),
        gguf: Some(file),
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::invalid("llm::load", format!("{}: {e}", path.display())))
}

fn files_with_ext(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
        context: format!("listing {}", dir.display()),
        source,
    })?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| exts.contains(&e))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The weight files of a Hugging Face checkpoint folder (or the one file given).
fn open_hf_weights(path: &Path, dir: &Path) -> Result<(Checkpoint, LmFormat)> {
    if path.is_file() {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        return match ext {
            "safetensors" => Ok((
                Checkpoint::Safetensors(MmapedSafetensors::open(path)?),
                LmFormat::Safetensors,
            )),
            "json" => Ok((
                Checkpoint::Safetensors(MmapedSafetensors::open_sharded(path)?),
                LmFormat::Safetensors,
            )),
            _ => Ok((Checkpoint::open_pth(&[path.to_path_buf()])?, LmFormat::Pth)),
        };
    }
    if dir.join(INDEX_FILE).is_file() || dir.join("model.safetensors").is_file() {
        return Ok((
            Checkpoint::Safetensors(MmapedSafetensors::open_sharded(dir)?),
            LmFormat::Safetensors,
        ));
    }
    let st = files_with_ext(dir, &["safetensors"])?;
    match st.as_slice() {
        [one] => {
            return Ok((
                Checkpoint::Safetensors(MmapedSafetensors::open(one)?),
                LmFormat::Safetensors,
            ))
        }
        [] => {}
        _ => {
            return Err(Error::invalid(
                "llm::load",
                format!(
                    "{} holds {} safetensors files but no {INDEX_FILE}",
                    dir.display(),
                    st.len()
                ),
            ))
        }
    }
    let bin_index = dir.join("pytorch_model.bin.index.json");
    if bin_index.is_file() {
        let idx = read_json(&bin_index)?;
        let map = idx
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Error::invalid(
                    "llm::load",
                    format!("{}: no weight_map object", bin_index.display()),
                )
            })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(Value::as_str)
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok((Checkpoint::open_pth(&files)?, LmFormat::Pth));
    }
    if dir.join("pytorch_model.bin").is_file() {
        return Ok((
            Checkpoint::open_pth(&[dir.join("pytorch_model.bin")])?,
            LmFormat::Pth,
        ));
    }
    let pth = files_with_ext(dir, &["pth", "pt", "bin"])?;
    if let [one] = pth.as_slice() {
        return Ok((
            Checkpoint::open_pth(std::slice::from_ref(one))?,
            LmFormat::Pth,
        ));
    }
    Err(Error::invalid(
        "llm::load",
        format!(
            "{} holds no model weights (looked for {INDEX_FILE}, model.safetensors, one \
             *.safetensors, pytorch_model.bin(.index.json), or one .pth/.pt/.bin)",
            dir.display()
        ),
    ))
}

fn load_hf(path: &Path, device: &Device, opts: &LoadOptions) -> Result<LoadedLm> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else if path.is_file() {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        return Err(Error::invalid(
            "llm::load",
            format!(
                "{} is neither a .gguf file nor a checkpoint folder",
                path.display()
            ),
        ));
    };
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(Error::invalid(
            "llm::load",
            format!(
                "no config.json in {} (a Hugging Face checkpoint folder needs one; GGUF \
                 files must end in .gguf)",
                dir.display()
            ),
        ));
    }
    let mut cfg = LlmConfig::from_hf_json(&read_json(&config_path)?)?;
    let gen = dir.join("generation_config.json");
    if gen.is_file() {
        let g = read_json(&gen)?;
        let j = Json(&g);
        cfg.eos_token_ids.extend(j.ids("eos_token_id"));
        dedup_in_order(&mut cfg.eos_token_ids);
        if cfg.bos_token_id.is_none() {
            cfg.bos_token_id = j.ids("bos_token_id").first().copied();
        }
    }
    let (ckpt, format) = open_hf_weights(path, &dir)?;
    let weights = LlmWeights::new(ckpt, Scheme::HuggingFace, &cfg);
    let model = build(&cfg, weights, device, opts)?;
    Ok(LoadedLm {
        model,
        config: cfg,
        format,
        path: dir,
        gguf: None,
    })
}

/// The `tokenizer.ggml.*` metadata of a GGUF file as a [`GgufTokenizerSpec`] (the keys are
/// listed on that type), ready for [`Tokenizer::from_gguf_spec`].
pub fn gguf_tokenizer_spec(file: &GgufFile) -> Result<GgufTokenizerSpec> {
    fn opt<'a, T>(
        file: &'a GgufFile,
        key: &str,
        get: impl FnOnce(&'a GgufFile, &str) -> Result<T>,
    ) -> Result<Option<T>> {
        if file.get(key).is_some() {
            get(file, key).map(Some)
        } else {
            Ok(None)
        }
    }
    let k = |s: &str| format!("tokenizer.ggml.{s}");
    Ok(GgufTokenizerSpec {
        model: file.get_str(&k("model"))?.to_string(),
        pre: opt(file, &k("pre"), |f, k| f.get_str(k).map(str::to_string))?,
        tokens: file.get_str_array(&k("tokens"))?.to_vec(),
        scores: opt(file, &k("scores"), |f, k| {
            f.get_f32_array(k).map(<[f32]>::to_vec)
        })?,
        token_types: opt(file, &k("token_type"), |f, k| {
            f.get_i32_array(k).map(<[i32]>::to_vec)
        })?,
        merges: opt(file, &k("merges"), |f, k| {
            f.get_str_array(k).map(<[String]>::to_vec)
        })?,
        bos: opt(file, &k("bos_token_id"), GgufFile::get_u32)?,
        eos: opt(file, &k("eos_token_id"), GgufFile::get_u32)?,
        unk: opt(file, &k("unknown_token_id"), GgufFile::get_u32)?,
        pad: opt(file, &k("padding_token_id"), GgufFile::get_u32)?,
        add_bos: opt(file, &k("add_bos_token"), GgufFile::get_bool)?,
        add_eos: opt(file, &k("add_eos_token"), GgufFile::get_bool)?,
        add_space_prefix: opt(file, &k("add_space_prefix"), GgufFile::get_bool)?,
        architecture: opt(file, "general.architecture", |f, k| {
            f.get_str(k).map(str::to_string)
        })?,
        chat_template: opt(file, "tokenizer.chat_template", |f, k| {
            f.get_str(k).map(str::to_string)
        })?,
    })
}
