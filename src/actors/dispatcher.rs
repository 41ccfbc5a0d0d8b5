//! The inbox dispatcher: feeds committed, unprocessed webhooks to order actors.
//!
//! It reads the inbox in id order and routes each entry to its order through the
//! registry; the order actor marks the entry done in the same commit as the
//! effect. Entries are sent in order and the registry keeps that order per
//! order, so one order sees its events in arrival order while different orders
//! proceed in parallel. An entry whose routing failed (storage trouble) stays
//! unprocessed and is tried again from the start of the next pass. On start-up
//! everything left unprocessed by a crash is simply the first pass.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use tokio::sync::Notify;

use super::order::{Cause, OrderError, OrderMsg};
use super::registry::{OrderRegistry, Route};
use crate::domain::clock::SharedClock;
use crate::domain::order::Command;
use crate::domain::webhook::{payment_facts, PaymentFacts};
use crate::storage::{InboxEntry, OrderDeadLetter, Storage, StorageError};

/// Entries read per pass.
const BATCH: u32 = 512;
/// How long an idle dispatcher waits before looking again without a nudge.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Back-off after a pass that could not finish.
const RETRY_AFTER: Duration = Duration::from_millis(250);

pub struct Dispatcher {
    pub storage: Storage,
    pub registry: Addr<OrderRegistry>,
    pub clock: SharedClock,
    pub paused: Arc<AtomicBool>,
    /// Notified by ingest after each accepted webhook.
    pub wake: Arc<Notify>,
}

impl Dispatcher {
    /// Runs until the system stops.
    pub async fn run(self) {
        loop {
            if self.paused.load(Ordering::SeqCst) {
                let _ = tokio::time::timeout(IDLE_POLL, self.wake.notified()).await;
                continue;
            }
            match self.pass().await {
                Ok(0) => {
                    let _ = tokio::time::timeout(IDLE_POLL, self.wake.notified()).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "inbox dispatch pass failed; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
    }

    /// One pass over the oldest unprocessed entries; returns how many it finished.
    pub async fn pass(&self) -> Result<usize, StorageError> {
        let entries = self.storage.pending_inbox(0, BATCH).await?;
        if entries.is_empty() {
            return Ok(0);
        }
        // Each send is queued at once, in inbox order; the replies are awaited together.
        let results =
            futures_util::future::join_all(entries.into_iter().map(|entry| self.dispatch(entry)))
                .await;
        let mut done = 0;
        let mut first_error = None;
        for result in results {
            match result {
                Ok(()) => done += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if done == 0 => Err(e),
            _ => Ok(done),
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
