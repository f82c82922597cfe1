//! Forward cases: reductions over every dim set, in every dtype, on contiguous and strided inputs.

use super::*;

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

pub(super) fn reductions(d: &Device) -> Result<()> {
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
