//! Shipping on PostgreSQL: Shiprocket tokens per account, sealed as on
//! SQLite, and the durable shipping queue (SPEC §8) that gateways of every
//! instance pull their work from. The queries and their answers are
//! SQLite's; which states count as "being shipped" comes from the domain, as
//! a parameter, so a new state cannot be missed here either.

use deadpool_postgres::GenericClient;

use super::PgStore;
use crate::domain::order::OrderState;
use crate::domain::shipping::QueueEntry;
use crate::storage::pii::Column;
use crate::storage::{QueueBacklog, QueueSource, QueuedOrder, StorageError};

/// The `account` of a row any account may take: the column is part of the
/// key, so "none" is stored as the empty string (as on SQLite).
fn account_key(account: Option<&str>) -> &str {
    account.unwrap_or("")
}

/// The states `holds` is true of, by name, for `= ANY($n)`.
fn states_where(holds: fn(OrderState) -> bool) -> Vec<String> {
    OrderState::ALL
        .into_iter()
        .filter(|s| holds(*s))
        .map(|s| s.as_str().to_owned())
        .collect()
}

/// Replaces `order_id`'s queue rows with `rows` inside the caller's
/// transaction (the order's commit).
#[allow(dead_code)] // the port of orders calls it inside its own transactions
pub(super) async fn replace_queue_rows(
    tx: &impl GenericClient,
    order_id: &str,
    rows: &[QueueEntry],
) -> Result<(), StorageError> {
    let delete = tx
        .prepare_cached("DELETE FROM shipping_queue WHERE order_id = $1")
        .await?;
    tx.execute(&delete, &[&order_id]).await?;
    if rows.is_empty() {
        return Ok(());
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO shipping_queue (order_id, account, due_at_ms, paid_at_ms, failover, calls_left)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    for entry in rows {
        tx.execute(
            &insert,
            &[
                &order_id,
                &account_key(entry.account.as_deref()),
                &entry.due_at_ms,
                &entry.paid_at_ms,
                &i64::from(entry.failover),
                &i64::from(entry.calls_left),
            ],
        )
        .await?;
    }
    Ok(())
}

impl PgStore {
    /// The cached token of `account` and when it was issued.
    pub async fn shiprocket_token(
        &self,
        account: &str,
    ) -> Result<Option<(String, i64)>, StorageError> {
        let account = account.to_owned();
        let pii = self.pii();
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let select = client
                .prepare_cached(
                    "SELECT token, issued_at_ms FROM shiprocket_tokens WHERE account = $1",
                )
                .await?;
            let stored: Option<(Vec<u8>, i64)> = client
                .query_opt(&select, &[&account])
                .await?
                .map(|row| (row.get(0), row.get(1)));
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
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let upsert = client
                .prepare_cached(
                    "INSERT INTO shiprocket_tokens (account, token, issued_at_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (account) DO UPDATE
                     SET token = EXCLUDED.token, issued_at_ms = EXCLUDED.issued_at_ms",
                )
                .await?;
            client
                .execute(&upsert, &[&account, &token, &issued_at_ms])
                .await?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` orders with work due at `now_ms` from `sources`, oldest
    /// paid first (an order listed by two sources appears once).
    pub async fn shipping_due(
        &self,
        sources: Vec<QueueSource>,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<QueuedOrder>, StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            // Ties broken byte-wise, as SQLite does, so both cut a source's
            // rows at the same order.
            let select = client
                .prepare_cached(
                    "SELECT order_id, paid_at_ms FROM shipping_queue
                     WHERE account = $1 AND due_at_ms <= $2 AND (failover = 1 OR NOT $3)
                     ORDER BY paid_at_ms, order_id COLLATE \"C\" LIMIT $4",
                )
                .await?;
            let mut due: Vec<QueuedOrder> = Vec::new();
            for source in &sources {
                let rows = client
                    .query(
                        &select,
                        &[
                            &account_key(source.account.as_deref()),
                            &now_ms,
                            &source.failover_only,
                            &i64::from(limit),
                        ],
                    )
                    .await?;
                due.extend(rows.iter().map(|row| QueuedOrder {
                    order_id: row.get(0),
                    account: source.account.clone(),
                    paid_at_ms: row.get(1),
                }));
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
        let states = states_where(OrderState::is_being_shipped);
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let select = client
                .prepare_cached(
                    "SELECT order_id FROM (
                         SELECT DISTINCT q.order_id FROM shipping_queue q
                         JOIN orders o ON o.order_id = q.order_id
                         WHERE q.due_at_ms <= $1 AND o.state = ANY($2)
                     ) due
                     ORDER BY order_id COLLATE \"C\" LIMIT $3",
                )
                .await?;
            let rows = client
                .query(&select, &[&now_ms, &states, &i64::from(limit)])
                .await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
        .await
    }

    /// The queue's size per account: orders, calls left, the oldest payment.
    pub async fn shipping_backlog(&self) -> Result<Vec<QueueBacklog>, StorageError> {
        self.run(|pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT account, count(*), sum(calls_left)::bigint, min(paid_at_ms)
                     FROM shipping_queue GROUP BY account ORDER BY account COLLATE \"C\"",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| {
                    let account: String = row.get(0);
                    QueueBacklog {
                        account: (!account.is_empty()).then_some(account),
                        orders: row.get::<_, i64>(1).max(0) as u64,
                        calls: row.get::<_, Option<i64>>(2).unwrap_or(0).max(0) as u64,
                        oldest_paid_at_ms: row.get(3),
                    }
                })
                .collect())
        })
        .await
    }

    /// An order's queue rows as stored, for checks that they follow its snapshot.
    pub async fn queue_rows(&self, order_id: &str) -> Result<Vec<QueueEntry>, StorageError> {
        let order_id = order_id.to_owned();
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let select = client
                .prepare_cached(
                    "SELECT account, due_at_ms, paid_at_ms, failover, calls_left FROM shipping_queue
                     WHERE order_id = $1",
                )
                .await?;
            let mut entries = client
                .query(&select, &[&order_id])
                .await?
                .iter()
                .map(|row| {
                    let account: String = row.get(0);
                    let calls_left: i64 = row.get(4);
                    Ok(QueueEntry {
                        account: (!account.is_empty()).then_some(account),
                        due_at_ms: row.get(1),
                        paid_at_ms: row.get(2),
                        failover: row.get::<_, i64>(3) != 0,
                        calls_left: u32::try_from(calls_left).map_err(|_| {
                            StorageError::Encoding(format!(
                                "calls_left {calls_left} of {order_id} is not a count"
                            ))
                        })?,
                    })
                })
                .collect::<Result<Vec<_>, StorageError>>()?;
            entries.sort();
            Ok(entries)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lists_are_the_states_the_domain_names() {
        assert_eq!(
            states_where(OrderState::is_being_shipped),
            ["awaiting_shipment", "shipment_created"]
        );
        assert!(states_where(|_| false).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queue_rows_are_replaced_inside_the_callers_transaction() {
        let Some((_server, store)) =
            crate::storage::postgres::stock::tests::scratch_store("replace_queue_rows").await
        else {
            return;
        };
        let entry = |account: Option<&str>, calls_left| QueueEntry {
            account: account.map(str::to_owned),
            due_at_ms: 100,
            paid_at_ms: 10,
            failover: account.is_some(),
            calls_left,
        };
        let rounds = [
            vec![entry(Some("b"), 2), entry(None, 3)],
            vec![entry(Some("a"), 1)],
            vec![],
        ];
        for rows in rounds {
            let written = rows.clone();
            store
                .run(move |pool| async move {
                    let mut client = pool.get().await?;
                    let tx = client.transaction().await?;
                    replace_queue_rows(&tx, "o1", &written).await?;
                    tx.commit().await?;
                    Ok(())
                })
                .await
                .expect("replace");
            let mut expected = rows;
            expected.sort();
            assert_eq!(store.queue_rows("o1").await.expect("rows"), expected);
        }
    }
}
