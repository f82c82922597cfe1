//! [`QTensor`]: a row-major tensor of ggml blocks. The bytes are shared, never copied: a
//! `QTensor` keeps its owner (a memory map, a `Vec`) alive through an `Arc` and views a range
//! of it.

use std::fmt;
use std::sync::Arc;

use super::{dequantize_into, GgmlType};
use crate::{Device, Error, HostData, Result, Shape, Tensor};

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
#[derive(Clone)]
pub struct QTensor {
    ty: GgmlType,
    shape: Shape,
    owner: Arc<dyn QBytes>,
    offset: usize,
    len: usize,
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
}

impl fmt::Debug for QTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QTensor({}, {:?})", self.ty, self.dims())
    }
}
