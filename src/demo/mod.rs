//! `dropshipd demo`: the whole system on one machine with nothing to set up
//! (SPEC §2). It exists so that anyone can see, in under a minute, what the
//! daemon promises and that it keeps those promises under the faults it was
//! built for: duplicate and forged webhooks, a Shiprocket outage, and more
//! shoppers than stock.
//!
//! The demo is an outsider. It starts the real daemon in this process with a
//! temporary database, random secrets and both listeners on loopback port 0,
//! points it at the built-in Shiprocket sandbox, and then only talks HTTP to it:
//! stock through the admin API, checkouts and signed webhooks through the
//! public listener ([`load`]), a Shiprocket outage switched on and off in the
//! sandbox mid-run ([`outage`]). Once every order has settled it gathers the
//! journals, counters and stock levels ([`evidence`]) and reports orders per
//! final state, throughput, latency and what each fault case did
//! ([`summary`]), naming any expectation that did not hold.

pub mod api;
pub mod evidence;
pub mod load;
pub mod outage;
pub mod summary;

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::sync::{oneshot, Notify};

use crate::config::{Config, Secret, SecretRef, Secrets, Settings, ShiprocketAccount};
use crate::http::auth::Role;
use crate::sandbox::{Faults, SandboxServer};
use crate::{Application, StartupError};
use api::{Credentials, DaemonApi};
use load::{Progress, CONCURRENCY};
use summary::{RunFacts, Summary};

/// Latency the sandbox adds to every Shiprocket call, so shipping takes the
/// time a network call does rather than none.
const SANDBOX_LATENCY_MS: u64 = 10;
/// How long the demo waits for the last orders to settle once the traffic
/// and the outage are over.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the settling orders are counted.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// States an order passes through on its way to `ready_to_ship`.
const IN_FLIGHT: [&str; 5] = [
    "pending_payment",
    "payment_failed",
    "paid",
    "awaiting_shipment",
    "shipment_created",
];

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    pub orders: usize,
    /// Keep the daemon (and its console) up after the run until Ctrl-C.
    pub keep_running: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo needs at least one order")]
    NoOrders,
    #[error("cannot create a temporary folder: {0}")]
    TempDir(std::io::Error),
    #[error("cannot draw random secrets: {0}")]
    Random(String),
    #[error("cannot start the Shiprocket sandbox: {0}")]
    Sandbox(std::io::Error),
    #[error("cannot start the daemon: {0}")]
    Startup(#[from] StartupError),
    #[error("{what}: {source}")]
    Request {
        what: String,
        source: reqwest::Error,
    },
    #[error("{what} answered HTTP {status}: {body}")]
    Unexpected {
        what: String,
        status: u16,
        body: String,
    },
}

/// How long the demo's one-time console link works.
const CONSOLE_LINK_VALID_FOR: Duration = Duration::from_secs(15 * 60);

/// Runs the demo in the current actix system and returns its report. Setup
/// failures are errors; whatever happens to the orders is in the report.
pub async fn run(options: DemoOptions) -> Result<Summary, DemoError> {
    if options.orders == 0 {
        return Err(DemoError::NoOrders);
    }
    let orders = options.orders;
    // Removed when dropped, at the end of the run.
    let dir = tempfile::Builder::new()
        .prefix("dropshipd-demo-")
        .tempdir()
        .map_err(DemoError::TempDir)?;
    let credentials = Credentials {
        storefront_token: random_secret("storefront-")?,
        viewer_token: random_secret("viewer-")?,
        operator_token: random_secret("operator-")?,
        webhook_secret: random_secret("whsec_")?,
        forged_secret: random_secret("whsec_")?,
    };

    let shiprocket = SandboxServer::bind(
        "127.0.0.1:0",
        Faults {
            latency_ms: SANDBOX_LATENCY_MS,
            ..Faults::default()
        },
        seed(),
        1,
    )
    .map_err(DemoError::Sandbox)?;
    let sandbox = Arc::clone(&shiprocket.sandbox);
    let sandbox_url = shiprocket.base_url();
    let sandbox_handle = shiprocket.handle();
    actix_web::rt::spawn(shiprocket.run());

    let settings = demo_settings(dir.path(), sandbox_url, &credentials)?;
    let app = Application::build(settings).await?;
    let api = DaemonApi::new(
        format!("http://{}", app.public_addr()),
        format!("http://{}", app.admin_addr()),
        credentials,
        CONCURRENCY,
    )?;
    // The operator's console, signed in by following the link once.
    let code = app
        .state()
        .console
        .issue_link(Role::Operator, CONSOLE_LINK_VALID_FOR)
        .map_err(|e| DemoError::Random(e.to_string()))?;
    let console = format!("http://{}/console/sign-in?once={code}", app.admin_addr());
    let daemon = app.stop_handle();
    actix_web::rt::spawn(app.run_until_stopped());

    let stocked = load::stocking(orders);
    for (product, on_hand) in &stocked {
        api.put_stock(
            product.sku,
            &json!({"on_hand": on_hand, "name": product.name, "weight_kg": product.weight_kg}),
        )
        .await?;
    }

    let bar = ProgressBar::new(orders as u64);
    bar.set_style(bar_style("orders   "));
    bar.println(format!(
        "dropshipd demo: daemon on {} (admin {}), Shiprocket sandbox, data in {}",
        api.public_url(),
        api.admin_url(),
        dir.path().display()
    ));
    // Printed even where the progress bar is hidden (no terminal).
    bar.suspend(|| println!("console (one-time operator sign-in link): {console}"));
    let progress = Arc::new(Progress {
        bar: bar.clone(),
        started: AtomicUsize::new(0),
        outage: Notify::new(),
        outage_at: orders * 2 / 5,
    });

    let started = Instant::now();
    let (stop_watching, watching) = oneshot::channel();
    let watcher = actix_web::rt::spawn(outage::watch_circuit(api.clone(), started, watching));
    let outage = actix_web::rt::spawn(outage::break_shiprocket(
        Arc::clone(&sandbox),
        Arc::clone(&progress),
        started,
    ));
    let records = load::run(&api, orders, Arc::clone(&progress)).await;
    let traffic = started.elapsed();
    let window = outage.await.unwrap_or_default();

    let created = records
        .iter()
        .filter(|r| r.checkout == load::Checkout::Created)
        .count();
    bar.reset();
    bar.set_length(created as u64);
    bar.set_position(0);
    bar.set_style(bar_style("shipping "));
    let settled = settle(&api, created, &bar).await?;
    let settled_after = started.elapsed();
    bar.finish_and_clear();
    let _ = stop_watching.send(());
    let samples = watcher.await.unwrap_or_default();

    let stocked_skus: Vec<(&str, i64)> = stocked.iter().map(|(p, n)| (p.sku, *n)).collect();
    let evidence = evidence::gather(&api, &sandbox, &records, &stocked_skus).await;
    if options.keep_running {
        println!("The run is over; the daemon and its console stay up until Ctrl-C: {console}");
        let _ = tokio::signal::ctrl_c().await;
    }
    daemon.stop(true).await;
    sandbox_handle.stop(true).await;
    let evidence = evidence?;

    let run = RunFacts {
        orders,
        concurrency: CONCURRENCY.min(orders),
        traffic,
        settled_after,
        settled,
        outage: window,
        circuit: outage::circuit_seen(&samples),
    };
    Ok(Summary::new(&run, &records, &evidence))
}

