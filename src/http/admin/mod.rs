//! The admin API (SPEC §9) and `/metrics`, on the admin listener only: status,
//! dead letters and the kill switch here; orders and stock in their own files.

pub mod audit;
pub(crate) mod dlq;
pub(crate) mod orders;
pub(crate) mod stock;

use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Operator, Role, Viewer};
use super::error::ApiError;
use super::{rfc3339, AppState};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/status", web::get().to(status))
        .route("/admin/dlq", web::get().to(dlq::list))
        .route("/admin/dlq/{id}/replay", web::post().to(dlq::replay))
        .route("/admin/audit", web::get().to(audit::list))
        .route("/admin/orders", web::get().to(orders::list))
        .route("/admin/orders/{order_id}", web::get().to(orders::detail))
        .route(
            "/admin/orders/retry-shipping",
            web::post().to(orders::retry_shipping_bulk),
        )
        .route(
            "/admin/orders/{order_id}/cancel",
            web::post().to(orders::cancel),
        )
        .route(
            "/admin/orders/{order_id}/retry-shipping",
            web::post().to(orders::retry_shipping),
        )
        .route(
            "/admin/orders/{order_id}/mark-shipped",
            web::post().to(orders::mark_shipped),
        )
        .route("/admin/shipping-mode", web::put().to(shipping_mode))
        .route("/admin/stock/reconcile", web::get().to(stock::reconcile))
        .route("/admin/stock/{sku}", web::get().to(stock::get))
        .route("/admin/stock/{sku}", web::put().to(stock::put))
        .route("/admin/stock/{sku}/adjust", web::post().to(stock::adjust))
        .route("/admin/processing/pause", web::post().to(pause))
        .route("/admin/processing/resume", web::post().to(resume))
        .route("/metrics", web::get().to(metrics));
}

pub(crate) async fn status(
    _: Viewer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
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
    let backlog = state
        .shipping_queue
        .backlog()
        .await
        .map_err(ApiError::storage_unavailable)?;
    let orders_by_state: serde_json::Map<String, serde_json::Value> = by_state
        .iter()
        .map(|(s, n)| (s.as_str().to_owned(), json!(n)))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "processing_paused": state.switch.is_paused(),
        "shipping_mode": if state.shipping_manual.load(Ordering::SeqCst) { "manual" } else { "auto" },
        "inbox_pending": counts.inbox_pending,
        "dlq_entries": counts.dlq_entries,
        "orders_by_state": orders_by_state,
        "actors": {
            "orders_live": state.order_actors.live.load(Ordering::Relaxed),
            "orders_live_high_water": state.order_actors.live_high_water.load(Ordering::Relaxed),
            "orders_started_total": state.order_actors.started_total.load(Ordering::Relaxed),
            "stock_shards": state.stock.status(),
            "gateways": state.router.status(&backlog),
            "webhook_ingest": state.ingest_actors.load(Ordering::Relaxed),
        },
        "shipping_queue": shipping_queue_json(&backlog, state.clock.now_ms()),
        "storage": state.storage.writer_stats(),
        "cluster": cluster_json(&state).await?,
    })))
}

/// SPEC §9's `cluster` block. On SQLite the cluster is this instance alone,
/// holding no leases: it owns everything by owning the file. On PostgreSQL
/// it is the lease table as the database sees it now, and the live instances
/// with the leases each holds.
async fn cluster_json(state: &AppState) -> Result<serde_json::Value, ApiError> {
    let backend = state.settings.config.storage.backend.as_str();
    let Some(pg) = state.storage.postgres() else {
        return Ok(json!({
            "backend": backend,
            "instance_id": state.instance_id,
            "instances": [{
                "instance_id": state.instance_id,
                "leases": 0,
                "last_seen": rfc3339(state.clock.now_ms()),
            }],
            "leases": [],
        }));
    };
    let (instances, leases) = futures_util::future::try_join(pg.instances(), pg.leases())
        .await
        .map_err(ApiError::storage_unavailable)?;
    let held = |id: &str| {
        leases
            .iter()
            .filter(|l| l.live && l.owner.as_deref() == Some(id))
            .count()
    };
    Ok(json!({
        "backend": backend,
        "instance_id": state.instance_id,
        "instances": instances.iter().filter(|i| i.live).map(|i| json!({
            "instance_id": i.instance_id,
            "leases": held(&i.instance_id),
            "last_seen": rfc3339(i.last_seen_ms),
        })).collect::<Vec<_>>(),
        "leases": leases.iter().filter(|l| l.live).map(|l| json!({
            "resource": l.resource.to_string(),
            "owner": l.owner,
            "epoch": l.epoch,
            "expires_at": rfc3339(l.expires_at_ms),
        })).collect::<Vec<_>>(),
    }))
}

