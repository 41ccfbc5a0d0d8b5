//! Orders: the snapshot row and the journal, always written together, and the
//! inbox entries an order change completes.

use std::collections::BTreeMap;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::audit::{self, AuditRecord};
use super::stock::{apply_steps, StockStep};
use super::{SqliteStore, StorageError};
use crate::domain::checkout::CustomerRecord;
use crate::domain::dead_letter::{LetterReason, LetterSource};
use crate::domain::order::{Command, OrderEvent, OrderSnapshot, OrderState};
use crate::domain::shipping::QueueEntry;
use crate::storage::order_encoding::{
    encode_journal, paid_amount, to_json, EncodedDeferred, EncodedEntry, OrderRow,
};
use crate::storage::pii::{Column, PiiCipher};
use crate::storage::stock_step::EncodedStep;

/// A journal entry to append: the event with its time and cause.
#[derive(Debug, Clone)]
pub struct JournalAppend {
    pub event: OrderEvent,
    pub at_ms: i64,
    /// What made it happen: `webhook:<event id>`, `callback`, `timer`, `admin:<role>`, ...
    pub cause: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JournalRow {
    pub seq: u64,
    pub at_ms: i64,
    pub kind: String,
    pub cause: String,
    pub data: serde_json::Value,
}

/// An order as stored.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    /// Row id: the listing cursor, newest first.
    pub id: i64,
    pub snapshot: OrderSnapshot,
    /// Customer and address as the checkout sent them.
    pub customer: CustomerRecord,
    pub fingerprint: String,
}

/// One minute of checkouts, as the console's overview charts them: the
/// orders created in it, how many of those are paid, and what they paid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MinuteActivity {
    pub minute_ms: i64,
    pub checkouts: u64,
    pub paid: u64,
    pub revenue_paise: i64,
}

/// An order in a listing: its row id (the cursor) and snapshot.
#[derive(Debug, Clone)]
pub struct ListedOrder {
    pub id: i64,
    pub snapshot: OrderSnapshot,
}

/// A dead letter an order change files beside its effect (or instead of one).
#[derive(Debug, Clone)]
pub struct OrderDeadLetter {
    pub reason: LetterReason,
    pub detail: String,
    pub event_id: Option<String>,
}

/// An order change: the new snapshot and the journal entries that led to it,
/// plus the inbox entry it completes. One transaction.
#[derive(Debug, Clone)]
pub struct OrderWrite {
    pub snapshot: OrderSnapshot,
    pub journal: Vec<JournalAppend>,
    pub inbox_done: Option<i64>,
    pub dead_letter: Option<OrderDeadLetter>,
    /// The order's shipping-queue rows when they changed: they replace its old ones.
    pub queue: Option<Vec<QueueEntry>>,
    /// The stock steps the change implies, committed with it.
    pub stock: Vec<StockStep>,
    /// The admin action that made the change, audited with it.
    pub audit: Option<AuditRecord>,
}

/// A new order as the checkout registers it: its first journal entries (the
/// creation, and the confirmation of a cash-on-delivery order), the stock
/// they take and its shipping-queue rows, all in one transaction.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// The snapshot after every entry of `journal`.
    pub snapshot: OrderSnapshot,
    pub customer: CustomerRecord,
    pub fingerprint: String,
    pub journal: Vec<JournalAppend>,
    /// A command to run once processing resumes (a cash-on-delivery
    /// confirmation while the kill switch is on).
    pub deferred: Option<DeferredCommand>,
    pub stock: Vec<StockStep>,
    pub queue: Vec<QueueEntry>,
}

