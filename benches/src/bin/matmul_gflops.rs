//! Times `Tensor::matmul` on the CPU backend and prints one JSON line per shape:
//! `{"m":…,"k":…,"n":…,"batch":…,"dtype":"f32","threads":2,"median_s":…,"gflops":…}`.
//!
//! Usage: `matmul_gflops [--dtype f32|bf16|f16|f64] [--reps R] [--warmup W] SHAPE…` where a
//! SHAPE is `N` (square), `MxKxN`, or `BxMxKxN` (a batch of B products). The thread count is
//! rayon's (set `RAYON_NUM_THREADS`). Warm-up lasts at least `W` runs and 0.25 s.
//! `benches/matmul_vs_numpy.py` drives it.

use std::process::ExitCode;
use std::time::Instant;

use tensor_core::{DType, Tensor};

struct Shape {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
}

fn parse_shape(s: &str) -> Option<Shape> {
    let v: Vec<usize> = s
        .split('x')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    match v[..] {
        [n] => Some(Shape {
            batch: 1,
            m: n,
            k: n,
            n,
        }),
        [m, k, n] => Some(Shape { batch: 1, m, k, n }),
        [batch, m, k, n] => Some(Shape { batch, m, k, n }),
        _ => None,
    }
}

fn parse_dtype(s: &str) -> Option<DType> {
    DType::ALL
        .into_iter()
        .find(|d| d.as_str() == s && d.is_float())
}

fn run(shape: &Shape, dtype: DType, reps: usize, warmup: usize) -> tensor_core::Result<f64> {
    let device = tensor_cpu::device();
    let (a, b) = if shape.batch == 1 {
        (
            Tensor::rand(-1.0, 1.0, (shape.m, shape.k), dtype, &device)?,
            Tensor::rand(-1.0, 1.0, (shape.k, shape.n), dtype, &device)?,
        )
    } else {
        (
            Tensor::rand(-1.0, 1.0, (shape.batch, shape.m, shape.k), dtype, &device)?,
            Tensor::rand(-1.0, 1.0, (shape.batch, shape.k, shape.n), dtype, &device)?,
        )
    };
    // At least `warmup` runs and a quarter second: the pool's threads, the scratch buffers
    // and the allocator's free lists all settle during the first few dozen small products.
    let t0 = Instant::now();
    let mut done = 0;
    while done < warmup || t0.elapsed().as_secs_f64() < 0.25 {
        a.matmul(&b)?;
        done += 1;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
        drop(c);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> ExitCode {
    let mut dtype = DType::F32;
    let (mut reps, mut warmup) = (7usize, 2usize);
    let mut shapes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let ok = match arg.as_str() {
            "--dtype" => args.next().and_then(|s| parse_dtype(&s)).map(|d| dtype = d),
            "--reps" => args.next().and_then(|s| s.parse().ok()).map(|r| reps = r),
            "--warmup" => args.next().and_then(|s| s.parse().ok()).map(|w| warmup = w),
            s => parse_shape(s).map(|sh| shapes.push(sh)),
        };
        if ok.is_none() {
            eprintln!("matmul_gflops: bad argument near {arg:?}");
            eprintln!(
                "usage: matmul_gflops [--dtype f32|bf16|f16|f64] [--reps R] [--warmup W] SHAPE…"
            );
            return ExitCode::FAILURE;
        }
    }
    if shapes.is_empty() {
        shapes = [256, 512, 1024, 2048, 4096]
            .iter()
            .map(|&n| Shape {
                batch: 1,
                m: n,
                k: n,
                n,
            })
            .collect();
    }
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok());
    for s in &shapes {
        match run(s, dtype, reps, warmup) {
            Ok(t) => {
                let flops = 2.0 * (s.batch * s.m * s.k * s.n) as f64;
                println!(
                    "{{\"batch\":{},\"m\":{},\"k\":{},\"n\":{},\"dtype\":\"{}\",\"threads\":{},\"median_s\":{:.6e},\"gflops\":{:.2}}}",
                    s.batch,
                    s.m,
                    s.k,
                    s.n,
                    dtype,
                    threads.map_or("null".to_string(), |t| t.to_string()),
                    t,
                    flops / t / 1e9
                );
            }
            Err(e) => {
                eprintln!("matmul_gflops: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
