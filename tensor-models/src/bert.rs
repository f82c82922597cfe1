//! BERT encoders (Hugging Face `BertModel`) and sentence embeddings on top of them
//! (sentence-transformers' recipe: mean pooling over the real tokens, then L2 normalisation),
//! e.g. all-MiniLM-L6-v2.
//!
//! Parameter names are `BertModel`'s, with or without the `bert.` prefix of the task heads
//! (`BertForMaskedLM`, ...): `embeddings.{word,position,token_type}_embeddings`,
//! `embeddings.LayerNorm`, and per layer `encoder.layer.N.attention.self.{query,key,value}`,
//! `attention.output.{dense,LayerNorm}`, `intermediate.dense`, `output.{dense,LayerNorm}`.
//! Each layer is tensor-nn's post-norm [`TransformerBlock`] assembled from those weights. The
//! pooler (`pooler.dense`) is not loaded: sentence embeddings do not use it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tensor_core::{no_grad, DType, Device, Error, Result, Shape, Tensor};
use tensor_io::safetensors::MmapedSafetensors;
use tensor_io::tokenizer::Tokenizer;
use tensor_nn::init::Init;
use tensor_nn::{
    Activation, Embedding, FeedForward, LayerNorm, Linear, Module, MultiHeadAttention, Norm,
    NormPosition, TransformerBlock, VarBuilder, WeightSource,
};

/// The fields of a BERT `config.json` that shape the model.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
}

fn cfg_err(msg: impl Into<String>) -> Error {
    Error::invalid("BertConfig", msg)
}

