//! Orders on PostgreSQL: the snapshot row and the journal, always written
//! together with what the change implies (inbox entry done, dead letter,
//! shipping-queue rows, stock steps, audit), in one transaction. Only the
//! owner of an order's partition writes it, and each write holds that
//! partition's lease (at the epoch it was taken under) until it commits;
//! reads come from any instance.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;

use super::{hold, PgStore};
use crate::domain::dead_letter::LetterSource;
use crate::domain::order::{OrderSnapshot, OrderState};
use crate::storage::order_encoding::{
    encode_journal, paid_amount, to_json, EncodedDeferred, EncodedEntry, OrderRow,
};
use crate::storage::pii::{Column, PiiCipher};
use crate::storage::stock_step::EncodedStep;
use crate::storage::{
    DeferredCommand, JournalRow, ListedOrder, MinuteActivity, NewOrder, OrderDeadLetter,
    OrderWrite, StorageError, StoredOrder,
};

/// The states `holds` is true of, for `state = ANY($n)`: the domain says
/// which states a query is about, so a new state cannot be missed.
pub(super) fn states_where(holds: fn(OrderState) -> bool) -> Vec<String> {
    OrderState::ALL
        .into_iter()
        .filter(|s| holds(*s))
        .map(|s| s.as_str().to_owned())
        .collect()
}

