//! Shipping benchmarks against the in-process Shiprocket sandbox:
//!
//! 1. limiter compliance: `requests_per_hour` 7,200 (2/s), a backlog of paid
//!    orders, the sandbox refusing above 2.2/s: the achieved call rate and the
//!    429s it drew;
//! 2. `dropship_shipping_creation_seconds` p50/p99 with 50 ms of sandbox latency;
//! 3. end to end to `ready_to_ship` with a zero-latency, unlimited sandbox:
//!    orders/s and `dropship_order_creation_seconds`, median of `--reps` runs.
//!
//! The daemon is the built binary (`dropshipd serve`), its own process.
//!
//! Run: `cargo bench --bench shipping` (options after `--`: `--backlog 200`,
//! `--orders 2000`, `--reps 3`, `--skip-limiter`).

use dropshipd::domain::clock::{Clock, SystemClock};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dropshipd::demo::load::payment_captured;
use dropshipd::domain::signature::sign;
use dropshipd::sandbox::{Faults, SandboxServer};

mod common;
use common::{
    arg, process_cpu_seconds, quantile, Daemon, OPERATOR_TOKEN, STOREFRONT_TOKEN, VIEWER_TOKEN,
};
use serde_json::{json, Value};

const SECRET: &str = "whsec_bench_shipping";

struct Report {
    orders: usize,
    elapsed: Duration,
    /// From the first checkout until every payment was acknowledged; the rest
    /// of `elapsed` is the shipping queue draining.
    paid_after: Duration,
    calls: u64,
    throttled: u64,
    p50: f64,
    p99: f64,
    creation_p50: f64,
    creation_p99: f64,
    /// The storage writer's jobs and commits over the run (`GET /admin/status`).
    writer_jobs: u64,
    writer_commits: u64,
    /// The daemon's CPU time (user + system) from the first checkout to the last order shipped.
    daemon_cpu_secs: f64,
    /// The bench process's own CPU time over the same span: the load
    /// generator and the sandbox, which share the machine with the daemon.
    bench_cpu_secs: f64,
}

/// Starts a sandbox and a daemon, pays `orders` orders at `concurrency`, waits
/// until all are ready to ship.
fn scenario(
    faults: Faults,
    requests_per_hour: u32,
    burst: u32,
    orders: usize,
    concurrency: usize,
) -> Report {
    let dir = tempfile::tempdir().expect("temp dir");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = SandboxServer::bind("127.0.0.1:0", faults, 5, 2).expect("sandbox");
            tx.send((server.base_url(), server.sandbox.clone()))
                .expect("send");
            let _ = server.run().await;
        })
    });
    let (sandbox_url, sandbox) = rx.recv().expect("sandbox");

    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [storage]\npath = \"{}\"\n\
             [shiprocket]\nbase_url = \"{sandbox_url}\"\nrequests_per_hour = {requests_per_hour}\nburst = {burst}\n\
             [[shiprocket.accounts]]\nname = \"primary\"\nemail = \"api@example.com\"\npassword = \"env:SHIPROCKET_PASSWORD\"\n",
            dir.path().join("bench.db").display()
        ),
    )
    .expect("config");
    // The built binary, as users run it: default `info` logging, a line per
    // order transition.
    let daemon = Daemon::start_logging(&config, SECRET, "info");
    let (public, admin) = (daemon.public.clone(), daemon.admin.clone());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cpu_before = daemon.cpu_seconds();
    let bench_cpu_before = process_cpu_seconds(std::process::id());
    let (paid_after, elapsed, scrape, writer) = runtime.block_on(async move {
        let client = reqwest::Client::new();
        client
            .put(format!("{admin}/admin/stock/TEE"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"on_hand": orders}))
            .send()
            .await
            .expect("stock");
        let started = Instant::now();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let now = SystemClock.now_secs();
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, next, public) = (client.clone(), next.clone(), public.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= orders {
                            break;
                        }
                        let checkout = json!({
                            "order_id": format!("S-{i}"), "razorpay_order_id": format!("order_S{i}"),
                            "payment_method": "prepaid", "currency": "INR", "amount_paise": 74900,
                            "customer": {"name": "Asha Rao", "email": "asha@example.com", "phone": "9876543210"},
                            "shipping_address": {"line1": "12 MG Road", "line2": "", "city": "Bengaluru", "state": "Karnataka", "pincode": "560001", "country": "India"},
                            "items": [{"sku": "TEE", "name": "Black tee M", "quantity": 1, "unit_price_paise": 74900}]
                        });
                        client.post(format!("{public}/api/orders")).bearer_auth(STOREFRONT_TOKEN).json(&checkout).send().await.expect("checkout");
                        let body = payment_captured(&format!("pay_S{i}"), &format!("order_S{i}"), 74_900, now);
                        client
                            .post(format!("{public}/webhooks/razorpay"))
                            .header("X-Razorpay-Signature", sign(SECRET.as_bytes(), body.as_bytes()))
                            .header("X-Razorpay-Event-Id", format!("evt_S{i}"))
                            .body(body)
                            .send()
                            .await
                            .expect("webhook");
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
        let paid_after = started.elapsed();
        let status = loop {
            let status: Value = client
                .get(format!("{admin}/admin/status"))
                .bearer_auth(VIEWER_TOKEN)
                .send()
                .await
                .expect("status")
                .json()
                .await
                .expect("JSON");
            let ready = status["orders_by_state"]["ready_to_ship"].as_u64().unwrap_or(0);
            let stuck = status["orders_by_state"]["manual_required"].as_u64().unwrap_or(0);
            if ready + stuck >= orders as u64 {
                if stuck > 0 {
                    eprintln!("  ({stuck} orders went to manual_required)");
                }
                break status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let elapsed = started.elapsed();
        let scrape = client.get(format!("{admin}/metrics")).send().await.expect("metrics").text().await.expect("text");
        (paid_after, elapsed, scrape, status["storage"].clone())
    });
    let daemon_cpu_secs = daemon.cpu_seconds() - cpu_before;
    let bench_cpu_secs = process_cpu_seconds(std::process::id()) - bench_cpu_before;
    let calls = sandbox.calls();
    Report {
        orders,
        elapsed,
        paid_after,
        calls: calls.values().sum(),
        throttled: calls
            .iter()
            .filter(|(k, _)| k.ends_with(":429"))
            .map(|(_, v)| v)
            .sum(),
        p50: quantile(&scrape, "dropship_shipping_creation_seconds", 0.5).unwrap_or(f64::NAN),
        p99: quantile(&scrape, "dropship_shipping_creation_seconds", 0.99).unwrap_or(f64::NAN),
        creation_p50: quantile(&scrape, "dropship_order_creation_seconds", 0.5).unwrap_or(f64::NAN),
        creation_p99: quantile(&scrape, "dropship_order_creation_seconds", 0.99)
            .unwrap_or(f64::NAN),
        writer_jobs: writer["jobs"].as_u64().unwrap_or(0),
        writer_commits: writer["commits"].as_u64().unwrap_or(0),
        daemon_cpu_secs,
        bench_cpu_secs,
    }
}

