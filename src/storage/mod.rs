//! Durable state in SQLite: the one module that knows SQL and table names.
//!
//! Layout: one write connection owned by the group-commit `writer` thread, a
//! small pool of read-only connections for queries (`readers`), versioned
//! `migrations` run at open, and one file per kind of record (webhooks for
//! now). WAL mode lets readers run beside the writer; `synchronous=FULL` makes
//! every commit durable before anyone is told it happened.

mod audit;
mod checkpoint;
mod daemon_state;
mod lock;
mod migrations;
mod orders;
mod pii;
pub mod postgres;
mod readers;
mod shipping;
mod stock;
mod webhooks;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::domain::order::OrderState;
use rusqlite::{Connection, OpenFlags};

pub use crate::domain::stock::{AllocationStatus, AllocationStep, ProductFacts};
pub use audit::{verify_audit_log, AuditRecord, AuditVerifyError, AuditedAction};
pub use lock::lock_path;
pub use orders::{
    DeferredCommand, JournalAppend, JournalRow, ListedOrder, NewOrder, OrderDeadLetter, OrderWrite,
    StoredOrder,
};
pub use pii::PiiKey;
pub use shipping::{QueueBacklog, QueueSource, QueuedOrder};
pub use stock::{Allocation, StockItem, StockMismatch, StockStep};
pub use webhooks::{
    inbox_entries, DeadLetter, DeadLetterView, InboxEntry, IngestCounts, RecordOutcome,
    ReplayableLetter, WebhookRecord,
};
pub use writer::WriterStatsSnapshot;

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
}

/// A cheap, cloneable handle to the database.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    writer: writer::Writer,
    readers: Arc<readers::Readers>,
    pii: Arc<pii::PiiCipher>,
    path: PathBuf,
    /// Held until [`Storage::release`] or the process ends.
    lock: std::sync::Mutex<Option<lock::DatabaseLock>>,
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
            max_batch: writer::DEFAULT_MAX_BATCH,
            pii_key,
        }
    }
}

impl Storage {
    /// Opens (creating if needed) and migrates the database, then starts the
    /// writer thread. Blocking: call before serving, or from a blocking task.
    pub fn open(options: &StorageOptions) -> Result<Self, StorageError> {
        if let Some(folder) = options.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(|source| StorageError::Folder {
                path: folder.to_path_buf(),
                source,
            })?;
        }
        let lock = lock::DatabaseLock::acquire(&options.path)?;
        let mut conn = Connection::open(&options.path)?;
        conn.busy_timeout(options.busy_timeout)?;
        // WAL: readers never block the writer. FULL: the WAL is fsynced at every
        // commit, so an acknowledged webhook survives power loss, not just a crash.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Jobs run in savepoints; keep their sub-journal in memory, not a temp file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // The writer revisits the same index pages batch after batch; 64 MiB keeps
        // them parsed in SQLite's cache instead of re-reading them from the OS.
        conn.pragma_update(None, "cache_size", -65_536)?;
        // A burst's WAL is cut back to this once it starts over.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        migrations::migrate(&mut conn)?;
        let checkpointing = Connection::open(&options.path)?;
        checkpointing.busy_timeout(options.busy_timeout)?;
        let checkpoints =
            checkpoint::Checkpoints::start(&conn, checkpointing, checkpoint::RESTART_FRAMES)
                .map_err(StorageError::Thread)?;
        // The reply deadline covers a full busy wait plus the batch queued ahead.
        let (writer, _thread) = writer::Writer::spawn(
            conn,
            options.busy_timeout * 2,
            options.max_batch,
            audit::record_head,
            Some(checkpoints),
        )
        .map_err(StorageError::Thread)?;
        let readers = Arc::new(readers::Readers::new(
            options.path.clone(),
            options.busy_timeout,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                writer,
                readers,
                pii: Arc::new(pii::PiiCipher::new(&options.pii_key)),
                path: options.path.clone(),
                lock: std::sync::Mutex::new(Some(lock)),
            }),
        })
    }

    /// Lets another daemon open the file: at the end of an orderly stop,
    /// once the writer has nothing left to do.
    pub fn release(&self) {
        if let Ok(mut lock) = self.inner.lock.lock() {
            lock.take();
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn writer_stats(&self) -> WriterStatsSnapshot {
        self.inner.writer.stats()
    }

    /// True when a write commits right now: readiness means "a webhook would be
    /// accepted", which only an actual commit proves.
    pub async fn probe_writable(&self, now_ms: i64) -> Result<(), StorageError> {
        if !self.inner.writer.is_running() {
            return Err(StorageError::WriterStopped);
        }
        self.write(move |conn| daemon_state::put(conn, "ready_probe_at_ms", &now_ms.to_string()))
            .await
    }

    fn pii(&self) -> Arc<pii::PiiCipher> {
        Arc::clone(&self.inner.pii)
    }

    async fn write<T, F>(&self, op: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        self.inner.writer.run(op).await
    }

    /// [`Storage::write`] for an operation that may run twice (an `Fn` whose
    /// effects are all in the database): it shares a savepoint with the
    /// writes beside it. For the hottest writes.
    async fn write_repeatable<T, F>(&self, op: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        self.inner.writer.run_repeatable(op).await
    }

    async fn read<T, F>(&self, op: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        Arc::clone(&self.inner.readers).run(op).await
    }
}

/// The states `holds` is true of, as an SQL list (`'paid', 'shipped'`): the
/// domain says which states a query is about, so a new state cannot be missed.
fn states_where(holds: fn(OrderState) -> bool) -> String {
    OrderState::ALL
        .into_iter()
        .filter(|s| holds(*s))
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A column holding text or bytes (sealed values are blobs, older ones text).
fn bytes_at(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Vec<u8>> {
    use rusqlite::types::ValueRef;
    match row.get_ref(index)? {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Ok(bytes.to_vec()),
        ValueRef::Null => Ok(Vec::new()),
        other => Err(rusqlite::Error::InvalidColumnType(
            index,
            "customer data".into(),
            other.data_type(),
        )),
    }
}

/// Prepared statements a connection keeps: more than storage has distinct
/// statements. With rusqlite's default of 16 the writer evicted and parsed
/// its SQL again on an order's path (about 6% of its CPU).
const STATEMENT_CACHE: usize = 256;

/// Read-only access to a database file another process owns, for tools and
/// tests that inspect what a daemon left behind.
pub fn open_read_only(path: &Path) -> Result<Connection, StorageError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lists_are_the_states_the_domain_names() {
        assert_eq!(
            states_where(OrderState::holds_reservation),
            "'pending_payment', 'payment_failed'"
        );
        assert_eq!(
            states_where(OrderState::is_being_shipped),
            "'awaiting_shipment', 'shipment_created'"
        );
        assert_eq!(states_where(|_| false), "");
    }
}
