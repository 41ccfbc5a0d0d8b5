//! The one harness: [`spawn_app`] starts the real daemon in-process on port 0
//! with its own temp database; [`Daemon`] runs the built binary for tests that
//! need a real process (crash, CLI, logs). One method per endpoint.

#![allow(dead_code)] // each test module uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use dropshipd::actors::registry::{OrderRegistry, RegistryStats};
use dropshipd::config::{Config, Secret, SecretRef, Secrets, Settings, ShiprocketAccount};
use dropshipd::domain::clock::{ManualClock, SharedClock, SystemClock};
use dropshipd::domain::signature::sign;
use dropshipd::sandbox::{Faults, Sandbox, SandboxServer};
use dropshipd::{Application, StopHandle};
use tempfile::TempDir;

pub const WEBHOOK_SECRET: &str = "whsec_integration_0123456789";
pub const VIEWER_TOKEN: &str = "viewer-token-for-tests";
pub const OPERATOR_TOKEN: &str = "operator-token-for-tests";
pub const STOREFRONT_TOKEN: &str = "storefront-token-for-tests";
/// The key customer data is sealed with (64 hex digits).
pub const PII_KEY: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";
pub const RAZORPAY_KEY_SECRET: &str = "rzp_key_secret_for_tests";

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A `payment.captured` body in Razorpay's shape (reference/razorpay.md §5).
pub fn payment_captured(payment_id: &str, order_id: &str, created_at: i64) -> String {
    format!(
        r#"{{"entity":"event","account_id":"acc_Dsh0pTest0001","event":"payment.captured","contains":["payment"],"payload":{{"payment":{{"entity":{{"id":"{payment_id}","entity":"payment","amount":129900,"currency":"INR","status":"captured","order_id":"{order_id}","method":"upi","amount_refunded":0,"refund_status":null,"captured":true,"email":"asha.rao@example.in","contact":"+919812345678","notes":[],"fee":2598,"tax":396,"error_code":null,"created_at":{created_at}}}}}}},"created_at":{created_at}}}"#
    )
}

pub fn test_settings(dir: &Path) -> Settings {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.admin.listen = "127.0.0.1:0".into();
    config.storage.path = dir.join("dropshipd.db");
    // Nothing listens on port 1: no test ever reaches the real Razorpay.
    config.razorpay.api_base_url = "http://127.0.0.1:1".into();
    let mut secrets = Secrets::for_webhooks(WEBHOOK_SECRET, VIEWER_TOKEN, OPERATOR_TOKEN);
    secrets.storefront_token = Some(Secret::new(STOREFRONT_TOKEN));
    secrets.pii_key = Some(Secret::new(PII_KEY));
    secrets.razorpay_key_id = Some(Secret::new("rzp_test_key"));
    secrets.razorpay_key_secret = Some(Secret::new(RAZORPAY_KEY_SECRET));
    Settings {
        config,
        secrets,
        warnings: Vec::new(),
    }
}

/// A daemon running in this test's actix system.
pub struct TestApp {
    pub public: String,
    pub admin: String,
    pub client: reqwest::Client,
    pub db_path: PathBuf,
    pub settings: Settings,
    stop: StopHandle,
    /// The daemon's run, finished once it has stopped in order.
    running: Option<actix_web::rt::task::JoinHandle<std::io::Result<()>>>,
    /// The order registry, for tests of the actor system itself.
    pub orders: actix::Addr<OrderRegistry>,
    pub order_actors: Arc<RegistryStats>,
    pub storage: dropshipd::storage::Storage,
    // Dropped last: the database lives here.
    pub dir: Arc<TempDir>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    spawn_app_in(dir, customize).await
}

/// Starts a daemon on an existing folder: a restart keeps the database.
pub async fn spawn_app_in(dir: Arc<TempDir>, customize: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_full(dir, Arc::new(SystemClock), customize).await
}

/// Starts a daemon whose clock moves only when the test moves it, in `dir`.
pub async fn spawn_app_at_in(
    dir: Arc<TempDir>,
    clock: ManualClock,
    customize: impl FnOnce(&mut Settings),
) -> TestApp {
    spawn_app_full(dir, Arc::new(clock), customize).await
}

/// Starts a daemon whose clock moves only when the test moves it.
pub async fn spawn_app_at(clock: ManualClock, customize: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    spawn_app_full(dir, Arc::new(clock), customize).await
}

