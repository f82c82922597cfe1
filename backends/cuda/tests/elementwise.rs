//! GPU checks of the elementwise, comparison, where, reduction and cumsum primitives against
//! references computed here on the host (f64 math on the stored values, integers exactly with
//! wrapping), on strided inputs: transposed, narrowed (with an offset) and broadcast (stride 0)
//! views. Every test returns early when there is no CUDA device.

use tensor_core::{
    BackendStorage, BinaryOp, CmpOp, DType, Device, Error, HostData, Layout, ReduceOp, Shape,
    Storage, UnaryOp,
};

/// Host reference of an integer unary op.
type IntRef = Box<dyn Fn(i128) -> i128>;
/// Host reference of a comparison.
type CmpRef = fn(f64, f64) -> bool;

const FLOATS: [DType; 4] = [DType::F16, DType::BF16, DType::F32, DType::F64];
const INTS: [DType; 3] = [DType::U8, DType::U32, DType::I64];

fn gpu() -> Option<Device> {
    match tensor_cuda::device(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Deterministic noise in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// Upload `v` as `dt`; returns the storage and the values as stored (rounded to `dt`).
fn upload(d: &Device, v: &[f64], dt: DType) -> (Storage, Vec<f64>) {
    let h = HostData::from_f64_slice(v, dt);
    let stored = h.to_f64_vec();
    (d.backend().from_host(h).unwrap(), stored)
}

fn upload_host(d: &Device, h: HostData) -> Storage {
    d.backend().from_host(h).unwrap()
}

fn download(d: &Device, s: &dyn BackendStorage) -> HostData {
    d.backend()
        .to_host(s, &Layout::contiguous([s.len()]))
        .unwrap()
}

fn read(d: &Device, s: &dyn BackendStorage) -> Vec<f64> {
    download(d, s).to_f64_vec()
}

/// Integer contents, exactly.
fn read_ints(d: &Device, s: &dyn BackendStorage) -> Vec<i128> {
    match download(d, s) {
        HostData::U8(v) => v.into_iter().map(i128::from).collect(),
        HostData::U32(v) => v.into_iter().map(i128::from).collect(),
        HostData::I64(v) => v.into_iter().map(i128::from).collect(),
        h => panic!("not an integer dtype: {:?}", h.dtype()),
    }
}

/// The elements of a view, in row-major order.
fn view<T: Copy>(data: &[T], l: &Layout) -> Vec<T> {
    l.offsets().into_iter().map(|o| data[o]).collect()
}

/// `v` rounded to `dt` (what a kernel that rounds once should return).
fn round_to(v: f64, dt: DType) -> f64 {
    HostData::from_f64_slice(&[v], dt).to_f64_vec()[0]
}

/// Relative tolerance (also used as the absolute one near zero) of float results computed in
/// the dtype's compute type and rounded once.
fn tol(dt: DType) -> f64 {
    match dt {
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
        DType::F32 => 2e-6,
        _ => 1e-13,
    }
}

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol * (1.0 + w.abs());
        assert!(ok, "{what}[{i}]: got {g}, want {w}");
    }
}

/// Wrap an exact integer to `dt`'s range as its wrapping arithmetic does.
fn wrap(v: i128, dt: DType) -> i128 {
    match dt {
        DType::U8 => v.rem_euclid(1 << 8),
        DType::U32 => v.rem_euclid(1 << 32),
        DType::I64 => v as i64 as i128,
        _ => unreachable!(),
    }
}

/// Rust's saturating float -> int cast for `dt` (what the CPU's `from_f64` does).
fn f2i(v: f64, dt: DType) -> i128 {
    match dt {
        DType::U8 => v as u8 as i128,
        DType::U32 => v as u32 as i128,
        DType::I64 => v as i64 as i128,
        _ => unreachable!(),
    }
}

/// Views of 48 elements over buffers of at least 96: contiguous, transposed, narrowed with an
/// offset, broadcast (stride 0) and a 3-D permutation.
fn unary_views() -> Vec<Layout> {
    vec![
        Layout::contiguous([48]),
        Layout::contiguous([4, 12]).permute(&[1, 0]),
        Layout::contiguous([6, 16]).narrow(1, 5, 8),
        Layout::contiguous([1, 16])
            .broadcast_as(&Shape::from([3, 16]))
            .unwrap(),
        Layout::contiguous([2, 4, 6]).permute(&[2, 0, 1]),
    ]
}

// ---- unary -----------------------------------------------------------------------------------

