//! Indexing, unfold/fold, random numbers and matmul on the GPU, against references computed in
//! Rust from the host values (skipped without a CUDA device). The Philox known-answer test
//! runs everywhere.
//!
//! The tests take one lock: the device's error flag is shared, so an index error raised by
//! one test must not be read by another test's op running at the same time.

use std::sync::{Mutex, MutexGuard};

use tensor_core::{DType, Device, Error, HostData, Layout, Result, Shape, Tensor, UnfoldParams};

const ALL: [DType; 7] = [
    DType::U8,
    DType::U32,
    DType::I64,
    DType::F16,
    DType::BF16,
    DType::F32,
    DType::F64,
];
const FLOATS: [DType; 4] = [DType::F16, DType::BF16, DType::F32, DType::F64];
const ID_DTYPES: [DType; 3] = [DType::U8, DType::U32, DType::I64];

static LOCK: Mutex<()> = Mutex::new(());

/// The CUDA device and the test lock, or None (with a note) without a GPU.
fn gpu() -> Option<(Device, MutexGuard<'static, ()>)> {
    match tensor_cuda::device(0) {
        Ok(d) => Some((d, LOCK.lock().unwrap_or_else(|e| e.into_inner()))),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn t(d: &Device, v: &[f64], shape: impl Into<Shape>, dt: DType) -> Tensor {
    Tensor::from_f64s(v, shape, dt, d).unwrap()
}

/// `v` as stored in `dt`, read back.
fn rounded(v: &[f64], dt: DType) -> Vec<f64> {
    HostData::from_f64_slice(v, dt).to_f64_vec()
}

/// The values of a view of a tensor made from `data` (its storage, in order).
fn view(data: &[f64], l: &Layout) -> Vec<f64> {
    l.offsets().into_iter().map(|o| data[o]).collect()
}

fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        idx[d] = i % dims[d];
        i /= dims[d];
    }
    idx
}

fn ravel(idx: &[usize], dims: &[usize]) -> usize {
    idx.iter().zip(dims).fold(0, |acc, (&i, &d)| acc * d + i)
}

/// A deterministic sequence in [-1, 1) (xorshift).
fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// Small non-negative integers (exact in every dtype, sums of a few stay exact in bf16).
fn small_ints(n: usize, seed: u64, max: usize) -> Vec<f64> {
    noise(n, seed)
        .iter()
        .map(|x| (((x + 1.0) * 0.5 * max as f64) as usize % max) as f64)
        .collect()
}

fn ids_in(n: usize, size: usize, seed: u64) -> Vec<f64> {
    small_ints(n, seed, size)
}

fn assert_close(what: &str, got: &[f64], want: &[f64], (atol, rtol): (f64, f64)) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}: element {i} is {g}, want {w}");
    }
}

/// Wrap an exact integer sum into `dt` as the backends' wrapping integer adds do.
fn wrap(v: f64, dt: DType) -> f64 {
    match dt {
        DType::U8 => (v as i64).rem_euclid(256) as f64,
        DType::U32 => (v as i64).rem_euclid(1 << 32) as f64,
        _ => v,
    }
}

// ---- index_select / gather ---------------------------------------------------------------------

/// out = src with coordinate `dim` replaced by `ids[coord]`.
fn index_select_ref(src: &[f64], dims: &[usize], ids: &[usize], dim: usize) -> Vec<f64> {
    let mut od = dims.to_vec();
    od[dim] = ids.len();
    (0..od.iter().product())
        .map(|i| {
            let mut idx = unravel(i, &od);
            idx[dim] = ids[idx[dim]];
            src[ravel(&idx, dims)]
        })
        .collect()
}

fn gather_ref(
    src: &[f64],
    sdims: &[usize],
    ids: &[usize],
    idims: &[usize],
    dim: usize,
) -> Vec<f64> {
    (0..ids.len())
        .map(|p| {
            let mut idx = unravel(p, idims);
            idx[dim] = ids[p];
            src[ravel(&idx, sdims)]
        })
        .collect()
}

fn usizes(v: &[f64]) -> Vec<usize> {
    v.iter().map(|&x| x as usize).collect()
}

#[test]
fn index_select_all_dtypes_views_and_id_dtypes() {
    let Some((d, _g)) = gpu() else { return };
    let data: Vec<f64> = (0..60).map(f64::from).collect();
    for dt in ALL {
        let vals = rounded(&data, dt);
        let x = t(&d, &data, (3, 4, 5), dt);
        // Source views: contiguous, permuted, narrowed (offset and padded rows).
        let views = [
            x.clone(),
            x.permute([2, 0, 1]).unwrap(),
            x.narrow(1, 1, 2).unwrap().narrow(2, 2, 3).unwrap(),
        ];
        for v in &views {
            let sv = view(&vals, v.layout());
            for dim in 0..3 {
                let size = v.dims()[dim];
                for idt in ID_DTYPES {
                    let idv = ids_in(7, size, (dim * 10 + size) as u64);
                    let ids = t(&d, &idv, 7, idt);
                    let got = v.index_select(&ids, dim).unwrap();
                    let mut od = v.dims().to_vec();
                    od[dim] = 7;
                    assert_eq!(got.dims(), od.as_slice());
                    assert_eq!(got.dtype(), dt);
                    let want = index_select_ref(&sv, v.dims(), &usizes(&idv), dim);
                    assert_eq!(got.to_f64_vec().unwrap(), want, "{dt} {idt} dim {dim}");
                }
            }
        }
        // Strided ids: every other entry of a longer id vector, via a transpose and narrow.
        let idv = [2.0, 9.0, 0.0, 9.0, 1.0, 9.0, 2.0, 9.0];
        let ids = t(&d, &idv, (4, 2), DType::I64)
            .t()
            .unwrap()
            .narrow(0, 0, 1)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let got = x.index_select(&ids, 0).unwrap().to_f64_vec().unwrap();
        let want = index_select_ref(&vals, &[3, 4, 5], &[2, 0, 1, 2], 0);
        assert_eq!(got, want, "strided ids {dt}");
    }
    // A larger table (many blocks), and no ids at all.
    let (v, dd) = (500, 96);
    let table = noise(v * dd, 2);
    let x = t(&d, &table, (v, dd), DType::F32);
    let stored = rounded(&table, DType::F32);
    let idv: Vec<f64> = (0..1000).map(|i| ((i * 37) % v) as f64).collect();
    let got = x
        .index_select(&t(&d, &idv, 1000, DType::U32), 0)
        .unwrap()
        .to_f64_vec()
        .unwrap();
    assert_eq!(got, index_select_ref(&stored, &[v, dd], &usizes(&idv), 0));
    let none = x
        .index_select(&Tensor::zeros(0, DType::I64, &d).unwrap(), 0)
        .unwrap();
    assert_eq!(none.dims(), [0, dd]);
    let empty = t(&d, &[], (0, 2), DType::F32);
    let e = empty
        .index_select(&Tensor::zeros(0, DType::I64, &d).unwrap(), 0)
        .unwrap();
    assert_eq!(e.dims(), [0, 2]);
}

