//! Forward cases: reductions over every dim set, in every dtype, on contiguous and strided
//! inputs; arg-reductions with ties; var/std; logsumexp; cumsum.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("reductions", reductions),
        case("argmax_argmin_ties", |d| {
            // First occurrence wins, along either dim.
            let v = [3.0, 1.0, 3.0, 0.0, 1.0, 1.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0];
            for dt in FLOATS.iter().chain(&INTS).copied() {
                let x = t(d, &v, (3, 4), dt)?;
                expect(
                    &format!("argmax(1) {dt}"),
                    &x.argmax(1)?,
                    &[3],
                    DType::I64,
                    &[0.0, 0.0, 0.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("argmin(1) {dt}"),
                    &x.argmin(1)?,
                    &[3],
                    DType::I64,
                    &[3.0, 2.0, 0.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("argmax(0) {dt}"),
                    &x.argmax(0)?,
                    &[4],
                    DType::I64,
                    &[0.0, 2.0, 0.0, 2.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("argmin(0) {dt}"),
                    &x.argmin(0)?,
                    &[4],
                    DType::I64,
                    &[1.0, 0.0, 1.0, 0.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("argmax_keepdim(1) {dt}"),
                    &x.argmax_keepdim(1)?,
                    &[3, 1],
                    DType::I64,
                    &[0.0, 0.0, 0.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("argmin_keepdim(0) {dt}"),
                    &x.argmin_keepdim(0)?,
                    &[1, 4],
                    DType::I64,
                    &[1.0, 0.0, 1.0, 0.0],
                    (0.0, 0.0),
                )?;
                // On a transposed view.
                expect(
                    &format!("argmax(0) of transpose {dt}"),
                    &x.t()?.argmax(0)?,
                    &[3],
                    DType::I64,
                    &[0.0, 0.0, 0.0],
                    (0.0, 0.0),
                )?;
            }
            Ok(())
        }),
        case("var_std", |d| {
            let v = [1.0, 2.0, 3.0, 4.0, 2.0, 4.0, 4.0, 10.0];
            for dt in FLOATS {
                let x = t(d, &v, (2, 4), dt)?;
                let tl = tol(dt);
                expect(
                    &format!("var(1, 1) {dt}"),
                    &x.var(1, 1)?,
                    &[2],
                    dt,
                    &[5.0 / 3.0, 12.0],
                    tl,
                )?;
                expect(
                    &format!("var(1, 0) {dt}"),
                    &x.var(1, 0)?,
                    &[2],
                    dt,
                    &[1.25, 9.0],
                    tl,
                )?;
                expect(
                    &format!("var_keepdim(0, 1) {dt}"),
                    &x.var_keepdim(0, 1)?,
                    &[1, 4],
                    dt,
                    &[0.5, 2.0, 0.5, 18.0],
                    tl,
                )?;
                expect(
                    &format!("var(0, 0) {dt}"),
                    &x.var(0, 0)?,
                    &[4],
                    dt,
                    &[0.25, 1.0, 0.25, 9.0],
                    tl,
                )?;
                expect(
                    &format!("std(1, 1) {dt}"),
                    &x.std(1, 1)?,
                    &[2],
                    dt,
                    &[(5.0f64 / 3.0).sqrt(), 12f64.sqrt()],
                    tl,
                )?;
                expect(
                    &format!("std_keepdim(1, 0) {dt}"),
                    &x.std_keepdim(1, 0)?,
                    &[2, 1],
                    dt,
                    &[1.25f64.sqrt(), 3.0],
                    tl,
                )?;
                // Over all dims: mean 3.75, Σ(x−m)² = 53.5.
                expect(
                    &format!("var([0, 1], 1) {dt}"),
                    &x.var([0, 1], 1)?,
                    &[],
                    dt,
                    &[53.5 / 7.0],
                    tl,
                )?;
            }
            Ok(())
        }),
        case("logsumexp", |d| {
            let inf = f64::INFINITY;
            let v = [
                1.0, 2.0, 3.0, -inf, -inf, -inf, -inf, 0.0, 0.0, inf, 0.0, 1.0,
            ];
            let want = [
                3.0 + (1.0 + (-1f64).exp() + (-2f64).exp()).ln(),
                -inf,
                2f64.ln(),
                inf,
            ];
            for dt in FLOATS {
                let x = t(d, &v, (4, 3), dt)?;
                expect(
                    &format!("logsumexp(1) {dt}"),
                    &x.logsumexp(1)?,
                    &[4],
                    dt,
                    &want,
                    tol(dt),
                )?;
                expect(
                    &format!("logsumexp_keepdim(-1) {dt}"),
                    &x.logsumexp_keepdim(-1)?,
                    &[4, 1],
                    dt,
                    &want,
                    tol(dt),
                )?;
                let y = t(d, &[0.5, -1.0, 2.0, 0.25], (2, 2), dt)?;
                let r: f64 = rounded(&[0.5, -1.0, 2.0, 0.25], dt)
                    .iter()
                    .map(|v| v.exp())
                    .sum::<f64>()
                    .ln();
                expect(
                    &format!("logsumexp([0, 1]) {dt}"),
                    &y.logsumexp([0, 1])?,
                    &[],
                    dt,
                    &[r],
                    tol(dt),
                )?;
            }
            Ok(())
        }),
        case("cumsum", |d| {
            for dt in FLOATS.iter().chain(&INTS).copied() {
                let x = t(d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), dt)?;
                expect(
                    &format!("cumsum(1) {dt}"),
                    &x.cumsum(1)?,
                    &[2, 3],
                    dt,
                    &[1.0, 3.0, 6.0, 4.0, 9.0, 15.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("cumsum(0) {dt}"),
                    &x.cumsum(0)?,
                    &[2, 3],
                    dt,
                    &[1.0, 2.0, 3.0, 5.0, 7.0, 9.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("cumsum(-1) of transpose {dt}"),
                    &x.t()?.cumsum(-1)?,
                    &[3, 2],
                    dt,
                    &[1.0, 5.0, 2.0, 7.0, 3.0, 9.0],
                    (0.0, 0.0),
                )?;
            }
            Ok(())
        }),
    ]
}

/// Reduce `v` (row-major, `shape`) over `rdims` with `f`; returns values in keepdim order.
fn ref_reduce(v: &[f64], shape: &[usize], rdims: &[usize], f: fn(&[f64]) -> f64) -> Vec<f64> {
    let out_shape: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &s)| if rdims.contains(&i) { 1 } else { s })
        .collect();
    let n_out: usize = out_shape.iter().product();
    let mut groups: Vec<Vec<f64>> = vec![vec![]; n_out];
    for (flat, &x) in v.iter().enumerate() {
        let mut rem = flat;
        let mut idx = vec![0; shape.len()];
        for i in (0..shape.len()).rev() {
            idx[i] = rem % shape[i];
            rem /= shape[i];
        }
        let mut o = 0;
        for i in 0..shape.len() {
            o = o * out_shape[i] + if rdims.contains(&i) { 0 } else { idx[i] };
        }
        groups[o].push(x);
    }
    groups.iter().map(|g| f(g)).collect()
}

fn reductions(d: &Device) -> Result<()> {
    // [2, 3, 4] of small non-negative integers (exact in every dtype, sums fit in u8).
    let v: Vec<f64> = (0..24).map(|i| ((i * 7 + 3) % 11) as f64).collect();
    let shape = [2, 3, 4];
    let sum: fn(&[f64]) -> f64 = |g| g.iter().sum();
    let max: fn(&[f64]) -> f64 = |g| g.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let min: fn(&[f64]) -> f64 = |g| g.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean: fn(&[f64]) -> f64 = |g| g.iter().sum::<f64>() / g.len() as f64;
    let dimsets: [&[usize]; 5] = [&[0], &[1], &[2], &[0, 2], &[0, 1, 2]];
    for dt in FLOATS.iter().chain(&INTS).copied() {
        let x = t(d, &v, shape, dt)?;
        // The same data as a non-contiguous view: a transposed copy transposed back.
        let xv = t(d, &v, shape, dt)?
            .transpose(0, 2)?
            .contiguous()?
            .transpose(0, 2)?;
        for rd in dimsets {
            let kd: Vec<usize> = (0..3)
                .map(|i| if rd.contains(&i) { 1 } else { shape[i] })
                .collect();
            let dd: Vec<usize> = (0..3)
                .filter(|i| !rd.contains(i))
                .map(|i| shape[i])
                .collect();
            for (xi, input) in [("", &x), (" (strided)", &xv)] {
                let tag = format!("{rd:?} {dt}{xi}");
                expect(
                    &format!("sum_keepdim {tag}"),
                    &input.sum_keepdim(rd)?,
                    &kd,
                    dt,
                    &ref_reduce(&v, &shape, rd, sum),
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("sum {tag}"),
                    &input.sum(rd)?,
                    &dd,
                    dt,
                    &ref_reduce(&v, &shape, rd, sum),
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("max_keepdim {tag}"),
                    &input.max_keepdim(rd)?,
                    &kd,
                    dt,
                    &ref_reduce(&v, &shape, rd, max),
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("max {tag}"),
                    &input.max(rd)?,
                    &dd,
                    dt,
                    &ref_reduce(&v, &shape, rd, max),
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("min_keepdim {tag}"),
                    &input.min_keepdim(rd)?,
                    &kd,
                    dt,
                    &ref_reduce(&v, &shape, rd, min),
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("min {tag}"),
                    &input.min(rd)?,
                    &dd,
                    dt,
                    &ref_reduce(&v, &shape, rd, min),
                    (0.0, 0.0),
                )?;
                if dt.is_float() {
                    expect(
                        &format!("mean {tag}"),
                        &input.mean(rd)?,
                        &dd,
                        dt,
                        &ref_reduce(&v, &shape, rd, mean),
                        tol(dt),
                    )?;
                    expect(
                        &format!("mean_keepdim {tag}"),
                        &input.mean_keepdim(rd)?,
                        &kd,
                        dt,
                        &ref_reduce(&v, &shape, rd, mean),
                        tol(dt),
                    )?;
                }
            }
        }
        expect(
            &format!("sum_all {dt}"),
            &x.sum_all()?,
            &[],
            dt,
            &[v.iter().sum()],
            (0.0, 0.0),
        )?;
        expect(
            &format!("sum(-1) {dt}"),
            &x.sum(-1)?,
            &[2, 3],
            dt,
            &ref_reduce(&v, &shape, &[2], sum),
            (0.0, 0.0),
        )?;
    }
    // Float-only: negative values, infinities and a long row (accumulation order).
    for dt in FLOATS {
        let x = t(
            d,
            &[-1.0, f64::NEG_INFINITY, -3.0, 2.0, f64::INFINITY, -0.5],
            (2, 3),
            dt,
        )?;
        expect(
            &format!("max with inf {dt}"),
            &x.max(1)?,
            &[2],
            dt,
            &[-1.0, f64::INFINITY],
            (0.0, 0.0),
        )?;
        expect(
            &format!("min with inf {dt}"),
            &x.min(1)?,
            &[2],
            dt,
            &[f64::NEG_INFINITY, -0.5],
            (0.0, 0.0),
        )?;
        let n = 1000;
        let long = Tensor::ones(n, dt, d)?.mul_scalar(0.5)?;
        expect(
            &format!("sum of 1000 halves {dt}"),
            &long.sum(0)?,
            &[],
            dt,
            &[500.0],
            tol(dt),
        )?;
        expect(
            &format!("mean of 1000 halves {dt}"),
            &long.mean(0)?,
            &[],
            dt,
            &[0.5],
            tol(dt),
        )?;
    }
    Ok(())
}
