//! Golden error messages: each names the file, the key path and, where one is close, a suggestion.

use serde::Deserialize;
use vpetl_core::backbones::BackboneSpec;
use vpetl_core::config::{self, RunConfig};
use vpetl_tests::write_tree;

/// A component registered by this test binary only, so that these messages do not change when the
/// real backbones gain options.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // only read by the deserializer
struct ToyNetSpec {
    depth: i64,
    #[serde(default)]
    embed_dim: Option<i64>,
    #[serde(default)]
    drop_path_rate: f64,
}

impl BackboneSpec for ToyNetSpec {
    fn build(&self, _: tch::nn::Path) -> anyhow::Result<Box<dyn vpetl_core::backbones::Backbone>> {
        anyhow::bail!("ToyNet only exists to be read from configs")
    }
    fn feature_dim(&self) -> i64 {
        self.embed_dim.unwrap_or(8)
    }
}

vpetl_core::register!(Backbone, "test", "ToyNet", ToyNetSpec as dyn BackboneSpec, "a backbone for config tests");

fn check(files: &[(&str, &str)], main: &str) -> String {
    vpetl_tests::init();
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path(), files);
    let root = format!("{}/", dir.path().display());
    let result = config::load(&dir.path().join(main), &[]).and_then(|n| RunConfig::from_node(&n).map(|_| ()));
    result.unwrap_err().to_string().replace(&root, "")
}

#[test]
fn unknown_top_level_key() {
    let msg = check(&[("run.yaml", "seed: 1\nwork_dri: out\n")], "run.yaml");
    assert_eq!(
        msg,
        "run.yaml: work_dri: unknown top-level key `work_dri`; did you mean `work_dir`? (valid keys: auto_scale_lr, custom_hooks, default_hooks, env_cfg, experiment, load_from, log_level, loss, model, optim_wrapper, param_scheduler, seed, test_dataloader, train_cfg, train_dataloader, val_dataloader, val_evaluator, work_dir)"
    );
}

#[test]
fn unknown_key_inside_a_component_names_the_file_that_wrote_it() {
    let files = [
        ("base.yaml", "model:\n  type: ImageClassifier\n  head: {type: LinearHead, num_classes: 2}\n  backbone: {type: ToyNet, depth: 2}\n"),
        ("run.yaml", "_base_: base.yaml\nmodel:\n  backbone: {drop_path_rat: 0.1}\n"),
    ];
    assert_eq!(
        check(&files, "run.yaml"),
        "run.yaml: model.backbone.drop_path_rat: unknown key `drop_path_rat`; did you mean `drop_path_rate`? (valid keys: depth, drop_path_rate, embed_dim)"
    );
}

#[test]
fn unknown_type_with_suggestion() {
    let msg = check(&[("run.yaml", "model:\n  type: ImageClassifier\n  head: {type: LinearHead, num_classes: 2}\n  backbone: {type: ToyNett, depth: 2}\n")], "run.yaml");
    assert!(
        msg.starts_with("run.yaml: model.backbone.type: unknown backbone type `ToyNett`; did you mean `ToyNet`? (registered backbones: "),
        "{msg}"
    );
}

#[test]
fn scoped_type_names_resolve() {
    vpetl_tests::init();
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path(), &[("run.yaml", "model:\n  type: ImageClassifier\n  head: {type: LinearHead, num_classes: 2}\n  backbone: {type: test.ToyNet, depth: 2}\n")]);
    let n = config::load(&dir.path().join("run.yaml"), &[]).unwrap();
    let run = RunConfig::from_node(&n).unwrap();
    assert_eq!(run.model.unwrap().node.lookup("backbone.type").unwrap().as_str(), Some("test.ToyNet"));
}

#[test]
fn unknown_model_type_with_suggestion() {
    let msg = check(&[("run.yaml", "model: {type: ImageClassifer}\n")], "run.yaml");
    assert!(
        msg.starts_with("run.yaml: model.type: unknown model type `ImageClassifer`; did you mean `ImageClassifier`?"),
        "{msg}"
    );
}

#[test]
fn wrong_value_type() {
    let msg = check(&[("run.yaml", "model:\n  type: ImageClassifier\n  head: {type: LinearHead, num_classes: 2}\n  backbone: {type: ToyNet, depth: twelve}\n")], "run.yaml");
    assert_eq!(msg, "run.yaml: model.backbone.depth: expected an integer, found a string (\"twelve\")");
    let msg = check(&[("run.yaml", "seed: [1]\n")], "run.yaml");
    assert_eq!(msg, "run.yaml: seed: expected an integer, found a list (a list of 1)");
}

#[test]
fn missing_required_key() {
    let msg = check(&[("run.yaml", "model:\n  type: ImageClassifier\n  head: {type: LinearHead, num_classes: 2}\n  backbone: {type: ToyNet}\n")], "run.yaml");
    assert_eq!(msg, "run.yaml: model.backbone: missing required key `depth`");
}

#[test]
fn missing_type() {
    let msg = check(&[("run.yaml", "model:\n  type: ImageClassifier\n  head: {type: LinearHead, num_classes: 2}\n  backbone: {depth: 2}\n")], "run.yaml");
    assert!(msg.starts_with("run.yaml: model.backbone: missing `type` (registered backbones: "), "{msg}");
}

#[test]
fn bad_enum_value_with_suggestion() {
    let msg = check(&[("run.yaml", "log_level: inf\n")], "run.yaml");
    assert_eq!(
        msg,
        "run.yaml: log_level: unknown value `inf`; did you mean `info`? (expected one of: trace, debug, info, warn, error)"
    );
}

#[test]
fn missing_base_file() {
    let msg = check(&[("run.yaml", "_base_: [nowhere/base.yaml]\n")], "run.yaml");
    assert_eq!(msg, "run.yaml: _base_: cannot read config file nowhere/base.yaml: No such file or directory (os error 2)");
    // The path is shown as written relative to the config's folder.
    let msg = check(&[("cfg/run.yaml", "_base_: missing.yaml\n")], "cfg/run.yaml");
    assert!(msg.starts_with("cfg/run.yaml: _base_: cannot read config file cfg/missing.yaml: "), "{msg}");
}

#[test]
fn base_cycle() {
    let files = [("a.yaml", "_base_: b.yaml\n"), ("b.yaml", "_base_: c.yaml\n"), ("c.yaml", "_base_: a.yaml\n")];
    let msg = check(&files, "a.yaml");
    assert_eq!(msg, "c.yaml: _base_: `_base_` cycle: a.yaml -> b.yaml -> c.yaml -> a.yaml");
}

#[test]
fn invalid_yaml_names_the_line() {
    let msg = check(&[("run.yaml", "seed: 1\nmodel: [unclosed\n")], "run.yaml");
    assert!(msg.starts_with("run.yaml:3: invalid YAML: "), "{msg}");
}

#[test]
fn duplicate_keys_in_one_file() {
    let msg = check(&[("run.yaml", "seed: 1\nseed: 2\n")], "run.yaml");
    assert_eq!(msg, "run.yaml:1: invalid YAML: duplicate entry with key \"seed\"");
}
