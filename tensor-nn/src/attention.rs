//! Multi-head attention for transformers: self- and cross-attention with MHA/GQA/MQA heads,
//! RoPE (every Hugging Face scaling variant, partial rotary), ALiBi, sliding windows, causal
//! and padding masks, Qwen3-style q/k RMSNorm, and a preallocated [`KvCache`] for decoding.
//!
//! Everything goes through [`Tensor::scaled_dot_product_attention`], the backend's fused
//! kernel, so no `[Lq, Lk]` score matrix is built here and autograd works on every backend.
//! The one exception is attention-logit soft-capping (Gemma 2, `tanh(s / cap) · cap` before
//! the mask), which needs the scores: with [`MultiHeadAttention::logit_softcap`] set, the
//! scores are built explicitly from differentiable primitives (matmul, tanh, softmax).
//! Attention-probability dropout is not offered.
//!
//! Parameter names are Hugging Face's (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `q_norm`,
//! `k_norm`) unless [`AttentionNames`] says otherwise; a model with other layouts (fused qkv,
//! GPT-2's transposed `Conv1D`) builds the four [`Linear`]s itself and calls
//! [`MultiHeadAttention::new`].

use tensor_core::{grad_enabled, AttentionParams, DType, Device, Error, Result, Tensor};

use crate::layers::{Linear, RmsNorm};
use crate::module::Module;
use crate::rope::{RopeCache, RopeConfig};
use crate::var_builder::VarBuilder;

/// The names of an attention block's sub-layers under its prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionNames {
    pub q: String,
    pub k: String,
    pub v: String,
    pub o: String,
    pub q_norm: String,
    pub k_norm: String,
}

impl AttentionNames {
    /// Llama/Mistral/Qwen: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `q_norm`, `k_norm`.
    pub fn hf() -> AttentionNames {
        AttentionNames {
            q: "q_proj".into(),
            k: "k_proj".into(),
            v: "v_proj".into(),
            o: "o_proj".into(),
            q_norm: "q_norm".into(),
            k_norm: "k_norm".into(),
        }
    }

    /// BART/Whisper/Marian: the output projection is `out_proj`.
    pub fn bart() -> AttentionNames {
        AttentionNames {
            o: "out_proj".into(),
            ..AttentionNames::hf()
        }
    }
}

impl Default for AttentionNames {
    fn default() -> Self {
        AttentionNames::hf()
    }
}

/// RMSNorm of queries and keys before RoPE.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum QkNorm {
    /// Over each head's `head_dim` (Qwen3, Gemma 3): weights `[head_dim]`.
    PerHead { eps: f64 },
    /// Over the whole projection (OLMo 2): weights `[heads · head_dim]`.
    Full { eps: f64 },
}

/// The shape and options of a [`MultiHeadAttention`].
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Width of the input (and of the output projection's output).
    pub dim: usize,
    pub num_heads: usize,
    /// Key/value heads: `num_heads` (MHA), a divisor of it (GQA), or 1 (MQA).
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Width of the memory that keys and values are projected from in cross-attention
    /// (`None`: `dim`).
    pub kv_dim: Option<usize>,
    /// Biases on the q/k/v projections (Qwen2, BERT, BART).
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub out_bias: bool,
    pub rope: Option<RopeConfig>,
    /// Positions the RoPE table covers (`max_position_embeddings`, or what you will use).
    pub max_positions: usize,
    /// ALiBi position biases with the standard per-head slopes (BLOOM/MPT).
    pub alibi: bool,
    /// Attend only to the last `w` positions, this one included (Mistral).
    pub sliding_window: Option<usize>,
    pub causal: bool,
    pub qk_norm: Option<QkNorm>,
    /// Softmax scale override (default `1/√head_dim`; Gemma uses `query_pre_attn_scalar^-½`).
    pub softmax_scale: Option<f64>,
    pub names: AttentionNames,
}

impl AttentionConfig {
    /// Plain multi-head attention like `nn.MultiheadAttention`: `head_dim = dim / heads`,
    /// biases, no positions, not causal. Change fields with struct-update syntax.
    pub fn new(dim: usize, num_heads: usize) -> AttentionConfig {
        AttentionConfig {
            dim,
            num_heads,
            num_kv_heads: num_heads,
            head_dim: dim.checked_div(num_heads).unwrap_or(0),
            kv_dim: None,
            qkv_bias: true,
            out_bias: true,
            rope: None,
            max_positions: 2048,
            alibi: false,
            sliding_window: None,
            causal: false,
            qk_norm: None,
            softmax_scale: None,
            names: AttentionNames::hf(),
        }
    }

