//! Reader for PyTorch checkpoints in the zip format that `torch.save` writes since torch 1.6.
//!
//! Accepts a zip with one top-level folder holding `data.pkl` and `data/<key>` storage blobs
//! (plus optional `byteorder`; big-endian archives are byte-swapped). The pickle (any protocol
//! 0-5) may contain only plain data (dict, OrderedDict, list, tuple, torch.Size, set, str, bytes,
//! numbers, bool, None) and tensors (`torch._utils._rebuild_tensor{,_v2,_v3}`,
//! `_rebuild_parameter*`, `torch._tensor._rebuild_from_type_v2` of a plain tensor or Parameter,
//! typed or untyped storages); `argparse.Namespace`, `torch.device` and dtypes are kept as inert
//! values and reported as skipped leaves, as are tensors of dtypes `DType` lacks (complex, uint16,
//! float8).
//!
//! Refuses: every other global (the unpickler never calls or imports anything: it builds data
//! from an allowlist, so a pickle naming `os.system` fails as a whole), legacy pre-1.6 files and
//! TorchScript archives (with a conversion hint), and any malformed input (truncation, stack
//! underflow, bad memo index, unknown opcode, missing or short storage, a view outside its
//! storage), always with an error, never a panic; nesting depth and total work are bounded.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;
use std::rc::Rc;

use super::{
    checked_numel, gather_strided, is_contiguous, open_zip, read_zip_member, swap_byte_order,
    view_extent, CheckpointError, DType, RawTensor,
};

/// What a `.pth` file holds: tensors by dotted path, and the non-tensor leaves (path, description).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PthContents {
    pub tensors: Vec<(String, RawTensor)>,
    pub skipped: Vec<(String, String)>,
}

/// Reads a `torch.save` zip checkpoint from disk (streamed, not slurped into memory).
pub fn read_pth(path: &Path) -> Result<PthContents, CheckpointError> {
    let name = path.display().to_string();
    let file =
        File::open(path).map_err(|e| CheckpointError::new(&name, format!("cannot open: {e}")))?;
    read_pth_from(BufReader::new(file), &name)
}

/// Reads a `torch.save` zip checkpoint held in memory; `name` is used in error messages.
pub fn read_pth_bytes(bytes: &[u8], name: &str) -> Result<PthContents, CheckpointError> {
    read_pth_from(Cursor::new(bytes), name)
}

/// Containers nested deeper than this are refused (state dicts nest two or three levels).
const MAX_DEPTH: usize = 64;
/// Tensors with more dimensions are refused.
const MAX_DIMS: usize = 64;
/// Budget, in elements copied or visited, for unpickling and for flattening: far above any real
/// checkpoint, and low enough that crafted sharing (lists holding a list twice, nested) fails fast.
const MAX_WORK: usize = 1 << 26;
/// Tensor bytes produced may exceed the storages' bytes (views of one storage, tied weights)
/// by this factor plus `OUTPUT_SLACK`; more means a pickle repeating a tensor to exhaust memory.
const OUTPUT_FACTOR: u64 = 4;
const OUTPUT_SLACK: u64 = 64 << 20;

fn read_pth_from<R: Read + Seek>(reader: R, file: &str) -> Result<PthContents, CheckpointError> {
    let fail = |msg: String| CheckpointError::new(file, msg);
    let mut zip = open_zip(reader, file)?;
    let layout = find_layout(&zip).map_err(fail)?;
    let (_, pickle) = read_zip_member(&mut zip, layout.pickle, file)?;
    let big_endian = match layout.byteorder {
        None => false,
        Some(index) => match read_zip_member(&mut zip, index, file)?.1.trim_ascii() {
            b"little" => false,
            b"big" => true,
            other => {
                let shown = String::from_utf8_lossy(other.get(..32).unwrap_or(other)).into_owned();
                return Err(fail(format!("unknown byte order {shown:?} in `byteorder`")));
            }
        },
    };
    let mut machine = Machine::new(&pickle);
    let root = machine.run().map_err(fail)?;
    let leaves = machine.flatten(&root).map_err(fail)?;
    materialize(&machine, leaves, &mut zip, &layout.prefix, big_endian, file)
}

/// Where the parts of a torch.save archive are.
struct Layout {
    prefix: String,
    pickle: usize,
    byteorder: Option<usize>,
}

fn find_layout<R: Read + Seek>(zip: &zip::ZipArchive<R>) -> Result<Layout, String> {
    let names: Vec<&str> = zip.file_names().collect();
    // The top-level folder, for `<folder>/<rest>` names.
    let top_level = |name: &str, rest: &str| -> Option<String> {
        let folder = name.strip_suffix(rest)?.strip_suffix('/')?;
        (!folder.contains('/')).then(|| folder.to_string())
    };
    let is_torchscript = names.iter().any(|n| {
        top_level(n, "constants.pkl").is_some()
            || n.split_once('/')
                .is_some_and(|(_, rest)| rest.starts_with("code/"))
    });
    if is_torchscript {
        return Err(
            "this is a TorchScript archive (torch.jit.save), not a torch.save checkpoint: \
                    load it with `torch.jit.load(f)` and re-save its `state_dict()` with \
                    `torch.save`, or convert it to safetensors"
                .into(),
        );
    }
    let pickles: Vec<String> = names
        .iter()
        .filter_map(|n| top_level(n, "data.pkl"))
        .collect();
    let prefix = match pickles.as_slice() {
        [prefix] => prefix.clone(),
        [] if names.iter().any(|n| n.ends_with(".npy")) => {
            return Err(
                "this is a NumPy .npz archive, not a PyTorch checkpoint; read it with \
                        the npz reader"
                    .into(),
            )
        }
        [] => return Err("no `<folder>/data.pkl` entry: not a torch.save zip archive".into()),
        _ => {
            return Err(format!(
                "several `data.pkl` entries ({pickles:?}): not a single torch.save archive"
            ))
        }
    };
    let index = |rest: &str| zip.index_for_name(&format!("{prefix}/{rest}"));
    let pickle = index("data.pkl").ok_or("`data.pkl` vanished from the archive")?;
    let byteorder = index("byteorder");
    Ok(Layout {
        prefix,
        pickle,
        byteorder,
    })
}

// ---------------------------------------------------------------------------------------------
// The restricted unpickler.

/// A value on the pickle stack. Containers live in `Machine::objs` so that memo references share
/// them (as in Python) and copies are O(1); strings and bytes are reference-counted for the same
/// reason.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64; only its byte length is kept, for the report.
    BigInt(usize),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Obj(usize),
    Global(Global),
    Storage(usize),
    Tensor(usize),
    /// An instance of an allowlisted data-only class, kept only to be reported.
    Inert(&'static str),
}

#[derive(Debug)]
enum Obj {
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
}

/// The globals a checkpoint may name. Nothing is ever imported or called: each is interpreted.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    Parameter,
    RebuildFromTypeV2,
    TensorClass,
    /// `torch.Size`, a tuple subclass.
    Size,
    Storage(StorageType),
    DType(TorchDType),
    Inert(&'static str),
    CodecsEncode,
    Set,
    FrozenSet,
}

/// A `torch.<X>Storage` class: its element type, if `DType` has it, and element size.
#[derive(Clone, Copy, Debug, PartialEq)]
struct StorageType {
    name: &'static str,
    dtype: Option<DType>,
    elem: usize,
}

