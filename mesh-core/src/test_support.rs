//! Shared test helpers.

use proptest::test_runner::{Config, RngSeed};

/// Property-test config with a fixed seed: a run is reproducible and cannot flake.
pub(crate) fn proptest_config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x6d65_7368),
        failure_persistence: None,
        ..Config::default()
    }
}
