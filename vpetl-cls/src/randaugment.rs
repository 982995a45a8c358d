//! RandAugment as timm implements it (`timm/data/auto_augment.py`, `rand_augment_transform`), configured
//! by timm's string: `rand-m9-mstd0.5-inc1` is V-PETL's VTAB `train_aug` (magnitude 9, Gaussian
//! magnitude noise std 0.5, the "increasing" op variants, 2 ops).
//!
//! Per image: `n` ops are drawn uniformly with replacement from the 15 ops; each is applied with
//! probability `p`, at a magnitude drawn from N(m, mstd) (uniform on [0, m] when mstd > 100) and
//! clipped to [0, mmax] (default 10); signed ops negate their argument with probability 1/2. The
//! ops are Pillow's (see [`crate::pil_ops`]), with timm's level-to-argument maps, fill colour
//! `fill` (timm's `img_mean`: the ImageNet mean in 8 bits, (124, 116, 104)) and bicubic resampling
//! for the geometric ops. Every draw comes from the per-sample generator the loader provides, so
//! the augmentation is a function of (seed, epoch, index).

use image::RgbImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer};

use crate::pil_ops;
use crate::transforms::{Interpolation, TransformSpec};

/// The ops; the `*Increasing` variants grow stronger with the magnitude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    Posterize,
    PosterizeIncreasing,
    Solarize,
    SolarizeIncreasing,
    SolarizeAdd,
    Color,
    ColorIncreasing,
    Contrast,
    ContrastIncreasing,
    Brightness,
    BrightnessIncreasing,
    Sharpness,
    SharpnessIncreasing,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
}

/// timm's `_RAND_TRANSFORMS`.
pub const RAND_TRANSFORMS: [Op; 15] = [
    Op::AutoContrast,
    Op::Equalize,
    Op::Invert,
    Op::Rotate,
    Op::Posterize,
    Op::Solarize,
    Op::SolarizeAdd,
    Op::Color,
    Op::Contrast,
    Op::Brightness,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateXRel,
    Op::TranslateYRel,
];

/// timm's `_RAND_INCREASING_TRANSFORMS` (`inc1`).
pub const RAND_INCREASING_TRANSFORMS: [Op; 15] = [
    Op::AutoContrast,
    Op::Equalize,
    Op::Invert,
    Op::Rotate,
    Op::PosterizeIncreasing,
    Op::SolarizeIncreasing,
    Op::SolarizeAdd,
    Op::ColorIncreasing,
    Op::ContrastIncreasing,
    Op::BrightnessIncreasing,
    Op::SharpnessIncreasing,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateXRel,
    Op::TranslateYRel,
];

/// timm's `_LEVEL_DENOM`: magnitudes are on a 0..10 scale.
const LEVEL_DENOM: f64 = 10.0;

/// A parsed timm RandAugment string.
#[derive(Clone, Debug, PartialEq)]
pub struct RandAugmentConfig {
    pub magnitude: f64,
    pub num_layers: usize,
    pub prob: f64,
    /// 0: fixed magnitude; infinite: uniform on [0, magnitude].
    pub magnitude_std: f64,
    pub magnitude_max: f64,
    pub increasing: bool,
}

impl std::str::FromStr for RandAugmentConfig {
    type Err = String;

    /// Sections after `rand`, in any order: `m<int>`, `n<int>`, `p<float>`, `mstd<float>`,
    /// `mmax<int>`, `inc<0|1>` (timm's grammar; its `t<name>` transform sets are not supported).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split('-');
        if parts.next() != Some("rand") {
            return Err(format!("RandAugment config_str {s:?} must start with `rand-` (timm's format, e.g. rand-m9-mstd0.5-inc1)"));
        }
        let mut cfg = RandAugmentConfig { magnitude: 10.0, num_layers: 2, prob: 0.5, magnitude_std: 0.0, magnitude_max: LEVEL_DENOM, increasing: false };
        for sec in parts {
            let split = sec.find(|c: char| c.is_ascii_digit()).unwrap_or(sec.len());
            let (key, val) = sec.split_at(split);
            let bad = |what: &str| format!("RandAugment config_str {s:?}: section {sec:?}: {what}");
            let int = || val.parse::<i64>().map_err(|_| bad("expected an integer after the key"));
            let float = || val.parse::<f64>().map_err(|_| bad("expected a number after the key"));
            match key {
                "m" => cfg.magnitude = int()? as f64,
                "n" => cfg.num_layers = usize::try_from(int()?).map_err(|_| bad("negative op count"))?,
                "p" => cfg.prob = float()?,
                "mstd" => {
                    let v = float()?;
                    cfg.magnitude_std = if v > 100.0 { f64::INFINITY } else { v };
                }
                "mmax" => cfg.magnitude_max = int()? as f64,
                "inc" => cfg.increasing = int()? != 0,
                _ => return Err(bad("unknown key (known: m, n, p, mstd, mmax, inc)")),
            }
        }
        Ok(cfg)
    }
}

fn parse_config<'de, D: Deserializer<'de>>(d: D) -> Result<RandAugmentConfig, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn default_fill() -> [u8; 3] {
    [124, 116, 104]
}

fn default_interpolation() -> Interpolation {
    Interpolation::Bicubic
}