impl BertConfig {
    /// Parse a Hugging Face `config.json` (missing optional fields take `BertConfig`'s
    /// defaults; a position embedding type other than `absolute` is an error).
    pub fn from_json(text: &str) -> Result<BertConfig> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| cfg_err(format!("config.json is not valid JSON: {e}")))?;
        let req = |k: &str| -> Result<usize> {
            let n = v
                .get(k)
                .and_then(|x| x.as_u64())
                .ok_or_else(|| cfg_err(format!("config.json needs a positive integer '{k}'")))?;
            usize::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| cfg_err(format!("'{k}' = {n} must be positive")))
        };
        let opt = |k: &str, d: usize| -> Result<usize> {
            if v.get(k).is_none_or(|x| x.is_null()) {
                Ok(d)
            } else {
                req(k)
            }
        };
        if let Some(t) = v.get("position_embedding_type").and_then(|x| x.as_str()) {
            if t != "absolute" {
                return Err(cfg_err(format!(
                    "position_embedding_type '{t}' is not supported (only 'absolute')"
                )));
            }
        }
        let hidden_act = match v.get("hidden_act") {
            None => Activation::Gelu,
            Some(serde_json::Value::String(s)) => Activation::from_name(s)?,
            Some(other) => return Err(cfg_err(format!("hidden_act {other} is not a name"))),
        };
        let cfg = BertConfig {
            vocab_size: req("vocab_size")?,
            hidden_size: req("hidden_size")?,
            num_hidden_layers: req("num_hidden_layers")?,
            num_attention_heads: req("num_attention_heads")?,
            intermediate_size: req("intermediate_size")?,
            hidden_act,
            max_position_embeddings: opt("max_position_embeddings", 512)?,
            type_vocab_size: opt("type_vocab_size", 2)?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-12),
            pad_token_id: v
                .get("pad_token_id")
                .and_then(|x| x.as_u64())
                .and_then(|x| u32::try_from(x).ok())
                .unwrap_or(0),
        };
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(cfg_err(format!(
                "hidden_size {} does not split into {} heads",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        Ok(cfg)
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<BertConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        Self::from_json(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
    }
}

/// BERT's feed-forward part: `output.dense(act(intermediate.dense(x)))`.
struct BertFfn {
    intermediate: Linear,
    act: Activation,
    output: Linear,
}

impl Module for BertFfn {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.output
            .forward(&self.act.forward(&self.intermediate.forward(xs)?)?)
    }
}

/// Hugging Face `BertModel` without the pooler: embeddings, then post-norm encoder layers.
#[derive(Clone, Debug)]
pub struct BertModel {
    pub config: BertConfig,
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub embeddings_norm: LayerNorm,
    pub layers: Vec<TransformerBlock>,
    device: Device,
}

impl BertModel {
    /// Build from weights under `vb` (the root of a checkpoint; a `bert.` prefix is detected).
    pub fn load(vb: &VarBuilder, cfg: &BertConfig) -> Result<BertModel> {
        let vb = if !vb.contains("embeddings.word_embeddings.weight")
            && vb.contains("bert.embeddings.word_embeddings.weight")
        {
            vb.pp("bert")
        } else {
            vb.clone()
        };
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let ln = |vb: &VarBuilder| LayerNorm::build(vb, h, eps, true);
        let emb = vb.pp("embeddings");
        let word_embeddings = Embedding::build(&emb.pp("word_embeddings"), cfg.vocab_size, h)?;
        let position_embeddings = Embedding::build(
            &emb.pp("position_embeddings"),
            cfg.max_position_embeddings,
            h,
        )?;
        let token_type_embeddings =
            Embedding::build(&emb.pp("token_type_embeddings"), cfg.type_vocab_size, h)?;
        let embeddings_norm = ln(&emb.pp("LayerNorm"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = vb.pp("encoder.layer").pp(i);
                let sa = l.pp("attention.self");
                let attn = MultiHeadAttention::new(
                    Linear::build(&sa.pp("query"), h, h, true)?,
                    Linear::build(&sa.pp("key"), h, h, true)?,
                    Linear::build(&sa.pp("value"), h, h, true)?,
                    Linear::build(&l.pp("attention.output.dense"), h, h, true)?,
                    cfg.num_attention_heads,
                    cfg.num_attention_heads,
                )?;
                let ffn = BertFfn {
                    intermediate: Linear::build(
                        &l.pp("intermediate.dense"),
                        h,
                        cfg.intermediate_size,
                        true,
                    )?,
                    act: cfg.hidden_act,
                    output: Linear::build(&l.pp("output.dense"), cfg.intermediate_size, h, true)?,
                };
                TransformerBlock::new(
                    attn,
                    Norm::LayerNorm(ln(&l.pp("attention.output.LayerNorm"))?),
                    FeedForward::Custom(Arc::new(ffn)),
                    Norm::LayerNorm(ln(&l.pp("output.LayerNorm"))?),
                    NormPosition::Post,
                    0.0,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BertModel {
            config: cfg.clone(),
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embeddings_norm,
            layers,
            device: vb.device().clone(),
        })
    }

    /// Load `config.json` and the safetensors weights (`model.safetensors` or a sharded index)
    /// of a checkpoint folder, as f32 on `device`.
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<BertModel> {
        let dir = dir.as_ref();
        let cfg = BertConfig::from_file(dir.join("config.json"))?;
        let st = MmapedSafetensors::open_sharded(dir)?;
        let vb = VarBuilder::from_source(Arc::new(SafetensorsSource(st)), DType::F32, device);
        Self::load(&vb, &cfg)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// `last_hidden_state [B, L, hidden]` for `input_ids [B, L]` (integer dtype).
    /// `token_type_ids` default to 0; `attention_mask` (`[B, L]`, non-zero = real token) hides
    /// padding keys, as Hugging Face's `attention_mask`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let d = input_ids.dims();
        if d.len() != 2 || d[1] == 0 || input_ids.dtype().is_float() {
            return Err(Error::invalid(
                "BertModel::forward",
                format!(
                    "input_ids must be a non-empty integer [B, L] tensor, got {:?} {}",
                    d,
                    input_ids.dtype()
                ),
            ));
        }
        let l = d[1];
        if l > self.config.max_position_embeddings {
            return Err(Error::invalid(
                "BertModel::forward",
                format!(
                    "{l} tokens exceed max_position_embeddings {}",
                    self.config.max_position_embeddings
                ),
            ));
        }
        for (name, t) in [
            ("token_type_ids", token_type_ids),
            ("attention_mask", attention_mask),
        ] {
            if let Some(t) = t {
                if t.dims() != d {
                    return Err(Error::invalid(
                        "BertModel::forward",
                        format!("{name} {:?} must match input_ids {d:?}", t.dims()),
                    ));
                }
            }
        }
        let pos = Tensor::arange(0.0, l as f64, 1.0, DType::U32, &self.device)?;
        let mut x = self
            .word_embeddings
            .forward(input_ids)?
            .add(&self.position_embeddings.forward(&pos)?.unsqueeze(0)?)?;
        x = match token_type_ids {
            Some(t) => x.add(&self.token_type_embeddings.forward(t)?)?,
            None => x.add(&self.token_type_embeddings.weight.narrow(0, 0, 1)?)?,
        };
        let mut x = self.embeddings_norm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, attention_mask)?;
        }
        Ok(x)
    }
}

/// Mean of `hidden [B, L, H]` over the positions where `mask [B, L]` is non-zero (all
/// positions without a mask), as sentence-transformers' mean pooling: `[B, H]`.
pub fn mean_pool(hidden: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    match mask {
        None => hidden.mean(1),
        Some(m) => {
            let m = m.to_dtype(hidden.dtype())?.unsqueeze(2)?;
            let sum = hidden.mul(&m)?.sum(1)?;
            let count = m.sum(1)?.clamp(1e-9, f64::INFINITY)?;
            sum.div(&count)
        }
    }
}

/// Rows of `x [B, H]` divided by their L2 norm (`F.normalize(x, p=2, dim=1)`, eps 1e-12).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .mul(x)?
        .sum_keepdim(1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    x.div(&norm)
}

/// Sentence embeddings: a BERT encoder, its tokenizer, mean pooling over the real tokens and
/// L2 normalisation (sentence-transformers' all-MiniLM-L6-v2 pipeline).
#[derive(Debug)]
pub struct SentenceEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    max_seq_length: usize,
    pad_id: u32,
}

