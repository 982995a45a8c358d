//! Pictures' maths: the attention the probes capture is the attention the model used (probabilities
//! times values give the attention's output), with prefix keys accounted for; rollout equals its
//! closed form; t-SNE keeps well-separated clusters apart and the separation measure can fail.

use std::sync::{Arc, Mutex};

use rand_free::gaussian_clusters;
use tch::{Kind, Tensor};
use vpetl_core::backbones::sites::{AttentionHook, Ctx, Hook, SiteKind};
use vpetl_core::backbones::ForwardOpts;
use vpetl_core::viz::attention::{maps, rollout, AttentionProbes, Captured};
use vpetl_core::viz::tsne::{embed, nearest_neighbour_agreement, TsneOptions};
use vpetl_tests::method_harness::{build, input, TINY_SWIN, TINY_VIT};

/// Records the values and the attention output of one site (installed after the probe).
struct Witness(Arc<Mutex<(Option<Tensor>, Option<Tensor>)>>);

impl AttentionHook for Witness {
    fn extend_kv(&self, k: Tensor, v: Tensor, _ctx: &Ctx) -> (Tensor, Tensor) {
        self.0.lock().unwrap().0 = Some(v.shallow_clone());
        (k, v)
    }
    fn output(&self, _q: &Tensor, out: Tensor, _ctx: &Ctx) -> Tensor {
        self.0.lock().unwrap().1 = Some(out.shallow_clone());
        out
    }
}

fn check_probes(methods: &str, extra_keys: i64) {
    let mut b = build(TINY_VIT, methods);
    let x = input();
    let before = tch::no_grad(|| b.model.forward(&x, ForwardOpts::default()).logits);
    let probes = AttentionProbes::install(b.model.as_mut()).unwrap();
    let site = b.model.backbone().sites().iter().find(|(_, s)| s.kind == SiteKind::Attention && s.name == "blocks.1.attn").unwrap().0;
    let witness = Arc::new(Mutex::new((None, None)));
    b.model.install_hook(site, Hook::Attention(Box::new(Witness(witness.clone())))).unwrap();
    let after = tch::no_grad(|| b.model.forward(&x, ForwardOpts::default()).logits);
    assert_eq!((&before - &after).abs().max().double_value(&[]), 0.0, "probes change nothing");
    let caught = probes.take().unwrap();
    assert_eq!(caught.iter().map(|c| c.site.as_str()).collect::<Vec<_>>(), ["blocks.0.attn", "blocks.1.attn"]);
    // 32 px, patch 8: 16 patches and the class token; 4 heads.
    let tokens = 17 + if methods.contains("VPT") { 4 } else { 0 };
    assert_eq!(caught[1].probs.size(), [2, 4, tokens, tokens + extra_keys]);
    let sums = caught[1].probs.sum_dim_intlist(-1, false, Kind::Float);
    assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-5);
    let (v, out) = std::mem::take(&mut *witness.lock().unwrap());
    let recomputed = caught[1].probs.matmul(&v.unwrap());
    let diff = (recomputed - out.unwrap()).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "probabilities times values differ from the attention's output by {diff}");
    assert_eq!(caught[1].cls_to_patches().unwrap().size(), [2, 4, 4, 4]);
    let token_rows = caught[1].token_block().sum_dim_intlist(-1, false, Kind::Float);
    assert!((token_rows - 1.0).abs().max().double_value(&[]) < 1e-5);
    let m = maps(&caught, &[0, 1], Some(2), true).unwrap();
    assert_eq!(m.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["block 0, head 2", "block 1, head 2", "rollout, blocks 0-1"]);
    assert!(m.iter().all(|(_, t)| t.size() == [2, 4, 4]));
}

#[test]
fn probes_capture_the_attention_the_model_used() {
    check_probes("[]", 0);
}

