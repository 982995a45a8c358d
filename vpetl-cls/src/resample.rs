//! PIL's `Image.resize` for 8-bit RGB (Pillow's `ImagingResample`), reproduced so that images reach
//! the model as they do in the PyTorch code (torchvision's `Resize` on PIL images).
//!
//! Why not the `image` crate's filters: they compute in f32 with a single rounding and place the
//! filter window differently, so they differ from PIL by several levels at edges; PIL instead
//! (1) widens the filter support by the scale when downscaling (antialiasing), (2) normalises each
//! output pixel's weights to sum 1, (3) converts them to 22-bit fixed point, rounding away from zero,
//! and (4) runs a horizontal pass to an 8-bit intermediate, then a vertical pass, each rounding to
//! 8 bits (add half, shift, clip). Matching those steps gives PIL's bytes (tests/tests/pil_parity.rs).
//!
//! The horizontal pass runs first, as in every Pillow before 13 (the one V-PETL ran with). Pillow 13
//! (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks much more than
//! the width, which moves some values by a few levels in those cases only.

use image::RgbImage;

/// PIL's resampling filters (`Image.Resampling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Bilinear,
    /// Keys' cubic with a = -0.5.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Nearest => 0.0,
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output position: the first input index, and its fixed-point weights at `k * i ..` (all
/// positions padded to the same `k` taps with zero weights, as Pillow lays them out).
struct Coeffs {
    start: Vec<usize>,
    k: usize,
    weights: Vec<i32>,
}

impl Coeffs {
    fn of(&self, i: usize) -> (usize, &[i32]) {
        (self.start[i], &self.weights[i * self.k..(i + 1) * self.k])
    }
}

/// The coefficients of output positions `first..first + count` of a resize from `in_size` to
/// `out_size` (each position's are independent of the others', so a crop of the output needs only
/// its own).
fn coeffs(in_size: usize, out_size: usize, filter: Filter, first: usize, count: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let k = (support.ceil() as usize) * 2 + 1;
    let mut start = Vec::with_capacity(count);
    let mut weights = vec![0i32; count * k];
    let one = (1u32 << PRECISION_BITS) as f64;
    for (j, xx) in (first..first + count).enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero; the clamp at 0 makes that a floor here.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        // Pillow never lets a window exceed its `k` taps.
        let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize).min(xmin + k);
        let w: Vec<f64> = (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) / filterscale)).collect();
        let total: f64 = w.iter().sum();
        let norm = if total != 0.0 { total } else { 1.0 };
        for (slot, v) in weights[j * k..].iter_mut().zip(&w) {
            let v = v / norm;
            // Rounded away from zero, as `normalize_coeffs_8bpc` does.
            *slot = if v < 0.0 { (-0.5 + v * one) as i32 } else { (0.5 + v * one) as i32 };
        }
        start.push(xmin);
    }
    Coeffs { start, k, weights }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A rectangle of an image: `x, y` its top-left corner, `width, height` its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// `img.resize((width, height), filter)` as PIL computes it.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    resize_region(img, width, height, filter, Region { x: 0, y: 0, width, height })
}

