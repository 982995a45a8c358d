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

/// For each output position: the first input index and its fixed-point weights.
struct Coeffs {
    start: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero; the clamp at 0 makes that a floor here.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let mut w: Vec<f64> = (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) / filterscale)).collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        let one = (1u32 << PRECISION_BITS) as f64;
        // Rounded away from zero, as `normalize_coeffs_8bpc` does.
        weights.push(w.iter().map(|v| if *v < 0.0 { (-0.5 + v * one) as i32 } else { (0.5 + v * one) as i32 }).collect());
        start.push(xmin);
    }
    Coeffs { start, weights }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `img.resize((width, height), filter)` as PIL computes it.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nw, nh) = (width as usize, height as usize);
    if (nw, nh) == (w, h) {
        return img.clone();
    }
    if filter == Filter::Nearest {
        return nearest(img, nw, nh);
    }
    let src = img.as_raw();
    let horiz = coeffs(w, nw, filter);
    let vert = coeffs(h, nh, filter);
    // The horizontal pass only needs the rows the vertical pass reads.
    let (row0, row1) = if nh != h {
        let last = nh - 1;
        (vert.start[0], vert.start[last] + vert.weights[last].len())
    } else {
        (0, h)
    };
    let half = 1i32 << (PRECISION_BITS - 1);
    let (tmp, tw) = if nw != w {
        let mut tmp = vec![0u8; (row1 - row0) * nw * 3];
        for y in row0..row1 {
            let line = &src[y * w * 3..(y + 1) * w * 3];
            let out = &mut tmp[(y - row0) * nw * 3..(y - row0 + 1) * nw * 3];
            for xx in 0..nw {
                let (x0, k) = (horiz.start[xx], &horiz.weights[xx]);
                let mut acc = [half; 3];
                for (i, &kw) in k.iter().enumerate() {
                    let p = &line[(x0 + i) * 3..(x0 + i) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += p[c] as i32 * kw;
                    }
                }
                for c in 0..3 {
                    out[xx * 3 + c] = clip8(acc[c]);
                }
            }
        }
        (tmp, nw)
    } else {
        (src[row0 * w * 3..row1 * w * 3].to_vec(), w)
    };
    if nh == h {
        return RgbImage::from_raw(tw as u32, nh as u32, tmp).expect("buffer size");
    }
    let mut out = vec![0u8; nh * tw * 3];
    let stride = tw * 3;
    for yy in 0..nh {
        let (y0, k) = (vert.start[yy] - row0, &vert.weights[yy]);
        let dst = &mut out[yy * stride..(yy + 1) * stride];
        for (x, d) in dst.iter_mut().enumerate() {
            let mut acc = half;
            for (i, &kw) in k.iter().enumerate() {
                acc += tmp[(y0 + i) * stride + x] as i32 * kw;
            }
            *d = clip8(acc);
        }
    }
    RgbImage::from_raw(tw as u32, nh as u32, out).expect("buffer size")
}

/// PIL's nearest resize: the source pixel under each output pixel's centre.
fn nearest(img: &RgbImage, nw: usize, nh: usize) -> RgbImage {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let sx = w / nw as f64;
    let sy = h / nh as f64;
    RgbImage::from_fn(nw as u32, nh as u32, |x, y| {
        let ix = (((x as f64 + 0.5) * sx) as u32).min(img.width() - 1);
        let iy = (((y as f64 + 0.5) * sy) as u32).min(img.height() - 1);
        *img.get_pixel(ix, iy)
    })
}
