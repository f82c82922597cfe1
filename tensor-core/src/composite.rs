//! Default bodies of the backend trait's fused ops, composed from primitives. They are what a
//! new backend gets for free, and what autograd differentiates through when a fused op has
//! no backward rule of its own. Half-precision inputs are computed in f32, as PyTorch does.

use crate::{
    AttentionParams, ConvParams, CrossEntropyParams, DType, Error, Result, Tensor, UnfoldParams,
};

/// Run `f` in f32 for half-precision inputs, casting the result back.
fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => f(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
        _ => f(x),
    }
}

fn upcast(t: Option<&Tensor>) -> Result<Option<Tensor>> {
    t.map(|t| match t.dtype() {
        DType::F16 | DType::BF16 => t.to_dtype(DType::F32),
        _ => Ok(t.clone()),
    })
    .transpose()
}

pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| {
        let m = x.detach().max_keepdim(-1)?;
        let e = x.sub(&m)?.exp()?;
        e.div(&e.sum_keepdim(-1)?)
    })
}

pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| x.sub(&x.logsumexp_keepdim(-1)?))
}

pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let (w, b) = (upcast(weight)?, upcast(bias)?);
    in_f32(x, |x| {
        let mean = x.mean_keepdim(-1)?;
        let xc = x.sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(-1)?;
        let mut y = xc.mul(&var.affine(1.0, eps)?.rsqrt()?)?;
        if let Some(w) = &w {
            y = y.mul(w)?;
        }
        if let Some(b) = &b {
            y = y.add(b)?;
        }
        Ok(y)
    })
}

pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let w = upcast(weight)?;
    in_f32(x, |x| {
        let ms = x.sqr()?.mean_keepdim(-1)?;
        let y = x.mul(&ms.affine(1.0, eps)?.rsqrt()?)?;
        match &w {
            Some(w) => y.mul(w),
            None => Ok(y),
        }
    })
}

/// Gradients of [`rms_norm`]: with `x̂ = x·r`, `r = rsqrt(mean(x²) + eps)` and `h = g·w`,
/// `∂x = r·(h − x̂·mean(h·x̂))` and `∂w = Σ_rows g·x̂`.
pub fn rms_norm_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    g: &Tensor,
    eps: f64,
) -> Result<(Tensor, Option<Tensor>)> {
    let dt = x.dtype();
    let f32_of = |t: &Tensor| match t.dtype() {
        DType::F16 | DType::BF16 => t.to_dtype(DType::F32),
        _ => Ok(t.clone()),
    };
    let (xf, gf, wf) = (f32_of(x)?, f32_of(g)?, upcast(weight)?);
    let r = xf.sqr()?.mean_keepdim(-1)?.affine(1.0, eps)?.rsqrt()?;
    let xhat = xf.mul(&r)?;
    let h = match &wf {
        Some(w) => gf.mul(w)?,
        None => gf.clone(),
    };
    let dot = h.mul(&xhat)?.mean_keepdim(-1)?;
    let gx = h.sub(&xhat.mul(&dot)?)?.mul(&r)?.to_dtype(dt)?;
    let gw = match weight {
        Some(w) => {
            let d = x.dim(-1)?;
            let rows = x.elem_count() / d.max(1);
            Some(
                gf.mul(&xhat)?
                    .reshape((rows, d))?
                    .sum(0)?
                    .to_dtype(w.dtype())?,
            )
        }
        None => None,
    };
    Ok((gx, gw))
}

