//! The inbox dispatcher: feeds committed, unprocessed webhooks to order actors.
//!
//! It reads the inbox in id order and routes each entry to its order through the
//! registry; the order actor marks the entry done in the same commit as the
//! effect. Entries are sent in order and the registry keeps that order per
//! order, so one order sees its events in arrival order while different orders
//! proceed in parallel. An entry whose routing failed (storage trouble) stays
//! unprocessed and the reading resumes from it. On start-up everything a crash
//! left unprocessed is simply the first thing read.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use tokio::sync::{Notify, Semaphore};

use super::order::{Cause, OrderError, OrderMsg};
use super::registry::{OrderRegistry, Route};
use crate::domain::clock::SharedClock;
use crate::domain::order::Command;
use crate::domain::webhook::{payment_facts, PaymentFacts};
use crate::storage::{InboxEntry, OrderDeadLetter, Storage, StorageError};

/// Entries read per query.
const BATCH: u32 = 256;
/// Entries being routed at once; beyond this the dispatcher waits for replies.
const IN_FLIGHT: usize = 1024;
/// How long an idle dispatcher waits before looking again without a nudge.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Back-off after a failed read.
const RETRY_AFTER: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Dispatcher {
    pub storage: Storage,
    pub registry: Addr<OrderRegistry>,
    pub clock: SharedClock,
    pub paused: Arc<AtomicBool>,
    /// Notified by ingest after each accepted webhook.
    pub wake: Arc<Notify>,
}

/// Entries handed out and not yet finished, and where to resume after a failure.
#[derive(Default)]
struct Progress {
    in_flight: HashSet<i64>,
    /// The smallest id whose routing failed since the last read.
    retry_from: Option<i64>,
}

impl Dispatcher {
    /// Runs until the system stops. Entries stream through: each is routed as
    /// soon as it is read, up to `IN_FLIGHT` at once, so one slow order never
    /// holds up the others.
    pub async fn run(self) {
        let progress = Arc::new(Mutex::new(Progress::default()));
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut cursor = 0i64;
        loop {
            if self.paused.load(Ordering::SeqCst) {
                let _ = tokio::time::timeout(IDLE_POLL, self.wake.notified()).await;
                continue;
            }
            if let Some(failed) = progress.lock().ok().and_then(|mut p| p.retry_from.take()) {
                cursor = cursor.min(failed - 1);
            }
            let entries = match self.storage.pending_inbox(cursor, BATCH).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the inbox; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
            };
            if entries.is_empty() {
                // Entries that failed are retried after a pause, not in a tight loop.
                let _ = tokio::time::timeout(IDLE_POLL, self.wake.notified()).await;
                continue;
            }
            for entry in entries {
                cursor = cursor.max(entry.id);
                let fresh = progress
                    .lock()
                    .map(|mut p| p.in_flight.insert(entry.id))
                    .unwrap_or(false);
                if !fresh {
                    continue;
                }
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let (dispatcher, progress) = (self.clone(), Arc::clone(&progress));
                actix::spawn(async move {
                    let id = entry.id;
                    let result = dispatcher.dispatch(entry).await;
                    if let Ok(mut p) = progress.lock() {
                        p.in_flight.remove(&id);
                        if let Err(e) = &result {
                            tracing::warn!(inbox_id = id, error = %e, "inbox entry not dispatched; will retry");
                            p.retry_from = Some(p.retry_from.map_or(id, |r| r.min(id)));
                        }
                    }
                    drop(permit);
                });
            }
        }
    }

    async fn dispatch(&self, entry: InboxEntry) -> Result<(), StorageError> {
        let now = self.clock.now_ms();
        let Some(facts) = payment_facts(&entry.body) else {
            // Stored and acknowledged, with no order effect (payment.authorized, ...).
            return self.storage.finish_inbox_entry(entry.id, None, now).await;
        };
        let unknown = |detail: String| OrderDeadLetter {
            reason: "unknown_order",
            detail,
            event_id: Some(entry.dedup_key.clone()),
        };
        let Some(razorpay_order_id) = facts.razorpay_order_id().map(str::to_owned) else {
            let letter = unknown("the payment names no Razorpay order".into());
            return self
                .storage
                .finish_inbox_entry(entry.id, Some(letter), now)
                .await;
        };
        let Some(order_id) = self
            .storage
            .order_id_for_razorpay(&razorpay_order_id)
            .await?
        else {
            let letter = unknown(format!("no order has Razorpay order {razorpay_order_id}"));
            return self
                .storage
                .finish_inbox_entry(entry.id, Some(letter), now)
                .await;
        };
        let command = match facts {
            PaymentFacts::Captured {
                payment_id,
                amount_paise,
                currency,
                ..
            } => Command::ConfirmPayment {
                payment_id,
                amount_paise,
                currency,
                stock_reallocated: None,
            },
            PaymentFacts::Failed { payment_id, .. } => Command::FailPayment {
                payment_id: Some(payment_id),
            },
            PaymentFacts::Refunded {
                refund_id,
                amount_paise,
                payment_id,
                payment_amount_paise,
                payment_refunded_paise,
                ..
            } => Command::RecordRefund {
                refund_id,
                amount_paise,
                payment_id,
                payment_amount_paise,
                payment_refunded_paise,
            },
        };
        let cause = Cause {
            label: format!("webhook:{}", entry.dedup_key),
            inbox_id: Some(entry.id),
            received_at_ms: Some(entry.received_at_ms),
        };
        let routed = self
            .registry
            .send(Route {
                order_id,
                msg: OrderMsg::Command { command, cause },
            })
            .await;
        match routed {
            // The actor committed the entry as done with (or as) its effect.
            Ok(Ok(_))
            | Ok(Err(OrderError::AmountMismatch | OrderError::InvalidTransition { .. })) => Ok(()),
            Ok(Err(OrderError::NotFound)) => {
                let letter = unknown(format!(
                    "order for Razorpay order {razorpay_order_id} vanished"
                ));
                self.storage
                    .finish_inbox_entry(entry.id, Some(letter), now)
                    .await
            }
            Ok(Err(OrderError::Storage(e))) => Err(e),
            Ok(Err(e)) => Err(StorageError::Reader(e.to_string())),
            Err(e) => Err(StorageError::Reader(e.to_string())),
        }
    }
}
