//! Durable webhook ingest of the built binary against the scaling plan's design
//! and against a verify-only ceiling, side by side in one run.
//!
//! Three servers, each its own process or system, driven in turn by `wrk -t1`:
//! - `dropshipd serve`, the binary users run (SQLite on disk, group commit,
//!   each commit's WAL flushed before its answer, `shipping.mode = manual`,
//!   default `info` logging);
//! - the plan's "Webhook Scalability" handler: a `node:http` server that verifies
//!   the HMAC and does `LPUSH webhook-queue` into Redis (`ioredis` from npm,
//!   `redis-server` with no persistence), written and started here;
//! - a ceiling that only verifies the HMAC and answers 200 (actix-web, in this
//!   process, the daemon's worker count).
//!
//! Every request carries one 1,536-byte signed `payment.authorized` body and a
//! fresh `X-Razorpay-Event-Id`, so each is a new event, never a duplicate. The
//! systems take turns within each repetition (so machine noise hits all alike);
//! the table shows medians. After each daemon run the bench checks that the
//! daemon's `accepted` counter grew by exactly the rows its database gained, and
//! by no less than wrk's answered requests (wrk abandons the requests in flight
//! when it stops, at most one per connection).
//!
//! Run: `cargo bench --bench ingest`. Needs `wrk` (`apt-get install wrk`); the
//! Node.js side needs `node`, `npm` and `redis-server` (`apt-get install
//! redis-server`) and is skipped, saying so, where one is missing. Options after
//! `--`: `--duration SECS` (8), `--reps N` (3), `--concurrency 64,256`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use dropshipd::domain::clock::{Clock, SystemClock};
use dropshipd::domain::signature::{sign, verify};

mod common;
use common::Daemon;

const SECRET: &str = "whsec_bench_0123456789";
/// The size of the body every request carries.
const BODY_BYTES: usize = 1536;

struct Options {
    duration_secs: u64,
    reps: usize,
    concurrency: Vec<usize>,
}

fn options() -> Options {
    let mut options = Options {
        duration_secs: 8,
        reps: 3,
        concurrency: vec![64, 256],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--duration" => {
                options.duration_secs = args.next().and_then(|v| v.parse().ok()).unwrap_or(8)
            }
            "--reps" => options.reps = args.next().and_then(|v| v.parse().ok()).unwrap_or(3),
            "--concurrency" => {
                options.concurrency = args
                    .next()
                    .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
                    .unwrap_or_default()
            }
            _ => {} // `cargo bench` adds `--bench`
        }
    }
    options
}

/// A `payment.authorized` event as Razorpay sends it, padded through its
/// `notes` to exactly [`BODY_BYTES`].
fn body(created_at: i64) -> String {
    let with = |pad: &str| {
        format!(
            r#"{{"entity":"event","account_id":"acc_Dsh0pTest0001","event":"payment.authorized","contains":["payment"],"payload":{{"payment":{{"entity":{{"id":"pay_Q1aAuth000001","entity":"payment","amount":129900,"currency":"INR","status":"authorized","order_id":"order_Q1aOrder00001","invoice_id":null,"international":false,"method":"upi","amount_refunded":0,"refund_status":null,"captured":false,"description":"DS-1042","card_id":null,"bank":null,"wallet":null,"vpa":"asha.rao@okhdfc","email":"asha.rao@example.in","contact":"+919812345678","notes":{{"ds_order":"DS-1042","gift_message":"{pad}"}},"fee":null,"tax":null,"error_code":null,"error_description":null,"error_source":null,"error_step":null,"error_reason":null,"acquirer_data":{{"rrn":"431205558812","upi_transaction_id":"HDF5F1C2A7B9E4D3C6A8B0F2E1D4C7A9"}},"upi":{{"payer_account_type":"bank_account","vpa":"asha.rao@okhdfc"}},"created_at":{created_at}}}}}}},"created_at":{created_at}}}"#
        )
    };
    let bare = with("").len();
    assert!(bare <= BODY_BYTES, "the event alone is {bare} bytes");
    with(&"x".repeat(BODY_BYTES - bare))
}

/// The wrk script: a unique event id per request, the same signed body.
fn wrk_script(body: &str, signature: &str) -> String {
    format!(
        r#"
local body = [==[{body}]==]
function init(args)
  prefix = "evt_" .. args[1] .. "_"
  counter = 0
end
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
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#
    )
}

#[derive(Debug, Clone, Copy)]
struct Run {
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: u64,
}

