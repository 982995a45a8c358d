//! Work directories, laid out as mmengine's so that log tooling habits carry over:
//!
//! ```text
//! work_dir/<config file name>          merged config
//! work_dir/<ts>/<ts>.log               text log
//! work_dir/<ts>/vis_data/scalars.json  one JSON object per logged step or evaluation
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;

/// `--work-dir` wins, then `work_dir` in the config, then `work_dirs/<config name>`.
pub fn resolve(cli: Option<&Path>, from_config: Option<&Path>, config_path: &Path) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    if let Some(p) = from_config {
        return p.to_path_buf();
    }
    let stem = config_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    PathBuf::from("work_dirs").join(stem)
}

/// The folders and files of one run inside a work dir.
#[derive(Clone, Debug)]
pub struct RunDirs {
    pub work_dir: PathBuf,
    pub timestamp: String,
    pub log_dir: PathBuf,
    pub log_file: PathBuf,
    pub vis_dir: PathBuf,
    pub scalars_file: PathBuf,
}

impl RunDirs {
    /// Creates `work_dir/<timestamp>/vis_data`.
    pub fn create(work_dir: &Path) -> anyhow::Result<Self> {
        let timestamp = chrono::Local::now().format("%Y%m%d_%H%M%S").to_string();
        let log_dir = work_dir.join(&timestamp);
        let vis_dir = log_dir.join("vis_data");
        std::fs::create_dir_all(&vis_dir).with_context(|| format!("cannot create {}", vis_dir.display()))?;
        Ok(RunDirs {
            work_dir: work_dir.to_path_buf(),
            log_file: log_dir.join(format!("{timestamp}.log")),
            scalars_file: vis_dir.join("scalars.json"),
            timestamp,
            log_dir,
            vis_dir,
        })
    }

    /// Writes the merged config as `work_dir/<config file name>` (YAML), like mmengine's dump.
    pub fn dump_config(&self, config_path: &Path, merged_yaml: &str) -> anyhow::Result<PathBuf> {
        let name = config_path.file_name().map(|s| s.to_os_string()).unwrap_or_else(|| "config.yaml".into());
        let out = self.work_dir.join(name);
        write_atomic(&out, merged_yaml.as_bytes())?;
        Ok(out)
    }
}

/// Writes a file through a temporary sibling and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
