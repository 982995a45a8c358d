//! Training curves from `vis_data/scalars.json` (one JSON object per line, mmengine's shape): any
//! logged key (loss, lr, memory, an evaluation metric such as `accuracy/top1`) against the step, one
//! panel per key, several runs overlaid — what mmengine's `analyze_logs plot_curve` draws.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use plotters::prelude::*;

use super::canvas::{draw_err, draw_legend, render_png, text, Area};
use super::palette::category;

/// One run's logged lines.
pub struct Run {
    pub label: String,
    pub lines: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Keys that describe the step rather than measure it.
const BOOKKEEPING: [&str; 3] = ["step", "epoch", "iter"];

impl Run {
    /// Reads a `scalars.json`; a line that is not a JSON object is an error naming file and line.
    pub fn read(path: &Path, label: String) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}: not a JSON line", path.display(), i + 1))?;
            match v {
                serde_json::Value::Object(m) if m.get("step").is_some_and(|s| s.is_number()) => lines.push(m),
                _ => bail!("{}:{}: expected an object with a numeric `step`", path.display(), i + 1),
            }
        }
        if lines.is_empty() {
            bail!("{}: no scalars logged", path.display());
        }
        Ok(Run { label, lines })
    }

    /// `(step, value)` of every line that logged `key`.
    pub fn series(&self, key: &str) -> Vec<(f64, f64)> {
        self.lines
            .iter()
            .filter_map(|m| Some((m.get("step")?.as_f64()?, m.get(key)?.as_f64()?)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    }

    /// Numeric keys this run logged, besides the step counters, in first-seen order.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for m in &self.lines {
            for (k, v) in m {
                if v.is_number() && !BOOKKEEPING.contains(&k.as_str()) && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        keys
    }
}

/// `scalars.json` for a path: the file itself, `DIR/vis_data/scalars.json`, or the newest
/// timestamped run under a work dir (`work_dir/<timestamp>/vis_data/scalars.json`).
pub fn find_scalars(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let direct = path.join("vis_data").join("scalars.json");
    if direct.is_file() {
        return Ok(direct);
    }
    let mut runs: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{}: neither a scalars.json nor a run folder", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path().join("vis_data").join("scalars.json")))
        .filter(|p| p.is_file())
        .collect();
    runs.sort();
    runs.pop().with_context(|| format!("{}: no vis_data/scalars.json in it or in its run folders", path.display()))
}

/// The keys plotted when none are asked for: loss, lr, the evaluation metrics, memory.
pub fn default_keys(runs: &[Run]) -> Vec<String> {
    let all: Vec<String> = runs.iter().flat_map(Run::keys).collect();
    let mut keys: Vec<String> = ["loss", "lr"].iter().map(|k| k.to_string()).filter(|k| all.contains(k)).collect();
    for k in &all {
        if k.contains('/') && !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    if all.iter().any(|k| k == "memory") {
        keys.push("memory".into());
    }
    keys
}

fn axis_name(key: &str) -> String {
    match key {
        "lr" => "learning rate".into(),
        "memory" => "memory (MB)".into(),
        "time" | "data_time" => format!("{key} (s)"),
        k => k.to_string(),
    }
}

/// Plots `keys` (one panel each, stacked) for every run.
pub fn plot(path: &Path, size: (u32, u32), runs: &[Run], keys: &[String], title: &str) -> anyhow::Result<()> {
    if keys.is_empty() {
        bail!("no keys to plot");
    }
    for k in keys {
        if runs.iter().all(|r| r.series(k).is_empty()) {
            let offered: Vec<String> = runs.iter().flat_map(Run::keys).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            bail!("no run logged `{k}` (logged keys: {})", offered.join(", "));
        }
    }
    render_png(path, size, |root| {
        let body = root.titled(title, text(22.0)).map_err(draw_err)?;
        let panels = body.split_evenly((keys.len(), 1));
        for (panel, key) in panels.iter().zip(keys) {
            panel_plot(panel, runs, key)?;
        }
        Ok(())
    })
}

fn panel_plot(area: &Area, runs: &[Run], key: &str) -> anyhow::Result<()> {
    let all: Vec<(f64, f64)> = runs.iter().flat_map(|r| r.series(key)).collect();
    let (x0, x1) = bounds(all.iter().map(|p| p.0));
    let (y0, y1) = bounds(all.iter().map(|p| p.1));
    // Evaluation lines carry no `iter`: their `step` is the epoch (mmengine's convention).
    let per_epoch = runs.iter().flat_map(|r| &r.lines).filter(|m| m.contains_key(key)).all(|m| !m.contains_key("iter"));
    let x_name = if per_epoch { "epoch" } else { "step" };
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{key} over training {x_name}s"), text(16.0))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(x_name)
        .y_desc(axis_name(key))
        .x_label_formatter(&|v| format_value(*v))
        .label_style(text(12.0))
        .axis_desc_style(text(14.0))
        .y_label_formatter(&|v| format_value(*v))
        .draw()
        .map_err(draw_err)?;
    for (i, run) in runs.iter().enumerate() {
        let s = run.series(key);
        if s.is_empty() {
            continue;
        }
        let color = category(i);
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(s.clone(), style))
            .map_err(draw_err)?
            .label(run.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        // Evaluation keys are logged a few times only: mark the points.
        if s.len() <= 30 {
            chart.draw_series(s.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(draw_err)?;
        }
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

/// A padded range over the values (a flat series gets a visible band).
pub(crate) fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.05 };
    (lo - pad, hi + pad)
}

/// Short tick labels for values from 1e-5 (learning rates) to thousands (memory).
pub(crate) fn format_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a < 1.0 {
        format!("{v:.4}").trim_end_matches('0').to_string()
    } else {
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}
