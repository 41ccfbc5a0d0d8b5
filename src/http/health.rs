//! Liveness and readiness, on both listeners. Liveness says the process answers;
//! readiness says a webhook would be accepted and processed right now, which
//! only a real commit and a working actor system can prove (`service::health`).
//!
//! On the public listener, where anyone may ask, readiness answers from a
//! check at most a second old and names no internal problem; the admin
//! listener runs the full check every time and lists what is wrong.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::AppState;

/// `/healthz` and the public `/readyz`.
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(public_readyz));
}

/// `/healthz` and the admin listener's full `/readyz`.
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// How long readiness waits for each part of the health check.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

async fn public_readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ready = state
        .health
        .ready_recently(crate::service::health::PUBLIC_CHECK_EVERY, READY_TIMEOUT)
        .await;
    if !ready {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "not ready to take webhooks; the admin listener's /readyz says why",
        ));
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}

async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let problems = state.health.problems(READY_TIMEOUT).await;
    if !problems.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            problems.join("; "),
        )
        .with("problems", json!(problems)));
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}
