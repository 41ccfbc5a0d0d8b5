//! `ShiprocketGateway`: one actor per account, owning what belongs to the
//! account (SPEC §8): its token (cached in storage, reused across restarts,
//! refreshed after `token_refresh_after_hours` and, single-flight, on a 401),
//! its `governor` limiter shared by every call including logins, its circuit
//! breaker, and a pause after a 429.
//!
//! The gateway pulls its work. It takes an order from the shipping queue only
//! when its limiter has a permit (`check()`, whose `NotUntil` says when to look
//! again), its circuit admits a call and no 429 pause holds; then it asks the
//! order what to call (the order journals the attempt first), makes the call,
//! and hands the order the answer. Nobody else waits for the account: orders,
//! HTTP handlers and the dispatcher never see the limiter, and a backlog is
//! rows in storage. Half-open, the gateway makes the one probe and nothing
//! else until its outcome is in.
//!
//! After a successful shipping call the order's next one (the AWB after the
//! create, the pickup after the AWB) follows at once if a permit is at hand,
//! in the same commit as the answer.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use governor::clock::Clock as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::calls::{Call, GatewayError, ShiprocketCall};
use super::queue::ShippingQueue;
use super::router::GatewayStats;
use crate::actors::order::{OrderMsg, OrderReply, PlannedCall, ShippingTurn};
use crate::actors::order_link::OrderLink;
use crate::actors::registry::Route;
use crate::actors::switch::ProcessingSwitch;
use crate::clients::shiprocket::{ShiprocketClient, ShiprocketError};
use crate::config::Secret;
use crate::domain::breaker::{Breaker, CircuitState, Ticket, Verdict};
use crate::domain::clock::SharedClock;
use crate::domain::cluster::Resource;
use crate::domain::shipping::{Answer, Purpose, Step};
use crate::storage::postgres::Ownership;
use crate::storage::{QueuedOrder, Storage};
use crate::telemetry::Metrics;

/// How long to hold an account after a 429 that named no Retry-After.
const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(5);
/// How often a gateway looks at the queue without being woken.
const PUMP_EVERY: Duration = Duration::from_millis(250);
/// A prefetched batch of due orders is read again after this long, so that
/// orders due since (retries of older payments) keep their place.
const BATCH_FRESH_FOR: Duration = Duration::from_secs(1);
/// Calls of one account in flight at once, at most.
const MAX_IN_FLIGHT: u32 = 64;

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

