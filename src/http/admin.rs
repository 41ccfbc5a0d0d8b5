//! The admin API (SPEC §9) and `/metrics`, on the admin listener only.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Operator, Viewer};
use super::error::ApiError;
use super::AppState;
use crate::storage::DeadLetter;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/status", web::get().to(status))
        .route("/admin/dlq", web::get().to(dead_letters))
        .route("/admin/processing/pause", web::post().to(pause))
        .route("/admin/processing/resume", web::post().to(resume))
        .route("/metrics", web::get().to(metrics));
}

fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

async fn status(_: Viewer, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let counts = state
        .storage
        .ingest_counts()
        .await
        .map_err(ApiError::storage_unavailable)?;
    let config = &state.settings.config;
    Ok(HttpResponse::Ok().json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "processing_paused": state.processing_paused.load(Ordering::SeqCst),
        "shipping_mode": config.shipping.mode.as_str(),
        "inbox_pending": counts.inbox_pending,
        "dlq_entries": counts.dlq_entries,
        "actors": {
            "webhook_ingest": state.ingest_actors.load(Ordering::Relaxed),
        },
        "storage": state.storage.writer_stats(),
    })))
}

#[derive(Deserialize)]
struct Page {
    after: Option<i64>,
    limit: Option<u32>,
}

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

async fn dead_letters(
    _: Viewer,
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let limit = page.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let letters = state
        .storage
        .dead_letters(page.after, limit)
        .await
        .map_err(ApiError::storage_unavailable)?;
    let next = (letters.len() == limit as usize)
        .then(|| letters.last().map(|l| l.id))
        .flatten();
    let entries: Vec<_> = letters.iter().map(dead_letter_json).collect();
    Ok(HttpResponse::Ok().json(json!({"entries": entries, "next": next})))
}

fn dead_letter_json(letter: &DeadLetter) -> serde_json::Value {
    json!({
        "id": letter.id,
        "source": letter.source,
        "reason": letter.reason,
        "detail": letter.detail,
        "event_id": letter.event_id,
        "received_at": rfc3339(letter.received_at_ms),
    })
}

async fn pause(caller: Operator, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    set_paused(caller, state, true).await
}

async fn resume(caller: Operator, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    set_paused(caller, state, false).await
}

async fn set_paused(
    Operator(caller): Operator,
    state: web::Data<AppState>,
    paused: bool,
) -> Result<HttpResponse, ApiError> {
    state
        .storage
        .set_processing_paused(paused)
        .await
        .map_err(ApiError::storage_unavailable)?;
    state.processing_paused.store(paused, Ordering::SeqCst);
    state
        .metrics
        .processing_paused
        .set(if paused { 1.0 } else { 0.0 });
    tracing::warn!(
        paused,
        role = ?caller.role,
        peer = caller.peer.as_deref().unwrap_or(""),
        user_agent = caller.user_agent.as_deref().unwrap_or(""),
        "kill switch changed by an operator"
    );
    Ok(HttpResponse::Ok().json(json!({"processing_paused": paused})))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // Gauges of stored state are read at scrape time, so they can never drift
    // from the database they describe.
    if let Ok(counts) = state.storage.ingest_counts().await {
        state.metrics.inbox_pending.set(counts.inbox_pending as f64);
        state.metrics.dlq_entries.set(counts.dlq_entries as f64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
