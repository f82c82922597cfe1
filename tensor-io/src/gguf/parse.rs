//! Bounds-checked parsing of a GGUF header, metadata and tensor infos from a byte slice.
//!
//! Every count or length read from the file is checked against the bytes that remain before
//! anything is allocated for it, so a corrupt file costs at most its own size in memory.
//! Errors are plain strings naming the problem and the byte offset; the caller adds the path.

use std::collections::HashMap;

use super::types::{GgufArray, GgufValue, GgufValueType};
use tensor_core::quant::GgmlType;

pub(crate) const MAGIC: &[u8; 4] = b"GGUF";
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;
pub(crate) const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's `GGML_MAX_DIMS`; files with more dimensions cannot be read by ggml either.
pub(crate) const MAX_DIMS: usize = 4;
/// Arrays of arrays deeper than this are refused rather than risk the stack.
const MAX_ARRAY_DEPTH: usize = 64;

pub(crate) type ParseResult<T> = std::result::Result<T, String>;

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

macro_rules! read_le {
    ($($name:ident: $ty:ty),*) => {$(
        fn $name(&mut self) -> ParseResult<$ty> {
            let bytes = self.take(std::mem::size_of::<$ty>())?;
            Ok(<$ty>::from_le_bytes(bytes.try_into().expect("take returned the asked length")))
        }
    )*};
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> ParseResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(format!(
                "file truncated: need {n} bytes at byte {} but the file ends at byte {}",
                self.pos,
                self.buf.len()
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    read_le!(u8: u8, i8: i8, u16: u16, i16: i16, u32: u32, i32: i32, f32: f32,
             u64: u64, i64: i64, f64: f64);

    /// A count of items that take at least `min_size` bytes each, checked to fit in the rest of
    /// the file so that it is safe to reserve memory for them.
    fn count(&mut self, what: &str, min_size: usize) -> ParseResult<usize> {
        let at = self.pos;
        let n = self.u64()?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_size))
            .is_some_and(|bytes| bytes <= self.remaining());
        if !fits {
            return Err(format!(
                "{what} {n} at byte {at} cannot fit in the {} bytes left in the file",
                self.remaining()
            ));
        }
        Ok(n as usize)
    }

    pub(crate) fn string(&mut self) -> ParseResult<String> {
        let at = self.pos;
        let len = self.count("string length", 1)?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| format!("string at byte {at} is not valid UTF-8: {e}"))
    }

    fn value_type(&mut self) -> ParseResult<GgufValueType> {
        let at = self.pos;
        let id = self.u32()?;
        GgufValueType::from_id(id)
            .ok_or_else(|| format!("unknown metadata value type {id} at byte {at}"))
    }

    fn bool(&mut self) -> ParseResult<bool> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("bool at byte {at} has value {b}, expected 0 or 1")),
        }
    }

    fn value(&mut self, ty: GgufValueType) -> ParseResult<GgufValue> {
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.u8()?),
            GgufValueType::I8 => GgufValue::I8(self.i8()?),
            GgufValueType::U16 => GgufValue::U16(self.u16()?),
            GgufValueType::I16 => GgufValue::I16(self.i16()?),
            GgufValueType::U32 => GgufValue::U32(self.u32()?),
            GgufValueType::I32 => GgufValue::I32(self.i32()?),
            GgufValueType::F32 => GgufValue::F32(self.f32()?),
            GgufValueType::Bool => GgufValue::Bool(self.bool()?),
            GgufValueType::String => GgufValue::String(self.string()?),
            GgufValueType::Array => GgufValue::Array(self.array(0)?),
            GgufValueType::U64 => GgufValue::U64(self.u64()?),
            GgufValueType::I64 => GgufValue::I64(self.i64()?),
            GgufValueType::F64 => GgufValue::F64(self.f64()?),
        })
    }

    /// An array body: element type, length, elements.
    fn array(&mut self, depth: usize) -> ParseResult<GgufArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(format!(
                "arrays nested deeper than {MAX_ARRAY_DEPTH} at byte {}",
                self.pos
            ));
        }
        let elem = self.value_type()?;
        let n = self.count("array length", elem.min_encoded_size())?;
        fn many<T>(n: usize, mut f: impl FnMut() -> ParseResult<T>) -> ParseResult<Vec<T>> {
            (0..n).map(|_| f()).collect()
        }
        Ok(match elem {
            GgufValueType::U8 => GgufArray::U8(self.take(n)?.to_vec()),
            GgufValueType::I8 => GgufArray::I8(many(n, || self.i8())?),
            GgufValueType::U16 => GgufArray::U16(many(n, || self.u16())?),
            GgufValueType::I16 => GgufArray::I16(many(n, || self.i16())?),
            GgufValueType::U32 => GgufArray::U32(many(n, || self.u32())?),
            GgufValueType::I32 => GgufArray::I32(many(n, || self.i32())?),
            GgufValueType::F32 => GgufArray::F32(many(n, || self.f32())?),
            GgufValueType::Bool => GgufArray::Bool(many(n, || self.bool())?),
            GgufValueType::String => GgufArray::String(many(n, || self.string())?),
            GgufValueType::Array => GgufArray::Array(many(n, || self.array(depth + 1))?),
            GgufValueType::U64 => GgufArray::U64(many(n, || self.u64())?),
            GgufValueType::I64 => GgufArray::I64(many(n, || self.i64())?),
            GgufValueType::F64 => GgufArray::F64(many(n, || self.f64())?),
        })
    }
}

