//! The registry holds every component the task crates register (the linker can silently drop an
//! unreferenced crate's registrations), and lookups behave as documented.

use vpetl_core::registry::{self, Kind};

/// Every entry that must exist, as `kind scope.Name`. Grows with each component.
const EXPECTED: &[(Kind, &str)] = &[
    (Kind::Backbone, "core.ViT"),
    (Kind::Backbone, "core.Swin"),
    (Kind::Method, "core.FullFT"),
    (Kind::Method, "core.LinearProbe"),
    (Kind::Method, "core.BitFit"),
    (Kind::Method, "core.LN-Tune"),
    (Kind::Method, "core.Partial-k"),
    (Kind::Method, "core.LoRA"),
    (Kind::Method, "core.VPT-Shallow"),
    (Kind::Method, "core.VPT-Deep"),
    (Kind::Method, "core.Mona"),
    (Kind::Method, "core.LoRand"),
    (Kind::Method, "core.E3VA"),
    (Kind::Method, "core.U-Tuning"),
    (Kind::Head, "cls.LinearHead"),
    (Kind::Model, "cls.ImageClassifier"),
    (Kind::Dataset, "cls.VTAB1k"),
    (Kind::Dataset, "cls.MNISTIdx"),
    (Kind::Dataset, "cls.FGVC"),
    (Kind::Transform, "cls.RandAugment"),
    (Kind::Transform, "cls.Resize"),
    (Kind::Transform, "cls.CenterCrop"),
    (Kind::Transform, "cls.RandomCrop"),
    (Kind::Transform, "cls.RandomHorizontalFlip"),
    (Kind::Evaluator, "cls.Accuracy"),
    (Kind::Optimizer, "core.AdamW"),
    (Kind::Optimizer, "core.SGD"),
    (Kind::Scheduler, "core.CosineLR"),
    (Kind::Scheduler, "core.ConstantLR"),
];

#[test]
fn every_expected_entry_is_registered() {
    vpetl_tests::init();
    for (kind, name) in EXPECTED {
        let found = registry::of_kind(*kind).any(|e| e.qualified_name() == *name);
        assert!(found, "{kind} {name} is not registered");
    }
}

#[test]
fn every_entry_has_a_one_line_doc() {
    vpetl_tests::init();
    for e in registry::entries() {
        assert!(!e.doc.is_empty() && !e.doc.contains('\n'), "{} needs a one-line doc", e.qualified_name());
    }
}

#[test]
fn bare_and_scoped_names_resolve_and_unknown_names_suggest() {
    vpetl_tests::init();
    assert_eq!(registry::lookup(Kind::Backbone, "ViT").unwrap().qualified_name(), "core.ViT");
    assert_eq!(registry::lookup(Kind::Backbone, "core.Swin").unwrap().qualified_name(), "core.Swin");
    let err = registry::lookup(Kind::Backbone, "Swim").unwrap_err();
    assert!(err.starts_with("unknown backbone type `Swim`; did you mean `Swin`?"), "{err}");
    // A name of another kind is not found under this kind.
    assert!(registry::lookup(Kind::Backbone, "LinearHead").is_err());
}

#[test]
fn kinds_parse_from_singular_and_plural_names() {
    for k in Kind::ALL {
        assert_eq!(Kind::parse(k.name()), Some(k));
        assert_eq!(Kind::parse(&format!("{}s", k.name())), Some(k));
    }
    assert_eq!(Kind::parse("gizmo"), None);
}
