//! [`QTensor`]: a row-major tensor of ggml blocks. The bytes are shared, never copied: a
//! `QTensor` keeps its owner (a memory map, a `Vec`) alive through an `Arc` and views a range
//! of it.
//!
//! A backend whose kernels cannot read host memory (a GPU) gets its own copy of the blocks
//! once, through [`QTensor::to_device`]; its ops never copy weights behind the user's back.

use std::fmt;
use std::sync::Arc;

use super::{dequantize_into, GgmlType};
use crate::{BackendStorage, Device, Error, HostData, Result, Shape, Storage, Tensor};

/// Something that owns bytes and hands out a stable view of them: a memory-mapped file, a
/// `Vec<u8>`.
pub trait QBytes: Send + Sync {
    fn bytes(&self) -> &[u8];
}

impl QBytes for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A quantized tensor: `dims` in row-major order (the last dimension contiguous, a whole
/// number of blocks), stored as ggml blocks of type [`GgmlType`].
///
/// A weight matrix of a linear layer is `[out_features, in_features]`, one row of blocks per
/// output feature, exactly as GGUF stores it.
///
/// The blocks always stay readable on the host ([`QTensor::data`]); [`QTensor::to_device`]
/// adds a copy in a device's memory, shared by every clone.
#[derive(Clone)]
pub struct QTensor {
    ty: GgmlType,
    shape: Shape,
    owner: Arc<dyn QBytes>,
    offset: usize,
    len: usize,
    device_copy: Option<Arc<DeviceCopy>>,
}

/// The blocks of a [`QTensor`] in a device's memory: a U8 storage holding exactly the bytes
/// of [`QTensor::data`].
struct DeviceCopy {
    device: Device,
    bytes: Storage,
}

/// Whether `device` computes on host memory, so that its kernels read [`QTensor::data`] where
/// it lies and need no copy: the host backend, which [`crate::BackendDevice::name`] calls
/// `cpu`.
fn reads_host_memory(device: &Device) -> bool {
    device.name() == "cpu"
}

impl QTensor {
    /// A view of `owner`'s bytes `offset..offset + len` as a tensor of `dims`. Fails when the
    /// range is outside the owner or does not hold exactly `dims` elements of `ty`.
    pub fn new(
        ty: GgmlType,
        dims: &[usize],
        owner: Arc<dyn QBytes>,
        offset: usize,
        len: usize,
    ) -> Result<QTensor> {
        let shape = Shape::from(dims.to_vec());
        let last = dims.last().copied().unwrap_or(1);
        if !last.is_multiple_of(ty.block_size()) {
            return Err(Error::msg(format!(
                "QTensor {ty} {dims:?}: the last dimension ({last}) is not a multiple of the \
                 block size {}",
                ty.block_size()
            )));
        }
        let want = ty.byte_size(shape.elem_count() as u64);
        if want != Some(len as u64) {
            return Err(Error::msg(format!(
                "QTensor {ty} {dims:?}: {len} bytes given, {} expected",
                want.map_or("an overflowing number of".to_string(), |w| w.to_string())
            )));
        }
        let have = owner.bytes().len();
        if offset.checked_add(len).is_none_or(|end| end > have) {
            return Err(Error::msg(format!(
                "QTensor {ty} {dims:?}: bytes {offset}..{} lie outside the {have} bytes of \
                 their owner",
                offset.saturating_add(len)
            )));
        }
        Ok(QTensor {
            ty,
            shape,
            owner,
            offset,
            len,
            device_copy: None,
        })
    }

    /// A tensor owning `bytes`.
    pub fn from_bytes(ty: GgmlType, dims: &[usize], bytes: Vec<u8>) -> Result<QTensor> {
        let len = bytes.len();
        QTensor::new(ty, dims, Arc::new(bytes), 0, len)
    }

    /// The block type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// The length of the contiguous (last) dimension.
    pub fn row_len(&self) -> usize {
        self.dims().last().copied().unwrap_or(1)
    }

    /// Number of rows (the product of all dims but the last).
    pub fn rows(&self) -> usize {
        self.elem_count() / self.row_len().max(1)
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_len() / self.ty.block_size() * self.ty.type_size()
    }

    /// The raw blocks, row after row.
    pub fn data(&self) -> &[u8] {
        &self.owner.bytes()[self.offset..self.offset + self.len]
    }

    /// The values as f32 on the host.
    pub fn dequantize_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.elem_count()];
        dequantize_into(self.ty, self.data(), &mut out)?;
        Ok(out)
    }

    /// The values as an f32 tensor on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_host(HostData::F32(self.dequantize_f32()?), self.dims(), device)
    }

    /// This tensor made usable by `device`'s quantized kernels: for a device that computes in
    /// its own memory (a GPU), a tensor that also holds a copy of the blocks there, uploaded
    /// once here (see [`QTensor::device_bytes`]); for the host device (`cpu`), or when this
    /// tensor already has its copy on `device`, a clone sharing everything. A copy on
    /// another device is not kept in the result. The host blocks stay readable either way.
    pub fn to_device(&self, device: &Device) -> Result<QTensor> {
        if reads_host_memory(device) {
            return Ok(QTensor {
                device_copy: None,
                ..self.clone()
            });
        }
        if matches!(&self.device_copy, Some(c) if c.device.same_device(device)) {
            return Ok(self.clone());
        }
        let bytes = device
            .backend()
            .from_host(HostData::U8(self.data().to_vec()))?;
        if bytes.len() != self.len || bytes.dtype() != crate::DType::U8 {
            return Err(Error::msg(format!(
                "QTensor::to_device: {} gave a storage of {} {:?} elements for {} bytes",
                device.name(),
                bytes.len(),
                bytes.dtype(),
                self.len
            )));
        }
        Ok(QTensor {
            device_copy: Some(Arc::new(DeviceCopy {
                device: device.clone(),
                bytes,
            })),
            ..self.clone()
        })
    }

    /// The copy of the blocks that [`QTensor::to_device`] made, with its device: a contiguous
    /// U8 storage holding the bytes of [`QTensor::data`], in the same order. `None` for a
    /// tensor that lives on the host only.
    pub fn device_bytes(&self) -> Option<(&Device, &dyn BackendStorage)> {
        self.device_copy
            .as_ref()
            .map(|c| (&c.device, c.bytes.as_ref()))
    }
}