/// An account's rate: `requests_per_hour` sustained, `burst` at once.
pub fn account_quota(requests_per_hour: u32, burst: u32) -> Quota {
    let per_hour = NonZeroU32::new(requests_per_hour.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_hour(per_hour).allow_burst(burst)
}

/// Where a gateway takes its work from and hands its answers to.
#[derive(Clone)]
pub struct Work {
    pub queue: ShippingQueue,
    pub orders: OrderLink,
    /// The kill switch.
    pub switch: ProcessingSwitch,
    /// Manual shipping mode: no call at all.
    pub manual: Arc<AtomicBool>,
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
    /// On several instances: the leases, whose account lease every call
    /// checks in the database first.
    cluster: Option<Arc<Ownership>>,
}

impl Parts {
    /// A permit for one request: the one `held` (taken before the call was
    /// planned), else one from the limiter if it has one now.
    fn take_permit(&self, held: &mut bool) -> Result<(), GatewayError> {
        if std::mem::take(held) {
            return Ok(());
        }
        match self.limiter.check() {
            Ok(()) => {
                self.stats
                    .spend(self.settings.requests_per_hour, self.settings.burst);
                Ok(())
            }
            Err(not_until) => Err(GatewayError::RateLimited {
                wait_ms: not_until
                    .wait_time_from(self.limiter.clock().now())
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
            }),
        }
    }

    async fn login(&self, slot: &mut TokenSlot, held: &mut bool) -> Result<String, GatewayError> {
        self.take_permit(held)?;
        self.stats.logins.fetch_add(1, Ordering::Relaxed);
        let token = self
            .client
            .login(&self.settings.email, self.settings.password.expose())
            .await
            .map_err(GatewayError::Login)?;
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
    async fn token(&self, held: &mut bool) -> Result<String, GatewayError> {
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
            _ => self.login(&mut slot, held).await,
        }
    }

    /// After a 401 with `stale`: log in unless someone already replaced it.
    async fn refresh(&self, stale: &str, held: &mut bool) -> Result<String, GatewayError> {
        let mut slot = self.token.lock().await;
        match &slot.token {
            Some((token, _)) if token != stale => Ok(token.clone()),
            _ => self.login(&mut slot, held).await,
        }
    }

    /// Makes `call`, logging in first or after a 401 as needed; every request
    /// takes a permit, the first the one `held` if any.
    async fn perform(&self, call: &ShiprocketCall, mut held: bool) -> Result<Answer, GatewayError> {
        self.still_ours().await?;
        let token = self.token(&mut held).await?;
        self.take_permit(&mut held)?;
        match call.perform(&self.client, &token).await {
            Err(ShiprocketError::Unauthorized) => {
                let token = self.refresh(&token, &mut held).await?;
                self.take_permit(&mut held)?;
                Ok(call.perform(&self.client, &token).await?)
            }
            other => Ok(other?),
        }
    }
}

impl Parts {
    /// A Shiprocket call cannot be fenced like a write, so on several
    /// instances each one is preceded by a check, in the database, that the
    /// account's lease is still this instance's: a gateway that wakes from
    /// a pause with calls planned makes none of them.
    async fn still_ours(&self) -> Result<(), GatewayError> {
        let (Some(ownership), Some(pg)) = (&self.cluster, self.storage.postgres()) else {
            return Ok(());
        };
        let resource = Resource::Account(self.settings.account.clone());
        let fence = ownership.fence(&resource).ok_or(GatewayError::LeaseLost)?;
        pg.check_fence(&fence)
            .await
            .map_err(|_| GatewayError::LeaseLost)
    }
}

/// Wakes the gateway to look for work.
#[derive(Message)]
#[rtype(result = "()")]
struct Pump;

/// How a turn with an order ended.
enum TurnEnd {
    /// The order had nothing (more) to call.
    Idle,
    /// A call was made.
    Called {
        step: Step,
        result: Result<Answer, GatewayError>,
        took: Duration,
    },
}

pub struct ShiprocketGateway {
    parts: Parts,
    metrics: Arc<Metrics>,
    breaker: Breaker,
    throttled_until_ms: i64,
    work: Option<Work>,
    in_flight: u32,
    max_in_flight: u32,
    /// Due orders read from the queue, and when.
    batch: VecDeque<QueuedOrder>,
    batch_read_at: Option<Instant>,
    reading: bool,
    wake_at: Option<(Instant, SpawnHandle)>,
    /// The circuit state last put in the metrics.
    published: Option<CircuitState>,
}

impl ShiprocketGateway {
    pub fn new(
        settings: GatewaySettings,
        client: ShiprocketClient,
        storage: Storage,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        stats: Arc<GatewayStats>,
    ) -> Self {
        let quota = account_quota(settings.requests_per_hour, settings.burst);
        let breaker = Breaker::new(settings.breaker_threshold, settings.breaker_open);
        let max_in_flight = settings.burst.clamp(1, MAX_IN_FLIGHT);
        Self {
            parts: Parts {
                settings: Arc::new(settings),
                client,
                storage,
                clock,
                limiter: Arc::new(RateLimiter::direct(quota)),
                token: Arc::new(tokio::sync::Mutex::new(TokenSlot::default())),
                stats,
                cluster: None,
            },
            metrics,
            breaker,
            throttled_until_ms: 0,
            work: None,
            in_flight: 0,
            max_in_flight,
            batch: VecDeque::new(),
            batch_read_at: None,
            reading: false,
            wake_at: None,
            published: None,
        }
    }

    /// Takes orders' work from `work` (without it the gateway answers only
    /// direct [`Call`]s).
    pub fn with_work(mut self, work: Work) -> Self {
        self.work = Some(work);
        self
    }

    /// Runs as the account's gateway for a cluster: every call first checks
    /// that `ownership`'s lease on the account still holds.
    pub fn in_cluster(mut self, ownership: Arc<Ownership>) -> Self {
        self.parts.cluster = Some(ownership);
        self
    }

    fn account(&self) -> &str {
        &self.parts.settings.account
    }

    /// Publishes the circuit and the account's usability for the board.
    fn publish(&mut self, now_ms: i64) {
        let stats = &self.parts.stats;
        let state = self.breaker.state(now_ms);
        stats.open_until_ms.store(
            self.breaker.retry_at_ms(now_ms).unwrap_or(0),
            Ordering::Relaxed,
        );
        stats
            .half_open
            .store(state == CircuitState::HalfOpen, Ordering::Relaxed);
        stats
            .in_flight
            .store(u64::from(self.in_flight), Ordering::Relaxed);
        let unusable = state != CircuitState::Closed || self.throttled_until_ms > now_ms;
        if unusable && stats.unusable_since_ms.load(Ordering::Relaxed) == 0 {
            let since = self.breaker.opened_at_ms().unwrap_or(now_ms).max(1);
            stats.unusable_since_ms.store(since, Ordering::Relaxed);
        }
        if self.published != Some(state) {
            self.published = Some(state);
            self.metrics
                .shiprocket_circuit(&self.parts.settings.account, state.gauge());
        }
    }

    fn wake_in(&mut self, after: Duration, ctx: &mut Context<Self>) {
        let at = Instant::now() + after;
        if let Some((scheduled, handle)) = self.wake_at {
            if scheduled <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let handle = ctx.run_later(after, |gateway, ctx| {
            gateway.wake_at = None;
            gateway.pump(ctx);
        });
        self.wake_at = Some((at, handle));
    }

    /// Starts as many calls as the account allows now.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let Some(work) = self.work.clone() else {
            return;
        };
        let now = self.parts.clock.now_ms();
        self.publish(now);
        if work.switch.is_paused() || work.manual.load(Ordering::SeqCst) {
            return;
        }
        while self.in_flight < self.max_in_flight {
            let state = self.breaker.state(now);
            // Half-open: the probe goes alone, once nothing else is in flight.
            if !self.breaker.admits(now) || (state == CircuitState::HalfOpen && self.in_flight > 0)
            {
                return;
            }
            if self.throttled_until_ms > now {
                let wait = (self.throttled_until_ms - now).max(1) as u64;
                self.wake_in(Duration::from_millis(wait), ctx);
                return;
            }
            let stale = self
                .batch_read_at
                .is_none_or(|at| at.elapsed() > BATCH_FRESH_FOR);
            if stale {
                self.batch.clear();
            }
            let Some(next) = self.batch.pop_front() else {
                self.read_batch(&work, ctx);
                return;
            };
            if !work.queue.claim(&next.order_id) {
                continue;
            }
            let mut held = false;
            if let Err(GatewayError::RateLimited { wait_ms }) = self.parts.take_permit(&mut held) {
                work.queue.release(&next.order_id);
                self.batch.push_front(next);
                self.wake_in(Duration::from_millis(wait_ms.max(1)), ctx);
                return;
            }
            let Some(ticket) = self.breaker.try_acquire(now) else {
                work.queue.release(&next.order_id);
                self.batch.push_front(next);
                return;
            };
            self.in_flight += 1;
            self.publish(now);
            self.turn(&work, next.order_id, None, Some(ticket), ctx);
            if state == CircuitState::HalfOpen {
                return;
            }
        }
    }

    fn read_batch(&mut self, work: &Work, ctx: &mut Context<Self>) {
        if self.reading {
            return;
        }
        self.reading = true;
        let queue = work.queue.clone();
        let account = self.account().to_owned();
        let limit = (self.max_in_flight * 2).max(16);
        ctx.spawn(
            async move { queue.due_for(&account, limit).await }
                .into_actor(self)
                .map(|due, gateway, ctx| {
                    gateway.reading = false;
                    match due {
                        Ok(due) if !due.is_empty() => {
                            gateway.batch = due.into();
                            gateway.batch_read_at = Some(Instant::now());
                            gateway.pump(ctx);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(account = %gateway.account(), error = %e, "cannot read the shipping queue")
                        }
                    }
                }),
        );
    }

    /// One exchange with an order: hand it the previous answer (if any), and,
    /// holding a permit (`ticket`), let it plan and journal its next call,
    /// then make that call.
    fn turn(
        &mut self,
        work: &Work,
        order_id: String,
        answered: Option<(Step, Result<Answer, crate::domain::shipping::CallFailure>)>,
        ticket: Option<Ticket>,
        ctx: &mut Context<Self>,
    ) {
        let orders = work.orders.clone();
        let parts = self.parts.clone();
        let turn = ShippingTurn {
            account: self.account().to_owned(),
            answered,
            may_call: ticket.is_some(),
        };
        let id = order_id.clone();
        let exchange = async move {
            let reply = orders
                .send(Route {
                    order_id: id.clone(),
                    msg: OrderMsg::Shipping(turn),
                })
                .await;
            let planned = match reply {
                Ok(Ok(OrderReply::Planned(planned))) => planned,
                Ok(Ok(_)) => None,
                Ok(Err(e)) => {
                    tracing::debug!(order_id = %id, error = %e, "shipping turn not taken");
                    None
                }
                Err(e) => {
                    tracing::warn!(order_id = %id, error = %e, "order unreachable for shipping");
                    None
                }
            };
            match planned {
                None => TurnEnd::Idle,
                Some(PlannedCall { step, call }) => {
                    let started = Instant::now();
                    let result = parts.perform(&call, true).await;
                    TurnEnd::Called {
                        step,
                        result,
                        took: started.elapsed(),
                    }
                }
            }
        };
        ctx.spawn(
            exchange
                .into_actor(self)
                .map(move |end, gateway, ctx| gateway.turn_ended(order_id, ticket, end, ctx)),
        );
    }

    fn turn_ended(
        &mut self,
        order_id: String,
        ticket: Option<Ticket>,
        end: TurnEnd,
        ctx: &mut Context<Self>,
    ) {
        let Some(work) = self.work.clone() else {
            return;
        };
        let now = self.parts.clock.now_ms();
        match end {
            TurnEnd::Idle => {
                if let Some(ticket) = ticket {
                    self.breaker.record(ticket, Verdict::Neutral, now);
                }
                work.queue.release(&order_id);
                self.in_flight = self.in_flight.saturating_sub(1);
                self.publish(now);
                self.pump(ctx);
            }
            TurnEnd::Called { step, result, took } => {
                let verdict = self.observe(step.call.kind().as_str(), &result, took, now);
                if let Some(ticket) = ticket {
                    self.breaker.record(ticket, verdict, now);
                }
                self.publish(now);
                // A shipping step that went through is always followed by
                // another (AWB, pickup): take its permit now if there is one.
                let next = if result.is_ok() && step.purpose == Purpose::Ship {
                    self.permit_now(now)
                } else {
                    None
                };
                let answered = Some((step, result.map_err(|e| e.to_failure())));
                self.turn(&work, order_id, answered, next, ctx);
            }
        }
    }

    /// A permit and a breaker ticket for a call right now, if both are at hand.
    fn permit_now(&mut self, now_ms: i64) -> Option<Ticket> {
        if self.throttled_until_ms > now_ms
            || self.breaker.state(now_ms) != CircuitState::Closed
            || self
                .work
                .as_ref()
                .is_some_and(|w| w.switch.is_paused() || w.manual.load(Ordering::SeqCst))
        {
            return None;
        }
        let mut held = false;
        self.parts.take_permit(&mut held).ok()?;
        self.breaker.try_acquire(now_ms)
    }

    /// Metrics, the 429 pause and the account's usability after a call; the
    /// breaker's verdict on it.
    fn observe(
        &mut self,
        call: &'static str,
        result: &Result<Answer, GatewayError>,
        took: Duration,
        now_ms: i64,
    ) -> Verdict {
        let stats = &self.parts.stats;
        let account = self.parts.settings.account.clone();
        let call = match result {
            Err(GatewayError::Login(_)) => "login",
            _ => call,
        };
        let (outcome, verdict) = match result.as_ref().map_err(GatewayError::shiprocket) {
            Ok(_) => ("ok", Verdict::Healthy),
            Err(Some(error)) => {
                stats.set_last_error(error.to_string());
                let verdict = match error {
                    ShiprocketError::Transient(_) => Verdict::Failing,
                    ShiprocketError::RateLimited { retry_after } => {
                        let pause = retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE);
                        let pause_ms = i64::try_from(pause.as_millis()).unwrap_or(i64::MAX);
                        self.throttled_until_ms = now_ms.saturating_add(pause_ms);
                        Verdict::Neutral
                    }
                    ShiprocketError::Unauthorized | ShiprocketError::Permanent(_) => {
                        Verdict::Neutral
                    }
                };
                (error.outcome(), verdict)
            }
            // No request left: nothing to count.
            Err(None) => return Verdict::Neutral,
        };
        // Any answer but a 5xx or a 429 shows the account answering again.
        if matches!(
            result.as_ref().map_err(GatewayError::shiprocket),
            Ok(_) | Err(Some(ShiprocketError::Permanent(_)))
        ) {
            stats.unusable_since_ms.store(0, Ordering::Relaxed);
        }
        self.metrics
            .shiprocket_request(&account, call, outcome, Some(took.as_secs_f64()));
        verdict
    }
}

