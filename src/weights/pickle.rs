//! A small, safe unpickler: it understands exactly what numpy arrays, lists, tuples, dicts,
//! numbers and strings need, and never executes anything. Any other global is refused.
//!
//! Handled: protocols 0-5 binary opcodes; Python 2 strings (`SHORT_BINSTRING`/`BINSTRING`, kept
//! as raw bytes, read as latin-1 where text is wanted), Python 3 bytes (`SHORT_BINBYTES`,
//! `BINBYTES`, `BINBYTES8`, `BYTEARRAY8`), protocol-2 bytes written by Python 3 as
//! `_codecs.encode(str, 'latin1')`; numpy arrays through `numpy.core.multiarray._reconstruct` /
//! `numpy._core.multiarray._reconstruct` + `BUILD`, and protocol 5's
//! `numpy(._)core.numeric._frombuffer`; `numpy.dtype` with its byte-order state.
//!
//! Sizes claimed by the file are checked against the bytes actually present before anything is
//! allocated; containers are reference-counted, so memo references cost nothing.
//!
//! `unpickle_torch` also reads what `torch.save` pickles: storages as persistent ids
//! (`('storage', torch.FloatStorage, key, location, numel)`), tensors rebuilt by
//! `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter`, checked against their storage's
//! size. The storages' bytes are the caller's (`weights::pth`).

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use super::array::{ArrayDtype, NdArray};

/// Limits that keep a hostile pickle from exhausting memory or time.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest number of elements one array may declare.
    pub max_array_elements: u64,
    /// Largest number of opcodes executed.
    pub max_ops: u64,
    /// Largest number of open MARKs (tuple/list/dict under construction) at once.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_array_elements: 4_000_000_000,
            max_ops: 50_000_000,
            max_depth: 1000,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Unicode text (`BINUNICODE` and friends).
    Str(Rc<str>),
    /// Raw bytes: Python 3 bytes, or a Python 2 `str` (latin-1 when read as text).
    Bytes(Rc<[u8]>),
    List(Rc<RefCell<Vec<Value>>>),
    Tuple(Rc<Vec<Value>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Rc<Global>),
    Dtype(Rc<RefCell<ArrayDtype>>),
    /// A numpy array (numeric, or object arrays whose elements are pickled values).
    Array(Rc<RefCell<PickledArray>>),
    /// A PyTorch storage named by a persistent id (`unpickle_torch` only).
    Storage(Rc<TorchStorage>),
    /// A PyTorch tensor: a view of a storage (`unpickle_torch` only).
    Tensor(Rc<TorchTensor>),
}

/// Element types of PyTorch storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TorchDtype {
    fn from_storage(name: &str) -> Option<TorchDtype> {
        Some(match name {
            "FloatStorage" => TorchDtype::F32,
            "DoubleStorage" => TorchDtype::F64,
            "HalfStorage" => TorchDtype::F16,
            "BFloat16Storage" => TorchDtype::BF16,
            "LongStorage" => TorchDtype::I64,
            "IntStorage" => TorchDtype::I32,
            "ShortStorage" => TorchDtype::I16,
            "CharStorage" => TorchDtype::I8,
            "ByteStorage" => TorchDtype::U8,
            "BoolStorage" => TorchDtype::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            TorchDtype::F64 | TorchDtype::I64 => 8,
            TorchDtype::F32 | TorchDtype::I32 => 4,
            TorchDtype::F16 | TorchDtype::BF16 | TorchDtype::I16 => 2,
            TorchDtype::I8 | TorchDtype::U8 | TorchDtype::Bool => 1,
        }
    }

    /// PyTorch's name (`float32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            TorchDtype::F32 => "float32",
            TorchDtype::F64 => "float64",
            TorchDtype::F16 => "float16",
            TorchDtype::BF16 => "bfloat16",
            TorchDtype::I64 => "int64",
            TorchDtype::I32 => "int32",
            TorchDtype::I16 => "int16",
            TorchDtype::I8 => "int8",
            TorchDtype::U8 => "uint8",
            TorchDtype::Bool => "bool",
        }
    }
}

/// A storage as the pickle names it: its key (a file in the zip's `data/`, or a record of the
/// legacy stream), element type and the element count the pickle claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchStorage {
    pub key: String,
    pub dtype: TorchDtype,
    pub numel: u64,
}