const STORAGE_TYPES: &[StorageType] = &[
    StorageType {
        name: "FloatStorage",
        dtype: Some(DType::F32),
        elem: 4,
    },
    StorageType {
        name: "HalfStorage",
        dtype: Some(DType::F16),
        elem: 2,
    },
    StorageType {
        name: "BFloat16Storage",
        dtype: Some(DType::BF16),
        elem: 2,
    },
    StorageType {
        name: "DoubleStorage",
        dtype: Some(DType::F64),
        elem: 8,
    },
    StorageType {
        name: "LongStorage",
        dtype: Some(DType::I64),
        elem: 8,
    },
    StorageType {
        name: "IntStorage",
        dtype: Some(DType::I32),
        elem: 4,
    },
    StorageType {
        name: "ShortStorage",
        dtype: Some(DType::I16),
        elem: 2,
    },
    StorageType {
        name: "CharStorage",
        dtype: Some(DType::I8),
        elem: 1,
    },
    StorageType {
        name: "ByteStorage",
        dtype: Some(DType::U8),
        elem: 1,
    },
    StorageType {
        name: "BoolStorage",
        dtype: Some(DType::Bool),
        elem: 1,
    },
    // Untyped storages (torch >= 2, for dtypes without a legacy class) count bytes.
    StorageType {
        name: "UntypedStorage",
        dtype: Some(DType::U8),
        elem: 1,
    },
    StorageType {
        name: "ComplexFloatStorage",
        dtype: None,
        elem: 8,
    },
    StorageType {
        name: "ComplexDoubleStorage",
        dtype: None,
        elem: 16,
    },
    StorageType {
        name: "QInt8Storage",
        dtype: None,
        elem: 1,
    },
    StorageType {
        name: "QUInt8Storage",
        dtype: None,
        elem: 1,
    },
    StorageType {
        name: "QInt32Storage",
        dtype: None,
        elem: 4,
    },
    StorageType {
        name: "QUInt4x2Storage",
        dtype: None,
        elem: 1,
    },
    StorageType {
        name: "QUInt2x4Storage",
        dtype: None,
        elem: 1,
    },
];

/// A `torch.<dtype>` global (torch >= 2 passes one to `_rebuild_tensor_v3`; configs hold them).
#[derive(Clone, Copy, Debug, PartialEq)]
struct TorchDType {
    name: &'static str,
    dtype: Option<DType>,
}

const TORCH_DTYPES: &[TorchDType] = &[
    TorchDType {
        name: "float32",
        dtype: Some(DType::F32),
    },
    TorchDType {
        name: "float16",
        dtype: Some(DType::F16),
    },
    TorchDType {
        name: "bfloat16",
        dtype: Some(DType::BF16),
    },
    TorchDType {
        name: "float64",
        dtype: Some(DType::F64),
    },
    TorchDType {
        name: "int64",
        dtype: Some(DType::I64),
    },
    TorchDType {
        name: "int32",
        dtype: Some(DType::I32),
    },
    TorchDType {
        name: "int16",
        dtype: Some(DType::I16),
    },
    TorchDType {
        name: "int8",
        dtype: Some(DType::I8),
    },
    TorchDType {
        name: "uint8",
        dtype: Some(DType::U8),
    },
    TorchDType {
        name: "bool",
        dtype: Some(DType::Bool),
    },
    TorchDType {
        name: "uint16",
        dtype: None,
    },
    TorchDType {
        name: "uint32",
        dtype: None,
    },
    TorchDType {
        name: "uint64",
        dtype: None,
    },
    TorchDType {
        name: "complex32",
        dtype: None,
    },
    TorchDType {
        name: "complex64",
        dtype: None,
    },
    TorchDType {
        name: "complex128",
        dtype: None,
    },
    TorchDType {
        name: "float8_e5m2",
        dtype: None,
    },
    TorchDType {
        name: "float8_e4m3fn",
        dtype: None,
    },
    TorchDType {
        name: "float8_e5m2fnuz",
        dtype: None,
    },
    TorchDType {
        name: "float8_e4m3fnuz",
        dtype: None,
    },
    TorchDType {
        name: "float8_e8m0fnu",
        dtype: None,
    },
    TorchDType {
        name: "float4_e2m1fn_x2",
        dtype: None,
    },
];

impl Global {
    /// The only module/name pairs a checkpoint may reference.
    fn resolve(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch.nn.parameter", "Parameter") => Global::Parameter,
            ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
            ("torch" | "torch._tensor", "Tensor") => Global::TensorClass,
            ("torch", "Size") => Global::Size,
            ("torch.storage", "UntypedStorage") => Global::Storage(storage_type("UntypedStorage")?),
            ("torch", "device") => Global::Inert("torch.device"),
            ("argparse", "Namespace") => Global::Inert("argparse.Namespace"),
            ("_codecs", "encode") => Global::CodecsEncode,
            ("builtins" | "__builtin__", "set") => Global::Set,
            ("builtins" | "__builtin__", "frozenset") => Global::FrozenSet,
            ("torch", name) => match storage_type(name) {
                Some(st) => Global::Storage(st),
                None => Global::DType(*TORCH_DTYPES.iter().find(|d| d.name == name)?),
            },
            _ => return None,
        })
    }

    fn qualname(self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::RebuildTensor => "torch._utils._rebuild_tensor".into(),
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildTensorV3 => "torch._utils._rebuild_tensor_v3".into(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::RebuildParameterWithState => {
                "torch._utils._rebuild_parameter_with_state".into()
            }
            Global::Parameter => "torch.nn.parameter.Parameter".into(),
            Global::RebuildFromTypeV2 => "torch._tensor._rebuild_from_type_v2".into(),
            Global::TensorClass => "torch.Tensor".into(),
            Global::Size => "torch.Size".into(),
            Global::Storage(st) => format!("torch.{}", st.name),
            Global::DType(d) => format!("torch.{}", d.name),
            Global::Inert(name) => name.into(),
            Global::CodecsEncode => "_codecs.encode".into(),
            Global::Set => "builtins.set".into(),
            Global::FrozenSet => "builtins.frozenset".into(),
        }
    }
}

fn storage_type(name: &str) -> Option<StorageType> {
    STORAGE_TYPES.iter().find(|s| s.name == name).copied()
}

fn refuse_global(module: &str, name: &str) -> String {
    // The names come from the file: keep them short and printable in the message.
    let clean = |s: &str| -> String {
        let mut out: String = s
            .chars()
            .take(80)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if s.chars().count() > 80 {
            out.push('…');
        }
        out
    };
    format!(
        "refusing to load: the pickle references `{}.{}`, which is not part of a state dict \
         (a checkpoint must never run code)",
        clean(module),
        clean(name)
    )
}

/// A storage named by a persistent id: `('storage', torch.<X>Storage, key, location, numel)`.
#[derive(Debug)]
struct StorageRef {
    key: Rc<str>,
    ty: StorageType,
    numel: u64,
}

impl StorageRef {
    fn nbytes(&self) -> Option<u64> {
        self.numel.checked_mul(self.ty.elem as u64)
    }
}

/// A tensor as the pickle describes it: a view (in elements of `dtype`) into a storage.
#[derive(Debug)]
struct TensorRef {
    storage: usize,
    /// The element type, or the torch name of one `DType` lacks.
    dtype: Result<DType, String>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// The pickle virtual machine, restricted to building data.
struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    /// Where the opcode being executed starts, for error messages.
    op_pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK; values below the innermost mark cannot be popped.
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    objs: Vec<Obj>,
    storages: Vec<StorageRef>,
    storage_ids: HashMap<Rc<str>, usize>,
    tensors: Vec<TensorRef>,
    work: usize,
}

