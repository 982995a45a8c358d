//! Loading pretrained weights into a model's variables: read any supported file, convert its
//! layout, apply the config's key mapping, copy, and report what happened.
//!
//! The report always lists missing, unexpected, adapted and shape-mismatched keys. A shape mismatch
//! is an error naming the key and both shapes, unless `allow_shape_mismatch` covers the variable
//! (a head with a new class count), in which case the variable keeps its initialisation.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use regex::Regex;
use serde::Deserialize;
use tch::{nn, Tensor};

use super::{google_vit, npz, pth, DType, RawTensor};
use crate::backbones::{Backbone, Resample};

/// Where a checkpoint's tensors come from and how their names map onto the model's.
#[derive(Clone, Debug, Deserialize)]
pub struct PretrainedSpec {
    pub path: PathBuf,
    /// The file's naming convention; `auto` detects Google `.npz` and Microsoft Swin layouts.
    #[serde(default)]
    pub layout: Layout,
    /// Prefixes removed from file keys (the first that matches), e.g. `model.` or `module.`.
    #[serde(default)]
    pub strip_prefix: Vec<String>,
    /// Regex renames applied in order to the (converted) file keys: `[pattern, replacement]`.
    #[serde(default)]
    pub rename: Vec<(String, String)>,
    /// File keys to ignore (regex, whole key).
    #[serde(default)]
    pub skip: Vec<String>,
    /// Model variables that may keep their initialisation when the file's shape differs (regex).
    #[serde(default)]
    pub allow_shape_mismatch: Vec<String>,
    /// Fail when a backbone variable is missing from the file.
    #[serde(default)]
    pub strict: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    #[default]
    Auto,
    /// timm names (`blocks.0.attn.qkv.weight`, Swin `layers.1.downsample` at a stage's start).
    Timm,
    /// Google's ViT `.npz`.
    GoogleNpz,
    /// Microsoft's Swin release (`layers.0.downsample` at a stage's end, `head.weight`).
    Microsoft,
    /// Already in this model's variable names (`backbone.*`, `methods.*`, `head.*`), e.g. a
    /// method-only file.
    Native,
}

/// Reads every tensor of a `.safetensors`, `.npz` or `.pth`/`.pt`/`.bin` file onto the CPU, with
/// the file's non-tensor entries described (`epoch (int 300)`).
pub fn read_tensors(path: &Path) -> anyhow::Result<(Vec<(String, Tensor)>, Vec<String>)> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    match ext.as_str() {
        "safetensors" => Ok((
            Tensor::read_safetensors(path).with_context(|| format!("{}: not a readable safetensors file", path.display()))?,
            Vec::new(),
        )),
        "npz" => Ok((npz::read_npz(path)?.into_iter().map(|(k, t)| (k, to_tensor(&t))).collect(), Vec::new())),
        "pth" | "pt" | "bin" | "ckpt" => {
            let contents = pth::read_pth(path)?;
            let skipped = contents.skipped.into_iter().map(|(k, what)| format!("{k} ({what})")).collect();
            Ok((contents.tensors.into_iter().map(|(k, t)| (k, to_tensor(&t))).collect(), skipped))
        }
        _ => bail!("{}: unknown checkpoint format (expected .safetensors, .npz, .pth, .pt or .bin)", path.display()),
    }
}

pub fn to_tensor(t: &RawTensor) -> Tensor {
    let kind = match t.dtype {
        DType::F16 => tch::Kind::Half,
        DType::BF16 => tch::Kind::BFloat16,
        DType::F32 => tch::Kind::Float,
        DType::F64 => tch::Kind::Double,
        DType::U8 => tch::Kind::Uint8,
        DType::I8 => tch::Kind::Int8,
        DType::I16 => tch::Kind::Int16,
        DType::I32 => tch::Kind::Int,
        DType::I64 => tch::Kind::Int64,
        DType::Bool => tch::Kind::Bool,
    };
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Tensor::from_data_size(&t.data, &shape, kind)
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub file: String,
    pub loaded: usize,
    /// Model variables (backbone and head) that the file did not provide.
    pub missing: Vec<String>,
    /// File keys that matched no variable.
    pub unexpected: Vec<String>,
    /// File keys ignored by `skip` or by the layout (buffers such as `relative_position_index`).
    pub skipped: Vec<String>,
    /// `(variable, file shape, variable shape)` adapted by the backbone (resampled).
    pub adapted: Vec<(String, Vec<i64>, Vec<i64>)>,
    /// `(variable, file shape, variable shape)` left at initialisation (allowed mismatches).
    pub mismatched: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "loaded {} tensors from {}", self.loaded, self.file)?;
        let list = |f: &mut fmt::Formatter<'_>, what: &str, items: &[String]| -> fmt::Result {
            if !items.is_empty() {
                writeln!(f, "  {what} ({}): {}", items.len(), items.join(", "))?;
            }
            Ok(())
        };
        list(f, "missing", &self.missing)?;
        list(f, "unexpected", &self.unexpected)?;
        list(f, "skipped", &self.skipped)?;
        for (k, a, b) in &self.adapted {
            writeln!(f, "  adapted {k}: {a:?} -> {b:?}")?;
        }
        for (k, a, b) in &self.mismatched {
            writeln!(f, "  shape mismatch kept at init {k}: file {a:?}, model {b:?}")?;
        }
        Ok(())
    }
}