impl PgStore {
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
        let customer = self
            .pii()
            .seal(Column::OrderCustomer, to_json(&customer)?.as_bytes())?;
        let snapshot_json = to_json(&snapshot)?;
        let journal = encode_journal(&snapshot.order_id, 1, &journal)?;
        let deferred = deferred.map(EncodedDeferred::new).transpose()?;
        let stock: Vec<EncodedStep> = stock.into_iter().map(EncodedStep::new).collect();
        let fence = self.order_fence(&snapshot.order_id)?;
        self.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            if let Some(fence) = &fence {
                hold(&tx, fence).await?;
            }
            let insert = tx
                .prepare_cached(
                    "INSERT INTO orders (order_id, razorpay_order_id, state, snapshot, customer, fingerprint,
                                         reserved_until_ms, created_at_ms, updated_at_ms,
                                         paid_amount_paise, refund_due)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (order_id) DO NOTHING",
                )
                .await?;
            let inserted = tx
                .execute(
                    &insert,
                    &[
                        &snapshot.order_id,
                        &snapshot.razorpay_order_id,
                        &snapshot.state.as_str(),
                        &snapshot_json,
                        &customer,
                        &fingerprint,
                        &snapshot.reserved_until_ms,
                        &snapshot.created_at_ms,
                        &snapshot.updated_at_ms,
                        &paid_amount(&snapshot),
                        &snapshot.refund_due,
                    ],
                )
                .await?;
            if inserted == 0 {
                return Ok(None);
            }
            // Stock rows before the audit log's lock, as every stock change takes them.
            let locked = super::stock::lock_steps(&tx, &stock).await?;
            append_journal(&tx, &snapshot.order_id, &journal).await?;
            if let Some(command) = &deferred {
                insert_deferred(&tx, command).await?;
            }
            let applied = super::stock::apply_locked_steps(&tx, &stock, locked).await?;
            if !queue.is_empty() {
                super::shipping::replace_queue_rows(&tx, &snapshot.order_id, &queue).await?;
            }
            tx.commit().await?;
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
        let first_seq = snapshot.version + 1 - journal.len() as u64;
        let journal = encode_journal(&snapshot.order_id, first_seq, &journal)?;
        let snapshot_json = to_json(&snapshot)?;
        let fence = self.order_fence(&snapshot.order_id)?;
        self.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            if let Some(fence) = &fence {
                hold(&tx, fence).await?;
            }
            // Stock rows before the audit log's lock, as every stock change takes them.
            let locked = super::stock::lock_steps(&tx, &stock).await?;
            append_journal(&tx, &snapshot.order_id, &journal).await?;
            if !journal.is_empty() {
                let update = tx
                    .prepare_cached(
                        "UPDATE orders SET state = $2, snapshot = $3, reserved_until_ms = $4, updated_at_ms = $5,
                                           next_attempt_at_ms = $6, awb = $7, paid_amount_paise = $8,
                                           refund_due = $9
                         WHERE order_id = $1",
                    )
                    .await?;
                tx.execute(
                    &update,
                    &[
                        &snapshot.order_id,
                        &snapshot.state.as_str(),
                        &snapshot_json,
                        &snapshot.reserved_until_ms,
                        &snapshot.updated_at_ms,
                        &snapshot.shipping.next_attempt_at_ms,
                        &snapshot.shipping.awb,
                        &paid_amount(&snapshot),
                        &snapshot.refund_due,
                    ],
                )
                .await?;
            }
            if let Some(letter) = &dead_letter {
                insert_dead_letter(&tx, LetterSource::Order, letter, snapshot.updated_at_ms)
                    .await?;
            }
            if let Some(entries) = &queue {
                super::shipping::replace_queue_rows(&tx, &snapshot.order_id, entries).await?;
            }
            if let Some(inbox_id) = inbox_done {
                mark_processed(&tx, inbox_id, snapshot.updated_at_ms).await?;
            }
            if let Some(record) = &audit {
                super::audit::append(&tx, record).await?;
            }
            let applied = super::stock::apply_locked_steps(&tx, &stock, locked).await?;
            tx.commit().await?;
            Ok(applied)
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
        self.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            if let Some(letter) = &dead_letter {
                insert_dead_letter(&tx, LetterSource::Razorpay, letter, at_ms).await?;
            }
            mark_processed(&tx, inbox_id, at_ms).await?;
            tx.commit().await?;
            Ok(())
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
        self.run(move |pool| async move {
            let client = pool.get().await?;
            insert_dead_letter(&client, source, &letter, at_ms).await
        })
        .await
    }

    /// Stores a command to run when processing resumes (the kill switch is on).
    pub async fn defer_command(&self, command: DeferredCommand) -> Result<i64, StorageError> {
        let command = EncodedDeferred::new(command)?;
        self.run(move |pool| async move {
            let client = pool.get().await?;
            insert_deferred(&client, &command).await
        })
        .await
    }

    /// Deferred commands, oldest first.
    pub async fn deferred_commands(
        &self,
        limit: u32,
    ) -> Result<Vec<DeferredCommand>, StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT id, order_id, command, cause, received_at_ms FROM deferred_commands
                     ORDER BY id LIMIT $1",
                    &[&i64::from(limit)],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    let command: String = row.get(2);
                    Ok(DeferredCommand {
                        id: row.get(0),
                        order_id: row.get(1),
                        command: serde_json::from_str(&command)
                            .map_err(|e| StorageError::Encoding(e.to_string()))?,
                        cause: row.get(3),
                        received_at_ms: row.get(4),
                    })
                })
                .collect()
        })
        .await
    }

    /// Removes a deferred command once its order has dealt with it.
    pub async fn finish_deferred(&self, id: i64) -> Result<(), StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            client
                .execute("DELETE FROM deferred_commands WHERE id = $1", &[&id])
                .await?;
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
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let statement = client
                .prepare_cached("SELECT snapshot FROM orders WHERE order_id = $1")
                .await?;
            client
                .query_opt(&statement, &[&order_id])
                .await?
                .map(|row| {
                    serde_json::from_str(row.get::<_, &str>(0))
                        .map_err(|e| StorageError::Encoding(e.to_string()))
                })
                .transpose()
        })
        .await
    }

    pub async fn load_order(&self, order_id: &str) -> Result<Option<StoredOrder>, StorageError> {
        let order_id = order_id.to_owned();
        let pii = self.pii();
        self.run(move |pool| async move {
            let client = pool.get().await?;
            order_on(&client, &order_id, &pii).await
        })
        .await
    }

    pub async fn order_id_for_razorpay(
        &self,
        razorpay_order_id: &str,
    ) -> Result<Option<String>, StorageError> {
        let razorpay_order_id = razorpay_order_id.to_owned();
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let statement = client
                .prepare_cached("SELECT order_id FROM orders WHERE razorpay_order_id = $1")
                .await?;
            Ok(client
                .query_opt(&statement, &[&razorpay_order_id])
                .await?
                .map(|row| row.get(0)))
        })
        .await
    }

    /// An order and its journal as of one moment: both are read in one
    /// repeatable-read transaction, so the journal ends exactly at the
    /// snapshot's version even while the order's owner keeps writing.
    pub async fn order_with_journal(
        &self,
        order_id: &str,
    ) -> Result<Option<(StoredOrder, Vec<JournalRow>)>, StorageError> {
        let order_id = order_id.to_owned();
        let pii = self.pii();
        self.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let Some(order) = order_on(&tx, &order_id, &pii).await? else {
                return Ok(None);
            };
            let rows = tx
                .query(
                    "SELECT seq, at_ms, kind, cause, data FROM order_journal
                     WHERE order_id = $1 ORDER BY seq",
                    &[&order_id],
                )
                .await?;
            tx.commit().await?;
            let journal = rows
                .iter()
                .map(|row| JournalRow {
                    seq: row.get::<_, i64>(0) as u64,
                    at_ms: row.get(1),
                    kind: row.get(2),
                    cause: row.get(3),
                    data: serde_json::from_str(row.get::<_, &str>(4))
                        .unwrap_or(serde_json::Value::Null),
                })
                .collect();
            Ok(Some((order, journal)))
        })
        .await
    }

    /// Orders newest first, optionally in one state; `before` is the cursor.
    pub async fn list_orders(
        &self,
        state: Option<OrderState>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ListedOrder>, StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let before = before.unwrap_or(i64::MAX);
            let rows = client
                .query(
                    "SELECT id, snapshot FROM orders
                     WHERE ($1::text IS NULL OR state = $1) AND id < $2
                     ORDER BY id DESC LIMIT $3",
                    &[&state.map(OrderState::as_str), &before, &i64::from(limit)],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(ListedOrder {
                        id: row.get(0),
                        snapshot: serde_json::from_str(row.get::<_, &str>(1))
                            .map_err(|e| StorageError::Encoding(e.to_string()))?,
                    })
                })
                .collect()
        })
        .await
    }

    /// The orders created since `since_ms`, by minute of creation.
    pub async fn activity_since(&self, since_ms: i64) -> Result<Vec<MinuteActivity>, StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT created_at_ms / 60000 * 60000 AS minute, count(*),
                            count(paid_amount_paise), coalesce(sum(paid_amount_paise), 0)::bigint
                     FROM orders WHERE created_at_ms >= $1
                     GROUP BY minute ORDER BY minute",
                    &[&since_ms],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| MinuteActivity {
                    minute_ms: row.get(0),
                    checkouts: row.get::<_, i64>(1).max(0) as u64,
                    paid: row.get::<_, i64>(2).max(0) as u64,
                    revenue_paise: row.get(3),
                })
                .collect())
        })
        .await
    }

    /// Orders that owe a refund, newest first; `before` is the cursor.
    pub async fn list_refund_due(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ListedOrder>, StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT id, snapshot FROM orders
                     WHERE refund_due AND id < $1
                     ORDER BY id DESC LIMIT $2",
                    &[&before.unwrap_or(i64::MAX), &i64::from(limit)],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(ListedOrder {
                        id: row.get(0),
                        snapshot: serde_json::from_str(row.get::<_, &str>(1))
                            .map_err(|e| StorageError::Encoding(e.to_string()))?,
                    })
                })
                .collect()
        })
        .await
    }

    /// How many orders are in each state (every state present, zeros too).
    pub async fn order_counts(&self) -> Result<BTreeMap<OrderState, u64>, StorageError> {
        self.run(|pool| async move {
            let client = pool.get().await?;
            let mut counts: BTreeMap<OrderState, u64> =
                OrderState::ALL.iter().map(|s| (*s, 0)).collect();
            for row in client
                .query("SELECT state, count(*) FROM orders GROUP BY state", &[])
                .await?
            {
                if let Some(state) = OrderState::parse(row.get(0)) {
                    counts.insert(state, row.get::<_, i64>(1) as u64);
                }
            }
            Ok(counts)
        })
        .await
    }

    /// Orders whose reservation ended at or before `now_ms`.
    pub async fn reservations_ended(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        self.order_ids(
            // An order whose payment is already stored (in the inbox, or
            // deferred while paused) is not expired: after a pause, the
            // payment waiting behind the switch wins over the clock.
            "SELECT order_id FROM orders o WHERE reserved_until_ms <= $1
               AND NOT EXISTS (SELECT 1 FROM inbox i
                               WHERE i.razorpay_order_id = o.razorpay_order_id
                                 AND i.processed_at_ms IS NULL)
               AND NOT EXISTS (SELECT 1 FROM deferred_commands d WHERE d.order_id = o.order_id)
             ORDER BY reserved_until_ms LIMIT $2",
            vec![Param::Int(now_ms), Param::Int(i64::from(limit))],
        )
        .await
    }

    /// Unpaid orders registered at or before `created_before_ms`, with their
    /// Razorpay order ids, for payment reconciliation.
    pub async fn unpaid_orders(
        &self,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let unpaid = states_where(OrderState::awaits_payment);
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT order_id, razorpay_order_id FROM orders
                     WHERE state = ANY($1) AND razorpay_order_id IS NOT NULL
                       AND created_at_ms <= $2
                     ORDER BY id LIMIT $3",
                    &[&unpaid, &created_before_ms, &i64::from(limit)],
                )
                .await?;
            Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
        })
        .await
    }

    /// The order that shipped under `awb`.
    pub async fn order_id_for_awb(&self, awb: &str) -> Result<Option<String>, StorageError> {
        let awb = awb.to_owned();
        self.run(move |pool| async move {
            let client = pool.get().await?;
            Ok(client
                .query_opt("SELECT order_id FROM orders WHERE awb = $1", &[&awb])
                .await?
                .map(|row| row.get(0)))
        })
        .await
    }

    /// Every order in `state` (for bulk operator actions), oldest first.
    pub async fn order_ids_in_state(
        &self,
        state: OrderState,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        self.order_ids(
            "SELECT order_id FROM orders WHERE state = $1 ORDER BY id LIMIT $2",
            vec![
                Param::Text(state.as_str().to_owned()),
                Param::Int(i64::from(limit)),
            ],
        )
        .await
    }

    /// Orders whose stock allocations may lag their state after a crash: any
    /// order with a `held` allocation that no longer holds, or a cancelled order
    /// with an unshipped sale.
    pub async fn orders_needing_stock_repair(&self) -> Result<Vec<String>, StorageError> {
        let holding = states_where(OrderState::holds_reservation);
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT DISTINCT a.order_id FROM stock_allocations a
                     LEFT JOIN orders o ON o.order_id = a.order_id
                     WHERE (a.status = 'held' AND (o.state IS NULL OR NOT (o.state = ANY($1))))
                        OR (a.status = 'sold' AND o.state = $2)
                        OR (a.status = 'sold' AND o.state = $3
                            AND (o.snapshot::jsonb #>> '{shipping,shipped_at_ms}') IS NULL)
                        OR (a.status = 'released' AND o.state = $4)
                     ORDER BY a.order_id",
                    &[
                        &holding,
                        &OrderState::Cancelled.as_str(),
                        &OrderState::Refunded.as_str(),
                        &OrderState::Paid.as_str(),
                    ],
                )
                .await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
        .await
    }

    /// The first column of every row of `sql`: order ids for timers and sweeps.
    async fn order_ids(
        &self,
        sql: &'static str,
        params: Vec<Param>,
    ) -> Result<Vec<String>, StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let statement = client.prepare_cached(sql).await?;
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(Param::as_sql).collect();
            let rows = client.query(&statement, &refs).await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
        .await
    }
}

