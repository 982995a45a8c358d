//! Image transforms (registered kind `transform`), applied in order to decoded RGB images, and the
//! final conversion to a normalised `(3, H, W)` tensor.

use image::RgbImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use tch::Tensor;
use vpetl_core::registry::{Kind as RegKind, KindOf};

use crate::resample::{resize, resize_region, Filter, Region};

pub trait TransformSpec: std::fmt::Debug + Send + Sync {
    fn apply(&self, img: RgbImage, rng: &mut ChaCha8Rng) -> RgbImage;

    /// When this step is a deterministic resize: the size and filter it resizes a `w`×`h` image
    /// with. With `crop_region` below, a pipeline computes only the pixels a following crop keeps.
    fn resize_to(&self, _w: u32, _h: u32) -> Option<(u32, u32, Filter)> {
        None
    }

    /// When this step is a deterministic crop inside a `w`×`h` image: the region it keeps.
    fn crop_region(&self, _w: u32, _h: u32) -> Option<Region> {
        None
    }
}

/// Applies `steps` in order; a resize followed by a crop computes only the cropped pixels (the same
/// bytes as resizing the whole image, then cropping).
pub fn apply_steps<'a>(steps: impl IntoIterator<Item = &'a dyn TransformSpec>, mut img: RgbImage, rng: &mut ChaCha8Rng) -> RgbImage {
    let mut steps = steps.into_iter().peekable();
    while let Some(step) = steps.next() {
        let (w, h) = img.dimensions();
        if let (Some((nw, nh, filter)), Some(next)) = (step.resize_to(w, h), steps.peek()) {
            if let Some(region) = next.crop_region(nw, nh) {
                img = resize_region(&img, nw, nh, filter, region);
                steps.next();
                continue;
            }
        }
        img = step.apply(img, rng);
    }
    img
}

impl KindOf for dyn TransformSpec {
    const KIND: RegKind = RegKind::Transform;
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    #[default]
    Bilinear,
    Bicubic,
    Nearest,
}

impl Interpolation {
    pub fn filter(self) -> Filter {
        match self {
            Interpolation::Bilinear => Filter::Bilinear,
            Interpolation::Bicubic => Filter::Bicubic,
            Interpolation::Nearest => Filter::Nearest,
        }
    }
}

/// Resize to `[height, width]`, or the shorter side to `size` keeping the aspect ratio (torchvision:
/// the longer side becomes `int(size * long / short)`, truncated), with PIL's resampling.
#[derive(Clone, Debug, Deserialize)]
pub struct ResizeSpec {
    pub size: Size,
    #[serde(default)]
    pub interpolation: Interpolation,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Shorter(u32),
    Exact([u32; 2]),
}

vpetl_core::register!(Transform, "cls", "Resize", ResizeSpec as dyn TransformSpec, "resize to [h, w] or the shorter side to n (bilinear by default, antialiased)");

impl ResizeSpec {
    fn target(&self, w: u32, h: u32) -> (u32, u32) {
        let (nw, nh) = match self.size {
            Size::Exact([th, tw]) => (tw, th),
            Size::Shorter(s) if w <= h => (s, (s as u64 * h as u64 / w as u64) as u32),
            Size::Shorter(s) => ((s as u64 * w as u64 / h as u64) as u32, s),
        };
        (nw.max(1), nh.max(1))
    }
}

impl TransformSpec for ResizeSpec {
    fn apply(&self, img: RgbImage, _: &mut ChaCha8Rng) -> RgbImage {
        let (w, h) = img.dimensions();
        let (nw, nh) = self.target(w, h);
        if (nw, nh) == (w, h) {
            return img;
        }
        resize(&img, nw, nh, self.interpolation.filter())
    }

    fn resize_to(&self, w: u32, h: u32) -> Option<(u32, u32, Filter)> {
        let (nw, nh) = self.target(w, h);
        Some((nw, nh, self.interpolation.filter()))
    }
}

/// Crop `[height, width]` from the centre, as torchvision's `CenterCrop`: the offset is half the
/// margin rounded half to even (Python's `round`), and an image smaller than the crop is first
/// padded with black, the odd pixel of padding going to the right or bottom.
#[derive(Clone, Debug, Deserialize)]
pub struct CenterCropSpec {
    pub size: [u32; 2],
}

vpetl_core::register!(Transform, "cls", "CenterCrop", CenterCropSpec as dyn TransformSpec, "crop [h, w] from the centre (torchvision's offsets; black padding when larger)");

