//! Reading published checkpoints without Python: PyTorch `.pth`/`.pt` zip archives (a restricted
//! unpickler that never runs code), NumPy `.npz` (Google's ViT weights) and safetensors; then
//! key mapping (regex rename, prefix strip, partial load) and a load report.

pub mod google_vit;
pub mod load;
pub mod npz;
pub mod pth;

use std::fmt;

/// Element types found in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    U8,
    I8,
    I16,
    I32,
    I64,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }
}

/// A tensor read from a file: contiguous, row-major, little-endian bytes.
#[derive(Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl fmt::Debug for RawTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawTensor({:?}, {:?})", self.dtype, self.shape)
    }
}

/// An error reading a checkpoint file; always names the file and, where known, the entry.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointError {
    pub file: String,
    pub msg: String,
}

impl CheckpointError {
    pub fn new(file: impl Into<String>, msg: impl Into<String>) -> Self {
        CheckpointError { file: file.into(), msg: msg.into() }
    }
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.msg)
    }
}

impl std::error::Error for CheckpointError {}

// ---- Helpers shared by the pth and npz readers (both are zip archives of raw arrays). ----

use std::io::{Read, Seek, SeekFrom};

/// Upper bound on the capacity reserved up front for one zip member; the buffer grows past it only
/// as real bytes arrive, so a member that lies about its size cannot trigger a huge allocation.
const MAX_RESERVE: u64 = 64 << 20;

/// Deflate cannot expand data by more than ~1032:1, so a member claiming more is corrupt.
const MAX_DEFLATE_RATIO: u64 = 1100;

/// Element count of a shape, or None if it overflows `usize`.
pub(crate) fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Element count of a strided view and the end (in bytes) of the furthest element it reaches
/// (0 for an empty view), or None on overflow. Strides and offset are in elements.
pub(crate) fn view_extent(
    elem: usize,
    offset: usize,
    shape: &[usize],
    strides: &[usize],
) -> Option<(usize, usize)> {
    if shape.len() != strides.len() {
        return None;
    }
    let numel = checked_numel(shape)?;
    numel.checked_mul(elem)?;
    if numel == 0 {
        return Some((0, 0));
    }
    let mut last = offset;
    for (&n, &s) in shape.iter().zip(strides) {
        last = last.checked_add((n - 1).checked_mul(s)?)?;
    }
    Some((numel, last.checked_add(1)?.checked_mul(elem)?))
}

/// True when the strides are the row-major ones for `shape` (size-1 dims may have any stride).
pub(crate) fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(n);
    }
    shape.len() == strides.len()
}

