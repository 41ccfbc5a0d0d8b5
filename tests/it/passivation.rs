//! Passivation: tens of thousands of orders through a registry capped at 100
//! live actors. The cap holds at every moment, and orders whose actors were
//! passivated long before handle their next event from storage.

use std::sync::atomic::Ordering;

use futures_util::StreamExt;

use crate::helpers::*;
use dropshipd::actors::order::{Cause, OrderMsg, OrderReply};
use dropshipd::actors::registry::Route;
use dropshipd::domain::checkout::validate;
use dropshipd::domain::order::Command;

const ORDERS: usize = 50_000;
const CAP: u32 = 100;
const SKUS: usize = 10;

#[actix_web::test]
async fn fifty_thousand_orders_never_exceed_the_live_actor_cap() {
    let app = spawn_app_with(|settings| {
        settings.config.processing.max_live_order_actors = CAP;
        settings.config.processing.order_actor_idle_ms = 600_000;
    })
    .await;
    for s in 0..SKUS {
        app.set_stock(&format!("P-{s}"), ORDERS as i64).await;
    }
    let route = |order_id: String, msg: OrderMsg| {
        let orders = app.orders.clone();
        async move { orders.send(Route { order_id, msg }).await }
    };

    let creates = futures_util::stream::iter(0..ORDERS)
        .map(|i| {
            let body = checkout_body(
                &format!("P-{i}"),
                &format!("order_P{i}"),
                &format!("P-{}", i % SKUS),
                1,
            );
            let checkout = validate(&body).expect("valid checkout");
            let fingerprint = checkout.fingerprint();
            route(
                checkout.order_id.clone(),
                OrderMsg::Create {
                    checkout: Box::new(checkout),
                    fingerprint,
                },
            )
        })
        .buffer_unordered(256);
    let created = creates
        .filter(|r| std::future::ready(matches!(r, Ok(Ok(OrderReply::Created(_))))))
        .count()
        .await;
    assert_eq!(created, ORDERS);

    let payments = futures_util::stream::iter(0..ORDERS)
        .map(|i| {
            let command = Command::ConfirmPayment {
                payment_id: format!("pay_P{i}"),
                amount_paise: 74_900,
                currency: "INR".into(),
                stock_reallocated: None,
            };
            route(
                format!("P-{i}"),
                OrderMsg::Command {
                    command,
                    cause: Cause::named("test"),
                },
            )
        })
        .buffer_unordered(256);
    let paid = payments
        .filter(|r| {
            std::future::ready(
                matches!(r, Ok(Ok(OrderReply::Order(o))) if o.state.as_str() == "paid"),
            )
        })
        .count()
        .await;
    assert_eq!(paid, ORDERS);

    let high_water = app.order_actors.live_high_water.load(Ordering::Relaxed);
    let started = app.order_actors.started_total.load(Ordering::Relaxed);
    assert!(
        high_water <= u64::from(CAP),
        "{high_water} live actors at once, cap {CAP}"
    );
    assert!(
        started >= 2 * ORDERS as u64 - u64::from(CAP),
        "actors were reused instead of passivated: {started}"
    );

    // The first order's actor was passivated ~100,000 messages ago; its payment
    // was handled by a fresh actor loaded from storage, and a cancellation now
    // by yet another.
    let detail = app.admin_order("P-0", OPERATOR_TOKEN).await;
    let kinds = journal_kinds(&detail);
    assert_eq!(kinds, vec!["created", "paid"]);
    let cancelled = app
        .admin_post("/admin/orders/P-0/cancel", Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(cancelled.status(), 200);
    assert_eq!(app.order_status("P-0").await["state"], "cancelled");
    assert!(app.order_actors.live.load(Ordering::Relaxed) <= u64::from(CAP));

    let status = app.status().await;
    assert_eq!(status["orders_by_state"]["paid"], ORDERS - 1);
    let reconcile: serde_json::Value = app
        .admin_get("/admin/stock/reconcile", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(reconcile["mismatches"], serde_json::json!([]));
}

#[actix_web::test]
async fn an_idle_order_actor_passivates_and_its_order_carries_on() {
    let app = spawn_app_with(|settings| settings.config.processing.order_actor_idle_ms = 50).await;
    app.set_stock("IDLE", 3).await;
    app.checkout(&checkout_body("I-1", "order_I1", "IDLE", 1))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.order_actors.live.load(Ordering::Relaxed) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle actor never passivated"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    app.post_webhook(&captured_for("pay_I1", "order_I1", 74_900), Some("evt_I1"))
        .await;
    app.wait_for_state("I-1", "paid").await;
    assert!(app.order_actors.started_total.load(Ordering::Relaxed) >= 2);
    app.assert_journal_replays("I-1").await;
}
