//! The SQLite backend: one file, one daemon. One write connection owned by
//! the group-commit `writer` thread, a bounded set of read-only connections
//! for queries (`readers`), versioned `migrations` run at open, and one file
//! per kind of record. WAL mode lets readers run beside the writer, and
//! every commit is durable before anyone is told it happened: the WAL is
//! flushed after each batch (`flush`), or by SQLite itself (`synchronous=FULL`)
//! where it cannot be.

pub(super) mod audit;
mod checkpoint;
mod daemon_state;
mod flush;
pub(super) mod lock;
mod migrations;
pub(super) mod orders;
mod readers;
pub(super) mod shipping;
pub(super) mod stock;
pub(super) mod webhooks;
pub(super) mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::pii;
use super::{AuditedAction, StorageError, StorageOptions, WriterStatsSnapshot};
use crate::domain::order::OrderState;

/// A cheap, cloneable handle to the SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: writer::Writer,
    readers: Arc<readers::Readers>,
    pii: Arc<pii::PiiCipher>,
    /// Held until [`Storage::release`] or the process ends.
    lock: std::sync::Mutex<Option<lock::DatabaseLock>>,
}

impl SqliteStore {
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
        // commit, so an acknowledged webhook survives power loss, not just a crash
        // (until `flush_wal_apart` moves that fsync off the writer's path).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Jobs run in savepoints; keep their sub-journal in memory, not a temp file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // The writer's page cache is kept small on purpose. When a B-tree
        // balance reorders its new pages, SQLite parks one under the lock
        // page's number (1 GiB in), and the commit's cache truncation then
        // walks the cache's whole hash table: its cost grows with the cache.
        // At 64 MiB that walk was 2-3% of the daemon's CPU in the ingest and
        // end-to-end benches. The pages the writer revisits (index right
        // edges, hot rows) fit in 4 MiB, and a miss is a read from the OS's
        // page cache.
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        // A burst's WAL is cut back to this once it starts over.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        plan_once(&conn)?;
        migrations::migrate(&mut conn)?;
        let checkpointing = Connection::open(&options.path)?;
        checkpointing.busy_timeout(options.busy_timeout)?;
        plan_once(&checkpointing)?;
        let checkpoints =
            checkpoint::Checkpoints::start(&conn, checkpointing, checkpoint::RESTART_FRAMES)
                .map_err(StorageError::Thread)?;
        let flush = flush_wal_apart(&conn, &options.path)?;
        // The reply deadline covers a full busy wait plus the batch queued ahead.
        let (writer, _thread) = writer::Writer::spawn(
            conn,
            options.busy_timeout * 2,
            options.max_batch,
            audit::record_head,
            Some(checkpoints),
            flush,
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

    /// [`SqliteStore::write`] for an operation that may run twice (an `Fn` whose
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

/// Moves the WAL's fsync out of the writer's commits to a thread of its own
/// (see `flush`): the commits write the WAL with `synchronous=NORMAL`, and
/// the thread flushes it before their callers hear. Without a WAL file to
/// flush, the writer keeps `synchronous=FULL` and SQLite flushes in each commit.
fn flush_wal_apart(
    conn: &Connection,
    database: &Path,
) -> Result<Option<flush::WalFlush>, StorageError> {
    let mut wal_path = database.as_os_str().to_owned();
    wal_path.push("-wal");
    // The file SQLite's connections keep open: it is truncated but never
    // removed while the writer's connection lives, so this handle stays its.
    let wal = match std::fs::OpenOptions::new().write(true).open(&wal_path) {
        Ok(wal) => wal,
        Err(e) => {
            tracing::warn!(path = %Path::new(&wal_path).display(), error = %e,
                "cannot open the WAL file; each commit flushes it itself");
            return Ok(None);
        }
    };
    let flush = flush::WalFlush::start(move || wal.sync_data()).map_err(StorageError::Thread)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(Some(flush))
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

/// The writer's page cache, in `PRAGMA cache_size` terms (negative: KiB).
const WRITER_CACHE_KIB: i64 = -4096;

/// Read-only access to a database file another process owns, for tools and
/// tests that inspect what a daemon left behind.
pub fn open_read_only(path: &Path) -> Result<Connection, StorageError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    plan_once(&conn)?;
    Ok(conn)
}

/// Has `conn` plan each prepared statement once, not again for new bound
/// values. Without this (SQLite's query planner stability guarantee off), a
/// statement whose plan could depend on a bound value (a `LIMIT ?`, a
/// parameter compared with a partial index's condition) is marked expired by
/// every bind and parsed and planned again at its next step: the inbox
/// dispatcher's read did so at each run, about 2% of the daemon's CPU in the
/// end-to-end bench. Nothing here gains from plans per value: there are no
/// `ANALYZE` statistics to choose with.
fn plan_once(conn: &Connection) -> Result<(), StorageError> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

/// Storage on a new file in a temporary folder (kept while the folder lives),
/// for the backend's unit tests.
#[cfg(test)]
fn fresh_storage() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStore::open(&StorageOptions::new(
        dir.path().join("db.sqlite"),
        std::time::Duration::from_secs(5),
        crate::storage::PiiKey::from_bytes([7; 32]),
    ))
    .unwrap();
    (storage, dir)
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

    #[test]
    fn a_migrated_database_has_its_wal_flushed_apart_from_the_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        migrations::migrate(&mut conn).unwrap();
        let flush = flush_wal_apart(&conn, &path).unwrap();
        assert!(flush.is_some(), "the WAL file exists once migrated");
        let level: i64 = conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .unwrap();
        assert_eq!(level, 1, "NORMAL: commits leave the flush to the thread");
    }

    #[test]
    fn without_a_wal_file_each_commit_flushes_itself() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open_in_memory().unwrap();
        let flush = flush_wal_apart(&conn, &dir.path().join("absent.db")).unwrap();
        assert!(flush.is_none());
        let level: i64 = conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .unwrap();
        assert_eq!(level, 2, "FULL stays");
    }
}
