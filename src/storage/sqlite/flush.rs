//! Making committed batches durable off the writer's path.
//!
//! With `synchronous=FULL`, SQLite fsyncs the WAL inside every COMMIT, and
//! the writer can apply nothing while the disk flushes: under load a
//! flush was about a third of each batch's time. Instead the writer commits
//! with `synchronous=NORMAL`, which writes the WAL without flushing it, and
//! hands the committed batch to a thread of its own here. That thread flushes
//! the WAL file (`fdatasync`) and only then answers the batch's callers, while
//! the writer is already applying the next batch. One flush covers every batch
//! committed before it began, so a backlog of them costs one flush.
//!
//! Why this is as durable as `FULL` for everything acknowledged:
//! - A caller hears "done" only after a flush that began after its commit.
//! - The WAL is only appended to between checkpoints, and each frame carries a
//!   checksum chained to the frames before it; after a power loss, SQLite
//!   recovers a prefix of the commits, so every acknowledged one survives.
//! - Checkpoints flush both files themselves: `NORMAL` syncs the WAL before it
//!   copies frames into the database and the database before the WAL may start
//!   over, exactly as `FULL` does.
//!
//! What a power loss (not a crash of the process, which loses nothing) can take is
//! a commit that other connections read before it was flushed. Nothing outside the daemon acts on
//! such a read alone: every answer and every Shiprocket call waits for its own
//! write's answer, which comes after a later flush that covers the earlier commit.
//!
//! A failed flush means the disk may have dropped what it was given, and a
//! later flush that succeeds does not prove otherwise. So every batch waiting
//! then and every batch after it is answered failed, and the writer stops:
//! readiness fails, and a restart recovers what the WAL on disk holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

/// Answers one committed batch's callers with the flush's outcome.
pub(super) type Finish = Box<dyn FnOnce(Result<(), &str>) + Send>;

/// The writer's side of the flushing thread.
pub(super) struct WalFlush {
    committed: Sender<Finish>,
    failed: Arc<AtomicBool>,
}

impl WalFlush {
    /// Starts the thread; `flush` makes everything written so far to the WAL
    /// durable (production: `fdatasync` of the WAL file).
    pub(super) fn start<S>(flush: S) -> std::io::Result<Self>
    where
        S: FnMut() -> std::io::Result<()> + Send + 'static,
    {
        let (committed, due) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failed);
        std::thread::Builder::new()
            .name("storage-flush".into())
            .spawn(move || run(flush, &due, &flag))?;
        Ok(Self { committed, failed })
    }

    /// Hands over a committed batch: `finish` runs once the WAL is flushed.
    pub(super) fn after_commit(&self, finish: Finish) {
        if let Err(mpsc::SendError(finish)) = self.committed.send(finish) {
            // The thread is gone, so nothing can make the batch durable.
            finish(Err("the WAL flushing thread stopped"));
        }
    }

    /// True once a flush failed: the writer must take no more work.
    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

fn run<S>(mut flush: S, due: &Receiver<Finish>, failed: &AtomicBool)
where
    S: FnMut() -> std::io::Result<()>,
{
    let mut failure: Option<String> = None;
    // Ends when the writer, and with it the sender, is gone.
    while let Ok(first) = due.recv() {
        let mut batches = vec![first];
        batches.extend(due.try_iter());
        if failure.is_none() {
            if let Err(e) = flush() {
                tracing::error!(error = %e, batches = batches.len(),
                    "flushing the WAL failed; the writer stops, callers answered unavailable");
                failure = Some(format!("flushing the WAL failed: {e}"));
                failed.store(true, Ordering::Release);
            }
        }
        let outcome = failure.as_deref().map_or(Ok(()), Err);
        for finish in batches {
            finish(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;

    fn recorder() -> (Finish, Receiver<Result<(), String>>) {
        let (tx, rx) = channel();
        let finish: Finish = Box::new(move |outcome: Result<(), &str>| {
            let _ = tx.send(outcome.map_err(str::to_owned));
        });
        (finish, rx)
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn a_batch_is_answered_only_after_a_flush_that_followed_its_commit() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&flushes);
        // The flush holds until the test lets it go.
        let (release, released) = channel::<()>();
        let flush = WalFlush::start(move || {
            released.recv().ok();
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        let (first, first_answer) = recorder();
        flush.after_commit(first);
        assert!(
            first_answer
                .recv_timeout(Duration::from_millis(100))
                .is_err(),
            "answered before its flush"
        );
        release.send(()).unwrap();
        assert_eq!(first_answer.recv_timeout(WAIT).unwrap(), Ok(()));
        assert_eq!(flushes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn batches_waiting_together_share_one_flush() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&flushes);
        let (release, released) = channel::<()>();
        let flush = WalFlush::start(move || {
            released.recv().ok();
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        // The first batch's flush is under way while three more commit.
        let (first, first_answer) = recorder();
        flush.after_commit(first);
        std::thread::sleep(Duration::from_millis(50));
        let answers: Vec<_> = (0..3)
            .map(|_| {
                let (finish, answer) = recorder();
                flush.after_commit(finish);
                answer
            })
            .collect();
        release.send(()).unwrap();
        assert_eq!(first_answer.recv_timeout(WAIT).unwrap(), Ok(()));
        release.send(()).unwrap();
        for answer in answers {
            assert_eq!(answer.recv_timeout(WAIT).unwrap(), Ok(()));
        }
        assert_eq!(flushes.load(Ordering::SeqCst), 2, "one flush for the three");
    }

    #[test]
    fn after_a_failed_flush_every_batch_fails_and_none_is_flushed_again() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&flushes);
        let flush = WalFlush::start(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Err(std::io::Error::other("EIO"))
        })
        .unwrap();
        let (first, first_answer) = recorder();
        flush.after_commit(first);
        let failure = first_answer.recv_timeout(WAIT).unwrap().unwrap_err();
        assert!(failure.contains("EIO"), "{failure}");
        assert!(flush.failed(), "the writer is told to stop");
        let (later, later_answer) = recorder();
        flush.after_commit(later);
        assert!(later_answer.recv_timeout(WAIT).unwrap().is_err());
        assert_eq!(
            flushes.load(Ordering::SeqCst),
            1,
            "a later success would prove nothing"
        );
    }
}
