//! The HTTP front (actix-web): authenticate, parse, forward a message to an
//! actor, map the reply to a status code. No business rule lives here.
//!
//! Two listeners with different audiences: the public one (`server.listen`)
//! serves only Razorpay's webhook, the storefront API and health; the admin one
//! (`admin.listen`, loopback by default) serves the admin API, the operator's
//! console and `/metrics`.

pub mod admin;
pub mod auth;
pub mod console;
pub mod error;
pub mod health;
pub mod orders;
pub mod storefront;
pub mod tracking;
pub mod webhook;

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use actix_web::web;

use crate::actors::order_link::OrderLink;
use crate::actors::registry::RegistryStats;
use crate::actors::shipping::{ShippingQueue, ShippingRouter};
use crate::actors::stock::StockSupervisor;
use crate::actors::switch::ProcessingSwitch;
use crate::config::Settings;
use crate::domain::clock::SharedClock;
use crate::service::health::HealthCheck;
use crate::storage::postgres::Ownership;
use crate::storage::Storage;
use crate::telemetry::Metrics;
use auth::TokenDigest;

/// What every handler may read, shared by both listeners.
pub struct AppState {
    pub settings: Settings,
    /// This instance's name in the cluster and in its logs (`cluster.instance_id`,
    /// else the host name and process id).
    pub instance_id: String,
    /// The leases this instance holds (PostgreSQL); `None` alone on SQLite.
    pub ownership: Option<Arc<Ownership>>,
    pub storage: Storage,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    pub started: Instant,
    pub ingest_actors: Arc<AtomicUsize>,
    /// The kill switch (SPEC §9): persisted, and read by every stage that advances orders.
    pub switch: ProcessingSwitch,
    pub stock: StockSupervisor,
    pub orders: OrderLink,
    pub order_actors: Arc<RegistryStats>,
    pub router: ShippingRouter,
    /// The durable shipping queue's backlog, for status and metrics.
    pub shipping_queue: ShippingQueue,
    /// Manual shipping mode (SPEC §9 `PUT /admin/shipping-mode`), persisted.
    pub shipping_manual: Arc<AtomicBool>,
    /// The actor system's health: `/readyz` and the systemd watchdog ask it.
    pub health: HealthCheck,
    /// `api.storefront_token` and `shiprocket.tracking_token`, if set.
    pub storefront_token: Option<TokenDigest>,
    pub tracking_token: Option<TokenDigest>,
    /// The console's signed-in sessions (admin listener).
    pub console: Arc<console::session::Sessions>,
}

/// Routes of the public listener.
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/webhooks/razorpay", web::post().to(webhook::razorpay))
        .route("/webhooks/tracking", web::post().to(tracking::shiprocket))
        .configure(storefront::routes)
        .configure(health::public_routes);
}

/// Routes of the admin listener.
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(admin::routes)
        .configure(console::routes)
        .configure(health::admin_routes);
}

/// The time format of every JSON answer.
pub use crate::domain::clock::rfc3339;
