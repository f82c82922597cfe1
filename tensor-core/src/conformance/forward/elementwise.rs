//! Forward cases: elementwise unary and binary ops, comparisons, where and triangles, in every
//! dtype.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("unary_float", unary_float),
        case("unary_int", unary_int),
        case("round_ties_even", |d| {
            for dt in FLOATS {
                let x = t(d, &[0.5, 1.5, 2.5, -0.5, -2.5, 3.5], 6, dt)?;
                expect(
                    &format!("round {dt}"),
                    &x.round()?,
                    &[6],
                    dt,
                    &[0.0, 2.0, 2.0, 0.0, -2.0, 4.0],
                    (0.0, 0.0),
                )?;
            }
            Ok(())
        }),
        case("binary_float", binary_float),
        case("binary_int", binary_int),
        case("int_floor_div_and_wrap", |d| {
            // Integer division floors (PyTorch's `//`); u8/u32 arithmetic wraps.
            let a = t(d, &[-7.0, 7.0, -8.0, 0.0], 4, DType::I64)?;
            let b = t(d, &[2.0, -2.0, 3.0, -5.0], 4, DType::I64)?;
            expect(
                "i64 floor division",
                &a.div(&b)?,
                &[4],
                DType::I64,
                &[-4.0, -4.0, -3.0, 0.0],
                (0.0, 0.0),
            )?;
            let a = t(d, &[200.0, 3.0, 16.0], 3, DType::U8)?;
            let b = t(d, &[100.0, 5.0, 16.0], 3, DType::U8)?;
            expect(
                "u8 add wraps",
                &a.add(&b)?,
                &[3],
                DType::U8,
                &[44.0, 8.0, 32.0],
                (0.0, 0.0),
            )?;
            expect(
                "u8 sub wraps",
                &a.sub(&b)?,
                &[3],
                DType::U8,
                &[100.0, 254.0, 0.0],
                (0.0, 0.0),
            )?;
            expect(
                "u8 mul wraps",
                &a.mul(&b)?,
                &[3],
                DType::U8,
                &[32.0, 15.0, 0.0],
                (0.0, 0.0),
            )?;
            let a = t(d, &[1.0, 4294967295.0], 2, DType::U32)?;
            let b = t(d, &[2.0, 1.0], 2, DType::U32)?;
            expect(
                "u32 sub/add wrap",
                &a.sub(&b)?.add(&a.add(&b)?)?,
                &[2],
                DType::U32,
                &[2.0, 4294967294.0],
                (0.0, 0.0),
            )
        }),
        case("int_div_by_zero_is_err", |d| {
            for dt in INTS {
                let a = t(d, &[1.0, 2.0], 2, dt)?;
                let b = t(d, &[1.0, 0.0], 2, dt)?;
                must_err(&format!("{dt} division by zero"), a.div(&b), &["div"])?;
            }
            Ok(())
        }),
        case("comparisons", comparisons),
        case("where_cond", where_cond),
        case("masked_fill_triu_tril", |d| {
            for dt in FLOATS.iter().chain(&INTS).copied() {
                let x = t(d, &(0..12).map(f64::from).collect::<Vec<_>>(), (3, 4), dt)?;
                let m = t(d, &[1.0, 0.0, 0.0, 1.0], 4, DType::U8)?;
                let want: Vec<f64> = (0..12)
                    .map(|i| {
                        if i % 4 == 0 || i % 4 == 3 {
                            9.0
                        } else {
                            i as f64
                        }
                    })
                    .collect();
                expect(
                    &format!("masked_fill {dt}"),
                    &x.masked_fill(&m, 9.0)?,
                    &[3, 4],
                    dt,
                    &want,
                    (0.0, 0.0),
                )?;
                for diag in [-1i64, 0, 1, 2] {
                    let up: Vec<f64> = (0..12)
                        .map(|i| {
                            if (i % 4) as i64 - (i / 4) as i64 >= diag {
                                i as f64
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let lo: Vec<f64> = (0..12)
                        .map(|i| {
                            if (i % 4) as i64 - (i / 4) as i64 <= diag {
                                i as f64
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    expect(
                        &format!("triu({diag}) {dt}"),
                        &x.triu(diag)?,
                        &[3, 4],
                        dt,
                        &up,
                        (0.0, 0.0),
                    )?;
                    expect(
                        &format!("tril({diag}) {dt}"),
                        &x.tril(diag)?,
                        &[3, 4],
                        dt,
                        &lo,
                        (0.0, 0.0),
                    )?;
                }
                // Batched: the triangle applies to the last two dims of each matrix.
                let b = Tensor::stack(&[&x, &x], 0)?.tril(0)?;
                let lo: Vec<f64> = (0..24)
                    .map(|i| i % 12)
                    .map(|i| if i % 4 <= i / 4 { i as f64 } else { 0.0 })
                    .collect();
                expect(
                    &format!("batched tril {dt}"),
                    &b,
                    &[2, 3, 4],
                    dt,
                    &lo,
                    (0.0, 0.0),
                )?;
            }
            Ok(())
        }),
    ]
}

/// erf by its Maclaurin series: accurate to ~1e-13 for |x| ≤ 3, where the tests stay.
fn erf(x: f64) -> f64 {
    let (x2, mut term, mut sum) = (x * x, x, x);
    for n in 1..200 {
        term *= -x2 / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 * sum.abs() {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

// ---- elementwise ----------------------------------------------------------------------------

const GENERAL: [f64; 8] = [-2.5, -1.0, -0.25, 0.0, 0.5, 1.5, 3.0, 0.125];
const POSITIVE: [f64; 6] = [0.25, 0.5, 1.0, 2.0, 3.0, 7.5];
const NONZERO: [f64; 6] = [-2.5, -0.5, 0.25, 1.0, 3.0, 7.5];
const FRACTIONAL: [f64; 8] = [-2.7, -1.2, -0.3, 0.0, 0.4, 1.6, 2.2, -0.0];

fn unary_float(d: &Device) -> Result<()> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let table: Vec<UnaryRow> = vec![
        ("neg", |x| x.neg(), |x| -x, &GENERAL),
        ("abs", |x| x.abs(), f64::abs, &GENERAL),
        (
            "sign",
            |x| x.sign(),
            |x| {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            },
            &GENERAL,
        ),
        ("exp", |x| x.exp(), f64::exp, &GENERAL),
        ("log", |x| x.log(), f64::ln, &POSITIVE),
        ("sqrt", |x| x.sqrt(), f64::sqrt, &POSITIVE),
        ("rsqrt", |x| x.rsqrt(), |x| 1.0 / x.sqrt(), &POSITIVE),
        ("recip", |x| x.recip(), |x| 1.0 / x, &NONZERO),
        ("sqr", |x| x.sqr(), |x| x * x, &GENERAL),
        ("sin", |x| x.sin(), f64::sin, &GENERAL),
        ("cos", |x| x.cos(), f64::cos, &GENERAL),
        ("tanh", |x| x.tanh(), f64::tanh, &GENERAL),
        ("sigmoid", |x| x.sigmoid(), sigmoid, &GENERAL),
        ("relu", |x| x.relu(), |x| x.max(0.0), &GENERAL),
        (
            "gelu",
            |x| x.gelu(),
            |x| 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
            &GENERAL,
        ),
        ("erf", |x| x.erf(), erf, &GENERAL),
        ("silu", |x| x.silu(), |x| x * sigmoid(x), &GENERAL),
        (
            "softplus",
            |x| x.softplus(),
            |x| if x > 20.0 { x } else { x.exp().ln_1p() },
            &[-30.0, -2.5, 0.0, 1.5, 19.5, 25.0, 100.0],
        ),
        ("floor", |x| x.floor(), f64::floor, &FRACTIONAL),
        ("ceil", |x| x.ceil(), f64::ceil, &FRACTIONAL),
        ("round", |x| x.round(), f64::round, &FRACTIONAL),
        (
            "affine",
            |x| x.affine(2.0, -1.0),
            |x| 2.0 * x - 1.0,
            &GENERAL,
        ),
        ("powf 2.5", |x| x.powf(2.5), |x| x.powf(2.5), &POSITIVE),
        (
            "powf 2 (negative base)",
            |x| x.powf(2.0),
            |x| x * x,
            &GENERAL,
        ),
        ("powf -0.5", |x| x.powf(-0.5), |x| x.powf(-0.5), &POSITIVE),
        (
            "elu",
            |x| x.elu(1.5),
            |x| if x > 0.0 { x } else { 1.5 * (x.exp() - 1.0) },
            &GENERAL,
        ),
        (
            "leaky_relu",
            |x| x.leaky_relu(0.1),
            |x| if x > 0.0 { x } else { 0.1 * x },
            &GENERAL,
        ),
        (
            "clamp",
            |x| x.clamp(-1.0, 1.25),
            |x| x.clamp(-1.0, 1.25),
            &GENERAL,
        ),
        (
            "add_scalar/mul_scalar",
            |x| {
                x.add_scalar(0.5)?
                    .mul_scalar(3.0)?
                    .sub_scalar(1.0)?
                    .div_scalar(2.0)
            },
            |x| ((x + 0.5) * 3.0 - 1.0) / 2.0,
            &GENERAL,
        ),
    ];
    for dt in FLOATS {
        for &(name, f, r, xs) in &table {
            let x = t(d, xs, xs.len(), dt)?;
            let want: Vec<f64> = rounded(xs, dt).into_iter().map(r).collect();
            expect(
                &format!("{name} {dt}"),
                &f(&x)?,
                &[xs.len()],
                dt,
                &want,
                tol(dt),
            )?;
        }
        // gelu_tanh separately (its closure needs the constant).
        let x = t(d, &GENERAL, 8, dt)?;
        let want: Vec<f64> = rounded(&GENERAL, dt)
            .into_iter()
            .map(|x| 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh()))
            .collect();
        expect(
            &format!("gelu_tanh {dt}"),
            &x.gelu_tanh()?,
            &[8],
            dt,
            &want,
            tol(dt),
        )?;
        // On a non-contiguous view.
        let m = t(d, &GENERAL, (2, 4), dt)?.t()?;
        let r = rounded(&GENERAL, dt);
        let want: Vec<f64> = (0..8).map(|i| r[(i % 2) * 4 + i / 2].exp()).collect();
        expect(
            &format!("exp of a transposed view {dt}"),
            &m.exp()?,
            &[4, 2],
            dt,
            &want,
            tol(dt),
        )?;
        // NaN propagates.
        let n = t(d, &[f64::NAN, 1.0], 2, dt)?;
        for (name, f) in [
            ("exp", n.exp()?),
            ("relu", n.relu()?),
            ("clamp", n.clamp(0.0, 0.5)?),
            ("tanh", n.tanh()?),
        ] {
            if !f.to_f64_vec()?[0].is_nan() {
                return Err(Error::msg(format!("{name}(NaN) {dt} is not NaN")));
            }
        }
    }
    Ok(())
}

fn unary_int(d: &Device) -> Result<()> {
    for dt in INTS {
        let v = [0.0, 1.0, 5.0, 7.0, 12.0];
        let x = t(d, &v, 5, dt)?;
        expect(
            &format!("sqr {dt}"),
            &x.sqr()?,
            &[5],
            dt,
            &[0.0, 1.0, 25.0, 49.0, 144.0],
            (0.0, 0.0),
        )?;
        expect(&format!("relu {dt}"), &x.relu()?, &[5], dt, &v, (0.0, 0.0))?;
        expect(&format!("abs {dt}"), &x.abs()?, &[5], dt, &v, (0.0, 0.0))?;
        expect(
            &format!("sign {dt}"),
            &x.sign()?,
            &[5],
            dt,
            &[0.0, 1.0, 1.0, 1.0, 1.0],
            (0.0, 0.0),
        )?;
        expect(
            &format!("clamp {dt}"),
            &x.clamp(1.0, 6.0)?,
            &[5],
            dt,
            &[1.0, 1.0, 5.0, 6.0, 6.0],
            (0.0, 0.0),
        )?;
        expect(
            &format!("affine(2, 3) {dt}"),
            &x.affine(2.0, 3.0)?,
            &[5],
            dt,
            &[3.0, 5.0, 13.0, 17.0, 27.0],
            (0.0, 0.0),
        )?;
    }
    let x = t(d, &[-3.0, 0.0, 4.0, -7.0], 4, DType::I64)?;
    expect(
        "neg i64",
        &x.neg()?,
        &[4],
        DType::I64,
        &[3.0, 0.0, -4.0, 7.0],
        (0.0, 0.0),
    )?;
    expect(
        "abs i64",
        &x.abs()?,
        &[4],
        DType::I64,
        &[3.0, 0.0, 4.0, 7.0],
        (0.0, 0.0),
    )?;
    expect(
        "sign i64",
        &x.sign()?,
        &[4],
        DType::I64,
        &[-1.0, 0.0, 1.0, -1.0],
        (0.0, 0.0),
    )?;
    expect(
        "relu i64",
        &x.relu()?,
        &[4],
        DType::I64,
        &[0.0, 0.0, 4.0, 0.0],
        (0.0, 0.0),
    )?;
    expect(
        "clamp i64",
        &x.clamp(-4.0, 2.0)?,
        &[4],
        DType::I64,
        &[-3.0, 0.0, 2.0, -4.0],
        (0.0, 0.0),
    )?;
    expect(
        "affine(-2, 1) i64",
        &x.affine(-2.0, 1.0)?,
        &[4],
        DType::I64,
        &[7.0, 1.0, -7.0, 15.0],
        (0.0, 0.0),
    )?;
    // Results of integer ops are never tracked: they have no gradient.
    let v = Var::from_tensor(&x)?;
    if v.sqr()?.tracked() {
        return Err(Error::msg("an i64 result is tracked"));
    }
    Ok(())
}

/// a: [2, 3], b: [3] (broadcast over rows), c: [2, 1] (broadcast over columns).
fn binary_float(d: &Device) -> Result<()> {
    let a = [-1.5, 0.5, 2.0, 3.0, -0.25, 1.0];
    let b = [0.5, -2.0, 1.5];
    let c = [2.0, -0.75];
    let pa = [0.5, 1.5, 2.0, 3.0, 0.25, 1.0];
    let table: [(&str, Binary, RefBinary); 7] = [
        ("add", |x, y| x.add(y), |x, y| x + y),
        ("sub", |x, y| x.sub(y), |x, y| x - y),
        ("mul", |x, y| x.mul(y), |x, y| x * y),
        ("div", |x, y| x.div(y), |x, y| x / y),
        ("pow", |x, y| x.pow(y), f64::powf),
        ("maximum", |x, y| x.maximum(y), f64::max),
        ("minimum", |x, y| x.minimum(y), f64::min),
    ];
    for dt in FLOATS {
        for (name, f, r) in table {
            let av: &[f64] = if name == "pow" { &pa } else { &a };
            let (ar, br, cr) = (rounded(av, dt), rounded(&b, dt), rounded(&c, dt));
            let x = t(d, av, (2, 3), dt)?;
            let want: Vec<f64> = (0..6).map(|i| r(ar[i], br[i % 3])).collect();
            expect(
                &format!("{name} [2, 3] with [3] {dt}"),
                &f(&x, &t(d, &b, 3, dt)?)?,
                &[2, 3],
                dt,
                &want,
                tol(dt),
            )?;
            let want: Vec<f64> = (0..6).map(|i| r(cr[i / 3], ar[i])).collect();
            expect(
                &format!("{name} [2, 1] with [2, 3] {dt}"),
                &f(&t(d, &c, (2, 1), dt)?, &x)?,
                &[2, 3],
                dt,
                &want,
                tol(dt),
            )?;
            let want: Vec<f64> = (0..6).map(|i| r(cr[i / 3], br[i % 3])).collect();
            expect(
                &format!("{name} [2, 1] with [3] {dt}"),
                &f(&t(d, &c, (2, 1), dt)?, &t(d, &b, 3, dt)?)?,
                &[2, 3],
                dt,
                &want,
                tol(dt),
            )?;
            // Transposed operands.
            let xt = t(d, av, (3, 2), dt)?.t()?;
            let want: Vec<f64> = (0..6).map(|i| r(ar[(i % 3) * 2 + i / 3], ar[i])).collect();
            expect(
                &format!("{name} of transposed with contiguous {dt}"),
                &f(&xt, &x)?,
                &[2, 3],
                dt,
                &want,
                tol(dt),
            )?;
        }
        let x = t(d, &a, (2, 3), dt)?;
        expect(
            &format!("operator chain {dt}"),
            &((&(&x + &x)? * 2.0)? - 1.0)?,
            &[2, 3],
            dt,
            &rounded(&a, dt)
                .iter()
                .map(|v| 4.0 * v - 1.0)
                .collect::<Vec<_>>(),
            tol(dt),
        )?;
    }
    Ok(())
}

fn binary_int(d: &Device) -> Result<()> {
    let a = [7.0, 0.0, 12.0, 5.0, 9.0, 3.0];
    let b = [2.0, 4.0, 3.0];
    let wrap = |v: f64, dt: DType| match dt {
        DType::U8 => v.rem_euclid(256.0),
        DType::U32 => v.rem_euclid(4294967296.0),
        _ => v,
    };
    let table: [(&str, Binary, RefBinary); 6] = [
        ("add", |x, y| x.add(y), |x, y| x + y),
        ("sub", |x, y| x.sub(y), |x, y| x - y),
        ("mul", |x, y| x.mul(y), |x, y| x * y),
        ("div", |x, y| x.div(y), |x, y| (x / y).floor()),
        ("maximum", |x, y| x.maximum(y), f64::max),
        ("minimum", |x, y| x.minimum(y), f64::min),
    ];
    for dt in INTS {
        let x = t(d, &a, (2, 3), dt)?;
        let y = t(d, &b, 3, dt)?;
        for (name, f, r) in table {
            let want: Vec<f64> = (0..6).map(|i| wrap(r(a[i], b[i % 3]), dt)).collect();
            expect(
                &format!("{name} {dt}"),
                &f(&x, &y)?,
                &[2, 3],
                dt,
                &want,
                (0.0, 0.0),
            )?;
        }
        let p = t(d, &[2.0, 3.0, 0.0, 1.0, 5.0, 2.0], (2, 3), dt)?;
        let e = t(d, &[3.0, 2.0, 4.0], 3, dt)?;
        expect(
            &format!("pow {dt}"),
            &p.pow(&e)?,
            &[2, 3],
            dt,
            &[8.0, 9.0, 0.0, 1.0, 25.0, 16.0],
            (0.0, 0.0),
        )?;
    }
    Ok(())
}

fn comparisons(d: &Device) -> Result<()> {
    let a = [1.0, 2.0, 3.0, 4.0, 0.0, 7.0];
    let b = [2.0, 2.0, 5.0];
    type RefCmp = fn(f64, f64) -> bool;
    let table: [(&str, Binary, RefCmp); 6] = [
        ("eq", |x, y| x.eq(y), |x, y| x == y),
        ("ne", |x, y| x.ne(y), |x, y| x != y),
        ("lt", |x, y| x.lt(y), |x, y| x < y),
        ("le", |x, y| x.le(y), |x, y| x <= y),
        ("gt", |x, y| x.gt(y), |x, y| x > y),
        ("ge", |x, y| x.ge(y), |x, y| x >= y),
    ];
    for dt in FLOATS.iter().chain(&INTS).copied() {
        let x = t(d, &a, (2, 3), dt)?;
        let y = t(d, &b, 3, dt)?;
        for (name, f, r) in table {
            let want: Vec<f64> = (0..6).map(|i| r(a[i], b[i % 3]) as u8 as f64).collect();
            expect(
                &format!("{name} {dt}"),
                &f(&x, &y)?,
                &[2, 3],
                DType::U8,
                &want,
                (0.0, 0.0),
            )?;
            let want: Vec<f64> = (0..6)
                .map(|i| r(a[(i % 3) * 2 + i / 3], a[i]) as u8 as f64)
                .collect();
            let xt = t(d, &a, (3, 2), dt)?.t()?;
            expect(
                &format!("{name} transposed {dt}"),
                &f(&xt, &x)?,
                &[2, 3],
                DType::U8,
                &want,
                (0.0, 0.0),
            )?;
        }
        let s: Vec<f64> = a.iter().map(|&v| (v >= 3.0) as u8 as f64).collect();
        expect(
            &format!("ge_scalar {dt}"),
            &x.ge_scalar(3.0)?,
            &[2, 3],
            DType::U8,
            &s,
            (0.0, 0.0),
        )?;
        let s: Vec<f64> = a.iter().map(|&v| (v == 2.0) as u8 as f64).collect();
        expect(
            &format!("eq_scalar {dt}"),
            &x.eq_scalar(2.0)?,
            &[2, 3],
            DType::U8,
            &s,
            (0.0, 0.0),
        )?;
    }
    for dt in FLOATS {
        let n = t(d, &[f64::NAN, f64::NAN, 1.0], 3, dt)?;
        let m = t(d, &[f64::NAN, 1.0, f64::NAN], 3, dt)?;
        expect(
            &format!("eq with NaN {dt}"),
            &n.eq(&m)?,
            &[3],
            DType::U8,
            &[0.0; 3],
            (0.0, 0.0),
        )?;
        expect(
            &format!("ne with NaN {dt}"),
            &n.ne(&m)?,
            &[3],
            DType::U8,
            &[1.0; 3],
            (0.0, 0.0),
        )?;
        expect(
            &format!("lt with NaN {dt}"),
            &n.lt(&m)?,
            &[3],
            DType::U8,
            &[0.0; 3],
            (0.0, 0.0),
        )?;
        expect(
            &format!("ge with NaN {dt}"),
            &n.ge(&m)?,
            &[3],
            DType::U8,
            &[0.0; 3],
            (0.0, 0.0),
        )?;
    }
    Ok(())
}

fn where_cond(d: &Device) -> Result<()> {
    let c = t(d, &[1.0, 0.0, 2.0, 0.0, 255.0, 0.0], (2, 3), DType::U8)?;
    for dt in FLOATS.iter().chain(&INTS).copied() {
        let on_t = t(d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), dt)?;
        let on_f = t(d, &[10.0, 20.0, 30.0], 3, dt)?;
        expect(
            &format!("where {dt}"),
            &c.where_cond(&on_t, &on_f)?,
            &[2, 3],
            dt,
            &[1.0, 20.0, 3.0, 10.0, 5.0, 30.0],
            (0.0, 0.0),
        )?;
        // Broadcast condition [2, 1] and scalar branch.
        let c2 = t(d, &[0.0, 1.0], (2, 1), DType::U8)?;
        let s = Tensor::scalar(9.0, dt, d)?;
        expect(
            &format!("where (broadcast) {dt}"),
            &c2.where_cond(&on_t, &s)?,
            &[2, 3],
            dt,
            &[9.0, 9.0, 9.0, 4.0, 5.0, 6.0],
            (0.0, 0.0),
        )?;
        // Transposed condition.
        let ct = t(d, &[1.0, 0.0, 0.0, 1.0, 1.0, 0.0], (3, 2), DType::U8)?.t()?;
        expect(
            &format!("where (transposed cond) {dt}"),
            &ct.where_cond(&on_t, &on_f)?,
            &[2, 3],
            dt,
            &[1.0, 20.0, 3.0, 10.0, 5.0, 30.0],
            (0.0, 0.0),
        )?;
    }
    Ok(())
}
