//! Versioned schema of the PostgreSQL backend. All pending migrations run in
//! one transaction that first takes a transaction-scoped advisory lock, so
//! instances starting at once apply each migration exactly once: the others
//! wait, then find nothing left to do. (A transaction lock ends with its
//! transaction or its connection; nothing can hold it after a crash.)
//! Append only: never edit a migration that has shipped.

use deadpool_postgres::Object;

use crate::storage::StorageError;

/// The key of the advisory lock migrations take ("dropshpd" in ASCII).
const MIGRATION_LOCK: i64 = 0x6472_6f70_7368_7064;

const MIGRATIONS: &[&str] = &[
    // 1: the tables of the SQLite schema at its version 7, in PostgreSQL's
    // types, plus the cluster's instances and leases. Times are milliseconds
    // since the epoch as on SQLite, except the leases', which the database's
    // own clock sets and compares.
    "
    CREATE TABLE webhook_receipts (
        dedup_key      TEXT PRIMARY KEY,
        disposition    TEXT NOT NULL,
        received_at_ms BIGINT NOT NULL
    );

    CREATE TABLE inbox (
        id                  BIGSERIAL PRIMARY KEY,
        dedup_key           TEXT NOT NULL,
        event               TEXT NOT NULL,
        razorpay_order_id   TEXT,
        razorpay_payment_id TEXT,
        event_created_at    BIGINT NOT NULL,
        received_at_ms      BIGINT NOT NULL,
        body                BYTEA NOT NULL,
        processed_at_ms     BIGINT
    );
    CREATE INDEX inbox_unprocessed ON inbox (id) WHERE processed_at_ms IS NULL;
    CREATE INDEX inbox_unprocessed_by_razorpay_order ON inbox (razorpay_order_id)
        WHERE processed_at_ms IS NULL;

    CREATE TABLE dead_letters (
        id                  BIGSERIAL PRIMARY KEY,
        source              TEXT NOT NULL,
        reason              TEXT NOT NULL,
        detail              TEXT NOT NULL,
        event_id            TEXT,
        received_at_ms      BIGINT NOT NULL,
        body                BYTEA,
        resolved_at_ms      BIGINT,
        replays             BIGINT NOT NULL DEFAULT 0,
        last_replay_at_ms   BIGINT,
        last_replay_outcome TEXT
    );
    CREATE INDEX dead_letters_open ON dead_letters (id) WHERE resolved_at_ms IS NULL;

    CREATE TABLE daemon_state (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    -- The database itself refuses to oversell: no change may leave fewer
    -- units on hand than are reserved, whichever instance makes it.
    CREATE TABLE stock_levels (
        sku       TEXT PRIMARY KEY,
        on_hand   BIGINT NOT NULL DEFAULT 0,
        reserved  BIGINT NOT NULL DEFAULT 0,
        name      TEXT,
        weight_kg DOUBLE PRECISION,
        dims_cm   TEXT,
        hsn       TEXT,
        CONSTRAINT stock_available_never_negative CHECK (reserved >= 0 AND on_hand >= reserved)
    );

    CREATE TABLE stock_ledger (
        id             BIGSERIAL PRIMARY KEY,
        sku            TEXT NOT NULL,
        on_hand_delta  BIGINT NOT NULL,
        reserved_delta BIGINT NOT NULL,
        reason         TEXT NOT NULL,
        order_id       TEXT,
        at_ms          BIGINT NOT NULL
    );
    CREATE INDEX stock_ledger_by_sku ON stock_ledger (sku);

    CREATE TABLE stock_allocations (
        order_id TEXT NOT NULL,
        sku      TEXT NOT NULL,
        quantity BIGINT NOT NULL,
        status   TEXT NOT NULL,
        PRIMARY KEY (order_id, sku)
    );

    CREATE TABLE orders (
        id                 BIGSERIAL PRIMARY KEY,
        order_id           TEXT NOT NULL UNIQUE,
        razorpay_order_id  TEXT UNIQUE,
        state              TEXT NOT NULL,
        snapshot           TEXT NOT NULL,
        customer           BYTEA NOT NULL,
        fingerprint        TEXT NOT NULL,
        reserved_until_ms  BIGINT,
        created_at_ms      BIGINT NOT NULL,
        updated_at_ms      BIGINT NOT NULL,
        next_attempt_at_ms BIGINT,
        awb                TEXT
    );
    CREATE INDEX orders_by_state ON orders (state, id);
    CREATE INDEX orders_by_reservation_end ON orders (reserved_until_ms)
        WHERE reserved_until_ms IS NOT NULL;
    CREATE INDEX orders_due_for_shipping ON orders (next_attempt_at_ms)
        WHERE next_attempt_at_ms IS NOT NULL;
    CREATE INDEX orders_by_awb ON orders (awb) WHERE awb IS NOT NULL;

    CREATE TABLE order_journal (
        order_id TEXT NOT NULL,
        seq      BIGINT NOT NULL,
        at_ms    BIGINT NOT NULL,
        kind     TEXT NOT NULL,
        cause    TEXT NOT NULL,
        data     TEXT NOT NULL,
        PRIMARY KEY (order_id, seq)
    );

    CREATE TABLE shiprocket_tokens (
        account      TEXT PRIMARY KEY,
        token        BYTEA NOT NULL, -- sealed (storage::pii)
        issued_at_ms BIGINT NOT NULL
    );

    CREATE TABLE audit_log (
        seq        BIGINT PRIMARY KEY,
        at_ms      BIGINT NOT NULL,
        actor      TEXT NOT NULL,
        action     TEXT NOT NULL,
        subject    TEXT,
        detail     TEXT NOT NULL,
        peer       TEXT,
        user_agent TEXT,
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL
    );
    CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_log is append-only';
    END;
    $$;
    CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
    CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

    CREATE TABLE deferred_commands (
        id             BIGSERIAL PRIMARY KEY,
        order_id       TEXT NOT NULL,
        command        TEXT NOT NULL,
        cause          TEXT NOT NULL,
        received_at_ms BIGINT NOT NULL
    );
    CREATE INDEX deferred_commands_by_order ON deferred_commands (order_id);

    CREATE TABLE shipping_queue (
        order_id   TEXT NOT NULL,
        account    TEXT NOT NULL,
        due_at_ms  BIGINT NOT NULL,
        paid_at_ms BIGINT NOT NULL,
        failover   BIGINT NOT NULL,
        calls_left BIGINT NOT NULL,
        PRIMARY KEY (order_id, account)
    );
    CREATE INDEX shipping_queue_by_account ON shipping_queue (account, paid_at_ms);

    -- Instances announce themselves; one whose row expired is gone.
    CREATE TABLE cluster_instances (
        instance_id TEXT PRIMARY KEY,
        started_at  TIMESTAMPTZ NOT NULL,
        last_seen   TIMESTAMPTZ NOT NULL,
        expires_at  TIMESTAMPTZ NOT NULL
    );

    -- A lease gives `resource` to `owner` until `expires_at`; `epoch` grows
    -- at every change of owner, and every write made for the resource checks
    -- it in its own transaction.
    CREATE TABLE cluster_leases (
        resource    TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        owner       TEXT,
        epoch       BIGINT NOT NULL,
        acquired_at TIMESTAMPTZ NOT NULL,
        expires_at  TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX cluster_leases_by_owner ON cluster_leases (owner);
    ",
    // v2: messages for order actors that run on another instance (SPEC §13).
    "
    -- A message for an order's actor, left by the instance that took the
    -- request for the instance that owns the order's partition, and the
    -- owner's reply. The requester deletes the row when it reads the reply.
    CREATE TABLE cluster_commands (
        id         BIGSERIAL PRIMARY KEY,
        partition  INTEGER NOT NULL,
        order_id   TEXT NOT NULL,
        message    BYTEA NOT NULL, -- sealed (storage::pii): a checkout carries customer data
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        reply      BYTEA,          -- sealed
        replied_at TIMESTAMPTZ
    );
    CREATE INDEX cluster_commands_waiting ON cluster_commands (partition, id) WHERE reply IS NULL;
    ",
    // v3: the console's overview counts the last hour's orders and payments
    // by creation, and its attention page lists the orders that owe a
    // refund: two facts of the snapshot kept beside it, and their indexes.
    "
    ALTER TABLE orders
        ADD COLUMN paid_amount_paise BIGINT,  -- NULL until a payment is recorded
        ADD COLUMN refund_due BOOLEAN NOT NULL DEFAULT false;
    UPDATE orders SET
        paid_amount_paise = CASE WHEN snapshot::jsonb ->> 'payment_id' IS NOT NULL
                                 THEN (snapshot::jsonb ->> 'amount_paise')::bigint END,
        refund_due = coalesce((snapshot::jsonb ->> 'refund_due')::boolean, false);
    CREATE INDEX orders_by_creation ON orders (created_at_ms) INCLUDE (paid_amount_paise);
    CREATE INDEX orders_refund_due ON orders (id) WHERE refund_due;
    ",
];

/// The newest schema this build knows.
pub(super) fn latest() -> u32 {
    MIGRATIONS.len() as u32
}

/// Brings the schema to the latest version; refuses a database that a newer
/// dropshipd migrated past what this one knows.
pub(super) async fn migrate(client: &mut Object) -> Result<u32, StorageError> {
    let tx = client.transaction().await?;
    // The session's lock_timeout is a write's; waiting for another instance's
    // migration may take longer.
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = {}",
        super::MIGRATION_DEADLINE.as_millis()
    ))
    .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current = version_in(&tx).await?;
    if current > latest() {
        return Err(StorageError::SchemaTooNew {
            found: current,
            supported: latest(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&(index as i32 + 1)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(latest())
}

pub(super) async fn current_version(client: &Object) -> Result<u32, StorageError> {
    version_in(client).await
}

async fn version_in(client: &impl deadpool_postgres::GenericClient) -> Result<u32, StorageError> {
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?;
    Ok(row.get::<_, i32>(0) as u32)
}
