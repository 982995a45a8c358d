//! The five FGVC datasets in VPT's json layout (V-PETL's `dataloader/json_dataset.py`): `<root>` holds
//! `train.json`, `val.json` and `test.json`, each a JSON object `{"relative/image/path": class_id}`,
//! and the images under a per-dataset folder (CUB_200_2011 and nabirds: `<root>/images`,
//! StanfordDogs: `<root>/Images`, OxfordFlower and StanfordCars: `<root>` itself).
//!
//! Class ids are remapped to contiguous labels `0..K` by sorting the distinct ids found in the
//! selected split files (as upstream does per split; with `split: [train, val]` over the union, as
//! VPT's `trainval`). Upstream silently shifts labels when a split lacks a class; here the number of
//! distinct ids must equal the dataset's class count, so every split maps ids the same way.
//!
//! Protocols: V-PETL trains on `train` and tests on `test` (`val` unused); VPT tunes on
//! `train` -> `val` and reports `[train, val]` -> `test`. Any split or list of splits can be chosen.
//!
//! Bad data stops the run with the json file (and key) named: malformed json, a value that is not an
//! integer class id, more or fewer distinct ids than classes, a missing image (checked when built),
//! an undecodable image (when loaded). With `skip_bad: true` missing and undecodable images are left
//! out with a warning and counted instead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use vpetl_core::data::{Dataset, DatasetSpec};
use vpetl_core::registry::Component;

use crate::image_list::{ImageItem, ImageList};
use crate::transforms::{Normalize, Pipeline, TransformSpec};

/// The five datasets (VPT's folder names), their class counts and where their images are, relative
/// to the dataset's root (`""`: the root itself).
pub const FGVC_DATASETS: [(&str, i64, &str); 5] = [
    ("CUB_200_2011", 200, "images"),
    ("nabirds", 555, "images"),
    ("OxfordFlower", 102, ""),
    ("StanfordDogs", 120, "Images"),
    ("StanfordCars", 196, ""),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FgvcSplit {
    Train,
    Val,
    Test,
}

impl FgvcSplit {
    fn file(self) -> &'static str {
        match self {
            FgvcSplit::Train => "train.json",
            FgvcSplit::Val => "val.json",
            FgvcSplit::Test => "test.json",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(FgvcSplit::Train),
            "val" => Ok(FgvcSplit::Val),
            "test" => Ok(FgvcSplit::Test),
            _ => Err(format!("split: unknown FGVC split `{s}` (expected train, val, test, or a list such as [train, val])")),
        }
    }
}

/// `split: train` or `split: [train, val]`.
#[derive(Clone, Debug)]
pub struct Splits(pub Vec<FgvcSplit>);

impl<'de> Deserialize<'de> for Splits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let raw = Raw::deserialize(d).map_err(|_| serde::de::Error::custom("split: expected a split name (train, val, test) or a list of them"))?;
        let names = match raw {
            Raw::One(s) => vec![s],
            Raw::Many(v) => v,
        };
        names.iter().map(|s| FgvcSplit::parse(s)).collect::<Result<_, _>>().map(Splits).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Deserialize)]
pub struct FgvcSpec {
    /// The dataset's own folder (`data/fgvc/CUB_200_2011`), holding the json files.
    pub root: PathBuf,
    /// One of the five, or any dataset in the same layout (then `num_classes` is required).
    pub dataset: String,
    pub split: Splits,
    /// Required for datasets outside the five; must agree with the table for the five.
    #[serde(default)]
    pub num_classes: Option<i64>,
    /// Folder the json paths are relative to, under `root`; defaults to the dataset's (the root
    /// itself for datasets outside the five).
    #[serde(default)]
    pub image_dir: Option<PathBuf>,
    #[serde(default)]
    pub pipeline: Vec<Component<dyn TransformSpec>>,
    #[serde(default)]
    pub normalize: Normalize,
    #[serde(default)]
    pub skip_bad: bool,
}

vpetl_core::register!(Dataset, "cls", "FGVC", FgvcSpec as dyn DatasetSpec, "FGVC in VPT's json layout (CUB_200_2011, nabirds, OxfordFlower, StanfordDogs, StanfordCars; splits train/val/test)");

