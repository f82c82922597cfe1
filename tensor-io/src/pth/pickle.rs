//! A small pickle virtual machine for `torch.save` state dicts.
//!
//! It knows the opcodes pickle protocols 2–5 emit for plain data (and the few protocol-0
//! ones that still show up), and gives meaning to an allow-list of globals only:
//! `collections.OrderedDict`, the `torch._utils._rebuild_tensor_v2/_v3` and
//! `_rebuild_parameter` rebuilders, `torch.*Storage` classes, `torch.<dtype>` and `torch.Size`.
//! Nothing is ever executed: any other global, any other opcode, is refused with an error.
//! Tensors come out as [`TensorRecord`]s (storage key, element type, offset, size, stride);
//! the caller reads the storages from the archive.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::safetensors::StDtype;

type R<T> = std::result::Result<T, String>;

/// The element type of a storage or tensor: one we can decode, or a named one we cannot.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Elem {
    Known(StDtype),
    Unsupported(String),
}

/// A tensor found in the pickle: a view of storage `key` (`archive/data/<key>`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorRecord {
    pub key: String,
    pub elem: Elem,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A non-tensor leaf of the pickled object tree.
#[derive(Clone, Debug, PartialEq)]
pub enum PthValue {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in `i64`, as Python's little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    /// Something we do not interpret (a bare storage, a dtype, a global), described.
    Other(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    /// `torch.FloatStorage` etc. (`torch.storage.UntypedStorage` is `Known(U8)`).
    StorageClass(Elem),
    /// `torch.float32` etc.
    Dtype(Elem),
    TorchSize,
    TorchDevice,
}

/// Lists and dicts are shared and mutable, as in Python: the memo hands out the same object.
type ListRef = Rc<RefCell<Vec<Value>>>;
type DictRef = Rc<RefCell<Vec<(Value, Value)>>>;

#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Rc<Vec<u8>>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<Vec<u8>>),
    Tuple(Rc<Vec<Value>>),
    List(ListRef),
    Dict(DictRef),
    Global(Rc<Global>),
    Storage(Rc<(String, Elem)>),
    Tensor(Rc<TensorRecord>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

fn storage_elem(name: &str) -> Option<Elem> {
    let known = |d| Some(Elem::Known(d));
    match name {
        "FloatStorage" => known(StDtype::F32),
        "DoubleStorage" => known(StDtype::F64),
        "HalfStorage" => known(StDtype::F16),
        "BFloat16Storage" => known(StDtype::BF16),
        "LongStorage" => known(StDtype::I64),
        "IntStorage" => known(StDtype::I32),
        "ShortStorage" => known(StDtype::I16),
        "CharStorage" => known(StDtype::I8),
        "ByteStorage" => known(StDtype::U8),
        "BoolStorage" => known(StDtype::Bool),
        "ComplexFloatStorage" => known(StDtype::C64),
        "ComplexDoubleStorage"
        | "QInt8Storage"
        | "QUInt8Storage"
        | "QInt32Storage"
        | "QUInt4x2Storage"
        | "QUInt2x4Storage" => Some(Elem::Unsupported(name.to_string())),
        _ => None,
    }
}

fn dtype_elem(name: &str) -> Option<Elem> {
    let known = |d| Some(Elem::Known(d));
    match name {
        "float32" | "float" => known(StDtype::F32),
        "float64" | "double" => known(StDtype::F64),
        "float16" | "half" => known(StDtype::F16),
        "bfloat16" => known(StDtype::BF16),
        "int64" | "long" => known(StDtype::I64),
        "int32" | "int" => known(StDtype::I32),
        "int16" | "short" => known(StDtype::I16),
        "int8" => known(StDtype::I8),
        "uint8" => known(StDtype::U8),
        "uint16" => known(StDtype::U16),
        "uint32" => known(StDtype::U32),
        "uint64" => known(StDtype::U64),
        "bool" => known(StDtype::Bool),
        "float8_e4m3fn" => known(StDtype::F8E4M3),
        "float8_e5m2" => known(StDtype::F8E5M2),
        "float8_e8m0fnu" => known(StDtype::F8E8M0),
        "complex64" | "cfloat" => known(StDtype::C64),
        "complex128" | "cdouble" | "complex32" | "float8_e4m3fnuz" | "float8_e5m2fnuz"
        | "qint8" | "quint8" | "qint32" | "quint4x2" | "quint2x4" => {
            Some(Elem::Unsupported(format!("torch.{name}")))
        }
        _ => None,
    }
}

fn resolve_global(module: &str, name: &str) -> R<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor_v3") => Some(Global::RebuildTensorV3),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameterWithState)
        }
        ("torch.storage", "UntypedStorage") | ("torch", "UntypedStorage") => {
            Some(Global::StorageClass(Elem::Known(StDtype::U8)))
        }
        ("torch", "Size") => Some(Global::TorchSize),
        ("torch", "device") => Some(Global::TorchDevice),
        ("torch", n) => storage_elem(n)
            .map(Global::StorageClass)
            .or_else(|| dtype_elem(n).map(Global::Dtype)),
        _ => None,
    };
    g.ok_or_else(|| {
        format!(
            "refusing pickle global '{module}.{name}': only tensor/storage rebuilders, torch \
             dtypes and collections.OrderedDict are allowed (the file holds more than a plain \
             state dict, e.g. a whole pickled module)"
        )
    })
}

