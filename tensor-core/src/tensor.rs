//! The `Tensor` handle: shared storage + layout + dtype + device, and (only when a tracked
//! variable is upstream) the op that produced it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::backprop::{self, Op};
use crate::{DType, Device, Error, HostData, Layout, Result, Shape, Storage, WithDType};

/// Unique id of a tensor value (views get new ids; gradients are keyed by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct TensorInner {
    pub(crate) id: TensorId,
    pub(crate) storage: Arc<RwLock<Storage>>,
    pub(crate) layout: Layout,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    pub(crate) op: Option<Op>,
    pub(crate) is_variable: bool,
    /// For variables: whether results computed from it record their ops (freezing turns it
    /// off, like `requires_grad_(False)` in PyTorch). Ignored for other tensors.
    pub(crate) requires_grad: AtomicBool,
}

/// An n-dimensional array on some device. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorInner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor[{:?}, {}, {}{}]",
            self.dims(),
            self.dtype(),
            self.device().name(),
            if self.tracked() { ", tracked" } else { "" }
        )
    }
}

impl Tensor {
    // ---- construction from backend results -------------------------------------------------

    /// Wrap a fresh contiguous storage produced from `inputs`; records `op` only when some
    /// input is tracked and gradients are enabled.
    pub(crate) fn from_storage(
        storage: Storage,
        shape: impl Into<Shape>,
        device: &Device,
        op: Option<Op>,
    ) -> Tensor {
        let dtype = storage.dtype();
        Tensor(Arc::new(TensorInner {
            id: TensorId::new(),
            storage: Arc::new(RwLock::new(storage)),
            layout: Layout::contiguous(shape),
            dtype,
            device: device.clone(),
            op,
            is_variable: false,
            requires_grad: AtomicBool::new(false),
        }))
    }

