//! PyTorch checkpoints written by `torch.save` (`.pth`, `.pt`, Hugging Face `pytorch_model.bin`).
//!
//! Since PyTorch 1.6 these are zip archives: `<name>/data.pkl` (a pickle of the saved object,
//! usually an `OrderedDict` state dict), `<name>/data/<key>` (one raw storage per key),
//! `<name>/byteorder`. The archive is memory-mapped, the pickle is run by a small allow-listed
//! virtual machine (see [`pickle`]) and each tensor is rebuilt from its storage, offset, size
//! and stride — non-contiguous views and storages shared by several tensors included (each
//! loaded tensor gets its own contiguous copy).
//!
//! Nested objects are flattened into dotted names: `{"model": {"fc.weight": t}, "epoch": 3}`
//! has the tensor `model.fc.weight` and the value `epoch`; lists use their indices
//! (`optimizer.state.0.exp_avg`). [`PthFile::tensors_under`] picks one sub-dict with the prefix
//! stripped. The legacy (pre-1.6, non-zip) format and TorchScript archives are refused with a
//! message saying so.

mod pickle;
mod zip;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tensor_core::{Device, Error, Layout, Result, Shape, Tensor};

use crate::safetensors::{host_from_bytes, StDtype};
pub use pickle::PthValue;
use pickle::{Elem, TensorRecord};

fn pth_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::invalid("pth", format!("'{}': {msg}", path.display()))
}

/// A memory-mapped PyTorch zip checkpoint whose pickle has been read; tensors are rebuilt on
/// request.
pub struct PthFile {
    path: PathBuf,
    mmap: Mmap,
    entries: HashMap<String, zip::ZipEntry>,
    /// `archive/` (the folder of `data.pkl`, with its slash).
    prefix: String,
    big_endian: bool,
    tensors: Vec<(String, TensorRecord)>,
    index: HashMap<String, usize>,
    values: Vec<(String, PthValue)>,
}

impl std::fmt::Debug for PthFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PthFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .field("values", &self.values.len())
            .finish()
    }
}

/// Read every tensor of a PyTorch checkpoint onto `device`, in the order of the pickle, with
/// nested dicts flattened into dotted names.
pub fn read_pth(path: impl AsRef<Path>, device: &Device) -> Result<Vec<(String, Tensor)>> {
    PthFile::open(path)?.tensors(device)
}

