//! The admin listener: roles, the dead-letter list, status, the kill switch and `/metrics`.

use crate::helpers::*;

#[actix_web::test]
async fn every_admin_route_wants_a_valid_token() {
    let app = spawn_app().await;
    let reads = ["/admin/status", "/admin/dlq"];
    let actions = ["/admin/processing/pause", "/admin/processing/resume"];
    for path in reads {
        assert_eq!(app.admin_get(path, None).await.status(), 401, "{path}");
        let wrong = app.admin_get(path, Some("guess")).await;
        assert_eq!(wrong.status(), 401, "{path}");
        assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = wrong.json().await.expect("JSON");
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(
            app.admin_get(path, Some(VIEWER_TOKEN)).await.status(),
            200,
            "{path}"
        );
        assert_eq!(
            app.admin_get(path, Some(OPERATOR_TOKEN)).await.status(),
            200,
            "{path}"
        );
    }
    for path in actions {
        assert_eq!(app.admin_post(path, None).await.status(), 401, "{path}");
        assert_eq!(
            app.admin_post(path, Some("guess")).await.status(),
            401,
            "{path}"
        );
        let viewer = app.admin_post(path, Some(VIEWER_TOKEN)).await;
        assert_eq!(viewer.status(), 403, "{path}");
        let body: serde_json::Value = viewer.json().await.expect("JSON");
        assert_eq!(body["error"], "forbidden");
        assert_eq!(
            app.admin_post(path, Some(OPERATOR_TOKEN)).await.status(),
            200,
            "{path}"
        );
    }
    // The raw token without the Bearer scheme is not accepted.
    let response = app
        .client
        .get(format!("{}/admin/status", app.admin))
        .header("Authorization", VIEWER_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
}

#[actix_web::test]
async fn status_reports_what_exists() {
    let app = spawn_app_with(|settings| settings.config.processing.paused = true).await;
    app.post_webhook(
        &payment_captured("pay_S1", "order_S1", now_secs()),
        Some("evt_S1"),
    )
    .await;
    app.post_webhook("not json", Some("evt_S2")).await;
    let status = app.status().await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_secs"].is_u64());
    assert_eq!(status["processing_paused"], true);
    assert_eq!(status["shipping_mode"], "auto");
    assert_eq!(status["inbox_pending"], 1);
    let states = status["orders_by_state"]
        .as_object()
        .expect("orders_by_state");
    assert_eq!(states.len(), 14);
    assert!(states.values().all(|n| n == 0));
    assert_eq!(
        status["actors"]["stock_shards"].as_array().map(Vec::len),
        Some(16)
    );
    assert_eq!(status["dlq_entries"], 1);
    // On SQLite the cluster is this instance alone, holding no leases.
    let cluster = &status["cluster"];
    assert_eq!(cluster["backend"], "sqlite");
    let me = cluster["instance_id"].as_str().expect("instance_id");
    assert!(
        me.ends_with(&format!("-{}", std::process::id())),
        "host name and process id by default: {me}"
    );
    let instances = cluster["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0]["instance_id"], me);
    assert_eq!(instances[0]["leases"], 0);
    assert!(instances[0]["last_seen"].is_string());
    assert_eq!(cluster["leases"], serde_json::json!([]));
    assert!(
        status["actors"]["webhook_ingest"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{status}"
    );
    assert!(
        status["storage"]["commits"]
            .as_u64()
            .is_some_and(|n| n >= 2),
        "{status}"
    );
}

#[actix_web::test]
async fn dead_letters_page_newest_first() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.post_webhook(&format!("junk {i}"), Some(&format!("evt_P{i}")))
            .await;
    }
    let first: serde_json::Value = app
        .admin_get("/admin/dlq?limit=2", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .expect("JSON");
    let ids: Vec<_> = first["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["event_id"].clone())
        .collect();
    assert_eq!(ids, vec!["evt_P4", "evt_P3"]);
    let next = first["next"].as_i64().expect("a next cursor");
    let second: serde_json::Value = app
        .admin_get(
            &format!("/admin/dlq?limit=2&after={next}"),
            Some(VIEWER_TOKEN),
        )
        .await
        .json()
        .await
        .expect("JSON");
    let ids: Vec<_> = second["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["event_id"].clone())
        .collect();
    assert_eq!(ids, vec!["evt_P2", "evt_P1"]);
    let last: serde_json::Value = app
        .admin_get(
            &format!("/admin/dlq?limit=2&after={}", second["next"]),
            Some(VIEWER_TOKEN),
        )
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(last["entries"].as_array().map(Vec::len), Some(1));
    assert!(last["next"].is_null());
}

#[actix_web::test]
async fn the_kill_switch_persists_across_a_restart() {
    let app = spawn_app().await;
    let response = app
        .admin_post("/admin/processing/pause", Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.status().await["processing_paused"], true);
    assert_eq!(
        metric_value(&app.metrics().await, "dropship_processing_paused"),
        Some(1.0)
    );

    let dir = app.stop().await;
    let restarted = spawn_app_in(dir, |_| {}).await;
    assert_eq!(restarted.status().await["processing_paused"], true);
    assert_eq!(
        metric_value(&restarted.metrics().await, "dropship_processing_paused"),
        Some(1.0)
    );

    restarted
        .admin_post("/admin/processing/resume", Some(OPERATOR_TOKEN))
        .await;
    let dir = restarted.stop().await;
    let again = spawn_app_in(dir, |_| {}).await;
    assert_eq!(again.status().await["processing_paused"], false);
}

#[actix_web::test]
async fn metrics_need_no_token_and_carry_the_contract_names() {
    let app = spawn_app().await;
    let scrape = app.metrics().await;
    for name in [
        "# TYPE dropship_webhook_requests_total counter",
        "# TYPE dropship_webhook_ack_seconds histogram",
        "# TYPE dropship_inbox_pending gauge",
        "# TYPE dropship_dlq_entries gauge",
        "# TYPE dropship_processing_paused gauge",
    ] {
        assert!(scrape.contains(name), "missing {name:?} in\n{scrape}");
    }
    for outcome in [
        "accepted",
        "duplicate",
        "quarantined",
        "invalid_signature",
        "too_large",
        "unavailable",
    ] {
        let series = format!("dropship_webhook_requests_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric_value(&scrape, &series), Some(0.0), "{series}");
    }
}
