//! SSF: the method checks on a tiny ViT and a tiny Swin, the paper's count on ViT-B/16, and its
//! error cases.

use vpetl_tests::method_harness::*;

const SSF: &str = "[{type: SSF}]";
/// The identity start (SSF's own init, N(1, .02) / N(0, .02), is not one).
const SSF_IDENTITY: &str = "[{type: SSF, init_std: 0.0}]";
const VIT_JSON: &str = r#"{"type": "ViT", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}"#;
const SWIN_JSON: &str = r#"{"type": "Swin", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}"#;

/// A scale and a shift of width `c`.
fn pair(c: i64) -> i64 {
    2 * c
}

/// Per block: norm1 (C), qkv (3C), proj (C), norm2 (C), fc1 (4C), fc2 (C).
fn block(c: i64) -> i64 {
    pair(c) + pair(3 * c) + pair(c) + pair(c) + pair(4 * c) + pair(c)
}

#[test]
fn starts_as_the_frozen_backbone_with_a_zero_init_std() {
    // The paper defines no no-op start (scale ~ N(1, .02), shift ~ N(0, .02)); with init_std 0 the
    // method is exactly the identity.
    assert_noop_at_init(TINY_VIT, SSF_IDENTITY);
    assert_noop_at_init(TINY_SWIN, SSF_IDENTITY);
    let b = build(TINY_VIT, SSF);
    let vars = b.vs.variables();
    let scale = &vars["methods.ssf.blocks.0.attn.qkv.scale"];
    let shift = &vars["methods.ssf.blocks.0.attn.qkv.shift"];
    assert_eq!(scale.size(), vec![96]);
    let mean = scale.mean(tch::Kind::Float).double_value(&[]);
    assert!((mean - 1.0).abs() < 0.01 && shift.abs().max().double_value(&[]) > 0.0, "scale mean {mean}");
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    assert_gradients_on_trainable_only(TINY_VIT, SSF);
    assert_gradients_on_trainable_only(TINY_SWIN, SSF);
}

#[test]
fn trainable_count_is_the_closed_form() {
    // ViT: the patch projection (C) and the final norm (C) besides the blocks.
    assert_trainable_count(TINY_VIT, SSF, 2 * block(32) + pair(32) + pair(32));
    // Swin: patch projection and its norm (C0), blocks at widths 16 and 32, the patch-merging norm
    // (4 x 16), the final norm (32).
    assert_trainable_count(TINY_SWIN, SSF, pair(16) + pair(16) + 2 * block(16) + pair(4 * 16) + 2 * block(32) + pair(32));
}

#[test]
fn the_papers_count_on_vit_b16_and_swin_b() {
    // 12 blocks of width 768, patch projection and final norm: 205,824 (V-PETL VTAB 0.21M).
    assert_eq!(12 * block(768) + pair(768) + pair(768), 205_824);
    assert_trainable_count("{type: ViT}", SSF, 205_824);
    // Swin-B (depths 2, 2, 18, 2 at widths 128 << i): blocks, patch projection and norm, the three
    // patch-merging norms (4C), the final norm: 274,432.
    let blocks = 2 * block(128) + 2 * block(256) + 18 * block(512) + 2 * block(1024);
    let swin_b = blocks + 2 * pair(128) + pair(4 * 128) + pair(4 * 256) + pair(4 * 512) + pair(1024);
    assert_eq!(swin_b, 274_432);
    assert_trainable_count("{type: Swin}", SSF, swin_b);
}

#[test]
fn merged_equals_unmerged() {
    assert_merge_matches(TINY_VIT, SSF);
    assert_merge_matches(TINY_SWIN, SSF);
}

#[test]
fn matches_the_plain_pytorch_reference() {
    assert_matches_pytorch_reference(VIT_JSON, TINY_VIT, SSF, "ssf", "{}");
    assert_matches_pytorch_reference(SWIN_JSON, TINY_SWIN, SSF, "ssf", "{}");
}

#[test]
fn sites_are_the_papers() {
    let b = build(TINY_SWIN, SSF);
    let mut names: Vec<String> = b
        .vs
        .variables()
        .into_keys()
        .filter_map(|k| k.strip_prefix("methods.ssf.").and_then(|k| k.strip_suffix(".scale")).map(String::from))
        .collect();
    names.sort();
    let mut expected: Vec<String> = vec!["patch_embed.proj".into(), "patch_embed.norm".into(), "layers.0.downsample.norm".into(), "norm".into()];
    for stage in 0..2 {
        for blk in 0..2 {
            for op in ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"] {
                expected.push(format!("layers.{stage}.blocks.{blk}.{op}"));
            }
        }
    }
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn a_bias_free_layer_cannot_be_merged() {
    // Swin's patch-merging reduction has no bias to absorb the shift.
    let b = build(TINY_SWIN, "[{type: SSF, target: '.*downsample\\.reduction'}]");
    let err = b.model.merged_backbone(&b.vs).err().expect("no merge").to_string();
    assert!(err.contains("method `ssf` cannot be merged"), "{err}");
    // Scaling alone still trains where it should.
    assert_gradients_on_trainable_only(TINY_SWIN, "[{type: SSF, target: '.*downsample\\.reduction'}]");
}

#[test]
fn bad_options_are_errors() {
    let err = build_error(TINY_VIT, "[{type: SSF, init_std: -0.1}]");
    assert!(err.contains("SSF: init_std must be a finite number >= 0, got -0.1"), "{err}");
    let err = build_error(TINY_VIT, "[{type: SSF, target: 'blocks\\.9\\..*'}]");
    assert!(err.contains("target `blocks\\.9\\..*` matches no linear, norm or tokens site of this backbone"), "{err}");
    let err = build_error(TINY_VIT, "[{type: SSF, rank: 4}]");
    assert!(err.contains("unknown key `rank`"), "{err}");
}
