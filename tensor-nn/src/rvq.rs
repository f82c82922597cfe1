//! Vector quantization for neural codecs (SoundStream / Encodec): a [`VectorQuantizer`]
//! snaps each vector to its nearest codebook entry, and a [`ResidualVectorQuantizer`] chains
//! several, each quantizing what the previous ones left over, so the bitrate is chosen at
//! call time by how many quantizers are used.
//!
//! Codebooks are `[codebook_size, dim]`. By default they are buffers updated by exponential
//! moving averages of the vectors assigned to each code (Laplace-smoothed counts), as in
//! Encodec, with codes whose usage falls below a threshold re-seeded from the current batch;
//! alternatively they are learned parameters trained by a codebook loss (VQ-VAE). The
//! quantized output passes gradients straight through to the input, and a commitment loss
//! pulls the input towards its code. Parameter names follow Encodec:
//! `layers.{i}._codebook.{embed, embed_avg, cluster_size, inited}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tensor_core::{no_grad, AllDims, DType, Error, Result, Tensor};

use crate::init::{FanMode, Init, Nonlinearity};
use crate::var_builder::VarBuilder;

/// How a codebook is trained.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CodebookUpdate {
    /// Encodec: in training, `cluster_size` and `embed_avg` follow EMAs with `decay` of the
    /// per-code counts and sums, and `embed = embed_avg / laplace(cluster_size, epsilon)`.
    /// No gradient reaches the codebook.
    Ema { decay: f64, epsilon: f64 },
    /// VQ-VAE: the codebook is a trainable parameter; [`VqOutput::codebook_loss`] is
    /// `mse(q, x.detach())`.
    Learned,
}

/// Options of one [`VectorQuantizer`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VqConfig {
    pub dim: usize,
    pub codebook_size: usize,
    pub update: CodebookUpdate,
    /// Codes whose EMA usage (`cluster_size`) falls below this in training are replaced by
    /// random vectors of the batch (Encodec's `threshold_ema_dead_code`); 0 disables.
    pub threshold_ema_dead_code: f64,
    /// Scale of the commitment loss `mse(x, q.detach())`.
    pub commitment_weight: f64,
    /// Initialise the codebook by k-means on the first training batch (Encodec's
    /// `kmeans_init`; the buffer `inited` records that it happened).
    pub kmeans_init: bool,
    pub kmeans_iters: usize,
    /// The codebook's sub-module name: `_codebook` (Encodec) or `codebook` (Hugging Face
    /// `EncodecModel`).
    pub codebook_name: &'static str,
}

impl VqConfig {
    /// Encodec's defaults: EMA with decay 0.99, epsilon 1e-5, dead-code threshold 2, k-means
    /// initialisation (50 iterations) on the first training batch.
    pub fn new(dim: usize, codebook_size: usize) -> VqConfig {
        VqConfig {
            dim,
            codebook_size,
            update: CodebookUpdate::Ema {
                decay: 0.99,
                epsilon: 1e-5,
            },
            threshold_ema_dead_code: 2.0,
            commitment_weight: 1.0,
            kmeans_init: true,
            kmeans_iters: 50,
            codebook_name: "_codebook",
        }
    }

    fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.codebook_size == 0 {
            return Err(Error::invalid(
                "VectorQuantizer",
                format!(
                    "dim ({}) and codebook_size ({}) must be positive",
                    self.dim, self.codebook_size
                ),
            ));
        }
        if let CodebookUpdate::Ema { decay, epsilon } = self.update {
            if !(0.0..1.0).contains(&decay) || epsilon.is_nan() || epsilon <= 0.0 {
                return Err(Error::invalid(
                    "VectorQuantizer",
                    format!("EMA decay {decay} must be in [0, 1) and epsilon {epsilon} positive"),
                ));
            }
        }
        if self.threshold_ema_dead_code.is_nan() || self.threshold_ema_dead_code < 0.0 {
            return Err(Error::invalid(
                "VectorQuantizer",
                format!(
                    "threshold_ema_dead_code {} must be >= 0",
                    self.threshold_ema_dead_code
                ),
            ));
        }
        Ok(())
    }
}

/// What a quantizer's forward returns.
#[derive(Clone, Debug)]
pub struct VqOutput {
    /// The quantized vectors (values of the codes), with an identity gradient to the input
    /// (straight-through estimator).
    pub quantized: Tensor,
    /// Code indices (i64): `[...]` for a [`VectorQuantizer`], `[B, n_q, T]` for a
    /// [`ResidualVectorQuantizer`].
    pub codes: Tensor,
    /// `commitment_weight · mse(x, q.detach())` (the mean over quantizers for a residual one).
    pub commitment_loss: Tensor,
    /// `mse(q, x.detach())` for learned codebooks (summed over quantizers), else `None`.
    pub codebook_loss: Option<Tensor>,
}

/// The quantized value `q` with the gradient of `x`: `q.detach() + (x − x.detach())`. Unlike
/// `x + (q − x).detach()` it is bit-identical to `q`, so decoding the codes reproduces it.
fn straight_through(x: &Tensor, q: &Tensor) -> Result<Tensor> {
    if !x.tracked() {
        return Ok(q.detach());
    }
    q.detach().add(&x.sub(&x.detach())?)
}

fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.sub(b)?.sqr()?.mean_all()
}