/// A query parameter that can cross onto the store's runtime.
enum Param {
    Int(i64),
    Text(String),
}

impl Param {
    fn as_sql(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match self {
            Param::Int(n) => n,
            Param::Text(text) => text,
        }
    }
}

async fn order_on(
    client: &impl GenericClient,
    order_id: &str,
    pii: &PiiCipher,
) -> Result<Option<StoredOrder>, StorageError> {
    let statement = client
        .prepare_cached(
            "SELECT id, snapshot, customer, fingerprint FROM orders WHERE order_id = $1",
        )
        .await?;
    client
        .query_opt(&statement, &[&order_id])
        .await?
        .map(|row| {
            OrderRow {
                id: row.get(0),
                snapshot: row.get(1),
                customer: row.get(2),
                fingerprint: row.get(3),
            }
            .open(pii)
        })
        .transpose()
}

async fn insert_deferred(
    client: &impl GenericClient,
    command: &EncodedDeferred,
) -> Result<i64, StorageError> {
    let row = client
        .query_one(
            "INSERT INTO deferred_commands (order_id, command, cause, received_at_ms)
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[
                &command.order_id,
                &command.command,
                &command.cause,
                &command.received_at_ms,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Appends journal rows, and the audit entries of the financial ones.
async fn append_journal(
    client: &impl GenericClient,
    order_id: &str,
    entries: &[EncodedEntry],
) -> Result<(), StorageError> {
    if entries.is_empty() {
        return Ok(());
    }
    let insert = client
        .prepare_cached(
            "INSERT INTO order_journal (order_id, seq, at_ms, kind, cause, data)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    for entry in entries {
        client
            .execute(
                &insert,
                &[
                    &order_id,
                    &(entry.seq as i64),
                    &entry.at_ms,
                    &entry.kind,
                    &entry.cause,
                    &entry.data,
                ],
            )
            .await?;
        if let Some(record) = &entry.audit {
            super::audit::append(client, record).await?;
        }
    }
    Ok(())
}

async fn insert_dead_letter(
    client: &impl GenericClient,
    source: LetterSource,
    letter: &OrderDeadLetter,
    at_ms: i64,
) -> Result<(), StorageError> {
    client
        .execute(
            "INSERT INTO dead_letters (source, reason, detail, event_id, received_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &source.code(),
                &letter.reason.code(),
                &letter.detail,
                &letter.event_id,
                &at_ms,
            ],
        )
        .await?;
    Ok(())
}

async fn mark_processed(
    client: &impl GenericClient,
    inbox_id: i64,
    at_ms: i64,
) -> Result<(), StorageError> {
    let statement = client
        .prepare_cached(
            "UPDATE inbox SET processed_at_ms = $2 WHERE id = $1 AND processed_at_ms IS NULL",
        )
        .await?;
    client.execute(&statement, &[&inbox_id, &at_ms]).await?;
    Ok(())
}
