//! The order's lifecycle outside Shiprocket: registering a checkout, the
//! commands of payments, timers and operators, and committing what they
//! decide together with the stock step the new state implies.

use std::sync::atomic::Ordering;

use super::{Cause, Loaded, OrderDeps, OrderError, OrderReply};
use crate::actors::stock::{settled_after, ReserveError, Settled};
use crate::domain::checkout::{CustomerRecord, ValidCheckout};
use crate::domain::dead_letter::{LetterReason, LetterSource};
use crate::domain::order::{
    self, Command, OrderEvent, OrderLine, OrderSnapshot, OrderState, Outcome, PaymentMethod,
};
use crate::domain::shipping::queue_entries;
use crate::domain::stock::{reserve_moves, transition_moves};
use crate::storage::{
    DeferredCommand, JournalAppend, NewOrder, OrderDeadLetter, OrderWrite, StorageError,
};

/// The cause journaled for a cash-on-delivery confirmation.
const COD_CAUSE: &str = "checkout:cod";

pub(super) async fn create(
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
    let mut events = vec![created];
    // Cash on delivery needs no payment: registering and confirming it are one
    // commit (SPEC §5), or, while processing is paused, the confirmation is
    // stored with the order and runs on resume.
    let cod_confirmation =
        (checkout.payment_method == PaymentMethod::Cod).then(|| Command::ConfirmPayment {
            payment_id: format!("cod:{}", checkout.order_id),
            amount_paise: checkout.amount_paise,
            currency: checkout.currency.clone(),
            stock_reallocated: None,
        });
    let paused = deps.switch.is_paused();
    let mut deferred = None;
    if let Some(confirm) = cod_confirmation {
        if paused {
            deferred = Some(DeferredCommand {
                id: 0,
                order_id: checkout.order_id.clone(),
                command: confirm,
                cause: COD_CAUSE.into(),
                received_at_ms: now,
            });
        } else if let Outcome::Record(paid) = order::decide(&order, &confirm) {
            for event in &paid {
                order::apply(&mut order, event, now);
            }
            events.extend(paid);
            events.extend(follow_ups(deps, &mut order, now));
        }
    }
    // The holds, and the sale of a confirmed order, in the order's own commit.
    let mut moves = reserve_moves(&checkout.order_id, &checkout.lines);
    moves.extend(transition_moves(
        &checkout.order_id,
        &checkout.lines,
        OrderState::PendingPayment,
        order.state,
    ));
    let prepared = match deps.stock.prepare_new_order(moves).await {
        Ok(prepared) => prepared,
        Err(ReserveError::Insufficient(skus)) => {
            // The repeat of a checkout that took the last units is that
            // order, not a refusal: an actor that has not read storage looks.
            if loaded.unread {
                if let Some(existing) =
                    stored_checkout(deps, loaded, &checkout.order_id, &fingerprint).await?
                {
                    return Ok(existing);
                }
            }
            deps.metrics.stock_reservation(false);
            return Err(OrderError::InsufficientStock(skus));
        }
        Err(ReserveError::Failed(e)) => return Err(e.into()),
    };
    let record = CustomerRecord {
        customer: checkout.customer.clone(),
        shipping_address: checkout.shipping_address.clone(),
    };
    let cause = |event: OrderEvent| JournalAppend {
        cause: if matches!(event, OrderEvent::Created { .. }) {
            "checkout".into()
        } else {
            COD_CAUSE.into()
        },
        event,
        at_ms: now,
    };
    let inserted = deps
        .storage
        .insert_order(NewOrder {
            snapshot: order.clone(),
            customer: record.clone(),
            fingerprint: fingerprint.clone(),
            journal: events.into_iter().map(cause).collect(),
            deferred,
            stock: prepared.steps.clone(),
            queue: queue_entries(&order),
        })
        .await;
    match inserted {
        Ok(Some(applied)) => prepared.settle(Ok(&applied)),
        Ok(None) => {
            prepared.settle(Err(Settled::NotCommitted));
            // The order exists although this actor had not seen it: a repeat
            // checkout to an actor that had not read storage, or an earlier
            // attempt whose answer was lost (a 503 in doubt) that committed
            // after all. Its repeat with the same checkout is that order.
            return stored_checkout(deps, loaded, &checkout.order_id, &fingerprint)
                .await?
                .ok_or(OrderError::Conflict);
        }
        Err(e) => {
            prepared.settle(Err(settled_after(&e)));
            return Err(e.into());
        }
    }
    deps.metrics.stock_reservation(true);
    deps.metrics.order_transition(OrderState::PendingPayment);
    if order.state != OrderState::PendingPayment {
        entered(deps, &order, order.state, &Cause::named(COD_CAUSE), now);
        deps.shipping.queue.wake();
    }
    loaded.customer = Some(record);
    loaded.fingerprint = Some(fingerprint);
    loaded.order = Some(order.clone());
    loaded.unread = false;
    Ok(OrderReply::Created(order))
}

