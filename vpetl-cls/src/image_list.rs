//! A dataset that is a list of image files with labels, as annotation files describe them (VTAB-1k's
//! `split.txt`, FGVC's `split.json`). Shared by those datasets: the missing-image check when the
//! dataset is built, decoding with the annotation named on failure, and the transform pipeline.

use std::path::PathBuf;

use anyhow::{bail, Context};
use rand_chacha::ChaCha8Rng;
use vpetl_core::data::{Dataset, Sample};

use crate::transforms::Pipeline;

/// One image and its label, with where the annotation said so (`train800.txt:12`,
/// `train.json: key "001.Black_footed_Albatross/x.jpg"`) for error messages.
pub struct ImageItem {
    pub path: PathBuf,
    pub label: i64,
    pub origin: String,
}

pub struct ImageList {
    name: String,
    items: Vec<ImageItem>,
    num_classes: i64,
    pipeline: Pipeline,
}

impl ImageList {
    /// Checks that every image exists: a missing one stops with the annotation named, unless
    /// `skip_bad`, which leaves it out with a warning that counts them. `name` is for logs
    /// (`VTAB-1k dtd/train800`).
    pub fn new(name: String, items: Vec<ImageItem>, num_classes: i64, pipeline: Pipeline, skip_bad: bool) -> anyhow::Result<Self> {
        let (items, missing): (Vec<_>, Vec<_>) = items.into_iter().partition(|it| it.path.is_file());
        if !missing.is_empty() {
            let say = |it: &ImageItem| format!("{}: image {} does not exist", it.origin, it.path.display());
            if !skip_bad {
                bail!(
                    "{} missing image(s) ({}{}); set skip_bad: true to leave them out",
                    missing.len(),
                    missing.iter().take(3).map(say).collect::<Vec<_>>().join("; "),
                    if missing.len() > 3 { "; ..." } else { "" }
                );
            }
            tracing::warn!("{name}: {} missing image(s) left out (skip_bad), first: {}", missing.len(), say(&missing[0]));
        }
        if items.is_empty() {
            bail!("{name}: no images");
        }
        Ok(ImageList { name, items, num_classes, pipeline })
    }

    pub fn items(&self) -> &[ImageItem] {
        &self.items
    }
}

impl Dataset for ImageList {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn num_classes(&self) -> i64 {
        self.num_classes
    }

    fn get(&self, index: usize, rng: &mut ChaCha8Rng) -> anyhow::Result<Sample> {
        let item = &self.items[index];
        let img = image::open(&item.path).with_context(|| format!("{}: cannot decode image {}", item.origin, item.path.display()))?.into_rgb8();
        Ok(Sample { image: self.pipeline.apply(img, rng), label: item.label })
    }

    fn describe(&self) -> String {
        format!("{} ({} images, {} classes)", self.name, self.items.len(), self.num_classes)
    }
}