/// erf by its Maclaurin series (|x| < 2, ~1e-14 absolute).
fn erf_series(x: f64) -> f64 {
    let (x2, mut term, mut sum) = (x * x, x, x);
    for n in 1..400 {
        term *= -x2 / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-18 * sum.abs() {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// erfc(x) for x ≥ 2 by its continued fraction (full relative precision in the tail).
fn erfc_cf(x: f64) -> f64 {
    let mut f = x;
    for k in (1..=400).rev() {
        f = x + (k as f64 / 2.0) / f;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

fn erfc_ref(x: f64) -> f64 {
    if x >= 2.0 {
        erfc_cf(x)
    } else if x <= -2.0 {
        2.0 - erfc_cf(-x)
    } else {
        1.0 - erf_series(x)
    }
}

fn erf_ref(x: f64) -> f64 {
    if x.abs() < 2.0 {
        erf_series(x)
    } else {
        x.signum() * (1.0 - erfc_cf(x.abs()))
    }
}

fn unary_ref(op: UnaryOp, x: f64) -> f64 {
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Sqr => x * x,
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => sig(x),
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Gelu => 0.5 * x * erfc_ref(-x / 2f64.sqrt()),
        UnaryOp::GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh())
        }
        UnaryOp::Erf => erf_ref(x),
        UnaryOp::Silu => x * sig(x),
        UnaryOp::Softplus => {
            if x > 20.0 {
                x
            } else {
                x.exp().ln_1p()
            }
        }
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Round => x.round_ties_even(),
        UnaryOp::Affine { mul, add } => x * mul + add,
        UnaryOp::Powf(e) => x.powf(e),
        UnaryOp::Elu(a) => {
            if x > 0.0 {
                x
            } else {
                a * x.exp_m1()
            }
        }
        UnaryOp::LeakyRelu(s) => {
            if x > 0.0 {
                x
            } else {
                s * x
            }
        }
        UnaryOp::Clamp { min, max } => {
            if x.is_nan() {
                x
            } else {
                x.max(min).min(max)
            }
        }
    }
}

const ALL_UNARY: [UnaryOp; 27] = [
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Sign,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Recip,
    UnaryOp::Sqr,
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::Gelu,
    UnaryOp::GeluTanh,
    UnaryOp::Erf,
    UnaryOp::Silu,
    UnaryOp::Softplus,
    UnaryOp::Floor,
    UnaryOp::Ceil,
    UnaryOp::Round,
    UnaryOp::Affine {
        mul: 1.5,
        add: -0.25,
    },
    UnaryOp::Powf(1.7),
    UnaryOp::Elu(0.8),
    UnaryOp::LeakyRelu(0.1),
    UnaryOp::Clamp {
        min: -0.3,
        max: 0.4,
    },
];

#[test]
fn unary_floats_on_strided_views() {
    let Some(d) = gpu() else { return };
    let raw: Vec<f64> = noise(96, 1).iter().map(|x| x * 4.0).collect();
    let pos: Vec<f64> = raw.iter().map(|x| x.abs() + 0.1).collect();
    for dt in FLOATS {
        for op in ALL_UNARY {
            let positive = matches!(
                op,
                UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Powf(_)
            );
            let (src, stored) = upload(&d, if positive { &pos } else { &raw }, dt);
            for l in unary_views() {
                let out = d.backend().unary(op, src.as_ref(), &l).unwrap();
                assert_eq!(out.dtype(), dt);
                assert_eq!(out.len(), l.elem_count());
                let want: Vec<f64> = view(&stored, &l)
                    .iter()
                    .map(|&x| unary_ref(op, x))
                    .collect();
                let what = format!("{} {dt} {:?} {:?}", op.name(), l.dims(), l.strides());
                close(&read(&d, out.as_ref()), &want, 2.0 * tol(dt), &what);
            }
        }
    }
}

#[test]
fn unary_special_values() {
    let Some(d) = gpu() else { return };
    let l7 = Layout::contiguous([7]);
    for dt in FLOATS {
        let (src, _) = upload(&d, &[-1000.0, 1000.0, 0.0, 2.5, 3.5, -2.5, 30.0], dt);
        let run = |op| {
            read(
                &d,
                d.backend().unary(op, src.as_ref(), &l7).unwrap().as_ref(),
            )
        };
        let s = run(UnaryOp::Sigmoid);
        assert_eq!((s[0], s[1]), (0.0, 1.0), "sigmoid {dt}");
        assert!(
            run(UnaryOp::Silu).iter().all(|x| x.is_finite()),
            "silu {dt}"
        );
        assert_eq!(run(UnaryOp::Round)[3..6], [2.0, 4.0, -2.0], "round {dt}");
        let sp = run(UnaryOp::Softplus);
        assert_eq!((sp[1], sp[6]), (1000.0, 30.0), "softplus {dt}");
        // Round half to even; floor/ceil of negative fractions.
        let (r, _) = upload(&d, &[0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -0.7], dt);
        let rr = read(
            &d,
            d.backend()
                .unary(UnaryOp::Round, r.as_ref(), &l7)
                .unwrap()
                .as_ref(),
        );
        assert_eq!(rr, [0.0, 2.0, 2.0, -0.0, -2.0, 4.0, -1.0], "round {dt}");
        // Sign of ±0 and NaN is 0; NaN propagates through relu, clamp, exp, maximum.
        let (z, _) = upload(&d, &[0.0, -0.0, f64::NAN, -3.0], dt);
        let l4 = Layout::contiguous([4]);
        let sg = read(
            &d,
            d.backend()
                .unary(UnaryOp::Sign, z.as_ref(), &l4)
                .unwrap()
                .as_ref(),
        );
        assert_eq!(sg, [0.0, 0.0, 0.0, -1.0], "sign {dt}");
        for op in [
            UnaryOp::Relu,
            UnaryOp::Clamp { min: 0.0, max: 1.0 },
            UnaryOp::Exp,
            UnaryOp::Tanh,
        ] {
            let o = read(&d, d.backend().unary(op, z.as_ref(), &l4).unwrap().as_ref());
            assert!(o[2].is_nan(), "{} of NaN {dt}: {o:?}", op.name());
        }
    }
    // Gelu in f64 where the erf tail matters.
    let (g, _) = upload(&d, &[-3.0, 1e-3], DType::F64);
    let got = read(
        &d,
        d.backend()
            .unary(UnaryOp::Gelu, g.as_ref(), &Layout::contiguous([2]))
            .unwrap()
            .as_ref(),
    );
    let r = std::f64::consts::FRAC_1_SQRT_2;
    let want = [-1.5 * erfc_cf(3.0 * r), 0.5e-3 * (1.0 + erf_ref(1e-3 * r))];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-12 * w.abs(), "gelu: {g} vs {w}");
    }
}

