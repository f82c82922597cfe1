//! Forward cases: matmul against a naive triple loop (odd sizes, strided operands, batches).

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("matmul_strided_batches", matmul_strided_batches),
        case("matmul", matmul),
        case("matmul_batched", matmul_batched),
    ]
}

// ---- matmul ---------------------------------------------------------------------------------

/// C = A·B for row-major A [m, k], B [k, n], in f64.
fn naive_mm(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    c
}

fn mm_tol(dt: DType, k: usize) -> (f64, f64) {
    match dt {
        DType::F64 => (1e-12 * k as f64, 1e-12),
        DType::F32 => (3e-6 * k as f64, 1e-5),
        DType::F16 => (1e-2, 2e-3),
        _ => (3e-2, 1e-2),
    }
}

fn matmul(d: &Device) -> Result<()> {
    for dt in FLOATS {
        for (m, k, n) in [(1, 1, 1), (7, 13, 5), (65, 33, 17), (1, 64, 9), (16, 1, 3)] {
            let av = det_values(m * k, (m * 100 + k) as u64);
            let bv = det_values(k * n, (k * 100 + n) as u64);
            let want = naive_mm(&rounded(&av, dt), &rounded(&bv, dt), m, k, n);
            let a = t(d, &av, (m, k), dt)?;
            let b = t(d, &bv, (k, n), dt)?;
            let tag = format!("{m}x{k}x{n} {dt}");
            expect(
                &format!("matmul {tag}"),
                &a.matmul(&b)?,
                &[m, n],
                dt,
                &want,
                mm_tol(dt, k),
            )?;
            // Transposed operands: the same matrices stored the other way round.
            let at = a.t()?.contiguous()?.t()?;
            let bt = b.t()?.contiguous()?.t()?;
            expect(
                &format!("matmul Aᵀ-stored {tag}"),
                &at.matmul(&b)?,
                &[m, n],
                dt,
                &want,
                mm_tol(dt, k),
            )?;
            expect(
                &format!("matmul Bᵀ-stored {tag}"),
                &a.matmul(&bt)?,
                &[m, n],
                dt,
                &want,
                mm_tol(dt, k),
            )?;
            expect(
                &format!("matmul both transposed {tag}"),
                &at.matmul(&bt)?,
                &[m, n],
                dt,
                &want,
                mm_tol(dt, k),
            )?;
        }
        // A narrowed (offset, padded-row) operand.
        let big = det_values(9 * 12, 5);
        let a = t(d, &big, (9, 12), dt)?.narrow(0, 2, 5)?.narrow(1, 3, 7)?;
        let av: Vec<f64> = (2..7)
            .flat_map(|i| (3..10).map(move |j| (i, j)))
            .map(|(i, j)| big[i * 12 + j])
            .collect();
        let bv = det_values(7 * 4, 6);
        let want = naive_mm(&rounded(&av, dt), &rounded(&bv, dt), 5, 7, 4);
        expect(
            &format!("matmul of narrowed view {dt}"),
            &a.matmul(&t(d, &bv, (7, 4), dt)?)?,
            &[5, 4],
            dt,
            &want,
            mm_tol(dt, 7),
        )?;
        // 1-D operands.
        let v = det_values(7, 8);
        let want: Vec<f64> = naive_mm(&rounded(&v, dt), &rounded(&bv, dt), 1, 7, 4);
        expect(
            &format!("matmul [7] x [7, 4] {dt}"),
            &t(d, &v, 7, dt)?.matmul(&t(d, &bv, (7, 4), dt)?)?,
            &[4],
            dt,
            &want,
            mm_tol(dt, 7),
        )?;
        let want = naive_mm(&rounded(&av, dt), &rounded(&v, dt), 5, 7, 1);
        expect(
            &format!("matmul [5, 7] x [7] {dt}"),
            &a.matmul(&t(d, &v, 7, dt)?)?,
            &[5],
            dt,
            &want,
            mm_tol(dt, 7),
        )?;
    }
    Ok(())
}

