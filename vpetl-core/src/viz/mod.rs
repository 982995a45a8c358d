//! Pictures: training curves, result plots, t-SNE scatters and attention maps, rendered to PNG
//! without system fonts (DejaVu Sans is embedded, [`font`]).
//!
//! Task-agnostic: attention maps read a backbone's attention sites through hooks
//! ([`attention`]), curves read `vis_data/scalars.json`, result plots read `results.json`.

pub mod attention;
pub mod attention_figure;
pub mod canvas;
pub mod curves;
pub mod font;
pub mod overlay;
pub mod palette;
pub mod results_plot;
pub mod samples;
pub mod scatter;
pub mod tsne;
