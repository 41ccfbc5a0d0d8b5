//! A thread of its own for a client's network I/O.
//!
//! The actors run on one arbiter thread. On a sale day that thread is the
//! daemon's busiest, and an outbound HTTP call (framing, socket writes and
//! reads, the connection's own task) cost about a quarter of its time. A
//! client that runs its exchanges here leaves the arbiter only the sending
//! and the answer. The runtime is a current-thread one, so a connection it
//! opens is only ever used from it.
//!
//! The thread stops when the last handle to it is dropped. Not an actix
//! `Arbiter`: the client is also used outside an actix system (the command
//! line, tests), a caller needs the exchange's output and its cancellation,
//! and the runtime must be dropped on its own thread, never inside the async
//! code that dropped the last client.

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The thread is gone (it failed to start or its runtime shut down).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct IoThreadGone(String);

/// A cloneable handle to the thread.
#[derive(Clone)]
pub struct IoThread {
    inner: Arc<Inner>,
}

struct Inner {
    handle: Handle,
    /// Dropped with the last handle: the thread's runtime returns and stops.
    _stop: oneshot::Sender<()>,
}

impl IoThread {
    /// Starts the thread, named `name`.
    pub fn start(name: &str) -> Result<Self, IoThreadGone> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                // Either a stop or every handle dropped: both end the thread.
                let _ = runtime.block_on(stop_rx);
            })
            .map_err(|e| IoThreadGone(format!("cannot start {name}: {e}")))?;
        let handle = ready_rx
            .recv()
            .map_err(|e| IoThreadGone(format!("{name} did not start: {e}")))?
            .map_err(|e| IoThreadGone(format!("{name} has no runtime: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                handle,
                _stop: stop_tx,
            }),
        })
    }

    /// Runs `work` on the thread and waits for its output from any runtime.
    /// Dropping the returned future cancels the work.
    pub async fn run<F>(&self, work: F) -> Result<F::Output, IoThreadGone>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut task = AbortOnDrop(self.inner.handle.spawn(work));
        (&mut task.0)
            .await
            .map_err(|e| IoThreadGone(format!("outbound call did not finish: {e}")))
    }
}

/// Cancels a spawned task when its waiter goes away (a caller's timeout).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn work_runs_on_the_named_thread_and_its_output_comes_back() {
        let io = IoThread::start("io-test").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let name = runtime
            .block_on(io.run(async { std::thread::current().name().map(str::to_owned) }))
            .unwrap();
        assert_eq!(name.as_deref(), Some("io-test"));
    }

    #[test]
    fn a_dropped_waiter_cancels_its_work() {
        let io = IoThread::start("io-cancel").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (started_tx, started_rx) = oneshot::channel();
        let (alive_tx, alive_rx) = std::sync::mpsc::channel::<()>();
        let waiter = io.run(async move {
            let _alive = alive_tx;
            let _ = started_tx.send(());
            std::future::pending::<()>().await
        });
        runtime.block_on(async {
            tokio::select! {
                _ = waiter => panic!("pending work finished"),
                _ = started_rx => {}
            }
        });
        // The waiter was dropped by the select: the work is dropped with it.
        assert_eq!(
            alive_rx.recv_timeout(Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn the_thread_stops_with_its_last_handle() {
        let io = IoThread::start("io-stop").unwrap();
        let (alive_tx, alive_rx) = std::sync::mpsc::channel::<()>();
        io.inner.handle.spawn(async move {
            let _alive = alive_tx;
            std::future::pending::<()>().await
        });
        let clone = io.clone();
        drop(io);
        assert_eq!(
            alive_rx.recv_timeout(Duration::from_millis(50)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout),
            "a clone keeps the thread running"
        );
        drop(clone);
        // The runtime shut down and dropped the task it was running.
        assert_eq!(
            alive_rx.recv_timeout(Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
