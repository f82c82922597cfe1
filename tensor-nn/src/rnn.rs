//! Recurrent layers with `torch.nn.LSTM`/`GRU` semantics and `state_dict` names: multi-layer,
//! optionally bidirectional, batch-first or time-major, dropout between layers in training.
//! Also the single-step cells (`nn.LSTMCell`/`nn.GRUCell`).
//!
//! Each layer and direction projects the whole sequence's inputs with one matmul
//! (`x·W_ihᵀ + b`), then loops over time for the recurrent part only, so the per-step work is
//! one `[B, H]×[H, G·H]` product and a few elementwise ops. The time loop of a layer is one
//! autograd node (a [`CustomOp`] whose backward is backpropagation through time written with
//! tensor ops), so training costs O(T) and works on every backend.

use std::sync::Arc;

use tensor_core::{CustomOp, Error, Result, Tensor};

use crate::init::Init;
use crate::var_builder::VarBuilder;

/// Options shared by [`Lstm`] and [`Gru`] (the arguments of `nn.LSTM`/`nn.GRU`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RnnConfig {
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    /// Whether the layers have `bias_ih`/`bias_hh`.
    pub bias: bool,
    /// Inputs and outputs are `[B, T, F]` instead of `[T, B, F]` (states stay `[L·D, B, H]`).
    pub batch_first: bool,
    pub bidirectional: bool,
    /// Dropout probability on the outputs of every layer but the last, in training only.
    pub dropout: f64,
}

impl RnnConfig {
    /// One unidirectional layer with biases, time-major, no dropout (PyTorch's defaults).
    pub fn new(input_size: usize, hidden_size: usize) -> RnnConfig {
        RnnConfig {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            bidirectional: false,
            dropout: 0.0,
        }
    }

    pub fn num_layers(mut self, n: usize) -> Self {
        self.num_layers = n;
        self
    }

    pub fn bias(mut self, on: bool) -> Self {
        self.bias = on;
        self
    }

    pub fn batch_first(mut self, on: bool) -> Self {
        self.batch_first = on;
        self
    }

    pub fn bidirectional(mut self, on: bool) -> Self {
        self.bidirectional = on;
        self
    }

    pub fn dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }

    /// 2 for a bidirectional network, else 1.
    pub fn num_directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    fn validate(&self, op: &'static str) -> Result<()> {
        if self.input_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "input_size ({}), hidden_size ({}) and num_layers ({}) must be positive",
                    self.input_size, self.hidden_size, self.num_layers
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.dropout) {
            return Err(Error::invalid(
                op,
                format!("dropout {} outside [0, 1]", self.dropout),
            ));
        }
        Ok(())
    }
}

/// The four tensors of one layer and direction: `W_ih: [G·H, in]`, `W_hh: [G·H, H]` and the
/// optional biases `[G·H]`, with G = 4 (LSTM) or 3 (GRU).
#[derive(Clone, Debug)]
pub struct RnnWeights {
    pub weight_ih: Tensor,
    pub weight_hh: Tensor,
    pub bias_ih: Option<Tensor>,
    pub bias_hh: Option<Tensor>,
}

impl RnnWeights {
    /// `weight_ih{suffix}` etc., initialised Uniform(±1/√hidden) like PyTorch.
    fn build(
        vb: &VarBuilder,
        suffix: &str,
        gates: usize,
        input: usize,
        hidden: usize,
        bias: bool,
    ) -> Result<RnnWeights> {
        let k = 1.0 / (hidden as f64).sqrt();
        let init = Init::Uniform { lo: -k, hi: k };
        let g = gates * hidden;
        let weight_ih =
            vb.get_with_init((g, input), &format!("weight_ih{suffix}"), init.clone())?;
        let weight_hh =
            vb.get_with_init((g, hidden), &format!("weight_hh{suffix}"), init.clone())?;
        let (bias_ih, bias_hh) = if bias {
            (
                Some(vb.get_with_init((g,), &format!("bias_ih{suffix}"), init.clone())?),
                Some(vb.get_with_init((g,), &format!("bias_hh{suffix}"), init)?),
            )
        } else {
            (None, None)
        };
        Ok(RnnWeights {
            weight_ih,
            weight_hh,
            bias_ih,
            bias_hh,
        })
    }

    /// `x·W_ihᵀ + b_ih` (plus `b_hh` when `fold_bias_hh`) for `x: [N, in]` → `[N, G·H]`.
    fn project_input(&self, x: &Tensor, fold_bias_hh: bool) -> Result<Tensor> {
        let mut y = x.matmul(&self.weight_ih.t()?)?;
        match (&self.bias_ih, &self.bias_hh, fold_bias_hh) {
            (Some(bi), Some(bh), true) => y = y.add(&bi.add(bh)?)?,
            (Some(bi), _, _) => y = y.add(bi)?,
            (None, Some(bh), true) => y = y.add(bh)?,
            (None, _, _) => {}
        }
        Ok(y)
    }
}