#[test]
fn unary_ints_exact_and_wrapping() {
    let Some(d) = gpu() else { return };
    let base: Vec<f64> = noise(96, 3).iter().map(|x| (x * 200.0).round()).collect();
    for dt in INTS {
        let vals: Vec<f64> = match dt {
            DType::I64 => base
                .iter()
                .enumerate()
                .map(|(i, &v)| if i % 7 == 0 { v * 1e12 } else { v })
                .collect(),
            DType::U32 => base
                .iter()
                .map(|&v| v.abs() * if v > 0.0 { 2e7 } else { 1.0 })
                .collect(),
            _ => base.iter().map(|&v| v.abs()).collect(),
        };
        let h = HostData::from_f64_slice(&vals, dt);
        let stored: Vec<i128> = h.to_f64_vec().iter().map(|&v| v as i128).collect();
        let src = upload_host(&d, h);
        let ops: [(UnaryOp, IntRef); 9] = [
            (UnaryOp::Neg, Box::new(move |x| wrap(-x, dt))),
            (UnaryOp::Abs, Box::new(move |x| wrap(x.abs(), dt))),
            (UnaryOp::Sign, Box::new(move |x| wrap(x.signum(), dt))),
            (UnaryOp::Sqr, Box::new(move |x| wrap(x * x, dt))),
            (UnaryOp::Relu, Box::new(|x| x.max(0))),
            (
                UnaryOp::Affine {
                    mul: 3.0,
                    add: -7.0,
                },
                Box::new(move |x| wrap(x * 3 - 7, dt)),
            ),
            (
                UnaryOp::Affine {
                    mul: 0.5,
                    add: 1.25,
                },
                Box::new(move |x| f2i(x as f64 * 0.5 + 1.25, dt)),
            ),
            (
                UnaryOp::Clamp {
                    min: -20.5,
                    max: 100.5,
                },
                Box::new(move |x| {
                    x.clamp(-20, 100)
                        .max(if dt == DType::I64 { -20 } else { 0 })
                }),
            ),
            (
                UnaryOp::Clamp {
                    min: 10.0,
                    max: 50.0,
                },
                Box::new(|x| x.clamp(10, 50)),
            ),
        ];
        for (op, r) in &ops {
            for l in unary_views() {
                let out = d.backend().unary(*op, src.as_ref(), &l).unwrap();
                assert_eq!(out.dtype(), dt);
                let want: Vec<i128> = view(&stored, &l).into_iter().map(r).collect();
                assert_eq!(
                    read_ints(&d, out.as_ref()),
                    want,
                    "{op:?} {dt} {:?} {:?}",
                    l.dims(),
                    l.strides()
                );
            }
        }
        // Float-only ops are rejected like the CPU does.
        for op in [
            UnaryOp::Exp,
            UnaryOp::Gelu,
            UnaryOp::Round,
            UnaryOp::Powf(2.0),
        ] {
            match d
                .backend()
                .unary(op, src.as_ref(), &Layout::contiguous([4]))
            {
                Err(Error::UnsupportedDType { dtype, .. }) => assert_eq!(dtype, dt),
                other => panic!("{} on {dt}: {other:?}", op.name()),
            }
        }
    }
    // Wrapping edge cases.
    let src = upload_host(&d, HostData::I64(vec![i64::MIN, i64::MAX, -1, 3]));
    let l = Layout::contiguous([4]);
    let run = |op| {
        read_ints(
            &d,
            d.backend().unary(op, src.as_ref(), &l).unwrap().as_ref(),
        )
    };
    let (min, max) = (i64::MIN as i128, i64::MAX as i128);
    assert_eq!(run(UnaryOp::Neg), [min, -max, 1, -3]);
    assert_eq!(run(UnaryOp::Abs), [min, max, 1, 3]);
    assert_eq!(run(UnaryOp::Affine { mul: 2.0, add: 1.0 }), [1, -1, -1, 7]);
    // Fractional affine saturates like Rust's `as`.
    assert_eq!(
        run(UnaryOp::Affine { mul: 2.5, add: 0.0 }),
        [min, max, -2, 7]
    );
    let src = upload_host(&d, HostData::U8(vec![0, 1, 200, 255]));
    let run = |op| {
        read_ints(
            &d,
            d.backend().unary(op, src.as_ref(), &l).unwrap().as_ref(),
        )
    };
    assert_eq!(run(UnaryOp::Neg), [0, 255, 56, 1]);
    assert_eq!(run(UnaryOp::Sqr), [0, 1, 64, 1]);
    assert_eq!(
        run(UnaryOp::Affine {
            mul: 0.5,
            add: -10.0
        }),
        [0, 0, 90, 117]
    );
}

// ---- binary ----------------------------------------------------------------------------------

/// (lhs, rhs) layouts of shape [3, 4, 5] over buffers of 120 elements: contiguous pairs,
/// broadcasts (stride 0) on either side and along either end, transposed and narrowed views.
fn binary_layouts() -> Vec<(Layout, Layout)> {
    let s = Shape::from([3, 4, 5]);
    let c = Layout::contiguous([3, 4, 5]);
    vec![
        (c.clone(), c.clone()),
        (
            c.clone(),
            Layout::contiguous([4, 5]).broadcast_as(&s).unwrap(),
        ),
        (
            Layout::contiguous([4, 5]).broadcast_as(&s).unwrap(),
            c.clone(),
        ),
        (
            c.clone(),
            Layout::contiguous([3, 4, 1]).broadcast_as(&s).unwrap(),
        ),
        (
            Layout::contiguous([5, 4, 3]).permute(&[2, 1, 0]),
            Layout::contiguous([3, 4, 10]).narrow(2, 5, 5),
        ),
        (
            Layout::contiguous([3, 1, 5]).broadcast_as(&s).unwrap(),
            Layout::contiguous([4, 3, 5]).permute(&[1, 0, 2]),
        ),
    ]
}

const ALL_BINARY: [BinaryOp; 7] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Pow,
    BinaryOp::Maximum,
    BinaryOp::Minimum,
];

fn binary_ref(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Maximum => a.max(b),
        BinaryOp::Minimum => a.min(b),
    }
}

#[test]
fn binary_floats_broadcast_and_strided() {
    let Some(d) = gpu() else { return };
    let da: Vec<f64> = noise(120, 5).iter().map(|x| x.abs() * 3.0 + 0.5).collect();
    let db: Vec<f64> = noise(120, 6)
        .iter()
        .map(|x| x.signum() * (x.abs() * 3.0 + 0.25))
        .collect();
    for dt in FLOATS {
        let ((sa, ra), (sb, rb)) = (upload(&d, &da, dt), upload(&d, &db, dt));
        for (al, bl) in binary_layouts() {
            let (va, vb) = (view(&ra, &al), view(&rb, &bl));
            for op in ALL_BINARY {
                let out = d
                    .backend()
                    .binary(op, sa.as_ref(), &al, sb.as_ref(), &bl)
                    .unwrap();
                assert_eq!(out.dtype(), dt);
                let want: Vec<f64> = va
                    .iter()
                    .zip(&vb)
                    .map(|(&a, &b)| round_to(binary_ref(op, a, b), dt))
                    .collect();
                let what = format!("{} {dt} {al:?} {bl:?}", op.name());
                let t = match op {
                    // One rounding of the exact result (f16/bf16 through f32: at most a
                    // double rounding).
                    BinaryOp::Maximum | BinaryOp::Minimum => 0.0,
                    BinaryOp::Pow => 2.0 * tol(dt),
                    _ => tol(dt),
                };
                close(&read(&d, out.as_ref()), &want, t, &what);
            }
        }
    }
}

#[test]
fn maximum_minimum_propagate_nan() {
    let Some(d) = gpu() else { return };
    let l = Layout::contiguous([4]);
    for dt in FLOATS {
        let (a, _) = upload(&d, &[f64::NAN, 1.0, 2.0, -0.0], dt);
        let (b, _) = upload(&d, &[0.0, f64::NAN, 1.0, 0.0], dt);
        for op in [BinaryOp::Maximum, BinaryOp::Minimum] {
            let o = read(
                &d,
                d.backend()
                    .binary(op, a.as_ref(), &l, b.as_ref(), &l)
                    .unwrap()
                    .as_ref(),
            );
            assert!(o[0].is_nan() && o[1].is_nan(), "{op:?} {dt}: {o:?}");
            let want = if op == BinaryOp::Maximum { 2.0 } else { 1.0 };
            assert_eq!(o[2], want, "{op:?} {dt}");
        }
    }
}

