//! LinearProbe: no backbone variable trains, only the head. A parameter-selection method: it adds
//! no tensors, so check 5 (parity with a PyTorch re-implementation) has nothing to compare and is
//! replaced by the exact (empty) list of trainable backbone variables.

mod selection_common;

use selection_common::*;
use vpetl_tests::method_harness::*;

const PROBE: &str = "[{type: LinearProbe}]";

#[test]
fn no_backbone_variable_trains() {
    for bb in [TINY_VIT, TINY_SWIN] {
        assert_eq!(trainable_backbone(bb, PROBE), Vec::<String>::new());
        // The same as an empty `methods:` list.
        assert_eq!(trainable_backbone(bb, "[]"), Vec::<String>::new());
    }
}

#[test]
fn starts_as_the_backbone_with_gradients_on_the_head_only_and_merges_trivially() {
    for bb in [TINY_VIT, TINY_SWIN] {
        assert_noop_at_init(bb, PROBE);
        assert_gradients_on_trainable_only(bb, PROBE);
        assert_merge_matches(bb, PROBE);
    }
}

#[test]
fn trainable_count_is_zero_and_the_head_trains() {
    assert_trainable_count(TINY_VIT, PROBE, 0);
    assert_trainable_count(TINY_SWIN, PROBE, 0);
    let b = build(TINY_VIT, PROBE);
    let counts = b.model.param_counts();
    // The head: 32 features x 5 classes + 5 biases.
    assert_eq!(counts.trainable, 32 * NUM_CLASSES + NUM_CLASSES, "{counts}");
}

#[test]
fn options_are_refused() {
    let err = build_error(TINY_VIT, "[{type: LinearProbe, head_only: true}]");
    assert!(err.contains("unknown key `head_only`"), "{err}");
}