/// One LSTM step from the projected input `gx = x·W_ihᵀ + b_ih (+ b_hh)`, gates i, f, g, o.
fn lstm_step(
    gx: &Tensor,
    h: &Tensor,
    c: &Tensor,
    w_hh_t: &Tensor,
    b_hh: Option<&Tensor>,
    hidden: usize,
) -> Result<(Tensor, Tensor)> {
    let mut gates = gx.add(&h.matmul(w_hh_t)?)?;
    if let Some(b) = b_hh {
        gates = gates.add(b)?;
    }
    let last = gates.rank() - 1;
    // i and f are adjacent: one sigmoid for both.
    let if_ = gates.narrow(last, 0, 2 * hidden)?.sigmoid()?;
    let i = if_.narrow(last, 0, hidden)?;
    let f = if_.narrow(last, hidden, hidden)?;
    let g = gates.narrow(last, 2 * hidden, hidden)?.tanh()?;
    let o = gates.narrow(last, 3 * hidden, hidden)?.sigmoid()?;
    let c = f.mul(c)?.add(&i.mul(&g)?)?;
    let h = o.mul(&c.tanh()?)?;
    Ok((h, c))
}

/// One GRU step: `r, z = σ(gx_rz + gh_rz)`, `n = tanh(gx_n + r·gh_n)`, `h' = n + z·(h − n)`,
/// with `gh = h·W_hhᵀ + b_hh` (b_hn stays inside the reset gate, as in PyTorch).
fn gru_step(
    gx: &Tensor,
    h: &Tensor,
    w_hh_t: &Tensor,
    b_hh: Option<&Tensor>,
    hidden: usize,
) -> Result<Tensor> {
    let mut gh = h.matmul(w_hh_t)?;
    if let Some(b) = b_hh {
        gh = gh.add(b)?;
    }
    let last = gh.rank() - 1;
    let rz = gx
        .narrow(last, 0, 2 * hidden)?
        .add(&gh.narrow(last, 0, 2 * hidden)?)?
        .sigmoid()?;
    let r = rz.narrow(last, 0, hidden)?;
    let z = rz.narrow(last, hidden, hidden)?;
    let n = gx
        .narrow(last, 2 * hidden, hidden)?
        .add(&r.mul(&gh.narrow(last, 2 * hidden, hidden)?)?)?
        .tanh()?;
    n.add(&z.mul(&h.sub(&n)?)?)
}

// ---- whole-sequence recurrences as single autograd nodes -------------------------------------
//
// Composed step by step, backpropagation through time would slice one step out of the
// projected inputs per step, and every slice's backward pads its gradient to the whole
// sequence: O(T²) work. The scans below run the recurrence (with the same step functions,
// untracked) and give back their inputs' gradients by the textbook BPTT rules, with everything
// that does not depend on the recurrence computed for all steps at once.

/// The step positions in processing order.
fn steps(t_len: usize, reverse: bool) -> impl Iterator<Item = usize> {
    (0..t_len).map(move |s| if reverse { t_len - 1 - s } else { s })
}

/// The state each position started from: `s` shifted by one step along the direction of
/// processing, with `s0: [B, H]` at the first processed position.
fn previous(s: &Tensor, s0: &Tensor, reverse: bool) -> Result<Tensor> {
    let t_len = s.dims()[0];
    let s0 = s0.unsqueeze(0)?;
    if t_len == 1 {
        return Ok(s0);
    }
    if reverse {
        Tensor::cat(&[&s.narrow(0, 1, t_len - 1)?, &s0], 0)
    } else {
        Tensor::cat(&[&s0, &s.narrow(0, 0, t_len - 1)?], 0)
    }
}

/// `[T, B, H]` rows times `w: [G, H]`ᵀ → `[T, B, G]` (one matmul for every step).
fn seq_matmul_t(s: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (t, b, h) = (s.dims()[0], s.dims()[1], s.dims()[2]);
    s.reshape((t * b, h))?
        .matmul(&w.t()?)?
        .reshape((t, b, w.dims()[0]))
}

/// `Σ_t dᵀ_t·s_t` for `d: [T, B, G]`, `s: [T, B, H]` → `[G, H]` (one matmul).
fn seq_outer(d: &Tensor, s: &Tensor) -> Result<Tensor> {
    let (t, b) = (d.dims()[0], d.dims()[1]);
    d.reshape((t * b, d.dims()[2]))?
        .t()?
        .matmul(&s.reshape((t * b, s.dims()[2]))?)
}

fn one_minus(t: &Tensor) -> Result<Tensor> {
    t.affine(-1.0, 1.0)
}

fn stack_steps(v: Vec<Option<Tensor>>) -> Result<Tensor> {
    let v: Vec<Tensor> = v
        .into_iter()
        .map(|s| s.expect("every time step was computed"))
        .collect();
    Tensor::stack(&v.iter().collect::<Vec<_>>(), 0)
}

/// One LSTM layer and direction over the sequence: inputs `gx: [T, B, 4H]` (input projection
/// with both biases), `h0, c0: [B, H]`, `W_hh: [4H, H]`; output `[T, B, 2H]`, the hidden and
/// cell states of every position side by side.
struct LstmScan {
    reverse: bool,
}

