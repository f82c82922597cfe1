//! Criterion benches of the CPU matmul: square f32 and bf16 products from 256 to 4096.
//! Throughput is reported in floating-point operations (2·n³ per product) as "elements".

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tensor_core::{DType, Tensor};

fn matmul(c: &mut Criterion) {
    let device = tensor_cpu::device();
    for dtype in [DType::F32, DType::BF16] {
        let mut group = c.benchmark_group(format!("matmul_{dtype}"));
        for n in [256usize, 512, 1024, 2048, 4096] {
            let a = Tensor::rand(-1.0, 1.0, (n, n), dtype, &device).expect("rand lhs");
            let b = Tensor::rand(-1.0, 1.0, (n, n), dtype, &device).expect("rand rhs");
            group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
            // The big products take 0.1–1 s each: a few samples are enough to see a change.
            if n >= 2048 {
                group.sample_size(10);
                group.measurement_time(Duration::from_secs(if n >= 4096 { 20 } else { 8 }));
            } else {
                group.sample_size(30);
                group.measurement_time(Duration::from_secs(4));
            }
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
                bench.iter(|| a.matmul(&b).expect("matmul"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, matmul);
criterion_main!(benches);
