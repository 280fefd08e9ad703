use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::hashing::{Maglev, RingHash};
use super::schedule::{RoundRobin, WeightedRandom};
use super::*;
use crate::endpoint::{
    ClusterLoadAssignmentSpec, EndpointSpec, HealthStatus, Locality, LocalityEndpointsSpec,
};

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080))
}

fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// One locality per `(priority, zone, weight, endpoint weights)`; addresses are numbered in order.
fn set(groups: &[(u32, &str, Option<u32>, &[u32])]) -> EndpointSet {
    let mut n = 0;
    let localities = groups
        .iter()
        .map(|(priority, zone, weight, eps)| LocalityEndpointsSpec {
            locality: Locality {
                zone: zone.to_string(),
                ..Default::default()
            },
            weight: *weight,
            priority: *priority,
            endpoints: eps
                .iter()
                .map(|w| {
                    n += 1;
                    EndpointSpec {
                        weight: Some(*w),
                        ..EndpointSpec::new(addr(n))
                    }
                })
                .collect(),
        })
        .collect();
    EndpointSet::new(&ClusterLoadAssignmentSpec {
        cluster_name: "c".into(),
        localities,
        ..Default::default()
    })
    .unwrap()
}

fn counts(picker: &ClusterPicker, n: usize, seed: u64) -> HashMap<usize, usize> {
    let mut r = rng(seed);
    let mut out = HashMap::new();
    for _ in 0..n {
        *out.entry(picker.pick(None, &mut r).unwrap()).or_default() += 1;
    }
    out
}

fn all(_: usize) -> bool {
    true
}

#[test]
fn round_robin_cycles_through_equal_endpoints() {
    let s = set(&[(0, "a", None, &[1; 5])]);
    let p = ClusterPicker::new(
        &LbConfig::RoundRobin,
        &s,
        PickerOptions::default(),
        all,
        None,
        3,
    );
    let mut r = rng(0);
    let picks: Vec<usize> = (0..10).map(|_| p.pick(None, &mut r).unwrap()).collect();
    assert_eq!(picks, [3, 4, 0, 1, 2, 3, 4, 0, 1, 2]);
}

/// In any window of `k` consecutive picks (cyclically), a target of weight `w` out of `S`
/// appears at most `⌈k·w/S⌉ + 1` times: no bursts.
fn assert_smooth(weights: &[u32]) {
    let targets: Vec<(u32, u32)> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| (i as u32, w))
        .collect();
    let rr = RoundRobin::new(&targets, 0);
    let total: u32 = weights.iter().sum();
    let cycle: Vec<u32> = (0..total).map(|_| rr.pick()).collect();
    for (i, &w) in weights.iter().enumerate() {
        assert_eq!(
            cycle.iter().filter(|&&t| t == i as u32).count(),
            w as usize,
            "{weights:?}"
        );
    }
    for k in 1..=total as usize {
        for start in 0..total as usize {
            let mut seen = vec![0u32; weights.len()];
            for j in 0..k {
                seen[cycle[(start + j) % total as usize] as usize] += 1;
            }
            for (i, &w) in weights.iter().enumerate() {
                let bound = (k as u32 * w).div_ceil(total) + 1;
                assert!(
                    seen[i] <= bound,
                    "weights {weights:?}: target {i} seen {} times in {k} picks from {start}",
                    seen[i]
                );
            }
        }
    }
}

#[test]
fn weighted_round_robin_is_smooth() {
    assert_smooth(&[5, 1, 1]);
    assert_smooth(&[90, 10]);
    assert_smooth(&[3, 3, 1, 7, 2]);
}

