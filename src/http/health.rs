//! Liveness and readiness, on both listeners. Liveness says the process answers;
//! readiness says a webhook would be accepted and processed right now, which
//! only a real commit and a working actor system can prove (`service::health`).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// How long readiness waits for each part of the health check.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

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
