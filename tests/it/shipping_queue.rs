//! The shipping queue against the sandbox over real HTTP, on a clock the test
//! moves (backoff, breaker, throttle and failover times are its): doubt that
//! only an answered search clears, attempts that run out, failover with its
//! duplicate check, cancellations that stick, one probe when half-open.

use std::time::Duration;

use dropshipd::domain::clock::ManualClock;
use dropshipd::sandbox::{DuplicatePolicy, Faults, Sandbox};
use serde_json::{json, Value};

use crate::helpers::*;

/// Shiprocket orders for `channel_order_id`, and how many of them are live.
fn shiprocket_orders(sandbox: &Sandbox, channel_order_id: &str) -> (usize, usize) {
    let orders: Vec<_> = sandbox
        .orders()
        .into_iter()
        .filter(|o| o.channel_order_id == channel_order_id)
        .collect();
    let live = orders.iter().filter(|o| o.status_code != 5).count();
    (orders.len(), live)
}

fn arrivals(sandbox: &Sandbox, calls: &[&str]) -> u64 {
    let arrived = sandbox.arrivals();
    calls
        .iter()
        .map(|c| arrived.get(*c).copied().unwrap_or(0))
        .sum()
}

fn answered(sandbox: &Sandbox, key: &str) -> u64 {
    sandbox.calls().get(key).copied().unwrap_or(0)
}

async fn shipping_of(app: &TestApp, order_id: &str) -> Value {
    app.admin_order(order_id, OPERATOR_TOKEN).await["order"]["shipping"].clone()
}

#[actix_web::test]
async fn a_429_on_the_recovery_search_leaves_the_doubt_and_no_second_order_is_created() {
    // Every create is done but answered 502; every re-create would be a second order.
    let (sandbox, url) = start_sandbox(Faults {
        error_after_work_rate: 1.0,
        only_calls: vec!["create".into()],
        duplicate: DuplicatePolicy::Create,
        ..Faults::default()
    });
    let clock = ManualClock::at_ms(now_secs() * 1000);
    let app = spawn_app_at(clock.clone(), |s| with_shiprocket(s, &url)).await;
    app.set_stock("TEE", 10).await;
    let id = app.checkout_and_pay("TH1").await;
    eventually("the lost answer recorded", || async {
        shipping_of(&app, &id).await["last_error"].is_string()
    })
    .await;
    assert_eq!(shiprocket_orders(&sandbox, &id), (1, 1));

    // Every recovery search is throttled, several times over.
    sandbox.set_faults(Faults {
        throttle_rate: 1.0,
        retry_after_secs: Some(1),
        only_calls: vec!["search".into()],
        duplicate: DuplicatePolicy::Create,
        ..Faults::default()
    });
    // Each round waits for the daemon to record the 429 before the clock moves on.
    for round in 1..=3 {
        clock.advance_ms(10_000);
        eventually("a throttled search recorded", || async {
            let detail = app.admin_order(&id, OPERATOR_TOKEN).await;
            let deferrals = journal_kinds(&detail)
                .iter()
                .filter(|k| *k == "shipping_deferred")
                .count();
            deferrals > round
        })
        .await;
    }
    assert_eq!(answered(&sandbox, "search:429"), 3);
    let shipping = shipping_of(&app, &id).await;
    assert_eq!(shipping["in_doubt"], true, "a 429 never clears doubt");
    assert_eq!(
        shipping["attempts"], 1,
        "a 429 is not an attempt: {shipping}"
    );
    assert_eq!(arrivals(&sandbox, &["create"]), 1);

    sandbox.set_faults(Faults {
        duplicate: DuplicatePolicy::Create,
        ..Faults::default()
    });
    clock.advance_ms(10_000);
    app.wait_for_state(&id, "ready_to_ship").await;
    assert_eq!(
        shiprocket_orders(&sandbox, &id),
        (1, 1),
        "one Shiprocket order"
    );
    let kinds = journal_kinds(&app.admin_order(&id, OPERATOR_TOKEN).await);
    assert!(kinds.contains(&json!("shipping_deferred")), "{kinds:?}");
    app.assert_journal_replays(&id).await;
}