proptest! {
    #![proptest_config(crate::test_support::proptest_config(40))]

    #[test]
    fn weighted_round_robin_is_smooth_for_any_weights(weights in proptest::collection::vec(1u32..12, 2..7)) {
        assert_smooth(&weights);
    }

    /// Weighted random and least request (idle endpoints) pick in proportion to weight.
    #[test]
    fn weighted_pick_frequencies(weights in proptest::collection::vec(1u32..10, 2..6), seed: u64) {
        let total: u32 = weights.iter().sum();
        let s = set(&[(0, "a", None, &weights)]);
        for config in [LbConfig::Random, LbConfig::RoundRobin, LbConfig::LeastRequest { choice_count: 2 }] {
            let p = ClusterPicker::new(&config, &s, PickerOptions::default(), all, None, seed);
            let n = 40_000;
            let c = counts(&p, n, seed);
            for (i, &w) in weights.iter().enumerate() {
                let expected = n as f64 * f64::from(w) / f64::from(total);
                let got = *c.get(&i).unwrap_or(&0) as f64;
                // Binomial sd ≤ 100 here; 6 sd plus 1% is far beyond chance.
                let tolerance = 6.0 * (expected * (1.0 - f64::from(w) / f64::from(total))).sqrt() + n as f64 * 0.01;
                prop_assert!((got - expected).abs() <= tolerance, "{config:?} {weights:?}: target {i} got {got}, expected {expected}");
            }
        }
    }
}

#[test]
fn alias_table_probabilities_are_exact() {
    let weights = [1u32, 7, 3, 0x1000, 2];
    let targets: Vec<(u32, u32)> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| (i as u32, w))
        .collect();
    let w = WeightedRandom::new(&targets);
    // Draw positions exhaustively over a fine grid of the two random numbers.
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut r = rng(1);
    let n = 400_000;
    let mut seen = [0u64; 5];
    for _ in 0..n {
        seen[w.pick(&mut r) as usize] += 1;
    }
    for (i, &wt) in weights.iter().enumerate() {
        let expected = n as f64 * wt as f64 / total as f64;
        let sd = expected.sqrt().max(1.0);
        assert!(
            (seen[i] as f64 - expected).abs() < 6.0 * sd,
            "{i}: {} vs {expected}",
            seen[i]
        );
    }
}

#[test]
fn least_request_avoids_busy_endpoints() {
    let s = set(&[(0, "a", None, &[1, 1])]);
    let p = ClusterPicker::new(
        &LbConfig::LeastRequest { choice_count: 2 },
        &s,
        PickerOptions::default(),
        all,
        None,
        0,
    );
    let held: Vec<_> = (0..5).map(|_| p.loads()[0].start()).collect();
    assert_eq!(p.loads()[0].active(), 5);
    let c = counts(&p, 10_000, 9);
    // Endpoint 0 only wins when both candidates are it: 25%.
    assert!((2_200..=2_800).contains(&c[&0]), "{c:?}");
    drop(held);
    assert_eq!(p.loads()[0].active(), 0);

    let p = ClusterPicker::new(
        &LbConfig::LeastRequest { choice_count: 10 },
        &s,
        PickerOptions::default(),
        all,
        Some(p.loads().clone()),
        0,
    );
    let _held = p.loads()[1].start();
    let c = counts(&p, 10_000, 9);
    // 2^-10 chance per pick of sampling only the busy one.
    assert!(c.get(&1).copied().unwrap_or(0) < 40, "{c:?}");
}

