//! The PIL image operations timm's RandAugment calls (`ImageOps`, `ImageEnhance`, `Image.transform`,
//! `Image.rotate`), for 8-bit RGB, computed as Pillow computes them (integer luminance, truncating
//! blends, a = -1 cubic for affine transforms) so augmented images match the PyTorch pipeline's;
//! tests/tests/pil_parity.rs compares each against Pillow.

use image::{Rgb, RgbImage};

use crate::resample::Filter;

/// Applies one 256-entry table per channel (`Image.point`).
pub fn point(img: &RgbImage, luts: &[[u8; 256]; 3]) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for c in 0..3 {
            p.0[c] = luts[c][p.0[c] as usize];
        }
    }
    out
}

fn same_lut(f: impl Fn(usize) -> u8) -> [[u8; 256]; 3] {
    let lut: [u8; 256] = std::array::from_fn(f);
    [lut; 3]
}

fn histograms(img: &RgbImage) -> [[u64; 256]; 3] {
    let mut h = [[0u64; 256]; 3];
    for p in img.pixels() {
        for c in 0..3 {
            h[c][p.0[c] as usize] += 1;
        }
    }
    h
}

/// `ImageOps.autocontrast(img)`: each channel stretched so its darkest value becomes 0 and its
/// lightest 255 (left alone when it has a single value).
pub fn autocontrast(img: &RgbImage) -> RgbImage {
    let h = histograms(img);
    let luts = std::array::from_fn(|c| {
        let lo = (0..256).find(|&i| h[c][i] > 0).unwrap_or(0);
        let hi = (0..256).rev().find(|&i| h[c][i] > 0).unwrap_or(0);
        if hi <= lo {
            return std::array::from_fn(|i| i as u8);
        }
        let scale = 255.0 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        std::array::from_fn(|i| ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8)
    });
    point(img, &luts)
}

/// `ImageOps.equalize(img)`: per-channel histogram equalisation with PIL's integer steps.
pub fn equalize(img: &RgbImage) -> RgbImage {
    let h = histograms(img);
    let luts = std::array::from_fn(|c| {
        let used: Vec<u64> = h[c].iter().copied().filter(|&n| n > 0).collect();
        let identity = std::array::from_fn(|i| i as u8);
        if used.len() <= 1 {
            return identity;
        }
        let step = (used.iter().sum::<u64>() - used[used.len() - 1]) / 255;
        if step == 0 {
            return identity;
        }
        let mut n = step / 2;
        std::array::from_fn(|i| {
            let v = (n / step).min(255) as u8;
            n += h[c][i];
            v
        })
    });
    point(img, &luts)
}

pub fn invert(img: &RgbImage) -> RgbImage {
    point(img, &same_lut(|i| 255 - i as u8))
}

/// Keeps the `bits` high bits. 0 bits gives black, as the mask `~255` did in the Pillow of
/// V-PETL's time; Pillow 13 refuses 0, which timm's `PosterizeIncreasing` reaches at magnitude 10.
pub fn posterize(img: &RgbImage, bits: u32) -> RgbImage {
    if bits >= 8 {
        return img.clone();
    }
    let mask = !((1u32 << (8 - bits)) - 1) as u8;
    point(img, &same_lut(|i| i as u8 & mask))
}

/// Inverts values at or above `threshold`.
pub fn solarize(img: &RgbImage, threshold: i64) -> RgbImage {
    point(img, &same_lut(|i| if (i as i64) < threshold { i as u8 } else { 255 - i as u8 }))
}

/// timm's `solarize_add`: adds `add` (saturating) to values below `threshold`.
pub fn solarize_add(img: &RgbImage, add: i64, threshold: i64) -> RgbImage {
    point(img, &same_lut(|i| if (i as i64) < threshold { (i as i64 + add).min(255) as u8 } else { i as u8 }))
}

/// ITU-R 601-2 luma as Pillow's `convert("L")` computes it (16-bit fixed point, rounded).
fn luma(p: &Rgb<u8>) -> u8 {
    let [r, g, b] = p.0.map(|v| v as u32);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// `Image.blend(a, b, alpha)`: `a + alpha (b - a)` in single precision, truncated (clipped when
/// alpha is outside [0, 1]).
fn blend(a: &RgbImage, b: &RgbImage, alpha: f32) -> RgbImage {
    let mut out = a.clone();
    for (o, q) in out.as_mut().iter_mut().zip(b.as_raw()) {
        let v = *o as f32 + alpha * (*q as i32 - *o as i32) as f32;
        *o = if v <= 0.0 {
            0
        } else if v >= 255.0 {
            255
        } else {
            v as u8
        };
    }
    out
}

/// `ImageEnhance.Color(img).enhance(f)`: blend with the image's grey version.
pub fn color(img: &RgbImage, factor: f64) -> RgbImage {
    let grey = RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let l = luma(img.get_pixel(x, y));
        Rgb([l, l, l])
    });
    blend(&grey, img, factor as f32)
}

/// `ImageEnhance.Contrast(img).enhance(f)`: blend with a flat image at the mean luma (rounded).
pub fn contrast(img: &RgbImage, factor: f64) -> RgbImage {
    let n = (img.width() * img.height()) as f64;
    let sum: u64 = img.pixels().map(|p| luma(p) as u64).sum();
    let mean = (sum as f64 / n + 0.5) as u8;
    let flat = RgbImage::from_pixel(img.width(), img.height(), Rgb([mean; 3]));
    blend(&flat, img, factor as f32)
}

