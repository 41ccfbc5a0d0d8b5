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

use super::stock::{ReserveError, StockFailure, StockSupervisor};
use crate::domain::checkout::ValidCheckout;
use crate::domain::clock::SharedClock;
use crate::domain::order::{
    self, Command, OrderEvent, OrderSnapshot, OrderState, Outcome, PaymentMethod,
};
use crate::storage::{JournalAppend, OrderDeadLetter, OrderWrite, Storage, StorageError};
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
}

/// Where a command came from, for the journal's `cause`.
#[derive(Debug, Clone)]
pub struct Cause {
    pub label: String,
    /// The inbox entry this completes, if any.
    pub inbox_id: Option<i64>,
    /// When the payment event that caused this arrived (for the order-creation latency).
    pub received_at_ms: Option<i64>,
}

impl Cause {
    pub fn named(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            inbox_id: None,
            received_at_ms: None,
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

#[derive(Clone)]
struct Loaded {
    order: Option<OrderSnapshot>,
    fingerprint: Option<String>,
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
        self.busy = true;
        self.arm_idle_timer(ctx);
        let deps = Arc::clone(&self.deps);
        let order_id = self.order_id.clone();
        let loaded = self.loaded.clone();
        let work = async move {
            let loaded = match loaded {
                Some(loaded) => loaded,
                None => {
                    let stored = deps.storage.load_order(&order_id).await?;
                    Loaded {
                        fingerprint: stored.as_ref().map(|s| s.fingerprint.clone()),
                        order: stored.map(|s| s.snapshot),
                    }
                }
            };
            let mut loaded_after = loaded.clone();
            let reply = handle_message(&deps, &order_id, &mut loaded_after, msg).await;
            // Whatever happened, the actor's view is what storage now holds.
            Ok::<_, OrderError>((reply, loaded_after))
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|result, actor, ctx| {
            actor.busy = false;
            match result {
                Ok((reply, loaded)) => {
                    let terminal = loaded
                        .order
                        .as_ref()
                        .is_some_and(|o| o.state == OrderState::Refunded);
                    actor.loaded = Some(loaded);
                    if terminal {
                        ctx.stop();
                    }
                    reply
                }
                Err(e) => {
                    // Unknown state after a storage failure: reload on the next message.
                    actor.loaded = None;
                    Err(e)
                }
            }
        })))
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
        OrderMsg::Passivate => Ok(OrderReply::Passivated),
    }
}

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
    if checkout.payment_method == PaymentMethod::Cod {
        // Cash on delivery needs no payment: the order is confirmed at once.
        let confirm = Command::ConfirmPayment {
            payment_id: format!("cod:{}", checkout.order_id),
            amount_paise: checkout.amount_paise,
            currency: checkout.currency.clone(),
            stock_reallocated: None,
        };
        run_command(deps, &mut order, confirm, Cause::named("checkout:cod")).await?;
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
            let before = order.state;
            let mut next = order.clone();
            for event in &events {
                order::apply(&mut next, event, now);
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
            if order.state != before {
                deps.metrics.order_transition(order.state);
                tracing::info!(order_id = %order.order_id, from = %before, to = %order.state, cause = %cause.label, "order transition");
                if order.state == OrderState::Paid {
                    deps.metrics.revenue(order.amount_paise);
                    if let Some(received) = cause.received_at_ms {
                        deps.metrics
                            .order_creation_seconds
                            .record((now - received).max(0) as f64 / 1000.0);
                    }
                }
            }
            stock_step(deps, order, before).await?;
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

async fn finish_inbox(
    deps: &OrderDeps,
    cause: &Cause,
    letter: Option<OrderDeadLetter>,
    now: i64,
) -> Result<(), StorageError> {
    match cause.inbox_id {
        Some(inbox_id) => deps.storage.finish_inbox_entry(inbox_id, letter, now).await,
        None => match letter {
            Some(letter) => deps.storage.file_dead_letter("order", letter, now).await,
            None => Ok(()),
        },
    }
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