fn matmul_batched(d: &Device) -> Result<()> {
    for dt in FLOATS {
        // [3, 4, 5] x [3, 5, 2].
        let av = det_values(60, 11);
        let bv = det_values(30, 12);
        let (ar, br) = (rounded(&av, dt), rounded(&bv, dt));
        let want: Vec<f64> = (0..3)
            .flat_map(|i| {
                naive_mm(
                    &ar[i * 20..(i + 1) * 20],
                    &br[i * 10..(i + 1) * 10],
                    4,
                    5,
                    2,
                )
            })
            .collect();
        let a = t(d, &av, (3, 4, 5), dt)?;
        let b = t(d, &bv, (3, 5, 2), dt)?;
        expect(
            &format!("batched matmul {dt}"),
            &a.matmul(&b)?,
            &[3, 4, 2],
            dt,
            &want,
            mm_tol(dt, 5),
        )?;
        // Broadcast batch dims: [2, 1, 4, 5] x [3, 5, 2] → [2, 3, 4, 2].
        let a2v = det_values(40, 13);
        let a2r = rounded(&a2v, dt);
        let want: Vec<f64> = (0..2)
            .flat_map(|i| (0..3).map(move |j| (i, j)))
            .flat_map(|(i, j)| {
                naive_mm(
                    &a2r[i * 20..(i + 1) * 20],
                    &br[j * 10..(j + 1) * 10],
                    4,
                    5,
                    2,
                )
            })
            .collect();
        let a2 = t(d, &a2v, (2, 1, 4, 5), dt)?;
        expect(
            &format!("broadcast-batch matmul {dt}"),
            &a2.matmul(&b)?,
            &[2, 3, 4, 2],
            dt,
            &want,
            mm_tol(dt, 5),
        )?;
        // A 2-D lhs against a batched rhs, and a batch-transposed (permuted) lhs.
        let m = t(d, &a2v[..20], (4, 5), dt)?;
        let want: Vec<f64> = (0..3)
            .flat_map(|j| naive_mm(&a2r[..20], &br[j * 10..(j + 1) * 10], 4, 5, 2))
            .collect();
        expect(
            &format!("[4, 5] x [3, 5, 2] {dt}"),
            &m.matmul(&b)?,
            &[3, 4, 2],
            dt,
            &want,
            mm_tol(dt, 5),
        )?;
        let ap = t(d, &av, (4, 3, 5), dt)?.transpose(0, 1)?; // [3, 4, 5], batch stride 5
        let want: Vec<f64> = (0..3)
            .flat_map(|bi| {
                let sl: Vec<f64> = (0..4)
                    .flat_map(|i| (0..5).map(move |k| (i, k)))
                    .map(|(i, k)| ar[i * 15 + bi * 5 + k])
                    .collect();
                naive_mm(&sl, &br[bi * 10..(bi + 1) * 10], 4, 5, 2)
            })
            .collect();
        expect(
            &format!("permuted-batch matmul {dt}"),
            &ap.matmul(&b)?,
            &[3, 4, 2],
            dt,
            &want,
            mm_tol(dt, 5),
        )?;
    }
    Ok(())
}

