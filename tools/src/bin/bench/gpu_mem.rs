//! Peak GPU memory of a child process, measured from outside by polling `nvidia-smi`, so that our
//! side and the reference are measured the same way (libtorch's allocator statistics are not
//! reachable through tch). The figure is the device's used memory above what was used before the
//! child started: the CUDA context, the caching allocator's reserve and the workspaces included.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

use anyhow::Context;

pub struct GpuMemPoll {
    child: Child,
    reader: JoinHandle<u64>,
    baseline: u64,
}

fn used_mib_once() -> anyhow::Result<u64> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"])
        .output()
        .context("cannot run nvidia-smi (needed for peak GPU memory)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().with_context(|| format!("nvidia-smi printed {text:?}, not a number of MiB"))
}

impl GpuMemPoll {
    /// Starts polling every 20 ms.
    pub fn start() -> anyhow::Result<Self> {
        let baseline = used_mib_once()?;
        let mut child = Command::new("nvidia-smi")
            .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0", "-lms", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nvidia-smi")?;
        let stdout = child.stdout.take().context("nvidia-smi has no stdout")?;
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).filter_map(|l| l.trim().parse::<u64>().ok()).max().unwrap_or(0)
        });
        Ok(GpuMemPoll { child, reader, baseline })
    }

    /// Stops polling; the peak in MiB above the baseline.
    pub fn stop(mut self) -> u64 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader.join().unwrap_or(0).saturating_sub(self.baseline)
    }
}
