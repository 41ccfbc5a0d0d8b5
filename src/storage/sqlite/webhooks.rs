//! Webhook records: the dedup receipts, the inbox and the dead-letter queue.

use rusqlite::{params, Connection, OptionalExtension};

use super::AuditedAction;
use super::{SqliteStore, StorageError};
use crate::domain::dead_letter::{LetterReason, LetterSource};
use crate::storage::pii::Column;

/// What to store for one signed delivery.
#[derive(Debug, Clone)]
pub enum WebhookRecord {
    /// A usable event, for the inbox.
    Accepted {
        dedup_key: String,
        /// Whether an order acts on it. One no order acts on
        /// (`payment.authorized`, ...) is stored already processed, so the
        /// dispatcher never reads it back: one write per such webhook.
        acted_on: bool,
        event: String,
        razorpay_order_id: Option<String>,
        razorpay_payment_id: Option<String>,
        event_created_at: i64,
        received_at_ms: i64,
        body: Vec<u8>,
    },
    /// A signed but unusable event, for the dead-letter queue.
    Quarantined {
        dedup_key: String,
        reason: LetterReason,
        detail: String,
        received_at_ms: i64,
        body: Vec<u8>,
    },
}

/// What storing a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    Accepted {
        inbox_id: i64,
        /// The entry waits for the dispatcher (an order acts on it).
        pending: bool,
    },
    Quarantined {
        dead_letter_id: i64,
    },
    /// The dedup key was seen before; nothing new was stored.
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub source: LetterSource,
    pub reason: LetterReason,
    pub detail: String,
    pub event_id: Option<String>,
    pub received_at_ms: i64,
}

/// A dead letter and what a replay re-runs.
#[derive(Debug, Clone)]
pub struct ReplayableLetter {
    pub letter: DeadLetter,
    /// The delivery's body, kept with letters that never reached the inbox.
    pub body: Option<Vec<u8>>,
    /// The inbox entry the letter was filed for (by its dedup key).
    pub inbox: Option<InboxEntry>,
    pub resolved: bool,
}

/// A dead letter as the admin API lists it, with its replay history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterView {
    #[serde(flatten)]
    pub letter: DeadLetter,
    pub replays: i64,
    pub last_replay_at_ms: Option<i64>,
    pub last_replay_outcome: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestCounts {
    pub inbox_pending: u64,
    pub dlq_entries: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    pub id: i64,
    pub dedup_key: String,
    pub event: String,
    pub razorpay_order_id: Option<String>,
    pub event_created_at: i64,
    pub received_at_ms: i64,
    pub body: Vec<u8>,
    /// The order with the entry's Razorpay order id, read with the entry by
    /// [`pending_inbox`]: it tells an instance on PostgreSQL whether the entry
    /// is its own to dispatch, and saves the router a read per webhook.
    /// `None`: no such order when it was read, or not looked up (a replay).
    pub order_id: Option<String>,
}

impl SqliteStore {
    /// Stores a delivery unless its dedup key was seen before. The receipt and the
    /// record commit together, so the first delivery wins even across restarts.
    pub async fn record_webhook(
        &self,
        mut record: WebhookRecord,
    ) -> Result<RecordOutcome, StorageError> {
        // Sealed here, on the caller's thread, so the writer only writes.
        let pii = self.pii();
        match &mut record {
            WebhookRecord::Accepted { body, .. } => *body = pii.seal(Column::InboxBody, body)?,
            WebhookRecord::Quarantined { body, .. } => {
                *body = pii.seal(Column::DeadLetterBody, body)?
            }
        }
        self.write_repeatable(move |conn| insert_webhook(conn, &record))
            .await
    }

