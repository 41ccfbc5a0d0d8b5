//! The Shiprocket gateways and the router in front of them (SPEC §8).
//!
//! One [`ShiprocketGateway`] actor per configured account owns what belongs to
//! the account: its token (cached in storage, reused across restarts, refreshed
//! after `token_refresh_after_hours` and, single-flight, on a 401), its
//! `governor` limiter shared by every call including logins, its circuit
//! breaker, and a pause after a 429. [`ShippingRouter`] sends new shipments to
//! an account whose circuit is not open, preferring the least busy, and
//! follow-up calls to the account that owns the shipment.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::clients::shiprocket::{
    AdhocOrder, AssignedAwb, CreatedShipment, FoundOrder, ShiprocketClient, ShiprocketError,
};
use crate::config::Secret;
use crate::domain::breaker::{Breaker, CircuitState};
use crate::domain::clock::SharedClock;
use crate::storage::Storage;
use crate::telemetry::Metrics;

/// Shiprocket tokens live 240 hours.
const TOKEN_LIFETIME_MS: i64 = 240 * 3600 * 1000;
/// How long to hold an account after a 429 that named no Retry-After.
const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(5);

/// One call to Shiprocket.
#[derive(Debug, Clone)]
pub enum ShiprocketCall {
    Create(Box<AdhocOrder>),
    AssignAwb(i64),
    Search(String),
    Pickup(i64),
    Cancel(Vec<i64>),
}

impl ShiprocketCall {
    /// The `call` label of the Shiprocket metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Create(_) => "create_order",
            Self::AssignAwb(_) => "assign_awb",
            Self::Search(_) => "search",
            Self::Pickup(_) => "generate_pickup",
            Self::Cancel(_) => "cancel",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CallOutput {
    Created(CreatedShipment),
    Awb(AssignedAwb),
    Found(Vec<FoundOrder>),
    Done,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("the account's circuit is open until {retry_at_ms}")]
    CircuitOpen { retry_at_ms: i64 },
    #[error(transparent)]
    Shiprocket(#[from] ShiprocketError),
    #[error("no such Shiprocket account: {0}")]
    UnknownAccount(String),
    #[error("gateway unavailable: {0}")]
    Unavailable(String),
}

#[derive(Message)]
#[rtype(result = "Result<CallOutput, GatewayError>")]
pub struct Call(pub ShiprocketCall);

/// An account's settings.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub account: String,
    pub email: String,
    pub password: Secret,
    pub requests_per_hour: u32,
    pub burst: u32,
    pub token_refresh_after: Duration,
    pub breaker_threshold: u32,
    pub breaker_open: Duration,
}

/// What the status page and the router read of a gateway.
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub in_flight: AtomicU64,
    /// While the circuit is open: when it lets a probe through; else 0.
    pub open_until_ms: AtomicI64,
    pub half_open: std::sync::atomic::AtomicBool,
    pub token_issued_at_ms: AtomicI64,
    pub last_error: Mutex<Option<String>>,
    pub logins: AtomicU64,
    /// A mirror of the limiter's bucket (governor does not expose its own):
    /// tokens left and when that was computed.
    bucket: Mutex<Option<(f64, Instant)>>,
}

