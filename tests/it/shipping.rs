//! Paid orders to Shiprocket, against the in-process sandbox over real HTTP:
//! the healthy path, outages, unknown outcomes, refusals, manual mode.

use dropshipd::config::Secret;
use dropshipd::domain::clock::ManualClock;
use dropshipd::sandbox::{DuplicatePolicy, Faults, Sandbox};
use serde_json::json;

use crate::helpers::*;

async fn pay(app: &TestApp, n: u32) {
    app.set_stock("TEE", 100).await;
    app.checkout_and_pay(&format!("SH{n}")).await;
}

fn creates(sandbox: &Sandbox, channel_order_id: &str) -> usize {
    sandbox
        .orders()
        .iter()
        .filter(|o| o.channel_order_id == channel_order_id)
        .count()
}

#[actix_web::test]
async fn a_paid_order_becomes_ready_to_ship_with_its_awb() {
    let (sandbox, url) = start_sandbox(Faults::default());
    let app = spawn_app_with(|s| with_shiprocket(s, &url)).await;
    pay(&app, 1).await;
    let status = app.wait_for_state("XVC-SH1", "ready_to_ship").await;
    let awb = status["awb"].as_str().expect("awb").to_owned();
    assert_eq!(status["courier"], "Delhivery Surface");
    assert_eq!(
        status["tracking_url"],
        format!("https://shiprocket.co/tracking/{awb}")
    );
    assert_eq!(creates(&sandbox, "XVC-SH1"), 1);
    let order = &sandbox.orders()[0];
    assert_eq!(
        (order.sub_total, order.payment_method.as_str()),
        (749.0, "Prepaid")
    );

    // The pickup follows the AWB (the order is ready to ship in between); its
    // answer is journaled just after Shiprocket took it.
    eventually("the pickup journaled", || async {
        let detail = app.admin_order("XVC-SH1", OPERATOR_TOKEN).await;
        journal_kinds(&detail).contains(&json!("pickup_requested"))
    })
    .await;
    assert!(sandbox.orders()[0].pickup_requested);
    let detail = app.admin_order("XVC-SH1", OPERATOR_TOKEN).await;
    let kinds = journal_kinds(&detail);
    assert_eq!(
        kinds,
        vec![
            "created",
            "paid",
            "shipping_queued",
            "shipping_attempt",
            "shipment_created",
            "shipping_attempt",
            "awb_assigned",
            "pickup_requested"
        ]
    );
    app.assert_journal_replays("XVC-SH1").await;
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(&scrape, "dropship_shipping_creation_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&scrape, "dropship_shiprocket_requests_total{account=\"primary\",call=\"create_order\",outcome=\"ok\"}"),
        Some(1.0)
    );
    let gateways = &app.status().await["actors"]["gateways"];
    assert_eq!(gateways[0]["account"], "primary");
    assert_eq!(gateways[0]["circuit"], "closed");
    assert!(gateways[0]["token_expires_at"].is_string());
}

#[actix_web::test]
async fn a_5xx_storm_holds_orders_waiting_then_they_recover_on_their_own() {
    let (sandbox, url) = start_sandbox(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let clock = ManualClock::at_ms(now_secs() * 1000);
    let app = spawn_app_at(clock.clone(), |s| with_shiprocket(s, &url)).await;
    for n in 10..13 {
        pay(&app, n).await;
    }
    // Two failures open the circuit; after that nothing is called and nothing fails.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = app.status().await;
        if status["actors"]["gateways"][0]["circuit"] == "open"
            && status["orders_by_state"]["awaiting_shipment"] == 3
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "circuit never opened: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    clock.advance_ms(10_000);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    for n in 10..13 {
        assert_eq!(
            app.order_status(&format!("XVC-SH{n}")).await["state"],
            "awaiting_shipment"
        );
    }

    sandbox.set_faults(Faults::default());
    clock.advance_ms(60_000);
    for n in 10..13 {
        app.wait_for_state(&format!("XVC-SH{n}"), "ready_to_ship")
            .await;
        assert_eq!(creates(&sandbox, &format!("XVC-SH{n}")), 1);
    }
}