fn as_int(v: &Value, what: &str) -> R<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(*b as i64),
        other => Err(format!("{what}: expected an int, got {}", other.kind())),
    }
}

fn as_usize(v: &Value, what: &str) -> R<usize> {
    let i = as_int(v, what)?;
    usize::try_from(i).map_err(|_| format!("{what}: {i} is negative or too large"))
}

fn as_usizes(v: &Value, what: &str) -> R<Vec<usize>> {
    let items: Vec<Value> = match v {
        Value::Tuple(t) => t.as_ref().clone(),
        Value::List(l) => l.borrow().clone(),
        other => return Err(format!("{what}: expected a tuple, got {}", other.kind())),
    };
    items.iter().map(|x| as_usize(x, what)).collect()
}

fn as_str(v: &Value, what: &str) -> R<String> {
    match v {
        Value::Str(s) => Ok(s.to_string()),
        other => Err(format!("{what}: expected a str, got {}", other.kind())),
    }
}

fn call(g: &Global, args: &[Value]) -> R<Value> {
    let need = |n: usize, f: &str| -> R<()> {
        if args.len() < n {
            Err(format!("{f} needs {n} arguments, got {}", args.len()))
        } else {
            Ok(())
        }
    };
    match g {
        Global::OrderedDict => {
            let mut items = Vec::new();
            if let Some(a) = args.first() {
                let pairs: Vec<Value> = match a {
                    Value::List(l) => l.borrow().clone(),
                    Value::Tuple(t) => t.as_ref().clone(),
                    other => {
                        return Err(format!(
                            "OrderedDict: expected a list of pairs, got {}",
                            other.kind()
                        ))
                    }
                };
                for p in pairs {
                    match p {
                        Value::Tuple(t) if t.len() == 2 => items.push((t[0].clone(), t[1].clone())),
                        _ => return Err("OrderedDict: items must be pairs".into()),
                    }
                }
            }
            Ok(Value::Dict(Rc::new(RefCell::new(items))))
        }
        Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
            let v3 = *g == Global::RebuildTensorV3;
            let f = if v3 {
                "_rebuild_tensor_v3"
            } else {
                "_rebuild_tensor_v2"
            };
            need(if v3 { 7 } else { 4 }, f)?;
            let (key, storage_elem) = match &args[0] {
                Value::Storage(s) => (s.0.clone(), s.1.clone()),
                other => return Err(format!("{f}: expected a storage, got {}", other.kind())),
            };
            let elem = if v3 {
                match &args[6] {
                    Value::Global(g) => match g.as_ref() {
                        Global::Dtype(e) => e.clone(),
                        _ => return Err(format!("{f}: 7th argument is not a dtype")),
                    },
                    other => return Err(format!("{f}: expected a dtype, got {}", other.kind())),
                }
            } else {
                storage_elem
            };
            let offset = as_usize(&args[1], "storage offset")?;
            let size = as_usizes(&args[2], "tensor size")?;
            let stride = as_usizes(&args[3], "tensor stride")?;
            if size.len() != stride.len() {
                return Err(format!(
                    "{f}: size {size:?} and stride {stride:?} differ in rank"
                ));
            }
            Ok(Value::Tensor(Rc::new(TensorRecord {
                key,
                elem,
                offset,
                size,
                stride,
            })))
        }
        Global::RebuildParameter | Global::RebuildParameterWithState => {
            need(1, "_rebuild_parameter")?;
            match &args[0] {
                t @ Value::Tensor(_) => Ok(t.clone()),
                other => Err(format!(
                    "_rebuild_parameter: expected a tensor, got {}",
                    other.kind()
                )),
            }
        }
        Global::TorchSize => {
            need(1, "torch.Size")?;
            let dims = as_usizes(&args[0], "torch.Size")?;
            Ok(Value::Tuple(Rc::new(
                dims.into_iter().map(|d| Value::Int(d as i64)).collect(),
            )))
        }
        Global::TorchDevice => {
            need(1, "torch.device")?;
            let mut s = as_str(&args[0], "torch.device")?;
            if let Some(Value::Int(i)) = args.get(1) {
                s = format!("{s}:{i}");
            }
            Ok(Value::Str(s.into()))
        }
        Global::StorageClass(_) | Global::Dtype(_) => Err(format!(
            "{g:?} cannot be called while unpickling a state dict"
        )),
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "pickle truncated: needs {n} more bytes at byte {}",
                    self.pos
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn len_u64(&mut self) -> R<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| format!("length {n} too large"))
    }
    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("pickle truncated: unterminated text line")?;
        let s = std::str::from_utf8(&rest[..nl]).map_err(|_| "text line is not UTF-8")?;
        self.pos += nl + 1;
        Ok(s)
    }
    fn pop(&mut self) -> R<Value> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }
    fn top(&self) -> R<&Value> {
        self.stack
            .last()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }
    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let m = self.marks.pop().ok_or("pickle MARK missing")?;
        if m > self.stack.len() {
            return Err("pickle MARK past the stack".into());
        }
        Ok(self.stack.split_off(m))
    }
    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }
    fn memo_put(&mut self, idx: u64) -> R<()> {
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }
    fn memo_get(&mut self, idx: u64) -> R<()> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| format!("pickle memo key {idx} missing"))?;
        self.push(v);
        Ok(())
    }
    fn top_dict(&self, op: &str) -> R<DictRef> {
        match self.top()? {
            Value::Dict(d) => Ok(d.clone()),
            other => Err(format!("{op} on a {}, expected a dict", other.kind())),
        }
    }
    fn top_list(&self, op: &str) -> R<ListRef> {
        match self.top()? {
            Value::List(l) => Ok(l.clone()),
            other => Err(format!("{op} on a {}, expected a list", other.kind())),
        }
    }
    fn bytes_value(&mut self, n: usize) -> R<Value> {
        Ok(Value::Bytes(Rc::new(self.take(n)?.to_vec())))
    }
    fn str_value(&mut self, n: usize) -> R<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| "pickle string is not UTF-8".to_string())?;
        Ok(Value::Str(s.into()))
    }
    fn long(&mut self, n: usize) -> R<Value> {
        let b = self.take(n)?;
        if n == 0 {
            return Ok(Value::Int(0));
        }
        if n <= 8 {
            let fill = if b[n - 1] & 0x80 != 0 { 0xFF } else { 0 };
            let mut buf = [fill; 8];
            buf[..n].copy_from_slice(b);
            return Ok(Value::Int(i64::from_le_bytes(buf)));
        }
        Ok(Value::BigInt(Rc::new(b.to_vec())))
    }

    fn run(&mut self) -> R<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            self.step(op)
                .map_err(|e| format!("pickle opcode 0x{op:02x} at byte {at}: {e}"))?;
            if op == b'.' {
                return self.pop();
            }
        }
    }

    fn step(&mut self, op: u8) -> R<()> {
        match op {
            0x80 => {
                let proto = self.u8()?;
                if proto > 5 {
                    return Err(format!("unsupported pickle protocol {proto}"));
                }
            }
            0x95 => {
                self.u64()?; // FRAME: frames are transparent here
            }
            b'.' => {} // STOP, handled by `run`
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?.clone();
                self.push(v);
            }
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => {
                let v = self.u32()? as i32;
                self.push(Value::Int(v as i64));
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v as i64));
            }
            b'M' => {
                let v = self.u16()?;
                self.push(Value::Int(v as i64));
            }
            0x8a => {
                let n = self.u8()? as usize;
                let v = self.long(n)?;
                self.push(v);
            }
            0x8b => {
                let n = self.u32()? as i32;
                let n = usize::try_from(n).map_err(|_| "negative LONG4 length")?;
                let v = self.long(n)?;
                self.push(v);
            }
            b'I' => {
                let l = self.line()?;
                let v = match l {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(l.parse().map_err(|_| format!("bad INT '{l}'"))?),
                };
                self.push(v);
            }
            b'L' => {
                let l = self.line()?;
                let v = l
                    .trim_end_matches('L')
                    .parse()
                    .map_err(|_| format!("bad LONG '{l}'"))?;
                self.push(Value::Int(v));
            }
            b'F' => {
                let l = self.line()?;
                let v = l.parse().map_err(|_| format!("bad FLOAT '{l}'"))?;
                self.push(Value::Float(v));
            }
            b'G' => {
                let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8"));
                self.push(Value::Float(v));
            }
            b'X' => {
                let n = self.u32()? as usize;
                let v = self.str_value(n)?;
                self.push(v);
            }
            0x8c => {
                let n = self.u8()? as usize;
                let v = self.str_value(n)?;
                self.push(v);
            }
            0x8d => {
                let n = self.len_u64()?;
                let v = self.str_value(n)?;
                self.push(v);
            }
            // Python 2 byte strings: text for our purposes.
            b'T' | b'U' => {
                let n = if op == b'T' {
                    self.u32()? as usize
                } else {
                    self.u8()? as usize
                };
                let b = self.take(n)?;
                self.push(Value::Str(String::from_utf8_lossy(b).as_ref().into()));
            }
            b'B' => {
                let n = self.u32()? as usize;
                let v = self.bytes_value(n)?;
                self.push(v);
            }
            b'C' => {
                let n = self.u8()? as usize;
                let v = self.bytes_value(n)?;
                self.push(v);
            }
            0x8e | 0x96 => {
                let n = self.len_u64()?;
                let v = self.bytes_value(n)?;
                self.push(v);
            }
            b')' => self.push(Value::Tuple(Rc::new(Vec::new()))),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err("pickle stack underflow".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Value::Tuple(Rc::new(items)));
            }
            b']' | 0x8f => self.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b'l' | 0x91 => {
                let items = self.pop_mark()?;
                self.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'a' => {
                let v = self.pop()?;
                self.top_list("APPEND")?.borrow_mut().push(v);
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.top_list("APPENDS")?.borrow_mut().extend(items);
            }
            b'}' => self.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.push(Value::Dict(Rc::new(RefCell::new(pairs))));
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.top_dict("SETITEM")?.borrow_mut().push((k, v));
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.top_dict("SETITEMS")?.borrow_mut().extend(pairs);
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let g = resolve_global(module, name)?;
                self.push(Value::Global(Rc::new(g)));
            }
            0x93 => {
                let name = as_str(&self.pop()?, "STACK_GLOBAL name")?;
                let module = as_str(&self.pop()?, "STACK_GLOBAL module")?;
                let g = resolve_global(&module, &name)?;
                self.push(Value::Global(Rc::new(g)));
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let f = self.pop()?;
                let args: Vec<Value> = match args {
                    Value::Tuple(t) => t.as_ref().clone(),
                    other => return Err(format!("call arguments are a {}", other.kind())),
                };
                let g = match f {
                    Value::Global(g) => g,
                    other => return Err(format!("cannot call a {}", other.kind())),
                };
                let v = call(&g, &args)?;
                self.push(v);
            }
            b'b' => {
                // BUILD sets object state (e.g. a state dict's `_metadata`): nothing we keep.
                self.pop()?;
                self.top()?;
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = persistent_load(&pid)?;
                self.push(v);
            }
            b'q' => {
                let i = self.u8()? as u64;
                self.memo_put(i)?;
            }
            b'r' => {
                let i = self.u32()? as u64;
                self.memo_put(i)?;
            }
            b'p' => {
                let l = self.line()?;
                let i = l.parse().map_err(|_| format!("bad PUT '{l}'"))?;
                self.memo_put(i)?;
            }
            0x94 => {
                let i = self.memo.len() as u64;
                self.memo_put(i)?;
            }
            b'h' => {
                let i = self.u8()? as u64;
                self.memo_get(i)?;
            }
            b'j' => {
                let i = self.u32()? as u64;
                self.memo_get(i)?;
            }
            b'g' => {
                let l = self.line()?;
                let i = l.parse().map_err(|_| format!("bad GET '{l}'"))?;
                self.memo_get(i)?;
            }
            _ => return Err("unsupported pickle opcode".into()),
        }
        Ok(())
    }
}

