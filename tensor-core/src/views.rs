//! Shape-changing ops. Most are free views (a new layout over the same storage); reshape copies
//! only when the strides cannot express the new shape; cat/stack copy.

use crate::backprop::{record, Op};
use crate::{Dim, Error, Layout, Result, Shape, Tensor};

impl Tensor {
    /// View with a new shape of the same element count (copies only if the layout needs it).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ElementCountMismatch {
                op: "reshape",
                src: self.shape().clone(),
                src_elems: self.elem_count(),
                dst: shape.clone(),
                dst_elems: shape.elem_count(),
            });
        }
        if &shape == self.shape() {
            return Ok(self.clone());
        }
        match self.layout().reshape(&shape) {
            Some(l) => Ok(self.view_with(l, record(&[self], || Op::Reshape(self.clone())))),
            None => self.copy()?.reshape(shape),
        }
    }

    /// Reshape where one entry may be -1 (inferred), like `torch.reshape`.
    pub fn reshape_infer(&self, dims: &[i64]) -> Result<Tensor> {
        let holes = dims.iter().filter(|&&d| d == -1).count();
        if holes > 1 || dims.iter().any(|&d| d < -1) {
            return Err(Error::invalid(
                "reshape",
                format!("at most one -1 and no other negative size allowed, got {dims:?}"),
            ));
        }
        let known: usize = dims
            .iter()
            .filter(|&&d| d >= 0)
            .map(|&d| d as usize)
            .product();
        let resolved: Vec<usize> = if holes == 1 {
            if known == 0 || !self.elem_count().is_multiple_of(known) {
                return Err(Error::invalid(
                    "reshape",
                    format!("cannot infer -1 in {dims:?} for shape {:?}", self.shape()),
                ));
            }
            dims.iter()
                .map(|&d| {
                    if d == -1 {
                        self.elem_count() / known
                    } else {
                        d as usize
                    }
                })
                .collect()
        } else {
            dims.iter().map(|&d| d as usize).collect()
        };
        self.reshape(resolved)
    }

    pub fn permute(&self, perm: impl AsRef<[usize]>) -> Result<Tensor> {
        let perm = perm.as_ref();
        let rank = self.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank
            || perm
                .iter()
                .any(|&p| p >= rank || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::invalid(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the dims of {:?}",
                    self.shape()
                ),
            ));
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(self.clone());
        }
        let l = self.layout().permute(perm);
        Ok(self.view_with(
            l,
            record(&[self], || Op::Permute(self.clone(), perm.to_vec())),
        ))
    }

    /// Swap two dims (negative indices count from the end).
    pub fn transpose(&self, d1: impl Dim, d2: impl Dim) -> Result<Tensor> {
        let a = d1.resolve(self.shape(), "transpose")?;
        let b = d2.resolve(self.shape(), "transpose")?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(perm)
    }

    /// Transpose of the last two dims.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::UnexpectedShape {
                op: "t",
                expected: "rank >= 2".into(),
                got: self.shape().clone(),
            });
        }
        self.transpose(-2, -1)
    }

    /// `len` entries of `dim` starting at `start` (a free view).
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "narrow")?;
        let size = self.dims()[d];
        if start.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::invalid(
                "narrow",
                format!(
                    "range {start}..{} out of bounds for dim {d} of size {size} (shape {:?})",
                    start.saturating_add(len),
                    self.shape()
                ),
            ));
        }
        if start == 0 && len == size {
            return Ok(self.clone());
        }
        let l = self.layout().narrow(d, start, len);
        Ok(self.view_with(
            l,
            record(&[self], || Op::Narrow(self.clone(), d, start, len)),
        ))
    }

    /// Python-style `[start:end]` on one dim; negative bounds count from the end.
    pub fn slice(&self, dim: impl Dim, start: i64, end: i64) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "slice")?;
        let size = self.dims()[d] as i64;
        let clampi = |v: i64| (if v < 0 { v + size } else { v }).clamp(0, size) as usize;
        let (s, e) = (clampi(start), clampi(end));
        self.narrow(d, s, e.saturating_sub(s))
    }

    /// Remove a dim of size 1.
    pub fn squeeze(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "squeeze")?;
        if self.dims()[d] != 1 {
            return Err(Error::invalid(
                "squeeze",
                format!(
                    "dim {d} has size {} (shape {:?}), expected 1",
                    self.dims()[d],
                    self.shape()
                ),
            ));
        }
        let mut dims = self.dims().to_vec();
        dims.remove(d);
        self.reshape(dims)
    }

    /// Insert a dim of size 1 at `dim` (which may be one past the last dim).
    pub fn unsqueeze(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve_insert(self.shape(), "unsqueeze")?;
        let mut dims = self.dims().to_vec();
        dims.insert(d, 1);
        self.reshape(dims)
    }

    /// Broadcast to `shape` (a free view with stride 0 on stretched dims).
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if &shape == self.shape() {
            return Ok(self.clone());
        }
        let l = self
            .layout()
            .broadcast_as(&shape)
            .map_err(|_| Error::BroadcastIncompatible {
                op: "broadcast_as",
                lhs: self.shape().clone(),
                rhs: shape.clone(),
            })?;
        Ok(self.view_with(l, record(&[self], || Op::Broadcast(self.clone()))))
    }

    /// PyTorch's name for [`Tensor::broadcast_as`].
    pub fn expand(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        self.broadcast_as(shape)
    }

    /// Add leading dims.
    pub fn broadcast_left(&self, left: &[usize]) -> Result<Tensor> {
        let mut dims = left.to_vec();
        dims.extend_from_slice(self.dims());
        self.broadcast_as(dims)
    }

    /// Merge dims `start..=end` into one.
    pub fn flatten(&self, start: impl Dim, end: impl Dim) -> Result<Tensor> {
        if self.rank() == 0 {
            return self.reshape(1);
        }
        let s = start.resolve(self.shape(), "flatten")?;
        let e = end.resolve(self.shape(), "flatten")?;
        if s > e {
            return Err(Error::invalid(
                "flatten",
                format!("start dim {s} after end dim {e}"),
            ));
        }
        let d = self.dims();
        let mut dims = d[..s].to_vec();
        dims.push(d[s..=e].iter().product());
        dims.extend_from_slice(&d[e + 1..]);
        self.reshape(dims)
    }

    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(self.elem_count())
    }

    /// Split into `chunks` pieces along `dim` (the last may be smaller), like `torch.chunk`.
    pub fn chunk(&self, chunks: usize, dim: impl Dim) -> Result<Vec<Tensor>> {
        let d = dim.resolve(self.shape(), "chunk")?;
        if chunks == 0 {
            return Err(Error::invalid("chunk", "chunks must be > 0"));
        }
        let size = self.dims()[d];
        let step = size.div_ceil(chunks).max(1);
        let mut out = vec![];
        let mut start = 0;
        while start < size {
            let len = step.min(size - start);
            out.push(self.narrow(d, start, len)?);
            start += len;
        }
        Ok(out)
    }

    /// Split along `dim` into pieces of the given sizes (which must sum to the dim's size).
    pub fn split(&self, sizes: &[usize], dim: impl Dim) -> Result<Vec<Tensor>> {
        let d = dim.resolve(self.shape(), "split")?;
        if sizes.iter().sum::<usize>() != self.dims()[d] {
            return Err(Error::invalid(
                "split",
                format!(
                    "sizes {sizes:?} do not sum to {} (dim {d} of {:?})",
                    self.dims()[d],
                    self.shape()
                ),
            ));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let t = self.narrow(d, start, len);
                start += len;
                t
            })
            .collect()
    }

    /// Concatenate along an existing dim.
    pub fn cat(tensors: &[&Tensor], dim: impl Dim) -> Result<Tensor> {
        let first = *tensors
            .first()
            .ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        let d = dim.resolve(first.shape(), "cat")?;
        for t in &tensors[1..] {
            crate::ops::check_same_device("cat", first, t)?;
            if t.dtype() != first.dtype() {
                return Err(Error::DTypeMismatch {
                    op: "cat",
                    lhs: first.dtype(),
                    rhs: t.dtype(),
                });
            }
            let ok = t.rank() == first.rank()
                && t.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .all(|(i, (a, b))| i == d || a == b);
            if !ok {
                return Err(Error::ShapeMismatch {
                    op: "cat",
                    lhs: first.shape().clone(),
                    rhs: t.shape().clone(),
                });
            }
        }
        if tensors.len() == 1 {
            return Ok(first.clone());
        }
        let mut dims = first.dims().to_vec();
        dims[d] = tensors.iter().map(|t| t.dims()[d]).sum();
        let shape = Shape::from(dims);
        let dev = first.device();
        let mut storage = dev.backend().full(shape.elem_count(), 0.0, first.dtype())?;
        let full = Layout::contiguous(shape.clone());
        let mut start = 0;
        for t in tensors {
            let len = t.dims()[d];
            let dst_l = full.narrow(d, start, len);
            let src = t.storage();
            dev.backend()
                .copy_into(storage.as_mut(), &dst_l, src.as_ref(), t.layout())?;
            start += len;
        }
        let op = record(tensors, || {
            Op::Cat(tensors.iter().map(|t| (*t).clone()).collect(), d)
        });
        Ok(Tensor::from_storage(storage, shape, dev, op))
    }

    /// Stack along a new dim.
    pub fn stack(tensors: &[&Tensor], dim: impl Dim) -> Result<Tensor> {
        let first = *tensors
            .first()
            .ok_or_else(|| Error::invalid("stack", "needs at least one tensor"))?;
        let d = dim.resolve_insert(first.shape(), "stack")?;
        for t in &tensors[1..] {
            if t.shape() != first.shape() {
                return Err(Error::ShapeMismatch {
                    op: "stack",
                    lhs: first.shape().clone(),
                    rhs: t.shape().clone(),
                });
            }
        }
        let us = tensors
            .iter()
            .map(|t| t.unsqueeze(d))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&us.iter().collect::<Vec<_>>(), d)
    }

    /// Pad `dim` with `left` zeros before and `right` zeros after.
    pub fn pad_with_zeros(&self, dim: impl Dim, left: usize, right: usize) -> Result<Tensor> {
        self.pad_with_value(dim, left, right, 0.0)
    }

    pub fn pad_with_value(
        &self,
        dim: impl Dim,
        left: usize,
        right: usize,
        value: f64,
    ) -> Result<Tensor> {
        let d = dim.resolve(self.shape(), "pad")?;
        if left == 0 && right == 0 {
            return Ok(self.clone());
        }
        let mut parts = vec![];
        let mk = |n: usize| -> Result<Tensor> {
            let mut dims = self.dims().to_vec();
            dims[d] = n;
            Tensor::full(value, dims, self.dtype(), self.device())
        };
        let (l, r) = (mk(left)?, mk(right)?);
        if left > 0 {
            parts.push(&l);
        }
        parts.push(self);
        if right > 0 {
            parts.push(&r);
        }
        Tensor::cat(&parts, d)
    }
}
