//! Colours: ten categorical colours (matplotlib's `tab10`, so classes look as they do in Python
//! plots) and the `viridis` map for heat maps.

use plotters::style::RGBColor;

const TAB10: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The `i`-th categorical colour; past ten, darker and lighter variants cycle.
pub fn category(i: usize) -> RGBColor {
    let (r, g, b) = TAB10[i % 10];
    let shade = [1.0, 0.6, 1.3][(i / 10) % 3];
    let f = |c: u8| ((c as f64 * shade).round().clamp(0.0, 255.0)) as u8;
    RGBColor(f(r), f(g), f(b))
}

/// Anchors of matplotlib's viridis at 0, 1/8, ..., 1.
const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
];

/// Viridis at `t` in [0, 1] (clamped), linearly interpolated between anchors.
pub fn viridis(t: f64) -> [u8; 3] {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let x = t * (VIRIDIS.len() - 1) as f64;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |p: u8, q: u8| (p as f64 + (q as f64 - p as f64) * f).round() as u8;
    [mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2)]
}
