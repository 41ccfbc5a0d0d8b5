//! Order plumbing shared by the storefront and admin APIs: the JSON views of an
//! order, routing a message to its actor, and the mapping of its refusals to
//! answers.

use actix_web::http::StatusCode;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{rfc3339, AppState};
use crate::actors::order::{OrderError, OrderMsg, OrderReply};
use crate::actors::registry::Route;
use crate::domain::order::OrderSnapshot;
use crate::storage::StoredOrder;

/// The order as the storefront sees it after registering a checkout.
pub fn order_json(order: &OrderSnapshot) -> Value {
    json!({
        "order_id": order.order_id,
        "state": order.state,
        "razorpay_order_id": order.razorpay_order_id,
        "payment_method": order.payment_method,
        "currency": order.currency,
        "amount_paise": order.amount_paise,
        "items": order.lines.iter().map(|l| json!({
            "sku": l.sku, "name": l.name, "quantity": l.quantity, "unit_price_paise": l.unit_price_paise,
        })).collect::<Vec<_>>(),
        "reserved_until": order.reserved_until_ms.map(rfc3339),
        "refund_due": order.refund_due,
        "shipping": {
            "attempts": order.shipping.attempts,
            "account": order.shipping.account,
            "shiprocket_order_id": order.shipping.sr_order_id,
            "shipment_id": order.shipping.shipment_id,
            "awb": order.shipping.awb,
            "courier": order.shipping.courier,
            "last_error": order.shipping.last_error,
            "next_attempt_at": order.shipping.next_attempt_at_ms.map(rfc3339),
            "in_doubt": order.shipping.in_doubt,
            "cancellations": order.shipping.cleanups.iter().map(|c| json!({
                "account": c.account, "purpose": c.purpose, "shiprocket_order_ids": c.sr_order_ids,
                "attempts": c.attempts, "next_attempt_at": rfc3339(c.next_at_ms), "last_error": c.last_error,
            })).collect::<Vec<_>>(),
        },
        "created_at": rfc3339(order.created_at_ms),
        "updated_at": rfc3339(order.updated_at_ms),
    })
}

/// SPEC §5's public status shape.
pub fn public_status(order: &OrderSnapshot) -> Value {
    let awb = order.shipping.awb.as_deref();
    json!({
        "order_id": order.order_id,
        "state": order.state,
        "amount_paise": order.amount_paise,
        "awb": awb,
        "courier": order.shipping.courier,
        "tracking_url": awb.map(|awb| format!("https://shiprocket.co/tracking/{awb}")),
        "updated_at": rfc3339(order.updated_at_ms),
    })
}

/// Maps an order actor's refusal to the storefront's answer.
pub fn order_error(error: OrderError) -> ApiError {
    match error {
        OrderError::NotFound => {
            ApiError::new(StatusCode::NOT_FOUND, "order_not_found", "no such order")
        }
        OrderError::Conflict => ApiError::new(
            StatusCode::CONFLICT,
            "order_conflict",
            "an order with this order_id exists with a different checkout",
        ),
        OrderError::InsufficientStock(skus) => ApiError::new(
            StatusCode::CONFLICT,
            "insufficient_stock",
            "not enough stock for some lines; nothing was reserved",
        )
        .with("skus", json!(skus)),
        OrderError::AmountMismatch => ApiError::new(
            StatusCode::CONFLICT,
            "amount_mismatch",
            "the payment's amount or currency differs from the order's",
        ),
        OrderError::InvalidTransition { from, to } => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_transition",
            format!("an order in {from} cannot move to {to}"),
        ),
        OrderError::Paused => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "processing_paused",
            "order processing is paused by an operator; retry later",
        ),
        OrderError::Storage(e) => ApiError::storage_unavailable(e),
        OrderError::Stock(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stock_unavailable",
            e.to_string(),
        ),
        OrderError::Mailbox(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "orders_unavailable",
            e.to_string(),
        ),
    }
}

/// An order from storage, or 404.
pub async fn load_order(state: &AppState, order_id: &str) -> Result<StoredOrder, ApiError> {
    state
        .storage
        .load_order(order_id)
        .await
        .map_err(ApiError::storage_unavailable)?
        .ok_or_else(|| order_error(OrderError::NotFound))
}

/// An order's snapshot, or 404: for views without customer data.
pub async fn load_snapshot(state: &AppState, order_id: &str) -> Result<OrderSnapshot, ApiError> {
    state
        .storage
        .load_snapshot(order_id)
        .await
        .map_err(ApiError::storage_unavailable)?
        .ok_or_else(|| order_error(OrderError::NotFound))
}

/// The order an actor's reply carries.
pub fn replied_order(reply: OrderReply) -> Result<OrderSnapshot, ApiError> {
    match reply {
        OrderReply::Created(order) | OrderReply::Existing(order) | OrderReply::Order(order) => {
            Ok(order)
        }
        OrderReply::Deferred => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "processing_paused",
            "order processing is paused by an operator; the action is stored and runs on resume",
        )),
        OrderReply::Passivated | OrderReply::Planned(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "orders_unavailable",
            "the order's actor stopped; retry",
        )),
    }
}

/// Sends a message to an order's actor and maps its refusal to an answer.
pub async fn route(
    state: &AppState,
    order_id: String,
    msg: OrderMsg,
) -> Result<OrderReply, ApiError> {
    state
        .orders
        .send(Route { order_id, msg })
        .await
        .map_err(|e| order_error(OrderError::Mailbox(e)))?
        .map_err(order_error)
}