impl CustomOp for LstmScan {
    fn name(&self) -> &'static str {
        "lstm_scan"
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Tensor> {
        let (gx, w) = (&inputs[0], &inputs[3]);
        let hsz = w.dims()[1];
        let w_t = w.t()?;
        let (mut h, mut c) = (inputs[1].clone(), inputs[2].clone());
        let mut out = vec![None; gx.dims()[0]];
        for t in steps(gx.dims()[0], self.reverse) {
            (h, c) = lstm_step(&gx.narrow(0, t, 1)?.squeeze(0)?, &h, &c, &w_t, None, hsz)?;
            out[t] = Some(Tensor::cat(&[&h, &c], 1)?);
        }
        stack_steps(out)
    }

    fn has_backward(&self) -> bool {
        true
    }

    fn backward(
        &self,
        inputs: &[Tensor],
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let (gx, h0, c0, w) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3]);
        let hsz = w.dims()[1];
        let t_len = gx.dims()[0];
        let (hs, cs) = (output.narrow(2, 0, hsz)?, output.narrow(2, hsz, hsz)?);
        let h_prev = previous(&hs, h0, self.reverse)?;
        let c_prev = previous(&cs, c0, self.reverse)?;
        // The gates of every step at once.
        let gates = gx.add(&seq_matmul_t(&h_prev, w)?)?;
        let gate = |k: usize| gates.narrow(2, k * hsz, hsz);
        let (i, f) = (gate(0)?.sigmoid()?, gate(1)?.sigmoid()?);
        let (g, o) = (gate(2)?.tanh()?, gate(3)?.sigmoid()?);
        let tc = cs.tanh()?;
        // d(pre-activation)/d(c) for i, f, g; d(pre-activation o)/d(h); dc/dh through h = o·tanh(c).
        let ki = g.mul(&i)?.mul(&one_minus(&i)?)?;
        let kf = c_prev.mul(&f)?.mul(&one_minus(&f)?)?;
        let kg = i.mul(&one_minus(&g.sqr()?)?)?;
        let ko = tc.mul(&o)?.mul(&one_minus(&o)?)?;
        let kc = o.mul(&one_minus(&tc.sqr()?)?)?;
        let (gh, gc) = (grad.narrow(2, 0, hsz)?, grad.narrow(2, hsz, hsz)?);
        let at = |x: &Tensor, t: usize| x.narrow(0, t, 1)?.squeeze(0);
        let mut dh_next = h0.zeros_like()?;
        let mut dc_next = c0.zeros_like()?;
        let mut dgates = vec![None; t_len];
        for t in steps(t_len, !self.reverse) {
            let dh = at(&gh, t)?.add(&dh_next)?;
            let dc = at(&gc, t)?.add(&dc_next)?.add(&dh.mul(&at(&kc, t)?)?)?;
            let d = Tensor::cat(
                &[
                    &dc.mul(&at(&ki, t)?)?,
                    &dc.mul(&at(&kf, t)?)?,
                    &dc.mul(&at(&kg, t)?)?,
                    &dh.mul(&at(&ko, t)?)?,
                ],
                1,
            )?;
            dc_next = dc.mul(&at(&f, t)?)?;
            dh_next = d.matmul(w)?;
            dgates[t] = Some(d);
        }
        let dgates = stack_steps(dgates)?;
        let dw = seq_outer(&dgates, &h_prev)?;
        Ok(vec![Some(dgates), Some(dh_next), Some(dc_next), Some(dw)])
    }
}

/// One GRU layer and direction over the sequence: inputs `gx: [T, B, 3H]` (input projection
/// with `b_ih`), `h0: [B, H]`, `W_hh: [3H, H]` and optionally `b_hh: [3H]`; output the hidden
/// state of every position, `[T, B, H]`.
struct GruScan {
    reverse: bool,
}

impl CustomOp for GruScan {
    fn name(&self) -> &'static str {
        "gru_scan"
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Tensor> {
        let (gx, w, b) = (&inputs[0], &inputs[2], inputs.get(3));
        let hsz = w.dims()[1];
        let w_t = w.t()?;
        let mut h = inputs[1].clone();
        let mut out = vec![None; gx.dims()[0]];
        for t in steps(gx.dims()[0], self.reverse) {
            h = gru_step(&gx.narrow(0, t, 1)?.squeeze(0)?, &h, &w_t, b, hsz)?;
            out[t] = Some(h.clone());
        }
        stack_steps(out)
    }

    fn has_backward(&self) -> bool {
        true
    }