/// `ImageEnhance.Brightness(img).enhance(f)`: blend with black.
pub fn brightness(img: &RgbImage, factor: f64) -> RgbImage {
    blend(&RgbImage::new(img.width(), img.height()), img, factor as f32)
}

/// `ImageEnhance.Sharpness(img).enhance(f)`: blend with `ImageFilter.SMOOTH` (3x3 kernel
/// [1 1 1; 1 5 1; 1 1 1] / 13, rounded, border pixels kept).
pub fn sharpness(img: &RgbImage, factor: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let mut smooth = img.clone();
    if w >= 3 && h >= 3 {
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                let mut acc = [0u32; 3];
                for dy in 0..3 {
                    for dx in 0..3 {
                        let k = if dx == 1 && dy == 1 { 5 } else { 1 };
                        let p = img.get_pixel(x + dx - 1, y + dy - 1);
                        for c in 0..3 {
                            acc[c] += k * p.0[c] as u32;
                        }
                    }
                }
                // floor(acc / 13 + 0.5) in integers
                smooth.put_pixel(x, y, Rgb(acc.map(|a| ((2 * a + 13) / 26).min(255) as u8)));
            }
        }
    }
    blend(&smooth, img, factor as f32)
}

/// `img.transform(img.size, Image.AFFINE, m, resample, fillcolor=fill)`: output pixel centre
/// `(x + .5, y + .5)` samples the input at `(m0 x + m1 y + m2, m3 x + m4 y + m5)`; outside the
/// input it is `fill`.
pub fn affine(img: &RgbImage, m: [f64; 6], filter: Filter, fill: [u8; 3]) -> RgbImage {
    let (w, h) = img.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let (xo, yo) = (x as f64 + 0.5, y as f64 + 0.5);
        let xin = m[0] * xo + m[1] * yo + m[2];
        let yin = m[3] * xo + m[4] * yo + m[5];
        sample(img, xin, yin, filter).unwrap_or(Rgb(fill))
    })
}

/// Pillow's transform filters (`Geometry.c`): nearest, bilinear, and the a = -1 cubic, with edge
/// pixels repeated; `None` outside the image.
fn sample(img: &RgbImage, xin: f64, yin: f64, filter: Filter) -> Option<Rgb<u8>> {
    let (w, h) = (img.width() as i64, img.height() as i64);
    if xin < 0.0 || xin >= w as f64 || yin < 0.0 || yin >= h as f64 {
        return None;
    }
    let px = |x: i64, y: i64, c: usize| img.get_pixel(x.clamp(0, w - 1) as u32, y.clamp(0, h - 1) as u32).0[c] as f64;
    let (x, y) = ((xin - 0.5).floor(), (yin - 0.5).floor());
    let (dx, dy) = (xin - 0.5 - x, yin - 0.5 - y);
    let (x, y) = (x as i64, y as i64);
    match filter {
        Filter::Nearest => Some(*img.get_pixel(xin as u32, yin as u32)),
        Filter::Bilinear => Some(Rgb(std::array::from_fn(|c| {
            let lerp = |a: f64, b: f64, d: f64| a + (b - a) * d;
            let v1 = lerp(px(x, y, c), px(x + 1, y, c), dx);
            // Rows past the bottom repeat the last row read, as Pillow's macro does.
            let v2 = if y + 1 < h { lerp(px(x, y + 1, c), px(x + 1, y + 1, c), dx) } else { v1 };
            lerp(v1, v2, dy) as u8
        }))),
        Filter::Bicubic => Some(Rgb(std::array::from_fn(|c| {
            let cubic = |v1: f64, v2: f64, v3: f64, v4: f64, d: f64| {
                let p2 = -v1 + v3;
                let p3 = 2.0 * (v1 - v2) + v3 - v4;
                let p4 = -v1 + v2 - v3 + v4;
                v2 + d * (p2 + d * (p3 + d * p4))
            };
            let row = |yy: i64| cubic(px(x - 1, yy, c), px(x, yy, c), px(x + 1, yy, c), px(x + 2, yy, c), dx);
            // The first row is clamped into the image; later rows past an edge repeat the previous.
            let v1 = row(y - 1);
            let v2 = if (0..h).contains(&y) { row(y) } else { v1 };
            let v3 = if (0..h).contains(&(y + 1)) { row(y + 1) } else { v2 };
            let v4 = if (0..h).contains(&(y + 2)) { row(y + 2) } else { v3 };
            let v = cubic(v1, v2, v3, v4, dy);
            if v <= 0.0 {
                0
            } else if v >= 255.0 {
                255
            } else {
                v as u8
            }
        }))),
    }
}

/// `img.rotate(degrees, resample, fillcolor=fill)` about the centre, counter-clockwise, same size.
pub fn rotate(img: &RgbImage, degrees: f64, filter: Filter, fill: [u8; 3]) -> RgbImage {
    if degrees % 360.0 == 0.0 {
        return img.clone();
    }
    let (w, h) = (img.width() as f64, img.height() as f64);
    let (cx, cy) = (w / 2.0, h / 2.0);
    let a = -degrees.to_radians();
    // Pillow rounds the matrix to 15 decimals, which makes e.g. cos(90 deg) exactly 0.
    let r15 = |v: f64| (v * 1e15).round() / 1e15;
    let (c, s) = (r15(a.cos()), r15(a.sin()));
    let mut m = [c, s, 0.0, -s, c, 0.0];
    m[2] = m[0] * -cx + m[1] * -cy + cx;
    m[5] = m[3] * -cx + m[4] * -cy + cy;
    affine(img, m, filter, fill)
}