    /// A Llama-style causal GQA layer: no biases, RoPE with `theta` over the whole head.
    pub fn llama(
        dim: usize,
        num_heads: usize,
        num_kv_heads: usize,
        theta: f64,
        max_positions: usize,
    ) -> AttentionConfig {
        let head_dim = dim.checked_div(num_heads).unwrap_or(0);
        AttentionConfig {
            num_kv_heads,
            qkv_bias: false,
            out_bias: false,
            rope: Some(RopeConfig::new(theta, head_dim)),
            max_positions,
            causal: true,
            ..AttentionConfig::new(dim, num_heads)
        }
    }
}

/// Per-head ALiBi slopes (Press et al.; as BLOOM/MPT compute them): a geometric sequence for a
/// power-of-two head count, otherwise that of the next lower power of two followed by every
/// other slope of the next higher one.
pub fn alibi_slopes(num_heads: usize) -> Vec<f64> {
    fn pow2(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))));
        (0..n).map(|i| start * start.powi(i as i32)).collect()
    }
    if num_heads == 0 {
        return Vec::new();
    }
    if num_heads.is_power_of_two() {
        return pow2(num_heads);
    }
    let closest = 1usize << (usize::BITS - 1 - num_heads.leading_zeros());
    let mut s = pow2(closest);
    s.extend(
        alibi_slopes(2 * closest)
            .into_iter()
            .step_by(2)
            .take(num_heads - closest),
    );
    s
}

/// A mask turned into the additive attention bias of [`AttentionParams`], broadcastable to
/// `[B, heads, Lq, Lk]`. `mask` is either a keep-mask (u8/u32/i64, non-zero = attend, the
/// Hugging Face `attention_mask` convention; note that `nn.MultiheadAttention`'s
/// `key_padding_mask` is the opposite) or an additive float mask (0 / −inf). Shapes: `[B, Lk]`
/// (padding), `[B, Lq, Lk]`, or 4-d broadcastable to `[B, heads, Lq, Lk]`; a batch of 1
/// broadcasts.
pub fn mask_to_bias(
    mask: &Tensor,
    (b, heads, lq, lk): (usize, usize, usize, usize),
    dtype: DType,
) -> Result<Tensor> {
    let m = match mask.rank() {
        2 => mask.reshape((mask.dims()[0], 1, 1, mask.dims()[1]))?,
        3 => mask.unsqueeze(1)?,
        4 => mask.clone(),
        _ => {
            return Err(Error::UnexpectedShape {
                op: "attention mask",
                expected: format!("[B, Lk] = [{b}, {lk}], [B, Lq, Lk] or [B, H, Lq, Lk]"),
                got: mask.shape().clone(),
            })
        }
    };
    let full = [b, heads, lq, lk];
    let ok = m
        .dims()
        .iter()
        .zip(full)
        .all(|(&have, want)| have == want || have == 1);
    if !ok {
        return Err(Error::UnexpectedShape {
            op: "attention mask",
            expected: format!(
                "a mask broadcastable to [B, H, Lq, Lk] = {full:?} (given as [B, Lk], \
                 [B, Lq, Lk] or 4-d)"
            ),
            got: mask.shape().clone(),
        });
    }
    if mask.dtype().is_float() {
        let m = m.detach();
        return if m.dtype() == dtype {
            Ok(m)
        } else {
            m.to_dtype(dtype)
        };
    }
    let keep = if mask.dtype() == DType::U8 {
        m
    } else {
        m.ne_scalar(0.0)?
    };
    let dev = mask.device();
    keep.where_cond(
        &Tensor::scalar(0.0, dtype, dev)?,
        &Tensor::scalar(f64::NEG_INFINITY, dtype, dev)?,
    )
}

