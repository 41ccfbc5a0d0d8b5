//! The single writer, with group commit.
//!
//! SQLite allows one writer at a time, and with `synchronous=FULL` every commit
//! costs an fsync (milliseconds). Committing each webhook on its own would cap
//! ingest near the disk's fsync rate; instead one thread owns the write
//! connection and, each time it wakes, takes *every* job queued meanwhile, runs
//! them in one transaction (each inside a savepoint, so one failing job does
//! not sink the others; the hot, repeatable writes share one) and commits once. Only after that commit returns
//! does any caller hear back: a caller that is told "done" is durable.
//!
//! No timer batches on purpose: while one commit is in flight the next batch
//! collects by itself, so an idle system commits a lone job at once and a busy
//! one commits hundreds per fsync. With a [`WalFlush`], the fsync itself leaves
//! the writer's path: the writer commits without it, hands the batch over, and
//! applies the next batch while the WAL is flushed; the callers hear after the flush.
//!
//! A caller learns the true outcome. One that stops waiting does so only
//! while its job has not started ([`StorageError::Timeout`] then means "never
//! applied"); once the writer took the job, the caller waits for the commit,
//! which `busy_timeout` bounds. A job error that made SQLite roll the whole
//! transaction back (a full disk) fails the batch at once: nothing after it
//! runs outside the transaction.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::Checkpoints;
use super::flush::WalFlush;
use super::StorageError;

/// Most jobs in one transaction by default; bounds the time a batch holds the write lock.
pub const DEFAULT_MAX_BATCH: usize = 2048;
/// Jobs that may wait for the writer before callers are slowed down.
const QUEUE_CAPACITY: usize = 65_536;

/// A unit of work for the writer: applied inside the batch's transaction, then
/// finished with the batch's commit outcome.
trait WriteJob: Send {
    /// Claims the job for this batch, unless its caller already gave up.
    /// Called once, before the first apply.
    fn claim(&mut self);
    /// Whether the job may be applied again after its work was rolled back,
    /// so that it can share a savepoint with its neighbours.
    fn repeatable(&self) -> bool;
    /// Applies the job in a savepoint of its own: its failure undoes only it.
    fn apply(&mut self, conn: &Connection);
    /// Applies a repeatable job with no savepoint of its own; false when it
    /// failed and the savepoint around it must be rolled back.
    fn apply_shared(&mut self, conn: &Connection) -> bool;
    fn finish(self: Box<Self>, commit: Result<(), &str>);
}

/// Who got to a job first: the writer taking it, or its caller giving up.
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// What every job carries besides its operation: where its outcome goes.
struct Slot<T> {
    outcome: Option<Result<T, StorageError>>,
    reply: oneshot::Sender<Result<T, StorageError>>,
    state: Arc<AtomicU8>,
}

