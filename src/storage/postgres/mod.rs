//! The PostgreSQL backend (SPEC §13): one database shared by every instance.
//!
//! PostgreSQL I/O runs on a small tokio runtime this module owns, on threads
//! named `postgres-io`: every pooled connection's task lives there, and
//! callers on actix's single-threaded arbiters reach it through [`PgStore::run`],
//! which hands the work over and awaits its answer on a channel. A connection
//! made on one actix worker's runtime would stall whenever that worker is busy
//! and cannot be used from another one; this way none is.
//!
//! Like the SQLite backend, a caller that gives up does not cancel a write that
//! already started: it commits or rolls back on its own.

mod audit;
mod commands;
mod daemon_state;
mod leases;
mod migrations;
mod orders;
mod shipping;
mod stock;
mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Timeouts};
use tokio_postgres::NoTls;

pub use commands::{Notice, WaitingCommand};
pub use leases::{hold, Fence, InstanceView, LeaseRow, Ownership};

use super::pii::PiiCipher;
use super::{PiiKey, StorageError};

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Connections per instance (`storage.pool_size`).
    pub pool_size: usize,
    /// How long a request waits for a connection, and a statement for the
    /// server, before it answers 503 (`storage.busy_timeout_ms`).
    pub busy_timeout: Duration,
    /// Encrypts customer data at rest (SPEC §10), as on SQLite.
    pub pii_key: PiiKey,
    /// A transaction its client leaves idle this long is rolled back by the
    /// server (`idle_in_transaction_session_timeout`). A paused or cut-off
    /// instance's open transaction would otherwise keep its locks, the
    /// lease row's among them, and hold up the takeover and every writer
    /// behind it for as long as the pause lasts. Well inside the lease TTL.
    pub abandon_after: Duration,
    /// The leases this instance holds, kept by its cluster membership: every
    /// write for an order then commits only under its partition's lease.
    /// `None` for a lone tool that owns nothing (and fences nothing).
    pub ownership: Option<Arc<Ownership>>,
}

/// Connections kept for the cluster membership's rounds.
const LEASE_CONNECTIONS: usize = 2;
/// How long a round waits for a lease row a write holds: a write in flight
/// takes milliseconds; one held longer (a paused owner) is tried next round.
const LEASE_LOCK_TIMEOUT: Duration = Duration::from_millis(250);
/// How long start-up's migration may take: it waits for the migration lock
/// while another instance starting at once migrates, and for its connection
/// on a loaded machine, neither of which a write's deadline allows for.
pub(super) const MIGRATION_DEADLINE: Duration = Duration::from_secs(60);

/// A cheap, cloneable handle to the PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    io: IoRuntime,
    pool: Pool,
    /// Connections of the cluster membership's own: a lease is renewed on
    /// time however busy the writes keep the main pool.
    lease_pool: Pool,
    busy_timeout: Duration,
    pii: Arc<PiiCipher>,
    ownership: Option<Arc<Ownership>>,
    /// Wake-ups for cluster commands and their replies (see [`commands`]).
    notices: tokio::sync::broadcast::Sender<Notice>,
}

