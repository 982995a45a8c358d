//! PNG output: plotters draws into an RGB buffer (its bitmap backend), the `image` crate encodes it.

use std::path::Path;

use anyhow::{ensure, Context};
use plotters::coord::Shift;
use plotters::prelude::*;

pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Smallest picture side accepted: below it no axis and title fit.
pub const MIN_SIDE: u32 = 64;

/// `WxH` as users write it (`1200x800`).
pub fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    let (w, h) = s.split_once(['x', 'X']).with_context(|| format!("size `{s}`: expected WIDTHxHEIGHT, e.g. 1200x800"))?;
    let w: u32 = w.trim().parse().with_context(|| format!("size `{s}`: width `{w}` is not a whole number"))?;
    let h: u32 = h.trim().parse().with_context(|| format!("size `{s}`: height `{h}` is not a whole number"))?;
    check_size((w, h))?;
    Ok((w, h))
}

pub fn check_size((w, h): (u32, u32)) -> anyhow::Result<()> {
    ensure!(w >= MIN_SIDE && h >= MIN_SIDE, "picture size {w}x{h} is too small (each side at least {MIN_SIDE} px)");
    ensure!(w <= 16384 && h <= 16384, "picture size {w}x{h} is too large (each side at most 16384 px)");
    Ok(())
}

/// Draws on a white picture of `size` and writes it as a PNG.
pub fn render_png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> anyhow::Result<()>) -> anyhow::Result<()> {
    check_size(size)?;
    let base = image::RgbImage::from_pixel(size.0, size.1, image::Rgb([255, 255, 255]));
    render_png_on(path, base, draw)
}

/// Draws over `base` (pixels composed beforehand, e.g. image panels) and writes it as a PNG.
pub fn render_png_on(path: &Path, base: image::RgbImage, draw: impl FnOnce(&Area) -> anyhow::Result<()>) -> anyhow::Result<()> {
    super::font::ensure();
    let (w, h) = base.dimensions();
    let mut buf = base.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("the buffer keeps its size");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    img.save_with_format(path, image::ImageFormat::Png).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// plotters' errors carry the backend's error type; this flattens them for `?`.
pub fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing failed: {e}")
}

/// The series legend every chart draws: the embedded font on a translucent white box with a black
/// border, at `position`.
pub fn draw_legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .label_font(text(12.0))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(draw_err)
}

/// A text style of the embedded font.
pub fn text(size: f64) -> TextStyle<'static> {
    (super::font::FAMILY, size).into_font().color(&BLACK)
}
