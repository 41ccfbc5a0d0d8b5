//! Webhook records on PostgreSQL: the dedup receipts, the inbox and the
//! dead-letter queue. Any instance records any delivery; the receipt's
//! primary key decides which copy is first, across every instance at once.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::PgStore;
use crate::domain::dead_letter::{LetterReason, LetterSource};
use crate::storage::pii::Column;
use crate::storage::{
    AuditedAction, DeadLetter, DeadLetterView, InboxEntry, IngestCounts, RecordOutcome,
    ReplayableLetter, StorageError, WebhookRecord,
};

const INBOX_COLUMNS: &str =
    "id, dedup_key, event, razorpay_order_id, event_created_at, received_at_ms, body";

impl PgStore {
    /// Stores a delivery unless its dedup key was seen before. The receipt and the
    /// record commit together, so the first delivery wins on every instance.
    pub async fn record_webhook(
        &self,
        mut record: WebhookRecord,
    ) -> Result<RecordOutcome, StorageError> {
        let pii = self.pii();
        match &mut record {
            WebhookRecord::Accepted { body, .. } => *body = pii.seal(Column::InboxBody, body)?,
            WebhookRecord::Quarantined { body, .. } => {
                *body = pii.seal(Column::DeadLetterBody, body)?
            }
        }
        self.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let outcome = insert_webhook(&tx, &record).await?;
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// Unprocessed inbox entries after `after_id`, oldest first, bodies opened.
    pub async fn pending_inbox(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StorageError> {
        let pii = self.pii();
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {INBOX_COLUMNS},
                            (SELECT order_id FROM orders o WHERE o.razorpay_order_id = inbox.razorpay_order_id)
                     FROM inbox
                     WHERE processed_at_ms IS NULL AND id > $1 ORDER BY id LIMIT $2"
                ))
                .await?;
            client
                .query(&statement, &[&after_id, &i64::from(limit)])
                .await?
                .iter()
                .map(|row| {
                    let mut entry = inbox_entry(row);
                    entry.body = pii.open(Column::InboxBody, &entry.body)?;
                    Ok(entry)
                })
                .collect()
        })
        .await
    }

    /// An open or resolved dead letter with what a replay needs: its own body,
    /// or the inbox entry it was filed for (bodies opened).
    pub async fn dead_letter_for_replay(
        &self,
        id: i64,
    ) -> Result<Option<ReplayableLetter>, StorageError> {
        let pii = self.pii();
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let Some(row) = client
                .query_opt(
                    "SELECT id, source, reason, detail, event_id, received_at_ms, body, resolved_at_ms
                     FROM dead_letters WHERE id = $1",
                    &[&id],
                )
                .await?
            else {
                return Ok(None);
            };
            let letter = dead_letter(&row)?;
            let body = row
                .get::<_, Option<Vec<u8>>>(6)
                .map(|b| pii.open(Column::DeadLetterBody, &b))
                .transpose()?;
            let resolved = row.get::<_, Option<i64>>(7).is_some();
            let inbox = match &letter.event_id {
                Some(key) => client
                    .query_opt(
                        &format!("SELECT {INBOX_COLUMNS} FROM inbox WHERE dedup_key = $1"),
                        &[key],
                    )
                    .await?
                    .map(|row| {
                        let mut entry = inbox_entry(&row);
                        entry.body = pii.open(Column::InboxBody, &entry.body)?;
                        Ok::<_, StorageError>(entry)
                    })
                    .transpose()?,
                None => None,
            };
            Ok(Some(ReplayableLetter {
                letter,
                body,
                inbox,
                resolved,
            }))
        })
        .await
    }

    /// Records a replay's outcome on its letter, with the operator's action.
    pub async fn record_replay(
        &self,
        id: i64,
        outcome: String,
        resolved: bool,
        at_ms: i64,
        audit: Option<AuditedAction>,
    ) -> Result<(), StorageError> {
        let record = audit.as_ref().map(|a| a.record.clone());
        self.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute(
                "UPDATE dead_letters SET replays = replays + 1, last_replay_at_ms = $2,
                        last_replay_outcome = $3,
                        resolved_at_ms = CASE WHEN $4 THEN $2 ELSE resolved_at_ms END
                 WHERE id = $1",
                &[&id, &at_ms, &outcome, &resolved],
            )
            .await?;
            if let Some(record) = &record {
                super::audit::append(&tx, record).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await?;
        if let Some(audit) = audit {
            audit.committed();
        }
        Ok(())
    }

    /// Open dead letters, newest first; `before` is the cursor from the last page.
    pub async fn dead_letters(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeadLetterView>, StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            client
                .query(
                    "SELECT id, source, reason, detail, event_id, received_at_ms,
                            replays, last_replay_at_ms, last_replay_outcome FROM dead_letters
                     WHERE resolved_at_ms IS NULL AND id < $1 ORDER BY id DESC LIMIT $2",
                    &[&before.unwrap_or(i64::MAX), &i64::from(limit)],
                )
                .await?
                .iter()
                .map(|row| {
                    Ok(DeadLetterView {
                        letter: dead_letter(row)?,
                        replays: row.get(6),
                        last_replay_at_ms: row.get(7),
                        last_replay_outcome: row.get(8),
                    })
                })
                .collect()
        })
        .await
    }

    pub async fn ingest_counts(&self) -> Result<IngestCounts, StorageError> {
        self.run(|pool| async move {
            let client = pool.get().await?;
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM inbox WHERE processed_at_ms IS NULL),
                            (SELECT count(*) FROM dead_letters WHERE resolved_at_ms IS NULL)",
                    &[],
                )
                .await?;
            Ok(IngestCounts {
                inbox_pending: row.get::<_, i64>(0) as u64,
                dlq_entries: row.get::<_, i64>(1) as u64,
            })
        })
        .await
    }
}

