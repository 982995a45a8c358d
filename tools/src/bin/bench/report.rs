//! What every benchmark shares: timing statistics, the reference-side Python processes and the
//! tables (printed as they fill, written as Markdown at the end).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

/// Median of the timings (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The timings in a child's answer (`times_s`, seconds).
pub fn times(v: &serde_json::Value) -> Vec<f64> {
    v["times_s"].as_array().into_iter().flatten().filter_map(|t| t.as_f64()).collect()
}

/// The fastest of the timings in a child's answer, shown beside the median: on a shared machine it
/// is the figure least disturbed by other load.
pub fn min_time(v: &serde_json::Value) -> f64 {
    times(v).into_iter().fold(f64::INFINITY, f64::min)
}

/// `median (min)` in milliseconds.
pub fn ms(median_s: f64, min_s: f64) -> String {
    format!("{:.1} ({:.1})", median_s * 1e3, min_s * 1e3)
}

/// Runs `f` `warmup + repeats` times and returns the timings of the last `repeats` (seconds).
pub fn time_runs(warmup: usize, repeats: usize, mut f: impl FnMut()) -> Vec<f64> {
    let mut times = Vec::with_capacity(repeats);
    for i in 0..warmup + repeats.max(1) {
        let t = Instant::now();
        f();
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times
}

/// The repository's `benchmarks/` folder (the Python reference drivers).
pub fn benchmarks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../benchmarks")
}

/// The Python interpreter of the references (`VPETL_PYTHON`, else the worktree's `.venv`).
pub fn python() -> String {
    std::env::var("VPETL_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into())
}

/// Runs a command that prints one JSON object as its last line of output, and parses it.
pub fn run_json(mut cmd: Command, what: &str) -> anyhow::Result<serde_json::Value> {
    let out = cmd.output().with_context(|| format!("cannot start {what} ({:?})", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{what} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).with_context(|| {
        format!("{what} printed no JSON; its output:\n{stdout}{}", String::from_utf8_lossy(&out.stderr))
    })?;
    serde_json::from_str(last).with_context(|| format!("{what} printed invalid JSON: {last}"))
}

/// A field of a child's JSON answer.
pub fn field(v: &serde_json::Value, key: &str, what: &str) -> anyhow::Result<f64> {
    v[key].as_f64().with_context(|| format!("{what}: no number `{key}` in {v}"))
}

/// A benchmark table: a title, a settings line, columns and rows.
pub struct Table {
    pub title: String,
    pub settings: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    /// Starts a table and prints its title, settings and header.
    pub fn new(title: impl Into<String>, settings: impl Into<String>, header: &[&str]) -> Self {
        let t = Table {
            title: title.into(),
            settings: settings.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        };
        println!("\n## {}\n{}\n{}", t.title, t.settings, t.line(&t.header));
        t
    }

    fn line(&self, cells: &[String]) -> String {
        format!("| {} |", cells.join(" | "))
    }

    /// Adds a row and prints it at once (long runs show progress).
    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "a row of `{}` has the wrong number of cells", self.title);
        println!("{}", self.line(&cells));
        self.rows.push(cells);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("note: {note}");
        self.notes.push(note);
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n{}\n\n{}\n", self.title, self.settings, self.line(&self.header));
        s.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        for r in &self.rows {
            s.push_str(&self.line(r));
            s.push('\n');
        }
        for n in &self.notes {
            s.push_str(&format!("\n{n}\n"));
        }
        s
    }
}

/// Writes tables as one Markdown file, headed by the machine and load they ran under.
pub fn write_markdown(path: &Path, tables: &[Table]) -> anyhow::Result<()> {
    let mut s = format!("<!-- written by `tools/bench` -->\n{}\n\n", machine_line());
    for t in tables {
        s.push_str(&t.markdown());
        s.push('\n');
    }
    std::fs::write(path, s).with_context(|| format!("cannot write {}", path.display()))?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// CPU model, core count and the load average at the time of writing (the machine may be shared).
pub fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // Which MKL kernels ours ran matters for every matrix product: the reference's stock PyTorch
    // chooses by CPU vendor.
    format!("Machine: {cpu}, {cores} cores; {}. Our MKL kernels: chosen {}.", load_line(), vpetl_core::runtime::mkl_kernels())
}

/// `load average 0.52 0.61 0.70` (1, 5, 15 minutes), as `uptime` reports it.
pub fn load_line() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let parts: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("load average {}", parts.join(" "))
}
