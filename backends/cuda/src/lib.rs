//! CUDA backend for tensor-engine, on cudarc with dynamic loading: the crate builds and its
//! host-side tests run on machines without CUDA, where [`device`] is an ordinary `Err`.
//!
//! - Kernels are CUDA C (`kernels/*.cu`) compiled at run time by NVRTC to CUBIN for the GPU
//!   at hand, once per process ([`kernels`]).
//! - Matrix products go to cuBLAS.
//! - Memory comes from a caching allocator ([`storage`]); data crosses between host and
//!   device only in `from_host`/`to_host`, i.e. when the user moves a tensor.
//! - All work of a device is queued on one stream, in call order.

mod attention;
mod copy;
pub mod decoder;
mod device;
mod elementwise;
mod error;
mod fused;
mod index;
pub mod kernels;
mod matmul;
mod quant;
mod random;
mod reduce;
pub mod storage;

pub use device::{as_cuda, device, is_available, CudaDevice};
pub use storage::{CudaStorage, PoolStats};

use tensor_core::{BackendStorage, Error, Layout, Result};

static LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many kernels this process has launched through the backend so far (cuBLAS calls not
/// counted): benchmarks divide a step's host time by it to see the cost per launch.
pub fn launch_count() -> u64 {
    LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

#[doc(hidden)]
pub fn count_launch() {
    LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Launch kernel `$name` of module `$m` with config `$cfg` and the given arguments, which
/// must be variables (not temporaries): the launch reads them through references.
#[macro_export]
macro_rules! launch {
    ($dev:expr, $m:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let f = $dev.func(&$m, $name)?;
        $crate::count_launch();
        let mut b = $dev.stream().launch_builder(&f);
        $( cudarc::driver::PushKernelArg::arg(&mut b, &$arg); )*
        let cfg: cudarc::driver::LaunchConfig = $cfg;
        // SAFETY: the kernel's parameter list matches the arguments pushed (each kernel file
        // keeps its Rust call next to its CUDA signature); buffers are live device memory.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| $crate::storage::launch_error($name, e))
    }};
}

/// The storage error for a layout that reaches past the end of its buffer (checked once on
/// the host, so kernels never read out of bounds).
pub(crate) fn check_layout(s: &dyn BackendStorage, l: &Layout, op: &'static str) -> Result<()> {
    let need = l.required_len();
    if need > s.len() {
        return Err(Error::Backend {
            backend: "cuda".into(),
            msg: format!(
                "{op}: layout {:?} (strides {:?}, offset {}) needs {need} elements, storage has {}",
                l.dims(),
                l.strides(),
                l.offset(),
                s.len()
            ),
        });
    }
    Ok(())
}

pub(crate) fn check_same_shape(a: &Layout, b: &Layout, op: &'static str) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
        });
    }
    Ok(())
}

/// Run `f` on the CUDA storage and layout of `t` (holding the storage's read lock).
pub(crate) fn with_storage<R>(
    t: &tensor_core::Tensor,
    f: impl FnOnce(&CudaStorage, &Layout) -> Result<R>,
) -> Result<R> {
    let guard = t.storage();
    let s = storage::cuda(guard.as_ref())?;
    check_layout(s, t.layout(), "tensor")?;
    f(s, t.layout())
}
