//! Finding parameters by name. A [`VarBuilder`] is a path prefix (`model.layers.0.mlp`) over a
//! [`WeightSource`]: a [`VarMap`] that creates fresh trainable variables (training), or a map
//! of loaded tensors (a checkpoint). Modules ask for `vb.get_with_init(shape, "weight", init)`
//! and never know which; since the names are PyTorch `state_dict` keys, loading a checkpoint
//! is "the names line up".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tensor_core::{DType, Device, Error, Result, Shape, Tensor, Var};

use crate::init::Init;

/// Where a [`VarBuilder`] gets its tensors.
pub trait WeightSource: Send + Sync {
    /// The tensor called `name`, of exactly `shape`, as `dtype` on `device`. Sources that
    /// create parameters use `init`; sources of stored weights ignore it.
    fn get(
        &self,
        name: &str,
        shape: &Shape,
        init: &Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor>;

    /// A non-trainable state tensor (batch-norm running statistics): saved and loaded like a
    /// parameter, never given to an optimizer.
    fn get_buffer(
        &self,
        name: &str,
        shape: &Shape,
        init: &Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        self.get(name, shape, init, dtype, device)
    }

    /// Whether the source can provide `name` without creating it.
    fn contains(&self, name: &str) -> bool;
}

/// A path prefix over a weight source, with the dtype and device new tensors get.
#[derive(Clone)]
pub struct VarBuilder {
    source: Arc<dyn WeightSource>,
    path: Vec<String>,
    dtype: DType,
    device: Device,
}

impl VarBuilder {
    pub fn from_source(source: Arc<dyn WeightSource>, dtype: DType, device: &Device) -> Self {
        VarBuilder {
            source,
            path: Vec::new(),
            dtype,
            device: device.clone(),
        }
    }

    /// Trainable parameters, created on first request and kept in `map`.
    pub fn from_varmap(map: &VarMap, dtype: DType, device: &Device) -> Self {
        Self::from_source(Arc::new(map.clone()), dtype, device)
    }

    /// Stored weights (e.g. a loaded checkpoint), converted to `dtype`/`device` on request.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device) -> Self {
        Self::from_source(Arc::new(TensorMap(tensors)), dtype, device)
    }

    /// The same source with `name` appended to the path (`vb.pp("layers").pp(0)`).
    pub fn pp(&self, name: impl ToString) -> Self {
        let mut b = self.clone();
        b.path.push(name.to_string());
        b
    }

    /// The same builder producing `dtype` tensors.
    pub fn with_dtype(&self, dtype: DType) -> Self {
        VarBuilder {
            dtype,
            ..self.clone()
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The full name of `name` under this prefix.
    pub fn path(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path.join("."))
        }
    }

    /// The prefix itself (`""` at the root).
    pub fn prefix(&self) -> String {
        self.path.join(".")
    }

    /// A parameter that must exist in the source, or be creatable with zeros.
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        self.get_with_init(shape, name, Init::ZEROS)
    }

    /// A parameter, created with `init` if the source creates parameters.
    pub fn get_with_init(&self, shape: impl Into<Shape>, name: &str, init: Init) -> Result<Tensor> {
        let shape = shape.into();
        self.source
            .get(&self.path(name), &shape, &init, self.dtype, &self.device)
    }

    /// A buffer (non-trainable state such as running statistics), created with `init` and
    /// the given dtype if the source creates tensors.
    pub fn get_buffer(
        &self,
        shape: impl Into<Shape>,
        name: &str,
        init: Init,
        dtype: DType,
    ) -> Result<Tensor> {
        let shape = shape.into();
        self.source
            .get_buffer(&self.path(name), &shape, &init, dtype, &self.device)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(&self.path(name))
    }
}

/// Stored tensors by name.
pub struct TensorMap(pub HashMap<String, Tensor>);