#[test]
fn gather_all_dims_dtypes_and_views() {
    let Some((d, _g)) = gpu() else { return };
    let sdims = [3, 5, 4];
    let data: Vec<f64> = (0..60).map(f64::from).collect();
    let idims = [2, 3, 4];
    for dt in ALL {
        let vals = rounded(&data, dt);
        let x = t(&d, &data, sdims, dt);
        for dim in 0..3 {
            for idt in ID_DTYPES {
                let idv = ids_in(24, sdims[dim], dim as u64 + 1);
                let ids = t(&d, &idv, idims, idt);
                let got = x.gather(&ids, dim).unwrap();
                assert_eq!(got.dims(), idims);
                let want = gather_ref(&vals, &sdims, &usizes(&idv), &idims, dim);
                assert_eq!(got.to_f64_vec().unwrap(), want, "{dt} {idt} dim {dim}");
            }
        }
        // Transposed source and broadcast ids: [4, 3] source (row i = column i of [3, 4]).
        let y = t(&d, &data[..12], (3, 4), dt).t().unwrap();
        let ids = t(&d, &[2.0, 0.0], (1, 2), DType::I64)
            .broadcast_as((4, 2))
            .unwrap();
        let got = y.gather(&ids, 1).unwrap().to_f64_vec().unwrap();
        let want = rounded(&[8., 0., 9., 1., 10., 2., 11., 3.], dt);
        assert_eq!(got, want, "strided gather {dt}");
        // Ids longer than the source along `dim`.
        let ids = t(
            &d,
            &[1.0, 0.0, 2.0, 2.0, 1.0, 0.0, 1.0, 1.0],
            (8, 1),
            DType::U8,
        );
        let got = t(&d, &data[..12], (3, 4), dt).gather(&ids, 0).unwrap();
        let want: Vec<f64> = [1., 0., 2., 2., 1., 0., 1., 1.]
            .iter()
            .map(|&r| vals[r as usize * 4])
            .collect();
        assert_eq!(got.to_f64_vec().unwrap(), want, "long ids {dt}");
    }
}

// ---- scatter_add / index_add -------------------------------------------------------------------

/// out = dst; out[idx with dim = ids[p]] += src[p] over the ids' shape (exact, then wrapped).
fn scatter_add_ref(
    dst: &[f64],
    ddims: &[usize],
    ids: &[usize],
    idims: &[usize],
    src: &[f64],
    dim: usize,
    dt: DType,
) -> Vec<f64> {
    let mut out = dst.to_vec();
    for p in 0..ids.len() {
        let mut idx = unravel(p, idims);
        idx[dim] = ids[p];
        out[ravel(&idx, ddims)] += src[p];
    }
    out.into_iter().map(|v| wrap(v, dt)).collect()
}

#[test]
fn scatter_add_all_dims_dtypes_and_views() {
    let Some((d, _g)) = gpu() else { return };
    let ddims = [3, 5, 4];
    let idims = [2, 3, 4];
    for dt in ALL {
        let dv = small_ints(60, 5, 8);
        let sv = small_ints(24, 6, 8);
        let dst = t(&d, &dv, ddims, dt);
        let src = t(&d, &sv, idims, dt);
        for dim in 0..3 {
            for idt in ID_DTYPES {
                let idv = ids_in(24, ddims[dim], dim as u64 + 7);
                let ids = t(&d, &idv, idims, idt);
                let got = dst.scatter_add(&ids, &src, dim).unwrap();
                assert_eq!(got.dims(), ddims);
                let want = scatter_add_ref(&dv, &ddims, &usizes(&idv), &idims, &sv, dim, dt);
                assert_eq!(got.to_f64_vec().unwrap(), want, "{dt} {idt} dim {dim}");
            }
        }
        // dst is left alone.
        assert_eq!(dst.to_f64_vec().unwrap(), dv);
        // Strided dst (transposed), broadcast ids, strided src.
        let base: Vec<f64> = (0..12).map(f64::from).collect();
        let dst = t(&d, &base, (3, 4), dt).t().unwrap(); // [4, 3]
        let ids = t(&d, &[2.0, 0.0], (1, 2), DType::I64)
            .broadcast_as((4, 2))
            .unwrap();
        let src = t(&d, &[1.0; 8], (2, 4), dt).t().unwrap(); // [4, 2]
        let got = dst
            .scatter_add(&ids, &src, 1)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        assert_eq!(
            got,
            [1., 4., 9., 2., 5., 10., 3., 6., 11., 4., 7., 12.],
            "{dt}"
        );
    }
    // Many adds onto few neighbouring elements (u8/f16/bf16 share 32-bit words): 200 per
    // element, exact in every dtype (u8 wraps to 200).
    for dt in ALL {
        let n = 7 * 200;
        let idv: Vec<f64> = (0..n).map(|i| ((i * 3) % 7) as f64).collect();
        let ids = t(&d, &idv, n, DType::I64);
        let ones = Tensor::ones(n, dt, &d).unwrap();
        let zeros = Tensor::zeros(7, dt, &d).unwrap();
        let got = zeros
            .scatter_add(&ids, &ones, 0)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        assert_eq!(got, vec![200.0; 7], "contended scatter_add {dt}");
    }
    // u8 wraps: 200 + 100 = 44.
    let dst = t(&d, &[200.0, 1.0], 2, DType::U8);
    let got = dst
        .scatter_add(
            &t(&d, &[0.0], 1, DType::U8),
            &t(&d, &[100.0], 1, DType::U8),
            0,
        )
        .unwrap();
    assert_eq!(got.to_f64_vec().unwrap(), [44.0, 1.0]);
    // Half floats add in f32 and round per add: 2048 + 1 stays 2048 in f16.
    let dst = t(&d, &[2048.0, 0.5], 2, DType::F16);
    let got = dst
        .scatter_add(
            &t(&d, &[0.0, 1.0], 2, DType::U32),
            &t(&d, &[1.0, 0.25], 2, DType::F16),
            0,
        )
        .unwrap();
    assert_eq!(got.to_f64_vec().unwrap(), [2048.0, 0.75]);
}

