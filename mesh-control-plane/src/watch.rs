//! Watching the configuration directory: re-translate on change (debounced), serve the new
//! resources, and keep the last good ones when an edit is invalid.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::{ConfigError, IstioConfig, yaml_files};
use crate::server::ControlPlane;
use crate::translate::{Resources, translate};

/// What happened after a change.
#[derive(Debug, Clone)]
pub enum Reload {
    /// New resources are served as this version.
    Served {
        /// The new version.
        version: u64,
        /// Warnings from the translation.
        warnings: Vec<String>,
    },
    /// The edit is invalid; the previous configuration is still served.
    Rejected(ConfigError),
}

/// Loads and translates a directory.
pub fn load(dir: &Path) -> Result<Resources, ConfigError> {
    translate(&IstioConfig::load_dir(dir)?)
}

/// A fingerprint of the directory: each YAML file's name, size and modification time.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let (len, modified) = (
                m.as_ref().map_or(0, |m| m.len()),
                m.and_then(|m| m.modified().ok()),
            );
            (p, len, modified)
        })
        .collect()
}

/// Polls `dir` every `interval`; once a change has been stable for one more interval, loads it
/// and serves it (or reports why not). Runs until the task is dropped.
pub async fn watch_dir(
    dir: PathBuf,
    cp: ControlPlane,
    interval: Duration,
    mut report: impl FnMut(Reload) + Send,
) {
    let mut last = fingerprint(&dir);
    let mut pending: Option<Vec<(PathBuf, u64, Option<SystemTime>)>> = None;
    // Content, not only metadata: an edit within the same second and size must not be missed.
    let mut last_content = contents(&dir);
    loop {
        tokio::time::sleep(interval).await;
        let now = fingerprint(&dir);
        let content = contents(&dir);
        if now == last && content == last_content {
            pending = None;
            continue;
        }
        if pending.as_ref() != Some(&now) {
            // Debounce: wait for the directory to settle.
            pending = Some(now);
            continue;
        }
        last = pending.take().unwrap_or_default();
        last_content = content;
        match load(&dir) {
            Ok(r) => {
                let warnings = r.warnings.clone();
                cp.update(r);
                report(Reload::Served {
                    version: cp.served().version,
                    warnings,
                });
            }
            Err(e) => report(Reload::Rejected(e)),
        }
    }
}

fn contents(dir: &Path) -> Vec<u8> {
    yaml_files(dir)
        .unwrap_or_default()
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap_or_default())
        .collect()
}
