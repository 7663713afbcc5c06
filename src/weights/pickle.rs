//! A restricted unpickler for the `data.pkl` of PyTorch zip checkpoints.
//!
//! It understands the opcodes `torch.save` emits (protocol 2, plus the few protocol-4 framing
//! opcodes) and builds plain data: numbers, strings, tuples, lists, dicts, storages and tensor
//! references. Globals are resolved against a short allow-list (tensor rebuild functions, storage
//! types, `collections.OrderedDict`) to *markers*; nothing is imported, called or executed.
//!
//! Training checkpoints also hold Python objects beside the weights: a learning-rate scheduler's
//! `collections.Counter` of milestones, a `numpy` scalar score, an `argparse.Namespace` of
//! arguments. Any other class is therefore kept as an inert [`Obj::Opaque`] that records its name:
//! calling it, instantiating it or setting its state yields the same opaque object, never code, and
//! only the tensors of the state dict are ever read. Globals that name code rather than data
//! (`os.system`, `builtins.eval`, `subprocess`, …) cannot come from `torch.save` of a model and are
//! refused with an error naming them and their byte offset, as is every unknown opcode.

use crate::error::{Error, Result};
use crate::tensor::DType;
use std::collections::HashMap;

/// Index of an object in the [`Pickle`] arena.
pub type Id = usize;

/// Element type of a torch storage as named by its legacy storage class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    /// `torch.FloatStorage`
    Float,
    /// `torch.HalfStorage`
    Half,
    /// `torch.BFloat16Storage`
    BFloat16,
    /// `torch.DoubleStorage` (converted to f32 on load)
    Double,
    /// `torch.LongStorage`
    Long,
    /// `torch.IntStorage`
    Int,
    /// `torch.ShortStorage` (widened to i32)
    Short,
    /// `torch.CharStorage` (int8, widened to i32)
    Char,
    /// `torch.ByteStorage`
    Byte,
    /// `torch.BoolStorage`
    Bool,
}

impl StorageType {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::Float,
            "HalfStorage" => Self::Half,
            "BFloat16Storage" => Self::BFloat16,
            "DoubleStorage" => Self::Double,
            "LongStorage" => Self::Long,
            "IntStorage" => Self::Int,
            "ShortStorage" => Self::Short,
            "CharStorage" => Self::Char,
            "ByteStorage" => Self::Byte,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element in the file.
    pub fn elem_size(self) -> usize {
        match self {
            Self::Double | Self::Long => 8,
            Self::Float | Self::Int => 4,
            Self::Half | Self::BFloat16 | Self::Short => 2,
            Self::Char | Self::Byte | Self::Bool => 1,
        }
    }

    /// The torch dtype name, for inventories.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::Float => "float32",
            Self::Half => "float16",
            Self::BFloat16 => "bfloat16",
            Self::Double => "float64",
            Self::Long => "int64",
            Self::Int => "int32",
            Self::Short => "int16",
            Self::Char => "int8",
            Self::Byte => "uint8",
            Self::Bool => "bool",
        }
    }

    /// Our in-memory dtype for this storage type, if it maps one-to-one.
    pub fn dtype(self) -> Option<DType> {
        Some(match self {
            Self::Float => DType::F32,
            Self::Half => DType::F16,
            Self::BFloat16 => DType::BF16,
            Self::Long => DType::I64,
            Self::Int => DType::I32,
            Self::Byte => DType::U8,
            Self::Bool => DType::Bool,
            Self::Double | Self::Short | Self::Char => return None,
        })
    }
}

/// An allow-listed global: a marker, never a callable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`
    RebuildParameter,
    /// `torch._tensor._rebuild_from_type_v2`
    RebuildFromTypeV2,
    /// `torch.Tensor` / `torch.nn.parameter.Parameter` used as a type tag
    TensorType,
    /// A storage class such as `torch.FloatStorage`.
    Storage(StorageType),
}

/// A storage named by a persistent id: `('storage', type, key, location, numel)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// Element type.
    pub ty: StorageType,
    /// Entry name under `<archive>/data/`.
    pub key: String,
    /// Elements in the storage.
    pub numel: usize,
}

/// A tensor view on a storage (`_rebuild_tensor_v2` arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The storage.
    pub storage: StorageRef,
    /// Offset in elements.
    pub offset: usize,
    /// Shape.
    pub size: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// An unpickled object.