#[test]
fn index_add_dims_dtypes_and_views() {
    let Some((d, _g)) = gpu() else { return };
    let ddims = [4, 3, 5];
    for dt in ALL {
        let dv = small_ints(60, 11, 8);
        let dst = t(&d, &dv, ddims, dt);
        for dim in 0..3 {
            for idt in ID_DTYPES {
                let nids = 6;
                let idv = ids_in(nids, ddims[dim], dim as u64 + 20);
                let ids = t(&d, &idv, nids, idt);
                let mut sdims = ddims.to_vec();
                sdims[dim] = nids;
                let sn: usize = sdims.iter().product();
                let sv = small_ints(sn, dim as u64 + 30, 6);
                // The source seen through a permute of a differently ordered buffer.
                let perm_dims = [sdims[2], sdims[0], sdims[1]];
                let buf: Vec<f64> = (0..sn)
                    .map(|i| {
                        let p = unravel(i, &perm_dims);
                        sv[ravel(&[p[1], p[2], p[0]], &sdims)]
                    })
                    .collect();
                let src = t(&d, &buf, perm_dims, dt).permute([1, 2, 0]).unwrap();
                assert_eq!(src.to_f64_vec().unwrap(), rounded(&sv, dt));
                let got = dst.index_add(&ids, &src, dim).unwrap();
                // Reference: index_add is scatter_add with the ids broadcast.
                let full_ids: Vec<usize> = (0..sn)
                    .map(|p| idv[unravel(p, &sdims)[dim]] as usize)
                    .collect();
                let want = scatter_add_ref(&dv, &ddims, &full_ids, &sdims, &sv, dim, dt);
                assert_eq!(got.to_f64_vec().unwrap(), want, "{dt} {idt} dim {dim}");
            }
        }
        // A narrowed (strided) destination; dst unchanged.
        let base: Vec<f64> = (0..6).map(f64::from).collect();
        let dst = t(&d, &base, (2, 3), dt).narrow(1, 0, 2).unwrap();
        let ids = t(&d, &[1.0, 1.0, 0.0], 3, DType::I64);
        let src = t(&d, &[1., 2., 3., 4., 5., 6.], (2, 3), dt).t().unwrap(); // [[1,4],[2,5],[3,6]]
        let got = dst.index_add(&ids, &src, 0).unwrap().to_f64_vec().unwrap();
        assert_eq!(got, [3., 7., 6., 13.], "{dt}");
        assert_eq!(dst.to_f64_vec().unwrap(), [0., 1., 3., 4.]);
    }
}

// ---- bad ids ---------------------------------------------------------------------------------

fn expect_oob<T: std::fmt::Debug>(what: &str, r: Result<T>, op: &str, index: i64) {
    match r {
        Err(Error::IndexOutOfRange {
            op: o, index: i, ..
        }) => {
            assert_eq!((o, i), (op, index), "{what}");
        }
        other => panic!("{what}: expected IndexOutOfRange({op}, {index}), got {other:?}"),
    }
}

#[test]
fn out_of_range_ids_are_errors() {
    let Some((d, _g)) = gpu() else { return };
    let x = t(
        &d,
        &(0..12).map(f64::from).collect::<Vec<_>>(),
        (3, 4),
        DType::F32,
    );
    let i64s =
        |v: &[i64], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape.to_vec(), &d).unwrap();
    expect_oob(
        "id 5 of 3",
        x.index_select(&i64s(&[0, 5], &[2]), 0),
        "index_select",
        5,
    );
    expect_oob(
        "negative",
        x.index_select(&i64s(&[1, -1, 7], &[3]), 0),
        "index_select",
        -1,
    );
    let u32s = Tensor::from_vec(vec![4u32], 1, &d).unwrap();
    expect_oob("u32 id 4", x.index_select(&u32s, 1), "index_select", 4);
    let u8s = Tensor::from_vec(vec![200u8], 1, &d).unwrap();
    expect_oob("u8 id 200", x.index_select(&u8s, 0), "index_select", 200);
    expect_oob(
        "gather 3",
        x.gather(&i64s(&[0, 3, 1, 2], &[1, 4]), 0),
        "gather",
        3,
    );
    expect_oob(
        "gather -2",
        x.gather(&i64s(&[-2], &[1, 1]), 1),
        "gather",
        -2,
    );
    let src = Tensor::ones((1, 4), DType::F32, &d).unwrap();
    expect_oob(
        "scatter_add 3",
        x.scatter_add(&i64s(&[0, 3, 0, 0], &[1, 4]), &src, 0),
        "scatter_add",
        3,
    );
    let u32s = Tensor::from_vec(vec![4u32, 0, 0, 0], (1, 4), &d).unwrap();
    expect_oob(
        "scatter_add u32 4",
        x.scatter_add(&u32s, &src, 1),
        "scatter_add",
        4,
    );
    expect_oob(
        "index_add 9",
        x.index_add(&i64s(&[9], &[1]), &src, 0),
        "index_add",
        9,
    );
    expect_oob(
        "index_add -1",
        x.index_add(&i64s(&[-1], &[1]), &src, 0),
        "index_add",
        -1,
    );
    // The message names the op and the id (what the conformance errors check).
    let m = x
        .index_select(&i64s(&[-1], &[1]), 0)
        .unwrap_err()
        .to_string();
    assert!(m.contains("index_select") && m.contains("-1"), "{m}");
    // An empty output with a bad id is still an error (as on the CPU).
    let empty = t(&d, &[], (3, 0), DType::F32);
    expect_oob(
        "empty rows",
        empty.index_select(&i64s(&[3], &[1]), 0),
        "index_select",
        3,
    );
    // The flag is cleared: the next good op succeeds.
    let ok = x.index_select(&i64s(&[2], &[1]), 0).unwrap();
    assert_eq!(ok.to_f64_vec().unwrap(), [8., 9., 10., 11.]);
    // u8 ids into a dim of 256 or more cannot be out of range (no check needed).
    let big = Tensor::zeros((300, 2), DType::F32, &d).unwrap();
    let r = big.index_select(&Tensor::from_vec(vec![255u8, 0], 2, &d).unwrap(), 0);
    assert_eq!(r.unwrap().dims(), [2, 2]);
}

