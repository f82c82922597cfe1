//! Sparse mixture of experts (Mixtral / Qwen-MoE style): a linear router picks the top-k
//! experts of every token, only the routed tokens go through each expert (gathered with
//! `index_select`, scattered back with `index_add`), and the outputs are mixed with the
//! routing weights. Also the Switch-Transformer load-balancing auxiliary loss, as Hugging
//! Face's `load_balancing_loss_func`.
//!
//! The top-k selection is discrete: gradients flow to the router through the selected
//! routing weights (and the auxiliary loss), and to each expert through its tokens.

use tensor_core::{DType, Error, Result, Tensor};

use crate::layers::linear::Linear;
use crate::module::{Activation, Module};
use crate::var_builder::VarBuilder;

/// How routing weights are made from the router logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeRouting {
    /// Mixtral: the top-k logits, then a softmax over just those.
    TopkThenSoftmax,
    /// Qwen-MoE / DeepSeek: a softmax over all experts, then the top-k probabilities,
    /// renormalised to sum to one when `norm_topk_prob`.
    SoftmaxThenTopk { norm_topk_prob: bool },
}

/// Parameter names of the experts' three projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertNames {
    /// Mixtral: `w1` (gate), `w3` (up), `w2` (down).
    Mixtral,
    /// Qwen-MoE / Llama: `gate_proj`, `up_proj`, `down_proj`.
    Llama,
}

impl ExpertNames {
    /// `(gate, up, down)`.
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ExpertNames::Mixtral => ("w1", "w3", "w2"),
            ExpertNames::Llama => ("gate_proj", "up_proj", "down_proj"),
        }
    }
}

/// Options of a [`MoE`] layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeConfig {
    pub hidden_size: usize,
    /// Width of each expert's gated MLP.
    pub intermediate_size: usize,
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    pub routing: MoeRouting,
    /// The gate activation of the experts' gated MLP (SiLU → SwiGLU).
    pub activation: Activation,
    pub expert_names: ExpertNames,
}

impl MoeConfig {
    /// Mixtral's block: SwiGLU experts named `w1/w2/w3`, softmax over the top-k logits.
    pub fn mixtral(
        hidden_size: usize,
        intermediate_size: usize,
        num_experts: usize,
        top_k: usize,
    ) -> MoeConfig {
        MoeConfig {
            hidden_size,
            intermediate_size,
            num_experts,
            top_k,
            routing: MoeRouting::TopkThenSoftmax,
            activation: Activation::Silu,
            expert_names: ExpertNames::Mixtral,
        }
    }

    /// Qwen-MoE's sparse block (without the shared expert): SwiGLU experts named
    /// `gate_proj/up_proj/down_proj`, softmax then top-k.
    pub fn qwen_moe(
        hidden_size: usize,
        intermediate_size: usize,
        num_experts: usize,
        top_k: usize,
        norm_topk_prob: bool,
    ) -> MoeConfig {
        MoeConfig {
            routing: MoeRouting::SoftmaxThenTopk { norm_topk_prob },
            expert_names: ExpertNames::Llama,
            ..MoeConfig::mixtral(hidden_size, intermediate_size, num_experts, top_k)
        }
    }

    fn validate(&self) -> Result<()> {
        if self.hidden_size == 0 || self.intermediate_size == 0 || self.num_experts == 0 {
            return Err(Error::invalid(
                "MoE",
                format!(
                    "hidden_size ({}), intermediate_size ({}) and num_experts ({}) must be positive",
                    self.hidden_size, self.intermediate_size, self.num_experts
                ),
            ));
        }
        check_top_k(self.top_k, self.num_experts)
    }
}

fn check_top_k(k: usize, experts: usize) -> Result<()> {
    if k == 0 || k > experts {
        return Err(Error::invalid(
            "MoE",
            format!("top_k = {k} must be between 1 and the number of experts ({experts})"),
        ));
    }
    Ok(())
}

/// One expert: the gated MLP `down(act(gate(x)) · up(x))`, without biases.
#[derive(Clone, Debug)]
pub struct Expert {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub activation: Activation,
}

impl Expert {
    pub fn build(
        vb: &VarBuilder,
        dim: usize,
        hidden: usize,
        activation: Activation,
        names: ExpertNames,
    ) -> Result<Expert> {
        let (g, u, d) = names.names();
        Ok(Expert {
            gate: Linear::build(&vb.pp(g), dim, hidden, false)?,
            up: Linear::build(&vb.pp(u), dim, hidden, false)?,
            down: Linear::build(&vb.pp(d), hidden, dim, false)?,
            activation,
        })
    }
}