#[derive(Debug, Clone, PartialEq)]
pub enum Obj {
    /// `None`
    None,
    /// `True` / `False`
    Bool(bool),
    /// An integer that fits i64.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// bytes
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list.
    List(Vec<Id>),
    /// A dict or OrderedDict, in insertion order.
    Dict(Vec<(Id, Id)>),
    /// An allow-listed global.
    Global(Global),
    /// A storage (boxed, like the tensor: keeps every object small, and a pickle may hold millions).
    Storage(Box<StorageRef>),
    /// A tensor.
    Tensor(Box<TensorRef>),
    /// An object of a class outside the allow-list (or that class itself), never built: its
    /// qualified class name (a training checkpoint's scheduler, score or argument objects).
    Opaque(Box<str>),
}

/// The result of unpickling: an arena of objects and the root.
#[derive(Debug)]
pub struct Pickle {
    /// All objects.
    pub objs: Vec<Obj>,
    /// The object `STOP` returned.
    pub root: Id,
}

impl Pickle {
    /// The object with this id.
    pub fn get(&self, id: Id) -> &Obj {
        &self.objs[id]
    }

    /// The string, if this object is one.
    pub fn as_str(&self, id: Id) -> Option<&str> {
        match &self.objs[id] {
            Obj::Str(s) => Some(s),
            _ => None,
        }
    }
}

enum Item {
    Mark,
    Obj(Id),
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'c' => "GLOBAL",
        0x93 => "STACK_GLOBAL",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        b'i' => "INST",
        b'o' => "OBJ",
        b'R' => "REDUCE",
        b'b' => "BUILD",
        b'P' => "PERSID",
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'p' => "PUT",
        b'g' => "GET",
        b'l' => "LIST",
        b'd' => "DICT",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x8b => "LONG4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::Checkpoint(format!(
                "pickle is truncated: needed {n} more byte(s) at offset {} of {}",
                self.pos,
                self.data.len()
            ))),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let nl = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
            Error::Checkpoint(format!(
                "pickle is truncated: unterminated line at offset {}",
                self.pos
            ))
        })?;
        let s = std::str::from_utf8(&rest[..nl]).map_err(|_| {
            Error::Checkpoint(format!(
                "pickle: non-UTF-8 global name at offset {}",
                self.pos
            ))
        })?;
        self.pos += nl + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: usize, at: usize) -> Result<String> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::Checkpoint(format!("pickle: invalid UTF-8 string at offset {at}")))
    }
}

/// Most units of work one pickle may take: objects created, container items copied (REDUCE copies
/// its arguments), stack pushes and memo entries, counted together. A unit holds a few dozen bytes,
/// so this bounds memory (and time) on hostile input to a few hundred MB: a tiny compressed pickle
/// could otherwise push tens of millions of objects, or REDUCE one shared list of a million pairs
/// thousands of times. torch.save spends about 40 units per tensor, so a Swin-B ReferDINO state
/// dict (~2 000 tensors) takes ~10^5 and a training checkpoint with Adam state a few times that:
/// ample headroom.
pub const MAX_PICKLE_WORK: usize = 5_000_000;

struct Machine {
    objs: Vec<Obj>,
    stack: Vec<Item>,
    memo: HashMap<u32, Id>,
    /// Units of work spent so far (see [`MAX_PICKLE_WORK`]).
    work: usize,
    /// The limit on `work`.
    max_work: usize,
}

