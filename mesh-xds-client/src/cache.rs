//! The on-disk last-known-good cache: the raw resources of the last published snapshot, so a
//! process started while the control plane is unreachable can serve from them (marked stale).
//!
//! The file holds one length-delimited `DeltaDiscoveryResponse` per resource type (each
//! resource with its name and version) and is replaced atomically: written to a temporary file
//! in the same directory, synced, then renamed over the old one. A reader sees the old file or
//! the new one, never half of one.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

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
        }
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
        let corrupt = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {why}", self.path.display()),
            )
        };
        let mut buf = &bytes[..];
        let mut out = Vec::new();
        while !buf.is_empty() {
            let msg = DeltaDiscoveryResponse::decode_length_delimited(&mut buf)
                .map_err(|e| corrupt(e.to_string()))?;
            let ty = ResourceType::from_type_url(&msg.type_url)
                .ok_or_else(|| corrupt(format!("unknown type {:?}", msg.type_url)))?;
            for r in msg.resources {
                if let Some(any) = r.resource {
                    out.push((ty, r.version, any));
                }
            }
        }
        Ok(Some(out))
    }

    /// Replaces the cache with `resources`, atomically.
    pub fn store(&self, resources: &[CachedResource]) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
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
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("mesh-xds"),
            std::process::id()
        ));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
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
        cache.store(&resources).unwrap();
        assert_eq!(cache.load().unwrap().unwrap(), resources);
        cache.store(&resources[1..]).unwrap();
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
}
