//! A circuit breaker per Shiprocket account (SPEC §8): `threshold` consecutive
//! failures (transport errors, timeouts, 5xx) open it for `open_for`; then it is
//! half-open and lets exactly one probe through; the probe's success closes it,
//! its failure opens it again. Validation errors and 429s are not failures of
//! the service and judge nothing.
//!
//! Every admitted call holds a [`Ticket`], and its outcome is reported with
//! it: only the probe's own outcome decides a half-open circuit, and a late
//! answer to a call admitted before the circuit last changed is ignored, so an
//! unrelated 429 cannot free the probe's slot and a slow success from before
//! an outage cannot close a circuit that opened since. Time is passed in, so
//! it is pure.

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

/// Permission for one call, to be handed back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "report the call's outcome with its ticket"]
pub struct Ticket {
    generation: u64,
    probe: bool,
}

impl Ticket {
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// What a call's outcome says about the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered as it should.
    Healthy,
    /// Transport error, timeout, 5xx.
    Failing,
    /// A 4xx, a 429, a call that never left: nothing about the service's health.
    Neutral,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    open_for_ms: i64,
    consecutive_failures: u32,
    opened_at_ms: Option<i64>,
    probe_in_flight: bool,
    /// Grows whenever the circuit opens or closes: tickets from before are stale.
    generation: u64,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for_ms: i64::try_from(open_for.as_millis()).unwrap_or(i64::MAX),
            consecutive_failures: 0,
            opened_at_ms: None,
            probe_in_flight: false,
            generation: 0,
        }
    }

    pub fn state(&self, now_ms: i64) -> CircuitState {
        match self.opened_at_ms {
            None => CircuitState::Closed,
            Some(at) if now_ms.saturating_sub(at) < self.open_for_ms => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Whether a call would be admitted now (without taking the probe's slot).
    pub fn admits(&self, now_ms: i64) -> bool {
        match self.state(now_ms) {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen => !self.probe_in_flight,
        }
    }

    /// Asks to make a call now. Closed: yes. Open: no. Half-open: yes for one
    /// probe, until its outcome is reported.
    pub fn try_acquire(&mut self, now_ms: i64) -> Option<Ticket> {
        match self.state(now_ms) {
            CircuitState::Closed => Some(Ticket {
                generation: self.generation,
                probe: false,
            }),
            CircuitState::Open => None,
            CircuitState::HalfOpen if self.probe_in_flight => None,
            CircuitState::HalfOpen => {
                self.probe_in_flight = true;
                Some(Ticket {
                    generation: self.generation,
                    probe: true,
                })
            }
        }
    }

    /// When the breaker will next let a call through, if it is open now.
    pub fn retry_at_ms(&self, now_ms: i64) -> Option<i64> {
        match self.state(now_ms) {
            CircuitState::Open => self
                .opened_at_ms
                .map(|at| at.saturating_add(self.open_for_ms)),
            _ => None,
        }
    }

    /// Since when the circuit has not been closed, if it is not.
    pub fn opened_at_ms(&self) -> Option<i64> {
        self.opened_at_ms
    }

    /// Reports the outcome of the call `ticket` admitted.
    pub fn record(&mut self, ticket: Ticket, verdict: Verdict, now_ms: i64) {
        if ticket.probe {
            if ticket.generation != self.generation || !self.probe_in_flight {
                return;
            }
            self.probe_in_flight = false;
            match verdict {
                Verdict::Healthy => self.close(),
                Verdict::Failing => self.open(now_ms),
                // Still half-open: the next call is a probe again.
                Verdict::Neutral => {}
            }
            return;
        }
        if ticket.generation != self.generation {
            return;
        }
        match verdict {
            Verdict::Healthy => self.consecutive_failures = 0,
            Verdict::Failing => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= self.threshold {
                    self.open(now_ms);
                }
            }
            Verdict::Neutral => {}
        }
    }

    fn open(&mut self, now_ms: i64) {
        self.opened_at_ms = Some(now_ms);
        self.generation += 1;
    }

    fn close(&mut self) {
        self.consecutive_failures = 0;
        self.opened_at_ms = None;
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(b: &mut Breaker, t: i64) {
        let ticket = b.try_acquire(t).expect("admitted");
        b.record(ticket, Verdict::Failing, t);
    }

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_pause() {
        let mut b = Breaker::new(3, Duration::from_secs(30));
        for t in 0..2 {
            fail(&mut b, t);
            assert_eq!(b.state(t), CircuitState::Closed);
        }
        fail(&mut b, 2);
        assert_eq!(b.state(2), CircuitState::Open);
        assert!(b.try_acquire(29_999).is_none());
        assert_eq!(b.retry_at_ms(100), Some(30_002));
        assert_eq!(b.state(30_002), CircuitState::HalfOpen);
        let probe = b.try_acquire(30_002).expect("the probe");
        assert!(probe.is_probe());
        assert!(b.try_acquire(30_003).is_none(), "one probe at a time");
        assert!(!b.admits(30_003));
        b.record(probe, Verdict::Healthy, 30_004);
        assert_eq!(b.state(30_004), CircuitState::Closed);
        assert!(b.try_acquire(30_004).is_some());
    }

    #[test]
    fn a_failed_probe_reopens_at_once() {
        let mut b = Breaker::new(5, Duration::from_millis(100));
        for _ in 0..5 {
            fail(&mut b, 0);
        }
        let probe = b.try_acquire(100).expect("probe");
        b.record(probe, Verdict::Failing, 100);
        assert_eq!(b.state(150), CircuitState::Open);
        assert_eq!(b.state(200), CircuitState::HalfOpen);
    }

    #[test]
    fn only_the_probe_frees_the_probe_slot() {
        let mut b = Breaker::new(1, Duration::from_millis(100));
        // A call admitted while closed, answered 429 only after the circuit opened.
        let early = b.try_acquire(0).expect("closed");
        fail(&mut b, 1);
        let probe = b.try_acquire(101).expect("probe");
        b.record(early, Verdict::Neutral, 102);
        assert!(
            b.try_acquire(102).is_none(),
            "the unrelated 429 freed nothing"
        );
        // A neutral probe (429) keeps the circuit half-open for the next probe.
        b.record(probe, Verdict::Neutral, 103);
        assert_eq!(b.state(103), CircuitState::HalfOpen);
        assert!(b.try_acquire(103).expect("next probe").is_probe());
    }

    #[test]
    fn a_stale_success_does_not_close_a_circuit_that_opened_since() {
        let mut b = Breaker::new(1, Duration::from_millis(100));
        let slow = b.try_acquire(0).expect("closed");
        fail(&mut b, 1);
        b.record(slow, Verdict::Healthy, 2);
        assert_eq!(b.state(2), CircuitState::Open);
    }

    #[test]
    fn successes_reset_the_count_and_neutral_outcomes_do_not_count() {
        let mut b = Breaker::new(2, Duration::from_secs(1));
        fail(&mut b, 0);
        let ok = b.try_acquire(0).expect("closed");
        b.record(ok, Verdict::Healthy, 0);
        fail(&mut b, 1);
        assert_eq!(b.state(1), CircuitState::Closed);
        let neutral = b.try_acquire(1).expect("closed");
        b.record(neutral, Verdict::Neutral, 1);
        assert_eq!(b.state(1), CircuitState::Closed);
        assert_eq!(CircuitState::Open.gauge(), 2.0);
        assert_eq!(CircuitState::HalfOpen.as_str(), "half_open");
    }
}