/// The CPU's integer binary ops on exact values; None for a zero divisor.
fn int_binary_ref(op: BinaryOp, a: i128, b: i128, dt: DType) -> Option<i128> {
    Some(match op {
        BinaryOp::Add => wrap(a + b, dt),
        BinaryOp::Sub => wrap(a - b, dt),
        BinaryOp::Mul => wrap(a.wrapping_mul(b), dt),
        BinaryOp::Div => {
            if b == 0 {
                return None;
            }
            wrap(
                a.div_euclid(b) - i128::from(b < 0 && a.rem_euclid(b) != 0),
                dt,
            )
        }
        BinaryOp::Pow => {
            if b < 0 {
                f2i((a as f64).powf(b as f64), dt)
            } else {
                let e = u32::try_from(b).unwrap_or(u32::MAX);
                match dt {
                    DType::U8 => (a as u8).wrapping_pow(e) as i128,
                    DType::U32 => (a as u32).wrapping_pow(e) as i128,
                    _ => (a as i64).wrapping_pow(e) as i128,
                }
            }
        }
        BinaryOp::Maximum => a.max(b),
        BinaryOp::Minimum => a.min(b),
    })
}

#[test]
fn binary_ints_exact_wrapping_floor_div() {
    let Some(d) = gpu() else { return };
    let na = noise(120, 7);
    let nb = noise(120, 8);
    for dt in INTS {
        let (va, vb): (Vec<f64>, Vec<f64>) = match dt {
            DType::I64 => (
                na.iter().map(|x| (x * 3e9).round()).collect(),
                nb.iter()
                    .map(|x| (x * 30.0).round())
                    .map(|x| if x == 0.0 { 3.0 } else { x })
                    .collect(),
            ),
            DType::U32 => (
                na.iter().map(|x| (x.abs() * 4e9).round()).collect(),
                nb.iter().map(|x| (x.abs() * 4e5).round() + 1.0).collect(),
            ),
            _ => (
                na.iter().map(|x| (x.abs() * 255.0).round()).collect(),
                nb.iter().map(|x| (x.abs() * 20.0).round() + 1.0).collect(),
            ),
        };
        let (ha, hb) = (
            HostData::from_f64_slice(&va, dt),
            HostData::from_f64_slice(&vb, dt),
        );
        let ra: Vec<i128> = ha.to_f64_vec().iter().map(|&v| v as i128).collect();
        let rb: Vec<i128> = hb.to_f64_vec().iter().map(|&v| v as i128).collect();
        let (sa, sb) = (upload_host(&d, ha), upload_host(&d, hb));
        for (al, bl) in binary_layouts() {
            let (xa, xb) = (view(&ra, &al), view(&rb, &bl));
            for op in ALL_BINARY {
                // Small exponents for pow (and a few negative ones for i64).
                let (sb2, xb2);
                let (rhs, xs) = if op == BinaryOp::Pow {
                    let e: Vec<i128> = rb
                        .iter()
                        .map(|&v| {
                            if dt == DType::I64 {
                                v.rem_euclid(9) - 2
                            } else {
                                v.rem_euclid(40)
                            }
                        })
                        .collect();
                    sb2 = upload_host(
                        &d,
                        HostData::from_f64_slice(
                            &e.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                            dt,
                        ),
                    );
                    xb2 = view(&e, &bl);
                    (&sb2, &xb2)
                } else {
                    (&sb, &xb)
                };
                let out = d
                    .backend()
                    .binary(op, sa.as_ref(), &al, rhs.as_ref(), &bl)
                    .unwrap();
                assert_eq!(out.dtype(), dt);
                let want: Vec<i128> = xa
                    .iter()
                    .zip(xs.iter())
                    .map(|(&a, &b)| int_binary_ref(op, a, b, dt).unwrap())
                    .collect();
                assert_eq!(
                    read_ints(&d, out.as_ref()),
                    want,
                    "{} {dt} {al:?} {bl:?}",
                    op.name()
                );
            }
        }
    }
    // Floor division of every sign combination, and pow edge cases.
    let l = Layout::contiguous([6]);
    let a = upload_host(&d, HostData::I64(vec![7, -7, 7, -7, 0, i64::MIN]));
    let b = upload_host(&d, HostData::I64(vec![2, 2, -2, -2, -5, -1]));
    let q = d
        .backend()
        .binary(BinaryOp::Div, a.as_ref(), &l, b.as_ref(), &l)
        .unwrap();
    assert_eq!(
        read_ints(&d, q.as_ref()),
        [3, -4, -4, 3, 0, i64::MIN as i128]
    );
    let a = upload_host(&d, HostData::I64(vec![2, 1, -1, 0, 3, -2]));
    let b = upload_host(&d, HostData::I64(vec![-1, -3, -3, 0, 41, 63]));
    let p = d
        .backend()
        .binary(BinaryOp::Pow, a.as_ref(), &l, b.as_ref(), &l)
        .unwrap();
    assert_eq!(
        read_ints(&d, p.as_ref()),
        [
            0,
            1,
            -1,
            1,
            3i64.wrapping_pow(41) as i128,
            (-2i64).wrapping_pow(63) as i128
        ]
    );
}

#[test]
fn integer_division_by_zero_is_an_error() {
    let Some(d) = gpu() else { return };
    for dt in INTS {
        let (a, _) = upload(&d, &[6.0, 9.0, 200.0, 4.0], dt);
        let (z, _) = upload(&d, &[1.0, 0.0, 1.0, 2.0], dt);
        let l = Layout::contiguous([4]);
        let e = d
            .backend()
            .binary(BinaryOp::Div, a.as_ref(), &l, z.as_ref(), &l)
            .expect_err("integer division by zero");
        assert!(e.to_string().contains("div"), "{e}");
        // Broadcast zero divisor.
        let zl = Layout::new(Shape::from([4]), vec![0], 1);
        assert!(d
            .backend()
            .binary(BinaryOp::Div, a.as_ref(), &l, z.as_ref(), &zl)
            .is_err());
        // The flag is cleared: the next division works.
        let ok = d
            .backend()
            .binary(BinaryOp::Div, a.as_ref(), &l, a.as_ref(), &l)
            .unwrap();
        assert_eq!(read(&d, ok.as_ref()), [1.0; 4], "{dt}");
    }
    // Float division by zero is no error.
    let (a, _) = upload(&d, &[1.0, -1.0, 0.0], DType::F32);
    let (z, _) = upload(&d, &[0.0, 0.0, 0.0], DType::F32);
    let l = Layout::contiguous([3]);
    let o = read(
        &d,
        d.backend()
            .binary(BinaryOp::Div, a.as_ref(), &l, z.as_ref(), &l)
            .unwrap()
            .as_ref(),
    );
    assert!(o[0] == f64::INFINITY && o[1] == f64::NEG_INFINITY && o[2].is_nan());
}