impl Module for Expert {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self
            .activation
            .gated(&self.gate.forward(xs)?, &self.up.forward(xs)?)?;
        self.down.forward(&h)
    }
}

/// What a [`MoE`] forward returns.
#[derive(Clone, Debug)]
pub struct MoeOutput {
    /// The mixed expert outputs, the input's shape.
    pub hidden: Tensor,
    /// `[tokens, num_experts]`, for a loss over several layers ([`load_balancing_loss`]).
    pub router_logits: Tensor,
    /// This layer's load-balancing loss (scale it by the router auxiliary-loss coefficient).
    pub aux_loss: Tensor,
}

/// A sparse mixture-of-experts block. Names: `gate.weight` (the router, no bias) and
/// `experts.{i}.{w1,w2,w3}.weight` (or `gate_proj/up_proj/down_proj`, see [`ExpertNames`]).
#[derive(Clone, Debug)]
pub struct MoE {
    pub gate: Linear,
    pub experts: Vec<Expert>,
    cfg: MoeConfig,
}

impl MoE {
    pub fn build(vb: &VarBuilder, cfg: MoeConfig) -> Result<MoE> {
        cfg.validate()?;
        let gate = Linear::build(&vb.pp("gate"), cfg.hidden_size, cfg.num_experts, false)?;
        let experts = (0..cfg.num_experts)
            .map(|i| {
                Expert::build(
                    &vb.pp("experts").pp(i),
                    cfg.hidden_size,
                    cfg.intermediate_size,
                    cfg.activation,
                    cfg.expert_names,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(MoE { gate, experts, cfg })
    }

    pub fn config(&self) -> &MoeConfig {
        &self.cfg
    }

    /// Route `xs: [..., hidden]` through the experts; returns the output, the router logits
    /// and the auxiliary loss.
    pub fn forward_with_aux(&self, xs: &Tensor) -> Result<MoeOutput> {
        let c = &self.cfg;
        let d = xs.dims();
        if d.is_empty() || d[d.len() - 1] != c.hidden_size {
            return Err(Error::invalid(
                "MoE",
                format!("input {d:?} must end in hidden_size {}", c.hidden_size),
            ));
        }
        let n: usize = d[..d.len() - 1].iter().product();
        let flat = xs.reshape((n, c.hidden_size))?;
        let logits = self.gate.forward(&flat)?;
        let (ids, weights) = route(&logits, c.top_k, c.routing)?;

        // Which (token, slot) pairs each expert serves: the one host sync of the layer.
        let host_ids = ids.to_vec::<i64>()?;
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); c.num_experts];
        let mut slots: Vec<Vec<u32>> = vec![Vec::new(); c.num_experts];
        for (pos, &e) in host_ids.iter().enumerate() {
            let e = e as usize;
            tokens[e].push((pos / c.top_k) as u32);
            slots[e].push(pos as u32);
        }
        let flat_w = weights.flatten_all()?;
        let dev = xs.device();
        let mut out = Tensor::zeros((n, c.hidden_size), xs.dtype(), dev)?;
        for (e, expert) in self.experts.iter().enumerate() {
            if tokens[e].is_empty() {
                continue;
            }
            let len = tokens[e].len();
            let tok = Tensor::from_vec(std::mem::take(&mut tokens[e]), len, dev)?;
            let slot = Tensor::from_vec(std::mem::take(&mut slots[e]), len, dev)?;
            let y = expert.forward(&flat.index_select(&tok, 0)?)?;
            let w = flat_w.index_select(&slot, 0)?.unsqueeze(1)?;
            out = out.index_add(&tok, &y.mul(&w)?, 0)?;
        }
        let aux_loss = balance_loss(&logits, &host_ids, c.num_experts)?;
        Ok(MoeOutput {
            hidden: out.reshape(d)?,
            router_logits: logits,
            aux_loss,
        })
    }
}

impl Module for MoE {
    /// The mixed output only (use [`MoE::forward_with_aux`] to train with the auxiliary loss).
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_aux(xs)?.hidden)
    }
}