impl Actor for ShiprocketGateway {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16_384);
        self.publish(self.parts.clock.now_ms());
        if let Some(work) = &self.work {
            ctx.run_interval(PUMP_EVERY, |gateway, ctx| gateway.pump(ctx));
            let mut wake = work.queue.subscribe();
            let addr = ctx.address();
            actix::spawn(async move {
                while wake.changed().await.is_ok() {
                    if !addr.connected() {
                        break;
                    }
                    addr.do_send(Pump);
                }
            });
            ctx.notify(Pump);
        }
    }
}

impl Handler<Pump> for ShiprocketGateway {
    type Result = ();

    fn handle(&mut self, _: Pump, ctx: &mut Self::Context) {
        self.pump(ctx);
    }
}

impl Handler<Call> for ShiprocketGateway {
    type Result = ResponseActFuture<Self, Result<Answer, GatewayError>>;

    fn handle(&mut self, Call(call): Call, _: &mut Self::Context) -> Self::Result {
        let now = self.parts.clock.now_ms();
        let name = call.kind().as_str();
        let refused = if self.throttled_until_ms > now {
            Some(GatewayError::Throttled {
                until_ms: self.throttled_until_ms,
            })
        } else if !self.breaker.admits(now) {
            Some(GatewayError::CircuitOpen {
                retry_at_ms: self.breaker.retry_at_ms(now).unwrap_or(now),
            })
        } else {
            None
        };
        if let Some(error) = refused {
            self.metrics
                .shiprocket_request(self.account(), name, "circuit_open", None);
            return Box::pin(fut::ready(Err(error)));
        }
        let mut held = false;
        if let Err(e) = self.parts.take_permit(&mut held) {
            return Box::pin(fut::ready(Err(e)));
        }
        let Some(ticket) = self.breaker.try_acquire(now) else {
            return Box::pin(fut::ready(Err(GatewayError::CircuitOpen {
                retry_at_ms: now,
            })));
        };
        self.in_flight += 1;
        self.publish(now);
        let parts = self.parts.clone();
        let work = async move {
            let started = Instant::now();
            let result = parts.perform(&call, true).await;
            (result, started.elapsed())
        };
        Box::pin(
            work.into_actor(self)
                .map(move |(result, took), gateway, ctx| {
                    let now = gateway.parts.clock.now_ms();
                    let verdict = gateway.observe(name, &result, took, now);
                    gateway.breaker.record(ticket, verdict, now);
                    gateway.in_flight = gateway.in_flight.saturating_sub(1);
                    gateway.publish(now);
                    gateway.pump(ctx);
                    result
                }),
        )
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
        let Err(not_until) = limiter.check() else {
            panic!("the burst is spent")
        };
        assert_eq!(
            not_until.wait_time_from(governor::clock::Clock::now(&clock)),
            Duration::from_millis(500),
            "NotUntil says when to look again"
        );
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

/// Stops the gateway: its account's lease moved to another instance, whose
/// gateway is the account's only one from now on. Calls in flight are
/// dropped; the orders journaled them, and their next turn finds out what
/// Shiprocket did (the search before any second create).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

impl Handler<Retire> for ShiprocketGateway {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        tracing::info!(account = %self.account(), "gateway stopped: its account moved to another instance");
        ctx.stop();
    }
}
