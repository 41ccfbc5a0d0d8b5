//! End to end: checkout, then a signed `payment.captured` webhook, until the
//! order is `paid`, at a fixed concurrency, against the release binary.
//!
//! Reports orders/s (first checkout to last order paid), the daemon's own
//! `dropship_order_creation_seconds` p50/p99 (interpolated within histogram
//! buckets), and the daemon's peak RSS (`VmHWM`) after all orders.
//!
//! Run: `cargo bench --bench orders` (options after `--`: `--orders 100000`,
//! `--concurrency 64`).

use dropshipd::domain::clock::{Clock, SystemClock};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dropshipd::demo::load::payment_captured;
use dropshipd::domain::signature::sign;

mod common;
use common::{arg, quantile};
use serde_json::{json, Value};

const WEBHOOK_SECRET: &str = "whsec_bench_orders";
const STOREFRONT: &str = "bench-storefront";
const OPERATOR: &str = "bench-operator";
const SKUS: usize = 100;

fn checkout(i: usize) -> Value {
    json!({
      "order_id": format!("B-{i}"), "razorpay_order_id": format!("order_B{i}"),
      "payment_method": "prepaid", "currency": "INR", "amount_paise": 74900,
      "customer": {"name": "Asha Rao", "email": "asha@example.com", "phone": "9876543210"},
      "shipping_address": {"line1": "12 MG Road", "line2": "", "city": "Bengaluru",
                           "state": "Karnataka", "pincode": "560001", "country": "India"},
      "items": [{"sku": format!("SKU-{}", i % SKUS), "name": "Black tee M", "quantity": 1,
                 "unit_price_paise": 74900, "weight_kg": 0.25}]
    })
}

fn payment(i: usize, now: i64) -> String {
    payment_captured(&format!("pay_B{i}"), &format!("order_B{i}"), 74_900, now)
}

fn main() {
    let orders = arg("--orders", 100_000);
    let concurrency = arg("--concurrency", 64);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"bench.db\"\n",
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dropshipd"))
        .env_clear()
        .env("RAZORPAY_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("DROPSHIPD_VIEWER_TOKEN", "bench-viewer")
        .env("DROPSHIPD_OPERATOR_TOKEN", OPERATOR)
        .env("DROPSHIPD_STOREFRONT_TOKEN", STOREFRONT)
        .env("DROPSHIPD_PII_KEY", "ab".repeat(32))
        .env("RUST_LOG", "warn,dropshipd::startup=info")
        .args(["--config", &config.to_string_lossy(), "serve"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start dropshipd");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (public, admin) = loop {
        let line = lines.next().expect("daemon exited").expect("read");
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["message"] == "listening" {
            break (
                format!("http://{}", v["public_addr"].as_str().unwrap_or_default()),
                format!("http://{}", v["admin_addr"].as_str().unwrap_or_default()),
            );
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
        for s in 0..SKUS {
            client
                .put(format!("{admin}/admin/stock/SKU-{s}"))
                .bearer_auth(OPERATOR)
                .json(&json!({"on_hand": orders}))
                .send()
                .await
                .expect("stock");
        }
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let now = SystemClock.now_secs();
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, next, public) = (client.clone(), Arc::clone(&next), public.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= orders {
                            break;
                        }
                        let created = client
                            .post(format!("{public}/api/orders"))
                            .bearer_auth(STOREFRONT)
                            .json(&checkout(i))
                            .send()
                            .await
                            .expect("checkout");
                        assert_eq!(created.status(), 201);
                        let body = payment(i, now);
                        let paid = client
                            .post(format!("{public}/webhooks/razorpay"))
                            .header("X-Razorpay-Signature", sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes()))
                            .header("X-Razorpay-Event-Id", format!("evt_B{i}"))
                            .body(body)
                            .send()
                            .await
                            .expect("webhook");
                        assert_eq!(paid.status(), 200);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
        let sent = started.elapsed();
        loop {
            let status: Value = client
                .get(format!("{admin}/admin/status"))
                .bearer_auth(OPERATOR)
                .send()
                .await
                .expect("status")
                .json()
                .await
                .expect("status JSON");
            if status["orders_by_state"]["paid"].as_u64() == Some(orders as u64) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all_paid = started.elapsed();
        let scrape = client.get(format!("{admin}/metrics")).send().await.expect("metrics").text().await.expect("text");
        let p50 = quantile(&scrape, "dropship_order_creation_seconds", 0.5).unwrap_or(f64::NAN);
        let p99 = quantile(&scrape, "dropship_order_creation_seconds", 0.99).unwrap_or(f64::NAN);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        println!("orders end to end: {orders} orders, concurrency {concurrency}, release binary, load from a 2-thread reqwest client");
        println!("  requests sent in        {:.1} s", sent.as_secs_f64());
        println!("  all paid after          {:.1} s  -> {:.0} orders/s", all_paid.as_secs_f64(), orders as f64 / all_paid.as_secs_f64());
        println!("  order creation p50      {:.1} ms (payment accepted -> paid committed)", p50 * 1000.0);
        println!("  order creation p99      {:.1} ms", p99 * 1000.0);
        println!("  daemon peak RSS (VmHWM) {}", field("VmHWM:"));
        println!("  daemon RSS now (VmRSS)  {}", field("VmRSS:"));
        console_pages(&admin, orders).await;
    });
    let _ = child.kill();
    let _ = child.wait();
}

/// How long the console's pages take with every order in the database: each
/// page fetched `REPEATS` times by a signed-in operator, one at a time.
async fn console_pages(admin: &str, orders: usize) {
    const REPEATS: usize = 20;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let signed_in = browser
        .post(format!("{admin}/console/sign-in"))
        .form(&[("token", OPERATOR)])
        .send()
        .await
        .expect("sign in");
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("cookie pair")
        .to_owned();
    println!(
        "console pages with {orders} orders (median and slowest of {REPEATS}, one at a time):"
    );
    for page in [
        "/console",
        "/console/attention?state=manual_required",
        "/console/attention?state=refund_due",
        "/console/orders/B-0",
        "/console/dlq",
        "/console/stock",
        "/console/audit",
    ] {
        let mut took = Vec::with_capacity(REPEATS);
        for _ in 0..REPEATS {
            let started = Instant::now();
            let answer = browser
                .get(format!("{admin}{page}"))
                .header("cookie", &cookie)
                .send()
                .await
                .expect("page");
            assert_eq!(answer.status(), 200, "{page}");
            answer.bytes().await.expect("page body");
            took.push(started.elapsed());
        }
        took.sort();
        println!(
            "  {page:<44} {:>7.1} ms  {:>7.1} ms",
            took[REPEATS / 2].as_secs_f64() * 1000.0,
            took[REPEATS - 1].as_secs_f64() * 1000.0
        );
    }
}