/// Gradients of [`layer_norm`]: with `x̂ = (x − mean)·r`, `r = rsqrt(var + eps)` and
/// `h = g·w`, `∂x = r·(h − mean(h) − x̂·mean(h·x̂))`, `∂w = Σ_rows g·x̂`, `∂b = Σ_rows g`.
pub fn layer_norm_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    has_bias: bool,
    g: &Tensor,
    eps: f64,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let dt = x.dtype();
    let f32_of = |t: &Tensor| match t.dtype() {
        DType::F16 | DType::BF16 => t.to_dtype(DType::F32),
        _ => Ok(t.clone()),
    };
    let (xf, gf, wf) = (f32_of(x)?, f32_of(g)?, upcast(weight)?);
    let xc = xf.sub(&xf.mean_keepdim(-1)?)?;
    let r = xc.sqr()?.mean_keepdim(-1)?.affine(1.0, eps)?.rsqrt()?;
    let xhat = xc.mul(&r)?;
    let h = match &wf {
        Some(w) => gf.mul(w)?,
        None => gf.clone(),
    };
    let gx = h
        .sub(&h.mean_keepdim(-1)?)?
        .sub(&xhat.mul(&h.mul(&xhat)?.mean_keepdim(-1)?)?)?
        .mul(&r)?
        .to_dtype(dt)?;
    let d = x.dim(-1)?;
    let rows = x.elem_count() / d.max(1);
    let col_sum = |t: &Tensor| t.reshape((rows, d))?.sum(0)?.to_dtype(dt);
    let gw = match weight {
        Some(_) => Some(col_sum(&gf.mul(&xhat)?)?),
        None => None,
    };
    let gb = if has_bias { Some(col_sum(&gf)?) } else { None };
    Ok((gx, gw, gb))
}

/// Gradient of the activations whose derivative is a function of the input alone and takes
/// several ops to write (`gelu`, `gelu_tanh`, `silu`): `g · f'(x)`, computed in f32 for
/// half-precision inputs.
pub fn unary_backward(op: crate::UnaryOp, x: &Tensor, g: &Tensor) -> Result<Tensor> {
    use crate::UnaryOp as U;
    let gf = match g.dtype() {
        DType::F16 | DType::BF16 => g.to_dtype(DType::F32)?,
        _ => g.clone(),
    };
    let d = in_f32(x, |x| match op {
        U::Gelu => {
            // d/dx x·Φ(x) = Φ(x) + x·φ(x)
            let cdf = x
                .affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?
                .erf()?
                .affine(0.5, 0.5)?;
            let pdf = x
                .sqr()?
                .affine(-0.5, 0.0)?
                .exp()?
                .affine(1.0 / (2.0 * std::f64::consts::PI).sqrt(), 0.0)?;
            cdf.add(&x.mul(&pdf)?)?.mul(&gf)
        }
        U::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let x2 = x.sqr()?;
            let t = x.mul(&x2.affine(0.044715 * c, c)?)?.tanh()?;
            let dinner = x2.affine(3.0 * 0.044715 * c, c)?;
            let sech2 = t.sqr()?.affine(-1.0, 1.0)?;
            let d = t
                .affine(0.5, 0.5)?
                .add(&x.mul(&sech2)?.mul(&dinner)?.affine(0.5, 0.0)?)?;
            d.mul(&gf)
        }
        U::Silu => {
            let s = x.sigmoid()?;
            let d = s.mul(&x.mul(&s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?;
            d.mul(&gf)
        }
        other => Err(Error::msg(format!(
            "unary_backward: {other:?} has no fused derivative (only gelu, gelu_tanh, silu)"
        ))),
    })?;
    Ok(d)
}

/// `silu(gate) · up`.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()?.mul(up)
}