// ---- unfold / fold ---------------------------------------------------------------------------

fn params(k: &[usize], s: &[usize], p: &[usize], dl: &[usize], pad: f64) -> UnfoldParams {
    UnfoldParams {
        kernel: k.to_vec(),
        stride: s.to_vec(),
        padding: p.to_vec(),
        dilation: dl.to_vec(),
        pad_value: pad,
    }
}

/// torch.nn.functional.unfold for any number of spatial dims: each output entry is the input
/// position it reads (None in the padding).
fn unfold_map(dims: &[usize], p: &UnfoldParams) -> (Vec<usize>, Vec<Option<usize>>) {
    let (n, c, sp) = (dims[0], dims[1], &dims[2..]);
    let out = p.out_spatial(sp).unwrap();
    let kn: usize = p.kernel.iter().product();
    let ln: usize = out.iter().product();
    let plane: usize = sp.iter().product();
    let mut map = vec![None; n * c * kn * ln];
    for b in 0..n {
        for ch in 0..c {
            for kk in 0..kn {
                let ki = unravel(kk, &p.kernel);
                for pos in 0..ln {
                    let oi = unravel(pos, &out);
                    let mut off = Some(0usize);
                    for dd in 0..sp.len() {
                        let i = (oi[dd] * p.stride[dd] + ki[dd] * p.dilation[dd]) as i64
                            - p.padding[dd] as i64;
                        off = match off {
                            Some(o) if i >= 0 && (i as usize) < sp[dd] => {
                                Some(o * sp[dd] + i as usize)
                            }
                            _ => None,
                        };
                    }
                    map[((b * c + ch) * kn + kk) * ln + pos] =
                        off.map(|o| (b * c + ch) * plane + o);
                }
            }
        }
    }
    (vec![n, c * kn, ln], map)
}

fn unfold_cases() -> Vec<(Vec<usize>, UnfoldParams)> {
    vec![
        (vec![2, 3, 9], params(&[3], &[1], &[0], &[1], 0.0)),
        (vec![1, 2, 10], params(&[4], &[3], &[2], &[2], -1.5)),
        (
            vec![2, 3, 5, 6],
            params(&[3, 3], &[1, 1], &[1, 1], &[1, 1], 0.0),
        ),
        (
            vec![1, 2, 7, 8],
            params(&[2, 3], &[2, 3], &[1, 2], &[2, 1], 0.5),
        ),
        (
            vec![2, 1, 6, 5],
            params(&[1, 1], &[2, 1], &[0, 0], &[1, 1], 0.0),
        ),
        (
            vec![2, 2, 6, 8],
            params(&[3, 3], &[2, 2], &[1, 1], &[1, 1], 0.0),
        ),
        (
            vec![1, 2, 4, 5, 6],
            params(&[2, 3, 2], &[1, 2, 1], &[1, 0, 1], &[1, 1, 2], 3.0),
        ),
        (
            vec![1, 1, 3, 3],
            params(&[2, 2], &[1, 1], &[3, 3], &[1, 1], 0.0),
        ),
    ]
}

#[test]
fn unfold_matches_reference_in_1d_2d_3d() {
    let Some((d, _g)) = gpu() else { return };
    for (dims, p) in unfold_cases() {
        let n: usize = dims.iter().product();
        let data = small_ints(n, 11, 100);
        let (odims, map) = unfold_map(&dims, &p);
        for dt in ALL {
            let vals = rounded(&data, dt);
            let pv = rounded(&[p.pad_value], dt)[0];
            let x = t(&d, &data, dims.clone(), dt);
            let got = x.unfold_patches(&p).unwrap();
            assert_eq!(got.dims(), odims.as_slice());
            let want: Vec<f64> = map.iter().map(|m| m.map_or(pv, |o| vals[o])).collect();
            assert_eq!(got.to_f64_vec().unwrap(), want, "{dims:?} {p:?} {dt}");
        }
    }
    // A channels-last buffer seen as [1, 2, 5, 6] through a permute.
    let data = noise(60, 4);
    let x = t(&d, &data, (1, 5, 6, 2), DType::F64)
        .permute([0, 3, 1, 2])
        .unwrap();
    let xv = view(&data, x.layout());
    let p = params(&[3, 2], &[1, 2], &[1, 0], &[1, 1], 0.0);
    let (_, map) = unfold_map(&[1, 2, 5, 6], &p);
    let want: Vec<f64> = map.iter().map(|m| m.map_or(0.0, |o| xv[o])).collect();
    assert_eq!(x.unfold_patches(&p).unwrap().to_f64_vec().unwrap(), want);
}