/// Copies a strided view of `src` into a new row-major buffer. Every access is bounds-checked up
/// front, so a corrupt view gives an error; callers bound `numel * elem` before calling, since a
/// view with zero strides can be larger than its storage.
pub(crate) fn gather_strided(
    src: &[u8],
    elem: usize,
    offset: usize,
    shape: &[usize],
    strides: &[usize],
) -> Result<Vec<u8>, String> {
    let describe = || format!("view (offset {offset}, shape {shape:?}, strides {strides:?})");
    let (numel, end) = view_extent(elem, offset, shape, strides)
        .ok_or_else(|| format!("{} overflows", describe()))?;
    if end > src.len() {
        return Err(format!(
            "{} reaches byte {end} of a {}-byte storage",
            describe(),
            src.len()
        ));
    }
    let out_len = numel * elem; // cannot overflow: checked by view_extent
    if numel == 0 {
        return Ok(Vec::new());
    }
    let oob = || format!("{} is out of bounds", describe());
    if is_contiguous(shape, strides) {
        let start = offset.checked_mul(elem).ok_or_else(oob)?;
        let bytes = src.get(start..start + out_len).ok_or_else(oob)?;
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::with_capacity(out_len);
    let Some((&inner_n, outer_shape)) = shape.split_last() else {
        return Err(oob()); // 0-dim views are always contiguous
    };
    let inner_s = strides.last().copied().unwrap_or(1);
    let outer_strides = &strides[..outer_shape.len()];
    let mut index = vec![0usize; outer_shape.len()];
    let mut base = offset; // element offset of the current innermost row
    loop {
        if inner_s == 1 {
            let row = src
                .get(base * elem..(base + inner_n) * elem)
                .ok_or_else(oob)?;
            out.extend_from_slice(row);
        } else {
            for i in 0..inner_n {
                let at = (base + i * inner_s) * elem;
                out.extend_from_slice(src.get(at..at + elem).ok_or_else(oob)?);
            }
        }
        // Advance the outer multi-index like an odometer.
        let mut dim = outer_shape.len();
        loop {
            if dim == 0 {
                return Ok(out);
            }
            dim -= 1;
            // Stepping only to valid indices keeps `base` within the checked extent.
            if index[dim] + 1 < outer_shape[dim] {
                index[dim] += 1;
                base += outer_strides[dim];
                break;
            }
            base -= outer_strides[dim] * index[dim];
            index[dim] = 0;
        }
    }
}

/// Reverses the bytes of every `elem`-byte element (big- to little-endian or back).
pub(crate) fn swap_byte_order(data: &mut [u8], elem: usize) {
    if elem > 1 {
        data.chunks_exact_mut(elem).for_each(|e| e.reverse());
    }
}

/// Names what a non-zip file probably is, so a wrong-format error can say how to convert it.
fn describe_non_zip(head: &[u8]) -> String {
    if head.is_empty() {
        return "the file is empty".into();
    }
    if head.first() == Some(&0x80) {
        return "this is a bare pickle stream, i.e. a legacy (pre-1.6, non-zip) torch.save file, \
                which is not supported: re-save it with a recent torch, \
                `torch.save(torch.load(f), g)`, or convert it to safetensors"
            .into();
    }
    if head.get(257..262) == Some(b"ustar") {
        return "this is a tar archive, i.e. a very old torch.save file: re-save it with a recent \
                torch, `torch.save(torch.load(f), g)`, or convert it to safetensors"
            .into();
    }
    if head.starts_with(b"\x93NUMPY") {
        return "this is a single NumPy .npy array, not a zip archive".into();
    }
    if head.starts_with(b"\x89HDF\r\n\x1a\n") {
        return "this is an HDF5 file (Keras/TensorFlow .h5?), not a zip archive".into();
    }
    if head.len() > 8 && head.get(8) == Some(&b'{') {
        return "this looks like a safetensors file; use the safetensors reader".into();
    }
    "not a zip archive (unrecognised header)".into()
}

/// Opens a zip archive, explaining what the file is instead when it is not one.
pub(crate) fn open_zip<R: Read + Seek>(
    mut reader: R,
    file: &str,
) -> Result<zip::ZipArchive<R>, CheckpointError> {
    let io_err = |e: std::io::Error| CheckpointError::new(file, format!("cannot read: {e}"));
    let mut head = Vec::with_capacity(512);
    reader
        .by_ref()
        .take(512)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
    if !head.starts_with(b"PK") {
        return Err(CheckpointError::new(file, describe_non_zip(&head)));
    }
    zip::ZipArchive::new(reader).map_err(|e| {
        CheckpointError::new(
            file,
            format!("not a readable zip archive (truncated or corrupt?): {e}"),
        )
    })
}

/// Reads one zip member completely, checking that it yields exactly its declared size (the zip
/// reader also checks its CRC). Returns the member's name and bytes.
pub(crate) fn read_zip_member<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    index: usize,
    file: &str,
) -> Result<(String, Vec<u8>), CheckpointError> {
    let mut entry = zip
        .by_index(index)
        .map_err(|e| CheckpointError::new(file, format!("zip entry #{index}: {e}")))?;
    let name = entry.name().to_string();
    let fail = |msg: String| CheckpointError::new(file, format!("zip entry `{name}`: {msg}"));
    let size = entry.size();
    let packed = entry.compressed_size();
    let plausible = match entry.compression() {
        zip::CompressionMethod::Stored => size == packed,
        _ => {
            size <= packed
                .saturating_mul(MAX_DEFLATE_RATIO)
                .saturating_add(1024)
        }
    };
    if !plausible {
        return Err(fail(format!(
            "declares {size} bytes from {packed} compressed bytes (corrupt archive)"
        )));
    }
    let mut data = Vec::new();
    data.try_reserve(size.min(MAX_RESERVE) as usize)
        .map_err(|e| fail(format!("cannot allocate: {e}")))?;
    entry
        .by_ref()
        .take(size.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| fail(format!("cannot read (truncated or corrupt?): {e}")))?;
    if data.len() as u64 != size {
        return Err(fail(format!(
            "expected {size} bytes, got {} (truncated or corrupt archive)",
            data.len()
        )));
    }
    Ok((name, data))
}

/// Test helpers shared by the readers' tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::io::{Cursor, Write};

    /// Builds a zip archive from (name, bytes, deflate?) members.
    pub fn zip_of(members: &[(&str, &[u8], bool)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for &(name, bytes, deflate) in members {
            let method = if deflate {
                zip::CompressionMethod::Deflated
            } else {
                zip::CompressionMethod::Stored
            };
            let opts = zip::write::SimpleFileOptions::default().compression_method(method);
            w.start_file(name, opts).expect("start zip member");
            w.write_all(bytes).expect("write zip member");
        }
        w.finish().expect("finish zip").into_inner()
    }

    /// Calls `check` on many copies of `bytes`, each with 1-4 random bytes overwritten
    /// (a fixed-seed xorshift, so failures reproduce).
    pub fn for_each_mutation(bytes: &[u8], rounds: usize, mut check: impl FnMut(&[u8])) {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..rounds {
            let mut copy = bytes.to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() % copy.len() as u64) as usize;
                copy[at] = next() as u8;
            }
            check(&copy);
        }
    }
}
