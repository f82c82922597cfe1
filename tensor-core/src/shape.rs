//! Shapes, dimension arguments (negative indices count from the end, as in PyTorch) and
//! NumPy-style broadcasting.

use crate::{Error, Result};

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Shape {
    pub fn new(dims: Vec<usize>) -> Self {
        Shape(dims)
    }
    pub fn scalar() -> Self {
        Shape(vec![])
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    pub fn into_dims(self) -> Vec<usize> {
        self.0
    }
    /// Row-major strides of a contiguous tensor of this shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.0.len()];
        let mut acc = 1;
        for (s, &d) in strides.iter_mut().zip(self.0.iter()).rev() {
            *s = acc;
            acc *= d;
        }
        strides
    }

    /// The broadcast of two shapes (trailing dims aligned; a 1 stretches), as PyTorch does.
    pub fn broadcast_with(&self, other: &Shape, op: &'static str) -> Result<Shape> {
        let (a, b) = (self.dims(), other.dims());
        let rank = a.len().max(b.len());
        let mut out = vec![0; rank];
        for i in 0..rank {
            let da = if i < rank - a.len() {
                1
            } else {
                a[i - (rank - a.len())]
            };
            let db = if i < rank - b.len() {
                1
            } else {
                b[i - (rank - b.len())]
            };
            out[i] = if da == db || db == 1 {
                da
            } else if da == 1 {
                db
            } else {
                return Err(Error::BroadcastIncompatible {
                    op,
                    lhs: self.clone(),
                    rhs: other.clone(),
                });
            };
        }
        Ok(Shape(out))
    }

    /// The dims (in `self`'s indexing) that must be summed to reduce a tensor of shape `self`
    /// back to `target` after broadcasting, and whether leading dims were added.
    pub fn broadcast_reduce_dims(&self, target: &Shape) -> Vec<usize> {
        let lead = self.rank() - target.rank();
        let mut dims: Vec<usize> = (0..lead).collect();
        for (i, &t) in target.dims().iter().enumerate() {
            if t == 1 && self.0[lead + i] != 1 {
                dims.push(lead + i);
            }
        }
        dims
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}
impl From<&Vec<usize>> for Shape {
    fn from(v: &Vec<usize>) -> Self {
        Shape(v.clone())
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<&[usize; N]> for Shape {
    fn from(v: &[usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}
impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}
impl From<(usize,)> for Shape {
    fn from(d: (usize,)) -> Self {
        Shape(vec![d.0])
    }
}
impl From<(usize, usize)> for Shape {
    fn from(d: (usize, usize)) -> Self {
        Shape(vec![d.0, d.1])
    }
}
impl From<(usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2])
    }
}
impl From<(usize, usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2, d.3])
    }
}
impl From<(usize, usize, usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2, d.3, d.4])
    }
}

/// A dimension argument: `usize` counts from the front, negative signed values from the end.
pub trait Dim: Copy {
    fn resolve(self, shape: &Shape, op: &'static str) -> Result<usize>;
    /// Resolve against `rank + 1` (for unsqueeze/stack, where the new dim may be one past the end).
    fn resolve_insert(self, shape: &Shape, op: &'static str) -> Result<usize>;
}

fn resolve_signed(d: i64, rank: usize, shape: &Shape, op: &'static str) -> Result<usize> {
    let r = rank as i64;
    let idx = if d < 0 { d + r } else { d };
    if idx < 0 || idx >= r {
        return Err(Error::DimOutOfRange {
            op,
            dim: d,
            rank: shape.rank(),
            shape: shape.clone(),
        });
    }
    Ok(idx as usize)
}

macro_rules! impl_dim {
    ($($t:ty),*) => {$(
        impl Dim for $t {
            fn resolve(self, shape: &Shape, op: &'static str) -> Result<usize> {
                resolve_signed(self as i64, shape.rank(), shape, op)
            }
            fn resolve_insert(self, shape: &Shape, op: &'static str) -> Result<usize> {
                resolve_signed(self as i64, shape.rank() + 1, shape, op)
            }
        }
    )*};
}
impl_dim!(usize, i32, i64, isize);

/// A set of dimensions (for reductions): a single [`Dim`], an array, a slice or a Vec.
pub trait Dims {
    fn resolve_all(&self, shape: &Shape, op: &'static str) -> Result<Vec<usize>>;
}

impl<D: Dim> Dims for D {
    fn resolve_all(&self, shape: &Shape, op: &'static str) -> Result<Vec<usize>> {
        Ok(vec![self.resolve(shape, op)?])
    }
}
impl<D: Dim> Dims for [D] {
    fn resolve_all(&self, shape: &Shape, op: &'static str) -> Result<Vec<usize>> {
        let mut out = Vec::with_capacity(self.len());
        for d in self {
            let r = d.resolve(shape, op)?;
            if out.contains(&r) {
                return Err(Error::invalid(
                    op,
                    format!("dimension {r} repeated in reduction dims"),
                ));
            }
            out.push(r);
        }
        out.sort_unstable();
        Ok(out)
    }
}
impl<D: Dim, const N: usize> Dims for [D; N] {
    fn resolve_all(&self, shape: &Shape, op: &'static str) -> Result<Vec<usize>> {
        self.as_slice().resolve_all(shape, op)
    }
}
impl<D: Dim> Dims for Vec<D> {
    fn resolve_all(&self, shape: &Shape, op: &'static str) -> Result<Vec<usize>> {
        self.as_slice().resolve_all(shape, op)
    }
}
impl<D: Dim> Dims for &[D] {
    fn resolve_all(&self, shape: &Shape, op: &'static str) -> Result<Vec<usize>> {
        (*self).resolve_all(shape, op)
    }
}

/// All dimensions, for full reductions: `t.sum(AllDims)`.
#[derive(Clone, Copy, Debug)]
pub struct AllDims;
impl Dims for AllDims {
    fn resolve_all(&self, shape: &Shape, _op: &'static str) -> Result<Vec<usize>> {
        Ok((0..shape.rank()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn broadcast() {
        let a = Shape::from([3, 1, 5]);
        let b = Shape::from([4, 1]);
        assert_eq!(a.broadcast_with(&b, "t").unwrap().dims(), &[3, 4, 5]);
        assert!(Shape::from([3])
            .broadcast_with(&Shape::from([4]), "t")
            .is_err());
        assert_eq!(Shape::from([3, 4, 5]).broadcast_reduce_dims(&b), vec![0, 2]);
    }
    #[test]
    fn dims() {
        let s = Shape::from([2, 3, 4]);
        assert_eq!((-1).resolve(&s, "t").unwrap(), 2);
        assert!(3usize.resolve(&s, "t").is_err());
        assert_eq!([-1, 0].resolve_all(&s, "t").unwrap(), vec![0, 2]);
    }
}