impl Machine {
    /// Counts `n` units of work, refusing the pickle past its limit.
    fn charge(&mut self, n: usize) -> Result<()> {
        self.work = self.work.saturating_add(n);
        if self.work > self.max_work {
            return Err(Error::Checkpoint(format!(
                "pickle exceeds the limit of {} units of work (objects created, \
                 container items copied, stack pushes and memo entries); a checkpoint's pickle \
                 needs far fewer, so this one is malformed or hostile",
                self.max_work
            )));
        }
        Ok(())
    }
    fn push(&mut self, o: Obj) -> Result<()> {
        self.charge(1)?;
        self.objs.push(o);
        self.stack.push(Item::Obj(self.objs.len() - 1));
        Ok(())
    }
    /// Pushes an existing object (GET, DUP) or a MARK: no new object, but the stack grows.
    fn push_item(&mut self, it: Item) -> Result<()> {
        self.charge(1)?;
        self.stack.push(it);
        Ok(())
    }
    fn pop(&mut self, at: usize) -> Result<Id> {
        match self.stack.pop() {
            Some(Item::Obj(id)) => Ok(id),
            Some(Item::Mark) => Err(Error::Checkpoint(format!(
                "pickle: unexpected MARK on the stack at offset {at}"
            ))),
            None => Err(Error::Checkpoint(format!(
                "pickle: stack underflow at offset {at}"
            ))),
        }
    }
    fn top(&self, at: usize) -> Result<Id> {
        match self.stack.last() {
            Some(Item::Obj(id)) => Ok(*id),
            _ => Err(Error::Checkpoint(format!(
                "pickle: no object on the stack at offset {at}"
            ))),
        }
    }
    fn pop_mark(&mut self, at: usize) -> Result<Vec<Id>> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Item::Obj(id)) => items.push(id),
                Some(Item::Mark) => break,
                None => {
                    return Err(Error::Checkpoint(format!(
                        "pickle: MARK expected but not found (offset {at})"
                    )))
                }
            }
        }
        items.reverse();
        Ok(items)
    }
    fn int(&self, id: Id, what: &str) -> Result<i64> {
        match &self.objs[id] {
            Obj::Int(v) => Ok(*v),
            Obj::Bool(b) => Ok(*b as i64),
            o => Err(Error::Checkpoint(format!(
                "pickle: {what} must be an integer, found {}",
                kind(o)
            ))),
        }
    }
    fn usize(&self, id: Id, what: &str) -> Result<usize> {
        let v = self.int(id, what)?;
        usize::try_from(v).map_err(|_| {
            Error::Checkpoint(format!("pickle: {what} must be non-negative, found {v}"))
        })
    }
    fn usize_tuple(&self, id: Id, what: &str) -> Result<Vec<usize>> {
        match &self.objs[id] {
            Obj::Tuple(v) | Obj::List(v) => v.iter().map(|&x| self.usize(x, what)).collect(),
            o => Err(Error::Checkpoint(format!(
                "pickle: {what} must be a tuple, found {}",
                kind(o)
            ))),
        }
    }
    /// Items of a tuple or list (0 for anything else), for charging copies.
    fn len_of(&self, id: Id) -> usize {
        match &self.objs[id] {
            Obj::Tuple(v) | Obj::List(v) => v.len(),
            _ => 0,
        }
    }
    fn tuple(&self, id: Id, what: &str) -> Result<Vec<Id>> {
        match &self.objs[id] {
            Obj::Tuple(v) => Ok(v.clone()),
            o => Err(Error::Checkpoint(format!(
                "pickle: {what} must be a tuple, found {}",
                kind(o)
            ))),
        }
    }

    /// What calling or instantiating the opaque `class` with `args` gives: an opaque object of that
    /// class (`copyreg._reconstructor(cls, base, state)`, protocol 2's way of making an object, of
    /// `cls`), never anything built.
    fn opaque_result(&self, class: Box<str>, args: Id) -> Obj {
        if &*class == "copyreg._reconstructor" {
            if let Obj::Tuple(a) = &self.objs[args] {
                if let Some(Obj::Opaque(cls)) = a.first().map(|&c| &self.objs[c]) {
                    return Obj::Opaque(cls.clone());
                }
            }
        }
        Obj::Opaque(class)
    }

    /// Applies an allow-listed callable to its argument tuple, producing data (never code).
    fn reduce(&mut self, f: Id, args: Id, at: usize) -> Result<Obj> {
        let g = match &self.objs[f] {
            Obj::Global(g) => *g,
            Obj::Opaque(class) => {
                let class = class.clone();
                self.charge(self.len_of(args))?;
                return Ok(self.opaque_result(class, args));
            }
            o => {
                return Err(Error::Checkpoint(format!(
                    "pickle: REDUCE on a {} at offset {at} is not allowed",
                    kind(o)
                )))
            }
        };
        // Every REDUCE copies its arguments: charge the copies, so that one shared list reduced
        // many times cannot amplify a small pickle into gigabytes.
        self.charge(self.len_of(args))?;
        let a = self.tuple(args, "REDUCE arguments")?;
        match g {
            Global::OrderedDict => {
                let mut pairs = Vec::new();
                if let Some(&items) = a.first() {
                    self.charge(self.len_of(items))?;
                    let list = match &self.objs[items] {
                        Obj::List(v) | Obj::Tuple(v) => v.clone(),
                        o => {
                            return Err(Error::Checkpoint(format!(
                                "pickle: OrderedDict argument must be a list of pairs, found {}",
                                kind(o)
                            )))
                        }
                    };
                    for p in list {
                        let kv = self.tuple(p, "OrderedDict item")?;
                        if kv.len() != 2 {
                            return Err(Error::Checkpoint(
                                "pickle: OrderedDict item is not a pair".into(),
                            ));
                        }
                        pairs.push((kv[0], kv[1]));
                    }
                }
                Ok(Obj::Dict(pairs))
            }
            Global::RebuildTensorV2 => {
                if a.len() < 4 {
                    return Err(Error::Checkpoint(format!(
                        "pickle: _rebuild_tensor_v2 needs at least 4 arguments, found {} (offset {at})",
                        a.len()
                    )));
                }
                let storage = match &self.objs[a[0]] {
                    Obj::Storage(s) => s.clone(),
                    o => {
                        return Err(Error::Checkpoint(format!(
                            "pickle: _rebuild_tensor_v2 expects a storage, found {}",
                            kind(o)
                        )))
                    }
                };
                let offset = self.usize(a[1], "storage offset")?;
                // Size and stride are copied into the tensor: charge them (a shared huge tuple).
                self.charge(self.len_of(a[2]).saturating_add(self.len_of(a[3])))?;
                let size = self.usize_tuple(a[2], "tensor size")?;
                let stride = self.usize_tuple(a[3], "tensor stride")?;
                if size.len() != stride.len() {
                    return Err(Error::Checkpoint(format!(
                        "pickle: tensor size {size:?} and stride {stride:?} differ in rank"
                    )));
                }
                Ok(Obj::Tensor(Box::new(TensorRef {
                    storage: *storage,
                    offset,
                    size,
                    stride,
                })))
            }
            Global::RebuildParameter => match a.first().map(|&t| &self.objs[t]) {
                Some(Obj::Tensor(t)) => {
                    let t = t.clone();
                    self.charge(t.size.len() * 2)?;
                    Ok(Obj::Tensor(t))
                }
                _ => Err(Error::Checkpoint(
                    "pickle: _rebuild_parameter expects a tensor".into(),
                )),
            },
            Global::RebuildFromTypeV2 => {
                // (func, type, args, state): only the plain-tensor rebuild is accepted.
                if a.len() < 3 {
                    return Err(Error::Checkpoint(
                        "pickle: _rebuild_from_type_v2 needs 3 arguments".into(),
                    ));
                }
                // Only one level: the inner callable must be a plain tensor rebuild, so hostile
                // input cannot recurse.
                if !matches!(
                    self.objs[a[0]],
                    Obj::Global(Global::RebuildTensorV2 | Global::RebuildParameter)
                ) {
                    return Err(Error::Checkpoint(
                        "pickle: _rebuild_from_type_v2 must wrap _rebuild_tensor_v2".into(),
                    ));
                }
                match &self.objs[a[1]] {
                    Obj::Global(Global::TensorType) => {}
                    o => {
                        return Err(Error::Checkpoint(format!(
                            "pickle: _rebuild_from_type_v2 of a {} is not allowed",
                            kind(o)
                        )))
                    }
                }
                self.reduce(a[0], a[2], at)
            }
            Global::TensorType | Global::Storage(_) => Err(Error::Checkpoint(format!(
                "pickle: calling {g:?} at offset {at} is not allowed"
            ))),
        }
    }
}

