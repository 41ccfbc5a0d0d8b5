//! The HTTP front (actix-web): authenticate, parse, forward a message to an
//! actor, map the reply to a status code. No business rule lives here.
//!
//! Two listeners with different audiences: the public one (`server.listen`)
//! serves only Razorpay's webhook, the storefront API and health; the admin one
//! (`admin.listen`, loopback by default) serves the admin API and `/metrics`.

pub mod admin;
pub mod auth;
pub mod error;
pub mod health;
pub mod webhook;

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use actix_web::web;

use crate::config::Settings;
use crate::domain::clock::SharedClock;
use crate::storage::Storage;
use crate::telemetry::Metrics;

/// What every handler may read, shared by both listeners.
pub struct AppState {
    pub settings: Settings,
    pub storage: Storage,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    pub started: Instant,
    pub ingest_actors: Arc<AtomicUsize>,
    /// The kill switch (SPEC §9): persisted, and read by every stage that advances orders.
    pub processing_paused: AtomicBool,
}

/// Routes of the public listener.
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/webhooks/razorpay", web::post().to(webhook::razorpay))
        .configure(health::routes);
}

/// Routes of the admin listener.
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(admin::routes).configure(health::routes);
}