/// A tensor: `shape` with `stride` (in elements) from element `offset` of `storage`; its
/// extent is checked to lie within the storage's claimed size when it is rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchTensor {
    pub storage: Rc<TorchStorage>,
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Global {
    Reconstruct,
    NdArray,
    Dtype,
    FromBuffer,
    Scalar,
    CodecsEncode,
    ByteArray,
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2` (`unpickle_torch` only)
    RebuildTensor,
    /// `torch._utils._rebuild_parameter` (`unpickle_torch` only)
    RebuildParameter,
    /// `torch.FloatStorage` and the like, in storage persistent ids (`unpickle_torch` only)
    StorageType(TorchDtype),
}

#[derive(Debug, Clone)]
pub enum PickledArray {
    /// Made by `_reconstruct`, waiting for `BUILD` to fill it.
    Empty,
    Numeric(NdArray),
    Object {
        shape: Vec<usize>,
        items: Vec<Value>,
    },
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Dtype(_) => "numpy dtype",
            Value::Array(_) => "numpy array",
            Value::Storage(_) => "torch storage",
            Value::Tensor(_) => "torch tensor",
        }
    }

    /// Text of a `str`, or of a Python 2 `str`/bytes read as latin-1.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.to_string()),
            Value::Bytes(b) => Some(b.iter().map(|&c| c as char).collect()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Int(i) => Some(*i != 0),
            _ => None,
        }
    }

    /// Elements of a list or tuple.
    pub fn as_seq(&self) -> Option<Vec<Value>> {
        match self {
            Value::List(l) => Some(l.borrow().clone()),
            Value::Tuple(t) => Some(t.as_ref().clone()),
            _ => None,
        }
    }

    /// Entries of a dict whose keys are text, in file order.
    pub fn as_str_dict(&self) -> Option<Vec<(String, Value)>> {
        match self {
            Value::Dict(d) => d
                .borrow()
                .iter()
                .map(|(k, v)| k.as_text().map(|k| (k, v.clone())))
                .collect(),
            _ => None,
        }
    }

    /// The numeric array held, if this is one.
    pub fn as_array(&self) -> Option<NdArray> {
        match self {
            Value::Array(a) => match &*a.borrow() {
                PickledArray::Numeric(n) => Some(n.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// For a 0-d object array (how `np.save` stores a dict), the one object inside.
    pub fn unwrap_object_scalar(&self) -> Option<Value> {
        match self {
            Value::Array(a) => match &*a.borrow() {
                PickledArray::Object { shape, items } if shape.is_empty() && items.len() == 1 => {
                    Some(items[0].clone())
                }
                _ => None,
            },
            _ => None,
        }
    }
}

mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const LONG: u8 = b'L';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const REDUCE: u8 = b'R';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const READONLY_BUFFER: u8 = 0x98;
    pub const PERSID: u8 = b'P';
    pub const BINPERSID: u8 = b'Q';
}

/// Parse one pickle from the start of `data`. Returns the value and the number of bytes used.
/// Errors are plain messages; callers add the file name.
pub fn unpickle(data: &[u8], limits: &Limits) -> Result<(Value, usize), String> {
    machine(data, limits, false).run()
}

/// As `unpickle`, for what `torch.save` writes: storage persistent ids and tensors too.
pub fn unpickle_torch(data: &[u8], limits: &Limits) -> Result<(Value, usize), String> {
    machine(data, limits, true).run()
}

fn machine<'a>(data: &'a [u8], limits: &'a Limits, torch: bool) -> Machine<'a> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: std::collections::HashMap::new(),
        limits,
        keep: HashSet::new(),
        registry: Vec::new(),
        registered: HashSet::new(),
        torch,
    }
}

enum Item {
    Mark,
    V(Value),
}

/// The values a container holds directly.
fn children(v: &Value) -> Vec<Value> {
    match v {
        Value::List(l) => l.borrow().clone(),
        Value::Tuple(t) => t.as_ref().clone(),
        Value::Dict(d) => d
            .borrow()
            .iter()
            .flat_map(|(k, v)| [k.clone(), v.clone()])
            .collect(),
        Value::Array(a) => match &*a.borrow() {
            PickledArray::Object { items, .. } => items.clone(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn container_id(v: &Value) -> Option<usize> {
    match v {
        Value::List(l) => Some(Rc::as_ptr(l) as *const () as usize),
        Value::Tuple(t) => Some(Rc::as_ptr(t) as *const () as usize),
        Value::Dict(d) => Some(Rc::as_ptr(d) as *const () as usize),
        Value::Array(a) => Some(Rc::as_ptr(a) as *const () as usize),
        _ => None,
    }
}

/// Refuse values nested deeper than `max_depth` containers, or containing themselves (a list
/// appended to itself through the memo): either would overflow the stack of any recursive walk,
/// and deep chains even of the destructor. Iterative, visiting each shared container once.
fn check_nesting(root: &Value, max_depth: usize) -> Result<HashSet<usize>, String> {
    use std::collections::HashMap;
    // container id -> Some(depth) when done, None while on the current path
    let mut state: HashMap<usize, Option<usize>> = HashMap::new();
    // (value, children not yet visited, deepest child so far)
    let mut path: Vec<(Value, Vec<Value>, usize)> = Vec::new();
    let enter = |v: &Value,
                 state: &mut HashMap<usize, Option<usize>>,
                 path: &mut Vec<(Value, Vec<Value>, usize)>|
     -> Result<Option<usize>, String> {
        let Some(id) = container_id(v) else {
            return Ok(Some(0));
        };
        match state.get(&id) {
            Some(Some(d)) => Ok(Some(*d)),
            Some(None) => Err("pickle holds a container that contains itself; refusing it".into()),
            None => {
                if path.len() >= max_depth {
                    return Err(format!(
                        "pickle nests containers more than {max_depth} deep; refusing it"
                    ));
                }
                state.insert(id, None);
                let mut kids = children(v);
                kids.reverse();
                path.push((v.clone(), kids, 0));
                Ok(None)
            }
        }
    };
    enter(root, &mut state, &mut path)?;
    while let Some((_, kids, deepest)) = path.last_mut() {
        match kids.pop() {
            Some(k) => {
                if let Some(d) = enter(&k, &mut state, &mut path)? {
                    if let Some(top) = path.last_mut() {
                        top.2 = top.2.max(d);
                    }
                }
            }
            None => {
                let d = *deepest + 1;
                if let Some((v, _, _)) = path.pop() {
                    if let Some(id) = container_id(&v) {
                        state.insert(id, Some(d));
                    }
                }
                if let Some(parent) = path.last_mut() {
                    parent.2 = parent.2.max(d);
                }
            }
        }
    }
    Ok(state.into_keys().collect())
}

/// Drop values without recursion: a container whose last reference is dropped here hands its
/// children to the work list instead of dropping them inside its own destructor. Mutable
/// containers not in `keep` (the returned value's) are emptied even while shared, which breaks
/// the reference cycles a pickle can build through the memo (they would leak otherwise).
fn teardown(mut work: Vec<Value>, keep: &HashSet<usize>) {
    while let Some(v) = work.pop() {
        let kept = container_id(&v).is_some_and(|id| keep.contains(&id));
        match v {
            Value::List(l) if !kept => {
                work.extend(std::mem::take(&mut *l.borrow_mut()));
            }
            Value::Dict(d) if !kept => {
                for (k, v) in std::mem::take(&mut *d.borrow_mut()) {
                    work.push(k);
                    work.push(v);
                }
            }
            Value::Array(a) if !kept => {
                if let PickledArray::Object { items, .. } = &mut *a.borrow_mut() {
                    work.extend(std::mem::take(items));
                }
            }
            Value::List(l) => {
                if let Ok(cell) = Rc::try_unwrap(l) {
                    work.extend(cell.into_inner());
                }
            }
            Value::Tuple(t) => {
                if let Ok(items) = Rc::try_unwrap(t) {
                    work.extend(items);
                }
            }
            Value::Dict(d) => {
                if let Ok(cell) = Rc::try_unwrap(d) {
                    for (k, v) in cell.into_inner() {
                        work.push(k);
                        work.push(v);
                    }
                }
            }
            Value::Array(a) => {
                if let Ok(cell) = Rc::try_unwrap(a) {
                    if let PickledArray::Object { items, .. } = cell.into_inner() {
                        work.extend(items);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Drop for Machine<'_> {
    /// A pickle refused half-way may hold a deep chain on its stack or in its memo.
    fn drop(&mut self) {
        let mut work: Vec<Value> = self.memo.drain().map(|(_, v)| v).collect();
        work.extend(self.stack.drain(..).filter_map(|i| match i {
            Item::V(v) => Some(v),
            Item::Mark => None,
        }));
        teardown(work, &self.keep);
        for w in std::mem::take(&mut self.registry) {
            let v = match w {
                Weak::List(w) => w.upgrade().map(Value::List),
                Weak::Dict(w) => w.upgrade().map(Value::Dict),
                Weak::Array(w) => w.upgrade().map(Value::Array),
            };
            if let Some(v) = v {
                teardown(vec![v], &self.keep);
            }
        }
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u64, Value>,
    limits: &'a Limits,
    /// Containers of the returned value (kept intact when the machine is dropped).
    keep: HashSet<usize>,
    /// Every mutable container this pickle made (by address, and weakly held): at the end, the
    /// ones outside `keep` are emptied, so cycles built with DUP or the memo never leak.
    registry: Vec<Weak>,
    registered: HashSet<usize>,
    /// Whether PyTorch's storages and tensors are read (`unpickle_torch`).
    torch: bool,
}

enum Weak {
    List(std::rc::Weak<RefCell<Vec<Value>>>),
    Dict(std::rc::Weak<RefCell<Vec<(Value, Value)>>>),
    Array(std::rc::Weak<RefCell<PickledArray>>),
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "truncated pickle: {n} bytes wanted at offset {} but only {} remain",
                self.pos,
                self.data.len() - self.pos
            )),
        }
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn len_u64(&mut self, n: u64) -> Result<usize, String> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining {
            return Err(format!(
                "truncated pickle: an object of {n} bytes is declared at offset {} but only {remaining} bytes remain",
                self.pos
            ));
        }
        Ok(n as usize)
    }

    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let nl = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| format!("truncated pickle: unterminated line at offset {}", self.pos))?;
        let s = std::str::from_utf8(&rest[..nl])
            .map_err(|_| format!("invalid text at offset {}", self.pos))?;
        self.pos += nl + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) {
        if let Some(id) = container_id(&v) {
            if self.registered.insert(id) {
                let w = match &v {
                    Value::List(l) => Some(Weak::List(Rc::downgrade(l))),
                    Value::Dict(d) => Some(Weak::Dict(Rc::downgrade(d))),
                    Value::Array(a) => Some(Weak::Array(Rc::downgrade(a))),
                    _ => None,
                };
                self.registry.extend(w);
            }
        }
        self.stack.push(Item::V(v));
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(format!(
                "corrupt pickle: stack underflow at offset {}",
                self.pos
            ));
        }
        match self.stack.pop() {
            Some(Item::V(v)) => Ok(v),
            Some(Item::Mark) => Err(format!(
                "corrupt pickle: unexpected mark at offset {}",
                self.pos
            )),
            None => Err(format!(
                "corrupt pickle: stack underflow at offset {}",
                self.pos
            )),
        }
    }

    fn top(&self) -> Result<&Value, String> {
        match self.stack.last() {
            Some(Item::V(v)) => Ok(v),
            _ => Err(format!(
                "corrupt pickle: empty stack at offset {}",
                self.pos
            )),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| format!("corrupt pickle: no mark at offset {}", self.pos))?;
        if m > self.stack.len() {
            return Err(format!("corrupt pickle: bad mark at offset {}", self.pos));
        }
        let items = self.stack.split_off(m);
        // the Mark item itself sits at index m-1
        match self.stack.pop() {
            Some(Item::Mark) => {}
            _ => return Err(format!("corrupt pickle: bad mark at offset {}", self.pos)),
        }
        items
            .into_iter()
            .map(|i| match i {
                Item::V(v) => Ok(v),
                Item::Mark => Err("corrupt pickle: nested mark".to_string()),
            })
            .collect()
    }

    fn memo_put(&mut self, idx: u64) -> Result<(), String> {
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> Result<(), String> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| format!("corrupt pickle: memo entry {idx} is missing"))?;
        self.push(v);
        Ok(())
    }

    fn run(mut self) -> Result<(Value, usize), String> {
        let mut ops: u64 = 0;
        loop {
            ops += 1;
            if ops > self.limits.max_ops {
                return Err(format!(
                    "pickle has more than {} opcodes; refusing it",
                    self.limits.max_ops
                ));
            }
            let at = self.pos;
            let code = self.u8()?;
            match code {
                op::PROTO => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(format!("unsupported pickle protocol {p}"));
                    }
                }
                op::FRAME => {
                    self.take(8)?;
                }
                op::STOP => {
                    let v = self.pop()?;
                    match check_nesting(&v, self.limits.max_depth) {
                        Ok(reachable) => self.keep = reachable,
                        Err(e) => {
                            teardown(vec![v], &Default::default());
                            return Err(e);
                        }
                    }
                    return Ok((v, self.pos));
                }
                op::MARK => {
                    self.stack.push(Item::Mark);
                    self.marks.push(self.stack.len());
                    if self.marks.len() > self.limits.max_depth {
                        return Err(format!(
                            "pickle nests deeper than {} levels; refusing it",
                            self.limits.max_depth
                        ));
                    }
                }
                op::POP => {
                    if matches!(self.stack.last(), Some(Item::Mark)) {
                        self.pop_mark()?;
                    } else {
                        self.pop()?;
                    }
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::DUP => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                other => {
                    let handled = self.scalar_op(other, at)?
                        || self.text_op(other, at)?
                        || self.container_op(other, at)?
                        || self.object_op(other, at)?;
                    if !handled {
                        return Err(format!(
                            "unsupported or corrupt pickle opcode 0x{other:02x} at offset {at}"
                        ));
                    }
                }
            }
        }
    }

    /// Numbers, strings and bytes; `false` for another opcode.
    fn scalar_op(&mut self, code: u8, at: usize) -> Result<bool, String> {
        match code {
            op::NONE => self.push(Value::None),
            op::NEWTRUE => self.push(Value::Bool(true)),
            op::NEWFALSE => self.push(Value::Bool(false)),
            op::BININT => {
                let v = i32::from_le_bytes(self.le::<4>()?);
                self.push(Value::Int(v as i64))
            }
            op::BININT1 => {
                let v = self.u8()?;
                self.push(Value::Int(v as i64))
            }
            op::BININT2 => {
                let v = u16::from_le_bytes(self.le::<2>()?);
                self.push(Value::Int(v as i64))
            }
            op::LONG1 | op::LONG4 => {
                let n = if code == op::LONG1 {
                    self.u8()? as u64
                } else {
                    u32::from_le_bytes(self.le::<4>()?) as u64
                };
                let n = self.len_u64(n)?;
                let bytes = self.take(n)?;
                if n > 8 {
                    return Err(format!("integer of {n} bytes at offset {at} is too large"));
                }
                let mut v: i64 = 0;
                for (i, &b) in bytes.iter().enumerate() {
                    v |= (b as i64) << (8 * i);
                }
                if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                self.push(Value::Int(v))
            }
            op::INT => {
                let l = self.line()?;
                let v = match l {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(
                        l.parse()
                            .map_err(|_| format!("bad INT {l:?} at offset {at}"))?,
                    ),
                };
                self.push(v)
            }
            op::LONG => {
                let l = self.line()?.trim_end_matches('L');
                let v = l
                    .parse()
                    .map_err(|_| format!("bad LONG {l:?} at offset {at}"))?;
                self.push(Value::Int(v))
            }
            op::BINFLOAT => {
                let v = f64::from_be_bytes(self.le::<8>()?);
                self.push(Value::Float(v))
            }
            op::FLOAT => {
                let l = self.line()?;
                let v = l
                    .parse()
                    .map_err(|_| format!("bad FLOAT {l:?} at offset {at}"))?;
                self.push(Value::Float(v))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Strings and bytes; `false` for another opcode.
    fn text_op(&mut self, code: u8, at: usize) -> Result<bool, String> {
        match code {
            op::SHORT_BINSTRING | op::SHORT_BINBYTES => {
                let n = self.u8()? as usize;
                let b = self.take(n)?;
                self.push(Value::Bytes(Rc::from(b)))
            }
            op::BINSTRING => {
                let n = i32::from_le_bytes(self.le::<4>()?);
                if n < 0 {
                    return Err(format!("negative string length at offset {at}"));
                }
                let n = self.len_u64(n as u64)?;
                let b = self.take(n)?;
                self.push(Value::Bytes(Rc::from(b)))
            }
            op::BINBYTES => {
                let n = u32::from_le_bytes(self.le::<4>()?) as u64;
                let n = self.len_u64(n)?;
                let b = self.take(n)?;
                self.push(Value::Bytes(Rc::from(b)))
            }
            op::BINBYTES8 | op::BYTEARRAY8 => {
                let n = u64::from_le_bytes(self.le::<8>()?);
                let n = self.len_u64(n)?;
                let b = self.take(n)?;
                self.push(Value::Bytes(Rc::from(b)))
            }
            op::SHORT_BINUNICODE | op::BINUNICODE | op::BINUNICODE8 => {
                let n = match code {
                    op::SHORT_BINUNICODE => self.u8()? as u64,
                    op::BINUNICODE => u32::from_le_bytes(self.le::<4>()?) as u64,
                    _ => u64::from_le_bytes(self.le::<8>()?),
                };
                let n = self.len_u64(n)?;
                let b = self.take(n)?;
                let s = std::str::from_utf8(b)
                    .map_err(|_| format!("invalid UTF-8 string at offset {at}"))?;
                self.push(Value::Str(Rc::from(s)))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Tuples, lists, sets and dicts; `false` for another opcode.
    fn container_op(&mut self, code: u8, at: usize) -> Result<bool, String> {
        match code {
            op::EMPTY_TUPLE => self.push(Value::Tuple(Rc::new(vec![]))),
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(Rc::new(items)))
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = (code - op::TUPLE1 + 1) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push(Value::Tuple(Rc::new(items)))
            }
            op::EMPTY_LIST => self.push(Value::List(Rc::new(RefCell::new(vec![])))),
            op::LIST => {
                let items = self.pop_mark()?;
                self.push(Value::List(Rc::new(RefCell::new(items))))
            }
            op::APPEND => {
                let v = self.pop()?;
                match self.top()? {
                    Value::List(l) => l.borrow_mut().push(v),
                    other => {
                        return Err(format!("APPEND to a {} at offset {at}", other.type_name()))
                    }
                }
            }
            op::APPENDS | op::ADDITEMS => {
                let items = self.pop_mark()?;
                match self.top()? {
                    Value::List(l) => l.borrow_mut().extend(items),
                    other => {
                        return Err(format!("APPENDS to a {} at offset {at}", other.type_name()))
                    }
                }
            }
            op::EMPTY_SET => self.push(Value::List(Rc::new(RefCell::new(vec![])))),
            op::FROZENSET => {
                let items = self.pop_mark()?;
                self.push(Value::List(Rc::new(RefCell::new(items))))
            }
            op::EMPTY_DICT => self.push(Value::Dict(Rc::new(RefCell::new(vec![])))),
            op::DICT => {
                let items = self.pop_mark()?;
                let d = pairs(items, at)?;
                self.push(Value::Dict(Rc::new(RefCell::new(d))))
            }
            op::SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                match self.top()? {
                    Value::Dict(d) => set_item(&mut d.borrow_mut(), k, v),
                    other => {
                        return Err(format!("SETITEM on a {} at offset {at}", other.type_name()))
                    }
                }
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                let kv = pairs(items, at)?;
                match self.top()? {
                    Value::Dict(d) => {
                        let mut d = d.borrow_mut();
                        for (k, v) in kv {
                            set_item(&mut d, k, v);
                        }
                    }
                    other => {
                        return Err(format!(
                            "SETITEMS on a {} at offset {at}",
                            other.type_name()
                        ))
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Globals, calls, persistent ids, BUILD and the memo; `false` for another opcode.
    fn object_op(&mut self, code: u8, at: usize) -> Result<bool, String> {
        match code {
        op::GLOBAL => {
            let module = self.line()?;
            let name = self.line()?;
            let g = resolve_global(module, name, self.torch)?;
            self.push(Value::Global(Rc::new(g)))
        }
        op::STACK_GLOBAL => {
            let name = self.pop()?;
            let module = self.pop()?;
            let (Some(module), Some(name)) = (module.as_text(), name.as_text()) else {
                return Err(format!("STACK_GLOBAL with non-text names at offset {at}"));
            };
            let g = resolve_global(&module, &name, self.torch)?;
            self.push(Value::Global(Rc::new(g)))
        }
        op::BINPERSID | op::PERSID => {
            let pid = match code {
                op::BINPERSID => self.pop()?,
                _ => Value::Str(Rc::from(self.line()?)),
            };
            let v = self.persistent(pid, at)?;
            self.push(v)
        }
        op::REDUCE | op::NEWOBJ => {
            let args = self.pop()?;
            let callable = self.pop()?;
            let v = self.reduce(callable, args, at)?;
            self.push(v)
        }
        op::NEWOBJ_EX => {
            let _kwargs = self.pop()?;
            let args = self.pop()?;
            let callable = self.pop()?;
            let v = self.reduce(callable, args, at)?;
            self.push(v)
        }
        op::BUILD => {
            let state = self.pop()?;
            let obj = self.top()?.clone();
            build(&obj, state, self.limits).map_err(|e| format!("{e} (at offset {at})"))?;
        }
        op::PUT => {
            let l = self.line()?;
            let idx = l.parse().map_err(|_| format!("bad PUT at offset {at}"))?;
            self.memo_put(idx)?
        }
        op::BINPUT => {
            let idx = self.u8()? as u64;
            self.memo_put(idx)?
        }
        op::LONG_BINPUT => {
            let idx = u32::from_le_bytes(self.le::<4>()?) as u64;
            self.memo_put(idx)?
        }
        op::MEMOIZE => {
            let idx = self.memo.len() as u64;
            self.memo_put(idx)?
        }
        op::GET => {
            let l = self.line()?;
            let idx = l.parse().map_err(|_| format!("bad GET at offset {at}"))?;
            self.memo_get(idx)?
        }
        op::BINGET => {
            let idx = self.u8()? as u64;
            self.memo_get(idx)?
        }
        op::LONG_BINGET => {
            let idx = u32::from_le_bytes(self.le::<4>()?) as u64;
            self.memo_get(idx)?
        }
        op::READONLY_BUFFER => {}
        op::NEXT_BUFFER => {
            return Err("pickle uses out-of-band buffers (protocol 5 buffer_callback); save it without them".into())
        }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A persistent id: in `unpickle_torch`, a storage `('storage', torch.XStorage, key,
    /// location, numel[, view_metadata])`; anything else is refused.
    fn persistent(&mut self, pid: Value, at: usize) -> Result<Value, String> {
        if !self.torch {
            return Err(format!(
                "the pickle loads a persistent id at offset {at} (as PyTorch's storages do); it is not a plain pickle of data"
            ));
        }
        let parts = pid.as_seq().unwrap_or_default();
        let storage = match parts.as_slice() {
            [tag, Value::Global(g), key, _location, numel, ..]
                if tag.as_text().as_deref() == Some("storage") =>
            {
                match (g.as_ref(), key.as_text(), numel.as_int()) {
                    (Global::StorageType(dtype), Some(key), Some(numel)) if numel >= 0 => {
                        TorchStorage {
                            key,
                            dtype: *dtype,
                            numel: numel as u64,
                        }
                    }
                    _ => return Err(format!("malformed torch storage id at offset {at}")),
                }
            }
            _ => {
                return Err(format!(
                    "persistent id at offset {at} is not a torch storage ({})",
                    pid.type_name()
                ))
            }
        };
        Ok(Value::Storage(Rc::new(storage)))
    }

    fn reduce(&mut self, callable: Value, args: Value, at: usize) -> Result<Value, String> {
        let Value::Global(g) = &callable else {
            return Err(format!(
                "REDUCE of a {} at offset {at}",
                callable.type_name()
            ));
        };
        let args = args
            .as_seq()
            .ok_or_else(|| format!("REDUCE arguments are a {} at offset {at}", args.type_name()))?;
        match g.as_ref() {
            Global::Reconstruct | Global::NdArray => {
                Ok(Value::Array(Rc::new(RefCell::new(PickledArray::Empty))))
            }
            Global::Dtype => {
                let code = args
                    .first()
                    .and_then(|a| a.as_text())
                    .ok_or_else(|| format!("numpy.dtype without a type code at offset {at}"))?;
                let dt = ArrayDtype::from_code(&code).map_err(|e| format!("{e} at offset {at}"))?;
                Ok(Value::Dtype(Rc::new(RefCell::new(dt))))
            }
            Global::CodecsEncode => codecs_encode(&args, at),
            Global::ByteArray => match args.first() {
                None => Ok(Value::Bytes(Rc::from(Vec::new()))),
                Some(Value::Bytes(b)) => Ok(Value::Bytes(b.clone())),
                Some(v) => {
                    // bytearray(str, 'latin-1') at protocol 2
                    let fake = vec![v.clone(), args.get(1).cloned().unwrap_or(Value::None)];
                    codecs_encode(&fake, at)
                }
            },
            Global::OrderedDict => Ok(Value::Dict(Rc::new(RefCell::new(vec![])))),
            Global::RebuildTensor => {
                rebuild_tensor(&args).map_err(|e| format!("{e} (at offset {at})"))
            }
            Global::RebuildParameter => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(format!(
                    "_rebuild_parameter without a tensor at offset {at}"
                )),
            },
            Global::StorageType(_) => Err(format!(
                "a torch storage type called as a function at offset {at}"
            )),
            Global::FromBuffer => {
                // _frombuffer(buffer, dtype, shape, order)
                let (Some(Value::Bytes(buf)), Some(Value::Dtype(dt)), Some(shape)) =
                    (args.first(), args.get(1), args.get(2))
                else {
                    return Err(format!("malformed numpy _frombuffer call at offset {at}"));
                };
                let shape = shape_of(shape)?;
                let fortran = args
                    .get(3)
                    .and_then(|o| o.as_text())
                    .is_some_and(|o| o == "F");
                let arr = NdArray::new(
                    dt.borrow().clone(),
                    shape,
                    fortran,
                    buf.to_vec(),
                    self.limits.max_array_elements,
                )?;
                Ok(Value::Array(Rc::new(RefCell::new(PickledArray::Numeric(
                    arr,
                )))))
            }
            Global::Scalar => {
                // numpy.core.multiarray.scalar(dtype, bytes)
                let (Some(Value::Dtype(dt)), Some(Value::Bytes(b))) = (args.first(), args.get(1))
                else {
                    return Err(format!("malformed numpy scalar at offset {at}"));
                };
                let arr = NdArray::new(
                    dt.borrow().clone(),
                    vec![],
                    false,
                    b.to_vec(),
                    self.limits.max_array_elements,
                )?;
                Ok(Value::Array(Rc::new(RefCell::new(PickledArray::Numeric(
                    arr,
                )))))
            }
        }
    }
}