/// Gradients of [`silu_mul`]: `∂up = g·silu(gate)`, `∂gate = g·up·σ·(1 + gate·(1 − σ))`.
pub fn silu_mul_backward(gate: &Tensor, up: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let s = gate.sigmoid()?;
    let gup = g.mul(&gate.mul(&s)?)?;
    let ds = s.mul(&gate.mul(&s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?;
    let ggate = g.mul(up)?.mul(&ds)?;
    Ok((ggate, gup))
}

/// Validate class-index targets for `logits: [N, C]`; returns the targets with ignored rows
/// mapped to class 0, and the `[N]` mask (logits' dtype) of rows that count.
fn ce_targets(
    logits: &Tensor,
    targets: &Tensor,
    p: &CrossEntropyParams,
) -> Result<(Tensor, Tensor)> {
    let c = logits.dim(1)? as i64;
    let t = targets.to_host()?.to_f64_vec();
    let mut safe = Vec::with_capacity(t.len());
    let mut mask = Vec::with_capacity(t.len());
    for (i, &v) in t.iter().enumerate() {
        let v = v as i64;
        if Some(v) == p.ignore_index {
            safe.push(0i64);
            mask.push(0.0);
        } else if (0..c).contains(&v) {
            safe.push(v);
            mask.push(1.0);
        } else {
            return Err(Error::invalid(
                "cross_entropy",
                format!("target class {v} out of range for {c} classes (row {i})"),
            ));
        }
    }
    let dev = logits.device();
    let n = t.len();
    Ok((
        Tensor::from_vec(safe, n, dev)?,
        Tensor::from_vec(mask, n, dev)?.to_dtype(logits.dtype())?,
    ))
}

/// Per-row softmax cross-entropy: `lse − (1 − ε)·x[t] − ε·mean(x)`, 0 on ignored rows.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, p: &CrossEntropyParams) -> Result<Tensor> {
    let (safe, mask) = ce_targets(logits, targets, p)?;
    let dt = logits.dtype();
    let loss = in_f32(logits, |x| {
        let eps = p.label_smoothing;
        let lse = x.logsumexp_keepdim(-1)?.squeeze(1)?;
        let xt = x.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
        let mut loss = lse.sub(&xt.affine(1.0 - eps, 0.0)?)?;
        if eps > 0.0 {
            loss = loss.sub(&x.mean(1)?.affine(eps, 0.0)?)?;
        }
        Ok(loss)
    })?;
    loss.mul(&mask)?.to_dtype(dt)
}

/// Gradient of [`cross_entropy`]: `g·(softmax(x) − (1 − ε)·onehot(t) − ε/C)` per row, 0 on
/// ignored rows.
pub fn cross_entropy_backward(
    logits: &Tensor,
    targets: &Tensor,
    g: &Tensor,
    p: &CrossEntropyParams,
) -> Result<Tensor> {
    let (safe, mask) = ce_targets(logits, targets, p)?;
    let (n, c) = (logits.dim(0)?, logits.dim(1)?);
    in_f32(logits, |x| {
        let eps = p.label_smoothing;
        let onehot = x.zeros_like()?.scatter_add(
            &safe.unsqueeze(1)?,
            &Tensor::ones((n, 1), x.dtype(), x.device())?,
            1,
        )?;
        let target = onehot.affine(1.0 - eps, eps / c as f64)?;
        let scale = g.to_dtype(x.dtype())?.mul(&mask.to_dtype(x.dtype())?)?;
        x.softmax(1)?.sub(&target)?.mul(&scale.unsqueeze(1)?)
    })
}

pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let d = x.dims()[3];
    let h = d / 2;
    if interleaved {
        let mut pd = x.dims()[..3].to_vec();
        pd.extend([h, 2]);
        let xp = x.reshape(pd)?;
        let x1 = xp.narrow(-1, 0, 1)?.squeeze(-1)?;
        let x2 = xp.narrow(-1, 1, 1)?.squeeze(-1)?;
        let o1 = x1.mul(cos)?.sub(&x2.mul(sin)?)?;
        let o2 = x2.mul(cos)?.add(&x1.mul(sin)?)?;
        Tensor::stack(&[&o1, &o2], -1)?.reshape(x.shape().clone())
    } else {
        let x1 = x.narrow(-1, 0, h)?;
        let x2 = x.narrow(-1, h, h)?;
        let o1 = x1.mul(cos)?.sub(&x2.mul(sin)?)?;
        let o2 = x2.mul(cos)?.add(&x1.mul(sin)?)?;
        Tensor::cat(&[&o1, &o2], -1)
    }
}

/// Repeat each KV head `g` times so that query head h reads KV head h / g.
fn repeat_kv(t: &Tensor, g: usize) -> Result<Tensor> {
    if g == 1 {
        return Ok(t.clone());
    }
    let (b, h, l, d) = (t.dims()[0], t.dims()[1], t.dims()[2], t.dims()[3]);
    t.unsqueeze(2)?
        .broadcast_as([b, h, g, l, d])?
        .reshape([b, h * g, l, d])
}

