//! Reader for NumPy `.npz` archives (`np.savez` / `np.savez_compressed`), as Google publishes its
//! ViT weights (`Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel`, maybe under `opt/target/`).
//!
//! Accepts stored and deflated `.npy` members of format version 1.0, 2.0 or 3.0 whose header is the
//! usual `{'descr': ..., 'fortran_order': ..., 'shape': (...)}` literal (parsed by hand, never
//! evaluated), with dtypes f2/f4/f8, i1/i2/i4/i8, u1, b1 in either byte order (big-endian is
//! swapped to little-endian) and `fortran_order: True` (transposed to row-major). Unsigned u2/u4
//! are widened losslessly to I32/I64 and u8 to I64 when every value fits (an error otherwise),
//! since `DType` has no wider unsigned types.
//! Refuses: object arrays (they would need pickle), structured/string/complex/datetime dtypes,
//! non-`.npy` members, and any malformed input (bad magic or header, data length not matching
//! the shape), always with an error, never a panic.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;

use super::{
    checked_numel, gather_strided, open_zip, read_zip_member, swap_byte_order, CheckpointError,
    DType, RawTensor,
};

/// Reads an `.npz` archive from disk: `(key, tensor)` in archive order, keys without `.npy`.
pub fn read_npz(path: &Path) -> Result<Vec<(String, RawTensor)>, CheckpointError> {
    let name = path.display().to_string();
    let file =
        File::open(path).map_err(|e| CheckpointError::new(&name, format!("cannot open: {e}")))?;
    read_npz_from(BufReader::new(file), &name)
}

/// Reads an `.npz` archive held in memory; `name` is used in error messages.
pub fn read_npz_bytes(
    bytes: &[u8],
    name: &str,
) -> Result<Vec<(String, RawTensor)>, CheckpointError> {
    read_npz_from(Cursor::new(bytes), name)
}

/// numpy itself refuses headers over 10 000 bytes by default; allow more, but not unboundedly.
const MAX_HEADER: usize = 1 << 20;
const MAX_DIMS: usize = 64;
/// Nesting allowed in the header literal (the dict holds a shape tuple; structured dtypes nest
/// a little deeper, enough to be recognised and refused by name).
const MAX_LITERAL_DEPTH: usize = 8;

fn read_npz_from<R: Read + Seek>(
    reader: R,
    file: &str,
) -> Result<Vec<(String, RawTensor)>, CheckpointError> {
    let mut zip = open_zip(reader, file)?;
    if zip.file_names().any(|n| n.ends_with("/data.pkl")) {
        return Err(CheckpointError::new(
            file,
            "this is a PyTorch checkpoint, not an .npz archive; read it with the pth reader",
        ));
    }
    let mut out = Vec::with_capacity(zip.len());
    for index in 0..zip.len() {
        let (member, bytes) = read_zip_member(&mut zip, index, file)?;
        if member.ends_with('/') && bytes.is_empty() {
            continue; // a directory entry
        }
        let key = member.strip_suffix(".npy").ok_or_else(|| {
            CheckpointError::new(file, format!("member `{member}` is not a .npy array"))
        })?;
        let tensor = parse_npy(&bytes)
            .map_err(|e| CheckpointError::new(file, format!("`{member}`: {e}")))?;
        out.push((key.to_string(), tensor));
    }
    Ok(out)
}

/// How a `descr` maps onto `DType`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Elem {
    Native(DType),
    /// Unsigned integers of this many bytes, widened to a signed type twice as wide (u8 → I64
    /// only when every value fits).
    Unsigned(usize),
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::Native(d) => d.size(),
            Elem::Unsigned(n) => n,
        }
    }
}

/// Parses a `descr` like `<f4`: the element type and whether it is big-endian.
fn parse_descr(descr: &str) -> Result<(Elem, bool), String> {
    let unsupported = || format!("unsupported dtype {descr:?}");
    let mut chars = descr.chars();
    let order = chars.next().ok_or_else(unsupported)?;
    let big_endian = match order {
        '<' | '=' | '|' => false,
        '>' => true,
        _ => return Err(unsupported()),
    };
    let elem = match chars.as_str() {
        "f2" => Elem::Native(DType::F16),
        "f4" => Elem::Native(DType::F32),
        "f8" => Elem::Native(DType::F64),
        "i1" => Elem::Native(DType::I8),
        "i2" => Elem::Native(DType::I16),
        "i4" => Elem::Native(DType::I32),
        "i8" => Elem::Native(DType::I64),
        "u1" => Elem::Native(DType::U8),
        "b1" => Elem::Native(DType::Bool),
        "u2" => Elem::Unsigned(2),
        "u4" => Elem::Unsigned(4),
        "u8" => Elem::Unsigned(8),
        "O" | "O8" | "O4" => {
            return Err("object array (it would need pickle to load); refusing".into())
        }
        _ => return Err(unsupported()),
    };
    Ok((elem, big_endian))
}