/// One codebook quantizer (Encodec's `VectorQuantization` over a `EuclideanCodebook`) on
/// channels-last vectors `[..., dim]`. Names: `_codebook.embed` (`[K, dim]`),
/// `_codebook.cluster_size` (`[K]`), with EMA updates `_codebook.embed_avg` (`[K, dim]`) and
/// with k-means initialisation `_codebook.inited` (`[1]`).
#[derive(Clone, Debug)]
pub struct VectorQuantizer {
    pub embed: Tensor,
    pub cluster_size: Tensor,
    pub embed_avg: Option<Tensor>,
    pub inited: Option<Tensor>,
    /// Set once `inited` has been seen non-zero (or there is none), so that training reads the
    /// buffer back only until the codebook is initialised. The buffer itself is read (not
    /// cached at build time) so that a checkpoint loaded after building is respected.
    init_done: Arc<AtomicBool>,
    cfg: VqConfig,
}

impl VectorQuantizer {
    pub fn build(vb: &VarBuilder, cfg: VqConfig) -> Result<VectorQuantizer> {
        cfg.validate()?;
        let vb = vb.pp(cfg.codebook_name);
        let (k, d) = (cfg.codebook_size, cfg.dim);
        // Encodec's `uniform_init`: kaiming_uniform_ with its default a = 0.
        let init = Init::KaimingUniform {
            mode: FanMode::FanIn,
            nonlinearity: Nonlinearity::LeakyRelu(0.0),
        };
        let dt = vb.dtype();
        // Usage starts at 1 with `embed_avg = embed`, so `embed = embed_avg / cluster_size`
        // holds from the start (Encodec starts at 0 and relies on its k-means init).
        let cluster_size = vb.get_buffer(k, "cluster_size", Init::ONES, dt)?;
        let (embed, embed_avg) = match cfg.update {
            CodebookUpdate::Ema { .. } => {
                let fresh = !vb.contains("embed_avg");
                let embed = vb.get_buffer((k, d), "embed", init, dt)?;
                let avg = vb.get_buffer((k, d), "embed_avg", Init::ZEROS, dt)?;
                if fresh {
                    let _g = no_grad();
                    avg.copy_from(&embed)?;
                }
                (embed, Some(avg))
            }
            CodebookUpdate::Learned => (vb.get_with_init((k, d), "embed", init)?, None),
        };
        let inited = if cfg.kmeans_init {
            Some(vb.get_buffer(1, "inited", Init::ZEROS, dt)?)
        } else {
            None
        };
        Ok(VectorQuantizer {
            init_done: Arc::new(AtomicBool::new(inited.is_none())),
            embed,
            cluster_size,
            embed_avg,
            inited,
            cfg,
        })
    }

    pub fn config(&self) -> &VqConfig {
        &self.cfg
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let d = x.dims();
        if d.is_empty() || d[d.len() - 1] != self.cfg.dim {
            return Err(Error::invalid(
                "VectorQuantizer",
                format!("input {d:?} must end in the codebook dim {}", self.cfg.dim),
            ));
        }
        Ok(())
    }

    /// Nearest codes (i64) of the rows of `x: [N, dim]`.
    fn nearest(&self, x: &Tensor) -> Result<Tensor> {
        nearest(x, &self.embed)
    }