fn pairs(items: Vec<Value>) -> R<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items for a dict".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// `('storage', storage_type, key, location, numel)` → a storage reference.
fn persistent_load(pid: &Value) -> R<Value> {
    let t = match pid {
        Value::Tuple(t) => t,
        other => {
            return Err(format!(
                "persistent id is a {}, expected a tuple",
                other.kind()
            ))
        }
    };
    if t.len() < 5 {
        return Err(format!("persistent id has {} fields, expected 5", t.len()));
    }
    let tag = as_str(&t[0], "persistent id tag")?;
    if tag != "storage" {
        return Err(format!("persistent id tag '{tag}' (expected 'storage')"));
    }
    let elem = match &t[1] {
        Value::Global(g) => match g.as_ref() {
            Global::StorageClass(e) => e.clone(),
            Global::Dtype(e) => e.clone(),
            other => return Err(format!("persistent id names {other:?}, not a storage type")),
        },
        other => return Err(format!("storage type is a {}", other.kind())),
    };
    let key = match &t[2] {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        other => return Err(format!("storage key is a {}", other.kind())),
    };
    Ok(Value::Storage(Rc::new((key, elem))))
}

/// Tensors and other leaves by dotted name, in pickle order.
pub(crate) type Loaded = (Vec<(String, TensorRecord)>, Vec<(String, PthValue)>);

