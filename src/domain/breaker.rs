//! A circuit breaker per Shiprocket account (SPEC §8): `threshold` consecutive
//! failures (transport errors, timeouts, 5xx) open it for `open_for`; then it is
//! half-open and lets one probe through; the probe's success closes it, its
//! failure opens it again. Validation errors are not failures of the service
//! and are never reported here. Time is passed in, so it is pure.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The `dropship_shiprocket_circuit_state` value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    open_for_ms: i64,
    consecutive_failures: u32,
    opened_at_ms: Option<i64>,
    probe_in_flight: bool,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for_ms: i64::try_from(open_for.as_millis()).unwrap_or(i64::MAX),
            consecutive_failures: 0,
            opened_at_ms: None,
            probe_in_flight: false,
        }
    }

    pub fn state(&self, now_ms: i64) -> CircuitState {
        match self.opened_at_ms {
            None => CircuitState::Closed,
            Some(at) if now_ms - at < self.open_for_ms => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Asks to make a call now. Closed: yes. Open: no. Half-open: yes for one
    /// probe at a time.
    pub fn try_acquire(&mut self, now_ms: i64) -> bool {
        match self.state(now_ms) {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen if self.probe_in_flight => false,
            CircuitState::HalfOpen => {
                self.probe_in_flight = true;
                true
            }
        }
    }

    /// When the breaker will next let a call through, if it is open now.
    pub fn retry_at_ms(&self, now_ms: i64) -> Option<i64> {
        match self.state(now_ms) {
            CircuitState::Open => self.opened_at_ms.map(|at| at + self.open_for_ms),
            _ => None,
        }
    }

    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.opened_at_ms = None;
        self.probe_in_flight = false;
    }

    pub fn on_failure(&mut self, now_ms: i64) {
        let was_probe = self.probe_in_flight;
        self.probe_in_flight = false;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if was_probe || self.consecutive_failures >= self.threshold {
            self.opened_at_ms = Some(now_ms);
        }
    }

    /// A call that neither succeeded nor failed the service (a 4xx validation
    /// error, a 429): releases a probe slot without judging.
    pub fn on_neutral(&mut self) {
        self.probe_in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_pause() {
        let mut b = Breaker::new(3, Duration::from_secs(30));
        for t in 0..2 {
            assert!(b.try_acquire(t));
            b.on_failure(t);
            assert_eq!(b.state(t), CircuitState::Closed);
        }
        assert!(b.try_acquire(2));
        b.on_failure(2);
        assert_eq!(b.state(2), CircuitState::Open);
        assert!(!b.try_acquire(29_999));
        assert_eq!(b.retry_at_ms(100), Some(30_002));
        assert_eq!(b.state(30_002), CircuitState::HalfOpen);
        assert!(b.try_acquire(30_002));
        assert!(!b.try_acquire(30_003), "one probe at a time");
        b.on_success();
        assert_eq!(b.state(30_004), CircuitState::Closed);
        assert!(b.try_acquire(30_004));
    }

    #[test]
    fn a_failed_probe_reopens_at_once() {
        let mut b = Breaker::new(5, Duration::from_millis(100));
        for _ in 0..5 {
            b.on_failure(0);
        }
        assert!(b.try_acquire(100));
        b.on_failure(100);
        assert_eq!(b.state(150), CircuitState::Open);
        assert_eq!(b.state(200), CircuitState::HalfOpen);
    }

    #[test]
    fn successes_reset_the_count_and_neutral_outcomes_do_not_count() {
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.on_failure(0);
        b.on_success();
        b.on_failure(1);
        assert_eq!(b.state(1), CircuitState::Closed);
        b.on_neutral();
        assert_eq!(b.state(1), CircuitState::Closed);
        assert_eq!(CircuitState::Open.gauge(), 2.0);
        assert_eq!(CircuitState::HalfOpen.as_str(), "half_open");
    }
}
