//! GGUF, the checkpoint format of ggml/llama.cpp: read (versions 2 and 3, little-endian),
//! dequantize, and write (version 3).
//!
//! # Reading
//!
//! [`GgufFile::open`] memory-maps the file and parses the header, every metadata entry and
//! every tensor info up front, checking each count, length, type id, size and offset against
//! the file, so that later calls cannot read out of bounds. Tensor bytes are borrowed from the
//! map ([`GgufFile::tensor_bytes`]); nothing is copied until a tensor is built.
//!
//! ```no_run
//! # fn load(device: &tensor_core::Device) -> tensor_core::Result<()> {
//! use tensor_io::gguf::GgufFile;
//! let file = GgufFile::open("model.gguf")?;
//! let arch = file.architecture()?; // "llama"
//! let layers = file.get_u32(&format!("{arch}.block_count"))?;
//! let vocab = file.get_str_array("tokenizer.ggml.tokens")?;
//! for t in file.tensors() {
//!     println!("{} {:?} {}", t.name(), t.dims(), t.ggml_type());
//! }
//! let w = file.tensor("blk.0.attn_q.weight", device)?; // quantized -> f32
//! # Ok(()) }
//! ```
//!
//! * metadata: [`GgufFile::metadata`] (in file order), [`GgufFile::get`], and typed getters
//!   (`get_u32`, `get_u64`, `get_i32`, `get_i64`, `get_f32`, `get_f64`, `get_bool`, `get_str`,
//!   `get_array`, `get_str_array`, `get_u32_array`, `get_i32_array`, `get_f32_array`) that
//!   fail with the file and key named when the key is missing or of another type. Integer
//!   getters accept any stored integer width whose value fits.
//! * tensors: [`GgufTensorInfo`] gives the dims in ggml order (`ne[0]` = the contiguous
//!   dimension first) and in row-major/PyTorch order, the [`GgmlType`], the offset in the data
//!   section and the byte size. [`GgufFile::tensor`] builds a [`Tensor`] with row-major dims:
//!   F32/F16/BF16/F64/I64 keep their dtype, I8/I16/I32 widen to I64 (core has no narrower
//!   signed ints), quantized types dequantize to F32. [`GgufFile::dequantize`] gives f32 values
//!   of any supported type.
//!
//! The map assumes the file is not modified or truncated by another process while open (the
//! usual caveat of memory-mapped IO).
//!
//! # Dequantization
//!
//! [`dequantize`] / [`dequantize_into`] (from `tensor_core::quant`): scalar reference code for
//! every type a GGUF file may hold: F32, F16, BF16, F64, the integer types, Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0, Q8_1, Q2_K..Q6_K, Q8_K, all the i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S,
//! IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS), TQ1_0, TQ2_0, MXFP4, NVFP4 and Q1_0. Values are
//! bit-identical to the `gguf` Python package (to ggml's `dequantize_row_*` for Q8_1, Q8_K
//! and Q1_0, which it does not decode).
//!
//! # Writing
//!
//! [`GgufWriter`] collects metadata and tensors (f32/f16/bf16 data, core tensors, or raw blocks
//! of any [`GgmlType`]) and writes a version-3 file atomically (a temporary file in the target
//! directory, then a rename). Tensors are laid out in insertion order, each aligned to
//! `general.alignment` (default 32), as ggml expects.
//!
//! # Errors
//!
//! Every failure is a [`tensor_core::Error`] whose message names the file and, where one is
//! involved, the tensor or metadata key and the byte offset.

mod parse;
mod types;
mod write;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use tensor_core::quant::{QBytes, QTensor};
use tensor_core::{bf16, f16, Device, Error, HostData, Result, Tensor};

pub use tensor_core::quant::{dequantize, dequantize_into, GgmlType, QK_K};
pub use types::{GgufArray, GgufValue, GgufValueType};
pub use write::GgufWriter;

/// The metadata key every model file sets to its architecture ("llama", "qwen2", ...).
pub const ARCHITECTURE_KEY: &str = "general.architecture";

/// The file's memory map, shared with the [`QTensor`]s that view it.
struct MappedFile(Mmap);

impl QBytes for MappedFile {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Where a tensor lives in a [`GgufFile`] and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    name: String,
    ggml_dims: Vec<usize>,
    dims: Vec<usize>,
    ggml_type: GgmlType,
    offset: u64,
    size: usize,
}

