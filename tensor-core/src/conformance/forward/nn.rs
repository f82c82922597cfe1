//! Forward cases: softmax and scaled-dot-product attention against f64 references.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("softmax", |d| {
            let ninf = f64::NEG_INFINITY;
            let v = [1.0, 2.0, 3.0, 0.0, ninf, 0.0];
            let s = (-2f64).exp() + (-1f64).exp() + 1.0;
            let want = [(-2f64).exp() / s, (-1f64).exp() / s, 1.0 / s, 0.5, 0.0, 0.5];
            let lwant = [
                -2.0 - s.ln(),
                -1.0 - s.ln(),
                -s.ln(),
                -(2f64.ln()),
                ninf,
                -(2f64.ln()),
            ];
            for dt in FLOATS {
                let x = t(d, &v, (2, 3), dt)?;
                expect(
                    &format!("softmax(-1) {dt}"),
                    &x.softmax(-1)?,
                    &[2, 3],
                    dt,
                    &want,
                    tol(dt),
                )?;
                expect(
                    &format!("log_softmax(-1) {dt}"),
                    &x.log_softmax(-1)?,
                    &[2, 3],
                    dt,
                    &lwant,
                    tol(dt),
                )?;
                expect(
                    &format!("softmax(0) of transpose {dt}"),
                    &x.t()?.softmax(0)?,
                    &[3, 2],
                    dt,
                    &[want[0], want[3], want[1], want[4], want[2], want[5]],
                    tol(dt),
                )?;
            }
            // Large logits must not overflow.
            let x = t(d, &[1000.0, 1000.0, -1000.0], 3, DType::F32)?;
            expect(
                "softmax of large logits",
                &x.softmax(0)?,
                &[3],
                DType::F32,
                &[0.5, 0.5, 0.0],
                (1e-7, 1e-6),
            )
        }),
        case("attention", attention),
    ]
}

// ---- attention against a naive reference ------------------------------------------------------

/// softmax(q·kᵀ·scale + masks + alibi + bias)·v per (b, h, i), with query i at position
/// Lk − Lq + i and KV head h / (Hq / Hkv); fully masked rows give zeros.
#[allow(clippy::too_many_arguments)]
fn naive_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    sq: [usize; 4],
    sk: [usize; 4],
    dv: usize,
    p: &AttentionParams,
    slopes: &[f64],
    bias: Option<&[f64]>,
) -> Vec<f64> {
    let [b, hq, lq, dd] = sq;
    let [_, hkv, lk, _] = sk;
    let g = hq / hkv;
    let mut out = vec![0.0; b * hq * lq * dv];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / g;
            for i in 0..lq {
                let pos = lk as i64 - lq as i64 + i as i64;
                let mut s = vec![f64::NEG_INFINITY; lk];
                for (j, sj) in s.iter_mut().enumerate() {
                    let jj = j as i64;
                    if (p.causal && jj > pos)
                        || p.window.is_some_and(|w| (pos - jj).abs() >= w as i64)
                    {
                        continue;
                    }
                    let qo = ((bi * hq + h) * lq + i) * dd;
                    let ko = ((bi * hkv + kh) * lk + j) * dd;
                    let mut dot: f64 =
                        (0..dd).map(|x| q[qo + x] * k[ko + x]).sum::<f64>() * p.scale;
                    if !slopes.is_empty() {
                        dot += slopes[h] * (jj - pos) as f64;
                    }
                    if let Some(bias) = bias {
                        dot += bias[((bi * hq + h) * lq + i) * lk + j];
                    }
                    *sj = dot;
                }
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..dv {
                    let o = ((bi * hq + h) * lq + i) * dv + c;
                    out[o] = (0..lk)
                        .map(|j| e[j] / z * v[((bi * hkv + kh) * lk + j) * dv + c])
                        .sum();
                }
            }
        }
    }
    out
}

