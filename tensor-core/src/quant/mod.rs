//! Quantized weights (DESIGN.md §5): the ggml block formats, their reference quantize and
//! dequantize, and [`QTensor`], a tensor of blocks that borrows its bytes from wherever they
//! live (usually a memory-mapped GGUF file), so loading a quantized model copies nothing.
//!
//! The block formats are the contract shared by the readers (tensor-io), the writers (the
//! `quantize` example) and every backend's kernels, so they live here in core.

mod dequant;
mod iq_grids;
mod qtensor;
mod quantize;
mod types;

pub use dequant::{dequantize, dequantize_into};
pub use qtensor::{QBytes, QTensor};
pub use quantize::{quantize, quantize_into};
pub use types::{GgmlType, QK_K};