#[test]
fn probes_see_prefix_keys_and_vpt_tokens() {
    check_probes("[{type: Prefix, length: 3}]", 3);
    check_probes("[{type: VPT-Deep, num_tokens: 4}]", 0);
}

#[test]
fn window_attention_is_refused_with_the_reason() {
    let mut b = build(TINY_SWIN, "[]");
    let err = AttentionProbes::install(b.model.as_mut()).err().unwrap().to_string();
    assert!(err.contains("relative position bias"), "{err}");
}

#[test]
fn rollout_of_uniform_attention_matches_the_closed_form() {
    // A = (U + I) / 2 with U uniform; A² = (3U + I) / 4, so the class token gives 3 / (4N) to each patch.
    let n = 5;
    let uniform = Tensor::full([1, 2, n, n], 1.0 / n as f64, (Kind::Float, tch::Device::Cpu));
    let block = |name: &str| Captured { site: name.into(), probs: uniform.copy(), num_prefix: 1, grid: (2, 2) };
    let map = rollout(&[block("a"), block("b")]).unwrap();
    assert_eq!(map.size(), [1, 2, 2]);
    let expected = 3.0 / (4.0 * n as f64);
    assert!((map - expected).abs().max().double_value(&[]) < 1e-6);
    // One block: (U + I) / 2 gives 1 / (2N) to each patch.
    let one = rollout(&[block("a")]).unwrap();
    assert!((one - 1.0 / (2.0 * n as f64)).abs().max().double_value(&[]) < 1e-6);
}

mod rand_free {
    /// `per` points around each of `k` centres 20 apart in `dim` dimensions, spread by a
    /// deterministic pseudo-random unit noise (an LCG: the test needs no generator crate).
    pub fn gaussian_clusters(k: usize, per: usize, dim: usize) -> (Vec<f32>, Vec<i64>) {
        let mut state: u64 = 12345;
        let mut noise = || {
            // Sum of uniforms: roughly normal, std ~1.
            (0..12)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 11) as f64 / (1u64 << 53) as f64
                })
                .sum::<f64>()
                - 6.0
        };
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for c in 0..k {
            for _ in 0..per {
                for d in 0..dim {
                    let centre = if d % k == c { 20.0 } else { 0.0 };
                    data.push((centre + noise()) as f32);
                }
                labels.push(c as i64);
            }
        }
        (data, labels)
    }
}

#[test]
fn tsne_keeps_separated_clusters_apart() {
    let (data, labels) = gaussian_clusters(3, 40, 12);
    let opts = TsneOptions { perplexity: 15.0, epochs: 500, seed: 7, ..Default::default() };
    let points = embed(&data, 12, &opts).unwrap();
    assert_eq!(points.len(), 120);
    let agreement = nearest_neighbour_agreement(&points, &labels);
    assert!(agreement >= 0.95, "1-NN label agreement {agreement}");
    // bhtsne sums its gradient on parallel threads, so a second run with the same seed is not
    // bit-identical (a CI run saw points move by 5.7): it must separate the clusters as well.
    let again = embed(&data, 12, &opts).unwrap();
    let agreement = nearest_neighbour_agreement(&again, &labels);
    assert!(agreement >= 0.95, "second run: 1-NN label agreement {agreement}");
    // The measure fails for labels unrelated to the clusters.
    let shuffled: Vec<i64> = (0..120).map(|i| (i % 3) as i64).collect();
    let chance = nearest_neighbour_agreement(&points, &shuffled);
    assert!(chance < 0.6, "unrelated labels agree {chance}");
}

#[test]
fn tsne_errors_name_the_problem() {
    let err = embed(&[1.0, 2.0, 3.0], 2, &TsneOptions::default()).unwrap_err().to_string();
    assert!(err.contains("not rows of 2"), "{err}");
    let err = embed(&[0.0, f32::NAN, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, &TsneOptions::default()).unwrap_err().to_string();
    assert!(err.contains("NaN"), "{err}");
}
