//! Parity with timm: small models with random weights, built and run by timm in Python
//! (`tests/python/timm_reference.py`), loaded and run by `tools/infer`; logits and every block's
//! output must agree to 1e-4 (fp32, CPU). The attention-map probes' probabilities must agree with
//! those of timm's unfused attention to 1e-5.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use tch::Tensor;

const TOL: f64 = 1e-4;

fn python() -> String {
    std::env::var("VPETL_PYTHON").expect("VPETL_PYTHON is set by scripts/setup in .cargo/config.toml")
}

fn reference(dir: &Path, arch: &str, kwargs: &str, input: i64, extra: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/timm_reference.py");
    let input = input.to_string();
    let mut args = vec![script.to_str().unwrap(), dir.to_str().unwrap(), "--arch", arch, "--kwargs", kwargs, "--input-size", &input];
    args.extend_from_slice(extra);
    let out = Command::new(python()).args(&args).output().unwrap();
    assert!(out.status.success(), "timm reference failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn infer(dir: &Path, config: &str, checkpoint: &str) -> HashMap<String, Tensor> {
    std::fs::write(dir.join("model.yaml"), config).unwrap();
    let mut args = vec!["model.yaml", "--input", "input.safetensors", "--output", "actual.safetensors", "--features"];
    if !checkpoint.is_empty() {
        args.extend(["--checkpoint", checkpoint]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_infer")).current_dir(dir).args(&args).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "infer failed:\n{log}");
    // Everything in the file must have gone somewhere: no missing or unexpected keys.
    assert!(!log.contains("missing") && !log.contains("unexpected"), "incomplete load:\n{log}");
    Tensor::read_safetensors(dir.join("actual.safetensors")).unwrap().into_iter().collect()
}

fn compare(dir: &Path, actual: &HashMap<String, Tensor>) -> usize {
    let expected = Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap();
    for (name, want) in &expected {
        let got = actual.get(name).unwrap_or_else(|| panic!("tools/infer wrote no `{name}`"));
        assert_eq!(got.size(), want.size(), "{name}: shape");
        let diff = (got - want).abs().max().double_value(&[]);
        assert!(diff <= TOL, "{name}: max |Δ| = {diff:e} > {TOL:e}");
    }
    expected.len()
}

/// A model config for the same architecture as the timm kwargs.
fn config(backbone: &str, kwargs: &str, img_size: i64) -> String {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(kwargs).unwrap();
    let classes = v.remove("num_classes").unwrap();
    v.insert("type".into(), backbone.into());
    v.insert("img_size".into(), img_size.into());
    let head = serde_json::json!({"type": "LinearHead", "num_classes": classes});
    let model = serde_json::json!({"model": {"type": "ImageClassifier", "backbone": v, "head": head}});
    serde_norway::to_string(&model).unwrap()
}

fn with_pretrained(config: &str, pretrained: &str) -> String {
    format!("{config}  pretrained:\n{pretrained}")
}

fn check(arch: &str, backbone: &str, kwargs: &str, input: i64, extra: &[&str], checkpoint: &str) -> usize {
    let dir = tempfile::tempdir().unwrap();
    reference(dir.path(), arch, kwargs, input, extra);
    let actual = infer(dir.path(), &config(backbone, kwargs, input), checkpoint);
    compare(dir.path(), &actual)
}

const VIT: &str = r#""patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 4, "num_classes": 5"#;

#[test]
fn vit_class_token_pooling() {
    let n = check("vit", "ViT", &format!("{{{VIT}}}"), 32, &[], "weights.safetensors");
    assert_eq!(n, 1 + 3);
}

#[test]
fn vit_mean_pooling_with_resampled_position_embedding() {
    let kwargs = format!(r#"{{{VIT}, "global_pool": "avg"}}"#);
    assert_eq!(check("vit", "ViT", &kwargs, 48, &["--load-size", "32"], "weights.safetensors"), 4);
}

#[test]
fn vit_with_layer_scale() {
    let kwargs = format!(r#"{{{VIT}, "init_values": 0.1}}"#);
    assert_eq!(check("vit", "ViT", &kwargs, 32, &[], "weights.safetensors"), 4);
}

#[test]
fn vit_from_google_npz_as_timm_loads_it() {
    assert_eq!(check("vit", "ViT", &format!("{{{VIT}}}"), 32, &["--npz"], "weights.npz"), 4);
}

#[test]
fn swin_at_a_size_that_is_not_a_multiple_of_the_window() {
    // 88 px / patch 4 = 22 tokens, then 11: both padded to multiples of the window (4).
    let kwargs = r#"{"patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4, "num_classes": 5}"#;
    assert_eq!(check("swin", "Swin", kwargs, 88, &[], "weights.safetensors"), 1 + 4);
}

#[test]
fn swin_where_the_window_shrinks_to_the_map() {
    // 40 px / 4 = 10 tokens (window 7, padded to 14, shifted), then 5 (window shrinks to 5, no shift).
    let kwargs = r#"{"patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 7, "num_classes": 3}"#;
    assert_eq!(check("swin", "Swin", kwargs, 40, &[], "weights.safetensors"), 1 + 4);
}

const SWIN: &str = r#"{"patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4, "num_classes": 5}"#;

#[test]
fn swin_from_a_microsoft_pth_named_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    reference(dir.path(), "swin", SWIN, 32, &["--pth"]);
    let cfg = with_pretrained(
        &config("Swin", SWIN, 32),
        "    path: weights.pth\n    layout: microsoft\n    strip_prefix: [model.]\n    strict: true\n",
    );
    let actual = infer(dir.path(), &cfg, "");
    assert_eq!(compare(dir.path(), &actual), 5);
}

/// Loads timm's weights in-process, runs the attention-map probes (`vpetl_core::viz::attention`)
/// on timm's input and compares every site's probabilities with timm's; returns the sites compared.
fn probes_match_timm(arch: &str, backbone: &str, kwargs: &str, input: i64) -> usize {
    use vpetl_core::viz::attention::AttentionProbes;
    let dir = tempfile::tempdir().unwrap();
    reference(dir.path(), arch, kwargs, input, &["--attention"]);
    vpetl_tests::init();
    let node = vpetl_core::config::load::parse_yaml(&config(backbone, kwargs, input), &vpetl_core::config::Origin::new("<test>")).unwrap();
    let cfg = vpetl_core::config::RunConfig::from_node(&node).unwrap();
    let (vs, mut model) = vpetl_core::engine::runner::build_model(&cfg, tch::Device::Cpu).unwrap();
    vpetl_core::engine::runner::load_weights(&vs, model.as_ref(), &dir.path().join("weights.safetensors"), &[]).unwrap();
    let probes = AttentionProbes::install(model.as_mut()).unwrap();
    let x: HashMap<String, Tensor> = Tensor::read_safetensors(dir.path().join("input.safetensors")).unwrap().into_iter().collect();
    tch::no_grad(|| model.forward(&x["input"], Default::default()));
    let caught = probes.take().unwrap();
    let want: HashMap<String, Tensor> = Tensor::read_safetensors(dir.path().join("attention.safetensors")).unwrap().into_iter().collect();
    assert_eq!(caught.len(), want.len());
    for (i, c) in caught.iter().enumerate() {
        let w = &want[&format!("attn.{i}")];
        assert_eq!(c.probs.size(), w.size(), "{}", c.site);
        let diff = (&c.probs - w).abs().max().double_value(&[]);
        assert!(diff <= 1e-5, "{}: probabilities differ from timm's by {diff:e}", c.site);
    }
    caught.len()
}

#[test]
fn attention_probes_match_timms_probabilities() {
    assert_eq!(probes_match_timm("vit", "ViT", &format!("{{{VIT}}}"), 32), 3);
    // 88 px / 4 = 22 tokens, then 11: padded to the window (4), shifted in odd blocks.
    assert_eq!(probes_match_timm("swin", "Swin", SWIN, 88), 4);
}

#[test]
fn a_pickle_that_calls_code_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let script = format!(
        "import os, torch\nclass Evil:\n    def __reduce__(self):\n        return (os.system, ('touch {}',))\ntorch.save({{'model': Evil()}}, 'evil.pth')\n",
        marker.display()
    );
    let out = Command::new(python()).current_dir(dir.path()).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.path().join("model.yaml"), config("ViT", &format!("{{{VIT}}}"), 32)).unwrap();
    let input = Tensor::zeros([1, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    Tensor::write_safetensors(&[("input", input)], dir.path().join("input.safetensors")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_infer"))
        .current_dir(dir.path())
        .args(["model.yaml", "--checkpoint", "evil.pth", "--input", "input.safetensors", "--output", "o.safetensors"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("evil.pth: refusing to load") && err.contains("system"), "{err}");
    assert!(!marker.exists(), "the pickle's code ran");
}

#[test]
fn a_shape_mismatch_is_an_error_naming_the_key_unless_allowed() {
    // Weights for 5 classes loaded into a 3-class head.
    let dir = tempfile::tempdir().unwrap();
    reference(dir.path(), "vit", &format!("{{{VIT}}}"), 32, &[]);
    let kwargs = format!(r#"{{{}, "num_classes": 3}}"#, VIT.replace(r#", "num_classes": 5"#, ""));
    std::fs::write(dir.path().join("model.yaml"), config("ViT", &kwargs, 32)).unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_infer"))
            .current_dir(dir.path())
            .args(["model.yaml", "--checkpoint", "weights.safetensors", "--input", "input.safetensors", "--output", "o.safetensors"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("weights.safetensors: `head.bias` has shape [5] in the file but [3] in the model")
            || err.contains("weights.safetensors: `head.weight` has shape [5, 32] in the file but [3, 32] in the model"),
        "{err}"
    );
    let out = run(&["--allow-shape-mismatch", r"head\..*"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("shape mismatch kept at init head.weight: file [5, 32], model [3, 32]"), "{log}");
}

#[test]
fn merged_lora_exports_load_in_timm_with_the_same_outputs() {
    let dir = tempfile::tempdir().unwrap();
    reference(dir.path(), "vit", &format!("{{{VIT}}}"), 32, &[]);
    let cfg = config("ViT", &format!("{{{VIT}}}"), 32).replacen("  head:", "  methods: [{type: LoRA, rank: 4, alpha: 8, target: '.*(qkv|fc1)'}]\n  head:", 1);
    let cfg = with_pretrained(&cfg, &format!("    path: {}\n", dir.path().join("weights.safetensors").display()));
    std::fs::write(dir.path().join("lora.yaml"), &cfg).unwrap();
    // "Trained" LoRA factors (random, so that the merge is not trivial), saved as a checkpoint.
    vpetl_tools::init();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let node = vpetl_core::config::load(&dir.path().join("lora.yaml"), &[]).unwrap();
    let run_cfg = vpetl_core::config::RunConfig::from_node(&node).unwrap();
    let model = run_cfg.model.as_ref().unwrap().spec.build(&vs).unwrap();
    let mut trainable = Vec::new();
    tch::no_grad(|| {
        for (k, mut v) in vs.variables() {
            if k.starts_with("methods.") {
                v.copy_(&(Tensor::randn_like(&v) * 0.2));
                trainable.push((k, v));
            } else if k.starts_with("head.") {
                trainable.push((k, v));
            }
        }
    });
    let meta = vpetl_core::engine::checkpoint::Meta::default();
    vpetl_core::engine::checkpoint::save(&dir.path().join("trained.safetensors"), &trainable, &[], &[], &meta).unwrap();
    let x = Tensor::read_safetensors(dir.path().join("input.safetensors")).unwrap().remove(0).1;
    let ours = tch::no_grad(|| model.forward(&x, vpetl_core::backbones::ForwardOpts::default()).logits);
    let out = Command::new(env!("CARGO_BIN_EXE_merge"))
        .current_dir(dir.path())
        .args(["lora.yaml", "--checkpoint", "trained.safetensors", "--output", "merged.safetensors"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = "import sys, torch\nfrom safetensors.torch import load_file, save_file\nfrom timm.models.vision_transformer import VisionTransformer\nm = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5).eval()\nm.load_state_dict(load_file('merged.safetensors'), strict=True)\nx = load_file('input.safetensors')['input']\nwith torch.no_grad():\n    save_file({'logits': m(x)}, 'timm.safetensors')\n";
    let out = Command::new(python()).current_dir(dir.path()).args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "timm could not load the merged export:\n{}", String::from_utf8_lossy(&out.stderr));
    let theirs = Tensor::read_safetensors(dir.path().join("timm.safetensors")).unwrap().remove(0).1;
    let d = (&ours - &theirs).abs().max().double_value(&[]);
    assert!(d <= 1e-5, "timm's output from the merged export differs: max |Δ| = {d:e}");
}