impl<'a> Machine<'a> {
    fn new(input: &'a [u8]) -> Self {
        Machine {
            input,
            pos: 0,
            op_pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objs: Vec::new(),
            storages: Vec::new(),
            storage_ids: HashMap::new(),
            tensors: Vec::new(),
            work: 0,
        }
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> String {
        format!("corrupt data.pkl (opcode at byte {}): {what}", self.op_pos)
    }

    fn charge(&mut self, n: usize) -> Result<(), String> {
        self.work = self.work.saturating_add(n);
        if self.work > MAX_WORK {
            return Err(
                self.corrupt("the pickle copies too much data (crafted to exhaust memory?)")
            );
        }
        Ok(())
    }

    // -- input --

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let input = self.input;
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| input.get(self.pos..end))
            .ok_or_else(|| format!("data.pkl is truncated (at byte {})", self.pos))?;
        self.pos += n;
        Ok(bytes)
    }

    fn take_len(&mut self, n: u64) -> Result<&'a [u8], String> {
        // A length past the end is truncation, whatever its size; never allocate for it.
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        self.take(n)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A newline-terminated argument of the text (protocol 0) opcodes, without the newline.
    fn line(&mut self) -> Result<&'a [u8], String> {
        let rest = self.input.get(self.pos..).unwrap_or_default();
        let len = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
            format!(
                "data.pkl is truncated (unterminated line at byte {})",
                self.pos
            )
        })?;
        let line = self.take(len)?;
        self.pos += 1;
        Ok(line)
    }

    fn text_line(&mut self) -> Result<&'a str, String> {
        let line = self.line()?;
        std::str::from_utf8(line).map_err(|_| self.corrupt("non-UTF-8 text argument"))
    }

    // -- stack --

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.stack.len() <= self.floor() {
            return Err(self.corrupt("stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.corrupt("stack underflow"))
    }

    fn top(&self) -> Result<&Value, String> {
        if self.stack.len() <= self.floor() {
            return Err(self.corrupt("stack underflow"));
        }
        self.stack
            .last()
            .ok_or_else(|| self.corrupt("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.corrupt("no MARK to pop"))?;
        if mark > self.stack.len() {
            return Err(self.corrupt("stack underflow below MARK"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn new_obj(&mut self, obj: Obj) -> Value {
        self.objs.push(obj);
        Value::Obj(self.objs.len() - 1)
    }

    /// The container the value at the top of the stack refers to.
    fn top_obj(&mut self) -> Result<&mut Obj, String> {
        let index = match self.top()? {
            Value::Obj(i) => *i,
            other => {
                return Err(self.corrupt(format!(
                    "expected a container on the stack, found {}",
                    describe(other)
                )))
            }
        };
        self.objs
            .get_mut(index)
            .ok_or_else(|| "internal: dangling object".to_string())
    }

    /// The items of a tuple or list value (copied, and charged for).
    fn sequence(&mut self, v: &Value, what: &str) -> Result<Vec<Value>, String> {
        let index = match v {
            Value::Obj(i) => match self.objs.get(*i) {
                Some(Obj::Tuple(items) | Obj::List(items) | Obj::Set(items)) => {
                    Some((*i, items.len()))
                }
                _ => None,
            },
            _ => None,
        };
        let (index, len) =
            index.ok_or_else(|| self.corrupt(format!("{what} must be a tuple or list")))?;
        self.charge(len)?;
        match self.objs.get(index) {
            Some(Obj::Tuple(items) | Obj::List(items) | Obj::Set(items)) => Ok(items.clone()),
            _ => Err("internal: object changed".into()),
        }
    }

    fn memo_get(&mut self, index: u64) -> Result<(), String> {
        let v = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| self.corrupt(format!("bad memo index {index}")))?;
        self.push(v);
        Ok(())
    }

    fn memo_put(&mut self, index: u64) -> Result<(), String> {
        let v = self.top()?.clone();
        self.memo.insert(index, v);
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), String> {
        let g = Global::resolve(module, name).ok_or_else(|| refuse_global(module, name))?;
        self.push(Value::Global(g));
        Ok(())
    }

    /// Runs the pickle to its STOP and returns the unpickled root object.
    fn run(&mut self) -> Result<Value, String> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8().map_err(|_| {
                format!(
                    "data.pkl is truncated (no STOP opcode by byte {})",
                    self.pos
                )
            })?;
            match op {
                0x80 => {
                    // PROTO
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.corrupt(format!("unsupported pickle protocol {v}")));
                    }
                }
                0x95 => {
                    // FRAME: the whole pickle is in memory, so framing is irrelevant.
                    self.u64()?;
                }
                b'.' => {
                    // STOP
                    let root = self.pop()?;
                    return Ok(root);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    // POP: like Python, an empty frame pops its MARK instead.
                    if self.stack.len() > self.floor() || self.marks.is_empty() {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }

                // Containers.
                b'}' => {
                    let v = self.new_obj(Obj::Dict(Vec::new()));
                    self.push(v);
                }
                b']' => {
                    let v = self.new_obj(Obj::List(Vec::new()));
                    self.push(v);
                }
                b')' => {
                    let v = self.new_obj(Obj::Tuple(Vec::new()));
                    self.push(v);
                }
                0x8f => {
                    let v = self.new_obj(Obj::Set(Vec::new()));
                    self.push(v);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.new_obj(Obj::Tuple(items));
                    self.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::Tuple(items));
                    self.push(v);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::List(items));
                    self.push(v);
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::Set(items));
                    self.push(v);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let v = self.new_obj(Obj::Dict(pairs));
                    self.push(v);
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top_obj()? {
                        Obj::List(items) => items.push(v),
                        _ => return Err(self.corrupt("APPEND to a non-list")),
                    }
                }
                b'e' => {
                    let new = self.pop_mark()?;
                    match self.top_obj()? {
                        Obj::List(items) => items.extend(new),
                        _ => return Err(self.corrupt("APPENDS to a non-list")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top_obj()? {
                        Obj::Dict(items) => items.push((k, v)),
                        _ => return Err(self.corrupt("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let new = self.pop_mark()?;
                    let pairs = self.pairs(new)?;
                    match self.top_obj()? {
                        Obj::Dict(items) => items.extend(pairs),
                        _ => return Err(self.corrupt("SETITEMS on a non-dict")),
                    }
                }
                0x90 => {
                    let new = self.pop_mark()?;
                    match self.top_obj()? {
                        Obj::Set(items) => items.extend(new),
                        _ => return Err(self.corrupt("ADDITEMS on a non-set")),
                    }
                }

                // Scalars.
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()));
                }
                0x8a => {
                    let n = self.u8()?;
                    let bytes = self.take(n.into())?;
                    self.push(decode_long(bytes));
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.array()?);
                    let n = u64::try_from(n).map_err(|_| self.corrupt("negative LONG4 length"))?;
                    let bytes = self.take_len(n)?;
                    self.push(decode_long(bytes));
                }
                b'I' => {
                    let text = self.text_line()?.trim();
                    let v = match text {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => {
                            parse_text_int(text).ok_or_else(|| self.corrupt("bad INT argument"))?
                        }
                    };
                    self.push(v);
                }
                b'L' => {
                    let text = self.text_line()?.trim();
                    let text = text.strip_suffix('L').unwrap_or(text);
                    let v =
                        parse_text_int(text).ok_or_else(|| self.corrupt("bad LONG argument"))?;
                    self.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v));
                }
                b'F' => {
                    let text = self.text_line()?.trim();
                    let v = text
                        .parse::<f64>()
                        .map_err(|_| self.corrupt("bad FLOAT argument"))?;
                    self.push(Value::Float(v));
                }

                // Strings and bytes.
                0x8c => {
                    let n = self.u8()?;
                    let bytes = self.take(n.into())?;
                    self.push_utf8(bytes)?;
                }
                b'X' => {
                    let n = self.u32()?;
                    let bytes = self.take_len(n.into())?;
                    self.push_utf8(bytes)?;
                }
                0x8d => {
                    let n = self.u64()?;
                    let bytes = self.take_len(n)?;
                    self.push_utf8(bytes)?;
                }
                b'V' => {
                    let line = self.line()?;
                    let text = decode_raw_unicode_escape(line).map_err(|e| self.corrupt(e))?;
                    self.push(Value::Str(text.into()));
                }
                b'U' => {
                    let n = self.u8()?;
                    let bytes = self.take(n.into())?;
                    self.push(py2_str(bytes));
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.array()?);
                    let n =
                        u64::try_from(n).map_err(|_| self.corrupt("negative BINSTRING length"))?;
                    let bytes = self.take_len(n)?;
                    self.push(py2_str(bytes));
                }
                b'S' => {
                    let line = self.line()?;
                    let bytes = decode_string_literal(line).map_err(|e| self.corrupt(e))?;
                    self.push(py2_str(&bytes));
                }
                b'C' => {
                    let n = self.u8()?;
                    let bytes = self.take(n.into())?;
                    self.push(Value::Bytes(bytes.into()));
                }
                b'B' => {
                    let n = self.u32()?;
                    let bytes = self.take_len(n.into())?;
                    self.push(Value::Bytes(bytes.into()));
                }
                0x8e | 0x96 => {
                    // BINBYTES8, BYTEARRAY8
                    let n = self.u64()?;
                    let bytes = self.take_len(n)?;
                    self.push(Value::Bytes(bytes.into()));
                }
                0x97 => {
                    return Err(self.corrupt("out-of-band buffers (NEXT_BUFFER) are not supported"))
                }
                0x98 => {
                    // READONLY_BUFFER only changes mutability.
                    self.top()?;
                }

                // Memo.
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i.into())?;
                }
                b'p' => {
                    let i = self
                        .text_line()?
                        .trim()
                        .parse()
                        .map_err(|_| self.corrupt("bad PUT index"))?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(i.into())?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i.into())?;
                }
                b'g' => {
                    let i = self
                        .text_line()?
                        .trim()
                        .parse()
                        .map_err(|_| self.corrupt("bad GET index"))?;
                    self.memo_get(i)?;
                }

                // Globals and object construction: interpreted, never executed.
                b'c' => {
                    let module = self.text_line()?;
                    let name = self.text_line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => self.global(m, n)?,
                        _ => return Err(self.corrupt("STACK_GLOBAL needs two strings")),
                    }
                }
                0x82..=0x84 => {
                    return Err(
                        "refusing to load: the pickle uses the copyreg extension registry, \
                                which a state dict never needs (a checkpoint must never run code)"
                            .into(),
                    )
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = self.sequence(&args, "REDUCE arguments")?;
                    let v = self.call(&callable, args)?;
                    self.push(v);
                }
                b'i' => {
                    // INST: a global named inline, called with the items since MARK.
                    let module = self.text_line()?;
                    let name = self.text_line()?;
                    let g =
                        Global::resolve(module, name).ok_or_else(|| refuse_global(module, name))?;
                    let args = self.pop_mark()?;
                    let v = self.call(&Value::Global(g), args)?;
                    self.push(v);
                }
                b'o' => {
                    // OBJ: class and arguments since MARK.
                    let mut items = self.pop_mark()?.into_iter();
                    let class = items
                        .next()
                        .ok_or_else(|| self.corrupt("OBJ without a class"))?;
                    let v = self.call(&class, items.collect())?;
                    self.push(v);
                }
                0x81 => {
                    let _args = self.pop()?;
                    let class = self.pop()?;
                    let v = self.new_instance(&class)?;
                    self.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let _args = self.pop()?;
                    let class = self.pop()?;
                    let v = self.new_instance(&class)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD: object state (an OrderedDict's `_metadata`, a Namespace's fields)
                    // is not part of the tensors; it is dropped.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v);
                }
                b'P' => {
                    return Err(self.corrupt("text persistent ids (PERSID) are not torch storages"))
                }
                other => return Err(self.corrupt(format!("unknown opcode 0x{other:02x}"))),
            }
        }
    }

    fn push_utf8(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s =
            std::str::from_utf8(bytes).map_err(|_| self.corrupt("invalid UTF-8 in a string"))?;
        self.push(Value::Str(s.into()));
        Ok(())
    }

    fn pairs(&mut self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
        if items.len() % 2 != 0 {
            return Err(self.corrupt("odd number of items for a dict"));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    /// `cls.__new__(cls)` for NEWOBJ: only data classes, which start empty.
    fn new_instance(&mut self, class: &Value) -> Result<Value, String> {
        Ok(match class {
            Value::Global(Global::OrderedDict) => self.new_obj(Obj::Dict(Vec::new())),
            Value::Global(Global::Set | Global::FrozenSet) => self.new_obj(Obj::Set(Vec::new())),
            Value::Global(Global::Inert(name)) => Value::Inert(name),
            Value::Global(g) => {
                return Err(self.corrupt(format!("cannot instantiate `{}`", g.qualname())))
            }
            other => {
                return Err(self.corrupt(format!("NEWOBJ on a non-class ({})", describe(other))))
            }
        })
    }

    /// Interprets a call of an allowlisted global.
    fn call(&mut self, callable: &Value, args: Vec<Value>) -> Result<Value, String> {
        let g = match callable {
            Value::Global(g) => *g,
            other => {
                return Err(self.corrupt(format!("call of a non-callable ({})", describe(other))))
            }
        };
        match g {
            Global::OrderedDict => {
                let pairs = match args.as_slice() {
                    [] => Vec::new(),
                    [Value::Obj(i)] => self.dict_items(*i)?,
                    _ => return Err(self.corrupt("OrderedDict() with unexpected arguments")),
                };
                Ok(self.new_obj(Obj::Dict(pairs)))
            }
            Global::RebuildTensor => self.rebuild_tensor(&args, 4, 4, false),
            Global::RebuildTensorV2 => self.rebuild_tensor(&args, 6, 7, false),
            Global::RebuildTensorV3 => self.rebuild_tensor(&args, 7, 8, true),
            Global::RebuildParameter | Global::RebuildParameterWithState | Global::Parameter => {
                match args.first() {
                    Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                    _ => Err(self.corrupt(format!("`{}` without a tensor", g.qualname()))),
                }
            }
            Global::RebuildFromTypeV2 => {
                // (func, type, args, state): a tensor or Parameter rebuilt by `func`, plus Python
                // attributes that are dropped. Only tensor rebuilders may be nested, so this
                // recursion is one level deep.
                let [func, class, inner, _state] = args.as_slice() else {
                    return Err(self.corrupt("_rebuild_from_type_v2 needs 4 arguments"));
                };
                let allowed_func = matches!(
                    func,
                    Value::Global(
                        Global::RebuildTensor
                            | Global::RebuildTensorV2
                            | Global::RebuildTensorV3
                            | Global::RebuildParameter
                            | Global::RebuildParameterWithState
                    )
                );
                let allowed_class = matches!(
                    class,
                    Value::Global(Global::TensorClass | Global::Parameter)
                );
                if !allowed_func || !allowed_class {
                    return Err(
                        self.corrupt("_rebuild_from_type_v2 of something other than a tensor")
                    );
                }
                let inner = self.sequence(inner, "_rebuild_from_type_v2 arguments")?;
                self.call(func, inner)
            }
            Global::Inert(name) => Ok(Value::Inert(name)),
            Global::CodecsEncode => {
                // How protocol 2 spells bytes: encode(str, 'latin1').
                let (text, encoding) = match args.as_slice() {
                    [Value::Str(t)] => (t.clone(), "utf-8".into()),
                    [Value::Str(t), Value::Str(e)] => (t.clone(), e.to_ascii_lowercase()),
                    _ => return Err(self.corrupt("_codecs.encode with unexpected arguments")),
                };
                self.charge(text.len())?;
                let bytes: Vec<u8> = match encoding.as_str() {
                    "latin1" | "latin-1" | "iso-8859-1" => text
                        .chars()
                        .map(|c| u8::try_from(u32::from(c)))
                        .collect::<Result<_, _>>()
                        .map_err(|_| self.corrupt("non-latin-1 text in a latin-1 bytes object"))?,
                    "utf-8" | "utf8" => text.as_bytes().to_vec(),
                    other => return Err(self.corrupt(format!("unsupported encoding {other:?}"))),
                };
                Ok(Value::Bytes(bytes.into()))
            }
            Global::Set | Global::FrozenSet | Global::Size => {
                let items = match args.first() {
                    None => Vec::new(),
                    Some(v) => self.sequence(v, "constructor argument")?,
                };
                Ok(self.new_obj(if g == Global::Size {
                    Obj::Tuple(items)
                } else {
                    Obj::Set(items)
                }))
            }
            Global::TensorClass | Global::Storage(_) | Global::DType(_) => Err(format!(
                "refusing to load: the pickle calls `{}`, which a state dict never does",
                g.qualname()
            )),
        }
    }

    /// Items for `OrderedDict(x)`: a dict's pairs, or a list/tuple of 2-item pairs.
    fn dict_items(&mut self, index: usize) -> Result<Vec<(Value, Value)>, String> {
        let items = match self.objs.get(index) {
            Some(Obj::Dict(pairs)) => {
                let pairs = pairs.clone();
                self.charge(pairs.len())?;
                return Ok(pairs);
            }
            Some(Obj::List(items) | Obj::Tuple(items)) => items.clone(),
            _ => return Err(self.corrupt("OrderedDict() of a non-sequence")),
        };
        self.charge(items.len())?;
        items
            .iter()
            .map(
                |item| match self.sequence(item, "OrderedDict item")?.as_slice() {
                    [k, v] => Ok((k.clone(), v.clone())),
                    _ => Err(self.corrupt("OrderedDict item is not a pair")),
                },
            )
            .collect()
    }

    fn index_arg(&self, v: Option<&Value>, what: &str) -> Result<usize, String> {
        match v {
            Some(Value::Int(i)) => {
                usize::try_from(*i).map_err(|_| self.corrupt(format!("negative {what}")))
            }
            _ => Err(self.corrupt(format!("{what} must be an integer"))),
        }
    }

    fn index_tuple(&mut self, v: Option<&Value>, what: &str) -> Result<Vec<usize>, String> {
        let v = v.ok_or_else(|| self.corrupt(format!("missing tensor {what}")))?;
        let items = self.sequence(v, what)?;
        if items.len() > MAX_DIMS {
            return Err(self.corrupt(format!("tensor {what} has {} dimensions", items.len())));
        }
        items
            .iter()
            .map(|i| self.index_arg(Some(i), what))
            .collect()
    }

    /// `_rebuild_tensor*(storage, storage_offset, size, stride, ...)`, checked against the storage.
    fn rebuild_tensor(
        &mut self,
        args: &[Value],
        min_args: usize,
        max_args: usize,
        explicit_dtype: bool,
    ) -> Result<Value, String> {
        if args.len() < min_args || args.len() > max_args {
            return Err(self.corrupt(format!("tensor rebuild with {} arguments", args.len())));
        }
        let storage = match args.first() {
            Some(Value::Storage(s)) => *s,
            _ => return Err(self.corrupt("tensor rebuild without a storage")),
        };
        let offset = self.index_arg(args.get(1), "storage offset")?;
        let shape = self.index_tuple(args.get(2), "size")?;
        let stride = self.index_tuple(args.get(3), "stride")?;
        if shape.len() != stride.len() {
            return Err(self.corrupt(format!(
                "tensor size {shape:?} and stride {stride:?} differ in length"
            )));
        }
        let st = self
            .storages
            .get(storage)
            .ok_or("internal: dangling storage")?;
        let dtype = if explicit_dtype {
            match args.get(6) {
                Some(Value::Global(Global::DType(d))) => d.dtype.ok_or(format!("torch.{}", d.name)),
                _ => return Err(self.corrupt("_rebuild_tensor_v3 without a dtype")),
            }
        } else {
            st.ty.dtype.ok_or(format!("torch.{}", st.ty.name))
        };
        if let Ok(dtype) = dtype {
            let extent = view_extent(dtype.size(), offset, &shape, &stride);
            let fits = match (extent, st.nbytes()) {
                (Some((_, end)), Some(nbytes)) => end as u64 <= nbytes,
                _ => false,
            };
            if !fits {
                return Err(self.corrupt(format!(
                    "tensor view (offset {offset}, size {shape:?}, stride {stride:?}) does not fit \
                     storage `{}` of {} {} elements",
                    st.key, st.numel, st.ty.name
                )));
            }
        } else if checked_numel(&shape).is_none() {
            return Err(self.corrupt(format!("tensor size {shape:?} overflows")));
        }
        self.tensors.push(TensorRef {
            storage,
            dtype,
            offset,
            shape,
            stride,
        });
        Ok(Value::Tensor(self.tensors.len() - 1))
    }

    /// Resolves `('storage', torch.<X>Storage, key, location, numel)`; one storage per key.
    fn persistent_load(&mut self, pid: &Value) -> Result<Value, String> {
        let items = self.sequence(pid, "persistent id")?;
        let (ty, key, numel) = match items.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(ty)), Value::Str(key), _location, Value::Int(numel)]
                if &**tag == "storage" =>
            {
                (*ty, key.clone(), *numel)
            }
            _ => return Err(self.corrupt("persistent id is not a torch storage reference")),
        };
        let numel = u64::try_from(numel).map_err(|_| self.corrupt("negative storage size"))?;
        if let Some(&index) = self.storage_ids.get(&key) {
            let known = self
                .storages
                .get(index)
                .ok_or("internal: dangling storage")?;
            if known.ty != ty || known.numel != numel {
                return Err(self.corrupt(format!(
                    "storage `{key}` is declared twice with different types or sizes"
                )));
            }
            return Ok(Value::Storage(index));
        }
        let storage = StorageRef {
            key: key.clone(),
            ty,
            numel,
        };
        if storage.nbytes().is_none() {
            return Err(self.corrupt(format!("storage `{key}` size overflows")));
        }
        self.storages.push(storage);
        self.storage_ids.insert(key, self.storages.len() - 1);
        Ok(Value::Storage(self.storages.len() - 1))
    }

    // -- flattening --

    /// The leaves of the object graph in order, tensors and others, keyed by dotted path.
    fn flatten(&self, root: &Value) -> Result<Vec<Leaf>, String> {
        let mut leaves = Vec::new();
        let mut work = 0usize;
        self.walk(root, String::new(), 0, &mut leaves, &mut work)?;
        Ok(leaves)
    }

    fn walk(
        &self,
        v: &Value,
        path: String,
        depth: usize,
        out: &mut Vec<Leaf>,
        work: &mut usize,
    ) -> Result<(), String> {
        *work = work.saturating_add(1 + path.len());
        if *work > MAX_WORK {
            return Err(
                "the pickle's object graph is too large to flatten (crafted sharing?)".into(),
            );
        }
        let index = match v {
            Value::Tensor(t) => {
                out.push(Leaf::Tensor(path, *t));
                return Ok(());
            }
            Value::Obj(i) => *i,
            other => {
                out.push(Leaf::Skipped(path, describe(other)));
                return Ok(());
            }
        };
        if depth >= MAX_DEPTH {
            return Err(format!(
                "`{path}`: containers nested deeper than {MAX_DEPTH} levels (a self-referencing list or dict?)"
            ));
        }
        let join = |key: &str| {
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };
        match self.objs.get(index) {
            Some(Obj::Dict(pairs)) => {
                for (k, v) in pairs {
                    self.walk(v, join(&key_string(k)), depth + 1, out, work)?;
                }
            }
            Some(Obj::List(items) | Obj::Tuple(items)) => {
                for (i, v) in items.iter().enumerate() {
                    self.walk(v, join(&i.to_string()), depth + 1, out, work)?;
                }
            }
            Some(Obj::Set(items)) => {
                out.push(Leaf::Skipped(path, format!("set of {} items", items.len())))
            }
            None => return Err("internal: dangling object".into()),
        }
        Ok(())
    }
}

