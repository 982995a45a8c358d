//! Data parallel on c10d (Gloo, CPU), run as users run it: `tools/dist_train 2`, torchrun's
//! environment, and the `train` binary alone for the same global batch.
//!
//! - Two ranks with batch 4 equal one process with batch 8: per-step losses, final trainable
//!   tensors and evaluation metrics (1e-5).
//! - A rank that dies, or hangs, makes the other exit non-zero within the configured timeout.
//!
//! The processes are few and small, the time-outs generous (2-core CI machines); every rendezvous
//! port comes from the OS (`dist_train` picks its own; the others get a port the test binds and
//! releases right away).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vpetl_tests::write_tiny_vtab;

const TRAIN: &str = env!("CARGO_BIN_EXE_train");
const DIST_TRAIN: &str = env!("CARGO_BIN_EXE_dist_train");

/// A tiny config without randomness outside the data order and augmentation (no dropout, no drop
/// path), so that data parallel can equal one process exactly.
fn config(root: &Path, epochs: u64, timeout_s: f64) -> String {
    format!(
        r#"seed: 5
experiment: {{task: test, dataset: toy}}
model:
  type: ImageClassifier
  backbone: {{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4}}
  head: {{type: LinearHead, num_classes: 3}}
  methods: [{{type: LoRA, rank: 2, alpha: 2}}]
train_dataloader:
  batch_size: 8
  num_workers: 1
  shuffle: true
  dataset: {{type: VTAB1k, root: '{root}', task: toy, num_classes: 3, split: train800, pipeline: [{{type: RandomHorizontalFlip}}]}}
val_dataloader:
  batch_size: 4
  num_workers: 1
  dataset: {{type: VTAB1k, root: '{root}', task: toy, num_classes: 3, split: test}}
val_evaluator: {{type: Accuracy, topk: [1, 2]}}
optim_wrapper:
  optimizer: {{type: AdamW, lr: 1.0e-2, weight_decay: 0.01}}
  clip_grad: {{max_norm: 5.0}}
param_scheduler: {{type: CosineLR, t_initial: 9, warmup_t: 1, warmup_lr_init: 1.0e-3, lr_min: 1.0e-4, by_epoch: false}}
train_cfg: {{max_epochs: {epochs}, val_interval: 1}}
env_cfg: {{dist_cfg: {{timeout: {timeout_s}}}}}
default_hooks:
  logger: {{interval: 1}}
  checkpoint: {{interval: 1, max_keep_ckpts: 1}}
"#,
        root = root.display()
    )
}

struct Setup {
    tmp: tempfile::TempDir,
    cfg: PathBuf,
}

/// 3 classes × 10 images: 24 training images (3 steps of 8 per epoch, 4 per rank), 30 test images.
fn setup(epochs: u64, timeout_s: f64) -> Setup {
    vpetl_tests::init();
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_vtab(tmp.path(), "toy", 3, 10);
    let cfg = tmp.path().join("toy.yaml");
    std::fs::write(&cfg, config(tmp.path(), epochs, timeout_s)).unwrap();
    Setup { tmp, cfg }
}

/// The dist-related variables a test run must not inherit.
const DIST_VARS: [&str; 8] = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "TORCHELASTIC_USE_AGENT_STORE", "SLURM_PROCID"];

fn command(bin: &str) -> Command {
    let mut c = Command::new(bin);
    for v in DIST_VARS {
        c.env_remove(v);
    }
    c.env("RUST_LOG", "info");
    c
}

