//! Several instances on PostgreSQL against one on SQLite, in one run (SPEC
//! §13): orders/s end to end (checkout, then a signed `payment.captured`,
//! until every order is `paid`) with 1, 2 and 3 release-built instances on a
//! throw-away PostgreSQL, beside one instance on SQLite; webhook ingest
//! (distinct `payment.authorized` events, which change no order) the same
//! way; then the takeover time after a SIGKILL, median of several.
//!
//! The load is spread round-robin over the instances, as a load balancer
//! would. PostgreSQL runs on the same machine with `fsync = off` (its
//! scratch settings), so the PostgreSQL figures show the cost of the
//! cluster's own work, not of a disk.
//!
//! Run: `cargo bench --bench cluster` (options after `--`: `--orders 3000`,
//! `--concurrency 64`, `--takeovers 5`, `--ttl 10`). Skips with a message
//! where PostgreSQL is not installed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dropshipd::demo::load::payment_captured;
use dropshipd::domain::clock::{Clock, SystemClock};
use dropshipd::domain::signature::sign;
use dropshipd::scratch_postgres::ScratchPostgres;
use serde_json::{json, Value};

mod common;
use common::{arg, Daemon, OPERATOR_TOKEN, STOREFRONT_TOKEN};

const WEBHOOK_SECRET: &str = "whsec_bench_cluster";
const SKUS: usize = 100;

fn config(dir: &std::path::Path, postgres: bool, ttl: u64) -> std::path::PathBuf {
    let storage = if postgres {
        "backend = \"postgres\"\npostgres_url = \"env:BENCH_POSTGRES_URL\"\npool_size = 16"
    } else {
        "path = \"bench.db\""
    };
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [storage]\n{storage}\n[cluster]\nlease_ttl_secs = {ttl}\n"
        ),
    )
    .expect("config");
    path
}

fn start(count: usize, url: Option<&str>, ttl: u64, dir: &std::path::Path) -> Vec<Daemon> {
    let config = config(dir, url.is_some(), ttl);
    (0..count)
        .map(|_| {
            let env: Vec<(&str, &str)> =
                url.map(|u| ("BENCH_POSTGRES_URL", u)).into_iter().collect();
            Daemon::start_with_env(
                &config,
                WEBHOOK_SECRET,
                "warn,dropshipd::startup=info",
                &env,
            )
        })
        .collect()
}

fn checkout(tag: &str, i: usize) -> Value {
    json!({
      "order_id": format!("{tag}-{i}"), "razorpay_order_id": format!("order_{tag}{i}"),
      "payment_method": "prepaid", "currency": "INR", "amount_paise": 74900,
      "customer": {"name": "Asha Rao", "email": "asha@example.com", "phone": "9876543210"},
      "shipping_address": {"line1": "12 MG Road", "line2": "", "city": "Bengaluru",
                           "state": "Karnataka", "pincode": "560001", "country": "India"},
      "items": [{"sku": format!("SKU-{}", i % SKUS), "name": "Black tee M", "quantity": 1,
                 "unit_price_paise": 74900, "weight_kg": 0.25}]
    })
}

