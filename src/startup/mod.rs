//! Assembling and running the daemon: open storage, start the actors, bind both
//! listeners. [`Application::build`] binds before returning, so callers (the
//! binary, tests, benchmarks) learn the real ports, port 0 included, before
//! serving starts.

mod cluster;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::ErrorHandlers;
use actix_web::{web, App, HttpServer};

use crate::actors::cluster::{ClusterMember, Scope};
use crate::actors::dispatcher::Dispatcher;
use crate::actors::ingest::{IngestDeps, WebhookIngest};
use crate::actors::order::{OrderDeps, OrderMsg, ShippingDeps};
use crate::actors::order_link::{CommandServer, OrderLink};
use crate::actors::registry::{OrderRegistry, RegistryStats, Route};
use crate::actors::shipping::{
    AccountHandle, GatewaySettings, GatewayStats, ShippingQueue, ShippingRouter, ShiprocketGateway,
    Work,
};
use crate::actors::stock::StockSupervisor;
use crate::actors::switch::ProcessingSwitch;
use crate::actors::timers;
use crate::clients::razorpay::RazorpayClient;
use crate::clients::shiprocket::ShiprocketClient;
use crate::config::Settings;
use crate::config::{ShippingMode, StorageBackend};
use crate::domain::backoff::Backoff;
use crate::domain::clock::{SharedClock, SystemClock};
use crate::domain::order::OrderState;
use crate::domain::shipping::{ParcelDefaults, ShippingPolicy};
use crate::domain::signature::WebhookVerifier;
use crate::http::auth::{AdminTokens, TokenDigest};
use crate::http::{self, AppState};
use crate::service::health::{HealthCheck, Heartbeat};
use crate::service::systemd;
use crate::storage::postgres::{Ownership, PgOptions};
use crate::storage::{PiiKey, Storage, StorageError, StorageOptions};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open storage: {0}")]
    Storage(#[from] StorageError),
    #[error("storage.pii_key is not set: customer data cannot be stored without it")]
    NoPiiKey,
    #[error("storage.backend = \"postgres\" needs storage.postgres_url")]
    NoPostgresUrl,
    #[error("cannot build an HTTP client: {0}")]
    Client(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A built daemon: storage open, actors ready, listeners bound.
pub struct Application {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    public: Server,
    admin: Server,
    state: web::Data<AppState>,
    /// Where the order actors run; stopped once the drain is done.
    order_arbiters: Vec<actix::ArbiterHandle>,
    /// This instance's cluster membership (PostgreSQL), left after the drain.
    membership: Option<cluster::Membership>,
}

/// Stops a running [`Application`] from elsewhere (tests, signal handlers).
#[derive(Clone)]
pub struct StopHandle {
    public: ServerHandle,
    admin: ServerHandle,
}

impl StopHandle {
    /// Stops both listeners; `graceful` lets in-flight requests finish first.
    pub async fn stop(&self, graceful: bool) {
        futures_util::future::join(self.public.stop(graceful), self.admin.stop(graceful)).await;
    }
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// As [`Application::build`], with the clock every time-based rule reads.
    pub async fn build_with_clock(
        settings: Settings,
        clock: SharedClock,
    ) -> Result<Self, StartupError> {
        let config = &settings.config;
        let pii_key = settings
            .secrets
            .pii_key
            .as_ref()
            .ok_or(StartupError::NoPiiKey)
            .and_then(|key| Ok(PiiKey::from_hex(key.expose())?))?;
        let instance_id = instance_id(&config.cluster.instance_id);
        let busy_timeout = Duration::from_millis(config.storage.busy_timeout_ms);
        let ownership = (config.storage.backend == StorageBackend::Postgres).then(|| {
            Arc::new(Ownership::new(
                instance_id.clone(),
                config.cluster.order_partitions,
            ))
        });
        let storage = match &ownership {
            None => {
                let options =
                    StorageOptions::new(config.storage.path.clone(), busy_timeout, pii_key);
                tokio::task::spawn_blocking(move || Storage::open(&options))
                    .await
                    .map_err(|e| StorageError::Reader(e.to_string()))??
            }
            Some(ownership) => {
                let url = settings
                    .secrets
                    .postgres_url
                    .as_ref()
                    .ok_or(StartupError::NoPostgresUrl)?;
                Storage::open_postgres(&PgOptions {
                    url: url.expose().to_owned(),
                    pool_size: config.storage.pool_size as usize,
                    busy_timeout,
                    pii_key,
                    abandon_after: busy_timeout
                        .min(Duration::from_secs(config.cluster.lease_ttl_secs) / 3),
                    ownership: Some(Arc::clone(ownership)),
                })
                .await?
            }
        };
        let scope = ownership
            .clone()
            .map_or_else(Scope::everything, Scope::cluster);
        let metrics = Metrics::new();
        // An operator's last flip wins over the config's start value.
        let paused = storage
            .processing_paused()
            .await?
            .unwrap_or(config.processing.paused);
        let switch = ProcessingSwitch::new(paused, storage.clone(), Arc::clone(&metrics));
        let wake = Arc::new(tokio::sync::Notify::new());
        let stock = StockSupervisor::start(
            storage.clone(),
            Arc::clone(&clock),
            config.stock.shards as usize,
        )
        .await?;
        let order_actor_stats = Arc::new(RegistryStats::default());
        let order_arbiters = order_arbiters();
        let shipping_manual = Arc::new(AtomicBool::new(
            config.shipping.mode == ShippingMode::Manual
                || storage.shipping_manual().await?.unwrap_or(false),
        ));
        let accounts = configured_accounts(&settings);
        let router = ShippingRouter::new(
            accounts
                .iter()
                .map(|(gateway, _)| AccountHandle {
                    account: gateway.account.clone(),
                    stats: Arc::new(GatewayStats::default()),
                    requests_per_hour: gateway.requests_per_hour,
                    burst: gateway.burst,
                })
                .collect(),
            Arc::clone(&clock),
        );
        let failover_after_ms =
            i64::try_from(config.shipping.failover_after_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX);
        let shipping_queue = ShippingQueue::new(
            storage.clone(),
            router.clone(),
            Arc::clone(&clock),
            failover_after_ms,
        );
        let shipping = ShippingDeps {
            queue: shipping_queue.clone(),
            policy: ShippingPolicy {
                backoff: Backoff {
                    base: Duration::from_millis(config.shipping.retry_base_ms),
                    max: Duration::from_millis(config.shipping.retry_max_ms),
                    max_attempts: config.shipping.max_attempts,
                },
                failover_after_ms,
                // Longer than a call can take: a login, the request, and on a
                // 401 a second login and the request again.
                call_lease_ms: i64::try_from(
                    config.shiprocket.request_timeout_ms.saturating_mul(4),
                )
                .unwrap_or(i64::MAX)
                .saturating_add(2_000),
            },
            parcel: ParcelDefaults {
                pickup_location: config.shipping.pickup_location.clone(),
                weight_kg: config.shipping.default_weight_kg,
                dims_cm: match config.shipping.default_dims_cm.as_slice() {
                    [l, b, h] => [*l, *b, *h],
                    _ => [20.0, 15.0, 10.0],
                },
            },
            manual: Arc::clone(&shipping_manual),
        };
        let order_deps = Arc::new(OrderDeps {
            storage: storage.clone(),
            stock: stock.clone(),
            clock: Arc::clone(&clock),
            metrics: Arc::clone(&metrics),
            reservation_ttl_ms: i64::try_from(config.api.reservation_ttl_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            idle: Duration::from_millis(config.processing.order_actor_idle_ms),
            switch: switch.clone(),
            shipping,
        });
        let registry = OrderRegistry::new(
            order_deps,
            config.processing.max_live_order_actors as usize,
            Arc::clone(&order_actor_stats),
        )
        .with_arbiters(order_arbiters.clone())
        .start();
        let orders = match (&ownership, storage.postgres()) {
            (Some(ownership), Some(pg)) => {
                actix_web::rt::spawn(
                    CommandServer {
                        store: pg.clone(),
                        ownership: Arc::clone(ownership),
                        registry: registry.clone(),
                    }
                    .run(),
                );
                OrderLink::clustered(registry.clone(), pg.clone(), Arc::clone(ownership))
            }
            _ => OrderLink::local(registry.clone()),
        };
        let work = Work {
            queue: shipping_queue.clone(),
            orders: orders.clone(),
            switch: switch.clone(),
            manual: Arc::clone(&shipping_manual),
        };
        // On several instances each account's gateway runs where its lease is.
        let mut account_gateways = Vec::new();
        for ((gateway, client), handle) in accounts.into_iter().zip(router.accounts()) {
            let client = client?;
            if scope.is_clustered() {
                account_gateways.push(cluster::AccountGateway {
                    settings: gateway,
                    client,
                    stats: Arc::clone(&handle.stats),
                });
                continue;
            }
            ShiprocketGateway::new(
                gateway,
                client,
                storage.clone(),
                Arc::clone(&clock),
                Arc::clone(&metrics),
                Arc::clone(&handle.stats),
            )
            .with_work(work.clone())
            .start();
        }
        let dispatcher_heartbeat = Arc::new(Heartbeat::new());
        let duties = match (&ownership, storage.postgres()) {
            (Some(ownership), Some(pg)) => {
                let member = ClusterMember::new(
                    pg.clone(),
                    Arc::clone(ownership),
                    Duration::from_secs(config.cluster.lease_ttl_secs),
                    account_gateways
                        .iter()
                        .map(|a| a.settings.account.clone())
                        .collect(),
                    start_offset(&instance_id),
                );
                Some((
                    member,
                    cluster::Duties {
                        ownership: Arc::clone(ownership),
                        storage: storage.clone(),
                        registry: registry.clone(),
                        accounts: account_gateways,
                        work: work.clone(),
                        clock: Arc::clone(&clock),
                        metrics: Arc::clone(&metrics),
                        switch: switch.clone(),
                        dispatcher: Arc::clone(&wake),
                        ship_paid_orders: !router.is_empty(),
                    },
                ))
            }
            _ => None,
        };
        let background = Background {
            heartbeat: Arc::clone(&dispatcher_heartbeat),
            storage: storage.clone(),
            orders: orders.clone(),
            scope: scope.clone(),
            clock: Arc::clone(&clock),
            switch: switch.clone(),
            wake: Arc::clone(&wake),
            metrics: Arc::clone(&metrics),
            expiry_every: Duration::from_millis(config.processing.expiry_check_ms),
            razorpay: match (
                &settings.secrets.razorpay_key_id,
                &settings.secrets.razorpay_key_secret,
            ) {
                (Some(id), Some(secret)) => Some(
                    RazorpayClient::new(
                        &config.razorpay.api_base_url,
                        id.clone(),
                        secret.clone(),
                        Duration::from_secs(10),
                    )
                    .map_err(|e| StartupError::Client(e.to_string()))?,
                ),
                _ => None,
            },
            ship_paid_orders: !router.is_empty(),
            shipping_manual: Arc::clone(&shipping_manual),
            reconcile_after_ms: i64::try_from(
                config.razorpay.reconcile_after_secs.saturating_mul(1000),
            )
            .unwrap_or(i64::MAX),
            reconcile_every: Duration::from_secs(config.razorpay.reconcile_interval_secs),
        };

        let ingest_actors = Arc::new(AtomicUsize::new(0));
        let ingest_deps = Arc::new(IngestDeps {
            verifier: WebhookVerifier::new(
                settings.secrets.webhook_secret.expose(),
                settings
                    .secrets
                    .previous_webhook_secret
                    .as_ref()
                    .map(|s| s.expose()),
            ),
            storage: storage.clone(),
            clock: Arc::clone(&clock),
            accept_window_secs: i64::try_from(config.razorpay.accept_window_secs)
                .unwrap_or(i64::MAX),
            live: Arc::clone(&ingest_actors),
            wake,
        });
        let admin_tokens = web::Data::new(AdminTokens::new(
            &settings.secrets.viewer_token,
            &settings.secrets.operator_token,
        ));
        let public_listen = config.server.listen.clone();
        let max_body = usize::try_from(config.server.max_body_bytes).unwrap_or(usize::MAX);
        let admin_listen = config.admin.listen.clone();
        let health = HealthCheck {
            storage: storage.clone(),
            registry: registry.clone(),
            clock: Arc::clone(&clock),
            dispatcher: dispatcher_heartbeat,
            ingest_actors: Arc::clone(&ingest_actors),
            last: Default::default(),
        };
        let storefront_token = settings
            .secrets
            .storefront_token
            .as_ref()
            .map(TokenDigest::new);
        let tracking_token = settings
            .secrets
            .tracking_token
            .as_ref()
            .map(TokenDigest::new);
        let console = Arc::new(http::console::session::Sessions::new(
            Arc::clone(&clock),
            Duration::from_secs(config.admin.console_idle_minutes.max(1).saturating_mul(60)),
        ));
        let state = web::Data::new(AppState {
            console,
            instance_id,
            ownership,
            settings,
            storage,
            metrics,
            clock,
            started: Instant::now(),
            ingest_actors,
            switch,
            stock,
            orders,
            order_actors: order_actor_stats,
            router,
            shipping_queue,
            shipping_manual: Arc::clone(&shipping_manual),
            health,
            storefront_token,
            tracking_token,
        });

        let public_state = state.clone();
        let public = HttpServer::new(move || {
            // Runs once per worker thread: each worker gets its own ingest actor.
            let ingest = WebhookIngest::new(Arc::clone(&ingest_deps)).start();
            App::new()
                .app_data(public_state.clone())
                .app_data(web::Data::new(ingest))
                .app_data(web::PayloadConfig::new(max_body))
                .configure(http::public_routes)
                .default_service(web::to(http::error::not_found))
                .wrap(ErrorHandlers::new().default_handler(http::error::json_error_body))
        })
        .disable_signals()
        .shutdown_timeout(REQUEST_DRAIN_SECS)
        .bind(&public_listen)
        .map_err(|source| StartupError::Bind {
            addr: public_listen.clone(),
            source,
        })?;
        let public_addr = first_addr(&public.addrs(), &public_listen)?;

        let admin_state = state.clone();
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(admin_state.clone())
                .app_data(admin_tokens.clone())
                .configure(http::admin_routes)
                .default_service(web::to(http::error::not_found))
                .wrap(ErrorHandlers::new().default_handler(http::error::json_error_body))
                .wrap(actix_web::middleware::from_fn(
                    http::admin::audit::record_admin_actions,
                ))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(REQUEST_DRAIN_SECS)
        .bind(&admin_listen)
        .map_err(|source| StartupError::Bind {
            addr: admin_listen.clone(),
            source,
        })?;
        let admin_addr = first_addr(&admin.addrs(), &admin_listen)?;

        let membership = match duties {
            Some((member, duties)) => Some(cluster::Membership::join(member, duties).await),
            None => None,
        };
        let public = public.run();
        let admin = admin.run();
        background.start();
        tracing::info!(public_addr = %public_addr, admin_addr = %admin_addr, paused, "listening");
        Ok(Self {
            public_addr,
            admin_addr,
            public,
            admin,
            state,
            order_arbiters,
            membership,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            public: self.public.handle(),
            admin: self.admin.handle(),
        }
    }

    /// The shared state, for in-process tools that want to read counters directly.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until both listeners stop, then stops in order (see [`drain`]).
    ///
    /// Tells systemd it is ready first (storage open, actors started, listeners
    /// bound) and, when systemd asks for a watchdog, keeps it fed while the
    /// health check passes.
    pub async fn run_until_stopped(mut self) -> std::io::Result<()> {
        let metrics = Arc::clone(&self.state.metrics);
        let upkeep = actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        });
        let watchdog = systemd::watchdog_period().map(|period| {
            tracing::info!(
                ?period,
                "systemd watchdog enabled; keep-alives follow the health check"
            );
            actix_web::rt::spawn(systemd::run_watchdog(self.state.health.clone(), period))
        });
        systemd::notify_ready("serving");
        let (public, admin) = futures_util::future::join(self.public, self.admin).await;
        upkeep.abort();
        drain(&self.state).await;
        if let Some(membership) = &mut self.membership {
            // After the drain, so that work in flight commits under its leases.
            membership.leave(LEAVE_LIMIT).await;
        }
        for arbiter in &self.order_arbiters {
            arbiter.stop();
        }
        self.state.storage.release();
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        public.and(admin)
    }
}

/// Longest a stop waits for requests in flight to be answered. With
/// [`DRAIN_LIMIT`] it stays well inside the unit's `TimeoutStopSec=45s`.
const REQUEST_DRAIN_SECS: u64 = 15;

/// Longest a stop waits for order work already under way.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);

/// Longest a stop waits for its leases to be handed over.
const LEAVE_LIMIT: Duration = Duration::from_secs(2);

/// The orderly stop after the listeners have closed (every request they took
/// is answered by then): take no new order work, which stays parked in the
/// durable inbox and orders table for the next start; let every order message
/// already in flight finish and commit; let the writer empty its queue.
async fn drain(state: &AppState) {
    // Only in memory: the next start reads the operator's persisted switch.
    state.switch.hold();
    let started = Instant::now();
    loop {
        let in_flight = state.order_actors.in_flight.load(Ordering::Relaxed);
        // PostgreSQL has no queue of its own: each write is done when its caller is answered.
        let queued = state.storage.writer_stats().map_or(0, |stats| stats.queued);
        if in_flight == 0 && queued == 0 {
            tracing::info!(elapsed = ?started.elapsed(), "drained: no order work in flight, writer idle");
            return;
        }
        if started.elapsed() > DRAIN_LIMIT {
            tracing::warn!(
                in_flight,
                queued,
                "stopping with work in flight; it resumes at the next start"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The work that runs beside the listeners: the inbox dispatcher, the timers,
/// and the start-up repair of stock steps a crash interrupted.
struct Background {
    heartbeat: Arc<Heartbeat>,
    storage: Storage,
    orders: OrderLink,
    /// What this instance works on (everything, or its leases' share).
    scope: Scope,
    clock: SharedClock,
    switch: ProcessingSwitch,
    wake: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
    expiry_every: Duration,
    razorpay: Option<RazorpayClient>,
    /// Shiprocket is configured: paid orders found at start go to shipping.
    ship_paid_orders: bool,
    shipping_manual: Arc<AtomicBool>,
    reconcile_after_ms: i64,
    reconcile_every: Duration,
}

/// How often manual mode looks for queued shipments to hand to operators.
const SHIPPING_CHECK_EVERY: Duration = Duration::from_millis(250);

/// How often the ledger is checked against the levels.
const STOCK_RECONCILE_EVERY: Duration = Duration::from_secs(3600);

impl Background {
    fn start(self) {
        if !self.scope.is_clustered() {
            // On several instances this is done for each partition as it is gained.
            resume_unfinished(
                self.storage.clone(),
                self.orders.registry().clone(),
                self.switch.clone(),
                self.ship_paid_orders,
                |_| true,
            );
        }
        actix_web::rt::spawn(
            Dispatcher {
                storage: self.storage.clone(),
                registry: self.orders.clone(),
                scope: self.scope.clone(),
                clock: Arc::clone(&self.clock),
                switch: self.switch.clone(),
                wake: self.wake,
                heartbeat: self.heartbeat,
            }
            .run(),
        );
        if let Some(razorpay) = self.razorpay {
            actix_web::rt::spawn(
                timers::PaymentReconciler {
                    storage: self.storage.clone(),
                    registry: self.orders.clone(),
                    scope: self.scope.clone(),
                    clock: Arc::clone(&self.clock),
                    switch: self.switch.clone(),
                    razorpay,
                    after_ms: self.reconcile_after_ms,
                    every: self.reconcile_every,
                }
                .run(),
            );
        }
        let timer = timers::OrderTimer {
            registry: self.orders,
            scope: self.scope.clone(),
            clock: self.clock,
            switch: self.switch,
        };
        actix_web::rt::spawn(timers::hold_shipments(
            self.storage.clone(),
            timer.clone(),
            self.shipping_manual,
            SHIPPING_CHECK_EVERY,
        ));
        actix_web::rt::spawn(timers::expire_reservations(
            self.storage.clone(),
            timer,
            self.expiry_every,
        ));
        actix_web::rt::spawn(timers::reconcile_stock(
            self.storage,
            self.scope,
            self.metrics,
            STOCK_RECONCILE_EVERY,
        ));
    }
}

/// Picks up what was left unfinished for the orders `ours` picks: stock
/// steps a crash interrupted (every step is idempotent), and orders paid
/// while no Shiprocket account was configured or just before a crash, which
/// go to shipping by the same rule as a fresh payment once processing runs.
fn resume_unfinished(
    storage: Storage,
    registry: actix::Addr<OrderRegistry>,
    switch: ProcessingSwitch,
    ship_paid_orders: bool,
    ours: impl Fn(&str) -> bool + 'static,
) {
    actix_web::rt::spawn(async move {
        match storage.orders_needing_stock_repair().await {
            Ok(ids) => {
                let ids: Vec<String> = ids.into_iter().filter(|id| ours(id)).collect();
                if !ids.is_empty() {
                    tracing::warn!(
                        orders = ids.len(),
                        "finishing stock steps interrupted by a crash"
                    );
                }
                for order_id in ids {
                    let msg = OrderMsg::RepairStock;
                    let _ = registry.send(Route { order_id, msg }).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot look for interrupted stock steps"),
        }
        if !ship_paid_orders {
            return;
        }
        // Shipping is order processing: it waits for the kill switch.
        switch.resumed().await;
        match storage.order_ids_in_state(OrderState::Paid, u32::MAX).await {
            Ok(paid) => {
                for order_id in paid.into_iter().filter(|id| ours(id)) {
                    let msg = OrderMsg::QueuePaid;
                    let _ = registry.send(Route { order_id, msg }).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot look for paid orders to ship"),
        }
    });
}

/// Where this instance starts looking for free leases: differs between
/// instances (and restarts), so that instances starting together do not all
/// race for the same rows.
fn start_offset(instance_id: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    instance_id.hash(&mut hasher);
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        .hash(&mut hasher);
    hasher.finish() as usize
}

/// Each `[[shiprocket.accounts]]` with a password: its gateway's settings
/// and HTTP client.
fn configured_accounts(
    settings: &Settings,
) -> Vec<(GatewaySettings, Result<ShiprocketClient, StartupError>)> {
    let sr = &settings.config.shiprocket;
    let mut accounts = Vec::new();
    for (i, account) in sr.accounts.iter().enumerate() {
        let Some(password) = settings
            .secrets
            .shiprocket_passwords
            .get(i)
            .cloned()
            .flatten()
        else {
            tracing::warn!(account = %account.name, "Shiprocket account has no password; it is not used");
            continue;
        };
        let client =
            ShiprocketClient::new(&sr.base_url, Duration::from_millis(sr.request_timeout_ms))
                .map_err(|e| StartupError::Client(e.to_string()));
        let gateway = GatewaySettings {
            account: account.name.clone(),
            email: account.email.clone(),
            password,
            requests_per_hour: sr.requests_per_hour,
            burst: sr.burst,
            token_refresh_after: Duration::from_secs(
                sr.token_refresh_after_hours.saturating_mul(3600),
            ),
            breaker_threshold: sr.breaker_failure_threshold,
            breaker_open: Duration::from_secs(sr.breaker_open_secs),
        };
        accounts.push((gateway, client));
    }
    accounts
}

fn first_addr(addrs: &[SocketAddr], listen: &str) -> Result<SocketAddr, StartupError> {
    addrs.first().copied().ok_or_else(|| StartupError::Bind {
        addr: listen.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address bound"),
    })
}

/// One arbiter per core for the order actors, beside the one running the
/// registry, the stock shards, the gateways and the dispatcher.
fn order_arbiters() -> Vec<actix::ArbiterHandle> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..cores).map(|_| actix::Arbiter::new().handle()).collect()
}

/// `cluster.instance_id`, or the host name and process id: unique among
/// instances on different hosts and among restarts on one.
pub fn instance_id(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "dropshipd".to_owned());
    format!("{host}-{}", std::process::id())
}