impl fmt::Debug for QTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QTensor({}, {:?}", self.ty, self.dims())?;
        if let Some(c) = &self.device_copy {
            write!(f, ", on {}", c.device.name())?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use std::any::Any;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{BackendDevice, BinaryOp, CmpOp, DType, Layout, ReduceOp, UnaryOp, UnfoldParams};

    /// Bytes "on a device": a plain vector.
    #[derive(Debug)]
    struct Bytes(Vec<u8>);

    impl BackendStorage for Bytes {
        fn dtype(&self) -> DType {
            DType::U8
        }
        fn len(&self) -> usize {
            self.0.len()
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
        fn as_any_mut(&mut self) -> &mut dyn Any {
            self
        }
    }

    /// What the mock answers to every op but `from_host`: the tests below never call them, and
    /// a call would be a mistake worth an error, not a wrong value.
    fn unused<T>() -> Result<T> {
        Err(crate::Error::msg(
            "the upload-counting mock device only takes bytes from the host",
        ))
    }

    /// A device that can only take bytes from the host, and counts how often it does.
    #[derive(Debug)]
    struct Uploads {
        name: &'static str,
        count: AtomicUsize,
    }

    fn device(name: &'static str) -> (Device, Arc<Uploads>) {
        let d = Arc::new(Uploads {
            name,
            count: AtomicUsize::new(0),
        });
        (Device::new(d.clone()), d)
    }

    #[rustfmt::skip]
    impl BackendDevice for Uploads {
        fn name(&self) -> String {
            self.name.to_string()
        }
        fn from_host(&self, data: HostData) -> Result<Storage> {
            self.count.fetch_add(1, Ordering::SeqCst);
            match data {
                HostData::U8(v) => Ok(Box::new(Bytes(v))),
                other => Err(crate::Error::msg(format!("unexpected upload of {:?}", other.dtype()))),
            }
        }
        fn to_host(&self, _: &dyn BackendStorage, _: &Layout) -> Result<HostData> { unused() }
        fn full(&self, _: usize, _: f64, _: DType) -> Result<Storage> { unused() }
        fn rand_uniform(&self, _: usize, _: f64, _: f64, _: DType, _: u64) -> Result<Storage> { unused() }
        fn rand_normal(&self, _: usize, _: f64, _: f64, _: DType, _: u64) -> Result<Storage> { unused() }
        fn copy_strided(&self, _: &dyn BackendStorage, _: &Layout) -> Result<Storage> { unused() }
        fn copy_into(&self, _: &mut dyn BackendStorage, _: &Layout, _: &dyn BackendStorage, _: &Layout) -> Result<()> { unused() }
        fn cast(&self, _: &dyn BackendStorage, _: &Layout, _: DType) -> Result<Storage> { unused() }
        fn unary(&self, _: UnaryOp, _: &dyn BackendStorage, _: &Layout) -> Result<Storage> { unused() }
        fn binary(&self, _: BinaryOp, _: &dyn BackendStorage, _: &Layout, _: &dyn BackendStorage, _: &Layout) -> Result<Storage> { unused() }
        fn cmp(&self, _: CmpOp, _: &dyn BackendStorage, _: &Layout, _: &dyn BackendStorage, _: &Layout) -> Result<Storage> { unused() }
        fn where_cond(&self, _: &dyn BackendStorage, _: &Layout, _: &dyn BackendStorage, _: &Layout, _: &dyn BackendStorage, _: &Layout) -> Result<Storage> { unused() }
        fn reduce(&self, _: ReduceOp, _: &dyn BackendStorage, _: &Layout, _: &[usize]) -> Result<Storage> { unused() }
        fn cumsum(&self, _: &dyn BackendStorage, _: &Layout, _: usize) -> Result<Storage> { unused() }
        fn matmul(&self, _: &dyn BackendStorage, _: &Layout, _: &dyn BackendStorage, _: &Layout) -> Result<Storage> { unused() }
        fn index_select(&self, _: &dyn BackendStorage, _: &Layout, _: &dyn BackendStorage, _: &Layout, _: usize) -> Result<Storage> { unused() }
        fn gather(&self, _: &dyn BackendStorage, _: &Layout, _: &dyn BackendStorage, _: &Layout, _: usize) -> Result<Storage> { unused() }
        fn scatter_add(&self, _: &dyn BackendStorage, _: &Layout, _: &dyn BackendStorage, _: &Layout, _: &dyn BackendStorage, _: &Layout, _: usize) -> Result<Storage> { unused() }
        fn index_add(&self, _: &dyn BackendStorage, _: &Layout, _: &dyn BackendStorage, _: &Layout, _: &dyn BackendStorage, _: &Layout, _: usize) -> Result<Storage> { unused() }
        fn unfold(&self, _: &dyn BackendStorage, _: &Layout, _: &UnfoldParams) -> Result<Storage> { unused() }
        fn fold(&self, _: &dyn BackendStorage, _: &Layout, _: &UnfoldParams, _: &[usize]) -> Result<Storage> { unused() }
    }

    fn q4_0() -> QTensor {
        let x: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let bytes = crate::quant::quantize(GgmlType::Q4_0, &x).unwrap();
        QTensor::from_bytes(GgmlType::Q4_0, &[2, 64], bytes).unwrap()
    }

    fn device_copy(q: &QTensor) -> Vec<u8> {
        let (_, s) = q.device_bytes().expect("a device copy");
        let b = s
            .as_any()
            .downcast_ref::<Bytes>()
            .expect("the mock's storage");
        b.0.clone()
    }

    #[test]
    fn to_device_uploads_the_blocks_once_and_keeps_the_host_view() {
        let q = q4_0();
        assert!(q.device_bytes().is_none());
        let (gpu, counter) = device("mock:0");
        let g = q.to_device(&gpu).unwrap();
        assert_eq!(counter.count.load(Ordering::SeqCst), 1);
        let (d, s) = g.device_bytes().unwrap();
        assert!(d.same_device(&gpu));
        assert_eq!((s.dtype(), s.len()), (DType::U8, q.data().len()));
        assert_eq!(device_copy(&g), q.data());
        // The host view, the metadata and the values are unchanged.
        assert_eq!(g.data(), q.data());
        assert_eq!((g.ggml_type(), g.dims()), (q.ggml_type(), q.dims()));
        assert_eq!(g.dequantize_f32().unwrap(), q.dequantize_f32().unwrap());
        assert_eq!(format!("{g:?}"), "QTensor(Q4_0, [2, 64], on mock:0)");
        assert_eq!(format!("{q:?}"), "QTensor(Q4_0, [2, 64])");
        // Clones and a second move to the same device share the copy.
        let again = g.clone().to_device(&gpu).unwrap();
        assert_eq!(counter.count.load(Ordering::SeqCst), 1);
        let (p0, p1) = (
            g.device_bytes().unwrap().1 as *const dyn BackendStorage as *const u8,
            again.device_bytes().unwrap().1 as *const dyn BackendStorage as *const u8,
        );
        assert!(std::ptr::eq(p0, p1));
        // Another device gets its own copy; the first device's is not carried along.
        let (other, other_counter) = device("mock:1");
        let o = g.to_device(&other).unwrap();
        assert_eq!(other_counter.count.load(Ordering::SeqCst), 1);
        assert!(o.device_bytes().unwrap().0.same_device(&other));
        assert!(g.device_bytes().unwrap().0.same_device(&gpu));
    }

    #[test]
    fn the_host_device_needs_no_copy() {
        let q = q4_0();
        let (cpu, counter) = device("cpu");
        let c = q.to_device(&cpu).unwrap();
        assert_eq!(counter.count.load(Ordering::SeqCst), 0);
        assert!(c.device_bytes().is_none());
        assert_eq!(c.data(), q.data());
        // Moving a device-resident tensor to the host drops the device copy from the result.
        let (gpu, _) = device("mock:0");
        let back = q.to_device(&gpu).unwrap().to_device(&cpu).unwrap();
        assert!(back.device_bytes().is_none());
        assert_eq!(format!("{back:?}"), "QTensor(Q4_0, [2, 64])");
    }

    #[test]
    fn qtensors_cross_threads() {
        fn send_sync_clone_debug<T: Send + Sync + Clone + fmt::Debug>() {}
        send_sync_clone_debug::<QTensor>();
    }
}