#[actix_web::test]
async fn with_every_call_failing_searches_count_and_the_order_goes_to_an_operator() {
    let (sandbox, url) = start_sandbox(Faults {
        error_rate: 1.0,
        only_calls: vec!["create".into(), "search".into(), "assign_awb".into()],
        ..Faults::default()
    });
    let clock = ManualClock::at_ms(now_secs() * 1000);
    let app = spawn_app_at(clock.clone(), |s| {
        with_shiprocket(s, &url);
        s.config.shipping.max_attempts = 3;
    })
    .await;
    app.set_stock("TEE", 10).await;
    let id = app.checkout_and_pay("MA1").await;
    let calls = || arrivals(&sandbox, &["create", "search", "assign_awb"]);
    for _ in 0..10 {
        if app.order_status(&id).await["state"] == "manual_required" {
            break;
        }
        let before = calls();
        // Past any backoff and the breaker's open time.
        clock.advance_ms(60_000);
        eventually("a call or the hand-over", || async {
            calls() > before || app.order_status(&id).await["state"] == "manual_required"
        })
        .await;
    }
    app.wait_for_state(&id, "manual_required").await;
    assert_eq!(
        calls(),
        3,
        "a create and two searches: {:?}",
        sandbox.arrivals()
    );
    let shipping = shipping_of(&app, &id).await;
    assert!(
        shipping["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("3 attempts")),
        "{shipping}"
    );
    // No call after the hand-over.
    clock.advance_ms(600_000);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(calls(), 3);
}

#[actix_web::test]
async fn a_failing_primary_fails_over_and_its_duplicates_are_cancelled_when_it_answers() {
    const PRIMARY: &str = "api@example.com";
    // The primary creates every order and loses the answer.
    let (sandbox, url) = start_sandbox(Faults {
        error_after_work_rate: 1.0,
        only_calls: vec!["create".into()],
        only_accounts: vec![PRIMARY.into()],
        duplicate: DuplicatePolicy::Create,
        ..Faults::default()
    });
    let clock = ManualClock::at_ms(now_secs() * 1000);
    let app = spawn_app_at(clock.clone(), |s| {
        with_two_shiprocket_accounts(s, &url);
        s.config.shipping.failover_after_secs = 60;
    })
    .await;
    app.set_stock("TEE", 100).await;

    // Orders one at a time until the primary holds two in doubt (its circuit opens).
    let mut orders = Vec::new();
    let on_primary = || {
        sandbox
            .orders()
            .iter()
            .filter(|o| o.account == PRIMARY)
            .count()
    };
    for n in 0..40 {
        let id = app.checkout_and_pay(&format!("FO{n}")).await;
        eventually("the order taken by an account", || async {
            let shipping = shipping_of(&app, &id).await;
            app.order_status(&id).await["state"] == "ready_to_ship"
                || (shipping["account"] == "primary" && shipping["in_doubt"] == true)
        })
        .await;
        orders.push(id);
        if on_primary() >= 2 {
            break;
        }
    }
    assert_eq!(on_primary(), 2, "the primary took two orders");
    // From now on the primary answers nothing but 500s.
    sandbox.set_faults(Faults {
        error_rate: 1.0,
        only_accounts: vec![PRIMARY.into()],
        duplicate: DuplicatePolicy::Create,
        ..Faults::default()
    });
    for n in 0..5 {
        orders.push(app.checkout_and_pay(&format!("FN{n}")).await);
    }
    for id in &orders[orders.len() - 5..] {
        app.wait_for_state(id, "ready_to_ship").await;
    }

    // The two in doubt wait for the primary, then fail over.
    let in_doubt: Vec<String> = sandbox
        .orders()
        .iter()
        .filter(|o| o.account == PRIMARY)
        .map(|o| o.channel_order_id.clone())
        .collect();
    for id in &in_doubt {
        assert_eq!(app.order_status(id).await["state"], "awaiting_shipment");
    }
    // An order whose backoff a probe of the primary renewed waits for it to end.
    clock.advance_ms(61_000);
    for _ in 0..20 {
        let mut all_ready = true;
        for id in &in_doubt {
            all_ready &= app.order_status(id).await["state"] == "ready_to_ship";
        }
        if all_ready {
            break;
        }
        clock.advance_ms(5_000);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for id in &in_doubt {
        app.wait_for_state(id, "ready_to_ship").await;
        let kinds = journal_kinds(&app.admin_order(id, OPERATOR_TOKEN).await);
        assert!(kinds.contains(&json!("failed_over")), "{id}: {kinds:?}");
    }
    for id in &orders {
        assert_eq!(shipping_of(&app, id).await["account"], "secondary", "{id}");
    }
    let live_on_primary = || {
        sandbox
            .orders()
            .iter()
            .filter(|o| o.account == PRIMARY && o.status_code != 5)
            .count()
    };
    assert_eq!(live_on_primary(), 2, "duplicates wait for the primary");

    // The primary answers again: its duplicate checks cancel what it holds.
    sandbox.set_faults(Faults {
        duplicate: DuplicatePolicy::Create,
        ..Faults::default()
    });
    for _ in 0..10 {
        if live_on_primary() == 0 {
            break;
        }
        clock.advance_ms(31_000);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until("no live duplicate on the primary", || {
        live_on_primary() == 0
    })
    .await;
    for id in &in_doubt {
        let detail = app.admin_order(id, OPERATOR_TOKEN).await;
        assert!(
            journal_kinds(&detail).contains(&json!("duplicate_cancelled")),
            "{detail}"
        );
        assert_eq!(shiprocket_orders(&sandbox, id), (2, 1));
        app.assert_journal_replays(id).await;
    }
    for id in &orders {
        assert_eq!(shiprocket_orders(&sandbox, id).1, 1, "{id}: one live order");
    }
}

#[actix_web::test]
async fn a_cancellation_shiprocket_refuses_for_now_is_retried_until_it_is_done() {
    let (sandbox, url) = start_sandbox(Faults::default());
    let clock = ManualClock::at_ms(now_secs() * 1000);
    let app = spawn_app_at(clock.clone(), |s| with_shiprocket(s, &url)).await;
    app.set_stock("TEE", 10).await;
    let id = app.checkout_and_pay("CF1").await;
    app.wait_for_state(&id, "ready_to_ship").await;
    assert_eq!(app.stock("TEE").await["on_hand"], 9);

    sandbox.set_faults(Faults {
        error_rate: 1.0,
        only_calls: vec!["cancel".into(), "search".into()],
        ..Faults::default()
    });
    let cancelled = app
        .admin_post(&format!("/admin/orders/{id}/cancel"), Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(cancelled.status(), 200);
    assert_eq!(app.order_status(&id).await["state"], "cancelled");
    assert_eq!(app.stock("TEE").await["on_hand"], 10, "back on the shelf");
    // Each round waits for the daemon to record the failure before the clock moves on.
    for round in 1..=3 {
        clock.advance_ms(60_000);
        eventually("a retried cancellation recorded", || async {
            let detail = app.admin_order(&id, OPERATOR_TOKEN).await;
            let deferred = journal_kinds(&detail)
                .iter()
                .filter(|k| *k == "cleanup_deferred")
                .count();
            deferred >= round
        })
        .await;
    }
    assert!(arrivals(&sandbox, &["cancel", "search"]) >= 3);
    assert_eq!(
        shiprocket_orders(&sandbox, &id),
        (1, 1),
        "not cancelled yet"
    );
    let pending = &shipping_of(&app, &id).await["cancellations"];
    assert_eq!(pending[0]["purpose"], "cancel", "{pending}");

    sandbox.set_faults(Faults::default());
    for _ in 0..10 {
        if shiprocket_orders(&sandbox, &id).1 == 0 {
            break;
        }
        clock.advance_ms(60_000);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until("cancelled at Shiprocket", || {
        shiprocket_orders(&sandbox, &id).1 == 0
    })
    .await;
    let detail = app.admin_order(&id, OPERATOR_TOKEN).await;
    let kinds = journal_kinds(&detail);
    assert!(kinds.contains(&json!("shiprocket_cancelled")), "{kinds:?}");
    assert!(kinds.contains(&json!("cleanup_deferred")), "{kinds:?}");
    assert_eq!(detail["order"]["shipping"]["cancellations"], json!([]));
    app.assert_journal_replays(&id).await;
}

#[actix_web::test]
async fn a_full_refund_of_a_queued_order_refunds_restocks_and_never_creates_it() {
    let (sandbox, url) = start_sandbox(Faults {
        error_rate: 1.0,
        only_calls: vec!["create".into(), "search".into()],
        ..Faults::default()
    });
    let clock = ManualClock::at_ms(now_secs() * 1000);
    let app = spawn_app_at(clock.clone(), |s| with_shiprocket(s, &url)).await;
    app.set_stock("TEE", 10).await;
    // Two failures open the circuit: the next order waits in the queue.
    for tag in ["RQ1", "RQ2"] {
        app.checkout_and_pay(tag).await;
    }
    eventually("the circuit opened", || async {
        app.status().await["actors"]["gateways"][0]["circuit"] == "open"
    })
    .await;
    let id = app.checkout_and_pay("RQ3").await;
    app.wait_for_state(&id, "awaiting_shipment").await;
    assert_eq!(app.stock("TEE").await["on_hand"], 7);

    let refund = refund_processed("rfnd_RQ3", "pay_RQ3", "order_RQ3", 74_900, 74_900, 74_900);
    app.post_webhook(&refund, Some("evt_rfnd_RQ3")).await;
    app.wait_for_state(&id, "refunded").await;
    assert_eq!(
        app.stock("TEE").await["on_hand"],
        8,
        "its unit is restocked"
    );
    assert!(app.storage.queue_rows(&id).await.expect("rows").is_empty());

    sandbox.set_faults(Faults::default());
    clock.advance_ms(60_000);
    app.wait_for_state("XVC-RQ1", "ready_to_ship").await;
    app.wait_for_state("XVC-RQ2", "ready_to_ship").await;
    assert_eq!(
        shiprocket_orders(&sandbox, &id),
        (0, 0),
        "never sent to Shiprocket"
    );
    app.assert_journal_replays(&id).await;
}

#[actix_web::test]
async fn half_open_makes_one_probe_and_waiting_orders_write_nothing() {
    let (sandbox, url) = start_sandbox(Faults {
        error_rate: 1.0,
        only_calls: vec!["create".into(), "search".into()],
        ..Faults::default()
    });
    let clock = ManualClock::at_ms(now_secs() * 1000);
    let app = spawn_app_at(clock.clone(), |s| {
        with_shiprocket(s, &url);
        // The probe below hangs longer than the test looks; it must not time out first.
        s.config.shiprocket.request_timeout_ms = 10_000;
    })
    .await;
    app.set_stock("TEE", 20).await;
    let mut orders = Vec::new();
    for n in 0..2 {
        orders.push(app.checkout_and_pay(&format!("HO{n}")).await);
    }
    eventually("the circuit opened", || async {
        app.status().await["actors"]["gateways"][0]["circuit"] == "open"
    })
    .await;
    for n in 2..10 {
        orders.push(app.checkout_and_pay(&format!("HO{n}")).await);
    }
    for id in &orders {
        app.wait_for_state(id, "awaiting_shipment").await;
    }
    let journal_rows = || async {
        let mut rows = 0;
        for id in &orders {
            rows += app.admin_order(id, OPERATOR_TOKEN).await["journal"]
                .as_array()
                .map_or(0, Vec::len);
        }
        rows
    };
    let rows_before = journal_rows().await;
    let calls_before = arrivals(&sandbox, &["create", "search"]);

    // Half-open, with a probe that hangs for five seconds.
    sandbox.set_faults(Faults {
        hang_rate: 1.0,
        hang_ms: 5_000,
        only_calls: vec!["create".into(), "search".into()],
        ..Faults::default()
    });
    clock.advance_ms(30_000);
    wait_until("the probe", || {
        arrivals(&sandbox, &["create", "search"]) > calls_before
    })
    .await;
    assert_eq!(
        app.status().await["actors"]["gateways"][0]["circuit"],
        "half_open"
    );
    // Several rounds of the gateway's look at the queue while the probe hangs.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        arrivals(&sandbox, &["create", "search"]),
        calls_before + 1,
        "exactly one probe"
    );
    assert_eq!(
        journal_rows().await,
        rows_before + 1,
        "only the probe's attempt is journaled"
    );
}

#[actix_web::test]
async fn a_cancellation_shiprocket_refuses_for_good_goes_to_the_dead_letter_queue() {
    let (sandbox, url) = start_sandbox(Faults::default());
    let app = spawn_app_with(|s| with_shiprocket(s, &url)).await;
    app.set_stock("TEE", 10).await;
    let id = app.checkout_and_pay("CR1").await;
    app.wait_for_state(&id, "ready_to_ship").await;
    sandbox.set_faults(Faults {
        cancel_refused: true,
        ..Faults::default()
    });
    let cancelled = app
        .admin_post(&format!("/admin/orders/{id}/cancel"), Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(cancelled.status(), 200);
    eventually("the refusal filed for an operator", || async {
        app.dead_letters()
            .await
            .iter()
            .any(|l| l["reason"] == "shiprocket_cancel_failed")
    })
    .await;
    let detail = app.admin_order(&id, OPERATOR_TOKEN).await;
    assert!(
        journal_kinds(&detail).contains(&json!("shiprocket_cancel_failed")),
        "{detail}"
    );
    assert_eq!(detail["order"]["shipping"]["cancellations"], json!([]));
    assert_eq!(arrivals(&sandbox, &["cancel"]), 1, "a refusal is final");
    assert_eq!(shiprocket_orders(&sandbox, &id), (1, 1));
}
