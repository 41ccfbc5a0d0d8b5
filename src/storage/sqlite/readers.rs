//! Read-only connections for queries, reused across calls. WAL lets them read a
//! consistent snapshot while the writer commits.
//!
//! At most [`MAX_READERS`] reads run at once and every connection opened is
//! kept: opening one costs a parse of the whole schema, and under a burst an
//! unbounded pool that kept only a few idle connections spent a tenth of the
//! daemon's CPU opening and closing them. Reads past the bound wait their turn
//! without holding a thread.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::{open_read_only, StorageError};

/// Reads in progress at once, and so connections open at most. Reads are
/// short (indexed lookups in a warm cache); more of them at once than this
/// would only queue on the two cores and on SQLite's shared page locks.
const MAX_READERS: usize = 16;

pub(super) struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    turns: Arc<Semaphore>,
}

impl Readers {
    pub(super) fn new(path: PathBuf, busy_timeout: Duration) -> Self {
        Self {
            path,
            busy_timeout,
            idle: Mutex::new(Vec::new()),
            turns: Arc::new(Semaphore::new(MAX_READERS)),
        }
    }

    /// Runs `op` on a blocking thread once a read turn is free.
    pub(super) async fn run<T, F>(self: Arc<Self>, op: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let turn = Arc::clone(&self.turns)
            .acquire_owned()
            .await
            .map_err(|e| StorageError::Reader(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let result = self.with(op);
            drop(turn);
            result
        })
        .await
        .map_err(|e| StorageError::Reader(e.to_string()))?
    }

    /// Runs `op` on an idle connection, opening one if none is free. Blocking;
    /// the caller holds a read turn, so at most `MAX_READERS` connections exist.
    fn with<T>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let reused = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        let conn = match reused {
            Some(conn) => conn,
            None => {
                let conn = open_read_only(&self.path)?;
                conn.busy_timeout(self.busy_timeout)?;
                conn
            }
        };
        let result = op(&conn);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_reads_at_once_share_a_bounded_set_of_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "PRAGMA journal_mode=WAL; CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (7);",
            )
            .unwrap();
        let readers = Arc::new(Readers::new(path, Duration::from_secs(1)));
        let reads: Vec<_> = (0..200)
            .map(|_| {
                let readers = Arc::clone(&readers);
                tokio::spawn(readers.run(|conn| {
                    // Long enough that reads overlap and contend for turns.
                    std::thread::sleep(Duration::from_millis(2));
                    Ok(conn.query_row("SELECT v FROM t", [], |row| row.get::<_, i64>(0))?)
                }))
            })
            .collect();
        for read in reads {
            assert_eq!(read.await.unwrap().unwrap(), 7);
        }
        let opened = readers.idle.lock().unwrap().len();
        assert!(
            (1..=MAX_READERS).contains(&opened),
            "{opened} connections for 200 overlapping reads"
        );
    }
}
