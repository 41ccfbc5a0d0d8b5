//! Liveness and readiness, on both listeners. Liveness says the process answers;
//! readiness says a webhook would be accepted right now, which only a real
//! commit can prove.

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

async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state
        .ingest_actors
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "webhook ingest actors are not running",
        ));
    }
    state
        .storage
        .probe_writable(state.clock.now_ms())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("storage is not writable: {e}"),
            )
        })?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}
