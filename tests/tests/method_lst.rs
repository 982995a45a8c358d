//! LST (ViT reconstruction): the method checks on a tiny ViT, the backbone recording no autograd
//! graph, and the pruning-based side initialisation recomputed independently. The classifier reads
//! the side network, so the paper defines no no-op start.

use tch::{Kind, Tensor};
use vpetl_core::backbones::ForwardOpts;
use vpetl_tests::method_harness::*;

const LST: &str = "[{type: LST, reduction: 4}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;

/// Trainable parameters of LST on a ViT of width `c`, MLP width `hidden`, `depth` blocks, reduction
/// `r`: side blocks (qkv, proj, fc1, fc2 with biases, two norms), depth + 1 down-projections with
/// bias, the up-projection with bias, one gate per block, the side norm.
fn closed_form(c: i64, hidden: i64, depth: i64, r: i64) -> i64 {
    let (d, h) = (c / r, hidden / r);
    let block = (3 * d * d + 3 * d) + (d * d + d) + (h * d + h) + (d * h + d) + 4 * d;
    depth * block + (depth + 1) * (c * d + d) + (d * c + c) + depth + 2 * d
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, LST);
}

#[test]
fn the_backbone_records_no_graph() {
    let b = build(TINY_VIT, LST);
    let out = b.model.forward(&input(), ForwardOpts { train: true, collect_blocks: true });
    assert!(out.features.blocks.iter().all(|t| !t.requires_grad()), "a backbone activation requires grad");
    assert!(out.logits.requires_grad());
}

#[test]
fn trainable_count_is_the_closed_form() {
    assert_trainable_count(TINY_VIT, LST, closed_form(32, 128, 2, 4));
    assert_trainable_count(TINY_VIT, "[{type: LST, reduction: 2}]", closed_form(32, 128, 2, 2));
    // ViT-B/16, r = 8: V-PETL's 2.38M.
    assert_eq!(closed_form(768, 3072, 12, 8), 2_376_492);
    assert_eq!(12 * (12 * 96 * 96 + 13 * 96) + 13 * (768 * 96 + 96) + (96 * 768 + 768) + 12 + 192, 2_376_492);
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// Indices of the `k` largest of `scores`, ascending.
fn top(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out = idx[..k].to_vec();
    out.sort();
    out
}

#[test]
fn side_blocks_start_from_the_magnitude_pruned_backbone() {
    let b = build(TINY_VIT, LST);
    let v = b.vs.variables();
    let w = |n: &str| -> (Vec<f64>, usize) {
        let t = &v[n];
        (values(t), *t.size().last().unwrap() as usize)
    };
    let (c, r) = (32usize, 4usize);
    // Residual channels: squared weights reading (qkv, fc1 columns) and writing (proj, fc2 rows).
    let mut res = vec![0.0; c];
    for i in 0..2 {
        for (name, reads) in [("attn.qkv", true), ("mlp.fc1", true), ("attn.proj", false), ("mlp.fc2", false)] {
            let (m, cols) = w(&format!("backbone.blocks.{i}.{name}.weight"));
            for (k, x) in m.iter().enumerate() {
                let ch = if reads { k % cols } else { k / cols };
                res[ch] += x * x;
            }
        }
    }
    let res = top(&res, c / r);
    // The side norms are the backbone's at those channels.
    let (n1, _) = w("backbone.blocks.1.norm1.weight");
    let want: Vec<f64> = res.iter().map(|&i| n1[i]).collect();
    assert_eq!(values(&v["methods.lst.side_blocks.1.norm1.weight"]), want);
    let (fin, _) = w("backbone.norm.bias");
    assert_eq!(values(&v["methods.lst.side_norm.bias"]), res.iter().map(|&i| fin[i]).collect::<Vec<_>>());
    // Block 0's MLP: the hidden units with the largest fc1 row + fc2 column, sliced on both sides.
    let (fc1, _) = w("backbone.blocks.0.mlp.fc1.weight");
    let (fc2, hidden) = w("backbone.blocks.0.mlp.fc2.weight");
    let score: Vec<f64> = (0..hidden).map(|j| (0..c).map(|k| fc1[j * c + k].powi(2) + fc2[k * hidden + j].powi(2)).sum()).collect();
    let units = top(&score, hidden / r);
    let fc1 = &fc1;
    let want: Vec<f64> = units.iter().flat_map(|&j| res.iter().map(move |&k| fc1[j * c + k])).collect();
    assert_eq!(values(&v["methods.lst.side_blocks.0.mlp.fc1.weight"]), want);
    // Block 0's attention: per head, the dimensions with the largest q, k, v rows + proj column.
    let (qkv, _) = w("backbone.blocks.0.attn.qkv.weight");
    let (proj, _) = w("backbone.blocks.0.attn.proj.weight");
    let (qkv, proj) = (&qkv, &proj);
    let (heads, hd) = (4, 8);
    let mut inner = Vec::new();
    for h in 0..heads {
        let score: Vec<f64> = (0..hd)
            .map(|j| {
                let d = h * hd + j;
                (0..3).map(|part| (0..c).map(|k| qkv[(part * c + d) * c + k].powi(2)).sum::<f64>()).sum::<f64>()
                    + (0..c).map(|k| proj[k * c + d].powi(2)).sum::<f64>()
            })
            .collect();
        inner.extend(top(&score, hd / r).into_iter().map(|j| h * hd + j));
    }
    let rows: Vec<usize> = (0..3).flat_map(|part| inner.iter().map(move |&d| part * c + d)).collect();
    let want: Vec<f64> = rows.iter().flat_map(|&row| res.iter().map(move |&k| qkv[row * c + k])).collect();
    assert_eq!(values(&v["methods.lst.side_blocks.0.attn.qkv.weight"]), want);
    let want: Vec<f64> = res.iter().flat_map(|&row| inner.iter().map(move |&d| proj[row * c + d])).collect();
    assert_eq!(values(&v["methods.lst.side_blocks.0.attn.proj.weight"]), want);
    // Gates start at zero (g = 1/2).
    assert_eq!(values(&v["methods.lst.blocks.0.out.gate"]), [0.0]);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, LST, "lst", "{}");
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, "[{type: LST, reduction: 2, gate_t: 0.5, pruned_init: false}]", "lst", r#"{"gate_t": 0.5}"#);
}

#[test]
fn is_not_mergeable() {
    let b = build(TINY_VIT, LST);
    let err = b.model.merged_backbone(&b.vs).err().expect("LST cannot merge").to_string();
    assert!(err.contains("cannot be merged"), "{err}");
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_VIT, "[{type: LST, reduction: 0}]");
    assert!(err.contains("LST: reduction must be at least 1, got 0"), "{err}");
    let err = build_error(TINY_VIT, "[{type: LST, reduction: 3}]");
    assert!(err.contains("LST: reduction 3 must divide the head width 8"), "{err}");
    let err = build_error(TINY_VIT, "[{type: LST, gate_t: 0}]");
    assert!(err.contains("LST: gate_t must be positive"), "{err}");
    let err = build_error(TINY_SWIN, LST);
    assert!(err.contains("LST: needs a plain ViT's per-block tokens sites"), "{err}");
}