impl GatewayStats {
    /// Records one call through a limiter of `per_hour` with `burst`.
    fn spend(&self, per_hour: u32, burst: u32) {
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

/// The token, behind an async lock: whoever finds it stale logs in while the
/// others wait, so a burst of 401s causes one login.
#[derive(Default)]
struct TokenSlot {
    token: Option<(String, i64)>,
    loaded: bool,
}

/// Everything a call needs, cloneable into its future.
#[derive(Clone)]
struct Parts {
    settings: Arc<GatewaySettings>,
    client: ShiprocketClient,
    storage: Storage,
    clock: SharedClock,
    limiter: Arc<DefaultDirectRateLimiter>,
    token: Arc<tokio::sync::Mutex<TokenSlot>>,
    stats: Arc<GatewayStats>,
}

impl Parts {
    async fn wait_for_rate(&self) {
        self.limiter.until_ready().await;
        self.stats
            .spend(self.settings.requests_per_hour, self.settings.burst);
    }

    async fn login(&self, slot: &mut TokenSlot) -> Result<String, ShiprocketError> {
        self.wait_for_rate().await;
        self.stats.logins.fetch_add(1, Ordering::Relaxed);
        let token = self
            .client
            .login(&self.settings.email, self.settings.password.expose())
            .await?;
        let now = self.clock.now_ms();
        slot.token = Some((token.clone(), now));
        self.stats.token_issued_at_ms.store(now, Ordering::Relaxed);
        if let Err(e) = self
            .storage
            .save_shiprocket_token(&self.settings.account, &token, now)
            .await
        {
            tracing::warn!(account = %self.settings.account, error = %e, "Shiprocket token not cached; the next start logs in again");
        }
        tracing::info!(account = %self.settings.account, "logged in to Shiprocket");
        Ok(token)
    }

    /// A token young enough to use, logging in if there is none.
    async fn token(&self) -> Result<String, ShiprocketError> {
        let mut slot = self.token.lock().await;
        if !slot.loaded {
            slot.loaded = true;
            if let Ok(Some(stored)) = self.storage.shiprocket_token(&self.settings.account).await {
                self.stats
                    .token_issued_at_ms
                    .store(stored.1, Ordering::Relaxed);
                slot.token = Some(stored);
            }
        }
        let refresh_after =
            i64::try_from(self.settings.token_refresh_after.as_millis()).unwrap_or(i64::MAX);
        match &slot.token {
            Some((token, issued)) if self.clock.now_ms() - issued < refresh_after => {
                Ok(token.clone())
            }
            _ => self.login(&mut slot).await,
        }
    }

    /// After a 401 with `stale`: log in unless someone already replaced it.
    async fn refresh(&self, stale: &str) -> Result<String, ShiprocketError> {
        let mut slot = self.token.lock().await;
        match &slot.token {
            Some((token, _)) if token != stale => Ok(token.clone()),
            _ => self.login(&mut slot).await,
        }
    }

    async fn execute(
        &self,
        token: &str,
        call: &ShiprocketCall,
    ) -> Result<CallOutput, ShiprocketError> {
        self.wait_for_rate().await;
        let c = &self.client;
        Ok(match call {
            ShiprocketCall::Create(order) => {
                CallOutput::Created(c.create_order(token, order).await?)
            }
            ShiprocketCall::AssignAwb(shipment_id) => {
                CallOutput::Awb(c.assign_awb(token, *shipment_id).await?)
            }
            ShiprocketCall::Search(channel_order_id) => {
                CallOutput::Found(c.search_orders(token, channel_order_id).await?)
            }
            ShiprocketCall::Pickup(shipment_id) => {
                c.generate_pickup(token, *shipment_id).await?;
                CallOutput::Done
            }
            ShiprocketCall::Cancel(ids) => {
                c.cancel_orders(token, ids).await?;
                CallOutput::Done
            }
        })
    }

    async fn perform(&self, call: &ShiprocketCall) -> Result<CallOutput, ShiprocketError> {
        let token = self.token().await?;
        match self.execute(&token, call).await {
            Err(ShiprocketError::Unauthorized) => {
                let token = self.refresh(&token).await?;
                self.execute(&token, call).await
            }
            other => other,
        }
    }
}

/// An account's rate: `requests_per_hour` sustained, `burst` at once.
pub fn account_quota(requests_per_hour: u32, burst: u32) -> Quota {
    let per_hour = NonZeroU32::new(requests_per_hour.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_hour(per_hour).allow_burst(burst)
}

pub struct ShiprocketGateway {
    parts: Parts,
    metrics: Arc<Metrics>,
    breaker: Breaker,
    paused_until: Option<Instant>,
}

impl ShiprocketGateway {
    pub fn new(
        settings: GatewaySettings,
        client: ShiprocketClient,
        storage: Storage,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Self {
        let quota = account_quota(settings.requests_per_hour, settings.burst);
        let breaker = Breaker::new(settings.breaker_threshold, settings.breaker_open);
        Self {
            parts: Parts {
                settings: Arc::new(settings),
                client,
                storage,
                clock,
                limiter: Arc::new(RateLimiter::direct(quota)),
                token: Arc::new(tokio::sync::Mutex::new(TokenSlot::default())),
                stats: Arc::new(GatewayStats::default()),
            },
            metrics,
            breaker,
            paused_until: None,
        }
    }

    pub fn stats(&self) -> Arc<GatewayStats> {
        Arc::clone(&self.parts.stats)
    }

    fn publish_circuit(&self, now_ms: i64) {
        let stats = &self.parts.stats;
        let state = self.breaker.state(now_ms);
        stats.open_until_ms.store(
            self.breaker.retry_at_ms(now_ms).unwrap_or(0),
            Ordering::Relaxed,
        );
        stats
            .half_open
            .store(state == CircuitState::HalfOpen, Ordering::Relaxed);
        self.metrics
            .shiprocket_circuit(&self.parts.settings.account, state.gauge());
    }
}

impl Actor for ShiprocketGateway {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16_384);
        self.publish_circuit(self.parts.clock.now_ms());
    }
}

impl Handler<Call> for ShiprocketGateway {
    type Result = ResponseActFuture<Self, Result<CallOutput, GatewayError>>;

    fn handle(&mut self, Call(call): Call, _: &mut Self::Context) -> Self::Result {
        let now = self.parts.clock.now_ms();
        let name = call.name();
        let account = self.parts.settings.account.clone();
        if !self.breaker.try_acquire(now) {
            self.metrics
                .shiprocket_request(&account, name, "circuit_open", None);
            let retry_at_ms = self.breaker.retry_at_ms(now).unwrap_or(now);
            return Box::pin(fut::ready(Err(GatewayError::CircuitOpen { retry_at_ms })));
        }
        self.publish_circuit(now);
        let pause = self
            .paused_until
            .map(|until| until.saturating_duration_since(Instant::now()));
        let parts = self.parts.clone();
        parts.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let work = async move {
            if let Some(pause) = pause.filter(|p| !p.is_zero()) {
                tokio::time::sleep(pause).await;
            }
            let started = Instant::now();
            let result = parts.perform(&call).await;
            (result, started.elapsed())
        };
        Box::pin(
            work.into_actor(self)
                .map(move |(result, took), gateway, _| {
                    let stats = &gateway.parts.stats;
                    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                    let now = gateway.parts.clock.now_ms();
                    let outcome = match &result {
                        Ok(_) => {
                            gateway.breaker.on_success();
                            "ok"
                        }
                        Err(error) => {
                            match error {
                                ShiprocketError::Transient(_) => gateway.breaker.on_failure(now),
                                ShiprocketError::RateLimited { retry_after } => {
                                    gateway.breaker.on_neutral();
                                    gateway.paused_until = Some(
                                        Instant::now()
                                            + retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE),
                                    );
                                }
                                ShiprocketError::Unauthorized | ShiprocketError::Permanent(_) => {
                                    gateway.breaker.on_neutral()
                                }
                            }
                            if let Ok(mut last) = stats.last_error.lock() {
                                *last = Some(error.to_string());
                            }
                            error.outcome()
                        }
                    };
                    gateway.metrics.shiprocket_request(
                        &account,
                        name,
                        outcome,
                        Some(took.as_secs_f64()),
                    );
                    gateway.publish_circuit(now);
                    result.map_err(GatewayError::from)
                }),
        )
    }
}

/// A gateway as the router sees it.
#[derive(Clone)]
pub struct GatewayHandle {
    pub account: String,
    pub addr: Addr<ShiprocketGateway>,
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
}

#[derive(Clone)]
pub struct ShippingRouter {
    gateways: Arc<Vec<GatewayHandle>>,
    clock: SharedClock,
}

impl ShippingRouter {
    pub fn new(gateways: Vec<GatewayHandle>, clock: SharedClock) -> Self {
        Self {
            gateways: Arc::new(gateways),
            clock,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.gateways.is_empty()
    }

    fn circuit(&self, gateway: &GatewayHandle, now_ms: i64) -> CircuitState {
        let open_until = gateway.stats.open_until_ms.load(Ordering::Relaxed);
        if open_until > now_ms {
            CircuitState::Open
        } else if open_until > 0 || gateway.stats.half_open.load(Ordering::Relaxed) {
            CircuitState::HalfOpen
        } else {
            CircuitState::Closed
        }
    }

    /// The account a new shipment should go to: circuits not open, least busy first.
    pub fn pick(&self) -> Result<&GatewayHandle, GatewayError> {
        let now = self.clock.now_ms();
        self.gateways
            .iter()
            .filter(|g| self.circuit(g, now) != CircuitState::Open)
            .min_by_key(|g| g.stats.in_flight.load(Ordering::Relaxed))
            .ok_or_else(|| GatewayError::CircuitOpen {
                retry_at_ms: self
                    .gateways
                    .iter()
                    .map(|g| g.stats.open_until_ms.load(Ordering::Relaxed))
                    .filter(|t| *t > 0)
                    .min()
                    .unwrap_or(now),
            })
    }

    /// Sends `call` to `account`'s gateway.
    pub async fn call_on(
        &self,
        account: &str,
        call: ShiprocketCall,
    ) -> Result<CallOutput, GatewayError> {
        let gateway = self
            .gateways
            .iter()
            .find(|g| g.account == account)
            .ok_or_else(|| GatewayError::UnknownAccount(account.to_owned()))?;
        gateway
            .addr
            .send(Call(call))
            .await
            .map_err(|e| GatewayError::Unavailable(e.to_string()))?
    }

    pub fn status(&self) -> Vec<GatewayStatus> {
        let now = self.clock.now_ms();
        self.gateways
            .iter()
            .map(|g| {
                let issued = g.stats.token_issued_at_ms.load(Ordering::Relaxed);
                GatewayStatus {
                    account: g.account.clone(),
                    circuit: self.circuit(g, now).as_str(),
                    in_flight: g.stats.in_flight.load(Ordering::Relaxed),
                    limiter_available: g.stats.available(g.requests_per_hour, g.burst),
                    last_error: g.stats.last_error.lock().ok().and_then(|e| e.clone()),
                    token_expires_at: (issued > 0)
                        .then(|| crate::domain::clock::rfc3339(issued + TOKEN_LIFETIME_MS)),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;
    use governor::RateLimiter;

    use super::account_quota;

    #[test]
    fn the_account_quota_bursts_then_drains_at_the_hourly_rate() {
        let clock = FakeRelativeClock::default();
        // 7,200 an hour is one call every 500 ms, after a burst of 10.
        let limiter = RateLimiter::direct_with_clock(account_quota(7200, 10), clock.clone());
        for _ in 0..10 {
            assert!(limiter.check().is_ok());
        }
        assert!(limiter.check().is_err(), "the burst is spent");
        clock.advance(Duration::from_millis(499));
        assert!(limiter.check().is_err());
        clock.advance(Duration::from_millis(1));
        assert!(limiter.check().is_ok(), "one call per 500 ms");
        assert!(limiter.check().is_err());
        // An idle hour refills the burst, not more.
        clock.advance(Duration::from_secs(3600));
        let allowed = (0..100).filter(|_| limiter.check().is_ok()).count();
        assert_eq!(allowed, 10);
    }
}