    /// Unprocessed inbox entries after `after_id`, oldest first, bodies opened.
    pub async fn pending_inbox(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StorageError> {
        let pii = self.pii();
        self.read(move |conn| {
            pending_inbox(conn, after_id, limit)?
                .into_iter()
                .map(|mut entry| {
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
        self.read(move |conn| {
            let found = conn
                .prepare_cached(
                    "SELECT id, source, reason, detail, event_id, received_at_ms, body, resolved_at_ms
                     FROM dead_letters WHERE id = ?1",
                )?
                .query_row([id], |row| {
                    Ok((
                        dead_letter(row)?,
                        row.get::<_, Option<Vec<u8>>>(6)?,
                        row.get::<_, Option<i64>>(7)?,
                    ))
                })
                .optional()?;
            let Some((letter, body, resolved_at_ms)) = found else {
                return Ok(None);
            };
            let body = body
                .map(|b| pii.open(Column::DeadLetterBody, &b))
                .transpose()?;
            let inbox = match &letter.event_id {
                Some(key) => conn
                    .prepare_cached(
                        "SELECT id, dedup_key, event, razorpay_order_id, event_created_at, received_at_ms, body
                         FROM inbox WHERE dedup_key = ?1",
                    )?
                    .query_row([key], inbox_entry)
                    .optional()?
                    .map(|mut entry| {
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
                resolved: resolved_at_ms.is_some(),
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
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE dead_letters SET replays = replays + 1, last_replay_at_ms = ?2,
                        last_replay_outcome = ?3,
                        resolved_at_ms = CASE WHEN ?4 THEN ?2 ELSE resolved_at_ms END
                 WHERE id = ?1",
            )?
            .execute(params![id, at_ms, outcome, resolved])?;
            if let Some(record) = &record {
                super::audit::append(conn, record)?;
            }
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
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, source, reason, detail, event_id, received_at_ms,
                        replays, last_replay_at_ms, last_replay_outcome FROM dead_letters
                 WHERE resolved_at_ms IS NULL AND id < ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![before.unwrap_or(i64::MAX), limit], |row| {
                Ok(DeadLetterView {
                    letter: dead_letter(row)?,
                    replays: row.get(6)?,
                    last_replay_at_ms: row.get(7)?,
                    last_replay_outcome: row.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn ingest_counts(&self) -> Result<IngestCounts, StorageError> {
        self.read(ingest_counts).await
    }
}

fn insert_webhook(
    conn: &Connection,
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
    let fresh = conn
        .prepare_cached(
            "INSERT INTO webhook_receipts (dedup_key, disposition, received_at_ms)
             VALUES (?1, ?2, ?3) ON CONFLICT (dedup_key) DO NOTHING",
        )?
        .execute(params![dedup_key, disposition, received_at_ms])?;
    if fresh == 0 {
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
            conn.prepare_cached(
                "INSERT INTO inbox (dedup_key, event, razorpay_order_id, razorpay_payment_id,
                                    event_created_at, received_at_ms, body, processed_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                dedup_key,
                event,
                razorpay_order_id,
                razorpay_payment_id,
                event_created_at,
                received_at_ms,
                body,
                processed_at_ms
            ])?;
            Ok(RecordOutcome::Accepted {
                inbox_id: conn.last_insert_rowid(),
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
            conn.prepare_cached(
                "INSERT INTO dead_letters (source, reason, detail, event_id, received_at_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                LetterSource::Razorpay.code(),
                reason.code(),
                detail,
                dedup_key,
                received_at_ms,
                body
            ])?;
            Ok(RecordOutcome::Quarantined {
                dead_letter_id: conn.last_insert_rowid(),
            })
        }
    }
}

fn ingest_counts(conn: &Connection) -> Result<IngestCounts, StorageError> {
    let count = |sql: &str| -> Result<u64, StorageError> {
        Ok(conn
            .prepare_cached(sql)?
            .query_row([], |row| row.get::<_, i64>(0))? as u64)
    };
    Ok(IngestCounts {
        inbox_pending: count("SELECT count(*) FROM inbox WHERE processed_at_ms IS NULL")?,
        dlq_entries: count("SELECT count(*) FROM dead_letters WHERE resolved_at_ms IS NULL")?,
    })
}

/// Every inbox entry, oldest first, read from a database file directly (see
/// [`super::open_read_only`]): for tools and crash tests that inspect a daemon's
/// file after it died. Bodies are as stored, that is sealed.
pub fn inbox_entries(conn: &Connection) -> Result<Vec<InboxEntry>, StorageError> {
    let mut stmt = conn.prepare(
        "SELECT id, dedup_key, event, razorpay_order_id, event_created_at, received_at_ms, body
         FROM inbox ORDER BY id",
    )?;
    let rows = stmt.query_map([], inbox_entry)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

const PENDING_INBOX: &str =
    "SELECT id, dedup_key, event, razorpay_order_id, event_created_at, received_at_ms, body,
            (SELECT order_id FROM orders o WHERE o.razorpay_order_id = inbox.razorpay_order_id)
     FROM inbox WHERE processed_at_ms IS NULL AND id > ?1 ORDER BY id LIMIT ?2";

pub(super) fn pending_inbox(
    conn: &Connection,
    after_id: i64,
    limit: u32,
) -> Result<Vec<InboxEntry>, StorageError> {
    let mut stmt = conn.prepare_cached(PENDING_INBOX)?;
    let rows = stmt.query_map(params![after_id, limit], |row| {
        Ok(InboxEntry {
            order_id: row.get(7)?,
            ..inbox_entry(row)?
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// A dead letter from the first six columns of `id, source, reason, detail, event_id, received_at_ms`.
fn dead_letter(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: row.get(0)?,
        source: coded(row, 1, LetterSource::from_code)?,
        reason: coded(row, 2, LetterReason::from_code)?,
        detail: row.get(3)?,
        event_id: row.get(4)?,
        received_at_ms: row.get(5)?,
    })
}

/// A column holding an enum's code; a code this build does not know is an error,
/// not a silently different letter.
fn coded<T>(
    row: &rusqlite::Row<'_>,
    index: usize,
    parse: fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let code: String = row.get(index)?;
    parse(&code).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unknown code {code:?}").into(),
        )
    })
}

fn inbox_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<InboxEntry> {
    Ok(InboxEntry {
        id: row.get(0)?,
        dedup_key: row.get(1)?,
        event: row.get(2)?,
        razorpay_order_id: row.get(3)?,
        event_created_at: row.get(4)?,
        received_at_ms: row.get(5)?,
        body: super::bytes_at(row, 6)?,
        order_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fresh_storage;
    use super::*;
    use crate::storage::StorageOptions;

    #[test]
    fn reading_the_inbox_again_does_not_plan_its_query_again() {
        let (_store, dir) = super::super::fresh_storage();
        let conn = super::super::open_read_only(&dir.path().join("db.sqlite")).unwrap();
        for after in [0, 5, 0] {
            pending_inbox(&conn, after, 256).unwrap();
        }
        let statement = conn.prepare_cached(PENDING_INBOX).unwrap();
        assert_eq!(
            statement.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "a bound LIMIT or id made SQLite plan the statement again at each run"
        );
    }

    fn accepted(key: &str) -> WebhookRecord {
        WebhookRecord::Accepted {
            dedup_key: key.into(),
            acted_on: true,
            event: "payment.captured".into(),
            razorpay_order_id: Some("order_1".into()),
            razorpay_payment_id: Some("pay_1".into()),
            event_created_at: 1,
            received_at_ms: 2,
            body: b"{}".to_vec(),
        }
    }

    #[tokio::test]
    async fn first_delivery_wins_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let options = StorageOptions::new(
            dir.path().join("db.sqlite"),
            std::time::Duration::from_millis(500),
            crate::storage::PiiKey::from_bytes([7; 32]),
        );
        let storage = SqliteStore::open(&options).unwrap();
        assert!(matches!(
            storage.record_webhook(accepted("evt_1")).await.unwrap(),
            RecordOutcome::Accepted { .. }
        ));
        assert_eq!(
            storage.record_webhook(accepted("evt_1")).await.unwrap(),
            RecordOutcome::Duplicate
        );
        let quarantined = WebhookRecord::Quarantined {
            dedup_key: "evt_2".into(),
            reason: LetterReason::NotJson,
            detail: "nope".into(),
            received_at_ms: 3,
            body: b"x".to_vec(),
        };
        assert!(matches!(
            storage.record_webhook(quarantined.clone()).await.unwrap(),
            RecordOutcome::Quarantined { .. }
        ));
        // A key seen as quarantined is a duplicate whatever shape it comes back in.
        assert_eq!(
            storage.record_webhook(accepted("evt_2")).await.unwrap(),
            RecordOutcome::Duplicate
        );
        assert_eq!(
            storage.ingest_counts().await.unwrap(),
            IngestCounts {
                inbox_pending: 1,
                dlq_entries: 1
            }
        );
        drop(storage);

        let reopened = SqliteStore::open(&options).unwrap();
        assert_eq!(
            reopened.record_webhook(accepted("evt_1")).await.unwrap(),
            RecordOutcome::Duplicate
        );
        assert_eq!(
            reopened.record_webhook(quarantined).await.unwrap(),
            RecordOutcome::Duplicate
        );
        let letters = reopened.dead_letters(None, 10).await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].letter.reason, LetterReason::NotJson);
        assert_eq!(letters[0].letter.event_id.as_deref(), Some("evt_2"));
    }

    #[tokio::test]
    async fn an_event_no_order_acts_on_is_stored_already_processed() {
        let (storage, _dir) = fresh_storage();
        let mut authorized = accepted("evt_auth");
        if let WebhookRecord::Accepted {
            acted_on, event, ..
        } = &mut authorized
        {
            *acted_on = false;
            *event = "payment.authorized".into();
        }
        assert!(matches!(
            storage.record_webhook(authorized).await.unwrap(),
            RecordOutcome::Accepted { pending: false, .. }
        ));
        assert!(matches!(
            storage.record_webhook(accepted("evt_cap")).await.unwrap(),
            RecordOutcome::Accepted { pending: true, .. }
        ));
        let pending: Vec<_> = storage
            .pending_inbox(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.dedup_key)
            .collect();
        assert_eq!(pending, vec!["evt_cap".to_string()]);
        // Still a receipt: a redelivery is a duplicate.
        assert_eq!(
            storage.record_webhook(accepted("evt_auth")).await.unwrap(),
            RecordOutcome::Duplicate
        );
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits() {
        let (storage, dir) = fresh_storage();
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let storage = storage.clone();
                tokio::spawn(
                    async move { storage.record_webhook(accepted(&format!("evt_{i}"))).await },
                )
            })
            .collect();
        for task in tasks {
            assert!(matches!(
                task.await.unwrap().unwrap(),
                RecordOutcome::Accepted { .. }
            ));
        }
        let stats = storage.writer_stats();
        assert_eq!(stats.jobs, 500);
        assert!(
            stats.commits < 500,
            "every write committed alone: {stats:?}"
        );
        assert!(stats.largest_batch > 1, "{stats:?}");
        let conn = crate::storage::open_read_only(&dir.path().join("db.sqlite")).unwrap();
        assert_eq!(inbox_entries(&conn).unwrap().len(), 500);
    }

    #[tokio::test]
    async fn a_failing_job_does_not_sink_its_batch() {
        let (storage, dir) = fresh_storage();
        let bad = storage.write(|conn| {
            conn.execute("INSERT INTO inbox (dedup_key) VALUES ('half')", [])?;
            Ok(())
        });
        let good = storage.record_webhook(accepted("evt_ok"));
        let (bad, good) = tokio::join!(bad, good);
        assert!(bad.is_err());
        assert!(matches!(good.unwrap(), RecordOutcome::Accepted { .. }));
        let conn = crate::storage::open_read_only(&dir.path().join("db.sqlite")).unwrap();
        let keys: Vec<_> = inbox_entries(&conn)
            .unwrap()
            .into_iter()
            .map(|e| e.dedup_key)
            .collect();
        assert_eq!(keys, vec!["evt_ok".to_string()]);
    }
}
