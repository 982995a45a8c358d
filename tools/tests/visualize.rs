//! `tools/visualize` and `tools/report --plot` on the quickstart, run as users run them: each picture
//! is a valid PNG of the requested size that is not blank; errors name what is wrong.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).current_dir(repo()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn visualize(args: &[&str]) -> (i32, String, String) {
    run(env!("CARGO_BIN_EXE_visualize"), args)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One short quickstart LoRA run (1 epoch) shared by the tests: a checkpoint, scalars and results.
struct Trained {
    _dir: tempfile::TempDir,
    work_dir: PathBuf,
    checkpoint: PathBuf,
}

fn trained() -> &'static Trained {
    static RUN: OnceLock<Trained> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let work_dir = dir.path().join("lora");
        let cfg = repo().join("configs/quickstart/lora_vit_tiny_mnist1k.yaml");
        let (code, _, err) = run(
            env!("CARGO_BIN_EXE_train"),
            &[s(&cfg), "--work-dir", s(&work_dir), "--cfg-options", "train_cfg.max_epochs=1", "train_cfg.val_interval=1", "default_hooks.logger.interval=5"],
        );
        assert_eq!(code, 0, "{err}");
        let checkpoint = std::fs::read_dir(&work_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "safetensors") && p.file_name().unwrap().to_string_lossy().starts_with("epoch"))
            .unwrap_or_else(|| panic!("no epoch checkpoint in {}", work_dir.display()));
        Trained { _dir: dir, work_dir, checkpoint }
    })
}

/// Decodes the PNG, checks its size and that it is not one flat colour.
fn check_png(path: &Path, size: (u32, u32)) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", path.display());
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), size, "{}", path.display());
    let first = *img.get_pixel(0, 0);
    let differing = img.pixels().filter(|p| **p != first).count();
    assert!(differing > (size.0 * size.1 / 50) as usize, "{} is nearly blank ({differing} pixels differ)", path.display());
    // Text is drawn: dark pixels (black labels) exist.
    assert!(img.pixels().any(|p| p.0.iter().all(|&c| c < 60)), "{} has no dark (text) pixels", path.display());
}

fn quickstart(name: &str) -> String {
    repo().join("configs/quickstart").join(name).display().to_string()
}