    /// Code indices (i64) of `x: [..., dim]`, shape `[...]`.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let d = x.dims();
        let lead = d[..d.len() - 1].to_vec();
        let n: usize = lead.iter().product();
        self.nearest(&x.reshape((n, self.cfg.dim))?)?.reshape(lead)
    }

    /// The codebook vectors of `codes` (any integer dtype and shape) → `[..., dim]`.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        check_codes(codes, self.cfg.codebook_size)?;
        self.embed.embedding(codes)
    }

    /// Quantize `x: [..., dim]`. In training, the codebook statistics are updated (EMA) and
    /// dead codes re-seeded after the codes of this batch are chosen.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<VqOutput> {
        self.check_input(x)?;
        let d = x.dims();
        let lead = d[..d.len() - 1].to_vec();
        let n: usize = lead.iter().product();
        let flat = x.reshape((n, self.cfg.dim))?;
        let (q, codes) = self.quantize_rows(&flat, train)?;
        let commitment_loss = mse(&flat, &q.detach())?.mul_scalar(self.cfg.commitment_weight)?;
        let codebook_loss = match self.cfg.update {
            CodebookUpdate::Learned => Some(mse(&q, &flat.detach())?),
            CodebookUpdate::Ema { .. } => None,
        };
        Ok(VqOutput {
            quantized: straight_through(&flat, &q)?.reshape(d)?,
            codes: codes.reshape(lead)?,
            commitment_loss,
            codebook_loss,
        })
    }

    /// Codes and code vectors of `x: [N, dim]` (the vectors carry the codebook's gradient
    /// when it is learned), then the training update.
    fn quantize_rows(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        if train && x.dims()[0] > 0 && !self.init_done.load(Ordering::Relaxed) {
            let loaded = match &self.inited {
                Some(t) => t.to_f64_vec()?[0] != 0.0,
                None => true,
            };
            if loaded {
                self.init_done.store(true, Ordering::Relaxed);
            } else {
                self.kmeans_init(&x.detach())?;
            }
        }
        let codes = self.nearest(x)?;
        let q = self.embed.index_select(&codes, 0)?;
        if train && x.dims()[0] > 0 {
            self.update(&x.detach(), &codes)?;
        }
        Ok((q, codes))
    }

    /// Encodec's `init_embed_`: k-means on the batch `x: [N, dim]` sets the codebook and its
    /// statistics (`cluster_size` = the cluster sizes, `embed_avg = embed · cluster_size`).
    fn kmeans_init(&self, x: &Tensor) -> Result<()> {
        let _g = no_grad();
        let (k, n, d) = (self.cfg.codebook_size, x.dims()[0], self.cfg.dim);
        let (dt, dev) = (self.cluster_size.dtype(), x.device());
        let x = x.to_dtype(dt)?;
        // Distinct random starting points (a random permutation, drawn on the host once).
        let r = Tensor::rand(0.0, 1.0, n, DType::F32, dev)?.to_vec::<f32>()?;
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by(|&a, &b| r[a as usize].total_cmp(&r[b as usize]));
        let pick: Vec<u32> = (0..k).map(|i| order[i % n]).collect();
        let mut means = x.index_select(&Tensor::from_vec(pick, k, dev)?, 0)?;
        let ones = Tensor::ones(n, dt, dev)?;
        let bins_of = |codes: &Tensor| Tensor::zeros(k, dt, dev)?.index_add(codes, &ones, 0);
        for _ in 0..self.cfg.kmeans_iters {
            let codes = nearest(&x, &means)?;
            let bins = bins_of(&codes)?;
            let sums = Tensor::zeros((k, d), dt, dev)?.index_add(&codes, &x, 0)?;
            let new = sums.div(&bins.clamp(1.0, f64::MAX)?.unsqueeze(1)?)?;
            // An empty cluster keeps its mean.
            means = bins
                .eq_scalar(0.0)?
                .unsqueeze(1)?
                .where_cond(&means, &new)?;
        }
        let bins = bins_of(&nearest(&x, &means)?)?;
        self.embed.copy_from(&means.to_dtype(self.embed.dtype())?)?;
        self.cluster_size.copy_from(&bins)?;
        if let Some(avg) = &self.embed_avg {
            avg.copy_from(&means.mul(&bins.unsqueeze(1)?)?)?;
        }
        if let Some(flag) = &self.inited {
            flag.copy_from(&flag.ones_like()?)?;
        }
        self.init_done.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// EMA update of the statistics (and codebook), then dead-code replacement.
    fn update(&self, x: &Tensor, codes: &Tensor) -> Result<()> {
        let _g = no_grad();
        let (k, n) = (self.cfg.codebook_size, x.dims()[0]);
        let (dt, dev) = (self.cluster_size.dtype(), x.device());
        let x = x.to_dtype(dt)?;
        let counts = Tensor::zeros(k, dt, dev)?.index_add(codes, &Tensor::ones(n, dt, dev)?, 0)?;
        let (decay, epsilon) = match self.cfg.update {
            CodebookUpdate::Ema { decay, epsilon } => (decay, epsilon),
            // A learned codebook keeps usage statistics only, for dead-code detection.
            CodebookUpdate::Learned => (0.99, 0.0),
        };
        let ema = |old: &Tensor, new: &Tensor| -> Result<Tensor> {
            old.mul_scalar(decay)?.add(&new.mul_scalar(1.0 - decay)?)
        };
        let cs = ema(&self.cluster_size, &counts)?;
        self.cluster_size.copy_from(&cs)?;
        if let Some(avg) = &self.embed_avg {
            let sums = Tensor::zeros((k, self.cfg.dim), dt, dev)?.index_add(codes, &x, 0)?;
            let avg_new = ema(avg, &sums)?;
            avg.copy_from(&avg_new)?;
            // Laplace smoothing keeps unused codes from dividing by zero.
            let total = cs.sum_all()?;
            let smoothed = cs
                .add_scalar(epsilon)?
                .div(&total.add_scalar(k as f64 * epsilon)?)?
                .mul(&total)?;
            self.embed.copy_from(
                &avg_new
                    .div(&smoothed.unsqueeze(1)?)?
                    .to_dtype(self.embed.dtype())?,
            )?;
        }
        if self.cfg.threshold_ema_dead_code > 0.0 {
            self.replace_dead_codes(&x)?;
        }
        Ok(())
    }

    /// Codes used less than the threshold get random vectors of the batch; their statistics
    /// restart at the threshold, so a re-seeded code that stays unused is re-seeded again.
    /// Done with masks (no host sync).
    fn replace_dead_codes(&self, x: &Tensor) -> Result<()> {
        let (k, n) = (self.cfg.codebook_size, x.dims()[0]);
        let thr = self.cfg.threshold_ema_dead_code;
        let dead = self.cluster_size.lt_scalar(thr)?;
        let dead_rows = dead.unsqueeze(1)?;
        let pick = Tensor::rand(0.0, 1.0, k, DType::F32, x.device())?
            .affine(n as f64, 0.0)?
            .floor()?
            .clamp(0.0, (n - 1) as f64)?
            .to_dtype(DType::U32)?;
        let samples = x.index_select(&pick, 0)?;
        let embed = dead_rows.where_cond(&samples.to_dtype(self.embed.dtype())?, &self.embed)?;
        self.embed.copy_from(&embed)?;
        let cs = dead.where_cond(&self.cluster_size.full_like(thr)?, &self.cluster_size)?;
        self.cluster_size.copy_from(&cs)?;
        if let Some(avg) = &self.embed_avg {
            let a = dead_rows.where_cond(&samples.mul_scalar(thr)?, avg)?;
            avg.copy_from(&a)?;
        }
        Ok(())
    }
}

