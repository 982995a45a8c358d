//! Who this process is in a data-parallel job, from the launcher's environment: torchrun's variables
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, as `tools/dist_train` also
//! sets them) or, when `RANK` is unset, SLURM's (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`;
//! the master is `MASTER_ADDR` or the first host of `SLURM_JOB_NODELIST`), as mmengine's launchers.

use anyhow::{bail, Context};

#[derive(Clone, Debug, PartialEq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent hosts the TCPStore at the master address; every worker is then a client
    /// and keys live under `/worker/attempt_<restart>` (as torch.distributed's env:// does).
    pub agent_store: Option<u32>,
}

impl DistEnv {
    /// The job this process belongs to, or `None` when no launcher set one up.
    pub fn from_env() -> anyhow::Result<Option<DistEnv>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<DistEnv>> {
        let num = |k: &str| -> anyhow::Result<Option<usize>> {
            var(k).map(|v| v.trim().parse::<usize>().with_context(|| format!("environment variable {k}={v:?} is not a non-negative integer"))).transpose()
        };
        let (rank, world_size, local_rank, slurm) = match (num("RANK")?, num("WORLD_SIZE")?) {
            (None, None) => match (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
                (Some(r), Some(n)) if n > 1 => (r, n, num("SLURM_LOCALID")?.unwrap_or(0), true),
                _ => return Ok(None),
            },
            (Some(r), Some(n)) => (r, n, num("LOCAL_RANK")?.unwrap_or(0), false),
            (Some(_), None) => bail!("environment variable RANK is set but WORLD_SIZE is not"),
            (None, Some(_)) => bail!("environment variable WORLD_SIZE is set but RANK is not"),
        };
        if world_size == 0 {
            bail!("environment variable WORLD_SIZE is 0");
        }
        if rank >= world_size {
            bail!("RANK {rank} is not below WORLD_SIZE {world_size}");
        }
        let master_addr = match var("MASTER_ADDR") {
            Some(a) if !a.trim().is_empty() => a.trim().to_string(),
            _ if slurm => first_slurm_host(&var)?,
            _ => bail!("environment variable MASTER_ADDR is not set (RANK and WORLD_SIZE are)"),
        };
        let master_port = match var("MASTER_PORT") {
            Some(p) => p.trim().parse::<u16>().with_context(|| format!("environment variable MASTER_PORT={p:?} is not a port number"))?,
            None if slurm => 29500,
            None => bail!("environment variable MASTER_PORT is not set (RANK and WORLD_SIZE are)"),
        };
        let agent_store = if var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True") {
            Some(num("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0) as u32)
        } else {
            None
        };
        Ok(Some(DistEnv { rank, world_size, local_rank, master_addr, master_port, agent_store }))
    }
}

/// The first host of a SLURM node list, via `scontrol show hostnames` (which expands `n[01-04]`).
fn first_slurm_host(var: &impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let list = var("SLURM_JOB_NODELIST")
        .or_else(|| var("SLURM_NODELIST"))
        .context("under SLURM, set MASTER_ADDR or SLURM_JOB_NODELIST to find the master")?;
    let out = std::process::Command::new("scontrol")
        .args(["show", "hostnames", &list])
        .output()
        .with_context(|| format!("cannot run `scontrol show hostnames {list}`; set MASTER_ADDR"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .with_context(|| format!("`scontrol show hostnames {list}` printed no host; set MASTER_ADDR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> anyhow::Result<Option<DistEnv>> {
        let map: std::collections::HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn torchrun_variables() {
        assert_eq!(env(&[]).unwrap(), None);
        let e = env(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1234")]).unwrap().unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank, e.master_port, e.agent_store), (1, 2, 1, 1234, None));
        let e = env(&[("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1"), ("TORCHELASTIC_USE_AGENT_STORE", "True"), ("TORCHELASTIC_RESTART_COUNT", "2")]);
        assert_eq!(e.unwrap().unwrap().agent_store, Some(2));
    }

    #[test]
    fn errors_name_the_variable() {
        let e = env(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]).unwrap_err();
        assert!(e.to_string().contains("RANK 2"), "{e}");
        let e = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR"), "{e}");
        let e = env(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("RANK=\"x\""), "{e}");
        let e = env(&[("RANK", "0")]).unwrap_err();
        assert!(e.to_string().contains("WORLD_SIZE"), "{e}");
    }
}