/// The reference product of two tensors of rank ≥ 2 (batch dims broadcast), read back in
/// logical order — whatever their layouts.
fn ref_matmul(a: &Tensor, b: &Tensor) -> Result<(Vec<f64>, Vec<usize>)> {
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k, n) = (a.dims()[ra - 2], a.dims()[ra - 1], b.dims()[rb - 1]);
    let batch = Shape::from(a.dims()[..ra - 2].to_vec())
        .broadcast_with(&Shape::from(b.dims()[..rb - 2].to_vec()), "ref_matmul")?;
    let (av, bv) = (a.to_f64_vec()?, b.to_f64_vec()?);
    // Flat index of batch `i` (of the broadcast batch shape) in an operand's own batch dims.
    let offset = |i: usize, own: &[usize]| -> usize {
        let bd = batch.dims();
        let (mut rem, mut idx, mut stride) = (i, 0, 1);
        for j in (0..bd.len()).rev() {
            let c = rem % bd[j];
            rem /= bd[j];
            let o = j as i64 - (bd.len() as i64 - own.len() as i64);
            if o >= 0 {
                let size = own[o as usize];
                idx += (if size == 1 { 0 } else { c }) * stride;
                stride *= size;
            }
        }
        idx
    };
    let mut out = vec![];
    for i in 0..batch.elem_count() {
        let (oa, ob) = (
            offset(i, &a.dims()[..ra - 2]),
            offset(i, &b.dims()[..rb - 2]),
        );
        out.extend(naive_mm(
            &av[oa * m * k..(oa + 1) * m * k],
            &bv[ob * k * n..(ob + 1) * k * n],
            m,
            k,
            n,
        ));
    }
    let mut dims = batch.dims().to_vec();
    dims.extend([m, n]);
    Ok((out, dims))
}

/// Batched products of strided views: last-two-dims transposes, permuted batches and broadcast
/// batch dims together (the shapes composite ops such as conv_transpose produce), small and
/// past the sizes where a backend switches kernels.
fn matmul_strided_batches(d: &Device) -> Result<()> {
    for dt in FLOATS {
        let mk =
            |shape: &[usize], seed: u64| t(d, &det_values(shape.iter().product(), seed), shape, dt);
        let cases: Vec<(&str, Tensor, Tensor)> = vec![
            (
                "lhs [2, 5, 4]ᵀ x [2, 5, 3]",
                mk(&[2, 5, 4], 1)?.transpose(1, 2)?,
                mk(&[2, 5, 3], 2)?,
            ),
            (
                "[2, 4, 5] x rhs [2, 3, 5]ᵀ",
                mk(&[2, 4, 5], 3)?,
                mk(&[2, 3, 5], 4)?.transpose(1, 2)?,
            ),
            (
                "both transposed",
                mk(&[3, 5, 4], 5)?.transpose(1, 2)?,
                mk(&[3, 2, 5], 6)?.transpose(1, 2)?,
            ),
            (
                "lhs [1, 3, 18]ᵀ x [1, 1, 3, 12] (conv_transpose shape)",
                mk(&[1, 3, 18], 7)?.transpose(1, 2)?,
                mk(&[1, 1, 3, 12], 8)?,
            ),
            (
                "lhs [2, 3, 8]ᵀ x [2, 2, 3, 6] (groups)",
                mk(&[2, 3, 8], 9)?.transpose(1, 2)?,
                mk(&[3, 2, 3, 6], 10)?.narrow(0, 1, 2)?,
            ),
            (
                "lhs [1, 33, 40]ᵀ x [2, 1, 33, 70]",
                mk(&[1, 33, 40], 11)?.transpose(1, 2)?,
                mk(&[2, 1, 33, 70], 12)?,
            ),
            (
                "[2, 40, 33] x rhs [70, 33]ᵀ",
                mk(&[2, 40, 33], 13)?,
                mk(&[70, 33], 14)?.t()?,
            ),
            (
                "permuted lhs [4, 2, 6]→[2, 6, 4] x [2, 4, 3]",
                mk(&[4, 2, 6], 15)?.permute([1, 2, 0])?,
                mk(&[2, 4, 3], 16)?,
            ),
        ];
        for (name, a, b) in cases {
            let (want, dims) = ref_matmul(&a, &b)?;
            let k = a.dims()[a.rank() - 1];
            expect(
                &format!("matmul {name} {dt}"),
                &a.matmul(&b)?,
                &dims,
                dt,
                &want,
                mm_tol(dt, k),
            )?;
        }
    }
    Ok(())
}