/// `int(round(margin / 2))` with Python's round-half-to-even.
fn centre_offset(margin: u32) -> u32 {
    let half = margin / 2;
    if margin % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

impl TransformSpec for CenterCropSpec {
    fn apply(&self, img: RgbImage, _: &mut ChaCha8Rng) -> RgbImage {
        let (w, h) = img.dimensions();
        let [ch, cw] = self.size;
        let img = if cw > w || ch > h {
            let mut padded = RgbImage::new(w.max(cw), h.max(ch));
            image::imageops::replace(&mut padded, &img, (cw.saturating_sub(w) / 2) as i64, (ch.saturating_sub(h) / 2) as i64);
            padded
        } else {
            img
        };
        let r = self.crop_region(img.width(), img.height()).expect("the crop fits the padded image");
        image::imageops::crop_imm(&img, r.x, r.y, r.width, r.height).to_image()
    }

    fn crop_region(&self, w: u32, h: u32) -> Option<Region> {
        let [ch, cw] = self.size;
        (cw <= w && ch <= h).then(|| Region { x: centre_offset(w - cw), y: centre_offset(h - ch), width: cw, height: ch })
    }
}

/// Crop `[height, width]` at a random position (after optional zero padding).
#[derive(Clone, Debug, Deserialize)]
pub struct RandomCropSpec {
    pub size: [u32; 2],
    #[serde(default)]
    pub padding: u32,
}

vpetl_core::register!(Transform, "cls", "RandomCrop", RandomCropSpec as dyn TransformSpec, "crop [h, w] at a random position, after optional padding");

impl TransformSpec for RandomCropSpec {
    fn apply(&self, img: RgbImage, rng: &mut ChaCha8Rng) -> RgbImage {
        let img = if self.padding > 0 {
            let p = self.padding;
            let mut padded = RgbImage::new(img.width() + 2 * p, img.height() + 2 * p);
            image::imageops::replace(&mut padded, &img, p as i64, p as i64);
            padded
        } else {
            img
        };
        let (w, h) = img.dimensions();
        let [ch, cw] = self.size;
        let x = rng.gen_range(0..=w.saturating_sub(cw));
        let y = rng.gen_range(0..=h.saturating_sub(ch));
        image::imageops::crop_imm(&img, x, y, cw.min(w), ch.min(h)).to_image()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RandomHorizontalFlipSpec {
    pub p: f64,
}

impl Default for RandomHorizontalFlipSpec {
    fn default() -> Self {
        RandomHorizontalFlipSpec { p: 0.5 }
    }
}

vpetl_core::register!(Transform, "cls", "RandomHorizontalFlip", RandomHorizontalFlipSpec as dyn TransformSpec, "mirror left-right with probability p");

impl TransformSpec for RandomHorizontalFlipSpec {
    fn apply(&self, img: RgbImage, rng: &mut ChaCha8Rng) -> RgbImage {
        if rng.gen_bool(self.p.clamp(0.0, 1.0)) {
            image::imageops::flip_horizontal(&img)
        } else {
            img
        }
    }
}

/// Channel normalisation applied when an image becomes a tensor; papers differ.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225): V-PETL, NOAH.
    #[default]
    Imagenet,
    /// mean 0.5, std 0.5: the in21k ViT's own preprocessing.
    Inception,
    /// [0, 1] values (VPT's protocol).
    None,
}

impl Normalize {
    fn mean_std(self) -> ([f64; 3], [f64; 3]) {
        match self {
            Normalize::Imagenet => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            Normalize::Inception => ([0.5; 3], [0.5; 3]),
            Normalize::None => ([0.0; 3], [1.0; 3]),
        }
    }
}

/// `(3, H, W)` float tensor in [0, 1], then normalised: `(x / 255 - mean) / std`, computed in one
/// pass over the pixels straight into the tensor's memory (the tensor-op chain it replaces made five
/// full-size copies per image).
pub fn to_tensor(img: &RgbImage, norm: Normalize) -> Tensor {
    let (w, h) = img.dimensions();
    let (mean, std) = norm.mean_std();
    let scale: [f32; 3] = std::array::from_fn(|c| (1.0 / (255.0 * std[c])) as f32);
    let shift: [f32; 3] = std::array::from_fn(|c| (-mean[c] / std[c]) as f32);
    let plane = (w * h) as usize;
    let t = Tensor::empty([3, h as i64, w as i64], (tch::Kind::Float, tch::Device::Cpu));
    // SAFETY: `t` is a new contiguous float CPU tensor of 3 * plane elements that nothing else sees.
    let out = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, 3 * plane) };
    let (r, gb) = out.split_at_mut(plane);
    let (g, b) = gb.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = px[0] as f32 * scale[0] + shift[0];
        g[i] = px[1] as f32 * scale[1] + shift[1];
        b[i] = px[2] as f32 * scale[2] + shift[2];
    }
    t
}

/// A dataset's transforms and normalisation, from an image to its tensor.
pub struct Pipeline {
    steps: Vec<vpetl_core::registry::Component<dyn TransformSpec>>,
    normalize: Normalize,
}

impl Pipeline {
    /// Builds the pipeline a dataset config names (its own copy of the configured steps).
    pub fn new(steps: &[vpetl_core::registry::Component<dyn TransformSpec>], normalize: Normalize) -> anyhow::Result<Self> {
        let steps = steps.iter().map(|c| vpetl_core::registry::Component::from_node(&c.node, &c.path)).collect::<Result<_, _>>()?;
        Ok(Pipeline { steps, normalize })
    }

    pub fn apply(&self, img: RgbImage, rng: &mut ChaCha8Rng) -> Tensor {
        let img = apply_steps(self.steps.iter().map(|c| c.spec.as_ref()), img, rng);
        to_tensor(&img, self.normalize)
    }
}
