//! The admin API (SPEC §9) and `/metrics`, on the admin listener only.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use actix_web::http::StatusCode;

use super::auth::{Operator, Role, Viewer};
use super::error::ApiError;
use super::storefront::{load_order, order_json, replied_order, route};
use super::{rfc3339, AppState};
use crate::actors::order::{Cause, OrderMsg};
use crate::actors::stock::{ApplyStock, StockFailure};
use crate::domain::order::{Command, OrderState};
use crate::domain::stock::{StockChange, StockLevel};
use crate::storage::DeadLetter;
use crate::storage::{AllocationStep, ProductFacts};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/status", web::get().to(status))
        .route("/admin/dlq", web::get().to(dead_letters))
        .route("/admin/orders", web::get().to(list_orders))
        .route("/admin/orders/{order_id}", web::get().to(get_order))
        .route(
            "/admin/orders/{order_id}/cancel",
            web::post().to(cancel_order),
        )
        .route("/admin/stock/reconcile", web::get().to(reconcile_stock))
        .route("/admin/stock/{sku}", web::get().to(get_stock))
        .route("/admin/stock/{sku}", web::put().to(put_stock))
        .route("/admin/stock/{sku}/adjust", web::post().to(adjust_stock))
        .route("/admin/processing/pause", web::post().to(pause))
        .route("/admin/processing/resume", web::post().to(resume))
        .route("/metrics", web::get().to(metrics));
}

async fn status(_: Viewer, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let counts = state
        .storage
        .ingest_counts()
        .await
        .map_err(ApiError::storage_unavailable)?;
    let by_state = state
        .storage
        .order_counts()
        .await
        .map_err(ApiError::storage_unavailable)?;
    let orders_by_state: serde_json::Map<String, serde_json::Value> = by_state
        .iter()
        .map(|(s, n)| (s.as_str().to_owned(), json!(n)))
        .collect();
    let config = &state.settings.config;
    Ok(HttpResponse::Ok().json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "processing_paused": state.processing_paused.load(Ordering::SeqCst),
        "shipping_mode": config.shipping.mode.as_str(),
        "inbox_pending": counts.inbox_pending,
        "dlq_entries": counts.dlq_entries,
        "orders_by_state": orders_by_state,
        "actors": {
            "orders_live": state.order_actors.live.load(Ordering::Relaxed),
            "orders_live_high_water": state.order_actors.live_high_water.load(Ordering::Relaxed),
            "orders_started_total": state.order_actors.started_total.load(Ordering::Relaxed),
            "stock_shards": state.stock.status(),
            "gateways": [],
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
    if let Ok(by_state) = state.storage.order_counts().await {
        state.metrics.set_order_counts(&by_state);
    }
    let m = &state.metrics;
    m.actors_live_orders
        .set(state.order_actors.live.load(Ordering::Relaxed) as f64);
    m.actors_live_stock_shards
        .set(state.stock.status().len() as f64);
    m.actors_live_ingest
        .set(state.ingest_actors.load(Ordering::Relaxed) as f64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

#[derive(Deserialize)]
struct OrderPage {
    state: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

async fn list_orders(
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

async fn get_order(
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

async fn cancel_order(
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

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
    }
}

fn stock_json(sku: &str, level: StockLevel) -> serde_json::Value {
    json!({"sku": sku, "on_hand": level.on_hand, "reserved": level.reserved, "available": level.available()})
}

async fn get_stock(
    _: Viewer,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let item = state
        .storage
        .stock_item(&path)
        .await
        .map_err(ApiError::storage_unavailable)?;
    let Some(item) = item else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "sku_not_found",
            "no stock is recorded for this SKU",
        ));
    };
    let mut body = stock_json(&item.sku, item.level);
    if let Some(map) = body.as_object_mut() {
        map.insert("product".into(), json!(item.facts));
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
struct PutStock {
    on_hand: i64,
    name: Option<String>,
    weight_kg: Option<f64>,
    dims_cm: Option<Vec<f64>>,
    hsn: Option<String>,
}

#[derive(Deserialize)]
struct AdjustStock {
    delta: i64,
    reason: String,
}

fn stock_refusal(e: StockFailure) -> ApiError {
    match e {
        StockFailure::Refused(refusal) => {
            ApiError::new(StatusCode::CONFLICT, "stock_refused", refusal.to_string())
        }
        StockFailure::Storage(e) => ApiError::storage_unavailable(e),
        StockFailure::Mailbox(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stock_unavailable",
            e.to_string(),
        ),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            e.to_string(),
        )
    })
}

async fn put_stock(
    Operator(caller): Operator,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let put: PutStock = json_body(&body)?;
    let sku = path.into_inner();
    if put.on_hand < 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "on_hand must not be negative",
        )
        .with("fields", json!({"on_hand": ["must not be negative"]})));
    }
    if put.name.is_some() || put.weight_kg.is_some() || put.dims_cm.is_some() || put.hsn.is_some() {
        let facts = ProductFacts {
            name: put.name,
            weight_kg: put.weight_kg,
            dims_cm: put.dims_cm,
            hsn: put.hsn,
        };
        state
            .storage
            .set_product_facts(&sku, facts)
            .await
            .map_err(ApiError::storage_unavailable)?;
    }
    apply_stock(
        &state,
        &sku,
        StockChange::Set(put.on_hand),
        format!("set by {}", role_name(caller.role)),
    )
    .await?;
    let level = state.stock.level(&sku).await.map_err(stock_refusal)?;
    Ok(HttpResponse::Ok().json(stock_json(&sku, level)))
}

async fn adjust_stock(
    Operator(caller): Operator,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let adjust: AdjustStock = json_body(&body)?;
    if adjust.reason.trim().is_empty() || adjust.delta == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "delta must be non-zero and reason given",
        )
        .with(
            "fields",
            json!({"delta": ["must not be 0"], "reason": ["is required"]}),
        ));
    }
    let sku = path.into_inner();
    let reason = format!("{} ({})", adjust.reason.trim(), role_name(caller.role));
    apply_stock(&state, &sku, StockChange::Adjust(adjust.delta), reason).await?;
    let level = state.stock.level(&sku).await.map_err(stock_refusal)?;
    Ok(HttpResponse::Ok().json(stock_json(&sku, level)))
}

async fn apply_stock(
    state: &AppState,
    sku: &str,
    change: StockChange,
    reason: String,
) -> Result<(), ApiError> {
    if sku.is_empty() || sku.len() > 100 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "sku must be 1 to 100 characters",
        ));
    }
    state
        .stock
        .apply(ApplyStock {
            sku: sku.to_owned(),
            change,
            allocation: AllocationStep::None,
            reason,
        })
        .await
        .map_err(stock_refusal)?;
    Ok(())
}

async fn reconcile_stock(_: Viewer, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (checked, mismatches) = state
        .storage
        .reconcile_stock()
        .await
        .map_err(ApiError::storage_unavailable)?;
    state
        .metrics
        .stock_reconcile_mismatches
        .set(mismatches.len() as f64);
    Ok(HttpResponse::Ok().json(json!({"checked": checked, "mismatches": mismatches})))
}
