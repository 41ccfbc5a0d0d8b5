//! `OrderActor`: one per order with work in flight, the only code that changes
//! its order (SPEC §1, §6).
//!
//! Messages are handled one at a time, each to completion (its commits
//! included) before the next, in arrival order. For every message the actor
//! asks [`crate::domain::order::decide`], commits the resulting journal events
//! together with the new snapshot (and the inbox entry that caused them), and
//! then performs the stock step the transition implies. Recording before doing
//! means a crash between the two leaves an order whose stock lags its state;
//! [`OrderMsg::RepairStock`], sent at start-up for such orders, finishes the
//! step, and every stock step is idempotent, so repeating one is harmless.
//!
//! An idle actor stops itself (passivation); the next message for the order
//! starts a new one from storage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::shipping::{CallOutput, GatewayError, ShippingRouter, ShiprocketCall};
use super::stock::{ReserveError, StockFailure, StockSupervisor};
use crate::clients::shiprocket::{FoundOrder, ShipmentItem, ShipmentRequest, ShiprocketError};
use crate::domain::backoff::Backoff;
use crate::domain::checkout::ValidCheckout;
use crate::domain::clock::SharedClock;
use crate::domain::order::{
    self, Command, OrderEvent, OrderSnapshot, OrderState, Outcome, PaymentMethod,
};
use crate::domain::shipping::{after_failure, CallFailure};
use crate::storage::{
    DeferredCommand, JournalAppend, OrderDeadLetter, OrderWrite, Storage, StorageError,
};
use crate::telemetry::Metrics;

/// Everything an order actor needs; shared by all of them.
pub struct OrderDeps {
    pub storage: Storage,
    pub stock: StockSupervisor,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub reservation_ttl_ms: i64,
    /// How long an actor may sit idle before it passivates.
    pub idle: Duration,
    /// The kill switch: while set, nothing advances an order.
    pub paused: Arc<AtomicBool>,
    /// Shiprocket, when configured.
    pub shipping: ShippingDeps,
}

/// What the shipping steps need.
pub struct ShippingDeps {
    pub router: ShippingRouter,
    pub backoff: Backoff,
    pub pickup_location: String,
    pub default_weight_kg: f64,
    pub default_dims_cm: [f64; 3],
    /// `shipping.mode = manual` (or the admin switch): paid orders wait for an operator.
    pub manual: Arc<AtomicBool>,
}

/// Where a command came from, for the journal's `cause`.
#[derive(Debug, Clone)]
pub struct Cause {
    pub label: String,
    /// The inbox entry this completes, if any.
    pub inbox_id: Option<i64>,
    /// When the payment event that caused this arrived (for the order-creation latency).
    pub received_at_ms: Option<i64>,
    /// An operator's replay of this dead letter: a refusal is reported to the
    /// replay, which records it on the letter, instead of filing a new one.
    pub replay_of: Option<i64>,
}

impl Cause {
    pub fn named(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            inbox_id: None,
            received_at_ms: None,
            replay_of: None,
        }
    }
}

#[derive(Message, Clone)]
#[rtype(result = "Result<OrderReply, OrderError>")]
pub enum OrderMsg {
    Create {
        checkout: Box<ValidCheckout>,
        fingerprint: String,
    },
    Command {
        command: Command,
        cause: Cause,
    },
    /// Align stock allocations with the order's state after a crash.
    RepairStock,
    /// Take the next shipping step that is due (timer, or right after payment).
    Ship,
    /// A paid order found at start goes to shipping by the same rule as a
    /// fresh payment (paid while no account was configured, or just before a crash).
    QueuePaid,
    /// Stop now (the registry is over its cap).
    Passivate,
}

#[derive(Debug, Clone)]
pub enum OrderReply {
    Created(OrderSnapshot),
    /// The same checkout was registered before: the current order.
    Existing(OrderSnapshot),
    Order(OrderSnapshot),
    Passivated,
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("no such order")]
    NotFound,
    #[error("an order with this id exists with a different checkout")]
    Conflict,
    #[error("not enough stock for {0:?}")]
    InsufficientStock(Vec<String>),
    #[error("the payment's amount or currency differs from the order's")]
    AmountMismatch,
    #[error("{from} cannot move to {to}")]
    InvalidTransition { from: OrderState, to: OrderState },
    #[error("processing is paused")]
    Paused,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Stock(#[from] StockFailure),
    #[error("order actor unavailable: {0}")]
    Mailbox(#[from] MailboxError),
}

/// Tells the registry an actor stopped, so it can forget it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stopped {
    pub order_id: String,
    pub incarnation: u64,
}