/// Indices `[N, k]` (i64) of the `k` largest entries of each row of `scores: [N, E]`, largest
/// first (ties: the lowest index first), by repeated argmax with the winners masked out.
pub fn topk_indices(scores: &Tensor, k: usize) -> Result<Tensor> {
    if scores.rank() != 2 {
        return Err(Error::invalid(
            "topk_indices",
            format!("scores must be [N, E], got {:?}", scores.dims()),
        ));
    }
    let e = scores.dims()[1];
    check_top_k(k, e)?;
    let cols = Tensor::arange(0.0, e as f64, 1.0, DType::I64, scores.device())?.reshape((1, e))?;
    let mut s = scores.detach();
    let mut picks = Vec::with_capacity(k);
    for j in 0..k {
        let a = s.argmax_keepdim(1)?;
        if j + 1 < k {
            s = s.masked_fill(&cols.eq(&a)?, f64::NEG_INFINITY)?;
        }
        picks.push(a);
    }
    Tensor::cat(&picks.iter().collect::<Vec<_>>(), 1)
}

/// The selected experts `[N, k]` and their routing weights `[N, k]` (differentiable).
fn route(logits: &Tensor, k: usize, routing: MoeRouting) -> Result<(Tensor, Tensor)> {
    let ids = topk_indices(logits, k)?;
    let w = match routing {
        MoeRouting::TopkThenSoftmax => logits.gather(&ids, 1)?.softmax(1)?,
        MoeRouting::SoftmaxThenTopk { norm_topk_prob } => {
            let w = logits.softmax(1)?.gather(&ids, 1)?;
            if norm_topk_prob {
                w.div(&w.sum_keepdim(1)?)?
            } else {
                w
            }
        }
    };
    Ok((ids, w))
}

/// `E · Σ_e f_e · P_e` with `f_e` the fraction of (token, slot) assignments routed to expert e
/// and `P_e` the mean router probability of e.
fn balance_loss(logits: &Tensor, ids: &[i64], experts: usize) -> Result<Tensor> {
    let n = logits.dims()[0];
    let mut counts = vec![0f64; experts];
    for &e in ids {
        counts[e as usize] += 1.0;
    }
    let frac: Vec<f64> = counts.iter().map(|c| c / n.max(1) as f64).collect();
    let f = Tensor::from_f64s(&frac, experts, logits.dtype(), logits.device())?;
    let p = logits.softmax(1)?.mean(0)?;
    p.mul(&f)?.sum_all()?.mul_scalar(experts as f64)
}

