//! The sandbox's switches: what faults it injects, and its random source.

use serde::{Deserialize, Serialize};

/// What to do with a second create for a channel order id that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// 200 with the existing order's ids (what Shiprocket's docs describe).
    #[default]
    Echo,
    /// 422 "order id already exists".
    Reject,
    /// A second order: what an integration must never trigger.
    Create,
}

/// Faults, switchable while the sandbox runs (`PUT /sandbox/faults`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of calls answered 500 (after doing nothing).
    pub error_rate: f64,
    /// Share of writes (create, assign AWB, pickup, cancel) answered 502
    /// after the work was done: the caller cannot know it happened.
    pub error_after_work_rate: f64,
    /// Share of calls answered 429.
    pub throttle_rate: f64,
    /// Seconds in the 429's `Retry-After`, when set.
    pub retry_after_secs: Option<u64>,
    /// Share of calls that hang (no answer for `hang_ms`).
    pub hang_rate: f64,
    pub hang_ms: u64,
    /// Added to every answer.
    pub latency_ms: u64,
    /// Tokens expire this long after login.
    pub token_ttl_secs: u64,
    pub duplicate: DuplicatePolicy,
    /// Calls per second over which the sandbox answers 429 (a token bucket of
    /// one second's worth); none means unlimited.
    pub rate_limit_per_sec: Option<f64>,
    /// The bucket of that limit, in calls; one second's worth when unset.
    pub rate_limit_burst: Option<f64>,
    /// Share of AWB assignments that fail with `awb_assign_status: 0`.
    pub awb_failure_rate: f64,
    /// The pickup location nickname that exists; others get 422.
    pub pickup_location: String,
    /// Cancels are refused for good, as Shiprocket refuses an order the
    /// courier has already picked up.
    pub cancel_refused: bool,
    /// Calls the faults apply to (`login`, `create`, `assign_awb`, `search`,
    /// `pickup`, `cancel`); empty means all of them.
    pub only_calls: Vec<String>,
    /// Accounts (API users' login e-mails) the faults apply to; empty means all.
    pub only_accounts: Vec<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_after_work_rate: 0.0,
            throttle_rate: 0.0,
            retry_after_secs: None,
            hang_rate: 0.0,
            hang_ms: 60_000,
            latency_ms: 0,
            token_ttl_secs: 240 * 3600,
            duplicate: DuplicatePolicy::Echo,
            rate_limit_per_sec: None,
            rate_limit_burst: None,
            awb_failure_rate: 0.0,
            pickup_location: "Primary".into(),
            cancel_refused: false,
            only_calls: Vec::new(),
            only_accounts: Vec::new(),
        }
    }
}

impl Faults {
    /// Whether the faults apply to `call` made by `account` (an empty list
    /// means every call, every account).
    pub fn applies_to(&self, call: &str, account: &str) -> bool {
        (self.only_calls.is_empty() || self.only_calls.iter().any(|c| c == call))
            && (self.only_accounts.is_empty() || self.only_accounts.iter().any(|a| a == account))
    }

    /// The rate-limit bucket's tokens when the faults are set: the burst, else
    /// one second's worth.
    pub fn initial_bucket(&self) -> f64 {
        self.rate_limit_burst
            .or(self.rate_limit_per_sec)
            .unwrap_or(0.0)
    }
}

/// A small, seeded generator: fault injection must be reproducible, not secure.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.unit() < rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_roughly_uniform() {
        let mut a = Rng::seeded(7);
        let mut b = Rng::seeded(7);
        let draws: Vec<f64> = (0..1000).map(|_| a.unit()).collect();
        assert!(draws
            .iter()
            .zip((0..1000).map(|_| b.unit()))
            .all(|(x, y)| *x == y));
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let low = draws.iter().filter(|x| **x < 0.5).count();
        assert!((400..600).contains(&low), "{low}");
        assert!(!Rng::seeded(1).chance(0.0));
    }

    #[test]
    fn faults_parse_partially() {
        let faults: Faults =
            serde_json::from_str(r#"{"error_rate": 0.5, "duplicate": "reject"}"#).unwrap();
        assert_eq!(faults.error_rate, 0.5);
        assert_eq!(faults.duplicate, DuplicatePolicy::Reject);
        assert_eq!(faults.pickup_location, "Primary");
        assert!(serde_json::from_str::<Faults>(r#"{"nope": 1}"#).is_err());
    }
}
