//! Versioned schema. Each migration runs once, in order, inside one transaction
//! with the `user_version` bump, so a crash mid-migration leaves the old version.
//! Append only: never edit a migration that has shipped.

use rusqlite::Connection;

use super::StorageError;

const MIGRATIONS: &[&str] = &[
    // 1: webhook ingest. `webhook_receipts` is the dedup record: its primary key is
    // inserted in the same transaction as the inbox or dead-letter row it protects,
    // so the first delivery wins and every later one is a duplicate.
    "
    CREATE TABLE webhook_receipts (
        dedup_key      TEXT PRIMARY KEY,
        disposition    TEXT NOT NULL,          -- accepted | quarantined
        received_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE inbox (
        id                  INTEGER PRIMARY KEY,
        dedup_key           TEXT NOT NULL,
        event               TEXT NOT NULL,
        razorpay_order_id   TEXT,
        razorpay_payment_id TEXT,
        event_created_at    INTEGER NOT NULL,
        received_at_ms      INTEGER NOT NULL,
        body                BLOB NOT NULL,
        processed_at_ms     INTEGER
    );
    CREATE INDEX inbox_unprocessed ON inbox (id) WHERE processed_at_ms IS NULL;

    CREATE TABLE dead_letters (
        id             INTEGER PRIMARY KEY,
        source         TEXT NOT NULL,          -- razorpay | tracking | ...
        reason         TEXT NOT NULL,
        detail         TEXT NOT NULL,
        event_id       TEXT,
        received_at_ms INTEGER NOT NULL,
        body           BLOB,
        resolved_at_ms INTEGER
    );
    CREATE INDEX dead_letters_open ON dead_letters (id) WHERE resolved_at_ms IS NULL;

    CREATE TABLE daemon_state (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    ",
    // 2: orders and stock. A stock level changes only together with a ledger row
    // (so on_hand is the sum of its ledger), and `stock_allocations` records,
    // per order and SKU, whether its units are held, sold, released or returned:
    // every stock step of an order is idempotent by that row.
    "
    CREATE TABLE stock_levels (
        sku       TEXT PRIMARY KEY,
        on_hand   INTEGER NOT NULL DEFAULT 0,
        reserved  INTEGER NOT NULL DEFAULT 0,
        name      TEXT,
        weight_kg REAL,
        dims_cm   TEXT,
        hsn       TEXT
    ) WITHOUT ROWID;

    CREATE TABLE stock_ledger (
        id             INTEGER PRIMARY KEY,
        sku            TEXT NOT NULL,
        on_hand_delta  INTEGER NOT NULL,
        reserved_delta INTEGER NOT NULL,
        reason         TEXT NOT NULL,
        order_id       TEXT,
        at_ms          INTEGER NOT NULL
    );
    CREATE INDEX stock_ledger_by_sku ON stock_ledger (sku);

    CREATE TABLE stock_allocations (
        order_id TEXT NOT NULL,
        sku      TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        status   TEXT NOT NULL,              -- held | sold | released | returned
        PRIMARY KEY (order_id, sku)
    ) WITHOUT ROWID;

    CREATE TABLE orders (
        id                INTEGER PRIMARY KEY,
        order_id          TEXT NOT NULL UNIQUE,
        razorpay_order_id TEXT UNIQUE,
        state             TEXT NOT NULL,
        snapshot          TEXT NOT NULL,     -- JSON of the state machine's snapshot
        customer          TEXT NOT NULL,     -- JSON: customer and shipping address
        fingerprint       TEXT NOT NULL,     -- of the checkout request, for idempotency
        reserved_until_ms INTEGER,
        created_at_ms     INTEGER NOT NULL,
        updated_at_ms     INTEGER NOT NULL
    );
    CREATE INDEX orders_by_state ON orders (state, id);
    CREATE INDEX orders_by_reservation_end ON orders (reserved_until_ms)
        WHERE reserved_until_ms IS NOT NULL;

    CREATE TABLE order_journal (
        order_id TEXT NOT NULL,
        seq      INTEGER NOT NULL,
        at_ms    INTEGER NOT NULL,
        kind     TEXT NOT NULL,
        cause    TEXT NOT NULL,
        data     TEXT NOT NULL,
        PRIMARY KEY (order_id, seq)
    ) WITHOUT ROWID;
    ",
    // 3: Shiprocket tokens, reused across restarts (a login per start would burn
    // the account's rate and its 10-day tokens).
    "
    CREATE TABLE shiprocket_tokens (
        account      TEXT PRIMARY KEY,
        token        TEXT NOT NULL,
        issued_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
    // 4: shipping. The timer finds orders with a Shiprocket call due; tracking
    // updates find their order by AWB.
    "
    ALTER TABLE orders ADD COLUMN next_attempt_at_ms INTEGER;
    ALTER TABLE orders ADD COLUMN awb TEXT;
    CREATE INDEX orders_due_for_shipping ON orders (next_attempt_at_ms)
        WHERE next_attempt_at_ms IS NOT NULL;
    CREATE INDEX orders_by_awb ON orders (awb) WHERE awb IS NOT NULL;
    ",
    // 5: operations. The audit log is hash-chained (`domain::audit`) and refuses
    // updates and deletes, so changing it takes deliberate work that `audit
    // verify` then detects. Dead letters remember their replays. Commands that
    // arrive while processing is paused wait in `deferred_commands`.
    "
    CREATE TABLE audit_log (
        seq        INTEGER PRIMARY KEY,
        at_ms      INTEGER NOT NULL,
        actor      TEXT NOT NULL,
        action     TEXT NOT NULL,
        subject    TEXT,
        detail     TEXT NOT NULL,
        peer       TEXT,
        user_agent TEXT,
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL
    );
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

    ALTER TABLE dead_letters ADD COLUMN replays INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE dead_letters ADD COLUMN last_replay_at_ms INTEGER;
    ALTER TABLE dead_letters ADD COLUMN last_replay_outcome TEXT;

    CREATE TABLE deferred_commands (
        id             INTEGER PRIMARY KEY,
        order_id       TEXT NOT NULL,
        command        TEXT NOT NULL,     -- JSON of domain::order::Command
        cause          TEXT NOT NULL,
        received_at_ms INTEGER NOT NULL
    );
    ",
    // 6: reservation expiry skips orders whose payment is stored but not yet
    // processed (a backlog after a pause); these indexes keep that check cheap.
    "
    CREATE INDEX inbox_unprocessed_by_razorpay_order ON inbox (razorpay_order_id)
        WHERE processed_at_ms IS NULL;
    CREATE INDEX deferred_commands_by_order ON deferred_commands (order_id);
    ",
    // 7: the durable shipping queue (SPEC §8). A row per order and account it
    // has Shiprocket work for ('' while any account may take it), rewritten in
    // the same commit as the order's snapshot (`domain::shipping::queue`).
    // Gateways pull due rows oldest paid first, per account. Orders already
    // queued by an older dropshipd are carried over from their snapshots.
    "
    CREATE TABLE shipping_queue (
        order_id   TEXT NOT NULL,
        account    TEXT NOT NULL,
        due_at_ms  INTEGER NOT NULL,
        paid_at_ms INTEGER NOT NULL,
        failover   INTEGER NOT NULL,
        calls_left INTEGER NOT NULL,
        PRIMARY KEY (order_id, account)
    ) WITHOUT ROWID;
    CREATE INDEX shipping_queue_by_account ON shipping_queue (account, paid_at_ms);

    INSERT INTO shipping_queue (order_id, account, due_at_ms, paid_at_ms, failover, calls_left)
    SELECT order_id,
           CASE WHEN json_extract(snapshot, '$.shipping.in_doubt')
                  OR state = 'shipment_created'
                THEN coalesce(json_extract(snapshot, '$.shipping.account'), '') ELSE '' END,
           next_attempt_at_ms,
           coalesce(json_extract(snapshot, '$.shipping.paid_at_ms'), created_at_ms),
           0,
           CASE state WHEN 'shipment_created' THEN 2 ELSE 3 END
    FROM orders
    WHERE state IN ('awaiting_shipment', 'shipment_created') AND next_attempt_at_ms IS NOT NULL;
    ",
    // 8: the console's overview counts the last hour's orders and payments
    // by creation, and its attention page lists the orders that owe a
    // refund: two facts of the snapshot kept beside it, and their indexes.
    "
    ALTER TABLE orders ADD COLUMN paid_amount_paise INTEGER;  -- NULL until a payment is recorded
    ALTER TABLE orders ADD COLUMN refund_due INTEGER NOT NULL DEFAULT 0;
    UPDATE orders SET
        paid_amount_paise = CASE WHEN json_extract(snapshot, '$.payment_id') IS NOT NULL
                                 THEN json_extract(snapshot, '$.amount_paise') END,
        refund_due = coalesce(json_extract(snapshot, '$.refund_due'), 0);
    CREATE INDEX orders_by_creation ON orders (created_at_ms, paid_amount_paise);
    CREATE INDEX orders_refund_due ON orders (id) WHERE refund_due = 1;
    ",
];

/// Brings the schema to the latest version. Refuses a database from a newer
/// dropshipd rather than guessing at its tables.
pub(super) fn migrate(conn: &mut Connection) -> Result<u32, StorageError> {
    let current: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let latest = MIGRATIONS.len() as u32;
    if current > latest {
        return Err(StorageError::SchemaTooNew {
            found: current,
            supported: latest,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as u32 + 1)?;
        tx.commit()?;
    }
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_are_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len() as u32);
        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len() as u32);
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 13);
    }

    #[test]
    fn migration_8_carries_payments_and_refunds_due_over_from_the_snapshots() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..7] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 7).unwrap();
        for (order_id, snapshot) in [
            (
                "PAID",
                r#"{"payment_id":"pay_1","amount_paise":74900,"refund_due":true}"#,
            ),
            (
                "UNPAID",
                r#"{"payment_id":null,"amount_paise":1000,"refund_due":false}"#,
            ),
        ] {
            conn.execute(
                "INSERT INTO orders (order_id, state, snapshot, customer, fingerprint,
                                     created_at_ms, updated_at_ms)
                 VALUES (?1, 'paid', ?2, x'00', 'f', 1, 1)",
                rusqlite::params![order_id, snapshot],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let row = |order_id: &str| -> (Option<i64>, i64) {
            conn.query_row(
                "SELECT paid_amount_paise, refund_due FROM orders WHERE order_id = ?1",
                [order_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        assert_eq!(row("PAID"), (Some(74_900), 1));
        assert_eq!(row("UNPAID"), (None, 0));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(StorageError::SchemaTooNew { found: 999, .. })
        ));
    }
}
