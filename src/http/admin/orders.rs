//! Admin views and actions on orders.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{next_cursor, page_limit, role_name};
use crate::actors::order::{Cause, OrderError, OrderMsg};
use crate::domain::checkout::CustomerRecord;
use crate::domain::order::{Command, OrderState};
use crate::http::auth::{Operator, Role, Viewer};
use crate::http::error::ApiError;
use crate::http::orders::{order_error, order_json, replied_order, route};
use crate::http::{rfc3339, AppState};

#[derive(Deserialize)]
pub(crate) struct OrderPage {
    pub(crate) state: Option<String>,
    pub(crate) after: Option<i64>,
    pub(crate) limit: Option<u32>,
}

pub(crate) async fn list(
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
    let limit = page_limit(page.limit);
    let orders = state
        .storage
        .list_orders(filter, page.after, limit)
        .await
        .map_err(ApiError::storage_unavailable)?;
    let next = next_cursor(&orders, limit, |o| o.id);
    let orders: Vec<_> = orders.iter().map(|o| order_json(&o.snapshot)).collect();
    Ok(HttpResponse::Ok().json(json!({"orders": orders, "next": next})))
}

pub(crate) async fn detail(
    Viewer(caller): Viewer,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (stored, journal) = state
        .storage
        .order_with_journal(&path)
        .await
        .map_err(ApiError::storage_unavailable)?
        .ok_or_else(|| order_error(OrderError::NotFound))?;
    let mut order = order_json(&stored.snapshot);
    let customer = match caller.role {
        Role::Operator => json!(stored.customer),
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
fn mask_customer(record: &CustomerRecord) -> serde_json::Value {
    fn mask(text: &str, keep: usize) -> String {
        if text.is_empty() {
            return String::new();
        }
        let shown: String = text.chars().take(keep).collect();
        format!("{shown}***")
    }
    let (c, a) = (&record.customer, &record.shipping_address);
    json!({
        "customer": {"name": mask(&c.name, 1), "email": mask(&c.email, 1), "phone": mask(&c.phone, 2)},
        "shipping_address": {"city": a.city, "state": a.state, "pincode": mask(&a.pincode, 3), "country": a.country},
    })
}

pub(crate) async fn cancel(
    Operator(caller): Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    act(
        &state,
        &req,
        &caller,
        path.into_inner(),
        Command::Cancel,
        "cancel",
    )
    .await
}

/// Sends `command` to `order_id` on an operator's behalf and answers with the
/// order (404 from the actor when there is no such order). The request's
/// audit entry is committed with the order's change.
async fn act(
    state: &AppState,
    req: &HttpRequest,
    caller: &crate::http::auth::Caller,
    order_id: String,
    command: Command,
    what: &str,
) -> Result<HttpResponse, ApiError> {
    tracing::warn!(order_id = %order_id, action = what, peer = caller.peer.as_deref().unwrap_or(""), user_agent = caller.user_agent.as_deref().unwrap_or(""), "operator action on an order");
    let cause = Cause::operator(
        format!("admin:{}:{what}", role_name(caller.role)),
        super::audit::audited_action(req),
    );
    let order = replied_order(route(state, order_id, OrderMsg::Command { command, cause }).await?)?;
    Ok(HttpResponse::Ok().json(json!({"order": order_json(&order)})))
}

pub(crate) async fn retry_shipping(
    Operator(caller): Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    act(
        &state,
        &req,
        &caller,
        path.into_inner(),
        Command::RetryShipping,
        "retry_shipping",
    )
    .await
}

#[derive(Deserialize)]
pub(super) struct BulkRetry {
    state: String,
}

/// How many orders one bulk retry moves at most.
const BULK_LIMIT: u32 = 10_000;

pub(crate) async fn retry_shipping_bulk(
    Operator(caller): Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: BulkRetry = super::json_body(&body)?;
    if request.state != OrderState::ManualRequired.as_str() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "only manual_required orders can be sent back to shipping",
        )
        .with("fields", json!({"state": ["must be manual_required"]})));
    }
    let ids = state
        .storage
        .order_ids_in_state(OrderState::ManualRequired, BULK_LIMIT)
        .await
        .map_err(ApiError::storage_unavailable)?;
    tracing::warn!(
        orders = ids.len(),
        peer = caller.peer.as_deref().unwrap_or(""),
        "operator retries shipping in bulk"
    );
    let retried = retry_each(&state, &req, &caller, "retry_shipping_bulk", ids)
        .await
        .into_iter()
        .filter(|(_, outcome)| outcome.is_ok())
        .count();
    Ok(HttpResponse::Ok().json(json!({"count": retried})))
}

/// Sends each of `order_ids` back to shipping on an operator's behalf, at
/// once, each retry carrying the request's audit entry naming its order:
/// the bulk retry of the API and the console's retry of the orders ticked.
pub(crate) async fn retry_each(
    state: &AppState,
    req: &HttpRequest,
    caller: &crate::http::auth::Caller,
    what: &str,
    order_ids: Vec<String>,
) -> Vec<(String, Result<(), ApiError>)> {
    let label = format!("admin:{}:{what}", role_name(caller.role));
    let audit = super::audit::audited_action(req);
    let sends = order_ids.into_iter().map(|order_id| {
        let audit = audit.clone().map(|mut a| {
            a.record.subject = Some(order_id.clone());
            a
        });
        let msg = OrderMsg::Command {
            command: Command::RetryShipping,
            cause: Cause::operator(label.clone(), audit),
        };
        async move {
            // Deferred while paused counts: it runs on resume.
            let outcome = route(state, order_id.clone(), msg).await.map(|_| ());
            (order_id, outcome)
        }
    });
    futures_util::future::join_all(sends).await
}

#[derive(Deserialize)]
pub(crate) struct MarkShipped {
    awb: Option<String>,
    courier: Option<String>,
}

pub(crate) async fn mark_shipped(
    Operator(caller): Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: MarkShipped = super::json_body(&body)?;
    let command = Command::MarkShipped {
        awb: request.awb.filter(|a| !a.trim().is_empty()),
        courier: request.courier.filter(|c| !c.trim().is_empty()),
    };
    act(
        &state,
        &req,
        &caller,
        path.into_inner(),
        command,
        "mark_shipped",
    )
    .await
}
