//! A fixed-bucket histogram for Istio's metrics: lock-free (an atomic per bucket, the sum
//! as `f64` bits), its bucket found by binary search, readable for exporters other than the
//! Prometheus text (OTLP). prometheus-client's own takes a lock and scans its buckets in order
//! on every observation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// One histogram's state, shared by its clones.
#[derive(Debug)]
struct Inner {
    /// Finite upper bounds, ascending.
    bounds: &'static [f64],
    /// Per bucket (the last one past every bound), not cumulative.
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
    count: AtomicU64,
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
    /// An empty histogram over `bounds` (finite, ascending).
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(Inner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }))
    }

    /// Records `v` (a NaN goes past every bound, as prometheus-client does).
    pub(crate) fn observe(&self, v: f64) {
        let i = if v.is_nan() {
            self.0.bounds.len()
        } else {
            self.0.bounds.partition_point(|b| *b < v)
        };
        // `partition_point` ends at `bounds.len()`: the last bucket exists.
        if let Some(c) = self.0.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.0.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .0
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// What it holds now.
    pub(crate) fn point(&self) -> HistogramPoint {
        HistogramPoint {
            bounds: self.0.bounds,
            counts: self
                .0
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: f64::from_bits(self.0.sum_bits.load(Ordering::Relaxed)),
            count: self.0.count.load(Ordering::Relaxed),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_they_fit() {
        static BOUNDS: [f64; 3] = [1.0, 5.0, 10.0];
        let h = FixedHistogram::new(&BOUNDS);
        for v in [0.5, 1.0, 1.5, 5.0, 11.0, f64::NAN] {
            h.observe(v);
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
        h.observe(2.0);
        h.observe(3.5);
        assert_eq!(h.point().sum, 5.5);
    }
}