/// Parses one `.npy` array into a row-major little-endian tensor.
fn parse_npy(bytes: &[u8]) -> Result<RawTensor, String> {
    if !bytes.starts_with(b"\x93NUMPY") {
        return Err("not a .npy array (bad magic)".into());
    }
    let version = (bytes.get(6).copied(), bytes.get(7).copied());
    let (len_bytes, utf8) = match version {
        (Some(1), Some(0)) => (2, false),
        (Some(2), Some(0)) => (4, false),
        (Some(3), Some(0)) => (4, true),
        (Some(major), Some(minor)) => {
            return Err(format!("unsupported .npy version {major}.{minor}"))
        }
        _ => return Err("truncated .npy preamble".into()),
    };
    let len_field = bytes
        .get(8..8 + len_bytes)
        .ok_or("truncated .npy preamble")?;
    let header_len = len_field
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    if header_len > MAX_HEADER {
        return Err(format!("header of {header_len} bytes is implausibly large"));
    }
    let start = 8 + len_bytes;
    let header = bytes
        .get(start..start + header_len)
        .ok_or("truncated header")?;
    let header: String = if utf8 {
        std::str::from_utf8(header)
            .map_err(|_| "header is not UTF-8")?
            .to_string()
    } else {
        header.iter().map(|&b| char::from(b)).collect() // latin-1
    };
    let data = bytes.get(start + header_len..).unwrap_or_default();

    let (descr, fortran_order, shape) = parse_header(&header)?;
    let (elem, big_endian) = parse_descr(&descr)?;
    let numel = checked_numel(&shape).ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let expected = numel
        .checked_mul(elem.size())
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if data.len() != expected {
        return Err(format!(
            "shape {shape:?} of {descr} needs {expected} bytes of data, found {}",
            data.len()
        ));
    }

    let mut data = if fortran_order && shape.len() > 1 {
        // Column-major: the first index varies fastest.
        let mut strides = Vec::with_capacity(shape.len());
        let mut step = 1usize;
        for &n in &shape {
            strides.push(step);
            step = step.saturating_mul(n);
        }
        gather_strided(data, elem.size(), 0, &shape, &strides)?
    } else {
        data.to_vec()
    };
    if big_endian {
        swap_byte_order(&mut data, elem.size());
    }
    let (dtype, data) = match elem {
        Elem::Native(d) => (d, data),
        Elem::Unsigned(n) => widen_unsigned(&data, n)?,
    };
    Ok(RawTensor { dtype, shape, data })
}

/// Little-endian unsigned integers → signed ones twice as wide (u8 → i64 with a range check).
fn widen_unsigned(data: &[u8], size: usize) -> Result<(DType, Vec<u8>), String> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(2));
    let (dtype, wide) = match size {
        2 => (DType::I32, 4),
        4 => (DType::I64, 8),
        _ => (DType::I64, 8),
    };
    for chunk in data.chunks_exact(size) {
        let mut buf = [0u8; 8];
        buf.get_mut(..size)
            .ok_or("bad unsigned size")?
            .copy_from_slice(chunk);
        let v = u64::from_le_bytes(buf);
        if size == 8 && v > i64::MAX as u64 {
            return Err(format!("uint64 value {v} does not fit int64"));
        }
        out.extend_from_slice(buf.get(..wide).ok_or("bad unsigned size")?);
    }
    Ok((dtype, out))
}