/// Keys and values of past positions, preallocated as `[B, kv_heads, max_len, head_dim]` and
/// written in place, so decoding appends without reallocating. Filling it is not
/// differentiable: run generation under [`tensor_core::no_grad`].
#[derive(Clone, Debug)]
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    pub fn new(
        batch: usize,
        num_kv_heads: usize,
        max_len: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<KvCache> {
        if max_len == 0 || batch == 0 || num_kv_heads == 0 || head_dim == 0 {
            return Err(Error::invalid(
                "KvCache",
                format!(
                    "all sizes must be positive, got batch {batch}, kv heads {num_kv_heads}, \
                     max_len {max_len}, head_dim {head_dim}"
                ),
            ));
        }
        let shape = (batch, num_kv_heads, max_len, head_dim);
        Ok(KvCache {
            k: Tensor::zeros(shape, dtype, device)?,
            v: Tensor::zeros(shape, dtype, device)?,
            len: 0,
        })
    }

    /// A cache shaped for `attn`'s key/value heads.
    pub fn for_attention(
        attn: &MultiHeadAttention,
        batch: usize,
        max_len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<KvCache> {
        KvCache::new(
            batch,
            attn.num_kv_heads,
            max_len,
            attn.head_dim,
            dtype,
            device,
        )
    }

    /// Positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max_len(&self) -> usize {
        self.k.dims()[2]
    }

    /// Forget every position (the memory is kept and overwritten).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `len` positions (e.g. to roll back rejected speculative tokens).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The stored keys and values `[B, kv_heads, len, head_dim]` (views of the cache).
    pub fn current(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        ))
    }

    /// Write `k`, `v` (`[B, kv_heads, L, head_dim]`) after the stored positions and return all
    /// keys and values so far.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let cd = self.k.dims();
        for t in [k, v] {
            let ok = t.rank() == 4
                && t.dims()[0] == cd[0]
                && t.dims()[1] == cd[1]
                && t.dims()[3] == cd[3]
                && t.dims()[2] == k.dims()[2];
            if !ok {
                return Err(Error::UnexpectedShape {
                    op: "KvCache::append",
                    expected: format!(
                        "k and v of shape [{}, {}, L, {}] with the same L",
                        cd[0], cd[1], cd[3]
                    ),
                    got: t.shape().clone(),
                });
            }
            if t.dtype() != self.k.dtype() {
                return Err(Error::DTypeMismatch {
                    op: "KvCache::append",
                    lhs: self.k.dtype(),
                    rhs: t.dtype(),
                });
            }
            if t.tracked() && grad_enabled() {
                return Err(Error::NoBackward {
                    op: "KvCache::append",
                    why: "writing keys/values into the cache is not differentiable; run \
                          decoding under tensor_core::no_grad()"
                        .into(),
                });
            }
        }
        let l = k.dims()[2];
        if self.len + l > self.max_len() {
            return Err(Error::invalid(
                "KvCache::append",
                format!(
                    "cache full: it holds {} of {} positions and cannot take {l} more",
                    self.len,
                    self.max_len()
                ),
            ));
        }
        self.k.narrow(2, self.len, l)?.copy_from(k)?;
        self.v.narrow(2, self.len, l)?.copy_from(v)?;
        self.len += l;
        self.current()
    }
}

/// Multi-head attention (see the module docs). Fields are public so that a model can adjust
/// or assemble one from its own weights.
#[derive(Clone, Debug)]
pub struct MultiHeadAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    /// Whether `q_norm`/`k_norm` normalise each head (else the whole projection).
    pub qk_norm_per_head: bool,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope: Option<RopeCache>,
    pub alibi_slopes: Option<Vec<f64>>,
    pub sliding_window: Option<usize>,
    pub causal: bool,
    pub scale: f64,
    /// Soft-cap of the scaled scores, `tanh(s / cap) · cap` (Gemma 2); computed with an
    /// explicit score matrix instead of the fused kernel.
    pub logit_softcap: Option<f64>,
}

fn bad(msg: String) -> Error {
    Error::invalid("MultiHeadAttention", msg)
}