/// Sum the gradient of repeated KV heads back onto the shared head.
fn unrepeat_kv(t: &Tensor, g: usize) -> Result<Tensor> {
    if g == 1 {
        return Ok(t.clone());
    }
    let (b, h, l, d) = (t.dims()[0], t.dims()[1], t.dims()[2], t.dims()[3]);
    t.reshape([b, h / g, g, l, d])?.sum(2)
}

/// Additive bias of masking and ALiBi, `[1 or Hq, Lq, Lk]`, or None when there is none.
pub fn mask_and_alibi(
    p: &AttentionParams,
    hq: usize,
    lq: usize,
    lk: usize,
    dtype: DType,
    device: &crate::Device,
) -> Result<Option<Tensor>> {
    let masked = p.causal || p.window.is_some();
    let mut out: Option<Tensor> = None;
    if masked {
        let mut m = vec![0.0; lq * lk];
        for i in 0..lq {
            let pos = lk as i64 - lq as i64 + i as i64;
            for j in 0..lk {
                let jj = j as i64;
                let hidden = (p.causal && jj > pos)
                    || p.window.is_some_and(|w| (pos - jj).abs() >= w as i64);
                if hidden {
                    m[i * lk + j] = f64::NEG_INFINITY;
                }
            }
        }
        out = Some(Tensor::from_f64s(&m, (1, lq, lk), dtype, device)?);
    }
    if let Some(slopes) = &p.alibi_slopes {
        let mut rel = vec![0.0; lq * lk];
        for i in 0..lq {
            let pos = lk as f64 - lq as f64 + i as f64;
            for j in 0..lk {
                rel[i * lk + j] = j as f64 - pos;
            }
        }
        let rel = Tensor::from_f64s(&rel, (1, lq, lk), dtype, device)?;
        let a = slopes.detach().reshape((hq, 1, 1))?.mul(&rel)?;
        out = Some(match out {
            Some(m) => a.add(&m)?,
            None => a,
        });
    }
    Ok(out)
}

/// Scaled scores with bias and masks, `[B, Hq, Lq, Lk]` (materialised: the default path).
fn scores(q: &Tensor, kr: &Tensor, p: &AttentionParams) -> Result<Tensor> {
    let (hq, lq, lk) = (q.dims()[1], q.dims()[2], kr.dims()[2]);
    let mut s = q.matmul(&kr.t()?)?.affine(p.scale, 0.0)?;
    if let Some(m) = mask_and_alibi(p, hq, lq, lk, s.dtype(), s.device())? {
        s = s.add(&m)?;
    }
    if let Some(b) = &p.bias {
        s = s.add(&b.detach())?;
    }
    Ok(s)
}

/// exp(s − lse) with fully masked rows (lse = −inf) giving zeros instead of NaN.
fn probs(s: &Tensor, lse: &Tensor) -> Result<Tensor> {
    let finite = lse.abs()?.lt_scalar(f64::INFINITY)?;
    let safe = finite.where_cond(lse, &lse.zeros_like()?)?;
    s.sub(&safe)?.exp()
}

pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &AttentionParams,
) -> Result<(Tensor, Tensor)> {
    let g = q.dims()[1] / k.dims()[1];
    let (kr, vr) = (repeat_kv(k, g)?, repeat_kv(v, g)?);
    let s = scores(q, &kr, p)?;
    let lse = s.logsumexp_keepdim(-1)?;
    let out = probs(&s, &lse)?.matmul(&vr)?;
    Ok((out, lse.squeeze(-1)?))
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    grad_out: &Tensor,
    p: &AttentionParams,
) -> Result<(Tensor, Tensor, Tensor)> {
    let g = q.dims()[1] / k.dims()[1];
    let (kr, vr) = (repeat_kv(k, g)?, repeat_kv(v, g)?);
    let s = scores(q, &kr, p)?;
    let pr = probs(&s, &lse.unsqueeze(-1)?)?;
    let dv = unrepeat_kv(&pr.t()?.matmul(grad_out)?, g)?;
    let dp = grad_out.matmul(&vr.t()?)?;
    let dsum = grad_out.mul(out)?.sum_keepdim(-1)?;
    let ds = pr.mul(&dp.sub(&dsum)?)?;
    let dq = ds.matmul(&kr)?.affine(p.scale, 0.0)?;
    let dk = unrepeat_kv(&ds.t()?.matmul(q)?, g)?.affine(p.scale, 0.0)?;
    Ok((dq, dk, dv))
}

