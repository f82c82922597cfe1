//! CPU storage: a contiguous host vector of one dtype.

use std::any::Any;

use tensor_core::{map_host, BackendStorage, DType, HostData, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct CpuStorage {
    pub data: HostData,
}

impl CpuStorage {
    pub fn new(data: HostData) -> Self {
        CpuStorage { data }
    }
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        self.data.dtype()
    }
    fn len(&self) -> usize {
        map_host!(&self.data, v => v.len())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Downcast a storage handed to the CPU backend; anything else is a device mix-up.
pub fn cpu(s: &dyn BackendStorage) -> Result<&CpuStorage> {
    s.as_any()
        .downcast_ref::<CpuStorage>()
        .ok_or_else(|| tensor_core::Error::Backend {
            backend: "cpu".into(),
            msg: format!("expected a CPU storage, got {s:?}"),
        })
}

pub fn cpu_mut(s: &mut dyn BackendStorage) -> Result<&mut CpuStorage> {
    let desc = format!("{:?}", s.dtype());
    s.as_any_mut()
        .downcast_mut::<CpuStorage>()
        .ok_or_else(|| tensor_core::Error::Backend {
            backend: "cpu".into(),
            msg: format!("expected a CPU storage, got a foreign storage of dtype {desc}"),
        })
}

/// A buffer of `n` elements to be written in full before [`assume_init`]: large outputs skip
/// the zero-fill pass, which costs as much as a cheap op itself.
pub(crate) fn uninit_vec<T>(n: usize) -> Vec<std::mem::MaybeUninit<T>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` needs no initialisation; the length is within the capacity.
    unsafe { v.set_len(n) };
    v
}

/// The vector of `T` a fully written [`uninit_vec`] buffer holds.
///
/// # Safety
/// Every element of `v` must have been written.
pub(crate) unsafe fn assume_init<T>(v: Vec<std::mem::MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `MaybeUninit<T>` has `T`'s layout; the caller guarantees every element is
    // initialised; pointer, length and capacity come from a live Vec that is not dropped.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity()) }
}
