//! Durable state: the one module that knows SQL and table names.
//!
//! [`Storage`] is the API the rest of the daemon uses; behind it a backend
//! does the work: `sqlite` (embedded, one instance, group commit) or
//! `postgres` (one database shared by several instances, SPEC §13). The
//! records it takes and gives are the same on both.

mod order_encoding;
mod pii;
pub mod postgres;
mod sqlite;
mod stock_step;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::domain::audit::AuditEntry;
use crate::domain::dead_letter::LetterSource;
use crate::domain::order::{OrderEvent, OrderSnapshot, OrderState};
use crate::domain::shipping::QueueEntry;
use crate::domain::stock::StockLevel;
use sqlite::SqliteStore;

pub use crate::domain::stock::{AllocationStatus, AllocationStep, ProductFacts};
pub use pii::PiiKey;
pub use sqlite::audit::{verify_audit_log, AuditRecord, AuditVerifyError, AuditedAction};
pub use sqlite::lock::lock_path;
pub use sqlite::open_read_only;
pub use sqlite::orders::{
    DeferredCommand, JournalAppend, JournalRow, ListedOrder, MinuteActivity, NewOrder,
    OrderDeadLetter, OrderWrite, StoredOrder,
};
pub use sqlite::shipping::{QueueBacklog, QueueSource, QueuedOrder};
pub use sqlite::stock::{Allocation, StockItem, StockMismatch, StockStep};
pub use sqlite::webhooks::{
    inbox_entries, DeadLetter, DeadLetterView, InboxEntry, IngestCounts, RecordOutcome,
    ReplayableLetter, WebhookRecord,
};
pub use sqlite::writer::WriterStatsSnapshot;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("commit failed: {0}")]
    CommitFailed(String),
    #[error("the storage writer has stopped")]
    WriterStopped,
    #[error("no commit within {0:?}")]
    Timeout(Duration),
    /// No answer in time from a write that may still commit (PostgreSQL: the
    /// transaction runs on after the caller stops waiting). A repeat of the
    /// same request must find out what happened, not assume nothing did.
    #[error("no answer within {0:?}; the write may yet commit")]
    InDoubt(Duration),
    #[error("the caller gave up before the write ran")]
    Abandoned,
    #[error("database schema version {found} is newer than this dropshipd supports ({supported})")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("cannot create the database folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the storage writer thread: {0}")]
    Thread(std::io::Error),
    #[error(
        "another dropshipd{} is running on {database}: it holds {lock}; stop it first (one daemon per SQLite file)",
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    InUse {
        database: PathBuf,
        lock: PathBuf,
        holder: Option<u32>,
    },
    #[error("cannot lock the database with {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored data does not decode: {0}")]
    Encoding(String),
    #[error("a storage reader task failed: {0}")]
    Reader(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("storage.postgres_url is not a PostgreSQL URL: {0}")]
    PostgresUrl(String),
    #[error("the lease on {resource} (epoch {epoch}) is no longer this instance's")]
    LeaseLost { resource: String, epoch: i64 },
    /// The database refused a stock change against the level it holds now
    /// (PostgreSQL, where other instances change the same SKUs).
    #[error("stock of {sku}: {error}")]
    StockRefused {
        sku: String,
        error: crate::domain::stock::StockError,
    },
}

/// How to open the database.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub path: PathBuf,
    /// How long a write may wait for SQLite's lock before it fails.
    pub busy_timeout: Duration,
    /// Most writes that share one commit. 1 turns group commit off (for
    /// measuring what it buys); the default suits everything else.
    pub max_batch: usize,
    /// Encrypts customer data at rest (SPEC §10).
    pub pii_key: PiiKey,
}

impl StorageOptions {
    pub fn new(path: PathBuf, busy_timeout: Duration, pii_key: PiiKey) -> Self {
        Self {
            path,
            busy_timeout,
            max_batch: sqlite::writer::DEFAULT_MAX_BATCH,
            pii_key,
        }
    }
}