fn kind(o: &Obj) -> &'static str {
    match o {
        Obj::None => "None",
        Obj::Bool(_) => "bool",
        Obj::Int(_) => "int",
        Obj::Float(_) => "float",
        Obj::Str(_) => "str",
        Obj::Bytes(_) => "bytes",
        Obj::Tuple(_) => "tuple",
        Obj::List(_) => "list",
        Obj::Dict(_) => "dict",
        Obj::Global(_) => "global",
        Obj::Storage(_) => "storage",
        Obj::Tensor(_) => "tensor",
        Obj::Opaque(_) => "opaque object",
    }
}

/// Modules whose globals name code, not data: a pickle naming them is an attempt to run something.
const CODE_MODULES: [&str; 20] = [
    "builtins",
    "__builtin__",
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "socket",
    "shutil",
    "importlib",
    "runpy",
    "pickle",
    "marshal",
    "ctypes",
    "pty",
    "code",
    "types",
    "operator",
    "functools",
    "io",
];

/// The object a GLOBAL pushes: an allow-listed marker, or an inert [`Obj::Opaque`].
fn resolve_global(module: &str, name: &str, at: usize) -> Result<Obj> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
        ("torch", "Tensor") | ("torch._tensor", "Tensor") | ("torch.nn.parameter", "Parameter") => {
            Global::TensorType
        }
        ("torch", n) if StorageType::from_name(n).is_some() => {
            Global::Storage(StorageType::from_name(n).expect("checked"))
        }
        // A tensor kind we cannot read: say so rather than call it a foreign object.
        ("torch._utils", "_rebuild_qtensor")
        | ("torch", "QInt8Storage" | "QUInt8Storage")
        | ("torch", "QInt32Storage" | "QUInt4x2Storage" | "QUInt2x4Storage") => {
            return Err(Error::Checkpoint(format!(
                "pickle: `{module}.{name}` at offset {at}: quantized tensors are not supported; \
                 dequantize the model (or load the float checkpoint) and re-save it"
            )))
        }
        _ if CODE_MODULES.contains(&module.split('.').next().unwrap_or(module)) => {
            return Err(Error::Checkpoint(format!(
                "pickle: global `{module}.{name}` at offset {at} is not allowed: it names code, \
                 which no checkpoint of tensors holds (refusing to load the file)"
            )))
        }
        _ => return Ok(Obj::Opaque(format!("{module}.{name}").into())),
    };
    Ok(Obj::Global(g))
}