#[test]
fn fold_matches_reference_and_is_the_adjoint() {
    let Some((d, _g)) = gpu() else { return };
    for (dims, p) in unfold_cases() {
        let p = UnfoldParams {
            pad_value: 0.0,
            ..p
        };
        let n: usize = dims.iter().product();
        let (odims, map) = unfold_map(&dims, &p);
        let cn: usize = odims.iter().product();
        // Small integers: every sum is exact in every dtype (u8 sums stay below 256).
        let cols = small_ints(cn, 12, 8);
        let mut want = vec![0.0; n];
        for (i, m) in map.iter().enumerate() {
            if let Some(o) = m {
                want[*o] += cols[i];
            }
        }
        for dt in ALL {
            let c = t(&d, &cols, odims.clone(), dt);
            let got = c.fold_patches(&p, &dims[2..]).unwrap();
            assert_eq!(got.dims(), dims.as_slice());
            let want: Vec<f64> = want.iter().map(|&v| wrap(v, dt)).collect();
            assert_eq!(got.to_f64_vec().unwrap(), want, "{dims:?} {p:?} {dt}");
        }
        // Strided columns: [N, L, C·K] transposed to [N, C·K, L].
        let tdims = [odims[0], odims[2], odims[1]];
        let buf: Vec<f64> = (0..cn)
            .map(|i| {
                let q = unravel(i, &tdims);
                cols[ravel(&[q[0], q[2], q[1]], &odims)]
            })
            .collect();
        let ct = t(&d, &buf, tdims, DType::F32).transpose(1, 2).unwrap();
        let got = ct
            .fold_patches(&p, &dims[2..])
            .unwrap()
            .to_f64_vec()
            .unwrap();
        assert_eq!(got, want, "strided columns {dims:?}");
        // <unfold(x), y> == <x, fold(y)> in f64.
        let x = noise(n, 21);
        let y = noise(cn, 22);
        let u = t(&d, &x, dims.clone(), DType::F64)
            .unfold_patches(&p)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        let f = t(&d, &y, odims.clone(), DType::F64)
            .fold_patches(&p, &dims[2..])
            .unwrap()
            .to_f64_vec()
            .unwrap();
        let lhs: f64 = u.iter().zip(&y).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&f).map(|(a, b)| a * b).sum();
        assert!(
            (lhs - rhs).abs() < 1e-12 * (1.0 + lhs.abs()),
            "{dims:?}: {lhs} vs {rhs}"
        );
    }
    // fold of unfold of ones counts each pixel's taps, on a larger image.
    let p = params(&[3, 3], &[1, 1], &[1, 1], &[1, 1], 0.0);
    for dt in [DType::F16, DType::U8, DType::F32] {
        let ones = Tensor::ones((2, 8, 40, 40), dt, &d).unwrap();
        let f = ones
            .unfold_patches(&p)
            .unwrap()
            .fold_patches(&p, &[40, 40])
            .unwrap()
            .to_f64_vec()
            .unwrap();
        assert_eq!(
            (f[41], f[0], f[39], f[1600 * 16 - 1]),
            (9.0, 4.0, 4.0, 4.0),
            "{dt}"
        );
        assert_eq!((f[40 * 20], f[40 * 20 + 1]), (6.0, 9.0), "{dt}");
    }
}

// ---- random numbers --------------------------------------------------------------------------

/// Philox4x32-10, as the kernels compute it.
fn philox(mut c: [u32; 4], key: u64) -> [u32; 4] {
    let (mut k0, mut k1) = (key as u32, (key >> 32) as u32);
    for r in 0..10 {
        if r > 0 {
            k0 = k0.wrapping_add(0x9E37_79B9);
            k1 = k1.wrapping_add(0xBB67_AE85);
        }
        let p0 = 0xD251_1F53u64 * c[0] as u64;
        let p1 = 0xCD9E_8D57u64 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k0,
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k1,
            p0 as u32,
        ];
    }
    c
}

fn unit53(hi: u32, lo: u32) -> f64 {
    ((((hi as u64) << 32) | lo as u64) >> 11) as f64 / (1u64 << 53) as f64
}

#[test]
fn philox_known_answers() {
    // Random123's known-answer vectors for philox4x32 with 10 rounds.
    let kat = [
        (
            [0u32; 4],
            [0u32; 2],
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
        ),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
        ),
        (
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
        ),
    ];
    for (c, k, want) in kat {
        let key = k[0] as u64 | ((k[1] as u64) << 32);
        assert_eq!(philox(c, key), want, "counter {c:x?} key {k:x?}");
    }
}

/// The kernels' uniform sample `i`, stored through `store` (the dtype's rounding).
fn uniform_ref(i: u32, seed: u64, lo: f64, hi: f64, store: impl Fn(f64) -> f64) -> f64 {
    for attempt in 0..16 {
        let p = philox([i, attempt, 0, 0], seed);
        let v = store((hi - lo).mul_add(unit53(p[0], p[1]), lo));
        if v < hi {
            return v;
        }
    }
    store(lo)
}

