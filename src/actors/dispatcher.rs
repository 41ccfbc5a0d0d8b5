//! The inbox dispatcher: feeds committed, unprocessed webhooks to order actors.
//!
//! It reads the inbox in id order and routes each entry to its order through the
//! registry; the order actor marks the entry done in the same commit as the
//! effect. The entries of one Razorpay order form a chain, applied one after
//! the other in inbox commit order (SPEC §6): the next is sent only when the
//! order has answered the one before. Different orders proceed in parallel.
//! An entry whose routing failed (storage trouble) stays unprocessed, so do
//! the entries of its chain behind it, and the reading resumes from it. On
//! start-up everything a crash left unprocessed is simply the first thing read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::cluster::Scope;
use super::order::{Cause, OrderError, OrderMsg, OrderReply};
use super::order_link::OrderLink;
use super::registry::Route;
use super::switch::ProcessingSwitch;
use crate::domain::clock::SharedClock;
use crate::domain::dead_letter::LetterReason;
use crate::domain::order::Command;
use crate::domain::webhook::{payment_facts, PaymentFacts};
use crate::service::health::Heartbeat;
use crate::storage::{InboxEntry, OrderDeadLetter, Storage, StorageError};

/// Entries read per query.
const BATCH: u32 = 256;
/// Entries being routed at once; beyond this the dispatcher waits for replies.
const IN_FLIGHT: usize = 1024;
/// How long an idle dispatcher waits before looking again without a nudge.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// With several instances, how often the reading starts again from the
/// first unprocessed entry even while busy (see [`Dispatcher::run`]).
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Back-off after a failed read.
const RETRY_AFTER: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Dispatcher {
    pub storage: Storage,
    pub registry: OrderLink,
    /// Which entries are this instance's to dispatch: those of the orders
    /// whose partitions it holds, and as leader those no order claims.
    pub scope: Scope,
    pub clock: SharedClock,
    /// The kill switch: nothing is dispatched while it is on.
    pub switch: ProcessingSwitch,
    /// Notified by ingest after each accepted webhook.
    pub wake: Arc<Notify>,
    /// Beaten every time round the loop: the health check's proof of life.
    pub heartbeat: Arc<Heartbeat>,
}

/// Entries handed out and not yet finished, and where to resume after a failure.
#[derive(Default)]
struct Progress {
    in_flight: HashSet<i64>,
    /// The smallest id whose routing failed since the last read.
    retry_from: Option<i64>,
    /// Razorpay orders with a chain running, and the entries waiting in it.
    chains: HashMap<String, VecDeque<InboxEntry>>,
    /// Orders whose chain failed: their entries wait for the re-read, which
    /// starts at the failed one, so that none overtakes it.
    blocked: HashSet<String>,
}

impl Progress {
    /// The next entry of `key`'s chain; ends the chain when there is none.
    fn next_in_chain(&mut self, key: &str) -> Option<InboxEntry> {
        let next = self.chains.get_mut(key).and_then(VecDeque::pop_front);
        if next.is_none() {
            self.chains.remove(key);
        }
        next
    }

    /// After a failure in `key`'s chain: the entries behind it wait in the
    /// inbox for the re-read, which starts at the failed one.
    fn abandon_chain(&mut self, key: &str, failed: i64) {
        if let Some(waiting) = self.chains.remove(key) {
            for entry in waiting {
                self.in_flight.remove(&entry.id);
            }
        }
        self.blocked.insert(key.to_owned());
        self.retry_from = Some(self.retry_from.map_or(failed, |r| r.min(failed)));
    }
}