/// A tensor info as stored, before its placement is checked against the data section.
pub(crate) struct RawTensorInfo {
    pub name: String,
    pub ggml_dims: Vec<u64>,
    pub type_id: u32,
    pub offset: u64,
}

pub(crate) struct Parsed {
    pub version: u32,
    pub metadata: Vec<(String, GgufValue)>,
    pub metadata_index: HashMap<String, usize>,
    pub tensors: Vec<RawTensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

pub(crate) fn parse(buf: &[u8]) -> ParseResult<Parsed> {
    let mut c = Cursor::new(buf);
    let magic = c
        .take(4)
        .map_err(|_| format!("not a GGUF file: only {} bytes long", buf.len()))?;
    if magic != MAGIC {
        return Err(format!(
            "not a GGUF file: magic bytes are {magic:02x?}, expected \"GGUF\""
        ));
    }
    let version = c.u32()?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 is not supported (only versions 2 and 3)".into()),
        v if (1..=3).contains(&v.swap_bytes()) => {
            return Err(format!(
                "big-endian GGUF files are not supported (version field reads {v:#010x}, \
                 which is version {} byte-swapped)",
                v.swap_bytes()
            ))
        }
        v => return Err(format!("unsupported GGUF version {v} (expected 2 or 3)")),
    }
    // A tensor info takes at least 24 bytes (name length, n_dims, type, offset) and a
    // metadata entry 13 (key length, type, one byte of value).
    let n_tensors = c.count("tensor count", 24)?;
    let n_kv = c.count("metadata entry count", 13)?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut metadata_index = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let at = c.pos();
        let key = c
            .string()
            .map_err(|e| format!("metadata entry #{i} (at byte {at}): key: {e}"))?;
        let value = c
            .value_type()
            .and_then(|ty| c.value(ty))
            .map_err(|e| format!("metadata entry #{i} '{key}': {e}"))?;
        if metadata_index.insert(key.clone(), i).is_some() {
            return Err(format!("metadata key '{key}' appears twice"));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata_index.get(ALIGNMENT_KEY).map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(&GgufValue::U32(a)) if a.is_power_of_two() => a.into(),
        Some(v) => {
            return Err(format!(
                "'{ALIGNMENT_KEY}' must be a u32 power of two, found {v:?}"
            ))
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let at = c.pos();
        let name = c
            .string()
            .map_err(|e| format!("tensor info #{i} (at byte {at}): name: {e}"))?;
        let info = (|| {
            let at = c.pos();
            let n_dims = c.u32()? as usize;
            if n_dims > MAX_DIMS {
                return Err(format!(
                    "{n_dims} dimensions at byte {at}, at most {MAX_DIMS} are allowed"
                ));
            }
            let ggml_dims = (0..n_dims).map(|_| c.u64()).collect::<ParseResult<_>>()?;
            let type_id = c.u32()?;
            let offset = c.u64()?;
            Ok(RawTensorInfo {
                name: name.clone(),
                ggml_dims,
                type_id,
                offset,
            })
        })()
        .map_err(|e: String| format!("tensor '{name}' (info #{i}): {e}"))?;
        tensors.push(info);
    }
    let data_offset = (c.pos() as u64).next_multiple_of(alignment);
    Ok(Parsed {
        version,
        metadata,
        metadata_index,
        tensors,
        alignment,
        data_offset,
    })
}

/// The element count of `dims`, or why there is none.
pub(crate) fn elem_count(ggml_dims: &[u64]) -> ParseResult<u64> {
    ggml_dims.iter().try_fold(1u64, |acc, &d| {
        if d > i64::MAX as u64 {
            return Err(format!("dimension {d} is negative as ggml's int64"));
        }
        acc.checked_mul(d)
            .ok_or_else(|| format!("dimensions {ggml_dims:?} overflow 64 bits"))
    })
}

/// Check a tensor's type, size and placement; returns (type, element count, byte size).
pub(crate) fn check_tensor(
    t: &RawTensorInfo,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
) -> ParseResult<(GgmlType, u64, u64)> {
    let ty = GgmlType::from_id(t.type_id)
        .ok_or_else(|| format!("unknown ggml type id {}", t.type_id))?;
    let elems = elem_count(&t.ggml_dims)?;
    let row = t.ggml_dims.first().copied().unwrap_or(1);
    if !row.is_multiple_of(ty.block_size() as u64) {
        return Err(format!(
            "row length {row} (dims {:?}) is not a multiple of the {ty} block size {}",
            t.ggml_dims,
            ty.block_size()
        ));
    }
    let size = ty
        .byte_size(elems)
        .filter(|&s| usize::try_from(s).is_ok())
        .ok_or_else(|| format!("dims {:?} of {ty} overflow the address space", t.ggml_dims))?;
    if !t.offset.is_multiple_of(alignment) {
        return Err(format!(
            "offset {} is not a multiple of the alignment {alignment}",
            t.offset
        ));
    }
    let end = data_offset
        .checked_add(t.offset)
        .and_then(|start| start.checked_add(size));
    match end {
        Some(end) if end <= file_len => Ok((ty, elems, size)),
        _ => Err(format!(
            "data ({size} bytes at offset {} of the data section, which starts at byte \
             {data_offset}) runs past the end of the file ({file_len} bytes)",
            t.offset
        )),
    }
}
