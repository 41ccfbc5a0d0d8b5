//! Admin views and actions on orders.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{role_name, DEFAULT_PAGE, MAX_PAGE};
use crate::actors::order::{Cause, OrderMsg};
use crate::domain::order::{Command, OrderState};
use crate::http::auth::{Operator, Role, Viewer};
use crate::http::error::ApiError;
use crate::http::orders::{load_order, order_json, replied_order, route};
use crate::http::{rfc3339, AppState};

#[derive(Deserialize)]
pub(super) struct OrderPage {
    state: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

pub(super) async fn list(
    _: Viewer,
    state: web::Data<AppState>,
    page: web::Query<OrderPage>,
) -> Result<HttpResponse, ApiError> {
    let filter = match page.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(OrderState::parse(text).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("unknown state {text:?}"),
            )
            .with("fields", json!({"state": ["is not an order state"]}))
        })?),
    };
    let limit = page.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let orders = state
        .storage
        .list_orders(filter, page.after, limit)
        .await
        .map_err(ApiError::storage_unavailable)?;
    let next = (orders.len() == limit as usize)
        .then(|| orders.last().map(|o| o.id))
        .flatten();
    let orders: Vec<_> = orders.iter().map(|o| order_json(&o.snapshot)).collect();
    Ok(HttpResponse::Ok().json(json!({"orders": orders, "next": next})))
}

pub(super) async fn detail(
    Viewer(caller): Viewer,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let stored = load_order(&state, &path).await?;
    let journal = state
        .storage
        .order_journal(&path)
        .await
        .map_err(ApiError::storage_unavailable)?;
    let mut order = order_json(&stored.snapshot);
    let customer = match caller.role {
        Role::Operator => stored.customer,
        Role::Viewer => mask_customer(&stored.customer),
    };
    if let Some(map) = order.as_object_mut() {
        map.insert("customer".into(), customer);
    }
    let journal: Vec<_> = journal
        .iter()
        .map(|row| json!({"seq": row.seq, "at": rfc3339(row.at_ms), "kind": row.kind, "cause": row.cause, "data": row.data}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"order": order, "journal": journal})))
}

/// What a viewer sees of a customer: enough to recognise, not to contact.
fn mask_customer(customer: &serde_json::Value) -> serde_json::Value {
    fn mask(value: &serde_json::Value, keep: usize) -> serde_json::Value {
        match value.as_str() {
            Some(text) if !text.is_empty() => {
                let shown: String = text.chars().take(keep).collect();
                json!(format!("{shown}***"))
            }
            _ => value.clone(),
        }
    }
    let c = &customer["customer"];
    let a = &customer["shipping_address"];
    json!({
        "customer": {"name": mask(&c["name"], 1), "email": mask(&c["email"], 1), "phone": mask(&c["phone"], 2)},
        "shipping_address": {"city": a["city"], "state": a["state"], "pincode": mask(&a["pincode"], 3), "country": a["country"]},
    })
}

pub(super) async fn cancel(
    Operator(caller): Operator,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    load_order(&state, &path).await?;
    let cause = Cause::named(format!("admin:{}", role_name(caller.role)));
    tracing::warn!(order_id = %path, peer = caller.peer.as_deref().unwrap_or(""), user_agent = caller.user_agent.as_deref().unwrap_or(""), "operator cancels an order");
    let msg = OrderMsg::Command {
        command: Command::Cancel,
        cause,
    };
    let order = replied_order(route(&state, path.into_inner(), msg).await?)?;
    Ok(HttpResponse::Ok().json(json!({"order": order_json(&order)})))
}