#[test]
fn binary_rejects_mismatches() {
    let Some(d) = gpu() else { return };
    let (a, _) = upload(&d, &[1.0, 2.0], DType::F32);
    let (b, _) = upload(&d, &[1.0, 2.0], DType::F64);
    let l = Layout::contiguous([2]);
    assert!(matches!(
        d.backend()
            .binary(BinaryOp::Add, a.as_ref(), &l, b.as_ref(), &l),
        Err(Error::DTypeMismatch { .. })
    ));
    assert!(d
        .backend()
        .binary(
            BinaryOp::Add,
            a.as_ref(),
            &l,
            a.as_ref(),
            &Layout::contiguous([1, 2])
        )
        .is_err());
}

// ---- comparisons and where ---------------------------------------------------------------------

#[test]
fn comparisons_all_dtypes() {
    let Some(d) = gpu() else { return };
    let ops: [(CmpOp, CmpRef); 6] = [
        (CmpOp::Eq, |a, b| a == b),
        (CmpOp::Ne, |a, b| a != b),
        (CmpOp::Lt, |a, b| a < b),
        (CmpOp::Le, |a, b| a <= b),
        (CmpOp::Gt, |a, b| a > b),
        (CmpOp::Ge, |a, b| a >= b),
    ];
    // Few distinct values, so equalities happen.
    let va: Vec<f64> = noise(120, 11)
        .iter()
        .map(|x| (x * 4.0).round().abs())
        .collect();
    let vb: Vec<f64> = noise(120, 12)
        .iter()
        .map(|x| (x * 4.0).round().abs())
        .collect();
    for dt in DType::ALL {
        let ((sa, ra), (sb, rb)) = (upload(&d, &va, dt), upload(&d, &vb, dt));
        for (al, bl) in binary_layouts() {
            let (xa, xb) = (view(&ra, &al), view(&rb, &bl));
            for (op, r) in ops {
                let out = d
                    .backend()
                    .cmp(op, sa.as_ref(), &al, sb.as_ref(), &bl)
                    .unwrap();
                assert_eq!(out.dtype(), DType::U8);
                let want: Vec<f64> = xa
                    .iter()
                    .zip(&xb)
                    .map(|(&a, &b)| r(a, b) as u8 as f64)
                    .collect();
                assert_eq!(
                    read(&d, out.as_ref()),
                    want,
                    "{} {dt} {al:?} {bl:?}",
                    op.name()
                );
            }
        }
    }
    // NaN compares unequal to everything, −0 equals +0.
    for dt in FLOATS {
        let (n, _) = upload(&d, &[f64::NAN, f64::NAN, 1.0, -0.0], dt);
        let (m, _) = upload(&d, &[f64::NAN, 1.0, f64::NAN, 0.0], dt);
        let l = Layout::contiguous([4]);
        for (op, r) in ops {
            let o = read(
                &d,
                d.backend()
                    .cmp(op, n.as_ref(), &l, m.as_ref(), &l)
                    .unwrap()
                    .as_ref(),
            );
            let want: Vec<f64> = [(f64::NAN, f64::NAN), (f64::NAN, 1.0), (1.0, f64::NAN)]
                .iter()
                .map(|&(a, b)| r(a, b) as u8 as f64)
                .chain([r(-0.0, 0.0) as u8 as f64])
                .collect();
            assert_eq!(o, want, "{} with NaN {dt}", op.name());
        }
    }
}

#[test]
fn where_all_dtypes_and_strided_conditions() {
    let Some(d) = gpu() else { return };
    let s = Shape::from([3, 4, 5]);
    let cond: Vec<u8> = noise(60, 21)
        .iter()
        .map(|x| if *x > 0.0 { (x * 255.0) as u8 } else { 0 })
        .collect();
    let sc = upload_host(&d, HostData::U8(cond.clone()));
    let conds = [
        Layout::contiguous([3, 4, 5]),
        Layout::contiguous([5, 4, 3]).permute(&[2, 1, 0]),
        Layout::contiguous([4, 5]).broadcast_as(&s).unwrap(),
        Layout::contiguous([3, 4, 1]).broadcast_as(&s).unwrap(),
    ];
    let vt: Vec<f64> = (0..120).map(|i| i as f64).collect();
    let vf: Vec<f64> = (0..120).map(|i| 200.0 - i as f64).collect();
    for dt in DType::ALL {
        let ((st, rt), (sf, rf)) = (upload(&d, &vt, dt), upload(&d, &vf, dt));
        for cl in &conds {
            for (tl, fl) in binary_layouts() {
                let out = d
                    .backend()
                    .where_cond(sc.as_ref(), cl, st.as_ref(), &tl, sf.as_ref(), &fl)
                    .unwrap();
                assert_eq!(out.dtype(), dt);
                let (c, t, f) = (view(&cond, cl), view(&rt, &tl), view(&rf, &fl));
                let want: Vec<f64> = (0..60)
                    .map(|i| if c[i] != 0 { t[i] } else { f[i] })
                    .collect();
                assert_eq!(
                    read(&d, out.as_ref()),
                    want,
                    "where {dt} {cl:?} {tl:?} {fl:?}"
                );
            }
        }
    }
    // A non-u8 condition reads as "non-zero" (NaN counts, −0 does not), as on the CPU.
    let (c, _) = upload(&d, &[1.0, 0.0, f64::NAN, -0.0, -2.0], DType::F32);
    let (t, _) = upload(&d, &[1.0; 5], DType::F64);
    let (f, _) = upload(&d, &[2.0; 5], DType::F64);
    let l = Layout::contiguous([5]);
    let o = d
        .backend()
        .where_cond(c.as_ref(), &l, t.as_ref(), &l, f.as_ref(), &l)
        .unwrap();
    assert_eq!(read(&d, o.as_ref()), [1.0, 2.0, 1.0, 2.0, 1.0]);
}

// ---- reductions ------------------------------------------------------------------------------