impl SentenceEmbedder {
    /// Load a sentence-transformers folder: `config.json`, `model.safetensors`,
    /// `tokenizer.json`, and `sentence_bert_config.json` for `max_seq_length` when present
    /// (else `max_position_embeddings`). The `tokenizer.json`'s own padding and truncation are
    /// switched off: the embedder pads each batch to its longest text and truncates at
    /// `max_seq_length`, as sentence-transformers does.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<SentenceEmbedder> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::msg(format!(
                "model folder {} does not exist",
                dir.display()
            )));
        }
        let model = BertModel::from_dir(dir, device)?;
        let tok_path = dir.join("tokenizer.json");
        let tok = Tokenizer::from_file(&tok_path)?;
        let mut inner = tok.inner().clone();
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::msg(format!("{}: {e}", tok_path.display())))?;
        let tokenizer = Tokenizer::from_inner(inner);
        let max_pos = model.config.max_position_embeddings;
        let max_seq_length = read_max_seq_length(&dir.join("sentence_bert_config.json"))?
            .unwrap_or(max_pos)
            .min(max_pos);
        if max_seq_length < 2 {
            return Err(Error::msg(format!(
                "max_seq_length {max_seq_length} leaves no room for [CLS] and [SEP]"
            )));
        }
        let pad_id = tokenizer
            .token_to_id("[PAD]")
            .unwrap_or(model.config.pad_token_id);
        Ok(SentenceEmbedder {
            model,
            tokenizer,
            max_seq_length,
            pad_id,
        })
    }

    pub fn model(&self) -> &BertModel {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.model.hidden_size()
    }

    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Token ids of `text` with `[CLS]`/`[SEP]`, truncated to `max_seq_length` (the last
    /// token, `[SEP]`, is kept).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text, true)?;
        if ids.len() > self.max_seq_length {
            let last = ids[ids.len() - 1];
            ids.truncate(self.max_seq_length - 1);
            ids.push(last);
        }
        Ok(ids)
    }

    /// Normalised, mean-pooled embeddings of `texts`, one batch padded to the longest text.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<_>>()?;
        if let Some(i) = ids.iter().position(Vec::is_empty) {
            return Err(Error::msg(format!(
                "the tokenizer produced no tokens for text {i} ({:?})",
                texts[i]
            )));
        }
        let l = ids.iter().map(Vec::len).max().unwrap_or(0);
        let b = ids.len();
        let mut flat = Vec::with_capacity(b * l);
        let mut mask = Vec::with_capacity(b * l);
        for row in &ids {
            flat.extend(row);
            flat.extend(std::iter::repeat_n(self.pad_id, l - row.len()));
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.extend(std::iter::repeat_n(0u32, l - row.len()));
        }
        let _guard = no_grad();
        let dev = self.model.device();
        let ids = Tensor::from_vec(flat, (b, l), dev)?;
        let mask = Tensor::from_vec(mask, (b, l), dev)?;
        let hidden = self.model.forward(&ids, None, Some(&mask))?;
        let pooled = l2_normalize(&mean_pool(&hidden, Some(&mask))?)?;
        pooled.to_dtype(DType::F32)?.to_vec2::<f32>()
    }
}

/// `max_seq_length` from a `sentence_bert_config.json`, if the file exists.
fn read_max_seq_length(path: &PathBuf) -> Result<Option<usize>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::msg(format!("{}: invalid JSON: {e}", path.display())))?;
    Ok(v.get("max_seq_length")
        .and_then(|x| x.as_u64())
        .and_then(|x| usize::try_from(x).ok()))
}

/// Weights read on request from memory-mapped safetensors (only what the model asks for is
/// copied; buffers such as `position_ids` and the pooler stay in the file).
struct SafetensorsSource(MmapedSafetensors);

impl WeightSource for SafetensorsSource {
    fn get(
        &self,
        name: &str,
        shape: &Shape,
        _init: &Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let t = self.0.tensor(name, device)?;
        if t.shape() != shape {
            return Err(Error::invalid(
                "load weight",
                format!(
                    "tensor '{name}' has shape {:?} but the model expects {shape:?}",
                    t.dims()
                ),
            ));
        }
        if t.dtype() == dtype {
            Ok(t)
        } else {
            t.to_dtype(dtype)
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}
