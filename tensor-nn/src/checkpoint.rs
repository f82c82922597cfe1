//! Checkpoints in safetensors: model weights (PyTorch `state_dict` names, so the file loads
//! into a matching PyTorch module with `load_state_dict`), optionally the optimizer state and
//! the step. Files are written atomically: a temporary file in the same directory, synced,
//! then renamed over the target, so a crash mid-save leaves the previous checkpoint intact.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;
use tensor_core::{DType, Device, Error, HostData, Result, Tensor};

/// Prefix of optimizer-state tensors inside a training checkpoint.
pub const OPTIM_PREFIX: &str = "optimizer.";

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid("checkpoint", format!("{what} '{}': {e}", path.display()))
}

fn st_dtype(d: DType) -> StDtype {
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

fn to_bytes(h: &HostData) -> Vec<u8> {
    tensor_core::map_host!(h, v => v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn from_bytes(dtype: StDtype, b: &[u8]) -> Option<HostData> {
    macro_rules! conv {
        ($t:ty, $n:expr, $var:ident) => {
            HostData::$var(
                b.chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk of exact size")))
                    .collect(),
            )
        };
    }
    Some(match dtype {
        StDtype::U8 => HostData::U8(b.to_vec()),
        StDtype::U32 => conv!(u32, 4, U32),
        StDtype::I64 => conv!(i64, 8, I64),
        StDtype::F16 => conv!(tensor_core::f16, 2, F16),
        StDtype::BF16 => conv!(tensor_core::bf16, 2, BF16),
        StDtype::F32 => conv!(f32, 4, F32),
        StDtype::F64 => conv!(f64, 8, F64),
        // Widen the integer types we have no dtype for; refuse the rest.
        StDtype::I32 => HostData::I64(
            b.chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
        ),
        StDtype::BOOL => HostData::U8(b.to_vec()),
        _ => return None,
    })
}

/// Write `bytes` to `path` atomically (temporary file + fsync + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io_err(path, "not a file path", "no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, "cannot write", e));
    }
    Ok(())
}

/// Save named tensors (and string metadata) as a safetensors file, atomically.
pub fn save_safetensors(
    path: impl AsRef<Path>,
    tensors: &HashMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let host = t.to_host()?;
        owned.push((name.clone(), t.dtype(), t.dims().to_vec(), to_bytes(&host)));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, dt, shape, bytes) in &owned {
        let v = TensorView::new(st_dtype(*dt), shape.clone(), bytes)
            .map_err(|e| io_err(path, &format!("tensor '{name}'"), e))?;
        views.push((name.as_str(), v));
    }
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| io_err(path, "cannot serialize", e))?;
    write_atomic(path, &bytes)
}

/// Load every tensor of a safetensors file onto `device`, with the header metadata.
/// A truncated or corrupt file is an `Err` naming the file (and tensor), never a panic.
pub fn load_safetensors(
    path: impl AsRef<Path>,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, BTreeMap<String, String>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_err(path, "cannot read", e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| io_err(path, "not a valid safetensors file", e))?;
    let meta: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| io_err(path, "not a valid safetensors file", e))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let host = from_bytes(view.dtype(), view.data()).ok_or_else(|| {
            io_err(
                path,
                &format!("tensor '{name}'"),
                format!("unsupported dtype {:?}", view.dtype()),
            )
        })?;
        let t = Tensor::from_host(host, view.shape().to_vec(), device)
            .map_err(|e| io_err(path, &format!("tensor '{name}'"), e))?;
        out.insert(name, t);
    }
    Ok((out, meta))
}