impl<T> Slot<T> {
    /// True when the writer got to the job before its caller gave up (and
    /// answered 503): otherwise storing its work would store what its
    /// sender was told failed.
    fn claim(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn finish(self, commit: Result<(), &str>) {
        let result = match (commit, self.outcome) {
            (Err(reason), _) => Err(StorageError::CommitFailed(reason.to_owned())),
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(StorageError::Abandoned),
        };
        let _ = self.reply.send(result);
    }
}

/// A writer job's operation: run once (an `FnOnce`, always in its own
/// savepoint) or repeatable (an `Fn` whose effects are all in the database),
/// which shares one savepoint with the repeatable jobs beside it and saves
/// two statements and a sub-journal copy of every page it touches. If one of
/// those fails, the shared savepoint is rolled back and each runs again in
/// its own, so a failure still undoes only its own job.
trait Operation<T>: Send {
    const REPEATABLE: bool;
    fn call(&mut self, conn: &Connection) -> Result<T, StorageError>;
}

struct RunOnce<F>(Option<F>);

impl<T, F> Operation<T> for RunOnce<F>
where
    F: FnOnce(&Connection) -> Result<T, StorageError> + Send,
{
    const REPEATABLE: bool = false;

    fn call(&mut self, conn: &Connection) -> Result<T, StorageError> {
        // Never asked twice: a run-once job is never part of a shared savepoint.
        self.0.take().ok_or(StorageError::Abandoned)?(conn)
    }
}

struct RunAgain<F>(F);

impl<T, F> Operation<T> for RunAgain<F>
where
    F: Fn(&Connection) -> Result<T, StorageError> + Send,
{
    const REPEATABLE: bool = true;

    fn call(&mut self, conn: &Connection) -> Result<T, StorageError> {
        (self.0)(conn)
    }
}

struct Job<T, O> {
    /// `None` once its caller gave up.
    op: Option<O>,
    slot: Slot<T>,
}

impl<T, O> WriteJob for Job<T, O>
where
    T: Send,
    O: Operation<T>,
{
    fn claim(&mut self) {
        if !self.slot.claim() {
            self.op = None;
        }
    }

    fn repeatable(&self) -> bool {
        O::REPEATABLE
    }

    fn apply(&mut self, conn: &Connection) {
        if let Some(op) = &mut self.op {
            self.slot.outcome = Some(in_savepoint(conn, |conn| op.call(conn)));
        }
    }

    fn apply_shared(&mut self, conn: &Connection) -> bool {
        let Some(op) = &mut self.op else {
            return true;
        };
        let outcome = op.call(conn);
        let applied = outcome.is_ok();
        self.slot.outcome = Some(outcome);
        applied
    }

    fn finish(self: Box<Self>, commit: Result<(), &str>) {
        self.slot.finish(commit);
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
        checkpoints: Option<Checkpoints>,
        flush: Option<WalFlush>,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        let stats = Arc::new(WriterStats::default());
        let thread_stats = Arc::clone(&stats);
        let handle = std::thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || {
                run(
                    conn,
                    queue,
                    &thread_stats,
                    max_batch.max(1),
                    before_commit,
                    checkpoints,
                    flush,
                )
            })?;
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
        self.run_operation(RunOnce(Some(op))).await
    }

    /// Like [`Writer::run`] for an operation that can run again after a
    /// rollback: the hot, small writes (a webhook's insert), which then share
    /// a savepoint with their neighbours instead of paying for one each.
    pub(super) async fn run_repeatable<T, F>(&self, op: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        self.run_operation(RunAgain(op)).await
    }

    async fn run_operation<T, O>(&self, op: O) -> Result<T, StorageError>
    where
        T: Send + 'static,
        O: Operation<T> + 'static,
    {
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job {
            op: Some(op),
            slot: Slot {
                outcome: None,
                reply,
                state: Arc::clone(&state),
            },
        });
        self.submit(job, answer, state).await
    }

    async fn submit<T>(
        &self,
        job: Box<dyn WriteJob>,
        mut answer: oneshot::Receiver<Result<T, StorageError>>,
        state: Arc<AtomicU8>,
    ) -> Result<T, StorageError> {
        let deadline = tokio::time::Instant::now() + self.reply_deadline;
        // The queue has room nearly always: only a full one costs a timer.
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(StorageError::WriterStopped),
            Err(mpsc::error::TrySendError::Full(job)) => {
                tokio::time::timeout_at(deadline, self.jobs.send(job))
                    .await
                    .map_err(|_| StorageError::Timeout(self.reply_deadline))?
                    .map_err(|_| StorageError::WriterStopped)?;
            }
        }
        match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(outcome) => outcome.map_err(|_| StorageError::WriterStopped)?,
            Err(_) => {
                let gave_up = state
                    .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if gave_up {
                    return Err(StorageError::Timeout(self.reply_deadline));
                }
                // Under way: its commit decides, and the caller must hear which.
                answer.await.map_err(|_| StorageError::WriterStopped)?
            }
        }
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
    checkpoints: Option<Checkpoints>,
    flush: Option<WalFlush>,
) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(max_batch);
    while let Some(first) = queue.blocking_recv() {
        if flush.as_ref().is_some_and(WalFlush::failed) {
            // Dropping the queue answers every caller still in it.
            first.finish(Err("the WAL could not be flushed; the writer stopped"));
            break;
        }
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
        match (&commit, &flush) {
            (Ok(()), Some(flush)) => {
                let jobs = std::mem::take(&mut batch);
                flush.after_commit(Box::new(move |outcome| {
                    for job in jobs {
                        job.finish(outcome);
                    }
                }));
            }
            (Ok(()), None) => {
                for job in batch.drain(..) {
                    job.finish(Ok(()));
                }
            }
            (Err(e), _) => {
                tracing::error!(error = %e, jobs = size, "storage commit failed; callers answered unavailable");
                // A commit that failed left nothing to flush.
                for job in batch.drain(..) {
                    job.finish(Err(e));
                }
            }
        }
        if let Some(checkpoints) = &checkpoints {
            checkpoints.after_batch(&conn);
        }
    }
}