pub struct OrderActor {
    order_id: String,
    incarnation: u64,
    deps: Arc<OrderDeps>,
    registry: Recipient<Stopped>,
    loaded: Option<Loaded>,
    busy: bool,
    idle_timer: Option<SpawnHandle>,
}

struct Loaded {
    order: Option<OrderSnapshot>,
    fingerprint: Option<String>,
    /// Customer and address (JSON), kept for the Shiprocket request.
    customer: Option<serde_json::Value>,
}

impl OrderActor {
    pub fn new(
        order_id: String,
        incarnation: u64,
        deps: Arc<OrderDeps>,
        registry: Recipient<Stopped>,
    ) -> Self {
        Self {
            order_id,
            incarnation,
            deps,
            registry,
            loaded: None,
            busy: false,
            idle_timer: None,
        }
    }

    fn arm_idle_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.idle_timer.take() {
            ctx.cancel_future(handle);
        }
        self.idle_timer = Some(ctx.run_later(self.deps.idle, |actor, ctx| {
            if actor.busy {
                actor.arm_idle_timer(ctx);
            } else {
                ctx.stop();
            }
        }));
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        self.arm_idle_timer(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.registry.do_send(Stopped {
            order_id: self.order_id.clone(),
            incarnation: self.incarnation,
        });
    }
}

impl Handler<OrderMsg> for OrderActor {
    type Result = AtomicResponse<Self, Result<OrderReply, OrderError>>;

    fn handle(&mut self, msg: OrderMsg, ctx: &mut Self::Context) -> Self::Result {
        if let OrderMsg::Passivate = msg {
            ctx.stop();
            return AtomicResponse::new(Box::pin(fut::ready(Ok(OrderReply::Passivated))));
        }
        let was_ship = matches!(msg, OrderMsg::Ship);
        self.busy = true;
        self.arm_idle_timer(ctx);
        let deps = Arc::clone(&self.deps);
        let order_id = self.order_id.clone();
        // Taken, not copied: the atomic response runs nothing else on this
        // actor until the completion below puts the (updated) view back.
        let loaded = self.loaded.take();
        let work = async move {
            let mut loaded = match loaded {
                Some(loaded) => loaded,
                None => {
                    let stored = deps.storage.load_order(&order_id).await?;
                    Loaded {
                        fingerprint: stored.as_ref().map(|s| s.fingerprint.clone()),
                        customer: stored.as_ref().map(|s| s.customer.clone()),
                        order: stored.map(|s| s.snapshot),
                    }
                }
            };
            let reply = handle_message(&deps, &order_id, &mut loaded, msg).await;
            Ok::<_, OrderError>((reply, loaded))
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |result, actor, ctx| {
                actor.busy = false;
                match result {
                    Ok((reply, loaded)) => {
                        let terminal = loaded
                            .order
                            .as_ref()
                            .is_some_and(|o| o.state == OrderState::Refunded);
                        // A freshly queued order ships now, not at the timer's next look.
                        // (Never after a Ship message itself: an order that could not
                        // ship now waits for its time, it does not spin.)
                        let now = actor.deps.clock.now_ms();
                        let ship_now = !was_ship
                            && loaded.order.as_ref().is_some_and(|o| {
                                o.state == OrderState::AwaitingShipment
                                    && o.shipping.attempts == 0
                                    && o.shipping.next_attempt_at_ms.is_some_and(|at| at <= now)
                            });
                        // After a storage or stock failure part of the work may have
                        // committed: the next message reads the order afresh.
                        let in_doubt =
                            matches!(reply, Err(OrderError::Storage(_) | OrderError::Stock(_)));
                        actor.loaded = (!in_doubt).then_some(loaded);
                        if terminal {
                            ctx.stop();
                        } else if ship_now && !matches!(reply, Ok(OrderReply::Passivated)) {
                            ctx.notify(OrderMsg::Ship);
                        }
                        reply
                    }
                    Err(e) => {
                        // Unknown state after a storage failure: reload on the next message.
                        actor.loaded = None;
                        Err(e)
                    }
                }
            },
        )))
    }
}

