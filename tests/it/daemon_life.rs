//! Daemon life under a service manager (issue 6): systemd's notify protocol
//! (READY, watchdog keep-alives that stop while the writer is stuck,
//! STOPPING), and SIGTERM under load: exit 0, nothing acknowledged lost, and
//! every order carries on after the restart.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dropshipd::domain::signature::sign;
use dropshipd::sandbox::Faults;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::helpers::*;

/// Datagrams received on the notify socket within `window`.
fn receive_for(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    tokio::task::block_in_place(|| receive_blocking(socket, window))
}

fn receive_blocking(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    }
    messages
}

fn count(messages: &[String], line: &str) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == line))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_then_keep_alives_that_stop_while_storage_is_stuck() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_daemon_config(dir.path());
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    // WatchdogSec=1s: a keep-alive is due every half second.
    let mut daemon = Daemon::start_with(&config, |command| {
        command
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "1000000");
    });

    let first = receive_for(&socket, Duration::from_millis(2500));
    assert!(
        first
            .first()
            .is_some_and(|m| m.lines().any(|l| l == "READY=1")),
        "READY=1 comes first: {first:?}"
    );
    assert!(count(&first, "WATCHDOG=1") >= 2, "{first:?}");

    // Another process holds the database's write lock: the writer is stuck,
    // and the keep-alives stop while it is.
    let db = dir.path().join("data/dropshipd.db");
    let blocker = rusqlite::Connection::open(&db).expect("open db");
    blocker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let _settling = receive_for(&socket, Duration::from_millis(1200));
    let stuck = receive_for(&socket, Duration::from_millis(2500));
    assert_eq!(count(&stuck, "WATCHDOG=1"), 0, "{stuck:?}");
    assert!(
        stuck
            .iter()
            .any(|m| m.contains("STATUS=unhealthy") && m.contains("storage")),
        "{stuck:?}"
    );
    // The same check answers /readyz.
    let ready = reqwest::get(format!("{}/readyz", daemon.public))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);

    blocker.execute_batch("ROLLBACK").expect("unlock");
    let recovered = receive_for(&socket, Duration::from_millis(4000));
    assert!(count(&recovered, "WATCHDOG=1") >= 1, "{recovered:?}");

    daemon.terminate();
    let status = tokio::task::block_in_place(|| daemon.wait_exit(Duration::from_secs(45)))
        .expect("stopped within the unit's TimeoutStopSec");
    assert!(status.success(), "{status:?}");
    let last = receive_for(&socket, Duration::from_millis(200));
    assert!(count(&last, "STOPPING=1") == 1, "{last:?}");
}

const ORDERS: usize = 240;
const CONCURRENCY: usize = 16;
const TERM_AFTER_PAID: usize = 80;

/// Whether an order's payment webhook was acknowledged before the stop.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    paid_ack: bool,
}

async fn checkout(client: &reqwest::Client, base: &str, i: usize) -> bool {
    let body = checkout_body(&format!("XVC-T{i}"), &format!("order_T{i}"), "TEE", 1);
    client
        .post(format!("{base}/api/orders"))
        .bearer_auth(STOREFRONT_TOKEN)
        .json(&body)
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == 201 || r.status().as_u16() == 200)
}

async fn pay(client: &reqwest::Client, base: &str, i: usize) -> bool {
    let body = captured_for(&format!("pay_T{i}"), &format!("order_T{i}"), 74_900);
    let signature = sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
    let Ok(response) = client
        .post(format!("{base}/webhooks/razorpay"))
        .header("X-Razorpay-Signature", signature)
        .header("X-Razorpay-Event-Id", format!("evt_T{i}"))
        .body(body)
        .send()
        .await
    else {
        return false;
    };
    let ok = response.status() == 200;
    let reply: serde_json::Value = response.json().await.unwrap_or_default();
    ok && (reply["status"] == "accepted" || reply["status"] == "duplicate")
}