/// One annotation: the image path as written in the file, its raw class id, and the file.
struct Entry {
    rel: String,
    id: i64,
    file: usize,
}

impl DatasetSpec for FgvcSpec {
    fn build(&self) -> anyhow::Result<Box<dyn Dataset>> {
        let known = FGVC_DATASETS.iter().find(|(n, _, _)| *n == self.dataset);
        let k = match (known, self.num_classes) {
            (Some((_, k, _)), Some(n)) if *k != n => bail!("FGVC: {} has {k} classes, but num_classes is {n}", self.dataset),
            (Some((_, k, _)), _) => *k,
            (None, Some(n)) => n,
            (None, None) => bail!(
                "FGVC: `{}` is not one of the FGVC datasets ({}); give num_classes for another dataset in this layout",
                self.dataset,
                FGVC_DATASETS.iter().map(|(n, _, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        };
        let image_dir = match (&self.image_dir, known) {
            (Some(d), _) => self.root.join(d),
            (None, Some((_, _, d))) => self.root.join(d),
            (None, None) => self.root.clone(),
        };
        let mut splits = self.split.0.clone();
        if splits.is_empty() {
            bail!("FGVC: split is an empty list; give one of train, val, test or a list of them");
        }
        splits.sort();
        splits.dedup();
        let files: Vec<PathBuf> = splits.iter().map(|s| self.root.join(s.file())).collect();
        let mut entries = Vec::new();
        for (f, path) in files.iter().enumerate() {
            entries.extend(read_annotations(path)?.into_iter().map(|(rel, id)| Entry { rel, id, file: f }));
        }
        let ids: BTreeSet<i64> = entries.iter().map(|e| e.id).collect();
        let named = || files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" + ");
        if ids.len() as i64 > k {
            // The ids past the K-th smallest would become labels outside 0..K.
            let first_out = *ids.iter().nth(k as usize).unwrap();
            let e = entries.iter().find(|e| e.id == first_out).unwrap();
            bail!(
                "{}: key {:?}: class id {} would become label {k}, outside 0..{k} of {} ({} distinct ids in {})",
                files[e.file].display(),
                e.rel,
                e.id,
                self.dataset,
                ids.len(),
                named()
            );
        }
        if (ids.len() as i64) < k {
            bail!(
                "{}: {} distinct class ids, but {} has {k} classes; the contiguous relabelling (sorted ids) would differ \
                 from the other splits'",
                named(),
                ids.len(),
                self.dataset
            );
        }
        let label_of: std::collections::BTreeMap<i64, i64> = ids.iter().enumerate().map(|(i, id)| (*id, i as i64)).collect();
        let items = entries
            .iter()
            .map(|e| ImageItem {
                path: image_dir.join(&e.rel),
                label: label_of[&e.id],
                origin: format!("{}: key {:?}", files[e.file].display(), e.rel),
            })
            .collect();
        let name = format!("FGVC {}/{}", self.dataset, splits.iter().map(|s| s.file().trim_end_matches(".json")).collect::<Vec<_>>().join("+"));
        let pipeline = Pipeline::new(&self.pipeline, self.normalize)?;
        Ok(Box::new(ImageList::new(name, items, k, pipeline, self.skip_bad)?))
    }
}

/// The `{path: class_id}` object of one split file, in file order.
fn read_annotations(path: &Path) -> anyhow::Result<Vec<(String, i64)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the split file {}", path.display()))?;
    // serde_json's map (no `preserve_order`) is sorted by key: the dataset's order is the keys' order.
    let map: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let serde_json::Value::Object(obj) = map else {
        bail!("{}: expected a JSON object {{\"relative/image/path\": class_id, ...}}", path.display());
    };
    let mut out = Vec::with_capacity(obj.len());
    for (rel, v) in obj {
        let Some(id) = v.as_i64() else {
            bail!("{}: key {rel:?}: class id {v} is not an integer", path.display());
        };
        out.push((rel, id));
    }
    if out.is_empty() {
        bail!("{}: no images listed", path.display());
    }
    Ok(out)
}
