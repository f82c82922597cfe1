//! Turning cudarc's errors into tensor-core's.

use tensor_core::Error;

pub(crate) fn backend(msg: impl Into<String>) -> Error {
    Error::Backend {
        backend: "cuda".into(),
        msg: msg.into(),
    }
}

/// `map_err` adapter: a driver/cuBLAS/NVRTC error while doing `what`.
pub(crate) fn drv<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| backend(format!("{what}: {e}"))
}
