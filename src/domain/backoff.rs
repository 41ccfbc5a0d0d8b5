//! Retry delays: exponential with full jitter between a base and a cap
//! (`shipping.retry_base_ms`, `shipping.retry_max_ms`). The random draw is a
//! parameter, so the schedule is a pure function that tests can pin.

use std::time::Duration;

/// The retry policy of SPEC §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

impl Backoff {
    /// The ceiling for the wait after failed attempt `attempt` (1-based):
    /// `base * 2^(attempt-1)`, never above `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The wait after failed attempt `attempt`, given `unit` drawn uniformly
    /// from [0, 1): between half the ceiling and the ceiling ("equal jitter"),
    /// so retries spread out but never come back immediately.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling / 2 + ceiling.mul_f64(unit / 2.0)
    }

    /// Whether another attempt is allowed after `attempts` have been made.
    pub fn may_retry(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy() -> Backoff {
        Backoff {
            base: Duration::from_millis(1000),
            max: Duration::from_millis(300_000),
            max_attempts: 8,
        }
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=11).map(|a| p.ceiling(a).as_millis() as u64).collect();
        assert_eq!(
            ceilings,
            vec![
                1000, 2000, 4000, 8000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000, 300_000
            ]
        );
        assert_eq!(p.ceiling(1000), Duration::from_millis(300_000));
    }

    #[test]
    fn jitter_spans_the_upper_half() {
        let p = policy();
        assert_eq!(p.delay(3, 0.0), Duration::from_millis(2000));
        assert_eq!(p.delay(3, 1.0), Duration::from_millis(4000));
        assert_eq!(p.delay(3, f64::NAN), Duration::from_millis(2000));
    }

    #[test]
    fn attempts_are_bounded() {
        let p = policy();
        assert!(p.may_retry(7));
        assert!(!p.may_retry(8));
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(attempt in 1u32..100, unit in 0.0f64..1.0) {
            let p = policy();
            let d = p.delay(attempt, unit);
            prop_assert!(d >= p.base / 2);
            prop_assert!(d <= p.max);
        }
    }
}
