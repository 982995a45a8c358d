//! Pictures' maths: the attention the probes capture is the attention the model used (probabilities
//! times values give the attention's output), with prefix keys accounted for, for ViT and for Swin's
//! window attention (relative position bias and shift mask included); Swin's window positions undo
//! the shift and padding; rollout equals its closed form; t-SNE keeps well-separated clusters apart
//! and the separation measure can fail.

use std::sync::{Arc, Mutex};

use rand_free::gaussian_clusters;
use tch::{Kind, Tensor};
use vpetl_core::backbones::sites::{AttentionHook, AttentionLayout, Ctx, Hook, NormHook};
use vpetl_core::backbones::ForwardOpts;
use vpetl_core::viz::attention::{maps, rollout, AttentionProbes, Captured};
use vpetl_core::viz::tsne::{embed, nearest_neighbour_agreement, TsneOptions};
use vpetl_tests::method_harness::{build, input, TINY_SWIN, TINY_VIT};

/// What one attention site computed from (installed after the probe).
#[derive(Default)]
struct Seen {
    q: Option<Tensor>,
    k: Option<Tensor>,
    v: Option<Tensor>,
    out: Option<Tensor>,
    windows: Option<Tensor>,
}

/// Records the queries, keys, values, window positions and attention output of one site.
struct Witness(Arc<Mutex<Seen>>);

impl AttentionHook for Witness {
    fn extend_kv(&self, k: Tensor, v: Tensor, _ctx: &Ctx) -> (Tensor, Tensor) {
        let mut seen = self.0.lock().unwrap();
        seen.k = Some(k.shallow_clone());
        seen.v = Some(v.shallow_clone());
        (k, v)
    }
    fn layout(&self, layout: &AttentionLayout, _ctx: &Ctx) {
        self.0.lock().unwrap().windows = layout.windows.map(Tensor::shallow_clone);
    }
    fn output(&self, q: &Tensor, out: Tensor, _ctx: &Ctx) -> Tensor {
        let mut seen = self.0.lock().unwrap();
        seen.q = Some(q.shallow_clone());
        seen.out = Some(out.shallow_clone());
        out
    }
}

fn witness(b: &mut vpetl_tests::method_harness::Built, site: &str) -> Arc<Mutex<Seen>> {
    let id = b.model.backbone().sites().find(site).unwrap_or_else(|| panic!("no site {site}"));
    let seen = Arc::new(Mutex::new(Seen::default()));
    b.model.install_hook(id, Hook::Attention(Box::new(Witness(seen.clone())))).unwrap();
    seen
}

