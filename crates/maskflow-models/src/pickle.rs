//! A pickle *reader* for PyTorch state dicts — data, never code.
//!
//! Python's pickle is a small stack machine whose `GLOBAL` + `REDUCE` opcodes can call any importable
//! function. This reader evaluates only the opcodes that state dicts use (protocols 2–5) and knows only
//! the few globals that appear in them: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the typed storage classes (`torch.FloatStorage`, …). Any other
//! global, and any opcode outside that set, is refused with an error that names it; nothing is ever
//! executed.
//!
//! A *whole pickled module* (`torch.save(model)`, as some published detectors ship) is read with
//! [`load_with`] and an explicit list of the module classes it may name (e.g.
//! `torch.nn.modules.conv.Conv2d`): an instance of one becomes a [`Value::Object`] holding the
//! attribute dict that `BUILD` gave it — data only; the class is never looked up or run.

use std::collections::HashMap;

/// Element types of PyTorch storages that a state dict may reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    fn from_class(name: &str) -> Option<StorageDtype> {
        Some(match name {
            "DoubleStorage" => StorageDtype::F64,
            "FloatStorage" => StorageDtype::F32,
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::BF16,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ShortStorage" => StorageDtype::I16,
            "CharStorage" => StorageDtype::I8,
            "ByteStorage" => StorageDtype::U8,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }
}

/// A reference to a storage (a flat buffer) saved beside the pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: StorageDtype,
    /// Number of elements, as recorded in the persistent id.
    pub numel: u64,
}

/// A tensor: a strided view into a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// The values a state-dict pickle can produce.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A dict or an OrderedDict, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A known global, waiting for its `REDUCE`.
    Global(Known),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// An instance of an allowed class (see [`load_with`]): its qualified class name and the state
    /// that `BUILD` set (`None` before it).
    Object { class: String, state: Box<Value> },
    /// Marks the start of a variable-length group on the stack.
    Mark,
}

/// The globals this reader accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    StorageClass(StorageDtype),
    /// A class the caller allowed, instantiated by `NEWOBJ` into a [`Value::Object`].
    Class(String),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    #[error("the pickle ends before its STOP opcode (truncated file?)")]
    Truncated,
    #[error("opcode 0x{opcode:02x} at byte {at} is not one that state dicts use; refused")]
    UnsupportedOpcode { opcode: u8, at: usize },
    #[error(
        "the pickle references the global `{module}.{name}`, which is not part of a state dict \
         (only collections.OrderedDict, torch._utils._rebuild_tensor_v2/_rebuild_parameter and \
         torch.*Storage are accepted); refused, nothing was executed"
    )]
    ForbiddenGlobal { module: String, name: String },
    #[error("malformed pickle at byte {at}: {why}")]
    Malformed { at: usize, why: String },
}

fn malformed(at: usize, why: impl Into<String>) -> PickleError {
    PickleError::Malformed { at, why: why.into() }
}

/// Evaluates one pickle starting at `data[0]`; returns the value and the number of bytes consumed.
/// `persistent_load` turns the tuple of a `BINPERSID` into a value (storages).
pub fn load(
    data: &[u8],
    persistent_load: &dyn Fn(&Value) -> Result<Value, String>,
) -> Result<(Value, usize), PickleError> {
    load_with(data, persistent_load, &[])
}

