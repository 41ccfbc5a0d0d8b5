//! Orders end to end over real HTTP: checkout, payment by webhook and by
//! callback, duplicates, mismatches, COD, expiry, cancellation, admin views.

use serde_json::{json, Value};

use crate::helpers::*;
use dropshipd::domain::clock::ManualClock;
use dropshipd::domain::signature::sign;

async fn body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

fn paid_events(detail: &Value) -> usize {
    detail["journal"]
        .as_array()
        .map(|j| j.iter().filter(|e| e["kind"] == "paid").count())
        .unwrap_or(0)
}

#[actix_web::test]
async fn checkout_is_validated_idempotent_and_reserves_stock() {
    let app = spawn_app().await;
    app.set_stock("TEE", 10).await;
    let checkout = checkout_body("XVC-1", "order_R1", "TEE", 2);

    let unauthenticated = app
        .client
        .post(format!("{}/api/orders", app.public))
        .json(&checkout)
        .send()
        .await
        .expect("request");
    assert_eq!(unauthenticated.status(), 401);

    let (status, created) = body(app.checkout(&checkout).await).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "pending_payment");
    assert!(created["reserved_until"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let stock = app.stock("TEE").await;
    assert_eq!(
        (
            stock["on_hand"].as_i64(),
            stock["reserved"].as_i64(),
            stock["available"].as_i64()
        ),
        (Some(10), Some(2), Some(8))
    );

    let (status, again) = body(app.checkout(&checkout).await).await;
    assert_eq!(status, 200);
    assert_eq!(again["order_id"], "XVC-1");
    assert_eq!(
        app.stock("TEE").await["reserved"],
        2,
        "a repeat reserves nothing more"
    );

    let mut changed = checkout.clone();
    changed["customer"]["name"] = json!("Someone Else");
    let (status, conflict) = body(app.checkout(&changed).await).await;
    assert_eq!(
        (status, conflict["error"].as_str()),
        (409, Some("order_conflict"))
    );

    let mut invalid = checkout_body("XVC-2", "order_R2", "TEE", 1);
    invalid["amount_paise"] = json!(1);
    invalid["shipping_address"]["pincode"] = json!("12");
    invalid["currency"] = json!("EUR");
    let (status, refused) = body(app.checkout(&invalid).await).await;
    assert_eq!(status, 422);
    assert_eq!(refused["error"], "validation_failed");
    for field in ["shipping_address.pincode", "currency"] {
        assert!(
            refused["fields"][field].is_array(),
            "{field} missing in {refused}"
        );
    }

    let (status, short) = body(
        app.checkout(&checkout_body("XVC-3", "order_R3", "TEE", 9))
            .await,
    )
    .await;
    assert_eq!(
        (status, short["error"].as_str()),
        (409, Some("insufficient_stock"))
    );
    assert_eq!(short["skus"], json!(["TEE"]));
    assert_eq!(app.stock("TEE").await["reserved"], 2);
}

#[actix_web::test]
async fn captured_order_paid_and_callback_pay_an_order_once() {
    let app = spawn_app().await;
    app.set_stock("TEE", 5).await;
    app.checkout(&checkout_body("XVC-10", "order_P10", "TEE", 2))
        .await;
    let amount = 149_800;

    // Callback first, then both webhooks, each delivered twice.
    let signature = sign(RAZORPAY_KEY_SECRET.as_bytes(), b"order_P10|pay_P10");
    let callback = json!({"razorpay_payment_id": "pay_P10", "razorpay_order_id": "order_P10", "razorpay_signature": signature});
    let response = app
        .client
        .post(format!("{}/api/orders/XVC-10/payment", app.public))
        .bearer_auth(STOREFRONT_TOKEN)
        .json(&callback)
        .send()
        .await
        .expect("callback");
    let (status, order) = body(response).await;
    assert_eq!((status, order["state"].as_str()), (200, Some("paid")));
    for (event_id, webhook) in [
        ("evt_P10a", captured_for("pay_P10", "order_P10", amount)),
        ("evt_P10b", order_paid("pay_P10", "order_P10", amount)),
        ("evt_P10a", captured_for("pay_P10", "order_P10", amount)),
    ] {
        assert_eq!(
            app.post_webhook(&webhook, Some(event_id)).await.status(),
            200
        );
    }
    // A bad callback signature changes nothing.
    let forged = json!({"razorpay_payment_id": "pay_X", "razorpay_order_id": "order_P10", "razorpay_signature": "00"});
    let response = app
        .client
        .post(format!("{}/api/orders/XVC-10/payment", app.public))
        .bearer_auth(STOREFRONT_TOKEN)
        .json(&forged)
        .send()
        .await
        .expect("callback");
    assert_eq!(response.status(), 400);

    app.wait_inbox_drained().await;
    let detail = app.admin_order("XVC-10", OPERATOR_TOKEN).await;
    assert_eq!(detail["order"]["state"], "paid");
    assert_eq!(paid_events(&detail), 1, "{detail}");
    let stock = app.stock("TEE").await;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(3), Some(0))
    );
    let status = app.order_status("XVC-10").await;
    assert_eq!(status["awb"], Value::Null);
    assert_eq!(status["amount_paise"], amount);
}