async fn spawn_app_full(
    dir: Arc<TempDir>,
    clock: SharedClock,
    customize: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = test_settings(dir.path());
    customize(&mut settings);
    let app = Application::build_with_clock(settings.clone(), clock)
        .await
        .expect("daemon builds");
    let public = format!("http://{}", app.public_addr());
    let admin = format!("http://{}", app.admin_addr());
    let stop = app.stop_handle();
    let orders = app.state().orders.registry().clone();
    let order_actors = Arc::clone(&app.state().order_actors);
    let storage = app.state().storage.clone();
    let running = Some(actix_web::rt::spawn(app.run_until_stopped()));
    TestApp {
        public,
        admin,
        // Idle connections are dropped before actix's 5 s keep-alive closes
        // them, so a request never races the server's close of its connection.
        client: reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .expect("HTTP client"),
        db_path: settings.config.storage.path.clone(),
        settings,
        stop,
        running,
        orders,
        order_actors,
        storage,
        dir,
    }
}

impl TestApp {
    /// Stops the daemon in order and waits until it has let go of its
    /// database, so that another may start on the folder.
    pub async fn stop(mut self) -> Arc<TempDir> {
        self.stop.stop(true).await;
        if let Some(running) = self.running.take() {
            let _ = running.await;
        }
        self.dir.clone()
    }

    /// Posts `body` signed with the test webhook secret.
    pub async fn post_webhook(&self, body: &str, event_id: Option<&str>) -> reqwest::Response {
        let signature = sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
        self.post_webhook_raw(body.as_bytes().to_vec(), Some(&signature), event_id)
            .await
    }