    fn backward(
        &self,
        inputs: &[Tensor],
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let (gx, h0, w, b) = (&inputs[0], &inputs[1], &inputs[2], inputs.get(3));
        let hsz = w.dims()[1];
        let t_len = gx.dims()[0];
        let h_prev = previous(output, h0, self.reverse)?;
        let mut gh = seq_matmul_t(&h_prev, w)?;
        if let Some(b) = b {
            gh = gh.add(b)?;
        }
        let part = |x: &Tensor, k: usize| x.narrow(2, k * hsz, hsz);
        let r = part(gx, 0)?.add(&part(&gh, 0)?)?.sigmoid()?;
        let z = part(gx, 1)?.add(&part(&gh, 1)?)?.sigmoid()?;
        let n = part(gx, 2)?.add(&r.mul(&part(&gh, 2)?)?)?.tanh()?;
        // h = n + z·(h_prev − n): the pre-activation gradients per unit of dh.
        let kn = one_minus(&z)?.mul(&one_minus(&n.sqr()?)?)?;
        let kz = h_prev.sub(&n)?.mul(&z)?.mul(&one_minus(&z)?)?;
        let kr = kn.mul(&part(&gh, 2)?)?.mul(&r)?.mul(&one_minus(&r)?)?;
        let at = |x: &Tensor, t: usize| x.narrow(0, t, 1)?.squeeze(0);
        let mut dh_next = h0.zeros_like()?;
        let mut dgx = vec![None; t_len];
        let mut dgh = vec![None; t_len];
        for t in steps(t_len, !self.reverse) {
            let dh = at(grad, t)?.add(&dh_next)?;
            let (dr, dz, dn) = (
                dh.mul(&at(&kr, t)?)?,
                dh.mul(&at(&kz, t)?)?,
                dh.mul(&at(&kn, t)?)?,
            );
            let dhh = Tensor::cat(&[&dr, &dz, &dn.mul(&at(&r, t)?)?], 1)?;
            dh_next = dh.mul(&at(&z, t)?)?.add(&dhh.matmul(w)?)?;
            dgx[t] = Some(Tensor::cat(&[&dr, &dz, &dn], 1)?);
            dgh[t] = Some(dhh);
        }
        let dgh = stack_steps(dgh)?;
        let dw = seq_outer(&dgh, &h_prev)?;
        let mut grads = vec![Some(stack_steps(dgx)?), Some(dh_next), Some(dw)];
        if b.is_some() {
            grads.push(Some(dgh.sum([0usize, 1])?));
        }
        Ok(grads)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lstm,
    Gru,
}

impl Kind {
    fn gates(self) -> usize {
        match self {
            Kind::Lstm => 4,
            Kind::Gru => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Lstm => "LSTM",
            Kind::Gru => "GRU",
        }
    }
}

/// The layers of an LSTM or GRU: `weights[layer][direction]`.
#[derive(Clone, Debug)]
struct Stack {
    kind: Kind,
    cfg: RnnConfig,
    weights: Vec<Vec<RnnWeights>>,
}

/// The input as time-major `[T, B, F]`, and whether it had no batch dim.
struct Prepared {
    x: Tensor,
    unbatched: bool,
}

impl Stack {
    fn build(vb: &VarBuilder, kind: Kind, cfg: RnnConfig) -> Result<Stack> {
        cfg.validate(kind.name())?;
        let dirs = cfg.num_directions();
        let mut weights = Vec::with_capacity(cfg.num_layers);
        for layer in 0..cfg.num_layers {
            let input = if layer == 0 {
                cfg.input_size
            } else {
                cfg.hidden_size * dirs
            };
            let mut per_dir = Vec::with_capacity(dirs);
            for d in 0..dirs {
                let suffix = if d == 0 {
                    format!("_l{layer}")
                } else {
                    format!("_l{layer}_reverse")
                };
                per_dir.push(RnnWeights::build(
                    vb,
                    &suffix,
                    kind.gates(),
                    input,
                    cfg.hidden_size,
                    cfg.bias,
                )?);
            }
            weights.push(per_dir);
        }
        Ok(Stack { kind, cfg, weights })
    }

    fn prepare(&self, x: &Tensor) -> Result<Prepared> {
        let op = self.kind.name();
        let c = &self.cfg;
        let ok_rank = x.rank() == 2 || x.rank() == 3;
        if !ok_rank || x.dims()[x.rank() - 1] != c.input_size {
            let layout = if c.batch_first {
                "[B, T, input_size]"
            } else {
                "[T, B, input_size]"
            };
            return Err(Error::invalid(
                op,
                format!(
                    "input {:?} must be {layout} or unbatched [T, input_size] with input_size = {}",
                    x.dims(),
                    c.input_size
                ),
            ));
        }
        let (x, unbatched) = if x.rank() == 2 {
            (x.unsqueeze(1)?, true)
        } else if c.batch_first {
            (x.transpose(0, 1)?, false)
        } else {
            (x.clone(), false)
        };
        if x.dims()[0] == 0 {
            return Err(Error::invalid(op, "the input sequence is empty (T = 0)"));
        }
        Ok(Prepared { x, unbatched })
    }

    /// A state tensor `[L·D, B, H]` (or `[L·D, H]` unbatched), checked, as `[L·D, B, H]`.
    fn check_state(&self, what: &str, s: &Tensor, batch: usize, unbatched: bool) -> Result<Tensor> {
        let c = &self.cfg;
        let ld = c.num_layers * c.num_directions();
        let want: Vec<usize> = if unbatched {
            vec![ld, c.hidden_size]
        } else {
            vec![ld, batch, c.hidden_size]
        };
        if s.dims() != want.as_slice() {
            return Err(Error::invalid(
                self.kind.name(),
                format!(
                    "{what} has shape {:?}, expected {want:?} (num_layers·num_directions, {}hidden_size)",
                    s.dims(),
                    if unbatched { "" } else { "batch, " }
                ),
            ));
        }
        if unbatched {
            s.unsqueeze(1)
        } else {
            Ok(s.clone())
        }
    }