#[actix_web::test]
async fn an_unknown_outcome_is_searched_before_creating_again() {
    // Duplicates would be created if the daemon blindly retried.
    let faults = Faults {
        error_after_work_rate: 1.0,
        duplicate: DuplicatePolicy::Create,
        ..Faults::default()
    };
    let (sandbox, url) = start_sandbox(faults);
    let clock = ManualClock::at_ms(now_secs() * 1000);
    let app = spawn_app_at(clock.clone(), |s| with_shiprocket(s, &url)).await;
    pay(&app, 20).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while creates(&sandbox, "XVC-SH20") == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The clock moves only once the daemon has recorded the failed call:
    // moved earlier, a retry would be planned from the moved time and never fall due.
    loop {
        let detail = app.admin_order("XVC-SH20", OPERATOR_TOKEN).await;
        let deferred = detail["journal"]
            .as_array()
            .is_some_and(|j| j.iter().any(|e| e["kind"] == "shipping_deferred"));
        if deferred {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{detail}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sandbox.set_faults(Faults {
        duplicate: DuplicatePolicy::Create,
        ..Faults::default()
    });
    clock.advance_ms(60_000);
    app.wait_for_state("XVC-SH20", "ready_to_ship").await;
    assert_eq!(
        creates(&sandbox, "XVC-SH20"),
        1,
        "a second Shiprocket order was created"
    );
    let detail = app.admin_order("XVC-SH20", OPERATOR_TOKEN).await;
    let adopted = detail["journal"]
        .as_array()
        .expect("journal")
        .iter()
        .any(|e| e["kind"] == "shipment_created" && e["data"]["adopted"] == true);
    assert!(adopted, "{detail}");
}

#[actix_web::test]
async fn a_refusal_goes_to_an_operator_and_a_bulk_retry_ships_after_the_fix() {
    let (sandbox, url) = start_sandbox(Faults {
        pickup_location: "Warehouse-2".into(),
        ..Faults::default()
    });
    let app = spawn_app_with(|s| with_shiprocket(s, &url)).await;
    pay(&app, 30).await;
    pay(&app, 31).await;
    app.wait_for_state("XVC-SH30", "manual_required").await;
    app.wait_for_state("XVC-SH31", "manual_required").await;
    let detail = app.admin_order("XVC-SH30", VIEWER_TOKEN).await;
    assert!(
        detail["order"]["shipping"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("pickup_location")),
        "{detail}"
    );

    sandbox.set_faults(Faults::default());
    let bulk = app
        .client
        .post(format!("{}/admin/orders/retry-shipping", app.admin))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"state": "manual_required"}))
        .send()
        .await
        .expect("bulk retry");
    assert_eq!(bulk.status(), 200);
    assert_eq!(
        bulk.json::<serde_json::Value>().await.expect("JSON")["count"],
        2
    );
    app.wait_for_state("XVC-SH30", "ready_to_ship").await;
    app.wait_for_state("XVC-SH31", "ready_to_ship").await;
}

#[actix_web::test]
async fn manual_mode_makes_no_call_and_operators_fulfil_by_hand() {
    let (sandbox, url) = start_sandbox(Faults::default());
    let app = spawn_app_with(|s| {
        with_shiprocket(s, &url);
        s.config.shipping.mode = dropshipd::config::ShippingMode::Manual;
    })
    .await;
    assert_eq!(app.status().await["shipping_mode"], "manual");
    pay(&app, 40).await;
    app.wait_for_state("XVC-SH40", "manual_required").await;
    assert!(sandbox.calls().is_empty(), "{:?}", sandbox.calls());

    let viewer = app
        .client
        .post(format!("{}/admin/orders/XVC-SH40/mark-shipped", app.admin))
        .bearer_auth(VIEWER_TOKEN)
        .json(&json!({"awb": "HAND-1", "courier": "Own van"}))
        .send()
        .await
        .expect("request");
    assert_eq!(viewer.status(), 403);
    let marked = app
        .client
        .post(format!("{}/admin/orders/XVC-SH40/mark-shipped", app.admin))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"awb": "HAND-1", "courier": "Own van"}))
        .send()
        .await
        .expect("request");
    assert_eq!(marked.status(), 200);
    let status = app.order_status("XVC-SH40").await;
    assert_eq!(
        (status["state"].as_str(), status["awb"].as_str()),
        (Some("shipped"), Some("HAND-1"))
    );

    // Back to automatic: a new order ships.
    let switched = app
        .client
        .put(format!("{}/admin/shipping-mode", app.admin))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"mode": "auto"}))
        .send()
        .await
        .expect("request");
    assert_eq!(switched.status(), 200);
    pay(&app, 41).await;
    app.wait_for_state("XVC-SH41", "ready_to_ship").await;
}

