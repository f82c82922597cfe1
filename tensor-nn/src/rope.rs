//! Rotary position embeddings (RoPE): the inverse frequencies of every Hugging Face scaling
//! variant (`transformers` `modeling_rope_utils.py`: default, linear, dynamic NTK, Llama 3,
//! YaRN, LongRoPE), a cos/sin table for a maximum number of positions, and applying it to
//! `[B, H, L, D]` queries/keys at a position offset (KV-cache decoding), with partial rotary.
//!
//! The frequencies are computed in f64 (transformers computes them in f32), so the tables agree
//! with Hugging Face to f32 rounding and are exact in f64.

use std::f64::consts::PI;

use tensor_core::{DType, Device, Error, Result, Tensor};

/// How the base frequencies are rescaled for longer contexts (`rope_scaling` /
/// `rope_parameters` of a Hugging Face config).
#[derive(Clone, Debug, PartialEq, Default)]
pub enum RopeScaling {
    /// The original RoPE (`rope_type: "default"`).
    #[default]
    None,
    /// Position interpolation: every frequency divided by `factor` (`"linear"`).
    Linear { factor: f64 },
    /// Dynamic NTK (`"dynamic"`): the base grows with the current sequence length once it
    /// exceeds `original_max` (the config's `max_position_embeddings`).
    DynamicNtk { factor: f64, original_max: usize },
    /// Llama 3.1 (`"llama3"`): low frequencies divided by `factor`, high ones kept, a smooth
    /// ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// YaRN (`"yarn"`): NTK-by-parts interpolation plus an attention factor that scales cos
    /// and sin. `attention_factor` overrides the default `0.1·ln(factor) + 1` (or the
    /// `mscale`/`mscale_all_dim` ratio of DeepSeek configs).
    Yarn {
        factor: f64,
        original_max: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
    /// LongRoPE (`"longrope"`, Phi-3): per-frequency factors, `short_factor` while the
    /// sequence fits `original_max`, `long_factor` beyond it; `factor` is
    /// `max_position_embeddings / original_max`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        factor: f64,
        original_max: usize,
        attention_factor: Option<f64>,
    },
}

impl RopeScaling {
    /// YaRN with transformers' defaults (`beta_fast` 32, `beta_slow` 1, truncation on).
    pub fn yarn(factor: f64, original_max: usize) -> RopeScaling {
        RopeScaling::Yarn {
            factor,
            original_max,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            mscale: None,
            mscale_all_dim: None,
            truncate: true,
        }
    }

    /// Llama 3.1's published setting for an `original_max` context (factor 8, low 1, high 4).
    pub fn llama3(original_max: usize) -> RopeScaling {
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: original_max,
        }
    }

    /// Parse a Hugging Face `rope_scaling` / `rope_parameters` object (`null` or a missing
    /// `rope_type`/`type` means no scaling). `max_position_embeddings` is the model config's,
    /// used where transformers falls back on it.
    pub fn from_hf(v: &serde_json::Value, max_position_embeddings: usize) -> Result<RopeScaling> {
        let err = |msg: String| Error::invalid("RopeScaling::from_hf", msg);
        if v.is_null() {
            return Ok(RopeScaling::None);
        }
        let kind = v
            .get("rope_type")
            .or_else(|| v.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
        let need = |k: &str| num(k).ok_or_else(|| err(format!("'{kind}' scaling needs '{k}'")));
        let orig = || {
            num("original_max_position_embeddings")
                .map(|x| x as usize)
                .unwrap_or(max_position_embeddings)
        };
        let list = |k: &str| -> Result<Vec<f64>> {
            v.get(k)
                .and_then(|x| x.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .ok_or_else(|| err(format!("'{kind}' scaling needs the list '{k}'")))
        };
        Ok(match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: need("factor")?,
            },
            "dynamic" => RopeScaling::DynamicNtk {
                factor: need("factor")?,
                original_max: max_position_embeddings,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: orig(),
            },
            "yarn" => {
                let original_max = orig();
                RopeScaling::Yarn {
                    factor: num("factor")
                        .unwrap_or(max_position_embeddings as f64 / original_max as f64),
                    original_max,
                    beta_fast: num("beta_fast").unwrap_or(32.0),
                    beta_slow: num("beta_slow").unwrap_or(1.0),
                    attention_factor: num("attention_factor"),
                    mscale: num("mscale"),
                    mscale_all_dim: num("mscale_all_dim"),
                    truncate: v.get("truncate").and_then(|t| t.as_bool()).unwrap_or(true),
                }
            }
            "longrope" | "su" => {
                let original_max = orig();
                RopeScaling::LongRope {
                    short_factor: list("short_factor")?,
                    long_factor: list("long_factor")?,
                    factor: num("factor")
                        .unwrap_or(max_position_embeddings as f64 / original_max as f64),
                    original_max,
                    attention_factor: num("attention_factor"),
                }
            }
            other => {
                return Err(err(format!(
                    "unsupported rope type '{other}' (known: default, linear, dynamic, llama3, \
                     yarn, longrope)"
                )))
            }
        })
    }
}

