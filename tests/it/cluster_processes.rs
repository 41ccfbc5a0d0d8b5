//! Three built daemons on one scratch PostgreSQL (SPEC §13), the sandbox as
//! Shiprocket: instances killed, paused and stopped in the middle of a
//! payment burst, and nothing acknowledged lost or applied twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dropshipd::domain::signature::sign;
use dropshipd::sandbox::{Faults, Sandbox};
use dropshipd::scratch_postgres::ScratchPostgres;

use crate::helpers::*;
use crate::postgres::scratch_postgres;

const TTL_SECS: u64 = 3;
const PARTITIONS: usize = 12;

/// A config every instance shares; the database URL comes from the
/// environment. `limits` replaces the account's loose default rate.
fn cluster_config(dir: &Path, shiprocket: &str, limits: &str, busy_timeout_ms: u64) -> PathBuf {
    let limits = if limits.is_empty() {
        "requests_per_hour = 360000\nburst = 100"
    } else {
        limits
    };
    let path = dir.join("config.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[storage]
backend = "postgres"
postgres_url = "env:DROPSHIPD_POSTGRES_URL"
pool_size = 8
busy_timeout_ms = {busy_timeout_ms}
[razorpay]
api_base_url = "http://127.0.0.1:1"
[cluster]
lease_ttl_secs = {TTL_SECS}
order_partitions = {PARTITIONS}
[shiprocket]
base_url = "{shiprocket}"
{limits}
request_timeout_ms = 2000
[[shiprocket.accounts]]
name = "primary"
email = "api@example.com"
password = "env:SHIPROCKET_PASSWORD"
"#
    );
    std::fs::write(&path, text).expect("write config");
    path
}

struct Cluster {
    url: String,
    config: PathBuf,
    daemons: Vec<Daemon>,
    client: reqwest::Client,
    server: ScratchPostgres,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(test: &str, shiprocket: &str, limits: &str) -> Option<Cluster> {
        Self::start_with(test, shiprocket, limits, 2000).await
    }

    /// As [`Cluster::start`], with `storage.busy_timeout_ms` set.
    async fn start_with(
        test: &str,
        shiprocket: &str,
        limits: &str,
        busy_timeout_ms: u64,
    ) -> Option<Cluster> {
        let server = scratch_postgres(test)?;
        let url = server.create_database("cluster").expect("database");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = cluster_config(dir.path(), shiprocket, limits, busy_timeout_ms);
        let mut cluster = Cluster {
            url,
            config,
            daemons: Vec::new(),
            client: reqwest::Client::new(),
            server,
            _dir: dir,
        };
        for _ in 0..3 {
            cluster.add();
        }
        Some(cluster)
    }

    fn add(&mut self) -> usize {
        let url = self.url.clone();
        let daemon = Daemon::start_with(&self.config, |command| {
            command.env("DROPSHIPD_POSTGRES_URL", url);
        });
        self.daemons.push(daemon);
        self.daemons.len() - 1
    }

    async fn status(&self, index: usize) -> serde_json::Value {
        self.admin_get(index, "/admin/status", VIEWER_TOKEN).await
    }

