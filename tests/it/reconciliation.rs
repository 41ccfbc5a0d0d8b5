//! Payment reconciliation (SPEC §6) against a local fake of Razorpay's
//! `GET /v1/orders/{id}/payments`: an order whose webhook never came is paid
//! once its captured payment is found; others are left alone.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use dropshipd::domain::clock::ManualClock;
use serde_json::json;

use crate::helpers::*;

/// How often the fake was asked about order_RC2.
static RC2_ASKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn fake_order_payments(req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    // Basic base64("rzp_test_key:rzp_key_secret_for_tests")
    let expected = "Basic cnpwX3Rlc3Rfa2V5OnJ6cF9rZXlfc2VjcmV0X2Zvcl90ZXN0cw==";
    let auth = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok());
    if auth != Some(expected) {
        return HttpResponse::Unauthorized().json(
            json!({"error": {"code": "BAD_REQUEST_ERROR", "description": "Authentication failed"}}),
        );
    }
    let items = if path.as_str() == "order_RC1" {
        json!([
            {"id": "pay_RCfail", "entity": "payment", "amount": 74900, "currency": "INR", "status": "failed", "captured": false, "order_id": "order_RC1"},
            {"id": "pay_RC1", "entity": "payment", "amount": 74900, "currency": "INR", "status": "captured", "captured": true, "order_id": "order_RC1"}
        ])
    } else if path.as_str() == "order_RC2" {
        RC2_ASKED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Captured, but for another order: not RC2's money.
        json!([
            {"id": "pay_RCX", "entity": "payment", "amount": 74900, "currency": "INR", "status": "captured", "captured": true, "order_id": "order_RCX"}
        ])
    } else {
        json!([])
    };
    HttpResponse::Ok().json(
        json!({"entity": "collection", "count": items.as_array().map(Vec::len), "items": items}),
    )
}

#[actix_web::test]
async fn unpaid_orders_with_a_captured_payment_are_confirmed() {
    let fake = HttpServer::new(|| {
        App::new().route(
            "/v1/orders/{id}/payments",
            web::get().to(fake_order_payments),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .expect("bind fake Razorpay");
    let fake_url = format!("http://{}", fake.addrs()[0]);
    actix_web::rt::spawn(fake.run());

    let clock = ManualClock::at_ms(now_secs() * 1000);
    let app = spawn_app_at(clock.clone(), |settings| {
        settings.config.razorpay.api_base_url = fake_url;
        settings.config.razorpay.reconcile_after_secs = 600;
        settings.config.razorpay.reconcile_interval_secs = 1;
    })
    .await;
    app.set_stock("TEE", 5).await;
    app.checkout(&checkout_body("XVC-RC1", "order_RC1", "TEE", 1))
        .await;
    app.checkout(&checkout_body("XVC-RC2", "order_RC2", "TEE", 1))
        .await;
    // An id that would walk the API's path to another order is refused at checkout.
    let sneaky = app
        .checkout(&checkout_body("XVC-RC3", "order_x/../order_RC1", "TEE", 1))
        .await;
    assert_eq!(sneaky.status(), 422);

    clock.advance_ms(601_000);
    app.wait_for_state("XVC-RC1", "paid").await;
    let detail = app.admin_order("XVC-RC1", OPERATOR_TOKEN).await;
    assert_eq!(detail["journal"][1]["cause"], "reconciliation");
    assert_eq!(detail["journal"][1]["data"]["payment_id"], "pay_RC1");
    wait_until("Razorpay asked about RC2", || {
        RC2_ASKED.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    app.wait_inbox_drained().await;
    assert_eq!(
        app.order_status("XVC-RC2").await["state"],
        "pending_payment",
        "a captured payment of another order pays nothing here"
    );
    // The webhook arriving late is a no-op.
    app.post_webhook(
        &captured_for("pay_RC1", "order_RC1", 74_900),
        Some("evt_RC1"),
    )
    .await;
    app.wait_inbox_drained().await;
    let detail = app.admin_order("XVC-RC1", OPERATOR_TOKEN).await;
    assert_eq!(detail["journal"].as_array().map(Vec::len), Some(2));
}