impl MultiHeadAttention {
    /// Assemble from projections `q: dim → heads·head_dim`, `k, v: kv_dim → kv_heads·head_dim`,
    /// `o: heads·head_dim → dim`. Not causal, no positions, scale `1/√head_dim`; set the
    /// rest with the `with_*` methods or the public fields.
    pub fn new(
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
        o_proj: Linear,
        num_heads: usize,
        num_kv_heads: usize,
    ) -> Result<MultiHeadAttention> {
        if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(bad(format!(
                "num_heads {num_heads} must be a positive multiple of num_kv_heads \
                 {num_kv_heads}"
            )));
        }
        let qo = q_proj.out_dim();
        if qo == 0 || !qo.is_multiple_of(num_heads) {
            return Err(bad(format!(
                "q_proj output {qo} does not split into {num_heads} heads"
            )));
        }
        let head_dim = qo / num_heads;
        let kv = num_kv_heads * head_dim;
        if k_proj.out_dim() != kv || v_proj.out_dim() != kv {
            return Err(bad(format!(
                "k_proj/v_proj outputs {}/{} must be kv_heads·head_dim = {num_kv_heads}·\
                 {head_dim} = {kv}",
                k_proj.out_dim(),
                v_proj.out_dim()
            )));
        }
        if k_proj.in_dim() != v_proj.in_dim() {
            return Err(bad(format!(
                "k_proj and v_proj read different widths ({} vs {})",
                k_proj.in_dim(),
                v_proj.in_dim()
            )));
        }
        if o_proj.in_dim() != qo {
            return Err(bad(format!(
                "o_proj input {} must be heads·head_dim = {qo}",
                o_proj.in_dim()
            )));
        }
        Ok(MultiHeadAttention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm: None,
            k_norm: None,
            qk_norm_per_head: true,
            num_heads,
            num_kv_heads,
            head_dim,
            rope: None,
            alibi_slopes: None,
            sliding_window: None,
            causal: false,
            scale: 1.0 / (head_dim as f64).sqrt(),
            logit_softcap: None,
        })
    }

    /// Build from `cfg`, creating or loading the parameters under `vb`.
    pub fn build(vb: &VarBuilder, cfg: &AttentionConfig) -> Result<MultiHeadAttention> {
        let rope = match &cfg.rope {
            Some(r) => Some(RopeCache::new(
                r,
                cfg.max_positions,
                rope_dtype(vb.dtype()),
                vb.device(),
            )?),
            None => None,
        };
        Self::build_with_rope(vb, cfg, rope)
    }

    /// [`MultiHeadAttention::build`] with a RoPE cache shared between layers (`cfg.rope` is
    /// then only checked against it).
    pub fn build_with_rope(
        vb: &VarBuilder,
        cfg: &AttentionConfig,
        rope: Option<RopeCache>,
    ) -> Result<MultiHeadAttention> {
        let (h, hkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        if h == 0 || hkv == 0 || d == 0 || !h.is_multiple_of(hkv) {
            return Err(bad(format!(
                "need heads, kv heads and head_dim positive with heads divisible by kv heads; \
                 got heads {h}, kv heads {hkv}, head_dim {d}"
            )));
        }
        if cfg.sliding_window == Some(0) {
            return Err(bad("sliding_window must be positive".into()));
        }
        if let (Some(rc), Some(cache)) = (&cfg.rope, &rope) {
            if rc != cache.config() {
                return Err(bad(
                    "the shared RoPE cache was built for another RopeConfig".into(),
                ));
            }
        }
        if let Some(cache) = &rope {
            if cache.rotary_dim() > d {
                return Err(bad(format!(
                    "rotary dim {} exceeds head_dim {d}",
                    cache.rotary_dim()
                )));
            }
        }
        let n = &cfg.names;
        let kv_in = cfg.kv_dim.unwrap_or(cfg.dim);
        let q = Linear::build(&vb.pp(&n.q), cfg.dim, h * d, cfg.qkv_bias)?;
        let k = Linear::build(&vb.pp(&n.k), kv_in, hkv * d, cfg.qkv_bias)?;
        let v = Linear::build(&vb.pp(&n.v), kv_in, hkv * d, cfg.qkv_bias)?;
        let o = Linear::build(&vb.pp(&n.o), h * d, cfg.dim, cfg.out_bias)?;
        let mut a = MultiHeadAttention::new(q, k, v, o, h, hkv)?
            .with_causal(cfg.causal)
            .with_sliding_window(cfg.sliding_window);
        a.rope = rope;
        if cfg.alibi {
            a.alibi_slopes = Some(alibi_slopes(h));
        }
        if let Some(s) = cfg.softmax_scale {
            a.scale = s;
        }
        if let Some(qk) = cfg.qk_norm {
            let (eps, per_head) = match qk {
                QkNorm::PerHead { eps } => (eps, true),
                QkNorm::Full { eps } => (eps, false),
            };
            let (qd, kd) = if per_head { (d, d) } else { (h * d, hkv * d) };
            a.q_norm = Some(RmsNorm::build(&vb.pp(&n.q_norm), qd, eps)?);
            a.k_norm = Some(RmsNorm::build(&vb.pp(&n.k_norm), kd, eps)?);
            a.qk_norm_per_head = per_head;
        }
        Ok(a)
    }

    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    pub fn with_sliding_window(mut self, window: Option<usize>) -> Self {
        self.sliding_window = window;
        self
    }

    pub fn with_rope(mut self, rope: Option<RopeCache>) -> Self {
        self.rope = rope;
        self
    }

    pub fn with_alibi(mut self, on: bool) -> Self {
        self.alibi_slopes = on.then(|| alibi_slopes(self.num_heads));
        self
    }

    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = scale;
        self
    }

    /// Soft-cap the scaled attention scores at `cap` (`tanh(s / cap) · cap`, Gemma 2).
    pub fn with_logit_softcap(mut self, cap: Option<f64>) -> Result<Self> {
        if let Some(c) = cap {
            if !(c > 0.0 && c.is_finite()) {
                return Err(bad(format!("logit soft-cap must be positive, got {c}")));
            }
        }
        self.logit_softcap = cap;
        Ok(self)
    }

    /// RMSNorms of queries and keys before RoPE, per head (`[head_dim]` weights) or over the
    /// whole projection.
    pub fn with_qk_norm(mut self, q_norm: RmsNorm, k_norm: RmsNorm, per_head: bool) -> Self {
        self.q_norm = Some(q_norm);
        self.k_norm = Some(k_norm);
        self.qk_norm_per_head = per_head;
        self
    }

    /// Width of the input.
    pub fn dim(&self) -> usize {
        self.q_proj.in_dim()
    }

    /// Self-attention of `x: [B, L, dim]` at positions `0..L`. `mask`: see [`mask_to_bias`].
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.forward_at(x, mask, 0)
    }

    /// Self-attention of tokens at positions `offset..offset+L` (without a cache, the keys are
    /// those of `x` only; `offset` only moves RoPE and ALiBi).
    pub fn forward_at(&self, x: &Tensor, mask: Option<&Tensor>, offset: usize) -> Result<Tensor> {
        let q = self.queries(x, offset)?;
        let (k, v) = self.keys_values(x, Some(offset))?;
        self.attend(&q, &k, &v, mask, true)
    }

    /// Self-attention of new tokens `x: [B, L, dim]` following the positions stored in
    /// `cache`: their keys and values are appended, the queries attend over everything
    /// stored. A padding `mask` must cover all `cache.len() + L` key positions.
    pub fn forward_cached(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let offset = cache.len();
        let q = self.queries(x, offset)?;
        let (k, v) = self.keys_values(x, Some(offset))?;
        let (k, v) = cache.append(&k, &v)?;
        self.attend(&q, &k, &v, mask, true)
    }

    /// Cross-attention of `x: [B, Lq, dim]` over `memory: [B, Lm, kv_dim]` (an encoder's
    /// output). No causal mask, window, RoPE or ALiBi; `mask` is over the memory positions.
    pub fn forward_cross(
        &self,
        x: &Tensor,
        memory: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (k, v) = self.memory_kv(memory)?;
        self.forward_cross_kv(x, &k, &v, mask)
    }

    /// The projected keys and values `[B, kv_heads, Lm, head_dim]` of a memory, to reuse across
    /// decoding steps with [`MultiHeadAttention::forward_cross_kv`].
    pub fn memory_kv(&self, memory: &Tensor) -> Result<(Tensor, Tensor)> {
        self.keys_values(memory, None)
    }

    /// Cross-attention over keys and values from [`MultiHeadAttention::memory_kv`].
    pub fn forward_cross_kv(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = self.queries(x, 0)?;
        if k.rank() != 4 || k.dims()[0] != q.dims()[0] {
            return Err(Error::UnexpectedShape {
                op: "MultiHeadAttention",
                expected: format!(
                    "memory keys [{}, {}, Lm, {}]",
                    q.dims()[0],
                    self.num_kv_heads,
                    self.head_dim
                ),
                got: k.shape().clone(),
            });
        }
        self.attend(&q, k, v, mask, false)
    }

    /// Split `[B, L, heads·D]` into `[B, heads, L, D]`, normalising if configured.
    fn heads(&self, t: &Tensor, heads: usize, norm: Option<&RmsNorm>) -> Result<Tensor> {
        let (b, l) = (t.dims()[0], t.dims()[1]);
        let t = match norm {
            Some(n) if !self.qk_norm_per_head => n.forward(t)?,
            _ => t.clone(),
        };
        let t = t.reshape((b, l, heads, self.head_dim))?;
        let t = match norm {
            Some(n) if self.qk_norm_per_head => n.forward(&t)?,
            _ => t,
        };
        t.transpose(1, 2)
    }

    fn check_input(&self, x: &Tensor, what: &str, width: usize) -> Result<()> {
        if x.rank() != 3 || x.dims()[2] != width {
            return Err(Error::UnexpectedShape {
                op: "MultiHeadAttention",
                expected: format!("{what} of shape [B, L, {width}]"),
                got: x.shape().clone(),
            });
        }
        Ok(())
    }

    fn queries(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        self.check_input(x, "input", self.dim())?;
        let q = self.heads(
            &self.q_proj.forward(x)?,
            self.num_heads,
            self.q_norm.as_ref(),
        )?;
        match &self.rope {
            Some(r) => r.apply(&q, offset),
            None => Ok(q),
        }
    }

    /// Keys and values of `src`; rotated when `offset` is given (self-attention).
    fn keys_values(&self, src: &Tensor, offset: Option<usize>) -> Result<(Tensor, Tensor)> {
        self.check_input(src, "keys/values source", self.k_proj.in_dim())?;
        let k = self.heads(
            &self.k_proj.forward(src)?,
            self.num_kv_heads,
            self.k_norm.as_ref(),
        )?;
        let v = self.heads(&self.v_proj.forward(src)?, self.num_kv_heads, None)?;
        let k = match (&self.rope, offset) {
            (Some(r), Some(o)) => r.apply(&k, o)?,
            _ => k,
        };
        Ok((k, v))
    }

    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        self_attention: bool,
    ) -> Result<Tensor> {
        let (b, h, lq) = (q.dims()[0], q.dims()[1], q.dims()[2]);
        let lk = k.dims()[2];
        let dtype = q.dtype();
        let bias = match mask {
            Some(m) => Some(mask_to_bias(m, (b, h, lq, lk), dtype)?),
            None => None,
        };
        let alibi_slopes = match (&self.alibi_slopes, self_attention) {
            (Some(s), true) => Some(Tensor::from_f64s(s, s.len(), dtype, q.device())?),
            _ => None,
        };
        let params = AttentionParams {
            scale: self.scale,
            causal: self_attention && self.causal,
            window: if self_attention {
                self.sliding_window
            } else {
                None
            },
            alibi_slopes,
            bias,
        };
        let out = match self.logit_softcap {
            Some(cap) => explicit_attention(q, k, v, &params, cap)?,
            None => q.scaled_dot_product_attention(k, v, &params)?,
        };
        let out = out.transpose(1, 2)?.reshape((b, lq, h * self.head_dim))?;
        self.o_proj.forward(&out)
    }
}

