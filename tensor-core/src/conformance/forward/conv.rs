//! Forward cases: convolutions and transposed convolutions against naive loops. The gradient
//! checks compare the backend with itself (finite differences of its own forward), so a forward
//! that is wrong in a differentiable way would pass them; these cases pin the values.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("conv_naive", conv_naive),
        case("unfold_fold_naive", unfold_fold_naive),
    ]
}

/// Geometry of one 2-D (or 1-D, as H = 1) convolution, per spatial dim (h, w).
#[derive(Clone, Copy)]
struct Geo {
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
    out_pad: (usize, usize),
    groups: usize,
}

/// `x: [n, cin, h, w]`, `wt: [cout, cin/g, kh, kw]` → `[n, cout, oh, ow]` (row-major vectors).
fn conv_ref(
    x: &[f64],
    xs: [usize; 4],
    wt: &[f64],
    ws: [usize; 4],
    g: Geo,
) -> (Vec<f64>, [usize; 4]) {
    let [n, cin, h, w] = xs;
    let [cout, cin_g, kh, kw] = ws;
    let oh = (h + 2 * g.pad.0 - g.dil.0 * (kh - 1) - 1) / g.stride.0 + 1;
    let ow = (w + 2 * g.pad.1 - g.dil.1 * (kw - 1) - 1) / g.stride.1 + 1;
    let cout_g = cout / g.groups;
    let mut out = vec![0.0; n * cout * oh * ow];
    for b in 0..n {
        for co in 0..cout {
            let grp = co / cout_g;
            for y in 0..oh {
                for xo in 0..ow {
                    let mut acc = 0.0;
                    for ci in 0..cin_g {
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (y * g.stride.0 + i * g.dil.0) as i64 - g.pad.0 as i64;
                                let ix = (xo * g.stride.1 + j * g.dil.1) as i64 - g.pad.1 as i64;
                                if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                    continue;
                                }
                                let c = grp * cin_g + ci;
                                let xv = x[((b * cin + c) * h + iy as usize) * w + ix as usize];
                                acc += xv * wt[((co * cin_g + ci) * kh + i) * kw + j];
                            }
                        }
                    }
                    out[((b * cout + co) * oh + y) * ow + xo] = acc;
                }
            }
        }
    }
    (out, [n, cout, oh, ow])
}

/// `x: [n, cin, h, w]`, `wt: [cin, cout/g, kh, kw]`: every input tap scatters into the output.
fn conv_transpose_ref(
    x: &[f64],
    xs: [usize; 4],
    wt: &[f64],
    ws: [usize; 4],
    g: Geo,
) -> (Vec<f64>, [usize; 4]) {
    let [n, cin, h, w] = xs;
    let [_, cout_g, kh, kw] = ws;
    let cout = cout_g * g.groups;
    let cin_g = cin / g.groups;
    let oh = (h - 1) * g.stride.0 + g.dil.0 * (kh - 1) + g.out_pad.0 + 1 - 2 * g.pad.0;
    let ow = (w - 1) * g.stride.1 + g.dil.1 * (kw - 1) + g.out_pad.1 + 1 - 2 * g.pad.1;
    let mut out = vec![0.0; n * cout * oh * ow];
    for b in 0..n {
        for ci in 0..cin {
            let grp = ci / cin_g;
            for y in 0..h {
                for xi in 0..w {
                    let xv = x[((b * cin + ci) * h + y) * w + xi];
                    for co in 0..cout_g {
                        for i in 0..kh {
                            for j in 0..kw {
                                let oy = (y * g.stride.0 + i * g.dil.0) as i64 - g.pad.0 as i64;
                                let ox = (xi * g.stride.1 + j * g.dil.1) as i64 - g.pad.1 as i64;
                                if oy < 0 || ox < 0 || oy >= oh as i64 || ox >= ow as i64 {
                                    continue;
                                }
                                let c = grp * cout_g + co;
                                out[((b * cout + c) * oh + oy as usize) * ow + ox as usize] +=
                                    xv * wt[((ci * cout_g + co) * kh + i) * kw + j];
                            }
                        }
                    }
                }
            }
        }
    }
    (out, [n, cout, oh, ow])
}

fn geo(stride: usize, pad: usize, dil: usize, out_pad: usize, groups: usize) -> Geo {
    Geo {
        stride: (stride, stride),
        pad: (pad, pad),
        dil: (dil, dil),
        out_pad: (out_pad, out_pad),
        groups,
    }
}