/// Order `XVC-SH<n>` paid and ready to ship against the sandbox, on a daemon
/// that takes tracking webhooks (`x-api-key: track-token`): the app and the AWB.
async fn ready_with_tracking(n: u32) -> (TestApp, String) {
    let (_sandbox, url) = start_sandbox(Faults::default());
    let app = spawn_app_with(|s| {
        with_shiprocket(s, &url);
        s.secrets.tracking_token = Some(Secret::new("track-token"));
    })
    .await;
    pay(&app, n).await;
    let status = app
        .wait_for_state(&format!("XVC-SH{n}"), "ready_to_ship")
        .await;
    let awb = status["awb"].as_str().expect("awb").to_owned();
    (app, awb)
}

#[actix_web::test]
async fn tracking_updates_move_orders_forward_once() {
    let (app, awb) = ready_with_tracking(50).await;

    let (code, _) = track(
        &app,
        "wrong",
        update("XVC-SH50", &awb, 42, "26 11 2025 10:02:40"),
    )
    .await;
    assert_eq!(code, 401);
    assert_eq!(app.order_status("XVC-SH50").await["state"], "ready_to_ship");

    // Picked up: shipped. Found by AWB alone too.
    let (code, reply) = track(
        &app,
        "track-token",
        update("", &awb, 42, "26 11 2025 10:02:40"),
    )
    .await;
    assert_eq!((code, reply["status"].as_str()), (200, Some("accepted")));
    assert_eq!(app.order_status("XVC-SH50").await["state"], "shipped");
    // The same update again, in transit, and an older one: nothing moves.
    assert_eq!(
        track(
            &app,
            "track-token",
            update("XVC-SH50", &awb, 42, "26 11 2025 10:02:40")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        track(
            &app,
            "track-token",
            update("XVC-SH50", &awb, 18, "26 11 2025 18:05:11")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        track(
            &app,
            "track-token",
            update("XVC-SH50", &awb, 7, "25 11 2025 09:00:00")
        )
        .await
        .0,
        200
    );
    assert_eq!(app.order_status("XVC-SH50").await["state"], "shipped");
    // Delivered, then RTO delivered back.
    track(
        &app,
        "track-token",
        update("XVC-SH50", &awb, 7, "28 11 2025 12:00:00"),
    )
    .await;
    assert_eq!(app.order_status("XVC-SH50").await["state"], "delivered");
    track(
        &app,
        "track-token",
        update("XVC-SH50", &awb, 10, "02 12 2025 12:00:00"),
    )
    .await;
    assert_eq!(app.order_status("XVC-SH50").await["state"], "returned");

    let detail = app.admin_order("XVC-SH50", OPERATOR_TOKEN).await;
    let tracking: Vec<_> = detail["journal"]
        .as_array()
        .expect("journal")
        .iter()
        .filter(|e| e["kind"] == "tracking")
        .map(|e| e["data"]["status_id"].clone())
        .collect();
    assert_eq!(tracking, vec![json!(42), json!(18), json!(7), json!(10)]);
    app.assert_journal_replays("XVC-SH50").await;

    let (code, reply) = track(
        &app,
        "track-token",
        update("", "AWB-NOBODY", 6, "26 11 2025 10:00:00"),
    )
    .await;
    assert_eq!(
        (code, reply["status"].as_str()),
        (200, Some("unknown_shipment"))
    );
    let letters = app.dead_letters().await;
    assert!(
        letters
            .iter()
            .any(|l| l["reason"] == "unknown_shipment" && l["source"] == "tracking"),
        "{letters:?}"
    );
}

#[actix_web::test]
async fn a_courier_cancellation_returns_unshipped_stock() {
    let (app, awb) = ready_with_tracking(60).await;
    assert_eq!(app.stock("TEE").await["on_hand"], 99);
    track(
        &app,
        "track-token",
        update("XVC-SH60", &awb, 8, "26 11 2025 10:00:00"),
    )
    .await;
    assert_eq!(app.order_status("XVC-SH60").await["state"], "cancelled");
    assert_eq!(app.stock("TEE").await["on_hand"], 100);
}

#[actix_web::test]
async fn cancelling_an_order_cancels_its_shiprocket_order() {
    let (sandbox, url) = start_sandbox(Faults::default());
    let app = spawn_app_with(|s| with_shiprocket(s, &url)).await;
    pay(&app, 70).await;
    app.wait_for_state("XVC-SH70", "ready_to_ship").await;
    let cancelled = app
        .admin_post("/admin/orders/XVC-SH70/cancel", Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(cancelled.status(), 200);
    assert_eq!(app.stock("TEE").await["on_hand"], 100);
    wait_until("the Shiprocket order is cancelled too", || {
        sandbox
            .orders()
            .iter()
            .any(|o| o.channel_order_id == "XVC-SH70" && o.status_code == 5)
    })
    .await;
    eventually("the cancellation journaled", || async {
        let detail = app.admin_order("XVC-SH70", OPERATOR_TOKEN).await;
        journal_kinds(&detail).contains(&json!("shiprocket_cancelled"))
    })
    .await;
}

#[actix_web::test]
async fn sigkill_between_create_and_assign_never_creates_twice() {
    // The AWB call hangs, so the daemon is killed with the Shiprocket order
    // created and its AWB not assigned. Duplicates would be created if it
    // retried the create blindly.
    let faults = Faults {
        hang_rate: 1.0,
        hang_ms: 60_000,
        only_calls: vec!["assign_awb".into()],
        duplicate: DuplicatePolicy::Create,
        ..Faults::default()
    };
    let (sandbox, url) = start_sandbox(faults);
    let dir = tempfile::tempdir().expect("temp dir");
    // Short calls: the AWB call in flight at the kill is searched for once
    // its lease (four timeouts) is over.
    let extra = format!(
        "[shiprocket]\nbase_url = \"{url}\"\nrequests_per_hour = 360000\nburst = 100\nrequest_timeout_ms = 2000\n\
         [[shiprocket.accounts]]\nname = \"primary\"\nemail = \"api@example.com\"\npassword = \"env:SHIPROCKET_PASSWORD\"\n"
    );
    let config = write_daemon_config_with(dir.path(), &extra);
    let mut daemon = Daemon::start(&config);
    let client = reqwest::Client::new();
    client
        .put(format!("{}/admin/stock/TEE", daemon.admin))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"on_hand": 5}))
        .send()
        .await
        .expect("stock");
    let created = client
        .post(format!("{}/api/orders", daemon.public))
        .bearer_auth(STOREFRONT_TOKEN)
        .json(&checkout_body("XVC-K1", "order_K1x", "TEE", 1))
        .send()
        .await
        .expect("checkout");
    assert_eq!(created.status(), 201);
    let body = captured_for("pay_K1x", "order_K1x", 74_900);
    let signature = dropshipd::domain::signature::sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
    client
        .post(format!("{}/webhooks/razorpay", daemon.public))
        .header("X-Razorpay-Signature", signature)
        .header("X-Razorpay-Event-Id", "evt_K1x")
        .body(body)
        .send()
        .await
        .expect("webhook");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while creates(&sandbox, "XVC-K1") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the Shiprocket order was never created"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    daemon.kill();
    sandbox.set_faults(Faults {
        duplicate: DuplicatePolicy::Create,
        ..Faults::default()
    });

    let daemon = Daemon::start(&config);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status: serde_json::Value = client
            .get(format!("{}/api/orders/XVC-K1", daemon.public))
            .bearer_auth(STOREFRONT_TOKEN)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("JSON");
        if status["state"] == "ready_to_ship" {
            assert!(status["awb"].is_string());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ready to ship: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        creates(&sandbox, "XVC-K1"),
        1,
        "a second Shiprocket order was created"
    );
}