/// Nearest rows of `embed: [K, dim]` (i64 indices) to the rows of `x: [N, dim]`, by
/// `|e|² − 2·x·eᵀ` (one matmul; `|x|²` is the same for every code).
fn nearest(x: &Tensor, embed: &Tensor) -> Result<Tensor> {
    let _g = no_grad();
    let e = embed.detach().to_dtype(x.dtype())?;
    let e2 = e.sqr()?.sum(1)?;
    let xe = x.detach().matmul(&e.t()?)?;
    e2.sub(&xe.mul_scalar(2.0)?)?.argmin(1)
}

/// Codes must be integers in `[0, codebook_size)`.
fn check_codes(codes: &Tensor, codebook_size: usize) -> Result<()> {
    if codes.dtype().is_float() {
        return Err(Error::invalid(
            "VectorQuantizer::decode",
            format!("codes must be integers, got {}", codes.dtype()),
        ));
    }
    if codes.elem_count() == 0 {
        return Ok(());
    }
    let c = codes.to_dtype(DType::I64)?;
    let (lo, hi) = (c.min(AllDims)?.to_f64()?, c.max(AllDims)?.to_f64()?);
    if lo < 0.0 || hi >= codebook_size as f64 {
        return Err(Error::invalid(
            "VectorQuantizer::decode",
            format!("codes range over [{lo}, {hi}] but the codebook has {codebook_size} entries"),
        ));
    }
    Ok(())
}

/// Options of a [`ResidualVectorQuantizer`]: `num_quantizers` layers of `vq`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RvqConfig {
    pub num_quantizers: usize,
    pub vq: VqConfig,
}

/// Residual vector quantization (SoundStream / Encodec) of `[B, dim, T]` (channels first, the
/// layout of a convolutional encoder). Layer i quantizes the residual left by layers 0..i;
/// the output is the sum of their codes' vectors. Names: `layers.{i}._codebook.*`.
#[derive(Clone, Debug)]
pub struct ResidualVectorQuantizer {
    pub layers: Vec<VectorQuantizer>,
}

impl ResidualVectorQuantizer {
    pub fn build(vb: &VarBuilder, cfg: RvqConfig) -> Result<ResidualVectorQuantizer> {
        if cfg.num_quantizers == 0 {
            return Err(Error::invalid(
                "ResidualVectorQuantizer",
                "num_quantizers must be positive",
            ));
        }
        let layers = (0..cfg.num_quantizers)
            .map(|i| VectorQuantizer::build(&vb.pp("layers").pp(i), cfg.vq))
            .collect::<Result<Vec<_>>>()?;
        Ok(ResidualVectorQuantizer { layers })
    }

    pub fn num_quantizers(&self) -> usize {
        self.layers.len()
    }

    fn dim(&self) -> usize {
        self.layers[0].cfg.dim
    }

    /// Quantizers needed for `bandwidth_kbps` at `frame_rate` frames per second (each one
    /// spends log2(codebook_size) bits per frame), at least 1 and at most all (Encodec's
    /// `get_num_quantizers_for_bandwidth`).
    pub fn num_quantizers_for_bandwidth(&self, bandwidth_kbps: f64, frame_rate: f64) -> usize {
        let bits = (self.layers[0].cfg.codebook_size as f64).log2() * frame_rate;
        let n = if bits > 0.0 {
            (bandwidth_kbps * 1000.0 / bits).floor()
        } else {
            self.layers.len() as f64
        };
        (n.max(1.0) as usize).min(self.layers.len())
    }

    fn check_n_q(&self, n_q: Option<usize>) -> Result<usize> {
        let n = n_q.unwrap_or(self.layers.len());
        if n == 0 || n > self.layers.len() {
            return Err(Error::invalid(
                "ResidualVectorQuantizer",
                format!(
                    "cannot use {n} quantizers: between 1 and {} are available",
                    self.layers.len()
                ),
            ));
        }
        Ok(n)
    }

    /// `x: [B, dim, T]` → rows `[B·T, dim]`.
    fn rows(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dims();
        if d.len() != 3 || d[1] != self.dim() {
            return Err(Error::invalid(
                "ResidualVectorQuantizer",
                format!("input {d:?} must be [B, {}, T]", self.dim()),
            ));
        }
        x.transpose(1, 2)?.reshape((d[0] * d[2], d[1]))
    }

    /// Rows `[B·T, dim]` → `[B, dim, T]`.
    fn unrows(&self, r: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        r.reshape((b, t, self.dim()))?.transpose(1, 2)?.contiguous()
    }

    /// Per-layer codes `[B·T]` → `[B, n_q, T]`.
    fn stack_codes(codes: &[Tensor], b: usize, t: usize) -> Result<Tensor> {
        let c = Tensor::stack(&codes.iter().collect::<Vec<_>>(), 0)?; // [n_q, B·T]
        c.reshape((codes.len(), b, t))?
            .transpose(0, 1)?
            .contiguous()
    }