/// What a rotary embedding rotates and how.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    /// The base (`rope_theta`).
    pub theta: f64,
    /// The number of rotated dims of each head (`head_dim · partial_rotary_factor`); the rest
    /// of the head passes through unchanged. Even.
    pub head_dim: usize,
    /// Rotate pairs (2i, 2i+1) (GPT-J/GGUF) instead of the two halves (HF rotate_half).
    pub interleaved: bool,
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// Plain RoPE over `head_dim` dims, rotate-half layout.
    pub fn new(theta: f64, head_dim: usize) -> RopeConfig {
        RopeConfig {
            theta,
            head_dim,
            interleaved: false,
            scaling: RopeScaling::None,
        }
    }

    /// The rotated dims for a head of `head_dim` and a `partial_rotary_factor` (HF rounds down).
    pub fn partial_dim(head_dim: usize, partial_rotary_factor: f64) -> usize {
        (head_dim as f64 * partial_rotary_factor) as usize
    }

    pub fn with_scaling(mut self, scaling: RopeScaling) -> RopeConfig {
        self.scaling = scaling;
        self
    }

    pub fn with_interleaved(mut self, interleaved: bool) -> RopeConfig {
        self.interleaved = interleaved;
        self
    }

    fn validate(&self) -> Result<()> {
        let err = |msg: String| Err(Error::invalid("rope", msg));
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return err(format!(
                "rotary dim must be even and positive, got {}",
                self.head_dim
            ));
        }
        if self.theta.is_nan() || self.theta <= 0.0 {
            return err(format!("theta must be positive, got {}", self.theta));
        }
        let positive = |name: &str, x: f64| -> Result<()> {
            if x > 0.0 && x.is_finite() {
                Ok(())
            } else {
                Err(Error::invalid(
                    "rope",
                    format!("{name} must be positive, got {x}"),
                ))
            }
        };
        match &self.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => positive("factor", *factor)?,
            RopeScaling::DynamicNtk {
                factor,
                original_max,
            } => {
                positive("factor", *factor)?;
                positive("original_max", *original_max as f64)?;
                if self.head_dim <= 2 {
                    return err("dynamic NTK needs a rotary dim above 2".into());
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("factor", *factor)?;
                positive("low_freq_factor", *low_freq_factor)?;
                positive(
                    "original_max_position_embeddings",
                    *original_max_position_embeddings as f64,
                )?;
                if high_freq_factor <= low_freq_factor {
                    return err(format!(
                        "high_freq_factor {high_freq_factor} must exceed low_freq_factor \
                         {low_freq_factor}"
                    ));
                }
            }
            RopeScaling::Yarn {
                factor,
                original_max,
                ..
            } => {
                positive("factor", *factor)?;
                positive("original_max", *original_max as f64)?;
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max,
                ..
            } => {
                positive("original_max", *original_max as f64)?;
                let half = self.head_dim / 2;
                if short_factor.len() != half || long_factor.len() != half {
                    return err(format!(
                        "longrope factors must have rotary_dim/2 = {half} entries, got {} \
                         (short) and {} (long)",
                        short_factor.len(),
                        long_factor.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the frequencies depend on the current sequence length.
    pub fn is_dynamic(&self) -> bool {
        matches!(
            self.scaling,
            RopeScaling::DynamicNtk { .. } | RopeScaling::LongRope { .. }
        )
    }

    /// The sequence length beyond which dynamic variants change their frequencies.
    fn dynamic_threshold(&self) -> Option<usize> {
        match self.scaling {
            RopeScaling::DynamicNtk { original_max, .. }
            | RopeScaling::LongRope { original_max, .. } => Some(original_max),
            _ => None,
        }
    }

    /// `(inv_freq [head_dim/2], attention_factor)` as transformers' `ROPE_INIT_FUNCTIONS`
    /// compute them for a current sequence length `seq_len` (only dynamic NTK and LongRoPE
    /// use it; `None` is the value at model creation). cos and sin are multiplied by the
    /// attention factor.
    pub fn inv_freq(&self, seq_len: Option<usize>) -> Result<(Vec<f64>, f64)> {
        self.validate()?;
        let dim = self.head_dim;
        let exps = || (0..dim).step_by(2).map(move |i| i as f64 / dim as f64);
        let plain = |base: f64| -> Vec<f64> { exps().map(|e| 1.0 / base.powf(e)).collect() };
        let base = self.theta;
        Ok(match &self.scaling {
            RopeScaling::None => (plain(base), 1.0),
            RopeScaling::Linear { factor } => {
                (plain(base).into_iter().map(|f| f / factor).collect(), 1.0)
            }
            RopeScaling::DynamicNtk {
                factor,
                original_max,
            } => {
                let seq = seq_len.unwrap_or(*original_max).max(*original_max) as f64;
                let orig = *original_max as f64;
                let d = dim as f64;
                let base = base * (factor * seq / orig - (factor - 1.0)).powf(d / (d - 2.0));
                (plain(base), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let f = plain(base)
                    .into_iter()
                    .map(|inv| {
                        let wavelen = 2.0 * PI / inv;
                        if wavelen < high_wavelen {
                            inv
                        } else if wavelen > low_wavelen {
                            inv / factor
                        } else {
                            let s = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - s) * inv / factor + s * inv
                        }
                    })
                    .collect();
                (f, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let af = match (attention_factor, mscale, mscale_all_dim) {
                    (Some(a), _, _) => *a,
                    // transformers tests truthiness: a zero mscale counts as absent.
                    (None, Some(m), Some(ma)) if *m != 0.0 && *ma != 0.0 => {
                        get_mscale(*factor, *m) / get_mscale(*factor, *ma)
                    }
                    _ => get_mscale(*factor, 1.0),
                };
                let d = dim as f64;
                let correction_dim = |rot: f64| {
                    d * (*original_max as f64 / (rot * 2.0 * PI)).ln() / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let mut high = high.min(d - 1.0);
                if low == high {
                    high += 0.001;
                }
                let f = exps()
                    .enumerate()
                    .map(|(i, e)| {
                        let pos_freq = base.powf(e);
                        let extrapolation = 1.0 / pos_freq;
                        let interpolation = 1.0 / (factor * pos_freq);
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extra_factor = 1.0 - ramp;
                        interpolation * (1.0 - extra_factor) + extrapolation * extra_factor
                    })
                    .collect();
                (f, af)
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                factor,
                original_max,
                attention_factor,
            } => {
                let af = attention_factor.unwrap_or_else(|| {
                    if *factor <= 1.0 {
                        1.0
                    } else {
                        (1.0 + factor.ln() / (*original_max as f64).ln()).sqrt()
                    }
                });
                let ext = if seq_len.is_some_and(|s| s > *original_max) {
                    long_factor
                } else {
                    short_factor
                };
                let f = exps()
                    .zip(ext)
                    .map(|(e, x)| 1.0 / (x * base.powf(e)))
                    .collect();
                (f, af)
            }
        })
    }

    /// cos and sin tables `[len, head_dim/2]` (row-major) of positions `start..start+len`.
    fn tables(&self, start: usize, len: usize, seq_len: Option<usize>) -> Result<TableData> {
        let (inv, af) = self.inv_freq(seq_len)?;
        let half = inv.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in start..start + len {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos() * af);
                sin.push(a.sin() * af);
            }
        }
        Ok(TableData { cos, sin, half })
    }
}

struct TableData {
    cos: Vec<f64>,
    sin: Vec<f64>,
    half: usize,
}

/// Precomputed cos/sin tables `[max_positions, head_dim/2]` for one [`RopeConfig`]. Cloning
/// is cheap (the tables are shared), so one cache serves every layer of a model.
#[derive(Clone, Debug)]
pub struct RopeCache {
    cfg: RopeConfig,
    cos: Tensor,
    sin: Tensor,
}

impl RopeCache {
    /// Tables for positions `0..max_positions`, stored as `dtype` (converted on use if a
    /// query has another float dtype).
    pub fn new(
        cfg: &RopeConfig,
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<RopeCache> {
        if max_positions == 0 {
            return Err(Error::invalid(
                "RopeCache",
                "max_positions must be positive",
            ));
        }
        if !dtype.is_float() {
            return Err(Error::UnsupportedDType {
                op: "RopeCache",
                dtype,
                expected: "a float dtype",
            });
        }
        let t = cfg.tables(0, max_positions, None)?;
        let shape = (max_positions, t.half);
        Ok(RopeCache {
            cfg: cfg.clone(),
            cos: Tensor::from_f64s(&t.cos, shape, dtype, device)?,
            sin: Tensor::from_f64s(&t.sin, shape, dtype, device)?,
        })
    }

    pub fn config(&self) -> &RopeConfig {
        &self.cfg
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// The rotated dims per head.
    pub fn rotary_dim(&self) -> usize {
        self.cfg.head_dim
    }

    /// cos and sin `[len, rotary_dim/2]` for positions `offset..offset+len`, as `dtype`. For
    /// the dynamic variants (dynamic NTK, LongRoPE) a sequence reaching past the original
    /// context gets tables recomputed for its length `offset + len`, as transformers does
    /// at each forward.
    pub fn cos_sin(&self, offset: usize, len: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        let end = offset.saturating_add(len);
        if end > self.max_positions() {
            return Err(Error::invalid(
                "rope",
                format!(
                    "positions {offset}..{end} exceed the RoPE cache of {} positions; build \
                     the cache with a larger max_positions",
                    self.max_positions()
                ),
            ));
        }
        let (cos, sin) = match self.cfg.dynamic_threshold() {
            Some(orig) if end > orig => {
                let t = self.cfg.tables(offset, len, Some(end))?;
                let dev = self.cos.device();
                (
                    Tensor::from_f64s(&t.cos, (len, t.half), dtype, dev)?,
                    Tensor::from_f64s(&t.sin, (len, t.half), dtype, dev)?,
                )
            }
            _ => (
                self.cos.narrow(0, offset, len)?,
                self.sin.narrow(0, offset, len)?,
            ),
        };
        if cos.dtype() == dtype {
            Ok((cos, sin))
        } else {
            Ok((cos.to_dtype(dtype)?, sin.to_dtype(dtype)?))
        }
    }

    /// Rotate `x: [B, H, L, D]` whose tokens sit at positions `offset..offset+L`. When the
    /// rotary dim is smaller than `D`, only the first `rotary_dim` dims of each head rotate
    /// (partial rotary, as HF's `q[..., :rotary_dim]`).
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let rot = self.rotary_dim();
        if x.rank() != 4 || x.dims()[3] < rot {
            return Err(Error::UnexpectedShape {
                op: "rope",
                expected: format!("[B, H, L, D] with D >= the rotary dim {rot}"),
                got: x.shape().clone(),
            });
        }
        let (l, d) = (x.dims()[2], x.dims()[3]);
        let (cos, sin) = self.cos_sin(offset, l, x.dtype())?;
        if d == rot {
            return x.rope(&cos, &sin, self.cfg.interleaved);
        }
        let rotated = x
            .narrow(3, 0, rot)?
            .rope(&cos, &sin, self.cfg.interleaved)?;
        Tensor::cat(&[&rotated, &x.narrow(3, rot, d - rot)?], 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_frequencies_and_tables() -> Result<()> {
        let cfg = RopeConfig::new(10000.0, 8);
        let (inv, af) = cfg.inv_freq(None)?;
        assert_eq!(af, 1.0);
        let want = [1.0, 0.1, 0.01, 0.001];
        for (a, b) in inv.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{a} vs {b}");
        }
        let dev = tensor_cpu::device();
        let c = RopeCache::new(&cfg, 16, DType::F64, &dev)?;
        let (cos, sin) = c.cos_sin(3, 2, DType::F64)?;
        assert_eq!(cos.dims(), &[2, 4]);
        let cv = cos.to_vec::<f64>()?;
        let sv = sin.to_vec::<f64>()?;
        assert!((cv[0] - 3f64.cos()).abs() < 1e-15);
        assert!((sv[5] - (4.0 * 0.1f64).sin()).abs() < 1e-15);
        assert!(c.cos_sin(15, 2, DType::F64).is_err());
        Ok(())
    }

    #[test]
    fn bad_configs_are_errors() {
        assert!(RopeConfig::new(10000.0, 7).inv_freq(None).is_err());
        assert!(RopeConfig::new(-1.0, 8).inv_freq(None).is_err());
        let lr = RopeConfig::new(10000.0, 8).with_scaling(RopeScaling::LongRope {
            short_factor: vec![1.0; 3],
            long_factor: vec![1.0; 4],
            factor: 2.0,
            original_max: 16,
            attention_factor: None,
        });
        assert!(lr.inv_freq(None).is_err());
        let v = serde_json::json!({"rope_type": "nope"});
        assert!(RopeScaling::from_hf(&v, 10).is_err());
        let v = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
        assert!(RopeScaling::from_hf(&v, 10).is_err());
    }

    #[test]
    fn parses_hf_configs() -> Result<()> {
        let v = serde_json::json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        assert_eq!(
            RopeScaling::from_hf(&v, 131072)?,
            RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            }
        );
        let v = serde_json::json!({"type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 32768});
        assert_eq!(
            RopeScaling::from_hf(&v, 131072)?,
            RopeScaling::yarn(4.0, 32768)
        );
        assert_eq!(
            RopeScaling::from_hf(&serde_json::Value::Null, 10)?,
            RopeScaling::None
        );
        Ok(())
    }

    #[test]
    fn partial_rotary_leaves_the_tail() -> Result<()> {
        let dev = tensor_cpu::device();
        let c = RopeCache::new(&RopeConfig::new(10000.0, 4), 8, DType::F64, &dev)?;
        let x = Tensor::randn(0.0, 1.0, (1, 2, 3, 6), DType::F64, &dev)?;
        let y = c.apply(&x, 2)?;
        assert_eq!(y.dims(), x.dims());
        let tail = y.narrow(3, 4, 2)?.to_vec::<f64>()?;
        assert_eq!(tail, x.narrow(3, 4, 2)?.to_vec::<f64>()?);
        assert!(c
            .apply(&Tensor::zeros((1, 1, 2, 2), DType::F64, &dev)?, 0)
            .is_err());
        Ok(())
    }
}
