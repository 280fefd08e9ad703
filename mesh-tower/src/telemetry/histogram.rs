//! Istio's metrics' cells: a fixed-bucket histogram and a counter, lock-free (an atomic per
//! bucket, the sum as `f64` bits), kept per core and summed when read, the bucket found by
//! binary search, readable for exporters other than the Prometheus text (OTLP).
//! prometheus-client's own histogram takes a lock and scans its buckets in order on every
//! observation, and its counter is one atomic every core contends for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// How many copies of each value the metrics keep: one per core the process may use (its
/// cgroup's quota counts), up to 8, so that threads recording the same series do not pass its
/// cache lines back and forth (a contended atomic costs tens of nanoseconds, several times
/// what the recording does otherwise). A series then takes about 1 KiB per shard.
fn shards() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, 8)
    })
}

/// The shard this thread records into (read once per request, passed to each metric).
pub(crate) fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % shards();
    }
    // A thread being torn down records into the first shard.
    MINE.try_with(|m| *m).unwrap_or(0)
}

/// A value on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter kept per shard, summed when read.
#[derive(Debug, Clone)]
pub(crate) struct ShardedCounter(Arc<[Padded]>);

impl Default for ShardedCounter {
    fn default() -> Self {
        Self((0..shards()).map(|_| Padded::default()).collect())
    }
}

impl ShardedCounter {
    /// Adds `v` in `shard` (from [`shard`]).
    pub(crate) fn inc_by(&self, shard: usize, v: u64) {
        // `shard()` is below the shard count: the slot exists.
        if let Some(p) = self.0.get(shard) {
            p.0.fetch_add(v, Ordering::Relaxed);
        }
    }

    /// The total.
    pub(crate) fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |t, p| t.wrapping_add(p.0.load(Ordering::Relaxed)))
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Buckets a histogram can have (Envoy's duration bounds are 19, plus the one past them).
const MAX_BUCKETS: usize = 20;

/// One shard of a histogram.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// Per bucket (the last one past every bound), not cumulative.
    counts: [AtomicU64; MAX_BUCKETS],
    sum_bits: AtomicU64,
}

/// One histogram's state, shared by its clones.
#[derive(Debug)]
struct Inner {
    /// Finite upper bounds, ascending (at most `MAX_BUCKETS - 1`).
    bounds: &'static [f64],
    shards: Box<[Shard]>,
}

/// A histogram over fixed bounds. Cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub(crate) struct FixedHistogram(Arc<Inner>);

/// What a histogram holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramPoint {
    /// Finite upper bounds, ascending.
    pub bounds: &'static [f64],
    /// Per bucket, not cumulative; one more than `bounds` (the last past every bound).
    pub counts: Vec<u64>,
    /// The sum of the observations.
    pub sum: f64,
    /// How many observations.
    pub count: u64,
}

impl FixedHistogram {
    /// An empty histogram over `bounds` (finite, ascending; bounds past the nineteenth are
    /// not kept).
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        let bounds = &bounds[..bounds.len().min(MAX_BUCKETS - 1)];
        Self(Arc::new(Inner {
            bounds,
            shards: (0..shards()).map(|_| Shard::default()).collect(),
        }))
    }

    /// Records `v` in `shard` (from [`shard`]; a NaN goes past every bound, as
    /// prometheus-client does).
    pub(crate) fn observe(&self, shard: usize, v: f64) {
        let i = if v.is_nan() {
            self.0.bounds.len()
        } else {
            self.0.bounds.partition_point(|b| *b < v)
        };
        let Some(shard) = self.0.shards.get(shard) else {
            return;
        };
        // `partition_point` ends at `bounds.len()`, below `MAX_BUCKETS`: the bucket exists.
        if let Some(c) = shard.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        // This thread's shard: the update is uncontended but for threads beyond the shards.
        let _ = shard
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// What it holds now.
    pub(crate) fn point(&self) -> HistogramPoint {
        let mut counts = vec![0u64; self.0.bounds.len() + 1];
        let mut sum = 0.0;
        for shard in &self.0.shards {
            for (total, c) in counts.iter_mut().zip(&shard.counts) {
                *total = total.wrapping_add(c.load(Ordering::Relaxed));
            }
            sum += f64::from_bits(shard.sum_bits.load(Ordering::Relaxed));
        }
        let count = counts.iter().fold(0u64, |t, c| t.wrapping_add(*c));
        HistogramPoint {
            bounds: self.0.bounds,
            counts,
            sum,
            count,
        }
    }
}

impl TypedMetric for FixedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for FixedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let p = self.point();
        let buckets: Vec<(f64, u64)> = p
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(p.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            p.sum,
            p.count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

// Istio's bounds fit the buckets a histogram keeps.
const _: () = assert!(mesh_core::telemetry::DURATION_BUCKETS_MS.len() < MAX_BUCKETS);
const _: () = assert!(mesh_core::telemetry::SIZE_BUCKETS.len() < MAX_BUCKETS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_they_fit() {
        static BOUNDS: [f64; 3] = [1.0, 5.0, 10.0];
        let h = FixedHistogram::new(&BOUNDS);
        for v in [0.5, 1.0, 1.5, 5.0, 11.0, f64::NAN] {
            h.observe(shard(), v);
        }
        let p = h.point();
        // 0.5 and 1.0 (bounds are inclusive), 1.5 and 5.0, none, 11.0 and NaN.
        assert_eq!(p.counts, [2, 2, 0, 2]);
        assert_eq!(p.count, 6);
        assert!(
            p.sum.is_nan(),
            "a NaN observation makes the sum NaN, as in Prometheus"
        );
        let h = FixedHistogram::new(&BOUNDS);
        h.observe(0, 2.0);
        h.observe(0, 3.5);
        assert_eq!(h.point().sum, 5.5);
    }

    #[test]
    fn threads_recording_the_same_series_lose_nothing() {
        static BOUNDS: [f64; 2] = [10.0, 100.0];
        let (h, c) = (FixedHistogram::new(&BOUNDS), ShardedCounter::default());
        // More threads than shards, so that some share one.
        std::thread::scope(|s| {
            for t in 0..(shards() * 2 + 1) as u64 {
                let (h, c) = (h.clone(), c.clone());
                s.spawn(move || {
                    for i in 0..1000u64 {
                        h.observe(shard(), if i % 2 == 0 { 5.0 } else { 50.0 });
                        c.inc_by(shard(), t + 1);
                    }
                });
            }
        });
        let threads = (shards() * 2 + 1) as u64;
        let p = h.point();
        assert_eq!(p.counts, [500 * threads, 500 * threads, 0]);
        assert_eq!(p.count, 1000 * threads);
        assert_eq!(p.sum, 27_500.0 * threads as f64);
        // Thread t added t + 1 a thousand times.
        assert_eq!(c.get(), 1000 * threads * (threads + 1) / 2);
    }

    #[test]
    fn bounds_past_the_buckets_kept_are_dropped_not_overrun() {
        static MANY: [f64; 25] = [
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0,
            17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0, 25.0,
        ];
        let h = FixedHistogram::new(&MANY);
        h.observe(0, 100.0);
        h.observe(0, 1.0);
        let p = h.point();
        assert_eq!(p.bounds.len(), MAX_BUCKETS - 1);
        assert_eq!(p.counts.len(), MAX_BUCKETS);
        assert_eq!((p.counts[0], p.counts[MAX_BUCKETS - 1], p.count), (1, 1, 2));
    }
}