#[test]
fn peak_ewma_prefers_fast_endpoints_and_reacts_to_peaks() {
    let s = set(&[(0, "a", None, &[1, 1])]);
    let config = LbConfig::PeakEwma {
        decay: Duration::from_secs(10),
        default_rtt: Duration::from_millis(30),
    };
    let p = ClusterPicker::new(&config, &s, PickerOptions::default(), all, None, 0);
    let t0 = Instant::now();
    let decay = Duration::from_secs(10);
    p.loads()[0].observe(Duration::from_millis(10), t0, decay);
    p.loads()[1].observe(Duration::from_millis(100), t0, decay);
    let c = counts(&p, 10_000, 4);
    // The slow one wins only when both candidates are it: 25%.
    assert!((7_200..=7_800).contains(&c[&0]), "{c:?}");

    // A peak replaces the estimate at once ...
    let load = &p.loads()[0];
    load.observe(
        Duration::from_millis(200),
        t0 + Duration::from_millis(1),
        decay,
    );
    assert_eq!(load.latency_estimate(), Some(Duration::from_millis(200)));
    // ... and lower samples pull it down by exp(-elapsed/decay).
    load.observe(
        Duration::from_millis(100),
        t0 + Duration::from_millis(1) + decay,
        decay,
    );
    let est = load.latency_estimate().unwrap().as_secs_f64() * 1000.0;
    let expected = 200.0 * (-1f64).exp() + 100.0 * (1.0 - (-1f64).exp());
    assert!((est - expected).abs() < 0.01, "{est} vs {expected}");
}

fn ring_owner_map(n: usize, keys: &[u64]) -> Vec<u32> {
    let targets: Vec<_> = (0..n).map(|i| (i as u32, 1u64, addr(i))).collect();
    let ring = RingHash::new(&targets, 1024, MAX_RING_SIZE);
    keys.iter().map(|&k| ring.pick(k)).collect()
}

#[test]
fn ring_size_follows_a42() {
    let t = |n: usize, w: u64| {
        (0..n)
            .map(|i| (i as u32, if i == 0 { w } else { 1 }, addr(i)))
            .collect::<Vec<_>>()
    };
    assert_eq!(RingHash::new(&t(4, 1), 1024, MAX_RING_SIZE).len(), 1024);
    // The lightest endpoint gets ⌈min_ring × its share⌉ points: weights 3,1,1,1 → share 1/6.
    assert_eq!(RingHash::new(&t(4, 3), 1024, MAX_RING_SIZE).len(), 171 * 6);
    // Capped by the maximum.
    assert_eq!(RingHash::new(&t(4, 1), 1024, 100).len(), 100);
}

proptest! {
    #![proptest_config(crate::test_support::proptest_config(24))]

    /// Adding one endpoint to N moves about 1/N of the keys. With A42's ring sizing each old
    /// endpoint also gives up ~1/(N+1) of its points (the ring keeps its minimum size), so
    /// the new endpoint takes ~1/(N+1) and at most as much again moves between old ones.
    #[test]
    fn ring_hash_moves_about_one_nth(n in 3usize..30, seed: u64) {
        let mut r = rng(seed);
        let keys: Vec<u64> = (0..20_000).map(|_| r.next_u64()).collect();
        let before = ring_owner_map(n, &keys);
        let after = ring_owner_map(n + 1, &keys);
        let moved = (0..keys.len()).filter(|&i| before[i] != after[i]).count();
        let to_new = after.iter().filter(|&&o| o == n as u32).count();
        let ideal = keys.len() as f64 / (n + 1) as f64;
        prop_assert!((to_new as f64) > ideal * 0.6 && (to_new as f64) < ideal * 1.4, "n={} to_new {} ideal {}", n, to_new, ideal);
        prop_assert!((moved as f64) < ideal * 2.6, "n={} moved {} ideal {}", n, moved, ideal);
    }

    /// With a fixed number of points per endpoint, every key that moves goes to the new one.
    #[test]
    fn ring_hash_is_consistent(n in 3usize..30, seed: u64) {
        let ring = |n: usize| {
            let targets: Vec<_> = (0..n).map(|i| (i as u32, 1u64, addr(i))).collect();
            RingHash::new(&targets, 64 * n as u64, 64 * n as u64)
        };
        let (a, b) = (ring(n), ring(n + 1));
        let mut r = rng(seed);
        for _ in 0..5_000 {
            let k = r.next_u64();
            let (x, y) = (a.pick(k), b.pick(k));
            prop_assert!(x == y || y == n as u32, "key moved from {} to old endpoint {}", x, y);
        }
    }

    /// Removing one Maglev endpoint of N moves its own keys, and few others.
    #[test]
    fn maglev_disruption_is_bounded(n in 5usize..40, removed in 0usize..5, seed: u64) {
        let targets: Vec<_> = (0..n).map(|i| (i as u32, 1u64, addr(i))).collect();
        let full = Maglev::new(&targets, 65537);
        let rest: Vec<_> = targets.iter().copied().filter(|t| t.0 != removed as u32).collect();
        let less = Maglev::new(&rest, 65537);
        let mut r = rng(seed);
        let keys: Vec<u64> = (0..20_000).map(|_| r.next_u64()).collect();
        let disrupted = keys
            .iter()
            .filter(|&&k| full.pick(k) != removed as u32 && full.pick(k) != less.pick(k))
            .count();
        // Maglev's paper measures ~1–2% here; 6% leaves room.
        prop_assert!((disrupted as f64) < keys.len() as f64 * 0.06, "n={} disrupted {}", n, disrupted);
    }
}

