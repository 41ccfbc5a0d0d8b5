//! Durable webhook ingest against its ceiling, side by side in one run.
//!
//! Starts the real daemon in-process (SQLite on disk, `synchronous=FULL`, group
//! commit) and a "ceiling" server that only verifies the HMAC and answers 200
//! with no storage, then drives both with `wrk` at several concurrencies,
//! alternating between them so machine noise hits both alike. Every request
//! carries a fresh `X-Razorpay-Event-Id`, so each one is a real insert, never a
//! duplicate. Reports the median of the repetitions.
//!
//! A second table isolates the storage writer: the same inserts from 64
//! concurrent tasks with group commit, and with one commit (one fsync) per
//! write, to show what sharing commits buys on this disk.
//!
//! Run: `cargo bench --bench ingest` (needs `wrk`: `apt-get install wrk`).
//! Options after `--`: `--duration SECS` (5), `--reps N` (3),
//! `--concurrency 16,64,256`, `--dir PATH` (where the database goes).

use dropshipd::domain::clock::{Clock, SystemClock};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use dropshipd::config::{Config, Secrets, Settings};
use dropshipd::domain::signature::{sign, verify};
use dropshipd::storage::{Storage, StorageOptions, WebhookRecord, WriterStatsSnapshot};
use dropshipd::Application;

const SECRET: &str = "whsec_bench_0123456789";

struct Options {
    duration_secs: u64,
    reps: usize,
    concurrency: Vec<usize>,
    dir: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options {
        duration_secs: 5,
        reps: 3,
        concurrency: vec![16, 64, 256],
        dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--duration" => {
                options.duration_secs = args.next().and_then(|v| v.parse().ok()).unwrap_or(5)
            }
            "--reps" => options.reps = args.next().and_then(|v| v.parse().ok()).unwrap_or(3),
            "--concurrency" => {
                options.concurrency = args
                    .next()
                    .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
                    .unwrap_or_default()
            }
            "--dir" => options.dir = args.next().map(PathBuf::from),
            _ => {} // `cargo bench` adds `--bench`
        }
    }
    options
}

fn body(created_at: i64) -> String {
    format!(
        r#"{{"entity":"event","account_id":"acc_Dsh0pTest0001","event":"payment.captured","contains":["payment"],"payload":{{"payment":{{"entity":{{"id":"pay_Q1aAuth000001","entity":"payment","amount":129900,"currency":"INR","base_amount":129900,"status":"captured","order_id":"order_Q1aOrder00001","invoice_id":null,"international":false,"method":"upi","amount_refunded":0,"amount_transferred":0,"refund_status":null,"captured":true,"description":"DS-1042","vpa":"asha.rao@okhdfc","email":"asha.rao@example.in","contact":"+919812345678","notes":{{"ds_order":"DS-1042"}},"fee":2598,"tax":396,"error_code":null,"error_description":null,"error_source":null,"error_step":null,"error_reason":null,"acquirer_data":{{"rrn":"431205558812"}},"created_at":{created_at}}}}}}},"created_at":{created_at}}}"#
    )
}

/// The wrk script: a unique event id per request, the same signed body.
fn wrk_script(body: &str, signature: &str) -> String {
    format!(
        r#"
local threads = {{}}
local next_id = 1
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
function init(args)
  prefix = "evt_" .. args[1] .. "_" .. tid .. "_"
  counter = 0
end
local body = [==[{body}]==]
function request()
  counter = counter + 1
  return wrk.format("POST", "/webhooks/razorpay", {{
    ["Content-Type"] = "application/json",
    ["X-Razorpay-Signature"] = "{signature}",
    ["X-Razorpay-Event-Id"] = prefix .. counter,
  }}, body)
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d\n",
    summary.requests, summary.duration,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#
    )
}

