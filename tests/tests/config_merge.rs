//! mmengine's config semantics, one test per rule.

use vpetl_core::config::{self, Node};
use vpetl_tests::write_tree;

fn load(files: &[(&str, &str)], main: &str, opts: &[&str]) -> Result<Node, config::ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path(), files);
    let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
    let r = config::load(&dir.path().join(main), &opts);
    // Errors name files by path; strip the temp dir so the expectations are stable.
    r.map_err(|mut e| {
        let root = format!("{}/", dir.path().display());
        e.file = e.file.map(|f| f.replace(&root, ""));
        e.msg = e.msg.replace(&root, "");
        e
    })
}

fn yaml(node: &Node) -> String {
    node.to_yaml_string()
}

fn parse(text: &str) -> String {
    let v: serde_norway::Value = serde_norway::from_str(text).unwrap();
    serde_norway::to_string(&v).unwrap()
}

#[test]
fn base_as_a_single_path_and_as_a_list() {
    let files = [
        ("a.yaml", "x: 1\n"),
        ("b.yaml", "y: 2\n"),
        ("one.yaml", "_base_: a.yaml\nz: 3\n"),
        ("two.yaml", "_base_: [a.yaml, b.yaml]\nz: 3\n"),
    ];
    assert_eq!(yaml(&load(&files, "one.yaml", &[]).unwrap()), parse("x: 1\nz: 3\n"));
    assert_eq!(yaml(&load(&files, "two.yaml", &[]).unwrap()), parse("x: 1\ny: 2\nz: 3\n"));
}

#[test]
fn base_paths_are_relative_to_the_file_that_names_them() {
    let files = [
        ("_base_/models/vit.yaml", "model: {depth: 12}\n"),
        ("_base_/runtime.yaml", "_base_: models/vit.yaml\nseed: 1\n"),
        ("cls/run.yaml", "_base_: ../_base_/runtime.yaml\n"),
    ];
    assert_eq!(yaml(&load(&files, "cls/run.yaml", &[]).unwrap()), parse("model: {depth: 12}\nseed: 1\n"));
}

#[test]
fn mappings_merge_recursively() {
    let files = [
        ("base.yaml", "model:\n  backbone: {type: ViT, depth: 12, drop_path: 0.1}\n  head: {num_classes: 10}\n"),
        ("child.yaml", "_base_: base.yaml\nmodel:\n  backbone: {depth: 4}\n"),
    ];
    assert_eq!(
        yaml(&load(&files, "child.yaml", &[]).unwrap()),
        parse("model:\n  backbone: {type: ViT, depth: 4, drop_path: 0.1}\n  head: {num_classes: 10}\n")
    );
}

#[test]
fn scalars_and_lists_replace() {
    let files = [
        ("base.yaml", "lr: 0.1\nmethods: [{type: LoRA}, {type: VPT}]\nname: base\n"),
        ("child.yaml", "_base_: base.yaml\nlr: 0.01\nmethods: [{type: SSF}]\n"),
    ];
    assert_eq!(
        yaml(&load(&files, "child.yaml", &[]).unwrap()),
        parse("lr: 0.01\nmethods: [{type: SSF}]\nname: base\n")
    );
}

#[test]
fn delete_replaces_the_base_mapping() {
    let files = [
        ("base.yaml", "optimizer: {type: SGD, lr: 0.1, momentum: 0.9, weight_decay: 0.0001}\n"),
        ("child.yaml", "_base_: base.yaml\noptimizer: {_delete_: true, type: AdamW, lr: 0.001}\n"),
    ];
    assert_eq!(
        yaml(&load(&files, "child.yaml", &[]).unwrap()),
        parse("optimizer: {type: AdamW, lr: 0.001}\n")
    );
}

#[test]
fn delete_keys_never_reach_the_merged_config() {
    let files = [("only.yaml", "a: {_delete_: true, b: 1}\n")];
    assert_eq!(yaml(&load(&files, "only.yaml", &[]).unwrap()), parse("a: {b: 1}\n"));
}

