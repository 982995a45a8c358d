//! Result plots from `results.json` files: the performance-parameter trade-off (mean metric of a
//! method against its trainable parameters, log scale, as the V-PETL paper's PPT figure) beside the
//! per-dataset metric as grouped bars. `tools/visualize results` and `tools/report --plot` draw it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::ensure;
use plotters::prelude::*;

use super::canvas::{draw_err, draw_legend, render_png, text, Area};
use super::palette::category;
use crate::engine::results::Results;

/// One method (on one backbone) across the datasets it was run on.
pub struct Entry {
    pub label: String,
    /// Trainable parameters, head included (never zero, so a log axis shows linear probing too).
    pub trainable: i64,
    pub per_dataset: BTreeMap<String, f64>,
}

impl Entry {
    pub fn mean(&self) -> f64 {
        self.per_dataset.values().sum::<f64>() / self.per_dataset.len() as f64
    }
}

/// Groups results by method and backbone (labelled `method` or `method (backbone)` when several
/// backbones appear); the parameter count of a group is its largest (heads differ per dataset).
pub fn entries(results: &[Results]) -> Vec<Entry> {
    let backbones: BTreeSet<&str> = results.iter().map(|r| r.backbone.as_str()).collect();
    let mut groups: BTreeMap<(String, String), Entry> = BTreeMap::new();
    for r in results {
        let label = if backbones.len() > 1 { format!("{} ({})", r.method, r.backbone) } else { r.method.clone() };
        let e = groups
            .entry((r.method.clone(), r.backbone.clone()))
            .or_insert_with(|| Entry { label, trainable: 0, per_dataset: BTreeMap::new() });
        e.trainable = e.trainable.max(r.params.trainable);
        e.per_dataset.insert(r.dataset.clone(), r.metric.value);
    }
    groups.into_values().collect()
}

/// Draws the trade-off (left) and the per-dataset bars (right).
pub fn plot(path: &Path, size: (u32, u32), results: &[Results], title: &str) -> anyhow::Result<()> {
    ensure!(!results.is_empty(), "no results to plot");
    let entries = entries(results);
    let metric = results[0].metric.name.clone();
    render_png(path, size, |root| {
        let body = root.titled(title, text(22.0)).map_err(draw_err)?;
        let (left, right) = body.split_horizontally(body.dim_in_pixel().0 / 2);
        tradeoff(&left, &entries, &metric)?;
        bars(&right, &entries, &metric)
    })
}

fn tradeoff(area: &Area, entries: &[Entry], metric: &str) -> anyhow::Result<()> {
    let params: Vec<f64> = entries.iter().map(|e| e.trainable.max(1) as f64).collect();
    let lo = params.iter().cloned().fold(f64::INFINITY, f64::min) / 2.0;
    let hi = params.iter().cloned().fold(0.0, f64::max) * 2.0;
    let (y0, y1) = super::curves::bounds(entries.iter().map(Entry::mean));
    let mut chart = ChartBuilder::on(area)
        .caption(format!("mean {metric} against trainable parameters"), text(16.0))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), y0..y1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("trainable parameters, head included (log scale)")
        .y_desc(format!("mean {metric}"))
        .label_style(text(12.0))
        .axis_desc_style(text(14.0))
        .x_label_formatter(&|v| count_label(*v))
        .draw()
        .map_err(draw_err)?;
    for (i, (e, p)) in entries.iter().zip(&params).enumerate() {
        let c = category(i);
        let point = (*p, e.mean());
        chart
            .draw_series([Circle::new(point, 6, c.filled())])
            .map_err(draw_err)?
            .label(format!("{} ({:.1})", e.label, e.mean()))
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, c.filled()));
        chart
            .draw_series([Text::new(e.label.clone(), point, text(12.0).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Left,
                plotters::style::text_anchor::VPos::Bottom,
            )))])
            .map_err(draw_err)?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

fn bars(area: &Area, entries: &[Entry], metric: &str) -> anyhow::Result<()> {
    let datasets: Vec<String> = entries.iter().flat_map(|e| e.per_dataset.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    let top = entries.iter().flat_map(|e| e.per_dataset.values().cloned()).fold(0.0, f64::max);
    let y1 = if top <= 1.0 { 1.0 } else { (top * 1.1).min(100.0).max(top) };
    let n = entries.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{metric} per dataset"), text(16.0))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..datasets.len() as f64, 0.0..y1)
        .map_err(draw_err)?;
    let names = datasets.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(datasets.len() * 2 + 1)
        .x_label_formatter(&move |x| {
            // Only the group centres are named.
            let i = x.floor();
            if (x - i - 0.5).abs() < 1e-6 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("dataset")
        .y_desc(metric)
        .label_style(text(12.0))
        .axis_desc_style(text(14.0))
        .draw()
        .map_err(draw_err)?;
    let width = 0.8 / n;
    for (i, e) in entries.iter().enumerate() {
        let c = category(i);
        let rects: Vec<Rectangle<(f64, f64)>> = datasets
            .iter()
            .enumerate()
            .filter_map(|(d, name)| {
                let v = *e.per_dataset.get(name)?;
                let x = d as f64 + 0.1 + i as f64 * width;
                Some(Rectangle::new([(x, 0.0), (x + width * 0.95, v)], c.filled()))
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(draw_err)?
            .label(e.label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

/// Tick labels of a log axis of counts: 1, 2 and 5 times a power of ten (`2K`, `5M`), others blank
/// so that the labels never run into each other.
fn count_label(v: f64) -> String {
    if v <= 0.0 {
        return String::new();
    }
    let exp = v.log10().floor();
    let mantissa = v / 10f64.powf(exp);
    if ![1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6 * m) {
        return String::new();
    }
    let (scale, unit) = match exp as i64 {
        e if e >= 9 => (1e9, "G"),
        e if e >= 6 => (1e6, "M"),
        e if e >= 3 => (1e3, "K"),
        _ => (1.0, ""),
    };
    format!("{}{unit}", (v / scale).round())
}
