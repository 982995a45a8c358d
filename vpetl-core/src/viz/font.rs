//! The font every picture uses: DejaVu Sans (Bitstream Vera licence, `assets/fonts/`), embedded in
//! the binary so that a machine without fonts still labels its plots.

use std::sync::Once;

use plotters::style::FontStyle;

static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// The family name plots ask for.
pub const FAMILY: &str = "sans-serif";

/// Registers the embedded font under every family plotters asks for (once per process).
pub fn ensure() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for family in [FAMILY, "serif", "monospace"] {
            plotters::style::register_font(family, FontStyle::Normal, FONT).unwrap_or_else(|_| panic!("the embedded DejaVu Sans is a valid font"));
        }
    });
}