async fn handle_message(
    deps: &OrderDeps,
    order_id: &str,
    loaded: &mut Loaded,
    msg: OrderMsg,
) -> Result<OrderReply, OrderError> {
    match msg {
        OrderMsg::Create {
            checkout,
            fingerprint,
        } => create(deps, loaded, *checkout, fingerprint).await,
        OrderMsg::Command { command, cause } => {
            if deps.paused.load(Ordering::SeqCst) {
                return Err(OrderError::Paused);
            }
            let Some(order) = loaded.order.as_mut() else {
                return Err(OrderError::NotFound);
            };
            run_command(deps, order, command, cause).await
        }
        OrderMsg::RepairStock => {
            let Some(order) = loaded.order.as_ref() else {
                // A hold left by a checkout that crashed before its order was stored.
                let allocations = deps.storage.allocations(order_id).await?;
                let lines: Vec<_> = allocations
                    .iter()
                    .map(|a| order::OrderLine {
                        sku: a.sku.clone(),
                        name: String::new(),
                        quantity: a.quantity as u32,
                        unit_price_paise: 0,
                        weight_g: None,
                    })
                    .collect();
                deps.stock.release(order_id, &lines).await?;
                return Err(OrderError::NotFound);
            };
            repair_stock(deps, order).await?;
            Ok(OrderReply::Order(order.clone()))
        }
        OrderMsg::Ship => {
            if deps.paused.load(Ordering::SeqCst) {
                return Err(OrderError::Paused);
            }
            let Some(order) = loaded.order.as_mut() else {
                return Err(OrderError::NotFound);
            };
            ship(deps, order, loaded.customer.as_ref()).await?;
            Ok(OrderReply::Order(order.clone()))
        }
        OrderMsg::QueuePaid => {
            if deps.paused.load(Ordering::SeqCst) {
                return Err(OrderError::Paused);
            }
            let Some(order) = loaded.order.as_mut() else {
                return Err(OrderError::NotFound);
            };
            queue_if_paid(deps, order, deps.clock.now_ms()).await?;
            Ok(OrderReply::Order(order.clone()))
        }
        OrderMsg::Passivate => Ok(OrderReply::Passivated),
    }
}

/// The cause journaled for a cash-on-delivery confirmation.
const COD_CAUSE: &str = "checkout:cod";

