//! Webhook receipts, the daemon's switches and the audit chain on
//! PostgreSQL, where several instances write at once.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use dropshipd::storage::postgres::PgStore;
use dropshipd::storage::{AuditRecord, AuditedAction, RecordOutcome, Storage, WebhookRecord};

use crate::postgres::{options, scratch_postgres};

fn delivery(key: &str) -> WebhookRecord {
    WebhookRecord::Accepted {
        dedup_key: key.into(),
        acted_on: true,
        event: "payment.captured".into(),
        razorpay_order_id: Some("order_R1".into()),
        razorpay_payment_id: Some("pay_R1".into()),
        event_created_at: 1,
        received_at_ms: 2,
        body: b"{\"event\":\"payment.captured\"}".to_vec(),
    }
}

fn action() -> (AuditedAction, Arc<AtomicBool>) {
    let committed = Arc::new(AtomicBool::new(false));
    let record = AuditRecord {
        at_ms: 5,
        actor: "operator".into(),
        action: "processing.pause".into(),
        subject: None,
        detail: "{}".into(),
        peer: Some("127.0.0.1".into()),
        user_agent: Some("test".into()),
    };
    (
        AuditedAction::new(record, Arc::clone(&committed)),
        committed,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_one_delivery_on_several_instances_are_stored_once() {
    let Some(server) =
        scratch_postgres("copies_of_one_delivery_on_several_instances_are_stored_once")
    else {
        return;
    };
    let url = server.create_database("receipts").expect("database");
    // Three instances, each with its own pool, 20 copies each of one event.
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(
            Storage::open_postgres(&options(url.clone()))
                .await
                .expect("connect"),
        );
    }
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let storage = instances[i % 3].clone();
            tokio::spawn(async move { storage.record_webhook(delivery("evt_R1")).await })
        })
        .collect();
    let (mut accepted, mut duplicates) = (0, 0);
    for task in tasks {
        match task.await.expect("task").expect("stored") {
            RecordOutcome::Accepted { pending: true, .. } => accepted += 1,
            RecordOutcome::Duplicate => duplicates += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((accepted, duplicates), (1, 59));
    let pending = instances[1].pending_inbox(0, 10).await.expect("inbox");
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].body, b"{\"event\":\"payment.captured\"}",
        "opened as sent"
    );
    assert_eq!(
        instances[2]
            .ingest_counts()
            .await
            .expect("counts")
            .inbox_pending,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switches_hold_for_every_instance_and_the_audit_chain_catches_tampering() {
    let Some(server) =
        scratch_postgres("switches_hold_for_every_instance_and_the_audit_chain_catches_tampering")
    else {
        return;
    };
    let url = server.create_database("switches").expect("database");
    let one = Storage::open_postgres(&options(url.clone()))
        .await
        .expect("one");
    let other = Storage::open_postgres(&options(url.clone()))
        .await
        .expect("other");
    assert_eq!(other.processing_paused().await.expect("read"), None);
    let (audit, committed) = action();
    one.set_processing_paused(true, Some(audit))
        .await
        .expect("pause");
    assert!(committed.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(other.processing_paused().await.expect("read"), Some(true));
    other.set_shipping_manual(true, None).await.expect("manual");
    assert_eq!(one.shipping_manual().await.expect("read"), Some(true));
    one.probe_writable(7).await.expect("writable");

    // Appends from both instances make one chain.
    for i in 0..10 {
        let (audit, _) = action();
        let storage = if i % 2 == 0 { &one } else { &other };
        storage.record_action(&audit).await.expect("append");
    }
    let entries = one.audit_entries(0, 100).await.expect("entries");
    assert_eq!(entries.len(), 11);
    assert!(entries.windows(2).all(|w| w[1].prev_hash == w[0].hash));
    let verifier = PgStore::connect(&options(url.clone()))
        .await
        .expect("verifier");
    assert_eq!(verifier.verify_audit_log().await.expect("intact"), 11);

    // The log refuses changes; with its triggers switched off by hand, a cut
    // tail is still caught by the recorded head.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    assert!(client
        .execute("DELETE FROM audit_log WHERE seq = 11", &[])
        .await
        .is_err());
    client
        .batch_execute(
            "ALTER TABLE audit_log DISABLE TRIGGER USER;
             DELETE FROM audit_log WHERE seq = 11;
             ALTER TABLE audit_log ENABLE TRIGGER USER;",
        )
        .await
        .expect("tamper");
    let broken = verifier.verify_audit_log().await;
    assert!(broken.is_err(), "a cut tail went unnoticed: {broken:?}");
}
