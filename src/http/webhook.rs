//! `POST /webhooks/razorpay` (SPEC §4). The handler bounds and reads the raw
//! body, forwards it with the two Razorpay headers to the worker's
//! [`WebhookIngest`] actor, and turns the reply into a status code. Everything
//! signed gets a 200 once durable; only an unsigned or oversized request gets a
//! 4xx, and only a failed commit a 503.

use std::time::Instant;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::actors::ingest::{IngestError, IngestReply, IngestWebhook, WebhookIngest};
use crate::telemetry::metrics::WebhookOutcome;

pub const SIGNATURE_HEADER: &str = "X-Razorpay-Signature";
pub const EVENT_ID_HEADER: &str = "X-Razorpay-Event-Id";

pub async fn razorpay(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    ingest: web::Data<Addr<WebhookIngest>>,
) -> HttpResponse {
    let started = Instant::now();
    let (outcome, response) = match handle(&req, payload, &state, &ingest).await {
        Ok((outcome, response)) => (outcome, response),
        Err((outcome, error)) => {
            use actix_web::ResponseError;
            (outcome, error.error_response())
        }
    };
    state.metrics.webhook_request(outcome);
    if response.status() == StatusCode::OK {
        state
            .metrics
            .webhook_ack_seconds
            .record(started.elapsed().as_secs_f64());
    }
    response
}

type Failure = (WebhookOutcome, ApiError);

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    ingest: &Addr<WebhookIngest>,
) -> Result<(WebhookOutcome, HttpResponse), Failure> {
    let limit = state.settings.config.server.max_body_bytes;
    let body = read_body(req, payload, limit).await?;
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let message = IngestWebhook {
        body,
        signature: header(SIGNATURE_HEADER),
        event_id: header(EVENT_ID_HEADER),
    };
    let reply = ingest.send(message).await.map_err(|e| {
        (
            WebhookOutcome::Unavailable,
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ingest_unavailable",
                e.to_string(),
            ),
        )
    })?;
    match reply {
        Ok(IngestReply::Accepted { event_id }) => Ok((
            WebhookOutcome::Accepted,
            HttpResponse::Ok().json(json!({"status": "accepted", "event_id": event_id})),
        )),
        Ok(IngestReply::Duplicate { event_id }) => Ok((
            WebhookOutcome::Duplicate,
            HttpResponse::Ok().json(json!({"status": "duplicate", "event_id": event_id})),
        )),
        Ok(IngestReply::Quarantined { event_id, reason }) => Ok((
            WebhookOutcome::Quarantined,
            HttpResponse::Ok()
                .json(json!({"status": "quarantined", "reason": reason, "event_id": event_id})),
        )),
        Err(IngestError::InvalidSignature) => {
            let peer = req.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let forwarded_for = header("X-Forwarded-For").unwrap_or_default();
            tracing::warn!(peer = %peer, forwarded_for = %forwarded_for, "webhook with missing or invalid signature rejected");
            Err((
                WebhookOutcome::InvalidSignature,
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_signature",
                    "X-Razorpay-Signature is missing or is not the HMAC-SHA256 of the body under the webhook secret",
                ),
            ))
        }
        Err(IngestError::Unavailable(e)) => {
            tracing::error!(error = %e, "webhook not stored; answering 503 so Razorpay retries");
            Err((
                WebhookOutcome::Unavailable,
                ApiError::storage_unavailable(e),
            ))
        }
    }
}

/// Reads the whole body, refusing it as soon as it is known to exceed `limit`:
/// from `Content-Length` before reading, or while streaming a chunked body.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: u64,
) -> Result<bytes::Bytes, Failure> {
    let too_large = || {
        (
            WebhookOutcome::TooLarge,
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body exceeds server.max_body_bytes ({limit} bytes)"),
            ),
        )
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(4096).min(limit) as usize);
    while let Some(chunk) = payload.next().await {
        // A body that breaks off cannot be verified: counted with the unverifiable.
        let chunk = chunk.map_err(|e| {
            (
                WebhookOutcome::InvalidSignature,
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("cannot read the body: {e}"),
                ),
            )
        })?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