    pub async fn post_webhook_raw(
        &self,
        body: Vec<u8>,
        signature: Option<&str>,
        event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/webhooks/razorpay", self.public))
            .header("Content-Type", "application/json")
            .header("User-Agent", "Razorpay-Webhook/v1")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("X-Razorpay-Signature", signature);
        }
        if let Some(event_id) = event_id {
            request = request.header("X-Razorpay-Event-Id", event_id);
        }
        request.send().await.expect("webhook request")
    }

    /// A plain GET of `path` on the listener at `base` (`self.public` or `self.admin`).
    pub async fn get(&self, base: &str, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("GET request")
    }

    pub async fn admin_get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("admin request")
    }

    pub async fn admin_post(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.admin))
            .header("User-Agent", "ops-cli/1.0");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("admin request")
    }

    pub async fn status(&self) -> serde_json::Value {
        let response = self.admin_get("/admin/status", Some(VIEWER_TOKEN)).await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("status JSON")
    }

    pub async fn dead_letters(&self) -> Vec<serde_json::Value> {
        let response = self.admin_get("/admin/dlq", Some(VIEWER_TOKEN)).await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.expect("dlq JSON");
        body["entries"].as_array().cloned().unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics request");
        assert_eq!(response.status(), 200);
        response.text().await.expect("metrics text")
    }

    pub async fn checkout(&self, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}/api/orders", self.public))
            .bearer_auth(STOREFRONT_TOKEN)
            .json(body)
            .send()
            .await
            .expect("checkout request")
    }

    pub async fn order_status(&self, order_id: &str) -> serde_json::Value {
        let response = self
            .client
            .get(format!("{}/api/orders/{order_id}", self.public))
            .bearer_auth(STOREFRONT_TOKEN)
            .send()
            .await
            .expect("order request");
        assert_eq!(response.status(), 200, "GET /api/orders/{order_id}");
        response.json().await.expect("order JSON")
    }

    /// Polls the order's public status until it is `state` (events, not sleeps,
    /// decide: the loop ends as soon as the order gets there).
    pub async fn wait_for_state(&self, order_id: &str, state: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.order_status(order_id).await;
            if status["state"] == state {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{order_id} never reached {state}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks out one TEE for ₹749 as order `XVC-<tag>` (Razorpay order
    /// `order_<tag>`) and sends its signed `payment.captured` (`pay_<tag>`,
    /// event `evt_<tag>`). The order id; waiting for its state is the caller's.
    pub async fn checkout_and_pay(&self, tag: &str) -> String {
        let (order_id, rzp) = (format!("XVC-{tag}"), format!("order_{tag}"));
        let created = self
            .checkout(&checkout_body(&order_id, &rzp, "TEE", 1))
            .await;
        assert_eq!(created.status(), 201, "checkout {order_id}");
        self.post_webhook(
            &captured_for(&format!("pay_{tag}"), &rzp, 74_900),
            Some(&format!("evt_{tag}")),
        )
        .await;
        order_id
    }

    /// Polls `/admin/status` until every accepted webhook has been processed.
    pub async fn wait_inbox_drained(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.status().await["inbox_pending"] != 0 {
            assert!(std::time::Instant::now() < deadline, "inbox never drained");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn admin_order(&self, order_id: &str, token: &str) -> serde_json::Value {
        let response = self
            .admin_get(&format!("/admin/orders/{order_id}"), Some(token))
            .await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("order JSON")
    }

    pub async fn set_stock(&self, sku: &str, on_hand: i64) {
        let response = self
            .client
            .put(format!("{}/admin/stock/{sku}", self.admin))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&serde_json::json!({"on_hand": on_hand}))
            .send()
            .await
            .expect("stock request");
        assert_eq!(response.status(), 200, "PUT /admin/stock/{sku}");
    }

    pub async fn stock(&self, sku: &str) -> serde_json::Value {
        let response = self
            .admin_get(&format!("/admin/stock/{sku}"), Some(VIEWER_TOKEN))
            .await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("stock JSON")
    }

    /// Replays the order's stored journal and checks it rebuilds the stored snapshot.
    pub async fn assert_journal_replays(&self, order_id: &str) {
        let (snapshot, events) = self
            .storage
            .order_history(order_id)
            .await
            .expect("read history")
            .expect("order exists");
        let rebuilt =
            dropshipd::domain::order::replay(order_id, events.iter().map(|(e, at)| (e, *at)));
        assert_eq!(
            rebuilt.as_ref(),
            Some(&snapshot),
            "journal of {order_id} does not replay to its snapshot"
        );
    }

    /// The inbox as stored on disk.
    pub fn inbox_keys(&self) -> Vec<String> {
        stored_inbox_keys(&self.db_path)
    }
}

pub fn stored_inbox_keys(db: &Path) -> Vec<String> {
    let conn = dropshipd::storage::open_read_only(db).expect("open database");
    dropshipd::storage::inbox_entries(&conn)
        .expect("read inbox")
        .into_iter()
        .map(|entry| entry.dedup_key)
        .collect()
}

/// The value of one sample line in a Prometheus text scrape.
pub fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// The built `dropshipd` binary, run as a real process.
/// What a daemon writes to stdout, line by line.
pub type StdoutLines = std::io::Lines<BufReader<std::process::ChildStdout>>;

pub struct Daemon {
    child: Child,
    pub public: String,
    pub admin: String,
    logs: Arc<Mutex<Vec<String>>>,
}

/// Writes a config for a [`Daemon`] into `dir` and returns its path.
pub fn write_daemon_config(dir: &Path) -> PathBuf {
    write_daemon_config_with(dir, "")
}

/// As [`write_daemon_config`], with more TOML appended.
pub fn write_daemon_config_with(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[storage]
path = "data/dropshipd.db"
[razorpay]
# Nothing listens on port 1: no test ever reaches the real Razorpay.
api_base_url = "http://127.0.0.1:1"
"#;
    std::fs::write(&path, format!("{text}{extra}")).expect("write config");
    path
}

pub fn daemon_command(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dropshipd"));
    command
        .env_clear()
        .env("RAZORPAY_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("DROPSHIPD_VIEWER_TOKEN", VIEWER_TOKEN)
        .env("DROPSHIPD_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("DROPSHIPD_STOREFRONT_TOKEN", STOREFRONT_TOKEN)
        .env("DROPSHIPD_PII_KEY", PII_KEY)
        .env("RAZORPAY_KEY_ID", "rzp_test_key")
        .env("RAZORPAY_KEY_SECRET", RAZORPAY_KEY_SECRET)
        .env("SHIPROCKET_PASSWORD", "api-password")
        .env("RUST_LOG", "info")
        .arg("--config")
        .arg(config);
    command
}

impl Daemon {
    /// Starts `dropshipd serve` and waits until it logs its listening addresses.
    pub fn start(config: &Path) -> Daemon {
        Self::start_with(config, |_| {})
    }

    /// As [`Daemon::start`], with the command adjusted first (environment, ...).
    pub fn start_with(config: &Path, adjust: impl FnOnce(&mut Command)) -> Daemon {
        Self::spawn(config, adjust, false).0
    }

    /// As [`Daemon::start`], but from its listening line on nobody reads the
    /// daemon's stdout: the caller gets the rest of it, to read when it will.
    pub fn start_holding_stdout(config: &Path) -> (Daemon, StdoutLines) {
        let (daemon, rest) = Self::spawn(config, |_| {}, true);
        (daemon, rest.expect("stdout handed over"))
    }

    fn spawn(
        config: &Path,
        adjust: impl FnOnce(&mut Command),
        hold_stdout: bool,
    ) -> (Daemon, Option<StdoutLines>) {
        let mut command = daemon_command(config);
        adjust(&mut command);
        let mut child = command
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dropshipd");
        let stdout = child.stdout.take().expect("stdout piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = Arc::clone(&logs);
        // Unless the caller holds it, drains stdout for the child's whole
        // life, so logging never blocks it.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                let listening = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .filter(|json| json["message"] == "listening")
                    .map(|json| {
                        (
                            json["public_addr"].as_str().unwrap_or_default().to_owned(),
                            json["admin_addr"].as_str().unwrap_or_default().to_owned(),
                        )
                    });
                if let Ok(mut logs) = sink.lock() {
                    logs.push(line);
                }
                if let Some((public, admin)) = listening {
                    if hold_stdout {
                        let _ = ready_tx.send((public, admin, Some(lines)));
                        return;
                    }
                    let _ = ready_tx.send((public, admin, None));
                }
            }
        });
        let (public, admin, rest) = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("dropshipd did not log its listening addresses");
        let public: SocketAddr = public.parse().expect("public address");
        let admin: SocketAddr = admin.parse().expect("admin address");
        let daemon = Daemon {
            child,
            public: format!("http://{public}"),
            admin: format!("http://{admin}"),
            logs,
        };
        (daemon, rest)
    }

    /// SIGTERM: the orderly stop.
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) with a child's pid and a valid signal number.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM not delivered");
    }

    /// Waits up to `limit` for the process to exit; its status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no handler runs, nothing is flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn secret(value: &str) -> Secret {
    Secret::new(value)
}

/// A storefront checkout in SPEC §5's shape, for `quantity` units of `sku` at ₹749.
pub fn checkout_body(
    order_id: &str,
    razorpay_order_id: &str,
    sku: &str,
    quantity: u32,
) -> serde_json::Value {
    serde_json::json!({
      "order_id": order_id,
      "razorpay_order_id": razorpay_order_id,
      "payment_method": "prepaid",
      "currency": "INR",
      "amount_paise": 74900 * i64::from(quantity),
      "customer": {"name": "Asha Rao", "email": "asha@example.com", "phone": "9876543210"},
      "shipping_address": {"line1": "12 MG Road", "line2": "", "city": "Bengaluru",
                           "state": "Karnataka", "pincode": "560001", "country": "India"},
      "items": [{"sku": sku, "name": "Black tee M", "quantity": quantity,
                 "unit_price_paise": 74900, "weight_kg": 0.25}]
    })
}

/// A `payment.captured` body for `amount_paise`.
pub fn captured_for(payment_id: &str, razorpay_order_id: &str, amount_paise: i64) -> String {
    payment_captured(payment_id, razorpay_order_id, now_secs())
        .replace("129900", &amount_paise.to_string())
}

/// An `order.paid` body: the same payment, seen through the order.
pub fn order_paid(payment_id: &str, razorpay_order_id: &str, amount_paise: i64) -> String {
    let now = now_secs();
    format!(
        r#"{{"entity":"event","account_id":"acc_X","event":"order.paid","contains":["payment","order"],"payload":{{"payment":{{"entity":{{"id":"{payment_id}","entity":"payment","amount":{amount_paise},"currency":"INR","status":"captured","order_id":"{razorpay_order_id}","captured":true,"notes":[]}}}},"order":{{"entity":{{"id":"{razorpay_order_id}","entity":"order","amount":{amount_paise},"amount_paid":{amount_paise},"amount_due":0,"currency":"INR","status":"paid"}}}}}},"created_at":{now}}}"#
    )
}

/// A `refund.processed` body: `amount` refunded now, `refunded` of the
/// payment's `payment_amount` in all.
pub fn refund_processed(
    refund_id: &str,
    payment_id: &str,
    razorpay_order_id: &str,
    payment_amount: i64,
    amount: i64,
    refunded: i64,
) -> String {
    format!(
        r#"{{"entity":"event","account_id":"acc_X","event":"refund.processed","contains":["refund","payment"],"payload":{{"refund":{{"entity":{{"id":"{refund_id}","entity":"refund","amount":{amount},"currency":"INR","payment_id":"{payment_id}","notes":[],"status":"processed"}}}},"payment":{{"entity":{{"id":"{payment_id}","entity":"payment","amount":{payment_amount},"currency":"INR","status":"captured","order_id":"{razorpay_order_id}","captured":true,"amount_refunded":{refunded},"refund_status":"partial","notes":[]}}}}}},"created_at":{}}}"#,
        now_secs()
    )
}

/// Posts a Shiprocket tracking update with `x-api-key: key`: status and JSON reply.
pub async fn track(app: &TestApp, key: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = app
        .client
        .post(format!("{}/webhooks/tracking", app.public))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .expect("tracking request");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// A tracking update in Shiprocket's shape.
pub fn update(order_id: &str, awb: &str, status_id: i64, timestamp: &str) -> serde_json::Value {
    json!({"awb": awb, "courier_name": "Delhivery Surface", "current_status": "X", "current_status_id": 20,
           "shipment_status": "X", "shipment_status_id": status_id, "current_timestamp": timestamp,
           "order_id": order_id, "sr_order_id": 640000001, "scans": [], "is_return": 0, "channel_id": 3422553})
}

/// The `kind` of each journal entry of an admin order detail, in order.
pub fn journal_kinds(detail: &serde_json::Value) -> Vec<serde_json::Value> {
    detail["journal"]
        .as_array()
        .expect("journal")
        .iter()
        .map(|e| e["kind"].clone())
        .collect()
}

/// Polls `done` until it holds, failing with `what` after 20 s.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls an async condition until it holds, failing with `what` after 20 s.
pub async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Shiprocket sandbox on a loopback port in this actix system, its fault
/// dice seeded with `seed`: the sandbox and its base URL.
pub fn start_sandbox_seeded(faults: Faults, seed: u64) -> (Arc<Sandbox>, String) {
    let server = SandboxServer::bind("127.0.0.1:0", faults, seed, 1).expect("sandbox");
    let (sandbox, url) = (Arc::clone(&server.sandbox), server.base_url());
    actix_web::rt::spawn(server.run());
    (sandbox, url)
}

pub fn start_sandbox(faults: Faults) -> (Arc<Sandbox>, String) {
    start_sandbox_seeded(faults, 11)
}

/// One Shiprocket account against the sandbox at `url`, with limits loose
/// enough never to slow a test and a breaker quick enough to see open.
pub fn with_shiprocket(settings: &mut Settings, url: &str) {
    settings.config.shiprocket.base_url = url.to_owned();
    settings.config.shiprocket.requests_per_hour = 360_000;
    settings.config.shiprocket.burst = 100;
    settings.config.shiprocket.request_timeout_ms = 1000;
    settings.config.shiprocket.breaker_failure_threshold = 2;
    settings.config.shiprocket.breaker_open_secs = 30;
    settings.config.shipping.retry_base_ms = 1000;
    settings.config.shipping.retry_max_ms = 8000;
    settings.config.shiprocket.accounts = vec![ShiprocketAccount {
        name: "primary".into(),
        email: "api@example.com".into(),
        password: SecretRef::new("env:UNUSED"),
    }];
    settings.secrets.shiprocket_passwords = vec![Some(Secret::new("api-password"))];
}

/// As [`with_shiprocket`], with a second account: `primary` logs in as
/// `api@example.com`, `secondary` as `second@example.com` (the sandbox's
/// `only_accounts` tells them apart).
pub fn with_two_shiprocket_accounts(settings: &mut Settings, url: &str) {
    with_shiprocket(settings, url);
    settings.config.shiprocket.accounts.push(ShiprocketAccount {
        name: "secondary".into(),
        email: "second@example.com".into(),
        password: SecretRef::new("env:UNUSED"),
    });
    settings
        .secrets
        .shiprocket_passwords
        .push(Some(Secret::new("api-password")));
}
