//! `POST /webhooks/razorpay`, case by case as SPEC §4 lists them.

use serde_json::Value;

use crate::helpers::*;
use dropshipd::domain::signature::sign;

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[actix_web::test]
async fn a_signed_event_is_accepted_once_and_then_duplicate() {
    // Paused, so the entry stays pending in the inbox where the test can count it.
    let app = spawn_app_with(|settings| settings.config.processing.paused = true).await;
    let body = payment_captured("pay_A1", "order_A1", now_secs());

    let (status, reply) = json(app.post_webhook(&body, Some("evt_A1")).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        reply,
        serde_json::json!({"status": "accepted", "event_id": "evt_A1"})
    );

    let (status, reply) = json(app.post_webhook(&body, Some("evt_A1")).await).await;
    assert_eq!(status, 200);
    assert_eq!(reply["status"], "duplicate");
    // The id decides, not the body: Razorpay's retries carry the same id.
    let other_body = payment_captured("pay_A2", "order_A2", now_secs());
    let (_, reply) = json(app.post_webhook(&other_body, Some("evt_A1")).await).await;
    assert_eq!(reply["status"], "duplicate");

    assert_eq!(app.inbox_keys(), vec!["evt_A1".to_string()]);
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "dropship_webhook_requests_total{outcome=\"accepted\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &scrape,
            "dropship_webhook_requests_total{outcome=\"duplicate\"}"
        ),
        Some(2.0)
    );
    assert_eq!(metric_value(&scrape, "dropship_inbox_pending"), Some(1.0));
    assert_eq!(
        metric_value(&scrape, "dropship_webhook_ack_seconds_count"),
        Some(3.0)
    );
}

#[actix_web::test]
async fn without_an_event_id_the_body_hash_is_the_dedup_key() {
    let app = spawn_app().await;
    let body = payment_captured("pay_B1", "order_B1", now_secs());
    let (status, first) = json(app.post_webhook(&body, None).await).await;
    assert_eq!(status, 200);
    assert_eq!(first["status"], "accepted");
    let key = first["event_id"].as_str().unwrap_or_default().to_owned();
    assert!(key.starts_with("sha256:") && key.len() == 7 + 64, "{key}");

    let (_, again) = json(app.post_webhook(&body, None).await).await;
    assert_eq!(again["status"], "duplicate");
    let (_, different) = json(app.post_webhook(&format!("{body} "), None).await).await;
    assert_eq!(different["status"], "accepted");
    assert_eq!(app.inbox_keys().len(), 2);
}

#[actix_web::test]
async fn bad_signatures_are_refused_and_store_nothing() {
    let app = spawn_app().await;
    let body = payment_captured("pay_C1", "order_C1", now_secs());
    let good = sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
    let wrong_secret = sign(b"not-the-secret", body.as_bytes());
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("wrong secret", Some(wrong_secret)),
        ("upper-case hex", Some(good.to_uppercase())),
        ("truncated", Some(good[..60].to_owned())),
        ("empty", Some(String::new())),
    ];
    for (case, signature) in &cases {
        let response = app
            .post_webhook_raw(
                body.clone().into_bytes(),
                signature.as_deref(),
                Some("evt_C1"),
            )
            .await;
        let (status, reply) = json(response).await;
        assert_eq!(status, 400, "{case}");
        assert_eq!(reply["error"], "invalid_signature", "{case}");
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}"
        );
    }
    // A body changed in one byte after signing.
    let tampered = body.replace("129900", "129901");
    let (status, _) = json(
        app.post_webhook_raw(tampered.into_bytes(), Some(&good), Some("evt_C1"))
            .await,
    )
    .await;
    assert_eq!(status, 400);

    assert!(app.inbox_keys().is_empty());
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "dropship_webhook_requests_total{outcome=\"invalid_signature\"}"
        ),
        Some(cases.len() as f64 + 1.0)
    );
    // Nothing was recorded, not even the dedup key: the genuine delivery is new.
    let (_, reply) = json(app.post_webhook(&body, Some("evt_C1")).await).await;
    assert_eq!(reply["status"], "accepted");
}

