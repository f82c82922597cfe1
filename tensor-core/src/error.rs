//! The one error type of the workspace. Every variant names the op and the shapes, dtypes or
//! devices involved, so a message alone tells the user what was expected.

use crate::{DType, Shape};

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("{op}: shape mismatch, lhs {lhs:?} vs rhs {rhs:?}")]
    ShapeMismatch {
        op: &'static str,
        lhs: Shape,
        rhs: Shape,
    },

    #[error("{op}: cannot broadcast {lhs:?} with {rhs:?}")]
    BroadcastIncompatible {
        op: &'static str,
        lhs: Shape,
        rhs: Shape,
    },

    #[error("{op}: expected {expected}, got shape {got:?}")]
    UnexpectedShape {
        op: &'static str,
        expected: String,
        got: Shape,
    },

    #[error("{op}: cannot view {src:?} ({src_elems} elements) as {dst:?} ({dst_elems} elements)")]
    ElementCountMismatch {
        op: &'static str,
        src: Shape,
        src_elems: usize,
        dst: Shape,
        dst_elems: usize,
    },

    #[error("{op}: dtype mismatch, lhs {lhs} vs rhs {rhs}")]
    DTypeMismatch {
        op: &'static str,
        lhs: DType,
        rhs: DType,
    },

    #[error("{op}: unsupported dtype {dtype} (expected {expected})")]
    UnsupportedDType {
        op: &'static str,
        dtype: DType,
        expected: &'static str,
    },

    #[error("{op}: device mismatch, lhs on {lhs} vs rhs on {rhs}")]
    DeviceMismatch {
        op: &'static str,
        lhs: String,
        rhs: String,
    },

    #[error("{op}: dimension {dim} out of range for a tensor of rank {rank} (shape {shape:?})")]
    DimOutOfRange {
        op: &'static str,
        dim: i64,
        rank: usize,
        shape: Shape,
    },

    #[error("{op}: index {index} out of range for dimension {dim} of size {size}")]
    IndexOutOfRange {
        op: &'static str,
        index: i64,
        dim: usize,
        size: usize,
    },

    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument { op: &'static str, msg: String },

    #[error("{op}: a tracked tensor reached an op with no backward rule ({why})")]
    NoBackward { op: &'static str, why: String },

    #[error("{backend} backend: {msg}")]
    Backend { backend: String, msg: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },

    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }

    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Msg(msg.into())
    }
}

/// Attach context (a file name, a tensor name) to an error on its way up.
pub trait Context<T> {
    fn context(self, ctx: impl Into<String>) -> Result<T>;
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, ctx: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: ctx.into(),
            source: Box::new(e),
        })
    }
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: f().into(),
            source: Box::new(e),
        })
    }
}

#[macro_export]
macro_rules! bail {
    ($op:expr, $($arg:tt)*) => {
        return Err($crate::Error::InvalidArgument { op: $op, msg: format!($($arg)*) })
    };
}
