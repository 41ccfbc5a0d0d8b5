//! The board of Shiprocket accounts: what every gateway publishes of itself
//! (circuit, in-flight calls, since when it has been unusable, its token), read
//! by the queue to decide failover, by orders planning a call, and by the
//! status page and metrics.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::domain::breaker::CircuitState;
use crate::domain::clock::{rfc3339, SharedClock};
use crate::domain::shipping::drain_secs;
use crate::storage::QueueBacklog;

/// Shiprocket tokens live 240 hours.
const TOKEN_LIFETIME_MS: i64 = 240 * 3600 * 1000;

/// What a gateway publishes of itself; written by the gateway only.
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub in_flight: AtomicU64,
    /// While the circuit is open: when it lets a probe through; else 0.
    pub open_until_ms: AtomicI64,
    pub half_open: AtomicBool,
    /// Since when the account has not answered well (circuit not closed, or
    /// throttled); 0 while it does. An answer clears it.
    pub unusable_since_ms: AtomicI64,
    pub token_issued_at_ms: AtomicI64,
    pub last_error: Mutex<Option<String>>,
    pub logins: AtomicU64,
    /// A mirror of the limiter's bucket (governor does not expose its own):
    /// tokens left and when that was computed.
    bucket: Mutex<Option<(f64, Instant)>>,
}

impl GatewayStats {
    /// Records one permit taken from a limiter of `per_hour` with `burst`.
    pub fn spend(&self, per_hour: u32, burst: u32) {
        if let Ok(mut bucket) = self.bucket.lock() {
            let now = Instant::now();
            let tokens = refill(*bucket, per_hour, burst, now);
            *bucket = Some(((tokens - 1.0).max(0.0), now));
        }
    }

    /// Calls the account could make right now without waiting.
    pub fn available(&self, per_hour: u32, burst: u32) -> u32 {
        let tokens = self
            .bucket
            .lock()
            .map(|b| refill(*b, per_hour, burst, Instant::now()))
            .unwrap_or(f64::from(burst));
        tokens.floor() as u32
    }

    pub fn set_last_error(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }
}

fn refill(bucket: Option<(f64, Instant)>, per_hour: u32, burst: u32, now: Instant) -> f64 {
    match bucket {
        None => f64::from(burst),
        Some((tokens, at)) => {
            let earned = now.duration_since(at).as_secs_f64() * f64::from(per_hour) / 3600.0;
            (tokens + earned).min(f64::from(burst))
        }
    }
}

/// One configured account, as the board sees it.
#[derive(Clone)]
pub struct AccountHandle {
    pub account: String,
    pub stats: Arc<GatewayStats>,
    pub requests_per_hour: u32,
    pub burst: u32,
}

/// The gateway block of `/admin/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GatewayStatus {
    pub account: String,
    pub circuit: &'static str,
    pub in_flight: u64,
    pub limiter_available: u32,
    pub last_error: Option<String>,
    pub token_expires_at: Option<String>,
    /// Orders waiting for this account: its own and its share of the unassigned.
    pub queued: u64,
    /// Time to make their calls at the configured rate.
    pub drain_eta_secs: u64,
    pub unusable_since: Option<String>,
}

#[derive(Clone)]
pub struct ShippingRouter {
    accounts: Arc<Vec<AccountHandle>>,
    clock: SharedClock,
}

impl ShippingRouter {
    pub fn new(accounts: Vec<AccountHandle>, clock: SharedClock) -> Self {
        Self {
            accounts: Arc::new(accounts),
            clock,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    pub fn accounts(&self) -> &[AccountHandle] {
        &self.accounts
    }

    fn circuit(&self, gateway: &AccountHandle, now_ms: i64) -> CircuitState {
        let open_until = gateway.stats.open_until_ms.load(Ordering::Relaxed);
        if open_until > now_ms {
            CircuitState::Open
        } else if open_until > 0 || gateway.stats.half_open.load(Ordering::Relaxed) {
            CircuitState::HalfOpen
        } else {
            CircuitState::Closed
        }
    }

    /// Accounts other than `me` unusable for at least `after_ms`: orders in
    /// doubt there may fail over to `me`.
    pub fn failover_sources(&self, me: &str, after_ms: i64) -> Vec<String> {
        let now = self.clock.now_ms();
        self.accounts
            .iter()
            .filter(|g| g.account != me)
            .filter(|g| {
                self.unusable_since_ms(&g.account)
                    .is_some_and(|since| now.saturating_sub(since) >= after_ms)
            })
            .map(|g| g.account.clone())
            .collect()
    }

    pub fn status(&self, backlog: &[QueueBacklog]) -> Vec<GatewayStatus> {
        let now = self.clock.now_ms();
        let unassigned = backlog.iter().find(|b| b.account.is_none());
        // Work any account may take goes to the usable ones, by their rates.
        let usable_rate: u64 = self
            .accounts
            .iter()
            .filter(|g| self.unusable_since_ms(&g.account).is_none())
            .map(|g| u64::from(g.requests_per_hour))
            .sum();
        self.accounts
            .iter()
            .map(|g| {
                let issued = g.stats.token_issued_at_ms.load(Ordering::Relaxed);
                let own = backlog
                    .iter()
                    .find(|b| b.account.as_deref() == Some(g.account.as_str()));
                let usable = self.unusable_since_ms(&g.account).is_none();
                let share = |n: u64| match unassigned {
                    Some(_) if usable && usable_rate > 0 => {
                        n.saturating_mul(u64::from(g.requests_per_hour)) / usable_rate
                    }
                    _ => 0,
                };
                let queued =
                    own.map_or(0, |b| b.orders) + share(unassigned.map_or(0, |b| b.orders));
                let calls = own.map_or(0, |b| b.calls) + share(unassigned.map_or(0, |b| b.calls));
                let available = g.stats.available(g.requests_per_hour, g.burst);
                GatewayStatus {
                    account: g.account.clone(),
                    circuit: self.circuit(g, now).as_str(),
                    in_flight: g.stats.in_flight.load(Ordering::Relaxed),
                    limiter_available: available,
                    last_error: g.stats.last_error.lock().ok().and_then(|e| e.clone()),
                    token_expires_at: (issued > 0).then(|| rfc3339(issued + TOKEN_LIFETIME_MS)),
                    queued,
                    drain_eta_secs: drain_secs(calls, available, g.requests_per_hour),
                    unusable_since: self.unusable_since_ms(&g.account).map(rfc3339),
                }
            })
            .collect()
    }
}

impl ShippingRouter {
    /// Since when `account` has not answered well, if it has not.
    pub fn unusable_since_ms(&self, account: &str) -> Option<i64> {
        match self.accounts.iter().find(|g| g.account == account) {
            Some(g) => {
                let since = g.stats.unusable_since_ms.load(Ordering::Relaxed);
                (since > 0).then_some(since)
            }
            // An account no longer configured never answers again.
            None => Some(i64::MIN),
        }
    }
}