    /// A new view on the same storage.
    pub(crate) fn view_with(&self, layout: Layout, op: Option<Op>) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::new(),
            storage: self.0.storage.clone(),
            layout,
            dtype: self.0.dtype,
            device: self.0.device.clone(),
            op,
            is_variable: false,
            requires_grad: AtomicBool::new(false),
        }))
    }

    /// Wrap an untracked storage produced by a backend (for backend authors implementing
    /// fused ops that must return tensors).
    pub fn from_backend_storage(
        storage: Storage,
        shape: impl Into<Shape>,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if storage.len() != shape.elem_count() {
            return Err(Error::invalid(
                "from_backend_storage",
                format!(
                    "storage holds {} elements but shape {shape:?} needs {}",
                    storage.len(),
                    shape.elem_count()
                ),
            ));
        }
        Ok(Tensor::from_storage(storage, shape, device, None))
    }

    // ---- accessors ----------------------------------------------------------------------------

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &Shape {
        self.0.layout.shape()
    }
    pub fn dims(&self) -> &[usize] {
        self.0.layout.dims()
    }
    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> &Device {
        &self.0.device
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// Size of one dimension (negative counts from the end).
    pub fn dim(&self, d: impl crate::Dim) -> Result<usize> {
        Ok(self.dims()[d.resolve(self.shape(), "dim")?])
    }
    /// True for variables and for results computed from variables with gradients enabled.
    pub fn tracked(&self) -> bool {
        (self.0.is_variable && self.0.requires_grad.load(Ordering::Relaxed)) || self.0.op.is_some()
    }
    pub fn is_variable(&self) -> bool {
        self.0.is_variable
    }
    pub(crate) fn op(&self) -> Option<&Op> {
        self.0.op.as_ref()
    }
    /// Read access to the backend storage (for backend authors implementing fused ops).
    pub fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        // A poisoned lock only means a panic happened while writing; the data is still usable.
        self.0.storage.read().unwrap_or_else(|e| e.into_inner())
    }
    /// Write access to the backend storage, for backend authors implementing in-place ops
    /// (optimizer updates). Only this view's positions may be written. Blocks while any other
    /// guard on the same storage lives, so never hold a guard of a tensor that shares storage
    /// with this one (see [`crate::optim::shares_storage`]) while taking it.
    pub fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        // As in `storage`: a poisoned lock only means a panic happened while writing.
        self.0.storage.write().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    // ---- creation -----------------------------------------------------------------------------

    pub fn from_host(data: HostData, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::ElementCountMismatch {
                op: "from_vec",
                src: Shape::from(vec![data.len()]),
                src_elems: data.len(),
                dst: shape.clone(),
                dst_elems: shape.elem_count(),
            });
        }
        let storage = device.backend().from_host(data)?;
        Ok(Tensor::from_storage(storage, shape, device, None))
    }

    pub fn from_vec<T: WithDType>(
        data: Vec<T>,
        shape: impl Into<Shape>,
        device: &Device,
    ) -> Result<Tensor> {
        Tensor::from_host(T::into_host(data), shape, device)
    }

    pub fn from_slice<T: WithDType>(
        data: &[T],
        shape: impl Into<Shape>,
        device: &Device,
    ) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }

    /// Values given as f64, stored as `dtype` (convenient in tests and examples).
    pub fn from_f64s(
        data: &[f64],
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        Tensor::from_host(HostData::from_f64_slice(data, dtype), shape, device)
    }

    /// A rank-0 tensor.
    pub fn scalar(value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(value, (), dtype, device)
    }

    pub fn full(
        value: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let storage = device.backend().full(shape.elem_count(), value, dtype)?;
        Ok(Tensor::from_storage(storage, shape, device, None))
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(0.0, shape, dtype, device)
    }

    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }

    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape().clone(), self.dtype(), self.device())
    }

    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.shape().clone(), self.dtype(), self.device())
    }

    pub fn full_like(&self, value: f64) -> Result<Tensor> {
        Tensor::full(value, self.shape().clone(), self.dtype(), self.device())
    }

    /// `[start, end)` in steps of `step`, like `torch.arange`.
    pub fn arange(
        start: f64,
        end: f64,
        step: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::invalid(
                "arange",
                format!("need finite bounds and a non-zero step, got start {start}, end {end}, step {step}"),
            ));
        }
        let n_f = ((end - start) / step).ceil().max(0.0);
        if n_f > (isize::MAX as f64) / 8.0 {
            return Err(Error::invalid(
                "arange",
                format!("[{start}, {end}) in steps of {step} has {n_f:e} elements, more than can be allocated"),
            ));
        }
        let n = n_f as usize;
        let v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
        Tensor::from_f64s(&v, n, dtype, device)
    }

    /// `steps` evenly spaced values from `start` to `end` inclusive, like `torch.linspace`.
    pub fn linspace(
        start: f64,
        end: f64,
        steps: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let v: Vec<f64> = match steps {
            0 => vec![],
            1 => vec![start],
            _ => {
                let d = (end - start) / (steps - 1) as f64;
                (0..steps)
                    .map(|i| {
                        if i == steps - 1 {
                            end
                        } else {
                            start + i as f64 * d
                        }
                    })
                    .collect()
            }
        };
        Tensor::from_f64s(&v, steps, dtype, device)
    }

    /// The `n × n` identity matrix.
    pub fn eye(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut v = vec![0.0; n * n];
        for i in 0..n {
            v[i * n + i] = 1.0;
        }
        Tensor::from_f64s(&v, (n, n), dtype, device)
    }

    /// Uniform samples in `[lo, hi)` from the global seeded generator (see [`crate::manual_seed`]).
    pub fn rand(
        lo: f64,
        hi: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::rand_seeded(lo, hi, shape, dtype, device, crate::random::next_seed())
    }

    pub fn rand_seeded(
        lo: f64,
        hi: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Tensor> {
        let shape = shape.into();
        crate::random::check_float("rand", dtype)?;
        if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
            return Err(Error::invalid(
                "rand",
                format!("need lo < hi, got [{lo}, {hi})"),
            ));
        }
        let s = device
            .backend()
            .rand_uniform(shape.elem_count(), lo, hi, dtype, seed)?;
        Ok(Tensor::from_storage(s, shape, device, None))
    }

    /// Normal samples from the global seeded generator.
    pub fn randn(
        mean: f64,
        std: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        Tensor::randn_seeded(mean, std, shape, dtype, device, crate::random::next_seed())
    }

    pub fn randn_seeded(
        mean: f64,
        std: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Tensor> {
        let shape = shape.into();
        crate::random::check_float("randn", dtype)?;
        if std.is_nan() || std < 0.0 || !std.is_finite() {
            return Err(Error::invalid(
                "randn",
                format!("need a finite std >= 0, got {std}"),
            ));
        }
        let s = device
            .backend()
            .rand_normal(shape.elem_count(), mean, std, dtype, seed)?;
        Ok(Tensor::from_storage(s, shape, device, None))
    }

    // ---- reading data back ------------------------------------------------------------------

    pub fn to_host(&self) -> Result<HostData> {
        let s = self.storage();
        self.device().backend().to_host(s.as_ref(), self.layout())
    }

    /// All elements in row-major order; `T` must be this tensor's dtype.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DTypeMismatch {
                op: "to_vec",
                lhs: self.dtype(),
                rhs: T::DTYPE,
            });
        }
        let h = self.to_host()?;
        match T::slice_of(&h) {
            Some(v) => Ok(v.to_vec()),
            None => Err(Error::Backend {
                backend: self.device().name(),
                msg: format!(
                    "to_host returned {} data for a {} tensor",
                    h.dtype(),
                    self.dtype()
                ),
            }),
        }
    }

    pub fn to_vec2<T: WithDType>(&self) -> Result<Vec<Vec<T>>> {
        if self.rank() != 2 {
            return Err(Error::UnexpectedShape {
                op: "to_vec2",
                expected: "a rank-2 tensor".into(),
                got: self.shape().clone(),
            });
        }
        let cols = self.dims()[1];
        let v = self.to_vec::<T>()?;
        Ok(if cols == 0 {
            vec![vec![]; self.dims()[0]]
        } else {
            v.chunks(cols).map(|c| c.to_vec()).collect()
        })
    }

    /// The single value of a one-element tensor.
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::UnexpectedShape {
                op: "to_scalar",
                expected: "exactly one element".into(),
                got: self.shape().clone(),
            });
        }
        Ok(self.to_vec::<T>()?[0])
    }

    /// Every element as f64, whatever the dtype.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(self.to_host()?.to_f64_vec())
    }

    /// The single value of a one-element tensor as f64.
    pub fn to_f64(&self) -> Result<f64> {
        if self.elem_count() != 1 {
            return Err(Error::UnexpectedShape {
                op: "to_f64",
                expected: "exactly one element".into(),
                got: self.shape().clone(),
            });
        }
        Ok(self.to_f64_vec()?[0])
    }

    // ---- dtype and device --------------------------------------------------------------------

    /// Cast to another dtype (differentiable between float dtypes).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let s = {
            let st = self.storage();
            self.device()
                .backend()
                .cast(st.as_ref(), self.layout(), dtype)?
        };
        let op = if dtype.is_float() {
            backprop::record(&[self], || Op::Cast(self.clone()))
        } else {
            None
        };
        Ok(Tensor::from_storage(
            s,
            self.shape().clone(),
            self.device(),
            op,
        ))
    }

    /// Copy to another device (through the host). Gradients flow back across the move.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if device.same_device(self.device()) {
            return Ok(self.clone());
        }
        let data = self.to_host()?;
        let s = device.backend().from_host(data)?;
        let op = backprop::record(&[self], || Op::ToDevice(self.clone()));
        Ok(Tensor::from_storage(s, self.shape().clone(), device, op))
    }

    /// The same values, cut off from the graph.
    pub fn detach(&self) -> Tensor {
        if !self.tracked() {
            return self.clone();
        }
        self.view_with(self.layout().clone(), None)
    }

    /// A contiguous copy if needed (differentiable).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        self.copy()
    }

    /// Always a fresh contiguous copy (differentiable).
    pub fn copy(&self) -> Result<Tensor> {
        let s = {
            let st = self.storage();
            self.device()
                .backend()
                .copy_strided(st.as_ref(), self.layout())?
        };
        let op = backprop::record(&[self], || Op::Copy(self.clone()));
        Ok(Tensor::from_storage(
            s,
            self.shape().clone(),
            self.device(),
            op,
        ))
    }

    /// Write `src` into this tensor's memory in place (the view's positions only). This is how
    /// optimizers update parameters and how KV caches fill slots; it is not differentiable and
    /// refuses a tracked `src` so no gradient is silently dropped.
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        crate::ops::check_same_device("copy_from", self, src)?;
        if src.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "copy_from",
                lhs: self.shape().clone(),
                rhs: src.shape().clone(),
            });
        }
        if src.tracked() && crate::backprop::grad_enabled() {
            return Err(Error::NoBackward {
                op: "copy_from",
                why: "in-place writes are not differentiable; detach() the source or use no_grad()"
                    .into(),
            });
        }
        let src = if src.dtype() != self.dtype() {
            src.detach().to_dtype(self.dtype())?
        } else {
            src.clone()
        };
        // Writing a storage into itself: copy the source out first to avoid aliasing.
        let src = if src.same_storage(self) {
            src.detach().copy()?
        } else {
            src
        };
        let src_guard = src.storage();
        let mut dst = self.0.storage.write().unwrap_or_else(|e| e.into_inner());
        self.device().backend().copy_into(
            dst.as_mut(),
            self.layout(),
            src_guard.as_ref(),
            src.layout(),
        )
    }
}

