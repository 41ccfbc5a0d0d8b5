//! Assembling and running the daemon: open storage, start the actors, bind both
//! listeners. [`Application::build`] binds before returning, so callers (the
//! binary, tests, benchmarks) learn the real ports, port 0 included, before
//! serving starts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};

use crate::actors::ingest::{IngestDeps, WebhookIngest};
use crate::config::Settings;
use crate::domain::clock::{SharedClock, SystemClock};
use crate::domain::signature::WebhookVerifier;
use crate::http::{self, auth::AdminTokens, AppState};
use crate::storage::{Storage, StorageError, StorageOptions};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open storage: {0}")]
    Storage(#[from] StorageError),
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
        let options = StorageOptions::new(
            config.storage.path.clone(),
            Duration::from_millis(config.storage.busy_timeout_ms),
        );
        let storage = tokio::task::spawn_blocking(move || Storage::open(&options))
            .await
            .map_err(|e| StorageError::Reader(e.to_string()))??;
        let metrics = Metrics::new();
        let paused =
            config.processing.paused || storage.processing_paused().await?.unwrap_or(false);
        metrics
            .processing_paused
            .set(if paused { 1.0 } else { 0.0 });

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
        });
        let admin_tokens = web::Data::new(AdminTokens::new(
            &settings.secrets.viewer_token,
            &settings.secrets.operator_token,
        ));
        let public_listen = config.server.listen.clone();
        let admin_listen = config.admin.listen.clone();
        let state = web::Data::new(AppState {
            settings,
            storage,
            metrics,
            clock,
            started: Instant::now(),
            ingest_actors,
            processing_paused: AtomicBool::new(paused),
        });

        let public_state = state.clone();
        let public = HttpServer::new(move || {
            // Runs once per worker thread: each worker gets its own ingest actor.
            let ingest = WebhookIngest::new(Arc::clone(&ingest_deps)).start();
            App::new()
                .app_data(public_state.clone())
                .app_data(web::Data::new(ingest))
                .configure(http::public_routes)
                .default_service(web::to(http::error::not_found))
        })
        .disable_signals()
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
        })
        .workers(1)
        .disable_signals()
        .bind(&admin_listen)
        .map_err(|source| StartupError::Bind {
            addr: admin_listen.clone(),
            source,
        })?;
        let admin_addr = first_addr(&admin.addrs(), &admin_listen)?;

        let public = public.run();
        let admin = admin.run();
        tracing::info!(public_addr = %public_addr, admin_addr = %admin_addr, paused, "listening");
        Ok(Self {
            public_addr,
            admin_addr,
            public,
            admin,
            state,
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

    /// Serves until both listeners stop.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics = Arc::clone(&self.state.metrics);
        let upkeep = actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        });
        let (public, admin) = futures_util::future::join(self.public, self.admin).await;
        upkeep.abort();
        public.and(admin)
    }
}

fn first_addr(addrs: &[SocketAddr], listen: &str) -> Result<SocketAddr, StartupError> {
    addrs.first().copied().ok_or_else(|| StartupError::Bind {
        addr: listen.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address bound"),
    })
}