    /// Codes `[B, n_q, T]` (i64) of `x: [B, dim, T]` with the first `n_q` quantizers (all when
    /// `None`).
    pub fn encode(&self, x: &Tensor, n_q: Option<usize>) -> Result<Tensor> {
        let n_q = self.check_n_q(n_q)?;
        let mut residual = self.rows(x)?.detach();
        let (b, t) = (x.dims()[0], x.dims()[2]);
        let mut codes = Vec::with_capacity(n_q);
        for layer in &self.layers[..n_q] {
            let c = layer.nearest(&residual)?;
            residual = residual.sub(&layer.embed.detach().index_select(&c, 0)?)?;
            codes.push(c);
        }
        Self::stack_codes(&codes, b, t)
    }

    /// The sum of the codes' vectors: `[B, n_q, T]` → `[B, dim, T]`; `n_q` may be fewer than
    /// the quantizers (a lower bitrate).
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let d = codes.dims();
        if d.len() != 3 || d[1] == 0 || d[1] > self.layers.len() {
            return Err(Error::invalid(
                "ResidualVectorQuantizer::decode",
                format!(
                    "codes {d:?} must be [B, n_q, T] with 1 <= n_q <= {}",
                    self.layers.len()
                ),
            ));
        }
        let (b, n_q, t) = (d[0], d[1], d[2]);
        let mut out: Option<Tensor> = None;
        for (i, layer) in self.layers[..n_q].iter().enumerate() {
            let q = layer.decode(&codes.narrow(1, i, 1)?.reshape(b * t)?)?;
            out = Some(match out {
                Some(o) => o.add(&q)?,
                None => q,
            });
        }
        self.unrows(&out.expect("n_q >= 1"), b, t)
    }

    /// Quantize `x: [B, dim, T]` with every quantizer.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<VqOutput> {
        self.forward_with(x, None, train)
    }

    /// Quantize with the first `n_q` quantizers (all when `None`). The commitment loss of
    /// every layer pulls `x` (through the residuals) towards the codes; in training every
    /// used layer updates its codebook on its own residuals.
    pub fn forward_with(&self, x: &Tensor, n_q: Option<usize>, train: bool) -> Result<VqOutput> {
        let n_q = self.check_n_q(n_q)?;
        let rows = self.rows(x)?;
        let (b, t) = (x.dims()[0], x.dims()[2]);
        let mut residual = rows.clone();
        let mut total: Option<Tensor> = None;
        let mut codes = Vec::with_capacity(n_q);
        let mut commit: Option<Tensor> = None;
        let mut cb_loss: Option<Tensor> = None;
        let add = |acc: Option<Tensor>, v: Tensor| -> Result<Tensor> {
            match acc {
                Some(a) => a.add(&v),
                None => Ok(v),
            }
        };
        for layer in &self.layers[..n_q] {
            let (q, c) = layer.quantize_rows(&residual, train)?;
            let l = mse(&residual, &q.detach())?.mul_scalar(layer.cfg.commitment_weight)?;
            commit = Some(add(commit, l)?);
            if layer.cfg.update == CodebookUpdate::Learned {
                cb_loss = Some(add(cb_loss, mse(&q, &residual.detach())?)?);
            }
            residual = residual.sub(&q.detach())?;
            total = Some(add(total, q.detach())?);
            codes.push(c);
        }
        let q = total.expect("n_q >= 1");
        Ok(VqOutput {
            quantized: self.unrows(&straight_through(&rows, &q)?, b, t)?,
            codes: Self::stack_codes(&codes, b, t)?,
            commitment_loss: commit.expect("n_q >= 1").div_scalar(n_q as f64)?,
            codebook_loss: cb_loss,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::var_builder::VarMap;
    use tensor_core::{manual_seed, Device, Var};

    fn dev() -> Device {
        tensor_cpu::device()
    }

    fn rvq(map: &VarMap, n_q: usize, vq: VqConfig) -> Result<ResidualVectorQuantizer> {
        let vb = VarBuilder::from_varmap(map, DType::F32, &dev());
        ResidualVectorQuantizer::build(
            &vb,
            RvqConfig {
                num_quantizers: n_q,
                vq,
            },
        )
    }

    /// `[B, dim, T]` samples around `centers` fixed points (the same for every seed) plus
    /// small noise.
    fn clustered(b: usize, dim: usize, t: usize, centers: usize, seed: u64) -> Result<Tensor> {
        let c = Tensor::randn_seeded(0.0, 2.0, (centers, dim), DType::F32, &dev(), 42)?;
        let pick: Vec<u32> = (0..b * t)
            .map(|i| ((i as u64 * 2654435761 + seed) % centers as u64) as u32)
            .collect();
        let pick = Tensor::from_vec(pick, b * t, &dev())?;
        let noise = Tensor::randn_seeded(0.0, 0.05, (b * t, dim), DType::F32, &dev(), seed + 1)?;
        c.index_select(&pick, 0)?
            .add(&noise)?
            .reshape((b, t, dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    #[test]
    fn names_follow_encodec() -> Result<()> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev());
        ResidualVectorQuantizer::build(
            &vb.pp("quantizer").pp("vq"),
            RvqConfig {
                num_quantizers: 2,
                vq: VqConfig::new(4, 8),
            },
        )?;
        let names: Vec<String> = map.all_vars().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            [
                "quantizer.vq.layers.0._codebook.cluster_size",
                "quantizer.vq.layers.0._codebook.embed",
                "quantizer.vq.layers.0._codebook.embed_avg",
                "quantizer.vq.layers.0._codebook.inited",
                "quantizer.vq.layers.1._codebook.cluster_size",
                "quantizer.vq.layers.1._codebook.embed",
                "quantizer.vq.layers.1._codebook.embed_avg",
                "quantizer.vq.layers.1._codebook.inited",
            ]
        );
        // EMA codebooks are buffers: nothing for an optimizer.
        assert_eq!(map.num_trainable_parameters(), 0);
        let e = map
            .get_var("quantizer.vq.layers.0._codebook.embed")
            .unwrap();
        let a = map
            .get_var("quantizer.vq.layers.0._codebook.embed_avg")
            .unwrap();
        assert_eq!(e.to_vec::<f32>()?, a.to_vec::<f32>()?);
        // A learned codebook is a parameter.
        let map = VarMap::new();
        let mut cfg = VqConfig::new(4, 8);
        cfg.update = CodebookUpdate::Learned;
        rvq(&map, 1, cfg)?;
        assert_eq!(map.num_trainable_parameters(), 32);
        Ok(())
    }

    /// The map's current values in fresh storage (a state dict shares the buffers' memory).
    fn frozen_copy(map: &VarMap) -> Result<HashMap<String, Tensor>> {
        map.state_dict()
            .into_iter()
            .map(|(k, v)| Ok((k, v.copy()?)))
            .collect()
    }

    #[test]
    fn decode_reproduces_quantized() -> Result<()> {
        manual_seed(1);
        let map = VarMap::new();
        let q = rvq(&map, 3, VqConfig::new(4, 8))?;
        let x = clustered(2, 4, 5, 6, 3)?;
        q.forward_t(&x, true)?; // the k-means initialisation
        for train in [false, true] {
            // The codebooks this call quantizes with (training updates them afterwards).
            let snapshot = ResidualVectorQuantizer::build(
                &VarBuilder::from_tensors(frozen_copy(&map)?, DType::F32, &dev()),
                RvqConfig {
                    num_quantizers: 3,
                    vq: VqConfig::new(4, 8),
                },
            )?;
            let xv = Var::from_tensor(&x)?;
            let out = q.forward_t(xv.as_tensor(), train)?;
            assert_eq!(out.codes.dims(), &[2, 3, 5]);
            assert_eq!(out.codes.dtype(), DType::I64);
            assert_eq!(out.quantized.dims(), &[2, 4, 5]);
            assert_eq!(
                snapshot.encode(&x, None)?.to_vec::<i64>()?,
                out.codes.to_vec::<i64>()?
            );
            assert_eq!(
                snapshot.decode(&out.codes)?.to_vec::<f32>()?,
                out.quantized.to_vec::<f32>()?
            );
            // Fewer quantizers: the prefix of the codes, decoded at the lower bitrate.
            let out2 = snapshot.forward_with(&x, Some(2), false)?;
            assert_eq!(out2.codes.dims(), &[2, 2, 5]);
            assert_eq!(
                out2.codes.to_vec::<i64>()?,
                out.codes.narrow(1, 0, 2)?.to_vec::<i64>()?
            );
            assert_eq!(
                snapshot.decode(&out2.codes)?.to_vec::<f32>()?,
                out2.quantized.to_vec::<f32>()?
            );
        }
        // The single quantizer on channels-last input.
        let vq = &q.layers[0];
        let rows = x.transpose(1, 2)?.contiguous()?;
        let out = vq.forward_t(&rows, false)?;
        assert_eq!(out.codes.dims(), &[2, 5]);
        assert_eq!(
            vq.decode(&out.codes)?.to_vec::<f32>()?,
            out.quantized.to_vec::<f32>()?
        );
        Ok(())
    }

    /// Mean squared reconstruction error in eval mode.
    fn recon_error(q: &ResidualVectorQuantizer, x: &Tensor) -> Result<f64> {
        mse(&q.forward_t(x, false)?.quantized, x)?.to_f64()
    }

    #[test]
    fn ema_training_reduces_reconstruction_error() -> Result<()> {
        // With k-means initialisation, and without (dead-code re-seeding does the work).
        for kmeans in [true, false] {
            manual_seed(7);
            let map = VarMap::new();
            let mut cfg = VqConfig::new(4, 16);
            cfg.kmeans_init = kmeans;
            let q = rvq(&map, 2, cfg)?;
            let test = clustered(4, 4, 16, 12, 100)?;
            let before = recon_error(&q, &test)?;
            for step in 0..40 {
                let x = clustered(4, 4, 16, 12, 101 + 2 * (step % 5) as u64)?;
                q.forward_t(&x, true)?;
            }
            let after = recon_error(&q, &test)?;
            // The noise around the centres has variance 0.05² = 0.0025; k-means gets there at
            // once, re-seeding dead codes more slowly.
            let bound = if kmeans { 0.0025 } else { 0.05 * before };
            assert!(
                after < bound,
                "kmeans_init {kmeans}: reconstruction error {before} -> {after}"
            );
        }
        Ok(())
    }

    #[test]
    fn kmeans_init_runs_once_and_respects_loaded_checkpoints() -> Result<()> {
        manual_seed(2);
        let x = clustered(2, 4, 16, 4, 5)?;
        let map = VarMap::new();
        let q = rvq(&map, 1, VqConfig::new(4, 8))?;
        q.forward_t(&x, true)?;
        let inited = map.get_var("layers.0._codebook.inited").unwrap();
        assert_eq!(inited.to_vec::<f32>()?, [1.0]);
        // A trained state loaded into a freshly built quantizer is not re-initialised.
        let trained = frozen_copy(&map)?;
        let map2 = VarMap::new();
        let q2 = rvq(&map2, 1, VqConfig::new(4, 8))?;
        map2.load_state_dict(&trained, true)?;
        let y = clustered(2, 4, 16, 4, 6)?;
        let before = q2.layers[0].embed.to_vec2::<f32>()?;
        let out = q2.forward_t(&y, true)?;
        let want = q.forward_t(&y, false)?;
        assert_eq!(out.codes.to_vec::<i64>()?, want.codes.to_vec::<i64>()?);
        assert_ne!(
            q2.layers[0].embed.to_vec2::<f32>()?,
            before,
            "EMA step happened"
        );
        Ok(())
    }

    #[test]
    fn ema_step_matches_formula() -> Result<()> {
        let map = VarMap::new();
        let mut cfg = VqConfig::new(2, 3);
        cfg.update = CodebookUpdate::Ema {
            decay: 0.9,
            epsilon: 0.1,
        };
        cfg.threshold_ema_dead_code = 0.0;
        cfg.kmeans_init = false;
        let vb = VarBuilder::from_varmap(&map, DType::F64, &dev());
        let vq = VectorQuantizer::build(&vb, cfg)?;
        let embed = [0.0, 0.0, 1.0, 1.0, -1.0, 1.0];
        let mut sd = HashMap::new();
        let t = |v: &[f64], s: &[usize]| Tensor::from_f64s(v, s.to_vec(), DType::F64, &dev());
        sd.insert("_codebook.embed".to_string(), t(&embed, &[3, 2])?);
        sd.insert("_codebook.embed_avg".to_string(), t(&embed, &[3, 2])?);
        sd.insert(
            "_codebook.cluster_size".to_string(),
            t(&[1.0, 1.0, 1.0], &[3])?,
        );
        map.load_state_dict(&sd, true)?;
        // Rows go to codes 0, 1, 1, 0.
        let x = t(&[0.1, 0.0, 0.9, 1.2, 1.1, 0.8, -0.2, 0.1], &[4, 2])?;
        let out = vq.forward_t(&x, true)?;
        assert_eq!(out.codes.to_vec::<i64>()?, [0, 1, 1, 0]);
        let cs = [0.9 + 0.2, 0.9 + 0.2, 0.9];
        let sums = [[-0.1, 0.1], [2.0, 2.0], [0.0, 0.0]];
        let total: f64 = cs.iter().sum();
        for c in 0..3 {
            let avg = [
                0.9 * embed[2 * c] + 0.1 * sums[c][0],
                0.9 * embed[2 * c + 1] + 0.1 * sums[c][1],
            ];
            let smooth = (cs[c] + 0.1) / (total + 0.3) * total;
            let got = vq.embed.narrow(0, c, 1)?.to_vec2::<f64>()?;
            for j in 0..2 {
                assert!((got[0][j] - avg[j] / smooth).abs() < 1e-12, "code {c}");
            }
            let gcs = vq.cluster_size.to_vec::<f64>()?[c];
            assert!((gcs - cs[c]).abs() < 1e-12);
        }
        // The output of the step used the codebook before the update.
        assert_eq!(
            out.quantized.to_vec::<f64>()?,
            [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
        );
        Ok(())
    }

    #[test]
    fn dead_codes_are_reinitialised_from_the_batch() -> Result<()> {
        manual_seed(3);
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev());
        let mut cfg = VqConfig::new(2, 4);
        cfg.kmeans_init = false;
        let vq = VectorQuantizer::build(&vb, cfg)?;
        let embed = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 100.0, 100.0];
        let mut sd = HashMap::new();
        let t = |v: &[f64], s: &[usize]| Tensor::from_f64s(v, s.to_vec(), DType::F32, &dev());
        let cs = [10.0, 10.0, 10.0, 2.03];
        let avg: Vec<f64> = embed
            .iter()
            .enumerate()
            .map(|(i, e)| e * cs[i / 2])
            .collect();
        sd.insert("_codebook.embed".to_string(), t(&embed, &[4, 2])?);
        sd.insert("_codebook.embed_avg".to_string(), t(&avg, &[4, 2])?);
        sd.insert("_codebook.cluster_size".to_string(), t(&cs, &[4])?);
        map.load_state_dict(&sd, true)?;
        let x = Tensor::rand(0.0, 1.0, (32, 2), DType::F32, &dev())?;
        let rows = x.to_vec2::<f32>()?;
        // Code 3 is never used: its usage decays 2.03 → 2.0097 (alive) → 1.9896 (dead).
        vq.forward_t(&x, true)?;
        let e3 = vq.embed.to_vec2::<f32>()?[3].clone();
        assert!(e3.iter().all(|&v| (v - 100.0).abs() < 1e-2), "{e3:?}");
        vq.forward_t(&x, true)?;
        let e = vq.embed.to_vec2::<f32>()?;
        assert!(rows.contains(&e[3]), "{:?} is not a batch vector", e[3]);
        let cs = vq.cluster_size.to_vec::<f32>()?;
        assert_eq!(cs[3], 2.0);
        assert!(cs[..3].iter().all(|&c| c >= 2.0), "{cs:?}");
        Ok(())
    }

    #[test]
    fn straight_through_gives_identity_gradient() -> Result<()> {
        manual_seed(5);
        for update in [VqConfig::new(3, 8).update, CodebookUpdate::Learned] {
            let map = VarMap::new();
            let mut cfg = VqConfig::new(3, 8);
            cfg.update = update;
            let q = rvq(&map, 2, cfg)?;
            let x = Var::from_tensor(&Tensor::randn(0.0, 1.0, (2, 3, 4), DType::F32, &dev())?)?;
            let w = Tensor::randn(0.0, 1.0, (2, 3, 4), DType::F32, &dev())?;
            for train in [false, true] {
                let out = q.forward_t(x.as_tensor(), train)?;
                let g = out.quantized.mul(&w)?.sum_all()?.backward()?;
                let gx = g.get(x.as_tensor()).expect("gradient reaches the input");
                assert_eq!(gx.to_vec::<f32>()?, w.to_vec::<f32>()?);
                // No gradient reaches the codebook through the quantized output.
                let embed = map.get_var("layers.0._codebook.embed").unwrap();
                assert!(g.get(embed.as_tensor()).is_none());
            }
        }
        Ok(())
    }

    #[test]
    fn losses_reach_input_and_learned_codebook() -> Result<()> {
        manual_seed(9);
        let map = VarMap::new();
        let mut cfg = VqConfig::new(3, 8);
        cfg.update = CodebookUpdate::Learned;
        cfg.commitment_weight = 0.25;
        let q = rvq(&map, 2, cfg)?;
        let x = Var::from_tensor(&Tensor::randn(0.0, 1.0, (2, 3, 4), DType::F32, &dev())?)?;
        let out = q.forward_t(x.as_tensor(), false)?;
        let g = out.commitment_loss.backward()?;
        assert!(g.get(x.as_tensor()).is_some());
        let cb = out
            .codebook_loss
            .expect("learned codebook has a codebook loss");
        let g = cb.backward()?;
        for i in 0..2 {
            let e = map.get_var(&format!("layers.{i}._codebook.embed")).unwrap();
            let ge = g.get(e.as_tensor()).expect("codebook gradient");
            assert!(ge.abs()?.sum_all()?.to_f64()? > 0.0);
        }
        assert!(g.get(x.as_tensor()).is_none());
        // Commitment of a single quantizer, by hand.
        let vq = &q.layers[0];
        let rows = x.as_tensor().transpose(1, 2)?.contiguous()?;
        let o = vq.forward_t(&rows, false)?;
        let want = 0.25 * mse(&rows, &o.quantized)?.to_f64()?;
        assert!((o.commitment_loss.to_f64()? - want).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let map = VarMap::new();
        let q = rvq(&map, 2, VqConfig::new(4, 8))?;
        let x = Tensor::zeros((2, 3, 5), DType::F32, &dev())?;
        let e = q.forward_t(&x, false).unwrap_err().to_string();
        assert!(e.contains("[B, 4, T]"), "{e}");
        let x = Tensor::zeros((2, 4, 5), DType::F32, &dev())?;
        assert!(q.forward_with(&x, Some(3), false).is_err());
        assert!(q.encode(&x, Some(0)).is_err());
        let codes = Tensor::from_vec(vec![0i64, 8, 1, 2], (1, 2, 2), &dev())?;
        let e = q.decode(&codes).unwrap_err().to_string();
        assert!(e.contains("8 entries"), "{e}");
        let codes = Tensor::from_vec(vec![0i64, -1, 1, 2], (1, 2, 2), &dev())?;
        assert!(q.decode(&codes).is_err());
        let codes = Tensor::zeros((1, 3, 2), DType::I64, &dev())?;
        assert!(q.decode(&codes).is_err());
        let mut cfg = VqConfig::new(4, 8);
        cfg.update = CodebookUpdate::Ema {
            decay: 1.5,
            epsilon: 1e-5,
        };
        assert!(rvq(&VarMap::new(), 1, cfg).is_err());
        assert!(rvq(&VarMap::new(), 0, VqConfig::new(4, 8)).is_err());
        Ok(())
    }

    #[test]
    fn bandwidth_picks_quantizers() -> Result<()> {
        // Encodec 24 kHz: 75 frames/s, 1024 codes → 0.75 kbps per quantizer.
        let q = rvq(&VarMap::new(), 32, VqConfig::new(2, 1024))?;
        assert_eq!(q.num_quantizers_for_bandwidth(1.5, 75.0), 2);
        assert_eq!(q.num_quantizers_for_bandwidth(6.0, 75.0), 8);
        assert_eq!(q.num_quantizers_for_bandwidth(24.0, 75.0), 32);
        assert_eq!(q.num_quantizers_for_bandwidth(100.0, 75.0), 32);
        assert_eq!(q.num_quantizers_for_bandwidth(0.1, 75.0), 1);
        Ok(())
    }
}