/// Waits until every created order is out of the states on the way to
/// `ready_to_ship` and the inbox is empty, or [`SETTLE_TIMEOUT`] passes.
/// True when it settled.
async fn settle(api: &DaemonApi, created: usize, bar: &ProgressBar) -> Result<bool, DemoError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let status = api.status().await?;
        let by_state = &status["orders_by_state"];
        let count = |state: &str| by_state[state].as_u64().unwrap_or(0);
        let known: u64 = by_state
            .as_object()
            .map_or(0, |states| states.values().filter_map(|n| n.as_u64()).sum());
        let in_flight: u64 = IN_FLIGHT.iter().map(|s| count(s)).sum();
        bar.set_position(known.saturating_sub(in_flight));
        let inbox = status["inbox_pending"].as_u64().unwrap_or(0);
        let queued = status["shipping_queue"]["orders"].as_u64().unwrap_or(0);
        let eta = status["actors"]["gateways"][0]["drain_eta_secs"]
            .as_u64()
            .unwrap_or(0);
        bar.set_message(format!("shipping queue {queued} (drains in ~{eta} s)"));
        if known >= created as u64 && in_flight == 0 && inbox == 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// The daemon's settings: loopback listeners on free ports, the database in
/// `dir`, the sandbox as the one Shiprocket account, and timings short
/// enough that a two-second outage is over in seconds, not minutes.
fn demo_settings(
    dir: &Path,
    shiprocket_url: String,
    credentials: &Credentials,
) -> Result<Settings, DemoError> {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.admin.listen = "127.0.0.1:0".into();
    config.storage.path = dir.join("dropshipd.db");
    let sr = &mut config.shiprocket;
    sr.base_url = shiprocket_url;
    // The sandbox has no rate limit; the limiter should not be what is measured.
    sr.requests_per_hour = 3_600_000;
    sr.burst = 1000;
    sr.request_timeout_ms = 2000;
    sr.breaker_failure_threshold = 5;
    sr.breaker_open_secs = 1;
    sr.accounts = vec![ShiprocketAccount {
        name: "demo".into(),
        email: "ops@demo-store.example".into(),
        // Resolved below; the demo has no config file to reference it from.
        password: SecretRef::default(),
    }];
    config.shipping.retry_base_ms = 200;
    config.shipping.retry_max_ms = 2000;

    let mut secrets = Secrets::for_webhooks(
        credentials.webhook_secret.expose(),
        credentials.viewer_token.expose(),
        credentials.operator_token.expose(),
    );
    secrets.storefront_token = Some(credentials.storefront_token.clone());
    secrets.pii_key = Some(Secret::new(random_hex(32)?));
    secrets.shiprocket_passwords = vec![Some(random_secret("sandbox-")?)];
    Ok(Settings {
        config,
        secrets,
        warnings: Vec::new(),
    })
}

fn bar_style(prefix: &str) -> ProgressStyle {
    let template = format!("{prefix} [{{bar:40}}] {{pos}}/{{len}} {{elapsed}} {{msg}}");
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// `bytes` random bytes from the operating system, as hex.
fn random_hex(bytes: usize) -> Result<String, DemoError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| DemoError::Random(e.to_string()))?;
    Ok(hex::encode(buf))
}

fn random_secret(prefix: &str) -> Result<Secret, DemoError> {
    Ok(Secret::new(format!("{prefix}{}", random_hex(16)?)))
}

/// A seed for the sandbox's dice; the demo's faults are switched, not drawn,
/// so it only varies the tokens the sandbox issues.
fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}