impl GgufTensorInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions in ggml order: `ggml_dims()[0]` is the contiguous (row) dimension.
    pub fn ggml_dims(&self) -> &[usize] {
        &self.ggml_dims
    }

    /// Dimensions in row-major (PyTorch) order: the reverse of [`Self::ggml_dims`].
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the first byte from the start of the data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes the tensor takes in the file.
    pub fn size_in_bytes(&self) -> usize {
        self.size
    }

    pub fn elem_count(&self) -> usize {
        self.dims.iter().product()
    }
}

/// An open, validated, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Option<Arc<MappedFile>>,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_entries", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn file_error(path: &Path, msg: String) -> Error {
    Error::Context {
        context: format!("GGUF file {}", path.display()),
        source: Box::new(Error::Msg(msg)),
    }
}

impl GgufFile {
    /// Map and parse `path`, validating every tensor's type, size and placement.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let io = |what: &str, source| Error::Io {
            context: format!("GGUF file {}: {what}", path.display()),
            source,
        };
        let file = File::open(&path).map_err(|e| io("cannot open", e))?;
        let len = file.metadata().map_err(|e| io("cannot stat", e))?.len();
        // An empty file cannot be mapped on every platform; it fails parsing like any short one.
        let mmap = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only and private to this value; as documented on the
            // module, the file must not be truncated or rewritten while it is open.
            Some(Arc::new(MappedFile(
                unsafe { Mmap::map(&file) }.map_err(|e| io("cannot memory-map", e))?,
            )))
        };
        let buf: &[u8] = mmap.as_ref().map_or(&[], |m| m.0.as_ref());
        let parsed = parse::parse(buf).map_err(|msg| file_error(&path, msg))?;

        let mut tensors = Vec::with_capacity(parsed.tensors.len());
        let mut tensor_index = HashMap::with_capacity(parsed.tensors.len());
        for (i, raw) in parsed.tensors.into_iter().enumerate() {
            let (ty, _, size) =
                parse::check_tensor(&raw, parsed.alignment, parsed.data_offset, buf.len() as u64)
                    .map_err(|e| file_error(&path, format!("tensor '{}': {e}", raw.name)))?;
            if tensor_index.insert(raw.name.clone(), i).is_some() {
                return Err(file_error(
                    &path,
                    format!("tensor '{}' appears twice", raw.name),
                ));
            }
            // check_tensor proved the byte size fits in usize, so every dim and their product do.
            let ggml_dims: Vec<usize> = raw.ggml_dims.iter().map(|&d| d as usize).collect();
            tensors.push(GgufTensorInfo {
                name: raw.name,
                dims: ggml_dims.iter().rev().copied().collect(),
                ggml_dims,
                ggml_type: ty,
                offset: raw.offset,
                size: size as usize,
            });
        }
        Ok(GgufFile {
            path,
            mmap,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            metadata_index: parsed.metadata_index,
            tensors,
            tensor_index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    fn error(&self, msg: String) -> Error {
        file_error(&self.path, msg)
    }

    // ---- metadata -------------------------------------------------------------------------

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn get_as<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&'a GgufValue) -> Option<T>,
    ) -> Result<T> {
        let value = self
            .get(key)
            .ok_or_else(|| self.error(format!("metadata key '{key}' is missing")))?;
        convert(value).ok_or_else(|| {
            let found = match value {
                GgufValue::Array(a) => format!("an array of {} {}", a.len(), a.elem_type()),
                GgufValue::String(_) => "a string".to_owned(),
                v => format!("{v:?}"),
            };
            self.error(format!(
                "metadata key '{key}' is {found}, expected {expected}"
            ))
        })
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str(ARCHITECTURE_KEY)
    }

    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_as(key, "an integer that fits in u32", GgufValue::to_u32)
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_as(key, "an integer that fits in u64", GgufValue::to_u64)
    }

    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.get_as(key, "an integer that fits in i32", GgufValue::to_i32)
    }

    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get_as(key, "an integer that fits in i64", GgufValue::to_i64)
    }

    /// An f32 value (an f64 is rounded).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get_as(key, "f32 or f64", GgufValue::to_f32)
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get_as(key, "f32 or f64", GgufValue::to_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.get_as(key, "bool", GgufValue::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get_as(key, "a string", GgufValue::as_str)
    }

    pub fn get_array(&self, key: &str) -> Result<&GgufArray> {
        self.get_as(key, "an array", GgufValue::as_array)
    }

    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        self.get_as(key, "an array of strings", |v| match v {
            GgufValue::Array(GgufArray::String(a)) => Some(a.as_slice()),
            _ => None,
        })
    }

    pub fn get_u32_array(&self, key: &str) -> Result<&[u32]> {
        self.get_as(key, "an array of u32", |v| match v {
            GgufValue::Array(GgufArray::U32(a)) => Some(a.as_slice()),
            _ => None,
        })
    }

    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        self.get_as(key, "an array of i32", |v| match v {
            GgufValue::Array(GgufArray::I32(a)) => Some(a.as_slice()),
            _ => None,
        })
    }

    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        self.get_as(key, "an array of f32", |v| match v {
            GgufValue::Array(GgufArray::F32(a)) => Some(a.as_slice()),
            _ => None,
        })
    }

    // ---- tensors --------------------------------------------------------------------------

    /// Every tensor info, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn info_or_err(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor_info(name)
            .ok_or_else(|| self.error(format!("no tensor named '{name}'")))
    }

    /// The tensor's bytes as stored (blocks for quantized types), borrowed from the map.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.info_or_err(name)?;
        Ok(self.bytes_of(info))
    }

    fn bytes_of(&self, info: &GgufTensorInfo) -> &[u8] {
        // `open` checked data_offset + offset + size <= file length for every tensor.
        let start = (self.data_offset + info.offset) as usize;
        let buf: &[u8] = self.mmap.as_ref().map_or(&[], |m| m.0.as_ref());
        &buf[start..start + info.size]
    }

    /// The tensor as a [`QTensor`] with row-major dims that borrows its blocks from the memory
    /// map (no copy), whatever its type; the map stays alive as long as the tensor does.
    pub fn qtensor(&self, name: &str) -> Result<QTensor> {
        let info = self.info_or_err(name)?;
        let start = (self.data_offset + info.offset) as usize;
        let owner: Arc<dyn QBytes> = match &self.mmap {
            Some(m) => m.clone(),
            None => Arc::new(Vec::<u8>::new()),
        };
        QTensor::new(info.ggml_type, info.dims(), owner, start, info.size)
            .map_err(|e| self.error(format!("tensor '{name}': {e}")))
    }

    /// The tensor's values as f32, whatever its type (see [`GgmlType::can_dequantize`]).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info_or_err(name)?;
        let mut out = vec![0f32; info.elem_count()];
        dequantize_into(info.ggml_type, self.bytes_of(info), &mut out)
            .map_err(|e| self.error(format!("tensor '{name}': {e}")))?;
        Ok(out)
    }

    /// The tensor on `device` with row-major dims: F32/F16/BF16/F64/I64 keep their dtype,
    /// I8/I16/I32 widen to I64, quantized types are dequantized to F32.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self.info_or_err(name)?;
        let b = self.bytes_of(info);
        fn le<const N: usize, T>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
                .collect()
        }
        let data = match info.ggml_type {
            GgmlType::F32 => HostData::F32(le(b, f32::from_le_bytes)),
            GgmlType::F16 => HostData::F16(le(b, |c| f16::from_bits(u16::from_le_bytes(c)))),
            GgmlType::BF16 => HostData::BF16(le(b, |c| bf16::from_bits(u16::from_le_bytes(c)))),
            GgmlType::F64 => HostData::F64(le(b, f64::from_le_bytes)),
            GgmlType::I64 => HostData::I64(le(b, i64::from_le_bytes)),
            GgmlType::I32 => HostData::I64(le(b, |c| i32::from_le_bytes(c).into())),
            GgmlType::I16 => HostData::I64(le(b, |c| i16::from_le_bytes(c).into())),
            GgmlType::I8 => HostData::I64(le(b, |c: [u8; 1]| (c[0] as i8).into())),
            _ => HostData::F32(self.dequantize(name)?),
        };
        Tensor::from_host(data, info.dims.clone(), device).map_err(|e| Error::Context {
            context: format!("GGUF file {}: tensor '{name}'", self.path.display()),
            source: Box::new(e),
        })
    }
}
