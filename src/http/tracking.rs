//! `POST /webhooks/tracking`: Shiprocket's tracking webhook (SPEC §8). The
//! `x-api-key` header must equal `shiprocket.tracking_token`; the order is found
//! by our channel `order_id` or by `awb`; its actor journals the update and
//! moves the order where `shipment_status_id` says. Every authenticated request
//! gets a 200 once its effect is durable, unknown shipments included (they go
//! to the dead-letter queue as `unknown_shipment`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::orders::route;
use super::AppState;
use crate::actors::order::{Cause, OrderMsg, OrderReply};
use crate::domain::dead_letter::{LetterReason, LetterSource};
use crate::domain::order::Command;
use crate::storage::OrderDeadLetter;

fn authorized(req: &HttpRequest, state: &AppState) -> bool {
    let Some(expected) = state.tracking_token.as_ref() else {
        return false;
    };
    let presented = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    expected.matches(presented)
}

fn text(body: &Value, key: &str) -> Option<String> {
    match body.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub async fn shiprocket(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    if !authorized(&req, &state) {
        tracing::warn!(
            peer = req.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            "tracking webhook with a wrong x-api-key"
        );
        return Err(ApiError::unauthorized());
    }
    let now = state.clock.now_ms();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let fields = parsed.as_ref().and_then(|b| {
        Some((
            text(b, "awb")?,
            text(b, "shipment_status_id")?.parse::<i64>().ok()?,
            text(b, "current_timestamp").unwrap_or_default(),
            text(b, "order_id"),
        ))
    });
    let Some((awb, status_id, timestamp, channel_order_id)) = fields else {
        let letter = OrderDeadLetter {
            reason: LetterReason::UnknownShape,
            detail: "tracking update without awb and shipment_status_id".into(),
            event_id: None,
        };
        state
            .storage
            .file_dead_letter(LetterSource::Tracking, letter, now)
            .await
            .map_err(ApiError::storage_unavailable)?;
        return Ok(
            HttpResponse::Ok().json(json!({"status": "quarantined", "reason": "unknown_shape"}))
        );
    };
    let by_channel = match &channel_order_id {
        Some(id) => state
            .storage
            .load_snapshot(id)
            .await
            .map_err(ApiError::storage_unavailable)?
            .map(|o| o.order_id),
        None => None,
    };
    let order_id = match by_channel {
        Some(id) => Some(id),
        None => state
            .storage
            .order_id_for_awb(&awb)
            .await
            .map_err(ApiError::storage_unavailable)?,
    };
    let Some(order_id) = order_id else {
        let letter = OrderDeadLetter {
            reason: LetterReason::UnknownShipment,
            detail: format!("no order for AWB {awb} (order_id {channel_order_id:?})"),
            event_id: Some(update_key(&awb, status_id, &timestamp)),
        };
        state
            .storage
            .file_dead_letter(LetterSource::Tracking, letter, now)
            .await
            .map_err(ApiError::storage_unavailable)?;
        return Ok(HttpResponse::Ok().json(json!({"status": "unknown_shipment"})));
    };
    let cause = format!("tracking:{awb}:{status_id}");
    let status = match apply_update(&state, &order_id, awb, status_id, timestamp, cause).await? {
        Applied::Yes => "accepted",
        // Kill switch on: the update waits in storage and applies on resume.
        Applied::Deferred => "deferred",
        Applied::Ignored(_) => "ignored",
    };
    Ok(HttpResponse::Ok().json(json!({"status": status, "order_id": order_id})))
}

/// The dead-letter key of a tracking update: `awb:status_id:timestamp`.
fn update_key(awb: &str, status_id: i64, timestamp: &str) -> String {
    format!("{awb}:{status_id}:{timestamp}")
}

/// The AWB, status and timestamp of an [`update_key`] (timestamps may hold colons).
pub fn parse_update_key(key: &str) -> Option<(String, i64, String)> {
    let mut parts = key.splitn(3, ':');
    let awb = parts.next()?.to_owned();
    let status_id = parts.next()?.parse::<i64>().ok()?;
    let timestamp = parts.next().unwrap_or_default().to_owned();
    Some((awb, status_id, timestamp))
}

/// What a tracking update did to its order.
pub enum Applied {
    Yes,
    /// Processing is paused: it applies on resume.
    Deferred,
    /// Journaled before, or refused by the lifecycle: nothing for Shiprocket to retry.
    Ignored(String),
}

/// Hands a tracking update to its order's actor.
pub async fn apply_update(
    state: &AppState,
    order_id: &str,
    awb: String,
    status_id: i64,
    timestamp: String,
    cause: String,
) -> Result<Applied, ApiError> {
    let command = Command::Track {
        awb,
        status_id,
        timestamp,
    };
    let msg = OrderMsg::Command {
        command,
        cause: Cause::named(cause),
    };
    match route(state, order_id.to_owned(), msg).await {
        Ok(OrderReply::Deferred) => Ok(Applied::Deferred),
        Ok(_) => Ok(Applied::Yes),
        Err(e) if e.status == StatusCode::CONFLICT => Ok(Applied::Ignored(e.message)),
        Err(e) => Err(e),
    }
}
