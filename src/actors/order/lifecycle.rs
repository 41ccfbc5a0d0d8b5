//! The order's lifecycle outside Shiprocket: registering a checkout, the
//! commands of payments, timers and operators, and committing what they
//! decide together with the stock step the new state implies.

use std::sync::atomic::Ordering;

use super::{Cause, Loaded, OrderDeps, OrderError, OrderReply};
use crate::actors::stock::{ReserveError, StockFailure};
use crate::domain::checkout::{CustomerRecord, ValidCheckout};
use crate::domain::order::{
    self, Command, OrderEvent, OrderLine, OrderSnapshot, OrderState, Outcome, PaymentMethod,
};
use crate::domain::shipping::queue_entries;
use crate::storage::{DeferredCommand, JournalAppend, OrderDeadLetter, OrderWrite, StorageError};

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
    let record = CustomerRecord {
        customer: checkout.customer.clone(),
        shipping_address: checkout.shipping_address.clone(),
    };
    let customer =
        serde_json::to_value(&record).map_err(|e| StorageError::Encoding(e.to_string()))?;
    loaded.customer = Some(record);
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

pub(super) async fn run_command(
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

/// Commits `events` (with the cause's inbox entry, the order's shipping-queue
/// rows when they change, and the dead letter an event files), then performs
/// what the new state implies: metrics, the stock step, waking the gateways
/// for work now due, and handing a paid order to shipping.
pub(super) async fn commit_events(
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
    let queue_before = queue_entries(order);
    let queue_after = queue_entries(&next);
    let queue_changed = queue_after != queue_before;
    let work_due = queue_changed && queue_after.iter().any(|e| e.due_at_ms <= now);
    let dead_letter = events.iter().find_map(|event| match event {
        OrderEvent::ShiprocketCancelFailed { account, error } => Some(OrderDeadLetter {
            reason: "shiprocket_cancel_failed",
            detail: format!(
                "order {}: Shiprocket account {account} refused the cancellation: {error}",
                order.order_id
            ),
            event_id: None,
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
    deps.storage
        .commit_order(OrderWrite {
            snapshot: next.clone(),
            journal,
            inbox_done: cause.inbox_id,
            dead_letter,
            queue: queue_changed.then_some(queue_after),
        })
        .await?;
    *order = next;
    if work_due {
        deps.shipping.queue.wake();
    }
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
    queue_if_paid(deps, order, now).await
}

/// A paid order goes to shipping, or straight to an operator while shipping
/// is blocked; without any Shiprocket account it stays `paid`.
pub(super) async fn queue_if_paid(
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
    deps.stock.release(order_id, &lines).await?;
    Ok(())
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
        (from, S::Cancelled | S::Refunded) if from.holds_unshipped_sale() => {
            deps.stock.restock(&order.order_id, &order.lines).await
        }
        _ => Ok(()),
    }
}

/// Finishes whatever stock step a crash interrupted; each call is idempotent.
pub(super) async fn repair_stock(
    deps: &OrderDeps,
    order: &OrderSnapshot,
) -> Result<(), StockFailure> {
    let (id, lines) = (&order.order_id, &order.lines);
    match order.state {
        OrderState::PendingPayment | OrderState::PaymentFailed => Ok(()),
        OrderState::Expired | OrderState::OutOfStock => deps.stock.release(id, lines).await,
        OrderState::Cancelled => {
            deps.stock.release(id, lines).await?;
            deps.stock.restock(id, lines).await
        }
        // Refunded before it left the warehouse: the units go back.
        OrderState::Refunded if order.shipping.shipped_at_ms.is_none() => {
            deps.stock.release(id, lines).await?;
            deps.stock.restock(id, lines).await
        }
        _ => deps.stock.sell_reserved(id, lines).await,
    }
}