impl SqliteStore {
    /// Inserts a new order with its first journal entries and its stock
    /// steps (each flagged applied or already done). `Ok(None)` when an order
    /// with that id exists already: then nothing is written.
    pub async fn insert_order(&self, order: NewOrder) -> Result<Option<Vec<bool>>, StorageError> {
        let NewOrder {
            snapshot,
            customer,
            fingerprint,
            journal,
            deferred,
            stock,
            queue,
        } = order;
        // Encoded and sealed here, on the caller's thread, so the writer only writes.
        let customer = self
            .pii()
            .seal(Column::OrderCustomer, to_json(&customer)?.as_bytes())?;
        let snapshot_json = to_json(&snapshot)?;
        let journal = encode_journal(&snapshot.order_id, 1, &journal)?;
        let deferred = deferred.map(EncodedDeferred::new).transpose()?;
        let stock: Vec<EncodedStep> = stock.into_iter().map(EncodedStep::new).collect();
        self.write_repeatable(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO orders (order_id, razorpay_order_id, state, snapshot, customer, fingerprint,
                                         reserved_until_ms, created_at_ms, updated_at_ms,
                                         paid_amount_paise, refund_due)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (order_id) DO NOTHING",
                )?
                .execute(params![
                    snapshot.order_id,
                    snapshot.razorpay_order_id,
                    snapshot.state.as_str(),
                    snapshot_json,
                    customer,
                    fingerprint,
                    snapshot.reserved_until_ms,
                    snapshot.created_at_ms,
                    snapshot.updated_at_ms,
                    paid_amount(&snapshot),
                    snapshot.refund_due,
                ])?;
            if inserted == 0 {
                return Ok(None);
            }
            append_journal(conn, &snapshot.order_id, &journal)?;
            if let Some(command) = &deferred {
                insert_deferred(conn, command)?;
            }
            let applied = apply_steps(conn, &stock)?;
            if !queue.is_empty() {
                super::shipping::replace_queue_rows(conn, &snapshot.order_id, &queue)?;
            }
            Ok(Some(applied))
        })
        .await
    }

    /// Commits an order change: journal rows, the snapshot, the inbox entry,
    /// its queue rows and stock steps (each flagged applied or already done).
    pub async fn commit_order(&self, write: OrderWrite) -> Result<Vec<bool>, StorageError> {
        let OrderWrite {
            snapshot,
            journal,
            inbox_done,
            dead_letter,
            queue,
            stock,
            audit,
        } = write;
        let stock: Vec<EncodedStep> = stock.into_iter().map(EncodedStep::new).collect();
        // Encoded here, on the caller's thread, so the writer only writes.
        let first_seq = snapshot.version + 1 - journal.len() as u64;
        let journal = encode_journal(&snapshot.order_id, first_seq, &journal)?;
        let snapshot_json = to_json(&snapshot)?;
        self.write_repeatable(move |conn| {
            append_journal(conn, &snapshot.order_id, &journal)?;
            if !journal.is_empty() {
                update_order_row(conn, &snapshot, &snapshot_json)?;
            }
            if let Some(letter) = &dead_letter {
                insert_dead_letter(conn, LetterSource::Order, letter, snapshot.updated_at_ms)?;
            }
            if let Some(entries) = &queue {
                super::shipping::replace_queue_rows(conn, &snapshot.order_id, entries)?;
            }
            if let Some(inbox_id) = inbox_done {
                mark_processed(conn, inbox_id, snapshot.updated_at_ms)?;
            }
            if let Some(record) = &audit {
                audit::append(conn, record)?;
            }
            apply_steps(conn, &stock)
        })
        .await
    }

    /// Completes an inbox entry that changes no order, filing a dead letter if given.
    pub async fn finish_inbox_entry(
        &self,
        inbox_id: i64,
        dead_letter: Option<OrderDeadLetter>,
        at_ms: i64,
    ) -> Result<(), StorageError> {
        self.write_repeatable(move |conn| {
            if let Some(letter) = &dead_letter {
                insert_dead_letter(conn, LetterSource::Razorpay, letter, at_ms)?;
            }
            mark_processed(conn, inbox_id, at_ms)
        })
        .await
    }

    /// Files a dead letter on its own (a problem with no inbox entry behind it).
    pub async fn file_dead_letter(
        &self,
        source: LetterSource,
        letter: OrderDeadLetter,
        at_ms: i64,
    ) -> Result<(), StorageError> {
        self.write(move |conn| insert_dead_letter(conn, source, &letter, at_ms))
            .await
    }

    /// Stores a command to run when processing resumes (the kill switch is on).
    pub async fn defer_command(&self, command: DeferredCommand) -> Result<i64, StorageError> {
        let command = EncodedDeferred::new(command)?;
        self.write(move |conn| insert_deferred(conn, &command))
            .await
    }

    /// Deferred commands, oldest first.
    pub async fn deferred_commands(
        &self,
        limit: u32,
    ) -> Result<Vec<DeferredCommand>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, order_id, command, cause, received_at_ms FROM deferred_commands ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })?;
            rows.map(|row| {
                let (id, order_id, command, cause, received_at_ms) = row?;
                Ok(DeferredCommand {
                    id,
                    order_id,
                    command: serde_json::from_str(&command)
                        .map_err(|e| StorageError::Encoding(e.to_string()))?,
                    cause,
                    received_at_ms,
                })
            })
            .collect()
        })
        .await
    }

    /// Removes a deferred command once its order has dealt with it.
    pub async fn finish_deferred(&self, id: i64) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM deferred_commands WHERE id = ?1")?
                .execute([id])?;
            Ok(())
        })
        .await
    }

    /// An order's snapshot alone: for views that show no customer data, so
    /// nothing is decrypted.
    pub async fn load_snapshot(
        &self,
        order_id: &str,
    ) -> Result<Option<OrderSnapshot>, StorageError> {
        let order_id = order_id.to_owned();
        self.read(move |conn| {
            let snapshot: Option<String> = conn
                .prepare_cached("SELECT snapshot FROM orders WHERE order_id = ?1")?
                .query_row([&order_id], |row| row.get(0))
                .optional()?;
            snapshot
                .map(|text| {
                    serde_json::from_str(&text).map_err(|e| StorageError::Encoding(e.to_string()))
                })
                .transpose()
        })
        .await
    }

    pub async fn load_order(&self, order_id: &str) -> Result<Option<StoredOrder>, StorageError> {
        let order_id = order_id.to_owned();
        let pii = self.pii();
        self.read(move |conn| order_on(conn, &order_id, &pii)).await
    }

    pub async fn order_id_for_razorpay(
        &self,
        razorpay_order_id: &str,
    ) -> Result<Option<String>, StorageError> {
        let razorpay_order_id = razorpay_order_id.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT order_id FROM orders WHERE razorpay_order_id = ?1")?
                .query_row([&razorpay_order_id], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    /// An order and its journal as of one moment: both are read in one
    /// transaction, so the journal ends exactly at the snapshot's version even
    /// while the order's actor keeps writing.
    pub async fn order_with_journal(
        &self,
        order_id: &str,
    ) -> Result<Option<(StoredOrder, Vec<JournalRow>)>, StorageError> {
        let order_id = order_id.to_owned();
        let pii = self.pii();
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let Some(order) = order_on(&tx, &order_id, &pii)? else {
                return Ok(None);
            };
            let journal = journal_on(&tx, &order_id)?;
            tx.finish()?;
            Ok(Some((order, journal)))
        })
        .await
    }

    /// Orders newest first, optionally in one state; `before` is the cursor.
    /// Snapshots only: a listing shows no customer data, so none is decrypted.
    pub async fn list_orders(
        &self,
        state: Option<OrderState>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ListedOrder>, StorageError> {
        self.read(move |conn| {
            let before = before.unwrap_or(i64::MAX);
            let mut stmt = match state {
                Some(_) => conn.prepare_cached(
                    "SELECT id, snapshot FROM orders
                     WHERE state = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
                )?,
                None => conn.prepare_cached(
                    "SELECT id, snapshot FROM orders
                     WHERE ?1 IS NULL AND id < ?2 ORDER BY id DESC LIMIT ?3",
                )?,
            };
            let rows = stmt.query_map(
                params![state.map(OrderState::as_str), before, limit],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
            )?;
            rows.map(|row| {
                let (id, snapshot) = row?;
                Ok(ListedOrder {
                    id,
                    snapshot: serde_json::from_str(&snapshot)
                        .map_err(|e| StorageError::Encoding(e.to_string()))?,
                })
            })
            .collect()
        })
        .await
    }

    /// How many orders are in each state (every state present, zeros too).
    pub async fn order_counts(&self) -> Result<BTreeMap<OrderState, u64>, StorageError> {
        self.read(|conn| {
            let mut counts: BTreeMap<OrderState, u64> =
                OrderState::ALL.iter().map(|s| (*s, 0)).collect();
            let mut stmt =
                conn.prepare_cached("SELECT state, count(*) FROM orders GROUP BY state")?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (state, n) = row?;
                if let Some(state) = OrderState::parse(&state) {
                    counts.insert(state, n as u64);
                }
            }
            Ok(counts)
        })
        .await
    }

    /// The orders created since `since_ms`, by minute of creation (SPEC §9
    /// console): a paid order is one whose snapshot names its payment.
    /// Read from an index that covers it: no snapshot is opened.
    pub async fn activity_since(&self, since_ms: i64) -> Result<Vec<MinuteActivity>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT created_at_ms / 60000 * 60000 AS minute, count(*),
                        count(paid_amount_paise), coalesce(sum(paid_amount_paise), 0)
                 FROM orders WHERE created_at_ms >= ?1
                 GROUP BY minute ORDER BY minute",
            )?;
            let rows = stmt.query_map(params![since_ms], |row| {
                Ok(MinuteActivity {
                    minute_ms: row.get(0)?,
                    checkouts: row.get::<_, i64>(1)?.max(0) as u64,
                    paid: row.get::<_, i64>(2)?.max(0) as u64,
                    revenue_paise: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Orders that owe a refund (`refund_due`), newest first; `before` is the cursor.
    pub async fn list_refund_due(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ListedOrder>, StorageError> {
        self.read(move |conn| {
            // The predicate is the partial index's, word for word.
            let mut stmt = conn.prepare_cached(
                "SELECT id, snapshot FROM orders
                 WHERE refund_due = 1 AND id < ?1
                 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![before.unwrap_or(i64::MAX), limit], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })?;
            rows.map(|row| {
                let (id, snapshot) = row?;
                Ok(ListedOrder {
                    id,
                    snapshot: serde_json::from_str(&snapshot)
                        .map_err(|e| StorageError::Encoding(e.to_string()))?,
                })
            })
            .collect()
        })
        .await
    }

    /// Orders whose reservation ended at or before `now_ms`.
    pub async fn reservations_ended(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        self.read(move |conn| {
            order_ids(
                conn,
                // An order whose payment is already stored (in the inbox, or
                // deferred while paused) is not expired: after a pause, the
                // payment waiting behind the switch wins over the clock.
                "SELECT order_id FROM orders o WHERE reserved_until_ms <= ?1
                   AND NOT EXISTS (SELECT 1 FROM inbox i
                                   WHERE i.razorpay_order_id = o.razorpay_order_id
                                     AND i.processed_at_ms IS NULL)
                   AND NOT EXISTS (SELECT 1 FROM deferred_commands d WHERE d.order_id = o.order_id)
                 ORDER BY reserved_until_ms LIMIT ?2",
                params![now_ms, limit],
            )
        })
        .await
    }

    /// Unpaid orders registered at or before `created_before_ms`, with their
    /// Razorpay order ids, for payment reconciliation.
    pub async fn unpaid_orders(
        &self,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT order_id, razorpay_order_id FROM orders
                 WHERE state IN ({}) AND razorpay_order_id IS NOT NULL
                   AND created_at_ms <= ?1
                 ORDER BY id LIMIT ?2",
                super::states_where(OrderState::awaits_payment)
            ))?;
            let rows = stmt.query_map(params![created_before_ms, limit], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The order that shipped under `awb`.
    pub async fn order_id_for_awb(&self, awb: &str) -> Result<Option<String>, StorageError> {
        let awb = awb.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT order_id FROM orders WHERE awb = ?1")?
                .query_row([&awb], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    /// Every order in `state` (for bulk operator actions), oldest first.
    pub async fn order_ids_in_state(
        &self,
        state: OrderState,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        self.read(move |conn| {
            order_ids(
                conn,
                "SELECT order_id FROM orders WHERE state = ?1 ORDER BY id LIMIT ?2",
                params![state.as_str(), limit],
            )
        })
        .await
    }

    /// Orders whose stock allocations may lag their state after a crash: any
    /// order with a `held` allocation that no longer holds, or a cancelled order
    /// with an unshipped sale.
    pub async fn orders_needing_stock_repair(&self) -> Result<Vec<String>, StorageError> {
        self.read(|conn| {
            let sql = format!(
                "SELECT DISTINCT a.order_id FROM stock_allocations a
                 LEFT JOIN orders o ON o.order_id = a.order_id
                 WHERE (a.status = 'held' AND (o.state IS NULL OR o.state NOT IN ({holding})))
                    OR (a.status = 'sold' AND o.state = '{cancelled}')
                    OR (a.status = 'sold' AND o.state = '{refunded}'
                        AND json_extract(o.snapshot, '$.shipping.shipped_at_ms') IS NULL)
                    OR (a.status = 'released' AND o.state = '{paid}')",
                holding = super::states_where(OrderState::holds_reservation),
                cancelled = OrderState::Cancelled,
                refunded = OrderState::Refunded,
                paid = OrderState::Paid,
            );
            order_ids(conn, &sql, [])
        })
        .await
    }
}

/// The first column of every row of `sql`: order ids for timers and sweeps.
fn order_ids(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<String>, StorageError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |row| row.get(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn order_on(
    conn: &Connection,
    order_id: &str,
    pii: &PiiCipher,
) -> Result<Option<StoredOrder>, StorageError> {
    conn.prepare_cached(
        "SELECT id, snapshot, customer, fingerprint FROM orders WHERE order_id = ?1",
    )?
    .query_row([order_id], order_row)
    .optional()?
    .map(|row| row.open(pii))
    .transpose()
}

fn journal_on(conn: &Connection, order_id: &str) -> Result<Vec<JournalRow>, StorageError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at_ms, kind, cause, data FROM order_journal WHERE order_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([order_id], |row| {
        let data: String = row.get(4)?;
        Ok(JournalRow {
            seq: row.get::<_, i64>(0)? as u64,
            at_ms: row.get(1)?,
            kind: row.get(2)?,
            cause: row.get(3)?,
            data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn order_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<OrderRow> {
    Ok(OrderRow {
        id: row.get(0)?,
        snapshot: row.get(1)?,
        customer: super::bytes_at(row, 2)?,
        fingerprint: row.get(3)?,
    })
}

/// A command that waits in storage for processing to resume.
#[derive(Debug, Clone)]
pub struct DeferredCommand {
    pub id: i64,
    pub order_id: String,
    pub command: Command,
    pub cause: String,
    pub received_at_ms: i64,
}

fn insert_deferred(conn: &Connection, command: &EncodedDeferred) -> Result<i64, StorageError> {
    conn.prepare_cached(
        "INSERT INTO deferred_commands (order_id, command, cause, received_at_ms) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        command.order_id,
        command.command,
        command.cause,
        command.received_at_ms
    ])?;
    Ok(conn.last_insert_rowid())
}

/// The columns of an order row that indexes cover, besides its ids and creation time.
const INDEXED_COLUMNS: [&str; 6] = [
    "state",
    "reserved_until_ms",
    "next_attempt_at_ms",
    "awb",
    "paid_amount_paise",
    "refund_due",
];

/// An order row's values of [`INDEXED_COLUMNS`], in that order.
#[derive(Debug, Clone, PartialEq)]
struct IndexedColumns([Value; 6]);

impl IndexedColumns {
    fn of(snapshot: &OrderSnapshot) -> Self {
        let integer = |v: Option<i64>| v.map_or(Value::Null, Value::Integer);
        Self([
            Value::Text(snapshot.state.as_str().to_owned()),
            integer(snapshot.reserved_until_ms),
            integer(snapshot.shipping.next_attempt_at_ms),
            snapshot
                .shipping
                .awb
                .clone()
                .map_or(Value::Null, Value::Text),
            integer(paid_amount(snapshot)),
            Value::Integer(i64::from(snapshot.refund_due)),
        ])
    }

    /// The values stored for `order_id`, if it has a row.
    fn stored(conn: &Connection, order_id: &str) -> Result<Option<Self>, StorageError> {
        Ok(conn
            .prepare_cached(
                // INDEXED_COLUMNS, in its order.
                "SELECT state, reserved_until_ms, next_attempt_at_ms, awb, paid_amount_paise, refund_due
                 FROM orders WHERE order_id = ?1",
            )?
            .query_row([order_id], |row| {
                Ok(Self([
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ]))
            })
            .optional()?)
    }

    /// `(column, value)` for each column whose value differs from `stored`'s.
    fn changed_since(&self, stored: Option<&IndexedColumns>) -> Vec<(&'static str, &Value)> {
        INDEXED_COLUMNS
            .into_iter()
            .zip(&self.0)
            .enumerate()
            .filter(|(i, (_, value))| stored.is_none_or(|s| s.0[*i] != **value))
            .map(|(_, column)| column)
            .collect()
    }
}

/// Writes `snapshot` over its order row, setting only the indexed columns
/// whose values changed. SQLite deletes and re-inserts an index entry for
/// every indexed column an UPDATE names, changed or not, and most of an
/// order's commits (its Shiprocket steps) change one of them or none.
fn update_order_row(
    conn: &Connection,
    snapshot: &OrderSnapshot,
    snapshot_json: &str,
) -> Result<(), StorageError> {
    let stored = IndexedColumns::stored(conn, &snapshot.order_id)?;
    let indexed = IndexedColumns::of(snapshot);
    let changed = indexed.changed_since(stored.as_ref());
    let mut sql = String::from("UPDATE orders SET snapshot = ?2, updated_at_ms = ?3");
    let mut values: Vec<&dyn rusqlite::ToSql> =
        vec![&snapshot.order_id, &snapshot_json, &snapshot.updated_at_ms];
    for (column, value) in changed {
        values.push(value);
        sql.push_str(&format!(", {column} = ?{}", values.len()));
    }
    sql.push_str(" WHERE order_id = ?1");
    conn.prepare_cached(&sql)?
        .execute(rusqlite::params_from_iter(values))?;
    Ok(())
}

/// Appends journal rows, and the audit entries of the financial ones.
fn append_journal(
    conn: &Connection,
    order_id: &str,
    entries: &[EncodedEntry],
) -> Result<(), StorageError> {
    for entry in entries {
        conn.prepare_cached(
            "INSERT INTO order_journal (order_id, seq, at_ms, kind, cause, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            order_id,
            entry.seq as i64,
            entry.at_ms,
            entry.kind,
            entry.cause,
            entry.data
        ])?;
        if let Some(record) = &entry.audit {
            audit::append(conn, record)?;
        }
    }
    Ok(())
}

fn insert_dead_letter(
    conn: &Connection,
    source: LetterSource,
    letter: &OrderDeadLetter,
    at_ms: i64,
) -> Result<(), StorageError> {
    conn.prepare_cached(
        "INSERT INTO dead_letters (source, reason, detail, event_id, received_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![source.code(), letter.reason.code(), letter.detail, letter.event_id, at_ms])?;
    Ok(())
}

fn mark_processed(conn: &Connection, inbox_id: i64, at_ms: i64) -> Result<(), StorageError> {
    conn.prepare_cached(
        "UPDATE inbox SET processed_at_ms = ?2 WHERE id = ?1 AND processed_at_ms IS NULL",
    )?
    .execute(params![inbox_id, at_ms])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::checkout::{Address, Customer};
    use crate::domain::order::{apply, genesis, OrderLine, PaymentMethod};
    use crate::storage::sqlite::webhooks::WebhookRecord;
    use crate::storage::{PiiKey, StorageOptions};

    fn customer() -> CustomerRecord {
        CustomerRecord {
            customer: Customer {
                name: "Asha".into(),
                email: "asha@example.com".into(),
                phone: "9800000000".into(),
            },
            shipping_address: Address {
                line1: "1 MG Road".into(),
                line2: String::new(),
                city: "Pune".into(),
                state: "MH".into(),
                pincode: "411001".into(),
                country: "India".into(),
            },
        }
    }

    /// Inserts the order `created` makes, as a checkout would.
    async fn insert_created(
        storage: &SqliteStore,
        order_id: &str,
        created: OrderEvent,
    ) -> OrderSnapshot {
        let snapshot = genesis(order_id, &created, 1).unwrap();
        storage
            .insert_order(NewOrder {
                snapshot: snapshot.clone(),
                customer: customer(),
                fingerprint: "f".into(),
                journal: vec![append(created, 1)],
                deferred: None,
                stock: vec![],
                queue: vec![],
            })
            .await
            .unwrap()
            .expect("inserted");
        snapshot
    }

    fn append(event: OrderEvent, at_ms: i64) -> JournalAppend {
        JournalAppend {
            event,
            at_ms,
            cause: "test".into(),
        }
    }

    /// A commit of `snapshot` with one journal entry, `event` at `at_ms`, and nothing else.
    fn journaled(snapshot: &OrderSnapshot, event: OrderEvent, at_ms: i64) -> OrderWrite {
        OrderWrite {
            snapshot: snapshot.clone(),
            journal: vec![append(event, at_ms)],
            inbox_done: None,
            dead_letter: None,
            queue: None,
            stock: vec![],
            audit: None,
        }
    }

    /// A reader racing the order's writes must never see a journal that ends
    /// before or after the snapshot it read with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_order_and_its_journal_are_read_as_of_one_moment() {
        let dir = tempfile::tempdir().unwrap();
        let options = StorageOptions::new(
            dir.path().join("db.sqlite"),
            std::time::Duration::from_millis(500),
            PiiKey::from_bytes([7; 32]),
        );
        let storage = SqliteStore::open(&options).unwrap();
        let created = OrderEvent::Created {
            razorpay_order_id: None,
            payment_method: PaymentMethod::Prepaid,
            currency: "INR".into(),
            amount_paise: 74_900,
            lines: vec![OrderLine {
                sku: "TEE".into(),
                name: "Black tee M".into(),
                quantity: 1,
                unit_price_paise: 74_900,
                weight_g: None,
            }],
            reserved_until_ms: None,
        };
        let mut snapshot = insert_created(&storage, "XVC-R1", created).await;

        const CHANGES: i64 = 300;
        let writer = {
            let storage = storage.clone();
            tokio::spawn(async move {
                for at in 2..CHANGES + 2 {
                    let event = OrderEvent::PaymentFailureNoted { payment_id: None };
                    apply(&mut snapshot, &event, at);
                    storage
                        .commit_order(journaled(&snapshot, event, at))
                        .await
                        .unwrap();
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() {
            let (order, journal) = storage
                .order_with_journal("XVC-R1")
                .await
                .unwrap()
                .expect("order exists");
            assert_eq!(
                journal.last().map(|row| row.seq),
                Some(order.snapshot.version),
                "a journal of {} entries beside a snapshot of version {}",
                journal.len(),
                order.snapshot.version
            );
            reads += 1;
        }
        writer.await.unwrap();
        assert!(reads > 0);
        let (order, journal) = storage.order_with_journal("XVC-R1").await.unwrap().unwrap();
        let snapshot = order.snapshot;
        let events: Vec<(OrderEvent, i64)> = journal
            .into_iter()
            .map(|row| (serde_json::from_value(row.data).unwrap(), row.at_ms))
            .collect();
        assert_eq!(events.len() as i64, CHANGES + 1);
        let rebuilt = crate::domain::order::replay("XVC-R1", events.iter().map(|(e, at)| (e, *at)));
        assert_eq!(rebuilt, Some(snapshot));
    }

    /// The dispatcher routes an entry by the order id read with it, and needs
    /// no read of its own for it; an entry whose order is not there yet has none.
    #[tokio::test]
    async fn pending_inbox_entries_carry_the_order_of_their_razorpay_order() {
        let (storage, _dir) = super::super::fresh_storage();
        let captured = |key: &str, razorpay_order_id: &str| WebhookRecord::Accepted {
            dedup_key: key.into(),
            acted_on: true,
            event: "payment.captured".into(),
            razorpay_order_id: Some(razorpay_order_id.into()),
            razorpay_payment_id: Some("pay_1".into()),
            event_created_at: 1,
            received_at_ms: 2,
            body: b"{}".to_vec(),
        };
        storage
            .record_webhook(captured("evt_known", "order_K1"))
            .await
            .unwrap();
        storage
            .record_webhook(captured("evt_unknown", "order_U1"))
            .await
            .unwrap();
        let created = OrderEvent::Created {
            razorpay_order_id: Some("order_K1".into()),
            payment_method: PaymentMethod::Prepaid,
            currency: "INR".into(),
            amount_paise: 74_900,
            lines: vec![],
            reserved_until_ms: None,
        };
        insert_created(&storage, "XVC-K1", created).await;
        let pending = storage.pending_inbox(0, 10).await.unwrap();
        let order_of = |key: &str| {
            pending
                .iter()
                .find(|e| e.dedup_key == key)
                .map(|e| e.order_id.clone())
        };
        assert_eq!(order_of("evt_known"), Some(Some("XVC-K1".to_owned())));
        assert_eq!(order_of("evt_unknown"), Some(None));
    }

    #[test]
    fn an_update_names_only_the_indexed_columns_that_changed() {
        let created = OrderEvent::Created {
            razorpay_order_id: None,
            payment_method: PaymentMethod::Prepaid,
            currency: "INR".into(),
            amount_paise: 74_900,
            lines: vec![],
            reserved_until_ms: Some(100),
        };
        let mut snapshot = genesis("XVC-I0", &created, 1).unwrap();
        let stored = IndexedColumns::of(&snapshot);
        let names = |changed: Vec<(&'static str, &Value)>| {
            changed.into_iter().map(|(c, _)| c).collect::<Vec<_>>()
        };
        let all = IndexedColumns::of(&snapshot);
        assert_eq!(names(all.changed_since(Some(&stored))), Vec::<&str>::new());
        assert_eq!(
            names(all.changed_since(None)).len(),
            6,
            "no row read: all of them"
        );
        snapshot.shipping.next_attempt_at_ms = Some(5);
        snapshot.shipping.awb = Some("AWB1".into());
        let later = IndexedColumns::of(&snapshot);
        assert_eq!(
            names(later.changed_since(Some(&stored))),
            vec!["next_attempt_at_ms", "awb"]
        );
    }

    /// Whatever columns a commit changes, the row holds the snapshot's values
    /// and every index agrees with the table.
    #[tokio::test]
    async fn an_order_rows_indexed_columns_follow_its_snapshot() {
        let (storage, dir) = super::super::fresh_storage();
        let created = OrderEvent::Created {
            razorpay_order_id: Some("order_I1".into()),
            payment_method: PaymentMethod::Prepaid,
            currency: "INR".into(),
            amount_paise: 74_900,
            lines: vec![],
            reserved_until_ms: Some(100),
        };
        let mut snapshot = insert_created(&storage, "XVC-I1", created).await;
        let reader = super::super::open_read_only(&dir.path().join("db.sqlite")).unwrap();
        let changes: [fn(&mut OrderSnapshot); 6] = [
            |s| {
                s.state = OrderState::Paid;
                s.reserved_until_ms = None;
                s.payment_id = Some("pay_1".into());
            },
            |s| s.shipping.next_attempt_at_ms = Some(10),
            // A step that changes no indexed column.
            |s| s.shipping.attempts += 1,
            |s| {
                s.state = OrderState::ShipmentCreated;
                s.shipping.next_attempt_at_ms = Some(20);
            },
            |s| {
                s.state = OrderState::ReadyToShip;
                s.shipping.next_attempt_at_ms = None;
                s.shipping.awb = Some("AWB1".into());
            },
            |s| s.refund_due = true,
        ];
        for (at, change) in (2..).zip(changes) {
            change(&mut snapshot);
            snapshot.version += 1;
            snapshot.updated_at_ms = at;
            let event = OrderEvent::PaymentFailureNoted { payment_id: None };
            storage
                .commit_order(journaled(&snapshot, event, at))
                .await
                .unwrap();
            let row = (
                IndexedColumns::stored(&reader, "XVC-I1").unwrap().unwrap(),
                reader
                    .query_row(
                        "SELECT updated_at_ms FROM orders WHERE order_id = 'XVC-I1'",
                        [],
                        |row| row.get::<_, i64>(0),
                    )
                    .unwrap(),
            );
            assert_eq!(row, (IndexedColumns::of(&snapshot), at));
            let check: String = reader
                .query_row("PRAGMA integrity_check", [], |row| row.get(0))
                .unwrap();
            assert_eq!(check, "ok", "after change {at}");
            let by_state: i64 = reader
                .query_row(
                    "SELECT count(*) FROM orders INDEXED BY orders_by_state WHERE state = ?1",
                    [snapshot.state.as_str()],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(by_state, 1);
        }
        let stored = storage.load_order("XVC-I1").await.unwrap().unwrap();
        assert_eq!(stored.snapshot, snapshot);
    }
}