/// As [`load`], also accepting instances (`NEWOBJ` + `BUILD`) of the classes in `classes`, each a
/// qualified name (`module.Class`), as [`Value::Object`]s: for whole pickled modules.
pub fn load_with(
    data: &[u8],
    persistent_load: &dyn Fn(&Value) -> Result<Value, String>,
    classes: &[&str],
) -> Result<(Value, usize), PickleError> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                // PROTO
                let v = r.u8()?;
                if v > 5 {
                    return Err(malformed(at, format!("pickle protocol {v} is newer than 5")));
                }
            }
            0x95 => {
                // FRAME: an 8-byte length; the framed bytes follow inline.
                r.take(8)?;
            }
            b'.' => {
                let v = stack.pop().ok_or_else(|| malformed(at, "STOP on an empty stack"))?;
                return Ok((v, r.pos));
            }
            b'(' => stack.push(Value::Mark),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => {
                let b = r.take(4)?;
                stack.push(Value::Int(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64));
            }
            b'K' => {
                let v = r.u8()?;
                stack.push(Value::Int(v as i64));
            }
            b'M' => {
                let b = r.take(2)?;
                stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64));
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                if n > 8 {
                    return Err(malformed(at, format!("integer of {n} bytes does not fit 64 bits")));
                }
                let mut buf = if b.last().is_some_and(|x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                buf[..n].copy_from_slice(b);
                stack.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'G' => {
                let b = r.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                stack.push(Value::Float(f64::from_be_bytes(a)));
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => r.u32()? as usize,
                    0x8c => r.u8()? as usize,
                    _ => r.u64_len()?,
                };
                let b = r.take(n)?;
                let s = std::str::from_utf8(b).map_err(|_| malformed(at, "string is not UTF-8"))?;
                stack.push(Value::Str(s.to_owned()));
            }
            b'T' | b'U' => {
                // BINSTRING / SHORT_BINSTRING (protocol 2 str of Python 2): bytes, read as latin-1
                let n = if op == b'T' { r.u32()? as usize } else { r.u8()? as usize };
                let b = r.take(n)?;
                stack.push(Value::Str(b.iter().map(|&c| c as char).collect()));
            }
            b'C' | b'B' | 0x8e => {
                let n = match op {
                    b'C' => r.u8()? as usize,
                    b'B' => r.u32()? as usize,
                    _ => r.u64_len()?,
                };
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(known_global(&module, &name, classes)?));
            }
            0x93 => {
                // STACK_GLOBAL
                let name = pop_str(&mut stack, at)?;
                let module = pop_str(&mut stack, at)?;
                stack.push(Value::Global(known_global(&module, &name, classes)?));
            }
            b'q' => {
                let k = r.u8()? as u32;
                memo.insert(k, top(&stack, at)?.clone());
            }
            b'r' => {
                let k = r.u32()?;
                memo.insert(k, top(&stack, at)?.clone());
            }
            0x94 => {
                // MEMOIZE
                let k = memo.len() as u32;
                memo.insert(k, top(&stack, at)?.clone());
            }
            b'h' | b'j' => {
                let k = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
                let v = memo.get(&k).ok_or_else(|| malformed(at, format!("memo key {k} was never stored")))?;
                stack.push(v.clone());
            }
            b't' => {
                let items = pop_to_mark(&mut stack, at)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(malformed(at, "TUPLE on a short stack"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_to_mark(&mut stack, at)?;
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = pop_to_mark(&mut stack, at)?;
                stack.push(Value::Dict(pairs(items, at)?));
            }
            b'a' => {
                let v = pop(&mut stack, at)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(malformed(at, "APPEND to something that is not a list")),
                }
            }
            b'e' => {
                let items = pop_to_mark(&mut stack, at)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(malformed(at, "APPENDS to something that is not a list")),
                }
            }
            b's' => {
                let v = pop(&mut stack, at)?;
                let k = pop(&mut stack, at)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err(malformed(at, "SETITEM on something that is not a dict")),
                }
            }
            b'u' => {
                let items = pop_to_mark(&mut stack, at)?;
                let p = pairs(items, at)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.extend(p),
                    _ => return Err(malformed(at, "SETITEMS on something that is not a dict")),
                }
            }
            b'R' => {
                let args = pop(&mut stack, at)?;
                let f = pop(&mut stack, at)?;
                let v = reduce(f, args).map_err(|why| malformed(at, why))?;
                stack.push(v);
            }
            0x81 => {
                // NEWOBJ: cls.__new__(cls, *args) — only for an allowed class, with no arguments.
                let args = pop(&mut stack, at)?;
                let cls = pop(&mut stack, at)?;
                match (cls, args) {
                    (Value::Global(Known::Class(class)), Value::Tuple(a)) if a.is_empty() => {
                        stack.push(Value::Object { class, state: Box::new(Value::None) })
                    }
                    (Value::Global(Known::Class(class)), _) => {
                        return Err(malformed(at, format!("NEWOBJ of {class} with arguments")));
                    }
                    _ => return Err(malformed(at, "NEWOBJ of something that is not an allowed class")),
                }
            }
            b'b' => {
                // BUILD: an object's attribute dict; or an OrderedDict's attributes (`_metadata`) —
                // state dicts carry it; ignored.
                let state = pop(&mut stack, at)?;
                match stack.last_mut() {
                    Some(Value::Dict(_)) => {}
                    Some(Value::Object { state: slot, .. }) if **slot == Value::None => **slot = state,
                    other => {
                        return Err(malformed(at, format!("BUILD on {}", kind_name(other.map(|v| &*v)))));
                    }
                }
            }
            b'Q' => {
                let pid = pop(&mut stack, at)?;
                let v = persistent_load(&pid).map_err(|why| malformed(at, why))?;
                stack.push(v);
            }
            b'0' => {
                pop(&mut stack, at)?;
            }
            _ => return Err(PickleError::UnsupportedOpcode { opcode: op, at }),
        }
    }
}

