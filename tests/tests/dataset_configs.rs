//! The dataset base configs (configs/_base_/datasets/{vtab,fgvc}) load, carry V-PETL's settings
//! (upstream_spec.md §3.2, §3.5, §5) and build their datasets on generated trees.

use std::path::{Path, PathBuf};

use vpetl_core::config::{load, RunConfig, Value};
use vpetl_core::data::loader::Loader;
use vpetl_tests::{init, write_tiny_fgvc, write_tiny_vtab};

fn config_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/_base_/datasets").join(rel)
}

fn read(rel: &str, options: &[String]) -> RunConfig {
    let node = load(&config_path(rel), options).unwrap_or_else(|e| panic!("{rel}: {e}"));
    RunConfig::from_node(&node).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The `type` of each pipeline step, in order.
fn pipeline_types(spec: &vpetl_core::data::loader::DataloaderSpec) -> Vec<String> {
    let Some(Value::List(steps)) = spec.dataset.node.get("pipeline").map(|n| &n.value) else { panic!("no pipeline") };
    steps.iter().map(|s| s.get("type").and_then(|t| t.as_str()).unwrap().to_string()).collect()
}

/// (task, classes, train_aug, label smoothing), from V-PETL's model_lora configs.
const VTAB: [(&str, i64, bool, f64); 19] = [
    ("cifar100", 100, false, 0.1),
    ("caltech101", 102, false, 0.1),
    ("dtd", 47, true, 0.1),
    ("oxford_flowers102", 102, true, 0.1),
    ("oxford_iiit_pet", 37, true, 0.1),
    ("svhn", 10, true, 0.1),
    ("sun397", 397, true, 0.1),
    ("patch_camelyon", 2, true, 0.1),
    ("eurosat", 10, true, 0.1),
    ("resisc45", 45, true, 0.1),
    ("diabetic_retinopathy", 5, true, 0.1),
    ("clevr_count", 8, true, 0.0),
    ("clevr_dist", 6, false, 0.0),
    ("dmlab", 6, true, 0.0),
    ("kitti", 4, true, 0.1),
    ("dsprites_loc", 16, false, 0.0),
    ("dsprites_ori", 16, false, 0.0),
    ("smallnorb_azi", 18, false, 0.0),
    ("smallnorb_ele", 9, false, 0.0),
];

#[test]
fn vtab_configs_have_vpetl_settings_and_build() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    let options = [format!("train_dataloader.dataset.root={root}"), format!("val_dataloader.dataset.root={root}")];
    for (task, classes, aug, ls) in VTAB {
        // The common export names the CIFAR folder `cifar`; the config says cifar100.
        write_tiny_vtab(tmp.path(), if task == "cifar100" { "cifar" } else { task }, classes as u32, 1);
        let cfg = read(&format!("vtab/{task}.yaml"), &options);
        let (train, val) = (cfg.train_dataloader.as_ref().unwrap(), cfg.val_dataloader.as_ref().unwrap());
        assert_eq!((train.batch_size, val.batch_size, train.shuffle), (64, 512, true), "{task}");
        assert_eq!(cfg.loss.label_smoothing, ls, "{task}");
        let want: Vec<&str> = if aug { vec!["Resize", "RandomHorizontalFlip", "RandAugment"] } else { vec!["Resize"] };
        assert_eq!(pipeline_types(train), want, "{task}");
        assert_eq!(pipeline_types(val), vec!["Resize"], "{task}");
        let built = train.dataset.spec.build().unwrap_or_else(|e| panic!("{task}: {e:#}"));
        assert_eq!(built.num_classes(), classes, "{task}");
        assert!(built.describe().contains("/train800val200"), "{task}: {}", built.describe());
        assert!(val.dataset.spec.build().unwrap().describe().contains("/test"), "{task}");
    }
    // One augmented batch at the real size.
    let cfg = read("vtab/dtd.yaml", &options);
    let loader = Loader::from_spec(cfg.train_dataloader.as_ref().unwrap(), 0).unwrap();
    let b = loader.epoch(0, 0).next().unwrap().unwrap();
    assert_eq!(b.images.size(), vec![47, 3, 224, 224]);
}

#[test]
fn fgvc_configs_have_vpetl_settings_and_build() {
    init();
    for (name, classes) in [("CUB_200_2011", 200), ("nabirds", 555), ("OxfordFlower", 102), ("StanfordDogs", 120), ("StanfordCars", 196)] {
        let cfg = read(&format!("fgvc/{name}.yaml"), &[]);
        let (train, val) = (cfg.train_dataloader.as_ref().unwrap(), cfg.val_dataloader.as_ref().unwrap());
        assert_eq!((train.batch_size, val.batch_size), (128, 128), "{name}");
        assert_eq!(cfg.loss.label_smoothing, 0.0);
        assert_eq!(pipeline_types(train), vec!["Resize", "RandomCrop", "RandomHorizontalFlip"], "{name}");
        assert_eq!(pipeline_types(val), vec!["Resize", "CenterCrop"], "{name}");
        for dl in [train, val] {
            let node = &dl.dataset.node;
            assert_eq!(node.get("dataset").and_then(|n| n.as_str()), Some(name));
            if std::env::var("FGVC_ROOT").is_err() {
                assert_eq!(node.get("root").and_then(|n| n.as_str()), Some(format!("data/fgvc/{name}").as_str()));
            }
        }
        let known = vpetl_cls::fgvc::FGVC_DATASETS.iter().find(|d| d.0 == name).unwrap();
        assert_eq!(known.1, classes, "{name}");
    }
    // The CUB config against a generated 200-class tree (CUB's images are under <root>/images).
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_fgvc(tmp.path(), 200, 1, 1, 1);
    let root = tmp.path().display().to_string();
    let cfg = read("fgvc/CUB_200_2011.yaml", &[format!("train_dataloader.dataset.root={root}"), format!("val_dataloader.dataset.root={root}")]);
    let train = cfg.train_dataloader.as_ref().unwrap().dataset.spec.build().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!((train.len(), train.num_classes()), (200, 200));
    let loader = Loader::from_spec(cfg.val_dataloader.as_ref().unwrap(), 0).unwrap();
    let b = loader.epoch(0, 0).next().unwrap().unwrap();
    assert_eq!(b.images.size(), vec![128, 3, 224, 224]);
}