fn moments(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[test]
fn uniform_is_philox_in_range_and_deterministic() {
    let Some((d, _g)) = gpu() else { return };
    let n = 200_000;
    for dt in FLOATS {
        for (lo, hi, seed) in [(-2.0, 3.0, 1u64), (0.0, 1.0, 42), (1.0, 1.5, u64::MAX)] {
            let x = Tensor::rand_seeded(lo, hi, n, dt, &d, seed).unwrap();
            assert_eq!((x.dims(), x.dtype()), (&[n][..], dt));
            let v = x.to_f64_vec().unwrap();
            // Exactly the Philox values, rounded once (checked on a prefix: the host
            // rounding goes through HostData one value at a time).
            let store = |x: f64| rounded(&[x], dt)[0];
            for (i, &g) in v.iter().enumerate().take(2000) {
                assert_eq!(
                    g,
                    uniform_ref(i as u32, seed, lo, hi, store),
                    "{dt} [{lo}, {hi}) element {i}"
                );
            }
            // Never hi, even where rounding to 16 bits would reach it.
            if let Some(bad) = v.iter().find(|&&u| !(lo..hi).contains(&u)) {
                panic!("{dt} [{lo}, {hi}): {bad} out of range");
            }
            let (m, s) = moments(&v);
            let (wm, ws) = ((lo + hi) / 2.0, (hi - lo) / 12f64.sqrt());
            assert!(
                (m - wm).abs() < 0.01 * (hi - lo),
                "{dt} mean {m}, want {wm}"
            );
            assert!((s - ws).abs() < 0.01 * (hi - lo), "{dt} std {s}, want {ws}");
            assert_eq!(
                Tensor::rand_seeded(lo, hi, n, dt, &d, seed)
                    .unwrap()
                    .to_f64_vec()
                    .unwrap(),
                v
            );
            // A shorter draw is a prefix of a longer one.
            let short = Tensor::rand_seeded(lo, hi, 1000, dt, &d, seed)
                .unwrap()
                .to_f64_vec()
                .unwrap();
            assert_eq!(short[..], v[..1000]);
            let other = Tensor::rand_seeded(lo, hi, n, dt, &d, seed ^ 1)
                .unwrap()
                .to_f64_vec()
                .unwrap();
            let same = other.iter().zip(&v).filter(|(a, b)| a == b).count();
            assert!(
                same < n / 50 || dt == DType::BF16 || dt == DType::F16,
                "{dt}: {same} equal"
            );
        }
    }
    // [0, 1) in f16: about 1 in 4096 draws lies within half an ulp of 1 and is drawn again.
    let v = Tensor::rand_seeded(0.0, 1.0, 1 << 20, DType::F16, &d, 9)
        .unwrap()
        .to_f64_vec()
        .unwrap();
    let max = v.iter().cloned().fold(0.0, f64::max);
    assert!(max < 1.0 && max > 0.999, "f16 max {max}");
    // lo == hi is a fill (the backend accepts it, as the CPU's does); integer dtypes are errors.
    let dev = tensor_cuda::as_cuda(&d).unwrap();
    use tensor_core::BackendDevice;
    let s = dev.rand_uniform(5, 2.0, 2.0, DType::F32, 0).unwrap();
    let h = dev.to_host(s.as_ref(), &Layout::contiguous([5])).unwrap();
    assert_eq!(h.to_f64_vec(), [2.0; 5]);
    assert!(matches!(
        dev.rand_uniform(4, 0.0, 1.0, DType::U8, 0),
        Err(Error::UnsupportedDType { .. })
    ));
    assert!(dev.rand_uniform(4, 1.0, 0.0, DType::F32, 0).is_err());
    assert!(dev.rand_normal(4, 0.0, -1.0, DType::F32, 0).is_err());
    assert!(dev.rand_normal(4, 0.0, 1.0, DType::I64, 0).is_err());
    assert_eq!(
        dev.rand_normal(0, 0.0, 1.0, DType::F32, 0).unwrap().len(),
        0
    );
}

#[test]
fn normal_is_box_muller_with_the_right_moments() {
    let Some((d, _g)) = gpu() else { return };
    let n = 200_000;
    for dt in FLOATS {
        let x = Tensor::randn_seeded(1.0, 2.0, n, dt, &d, 2).unwrap();
        let v = x.to_f64_vec().unwrap();
        assert!(v.iter().all(|u| u.is_finite()), "{dt}");
        let (m, s) = moments(&v);
        assert!((m - 1.0).abs() < 0.03, "{dt} mean {m}");
        assert!((s - 2.0).abs() < 0.03, "{dt} std {s}");
        let within =
            |k: f64| v.iter().filter(|&&u| (u - 1.0).abs() < k * 2.0).count() as f64 / n as f64;
        assert!(
            (within(1.0) - 0.6827).abs() < 0.01,
            "{dt} 1σ {}",
            within(1.0)
        );
        assert!(
            (within(2.0) - 0.9545).abs() < 0.005,
            "{dt} 2σ {}",
            within(2.0)
        );
        assert!(
            (within(3.0) - 0.9973).abs() < 0.002,
            "{dt} 3σ {}",
            within(3.0)
        );
        assert_eq!(
            Tensor::randn_seeded(1.0, 2.0, n, dt, &d, 2)
                .unwrap()
                .to_f64_vec()
                .unwrap(),
            v
        );
        assert_ne!(
            Tensor::randn_seeded(1.0, 2.0, n, dt, &d, 3)
                .unwrap()
                .to_f64_vec()
                .unwrap(),
            v
        );
        // The Box–Muller transform of the Philox words (host libm vs device: a few ulps).
        if dt == DType::F64 || dt == DType::F32 {
            for (i, &g) in v.iter().enumerate().take(1000) {
                let p = philox([i as u32, 0, 0, 0], 2);
                let u1 = unit53(p[0], p[1]) + 1.0 / (1u64 << 53) as f64;
                let u2 = unit53(p[2], p[3]);
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let want = 2.0f64.mul_add(z, 1.0);
                let tol = if dt == DType::F64 { 1e-12 } else { 1e-6 };
                assert!(
                    (g - want).abs() <= tol * (1.0 + want.abs()),
                    "{dt} element {i}: {g} vs {want}"
                );
            }
        }
    }
    let z = Tensor::randn_seeded(1.5, 0.0, 5, DType::F32, &d, 1).unwrap();
    assert_eq!(z.to_f64_vec().unwrap(), [1.5; 5]);
}

// ---- matmul ----------------------------------------------------------------------------------

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

/// The product of two tensors of equal rank ≥ 2 and equal batch dims, from their values.
fn ref_matmul(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let r = a.rank();
    let (m, k, n) = (a.dims()[r - 2], a.dims()[r - 1], b.dims()[r - 1]);
    let count: usize = a.dims()[..r - 2].iter().product();
    let (av, bv) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    (0..count)
        .flat_map(|i| {
            naive_mm(
                &av[i * m * k..(i + 1) * m * k],
                &bv[i * k * n..(i + 1) * k * n],
                m,
                k,
                n,
            )
        })
        .collect()
}

fn check_mm(what: &str, a: &Tensor, b: &Tensor) {
    let dt = a.dtype();
    let c = a.matmul(b).unwrap();
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k, n) = (a.dims()[ra - 2], a.dims()[ra - 1], b.dims()[rb - 1]);
    // Broadcast batch dims: the reference multiplies the operands expanded to the output's.
    let batch = Shape::from(a.dims()[..ra - 2].to_vec())
        .broadcast_with(&Shape::from(b.dims()[..rb - 2].to_vec()), "test")
        .unwrap();
    let with = |x: usize, y: usize| {
        let mut v = batch.dims().to_vec();
        v.extend([x, y]);
        v
    };
    let want = ref_matmul(
        &a.broadcast_as(with(m, k)).unwrap(),
        &b.broadcast_as(with(k, n)).unwrap(),
    );
    assert_eq!(c.dims(), with(m, n).as_slice(), "{what} {dt}");
    assert_eq!(c.dtype(), dt);
    assert_close(
        &format!("{what} {dt}"),
        &c.to_f64_vec().unwrap(),
        &want,
        mm_tol(dt, k),
    );
}