/// A training checkpoint: model weights, optimizer state, step, and free-form metadata.
#[derive(Default)]
pub struct Checkpoint {
    /// Model weights and buffers by `state_dict` name.
    pub model: HashMap<String, Tensor>,
    /// Optimizer state tensors by name (stored under [`OPTIM_PREFIX`]).
    pub optimizer: HashMap<String, Tensor>,
    /// The number of optimizer steps taken.
    pub step: u64,
    /// Anything else worth keeping (hyper-parameters, data position…), as strings.
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Write atomically. Model tensors keep their names, so
    /// `model.load_state_dict({k: v for k, v in load_file(path).items() if not
    /// k.startswith("optimizer.")})` loads it in PyTorch.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut all = self.model.clone();
        for (k, v) in &self.optimizer {
            all.insert(format!("{OPTIM_PREFIX}{k}"), v.clone());
        }
        let mut meta = self.metadata.clone();
        meta.insert("step".into(), self.step.to_string());
        meta.insert("format".into(), "tensor-engine-checkpoint".into());
        save_safetensors(path, &all, &meta)
    }

    /// Read a checkpoint written by [`Checkpoint::save`], or any safetensors file (then
    /// everything is model weights and the step is 0).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Checkpoint> {
        let path = path.as_ref();
        let (all, mut metadata) = load_safetensors(path, device)?;
        let step = match metadata.remove("step") {
            Some(s) => s
                .parse()
                .map_err(|e| io_err(path, &format!("bad step '{s}' in"), e))?,
            None => 0,
        };
        metadata.remove("format");
        let mut ck = Checkpoint {
            step,
            metadata,
            ..Default::default()
        };
        for (k, v) in all {
            match k.strip_prefix(OPTIM_PREFIX) {
                Some(rest) => ck.optimizer.insert(rest.to_string(), v),
                None => ck.model.insert(k, v),
            };
        }
        Ok(ck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tensor-nn-ckpt-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn roundtrip_every_dtype() -> Result<()> {
        let dev = tensor_cpu::device();
        let mut m = HashMap::new();
        for (i, dt) in [
            DType::U8,
            DType::U32,
            DType::I64,
            DType::F16,
            DType::BF16,
            DType::F32,
            DType::F64,
        ]
        .into_iter()
        .enumerate()
        {
            let t = Tensor::arange(0.0, 6.0, 1.0, DType::F64, &dev)?
                .reshape((2, 3))?
                .to_dtype(dt)?;
            m.insert(format!("t{i}"), t);
        }
        let dir = tmpdir();
        let p = dir.join("a.safetensors");
        let ck = Checkpoint {
            model: m.clone(),
            optimizer: HashMap::from([("w.exp_avg".to_string(), m["t5"].clone())]),
            step: 42,
            metadata: BTreeMap::from([("lr".to_string(), "0.1".to_string())]),
        };
        ck.save(&p)?;
        let back = Checkpoint::load(&p, &dev)?;
        assert_eq!(back.step, 42);
        assert_eq!(back.metadata.get("lr").map(String::as_str), Some("0.1"));
        assert_eq!(back.model.len(), 7);
        for (k, v) in &m {
            let b = &back.model[k];
            assert_eq!(b.dtype(), v.dtype());
            assert_eq!(b.dims(), v.dims());
            assert_eq!(b.to_f64_vec()?, v.to_f64_vec()?);
        }
        assert_eq!(
            back.optimizer["w.exp_avg"].to_vec::<f32>()?,
            m["t5"].to_vec::<f32>()?
        );
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(dir).ok();
        Ok(())
    }

    #[test]
    fn corrupt_files_are_errors() -> Result<()> {
        let dev = tensor_cpu::device();
        let dir = tmpdir().join("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ok.safetensors");
        let m = HashMap::from([("w".to_string(), Tensor::ones((4, 4), DType::F32, &dev)?)]);
        save_safetensors(&p, &m, &BTreeMap::new())?;
        let bytes = std::fs::read(&p).unwrap();
        // Truncated data, truncated header, a lying header length, garbage.
        let cases: Vec<Vec<u8>> = vec![
            bytes[..bytes.len() - 3].to_vec(),
            bytes[..20].to_vec(),
            {
                let mut b = bytes.clone();
                b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
                b
            },
            b"hello".to_vec(),
        ];
        for (i, c) in cases.into_iter().enumerate() {
            let q = dir.join(format!("bad{i}.safetensors"));
            std::fs::write(&q, c).unwrap();
            let e = load_safetensors(&q, &dev).unwrap_err().to_string();
            assert!(e.contains(&format!("bad{i}.safetensors")), "{e}");
        }
        assert!(load_safetensors(dir.join("missing.safetensors"), &dev).is_err());
        std::fs::remove_dir_all(dir).ok();
        Ok(())
    }
}
