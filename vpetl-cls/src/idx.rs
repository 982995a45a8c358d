//! MNIST-style IDX files (`*-images-idx3-ubyte[.gz]`, `*-labels-idx1-ubyte[.gz]`), e.g. Debian's
//! `dataset-fashion-mnist` in `/usr/share/datasets/fashion-mnist`; the quickstart's backbone is
//! pretrained on it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use image::{GrayImage, RgbImage};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use vpetl_core::data::{Dataset, DatasetSpec, Sample};
use vpetl_core::registry::Component;

use crate::transforms::{Normalize, Pipeline, TransformSpec};

#[derive(Debug, Deserialize)]
pub struct IdxSpec {
    pub images: PathBuf,
    pub labels: PathBuf,
    /// Use only the first `limit` examples.
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub pipeline: Vec<Component<dyn TransformSpec>>,
    #[serde(default)]
    pub normalize: Normalize,
}

vpetl_core::register!(Dataset, "cls", "MNISTIdx", IdxSpec as dyn DatasetSpec, "MNIST-format IDX image/label files (MNIST, Fashion-MNIST), gzip or raw");

struct Idx {
    name: String,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
    num_classes: i64,
    pipeline: Pipeline,
}

fn read_maybe_gz(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out).with_context(|| format!("{}: corrupt gzip", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(bytes: &[u8], path: &Path, magic: u32, dims: usize) -> anyhow::Result<Vec<usize>> {
    ensure!(bytes.len() >= 4 + 4 * dims, "{}: too short for an IDX header", path.display());
    let word = |i: usize| u32::from_be_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    if word(0) != magic {
        bail!("{}: IDX magic {:#x}, expected {magic:#x}", path.display(), word(0));
    }
    Ok((1..=dims).map(|i| word(i) as usize).collect())
}

impl DatasetSpec for IdxSpec {
    fn build(&self) -> anyhow::Result<Box<dyn Dataset>> {
        let img = read_maybe_gz(&self.images)?;
        let lab = read_maybe_gz(&self.labels)?;
        let d = header(&img, &self.images, 0x0803, 3)?;
        let (n, rows, cols) = (d[0], d[1], d[2]);
        let nl = header(&lab, &self.labels, 0x0801, 1)?[0];
        ensure!(n == nl, "{} has {n} images but {} has {nl} labels", self.images.display(), self.labels.display());
        ensure!(img.len() == 16 + n * rows * cols, "{}: truncated ({} bytes for {n} images)", self.images.display(), img.len());
        ensure!(lab.len() == 8 + n, "{}: truncated", self.labels.display());
        let keep = self.limit.unwrap_or(n).min(n);
        let labels = lab[8..8 + keep].to_vec();
        let num_classes = labels.iter().copied().max().map_or(0, |m| m as i64 + 1);
        let pipeline = Pipeline::new(&self.pipeline, self.normalize)?;
        Ok(Box::new(Idx {
            name: self.images.display().to_string(),
            rows,
            cols,
            pixels: img[16..16 + keep * rows * cols].to_vec(),
            labels,
            num_classes,
            pipeline,
        }))
    }
}

impl Dataset for Idx {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn num_classes(&self) -> i64 {
        self.num_classes
    }

    fn get(&self, index: usize, rng: &mut ChaCha8Rng) -> anyhow::Result<Sample> {
        let size = self.rows * self.cols;
        let gray = GrayImage::from_raw(self.cols as u32, self.rows as u32, self.pixels[index * size..(index + 1) * size].to_vec())
            .context("IDX image size")?;
        let img: RgbImage = image::DynamicImage::ImageLuma8(gray).to_rgb8();
        Ok(Sample { image: self.pipeline.apply(img, rng), label: self.labels[index] as i64 })
    }

    fn describe(&self) -> String {
        format!("IDX {} ({} images, {} classes)", self.name, self.labels.len(), self.num_classes)
    }
}