async fn state_of(client: &reqwest::Client, base: &str, i: usize) -> String {
    let Ok(response) = client
        .get(format!("{base}/api/orders/XVC-T{i}"))
        .bearer_auth(STOREFRONT_TOKEN)
        .send()
        .await
    else {
        return "unreachable".into();
    };
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body["state"].as_str().unwrap_or("none").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_zero_loses_nothing_and_every_order_continues() {
    // Shiprocket answers after 40 ms, so shipments are mid-call at SIGTERM.
    let (sandbox, url) = {
        let started = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&started);
        std::thread::spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let faults = Faults {
                    latency_ms: 40,
                    ..Faults::default()
                };
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(start_sandbox(faults));
                }
                std::future::pending::<()>().await;
            });
        });
        loop {
            if let Some(found) = started.lock().ok().and_then(|mut s| s.take()) {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let extra = format!(
        "[shiprocket]\nbase_url = \"{url}\"\nrequests_per_hour = 3600000\nburst = 1000\n\
         [[shiprocket.accounts]]\nname = \"primary\"\nemail = \"api@example.com\"\npassword = \"env:SHIPROCKET_PASSWORD\"\n"
    );
    let config = write_daemon_config_with(dir.path(), &extra);
    let mut daemon = Daemon::start(&config);
    let client = reqwest::Client::new();
    let stocked = client
        .put(format!("{}/admin/stock/TEE", daemon.admin))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"on_hand": ORDERS}))
        .send()
        .await
        .expect("stock");
    assert_eq!(stocked.status(), 200);

    let progress = Arc::new(Mutex::new(vec![Progress::default(); ORDERS]));
    let paid = Arc::new(AtomicUsize::new(0));
    let (term_tx, term_rx) = tokio::sync::oneshot::channel::<()>();
    let term_tx = Arc::new(Mutex::new(Some(term_tx)));
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for i in 0..ORDERS {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("permit");
        let (client, base) = (client.clone(), daemon.public.clone());
        let (progress, paid, term_tx) = (
            Arc::clone(&progress),
            Arc::clone(&paid),
            Arc::clone(&term_tx),
        );
        tasks.push(tokio::spawn(async move {
            let created = checkout(&client, &base, i).await;
            let paid_ack = created && pay(&client, &base, i).await;
            if let Ok(mut p) = progress.lock() {
                p[i] = Progress { paid_ack };
            }
            if paid_ack && paid.fetch_add(1, Ordering::SeqCst) + 1 == TERM_AFTER_PAID {
                if let Some(tx) = term_tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(());
                }
            }
            drop(permit);
        }));
    }
    term_rx.await.expect("enough payments acknowledged");
    daemon.terminate();
    for task in tasks {
        task.await.expect("load task");
    }
    let stopping = Instant::now();
    let status = tokio::task::block_in_place(|| daemon.wait_exit(Duration::from_secs(45)))
        .expect("stopped within the unit's TimeoutStopSec");
    assert!(status.success(), "exit status {status:?}");
    assert!(stopping.elapsed() < Duration::from_secs(45));
    assert!(
        daemon.logs().iter().any(|l| l.contains("drained")),
        "the stop drained in-flight work"
    );
    let before: Vec<Progress> = progress.lock().map(|p| p.clone()).expect("progress");
    let acked: Vec<usize> = (0..ORDERS).filter(|&i| before[i].paid_ack).collect();
    assert!(acked.len() >= TERM_AFTER_PAID);

    // Restart. Every acknowledged payment must take effect without being sent
    // again; then the storefront and Razorpay retry what was not acknowledged.
    let daemon = Daemon::start(&config);
    let base = daemon.public.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    for &i in &acked {
        loop {
            let state = state_of(&client, &base, i).await;
            if state == "ready_to_ship" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "order {i}, acknowledged before SIGTERM, is {state} after the restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for i in (0..ORDERS).filter(|i| !before[*i].paid_ack) {
        assert!(checkout(&client, &base, i).await, "checkout {i} retried");
        assert!(pay(&client, &base, i).await, "payment {i} retried");
    }
    for i in 0..ORDERS {
        loop {
            let state = state_of(&client, &base, i).await;
            if state == "ready_to_ship" {
                break;
            }
            assert!(Instant::now() < deadline, "order {i} is {state}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Exactly one Shiprocket order per order, and each unit sold once.
    let mut creates: BTreeMap<String, usize> = BTreeMap::new();
    for order in sandbox.orders() {
        *creates.entry(order.channel_order_id).or_default() += 1;
    }
    assert_eq!(creates.len(), ORDERS);
    assert!(creates.values().all(|&n| n == 1), "{creates:?}");
    let stock: serde_json::Value = client
        .get(format!("{}/admin/stock/TEE", daemon.admin))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .expect("stock")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stock["on_hand"], 0, "{stock}");
    assert_eq!(stock["reserved"], 0, "{stock}");
}