enum Leaf {
    Tensor(String, usize),
    Skipped(String, String),
}

/// A dict key as a path component.
fn key_string(k: &Value) -> String {
    match k {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::None => "None".into(),
        Value::Float(f) => format!("{f:?}"),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("<{}>", describe(other)),
    }
}

/// A short description of a non-tensor leaf, for the load report.
fn describe(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(b) => format!("bool {}", if *b { "True" } else { "False" }),
        Value::Int(i) => format!("int {i}"),
        Value::BigInt(n) => format!("int ({n}-byte integer)"),
        Value::Float(f) => format!("float {f:?}"),
        Value::Str(s) => {
            let short: String = s.chars().take(40).collect();
            let ellipsis = if short.len() < s.len() { "…" } else { "" };
            format!("str {short:?}{ellipsis}")
        }
        Value::Bytes(b) => format!("bytes ({} bytes)", b.len()),
        Value::Global(Global::DType(d)) => format!("dtype torch.{}", d.name),
        Value::Global(g) => format!("global {}", g.qualname()),
        Value::Inert(name) => format!("{name} object"),
        Value::Storage(_) => "bare storage (not a tensor)".into(),
        Value::Obj(_) => "container".into(),
        Value::Tensor(_) => "tensor".into(),
    }
}

/// LONG1/LONG4 payload: little-endian two's complement.
fn decode_long(bytes: &[u8]) -> Value {
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let fill = if negative { 0xff } else { 0 };
    if let Some(high) = bytes.get(8..) {
        let sign_bit_ok = bytes.get(7).is_some_and(|&b| (b & 0x80 != 0) == negative);
        if !sign_bit_ok || high.iter().any(|&b| b != fill) {
            return Value::BigInt(bytes.len());
        }
    }
    let mut buf = [fill; 8];
    for (dst, src) in buf.iter_mut().zip(bytes) {
        *dst = *src;
    }
    Value::Int(i64::from_le_bytes(buf))
}

