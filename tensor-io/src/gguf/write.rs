//! Writing GGUF version 3: metadata of every value type and tensors as f32/f16/bf16 data or raw
//! blocks of any ggml type, aligned, written atomically.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tensor_core::{bf16, f16, Error, HostData, Result, Tensor};

use super::parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use super::types::{GgufArray, GgufValue, GgufValueType};
use tensor_core::quant::GgmlType;

/// ggml's `GGML_MAX_NAME`: longer tensor names are refused by llama.cpp, so by us too.
const MAX_NAME_LEN: usize = 63;

struct PendingTensor<'a> {
    name: String,
    ggml_dims: Vec<u64>,
    ty: GgmlType,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF v3 file. Raw data may be borrowed (e.g. from a [`super::GgufFile`]) for `'a`.
///
/// ```no_run
/// # fn main() -> tensor_core::Result<()> {
/// use tensor_io::gguf::{GgmlType, GgufWriter};
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", "llama")?;
/// w.add_metadata("llama.block_count", 2u32)?;
/// w.add_f32("output_norm.weight", &[4], &[1.0, 1.0, 1.0, 1.0])?;
/// # let q4_0_blocks: Vec<u8> = vec![];
/// w.add_raw("token_embd.weight", GgmlType::Q4_0, &[8, 64], q4_0_blocks)?;
/// w.write("model.gguf")?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor<'a>>,
}