#[test]
fn maglev_balances_by_weight() {
    let targets: Vec<_> = (0..10)
        .map(|i| (i as u32, if i == 0 { 3 } else { 1 }, addr(i)))
        .collect();
    let m = Maglev::new(&targets, 65537);
    let mut slots = [0usize; 10];
    for k in 0..65537u64 {
        slots[m.pick(k) as usize] += 1;
    }
    let unit = 65537.0 / 12.0;
    assert!(
        (slots[0] as f64 - 3.0 * unit).abs() < unit * 0.05,
        "{slots:?}"
    );
    for &s in &slots[1..] {
        assert!((s as f64 - unit).abs() < unit * 0.05, "{slots:?}");
    }
    assert!(
        LbConfig::new(&LbPolicySpec::Maglev {
            table_size: Some(65536)
        })
        .is_err()
    );
}

#[test]
fn hash_policies_are_sticky() {
    let s = set(&[(0, "a", None, &[1; 8])]);
    for config in [
        LbConfig::RingHash {
            min_ring_size: 1024,
            max_ring_size: MAX_RING_SIZE,
        },
        LbConfig::Maglev { table_size: 65537 },
    ] {
        let p = ClusterPicker::new(&config, &s, PickerOptions::default(), all, None, 0);
        let mut r = rng(3);
        for h in [1u64, 99, u64::MAX, 0xdead_beef] {
            let first = p.pick(Some(h), &mut r);
            assert!((0..50).all(|_| p.pick(Some(h), &mut r) == first));
        }
    }
}