/// Applies a run of repeatable jobs under one savepoint; if any fails, rolls
/// the run back and applies each again in a savepoint of its own.
fn apply_shared(conn: &Connection, run: &mut [Box<dyn WriteJob>]) -> rusqlite::Result<()> {
    conn.prepare_cached("SAVEPOINT jobs")?.execute([])?;
    let mut all_applied = true;
    for job in run.iter_mut() {
        if !job.apply_shared(conn) || conn.is_autocommit() {
            all_applied = false;
            break;
        }
    }
    if conn.is_autocommit() {
        return Ok(()); // the caller fails the batch
    }
    if !all_applied {
        conn.prepare_cached("ROLLBACK TO jobs")?.execute([])?;
        for job in run.iter_mut() {
            job.apply(conn);
            if conn.is_autocommit() {
                break;
            }
        }
        if conn.is_autocommit() {
            return Ok(());
        }
    }
    conn.prepare_cached("RELEASE jobs")?.execute([])?;
    Ok(())
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
        job.claim();
    }
    let mut start = 0;
    while start < batch.len() {
        let end = if batch[start].repeatable() {
            start
                + batch[start..]
                    .iter()
                    .take_while(|job| job.repeatable())
                    .count()
        } else {
            start + 1
        };
        let run = &mut batch[start..end];
        if let [single] = run {
            single.apply(conn);
        } else {
            if let Err(e) = apply_shared(conn, run) {
                // The savepoint statements themselves failed: nothing of the
                // batch can be trusted, and the next batch needs no open transaction.
                let _ = conn.execute_batch("ROLLBACK");
                return Err(failed(e));
            }
        }
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (SQLITE_FULL, IOERR):
            // the jobs before are undone, and those after must not run
            // outside it, each committing on its own.
            return Err("the transaction was rolled back by a failing write".into());
        }
        start = end;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rusqlite::Connection;

    use super::*;

    fn no_bookkeeping(_: &Connection) -> Result<(), StorageError> {
        Ok(())
    }

    /// A writer on a fresh file with one table `t (v)`, answering within `deadline`.
    fn writer(deadline: Duration) -> (Writer, tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (v INTEGER);")
            .unwrap();
        let (writer, _) = Writer::spawn(conn, deadline, 64, no_bookkeeping, None, None).unwrap();
        (writer, dir, path)
    }

    fn values(path: &std::path::Path) -> Vec<i64> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn.prepare("SELECT v FROM t ORDER BY v").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn insert(v: i64, hold: Duration) -> impl FnOnce(&Connection) -> Result<i64, StorageError> {
        move |conn| {
            std::thread::sleep(hold);
            conn.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
            Ok(v)
        }
    }

    #[tokio::test]
    async fn a_job_under_way_at_its_deadline_reports_its_commit() {
        let (writer, _dir, path) = writer(Duration::from_millis(50));
        let outcome = writer.run(insert(1, Duration::from_millis(300))).await;
        assert_eq!(outcome.unwrap(), 1, "committed, so not a timeout");
        assert_eq!(values(&path), vec![1]);
    }

    #[tokio::test]
    async fn a_timeout_means_the_job_was_never_applied() {
        let (writer, _dir, path) = writer(Duration::from_millis(100));
        let slow = writer.run(insert(1, Duration::from_millis(400)));
        let queued = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.run(insert(2, Duration::ZERO)).await
        };
        let (slow, queued) = tokio::join!(slow, queued);
        assert_eq!(slow.unwrap(), 1);
        assert!(
            matches!(queued, Err(StorageError::Timeout(_))),
            "{queued:?}"
        );
        // Whatever the writer did later, the job it was told to drop stays undone.
        writer.run(insert(3, Duration::ZERO)).await.unwrap();
        assert_eq!(values(&path), vec![1, 3]);
    }

    #[tokio::test]
    async fn a_job_that_rolls_the_transaction_back_fails_its_whole_batch() {
        let (writer, _dir, path) = writer(Duration::from_secs(5));
        // The first job holds the writer so that the next three share a batch.
        let first = writer.run(insert(1, Duration::from_millis(200)));
        let batch = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let before = writer.run(insert(2, Duration::ZERO));
            let rollback = writer.run(|conn: &Connection| {
                // What SQLite itself does on SQLITE_FULL inside a transaction.
                conn.execute_batch("ROLLBACK")?;
                Ok(0)
            });
            let after = writer.run(insert(4, Duration::ZERO));
            tokio::join!(before, rollback, after)
        };
        let (first, (before, rollback, after)) = tokio::join!(first, batch);
        assert_eq!(first.unwrap(), 1);
        assert!(before.is_err() && rollback.is_err() && after.is_err());
        assert_eq!(values(&path), vec![1], "nothing of that batch stayed");
    }

    #[tokio::test]
    async fn a_failing_repeatable_job_undoes_only_itself() {
        let (writer, _dir, path) = writer(Duration::from_secs(5));
        // The first job holds the writer so that the next four share a batch,
        // the repeatable ones one savepoint.
        let first = writer.run(insert(1, Duration::from_millis(200)));
        let batch = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let repeatable = |v: i64| {
                writer.run_repeatable(move |conn: &Connection| {
                    conn.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                    Ok(v)
                })
            };
            let failing = writer.run_repeatable(|conn: &Connection| {
                // Half done, then an error: the half must not stay.
                conn.execute("INSERT INTO t (v) VALUES (99)", [])?;
                conn.execute("INSERT INTO no_such_table (v) VALUES (1)", [])?;
                Ok(0)
            });
            let once = writer.run(insert(5, Duration::ZERO));
            tokio::join!(repeatable(2), failing, repeatable(3), once, repeatable(4))
        };
        let (first, (two, failing, three, five, four)) = tokio::join!(first, batch);
        assert_eq!(first.unwrap(), 1);
        assert!(
            matches!(failing, Err(StorageError::Sqlite(_))),
            "{failing:?}"
        );
        assert_eq!(
            (two.unwrap(), three.unwrap(), five.unwrap(), four.unwrap()),
            (2, 3, 5, 4)
        );
        assert_eq!(values(&path), vec![1, 2, 3, 4, 5]);
        assert_eq!(writer.stats().commits, 2, "the four shared one commit");
    }

    #[tokio::test]
    async fn a_failed_flush_fails_its_batch_and_stops_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (v INTEGER);")
            .unwrap();
        let flush = WalFlush::start(|| Err(std::io::Error::other("EIO"))).unwrap();
        let (writer, thread) = Writer::spawn(
            conn,
            Duration::from_secs(5),
            64,
            no_bookkeeping,
            None,
            Some(flush),
        )
        .unwrap();
        let committed = writer.run(insert(1, Duration::ZERO)).await;
        assert!(
            matches!(&committed, Err(StorageError::CommitFailed(why)) if why.contains("EIO")),
            "told done without a flush: {committed:?}"
        );
        let next = writer.run(insert(2, Duration::ZERO)).await;
        assert!(next.is_err(), "{next:?}");
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        assert!(!writer.is_running(), "readiness sees the writer stopped");
        assert!(matches!(
            writer.run(insert(3, Duration::ZERO)).await,
            Err(StorageError::WriterStopped)
        ));
    }
}