fn invalid(msg: String) -> Error {
    Error::invalid("GgufWriter", msg)
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a metadata entry; keys must be unique. `general.alignment` must be a u32 power of
    /// two and sets the data alignment.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<GgufValue>,
    ) -> Result<()> {
        let (key, value) = (key.into(), value.into());
        if self.metadata.iter().any(|(k, _)| *k == key) {
            return Err(invalid(format!("metadata key '{key}' added twice")));
        }
        if key == ALIGNMENT_KEY && !matches!(value, GgufValue::U32(a) if a.is_power_of_two()) {
            return Err(invalid(format!(
                "'{ALIGNMENT_KEY}' must be a u32 power of two, got {value:?}"
            )));
        }
        self.metadata.push((key, value));
        Ok(())
    }

    /// Set (or replace) `general.alignment`.
    pub fn set_alignment(&mut self, alignment: u32) -> Result<()> {
        self.metadata.retain(|(k, _)| k != ALIGNMENT_KEY);
        self.add_metadata(ALIGNMENT_KEY, alignment)
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find_map(|(k, v)| match v {
                GgufValue::U32(a) if k == ALIGNMENT_KEY => Some(u64::from(*a)),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Add a tensor of `ty` from its stored bytes; `dims` are row-major (PyTorch order), so
    /// the last one is the row that ggml blocks run along.
    pub fn add_raw(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[usize],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<()> {
        let (name, data) = (name.into(), data.into());
        let ctx = |msg: String| invalid(format!("tensor '{name}': {msg}"));
        if name.len() > MAX_NAME_LEN {
            return Err(ctx(format!(
                "name is {} bytes long, ggml allows at most {MAX_NAME_LEN}",
                name.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(ctx("added twice".into()));
        }
        if dims.len() > MAX_DIMS {
            return Err(ctx(format!(
                "{} dims {dims:?}, ggml allows at most {MAX_DIMS}",
                dims.len()
            )));
        }
        let ggml_dims: Vec<u64> = dims.iter().rev().map(|&d| d as u64).collect();
        let row = ggml_dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ty.block_size() as u64) {
            return Err(ctx(format!(
                "row length {row} (dims {dims:?}) is not a multiple of the {ty} block size {}",
                ty.block_size()
            )));
        }
        let expected = super::parse::elem_count(&ggml_dims)
            .ok()
            .and_then(|n| ty.byte_size(n));
        if expected != Some(data.len() as u64) {
            return Err(ctx(format!(
                "{} bytes of data, but {ty} dims {dims:?} take {}",
                data.len(),
                expected.map_or("more than 2^64".into(), |n| n.to_string())
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            ggml_dims,
            ty,
            data,
        });
        Ok(())
    }

    pub fn add_f32(&mut self, name: impl Into<String>, dims: &[usize], data: &[f32]) -> Result<()> {
        let bytes = data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        self.add_raw(name, GgmlType::F32, dims, bytes)
    }

    pub fn add_f16(&mut self, name: impl Into<String>, dims: &[usize], data: &[f16]) -> Result<()> {
        let bytes = data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        self.add_raw(name, GgmlType::F16, dims, bytes)
    }

    pub fn add_bf16(
        &mut self,
        name: impl Into<String>,
        dims: &[usize],
        data: &[bf16],
    ) -> Result<()> {
        let bytes = data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        self.add_raw(name, GgmlType::BF16, dims, bytes)
    }

    /// Add a core tensor (copied to the host): F32, F16, BF16, F64 and I64 map to the ggml
    /// type of the same name; U8 and U32 have none and are refused.
    pub fn add_tensor(&mut self, name: impl Into<String>, tensor: &Tensor) -> Result<()> {
        let name = name.into();
        fn le<T, const N: usize>(v: &[T], f: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
            v.iter().flat_map(f).collect()
        }
        let (ty, bytes) = match tensor.to_host()? {
            HostData::F32(v) => (GgmlType::F32, le(&v, |x| x.to_le_bytes())),
            HostData::F16(v) => (GgmlType::F16, le(&v, |x| x.to_le_bytes())),
            HostData::BF16(v) => (GgmlType::BF16, le(&v, |x| x.to_le_bytes())),
            HostData::F64(v) => (GgmlType::F64, le(&v, |x| x.to_le_bytes())),
            HostData::I64(v) => (GgmlType::I64, le(&v, |x| x.to_le_bytes())),
            other => {
                return Err(invalid(format!(
                    "tensor '{name}': dtype {} has no ggml type",
                    other.dtype()
                )))
            }
        };
        self.add_raw(name, ty, tensor.dims(), bytes)
    }

    /// Write the file to any sink (no atomicity: see [`Self::write`]).
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let alignment = self.alignment();
        let mut head = Vec::new();
        head.extend(MAGIC);
        head.extend(3u32.to_le_bytes());
        head.extend((self.tensors.len() as u64).to_le_bytes());
        head.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            encode_str(&mut head, key);
            head.extend(value.value_type().id().to_le_bytes());
            encode_value(&mut head, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            encode_str(&mut head, &t.name);
            head.extend((t.ggml_dims.len() as u32).to_le_bytes());
            for d in &t.ggml_dims {
                head.extend(d.to_le_bytes());
            }
            head.extend(t.ty.id().to_le_bytes());
            head.extend(offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(alignment);
        }
        let pad = |len: usize| (len as u64).next_multiple_of(alignment) as usize - len;
        head.resize(head.len() + pad(head.len()), 0);
        w.write_all(&head)?;
        let zeros = vec![0u8; alignment as usize];
        for t in &self.tensors {
            w.write_all(&t.data)?;
            w.write_all(&zeros[..pad(t.data.len())])?;
        }
        Ok(())
    }

    /// Write to `path` atomically: into a temporary file beside it, synced, then renamed.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let tmp = temp_path(path);
        let io = |what: &str, source| Error::Io {
            context: format!("writing GGUF file {}: {what}", path.display()),
            source,
        };
        let result = (|| {
            let file = File::create(&tmp).map_err(|e| io("cannot create temporary file", e))?;
            let mut w = BufWriter::new(file);
            self.write_to(&mut w).map_err(|e| io("write failed", e))?;
            let file = w
                .into_inner()
                .map_err(|e| io("write failed", e.into_error()))?;
            file.sync_all().map_err(|e| io("sync failed", e))?;
            fs::rename(&tmp, path).map_err(|e| io("cannot rename temporary file", e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map_or("out.gguf".into(), |n| n.to_string_lossy());
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

fn encode_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

fn encode_value(buf: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => buf.push(*x),
        GgufValue::I8(x) => buf.extend(x.to_le_bytes()),
        GgufValue::U16(x) => buf.extend(x.to_le_bytes()),
        GgufValue::I16(x) => buf.extend(x.to_le_bytes()),
        GgufValue::U32(x) => buf.extend(x.to_le_bytes()),
        GgufValue::I32(x) => buf.extend(x.to_le_bytes()),
        GgufValue::F32(x) => buf.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => buf.push(u8::from(*x)),
        GgufValue::String(s) => encode_str(buf, s),
        GgufValue::Array(a) => encode_array(buf, a),
        GgufValue::U64(x) => buf.extend(x.to_le_bytes()),
        GgufValue::I64(x) => buf.extend(x.to_le_bytes()),
        GgufValue::F64(x) => buf.extend(x.to_le_bytes()),
    }
}

fn encode_array(buf: &mut Vec<u8>, a: &GgufArray) {
    buf.extend(a.elem_type().id().to_le_bytes());
    buf.extend((a.len() as u64).to_le_bytes());
    fn each<T>(buf: &mut Vec<u8>, v: &[T], f: impl Fn(&mut Vec<u8>, &T)) {
        v.iter().for_each(|x| f(buf, x));
    }
    match a {
        GgufArray::U8(v) => buf.extend(v),
        GgufArray::I8(v) => each(buf, v, |b, x| b.extend(x.to_le_bytes())),
        GgufArray::U16(v) => each(buf, v, |b, x| b.extend(x.to_le_bytes())),
        GgufArray::I16(v) => each(buf, v, |b, x| b.extend(x.to_le_bytes())),
        GgufArray::U32(v) => each(buf, v, |b, x| b.extend(x.to_le_bytes())),
        GgufArray::I32(v) => each(buf, v, |b, x| b.extend(x.to_le_bytes())),
        GgufArray::F32(v) => each(buf, v, |b, x| b.extend(x.to_le_bytes())),
        GgufArray::Bool(v) => each(buf, v, |b, x| b.push(u8::from(*x))),
        GgufArray::String(v) => each(buf, v, |b, s| encode_str(b, s)),
        GgufArray::Array(v) => each(buf, v, encode_array),
        GgufArray::U64(v) => each(buf, v, |b, x| b.extend(x.to_le_bytes())),
        GgufArray::I64(v) => each(buf, v, |b, x| b.extend(x.to_le_bytes())),
        GgufArray::F64(v) => each(buf, v, |b, x| b.extend(x.to_le_bytes())),
    }
}

// The value type tags are part of the format; keep the writer honest about them.
const _: () = assert!(GgufValueType::Array as u32 == 9 && GgufValueType::F64 as u32 == 12);
