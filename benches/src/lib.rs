//! Benchmarks of tensor-engine (criterion benches and comparison scripts).
