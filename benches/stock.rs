//! One hot SKU: every checkout holds a unit of the same product.
//!
//! Runs the stock supervisor over real SQLite on disk (the daemon's writer,
//! every commit flushed before its callers hear), and from `--concurrency` tasks does what a checkout
//! does to stock: decide the hold (`prepare_new_order`), commit its step,
//! settle the decision. Reports holds/s and p99, medians of `--reps` runs, and
//! how many holds shared a commit. A last run offers fewer units than are
//! asked for and checks that exactly those are held, that the level equals
//! its ledger, and that nothing was held twice.
//!
//! Run: `cargo bench --bench stock` (options after `--`: `--concurrency 64`,
//! `--secs 5`, `--reps 3`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dropshipd::actors::stock::{settled_after, ApplyStock, StockSupervisor};
use dropshipd::domain::clock::SystemClock;
use dropshipd::domain::order::OrderLine;
use dropshipd::domain::stock::reserve_moves;
use dropshipd::storage::{PiiKey, Storage, StorageOptions};

mod common;
use common::arg;

const SKU: &str = "TEE-BLACK-M";

fn line() -> Vec<OrderLine> {
    vec![OrderLine {
        sku: SKU.into(),
        name: "Black tee M".into(),
        quantity: 1,
        unit_price_paise: 74_900,
        weight_g: Some(250),
    }]
}

/// One checkout's stock work; `Some(latency)` when the unit was held.
async fn checkout(stock: &StockSupervisor, storage: &Storage, order: String) -> Option<Duration> {
    let started = Instant::now();
    let prepared = stock
        .prepare_new_order(reserve_moves(&order, &line()))
        .await
        .ok()?;
    match storage.apply_stock_steps(prepared.steps.clone()).await {
        Ok(applied) => {
            prepared.settle(Ok(&applied));
            Some(started.elapsed())
        }
        Err(e) => {
            prepared.settle(Err(settled_after(&e)));
            None
        }
    }
}

struct Run {
    held: usize,
    refused: usize,
    per_sec: f64,
    p99_ms: f64,
    holds_per_commit: f64,
}

async fn run(
    stock: &StockSupervisor,
    storage: &Storage,
    tag: &str,
    concurrency: usize,
    secs: u64,
    limit: Option<usize>,
) -> Run {
    let commits_before = storage.writer_stats().map_or(0, |s| s.commits);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let (stock, storage, tag) = (stock.clone(), storage.clone(), tag.to_owned());
            actix_rt::spawn(async move {
                let (mut latencies, mut refused) = (Vec::new(), 0usize);
                let mut n = 0;
                while Instant::now() < deadline && limit.is_none_or(|l| n < l) {
                    n += 1;
                    match checkout(&stock, &storage, format!("{tag}-{task}-{n}")).await {
                        Some(latency) => latencies.push(latency),
                        None => refused += 1,
                    }
                }
                (latencies, refused)
            })
        })
        .collect();
    let (mut latencies, mut refused) = (Vec::new(), 0);
    for task in tasks {
        let (l, r) = task.await.expect("task");
        latencies.extend(l);
        refused += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    let commits = (storage.writer_stats().map_or(0, |s| s.commits) - commits_before).max(1);
    Run {
        held: latencies.len(),
        refused,
        per_sec: latencies.len() as f64 / elapsed,
        p99_ms: p99.as_secs_f64() * 1000.0,
        holds_per_commit: latencies.len() as f64 / commits as f64,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

async fn set_on_hand(stock: &StockSupervisor, on_hand: i64) {
    stock
        .apply(ApplyStock::count(SKU, on_hand))
        .await
        .expect("count the shelf");
}

fn main() {
    let concurrency = arg("--concurrency", 64);
    let secs = arg("--secs", 5) as u64;
    let reps = arg("--reps", 3);
    let dir = tempfile::tempdir().expect("temp dir");
    actix_rt::System::new().block_on(async move {
        let storage = Storage::open(&StorageOptions::new(
            dir.path().join("stock.db"),
            Duration::from_secs(2),
            PiiKey::from_bytes([9; 32]),
        ))
        .expect("open storage");
        let stock = StockSupervisor::start(storage.clone(), Arc::new(SystemClock), 16)
            .await
            .expect("stock supervisor");
        set_on_hand(&stock, 100_000_000).await;
        println!(
            "one hot SKU: {concurrency} concurrent checkouts, {secs} s per run, median of {reps}; SQLite on disk, every commit flushed"
        );
        let runs: Vec<Run> = {
            let mut runs = Vec::new();
            for rep in 0..reps {
                runs.push(run(&stock, &storage, &format!("r{rep}"), concurrency, secs, None).await);
            }
            runs
        };
        for (rep, r) in runs.iter().enumerate() {
            println!(
                "  run {rep}: {:>8.0} holds/s  p99 {:>6.2} ms  {:>5.1} holds per commit",
                r.per_sec, r.p99_ms, r.holds_per_commit
            );
        }
        println!(
            "median: {:.0} holds/s, p99 {:.2} ms, {:.1} holds per commit",
            median(runs.iter().map(|r| r.per_sec).collect()),
            median(runs.iter().map(|r| r.p99_ms).collect()),
            median(runs.iter().map(|r| r.holds_per_commit).collect()),
        );

        // Scarcity: fewer units than asked for.
        let before = stock.level(SKU).await.expect("level");
        let units = 5_000i64;
        set_on_hand(&stock, before.reserved + units).await;
        let scarce = run(&stock, &storage, "scarce", concurrency, 60, Some(200)).await;
        let after = stock.level(SKU).await.expect("level");
        let (_, mismatches) = storage.reconcile_stock().await.expect("reconcile");
        let ok = scarce.held as i64 == units
            && after.available() == 0
            && after.reserved - before.reserved == units
            && mismatches.is_empty();
        println!(
            "scarcity: {} units, {} asked: {} held, {} refused, available now {}, ledger {} -> {}",
            units,
            scarce.held + scarce.refused,
            scarce.held,
            scarce.refused,
            after.available(),
            if mismatches.is_empty() {
                "balances"
            } else {
                "DOES NOT BALANCE"
            },
            if ok { "no oversell" } else { "OVERSOLD OR LOST" },
        );
    });
}