/// Reduce the view `l` of `data` over `dims`: one group per output (keepdim row-major order),
/// each in reduced row-major order.
fn groups<T: Copy>(data: &[T], l: &Layout, dims: &[usize]) -> Vec<Vec<T>> {
    let vals = view(data, l);
    let shape = l.dims();
    let rank = shape.len();
    let in_strides = Shape::from(shape.to_vec()).contiguous_strides();
    let kept: Vec<usize> = (0..rank).filter(|i| !dims.contains(i)).collect();
    let out_n: usize = kept.iter().map(|&i| shape[i]).product();
    let mut g: Vec<Vec<(usize, T)>> = vec![vec![]; out_n];
    for (lin, &v) in vals.iter().enumerate() {
        let idx: Vec<usize> = (0..rank)
            .map(|k| (lin / in_strides[k]) % shape[k])
            .collect();
        let (mut o, mut r) = (0, 0);
        for k in 0..rank {
            if dims.contains(&k) {
                r = r * shape[k] + idx[k];
            } else {
                o = o * shape[k] + idx[k];
            }
        }
        g[o].push((r, v));
    }
    g.into_iter()
        .map(|mut v| {
            v.sort_by_key(|x| x.0);
            v.into_iter().map(|x| x.1).collect()
        })
        .collect()
}

/// Index of the first NaN, else of the first max (min): the CPU's argmax (argmin).
fn arg_ref(g: &[f64], max: bool) -> f64 {
    if let Some(i) = g.iter().position(|x| x.is_nan()) {
        return i as f64;
    }
    let mut best = 0;
    for (i, &x) in g.iter().enumerate() {
        if (max && x > g[best]) || (!max && x < g[best]) {
            best = i;
        }
    }
    best as f64
}

fn float_reduce_ref(op: ReduceOp, g: &[f64]) -> f64 {
    match op {
        ReduceOp::Sum => g.iter().sum(),
        ReduceOp::Max | ReduceOp::Min => {
            if g.iter().any(|x| x.is_nan()) {
                f64::NAN
            } else if op == ReduceOp::Max {
                g.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
            } else {
                g.iter().cloned().fold(f64::INFINITY, f64::min)
            }
        }
        ReduceOp::ArgMax => arg_ref(g, true),
        ReduceOp::ArgMin => arg_ref(g, false),
    }
}

fn reduce_views() -> Vec<Layout> {
    let s = Shape::from([3, 4, 5]);
    vec![
        Layout::contiguous([3, 4, 5]),
        Layout::contiguous([5, 3, 4]).permute(&[1, 2, 0]),
        Layout::contiguous([3, 8, 5]).narrow(1, 3, 4),
        Layout::contiguous([4, 5]).broadcast_as(&s).unwrap(),
        Layout::contiguous([3, 1, 5]).broadcast_as(&s).unwrap(),
    ]
}

const DIMSETS: [&[usize]; 7] = [&[0], &[1], &[2], &[0, 1], &[0, 2], &[1, 2], &[0, 1, 2]];

fn run_reduce(
    d: &Device,
    op: ReduceOp,
    s: &dyn BackendStorage,
    l: &Layout,
    dims: &[usize],
) -> Storage {
    d.backend().reduce(op, s, l, dims).unwrap()
}

#[test]
fn reductions_floats_every_dim_set() {
    let Some(d) = gpu() else { return };
    // Few distinct values (ties for arg-reductions), both signs.
    let v: Vec<f64> = noise(120, 31)
        .iter()
        .map(|x| (x * 3.0).round() * 0.5)
        .collect();
    for dt in FLOATS {
        let (s, stored) = upload(&d, &v, dt);
        for l in reduce_views() {
            for dims in DIMSETS {
                let ops: &[ReduceOp] = if dims.len() == 1 {
                    &[
                        ReduceOp::Sum,
                        ReduceOp::Max,
                        ReduceOp::Min,
                        ReduceOp::ArgMax,
                        ReduceOp::ArgMin,
                    ]
                } else {
                    &[ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min]
                };
                let gs = groups(&stored, &l, dims);
                for &op in ops {
                    let out = run_reduce(&d, op, s.as_ref(), &l, dims);
                    let arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
                    assert_eq!(out.dtype(), if arg { DType::I64 } else { dt });
                    let want: Vec<f64> = gs
                        .iter()
                        .map(|g| {
                            let r = float_reduce_ref(op, g);
                            if arg {
                                r
                            } else {
                                round_to(r, dt)
                            }
                        })
                        .collect();
                    let what = format!(
                        "{} {dt} {:?} {:?} dims {dims:?}",
                        op.name(),
                        l.dims(),
                        l.strides()
                    );
                    // Halves summed in f32/f64 are exact.
                    assert_eq!(read(&d, out.as_ref()), want, "{what}");
                }
            }
        }
    }
}

#[test]
fn reductions_ints_wrap() {
    let Some(d) = gpu() else { return };
    let n = noise(120, 41);
    for dt in INTS {
        let v: Vec<f64> = match dt {
            DType::I64 => n.iter().map(|x| (x * 4e18).round()).collect(),
            DType::U32 => n.iter().map(|x| (x.abs() * 4e9).round()).collect(),
            _ => n.iter().map(|x| (x.abs() * 8.0).round() * 30.0).collect(),
        };
        let h = HostData::from_f64_slice(&v, dt);
        let stored: Vec<i128> = match &h {
            HostData::U8(v) => v.iter().map(|&x| x as i128).collect(),
            HostData::U32(v) => v.iter().map(|&x| x as i128).collect(),
            HostData::I64(v) => v.iter().map(|&x| x as i128).collect(),
            _ => unreachable!(),
        };
        let s = upload_host(&d, h);
        for l in reduce_views() {
            for dims in DIMSETS {
                let gs = groups(&stored, &l, dims);
                let mut ops = vec![ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min];
                if dims.len() == 1 {
                    ops.extend([ReduceOp::ArgMax, ReduceOp::ArgMin]);
                }
                for op in ops {
                    let out = run_reduce(&d, op, s.as_ref(), &l, dims);
                    let want: Vec<i128> = gs
                        .iter()
                        .map(|g| match op {
                            ReduceOp::Sum => wrap(g.iter().sum(), dt),
                            ReduceOp::Max => *g.iter().max().unwrap(),
                            ReduceOp::Min => *g.iter().min().unwrap(),
                            ReduceOp::ArgMax => {
                                let m = g.iter().max().unwrap();
                                g.iter().position(|x| x == m).unwrap() as i128
                            }
                            ReduceOp::ArgMin => {
                                let m = g.iter().min().unwrap();
                                g.iter().position(|x| x == m).unwrap() as i128
                            }
                        })
                        .collect();
                    assert_eq!(
                        read_ints(&d, out.as_ref()),
                        want,
                        "{} {dt} {:?} {:?} dims {dims:?}",
                        op.name(),
                        l.dims(),
                        l.strides()
                    );
                }
            }
        }
    }
}