/// Attention with an explicit score matrix, soft-capped at `cap` before the masks, with the
/// semantics of [`AttentionParams`] (query `i` at position `Lk − Lq + i`; GQA shares each KV
/// head among `Hq / Hkv` query heads). Softmax runs in f32 for half types.
fn explicit_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &AttentionParams,
    cap: f64,
) -> Result<Tensor> {
    let (b, h, lq, d) = (q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]);
    let (hkv, lk, dv) = (k.dims()[1], k.dims()[2], v.dims()[3]);
    if hkv == 0 || !h.is_multiple_of(hkv) || k.dims()[3] != d || (p.causal && lq > lk) {
        return Err(bad(format!(
            "soft-capped attention needs q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D] with Hkv              dividing Hq (and Lq <= Lk when causal); got q {:?}, k {:?}",
            q.dims(),
            k.dims()
        )));
    }
    let g = h / hkv;
    // Group the query heads of each KV head as extra rows: no copy of the keys per head.
    let qg = q.contiguous()?.reshape((b, hkv, g * lq, d))?;
    let s = qg.matmul(&k.transpose(2, 3)?)?.affine(p.scale, 0.0)?;
    let s = s.affine(1.0 / cap, 0.0)?.tanh()?.affine(cap, 0.0)?;
    let mut s = s.reshape((b, h, lq, lk))?;
    let dtype = q.dtype();
    let dev = q.device();
    if p.causal || p.window.is_some() {
        let mut m = vec![0f64; lq * lk];
        for i in 0..lq {
            let pq = lk - lq.min(lk) + i;
            for j in 0..lk {
                let hidden = (p.causal && j > pq) || p.window.is_some_and(|w| pq.abs_diff(j) >= w);
                if hidden {
                    m[i * lk + j] = f64::NEG_INFINITY;
                }
            }
        }
        s = s.add(&Tensor::from_f64s(&m, (lq, lk), dtype, dev)?)?;
    }
    if let Some(slopes) = &p.alibi_slopes {
        let rel: Vec<f64> = (0..lq)
            .flat_map(|i| (0..lk).map(move |j| j as f64 - (lk - lq.min(lk) + i) as f64))
            .collect();
        let rel = Tensor::from_f64s(&rel, (1, 1, lq, lk), dtype, dev)?;
        s = s.add(&slopes.reshape((1, h, 1, 1))?.mul(&rel)?)?;
    }
    if let Some(bias) = &p.bias {
        s = s.add(bias)?;
    }
    let probs = if dtype.is_float() && dtype != DType::F32 && dtype != DType::F64 {
        s.to_dtype(DType::F32)?.softmax(-1)?.to_dtype(dtype)?
    } else {
        s.softmax(-1)?
    };
    let out = probs.reshape((b, hkv, g * lq, lk))?.matmul(v)?;
    out.reshape((b, h, lq, dv))
}