#[test]
fn unavailable_and_unhealthy_endpoints_are_skipped() {
    let mut spec = ClusterLoadAssignmentSpec {
        cluster_name: "c".into(),
        localities: vec![LocalityEndpointsSpec {
            endpoints: (1..=10).map(|i| EndpointSpec::new(addr(i))).collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    spec.localities[0].endpoints[3].health = HealthStatus::Unhealthy;
    spec.localities[0].endpoints[4].health = HealthStatus::Draining;
    let s = EndpointSet::new(&spec).unwrap();
    for config in [
        LbConfig::RoundRobin,
        LbConfig::Random,
        LbConfig::LeastRequest { choice_count: 2 },
        LbConfig::RingHash {
            min_ring_size: 1024,
            max_ring_size: 4096,
        },
    ] {
        let p = ClusterPicker::new(&config, &s, PickerOptions::default(), |i| i != 0, None, 0);
        assert!(!p.is_panic());
        let c = counts(&p, 5_000, 1);
        for skipped in [0, 3, 4] {
            assert!(
                !c.contains_key(&skipped),
                "{config:?} picked {skipped}: {c:?}"
            );
        }
        assert_eq!(c.len(), 7, "{config:?}: {c:?}");
    }
}

#[test]
fn panic_mode_uses_every_endpoint() {
    let s = set(&[(0, "a", None, &[1; 10])]);
    // 3 of 10 available: 3 × 1.4 = 42% < 50% → panic.
    let p = ClusterPicker::new(
        &LbConfig::RoundRobin,
        &s,
        PickerOptions::default(),
        |i| i < 3,
        None,
        0,
    );
    assert!(p.is_panic());
    assert_eq!(counts(&p, 1_000, 0).len(), 10);
    // 4 of 10: 56% → no panic.
    let p = ClusterPicker::new(
        &LbConfig::RoundRobin,
        &s,
        PickerOptions::default(),
        |i| i < 4,
        None,
        0,
    );
    assert!(!p.is_panic());
    assert_eq!(counts(&p, 1_000, 0).len(), 4);
    // Panic disabled: only the available ones, and none at all when none is available.
    let no_panic = PickerOptions {
        panic_threshold: 0,
        ..Default::default()
    };
    let p = ClusterPicker::new(&LbConfig::RoundRobin, &s, no_panic, |i| i < 1, None, 0);
    assert_eq!(counts(&p, 100, 0).len(), 1);
    let p = ClusterPicker::new(&LbConfig::RoundRobin, &s, no_panic, |_| false, None, 0);
    assert_eq!(p.pick(None, &mut rng(0)), None);
}

#[test]
fn priorities_fail_over_by_overprovisioned_health() {
    // Priority 0: endpoints 0..4, priority 1: endpoints 4..8.
    let s = set(&[(0, "a", None, &[1; 4]), (1, "b", None, &[1; 4])]);
    let p = ClusterPicker::new(
        &LbConfig::RoundRobin,
        &s,
        PickerOptions::default(),
        all,
        None,
        0,
    );
    assert!(
        counts(&p, 1_000, 0).keys().all(|&i| i < 4),
        "healthy P0 takes everything"
    );
    // One of four P0 endpoints left: health 35%, so P1 takes 65%.
    let p = ClusterPicker::new(
        &LbConfig::RoundRobin,
        &s,
        PickerOptions::default(),
        |i| i == 0 || i >= 4,
        None,
        0,
    );
    let c = counts(&p, 20_000, 5);
    let p0 = c.get(&0).copied().unwrap_or(0);
    assert!((6_600..=7_400).contains(&p0), "{c:?}");
    assert!(!c.contains_key(&1) && !c.contains_key(&2) && !c.contains_key(&3));
    // Three of four P0 endpoints: 105% → P0 keeps all traffic.
    let p = ClusterPicker::new(
        &LbConfig::RoundRobin,
        &s,
        PickerOptions::default(),
        |i| i != 0,
        None,
        0,
    );
    assert!(counts(&p, 1_000, 0).keys().all(|&i| i < 4));
}

#[test]
fn locality_weights_split_traffic() {
    let s = set(&[
        (0, "a", Some(1), &[1, 1]),
        (0, "b", Some(3), &[1, 1]),
        (0, "c", None, &[1]),
    ]);
    let weighted = PickerOptions {
        locality_weighted: true,
        ..Default::default()
    };
    let p = ClusterPicker::new(&LbConfig::RoundRobin, &s, weighted, all, None, 0);
    let c = counts(&p, 40_000, 2);
    let a = c.get(&0).unwrap_or(&0) + c.get(&1).unwrap_or(&0);
    // 25% ± 1.5 points (sd 0.2 points); the unweighted locality gets nothing.
    assert!((9_400..=10_600).contains(&a), "{c:?}");
    assert!(!c.contains_key(&4), "{c:?}");
    // Half of locality b unavailable: its weight drops to 3 × min(1, 1.4 × 0.5) = 2.1.
    let p = ClusterPicker::new(&LbConfig::RoundRobin, &s, weighted, |i| i != 2, None, 0);
    let c = counts(&p, 40_000, 2);
    let a = c.get(&0).unwrap_or(&0) + c.get(&1).unwrap_or(&0);
    let expected = 40_000.0 / 3.0;
    assert!((a as f64 - expected).abs() < 800.0, "{c:?}");
    // Without locality weighting the localities are pooled.
    let p = ClusterPicker::new(
        &LbConfig::RoundRobin,
        &s,
        PickerOptions::default(),
        all,
        None,
        0,
    );
    assert_eq!(counts(&p, 5_000, 0).len(), 5);
}

#[test]
fn lb_config_validation() {
    let e = LbConfig::new(&LbPolicySpec::LeastRequest {
        choice_count: Some(1),
    })
    .unwrap_err();
    assert_eq!(
        e.to_string_pair(),
        (
            "least_request_lb_config.choice_count",
            "1 is below the minimum of 2"
        )
    );
    assert_eq!(
        LbConfig::new(&LbPolicySpec::LeastRequest {
            choice_count: Some(50)
        })
        .unwrap(),
        LbConfig::LeastRequest { choice_count: 10 }
    );
    let e = LbConfig::new(&LbPolicySpec::RingHash {
        min_ring_size: Some(2048),
        max_ring_size: Some(1024),
    })
    .unwrap_err();
    assert_eq!(
        e.to_string_pair(),
        (
            "ring_hash_lb_config.minimum_ring_size",
            "2048 is greater than maximum_ring_size 1024"
        )
    );
    let e = LbConfig::new(&LbPolicySpec::RingHash {
        min_ring_size: None,
        max_ring_size: Some(MAX_RING_SIZE + 1),
    })
    .unwrap_err();
    assert_eq!(
        e.to_string_pair(),
        (
            "ring_hash_lb_config.maximum_ring_size",
            "8388609 is not in 1..=8388608"
        )
    );
}

trait Pair {
    fn to_string_pair(&self) -> (&str, &str);
}

impl Pair for FieldError {
    fn to_string_pair(&self) -> (&str, &str) {
        (&self.field, &self.reason)
    }
}

/// Hash tables are per priority; one rebuild for many priorities stays within one table's
/// bound (in panic every priority takes traffic, so every level has its table).
#[test]
fn hash_tables_are_bounded_in_total_across_priorities() {
    let groups: Vec<(u32, String)> = (0..8).map(|p| (p, format!("z{p}"))).collect();
    let spec: Vec<(u32, &str, Option<u32>, &[u32])> = groups
        .iter()
        .map(|(p, z)| (*p, z.as_str(), Some(1), &[1u32, 1][..]))
        .collect();
    let set = set(&spec);
    let options = PickerOptions {
        panic_threshold: 50,
        ..Default::default()
    };
    let maglev = LbConfig::new(&LbPolicySpec::Maglev {
        table_size: Some(MAX_MAGLEV_TABLE_SIZE),
    })
    .unwrap();
    let picker = ClusterPicker::new(&maglev, &set, options, |_| false, None, 1);
    assert!(picker.is_panic());
    let slots = picker.hash_slots();
    // Eight primes just under 5,000,011 / 8.
    assert!(
        (4_990_000..=MAX_MAGLEV_TABLE_SIZE as usize).contains(&slots),
        "{slots}"
    );
    let ring = LbConfig::new(&LbPolicySpec::RingHash {
        min_ring_size: Some(MAX_RING_SIZE),
        max_ring_size: Some(MAX_RING_SIZE),
    })
    .unwrap();
    let picker = ClusterPicker::new(&ring, &set, options, |_| false, None, 1);
    let slots = picker.hash_slots();
    assert!(slots <= RING_SIZE_CAP as usize, "{slots}");
    // One priority keeps its whole table.
    let one = self::set(&[(0, "a", Some(1), &[1, 1])]);
    let picker = ClusterPicker::new(&maglev, &one, options, |_| true, None, 1);
    assert_eq!(picker.hash_slots(), MAX_MAGLEV_TABLE_SIZE as usize);
}