    /// Run every layer. `h0`/`c0` are `[L·D, B, H]`; returns the time-major output
    /// `[T, B, D·H]` and the final `h` (and `c` for the LSTM), each `[L·D, B, H]`.
    fn run(
        &self,
        x: &Tensor,
        h0: Option<&Tensor>,
        c0: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let c = &self.cfg;
        let (t_len, batch) = (x.dims()[0], x.dims()[1]);
        let hsz = c.hidden_size;
        let zeros = || Tensor::zeros((batch, hsz), x.dtype(), x.device());
        let mut layer_in = x.clone();
        let mut h_n = Vec::new();
        let mut c_n = Vec::new();
        for (layer, dirs) in self.weights.iter().enumerate() {
            if layer > 0 && c.dropout > 0.0 {
                layer_in = layer_in.dropout(c.dropout, train)?;
            }
            let feat = layer_in.dims()[2];
            let flat = layer_in.reshape((t_len * batch, feat))?;
            let mut outs = Vec::with_capacity(dirs.len());
            for (d, w) in dirs.iter().enumerate() {
                let idx = layer * dirs.len() + d;
                let state = |s: Option<&Tensor>| -> Result<Tensor> {
                    match s {
                        Some(s) => s.narrow(0, idx, 1)?.squeeze(0),
                        None => zeros(),
                    }
                };
                let fold = self.kind == Kind::Lstm;
                let gx = w.project_input(&flat, fold)?.reshape((
                    t_len,
                    batch,
                    self.kind.gates() * hsz,
                ))?;
                let reverse = d == 1;
                let h = state(h0)?;
                // The position of the last step: where the final state is read.
                let last = if reverse { 0 } else { t_len - 1 };
                let at_last = |t: &Tensor| t.narrow(0, last, 1)?.squeeze(0);
                if self.kind == Kind::Lstm {
                    let c = state(c0)?;
                    let hc = Tensor::apply_custom(
                        &[&gx, &h, &c, &w.weight_hh],
                        Arc::new(LstmScan { reverse }),
                    )?;
                    let hs = hc.narrow(2, 0, hsz)?;
                    h_n.push(at_last(&hs)?);
                    c_n.push(at_last(&hc.narrow(2, hsz, hsz)?)?);
                    outs.push(hs);
                } else {
                    let mut ins = vec![&gx, &h, &w.weight_hh];
                    if let Some(b) = &w.bias_hh {
                        ins.push(b);
                    }
                    let hs = Tensor::apply_custom(&ins, Arc::new(GruScan { reverse }))?;
                    h_n.push(at_last(&hs)?);
                    outs.push(hs);
                }
            }
            layer_in = if outs.len() == 1 {
                outs.pop().expect("one direction")
            } else {
                Tensor::cat(&outs.iter().collect::<Vec<_>>(), 2)?
            };
        }
        let h_n = Tensor::stack(&h_n.iter().collect::<Vec<_>>(), 0)?;
        let c_n = if c_n.is_empty() {
            None
        } else {
            Some(Tensor::stack(&c_n.iter().collect::<Vec<_>>(), 0)?)
        };
        Ok((layer_in, h_n, c_n))
    }

    /// Back to the caller's layout: batch-first or unbatched output, unbatched states.
    fn finish(&self, out: Tensor, unbatched: bool) -> Result<Tensor> {
        if unbatched {
            out.squeeze(1)
        } else if self.cfg.batch_first {
            out.transpose(0, 1)?.contiguous()
        } else {
            Ok(out)
        }
    }

    fn finish_state(s: Tensor, unbatched: bool) -> Result<Tensor> {
        if unbatched {
            s.squeeze(1)
        } else {
            Ok(s)
        }
    }
}

/// The `(h, c)` state of an LSTM: `[num_layers·num_directions, B, H]` each (`[L·D, H]` for an
/// unbatched input; `[B, H]` for a cell).
#[derive(Clone, Debug)]
pub struct LstmState {
    pub h: Tensor,
    pub c: Tensor,
}

/// `torch.nn.LSTM`. Parameter names `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`,
/// `bias_hh_l{k}` (with `_reverse` for the backward direction); gate order i, f, g, o.
#[derive(Clone, Debug)]
pub struct Lstm {
    stack: Stack,
}

impl Lstm {
    pub fn build(vb: &VarBuilder, cfg: RnnConfig) -> Result<Lstm> {
        Ok(Lstm {
            stack: Stack::build(vb, Kind::Lstm, cfg)?,
        })
    }

    pub fn config(&self) -> &RnnConfig {
        &self.stack.cfg
    }

    /// The weights of `layer` in `direction` (0 forward, 1 reverse).
    pub fn weights(&self, layer: usize, direction: usize) -> Option<&RnnWeights> {
        self.stack.weights.get(layer)?.get(direction)
    }

