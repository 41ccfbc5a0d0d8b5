//! WAL checkpoints off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its
//! threshold: the writer copies megabytes into the database file and fsyncs it
//! while every caller of the next batch waits. Under a burst that was a fifth of
//! the writer's time. Here a thread of its own does the copying with `PASSIVE`
//! checkpoints (which never block the writer) after the writer nudges it.
//!
//! A passive checkpoint alone never lets the WAL shrink under steady load: the
//! file restarts from its beginning only when a write transaction begins with
//! every frame already copied, and the writer keeps adding frames. So once the
//! WAL is long, the writer itself runs one passive checkpoint between batches,
//! when nothing can be appended meanwhile; it copies only the few frames the
//! thread has not, and the next transaction starts the WAL over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

/// WAL frames (pages, 32 MiB) past which the writer finishes a checkpoint itself.
pub(super) const RESTART_FRAMES: i64 = 8192;
/// Rest between checkpoints: commits made meanwhile are copied together.
///
/// Kept short on purpose. Each checkpoint ends with an fsync of the database
/// file, and a commit whose WAL fsync runs meanwhile waits for the disk to
/// flush whatever that checkpoint copied. At 20 ms a checkpoint carried a
/// megabyte or more, its fsync took 10–50 ms, and every commit that took over
/// 10 ms overlapped one: those stalls were the webhook ack's p99. Copying every
/// 2 ms keeps each flush small.
const PACE: Duration = Duration::from_millis(2);

/// Runs `PRAGMA wal_checkpoint(PASSIVE)` on `conn`; the frames now in the WAL.
fn passive(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}

/// The writer's side: nudges the thread after commits, and learns when to finish a checkpoint.
pub(super) struct Checkpoints {
    nudge: SyncSender<()>,
    finish_due: Arc<AtomicBool>,
}

impl Checkpoints {
    /// Turns off SQLite's automatic checkpoint on `writer` and starts the
    /// checkpoint thread on `conn`, a second read-write connection to the file.
    /// Past `restart_frames` frames the writer finishes a checkpoint itself.
    pub(super) fn start(
        writer: &Connection,
        conn: Connection,
        restart_frames: i64,
    ) -> std::io::Result<Self> {
        let (nudge, nudged) = mpsc::sync_channel(1);
        let finish_due = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&finish_due);
        std::thread::Builder::new()
            .name("storage-checkpoint".into())
            .spawn(move || run(&conn, &nudged, &flag, restart_frames))?;
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(std::io::Error::other)?;
        Ok(Self { nudge, finish_due })
    }

    /// Called by the writer after every batch, outside any transaction.
    pub(super) fn after_batch(&self, writer: &Connection) {
        match self.nudge.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            // The thread is gone (it logged why): checkpoint as SQLite would.
            Err(TrySendError::Disconnected(())) => {
                self.finish_due.store(true, Ordering::Relaxed);
            }
        }
        if self.finish_due.swap(false, Ordering::Relaxed) {
            if let Err(e) = passive(writer) {
                tracing::warn!(error = %e, "checkpoint on the writer failed; will retry");
            }
        }
    }
}

fn run(conn: &Connection, nudged: &Receiver<()>, finish_due: &AtomicBool, restart_frames: i64) {
    // Ends when the writer, and with it the sender, is gone.
    while nudged.recv().is_ok() {
        match passive(conn) {
            Ok(frames) if frames >= restart_frames => {
                finish_due.store(true, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "background checkpoint failed; will retry"),
        }
        std::thread::sleep(PACE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW_BYTES: usize = 3000;

    /// A WAL database whose WAL file is cut back to 1 MiB when it starts over.
    fn wal_db(dir: &std::path::Path) -> (Connection, Connection) {
        let path = dir.join("c.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA journal_size_limit=1048576;
                 CREATE TABLE t (v BLOB);",
            )
            .unwrap();
        (writer, Connection::open(&path).unwrap())
    }

    fn wal_mib(dir: &std::path::Path) -> f64 {
        std::fs::metadata(dir.join("c.db-wal"))
            .map(|m| m.len() as f64 / 1048576.0)
            .unwrap_or(0.0)
    }

    fn insert(conn: &Connection, rows: usize) {
        let blob = vec![7u8; ROW_BYTES];
        conn.execute_batch("BEGIN").unwrap();
        for _ in 0..rows {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [&blob])
                .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn the_writer_no_longer_checkpoints_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, other) = wal_db(dir.path());
        let _checkpoints = Checkpoints::start(&writer, other, 500).unwrap();
        // About 3,000 pages, three times SQLite's automatic threshold.
        for _ in 0..30 {
            insert(&writer, 100);
        }
        assert!(
            wal_mib(dir.path()) > 11.0,
            "an automatic checkpoint started the WAL over: {:.1} MiB",
            wal_mib(dir.path())
        );
    }

    #[test]
    fn under_steady_writes_the_wal_starts_over_once_the_writer_finishes_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, other) = wal_db(dir.path());
        let checkpoints = Checkpoints::start(&writer, other, 500).unwrap();
        // Commits back to back, as in a burst: the thread's checkpoints never
        // catch up with the last frame, so only the writer's own can.
        let mut smallest_later = f64::MAX;
        for i in 0..900 {
            insert(&writer, 5);
            checkpoints.after_batch(&writer);
            if i >= 300 {
                smallest_later = smallest_later.min(wal_mib(dir.path()));
            }
        }
        assert!(
            smallest_later <= 1.5,
            "the WAL never started over: {:.1} MiB now, {smallest_later:.1} at its smallest",
            wal_mib(dir.path())
        );
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 900 * 5);
    }
}
