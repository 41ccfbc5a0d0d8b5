//! Read-only connections for queries, reused across calls. WAL lets them read a
//! consistent snapshot while the writer commits.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::Connection;

use super::{open_read_only, StorageError};

/// Idle connections kept for reuse; more may be open briefly under load.
const KEEP_IDLE: usize = 4;

pub(super) struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(super) fn new(path: PathBuf, busy_timeout: Duration) -> Self {
        Self {
            path,
            busy_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `op` on an idle connection, opening one if none is free. Blocking.
    pub(super) fn with<T>(
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
            if idle.len() < KEEP_IDLE {
                idle.push(conn);
            }
        }
        result
    }
}