fn run_ok(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

/// Per-step training losses from the work dir's scalars.json.
fn losses(work_dir: &Path) -> Vec<f64> {
    let scalars = std::fs::read_dir(work_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("vis_data/scalars.json"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no scalars.json under {}", work_dir.display()));
    std::fs::read_to_string(scalars)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("loss").and_then(|x| x.as_f64()))
        .collect()
}

fn results(work_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(work_dir.join("results.json")).unwrap()).unwrap()
}

fn trained(work_dir: &Path) -> Vec<(String, tch::Tensor)> {
    let mut v = tch::Tensor::read_safetensors(work_dir.join("method.safetensors")).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn assert_same_run(a: &Path, b: &Path, what: &str) {
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la.len(), 9, "3 epochs of 3 steps: {la:?}");
    assert_eq!(la.len(), lb.len(), "{what}: step counts differ");
    for (i, (x, y)) in la.iter().zip(&lb).enumerate() {
        assert!((x - y).abs() < 1e-5, "{what}: step {} loss {x} vs {y}", i + 1);
    }
    let (ta, tb) = (trained(a), trained(b));
    assert_eq!(ta.len(), tb.len());
    assert!(!ta.is_empty());
    for ((ka, va), (kb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(ka, kb);
        let diff = (va - vb).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{what}: `{ka}` differs by {diff}");
    }
    let (ra, rb) = (results(a), results(b));
    for key in ["value", "best"] {
        let (x, y) = (ra["metric"][key].as_f64().unwrap(), rb["metric"][key].as_f64().unwrap());
        assert!((x - y).abs() < 1e-5, "{what}: metric {key} {x} vs {y}");
    }
    assert_eq!(ra["epochs"], rb["epochs"]);
}

/// A port free right now, for torchrun's agent store.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

#[test]
fn two_gloo_ranks_equal_one_process_with_the_global_batch() {
    let s = setup(3, 120.0);
    let single = s.tmp.path().join("single");
    let mut c = command(TRAIN);
    c.arg(&s.cfg).arg("--work-dir").arg(&single);
    run_ok(c, "train (one process, batch 8)");

    let dist = s.tmp.path().join("dist");
    let mut c = command(DIST_TRAIN);
    c.arg("2").arg(&s.cfg).arg("--work-dir").arg(&dist).args(["--cfg-options", "train_dataloader.batch_size=4"]);
    let out = run_ok(c, "dist_train 2 (batch 4 per rank)");
    assert!(out.contains("[rank 0] ") && out.contains("[rank 1] "), "outputs are prefixed by rank:\n{out}");
    assert!(out.contains("data parallel over 2 ranks"), "{out}");
    assert_same_run(&single, &dist, "dist_train 2 vs one process");
    // Rank 0 alone writes: one timestamped run directory, one results.json.
    let runs = std::fs::read_dir(&dist).unwrap().filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).count();
    assert_eq!(runs, 1, "only rank 0 creates a run directory");

    // torchrun's environment (its agent hosts the store), when the venv has torchrun.
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/torchrun");
    if !torchrun.exists() {
        eprintln!("skipping the torchrun run: {} does not exist", torchrun.display());
        return;
    }
    let via_torchrun = s.tmp.path().join("torchrun");
    let mut c = command(torchrun.to_str().unwrap());
    c.args(["--nproc_per_node=2", "--master_addr=127.0.0.1", &format!("--master_port={}", free_port()), "--no-python", TRAIN])
        .arg(&s.cfg)
        .arg("--work-dir")
        .arg(&via_torchrun)
        .args(["--cfg-options", "train_dataloader.batch_size=4"]);
    run_ok(c, "torchrun --nproc_per_node=2 --no-python train");
    assert_same_run(&single, &via_torchrun, "torchrun vs one process");
}

/// Starts rank `rank` of 2 by hand (as a SLURM wrapper or torchrun would), output to a file.
fn start_rank(s: &Setup, rank: usize, port: u16, work_dir: &Path) -> (Child, PathBuf) {
    let log = s.tmp.path().join(format!("rank{rank}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let child = command(TRAIN)
        .arg(&s.cfg)
        .arg("--work-dir")
        .arg(work_dir)
        .args(["--cfg-options", "train_dataloader.batch_size=4"])
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    (child, log)
}

fn wait_for(log: &Path, text: &str, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::fs::read_to_string(log).unwrap_or_default().contains(text) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("`{text}` did not appear in {} within {limit:?}:\n{}", log.display(), std::fs::read_to_string(log).unwrap_or_default());
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Kills (or stops, for a hang) rank 1 once training runs; rank 0 must fail on its own within
/// the timeout, with a message that says what happened.
fn survivor_exits(signal: i32, timeout_s: f64) {
    // Many epochs: the run is still going when rank 1 goes.
    let s = setup(1000, timeout_s);
    let port = free_port();
    let wd = s.tmp.path().join("wd");
    let (mut r0, log0) = start_rank(&s, 0, port, &wd);
    let (mut r1, _log1) = start_rank(&s, 1, port, &wd);
    wait_for(&log0, "epoch 1 iter 1/3", Duration::from_secs(120));
    let gone = Instant::now();
    unsafe { libc::kill(r1.id() as i32, signal) };
    let status = wait_exit(&mut r0, Duration::from_secs_f64(timeout_s + 60.0));
    let took = gone.elapsed();
    let _ = r1.kill();
    let _ = r1.wait();
    let status = status.unwrap_or_else(|| {
        let _ = r0.kill();
        panic!("rank 0 still runs {took:?} after rank 1 got signal {signal}")
    });
    let log = std::fs::read_to_string(&log0).unwrap();
    assert!(!status.success(), "rank 0 exited successfully:\n{log}");
    assert!(log.contains("rank 0:") && log.contains("failed"), "the error names the rank and the failed collective:\n{log}");
    eprintln!("rank 0 exited {status} {took:?} after signal {signal} to rank 1");
}

#[test]
fn a_killed_rank_makes_the_other_exit_with_an_error() {
    survivor_exits(libc::SIGKILL, 30.0);
}

#[test]
fn a_hung_rank_makes_the_other_exit_within_the_timeout() {
    // SIGSTOP: rank 1 keeps its sockets open but never answers; only the timeout can end rank 0.
    survivor_exits(libc::SIGSTOP, 8.0);
}