#[test]
fn matmul_shapes_transposes_and_dtypes() {
    let Some((d, _g)) = gpu() else { return };
    for dt in FLOATS {
        let mk = |shape: &[usize], seed: u64| {
            t(&d, &noise(shape.iter().product(), seed), shape.to_vec(), dt)
        };
        for (m, k, n) in [
            (1, 1, 1),
            (7, 13, 5),
            (65, 33, 17),
            (1, 64, 9),
            (16, 1, 3),
            (128, 256, 96),
        ] {
            let a = mk(&[m, k], (m * 100 + k) as u64);
            let b = mk(&[k, n], (k * 100 + n) as u64);
            let at = a.t().unwrap().contiguous().unwrap().t().unwrap();
            let bt = b.t().unwrap().contiguous().unwrap().t().unwrap();
            let tag = format!("{m}x{k}x{n}");
            check_mm(&tag, &a, &b);
            check_mm(&format!("{tag} Aᵀ-stored"), &at, &b);
            check_mm(&format!("{tag} Bᵀ-stored"), &a, &bt);
            check_mm(&format!("{tag} both"), &at, &bt);
        }
        // A narrowed view (offset, padded rows), and an operand with no unit stride (copied).
        let big = mk(&[9, 12], 5);
        let a = big.narrow(0, 2, 5).unwrap().narrow(1, 3, 7).unwrap();
        check_mm("narrowed", &a, &mk(&[7, 4], 6));
        let b = mk(&[7, 4, 2], 7)
            .narrow(2, 1, 1)
            .unwrap()
            .squeeze(2)
            .unwrap(); // strides (8, 2)
        check_mm("no unit stride", &a, &b);
        // Vectors (promoted to matrices by core).
        let v = mk(&[7], 8);
        let c = v.matmul(&mk(&[7, 4], 6)).unwrap();
        assert_eq!(c.dims(), [4]);
    }
}

/// Large 16-bit products whose rows are off 16-byte boundaries (an odd n or k, like a
/// 50257-word vocabulary) take the padded path; every storage order of the operands.
#[test]
fn matmul_large_misaligned_halves_are_padded() {
    let Some((d, _g)) = gpu() else { return };
    for dt in [DType::BF16, DType::F16] {
        let mk = |shape: &[usize], seed: u64| {
            t(&d, &noise(shape.iter().product(), seed), shape.to_vec(), dt)
        };
        // m·n·k ≥ 2^28 multiply-adds.
        for (m, k, n) in [(1024, 256, 1027), (1000, 263, 1024), (513, 1025, 515)] {
            let a = mk(&[m, k], 31);
            let b = mk(&[k, n], 32);
            let at = a.t().unwrap().contiguous().unwrap().t().unwrap();
            let bt = b.t().unwrap().contiguous().unwrap().t().unwrap();
            let tag = format!("padded {m}x{k}x{n}");
            check_mm(&tag, &a, &b);
            check_mm(&format!("{tag} Aᵀ-stored"), &at, &b);
            check_mm(&format!("{tag} Bᵀ-stored"), &a, &bt);
            // An operand starting off a 16-byte boundary (offset 1 element).
            let big = mk(&[m, k + 1], 33);
            check_mm(&format!("{tag} offset"), &big.narrow(1, 1, k).unwrap(), &b);
        }
    }
}