fn main() {
    let backlog = arg("--backlog", 200);
    let orders = arg("--orders", 2000);
    let skip_limiter = std::env::args().any(|a| a == "--skip-limiter");
    if !skip_limiter {
        let configured = 2.0;
        let r = scenario(
            Faults {
                rate_limit_per_sec: Some(2.2),
                rate_limit_burst: Some(10.0),
                ..Faults::default()
            },
            7200,
            10,
            backlog,
            16,
        );
        let rate = r.calls as f64 / r.elapsed.as_secs_f64();
        println!(
            "limiter: {} orders, requests_per_hour 7200 (2/s), burst 10, sandbox limit 2.2/s",
            r.orders
        );
        println!(
            "  {} calls in {:.1} s = {:.2} calls/s ({:.0}% of the configured rate), {} answered 429",
            r.calls,
            r.elapsed.as_secs_f64(),
            rate,
            100.0 * rate / configured,
            r.throttled
        );
    }
    let r = scenario(
        Faults {
            latency_ms: 50,
            ..Faults::default()
        },
        3_600_000,
        1000,
        500,
        16,
    );
    println!("latency: 500 orders, sandbox latency 50 ms, no limit");
    println!(
        "  dropship_shipping_creation_seconds p50 {:.0} ms, p99 {:.0} ms (paid -> ready_to_ship)",
        r.p50 * 1000.0,
        r.p99 * 1000.0
    );
    let reps = arg("--reps", 3);
    let runs: Vec<Report> = (0..reps)
        .map(|_| scenario(Faults::default(), 36_000_000, 10_000, orders, 64))
        .collect();
    println!(
        "throughput: {orders} orders checkout -> payment.captured -> ready_to_ship, dropshipd serve, zero-latency sandbox, no limit, concurrency 64, median of {reps}"
    );
    for r in &runs {
        println!(
            "  {:.2} s (all paid after {:.2} s) -> {:.0} orders/s; order creation p50 {:.1} ms, p99 {:.1} ms; shipping p99 {:.0} ms; {} Shiprocket calls; {:.1} writer jobs and {:.2} commits per order; daemon CPU {:.2} ms per order (bench process {:.2} ms)",
            r.elapsed.as_secs_f64(),
            r.paid_after.as_secs_f64(),
            r.orders as f64 / r.elapsed.as_secs_f64(),
            r.creation_p50 * 1000.0,
            r.creation_p99 * 1000.0,
            r.p99 * 1000.0,
            r.calls,
            r.writer_jobs as f64 / r.orders as f64,
            r.writer_commits as f64 / r.orders as f64,
            1000.0 * r.daemon_cpu_secs / r.orders as f64,
            1000.0 * r.bench_cpu_secs / r.orders as f64,
        );
    }
    let median = |f: &dyn Fn(&Report) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "median: {:.0} orders/s, order creation p99 {:.1} ms (dropship_order_creation_seconds: payment accepted -> paid committed), daemon CPU {:.2} ms per order",
        median(&|r| r.orders as f64 / r.elapsed.as_secs_f64()),
        median(&|r| r.creation_p99 * 1000.0),
        median(&|r| 1000.0 * r.daemon_cpu_secs / r.orders as f64),
    );
}
