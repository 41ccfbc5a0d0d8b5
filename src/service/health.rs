//! Is the actor system doing its work? One check, used by `/readyz` and by
//! the systemd watchdog: a real commit through the storage writer, a message
//! round trip through the order registry's mailbox, and a recent heartbeat
//! from the inbox dispatcher's loop. A process that answers HTTP but whose
//! writer or dispatcher is stuck fails it, so systemd restarts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;

use crate::actors::registry::{OrderRegistry, Ping};
use crate::domain::clock::SharedClock;
use crate::storage::Storage;

/// When a loop last went round, readable from any thread.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn beat(&self) {
        let elapsed = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(elapsed, Ordering::Relaxed);
    }

    /// Time since the last beat (since creation if there was none).
    pub fn age(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// What one round of checks measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readings {
    /// A probe row committed, or why not.
    pub storage: Result<(), String>,
    /// The registry answered a ping, or why not.
    pub registry: Result<(), String>,
    pub dispatcher_beat_age: Duration,
    pub ingest_actors: usize,
}

/// How stale the dispatcher may look before it counts as stuck. Its loop goes
/// round at least every half second when idle, and after every batch when busy.
pub const DISPATCHER_STALE_AFTER: Duration = Duration::from_secs(20);

/// The problems in `readings`; empty means healthy.
pub fn assess(readings: &Readings) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = &readings.storage {
        problems.push(format!("storage is not writable: {e}"));
    }
    if let Err(e) = &readings.registry {
        problems.push(format!("the order registry does not answer: {e}"));
    }
    if readings.dispatcher_beat_age > DISPATCHER_STALE_AFTER {
        problems.push(format!(
            "the inbox dispatcher has not gone round for {:.0?}",
            readings.dispatcher_beat_age
        ));
    }
    if readings.ingest_actors == 0 {
        problems.push("no webhook ingest actor is running".into());
    }
    problems
}

/// What the check needs to reach.
#[derive(Clone)]
pub struct HealthCheck {
    pub storage: Storage,
    pub registry: Addr<OrderRegistry>,
    pub clock: SharedClock,
    pub dispatcher: Arc<Heartbeat>,
    pub ingest_actors: Arc<std::sync::atomic::AtomicUsize>,
    /// The last full check, for the public probe: one check at a time, and
    /// none more often than [`PUBLIC_CHECK_EVERY`], however many ask.
    pub last: Arc<tokio::sync::Mutex<Option<(Instant, bool)>>>,
}

/// How old a full check the public readiness probe answers from may be.
pub const PUBLIC_CHECK_EVERY: Duration = Duration::from_secs(1);

impl HealthCheck {
    /// Takes the readings, each bounded by `timeout`.
    pub async fn read(&self, timeout: Duration) -> Readings {
        let storage =
            match tokio::time::timeout(timeout, self.storage.probe_writable(self.clock.now_ms()))
                .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no commit within {timeout:?}")),
            };
        let registry = match tokio::time::timeout(timeout, self.registry.send(Ping)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        Readings {
            storage,
            registry,
            dispatcher_beat_age: self.dispatcher.age(),
            ingest_actors: self.ingest_actors.load(Ordering::Relaxed),
        }
    }

    /// The problems right now; empty means healthy.
    pub async fn problems(&self, timeout: Duration) -> Vec<String> {
        assess(&self.read(timeout).await)
    }

    /// Healthy or not, from a check at most `max_age` old: what anyone on the
    /// public listener may ask as often as they like without making the
    /// daemon commit a probe each time.
    pub async fn ready_recently(&self, max_age: Duration, timeout: Duration) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, ready)) = *last {
            if at.elapsed() < max_age {
                return ready;
            }
        }
        let ready = self.problems(timeout).await.is_empty();
        *last = Some((Instant::now(), ready));
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Readings {
        Readings {
            storage: Ok(()),
            registry: Ok(()),
            dispatcher_beat_age: Duration::from_millis(300),
            ingest_actors: 2,
        }
    }

    #[test]
    fn all_parts_working_is_healthy() {
        assert!(assess(&healthy()).is_empty());
    }

    #[test]
    fn each_stuck_part_is_named() {
        let stuck_writer = Readings {
            storage: Err("no commit within 5s".into()),
            ..healthy()
        };
        assert_eq!(assess(&stuck_writer).len(), 1);
        assert!(assess(&stuck_writer)[0].contains("storage"));

        let stuck_dispatcher = Readings {
            dispatcher_beat_age: DISPATCHER_STALE_AFTER + Duration::from_secs(1),
            ..healthy()
        };
        assert!(assess(&stuck_dispatcher)[0].contains("dispatcher"));

        let everything = Readings {
            storage: Err("x".into()),
            registry: Err("mailbox closed".into()),
            dispatcher_beat_age: Duration::from_secs(60),
            ingest_actors: 0,
        };
        assert_eq!(assess(&everything).len(), 4);
    }

    #[test]
    fn a_heartbeat_ages_until_it_beats() {
        let beat = Heartbeat::new();
        std::thread::sleep(Duration::from_millis(20));
        assert!(beat.age() >= Duration::from_millis(20));
        beat.beat();
        assert!(beat.age() < Duration::from_millis(20));
    }
}