#[test]
fn matmul_batches_broadcasts_and_empty() {
    let Some((d, _g)) = gpu() else { return };
    for dt in FLOATS {
        let mk = |shape: &[usize], seed: u64| {
            t(&d, &noise(shape.iter().product(), seed), shape.to_vec(), dt)
        };
        let cases: Vec<(&str, Tensor, Tensor)> = vec![
            (
                "[3, 4, 5] x [3, 5, 2]",
                mk(&[3, 4, 5], 1),
                mk(&[3, 5, 2], 2),
            ),
            (
                "[2, 1, 4, 5] x [3, 5, 2]",
                mk(&[2, 1, 4, 5], 3),
                mk(&[3, 5, 2], 4),
            ),
            ("[4, 5] x [3, 5, 2]", mk(&[4, 5], 5), mk(&[3, 5, 2], 6)),
            ("[3, 4, 5] x [5, 2]", mk(&[3, 4, 5], 7), mk(&[5, 2], 8)),
            (
                "permuted batch",
                mk(&[4, 3, 5], 9).transpose(0, 1).unwrap(),
                mk(&[3, 5, 2], 10),
            ),
            (
                "lhs [2, 5, 4]ᵀ x [2, 5, 3]",
                mk(&[2, 5, 4], 11).transpose(1, 2).unwrap(),
                mk(&[2, 5, 3], 12),
            ),
            (
                "both transposed",
                mk(&[3, 5, 4], 13).transpose(1, 2).unwrap(),
                mk(&[3, 2, 5], 14).transpose(1, 2).unwrap(),
            ),
            (
                "lhs [1, 33, 40]ᵀ x [2, 1, 33, 70]",
                mk(&[1, 33, 40], 15).transpose(1, 2).unwrap(),
                mk(&[2, 1, 33, 70], 16),
            ),
            (
                "[2, 40, 33] x [70, 33]ᵀ",
                mk(&[2, 40, 33], 17),
                mk(&[70, 33], 18).t().unwrap(),
            ),
            (
                "groups [2, 3, 8]ᵀ x [2, 2, 3, 6]",
                mk(&[2, 3, 8], 19).transpose(1, 2).unwrap(),
                mk(&[3, 2, 3, 6], 20).narrow(0, 1, 2).unwrap(),
            ),
            (
                "permuted lhs [4, 2, 6]→[2, 6, 4]",
                mk(&[4, 2, 6], 21).permute([1, 2, 0]).unwrap(),
                mk(&[2, 4, 3], 22),
            ),
            // 40 × 5 batch with crossed broadcasts: a long outer loop, so both are copied.
            (
                "[40, 1, 3, 4] x [5, 4, 2]",
                mk(&[40, 1, 3, 4], 23),
                mk(&[5, 4, 2], 24),
            ),
            // Interleaved broadcast batch dims with a transposed rhs.
            (
                "[3, 1, 2, 6, 5] x [1, 4, 1, 7, 5]ᵀ",
                mk(&[3, 1, 2, 6, 5], 25),
                mk(&[1, 4, 1, 7, 5], 26).transpose(3, 4).unwrap(),
            ),
        ];
        for (name, a, b) in cases {
            check_mm(name, &a, &b);
        }
        // Empty products: k = 0 gives zeros; m, n or batch = 0 give empty outputs.
        let z = mk(&[2, 0], 1).matmul(&mk(&[0, 3], 2)).unwrap();
        assert_eq!(
            (z.dims(), z.to_f64_vec().unwrap()),
            (&[2, 3][..], vec![0.0; 6])
        );
        let z = mk(&[3, 2, 0], 1).matmul(&mk(&[3, 0, 4], 2)).unwrap();
        assert_eq!(z.to_f64_vec().unwrap(), vec![0.0; 24]);
        assert_eq!(
            mk(&[0, 3], 1).matmul(&mk(&[3, 4], 2)).unwrap().dims(),
            [0, 4]
        );
        assert_eq!(
            mk(&[2, 3], 1).matmul(&mk(&[3, 0], 2)).unwrap().dims(),
            [2, 0]
        );
        assert_eq!(
            mk(&[0, 2, 3], 1).matmul(&mk(&[0, 3, 4], 2)).unwrap().dims(),
            [0, 2, 4]
        );
    }
    // Integer matmul is an error (as on the CPU), also when core's check is bypassed.
    use tensor_core::BackendDevice;
    let dev = tensor_cuda::as_cuda(&d).unwrap();
    let a = t(&d, &[1.0; 4], (2, 2), DType::I64);
    let (s, l) = (a.storage(), a.layout().clone());
    assert!(matches!(
        dev.matmul(s.as_ref(), &l, s.as_ref(), &l),
        Err(Error::UnsupportedDType { .. })
    ));
}

#[test]
fn matmul_f32_is_true_f32_and_halves_round_once() {
    let Some((d, _g)) = gpu() else { return };
    // TF32 keeps 10 mantissa bits: 1 + 2^-20 would lose its low bits there.
    let e = 2f64.powi(-20);
    let a = t(&d, &[1.0 + e, 1.0, 1.0, 1.0], (2, 2), DType::F32);
    let b = t(&d, &[1.0 + e, 0.0, 0.0, 1.0], (2, 2), DType::F32);
    let c = a.matmul(&b).unwrap().to_f64_vec().unwrap();
    assert_eq!(c[0], ((1.0 + e) * (1.0 + e)) as f32 as f64);
    // A long f16 dot product: f32 accumulation, one rounding at the end.
    let k = 4096;
    let ones = Tensor::ones((1, k), DType::F16, &d).unwrap();
    let third = t(&d, &vec![1.0 / 3.0; k], (k, 1), DType::F16);
    let got = ones.matmul(&third).unwrap().to_f64_vec().unwrap()[0];
    let h = rounded(&[1.0 / 3.0], DType::F16)[0];
    let want = rounded(&[(h as f32 * k as f32) as f64], DType::F16)[0];
    assert_eq!(got, want);
}

/// bf16 GEMM throughput (run with `--ignored --nocapture` on a GPU): square products and a
/// linear layer's `x · Wᵀ` with a transposed weight.
#[test]
#[ignore]
fn bf16_gemm_throughput() {
    let Some((d, _g)) = gpu() else { return };
    for (m, k, n, wt) in [
        (4096, 4096, 4096, false),
        (8192, 8192, 8192, false),
        (8192, 4096, 11008, true),
    ] {
        let a = Tensor::randn_seeded(0.0, 1.0, (m, k), DType::BF16, &d, 1).unwrap();
        let b = if wt {
            let w = Tensor::randn_seeded(0.0, 1.0, (n, k), DType::BF16, &d, 2).unwrap();
            w.t().unwrap()
        } else {
            Tensor::randn_seeded(0.0, 1.0, (k, n), DType::BF16, &d, 2).unwrap()
        };
        for _ in 0..3 {
            a.matmul(&b).unwrap();
        }
        d.synchronize().unwrap();
        let iters = 20;
        let start = std::time::Instant::now();
        for _ in 0..iters {
            a.matmul(&b).unwrap();
        }
        d.synchronize().unwrap();
        let s = start.elapsed().as_secs_f64() / iters as f64;
        let tflops = 2.0 * (m * k * n) as f64 / s / 1e12;
        println!(
            "bf16 {m}x{k}x{n}{}: {:.3} ms, {tflops:.0} TFLOP/s",
            if wt { " (Wᵀ)" } else { "" },
            s * 1e3
        );
    }
}