impl PgStore {
    /// Connects, then brings the schema to the latest version (safe when
    /// several instances start at once).
    pub async fn connect(options: &PgOptions) -> Result<Self, StorageError> {
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| StorageError::PostgresUrl(e.to_string()))?;
        let idle_ms = options.abandon_after.as_millis().max(1);
        let session = |lock_timeout_ms: u128| {
            format!("-c idle_in_transaction_session_timeout={idle_ms} -c lock_timeout={lock_timeout_ms}")
        };
        let mut lease_config = config.clone();
        lease_config.options(session(LEASE_LOCK_TIMEOUT.as_millis()));
        config.options(session(options.busy_timeout.as_millis().max(1)));
        let io = IoRuntime::start()?;
        let (notices, _) = tokio::sync::broadcast::channel(1024);
        commands::start_listener(io.handle(), config.clone(), notices.clone());
        let build = |config: &tokio_postgres::Config, size: usize| {
            // The pool spawns its connections' tasks on the runtime it is built in.
            let _entered = io.handle().enter();
            let manager = Manager::from_config(
                config.clone(),
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(options.busy_timeout))
                .create_timeout(Some(options.busy_timeout))
                .build()
                .map_err(|e| StorageError::Postgres(e.to_string()))
        };
        let pool = build(&config, options.pool_size.max(1))?;
        let lease_pool = build(&lease_config, LEASE_CONNECTIONS)?;
        let store = Self {
            inner: Arc::new(Inner {
                io,
                pool,
                lease_pool,
                busy_timeout: options.busy_timeout,
                pii: Arc::new(PiiCipher::new(&options.pii_key)),
                ownership: options.ownership.clone(),
                notices,
            }),
        };
        let deadline = MIGRATION_DEADLINE.max(options.busy_timeout * 2);
        store
            .run_within(store.inner.pool.clone(), deadline, move |pool| async move {
                let patient = Timeouts {
                    wait: Some(deadline),
                    create: Some(deadline),
                    recycle: Some(deadline),
                };
                let mut client = pool.timeout_get(&patient).await?;
                migrations::migrate(&mut client).await
            })
            .await?;
        Ok(store)
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<u32, StorageError> {
        self.run(|pool| async move {
            let client = pool.get().await?;
            migrations::current_version(&client).await
        })
        .await
    }

    fn pii(&self) -> Arc<PiiCipher> {
        Arc::clone(&self.inner.pii)
    }

    /// The fence a write for `order_id` must hold: `None` without cluster
    /// membership; `LeaseLost` when this instance does not own the order's
    /// partition now (the write is refused before it starts).
    fn order_fence(&self, order_id: &str) -> Result<Option<Fence>, StorageError> {
        let Some(ownership) = &self.inner.ownership else {
            return Ok(None);
        };
        ownership
            .order_fence(order_id)
            .map(Some)
            .ok_or_else(|| StorageError::LeaseLost {
                resource: ownership.partition_of(order_id).to_string(),
                epoch: 0,
            })
    }

    /// Runs `work` on the store's runtime with a handle to the pool, and
    /// awaits its answer. The work runs to its end even if the caller stops
    /// waiting.
    pub(crate) async fn run<T, F, Fut>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        self.run_on(self.inner.pool.clone(), work).await
    }

    /// As [`Self::run`], on the membership's own connections.
    pub(crate) async fn run_leases<T, F, Fut>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        self.run_on(self.inner.lease_pool.clone(), work).await
    }

    async fn run_on<T, F, Fut>(&self, pool: Pool, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        self.run_within(pool, self.inner.busy_timeout * 2, work)
            .await
    }

    /// Runs `work` on the I/O runtime; no answer within `deadline` is [`StorageError::InDoubt`].
    async fn run_within<T, F, Fut>(
        &self,
        pool: Pool,
        deadline: Duration,
        work: F,
    ) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        let task = self.inner.io.handle().spawn(work(pool));
        match tokio::time::timeout(deadline, task).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(join)) => Err(StorageError::Reader(join.to_string())),
            Err(_) => Err(StorageError::InDoubt(deadline)),
        }
    }
}

/// The runtime PostgreSQL I/O runs on; shut down without waiting when the
/// last handle goes (dropping a runtime inside another would panic).
struct IoRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl IoRuntime {
    fn start() -> Result<Self, StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("postgres-io")
            .enable_all()
            .build()
            .map_err(StorageError::Thread)?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(error: tokio_postgres::Error) -> Self {
        StorageError::Postgres(describe(&error))
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StorageError::Postgres(other.to_string()),
        }
    }
}

/// The server's own message where there is one: tokio-postgres's `Display`
/// says only "db error".
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}