/// A trainable tensor: gradients are recorded for everything computed from it.
#[derive(Clone, Debug)]
pub struct Var(Tensor);

impl Var {
    /// A variable holding a private contiguous copy of `t`'s values.
    pub fn from_tensor(t: &Tensor) -> Result<Var> {
        let c = {
            let _g = crate::no_grad();
            t.copy()?
        };
        Ok(Var(Tensor(Arc::new(TensorInner {
            id: TensorId::new(),
            storage: c.0.storage.clone(),
            layout: c.0.layout.clone(),
            dtype: c.0.dtype,
            device: c.0.device.clone(),
            op: None,
            is_variable: true,
            requires_grad: AtomicBool::new(true),
        }))))
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Var> {
        Var::from_tensor(&Tensor::zeros(shape, dtype, device)?)
    }

    pub fn randn(
        mean: f64,
        std: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Var> {
        Var::from_tensor(&Tensor::randn(mean, std, shape, dtype, device)?)
    }

    pub fn rand(
        lo: f64,
        hi: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Var> {
        Var::from_tensor(&Tensor::rand(lo, hi, shape, dtype, device)?)
    }

    pub fn as_tensor(&self) -> &Tensor {
        &self.0
    }

    pub fn into_inner(self) -> Tensor {
        self.0
    }

    /// Whether ops on this variable are recorded for backward (true unless frozen).
    pub fn requires_grad(&self) -> bool {
        self.0 .0.requires_grad.load(Ordering::Relaxed)
    }

    /// Freeze (`false`) or unfreeze (`true`) the variable: a frozen variable is a constant to
    /// autograd, so graphs built from it afterwards record nothing for it and it gets no
    /// gradient. Graphs built before the call are unaffected.
    pub fn set_requires_grad(&self, on: bool) {
        self.0 .0.requires_grad.store(on, Ordering::Relaxed);
    }

    /// Overwrite the values in place (same shape); the variable keeps its identity.
    pub fn set(&self, value: &Tensor) -> Result<()> {
        let _g = crate::no_grad();
        self.0.copy_from(value)
    }
}

impl std::ops::Deref for Var {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.0
    }
}

impl AsRef<Tensor> for Var {
    fn as_ref(&self) -> &Tensor {
        &self.0
    }
}