/// A cheap, cloneable handle to the daemon's durable state, whichever
/// backend holds it.
#[derive(Clone)]
pub struct Storage {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(postgres::PgStore),
}

/// Calls the same method on whichever backend is in use.
macro_rules! on_backend {
    ($self:ident, $db:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($db) => $call,
            Backend::Postgres($db) => $call,
        }
    };
}

impl Storage {
    /// Opens (creating if needed) and migrates the SQLite database, then
    /// starts its writer thread. Blocking: call before serving, or from a
    /// blocking task.
    pub fn open(options: &StorageOptions) -> Result<Self, StorageError> {
        Ok(Self {
            backend: Backend::Sqlite(SqliteStore::open(options)?),
        })
    }

    /// Connects to the shared PostgreSQL database and brings its schema to
    /// the latest version (SPEC §13).
    pub async fn open_postgres(options: &postgres::PgOptions) -> Result<Self, StorageError> {
        Ok(Self {
            backend: Backend::Postgres(postgres::PgStore::connect(options).await?),
        })
    }

    /// The PostgreSQL store behind this handle, for the cluster's leases.
    pub fn postgres(&self) -> Option<&postgres::PgStore> {
        match &self.backend {
            Backend::Postgres(db) => Some(db),
            Backend::Sqlite(_) => None,
        }
    }

    /// Lets another daemon open the SQLite file: at the end of an orderly
    /// stop, once nothing is left to write. (Instances share PostgreSQL.)
    pub fn release(&self) {
        if let Backend::Sqlite(db) = &self.backend {
            db.release();
        }
    }

    /// The group-commit writer's figures (SQLite only: PostgreSQL commits
    /// each transaction on its own connection).
    pub fn writer_stats(&self) -> Option<WriterStatsSnapshot> {
        match &self.backend {
            Backend::Sqlite(db) => Some(db.writer_stats()),
            Backend::Postgres(_) => None,
        }
    }

    /// True when a write commits right now: readiness means "a webhook would be
    /// accepted", which only an actual commit proves.
    pub async fn probe_writable(&self, now_ms: i64) -> Result<(), StorageError> {
        on_backend!(self, db => db.probe_writable(now_ms).await)
    }

    /// Stores a delivery unless its dedup key was seen before. The receipt and the
    /// record commit together, so the first delivery wins even across restarts.
    pub async fn record_webhook(
        &self,
        record: WebhookRecord,
    ) -> Result<RecordOutcome, StorageError> {
        on_backend!(self, db => db.record_webhook(record).await)
    }

