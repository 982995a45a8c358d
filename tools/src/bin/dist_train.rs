//! `tools/dist_train N CONFIG [train args]`: data-parallel training on this machine, one `train`
//! process per device (torchrun's local launch): a free rendezvous port, `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` per process, each output line prefixed with its rank,
//! and the first rank to fail ends the others (its exit status becomes this launcher's).
//! `MASTER_PORT` from the environment is used when set.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context};

fn usage() -> ! {
    eprintln!("usage: tools/dist_train N CONFIG [train arguments...]\n  starts N `train` processes (ranks 0..N-1) that train CONFIG data-parallel");
    std::process::exit(2)
}

/// A port the OS reports free now (bound and released; torchrun picks its port the same way).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("cannot bind a local port for the rendezvous")?;
    Ok(l.local_addr()?.port())
}

/// Copies a child's stream to ours line by line, each line prefixed.
fn relay(stream: impl std::io::Read + Send + 'static, prefix: String, to_stderr: bool) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line);
            if to_stderr {
                let _ = writeln!(std::io::stderr().lock(), "{prefix}{text}");
            } else {
                let _ = writeln!(std::io::stdout().lock(), "{prefix}{text}");
            }
        }
    })
}

fn terminate(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        // SIGTERM first so that a rank can exit on its own, then SIGKILL what is left.
        // SAFETY: signals a child we started and have not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for (_, c) in children.iter_mut() {
        while std::time::Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn run() -> anyhow::Result<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args[0] == "-h" || args[0] == "--help" {
        usage();
    }
    let n: usize = args[0].parse().with_context(|| format!("N: `{}` is not a number of processes", args[0]))?;
    if n == 0 {
        bail!("N: at least one process is needed");
    }
    let train: PathBuf = std::env::current_exe()?.parent().context("no directory for the train binary")?.join("train");
    if !train.exists() {
        bail!("{} does not exist: build the tools (cargo build -p vpetl-tools --bins)", train.display());
    }
    let port = match std::env::var("MASTER_PORT") {
        Ok(p) => p.parse::<u16>().with_context(|| format!("MASTER_PORT={p:?} is not a port number"))?,
        Err(_) => free_port()?,
    };
    let addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    eprintln!("dist_train: {n} processes, rendezvous {addr}:{port}");
    let mut children = Vec::new();
    let mut relays = Vec::new();
    for rank in 0..n {
        let mut cmd = Command::new(&train);
        cmd.args(&args[1..])
            .env("MASTER_ADDR", &addr)
            .env("MASTER_PORT", port.to_string())
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl only, between fork and exec: the rank dies with this launcher.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                terminate(&mut children);
                bail!("cannot start {} for rank {rank}: {e}", train.display());
            }
        };
        relays.push(relay(child.stdout.take().expect("piped"), format!("[rank {rank}] "), false));
        relays.push(relay(child.stderr.take().expect("piped"), format!("[rank {rank}] "), true));
        children.push((rank, child));
    }
    // Poll: the first non-zero exit ends the job.
    let mut code = 0;
    let mut running: Vec<(usize, Child)> = children;
    while !running.is_empty() {
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait()? {
                Some(status) => {
                    let (rank, _) = running.remove(i);
                    if !status.success() {
                        let c = status.code().unwrap_or(1);
                        eprintln!("dist_train: rank {rank} failed ({status}); stopping the other ranks");
                        terminate(&mut running);
                        code = if c == 0 { 1 } else { c };
                        running.clear();
                        break;
                    }
                }
                None => i += 1,
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    for r in relays {
        let _ = r.join();
    }
    Ok(code)
}

fn main() -> ExitCode {
    match run() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(c) => ExitCode::from(c.clamp(1, 255) as u8),
        Err(e) => vpetl_tools::exit_with(e),
    }
}