fn max_abs(t: Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

fn check_probes(methods: &str, extra_keys: i64) {
    let mut b = build(TINY_VIT, methods);
    let x = input();
    let before = tch::no_grad(|| b.model.forward(&x, ForwardOpts::default()).logits);
    let probes = AttentionProbes::install(b.model.as_mut()).unwrap();
    let seen = witness(&mut b, "blocks.1.attn");
    let after = tch::no_grad(|| b.model.forward(&x, ForwardOpts::default()).logits);
    // Hooked, ViT's attention takes the ATen path; unhooked, our kernel from the fused projection
    // (`layers::self_attention`): the same values to rounding.
    let moved = (&before - &after).abs().max().double_value(&[]);
    assert!(moved < 1e-6, "probes change nothing but rounding, got {moved:e}");
    let caught = probes.take().unwrap();
    assert_eq!(caught.iter().map(|c| c.site.as_str()).collect::<Vec<_>>(), ["blocks.0.attn", "blocks.1.attn"]);
    // 32 px, patch 8: 16 patches and the class token; 4 heads.
    let tokens = 17 + if methods.contains("VPT") { 4 } else { 0 };
    assert_eq!(caught[1].probs.size(), [2, 4, tokens, tokens + extra_keys]);
    let sums = caught[1].probs.sum_dim_intlist(-1, false, Kind::Float);
    assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-5);
    let Seen { v, out, windows, .. } = std::mem::take(&mut *seen.lock().unwrap());
    assert!(windows.is_none() && caught[1].windows.is_none(), "ViT sends no layout");
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

/// Swin with `methods`: every window-attention site's probabilities times its values give the
/// attention's output (so the relative position bias and the shift mask are in them), which plain
/// `softmax(q kᵀ / √d)` does not; rows sum to one; maps come out on each stage's grid.
fn check_window_probes(methods: &str, extra_keys: i64) {
    let mut b = build(TINY_SWIN, methods);
    // A bias of the size trained tables have (initialised ones are ~0.02), so that leaving it out
    // shows in the output.
    tch::no_grad(|| {
        for (name, mut var) in b.vs.variables() {
            if name.ends_with("relative_position_bias_table") {
                var.copy_(&Tensor::randn(var.size(), (Kind::Float, tch::Device::Cpu)));
            }
        }
    });
    let x = input();
    let before = tch::no_grad(|| b.model.forward(&x, ForwardOpts::default()).logits);
    let probes = AttentionProbes::install(b.model.as_mut()).unwrap();
    let names = ["layers.0.blocks.0.attn", "layers.0.blocks.1.attn", "layers.1.blocks.0.attn", "layers.1.blocks.1.attn"];
    assert_eq!(probes.site_names(), names);
    assert_eq!(probes.stages(), Some(vec![vec![0, 1], vec![2, 3]]));
    let seen: Vec<_> = names.iter().map(|n| witness(&mut b, n)).collect();
    let after = tch::no_grad(|| b.model.forward(&x, ForwardOpts::default()).logits);
    assert_eq!(max_abs(&before - &after), 0.0, "probes change nothing");
    let caught = probes.take().unwrap();
    // 32 px, patch 4: an 8x8 map in windows of 4x4 (4 windows, 2 heads; block 1 shifted by 2),
    // then 4x4 in one window (4 heads; the window fills the map, so no shift).
    let shapes = [[8, 2, 16, 16], [8, 2, 16, 16], [2, 4, 16, 16], [2, 4, 16, 16]];
    for ((c, seen), shape) in caught.iter().zip(&seen).zip(shapes) {
        let mut shape = shape;
        shape[3] += extra_keys;
        assert_eq!(c.probs.size(), shape, "{}", c.site);
        let sums = c.probs.sum_dim_intlist(-1, false, Kind::Float);
        assert!(max_abs(sums - 1.0) < 1e-5, "{}: rows sum to one", c.site);
        let Seen { q, k, v, out, windows } = std::mem::take(&mut *seen.lock().unwrap());
        let (q, k, v, out) = (q.unwrap(), k.unwrap(), v.unwrap(), out.unwrap());
        assert!(windows.unwrap().equal(c.windows.as_ref().unwrap()));
        let diff = max_abs(c.probs.matmul(&v) - &out);
        assert!(diff < 1e-5, "{}: probabilities times values differ from the attention's output by {diff}", c.site);
        // Without the bias (and mask) the output is not reproduced: the check can fail.
        let plain = (q.matmul(&k.transpose(-2, -1)) * (q.size()[3] as f64).powf(-0.5)).softmax(-1, Kind::Float);
        let off = max_abs(plain.matmul(&v) - &out);
        assert!(off > 1e-3, "{}: plain softmax(q k^T) reproduces the output too ({off})", c.site);
    }
    let m = maps(&caught, &[1, 3], Some(1), false).unwrap();
    assert_eq!(m.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["stage 0, block 1, head 1", "stage 1, block 1, head 1"]);
    assert_eq!(m[0].1.size(), [2, 8, 8]);
    assert_eq!(m[1].1.size(), [2, 4, 4]);
    // Received attention averages 1/N over a window's tokens (no padding here, N = 16) when no
    // prefix keys take a share.
    if extra_keys == 0 {
        for c in &caught {
            let mean = c.received_in_window().unwrap().mean(Kind::Float).double_value(&[]);
            assert!((mean - 1.0 / 16.0).abs() < 1e-6, "{}: mean received attention {mean}", c.site);
        }
    }
    let err = maps(&caught, &[1], None, true).unwrap_err().to_string();
    assert!(err.contains("no class token"), "{err}");
}

#[test]
fn window_probes_capture_the_attention_the_model_used() {
    check_window_probes("[]", 0);
    check_window_probes("[{type: Prefix, length: 3}]", 3);
}

/// Records a norm site's output.
struct NormTap(Arc<Mutex<Option<Tensor>>>);

impl NormHook for NormTap {
    fn forward(&self, y: Tensor, _ctx: &Ctx) -> Tensor {
        *self.0.lock().unwrap() = Some(y.shallow_clone());
        y
    }
}

/// The positions a Swin block reports put each window token where it came from: the values in
/// the windows equal the values computed from the block's normalised input map at those grid
/// cells, for unshifted and shifted blocks, with padding (a 40 px input: a 10x10 map in 4x4
/// windows), in both window modes.
#[test]
fn window_positions_undo_the_shift_and_padding() {
    for mode in ["classification", "detection"] {
        let backbone = TINY_SWIN.replace('}', &format!(", window_mode: {mode}}}"));
        let mut b = build(&backbone, "[]");
        let block = |j: usize| format!("layers.0.blocks.{j}");
        let mut taps = Vec::new();
        for j in 0..2 {
            let seen = witness(&mut b, &format!("{}.attn", block(j)));
            let id = b.model.backbone().sites().find(&format!("{}.norm1", block(j))).unwrap();
            let tap = Arc::new(Mutex::new(None));
            b.model.install_hook(id, Hook::Norm(Box::new(NormTap(tap.clone())))).unwrap();
            taps.push((seen, tap));
        }
        let probes = AttentionProbes::install(b.model.as_mut()).unwrap();
        let x = Tensor::randn([2, 3, 40, 40], (Kind::Float, tch::Device::Cpu));
        tch::no_grad(|| b.model.forward(&x, ForwardOpts::default()));
        let caught = probes.take().unwrap();
        for (j, (seen, tap)) in taps.iter().enumerate() {
            let sites = b.model.backbone().sites();
            let qkv = sites.get(sites.find(&format!("{}.attn.qkv", block(j))).unwrap());
            let (w, bias) = (qkv.weight.as_ref().unwrap(), qkv.bias.as_ref().unwrap());
            let c = w.size()[1];
            // Values on the grid: (B, H*W, heads, head_dim).
            let map = tap.lock().unwrap().take().unwrap();
            let (bsz, h, wd, _) = map.size4().unwrap();
            assert_eq!((h, wd), (10, 10));
            let (wv, bv) = (w.narrow(0, 2 * c, c), bias.narrow(0, 2 * c, c));
            let v_grid = map.view([bsz, h * wd, c]).linear(&wv, Some(bv)).view([bsz, h * wd, 2, c / 2]);
            let Seen { v, windows, .. } = std::mem::take(&mut *seen.lock().unwrap());
            let (v, windows) = (v.unwrap(), windows.unwrap());
            let (nw, n) = windows.size2().unwrap();
            assert_eq!((nw, n), (9, 16), "{mode}: a 12x12 padded map in 4x4 windows");
            let valid = windows.ge(0);
            assert_eq!(valid.sum(Kind::Int64).int64_value(&[]), 100, "{mode}: each cell once");
            // (B, nW, N, heads, head_dim), gathered from the grid at the reported positions.
            let v_windows = v.reshape([bsz, nw, 2, n, c / 2]).permute([0, 1, 3, 2, 4]);
            let index = windows.clamp_min(0).view([-1]);
            let gathered = v_grid.index_select(1, &index).view([bsz, nw, n, 2, c / 2]);
            let keep = valid.view([1, nw, n, 1, 1]).to_kind(Kind::Float);
            let diff = max_abs((&v_windows - &gathered) * &keep);
            assert!(diff < 1e-5, "{mode}, block {j}: windows and grid differ by {diff}");
            if j == 1 {
                // The shift moved tokens between windows: the identity layout would be wrong.
                let unshifted = caught[0].windows.as_ref().unwrap();
                assert!(!unshifted.equal(&windows), "the shifted block reports the unshifted layout");
            }
        }
        // The received-attention maps are on the 10x10 grid.
        assert_eq!(caught[1].received_in_window().unwrap().size(), [2, 2, 10, 10]);
    }
}

/// The map puts a token's received attention where the token is: with every query of a shifted
/// block attending only to one token, the map of that block peaks at that token's cell alone.
#[test]
fn window_map_lines_up_with_the_image() {
    let mut b = build(TINY_SWIN, "[]");
    let probes = AttentionProbes::install(b.model.as_mut()).unwrap();
    tch::no_grad(|| b.model.forward(&input(), ForwardOpts::default()));
    let mut caught = probes.take().unwrap();
    let shifted = &mut caught[1];
    let windows = shifted.windows.as_ref().unwrap().shallow_clone();
    let (nw, n) = windows.size2().unwrap();
    // Cell (row 7, column 1) of the 8x8 map: after the shift by 2 its window also holds cells of
    // rows 0-1 and columns 6-7.
    let target = 7 * 8 + 1;
    let hit = windows.eq(target).nonzero();
    let (w, t) = (hit.int64_value(&[0, 0]), hit.int64_value(&[0, 1]));
    let probs = Tensor::full([2 * nw, 2, n, n], 1.0 / n as f64, (Kind::Float, tch::Device::Cpu));
    for img in 0..2 {
        let mut row = probs.get(img * nw + w);
        let _ = row.fill_(0.0);
        let _ = row.narrow(2, t, 1).fill_(1.0);
    }
    shifted.probs = probs;
    let map = shifted.received_in_window().unwrap();
    assert_eq!(map.size(), [2, 2, 8, 8]);
    let flat = map.view([2, 2, 64]);
    assert!(flat.argmax(-1, false).eq(target).all().int64_value(&[]) == 1, "the peak is at the target cell");
    // The target's window gives it everything (1.0); its other cells get nothing; the rest 1/16.
    assert!((flat.double_value(&[0, 0, target]) - 1.0).abs() < 1e-6);
    let in_window = windows.get(w);
    for cell in Vec::<i64>::try_from(&in_window).unwrap() {
        if cell != target {
            assert_eq!(flat.double_value(&[1, 1, cell]), 0.0, "cell {cell} of the target's window");
        }
    }
    assert!((flat.double_value(&[0, 1, 0 * 8 + 3]) - 1.0 / 16.0).abs() < 1e-6);
}

#[test]
fn rollout_of_uniform_attention_matches_the_closed_form() {
    // A = (U + I) / 2 with U uniform; A² = (3U + I) / 4, so the class token gives 3 / (4N) to each patch.
    let n = 5;
    let uniform = Tensor::full([1, 2, n, n], 1.0 / n as f64, (Kind::Float, tch::Device::Cpu));
    let block = |name: &str| Captured { site: name.into(), probs: uniform.copy(), num_prefix: 1, grid: (2, 2), windows: None };
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
