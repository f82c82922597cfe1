//! Layout: shape, strides (in elements) and start offset into a storage. Views — transpose,
//! permute, narrow, broadcast, reshape of a contiguous tensor — only build a new layout.

use crate::{Error, Result, Shape};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let strides = shape.contiguous_strides();
        Layout {
            shape,
            strides,
            offset: 0,
        }
    }

    pub fn new(shape: Shape, strides: Vec<usize>, offset: usize) -> Self {
        debug_assert_eq!(shape.rank(), strides.len(), "layout rank");
        Layout {
            shape,
            strides,
            offset,
        }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    /// Row-major contiguous (dims of size 1 may carry any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for (&d, &s) in self.shape.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc *= d;
        }
        true
    }

    /// One past the largest storage index this layout touches (0 for empty tensors).
    pub fn required_len(&self) -> usize {
        if self.elem_count() == 0 {
            return 0;
        }
        self.offset
            + self
                .shape
                .dims()
                .iter()
                .zip(&self.strides)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>()
            + 1
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Layout {
        let mut dims = self.shape.dims().to_vec();
        dims[dim] = len;
        Layout {
            shape: Shape::new(dims),
            strides: self.strides.clone(),
            offset: self.offset + start * self.strides[dim],
        }
    }

    pub fn permute(&self, perm: &[usize]) -> Layout {
        let dims = perm.iter().map(|&p| self.shape.dims()[p]).collect();
        let strides = perm.iter().map(|&p| self.strides[p]).collect();
        Layout {
            shape: Shape::new(dims),
            strides,
            offset: self.offset,
        }
    }

    /// Broadcast to `shape` (leading dims added with stride 0, size-1 dims stretched).
    pub fn broadcast_as(&self, shape: &Shape) -> Result<Layout> {
        let (src, dst) = (self.shape.dims(), shape.dims());
        if dst.len() < src.len() {
            return Err(Error::BroadcastIncompatible {
                op: "broadcast_as",
                lhs: self.shape.clone(),
                rhs: shape.clone(),
            });
        }
        let lead = dst.len() - src.len();
        let mut strides = vec![0; dst.len()];
        for i in 0..src.len() {
            if src[i] == dst[lead + i] {
                strides[lead + i] = self.strides[i];
            } else if src[i] == 1 {
                strides[lead + i] = 0;
            } else {
                return Err(Error::BroadcastIncompatible {
                    op: "broadcast_as",
                    lhs: self.shape.clone(),
                    rhs: shape.clone(),
                });
            }
        }
        Ok(Layout {
            shape: shape.clone(),
            strides,
            offset: self.offset,
        })
    }

    /// Reinterpret with a new shape without copying, when the strides allow it: each group of
    /// merged/split source dims must be contiguous among itself. Returns None if a copy is needed.
    pub fn reshape(&self, shape: &Shape) -> Option<Layout> {
        if self.is_contiguous() {
            return Some(Layout {
                shape: shape.clone(),
                strides: shape.contiguous_strides(),
                offset: self.offset,
            });
        }
        // Walk old and new dims together, matching groups with equal element counts.
        let (old, new) = (self.shape.dims(), shape.dims());
        let old_nz: Vec<(usize, usize)> = old
            .iter()
            .zip(&self.strides)
            .filter(|(&d, _)| d != 1)
            .map(|(&d, &s)| (d, s))
            .collect();
        let mut new_strides = vec![0; new.len()];
        let (mut i, mut j) = (0, 0);
        while j < new.len() {
            if new[j] == 1 {
                new_strides[j] = 0;
                j += 1;
                continue;
            }
            if i >= old_nz.len() {
                return None;
            }
            // Collect an old group [i, i2) and a new group [j, j2) with equal products.
            let (mut po, mut pn) = (old_nz[i].0, new[j]);
            let (mut i2, mut j2) = (i + 1, j + 1);
            while po != pn {
                if po < pn {
                    if i2 >= old_nz.len() {
                        return None;
                    }
                    po *= old_nz[i2].0;
                    i2 += 1;
                } else {
                    while j2 < new.len() && new[j2] == 1 {
                        j2 += 1;
                    }
                    if j2 >= new.len() {
                        return None;
                    }
                    pn *= new[j2];
                    j2 += 1;
                }
            }
            // The old group must be contiguous among itself.
            for k in i..i2 - 1 {
                if old_nz[k].1 != old_nz[k + 1].1 * old_nz[k + 1].0 {
                    return None;
                }
            }
            let mut stride = old_nz[i2 - 1].1;
            for k in (j..j2).rev() {
                new_strides[k] = if new[k] == 1 { 0 } else { stride };
                stride *= new[k];
            }
            i = i2;
            j = j2;
        }
        if i != old_nz.len() {
            return None;
        }
        Some(Layout {
            shape: shape.clone(),
            strides: new_strides,
            offset: self.offset,
        })
    }

    /// Visit the storage offset of every element in row-major order.
    pub fn for_each_offset(&self, mut f: impl FnMut(usize)) {
        let n = self.elem_count();
        if n == 0 {
            return;
        }
        let rank = self.rank();
        if rank == 0 {
            f(self.offset);
            return;
        }
        let dims = self.shape.dims();
        let inner = dims[rank - 1];
        let inner_stride = self.strides[rank - 1];
        let mut idx = vec![0usize; rank];
        let mut base = self.offset;
        let outer = n / inner.max(1);
        for _ in 0..outer {
            let mut o = base;
            for _ in 0..inner {
                f(o);
                o += inner_stride;
            }
            // Advance the outer multi-index.
            let mut d = rank - 1;
            while d > 0 {
                d -= 1;
                idx[d] += 1;
                base += self.strides[d];
                if idx[d] < dims[d] {
                    break;
                }
                base -= self.strides[d] * dims[d];
                idx[d] = 0;
            }
        }
    }

    /// All storage offsets in row-major order.
    pub fn offsets(&self) -> Vec<usize> {
        let mut v = Vec::with_capacity(self.elem_count());
        self.for_each_offset(|o| v.push(o));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn offsets_of_transpose() {
        let l = Layout::contiguous([2, 3]).permute(&[1, 0]);
        assert_eq!(l.offsets(), vec![0, 3, 1, 4, 2, 5]);
        assert!(!l.is_contiguous());
    }
    #[test]
    fn reshape_views() {
        let l = Layout::contiguous([4, 6]).narrow(1, 0, 3); // rows stride 6, cols 1
        assert!(l.reshape(&Shape::from([12])).is_none());
        let l2 = l.reshape(&Shape::from([4, 1, 3])).unwrap();
        assert_eq!(l2.offsets(), l.offsets());
        let t = Layout::contiguous([2, 3, 4]).permute(&[2, 0, 1]); // [4,2,3]
        let r = t.reshape(&Shape::from([4, 6])).unwrap();
        assert_eq!(r.offsets(), t.offsets());
        assert!(t.reshape(&Shape::from([8, 3])).is_none());
    }
    #[test]
    fn broadcast() {
        let l = Layout::contiguous([3, 1])
            .broadcast_as(&Shape::from([2, 3, 4]))
            .unwrap();
        assert_eq!(l.strides(), &[0, 1, 0]);
        assert_eq!(l.required_len(), 3);
    }
}