impl WeightSource for TensorMap {
    fn get(
        &self,
        name: &str,
        shape: &Shape,
        _init: &Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let t = self
            .0
            .get(name)
            .ok_or_else(|| missing(name, self.0.keys()))?;
        if t.shape() != shape {
            return Err(Error::invalid(
                "load weight",
                format!(
                    "tensor '{name}' has shape {:?} but the model expects {shape:?}",
                    t.dims()
                ),
            ));
        }
        let t = if t.dtype() != dtype {
            t.to_dtype(dtype)?
        } else {
            t.clone()
        };
        if t.device().same_device(device) {
            Ok(t)
        } else {
            t.to_device(device)
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// "not found" with the closest names, so a prefix typo is obvious.
fn missing<'a>(name: &str, keys: impl Iterator<Item = &'a String>) -> Error {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let mut near: Vec<&String> = keys.filter(|k| k.ends_with(leaf)).collect();
    near.sort();
    near.truncate(5);
    let hint = if near.is_empty() {
        String::new()
    } else {
        format!(
            "; names ending in '{leaf}': {}",
            near.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Error::invalid("load weight", format!("no tensor named '{name}'{hint}"))
}

/// The trainable variables of a model, by name, in a shared map (clones share it). As a
/// [`WeightSource`] it creates each variable on first request with the requested
/// initialiser and returns the same variable afterwards.
#[derive(Clone, Default)]
pub struct VarMap {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    buffers: Arc<Mutex<BTreeSet<String>>>,
}

impl VarMap {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Var>> {
        self.vars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// All variables, sorted by name.
    pub fn all_vars(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn buffer_names(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.buffers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `name` is a buffer (running statistics), not a parameter.
    pub fn is_buffer(&self, name: &str) -> bool {
        self.buffer_names().contains(name)
    }

    /// The variables that are not frozen and not buffers (what an optimizer should update).
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .filter(|(_, v)| v.requires_grad())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn get_var(&self, name: &str) -> Option<Var> {
        self.lock().get(name).cloned()
    }

    /// Add (or replace) a variable.
    pub fn insert(&self, name: impl Into<String>, var: Var) {
        self.lock().insert(name.into(), var);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Number of scalar parameters (frozen included, buffers excluded).
    pub fn num_parameters(&self) -> usize {
        let bufs = self.buffer_names().clone();
        self.lock()
            .iter()
            .filter(|(k, _)| !bufs.contains(*k))
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// Number of scalar parameters that are not frozen.
    pub fn num_trainable_parameters(&self) -> usize {
        self.lock()
            .values()
            .filter(|v| v.requires_grad())
            .map(|v| v.elem_count())
            .sum()
    }

    /// Freeze every variable whose name matches `pattern` (`*` matches any run of
    /// characters, e.g. `encoder.*` or `*.bias`); returns how many matched.
    pub fn freeze(&self, pattern: &str) -> usize {
        self.set_requires_grad(pattern, false)
    }

    /// Undo [`VarMap::freeze`] for the names matching `pattern`.
    pub fn unfreeze(&self, pattern: &str) -> usize {
        self.set_requires_grad(pattern, true)
    }

    fn set_requires_grad(&self, pattern: &str, on: bool) -> usize {
        let bufs = self.buffer_names().clone();
        let vars = self.lock();
        let mut n = 0;
        for (k, v) in vars.iter() {
            if glob_match(pattern, k) && !bufs.contains(k) {
                v.set_requires_grad(on);
                n += 1;
            }
        }
        n
    }

    /// The current values, detached, by name (a `state_dict`).
    pub fn state_dict(&self) -> HashMap<String, Tensor> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Overwrite the variables' values from `tensors` (in place: optimizers holding the
    /// variables see the new values). Shapes must match. With `strict`, a variable missing
    /// from `tensors` or a tensor with no variable is an error (like PyTorch's
    /// `load_state_dict`); otherwise returns `(missing, unexpected)` names.
    pub fn load_state_dict(
        &self,
        tensors: &HashMap<String, Tensor>,
        strict: bool,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let vars = self.lock();
        let missing: Vec<String> = vars
            .keys()
            .filter(|k| !tensors.contains_key(*k))
            .cloned()
            .collect();
        let mut unexpected: Vec<String> = tensors
            .keys()
            .filter(|k| !vars.contains_key(*k))
            .cloned()
            .collect();
        unexpected.sort();
        if strict && (!missing.is_empty() || !unexpected.is_empty()) {
            return Err(Error::invalid(
                "load_state_dict",
                format!("missing keys {missing:?}, unexpected keys {unexpected:?}"),
            ));
        }
        // Check every shape before writing anything, so a bad checkpoint changes nothing.
        for (k, v) in vars.iter() {
            if let Some(t) = tensors.get(k) {
                if t.shape() != v.shape() {
                    return Err(Error::invalid(
                        "load_state_dict",
                        format!(
                            "'{k}': checkpoint has shape {:?}, the model {:?}",
                            t.dims(),
                            v.dims()
                        ),
                    ));
                }
            }
        }
        for (k, v) in vars.iter() {
            if let Some(t) = tensors.get(k) {
                let t = if t.device().same_device(v.device()) {
                    t.clone()
                } else {
                    t.to_device(v.device())?
                };
                v.set(&t)?;
            }
        }
        Ok((missing, unexpected))
    }
}

impl WeightSource for VarMap {
    fn get(
        &self,
        name: &str,
        shape: &Shape,
        init: &Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let mut vars = self.lock();
        if let Some(v) = vars.get(name) {
            if v.shape() != shape {
                return Err(Error::invalid(
                    "VarMap::get",
                    format!(
                        "variable '{name}' exists with shape {:?}, requested {shape:?}",
                        v.dims()
                    ),
                ));
            }
            return Ok(v.as_tensor().clone());
        }
        let v = Var::from_tensor(&init.make(shape, dtype, device)?)?;
        vars.insert(name.to_string(), v.clone());
        Ok(v.into_inner())
    }

    fn get_buffer(
        &self,
        name: &str,
        shape: &Shape,
        init: &Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let exists = self.lock().contains_key(name);
        let t = self.get(name, shape, init, dtype, device)?;
        if !exists {
            self.buffer_names().insert(name.to_string());
            if let Some(v) = self.get_var(name) {
                v.set_requires_grad(false);
            }
        }
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}

/// `*` matches any (possibly empty) run of characters; everything else literally.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("encoder.*", "encoder.layers.0.weight"));
        assert!(glob_match("*.bias", "fc.bias"));
        assert!(glob_match(
            "*layers.*.attn*",
            "model.layers.3.attn.q.weight"
        ));
        assert!(!glob_match("*.bias", "fc.weight"));
        assert!(glob_match("fc.weight", "fc.weight"));
        assert!(!glob_match("a*a", "a"));
    }

    #[test]
    fn varmap_creates_once_and_freezes() -> Result<()> {
        let dev = tensor_cpu::device();
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
        let w = vb.pp("fc").get_with_init((3, 2), "weight", Init::ONES)?;
        let w2 = vb.pp("fc").get_with_init((3, 2), "weight", Init::ZEROS)?;
        assert_eq!(w.id(), w2.id());
        assert!(vb
            .pp("fc")
            .get_with_init((2, 2), "weight", Init::ONES)
            .is_err());
        vb.pp("fc").get((3,), "bias")?;
        assert_eq!(map.num_parameters(), 9);
        assert_eq!(map.freeze("*.bias"), 1);
        assert_eq!(map.num_trainable_parameters(), 6);
        let b = map.get_var("fc.bias").expect("created");
        assert!(!b.as_tensor().tracked());
        let y = b.as_tensor().add_scalar(1.0)?;
        assert!(!y.tracked());
        map.unfreeze("*");
        assert!(b.as_tensor().add_scalar(1.0)?.tracked());
        Ok(())
    }

    #[test]
    fn tensor_map_checks_names_and_shapes() -> Result<()> {
        let dev = tensor_cpu::device();
        let mut m = HashMap::new();
        m.insert(
            "enc.fc.weight".to_string(),
            Tensor::zeros((2, 2), DType::F64, &dev)?,
        );
        let vb = VarBuilder::from_tensors(m, DType::F32, &dev);
        let w = vb.pp("enc").pp("fc").get((2, 2), "weight")?;
        assert_eq!(w.dtype(), DType::F32);
        let e = vb.pp("fc").get((2, 2), "weight").unwrap_err().to_string();
        assert!(
            e.contains("fc.weight") && e.contains("enc.fc.weight"),
            "{e}"
        );
        let e = vb
            .pp("enc.fc")
            .get((3, 2), "weight")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[2, 2]"), "{e}");
        Ok(())
    }

    #[test]
    fn load_state_dict_is_all_or_nothing() -> Result<()> {
        let dev = tensor_cpu::device();
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
        vb.get_with_init((2,), "a", Init::ZEROS)?;
        vb.get_with_init((2,), "b", Init::ZEROS)?;
        let mut sd = HashMap::new();
        sd.insert("a".to_string(), Tensor::ones((2,), DType::F32, &dev)?);
        sd.insert("b".to_string(), Tensor::ones((3,), DType::F32, &dev)?);
        assert!(map.load_state_dict(&sd, false).is_err());
        assert_eq!(map.get_var("a").unwrap().to_vec::<f32>()?, vec![0.0, 0.0]);
        sd.insert("b".to_string(), Tensor::ones((2,), DType::F32, &dev)?);
        sd.insert("c".to_string(), Tensor::ones((2,), DType::F32, &dev)?);
        assert!(map.load_state_dict(&sd, true).is_err());
        let (missing, unexpected) = map.load_state_dict(&sd, false)?;
        assert!(missing.is_empty());
        assert_eq!(unexpected, vec!["c".to_string()]);
        assert_eq!(map.get_var("b").unwrap().to_vec::<f32>()?, vec![1.0, 1.0]);
        Ok(())
    }
}
