//! A sale day against the built binary: thousands of paid orders queued for a
//! Shiprocket account that allows 1,000 requests an hour. The backlog costs
//! nothing else (every other message to a queued order is answered while it
//! waits, actors and in-flight calls do not grow with it), and a SIGKILL with
//! the queue full loses nothing and doubles nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dropshipd::domain::signature::sign;
use dropshipd::sandbox::{DuplicatePolicy, Faults};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::helpers::*;

const TRACKING_TOKEN: &str = "tracking-token-for-tests";

/// The `[shiprocket]` section and one account, against the sandbox at `url`.
fn shiprocket_toml(url: &str, per_hour: u32, burst: u32) -> String {
    format!(
        "[shiprocket]\nbase_url = \"{url}\"\nrequests_per_hour = {per_hour}\nburst = {burst}\n\
         request_timeout_ms = 2000\ntracking_token = \"env:SHIPROCKET_TRACKING_TOKEN\"\n\
         [[shiprocket.accounts]]\nname = \"primary\"\nemail = \"api@example.com\"\n\
         password = \"env:SHIPROCKET_PASSWORD\"\n"
    )
}

fn start(config: &std::path::Path) -> Daemon {
    Daemon::start_with(config, |command| {
        command.env("SHIPROCKET_TRACKING_TOKEN", TRACKING_TOKEN);
    })
}

struct Client {
    http: reqwest::Client,
    public: String,
    admin: String,
}