impl Dispatcher {
    /// Runs until the system stops. Entries stream through: each is routed as
    /// soon as it is read, up to `IN_FLIGHT` at once, so one slow order never
    /// holds up the others.
    pub async fn run(self) {
        let progress = Arc::new(Mutex::new(Progress::default()));
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut cursor = 0i64;
        // Commands parked while paused run at start, on resume and when idle,
        // but at most once per `IDLE_POLL` when idle: a busy dispatcher goes
        // idle between most wake-ups, and reading an empty table each time
        // was a measurable share of a burst.
        let mut drain_due = true;
        let mut drained_at: Option<tokio::time::Instant> = None;
        let mut rescanned = tokio::time::Instant::now();
        loop {
            self.heartbeat.beat();
            if self.switch.is_paused() {
                drain_due = true;
                // Still beating (the health check watches it) while it waits.
                let _ = tokio::time::timeout(IDLE_POLL, self.switch.resumed()).await;
                continue;
            }
            if drain_due && self.scope.leads() {
                self.drain_deferred().await;
                drained_at = Some(tokio::time::Instant::now());
                drain_due = false;
            }
            let rewind = progress.lock().ok().and_then(|mut p| {
                let failed = p.retry_from.take()?;
                p.blocked.clear();
                Some(failed)
            });
            if let Some(failed) = rewind {
                cursor = cursor.min(failed - 1);
            }
            if self.scope.is_clustered() && rescanned.elapsed() >= RESCAN_EVERY {
                // Instances commit inbox entries concurrently, so ids commit
                // out of order and one may appear below the cursor; and a
                // partition taken over brings entries the cursor passed.
                // What is in flight is skipped on the re-read.
                cursor = 0;
                rescanned = tokio::time::Instant::now();
            }
            let entries = match self.storage.pending_inbox(cursor, BATCH).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the inbox; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
            };
            let mut started_any = false;
            let read_all = entries.len() < BATCH as usize;
            for entry in entries {
                cursor = cursor.max(entry.id);
                if !self.owns(&entry) {
                    continue;
                }
                let key = entry.razorpay_order_id.clone();
                let start = progress.lock().map(|mut p| {
                    if key.as_ref().is_some_and(|k| p.blocked.contains(k)) {
                        return None;
                    }
                    if !p.in_flight.insert(entry.id) {
                        return None;
                    }
                    match &key {
                        // Behind an entry of its order still under way.
                        Some(key) if p.chains.contains_key(key) => {
                            if let Some(chain) = p.chains.get_mut(key) {
                                chain.push_back(entry.clone());
                            }
                            None
                        }
                        Some(key) => {
                            p.chains.insert(key.clone(), VecDeque::new());
                            Some(entry.clone())
                        }
                        None => Some(entry.clone()),
                    }
                });
                let Ok(Some(first)) = start else {
                    continue;
                };
                started_any = true;
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let (dispatcher, progress) = (self.clone(), Arc::clone(&progress));
                actix::spawn(async move {
                    let mut entry = first;
                    loop {
                        let id = entry.id;
                        let result = dispatcher.dispatch(entry).await;
                        let next = progress.lock().ok().and_then(|mut p| {
                            p.in_flight.remove(&id);
                            match (&result, &key) {
                                (Err(e), Some(key)) => {
                                    tracing::warn!(inbox_id = id, error = %e, "inbox entry not dispatched; its order's later entries wait; will retry");
                                    p.abandon_chain(key, id);
                                    None
                                }
                                (Err(e), None) => {
                                    tracing::warn!(inbox_id = id, error = %e, "inbox entry not dispatched; will retry");
                                    p.retry_from = Some(p.retry_from.map_or(id, |r| r.min(id)));
                                    None
                                }
                                (Ok(()), Some(key)) => p.next_in_chain(key),
                                (Ok(()), None) => None,
                            }
                        });
                        match next {
                            Some(next) => entry = next,
                            None => break,
                        }
                    }
                    drop(permit);
                });
            }
            if read_all && !started_any {
                // Nothing new: wait for a nudge. Entries that failed are
                // retried after this pause, not in a tight loop.
                let _ = tokio::time::timeout(IDLE_POLL, self.wake.notified()).await;
                drain_due = drained_at.is_none_or(|at| at.elapsed() >= IDLE_POLL);
            }
        }
    }

    /// Whether `entry` is this instance's to dispatch.
    fn owns(&self, entry: &InboxEntry) -> bool {
        match &entry.order_id {
            Some(order_id) => self.scope.owns_order(order_id),
            None => self.scope.leads(),
        }
    }

    async fn dispatch(&self, entry: InboxEntry) -> Result<(), StorageError> {
        let now = self.clock.now_ms();
        let letter = match self.router().route(&entry, None).await? {
            Routed::Applied | Routed::Refused(_) | Routed::Deferred => return Ok(()),
            Routed::NoEffect => None,
            Routed::Unknown(detail) => Some(OrderDeadLetter {
                reason: LetterReason::UnknownOrder,
                detail,
                event_id: Some(entry.dedup_key.clone()),
            }),
        };
        self.storage.finish_inbox_entry(entry.id, letter, now).await
    }

    fn router(&self) -> PaymentRouter {
        PaymentRouter {
            storage: self.storage.clone(),
            registry: self.registry.clone(),
            clock: Arc::clone(&self.clock),
        }
    }

    /// Runs the commands that arrived while processing was paused, oldest first.
    /// Stops at the first one that cannot run yet (paused again, storage trouble).
    async fn drain_deferred(&self) {
        loop {
            let commands = match self.storage.deferred_commands(BATCH).await {
                Ok(commands) if commands.is_empty() => return,
                Ok(commands) => commands,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read deferred commands; retrying later");
                    return;
                }
            };
            for deferred in commands {
                if self.switch.is_paused() {
                    return;
                }
                let routed = self
                    .registry
                    .send(Route {
                        order_id: deferred.order_id.clone(),
                        msg: OrderMsg::Command {
                            command: deferred.command,
                            cause: Cause::named(deferred.cause),
                        },
                    })
                    .await;
                let done = match routed {
                    Ok(Ok(_)) => true,
                    // Final answers: the order has seen it, or never will.
                    Ok(Err(
                        OrderError::NotFound
                        | OrderError::AmountMismatch
                        | OrderError::InvalidTransition { .. }
                        | OrderError::Conflict,
                    )) => true,
                    Ok(Err(e)) => {
                        tracing::warn!(order_id = %deferred.order_id, error = %e, "deferred command not run yet");
                        false
                    }
                    Err(e) => {
                        tracing::warn!(order_id = %deferred.order_id, error = %e, "deferred command not routed");
                        false
                    }
                };
                if !done {
                    return;
                }
                if let Err(e) = self.storage.finish_deferred(deferred.id).await {
                    tracing::warn!(error = %e, "deferred command ran but is not marked done; it will run again (idempotently)");
                    return;
                }
            }
        }
    }
}