#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn run_wrk(script: &PathBuf, url: &str, concurrency: usize, secs: u64, tag: &str) -> Run {
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{concurrency}"),
            &format!("-d{secs}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .args(["--", tag])
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk ({e}); install it with: apt-get install wrk"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "wrk printed no result:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let n: Vec<f64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    Run {
        rps: n[0] / (n[1] / 1e6),
        p50_ms: n[3] / 1000.0,
        p99_ms: n[4] / 1000.0,
        errors: n[2] as u64,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

async fn ceiling(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let signature = req
        .headers()
        .get("X-Razorpay-Signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !verify(SECRET.as_bytes(), &body, signature) {
        return HttpResponse::BadRequest().json(serde_json::json!({"error": "invalid_signature"}));
    }
    let event_id = req
        .headers()
        .get("X-Razorpay-Event-Id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    HttpResponse::Ok().json(serde_json::json!({"status": "accepted", "event_id": event_id}))
}

/// Inserts from `concurrency` tasks for `secs` seconds; returns writes/s and p99 ms.
fn storage_only(
    dir: &std::path::Path,
    max_batch: usize,
    concurrency: usize,
    secs: u64,
    body: &str,
) -> (f64, f64) {
    let mut options = StorageOptions::new(
        dir.join(format!("writer-{max_batch}.db")),
        Duration::from_secs(5),
        dropshipd::storage::PiiKey::from_bytes([7; 32]),
    );
    options.max_batch = max_batch;
    let storage = Storage::open(&options).expect("open storage");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let body = body.as_bytes().to_vec();
    runtime.block_on(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..concurrency)
            .map(|task| {
                let (storage, body) = (storage.clone(), body.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut n = 0u64;
                    while tokio::time::Instant::now() < deadline {
                        n += 1;
                        let started = std::time::Instant::now();
                        storage
                            .record_webhook(WebhookRecord::Accepted {
                                dedup_key: format!("evt_w{max_batch}_{task}_{n}"),
                                event: "payment.captured".into(),
                                razorpay_order_id: Some("order_Q1aOrder00001".into()),
                                razorpay_payment_id: Some("pay_Q1aAuth000001".into()),
                                event_created_at: 0,
                                received_at_ms: 0,
                                body: body.clone(),
                            })
                            .await
                            .expect("write");
                        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("task"));
        }
        all.sort_by(|a, b| a.total_cmp(b));
        let p99 = all.get(all.len() * 99 / 100).copied().unwrap_or(0.0);
        (all.len() as f64 / secs as f64, p99)
    })
}

fn main() {
    let options = options();
    let dir = match &options.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.admin.listen = "127.0.0.1:0".into();
    config.storage.path = dir.path().join("bench.db");
    let settings = Settings {
        config,
        secrets: Secrets {
            pii_key: Some(dropshipd::config::Secret::new("ab".repeat(32))),
            ..Secrets::for_webhooks(SECRET, "bench-viewer", "bench-operator")
        },
        warnings: Vec::new(),
    };

    // The daemon and the ceiling each run in their own actix system, as they would alone.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let app = Application::build(settings).await.expect("daemon builds");
            let storage = app.state().storage.clone();
            tx.send((format!("http://{}", app.public_addr()), storage))
                .expect("send");
            let _ = app.run_until_stopped().await;
        })
    });
    let (daemon_url, storage) = rx.recv().expect("daemon address");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server =
                HttpServer::new(|| App::new().route("/webhooks/razorpay", web::post().to(ceiling)))
                    .disable_signals()
                    .bind("127.0.0.1:0")
                    .expect("bind ceiling");
            tx.send(format!("http://{}", server.addrs()[0]))
                .expect("send");
            let _ = server.run().await;
        })
    });
    let ceiling_url = rx.recv().expect("ceiling address");

    let created_at = SystemClock.now_secs();
    let body = body(created_at);
    let script = dir.path().join("ingest.lua");
    std::fs::write(
        &script,
        wrk_script(&body, &sign(SECRET.as_bytes(), body.as_bytes())),
    )
    .expect("script");

    println!(
        "webhook ingest: wrk -t2, {} s per run, median of {} runs, body {} bytes, db {}",
        options.duration_secs,
        options.reps,
        body.len(),
        dir.path().display()
    );
    println!(
        "{:>5} | {:>14} {:>9} {:>9} | {:>14} {:>9} {:>9} | {:>8} | {:>10}",
        "conc",
        "durable req/s",
        "p50 ms",
        "p99 ms",
        "ceiling req/s",
        "p50 ms",
        "p99 ms",
        "ratio",
        "jobs/fsync"
    );
    let mut tag = 0;
    for &concurrency in &options.concurrency {
        let mut durable = Vec::new();
        let mut ceilings = Vec::new();
        let before: WriterStatsSnapshot = storage.writer_stats();
        for _ in 0..options.reps {
            tag += 1;
            durable.push(run_wrk(
                &script,
                &daemon_url,
                concurrency,
                options.duration_secs,
                &format!("d{tag}"),
            ));
            ceilings.push(run_wrk(
                &script,
                &ceiling_url,
                concurrency,
                options.duration_secs,
                &format!("c{tag}"),
            ));
            std::thread::sleep(Duration::from_millis(500));
        }
        let after = storage.writer_stats();
        let errors: u64 = durable.iter().chain(&ceilings).map(|r| r.errors).sum();
        let d_rps = median(durable.iter().map(|r| r.rps).collect());
        let c_rps = median(ceilings.iter().map(|r| r.rps).collect());
        let commits = (after.commits - before.commits).max(1);
        println!(
            "{:>5} | {:>14.0} {:>9.2} {:>9.2} | {:>14.0} {:>9.2} {:>9.2} | {:>7.0}% | {:>10.1}{}",
            concurrency,
            d_rps,
            median(durable.iter().map(|r| r.p50_ms).collect()),
            median(durable.iter().map(|r| r.p99_ms).collect()),
            c_rps,
            median(ceilings.iter().map(|r| r.p50_ms).collect()),
            median(ceilings.iter().map(|r| r.p99_ms).collect()),
            100.0 * d_rps / c_rps,
            (after.jobs - before.jobs) as f64 / commits as f64,
            if errors > 0 {
                format!("  ({errors} errors!)")
            } else {
                String::new()
            },
        );
    }
    let stored = storage.writer_stats();
    println!(
        "writer: {} jobs in {} commits, largest batch {}",
        stored.jobs, stored.commits, stored.largest_batch
    );

    println!();
    println!(
        "storage writer alone: 64 concurrent writers, {} s per run, median of {} runs",
        options.duration_secs, options.reps
    );
    println!("{:>22} | {:>12} {:>9}", "", "writes/s", "p99 ms");
    for (label, max_batch) in [("group commit", 2048), ("one commit per write", 1)] {
        let runs: Vec<(f64, f64)> = (0..options.reps)
            .map(|_| storage_only(dir.path(), max_batch, 64, options.duration_secs, &body))
            .collect();
        println!(
            "{:>22} | {:>12.0} {:>9.2}",
            label,
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect())
        );
    }
}