    /// Unprocessed inbox entries after `after_id`, oldest first, bodies opened.
    pub async fn pending_inbox(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<InboxEntry>, StorageError> {
        on_backend!(self, db => db.pending_inbox(after_id, limit).await)
    }

    /// An open or resolved dead letter with what a replay needs: its own body,
    /// or the inbox entry it was filed for (bodies opened).
    pub async fn dead_letter_for_replay(
        &self,
        id: i64,
    ) -> Result<Option<ReplayableLetter>, StorageError> {
        on_backend!(self, db => db.dead_letter_for_replay(id).await)
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
        on_backend!(self, db => db.record_replay(id, outcome, resolved, at_ms, audit).await)
    }

    /// Open dead letters, newest first; `before` is the cursor from the last page.
    pub async fn dead_letters(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeadLetterView>, StorageError> {
        on_backend!(self, db => db.dead_letters(before, limit).await)
    }

    pub async fn ingest_counts(&self) -> Result<IngestCounts, StorageError> {
        on_backend!(self, db => db.ingest_counts().await)
    }

    /// Inserts a new order with its first journal entries and its stock
    /// steps (each flagged applied or already done). `Ok(None)` when an order
    /// with that id exists already: then nothing is written.
    pub async fn insert_order(&self, order: NewOrder) -> Result<Option<Vec<bool>>, StorageError> {
        on_backend!(self, db => db.insert_order(order).await)
    }

    /// Commits an order change: journal rows, the snapshot, the inbox entry,
    /// its queue rows and stock steps (each flagged applied or already done).
    pub async fn commit_order(&self, write: OrderWrite) -> Result<Vec<bool>, StorageError> {
        on_backend!(self, db => db.commit_order(write).await)
    }

    /// Completes an inbox entry that changes no order, filing a dead letter if given.
    pub async fn finish_inbox_entry(
        &self,
        inbox_id: i64,
        dead_letter: Option<OrderDeadLetter>,
        at_ms: i64,
    ) -> Result<(), StorageError> {
        on_backend!(self, db => db.finish_inbox_entry(inbox_id, dead_letter, at_ms).await)
    }

    /// Files a dead letter on its own (a problem with no inbox entry behind it).
    pub async fn file_dead_letter(
        &self,
        source: LetterSource,
        letter: OrderDeadLetter,
        at_ms: i64,
    ) -> Result<(), StorageError> {
        on_backend!(self, db => db.file_dead_letter(source, letter, at_ms).await)
    }

    /// Stores a command to run when processing resumes (the kill switch is on).
    pub async fn defer_command(&self, command: DeferredCommand) -> Result<i64, StorageError> {
        on_backend!(self, db => db.defer_command(command).await)
    }

    /// Deferred commands, oldest first.
    pub async fn deferred_commands(
        &self,
        limit: u32,
    ) -> Result<Vec<DeferredCommand>, StorageError> {
        on_backend!(self, db => db.deferred_commands(limit).await)
    }

    /// Removes a deferred command once its order has dealt with it.
    pub async fn finish_deferred(&self, id: i64) -> Result<(), StorageError> {
        on_backend!(self, db => db.finish_deferred(id).await)
    }

    /// An order's snapshot alone: for views that show no customer data, so
    /// nothing is decrypted.
    pub async fn load_snapshot(
        &self,
        order_id: &str,
    ) -> Result<Option<OrderSnapshot>, StorageError> {
        on_backend!(self, db => db.load_snapshot(order_id).await)
    }

    pub async fn load_order(&self, order_id: &str) -> Result<Option<StoredOrder>, StorageError> {
        on_backend!(self, db => db.load_order(order_id).await)
    }

    pub async fn order_id_for_razorpay(
        &self,
        razorpay_order_id: &str,
    ) -> Result<Option<String>, StorageError> {
        on_backend!(self, db => db.order_id_for_razorpay(razorpay_order_id).await)
    }

    /// An order and its journal as of one moment: both are read in one
    /// transaction, so the journal ends exactly at the snapshot's version even
    /// while the order's actor keeps writing.
    pub async fn order_with_journal(
        &self,
        order_id: &str,
    ) -> Result<Option<(StoredOrder, Vec<JournalRow>)>, StorageError> {
        on_backend!(self, db => db.order_with_journal(order_id).await)
    }

    /// An order's stored snapshot and its journal as events, oldest first: what
    /// a replay check compares (`domain::order::replay` over the events must
    /// give the snapshot).
    pub async fn order_history(
        &self,
        order_id: &str,
    ) -> Result<Option<(OrderSnapshot, Vec<(OrderEvent, i64)>)>, StorageError> {
        let Some((stored, journal)) = self.order_with_journal(order_id).await? else {
            return Ok(None);
        };
        let events = journal
            .into_iter()
            .map(|row| {
                serde_json::from_value::<OrderEvent>(row.data)
                    .map(|event| (event, row.at_ms))
                    .map_err(|e| StorageError::Encoding(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((stored.snapshot, events)))
    }

    /// Orders newest first, optionally in one state; `before` is the cursor.
    /// Snapshots only: a listing shows no customer data, so none is decrypted.
    pub async fn list_orders(
        &self,
        state: Option<OrderState>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ListedOrder>, StorageError> {
        on_backend!(self, db => db.list_orders(state, before, limit).await)
    }

    /// The orders created since `since_ms`, by minute of creation, oldest first.
    pub async fn activity_since(&self, since_ms: i64) -> Result<Vec<MinuteActivity>, StorageError> {
        on_backend!(self, db => db.activity_since(since_ms).await)
    }

    /// Orders that owe a refund, newest first; `before` is the cursor.
    pub async fn list_refund_due(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ListedOrder>, StorageError> {
        on_backend!(self, db => db.list_refund_due(before, limit).await)
    }

    /// How many orders are in each state (every state present, zeros too).
    pub async fn order_counts(&self) -> Result<BTreeMap<OrderState, u64>, StorageError> {
        on_backend!(self, db => db.order_counts().await)
    }

    /// Orders whose reservation ended at or before `now_ms`.
    pub async fn reservations_ended(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        on_backend!(self, db => db.reservations_ended(now_ms, limit).await)
    }

    /// Unpaid orders registered at or before `created_before_ms`, with their
    /// Razorpay order ids, for payment reconciliation.
    pub async fn unpaid_orders(
        &self,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StorageError> {
        on_backend!(self, db => db.unpaid_orders(created_before_ms, limit).await)
    }

    /// The order that shipped under `awb`.
    pub async fn order_id_for_awb(&self, awb: &str) -> Result<Option<String>, StorageError> {
        on_backend!(self, db => db.order_id_for_awb(awb).await)
    }

    /// Every order in `state` (for bulk operator actions), oldest first.
    pub async fn order_ids_in_state(
        &self,
        state: OrderState,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        on_backend!(self, db => db.order_ids_in_state(state, limit).await)
    }

    /// Orders whose stock allocations may lag their state after a crash: any
    /// order with a `held` allocation that no longer holds, or a cancelled order
    /// with an unshipped sale.
    pub async fn orders_needing_stock_repair(&self) -> Result<Vec<String>, StorageError> {
        on_backend!(self, db => db.orders_needing_stock_repair().await)
    }

    /// Applies a step; `false` when its allocation move had already happened.
    pub async fn apply_stock_step(&self, step: StockStep) -> Result<bool, StorageError> {
        on_backend!(self, db => db.apply_stock_step(step).await)
    }

    /// Applies `steps` in one commit, each flagged as applied or already done.
    pub async fn apply_stock_steps(
        &self,
        steps: Vec<StockStep>,
    ) -> Result<Vec<bool>, StorageError> {
        on_backend!(self, db => db.apply_stock_steps(steps).await)
    }

    /// An operator's stock change: the steps, the product facts given with
    /// them and the action's audit entry, in one commit.
    pub async fn apply_operator_steps(
        &self,
        steps: Vec<StockStep>,
        facts: Option<(String, ProductFacts)>,
        audit: Option<AuditedAction>,
    ) -> Result<Vec<bool>, StorageError> {
        on_backend!(self, db => db.apply_operator_steps(steps, facts, audit).await)
    }

    /// The levels of `skus` as committed now.
    pub async fn stock_levels_of(
        &self,
        skus: Vec<String>,
    ) -> Result<Vec<(String, StockLevel)>, StorageError> {
        on_backend!(self, db => db.stock_levels_of(skus).await)
    }

    /// Every SKU's level, for the shards to start from.
    pub async fn stock_levels(&self) -> Result<Vec<(String, StockLevel)>, StorageError> {
        on_backend!(self, db => db.stock_levels().await)
    }

    pub async fn stock_item(&self, sku: &str) -> Result<Option<StockItem>, StorageError> {
        on_backend!(self, db => db.stock_item(sku).await)
    }

    /// Records product facts; absent fields keep their stored value.
    pub async fn set_product_facts(
        &self,
        sku: &str,
        facts: ProductFacts,
    ) -> Result<(), StorageError> {
        on_backend!(self, db => db.set_product_facts(sku, facts).await)
    }

    /// The status of one order's allocation of one SKU, if it has one.
    pub async fn allocation_status(
        &self,
        order_id: &str,
        sku: &str,
    ) -> Result<Option<AllocationStatus>, StorageError> {
        on_backend!(self, db => db.allocation_status(order_id, sku).await)
    }

    pub async fn allocations(&self, order_id: &str) -> Result<Vec<Allocation>, StorageError> {
        on_backend!(self, db => db.allocations(order_id).await)
    }

    /// Levels that differ from the sums of their ledgers: `(checked, mismatches)`.
    pub async fn reconcile_stock(&self) -> Result<(u64, Vec<StockMismatch>), StorageError> {
        on_backend!(self, db => db.reconcile_stock().await)
    }

    /// The cached token of `account` and when it was issued.
    pub async fn shiprocket_token(
        &self,
        account: &str,
    ) -> Result<Option<(String, i64)>, StorageError> {
        on_backend!(self, db => db.shiprocket_token(account).await)
    }

    pub async fn save_shiprocket_token(
        &self,
        account: &str,
        token: &str,
        issued_at_ms: i64,
    ) -> Result<(), StorageError> {
        on_backend!(self, db => db.save_shiprocket_token(account, token, issued_at_ms).await)
    }

    /// Up to `limit` orders with work due at `now_ms` from `sources`, oldest
    /// paid first (an order listed by two sources appears once).
    pub async fn shipping_due(
        &self,
        sources: Vec<QueueSource>,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<QueuedOrder>, StorageError> {
        on_backend!(self, db => db.shipping_due(sources, now_ms, limit).await)
    }

    /// Orders on their way to `ready_to_ship` with a call due at `now_ms` on
    /// any account: what manual mode hands to operators.
    pub async fn shipments_due(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        on_backend!(self, db => db.shipments_due(now_ms, limit).await)
    }

    /// The queue's size per account: orders, calls left, the oldest payment.
    pub async fn shipping_backlog(&self) -> Result<Vec<QueueBacklog>, StorageError> {
        on_backend!(self, db => db.shipping_backlog().await)
    }

    /// An order's queue rows as stored, for checks that they follow its snapshot.
    pub async fn queue_rows(&self, order_id: &str) -> Result<Vec<QueueEntry>, StorageError> {
        on_backend!(self, db => db.queue_rows(order_id).await)
    }

    /// Records an admin action (or any entry not tied to another write).
    pub async fn append_audit(&self, record: AuditRecord) -> Result<i64, StorageError> {
        on_backend!(self, db => db.append_audit(record).await)
    }

    /// Records an admin action that changed nothing (the order was already
    /// where it was asked to go), marking it committed.
    pub async fn record_action(&self, action: &AuditedAction) -> Result<(), StorageError> {
        self.append_audit(action.record.clone()).await?;
        action.committed();
        Ok(())
    }

    /// Entries after sequence number `after`, oldest first.
    pub async fn audit_entries(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StorageError> {
        on_backend!(self, db => db.audit_entries(after, limit).await)
    }

    /// Audit entries newest first, below `before` (the newest when `None`).
    pub async fn audit_entries_newest(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StorageError> {
        on_backend!(self, db => db.audit_entries_newest(before, limit).await)
    }

    /// The kill switch as an operator last set it, if ever.
    pub async fn processing_paused(&self) -> Result<Option<bool>, StorageError> {
        on_backend!(self, db => db.processing_paused().await)
    }

    /// Sets the kill switch; `audit` is the operator's action, committed with it.
    pub async fn set_processing_paused(
        &self,
        paused: bool,
        audit: Option<AuditedAction>,
    ) -> Result<(), StorageError> {
        on_backend!(self, db => db.set_processing_paused(paused, audit).await)
    }

    /// The shipping mode as an operator last set it: `Some(true)` for manual.
    pub async fn shipping_manual(&self) -> Result<Option<bool>, StorageError> {
        on_backend!(self, db => db.shipping_manual().await)
    }

    /// Sets the shipping mode; `audit` is the operator's action, committed with it.
    pub async fn set_shipping_manual(
        &self,
        manual: bool,
        audit: Option<AuditedAction>,
    ) -> Result<(), StorageError> {
        on_backend!(self, db => db.set_shipping_manual(manual, audit).await)
    }
}
