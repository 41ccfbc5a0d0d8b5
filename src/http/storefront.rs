//! The storefront API (SPEC §5): register a checkout, confirm its payment from
//! the checkout callback, read an order's public status. Bearer-authenticated
//! with `api.storefront_token`.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::bearer;
use super::error::ApiError;
use super::orders::{load_snapshot, order_json, public_status, replied_order, route};
use super::AppState;
use crate::actors::order::{Cause, OrderMsg, OrderReply};
use crate::domain::checkout;
use crate::domain::order::Command;
use crate::domain::signature;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/orders", web::post().to(create_order))
        .route("/api/orders/{order_id}", web::get().to(get_order))
        .route(
            "/api/orders/{order_id}/payment",
            web::post().to(confirm_payment),
        );
}

/// The cause journaled for a payment reported by the checkout callback.
const CALLBACK_CAUSE: &str = "checkout_callback";

/// A request bearing the storefront token.
pub struct Storefront;

impl FromRequest for Storefront {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let expected = req
            .app_data::<web::Data<AppState>>()
            .and_then(|state| state.storefront_token.as_ref());
        ready(match (expected, bearer(req)) {
            (Some(expected), Some(presented)) if expected.matches(presented) => Ok(Storefront),
            _ => Err(ApiError::unauthorized()),
        })
    }
}

async fn create_order(
    _: Storefront,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not JSON: {e}"),
        )
    })?;
    let checkout = checkout::validate(&value).map_err(|errors| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("{} field(s) are invalid", errors.0.len()),
        )
        .with("fields", json!(errors.0))
    })?;
    let fingerprint = checkout.fingerprint();
    let order_id = checkout.order_id.clone();
    let msg = OrderMsg::Create {
        checkout: Box::new(checkout),
        fingerprint,
    };
    match route(&state, order_id, msg).await? {
        OrderReply::Created(order) => Ok(HttpResponse::Created().json(order_json(&order))),
        other => Ok(HttpResponse::Ok().json(order_json(&replied_order(other)?))),
    }
}

async fn get_order(
    _: Storefront,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let order = load_snapshot(&state, &path).await?;
    Ok(HttpResponse::Ok().json(public_status(&order)))
}

#[derive(Deserialize)]
struct CheckoutCallback {
    razorpay_payment_id: String,
    razorpay_order_id: String,
    razorpay_signature: String,
}

async fn confirm_payment(
    _: Storefront,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let callback: CheckoutCallback = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(
            "body",
            format!("expected razorpay_payment_id, razorpay_order_id and razorpay_signature: {e}"),
        )
    })?;
    let Some(key_secret) = state.settings.secrets.razorpay_key_secret.as_ref() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "checkout_verification_unavailable",
            "razorpay.key_secret is not configured, so checkout signatures cannot be verified",
        ));
    };
    let order = load_snapshot(&state, &path).await?;
    if order.razorpay_order_id.as_deref() != Some(callback.razorpay_order_id.as_str()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "order_mismatch",
            "razorpay_order_id is not this order's Razorpay order",
        ));
    }
    if !signature::verify_checkout(
        key_secret.expose().as_bytes(),
        &callback.razorpay_order_id,
        &callback.razorpay_payment_id,
        &callback.razorpay_signature,
    ) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_signature",
            "razorpay_signature is not the HMAC-SHA256 of razorpay_order_id|razorpay_payment_id under the key secret",
        ));
    }
    // Razorpay's checkout only completes for the order's own amount.
    let command = Command::ConfirmPayment {
        payment_id: callback.razorpay_payment_id,
        amount_paise: order.amount_paise,
        currency: order.currency.clone(),
        stock_reallocated: None,
    };
    let cause = Cause::named(CALLBACK_CAUSE);
    let reply = route(
        &state,
        order.order_id.clone(),
        OrderMsg::Command { command, cause },
    )
    .await?;
    if let OrderReply::Deferred = reply {
        // Kill switch on: the verified payment is kept for when processing resumes.
        let mut body = order_json(&order);
        if let Some(map) = body.as_object_mut() {
            map.insert("processing_paused".into(), serde_json::Value::Bool(true));
        }
        return Ok(HttpResponse::Accepted().json(body));
    }
    Ok(HttpResponse::Ok().json(order_json(&replied_order(reply)?)))
}
