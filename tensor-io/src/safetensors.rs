//! safetensors checkpoints: a memory-mapped reader (one file or a Hugging Face sharded set with
//! `model.safetensors.index.json`) and an atomic writer.
//!
//! The header is parsed and validated here rather than by the `safetensors` crate, so every
//! complaint names the file and the tensor involved: a truncated file, a header length past the
//! end, invalid JSON, an unknown dtype, `data_offsets` out of range, overlapping or not matching
//! `shape × dtype size` are all `Err`s at `open` time; nothing later can read out of bounds.
//!
//! Core's `Tensor::from_host` takes an owned host buffer, so `tensor()` copies the mapped bytes
//! exactly once into that buffer (a `memcpy` on little-endian hosts, whatever the alignment);
//! `get_raw` hands out the mapped bytes themselves without copying.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;
use tensor_core::{bf16, f16, DType, Device, Error, HostData, Result, Tensor};

/// Headers larger than this are refused (the reference implementation uses the same bound).
const MAX_HEADER: u64 = 100_000_000;

/// The file name of a Hugging Face sharded checkpoint index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The element types a safetensors header can name. Some have no tensor-core dtype; see
/// [`StDtype::core_dtype`] for what [`MmapedSafetensors::tensor`] turns each into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StDtype {
    Bool,
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F16,
    BF16,
    F32,
    F64,
    F8E4M3,
    F8E5M2,
    F8E8M0,
    C64,
}

impl StDtype {
    /// Parse the dtype string of a header entry (`"F32"`, `"BF16"`, ...).
    pub fn parse(s: &str) -> Option<StDtype> {
        Some(match s {
            "BOOL" => StDtype::Bool,
            "U8" => StDtype::U8,
            "I8" => StDtype::I8,
            "I16" => StDtype::I16,
            "U16" => StDtype::U16,
            "I32" => StDtype::I32,
            "U32" => StDtype::U32,
            "I64" => StDtype::I64,
            "U64" => StDtype::U64,
            "F16" => StDtype::F16,
            "BF16" => StDtype::BF16,
            "F32" => StDtype::F32,
            "F64" => StDtype::F64,
            "F8_E4M3" => StDtype::F8E4M3,
            "F8_E5M2" => StDtype::F8E5M2,
            "F8_E8M0" => StDtype::F8E8M0,
            "C64" => StDtype::C64,
            _ => return None,
        })
    }

    /// The header spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StDtype::Bool => "BOOL",
            StDtype::U8 => "U8",
            StDtype::I8 => "I8",
            StDtype::I16 => "I16",
            StDtype::U16 => "U16",
            StDtype::I32 => "I32",
            StDtype::U32 => "U32",
            StDtype::I64 => "I64",
            StDtype::U64 => "U64",
            StDtype::F16 => "F16",
            StDtype::BF16 => "BF16",
            StDtype::F32 => "F32",
            StDtype::F64 => "F64",
            StDtype::F8E4M3 => "F8_E4M3",
            StDtype::F8E5M2 => "F8_E5M2",
            StDtype::F8E8M0 => "F8_E8M0",
            StDtype::C64 => "C64",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            StDtype::Bool
            | StDtype::U8
            | StDtype::I8
            | StDtype::F8E4M3
            | StDtype::F8E5M2
            | StDtype::F8E8M0 => 1,
            StDtype::I16 | StDtype::U16 | StDtype::F16 | StDtype::BF16 => 2,
            StDtype::I32 | StDtype::U32 | StDtype::F32 => 4,
            StDtype::I64 | StDtype::U64 | StDtype::F64 | StDtype::C64 => 8,
        }
    }

    /// The core dtype a loaded tensor gets: the same type where core has it, `BOOL` → `U8`,
    /// the signed integers widened to `I64`, `U16` widened to `U32`, `U64` to `I64` (values
    /// must fit). `None` for the 8-bit floats and complex numbers, which core cannot hold.
    pub fn core_dtype(self) -> Option<DType> {
        Some(match self {
            StDtype::Bool | StDtype::U8 => DType::U8,
            StDtype::U16 | StDtype::U32 => DType::U32,
            StDtype::I8 | StDtype::I16 | StDtype::I32 | StDtype::I64 | StDtype::U64 => DType::I64,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            StDtype::F32 => DType::F32,
            StDtype::F64 => DType::F64,
            StDtype::F8E4M3 | StDtype::F8E5M2 | StDtype::F8E8M0 | StDtype::C64 => return None,
        })
    }

    /// The safetensors dtype that stores a core dtype unchanged.
    pub fn from_core(d: DType) -> StDtype {
        match d {
            DType::U8 => StDtype::U8,
            DType::U32 => StDtype::U32,
            DType::I64 => StDtype::I64,
            DType::F16 => StDtype::F16,
            DType::BF16 => StDtype::BF16,
            DType::F32 => StDtype::F32,
            DType::F64 => StDtype::F64,
        }
    }
}