#[derive(Debug, Deserialize)]
pub struct RandAugmentSpec {
    /// timm's string, e.g. `rand-m9-mstd0.5-inc1`.
    #[serde(deserialize_with = "parse_config")]
    pub config_str: RandAugmentConfig,
    /// Colour of the area the geometric ops uncover.
    #[serde(default = "default_fill")]
    pub fill: [u8; 3],
    /// Resampling of the geometric ops.
    #[serde(default = "default_interpolation")]
    pub interpolation: Interpolation,
}

vpetl_core::register!(Transform, "cls", "RandAugment", RandAugmentSpec as dyn TransformSpec, "timm RandAugment from its config string (rand-m9-mstd0.5-inc1), Pillow-exact ops");

impl RandAugmentSpec {
    fn ops(&self) -> &'static [Op] {
        if self.config_str.increasing {
            &RAND_INCREASING_TRANSFORMS
        } else {
            &RAND_TRANSFORMS
        }
    }
}

impl TransformSpec for RandAugmentSpec {
    fn apply(&self, mut img: RgbImage, rng: &mut ChaCha8Rng) -> RgbImage {
        let cfg = &self.config_str;
        let ops = self.ops();
        let chosen: Vec<Op> = (0..cfg.num_layers).map(|_| ops[rng.gen_range(0..ops.len())]).collect();
        for op in chosen {
            if cfg.prob < 1.0 && rng.gen::<f64>() > cfg.prob {
                continue;
            }
            let m = if cfg.magnitude_std == f64::INFINITY {
                rng.gen_range(0.0..=cfg.magnitude.max(0.0))
            } else if cfg.magnitude_std > 0.0 {
                cfg.magnitude + cfg.magnitude_std * standard_normal(rng)
            } else {
                cfg.magnitude
            };
            let m = m.min(cfg.magnitude_max).max(0.0);
            let sign = if op.signed() && rng.gen::<f64>() > 0.5 { -1.0 } else { 1.0 };
            img = apply_op(&img, op, m, sign, self.fill, self.interpolation);
        }
        img
    }
}

impl Op {
    /// Whether timm's level function negates the argument at random (`_randomly_negate`).
    fn signed(self) -> bool {
        matches!(
            self,
            Op::Rotate
                | Op::ColorIncreasing
                | Op::ContrastIncreasing
                | Op::BrightnessIncreasing
                | Op::SharpnessIncreasing
                | Op::ShearX
                | Op::ShearY
                | Op::TranslateXRel
                | Op::TranslateYRel
        )
    }
}

/// One op at magnitude `m` (0..10) with the sign drawn for signed ops (timm's `LEVEL_TO_ARG` and
/// `NAME_TO_OP`).
pub fn apply_op(img: &RgbImage, op: Op, m: f64, sign: f64, fill: [u8; 3], interpolation: Interpolation) -> RgbImage {
    let level = m / LEVEL_DENOM;
    let filter = interpolation.filter();
    let enhance = || level * 1.8 + 0.1;
    let enhance_increasing = || (1.0 + sign * level * 0.9).max(0.1);
    let posterize_bits = || (level * 4.0) as u32;
    let solarize_thresh = || (level * 256.0) as i64;
    let (w, h) = (img.width() as f64, img.height() as f64);
    match op {
        Op::AutoContrast => pil_ops::autocontrast(img),
        Op::Equalize => pil_ops::equalize(img),
        Op::Invert => pil_ops::invert(img),
        Op::Rotate => pil_ops::rotate(img, sign * level * 30.0, filter, fill),
        Op::Posterize => pil_ops::posterize(img, posterize_bits()),
        Op::PosterizeIncreasing => pil_ops::posterize(img, 4u32.saturating_sub(posterize_bits())),
        Op::Solarize => pil_ops::solarize(img, solarize_thresh()),
        Op::SolarizeIncreasing => pil_ops::solarize(img, 256 - solarize_thresh()),
        Op::SolarizeAdd => pil_ops::solarize_add(img, (level * 110.0) as i64, 128),
        Op::Color => pil_ops::color(img, enhance()),
        Op::ColorIncreasing => pil_ops::color(img, enhance_increasing()),
        Op::Contrast => pil_ops::contrast(img, enhance()),
        Op::ContrastIncreasing => pil_ops::contrast(img, enhance_increasing()),
        Op::Brightness => pil_ops::brightness(img, enhance()),
        Op::BrightnessIncreasing => pil_ops::brightness(img, enhance_increasing()),
        Op::Sharpness => pil_ops::sharpness(img, enhance()),
        Op::SharpnessIncreasing => pil_ops::sharpness(img, enhance_increasing()),
        Op::ShearX => pil_ops::affine(img, [1.0, sign * level * 0.3, 0.0, 0.0, 1.0, 0.0], filter, fill),
        Op::ShearY => pil_ops::affine(img, [1.0, 0.0, 0.0, sign * level * 0.3, 1.0, 0.0], filter, fill),
        Op::TranslateXRel => pil_ops::affine(img, [1.0, 0.0, sign * level * 0.45 * w, 0.0, 1.0, 0.0], filter, fill),
        Op::TranslateYRel => pil_ops::affine(img, [1.0, 0.0, 0.0, 0.0, 1.0, sign * level * 0.45 * h], filter, fill),
    }
}

/// N(0, 1) by Box-Muller (Python's `random.gauss` draws differently; only the distribution matters).
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1], so the log is finite
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
