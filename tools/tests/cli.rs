//! The thin tools, run as users run them.

use std::path::Path;
use std::process::Command;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn run(bin: &str, args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(bin).args(args).current_dir(cwd).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn chain(dir: &Path) {
    write(dir, "_base_/runtime.yaml", "seed: 0\nlog_level: info\nwork_dir: out/base\n");
    write(dir, "_base_/mid.yaml", "_base_: runtime.yaml\nseed: 1\n");
    write(dir, "top.yaml", "_base_: _base_/mid.yaml\nlog_level: debug\n");
}

#[test]
fn print_config_prints_the_merged_three_level_chain() {
    let dir = tempfile::tempdir().unwrap();
    chain(dir.path());
    let (code, out, err) = run(env!("CARGO_BIN_EXE_print-config"), &["top.yaml"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "seed: 1\nlog_level: debug\nwork_dir: out/base\n");
}

#[test]
fn print_config_applies_cfg_options() {
    let dir = tempfile::tempdir().unwrap();
    chain(dir.path());
    let (code, out, err) =
        run(env!("CARGO_BIN_EXE_print-config"), &["top.yaml", "--cfg-options", "seed=7", "work_dir=elsewhere"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "seed: 7\nlog_level: debug\nwork_dir: elsewhere\n");
}

#[test]
fn print_config_rejects_a_misspelt_key_with_file_key_and_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    chain(dir.path());
    write(dir.path(), "bad.yaml", "_base_: top.yaml\nsed: 3\n");
    let (code, out, err) = run(env!("CARGO_BIN_EXE_print-config"), &["bad.yaml"], dir.path());
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "error: bad.yaml: sed: unknown top-level key `sed`; did you mean `seed`? (valid keys: auto_scale_lr, custom_hooks, default_hooks, env_cfg, experiment, load_from, log_level, loss, model, optim_wrapper, param_scheduler, seed, test_dataloader, train_cfg, train_dataloader, val_dataloader, val_evaluator, work_dir)\n"
    );
}

#[test]
fn list_prints_every_kind() {
    let (code, out, err) = run(env!("CARGO_BIN_EXE_list"), &[], Path::new("."));
    assert_eq!(code, 0, "{err}");
    for kind in ["backbones", "methods", "necks", "heads", "models", "datasets", "transforms", "evaluators", "optimizers", "schedulers", "hooks"] {
        assert!(out.contains(&format!("{kind} (")), "{kind} missing from:\n{out}");
    }
    let (code, _, err) = run(env!("CARGO_BIN_EXE_list"), &["gizmo"], Path::new("."));
    assert_eq!(code, 2);
    assert!(err.starts_with("error: unknown kind `gizmo`"), "{err}");
}

#[test]
fn env_reports_the_runtime() {
    let (code, out, err) = run(env!("CARGO_BIN_EXE_env"), &[], Path::new("."));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("libtorch") && out.contains("2.11.0"), "{out}");
    assert!(out.contains("CUDA available"), "{out}");
    // The wheel ships libtorch_cuda.so, so the backend must load even where no GPU is present.
    assert!(out.contains("CUDA backend          loaded"), "{out}");
}

#[test]
fn params_table_matches_every_reproducible_cell() {
    let (code, out, err) = run(env!("CARGO_BIN_EXE_params"), &["--table"], Path::new("."));
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().skip(2).collect();
    assert!(rows.len() >= 18, "{out}");
    for row in &rows {
        let cols: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(cols[6] == "yes" || cols[6] == "definition only", "a cell does not match: {row}");
    }
    // The cells that follow exactly from the definitions (paper_tables.md), e.g. LoRA and Swin-B Partial-1.
    assert!(out.contains("| LoRA | ViT-B/16 | 0.29M | 294,912 | 294,912 | yes |"), "{out}");
    assert!(out.contains("| Partial-1 | Swin-B | 12.60M | 12,601,632 | 12,601,632 | yes |"), "{out}");
    assert!(out.contains("| SCT | ViT-B/16 | 0.11M | 111,744 | 111,744 | yes |"), "{out}");
    assert!(out.contains("| NOAH | ViT-B/16 | 0.43M | 320,330 | 320,330 | definition only |"), "{out}");
}
