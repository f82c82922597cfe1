//! Device memory: [`CudaStorage`] (one contiguous buffer of one dtype) and the caching
//! allocator behind it.
//!
//! All work of a device runs on one stream, so a buffer dropped on the host can be handed to
//! the next allocation of the same size at once: every kernel that read the old contents was
//! queued before any kernel that writes the new ones. Freed buffers go to per-size free lists
//! (sizes rounded to 512 B below 1 MiB and to 2 MiB above), so a training or decode loop
//! reaches a steady state with no `cuMemAlloc` at all. When the driver runs out of memory the
//! cache is released and the allocation tried once more.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys, CudaContext};
use tensor_core::{BackendStorage, DType, Error, Result};

use crate::error::drv;

/// Bytes rounded up to the allocator's size class.
fn size_class(bytes: usize) -> usize {
    const SMALL: usize = 512;
    const LARGE: usize = 2 << 20;
    if bytes <= (1 << 20) {
        bytes.div_ceil(SMALL).max(1) * SMALL
    } else {
        bytes.div_ceil(LARGE) * LARGE
    }
}

#[derive(Debug, Default)]
struct PoolState {
    free: HashMap<usize, Vec<sys::CUdeviceptr>>,
    cached_bytes: usize,
    used_bytes: usize,
    peak_bytes: usize,
    driver_allocs: u64,
}

/// The caching allocator of one device.
#[derive(Debug)]
pub struct Pool {
    ctx: Arc<CudaContext>,
    state: Mutex<PoolState>,
}

/// Allocator counters, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes held by live storages (rounded to size classes).
    pub used_bytes: usize,
    /// Bytes of freed buffers kept for reuse.
    pub cached_bytes: usize,
    /// The most `used_bytes` has been.
    pub peak_bytes: usize,
    /// `cuMemAlloc` calls so far.
    pub driver_allocs: u64,
}

impl Pool {
    pub(crate) fn new(ctx: Arc<CudaContext>) -> Arc<Pool> {
        Arc::new(Pool {
            ctx,
            state: Mutex::new(PoolState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let s = self.lock();
        PoolStats {
            used_bytes: s.used_bytes,
            cached_bytes: s.cached_bytes,
            peak_bytes: s.peak_bytes,
            driver_allocs: s.driver_allocs,
        }
    }

    /// A buffer of at least `bytes` bytes (contents undefined).
    pub(crate) fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DevBuf> {
        if bytes == 0 {
            return Ok(DevBuf {
                ptr: 0,
                bytes: 0,
                pool: self.clone(),
            });
        }
        let class = size_class(bytes);
        {
            let mut s = self.lock();
            if let Some(ptr) = s.free.get_mut(&class).and_then(|v| v.pop()) {
                s.cached_bytes -= class;
                s.used_bytes += class;
                s.peak_bytes = s.peak_bytes.max(s.used_bytes);
                return Ok(DevBuf {
                    ptr,
                    bytes: class,
                    pool: self.clone(),
                });
            }
        }
        self.ctx.bind_to_thread().map_err(drv("bind context"))?;
        // SAFETY: a plain device allocation in the bound context; freed in `release`.
        let ptr = match unsafe { result::malloc_sync(class) } {
            Ok(p) => p,
            Err(_) => {
                // Out of memory (or fragmented): give the cache back and try once more.
                self.empty_cache()?;
                unsafe { result::malloc_sync(class) }.map_err(|e| Error::Backend {
                    backend: "cuda".into(),
                    msg: format!(
                        "out of device memory allocating {class} bytes ({} bytes in use): {e}",
                        self.stats().used_bytes
                    ),
                })?
            }
        };
        let mut s = self.lock();
        s.driver_allocs += 1;
        s.used_bytes += class;
        s.peak_bytes = s.peak_bytes.max(s.used_bytes);
        Ok(DevBuf {
            ptr,
            bytes: class,
            pool: self.clone(),
        })
    }

    fn release(&self, ptr: sys::CUdeviceptr, bytes: usize) {
        let mut s = self.lock();
        s.used_bytes -= bytes;
        s.cached_bytes += bytes;
        s.free.entry(bytes).or_default().push(ptr);
    }

    /// Free every cached buffer (waits for the device first: a cached buffer may still be
    /// read by queued work).
    pub(crate) fn empty_cache(&self) -> Result<()> {
        self.ctx.synchronize().map_err(drv("synchronize"))?;
        let mut s = self.lock();
        for (_, ptrs) in s.free.drain() {
            for p in ptrs {
                // SAFETY: `p` came from `malloc_sync` in this context and no storage owns it.
                unsafe { result::free_sync(p) }.map_err(drv("cuMemFree"))?;
            }
        }
        s.cached_bytes = 0;
        Ok(())
    }
}

/// An owned device buffer that goes back to its pool on drop.
#[derive(Debug)]
pub struct DevBuf {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    pool: Arc<Pool>,
}

impl DevBuf {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.pool.release(self.ptr, self.bytes);
        }
    }
}

/// A contiguous device buffer of `len` elements of `dtype`.
#[derive(Debug)]
pub struct CudaStorage {
    pub(crate) buf: DevBuf,
    pub(crate) dtype: DType,
    pub(crate) len: usize,
}

impl CudaStorage {
    /// The device address of element 0.
    pub fn ptr(&self) -> u64 {
        self.buf.ptr
    }
    /// The address of element `i` (no bounds check).
    pub fn ptr_at(&self, i: usize) -> u64 {
        self.buf.ptr + (i * self.dtype.size_in_bytes()) as u64
    }
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Downcast a storage handed to the CUDA backend; anything else is a device mix-up.
pub fn cuda(s: &dyn BackendStorage) -> Result<&CudaStorage> {
    s.as_any()
        .downcast_ref::<CudaStorage>()
        .ok_or_else(|| Error::Backend {
            backend: "cuda".into(),
            msg: format!("expected a CUDA storage, got {s:?}"),
        })
}

pub fn cuda_mut(s: &mut dyn BackendStorage) -> Result<&mut CudaStorage> {
    let desc = format!("{:?}", s.dtype());
    s.as_any_mut()
        .downcast_mut::<CudaStorage>()
        .ok_or_else(|| Error::Backend {
            backend: "cuda".into(),
            msg: format!("expected a CUDA storage, got a foreign storage of dtype {desc}"),
        })
}

/// The error of a failed kernel launch.
pub fn launch_error(name: &str, e: cudarc::driver::DriverError) -> Error {
    crate::error::backend(format!("launching kernel {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up() {
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(512), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), 2 << 20);
        assert_eq!(size_class((4 << 20) + 1), 6 << 20);
    }
}
