//! Forward cases: views and copies, index ops, and in-place writes through views.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("views_reshape_noncontiguous", |d| {
            for dt in [
                DType::F32,
                DType::F64,
                DType::F16,
                DType::BF16,
                DType::U8,
                DType::U32,
                DType::I64,
            ] {
                let x = t(d, &(0..6).map(f64::from).collect::<Vec<_>>(), (2, 3), dt)?;
                let xt = x.t()?;
                expect(
                    &format!("transpose {dt}"),
                    &xt,
                    &[3, 2],
                    dt,
                    &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("reshape of transpose {dt}"),
                    &xt.reshape(6)?,
                    &[6],
                    dt,
                    &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("reshape (2, 3) of transpose {dt}"),
                    &xt.reshape((2, 3))?,
                    &[2, 3],
                    dt,
                    &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0],
                    (0.0, 0.0),
                )?;
                expect(
                    &format!("contiguous {dt}"),
                    &xt.contiguous()?,
                    &[3, 2],
                    dt,
                    &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0],
                    (0.0, 0.0),
                )?;
                if !xt.contiguous()?.is_contiguous() {
                    return Err(Error::msg("contiguous() is not contiguous"));
                }
            }
            // A narrowed-then-transposed view reshaped: strides and offset both matter.
            let x = t(
                d,
                &(0..24).map(f64::from).collect::<Vec<_>>(),
                (2, 3, 4),
                DType::F32,
            )?;
            let v = x.narrow(2, 1, 2)?.transpose(0, 1)?; // [3, 2, 2]
            let want: Vec<f64> = (0..3)
                .flat_map(|i| {
                    (0..2).flat_map(move |j| (1..3).map(move |k| (j * 12 + i * 4 + k) as f64))
                })
                .collect();
            expect(
                "reshape of narrowed transpose",
                &v.reshape(12)?,
                &[12],
                DType::F32,
                &want,
                (0.0, 0.0),
            )?;
            expect(
                "flatten_all of narrowed transpose",
                &v.flatten_all()?,
                &[12],
                DType::F32,
                &want,
                (0.0, 0.0),
            )
        }),
        case("views_permute_narrow", |d| {
            let x = t(
                d,
                &(0..24).map(f64::from).collect::<Vec<_>>(),
                (2, 3, 4),
                DType::F32,
            )?;
            let p = x.permute([2, 0, 1])?;
            let want: Vec<f64> = (0..4)
                .flat_map(|k| {
                    (0..2).flat_map(move |i| (0..3).map(move |j| (i * 12 + j * 4 + k) as f64))
                })
                .collect();
            expect(
                "permute [2, 0, 1]",
                &p,
                &[4, 2, 3],
                DType::F32,
                &want,
                (0.0, 0.0),
            )?;
            let n = x.narrow(1, 1, 2)?;
            let want: Vec<f64> = (0..2)
                .flat_map(|i| {
                    (1..3).flat_map(move |j| (0..4).map(move |k| (i * 12 + j * 4 + k) as f64))
                })
                .collect();
            expect(
                "narrow(1, 1, 2)",
                &n,
                &[2, 2, 4],
                DType::F32,
                &want,
                (0.0, 0.0),
            )?;
            expect(
                "slice(-1, -3, -1)",
                &x.slice(-1, -3, -1)?,
                &[2, 3, 2],
                DType::F32,
                &(0..6)
                    .flat_map(|r| [(r * 4 + 1) as f64, (r * 4 + 2) as f64])
                    .collect::<Vec<_>>(),
                (0.0, 0.0),
            )?;
            expect(
                "transpose(0, 2)",
                &x.transpose(0, 2)?,
                &[4, 3, 2],
                DType::F32,
                &(0..4)
                    .flat_map(|k| {
                        (0..3).flat_map(move |j| (0..2).map(move |i| (i * 12 + j * 4 + k) as f64))
                    })
                    .collect::<Vec<_>>(),
                (0.0, 0.0),
            )?;
            expect(
                "broadcast_as",
                &t(d, &[1.0, 2.0], (2, 1), DType::F32)?.broadcast_as((2, 2, 3))?,
                &[2, 2, 3],
                DType::F32,
                &[1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0],
                (0.0, 0.0),
            )?;
            expect(
                "pad_with_zeros",
                &t(d, &[1.0, 2.0, 3.0, 4.0], (2, 2), DType::I64)?.pad_with_zeros(1, 1, 2)?,
                &[2, 5],
                DType::I64,
                &[0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0],
                (0.0, 0.0),
            )
        }),
        case("views_chunk_split_cat_stack", |d| {
            let x = t(
                d,
                &(0..14).map(f64::from).collect::<Vec<_>>(),
                (2, 7),
                DType::F32,
            )?;
            let c = x.chunk(3, 1)?;
            let sizes: Vec<usize> = c.iter().map(|c| c.dims()[1]).collect();
            if sizes != [3, 3, 1] {
                return Err(Error::msg(format!(
                    "chunk(3) of 7: sizes {sizes:?}, expected [3, 3, 1]"
                )));
            }
            expect(
                "chunk[1]",
                &c[1],
                &[2, 3],
                DType::F32,
                &[3.0, 4.0, 5.0, 10.0, 11.0, 12.0],
                (0.0, 0.0),
            )?;
            expect(
                "chunk[2]",
                &c[2],
                &[2, 1],
                DType::F32,
                &[6.0, 13.0],
                (0.0, 0.0),
            )?;
            let s = x.split(&[1, 4, 2], 1)?;
            expect(
                "split[1]",
                &s[1],
                &[2, 4],
                DType::F32,
                &[1.0, 2.0, 3.0, 4.0, 8.0, 9.0, 10.0, 11.0],
                (0.0, 0.0),
            )?;
            expect(
                "split[2]",
                &s[2],
                &[2, 2],
                DType::F32,
                &[5.0, 6.0, 12.0, 13.0],
                (0.0, 0.0),
            )?;
            let a = t(d, &[1.0, 2.0, 3.0, 4.0], (2, 2), DType::F32)?;
            let b = t(d, &[5.0, 6.0], (2, 1), DType::F32)?;
            expect(
                "cat dim 1",
                &Tensor::cat(&[&a, &b], 1)?,
                &[2, 3],
                DType::F32,
                &[1.0, 2.0, 5.0, 3.0, 4.0, 6.0],
                (0.0, 0.0),
            )?;
            expect(
                "cat dim 0 with a transposed view",
                &Tensor::cat(&[&a, &a.t()?], 0)?,
                &[4, 2],
                DType::F32,
                &[1.0, 2.0, 3.0, 4.0, 1.0, 3.0, 2.0, 4.0],
                (0.0, 0.0),
            )?;
            expect(
                "stack dim 0",
                &Tensor::stack(&[&a, &a.t()?], 0)?,
                &[2, 2, 2],
                DType::F32,
                &[1.0, 2.0, 3.0, 4.0, 1.0, 3.0, 2.0, 4.0],
                (0.0, 0.0),
            )?;
            expect(
                "stack dim -1",
                &Tensor::stack(&[&a, &a.affine(10.0, 0.0)?], -1)?,
                &[2, 2, 2],
                DType::F32,
                &[1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0],
                (0.0, 0.0),
            )?;
            let i = t(d, &[7.0, 8.0], 2, DType::U32)?;
            expect(
                "cat u32",
                &Tensor::cat(&[&i, &i, &i], 0)?,
                &[6],
                DType::U32,
                &[7.0, 8.0, 7.0, 8.0, 7.0, 8.0],
                (0.0, 0.0),
            )
        }),
        case("views_squeeze_flatten_infer", |d| {
            let x = t(
                d,
                &(0..6).map(f64::from).collect::<Vec<_>>(),
                (1, 2, 1, 3),
                DType::F64,
            )?;
            let all: Vec<f64> = (0..6).map(f64::from).collect();
            expect(
                "squeeze(0)",
                &x.squeeze(0)?,
                &[2, 1, 3],
                DType::F64,
                &all,
                (0.0, 0.0),
            )?;
            expect(
                "squeeze(-2)",
                &x.squeeze(-2)?,
                &[1, 2, 3],
                DType::F64,
                &all,
                (0.0, 0.0),
            )?;
            expect(
                "unsqueeze(4)",
                &x.unsqueeze(4)?,
                &[1, 2, 1, 3, 1],
                DType::F64,
                &all,
                (0.0, 0.0),
            )?;
            expect(
                "unsqueeze(-1)",
                &x.unsqueeze(-1)?,
                &[1, 2, 1, 3, 1],
                DType::F64,
                &all,
                (0.0, 0.0),
            )?;
            expect(
                "flatten(1, 3)",
                &x.flatten(1, 3)?,
                &[1, 6],
                DType::F64,
                &all,
                (0.0, 0.0),
            )?;
            expect(
                "flatten(0, 1)",
                &x.flatten(0, 1)?,
                &[2, 1, 3],
                DType::F64,
                &all,
                (0.0, 0.0),
            )?;
            expect(
                "reshape_infer [-1, 2]",
                &x.reshape_infer(&[-1, 2])?,
                &[3, 2],
                DType::F64,
                &all,
                (0.0, 0.0),
            )?;
            expect(
                "reshape_infer [3, -1, 1]",
                &x.reshape_infer(&[3, -1, 1])?,
                &[3, 2, 1],
                DType::F64,
                &all,
                (0.0, 0.0),
            )?;
            let s = Tensor::scalar(4.0, DType::F64, d)?;
            expect(
                "scalar flatten",
                &s.flatten(0, 0)?,
                &[1],
                DType::F64,
                &[4.0],
                (0.0, 0.0),
            )?;
            expect(
                "scalar unsqueeze",
                &s.unsqueeze(0)?,
                &[1],
                DType::F64,
                &[4.0],
                (0.0, 0.0),
            )
        }),
        case("index_select", |d| {
            for dt in [DType::F32, DType::BF16, DType::I64, DType::U8] {
                let x = t(d, &(0..12).map(f64::from).collect::<Vec<_>>(), (3, 4), dt)?;
                for idt in INTS {
                    let ids = t(d, &[2.0, 0.0, 2.0], 3, idt)?;
                    expect(
                        &format!("index_select dim 0 {dt} ids {idt}"),
                        &x.index_select(&ids, 0)?,
                        &[3, 4],
                        dt,
                        &[
                            8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0,
                        ],
                        (0.0, 0.0),
                    )?;
                    expect(
                        &format!("index_select dim 1 {dt} ids {idt}"),
                        &x.index_select(&ids, 1)?,
                        &[3, 3],
                        dt,
                        &[2.0, 0.0, 2.0, 6.0, 4.0, 6.0, 10.0, 8.0, 10.0],
                        (0.0, 0.0),
                    )?;
                }
                // Non-contiguous source and ids.
                let ids = t(d, &[3.0, 9.0, 1.0, 9.0], (2, 2), DType::I64)?
                    .t()?
                    .narrow(0, 0, 1)?
                    .squeeze(0)?; // [3, 1]
                expect(
                    &format!("index_select of transpose {dt}"),
                    &x.t()?.index_select(&ids, 0)?,
                    &[2, 3],
                    dt,
                    &[3.0, 7.0, 11.0, 1.0, 5.0, 9.0],
                    (0.0, 0.0),
                )?;
            }
            Ok(())
        }),
        case("gather_scatter_index_add", |d| {
            for dt in [DType::F32, DType::F64, DType::F16, DType::I64, DType::U32] {
                let x = t(d, &(0..12).map(f64::from).collect::<Vec<_>>(), (3, 4), dt)?;
                let ids = t(d, &[3.0, 0.0, 1.0, 1.0, 2.0, 2.0], (3, 2), DType::I64)?;
                expect(
                    &format!("gather dim 1 {dt}"),
                    &x.gather(&ids, 1)?,
                    &[3, 2],
                    dt,
                    &[3.0, 0.0, 5.0, 5.0, 10.0, 10.0],
                    (0.0, 0.0),
                )?;
                let ids = t(d, &[2.0, 0.0, 1.0, 2.0, 2.0, 2.0], (2, 3), DType::U32)?;
                expect(
                    &format!("gather dim 0 {dt}"),
                    &x.gather(&ids, 0)?,
                    &[2, 3],
                    dt,
                    &[8.0, 1.0, 6.0, 8.0, 9.0, 10.0],
                    (0.0, 0.0),
                )?;
                let dst = Tensor::ones((3, 4), dt, d)?;
                let ids = t(
                    d,
                    &[0.0, 2.0, 2.0, 1.0, 0.0, 0.0, 1.0, 2.0],
                    (2, 4),
                    DType::I64,
                )?;
                let src = t(d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], (2, 4), dt)?;
                expect(
                    &format!("scatter_add dim 0 {dt}"),
                    &dst.scatter_add(&ids, &src, 0)?,
                    &[3, 4],
                    dt,
                    &[7.0, 7.0, 1.0, 1.0, 1.0, 1.0, 8.0, 5.0, 1.0, 3.0, 4.0, 9.0],
                    (0.0, 0.0),
                )?;
                let dst = Tensor::zeros((4, 2), dt, d)?;
                let ids = t(d, &[3.0, 0.0, 3.0], 3, DType::U8)?;
                let src = t(d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (3, 2), dt)?;
                expect(
                    &format!("index_add dim 0 {dt}"),
                    &dst.index_add(&ids, &src, 0)?,
                    &[4, 2],
                    dt,
                    &[3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 6.0, 8.0],
                    (0.0, 0.0),
                )?;
                let dst = Tensor::ones((2, 3), dt, d)?;
                let ids = t(d, &[2.0, 2.0], 2, DType::I64)?;
                let src = t(d, &[1.0, 2.0, 3.0, 4.0], (2, 2), dt)?;
                expect(
                    &format!("index_add dim 1 {dt}"),
                    &dst.index_add(&ids, &src, 1)?,
                    &[2, 3],
                    dt,
                    &[1.0, 1.0, 4.0, 1.0, 1.0, 8.0],
                    (0.0, 0.0),
                )?;
                // The destination of index_add/scatter_add is not modified in place.
                expect(
                    &format!("index_add leaves dst {dt}"),
                    &dst,
                    &[2, 3],
                    dt,
                    &[1.0; 6],
                    (0.0, 0.0),
                )?;
            }
            Ok(())
        }),
        case("embedding", |d| {
            for dt in [DType::F32, DType::F16, DType::I64] {
                let table = t(d, &(0..8).map(f64::from).collect::<Vec<_>>(), (4, 2), dt)?;
                for idt in INTS {
                    let ids = t(d, &[3.0, 0.0, 1.0, 3.0], (2, 2), idt)?;
                    expect(
                        &format!("embedding {dt} ids {idt}"),
                        &table.embedding(&ids)?,
                        &[2, 2, 2],
                        dt,
                        &[6.0, 7.0, 0.0, 1.0, 2.0, 3.0, 6.0, 7.0],
                        (0.0, 0.0),
                    )?;
                }
            }
            Ok(())
        }),
        case("copy_from_in_place", |d| {
            let base = Tensor::zeros((3, 4), DType::F32, d)?;
            base.narrow(1, 1, 2)?
                .copy_from(&Tensor::full(5.0, (3, 2), DType::F32, d)?)?;
            expect(
                "copy_from into narrow(1, 1, 2)",
                &base,
                &[3, 4],
                DType::F32,
                &[0.0, 5.0, 5.0, 0.0, 0.0, 5.0, 5.0, 0.0, 0.0, 5.0, 5.0, 0.0],
                (0.0, 0.0),
            )?;
            // Into a transposed view, from a transposed source, with a dtype conversion.
            let src = t(d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), DType::F64)?;
            base.t()?
                .narrow(0, 1, 3)?
                .narrow(1, 0, 2)?
                .copy_from(&src.t()?)?;
            expect(
                "copy_from into a transposed view",
                &base,
                &[3, 4],
                DType::F32,
                &[0.0, 1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 0.0, 5.0, 5.0, 0.0],
                (0.0, 0.0),
            )?;
            // Var::set on the whole variable, and in place through a narrowed view of it.
            let v = Var::from_tensor(&Tensor::zeros((2, 3), DType::F32, d)?)?;
            v.set(&t(d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), DType::F32)?)?;
            expect(
                "Var::set",
                v.as_tensor(),
                &[2, 3],
                DType::F32,
                &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                (0.0, 0.0),
            )?;
            v.narrow(0, 1, 1)?
                .copy_from(&Tensor::full(-1.0, (1, 3), DType::F32, d)?)?;
            expect(
                "copy_from into a Var's row",
                v.as_tensor(),
                &[2, 3],
                DType::F32,
                &[1.0, 2.0, 3.0, -1.0, -1.0, -1.0],
                (0.0, 0.0),
            )?;
            // An aliasing copy: a tensor's own shifted view as the source.
            let a = t(d, &[1.0, 2.0, 3.0, 4.0], 4, DType::I64)?;
            a.narrow(0, 1, 3)?.copy_from(&a.narrow(0, 0, 3)?)?;
            expect(
                "overlapping copy_from",
                &a,
                &[4],
                DType::I64,
                &[1.0, 1.0, 2.0, 3.0],
                (0.0, 0.0),
            )
        }),
    ]
}