#[actix_web::test]
async fn the_previous_secret_verifies_during_a_rotation() {
    let app = spawn_app_with(|settings| {
        settings.secrets.previous_webhook_secret = Some(secret("whsec_old_secret"));
    })
    .await;
    let body = payment_captured("pay_D1", "order_D1", now_secs());
    let old = sign(b"whsec_old_secret", body.as_bytes());
    let (status, reply) = json(
        app.post_webhook_raw(body.clone().into_bytes(), Some(&old), Some("evt_D1"))
            .await,
    )
    .await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("accepted")));
    let (status, _) = json(app.post_webhook(&body, Some("evt_D2")).await).await;
    assert_eq!(status, 200);

    let settled = spawn_app().await;
    let (status, _) = json(
        settled
            .post_webhook_raw(body.into_bytes(), Some(&old), Some("evt_D1"))
            .await,
    )
    .await;
    assert_eq!(status, 400);
}

#[actix_web::test]
async fn oversized_bodies_get_413_declared_or_streamed() {
    let app = spawn_app_with(|settings| settings.config.server.max_body_bytes = 2048).await;
    let padding = "x".repeat(4096);
    let big = format!(
        r#"{{"entity":"event","event":"payment.authorized","pad":"{padding}","payload":{{}},"created_at":{}}}"#,
        now_secs()
    );
    let signature = sign(WEBHOOK_SECRET.as_bytes(), big.as_bytes());
    let (status, reply) = json(
        app.post_webhook_raw(big.clone().into_bytes(), Some(&signature), Some("evt_E1"))
            .await,
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(reply["error"], "payload_too_large");

    // Chunked, with no Content-Length to refuse it up front.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.as_bytes().chunks(512).map(|c| Ok(c.to_vec())).collect();
    let response = app
        .client
        .post(format!("{}/webhooks/razorpay", app.public))
        .header("X-Razorpay-Signature", &signature)
        .header("X-Razorpay-Event-Id", "evt_E2")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("chunked request");
    assert_eq!(response.status(), 413);

    assert!(app.inbox_keys().is_empty());
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "dropship_webhook_requests_total{outcome=\"too_large\"}"
        ),
        Some(2.0)
    );

    // Just under the limit is fine.
    let small = payment_captured("pay_E3", "order_E3", now_secs());
    assert!(small.len() < 2048);
    let (status, _) = json(app.post_webhook(&small, Some("evt_E3")).await).await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn signed_but_unusable_events_are_quarantined_with_200() {
    let app = spawn_app().await;
    let now = now_secs();
    let window = app.settings.config.razorpay.accept_window_secs as i64;
    let cases = [
        ("evt_Q1", "this is not json".to_owned(), "not_json"),
        ("evt_Q2", r#"{"hello":"world"}"#.to_owned(), "unknown_shape"),
        (
            "evt_Q3",
            format!(
                r#"{{"entity":"event","event":"payment.captured","payload":{{"payment":{{"entity":{{"id":"pay_1"}}}}}},"created_at":{now}}}"#
            ),
            "unknown_shape",
        ),
        (
            "evt_Q4",
            payment_captured("pay_Q4", "order_Q4", now - window - 60),
            "too_old",
        ),
        (
            "evt_Q5",
            payment_captured("pay_Q5", "order_Q5", now + 3600),
            "created_in_future",
        ),
    ];
    for (event_id, body, reason) in &cases {
        let (status, reply) = json(app.post_webhook(body, Some(event_id)).await).await;
        assert_eq!(status, 200, "{event_id}");
        assert_eq!(reply["status"], "quarantined", "{event_id}");
        assert_eq!(reply["reason"], *reason, "{event_id}");
    }
    // A quarantined key is a duplicate when Razorpay retries it.
    let (_, reply) = json(app.post_webhook(&cases[0].1, Some("evt_Q1")).await).await;
    assert_eq!(reply["status"], "duplicate");

    assert!(app.inbox_keys().is_empty());
    let letters = app.dead_letters().await;
    assert_eq!(letters.len(), cases.len());
    // Newest first, each with its reason and the id it came with.
    for (letter, (event_id, _, reason)) in letters.iter().zip(cases.iter().rev()) {
        assert_eq!(letter["event_id"], *event_id);
        assert_eq!(letter["reason"], *reason);
        assert!(letter["id"].is_i64());
        assert!(letter["received_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
    }
    let status = app.status().await;
    assert_eq!(status["dlq_entries"], cases.len());
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(&scrape, "dropship_dlq_entries"),
        Some(cases.len() as f64)
    );
    assert_eq!(
        metric_value(
            &scrape,
            "dropship_webhook_requests_total{outcome=\"quarantined\"}"
        ),
        Some(cases.len() as f64)
    );
}

#[actix_web::test]
async fn events_not_acted_on_are_stored_and_acknowledged() {
    let app = spawn_app().await;
    let body = format!(
        r#"{{"entity":"event","account_id":"acc_X","event":"payment.authorized","contains":["payment"],"payload":{{"payment":{{"entity":{{"id":"pay_F1","status":"authorized","notes":{{"k":"v"}}}}}}}},"created_at":{}}}"#,
        now_secs()
    );
    let (status, reply) = json(app.post_webhook(&body, Some("evt_F1")).await).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("accepted")));
    assert_eq!(app.inbox_keys(), vec!["evt_F1".to_string()]);
}