/// The header dict's `descr`, `fortran_order` and `shape`.
fn parse_header(header: &str) -> Result<(String, bool, Vec<usize>), String> {
    let mut parser = Literal {
        s: header.as_bytes(),
        pos: 0,
    };
    let value = parser.value(0)?;
    parser.skip_space();
    if parser.pos != parser.s.len() {
        return Err(format!(
            "unexpected text after the header dict at byte {}",
            parser.pos
        ));
    }
    let Lit::Dict(fields) = value else {
        return Err("header is not a dict".into());
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| matches!(k, Lit::Str(s) if s == name))
            .map(|(_, v)| v)
            .ok_or_else(|| format!("header lacks {name:?}"))
    };
    let descr = match field("descr")? {
        Lit::Str(s) => s.clone(),
        Lit::List(_) => return Err("structured dtypes are not supported".into()),
        _ => return Err("header 'descr' is not a string".into()),
    };
    let fortran_order = match field("fortran_order")? {
        Lit::Bool(b) => *b,
        _ => return Err("header 'fortran_order' is not a bool".into()),
    };
    let shape = match field("shape")? {
        Lit::Tuple(dims) if dims.len() <= MAX_DIMS => dims
            .iter()
            .map(|d| match d {
                Lit::Int(n) => usize::try_from(*n).map_err(|_| format!("bad dimension {n}")),
                _ => Err("shape holds a non-integer".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err("header 'shape' is not a tuple of at most 64 integers".into()),
    };
    Ok((descr, fortran_order, shape))
}

/// A Python literal as found in `.npy` headers.
#[derive(Debug, PartialEq)]
enum Lit {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<Lit>),
    List(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
}

/// A recursive-descent parser for the literal subset `repr()` produces for the header dict.
struct Literal<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Literal<'_> {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("bad header literal at byte {}: {what}", self.pos))
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// Consumes `b` (after whitespace) if it is next.
    fn eat(&mut self, b: u8) -> bool {
        self.skip_space();
        let found = self.peek() == Some(b);
        if found {
            self.pos += 1;
        }
        found
    }

    fn value(&mut self, depth: usize) -> Result<Lit, String> {
        if depth > MAX_LITERAL_DEPTH {
            return self.err("nested too deeply");
        }
        self.skip_space();
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => self.string(q),
            Some(b'(') => {
                self.pos += 1;
                Ok(Lit::Tuple(self.items(b')', depth)?))
            }
            Some(b'[') => {
                self.pos += 1;
                Ok(Lit::List(self.items(b']', depth)?))
            }
            Some(b'{') => {
                self.pos += 1;
                let mut pairs = Vec::new();
                loop {
                    if self.eat(b'}') {
                        return Ok(Lit::Dict(pairs));
                    }
                    let key = self.value(depth + 1)?;
                    if !self.eat(b':') {
                        return self.err("expected ':'");
                    }
                    pairs.push((key, self.value(depth + 1)?));
                    if self.eat(b'}') {
                        return Ok(Lit::Dict(pairs));
                    }
                    if !self.eat(b',') {
                        return self.err("expected ',' or '}'");
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'A'..=b'Z' | b'a'..=b'z') => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    self.pos += 1;
                }
                match self.s.get(start..self.pos) {
                    Some(b"True") => Ok(Lit::Bool(true)),
                    Some(b"False") => Ok(Lit::Bool(false)),
                    Some(b"None") => Ok(Lit::None),
                    _ => self.err("unknown name"),
                }
            }
            Some(_) => self.err("unexpected character"),
            None => self.err("unexpected end"),
        }
    }

    /// Comma-separated values up to `close` (the opener already consumed); trailing comma allowed.
    fn items(&mut self, close: u8, depth: usize) -> Result<Vec<Lit>, String> {
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Ok(items);
            }
            items.push(self.value(depth + 1)?);
            if self.eat(close) {
                return Ok(items);
            }
            if !self.eat(b',') {
                return self.err("expected ','");
            }
        }
    }

    fn number(&mut self) -> Result<Lit, String> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let text = std::str::from_utf8(self.s.get(start..self.pos).unwrap_or_default())
            .unwrap_or_default();
        let n = text.parse::<i128>().or_else(|_| self.err("bad integer"))?;
        // Python 2 wrote long dimensions as `3L`.
        if self.peek() == Some(b'L') {
            self.pos += 1;
        }
        Ok(Lit::Int(n))
    }

    fn string(&mut self, quote: u8) -> Result<Lit, String> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return self.err("unterminated string"),
                Some(b) if b == quote => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let escaped = self.s.get(self.pos + 1).copied();
                    let Some(e) = escaped else {
                        return self.err("unterminated string");
                    };
                    out.push(e);
                    self.pos += 2;
                }
                Some(b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(out)
            .map(Lit::Str)
            .or_else(|_| self.err("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{for_each_mutation, zip_of};
    use super::*;

    /// A version-1.0 `.npy` with numpy's header padding (to a multiple of 64 bytes).
    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let fortran = if fortran { "True" } else { "False" };
        raw_npy(
            &format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"),
            data,
        )
    }

    fn raw_npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut header = header.to_string();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn le_f32(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn sample_npz() -> Vec<u8> {
        let kernel = npy("<f4", false, "(2, 3)", &le_f32(&[1., 2., 3., 4., 5., 6.]));
        let bias = npy("<f4", false, "(3,)", &le_f32(&[0.5, -0.5, 0.25]));
        zip_of(&[
            (
                "opt/target/Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel.npy",
                &kernel,
                false,
            ),
            (
                "opt/target/Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias.npy",
                &bias,
                true,
            ),
        ])
    }

    fn f32s(t: &RawTensor) -> Vec<f32> {
        t.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn stored_and_deflated_members() {
        let got = read_npz_bytes(&sample_npz(), "vit.npz").unwrap();
        assert_eq!(got.len(), 2);
        let (key, kernel) = &got[0];
        assert_eq!(
            key,
            "opt/target/Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"
        );
        assert_eq!(
            (kernel.dtype, kernel.shape.clone()),
            (DType::F32, vec![2, 3])
        );
        assert_eq!(f32s(kernel), [1., 2., 3., 4., 5., 6.]);
        let (key, bias) = &got[1];
        assert_eq!(
            key,
            "opt/target/Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias"
        );
        assert_eq!(f32s(bias), [0.5, -0.5, 0.25]);
    }

    #[test]
    fn fortran_order_is_transposed_to_row_major() {
        // [[1, 2, 3], [4, 5, 6]] stored column by column.
        let a = npy("<f4", true, "(2, 3)", &le_f32(&[1., 4., 2., 5., 3., 6.]));
        // A 3-d array: element (i, j, k) = 100i + 10j + k, stored with i fastest.
        let mut col = Vec::new();
        for k in 0..4 {
            for j in 0..3 {
                for i in 0..2 {
                    col.push((100 * i + 10 * j + k) as i16);
                }
            }
        }
        let b = npy(
            "<i2",
            true,
            "(2, 3, 4)",
            &col.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>(),
        );
        let got = read_npz_bytes(
            &zip_of(&[("a.npy", &a, false), ("b.npy", &b, true)]),
            "f.npz",
        )
        .unwrap();
        assert_eq!(f32s(&got[0].1), [1., 2., 3., 4., 5., 6.]);
        let row: Vec<i16> = got[1]
            .1
            .data
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        let expected: Vec<i16> = (0..2)
            .flat_map(|i| (0..3).flat_map(move |j| (0..4).map(move |k| 100 * i + 10 * j + k)))
            .collect();
        assert_eq!(row, expected);
    }

    #[test]
    fn big_endian_and_other_dtypes() {
        let be: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let be_i4: Vec<u8> = [7i32, -8].iter().flat_map(|v| v.to_be_bytes()).collect();
        let members = [
            ("f8.npy", npy(">f8", false, "(2,)", &be), false),
            ("i4.npy", npy(">i4", false, "(2,)", &be_i4), false),
            ("b1.npy", npy("|b1", false, "(3,)", &[1, 0, 1]), false),
            (
                "u2.npy",
                npy(">u2", false, "(2,)", &[0xff, 0xfe, 0, 1]),
                false,
            ),
            (
                "u8.npy",
                npy("<u8", false, "(1,)", &5u64.to_le_bytes()),
                false,
            ),
            (
                "f2.npy",
                npy("<f2", false, "()", &half::f16::from_f32(0.5).to_le_bytes()),
                false,
            ),
        ];
        let refs: Vec<(&str, &[u8], bool)> = members
            .iter()
            .map(|(n, b, d)| (*n, b.as_slice(), *d))
            .collect();
        let got = read_npz_bytes(&zip_of(&refs), "d.npz").unwrap();
        let f8: Vec<f64> = got[0]
            .1
            .data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!((got[0].1.dtype, f8), (DType::F64, vec![1.5, -2.0]));
        assert_eq!(
            got[1].1.data,
            [7i32, -8]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
        );
        assert_eq!(
            (got[2].1.dtype, got[2].1.data.clone()),
            (DType::Bool, vec![1, 0, 1])
        );
        let u2: Vec<i32> = got[3]
            .1
            .data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!((got[3].1.dtype, u2), (DType::I32, vec![0xfffe, 1]));
        assert_eq!(
            (got[4].1.dtype, got[4].1.data.clone()),
            (DType::I64, 5i64.to_le_bytes().to_vec())
        );
        assert_eq!(
            (got[5].1.dtype, got[5].1.shape.len(), got[5].1.numel()),
            (DType::F16, 0, 1)
        );
        // Versions 2.0 and 3.0 only widen the header length field.
        for major in [2u8, 3] {
            let header = "{'descr': '<i1', 'fortran_order': False, 'shape': (2,)}\n";
            let mut v = vec![0x93, b'N', b'U', b'M', b'P', b'Y', major, 0];
            v.extend_from_slice(&(header.len() as u32).to_le_bytes());
            v.extend_from_slice(header.as_bytes());
            v.extend_from_slice(&[0xff, 3]);
            let got = read_npz_bytes(&zip_of(&[("x.npy", &v, false)]), "v.npz").unwrap();
            assert_eq!(
                (got[0].1.dtype, got[0].1.data.clone()),
                (DType::I8, vec![0xff, 3])
            );
        }
    }

    #[test]
    fn bad_headers_and_dtypes_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"\x93NUMPZ\x01\x00\x00\x00".to_vec(), "bad magic"),
            (
                b"\x93NUMPY\x04\x00\x00\x00".to_vec(),
                "unsupported .npy version 4.0",
            ),
            (b"\x93NUMPY\x01\x00\xff\x00{}".to_vec(), "truncated header"),
            (npy("|O", false, "(1,)", &[0; 8]), "object array"),
            (npy("<c8", false, "(1,)", &[0; 8]), "unsupported dtype"),
            (npy("<U3", false, "(1,)", &[0; 12]), "unsupported dtype"),
            (npy("<f4", false, "(2, 2)", &[0; 12]), "needs 16 bytes"),
            (npy("<f4", false, "(-1,)", &[]), "bad dimension"),
            (
                npy("<f4", false, "(1 << 40, 1 << 40)", &[]),
                "bad header literal",
            ),
            (
                npy("<f4", false, "(4294967296, 4294967296, 4294967296)", &[]),
                "overflows",
            ),
            (npy("<f4", false, "[2]", &[0; 8]), "'shape' is not a tuple"),
            (
                npy("<f4", false, "(2,), 'extra': os.system('x')", &[0; 8]),
                "unknown name",
            ),
            (
                npy("<u8", false, "(1,)", &u64::MAX.to_le_bytes()),
                "does not fit int64",
            ),
            (raw_npy("{'descr': '<f4'}", &[]), "lacks \"fortran_order\""),
            (
                raw_npy(
                    "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': ()}",
                    &[],
                ),
                "structured",
            ),
            (
                raw_npy(
                    "{'descr': '<f4', 'fortran_order': False, 'shape': ()} junk",
                    &[],
                ),
                "after the header",
            ),
            (
                raw_npy("{'descr': '<f4' 'fortran_order': False}", &[]),
                "expected ','",
            ),
            (
                raw_npy(&format!("{}1{}", "(".repeat(50), ")".repeat(50)), &[]),
                "nested too deeply",
            ),
        ];
        for (member, expected) in cases {
            let err = read_npz_bytes(&zip_of(&[("w.npy", &member, false)]), "bad.npz").unwrap_err();
            assert!(err.msg.contains(expected), "expected {expected:?} in {err}");
            assert!(err.msg.starts_with("`w.npy`: "), "{err}");
        }
        let not_npy = zip_of(&[("readme.txt", b"hi", false)]);
        assert!(read_npz_bytes(&not_npy, "x.npz")
            .unwrap_err()
            .msg
            .contains("not a .npy"));
        let torch = zip_of(&[("archive/data.pkl", b"\x80\x02}.", false)]);
        assert!(read_npz_bytes(&torch, "x.npz")
            .unwrap_err()
            .msg
            .contains("PyTorch"));
        assert!(read_npz_bytes(b"\x80\x02}.", "x.npz")
            .unwrap_err()
            .msg
            .contains("legacy"));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let file = sample_npz();
        for len in 0..file.len() {
            assert!(
                read_npz_bytes(&file[..len], "t.npz").is_err(),
                "prefix of {len} bytes loaded"
            );
        }
        let member = npy("<f4", false, "(2, 3)", &le_f32(&[1., 2., 3., 4., 5., 6.]));
        for len in 0..member.len() {
            let file = zip_of(&[("w.npy", &member[..len], true)]);
            assert!(
                read_npz_bytes(&file, "t.npz").is_err(),
                "member prefix of {len} bytes loaded"
            );
        }
    }

    #[test]
    fn random_corruption_never_panics() {
        for_each_mutation(&sample_npz(), 3000, |bytes| {
            let _ = read_npz_bytes(bytes, "fuzz.npz");
        });
        // Mutate the .npy inside an intact archive, where the zip CRC does not catch it.
        let member = npy(">f4", true, "(2, 3)", &le_f32(&[1., 2., 3., 4., 5., 6.]));
        for_each_mutation(&member, 5000, |bytes| {
            let _ = read_npz_bytes(&zip_of(&[("w.npy", bytes, false)]), "fuzz.npz");
        });
    }
}
