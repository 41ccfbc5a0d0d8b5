//! Timers: reservation expiry (SPEC §7), manual shipping mode's hand-over of
//! queued shipments, payment reconciliation and the hourly stock
//! reconciliation. They read the injected clock, so tests move time instead
//! of waiting for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::cluster::Scope;
use super::order::{Cause, OrderMsg};
use super::order_link::OrderLink;
use super::registry::Route;
use super::switch::ProcessingSwitch;
use crate::clients::razorpay::RazorpayClient;
use crate::domain::clock::SharedClock;
use crate::domain::order::Command;
use crate::storage::Storage;
use crate::telemetry::Metrics;

/// Orders expired per tick at most; the rest wait for the next tick.
const EXPIRY_BATCH: u32 = 1000;
/// Queued shipments handed to operators per tick at most (manual mode).
const SHIPPING_BATCH: u32 = 500;

/// What an order timer needs: where its messages go, which orders are this
/// instance's, the clock it reads and the kill switch it obeys.
#[derive(Clone)]
pub struct OrderTimer {
    pub registry: OrderLink,
    pub scope: Scope,
    pub clock: SharedClock,
    pub switch: ProcessingSwitch,
}

/// The loop both order timers share: every `every`, unless paused, ask
/// `find` which orders are due at the clock's now and send each the message
/// `message` builds for that now.
async fn send_due<F, Fut>(
    timer: OrderTimer,
    every: Duration,
    what: &'static str,
    find: F,
    message: impl Fn(i64) -> OrderMsg,
) where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<String>, crate::storage::StorageError>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if timer.switch.is_paused() {
            continue;
        }
        let now = timer.clock.now_ms();
        let due = match find(now).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, timer = what, "cannot read the orders due");
                continue;
            }
        };
        // Each partition's owner sends its own orders' timers.
        let due = due
            .into_iter()
            .filter(|order_id| timer.scope.owns_order(order_id));
        let sends = due.map(|order_id| {
            timer.registry.send(Route {
                order_id,
                msg: message(now),
            })
        });
        for result in futures_util::future::join_all(sends).await {
            if let Ok(Err(e)) = result {
                tracing::debug!(error = %e, timer = what, "timer message not applied");
            }
        }
    }
}

/// Expires reservations whose time is up, every `every`.
pub async fn expire_reservations(storage: Storage, timer: OrderTimer, every: Duration) {
    let find = |now| {
        let storage = storage.clone();
        async move { storage.reservations_ended(now, EXPIRY_BATCH).await }
    };
    let message = |now_ms| OrderMsg::Command {
        command: Command::ExpireReservation { now_ms },
        cause: Cause::named("timer:reservation_expiry"),
    };
    send_due(timer, every, "reservation_expiry", find, message).await;
}

/// While shipping is in manual mode, hands every queued shipment that comes
/// due to an operator (`manual_required`), every `every`; gateways make no
/// call meanwhile.
pub async fn hold_shipments(
    storage: Storage,
    timer: OrderTimer,
    manual: Arc<AtomicBool>,
    every: Duration,
) {
    let find = |now| {
        let (storage, manual) = (storage.clone(), Arc::clone(&manual));
        async move {
            if !manual.load(Ordering::SeqCst) {
                return Ok(Vec::new());
            }
            storage.shipments_due(now, SHIPPING_BATCH).await
        }
    };
    let message = |_| OrderMsg::Command {
        command: Command::HoldShipping {
            reason: "shipping mode is manual".into(),
        },
        cause: Cause::named("shipping:manual_mode"),
    };
    send_due(timer, every, "hold_shipments", find, message).await;
}

/// Orders checked against Razorpay per round at most.
const RECONCILE_BATCH: u32 = 200;

/// What payment reconciliation needs (SPEC §6).
pub struct PaymentReconciler {
    pub storage: Storage,
    pub registry: OrderLink,
    /// Only the leader reconciles; the confirmations reach each order's owner.
    pub scope: Scope,
    pub clock: SharedClock,
    pub switch: ProcessingSwitch,
    pub razorpay: RazorpayClient,
    /// Orders unpaid for this long are checked.
    pub after_ms: i64,
    pub every: Duration,
}

impl PaymentReconciler {
    /// Asks Razorpay about orders left unpaid, and confirms those it has captured
    /// payments for, as a webhook would. Recovers webhooks that never arrived.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.switch.is_paused() || !self.scope.leads() {
                continue;
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "payment reconciliation round failed");
            }
        }
    }

    async fn round(&self) -> Result<(), crate::storage::StorageError> {
        let cutoff = self.clock.now_ms() - self.after_ms;
        for (order_id, razorpay_order_id) in
            self.storage.unpaid_orders(cutoff, RECONCILE_BATCH).await?
        {
            let payments = match self.razorpay.order_payments(&razorpay_order_id).await {
                Ok(payments) => payments,
                Err(e) => {
                    tracing::warn!(order_id = %order_id, error = %e, "cannot fetch payments from Razorpay");
                    continue;
                }
            };
            // A payment that names another order is not this order's.
            let Some(captured) = payments.into_iter().find(|p| {
                p.is_captured() && p.order_id.as_deref() == Some(razorpay_order_id.as_str())
            }) else {
                continue;
            };
            tracing::warn!(order_id = %order_id, payment_id = %captured.id, "captured payment found by reconciliation: its webhook never arrived");
            let command = Command::ConfirmPayment {
                payment_id: captured.id,
                amount_paise: captured.amount,
                currency: captured.currency,
                stock_reallocated: None,
            };
            let routed = self
                .registry
                .send(Route {
                    order_id: order_id.clone(),
                    msg: OrderMsg::Command {
                        command,
                        cause: Cause::named("reconciliation"),
                    },
                })
                .await;
            if let Ok(Err(e)) = routed {
                tracing::warn!(order_id = %order_id, error = %e, "reconciled payment not applied");
            }
        }
        Ok(())
    }
}

/// Compares every level with its ledger, every `every`, into the mismatch gauge.
pub async fn reconcile_stock(
    storage: Storage,
    scope: Scope,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if !scope.leads() {
            // The leader's gauge is the cluster's: others report no mismatch.
            metrics.stock_reconcile_mismatches.set(0.0);
            continue;
        }
        match storage.reconcile_stock().await {
            Ok((checked, mismatches)) => {
                metrics
                    .stock_reconcile_mismatches
                    .set(mismatches.len() as f64);
                for m in &mismatches {
                    tracing::error!(sku = %m.sku, on_hand = m.on_hand, ledger_sum = m.ledger_sum, "stock level differs from its ledger");
                }
                tracing::debug!(checked, mismatches = mismatches.len(), "stock reconciled");
            }
            Err(e) => tracing::warn!(error = %e, "stock reconciliation failed"),
        }
    }
}