async fn create(
    deps: &OrderDeps,
    loaded: &mut Loaded,
    checkout: ValidCheckout,
    fingerprint: String,
) -> Result<OrderReply, OrderError> {
    if let Some(existing) = &loaded.order {
        return if loaded.fingerprint.as_deref() == Some(fingerprint.as_str()) {
            Ok(OrderReply::Existing(existing.clone()))
        } else {
            Err(OrderError::Conflict)
        };
    }
    let now = deps.clock.now_ms();
    // Stock first: an order is only ever stored with its units held. A crash
    // between the two leaves a hold without an order, which start-up releases.
    match deps
        .stock
        .reserve(&checkout.order_id, &checkout.lines)
        .await
    {
        Ok(()) => deps.metrics.stock_reservation(true),
        Err(ReserveError::Insufficient(skus)) => {
            deps.metrics.stock_reservation(false);
            return Err(OrderError::InsufficientStock(skus));
        }
        Err(ReserveError::Failed(e)) => return Err(e.into()),
    }
    let created = OrderEvent::Created {
        razorpay_order_id: checkout.razorpay_order_id.clone(),
        payment_method: checkout.payment_method,
        currency: checkout.currency.clone(),
        amount_paise: checkout.amount_paise,
        lines: checkout.lines.clone(),
        reserved_until_ms: Some(now + deps.reservation_ttl_ms),
    };
    let Some(mut order) = order::genesis(&checkout.order_id, &created, now) else {
        return Err(OrderError::NotFound);
    };
    let customer = serde_json::json!({
        "customer": checkout.customer,
        "shipping_address": checkout.shipping_address,
    });
    loaded.customer = Some(customer.clone());
    // Cash on delivery needs no payment: the order is confirmed at once, or,
    // while processing is paused, as soon as it resumes (the confirmation is
    // stored with the order, so a restart in between loses nothing).
    let cod_confirmation =
        (checkout.payment_method == PaymentMethod::Cod).then(|| Command::ConfirmPayment {
            payment_id: format!("cod:{}", checkout.order_id),
            amount_paise: checkout.amount_paise,
            currency: checkout.currency.clone(),
            stock_reallocated: None,
        });
    let paused = deps.paused.load(Ordering::SeqCst);
    let deferred = cod_confirmation
        .as_ref()
        .filter(|_| paused)
        .map(|command| DeferredCommand {
            id: 0,
            order_id: checkout.order_id.clone(),
            command: command.clone(),
            cause: COD_CAUSE.into(),
            received_at_ms: now,
        });
    let inserted = deps
        .storage
        .insert_order(
            order.clone(),
            customer,
            fingerprint.clone(),
            JournalAppend {
                event: created,
                at_ms: now,
                cause: "checkout".into(),
            },
            deferred,
        )
        .await;
    match inserted {
        Ok(true) => {}
        Ok(false) => return Err(OrderError::Conflict),
        Err(e) => {
            deps.stock
                .release(&checkout.order_id, &checkout.lines)
                .await?;
            return Err(e.into());
        }
    }
    deps.metrics.order_transition(OrderState::PendingPayment);
    loaded.fingerprint = Some(fingerprint);
    if let Some(confirm) = cod_confirmation.filter(|_| !paused) {
        run_command(deps, &mut order, confirm, Cause::named(COD_CAUSE)).await?;
    }
    loaded.order = Some(order.clone());
    Ok(OrderReply::Created(order))
}

async fn run_command(
    deps: &OrderDeps,
    order: &mut OrderSnapshot,
    command: Command,
    cause: Cause,
) -> Result<OrderReply, OrderError> {
    let mut outcome = order::decide(order, &command);
    if outcome == Outcome::NeedsStock {
        // A payment after expiry: sell anew if the stock is still there.
        let reallocated = deps
            .stock
            .sell_unreserved(&order.order_id, &order.lines)
            .await?;
        if let Command::ConfirmPayment {
            payment_id,
            amount_paise,
            currency,
            ..
        } = &command
        {
            outcome = order::decide(
                order,
                &Command::ConfirmPayment {
                    payment_id: payment_id.clone(),
                    amount_paise: *amount_paise,
                    currency: currency.clone(),
                    stock_reallocated: Some(reallocated),
                },
            );
        }
    }
    let now = deps.clock.now_ms();
    match outcome {
        Outcome::Record(events) => {
            commit_events(deps, order, events, &cause, now).await?;
            Ok(OrderReply::Order(order.clone()))
        }
        Outcome::AlreadyDone | Outcome::Ignored | Outcome::NeedsStock => {
            finish_inbox(deps, &cause, None, now).await?;
            Ok(OrderReply::Order(order.clone()))
        }
        Outcome::AmountMismatch => {
            let letter = OrderDeadLetter {
                reason: "amount_mismatch",
                detail: format!(
                    "order {} expects {} paise {}",
                    order.order_id, order.amount_paise, order.currency
                ),
                event_id: cause.label.strip_prefix("webhook:").map(str::to_owned),
            };
            finish_inbox(deps, &cause, Some(letter), now).await?;
            Err(OrderError::AmountMismatch)
        }
        Outcome::InvalidTransition { from, to } => {
            tracing::warn!(order_id = %order.order_id, %from, %to, cause = %cause.label, "transition refused: not in the lifecycle table");
            finish_inbox(deps, &cause, None, now).await?;
            Err(OrderError::InvalidTransition { from, to })
        }
    }
}

