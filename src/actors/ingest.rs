//! `WebhookIngest`: where a Razorpay delivery becomes a durable inbox entry, a
//! dead letter, or a duplicate.
//!
//! One instance runs on each HTTP worker thread, so a webhook never crosses
//! threads on its way in and ingest scales with the workers. The actor does the
//! CPU work (signature, parse, classify) in its handler and then hands the record
//! to the storage writer; it replies only once the group commit holding the record
//! is durable. The reply future does not hold the actor, so the next delivery is
//! verified while earlier ones wait for their commit: that overlap is what lets
//! many deliveries share one fsync.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, ResponseFuture};
use bytes::Bytes;

use crate::domain::clock::SharedClock;
use crate::domain::dead_letter::LetterReason;
use crate::domain::signature::WebhookVerifier;
use crate::domain::webhook::{classify, DedupKey};
use crate::storage::{RecordOutcome, Storage, StorageError, WebhookRecord};

/// A delivery as the HTTP front received it.
#[derive(Message)]
#[rtype(result = "Result<IngestReply, IngestError>")]
pub struct IngestWebhook {
    pub body: Bytes,
    pub signature: Option<String>,
    pub event_id: Option<String>,
}

/// A durable outcome: each variant is only produced after its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestReply {
    Accepted {
        event_id: String,
    },
    Duplicate {
        event_id: String,
    },
    Quarantined {
        event_id: String,
        reason: LetterReason,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the X-Razorpay-Signature header is missing or does not match the body")]
    InvalidSignature,
    #[error("storage could not commit the webhook: {0}")]
    Unavailable(#[from] StorageError),
}

/// What every ingest actor shares.
pub struct IngestDeps {
    pub verifier: WebhookVerifier,
    pub storage: Storage,
    pub clock: SharedClock,
    pub accept_window_secs: i64,
    /// How many ingest actors are running, for the status page.
    pub live: Arc<AtomicUsize>,
    /// Nudges the inbox dispatcher after each accepted webhook.
    pub wake: Arc<tokio::sync::Notify>,
}

pub struct WebhookIngest {
    deps: Arc<IngestDeps>,
}

impl WebhookIngest {
    pub fn new(deps: Arc<IngestDeps>) -> Self {
        Self { deps }
    }

    /// Verify, key and classify: everything up to the write.
    fn decide(&self, msg: &IngestWebhook) -> Result<(DedupKey, WebhookRecord), IngestError> {
        let signature = msg
            .signature
            .as_deref()
            .ok_or(IngestError::InvalidSignature)?;
        if !self.deps.verifier.verify(&msg.body, signature) {
            return Err(IngestError::InvalidSignature);
        }
        let key = DedupKey::from_delivery(msg.event_id.as_deref(), &msg.body);
        let now_ms = self.deps.clock.now_ms();
        let record = match classify(
            &msg.body,
            now_ms.div_euclid(1000),
            self.deps.accept_window_secs,
        ) {
            Ok(event) => WebhookRecord::Accepted {
                dedup_key: key.as_str().to_owned(),
                acted_on: event.acted.is_some(),
                event: event.name,
                razorpay_order_id: event.razorpay_order_id,
                razorpay_payment_id: event.razorpay_payment_id,
                event_created_at: event.created_at,
                received_at_ms: now_ms,
                body: msg.body.to_vec(),
            },
            Err(quarantine) => WebhookRecord::Quarantined {
                dedup_key: key.as_str().to_owned(),
                reason: quarantine.reason.into(),
                detail: quarantine.detail,
                received_at_ms: now_ms,
                body: msg.body.to_vec(),
            },
        };
        Ok((key, record))
    }
}

impl Actor for WebhookIngest {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.deps.live.fetch_add(1, Ordering::Relaxed);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.deps.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Handler<IngestWebhook> for WebhookIngest {
    type Result = ResponseFuture<Result<IngestReply, IngestError>>;

    fn handle(&mut self, msg: IngestWebhook, _ctx: &mut Self::Context) -> Self::Result {
        let decision = self.decide(&msg);
        let storage = self.deps.storage.clone();
        let wake = Arc::clone(&self.deps.wake);
        Box::pin(async move {
            let (key, record) = decision?;
            let quarantine_reason = match &record {
                WebhookRecord::Quarantined { reason, .. } => Some(*reason),
                WebhookRecord::Accepted { .. } => None,
            };
            let event_id = key.into_string();
            let reply = match storage.record_webhook(record).await? {
                RecordOutcome::Accepted { inbox_id, pending } => {
                    // An event that moves an order is worth a line; one that
                    // moves nothing (payment.authorized, ...) is only counted
                    // (dropship_webhook_requests_total): at a sale's rate its
                    // line would cost more than storing it.
                    if pending {
                        tracing::info!(event_id = %event_id, inbox_id, "webhook accepted");
                        wake.notify_one();
                    } else {
                        tracing::debug!(event_id = %event_id, inbox_id, "webhook accepted; no order acts on it");
                    }
                    IngestReply::Accepted { event_id }
                }
                RecordOutcome::Quarantined { dead_letter_id } => {
                    // Storage files a letter only for a record that was one.
                    let reason = quarantine_reason.unwrap_or(LetterReason::UnknownShape);
                    tracing::warn!(event_id = %event_id, dead_letter_id, reason = reason.code(), "signed webhook quarantined");
                    IngestReply::Quarantined { event_id, reason }
                }
                RecordOutcome::Duplicate => {
                    tracing::debug!(event_id = %event_id, "duplicate webhook");
                    IngestReply::Duplicate { event_id }
                }
            };
            Ok(reply)
        })
    }
}
