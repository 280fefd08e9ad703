//! The on-disk last-known-good cache: the raw resources of the last published snapshot, so a
//! process started while the control plane is unreachable can serve from them (marked stale).
//!
//! The file holds one length-delimited `DeltaDiscoveryResponse` per resource type (each
//! resource with its name and version) and is replaced atomically: written to a new temporary
//! file in the same directory (created exclusively, so never through a symlink someone left
//! there), synced, then renamed over the old one. A reader sees the old file or the new one,
//! never half of one. Writes are serialized, and one older than the last written is skipped.
//! The configuration is private to the workload: the file is 0600, and a directory the cache
//! creates is 0700.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::decode::ResourceType;

/// One cached resource: its type, version and raw value.
pub type CachedResource = (ResourceType, String, Any);

/// A cache file in a directory, keyed by the client's identity.
#[derive(Debug, Clone)]
pub struct DiskCache {
    path: PathBuf,
    /// Held while writing; the generation of the last write.
    writer: Arc<Mutex<u64>>,
    /// Older files are not served.
    max_age: Option<Duration>,
}

/// FNV-1a: a stable hash for the file name (std's hasher may change between releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl DiskCache {
    /// The cache for a client identified by `key` (server URI, node id and listeners) in `dir`.
    pub fn new(dir: impl AsRef<Path>, key: &str) -> Self {
        Self {
            path: dir
                .as_ref()
                .join(format!("mesh-xds-{:016x}.pb", fnv1a(key))),
            writer: Arc::default(),
            max_age: None,
        }
    }

    /// A file older than `max_age` (by its modification time) is not served: a workload
    /// would rather wait for the control plane than start from configuration that old.
    pub fn with_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age;
        self
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the cache; `Ok(None)` when there is none. A file that does not decode is an
    /// error naming it (the caller logs it and starts empty).
    pub fn load(&self) -> io::Result<Option<Vec<CachedResource>>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(max) = self.max_age {
            let modified = std::fs::metadata(&self.path)?.modified()?;
            let age = SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default();
            if age > max {
                return Err(io::Error::other(format!(
                    "{}: written {}s ago, older than the maximum age of {}s",
                    self.path.display(),
                    age.as_secs(),
                    max.as_secs()
                )));
            }
        }
        parse(&bytes).map(Some).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {why}", self.path.display()),
            )
        })
    }

    /// Replaces the cache with `resources`, atomically, unless a write of a later
    /// `generation` (a newer configuration) is already in.
    pub fn store(&self, generation: u64, resources: &[CachedResource]) -> io::Result<()> {
        let mut last = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if generation < *last {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        create_private_dir(dir)?;
        let mut bytes = Vec::new();
        for ty in ResourceType::ALL {
            let msg = DeltaDiscoveryResponse {
                type_url: ty.type_url().into(),
                resources: resources
                    .iter()
                    .filter(|r| r.0 == ty)
                    .map(|(_, version, any)| Resource {
                        version: version.clone(),
                        resource: Some(any.clone()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            msg.encode_length_delimited(&mut bytes)
                .map_err(io::Error::other)?;
        }
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("mesh-xds");
        let (tmp, mut f) = create_temp(dir, name)?;
        let written = f
            .write_all(&bytes)
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        *last = generation;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Decodes the contents of a cache file; the error says what is wrong with it.
pub fn parse(bytes: &[u8]) -> Result<Vec<CachedResource>, String> {
    let mut buf = bytes;
    let mut out = Vec::new();
    while !buf.is_empty() {
        let msg =
            DeltaDiscoveryResponse::decode_length_delimited(&mut buf).map_err(|e| e.to_string())?;
        let ty = ResourceType::from_type_url(&msg.type_url)
            .ok_or_else(|| format!("unknown type {:?}", msg.type_url))?;
        for r in msg.resources {
            if let Some(any) = r.resource {
                out.push((ty, r.version, any));
            }
        }
    }
    Ok(out)
}

/// Creates `dir` (and its parents) if missing, the new directories 0700; an existing one is
/// left as it is (it may be shared, like `/tmp`).
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Creates `path`, 0600; fails if anything, a symlink included, is there already.
fn open_exclusive(path: &Path) -> io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

/// A new temporary file next to the cache, 0600, created exclusively (`O_EXCL`: an existing
/// file or symlink of that name is never opened or followed).
fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, std::fs::File)> {
    let mut last = None;
    for _ in 0..8 {
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        match open_exclusive(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary file name")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path(), "unix:///etc/istio/proxy/XDS|node|ui:80");
        assert!(cache.load().unwrap().is_none());
        let resources = vec![
            (
                ResourceType::Listener,
                "v1".to_string(),
                testing::listener("ui:80", "r"),
            ),
            (
                ResourceType::Cluster,
                "v7".to_string(),
                testing::eds_cluster("c"),
            ),
        ];
        cache.store(1, &resources).unwrap();
        assert_eq!(cache.load().unwrap().unwrap(), resources);
        cache.store(2, &resources[1..]).unwrap();
        assert_eq!(cache.load().unwrap().unwrap(), resources[1..]);
        // Only the cache file is left: the temporary file was renamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // The name is stable for a key and differs between keys.
        assert_eq!(
            DiskCache::new(dir.path(), "k").path(),
            DiskCache::new(dir.path(), "k").path()
        );
        assert_ne!(
            DiskCache::new(dir.path(), "k").path(),
            DiskCache::new(dir.path(), "j").path()
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path(), "k");
        std::fs::write(cache.path(), b"\x05abc").unwrap();
        let e = cache.load().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string()
                .starts_with(&cache.path().display().to_string()),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn private_files_exclusive_temporaries_and_ordered_writes() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        let cache = DiskCache::new(&dir, "k");
        let one = vec![(
            ResourceType::Cluster,
            "v1".to_string(),
            testing::eds_cluster("one"),
        )];
        let two = vec![(
            ResourceType::Cluster,
            "v2".to_string(),
            testing::eds_cluster("two"),
        )];
        cache.store(2, &two).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(cache.path()), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        // A write of an older configuration, finishing after a newer one, changes nothing.
        cache.store(1, &one).unwrap();
        assert_eq!(cache.load().unwrap().unwrap(), two);
        // A symlink planted where a temporary goes is not followed: the open fails and the
        // file it points to stays untouched.
        let victim = root.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let planted = dir.join(".planted.tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let e = open_exclusive(&planted).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        cache.store(3, &one).unwrap();
        assert_eq!(cache.load().unwrap().unwrap(), one);
        // Concurrent writers never interleave: the file always decodes.
        let writers: Vec<_> = (4..12u64)
            .map(|g| {
                let (cache, r) = (
                    cache.clone(),
                    if g % 2 == 0 { one.clone() } else { two.clone() },
                );
                std::thread::spawn(move || cache.store(g, &r).unwrap())
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let last = cache.load().unwrap().unwrap();
        assert!(last == one || last == two);
    }

    #[test]
    fn a_cache_older_than_the_maximum_age_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let resources = vec![(
            ResourceType::Cluster,
            "v1".to_string(),
            testing::eds_cluster("c"),
        )];
        DiskCache::new(dir.path(), "k")
            .store(1, &resources)
            .unwrap();
        let fresh = DiskCache::new(dir.path(), "k").with_max_age(Some(Duration::from_secs(3600)));
        assert_eq!(fresh.load().unwrap().unwrap(), resources);
        let old = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(fresh.path())
            .unwrap()
            .set_modified(old)
            .unwrap();
        let e = fresh.load().unwrap_err();
        assert!(
            e.to_string()
                .ends_with("older than the maximum age of 3600s"),
            "{e}"
        );
    }
}