/// A checkout's answer when its order is already stored: the order, if the
/// checkout is the same as the one that made it, else [`OrderError::Conflict`];
/// `None` when no such order is stored. The actor's view becomes the stored order.
async fn stored_checkout(
    deps: &OrderDeps,
    loaded: &mut Loaded,
    order_id: &str,
    fingerprint: &str,
) -> Result<Option<OrderReply>, OrderError> {
    let Some(stored) = deps.storage.load_order(order_id).await? else {
        return Ok(None);
    };
    let same = stored.fingerprint == fingerprint;
    let snapshot = stored.snapshot.clone();
    *loaded = Loaded::stored(stored);
    if same {
        Ok(Some(OrderReply::Existing(snapshot)))
    } else {
        Err(OrderError::Conflict)
    }
}

/// What a state reached in this commit brings with it: a paid order goes to
/// shipping at once, or straight to an operator while shipping is blocked
/// (without any Shiprocket account it stays `paid`).
fn follow_ups(deps: &OrderDeps, order: &mut OrderSnapshot, now: i64) -> Vec<OrderEvent> {
    if order.state != OrderState::Paid || !shipping_configured(deps) {
        return Vec::new();
    }
    let queue = Command::QueueShipping {
        manual: shipping_blocked(deps),
    };
    match order::decide(order, &queue) {
        Outcome::Record(events) => {
            for event in &events {
                order::apply(order, event, now);
            }
            events
        }
        _ => Vec::new(),
    }
}

