//! A 2-D scatter coloured by class with a legend (the t-SNE picture).

use std::path::Path;

use anyhow::ensure;
use plotters::prelude::*;

use super::canvas::{draw_err, draw_legend, render_png, text};
use super::palette::category;

/// Plots `points` coloured by `labels`; `names[c]` names class `c` in the legend (its number when
/// absent).
pub fn plot(path: &Path, size: (u32, u32), points: &[[f32; 2]], labels: &[i64], names: &[String], title: &str, axes: (&str, &str)) -> anyhow::Result<()> {
    ensure!(points.len() == labels.len(), "{} points but {} labels", points.len(), labels.len());
    ensure!(!points.is_empty(), "no points to plot");
    let (x0, x1) = super::curves::bounds(points.iter().map(|p| p[0] as f64));
    let (y0, y1) = super::curves::bounds(points.iter().map(|p| p[1] as f64));
    let classes: Vec<i64> = labels.iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    render_png(path, size, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, text(20.0))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc(axes.0)
            .y_desc(axes.1)
            .label_style(text(12.0))
            .axis_desc_style(text(14.0))
            .draw()
            .map_err(draw_err)?;
        for (i, &c) in classes.iter().enumerate() {
            let color = category(i);
            let pts: Vec<(f64, f64)> =
                points.iter().zip(labels).filter(|(_, &l)| l == c).map(|(p, _)| (p[0] as f64, p[1] as f64)).collect();
            let name = names.get(c as usize).cloned().unwrap_or_else(|| c.to_string());
            chart
                .draw_series(pts.into_iter().map(move |p| Circle::new(p, 3, color.filled())))
                .map_err(draw_err)?
                .label(format!("class {name}"))
                .legend(move |(x, y)| Circle::new((x + 6, y), 4, color.filled()));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })
}