    /// Run the sequence `x` (`[T, B, in]`, `[B, T, in]` when batch-first, or unbatched
    /// `[T, in]`) from `state` (zeros when `None`). Returns the output `[T, B, D·H]` (same
    /// layout convention as the input) and the final state. `train` enables the inter-layer
    /// dropout.
    pub fn forward(
        &self,
        x: &Tensor,
        state: Option<&LstmState>,
        train: bool,
    ) -> Result<(Tensor, LstmState)> {
        let s = &self.stack;
        let p = s.prepare(x)?;
        let batch = p.x.dims()[1];
        let (h0, c0) = match state {
            Some(st) => (
                Some(s.check_state("h0", &st.h, batch, p.unbatched)?),
                Some(s.check_state("c0", &st.c, batch, p.unbatched)?),
            ),
            None => (None, None),
        };
        let (out, h, c) = s.run(&p.x, h0.as_ref(), c0.as_ref(), train)?;
        let c = c.expect("an LSTM has a cell state");
        Ok((
            s.finish(out, p.unbatched)?,
            LstmState {
                h: Stack::finish_state(h, p.unbatched)?,
                c: Stack::finish_state(c, p.unbatched)?,
            },
        ))
    }
}

/// `torch.nn.GRU`. Parameter names as [`Lstm`]; gate order r, z, n with
/// `n = tanh(W_in·x + b_in + r·(W_hn·h + b_hn))`.
#[derive(Clone, Debug)]
pub struct Gru {
    stack: Stack,
}

impl Gru {
    pub fn build(vb: &VarBuilder, cfg: RnnConfig) -> Result<Gru> {
        Ok(Gru {
            stack: Stack::build(vb, Kind::Gru, cfg)?,
        })
    }

    pub fn config(&self) -> &RnnConfig {
        &self.stack.cfg
    }

    /// The weights of `layer` in `direction` (0 forward, 1 reverse).
    pub fn weights(&self, layer: usize, direction: usize) -> Option<&RnnWeights> {
        self.stack.weights.get(layer)?.get(direction)
    }

