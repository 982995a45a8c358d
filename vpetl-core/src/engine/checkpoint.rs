//! Training checkpoints: the trainable tensors and the buffers (running statistics; both
//! `param.<name>`), the optimiser state
//! (`optim.<name>.<slot>`), the methods' prepare results (`prepared.<name>`, see
//! [`super::prepare`]) and a JSON record (epoch, iteration, optimiser steps, best metric, config
//! hash) in one safetensors file's metadata, written atomically (temporary file, then rename).
//! `work_dir/last_checkpoint` names the newest; `max_keep` prunes older epoch checkpoints.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::workdir::write_atomic;

/// Counters and records that make a resumed run continue exactly.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// Epochs completed.
    pub epoch: u64,
    /// Training iterations completed.
    pub iter: u64,
    pub optimizer_steps: u64,
    /// Best validation metric so far: (name, value, epoch).
    pub best: Option<(String, f64, u64)>,
    pub config_hash: String,
    pub seed: u64,
}

struct Raw {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn to_raw(t: &Tensor) -> anyhow::Result<Raw> {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let shape = t.size().iter().map(|&d| d as usize).collect();
    let values: Vec<f32> = Vec::try_from(t.reshape([-1]))?;
    Ok(Raw { shape, bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() })
}

/// Writes a checkpoint.
pub fn save(
    path: &Path,
    params: &[(String, Tensor)],
    optim: &[(String, Tensor)],
    prepared: &[(String, Tensor)],
    meta: &Meta,
) -> anyhow::Result<()> {
    let mut named: Vec<(String, Raw)> = Vec::with_capacity(params.len() + optim.len() + prepared.len());
    for (k, t) in params {
        named.push((format!("param.{k}"), to_raw(t)?));
    }
    for (k, t) in optim {
        named.push((format!("optim.{k}"), to_raw(t)?));
    }
    for (k, t) in prepared {
        named.push((format!("{PREPARED}{k}"), to_raw(t)?));
    }
    let info: HashMap<String, String> = [("vpetl".to_string(), serde_json::to_string(meta)?)].into_iter().collect();
    let bytes = safetensors::serialize(named.iter().map(|(k, r)| (k.as_str(), r)), &Some(info))
        .with_context(|| format!("cannot serialise checkpoint {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// Prefix of the methods' prepare results in checkpoints and method-only files. Stored as float32
/// like every tensor here (channel and input indices are exact below 2²⁴).
pub const PREPARED: &str = "prepared.";

/// A loaded checkpoint.
pub struct Loaded {
    pub params: BTreeMap<String, Tensor>,
    pub optim: BTreeMap<String, Tensor>,
    /// Prepare results by name (without the `prepared.` prefix).
    pub prepared: BTreeMap<String, Tensor>,
    pub meta: Meta,
}

pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).with_context(|| format!("{}: not a vpetl checkpoint", path.display()))?;
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("vpetl"))
        .with_context(|| format!("{}: a safetensors file, but not a vpetl training checkpoint (no `vpetl` metadata)", path.display()))?;
    let meta: Meta = serde_json::from_str(meta_json).with_context(|| format!("{}: unreadable checkpoint record", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{}: corrupt checkpoint", path.display()))?;
    let (mut params, mut optim, mut prepared) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!("{}: tensor `{name}` is {:?}, expected F32", path.display(), view.dtype());
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::from_data_size(view.data(), &shape, Kind::Float);
        if let Some(k) = name.strip_prefix("param.") {
            params.insert(k.to_string(), t);
        } else if let Some(k) = name.strip_prefix("optim.") {
            optim.insert(k.to_string(), t);
        } else if let Some(k) = name.strip_prefix(PREPARED) {
            prepared.insert(k.to_string(), t);
        }
    }
    Ok(Loaded { params, optim, prepared, meta })
}

/// Writes the trained tensors alone (methods, head, any backbone tensor a method trains, and the
/// buffers such as running statistics) with
/// the model's `methods` config as JSON metadata (`vpetl_methods`), like PEFT's
/// `adapter_model.safetensors`: loadable on top of the pretrained backbone with `load_from` or
/// `tools/test --checkpoint`, since its names are the model's own. The methods' prepare results
/// go with them as `prepared.<name>`.
pub fn save_method_only(
    path: &Path,
    trained: &[(String, Tensor)],
    prepared: &[(String, Tensor)],
    methods_json: &str,
) -> anyhow::Result<()> {
    let named: Vec<(String, Raw)> = trained
        .iter()
        .map(|(k, t)| Ok((k.clone(), to_raw(t)?)))
        .chain(prepared.iter().map(|(k, t)| Ok((format!("{PREPARED}{k}"), to_raw(t)?))))
        .collect::<anyhow::Result<_>>()?;
    let info: HashMap<String, String> = [("vpetl_methods".to_string(), methods_json.to_string())].into_iter().collect();
    let bytes = safetensors::serialize(named.iter().map(|(k, r)| (k.as_str(), r)), &Some(info))
        .with_context(|| format!("cannot serialise {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// The prepare results (`prepared.*`) of any safetensors file: a checkpoint or a method-only file.
pub fn read_prepared(path: &Path) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if let Some(k) = name.strip_prefix(PREPARED) {
            if view.dtype() != Dtype::F32 {
                bail!("{}: tensor `{name}` is {:?}, expected F32", path.display(), view.dtype());
            }
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            out.insert(k.to_string(), Tensor::from_data_size(view.data(), &shape, Kind::Float));
        }
    }
    Ok(out)
}

/// `epoch_<n>.safetensors` (epoch loop) or `iter_<n>.safetensors` (iteration loop).
pub fn periodic_path(work_dir: &Path, by_epoch: bool, n: u64) -> PathBuf {
    work_dir.join(format!("{}_{n}.safetensors", if by_epoch { "epoch" } else { "iter" }))
}

/// Records `path` as the newest checkpoint.
pub fn set_last(work_dir: &Path, path: &Path) -> anyhow::Result<()> {
    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    write_atomic(&work_dir.join("last_checkpoint"), name.as_bytes())
}

/// The newest checkpoint named by `work_dir/last_checkpoint`, if any.
pub fn find_last(work_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let pointer = work_dir.join("last_checkpoint");
    if !pointer.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).with_context(|| format!("cannot read {}", pointer.display()))?;
    let path = work_dir.join(name.trim());
    if !path.exists() {
        bail!("{} names {}, which does not exist", pointer.display(), path.display());
    }
    Ok(Some(path))
}

/// Deletes periodic checkpoints beyond the newest `max_keep` (never the one `keep` names).
pub fn prune(work_dir: &Path, max_keep: usize, keep: &Path) -> anyhow::Result<()> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(work_dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".safetensors")?;
            let n = stem.strip_prefix("epoch_").or_else(|| stem.strip_prefix("iter_"))?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    found.sort();
    let excess = found.len().saturating_sub(max_keep);
    for (_, p) in found.into_iter().take(excess) {
        if p != keep {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    Ok(())
}