/// The same geometry along W only (a 1-D op seen as H = 1).
fn geo1(stride: usize, pad: usize, dil: usize, out_pad: usize, groups: usize) -> Geo {
    Geo {
        stride: (1, stride),
        pad: (0, pad),
        dil: (1, dil),
        out_pad: (0, out_pad),
        groups,
    }
}

fn conv_naive(d: &Device) -> Result<()> {
    // (name, transposed, 1-D, x [n, c, h, w], w [.., .., kh, kw], geometry)
    type Row = (&'static str, bool, bool, [usize; 4], [usize; 4], Geo);
    let rows: [Row; 10] = [
        (
            "conv2d plain",
            false,
            false,
            [2, 3, 5, 4],
            [4, 3, 3, 2],
            geo(1, 0, 1, 0, 1),
        ),
        (
            "conv2d stride 2 pad 1 dil 2",
            false,
            false,
            [1, 2, 7, 6],
            [3, 2, 3, 3],
            geo(2, 1, 2, 0, 1),
        ),
        (
            "conv2d groups 2",
            false,
            false,
            [1, 4, 5, 5],
            [6, 2, 3, 3],
            geo(1, 1, 1, 0, 2),
        ),
        (
            "conv2d depthwise",
            false,
            false,
            [2, 3, 4, 4],
            [3, 1, 3, 3],
            geo(1, 1, 1, 0, 3),
        ),
        (
            "conv1d stride 3 pad 2 dil 2 groups 2",
            false,
            true,
            [2, 4, 1, 11],
            [6, 2, 1, 3],
            geo1(3, 2, 2, 0, 2),
        ),
        (
            "conv_transpose2d stride 2 pad 1 out_pad 1",
            true,
            false,
            [1, 3, 3, 4],
            [3, 2, 3, 3],
            geo(2, 1, 1, 1, 1),
        ),
        (
            "conv_transpose2d dilation 2 groups 2",
            true,
            false,
            [2, 4, 3, 3],
            [4, 3, 2, 2],
            geo(1, 0, 2, 0, 2),
        ),
        (
            "conv_transpose2d stride 3 pad 2 out_pad 2",
            true,
            false,
            [1, 2, 3, 2],
            [2, 2, 4, 4],
            geo(3, 2, 1, 2, 1),
        ),
        (
            "conv_transpose1d stride 2 pad 1 out_pad 1",
            true,
            true,
            [2, 3, 1, 5],
            [3, 4, 1, 3],
            geo1(2, 1, 1, 1, 1),
        ),
        (
            "conv_transpose1d stride 1 dil 2 out_pad 1",
            true,
            true,
            [1, 2, 1, 4],
            [2, 2, 1, 2],
            geo1(1, 0, 2, 1, 1),
        ),
    ];
    for (i, &(name, transposed, one_d, xs, ws, g)) in rows.iter().enumerate() {
        let xv = det_values(xs.iter().product(), 100 + i as u64);
        let wv = det_values(ws.iter().product(), 200 + i as u64);
        for dt in [DType::F64, DType::F32] {
            let (xr, wr) = (rounded(&xv, dt), rounded(&wv, dt));
            let (want, os) = if transposed {
                conv_transpose_ref(&xr, xs, &wr, ws, g)
            } else {
                conv_ref(&xr, xs, &wr, ws, g)
            };
            let got = if one_d {
                let x = t(d, &xv, (xs[0], xs[1], xs[3]), dt)?;
                let w = t(d, &wv, (ws[0], ws[1], ws[3]), dt)?;
                let (s, p, dl, op) = (g.stride.1, g.pad.1, g.dil.1, g.out_pad.1);
                let y = if transposed {
                    x.conv_transpose1d(&w, None, s, p, op, dl, g.groups)?
                } else {
                    x.conv1d(&w, None, s, p, dl, g.groups)?
                };
                y.unsqueeze(2)?
            } else {
                let x = t(d, &xv, xs, dt)?;
                let w = t(d, &wv, ws, dt)?;
                let (s, p, dl, op) = (g.stride.0, g.pad.0, g.dil.0, g.out_pad.0);
                if transposed {
                    x.conv_transpose2d(&w, None, s, p, op, dl, g.groups)?
                } else {
                    x.conv2d(&w, None, s, p, dl, g.groups)?
                }
            };
            let tl = if dt == DType::F64 {
                (1e-12, 1e-12)
            } else {
                (1e-5, 1e-5)
            };
            expect(&format!("{name} {dt}"), &got, &os, dt, &want, tl)?;
        }
    }
    Ok(())
}

/// For `[c, h, w]` under `p` (2-D): each (c·K + kernel offset, output position) → input position
/// (or None in the padding), in the layout of `F.unfold`.
#[allow(clippy::type_complexity)]
fn patch_map(
    c: usize,
    h: usize,
    w: usize,
    p: &UnfoldParams,
) -> (usize, usize, Vec<(usize, usize, Option<usize>)>) {
    let (kh, kw) = (p.kernel[0], p.kernel[1]);
    let oh = (h + 2 * p.padding[0] - p.dilation[0] * (kh - 1) - 1) / p.stride[0] + 1;
    let ow = (w + 2 * p.padding[1] - p.dilation[1] * (kw - 1) - 1) / p.stride[1] + 1;
    let mut map = vec![];
    for ci in 0..c {
        for i in 0..kh {
            for j in 0..kw {
                for y in 0..oh {
                    for x in 0..ow {
                        let iy = (y * p.stride[0] + i * p.dilation[0]) as i64 - p.padding[0] as i64;
                        let ix = (x * p.stride[1] + j * p.dilation[1]) as i64 - p.padding[1] as i64;
                        let src = (iy >= 0 && ix >= 0 && iy < h as i64 && ix < w as i64)
                            .then(|| (ci * h + iy as usize) * w + ix as usize);
                        map.push(((ci * kh + i) * kw + j, y * ow + x, src));
                    }
                }
            }
        }
    }
    (c * kh * kw, oh * ow, map)
}

fn unfold_fold_naive(d: &Device) -> Result<()> {
    // (kernel, stride, padding, dilation, pad value, input [h, w])
    let geos = [
        ([2, 3], [1, 2], [1, 0], [1, 1], 0.0, (5, 6)),
        ([3, 3], [2, 2], [1, 1], [1, 1], 0.0, (5, 6)),
        ([2, 2], [1, 1], [0, 1], [2, 2], 0.0, (5, 6)),
        ([3, 2], [2, 1], [1, 1], [1, 1], -5.0, (5, 6)),
        // Sizes that leave a stride remainder (what conv_transpose's output_padding produces).
        ([3, 3], [2, 2], [1, 1], [1, 1], 0.0, (6, 8)),
        ([3, 2], [3, 2], [2, 0], [1, 2], 0.0, (9, 7)),
    ];
    let (n, c) = (2, 2);
    for (gi, (k, s, pd, dl, pv, (h, w))) in geos.into_iter().enumerate() {
        let p = UnfoldParams {
            kernel: k.to_vec(),
            stride: s.to_vec(),
            padding: pd.to_vec(),
            dilation: dl.to_vec(),
            pad_value: pv,
        };
        let (ck, l, map) = patch_map(c, h, w, &p);
        for dt in [DType::F64, DType::F32] {
            let xv = rounded(&det_values(n * c * h * w, 300 + gi as u64), dt);
            let x = t(d, &xv, (n, c, h, w), dt)?;
            let mut want = vec![0.0; n * ck * l];
            for b in 0..n {
                for &(row, col, src) in &map {
                    want[(b * ck + row) * l + col] = src.map_or(pv, |s| xv[b * c * h * w + s]);
                }
            }
            let tag = format!("{:?} {dt}", p.kernel);
            expect(
                &format!("unfold_patches {tag} geometry {gi}"),
                &x.unfold_patches(&p)?,
                &[n, ck, l],
                dt,
                &want,
                (0.0, 0.0),
            )?;
            // fold sums every patch entry back onto its input position (padding taps dropped).
            let cv = rounded(&det_values(n * ck * l, 400 + gi as u64), dt);
            let cols = t(d, &cv, (n, ck, l), dt)?;
            let mut want = vec![0.0; n * c * h * w];
            for b in 0..n {
                for &(row, col, src) in &map {
                    if let Some(s) = src {
                        want[b * c * h * w + s] += cv[(b * ck + row) * l + col];
                    }
                }
            }
            let tl = if dt == DType::F64 {
                (1e-12, 1e-12)
            } else {
                (1e-6, 1e-6)
            };
            expect(
                &format!("fold_patches {tag} geometry {gi}"),
                &cols.fold_patches(&p, &[h, w])?,
                &[n, c, h, w],
                dt,
                &want,
                tl,
            )?;
        }
    }
    Ok(())
}