    /// Like [`Lstm::forward`], with the single state `h: [L·D, B, H]`.
    pub fn forward(
        &self,
        x: &Tensor,
        h0: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let s = &self.stack;
        let p = s.prepare(x)?;
        let batch = p.x.dims()[1];
        let h0 = match h0 {
            Some(h) => Some(s.check_state("h0", h, batch, p.unbatched)?),
            None => None,
        };
        let (out, h, _) = s.run(&p.x, h0.as_ref(), None, train)?;
        Ok((
            s.finish(out, p.unbatched)?,
            Stack::finish_state(h, p.unbatched)?,
        ))
    }
}

/// Shared by the cells: the input `[B, in]` or `[in]` and a state of the matching shape.
fn cell_input(op: &'static str, w: &RnnWeights, x: &Tensor) -> Result<(Tensor, bool)> {
    let input = w.weight_ih.dims()[1];
    if !(x.rank() == 1 || x.rank() == 2) || x.dims()[x.rank() - 1] != input {
        return Err(Error::invalid(
            op,
            format!("input {:?} must be [B, {input}] or [{input}]", x.dims()),
        ));
    }
    if x.rank() == 1 {
        Ok((x.unsqueeze(0)?, true))
    } else {
        Ok((x.clone(), false))
    }
}

fn cell_state(
    op: &'static str,
    what: &str,
    s: Option<&Tensor>,
    x: &Tensor,
    hidden: usize,
    unbatched: bool,
) -> Result<Tensor> {
    let batch = x.dims()[0];
    match s {
        None => Tensor::zeros((batch, hidden), x.dtype(), x.device()),
        Some(s) => {
            let want: Vec<usize> = if unbatched {
                vec![hidden]
            } else {
                vec![batch, hidden]
            };
            if s.dims() != want.as_slice() {
                return Err(Error::invalid(
                    op,
                    format!("{what} has shape {:?}, expected {want:?}", s.dims()),
                ));
            }
            s.reshape((batch, hidden))
        }
    }
}

fn cell_out(t: Tensor, unbatched: bool) -> Result<Tensor> {
    if unbatched {
        t.squeeze(0)
    } else {
        Ok(t)
    }
}

/// `torch.nn.LSTMCell`: one step. Names `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
#[derive(Clone, Debug)]
pub struct LstmCell {
    pub weights: RnnWeights,
    hidden: usize,
}

impl LstmCell {
    pub fn build(
        vb: &VarBuilder,
        input_size: usize,
        hidden_size: usize,
        bias: bool,
    ) -> Result<LstmCell> {
        RnnConfig::new(input_size, hidden_size).validate("LSTMCell")?;
        Ok(LstmCell {
            weights: RnnWeights::build(vb, "", 4, input_size, hidden_size, bias)?,
            hidden: hidden_size,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// `x: [B, in]` (or `[in]`), state `[B, H]` each (zeros when `None`) → the next state.
    pub fn forward(&self, x: &Tensor, state: Option<&LstmState>) -> Result<LstmState> {
        let (x, unbatched) = cell_input("LSTMCell", &self.weights, x)?;
        let h = cell_state(
            "LSTMCell",
            "h",
            state.map(|s| &s.h),
            &x,
            self.hidden,
            unbatched,
        )?;
        let c = cell_state(
            "LSTMCell",
            "c",
            state.map(|s| &s.c),
            &x,
            self.hidden,
            unbatched,
        )?;
        let w = &self.weights;
        let gx = w.project_input(&x, false)?;
        let (h, c) = lstm_step(
            &gx,
            &h,
            &c,
            &w.weight_hh.t()?,
            w.bias_hh.as_ref(),
            self.hidden,
        )?;
        Ok(LstmState {
            h: cell_out(h, unbatched)?,
            c: cell_out(c, unbatched)?,
        })
    }
}

/// `torch.nn.GRUCell`: one step. Names `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
#[derive(Clone, Debug)]
pub struct GruCell {
    pub weights: RnnWeights,
    hidden: usize,
}

impl GruCell {
    pub fn build(
        vb: &VarBuilder,
        input_size: usize,
        hidden_size: usize,
        bias: bool,
    ) -> Result<GruCell> {
        RnnConfig::new(input_size, hidden_size).validate("GRUCell")?;
        Ok(GruCell {
            weights: RnnWeights::build(vb, "", 3, input_size, hidden_size, bias)?,
            hidden: hidden_size,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// `x: [B, in]` (or `[in]`), `h: [B, H]` (zeros when `None`) → the next `h`.
    pub fn forward(&self, x: &Tensor, h: Option<&Tensor>) -> Result<Tensor> {
        let (x, unbatched) = cell_input("GRUCell", &self.weights, x)?;
        let h = cell_state("GRUCell", "h", h, &x, self.hidden, unbatched)?;
        let w = &self.weights;
        let gx = w.project_input(&x, false)?;
        let h = gru_step(&gx, &h, &w.weight_hh.t()?, w.bias_hh.as_ref(), self.hidden)?;
        cell_out(h, unbatched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::var_builder::VarMap;
    use tensor_core::DType;

    fn vb(map: &VarMap) -> VarBuilder {
        VarBuilder::from_varmap(map, DType::F64, &tensor_cpu::device())
    }

    #[test]
    fn names_and_shapes_follow_torch() -> Result<()> {
        let map = VarMap::new();
        let cfg = RnnConfig::new(3, 5).num_layers(2).bidirectional(true);
        let lstm = Lstm::build(&vb(&map).pp("rnn"), cfg)?;
        let names: Vec<String> = map.all_vars().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names.len(), 16);
        for n in [
            "rnn.weight_ih_l0",
            "rnn.weight_hh_l0_reverse",
            "rnn.bias_ih_l1",
            "rnn.bias_hh_l1_reverse",
        ] {
            assert!(names.iter().any(|k| k == n), "{n} missing from {names:?}");
        }
        assert_eq!(map.get_var("rnn.weight_ih_l1").unwrap().dims(), &[20, 10]);
        let bound = 1.0 / 5f64.sqrt();
        for (_, v) in map.all_vars() {
            assert!(v.to_vec::<f64>()?.iter().all(|x| x.abs() <= bound));
        }
        let x = Tensor::randn(0.0, 1.0, (4, 2, 3), DType::F64, &tensor_cpu::device())?;
        let (y, st) = lstm.forward(&x, None, false)?;
        assert_eq!(y.dims(), &[4, 2, 10]);
        assert_eq!(st.h.dims(), &[4, 2, 5]);
        assert_eq!(st.c.dims(), &[4, 2, 5]);
        // Unbatched input gives unbatched outputs, equal to the batch-of-one run.
        let x0 = x.narrow(1, 0, 1)?.squeeze(1)?;
        let (y0, st0) = lstm.forward(&x0, None, false)?;
        assert_eq!(y0.dims(), &[4, 10]);
        assert_eq!(st0.h.dims(), &[4, 5]);
        let want = y.narrow(1, 0, 1)?.squeeze(1)?.to_vec2::<f64>()?;
        assert_eq!(y0.to_vec2::<f64>()?, want);
        Ok(())
    }

    #[test]
    fn cells_match_one_step_of_the_layer() -> Result<()> {
        let dev = tensor_cpu::device();
        let map = VarMap::new();
        let lstm = Lstm::build(&vb(&map), RnnConfig::new(3, 4))?;
        let gru = Gru::build(&vb(&map).pp("gru"), RnnConfig::new(3, 4))?;
        // Cells built over the same tensors, renamed.
        let mut t = std::collections::HashMap::new();
        for (k, v) in map.all_vars() {
            let k = k.replace("_l0", "");
            t.insert(k, v.as_tensor().clone());
        }
        let cells = VarBuilder::from_tensors(t, DType::F64, &dev);
        let lcell = LstmCell::build(&cells, 3, 4, true)?;
        let gcell = GruCell::build(&cells.pp("gru"), 3, 4, true)?;
        let x = Tensor::randn(0.0, 1.0, (1, 2, 3), DType::F64, &dev)?;
        let h0 = Tensor::randn(0.0, 1.0, (1, 2, 4), DType::F64, &dev)?;
        let c0 = Tensor::randn(0.0, 1.0, (1, 2, 4), DType::F64, &dev)?;
        let (_, st) = lstm.forward(
            &x,
            Some(&LstmState {
                h: h0.clone(),
                c: c0.clone(),
            }),
            false,
        )?;
        let cs = lcell.forward(
            &x.squeeze(0)?,
            Some(&LstmState {
                h: h0.squeeze(0)?,
                c: c0.squeeze(0)?,
            }),
        )?;
        let close = |a: &Tensor, b: &Tensor| -> Result<()> {
            let (a, b) = (a.to_f64_vec()?, b.to_f64_vec()?);
            assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12));
            Ok(())
        };
        close(&st.h.squeeze(0)?, &cs.h)?;
        close(&st.c.squeeze(0)?, &cs.c)?;
        let (_, h) = gru.forward(&x, Some(&h0), false)?;
        let hc = gcell.forward(&x.squeeze(0)?, Some(&h0.squeeze(0)?))?;
        close(&h.squeeze(0)?, &hc)?;
        // Unbatched cell input.
        let hu = gcell.forward(&x.squeeze(0)?.narrow(0, 1, 1)?.squeeze(0)?, None)?;
        assert_eq!(hu.dims(), &[4]);
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let dev = tensor_cpu::device();
        let map = VarMap::new();
        let cfg = RnnConfig::new(3, 4).num_layers(2);
        let gru = Gru::build(&vb(&map), cfg)?;
        let x = Tensor::zeros((5, 2, 4), DType::F64, &dev)?;
        let e = gru.forward(&x, None, false).unwrap_err().to_string();
        assert!(e.contains("input_size = 3"), "{e}");
        let x = Tensor::zeros((5, 2, 3), DType::F64, &dev)?;
        let h = Tensor::zeros((1, 2, 4), DType::F64, &dev)?;
        let e = gru.forward(&x, Some(&h), false).unwrap_err().to_string();
        assert!(e.contains("h0") && e.contains("[2, 2, 4]"), "{e}");
        let empty = Tensor::zeros((0, 2, 3), DType::F64, &dev)?;
        assert!(gru.forward(&empty, None, false).is_err());
        assert!(Gru::build(&vb(&VarMap::new()), RnnConfig::new(3, 4).dropout(1.5)).is_err());
        let cell = LstmCell::build(&vb(&VarMap::new()), 3, 4, false)?;
        assert!(cell
            .forward(&Tensor::zeros((2, 4), DType::F64, &dev)?, None)
            .is_err());
        let bad = LstmState {
            h: Tensor::zeros((3, 4), DType::F64, &dev)?,
            c: Tensor::zeros((2, 4), DType::F64, &dev)?,
        };
        let e = cell
            .forward(&Tensor::zeros((2, 3), DType::F64, &dev)?, Some(&bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[2, 4]"), "{e}");
        Ok(())
    }

    #[test]
    fn dropout_only_in_training() -> Result<()> {
        let dev = tensor_cpu::device();
        let map = VarMap::new();
        let cfg = RnnConfig::new(3, 4).num_layers(2).dropout(0.5);
        let lstm = Lstm::build(&vb(&map), cfg)?;
        let x = Tensor::randn(0.0, 1.0, (3, 2, 3), DType::F64, &dev)?;
        let (a, _) = lstm.forward(&x, None, false)?;
        let (b, _) = lstm.forward(&x, None, false)?;
        assert_eq!(a.to_f64_vec()?, b.to_f64_vec()?);
        let (c, _) = lstm.forward(&x, None, true)?;
        assert_ne!(a.to_f64_vec()?, c.to_f64_vec()?);
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        use tensor_core::conformance::gradcheck;
        let dev = tensor_cpu::device();
        let cfg = RnnConfig::new(2, 2).num_layers(2).bidirectional(true);
        for kind in [Kind::Lstm, Kind::Gru] {
            let map = VarMap::new();
            Stack::build(&vb(&map), kind, cfg)?;
            let names: Vec<(String, Vec<usize>)> = map
                .all_vars()
                .into_iter()
                .map(|(k, v)| (k, v.dims().to_vec()))
                .collect();
            let mut inputs = vec![
                gradcheck::input((3, 2, 2), &dev, 1)?,
                gradcheck::input((4, 2, 2), &dev, 2)?,
                gradcheck::input((4, 2, 2), &dev, 3)?,
            ];
            for (i, (_, shape)) in names.iter().enumerate() {
                inputs.push(gradcheck::input(shape.clone(), &dev, 10 + i as u64)?);
            }
            gradcheck::check_grad(kind.name(), &inputs, |t| {
                let weights = names
                    .iter()
                    .zip(&t[3..])
                    .map(|((k, _), v)| (k.clone(), v.clone()))
                    .collect();
                let vb = VarBuilder::from_tensors(weights, DType::F64, &dev);
                match kind {
                    Kind::Lstm => {
                        let state = LstmState {
                            h: t[1].clone(),
                            c: t[2].clone(),
                        };
                        let (y, st) = Lstm::build(&vb, cfg)?.forward(&t[0], Some(&state), false)?;
                        Tensor::cat(
                            &[
                                &y.flatten_all()?,
                                &st.h.flatten_all()?,
                                &st.c.flatten_all()?,
                            ],
                            0,
                        )
                    }
                    Kind::Gru => {
                        let (y, h) = Gru::build(&vb, cfg)?.forward(&t[0], Some(&t[1]), false)?;
                        // c0 is unused by a GRU: its gradient must be zero.
                        Tensor::cat(&[&y.flatten_all()?, &h.flatten_all()?], 0)
                    }
                }
            })?;
        }
        Ok(())
    }
}
