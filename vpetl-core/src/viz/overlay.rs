//! Heat maps over images: a model input made viewable, a coarse map (patch grid) upsampled
//! bilinearly to the picture, coloured with viridis and blended over it.

use image::{imageops, RgbImage};
use tch::{Kind, Tensor};

use super::palette::viridis;

/// A `(C, H, W)` model input as an RGB picture. Inputs are normalised, so each channel is rescaled
/// to [0, 1] by its own minimum and maximum; one channel is shown as grey.
pub fn input_to_rgb(x: &Tensor) -> RgbImage {
    let x = x.to_kind(Kind::Float).to_device(tch::Device::Cpu);
    let (c, h, w) = x.size3().expect("an image is (C, H, W)");
    let x = if c == 1 { x.expand([3, h, w], false) } else { x.narrow(0, 0, 3.min(c)) };
    let flat = x.reshape([3, -1]);
    let lo = flat.amin([1], true);
    let hi = flat.amax([1], true);
    let x = ((flat - &lo) / (hi - lo).clamp_min(1e-8) * 255.0).clamp(0.0, 255.0).round().to_kind(Kind::Uint8);
    let hwc = x.view([3, h, w]).permute([1, 2, 0]).contiguous();
    let bytes = Vec::<u8>::try_from(hwc.view([-1])).expect("u8 pixels");
    RgbImage::from_raw(w as u32, h as u32, bytes).expect("the pixels fill the picture")
}

/// `base` resized to `side` × `side` (nearest: small inputs stay crisp), with `map` `(gh, gw)`
/// scaled to [0, 1] by its own range and blended over it (`alpha` of heat).
pub fn overlay(base: &RgbImage, map: Option<&Tensor>, side: u32, alpha: f64) -> RgbImage {
    let mut out = imageops::resize(base, side, side, imageops::FilterType::Nearest);
    let Some(map) = map else { return out };
    let heat = normalised_upsample(map, side);
    for (i, px) in out.pixels_mut().enumerate() {
        let c = viridis(heat[i] as f64);
        for k in 0..3 {
            px.0[k] = ((1.0 - alpha) * px.0[k] as f64 + alpha * c[k] as f64).round() as u8;
        }
    }
    out
}

/// The map upsampled to `side` × `side` and min-max scaled, row-major.
fn normalised_upsample(map: &Tensor, side: u32) -> Vec<f32> {
    let m = map.to_kind(Kind::Float).to_device(tch::Device::Cpu);
    let (gh, gw) = m.size2().expect("a map is (gh, gw)");
    let up = m.view([1, 1, gh, gw]).upsample_bilinear2d([side as i64, side as i64], false, None, None).view([-1]);
    let (lo, hi) = (up.min().double_value(&[]), up.max().double_value(&[]));
    let up = (up - lo) / (hi - lo).max(1e-12);
    Vec::<f32>::try_from(up).expect("f32 map")
}
