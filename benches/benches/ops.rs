//! Criterion benches of everyday CPU ops through the public `Tensor` API: elementwise add and
//! GELU on 1M f32, softmax over 4096×1024, a 3×3 conv2d (N=8, 64→64 channels, 56×56, pad 1),
//! and causal attention forward (B=1, H=8, D=64, L=512 and 2048), the backend's fused kernel
//! next to the materialising default composition (`tensor_core::composite::attention`).
//! Throughput is in elements for the memory-bound ops and in floating-point operations for
//! conv and attention.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tensor_core::{composite, AttentionParams, DType, Tensor};

fn elementwise(c: &mut Criterion) {
    let dev = tensor_cpu::device();
    let n = 1 << 20;
    let a = Tensor::randn(0.0, 1.0, n, DType::F32, &dev).expect("randn a");
    let b = Tensor::randn(0.0, 1.0, n, DType::F32, &dev).expect("randn b");
    let mut g = c.benchmark_group("elementwise_f32_1M");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("add", |bench| bench.iter(|| a.add(&b).expect("add")));
    g.bench_function("gelu", |bench| bench.iter(|| a.gelu().expect("gelu")));
    g.finish();
}

fn softmax(c: &mut Criterion) {
    let dev = tensor_cpu::device();
    let (rows, cols) = (4096, 1024);
    let x = Tensor::randn(0.0, 1.0, (rows, cols), DType::F32, &dev).expect("randn");
    let mut g = c.benchmark_group("softmax_f32");
    g.throughput(Throughput::Elements((rows * cols) as u64));
    g.bench_function("4096x1024", |bench| {
        bench.iter(|| x.softmax(-1).expect("softmax"))
    });
    g.finish();
}

fn conv2d(c: &mut Criterion) {
    let dev = tensor_cpu::device();
    let (n, cin, cout, hw, k) = (8, 64, 64, 56, 3);
    let x = Tensor::randn(0.0, 1.0, (n, cin, hw, hw), DType::F32, &dev).expect("randn x");
    let w = Tensor::randn(0.0, 0.1, (cout, cin, k, k), DType::F32, &dev).expect("randn w");
    let mut g = c.benchmark_group("conv2d_f32");
    g.throughput(Throughput::Elements(
        2 * (n * cout * hw * hw * cin * k * k) as u64,
    ));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(6));
    g.bench_function("n8_c64_56x56_k3", |bench| {
        bench.iter(|| x.conv2d(&w, None, 1, 1, 1, 1).expect("conv2d"))
    });
    g.finish();
}

fn attention(c: &mut Criterion) {
    let dev = tensor_cpu::device();
    let (b, h, d) = (1, 8, 64);
    for composed in [false, true] {
        let name = if composed {
            "attention_causal_f32_composite"
        } else {
            "attention_causal_f32"
        };
        let mut g = c.benchmark_group(name);
        for l in [512usize, 2048] {
            let t = || Tensor::randn(0.0, 1.0, (b, h, l, d), DType::F32, &dev).expect("randn");
            let (q, k, v) = (t(), t(), t());
            let p = AttentionParams {
                scale: 1.0 / (d as f64).sqrt(),
                causal: true,
                ..Default::default()
            };
            // Two products of 2·D flops per visible (query, key) pair; causal keeps L(L+1)/2.
            let pairs = (l * (l + 1) / 2) as u64;
            g.throughput(Throughput::Elements(4 * (b * h * d) as u64 * pairs));
            g.sample_size(if l >= 2048 || composed { 10 } else { 30 });
            g.measurement_time(Duration::from_secs(5));
            g.bench_with_input(BenchmarkId::from_parameter(l), &l, |bench, _| {
                if composed {
                    bench.iter(|| composite::attention(&q, &k, &v, &p).expect("composite"))
                } else {
                    bench.iter(|| {
                        q.scaled_dot_product_attention(&k, &v, &p)
                            .expect("attention")
                    })
                }
            });
        }
        g.finish();
    }
}

criterion_group!(benches, elementwise, softmax, conv2d, attention);
criterion_main!(benches);
