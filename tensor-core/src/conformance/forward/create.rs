//! Forward cases: casts between every pair of dtypes, creation, random sampling, typed
//! read-back and same-device moves.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("casts", casts),
        case("cast_rounding", |d| {
            let v = [
                1.0 / 3.0,
                2.0 / 3.0,
                1e-3,
                65504.0,
                -0.1,
                1.0 + 1.0 / 1024.0,
            ];
            for src in FLOATS {
                let x = t(d, &v, 6, src)?;
                let xs = rounded(&v, src);
                for dst in FLOATS {
                    let want = rounded(&xs, dst);
                    expect(
                        &format!("cast {src} -> {dst}"),
                        &x.to_dtype(dst)?,
                        &[6],
                        dst,
                        &want,
                        (0.0, 0.0),
                    )?;
                }
            }
            Ok(())
        }),
        case("creation", creation),
        case("arange_linspace_eye", |d| {
            for dt in FLOATS.iter().chain(&INTS).copied() {
                expect(
                    &format!("arange(0, 5) {dt}"),
                    &Tensor::arange(0.0, 5.0, 1.0, dt, d)?,
                    &[5],
                    dt,
                    &[0.0, 1.0, 2.0, 3.0, 4.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("arange(7, 0, -3) {dt}"),
                    &Tensor::arange(7.0, 0.0, -3.0, dt, d)?,
                    &[3],
                    dt,
                    &[7.0, 4.0, 1.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("arange(3, 3) {dt}"),
                    &Tensor::arange(3.0, 3.0, 1.0, dt, d)?,
                    &[0],
                    dt,
                    &[],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("eye(3) {dt}"),
                    &Tensor::eye(3, dt, d)?,
                    &[3, 3],
                    dt,
                    &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                    (0.0, 0.0),
                )?;
            }
            for dt in FLOATS {
                expect(
                    &format!("arange(1, 2, 0.25) {dt}"),
                    &Tensor::arange(1.0, 2.0, 0.25, dt, d)?,
                    &[4],
                    dt,
                    &[1.0, 1.25, 1.5, 1.75],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("linspace(0, 1, 5) {dt}"),
                    &Tensor::linspace(0.0, 1.0, 5, dt, d)?,
                    &[5],
                    dt,
                    &[0.0, 0.25, 0.5, 0.75, 1.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("linspace(2, -1, 4) {dt}"),
                    &Tensor::linspace(2.0, -1.0, 4, dt, d)?,
                    &[4],
                    dt,
                    &[2.0, 1.0, 0.0, -1.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("linspace(3, 9, 1) {dt}"),
                    &Tensor::linspace(3.0, 9.0, 1, dt, d)?,
                    &[1],
                    dt,
                    &[3.0],
                    (0.0, 0.0),
                )?;
            }
            Ok(())
        }),
        case("rand_uniform", rand_uniform),
        case("randn", randn),
        case("bernoulli", |d| {
            for dt in [DType::F32, DType::F64, DType::BF16, DType::U8] {
                let x = Tensor::bernoulli(0.3, 10_000, dt, d)?;
                if x.dtype() != dt || x.dims() != [10_000] {
                    return Err(Error::msg(format!("bernoulli {dt}: got {x:?}")));
                }
                let v = x.to_f64_vec()?;
                if let Some(bad) = v.iter().find(|&&b| b != 0.0 && b != 1.0) {
                    return Err(Error::msg(format!(
                        "bernoulli {dt}: value {bad} is neither 0 nor 1"
                    )));
                }
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                if (mean - 0.3).abs() > 0.03 {
                    return Err(Error::msg(format!("bernoulli(0.3) {dt}: mean {mean}")));
                }
            }
            expect(
                "bernoulli(0)",
                &Tensor::bernoulli(0.0, 50, DType::F32, d)?,
                &[50],
                DType::F32,
                &[0.0; 50],
                (0.0, 0.0),
            )?;
            expect(
                "bernoulli(1)",
                &Tensor::bernoulli(1.0, 50, DType::F32, d)?,
                &[50],
                DType::F32,
                &[1.0; 50],
                (0.0, 0.0),
            )?;
            let p = t(d, &[0.0, 1.0, 0.0, 1.0], 4, DType::F32)?;
            expect(
                "bernoulli_from_probs of 0/1",
                &p.bernoulli_from_probs()?,
                &[4],
                DType::F32,
                &[0.0, 1.0, 0.0, 1.0],
                (0.0, 0.0),
            )
        }),
        case("to_vec_typed", |d| {
            typed::<u8>(d)?;
            typed::<u32>(d)?;
            typed::<i64>(d)?;
            typed::<f16>(d)?;
            typed::<bf16>(d)?;
            typed::<f32>(d)?;
            typed::<f64>(d)
        }),
        case("to_dtype_to_device_same", |d| {
            for dt in FLOATS.iter().chain(&INTS).copied() {
                let x = t(d, &[1.0, 2.0, 3.0], 3, dt)?;
                expect(
                    &format!("to_dtype({dt}) to itself"),
                    &x.to_dtype(dt)?,
                    &[3],
                    dt,
                    &[1.0, 2.0, 3.0],
                    (0.0, 0.0),
                )?;
                let y = x.to_device(d)?;
                if !y.device().same_device(d) {
                    return Err(Error::msg("to_device(same) changed the device"));
                }
                expect(
                    &format!("to_device(same) {dt}"),
                    &y,
                    &[3],
                    dt,
                    &[1.0, 2.0, 3.0],
                    (0.0, 0.0),
                )?;
            }
            Ok(())
        }),
    ]
}

// ---- casts and creation -----------------------------------------------------------------------

fn casts(d: &Device) -> Result<()> {
    let all = [
        DType::U8,
        DType::U32,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
    ];
    for src in all {
        let vals = if src.is_float() {
            vec![0.0, 1.0, 2.75, 7.5, 100.5, 200.0]
        } else {
            vec![0.0, 1.0, 2.0, 7.0, 100.0, 200.0]
        };
        for dst in all {
            // Negative values only where both sides are signed.
            let signed = |dt: DType| dt == DType::I64 || dt.is_float();
            let mut v = vals.clone();
            if signed(src) && signed(dst) {
                v.extend(if src.is_float() {
                    [-3.75, -100.5]
                } else {
                    [-3.0, -100.0]
                });
            }
            let x = t(d, &v, v.len(), src)?;
            // Float → int truncates toward zero.
            let want: Vec<f64> = if dst.is_int() {
                v.iter().map(|x| x.trunc()).collect()
            } else {
                v.clone()
            };
            expect(
                &format!("cast {src} -> {dst}"),
                &x.to_dtype(dst)?,
                &[v.len()],
                dst,
                &want,
                (0.0, 0.0),
            )?;
            // From a strided view too.
            let xs = t(d, &v, (2, v.len() / 2), src)?.t()?;
            let n = v.len() / 2;
            let want_t: Vec<f64> = (0..v.len()).map(|i| want[(i % 2) * n + i / 2]).collect();
            expect(
                &format!("cast {src} -> {dst} (transposed)"),
                &xs.to_dtype(dst)?,
                &[n, 2],
                dst,
                &want_t,
                (0.0, 0.0),
            )?;
        }
    }
    // Integer-valued large numbers stay exact between the 32/64-bit types.
    let x = t(d, &[4294967295.0, 123456789.0], 2, DType::U32)?;
    expect(
        "u32 -> i64 -> f64",
        &x.to_dtype(DType::I64)?.to_dtype(DType::F64)?,
        &[2],
        DType::F64,
        &[4294967295.0, 123456789.0],
        (0.0, 0.0),
    )?;
    let x = t(
        d,
        &[-(1i64 << 40) as f64, (1i64 << 50) as f64],
        2,
        DType::I64,
    )?;
    expect(
        "i64 -> f64 (large)",
        &x.to_dtype(DType::F64)?,
        &[2],
        DType::F64,
        &[-(1i64 << 40) as f64, (1i64 << 50) as f64],
        (0.0, 0.0),
    )
}

fn creation(d: &Device) -> Result<()> {
    for dt in FLOATS.iter().chain(&INTS).copied() {
        expect(
            &format!("zeros {dt}"),
            &Tensor::zeros((2, 3), dt, d)?,
            &[2, 3],
            dt,
            &[0.0; 6],
            (0.0, 0.0),
        )?;
        expect(
            &format!("ones {dt}"),
            &Tensor::ones(4, dt, d)?,
            &[4],
            dt,
            &[1.0; 4],
            (0.0, 0.0),
        )?;
        expect(
            &format!("full {dt}"),
            &Tensor::full(7.0, (1, 2, 2), dt, d)?,
            &[1, 2, 2],
            dt,
            &[7.0; 4],
            (0.0, 0.0),
        )?;
        expect(
            &format!("scalar {dt}"),
            &Tensor::scalar(3.0, dt, d)?,
            &[],
            dt,
            &[3.0],
            (0.0, 0.0),
        )?;
        expect(
            &format!("zeros of size 0 {dt}"),
            &Tensor::zeros((0, 3), dt, d)?,
            &[0, 3],
            dt,
            &[],
            (0.0, 0.0),
        )?;
        let x = Tensor::full(2.0, (2, 2), dt, d)?;
        expect(
            &format!("ones_like {dt}"),
            &x.ones_like()?,
            &[2, 2],
            dt,
            &[1.0; 4],
            (0.0, 0.0),
        )?;
        expect(
            &format!("zeros_like {dt}"),
            &x.zeros_like()?,
            &[2, 2],
            dt,
            &[0.0; 4],
            (0.0, 0.0),
        )?;
        expect(
            &format!("full_like {dt}"),
            &x.full_like(5.0)?,
            &[2, 2],
            dt,
            &[5.0; 4],
            (0.0, 0.0),
        )?;
    }
    for dt in FLOATS {
        expect(
            &format!("full(-inf) {dt}"),
            &Tensor::full(f64::NEG_INFINITY, 2, dt, d)?,
            &[2],
            dt,
            &[f64::NEG_INFINITY; 2],
            (0.0, 0.0),
        )?;
        expect(
            &format!("full(0.1) {dt}"),
            &Tensor::full(0.1, 2, dt, d)?,
            &[2],
            dt,
            &rounded(&[0.1, 0.1], dt),
            (0.0, 0.0),
        )?;
    }
    Ok(())
}

fn moments(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

fn rand_uniform(d: &Device) -> Result<()> {
    let (lo, hi) = (-1.0, 3.0);
    for dt in FLOATS {
        let x = Tensor::rand_seeded(lo, hi, (100, 100), dt, d, 42)?;
        if x.dims() != [100, 100] || x.dtype() != dt {
            return Err(Error::msg(format!("rand_seeded {dt}: got {x:?}")));
        }
        let v = x.to_f64_vec()?;
        if let Some(bad) = v.iter().find(|&&u| !(lo..hi).contains(&u)) {
            return Err(Error::msg(format!(
                "rand_seeded [{lo}, {hi}) {dt}: value {bad} out of range"
            )));
        }
        let (m, s) = moments(&v);
        if (m - 1.0).abs() > 0.05 || (s - 4.0 / 12f64.sqrt()).abs() > 0.05 {
            return Err(Error::msg(format!(
                "rand_seeded [{lo}, {hi}) {dt}: mean {m} (want 1), std {s} (want 1.155)"
            )));
        }
        let again = Tensor::rand_seeded(lo, hi, (100, 100), dt, d, 42)?.to_f64_vec()?;
        if again != v {
            return Err(Error::msg(format!(
                "rand_seeded {dt}: same seed gave different values"
            )));
        }
        let other = Tensor::rand_seeded(lo, hi, (100, 100), dt, d, 43)?.to_f64_vec()?;
        if other.iter().zip(&v).filter(|(a, b)| a == b).count() > 1000 {
            return Err(Error::msg(format!(
                "rand_seeded {dt}: seeds 42 and 43 gave mostly equal values"
            )));
        }
        // Values must not repeat in a pattern: neighbours differ almost always (f32+ only).
        if matches!(dt, DType::F32 | DType::F64)
            && v.windows(2).filter(|w| w[0] == w[1]).count() > 10
        {
            return Err(Error::msg(format!(
                "rand_seeded {dt}: many equal neighbours"
            )));
        }
        // The global generator also stays in range (its sequence is shared between threads,
        // so only the range is checked).
        let g = Tensor::rand(0.0, 1.0, 1000, dt, d)?.to_f64_vec()?;
        if let Some(bad) = g.iter().find(|&&u| !(0.0..1.0).contains(&u)) {
            return Err(Error::msg(format!(
                "rand [0, 1) {dt}: value {bad} out of range"
            )));
        }
    }
    Ok(())
}

fn randn(d: &Device) -> Result<()> {
    for dt in FLOATS {
        let x = Tensor::randn_seeded(2.0, 0.5, 10_000, dt, d, 7)?;
        if x.dims() != [10_000] || x.dtype() != dt {
            return Err(Error::msg(format!("randn_seeded {dt}: got {x:?}")));
        }
        let v = x.to_f64_vec()?;
        if v.iter().any(|u| !u.is_finite()) {
            return Err(Error::msg(format!("randn_seeded {dt}: non-finite sample")));
        }
        let (m, s) = moments(&v);
        if (m - 2.0).abs() > 0.03 || (s - 0.5).abs() > 0.03 {
            return Err(Error::msg(format!(
                "randn_seeded(2, 0.5) {dt}: mean {m}, std {s}"
            )));
        }
        // Roughly normal: about 68% within one std, 95% within two.
        let within = |k: f64| {
            v.iter().filter(|&&u| (u - 2.0).abs() < k * 0.5).count() as f64 / v.len() as f64
        };
        if (within(1.0) - 0.6827).abs() > 0.03 || (within(2.0) - 0.9545).abs() > 0.015 {
            return Err(Error::msg(format!(
                "randn_seeded {dt}: {:.3} within 1σ, {:.3} within 2σ",
                within(1.0),
                within(2.0)
            )));
        }
        if Tensor::randn_seeded(2.0, 0.5, 10_000, dt, d, 7)?.to_f64_vec()? != v {
            return Err(Error::msg(format!(
                "randn_seeded {dt}: same seed gave different values"
            )));
        }
        if Tensor::randn_seeded(2.0, 0.5, 10_000, dt, d, 8)?.to_f64_vec()? == v {
            return Err(Error::msg(format!(
                "randn_seeded {dt}: seeds 7 and 8 gave the same values"
            )));
        }
    }
    let z = Tensor::randn_seeded(1.5, 0.0, 5, DType::F32, d, 1)?;
    expect(
        "randn with std 0",
        &z,
        &[5],
        DType::F32,
        &[1.5; 5],
        (0.0, 0.0),
    )
}

// ---- typed read-back ------------------------------------------------------------------------

fn typed<T: WithDType>(d: &Device) -> Result<()> {
    let vals: Vec<T> = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .map(|&v| T::from_f64(v))
        .collect();
    let x = Tensor::from_vec(vals.clone(), (2, 3), d)?;
    let dt = T::DTYPE;
    if x.dtype() != dt {
        return Err(Error::msg(format!("from_vec of {dt}: dtype {}", x.dtype())));
    }
    if x.to_vec::<T>()? != vals {
        return Err(Error::msg(format!(
            "to_vec {dt}: {:?}, expected {vals:?}",
            x.to_vec::<T>()?
        )));
    }
    let rows = x.to_vec2::<T>()?;
    if rows != [vals[..3].to_vec(), vals[3..].to_vec()] {
        return Err(Error::msg(format!("to_vec2 {dt}: {rows:?}")));
    }
    let tt = x.t()?.to_vec2::<T>()?;
    let want: Vec<Vec<T>> = (0..3).map(|j| vec![vals[j], vals[3 + j]]).collect();
    if tt != want {
        return Err(Error::msg(format!(
            "to_vec2 of transpose {dt}: {tt:?}, expected {want:?}"
        )));
    }
    let s = x.narrow(0, 1, 1)?.narrow(1, 2, 1)?.to_scalar::<T>()?;
    if s != vals[5] {
        return Err(Error::msg(format!(
            "to_scalar {dt}: {s:?}, expected {:?}",
            vals[5]
        )));
    }
    if Tensor::from_slice(&vals, 6, d)?.to_vec::<T>()? != vals {
        return Err(Error::msg(format!("from_slice {dt} round trip")));
    }
    if x.to_host()? != T::into_host(vals.clone()) {
        return Err(Error::msg(format!("to_host {dt}")));
    }
    Ok(())
}