impl std::fmt::Display for StDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Copy elements stored as `T` (little-endian unless `big_endian`) into a vector: one `memcpy`
/// (any alignment) plus an in-place byte swap when the data and host byte orders differ.
/// `bytes.len()` must be a multiple of `size_of::<T>()` (callers validate sizes first).
fn pod_vec<T: bytemuck::Pod>(bytes: &[u8], big_endian: bool) -> Vec<T> {
    let mut v: Vec<T> = bytemuck::pod_collect_to_vec(bytes);
    let n = std::mem::size_of::<T>();
    if n > 1 && big_endian != cfg!(target_endian = "big") {
        for e in bytemuck::cast_slice_mut::<T, u8>(&mut v).chunks_exact_mut(n) {
            e.reverse();
        }
    }
    v
}

/// Decode raw element bytes of `dtype` into the host buffer of [`StDtype::core_dtype`].
/// The error text says why (unsupported dtype, a value that does not fit); callers add the
/// file and tensor names.
pub(crate) fn host_from_bytes(
    dtype: StDtype,
    bytes: &[u8],
    big_endian: bool,
) -> std::result::Result<HostData, String> {
    if !bytes.len().is_multiple_of(dtype.size_in_bytes()) {
        return Err(format!(
            "{} bytes is not a whole number of {dtype} elements",
            bytes.len()
        ));
    }
    Ok(match dtype {
        StDtype::Bool | StDtype::U8 => HostData::U8(bytes.to_vec()),
        StDtype::I8 => HostData::I64(bytes.iter().map(|&b| b as i8 as i64).collect()),
        StDtype::I16 => HostData::I64(
            pod_vec::<i16>(bytes, big_endian)
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        StDtype::I32 => HostData::I64(
            pod_vec::<i32>(bytes, big_endian)
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        StDtype::I64 => HostData::I64(pod_vec(bytes, big_endian)),
        StDtype::U64 => {
            let v = pod_vec::<u64>(bytes, big_endian);
            let mut out = Vec::with_capacity(v.len());
            for (i, x) in v.into_iter().enumerate() {
                out.push(i64::try_from(x).map_err(|_| {
                    format!("U64 element {i} = {x} does not fit the I64 dtype it loads as")
                })?);
            }
            HostData::I64(out)
        }
        StDtype::U16 => HostData::U32(
            pod_vec::<u16>(bytes, big_endian)
                .into_iter()
                .map(u32::from)
                .collect(),
        ),
        StDtype::U32 => HostData::U32(pod_vec(bytes, big_endian)),
        // Same size and alignment: `collect` reuses the allocation.
        StDtype::F16 => HostData::F16(
            pod_vec::<u16>(bytes, big_endian)
                .into_iter()
                .map(f16::from_bits)
                .collect(),
        ),
        StDtype::BF16 => HostData::BF16(
            pod_vec::<u16>(bytes, big_endian)
                .into_iter()
                .map(bf16::from_bits)
                .collect(),
        ),
        StDtype::F32 => HostData::F32(pod_vec(bytes, big_endian)),
        StDtype::F64 => HostData::F64(pod_vec(bytes, big_endian)),
        StDtype::F8E4M3 | StDtype::F8E5M2 | StDtype::F8E8M0 | StDtype::C64 => {
            return Err(format!("dtype {dtype} has no tensor-core equivalent"));
        }
    })
}

fn st_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::invalid("safetensors", format!("'{}': {msg}", path.display()))
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Io {
        context: format!("safetensors: {what} '{}'", path.display()),
        source: e,
    }
}

/// One tensor entry of a header. Offsets are relative to the start of the data section.
#[derive(Clone, Debug)]
struct Entry {
    dtype: StDtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A parsed, validated header.
struct Header {
    data_start: usize,
    metadata: BTreeMap<String, String>,
    entries: Vec<(String, Entry)>,
}

fn json_usize(v: &serde_json::Value) -> Option<usize> {
    v.as_u64().and_then(|x| usize::try_from(x).ok())
}

/// Parse and validate the header of a safetensors file held in `bytes` (the whole file).
fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    if bytes.len() < 8 {
        return Err(st_err(
            path,
            format!(
                "truncated file: {} bytes, a safetensors file starts with an 8-byte header length",
                bytes.len()
            ),
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let avail = (bytes.len() - 8) as u64;
    if n > avail {
        return Err(st_err(
            path,
            format!(
                "header length {n} is larger than the rest of the file ({avail} bytes): truncated or not a safetensors file"
            ),
        ));
    }
    if n > MAX_HEADER {
        return Err(st_err(
            path,
            format!("header length {n} exceeds the {MAX_HEADER}-byte limit"),
        ));
    }
    let data_start = 8 + n as usize;
    let header_bytes = &bytes[8..data_start];
    let text = std::str::from_utf8(header_bytes)
        .map_err(|e| st_err(path, format!("header is not UTF-8: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| st_err(path, format!("header is not valid JSON: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| st_err(path, "header JSON is not an object"))?;
    let data_len = bytes.len() - data_start;

    let mut metadata = BTreeMap::new();
    let mut entries = Vec::with_capacity(obj.len());
    for (name, v) in obj {
        if name == "__metadata__" {
            let m = v
                .as_object()
                .ok_or_else(|| st_err(path, "__metadata__ is not an object"))?;
            for (k, val) in m {
                let s = val.as_str().ok_or_else(|| {
                    st_err(path, format!("__metadata__ value of '{k}' is not a string"))
                })?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let bad = |msg: String| st_err(path, format!("tensor '{name}': {msg}"));
        let e = v
            .as_object()
            .ok_or_else(|| bad("header entry is not an object".into()))?;
        let dtype_str = e
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("missing or non-string 'dtype'".into()))?;
        let dtype =
            StDtype::parse(dtype_str).ok_or_else(|| bad(format!("unknown dtype '{dtype_str}'")))?;
        let shape = e
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("missing or non-array 'shape'".into()))?
            .iter()
            .map(json_usize)
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(
                || bad("'shape' holds something other than non-negative integers".into()),
            )?;
        let offs = e
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad("missing 'data_offsets' or not a pair".into()))?;
        let (start, end) = match (json_usize(&offs[0]), json_usize(&offs[1])) {
            (Some(s), Some(e)) => (s, e),
            _ => return Err(bad("'data_offsets' are not non-negative integers".into())),
        };
        if start > end {
            return Err(bad(format!("data_offsets [{start}, {end}] run backwards")));
        }
        if end > data_len {
            return Err(bad(format!(
                "data_offsets [{start}, {end}] end beyond the data section ({data_len} bytes): truncated file?"
            )));
        }
        let nbytes = shape
            .iter()
            .try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        if nbytes != end - start {
            return Err(bad(format!(
                "shape {shape:?} of {dtype} needs {nbytes} bytes but data_offsets [{start}, {end}] span {}",
                end - start
            )));
        }
        entries.push((
            name.clone(),
            Entry {
                dtype,
                shape,
                start,
                end,
            },
        ));
    }
    // No two (non-empty) tensors may share bytes.
    let mut by_start: Vec<&(String, Entry)> =
        entries.iter().filter(|(_, e)| e.end > e.start).collect();
    by_start.sort_by_key(|(_, e)| (e.start, e.end));
    for w in by_start.windows(2) {
        let ((a, ea), (b, eb)) = (w[0], w[1]);
        if eb.start < ea.end {
            return Err(st_err(
                path,
                format!(
                    "tensors '{a}' [{}, {}] and '{b}' [{}, {}] overlap",
                    ea.start, ea.end, eb.start, eb.end
                ),
            ));
        }
    }
    Ok(Header {
        data_start,
        metadata,
        entries,
    })
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| io_err(path, "cannot open", e))?;
    let len = file
        .metadata()
        .map_err(|e| io_err(path, "cannot stat", e))?
        .len();
    if len < 8 {
        return Err(st_err(
            path,
            format!("truncated file: {len} bytes, a safetensors file starts with an 8-byte header length"),
        ));
    }
    // SAFETY: the map is read-only. Like every mmap-based reader, we rely on nobody truncating
    // or rewriting the file while it is mapped (our own writer replaces files by rename, which
    // leaves existing maps intact).
    unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, "cannot memory-map", e))
}

/// Named tensors of one or more memory-mapped safetensors files.
pub struct MmapedSafetensors {
    shards: Vec<Shard>,
    /// name → (shard index, entry)
    tensors: BTreeMap<String, (usize, Entry)>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for MmapedSafetensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapedSafetensors")
            .field("files", &self.files())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl MmapedSafetensors {
    /// Map one safetensors file and validate its header.
    pub fn open(path: impl AsRef<Path>) -> Result<MmapedSafetensors> {
        let path = path.as_ref();
        let mut st = MmapedSafetensors {
            shards: Vec::new(),
            tensors: BTreeMap::new(),
            metadata: BTreeMap::new(),
        };
        let (idx, entries) = st.add_shard(path)?;
        for (name, e) in entries {
            st.tensors.insert(name, (idx, e));
        }
        Ok(st)
    }

    /// Open a Hugging Face sharded checkpoint: `path` is a `model.safetensors.index.json` or a
    /// directory holding one (a directory with only a `model.safetensors` opens that file).
    /// Every shard named by the index's `weight_map` is mapped once; every tensor the index
    /// names must be in the shard it says.
    pub fn open_sharded(path: impl AsRef<Path>) -> Result<MmapedSafetensors> {
        let path = path.as_ref();
        let index = if path.is_dir() {
            let idx = path.join(INDEX_FILE);
            if !idx.exists() {
                let single = path.join("model.safetensors");
                if single.exists() {
                    return MmapedSafetensors::open(single);
                }
                return Err(st_err(
                    path,
                    format!("directory holds neither {INDEX_FILE} nor model.safetensors"),
                ));
            }
            idx
        } else {
            path.to_path_buf()
        };
        let text =
            std::fs::read_to_string(&index).map_err(|e| io_err(&index, "cannot read index", e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| st_err(&index, format!("index is not valid JSON: {e}")))?;
        let wm = json
            .get("weight_map")
            .and_then(|w| w.as_object())
            .ok_or_else(|| st_err(&index, "index has no 'weight_map' object"))?;
        let dir = index
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));

        // Shard file → the tensors the index puts there (sorted, so errors are deterministic).
        let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, file) in wm {
            let file = file.as_str().ok_or_else(|| {
                st_err(
                    &index,
                    format!("weight_map entry of tensor '{name}' is not a file name"),
                )
            })?;
            let p = Path::new(file);
            if file.is_empty()
                || p.is_absolute()
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(st_err(
                    &index,
                    format!("tensor '{name}': shard name '{file}' is not a plain relative path"),
                ));
            }
            by_file.entry(file).or_default().push(name);
        }

        let mut st = MmapedSafetensors {
            shards: Vec::new(),
            tensors: BTreeMap::new(),
            metadata: BTreeMap::new(),
        };
        for (file, names) in &by_file {
            let shard_path = dir.join(file);
            if !shard_path.is_file() {
                return Err(st_err(
                    &index,
                    format!(
                        "shard '{}' is missing (it holds tensor '{}'{})",
                        shard_path.display(),
                        names[0],
                        if names.len() > 1 {
                            format!(" and {} more", names.len() - 1)
                        } else {
                            String::new()
                        }
                    ),
                ));
            }
            let (idx, entries) = st.add_shard(&shard_path)?;
            let mut entries: HashMap<String, Entry> = entries.into_iter().collect();
            for name in names {
                let e = entries.remove(*name).ok_or_else(|| {
                    st_err(
                        &index,
                        format!(
                            "tensor '{name}' is mapped to shard '{}' which does not contain it",
                            shard_path.display()
                        ),
                    )
                })?;
                st.tensors.insert(name.to_string(), (idx, e));
            }
            // Tensors a shard holds but the index forgot are still readable.
            for (name, e) in entries {
                st.tensors.entry(name).or_insert((idx, e));
            }
        }
        Ok(st)
    }

    /// Map and validate one file; returns its shard index and entries.
    fn add_shard(&mut self, path: &Path) -> Result<(usize, Vec<(String, Entry)>)> {
        let mmap = map_file(path)?;
        let header = parse_header(path, &mmap)?;
        for (k, v) in header.metadata {
            self.metadata.entry(k).or_insert(v);
        }
        self.shards.push(Shard {
            path: path.to_path_buf(),
            mmap,
            data_start: header.data_start,
        });
        Ok((self.shards.len() - 1, header.entries))
    }

    fn entry(&self, name: &str) -> Result<(&Shard, &Entry)> {
        match self.tensors.get(name) {
            Some((i, e)) => Ok((&self.shards[*i], e)),
            None => Err(Error::invalid(
                "safetensors",
                format!("no tensor named '{name}' in {}", self.describe_files()),
            )),
        }
    }

    fn describe_files(&self) -> String {
        match self.shards.as_slice() {
            [one] => format!("'{}'", one.path.display()),
            many => format!("{} shards", many.len()),
        }
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The mapped files, in the order they were opened.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// The `__metadata__` string map (merged over shards, first one wins).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The file holding tensor `name`.
    pub fn file_of(&self, name: &str) -> Result<&Path> {
        Ok(self.entry(name)?.0.path.as_path())
    }

    /// The stored dtype (which may differ from the loaded one: see [`StDtype::core_dtype`]).
    pub fn dtype(&self, name: &str) -> Result<StDtype> {
        Ok(self.entry(name)?.1.dtype)
    }

    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.entry(name)?.1.shape)
    }

    /// The tensor's bytes as stored (little-endian), straight from the map, no copy.
    pub fn get_raw(&self, name: &str) -> Result<&[u8]> {
        let (shard, e) = self.entry(name)?;
        // In bounds: `parse_header` checked `end <= data section length`.
        Ok(&shard.mmap[shard.data_start + e.start..shard.data_start + e.end])
    }

    /// Load one tensor onto `device` (one copy from the map into the host buffer, then the
    /// backend's upload). Dtypes are converted as [`StDtype::core_dtype`] says.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let (shard, e) = self.entry(name)?;
        let bytes = &shard.mmap[shard.data_start + e.start..shard.data_start + e.end];
        let host = host_from_bytes(e.dtype, bytes, false)
            .map_err(|m| st_err(&shard.path, format!("tensor '{name}' ({}): {m}", e.dtype)))?;
        Tensor::from_host(host, e.shape.clone(), device)
            .map_err(|err| st_err(&shard.path, format!("tensor '{name}': {err}")))
    }

    /// Load every tensor, in name order.
    pub fn tensors(&self, device: &Device) -> Result<Vec<(String, Tensor)>> {
        self.tensors
            .keys()
            .map(|n| Ok((n.clone(), self.tensor(n, device)?)))
            .collect()
    }
}

