//! Criterion benches of the quantized products, one group per weight type: the matrix-vector
//! product of decoding (one token) and the prompt GEMM (128 tokens), both `x · Wᵀ` through
//! `Tensor::qmatmul` on the CPU device, for SmolLM2's FFN-down shape (576 × 1536, whose rows
//! suit every block size). Throughput is in bytes of weights read per product, so decode
//! figures compare directly with the memory bandwidth.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tensor_core::quant::{quantize, GgmlType, QTensor};
use tensor_core::{DType, Tensor};

const TYPES: [GgmlType; 12] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4_NL,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_XS,
];

fn quant(c: &mut Criterion) {
    let device = tensor_cpu::device();
    let (n, k) = (576usize, 1536usize);
    let wf = Tensor::rand(-1.0, 1.0, (n, k), DType::F32, &device)
        .and_then(|t| t.to_vec2::<f32>())
        .expect("random weights");
    let flat: Vec<f32> = wf.into_iter().flatten().collect();
    for ty in TYPES {
        let w = QTensor::from_bytes(ty, &[n, k], quantize(ty, &flat).expect("quantize"))
            .expect("qtensor");
        let mut group = c.benchmark_group(format!("qmatmul_{ty}"));
        group.sample_size(30);
        group.measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Bytes(w.data().len() as u64));
        for m in [1usize, 128] {
            let x = Tensor::rand(-1.0, 1.0, (m, k), DType::F32, &device).expect("rand x");
            group.bench_with_input(BenchmarkId::new("tokens", m), &m, |bench, _| {
                bench.iter(|| x.qmatmul(&w).expect("qmatmul"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, quant);
criterion_main!(benches);