/// What routing one payment event to its order did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// The order took it (or had already: repeats are no-ops).
    Applied,
    /// Not an event that changes an order (`payment.authorized`, ...).
    NoEffect,
    /// No order matches it.
    Unknown(String),
    /// The order refused it; the reason is a dead-letter reason.
    Refused(&'static str),
    /// Processing is paused: stored, it runs on resume.
    Deferred,
}

/// Routes a stored payment event to its order: the one path both the
/// dispatcher and an operator's dead-letter replay take.
#[derive(Clone)]
pub struct PaymentRouter {
    pub storage: Storage,
    pub registry: OrderLink,
    pub clock: SharedClock,
}

impl PaymentRouter {
    /// `replay_of` names the dead letter being replayed: then a refusal is
    /// only reported, and the order files no new dead letter.
    pub async fn route(
        &self,
        entry: &InboxEntry,
        replay_of: Option<i64>,
    ) -> Result<Routed, StorageError> {
        let Some(facts) = payment_facts(&entry.body) else {
            return Ok(Routed::NoEffect);
        };
        let Some(razorpay_order_id) = facts.razorpay_order_id().map(str::to_owned) else {
            return Ok(Routed::Unknown(
                "the payment names no Razorpay order".into(),
            ));
        };
        // Read with the entry where it could be; an order made since, or a
        // replayed entry, is looked up now.
        let known = entry
            .order_id
            .clone()
            .filter(|_| entry.razorpay_order_id.as_deref() == Some(razorpay_order_id.as_str()));
        let order_id = match known {
            Some(order_id) => Some(order_id),
            None => {
                self.storage
                    .order_id_for_razorpay(&razorpay_order_id)
                    .await?
            }
        };
        let Some(order_id) = order_id else {
            return Ok(Routed::Unknown(format!(
                "no order has Razorpay order {razorpay_order_id}"
            )));
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
            event_id: Some(entry.dedup_key.clone()),
            // A replayed entry was finished when its letter was filed.
            inbox_id: replay_of.is_none().then_some(entry.id),
            received_at_ms: Some(entry.received_at_ms),
            replay_of,
            audit: None,
        };
        let routed = self
            .registry
            .send(Route {
                order_id,
                msg: OrderMsg::Command { command, cause },
            })
            .await;
        match routed {
            Ok(Ok(OrderReply::Deferred)) => Ok(Routed::Deferred),
            // The actor committed the entry as done with (or as) its effect.
            Ok(Ok(_)) => Ok(Routed::Applied),
            Ok(Err(OrderError::AmountMismatch)) => Ok(Routed::Refused("amount_mismatch")),
            Ok(Err(OrderError::InvalidTransition { .. })) => {
                Ok(Routed::Refused("invalid_transition"))
            }
            Ok(Err(OrderError::NotFound)) => Ok(Routed::Unknown(format!(
                "order for Razorpay order {razorpay_order_id} vanished"
            ))),
            Ok(Err(OrderError::Storage(e))) => Err(e),
            Ok(Err(e)) => Err(StorageError::Reader(e.to_string())),
            Err(e) => Err(StorageError::Reader(e.to_string())),
        }
    }
}
