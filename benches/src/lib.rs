//! Benchmarks of tensor-engine: criterion benches in `benches/`, and comparison programs in
//! `src/bin/` driven by the scripts beside this crate (e.g. `matmul_vs_numpy.py`).
