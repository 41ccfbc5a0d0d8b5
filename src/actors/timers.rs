//! Timers: reservation expiry (SPEC §7) and the hourly stock reconciliation.
//! Both read the injected clock, so tests move time instead of waiting for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use super::order::{Cause, OrderMsg};
use super::registry::{OrderRegistry, Route};
use crate::domain::clock::SharedClock;
use crate::domain::order::Command;
use crate::storage::Storage;
use crate::telemetry::Metrics;

/// Orders expired per tick at most; the rest wait for the next tick.
const EXPIRY_BATCH: u32 = 1000;

/// Expires reservations whose time is up, every `every`.
pub async fn expire_reservations(
    storage: Storage,
    registry: Addr<OrderRegistry>,
    clock: SharedClock,
    paused: Arc<AtomicBool>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if paused.load(Ordering::SeqCst) {
            continue;
        }
        let now = clock.now_ms();
        let due = match storage.reservations_ended(now, EXPIRY_BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read ended reservations");
                continue;
            }
        };
        let sends = due.into_iter().map(|order_id| {
            registry.send(Route {
                order_id,
                msg: OrderMsg::Command {
                    command: Command::ExpireReservation { now_ms: now },
                    cause: Cause::named("timer:reservation_expiry"),
                },
            })
        });
        for result in futures_util::future::join_all(sends).await {
            if let Ok(Err(e)) = result {
                tracing::debug!(error = %e, "reservation expiry not applied");
            }
        }
    }
}

/// Compares every level with its ledger, every `every`, into the mismatch gauge.
pub async fn reconcile_stock(storage: Storage, metrics: Arc<Metrics>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
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
