//! When storage cannot commit, the answer is 503 and never a 200: Razorpay
//! retries, and nothing half-stored blocks the retry.

use std::time::Duration;

use crate::helpers::*;

#[actix_web::test]
async fn a_locked_database_answers_503_and_stores_nothing() {
    let app = spawn_app_with(|settings| settings.config.storage.busy_timeout_ms = 200).await;
    let body = payment_captured("pay_L1", "order_L1", now_secs());

    // Another process (a backup tool, a careless sqlite3 shell) holds the write lock.
    let locker = rusqlite::Connection::open(&app.db_path).expect("open database");
    locker
        .busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    locker
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");

    let response = app.post_webhook(&body, Some("evt_L1")).await;
    assert_eq!(response.status(), 503);
    let reply: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(reply["error"], "storage_unavailable");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));

    let ready = app.get(&app.admin, "/readyz").await;
    assert_eq!(ready.status(), 503);
    let detail: serde_json::Value = ready.json().await.expect("JSON");
    assert!(
        detail["message"]
            .as_str()
            .is_some_and(|m| m.contains("storage")),
        "{detail}"
    );
    // The public probe says as much, and nothing of why.
    let public = app.get(&app.public, "/readyz").await;
    assert_eq!(public.status(), 503);
    let public: serde_json::Value = public.json().await.expect("JSON");
    assert!(
        !public["message"].as_str().unwrap_or("").contains("storage"),
        "{public}"
    );

    // Concurrent deliveries during the outage all fail the same way.
    let deliveries: Vec<(String, String)> = (0..10)
        .map(|i| {
            (
                format!("evt_M{i}"),
                payment_captured(&format!("pay_M{i}"), "order_M", now_secs()),
            )
        })
        .collect();
    let during = futures_util::future::join_all(
        deliveries
            .iter()
            .map(|(id, body)| app.post_webhook(body, Some(id))),
    )
    .await;
    assert!(during.iter().all(|r| r.status() == 503));

    locker.execute_batch("ROLLBACK").expect("release the lock");
    drop(locker);

    assert!(app.inbox_keys().is_empty());
    // Razorpay's retry now succeeds: the failed attempt left no dedup key behind.
    let response = app.post_webhook(&body, Some("evt_L1")).await;
    assert_eq!(response.status(), 200);
    let reply: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(reply["status"], "accepted");
    let ready = app.get(&app.admin, "/readyz").await;
    assert_eq!(ready.status(), 200);

    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "dropship_webhook_requests_total{outcome=\"unavailable\"}"
        ),
        Some(11.0)
    );
    assert_eq!(
        metric_value(
            &scrape,
            "dropship_webhook_requests_total{outcome=\"accepted\"}"
        ),
        Some(1.0)
    );
}