async fn status(client: &reqwest::Client, daemon: &Daemon) -> Option<Value> {
    client
        .get(format!("{}/admin/status", daemon.admin))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Waits until `among`'s instances hold every lease (`leases` of them).
async fn held_by(client: &reqwest::Client, via: &Daemon, among: &[String], leases: usize) {
    loop {
        if let Some(s) = status(client, via).await {
            let held = s["cluster"]["leases"].as_array().map_or(0, |all| {
                all.iter()
                    .filter(|l| among.iter().any(|id| l["owner"] == id.as_str()))
                    .count()
            });
            if held == leases {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn instance_ids(client: &reqwest::Client, daemons: &[Daemon]) -> Vec<String> {
    let mut ids = Vec::new();
    for d in daemons {
        let s = status(client, d).await.expect("status");
        ids.push(
            s["cluster"]["instance_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    ids
}

/// `orders` checkouts and payments spread over `daemons`; orders/s until all are paid.
async fn end_to_end(
    client: &reqwest::Client,
    daemons: &[Daemon],
    tag: &str,
    orders: usize,
    concurrency: usize,
) -> f64 {
    for s in 0..SKUS {
        client
            .put(format!("{}/admin/stock/SKU-{s}", daemons[0].admin))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"on_hand": orders}))
            .send()
            .await
            .expect("stock");
    }
    let targets: Arc<Vec<String>> = Arc::new(daemons.iter().map(|d| d.public.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let now = SystemClock.now_secs();
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, targets, tag) = (
                client.clone(),
                Arc::clone(&next),
                Arc::clone(&targets),
                tag.to_owned(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= orders {
                        break;
                    }
                    let public = &targets[i % targets.len()];
                    let created = client
                        .post(format!("{public}/api/orders"))
                        .bearer_auth(STOREFRONT_TOKEN)
                        .json(&checkout(&tag, i))
                        .send()
                        .await
                        .expect("checkout");
                    assert_eq!(created.status(), 201);
                    let body = payment_captured(
                        &format!("pay_{tag}{i}"),
                        &format!("order_{tag}{i}"),
                        74_900,
                        now,
                    );
                    // The payment reaches another instance than the checkout did.
                    let public = &targets[(i + 1) % targets.len()];
                    loop {
                        let paid = client
                            .post(format!("{public}/webhooks/razorpay"))
                            .header(
                                "X-Razorpay-Signature",
                                sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes()),
                            )
                            .header("X-Razorpay-Event-Id", format!("evt_{tag}{i}"))
                            .body(body.clone())
                            .send()
                            .await
                            .expect("webhook");
                        if paid.status() == 200 {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    loop {
        let paid = status(client, &daemons[0])
            .await
            .and_then(|s| s["orders_by_state"]["paid"].as_u64());
        if paid == Some(orders as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    orders as f64 / started.elapsed().as_secs_f64()
}

/// Distinct `payment.authorized` webhooks spread over `daemons`: accepted per second.
async fn ingest(
    client: &reqwest::Client,
    daemons: &[Daemon],
    tag: &str,
    events: usize,
    concurrency: usize,
) -> f64 {
    let targets: Arc<Vec<String>> = Arc::new(daemons.iter().map(|d| d.public.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let now = SystemClock.now_secs();
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, targets, tag) = (
                client.clone(),
                Arc::clone(&next),
                Arc::clone(&targets),
                tag.to_owned(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= events {
                        break;
                    }
                    let body = payment_captured(
                        &format!("pay_{tag}{i}"),
                        &format!("order_{tag}{i}"),
                        74_900,
                        now,
                    )
                    .replace("payment.captured", "payment.authorized");
                    let sent = client
                        .post(format!("{}/webhooks/razorpay", targets[i % targets.len()]))
                        .header(
                            "X-Razorpay-Signature",
                            sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes()),
                        )
                        .header("X-Razorpay-Event-Id", format!("evt_{tag}{i}"))
                        .body(body)
                        .send()
                        .await
                        .expect("webhook");
                    assert_eq!(sent.status(), 200);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    events as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let orders = arg("--orders", 3000);
    let concurrency = arg("--concurrency", 64);
    let takeovers = arg("--takeovers", 5);
    let ttl = arg("--ttl", 10) as u64;
    let server = match ScratchPostgres::start() {
        Ok(server) => server,
        Err(e) => {
            println!("cluster bench skipped: {e}");
            return;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
        println!("several instances: {orders} orders and {} webhooks each, concurrency {concurrency}, release binaries, load spread round-robin", orders * 2);
        println!("  {:<22} {:>12} {:>14}", "setup", "orders/s", "ingest/s");
        let mut rows = Vec::new();
        {
            let dir = tempfile::tempdir().expect("temp dir");
            let daemons = start(1, None, ttl, dir.path());
            let e2e = end_to_end(&client, &daemons, "S", orders, concurrency).await;
            let ing = ingest(&client, &daemons, "SI", orders * 2, concurrency).await;
            rows.push(("SQLite, 1 instance".to_owned(), e2e, ing));
        }
        for count in 1..=3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = server.create_database(&format!("bench{count}")).expect("database");
            let daemons = start(count, Some(&url), ttl, dir.path());
            let ids = instance_ids(&client, &daemons).await;
            held_by(&client, &daemons[0], &ids, 32 + 1).await;
            let e2e = end_to_end(&client, &daemons, &format!("P{count}"), orders, concurrency).await;
            let ing = ingest(&client, &daemons, &format!("PI{count}"), orders * 2, concurrency).await;
            rows.push((format!("PostgreSQL, {count} instance{}", if count > 1 { "s" } else { "" }), e2e, ing));
        }
        let base = rows[0].1;
        for (name, e2e, ing) in &rows {
            println!("  {name:<22} {e2e:>12.0} {ing:>14.0}   ({:.2}x SQLite end to end)", e2e / base);
        }
        let mut taken = Vec::new();
        for rep in 0..takeovers {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = server.create_database(&format!("takeover{rep}")).expect("database");
            let mut daemons = start(3, Some(&url), ttl, dir.path());
            let ids = instance_ids(&client, &daemons).await;
            held_by(&client, &daemons[0], &ids, 32 + 1).await;
            let victim = daemons.pop().expect("three");
            let killed = Instant::now();
            drop(victim); // SIGKILL
            held_by(&client, &daemons[0], &ids[..2], 32 + 1).await;
            taken.push(killed.elapsed().as_secs_f64());
        }
        println!(
            "  takeover after SIGKILL (lease_ttl_secs = {ttl}): median {:.1} s of {takeovers} (each: {})",
            median(taken.clone()),
            taken.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>().join(", ")
        );
    });
}