#[test]
fn a_mapping_over_a_base_scalar_needs_delete() {
    let files = [("base.yaml", "head: linear\n"), ("child.yaml", "_base_: base.yaml\nhead: {num_classes: 3}\n")];
    let e = load(&files, "child.yaml", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "child.yaml: head: this is a mapping but a string in the base config (base.yaml); add `_delete_: true` to replace it"
    );
    let files = [("base.yaml", "head: linear\n"), ("child.yaml", "_base_: base.yaml\nhead: {_delete_: true, n: 3}\n")];
    assert_eq!(yaml(&load(&files, "child.yaml", &[]).unwrap()), parse("head: {n: 3}\n"));
}

#[test]
fn sibling_bases_may_not_set_the_same_value() {
    let files = [
        ("a.yaml", "model: {depth: 12, width: 768}
"),
        ("b.yaml", "model: {depth: 6}
"),
        ("child.yaml", "_base_: [a.yaml, b.yaml]
"),
    ];
    let e = load(&files, "child.yaml", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "child.yaml: _base_: `model.depth` is set by two bases, a.yaml and b.yaml; sibling bases may share mappings but not values"
    );
    let files = [("a.yaml", "lr: 0.1
"), ("b.yaml", "lr: {value: 0.1}
"), ("child.yaml", "_base_: [a.yaml, b.yaml]
")];
    assert!(load(&files, "child.yaml", &[]).unwrap_err().to_string().contains("`lr` is set by two bases"));
}

#[test]
fn sibling_bases_merge_disjoint_mappings() {
    let files = [
        ("model.yaml", "model: {backbone: {depth: 12}, head: {n: 10}}
"),
        ("method.yaml", "model: {methods: [{type: LoRA}]}
"),
        ("child.yaml", "_base_: [model.yaml, method.yaml]
model: {head: {n: 100}}
"),
    ];
    assert_eq!(
        yaml(&load(&files, "child.yaml", &[]).unwrap()),
        parse("model: {backbone: {depth: 12}, head: {n: 100}, methods: [{type: LoRA}]}
")
    );
}

#[test]
fn base_references_take_the_merged_base_value() {
    let files = [
        ("base.yaml", "num_classes: 100\nmodel: {head: {dim: 768}}\ndata_root: /data/vtab\n"),
        (
            "child.yaml",
            "_base_: base.yaml\nhead: {{_base_.model.head}}\nclasses: {{_base_.num_classes}}\nroot: \"{{_base_.data_root}}/cifar\"\n",
        ),
    ];
    assert_eq!(
        yaml(&load(&files, "child.yaml", &[]).unwrap()),
        parse("num_classes: 100\nmodel: {head: {dim: 768}}\ndata_root: /data/vtab\nhead: {dim: 768}\nclasses: 100\nroot: /data/vtab/cifar\n")
    );
}

#[test]
fn a_base_reference_to_a_missing_key_is_an_error() {
    let files = [("base.yaml", "a: 1\n"), ("child.yaml", "_base_: base.yaml\nb: {{_base_.nope}}\n")];
    let e = load(&files, "child.yaml", &[]).unwrap_err();
    assert_eq!(e.to_string(), "child.yaml:2: b: `{{_base_.nope}}`: the bases have no key `nope`");
}

#[test]
fn environment_variables_with_defaults() {
    std::env::set_var("VPETL_TEST_ROOT_SET", "/mnt/data");
    std::env::remove_var("VPETL_TEST_ROOT_UNSET");
    let files = [(
        "c.yaml",
        "root: {{$VPETL_TEST_ROOT_SET:/default}}\nother: {{$VPETL_TEST_ROOT_UNSET:/default}}\nlr: {{$VPETL_TEST_ROOT_UNSET:0.5}}\n",
    )];
    let n = load(&files, "c.yaml", &[]).unwrap();
    assert_eq!(yaml(&n), parse("root: /mnt/data\nother: /default\nlr: 0.5\n"));
    assert_eq!(n.get("lr").unwrap().value, config::Value::Float(0.5));
}

#[test]
fn a_missing_environment_variable_without_default_is_an_error() {
    std::env::remove_var("VPETL_TEST_MISSING");
    let files = [("c.yaml", "a: 1\nroot: {{$VPETL_TEST_MISSING}}\n")];
    let e = load(&files, "c.yaml", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "c.yaml:2: environment variable `VPETL_TEST_MISSING` is not set and `{{$VPETL_TEST_MISSING}}` gives no default (write `{{$VPETL_TEST_MISSING:default}}` to give one)"
    );
}

#[test]
fn file_variables() {
    let files = [("sub/run.yaml", "name: {{fileBasenameNoExtension}}\next: {{fileExtname}}\n")];
    assert_eq!(yaml(&load(&files, "sub/run.yaml", &[]).unwrap()), parse("name: run\next: .yaml\n"));
}

#[test]
fn overrides_with_dotted_keys_list_indices_and_types() {
    let files = [("c.yaml", "model:\n  methods: [{type: LoRA, rank: 8}, {type: VPT}]\nseed: 0\n")];
    let n = load(
        &files,
        "c.yaml",
        &["model.methods.0.rank=16", "model.methods.1.type=SSF", "seed=3", "lr=1e-3", "amp=true", "note=null", "new.deep.key=x"],
    )
    .unwrap();
    assert_eq!(
        yaml(&n),
        parse("model:\n  methods: [{type: LoRA, rank: 16}, {type: SSF}]\nseed: 3\nlr: 0.001\namp: true\nnote: null\nnew: {deep: {key: x}}\n")
    );
    assert_eq!(n.lookup("seed").unwrap().value, config::Value::Int(3));
    assert_eq!(n.lookup("lr").unwrap().value, config::Value::Float(0.001));
}

#[test]
fn overrides_with_lists() {
    let files = [("c.yaml", "sizes: [1]\n")];
    let n = load(&files, "c.yaml", &["sizes=[224, 384]", "names=a,b", "nested=[[1,2],[3]]"]).unwrap();
    assert_eq!(yaml(&n), parse("sizes: [224, 384]\nnames: [a, b]\nnested: [[1, 2], [3]]\n"));
}

#[test]
fn override_errors_name_the_key() {
    let files = [("c.yaml", "methods: [{type: LoRA}]\nseed: 1\n")];
    let e = load(&files, "c.yaml", &["methods.3.rank=1"]).unwrap_err();
    assert_eq!(e.to_string(), "--cfg-options: methods.3: index 3 is out of range: `methods` has 1 element(s)");
    let e = load(&files, "c.yaml", &["seed.x=1"]).unwrap_err();
    assert_eq!(e.to_string(), "--cfg-options: seed.x: cannot set a key inside `seed`: it is an integer, not a mapping or a list");
    let e = load(&files, "c.yaml", &["seed"]).unwrap_err();
    assert_eq!(e.to_string(), "--cfg-options: `seed` is not of the form key=value");
}

#[test]
fn a_three_level_chain_merges_in_order_and_overrides_come_last() {
    let files = [
        ("base.yaml", "model: {depth: 12, dim: 768}\nlr: 0.1\nepochs: 100\n"),
        ("mid.yaml", "_base_: base.yaml\nmodel: {depth: 6}\nlr: 0.01\n"),
        ("top.yaml", "_base_: mid.yaml\nmodel: {dim: 384}\n"),
    ];
    assert_eq!(
        yaml(&load(&files, "top.yaml", &[]).unwrap()),
        parse("model: {depth: 6, dim: 384}\nlr: 0.01\nepochs: 100\n")
    );
    assert_eq!(
        yaml(&load(&files, "top.yaml", &["model.depth=2", "epochs=5"]).unwrap()),
        parse("model: {depth: 2, dim: 384}\nlr: 0.01\nepochs: 5\n")
    );
}

#[test]
fn values_remember_the_file_that_wrote_them() {
    let files = [("base.yaml", "a: {x: 1, y: 2}\n"), ("child.yaml", "_base_: base.yaml\na: {y: 3}\n")];
    let n = load(&files, "child.yaml", &["a.z=4"]).unwrap();
    assert!(n.lookup("a.x").unwrap().origin.as_str().ends_with("base.yaml"));
    assert!(n.lookup("a.y").unwrap().origin.as_str().ends_with("child.yaml"));
    assert_eq!(n.lookup("a.z").unwrap().origin.as_str(), "--cfg-options");
}

#[test]
fn text_that_looks_like_an_internal_reference_marker_stays_text() {
    // Found by the config fuzzer: such text used to index past the reference table.
    let files = [("base.yaml", "a: 1\n"), ("child.yaml", "_base_: base.yaml\nb: __vpetl_base_ref_21__\nc: {{_base_.a}}\n")];
    assert_eq!(yaml(&load(&files, "child.yaml", &[]).unwrap()), parse("a: 1\nb: __vpetl_base_ref_21__\nc: 1\n"));
}