#[test]
fn argmax_ties_and_nan() {
    let Some(d) = gpu() else { return };
    // The conformance case: first occurrence wins along either dim.
    let v = [3.0, 1.0, 3.0, 0.0, 1.0, 1.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0];
    let l = Layout::contiguous([3, 4]);
    for dt in DType::ALL {
        let (s, _) = upload(&d, &v, dt);
        let r = |op, dim| read(&d, run_reduce(&d, op, s.as_ref(), &l, &[dim]).as_ref());
        assert_eq!(r(ReduceOp::ArgMax, 1), [0.0, 0.0, 0.0], "{dt}");
        assert_eq!(r(ReduceOp::ArgMin, 1), [3.0, 2.0, 0.0], "{dt}");
        assert_eq!(r(ReduceOp::ArgMax, 0), [0.0, 2.0, 0.0, 2.0], "{dt}");
        assert_eq!(r(ReduceOp::ArgMin, 0), [1.0, 0.0, 1.0, 0.0], "{dt}");
        let lt = l.permute(&[1, 0]);
        let rt = read(
            &d,
            run_reduce(&d, ReduceOp::ArgMax, s.as_ref(), &lt, &[0]).as_ref(),
        );
        assert_eq!(rt, [0.0, 0.0, 0.0], "{dt} transposed");
    }
    // NaN: the first NaN wins both argmax and argmin; max/min return NaN.
    for dt in FLOATS {
        let (s, _) = upload(&d, &[1.0, f64::NAN, 5.0, f64::NAN, -1.0], dt);
        let l = Layout::contiguous([5]);
        for (op, want) in [(ReduceOp::ArgMax, 1.0), (ReduceOp::ArgMin, 1.0)] {
            assert_eq!(
                read(&d, run_reduce(&d, op, s.as_ref(), &l, &[0]).as_ref()),
                [want],
                "{dt}"
            );
        }
        for op in [ReduceOp::Max, ReduceOp::Min] {
            assert!(read(&d, run_reduce(&d, op, s.as_ref(), &l, &[0]).as_ref())[0].is_nan());
        }
    }
}

#[test]
fn large_reductions_split_and_tree_paths() {
    let Some(d) = gpu() else { return };
    // (shape, dims): rows with few outputs (split), columns (kept dims innermost, split),
    // everything, a middle dim, and many mid-sized rows.
    let cases: [(&[usize], &[usize]); 6] = [
        (&[3, 100_003], &[1]),
        (&[100_003, 3], &[0]),
        (&[1 << 20], &[0]),
        (&[7, 3001, 5], &[1]),
        (&[4000, 77], &[1]),
        (&[64, 64, 64], &[0, 2]),
    ];
    for (shape, dims) in cases {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = noise(n, n as u64).iter().map(|x| x * 2.0).collect();
        let l = Layout::contiguous(shape.to_vec());
        for dt in [DType::F32, DType::F64, DType::BF16, DType::I64] {
            let vv: Vec<f64> = if dt == DType::I64 {
                v.iter().map(|x| (x * 1000.0).round()).collect()
            } else {
                v.clone()
            };
            let (s, stored) = upload(&d, &vv, dt);
            let gs = groups(&stored, &l, dims);
            for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min] {
                let got = read(&d, run_reduce(&d, op, s.as_ref(), &l, dims).as_ref());
                let want: Vec<f64> = gs.iter().map(|g| float_reduce_ref(op, g)).collect();
                let what = format!("{} {dt} {shape:?} dims {dims:?}", op.name());
                if op == ReduceOp::Sum && dt.is_float() {
                    // Relative to the sum of magnitudes (f32 accumulation for 16-bit floats).
                    let acc_eps = if dt == DType::F64 { 1e-13 } else { 1e-5 };
                    for (i, (g, (w, grp))) in got.iter().zip(want.iter().zip(&gs)).enumerate() {
                        let mag: f64 = grp.iter().map(|x| x.abs()).sum();
                        let t = acc_eps * mag + tol(dt) * w.abs();
                        assert!((g - w).abs() <= t, "{what}[{i}]: got {g}, want {w}");
                    }
                } else {
                    let want: Vec<f64> = want.iter().map(|&w| round_to(w, dt)).collect();
                    assert_eq!(got, want, "{what}");
                }
            }
            if dims.len() == 1 {
                for op in [ReduceOp::ArgMax, ReduceOp::ArgMin] {
                    let got = read(&d, run_reduce(&d, op, s.as_ref(), &l, dims).as_ref());
                    let want: Vec<f64> = gs.iter().map(|g| float_reduce_ref(op, g)).collect();
                    assert_eq!(got, want, "{} {dt} {shape:?} dims {dims:?}", op.name());
                }
            }
        }
    }
    // The maximum twice in a long row, far apart: the first index wins through the split.
    let n = 1 << 20;
    let mut v = vec![0.0; n];
    v[700_001] = 5.0;
    v[12_345] = 5.0;
    v[999_999] = -5.0;
    v[3] = -5.0;
    let (s, _) = upload(&d, &v, DType::F32);
    let l = Layout::contiguous([n]);
    assert_eq!(
        read(
            &d,
            run_reduce(&d, ReduceOp::ArgMax, s.as_ref(), &l, &[0]).as_ref()
        ),
        [12_345.0]
    );
    assert_eq!(
        read(
            &d,
            run_reduce(&d, ReduceOp::ArgMin, s.as_ref(), &l, &[0]).as_ref()
        ),
        [3.0]
    );
}

