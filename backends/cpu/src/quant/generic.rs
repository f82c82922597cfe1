//! The fallback for weight types without a kernel: dequantize one row at a time.
