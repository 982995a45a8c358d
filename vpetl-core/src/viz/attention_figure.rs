//! The attention figure: a grid of image panels (rows: an image under one model; columns: the input
//! and the maps), with a title, column titles, row labels and a colour bar.

use std::path::Path;

use anyhow::ensure;
use image::RgbImage;
use plotters::prelude::*;
use tch::Tensor;

use super::canvas::{check_size, draw_err, render_png_on, text};
use super::overlay::overlay;
use super::palette::viridis;

pub struct Panel {
    pub image: RgbImage,
    /// A map to blend over the image (none: the image alone).
    pub map: Option<Tensor>,
}

pub struct Row {
    pub label: String,
    pub panels: Vec<Panel>,
}

const TITLE_H: u32 = 40;
const COLUMN_H: u32 = 24;
const BAR_H: u32 = 44;
const PAD: u32 = 6;
const LABEL_W: u32 = 150;

/// The picture size that gives each panel a `cell` × `cell` square.
pub fn natural_size(columns: usize, rows: usize, cell: u32) -> (u32, u32) {
    let grid_w = columns as u32 * cell;
    let label_w = LABEL_W;
    (label_w + PAD + grid_w, TITLE_H + COLUMN_H + BAR_H + rows as u32 * cell)
}

/// Lays the rows out to fill `size` exactly and writes the PNG.
pub fn plot(path: &Path, size: (u32, u32), title: &str, columns: &[String], rows: &[Row], alpha: f64) -> anyhow::Result<()> {
    check_size(size)?;
    ensure!(!rows.is_empty(), "no rows to draw");
    ensure!(rows.iter().all(|r| r.panels.len() == columns.len()), "every row needs one panel per column");
    let (w, h) = size;
    // Row labels need about 130 px; small pictures give them a third.
    let label_w = LABEL_W.min(w / 3);
    let cols = columns.len() as u32;
    let n_rows = rows.len() as u32;
    let fit_w = w.saturating_sub(label_w + PAD) / cols;
    let fit_h = h.saturating_sub(TITLE_H + COLUMN_H + BAR_H) / n_rows;
    let cell = fit_w.min(fit_h);
    ensure!(cell > PAD + 8, "{w}x{h} is too small for {} rows of {cols} panels", rows.len());
    let side = cell - PAD;
    let mut base = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let x0 = label_w;
    let y0 = TITLE_H + COLUMN_H;
    for (r, row) in rows.iter().enumerate() {
        for (c, p) in row.panels.iter().enumerate() {
            let img = overlay(&p.image, p.map.as_ref(), side, alpha);
            image::imageops::replace(&mut base, &img, (x0 + c as u32 * cell) as i64, (y0 + r as u32 * cell) as i64);
        }
    }
    // Colour bar under the grid.
    let bar_y = y0 + n_rows * cell + 8;
    let bar_w = (cols * cell).saturating_sub(PAD).min(400);
    for x in 0..bar_w {
        let c = viridis(x as f64 / bar_w.max(2) as f64);
        for y in bar_y..(bar_y + 12).min(h) {
            base.put_pixel(x0 + x, y, image::Rgb(c));
        }
    }
    render_png_on(path, base, |root| {
        root.draw(&Text::new(title.to_string(), (PAD as i32 * 2, 10), text(20.0))).map_err(draw_err)?;
        for (c, name) in columns.iter().enumerate() {
            let x = (x0 + c as u32 * cell) as i32;
            root.draw(&Text::new(name.clone(), (x, (TITLE_H + 4) as i32), text(13.0))).map_err(draw_err)?;
        }
        for (r, row) in rows.iter().enumerate() {
            let y = (y0 + r as u32 * cell + side / 2) as i32 - 14;
            for (i, line) in row.label.lines().enumerate() {
                root.draw(&Text::new(line.to_string(), (PAD as i32, y + i as i32 * 16), text(13.0))).map_err(draw_err)?;
            }
        }
        let ty = (bar_y + 14) as i32;
        root.draw(&Text::new("low", (x0 as i32, ty), text(12.0))).map_err(draw_err)?;
        root.draw(&Text::new(
            "high (each map scaled to its own range)",
            ((x0 + bar_w) as i32 - 230, ty),
            text(12.0),
        ))
        .map_err(draw_err)?;
        Ok(())
    })
}
