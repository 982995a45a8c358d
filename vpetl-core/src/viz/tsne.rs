//! t-SNE embeddings (van der Maaten 2014, Barnes-Hut) through the `bhtsne` crate, seeded: the
//! initial embedding is drawn here from the seed (`bhtsne`'s own is unseeded), so that the same
//! features and seed give the same picture.

use anyhow::ensure;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug)]
pub struct TsneOptions {
    /// Effective number of neighbours; lowered to `(n - 1) / 3` for small sets (bhtsne's limit).
    pub perplexity: f32,
    pub epochs: usize,
    /// Barnes-Hut accuracy (0.5 is the common default; smaller is more exact and slower).
    pub theta: f32,
    pub seed: u64,
}

impl Default for TsneOptions {
    fn default() -> Self {
        TsneOptions { perplexity: 30.0, epochs: 1000, theta: 0.5, seed: 0 }
    }
}

/// Embeds `n` rows of `dim` features (row-major `features`) in 2-D.
pub fn embed(features: &[f32], dim: usize, opts: &TsneOptions) -> anyhow::Result<Vec<[f32; 2]>> {
    ensure!(dim > 0 && features.len() % dim == 0, "t-SNE: {} values are not rows of {dim} features", features.len());
    let n = features.len() / dim;
    ensure!(n >= 4, "t-SNE needs at least 4 samples, got {n}");
    ensure!(features.iter().all(|v| v.is_finite()), "t-SNE: the features contain NaN or infinite values");
    ensure!(opts.theta > 0.0, "t-SNE: theta must be positive, got {}", opts.theta);
    let max_perplexity = ((n - 1) / 3) as f32;
    let perplexity = if opts.perplexity > max_perplexity {
        tracing::warn!("t-SNE: perplexity {} is too large for {n} samples; using {max_perplexity}", opts.perplexity);
        max_perplexity
    } else {
        opts.perplexity
    };
    ensure!(perplexity >= 1.0, "t-SNE: perplexity must be at least 1, got {perplexity}");
    let rows: Vec<&[f32]> = features.chunks(dim).collect();
    // The usual initialisation, N(0, 1e-4), drawn from the seed (Box-Muller).
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let init: Vec<f32> = (0..n * 2)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.gen::<f64>().max(f64::MIN_POSITIVE), rng.gen());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * 1e-4) as f32
        })
        .collect();
    let mut tsne: bhtsne::tSNE<f32, &[f32]> = bhtsne::tSNE::new(&rows);
    tsne.perplexity(perplexity).epochs(opts.epochs).initial_embedding(init);
    tsne.barnes_hut(opts.theta, |a, b| euclidean(a, b));
    Ok(tsne.embedding().chunks(2).map(|p| [p[0], p[1]]).collect())
}

fn euclidean(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
}

/// How well an embedding keeps classes apart: the fraction of points whose nearest other point has
/// the same label (1-NN label agreement).
pub fn nearest_neighbour_agreement(points: &[[f32; 2]], labels: &[i64]) -> f64 {
    if points.len() < 2 {
        return 1.0;
    }
    let hits = (0..points.len())
        .filter(|&i| {
            let nearest = (0..points.len())
                .filter(|&j| j != i)
                .min_by(|&a, &b| dist2(points[i], points[a]).total_cmp(&dist2(points[i], points[b])))
                .expect("two points or more");
            labels[nearest] == labels[i]
        })
        .count();
    hits as f64 / points.len() as f64
}

fn dist2(a: [f32; 2], b: [f32; 2]) -> f32 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)
}

/// The embedding as CSV: `index,label,x,y`.
pub fn to_csv(points: &[[f32; 2]], labels: &[i64]) -> String {
    let mut s = String::from("index,label,x,y\n");
    for (i, (p, l)) in points.iter().zip(labels).enumerate() {
        s.push_str(&format!("{i},{l},{},{}\n", p[0], p[1]));
    }
    s
}