impl Client {
    fn of(daemon: &Daemon) -> Self {
        Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                // A guard, not a measurement: a request stuck behind the
                // backlog fails the test instead of hanging it.
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            public: daemon.public.clone(),
            admin: daemon.admin.clone(),
        }
    }

    async fn status(&self) -> Value {
        self.http
            .get(format!("{}/admin/status", self.admin))
            .bearer_auth(VIEWER_TOKEN)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("status JSON")
    }

    async fn state_of(&self, order_id: &str) -> Value {
        let order: Value = self
            .http
            .get(format!("{}/api/orders/{order_id}", self.public))
            .bearer_auth(STOREFRONT_TOKEN)
            .send()
            .await
            .expect("order")
            .json()
            .await
            .expect("order JSON");
        order["state"].clone()
    }

    async fn wait_for(&self, order_id: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.state_of(order_id).await != state {
            assert!(
                Instant::now() < deadline,
                "{order_id} never reached {state}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn checkout(&self, body: &Value) -> u16 {
        self.http
            .post(format!("{}/api/orders", self.public))
            .bearer_auth(STOREFRONT_TOKEN)
            .json(body)
            .send()
            .await
            .expect("checkout")
            .status()
            .as_u16()
    }

    async fn webhook(&self, body: &str, event_id: &str) -> Value {
        let signature = sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
        self.http
            .post(format!("{}/webhooks/razorpay", self.public))
            .header("X-Razorpay-Signature", signature)
            .header("X-Razorpay-Event-Id", event_id)
            .body(body.to_owned())
            .send()
            .await
            .expect("webhook")
            .json()
            .await
            .expect("webhook JSON")
    }

    async fn set_stock(&self, sku: &str, on_hand: i64) {
        let response = self
            .http
            .put(format!("{}/admin/stock/{sku}", self.admin))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"on_hand": on_hand}))
            .send()
            .await
            .expect("stock");
        assert_eq!(response.status(), 200);
    }

    /// `count` cash-on-delivery checkouts `XVC-<prefix><n>`, 32 at a time:
    /// each is paid (confirmed) and queued for shipping on registration.
    async fn cod_orders(self: &Arc<Self>, prefix: &str, range: std::ops::Range<usize>) {
        let permits = Arc::new(Semaphore::new(32));
        let mut tasks = Vec::new();
        for n in range {
            let permit = Arc::clone(&permits).acquire_owned().await.expect("permit");
            let client = Arc::clone(self);
            let id = format!("XVC-{prefix}{n}");
            let rzp = format!("order_{prefix}{n}");
            tasks.push(tokio::spawn(async move {
                let mut body = checkout_body(&id, &rzp, "TEE", 1);
                body["payment_method"] = json!("cod");
                let status = client.checkout(&body).await;
                drop(permit);
                status
            }));
        }
        for task in tasks {
            assert_eq!(task.await.expect("checkout task"), 201);
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Idle actors passivate (a second here), so what stays live is work in flight.
async fn settle_actors(client: &Client) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live = client.status().await["actors"]["orders_live"]
            .as_u64()
            .unwrap_or(u64::MAX);
        if live <= 20 || Instant::now() > deadline {
            return live;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn timed<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = work.await;
    eprintln!(
        "sale day: {what} answered in {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    out
}

#[actix_web::test]
async fn a_backlog_of_five_thousand_at_a_thousand_an_hour_costs_nothing_else() {
    let (sandbox, url) = start_sandbox_seeded(Faults::default(), 5);
    let dir = tempfile::tempdir().expect("temp dir");
    let extra = format!(
        "{}[processing]\norder_actor_idle_ms = 1000\n",
        shiprocket_toml(&url, 1000, 10)
    );
    let config = write_daemon_config_with(dir.path(), &extra);
    let daemon = start(&config);
    let client = Arc::new(Client::of(&daemon));
    client.set_stock("TEE", 10_000).await;

    client.cod_orders("B", 0..2500).await;
    // Prepaid orders in the middle of the queue, for the refund and the repeat.
    for tag in ["BP1", "BP2"] {
        let (id, rzp) = (format!("XVC-{tag}"), format!("order_{tag}"));
        assert_eq!(
            client.checkout(&checkout_body(&id, &rzp, "TEE", 1)).await,
            201
        );
        let paid = client
            .webhook(
                &captured_for(&format!("pay_{tag}"), &rzp, 74_900),
                &format!("evt_{tag}"),
            )
            .await;
        assert_eq!(paid["status"], "accepted");
        client.wait_for(&id, "awaiting_shipment").await;
    }
    let live_half = settle_actors(&client).await;
    let rss_half = rss_kib(daemon.pid());
    client.cod_orders("B", 2500..5000).await;
    let live_full = settle_actors(&client).await;
    let rss_full = rss_kib(daemon.pid());
    let status = client.status().await;
    let gateway = &status["actors"]["gateways"][0];
    eprintln!(
        "sale day: {} queued, drain {} s, {} calls in flight; live actors {live_half} -> {live_full}; RSS {rss_half} -> {rss_full} KiB",
        gateway["queued"], gateway["drain_eta_secs"], gateway["in_flight"]
    );
    assert!(gateway["queued"].as_u64().unwrap_or(0) >= 4_950, "{status}");
    assert!(
        gateway["in_flight"].as_u64().unwrap_or(u64::MAX) <= 10,
        "calls in flight are bounded by the account, not the backlog: {gateway}"
    );
    assert!(
        gateway["drain_eta_secs"].as_u64().unwrap_or(0) >= 10 * 3600,
        "about 15,000 calls at 1,000 an hour: {gateway}"
    );
    assert!(
        live_full <= 20,
        "queued orders are rows, not live actors: {live_full} live"
    );

    // Every other message to a queued order is answered while the backlog waits.
    let cancelled = timed("cancel of a queued order", async {
        client
            .http
            .post(format!("{}/admin/orders/XVC-B4000/cancel", client.admin))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .expect("cancel")
    })
    .await;
    assert_eq!(cancelled.status(), 200);
    assert_eq!(client.state_of("XVC-B4000").await, "cancelled");

    let refund = refund_processed("rfnd_BP1", "pay_BP1", "order_BP1", 74_900, 74_900, 74_900);
    timed("refund of a queued order, to refunded", async {
        client.webhook(&refund, "evt_rfnd_BP1").await;
        client.wait_for("XVC-BP1", "refunded").await;
    })
    .await;

    let again = captured_for("pay_BP2", "order_BP2", 74_900);
    let repeated = timed("a repeated payment of a queued order", async {
        client.webhook(&again, "evt_BP2_again").await
    })
    .await;
    assert_eq!(repeated["status"], "accepted");

    let update = update("XVC-B4001", "AWB-NONE", 18, "02 12 2026 10:00:00");
    let tracked = timed("a tracking update of a queued order", async {
        client
            .http
            .post(format!("{}/webhooks/tracking", client.public))
            .header("x-api-key", TRACKING_TOKEN)
            .json(&update)
            .send()
            .await
            .expect("tracking")
    })
    .await;
    assert_eq!(tracked.status(), 200);

    let read = timed("an admin read of a queued order", async {
        client
            .http
            .get(format!("{}/admin/orders/XVC-B4002", client.admin))
            .bearer_auth(VIEWER_TOKEN)
            .send()
            .await
            .expect("read")
    })
    .await;
    assert_eq!(read.status(), 200);

    timed("a new checkout and payment, to awaiting_shipment", async {
        let (id, rzp) = ("XVC-BN1", "order_BN1");
        assert_eq!(
            client.checkout(&checkout_body(id, rzp, "TEE", 1)).await,
            201
        );
        client
            .webhook(&captured_for("pay_BN1", rzp, 74_900), "evt_BN1")
            .await;
        client.wait_for(id, "awaiting_shipment").await;
    })
    .await;
    let ready = client
        .http
        .get(format!("{}/readyz", client.public))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);

    // All of that while the backlog still waits.
    let status = client.status().await;
    assert!(
        status["actors"]["gateways"][0]["queued"]
            .as_u64()
            .unwrap_or(0)
            >= 4_900,
        "{status}"
    );
    let created = sandbox.orders().len();
    assert!(created < 20, "the account's rate holds: {created} created");
    assert!(
        sandbox
            .orders()
            .iter()
            .all(|o| o.channel_order_id != "XVC-B4000" && o.channel_order_id != "XVC-BP1"),
        "cancelled and refunded orders are never sent"
    );
}

#[actix_web::test]
async fn sigkill_with_two_thousand_queued_resumes_the_queue_with_one_shiprocket_order_each() {
    const ORDERS: usize = 2000;
    // Slow calls and lost answers while the queue fills; a re-create would duplicate.
    let (sandbox, url) = start_sandbox_seeded(
        Faults {
            latency_ms: 300,
            error_after_work_rate: 0.3,
            duplicate: DuplicatePolicy::Create,
            ..Faults::default()
        },
        9,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_daemon_config_with(dir.path(), &shiprocket_toml(&url, 7200, 2));
    let mut daemon = start(&config);
    let client = Arc::new(Client::of(&daemon));
    client.set_stock("TEE", ORDERS as i64).await;
    client.cod_orders("K", 0..ORDERS).await;

    // Killed with a call in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let arrived: u64 = sandbox.arrivals().values().sum();
        let answered: u64 = sandbox.calls().values().sum();
        if arrived > answered && sandbox.orders().len() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no call caught in flight");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    daemon.kill();
    let before = sandbox.orders().len();
    eprintln!("sale day: killed with {before} Shiprocket orders made of {ORDERS} queued");

    // Restarted on a fast account: the queue drains from where it was.
    sandbox.set_faults(Faults {
        duplicate: DuplicatePolicy::Create,
        ..Faults::default()
    });
    let config = write_daemon_config_with(dir.path(), &shiprocket_toml(&url, 3_600_000, 64));
    let daemon = start(&config);
    let client = Client::of(&daemon);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    loop {
        let status = client.status().await;
        if status["orders_by_state"]["ready_to_ship"] == ORDERS {
            break;
        }
        assert!(Instant::now() < deadline, "queue never drained: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "sale day: {ORDERS} ready to ship {:.1} s after the restart",
        started.elapsed().as_secs_f64()
    );
    let mut live = std::collections::HashMap::new();
    for order in sandbox.orders().iter().filter(|o| o.status_code != 5) {
        *live.entry(order.channel_order_id.clone()).or_insert(0) += 1;
    }
    assert_eq!(live.len(), ORDERS, "every order has a Shiprocket order");
    let doubled: Vec<_> = live.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "created twice: {doubled:?}");
}