impl PthFile {
    pub fn open(path: impl AsRef<Path>) -> Result<PthFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::Io {
            context: format!("pth: cannot open '{}'", path.display()),
            source: e,
        })?;
        let len = file
            .metadata()
            .map_err(|e| Error::Io {
                context: format!("pth: cannot stat '{}'", path.display()),
                source: e,
            })?
            .len();
        if len < 4 {
            return Err(pth_err(path, format!("truncated file ({len} bytes)")));
        }
        // SAFETY: read-only map; as for every mmap reader, the file must not be truncated or
        // rewritten in place while mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::Io {
            context: format!("pth: cannot memory-map '{}'", path.display()),
            source: e,
        })?;
        let head = &mmap[..4];
        if head != b"PK\x03\x04" && head != b"PK\x05\x06" {
            if head[0] == 0x80 {
                return Err(pth_err(
                    path,
                    "legacy (pre-PyTorch-1.6, non-zip) torch.save format is not supported; \
                     re-save it with a recent PyTorch: torch.save(torch.load(f), f2)",
                ));
            }
            return Err(pth_err(
                path,
                "not a PyTorch zip checkpoint (no zip signature)",
            ));
        }
        let entries = zip::read_directory(&mmap).map_err(|e| pth_err(path, e))?;

        let mut pkls: Vec<&String> = entries
            .keys()
            .filter(|k| {
                k.strip_suffix("data.pkl").is_some_and(|p| {
                    p.is_empty() || (p.ends_with('/') && p.matches('/').count() == 1)
                })
            })
            .collect();
        pkls.sort();
        let pkl_name = match pkls.first() {
            Some(p) => (*p).clone(),
            None if entries.keys().any(|k| k.ends_with("constants.pkl")) => {
                return Err(pth_err(
                    path,
                    "a TorchScript archive (torch.jit.save) is not a state dict; save \
                     model.state_dict() with torch.save instead",
                ))
            }
            None => return Err(pth_err(path, "zip archive has no data.pkl")),
        };
        let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();

        let big_endian = match entries.get(&format!("{prefix}byteorder")) {
            None => false,
            Some(e) => {
                let b = zip::read_entry(&mmap, e)
                    .map_err(|m| pth_err(path, format!("{prefix}byteorder: {m}")))?;
                match b.as_ref() {
                    b"little" => false,
                    b"big" => true,
                    other => {
                        return Err(pth_err(
                            path,
                            format!("unknown byteorder '{}'", String::from_utf8_lossy(other)),
                        ))
                    }
                }
            }
        };

        let pkl = zip::read_entry(&mmap, &entries[&pkl_name])
            .map_err(|m| pth_err(path, format!("{pkl_name}: {m}")))?;
        let (tensors, values) =
            pickle::load(&pkl).map_err(|m| pth_err(path, format!("{pkl_name}: {m}")))?;
        drop(pkl);
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        Ok(PthFile {
            path: path.to_path_buf(),
            mmap,
            entries,
            prefix,
            big_endian,
            tensors,
            index,
            values,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names (dotted for nested dicts), in the order of the pickle.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The non-tensor leaves (`epoch`, learning rates, strings ...), dotted names.
    pub fn values(&self) -> &[(String, PthValue)] {
        &self.values
    }

    pub fn value(&self, name: &str) -> Option<&PthValue> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    fn record(&self, name: &str) -> Result<&TensorRecord> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i].1)
            .ok_or_else(|| pth_err(&self.path, format!("no tensor named '{name}'")))
    }

    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.record(name)?.size)
    }

    /// The stored element type (the loaded dtype follows [`StDtype::core_dtype`]).
    pub fn dtype(&self, name: &str) -> Result<StDtype> {
        match &self.record(name)?.elem {
            Elem::Known(d) => Ok(*d),
            Elem::Unsupported(what) => Err(pth_err(
                &self.path,
                format!("tensor '{name}': element type {what} is not supported"),
            )),
        }
    }

    /// Rebuild one tensor on `device` as a contiguous copy of its view of the storage.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let rec = self.record(name)?;
        let bad = |msg: String| pth_err(&self.path, format!("tensor '{name}': {msg}"));
        let dtype = self.dtype(name)?;
        let esz = dtype.size_in_bytes();
        let member = format!("{}data/{}", self.prefix, rec.key);
        let entry = self
            .entries
            .get(&member)
            .ok_or_else(|| bad(format!("storage '{member}' is missing from the archive")))?;
        let storage_elems = entry.size() / esz;
        let n = rec
            .size
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("size {:?} overflows", rec.size)))?;
        let host = if n == 0 {
            host_from_bytes(dtype, &[], self.big_endian).map_err(bad)?
        } else {
            // One past the largest element index the view touches, without overflow.
            let last = rec
                .size
                .iter()
                .zip(&rec.stride)
                .try_fold(rec.offset, |acc, (&d, &s)| {
                    (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
                });
            match last {
                Some(l) if l < storage_elems => {}
                _ => {
                    return Err(bad(format!(
                        "view (offset {}, size {:?}, stride {:?}) reaches past storage '{}' \
                         ({storage_elems} {dtype} elements)",
                        rec.offset, rec.size, rec.stride, rec.key
                    )))
                }
            }
            let bytes: Cow<[u8]> = zip::read_entry(&self.mmap, entry)
                .map_err(|m| bad(format!("storage '{member}': {m}")))?;
            let layout = Layout::new(
                Shape::from(rec.size.clone()),
                rec.stride.clone(),
                rec.offset,
            );
            if layout.is_contiguous() {
                let start = rec.offset * esz;
                host_from_bytes(dtype, &bytes[start..start + n * esz], self.big_endian)
                    .map_err(bad)?
            } else {
                let mut gathered = Vec::with_capacity(n * esz);
                layout.for_each_offset(|o| {
                    gathered.extend_from_slice(&bytes[o * esz..(o + 1) * esz])
                });
                host_from_bytes(dtype, &gathered, self.big_endian).map_err(bad)?
            }
        };
        Tensor::from_host(host, rec.size.clone(), device).map_err(|e| bad(e.to_string()))
    }

    /// Every tensor, in the order of the pickle.
    pub fn tensors(&self, device: &Device) -> Result<Vec<(String, Tensor)>> {
        self.tensors
            .iter()
            .map(|(n, _)| Ok((n.clone(), self.tensor(n, device)?)))
            .collect()
    }

    /// The tensors of one sub-dict, e.g. `"model"` or `"state_dict"` of a training checkpoint,
    /// named relative to it (`model.fc.weight` → `fc.weight`). An empty prefix means all.
    pub fn tensors_under(&self, prefix: &str, device: &Device) -> Result<Vec<(String, Tensor)>> {
        if prefix.is_empty() {
            return self.tensors(device);
        }
        let dotted = format!("{prefix}.");
        let out: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .filter_map(|(n, _)| n.strip_prefix(&dotted).map(|rest| (n, rest)))
            .map(|(n, rest)| Ok((rest.to_string(), self.tensor(n, device)?)))
            .collect::<Result<_>>()?;
        if out.is_empty() {
            return Err(pth_err(&self.path, format!("no tensors under '{prefix}'")));
        }
        Ok(out)
    }
}
