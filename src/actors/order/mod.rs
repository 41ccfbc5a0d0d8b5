//! `OrderActor`: one per order with work in flight, the only code that changes
//! its order (SPEC §1, §6).
//!
//! Messages are handled one at a time, each to completion (its commits
//! included) before the next, in arrival order. The actor is a shell: for
//! every message it asks the pure rules of [`crate::domain`] what to record
//! ([`lifecycle`] for payments, timers and operators, [`shipping`] for the
//! Shiprocket steps a gateway offers it), commits the journal events with the
//! snapshot, the order's shipping-queue rows and the inbox entry that caused
//! them, and then performs the stock step the transition implies. Recording
//! before doing means a crash between the two leaves an order whose stock
//! lags its state; [`OrderMsg::RepairStock`], sent at start-up for such
//! orders, finishes the step, and every stock step is idempotent.
//!
//! Nothing here waits for Shiprocket: a queued order is a row in storage, and
//! the gateway that has a permit for it comes to the actor, which journals the
//! call and hands it over. Every other message is answered at once.
//!
//! An idle actor stops itself (passivation); the next message for the order
//! starts a new one from storage.

mod lifecycle;
mod shipping;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::shipping::{ShippingQueue, ShiprocketCall};
use super::stock::{StockFailure, StockSupervisor};
use super::switch::ProcessingSwitch;
use crate::domain::checkout::{CustomerRecord, ValidCheckout};
use crate::domain::clock::SharedClock;
use crate::domain::order::{Command, OrderSnapshot, OrderState};
use crate::domain::shipping::{Answer, CallFailure, ParcelDefaults, ShippingPolicy, Step};
use crate::storage::{AuditedAction, Storage, StorageError, StoredOrder};
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
    /// The kill switch: while on, nothing advances an order.
    pub switch: ProcessingSwitch,
    pub shipping: ShippingDeps,
}

/// What the shipping steps need.
pub struct ShippingDeps {
    /// Woken when an order's Shiprocket work becomes due; knows the accounts'
    /// health for failover decisions.
    pub queue: ShippingQueue,
    pub policy: ShippingPolicy,
    pub parcel: ParcelDefaults,
    /// `shipping.mode = manual` (or the admin switch): paid orders wait for an operator.
    pub manual: Arc<AtomicBool>,
}

/// Where a command came from, for the journal's `cause`.
#[derive(Debug, Clone)]
pub struct Cause {
    pub label: String,
    /// The Razorpay event behind it (its dedup key), if any: what a dead
    /// letter filed for it names.
    pub event_id: Option<String>,
    /// The inbox entry this completes, if any.
    pub inbox_id: Option<i64>,
    /// When the payment event that caused this arrived (for the order-creation latency).
    pub received_at_ms: Option<i64>,
    /// An operator's replay of this dead letter: a refusal is reported to the
    /// replay, which records it on the letter, instead of filing a new one.
    pub replay_of: Option<i64>,
    /// The operator's action behind it, audited in the commit of its effect.
    pub audit: Option<AuditedAction>,
}

impl Cause {
    pub fn named(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            event_id: None,
            inbox_id: None,
            received_at_ms: None,
            replay_of: None,
            audit: None,
        }
    }

    /// An operator's action, audited with what it does.
    pub fn operator(label: impl Into<String>, audit: Option<AuditedAction>) -> Self {
        Self {
            audit,
            ..Self::named(label)
        }
    }
}

/// A gateway's offer to an order: the answer to the order's last call on
/// this account, and whether the account holds a permit for another now.
#[derive(Debug, Clone)]
pub struct ShippingTurn {
    pub account: String,
    pub answered: Option<(Step, Result<Answer, CallFailure>)>,
    pub may_call: bool,
}

/// The call an order journaled and hands to the gateway to make.
#[derive(Debug, Clone)]
pub struct PlannedCall {
    pub step: Step,
    pub call: ShiprocketCall,
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
    /// A paid order found at start goes to shipping by the same rule as a
    /// fresh payment (paid while no account was configured, or just before a crash).
    QueuePaid,
    /// A gateway's turn: record its answer, plan the next call.
    Shipping(ShippingTurn),
    /// Stop now (the registry is over its cap).
    Passivate,
}