#[test]
fn attention_of_two_checkpoints_side_by_side() {
    let t = trained();
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("attention.png");
    let pretrained = repo().join("assets/quickstart/vit_tiny_fashion_mnist.safetensors");
    let (code, stdout, err) = visualize(&[
        "attention",
        "--config", &quickstart("linear_probe_vit_tiny_mnist1k.yaml"), "--checkpoint", s(&pretrained), "--label", "pretrained",
        "--config", &quickstart("lora_vit_tiny_mnist1k.yaml"), "--checkpoint", s(&t.checkpoint), "--label", "LoRA",
        "--images", "2", "--blocks", "0,3", "--out", s(&png), "--size", "900x700",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("wrote"), "{stdout}");
    check_png(&png, (900, 700));
}

#[test]
fn attention_of_one_head_without_rollout() {
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("head.png");
    let (code, _, err) = visualize(&[
        "attention", "--config", &quickstart("lora_vit_tiny_mnist1k.yaml"), "--indices", "0,250", "--head", "1", "--no-rollout",
        "--out", s(&png), "--size", "640x480",
    ]);
    assert_eq!(code, 0, "{err}");
    check_png(&png, (640, 480));
}

#[test]
fn attention_names_a_missing_block_and_head() {
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("x.png");
    let cfg = quickstart("lora_vit_tiny_mnist1k.yaml");
    let (code, _, err) = visualize(&["attention", "--config", &cfg, "--blocks", "40", "--out", s(&png)]);
    assert_eq!(code, 2);
    assert!(err.contains("block 40 does not exist"), "{err}");
    let (code, _, err) = visualize(&["attention", "--config", &cfg, "--head", "99", "--out", s(&png)]);
    assert_eq!(code, 2);
    assert!(err.contains("head 99 does not exist"), "{err}");
    assert!(!png.exists());
}

/// A two-epoch run of the quickstart's tiny Swin (narrowed to width 16 to keep the test short):
/// its window attention for both epochs' checkpoints side by side, chosen stages and blocks, one
/// head; then every stage's last block; errors name the stage or block.
#[test]
fn swin_window_attention_of_two_checkpoints_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let work_dir = dir.path().join("swin");
    let cfg = quickstart("full_ft_swin_tiny_mnist1k.yaml");
    let narrow = "model.backbone.embed_dim=16";
    let (code, _, err) = run(
        env!("CARGO_BIN_EXE_train"),
        &[
            &cfg, "--work-dir", s(&work_dir), "--cfg-options", "train_cfg.max_epochs=2", "train_cfg.val_interval=2",
            "default_hooks.checkpoint.interval=1", "default_hooks.checkpoint.max_keep_ckpts=2", "default_hooks.logger.interval=10", narrow,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (e1, e2) = (work_dir.join("epoch_1.safetensors"), work_dir.join("epoch_2.safetensors"));
    assert!(e1.exists() && e2.exists(), "{:?}", std::fs::read_dir(&work_dir).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>());
    let png = dir.path().join("swin.png");
    let (code, stdout, err) = visualize(&[
        "attention",
        "--config", &cfg, "--checkpoint", s(&e1), "--label", "epoch 1",
        "--config", &cfg, "--checkpoint", s(&e2), "--label", "epoch 2",
        "--stages", "0,1", "--blocks", "0,1", "--head", "1", "--images", "2", "--cfg-options", narrow,
        "--out", s(&png), "--size", "900x700",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("wrote"), "{stdout}");
    check_png(&png, (900, 700));
    let (code, _, err) = visualize(&["attention", "--config", &cfg, "--cfg-options", narrow, "--indices", "3", "--out", s(&png), "--size", "640x300"]);
    assert_eq!(code, 0, "{err}");
    check_png(&png, (640, 300));
    let (code, _, err) = visualize(&["attention", "--config", &cfg, "--cfg-options", narrow, "--stages", "7", "--out", s(&png)]);
    assert_eq!(code, 2);
    assert!(err.contains("stage 7 does not exist (the backbone has 3 stages"), "{err}");
    let (code, _, err) = visualize(&["attention", "--config", &cfg, "--cfg-options", narrow, "--blocks", "5", "--out", s(&png)]);
    assert_eq!(code, 2);
    assert!(err.contains("block 5 does not exist in stage 0"), "{err}");
    let (code, _, err) = visualize(&["attention", "--config", &quickstart("lora_vit_tiny_mnist1k.yaml"), "--stages", "0", "--out", s(&png)]);
    assert_eq!(code, 2);
    assert!(err.contains("--stages selects stages of a hierarchical backbone"), "{err}");
}

#[test]
fn tsne_writes_png_and_csv() {
    let t = trained();
    let out = tempfile::tempdir().unwrap();
    let (png, csv) = (out.path().join("tsne.png"), out.path().join("tsne.csv"));
    let (code, stdout, err) = visualize(&[
        "tsne", "--config", &quickstart("lora_vit_tiny_mnist1k.yaml"), "--checkpoint", s(&t.checkpoint),
        "--max-samples", "80", "--epochs", "300", "--out", s(&png), "--csv", s(&csv), "--size", "700x600",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("1-NN label agreement"), "{stdout}");
    check_png(&png, (700, 600));
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "index,label,x,y");
    assert_eq!(lines.len(), 81);
    let labels: std::collections::BTreeSet<&str> = lines[1..].iter().map(|l| l.split(',').nth(1).unwrap()).collect();
    assert_eq!(labels.len(), 10, "samples are spread over the classes");
    assert!(lines[1..].iter().all(|l| l.split(',').skip(2).all(|v| v.parse::<f32>().unwrap().is_finite())));
}

#[test]
fn tsne_of_a_block() {
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("tsne_block.png");
    let (code, _, err) = visualize(&[
        "tsne", "--config", &quickstart("linear_probe_vit_tiny_mnist1k.yaml"), "--block", "2", "--max-samples", "40", "--epochs", "250",
        "--out", s(&png), "--size", "500x400",
    ]);
    assert_eq!(code, 0, "{err}");
    check_png(&png, (500, 400));
}

#[test]
fn curves_of_a_run_and_an_unknown_key() {
    let t = trained();
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("curves.png");
    let (code, _, err) = visualize(&["curves", s(&t.work_dir), s(&t.work_dir), "--label", "a", "--label", "b", "--out", s(&png), "--size", "800x900"]);
    assert_eq!(code, 0, "{err}");
    check_png(&png, (800, 900));
    let (code, _, err) = visualize(&["curves", s(&t.work_dir), "--keys", "los", "--out", s(&png)]);
    assert_eq!(code, 2);
    assert!(err.contains("no run logged `los`") && err.contains("loss"), "{err}");
}

#[test]
fn results_plot_and_report_plot() {
    let t = trained();
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("results.png");
    let (code, _, err) = visualize(&["results", s(&t.work_dir), "--out", s(&png), "--size", "1000x450"]);
    assert_eq!(code, 0, "{err}");
    check_png(&png, (1000, 450));
    let report_png = out.path().join("report.png");
    let (code, stdout, err) = run(env!("CARGO_BIN_EXE_report"), &[s(&t.work_dir), "--plot", s(&report_png), "--size", "900x400"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("| LoRA |"), "{stdout}");
    check_png(&report_png, (900, 400));
}

#[test]
fn a_bad_size_is_named() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = visualize(&["results", s(out.path()), "--out", "x.png", "--size", "800by600"]);
    assert_eq!(code, 2);
    assert!(err.contains("800by600"), "{err}");
    let (code, _, err) = visualize(&["results", s(out.path()), "--out", "x.png"]);
    assert_eq!(code, 2);
    assert!(err.contains("no results.json under"), "{err}");
}
