//! `POST /webhooks/tracking`: Shiprocket's tracking webhook (SPEC §8). The
//! `x-api-key` header must equal `shiprocket.tracking_token`; the order is found
//! by our channel `order_id` or by `awb`; its actor journals the update and
//! moves the order where `shipment_status_id` says. Every authenticated request
//! gets a 200 once its effect is durable, unknown shipments included (they go
//! to the dead-letter queue as `unknown_shipment`).

use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::orders::route;
use super::AppState;
use crate::actors::order::{Cause, OrderMsg};
use crate::domain::order::Command;
use crate::storage::{DeferredCommand, OrderDeadLetter};

fn authorized(req: &HttpRequest, state: &AppState) -> bool {
    let Some(expected) = state.settings.secrets.tracking_token.as_ref() else {
        return false;
    };
    let presented = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let expected = Sha256::digest(expected.expose().as_bytes());
    let presented = Sha256::digest(presented.as_bytes());
    expected.ct_eq(&presented).into()
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
            reason: "unknown_shape",
            detail: "tracking update without awb and shipment_status_id".into(),
            event_id: None,
        };
        state
            .storage
            .file_dead_letter("tracking", letter, now)
            .await
            .map_err(ApiError::storage_unavailable)?;
        return Ok(
            HttpResponse::Ok().json(json!({"status": "quarantined", "reason": "unknown_shape"}))
        );
    };
    let by_channel = match &channel_order_id {
        Some(id) => state
            .storage
            .load_order(id)
            .await
            .map_err(ApiError::storage_unavailable)?
            .map(|o| o.snapshot.order_id),
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
            reason: "unknown_shipment",
            detail: format!("no order for AWB {awb} (order_id {channel_order_id:?})"),
            event_id: Some(format!("{awb}:{status_id}:{timestamp}")),
        };
        state
            .storage
            .file_dead_letter("tracking", letter, now)
            .await
            .map_err(ApiError::storage_unavailable)?;
        return Ok(HttpResponse::Ok().json(json!({"status": "unknown_shipment"})));
    };
    let command = Command::Track {
        awb: awb.clone(),
        status_id,
        timestamp: timestamp.clone(),
    };
    let cause = format!("tracking:{awb}:{status_id}");
    if state.processing_paused.load(Ordering::SeqCst) {
        // Kill switch on: the update waits in storage and applies on resume.
        state
            .storage
            .defer_command(DeferredCommand {
                id: 0,
                order_id: order_id.clone(),
                command,
                cause,
                received_at_ms: now,
            })
            .await
            .map_err(ApiError::storage_unavailable)?;
        return Ok(HttpResponse::Ok().json(json!({"status": "deferred", "order_id": order_id})));
    }
    let cause = Cause::named(cause);
    match route(
        &state,
        order_id.clone(),
        OrderMsg::Command { command, cause },
    )
    .await
    {
        Ok(_) => Ok(HttpResponse::Ok().json(json!({"status": "accepted", "order_id": order_id}))),
        Err(e) if e.status == StatusCode::CONFLICT => {
            // Journaled or refused by the lifecycle: Shiprocket has nothing to retry.
            Ok(HttpResponse::Ok().json(json!({"status": "ignored", "order_id": order_id})))
        }
        Err(e) => Err(e),
    }
}
