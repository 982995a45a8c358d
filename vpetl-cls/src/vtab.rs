//! VTAB-1k in the exported image-folder layout (NOAH/V-PETL): `<root>/<task>/<split>.txt`, one
//! `relative/path label` per line, images beside them. Splits: `train800`, `val200`,
//! `train800val200`, `test` (protocols: tune = train800 -> val200, final = train800val200 -> test).
//!
//! Bad data stops the run with the list file and line named: a malformed line, a label outside the
//! class range, a missing image (checked when the dataset is built), an undecodable image (when it is
//! loaded). With `skip_bad: true` such images are left out with a warning and counted instead.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use vpetl_core::data::{Dataset, DatasetSpec, Sample};
use vpetl_core::registry::Component;

use crate::transforms::{Normalize, Pipeline, TransformSpec};

/// The 19 VTAB-1k tasks and their class counts (folder names of the common export).
pub const VTAB_TASKS: [(&str, i64); 19] = [
    ("cifar", 100),
    ("caltech101", 102),
    ("dtd", 47),
    ("oxford_flowers102", 102),
    ("oxford_iiit_pet", 37),
    ("svhn", 10),
    ("sun397", 397),
    ("patch_camelyon", 2),
    ("eurosat", 10),
    ("resisc45", 45),
    ("diabetic_retinopathy", 5),
    ("clevr_count", 8),
    ("clevr_dist", 6),
    ("dmlab", 6),
    ("kitti", 4),
    ("dsprites_loc", 16),
    ("dsprites_ori", 16),
    ("smallnorb_azi", 18),
    ("smallnorb_ele", 9),
];

/// Folder names accepted for a task besides its own (V-PETL's scripts say `cifar100`).
fn aliases(task: &str) -> &'static [&'static str] {
    match task {
        "cifar" | "cifar100" => &["cifar", "cifar100"],
        _ => &[],
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train800,
    Val200,
    Train800val200,
    Test,
}

impl Split {
    fn file(self) -> &'static str {
        match self {
            Split::Train800 => "train800.txt",
            Split::Val200 => "val200.txt",
            Split::Train800val200 => "train800val200.txt",
            Split::Test => "test.txt",
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Vtab1kSpec {
    pub root: PathBuf,
    /// One of the 19 tasks, or any folder in the same layout (then `num_classes` is required).
    pub task: String,
    pub split: Split,
    /// Required for tasks outside the 19; must agree with the table for the 19.
    #[serde(default)]
    pub num_classes: Option<i64>,
    #[serde(default)]
    pub pipeline: Vec<Component<dyn TransformSpec>>,
    #[serde(default)]
    pub normalize: Normalize,
    #[serde(default)]
    pub skip_bad: bool,
}

vpetl_core::register!(Dataset, "cls", "VTAB1k", Vtab1kSpec as dyn DatasetSpec, "VTAB-1k image-folder export (19 tasks; train800/val200/train800val200/test)");

struct Item {
    path: PathBuf,
    label: i64,
    line: usize,
}

pub struct Vtab1k {
    name: String,
    list: PathBuf,
    items: Vec<Item>,
    num_classes: i64,
    pipeline: Pipeline,
}

impl DatasetSpec for Vtab1kSpec {
    fn build(&self) -> anyhow::Result<Box<dyn Dataset>> {
        let known = VTAB_TASKS.iter().find(|(t, _)| *t == self.task || aliases(&self.task).contains(t)).map(|(_, n)| *n);
        let num_classes = match (known, self.num_classes) {
            (Some(k), Some(n)) if k != n => bail!("VTAB1k: task `{}` has {k} classes, but num_classes is {n}", self.task),
            (Some(k), _) => k,
            (None, Some(n)) => n,
            (None, None) => bail!(
                "VTAB1k: `{}` is not one of the 19 VTAB tasks ({}); give num_classes for a custom task",
                self.task,
                VTAB_TASKS.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
            ),
        };
        let folder = task_folder(&self.root, &self.task)?;
        let list = folder.join(self.split.file());
        let text = std::fs::read_to_string(&list).with_context(|| format!("cannot read the split list {}", list.display()))?;
        let mut items = Vec::new();
        let mut missing = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let mut parts = raw.split_whitespace();
            let (Some(rel), Some(label), None) = (parts.next(), parts.next(), parts.next()) else {
                bail!("{}:{line}: expected `relative/path label`, found {raw:?}", list.display());
            };
            let label: i64 = label.parse().with_context(|| format!("{}:{line}: label {label:?} is not an integer", list.display()))?;
            if !(0..num_classes).contains(&label) {
                bail!("{}:{line}: label {label} is outside 0..{num_classes} for task `{}`", list.display(), self.task);
            }
            let path = folder.join(rel);
            if !path.is_file() {
                missing.push(format!("{}:{line}: image {} does not exist", list.display(), path.display()));
                continue;
            }
            items.push(Item { path, label, line });
        }
        if !missing.is_empty() {
            if !self.skip_bad {
                bail!(
                    "{} missing image(s) ({}{}); set skip_bad: true to leave them out",
                    missing.len(),
                    missing.iter().take(3).cloned().collect::<Vec<_>>().join("; "),
                    if missing.len() > 3 { "; ..." } else { "" }
                );
            }
            tracing::warn!("VTAB1k {}: {} missing image(s) left out (skip_bad), first: {}", self.task, missing.len(), missing[0]);
        }
        if items.is_empty() {
            bail!("{}: no images listed", list.display());
        }
        let name = format!("VTAB-1k {}/{}", self.task, self.split.file().trim_end_matches(".txt"));
        let pipeline = Pipeline::new(&self.pipeline, self.normalize)?;
        Ok(Box::new(Vtab1k { name, list, items, num_classes, pipeline }))
    }
}

/// `<root>/<task>`, accepting the task's alternative folder names.
fn task_folder(root: &Path, task: &str) -> anyhow::Result<PathBuf> {
    let mut names = vec![task];
    names.extend(aliases(task).iter().filter(|a| **a != task));
    for n in &names {
        let p = root.join(n);
        if p.is_dir() {
            return Ok(p);
        }
    }
    bail!("VTAB1k: no folder for task `{task}` under {} (looked for {})", root.display(), names.join(", "))
}

impl Dataset for Vtab1k {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn num_classes(&self) -> i64 {
        self.num_classes
    }

    fn get(&self, index: usize, rng: &mut ChaCha8Rng) -> anyhow::Result<Sample> {
        let item = &self.items[index];
        let img = image::open(&item.path)
            .with_context(|| format!("{}:{}: cannot decode image {}", self.list.display(), item.line, item.path.display()))?
            .into_rgb8();
        Ok(Sample { image: self.pipeline.apply(img, rng), label: item.label })
    }

    fn describe(&self) -> String {
        format!("{} ({} images, {} classes)", self.name, self.items.len(), self.num_classes)
    }
}
