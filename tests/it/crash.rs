//! SIGKILL mid-load: every webhook that got `accepted` is on disk exactly once
//! after a restart, and Razorpay's retries of it are duplicates.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dropshipd::domain::signature::sign;
use tokio::sync::Semaphore;

use crate::helpers::*;

const EVENTS: usize = 2400;
const CONCURRENCY: usize = 32;
const KILL_AFTER_ACCEPTED: usize = 800;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Delivery {
    Accepted,
    Other(String),
    NoAnswer,
}

async fn deliver(client: &reqwest::Client, base: &str, event_id: &str, body: &str) -> Delivery {
    let signature = sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
    let sent = client
        .post(format!("{base}/webhooks/razorpay"))
        .header("X-Razorpay-Signature", signature)
        .header("X-Razorpay-Event-Id", event_id)
        .body(body.to_owned())
        .send()
        .await;
    let Ok(response) = sent else {
        return Delivery::NoAnswer;
    };
    let status = response.status();
    match response.json::<serde_json::Value>().await {
        Ok(reply) if status == 200 && reply["status"] == "accepted" => Delivery::Accepted,
        Ok(reply) => Delivery::Other(format!("{status} {reply}")),
        Err(_) => Delivery::NoAnswer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_and_doubles_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_daemon_config(dir.path());
    let db = dir.path().join("data/dropshipd.db");
    let daemon = Arc::new(Mutex::new(Daemon::start(&config)));
    let base = daemon.lock().map(|d| d.public.clone()).expect("daemon");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("client");

    let created = now_secs();
    let events: Vec<(String, String)> = (0..EVENTS)
        .map(|i| {
            let body =
                payment_captured(&format!("pay_K{i:05}"), &format!("order_K{i:05}"), created);
            (format!("evt_K{i:05}"), body)
        })
        .collect();

    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = Vec::new();
    for (event_id, body) in events.clone() {
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .expect("semaphore");
        let (client, base, daemon) = (client.clone(), base.clone(), Arc::clone(&daemon));
        let (accepted_count, outcomes) = (Arc::clone(&accepted_count), Arc::clone(&outcomes));
        tasks.push(tokio::spawn(async move {
            let outcome = deliver(&client, &base, &event_id, &body).await;
            if outcome == Delivery::Accepted
                && accepted_count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER_ACCEPTED
            {
                // Killed while the other 31 requests are in flight.
                if let Ok(mut d) = daemon.lock() {
                    d.kill();
                }
            }
            if let Ok(mut o) = outcomes.lock() {
                o.insert(event_id, outcome);
            }
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.expect("delivery task");
    }
    let outcomes = outcomes.lock().map(|o| o.clone()).expect("outcomes");
    let acknowledged: BTreeSet<String> = outcomes
        .iter()
        .filter(|(_, o)| **o == Delivery::Accepted)
        .map(|(id, _)| id.clone())
        .collect();
    let unexpected: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Delivery::Other(_)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "answers other than accepted: {unexpected:?}"
    );
    let no_answer = outcomes
        .values()
        .filter(|o| **o == Delivery::NoAnswer)
        .count();
    eprintln!(
        "crash: {} acknowledged, {no_answer} without an answer, of {EVENTS}",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= KILL_AFTER_ACCEPTED,
        "{}",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() < EVENTS,
        "the kill came too late to test anything"
    );

    // What is on disk, read straight from the file the killed process left.
    let stored = stored_inbox_keys(&db);
    let stored_set: BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), stored_set.len(), "an event is stored twice");
    let lost: Vec<_> = acknowledged.difference(&stored_set).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    eprintln!("crash: {} stored at the kill", stored.len());
    let sent: BTreeSet<String> = events.iter().map(|(id, _)| id.clone()).collect();
    assert!(stored_set.is_subset(&sent));

    // Restart on the same database and play Razorpay: re-send everything.
    let restarted = Daemon::start(&config);
    for (event_id, body) in &events {
        let signature = sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
        let reply: serde_json::Value = client
            .post(format!("{}/webhooks/razorpay", restarted.public))
            .header("X-Razorpay-Signature", signature)
            .header("X-Razorpay-Event-Id", event_id)
            .body(body.clone())
            .send()
            .await
            .expect("re-send")
            .json()
            .await
            .expect("JSON");
        let expected = if stored_set.contains(event_id) {
            "duplicate"
        } else {
            "accepted"
        };
        assert_eq!(reply["status"], expected, "{event_id}");
    }
    let after = stored_inbox_keys(&db);
    assert_eq!(after.len(), EVENTS);
    assert_eq!(after.iter().collect::<BTreeSet<_>>().len(), EVENTS);
}

const ORDERS: usize = 1000;
const KILL_AFTER_PAYMENTS: usize = 350;
const SKUS: usize = 10;
const UNITS_PER_SKU: i64 = 200;

async fn admin_json(client: &reqwest::Client, daemon: &Daemon, path: &str) -> serde_json::Value {
    client
        .get(format!("{}{path}", daemon.admin))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .expect("admin request")
        .json()
        .await
        .expect("admin JSON")
}

async fn drain(client: &reqwest::Client, daemon: &Daemon) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = admin_json(client, daemon, "/admin/status").await;
        if status["inbox_pending"] == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "inbox never drained: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn paid_events(client: &reqwest::Client, daemon: &Daemon, order_id: &str) -> (String, usize) {
    let detail = admin_json(client, daemon, &format!("/admin/orders/{order_id}")).await;
    let paid = detail["journal"]
        .as_array()
        .map(|j| j.iter().filter(|e| e["kind"] == "paid").count())
        .unwrap_or(0);
    (
        detail["order"]["state"].as_str().unwrap_or("").to_owned(),
        paid,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_orders_are_paid_pays_each_acknowledged_order_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_daemon_config(dir.path());
    let mut daemon = Daemon::start(&config);
    let client = reqwest::Client::new();

    for s in 0..SKUS {
        let response = client
            .put(format!("{}/admin/stock/SKU-{s}", daemon.admin))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&serde_json::json!({"on_hand": UNITS_PER_SKU}))
            .send()
            .await
            .expect("stock");
        assert_eq!(response.status(), 200);
    }
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for i in 0..ORDERS {
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .expect("semaphore");
        let (client, base) = (client.clone(), daemon.public.clone());
        tasks.push(tokio::spawn(async move {
            let body = checkout_body(
                &format!("K-{i}"),
                &format!("order_K{i}"),
                &format!("SKU-{}", i % SKUS),
                1,
            );
            let response = client
                .post(format!("{base}/api/orders"))
                .bearer_auth(STOREFRONT_TOKEN)
                .json(&body)
                .send()
                .await
                .expect("checkout");
            assert_eq!(response.status(), 201);
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.expect("checkout task");
    }

    // Pay all of them; SIGKILL once 350 payments are acknowledged.
    let payments: Vec<(String, String)> = (0..ORDERS)
        .map(|i| {
            (
                format!("evt_KP{i}"),
                captured_for(&format!("pay_K{i}"), &format!("order_K{i}"), 74_900),
            )
        })
        .collect();
    let daemon_cell = Arc::new(Mutex::new(Some(daemon)));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, (event_id, body)) in payments.iter().cloned().enumerate() {
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .expect("semaphore");
        let base = daemon_cell
            .lock()
            .ok()
            .and_then(|d| d.as_ref().map(|d| d.public.clone()));
        let Some(base) = base else { break };
        let (client, cell, accepted) = (
            client.clone(),
            Arc::clone(&daemon_cell),
            Arc::clone(&accepted),
        );
        tasks.push(tokio::spawn(async move {
            if deliver(&client, &base, &event_id, &body).await == Delivery::Accepted {
                let count = accepted
                    .lock()
                    .map(|mut a| {
                        a.push(i);
                        a.len()
                    })
                    .unwrap_or(0);
                if count == KILL_AFTER_PAYMENTS {
                    if let Ok(mut cell) = cell.lock() {
                        if let Some(mut d) = cell.take() {
                            d.kill();
                        }
                    }
                }
            }
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.expect("payment task");
    }
    let acknowledged: Vec<usize> = accepted.lock().map(|a| a.clone()).expect("accepted");
    assert!(
        acknowledged.len() >= KILL_AFTER_PAYMENTS && acknowledged.len() < ORDERS,
        "{}",
        acknowledged.len()
    );
    eprintln!(
        "orders crash: {} payments acknowledged before the kill",
        acknowledged.len()
    );

    daemon = Daemon::start(&config);
    drain(&client, &daemon).await;
    for i in &acknowledged {
        let (state, paid) = paid_events(&client, &daemon, &format!("K-{i}")).await;
        assert_eq!((state.as_str(), paid), ("paid", 1), "order K-{i}");
    }
    let reconcile = admin_json(&client, &daemon, "/admin/stock/reconcile").await;
    assert_eq!(
        reconcile["mismatches"],
        serde_json::json!([]),
        "{reconcile}"
    );

    // Razorpay retries everything: every order ends paid exactly once.
    for (event_id, body) in &payments {
        let outcome = deliver(&client, &daemon.public, event_id, body).await;
        assert!(
            matches!(outcome, Delivery::Accepted | Delivery::Other(_)),
            "{event_id}: {outcome:?}"
        );
    }
    drain(&client, &daemon).await;
    let mut sold = 0;
    for i in 0..ORDERS {
        let (state, paid) = paid_events(&client, &daemon, &format!("K-{i}")).await;
        assert_eq!((state.as_str(), paid), ("paid", 1), "order K-{i}");
        sold += 1;
    }
    let mut on_hand = 0;
    for s in 0..SKUS {
        let level = admin_json(&client, &daemon, &format!("/admin/stock/SKU-{s}")).await;
        assert_eq!(level["reserved"], 0);
        on_hand += level["on_hand"].as_i64().unwrap_or(-1);
    }
    assert_eq!(on_hand, SKUS as i64 * UNITS_PER_SKU - sold);
    let reconcile = admin_json(&client, &daemon, "/admin/stock/reconcile").await;
    assert_eq!(reconcile["mismatches"], serde_json::json!([]));
}

/// Orders per state and the level of `sku`, read in one snapshot of the file.
fn stored_counts(db: &std::path::Path, sku: &str) -> (HashMap<String, i64>, i64, i64) {
    let conn = dropshipd::storage::open_read_only(db).expect("open database");
    conn.execute_batch("BEGIN").expect("snapshot");
    let mut states = HashMap::new();
    let mut stmt = conn
        .prepare("SELECT state, count(*) FROM orders GROUP BY state")
        .expect("query");
    let rows = stmt
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })
        .expect("rows");
    for row in rows {
        let (state, n) = row.expect("row");
        states.insert(state, n);
    }
    let (on_hand, reserved) = conn
        .query_row(
            "SELECT on_hand, reserved FROM stock_levels WHERE sku = ?1",
            [sku],
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
        )
        .expect("level");
    (states, on_hand, reserved)
}

/// SPEC §6: a reader who sees `paid` sees the sale, at every commit.
fn assert_stock_follows_states(db: &std::path::Path, sku: &str, stocked: i64, when: &str) {
    let (states, on_hand, reserved) = stored_counts(db, sku);
    let count = |s: &str| states.get(s).copied().unwrap_or(0);
    let sold = count("paid") + count("awaiting_shipment") + count("manual_required");
    let holding = count("pending_payment") + count("payment_failed");
    assert_eq!(
        (on_hand, reserved),
        (stocked - sold, holding),
        "{when}: {states:?}"
    );
}

const HOT_ORDERS: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_sku_killed_mid_payment_never_shows_a_paid_order_its_stock_does_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_daemon_config(dir.path());
    let db = dir.path().join("data/dropshipd.db");
    let daemon = Daemon::start(&config);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("client");
    let stock = client
        .put(format!("{}/admin/stock/HOT", daemon.admin))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&serde_json::json!({"on_hand": HOT_ORDERS}))
        .send()
        .await
        .expect("stock");
    assert_eq!(stock.status(), 200);
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for i in 0..HOT_ORDERS {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("permit");
        let (client, base) = (client.clone(), daemon.public.clone());
        tasks.push(tokio::spawn(async move {
            let body = checkout_body(&format!("H-{i}"), &format!("order_H{i}"), "HOT", 1);
            let response = client
                .post(format!("{base}/api/orders"))
                .bearer_auth(STOREFRONT_TOKEN)
                .json(&body)
                .send()
                .await
                .expect("checkout");
            assert_eq!(response.status(), 201);
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.expect("checkout task");
    }

    let daemon = Arc::new(Mutex::new(Some(daemon)));
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..HOT_ORDERS {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("permit");
        let base = daemon
            .lock()
            .ok()
            .and_then(|d| d.as_ref().map(|d| d.public.clone()));
        let Some(base) = base else { break };
        let (client, cell, accepted, db) = (
            client.clone(),
            Arc::clone(&daemon),
            Arc::clone(&accepted),
            db.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let body = captured_for(&format!("pay_H{i}"), &format!("order_H{i}"), 74_900);
            if deliver(&client, &base, &format!("evt_H{i}"), &body).await == Delivery::Accepted {
                let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                // Looks at the file while payments are being applied...
                if n % 250 == 0 {
                    assert_stock_follows_states(&db, "HOT", HOT_ORDERS as i64, "under load");
                }
                // ...and kills the daemon halfway.
                if n == HOT_ORDERS / 2 {
                    if let Ok(mut cell) = cell.lock() {
                        if let Some(mut d) = cell.take() {
                            d.kill();
                        }
                    }
                }
            }
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.expect("payment task");
    }
    assert_stock_follows_states(&db, "HOT", HOT_ORDERS as i64, "the moment of the SIGKILL");
    let (states, _, _) = stored_counts(&db, "HOT");
    eprintln!("hot sku crash: states at the kill {states:?}");

    let daemon = Daemon::start(&config);
    assert_stock_follows_states(&db, "HOT", HOT_ORDERS as i64, "after the restart");
    drain(&client, &daemon).await;
    assert_stock_follows_states(&db, "HOT", HOT_ORDERS as i64, "drained");
    let reconcile = admin_json(&client, &daemon, "/admin/stock/reconcile").await;
    assert_eq!(reconcile["mismatches"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cash_on_delivery_orders_killed_mid_checkout_are_never_left_unconfirmed() {
    const COD_ORDERS: usize = 1000;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_daemon_config(dir.path());
    let db = dir.path().join("data/dropshipd.db");
    let daemon = Daemon::start(&config);
    let client = reqwest::Client::new();
    let stock = client
        .put(format!("{}/admin/stock/COD", daemon.admin))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&serde_json::json!({"on_hand": COD_ORDERS}))
        .send()
        .await
        .expect("stock");
    assert_eq!(stock.status(), 200);
    let daemon = Arc::new(Mutex::new(Some(daemon)));
    let created = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for i in 0..COD_ORDERS {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("permit");
        let base = daemon
            .lock()
            .ok()
            .and_then(|d| d.as_ref().map(|d| d.public.clone()));
        let Some(base) = base else { break };
        let (client, cell, created) = (client.clone(), Arc::clone(&daemon), Arc::clone(&created));
        tasks.push(tokio::spawn(async move {
            let mut body = checkout_body(&format!("C-{i}"), &format!("order_C{i}"), "COD", 1);
            body["payment_method"] = serde_json::json!("cod");
            let answered = client
                .post(format!("{base}/api/orders"))
                .bearer_auth(STOREFRONT_TOKEN)
                .json(&body)
                .send()
                .await
                .is_ok_and(|r| r.status() == 201);
            if answered && created.fetch_add(1, Ordering::SeqCst) + 1 == COD_ORDERS / 3 {
                if let Ok(mut cell) = cell.lock() {
                    if let Some(mut d) = cell.take() {
                        d.kill();
                    }
                }
            }
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.expect("checkout task");
    }
    let (states, _, _) = stored_counts(&db, "COD");
    eprintln!("cod crash: states at the kill {states:?}");
    assert_eq!(
        states.get("pending_payment").copied().unwrap_or(0),
        0,
        "a COD order is stored confirmed or not at all: {states:?}"
    );
    assert!(states.get("paid").copied().unwrap_or(0) >= (COD_ORDERS / 3) as i64);
    assert_stock_follows_states(&db, "COD", COD_ORDERS as i64, "the moment of the SIGKILL");

    // The storefront retries every checkout: each is an order, confirmed once.
    let daemon = Daemon::start(&config);
    for i in 0..COD_ORDERS {
        let mut body = checkout_body(&format!("C-{i}"), &format!("order_C{i}"), "COD", 1);
        body["payment_method"] = serde_json::json!("cod");
        let response = client
            .post(format!("{}/api/orders", daemon.public))
            .bearer_auth(STOREFRONT_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("retry");
        assert!(matches!(response.status().as_u16(), 200 | 201), "C-{i}");
        let order: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(order["state"], "paid", "C-{i}: {order}");
    }
    assert_stock_follows_states(&db, "COD", COD_ORDERS as i64, "after the retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_action_killed_mid_way_is_never_in_effect_without_its_audit_entry() {
    const ORDERS: usize = 400;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_daemon_config(dir.path());
    let db = dir.path().join("data/dropshipd.db");
    let daemon = Daemon::start(&config);
    let client = reqwest::Client::new();
    let stock = client
        .put(format!("{}/admin/stock/AUD", daemon.admin))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&serde_json::json!({"on_hand": ORDERS}))
        .send()
        .await
        .expect("stock");
    assert_eq!(stock.status(), 200);
    for i in 0..ORDERS {
        let mut body = checkout_body(&format!("A-{i}"), &format!("order_A{i}"), "AUD", 1);
        body["payment_method"] = serde_json::json!("cod");
        let created = client
            .post(format!("{}/api/orders", daemon.public))
            .bearer_auth(STOREFRONT_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("checkout");
        assert_eq!(created.status(), 201);
    }
    // Operators cancel them all, 32 at a time; the daemon dies half way.
    let daemon = Arc::new(Mutex::new(Some(daemon)));
    let answered = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for i in 0..ORDERS {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("permit");
        let admin = daemon
            .lock()
            .ok()
            .and_then(|d| d.as_ref().map(|d| d.admin.clone()));
        let Some(admin) = admin else { break };
        let (client, cell, answered) = (client.clone(), Arc::clone(&daemon), Arc::clone(&answered));
        tasks.push(tokio::spawn(async move {
            let done = client
                .post(format!("{admin}/admin/orders/A-{i}/cancel"))
                .bearer_auth(OPERATOR_TOKEN)
                .header("User-Agent", "ops-cli/1.0")
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if done && answered.fetch_add(1, Ordering::SeqCst) + 1 == ORDERS / 2 {
                if let Ok(mut cell) = cell.lock() {
                    if let Some(mut d) = cell.take() {
                        d.kill();
                    }
                }
            }
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.expect("cancel task");
    }
    // Every order the file shows cancelled has its operator's entry.
    let (cancelled, audited) = {
        let conn = dropshipd::storage::open_read_only(&db).expect("open database");
        let column = |sql: &str| -> Vec<String> {
            let mut stmt = conn.prepare(sql).expect("query");
            let rows = stmt.query_map([], |row| row.get(0)).expect("rows");
            rows.collect::<Result<_, _>>().expect("values")
        };
        let cancelled = column("SELECT order_id FROM orders WHERE state = 'cancelled'");
        let audited: BTreeSet<String> = column(
            "SELECT subject FROM audit_log WHERE action = 'admin:POST /admin/orders/{order_id}/cancel' AND actor = 'operator'",
        )
        .into_iter()
        .collect();
        (cancelled, audited)
    };
    eprintln!(
        "audit crash: {} cancelled at the kill, {} operator entries",
        cancelled.len(),
        audited.len()
    );
    assert!(cancelled.len() >= ORDERS / 2);
    let unaudited: Vec<_> = cancelled
        .iter()
        .filter(|id| !audited.contains(*id))
        .collect();
    assert!(
        unaudited.is_empty(),
        "cancelled without an audit entry: {unaudited:?}"
    );
    let verify = daemon_command(&config)
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .output()
        .expect("audit verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
