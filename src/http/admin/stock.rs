//! Admin views and actions on stock.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{json_body, role_name};
use crate::actors::stock::{ApplyStock, StepOutcome, StockFailure};
use crate::domain::stock::{StockChange, StockLevel};
use crate::http::auth::{Operator, Viewer};
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::storage::{AllocationStep, ProductFacts};

fn stock_json(sku: &str, level: StockLevel) -> serde_json::Value {
    json!({"sku": sku, "on_hand": level.on_hand, "reserved": level.reserved, "available": level.available()})
}

pub(crate) async fn get(
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

pub(crate) async fn put(
    Operator(caller): Operator,
    req: HttpRequest,
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
    let given =
        put.name.is_some() || put.weight_kg.is_some() || put.dims_cm.is_some() || put.hsn.is_some();
    let facts = given.then_some(ProductFacts {
        name: put.name,
        weight_kg: put.weight_kg,
        dims_cm: put.dims_cm,
        hsn: put.hsn,
    });
    // The level, the facts and the action's audit entry: one commit.
    apply_stock(
        &state,
        &sku,
        StockChange::Set(put.on_hand),
        format!("set by {}", role_name(caller.role)),
        facts,
        super::audit::audited_action(&req),
    )
    .await?;
    let level = state.stock.level(&sku).await.map_err(stock_refusal)?;
    Ok(HttpResponse::Ok().json(stock_json(&sku, level)))
}

pub(crate) async fn adjust(
    Operator(caller): Operator,
    req: HttpRequest,
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
    let audit = super::audit::audited_action(&req);
    apply_stock(
        &state,
        &sku,
        StockChange::Adjust(adjust.delta),
        reason,
        None,
        audit,
    )
    .await?;
    let level = state.stock.level(&sku).await.map_err(stock_refusal)?;
    Ok(HttpResponse::Ok().json(stock_json(&sku, level)))
}

/// An operator's change of `sku`, committed with `facts` and `audit`.
async fn apply_stock(
    state: &AppState,
    sku: &str,
    change: StockChange,
    reason: String,
    facts: Option<ProductFacts>,
    audit: Option<crate::storage::AuditedAction>,
) -> Result<StepOutcome, ApiError> {
    if sku.is_empty() || sku.len() > 100 {
        return Err(ApiError::invalid("sku", "must be 1 to 100 characters"));
    }
    state
        .stock
        .apply(ApplyStock {
            sku: sku.to_owned(),
            change,
            allocation: AllocationStep::None,
            reason,
            facts,
            audit,
        })
        .await
        .map_err(stock_refusal)
}

pub(crate) async fn reconcile(
    _: Viewer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
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
