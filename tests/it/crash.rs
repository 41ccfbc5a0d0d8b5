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