#[actix_web::test]
async fn failed_then_captured_pays_and_mismatches_and_strangers_go_to_the_dlq() {
    let app = spawn_app().await;
    app.set_stock("TEE", 5).await;
    app.checkout(&checkout_body("XVC-20", "order_F20", "TEE", 1))
        .await;
    let failed = captured_for("pay_F1", "order_F20", 74_900)
        .replace("payment.captured", "payment.failed")
        .replace(r#""status":"captured""#, r#""status":"failed""#);
    app.post_webhook(&failed, Some("evt_F1")).await;
    app.wait_for_state("XVC-20", "payment_failed").await;
    app.post_webhook(&captured_for("pay_F2", "order_F20", 74_900), Some("evt_F2"))
        .await;
    app.wait_for_state("XVC-20", "paid").await;

    app.checkout(&checkout_body("XVC-21", "order_F21", "TEE", 1))
        .await;
    app.post_webhook(&captured_for("pay_F3", "order_F21", 100), Some("evt_F3"))
        .await;
    app.post_webhook(
        &captured_for("pay_F4", "order_NOBODY", 74_900),
        Some("evt_F4"),
    )
    .await;
    app.wait_inbox_drained().await;
    assert_eq!(app.order_status("XVC-21").await["state"], "pending_payment");
    let reasons: Vec<(String, String)> = app
        .dead_letters()
        .await
        .iter()
        .map(|l| {
            (
                l["reason"].as_str().unwrap_or("").to_owned(),
                l["event_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&("amount_mismatch".into(), "evt_F3".into())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("unknown_order".into(), "evt_F4".into())),
        "{reasons:?}"
    );
}

#[actix_web::test]
async fn cod_orders_are_confirmed_at_once() {
    let app = spawn_app().await;
    app.set_stock("TEE", 5).await;
    let mut cod = checkout_body("XVC-30", "order_unused", "TEE", 1);
    cod["payment_method"] = json!("cod");
    cod.as_object_mut().map(|o| o.remove("razorpay_order_id"));
    let (status, order) = body(app.checkout(&cod).await).await;
    assert_eq!(
        (status, order["state"].as_str()),
        (201, Some("paid")),
        "{order}"
    );
    assert_eq!(app.stock("TEE").await["on_hand"], 4);
}

#[actix_web::test]
async fn reservations_expire_on_the_clock_and_late_payments_reallocate_or_fail() {
    let start_ms = now_secs() * 1000;
    let clock = ManualClock::at_ms(start_ms);
    let app = spawn_app_at(clock.clone(), |settings| {
        settings.config.api.reservation_ttl_secs = 900;
        settings.config.processing.expiry_check_ms = 20;
    })
    .await;
    app.set_stock("TEE", 2).await;
    app.checkout(&checkout_body("XVC-40", "order_E40", "TEE", 1))
        .await;
    app.checkout(&checkout_body("XVC-41", "order_E41", "TEE", 1))
        .await;
    assert_eq!(app.stock("TEE").await["available"], 0);

    clock.advance_ms(899_000);
    assert_eq!(app.order_status("XVC-40").await["state"], "pending_payment");
    clock.advance_ms(1_000);
    app.wait_for_state("XVC-40", "expired").await;
    app.wait_for_state("XVC-41", "expired").await;
    assert_eq!(app.stock("TEE").await["available"], 2);

    // One unit goes to a new checkout; the late payments then find one unit.
    app.checkout(&checkout_body("XVC-42", "order_E42", "TEE", 1))
        .await;
    app.post_webhook(
        &captured_for("pay_E40", "order_E40", 74_900),
        Some("evt_E40"),
    )
    .await;
    app.wait_for_state("XVC-40", "paid").await;
    app.post_webhook(
        &captured_for("pay_E41", "order_E41", 74_900),
        Some("evt_E41"),
    )
    .await;
    app.wait_for_state("XVC-41", "out_of_stock").await;
    let stock = app.stock("TEE").await;
    assert_eq!(
        (
            stock["on_hand"].as_i64(),
            stock["reserved"].as_i64(),
            stock["available"].as_i64()
        ),
        (Some(1), Some(1), Some(0))
    );
    let reconcile: Value = app
        .admin_get("/admin/stock/reconcile", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(reconcile["mismatches"], json!([]));
}

#[actix_web::test]
async fn operators_cancel_where_the_lifecycle_allows() {
    let app = spawn_app().await;
    app.set_stock("TEE", 3).await;
    app.checkout(&checkout_body("XVC-50", "order_C50", "TEE", 2))
        .await;
    assert_eq!(
        app.admin_post("/admin/orders/XVC-50/cancel", Some(VIEWER_TOKEN))
            .await
            .status(),
        403
    );
    let (status, _) = body(
        app.admin_post("/admin/orders/XVC-50/cancel", Some(OPERATOR_TOKEN))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(app.order_status("XVC-50").await["state"], "cancelled");
    assert_eq!(app.stock("TEE").await["reserved"], 0);
    let (status, again) = body(
        app.admin_post("/admin/orders/XVC-50/cancel", Some(OPERATOR_TOKEN))
            .await,
    )
    .await;
    assert_eq!(
        (status, again["error"].as_str()),
        (409, Some("invalid_transition"))
    );
    assert_eq!(
        app.admin_post("/admin/orders/NOPE/cancel", Some(OPERATOR_TOKEN))
            .await
            .status(),
        404
    );
}

#[actix_web::test]
async fn admin_lists_orders_and_shows_journals_with_pii_masked_for_viewers() {
    let app = spawn_app().await;
    app.set_stock("TEE", 10).await;
    for i in 0..5 {
        app.checkout(&checkout_body(
            &format!("XVC-6{i}"),
            &format!("order_L6{i}"),
            "TEE",
            1,
        ))
        .await;
    }
    app.post_webhook(
        &captured_for("pay_L60", "order_L60", 74_900),
        Some("evt_L60"),
    )
    .await;
    app.wait_for_state("XVC-60", "paid").await;

    let page: Value = app
        .admin_get(
            "/admin/orders?state=pending_payment&limit=3",
            Some(VIEWER_TOKEN),
        )
        .await
        .json()
        .await
        .expect("JSON");
    let ids: Vec<_> = page["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["order_id"].clone())
        .collect();
    assert_eq!(ids, vec!["XVC-64", "XVC-63", "XVC-62"]);
    let next = page["next"].as_i64().expect("cursor");
    let rest: Value = app
        .admin_get(
            &format!("/admin/orders?state=pending_payment&limit=3&after={next}"),
            Some(VIEWER_TOKEN),
        )
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(rest["orders"].as_array().map(Vec::len), Some(1));
    assert!(rest["next"].is_null());
    assert_eq!(
        app.admin_get("/admin/orders?state=bogus", Some(VIEWER_TOKEN))
            .await
            .status(),
        422
    );

    let viewer = app.admin_order("XVC-60", VIEWER_TOKEN).await;
    assert_eq!(viewer["order"]["customer"]["customer"]["email"], "a***");
    let operator = app.admin_order("XVC-60", OPERATOR_TOKEN).await;
    assert_eq!(
        operator["order"]["customer"]["customer"]["email"],
        "asha@example.com"
    );
    let kinds = journal_kinds(&operator);
    assert_eq!(kinds, vec!["created", "paid"]);
    assert_eq!(operator["journal"][1]["cause"], "webhook:evt_L60");
    assert_eq!(operator["journal"][1]["seq"], 2);

    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(&scrape, "dropship_orders{state=\"pending_payment\"}"),
        Some(4.0)
    );
    assert_eq!(
        metric_value(&scrape, "dropship_order_transitions_total{to=\"paid\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&scrape, "dropship_revenue_paise_total"),
        Some(74_900.0)
    );
    assert_eq!(
        metric_value(&scrape, "dropship_stock_reservations_total{result=\"ok\"}"),
        Some(5.0)
    );
    assert_eq!(
        metric_value(&scrape, "dropship_order_creation_seconds_count"),
        Some(1.0)
    );
}

#[actix_web::test]
async fn a_hot_sku_over_http_sells_exactly_its_stock() {
    let app = spawn_app().await;
    app.set_stock("HOT", 300).await;
    let bodies: Vec<Value> = (0..1000)
        .map(|i| checkout_body(&format!("HOT-{i}"), &format!("order_H{i}"), "HOT", 1))
        .collect();
    let responses = futures_util::future::join_all(bodies.iter().map(|b| app.checkout(b))).await;
    let mut created = 0;
    let mut refused = 0;
    for response in responses {
        match response.status().as_u16() {
            201 => created += 1,
            409 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((created, refused), (300, 700));
    let stock = app.stock("HOT").await;
    assert_eq!(
        (stock["available"].as_i64(), stock["reserved"].as_i64()),
        (Some(0), Some(300))
    );
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "dropship_stock_reservations_total{result=\"insufficient\"}"
        ),
        Some(700.0)
    );
}

#[actix_web::test]
async fn a_partial_refund_is_journaled_and_a_full_one_refunds() {
    let app = spawn_app().await;
    app.set_stock("TEE", 5).await;
    app.checkout(&checkout_body("XVC-70", "order_RF70", "TEE", 2))
        .await;
    app.post_webhook(
        &captured_for("pay_RF70", "order_RF70", 149_800),
        Some("evt_RF1"),
    )
    .await;
    app.wait_for_state("XVC-70", "paid").await;
    app.post_webhook(
        &refund_processed("rfnd_1", "pay_RF70", "order_RF70", 149_800, 30_000, 30_000),
        Some("evt_RF2"),
    )
    .await;
    app.post_webhook(
        &refund_processed("rfnd_1", "pay_RF70", "order_RF70", 149_800, 30_000, 30_000),
        Some("evt_RF2-again"),
    )
    .await;
    app.wait_inbox_drained().await;
    assert_eq!(app.order_status("XVC-70").await["state"], "paid");
    app.post_webhook(
        &refund_processed(
            "rfnd_2",
            "pay_RF70",
            "order_RF70",
            149_800,
            119_800,
            149_800,
        ),
        Some("evt_RF3"),
    )
    .await;
    app.wait_for_state("XVC-70", "refunded").await;
    let detail = app.admin_order("XVC-70", OPERATOR_TOKEN).await;
    let kinds = journal_kinds(&detail);
    assert_eq!(
        kinds,
        vec!["created", "paid", "refund_recorded", "refund_recorded"]
    );
    app.assert_journal_replays("XVC-70").await;
}

#[actix_web::test]
async fn a_refund_of_a_shipped_order_and_one_before_its_payment_are_applied_not_dropped() {
    let (_sandbox, url) = start_sandbox(dropshipd::sandbox::Faults::default());
    let app = spawn_app_with(|s| {
        with_shiprocket(s, &url);
        s.config.shipping.mode = dropshipd::config::ShippingMode::Manual;
    })
    .await;
    app.set_stock("TEE", 5).await;
    // Shipped by hand (manual mode), then refunded in transit: a lost parcel.
    app.checkout(&checkout_body("XVC-R1", "order_R1", "TEE", 2))
        .await;
    app.post_webhook(&captured_for("pay_R1", "order_R1", 149_800), Some("evt_R1"))
        .await;
    app.wait_for_state("XVC-R1", "manual_required").await;
    let shipped = app
        .client
        .post(format!("{}/admin/orders/XVC-R1/mark-shipped", app.admin))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"awb": "HAND-R1", "courier": "Own van"}))
        .send()
        .await
        .expect("mark shipped");
    assert_eq!(shipped.status(), 200);
    app.post_webhook(
        &refund_processed("rfnd_R1", "pay_R1", "order_R1", 149_800, 149_800, 149_800),
        Some("evt_rfnd_R1"),
    )
    .await;
    app.wait_for_state("XVC-R1", "refunded").await;
    assert_eq!(
        app.stock("TEE").await["on_hand"],
        3,
        "the parcel left: no restock"
    );

    // The refund is delivered before the payment it refunds.
    app.checkout(&checkout_body("XVC-R2", "order_R2", "TEE", 2))
        .await;
    app.post_webhook(
        &refund_processed("rfnd_R2", "pay_R2", "order_R2", 149_800, 149_800, 149_800),
        Some("evt_rfnd_R2"),
    )
    .await;
    app.wait_inbox_drained().await;
    assert_eq!(app.order_status("XVC-R2").await["state"], "pending_payment");
    let detail = app.admin_order("XVC-R2", OPERATOR_TOKEN).await;
    assert_eq!(
        journal_kinds(&detail).last(),
        Some(&json!("refund_pending"))
    );
    app.post_webhook(&captured_for("pay_R2", "order_R2", 149_800), Some("evt_R2"))
        .await;
    app.wait_for_state("XVC-R2", "refunded").await;
    let level = app.stock("TEE").await;
    assert_eq!(
        (level["on_hand"].as_i64(), level["reserved"].as_i64()),
        (Some(3), Some(0)),
        "paid and refunded: the hold goes back"
    );
    let audit = app
        .admin_get("/admin/audit?limit=1000", Some(OPERATOR_TOKEN))
        .await
        .json::<serde_json::Value>()
        .await
        .expect("audit");
    let refunds = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "order.refund_recorded")
        .count();
    assert_eq!(refunds, 2, "every refund is in the audit log");
    app.assert_journal_replays("XVC-R1").await;
    app.assert_journal_replays("XVC-R2").await;
}

#[actix_web::test]
async fn a_refund_of_a_second_payment_clears_what_is_due_and_leaves_the_order_paid() {
    let app = spawn_app().await;
    app.set_stock("TEE", 5).await;
    app.checkout(&checkout_body("XVC-R3", "order_R3", "TEE", 2))
        .await;
    app.post_webhook(
        &captured_for("pay_R3a", "order_R3", 149_800),
        Some("evt_R3a"),
    )
    .await;
    app.post_webhook(
        &captured_for("pay_R3b", "order_R3", 149_800),
        Some("evt_R3b"),
    )
    .await;
    app.wait_inbox_drained().await;
    let order = &app.admin_order("XVC-R3", OPERATOR_TOKEN).await["order"];
    assert_eq!(
        (order["state"].as_str(), order["refund_due"].as_bool()),
        (Some("paid"), Some(true))
    );
    app.post_webhook(
        &refund_processed("rfnd_R3b", "pay_R3b", "order_R3", 149_800, 149_800, 149_800),
        Some("evt_rfnd_R3b"),
    )
    .await;
    app.wait_inbox_drained().await;
    let order = &app.admin_order("XVC-R3", OPERATOR_TOKEN).await["order"];
    assert_eq!(
        (order["state"].as_str(), order["refund_due"].as_bool()),
        (Some("paid"), Some(false)),
        "another payment's refund does not refund the order, and nothing is due any more"
    );
}

#[actix_web::test]
async fn the_events_of_one_order_apply_in_the_order_the_inbox_took_them() {
    const ORDERS: usize = 150;
    let app = spawn_app().await;
    app.set_stock("TEE", ORDERS as i64).await;
    for i in 0..ORDERS {
        let created = app
            .checkout(&checkout_body(
                &format!("XVC-Q{i}"),
                &format!("order_Q{i}"),
                "TEE",
                1,
            ))
            .await;
        assert_eq!(created.status(), 201);
    }
    // Paused, so that every pair is in the inbox before the dispatcher reads any.
    app.admin_post("/admin/processing/pause", Some(OPERATOR_TOKEN))
        .await;
    for i in 0..ORDERS {
        let failed = captured_for(&format!("pay_Qf{i}"), &format!("order_Q{i}"), 74_900)
            .replace("payment.captured", "payment.failed")
            .replace(r#""status":"captured""#, r#""status":"failed""#);
        app.post_webhook(&failed, Some(&format!("evt_Qf{i}"))).await;
        app.post_webhook(
            &captured_for(&format!("pay_Qc{i}"), &format!("order_Q{i}"), 74_900),
            Some(&format!("evt_Qc{i}")),
        )
        .await;
    }
    app.admin_post("/admin/processing/resume", Some(OPERATOR_TOKEN))
        .await;
    app.wait_inbox_drained().await;
    for i in 0..ORDERS {
        let detail = app.admin_order(&format!("XVC-Q{i}"), OPERATOR_TOKEN).await;
        assert_eq!(
            journal_kinds(&detail),
            vec!["created", "payment_failed", "paid"],
            "XVC-Q{i}: failed, then captured, as the inbox took them"
        );
    }
}

/// A checkout to an order with no live actor (after a restart here) is taken
/// for a new one until its insert or its stock says otherwise: its repeat is
/// still that order when the last units went to it, a changed repeat still a
/// conflict, and the order goes on as stored.
#[actix_web::test]
async fn a_repeated_checkout_after_a_restart_is_the_stored_order() {
    let app = spawn_app().await;
    app.set_stock("TEE", 2).await;
    let checkout = checkout_body("XVC-40", "order_R40", "TEE", 2);
    let (status, created) = body(app.checkout(&checkout).await).await;
    assert_eq!(status, 201, "{created}");
    let restarted = spawn_app_in(app.stop().await, |_| {}).await;

    // Sold out by the order itself: the repeat is the order, not a refusal.
    let (status, again) = body(restarted.checkout(&checkout).await).await;
    assert_eq!(
        (status, again["order_id"].as_str()),
        (200, Some("XVC-40")),
        "{again}"
    );
    let mut changed = checkout.clone();
    changed["customer"]["name"] = json!("Someone Else");
    let restarted = spawn_app_in(restarted.stop().await, |_| {}).await;
    let (status, conflict) = body(restarted.checkout(&changed).await).await;
    assert_eq!(
        (status, conflict["error"].as_str()),
        (409, Some("order_conflict")),
        "{conflict}"
    );

    // With stock to spare the repeat's hold is dropped again: nothing more reserved.
    restarted.set_stock("TEE", 5).await;
    let restarted = spawn_app_in(restarted.stop().await, |_| {}).await;
    let (status, again) = body(restarted.checkout(&checkout).await).await;
    assert_eq!(status, 200, "{again}");
    let stock = restarted.stock("TEE").await;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(5), Some(2))
    );
    let response = restarted
        .post_webhook(
            &captured_for("pay_R40", "order_R40", 149_800),
            Some("evt_R40"),
        )
        .await;
    assert_eq!(response.status(), 200);
    restarted.wait_for_state("XVC-40", "paid").await;
}