fn write_host(w: &mut impl Write, h: &HostData) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        match h {
            HostData::U8(v) => w.write_all(v),
            HostData::U32(v) => w.write_all(bytemuck::cast_slice(v)),
            HostData::I64(v) => w.write_all(bytemuck::cast_slice(v)),
            HostData::F32(v) => w.write_all(bytemuck::cast_slice(v)),
            HostData::F64(v) => w.write_all(bytemuck::cast_slice(v)),
            HostData::F16(v) => {
                let bits: Vec<u16> = v.iter().map(|x| x.to_bits()).collect();
                w.write_all(bytemuck::cast_slice(&bits))
            }
            HostData::BF16(v) => {
                let bits: Vec<u16> = v.iter().map(|x| x.to_bits()).collect();
                w.write_all(bytemuck::cast_slice(&bits))
            }
        }
    } else {
        let bytes: Vec<u8> =
            tensor_core::map_host!(h, v => v.iter().flat_map(|x| x.to_le_bytes()).collect());
        w.write_all(&bytes)
    }
}

/// Write `fill` into a temporary file next to `path`, fsync it, rename it over `path`, then
/// fsync the directory, so readers see either the old file or the complete new one. Errors
/// name `format` (the file format being written) and the path.
pub(crate) fn write_atomic(
    path: &Path,
    format: &'static str,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let io_err = |p: &Path, what: &str, e: std::io::Error| Error::Io {
        context: format!("{format}: {what} '{}'", p.display()),
        source: e,
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format, format!("'{}': not a file path", path.display())))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let res = (|| -> Result<()> {
        let file = File::create(&tmp).map_err(|e| io_err(&tmp, "cannot create", e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        fill(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| io_err(&tmp, "cannot write", e.into_error()))?;
        file.sync_all()
            .map_err(|e| io_err(&tmp, "cannot sync", e))?;
        drop(file);
        std::fs::rename(&tmp, path)
            .map_err(|e| io_err(path, "cannot rename temporary file onto", e))?;
        // Make the rename itself durable (not possible on every platform; best effort).
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Save named tensors as a safetensors file that `safetensors.torch.load_file` reads, with
/// string `metadata` in `__metadata__` (omitted when empty). Written atomically (temporary
/// file in the same directory, fsync, rename). Tensors are laid out largest element size
/// first, so every tensor's data is aligned to its element size in the file.
pub fn save_safetensors<S: AsRef<str>>(
    path: impl AsRef<Path>,
    tensors: &[(S, &Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut order: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_ref(), *t)).collect();
    order.sort_by(|a, b| {
        b.1.dtype()
            .size_in_bytes()
            .cmp(&a.1.dtype().size_in_bytes())
            .then(a.0.cmp(b.0))
    });
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, t) in &order {
        if *name == "__metadata__" {
            return Err(st_err(path, "'__metadata__' cannot be a tensor name"));
        }
        let nbytes = t.elem_count() * t.dtype().size_in_bytes();
        let entry = serde_json::json!({
            "dtype": StDtype::from_core(t.dtype()).as_str(),
            "shape": t.dims(),
            "data_offsets": [offset, offset + nbytes],
        });
        if header.insert(name.to_string(), entry).is_some() {
            return Err(st_err(path, format!("tensor name '{name}' given twice")));
        }
        offset += nbytes;
    }
    let mut text = serde_json::to_string(&serde_json::Value::Object(header))
        .map_err(|e| st_err(path, format!("cannot encode header: {e}")))?;
    // Pad with spaces so the data section starts 8-byte aligned.
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    write_atomic(path, "safetensors", |w| {
        let werr = |e| io_err(path, "cannot write", e);
        w.write_all(&(text.len() as u64).to_le_bytes())
            .map_err(werr)?;
        w.write_all(text.as_bytes()).map_err(werr)?;
        for (name, t) in &order {
            let host = t
                .to_host()
                .map_err(|e| st_err(path, format!("tensor '{name}': {e}")))?;
            write_host(w, &host).map_err(werr)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_strings_round_trip() {
        for s in [
            "BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F16", "BF16", "F32",
            "F64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "C64",
        ] {
            assert_eq!(StDtype::parse(s).unwrap().as_str(), s);
        }
        assert!(StDtype::parse("F4").is_none());
    }

    #[test]
    fn decode_widens_and_swaps() {
        let b: Vec<u8> = [-1i32, 7].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            host_from_bytes(StDtype::I32, &b, false).unwrap(),
            HostData::I64(vec![-1, 7])
        );
        let b: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        assert_eq!(
            host_from_bytes(StDtype::F32, &b, true).unwrap(),
            HostData::F32(vec![1.5, -2.0])
        );
        // Unaligned source.
        let mut b = vec![0u8];
        b.extend(2.5f64.to_le_bytes());
        assert_eq!(
            host_from_bytes(StDtype::F64, &b[1..], false).unwrap(),
            HostData::F64(vec![2.5])
        );
        let big = u64::MAX.to_le_bytes();
        assert!(host_from_bytes(StDtype::U64, &big, false).is_err());
        assert!(host_from_bytes(StDtype::F32, &[0, 0, 0], false).is_err());
    }
}
