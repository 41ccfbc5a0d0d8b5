//! The single writer, with group commit.
//!
//! SQLite allows one writer at a time, and with `synchronous=FULL` every commit
//! costs an fsync (milliseconds). Committing each webhook on its own would cap
//! ingest near the disk's fsync rate; instead one thread owns the write
//! connection and, each time it wakes, takes *every* job queued meanwhile, runs
//! them in one transaction (each inside its own savepoint, so one failing job
//! does not sink the others) and commits once. Only after that commit returns
//! does any caller hear back: a caller that is told "done" is durable.
//!
//! No timer batches on purpose: while one commit is in flight the next batch
//! collects by itself, so an idle system commits a lone job at once and a busy
//! one commits hundreds per fsync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::StorageError;

/// Most jobs in one transaction by default; bounds the time a batch holds the write lock.
pub const DEFAULT_MAX_BATCH: usize = 2048;
/// Jobs that may wait for the writer before callers are slowed down.
const QUEUE_CAPACITY: usize = 65_536;

/// A unit of work for the writer: applied inside the batch's transaction, then
/// finished with the batch's commit outcome.
trait WriteJob: Send {
    fn apply(&mut self, conn: &Connection);
    fn finish(self: Box<Self>, commit: Result<(), &str>);
}

struct Pending<T, F> {
    op: Option<F>,
    outcome: Option<Result<T, StorageError>>,
    reply: oneshot::Sender<Result<T, StorageError>>,
}

impl<T, F> WriteJob for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StorageError> + Send,
{
    fn apply(&mut self, conn: &Connection) {
        if self.reply.is_closed() {
            // The caller gave up (timed out and answered 503): doing the work now
            // would store something its sender was told failed.
            return;
        }
        if let Some(op) = self.op.take() {
            self.outcome = Some(in_savepoint(conn, op));
        }
    }

    fn finish(self: Box<Self>, commit: Result<(), &str>) {
        let result = match (commit, self.outcome) {
            (Err(reason), _) => Err(StorageError::CommitFailed(reason.to_owned())),
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(StorageError::Abandoned),
        };
        let _ = self.reply.send(result);
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    op: impl FnOnce(&Connection) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match op(conn) {
        Ok(value) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(value)
        }
        Err(e) => {
            conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Err(e)
        }
    }
}

/// Counters a status page and a benchmark can read.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub commits: AtomicU64,
    pub failed_commits: AtomicU64,
    pub jobs: AtomicU64,
    pub largest_batch: AtomicU64,
}

/// A point-in-time copy of the writer's counters plus the queue depth.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct WriterStatsSnapshot {
    pub commits: u64,
    pub failed_commits: u64,
    pub jobs: u64,
    pub largest_batch: u64,
    pub queued: u64,
}

/// Runs inside every batch's transaction after its jobs, before the commit:
/// bookkeeping that belongs to the commit as a whole (the audit chain's head).
pub(super) type BeforeCommit = fn(&Connection) -> Result<(), StorageError>;

pub(super) struct Writer {
    jobs: mpsc::Sender<Box<dyn WriteJob>>,
    stats: Arc<WriterStats>,
    reply_deadline: Duration,
}

impl Writer {
    /// Starts the writer thread on `conn`. A caller that hears nothing within
    /// `reply_deadline` gets [`StorageError::Timeout`].
    pub(super) fn spawn(
        conn: Connection,
        reply_deadline: Duration,
        max_batch: usize,
        before_commit: BeforeCommit,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        let stats = Arc::new(WriterStats::default());
        let thread_stats = Arc::clone(&stats);
        let handle = std::thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || run(conn, queue, &thread_stats, max_batch.max(1), before_commit))?;
        Ok((
            Self {
                jobs,
                stats,
                reply_deadline,
            },
            handle,
        ))
    }

    /// Runs `op` in the next group commit and returns its result once committed.
    pub(super) async fn run<T, F>(&self, op: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending {
            op: Some(op),
            outcome: None,
            reply,
        });
        let deadline = tokio::time::Instant::now() + self.reply_deadline;
        tokio::time::timeout_at(deadline, self.jobs.send(job))
            .await
            .map_err(|_| StorageError::Timeout(self.reply_deadline))?
            .map_err(|_| StorageError::WriterStopped)?;
        tokio::time::timeout_at(deadline, answer)
            .await
            .map_err(|_| StorageError::Timeout(self.reply_deadline))?
            .map_err(|_| StorageError::WriterStopped)?
    }

    pub(super) fn stats(&self) -> WriterStatsSnapshot {
        WriterStatsSnapshot {
            commits: self.stats.commits.load(Ordering::Relaxed),
            failed_commits: self.stats.failed_commits.load(Ordering::Relaxed),
            jobs: self.stats.jobs.load(Ordering::Relaxed),
            largest_batch: self.stats.largest_batch.load(Ordering::Relaxed),
            queued: (self.jobs.max_capacity() - self.jobs.capacity()) as u64,
        }
    }

    pub(super) fn is_running(&self) -> bool {
        !self.jobs.is_closed()
    }
}

fn run(
    mut conn: Connection,
    mut queue: mpsc::Receiver<Box<dyn WriteJob>>,
    stats: &WriterStats,
    max_batch: usize,
    before_commit: BeforeCommit,
) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(max_batch);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let size = batch.len() as u64;
        let commit = commit_batch(&mut conn, &mut batch, before_commit);
        let counter = if commit.is_ok() {
            &stats.commits
        } else {
            &stats.failed_commits
        };
        counter.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(size, Ordering::Relaxed);
        stats.largest_batch.fetch_max(size, Ordering::Relaxed);
        if let Err(e) = &commit {
            tracing::error!(error = %e, jobs = size, "storage commit failed; callers answered unavailable");
        }
        let commit = commit.as_ref().map(|_| ()).map_err(String::as_str);
        for job in batch.drain(..) {
            job.finish(commit);
        }
    }
}

/// Runs the batch in one transaction; the error is the reason every job failed.
fn commit_batch(
    conn: &mut Connection,
    batch: &mut [Box<dyn WriteJob>],
    before_commit: BeforeCommit,
) -> Result<(), String> {
    let failed = |e: rusqlite::Error| e.to_string();
    // IMMEDIATE takes the write lock up front, so waiting on another process's
    // lock happens here (bounded by busy_timeout) and not halfway through a batch.
    conn.execute_batch("BEGIN IMMEDIATE").map_err(failed)?;
    for job in batch.iter_mut() {
        job.apply(conn);
    }
    if let Err(e) = before_commit(conn) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.to_string());
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(failed(e));
    }
    Ok(())
}
