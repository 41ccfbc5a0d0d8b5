//! Shipping: Shiprocket tokens per account, and the durable shipping queue
//! (SPEC §8) that gateways pull their work from.

use rusqlite::{params, OptionalExtension};

use super::{SqliteStore, StorageError};
use crate::domain::order::OrderState;
use crate::domain::shipping::QueueEntry;
use crate::storage::pii::Column;

impl SqliteStore {
    /// The cached token of `account` and when it was issued.
    pub async fn shiprocket_token(
        &self,
        account: &str,
    ) -> Result<Option<(String, i64)>, StorageError> {
        let account = account.to_owned();
        let pii = self.pii();
        self.read(move |conn| {
            let stored: Option<(Vec<u8>, i64)> = conn
                .prepare_cached(
                    "SELECT token, issued_at_ms FROM shiprocket_tokens WHERE account = ?1",
                )?
                .query_row([&account], |row| {
                    Ok((super::bytes_at(row, 0)?, row.get(1)?))
                })
                .optional()?;
            stored
                .map(|(sealed, issued)| {
                    let token = pii.open(Column::ShiprocketToken, &sealed)?;
                    let token = String::from_utf8(token)
                        .map_err(|e| StorageError::Encoding(e.to_string()))?;
                    Ok((token, issued))
                })
                .transpose()
        })
        .await
    }

    pub async fn save_shiprocket_token(
        &self,
        account: &str,
        token: &str,
        issued_at_ms: i64,
    ) -> Result<(), StorageError> {
        let account = account.to_owned();
        let token = self.pii().seal(Column::ShiprocketToken, token.as_bytes())?;
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO shiprocket_tokens (account, token, issued_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account) DO UPDATE SET token = excluded.token, issued_at_ms = excluded.issued_at_ms",
            )?
            .execute(params![account, token, issued_at_ms])?;
            Ok(())
        })
        .await
    }
}

/// An order with Shiprocket work due, as the queue hands it to a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedOrder {
    pub order_id: String,
    /// The account the row is for; `None` for work any account may take.
    pub account: Option<String>,
    pub paid_at_ms: i64,
}

/// Where one gateway may take work from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSource {
    /// `None`: the rows any account may take.
    pub account: Option<String>,
    /// Only rows in doubt on that account (failover from an unusable one).
    pub failover_only: bool,
}

/// The backlog of one account (`None`: not yet assigned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueBacklog {
    pub account: Option<String>,
    pub orders: u64,
    pub calls: u64,
    pub oldest_paid_at_ms: Option<i64>,
}

fn account_key(account: Option<&str>) -> &str {
    account.unwrap_or("")
}

/// Replaces `order_id`'s queue rows with `entries` (inside the order's commit).
pub(super) fn replace_queue_rows(
    conn: &rusqlite::Connection,
    order_id: &str,
    entries: &[QueueEntry],
) -> Result<(), StorageError> {
    conn.prepare_cached("DELETE FROM shipping_queue WHERE order_id = ?1")?
        .execute([order_id])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO shipping_queue (order_id, account, due_at_ms, paid_at_ms, failover, calls_left)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for entry in entries {
        insert.execute(params![
            order_id,
            account_key(entry.account.as_deref()),
            entry.due_at_ms,
            entry.paid_at_ms,
            entry.failover,
            entry.calls_left,
        ])?;
    }
    Ok(())
}

impl SqliteStore {
    /// Up to `limit` orders with work due at `now_ms` from `sources`, oldest
    /// paid first (an order listed by two sources appears once).
    pub async fn shipping_due(
        &self,
        sources: Vec<QueueSource>,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<QueuedOrder>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT order_id, paid_at_ms FROM shipping_queue
                 WHERE account = ?1 AND due_at_ms <= ?2 AND (failover = 1 OR ?3 = 0)
                 ORDER BY paid_at_ms, order_id LIMIT ?4",
            )?;
            let mut due: Vec<QueuedOrder> = Vec::new();
            for source in &sources {
                let rows = stmt.query_map(
                    params![
                        account_key(source.account.as_deref()),
                        now_ms,
                        source.failover_only,
                        limit
                    ],
                    |row| {
                        Ok(QueuedOrder {
                            order_id: row.get(0)?,
                            account: source.account.clone(),
                            paid_at_ms: row.get(1)?,
                        })
                    },
                )?;
                for row in rows {
                    due.push(row?);
                }
            }
            due.sort_by(|a, b| (a.paid_at_ms, &a.order_id).cmp(&(b.paid_at_ms, &b.order_id)));
            due.dedup_by(|a, b| a.order_id == b.order_id);
            due.truncate(limit as usize);
            Ok(due)
        })
        .await
    }

    /// Orders on their way to `ready_to_ship` with a call due at `now_ms` on
    /// any account: what manual mode hands to operators.
    pub async fn shipments_due(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT DISTINCT q.order_id FROM shipping_queue q JOIN orders o ON o.order_id = q.order_id
                 WHERE q.due_at_ms <= ?1 AND o.state IN ({})
                 ORDER BY q.order_id LIMIT ?2",
                super::states_where(OrderState::is_being_shipped)
            ))?;
            let rows = stmt.query_map(params![now_ms, limit], |row| row.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The queue's size per account: orders, calls left, the oldest payment.
    pub async fn shipping_backlog(&self) -> Result<Vec<QueueBacklog>, StorageError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT account, count(*), sum(calls_left), min(paid_at_ms)
                 FROM shipping_queue GROUP BY account ORDER BY account",
            )?;
            let rows = stmt.query_map([], |row| {
                let account: String = row.get(0)?;
                Ok(QueueBacklog {
                    account: (!account.is_empty()).then_some(account),
                    orders: row.get::<_, i64>(1)?.max(0) as u64,
                    calls: row.get::<_, Option<i64>>(2)?.unwrap_or(0).max(0) as u64,
                    oldest_paid_at_ms: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// An order's queue rows as stored, for checks that they follow its snapshot.
    pub async fn queue_rows(&self, order_id: &str) -> Result<Vec<QueueEntry>, StorageError> {
        let order_id = order_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT account, due_at_ms, paid_at_ms, failover, calls_left FROM shipping_queue
                 WHERE order_id = ?1 ORDER BY account",
            )?;
            let rows = stmt.query_map([&order_id], |row| {
                let account: String = row.get(0)?;
                Ok(QueueEntry {
                    account: (!account.is_empty()).then_some(account),
                    due_at_ms: row.get(1)?,
                    paid_at_ms: row.get(2)?,
                    failover: row.get(3)?,
                    calls_left: row.get(4)?,
                })
            })?;
            let mut entries = rows.collect::<Result<Vec<_>, _>>()?;
            entries.sort();
            Ok(entries)
        })
        .await
    }
}