/// `region` of `img.resize((width, height), filter)`: the same bytes as resizing, then cropping,
/// computing only the output pixels the crop keeps (a resize followed by a centre crop).
pub fn resize_region(img: &RgbImage, width: u32, height: u32, filter: Filter, region: Region) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nw, nh) = (width as usize, height as usize);
    let (rx, ry, rw, rh) = (region.x as usize, region.y as usize, region.width as usize, region.height as usize);
    assert!(rx + rw <= nw && ry + rh <= nh, "region {region:?} outside the {nw}x{nh} output");
    if (nw, nh) == (w, h) {
        return image::imageops::crop_imm(img, region.x, region.y, region.width, region.height).to_image();
    }
    if filter == Filter::Nearest {
        return nearest(img, nw, nh, region);
    }
    let src = img.as_raw();
    let horiz = (nw != w).then(|| coeffs(w, nw, filter, rx, rw));
    let vert = (nh != h).then(|| coeffs(h, nh, filter, ry, rh));
    // The horizontal pass only needs the input rows the vertical pass reads (windows start in order).
    let (row0, row1) = match &vert {
        Some(v) => (v.start[0], (v.start[rh - 1] + v.k).min(h)),
        None => (ry, ry + rh),
    };
    let half = 1i32 << (PRECISION_BITS - 1);
    // The intermediate: rows row0..row1 at the output's width (only the region's columns).
    let (tmp, tw) = match &horiz {
        Some(hc) => {
            let mut tmp = vec![0u8; (row1 - row0) * rw * 3];
            for y in row0..row1 {
                let line = &src[y * w * 3..(y + 1) * w * 3];
                let out = &mut tmp[(y - row0) * rw * 3..(y - row0 + 1) * rw * 3];
                for (xx, px) in out.chunks_exact_mut(3).enumerate() {
                    let (x0, k) = hc.of(xx);
                    let taps = k.len().min(w - x0);
                    let mut acc = [half; 3];
                    for (p, &kw) in line[x0 * 3..(x0 + taps) * 3].chunks_exact(3).zip(k) {
                        acc[0] += p[0] as i32 * kw;
                        acc[1] += p[1] as i32 * kw;
                        acc[2] += p[2] as i32 * kw;
                    }
                    px[0] = clip8(acc[0]);
                    px[1] = clip8(acc[1]);
                    px[2] = clip8(acc[2]);
                }
            }
            (tmp, rw)
        }
        None => {
            let mut tmp = Vec::with_capacity((row1 - row0) * rw * 3);
            for y in row0..row1 {
                tmp.extend_from_slice(&src[(y * w + rx) * 3..(y * w + rx + rw) * 3]);
            }
            (tmp, rw)
        }
    };
    let stride = tw * 3;
    let Some(vc) = vert else {
        return RgbImage::from_raw(tw as u32, rh as u32, tmp).expect("buffer size");
    };
    let mut out = vec![0u8; rh * stride];
    // Row by row with a row of accumulators, so the inner loop runs along contiguous bytes.
    let mut acc = vec![0i32; stride];
    for (yy, dst) in out.chunks_exact_mut(stride).enumerate() {
        let (y0, k) = vc.of(yy);
        let taps = k.len().min(h - y0);
        acc.fill(half);
        for (i, &kw) in k[..taps].iter().enumerate() {
            if kw == 0 {
                continue;
            }
            let row = &tmp[(y0 - row0 + i) * stride..(y0 - row0 + i + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * kw;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    RgbImage::from_raw(tw as u32, rh as u32, out).expect("buffer size")
}

/// PIL's nearest resize: the source pixel under each output pixel's centre.
fn nearest(img: &RgbImage, nw: usize, nh: usize, region: Region) -> RgbImage {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let sx = w / nw as f64;
    let sy = h / nh as f64;
    RgbImage::from_fn(region.width, region.height, |x, y| {
        let (x, y) = (x + region.x, y + region.y);
        let ix = (((x as f64 + 0.5) * sx) as u32).min(img.width() - 1);
        let iy = (((y as f64 + 0.5) * sy) as u32).min(img.height() - 1);
        *img.get_pixel(ix, iy)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn a_region_is_the_crop_of_the_whole_resize() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for case in 0..60 {
            let (w, h) = (rng.gen_range(1..90), rng.gen_range(1..90));
            let img = RgbImage::from_fn(w, h, |_, _| image::Rgb([rng.gen(), rng.gen(), rng.gen()]));
            let (nw, nh) = (rng.gen_range(1..120), rng.gen_range(1..120));
            let filter = [Filter::Bilinear, Filter::Bicubic, Filter::Nearest][case % 3];
            let (rw, rh) = (rng.gen_range(1..=nw), rng.gen_range(1..=nh));
            let region = Region { x: rng.gen_range(0..=nw - rw), y: rng.gen_range(0..=nh - rh), width: rw, height: rh };
            let whole = resize(&img, nw, nh, filter);
            let want = image::imageops::crop_imm(&whole, region.x, region.y, rw, rh).to_image();
            assert!(resize_region(&img, nw, nh, filter, region) == want, "{w}x{h} -> {nw}x{nh} {filter:?}, {region:?}");
        }
    }
}
