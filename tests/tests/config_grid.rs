//! Every shipped config loads and type-checks; the paper grid is complete, generated, and
//! consistent (head classes = dataset classes; V-PETL's lr / wd where spot-checked).

use std::path::{Path, PathBuf};
use std::process::Command;

use vpetl_core::config::{load as load_config, Node, RunConfig};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "_base_") {
                yaml_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
}

fn num(node: &Node, path: &str) -> f64 {
    let n = node.lookup(path).unwrap_or_else(|| panic!("no `{path}`"));
    match &n.value {
        vpetl_core::config::Value::Int(i) => *i as f64,
        vpetl_core::config::Value::Float(f) => *f,
        v => panic!("`{path}` is {v:?}"),
    }
}

#[test]
fn the_grid_is_generated_and_up_to_date() {
    let script = configs_dir().join("../scripts/make_grid_configs.py");
    let out = Command::new(std::env::var("VPETL_PYTHON").unwrap()).arg(&script).arg("--check").output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_config_loads_and_type_checks() {
    vpetl_tests::init();
    let mut files = Vec::new();
    yaml_files(&configs_dir(), &mut files);
    assert!(files.len() > 400, "only {} configs found", files.len());
    let mut failures = Vec::new();
    for f in &files {
        match load_config(f, &[]).map_err(|e| e.to_string()).and_then(|n| RunConfig::from_node(&n).map(|_| n).map_err(|e| e.to_string())) {
            Err(e) => failures.push(format!("{}: {e}", f.display())),
            Ok(node) => {
                // The head must have as many classes as the dataset.
                if let (Some(_), Some(_)) = (node.lookup("model.head.num_classes"), node.lookup("train_dataloader.dataset.num_classes")) {
                    let (h, d) = (num(&node, "model.head.num_classes"), num(&node, "train_dataloader.dataset.num_classes"));
                    if h != d {
                        failures.push(format!("{}: head has {h} classes, the dataset {d}", f.display()));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} configs fail:\n{}", failures.len(), files.len(), failures.join("\n"));
}

#[test]
fn grid_cells_carry_vpetls_settings() {
    vpetl_tests::init();
    let cell = |suite: &str, method: &str, task: &str| load_config(&configs_dir().join(format!("{suite}/{method}/{task}.yaml")), &[]).unwrap();
    let lora = cell("vtab", "lora", "cifar100");
    assert_eq!(num(&lora, "optim_wrapper.optimizer.lr"), 0.005);
    assert_eq!(num(&lora, "optim_wrapper.optimizer.weight_decay"), 0.005);
    assert_eq!(num(&lora, "train_cfg.max_epochs"), 100.0);
    assert_eq!(lora.lookup("model.methods").map(|m| m.to_yaml_string()).unwrap().trim(), "- type: LoRA\n  rank: 8\n  alpha: 8");
    let full = cell("vtab", "full_finetune", "sun397");
    assert_eq!(num(&full, "optim_wrapper.optimizer.lr"), 2e-3);
    assert_eq!(num(&full, "param_scheduler.lr_min"), 1e-6);
    assert_eq!(num(&full, "param_scheduler.warmup_lr_init"), 1e-4);
    let cars = cell("fgvc", "adapter", "StanfordCars");
    assert_eq!(num(&cars, "optim_wrapper.optimizer.lr"), 2e-3);
    assert_eq!(num(&cars, "model.head.num_classes"), 196.0);
    let dogs = cell("fgvc", "bitfit", "StanfordDogs");
    assert_eq!(num(&dogs, "optim_wrapper.optimizer.lr"), 2.5e-4);
    // NOAH's own search: VTAB only (it reads train800 and val200), retrained with NOAH's recipe.
    let search = cell("vtab", "noah_search", "dmlab");
    assert_eq!(search.lookup("model.methods.0.prepare").and_then(|n| n.as_str()), Some("search"));
    assert_eq!(num(&search, "optim_wrapper.optimizer.lr"), 1e-3);
    assert!(!configs_dir().join("fgvc/noah_search").exists());
}