fn kind_name(v: Option<&Value>) -> &'static str {
    match v {
        None => "an empty stack",
        Some(Value::Tensor(_)) => "a tensor",
        Some(Value::List(_)) => "a list",
        Some(Value::Tuple(_)) => "a tuple",
        Some(_) => "a non-dict value",
    }
}

fn known_global(module: &str, name: &str, classes: &[&str]) -> Result<Known, PickleError> {
    if classes.iter().any(|c| c.strip_prefix(module).and_then(|r| r.strip_prefix('.')) == Some(name)) {
        return Ok(Known::Class(format!("{module}.{name}")));
    }
    let k = match (module, name) {
        ("collections", "OrderedDict") => Known::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Known::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Known::RebuildParameter,
        ("torch", cls) => match StorageDtype::from_class(cls) {
            Some(d) => Known::StorageClass(d),
            None => return Err(forbidden(module, name)),
        },
        _ => return Err(forbidden(module, name)),
    };
    Ok(k)
}

fn forbidden(module: &str, name: &str) -> PickleError {
    PickleError::ForbiddenGlobal { module: module.to_owned(), name: name.to_owned() }
}

fn reduce(f: Value, args: Value) -> Result<Value, String> {
    let Value::Global(g) = f else {
        return Err("REDUCE of something that is not a known global".into());
    };
    let Value::Tuple(args) = args else {
        return Err("REDUCE arguments are not a tuple".into());
    };
    match g {
        Known::OrderedDict => {
            if args.is_empty() {
                Ok(Value::Dict(Vec::new()))
            } else {
                Err("OrderedDict(...) with arguments is not used by state dicts".into())
            }
        }
        Known::RebuildTensorV2 => {
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            if args.len() < 4 {
                return Err(format!("_rebuild_tensor_v2 with {} arguments", args.len()));
            }
            let Value::Storage(storage) = &args[0] else {
                return Err("_rebuild_tensor_v2: first argument is not a storage".into());
            };
            let offset = as_int(&args[1]).ok_or("_rebuild_tensor_v2: offset is not an int")?;
            let size = int_tuple(&args[2]).ok_or("_rebuild_tensor_v2: size is not a tuple of ints")?;
            let stride = int_tuple(&args[3]).ok_or("_rebuild_tensor_v2: stride is not a tuple of ints")?;
            if size.len() != stride.len() {
                return Err("_rebuild_tensor_v2: size and stride differ in length".into());
            }
            Ok(Value::Tensor(TensorRef { storage: storage.clone(), offset, size, stride }))
        }
        Known::RebuildParameter => match args.first() {
            Some(Value::Tensor(t)) => Ok(Value::Tensor(t.clone())),
            _ => Err("_rebuild_parameter: first argument is not a tensor".into()),
        },
        Known::StorageClass(_) => Err("storage classes are not called in state dicts".into()),
        Known::Class(c) => Err(format!("{c} is only instantiated by NEWOBJ, not called")),
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn int_tuple(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(as_int).collect(),
        _ => None,
    }
}

fn pairs(items: Vec<Value>, at: usize) -> Result<Vec<(Value, Value)>, PickleError> {
    if items.len() % 2 != 0 {
        return Err(malformed(at, "odd number of items for a dict"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn top(stack: &[Value], at: usize) -> Result<&Value, PickleError> {
    stack.last().ok_or_else(|| malformed(at, "memo store on an empty stack"))
}

fn pop(stack: &mut Vec<Value>, at: usize) -> Result<Value, PickleError> {
    match stack.pop() {
        Some(Value::Mark) | None => Err(malformed(at, "stack underflow")),
        Some(v) => Ok(v),
    }
}

fn pop_str(stack: &mut Vec<Value>, at: usize) -> Result<String, PickleError> {
    match pop(stack, at)? {
        Value::Str(s) => Ok(s),
        _ => Err(malformed(at, "STACK_GLOBAL needs two strings")),
    }
}

fn pop_to_mark(stack: &mut Vec<Value>, at: usize) -> Result<Vec<Value>, PickleError> {
    let mark =
        stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| malformed(at, "no MARK on the stack"))?;
    let items = stack.split_off(mark + 1);
    stack.pop();
    Ok(items)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).ok_or(PickleError::Truncated)?;
        if end > self.data.len() {
            return Err(PickleError::Truncated);
        }
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64_len(&mut self) -> Result<usize, PickleError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        usize::try_from(u64::from_le_bytes(a)).map_err(|_| PickleError::Truncated)
    }
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&c| c == b'\n').ok_or(PickleError::Truncated)?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
}

/// Interprets the tuple of a `BINPERSID`: `('storage', <storage class>, key, location, numel[, view])`.
pub fn storage_from_persistent_id(pid: &Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err("persistent id is not a tuple".into());
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(Known::StorageClass(dtype)), Value::Str(key), _location, Value::Int(numel), ..]
            if tag == "storage" =>
        {
            let numel = u64::try_from(*numel).map_err(|_| format!("storage {key} has a negative size"))?;
            Ok(Value::Storage(StorageRef { key: key.clone(), dtype: *dtype, numel }))
        }
        // The legacy format records a pickled module's class as ('module', class, file, source):
        // the class stands for itself (its source, kept for PyTorch's change warning, is ignored).
        // Only a class the caller allowed reaches here as `Known::Class`.
        [Value::Str(tag), class @ Value::Global(Known::Class(_)), ..] if tag == "module" => Ok(class.clone()),
        [Value::Str(tag), ..] => Err(format!("persistent id of type `{tag}` is not a storage reference")),
        _ => Err("persistent id is not a storage reference".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_pid(_: &Value) -> Result<Value, String> {
        Err("no persistent ids here".into())
    }

    #[test]
    fn reads_an_ordered_dict_of_ints_and_strings() {
        // pickle.dumps(collections.OrderedDict([("a", 1), ("b", "x")]), protocol=2)
        let data = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00aq\x02K\x01X\x01\x00\x00\x00bq\x03X\x01\x00\x00\x00xq\x04u.";
        let (v, n) = load(data, &no_pid).unwrap();
        assert_eq!(n, data.len());
        assert_eq!(
            v,
            Value::Dict(vec![
                (Value::Str("a".into()), Value::Int(1)),
                (Value::Str("b".into()), Value::Str("x".into()))
            ])
        );
    }

    #[test]
    fn refuses_a_code_global_without_running_it() {
        // the classic: cos\nsystem\n(S'echo pwned'\ntR.
        let data = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.";
        let err = load(data, &no_pid).unwrap_err();
        assert_eq!(err, PickleError::ForbiddenGlobal { module: "os".into(), name: "system".into() });
        assert!(err.to_string().contains("os.system"), "{err}");
        assert!(err.to_string().contains("nothing was executed"), "{err}");
    }

    #[test]
    fn truncation_and_unknown_opcodes_are_errors() {
        let data = b"\x80\x02}q\x00(X\x05\x00\x00\x00ab";
        assert_eq!(load(data, &no_pid).unwrap_err(), PickleError::Truncated);
        let data = b"\x80\x02I42\n.";
        assert!(matches!(load(data, &no_pid).unwrap_err(), PickleError::UnsupportedOpcode { opcode: b'I', at: 2 }));
    }

    #[test]
    fn long1_handles_negative_and_large_values() {
        let data = b"\x80\x02\x8a\x02\xff\xff\x8a\x05\x00\x00\x00\x00\x01\x86.";
        let (v, _) = load(data, &no_pid).unwrap();
        assert_eq!(v, Value::Tuple(vec![Value::Int(-1), Value::Int(1 << 32)]));
    }
}