    /// An admin read of `path` on instance `index`, as JSON.
    async fn admin_get(&self, index: usize, path: &str, token: &str) -> serde_json::Value {
        let url = format!("{}{path}", self.daemons[index].admin);
        let body = self
            .admin_call(&format!("GET {path}"), || {
                self.client.get(&url).bearer_auth(token)
            })
            .await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Sends the admin request `request` builds until it answers 200: its
    /// body. An operator's tool repeats a 503 (a storage call that waited past
    /// `storage.busy_timeout_ms`, which the hot-SKU test sets very short), so
    /// a slow moment on a loaded machine is not a failure; anything else but
    /// 200 is, and so is a 503 that lasts 30 s.
    async fn admin_call(
        &self,
        what: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let response = request()
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if status == 200 {
                return body;
            }
            assert!(
                status == 503 && Instant::now() < deadline,
                "{what}: {status} {body}"
            );
            eprintln!("{what}: {status} {body}, repeated");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each instance's id, by index.
    async fn instance_id(&self, index: usize) -> String {
        self.status(index).await["cluster"]["instance_id"]
            .as_str()
            .expect("instance id")
            .to_owned()
    }

    /// Live leases by owner, as instance `via` reads the table.
    async fn owners(&self, via: usize) -> BTreeMap<String, Vec<String>> {
        let status = self.status(via).await;
        let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for lease in status["cluster"]["leases"].as_array().expect("leases") {
            owners
                .entry(lease["owner"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(lease["resource"].as_str().unwrap_or_default().to_owned());
        }
        owners
    }

    /// Waits until every partition, the account and the leader are held by
    /// the instances `among`, partitions evenly; how long that took.
    async fn settled_among(&self, via: usize, among: &[String]) -> Duration {
        let started = Instant::now();
        loop {
            let owners = self.owners(via).await;
            let holders: BTreeSet<&String> = owners.keys().collect();
            let partitions: Vec<usize> = among
                .iter()
                .map(|id| {
                    owners.get(id).map_or(0, |r| {
                        r.iter()
                            .filter(|r| r.starts_with("order_partition:"))
                            .count()
                    })
                })
                .collect();
            let total: usize = owners.values().map(Vec::len).sum();
            let even = partitions.iter().max().copied().unwrap_or(0)
                - partitions.iter().min().copied().unwrap_or(0)
                <= 1;
            if holders.iter().all(|h| among.contains(h))
                && partitions.iter().sum::<usize>() == PARTITIONS
                && total == PARTITIONS + 2
                && even
            {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "leases never settled among {among:?}: {owners:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn checkout(&self, index: usize, order: usize) -> u16 {
        // A storefront repeats a checkout the daemon answered 503 (SPEC §3:
        // a write that waited past `busy_timeout_ms`), or that got no answer
        // at all (a pooled connection the server had just closed, say), with the
        // same body: the repeat is idempotent, so the final answer is what
        // counts. Repeats are bounded by time, not by count: on a loaded
        // machine a checkout queued on the hot row can meet several 503s in a
        // row.
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut attempt = 0u32;
        let status = loop {
            let status = self.checkout_once(index, order).await;
            if (status != 503 && status != 0) || Instant::now() >= deadline {
                break status;
            }
            eprintln!("checkout of XVC-P{order}: {status} on attempt {attempt}, repeated");
            tokio::time::sleep(Duration::from_millis(250 << attempt.min(3))).await;
            attempt += 1;
        };
        // 200 is the repeat of a checkout whose first answer was 503.
        if status == 200 {
            201
        } else {
            status
        }
    }

    /// One checkout request: its status code (0: no answer).
    async fn checkout_once(&self, index: usize, order: usize) -> u16 {
        let answer = self
            .client
            .post(format!("{}/api/orders", self.daemons[index].public))
            .bearer_auth(STOREFRONT_TOKEN)
            .json(&checkout_body(
                &format!("XVC-P{order}"),
                &format!("order_p{order}"),
                "TEE",
                1,
            ))
            .send()
            .await;
        match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                if status == 503 {
                    let body = response.text().await.unwrap_or_default();
                    eprintln!("checkout of XVC-P{order}: {status} {body}");
                }
                status
            }
            Err(e) => {
                eprintln!("checkout of XVC-P{order}: no answer: {e}");
                0
            }
        }
    }

    /// Razorpay's delivery of order `order`'s payment to instance `index`:
    /// true once acknowledged.
    async fn pay(&self, index: usize, order: usize) -> bool {
        self.pay_status(index, order).await == 200
    }

    /// As [`Cluster::pay`]: the answer's status code (0: no answer).
    async fn pay_status(&self, index: usize, order: usize) -> u16 {
        let body = captured_for(&format!("pay_p{order}"), &format!("order_p{order}"), 74_900);
        let signature = sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
        self.client
            .post(format!("{}/webhooks/razorpay", self.daemons[index].public))
            .header("X-Razorpay-Signature", signature)
            .header("X-Razorpay-Event-Id", format!("evt_p{order}"))
            .timeout(Duration::from_secs(10))
            .body(body)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    async fn order(&self, index: usize, order: usize) -> serde_json::Value {
        self.admin_get(
            index,
            &format!("/admin/orders/XVC-P{order}"),
            OPERATOR_TOKEN,
        )
        .await
    }

    /// Sets `sku`'s units on hand through instance 0. The change is absolute,
    /// so repeating it after a 503 is safe.
    async fn set_stock(&self, sku: &str, on_hand: i64) {
        let url = format!("{}/admin/stock/{sku}", self.daemons[0].admin);
        self.admin_call(&format!("PUT /admin/stock/{sku}"), || {
            self.client
                .put(&url)
                .bearer_auth(OPERATOR_TOKEN)
                .json(&serde_json::json!({"on_hand": on_hand}))
        })
        .await;
    }

    /// Every order in `orders` reaches `ready_to_ship`, asked of instance `via`.
    async fn all_ready(&self, via: usize, orders: impl Iterator<Item = usize>) {
        let deadline = Instant::now() + Duration::from_secs(90);
        for order in orders {
            loop {
                let found = self.order(via, order).await;
                if found["order"]["state"] == "ready_to_ship" {
                    break;
                }
                if Instant::now() >= deadline {
                    for (i, daemon) in self.daemons.iter().enumerate() {
                        for line in daemon
                            .logs()
                            .iter()
                            .filter(|l| {
                                l.contains(&format!("XVC-P{order}\""))
                                    || l.contains("lease")
                                    || l.contains("gateway")
                            })
                            .take(60)
                        {
                            eprintln!("daemon {i}: {line}");
                        }
                    }
                    eprintln!("status: {}", self.status(via).await);
                    panic!(
                        "XVC-P{order} never reached ready_to_ship: {}",
                        found["order"]
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The checks after any fault: one payment applied per order, one
    /// Shiprocket order each, and stock that balances with its ledger.
    async fn assert_each_once(&self, via: usize, sandbox: &Sandbox, orders: usize, stocked: i64) {
        for order in 0..orders {
            let found = self.order(via, order).await;
            let payments = found["journal"]
                .as_array()
                .expect("journal")
                .iter()
                .filter(|e| e["kind"] == "paid")
                .count();
            assert_eq!(payments, 1, "XVC-P{order}: {}", found["journal"]);
        }
        let shipped = sandbox.orders();
        let channels: BTreeSet<&str> = shipped
            .iter()
            .map(|o| o.channel_order_id.as_str())
            .collect();
        assert_eq!(shipped.len(), orders, "one Shiprocket order per paid order");
        assert_eq!(channels.len(), orders);
        let stock = self.admin_get(via, "/admin/stock/TEE", VIEWER_TOKEN).await;
        assert_eq!(stock["on_hand"], stocked - orders as i64, "{stock}");
        assert_eq!(stock["reserved"], 0, "{stock}");
        let reconciled = self
            .admin_get(via, "/admin/stock/reconcile", VIEWER_TOKEN)
            .await;
        assert_eq!(
            reconciled["mismatches"],
            serde_json::json!([]),
            "{reconciled}"
        );
    }
}

fn signal(daemon: &Daemon, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(daemon.pid()).expect("pid fits");
    // SAFETY: kill(2) with a child's pid and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Pays `orders`, `CONCURRENCY` at a time, each sent to one of the
/// instances `alive` holds and retried on the next until one acknowledges it
/// (as Razorpay retries). `fault` runs once `at` payments are acknowledged,
/// while the others are in flight.
async fn pay_all(
    cluster: &Cluster,
    orders: std::ops::Range<usize>,
    alive: &std::cell::RefCell<Vec<usize>>,
    at: usize,
    fault: impl FnOnce(),
) {
    use futures_util::StreamExt;
    const CONCURRENCY: usize = 16;
    let acknowledged = std::cell::Cell::new(0usize);
    let fault = std::cell::RefCell::new(Some(fault));
    futures_util::stream::iter(orders)
        .for_each_concurrent(CONCURRENCY, |order| {
            let (acknowledged, fault) = (&acknowledged, &fault);
            async move {
                let mut attempt = 0;
                loop {
                    let targets = alive.borrow().clone();
                    if cluster
                        .pay(targets[(order + attempt) % targets.len()], order)
                        .await
                    {
                        break;
                    }
                    attempt += 1;
                    assert!(attempt < 40, "payment of XVC-P{order} never acknowledged");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                acknowledged.set(acknowledged.get() + 1);
                if acknowledged.get() >= at {
                    if let Some(fault) = fault.borrow_mut().take() {
                        fault();
                    }
                }
            }
        })
        .await;
}

/// Polls `admin`'s status from `since` until every lease is live and held by
/// one of `among`: how long after `since` that was.
async fn held_by(
    client: reqwest::Client,
    admin: String,
    among: Vec<String>,
    since: Instant,
) -> Duration {
    loop {
        let status: Option<serde_json::Value> = match client
            .get(format!("{admin}/admin/status"))
            .bearer_auth(VIEWER_TOKEN)
            .send()
            .await
        {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        if let Some(leases) = status
            .as_ref()
            .and_then(|s| s["cluster"]["leases"].as_array())
        {
            let held = leases
                .iter()
                .filter(|l| among.iter().any(|id| l["owner"] == id.as_str()))
                .count();
            if held == PARTITIONS + 2 {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "leases never moved to {among:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn sigkill_mid_burst_moves_every_lease_in_time_and_each_order_ships_once() {
    let (sandbox, url) = start_sandbox(Faults::default());
    let Some(mut cluster) = Cluster::start(
        "sigkill_mid_burst_moves_every_lease_in_time_and_each_order_ships_once",
        &url,
        "",
    )
    .await
    else {
        return;
    };
    let ids = [
        cluster.instance_id(0).await,
        cluster.instance_id(1).await,
        cluster.instance_id(2).await,
    ];
    cluster.settled_among(0, &ids).await;
    cluster.set_stock("TEE", 1000).await;
    const ORDERS: usize = 150;
    for order in 0..ORDERS {
        assert_eq!(cluster.checkout(order % 3, order).await, 201);
    }
    let alive = std::cell::RefCell::new(vec![0, 1, 2]);
    let watcher = std::cell::RefCell::new(None);
    pay_all(&cluster, 0..ORDERS, &alive, ORDERS / 3, || {
        signal(&cluster.daemons[2], libc::SIGKILL);
        *alive.borrow_mut() = vec![0, 1];
        *watcher.borrow_mut() = Some(actix_web::rt::spawn(held_by(
            cluster.client.clone(),
            cluster.daemons[0].admin.clone(),
            ids[..2].to_vec(),
            Instant::now(),
        )));
    })
    .await;
    let watcher = watcher.into_inner().expect("the kill happened");
    let took = watcher.await.expect("watcher");
    eprintln!("leases of the killed instance taken {took:?} after SIGKILL");
    assert!(
        took <= Duration::from_secs(TTL_SECS + 5),
        "leases taken {took:?} after the kill"
    );
    cluster.daemons[2].kill();
    cluster.all_ready(1, 0..ORDERS).await;
    cluster.assert_each_once(0, &sandbox, ORDERS, 1000).await;
    cluster.settled_among(1, &ids[..2]).await;
}

#[actix_web::test]
async fn sigterm_hands_every_lease_over_within_two_seconds() {
    let (_sandbox, url) = start_sandbox(Faults::default());
    let Some(mut cluster) = Cluster::start(
        "sigterm_hands_every_lease_over_within_two_seconds",
        &url,
        "",
    )
    .await
    else {
        return;
    };
    let ids = [
        cluster.instance_id(0).await,
        cluster.instance_id(1).await,
        cluster.instance_id(2).await,
    ];
    cluster.settled_among(0, &ids).await;
    let watcher = {
        cluster.daemons[2].terminate();
        actix_web::rt::spawn(held_by(
            cluster.client.clone(),
            cluster.daemons[0].admin.clone(),
            ids[..2].to_vec(),
            Instant::now(),
        ))
    };
    let took = watcher.await.expect("watcher");
    eprintln!("leases handed over {took:?} after SIGTERM");
    assert!(
        took <= Duration::from_secs(2),
        "leases taken {took:?} after SIGTERM"
    );
    let status = cluster.daemons[2].wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    let left = cluster.daemons[2]
        .logs()
        .into_iter()
        .filter(|line| serde_json::from_str::<serde_json::Value>(line).is_ok())
        .all(|line| line.contains(&format!("\"instance_id\":\"{}\"", ids[2])));
    assert!(left, "every log line names its instance");
}

#[actix_web::test]
async fn an_instance_paused_past_its_leases_writes_nothing_for_them_and_rejoins() {
    let (sandbox, url) = start_sandbox(Faults::default());
    let Some(cluster) = Cluster::start(
        "an_instance_paused_past_its_leases_writes_nothing_for_them_and_rejoins",
        &url,
        "",
    )
    .await
    else {
        return;
    };
    let ids = [
        cluster.instance_id(0).await,
        cluster.instance_id(1).await,
        cluster.instance_id(2).await,
    ];
    cluster.settled_among(0, &ids).await;
    cluster.set_stock("TEE", 1000).await;
    const ORDERS: usize = 90;
    for order in 0..ORDERS {
        assert_eq!(cluster.checkout(order % 3, order).await, 201);
    }
    let alive = std::cell::RefCell::new(vec![0, 1, 2]);
    let watcher = std::cell::RefCell::new(None);
    pay_all(&cluster, 0..ORDERS, &alive, ORDERS / 3, || {
        // Frozen with work in hand: order actors mid-message, shipping turns
        // and payments in flight.
        signal(&cluster.daemons[2], libc::SIGSTOP);
        *alive.borrow_mut() = vec![0, 1];
        *watcher.borrow_mut() = Some(actix_web::rt::spawn(held_by(
            cluster.client.clone(),
            cluster.daemons[0].admin.clone(),
            ids[..2].to_vec(),
            Instant::now(),
        )));
    })
    .await;
    let watcher = watcher.into_inner().expect("the pause happened");
    let took = watcher.await.expect("watcher");
    assert!(took <= Duration::from_secs(TTL_SECS + 5), "{took:?}");
    // Past its TTL with the others at work on what it held; then it wakes
    // with everything it had in flight.
    tokio::time::sleep(Duration::from_secs(TTL_SECS)).await;
    signal(&cluster.daemons[2], libc::SIGCONT);
    cluster.all_ready(0, 0..ORDERS).await;
    cluster.assert_each_once(1, &sandbox, ORDERS, 1000).await;
    // It noticed the loss and came back for its share.
    cluster.settled_among(0, &ids).await;
    cluster.assert_each_once(2, &sandbox, ORDERS, 1000).await;
}

/// Checkouts of `orders`, `CONCURRENCY` at a time, spread over the three:
/// each one's status code.
async fn checkout_all(cluster: &Cluster, orders: std::ops::Range<usize>) -> Vec<u16> {
    use futures_util::StreamExt;
    const CONCURRENCY: usize = 32;
    futures_util::stream::iter(orders)
        .map(|order| cluster.checkout(order % 3, order))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

#[actix_web::test]
async fn two_thousand_orders_over_three_instances_are_each_paid_and_shipped_once() {
    let (sandbox, url) = start_sandbox(Faults::default());
    let Some(cluster) = Cluster::start(
        "two_thousand_orders_over_three_instances_are_each_paid_and_shipped_once",
        &url,
        "",
    )
    .await
    else {
        return;
    };
    let ids = [
        cluster.instance_id(0).await,
        cluster.instance_id(1).await,
        cluster.instance_id(2).await,
    ];
    cluster.settled_among(0, &ids).await;
    const ORDERS: usize = 2000;
    cluster.set_stock("TEE", 5000).await;
    let created = checkout_all(&cluster, 0..ORDERS).await;
    assert!(created.iter().all(|&s| s == 201), "every checkout created");
    let alive = std::cell::RefCell::new(vec![1, 2, 0]);
    pay_all(&cluster, 0..ORDERS, &alive, usize::MAX, || {}).await;
    cluster.all_ready(2, 0..ORDERS).await;
    cluster.assert_each_once(0, &sandbox, ORDERS, 5000).await;
}

#[actix_web::test]
async fn a_hot_sku_sells_exactly_its_stock_across_instances() {
    let (_sandbox, url) = start_sandbox(Faults::default());
    // A busy timeout short enough that many checkouts queued on the one row
    // answer 503 while their transactions go on and commit: the storefront's
    // repeats must find those orders, neither a conflict nor a second hold.
    let Some(cluster) = Cluster::start_with(
        "a_hot_sku_sells_exactly_its_stock_across_instances",
        &url,
        "",
        60,
    )
    .await
    else {
        return;
    };
    let ids = [
        cluster.instance_id(0).await,
        cluster.instance_id(1).await,
        cluster.instance_id(2).await,
    ];
    cluster.settled_among(0, &ids).await;
    cluster.set_stock("TEE", 300).await;
    let answers = checkout_all(&cluster, 0..1000).await;
    let others: BTreeSet<u16> = answers
        .iter()
        .copied()
        .filter(|s| *s != 201 && *s != 409)
        .collect();
    eprintln!("other answers: {others:?}");
    let created = answers.iter().filter(|&&s| s == 201).count();
    let refused = answers.iter().filter(|&&s| s == 409).count();
    assert_eq!((created, refused), (300, 700), "{answers:?}");
    let stock = cluster.admin_get(1, "/admin/stock/TEE", VIEWER_TOKEN).await;
    assert_eq!(stock["on_hand"], 300, "{stock}");
    assert_eq!(stock["reserved"], 300, "{stock}");
    assert_eq!(stock["available"], 0, "{stock}");
}

#[actix_web::test]
async fn postgres_restarted_under_load_answers_503_then_resumes_by_itself() {
    let (sandbox, url) = start_sandbox(Faults::default());
    let Some(mut cluster) = Cluster::start(
        "postgres_restarted_under_load_answers_503_then_resumes_by_itself",
        &url,
        "",
    )
    .await
    else {
        return;
    };
    let ids = [
        cluster.instance_id(0).await,
        cluster.instance_id(1).await,
        cluster.instance_id(2).await,
    ];
    cluster.settled_among(0, &ids).await;
    cluster.set_stock("TEE", 1000).await;
    const ORDERS: usize = 60;
    let created = checkout_all(&cluster, 0..ORDERS).await;
    assert!(created.iter().all(|&s| s == 201));
    let alive = std::cell::RefCell::new(vec![0, 1, 2]);
    pay_all(&cluster, 0..ORDERS / 3, &alive, usize::MAX, || {}).await;

    // `pg_ctl restart -m fast`, held down long enough to be seen.
    cluster.server.stop().expect("stop PostgreSQL");
    for index in 0..3 {
        assert_eq!(
            cluster.pay_status(index, ORDERS / 3).await,
            503,
            "a webhook that cannot be stored is refused for Razorpay to retry"
        );
        assert_eq!(cluster.checkout_once(index, ORDERS + index).await, 503);
    }
    cluster.server.start_again().expect("start PostgreSQL");

    // Nobody restarts the daemons: they reconnect and carry on.
    pay_all(&cluster, ORDERS / 3..ORDERS, &alive, usize::MAX, || {}).await;
    cluster.all_ready(1, 0..ORDERS).await;
    cluster.assert_each_once(2, &sandbox, ORDERS, 1000).await;
    cluster.settled_among(0, &ids).await;
}

#[actix_web::test]
async fn one_gateway_for_the_cluster_keeps_the_account_under_shiprockets_limit() {
    // Shiprocket (the sandbox) answers 429 above 2.5 calls a second; the
    // account is configured at 2 a second, burst 2. Orders arrive on every
    // instance, but only the account's lease holder calls.
    let (sandbox, url) = start_sandbox(Faults {
        rate_limit_per_sec: Some(2.5),
        rate_limit_burst: Some(2.5),
        ..Faults::default()
    });
    let Some(cluster) = Cluster::start(
        "one_gateway_for_the_cluster_keeps_the_account_under_shiprockets_limit",
        &url,
        "requests_per_hour = 7200\nburst = 2",
    )
    .await
    else {
        return;
    };
    let ids = [
        cluster.instance_id(0).await,
        cluster.instance_id(1).await,
        cluster.instance_id(2).await,
    ];
    cluster.settled_among(0, &ids).await;
    cluster.set_stock("TEE", 100).await;
    const ORDERS: usize = 12;
    let created = checkout_all(&cluster, 0..ORDERS).await;
    assert!(created.iter().all(|&s| s == 201));
    let alive = std::cell::RefCell::new(vec![0, 1, 2]);
    pay_all(&cluster, 0..ORDERS, &alive, usize::MAX, || {}).await;
    cluster.all_ready(0, 0..ORDERS).await;
    let calls = sandbox.calls();
    let throttled: u64 = calls
        .iter()
        .filter(|(call, _)| call.ends_with(":429"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(throttled, 0, "no 429 from Shiprocket: {calls:?}");
    cluster.assert_each_once(1, &sandbox, ORDERS, 100).await;
}
