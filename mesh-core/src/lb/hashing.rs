//! Consistent-hash pickers: ring hash (gRFC A42 / Envoy) and Maglev (Envoy).

use std::fmt::Write as _;
use std::net::SocketAddr;

use xxhash_rust::xxh64::xxh64;

/// An endpoint on a consistent-hash table: its index, weight and address (the hash key).
pub(crate) type HashTarget = (u32, u64, SocketAddr);

/// A ring of `XXH64("{ip:port}_{i}")` points; a request hash maps to the first point at or
/// after it, wrapping around.
#[derive(Debug)]
pub(crate) struct RingHash {
    hashes: Box<[u64]>,
    owners: Box<[u32]>,
}

impl RingHash {
    pub(crate) fn new(targets: &[HashTarget], min_ring: u64, max_ring: u64) -> Self {
        let total: f64 = targets.iter().map(|t| t.1 as f64).sum();
        let min_norm = targets
            .iter()
            .map(|t| t.1 as f64 / total)
            .fold(f64::INFINITY, f64::min);
        let scale = ((min_norm * min_ring as f64).ceil() / min_norm).min(max_ring as f64);
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(scale.ceil() as usize + targets.len());
        let mut key = String::with_capacity(64);
        let (mut current, mut target) = (0f64, 0f64);
        for &(index, weight, address) in targets {
            target += scale * weight as f64 / total;
            let mut i = 0u64;
            while current < target {
                key.clear();
                let _ = write!(key, "{address}_{i}");
                points.push((xxh64(key.as_bytes(), 0), index));
                current += 1.0;
                i += 1;
            }
        }
        points.sort_unstable();
        let (hashes, owners) = points.into_iter().unzip::<_, _, Vec<_>, Vec<_>>();
        Self {
            hashes: hashes.into(),
            owners: owners.into(),
        }
    }

    #[inline]
    pub(crate) fn pick(&self, hash: u64) -> u32 {
        let i = self.hashes.partition_point(|&h| h < hash);
        self.owners[if i == self.hashes.len() { 0 } else { i }]
    }

    /// Number of points on the ring.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }
}

/// A Maglev lookup table: each endpoint fills slots along its own permutation of the table, in
/// turns proportional to its weight, so that every slot has one owner and a change of one
/// endpoint moves few slots.
#[derive(Debug)]
pub(crate) struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// `table_size` must be prime (validated with the cluster).
    /// Entries in the table.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn new(targets: &[HashTarget], table_size: u64) -> Self {
        let m = table_size;
        let max_weight = targets.iter().map(|t| t.1).max().unwrap_or(1) as f64;
        struct Perm {
            offset: u64,
            skip: u64,
            next: u64,
            share: f64,
            credit: f64,
            owner: u32,
        }
        let mut perms: Vec<Perm> = targets
            .iter()
            .map(|&(index, weight, address)| {
                let key = address.to_string();
                Perm {
                    offset: xxh64(key.as_bytes(), 0) % m,
                    skip: xxh64(key.as_bytes(), 1) % (m - 1) + 1,
                    next: 0,
                    share: weight as f64 / max_weight,
                    credit: 0.0,
                    owner: index,
                }
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; m as usize];
        let mut filled = 0u64;
        while filled < m {
            for p in perms.iter_mut() {
                p.credit += p.share;
                if p.credit < 1.0 {
                    continue;
                }
                p.credit -= 1.0;
                loop {
                    let slot = ((p.offset + p.next * p.skip) % m) as usize;
                    p.next += 1;
                    if table[slot] == EMPTY {
                        table[slot] = p.owner;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break;
                }
            }
        }
        Self {
            table: table.into(),
        }
    }

    #[inline]
    pub(crate) fn pick(&self, hash: u64) -> u32 {
        self.table[(hash % self.table.len() as u64) as usize]
    }
}
