//! The shipping queue on a sale day, against the built binary as a separate
//! process: `--orders` (20,000) cash-on-delivery orders queued for one
//! Shiprocket account at `requests_per_hour = 36000` (10 calls/s), the
//! sandbox refusing above 110% of that. Over a `--window` (60 s) of the drain
//! it reports the call rate achieved against the configured one, the 429s
//! drawn, the daemon's peak RSS, and the latency of an operator's cancel of a
//! queued order (one every 250 ms) while the backlog waits.
//!
//! Run: `cargo bench --bench queue` (options after `--`: `--orders 20000`,
//! `--window 60`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use dropshipd::sandbox::{Faults, SandboxServer};
use serde_json::{json, Value};

mod common;
use common::{arg, Daemon, OPERATOR_TOKEN, STOREFRONT_TOKEN, VIEWER_TOKEN};

const PER_HOUR: u32 = 36_000;
const BURST: u32 = 10;

fn checkout(i: usize) -> Value {
    json!({
      "order_id": format!("Q-{i}"), "payment_method": "cod", "currency": "INR", "amount_paise": 74900,
      "customer": {"name": "Asha Rao", "email": "asha@example.com", "phone": "9876543210"},
      "shipping_address": {"line1": "12 MG Road", "line2": "", "city": "Bengaluru",
                           "state": "Karnataka", "pincode": "560001", "country": "India"},
      "items": [{"sku": "TEE", "name": "Black tee M", "quantity": 1, "unit_price_paise": 74900}]
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let orders = arg("--orders", 20_000);
    let window = Duration::from_secs(arg("--window", 60) as u64);
    let configured = f64::from(PER_HOUR) / 3600.0;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let faults = Faults {
                rate_limit_per_sec: Some(configured * 1.1),
                rate_limit_burst: Some(f64::from(BURST) * 1.1),
                ..Faults::default()
            };
            let server = SandboxServer::bind("127.0.0.1:0", faults, 5, 2).expect("sandbox");
            tx.send((server.base_url(), server.sandbox.clone()))
                .expect("send");
            let _ = server.run().await;
        })
    });
    let (sandbox_url, sandbox) = rx.recv().expect("sandbox");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"bench.db\"\n\
             [shiprocket]\nbase_url = \"{sandbox_url}\"\nrequests_per_hour = {PER_HOUR}\nburst = {BURST}\n\
             [[shiprocket.accounts]]\nname = \"primary\"\nemail = \"api@example.com\"\npassword = \"env:SHIPROCKET_PASSWORD\"\n"
        ),
    )
    .expect("config");
    let daemon = Daemon::start(&config, "whsec_bench_queue");
    let (public, admin) = (daemon.public.clone(), daemon.admin.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let calls = || -> (u64, u64) {
        let calls = sandbox.calls();
        let all = calls.values().sum();
        let throttled = calls
            .iter()
            .filter(|(k, _)| k.ends_with(":429"))
            .map(|(_, n)| n)
            .sum();
        (all, throttled)
    };
    let (queued_in, window_calls, window_secs, cancels) = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client");
        client
            .put(format!("{admin}/admin/stock/TEE"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"on_hand": orders}))
            .send()
            .await
            .expect("stock");
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..64)
            .map(|_| {
                let (client, next, public) = (client.clone(), Arc::clone(&next), public.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= orders {
                            break;
                        }
                        let response = client
                            .post(format!("{public}/api/orders"))
                            .bearer_auth(STOREFRONT_TOKEN)
                            .json(&checkout(i))
                            .send()
                            .await
                            .expect("checkout");
                        assert_eq!(response.status(), 201, "checkout Q-{i}");
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
        let queued_in = started.elapsed();
        // Cancels of queued orders, newest first (the oldest may be shipping).
        let mut latencies = Vec::new();
        let window_started = Instant::now();
        let (calls_before, _) = calls();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut n = orders;
        while window_started.elapsed() < window && n > 0 {
            tick.tick().await;
            n -= 1;
            let sent = Instant::now();
            let response = client
                .post(format!("{admin}/admin/orders/Q-{n}/cancel"))
                .bearer_auth(OPERATOR_TOKEN)
                .send()
                .await
                .expect("cancel");
            latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(response.status(), 200, "cancel Q-{n}");
        }
        let window_secs = window_started.elapsed().as_secs_f64();
        let window_calls = calls().0 - calls_before;
        let status: Value = client
            .get(format!("{admin}/admin/status"))
            .bearer_auth(VIEWER_TOKEN)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("JSON");
        println!(
            "  after the window: {} queued, drain_eta_secs {}",
            status["actors"]["gateways"][0]["queued"],
            status["actors"]["gateways"][0]["drain_eta_secs"]
        );
        (queued_in, window_calls, window_secs, latencies)
    });
    let (_, hwm) = daemon.rss_kib();
    let mut cancels = cancels;
    cancels.sort_by(f64::total_cmp);
    let (all, throttled) = calls();
    let rate = window_calls as f64 / window_secs;
    println!(
        "queue drain: {orders} orders queued in {:.1} s; requests_per_hour {PER_HOUR} ({configured:.0}/s), burst {BURST}, sandbox limit {:.0}/s",
        queued_in.as_secs_f64(),
        configured * 1.1
    );
    println!(
        "  over {window_secs:.0} s of the drain: {window_calls} calls = {rate:.2}/s, {:.0}% of the configured rate; {throttled} of {all} calls answered 429",
        100.0 * rate / configured
    );
    println!(
        "  peak RSS {:.1} MiB; cancel of a queued order p50 {:.1} ms, p99 {:.1} ms ({} cancels)",
        hwm as f64 / 1024.0,
        percentile(&cancels, 0.5),
        percentile(&cancels, 0.99),
        cancels.len()
    );
}