#[actix_web::test]
async fn webhooks_are_accepted_while_processing_is_paused() {
    let app = spawn_app_with(|settings| settings.config.processing.paused = true).await;
    assert_eq!(app.status().await["processing_paused"], true);
    let body = payment_captured("pay_G1", "order_G1", now_secs());
    let (status, reply) = json(app.post_webhook(&body, Some("evt_G1")).await).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("accepted")));
}

#[actix_web::test]
async fn concurrent_deliveries_of_one_event_store_it_once() {
    let app = spawn_app().await;
    let body = payment_captured("pay_H1", "order_H1", now_secs());
    let replies =
        futures_util::future::join_all((0..40).map(|_| app.post_webhook(&body, Some("evt_H1"))))
            .await;
    let mut accepted = 0;
    for response in replies {
        let (status, reply) = json(response).await;
        assert_eq!(status, 200);
        if reply["status"] == "accepted" {
            accepted += 1;
        } else {
            assert_eq!(reply["status"], "duplicate");
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(app.inbox_keys(), vec!["evt_H1".to_string()]);
}

#[actix_web::test]
async fn the_public_readiness_probe_commits_at_most_once_a_second() {
    let app = spawn_app().await;
    let commits = |status: &serde_json::Value| status["storage"]["commits"].as_u64().unwrap_or(0);
    let before = commits(&app.status().await);
    let started = std::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(app.get(&app.public, "/readyz").await.status(), 200);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let probes = commits(&app.status().await) - before;
    assert!(
        probes <= seconds + 1,
        "{probes} commits for 50 public probes in under {seconds} s"
    );
}

#[actix_web::test]
async fn the_public_listener_serves_only_its_own_routes() {
    let app = spawn_app().await;
    for path in ["/admin/status", "/metrics", "/nope"] {
        let response = app.get(&app.public, path).await;
        assert_eq!(response.status(), 404, "{path}");
        let (_, body) = json(response).await;
        assert_eq!(body["error"], "not_found");
    }
    for base in [&app.public, &app.admin] {
        let health = app.get(base, "/healthz").await;
        assert_eq!(health.status(), 200);
        let ready = app.get(base, "/readyz").await;
        assert_eq!(ready.status(), 200);
    }
}