#[test]
fn reduction_edge_cases_and_errors() {
    let Some(d) = gpu() else { return };
    let (s, _) = upload(&d, &[], DType::F32);
    let l = Layout::contiguous([2, 0]);
    // Sum over an empty dim is zeros; max over it is an error; no outputs is no error.
    let z = run_reduce(&d, ReduceOp::Sum, s.as_ref(), &l, &[1]);
    assert_eq!(read(&d, z.as_ref()), [0.0, 0.0]);
    assert!(d
        .backend()
        .reduce(ReduceOp::Max, s.as_ref(), &l, &[1])
        .is_err());
    assert!(d
        .backend()
        .reduce(ReduceOp::ArgMin, s.as_ref(), &l, &[1])
        .is_err());
    let e = run_reduce(&d, ReduceOp::Max, s.as_ref(), &l, &[0]);
    assert_eq!(e.len(), 0);
    let (s, _) = upload(&d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], DType::F32);
    let l = Layout::contiguous([2, 3]);
    for dims in [&[][..], &[1, 0], &[0, 0], &[2]] {
        assert!(
            d.backend()
                .reduce(ReduceOp::Sum, s.as_ref(), &l, dims)
                .is_err(),
            "dims {dims:?}"
        );
    }
    assert!(d
        .backend()
        .reduce(ReduceOp::ArgMax, s.as_ref(), &l, &[0, 1])
        .is_err());
    assert!(d.backend().cumsum(s.as_ref(), &l, 2).is_err());
    // A rank-0 tensor reduces over no dims only, which is rejected; a size-1 reduction copies.
    let one = run_reduce(
        &d,
        ReduceOp::Sum,
        s.as_ref(),
        &Layout::contiguous([6, 1]),
        &[1],
    );
    assert_eq!(read(&d, one.as_ref()), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

// ---- cumsum ----------------------------------------------------------------------------------

/// Inclusive prefix sums along `dim` of the view (output in the view's row-major order).
fn cumsum_ref<T: Copy>(data: &[T], l: &Layout, dim: usize, add: impl Fn(T, T) -> T) -> Vec<T> {
    let mut v = view(data, l);
    let dims = l.dims();
    let n = dims[dim];
    let inner: usize = dims[dim + 1..].iter().product();
    let outer: usize = dims[..dim].iter().product();
    for o in 0..outer {
        for j in 1..n {
            for i in 0..inner {
                let (p, c) = ((o * n + j - 1) * inner + i, (o * n + j) * inner + i);
                v[c] = add(v[p], v[c]);
            }
        }
    }
    v
}

#[test]
fn cumsum_every_dim_and_dtype() {
    let Some(d) = gpu() else { return };
    let views = [
        Layout::contiguous([4, 7, 5]),
        Layout::contiguous([5, 4, 7]).permute(&[1, 2, 0]),
        Layout::contiguous([4, 9, 5]).narrow(1, 2, 7),
        Layout::contiguous([7, 1])
            .broadcast_as(&Shape::from([4, 7, 5]))
            .unwrap(),
    ];
    let raw = noise(180, 51);
    for dt in DType::ALL {
        let v: Vec<f64> = match dt {
            DType::U8 => raw.iter().map(|x| (x.abs() * 255.0).round()).collect(),
            DType::U32 => raw.iter().map(|x| (x.abs() * 4e9).round()).collect(),
            DType::I64 => raw.iter().map(|x| (x * 4e18).round()).collect(),
            _ => raw.iter().map(|x| (x * 8.0).round() * 0.25).collect(),
        };
        let h = HostData::from_f64_slice(&v, dt);
        let stored = h.to_f64_vec();
        let stored_i: Vec<i128> = match &h {
            HostData::U8(v) => v.iter().map(|&x| x as i128).collect(),
            HostData::U32(v) => v.iter().map(|&x| x as i128).collect(),
            HostData::I64(v) => v.iter().map(|&x| x as i128).collect(),
            _ => vec![],
        };
        let s = upload_host(&d, h);
        for l in &views {
            for dim in 0..3 {
                let out = d.backend().cumsum(s.as_ref(), l, dim).unwrap();
                assert_eq!(out.dtype(), dt);
                let what = format!("cumsum({dim}) {dt} {:?} {:?}", l.dims(), l.strides());
                if dt.is_int() {
                    let want: Vec<i128> = cumsum_ref(&stored_i, l, dim, |a, b| wrap(a + b, dt));
                    assert_eq!(read_ints(&d, out.as_ref()), want, "{what}");
                } else {
                    // Quarters: exact in f32/f64 accumulation, rounded once per output.
                    let want: Vec<f64> = cumsum_ref(&stored, l, dim, |a, b| a + b)
                        .into_iter()
                        .map(|x| round_to(x, dt))
                        .collect();
                    assert_eq!(read(&d, out.as_ref()), want, "{what}");
                }
            }
        }
    }
}

#[test]
fn cumsum_long_lines() {
    let Some(d) = gpu() else { return };
    // Long last dim (block scan), long first dim with few lines (block scan, strided), long
    // first dim with many lines (a thread per line), many mid-length rows (a warp per line).
    let cases: [(&[usize], usize); 5] = [
        (&[3, 5000], 1),
        (&[5000, 3], 0),
        (&[1, 70_001], 1),
        (&[1500, 9000], 0),
        (&[300, 1000], 1),
    ];
    for (shape, dim) in cases {
        let n: usize = shape.iter().product();
        let raw = noise(n, 61 + n as u64);
        let l = Layout::contiguous(shape.to_vec());
        // Integers: exact wrapping.
        let vi: Vec<f64> = raw.iter().map(|x| (x.abs() * 255.0).round()).collect();
        let (s, stored) = upload(&d, &vi, DType::U8);
        let si: Vec<i128> = stored.iter().map(|&x| x as i128).collect();
        let out = d.backend().cumsum(s.as_ref(), &l, dim).unwrap();
        let want = cumsum_ref(&si, &l, dim, |a, b| wrap(a + b, DType::U8));
        assert_eq!(read_ints(&d, out.as_ref()), want, "u8 {shape:?} dim {dim}");
        // Small integers in f32: exact.
        let vf: Vec<f64> = raw.iter().map(|x| (x * 10.0).round()).collect();
        let (s, stored) = upload(&d, &vf, DType::F32);
        let out = d.backend().cumsum(s.as_ref(), &l, dim).unwrap();
        let want = cumsum_ref(&stored, &l, dim, |a, b| a + b);
        assert_eq!(read(&d, out.as_ref()), want, "f32 {shape:?} dim {dim}");
        // General floats in f64 and f16: close to the f64 prefix sums.
        for dt in [DType::F64, DType::F16] {
            let (s, stored) = upload(&d, &raw, dt);
            let out = d.backend().cumsum(s.as_ref(), &l, dim).unwrap();
            let want = cumsum_ref(&stored, &l, dim, |a, b| a + b);
            let mag = cumsum_ref(&stored, &l, dim, |a, b| a.abs() + b.abs());
            let got = read(&d, out.as_ref());
            let eps = if dt == DType::F64 { 1e-13 } else { 1e-5 };
            for i in 0..got.len() {
                let t = eps * mag[i] + tol(dt) * want[i].abs();
                assert!(
                    (got[i] - want[i]).abs() <= t,
                    "{dt} {shape:?} dim {dim} [{i}]: got {}, want {}",
                    got[i],
                    want[i]
                );
            }
        }
    }
}
