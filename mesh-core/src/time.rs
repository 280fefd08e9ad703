//! Bounds on configured durations, so that no arithmetic on a value a control plane sent can
//! overflow: every decoded duration is capped at [`MAX_DURATION`], and deadlines computed from
//! one use [`after`].

use std::time::{Duration, Instant};

/// The longest duration any configuration means: one year. Longer values (protobuf allows
/// about 10,000 years) are read as one year, which no timeout, interval or ejection outlives
/// in practice, and which an `Instant` can always add.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `d`, capped at [`MAX_DURATION`].
pub fn capped(d: Duration) -> Duration {
    d.min(MAX_DURATION)
}

/// The instant `d` after `now`: capped at [`MAX_DURATION`], and never a panic even where the
/// platform's `Instant` cannot reach that far (it then stays at `now`).
pub fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(capped(d)).unwrap_or(now)
}

/// `d` in nanoseconds, saturating at `u64::MAX` (about 584 years) instead of truncating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_capped_and_deadlines_never_overflow() {
        assert_eq!(capped(Duration::MAX), MAX_DURATION);
        assert_eq!(capped(Duration::from_secs(3)), Duration::from_secs(3));
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), now + MAX_DURATION);
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(nanos(Duration::from_micros(3)), 3_000);
    }
}