/// Unpickles `data` with the restricted machine, within [`MAX_PICKLE_WORK`].
pub fn unpickle(data: &[u8]) -> Result<Pickle> {
    unpickle_limited(data, MAX_PICKLE_WORK)
}

/// [`unpickle`] with another work limit (objects created, container items copied, stack pushes
/// and memo entries, counted together); tests use a small one.
pub fn unpickle_limited(data: &[u8], max_work: usize) -> Result<Pickle> {
    let mut r = Reader { data, pos: 0 };
    let mut m = Machine {
        objs: Vec::new(),
        stack: Vec::new(),
        memo: HashMap::new(),
        work: 0,
        max_work,
    };
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 5 {
                    return Err(Error::Checkpoint(format!(
                        "pickle protocol {proto} is not supported"
                    )));
                }
            }
            0x95 => {
                r.u64()?; // FRAME: a length hint only
            }
            b'.' => {
                let root = m.pop(at)?;
                return Ok(Pickle { objs: m.objs, root });
            }
            b'(' => m.push_item(Item::Mark)?,
            b'}' => m.push(Obj::Dict(Vec::new()))?,
            b']' => m.push(Obj::List(Vec::new()))?,
            b')' => m.push(Obj::Tuple(Vec::new()))?,
            b't' => {
                let items = m.pop_mark(at)?;
                m.push(Obj::Tuple(items))?;
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(m.pop(at)?);
                }
                items.reverse();
                m.push(Obj::Tuple(items))?;
            }
            b'q' | b'r' | 0x94 => {
                let idx = match op {
                    b'q' => r.u8()? as u32,
                    b'r' => r.u32()?,
                    _ => m.memo.len() as u32,
                };
                let top = m.top(at)?;
                m.charge(1)?;
                m.memo.insert(idx, top);
            }
            b'h' | b'j' => {
                let idx = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
                let id = *m.memo.get(&idx).ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "pickle: memo entry {idx} used before it is set (offset {at})"
                    ))
                })?;
                m.push_item(Item::Obj(id))?;
            }
            b'J' => {
                let v = i32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
                m.push(Obj::Int(v as i64))?;
            }
            b'K' => {
                let v = r.u8()?;
                m.push(Obj::Int(v as i64))?;
            }
            b'M' => {
                let v = r.u16()?;
                m.push(Obj::Int(v as i64))?;
            }
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                if n > 8 {
                    return Err(Error::Checkpoint(format!(
                        "pickle: integer of {n} bytes at offset {at} does not fit 64 bits"
                    )));
                }
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    [0xffu8; 8]
                } else {
                    [0u8; 8]
                };
                buf[..n].copy_from_slice(b);
                m.push(Obj::Int(i64::from_le_bytes(buf)))?;
            }
            b'N' => m.push(Obj::None)?,
            0x88 => m.push(Obj::Bool(true))?,
            0x89 => m.push(Obj::Bool(false))?,
            b'G' => {
                let v = f64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
                m.push(Obj::Float(v))?;
            }
            b'X' => {
                let n = r.u32()? as usize;
                let s = r.utf8(n, at)?;
                m.push(Obj::Str(s))?;
            }
            0x8c => {
                let n = r.u8()? as usize;
                let s = r.utf8(n, at)?;
                m.push(Obj::Str(s))?;
            }
            0x8d => {
                let n = usize::try_from(r.u64()?)
                    .map_err(|_| Error::Checkpoint("pickle: string too long".into()))?;
                let s = r.utf8(n, at)?;
                m.push(Obj::Str(s))?;
            }
            b'T' | b'U' | b'B' | b'C' | 0x8e => {
                let n = match op {
                    b'U' | b'C' => r.u8()? as usize,
                    0x8e => usize::try_from(r.u64()?)
                        .map_err(|_| Error::Checkpoint("pickle: bytes too long".into()))?,
                    _ => r.u32()? as usize,
                };
                let b = r.take(n)?.to_vec();
                // Python-2 `str` (BINSTRING) is text in practice; keep it as a str when it is UTF-8.
                let o = if matches!(op, b'T' | b'U') {
                    match String::from_utf8(b) {
                        Ok(s) => Obj::Str(s),
                        Err(e) => Obj::Bytes(e.into_bytes()),
                    }
                } else {
                    Obj::Bytes(b)
                };
                m.push(o)?;
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                let g = resolve_global(module, name, at)?;
                m.push(g)?;
            }
            0x93 => {
                let name = m.pop(at)?;
                let module = m.pop(at)?;
                let (Obj::Str(module), Obj::Str(name)) = (&m.objs[module], &m.objs[name]) else {
                    return Err(Error::Checkpoint(format!(
                        "pickle: STACK_GLOBAL needs two strings (offset {at})"
                    )));
                };
                let g = resolve_global(&module.clone(), &name.clone(), at)?;
                m.push(g)?;
            }
            b'Q' => {
                let pid = m.pop(at)?;
                // The id tuple is copied: charge it like REDUCE arguments.
                m.charge(m.len_of(pid))?;
                let t = m.tuple(pid, "persistent id")?;
                let is_storage =
                    t.first().map(|&x| &m.objs[x]) == Some(&Obj::Str("storage".into()));
                if !is_storage || t.len() < 5 {
                    return Err(Error::Checkpoint(format!(
                        "pickle: persistent id at offset {at} is not a ('storage', type, key, location, numel) tuple"
                    )));
                }
                let ty = match &m.objs[t[1]] {
                    Obj::Global(Global::Storage(s)) => *s,
                    o => {
                        return Err(Error::Checkpoint(format!(
                            "pickle: storage type must be a torch storage class, found {}",
                            kind(o)
                        )))
                    }
                };
                let key = match &m.objs[t[2]] {
                    Obj::Str(s) => s.clone(),
                    o => {
                        return Err(Error::Checkpoint(format!(
                            "pickle: storage key must be a str, found {}",
                            kind(o)
                        )))
                    }
                };
                let numel = m.usize(t[4], "storage numel")?;
                m.push(Obj::Storage(Box::new(StorageRef { ty, key, numel })))?;
            }
            // NEWOBJ (cls, args) and NEWOBJ_EX (cls, args, kwargs): protocol 2's instances, only
            // of opaque classes (nothing allow-listed is instantiated this way).
            0x81 | 0x92 => {
                if op == 0x92 {
                    let kwargs = m.pop(at)?;
                    m.charge(m.len_of(kwargs))?;
                }
                let args = m.pop(at)?;
                let cls = m.pop(at)?;
                let Obj::Opaque(class) = &m.objs[cls] else {
                    return Err(Error::Checkpoint(format!(
                        "pickle: {} of a {} at offset {at} is not allowed",
                        opcode_name(op),
                        kind(&m.objs[cls])
                    )));
                };
                let class = class.clone();
                m.charge(m.len_of(args))?;
                m.push(Obj::Opaque(class))?;
            }
            b'R' => {
                let args = m.pop(at)?;
                let f = m.pop(at)?;
                let o = m.reduce(f, args, at)?;
                m.push(o)?;
            }
            b'b' => {
                // BUILD sets object state: accepted (and ignored) only for dicts (the state dict's
                // `_metadata`), tensors (their python attributes) and opaque objects.
                let _state = m.pop(at)?;
                let obj = m.top(at)?;
                match &m.objs[obj] {
                    Obj::Dict(_) | Obj::Tensor(_) | Obj::Opaque(_) => {}
                    o => {
                        return Err(Error::Checkpoint(format!(
                            "pickle: BUILD on a {} at offset {at} is not allowed",
                            kind(o)
                        )))
                    }
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = m.pop(at)?;
                    let k = m.pop(at)?;
                    vec![k, v]
                } else {
                    m.pop_mark(at)?
                };
                if items.len() % 2 != 0 {
                    return Err(Error::Checkpoint(format!(
                        "pickle: odd number of items for SETITEMS at offset {at}"
                    )));
                }
                let d = m.top(at)?;
                match &mut m.objs[d] {
                    Obj::Dict(pairs) => pairs.extend(items.chunks(2).map(|c| (c[0], c[1]))),
                    o => {
                        return Err(Error::Checkpoint(format!(
                            "pickle: SETITEM on a {} at offset {at}",
                            kind(o)
                        )))
                    }
                }
            }
            b'a' | b'e' => {
                let items = if op == b'a' {
                    vec![m.pop(at)?]
                } else {
                    m.pop_mark(at)?
                };
                let l = m.top(at)?;
                match &mut m.objs[l] {
                    Obj::List(v) => v.extend(items),
                    o => {
                        return Err(Error::Checkpoint(format!(
                            "pickle: APPEND on a {} at offset {at}",
                            kind(o)
                        )))
                    }
                }
            }
            b'0' => {
                m.stack.pop();
            }
            b'1' => {
                m.pop_mark(at)?;
            }
            b'2' => {
                let t = m.top(at)?;
                m.push_item(Item::Obj(t))?;
            }
            other => {
                return Err(Error::Checkpoint(format!(
                    "pickle opcode 0x{other:02x} ({}) at offset {at} is not allowed",
                    opcode_name(other)
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_os_system() {
        // GLOBAL 'os system', then REDUCE: the classic pickle exploit.
        let p = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
        let e = unpickle(p).unwrap_err().to_string();
        assert!(e.contains("os.system"), "{e}");
    }

    #[test]
    fn refuses_newobj_and_truncation() {
        let e = unpickle(b"\x80\x02\x81.").unwrap_err().to_string();
        assert!(e.contains("stack underflow"), "{e}");
        // NEWOBJ of an allow-listed class (a tensor rebuild) is not how torch.save writes one.
        let e = unpickle(b"\x80\x02ccollections\nOrderedDict\n)\x81.")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NEWOBJ of a global"), "{e}");
        let e = unpickle(b"\x80\x02X\x10\x00\x00\x00ab")
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = unpickle(b"").unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn plain_containers() {
        // {'a': [1, -2, 3.5], 'b': (True, None)}
        let mut p = b"\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01(K\x01J\xfe\xff\xff\xffG".to_vec();
        p.extend_from_slice(&3.5f64.to_be_bytes());
        p.extend_from_slice(b"eX\x01\x00\x00\x00b\x88N\x86u.");
        let pk = unpickle(&p).unwrap();
        let Obj::Dict(items) = pk.get(pk.root) else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        let Obj::List(l) = pk.get(items[0].1) else {
            panic!()
        };
        assert_eq!(pk.get(l[1]), &Obj::Int(-2));
        assert_eq!(pk.get(l[2]), &Obj::Float(3.5));
    }
}