/// The queue's rows per account (`"any"`: not yet assigned) and its oldest payment.
fn shipping_queue_json(backlog: &[crate::storage::QueueBacklog], now_ms: i64) -> serde_json::Value {
    let by_account: serde_json::Map<String, serde_json::Value> = backlog
        .iter()
        .map(|b| {
            let name = b.account.clone().unwrap_or_else(|| "any".into());
            (name, json!({"orders": b.orders, "calls": b.calls}))
        })
        .collect();
    let oldest = backlog.iter().filter_map(|b| b.oldest_paid_at_ms).min();
    json!({
        "orders": backlog.iter().map(|b| b.orders).sum::<u64>(),
        "by_account": by_account,
        "oldest_paid_at": oldest.map(super::rfc3339),
        "oldest_seconds": oldest.map_or(0, |at| (now_ms - at).max(0) / 1000),
    })
}

/// `?after=&limit=` of the paged listings.
#[derive(Deserialize)]
pub(crate) struct Page {
    pub(crate) after: Option<i64>,
    pub(crate) limit: Option<u32>,
}

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// How many rows a page holds: the asked-for limit within bounds.
pub(super) fn page_limit(asked: Option<u32>) -> u32 {
    asked.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// The `next` cursor of a page: the last row's key when the page is full.
pub(super) fn next_cursor<T>(rows: &[T], limit: u32, key: impl Fn(&T) -> i64) -> Option<i64> {
    rows.last()
        .filter(|_| rows.len() == limit as usize)
        .map(key)
}

pub(crate) async fn pause(
    caller: Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    set_paused(caller, &req, state, true).await
}

pub(crate) async fn resume(
    caller: Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    set_paused(caller, &req, state, false).await
}

async fn set_paused(
    Operator(caller): Operator,
    req: &HttpRequest,
    state: web::Data<AppState>,
    paused: bool,
) -> Result<HttpResponse, ApiError> {
    state
        .switch
        .set(paused, audit::audited_action(req))
        .await
        .map_err(ApiError::storage_unavailable)?;
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
    if let Ok(backlog) = state.shipping_queue.backlog().await {
        let accounts: Vec<&str> = state
            .router
            .accounts()
            .iter()
            .map(|a| a.account.as_str())
            .collect();
        state
            .metrics
            .set_shipping_queue(&accounts, &backlog, state.clock.now_ms());
    }
    let m = &state.metrics;
    m.actors_live_orders
        .set(state.order_actors.live.load(Ordering::Relaxed) as f64);
    m.actors_live_stock_shards
        .set(state.stock.shard_count() as f64);
    m.actors_live_ingest
        .set(state.ingest_actors.load(Ordering::Relaxed) as f64);
    if let Some(ownership) = &state.ownership {
        m.set_cluster_leases(&ownership.counts());
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

pub(super) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
    }
}

pub(super) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", e.to_string()))
}

#[derive(Deserialize)]
struct ShippingModeBody {
    mode: String,
}

pub(crate) async fn shipping_mode(
    Operator(caller): Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: ShippingModeBody = json_body(&body)?;
    let manual = match request.mode.as_str() {
        "manual" => true,
        "auto" => false,
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("mode must be \"auto\" or \"manual\", got {other:?}"),
            )
            .with("fields", json!({"mode": ["must be auto or manual"]})))
        }
    };
    state
        .storage
        .set_shipping_manual(manual, audit::audited_action(&req))
        .await
        .map_err(ApiError::storage_unavailable)?;
    state.shipping_manual.store(manual, Ordering::SeqCst);
    tracing::warn!(
        manual,
        role = role_name(caller.role),
        peer = caller.peer.as_deref().unwrap_or(""),
        user_agent = caller.user_agent.as_deref().unwrap_or(""),
        "shipping mode changed by an operator"
    );
    Ok(HttpResponse::Ok().json(json!({"shipping_mode": request.mode})))
}
