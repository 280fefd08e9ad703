//! gRFC A29's `file_watcher` certificate provider: the identity and roots istio-agent writes
//! (`cert-chain.pem`, `key.pem`, `root-cert.pem`), re-read when they change.
//!
//! The files are read at most every second (and at least every `refresh_interval`), and parsed
//! only when their bytes changed. istio-agent writes the key and the chain as two files, so a
//! reader can see a new key next to the old chain: that is a moment of rotation, not an error,
//! and the last good pair stays published until a matching pair is read. A file that cannot be
//! read or parsed never replaces what was good; the error is published next to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::ProviderCerts;

use super::{CertificatePublisher, PemError, parse_identity, parse_roots};
use crate::bootstrap::FileWatcherConfig;

/// How often the files are looked at, unless `refresh_interval` is shorter.
pub const POLL: Duration = Duration::from_secs(1);

/// One `file_watcher` instance.
pub struct FileWatcher {
    name: String,
    config: FileWatcherConfig,
    publisher: CertificatePublisher,
    seen: [Option<Vec<u8>>; 3],
}

impl FileWatcher {
    /// A watcher publishing instance `name`'s files through `publisher`.
    pub fn new(name: &str, config: FileWatcherConfig, publisher: CertificatePublisher) -> Self {
        Self {
            name: name.into(),
            config,
            publisher,
            seen: Default::default(),
        }
    }

    /// Reads the files once and publishes what changed.
    pub fn poll(&mut self) {
        fn read(p: &Option<PathBuf>) -> Option<(&Path, std::io::Result<Vec<u8>>)> {
            p.as_deref().map(|p| (p, std::fs::read(p)))
        }
        let files = [
            read(&self.config.certificate_file),
            read(&self.config.private_key_file),
            read(&self.config.ca_certificate_file),
        ];
        let bytes: [Option<Vec<u8>>; 3] = files
            .each_ref()
            .map(|f| f.as_ref().and_then(|(_, r)| r.as_ref().ok().cloned()));
        let unreadable = files
            .iter()
            .flatten()
            .find_map(|(p, r)| r.as_ref().err().map(|e| format!("{}: {e}", p.display())));
        if unreadable.is_none() && bytes == self.seen {
            return;
        }
        let mut errors: Vec<String> = unreadable.into_iter().collect();
        let mut identity = None;
        if let (Some((cp, _)), Some((kp, _)), Some(chain), Some(key)) =
            (&files[0], &files[1], &bytes[0], &bytes[1])
        {
            match parse_identity(chain, &shown(cp), key, &shown(kp)) {
                Ok(cert) => identity = Some(Arc::new(cert)),
                Err(e @ PemError::KeyMismatch(_)) => errors.push(format!(
                    "{e} (a rotation in progress?); keeping the last matching pair"
                )),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let mut roots = None;
        if let (Some((rp, _)), Some(pem)) = (&files[2], &bytes[2]) {
            match parse_roots(pem, &shown(rp)) {
                Ok(r) => roots = Some(Arc::new(r)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        if let Some(e) = &error {
            tracing::warn!(provider = %self.name, "certificate files: {e}");
        }
        self.seen = bytes;
        let name = self.name.clone();
        self.publisher.update(&name, |p: &mut ProviderCerts| {
            if let Some(id) = identity
                && p.identity.as_ref().map(|c| c.leaf()) != Some(id.leaf())
            {
                tracing::info!(provider = %name, serial = id.serial(), spiffe_id = ?id.spiffe_id(), "workload certificate loaded");
                p.identity = Some(id);
            }
            if let Some(r) = roots
                && p.roots.as_deref() != Some(&*r)
            {
                p.roots = Some(r);
            }
            p.last_error = error;
        });
    }

    /// Polls forever (the client aborts the task when it stops), reading the files on the
    /// blocking pool.
    pub async fn run(mut self) {
        let every = self
            .config
            .refresh_interval
            .min(POLL)
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self = match tokio::task::spawn_blocking(move || {
                self.poll();
                self
            })
            .await
            {
                Ok(me) => me,
                Err(_) => return,
            };
        }
    }
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}