/// A decimal INT/LONG argument; integers beyond i64 are kept as `BigInt`.
fn parse_text_int(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::Int(i));
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| Value::BigInt(digits.len()))
}

/// A Python 2 `str`: text when it is UTF-8, bytes otherwise.
fn py2_str(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::Str(s.into()),
        Err(_) => Value::Bytes(bytes.into()),
    }
}

/// UNICODE's `raw-unicode-escape`: latin-1 bytes with `\uXXXX` / `\UXXXXXXXX` escapes.
fn decode_raw_unicode_escape(bytes: &[u8]) -> Result<String, String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let digits = match (b, bytes.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => {
                out.push(char::from(b));
                i += 1;
                continue;
            }
        };
        let hex = bytes
            .get(i + 2..i + 2 + digits)
            .ok_or("truncated \\u escape")?;
        out.push(hex_char(hex).ok_or("bad \\u escape")?);
        i += 2 + digits;
    }
    Ok(out)
}

fn hex_char(hex: &[u8]) -> Option<char> {
    let code = hex
        .iter()
        .try_fold(0u32, |acc, &h| Some(acc * 16 + char::from(h).to_digit(16)?))?;
    char::from_u32(code)
}

/// STRING's argument: a quoted Python 2 string literal with backslash escapes.
fn decode_string_literal(line: &[u8]) -> Result<Vec<u8>, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let body = match line {
        [q @ (b'\'' | b'"'), body @ .., last] if last == q => body,
        _ => return Err("STRING argument is not quoted".into()),
    };
    let mut out = Vec::with_capacity(body.len());
    let mut it = body.iter().copied().peekable();
    while let Some(b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let e = it.next().ok_or("STRING ends in a backslash")?;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'v' => out.push(0x0b),
            b'\\' | b'\'' | b'"' => out.push(e),
            b'\n' => {}
            b'x' => {
                let (h, l) = (it.next(), it.next());
                let hex = [
                    h.ok_or("truncated \\x escape")?,
                    l.ok_or("truncated \\x escape")?,
                ];
                let c = hex_char(&hex).ok_or("bad \\x escape")?;
                out.push(u8::try_from(u32::from(c)).map_err(|_| "bad \\x escape")?);
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match it.peek() {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            it.next();
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            other => out.extend([b'\\', other]),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Reading the storages and building contiguous tensors.

fn materialize<R: Read + Seek>(
    machine: &Machine<'_>,
    leaves: Vec<Leaf>,
    zip: &mut zip::ZipArchive<R>,
    prefix: &str,
    big_endian: bool,
    file: &str,
) -> Result<PthContents, CheckpointError> {
    let fail = |msg: String| CheckpointError::new(file, msg);
    let tensor = |t: usize| {
        machine
            .tensors
            .get(t)
            .ok_or_else(|| fail("internal: dangling tensor".into()))
    };

    // How many loadable tensors use each storage, so a blob is dropped after its last use.
    let mut uses = vec![0usize; machine.storages.len()];
    for leaf in &leaves {
        if let Leaf::Tensor(_, t) = leaf {
            let t = tensor(*t)?;
            if t.dtype.is_ok() {
                if let Some(u) = uses.get_mut(t.storage) {
                    *u += 1;
                }
            }
        }
    }
    // Find and size-check every needed blob before reading any, so that the output budget below
    // rests on checked sizes.
    let mut entries = vec![None; machine.storages.len()];
    let mut storage_bytes = 0u64;
    for (s, storage) in machine.storages.iter().enumerate() {
        if uses.get(s).copied().unwrap_or(0) == 0 {
            continue;
        }
        let name = format!("{prefix}/data/{}", storage.key);
        let index = zip.index_for_name(&name).ok_or_else(|| {
            fail(format!(
                "storage `{}` is missing: no `{name}` entry",
                storage.key
            ))
        })?;
        let size = zip
            .by_index_raw(index)
            .map_err(|e| fail(format!("zip entry `{name}`: {e}")))?
            .size();
        let expected = storage.nbytes().unwrap_or(u64::MAX);
        if size != expected {
            return Err(fail(format!(
                "storage `{}` should hold {expected} bytes ({} {} elements) but `{name}` has {size}",
                storage.key, storage.numel, storage.ty.name
            )));
        }
        storage_bytes = storage_bytes.saturating_add(size);
        if let Some(e) = entries.get_mut(s) {
            *e = Some(index);
        }
    }
    let budget = storage_bytes
        .saturating_mul(OUTPUT_FACTOR)
        .saturating_add(OUTPUT_SLACK);
    let mut produced = 0u64;

    let mut out = PthContents::default();
    let mut position: HashMap<String, usize> = HashMap::new();
    let mut blobs: HashMap<usize, Vec<u8>> = HashMap::new();
    for leaf in leaves {
        let (path, t) = match leaf {
            Leaf::Skipped(path, what) => {
                out.skipped.push((path, what));
                continue;
            }
            Leaf::Tensor(path, t) => (path, tensor(t)?),
        };
        let dtype = match &t.dtype {
            Ok(d) => *d,
            Err(name) => {
                out.skipped.push((
                    path,
                    format!("tensor of unsupported dtype {name}, size {:?}", t.shape),
                ));
                continue;
            }
        };
        let elem = dtype.size();
        let nbytes = checked_numel(&t.shape)
            .and_then(|n| n.checked_mul(elem))
            .ok_or_else(|| fail(format!("`{path}`: tensor size {:?} overflows", t.shape)))?;
        produced = produced.saturating_add(nbytes as u64);
        if produced > budget {
            return Err(fail(format!(
                "`{path}`: the tensors add up to far more bytes than the archive's storages \
                 ({storage_bytes}); the pickle repeats or broadcasts tensors to exhaust memory"
            )));
        }
        let s = t.storage;
        if !blobs.contains_key(&s) {
            let index = entries
                .get(s)
                .copied()
                .flatten()
                .ok_or_else(|| fail("internal: unsized storage".into()))?;
            let (_, bytes) = read_zip_member(zip, index, file)?;
            blobs.insert(s, bytes);
        }
        let remaining = uses
            .get_mut(s)
            .ok_or_else(|| fail("internal: dangling storage".into()))?;
        *remaining = remaining.saturating_sub(1);
        let last_use = *remaining == 0;
        let blob = blobs
            .get(&s)
            .ok_or_else(|| fail("internal: storage not loaded".into()))?;
        let whole = t.offset == 0 && nbytes == blob.len() && is_contiguous(&t.shape, &t.stride);
        let mut data = if last_use && whole {
            // The common case: the tensor is its whole storage; take the blob without a copy.
            blobs
                .remove(&s)
                .ok_or_else(|| fail("internal: storage not loaded".into()))?
        } else {
            let data = gather_strided(blob, elem, t.offset, &t.shape, &t.stride)
                .map_err(|e| fail(format!("`{path}`: {e}")))?;
            if last_use {
                blobs.remove(&s);
            }
            data
        };
        if big_endian {
            swap_byte_order(&mut data, elem);
        }
        let raw = RawTensor {
            dtype,
            shape: t.shape.clone(),
            data,
        };
        // A repeated dict key keeps its first position and its last value, as in Python.
        match position.get(&path) {
            Some(&i) => {
                if let Some(slot) = out.tensors.get_mut(i) {
                    slot.1 = raw;
                }
            }
            None => {
                position.insert(path.clone(), out.tensors.len());
                out.tensors.push((path, raw));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{for_each_mutation, zip_of};
    use super::*;

    /// Hand-assembles protocol-2 pickles the way torch.save writes them.
    #[derive(Default)]
    struct Pickle(Vec<u8>);

    impl Pickle {
        fn new() -> Self {
            Pickle(vec![0x80, 2])
        }
        fn op(&mut self, bytes: &[u8]) -> &mut Self {
            self.0.extend_from_slice(bytes);
            self
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.op(format!("c{module}\n{name}\n").as_bytes())
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.op(b"X")
                .op(&(s.len() as u32).to_le_bytes())
                .op(s.as_bytes())
        }
        fn int(&mut self, v: i32) -> &mut Self {
            self.op(b"J").op(&v.to_le_bytes())
        }
        fn ints(&mut self, vs: &[usize]) -> &mut Self {
            self.op(b"(");
            for &v in vs {
                self.int(v as i32);
            }
            self.op(b"t")
        }
        /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
        fn tensor(
            &mut self,
            storage: &str,
            key: &str,
            numel: usize,
            offset: usize,
            size: &[usize],
            stride: &[usize],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
            self.op(b"(")
                .str("storage")
                .global("torch", storage)
                .str(key)
                .str("cpu")
                .int(numel as i32)
                .op(b"tQ");
            self.int(offset as i32).ints(size).ints(stride).op(b"\x89");
            self.global("collections", "OrderedDict")
                .op(b")R")
                .op(b"tR")
        }
        fn stop(&mut self) -> Vec<u8> {
            self.op(b".");
            self.0.clone()
        }
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn f32s(t: &RawTensor) -> Vec<f32> {
        t.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn archive(pickle: &[u8], blobs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut members: Vec<(String, &[u8])> = vec![
            ("archive/data.pkl".into(), pickle),
            ("archive/byteorder".into(), &b"little"[..]),
        ];
        for (key, bytes) in blobs {
            members.push((format!("archive/data/{key}"), bytes));
        }
        members.push(("archive/version".into(), &b"3\n"[..]));
        let refs: Vec<(&str, &[u8], bool)> = members
            .iter()
            .map(|(n, b)| (n.as_str(), *b, false))
            .collect();
        zip_of(&refs)
    }

    /// `OrderedDict(w=[2,3] f32, w_t=w.t())` sharing storage "0".
    fn shared_state_dict() -> Vec<u8> {
        let mut p = Pickle::new();
        p.global("collections", "OrderedDict")
            .op(b")R")
            .op(b"q\x00(");
        p.str("w")
            .tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
        p.str("w_t")
            .tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3]);
        p.op(b"u");
        archive(&p.stop(), &[("0", &f32_bytes(&[0., 1., 2., 3., 4., 5.]))])
    }

    #[test]
    fn ordered_dict_with_shared_transposed_view() {
        let got = read_pth_bytes(&shared_state_dict(), "sd.pth").unwrap();
        assert!(got.skipped.is_empty());
        let keys: Vec<&str> = got.tensors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["w", "w_t"]);
        let (w, wt) = (&got.tensors[0].1, &got.tensors[1].1);
        assert_eq!((w.dtype, w.shape.clone()), (DType::F32, vec![2, 3]));
        assert_eq!(f32s(w), [0., 1., 2., 3., 4., 5.]);
        assert_eq!(wt.shape, [3, 2]);
        assert_eq!(f32s(wt), [0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn nested_checkpoint_is_flattened_with_dots() {
        let mut p = Pickle::new();
        p.op(b"}(")
            .str("model")
            .global("collections", "OrderedDict")
            .op(b")R(");
        p.str("layers.0.blocks.0.attn.qkv.weight")
            .tensor("FloatStorage", "0", 4, 1, &[3], &[1]);
        p.op(b"u").str("epoch").op(b"K\x03");
        p.str("extra")
            .op(b"](")
            .tensor("FloatStorage", "0", 4, 0, &[1], &[1])
            .op(b"G\x3f\xf8\0\0\0\0\0\0Ne");
        p.op(b"u");
        let file = archive(&p.stop(), &[("0", &f32_bytes(&[1., 2., 3., 4.]))]);
        let got = read_pth_bytes(&file, "ck.pth").unwrap();
        let keys: Vec<&str> = got.tensors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["model.layers.0.blocks.0.attn.qkv.weight", "extra.0"]);
        assert_eq!(f32s(&got.tensors[0].1), [2., 3., 4.]);
        assert_eq!(f32s(&got.tensors[1].1), [1.]);
        let skipped: Vec<(&str, &str)> = got
            .skipped
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("epoch", "int 3"),
                ("extra.1", "float 1.5"),
                ("extra.2", "None")
            ]
        );
    }

    #[test]
    fn half_and_zero_dim_tensors() {
        let halves: Vec<u8> = [1.5f32, -2.0, 0.25]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let mut p = Pickle::new();
        p.op(b"}(")
            .str("h")
            .tensor("HalfStorage", "a", 3, 0, &[3], &[1]);
        p.str("scalar")
            .tensor("FloatStorage", "b", 3, 2, &[], &[])
            .op(b"u");
        let file = archive(
            &p.stop(),
            &[("a", &halves), ("b", &f32_bytes(&[7., 8., 9.]))],
        );
        let got = read_pth_bytes(&file, "x.pth").unwrap();
        let h = &got.tensors[0].1;
        assert_eq!((h.dtype, h.shape.clone()), (DType::F16, vec![3]));
        let vals: Vec<f32> = h
            .data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        assert_eq!(vals, [1.5, -2.0, 0.25]);
        let s = &got.tensors[1].1;
        assert_eq!((s.shape.len(), s.numel()), (0, 1));
        assert_eq!(f32s(s), [9.]);
    }

    #[test]
    fn big_endian_archives_are_swapped() {
        let mut p = Pickle::new();
        p.op(b"}(")
            .str("x")
            .tensor("IntStorage", "0", 2, 0, &[2], &[1])
            .op(b"u");
        let blob: Vec<u8> = [1i32, -2].iter().flat_map(|v| v.to_be_bytes()).collect();
        let file = zip_of(&[
            ("x/data.pkl", &p.stop(), false),
            ("x/byteorder", b"big", false),
            ("x/data/0", &blob, true),
        ]);
        let got = read_pth_bytes(&file, "be.pth").unwrap();
        let t = &got.tensors[0].1;
        assert_eq!(
            (t.dtype, t.data.clone()),
            (
                DType::I32,
                [1i32, -2].iter().flat_map(|v| v.to_le_bytes()).collect()
            )
        );
    }

    #[test]
    fn parameters_v3_bytes_and_inert_objects() {
        let mut p = Pickle::new();
        p.op(b"}(")
            .str("p")
            .global("torch._utils", "_rebuild_parameter")
            .op(b"(");
        p.tensor("FloatStorage", "0", 1, 0, &[1], &[1])
            .op(b"\x88")
            .global("collections", "OrderedDict")
            .op(b")RtR");
        // torch >= 2 for dtypes without a legacy storage class: untyped storage plus a dtype.
        p.str("u")
            .global("torch._utils", "_rebuild_tensor_v3")
            .op(b"((")
            .str("storage");
        p.global("torch.storage", "UntypedStorage")
            .str("1")
            .str("cpu")
            .int(4)
            .op(b"tQ");
        p.int(0)
            .ints(&[2])
            .ints(&[1])
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")R");
        p.global("torch", "uint16").op(b"tR");
        p.str("b")
            .global("_codecs", "encode")
            .str("\u{0}\u{ff}")
            .str("latin1")
            .op(b"\x86R");
        p.str("args")
            .global("argparse", "Namespace")
            .op(b")\x81}(")
            .str("lr")
            .op(b"G\x3f\xb9\x99\x99\x99\x99\x99\x9aub");
        p.str("dev")
            .global("torch", "device")
            .str("cuda")
            .op(b"\x85R");
        p.str("s")
            .global("__builtin__", "set")
            .op(b"](K\x01K\x02e\x85R");
        p.str("dt").global("torch", "bfloat16");
        p.str("size")
            .global("torch", "Size")
            .op(b"(K\x02K\x03t\x85R")
            .op(b"u");
        let file = archive(&p.stop(), &[("0", &f32_bytes(&[3.])), ("1", &[1, 0, 2, 0])]);
        let got = read_pth_bytes(&file, "x.pth").unwrap();
        assert_eq!(got.tensors.len(), 1);
        assert_eq!(
            (got.tensors[0].0.as_str(), f32s(&got.tensors[0].1)),
            ("p", vec![3.])
        );
        let skipped: Vec<(&str, &str)> = got
            .skipped
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("u", "tensor of unsupported dtype torch.uint16, size [2]"),
                ("b", "bytes (2 bytes)"),
                ("args", "argparse.Namespace object"),
                ("dev", "torch.device object"),
                ("s", "set of 2 items"),
                ("dt", "dtype torch.bfloat16"),
                ("size.0", "int 2"),
                ("size.1", "int 3"),
            ]
        );
    }

    #[test]
    fn text_protocol_opcodes_and_memo() {
        // Protocol 0: DICT, LIST, PUT/GET, INT/LONG/FLOAT/STRING/UNICODE, plus MEMOIZE and DUP.
        let pickle = b"(S'i'\nI7\nS'l'\nL-12345678901234567890L\nS'f'\nF0.5\nS'u'\nVa\\u00e9\np0\nS'g'\ng0\nS'xs'\n(lI01\naI00\na\x942\x940d.";
        let file = archive(pickle, &[]);
        let got = read_pth_bytes(&file, "p0.pth").unwrap();
        let skipped: Vec<(&str, &str)> = got
            .skipped
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("i", "int 7"),
                ("l", "int (20-byte integer)"),
                ("f", "float 0.5"),
                ("u", "str \"aé\""),
                ("g", "str \"aé\""),
                ("xs.0", "bool True"),
                ("xs.1", "bool False"),
            ]
        );
    }

    #[test]
    fn refuses_code_execution() {
        for (module, name) in [
            ("os", "system"),
            ("posix", "system"),
            ("builtins", "eval"),
            ("subprocess", "Popen"),
            ("__builtin__", "getattr"),
        ] {
            let mut p = Pickle::new();
            p.global(module, name).str("echo pwned").op(b"\x85R");
            let err = read_pth_bytes(&archive(&p.stop(), &[]), "evil.pth").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "evil.pth: refusing to load: the pickle references `{module}.{name}`, which is not \
                     part of a state dict (a checkpoint must never run code)"
                )
            );
        }
        // Referencing alone is enough, and STACK_GLOBAL is checked the same way.
        let mut p = Pickle::new();
        p.op(b"}(")
            .str("w")
            .tensor("FloatStorage", "0", 1, 0, &[1], &[1])
            .op(b"u");
        p.str("os").str("system").op(b"\x930");
        let err =
            read_pth_bytes(&archive(&p.stop(), &[("0", &f32_bytes(&[1.]))]), "e.pth").unwrap_err();
        assert!(err.msg.contains("`os.system`"), "{err}");
    }

    #[test]
    fn legacy_torchscript_and_npz_are_explained() {
        let legacy = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
        let err = read_pth_bytes(legacy, "old.pth").unwrap_err();
        assert!(
            err.msg.contains("legacy (pre-1.6") && err.msg.contains("torch.save(torch.load(f), g)"),
            "{err}"
        );
        let script = zip_of(&[
            ("m/data.pkl", b"\x80\x02}.", false),
            ("m/constants.pkl", b"\x80\x02).", false),
            ("m/code/__torch__/m.py", b"", false),
        ]);
        let err = read_pth_bytes(&script, "m.pt").unwrap_err();
        assert!(err.msg.contains("TorchScript"), "{err}");
        let npz = zip_of(&[("a.npy", b"\x93NUMPY", false)]);
        assert!(read_pth_bytes(&npz, "a.npz")
            .unwrap_err()
            .msg
            .contains("npz"));
        assert!(read_pth_bytes(b"", "empty.pth")
            .unwrap_err()
            .msg
            .contains("empty"));
    }

    #[test]
    fn corrupt_storages_and_views_are_errors() {
        let view = |numel: usize, offset: usize, size: &[usize], stride: &[usize]| {
            let mut p = Pickle::new();
            p.op(b"}(")
                .str("w")
                .tensor("FloatStorage", "0", numel, offset, size, stride)
                .op(b"u");
            p.stop()
        };
        let blob = f32_bytes(&[1., 2., 3., 4.]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                archive(&view(4, 1, &[4], &[1]), &[("0", &blob)]),
                "does not fit",
            ),
            (
                archive(&view(4, 0, &[2, 2], &[3, 1]), &[("0", &blob)]),
                "does not fit",
            ),
            (archive(&view(4, 0, &[4], &[1]), &[]), "is missing"),
            (
                archive(&view(5, 0, &[4], &[1]), &[("0", &blob)]),
                "should hold 20 bytes",
            ),
            (
                archive(&view(1 << 30, 0, &[1 << 30], &[1]), &[("0", &blob)]),
                "should hold",
            ),
            (
                archive(&view(4, 0, &[4, 4], &[1]), &[("0", &blob)]),
                "differ in length",
            ),
            (archive(b"\x80\x02h\x05.", &[]), "bad memo index 5"),
            (archive(b"\x80\x020.", &[]), "stack underflow"),
            (archive(b"\x80\x02\xff.", &[]), "unknown opcode 0xff"),
            (archive(b"\x80\x02(K\x01e.", &[]), "stack underflow"),
            (archive(b"\x80\x02X\xff\xff\xff\xff.", &[]), "truncated"),
        ];
        for (file, expected) in cases {
            let err = read_pth_bytes(&file, "bad.pth").unwrap_err();
            assert!(err.msg.contains(expected), "expected {expected:?} in {err}");
        }
    }

    #[test]
    fn crafted_sharing_and_cycles_are_bounded() {
        // l0 = [1]; l(k+1) = [lk, lk] for 40 levels: 2^40 leaves if walked naively.
        let mut p = Pickle::new();
        p.op(b"]K\x01a");
        for _ in 0..40 {
            p.op(b"q\x00]h\x00ah\x00a");
        }
        let err = read_pth_bytes(&archive(&p.stop(), &[]), "bomb.pth").unwrap_err();
        assert!(err.msg.contains("too large"), "{err}");
        // A list that contains itself.
        let err = read_pth_bytes(&archive(b"\x80\x02]q\x00h\x00a.", &[]), "cycle.pth").unwrap_err();
        assert!(err.msg.contains("nested deeper"), "{err}");
        // One tensor repeated far beyond the archive's storage bytes.
        let mut p = Pickle::new();
        p.op(b"]")
            .tensor("ByteStorage", "0", 1 << 20, 0, &[1 << 20], &[1])
            .op(b"q\x01a(");
        for _ in 0..400 {
            p.op(b"h\x01");
        }
        p.op(b"e");
        let err = read_pth_bytes(
            &archive(&p.stop(), &[("0", &vec![0u8; 1 << 20])]),
            "rep.pth",
        )
        .unwrap_err();
        assert!(err.msg.contains("exhaust memory"), "{err}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let file = shared_state_dict();
        for len in 0..file.len() {
            assert!(
                read_pth_bytes(&file[..len], "t.pth").is_err(),
                "prefix of {len} bytes loaded"
            );
        }
        // Also truncate the pickle inside an intact archive.
        let mut p = Pickle::new();
        p.op(b"}(")
            .str("w")
            .tensor("FloatStorage", "0", 2, 0, &[2], &[1])
            .op(b"u");
        let pickle = p.stop();
        let blob = f32_bytes(&[1., 2.]);
        assert!(read_pth_bytes(&archive(&pickle, &[("0", &blob)]), "ok.pth").is_ok());
        for len in 0..pickle.len() {
            let file = archive(&pickle[..len], &[("0", &blob)]);
            assert!(
                read_pth_bytes(&file, "t.pth").is_err(),
                "pickle prefix of {len} bytes loaded"
            );
        }
    }

    #[test]
    fn random_corruption_never_panics() {
        let file = shared_state_dict();
        for_each_mutation(&file, 3000, |bytes| {
            let _ = read_pth_bytes(bytes, "fuzz.pth");
        });
        // Mutate the pickle inside an intact archive, where the zip CRC does not catch it.
        let mut p = Pickle::new();
        p.global("collections", "OrderedDict").op(b")R(");
        p.str("w")
            .tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
        p.str("w_t")
            .tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3]);
        p.str("n")
            .op(b"]q\x05(K\x01\x8a\x02\x00\x80G\x00\x00\x00\x00\x00\x00\x00\x00eu");
        let pickle = p.stop();
        let blob = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
        for_each_mutation(&pickle, 5000, |bytes| {
            let _ = read_pth_bytes(&archive(bytes, &[("0", &blob)]), "fuzz.pth");
        });
    }
}