fn unfold_params(w: &Tensor, p: &ConvParams) -> UnfoldParams {
    UnfoldParams {
        kernel: w.dims()[2..].to_vec(),
        stride: p.stride.clone(),
        padding: p.padding.clone(),
        dilation: p.dilation.clone(),
        pad_value: 0.0,
    }
}

/// Convolution as im2col + (grouped) matmul.
pub fn conv(x: &Tensor, w: &Tensor, p: &ConvParams) -> Result<Tensor> {
    let up = unfold_params(w, p);
    let out_sp = up
        .out_spatial(&x.dims()[2..])
        .ok_or_else(|| crate::Error::invalid("conv", "kernel larger than padded input"))?;
    let (n, cout, g) = (x.dims()[0], w.dims()[0], p.groups);
    let ck = w.elem_count() / cout; // Cin/groups · ∏k
    let cols = x.unfold_patches(&up)?; // [N, Cin·K, L]
    let l = cols.dims()[2];
    let out = if g == 1 {
        w.reshape((cout, ck))?.matmul(&cols)?
    } else {
        let cols = cols.reshape([n, g, ck, l])?;
        w.reshape((g, cout / g, ck))?
            .matmul(&cols)?
            .reshape((n, cout, l))?
    };
    let mut dims = vec![n, cout];
    dims.extend(out_sp);
    out.reshape(dims)
}

/// Transposed convolution as (grouped) matmul + col2im.
pub fn conv_transpose(
    x: &Tensor,
    w: &Tensor,
    p: &ConvParams,
    output_padding: &[usize],
) -> Result<Tensor> {
    // Fold onto the whole unpadded output (every tap lands inside it), append
    // `output_padding` cells that no tap reaches, then crop `padding` from the front.
    let mut up = unfold_params(w, p);
    let nd = up.kernel.len();
    let full: Vec<usize> = (0..nd)
        .map(|i| (x.dims()[2 + i] - 1) * p.stride[i] + p.dilation[i] * (up.kernel[i] - 1) + 1)
        .collect();
    up.padding = vec![0; nd];
    let (n, cin, g) = (x.dims()[0], x.dims()[1], p.groups);
    let l: usize = x.dims()[2..].iter().product();
    let k: usize = w.dims()[2..].iter().product();
    let cout_g = w.dims()[1];
    let cin_g = cin / g;
    // w: [Cin, Cout/g, *k] → per group [Cout/g·K, Cin/g]
    let wg = w.reshape((g, cin_g, cout_g * k))?.transpose(1, 2)?;
    let xg = x.reshape([n, g, cin_g, l])?;
    let cols = wg.matmul(&xg)?.reshape((n, g * cout_g * k, l))?;
    let mut out = cols.fold_patches(&up, &full)?;
    for i in 0..nd {
        let total = full[i] - 2 * p.padding[i] + output_padding[i];
        out =
            out.pad_with_zeros(2 + i, 0, output_padding[i])?
                .narrow(2 + i, p.padding[i], total)?;
    }
    Ok(out)
}

/// `x · wᵀ` through a dequantized copy of `w` (see [`crate::BackendDevice::qmatmul`]).
pub fn qmatmul(x: &Tensor, w: &crate::quant::QTensor) -> Result<Tensor> {
    let wd = w.dequantize(x.device())?;
    let k = w.row_len();
    let mut out_dims = x.dims().to_vec();
    let last = out_dims.len() - 1;
    out_dims[last] = w.rows();
    let m = x.elem_count() / k.max(1);
    x.reshape((m, k))?.matmul(&wd.t()?)?.reshape(out_dims)
}