fn run_wrk(script: &Path, url: &str, concurrency: usize, secs: u64, tag: &str) -> Run {
    let output = Command::new("wrk")
        .args([
            "-t1",
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
        .expect("run wrk");
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
        requests: n[0] as u64,
        rps: n[0] / (n[1] / 1e6),
        non_2xx: n[2] as u64,
        socket_errors: n[3] as u64,
        p50_ms: n[4] / 1000.0,
        p99_ms: n[5] / 1000.0,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

// ---- the verify-only ceiling ----

async fn ceiling(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    if !verify(SECRET.as_bytes(), &body, header("X-Razorpay-Signature")) {
        return HttpResponse::BadRequest().json(serde_json::json!({"error": "invalid_signature"}));
    }
    HttpResponse::Ok()
        .json(serde_json::json!({"status": "accepted", "event_id": header("X-Razorpay-Event-Id")}))
}

fn start_ceiling() -> String {
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
    rx.recv().expect("ceiling address")
}

// ---- the plan's design: node:http + ioredis LPUSH ----

/// The plan's handler: verify, `LPUSH webhook-queue` the parsed payload, answer.
const NODE_SERVER: &str = r#"
const http = require('node:http');
const crypto = require('node:crypto');
const Redis = require('ioredis');

const secret = process.env.WEBHOOK_SECRET;
const redis = new Redis({ host: '127.0.0.1', port: Number(process.env.REDIS_PORT) });

function validSignature(body, signature) {
  if (typeof signature !== 'string') return false;
  const expected = crypto.createHmac('sha256', secret).update(body).digest('hex');
  const a = Buffer.from(expected);
  const b = Buffer.from(signature);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

function json(res, status, value) {
  const text = JSON.stringify(value);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/webhooks/razorpay') return json(res, 404, { error: 'not_found' });
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    const body = Buffer.concat(chunks);
    if (!validSignature(body, req.headers['x-razorpay-signature'])) {
      return json(res, 400, { error: 'Invalid signature' });
    }
    try {
      const payload = JSON.parse(body);
      await redis.lpush('webhook-queue', JSON.stringify(payload));
      json(res, 200, { status: 'accepted' });
    } catch (e) {
      json(res, 503, { error: String(e) });
    }
  });
});
server.keepAliveTimeout = 60000;
redis.on('ready', () => {
  server.listen(Number(process.env.PORT), '127.0.0.1', () => console.log('listening'));
});
"#;

/// The Node.js server and its Redis, stopped when dropped.
struct NodeDesign {
    node: Child,
    redis: Child,
    url: String,
}

impl Drop for NodeDesign {
    fn drop(&mut self) {
        for child in [&mut self.node, &mut self.redis] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts Redis and the Node.js server, or says why it cannot.
fn start_node_design(dir: &Path) -> Result<NodeDesign, String> {
    for program in ["node", "npm", "redis-server"] {
        if !found(program) {
            return Err(format!(
                "`{program}` not found (apt-get install nodejs npm redis-server)"
            ));
        }
    }
    // Kept under target/ so that later runs need no download.
    let app = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ingest-node-design");
    std::fs::create_dir_all(&app).map_err(|e| e.to_string())?;
    std::fs::write(app.join("server.js"), NODE_SERVER).map_err(|e| e.to_string())?;
    if !app.join("node_modules/ioredis").exists() {
        let installed = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "ioredis@5",
            ])
            .current_dir(&app)
            .status()
            .map_err(|e| e.to_string())?;
        if !installed.success() {
            return Err("`npm install ioredis` failed".into());
        }
    }
    let redis_port = free_port();
    let redis = Command::new("redis-server")
        .args([
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let port = free_port();
    let mut node = Command::new("node")
        .arg(app.join("server.js"))
        .env("WEBHOOK_SECRET", SECRET)
        .env("REDIS_PORT", redis_port.to_string())
        .env("PORT", port.to_string())
        .env("NODE_PATH", app.join("node_modules"))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(node.stdout.take().ok_or("no stdout")?).lines();
    let design = NodeDesign {
        node,
        redis,
        url: format!("http://127.0.0.1:{port}"),
    };
    match lines.next() {
        Some(Ok(line)) if line == "listening" => {}
        other => return Err(format!("the Node.js server did not start: {other:?}")),
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok(design)
}

// ---- the daemon's own accounting ----

/// `dropship_webhook_requests_total{outcome="accepted"}` from the daemon's scrape.
fn accepted_counter(admin: &str) -> u64 {
    let scrape = http_get(admin, "/metrics");
    scrape
        .lines()
        .find(|l| {
            l.starts_with("dropship_webhook_requests_total{") && l.contains("outcome=\"accepted\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// A plain HTTP/1.0 GET: the response's body, or empty on any failure.
fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Some(addr) = base.strip_prefix("http://") else {
        return String::new();
    };
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut response = String::new();
    if stream.write_all(request.as_bytes()).is_err()
        || stream.read_to_string(&mut response).is_err()
    {
        return String::new();
    }
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Inbox rows in the daemon's database: what it has made durable.
fn stored_events(db: &Path) -> u64 {
    let conn = dropshipd::storage::open_read_only(db).expect("open the daemon's database");
    conn.query_row("SELECT count(*) FROM inbox", [], |r| r.get::<_, i64>(0))
        .expect("count inbox") as u64
}

struct System {
    name: &'static str,
    url: String,
    runs: Vec<Run>,
}

fn main() {
    let options = options();
    if !found("wrk") {
        println!("ingest bench skipped: `wrk` not found (apt-get install wrk)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("bench.db");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [storage]\npath = \"{}\"\n[shipping]\nmode = \"manual\"\n\
             [shiprocket]\nbase_url = \"http://127.0.0.1:9\"\n",
            db.display()
        ),
    )
    .expect("config");
    let daemon = Daemon::start_logging(&config, SECRET, "info");
    let mut systems = vec![System {
        name: "dropshipd serve (durable, fsync)",
        url: daemon.public.clone(),
        runs: Vec::new(),
    }];
    let node = match start_node_design(dir.path()) {
        Ok(node) => {
            systems.push(System {
                name: "Node.js + Redis LPUSH (not durable)",
                url: node.url.clone(),
                runs: Vec::new(),
            });
            Some(node)
        }
        Err(why) => {
            println!("the plan's Node.js + Redis design is skipped: {why}");
            None
        }
    };
    systems.push(System {
        name: "verify-only ceiling",
        url: start_ceiling(),
        runs: Vec::new(),
    });

    let body = body(SystemClock.now_secs());
    let script = dir.path().join("ingest.lua");
    std::fs::write(
        &script,
        wrk_script(&body, &sign(SECRET.as_bytes(), body.as_bytes())),
    )
    .expect("script");
    println!(
        "webhook ingest: wrk -t1, {} s per run, {} reps interleaved, medians; {}-byte signed payment.authorized, a new event id per request",
        options.duration_secs,
        options.reps,
        body.len()
    );

    let mut accounting_failures = Vec::new();
    let started = Instant::now();
    let mut tag = 0;
    for &concurrency in &options.concurrency {
        for system in &mut systems {
            system.runs.clear();
        }
        let mut daemon_cpu_us = Vec::new();
        for rep in 0..options.reps {
            // Rotate who goes first, so no system always follows the same one.
            let order: Vec<usize> = (0..systems.len())
                .map(|i| (i + rep) % systems.len())
                .collect();
            for index in order {
                tag += 1;
                let is_daemon = index == 0;
                let before = is_daemon.then(|| {
                    (
                        accepted_counter(&daemon.admin),
                        stored_events(&db),
                        daemon.cpu_seconds(),
                    )
                });
                let system = &mut systems[index];
                let run = run_wrk(
                    &script,
                    &system.url,
                    concurrency,
                    options.duration_secs,
                    &format!("r{tag}"),
                );
                if let Some((accepted_before, stored_before, cpu_before)) = before {
                    // Let the requests wrk abandoned finish before counting.
                    std::thread::sleep(Duration::from_millis(300));
                    let cpu = daemon.cpu_seconds() - cpu_before;
                    let accepted = accepted_counter(&daemon.admin) - accepted_before;
                    let stored = stored_events(&db) - stored_before;
                    let answered = run.requests - run.non_2xx;
                    let abandoned = accepted.saturating_sub(answered);
                    daemon_cpu_us.push(1e6 * cpu / accepted.max(1) as f64);
                    if accepted != stored || accepted < answered || abandoned > concurrency as u64 {
                        accounting_failures.push(format!(
                            "c{concurrency} rep {rep}: wrk answered {answered}, accepted counter +{accepted}, stored +{stored}"
                        ));
                    }
                }
                system.runs.push(run);
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        println!();
        println!("concurrency {concurrency}:");
        println!(
            "{:<38} | {:>9} {:>8} {:>8} | {:>7} {:>6} | {:>9} {:>9}",
            "system", "req/s", "p50 ms", "p99 ms", "non-2xx", "socket", "vs plan", "vs ceil"
        );
        let rps = |s: &System| median(s.runs.iter().map(|r| r.rps).collect());
        let plan = (systems.len() == 3).then(|| rps(&systems[1]));
        let ceiling = rps(&systems[systems.len() - 1]);
        for system in &systems {
            let r = rps(system);
            println!(
                "{:<38} | {:>9.0} {:>8.2} {:>8.2} | {:>7} {:>6} | {:>9} {:>8.2}x",
                system.name,
                r,
                median(system.runs.iter().map(|r| r.p50_ms).collect()),
                median(system.runs.iter().map(|r| r.p99_ms).collect()),
                system.runs.iter().map(|r| r.non_2xx).sum::<u64>(),
                system.runs.iter().map(|r| r.socket_errors).sum::<u64>(),
                plan.map_or("-".into(), |p| format!("{:.2}x", r / p)),
                r / ceiling,
            );
        }
        println!(
            "dropshipd CPU (user + system) per webhook stored: {:.1} us (median of {} runs)",
            median(daemon_cpu_us.clone()),
            daemon_cpu_us.len()
        );
    }
    let (rss, peak) = daemon.rss_kib();
    println!();
    println!(
        "daemon: RSS {} MiB now, {} MiB peak; {} events stored; bench took {:.0} s",
        rss / 1024,
        peak / 1024,
        stored_events(&db),
        started.elapsed().as_secs_f64()
    );
    if accounting_failures.is_empty() {
        println!("accounting: every run's accepted counter equals the rows stored, and covers every request wrk saw answered");
    } else {
        println!("ACCOUNTING MISMATCH:");
        for failure in &accounting_failures {
            println!("  {failure}");
        }
    }
    drop(node);
}