/// Run the pickle in `data` and flatten the resulting object into dotted names.
pub(crate) fn load(data: &[u8]) -> R<Loaded> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = m.run()?;
    let mut out = Flat::default();
    flatten(&root, String::new(), 0, &mut out)?;
    Ok((out.tensors, out.values))
}

#[derive(Default)]
struct Flat {
    tensors: Vec<(String, TensorRecord)>,
    values: Vec<(String, PthValue)>,
    seen: HashMap<String, (bool, usize)>,
}

impl Flat {
    fn tensor(&mut self, name: String, t: TensorRecord) {
        // A later duplicate key replaces the earlier one, as in a Python dict.
        match self.seen.get(&name) {
            Some((true, i)) => self.tensors[*i].1 = t,
            _ => {
                self.seen.insert(name.clone(), (true, self.tensors.len()));
                self.tensors.push((name, t));
            }
        }
    }
    fn value(&mut self, name: String, v: PthValue) {
        match self.seen.get(&name) {
            Some((false, i)) => self.values[*i].1 = v,
            _ => {
                self.seen.insert(name.clone(), (false, self.values.len()));
                self.values.push((name, v));
            }
        }
    }
}

fn key_string(k: &Value) -> R<String> {
    Ok(match k {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Value::None => "None".to_string(),
        Value::Float(f) => f.to_string(),
        Value::Tuple(t) => t.iter().map(key_string).collect::<R<Vec<_>>>()?.join(","),
        other => {
            return Err(format!(
                "dict key of type {} is not supported",
                other.kind()
            ))
        }
    })
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

const MAX_DEPTH: usize = 64;

fn flatten(v: &Value, name: String, depth: usize, out: &mut Flat) -> R<()> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "object nested deeper than {MAX_DEPTH} levels at '{name}' (cyclic?)"
        ));
    }
    match v {
        Value::Tensor(t) => out.tensor(name, t.as_ref().clone()),
        Value::Dict(d) => {
            for (k, v) in d.borrow().iter() {
                flatten(v, join(&name, &key_string(k)?), depth + 1, out)?;
            }
        }
        Value::List(l) => {
            for (i, v) in l.borrow().iter().enumerate() {
                flatten(v, join(&name, &i.to_string()), depth + 1, out)?;
            }
        }
        Value::Tuple(t) => {
            for (i, v) in t.iter().enumerate() {
                flatten(v, join(&name, &i.to_string()), depth + 1, out)?;
            }
        }
        Value::None => out.value(name, PthValue::None),
        Value::Bool(b) => out.value(name, PthValue::Bool(*b)),
        Value::Int(i) => out.value(name, PthValue::Int(*i)),
        Value::BigInt(b) => out.value(name, PthValue::BigInt(b.as_ref().clone())),
        Value::Float(f) => out.value(name, PthValue::Float(*f)),
        Value::Str(s) => out.value(name, PthValue::Str(s.to_string())),
        Value::Bytes(b) => out.value(name, PthValue::Bytes(b.as_ref().clone())),
        Value::Global(g) => out.value(name, PthValue::Other(format!("{g:?}"))),
        Value::Storage(s) => out.value(name, PthValue::Other(format!("storage '{}'", s.0))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_and_memo() {
        // {'a': [1, -2, 1.5, 'x', True, None, 2**70], 'b': <memo of the list>}
        let mut p = vec![
            0x80, 2, b'}', b'q', 0, b'(', 0x8c, 1, b'a', b']', b'q', 1, b'(',
        ];
        p.extend([b'K', 1, b'J']);
        p.extend((-2i32).to_le_bytes());
        p.push(b'G');
        p.extend(1.5f64.to_be_bytes());
        p.extend([0x8c, 1, b'x', 0x88, b'N', 0x8a, 9]);
        p.extend([0, 0, 0, 0, 0, 0, 0, 0, 0x40]);
        p.extend([b'e', 0x8c, 1, b'b', b'h', 1, b'u', b'.']);
        let (tensors, values) = load(&p).unwrap();
        assert!(tensors.is_empty());
        assert_eq!(values.len(), 14);
        assert_eq!(values[0], ("a.0".into(), PthValue::Int(1)));
        assert_eq!(values[1], ("a.1".into(), PthValue::Int(-2)));
        assert_eq!(values[2], ("a.2".into(), PthValue::Float(1.5)));
        assert_eq!(values[3], ("a.3".into(), PthValue::Str("x".into())));
        assert_eq!(values[4], ("a.4".into(), PthValue::Bool(true)));
        assert_eq!(values[5], ("a.5".into(), PthValue::None));
        assert!(matches!(values[6].1, PthValue::BigInt(_)));
        // The memoised list is the same object: 'b' sees the appended items.
        assert_eq!(values[7], ("b.0".into(), PthValue::Int(1)));
    }

    #[test]
    fn refuses_unknown_globals_and_opcodes() {
        let p = b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85R.";
        let e = load(p).unwrap_err();
        assert!(e.contains("posix.system") && e.contains("refusing"), "{e}");
        let e = load(b"\x80\x02S'x'\n.").unwrap_err();
        assert!(e.contains("unsupported pickle opcode"), "{e}");
    }

    #[test]
    fn malformed_pickles_are_errors() {
        for p in [
            &b""[..],
            b"\x80\x02",
            b"\x80\x02X\xff\xff\xff\xff",
            b"\x80\x02t.",
            b"\x80\x02h\x05.",
            b"\x80\x02)R.",
            b"\x80\x02K\x01K\x02s.",
            b"\x80\x09.",
        ] {
            assert!(load(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn cyclic_list_is_an_error_not_a_stack_overflow() {
        // l = []; l.append(l)
        let p = b"\x80\x02]q\x00h\x00a.";
        let e = load(p).unwrap_err();
        assert!(e.contains("cyclic"), "{e}");
    }
}
