//! Work-dir resolution and layout, the merged-config dump, the scalar log and the text log.

use std::path::{Path, PathBuf};

use vpetl_core::logging::{ScalarLog, TrainScalars};
use vpetl_core::workdir::{resolve, RunDirs};

#[test]
fn work_dir_precedence_is_cli_then_config_then_config_name() {
    let cfg = Path::new("configs/cls/lora_vitb16_cifar.yaml");
    assert_eq!(resolve(Some(Path::new("cli")), Some(Path::new("cfg")), cfg), PathBuf::from("cli"));
    assert_eq!(resolve(None, Some(Path::new("cfg")), cfg), PathBuf::from("cfg"));
    assert_eq!(resolve(None, None, cfg), PathBuf::from("work_dirs/lora_vitb16_cifar"));
}

#[test]
fn run_dirs_follow_mmengine_and_the_merged_config_is_dumped() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = RunDirs::create(&tmp.path().join("wd")).unwrap();
    let ts = &dirs.timestamp;
    assert_eq!(ts.len(), "20261127_183000".len());
    assert_eq!(dirs.log_file, tmp.path().join(format!("wd/{ts}/{ts}.log")));
    assert_eq!(dirs.scalars_file, tmp.path().join(format!("wd/{ts}/vis_data/scalars.json")));
    assert!(dirs.vis_dir.is_dir());
    let dumped = dirs.dump_config(Path::new("configs/x/run.yaml"), "seed: 1\n").unwrap();
    assert_eq!(dumped, tmp.path().join("wd/run.yaml"));
    assert_eq!(std::fs::read_to_string(dumped).unwrap(), "seed: 1\n");
}

#[test]
fn scalars_are_json_lines_in_mmengine_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scalars.json");
    let mut log = ScalarLog::open(&path).unwrap();
    let s = TrainScalars { step: 10, epoch: 1, iter: 10, lr: 1e-3, loss: 2.5, time: 0.2, data_time: 0.01, memory: 512.0 };
    log.write_train(&s).unwrap();
    log.write_eval(1, &[("accuracy/top1".into(), 81.25)]).unwrap();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for key in ["step", "epoch", "iter", "lr", "loss", "time", "data_time", "memory"] {
        assert!(lines[0].get(key).is_some(), "train line lacks {key}: {}", lines[0]);
    }
    assert_eq!(lines[0]["loss"], 2.5);
    assert_eq!(lines[1], serde_json::json!({"accuracy/top1": 81.25, "step": 1}));
    // Appending (a resumed run) keeps earlier lines.
    drop(log);
    ScalarLog::open(&path).unwrap().write_eval(2, &[("accuracy/top1".into(), 82.0)]).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
}