/// The dtype RoPE tables are kept in for parameters of `dtype` (half types keep f32 tables
/// and convert the rows they use).
fn rope_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rope::RopeScaling;
    use crate::var_builder::VarMap;
    use tensor_core::no_grad;

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        let (a, b) = (a.to_f64_vec()?, b.to_f64_vec()?);
        assert_eq!(a.len(), b.len());
        Ok(a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max))
    }

    fn build(cfg: &AttentionConfig, seed: u64) -> Result<MultiHeadAttention> {
        tensor_core::manual_seed(seed);
        let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &tensor_cpu::device());
        MultiHeadAttention::build(&vb, cfg)
    }

    #[test]
    fn alibi_slopes_match_bloom() {
        let s = alibi_slopes(8);
        assert!((s[0] - 0.5).abs() < 1e-15 && (s[7] - 2f64.powi(-8)).abs() < 1e-15);
        // 6 heads: the 4-head slopes, then slopes 0 and 2 of the 8-head sequence.
        let s6 = alibi_slopes(6);
        let s4 = alibi_slopes(4);
        assert_eq!(&s6[..4], &s4[..]);
        assert_eq!(s6[4], s[0]);
        assert_eq!(s6[5], s[2]);
    }

    /// Prefill then token-by-token decoding equals one pass over the whole sequence.
    #[test]
    fn kv_cache_decoding_equals_full_pass() -> Result<()> {
        let _g = no_grad();
        let dev = tensor_cpu::device();
        for (window, alibi, qk, scaling) in [
            (None, false, None, RopeScaling::None),
            (
                Some(3),
                false,
                Some(QkNorm::PerHead { eps: 1e-6 }),
                RopeScaling::llama3(4),
            ),
            (
                None,
                true,
                Some(QkNorm::Full { eps: 1e-6 }),
                RopeScaling::yarn(4.0, 4),
            ),
            (
                Some(2),
                false,
                None,
                RopeScaling::DynamicNtk {
                    factor: 2.0,
                    original_max: 16,
                },
            ),
        ] {
            let cfg = AttentionConfig {
                sliding_window: window,
                alibi,
                qk_norm: qk,
                rope: Some(RopeConfig::new(10000.0, 4).with_scaling(scaling)),
                max_positions: 16,
                qkv_bias: true,
                ..AttentionConfig::llama(12, 4, 2, 10000.0, 16)
            };
            let cfg = AttentionConfig { head_dim: 6, ..cfg }; // partial rotary 4 of 6
            let a = build(&cfg, 7)?;
            let x = Tensor::randn(0.0, 1.0, (2, 7, 12), DType::F64, &dev)?;
            let full = a.forward(&x, None)?;
            let mut cache = KvCache::for_attention(&a, 2, 8, DType::F64, &dev)?;
            let mut outs = vec![a.forward_cached(&x.narrow(1, 0, 4)?, None, &mut cache)?];
            for t in 4..7 {
                outs.push(a.forward_cached(&x.narrow(1, t, 1)?, None, &mut cache)?);
            }
            let refs: Vec<&Tensor> = outs.iter().collect();
            let inc = Tensor::cat(&refs, 1)?;
            let d = max_diff(&full, &inc)?;
            assert!(d < 1e-12, "window {window:?} alibi {alibi}: {d}");
            assert_eq!(cache.len(), 7);
            // One slot left: two more tokens do not fit.
            let e = a
                .forward_cached(&x.narrow(1, 0, 2)?, None, &mut cache)
                .unwrap_err()
                .to_string();
            assert!(e.contains("cache full"), "{e}");
        }
        Ok(())
    }

    /// A huge soft-cap leaves the scores unchanged, so the explicit path must equal the fused
    /// kernel (GQA, window, ALiBi, cached decoding); a small cap bounds the scores.
    #[test]
    fn softcap_path_matches_fused_kernel() -> Result<()> {
        let _g = no_grad();
        let dev = tensor_cpu::device();
        for (window, alibi) in [(None, false), (Some(3), false), (None, true)] {
            let cfg = AttentionConfig {
                sliding_window: window,
                alibi,
                max_positions: 16,
                ..AttentionConfig::llama(16, 4, 2, 10000.0, 16)
            };
            let plain = build(&cfg, 5)?;
            let capped = plain.clone().with_logit_softcap(Some(1e9))?;
            let x = Tensor::randn(0.0, 1.0, (2, 6, 16), DType::F64, &dev)?;
            let d = max_diff(&plain.forward(&x, None)?, &capped.forward(&x, None)?)?;
            assert!(d < 1e-10, "window {window:?} alibi {alibi}: {d}");
            let mut cache = KvCache::for_attention(&capped, 2, 8, DType::F64, &dev)?;
            let mut outs = vec![capped.forward_cached(&x.narrow(1, 0, 4)?, None, &mut cache)?];
            for t in 4..6 {
                outs.push(capped.forward_cached(&x.narrow(1, t, 1)?, None, &mut cache)?);
            }
            let inc = Tensor::cat(&outs.iter().collect::<Vec<_>>(), 1)?;
            assert!(max_diff(&plain.forward(&x, None)?, &inc)? < 1e-10);
            let small = plain.clone().with_logit_softcap(Some(0.5))?;
            assert!(max_diff(&plain.forward(&x, None)?, &small.forward(&x, None)?)? > 1e-3);
        }
        assert!(build(&AttentionConfig::new(8, 2), 1)?
            .with_logit_softcap(Some(0.0))
            .is_err());
        Ok(())
    }

    #[test]
    fn padding_mask_hides_keys() -> Result<()> {
        let dev = tensor_cpu::device();
        let a = build(&AttentionConfig::new(8, 2), 3)?;
        let x = Tensor::randn(0.0, 1.0, (2, 5, 8), DType::F64, &dev)?;
        // Batch 1's last two tokens are padding: its first three outputs equal attention over
        // the three real tokens alone; batch 0 is unmasked.
        let keep = Tensor::from_f64s(
            &[1., 1., 1., 1., 1., 1., 1., 1., 0., 0.],
            (2, 5),
            DType::U8,
            &dev,
        )?;
        let y = a.forward(&x, Some(&keep))?;
        let y_short = a.forward(&x.narrow(0, 1, 1)?.narrow(1, 0, 3)?, None)?;
        let d = max_diff(&y.narrow(0, 1, 1)?.narrow(1, 0, 3)?, &y_short)?;
        assert!(d < 1e-12, "{d}");
        let d0 = max_diff(&y.narrow(0, 0, 1)?, &a.forward(&x.narrow(0, 0, 1)?, None)?)?;
        assert!(d0 < 1e-12, "{d0}");
        // The same mask as an additive float bias, and as i64.
        let add = keep.to_dtype(DType::F64)?.affine(1e9, -1e9)?;
        assert!(max_diff(&a.forward(&x, Some(&add))?, &y)? < 1e-12);
        let k64 = keep.to_dtype(DType::I64)?;
        assert!(max_diff(&a.forward(&x, Some(&k64))?, &y)? < 1e-12);
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let dev = tensor_cpu::device();
        let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F64, &dev);
        let mut cfg = AttentionConfig::new(8, 3);
        cfg.num_kv_heads = 2; // 3 heads do not split into 2 groups
        assert!(MultiHeadAttention::build(&vb, &cfg).is_err());
        cfg.num_kv_heads = 3;
        cfg.sliding_window = Some(0);
        assert!(MultiHeadAttention::build(&vb, &cfg).is_err());
        let a = build(&AttentionConfig::new(8, 2), 1)?;
        let x = Tensor::zeros((2, 4, 8), DType::F64, &dev)?;
        assert!(a
            .forward(&Tensor::zeros((2, 4, 6), DType::F64, &dev)?, None)
            .is_err());
        assert!(a
            .forward(&Tensor::zeros((4, 8), DType::F64, &dev)?, None)
            .is_err());
        let m = Tensor::ones((2, 5), DType::U8, &dev)?;
        let e = a.forward(&x, Some(&m)).unwrap_err().to_string();
        assert!(e.contains("mask"), "{e}");
        let mem = Tensor::zeros((3, 4, 8), DType::F64, &dev)?;
        assert!(a.forward_cross(&x, &mem, None).is_err());
        let mut c = KvCache::new(2, 2, 4, 3, DType::F64, &dev)?;
        assert!(a.forward_cached(&x, None, &mut c).is_err()); // head_dim 4 vs 3
        Ok(())
    }

    #[test]
    fn tracked_cache_writes_are_refused() -> Result<()> {
        let dev = tensor_cpu::device();
        let a = build(&AttentionConfig::new(8, 2), 1)?;
        let x = Tensor::zeros((1, 2, 8), DType::F64, &dev)?;
        let mut c = KvCache::for_attention(&a, 1, 4, DType::F64, &dev)?;
        let e = a.forward_cached(&x, None, &mut c).unwrap_err().to_string();
        assert!(e.contains("no_grad"), "{e}");
        Ok(())
    }
}