/// Hugging Face's `load_balancing_loss_func` (Switch Transformer): `E · Σ_e f_e · P_e` over
/// router logits `[tokens, E]` (e.g. the concatenated `router_logits` of every layer), with
/// `f_e` the fraction of top-`k` assignments to expert e and `P_e` its mean probability.
pub fn load_balancing_loss(router_logits: &Tensor, top_k: usize) -> Result<Tensor> {
    if router_logits.rank() != 2 {
        return Err(Error::invalid(
            "load_balancing_loss",
            format!(
                "router logits must be [tokens, experts], got {:?}",
                router_logits.dims()
            ),
        ));
    }
    let ids = topk_indices(router_logits, top_k)?.to_vec::<i64>()?;
    balance_loss(router_logits, &ids, router_logits.dims()[1])
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::var_builder::VarMap;
    use tensor_core::conformance::{assert_close, gradcheck};
    use tensor_core::Device;

    fn dev() -> Device {
        tensor_cpu::device()
    }

    /// Names and shapes of every parameter of a MoE, in a fixed order.
    fn param_specs(c: &MoeConfig) -> Vec<(String, Vec<usize>)> {
        let (g, u, d) = c.expert_names.names();
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let mut v = vec![("gate.weight".to_string(), vec![c.num_experts, h])];
        for e in 0..c.num_experts {
            v.push((format!("experts.{e}.{g}.weight"), vec![i, h]));
            v.push((format!("experts.{e}.{u}.weight"), vec![i, h]));
            v.push((format!("experts.{e}.{d}.weight"), vec![h, i]));
        }
        v
    }

    fn from_params(c: &MoeConfig, params: &[Tensor]) -> Result<MoE> {
        let map: HashMap<String, Tensor> = param_specs(c)
            .into_iter()
            .zip(params)
            .map(|((k, _), t)| (k, t.clone()))
            .collect();
        MoE::build(&VarBuilder::from_tensors(map, DType::F64, &dev()), *c)
    }

    fn params(c: &MoeConfig, seed: u64) -> Result<Vec<Tensor>> {
        param_specs(c)
            .into_iter()
            .enumerate()
            .map(|(i, (_, s))| gradcheck::input(s, &dev(), seed + i as u64))
            .collect()
    }

    /// Every expert on every token, mixed with a dense weight matrix: the reference.
    fn dense_reference(m: &MoE, x: &Tensor) -> Result<Tensor> {
        let c = m.config();
        let logits = m.gate.forward(x)?;
        let (ids, w) = route(&logits, c.top_k, c.routing)?;
        let (ids, w) = (ids.to_vec2::<i64>()?, w.to_vec2::<f64>()?);
        let mut out = Tensor::zeros(x.dims(), DType::F64, &dev())?;
        for (e, expert) in m.experts.iter().enumerate() {
            let col: Vec<f64> = ids
                .iter()
                .zip(&w)
                .map(|(row, wr)| {
                    row.iter()
                        .zip(wr)
                        .filter(|(&i, _)| i as usize == e)
                        .map(|(_, &v)| v)
                        .sum()
                })
                .collect();
            let col = Tensor::from_f64s(&col, (x.dims()[0], 1), DType::F64, &dev())?;
            out = out.add(&expert.forward(x)?.mul(&col)?)?;
        }
        Ok(out)
    }

    #[test]
    fn names_follow_mixtral_and_qwen() -> Result<()> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev());
        MoE::build(&vb.pp("block_sparse_moe"), MoeConfig::mixtral(8, 16, 4, 2))?;
        let names: Vec<String> = map.all_vars().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names.len(), 1 + 4 * 3);
        for n in [
            "block_sparse_moe.gate.weight",
            "block_sparse_moe.experts.3.w1.weight",
            "block_sparse_moe.experts.0.w2.weight",
            "block_sparse_moe.experts.1.w3.weight",
        ] {
            assert!(names.iter().any(|k| k == n), "{n} missing: {names:?}");
        }
        assert_eq!(
            map.get_var("block_sparse_moe.experts.0.w2.weight")
                .unwrap()
                .dims(),
            &[8, 16]
        );
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev());
        MoE::build(&vb.pp("mlp"), MoeConfig::qwen_moe(8, 16, 4, 2, true))?;
        assert!(map.get_var("mlp.experts.2.down_proj.weight").is_some());
        Ok(())
    }

    #[test]
    fn sparse_dispatch_matches_dense_reference() -> Result<()> {
        for cfg in [
            MoeConfig::mixtral(6, 5, 4, 2),
            MoeConfig::mixtral(6, 5, 5, 1),
            MoeConfig::qwen_moe(6, 5, 4, 3, true),
            MoeConfig::qwen_moe(6, 5, 4, 2, false),
        ] {
            let m = from_params(&cfg, &params(&cfg, 11)?)?;
            let x = gradcheck::input((2, 7, 6), &dev(), 3)?;
            let out = m.forward_with_aux(&x)?;
            assert_eq!(out.hidden.dims(), &[2, 7, 6]);
            assert_eq!(out.router_logits.dims(), &[14, cfg.num_experts]);
            let want = dense_reference(&m, &x.reshape((14, 6))?)?.reshape((2, 7, 6))?;
            assert_close("moe vs dense", &out.hidden, &want, 1e-12, 1e-10)?;
        }
        Ok(())
    }

    #[test]
    fn routing_weights() -> Result<()> {
        let logits = Tensor::from_f64s(
            &[0.5, 2.0, -1.0, 1.0, 3.0, 0.0, 0.0, 1.0],
            (2, 4),
            DType::F64,
            &dev(),
        )?;
        assert_eq!(
            topk_indices(&logits, 2)?.to_vec2::<i64>()?,
            [[1, 3], [0, 3]]
        );
        let (_, w) = route(&logits, 2, MoeRouting::TopkThenSoftmax)?;
        let (_, wn) = route(
            &logits,
            2,
            MoeRouting::SoftmaxThenTopk {
                norm_topk_prob: true,
            },
        )?;
        // Softmax over the selected logits = renormalised top-k probabilities.
        assert_close("mixtral = qwen normalised", &w, &wn, 1e-12, 1e-12)?;
        let w0 = w.to_vec2::<f64>()?;
        let e = (-1f64).exp();
        assert!((w0[0][0] - 1.0 / (1.0 + e)).abs() < 1e-12);
        let (_, wu) = route(
            &logits,
            2,
            MoeRouting::SoftmaxThenTopk {
                norm_topk_prob: false,
            },
        )?;
        let row: f64 = wu.to_vec2::<f64>()?[0].iter().sum();
        assert!(row < 1.0 - 1e-3);
        Ok(())
    }

    #[test]
    fn aux_loss_is_switch_transformer_formula() -> Result<()> {
        let logits = gradcheck::input((9, 4), &dev(), 5)?;
        let aux = load_balancing_loss(&logits, 2)?.to_f64()?;
        // By hand: E · Σ_e (count_e / N) · mean_n softmax(logits)_ne.
        let rows = logits.to_vec2::<f64>()?;
        let mut want = 0.0;
        let mut counts = [0.0; 4];
        let mut pmean = [0.0; 4];
        for r in &rows {
            let z: f64 = r.iter().map(|v| v.exp()).sum();
            let mut idx: Vec<usize> = (0..4).collect();
            idx.sort_by(|&a, &b| r[b].total_cmp(&r[a]));
            for &i in &idx[..2] {
                counts[i] += 1.0;
            }
            for i in 0..4 {
                pmean[i] += r[i].exp() / z / 9.0;
            }
        }
        for i in 0..4 {
            want += 4.0 * counts[i] / 9.0 * pmean[i];
        }
        assert!((aux - want).abs() < 1e-12, "{aux} vs {want}");
        // A uniform router gives exactly top_k.
        let flat = Tensor::zeros((5, 4), DType::F64, &dev())?;
        assert!((load_balancing_loss(&flat, 2)?.to_f64()? - 2.0).abs() < 1e-12);
        // The layer's own aux loss is the same formula on its logits.
        let cfg = MoeConfig::mixtral(3, 4, 4, 2);
        let m = from_params(&cfg, &params(&cfg, 1)?)?;
        let out = m.forward_with_aux(&gradcheck::input((6, 3), &dev(), 2)?)?;
        let again = load_balancing_loss(&out.router_logits, 2)?;
        assert_close("aux", &out.aux_loss, &again, 1e-14, 0.0)?;
        Ok(())
    }

    #[test]
    fn bad_config_and_input_are_errors() -> Result<()> {
        let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev());
        let e = MoE::build(&vb, MoeConfig::mixtral(4, 8, 4, 5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("top_k = 5"), "{e}");
        assert!(MoE::build(&vb, MoeConfig::mixtral(4, 8, 4, 0)).is_err());
        let m = MoE::build(&vb, MoeConfig::mixtral(4, 8, 4, 2))?;
        let e = m
            .forward(&Tensor::zeros((3, 5), DType::F32, &dev())?)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size 4"), "{e}");
        assert!(topk_indices(&Tensor::zeros((3, 4), DType::F32, &dev())?, 5).is_err());
        Ok(())
    }

    /// The smallest gap between the k-th and (k+1)-th router logit of any token: finite
    /// differences are only valid while the selection cannot flip.
    fn selection_margin(m: &MoE, x: &Tensor) -> Result<f64> {
        let k = m.config().top_k;
        let logits = m.gate.forward(x)?.to_vec2::<f64>()?;
        Ok(logits
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.sort_by(|a, b| b.total_cmp(a));
                r[k - 1] - r[k]
            })
            .fold(f64::INFINITY, f64::min))
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for cfg in [
            MoeConfig::mixtral(3, 4, 4, 2),
            MoeConfig::qwen_moe(3, 4, 4, 2, true),
            MoeConfig::qwen_moe(3, 4, 3, 1, false),
        ] {
            let x = gradcheck::input((5, 3), &dev(), 7)?;
            let ps = params(&cfg, 100)?;
            let margin = selection_margin(&from_params(&cfg, &ps)?, &x)?;
            assert!(
                margin > 1e-3,
                "top-k selection too close to a tie: {margin}"
            );
            let mut inputs = vec![x];
            inputs.extend(ps);
            // Output and auxiliary loss together, so both paths are checked.
            gradcheck::check_grad("moe", &inputs, |t| {
                let m = from_params(&cfg, &t[1..])?;
                let out = m.forward_with_aux(&t[0])?;
                Tensor::cat(&[&out.hidden.flatten_all()?, &out.aux_loss.reshape(1)?], 0)
            })?;
        }
        Ok(())
    }
}