fn regexes(patterns: &[String], what: &str) -> anyhow::Result<Vec<Regex>> {
    patterns
        .iter()
        .map(|p| Regex::new(&format!("^(?:{p})$")).with_context(|| format!("invalid {what} regex `{p}`")))
        .collect()
}

/// Converts a file's keys to this project's model names (`backbone.<timm or Microsoft name>`,
/// `head.*`), following `spec`.
pub fn map_keys(
    spec: &PretrainedSpec,
    tensors: Vec<(String, Tensor)>,
    backbone: &dyn Backbone,
    report: &mut LoadReport,
) -> anyhow::Result<(Layout, Vec<(String, Tensor)>)> {
    let mut tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(k, v)| {
            let k = spec.strip_prefix.iter().find_map(|p| k.strip_prefix(p.as_str())).map(String::from).unwrap_or(k);
            (k, v)
        })
        .collect();
    let layout = match spec.layout {
        Layout::Auto => {
            let keys: Vec<&str> = tensors.iter().map(|(k, _)| k.as_str()).collect();
            if google_vit::detect(&keys) {
                Layout::GoogleNpz
            } else if keys.iter().any(|k| k.starts_with("backbone.") || k.starts_with("methods.")) {
                Layout::Native
            } else {
                Layout::Timm
            }
        }
        other => other,
    };
    if layout == Layout::GoogleNpz {
        tensors = google_vit::to_timm(tensors)?;
    }
    if layout != Layout::Native {
        tensors = backbone.convert_keys(layout, tensors, &mut report.skipped)?;
    }
    let renames: Vec<(Regex, &str)> = spec
        .rename
        .iter()
        .map(|(p, r)| Ok((Regex::new(p).with_context(|| format!("invalid rename regex `{p}`"))?, r.as_str())))
        .collect::<anyhow::Result<_>>()?;
    let skips = regexes(&spec.skip, "skip")?;
    let mut out = Vec::with_capacity(tensors.len());
    for (mut k, v) in tensors {
        for (re, rep) in &renames {
            k = re.replace_all(&k, *rep).into_owned();
        }
        if skips.iter().any(|r| r.is_match(&k)) {
            report.skipped.push(k);
            continue;
        }
        let k = if layout == Layout::Native || k.starts_with("head.") { k } else { format!("backbone.{k}") };
        out.push((k, v));
    }
    Ok((layout, out))
}

/// Reads `spec.path`, maps its keys and copies the values into `vs`.
pub fn load_pretrained(vs: &nn::VarStore, spec: &PretrainedSpec, backbone: &dyn Backbone) -> anyhow::Result<LoadReport> {
    let (tensors, skipped) = read_tensors(&spec.path)?;
    let mut report = LoadReport { file: spec.path.display().to_string(), skipped, ..Default::default() };
    let (layout, mapped) = map_keys(spec, tensors, backbone, &mut report)
        .with_context(|| format!("cannot map the keys of {}", spec.path.display()))?;
    // timm's npz loader resamples position embeddings bilinearly; its state-dict filter bicubically.
    let resample = if layout == Layout::GoogleNpz { Resample::Bilinear } else { Resample::BicubicAntialias };
    copy_into(vs, spec, mapped, backbone, resample, &mut report)?;
    Ok(report)
}

/// Copies mapped tensors into `vs` and fills the report. Only `backbone.*` and `head.*` variables
/// count as missing (method variables are never in a pretrained file).
pub fn copy_into(
    vs: &nn::VarStore,
    spec: &PretrainedSpec,
    tensors: Vec<(String, Tensor)>,
    backbone: &dyn Backbone,
    resample: Resample,
    report: &mut LoadReport,
) -> anyhow::Result<()> {
    let allow = regexes(&spec.allow_shape_mismatch, "allow_shape_mismatch")?;
    let vars = vs.variables();
    let mut seen = std::collections::HashSet::new();
    for (k, v) in tensors {
        let Some(var) = vars.get(&k) else {
            report.unexpected.push(k);
            continue;
        };
        seen.insert(k.clone());
        let (from, to) = (v.size(), var.size());
        let value = if from == to {
            v
        } else if let Some(adapted) =
            k.strip_prefix("backbone.").and_then(|name| backbone.adapt_tensor(name, &v, &to, resample))
        {
            report.adapted.push((k.clone(), from, to));
            adapted
        } else if allow.iter().any(|r| r.is_match(&k)) {
            report.mismatched.push((k, from, to));
            continue;
        } else {
            bail!(
                "{}: `{k}` has shape {from:?} in the file but {to:?} in the model (add a pattern matching it \
                 to `allow_shape_mismatch` to keep the model's initialisation instead)",
                spec.path.display()
            );
        };
        tch::no_grad(|| {
            let mut var = var.shallow_clone();
            var.copy_(&value.to_kind(var.kind()).to_device(var.device()));
        });
        report.loaded += 1;
    }
    let mut missing: Vec<String> = vars
        .keys()
        .filter(|k| (k.starts_with("backbone.") || k.starts_with("head.")) && !seen.contains(*k))
        .cloned()
        .collect();
    missing.sort();
    report.unexpected.sort();
    if spec.strict {
        let backbone_missing: Vec<&String> = missing.iter().filter(|k| k.starts_with("backbone.")).collect();
        if !backbone_missing.is_empty() {
            bail!(
                "{}: strict load, but the file has no value for {} backbone variable(s): {}",
                spec.path.display(),
                backbone_missing.len(),
                backbone_missing.iter().take(10).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    report.missing = missing;
    Ok(())
}