/// `_codecs.encode(text, encoding)`: how protocol 2 pickles bytes (latin-1 or UTF-8).
fn codecs_encode(args: &[Value], at: usize) -> Result<Value, String> {
    let text = match args.first() {
        Some(Value::Str(s)) => s.clone(),
        _ => return Err(format!("_codecs.encode without text at offset {at}")),
    };
    let enc = args
        .get(1)
        .and_then(|e| e.as_text())
        .unwrap_or_else(|| "utf-8".into());
    let bytes: Vec<u8> = match enc.to_ascii_lowercase().replace('_', "-").as_str() {
        "latin1" | "latin-1" | "iso-8859-1" => text
            .chars()
            .map(|c| u8::try_from(c as u32).map_err(|_| "non-latin-1 char".to_string()))
            .collect::<Result<_, _>>()?,
        "utf-8" | "utf8" => text.as_bytes().to_vec(),
        other => {
            return Err(format!(
                "_codecs.encode with unsupported encoding {other:?}"
            ))
        }
    };
    Ok(Value::Bytes(Rc::from(bytes)))
}

fn pairs(items: Vec<Value>, at: usize) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err(format!("odd number of dict items at offset {at}"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn set_item(d: &mut Vec<(Value, Value)>, k: Value, v: Value) {
    if let Some(key) = k.as_text() {
        if let Some(slot) = d
            .iter_mut()
            .find(|(ek, _)| ek.as_text().as_deref() == Some(&key))
        {
            slot.1 = v;
            return;
        }
    }
    d.push((k, v));
}

fn shape_of(v: &Value) -> Result<Vec<usize>, String> {
    let seq = v.as_seq().ok_or("array shape is not a tuple")?;
    seq.iter()
        .map(|d| {
            d.as_int()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| "array shape holds a negative or non-integer dimension".to_string())
        })
        .collect()
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, meta])`,
/// with the view's extent checked against the storage's element count.
fn rebuild_tensor(args: &[Value]) -> Result<Value, String> {
    let (Some(Value::Storage(storage)), Some(offset), Some(size), Some(stride)) =
        (args.first(), args.get(1), args.get(2), args.get(3))
    else {
        return Err("malformed torch tensor (_rebuild_tensor_v2 arguments)".into());
    };
    let offset = offset
        .as_int()
        .and_then(|o| u64::try_from(o).ok())
        .ok_or("torch tensor with a negative or non-integer storage offset")?;
    let shape = shape_of(size)?;
    let stride: Vec<u64> = stride
        .as_seq()
        .ok_or("torch tensor strides are not a tuple")?
        .iter()
        .map(|s| s.as_int().and_then(|s| u64::try_from(s).ok()))
        .collect::<Option<_>>()
        .ok_or("torch tensor with a negative or non-integer stride")?;
    if stride.len() != shape.len() {
        return Err(format!(
            "torch tensor of shape {shape:?} has {} strides",
            stride.len()
        ));
    }
    // the last element's position + 1 (0 for an empty tensor)
    let mut end: Option<u64> = Some(offset + 1);
    if shape.contains(&0) {
        end = Some(0);
    } else {
        for (&n, &s) in shape.iter().zip(&stride) {
            end = end.and_then(|e| (n as u64 - 1).checked_mul(s).and_then(|d| e.checked_add(d)));
        }
    }
    let elements = shape.iter().try_fold(1u64, |a, &n| a.checked_mul(n as u64));
    match (end, elements) {
        (Some(e), Some(_)) if e <= storage.numel => {}
        _ => {
            return Err(format!(
                "a torch tensor of shape {shape:?} (strides {stride:?}, offset {offset}) reaches beyond its {} storage {:?} of {} elements ({} bytes)",
                storage.dtype.name(),
                storage.key,
                storage.numel,
                storage.numel.saturating_mul(storage.dtype.size() as u64)
            ))
        }
    }
    Ok(Value::Tensor(Rc::new(TorchTensor {
        storage: storage.clone(),
        offset,
        shape,
        stride,
    })))
}

fn resolve_global(module: &str, name: &str, torch: bool) -> Result<Global, String> {
    let numpy_core =
        |m: &str, sub: &str| m == format!("numpy.core.{sub}") || m == format!("numpy._core.{sub}");
    let g = match (module, name) {
        (m, "_reconstruct") if numpy_core(m, "multiarray") => Global::Reconstruct,
        (m, "scalar") if numpy_core(m, "multiarray") => Global::Scalar,
        (m, "_frombuffer") if numpy_core(m, "numeric") => Global::FromBuffer,
        ("numpy", "ndarray") => Global::NdArray,
        ("numpy", "dtype") => Global::Dtype,
        ("_codecs", "encode") => Global::CodecsEncode,
        ("builtins" | "__builtin__", "bytearray") => Global::ByteArray,
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") if torch => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") if torch => Global::RebuildParameter,
        ("torch", s) if torch && TorchDtype::from_storage(s).is_some() => {
            Global::StorageType(TorchDtype::from_storage(s).unwrap_or(TorchDtype::F32))
        }
        _ => {
            return Err(format!(
                "the pickle refers to {module}.{name}, which runner does not load \
                 (only numpy arrays, lists, tuples, dicts, numbers and strings are read; nothing is executed)"
            ))
        }
    };
    Ok(g)
}

fn build(obj: &Value, state: Value, limits: &Limits) -> Result<(), String> {
    match obj {
        Value::Dtype(dt) => {
            // (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
            let st = state.as_seq().ok_or("numpy dtype state is not a tuple")?;
            if let Some(order) = st.get(1).and_then(|o| o.as_text()) {
                dt.borrow_mut().set_byte_order(&order)?;
            }
            if st.get(3).is_some_and(|n| !matches!(n, Value::None)) {
                return Err("structured numpy dtypes (with named fields) are not supported".into());
            }
            Ok(())
        }
        Value::Array(a) => {
            let st = state.as_seq().ok_or("numpy array state is not a tuple")?;
            // (version, shape, dtype, is_fortran, data) or without the version
            let st = if st.len() == 5 { &st[1..] } else { &st[..] };
            if st.len() != 4 {
                return Err(format!(
                    "numpy array state has {} fields, expected 4 or 5",
                    st.len()
                ));
            }
            let shape = shape_of(&st[0])?;
            let Value::Dtype(dt) = &st[1] else {
                return Err("numpy array state has no dtype".into());
            };
            let dt = dt.borrow().clone();
            let fortran = st[2]
                .as_bool()
                .ok_or("numpy array state: is_fortran is not a bool")?;
            let arr = if dt.is_object() {
                let items = st[3].as_seq().ok_or("object array state holds no list")?;
                let n: usize = shape.iter().product();
                if items.len() != n {
                    return Err(format!(
                        "object array of shape {shape:?} holds {} items",
                        items.len()
                    ));
                }
                PickledArray::Object { shape, items }
            } else {
                let bytes: Vec<u8> = match &st[3] {
                    Value::Bytes(b) => b.to_vec(),
                    Value::Str(s) => s
                        .chars()
                        .map(|c| {
                            u8::try_from(c as u32)
                                .map_err(|_| "array data is not latin-1".to_string())
                        })
                        .collect::<Result<_, _>>()?,
                    other => return Err(format!("numpy array data is a {}", other.type_name())),
                };
                PickledArray::Numeric(NdArray::new(
                    dt,
                    shape,
                    fortran,
                    bytes,
                    limits.max_array_elements,
                )?)
            };
            *a.borrow_mut() = arr;
            Ok(())
        }
        Value::Dict(d) => {
            // BUILD on a dict-like object (OrderedDict) with a dict state: update
            if let Some(kv) = state.as_str_dict() {
                let mut d = d.borrow_mut();
                for (k, v) in kv {
                    set_item(&mut d, Value::Str(Rc::from(k.as_str())), v);
                }
            }
            Ok(())
        }
        other => Err(format!("BUILD on a {}", other.type_name())),
    }
}
