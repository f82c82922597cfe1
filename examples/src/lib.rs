//! Example programs live beside this crate as `examples/*.rs`; run them with
//! `cargo run --release -p tensor-examples --example <name>`.