fn attention(d: &Device) -> Result<()> {
    struct Cfg {
        name: &'static str,
        sq: [usize; 4],
        sk: [usize; 4],
        dv: usize,
        causal: bool,
        window: Option<usize>,
        alibi: bool,
        bias: bool,
    }
    let cfgs = [
        Cfg {
            name: "plain",
            sq: [2, 2, 3, 8],
            sk: [2, 2, 5, 8],
            dv: 4,
            causal: false,
            window: None,
            alibi: false,
            bias: false,
        },
        Cfg {
            name: "causal",
            sq: [1, 2, 6, 4],
            sk: [1, 2, 6, 4],
            dv: 4,
            causal: true,
            window: None,
            alibi: false,
            bias: false,
        },
        Cfg {
            name: "causal Lq<Lk",
            sq: [1, 2, 2, 4],
            sk: [1, 2, 7, 4],
            dv: 3,
            causal: true,
            window: None,
            alibi: false,
            bias: false,
        },
        Cfg {
            name: "GQA causal",
            sq: [1, 6, 4, 4],
            sk: [1, 2, 4, 4],
            dv: 5,
            causal: true,
            window: None,
            alibi: false,
            bias: false,
        },
        Cfg {
            name: "window",
            sq: [1, 1, 6, 4],
            sk: [1, 1, 6, 4],
            dv: 2,
            causal: false,
            window: Some(2),
            alibi: false,
            bias: false,
        },
        Cfg {
            name: "causal window",
            sq: [1, 2, 5, 4],
            sk: [1, 2, 5, 4],
            dv: 4,
            causal: true,
            window: Some(3),
            alibi: false,
            bias: false,
        },
        Cfg {
            name: "alibi causal",
            sq: [1, 2, 4, 4],
            sk: [1, 2, 4, 4],
            dv: 4,
            causal: true,
            window: None,
            alibi: true,
            bias: false,
        },
        Cfg {
            name: "bias with -inf",
            sq: [2, 2, 3, 4],
            sk: [2, 2, 4, 4],
            dv: 3,
            causal: false,
            window: None,
            alibi: false,
            bias: true,
        },
    ];
    for dt in FLOATS {
        for c in &cfgs {
            let sv = [c.sk[0], c.sk[1], c.sk[2], c.dv];
            let n = |s: [usize; 4]| s.iter().product::<usize>();
            let (qv, kv, vv) = (
                det_values(n(c.sq), 1),
                det_values(n(c.sk), 2),
                det_values(n(sv), 3),
            );
            let slopes: Vec<f64> = if c.alibi {
                (0..c.sq[1]).map(|h| 0.5f64.powi(h as i32 + 1)).collect()
            } else {
                vec![]
            };
            let bias: Option<Vec<f64>> = c.bias.then(|| {
                let len = c.sq[0] * c.sq[1] * c.sq[2] * c.sk[2];
                let mut b = det_values(len, 4);
                for (i, x) in b.iter_mut().enumerate() {
                    // Head 0's query 1 fully masked, plus scattered −inf entries.
                    let (h, r) = ((i / (c.sq[2] * c.sk[2])) % c.sq[1], (i / c.sk[2]) % c.sq[2]);
                    if (h == 0 && r == 1) || i % 5 == 0 {
                        *x = f64::NEG_INFINITY;
                    }
                }
                b
            });
            let p = AttentionParams {
                scale: 1.0 / (c.sq[3] as f64).sqrt(),
                causal: c.causal,
                window: c.window,
                alibi_slopes: if c.alibi {
                    Some(t(d, &slopes, c.sq[1], dt)?)
                } else {
                    None
                },
                bias: match &bias {
                    Some(b) => Some(t(
                        d,
                        b,
                        Shape::from(vec![c.sq[0], c.sq[1], c.sq[2], c.sk[2]]),
                        dt,
                    )?),
                    None => None,
                },
            };
            let r = |v: &[f64]| rounded(v, dt);
            let want = naive_attention(
                &r(&qv),
                &r(&kv),
                &r(&vv),
                c.sq,
                c.sk,
                c.dv,
                &p,
                &r(&slopes),
                bias.as_deref().map(r).as_deref(),
            );
            let q = t(d, &qv, c.sq, dt)?;
            let k = t(d, &kv, c.sk, dt)?;
            let v = t(d, &vv, sv, dt)?;
            let got = q.scaled_dot_product_attention(&k, &v, &p)?;
            let tl = match dt {
                DType::F64 => (1e-12, 1e-12),
                DType::F32 => (1e-5, 1e-5),
                DType::F16 => (3e-3, 3e-3),
                _ => (2e-2, 2e-2),
            };
            expect(
                &format!("attention {} {dt}", c.name),
                &got,
                &[c.sq[0], c.sq[1], c.sq[2], c.dv],
                dt,
                &want,
                tl,
            )?;
            // The same with a non-contiguous q (stored transposed).
            let qt = t(d, &qv, c.sq, dt)?
                .transpose(2, 3)?
                .contiguous()?
                .transpose(2, 3)?;
            expect(
                &format!("attention {} (strided q) {dt}", c.name),
                &qt.scaled_dot_product_attention(&k, &v, &p)?,
                &[c.sq[0], c.sq[1], c.sq[2], c.dv],
                dt,
                &want,
                tl,
            )?;
        }
    }
    Ok(())
}