/// Commits `events` (with the cause's inbox entry), then performs what the new
/// state implies: metrics, the stock step, and handing a paid order to shipping.
async fn commit_events(
    deps: &OrderDeps,
    order: &mut OrderSnapshot,
    events: Vec<OrderEvent>,
    cause: &Cause,
    now: i64,
) -> Result<(), OrderError> {
    let before = order.state;
    let mut next = order.clone();
    let mut entered = Vec::new();
    for event in &events {
        let from = next.state;
        order::apply(&mut next, event, now);
        if next.state != from {
            entered.push(next.state);
        }
    }
    let journal = events
        .into_iter()
        .map(|event| JournalAppend {
            event,
            at_ms: now,
            cause: cause.label.clone(),
        })
        .collect();
    deps.storage
        .commit_order(OrderWrite {
            snapshot: next.clone(),
            journal,
            inbox_done: cause.inbox_id,
            dead_letter: None,
        })
        .await?;
    *order = next;
    for state in entered {
        deps.metrics.order_transition(state);
        tracing::info!(order_id = %order.order_id, to = %state, cause = %cause.label, "order transition");
        match state {
            OrderState::Paid => {
                deps.metrics.revenue(order.amount_paise);
                if let Some(received) = cause.received_at_ms {
                    deps.metrics
                        .order_creation_seconds
                        .record((now - received).max(0) as f64 / 1000.0);
                }
            }
            OrderState::ReadyToShip => {
                if let Some(paid) = order.shipping.paid_at_ms {
                    deps.metrics
                        .shipping_creation_seconds
                        .record((now - paid).max(0) as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }
    stock_step(deps, order, before).await?;
    if order.state == OrderState::Cancelled && before != OrderState::Cancelled {
        cancel_at_shiprocket(deps, order).await;
    }
    queue_if_paid(deps, order, now).await
}

/// A paid order goes to shipping, or straight to an operator while shipping
/// is blocked; without any Shiprocket account it stays `paid`.
async fn queue_if_paid(
    deps: &OrderDeps,
    order: &mut OrderSnapshot,
    now: i64,
) -> Result<(), OrderError> {
    if order.state != OrderState::Paid || !shipping_configured(deps) {
        return Ok(());
    }
    let queue = Command::QueueShipping {
        manual: shipping_blocked(deps),
    };
    if let Outcome::Record(events) = order::decide(order, &queue) {
        Box::pin(commit_events(
            deps,
            order,
            events,
            &Cause::named("shipping"),
            now,
        ))
        .await?;
    }
    Ok(())
}

/// A cancelled order's Shiprocket order is cancelled there too. Best effort:
/// a failure is logged for an operator, the cancellation here stands.
async fn cancel_at_shiprocket(deps: &OrderDeps, order: &OrderSnapshot) {
    let (Some(account), Some(sr_order_id)) = (
        order.shipping.account.as_deref(),
        order.shipping.sr_order_id,
    ) else {
        return;
    };
    match deps
        .shipping
        .router
        .call_on(account, ShiprocketCall::Cancel(vec![sr_order_id]))
        .await
    {
        Ok(_) => {
            tracing::info!(order_id = %order.order_id, sr_order_id, "Shiprocket order cancelled")
        }
        Err(e) => {
            tracing::error!(order_id = %order.order_id, sr_order_id, error = %e, "cancel the Shiprocket order by hand")
        }
    }
}

/// Whether any Shiprocket account is configured. Without one, paid orders
/// stay `paid` (a store that ships by other means); a start with accounts
/// queues them.
fn shipping_configured(deps: &OrderDeps) -> bool {
    !deps.shipping.router.is_empty()
}

/// Why paid orders cannot go to Shiprocket automatically right now, if so.
fn shipping_blocked(deps: &OrderDeps) -> Option<String> {
    if !shipping_configured(deps) {
        Some("no Shiprocket account is configured".into())
    } else if deps.shipping.manual.load(Ordering::SeqCst) {
        Some("shipping mode is manual".into())
    } else {
        None
    }
}

async fn finish_inbox(
    deps: &OrderDeps,
    cause: &Cause,
    letter: Option<OrderDeadLetter>,
    now: i64,
) -> Result<(), StorageError> {
    let letter = letter.filter(|_| cause.replay_of.is_none());
    match cause.inbox_id {
        Some(inbox_id) => deps.storage.finish_inbox_entry(inbox_id, letter, now).await,
        None => match letter {
            Some(letter) => deps.storage.file_dead_letter("order", letter, now).await,
            None => Ok(()),
        },
    }
}

fn failure_of(error: &GatewayError) -> CallFailure {
    match error {
        GatewayError::CircuitOpen { retry_at_ms } => CallFailure::NotAttempted {
            error: error.to_string(),
            retry_at_ms: *retry_at_ms,
        },
        GatewayError::Shiprocket(ShiprocketError::RateLimited { retry_after }) => {
            CallFailure::Throttled {
                error: error.to_string(),
                retry_after_ms: retry_after
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            }
        }
        GatewayError::Shiprocket(ShiprocketError::Permanent(message)) => {
            CallFailure::Refused(message.clone())
        }
        GatewayError::UnknownAccount(_) => CallFailure::Refused(error.to_string()),
        GatewayError::Shiprocket(ShiprocketError::Transient(_) | ShiprocketError::Unauthorized)
        | GatewayError::Unavailable(_) => CallFailure::Unknown(error.to_string()),
    }
}

/// Records what a failed call means for the order.
async fn record_failure(
    deps: &OrderDeps,
    shipping: &ShippingDeps,
    order: &mut OrderSnapshot,
    error: &GatewayError,
) -> Result<(), OrderError> {
    let now = deps.clock.now_ms();
    let unit = jitter(&order.order_id, order.shipping.attempts);
    let event = after_failure(order, &failure_of(error), now, &shipping.backoff, unit);
    tracing::warn!(order_id = %order.order_id, error = %error, "Shiprocket call failed");
    commit_events(deps, order, vec![event], &Cause::named("shipping"), now).await
}

/// A jitter draw that differs between orders and attempts, without a global RNG.
fn jitter(order_id: &str, attempt: u32) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (order_id, attempt, std::time::SystemTime::now()).hash(&mut hasher);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Takes the shipping steps that are due: create (or adopt) the Shiprocket
/// order, then assign its AWB. Every call is journaled before it is made, so a
/// crash or timeout leaves `in_doubt` set and the next try searches first.
async fn ship(
    deps: &OrderDeps,
    order: &mut OrderSnapshot,
    customer: Option<&serde_json::Value>,
) -> Result<(), OrderError> {
    let due = order
        .shipping
        .next_attempt_at_ms
        .is_some_and(|at| at <= deps.clock.now_ms());
    if !due {
        return Ok(());
    }
    if let Some(reason) = shipping_blocked(deps) {
        if order.state == OrderState::AwaitingShipment {
            let event = OrderEvent::ShippingManual { reason };
            commit_events(
                deps,
                order,
                vec![event],
                &Cause::named("shipping"),
                deps.clock.now_ms(),
            )
            .await?;
        }
        return Ok(());
    }
    let shipping = &deps.shipping;
    let mut assign_attempt_recorded = false;
    for _ in 0..2 {
        let now = deps.clock.now_ms();
        if order.shipping.in_doubt && !assign_attempt_recorded {
            // The last call's outcome is unknown: what does Shiprocket hold?
            match adopt_existing(shipping, order).await {
                Ok(Some(found)) => {
                    let events = adoption(order, found);
                    if !events.is_empty() {
                        commit_events(deps, order, events, &Cause::named("shipping:search"), now)
                            .await?;
                        continue;
                    }
                }
                Ok(None) => {}
                Err(e) => return record_failure(deps, shipping, order, &e).await,
            }
        }
        match order.state {
            OrderState::AwaitingShipment => {
                let account = match shipping.router.pick() {
                    Ok(gateway) => gateway.account.clone(),
                    Err(e) => return record_failure(deps, shipping, order, &e).await,
                };
                let adhoc = match shipment_request(deps, shipping, order, customer)
                    .await?
                    .to_adhoc()
                {
                    Ok(adhoc) => adhoc,
                    Err(e) => {
                        return record_failure(deps, shipping, order, &GatewayError::Shiprocket(e))
                            .await
                    }
                };
                let attempt = OrderEvent::ShippingAttempt {
                    account: account.clone(),
                    call: "create_order".into(),
                    attempt: order.shipping.attempts + 1,
                };
                commit_events(deps, order, vec![attempt], &Cause::named("shipping"), now).await?;
                match shipping
                    .router
                    .call_on(&account, ShiprocketCall::Create(Box::new(adhoc)))
                    .await
                {
                    Ok(CallOutput::Created(created)) => {
                        // One commit records the creation and the AWB attempt that follows.
                        let events = vec![
                            OrderEvent::ShipmentCreated {
                                account: account.clone(),
                                sr_order_id: created.sr_order_id,
                                shipment_id: created.shipment_id,
                                adopted: false,
                            },
                            OrderEvent::ShippingAttempt {
                                account,
                                call: "assign_awb".into(),
                                attempt: order.shipping.attempts + 1,
                            },
                        ];
                        commit_events(
                            deps,
                            order,
                            events,
                            &Cause::named("shipping"),
                            deps.clock.now_ms(),
                        )
                        .await?;
                        assign_attempt_recorded = true;
                    }
                    Ok(_) => return Ok(()),
                    Err(e) => return record_failure(deps, shipping, order, &e).await,
                }
            }
            OrderState::ShipmentCreated => {
                let account = order.shipping.account.clone().unwrap_or_default();
                let Some(shipment_id) = order.shipping.shipment_id else {
                    return Ok(());
                };
                if !assign_attempt_recorded {
                    let attempt = OrderEvent::ShippingAttempt {
                        account: account.clone(),
                        call: "assign_awb".into(),
                        attempt: order.shipping.attempts + 1,
                    };
                    commit_events(deps, order, vec![attempt], &Cause::named("shipping"), now)
                        .await?;
                }
                match shipping
                    .router
                    .call_on(&account, ShiprocketCall::AssignAwb(shipment_id))
                    .await
                {
                    Ok(CallOutput::Awb(assigned)) => {
                        let event = OrderEvent::AwbAssigned {
                            awb: assigned.awb_code,
                            courier: assigned.courier_name,
                        };
                        commit_events(
                            deps,
                            order,
                            vec![event],
                            &Cause::named("shipping"),
                            deps.clock.now_ms(),
                        )
                        .await?;
                        // Best effort: a pickup can also be requested from Shiprocket's panel.
                        if let Err(e) = shipping
                            .router
                            .call_on(&account, ShiprocketCall::Pickup(shipment_id))
                            .await
                        {
                            tracing::warn!(order_id = %order.order_id, error = %e, "pickup not requested");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => record_failure(deps, shipping, order, &e).await?,
                }
                return Ok(());
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// What a Shiprocket order found by search already did for this one: created
/// it, and perhaps assigned its AWB too.
fn adoption(order: &OrderSnapshot, found: FoundOrder) -> Vec<OrderEvent> {
    let mut events = Vec::new();
    if order.state == OrderState::AwaitingShipment {
        let Some(shipment_id) = found.shipment_id else {
            return events;
        };
        events.push(OrderEvent::ShipmentCreated {
            account: order.shipping.account.clone().unwrap_or_default(),
            sr_order_id: found.sr_order_id,
            shipment_id,
            adopted: true,
        });
    }
    if matches!(
        order.state,
        OrderState::AwaitingShipment | OrderState::ShipmentCreated
    ) {
        if let Some(awb) = found.awb {
            events.push(OrderEvent::AwbAssigned {
                awb,
                courier: found.courier.unwrap_or_default(),
            });
        }
    }
    events
}

/// After a call whose outcome is unknown: the non-cancelled Shiprocket order
/// for this channel order id, if the account has one.
async fn adopt_existing(
    shipping: &ShippingDeps,
    order: &OrderSnapshot,
) -> Result<Option<FoundOrder>, GatewayError> {
    let Some(account) = order.shipping.account.as_deref() else {
        return Ok(None);
    };
    match shipping
        .router
        .call_on(account, ShiprocketCall::Search(order.order_id.clone()))
        .await?
    {
        CallOutput::Found(found) => Ok(found
            .into_iter()
            .find(|f| !f.cancelled && f.channel_order_id == order.order_id)),
        _ => Ok(None),
    }
}

/// The order as Shiprocket needs it: customer and address from storage,
/// weights and dimensions from the SKUs' product facts or the defaults.
async fn shipment_request(
    deps: &OrderDeps,
    shipping: &ShippingDeps,
    order: &OrderSnapshot,
    known_customer: Option<&serde_json::Value>,
) -> Result<ShipmentRequest, OrderError> {
    let stored = match known_customer {
        Some(customer) => customer.clone(),
        None => {
            deps.storage
                .load_order(&order.order_id)
                .await?
                .ok_or(OrderError::NotFound)?
                .customer
        }
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let customer = &stored["customer"];
    let address = &stored["shipping_address"];
    let mut weight_kg = 0.0;
    let mut dims = None;
    let mut items = Vec::new();
    for line in &order.lines {
        let facts = deps
            .storage
            .stock_item(&line.sku)
            .await?
            .map(|item| item.facts)
            .unwrap_or_default();
        let unit_kg = line
            .weight_g
            .map(|g| f64::from(g) / 1000.0)
            .or(facts.weight_kg)
            .unwrap_or(shipping.default_weight_kg);
        weight_kg += unit_kg * f64::from(line.quantity);
        if dims.is_none() {
            dims = facts
                .dims_cm
                .as_ref()
                .filter(|d| d.len() == 3)
                .map(|d| [d[0], d[1], d[2]]);
        }
        items.push(ShipmentItem {
            sku: line.sku.clone(),
            name: facts.name.clone().unwrap_or_else(|| line.name.clone()),
            units: line.quantity,
            unit_price_paise: line.unit_price_paise,
            hsn: facts.hsn.clone(),
        });
    }
    let order_date =
        crate::domain::clock::rfc3339(order.shipping.paid_at_ms.unwrap_or(order.created_at_ms))
            .replace('T', " ")
            .chars()
            .take(16)
            .collect();
    Ok(ShipmentRequest {
        channel_order_id: order.order_id.clone(),
        order_date,
        pickup_location: shipping.pickup_location.clone(),
        cod: order.payment_method == PaymentMethod::Cod,
        amount_paise: order.amount_paise,
        customer_name: text(&customer["name"]),
        email: text(&customer["email"]),
        phone: text(&customer["phone"]),
        line1: text(&address["line1"]),
        line2: text(&address["line2"]),
        city: text(&address["city"]),
        state: text(&address["state"]),
        pincode: text(&address["pincode"]),
        country: text(&address["country"]),
        items,
        weight_kg: if weight_kg > 0.0 {
            weight_kg
        } else {
            shipping.default_weight_kg
        },
        dims_cm: dims.unwrap_or(shipping.default_dims_cm),
    })
}

/// The stock consequence of moving from `before` to the order's current state.
async fn stock_step(
    deps: &OrderDeps,
    order: &OrderSnapshot,
    before: OrderState,
) -> Result<(), StockFailure> {
    use OrderState as S;
    match (before, order.state) {
        (S::PendingPayment | S::PaymentFailed, S::Paid) => {
            deps.stock
                .sell_reserved(&order.order_id, &order.lines)
                .await
        }
        (S::PendingPayment | S::PaymentFailed, S::Expired | S::Cancelled) => {
            deps.stock.release(&order.order_id, &order.lines).await
        }
        (from, S::Cancelled) if from.holds_unshipped_sale() => {
            deps.stock.restock(&order.order_id, &order.lines).await
        }
        _ => Ok(()),
    }
}

/// Finishes whatever stock step a crash interrupted; each call is idempotent.
async fn repair_stock(deps: &OrderDeps, order: &OrderSnapshot) -> Result<(), StockFailure> {
    let (id, lines) = (&order.order_id, &order.lines);
    match order.state {
        OrderState::PendingPayment | OrderState::PaymentFailed => Ok(()),
        OrderState::Expired | OrderState::OutOfStock => deps.stock.release(id, lines).await,
        OrderState::Cancelled => {
            deps.stock.release(id, lines).await?;
            deps.stock.restock(id, lines).await
        }
        _ => deps.stock.sell_reserved(id, lines).await,
    }
}