#[derive(Debug, Clone)]
pub enum OrderReply {
    Created(OrderSnapshot),
    /// The same checkout was registered before: the current order.
    Existing(OrderSnapshot),
    Order(OrderSnapshot),
    /// To a shipping turn: the call to make now, if any.
    Planned(Option<PlannedCall>),
    /// Processing is paused: the command is stored and runs on resume.
    Deferred,
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
    /// Processing is paused and the command's own record (an inbox entry)
    /// keeps it: it is delivered once processing resumes.
    #[error("processing is paused")]
    Paused,
    #[error(transparent)]
    Storage(StorageError),
    #[error(transparent)]
    Stock(#[from] StockFailure),
    #[error("order actor unavailable: {0}")]
    Mailbox(#[from] MailboxError),
}

impl From<StorageError> for OrderError {
    /// A stock change the database refused is the refusal the shard would
    /// have made had it known the level (another instance changed it).
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::StockRefused {
                sku,
                error: crate::domain::stock::StockError::Insufficient { .. },
            } => Self::InsufficientStock(vec![sku]),
            StorageError::StockRefused { error, .. } => Self::Stock(StockFailure::Refused(error)),
            other => Self::Storage(other),
        }
    }
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

/// The order as the actor holds it between messages; the default is "no such
/// order in storage".
#[derive(Default)]
struct Loaded {
    order: Option<OrderSnapshot>,
    fingerprint: Option<String>,
    /// Who it ships to, kept for the Shiprocket request.
    customer: Option<CustomerRecord>,
    /// Absent only as far as this actor knows: storage was not read. A
    /// checkout to a new actor starts so, since nearly every checkout is a new
    /// order and its insert finds out if it is not ([`lifecycle::create`]).
    unread: bool,
}

impl Loaded {
    /// No order, without asking storage.
    fn unread() -> Self {
        Self {
            unread: true,
            ..Self::default()
        }
    }

    /// The order as storage holds it.
    fn stored(stored: StoredOrder) -> Self {
        Self {
            order: Some(stored.snapshot),
            fingerprint: Some(stored.fingerprint),
            customer: Some(stored.customer),
            unread: false,
        }
    }
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
        // Taken, not copied: the atomic response runs nothing else on this
        // actor until the completion below puts the (updated) view back.
        let loaded = self.loaded.take();
        let work = async move {
            let mut loaded = match loaded {
                Some(loaded) => loaded,
                None if matches!(msg, OrderMsg::Create { .. }) => Loaded::unread(),
                None => load(&deps, &order_id).await?,
            };
            let reply = handle_message(&deps, &order_id, &mut loaded, msg).await;
            Ok::<_, OrderError>((reply, loaded))
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |result, actor, ctx| {
                actor.busy = false;
                match result {
                    Ok((reply, loaded)) => {
                        let terminal = loaded.order.as_ref().is_some_and(|o| {
                            o.state == OrderState::Refunded && o.shipping.cleanups.is_empty()
                        });
                        // After a storage or stock failure part of the work may have
                        // committed: the next message reads the order afresh.
                        let in_doubt =
                            matches!(reply, Err(OrderError::Storage(_) | OrderError::Stock(_)));
                        // A view never checked against storage is not kept:
                        // the next message reads the order.
                        actor.loaded = (!in_doubt && !loaded.unread).then_some(loaded);
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
            },
        )))
    }
}

async fn load(deps: &OrderDeps, order_id: &str) -> Result<Loaded, OrderError> {
    let stored = deps.storage.load_order(order_id).await?;
    Ok(stored.map(Loaded::stored).unwrap_or_default())
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
        } => lifecycle::create(deps, loaded, *checkout, fingerprint).await,
        OrderMsg::Command { command, cause } => {
            let order = loaded.order.as_mut().ok_or(OrderError::NotFound)?;
            lifecycle::run_command(deps, order, command, cause).await
        }
        OrderMsg::RepairStock => match loaded.order.as_ref() {
            Some(order) => {
                lifecycle::repair_stock(deps, order).await?;
                Ok(OrderReply::Order(order.clone()))
            }
            None => {
                lifecycle::release_orphan_hold(deps, order_id).await?;
                Err(OrderError::NotFound)
            }
        },
        OrderMsg::QueuePaid => {
            let order = loaded.order.as_mut().ok_or(OrderError::NotFound)?;
            lifecycle::queue_if_paid(deps, order, deps.clock.now_ms()).await?;
            Ok(OrderReply::Order(order.clone()))
        }
        OrderMsg::Shipping(turn) => {
            shipping::take_turn(deps, loaded, turn, deps.switch.is_paused()).await
        }
        OrderMsg::Passivate => Ok(OrderReply::Passivated),
    }
}