async fn insert_webhook(
    tx: &impl GenericClient,
    record: &WebhookRecord,
) -> Result<RecordOutcome, StorageError> {
    let (dedup_key, disposition, received_at_ms) = match record {
        WebhookRecord::Accepted {
            dedup_key,
            received_at_ms,
            ..
        } => (dedup_key, "accepted", received_at_ms),
        WebhookRecord::Quarantined {
            dedup_key,
            received_at_ms,
            ..
        } => (dedup_key, "quarantined", received_at_ms),
    };
    // A concurrent first copy on another instance makes this one wait for its
    // commit, then find the key taken: exactly one copy is ever accepted.
    let receipt = tx
        .prepare_cached(
            "INSERT INTO webhook_receipts (dedup_key, disposition, received_at_ms)
             VALUES ($1, $2, $3) ON CONFLICT (dedup_key) DO NOTHING",
        )
        .await?;
    if tx
        .execute(&receipt, &[dedup_key, &disposition, received_at_ms])
        .await?
        == 0
    {
        return Ok(RecordOutcome::Duplicate);
    }
    match record {
        WebhookRecord::Accepted {
            dedup_key,
            acted_on,
            event,
            razorpay_order_id,
            razorpay_payment_id,
            event_created_at,
            received_at_ms,
            body,
        } => {
            let processed_at_ms = (!acted_on).then_some(*received_at_ms);
            let insert = tx
                .prepare_cached(
                    "INSERT INTO inbox (dedup_key, event, razorpay_order_id, razorpay_payment_id,
                                        event_created_at, received_at_ms, body, processed_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                )
                .await?;
            let row = tx
                .query_one(
                    &insert,
                    &[
                        dedup_key,
                        event,
                        razorpay_order_id,
                        razorpay_payment_id,
                        event_created_at,
                        received_at_ms,
                        body,
                        &processed_at_ms,
                    ],
                )
                .await?;
            Ok(RecordOutcome::Accepted {
                inbox_id: row.get(0),
                pending: *acted_on,
            })
        }
        WebhookRecord::Quarantined {
            dedup_key,
            reason,
            detail,
            received_at_ms,
            body,
        } => {
            let row = tx
                .query_one(
                    "INSERT INTO dead_letters (source, reason, detail, event_id, received_at_ms, body)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                    &[
                        &LetterSource::Razorpay.code(),
                        &reason.code(),
                        detail,
                        dedup_key,
                        received_at_ms,
                        body,
                    ],
                )
                .await?;
            Ok(RecordOutcome::Quarantined {
                dead_letter_id: row.get(0),
            })
        }
    }
}

fn inbox_entry(row: &Row) -> InboxEntry {
    InboxEntry {
        id: row.get(0),
        dedup_key: row.get(1),
        event: row.get(2),
        razorpay_order_id: row.get(3),
        event_created_at: row.get(4),
        received_at_ms: row.get(5),
        body: row.get(6),
        order_id: if row.len() > 7 { row.get(7) } else { None },
    }
}

/// A dead letter from the first six columns of `id, source, reason, detail,
/// event_id, received_at_ms`; a code this build does not know is an error,
/// not a silently different letter.
fn dead_letter(row: &Row) -> Result<DeadLetter, StorageError> {
    fn coded<T>(row: &Row, index: usize, parse: fn(&str) -> Option<T>) -> Result<T, StorageError> {
        let code: &str = row.get(index);
        parse(code).ok_or_else(|| StorageError::Encoding(format!("unknown code {code:?}")))
    }
    Ok(DeadLetter {
        id: row.get(0),
        source: coded(row, 1, LetterSource::from_code)?,
        reason: coded(row, 2, LetterReason::from_code)?,
        detail: row.get(3),
        event_id: row.get(4),
        received_at_ms: row.get(5),
    })
}