pub(super) async fn run_command(
    deps: &OrderDeps,
    order: &mut OrderSnapshot,
    command: Command,
    cause: Cause,
) -> Result<OrderReply, OrderError> {
    let now = deps.clock.now_ms();
    match order::decide(order, &command) {
        Outcome::NeedsStock => {
            // A payment after expiry: sold anew if the stock is still there,
            // else paid out of stock (money to give back).
            for reallocated in [true, false] {
                let Command::ConfirmPayment {
                    payment_id,
                    amount_paise,
                    currency,
                    ..
                } = &command
                else {
                    break;
                };
                let retry = Command::ConfirmPayment {
                    payment_id: payment_id.clone(),
                    amount_paise: *amount_paise,
                    currency: currency.clone(),
                    stock_reallocated: Some(reallocated),
                };
                let Outcome::Record(events) = order::decide(order, &retry) else {
                    break;
                };
                match commit_events(deps, order, events, &cause, now).await {
                    Err(OrderError::InsufficientStock(_)) if reallocated => continue,
                    done => {
                        done?;
                        return Ok(OrderReply::Order(order.clone()));
                    }
                }
            }
            finish_inbox(deps, &cause, None, now).await?;
            Ok(OrderReply::Order(order.clone()))
        }
        Outcome::Record(events) => {
            commit_events(deps, order, events, &cause, now).await?;
            Ok(OrderReply::Order(order.clone()))
        }
        Outcome::AlreadyDone | Outcome::Ignored => {
            finish_inbox(deps, &cause, None, now).await?;
            Ok(OrderReply::Order(order.clone()))
        }
        Outcome::AmountMismatch => {
            let letter = OrderDeadLetter {
                reason: LetterReason::AmountMismatch,
                detail: format!(
                    "order {} expects {} paise {}",
                    order.order_id, order.amount_paise, order.currency
                ),
                event_id: cause.event_id.clone(),
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

/// Commits `events` in one transaction with all they imply: the follow-ups of
/// the state reached (a paid order is queued for shipping), the stock steps of
/// the move (decided by the shards, which hold the SKUs until the commit's
/// outcome is known), the cause's inbox entry, the order's shipping-queue rows
/// when they change, and the dead letter an event files. Then metrics, and
/// the gateways are woken for work now due.
pub(super) async fn commit_events(
    deps: &OrderDeps,
    order: &mut OrderSnapshot,
    mut events: Vec<OrderEvent>,
    cause: &Cause,
    now: i64,
) -> Result<(), OrderError> {
    let mut next = order.clone();
    let mut states = Vec::new();
    for event in &events {
        let from = next.state;
        order::apply(&mut next, event, now);
        if next.state != from {
            states.push(next.state);
        }
    }
    let follow = follow_ups(deps, &mut next, now);
    if !follow.is_empty() {
        states.push(next.state);
        events.extend(follow);
    }
    let moves = transition_moves(&order.order_id, &order.lines, order.state, next.state);
    let prepared = match deps.stock.prepare_transition(moves).await {
        Ok(prepared) => prepared,
        Err(ReserveError::Insufficient(skus)) => return Err(OrderError::InsufficientStock(skus)),
        Err(ReserveError::Failed(e)) => return Err(e.into()),
    };
    let queue_before = queue_entries(order);
    let queue_after = queue_entries(&next);
    let queue_changed = queue_after != queue_before;
    let work_due = queue_changed && queue_after.iter().any(|e| e.due_at_ms <= now);
    let dead_letter = events.iter().find_map(|event| match event {
        OrderEvent::ShiprocketCancelFailed { account, error } => Some(OrderDeadLetter {
            reason: LetterReason::ShiprocketCancelFailed,
            detail: format!(
                "order {}: Shiprocket account {account} refused the cancellation: {error}",
                order.order_id
            ),
            event_id: None,
        }),
        // A replay of the letter reports its outcome there; it files no second one.
        OrderEvent::RefundUnapplied {
            refund_id, state, ..
        } if cause.replay_of.is_none() => Some(OrderDeadLetter {
            reason: LetterReason::RefundUnapplied,
            detail: format!(
                "order {}: refund {refund_id} refunds the payment in full, but an order in {state} cannot be refunded",
                order.order_id
            ),
            event_id: cause.event_id.clone(),
        }),
        _ => None,
    });
    let journal = events
        .into_iter()
        .map(|event| JournalAppend {
            event,
            at_ms: now,
            cause: cause.label.clone(),
        })
        .collect();
    let committed = deps
        .storage
        .commit_order(OrderWrite {
            snapshot: next.clone(),
            journal,
            inbox_done: cause.inbox_id,
            dead_letter,
            queue: queue_changed.then_some(queue_after),
            stock: prepared.steps.clone(),
            audit: cause.audit.as_ref().map(|a| a.record.clone()),
        })
        .await;
    match committed {
        Ok(applied) => {
            prepared.settle(Ok(&applied));
            if let Some(audit) = &cause.audit {
                audit.committed();
            }
        }
        Err(e) => {
            prepared.settle(Err(settled_after(&e)));
            return Err(e.into());
        }
    }
    *order = next;
    if work_due {
        deps.shipping.queue.wake();
    }
    for state in states {
        entered(deps, order, state, cause, now);
    }
    Ok(())
}

/// Metrics and the log line of `order` entering `state`.
fn entered(deps: &OrderDeps, order: &OrderSnapshot, state: OrderState, cause: &Cause, now: i64) {
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

/// A paid order found at start goes to shipping by the same rule as a fresh
/// payment (paid while no account was configured, or by an older dropshipd).
pub(super) async fn queue_if_paid(
    deps: &OrderDeps,
    order: &mut OrderSnapshot,
    now: i64,
) -> Result<(), OrderError> {
    let mut next = order.clone();
    let events = follow_ups(deps, &mut next, now);
    if events.is_empty() {
        return Ok(());
    }
    commit_events(deps, order, events, &Cause::named("shipping"), now).await
}

/// Releases a hold left by a checkout that crashed before its order was stored.
pub(super) async fn release_orphan_hold(
    deps: &OrderDeps,
    order_id: &str,
) -> Result<(), OrderError> {
    let allocations = deps.storage.allocations(order_id).await?;
    let lines: Vec<OrderLine> = allocations
        .iter()
        .map(|a| OrderLine {
            sku: a.sku.clone(),
            name: String::new(),
            quantity: u32::try_from(a.quantity).unwrap_or(0),
            unit_price_paise: 0,
            weight_g: None,
        })
        .collect();
    deps.stock
        .release(order_id, &lines)
        .await
        .map_err(|e| match e {
            ReserveError::Insufficient(skus) => OrderError::InsufficientStock(skus),
            ReserveError::Failed(e) => e.into(),
        })
}

/// Whether any Shiprocket account is configured. Without one, paid orders
/// stay `paid` (a store that ships by other means); a start with accounts
/// queues them.
fn shipping_configured(deps: &OrderDeps) -> bool {
    !deps.shipping.queue.router().is_empty()
}

/// Why paid orders cannot go to Shiprocket automatically right now, if so.
pub(super) fn shipping_blocked(deps: &OrderDeps) -> Option<String> {
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
            Some(letter) => {
                deps.storage
                    .file_dead_letter(LetterSource::Order, letter, now)
                    .await
            }
            None => Ok(()),
        },
    }
}

/// Finishes a stock step an older dropshipd (whose stock steps followed the
/// order's commit) left undone in a crash; each step is idempotent.
pub(super) async fn repair_stock(
    deps: &OrderDeps,
    order: &OrderSnapshot,
) -> Result<(), OrderError> {
    let (id, lines) = (&order.order_id, &order.lines);
    let stock = &deps.stock;
    let repaired = match order.state {
        OrderState::PendingPayment | OrderState::PaymentFailed => Ok(()),
        OrderState::Expired | OrderState::OutOfStock => stock.release(id, lines).await,
        OrderState::Cancelled => match stock.release(id, lines).await {
            Ok(()) => stock.restock(id, lines).await,
            failed => failed,
        },
        // Refunded before it left the warehouse: the units go back.
        OrderState::Refunded if order.shipping.shipped_at_ms.is_none() => {
            match stock.release(id, lines).await {
                Ok(()) => stock.restock(id, lines).await,
                failed => failed,
            }
        }
        _ => stock.sell_reserved(id, lines).await,
    };
    repaired.map_err(|e| match e {
        ReserveError::Insufficient(skus) => OrderError::InsufficientStock(skus),
        ReserveError::Failed(e) => e.into(),
    })
}
